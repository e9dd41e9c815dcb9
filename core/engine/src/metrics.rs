//! The metrics of one hub, through the `metrics` facade (the binary installs the
//! exporter). Handles are registered once per hub and cached, so the publish path only
//! bumps a counter, and the labels are the hub id plus, for refusals, a reason from a
//! closed set (bounded cardinality: never a client or device label).
//!
//! Handles are bound to the recorder installed when the hub is created: the binary must
//! install its exporter before creating hubs.

use std::sync::atomic::{AtomicU64, Ordering};

use iothub_model::HubId;
use metrics::{Counter, Gauge, counter, gauge};

use crate::engine::DroppedCounts;
use crate::session::{PublishError, SubscribeError};

/// Why a message was dropped (the `reason` label). A message without subscribers is not a
/// drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    QueueFull,
    HubBudget,
    Expired,
    /// A spilled message the store could not give back (`Journal::load`).
    Unreadable,
}

/// Every `PublishError`, in the order of `publish_refusals`.
const PUBLISH_REFUSALS: [PublishError; 7] = [
    PublishError::PayloadTooLarge,
    PublishError::RetainNotSupported,
    PublishError::QosNotSupported,
    PublishError::NotAuthorized,
    PublishError::QuotaExceeded,
    PublishError::PacketIdInUse,
    PublishError::ReceiveMaximumExceeded,
];

/// Every `SubscribeError`, in the order of `subscribe_refusals`.
const SUBSCRIBE_REFUSALS: [SubscribeError; 6] = [
    SubscribeError::NotAuthorized,
    SubscribeError::QosNotSupported,
    SubscribeError::SharedNotSupported,
    SubscribeError::WildcardNotSupported,
    SubscribeError::SubscriptionIdsNotSupported,
    SubscribeError::QuotaExceeded,
];

/// A counter that can be read back (the facade's cannot): what `$SYS` publishes.
pub(crate) struct Tally {
    counter: Counter,
    count: AtomicU64,
}

impl Tally {
    fn new(counter: Counter) -> Self {
        Self {
            counter,
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

pub(crate) struct HubMetrics {
    /// Application messages that entered the hub (client PUBLISH, wills).
    pub(crate) received: Tally,
    /// Application messages handed to connections.
    pub(crate) delivered: Tally,
    dropped_queue_full: Counter,
    dropped_hub_budget: Counter,
    dropped_expired: Counter,
    dropped_unreadable: Counter,
    /// Queue entries spilled to the store (crate docs, "Queue policy"), and how many are
    /// spilled now (kept by the stubs' `SpillMark`s).
    pub(crate) spilled_total: Counter,
    pub(crate) spilled: Gauge,
    pub(crate) sessions: Gauge,
    pub(crate) connected: Gauge,
    pub(crate) subscriptions: Gauge,
    pub(crate) retained: Gauge,
    pub(crate) retained_bytes: Gauge,
    pub(crate) budget: Gauge,
    pub(crate) budget_limit: Gauge,
    pub(crate) queued: Gauge,
    pub(crate) inflight: Gauge,
    /// MQTT packets and bytes of the hub's connections, counted by the adapter through
    /// [`crate::Traffic`] once the CONNECT is accepted (before that, the hub is unknown and
    /// only the listener's counters see them).
    pub(crate) packets_in: Counter,
    pub(crate) packets_out: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    publish_refusals: [Counter; PUBLISH_REFUSALS.len()],
    subscribe_refusals: [Counter; SUBSCRIBE_REFUSALS.len()],
    /// The same drops as plain numbers, for `HubStats` (the facade cannot be read back).
    counts: [AtomicU64; 4],
}

impl HubMetrics {
    pub(crate) fn new(hub: HubId) -> Self {
        let id = hub.to_string();
        let dropped = |reason: &'static str| counter!("iothub_messages_dropped_total", "hub" => id.clone(), "reason" => reason);
        let hub_counter = |name: &'static str| counter!(name, "hub" => id.clone());
        let hub_gauge = |name: &'static str| gauge!(name, "hub" => id.clone());
        Self {
            received: Tally::new(hub_counter("iothub_messages_received_total")),
            delivered: Tally::new(hub_counter("iothub_messages_delivered_total")),
            dropped_queue_full: dropped("queue_full"),
            dropped_hub_budget: dropped("hub_budget"),
            dropped_expired: dropped("expired"),
            dropped_unreadable: dropped("unreadable"),
            spilled_total: hub_counter("iothub_messages_spilled_total"),
            spilled: hub_gauge("iothub_spilled_messages"),
            sessions: hub_gauge("iothub_sessions"),
            connected: hub_gauge("iothub_sessions_connected"),
            subscriptions: hub_gauge("iothub_subscriptions"),
            retained: hub_gauge("iothub_retained_messages"),
            retained_bytes: hub_gauge("iothub_retained_bytes"),
            budget: hub_gauge("iothub_budget_used_bytes"),
            budget_limit: hub_gauge("iothub_budget_limit_bytes"),
            queued: hub_gauge("iothub_queued_messages"),
            inflight: hub_gauge("iothub_inflight_messages"),
            packets_in: hub_counter("iothub_hub_packets_received_total"),
            packets_out: hub_counter("iothub_hub_packets_sent_total"),
            bytes_in: hub_counter("iothub_hub_bytes_received_total"),
            bytes_out: hub_counter("iothub_hub_bytes_sent_total"),
            publish_refusals: PUBLISH_REFUSALS.map(|e| counter!("iothub_publish_refusals_total", "hub" => id.clone(), "reason" => e.label())),
            subscribe_refusals: SUBSCRIBE_REFUSALS.map(|e| counter!("iothub_subscribe_refusals_total", "hub" => id.clone(), "reason" => e.label())),
            counts: Default::default(),
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        let (counter, slot) = match reason {
            DropReason::QueueFull => (&self.dropped_queue_full, 0),
            DropReason::HubBudget => (&self.dropped_hub_budget, 1),
            DropReason::Expired => (&self.dropped_expired, 2),
            DropReason::Unreadable => (&self.dropped_unreadable, 3),
        };
        counter.increment(n);
        self.counts[slot].fetch_add(n, Ordering::Relaxed);
    }

    /// A PUBLISH the hub refused; `reason="not_authorized"` is a message filter's (or a
    /// reserved topic's) refusal.
    pub(crate) fn publish_refused(&self, e: PublishError) {
        if let Some(i) = PUBLISH_REFUSALS.iter().position(|r| *r == e) {
            self.publish_refusals[i].increment(1);
        }
    }

    /// One refused filter of a SUBSCRIBE.
    pub(crate) fn subscribe_refused(&self, e: SubscribeError) {
        if let Some(i) = SUBSCRIBE_REFUSALS.iter().position(|r| *r == e) {
            self.subscribe_refusals[i].increment(1);
        }
    }

    pub(crate) fn dropped_counts(&self) -> DroppedCounts {
        let get = |i: usize| self.counts[i].load(Ordering::Relaxed);
        DroppedCounts {
            queue_full: get(0),
            hub_budget: get(1),
            expired: get(2),
            unreadable: get(3),
        }
    }
}
