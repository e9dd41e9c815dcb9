//! The hub budget stays exact (not only "back to zero in the end") through takeover,
//! expiry, deletion and moves: after each event the budget holds exactly the weights of
//! what the hub still keeps.

use super::*;

/// The weight of `msg(topic, payload, ..)`: topic and payload bytes.
fn w(topic: &str, payload: &str) -> u64 {
    (topic.len() + payload.len()) as u64
}

/// The will of [`will_request`].
fn will_weight() -> u64 {
    w("will/topic", "gone")
}

/// A persistent subscriber `s` to "t" (QoS 1), offline with two messages queued, and a
/// retained message on "r": the state each case starts from. Returns what it weighs.
fn offline_subscriber_with_queue(fx: &Fx) -> u64 {
    let s = fx.persistent("s", true, 60).session;
    subscribe(&s, "t", Q1);
    s.disconnect(DisconnectKind::Normal {
        session_expiry_secs: None,
    });
    let p = fx.client("p");
    publish(&p, "t", "one", Q1);
    publish(&p, "t", "two!", Q1);
    p.publish(msg("r", "kept", Q1, true), Some(2)).unwrap();
    w("t", "one") + w("t", "two!") + w("r", "kept")
}

/// A case gets the fixture and a place for the handles it keeps alive until the check.
type Case = (&'static str, fn(&Fx, &mut Vec<Session>) -> u64);

/// Each case drives the engine and answers what the budget must hold afterwards.
const CASES: &[Case] = &[
    (
        "resumed session keeps its queue, its will is replaced",
        |fx, keep| {
            let kept = offline_subscriber_with_queue(fx);
            let back = fx.connect_full(ConnectRequest {
                clean_start: false,
                ..will_request(fx, "s", 0, 60)
            });
            assert!(back.session_present);
            keep.push(back.session);
            kept + will_weight()
        },
    ),
    ("clean start frees the old session's queue", |fx, keep| {
        let kept = offline_subscriber_with_queue(fx);
        let back = fx.connect_full(will_request(fx, "s", 0, 60));
        assert!(!back.session_present);
        keep.push(back.session);
        kept - w("t", "one") - w("t", "two!") + will_weight()
    }),
    (
        "takeover of a live connection with inflight messages",
        |fx, keep| {
            let s = fx.persistent("s", true, 60).session;
            subscribe(&s, "t", Q1);
            let p = fx.client("p");
            publish(&p, "t", "sent", Q1);
            assert_eq!(publishes(&drain(&s)).len(), 1);
            publish(&p, "t", "queued", Q1);
            let new = fx.persistent("s", false, 60);
            drop(s);
            // The inflight message is resent to the new connection, the queued one follows.
            assert_eq!(payloads(&new.session), ["sent", "queued"]);
            keep.push(new.session);
            0
        },
    ),
    (
        "session expiry frees its queue and its delayed will",
        |fx, _| {
            let kept = offline_subscriber_with_queue(fx);
            let c = fx.connect_full(will_request(fx, "c", 30, 10));
            c.session.disconnect(DisconnectKind::Abnormal);
            fx.advance(5);
            assert_eq!(fx.stats().budget_used_bytes, kept + will_weight());
            fx.advance(61);
            w("r", "kept")
        },
    ),
    ("message expiry of an offline queue", |fx, _| {
        let s = fx.persistent("s", true, 600).session;
        subscribe(&s, "t", Q1);
        s.disconnect(DisconnectKind::Normal {
            session_expiry_secs: None,
        });
        let p = fx.client("p");
        p.publish(expiring("t", "soon", Q1, 5), Some(1)).unwrap();
        publish(&p, "t", "later", Q1);
        fx.advance(6);
        w("t", "later")
    }),
    ("retained: bigger, smaller, deleted, expired", |fx, _| {
        let p = fx.client("p");
        p.publish(msg("a", "12345", Q0, true), None).unwrap();
        p.publish(msg("a", "1234567890", Q0, true), None).unwrap();
        assert_eq!(fx.stats().budget_used_bytes, w("a", "1234567890"));
        p.publish(msg("a", "1", Q0, true), None).unwrap();
        assert_eq!(fx.stats().budget_used_bytes, w("a", "1"));
        p.publish(msg("b", "x", Q0, true), None).unwrap();
        p.publish(msg("a", "", Q0, true), None).unwrap();
        let mut e = expiring("c", "short", Q0, 2);
        e.retain = true;
        p.publish(e, None).unwrap();
        fx.advance(3);
        w("b", "x")
    }),
    (
        "a deleted device's sessions free what they held",
        |fx, _| {
            let device = fx.add_device(MessageFilters::default());
            let id = device.to_string();
            let c = fx
                .engine
                .connect_as(insecure(device), fx.req(&id, false, 600))
                .unwrap();
            subscribe(&c.session, "t", Q1);
            c.session.disconnect(DisconnectKind::Normal {
                session_expiry_secs: None,
            });
            let p = fx.client("p");
            publish(&p, "t", "for the device", Q1);
            assert_eq!(fx.stats().budget_used_bytes, w("t", "for the device"));
            fx.engine.remove_device(device).unwrap();
            0
        },
    ),
    (
        "a device moved to another hub frees the old hub",
        |fx, _| {
            let other = HubId::new_random();
            fx.engine
                .create_hub(hub_spec(
                    other,
                    "other",
                    Plan::Dedicated,
                    HubLimits::default(),
                    true,
                ))
                .unwrap();
            let device = fx.add_device(MessageFilters::default());
            let id = device.to_string();
            let c = fx
                .engine
                .connect_as(insecure(device), fx.req(&id, false, 600))
                .unwrap();
            subscribe(&c.session, "t", Q1);
            let p = fx.client("p");
            publish(&p, "t", "queued", Q1);
            let mut spec = device_spec(device, other, MessageFilters::default());
            spec.name = "moved".into();
            fx.engine.upsert_device(spec).unwrap();
            drop(c);
            assert_eq!(
                fx.engine.hub_stats(other).unwrap().budget_used_bytes,
                0,
                "nothing moved with the device"
            );
            0
        },
    ),
    (
        "a shared message handed to another member keeps its reservation",
        |fx, keep| {
            let a = fx.persistent("a", true, 60).session;
            subscribe(&a, "$share/g/t", Q1);
            let b = fx.persistent("b", true, 60).session;
            subscribe(&b, "$share/g/t", Q1);
            let p = fx.client("p");
            publish(&p, "t", "m1", Q1);
            publish(&p, "t", "m2", Q1);
            a.disconnect(DisconnectKind::Normal {
                session_expiry_secs: Some(0),
            });
            assert_eq!(fx.stats().budget_used_bytes, 2 * w("t", "m1"));
            assert_eq!(payloads(&b).len(), 2);
            keep.push(b);
            0
        },
    ),
];

#[test]
fn budget_is_exact_after_every_event() {
    for (name, case) in CASES {
        let fx = Fx::new();
        let mut keep = Vec::new();
        let expected = case(&fx, &mut keep);
        assert_eq!(fx.stats().budget_used_bytes, expected, "{name}");
    }
}

/// A retained message owns its bytes: it never keeps the buffer its payload was read into
/// (a connection's read buffer, possibly megabytes), which the budget would not see.
#[test]
fn retained_messages_do_not_pin_the_publishers_buffer() {
    let fx = Fx::new();
    let p = fx.client("p");
    let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let mut m = msg("r", "", Q1, true);
    m.payload = buffer.slice(100..110);
    m.properties.correlation_data = Some(buffer.slice(200..204));
    p.publish(m, Some(1)).unwrap();
    assert_eq!(fx.stats().budget_used_bytes, w("r", "0123456789") + 4);
    let s = fx.client("s");
    subscribe(&s, "r", Q1);
    let out = drain(&s);
    let stored = &publishes(&out)[0].message;
    let inside = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
    assert_eq!(&stored.payload[..], &buffer[100..110]);
    assert!(!inside(&stored.payload), "the payload is a copy");
    assert!(!inside(
        stored.properties.correlation_data.as_ref().unwrap()
    ));
}
