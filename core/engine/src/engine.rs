//! The [`Engine`]: the registry of hubs and the entry point of every connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use iothub_model::{ClientId, DeviceId, HubId, HubLimits, Message, Plan, QoS};
use parking_lot::RwLock;

use crate::clock::{Clock, SystemClock};
use crate::hub::Hub;
use crate::session::{KickReason, Session};

/// How the engine is built. Only the clock today; tests pass a `ManualClock`.
#[derive(Clone)]
pub struct EngineConfig {
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
        }
    }
}

/// What the control plane knows about a hub when it asks the engine to serve it.
#[derive(Debug, Clone)]
pub struct HubSpec {
    pub id: HubId,
    pub name: String,
    pub plan: Plan,
    pub limits: HubLimits,
    /// Whether clients that are not a registered device may join this hub (always refused
    /// on the shared plan).
    pub allow_anonymous: bool,
}

/// Hub administration failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("hub {0} already exists")]
    HubExists(HubId),
    #[error("a hub named {0:?} already exists")]
    HubNameTaken(String),
    #[error("hub {0} does not exist")]
    UnknownHub(HubId),
}

/// What a hub offers its clients, derived from its plan and limits. The adapter announces
/// these in CONNACK (MQTT 5) and the engine enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubCaps {
    /// Highest QoS a client may PUBLISH with (MQTT 5 Maximum QoS).
    pub maximum_qos: QoS,
    pub retain_available: bool,
    pub wildcard_available: bool,
    pub shared_available: bool,
    pub subscription_ids_available: bool,
    /// Incoming QoS 2 messages a client may leave unreleased (the hub's Receive Maximum).
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_payload_bytes: u32,
}

/// Messages dropped by the engine, by reason (the `reason` label of
/// `iothub_messages_dropped_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedCounts {
    /// A session's queue bound was reached.
    pub queue_full: u64,
    /// The hub's byte budget was exhausted.
    pub hub_budget: u64,
    /// The message expiry interval elapsed before delivery started.
    pub expired: u64,
}

/// A snapshot of one hub, for tests, metrics and `$SYS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Sessions that exist (connected or kept for a later reconnect).
    pub sessions: usize,
    /// Sessions with a live connection.
    pub connected: usize,
    /// Subscriptions of all sessions, shared ones included.
    pub subscriptions: usize,
    pub retained_messages: usize,
    /// Weight ([`Message::weight`]) of the retained messages.
    pub retained_bytes: u64,
    /// Bytes of retained, queued, inflight and will messages counted against the budget.
    pub budget_used_bytes: u64,
    pub dropped: DroppedCounts,
}

/// Who is connecting. The adapter decides it (certificate, device id, listener); the
/// engine applies the hub's rules to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A client that is not a registered device (the default hub of issue 2).
    Anonymous,
    /// A registered device of the hub: its client id must be the device id, or empty.
    Device(DeviceId),
}

/// A will message and its MQTT 5 Will Delay Interval (0 for MQTT 3.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub message: Message,
    pub delay_secs: u32,
}

/// A CONNECT, as far as the engine cares.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub hub: HubId,
    /// `None` = the client sent an empty client id: the engine assigns a unique one.
    pub client_id: Option<ClientId>,
    /// MQTT 3.1.1 Clean Session / MQTT 5 Clean Start.
    pub clean_start: bool,
    /// 0 = the session ends with the connection; `u32::MAX` = never (clamped to
    /// `limits.max_session_expiry_secs`). MQTT 3.1.1: clean session 1 -> 0, 0 -> `u32::MAX`.
    pub session_expiry_secs: u32,
    /// The client's Receive Maximum (65535 when absent): caps our outbound QoS 1/2 inflight.
    pub receive_maximum: u16,
    pub will: Option<Will>,
}

/// A successful CONNECT: the session handle and what CONNACK must say.
pub struct Connected {
    pub session: Session,
    pub session_present: bool,
    /// The client id in use (assigned or the requested one).
    pub client_id: ClientId,
    /// Whether the engine assigned `client_id` (MQTT 5 Assigned Client Identifier).
    pub assigned: bool,
    /// The session expiry interval granted.
    pub session_expiry_secs: u32,
    pub caps: HubCaps,
}

/// Why a CONNECT is refused. Each maps to one CONNACK reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no such hub")]
    UnknownHub,
    #[error("the hub is disabled")]
    HubDisabled,
    #[error("the client id is not valid for this client")]
    ClientIdInvalid,
    #[error("not authorized")]
    NotAuthorized,
    #[error("the hub's plan requires a clean session")]
    CleanStartRequired,
    #[error("the hub's budget cannot hold the will message")]
    QuotaExceeded,
    #[error("the will message's QoS is not supported by the hub")]
    QosNotSupported,
    #[error("the hub does not support retained messages (will retain)")]
    RetainNotSupported,
    #[error("the will payload is larger than the hub accepts")]
    PayloadTooLarge,
}

/// The broker. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    clock: Arc<dyn Clock>,
    /// The hub registry: first in the lock order, held only to find or change hubs.
    hubs: RwLock<Hubs>,
}

#[derive(Default)]
struct Hubs {
    by_id: HashMap<HubId, Arc<Hub>>,
    by_name: HashMap<String, HubId>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            inner: Arc::new(EngineInner {
                clock: config.clock,
                hubs: RwLock::new(Hubs::default()),
            }),
        }
    }

    fn hub(&self, id: HubId) -> Option<Arc<Hub>> {
        self.inner.hubs.read().by_id.get(&id).cloned()
    }

    #[cfg(test)]
    pub(crate) fn inner_hub_for_tests(&self, id: HubId) -> Arc<Hub> {
        self.hub(id).unwrap()
    }

    fn all_hubs(&self) -> Vec<Arc<Hub>> {
        self.inner.hubs.read().by_id.values().cloned().collect()
    }

    /// Starts serving a hub. Ids and names are unique.
    pub fn create_hub(&self, spec: HubSpec) -> Result<(), EngineError> {
        let mut hubs = self.inner.hubs.write();
        if hubs.by_id.contains_key(&spec.id) {
            return Err(EngineError::HubExists(spec.id));
        }
        if hubs.by_name.contains_key(&spec.name) {
            return Err(EngineError::HubNameTaken(spec.name));
        }
        let (id, name) = (spec.id, spec.name.clone());
        let hub = Arc::new(Hub::new(spec, self.inner.clock.clone()));
        hub.update_gauges();
        hubs.by_id.insert(id, hub);
        hubs.by_name.insert(name, id);
        tracing::debug!(message = "hub created", hub_id = %id);
        Ok(())
    }

    /// Removes a hub: its sessions are kicked with `KickReason::AdministrativeAction` and
    /// everything it holds (sessions, subscriptions, retained messages, wills) is freed.
    /// Wills are not published: there is no hub left to publish them to.
    pub fn remove_hub(&self, id: HubId) -> Result<(), EngineError> {
        let hub = {
            let mut hubs = self.inner.hubs.write();
            let hub = hubs.by_id.remove(&id).ok_or(EngineError::UnknownHub(id))?;
            hubs.by_name.remove(&hub.name);
            hub
        };
        hub.enabled.store(false, Ordering::Release);
        hub.remove_all(KickReason::AdministrativeAction);
        tracing::debug!(message = "hub removed", hub_id = %id);
        Ok(())
    }

    /// Enables or disables a hub. Disabling kicks its live connections with
    /// `KickReason::AdministrativeAction` (sessions stay); a disabled hub refuses CONNECT
    /// with `HubDisabled`.
    pub fn set_hub_enabled(&self, id: HubId, enabled: bool) -> Result<(), EngineError> {
        let hub = self.hub(id).ok_or(EngineError::UnknownHub(id))?;
        hub.enabled.store(enabled, Ordering::Release);
        if !enabled {
            hub.kick_all(KickReason::AdministrativeAction);
        }
        Ok(())
    }

    pub fn hub_by_name(&self, name: &str) -> Option<HubId> {
        self.inner.hubs.read().by_name.get(name).copied()
    }

    /// An anonymous client connects (`connect_as(Identity::Anonymous, ..)`).
    pub fn connect(&self, req: ConnectRequest) -> Result<Connected, ConnectError> {
        self.connect_as(Identity::Anonymous, req)
    }

    /// A client connects. Anonymous clients need a hub with `allow_anonymous` and not on the
    /// shared plan; a device must use its device id as client id (or an empty one, which
    /// then becomes the device id). An existing session of the client id is resumed, or
    /// discarded with `clean_start` [MQTT-3.1.2-4]; a live connection to it is taken over
    /// [MQTT-3.1.4-3].
    pub fn connect_as(
        &self,
        identity: Identity,
        req: ConnectRequest,
    ) -> Result<Connected, ConnectError> {
        let hub = self.hub(req.hub).ok_or(ConnectError::UnknownHub)?;
        hub.connect(identity, req)
    }

    /// Publishes a message the hub itself produces (events, `$SYS`), bypassing client rules
    /// (a retained one is stored if the budget allows). Returns whether any subscriber
    /// matched.
    pub fn publish(&self, hub: HubId, message: Message) -> Result<bool, EngineError> {
        let hub = self.hub(hub).ok_or(EngineError::UnknownHub(hub))?;
        let now = hub.now();
        let message = Arc::new(message);
        if message.retain {
            // Refused only for lack of budget; the message is still delivered.
            let _ = hub.store_retained(&message, now);
        }
        let matched = hub.route(&message, None, now);
        hub.metrics.received.increment(1);
        Ok(matched)
    }

    /// Called by the binary every ~250 ms (and by tests with a manual clock): fires delayed
    /// wills, ends expired sessions (dropping their subscriptions and queued messages,
    /// freeing budget), drops expired messages of offline sessions and expired retained
    /// messages, refreshes gauges.
    pub fn tick(&self) {
        let now = self.inner.clock.now();
        for hub in self.all_hubs() {
            hub.tick(now);
        }
    }

    /// Server shutdown: every live session gets `Outgoing::Disconnect(ServerShuttingDown)`.
    pub fn shutdown(&self) {
        for hub in self.all_hubs() {
            hub.kick_all(KickReason::ServerShuttingDown);
        }
    }

    pub fn hub_stats(&self, id: HubId) -> Option<HubStats> {
        self.hub(id).map(|hub| hub.stats())
    }
}
