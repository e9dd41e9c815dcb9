//! The metrics of one hub, through the `metrics` facade (the binary installs the
//! exporter). Handles are registered once per hub and cached, so the publish path only
//! bumps a counter, and the only label is the hub id (bounded cardinality).
//!
//! Handles are bound to the recorder installed when the hub is created: the binary must
//! install its exporter before creating hubs.

use std::sync::atomic::{AtomicU64, Ordering};

use iothub_model::HubId;
use metrics::{Counter, Gauge, counter, gauge};

use crate::engine::DroppedCounts;

/// Why a message was dropped (the `reason` label). A message without subscribers is not a
/// drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    QueueFull,
    HubBudget,
    Expired,
}

pub(crate) struct HubMetrics {
    pub(crate) received: Counter,
    pub(crate) delivered: Counter,
    dropped_queue_full: Counter,
    dropped_hub_budget: Counter,
    dropped_expired: Counter,
    pub(crate) sessions: Gauge,
    pub(crate) retained: Gauge,
    pub(crate) budget: Gauge,
    /// The same drops as plain numbers, for `HubStats` (the facade cannot be read back).
    counts: [AtomicU64; 3],
}

impl HubMetrics {
    pub(crate) fn new(hub: HubId) -> Self {
        let id = hub.to_string();
        let dropped = |reason: &'static str| counter!("iothub_messages_dropped_total", "hub" => id.clone(), "reason" => reason);
        Self {
            received: counter!("iothub_messages_received_total", "hub" => id.clone()),
            delivered: counter!("iothub_messages_delivered_total", "hub" => id.clone()),
            dropped_queue_full: dropped("queue_full"),
            dropped_hub_budget: dropped("hub_budget"),
            dropped_expired: dropped("expired"),
            sessions: gauge!("iothub_sessions", "hub" => id.clone()),
            retained: gauge!("iothub_retained_messages", "hub" => id.clone()),
            budget: gauge!("iothub_budget_used_bytes", "hub" => id),
            counts: Default::default(),
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        let (counter, slot) = match reason {
            DropReason::QueueFull => (&self.dropped_queue_full, 0),
            DropReason::HubBudget => (&self.dropped_hub_budget, 1),
            DropReason::Expired => (&self.dropped_expired, 2),
        };
        counter.increment(n);
        self.counts[slot].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn dropped_counts(&self) -> DroppedCounts {
        let get = |i: usize| self.counts[i].load(Ordering::Relaxed);
        DroppedCounts {
            queue_full: get(0),
            hub_budget: get(1),
            expired: get(2),
        }
    }
}
