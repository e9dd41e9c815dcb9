//! The engine's side of durability (issue 6): the typed operations it reports whenever
//! durable state changes, the [`Journal`] trait a store implements to write them, and the
//! state a store hands back at startup ([`RestoredHub`], [`Engine::restore`]).
//!
//! The engine does no I/O: [`Journal::record`] only queues an operation (it is called under
//! session and store locks, so it must be cheap and never block on a disk) and returns a
//! ticket. The store writes tickets in order and publishes "durable up to ticket N"
//! ([`Journal::durable`]); a connection holds its PUBACK/PUBREC, and the bytes of an
//! outbound QoS 2 PUBLISH whose packet id was just assigned, until the tickets its last
//! operations got are durable ([`crate::Session::durable_ticket`]).
//!
//! What is journaled: retained messages; and, for persistent sessions only (expiry > 0,
//! not an extra connection's session; route taps included), the session, its subscriptions,
//! its queued QoS 1/2 messages, its outbound inflight packet ids, its inbound QoS 2 packet
//! ids and its will (armed while it is connected, pending while a delayed will waits). A
//! message routed to several persistent sessions is written once ([`JournalOp::Message`]) and referenced by id. Times are wall-clock
//! milliseconds since the Unix epoch ([`WallMs`]): instants do not survive a restart.
//!
//! [`Engine::restore`]: crate::Engine::restore

use std::sync::Arc;

use iothub_model::{ClientId, DeviceId, HubId, Message, QoS, SubscriptionFilter, TopicName};

use crate::engine::Will;

/// Milliseconds since the Unix epoch.
pub type WallMs = u64;

/// The `due` of a [`JournalOp::WillPending`] written for a connected session: the will goes
/// out when the connection closes without DISCONNECT, which a crash is.
pub const WILL_ON_CLOSE: WallMs = WallMs::MAX;

/// Names one message written with [`JournalOp::Message`]; unique through the life of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// Names one queue entry of one session ([`JournalOp::Queue`]); unique through the life of a
/// store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

/// Who owns a persistent session (a session is only resumed by its owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOwner {
    Anonymous,
    Device(DeviceId),
    /// The tap of a route (`Engine::connect_route`, client id `$route/<route>`).
    Route,
}

/// The options of a granted subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_id: Option<u32>,
}

/// One change of durable state, in the order the engine made it.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalOp {
    /// A message referenced by later [`JournalOp::Queue`] or [`JournalOp::RetainSet`].
    Message {
        id: MessageId,
        hub: HubId,
        message: Arc<Message>,
    },
    RetainSet {
        hub: HubId,
        message: MessageId,
        expires_at: Option<WallMs>,
    },
    RetainClear {
        hub: HubId,
        topic: TopicName,
    },
    /// A persistent session connected (created or resumed, with its current expiry).
    SessionUp {
        hub: HubId,
        client: ClientId,
        owner: SessionOwner,
        expiry_secs: u32,
    },
    /// Its connection ended; the session lives `expiry_secs` from `at` (`u32::MAX`: forever).
    SessionDown {
        hub: HubId,
        client: ClientId,
        at: WallMs,
        expiry_secs: u32,
    },
    /// The session ended: everything of it is gone.
    SessionEnd {
        hub: HubId,
        client: ClientId,
    },
    Subscribe {
        hub: HubId,
        client: ClientId,
        filter: SubscriptionFilter,
        options: SubscriptionOptions,
    },
    Unsubscribe {
        hub: HubId,
        client: ClientId,
        filter: SubscriptionFilter,
    },
    /// A QoS 1/2 message queued for the session.
    Queue {
        hub: HubId,
        client: ClientId,
        entry: EntryId,
        message: MessageId,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        expires_at: Option<WallMs>,
    },
    /// A queued entry left the queue without being sent (expired, dropped, moved).
    Unqueue {
        hub: HubId,
        client: ClientId,
        entry: EntryId,
    },
    /// A queued entry was sent with `packet_id` (it is now inflight).
    Sent {
        hub: HubId,
        client: ClientId,
        entry: EntryId,
        packet_id: u16,
    },
    /// PUBACK, PUBCOMP, or a PUBREC with an error: the outbound exchange is over.
    Acked {
        hub: HubId,
        client: ClientId,
        packet_id: u16,
    },
    /// PUBREC: the message is delivered; PUBREL/PUBCOMP remain.
    Received {
        hub: HubId,
        client: ClientId,
        packet_id: u16,
    },
    /// An inbound QoS 2 PUBLISH was routed; its id awaits PUBREL.
    InboundQos2 {
        hub: HubId,
        client: ClientId,
        packet_id: u16,
    },
    /// PUBREL for an inbound QoS 2 id.
    Released {
        hub: HubId,
        client: ClientId,
        packet_id: u16,
    },
    /// The will of a session: of a disconnected one (a delayed will), due at `due`; or of a
    /// connected one, written at CONNECT with `due` = [`WILL_ON_CLOSE`] so that a crash does
    /// not lose it (a server crash closes the connection without DISCONNECT): the restore
    /// publishes it after its Will Delay Interval counted from the restart.
    WillPending {
        hub: HubId,
        client: ClientId,
        will: Will,
        due: WallMs,
    },
    /// The pending will was published or cancelled.
    WillCleared {
        hub: HubId,
        client: ClientId,
    },
    /// The hub was removed: everything of it is gone.
    HubCleared {
        hub: HubId,
    },
}

impl JournalOp {
    /// The hub the operation belongs to.
    pub fn hub(&self) -> HubId {
        match self {
            Self::Message { hub, .. }
            | Self::RetainSet { hub, .. }
            | Self::RetainClear { hub, .. }
            | Self::SessionUp { hub, .. }
            | Self::SessionDown { hub, .. }
            | Self::SessionEnd { hub, .. }
            | Self::Subscribe { hub, .. }
            | Self::Unsubscribe { hub, .. }
            | Self::Queue { hub, .. }
            | Self::Unqueue { hub, .. }
            | Self::Sent { hub, .. }
            | Self::Acked { hub, .. }
            | Self::Received { hub, .. }
            | Self::InboundQos2 { hub, .. }
            | Self::Released { hub, .. }
            | Self::WillPending { hub, .. }
            | Self::WillCleared { hub, .. }
            | Self::HubCleared { hub } => *hub,
        }
    }
}

/// Where the engine reports durable changes. Implemented by the store (`iothub-persist`);
/// the engine holds it as `Arc<dyn Journal>` in [`crate::EngineConfig::journal`].
pub trait Journal: Send + Sync {
    /// Queues `op` and returns its ticket: tickets increase in the order of the calls.
    /// Called under engine locks: it must not block on I/O.
    fn record(&self, op: JournalOp) -> u64;

    /// "Durable up to ticket N": the highest ticket whose operation (and every one before
    /// it) is committed under the store's fsync policy.
    fn durable(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Opens a group: the operations recorded from now until [`Journal::end_group`] with
    /// the returned value (by any thread) must become durable together or not at all, so a
    /// crash never keeps part of them. The engine groups the routing of an inbound QoS 2
    /// PUBLISH with its packet id: the queue entries it made without the id would be
    /// delivered twice after the publisher's resend. Must not block on I/O.
    fn begin_group(&self) -> u64 {
        0
    }

    /// Closes the group `begin_group` returned `start` for.
    fn end_group(&self, start: u64) {
        let _ = start;
    }

    /// Whether [`Journal::load`] reads messages back. Only then does the engine spill
    /// queue entries beyond a persistent session's in-memory bound (crate docs, "Queue
    /// policy").
    fn loads_messages(&self) -> bool {
        false
    }

    /// Reads back the message recorded as [`JournalOp::Message`] `id`, recorded earlier
    /// and still referenced by a queue entry. Called outside engine locks, from the task of
    /// the connection that is about to send it; it may read from disk.
    fn load(&self, id: MessageId) -> Result<Arc<Message>, LoadError> {
        Err(LoadError::Unsupported(id))
    }
}

/// Why [`Journal::load`] gave no message: the engine drops the entry (counted as
/// `reason="unreadable"`) rather than block its queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("the journal does not read messages back (message {})", .0.0)]
    Unsupported(MessageId),
    #[error("message {} is not in the store", .0.0)]
    NotFound(MessageId),
    #[error("message {} cannot be read back: {reason}", id.0)]
    Unreadable { id: MessageId, reason: String },
}

/// A retained message read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredRetained {
    pub id: MessageId,
    pub message: Arc<Message>,
    pub expires_at: Option<WallMs>,
}

/// A queued or inflight message of a restored session.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredEntry {
    pub entry: EntryId,
    pub message_id: MessageId,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub expires_at: Option<WallMs>,
}

/// An outbound QoS 1/2 exchange of a restored session, in send order.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoredInflight {
    /// Sent, not acknowledged: resent with the same packet id and DUP.
    Sent(RestoredEntry),
    /// PUBREC received: PUBREL is resent.
    AwaitingComp,
}

/// A persistent session read back from the store; it comes back offline.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredSession {
    pub client: ClientId,
    pub owner: SessionOwner,
    pub expiry_secs: u32,
    /// When its last connection ended; `None` when it was connected at the crash (its
    /// expiry then counts from the restore).
    pub disconnected_at: Option<WallMs>,
    pub subscriptions: Vec<(SubscriptionFilter, SubscriptionOptions)>,
    pub queue: Vec<RestoredEntry>,
    pub inflight: Vec<(u16, RestoredInflight)>,
    pub inbound_qos2: Vec<u16>,
    pub will: Option<(Will, WallMs)>,
}

/// The durable state of one hub, read back from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoredHub {
    pub retained: Vec<RestoredRetained>,
    pub sessions: Vec<RestoredSession>,
}

/// What [`crate::Engine::restore`] put back, and what it could not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub retained: usize,
    pub sessions: usize,
    pub queued: usize,
    /// Of `queued`, restored spilled (beyond their session's bound; see the crate docs).
    pub spilled: usize,
    pub inflight: usize,
    /// Sessions of a hub the engine does not serve, or whose owner is gone.
    pub sessions_dropped: usize,
    /// Hubs the engine does not serve (their state is dropped from the store).
    pub hubs_dropped: usize,
}
