//! The state of one MQTT session, shared between its connection's [`crate::Session`]
//! handle, the subscription trie (publishers push into its queue) and the hub's registry.
//!
//! All of it sits behind one short `parking_lot::Mutex` per session: a publisher holds it
//! only to push one queue entry, the connection only to move a batch out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use iothub_model::{
    ClientId, CompiledFilters, CompiledRule, DeviceId, Message, QoS, SubscriptionCheck,
    SubscriptionFilter, TopicFilter, TopicName,
};
use metrics::Gauge;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::engine::Will;
use crate::journal::{EntryId, MessageId};
use crate::session::KickReason;

/// The options of one subscription, as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) subscription_id: Option<u32>,
}

/// What the trie stores per subscriber: the session to deliver to and the options.
pub(crate) struct SubEntry {
    pub(crate) session: Arc<SessionState>,
    pub(crate) opts: SubOptions,
    /// The session's subscribe rule when this subscription only partly overlaps it
    /// ([`SubscriptionCheck::PerMessage`]): every message routed through it is checked.
    /// `None` for every subscription of an unfiltered session, so the default costs one
    /// branch per delivery.
    pub(crate) guard: Option<Arc<CompiledRule>>,
}

impl SubEntry {
    /// Whether a message on `topic` may go to this subscriber.
    pub(crate) fn admits(&self, topic: &str) -> bool {
        self.guard.as_ref().is_none_or(|g| g.allows_topic(topic))
    }
}

/// Who owns a session. A session is only ever resumed by the same owner: a device never
/// inherits an anonymous client's session that happens to bear its id, or the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Anonymous,
    Device(DeviceId),
    /// The engine tap of a route (`Engine::connect_route`): not a client of the hub.
    Route,
}

/// The message filters of a session, as shared handles; `None` = that direction is open
/// (the default "reject, empty"), checked with one branch.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionFilters {
    pub(crate) publish: Option<Arc<CompiledRule>>,
    pub(crate) subscribe: Option<Arc<CompiledRule>>,
}

impl SessionFilters {
    pub(crate) fn new(compiled: CompiledFilters) -> Self {
        let shared = |rule: CompiledRule| (!rule.is_open()).then(|| Arc::new(rule));
        Self {
            publish: shared(compiled.publish),
            subscribe: shared(compiled.subscribe),
        }
    }

    pub(crate) fn allows_publish(&self, topic: &str) -> bool {
        self.publish.as_ref().is_none_or(|r| r.allows_topic(topic))
    }

    /// `Err(())` when the subscription is refused, else the guard its trie entry needs.
    pub(crate) fn subscription_guard(
        &self,
        filter: &TopicFilter,
    ) -> Result<Option<Arc<CompiledRule>>, ()> {
        let Some(rule) = &self.subscribe else {
            return Ok(None);
        };
        match rule.check_subscription(filter) {
            SubscriptionCheck::Allowed => Ok(None),
            SubscriptionCheck::PerMessage => Ok(Some(rule.clone())),
            SubscriptionCheck::Refused => Err(()),
        }
    }

    /// Same rules (compared by content, so re-expanding unchanged filters is no change).
    pub(crate) fn same_as(&self, other: &SessionFilters) -> bool {
        fn eq(a: &Option<Arc<CompiledRule>>, b: &Option<Arc<CompiledRule>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        }
        eq(&self.publish, &other.publish) && eq(&self.subscribe, &other.subscribe)
    }
}

/// Which shared subscription a queued message came through, so it can move to another
/// member of the group when this member's connection ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SharedOrigin {
    pub(crate) group: Arc<str>,
    pub(crate) filter: TopicFilter,
}

/// What a queue entry holds of its message.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Loaded(Arc<Message>),
    /// Spilled (crate docs, "Queue policy"): the message is only in the store, under the
    /// entry's `message_id`; it is loaded back when it reaches the front of the queue.
    Spilled(Spilled),
}

/// The part of a spilled message the queue still needs: its topic (filters re-check it)
/// and what the stub itself costs in memory.
#[derive(Debug, Clone)]
pub(crate) struct Spilled {
    pub(crate) topic: TopicName,
    /// The message's record in the journal.
    pub(crate) id: MessageId,
    /// Held for its `Drop`, which gives the reservation back.
    pub(crate) _mark: SpillMark,
}

/// A stub's reservation in its hub: it holds `weight` bytes of the hub budget and one in
/// `iothub_spilled_messages`, both given back when the stub is dropped, wherever that
/// happens (loaded, expired, acknowledged, the session ended), so the accounting stays
/// exact without every path that frees entries knowing about stubs.
#[derive(Debug)]
pub(crate) struct SpillMark {
    budget: Arc<AtomicU64>,
    gauge: Gauge,
    weight: u64,
}

impl SpillMark {
    /// Memory a stub costs: the entry itself (its message's topic is shared with other
    /// stubs of the same message, counted once per entry anyway).
    pub(crate) const WEIGHT: u64 = std::mem::size_of::<Queued>() as u64;

    /// Reserves a stub's weight in `budget` (limit `limit`); `None` when it is used up.
    pub(crate) fn reserve(budget: &Arc<AtomicU64>, limit: u64, gauge: &Gauge) -> Option<Self> {
        let weight = Self::WEIGHT;
        let before = budget.fetch_add(weight, Ordering::AcqRel);
        if before + weight > limit {
            budget.fetch_sub(weight, Ordering::AcqRel);
            return None;
        }
        gauge.increment(1.0);
        Some(Self {
            budget: budget.clone(),
            gauge: gauge.clone(),
            weight,
        })
    }
}

impl Clone for SpillMark {
    fn clone(&self) -> Self {
        self.budget.fetch_add(self.weight, Ordering::AcqRel);
        self.gauge.increment(1.0);
        Self {
            budget: self.budget.clone(),
            gauge: self.gauge.clone(),
            weight: self.weight,
        }
    }
}

impl Drop for SpillMark {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.weight, Ordering::AcqRel);
        self.gauge.decrement(1.0);
    }
}

/// One message waiting in (or sent from) a session's queue. Its `weight` is reserved in
/// the hub budget and in the session's byte count until the entry is freed (0 for a
/// spilled entry, whose [`SpillMark`] holds its reservation).
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) body: Body,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) subscription_ids: Vec<u32>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) weight: u64,
    pub(crate) shared: Option<SharedOrigin>,
    /// The message's id in the journal, once it was written there (shared by every entry of
    /// the same message).
    pub(crate) message_id: Option<MessageId>,
    /// This entry's id in the journal, when it is journaled (QoS 1/2 of a persistent
    /// session).
    pub(crate) entry: Option<EntryId>,
}

impl Queued {
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The message, unless it is spilled.
    pub(crate) fn message(&self) -> Option<&Arc<Message>> {
        match &self.body {
            Body::Loaded(m) => Some(m),
            Body::Spilled(_) => None,
        }
    }

    pub(crate) fn topic(&self) -> &TopicName {
        match &self.body {
            Body::Loaded(m) => &m.topic,
            Body::Spilled(s) => &s.topic,
        }
    }

    pub(crate) fn is_spilled(&self) -> bool {
        matches!(self.body, Body::Spilled(_))
    }

    /// The journal id of a spilled entry's message.
    pub(crate) fn spilled(&self) -> Option<MessageId> {
        match &self.body {
            Body::Loaded(_) => None,
            Body::Spilled(s) => Some(s.id),
        }
    }
}

/// An outbound QoS 1/2 message the client has not completed.
#[derive(Debug)]
pub(crate) enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2). Holds the message for
    /// redelivery after a reconnect.
    Sent(Queued),
    /// QoS 2 after PUBREC: the message is delivered and freed; only PUBREL/PUBCOMP remain.
    AwaitingComp,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    /// Send order, so a reconnect resends in the original order.
    pub(crate) seq: u64,
    pub(crate) state: InflightState,
}

/// A will stored with its accounting.
#[derive(Debug)]
pub(crate) struct StoredWill {
    pub(crate) will: Will,
    pub(crate) weight: u64,
}

const NOT_KICKED: u8 = 0;

fn kick_code(reason: KickReason) -> u8 {
    match reason {
        KickReason::SessionTakenOver => 1,
        KickReason::AdministrativeAction => 2,
        KickReason::ServerShuttingDown => 3,
        KickReason::QuotaExceeded => 4,
    }
}

fn kick_from_code(code: u8) -> Option<KickReason> {
    match code {
        1 => Some(KickReason::SessionTakenOver),
        2 => Some(KickReason::AdministrativeAction),
        3 => Some(KickReason::ServerShuttingDown),
        4 => Some(KickReason::QuotaExceeded),
        _ => None,
    }
}

/// One network connection of a session. Each connection has its own, so a wake-up or a
/// kick meant for an old connection never reaches the one that replaced it.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    kick: AtomicU8,
    told: AtomicBool,
    pub(crate) notify: Notify,
}

impl Conn {
    /// Asks the connection to close with `reason`; the first reason wins.
    pub(crate) fn kick(&self, reason: KickReason) {
        let won = self
            .kick
            .compare_exchange(
                NOT_KICKED,
                kick_code(reason),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if won {
            self.notify.notify_one();
        }
    }

    pub(crate) fn kicked(&self) -> Option<KickReason> {
        kick_from_code(self.kick.load(Ordering::Acquire))
    }

    /// Whether the kick still has to be reported (true once).
    pub(crate) fn take_kick_report(&self) -> bool {
        !self.told.swap(true, Ordering::AcqRel)
    }
}

/// A session, alive from CONNECT until it ends (clean start, expiry, hub removal).
pub(crate) struct SessionState {
    pub(crate) client_id: ClientId,
    pub(crate) owner: Owner,
    /// Mirrors `inner.conn.is_some()`, readable without the lock, so shared-subscription
    /// routing can prefer connected members cheaply.
    pub(crate) connected: AtomicBool,
    /// MQTT packets of its connections not yet collected for the metrics API
    /// (`hub::activity`); outside the lock, bumped once per packet.
    pub(crate) activity: AtomicU64,
    pub(crate) inner: Mutex<Inner>,
}

pub(crate) struct Inner {
    /// The connection generation owning the session (unique per hub). A handle whose
    /// generation differs is stale: its calls are no-ops.
    pub(crate) generation: u64,
    pub(crate) conn: Option<Arc<Conn>>,
    /// Set once the session ended; nothing is queued into it any more.
    pub(crate) ended: bool,
    pub(crate) expiry_secs: u32,
    /// An extra connection's session (multiple connections of one device): it ends with
    /// its connection, whatever DISCONNECT says.
    pub(crate) ephemeral: bool,
    pub(crate) expires_at: Option<Instant>,
    /// Outbound QoS 1/2 window of the current connection.
    pub(crate) window: u16,
    pub(crate) queue: VecDeque<Queued>,
    /// False when the queue surely holds no QoS 0 entry: the queue policy's search for the
    /// oldest one (a walk of the queue) is skipped. Set by every QoS 0 entry queued, cleared
    /// by a search that found none.
    pub(crate) maybe_qos0: bool,
    /// Weight of queued and inflight messages (the session's byte bound).
    pub(crate) bytes: u64,
    pub(crate) inflight: HashMap<u16, Inflight>,
    pub(crate) next_seq: u64,
    pub(crate) next_packet_id: u16,
    /// Packet ids to resend first after a reconnect [MQTT-4.4.0-1].
    pub(crate) resend: VecDeque<u16>,
    /// Inbound QoS 2 packet ids routed and awaiting PUBREL.
    pub(crate) inbound_qos2: HashSet<u16>,
    pub(crate) subscriptions: HashMap<SubscriptionFilter, SubOptions>,
    /// The owner's message filters, kept current by live changes (connected or not).
    pub(crate) filters: SessionFilters,
    /// Version of the device record the current connection was admitted under (0 for
    /// anonymous clients): a live change kicks only connections admitted before it.
    pub(crate) admitted: u64,
    pub(crate) will: Option<StoredWill>,
    /// Pending timers of a disconnected session, cancelled when it reconnects or ends, so
    /// a flapping client leaves no stale timers behind. The will timer's instant is when
    /// the will is due.
    pub(crate) will_timer: Option<TimerKey>,
    pub(crate) expiry_timer: Option<TimerKey>,
    /// Purge of expiring messages queued while offline (the earliest expiry).
    pub(crate) purge_timer: Option<TimerKey>,
    /// Whether the session is written to the journal (persistent, with a journal): every
    /// change of it is then recorded.
    pub(crate) journaled: bool,
}

/// Identifies one scheduled timer of a hub: its deadline and a unique sequence number.
pub(crate) type TimerKey = (Instant, u64);

impl SessionState {
    pub(crate) fn new(client_id: ClientId, owner: Owner, generation: u64, conn: Arc<Conn>) -> Self {
        Self {
            client_id,
            owner,
            connected: AtomicBool::new(true),
            activity: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                generation,
                conn: Some(conn),
                ended: false,
                expiry_secs: 0,
                ephemeral: false,
                expires_at: None,
                window: 1,
                queue: VecDeque::new(),
                maybe_qos0: false,
                bytes: 0,
                inflight: HashMap::new(),
                next_seq: 0,
                next_packet_id: 1,
                resend: VecDeque::new(),
                inbound_qos2: HashSet::new(),
                subscriptions: HashMap::new(),
                filters: SessionFilters::default(),
                admitted: 0,
                will: None,
                will_timer: None,
                expiry_timer: None,
                purge_timer: None,
                journaled: false,
            }),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Inner {
    /// Takes every pending timer key, for cancellation.
    pub(crate) fn take_timers(&mut self) -> [Option<TimerKey>; 3] {
        [
            self.will_timer.take(),
            self.expiry_timer.take(),
            self.purge_timer.take(),
        ]
    }

    /// Whether the session is offline and its expiry interval has passed (the tick that
    /// ends it may not have run yet).
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.conn.is_none() && self.expires_at.is_some_and(|at| at <= now)
    }
}

impl Inner {
    /// The next free outbound packet id, 1..=65535 [MQTT-2.2.1-3]. The caller guarantees a
    /// free id exists (inflight is smaller than the window, at most 65535).
    pub(crate) fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// Rebuilds the resend list from the inflight messages in their send order.
    pub(crate) fn schedule_resend(&mut self) {
        let mut ids: Vec<(u64, u16)> = self.inflight.iter().map(|(id, f)| (f.seq, *id)).collect();
        ids.sort_unstable();
        self.resend = ids.into_iter().map(|(_, id)| id).collect();
    }
}
