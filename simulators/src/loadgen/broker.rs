//! The broker's side of a run, read from `/proc/<pid>`: its CPU time, its resident memory and
//! its open-files limit.
//!
//! The generator and the broker share the machine, so a throughput figure means little without
//! the CPU each side burnt; and memory per connection is the slope of the broker's RSS over a
//! ramp of connections. All of it is plain text in `/proc`, read without libc.

use serde::Serialize;

use crate::proc_stat::{self, CpuTimes, ProcStatError};

/// Resident memory of a process (`/proc/<pid>/status`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the largest RSS since the process started.
    pub peak: u64,
}

/// Reads `VmRSS` and `VmHWM` of process `pid` (`self` for this process).
pub fn memory_of(pid: &str) -> Result<Memory, ProcStatError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| ProcStatError::Read {
        path: path.clone(),
        source,
    })?;
    parse_status(&text)
}

/// Parses the `VmRSS:` and `VmHWM:` lines (in kB) of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Result<Memory, ProcStatError> {
    let field = |name: &str| -> Result<u64, ProcStatError> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or(ProcStatError::Format("no VmRSS/VmHWM line in status"))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .map_err(|_| ProcStatError::Format("VmRSS/VmHWM is not a number of kB"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// The soft limit on open files of process `pid` (`self` for this process), from
/// `/proc/<pid>/limits`; `None` when it is unlimited.
pub fn open_files_limit_of(pid: &str) -> Result<Option<u64>, ProcStatError> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).map_err(|source| ProcStatError::Read {
        path: path.clone(),
        source,
    })?;
    parse_open_files_limit(&text)
}

/// Parses the soft column of the `Max open files` line of a `/proc/<pid>/limits` text.
pub fn parse_open_files_limit(text: &str) -> Result<Option<u64>, ProcStatError> {
    let soft = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or(ProcStatError::Format("no 'Max open files' line in limits"))?;
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse()
        .map(Some)
        .map_err(|_| ProcStatError::Format("the open files limit is not a number"))
}

/// A reading of the broker: CPU time so far and memory now.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub cpu: CpuTimes,
    pub memory: Memory,
}

/// Reads process `pid` now.
pub fn sample(pid: u32) -> Result<Sample, ProcStatError> {
    Ok(Sample {
        cpu: proc_stat::cpu_times_of(pid)?,
        memory: memory_of(&pid.to_string())?,
    })
}

/// What the broker used between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BrokerUse {
    pub pid: u32,
    pub cpu_user_secs: f64,
    pub cpu_system_secs: f64,
    /// (user + system) / wall: 1.0 is one core busy the whole time.
    pub cores: f64,
    /// RSS when the first sample was taken.
    pub rss_start_bytes: u64,
    /// RSS when the second sample was taken.
    pub rss_end_bytes: u64,
    /// The largest RSS since the broker started (`VmHWM`).
    pub rss_peak_bytes: u64,
}

impl BrokerUse {
    /// The broker's use from `before` to `after`, `wall_secs` apart.
    #[must_use]
    pub fn between(pid: u32, before: &Sample, after: &Sample, wall_secs: f64) -> Self {
        let cpu = after.cpu.since(&before.cpu);
        Self {
            pid,
            cpu_user_secs: cpu.user.as_secs_f64(),
            cpu_system_secs: cpu.system.as_secs_f64(),
            cores: cpu.total().as_secs_f64() / wall_secs.max(f64::EPSILON),
            rss_start_bytes: before.memory.rss,
            rss_end_bytes: after.memory.rss,
            rss_peak_bytes: after.memory.peak,
        }
    }
}

impl std::fmt::Display for BrokerUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU {:.2} s (user {:.2}, system {:.2}) = {:.2} cores; RSS {:.1} -> {:.1} MiB, peak {:.1} MiB (pid {})",
            self.cpu_user_secs + self.cpu_system_secs,
            self.cpu_user_secs,
            self.cpu_system_secs,
            self.cores,
            mib(self.rss_start_bytes),
            mib(self.rss_end_bytes),
            mib(self.rss_peak_bytes),
            self.pid
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_memory() {
        let cases: [(&str, Option<(u64, u64)>); 4] = [
            (
                "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmHWM:\t    6000 kB\nVmRSS:\t    5000 kB\n",
                Some((5000 * 1024, 6000 * 1024)),
            ),
            ("VmRSS:\t1 kB\nVmHWM:\t2 kB\n", Some((1024, 2048))),
            ("VmRSS:\t1 kB\n", None),
            ("VmRSS:\tlots kB\nVmHWM:\t2 kB\n", None),
        ];
        for (text, expected) in cases {
            let got = parse_status(text).ok().map(|m| (m.rss, m.peak));
            assert_eq!(got, expected, "{text:?}");
        }
    }

    #[test]
    fn parses_open_files_limit() {
        let header =
            "Limit                     Soft Limit           Hard Limit           Units     \n";
        let cases: [(String, Option<Option<u64>>); 4] = [
            (
                format!(
                    "{header}Max open files            20000                20000                files     \n"
                ),
                Some(Some(20_000)),
            ),
            (
                format!(
                    "{header}Max open files            unlimited            unlimited            files     \n"
                ),
                Some(None),
            ),
            (header.to_owned(), None),
            (
                format!(
                    "{header}Max open files            many                 20000                files     \n"
                ),
                None,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_open_files_limit(&text).ok(), expected, "{text:?}");
        }
    }

    #[test]
    fn reads_this_process() {
        let me = memory_of("self").unwrap();
        assert!(me.rss > 0 && me.peak >= me.rss, "{me:?}");
        let pid = std::process::id();
        let (a, b) = (sample(pid).unwrap(), sample(pid).unwrap());
        let used = BrokerUse::between(pid, &a, &b, 1.0);
        assert!(used.cpu_user_secs >= 0.0 && used.rss_peak_bytes >= used.rss_end_bytes);
        assert!(open_files_limit_of("self").is_ok());
    }
}
