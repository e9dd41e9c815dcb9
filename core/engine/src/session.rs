//! [`Session`]: the handle one connection task holds, and the types of its operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use iothub_model::{ClientId, HubId, Message, QoS, SubscriptionFilter};
use parking_lot::MutexGuard;

use crate::engine::HubCaps;
use crate::events::{EventOutcome, HubEvent};
use crate::hub::{Hub, HubConfig, Traffic, take_ticket};
use crate::journal::{EntryId, JournalOp, MessageId};
use crate::metrics::DropReason;
use crate::state::{
    Body, Conn, Inflight, InflightState, Inner, Queued, SessionState, SubEntry, SubOptions,
};
use crate::trie::too_deep;
use tracing::warn;

/// Most spilled entries read back from the store per call (see `Session::load_spilled`).
const LOAD_BATCH: usize = 64;

/// The result of an accepted PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishAck {
    /// Routed. `matched = false` lets MQTT 5 PUBACK/PUBREC say 0x10 No matching subscribers.
    Delivered { matched: bool },
    /// A QoS 2 PUBLISH whose packet id still awaits PUBREL: not routed again; answer PUBREC
    /// 0x00 ([MQTT-4.3.3-9]).
    Duplicate,
}

/// Why a PUBLISH is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("payload larger than the hub accepts")]
    PayloadTooLarge,
    #[error("the hub does not support retained messages")]
    RetainNotSupported,
    #[error("the hub does not support this QoS")]
    QosNotSupported,
    #[error("not authorized to publish to this topic")]
    NotAuthorized,
    #[error("the hub's budget is exhausted")]
    QuotaExceeded,
    #[error("the packet id awaits PUBREL of a QoS 2 message")]
    PacketIdInUse,
    #[error("more QoS 2 messages awaiting PUBREL than the hub's receive maximum")]
    ReceiveMaximumExceeded,
}

impl PublishError {
    /// The `reason` label of `iothub_publish_refusals_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::PayloadTooLarge => "payload_too_large",
            Self::RetainNotSupported => "retain_not_supported",
            Self::QosNotSupported => "qos_not_supported",
            Self::NotAuthorized => "not_authorized",
            Self::QuotaExceeded => "quota_exceeded",
            Self::PacketIdInUse => "packet_id_in_use",
            Self::ReceiveMaximumExceeded => "receive_maximum_exceeded",
        }
    }
}

/// MQTT 5 Retain Handling (3.1.1 subscriptions use `SendAtSubscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe,
    SendIfNewSubscription,
    DoNotSend,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub filter: SubscriptionFilter,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    pub subscription_id: Option<u32>,
}

/// Why one filter of a SUBSCRIBE is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("not authorized to subscribe to this filter")]
    NotAuthorized,
    #[error("the hub does not support this QoS")]
    QosNotSupported,
    #[error("the hub does not support shared subscriptions")]
    SharedNotSupported,
    #[error("the hub does not support wildcard subscriptions")]
    WildcardNotSupported,
    #[error("the hub does not support subscription identifiers")]
    SubscriptionIdsNotSupported,
    #[error("quota exceeded")]
    QuotaExceeded,
}

impl SubscribeError {
    /// The `reason` label of `iothub_subscribe_refusals_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::NotAuthorized => "not_authorized",
            Self::QosNotSupported => "qos_not_supported",
            Self::SharedNotSupported => "shared_not_supported",
            Self::WildcardNotSupported => "wildcard_not_supported",
            Self::SubscriptionIdsNotSupported => "subscription_ids_not_supported",
            Self::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// How a connection ended, as the adapter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// DISCONNECT 0x00: the will is discarded [MQTT-3.1.2-10].
    Normal { session_expiry_secs: Option<u32> },
    /// MQTT 5 DISCONNECT 0x04: the will is published.
    WithWill { session_expiry_secs: Option<u32> },
    /// Network error, keep-alive timeout, protocol error, kicked: the will is published
    /// after its delay.
    Abnormal,
}

/// Why the engine ends a connection (server-sent DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Another connection with the same client id took the session over (0x8E).
    SessionTakenOver,
    /// The hub was removed or disabled (0x98).
    AdministrativeAction,
    /// The server is stopping (0x8B).
    ServerShuttingDown,
    /// The session's queue bound was reached by QoS 1/2 messages (0x97).
    QuotaExceeded,
}

/// One application message for the connection to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingPublish {
    /// Some for QoS 1/2.
    pub packet_id: Option<u16>,
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub message: Arc<Message>,
    /// Identifiers of every subscription of this session the message matched.
    pub subscription_ids: Vec<u32>,
    /// Message Expiry Interval left, in seconds, when the message had one [MQTT-3.3.2-6].
    pub message_expiry_remaining: Option<u32>,
}

/// Work for the connection task, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Publish(OutgoingPublish),
    /// Resend PUBREL for an outbound QoS 2 message (after reconnect).
    PubRel(u16),
    /// Close the connection with this reason; nothing follows.
    Disconnect(KickReason),
}

/// The session of one connection. Owned by that connection's task; not `Clone`.
/// Dropping it without [`Session::disconnect`] is `DisconnectKind::Abnormal`.
///
/// Once the connection is no longer the session's current one (taken over, hub removed),
/// every call is a no-op: `false`, an empty result or `Delivered { matched: false }`.
pub struct Session {
    hub: Arc<Hub>,
    /// The hub's settings this connection was admitted under (a change of caps kicks it).
    config: Arc<HubConfig>,
    state: Arc<SessionState>,
    conn: Arc<Conn>,
    generation: u64,
    client_id: ClientId,
    done: bool,
    /// The journal ticket the connection must see durable before it sends what it has
    /// written since (see [`Session::durable_ticket`]).
    ticket: AtomicU64,
}

impl Session {
    pub(crate) fn new(
        hub: Arc<Hub>,
        state: Arc<SessionState>,
        conn: Arc<Conn>,
        generation: u64,
        client_id: ClientId,
        config: Arc<HubConfig>,
    ) -> Self {
        Self {
            hub,
            config,
            state,
            conn,
            generation,
            client_id,
            done: false,
            ticket: AtomicU64::new(0),
        }
    }

    /// The journal ticket that must be durable before the connection sends anything it
    /// produced since the last call that recorded durable state: the PUBACK/PUBREC of a
    /// PUBLISH (retained message, queue entries of persistent subscribers, inbound QoS 2
    /// id), the PUBCOMP of a PUBREL, and an outbound QoS 2 PUBLISH whose packet id was just
    /// assigned, and the PUBREL that answers a PUBREC; from the start, the CONNACK (a
    /// persistent session's record and will). 0 when nothing was ever recorded. Compare with
    /// [`Session::durability`].
    pub fn durable_ticket(&self) -> u64 {
        self.ticket.load(Ordering::Acquire)
    }

    /// "Durable up to ticket N" of the hub's journal; `None` without a journal (nothing to
    /// wait for).
    pub fn durability(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.hub.durability()
    }

    /// Keeps the highest ticket recorded on this thread since `take_ticket` was last called.
    pub(crate) fn note_ticket(&self) {
        let t = take_ticket();
        if t > 0 {
            self.ticket.fetch_max(t, Ordering::AcqRel);
        }
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn hub(&self) -> HubId {
        self.hub.id
    }

    /// What the hub offers (the same as `Connected::caps`).
    pub fn caps(&self) -> HubCaps {
        self.config.caps
    }

    /// Raises a hub event on this session's hub (see `Engine::raise_event`).
    pub fn raise_event(&self, event: HubEvent) -> EventOutcome {
        self.hub.raise(event)
    }

    /// The connection's traffic counters: the hub's packets and bytes, and this client's
    /// messages for the metrics API (see [`Traffic`]). Take it once per connection and
    /// keep it until the connection's end.
    pub fn traffic(&self) -> Traffic {
        Traffic::new(self.hub.clone(), self.state.clone())
    }

    /// The session state, locked, if this connection still owns it.
    fn live(&self) -> Option<MutexGuard<'_, Inner>> {
        let inner = self.state.inner.lock();
        (inner.generation == self.generation && !inner.ended).then_some(inner)
    }

    /// An application message from this client. `packet_id` is Some for QoS 1/2.
    ///
    /// The message goes to every matching subscriber's queue before this returns; a slow
    /// subscriber never makes it wait. With `retain`, the message is stored as the topic's
    /// retained message, or an empty payload deletes it [MQTT-3.3.1-5..7]. Clients may not
    /// publish to `$SYS/..` or `$SCW/..` (hub events), nor to a topic their publish filter
    /// refuses: `NotAuthorized`.
    /// Every refusal is counted (`iothub_publish_refusals_total{reason}`).
    pub fn publish(
        &self,
        message: Message,
        packet_id: Option<u16>,
    ) -> Result<PublishAck, PublishError> {
        take_ticket();
        let result = self.publish_checked(message, packet_id);
        self.note_ticket();
        if let Err(e) = result {
            self.hub.metrics.publish_refused(e);
        }
        result
    }

    fn publish_checked(
        &self,
        message: Message,
        packet_id: Option<u16>,
    ) -> Result<PublishAck, PublishError> {
        let caps = &self.config.caps;
        if message.payload.len() > caps.max_payload_bytes as usize {
            return Err(PublishError::PayloadTooLarge);
        }
        if message.qos > caps.maximum_qos {
            return Err(PublishError::QosNotSupported);
        }
        if message.retain && !caps.retain_available {
            return Err(PublishError::RetainNotSupported);
        }
        if self.config.reserved_topic(&message.topic) {
            return Err(PublishError::NotAuthorized);
        }
        let qos2_id = match (message.qos, packet_id) {
            (QoS::ExactlyOnce, Some(id)) => Some(id),
            _ => None,
        };
        {
            let Some(inner) = self.live() else {
                return Ok(PublishAck::Delivered { matched: false });
            };
            if !inner.filters.allows_publish(message.topic.as_str()) {
                return Err(PublishError::NotAuthorized);
            }
            if let Some(id) = packet_id {
                if inner.inbound_qos2.contains(&id) {
                    // [MQTT-4.3.3-9]: the same QoS 2 message again; a QoS 1 message may
                    // not reuse an id still in use [MQTT-2.2.1-3].
                    return match qos2_id {
                        Some(_) => Ok(PublishAck::Duplicate),
                        None => Err(PublishError::PacketIdInUse),
                    };
                }
                if qos2_id.is_some()
                    && inner.inbound_qos2.len() >= usize::from(caps.receive_maximum)
                {
                    return Err(PublishError::ReceiveMaximumExceeded);
                }
            }
        }
        let now = self.hub.now();
        let message = Arc::new(message);
        // The queue entries this routing journals and the packet id are durable together:
        // entries kept without the id would be routed again by the publisher's resend
        // after a crash, and delivered twice.
        let _group = qos2_id.and_then(|_| self.hub.journal_group());
        if message.retain {
            self.hub.store_retained(&message, now)?;
        }
        let matched = self.hub.route(&message, Some(&self.state), now);
        self.hub.metrics.received.increment(1);
        if let Some(id) = qos2_id
            && let Some(mut inner) = self.live()
        {
            inner.inbound_qos2.insert(id);
            if inner.journaled {
                let hub = self.hub.id;
                self.hub.record(|| JournalOp::InboundQos2 {
                    hub,
                    client: self.client_id.clone(),
                    packet_id: id,
                });
            }
        }
        Ok(PublishAck::Delivered { matched })
    }

    /// PUBREL from the client: forgets the QoS 2 packet id. `false` = unknown id (PUBCOMP
    /// 0x92).
    pub fn release(&self, packet_id: u16) -> bool {
        take_ticket();
        let known = self.live().is_some_and(|mut inner| {
            let known = inner.inbound_qos2.remove(&packet_id);
            if known && inner.journaled {
                let hub = self.hub.id;
                self.hub.record(|| JournalOp::Released {
                    hub,
                    client: self.client_id.clone(),
                    packet_id,
                });
            }
            known
        });
        self.note_ticket();
        known
    }

    /// Adds or replaces subscriptions, one result per request, in order.
    ///
    /// A filter the session's subscribe rule refuses is `NotAuthorized`; one that only
    /// partly overlaps the rule is granted, and each message delivered through it is
    /// checked against the rule (see `iothub_model::CompiledRule::check_subscription`).
    /// Granted QoS = min(requested, the plan's maximum) (the shared plan grants QoS 0). A
    /// subscription to a filter the session already has replaces it and keeps its queued
    /// messages [MQTT-3.8.4-3]. Matching retained messages are queued right away per the
    /// Retain Handling option [MQTT-3.3.1-9..11], with RETAIN set [MQTT-3.3.1-8]; never for
    /// shared subscriptions. The adapter sends SUBACK before draining, so SUBACK comes first.
    ///
    /// Every refused filter is counted (`iothub_subscribe_refusals_total{reason}`).
    pub fn subscribe(&self, requests: &[SubscribeRequest]) -> Vec<Result<QoS, SubscribeError>> {
        let now = self.hub.now();
        requests
            .iter()
            .map(|r| {
                let result = self.subscribe_one(r, now);
                if let Err(e) = result {
                    self.hub.metrics.subscribe_refused(e);
                }
                result
            })
            .collect()
    }

    fn subscribe_one(&self, req: &SubscribeRequest, now: Instant) -> Result<QoS, SubscribeError> {
        let caps = &self.config.caps;
        let filter = &req.filter;
        if filter.is_shared() && !caps.shared_available {
            return Err(SubscribeError::SharedNotSupported);
        }
        if filter.filter.has_wildcards() && !caps.wildcard_available {
            return Err(SubscribeError::WildcardNotSupported);
        }
        if req.subscription_id.is_some() && !caps.subscription_ids_available {
            return Err(SubscribeError::SubscriptionIdsNotSupported);
        }
        if too_deep(filter.filter.as_str()) {
            return Err(SubscribeError::QuotaExceeded);
        }
        let opts = SubOptions {
            qos: req.qos.min(self.config.max_subscribe_qos()),
            // No Local on a shared subscription is a protocol error the adapter rejects
            // [MQTT-3.8.3-4]; the engine ignores it there.
            no_local: req.no_local && !filter.is_shared(),
            retain_as_published: req.retain_as_published,
            subscription_id: req.subscription_id,
        };
        let (existed, guard) = {
            let mut subs = self.hub.subs().write();
            let Some(mut inner) = self.live() else {
                return Err(SubscribeError::NotAuthorized);
            };
            let guard = inner
                .filters
                .subscription_guard(&filter.filter)
                .map_err(|()| SubscribeError::NotAuthorized)?;
            let entry = SubEntry {
                session: self.state.clone(),
                opts,
                guard: guard.clone(),
            };
            let old = subs.insert(filter, self.client_id.clone(), entry);
            inner.subscriptions.insert(filter.clone(), opts);
            if inner.journaled {
                let hub = self.hub.id;
                self.hub.record(|| JournalOp::Subscribe {
                    hub,
                    client: self.client_id.clone(),
                    filter: filter.clone(),
                    options: opts.into(),
                });
            }
            (old.is_some(), guard)
        };
        let send_retained = !filter.is_shared()
            && match req.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNewSubscription => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            let store = self.hub.retained().read();
            store.for_each_match(&filter.filter, |r| {
                if r.expires_at.is_some_and(|at| at <= now)
                    || guard
                        .as_ref()
                        .is_some_and(|g| !g.allows_topic(r.message.topic.as_str()))
                {
                    return;
                }
                let entry = Queued {
                    body: Body::Loaded(r.message.clone()),
                    qos: r.message.qos.min(opts.qos),
                    retain: true,
                    subscription_ids: opts.subscription_id.into_iter().collect(),
                    expires_at: r.expires_at,
                    weight: r.weight,
                    shared: None,
                    message_id: r.id,
                    entry: None,
                };
                self.hub.enqueue(&self.state, entry, now, false);
            });
            drop(store);
            // `$SYS` figures are kept beside the retained store and delivered the same way.
            self.hub.for_each_sys(&filter.filter, |m| {
                if guard
                    .as_ref()
                    .is_some_and(|g| !g.allows_topic(m.topic.as_str()))
                {
                    return;
                }
                let entry = Queued {
                    body: Body::Loaded(m.clone()),
                    qos: m.qos.min(opts.qos),
                    retain: true,
                    subscription_ids: opts.subscription_id.into_iter().collect(),
                    expires_at: None,
                    weight: m.weight() as u64,
                    shared: None,
                    message_id: None,
                    entry: None,
                };
                self.hub.enqueue(&self.state, entry, now, false);
            });
        }
        Ok(opts.qos)
    }

    /// Removes subscriptions; `true` per filter that existed. Queued messages stay.
    pub fn unsubscribe(&self, filters: &[SubscriptionFilter]) -> Vec<bool> {
        let mut subs = self.hub.subs().write();
        let Some(mut inner) = self.live() else {
            return vec![false; filters.len()];
        };
        filters
            .iter()
            .map(|f| {
                if inner.subscriptions.remove(f).is_some() && inner.journaled {
                    let hub = self.hub.id;
                    self.hub.record(|| JournalOp::Unsubscribe {
                        hub,
                        client: self.client_id.clone(),
                        filter: f.clone(),
                    });
                }
                subs.remove(f, &self.client_id).is_some()
            })
            .collect()
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for one of our outbound messages: frees its
    /// inflight slot. `false` = unknown packet id.
    pub fn acknowledge(&self, packet_id: u16) -> bool {
        let Some(mut inner) = self.live() else {
            return false;
        };
        let Some(done) = inner.inflight.remove(&packet_id) else {
            return false;
        };
        if inner.journaled {
            let hub = self.hub.id;
            self.hub.record(|| JournalOp::Acked {
                hub,
                client: self.client_id.clone(),
                packet_id,
            });
        }
        if let InflightState::Sent(q) = done.state {
            inner.bytes -= q.weight;
            self.hub.release(q.weight);
        }
        if !inner.queue.is_empty() {
            self.conn.notify.notify_one();
        }
        true
    }

    /// PUBREC for our outbound QoS 2: the message is delivered (and freed); the packet id
    /// awaits PUBCOMP and the adapter answers PUBREL. `false` = unknown id, or not QoS 2.
    pub fn received(&self, packet_id: u16) -> bool {
        // The PUBREL that answers waits until this is durable: a client that got PUBREL
        // completes and forgets the id, so a restart must not resend the PUBLISH.
        take_ticket();
        let known = self.received_inner(packet_id);
        self.note_ticket();
        known
    }

    fn received_inner(&self, packet_id: u16) -> bool {
        let Some(mut inner) = self.live() else {
            return false;
        };
        let Some(flight) = inner.inflight.get_mut(&packet_id) else {
            return false;
        };
        let weight = match &flight.state {
            InflightState::AwaitingComp => return true,
            InflightState::Sent(q) if q.qos == QoS::ExactlyOnce => q.weight,
            InflightState::Sent(_) => return false,
        };
        flight.state = InflightState::AwaitingComp;
        if inner.journaled {
            let hub = self.hub.id;
            self.hub.record(|| JournalOp::Received {
                hub,
                client: self.client_id.clone(),
                packet_id,
            });
        }
        inner.bytes -= weight;
        self.hub.release(weight);
        true
    }

    /// Moves ready work to the connection: first, after a reconnect to a present session,
    /// the unacknowledged PUBLISHes again (same packet ids, dup) and pending PUBRELs in
    /// their original order [MQTT-4.4.0-1]; then queued messages in order, QoS 1/2 ones only
    /// while the inflight window has room (packet ids 1..=65535, skipping ids in use).
    /// Expired messages are dropped here, before onward delivery starts [MQTT-3.3.2-5].
    /// Pushes at most `max` items; if more is ready, `ready()` resolves at once.
    /// When the connection was kicked, pushes `Outgoing::Disconnect(reason)` once and
    /// nothing after it.
    ///
    /// A spilled entry (crate docs, "Queue policy") is read back from the store when it
    /// reaches the front of the queue, a batch at a time, outside the session's lock.
    pub fn poll_outgoing(&self, out: &mut Vec<Outgoing>, max: usize) {
        let mut left = max;
        loop {
            let before = out.len();
            let spilled_front = self.poll_loaded(out, left);
            left -= out.len() - before;
            if !spilled_front {
                return;
            }
            // `poll_loaded` stops at a spilled front only with room left in the batch.
            if self.load_spilled(left) == 0 {
                // The queue changed meanwhile: look again soon.
                self.conn.notify.notify_one();
                return;
            }
        }
    }

    /// [`Session::poll_outgoing`] up to the first spilled entry; true when it stopped at
    /// one that may be sent once loaded.
    fn poll_loaded(&self, out: &mut Vec<Outgoing>, max: usize) -> bool {
        if let Some(reason) = self.conn.kicked() {
            if max > 0 && self.conn.take_kick_report() {
                out.push(Outgoing::Disconnect(reason));
            }
            return false;
        }
        let Some(mut inner) = self.live() else {
            return false;
        };
        let now = self.hub.now();
        let (mut pushed, mut delivered, mut expired, mut freed) = (0, 0, 0, 0);
        take_ticket();
        let mut qos2_sent = false;
        let mut spilled_front = false;
        while pushed < max {
            if let Some(id) = inner.resend.pop_front() {
                match inner.inflight.get(&id).map(|f| &f.state) {
                    // Inflight entries are loaded: only loaded ones are sent.
                    Some(InflightState::Sent(q)) => {
                        if let Some(p) = outgoing(q, Some(id), true, now) {
                            out.push(Outgoing::Publish(p));
                            pushed += 1;
                        }
                    }
                    Some(InflightState::AwaitingComp) => {
                        out.push(Outgoing::PubRel(id));
                        pushed += 1;
                    }
                    None => {}
                }
                continue;
            }
            let Some(front) = inner.queue.front() else {
                break;
            };
            if front.expired(now) {
                if let Some(q) = inner.queue.pop_front() {
                    expired += 1;
                    freed += q.weight;
                    self.hub.journal_unqueue(&self.client_id, &q);
                }
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                // QoS 0 entries are never spilled.
                if let Some(q) = inner.queue.pop_front() {
                    freed += q.weight;
                    if let Some(p) = outgoing(&q, None, false, now) {
                        out.push(Outgoing::Publish(p));
                    }
                }
            } else {
                if inner.inflight.len() >= usize::from(inner.window) {
                    break;
                }
                let Some(p) = outgoing(front, None, false, now) else {
                    // Spilled: loaded by `poll_outgoing`, then sent.
                    spilled_front = true;
                    break;
                };
                let Some(q) = inner.queue.pop_front() else {
                    break;
                };
                let id = inner.allocate_packet_id();
                if let Some(entry) = q.entry {
                    let hub = self.hub.id;
                    self.hub.record(|| JournalOp::Sent {
                        hub,
                        client: self.client_id.clone(),
                        entry,
                        packet_id: id,
                    });
                    qos2_sent |= q.qos == QoS::ExactlyOnce;
                }
                out.push(Outgoing::Publish(OutgoingPublish {
                    packet_id: Some(id),
                    ..p
                }));
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.inflight.insert(
                    id,
                    Inflight {
                        seq,
                        state: InflightState::Sent(q),
                    },
                );
            }
            pushed += 1;
            delivered += 1;
        }
        inner.bytes -= freed;
        let more = !inner.resend.is_empty()
            || inner.queue.front().is_some_and(|q| {
                q.qos == QoS::AtMostOnce || inner.inflight.len() < usize::from(inner.window)
            });
        drop(inner);
        // Only an outbound QoS 2 PUBLISH waits for its packet id to be durable: resent
        // under another id after a crash, it would be delivered twice.
        let ticket = take_ticket();
        if qos2_sent {
            self.ticket.fetch_max(ticket, Ordering::AcqRel);
        }
        self.hub.release(freed);
        if expired > 0 {
            self.hub.metrics.dropped(DropReason::Expired, expired);
        }
        if delivered > 0 {
            self.hub.metrics.delivered.increment(delivered);
        }
        if more && !spilled_front {
            self.conn.notify.notify_one();
        }
        spilled_front
    }

    /// Reads back up to `max` (at most [`LOAD_BATCH`]) spilled entries from the front of the
    /// queue, outside the session's lock, and puts them back loaded and reserved in the
    /// budget. An entry the store cannot give back is dropped (unqueued in the journal,
    /// counted as `reason="unreadable"`, logged). Returns how many entries it settled.
    fn load_spilled(&self, max: usize) -> usize {
        let wanted: Vec<(Option<EntryId>, MessageId)> = {
            let Some(inner) = self.live() else {
                return 0;
            };
            inner
                .queue
                .iter()
                .map_while(|q| q.spilled().map(|id| (q.entry, id)))
                .take(max.clamp(1, LOAD_BATCH))
                .collect()
        };
        let loaded: Vec<_> = wanted
            .into_iter()
            .map(|(entry, id)| (entry, self.hub.load_message(id)))
            .collect();
        let Some(mut inner) = self.live() else {
            return 0;
        };
        let (mut settled, mut reserved, mut unreadable) = (0, 0, 0);
        let mut at = 0;
        for (entry, result) in loaded {
            // In queue order, as collected; an entry that left meanwhile is skipped.
            let Some(i) = (at..inner.queue.len())
                .find(|&i| inner.queue[i].is_spilled() && inner.queue[i].entry == entry)
            else {
                continue;
            };
            at = i;
            settled += 1;
            match result {
                Ok(message) => {
                    let weight = message.weight() as u64;
                    let q = &mut inner.queue[i];
                    // Dropping the stub gives its own reservation back.
                    q.body = Body::Loaded(message);
                    q.weight = weight;
                    inner.bytes += weight;
                    reserved += weight;
                }
                Err(e) => {
                    if let Some(q) = inner.queue.remove(i) {
                        self.hub.journal_unqueue(&self.client_id, &q);
                    }
                    unreadable += 1;
                    warn!(message = "a spilled message could not be read back; dropped", hub = %self.hub.id, client_id = %self.client_id, error = %e);
                }
            }
        }
        drop(inner);
        self.hub.reserve(reserved);
        if unreadable > 0 {
            self.hub.metrics.dropped(DropReason::Unreadable, unreadable);
        }
        settled
    }

    /// Resolves when `poll_outgoing` has something new: a message, a freed window slot
    /// with messages waiting, or a kick. Cancel-safe: a wake-up that happens between
    /// `poll_outgoing` and `ready` is kept as a permit, not lost.
    pub async fn ready(&self) {
        self.conn.notify.notified().await;
    }

    /// Ends the connection. See [`DisconnectKind`] for what happens to the will; the
    /// session then lives for its expiry interval (a new one from DISCONNECT replaces
    /// the old one).
    pub fn disconnect(mut self, how: DisconnectKind) {
        self.done = true;
        self.hub.disconnect(&self.state, self.generation, how);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.done {
            self.hub
                .disconnect(&self.state, self.generation, DisconnectKind::Abnormal);
        }
    }
}

/// The PUBLISH to send for `q`, with the expiry interval left [MQTT-3.3.2-6], rounded up
/// so a message never claims to have expired early.
/// `None` for a spilled entry (load it first).
fn outgoing(
    q: &Queued,
    packet_id: Option<u16>,
    dup: bool,
    now: Instant,
) -> Option<OutgoingPublish> {
    let message_expiry_remaining = q.expires_at.map(|at| {
        let left = at.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    });
    Some(OutgoingPublish {
        packet_id,
        dup,
        qos: q.qos,
        retain: q.retain,
        message: q.message()?.clone(),
        subscription_ids: q.subscription_ids.clone(),
        message_expiry_remaining,
    })
}
