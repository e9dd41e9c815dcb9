//! The durable state as the log describes it: [`DurableState::apply`] folds operations in
//! log order, remembering for every piece of live state the sequence number of each record
//! it still needs. Replay at open builds it to hand the engine its [`RestoredHub`]s; the
//! writer keeps it current as it appends, so compaction knows which records are live
//! ([`DurableState::live_seqs`]).
//!
//! Application is lenient by design: an operation naming something unknown (a message or
//! session whose records compaction dropped, or that a skipped corrupt record held) is
//! ignored, and an operation on a session seen before its `SessionUp` record (compaction
//! kept a subscription older than the latest `SessionUp`) creates a placeholder that the
//! `SessionUp` completes. [`DurableState::finish_replay`] drops what stayed incomplete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use iothub_engine::{
    EntryId, JournalOp, MessageId, RestoredEntry, RestoredHub, RestoredInflight, RestoredRetained,
    RestoredSession, SessionOwner, SubscriptionOptions, WallMs, Will,
};
use iothub_model::{ClientId, HubId, Message, QoS, SubscriptionFilter, TopicName};

struct MessageRec {
    seq: u64,
    topic: TopicName,
    /// The message itself, kept while replaying (the engine gets it back); the writer's
    /// state drops it ([`DurableState::drop_payloads`]): the engine holds what is live.
    message: Option<Arc<Message>>,
    refs: u32,
    /// Unreferenced at the writer's last look at the live state
    /// ([`DurableState::mark_unreferenced`]): out of the live set from the next look on,
    /// unless referenced again meanwhile. An unreferenced message gets that grace because a
    /// message routed to several sessions is referenced by queue records written one after
    /// the other, and the first may be acknowledged before the next is written.
    marked: bool,
}

struct RetainedRec {
    seq: u64,
    message: MessageId,
    expires_at: Option<WallMs>,
}

#[derive(Clone)]
struct EntryRec {
    seq: u64,
    message: MessageId,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
    expires_at: Option<WallMs>,
}

enum InflightRec {
    Sent {
        seq: u64,
        entry_id: EntryId,
        entry: EntryRec,
    },
    AwaitingComp {
        seq: u64,
    },
}

impl InflightRec {
    fn seq(&self) -> u64 {
        match self {
            Self::Sent { seq, .. } | Self::AwaitingComp { seq } => *seq,
        }
    }
}

#[derive(Default)]
struct SessionRec {
    /// `SessionUp`: seq, owner, expiry. `None`: a placeholder (see the module docs).
    up: Option<(u64, SessionOwner, u32)>,
    /// `SessionDown`: seq, when, expiry.
    down: Option<(u64, WallMs, u32)>,
    subscriptions: HashMap<SubscriptionFilter, (u64, SubscriptionOptions)>,
    /// By entry id, which is queue order (ids increase as entries are queued).
    queue: BTreeMap<EntryId, EntryRec>,
    inflight: HashMap<u16, InflightRec>,
    inbound: HashMap<u16, u64>,
    will: Option<(u64, Will, WallMs)>,
}

#[derive(Default)]
struct HubRec {
    retained: HashMap<TopicName, RetainedRec>,
    sessions: HashMap<ClientId, SessionRec>,
}

/// The live state of a log, with the sequence numbers of the records that hold it.
pub struct DurableState {
    messages: HashMap<MessageId, MessageRec>,
    hubs: HashMap<HubId, HubRec>,
    /// The highest message or entry id ever seen, live or not: new ids start above it.
    max_id: u64,
    keep_payloads: bool,
}

impl Default for DurableState {
    fn default() -> Self {
        Self {
            messages: HashMap::new(),
            hubs: HashMap::new(),
            max_id: 0,
            keep_payloads: true,
        }
    }
}

/// Counts of what a state holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub retained: usize,
    pub sessions: usize,
    pub messages: usize,
}

impl DurableState {
    /// The first id the engine may hand out.
    pub fn next_id(&self) -> u64 {
        self.max_id + 1
    }

    /// Whether message `id` is still known (referenced, or unreferenced since the last
    /// compaction).
    pub fn has_message(&self, id: MessageId) -> bool {
        self.messages.contains_key(&id)
    }

    pub fn counts(&self) -> StateCounts {
        StateCounts {
            retained: self.hubs.values().map(|h| h.retained.len()).sum(),
            sessions: self.hubs.values().map(|h| h.sessions.len()).sum(),
            messages: self.messages.values().filter(|m| m.refs > 0).count(),
        }
    }

    /// From now on messages are only tracked, not kept (the writer's state after the
    /// restore: the engine holds the live ones).
    pub fn drop_payloads(&mut self) {
        self.keep_payloads = false;
        for m in self.messages.values_mut() {
            m.message = None;
        }
    }

    /// When a compaction keeps [`DurableState::live_seqs`]: forgets the messages it leaves
    /// out (unreferenced and marked), so that the state matches the compacted log.
    pub fn forget_unreferenced(&mut self) {
        self.messages.retain(|_, m| m.refs > 0 || !m.marked);
    }

    /// Marks the messages unreferenced now: the next [`DurableState::live_seqs`] leaves out
    /// those still unreferenced then. Called at each look at the live state, whether it
    /// compacts or not: a message replaced or acknowledged must not count as live until
    /// a compaction happens (retained messages replaced over and over then kept the log from
    /// ever reaching twice the live records, and from compacting).
    pub fn mark_unreferenced(&mut self) {
        for m in self.messages.values_mut() {
            m.marked = m.refs == 0;
        }
    }

    fn unref(messages: &mut HashMap<MessageId, MessageRec>, id: MessageId) {
        if let Some(m) = messages.get_mut(&id) {
            m.refs = m.refs.saturating_sub(1);
        }
    }

    fn addref(messages: &mut HashMap<MessageId, MessageRec>, id: MessageId) -> bool {
        match messages.get_mut(&id) {
            Some(m) => {
                m.refs += 1;
                m.marked = false;
                true
            }
            None => false,
        }
    }

    fn drop_session(messages: &mut HashMap<MessageId, MessageRec>, s: SessionRec) {
        for (_, e) in s.queue {
            Self::unref(messages, e.message);
        }
        for (_, f) in s.inflight {
            if let InflightRec::Sent { entry, .. } = f {
                Self::unref(messages, entry.message);
            }
        }
    }

    /// Folds in the operation stored under `seq`.
    pub fn apply(&mut self, seq: u64, op: &JournalOp) {
        let messages = &mut self.messages;
        match op {
            JournalOp::Message { id, message, .. } => {
                self.max_id = self.max_id.max(id.0);
                messages.insert(
                    *id,
                    MessageRec {
                        seq,
                        topic: message.topic.clone(),
                        message: self.keep_payloads.then(|| message.clone()),
                        refs: 0,
                        marked: false,
                    },
                );
            }
            JournalOp::RetainSet {
                hub,
                message,
                expires_at,
            } => {
                let Some(topic) = messages.get(message).map(|m| m.topic.clone()) else {
                    return;
                };
                Self::addref(messages, *message);
                let old = self.hubs.entry(*hub).or_default().retained.insert(
                    topic,
                    RetainedRec {
                        seq,
                        message: *message,
                        expires_at: *expires_at,
                    },
                );
                if let Some(old) = old {
                    Self::unref(messages, old.message);
                }
            }
            JournalOp::RetainClear { hub, topic } => {
                if let Some(h) = self.hubs.get_mut(hub)
                    && let Some(old) = h.retained.remove(topic)
                {
                    Self::unref(messages, old.message);
                }
            }
            JournalOp::SessionUp {
                hub,
                client,
                owner,
                expiry_secs,
            } => {
                let sessions = &mut self.hubs.entry(*hub).or_default().sessions;
                let session = sessions.entry(client.clone()).or_default();
                if session.up.is_some_and(|(_, o, _)| o != *owner) {
                    let old = std::mem::take(session);
                    Self::drop_session(messages, old);
                }
                session.up = Some((seq, *owner, *expiry_secs));
                session.down = None;
                // A resumed session's pending will was published or cancelled.
                session.will = None;
            }
            JournalOp::SessionEnd { hub, client } => {
                if let Some(h) = self.hubs.get_mut(hub)
                    && let Some(old) = h.sessions.remove(client)
                {
                    Self::drop_session(messages, old);
                }
            }
            JournalOp::HubCleared { hub } => {
                if let Some(h) = self.hubs.remove(hub) {
                    for (_, r) in h.retained {
                        Self::unref(messages, r.message);
                    }
                    for (_, s) in h.sessions {
                        Self::drop_session(messages, s);
                    }
                }
            }
            JournalOp::SessionDown {
                hub,
                client,
                at,
                expiry_secs,
            } => {
                let s = Self::session(&mut self.hubs, *hub, client);
                s.down = Some((seq, *at, *expiry_secs));
            }
            JournalOp::Subscribe {
                hub,
                client,
                filter,
                options,
            } => {
                let s = Self::session(&mut self.hubs, *hub, client);
                s.subscriptions.insert(filter.clone(), (seq, *options));
            }
            JournalOp::Unsubscribe {
                hub,
                client,
                filter,
            } => {
                if let Some(s) = Self::existing(&mut self.hubs, *hub, client) {
                    s.subscriptions.remove(filter);
                }
            }
            JournalOp::Queue {
                hub,
                client,
                entry,
                message,
                qos,
                retain,
                subscription_ids,
                expires_at,
            } => {
                self.max_id = self.max_id.max(entry.0);
                if !Self::addref(messages, *message) {
                    return;
                }
                let s = Self::session(&mut self.hubs, *hub, client);
                let old = s.queue.insert(
                    *entry,
                    EntryRec {
                        seq,
                        message: *message,
                        qos: *qos,
                        retain: *retain,
                        subscription_ids: subscription_ids.clone(),
                        expires_at: *expires_at,
                    },
                );
                if let Some(old) = old {
                    Self::unref(messages, old.message);
                }
            }
            JournalOp::Unqueue { hub, client, entry } => {
                if let Some(s) = Self::existing(&mut self.hubs, *hub, client)
                    && let Some(old) = s.queue.remove(entry)
                {
                    Self::unref(messages, old.message);
                }
            }
            JournalOp::Sent {
                hub,
                client,
                entry,
                packet_id,
            } => {
                let Some(s) = Self::existing(&mut self.hubs, *hub, client) else {
                    return;
                };
                let Some(rec) = s.queue.remove(entry) else {
                    return;
                };
                let old = s.inflight.insert(
                    *packet_id,
                    InflightRec::Sent {
                        seq,
                        entry_id: *entry,
                        entry: rec,
                    },
                );
                if let Some(InflightRec::Sent { entry, .. }) = old {
                    Self::unref(messages, entry.message);
                }
            }
            JournalOp::Acked {
                hub,
                client,
                packet_id,
            } => {
                if let Some(s) = Self::existing(&mut self.hubs, *hub, client)
                    && let Some(InflightRec::Sent { entry, .. }) = s.inflight.remove(packet_id)
                {
                    Self::unref(messages, entry.message);
                }
            }
            JournalOp::Received {
                hub,
                client,
                packet_id,
            } => {
                let s = Self::session(&mut self.hubs, *hub, client);
                let old = s
                    .inflight
                    .insert(*packet_id, InflightRec::AwaitingComp { seq });
                if let Some(InflightRec::Sent { entry, .. }) = old {
                    Self::unref(messages, entry.message);
                }
            }
            JournalOp::InboundQos2 {
                hub,
                client,
                packet_id,
            } => {
                let s = Self::session(&mut self.hubs, *hub, client);
                s.inbound.insert(*packet_id, seq);
            }
            JournalOp::Released {
                hub,
                client,
                packet_id,
            } => {
                if let Some(s) = Self::existing(&mut self.hubs, *hub, client) {
                    s.inbound.remove(packet_id);
                }
            }
            JournalOp::WillPending {
                hub,
                client,
                will,
                due,
            } => {
                let s = Self::session(&mut self.hubs, *hub, client);
                s.will = Some((seq, will.clone(), *due));
            }
            JournalOp::WillCleared { hub, client } => {
                if let Some(s) = Self::existing(&mut self.hubs, *hub, client) {
                    s.will = None;
                }
            }
        }
    }

    /// The session, created as a placeholder if unknown.
    fn session<'a>(
        hubs: &'a mut HashMap<HubId, HubRec>,
        hub: HubId,
        client: &ClientId,
    ) -> &'a mut SessionRec {
        hubs.entry(hub)
            .or_default()
            .sessions
            .entry(client.clone())
            .or_default()
    }

    fn existing<'a>(
        hubs: &'a mut HashMap<HubId, HubRec>,
        hub: HubId,
        client: &ClientId,
    ) -> Option<&'a mut SessionRec> {
        hubs.get_mut(&hub)?.sessions.get_mut(client)
    }

    /// After the last record of a replay: drops sessions that never got their `SessionUp`
    /// (their records outlived it only through damage) and messages nothing references.
    pub fn finish_replay(&mut self) {
        for h in self.hubs.values_mut() {
            let orphans: Vec<ClientId> = h
                .sessions
                .iter()
                .filter(|(_, s)| s.up.is_none())
                .map(|(c, _)| c.clone())
                .collect();
            for c in orphans {
                if let Some(s) = h.sessions.remove(&c) {
                    Self::drop_session(&mut self.messages, s);
                }
            }
        }
        self.messages.retain(|_, m| m.refs > 0);
    }

    /// The sequence numbers of every record the current state needs.
    pub fn live_seqs(&self) -> HashSet<u64> {
        let mut live = HashSet::new();
        live.extend(
            self.messages
                .values()
                .filter(|m| m.refs > 0 || !m.marked)
                .map(|m| m.seq),
        );
        for h in self.hubs.values() {
            live.extend(h.retained.values().map(|r| r.seq));
            for s in h.sessions.values() {
                live.extend(s.up.map(|(seq, _, _)| seq));
                live.extend(s.down.map(|(seq, _, _)| seq));
                live.extend(s.subscriptions.values().map(|(seq, _)| *seq));
                live.extend(s.queue.values().map(|e| e.seq));
                for f in s.inflight.values() {
                    live.insert(f.seq());
                    if let InflightRec::Sent { entry, .. } = f {
                        live.insert(entry.seq);
                    }
                }
                live.extend(s.inbound.values());
                live.extend(s.will.as_ref().map(|(seq, _, _)| *seq));
            }
        }
        live
    }

    /// What the engine gets back, per hub.
    pub fn restored(&self) -> Vec<(HubId, RestoredHub)> {
        let message = |id: MessageId| self.messages.get(&id).and_then(|m| m.message.clone());
        let entry = |id: EntryId, e: &EntryRec| {
            message(e.message).map(|m| RestoredEntry {
                entry: id,
                message_id: e.message,
                message: m,
                qos: e.qos,
                retain: e.retain,
                subscription_ids: e.subscription_ids.clone(),
                expires_at: e.expires_at,
            })
        };
        let mut out = Vec::with_capacity(self.hubs.len());
        for (hub, h) in &self.hubs {
            let retained = h
                .retained
                .values()
                .filter_map(|r| {
                    message(r.message).map(|m| RestoredRetained {
                        id: r.message,
                        message: m,
                        expires_at: r.expires_at,
                    })
                })
                .collect();
            let sessions = h
                .sessions
                .iter()
                .filter_map(|(client, s)| {
                    let (_, owner, up_expiry) = s.up?;
                    let mut inflight: Vec<(u64, u16, RestoredInflight)> =
                        s.inflight
                            .iter()
                            .filter_map(|(id, f)| match f {
                                InflightRec::Sent {
                                    seq,
                                    entry_id,
                                    entry: e,
                                } => entry(*entry_id, e)
                                    .map(|e| (*seq, *id, RestoredInflight::Sent(e))),
                                InflightRec::AwaitingComp { seq } => {
                                    Some((*seq, *id, RestoredInflight::AwaitingComp))
                                }
                            })
                            .collect();
                    inflight.sort_by_key(|(seq, _, _)| *seq);
                    Some(RestoredSession {
                        client: client.clone(),
                        owner,
                        expiry_secs: s.down.map_or(up_expiry, |(_, _, e)| e),
                        disconnected_at: s.down.map(|(_, at, _)| at),
                        subscriptions: s
                            .subscriptions
                            .iter()
                            .map(|(f, (_, o))| (f.clone(), *o))
                            .collect(),
                        queue: s.queue.iter().filter_map(|(id, e)| entry(*id, e)).collect(),
                        inflight: inflight.into_iter().map(|(_, id, f)| (id, f)).collect(),
                        inbound_qos2: {
                            let mut ids: Vec<u16> = s.inbound.keys().copied().collect();
                            ids.sort_unstable();
                            ids
                        },
                        will: s.will.as_ref().map(|(_, w, due)| (w.clone(), *due)),
                    })
                })
                .collect();
            out.push((*hub, RestoredHub { retained, sessions }));
        }
        out
    }
}
