//! One hub: an isolated namespace with its own sessions, subscription trie, retained store,
//! timers and byte budget. Nothing in here ever refers to another hub (the device directory
//! it reads is keyed by device, and a device record names its one hub).
//!
//! Submodules: `config` (settings and caps), `registry` (sessions by client id and by
//! device), `live` (live changes of the hub and its devices).
//!
//! Lock order (see the crate docs): `sessions` (registry) -> `subs` (trie) -> `retained`
//! -> a session's `inner` -> `timers`; `config` and the device directory are leaves, read
//! under `sessions` at CONNECT and written with no other lock held. Every function below
//! takes locks only in that order and never routes a message (which takes `subs` then
//! session locks) while holding a session lock.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iothub_model::{ClientId, CompiledRule, HubId, HubLimits, Message, Plan, QoS, TopicName};
use parking_lot::{Mutex, RwLock};

use crate::clock::Clock;
use crate::directory::Directory;
use crate::engine::{ConnectError, ConnectRequest, Connected, HubStats, Identity};
use crate::journal::{JournalOp, MessageId};
use crate::metrics::{DropReason, HubMetrics};
use crate::retained::{Retained, RetainedStore};
use crate::route_tap::{Admit, ROUTE_CLIENT_PREFIX};
use crate::session::{DisconnectKind, KickReason, PublishError, Session};
use crate::state::{
    Body, Conn, Inflight, InflightState, Inner, Owner, Queued, SessionFilters, SessionState,
    SharedOrigin, SpillMark, Spilled, StoredWill, SubEntry, SubOptions, TimerKey,
};
use crate::trie::{SharedGroup, SubTrie, too_deep};

mod activity;
mod config;
mod durable;
mod live;
mod registry;

pub use activity::{HubActivity, Traffic};
pub(crate) use config::HubConfig;
pub(crate) use durable::take_ticket;
pub(crate) use live::DeviceChange;
use registry::Registry;

/// Prefix of client ids the engine assigns to clients that sent an empty one.
const ASSIGNED_PREFIX: &str = "auto-";

/// The expiry instant of a message published at `now` [MQTT-3.3.2-5].
pub(crate) fn expiry_of(message: &Message, now: Instant) -> Option<Instant> {
    message
        .properties
        .message_expiry_interval
        .map(|secs| now + Duration::from_secs(secs.into()))
}

enum TimerKind {
    /// A delayed will of a disconnected session.
    Will { client: ClientId, generation: u64 },
    /// The end of a disconnected session.
    Expiry { client: ClientId, generation: u64 },
    /// Drop expired messages queued for a disconnected session.
    Purge { client: ClientId },
    /// A retained message's expiry.
    Retained { topic: TopicName },
}

/// A subscriber chosen by routing, before overlapping subscriptions are merged.
struct Target {
    session: Arc<SessionState>,
    opts: SubOptions,
    shared: Option<SharedOrigin>,
}

thread_local! {
    /// Reused by `route` so a publish allocates no target list of its own.
    static TARGETS: Cell<Vec<Target>> = const { Cell::new(Vec::new()) };
}

/// What is left of a session that just ended.
#[derive(Default)]
pub(crate) struct Ended {
    /// The pending will, still reserved in the budget.
    will: Option<(StoredWill, Arc<SessionState>)>,
    /// Messages that came through shared subscriptions, still reserved in the budget,
    /// to hand to another member of their group.
    shared: Vec<Queued>,
}

/// Who a CONNECT turned out to be, under the session lock.
struct Admission {
    client_id: ClientId,
    assigned: bool,
    owner: Owner,
    filters: SessionFilters,
    /// An extra connection of a device with multiple connections: a session that ends
    /// with its connection.
    ephemeral: bool,
    /// The device record's version (0 for anonymous clients).
    version: u64,
}

pub(crate) struct Hub {
    pub(crate) id: HubId,
    config: RwLock<Arc<HubConfig>>,
    /// Limits read on the publish path, copied out of `config` so routing takes no lock
    /// for them.
    budget_bytes: AtomicU64,
    queue_max_messages: AtomicUsize,
    queue_max_bytes: AtomicU64,
    pub(crate) enabled: AtomicBool,
    clock: Arc<dyn Clock>,
    directory: Arc<Directory>,
    sessions: Mutex<Registry>,
    subs: RwLock<SubTrie<SubEntry>>,
    retained: RwLock<RetainedStore>,
    /// Deadlines in order. A map rather than a heap so that timers can be cancelled.
    timers: Mutex<BTreeMap<TimerKey, TimerKind>>,
    timer_seq: AtomicU64,
    generation: AtomicU64,
    /// Shared with the stubs of spilled entries ([`SpillMark`]), which give their
    /// reservation back when dropped.
    budget_used: Arc<AtomicU64>,
    connected: AtomicUsize,
    pub(crate) metrics: HubMetrics,
    /// Packets of ended connections not yet collected (`activity`).
    activity: activity::ActivityLog,
    /// Hub events: rate limits and counts (`crate::events`).
    pub(crate) events: crate::events::HubEvents,
    /// `$SYS` figures (`crate::sys`).
    pub(crate) sys: crate::sys::SysTopics,
    /// Where durable changes are reported (`crate::journal`); `None`: nothing is.
    journal: Option<Arc<dyn crate::journal::Journal>>,
    /// Whether the journal reads messages back, so queue entries may be spilled.
    spills: bool,
    /// Engine-wide source of journal message and entry ids.
    ids: Arc<AtomicU64>,
}

impl Hub {
    pub(crate) fn new(
        id: HubId,
        config: Arc<HubConfig>,
        enabled: bool,
        clock: Arc<dyn Clock>,
        directory: Arc<Directory>,
        journal: Option<Arc<dyn crate::journal::Journal>>,
        ids: Arc<AtomicU64>,
    ) -> Self {
        let hub = Self {
            spills: journal.as_ref().is_some_and(|j| j.loads_messages()),
            journal,
            ids,
            metrics: HubMetrics::new(id),
            id,
            budget_bytes: AtomicU64::new(0),
            queue_max_messages: AtomicUsize::new(0),
            queue_max_bytes: AtomicU64::new(0),
            enabled: AtomicBool::new(enabled),
            clock: clock.clone(),
            directory,
            sessions: Mutex::new(Registry::default()),
            subs: RwLock::new(SubTrie::default()),
            retained: RwLock::new(RetainedStore::default()),
            timers: Mutex::new(BTreeMap::new()),
            timer_seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            budget_used: Arc::new(AtomicU64::new(0)),
            connected: AtomicUsize::new(0),
            activity: activity::ActivityLog::default(),
            events: crate::events::HubEvents::new(id),
            sys: crate::sys::SysTopics::new(clock.now()),
            config: RwLock::new(config.clone()),
        };
        hub.set_hot_limits(&config.limits);
        hub
    }

    /// The current settings.
    pub(crate) fn config(&self) -> Arc<HubConfig> {
        self.config.read().clone()
    }

    fn set_hot_limits(&self, limits: &HubLimits) {
        self.budget_bytes
            .store(limits.budget_bytes, Ordering::Relaxed);
        self.queue_max_messages.store(
            usize::try_from(limits.max_session_queue_messages.max(1)).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        self.queue_max_bytes
            .store(limits.max_session_queue_bytes, Ordering::Relaxed);
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The calendar time, for hub events.
    pub(crate) fn wall_now(&self) -> std::time::SystemTime {
        self.clock.wall()
    }

    // ---- budget -------------------------------------------------------------------------

    /// Reserves `weight` bytes of the hub budget; false (and nothing reserved) when the
    /// budget would be exceeded.
    pub(crate) fn try_reserve(&self, weight: u64) -> bool {
        let before = self.budget_used.fetch_add(weight, Ordering::AcqRel);
        if before + weight > self.budget_bytes.load(Ordering::Relaxed) {
            self.budget_used.fetch_sub(weight, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Reserves `weight` whatever the budget says: for a spilled message loaded back
    /// before it is sent (a batch at a time, so the overshoot is bounded).
    pub(crate) fn reserve(&self, weight: u64) {
        self.budget_used.fetch_add(weight, Ordering::AcqRel);
    }

    /// A spilled entry's stub reservation (`None`: the budget is used up).
    pub(crate) fn reserve_stub(&self) -> Option<SpillMark> {
        SpillMark::reserve(
            &self.budget_used,
            self.budget_bytes.load(Ordering::Relaxed),
            &self.metrics.spilled,
        )
    }

    /// Makes `q` a stub of its message `id` in the journal, holding `mark`'s reservation
    /// instead of its weight (which the caller gives back or never took).
    pub(crate) fn spill(&self, q: &mut Queued, id: MessageId, mark: SpillMark) {
        let topic = q.topic().clone();
        q.body = Body::Spilled(Spilled {
            topic,
            id,
            _mark: mark,
        });
        q.weight = 0;
        self.metrics.spilled_total.increment(1);
    }

    pub(crate) fn release(&self, weight: u64) {
        if weight > 0 {
            self.budget_used.fetch_sub(weight, Ordering::AcqRel);
        }
    }

    fn schedule(&self, at: Instant, kind: TimerKind) -> TimerKey {
        let key = (at, self.timer_seq.fetch_add(1, Ordering::Relaxed));
        self.timers.lock().insert(key, kind);
        key
    }

    fn cancel(&self, keys: impl IntoIterator<Item = Option<TimerKey>>) {
        let keys: Vec<TimerKey> = keys.into_iter().flatten().collect();
        if !keys.is_empty() {
            let mut timers = self.timers.lock();
            for key in keys {
                timers.remove(&key);
            }
        }
    }

    // ---- connect / disconnect -----------------------------------------------------------

    /// Admits `identity` with `req` under the session lock (`registry` held), so that a
    /// live change (hub disabled, device changed, settings replaced) either happened before
    /// and is seen here, or happens after and sees the new session.
    fn admit(
        &self,
        config: &HubConfig,
        who: Admit,
        req: &ConnectRequest,
        registry: &Registry,
        generation: u64,
    ) -> Result<Admission, ConnectError> {
        let identity = match who {
            Admit::Client(identity) => identity,
            Admit::Route => {
                let client_id = req.client_id.clone().ok_or(ConnectError::ClientIdInvalid)?;
                return Ok(Admission {
                    client_id,
                    assigned: false,
                    owner: Owner::Route,
                    filters: SessionFilters::default(),
                    ephemeral: false,
                    version: 0,
                });
            }
        };
        match identity {
            Identity::Anonymous => {
                if !config.admits_anonymous() {
                    return Err(ConnectError::NotAuthorized);
                }
                let (client_id, assigned) = match &req.client_id {
                    // The routes' taps own these ids: a client never takes one over.
                    Some(id) if id.as_str().starts_with(ROUTE_CLIENT_PREFIX) => {
                        return Err(ConnectError::ClientIdInvalid);
                    }
                    Some(id) => (id.clone(), false),
                    None => {
                        let id = format!("{ASSIGNED_PREFIX}{}", uuid::Uuid::new_v4());
                        let id = ClientId::new(&id).map_err(|_| ConnectError::ClientIdInvalid)?;
                        (id, true)
                    }
                };
                // Only fails when a client id would change the structure of a templated
                // filter (a '/', '+' or '#' in it).
                let filters = config
                    .anonymous_filters_for(self.id, &client_id)
                    .map_err(|_| ConnectError::ClientIdInvalid)?;
                Ok(Admission {
                    client_id,
                    assigned,
                    owner: Owner::Anonymous,
                    filters,
                    ephemeral: false,
                    version: 0,
                })
            }
            Identity::Device { id, certificate } => {
                let entry = self
                    .directory
                    .read()
                    .get(&id)
                    .cloned()
                    .ok_or(ConnectError::NotAuthorized)?;
                if entry.hub != self.id {
                    return Err(ConnectError::NotAuthorized);
                }
                entry.admit(certificate.as_ref())?;
                let own = &entry.client_id;
                if let Some(proof) = &certificate {
                    let sent = req.client_id.as_ref().map_or("", |c| c.as_str());
                    if !entry.certificate_client_id(id, proof, sent) {
                        return Err(ConnectError::ClientIdInvalid);
                    }
                }
                let owner = Owner::Device(id);
                let multiple = entry.allow_multiple_connections && config.plan != Plan::Shared;
                let own_session_connected = registry
                    .get(own)
                    .is_some_and(|s| s.owner == owner && s.is_connected());
                if multiple && own_session_connected {
                    let extra = ClientId::new(&format!("{own}.{generation}"))
                        .map_err(|_| ConnectError::ClientIdInvalid)?;
                    return Ok(Admission {
                        client_id: extra,
                        assigned: false,
                        owner,
                        filters: entry.filters.clone(),
                        ephemeral: true,
                        version: entry.version,
                    });
                }
                Ok(Admission {
                    client_id: own.clone(),
                    assigned: req.client_id.as_ref() != Some(own),
                    owner,
                    filters: entry.filters.clone(),
                    ephemeral: false,
                    version: entry.version,
                })
            }
        }
    }

    /// Checks a will against the hub's caps and the client's publish rule.
    fn check_will(
        config: &HubConfig,
        filters: &SessionFilters,
        will: &crate::engine::Will,
    ) -> Result<(), ConnectError> {
        let m = &will.message;
        if m.payload.len() > config.caps.max_payload_bytes as usize {
            return Err(ConnectError::PayloadTooLarge);
        }
        if m.qos > config.caps.maximum_qos {
            return Err(ConnectError::QosNotSupported);
        }
        if m.retain && !config.caps.retain_available {
            return Err(ConnectError::RetainNotSupported);
        }
        if config.reserved_topic(&m.topic) || !filters.allows_publish(m.topic.as_str()) {
            return Err(ConnectError::NotAuthorized);
        }
        Ok(())
    }

    pub(crate) fn connect(
        self: &Arc<Self>,
        who: Admit,
        req: ConnectRequest,
    ) -> Result<Connected, ConnectError> {
        if !self.enabled.load(Ordering::Acquire) {
            return Err(ConnectError::HubDisabled);
        }
        let now = self.now();
        // What the CONNECT records (a persistent session, its will, a takeover's effects)
        // must be durable before the CONNACK: a crash right after it would lose the will.
        take_ticket();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Arc::new(Conn::default());
        let mut wills: Vec<(StoredWill, Arc<SessionState>)> = Vec::new();
        let mut moved: Vec<Queued> = Vec::new();
        let (state, session_present, admission, config, expiry) = {
            let mut registry = self.sessions.lock();
            let config = self.config();
            if !self.enabled.load(Ordering::Acquire) {
                return Err(ConnectError::HubDisabled);
            }
            let admission = self.admit(&config, who, &req, &registry, generation)?;
            if config.plan == Plan::Shared && (!req.clean_start || req.session_expiry_secs > 0) {
                return Err(ConnectError::CleanStartRequired);
            }
            if let Some(will) = &req.will {
                Self::check_will(&config, &admission.filters, will)?;
            }
            let (clean_start, expiry) = if admission.ephemeral {
                (true, 0)
            } else {
                let max = config.limits.max_session_expiry_secs;
                (req.clean_start, req.session_expiry_secs.min(max))
            };
            let window = req
                .receive_maximum
                .min(config.limits.max_inflight_messages)
                .max(1);
            let mut will = match req.will {
                Some(will) => {
                    let weight = will.message.weight() as u64;
                    if !self.try_reserve(weight) {
                        return Err(ConnectError::QuotaExceeded);
                    }
                    Some(StoredWill { will, weight })
                }
                None => None,
            };
            let client_id = &admission.client_id;
            let existing = registry.get(client_id).cloned();
            let resumed = match existing {
                Some(old)
                    if clean_start
                        || old.owner != admission.owner
                        || old.inner.lock().expired(now) =>
                {
                    // [MQTT-3.1.2-4]: discard the session (or it had already expired, or
                    // another owner held it); it ends, so its will goes out.
                    let ended = self.end_session_locked(
                        &mut registry,
                        &old,
                        Some(KickReason::SessionTakenOver),
                    );
                    wills.extend(ended.will);
                    moved = ended.shared;
                    None
                }
                Some(old) => {
                    let mut inner = old.inner.lock();
                    let took_over = match inner.conn.take() {
                        Some(previous) => {
                            // [MQTT-3.1.4-3]: the existing connection is closed.
                            previous.kick(KickReason::SessionTakenOver);
                            self.connected.fetch_sub(1, Ordering::AcqRel);
                            true
                        }
                        None => false,
                    };
                    let will_due = inner.will_timer.is_some_and(|(at, _)| at <= now);
                    let timers = inner.take_timers();
                    self.cancel(timers);
                    if let Some(w) = inner.will.take() {
                        // The session continues: a will whose delay has not elapsed is not
                        // sent [MQTT-3.1.3-9]; one without delay (or already due) is.
                        if (took_over && w.will.delay_secs == 0) || will_due {
                            wills.push((w, old.clone()));
                        } else {
                            self.release(w.weight);
                        }
                    }
                    inner.generation = generation;
                    inner.conn = Some(conn.clone());
                    inner.expiry_secs = expiry;
                    inner.expires_at = None;
                    inner.window = window;
                    inner.will = will.take();
                    // Live changes keep every session's filters current, offline ones too;
                    // this only refreshes the handles.
                    inner.filters = admission.filters.clone();
                    inner.admitted = admission.version;
                    inner.schedule_resend();
                    let persistent = self.persistent(expiry, inner.ephemeral);
                    self.journal_session_up(&old, &mut inner, persistent);
                    old.connected.store(true, Ordering::Release);
                    drop(inner);
                    Some(old)
                }
                None => None,
            };
            let present = resumed.is_some();
            let state = match resumed {
                Some(state) => state,
                None => {
                    let state = Arc::new(SessionState::new(
                        client_id.clone(),
                        admission.owner,
                        generation,
                        conn.clone(),
                    ));
                    {
                        let mut inner = state.inner.lock();
                        inner.expiry_secs = expiry;
                        inner.ephemeral = admission.ephemeral;
                        inner.window = window;
                        inner.will = will;
                        inner.filters = admission.filters.clone();
                        inner.admitted = admission.version;
                        let persistent = self.persistent(expiry, admission.ephemeral);
                        if persistent {
                            self.journal_session_up(&state, &mut inner, true);
                        }
                    }
                    registry.insert(state.clone());
                    state
                }
            };
            self.connected.fetch_add(1, Ordering::AcqRel);
            (state, present, admission, config, expiry)
        };
        for (w, from) in wills {
            self.publish_will(w, &from, now);
        }
        self.hand_over_shared(moved, now);
        let client_id = admission.client_id;
        let session = Session::new(
            self.clone(),
            state,
            conn,
            generation,
            client_id.clone(),
            config.clone(),
        );
        session.note_ticket();
        Ok(Connected {
            session,
            session_present,
            client_id,
            assigned: admission.assigned,
            session_expiry_secs: expiry,
            caps: config.caps,
        })
    }

    /// Ends the connection `generation` of `state`. A stale generation (taken over, hub
    /// removed) changes nothing.
    pub(crate) fn disconnect(
        &self,
        state: &Arc<SessionState>,
        generation: u64,
        how: DisconnectKind,
    ) {
        let now = self.now();
        let max_expiry = self.config.read().limits.max_session_expiry_secs;
        let mut will_now = None;
        let ended = {
            let mut registry = self.sessions.lock();
            let mut inner = state.inner.lock();
            if inner.generation != generation || inner.ended || inner.conn.is_none() {
                return;
            }
            inner.conn = None;
            state.connected.store(false, Ordering::Release);
            self.connected.fetch_sub(1, Ordering::AcqRel);
            inner.resend.clear();
            let (expiry, publish_will) = match how {
                DisconnectKind::Normal {
                    session_expiry_secs,
                } => (session_expiry_secs, false),
                DisconnectKind::WithWill {
                    session_expiry_secs,
                } => (session_expiry_secs, true),
                DisconnectKind::Abnormal => (None, true),
            };
            if let Some(expiry) = expiry
                && !inner.ephemeral
            {
                inner.expiry_secs = expiry.min(max_expiry);
            }
            let expiry = inner.expiry_secs;
            // QoS 0 is never kept for an offline session (see the queue policy).
            let mut freed = 0;
            inner.queue.retain(|q| {
                let keep = q.qos != QoS::AtMostOnce;
                if !keep {
                    freed += q.weight;
                }
                keep
            });
            inner.bytes -= freed;
            self.release(freed);
            if let Some(w) = inner.will.take() {
                if inner.journaled && (!publish_will || w.will.delay_secs == 0) {
                    // The will armed at CONNECT is discarded or goes out now.
                    let hub = self.id;
                    self.record(|| JournalOp::WillCleared {
                        hub,
                        client: state.client_id.clone(),
                    });
                }
                if !publish_will {
                    // [MQTT-3.1.2-10]: a normal DISCONNECT discards the will.
                    self.release(w.weight);
                } else if w.will.delay_secs == 0 {
                    will_now = Some(w);
                } else {
                    // Sent after the delay, or at session end if that comes first
                    // [MQTT-3.1.3-9]; a reconnect before then cancels it.
                    let due = now + Duration::from_secs(w.will.delay_secs.into());
                    if expiry == u32::MAX || w.will.delay_secs < expiry {
                        inner.will_timer = Some(self.schedule(
                            due,
                            TimerKind::Will {
                                client: state.client_id.clone(),
                                generation,
                            },
                        ));
                    }
                    if inner.journaled && expiry > 0 {
                        let hub = self.id;
                        // Due at session end when that comes first: the restore's expiry
                        // timer publishes it then.
                        self.record(|| JournalOp::WillPending {
                            hub,
                            client: state.client_id.clone(),
                            will: w.will.clone(),
                            due: self.wall_of(due, now),
                        });
                    }
                    inner.will = Some(w);
                }
            }
            if expiry == 0 {
                drop(inner);
                Some(self.end_session_locked(&mut registry, state, None))
            } else {
                if inner.journaled {
                    let hub = self.id;
                    self.record(|| JournalOp::SessionDown {
                        hub,
                        client: state.client_id.clone(),
                        at: self.wall_of(now, now),
                        expiry_secs: expiry,
                    });
                }
                if expiry != u32::MAX {
                    let at = now + Duration::from_secs(expiry.into());
                    inner.expires_at = Some(at);
                    inner.expiry_timer = Some(self.schedule(
                        at,
                        TimerKind::Expiry {
                            client: state.client_id.clone(),
                            generation,
                        },
                    ));
                }
                self.schedule_purge(state, &mut inner);
                None
            }
        };
        if let Some(w) = will_now {
            self.publish_will(w, state, now);
        }
        match ended {
            Some(ended) => self.finish_ended(ended, now),
            None => self.redistribute_shared(state, now),
        }
    }

    /// Ends `state` while the caller holds the registry: removes it from the registry and
    /// its subscriptions from the trie, frees its queue, kicks its connection with `kick`.
    /// The will and the shared-subscription messages are returned, still reserved.
    fn end_session_locked(
        &self,
        registry: &mut Registry,
        state: &Arc<SessionState>,
        kick: Option<KickReason>,
    ) -> Ended {
        registry.remove(state);
        let mut subs = self.subs.write();
        let mut inner = state.inner.lock();
        if inner.ended {
            return Ended::default();
        }
        inner.ended = true;
        if inner.journaled {
            inner.journaled = false;
            let hub = self.id;
            self.record(|| JournalOp::SessionEnd {
                hub,
                client: state.client_id.clone(),
            });
        }
        if let Some(conn) = inner.conn.take() {
            if let Some(reason) = kick {
                conn.kick(reason);
            }
            state.connected.store(false, Ordering::Release);
            self.connected.fetch_sub(1, Ordering::AcqRel);
        }
        for (filter, _) in inner.subscriptions.drain() {
            subs.remove(&filter, &state.client_id);
        }
        drop(subs);
        let mut ended = Ended::default();
        let mut freed = 0;
        // Inflight (in send order) before queued: the order the messages were routed in.
        let mut inflight: Vec<Inflight> =
            std::mem::take(&mut inner.inflight).into_values().collect();
        inflight.sort_unstable_by_key(|f| f.seq);
        let sent = inflight.into_iter().filter_map(|f| match f.state {
            InflightState::Sent(q) => Some((q, true)),
            InflightState::AwaitingComp => None,
        });
        let queued = std::mem::take(&mut inner.queue)
            .into_iter()
            .map(|q| (q, false));
        for (q, was_sent) in sent.chain(queued) {
            if q.shared.is_some() && may_move_to_another_member(&q, was_sent) {
                ended.shared.push(q);
            } else {
                freed += q.weight;
            }
        }
        inner.bytes = 0;
        inner.resend.clear();
        inner.inbound_qos2.clear();
        let timers = inner.take_timers();
        self.cancel(timers);
        self.release(freed);
        ended.will = inner.will.take().map(|w| (w, state.clone()));
        ended
    }

    fn finish_ended(&self, ended: Ended, now: Instant) {
        if let Some((w, from)) = ended.will {
            self.publish_will(w, &from, now);
        }
        self.hand_over_shared(ended.shared, now);
    }

    /// Schedules a purge of expiring messages queued for a disconnected session.
    fn schedule_purge(&self, state: &SessionState, inner: &mut Inner) {
        let next = inner.queue.iter().filter_map(|q| q.expires_at).min();
        if let Some(at) = next
            && inner.purge_timer.is_none_or(|(p, _)| at < p)
        {
            self.cancel([inner.purge_timer.take()]);
            inner.purge_timer = Some(self.schedule(
                at,
                TimerKind::Purge {
                    client: state.client_id.clone(),
                },
            ));
        }
    }

    // ---- shared subscriptions -----------------------------------------------------------

    /// Picks the member of `group` that gets the next message: round robin, preferring
    /// connected members, never `exclude`, never one whose filters refuse `topic` (when
    /// given). With `connected_only`, an offline member is never chosen.
    fn pick_member<'a>(
        group: &'a SharedGroup<SubEntry>,
        exclude: Option<&Arc<SessionState>>,
        connected_only: bool,
        topic: Option<&str>,
    ) -> Option<&'a SubEntry> {
        let n = group.members.len();
        if n == 0 {
            return None;
        }
        // The cursor moves past the member chosen, so skipping an offline member does not
        // favour the one after it. Concurrent publishers may race on it: harmless.
        let start = group.cursor.load(Ordering::Relaxed) % n;
        let mut fallback = None;
        for k in 0..n {
            let at = (start + k) % n;
            let (_, member) = &group.members[at];
            if exclude.is_some_and(|e| Arc::ptr_eq(e, &member.session))
                || topic.is_some_and(|t| !member.admits(t))
            {
                continue;
            }
            if member.session.is_connected() {
                group.cursor.store(at + 1, Ordering::Relaxed);
                return Some(member);
            }
            fallback.get_or_insert((at, member));
        }
        if connected_only {
            return None;
        }
        let (at, member) = fallback?;
        group.cursor.store(at + 1, Ordering::Relaxed);
        Some(member)
    }

    /// Re-targets `q` (a shared-subscription message moving to `member`).
    fn retarget(mut q: Queued, opts: &SubOptions) -> Queued {
        // A new journal record of the message if the member is persistent: the old one may
        // already be unreferenced (its entry left the other member first).
        q.message_id = None;
        q.entry = None;
        // Shared-subscription entries are never spilled; a stub would keep what it had.
        if let Some((qos, retain)) = q.message().map(|m| (m.qos, m.retain)) {
            q.qos = qos.min(opts.qos);
            q.retain = retain && opts.retain_as_published;
        }
        q.subscription_ids = opts.subscription_id.into_iter().collect();
        q
    }

    /// Hands messages of an ended session to other members of their shared groups,
    /// connected ones first; a message whose group has no member left is freed.
    fn hand_over_shared(&self, entries: Vec<Queued>, now: Instant) {
        for q in entries {
            let target = q.shared.as_ref().and_then(|origin| {
                let subs = self.subs.read();
                let group = subs.shared_group(&origin.group, &origin.filter)?;
                Self::pick_member(group, None, false, Some(q.topic().as_str()))
                    .map(|m| (m.session.clone(), m.opts))
            });
            match target {
                Some((session, opts)) => {
                    self.enqueue(&session, Self::retarget(q, &opts), now, true);
                }
                None => self.release(q.weight),
            }
        }
    }

    /// The connection of `state` ended but the session lives on: its unacknowledged
    /// shared-subscription messages (queued, or QoS 1 sent without PUBACK) move to a
    /// connected member of their group if there is one; otherwise they stay. A QoS 2
    /// message already sent stays with its member (see [`may_move_to_another_member`]).
    fn redistribute_shared(&self, state: &Arc<SessionState>, now: Instant) {
        let origins: Vec<SharedOrigin> = {
            let inner = state.inner.lock();
            if inner.ended || inner.conn.is_some() {
                return;
            }
            let sent = inner.inflight.values().filter_map(|f| match &f.state {
                InflightState::Sent(q) if may_move_to_another_member(q, true) => q.shared.as_ref(),
                _ => None,
            });
            let mut origins: Vec<SharedOrigin> = Vec::new();
            for origin in inner
                .queue
                .iter()
                .filter_map(|q| q.shared.as_ref())
                .chain(sent)
            {
                if !origins.contains(origin) {
                    origins.push(origin.clone());
                }
            }
            origins
        };
        if origins.is_empty() {
            return;
        }
        type Target = (Arc<SessionState>, SubOptions, Option<Arc<CompiledRule>>);
        let targets: HashMap<SharedOrigin, Target> = {
            let subs = self.subs.read();
            origins
                .into_iter()
                .filter_map(|origin| {
                    let group = subs.shared_group(&origin.group, &origin.filter)?;
                    let member = Self::pick_member(group, Some(state), true, None)?;
                    let target = (member.session.clone(), member.opts, member.guard.clone());
                    Some((origin, target))
                })
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        // A message the chosen member's filters refuse stays, as if no member were
        // connected.
        let moving = |q: &Queued| {
            q.shared
                .as_ref()
                .and_then(|o| targets.get(o))
                .is_some_and(|(_, _, guard)| {
                    guard
                        .as_ref()
                        .is_none_or(|g| g.allows_topic(q.topic().as_str()))
                })
        };
        let moved: Vec<Queued> = {
            let mut inner = state.inner.lock();
            if inner.ended || inner.conn.is_some() {
                return;
            }
            // Inflight messages first, in send order, then the queue: the order they were
            // routed in.
            let mut ids: Vec<(u64, u16)> = inner
                .inflight
                .iter()
                .filter(|(_, f)| {
                    matches!(&f.state, InflightState::Sent(q)
                        if moving(q) && may_move_to_another_member(q, true))
                })
                .map(|(id, f)| (f.seq, *id))
                .collect();
            ids.sort_unstable();
            let mut moved = Vec::new();
            for (_, id) in ids {
                if let Some(Inflight {
                    state: InflightState::Sent(q),
                    ..
                }) = inner.inflight.remove(&id)
                {
                    if inner.journaled {
                        let hub = self.id;
                        self.record(|| JournalOp::Acked {
                            hub,
                            client: state.client_id.clone(),
                            packet_id: id,
                        });
                    }
                    moved.push(q);
                }
            }
            let mut kept = std::collections::VecDeque::with_capacity(inner.queue.len());
            for q in inner.queue.drain(..) {
                if moving(&q) {
                    self.journal_unqueue(&state.client_id, &q);
                    moved.push(q);
                } else {
                    kept.push_back(q);
                }
            }
            inner.queue = kept;
            let weight: u64 = moved.iter().map(|q| q.weight).sum();
            inner.bytes -= weight;
            moved
        };
        for q in moved {
            let target = q.shared.as_ref().and_then(|o| targets.get(o));
            match target {
                Some((session, opts, _)) => {
                    let q = Self::retarget(q, opts);
                    self.enqueue(session, q, now, true);
                }
                None => self.release(q.weight),
            }
        }
    }

    // ---- publish ------------------------------------------------------------------------

    /// Stores, replaces or deletes (empty payload) the retained message of `message.topic`
    /// [MQTT-3.3.1-5..7]. The store counts against the hub budget.
    pub(crate) fn store_retained(
        &self,
        message: &Arc<Message>,
        now: Instant,
    ) -> Result<(), PublishError> {
        let topic = message.topic.as_str();
        if message.payload.is_empty() {
            let mut store = self.retained.write();
            let removed = store.remove(topic);
            if let Some(old) = removed {
                let hub = self.id;
                self.record(|| JournalOp::RetainClear {
                    hub,
                    topic: message.topic.clone(),
                });
                drop(store);
                self.release(old.weight);
                self.cancel([old.timer]);
            }
            return Ok(());
        }
        if too_deep(topic) {
            return Err(PublishError::QuotaExceeded);
        }
        let weight = message.weight() as u64;
        let expires_at = expiry_of(message, now);
        // Copied before the lock: a payload of megabytes is not copied under it.
        let owned = Arc::new(crate::retained::owned_copy(message));
        let mut store = self.retained.write();
        let old = store.get(topic).map_or(0, |r| r.weight);
        if weight > old {
            if !self.try_reserve(weight - old) {
                return Err(PublishError::QuotaExceeded);
            }
        } else {
            self.release(old - weight);
        }
        let timer = expires_at.map(|at| {
            self.schedule(
                at,
                TimerKind::Retained {
                    topic: message.topic.clone(),
                },
            )
        });
        let id = self.journaling().then(|| {
            let id = MessageId(self.next_journal_id());
            let hub = self.id;
            self.record(|| JournalOp::Message {
                id,
                hub,
                message: owned.clone(),
            });
            self.record(|| JournalOp::RetainSet {
                hub,
                message: id,
                expires_at: expires_at.map(|at| self.wall_of(at, now)),
            });
            id
        });
        let replaced = store.set(
            topic,
            Retained {
                message: owned,
                weight,
                expires_at,
                timer,
                id,
            },
        );
        if let Some(old) = replaced {
            self.cancel([old.timer]);
        }
        Ok(())
    }

    /// Delivers `message` to every matching subscription of the hub. `publisher` is the
    /// publishing session, for No Local [MQTT-3.8.3-3]. A client with several matching
    /// subscriptions gets one copy with the highest QoS and all their subscription
    /// identifiers [MQTT-3.3.4-2..5]; each shared group matching gets one copy for one member.
    /// Returns whether any subscriber matched. Never waits for a subscriber.
    pub(crate) fn route(
        &self,
        message: &Arc<Message>,
        publisher: Option<&Arc<SessionState>>,
        now: Instant,
    ) -> bool {
        let mut targets = TARGETS.with(Cell::take);
        let topic = message.topic.as_str();
        {
            let subs = self.subs.read();
            subs.for_each_match(topic, |leaf| {
                for entry in leaf.direct.values() {
                    if entry.opts.no_local
                        && publisher.is_some_and(|p| Arc::ptr_eq(p, &entry.session))
                    {
                        continue;
                    }
                    if !entry.admits(topic) {
                        continue;
                    }
                    targets.push(Target {
                        session: entry.session.clone(),
                        opts: entry.opts,
                        shared: None,
                    });
                }
                for (name, group) in &leaf.shared {
                    if let Some(member) = Self::pick_member(group, None, false, Some(topic)) {
                        targets.push(Target {
                            session: member.session.clone(),
                            opts: member.opts,
                            shared: Some(SharedOrigin {
                                group: name.clone(),
                                filter: group.filter.clone(),
                            }),
                        });
                    }
                }
            });
        }
        let matched = !targets.is_empty();
        if targets.len() > 1 {
            targets
                .sort_unstable_by_key(|t| (Arc::as_ptr(&t.session) as usize, t.shared.is_some()));
        }
        let expires_at = expiry_of(message, now);
        let weight = message.weight() as u64;
        // Written to the journal once, by the first persistent subscriber's entry.
        let mut message_id = None;
        let mut rest = targets.drain(..).peekable();
        while let Some(first) = rest.next() {
            let mut qos = first.opts.qos;
            let mut retain_as_published = first.opts.retain_as_published;
            let mut subscription_ids: Vec<u32> = first.opts.subscription_id.into_iter().collect();
            if first.shared.is_none() {
                while let Some(next) =
                    rest.next_if(|t| t.shared.is_none() && Arc::ptr_eq(&t.session, &first.session))
                {
                    qos = qos.max(next.opts.qos);
                    retain_as_published |= next.opts.retain_as_published;
                    subscription_ids.extend(next.opts.subscription_id);
                }
            }
            let entry = Queued {
                body: Body::Loaded(message.clone()),
                qos: qos.min(message.qos),
                retain: message.retain && retain_as_published,
                subscription_ids,
                expires_at,
                weight,
                shared: first.shared,
                message_id,
                entry: None,
            };
            if let Some(id) = self.enqueue(&first.session, entry, now, false) {
                message_id = Some(id);
            }
        }
        drop(rest);
        TARGETS.with(|cell| cell.set(targets));
        matched
    }

    /// Queues `entry` for `session`, applying the queue policy (crate docs, "Queue policy")
    /// and the hub budget. `reserved` = the entry's weight is already held in the budget (a
    /// message moving between sessions); it is released if the entry is not queued. A QoS
    /// 1/2 entry of a journaled session is journaled; returns the message's journal id when
    /// it has one (so other subscribers' entries reference the same record).
    pub(crate) fn enqueue(
        &self,
        session: &SessionState,
        mut entry: Queued,
        now: Instant,
        reserved: bool,
    ) -> Option<MessageId> {
        let weight = entry.weight;
        let max_messages = self.queue_max_messages.load(Ordering::Relaxed);
        let max_bytes = self.queue_max_bytes.load(Ordering::Relaxed);
        let over =
            |inner: &Inner| inner.queue.len() >= max_messages || inner.bytes + weight > max_bytes;
        let mut evicted = 0;
        let dropped = {
            let mut inner = session.inner.lock();
            if inner.ended || (entry.qos == QoS::AtMostOnce && inner.conn.is_none()) {
                None
            } else if entry.expired(now) {
                Some(DropReason::Expired)
            } else {
                // Over the session's bound, the oldest QoS 0 messages go first.
                let mut freed = 0;
                while over(&inner) && inner.maybe_qos0 {
                    let Some(at) = inner.queue.iter().position(|q| q.qos == QoS::AtMostOnce) else {
                        // Not again until a QoS 0 entry is queued: a persistent session's
                        // queue beyond its bound would be walked for every message.
                        inner.maybe_qos0 = false;
                        break;
                    };
                    if let Some(q) = inner.queue.remove(at) {
                        inner.bytes -= q.weight;
                        freed += q.weight;
                        evicted += 1;
                    }
                }
                self.release(freed);
                // Still over: QoS 0 is dropped; QoS 1/2 is kept beyond the bound, up to
                // the hub budget, for a persistent session (its promise is to keep them),
                // and refused for a clean one, which is told (0x97) that it does not keep up.
                let keep_over_bound =
                    entry.qos != QoS::AtMostOnce && inner.expiry_secs > 0 && !inner.ephemeral;
                if over(&inner) && !keep_over_bound {
                    if entry.qos != QoS::AtMostOnce
                        && let Some(conn) = &inner.conn
                    {
                        // The consumer does not keep up: tell it (DESIGN.md, memory).
                        conn.kick(KickReason::QuotaExceeded);
                    }
                    Some(DropReason::QueueFull)
                } else {
                    // Beyond the bound, an entry the store can give back is spilled: only a
                    // stub stays in memory, and only the stub is reserved in the budget. Not
                    // a shared subscription's (it may move to another member, which needs
                    // the message itself), so never a `reserved` one.
                    let spill = over(&inner)
                        && self.spills
                        && inner.journaled
                        && entry.shared.is_none()
                        && !reserved;
                    let (fits, mark) = if spill {
                        let mark = self.reserve_stub();
                        (mark.is_some(), mark)
                    } else {
                        (reserved || self.try_reserve(weight), None)
                    };
                    if !fits {
                        if entry.qos != QoS::AtMostOnce
                            && over(&inner)
                            && let Some(conn) = &inner.conn
                        {
                            // A persistent session past its bound has used up the hub budget.
                            conn.kick(KickReason::QuotaExceeded);
                        }
                        drop(inner);
                        self.metrics.dropped(DropReason::QueueFull, evicted);
                        self.metrics.dropped(DropReason::HubBudget, 1);
                        return entry.message_id;
                    }
                    let expires_at = entry.expires_at;
                    entry.entry = None;
                    if inner.journaled {
                        self.journal_entry(&session.client_id, &mut entry, now);
                    }
                    match (mark, entry.message_id) {
                        (Some(mark), Some(id)) => self.spill(&mut entry, id, mark),
                        // A journaled entry always has its message's id; should one not, it
                        // stays in memory, reserved as such.
                        (Some(_), None) => self.reserve(weight),
                        (None, _) => {}
                    }
                    let message_id = entry.message_id;
                    inner.bytes += entry.weight;
                    inner.maybe_qos0 |= entry.qos == QoS::AtMostOnce;
                    inner.queue.push_back(entry);
                    match &inner.conn {
                        Some(conn) => conn.notify.notify_one(),
                        None => {
                            if expires_at.is_some() {
                                self.schedule_purge(session, &mut inner);
                            }
                        }
                    }
                    drop(inner);
                    self.metrics.dropped(DropReason::QueueFull, evicted);
                    return message_id;
                }
            }
        };
        self.metrics.dropped(DropReason::QueueFull, evicted);
        if reserved {
            self.release(weight);
        }
        if let Some(reason) = dropped {
            self.metrics.dropped(reason, 1);
        }
        entry.message_id
    }

    fn publish_will(&self, stored: StoredWill, from: &Arc<SessionState>, now: Instant) {
        let StoredWill { will, weight } = stored;
        self.release(weight);
        let message = Arc::new(will.message);
        if message.retain {
            // A will that cannot be retained (budget) is still delivered.
            let _ = self.store_retained(&message, now);
        }
        self.route(&message, Some(from), now);
        self.metrics.received.increment(1);
    }

    // ---- time, administration, stats ----------------------------------------------------

    pub(crate) fn tick(&self, now: Instant) {
        let due: Vec<(TimerKey, TimerKind)> = {
            let mut timers = self.timers.lock();
            let mut due = Vec::new();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove_entry());
            }
            due
        };
        for (key, kind) in due {
            match kind {
                TimerKind::Will { client, generation } => {
                    self.fire_will(&client, generation, key, now)
                }
                TimerKind::Expiry { client, generation } => {
                    self.fire_expiry(&client, generation, now)
                }
                TimerKind::Purge { client } => self.fire_purge(&client, key, now),
                TimerKind::Retained { topic } => self.fire_retained(&topic, now),
            }
        }
        self.update_gauges();
    }

    fn session(&self, client: &ClientId) -> Option<Arc<SessionState>> {
        self.sessions.lock().get(client).cloned()
    }

    fn fire_will(&self, client: &ClientId, generation: u64, key: TimerKey, now: Instant) {
        let Some(state) = self.session(client) else {
            return;
        };
        let will = {
            let mut inner = state.inner.lock();
            if inner.generation != generation || inner.conn.is_some() || inner.ended {
                return;
            }
            if inner.will_timer == Some(key) {
                inner.will_timer = None;
            }
            if inner.journaled && inner.will.is_some() {
                let hub = self.id;
                self.record(|| JournalOp::WillCleared {
                    hub,
                    client: state.client_id.clone(),
                });
            }
            inner.will.take()
        };
        if let Some(w) = will {
            self.publish_will(w, &state, now);
        }
    }

    fn fire_expiry(&self, client: &ClientId, generation: u64, now: Instant) {
        let ended = {
            let mut registry = self.sessions.lock();
            let Some(state) = registry.get(client).cloned() else {
                return;
            };
            {
                let inner = state.inner.lock();
                if inner.generation != generation
                    || inner.conn.is_some()
                    || inner.ended
                    || inner.expires_at.is_none_or(|at| at > now)
                {
                    return;
                }
            }
            self.end_session_locked(&mut registry, &state, None)
        };
        self.finish_ended(ended, now);
    }

    fn fire_purge(&self, client: &ClientId, key: TimerKey, now: Instant) {
        let Some(state) = self.session(client) else {
            return;
        };
        let mut inner = state.inner.lock();
        if inner.purge_timer == Some(key) {
            inner.purge_timer = None;
        }
        if inner.ended || inner.conn.is_some() {
            return;
        }
        let (mut freed, mut count) = (0, 0);
        inner.queue.retain(|q| {
            let keep = !q.expired(now);
            if !keep {
                freed += q.weight;
                count += 1;
                self.journal_unqueue(&state.client_id, q);
            }
            keep
        });
        inner.bytes -= freed;
        self.release(freed);
        if count > 0 {
            self.metrics.dropped(DropReason::Expired, count);
        }
        self.schedule_purge(&state, &mut inner);
    }

    fn fire_retained(&self, topic: &TopicName, now: Instant) {
        let mut store = self.retained.write();
        let expired = store
            .get(topic.as_str())
            .is_some_and(|r| r.expires_at.is_some_and(|at| at <= now));
        if expired && let Some(old) = store.remove(topic.as_str()) {
            let hub = self.id;
            self.record(|| JournalOp::RetainClear {
                hub,
                topic: topic.clone(),
            });
            self.release(old.weight);
        }
    }

    /// Kicks every live connection with `reason`; the sessions stay.
    pub(crate) fn kick_all(&self, reason: KickReason) {
        let registry = self.sessions.lock();
        for state in registry.sessions() {
            if let Some(conn) = &state.inner.lock().conn {
                conn.kick(reason);
            }
        }
    }

    /// Ends every session (kicking live ones with `reason`) and drops every retained
    /// message: the hub is being removed. Wills are not published.
    pub(crate) fn remove_all(&self, reason: KickReason) {
        {
            let mut registry = self.sessions.lock();
            let states: Vec<Arc<SessionState>> = registry.sessions().cloned().collect();
            for state in states {
                let ended = self.end_session_locked(&mut registry, &state, Some(reason));
                if let Some((w, _)) = ended.will {
                    self.release(w.weight);
                }
                for q in ended.shared {
                    self.release(q.weight);
                }
            }
        }
        let freed = self.retained.write().clear();
        self.release(freed);
        let hub = self.id;
        self.record(|| JournalOp::HubCleared { hub });
        self.timers.lock().clear();
        self.update_gauges();
    }

    /// The gauges that cost one lock each (every tick); the queued and inflight ones walk
    /// every session and are refreshed by [`Hub::update_session_gauges`].
    pub(crate) fn update_gauges(&self) {
        let sessions = self.sessions.lock().len();
        let subscriptions = self.subs.read().len();
        let (retained, retained_bytes) = {
            let store = self.retained.read();
            (store.len(), store.bytes())
        };
        let m = &self.metrics;
        m.sessions.set(sessions as f64);
        m.connected
            .set(self.connected.load(Ordering::Acquire) as f64);
        m.subscriptions.set(subscriptions as f64);
        m.retained.set(retained as f64);
        m.retained_bytes.set(retained_bytes as f64);
        m.budget
            .set(self.budget_used.load(Ordering::Acquire) as f64);
        m.budget_limit
            .set(self.budget_bytes.load(Ordering::Relaxed) as f64);
    }

    /// `iothub_queued_messages` and `iothub_inflight_messages`: a walk over the sessions.
    pub(crate) fn update_session_gauges(&self) {
        let (queued, inflight) = self.session_totals();
        self.metrics.queued.set(queued as f64);
        self.metrics.inflight.set(inflight as f64);
    }

    pub(crate) fn stats(&self) -> HubStats {
        let sessions = self.sessions.lock().len();
        let subscriptions = self.subs.read().len();
        let (retained_messages, retained_bytes) = {
            let store = self.retained.read();
            (store.len(), store.bytes())
        };
        let (queued_messages, inflight_messages) = self.session_totals();
        HubStats {
            sessions,
            connected: self.connected.load(Ordering::Acquire),
            subscriptions,
            retained_messages,
            retained_bytes,
            queued_messages,
            inflight_messages,
            budget_used_bytes: self.budget_used.load(Ordering::Acquire),
            dropped: self.metrics.dropped_counts(),
        }
    }

    #[cfg(test)]
    pub(crate) fn pending_timers(&self) -> usize {
        self.timers.lock().len()
    }

    // ---- used by the session handle -----------------------------------------------------

    pub(crate) fn subs(&self) -> &RwLock<SubTrie<SubEntry>> {
        &self.subs
    }

    pub(crate) fn retained(&self) -> &RwLock<RetainedStore> {
        &self.retained
    }
}

/// Whether a shared-subscription message may go to another member of its group. A QoS 2
/// message whose delivery has begun is completed with the member it was sent to when that
/// member reconnects, and never sent to another member, even when the member's session
/// ends [MQTT-4.8.2-4, MQTT-4.8.2-5]. Queued messages and sent QoS 1 messages may move
/// (MQTT 5 §4.8.2 allows it as soon as the connection is lost).
fn may_move_to_another_member(q: &Queued, sent: bool) -> bool {
    !(sent && q.qos == QoS::ExactlyOnce)
}
