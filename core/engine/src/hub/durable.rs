//! The hub's side of durability: reporting changes to the journal (`crate::journal`) and
//! rebuilding state from what a store read back ([`Hub::restore`]).
//!
//! Operations are recorded under the same locks as the change they describe (the retained
//! store's, or the session's), so the journal's order is the order the changes happened
//! in for any one session or topic. The ticket of the last operation recorded on this
//! thread is kept in a thread-local, so a `Session` call learns what it must wait for
//! without threading tickets through routing.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iothub_model::{Message, QoS};

use super::{Hub, TimerKind};
use crate::journal::{
    EntryId, JournalOp, LoadError, MessageId, RestoreStats, RestoredEntry, RestoredHub,
    RestoredInflight, SessionOwner, SubscriptionOptions, WILL_ON_CLOSE, WallMs,
};
use crate::route_tap::ROUTE_CLIENT_PREFIX;
use crate::state::{
    Body, Conn, Inflight, InflightState, Inner, Owner, Queued, SessionFilters, SessionState,
    StoredWill, SubEntry, SubOptions,
};

thread_local! {
    /// The highest ticket recorded on this thread since the last `take_ticket`.
    static TICKET: Cell<u64> = const { Cell::new(0) };
}

/// The highest ticket recorded on this thread since the last call (0: none).
pub(crate) fn take_ticket() -> u64 {
    TICKET.with(|t| t.replace(0))
}

pub(crate) fn wall_ms(t: SystemTime) -> WallMs {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An open journal group: the operations recorded while it lives are durable together.
pub(crate) struct JournalGroup<'a> {
    journal: &'a dyn crate::journal::Journal,
    start: u64,
}

impl Drop for JournalGroup<'_> {
    fn drop(&mut self) {
        self.journal.end_group(self.start);
    }
}

impl From<SubOptions> for SubscriptionOptions {
    fn from(o: SubOptions) -> Self {
        Self {
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            subscription_id: o.subscription_id,
        }
    }
}

impl From<SubscriptionOptions> for SubOptions {
    fn from(o: SubscriptionOptions) -> Self {
        Self {
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            subscription_id: o.subscription_id,
        }
    }
}

impl Hub {
    /// Reads a spilled entry's message back from the journal.
    pub(crate) fn load_message(&self, id: MessageId) -> Result<Arc<Message>, LoadError> {
        match &self.journal {
            Some(journal) => journal.load(id),
            None => Err(LoadError::Unsupported(id)),
        }
    }

    /// Whether a journal is attached.
    pub(crate) fn journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// Records `op` (built only when a journal is attached) and remembers its ticket.
    pub(crate) fn record(&self, op: impl FnOnce() -> JournalOp) {
        if let Some(journal) = &self.journal {
            let ticket = journal.record(op());
            TICKET.with(|t| t.set(t.get().max(ticket)));
        }
    }

    /// Opens a journal group (see [`crate::Journal::begin_group`]), closed when the guard
    /// drops; `None` without a journal.
    pub(crate) fn journal_group(&self) -> Option<JournalGroup<'_>> {
        self.journal.as_deref().map(|journal| JournalGroup {
            journal,
            start: journal.begin_group(),
        })
    }

    /// The durable-ticket watch of the journal, if any.
    pub(crate) fn durability(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.journal.as_ref().map(|j| j.durable())
    }

    pub(crate) fn next_journal_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure the ids handed out from now on are above `next`.
    pub(crate) fn reserve_ids(&self, next: u64) {
        self.ids.fetch_max(next, Ordering::Relaxed);
    }

    /// `at` (an instant of the engine's clock) as wall-clock milliseconds.
    pub(crate) fn wall_of(&self, at: Instant, now: Instant) -> WallMs {
        let wall = wall_ms(self.wall_now());
        if at >= now {
            wall.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
        } else {
            wall.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
        }
    }

    /// Wall-clock milliseconds as an instant of the engine's clock.
    pub(crate) fn instant_of(&self, wall: WallMs, now: Instant) -> Instant {
        let here = wall_ms(self.wall_now());
        if wall >= here {
            now + Duration::from_millis(wall - here)
        } else {
            now.checked_sub(Duration::from_millis(here - wall))
                .unwrap_or(now)
        }
    }

    /// Whether a session with this expiry and kind is journaled. Route taps are journaled
    /// like clients' sessions: a message acknowledged to its publisher is in the tap's
    /// durable queue, so a crash does not lose it before the route took it.
    pub(crate) fn persistent(&self, expiry_secs: u32, ephemeral: bool) -> bool {
        self.journaling() && expiry_secs > 0 && !ephemeral
    }

    /// Records that `inner` (of `state`) is connected, and switches its journaling on or
    /// off to match `persistent`. A session that becomes journaled while it holds state
    /// (a connection with another expiry took it over) writes that state too. One that holds
    /// spilled entries stays journaled (with its new expiry) until it ends: the store must
    /// keep their messages until they are read back.
    pub(crate) fn journal_session_up(
        &self,
        state: &SessionState,
        inner: &mut Inner,
        persistent: bool,
    ) {
        let hub = self.id;
        let client = &state.client_id;
        let holds_spilled = inner.journaled && inner.queue.iter().any(Queued::is_spilled);
        if !persistent && !holds_spilled {
            if inner.journaled {
                inner.journaled = false;
                self.record(|| JournalOp::SessionEnd {
                    hub,
                    client: client.clone(),
                });
            }
            return;
        }
        let owner = match state.owner {
            Owner::Device(d) => SessionOwner::Device(d),
            Owner::Anonymous => SessionOwner::Anonymous,
            Owner::Route => SessionOwner::Route,
        };
        self.record(|| JournalOp::SessionUp {
            hub,
            client: client.clone(),
            owner,
            expiry_secs: inner.expiry_secs,
        });
        // The will of the connection (SessionUp cleared the previous one): a crash closes the
        // connection without DISCONNECT, so the restore publishes it.
        if let Some(w) = &inner.will {
            self.record(|| JournalOp::WillPending {
                hub,
                client: client.clone(),
                will: w.will.clone(),
                due: WILL_ON_CLOSE,
            });
        }
        if inner.journaled {
            return;
        }
        inner.journaled = true;
        for (filter, opts) in &inner.subscriptions {
            self.record(|| JournalOp::Subscribe {
                hub,
                client: client.clone(),
                filter: filter.clone(),
                options: (*opts).into(),
            });
        }
        let now = self.now();
        // Messages are written anew: ids these entries carry may name records nothing
        // references any more.
        let mut queue = std::mem::take(&mut inner.queue);
        for q in queue.iter_mut() {
            q.message_id = None;
            self.journal_entry(client, q, now);
        }
        inner.queue = queue;
        let mut ids: Vec<(u64, u16)> = inner.inflight.iter().map(|(id, f)| (f.seq, *id)).collect();
        ids.sort_unstable();
        for (_, id) in ids {
            if let Some(f) = inner.inflight.get_mut(&id) {
                match &mut f.state {
                    InflightState::Sent(q) => {
                        q.message_id = None;
                        self.journal_entry(client, q, now);
                        if let Some(entry) = q.entry {
                            self.record(|| JournalOp::Sent {
                                hub,
                                client: client.clone(),
                                entry,
                                packet_id: id,
                            });
                        }
                    }
                    InflightState::AwaitingComp => self.record(|| JournalOp::Received {
                        hub,
                        client: client.clone(),
                        packet_id: id,
                    }),
                }
            }
        }
        for id in &inner.inbound_qos2 {
            self.record(|| JournalOp::InboundQos2 {
                hub,
                client: client.clone(),
                packet_id: *id,
            });
        }
    }

    /// Writes `q` (queued for `client`, a journaled session) to the journal: its message
    /// once, then the entry. QoS 0 entries are never journaled.
    pub(crate) fn journal_entry(
        &self,
        client: &iothub_model::ClientId,
        q: &mut Queued,
        now: Instant,
    ) {
        if !self.journaling() || q.qos == QoS::AtMostOnce {
            q.entry = None;
            return;
        }
        let hub = self.id;
        let message_id = match (q.message_id, q.message()) {
            (Some(id), _) => id,
            // A spilled entry always has its message's id; without one it is not journaled.
            (None, None) => {
                q.entry = None;
                return;
            }
            (None, Some(message)) => {
                let id = MessageId(self.next_journal_id());
                self.record(|| JournalOp::Message {
                    id,
                    hub,
                    message: message.clone(),
                });
                q.message_id = Some(id);
                id
            }
        };
        let entry = EntryId(self.next_journal_id());
        q.entry = Some(entry);
        self.record(|| JournalOp::Queue {
            hub,
            client: client.clone(),
            entry,
            message: message_id,
            qos: q.qos,
            retain: q.retain,
            subscription_ids: q.subscription_ids.clone(),
            expires_at: q.expires_at.map(|at| self.wall_of(at, now)),
        });
    }

    /// Records that a journaled entry left `client`'s queue unsent.
    pub(crate) fn journal_unqueue(&self, client: &iothub_model::ClientId, q: &Queued) {
        if let Some(entry) = q.entry {
            let hub = self.id;
            self.record(|| JournalOp::Unqueue {
                hub,
                client: client.clone(),
                entry,
            });
        }
    }

    /// Rebuilds the hub's durable state from `restored` (at startup, before any listener
    /// is open). Sessions come back offline, with their subscriptions, queues, inflight
    /// exchanges (resent with the same packet ids), inbound QoS 2 ids and pending will; an
    /// expired session or message is not restored, nor a session whose owner can no longer
    /// connect here (device gone or moved, anonymous clients no longer admitted), nor a
    /// subscription its owner's filters now refuse. What is not restored is recorded as
    /// gone, so the store forgets it too. The budget is charged, even beyond its limit:
    /// what was acknowledged is kept.
    pub(crate) fn restore(&self, restored: RestoredHub, stats: &mut RestoreStats) {
        let now = self.now();
        let hub = self.id;
        let config = self.config();
        let max_messages = self.queue_max_messages.load(Ordering::Relaxed);
        let max_bytes = self.queue_max_bytes.load(Ordering::Relaxed);
        {
            let mut store = self.retained.write();
            for r in restored.retained {
                let expires_at = r.expires_at.map(|w| self.instant_of(w, now));
                if expires_at.is_some_and(|at| at <= now) {
                    let topic = r.message.topic.clone();
                    self.record(|| JournalOp::RetainClear { hub, topic });
                    continue;
                }
                let weight = r.message.weight() as u64;
                self.budget_used.fetch_add(weight, Ordering::AcqRel);
                let timer = expires_at.map(|at| {
                    self.schedule(
                        at,
                        TimerKind::Retained {
                            topic: r.message.topic.clone(),
                        },
                    )
                });
                let topic = r.message.topic.as_str().to_string();
                let old = store.set(
                    &topic,
                    crate::retained::Retained {
                        message: r.message,
                        weight,
                        expires_at,
                        timer,
                        id: Some(r.id),
                    },
                );
                if let Some(old) = old {
                    self.release(old.weight);
                    self.cancel([old.timer]);
                }
                stats.retained += 1;
            }
        }
        let mut registry = self.sessions.lock();
        let mut subs = self.subs.write();
        for s in restored.sessions {
            let client = s.client.clone();
            let end = || JournalOp::SessionEnd {
                hub,
                client: client.clone(),
            };
            let (owner, filters) = match s.owner {
                SessionOwner::Device(d) => {
                    let entry = self.directory.read().get(&d).cloned();
                    match entry {
                        Some(e) if e.hub == hub && e.client_id == s.client => {
                            (Owner::Device(d), e.filters.clone())
                        }
                        _ => {
                            self.record(end);
                            stats.sessions_dropped += 1;
                            continue;
                        }
                    }
                }
                // A tap is restored offline whatever the hub's admission settings (taps are
                // admitted on any hub); its route resumes it (`connect_route(.., true)`) or,
                // deleted, ends it.
                SessionOwner::Route if s.client.as_str().starts_with(ROUTE_CLIENT_PREFIX) => {
                    (Owner::Route, SessionFilters::default())
                }
                SessionOwner::Route => {
                    self.record(end);
                    stats.sessions_dropped += 1;
                    continue;
                }
                SessionOwner::Anonymous => {
                    let filters = config
                        .admits_anonymous()
                        .then(|| config.anonymous_filters_for(hub, &s.client).ok())
                        .flatten();
                    match filters {
                        Some(f) => (Owner::Anonymous, f),
                        None => {
                            self.record(end);
                            stats.sessions_dropped += 1;
                            continue;
                        }
                    }
                }
            };
            let expiry = s.expiry_secs.min(config.limits.max_session_expiry_secs);
            if expiry == 0 || registry.get(&s.client).is_some() {
                self.record(end);
                stats.sessions_dropped += 1;
                continue;
            }
            let down_at = s
                .disconnected_at
                .unwrap_or_else(|| wall_ms(self.wall_now()));
            let expires_at = (expiry != u32::MAX).then(|| {
                self.instant_of(
                    down_at.saturating_add(u64::from(expiry).saturating_mul(1000)),
                    now,
                )
            });
            if expires_at.is_some_and(|at| at <= now) {
                self.record(end);
                stats.sessions_dropped += 1;
                continue;
            }
            if s.disconnected_at.is_none() {
                self.record(|| JournalOp::SessionDown {
                    hub,
                    client: client.clone(),
                    at: down_at,
                    expiry_secs: expiry,
                });
            }
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            let state = Arc::new(SessionState::new(
                s.client.clone(),
                owner,
                generation,
                Arc::new(Conn::default()),
            ));
            state
                .connected
                .store(false, std::sync::atomic::Ordering::Release);
            {
                let mut inner = state.inner.lock();
                inner.conn = None;
                inner.expiry_secs = expiry;
                inner.expires_at = expires_at;
                inner.journaled = true;
                inner.filters = SessionFilters::clone(&filters);
                for (filter, options) in s.subscriptions {
                    match filters.subscription_guard(&filter.filter) {
                        Ok(guard) => {
                            let opts: SubOptions = options.into();
                            subs.insert(
                                &filter,
                                s.client.clone(),
                                SubEntry {
                                    session: state.clone(),
                                    opts,
                                    guard,
                                },
                            );
                            inner.subscriptions.insert(filter, opts);
                        }
                        Err(()) => self.record(|| JournalOp::Unsubscribe {
                            hub,
                            client: client.clone(),
                            filter,
                        }),
                    }
                }
                let entry_of = |e: RestoredEntry| Queued {
                    weight: e.message.weight() as u64,
                    body: Body::Loaded(e.message),
                    qos: e.qos,
                    retain: e.retain,
                    subscription_ids: e.subscription_ids,
                    expires_at: e.expires_at.map(|w| self.instant_of(w, now)),
                    shared: None,
                    message_id: Some(e.message_id),
                    entry: Some(e.entry),
                };
                let mut queue = VecDeque::with_capacity(s.queue.len());
                for e in s.queue {
                    let mut q = entry_of(e);
                    // Beyond the session's bound, what the store can give back again stays
                    // there (crate docs, "Queue policy").
                    if self.spills
                        && (queue.len() >= max_messages || inner.bytes + q.weight > max_bytes)
                        && let Some(id) = q.message_id
                        && let Some(mark) = self.reserve_stub()
                    {
                        self.spill(&mut q, id, mark);
                        stats.spilled += 1;
                    }
                    inner.bytes += q.weight;
                    self.budget_used.fetch_add(q.weight, Ordering::AcqRel);
                    queue.push_back(q);
                    stats.queued += 1;
                }
                inner.queue = queue;
                let mut last_id = 0;
                for (packet_id, f) in s.inflight {
                    let state = match f {
                        RestoredInflight::Sent(e) => {
                            let q = entry_of(e);
                            inner.bytes += q.weight;
                            self.budget_used.fetch_add(q.weight, Ordering::AcqRel);
                            InflightState::Sent(q)
                        }
                        RestoredInflight::AwaitingComp => InflightState::AwaitingComp,
                    };
                    let seq = inner.next_seq;
                    inner.next_seq += 1;
                    inner.inflight.insert(packet_id, Inflight { seq, state });
                    last_id = packet_id;
                    stats.inflight += 1;
                }
                inner.next_packet_id = if last_id == u16::MAX { 1 } else { last_id + 1 };
                inner.inbound_qos2 = s.inbound_qos2.into_iter().collect();
                if let Some((will, due)) = s.will {
                    // Armed at CONNECT and the session was connected at the crash: the
                    // connection closed without DISCONNECT, so the will goes out after its
                    // delay counted from the restart (or at session end, the expiry timer).
                    let due = if s.disconnected_at.is_none() || due == WILL_ON_CLOSE {
                        let due =
                            down_at.saturating_add(u64::from(will.delay_secs).saturating_mul(1000));
                        self.record(|| JournalOp::WillPending {
                            hub,
                            client: client.clone(),
                            will: will.clone(),
                            due,
                        });
                        due
                    } else {
                        due
                    };
                    let weight = will.message.weight() as u64;
                    self.budget_used.fetch_add(weight, Ordering::AcqRel);
                    inner.will = Some(StoredWill { will, weight });
                    inner.will_timer = Some(self.schedule(
                        self.instant_of(due, now),
                        TimerKind::Will {
                            client: s.client.clone(),
                            generation,
                        },
                    ));
                }
                if let Some(at) = expires_at {
                    inner.expiry_timer = Some(self.schedule(
                        at,
                        TimerKind::Expiry {
                            client: s.client.clone(),
                            generation,
                        },
                    ));
                }
                self.schedule_purge(&state, &mut inner);
            }
            registry.insert(state);
            stats.sessions += 1;
        }
        drop(subs);
        drop(registry);
        self.update_gauges();
    }
}
