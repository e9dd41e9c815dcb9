//! QoS 0/1/2 flows in both directions, checked packet by packet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::clients::{V4, V5, v4_options, v5_options};
use iothub_e2e::frames::{self, Connect, Publish, kind};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::{Hub, unique};

fn raw(hub: &Hub, level: u8) -> RawClient {
    let connect = Connect {
        level,
        ..Connect::v4(&unique("q"), true)
    };
    RawClient::connected(hub.mqtt_addr(), &connect).0
}

fn publish(level: u8, topic: &str, payload: &[u8]) -> Publish {
    if level == 5 {
        Publish::v5(topic, payload)
    } else {
        Publish::v4(topic, payload)
    }
}

/// Client to hub: QoS 1 gets a PUBACK, QoS 2 a PUBREC / PUBREL / PUBCOMP exchange, each with
/// the publisher's packet id; the message is delivered once.
/// v3.1.1: [MQTT-3.3.4-1] [MQTT-2.3.1-6] [MQTT-4.3.2-2] [MQTT-4.3.3-2]
/// v5: [MQTT-3.3.4-1] [MQTT-2.2.1-5] [MQTT-4.3.2-4] [MQTT-4.3.3-8] [MQTT-4.3.3-11] [MQTT-3.4.2-1]
/// [MQTT-3.5.2-1] [MQTT-3.7.2-1]
#[test]
fn inbound_qos1_and_qos2_are_acknowledged_with_the_same_packet_id() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let topic = format!("{}/in", unique("t"));
        let mut sub = raw(&hub, level);
        sub.subscribe(1, &[(&topic, 2)]);
        let mut p = raw(&hub, level);
        for (qos, id) in [(1u8, 0x0102u16), (2, 0xFFFF), (1, 1)] {
            p.send_ok(&publish(level, &topic, &[qos]).qos(qos, id).encode());
            let ack_kind = if qos == 1 { kind::PUBACK } else { kind::PUBREC };
            let ack = p.expect_kind(ack_kind, "PUBACK/PUBREC");
            assert_eq!(ack.first_byte & 0x0f, 0, "ack flags");
            assert_eq!(&ack.body[..2], &id.to_be_bytes(), "level {level} qos {qos}");
            if level == 5 && ack.body.len() > 2 {
                assert!(ack.body[2] < 0x80, "success reason, got {:#x}", ack.body[2]);
            }
            if qos == 2 {
                p.send_ok(&frames::ack(kind::PUBREL, id));
                let comp = p.expect_kind(kind::PUBCOMP, "PUBCOMP");
                assert_eq!(comp.first_byte, 0x70);
                assert_eq!(&comp.body[..2], &id.to_be_bytes());
                if level == 5 && comp.body.len() > 2 {
                    assert_eq!(comp.body[2], 0, "PUBCOMP reason");
                }
            }
            let r = sub.next_publish(WAIT).unwrap();
            assert_eq!(r.payload, vec![qos]);
        }
        // Nothing more than the three messages (a late PUBREL is completed on the way).
        assert!(sub.publishes_for(QUIET).is_empty());
    }
}

/// Hub to client: the hub's QoS 1/2 PUBLISH packets carry non-zero packet ids not in use by
/// another unacknowledged message, with DUP 0 on first delivery; QoS 2 continues with PUBREL
/// (flags 0010) after PUBREC.
/// v3.1.1: [MQTT-2.3.1-1] [MQTT-2.3.1-4] [MQTT-3.3.1-3] [MQTT-4.3.2-1] [MQTT-4.3.3-1] [MQTT-3.6.1-1]
/// v5: [MQTT-2.2.1-4] [MQTT-3.3.1-3] [MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-4.3.3-1] [MQTT-4.3.3-2]
/// [MQTT-4.3.3-4] [MQTT-3.6.1-1]
#[test]
fn outbound_packet_ids_are_non_zero_and_unique_while_unacknowledged() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        for qos in [1u8, 2] {
            let topic = format!("{}/out", unique("t"));
            let mut sub = raw(&hub, level);
            sub.subscribe(1, &[(&topic, qos)]);
            let mut p = raw(&hub, level);
            for i in 0..5u8 {
                // The publisher's own DUP flag must not leak into the delivery.
                let mut m = publish(level, &topic, &[i]).qos(qos, 100);
                m.dup = i == 0;
                p.publish(&m);
            }
            let got: Vec<_> = (0..5).map(|_| sub.expect_publish()).collect();
            let mut ids: Vec<u16> = got.iter().map(|r| r.packet_id).collect();
            for r in &got {
                assert_eq!(r.qos, qos);
                assert!(!r.dup, "first delivery has DUP 0");
                assert_ne!(r.packet_id, 0);
            }
            assert_eq!(
                got.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
                vec![0, 1, 2, 3, 4]
            );
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(
                ids.len(),
                5,
                "level {level} qos {qos}: ids in use were reused: {got:?}"
            );
            for r in &got {
                if qos == 1 {
                    sub.send_ok(&frames::ack(kind::PUBACK, r.packet_id));
                } else {
                    sub.send_ok(&frames::ack(kind::PUBREC, r.packet_id));
                    let rel = sub.expect_kind(kind::PUBREL, "PUBREL");
                    assert_eq!(rel.first_byte, 0x62, "PUBREL flags 0010");
                    assert_eq!(&rel.body[..2], &r.packet_id.to_be_bytes());
                    sub.send_ok(&frames::ack(kind::PUBCOMP, r.packet_id));
                }
            }
            sub.expect_silence(QUIET);
        }
    }
}

/// v5: [MQTT-4.3.3-12] / v3.1.1: [MQTT-4.3.3-2] — after PUBCOMP the packet id is free: the
/// same id starts a new message that is delivered again.
#[test]
fn a_packet_id_is_reusable_after_pubcomp() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let topic = format!("{}/reuse", unique("t"));
        let mut sub = raw(&hub, level);
        sub.subscribe(1, &[(&topic, 2)]);
        let mut p = raw(&hub, level);
        p.publish(&publish(level, &topic, b"one").qos(2, 9));
        p.publish(&publish(level, &topic, b"two").qos(2, 9));
        assert_eq!(sub.next_publish(WAIT).unwrap().payload, b"one");
        assert_eq!(sub.next_publish(WAIT).unwrap().payload, b"two");
    }
}

/// The same flows with rumqttc as both publisher and subscriber, 3.1.1 and 5: every QoS
/// arrives exactly once, in order.
/// v3.1.1: [MQTT-4.3.1-1] [MQTT-4.3.2-2] [MQTT-4.3.3-2]
/// v5: [MQTT-4.3.2-4] [MQTT-4.3.3-8] [MQTT-4.3.3-10]
#[test]
fn rumqttc_round_trips_every_qos() {
    let hub = Hub::start();
    let addr = hub.mqtt_addr();
    let topic = format!("{}/rq", unique("t"));
    let mut s4 = V4::connect(v4_options(addr, &unique("s4")));
    s4.subscribe(&topic, rumqttc::QoS::ExactlyOnce);
    let mut s5 = V5::connect(v5_options(addr, &unique("s5")));
    s5.subscribe(&topic, rumqttc::v5::mqttbytes::QoS::ExactlyOnce);
    let mut p4 = V4::connect(v4_options(addr, &unique("p4")));
    let mut p5 = V5::connect(v5_options(addr, &unique("p5")));
    let q4 = [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ];
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let q5 = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce];
    for i in 0..3 {
        p4.publish(&topic, q4[i], false, format!("v4-{i}").as_bytes());
        p5.publish(&topic, q5[i], false, format!("v5-{i}").as_bytes());
    }
    let want: Vec<String> = (0..3)
        .flat_map(|i| [format!("v4-{i}"), format!("v5-{i}")])
        .collect();
    let mut got4: Vec<String> = (0..6)
        .map(|_| String::from_utf8(s4.expect_publish().payload.to_vec()).unwrap())
        .collect();
    let mut got5: Vec<String> = (0..6)
        .map(|_| String::from_utf8(s5.expect_publish().payload.to_vec()).unwrap())
        .collect();
    s4.expect_no_publish(QUIET);
    s5.expect_no_publish(QUIET);
    let mut sorted = want.clone();
    sorted.sort();
    got4.sort();
    got5.sort();
    assert_eq!(got4, sorted);
    assert_eq!(got5, sorted);
}

/// v5: [MQTT-4.4.0-2] — a PUBACK with a failure reason from the subscriber still completes the
/// flow: the hub treats the message as acknowledged and does not send it again.
#[test]
fn v5_puback_with_an_error_reason_is_not_retransmitted() {
    let hub = Hub::start();
    let topic = format!("{}/nack", unique("t"));
    let mut sub = raw(&hub, 5);
    sub.subscribe(1, &[(&topic, 1)]);
    let mut p = raw(&hub, 5);
    p.publish(&Publish::v5(&topic, b"m").qos(1, 3));
    let r = sub.expect_publish();
    // PUBACK with reason 0x80 (unspecified error) and no properties.
    sub.send_ok(&frames::frame(
        0x40,
        &[(r.packet_id >> 8) as u8, r.packet_id as u8, 0x80],
    ));
    sub.expect_silence(QUIET);
    sub.ping();
}

/// An MQTT 5 PUBREC body: the packet id and the reason code (absent means 0x00).
fn pubrec(body: &[u8]) -> (u16, u8) {
    (
        u16::from_be_bytes([body[0], body[1]]),
        body.get(2).copied().unwrap_or(0),
    )
}

/// v5: [MQTT-4.3.3-9] — after the hub answered a QoS 2 PUBLISH with a PUBREC reason code of
/// 0x80 or more, the exchange is over: the same packet id in the next PUBLISH is a new message
/// (acknowledged with success and delivered), not a duplicate of the refused one.
#[test]
fn a_packet_id_refused_in_pubrec_is_free_for_a_new_message() {
    let Some(hub) = Hub::start_with(&iothub_e2e::config(&[], &[("max_payload_bytes", 16)])) else {
        return;
    };
    let topic = format!("{}/refused", unique("t"));
    let mut sub = raw(&hub, 5);
    sub.subscribe(1, &[(&topic, 2)]);
    let mut p = raw(&hub, 5);
    // Over the hub's payload limit: refused in the PUBREC (0x97 quota exceeded).
    p.send_ok(&publish(5, &topic, &[7u8; 64]).qos(2, 9).encode());
    let rec = p.expect_kind(kind::PUBREC, "PUBREC of the refused message");
    assert_eq!(pubrec(&rec.body), (9, 0x97));
    // Same packet id, acceptable message: a new exchange.
    p.send_ok(&publish(5, &topic, b"small").qos(2, 9).encode());
    let rec = p.expect_kind(kind::PUBREC, "PUBREC of the new message");
    assert_eq!(pubrec(&rec.body), (9, 0x00));
    p.send_ok(&frames::ack(6, 9));
    p.expect_kind(kind::PUBCOMP, "PUBCOMP");
    let got = sub.next_publish(WAIT).unwrap();
    assert_eq!(got.payload, b"small");
}
