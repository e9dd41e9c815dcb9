//! The [`Engine`]: the registry of hubs and the entry point of every connection.

use std::sync::Arc;

use iothub_model::{ClientId, DeviceId, HubId, HubLimits, Message, Plan, QoS};

use crate::clock::{Clock, SystemClock};
use crate::session::Session;

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
    _config: EngineConfig,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            inner: Arc::new(EngineInner { _config: config }),
        }
    }

    pub fn create_hub(&self, _spec: HubSpec) -> Result<(), EngineError> {
        todo!()
    }

    /// Removes a hub: its sessions are kicked with `KickReason::AdministrativeAction` and
    /// everything it holds is freed.
    pub fn remove_hub(&self, _id: HubId) -> Result<(), EngineError> {
        todo!()
    }

    /// Enables or disables a hub. Disabling kicks its sessions with
    /// `KickReason::AdministrativeAction`; a disabled hub refuses CONNECT with `HubDisabled`.
    pub fn set_hub_enabled(&self, _id: HubId, _enabled: bool) -> Result<(), EngineError> {
        todo!()
    }

    pub fn hub_by_name(&self, _name: &str) -> Option<HubId> {
        todo!()
    }

    /// An anonymous client connects (`connect_as(Identity::Anonymous, ..)`).
    pub fn connect(&self, req: ConnectRequest) -> Result<Connected, ConnectError> {
        self.connect_as(Identity::Anonymous, req)
    }

    pub fn connect_as(
        &self,
        _identity: Identity,
        _req: ConnectRequest,
    ) -> Result<Connected, ConnectError> {
        todo!()
    }

    /// Publishes a message the hub itself produces (events, `$SYS`), bypassing client rules.
    /// Returns whether any subscriber matched.
    pub fn publish(&self, _hub: HubId, _message: Message) -> Result<bool, EngineError> {
        todo!()
    }

    /// Called by the binary every ~250 ms (and by tests with a manual clock): fires delayed
    /// wills, ends expired sessions, drops expired messages, refreshes gauges.
    pub fn tick(&self) {
        todo!()
    }

    /// Server shutdown: every live session gets `Outgoing::Disconnect(ServerShuttingDown)`.
    pub fn shutdown(&self) {
        todo!()
    }

    pub fn hub_stats(&self, _id: HubId) -> Option<HubStats> {
        todo!()
    }
}
