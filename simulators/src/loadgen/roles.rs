//! The two client roles of a run: a publisher paced by rate and window, and a subscriber that
//! stamps out latency, loss and duplicates. Each runs on its own task and owns its client; the
//! only shared state is the [`Live`] counters and the final sent counts sent through a
//! `watch` channel when publishing stops.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use iothub_model::TopicName;
use iothub_mqtt_codec::QoS;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

use super::Live;
use super::stamp::Stamp;
use super::tracker::{Seen, SeqTracker};
use crate::client::{Client, Event, Outgoing};

/// Most bytes a publisher encodes before it lets the transport catch up: bounds the write
/// buffer when neither a rate nor a window holds it back (QoS 0 flat out).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Time allowed for a polite DISCONNECT at the end.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The histogram's precision: 3 significant digits (0.1 % error) is what latency tools use.
const SIGNIFICANT_DIGITS: u8 = 3;

/// The phases of a run, shared by every task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    /// Timestamps in payloads count from here.
    pub start: Instant,
    /// Publishing stops here.
    pub end: Instant,
    /// Messages sent from `start + warmup_ns` on are measured.
    pub warmup_ns: u64,
    pub end_ns: u64,
    /// Subscribers and unacknowledged publishers give up here.
    pub deadline: Instant,
}

impl Timeline {
    fn now_ns(&self) -> u64 {
        nanos(self.start.elapsed())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// When a publisher may send its n-th message.
///
/// Drift-free: the schedule is computed from the origin, not from the previous send, so a late
/// wake-up is caught up with a burst instead of lowering the rate. Publishers are staggered
/// evenly over one interval so they do not all send in the same instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    origin: Instant,
    /// Messages per second; 0 is unlimited.
    rate: u32,
}

impl Pacer {
    pub(crate) fn new(start: Instant, rate: u32, index: usize, publishers: usize) -> Self {
        let offset = if rate == 0 || publishers == 0 {
            Duration::ZERO
        } else {
            let interval_ns = 1_000_000_000 / u64::from(rate);
            Duration::from_nanos(interval_ns * index as u64 / publishers as u64)
        };
        Self {
            origin: start + offset,
            rate,
        }
    }

    /// How many more messages may go at `now` when `sent` have gone.
    pub(crate) fn allowed(&self, now: Instant, sent: u64) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        if now < self.origin {
            return 0;
        }
        let elapsed = (now - self.origin).as_nanos();
        let due = elapsed * u128::from(self.rate) / 1_000_000_000 + 1;
        u64::try_from(due).unwrap_or(u64::MAX).saturating_sub(sent)
    }

    /// When message number `sent` (0-based) is due; `None` when unlimited.
    pub(crate) fn due(&self, sent: u64) -> Option<Instant> {
        if self.rate == 0 {
            return None;
        }
        let ns = (u128::from(sent) * 1_000_000_000).div_ceil(u128::from(self.rate));
        Some(self.origin + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }
}

/// The end-to-end window: each publisher's messages delivered so far (all subscribers
/// together), so a publisher can stay at most `window` messages ahead of its slowest
/// listeners instead of filling the broker's queues. Shared by every task of a run.
#[derive(Debug)]
pub(crate) struct Window {
    /// Messages a publisher may have sent and not yet delivered to every subscriber of it.
    pub window: u64,
    /// Deliveries (first copies) of publisher i's messages, over all its subscribers.
    pub delivered: Vec<AtomicU64>,
    /// How many subscribers hear publisher i.
    pub fanout: Vec<u64>,
}

impl Window {
    /// Whether publisher `index`, having sent `sent`, may send one more.
    pub(crate) fn open(&self, index: usize, sent: u64) -> bool {
        let fanout = self.fanout[index];
        if fanout == 0 {
            return true;
        }
        let done = self.delivered[index].load(Ordering::Relaxed) / fanout;
        sent.saturating_sub(done) < self.window
    }
}

/// How long a publisher held back by the end-to-end window waits before looking again.
const WINDOW_POLL: Duration = Duration::from_millis(1);

pub(crate) struct PublisherTask {
    pub index: u32,
    pub window: Option<Arc<Window>>,
    pub topic: TopicName,
    pub qos: QoS,
    pub payload: usize,
    pub pacer: Pacer,
    pub timeline: Timeline,
    pub live: Arc<Live>,
}

#[derive(Debug, Default)]
pub(crate) struct PublisherOutcome {
    pub sent: u64,
    pub sent_in_window: u64,
    pub refused: u64,
    pub unacknowledged: u64,
    pub error: Option<String>,
}

impl PublisherTask {
    pub(crate) async fn run(self, mut client: Client) -> PublisherOutcome {
        let mut out = PublisherOutcome::default();
        let mut template = Outgoing::new(&self.topic, self.qos, false);
        let mut payloads = BytesMut::with_capacity(WRITE_HIGH_WATER);
        let tl = self.timeline;
        let end = tokio::time::sleep_until(tl.end);
        tokio::pin!(end);
        let pace = tokio::time::sleep_until(tl.end);
        tokio::pin!(pace);

        let result: Result<(), crate::client::ClientError> = async {
            loop {
                let now = Instant::now();
                if now >= tl.end {
                    return Ok(());
                }
                let mut allowed = self.pacer.allowed(now, out.sent);
                let before = out.sent;
                let mut held = false;
                while allowed > 0
                    && client.pending_write() < WRITE_HIGH_WATER
                    && (self.qos == QoS::AtMostOnce || client.can_publish())
                {
                    if let Some(w) = &self.window
                        && !w.open(self.index as usize, out.sent)
                    {
                        held = true;
                        break;
                    }
                    let sent_ns = tl.now_ns();
                    if sent_ns >= tl.end_ns {
                        break;
                    }
                    Stamp {
                        sent_ns,
                        publisher: self.index,
                        sequence: u32::try_from(out.sent).unwrap_or(u32::MAX),
                    }
                    .write(&mut payloads, self.payload);
                    client.publish(&mut template, payloads.split().freeze())?;
                    out.sent += 1;
                    if sent_ns >= tl.warmup_ns {
                        out.sent_in_window += 1;
                    }
                    allowed -= 1;
                }
                self.live.add_sent(out.sent - before);
                // Only a rate-limited publisher that used its allowance waits for the clock;
                // otherwise it waits for the window or the socket.
                let wait_for_clock = allowed == 0 || held;
                if held {
                    pace.as_mut().reset(Instant::now() + WINDOW_POLL);
                } else if wait_for_clock && let Some(due) = self.pacer.due(out.sent) {
                    pace.as_mut().reset(due);
                }
                tokio::select! {
                    biased;
                    () = &mut end => return Ok(()),
                    event = client.next_event() => self.on_event(event?, &mut out),
                    () = &mut pace, if wait_for_clock => {}
                }
            }
        }
        .await;

        if let Err(e) = result {
            out.error = Some(e.to_string());
            out.unacknowledged = client.in_flight() as u64;
            return out;
        }
        // Wait for the last acknowledgements, then leave politely.
        let mut result = Ok(());
        while client.in_flight() > 0 {
            tokio::select! {
                () = sleep_until(tl.deadline) => break,
                event = client.next_event() => match event {
                    Ok(event) => self.on_event(event, &mut out),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            }
        }
        out.unacknowledged = client.in_flight() as u64;
        match result {
            Ok(()) => {
                if let Ok(Err(e)) =
                    tokio::time::timeout(DISCONNECT_TIMEOUT, client.disconnect()).await
                {
                    tracing::debug!(publisher = self.index, error = %e, "disconnect failed");
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        out
    }

    fn on_event(&self, event: Event, out: &mut PublisherOutcome) {
        if let Event::Acked { reason, .. } = event
            && reason.is_error()
        {
            out.refused += 1;
        }
    }
}

pub(crate) struct SubscriberTask {
    pub index: usize,
    /// Publishers this subscriber must hear from.
    pub sources: Range<usize>,
    pub timeline: Timeline,
    /// Becomes `Some(sent per publisher)` once every publisher has stopped.
    pub done: watch::Receiver<Option<Arc<Vec<u64>>>>,
    pub live: Arc<Live>,
    pub window: Option<Arc<Window>>,
}

#[derive(Debug)]
pub(crate) struct SubscriberOutcome {
    /// One per source publisher, in order.
    pub trackers: Vec<SeqTracker>,
    /// Microseconds.
    pub latency: Histogram<u64>,
    pub delivered_in_window: u64,
    pub unexpected: u64,
    pub error: Option<String>,
}

impl SubscriberTask {
    pub(crate) fn new_outcome(&self) -> Result<SubscriberOutcome, hdrhistogram::CreationError> {
        Ok(SubscriberOutcome {
            trackers: vec![SeqTracker::default(); self.sources.len()],
            latency: Histogram::new(SIGNIFICANT_DIGITS)?,
            delivered_in_window: 0,
            unexpected: 0,
            error: None,
        })
    }

    pub(crate) async fn run(
        mut self,
        mut client: Client,
        mut out: SubscriberOutcome,
    ) -> SubscriberOutcome {
        let deadline = tokio::time::sleep_until(self.timeline.deadline);
        tokio::pin!(deadline);
        let mut expected: Option<u64> = None;
        let mut done_open = true;
        let mut unique = 0u64;
        loop {
            if expected.is_some_and(|e| unique >= e) {
                break;
            }
            tokio::select! {
                biased;
                () = &mut deadline => break,
                changed = self.done.changed(), if done_open && expected.is_none() => {
                    match changed {
                        Ok(()) => {
                            if let Some(sent) = self.done.borrow_and_update().as_ref() {
                                expected = Some(sent[self.sources.clone()].iter().sum());
                            }
                        }
                        // The run was abandoned: wait for the deadline.
                        Err(_) => done_open = false,
                    }
                }
                event = client.next_event() => match event {
                    Ok(Event::Message(publish)) => {
                        if self.record(&publish.payload, &mut out) {
                            unique += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        out.error = Some(e.to_string());
                        return out;
                    }
                },
            }
        }
        if let Ok(Err(e)) = tokio::time::timeout(DISCONNECT_TIMEOUT, client.disconnect()).await {
            tracing::debug!(subscriber = self.index, error = %e, "disconnect failed");
        }
        out
    }

    /// Accounts one received payload; true if it is a first delivery of an expected message.
    fn record(&self, payload: &[u8], out: &mut SubscriberOutcome) -> bool {
        let now_ns = self.timeline.now_ns();
        let Some(stamp) = Stamp::read(payload) else {
            out.unexpected += 1;
            return false;
        };
        let publisher = stamp.publisher as usize;
        if !self.sources.contains(&publisher) {
            out.unexpected += 1;
            return false;
        }
        match out.trackers[publisher - self.sources.start].record(stamp.sequence) {
            Seen::First => {
                if let Some(w) = &self.window {
                    w.delivered[publisher].fetch_add(1, Ordering::Relaxed);
                }
            }
            Seen::Duplicate => return false,
            Seen::OutOfRange => {
                out.unexpected += 1;
                return false;
            }
        }
        if stamp.sent_ns >= self.timeline.warmup_ns {
            // Rounded to the nearest microsecond; never 0 so the histogram keeps it.
            let micros = (now_ns.saturating_sub(stamp.sent_ns) + 500) / 1000;
            // `record` grows the histogram as needed (`saturating_record` would clamp to its
            // current top and hide the tail); it only fails beyond i64::MAX / 2.
            if out.latency.record(micros.max(1)).is_err() {
                out.latency.saturating_record(micros);
            }
        }
        if (self.timeline.warmup_ns..self.timeline.end_ns).contains(&now_ns) {
            out.delivered_in_window += 1;
        }
        self.live.add_delivered(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscriber_accounting() {
        // The run started 50 ms ago; the warm-up ended 20 ms ago; the window is still open.
        let start = Instant::now() - Duration::from_millis(50);
        let timeline = Timeline {
            start,
            end: start + Duration::from_secs(60),
            warmup_ns: 30_000_000,
            end_ns: 60_000_000_000,
            deadline: start + Duration::from_secs(61),
        };
        let (_tx, done) = watch::channel(None);
        let task = SubscriberTask {
            index: 0,
            sources: 2..4,
            timeline,
            done,
            live: Arc::new(Live::default()),
            window: None,
        };
        let mut out = task.new_outcome().unwrap();
        let payload = |sent_ns, publisher, sequence| {
            let mut b = BytesMut::new();
            Stamp {
                sent_ns,
                publisher,
                sequence,
            }
            .write(&mut b, 32);
            b
        };
        // (payload, first delivery?)
        let cases = [
            (payload(40_000_000, 2, 0), true),  // ~10 ms old, measured
            (payload(40_000_000, 2, 0), false), // duplicate
            (payload(10_000_000, 3, 0), true),  // sent during warm-up: not measured
            (payload(0, 3, 1), true),           // ~50 ms old but sent in warm-up: not measured
            (payload(45_000_000, 1, 0), false), // publisher 1 is not a source
            (payload(45_000_000, 4, 0), false), // nor is 4
            (BytesMut::from(&b"short"[..]), false),
        ];
        for (i, (bytes, first)) in cases.iter().enumerate() {
            assert_eq!(task.record(bytes, &mut out), *first, "case {i}");
        }
        assert_eq!(out.trackers[0].unique(), 1);
        assert_eq!(out.trackers[0].duplicates(), 1);
        assert_eq!(out.trackers[1].unique(), 2);
        assert_eq!(out.unexpected, 3);
        assert_eq!(out.delivered_in_window, 3);
        assert_eq!(task.live.delivered(), 3);
        // Only the first message was measured, at about 10 ms: above the histogram's initial
        // range, so this also checks that the tail is not clamped.
        assert_eq!(out.latency.len(), 1);
        assert!(out.latency.max() >= 10_000, "{}", out.latency.max());
    }

    #[test]
    fn window_holds_publishers_ahead_of_their_subscribers() {
        // Publisher 0 is heard by 2 subscribers, publisher 1 by none; a window of 3.
        let w = Window {
            window: 3,
            delivered: vec![AtomicU64::new(0), AtomicU64::new(0)],
            fanout: vec![2, 0],
        };
        // (deliveries of publisher 0 so far, sent, may send one more?)
        let cases = [
            (0, 0, true),
            (0, 2, true),
            (0, 3, false),
            (1, 3, false), // one subscriber has message 0, the other not yet
            (2, 3, true),  // both have it
            (2, 4, false),
            (8, 6, true),
        ];
        for (delivered, sent, open) in cases {
            w.delivered[0].store(delivered, Ordering::Relaxed);
            assert_eq!(w.open(0, sent), open, "{delivered} delivered, {sent} sent");
        }
        assert!(w.open(1, 1_000_000), "no subscriber: never held");
    }

    #[test]
    fn pacer_schedule() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        /// Publisher `index` of `publishers` at `rate`/s, `at` after the start, having sent
        /// `sent`: may send `allowed` more, and message number `sent` is due at `due`.
        struct Case {
            rate: u32,
            index: usize,
            publishers: usize,
            at: Duration,
            sent: u64,
            allowed: u64,
            due: Option<Duration>,
        }
        let case = |rate, index, publishers, at, sent, allowed, due| Case {
            rate,
            index,
            publishers,
            at,
            sent,
            allowed,
            due,
        };
        let cases = [
            case(0, 0, 1, ms(0), 0, u64::MAX, None),
            case(0, 3, 4, ms(5), 1_000_000, u64::MAX, None),
            case(10, 0, 1, ms(0), 0, 1, Some(ms(0))),
            case(10, 0, 1, ms(0), 1, 0, Some(ms(100))),
            case(10, 0, 1, ms(250), 1, 2, Some(ms(100))),
            case(10, 0, 1, ms(1000), 11, 0, Some(ms(1100))),
            // Publisher 1 of 2 at 10/s starts half an interval late.
            case(10, 1, 2, ms(40), 0, 0, Some(ms(50))),
            case(10, 1, 2, ms(60), 0, 1, Some(ms(50))),
        ];
        for Case {
            rate,
            index,
            publishers,
            at: elapsed,
            sent,
            allowed,
            due,
        } in cases
        {
            let pacer = Pacer::new(start, rate, index, publishers);
            assert_eq!(
                pacer.allowed(start + elapsed, sent),
                allowed,
                "rate {rate}, publisher {index}/{publishers}, at {elapsed:?} after {sent}"
            );
            assert_eq!(
                pacer.due(sent).map(|t| t - start),
                due,
                "rate {rate}, publisher {index}/{publishers}, due of {sent}"
            );
        }
    }
}
