//! `DurableState`: which records stay live, and the grace an unreferenced message gets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use iothub_engine::{EntryId, JournalOp, MessageId, SessionOwner};
use iothub_model::{ClientId, HubId, Message, MessageProperties, Origin, QoS, TopicName};
use iothub_persist::DurableState;

fn queue(hub: HubId, client: &str, entry: u64, message: u64) -> JournalOp {
    JournalOp::Queue {
        hub,
        client: ClientId::new(client).unwrap(),
        entry: EntryId(entry),
        message: MessageId(message),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        expires_at: None,
    }
}

/// A message routed to two persistent sessions is written once; the first session's entry
/// may be acknowledged (and the writer look at the live state) before the second's queue
/// record is written. An unreferenced message stays live until the writer's next look,
/// leaves the live set at the one after, and is forgotten by the compaction that drops it.
#[test]
fn an_unreferenced_message_outlives_one_compaction() {
    let hub = HubId::new_random();
    let mut state = DurableState::default();
    let mut seq = 0;
    let mut apply = |state: &mut DurableState, op: JournalOp| {
        seq += 1;
        state.apply(seq, &op);
        seq
    };
    for client in ["a", "b"] {
        apply(
            &mut state,
            JournalOp::SessionUp {
                hub,
                client: ClientId::new(client).unwrap(),
                owner: SessionOwner::Anonymous,
                expiry_secs: 60,
            },
        );
    }
    let message = Arc::new(Message {
        topic: TopicName::new("t").unwrap(),
        payload: Bytes::from_static(b"m"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        origin: Origin::Hub,
    });
    let m = apply(
        &mut state,
        JournalOp::Message {
            id: MessageId(1),
            hub,
            message,
        },
    );
    apply(&mut state, queue(hub, "a", 2, 1));
    apply(
        &mut state,
        JournalOp::Unqueue {
            hub,
            client: ClientId::new("a").unwrap(),
            entry: EntryId(2),
        },
    );
    assert!(state.live_seqs().contains(&m), "live until the next look");
    state.mark_unreferenced();
    // Marked: the next look leaves it out, unless something references it again before.
    assert!(!state.live_seqs().contains(&m));
    let q = apply(&mut state, queue(hub, "b", 3, 1));
    let live = state.live_seqs();
    assert!(live.contains(&m) && live.contains(&q));
    let restored = state.restored();
    let b = restored[0]
        .1
        .sessions
        .iter()
        .find(|s| s.client.as_str() == "b")
        .unwrap();
    assert_eq!(b.queue.len(), 1);
    assert_eq!(state.next_id(), 4);

    // Unreferenced at two looks in a row: out of the live set; the compaction forgets it,
    // and a late reference finds nothing.
    apply(
        &mut state,
        JournalOp::SessionEnd {
            hub,
            client: ClientId::new("b").unwrap(),
        },
    );
    assert!(state.live_seqs().contains(&m));
    state.mark_unreferenced();
    assert!(!state.live_seqs().contains(&m));
    state.forget_unreferenced();
    state.mark_unreferenced();
    let late = apply(&mut state, queue(hub, "a", 4, 1));
    assert!(!state.live_seqs().contains(&late));
}
