use serde::{Deserialize, Serialize};

/// A hub's product plan (SCALEWAY-API.md). The plan decides which MQTT features a hub
/// offers; the limits below decide how much of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Plan {
    /// Shared resources: clean session mandatory, no retained publish, no QoS 2 publish,
    /// no QoS 1/2 subscribe, no anonymous clients.
    #[serde(rename = "plan_shared")]
    Shared,
    /// Dedicated resources, the whole of MQTT.
    #[default]
    #[serde(rename = "plan_dedicated")]
    Dedicated,
    /// Dedicated and replicated.
    #[serde(rename = "plan_ha")]
    Ha,
}

/// The numeric limits of one hub. Defaults follow the reference product where it states
/// one (4 MiB payload, 140 MiB of retained, inflight and will messages per hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubLimits {
    /// Largest application payload accepted, in bytes.
    pub max_payload_bytes: u32,
    /// Bytes of retained, queued, inflight and will messages the hub may hold in all.
    pub budget_bytes: u64,
    /// Messages one session may have queued for delivery (not yet sent) before the
    /// queue policy applies (see the engine's docs).
    pub max_session_queue_messages: u32,
    /// Bytes one session may have queued and inflight before the queue policy applies.
    pub max_session_queue_bytes: u64,
    /// QoS 1/2 messages the hub sends to one client before waiting for acknowledgements,
    /// when the client does not ask for fewer (MQTT 5 Receive Maximum).
    pub max_inflight_messages: u16,
    /// Incoming QoS 2 messages a client may have unacknowledged at once (the hub's Receive
    /// Maximum, announced in CONNACK).
    pub receive_maximum: u16,
    /// Topic aliases a client may use towards the hub (MQTT 5 Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Longest session expiry interval granted, in seconds.
    pub max_session_expiry_secs: u32,
    /// Longest keep-alive accepted, in seconds (a larger one is lowered via Server Keep Alive).
    pub max_keep_alive_secs: u16,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 4 * 1024 * 1024,
            budget_bytes: 140 * 1024 * 1024,
            max_session_queue_messages: 1_000,
            max_session_queue_bytes: 16 * 1024 * 1024,
            max_inflight_messages: 64,
            receive_maximum: 64,
            topic_alias_maximum: 64,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_keep_alive_secs: 3600,
        }
    }
}
