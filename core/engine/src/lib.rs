//! The broker engine: hubs as isolated MQTT namespaces, each with a subscription trie, a
//! retained store, sessions, QoS 0/1/2 state, wills, shared subscriptions and a byte
//! budget, and the runtime side of tenancy: which devices exist, who a CONNECT is, and
//! the message filters of every session, and what a hub tells about itself: hub events and
//! `$SYS` figures. Adapters reach it through one small API:
//! [`Engine::resolve_client`] decides who a CONNECT is, [`Engine::connect_as`] gives a
//! [`Session`] handle, the connection task calls `publish`/`subscribe`/`acknowledge` on it
//! and drains [`Session::poll_outgoing`] whenever [`Session::ready`] resolves. The control
//! plane pushes hubs and devices in ([`Engine::create_hub`], [`Engine::update_hub`],
//! [`Engine::upsert_device`], ...); the engine never depends on it.
//!
//! It must never do I/O: no sockets, no wire format (it does not depend on the codec), no
//! TLS, HTTP or wasm, no store, no timers of its own, and it never depends on the control
//! plane (the registry calls it, never the reverse). Time comes from a [`Clock`] and the binary calls
//! [`Engine::tick`]; tokio is used for `sync::Notify` only.
//!
//! # Layout
//!
//! - `engine`: the hub registry, administration, and the public types of CONNECT.
//! - `directory`: the device directory and the admission decision ([`DeviceSpec`],
//!   [`Credentials`]), indexed by id and by hub and name.
//! - `certificate`: what a verified client certificate proves ([`VerifiedCertificate`],
//!   [`CertificateFingerprint`]).
//! - `hub`: one hub — connect/disconnect, routing, the queue policy, timers, budget;
//!   `hub::config` its settings, `hub::registry` its sessions, `hub::live` live changes,
//!   `hub::activity` the traffic counted for metrics.
//! - `session`: the [`Session`] handle and the types of its operations.
//! - `state`: per-session state (queue, inflight, inbound QoS 2 ids, subscriptions, will).
//! - `trie`: the subscription trie; `retained`: the retained store (a trie by topic level).
//! - `journal`: durability — [`Journal`], the [`JournalOp`]s the engine records, and what a
//!   store hands back ([`RestoredHub`]); `hub::durable` records and restores.
//! - `events`: hub events ([`HubEvent`]): model, JSON, topics, the per-kind rate limit.
//! - `sys`: the `$SYS/broker/...` figures of dedicated and HA hubs.
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
//! `Engine.admin` (serialises administration) -> `Engine.hubs` (registry of hubs) ->
//! `Hub.sessions` (registry of sessions) -> `Hub.subs` (trie) -> `Hub.retained` -> a
//! session's `inner` -> `Hub.timers` (a leaf). `Engine.devices` (the device directory) and
//! `Hub.config` are leaves too: read under `Hub.sessions` at CONNECT, written with no other
//! lock held. A lock is only taken while holding locks that come before it in this list;
//! routing takes `subs` and then session locks one at a time, so it never runs while a
//! session lock is held. Wills and shared-subscription hand-overs collected under locks are
//! published after releasing them. The hub budget and the statistics are atomics, outside
//! the order; `Hub.activity` (traffic of ended connections, see `hub::activity`) is a leaf.
//! `Hub.sys` (the current `$SYS` figures) sits where `Hub.retained` does: a new subscription
//! reads it and queues its figures, the tick replaces them with no other lock held. The
//! event rate limiter (`Hub.events`) is a leaf; raising an event routes a message, so it
//! happens with no hub lock held (administration raises under `Engine.admin` only).
//! [`Journal::record`] is a leaf, last of all: it is called under the lock of the change it
//! records (`Hub.retained` for retained messages, a session's `inner` for the rest), which
//! is what orders the journal per topic and per session, and it must never take an engine
//! lock or wait on I/O.
//!
//! # Identity and admission
//!
//! [`Engine::resolve_client`] applies DESIGN.md's order: a verified client certificate
//! (TLS listeners fill [`Credentials::certificate`] with a [`VerifiedCertificate`]: the
//! hub whose CA verified the chain, the device, and whether it is the device's registered
//! certificate or one its hub's own CA issued for its name), then the client id as a device id, then
//! the username as a device id with an empty password, then the username as the id of a
//! hub that admits anonymous clients (the convention for reaching a hub other than the
//! listener's), then the listener's anonymous hub; anything else is `NotAuthorized`. A
//! device must be enabled (`DeviceDisabled`) and, without a certificate, allow insecure
//! connections (`MutualTlsRequired`). It costs one read-locked map lookup and no
//! allocation. A certificate must name a device of the hub whose CA verified it
//! (`CertificateOtherHub`: a certificate of hub A never opens a session on hub B) and, when
//! it is a registered one, be the device's current certificate (`CertificateNotCurrent`:
//! [`DeviceSpec::certificate_fingerprint`]). [`Engine::connect_as`] checks the same rules
//! again under the hub's session lock, so a CONNECT racing with a live change is either
//! refused or seen by the change. The engine never parses a certificate: the transport
//! verifies it and finds the device ([`Engine::device_by_name`] for hubs with their own CA).
//!
//! A device's session has the device id as client id, whatever the client sent (with a
//! certificate it must be the device id or empty, or, for a device its hub's own CA names
//! by its name, that name: firmware knows its certificate's CN, not the id the hub gave it). Without `allow_multiple_connections`
//! a new connection takes the session over (0x8E to the old one). With it (dedicated and
//! HA plans), a connection that arrives while the device's session is connected gets a
//! session of its own, client id `<device-id>.<n>`, that ends with the connection: every
//! connection receives what it subscribed to and none kicks another; persistence belongs
//! to the device's own session. A session is only resumed by the owner that created it.
//!
//! # Message filters
//!
//! Each session carries its owner's filters (a device's, or the hub's anonymous filters,
//! where `{{ device.id }}`/`{{ device.name }}` stand for the client id), expanded once when
//! the device or hub is pushed in. Semantics (`iothub_model::CompiledRule`): PUBLISH is
//! allowed iff the topic matches an accepted filter / no rejected one (else
//! `PublishError::NotAuthorized`, also for a will at CONNECT). SUBSCRIBE is refused
//! (`SubscribeError::NotAuthorized`) when the filter lies wholly inside a rejected filter or
//! overlaps no accepted one; a filter that only partly overlaps is granted and its trie
//! entry carries the rule, so each message routed through it (retained ones and shared
//! groups included) is checked and nothing forbidden leaks through a wildcard. The default,
//! reject with no topics, is stored as "no rule": an unfiltered session pays one branch on
//! PUBLISH and one per delivery.
//!
//! # Live changes
//!
//! Changes reach sessions at once, connected or kept offline: a device disabled (its
//! connections kicked with `AdministrativeAction`, 0x98; sessions kept), removed or moved
//! to another hub (its sessions there end), its `allow_insecure` or
//! `allow_multiple_connections` turned off or its registered certificate changed (renewed,
//! replaced, removed: connections kicked to reconnect under the new rule), its filters changed (subscriptions re-checked, refused ones removed and returned
//! as [`RevokedSubscription`], queued messages and a will the new rules refuse
//! dropped); a hub disabled, its plan, caps or events prefix changed (connections kicked;
//! to the shared plan, sessions end), anonymous clients no longer admitted (their sessions
//! end), its anonymous filters or its name (templates) changed. See [`Engine::update_hub`]
//! and [`Engine::upsert_device`]. The engine raises the hub events of these changes itself
//! (see below).
//!
//! # Queue policy
//!
//! Each session has one FIFO queue of messages not yet sent, and an inflight window of sent
//! QoS 1/2 messages awaiting acknowledgement (window = min(client Receive Maximum,
//! `limits.max_inflight_messages`)). Bounds, per session: at most
//! `limits.max_session_queue_messages` queued messages, and at most
//! `limits.max_session_queue_bytes` bytes queued plus inflight. When a new message would
//! exceed a bound, per hub (the hub's limits):
//! 1. the oldest QoS 0 messages of the queue are dropped to make room;
//! 2. if it still does not fit, a QoS 0 message is dropped; a QoS 1/2 message for a
//!    persistent session (expiry > 0) is kept beyond the bound, up to the hub budget (its
//!    session promised to keep it); for a clean session it is dropped;
//! 3. a QoS 1/2 message dropped this way (clean session at its bound, or a persistent one
//!    when the hub budget is used up) kicks a connected session once with
//!    [`KickReason::QuotaExceeded`] (DISCONNECT 0x97), so a consumer that does not keep up
//!    learns it instead of silently losing messages (DESIGN.md, memory).
//!
//! Every drop is counted (`iothub_messages_dropped_total{reason="queue_full"|"hub_budget"}`).
//! A slow subscriber never blocks the publisher or other subscribers.
//!
//! Spilling: with a journal that reads messages back ([`Journal::loads_messages`], the
//! store), a persistent session's QoS 1/2 entry beyond the bound is *spilled*: its message
//! is in the journal already, so the queue keeps only a stub (the entry without the message,
//! under 200 bytes, reserved in the hub budget instead of the message's weight). Once a
//! stub exists, every later entry over the bound becomes one too, so what is in memory is
//! the front of the queue. When a stub reaches the front, [`Session::poll_outgoing`] reads
//! the messages back ([`Journal::load`], a batch at a time, outside the session's lock) and
//! sends them in order. A message the journal cannot give back is dropped, unqueued and
//! counted (`reason="unreadable"`). Restored sessions come back the same way: entries beyond
//! the bound are restored as stubs. Shared-subscription entries are never spilled (they may
//! move to another member, which needs the message). `iothub_messages_spilled_total` counts
//! spills, `iothub_spilled_messages` the stubs that exist now. The hub budget still bounds a
//! session that never reads: at the budget, stubs are refused like messages (step 3).
//!
//! A disconnected session with an expiry interval keeps its subscriptions and queues QoS 1
//! and 2 messages for its return; QoS 0 messages are not kept for an offline session (they
//! are at most once, and mosquitto does the same by default), and QoS 0 messages still
//! queued when the connection ends are discarded.
//!
//! # Durability
//!
//! With a [`Journal`] ([`EngineConfig::journal`]) the engine records every change of
//! durable state as a typed [`JournalOp`]: retained messages, and for persistent sessions
//! (expiry > 0, route taps opened with `resume` included; not an extra connection's
//! session) the session, its
//! subscriptions, its QoS 1/2 queue entries (a message routed to several is written once
//! and referenced by id), outbound packet ids (sent, PUBREC, PUBACK/PUBCOMP), inbound QoS 2
//! ids and pending delayed wills. Clean sessions and QoS 0 are never recorded. Recording
//! only queues the operation and returns a ticket; the store publishes "durable up to
//! ticket N". [`Session::durable_ticket`] is what a connection must see durable before it
//! writes what it produced since: the PUBACK/PUBREC of a PUBLISH that stored anything, the
//! PUBCOMP of a PUBREL, the PUBREL answering a PUBREC, and an outbound QoS 2 PUBLISH under
//! a new packet id (resent under another id after a crash, it would be delivered twice).
//! [`Engine::restore`] rebuilds hubs from a store's state before clients connect: sessions
//! offline with their subscriptions, queues, inflight (same packet ids, DUP on resend),
//! inbound QoS 2 ids, wills whose delay resumes by the wall clock, expiry honoured.
//!
//! # Hub budget
//!
//! `limits.budget_bytes` bounds the bytes ([`iothub_model::Message::weight`]) a hub holds in
//! retained messages, queued and inflight messages (each queue entry counts) and stored
//! wills. Accounting is exact: reserved when stored, released when freed (sent QoS 0,
//! PUBACK, PUBREC, drop, expiry, session end, retained replace or delete, takeover, hub
//! removal). Over budget, a retained PUBLISH is refused with `QuotaExceeded`, a will that
//! does not fit refuses the CONNECT, and a message that does not fit a subscriber's queue
//! is dropped for that subscriber (`reason="hub_budget"`). A stored retained message owns
//! its bytes (copied out of the read buffer its payload came in), so the budget's count is
//! what it holds, plus a fixed bookkeeping cost per message that the budget does not count
//! (about 0.55 KiB in the engine, and about 0.3 KiB more in the store's index of live
//! records when persistence is on; measured by the e2e flood test, which bounds it at 1 KiB).
//!
//! # Plans
//!
//! `Plan::Shared`: clean session mandatory (`ConnectError::CleanStartRequired` when
//! `clean_start` is false or a session expiry is asked), no anonymous clients, no retained
//! PUBLISH, no QoS 2 PUBLISH (`maximum_qos` = 1), subscriptions are granted QoS 0 (the
//! downgrade MQTT allows for "no QoS 1/2 subscribe"), and no multiple connections per
//! device. Devices obey these like any client. `Dedicated` and `Ha`: all of MQTT.
//! [`HubCaps`] carries what CONNACK announces, and the keep-alive maximum.
//!
//! # Hub events
//!
//! A [`HubEvent`] (the reference's fields: time, severity, object type and id, msg, packet,
//! and object name, source address, payload when set) is raised where the problem is
//! detected and published by the hub itself ([`iothub_model::Origin::Hub`], QoS 1, not
//! retained, JSON with the reference's keys) on `<prefix>/<severity>/<object-type>/<id>` of
//! that hub only (`HubSpec::events_topic_prefix`, default `$SCW/events`): subscribers get
//! events as their filters allow, like any message, and no other hub ever sees them. Clients
//! may not publish under the prefix, nor under `$SYS` or `$SCW` (`PublishError::
//! NotAuthorized`; changing the prefix kicks connections so each learns it). With
//! `HubSpec::events_enabled` off a hub publishes none ([`EventOutcome::Disabled`]).
//!
//! Who raises what: the adapter, through [`Engine::raise_event`] and
//! [`Session::raise_event`], for what clients send and TLS (malformed packets, protocol
//! errors, refused topics, refused CONNECTs, certificates, provisioning, service levels,
//! limits), using [`Engine::refusal_subject`] to name the device or hub a refused CONNECT
//! was about; the engine itself for live changes that close a connection ("device is not
//! enabled", "device is deleted", "device security has changed, requires authentication",
//! about the device), for a plan change ("hub product plan has changed", about the hub) and
//! for each subscription a filter change removed ("unauthorized topic F"). The object is
//! the device when the event concerns a known device, else the hub. Events a live change
//! raises for a device with no live connection are not raised: nothing was interrupted.
//!
//! Each hub has a token bucket per [`EventKind`] ([`EVENT_RATE_PER_SEC`] per second, bursts
//! of [`EVENT_BURST`], on the engine's clock): a flood of one kind is dropped and counted,
//! and never hides another kind.
//!
//! # `$SYS`
//!
//! Dedicated and HA hubs publish retained `$SYS/broker/...` figures (version, uptime,
//! clients connected and total, subscriptions, retained messages, bytes held against the
//! budget, PUBLISH received and sent; Mosquitto's names) every [`SYS_INTERVAL`] from
//! [`Engine::tick`], each when it changed. They live beside the retained store (a new
//! matching subscription gets them as retained messages) and outside the budget and the
//! retained statistics. Shared hubs have none.
//!
//! # Metrics
//!
//! Through the `metrics` facade, labelled by hub id (and a reason from a closed set; never
//! a client or device): counters `iothub_messages_received_total`,
//! `iothub_messages_delivered_total`,
//! `iothub_messages_dropped_total{reason=queue_full|hub_budget|expired}`,
//! `iothub_publish_refusals_total{reason}` and `iothub_subscribe_refusals_total{reason}`
//! (reason = [`PublishError::label`] / [`SubscribeError::label`]; `not_authorized` is a
//! message filter's refusal), `iothub_hub_{packets,bytes}_{received,sent}_total` (counted
//! by the adapter through [`Traffic`]); gauges `iothub_sessions`,
//! `iothub_sessions_connected`, `iothub_subscriptions`, `iothub_retained_messages`,
//! `iothub_retained_bytes`, `iothub_budget_used_bytes`, `iothub_budget_limit_bytes`
//! (refreshed by `tick`), `iothub_queued_messages` and `iothub_inflight_messages`
//! (refreshed by [`Engine::update_session_gauges`], which walks every session). A message
//! without subscribers is not a drop. Hub events: `iothub_events_published_total{hub,kind}`
//! and `iothub_events_dropped_total{hub,kind}` (rate limited), registered on a kind's first
//! event, and `iothub_events_unattributed_total{kind}` for events no hub could be named for
//! ([`count_unattributed`]); `kind` is [`EventKind::label`].
//!
//! For the metrics API, every MQTT packet in either direction is one message of its hub
//! and of its device: [`Traffic`] counts them per session without a lock and
//! [`Engine::take_activity`] collects them ([`HubActivity`]).

mod certificate;
mod clock;
mod directory;
mod engine;
mod events;
mod hub;
mod journal;
mod metrics;
mod retained;
mod route_tap;
mod session;
mod state;
mod sys;
mod trie;

#[cfg(test)]
mod tests;

pub use certificate::{
    CertificateFingerprint, CertificateProof, FingerprintError, VerifiedCertificate,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use directory::{Credentials, DeviceSpec};
pub use engine::{
    ConnectError, ConnectRequest, Connected, DroppedCounts, Engine, EngineConfig, EngineError,
    HubCaps, HubSpec, HubStats, Identity, RevokedSubscription, Will,
};
pub use events::{
    BURST as EVENT_BURST, DEFAULT_EVENTS_TOPIC_PREFIX, EventCounts, EventKind, EventOutcome,
    HubEvent, ObjectType, RATE_PER_SEC as EVENT_RATE_PER_SEC, Severity, count_unattributed,
    default_events_topic_prefix,
};
pub use hub::{HubActivity, Traffic};
pub use journal::{
    EntryId, Journal, JournalOp, LoadError, MessageId, RestoreStats, RestoredEntry, RestoredHub,
    RestoredInflight, RestoredRetained, RestoredSession, SessionOwner, SubscriptionOptions,
    WILL_ON_CLOSE, WallMs,
};
pub use route_tap::ROUTE_CLIENT_PREFIX;
pub use session::{
    DisconnectKind, KickReason, Outgoing, OutgoingPublish, PublishAck, PublishError,
    RetainHandling, Session, SubscribeError, SubscribeRequest,
};
pub use sys::{SYS_INTERVAL, SYS_VERSION};
