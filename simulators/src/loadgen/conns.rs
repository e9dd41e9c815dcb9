//! Connection scenarios: a ramp of idle connections (the broker's memory per connection, from
//! the slope of its RSS) and a connect / close loop (connects per second).
//!
//! Both open bare connections: a TCP socket, a CONNECT, the CONNACK, and nothing kept but the
//! socket. A full [`crate::client::Client`] carries 128 KiB of buffers, which would make the
//! generator, not the broker, the limit at twenty thousand connections. Closes use `SO_LINGER`
//! 0 (a RST, no `TIME_WAIT` on either side) and connections are spread over the configured
//! source addresses, so ports do not run out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use iothub_mqtt_codec::{Connect, Packet, ProtocolVersion, decode, encode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::broker::{self, BrokerUse};
use super::{CpuUse, Latency, LoadConfig, LoadError, cpu_use};
use crate::client::ClientError;
use crate::proc_stat;

/// Open files the generator keeps for itself (runtime, stdio) below its limit.
const OWN_FILES: u64 = 64;
/// Open files left to the broker below its limit (listeners, logs, databases).
const BROKER_FILES: u64 = 200;
/// Pause after each ramp step before reading the broker's RSS, so it has finished with the
/// connections it has just acknowledged.
const SETTLE: Duration = Duration::from_millis(300);
/// The connection count the per-connection slope is projected to.
pub const PROJECTED_CONNECTIONS: u64 = 100_000;
/// Distinct error messages kept in a report.
const MAX_ERRORS: usize = 5;

/// The broker's RSS with `connections` idle connections open.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RssSample {
    pub connections: u64,
    pub broker_rss_bytes: u64,
}

/// What a ramp or a connect loop measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnReport {
    /// `ramp` or `connects`.
    pub scenario: &'static str,
    pub mqtt_version: &'static str,
    /// Ramp: connections asked for; connects: concurrent connectors.
    pub target: u64,
    /// Ramp: the lower of the generator's and the broker's open-files limits, less headroom.
    pub open_files_cap: Option<u64>,
    /// Ramp: connections open at the end; connects: connects completed inside the window.
    pub connections: u64,
    pub failures: u64,
    /// Connects (TCP + CONNECT + CONNACK) per second.
    pub connects_per_sec: f64,
    /// From the TCP connect to the CONNACK.
    pub connect_latency_us: Latency,
    /// Ramp: the broker's RSS at each step (the first with no connection of ours).
    pub samples: Vec<RssSample>,
    /// Ramp: least-squares slope of RSS over connections.
    pub rss_per_connection_bytes: Option<f64>,
    /// Ramp: RSS at [`PROJECTED_CONNECTIONS`] on that line.
    pub projected_rss_100k_bytes: Option<f64>,
    pub broker: Option<BrokerUse>,
    pub generator_cpu: Option<CpuUse>,
    pub errors: Vec<String>,
}

/// Least-squares line through `(x, y)` points: `(slope, intercept)`, `None` with fewer than two
/// distinct x.
#[must_use]
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    Some((slope, mean_y - slope * mean_x))
}

/// Opens one bare MQTT connection: TCP from `local`, CONNECT, CONNACK. Returns the socket.
async fn open(
    config: &LoadConfig,
    local: Option<IpAddr>,
    client_id: &str,
) -> Result<TcpStream, ClientError> {
    let broker = config.broker;
    let socket = if broker.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| ClientError::Connect {
        addr: broker,
        source,
    })?;
    if let Some(local) = local {
        socket
            .bind(SocketAddr::new(local, 0))
            .map_err(|source| ClientError::Bind {
                addr: local,
                source,
            })?;
    }
    let timeout = config.connect_timeout;
    let mut stream = tokio::time::timeout(timeout, socket.connect(broker))
        .await
        .map_err(|_| ClientError::Connect {
            addr: broker,
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| ClientError::Connect {
            addr: broker,
            source,
        })?;
    stream.set_nodelay(true)?;
    let connect = Connect {
        protocol: config.version,
        clean_start: true,
        keep_alive: config.keep_alive,
        client_id: client_id.to_owned(),
        ..Connect::default()
    };
    let mut buf = BytesMut::with_capacity(64);
    encode(
        &Packet::Connect(Box::new(connect)),
        config.version,
        &mut buf,
    )?;
    let handshake = async {
        stream.write_all(&buf).await?;
        buf.clear();
        loop {
            if let Some(packet) = decode(&mut buf, Some(config.version), u32::MAX)? {
                return match packet {
                    Packet::ConnAck(connack) if connack.reason_code.is_error() => {
                        Err(ClientError::Refused(connack.reason_code))
                    }
                    Packet::ConnAck(_) => Ok(()),
                    other => Err(ClientError::Unexpected(other.packet_type())),
                };
            }
            if tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ClientError::ConnectTimeout(timeout))??;
    Ok(stream)
}

/// Closes with a RST (`SO_LINGER` 0): no `TIME_WAIT` left behind on either side.
fn abort(stream: TcpStream) {
    // Failing to set the option only costs a TIME_WAIT entry.
    let _ = stream.set_zero_linger();
    drop(stream);
}

fn source(config: &LoadConfig, n: usize) -> Option<IpAddr> {
    (!config.source_addrs.is_empty()).then(|| config.source_addrs[n % config.source_addrs.len()])
}

fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    }
}

fn keep_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < MAX_ERRORS && !errors.contains(&e) {
        errors.push(e);
    }
}

/// Opens up to `config.connections` idle connections in `config.ramp_steps` steps, reading the
/// broker's RSS after each; stops early at the first connection that fails.
pub async fn ramp(config: &LoadConfig, run_id: &str) -> Result<ConnReport, LoadError> {
    let cpu_before = proc_stat::own_cpu_times().ok();
    let wall_start = Instant::now();
    let own_cap = broker::open_files_limit_of("self")
        .ok()
        .flatten()
        .map(|l| l.saturating_sub(OWN_FILES));
    let broker_cap = config.broker_pid.and_then(|pid| {
        broker::open_files_limit_of(&pid.to_string())
            .ok()
            .flatten()
            .map(|l| l.saturating_sub(BROKER_FILES))
    });
    let cap = match (own_cap, broker_cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let target = cap.map_or(config.connections, |c| config.connections.min(c));
    let steps = config.ramp_steps.clamp(1, target.max(1) as usize) as u64;

    let read_broker = || config.broker_pid.and_then(|pid| broker::sample(pid).ok());
    tokio::time::sleep(SETTLE).await;
    let first = read_broker();
    let mut samples = Vec::new();
    if let Some(s) = first {
        samples.push(RssSample {
            connections: 0,
            broker_rss_bytes: s.memory.rss,
        });
    }
    let mut opened: Vec<TcpStream> = Vec::with_capacity(target as usize);
    let mut latency = Histogram::<u64>::new(3).map_err(|e| LoadError::Histogram(e.to_string()))?;
    let mut errors = Vec::new();
    let mut failures = 0u64;
    let mut connect_time = Duration::ZERO;
    let config = Arc::new(config.clone());
    'steps: for step in 1..=steps {
        let step_target = target * step / steps;
        let step_start = Instant::now();
        let mut tasks = JoinSet::new();
        let mut next = opened.len() as u64;
        while next < step_target || !tasks.is_empty() {
            while next < step_target && tasks.len() < config.connect_concurrency {
                let (config, id) = (Arc::clone(&config), format!("lg{run_id}r{next}"));
                let local = source(&config, next as usize);
                tasks.spawn(async move {
                    let t = Instant::now();
                    (open(&config, local, &id).await, t.elapsed())
                });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (result, took) = joined?;
            match result {
                Ok(stream) => {
                    opened.push(stream);
                    let _ = latency.record(took.as_micros().max(1) as u64);
                }
                Err(e) => {
                    failures += 1;
                    keep_error(&mut errors, format!("connection {}: {e}", opened.len()));
                    // Let the ones in flight finish, then stop: the cap is reached.
                    next = step_target;
                }
            }
        }
        connect_time += step_start.elapsed();
        tokio::time::sleep(SETTLE).await;
        if let Some(s) = read_broker() {
            samples.push(RssSample {
                connections: opened.len() as u64,
                broker_rss_bytes: s.memory.rss,
            });
        }
        if failures > 0 {
            break 'steps;
        }
    }
    let last = read_broker();
    let connections = opened.len() as u64;
    for stream in opened {
        abort(stream);
    }
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.connections as f64, s.broker_rss_bytes as f64))
        .collect();
    let line = fit_line(&points);
    let wall = wall_start.elapsed().as_secs_f64();
    Ok(ConnReport {
        scenario: "ramp",
        mqtt_version: version_name(config.version),
        target: config.connections,
        open_files_cap: cap,
        connections,
        failures,
        connects_per_sec: connections as f64 / connect_time.as_secs_f64().max(f64::EPSILON),
        connect_latency_us: Latency::from_histogram(&latency),
        samples,
        rss_per_connection_bytes: line.map(|(slope, _)| slope),
        projected_rss_100k_bytes: line
            .map(|(slope, intercept)| intercept + slope * PROJECTED_CONNECTIONS as f64),
        broker: config
            .broker_pid
            .zip(first.zip(last))
            .map(|(pid, (a, b))| BrokerUse::between(pid, &a, &b, wall)),
        generator_cpu: cpu_before.and_then(|before| cpu_use(&before, wall)),
        errors,
    })
}

/// For `warmup + duration`, `connect_concurrency` connectors each connect, wait for the
/// CONNACK and close with a RST, over and over; counts the connects completed in the window.
pub async fn connect_loop(config: &LoadConfig, run_id: &str) -> Result<ConnReport, LoadError> {
    let cpu_before = proc_stat::own_cpu_times().ok();
    let broker_before = config.broker_pid.and_then(|pid| broker::sample(pid).ok());
    let start = Instant::now();
    let window_start = start + config.warmup;
    let end = window_start + config.duration;
    let counter = Arc::new(AtomicUsize::new(0));
    let in_window = Arc::new(AtomicU64::new(0));
    let config = Arc::new(config.clone());
    let run_id: Arc<str> = Arc::from(run_id);
    let mut tasks = JoinSet::new();
    for worker in 0..config.connect_concurrency {
        let (config, counter, in_window, run_id) = (
            Arc::clone(&config),
            Arc::clone(&counter),
            Arc::clone(&in_window),
            Arc::clone(&run_id),
        );
        tasks.spawn(async move {
            let mut latency = Histogram::<u64>::new(3).ok();
            let (mut failures, mut errors) = (0u64, Vec::new());
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                // A client id per worker: a worker has one connection at a time.
                let id = format!("lg{run_id}c{worker}");
                let t = Instant::now();
                match open(&config, source(&config, n), &id).await {
                    Ok(stream) => {
                        let done = Instant::now();
                        abort(stream);
                        if done >= window_start && done < end {
                            in_window.fetch_add(1, Ordering::Relaxed);
                            if let Some(h) = latency.as_mut() {
                                let _ = h.record((done - t).as_micros().max(1) as u64);
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        keep_error(&mut errors, e.to_string());
                        // Back off a little so a refusing broker is not spun against.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latency, failures, errors)
        });
    }
    let mut latency = Histogram::<u64>::new(3).map_err(|e| LoadError::Histogram(e.to_string()))?;
    let (mut failures, mut errors) = (0u64, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (h, f, e) = joined?;
        if let Some(h) = h {
            latency
                .add(&h)
                .map_err(|e| LoadError::Histogram(e.to_string()))?;
        }
        failures += f;
        for e in e {
            keep_error(&mut errors, e);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let broker_after = config.broker_pid.and_then(|pid| broker::sample(pid).ok());
    let connections = in_window.load(Ordering::Relaxed);
    Ok(ConnReport {
        scenario: "connects",
        mqtt_version: version_name(config.version),
        target: config.connect_concurrency as u64,
        open_files_cap: None,
        connections,
        failures,
        connects_per_sec: connections as f64 / config.duration.as_secs_f64(),
        connect_latency_us: Latency::from_histogram(&latency),
        samples: Vec::new(),
        rss_per_connection_bytes: None,
        projected_rss_100k_bytes: None,
        broker: config
            .broker_pid
            .zip(broker_before.zip(broker_after))
            .map(|(pid, (a, b))| BrokerUse::between(pid, &a, &b, wall)),
        generator_cpu: cpu_before.and_then(|before| cpu_use(&before, wall)),
        errors,
    })
}

impl std::fmt::Display for ConnReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.connect_latency_us;
        if self.scenario == "ramp" {
            writeln!(
                f,
                "ramp | MQTT {} | {} idle connections asked{}",
                self.mqtt_version,
                self.target,
                self.open_files_cap
                    .map(|c| format!(", open-files cap {c}"))
                    .unwrap_or_default()
            )?;
            writeln!(
                f,
                "  open        {} connections, {} failures, {:.0} connects/s",
                self.connections, self.failures, self.connects_per_sec
            )?;
            for s in &self.samples {
                writeln!(
                    f,
                    "  broker RSS  {:>7} connections  {:>10.1} MiB",
                    s.connections,
                    s.broker_rss_bytes as f64 / 1_048_576.0
                )?;
            }
            match (self.rss_per_connection_bytes, self.projected_rss_100k_bytes) {
                (Some(slope), Some(projected)) => writeln!(
                    f,
                    "  per conn    {slope:.0} B of broker RSS per connection (slope); {} connections -> {:.0} MiB",
                    PROJECTED_CONNECTIONS,
                    projected / 1_048_576.0
                )?,
                _ => writeln!(f, "  per conn    unknown (needs --broker-pid)")?,
            }
        } else {
            writeln!(
                f,
                "connects | MQTT {} | {} connectors, close with SO_LINGER 0",
                self.mqtt_version, self.target
            )?;
            writeln!(
                f,
                "  connects    {} in the window, {:.0}/s, {} failures",
                self.connections, self.connects_per_sec, self.failures
            )?;
        }
        writeln!(
            f,
            "  connect µs  p50 {}   p99 {}   p999 {}   max {}   (n = {})",
            l.p50, l.p99, l.p999, l.max, l.count
        )?;
        if let Some(b) = &self.broker {
            writeln!(f, "  broker      {b}")?;
        }
        if let Some(c) = &self.generator_cpu {
            writeln!(
                f,
                "  generator   CPU {:.2} s over {:.2} s = {:.2} of {} cores",
                c.user_secs + c.system_secs,
                c.wall_secs,
                c.cores,
                c.machine_cores
            )?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_lines() {
        // (points, expected (slope, intercept))
        type Line = Option<(f64, f64)>;
        let cases: [(&[(f64, f64)], Line); 5] = [
            (&[], None),
            (&[(1.0, 5.0)], None),
            (&[(2.0, 1.0), (2.0, 9.0)], None),
            (&[(0.0, 100.0), (10.0, 120.0)], Some((2.0, 100.0))),
            // Noise around y = 3x + 1000.
            (
                &[
                    (0.0, 1001.0),
                    (100.0, 1299.0),
                    (200.0, 1601.0),
                    (300.0, 1899.0),
                ],
                Some((2.996, 1000.6)),
            ),
        ];
        for (points, expected) in cases {
            let got = fit_line(points);
            match (got, expected) {
                (None, None) => {}
                (Some((s, i)), Some((es, ei))) => {
                    assert!(
                        (s - es).abs() < 1e-6 && (i - ei).abs() < 1e-6,
                        "{points:?}: {got:?}"
                    );
                }
                _ => panic!("{points:?}: {got:?} != {expected:?}"),
            }
        }
    }
}
