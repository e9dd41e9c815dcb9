//! What a hub's connections exchange, counted for two readers: the Prometheus counters of
//! the hub (packets and bytes in and out) and the metrics API, where every MQTT packet in
//! either direction is one message of the hub and of the device that sent or received it.
//!
//! The adapter counts through a [`Traffic`] handle ([`crate::Session::traffic`]) once the
//! CONNECT is accepted. A packet costs one relaxed atomic add on the session's own
//! counter, plus the hub's Prometheus counter: no lock on the packet path. The binary
//! collects the counts every few seconds with [`crate::Engine::take_activity`], which
//! swaps the counters of the hub's sessions to zero; a connection that ends first hands
//! its remainder to the hub (when its `Traffic` is dropped), so nothing is lost or counted
//! twice whichever comes first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use iothub_model::{DeviceId, HubId};
use parking_lot::Mutex;

use super::Hub;
use crate::state::{Owner, SessionState};

/// Messages of one hub since the previous [`crate::Engine::take_activity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubActivity {
    pub hub: HubId,
    /// MQTT packets in either direction, of every client (devices and anonymous ones).
    pub messages: u64,
    /// The devices among them with their packets, by device id (each at most once, none
    /// with 0).
    pub devices: Vec<(DeviceId, u64)>,
}

/// Counts handed over by connections that ended since the last collection.
#[derive(Default)]
struct Folded {
    messages: u64,
    devices: HashMap<DeviceId, u64>,
}

/// The hub's side of the activity counts (a leaf lock in the crate's lock order).
#[derive(Default)]
pub(crate) struct ActivityLog {
    folded: Mutex<Folded>,
}

/// The counters of one connection, held by its task. Dropping it (the connection ended)
/// hands what it counted since the last collection to the hub.
pub struct Traffic {
    hub: Arc<Hub>,
    state: Arc<SessionState>,
}

impl Traffic {
    pub(crate) fn new(hub: Arc<Hub>, state: Arc<SessionState>) -> Self {
        Self { hub, state }
    }

    /// The hub whose counters this handle bumps.
    pub fn hub(&self) -> HubId {
        self.hub.id
    }

    /// One MQTT packet read from the client.
    pub fn packet_received(&self) {
        self.hub.metrics.packets_in.increment(1);
        self.state.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// One MQTT packet written to the client.
    pub fn packet_sent(&self) {
        self.hub.metrics.packets_out.increment(1);
        self.state.activity.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes_received(&self, n: u64) {
        self.hub.metrics.bytes_in.increment(n);
    }

    pub fn bytes_sent(&self, n: u64) {
        self.hub.metrics.bytes_out.increment(n);
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.hub.fold_activity(&self.state);
    }
}

impl Hub {
    /// Moves a session's uncollected count into the hub's log.
    fn fold_activity(&self, state: &SessionState) {
        let n = state.activity.swap(0, Ordering::AcqRel);
        if n == 0 {
            return;
        }
        let mut folded = self.activity.folded.lock();
        folded.messages += n;
        if let Owner::Device(device) = state.owner {
            *folded.devices.entry(device).or_default() += n;
        }
    }

    /// Everything counted since the previous call: the log of ended connections and the
    /// counters of the registered sessions, each reset to zero.
    pub(crate) fn take_activity(&self) -> HubActivity {
        let Folded {
            mut messages,
            mut devices,
        } = std::mem::take(&mut *self.activity.folded.lock());
        {
            let registry = self.sessions.lock();
            for state in registry.sessions() {
                let n = state.activity.swap(0, Ordering::AcqRel);
                if n == 0 {
                    continue;
                }
                messages += n;
                if let Owner::Device(device) = state.owner {
                    *devices.entry(device).or_default() += n;
                }
            }
        }
        let mut devices: Vec<(DeviceId, u64)> = devices.into_iter().collect();
        devices.sort_unstable();
        HubActivity {
            hub: self.id,
            messages,
            devices,
        }
    }

    /// Messages queued (not yet sent) and inflight (sent, not yet acknowledged) over every
    /// session. Takes each session's lock in turn: for periodic gauges and `$SYS`, not for
    /// every tick.
    pub(crate) fn session_totals(&self) -> (usize, usize) {
        let registry = self.sessions.lock();
        registry
            .sessions()
            .fold((0, 0), |(queued, inflight), state| {
                let inner = state.inner.lock();
                (queued + inner.queue.len(), inflight + inner.inflight.len())
            })
    }
}
