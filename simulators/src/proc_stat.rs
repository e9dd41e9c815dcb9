//! CPU time of a process, read from Linux's `/proc/<pid>/stat` (no libc needed).
//!
//! The load generator shares the machine with the broker it measures, so its report states how
//! much CPU it used itself; the performance work will read the broker's figures the same way.

use std::time::Duration;

/// Clock ticks per second in `/proc/*/stat`. Linux fixes `USER_HZ` at 100 for user space on
/// every architecture it exposes `/proc` on (`getconf CLK_TCK`).
const USER_HZ: u64 = 100;

/// Why CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcStatError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected /proc stat format: {0}")]
    Format(&'static str),
}

/// User and system CPU time consumed by a process (all its threads) since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    /// User plus system time.
    #[must_use]
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// Time used since `earlier`, saturating at zero.
    #[must_use]
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU times of this process.
pub fn own_cpu_times() -> Result<CpuTimes, ProcStatError> {
    read_cpu_times("/proc/self/stat")
}

/// CPU times of process `pid`.
pub fn cpu_times_of(pid: u32) -> Result<CpuTimes, ProcStatError> {
    read_cpu_times(&format!("/proc/{pid}/stat"))
}

fn read_cpu_times(path: &str) -> Result<CpuTimes, ProcStatError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcStatError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_stat(&text)
}

/// Parses the `utime` and `stime` fields (14 and 15) of a `/proc/<pid>/stat` line.
///
/// Field 2, the command name, is in parentheses and may itself contain spaces and `)`, so
/// counting starts after the last `)`.
pub fn parse_stat(line: &str) -> Result<CpuTimes, ProcStatError> {
    let after_comm = line
        .rfind(')')
        .map(|i| &line[i + 1..])
        .ok_or(ProcStatError::Format("no ')' after the command name"))?;
    // After the command name, field 3 (state) is index 0, so utime (14) is index 11.
    let mut fields = after_comm.split_whitespace().skip(11);
    let mut ticks = || -> Result<Duration, ProcStatError> {
        let value: u64 = fields
            .next()
            .ok_or(ProcStatError::Format("line too short"))?
            .parse()
            .map_err(|_| ProcStatError::Format("utime/stime is not a number"))?;
        Ok(Duration::from_millis(value * (1000 / USER_HZ)))
    };
    let user = ticks()?;
    let system = ticks()?;
    Ok(CpuTimes { user, system })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let ms = Duration::from_millis;
        let cases: [(&str, Option<(Duration, Duration)>); 5] = [
            (
                "4242 (iothub-loadgen) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 37 0 0 20 0 3 0",
                Some((ms(2500), ms(370))),
            ),
            // A command name with spaces and a ')' inside.
            (
                "7 (a b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0",
                Some((ms(10), ms(20))),
            ),
            ("7 (x) R 1 7 7 0 -1 0 0 0 0 0", None),
            ("7 (x) R 1 7 7 0 -1 0 0 0 0 0 ten 2", None),
            ("no parenthesis here", None),
        ];
        for (line, expected) in cases {
            let got = parse_stat(line).ok().map(|t| (t.user, t.system));
            assert_eq!(got, expected, "{line}");
        }
    }

    #[test]
    fn own_process_is_readable_and_monotonic() {
        let before = own_cpu_times().unwrap();
        // Burn a little CPU so the second reading cannot be below the first.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = own_cpu_times().unwrap();
        assert!(after.total() >= before.total());
        assert_eq!(after.since(&after), CpuTimes::default());
    }
}
