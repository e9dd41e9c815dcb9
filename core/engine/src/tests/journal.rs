//! Durability from the engine's side: what it records in the journal (and what it does
//! not), and the queue policy that keeps a persistent session's QoS 1/2 messages beyond its
//! bound up to the hub budget.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::*;

/// A journal that keeps every operation, with tickets from 1 and everything durable at once.
#[derive(Default)]
struct Recorder {
    ops: Mutex<Vec<JournalOp>>,
    next: AtomicU64,
    /// Groups opened and closed, as the number of ops recorded at the time (true: begin).
    groups: Mutex<Vec<(bool, usize)>>,
}

impl Journal for Recorder {
    fn record(&self, op: JournalOp) -> u64 {
        self.ops.lock().push(op);
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(u64::MAX).1
    }

    fn begin_group(&self) -> u64 {
        let at = self.ops.lock().len();
        self.groups.lock().push((true, at));
        at as u64
    }

    fn end_group(&self, start: u64) {
        let at = self.ops.lock().len();
        assert_eq!(self.groups.lock().last(), Some(&(true, start as usize)));
        self.groups.lock().push((false, at));
    }
}

fn journaled(limits: HubLimits) -> (Fx, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (with_journal(recorder.clone(), limits), recorder)
}

/// An engine writing to `journal`, with one dedicated hub.
fn with_journal(journal: Arc<dyn Journal>, limits: HubLimits) -> Fx {
    let clock = ManualClock::new();
    let engine = Engine::new(EngineConfig {
        clock: Arc::new(clock.clone()),
        journal: Some(journal),
    });
    let hub = HubId::new_random();
    engine
        .create_hub(hub_spec(hub, "j", Plan::Dedicated, limits, true))
        .unwrap();
    Fx { engine, clock, hub }
}

fn kinds(ops: &[JournalOp]) -> Vec<&'static str> {
    ops.iter()
        .map(|op| match op {
            JournalOp::Message { .. } => "message",
            JournalOp::RetainSet { .. } => "retain",
            JournalOp::RetainClear { .. } => "unretain",
            JournalOp::SessionUp { .. } => "up",
            JournalOp::SessionDown { .. } => "down",
            JournalOp::SessionEnd { .. } => "end",
            JournalOp::Subscribe { .. } => "subscribe",
            JournalOp::Unsubscribe { .. } => "unsubscribe",
            JournalOp::Queue { .. } => "queue",
            JournalOp::Unqueue { .. } => "unqueue",
            JournalOp::Sent { .. } => "sent",
            JournalOp::Acked { .. } => "acked",
            JournalOp::Received { .. } => "received",
            JournalOp::InboundQos2 { .. } => "inbound",
            JournalOp::Released { .. } => "released",
            JournalOp::WillPending { .. } => "will",
            JournalOp::WillCleared { .. } => "will-cleared",
            JournalOp::HubCleared { .. } => "hub-cleared",
        })
        .collect()
}

/// Clean sessions and QoS 0 are never written; a message routed to two persistent sessions
/// is written once and referenced by both queue entries; the flows of both directions are.
#[test]
fn only_persistent_state_is_journaled_and_messages_once() {
    let (fx, rec) = journaled(HubLimits::default());
    let clean = fx.client("clean");
    subscribe(&clean, "t", Q2);
    let p = fx.client("p");
    publish(&p, "t", "m", Q1);
    assert_eq!(publishes(&drain(&clean)).len(), 1);
    assert!(clean.acknowledge(1));
    assert!(rec.ops.lock().is_empty(), "{:?}", rec.ops.lock());

    let a = fx.persistent("a", true, 60).session;
    let b = fx.persistent("b", true, 60).session;
    subscribe(&a, "t", Q2);
    subscribe(&b, "t", Q1);
    rec.ops.lock().clear();
    publish(&p, "t", "zero", Q0);
    assert!(rec.ops.lock().is_empty(), "QoS 0 is not journaled");
    drain(&a);
    drain(&b);

    publish(&p, "t", "both", Q2);
    let ops = rec.ops.lock().clone();
    assert_eq!(kinds(&ops), ["message", "queue", "queue"], "{ops:?}");
    let ids: Vec<MessageId> = ops
        .iter()
        .filter_map(|op| match op {
            JournalOp::Queue { message, .. } => Some(*message),
            _ => None,
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    rec.ops.lock().clear();

    // Outbound: packet id assigned (a: QoS 2, b: QoS 1), PUBREC, PUBCOMP / PUBACK.
    let sent = drain(&a);
    let id = publishes(&sent)[0].packet_id.unwrap();
    assert!(a.received(id));
    assert!(a.acknowledge(id));
    let sent = drain(&b);
    assert!(b.acknowledge(publishes(&sent)[0].packet_id.unwrap()));
    // Inbound QoS 2 on a persistent publisher: the id, then its release.
    let q = fx.persistent("q", true, 60).session;
    rec.ops.lock().clear();
    q.publish(msg("x", "in", Q2, false), Some(9)).unwrap();
    assert!(q.release(9));
    drop(q);
    let ops = rec.ops.lock().clone();
    assert_eq!(kinds(&ops), ["inbound", "released", "down"], "{ops:?}");
}

/// An inbound QoS 2 PUBLISH of a persistent publisher: the queue entries its routing
/// journals and its packet id are one group (durable together: entries kept without the id
/// would be routed again by the resend after a crash and delivered twice); QoS 1 is not
/// grouped.
#[test]
fn an_inbound_qos2_publish_is_journaled_as_one_group() {
    let (fx, rec) = journaled(HubLimits::default());
    let a = fx.persistent("a", true, 60).session;
    let b = fx.persistent("b", true, 60).session;
    subscribe(&a, "t", Q2);
    subscribe(&b, "t", Q1);
    let p = fx.persistent("p", true, 60).session;
    rec.ops.lock().clear();
    rec.groups.lock().clear();
    p.publish(msg("t", "m", Q1, false), Some(1)).unwrap();
    assert!(rec.groups.lock().is_empty(), "QoS 1 is not grouped");
    rec.ops.lock().clear();
    p.publish(msg("t", "m", Q2, true), Some(2)).unwrap();
    let ops = rec.ops.lock().clone();
    assert_eq!(
        kinds(&ops),
        ["message", "retain", "message", "queue", "queue", "inbound"],
        "{ops:?}"
    );
    assert_eq!(*rec.groups.lock(), [(true, 0), (false, ops.len())]);
}

/// `Session::durable_ticket`: the CONNECT of a persistent session (its record, its will), a
/// PUBLISH that wrote durable state, a PUBREL, and an outbound QoS 2 packet id raise it; a
/// clean session's CONNECT and traffic and QoS 1 sends do not.
#[test]
fn durable_tickets_follow_what_must_wait() {
    let (fx, rec) = journaled(HubLimits::default());
    let p = fx.persistent("p", true, 60).session;
    let connected = p.durable_ticket();
    assert!(connected > 0, "the CONNACK waits for the session's record");
    // A will: written at CONNECT, so that a crash right after the CONNACK does not lose it.
    let mut req = fx.req("w", true, 60);
    req.will = Some(Will {
        message: msg("gone", "w", Q1, false),
        delay_secs: 0,
    });
    let w = fx.connect_full(req).session;
    assert_eq!(
        w.durable_ticket(),
        rec.next.load(Ordering::Relaxed),
        "the CONNACK waits for the will"
    );
    assert!(kinds(&rec.ops.lock()).ends_with(&["up", "will"]));
    assert_eq!(fx.client("clean").durable_ticket(), 0);
    let s1 = fx.persistent("s1", true, 60).session;
    subscribe(&s1, "one", Q1);
    let s2 = fx.persistent("s2", true, 60).session;
    subscribe(&s2, "two", Q2);
    p.publish(msg("nobody", "m", Q1, false), Some(1)).unwrap();
    assert_eq!(p.durable_ticket(), connected, "routed nowhere durable");
    p.publish(msg("one", "m", Q1, false), Some(2)).unwrap();
    let t = p.durable_ticket();
    assert!(t > connected);
    p.publish(msg("one", "m", Q2, false), Some(3)).unwrap();
    assert!(p.durable_ticket() > t, "inbound QoS 2 id");
    let t = p.durable_ticket();
    assert!(p.release(3));
    assert!(p.durable_ticket() > t, "PUBCOMP waits for the release");
    let before = s1.durable_ticket();
    drain(&s1);
    assert_eq!(s1.durable_ticket(), before, "a QoS 1 send need not wait");
    p.publish(msg("two", "m", Q2, false), Some(4)).unwrap();
    let out = drain(&s2);
    let t = s2.durable_ticket();
    assert!(t > 0, "a QoS 2 packet id must be durable first");
    assert!(s2.received(publishes(&out)[0].packet_id.unwrap()));
    assert!(
        s2.durable_ticket() > t,
        "PUBREL waits for the PUBREC record"
    );
    assert!(p.durability().is_some());
    assert!(fx.client("c").durability().is_some());
}

/// Queue policy: past the session's bound the oldest QoS 0 messages go first; a persistent
/// session keeps QoS 1/2 beyond its bound up to the hub budget, then the message is dropped
/// and the session disconnected with 0x97; a clean session is disconnected at its bound.
#[test]
fn queue_policy_drops_oldest_qos0_then_keeps_qos12_up_to_the_budget() {
    let limits = HubLimits {
        max_session_queue_messages: 3,
        budget_bytes: 60,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let slow = fx.persistent("slow", true, 60).session;
    subscribe(&slow, "t", Q1);
    let p = fx.client("p");
    publish(&p, "t", "z1", Q0);
    publish(&p, "t", "z2", Q0);
    publish(&p, "t", "a1", Q1);
    // Full (3): the next QoS 1 evicts the oldest QoS 0, then the other.
    publish(&p, "t", "a2", Q1);
    publish(&p, "t", "a3", Q1);
    assert_eq!(fx.stats().dropped.queue_full, 2);
    // No QoS 0 left: a persistent session keeps QoS 1 beyond its bound (weight 4 each; the
    // 60-byte budget holds 3 + 12 of them after the 9 bytes of a1..a3), until the budget is
    // used up.
    for i in 0..30 {
        publish(&p, "t", &format!("b{i:02}"), Q1);
    }
    let stats = fx.stats();
    assert_eq!(stats.queued_messages, 15, "{stats:?}");
    assert_eq!(stats.dropped.hub_budget, 18, "{stats:?}");
    let out = drain(&slow);
    assert_eq!(out, [Outgoing::Disconnect(KickReason::QuotaExceeded)]);

    // A clean session: dropped at its bound, with 0x97.
    let fx = Fx::with(
        Plan::Dedicated,
        HubLimits {
            max_session_queue_messages: 3,
            ..HubLimits::default()
        },
    );
    let clean = fx.client("clean");
    subscribe(&clean, "t", Q1);
    let p = fx.client("p");
    for i in 0..5 {
        publish(&p, "t", &format!("c{i}"), Q1);
    }
    assert_eq!(fx.stats().dropped.queue_full, 2);
    assert_eq!(
        drain(&clean),
        [Outgoing::Disconnect(KickReason::QuotaExceeded)]
    );
}

/// A journal that also reads messages back, as a store that spills does; ids in `broken`
/// cannot be read.
#[derive(Default)]
struct Spilling {
    recorder: Recorder,
    messages: Mutex<std::collections::HashMap<MessageId, Arc<Message>>>,
    broken: Mutex<Vec<MessageId>>,
    loads: AtomicU64,
}

impl Journal for Spilling {
    fn record(&self, op: JournalOp) -> u64 {
        if let JournalOp::Message { id, message, .. } = &op {
            self.messages.lock().insert(*id, message.clone());
        }
        self.recorder.record(op)
    }

    fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recorder.durable()
    }

    fn loads_messages(&self) -> bool {
        true
    }

    fn load(&self, id: MessageId) -> Result<Arc<Message>, LoadError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        if self.broken.lock().contains(&id) {
            return Err(LoadError::Unreadable {
                id,
                reason: "damaged".into(),
            });
        }
        self.messages
            .lock()
            .get(&id)
            .cloned()
            .ok_or(LoadError::NotFound(id))
    }
}

fn spilling(limits: HubLimits) -> (Fx, Arc<Spilling>) {
    let journal = Arc::new(Spilling::default());
    (with_journal(journal.clone(), limits), journal)
}

/// Sends and acknowledges everything `s` has, returning the payloads in delivery order.
fn drain_acked(s: &Session) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let out = drain(s);
        if out.is_empty() {
            return got;
        }
        for p in publishes(&out) {
            got.push(String::from_utf8_lossy(&p.message.payload).into_owned());
            if let Some(id) = p.packet_id {
                assert!(s.acknowledge(id));
            }
        }
    }
}

/// Queue policy with a store that reads messages back: beyond the session's bound a
/// persistent session's QoS 1/2 entries are spilled (only a stub stays in memory and in
/// the budget), read back when they reach the front, and delivered in order; the budget
/// is exact afterwards.
#[test]
fn a_persistent_sessions_queue_beyond_its_bound_is_spilled_and_read_back_in_order() {
    let (fx, journal) = spilling(HubLimits {
        max_session_queue_messages: 4,
        ..HubLimits::default()
    });
    let slow = fx.persistent("slow", true, 600).session;
    subscribe(&slow, "t", Q1);
    let p = fx.client("p");
    let big = "x".repeat(2000);
    let sent: Vec<String> = (0..40).map(|i| format!("{i:02}{big}")).collect();
    for m in &sent {
        publish(&p, "t", m, Q1);
    }
    let stats = fx.stats();
    assert_eq!(stats.queued_messages, 40, "{stats:?}");
    // 4 messages of ~2 KB in memory, 36 stubs: far less than 40 messages.
    let weight = msg("t", &sent[0], Q1, false).weight() as u64;
    assert!(stats.budget_used_bytes < 4 * weight + 36 * 256, "{stats:?}");
    assert!(stats.budget_used_bytes >= 4 * weight, "{stats:?}");
    assert_eq!(journal.loads.load(Ordering::Relaxed), 0);
    // What the README and the crate docs promise a stub costs.
    let stub = crate::state::SpillMark::WEIGHT;
    assert!(stub < 200, "a stub is {stub} bytes");

    assert_eq!(drain_acked(&slow), sent);
    assert_eq!(journal.loads.load(Ordering::Relaxed), 36);
    let stats = fx.stats();
    assert_eq!(
        (
            stats.queued_messages,
            stats.budget_used_bytes,
            stats.dropped.unreadable
        ),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// A spilled entry the store cannot give back is dropped, counted, unqueued in the journal,
/// and the rest of the queue goes on in order. Stubs of a session that ends give their
/// reservation back.
#[test]
fn an_unreadable_spilled_message_is_dropped_and_counted_and_stubs_free_their_budget() {
    let (fx, journal) = spilling(HubLimits {
        max_session_queue_messages: 2,
        ..HubLimits::default()
    });
    let slow = fx.persistent("slow", true, 600).session;
    subscribe(&slow, "t", Q1);
    let p = fx.client("p");
    for i in 0..6 {
        publish(&p, "t", &format!("m{i}"), Q1);
    }
    let ids: Vec<MessageId> = journal
        .recorder
        .ops
        .lock()
        .iter()
        .filter_map(|op| match op {
            JournalOp::Message { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 6);
    journal.broken.lock().push(ids[3]);
    journal.recorder.ops.lock().clear();
    assert_eq!(drain_acked(&slow), ["m0", "m1", "m2", "m4", "m5"]);
    assert_eq!(fx.stats().dropped.unreadable, 1);
    assert!(
        kinds(&journal.recorder.ops.lock()).contains(&"unqueue"),
        "the dropped entry leaves the journal too"
    );

    // Stubs of an offline session, then the session ends (clean start): budget back to 0.
    drop(slow);
    for i in 0..6 {
        publish(&p, "t", &format!("n{i}"), Q1);
    }
    let stats = fx.stats();
    assert_eq!(stats.queued_messages, 6, "{stats:?}");
    assert!(stats.budget_used_bytes > 0);
    drop(fx.persistent("slow", true, 0));
    let stats = fx.stats();
    assert_eq!(
        (stats.queued_messages, stats.budget_used_bytes),
        (0, 0),
        "{stats:?}"
    );
}

/// A session holding spilled entries that reconnects without an expiry stays journaled
/// until it ends (the store must keep the messages its stubs name), gets them all, and
/// ends at its DISCONNECT.
#[test]
fn a_session_with_spilled_entries_stays_journaled_until_it_ends() {
    let (fx, journal) = spilling(HubLimits {
        max_session_queue_messages: 2,
        ..HubLimits::default()
    });
    let slow = fx.persistent("slow", true, 600).session;
    subscribe(&slow, "t", Q1);
    drop(slow);
    let p = fx.client("p");
    for i in 0..6 {
        publish(&p, "t", &format!("m{i}"), Q1);
    }
    journal.recorder.ops.lock().clear();
    let back = fx.persistent("slow", false, 0);
    assert!(back.session_present);
    let ops = journal.recorder.ops.lock().clone();
    assert!(
        matches!(&ops[..], [JournalOp::SessionUp { expiry_secs: 0, .. }]),
        "{ops:?}"
    );
    assert_eq!(
        drain_acked(&back.session),
        ["m0", "m1", "m2", "m3", "m4", "m5"]
    );
    back.session.disconnect(DisconnectKind::Normal {
        session_expiry_secs: None,
    });
    assert_eq!(kinds(&journal.recorder.ops.lock()).last(), Some(&"end"));
}
