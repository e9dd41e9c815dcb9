//! The broker engine: hubs as isolated MQTT namespaces, each with a subscription trie, a
//! retained store, sessions, QoS 0/1/2 state, wills, shared subscriptions and a byte
//! budget. Adapters reach it through one small API: [`Engine::connect`] gives a
//! [`Session`] handle, the connection task calls `publish`/`subscribe`/`acknowledge` on it
//! and drains [`Session::poll_outgoing`] whenever [`Session::ready`] resolves.
//!
//! It must never do I/O: no sockets, no wire format (it does not depend on the codec), no
//! TLS, HTTP or wasm, no timers of its own. Time comes from a [`Clock`] and the binary calls
//! [`Engine::tick`]; tokio is used for `sync::Notify` only.
//!
//! # Layout
//!
//! - `engine`: the hub registry and the public types of CONNECT.
//! - `hub`: one hub — connect/disconnect, routing, the queue policy, timers, budget.
//! - `session`: the [`Session`] handle and the types of its operations.
//! - `state`: per-session state (queue, inflight, inbound QoS 2 ids, subscriptions, will).
//! - `trie`: the subscription trie; `retained`: the retained store (a trie by topic level).
//! - `metrics`: per-hub metric handles; `clock`: [`Clock`], [`SystemClock`], [`ManualClock`].
//!
//! # Publishing
//!
//! `Session::publish` runs on the publisher's task and never waits for a subscriber: it
//! read-locks the hub's trie, walks the topic's levels (never scanning all subscriptions),
//! collects the matching subscribers into a reused per-thread list, releases the trie,
//! merges overlapping subscriptions of one client into one copy (highest QoS, all
//! subscription identifiers [MQTT-3.3.4-2..5]), and pushes an `Arc<Message>` into each
//! target session's queue under that session's own short mutex, then wakes its
//! connection. There is no global lock on this path and no copy of the message per
//! subscriber. A shared subscription group (`$share/g/f`) gets one copy, for one member
//! chosen round robin among connected members.
//!
//! # Lock order
//!
//! `Engine.hubs` (registry of hubs) -> `Hub.sessions` (registry of sessions) -> `Hub.subs`
//! (trie) -> `Hub.retained` -> a session's `inner` -> `Hub.timers` (a leaf). A lock is only
//! taken while holding locks that come before it in this list; routing takes `subs` and then
//! session locks one at a time, so it never runs while a session lock is held. Wills and
//! shared-subscription hand-overs collected under locks are published after releasing them.
//! The hub budget and the statistics are atomics, outside the order.
//!
//! # Queue policy
//!
//! Each session has one FIFO queue of messages not yet sent, and an inflight window of sent
//! QoS 1/2 messages awaiting acknowledgement (window = min(client Receive Maximum,
//! `limits.max_inflight_messages`)). Bounds, per session: at most
//! `limits.max_session_queue_messages` queued messages, and at most
//! `limits.max_session_queue_bytes` bytes queued plus inflight. When a new message would
//! exceed a bound it is dropped and counted (`iothub_messages_dropped_total{reason=
//! "queue_full"}`); if it is QoS 1/2 and the session is connected, the connection is also
//! kicked once with [`KickReason::QuotaExceeded`] (DISCONNECT 0x97), so a consumer that does
//! not keep up learns it instead of silently losing messages (DESIGN.md, memory). A slow
//! subscriber never blocks the publisher or other subscribers.
//!
//! A disconnected session with an expiry interval keeps its subscriptions and queues QoS 1
//! and 2 messages for its return; QoS 0 messages are not kept for an offline session (they
//! are at most once, and mosquitto does the same by default), and QoS 0 messages still
//! queued when the connection ends are discarded.
//!
//! # Hub budget
//!
//! `limits.budget_bytes` bounds the bytes ([`iothub_model::Message::weight`]) a hub holds in
//! retained messages, queued and inflight messages (each queue entry counts) and stored
//! wills. Accounting is exact: reserved when stored, released when freed (sent QoS 0,
//! PUBACK, PUBREC, drop, expiry, session end, retained replace or delete, takeover, hub
//! removal). Over budget, a retained PUBLISH is refused with `QuotaExceeded`, a will that
//! does not fit refuses the CONNECT, and a message that does not fit a subscriber's queue
//! is dropped for that subscriber (`reason="hub_budget"`).
//!
//! # Plans
//!
//! `Plan::Shared`: clean session mandatory (`ConnectError::CleanStartRequired` when
//! `clean_start` is false or a session expiry is asked), no anonymous clients, no retained
//! PUBLISH, no QoS 2 PUBLISH (`maximum_qos` = 1), and subscriptions are granted QoS 0 (the
//! downgrade MQTT allows for "no QoS 1/2 subscribe"). `Dedicated` and `Ha`: all of MQTT.
//!
//! # Metrics
//!
//! Through the `metrics` facade, labelled by hub id only: counters
//! `iothub_messages_received_total`, `iothub_messages_delivered_total`,
//! `iothub_messages_dropped_total{reason=queue_full|hub_budget|expired}`; gauges
//! `iothub_sessions`, `iothub_retained_messages`, `iothub_budget_used_bytes` (refreshed by
//! `tick`). A message without subscribers is not a drop.

mod clock;
mod directory;
mod engine;
mod hub;
mod metrics;
mod retained;
mod session;
mod state;
mod trie;

#[cfg(test)]
mod tests;

pub use clock::{Clock, ManualClock, SystemClock};
pub use directory::{Credentials, DeviceSpec};
pub use engine::{
    ConnectError, ConnectRequest, Connected, DroppedCounts, Engine, EngineConfig, EngineError,
    HubCaps, HubSpec, HubStats, Identity, RevokedSubscription, Will,
};
pub use session::{
    DisconnectKind, KickReason, Outgoing, OutgoingPublish, PublishAck, PublishError,
    RetainHandling, Session, SubscribeError, SubscribeRequest,
};
