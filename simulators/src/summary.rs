//! What every `iothub-sim` simulator reports: how many messages it sent, how many the hub
//! accepted or refused (and why), how many failed in transit, and the latency of each accepted
//! one (request to answer for HTTP, PUBLISH to PUBACK for MQTT) in an HDR histogram.
//!
//! A [`Tally`] is kept per group (a transport of the fleet, or the whole run of a network
//! simulator); [`Report`] is the summary printed at the end, as text or JSON. The progress bar
//! ([`progress`]) is drawn on stderr only when it is a terminal and `--quiet` is not given.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Highest latency the histogram records exactly (60 s, in microseconds); slower answers
/// are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Counts and latencies of one group of messages.
#[derive(Debug, Clone)]
pub struct Tally {
    sent: u64,
    accepted: u64,
    refused: u64,
    failed: u64,
    /// Why messages were refused or failed: an HTTP status, an MQTT reason code or an error,
    /// with how often.
    reasons: BTreeMap<String, u64>,
    /// `None` only if the histogram could not be made (its bounds are constants it accepts).
    latency: Option<Histogram<u64>>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    /// An empty tally.
    #[must_use]
    pub fn new() -> Self {
        Self {
            sent: 0,
            accepted: 0,
            refused: 0,
            failed: 0,
            reasons: BTreeMap::new(),
            // Three significant digits from 1 µs to 60 s.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).ok(),
        }
    }

    /// A message left (before its answer is known).
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// The hub accepted a message after `latency`.
    pub fn accepted(&mut self, latency: Duration) {
        self.accepted += 1;
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        if let Some(h) = self.latency.as_mut() {
            // Clamped to the histogram's range, so recording cannot fail.
            let _ = h.record(us);
        }
    }

    /// The hub answered with a refusal (`reason`: status and message, or reason code).
    pub fn refused(&mut self, reason: impl Into<String>) {
        self.refused += 1;
        *self.reasons.entry(reason.into()).or_default() += 1;
    }

    /// The message got no answer (connection error, timeout).
    pub fn failed(&mut self, reason: impl Into<String>) {
        self.failed += 1;
        *self.reasons.entry(reason.into()).or_default() += 1;
    }

    /// Adds another tally's counts and latencies to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.failed += other.failed;
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += n;
        }
        if let (Some(h), Some(o)) = (self.latency.as_mut(), other.latency.as_ref()) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = h.add(o);
        }
    }

    /// Messages sent so far.
    #[must_use]
    pub fn sent_count(&self) -> u64 {
        self.sent
    }

    /// Messages accepted so far.
    #[must_use]
    pub fn accepted_count(&self) -> u64 {
        self.accepted
    }

    /// The summary line of this tally over `elapsed`.
    #[must_use]
    pub fn summarise(&self, group: &str, elapsed: Duration) -> GroupSummary {
        let h = self.latency.as_ref().filter(|h| !h.is_empty());
        let n = h.map_or(0, Histogram::len);
        let at = |q: f64| h.map(|h| h.value_at_quantile(q));
        GroupSummary {
            group: group.to_owned(),
            sent: self.sent,
            accepted: self.accepted,
            refused: self.refused,
            failed: self.failed,
            reasons: self.reasons.clone(),
            accepted_per_sec: rate(self.accepted, elapsed),
            latency_us: LatencySummary {
                count: n,
                p50: at(0.5),
                p99: at(0.99),
                max: h.map(Histogram::max),
                mean: h.map(|h| h.mean().round() as u64),
            },
        }
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (count as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Latency percentiles in microseconds (`None` when nothing was accepted).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    pub mean: Option<u64>,
}

/// One group's figures, as printed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupSummary {
    pub group: String,
    pub sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub failed: u64,
    pub reasons: BTreeMap<String, u64>,
    pub accepted_per_sec: f64,
    pub latency_us: LatencySummary,
}

/// The end-of-run summary of a simulator: its name, what it ran against, how long, and one
/// line per group plus the total. `checks` lists extra verdicts (downlinks received and
/// verified, say) as `name -> (passed, detail)`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub simulator: String,
    pub target: String,
    pub elapsed_secs: f64,
    pub groups: Vec<GroupSummary>,
    pub total: GroupSummary,
    pub checks: BTreeMap<String, Check>,
    /// What was sent, one JSON object per message (the first [`LOG_LIMIT`]), so a test can
    /// compare it with what arrived over MQTT.
    pub log: Vec<serde_json::Value>,
    /// What came back from the hub besides acceptances (downlinks), one JSON object each.
    pub received: Vec<serde_json::Value>,
}

/// The most messages a [`Report::log`] keeps.
pub const LOG_LIMIT: usize = 10_000;

/// An extra verdict of a run (a downlink answer that matched, a join accepted, ...).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Check {
    pub passed: u64,
    pub failed: u64,
    pub details: Vec<String>,
}

impl Report {
    /// A report of `groups` (name, tally) over `elapsed`; the total merges them all.
    #[must_use]
    pub fn new(
        simulator: &str,
        target: &str,
        elapsed: Duration,
        groups: &[(String, Tally)],
    ) -> Self {
        let mut total = Tally::new();
        for (_, t) in groups {
            total.merge(t);
        }
        Self {
            simulator: simulator.to_owned(),
            target: target.to_owned(),
            elapsed_secs: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            groups: groups
                .iter()
                .map(|(g, t)| t.summarise(g, elapsed))
                .collect(),
            total: total.summarise("total", elapsed),
            checks: BTreeMap::new(),
            log: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Did every message get accepted and every check pass?
    #[must_use]
    pub fn all_ok(&self) -> bool {
        self.total.refused == 0
            && self.total.failed == 0
            && self.total.accepted == self.total.sent
            && self.checks.values().all(|c| c.failed == 0)
    }

    /// The human-readable summary.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} -> {} | {:.1} s\n",
            self.simulator, self.target, self.elapsed_secs
        );
        let fmt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let mut line = |g: &GroupSummary| {
            let _ = writeln!(
                s,
                "  {:<8} sent {:>7}  accepted {:>7} ({:.1}/s)  refused {:>5}  failed {:>5}  latency µs p50 {} p99 {} max {}",
                g.group,
                g.sent,
                g.accepted,
                g.accepted_per_sec,
                g.refused,
                g.failed,
                fmt(g.latency_us.p50),
                fmt(g.latency_us.p99),
                fmt(g.latency_us.max),
            );
            for (reason, n) in &g.reasons {
                let _ = writeln!(s, "           {n} x {reason}");
            }
        };
        for g in &self.groups {
            line(g);
        }
        if self.groups.len() != 1 {
            line(&self.total);
        }
        if !self.received.is_empty() {
            let _ = writeln!(s, "  received {} downlinks", self.received.len());
        }
        for (name, c) in &self.checks {
            let _ = writeln!(
                s,
                "  check {name}: {} passed, {} failed",
                c.passed, c.failed
            );
            for d in &c.details {
                let _ = writeln!(s, "           {d}");
            }
        }
        s
    }
}

impl Check {
    /// Records one outcome; failures keep their detail (the first 20).
    pub fn record(&mut self, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            if self.details.len() < 20 {
                self.details.push(detail());
            }
        }
    }
}

/// A progress bar over `total` messages on stderr, hidden with `quiet` or when stderr is not
/// a terminal (tests, pipes).
#[must_use]
pub fn progress(total: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_and_merges() {
        let mut a = Tally::new();
        a.sent();
        a.accepted(Duration::from_millis(2));
        a.sent();
        a.refused("401 wrong secret");
        let mut b = Tally::new();
        b.sent();
        b.failed("connection refused");
        let report = Report::new(
            "rest",
            "http://x",
            Duration::from_secs(1),
            &[("a".into(), a), ("b".into(), b)],
        );
        assert_eq!(report.total.sent, 3);
        assert_eq!(report.total.accepted, 1);
        assert_eq!(report.total.refused, 1);
        assert_eq!(report.total.failed, 1);
        assert_eq!(report.total.reasons.len(), 2);
        assert_eq!(report.total.latency_us.count, 1);
        assert!(
            report
                .total
                .latency_us
                .p50
                .is_some_and(|p| (1900..=2100).contains(&p))
        );
        assert!(!report.all_ok());
        assert!(report.to_text().contains("401 wrong secret"));
    }

    #[test]
    fn an_empty_tally_has_no_latency() {
        let report = Report::new("x", "y", Duration::ZERO, &[("all".into(), Tally::new())]);
        assert_eq!(report.total.latency_us.p50, None);
        assert_eq!(report.total.accepted_per_sec, 0.0);
        assert!(report.all_ok());
    }
}
