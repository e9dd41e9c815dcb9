//! The summary of a run: what was sent, what arrived, how fast and how late.
//!
//! One flat, serialisable struct, so the text summary and `--json` can never disagree and
//! benchmark scripts read the same numbers a person sees.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{BrokerUse, Scenario};

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    /// "3.1.1" or "5".
    pub mqtt_version: &'static str,
    pub qos: u8,
    pub publishers: usize,
    pub subscribers: usize,
    pub payload_bytes: usize,
    /// Subscribers kept persistent sessions (clean start 0, a session expiry).
    pub persistent_sessions: bool,
    /// Messages per second per publisher; 0 means as fast as the window allows.
    pub rate_per_publisher: u32,
    /// The measured window, after the warm-up.
    pub duration_secs: f64,
    pub warmup_secs: f64,

    /// Messages published over the whole run (warm-up included).
    pub sent: u64,
    /// Messages published inside the measured window, per second.
    pub sent_per_sec: f64,
    /// QoS 1/2 publishes the broker acknowledged with an error reason code (MQTT 5).
    pub refused: u64,
    /// QoS 1/2 publishes still unacknowledged when the run ended.
    pub unacknowledged: u64,

    /// Deliveries the scenario calls for: each message times the subscribers it matches.
    pub expected: u64,
    /// Distinct messages received (a duplicate counts once here).
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Extra copies of a message already received by the same subscriber.
    pub duplicates: u64,
    /// Messages a subscriber should not have received (wrong publisher, unreadable payload).
    pub unexpected: u64,
    /// Distinct messages received inside the measured window, per second.
    pub delivered_per_sec: f64,

    /// Send-to-receive time of messages sent inside the window (and received before the
    /// drain deadline).
    pub latency_us: Latency,

    pub clients_connected: usize,
    /// Time taken to connect (and subscribe) every client.
    pub connect_secs: f64,
    /// The generator's own CPU use over the whole run; `None` where `/proc` is unavailable.
    pub generator_cpu: Option<CpuUse>,
    /// The broker's CPU and memory from the start of publishing to the end of the drain, when
    /// its process id was given.
    pub broker: Option<BrokerUse>,

    /// One line per client that failed during the run (connection lost, refused…).
    pub errors: Vec<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    #[must_use]
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// CPU time against wall time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuUse {
    pub user_secs: f64,
    pub system_secs: f64,
    pub wall_secs: f64,
    /// (user + system) / wall: 1.0 is one core busy the whole time.
    pub cores: f64,
    /// Cores the machine offers, for scale.
    pub machine_cores: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.rate_per_publisher == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s per publisher", self.rate_per_publisher)
        };
        let sessions = if self.persistent_sessions {
            " (persistent sessions)"
        } else {
            ""
        };
        writeln!(
            f,
            "{} | MQTT {} | QoS {} | {} publishers -> {} subscribers{} | {} B payload | rate {} | {:.1} s (+{:.1} s warm-up)",
            self.scenario,
            self.mqtt_version,
            self.qos,
            self.publishers,
            self.subscribers,
            sessions,
            self.payload_bytes,
            rate,
            self.duration_secs,
            self.warmup_secs
        )?;
        writeln!(
            f,
            "  sent        {:>12}   {:>12.0} msgs/s   refused {}, unacknowledged {}",
            self.sent, self.sent_per_sec, self.refused, self.unacknowledged
        )?;
        writeln!(
            f,
            "  delivered   {:>12}   {:>12.0} msgs/s   expected {}, lost {}, duplicates {}, unexpected {}",
            self.delivered,
            self.delivered_per_sec,
            self.expected,
            self.lost,
            self.duplicates,
            self.unexpected
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "  latency µs  p50 {}   p99 {}   p999 {}   max {}   mean {:.1}   (n = {})",
            l.p50, l.p99, l.p999, l.max, l.mean, l.count
        )?;
        writeln!(
            f,
            "  connect     {} clients in {:.3} s",
            self.clients_connected, self.connect_secs
        )?;
        match &self.generator_cpu {
            Some(c) => writeln!(
                f,
                "  generator   CPU {:.2} s (user {:.2}, system {:.2}) over {:.2} s = {:.2} of {} cores",
                c.user_secs + c.system_secs,
                c.user_secs,
                c.system_secs,
                c.wall_secs,
                c.cores,
                c.machine_cores
            )?,
            None => writeln!(f, "  generator   CPU time unavailable (no /proc)")?,
        }
        if let Some(b) = &self.broker {
            writeln!(f, "  broker      {b}")?;
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
    fn latency_summary_from_histogram() {
        // (recorded values, expected count, p50, max)
        let cases: [(&[u64], u64, u64, u64); 3] = [
            (&[], 0, 0, 0),
            (&[100], 1, 100, 100),
            (&[10, 20, 30, 40, 1000], 5, 30, 1000),
        ];
        for (values, count, p50, max) in cases {
            let mut h = Histogram::<u64>::new(3).unwrap();
            for &v in values {
                h.record(v).unwrap();
            }
            let l = Latency::from_histogram(&h);
            assert_eq!((l.count, l.p50, l.max), (count, p50, max), "{values:?}");
        }
    }
}
