//! The load generator: many [`Client`]s driven through a [`Scenario`], measured end to end.
//!
//! A run goes: connect and subscribe every subscriber, connect every publisher, then publish
//! for `warmup + duration`, then give subscribers up to `drain` to receive what is still in
//! flight. Every payload carries its send time and (publisher, sequence) ([`stamp`]), so each
//! subscriber measures latency and counts loss and duplicates alone ([`tracker`]); the tasks
//! share nothing on the hot path but two relaxed counters for the progress display ([`Live`]).
//! [`run`] returns a [`Report`]; the `iothub-loadgen` binary prints it.
//!
//! Measured-window rules: throughput counts first deliveries *received* inside the window;
//! latency covers messages *sent* inside the window, whenever they arrived before the drain
//! deadline; loss and duplicates cover the whole run, warm-up included.

pub mod broker;
pub mod conns;
mod report;
mod roles;
mod scenario;
pub mod stamp;
pub mod tracker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use iothub_model::{ClientId, IdError};
use iothub_mqtt_codec::{ProtocolVersion, QoS};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use broker::BrokerUse;
pub use conns::{ConnReport, RssSample};
pub use report::{CpuUse, Latency, Report};
pub use scenario::{Plan, PlanError, Scenario, UnknownScenario};

use crate::client::{Client, ClientError, ClientOptions};
use crate::proc_stat;
use roles::{Pacer, PublisherOutcome, PublisherTask, SubscriberOutcome, SubscriberTask, Timeline};

/// Why a run could not be carried out. Failures of single clients *during* the run are not
/// errors: they are listed in [`Report::errors`] and show up as loss.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("invalid client id: {0}")]
    ClientId(#[from] IdError),
    #[error("{role} {index} could not connect: {source}")]
    Connect {
        role: &'static str,
        index: usize,
        source: ClientError,
    },
    #[error("the broker allows QoS {allowed} at most; the run asks for QoS {wanted}")]
    QoSNotSupported { allowed: u8, wanted: u8 },
    #[error("cannot create the latency histogram: {0}")]
    Histogram(String),
    #[error("a client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What to run. [`LoadConfig::new`] gives a small fan-in run; set the fields to change it.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub broker: SocketAddr,
    pub version: ProtocolVersion,
    pub scenario: Scenario,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: QoS,
    /// Payload size in bytes, at least [`stamp::STAMP_LEN`].
    pub payload: usize,
    /// Messages per second per publisher; 0 = as fast as the window (QoS 1/2) or the socket
    /// (QoS 0) allows.
    pub rate: u32,
    /// The measured window.
    pub duration: Duration,
    /// Publishing before the measured window (connections warm, queues settled).
    pub warmup: Duration,
    /// After publishing stops, how long subscribers wait for stragglers.
    pub drain: Duration,
    /// Topics are `<prefix>/<run id>/...`.
    pub topic_prefix: String,
    /// QoS 1/2 publishes in flight per publisher.
    pub inflight: u16,
    pub keep_alive: u16,
    /// Local addresses clients connect from, round robin (empty: the system chooses).
    pub source_addrs: Vec<IpAddr>,
    pub connect_timeout: Duration,
    /// Connections opened at once while setting up; in the connects scenario, the number of
    /// concurrent connectors.
    pub connect_concurrency: usize,
    /// Ramp: idle connections to open (capped by the open-files limits).
    pub connections: u64,
    /// Ramp: steps, each followed by a reading of the broker's RSS.
    pub ramp_steps: usize,
    /// The broker's process id, to report its CPU time and RSS (and, in a ramp, the slope).
    pub broker_pid: Option<u32>,
    /// End-to-end window: messages a publisher may have sent that its subscribers have not
    /// all received yet; 0 = no bound. Unpaced publishers otherwise outrun the subscribers
    /// on any broker (it acknowledges on receipt, or not at all at QoS 0) until its queues
    /// overflow. A lost message holds its slot for good: a broker that drops messages
    /// stalls the publisher, which shows as loss and low throughput.
    pub window: u64,
    /// Subscribers keep their sessions: clean start 0 and, in MQTT 5, a Session Expiry
    /// Interval of [`PERSISTENT_SESSION_EXPIRY`], so a durable broker must store what it queues
    /// for them before acknowledging the publisher.
    pub persistent_sessions: bool,
}

/// Session Expiry Interval (seconds) of subscribers with `persistent_sessions`: long enough
/// for a run, short enough that a broker forgets them soon after.
pub const PERSISTENT_SESSION_EXPIRY: u32 = 300;

impl LoadConfig {
    /// 1 publisher → 1 subscriber, fan-in, MQTT 5, QoS 0, 64-byte payloads, unlimited rate,
    /// 10 s after a 1 s warm-up.
    #[must_use]
    pub fn new(broker: SocketAddr) -> Self {
        Self {
            broker,
            version: ProtocolVersion::V5,
            scenario: Scenario::FanIn,
            publishers: 1,
            subscribers: 1,
            qos: QoS::AtMostOnce,
            payload: 64,
            rate: 0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            drain: Duration::from_secs(2),
            topic_prefix: "loadgen".to_owned(),
            inflight: 64,
            keep_alive: 60,
            source_addrs: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            connect_concurrency: 64,
            connections: 1_000,
            ramp_steps: 10,
            broker_pid: None,
            window: 0,
            persistent_sessions: false,
        }
    }

    /// Checks the configuration, topics included, before anything connects.
    pub fn validate(&self) -> Result<(), LoadError> {
        let fail = |m: String| Err(LoadError::Config(m));
        if self.payload < stamp::STAMP_LEN {
            return fail(format!(
                "payload must be at least {} bytes (it carries a timestamp and a sequence number), not {}",
                stamp::STAMP_LEN,
                self.payload
            ));
        }
        if self.publishers == 0 {
            return fail("at least one publisher is needed".into());
        }
        if u32::try_from(self.publishers).is_err() {
            return fail(format!("too many publishers: {}", self.publishers));
        }
        if self.duration.is_zero() {
            return fail("duration must be above 0".into());
        }
        if self.inflight == 0 {
            return fail("inflight must be at least 1".into());
        }
        if self.connect_concurrency == 0 {
            return fail("connect concurrency must be at least 1".into());
        }
        let sample_base = format!("{}/{}", self.topic_prefix.trim_end_matches('/'), run_id());
        Plan::new(
            self.scenario,
            &sample_base,
            self.publishers,
            self.subscribers,
        )?;
        Ok(())
    }
}

/// Counters a progress display can read while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    sent: PaddedCounter,
    delivered: PaddedCounter,
    clock: OnceLock<Clock>,
}

/// Where the run is in time, known once every client is connected.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: std::time::Instant,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Its own cache line, so publishers' and subscribers' increments do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedCounter(AtomicU64);

impl Live {
    /// Messages published so far.
    pub fn sent(&self) -> u64 {
        self.sent.0.load(Ordering::Relaxed)
    }

    /// First deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.0.load(Ordering::Relaxed)
    }

    /// `None` while clients are still connecting.
    pub fn clock(&self) -> Option<Clock> {
        self.clock.get().copied()
    }

    fn add_sent(&self, n: u64) {
        if n > 0 {
            self.sent.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn add_delivered(&self, n: u64) {
        self.delivered.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs one load test and reports on it.
pub async fn run(config: &LoadConfig, live: Arc<Live>) -> Result<Report, LoadError> {
    config.validate()?;
    let run_id = run_id();
    let base = format!("{}/{run_id}", config.topic_prefix.trim_end_matches('/'));
    let plan = Plan::new(
        config.scenario,
        &base,
        config.publishers,
        config.subscribers,
    )?;
    let cpu_before = proc_stat::own_cpu_times().ok();
    let wall_start = Instant::now();

    let connect_start = Instant::now();
    let subscribers = connect_all(config, &run_id, &plan, Role::Subscriber).await?;
    let publishers = connect_all(config, &run_id, &plan, Role::Publisher).await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    check_qos(config.qos, &publishers)?;

    let broker_before = config.broker_pid.and_then(|pid| broker::sample(pid).ok());
    let start = Instant::now();
    let end = start + config.warmup + config.duration;
    let timeline = Timeline {
        start,
        end,
        warmup_ns: duration_ns(config.warmup),
        end_ns: duration_ns(config.warmup + config.duration),
        deadline: end + config.drain,
    };
    let _ = live.clock.set(Clock {
        start: start.into_std(),
        warmup: config.warmup,
        duration: config.duration,
    });

    let window = (config.window > 0).then(|| {
        let mut fanout = vec![0u64; config.publishers];
        for range in &plan.sources {
            for publisher in range.clone() {
                fanout[publisher] += 1;
            }
        }
        Arc::new(roles::Window {
            window: config.window,
            delivered: (0..config.publishers).map(|_| AtomicU64::new(0)).collect(),
            fanout,
        })
    });
    let (done_tx, done_rx) = watch::channel(None);
    let mut subscriber_tasks = JoinSet::new();
    for (index, client) in subscribers.into_iter().enumerate() {
        let task = SubscriberTask {
            index,
            sources: plan.sources[index].clone(),
            timeline,
            done: done_rx.clone(),
            live: Arc::clone(&live),
            window: window.clone(),
        };
        let outcome = task
            .new_outcome()
            .map_err(|e| LoadError::Histogram(e.to_string()))?;
        subscriber_tasks.spawn(async move { (index, task.run(client, outcome).await) });
    }
    let mut publisher_tasks = JoinSet::new();
    for (index, client) in publishers.into_iter().enumerate() {
        let task = PublisherTask {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            window: window.clone(),
            topic: plan.topics[index].clone(),
            qos: config.qos,
            payload: config.payload,
            pacer: Pacer::new(start, config.rate, index, config.publishers),
            timeline,
            live: Arc::clone(&live),
        };
        publisher_tasks.spawn(async move { (index, task.run(client).await) });
    }

    let mut published: Vec<PublisherOutcome> = Vec::new();
    published.resize_with(config.publishers, PublisherOutcome::default);
    while let Some(joined) = publisher_tasks.join_next().await {
        let (index, outcome) = joined?;
        published[index] = outcome;
    }
    let sent: Arc<Vec<u64>> = Arc::new(published.iter().map(|p| p.sent).collect());
    // Subscribers may all have finished on error already: then nobody listens, which is fine.
    let _ = done_tx.send(Some(Arc::clone(&sent)));

    let mut received: Vec<Option<SubscriberOutcome>> = Vec::new();
    received.resize_with(config.subscribers, || None);
    while let Some(joined) = subscriber_tasks.join_next().await {
        let (index, outcome) = joined?;
        received[index] = Some(outcome);
    }
    let broker = config.broker_pid.and_then(|pid| {
        let after = broker::sample(pid).ok()?;
        let before = broker_before?;
        Some(BrokerUse::between(
            pid,
            &before,
            &after,
            start.elapsed().as_secs_f64(),
        ))
    });
    let wall = wall_start.elapsed();
    let cpu = cpu_before.and_then(|before| cpu_use(&before, wall.as_secs_f64()));

    let mut latency = Histogram::<u64>::new(3).map_err(|e| LoadError::Histogram(e.to_string()))?;
    let mut report = Report {
        scenario: config.scenario,
        mqtt_version: match config.version {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5",
        },
        qos: config.qos as u8,
        publishers: config.publishers,
        subscribers: config.subscribers,
        payload_bytes: config.payload,
        persistent_sessions: config.persistent_sessions,
        rate_per_publisher: config.rate,
        duration_secs: config.duration.as_secs_f64(),
        warmup_secs: config.warmup.as_secs_f64(),
        sent: sent.iter().sum(),
        sent_per_sec: published.iter().map(|p| p.sent_in_window).sum::<u64>() as f64
            / config.duration.as_secs_f64(),
        refused: published.iter().map(|p| p.refused).sum(),
        unacknowledged: published.iter().map(|p| p.unacknowledged).sum(),
        expected: plan.expected(&sent),
        delivered: 0,
        lost: 0,
        duplicates: 0,
        unexpected: 0,
        delivered_per_sec: 0.0,
        latency_us: Latency::default(),
        clients_connected: config.publishers + config.subscribers,
        connect_secs,
        generator_cpu: cpu,
        broker,
        errors: Vec::new(),
    };
    for (index, p) in published.iter().enumerate() {
        if let Some(e) = &p.error {
            report.errors.push(format!("publisher {index}: {e}"));
        }
    }
    let mut in_window = 0u64;
    for (index, outcome) in received.iter().enumerate() {
        let Some(s) = outcome else {
            report
                .errors
                .push(format!("subscriber {index}: no outcome"));
            continue;
        };
        for (publisher, tracker) in plan.sources[index].clone().zip(&s.trackers) {
            report.delivered += tracker.unique();
            report.duplicates += tracker.duplicates();
            report.lost += tracker.lost(sent[publisher]);
        }
        report.unexpected += s.unexpected;
        in_window += s.delivered_in_window;
        latency
            .add(&s.latency)
            .map_err(|e| LoadError::Histogram(e.to_string()))?;
        if let Some(e) = &s.error {
            report.errors.push(format!("subscriber {index}: {e}"));
        }
    }
    report.delivered_per_sec = in_window as f64 / config.duration.as_secs_f64();
    report.latency_us = Latency::from_histogram(&latency);
    Ok(report)
}

/// Runs a ramp of idle connections ([`conns::ramp`]).
pub async fn run_ramp(config: &LoadConfig) -> Result<ConnReport, LoadError> {
    config.validate()?;
    conns::ramp(config, &run_id()).await
}

/// Runs the connect / close loop ([`conns::connect_loop`]).
pub async fn run_connects(config: &LoadConfig) -> Result<ConnReport, LoadError> {
    config.validate()?;
    conns::connect_loop(config, &run_id()).await
}

/// This process's CPU use since `before`, over `wall_secs`.
fn cpu_use(before: &proc_stat::CpuTimes, wall_secs: f64) -> Option<CpuUse> {
    let used = proc_stat::own_cpu_times().ok()?.since(before);
    Some(CpuUse {
        user_secs: used.user.as_secs_f64(),
        system_secs: used.system.as_secs_f64(),
        wall_secs,
        cores: used.total().as_secs_f64() / wall_secs.max(f64::EPSILON),
        machine_cores: std::thread::available_parallelism().map_or(1, usize::from),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Subscriber => "subscriber",
        }
    }
}

/// Connects every client of one role, `connect_concurrency` at a time; subscribers also
/// subscribe. Fails on the first client that cannot.
async fn connect_all(
    config: &LoadConfig,
    run_id: &str,
    plan: &Plan,
    role: Role,
) -> Result<Vec<Client>, LoadError> {
    let (count, tag, offset) = match role {
        Role::Subscriber => (config.subscribers, 's', 0),
        Role::Publisher => (config.publishers, 'p', config.subscribers),
    };
    let gate = Arc::new(Semaphore::new(config.connect_concurrency));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let mut options = ClientOptions::new(ClientId::new(&format!("lg{run_id}{tag}{index}"))?);
        options.version = config.version;
        options.keep_alive = config.keep_alive;
        options.inflight = config.inflight;
        options.connect_timeout = config.connect_timeout;
        if config.persistent_sessions && role == Role::Subscriber {
            options.clean_start = false;
            options.session_expiry = Some(PERSISTENT_SESSION_EXPIRY);
        }
        if !config.source_addrs.is_empty() {
            options.local_addr =
                Some(config.source_addrs[(offset + index) % config.source_addrs.len()]);
        }
        let filter = (role == Role::Subscriber).then(|| plan.filters[index].clone());
        let (broker, qos, gate) = (config.broker, config.qos, Arc::clone(&gate));
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let result = async {
                let mut client = Client::connect_tcp(broker, &options).await?;
                if let Some(filter) = filter {
                    client.subscribe(&[filter], qos).await?;
                }
                Ok::<_, ClientError>(client)
            }
            .await;
            (index, result)
        });
    }
    let mut clients: Vec<Option<Client>> = Vec::new();
    clients.resize_with(count, || None);
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined?;
        match result {
            Ok(client) => clients[index] = Some(client),
            Err(source) => {
                tasks.abort_all();
                return Err(LoadError::Connect {
                    role: role.name(),
                    index,
                    source,
                });
            }
        }
    }
    Ok(clients.into_iter().flatten().collect())
}

/// MQTT 5 brokers may cap the QoS they accept (CONNACK Maximum QoS); publishing above it is a
/// protocol error, so the run stops before it starts.
fn check_qos(wanted: QoS, publishers: &[Client]) -> Result<(), LoadError> {
    for client in publishers {
        if let Some(allowed) = client.connack().properties.maximum_qos
            && allowed < wanted
        {
            return Err(LoadError::QoSNotSupported {
                allowed: allowed as u8,
                wanted: wanted as u8,
            });
        }
    }
    Ok(())
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Eight hex digits that differ between runs, so topics and client ids never collide with an
/// earlier or concurrent run on the same broker.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()).rotate_left(32));
    format!("{:08x}", (mixed ^ (mixed >> 32)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let base = LoadConfig::new(SocketAddr::from(([127, 0, 0, 1], 1883)));
        type Change = fn(&mut LoadConfig);
        let cases: [(&str, Change, bool); 9] = [
            ("defaults", |_| {}, true),
            ("payload 16", |c| c.payload = 16, true),
            ("payload 15", |c| c.payload = 15, false),
            ("no publishers", |c| c.publishers = 0, false),
            ("zero duration", |c| c.duration = Duration::ZERO, false),
            ("zero inflight", |c| c.inflight = 0, false),
            ("pairs 1:1", |c| c.scenario = Scenario::Pairs, true),
            (
                "pairs 2:1",
                |c| {
                    c.scenario = Scenario::Pairs;
                    c.publishers = 2;
                },
                false,
            ),
            ("wildcard prefix", |c| c.topic_prefix = "a/+".into(), false),
        ];
        for (name, change, ok) in cases {
            let mut c = base.clone();
            change(&mut c);
            assert_eq!(c.validate().is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn run_ids_are_short_hex() {
        let id = run_id();
        assert_eq!(id.len(), 8);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
