//! The binary's share of metrics: feeding the metrics API's rings from the engine, keeping
//! them saved, the process metrics of `/metrics`, and provisioning outcomes.
//!
//! - [`Collector`]: every [`COLLECT`] the engine's packet counts
//!   ([`Engine::take_activity`]) go into the registry's rings and the gauges that walk
//!   every session are refreshed; every [`SAVE`] the rings that changed are written to the
//!   registry database, and once more at shutdown, after the connections closed, so a
//!   restart loses at most the counts of a crash.
//! - [`refresh_process_metrics`]: the `process_*` gauges Prometheus clients usually
//!   export, read from `/proc/self` on each scrape (no dependency for it).
//! - [`MeteredProvisioner`] counts `iothub_provisioning_total{outcome}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iothub_adapter_mqtt::tls::{ProvisionFuture, Provisioner};
use iothub_control::{Registry, Timestamp};
use iothub_engine::Engine;
use iothub_model::{DeviceId, HubId};
use metrics::Counter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the engine's counts are collected: the metrics API's finest interval is a
/// minute, so a count lands at most this late in it.
pub const COLLECT: Duration = Duration::from_secs(5);
/// How often changed rings are saved.
pub const SAVE: Duration = Duration::from_secs(60);

/// A device's `last_activity_at` is written at most this often: enough for "when was it last
/// seen", and a fleet of 10,000 busy devices costs ~170 small writes a second, not thousands.
pub const ACTIVITY_RESOLUTION: Duration = Duration::from_secs(60);

/// Feeds the registry's metric rings from the engine and saves them; keeps devices'
/// `last_activity_at` current.
#[derive(Clone)]
pub struct Collector {
    engine: Engine,
    registry: Arc<Registry>,
    /// When each device's `last_activity_at` was last written, and the activity seen since
    /// that is still to be written.
    activity: Arc<parking_lot::Mutex<ActivityState>>,
}

#[derive(Default)]
struct ActivityState {
    written: HashMap<DeviceId, Timestamp>,
    pending: HashMap<DeviceId, Timestamp>,
}

impl Collector {
    /// Loads the saved rings: call before the listeners serve.
    pub async fn start(engine: Engine, registry: Arc<Registry>) -> Self {
        match registry.load_metrics().await {
            Ok(rows) => info!("metrics: {rows} saved series loaded"),
            Err(e) => warn!(message = "cannot load the saved metrics; starting empty", %e),
        }
        Self {
            engine,
            registry,
            activity: Arc::default(),
        }
    }

    /// Moves the engine's counts into the rings.
    pub fn collect(&self) {
        let now = Timestamp::now();
        let mut state = self.activity.lock();
        for activity in self.engine.take_activity() {
            self.registry
                .metrics()
                .record(now, activity.hub, activity.messages, &activity.devices);
            for (device, _) in &activity.devices {
                state.pending.insert(*device, now);
            }
        }
        drop(state);
        self.engine.update_session_gauges();
    }

    /// Writes `last_activity_at` for the devices active since their last write, each at
    /// most once per [`ACTIVITY_RESOLUTION`] (all of them when `all`, at shutdown).
    async fn write_activity(&self, all: bool) {
        let due: Vec<(DeviceId, Timestamp)> = {
            let mut state = self.activity.lock();
            let ActivityState { written, pending } = &mut *state;
            let resolution = ACTIVITY_RESOLUTION.as_micros() as i64;
            let due: Vec<(DeviceId, Timestamp)> = pending
                .iter()
                .filter(|(id, at)| {
                    all || written
                        .get(id)
                        .is_none_or(|w| at.as_micros() - w.as_micros() >= resolution)
                })
                .map(|(id, at)| (*id, *at))
                .collect();
            for (id, at) in &due {
                pending.remove(id);
                written.insert(*id, *at);
            }
            // Only writes younger than the resolution can hold a device back: forget older
            // ones, so the map stays as small as the set of recently active devices.
            let now = Timestamp::now().as_micros();
            written.retain(|_, w| now - w.as_micros() < resolution);
            due
        };
        for (id, at) in due {
            // A device deleted meanwhile has nothing to update: not an error worth a warning.
            if let Err(e) = self.registry.record_device_activity(id, at).await {
                tracing::debug!(message = "cannot record device activity", device = %id, %e);
            }
        }
    }

    async fn save(&self) {
        if let Err(e) = self.registry.save_metrics().await {
            warn!(message = "cannot save the metrics; retrying at the next save", %e);
        }
    }

    /// Collects every [`COLLECT`] and saves every [`SAVE`] until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut collect = tokio::time::interval(COLLECT);
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save = tokio::time::interval(SAVE);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        save.tick().await;
        loop {
            tokio::select! {
                _ = collect.tick() => {
                    self.collect();
                    self.write_activity(false).await;
                }
                _ = save.tick() => self.save().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// The last collection and save, once the connections have closed (their counts are
    /// handed over as they end).
    pub async fn finish(&self) {
        self.collect();
        self.write_activity(true).await;
        self.save().await;
    }
}

/// `iothub_provisioning_total{outcome=created|refused|not_enabled}` around the registry's
/// provisioner: devices created on first connection, refusals (the registry said no:
/// quota, name), and certificates of a hub's own CA naming an unknown device while the hub
/// does not auto-provision. The series exist from the start (at 0), so dashboards and
/// alerts see them before the first provisioning; which hub it was is in its hub event.
pub struct MeteredProvisioner {
    inner: Arc<dyn Provisioner>,
    created: Counter,
    refused: Counter,
    not_enabled: Counter,
}

impl MeteredProvisioner {
    pub fn new(inner: Arc<dyn Provisioner>) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("iothub_provisioning_total", "outcome" => outcome);
        Self {
            inner,
            created: counter("created"),
            refused: counter("refused"),
            not_enabled: counter("not_enabled"),
        }
    }
}

impl Provisioner for MeteredProvisioner {
    fn provision<'a>(
        &'a self,
        hub: HubId,
        common_name: &'a str,
        peer: SocketAddr,
    ) -> ProvisionFuture<'a> {
        Box::pin(async move {
            let result = self.inner.provision(hub, common_name, peer).await;
            match &result {
                Ok(Some(_)) => &self.created,
                Ok(None) => &self.not_enabled,
                Err(_) => &self.refused,
            }
            .increment(1);
            result
        })
    }
}

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// The figures of `/proc/<pid>/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system CPU time, in clock ticks.
    utime: u64,
    stime: u64,
    threads: u64,
    /// Clock ticks after boot.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Reads a `stat` line after the command name, which may hold spaces and parentheses
/// (hence the last `)`).
fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field n of proc(5) (1-based) is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// A value of `/proc/self/auxv` (native-endian pairs of words), e.g. `AT_CLKTCK` = 17,
/// `AT_PAGESZ` = 6: what `sysconf` reports, without calling it.
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |chunk: &[u8]| -> Option<u64> {
        let bytes: [u8; WORD] = chunk.try_into().ok()?;
        u64::try_from(usize::from_ne_bytes(bytes)).ok()
    };
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (k, v) = pair.split_at(WORD);
        (word(k)? == key).then(|| word(v)).flatten()
    })
}

/// `btime` of `/proc/stat`: when the machine booted (Unix time).
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl ProcessStats {
    /// Reads the process `pid` (`"self"`) under `proc` (`/proc` in production). `None` when
    /// its figures cannot be read (not Linux, say).
    pub fn read(proc: &Path, pid: &str) -> Option<Self> {
        let dir = proc.join(pid);
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let stat = parse_stat(&stat)?;
        let auxv = std::fs::read(dir.join("auxv")).unwrap_or_default();
        // The usual values when auxv says nothing: 100 Hz, 4 KiB pages.
        let ticks = auxv_value(&auxv, 17).filter(|t| *t > 0).unwrap_or(100);
        let page = auxv_value(&auxv, 6).filter(|p| *p > 0).unwrap_or(4096);
        let boot = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| parse_boot_time(&s))
            .unwrap_or(0);
        let open_fds = std::fs::read_dir(dir.join("fd")).map_or(0, |d| d.count() as u64);
        let max_fds = std::fs::read_to_string(dir.join("limits"))
            .ok()
            .and_then(|l| parse_max_fds(&l))
            .unwrap_or(0);
        Some(Self {
            resident_bytes: stat.resident_pages.saturating_mul(page),
            virtual_bytes: stat.virtual_bytes,
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks as f64,
            threads: stat.threads,
            start_time_seconds: boot as f64 + stat.start_ticks as f64 / ticks as f64,
            open_fds,
            max_fds,
        })
    }
}

/// Sets the `process_*` gauges from `/proc/self`: called before each `/metrics` render,
/// so they are as fresh as the scrape. Nothing is set where `/proc` is missing.
pub fn refresh_process_metrics() {
    let Some(p) = ProcessStats::read(Path::new("/proc"), "self") else {
        return;
    };
    metrics::gauge!("process_resident_memory_bytes").set(p.resident_bytes as f64);
    metrics::gauge!("process_virtual_memory_bytes").set(p.virtual_bytes as f64);
    metrics::gauge!("process_cpu_seconds_total").set(p.cpu_seconds);
    metrics::gauge!("process_threads").set(p.threads as f64);
    metrics::gauge!("process_start_time_seconds").set(p.start_time_seconds);
    metrics::gauge!("process_open_fds").set(p.open_fds as f64);
    metrics::gauge!("process_max_fds").set(p.max_fds as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 7 0 12345 104857600 2560 rest";
        let read = Some(Stat {
            utime: 250,
            stime: 50,
            threads: 7,
            start_ticks: 12345,
            virtual_bytes: 104_857_600,
            resident_pages: 2560,
        });
        // (line, what it says)
        let cases: &[(String, Option<Stat>)] = &[
            (format!("42 (iothub) {tail}"), read),
            (format!("42 (a) b) (c) {tail}"), read),
            ("42 (iothub) S 1 2".to_owned(), None),
            ("no parenthesis at all".to_owned(), None),
            (format!("42 (iothub) {}", tail.replace("250", "x")), None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_stat(line), *want, "{line}");
        }
    }

    #[test]
    fn auxv_pairs_are_native_words() {
        let words: Vec<usize> = vec![6, 4096, 17, 100, 0, 0];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        // (key, value)
        for (key, want) in [(6, Some(4096)), (17, Some(100)), (3, None)] {
            assert_eq!(auxv_value(&bytes, key), want, "{key}");
        }
        assert_eq!(auxv_value(&bytes[..5], 6), None, "a truncated file");
    }

    #[test]
    fn boot_time_and_fd_limit() {
        let stat = "cpu  1 2 3\nintr 9\nbtime 1714564800\nprocesses 7\n";
        assert_eq!(parse_boot_time(stat), Some(1_714_564_800));
        assert_eq!(parse_boot_time("cpu 1"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max processes 10 10 processes"), None);
    }

    /// This very process, through the real `/proc`: figures a running process must have.
    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read(Path::new("/proc"), "self").unwrap();
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(
            p.threads >= 1 && p.open_fds >= 1 && p.max_fds >= p.open_fds,
            "{p:?}"
        );
        assert!(p.start_time_seconds > 1_700_000_000.0, "{p:?}");
        assert!(ProcessStats::read(Path::new("/proc"), "not-a-pid").is_none());
    }
}
