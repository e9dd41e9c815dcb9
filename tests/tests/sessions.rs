//! Sessions: clean start / clean session, Session Present, persistent sessions with queued
//! messages, redelivery after reconnect, session expiry, takeover.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use iothub_e2e::clients::{V4, V5, v4_options, v5_options};
use iothub_e2e::frames::{self, Connect, PropValue, Publish, kind, prop};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::{Hub, unique};

/// A CONNECT that keeps the session: 3.1.1 clean session 0; MQTT 5 clean start 0 with a
/// Session Expiry Interval of `expiry` seconds.
fn persistent(level: u8, id: &str, expiry: u32) -> Connect {
    let c = Connect {
        level,
        ..Connect::v4(id, false)
    };
    if level == 5 {
        c.prop(prop::SESSION_EXPIRY, PropValue::U32(expiry))
    } else {
        c
    }
}

fn publisher(hub: &Hub) -> RawClient {
    RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("p"), true)).0
}

/// v3.1.1: [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-4.4.0-1] [MQTT-4.5.0-1]
/// v5: [MQTT-3.1.2-5] [MQTT-3.1.2-23] [MQTT-3.2.2-3] [MQTT-4.1.0-1] [MQTT-4.5.0-1]
/// — a persistent session keeps its subscriptions and queues QoS 1/2 messages while offline;
/// the reconnect gets Session Present 1 and the messages, in order.
#[test]
fn persistent_session_keeps_subscriptions_and_queues_messages() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let id = unique("ps");
        let topic = format!("{id}/q");
        let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        assert!(!ack.session_present(), "level {level}: nothing stored yet");
        c.subscribe(1, &[(&topic, 2)]);
        c.send_ok(&frames::disconnect(None));
        c.expect_closed(WAIT);
        let mut p = publisher(&hub);
        p.publish(&Publish::v4(&topic, b"one").qos(1, 1));
        p.publish(&Publish::v4(&topic, b"two").qos(2, 2));
        p.publish(&Publish::v4(&topic, b"three").qos(1, 3));
        let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        assert!(ack.session_present(), "level {level}: session present");
        let got: Vec<(Vec<u8>, u8)> = c
            .publishes_for(QUIET)
            .into_iter()
            .map(|r| (r.payload, r.qos))
            .collect();
        assert_eq!(
            got,
            vec![
                (b"one".to_vec(), 1),
                (b"two".to_vec(), 2),
                (b"three".to_vec(), 1)
            ],
            "level {level}"
        );
        // The subscription itself survived: live messages arrive too.
        p.publish(&Publish::v4(&topic, b"live").qos(1, 4));
        assert_eq!(c.next_publish(WAIT).unwrap().payload, b"live");
    }
}

/// v3.1.1: [MQTT-3.1.2-6] [MQTT-3.2.2-1] [MQTT-3.1.4-3]
/// v5: [MQTT-3.1.2-4] [MQTT-3.2.2-2] [MQTT-3.1.4-4]
/// — clean session / clean start 1 discards a stored session: Session Present 0, no
/// subscriptions, no queued messages.
#[test]
fn clean_start_discards_the_stored_session() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let id = unique("cs");
        let topic = format!("{id}/q");
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        c.subscribe(1, &[(&topic, 1)]);
        c.send_ok(&frames::disconnect(None));
        c.expect_closed(WAIT);
        publisher(&hub).publish(&Publish::v4(&topic, b"queued").qos(1, 1));
        let clean = Connect {
            level,
            ..Connect::v4(&id, true)
        };
        let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &clean);
        assert!(!ack.session_present(), "level {level}");
        c.expect_silence(QUIET);
        publisher(&hub).publish(&Publish::v4(&topic, b"after").qos(1, 1));
        c.expect_silence(QUIET);
        // And the clean session did not become persistent (3.1.1: it ends with the connection;
        // MQTT 5: no Session Expiry means 0).
        c.send_ok(&frames::disconnect(None));
        c.expect_closed(WAIT);
        let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        assert!(
            !ack.session_present(),
            "level {level}: the clean session was not kept"
        );
    }
}

/// v3.1.1: [MQTT-3.2.2-3] / v5: [MQTT-3.1.2-6] [MQTT-3.2.2-3] — clean session / clean start 0
/// without a stored session creates one and says Session Present 0.
#[test]
fn resuming_a_session_that_does_not_exist_creates_one() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let id = unique("new");
        let (c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        assert!(!ack.session_present());
        c.drop_connection();
        let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        assert!(
            ack.session_present(),
            "level {level}: created by the first connection"
        );
    }
}

/// v5: [MQTT-4.1.0-2] [MQTT-3.1.2-23] — Session Expiry 0 (absent) ends the session with the
/// connection; a positive interval keeps it that long and no longer; DISCONNECT may shorten it
/// (§3.14.2.2.2).
#[test]
fn v5_session_expiry_interval_decides_how_long_a_session_lives() {
    let hub = Hub::start();
    // (expiry on CONNECT, expiry on DISCONNECT, wait before reconnecting, session present)
    let cases: &[(u32, Option<u32>, u64, bool)] = &[
        (0, None, 0, false),
        (300, None, 0, true),
        (1, None, 2500, false),
        (300, Some(0), 0, false),
    ];
    for (connect_expiry, disconnect_expiry, wait_ms, present) in cases {
        let id = unique("se");
        let (mut c, _) =
            RawClient::connected(hub.mqtt_addr(), &persistent(5, &id, *connect_expiry));
        c.subscribe(1, &[(&format!("{id}/x"), 1)]);
        let disconnect = match disconnect_expiry {
            None => frames::disconnect(Some(0)),
            Some(e) => {
                let mut body = vec![0x00];
                body.extend_from_slice(&frames::props(&[(
                    prop::SESSION_EXPIRY,
                    PropValue::U32(*e),
                )]));
                frames::frame(0xE0, &body)
            }
        };
        c.send_ok(&disconnect);
        c.expect_closed(WAIT);
        std::thread::sleep(Duration::from_millis(*wait_ms));
        let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(5, &id, 300));
        assert_eq!(
            ack.session_present(),
            *present,
            "expiry {connect_expiry} / disconnect {disconnect_expiry:?} / wait {wait_ms} ms"
        );
    }
}

/// v3.1.1: [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-2.3.1-3]
/// v5: [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.3.3-5]
/// — after a reconnect to the same session, an unacknowledged QoS 1/2 PUBLISH is sent again
/// with DUP 1 and its original packet id, and an unacknowledged PUBREL is sent again.
#[test]
fn unacknowledged_deliveries_are_resent_after_reconnect() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let id = unique("rd");
        let (q1, q2, q2rel) = (format!("{id}/q1"), format!("{id}/q2"), format!("{id}/rel"));
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        c.subscribe(1, &[(&q1, 1), (&q2, 2), (&q2rel, 2)]);
        let mut p = publisher(&hub);
        p.publish(&Publish::v4(&q1, b"a").qos(1, 1));
        p.publish(&Publish::v4(&q2, b"b").qos(2, 2));
        p.publish(&Publish::v4(&q2rel, b"c").qos(2, 3));
        let first: Vec<_> = (0..3).map(|_| c.expect_publish()).collect();
        // Acknowledge only the third one's PUBLISH (PUBREC); leave its PUBREL unanswered.
        c.send_ok(&frames::ack(kind::PUBREC, first[2].packet_id));
        let rel = c.expect_kind(kind::PUBREL, "PUBREL");
        assert_eq!(&rel.body[..2], &first[2].packet_id.to_be_bytes());
        c.drop_connection();

        let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        assert!(ack.session_present());
        let mut again = Vec::new();
        let mut pubrels = Vec::new();
        for _ in 0..3 {
            let p = c.expect_packet("resent PUBLISH or PUBREL");
            match p.kind() {
                kind::PUBLISH => {
                    again.push(frames::parse_publish(p.first_byte, &p.body, level == 5).unwrap())
                }
                kind::PUBREL => pubrels.push(u16::from_be_bytes([p.body[0], p.body[1]])),
                other => panic!("unexpected packet type {other}"),
            }
        }
        assert_eq!(
            pubrels,
            vec![first[2].packet_id],
            "level {level}: PUBREL resent"
        );
        assert_eq!(again.len(), 2, "level {level}: {again:?}");
        for (old, new) in first[..2].iter().zip(&again) {
            assert_eq!(
                (new.topic.as_str(), new.qos, new.packet_id),
                (old.topic.as_str(), old.qos, old.packet_id)
            );
            assert!(
                new.dup,
                "level {level}: DUP 1 on redelivery of {}",
                new.topic
            );
            assert_eq!(new.payload, old.payload);
        }
        // Complete everything; nothing more is resent.
        c.send_ok(&frames::ack(kind::PUBACK, again[0].packet_id));
        c.send_ok(&frames::ack(kind::PUBREC, again[1].packet_id));
        let rel = c.expect_kind(kind::PUBREL, "PUBREL");
        assert_eq!(&rel.body[..2], &again[1].packet_id.to_be_bytes());
        c.send_ok(&frames::ack(kind::PUBCOMP, again[1].packet_id));
        c.send_ok(&frames::ack(kind::PUBCOMP, first[2].packet_id));
        c.expect_silence(QUIET);
    }
}

/// v3.1.1: [MQTT-3.1.4-2] / v5: [MQTT-3.1.4-3] — a second connection with the same client id
/// takes the session over: the first is closed (MQTT 5: after DISCONNECT 0x8E), the second
/// continues the session.
#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    let hub = Hub::start();
    // (level, the new connection resumes the session)
    for (level, resume) in [(4u8, true), (4, false), (5, true), (5, false)] {
        let id = unique("to");
        let topic = format!("{id}/t");
        let (mut old, _) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
        old.subscribe(1, &[(&topic, 1)]);
        let second = if resume {
            persistent(level, &id, 300)
        } else {
            Connect {
                level,
                ..Connect::v4(&id, true)
            }
        };
        let (mut new, ack) = RawClient::connected(hub.mqtt_addr(), &second);
        assert_eq!(
            ack.session_present(),
            resume,
            "level {level}: session present iff resumed"
        );
        let before = old.expect_closed(WAIT);
        if level == 5 && !hub.is_iothub() {
            // Mosquitto 2.0.11 closes the old connection without the DISCONNECT 0x8E.
            eprintln!("note: the 0x8E check is skipped against the external reference");
        } else if level == 5 {
            assert_eq!(before.len(), 1, "resume {resume}: {before:?}");
            assert_eq!(
                (before[0].kind(), frames::disconnect_reason(&before[0].body)),
                (kind::DISCONNECT, 0x8E),
                "session taken over (resume {resume})"
            );
        } else {
            assert!(before.is_empty(), "{before:?}");
        }
        if !resume {
            new.subscribe(1, &[(&topic, 1)]);
        }
        publisher(&hub).publish(&Publish::v4(&topic, b"to the new one").qos(1, 1));
        assert_eq!(new.next_publish(WAIT).unwrap().payload, b"to the new one");
    }
}

/// Takeover as rumqttc sees it (3.1.1 and 5): the old connection ends, the new one is served.
/// (The 0x8E reason code is checked byte by byte above: rumqttc 0.25 cannot decode a
/// DISCONNECT whose Remaining Length is 1, which §3.14.2.2.1 allows.)
#[test]
fn takeover_with_rumqttc_clients() {
    let hub = Hub::start();
    let addr = hub.mqtt_addr();
    let topic = format!("{}/rt", unique("t"));
    let id = unique("rt");
    let mut old = V5::connect(v5_options(addr, &id));
    let mut new = V5::connect(v5_options(addr, &id));
    assert!(!new.connack.session_present);
    assert!(
        old.inbox.wait_closed(WAIT).is_some(),
        "the old MQTT 5 connection is closed"
    );
    new.subscribe(&topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    let id = unique("rt");
    let mut old = V4::connect(v4_options(addr, &id));
    let mut new4 = V4::connect(v4_options(addr, &id));
    assert!(
        old.inbox.wait_closed(WAIT).is_some(),
        "the old 3.1.1 connection is closed"
    );
    new4.publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"served");
    assert_eq!(new.expect_publish().payload.as_ref(), b"served");
}

/// The hub's side of an inbound QoS 2 exchange survives a reconnect of the publisher's
/// session: a PUBREL sent on the new connection is answered with PUBCOMP, a DUP resend before
/// it with PUBREC, and the message is delivered exactly once.
/// v3.1.1: [MQTT-4.4.0-1] [MQTT-4.3.3-2] / v5: [MQTT-4.4.0-1] [MQTT-4.3.3-10] [MQTT-4.3.3-11]
#[test]
fn inbound_qos2_state_survives_a_reconnect() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        for resend_publish in [false, true] {
            let id = unique("iq");
            let topic = format!("{id}/q2");
            let sentinel = format!("{id}/end");
            let (mut sub, _) =
                RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("s"), true));
            sub.subscribe(1, &[(&topic, 2), (&sentinel, 0)]);
            let publish = |dup: bool| {
                let mut p = if level == 5 {
                    Publish::v5(&topic, b"once")
                } else {
                    Publish::v4(&topic, b"once")
                };
                p.dup = dup;
                p.qos(2, 77)
            };
            let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
            c.send_ok(&publish(false).encode());
            let rec = c.expect_kind(kind::PUBREC, "PUBREC");
            assert_eq!(&rec.body[..2], &[0, 77]);
            c.drop_connection();
            let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &persistent(level, &id, 300));
            assert!(ack.session_present());
            if resend_publish {
                c.send_ok(&publish(true).encode());
                let rec = c.expect_kind(kind::PUBREC, "PUBREC for the resent PUBLISH");
                assert_eq!(&rec.body[..2], &[0, 77]);
            }
            c.send_ok(&frames::ack(kind::PUBREL, 77));
            let comp = c.expect_kind(kind::PUBCOMP, "PUBCOMP");
            assert_eq!(&comp.body[..2], &[0, 77]);
            if level == 5 && comp.body.len() > 2 {
                assert_eq!(
                    comp.body[2], 0,
                    "PUBCOMP success, not 0x92 Packet Identifier not found"
                );
            }
            let end = if level == 5 {
                Publish::v5(&sentinel, b"")
            } else {
                Publish::v4(&sentinel, b"")
            };
            c.publish(&end.qos(1, 78));
            let got: Vec<Vec<u8>> = sub
                .publishes_until(&sentinel)
                .into_iter()
                .map(|r| r.payload)
                .collect();
            assert_eq!(
                got,
                vec![b"once".to_vec()],
                "level {level} resend {resend_publish}"
            );
        }
    }
}
