//! Bad input from issue 2's list, byte by byte: each is answered as the specs require (a reason
//! code and/or a close) and the hub keeps serving everyone else afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::frames::{
    self, Connect, PropValue, Publish, Will, frame, kind, prop, put_bin, put_str,
};
use iothub_e2e::raw::{QUIET, RawClient, ReadError, WAIT, assert_serving};
use iothub_e2e::{Hub, config, unique};

const MALFORMED: &[u8] = &[0x81];
const PROTOCOL: &[u8] = &[0x82];
const MALFORMED_OR_PROTOCOL: &[u8] = &[0x81, 0x82];

/// A SUBSCRIBE body with one filter given as raw bytes.
fn subscribe_raw(v5: bool, filter: &[u8], options: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    if v5 {
        body.push(0);
    }
    put_bin(&mut body, filter);
    body.push(options);
    frame(0x82, &body)
}

fn unsubscribe_raw(v5: bool, filter: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1];
    if v5 {
        body.push(0);
    }
    put_bin(&mut body, filter);
    frame(0xA2, &body)
}

fn publish_raw_topic(v5: bool, topic: &[u8]) -> Vec<u8> {
    let mut p = if v5 {
        Publish::v5("", b"x")
    } else {
        Publish::v4("", b"x")
    };
    p.topic = topic.to_vec();
    p.encode()
}

/// One bad-input case: sent after a successful CONNECT at `level`; the connection must close,
/// and an MQTT 5 hub may send one DISCONNECT first whose reason code is in `v5_codes`.
struct Case {
    what: &'static str,
    level: u8,
    bytes: Vec<u8>,
    v5_codes: &'static [u8],
    /// Mosquitto 2.0.11 (the external reference) tolerates this input although the spec says
    /// otherwise; the row is skipped in external mode only.
    reference_deviates: bool,
}

fn both(what: &'static str, v5_codes: &'static [u8], make: impl Fn(bool) -> Vec<u8>) -> [Case; 2] {
    [
        Case {
            what,
            level: 4,
            bytes: make(false),
            v5_codes,
            reference_deviates: false,
        },
        Case {
            what,
            level: 5,
            bytes: make(true),
            v5_codes,
            reference_deviates: false,
        },
    ]
}

fn deviates(cases: impl IntoIterator<Item = Case>) -> Vec<Case> {
    cases
        .into_iter()
        .map(|c| Case {
            reference_deviates: true,
            ..c
        })
        .collect()
}

fn run_cases(hub: &Hub, cases: Vec<Case>) {
    for case in cases {
        if case.reference_deviates && !hub.is_iothub() {
            eprintln!(
                "note: case {:?} skipped: the external reference tolerates it",
                case.what
            );
            continue;
        }
        let connect = Connect {
            level: case.level,
            ..Connect::v4(&unique("bad"), true)
        };
        eprintln!("case: {} (level {})", case.what, case.level);
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        // The hub may close while the bytes are still being written; that is fine.
        let _ = c.send(&case.bytes);
        let before = c.expect_closed(WAIT);
        if case.level == 5 {
            assert!(
                before.len() <= 1,
                "{} (v5): at most one DISCONNECT: {before:?}",
                case.what
            );
            for p in &before {
                assert_eq!(p.kind(), kind::DISCONNECT, "{} (v5): {p:?}", case.what);
                let code = frames::disconnect_reason(&p.body);
                assert!(
                    case.v5_codes.contains(&code),
                    "{} (v5): DISCONNECT {code:#04x}, expected one of {:02x?}",
                    case.what,
                    case.v5_codes
                );
            }
        } else {
            assert!(
                before.is_empty(),
                "{} (3.1.1): closed without a reply: {before:?}",
                case.what
            );
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-2.2.2-1] [MQTT-2.2.2-2] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
/// [MQTT-3.8.3-3] [MQTT-3.8.3-4] [MQTT-3.10.3-2] [MQTT-2.3.1-1] [MQTT-4.8.0-1]
/// v5: [MQTT-2.1.3-1] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] [MQTT-3.14.1-1]
/// [MQTT-3.8.3-2] [MQTT-3.8.3-5] [MQTT-3.10.3-2] [MQTT-2.2.1-3] [MQTT-4.13.1-1]
#[test]
fn malformed_packets_close_the_connection() {
    let hub = Hub::start();
    let mut cases = Vec::new();
    cases.extend(both("remaining length of 5 bytes", MALFORMED, |_| {
        vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]
    }));
    cases.extend(both(
        "topic length past the end of the packet",
        MALFORMED,
        |_| vec![0x30, 0x03, 0x00, 0x05, b'a'],
    ));
    cases.extend(both(
        "SUBSCRIBE without a topic filter",
        MALFORMED_OR_PROTOCOL,
        |v5| frame(0x82, if v5 { &[0, 1, 0] } else { &[0, 1] }),
    ));
    cases.extend(both(
        "UNSUBSCRIBE without a topic filter",
        MALFORMED_OR_PROTOCOL,
        |v5| frame(0xA2, if v5 { &[0, 1, 0] } else { &[0, 1] }),
    ));
    cases.extend(both(
        "SUBSCRIBE requesting QoS 3",
        MALFORMED_OR_PROTOCOL,
        |v5| subscribe_raw(v5, b"a/b", 0x03),
    ));
    cases.extend(both(
        "SUBSCRIBE with fixed-header flags 0000",
        MALFORMED,
        |v5| {
            let mut b = subscribe_raw(v5, b"a/b", 0);
            b[0] = 0x80;
            b
        },
    ));
    cases.extend(both(
        "UNSUBSCRIBE with fixed-header flags 0000",
        MALFORMED,
        |v5| {
            let mut b = unsubscribe_raw(v5, b"a/b");
            b[0] = 0xA0;
            b
        },
    ));
    cases.extend(both("PUBREL with flags 0000", MALFORMED, |_| {
        vec![0x60, 0x02, 0x00, 0x01]
    }));
    cases.extend(deviates(both("PINGREQ with flags 0001", MALFORMED, |_| {
        vec![0xC1, 0x00]
    })));
    cases.extend(both(
        "reserved packet type 0",
        MALFORMED_OR_PROTOCOL,
        |_| vec![0x00, 0x00],
    ));
    cases.extend(both(
        "CONNACK sent by a client",
        MALFORMED_OR_PROTOCOL,
        |_| vec![0x20, 0x02, 0x00, 0x00],
    ));
    cases.extend(both(
        "PUBLISH QoS 1 with packet id 0",
        MALFORMED_OR_PROTOCOL,
        |v5| {
            let p = if v5 {
                Publish::v5("a/b", b"x")
            } else {
                Publish::v4("a/b", b"x")
            };
            p.qos(1, 0).encode()
        },
    ));
    cases.push(Case {
        what: "SUBSCRIBE options with reserved bit 2 (3.1.1)",
        level: 4,
        bytes: subscribe_raw(false, b"a/b", 0x04),
        v5_codes: &[],
        reference_deviates: false,
    });
    cases.push(Case {
        what: "SUBSCRIBE options with reserved bits 6-7",
        level: 5,
        bytes: subscribe_raw(true, b"a/b", 0xC0),
        v5_codes: MALFORMED_OR_PROTOCOL,
        reference_deviates: false,
    });
    cases.push(Case {
        what: "SUBSCRIBE with Retain Handling 3",
        level: 5,
        bytes: subscribe_raw(true, b"a/b", 0x30),
        v5_codes: MALFORMED_OR_PROTOCOL,
        reference_deviates: false,
    });
    cases.push(Case {
        what: "AUTH packet under 3.1.1 (reserved type 15)",
        level: 4,
        bytes: vec![0xF0, 0x00],
        v5_codes: &[],
        reference_deviates: false,
    });
    cases.push(Case {
        what: "DISCONNECT with flags 0001",
        level: 5,
        bytes: vec![0xE1, 0x00],
        v5_codes: MALFORMED,
        reference_deviates: false,
    });
    run_cases(&hub, cases);
}

/// v3.1.1: [MQTT-3.3.1-4]
/// v5: [MQTT-3.3.1-4]
#[test]
fn publish_with_qos_3_closes_the_connection() {
    let hub = Hub::start();
    // Laid out like a QoS 1/2 PUBLISH (topic, packet id, [properties], payload) with both QoS
    // bits set.
    let cases = both("PUBLISH QoS 3", MALFORMED, |v5| {
        let mut body = Vec::new();
        put_str(&mut body, "a/b");
        body.extend_from_slice(&[0, 1]);
        if v5 {
            body.push(0);
        }
        body.push(b'x');
        frame(0x36, &body)
    });
    run_cases(&hub, cases.into_iter().collect());
}

/// v3.1.1: [MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-3.3.2-1] [MQTT-3.8.3-1] [MQTT-3.10.3-1] [MQTT-4.7.3-2]
/// v5: [MQTT-1.5.4-1] [MQTT-1.5.4-2] [MQTT-3.3.2-1] [MQTT-3.8.3-1] [MQTT-3.10.3-1] [MQTT-4.7.3-2]
#[test]
fn invalid_utf8_and_nul_in_topics_close_the_connection() {
    let hub = Hub::start();
    let bad: &[(&str, &[u8])] = &[
        ("invalid UTF-8 (C3 28)", b"a/\xC3\x28"),
        ("UTF-16 surrogate (ED A0 80)", b"a/\xED\xA0\x80"),
        ("overlong encoding (C0 AF)", b"a/\xC0\xAF"),
        ("NUL character", b"a/\x00b"),
    ];
    let mut cases = Vec::new();
    for (what, bytes) in bad {
        let bytes = *bytes;
        cases.extend(both(what, MALFORMED_OR_PROTOCOL, move |v5| {
            publish_raw_topic(v5, bytes)
        }));
        cases.extend(both(what, MALFORMED_OR_PROTOCOL, move |v5| {
            subscribe_raw(v5, bytes, 0)
        }));
        cases.extend(both(what, MALFORMED_OR_PROTOCOL, move |v5| {
            unsubscribe_raw(v5, bytes)
        }));
    }
    run_cases(&hub, cases);
}

/// v3.1.1: [MQTT-3.3.2-2] [MQTT-4.7.3-1]
/// v5: [MQTT-3.3.2-2] [MQTT-4.7.0-1] [MQTT-4.7.3-1]
#[test]
fn wildcards_or_empty_topic_in_publish_close_the_connection() {
    let hub = Hub::start();
    let mut cases = Vec::new();
    for topic in ["a/+", "a/#", "#", "+", "a/b+", "a/#/c"] {
        cases.extend(both(
            "wildcard in a PUBLISH topic",
            &[0x81, 0x82, 0x90],
            move |v5| publish_raw_topic(v5, topic.as_bytes()),
        ));
    }
    // An empty topic: invalid in 3.1.1; in MQTT 5 only valid with a Topic Alias.
    cases.extend(both(
        "empty PUBLISH topic without a Topic Alias",
        PROTOCOL,
        |v5| publish_raw_topic(v5, b""),
    ));
    run_cases(&hub, cases);
}

/// v3.1.1: [MQTT-3.1.0-2] [MQTT-4.8.0-1]
/// v5: [MQTT-3.1.0-2] [MQTT-4.13.1-1]
#[test]
fn a_second_connect_is_a_protocol_error() {
    let hub = Hub::start();
    let id = unique("twice");
    let cases = both("second CONNECT", PROTOCOL, |v5| {
        if v5 {
            Connect::v5(&id, true).encode()
        } else {
            Connect::v4(&id, true).encode()
        }
    });
    run_cases(&hub, cases.into_iter().collect());
}

/// v5: [MQTT-3.3.4-6] [MQTT-2.2.2-1] — malformed or forbidden properties close the connection:
/// §2.2.2.2 (a PUBLISH without its Property Length,
/// a property twice, an unknown property, a
/// property length past the packet), §3.8.2.1.2 (Subscription Identifier 0), §3.14.2.2.2
/// (a non-zero Session Expiry on DISCONNECT after 0 on CONNECT).
#[test]
fn v5_bad_properties_close_the_connection() {
    let hub = Hub::start();
    let v5 = |what: &'static str, codes: &'static [u8], bytes: Vec<u8>| Case {
        what,
        level: 5,
        bytes,
        v5_codes: codes,
        reference_deviates: false,
    };
    let mut dup_alias = Vec::new();
    put_str(&mut dup_alias, "a/b");
    dup_alias.extend_from_slice(&[6, 0x23, 0, 1, 0x23, 0, 2]);
    dup_alias.push(b'x');
    let mut unknown = Vec::new();
    put_str(&mut unknown, "a/b");
    unknown.extend_from_slice(&[2, 0x7F, 0]);
    let mut overrun = Vec::new();
    put_str(&mut overrun, "a/b");
    overrun.extend_from_slice(&[20, 0x01, 1]);
    let mut no_props_q0 = Vec::new();
    put_str(&mut no_props_q0, "a/b");
    let mut no_props_q1 = no_props_q0.clone();
    no_props_q1.extend_from_slice(&[0, 1]);
    let cases = vec![
        v5(
            "QoS 0 PUBLISH ending before its Property Length",
            MALFORMED,
            frame(0x30, &no_props_q0),
        ),
        v5(
            "QoS 1 PUBLISH ending before its Property Length",
            MALFORMED,
            frame(0x32, &no_props_q1),
        ),
        v5(
            "Topic Alias property twice",
            PROTOCOL,
            frame(0x30, &dup_alias),
        ),
        v5(
            "unknown property 0x7F",
            MALFORMED_OR_PROTOCOL,
            frame(0x30, &unknown),
        ),
        v5(
            "property length past the end",
            MALFORMED,
            frame(0x30, &overrun),
        ),
        Case {
            reference_deviates: true,
            ..v5(
                "Subscription Identifier sent by a client in PUBLISH",
                MALFORMED_OR_PROTOCOL,
                Publish::v5("a/b", b"x")
                    .prop(prop::SUBSCRIPTION_ID, PropValue::Vbi(1))
                    .encode(),
            )
        },
        v5(
            "Subscription Identifier 0 in SUBSCRIBE",
            MALFORMED_OR_PROTOCOL,
            frames::subscribe(
                1,
                &[("a/b", 0)],
                Some(&[(prop::SUBSCRIPTION_ID, PropValue::Vbi(0))]),
            ),
        ),
        v5(
            "Session Expiry on DISCONNECT after 0 on CONNECT",
            PROTOCOL,
            frame(0xE0, &[0x00, 5, 0x11, 0, 0, 0, 60]),
        ),
    ];
    run_cases(&hub, cases);
}

/// v3.1.1: [MQTT-3.1.3-4] [MQTT-3.1.3-10] [MQTT-3.1.3-11] [MQTT-1.5.3-1] [MQTT-3.1.4-1]
/// v5: [MQTT-3.1.3-4] [MQTT-3.1.3-11] [MQTT-3.1.3-12] [MQTT-1.5.4-1] [MQTT-3.1.4-1]
#[test]
fn invalid_strings_in_connect_are_refused() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let v5 = level == 5;
        let base = || Connect {
            level,
            ..Connect::v4(&unique("s"), true)
        };
        let mut bad_id = base().encode();
        // Replace the client id's last byte with 0xFF: the id is the last field here.
        *bad_id.last_mut().unwrap() = 0xFF;
        let mut nul_id = base().encode();
        *nul_id.last_mut().unwrap() = 0x00;
        let will = Will {
            topic: "wil\u{1}".into(),
            payload: b"x".to_vec(),
            ..Will::default()
        };
        let mut bad_will = base().will(will).encode();
        // The will topic is "wil\u{1}": turn its last byte into an invalid UTF-8 byte.
        let at = bad_will.windows(4).position(|w| w == b"wil\x01").unwrap() + 3;
        bad_will[at] = 0xFF;
        let mut bad_user = Connect {
            username: Some("use\u{1}".into()),
            ..base()
        }
        .encode();
        let at = bad_user.windows(4).position(|w| w == b"use\x01").unwrap() + 3;
        bad_user[at] = 0xFF;
        for (what, bytes) in [
            ("client id with invalid UTF-8", bad_id),
            ("client id with NUL", nul_id),
            ("will topic with invalid UTF-8", bad_will),
            ("user name with invalid UTF-8", bad_user),
        ] {
            let mut c = RawClient::connect(hub.mqtt_addr());
            let _ = c.send(&bytes);
            let before = c.expect_closed(WAIT);
            for p in &before {
                assert_eq!(p.kind(), kind::CONNACK, "{what} level {level}: {p:?}");
                let code = p.body[1];
                if v5 {
                    assert!(code >= 0x80, "{what}: CONNACK {code:#x} is not a refusal");
                } else {
                    assert_ne!(code, 0, "{what}: must not be accepted");
                }
            }
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1] — an invalid topic filter
/// is refused: SUBACK 0x80 for that filter (the others granted) or the connection closed.
/// v5: [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.3-1] [MQTT-3.9.3-2] — SUBACK code >= 0x80 or
/// DISCONNECT >= 0x80.
#[test]
fn invalid_topic_filters_are_refused() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        for filter in ["a/#/b", "a/b#", "a+/b", "+a", "#/", ""] {
            let connect = Connect {
                level,
                ..Connect::v4(&unique("f"), true)
            };
            let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
            let good = format!("{}/ok", unique("t"));
            let props: &[(u8, PropValue)] = &[];
            c.send_ok(&frames::subscribe(
                7,
                &[(&good, 1), (filter, 1)],
                (level == 5).then_some(props),
            ));
            match c.read_packet(WAIT) {
                Ok(p) if p.kind() == kind::SUBACK => {
                    let (id, codes) = frames::parse_ack_codes(&p.body, level == 5).unwrap();
                    assert_eq!(id, 7);
                    assert_eq!(codes.len(), 2, "{filter:?}: one code per filter");
                    assert_eq!(codes[0], 1, "{filter:?}: the valid filter is granted");
                    assert!(
                        codes[1] >= 0x80,
                        "{filter:?} level {level}: granted {:#x}",
                        codes[1]
                    );
                    c.ping();
                }
                Ok(p) if p.kind() == kind::DISCONNECT && level == 5 => {
                    assert!(frames::disconnect_reason(&p.body) >= 0x80, "{p:?}");
                    c.expect_closed(WAIT);
                }
                Err(ReadError::Closed) => {}
                other => panic!("{filter:?} level {level}: unexpected {other:?}"),
            }
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-4.3.3-2] / v5: [MQTT-4.3.3-10] — a packet id reused while its QoS 2
/// exchange is still open (before PUBREL), even with other content: acknowledged with PUBREC,
/// never delivered twice; QoS 1: after PUBACK the id is free again (v3.1.1: [MQTT-4.3.2-2] /
/// v5: [MQTT-4.3.2-5]) and the second message is a new one.
#[test]
fn packet_id_reused_while_in_flight_is_not_delivered_twice() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let v5 = level == 5;
        let topic = format!("{}/reuse", unique("t"));
        let sentinel = format!("{topic}/end");
        let (mut sub, _) = RawClient::connected(
            hub.mqtt_addr(),
            &Connect {
                level,
                ..Connect::v4(&unique("s"), true)
            },
        );
        assert_eq!(sub.subscribe(1, &[(&topic, 2), (&sentinel, 0)]), vec![2, 0]);
        let (mut p, _) = RawClient::connected(
            hub.mqtt_addr(),
            &Connect {
                level,
                ..Connect::v4(&unique("p"), true)
            },
        );
        let publish = |payload: &[u8], qos: u8| {
            let p = if v5 {
                Publish::v5(&topic, payload)
            } else {
                Publish::v4(&topic, payload)
            };
            p.qos(qos, 42)
        };
        p.send_ok(&publish(b"first", 2).encode());
        let rec = p.expect_kind(kind::PUBREC, "PUBREC");
        assert_eq!(&rec.body[..2], &[0, 42]);
        let mut again = publish(b"second", 2);
        p.send_ok(&again.encode());
        let rec = p.expect_kind(kind::PUBREC, "PUBREC for the reused id");
        assert_eq!(&rec.body[..2], &[0, 42]);
        if v5 && rec.body.len() > 2 {
            assert!(
                matches!(rec.body[2], 0x00 | 0x91),
                "PUBREC reason {:#x}",
                rec.body[2]
            );
        }
        again.dup = true;
        p.send_ok(&again.encode());
        p.expect_kind(kind::PUBREC, "PUBREC for the DUP resend");
        p.send_ok(&frames::ack(kind::PUBREL, 42));
        p.expect_kind(kind::PUBCOMP, "PUBCOMP");
        // QoS 1 with the same id twice, each after its PUBACK: two messages.
        p.publish(&publish(b"third", 1));
        p.publish(&publish(b"fourth", 1));
        let s = if v5 {
            Publish::v5(&sentinel, b"")
        } else {
            Publish::v4(&sentinel, b"")
        };
        p.publish(&s);
        let got: Vec<Vec<u8>> = sub
            .publishes_until(&sentinel)
            .into_iter()
            .map(|r| r.payload)
            .collect();
        // Which of the two contents wins is the receiver's choice (it may deliver at PUBLISH or
        // at PUBREL time, §4.3.3); that only one is delivered is not.
        assert_eq!(got.len(), 3, "level {level}: {got:?}");
        assert!(
            got[0] == b"first" || got[0] == b"second",
            "level {level}: {:?}",
            String::from_utf8_lossy(&got[0])
        );
        assert_eq!(
            &got[1..],
            &[b"third".to_vec(), b"fourth".to_vec()],
            "level {level}"
        );
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-3.1.2-24] / v5: [MQTT-3.1.2-22] — a half-written packet followed by silence
/// is closed by the keep-alive timer.
#[test]
fn half_written_packet_then_silence_is_closed_by_keep_alive() {
    let hub = Hub::start();
    if !hub.is_iothub() {
        // Mosquitto 2.0.11 closes such a connection only after about 6 s, not 1.5 s.
        eprintln!("note: skipped against the external reference (it closes late)");
        return;
    }
    for level in [4u8, 5] {
        let connect = Connect {
            level,
            ..Connect::v4(&unique("half"), true)
        }
        .keep_alive(1);
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        let whole = Publish::v4("a/b", &[7u8; 100]).encode();
        c.send_ok(&whole[..20]);
        let before = c.expect_closed(WAIT);
        for p in &before {
            assert_eq!(p.kind(), kind::DISCONNECT, "{p:?}");
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// A client that opens TCP and sends nothing, or only part of a CONNECT, is closed after
/// `mqtt.connect_timeout_secs` (set to 1 here), without any packet.
#[test]
fn silent_or_partial_connect_is_closed_after_connect_timeout() {
    let Some(hub) = Hub::start_with(&config(&[("connect_timeout_secs", 1)], &[])) else {
        return;
    };
    let partial = Connect::v4(&unique("p"), true).encode();
    for bytes in [&[][..], &partial[..5]] {
        let mut c = RawClient::connect(hub.mqtt_addr());
        c.send_ok(bytes);
        let before = c.expect_closed(WAIT);
        assert!(before.is_empty(), "no packet before CONNECT: {before:?}");
    }
    assert_serving(hub.mqtt_addr());
}

/// Oversize packets: with `mqtt.max_packet_size: 1024` the MQTT 5 CONNACK announces it
/// (§3.2.2.3.6), a bigger packet gets DISCONNECT 0x95 (or a plain close) and a 3.1.1 client a
/// close; a header announcing 256 MB is refused at once, not after waiting for the body.
#[test]
fn oversize_packets_are_refused() {
    let Some(hub) = Hub::start_with(&config(&[("max_packet_size", 1024)], &[])) else {
        return;
    };
    for level in [4u8, 5] {
        let v5 = level == 5;
        let connect = Connect {
            level,
            ..Connect::v4(&unique("big"), true)
        };
        let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &connect);
        if v5 {
            assert_eq!(
                ack.prop(prop::MAXIMUM_PACKET_SIZE),
                Some(&PropValue::U32(1024)),
                "{ack:?}"
            );
        }
        // A packet just under the limit is fine.
        let fits = if v5 {
            Publish::v5("a/b", &[1u8; 900])
        } else {
            Publish::v4("a/b", &[1u8; 900])
        };
        c.publish(&fits.qos(1, 1));
        let big = if v5 {
            Publish::v5("a/b", &[1u8; 2000])
        } else {
            Publish::v4("a/b", &[1u8; 2000])
        };
        let _ = c.send(&big.encode());
        let before = c.expect_closed(WAIT);
        for p in &before {
            assert!(v5, "3.1.1 has no DISCONNECT from the server: {p:?}");
            assert_eq!(
                (p.kind(), frames::disconnect_reason(&p.body)),
                (kind::DISCONNECT, 0x95)
            );
        }
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        let _ = c.send(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
        let before = c.expect_closed(WAIT);
        for p in &before {
            assert_eq!(
                (p.kind(), frames::disconnect_reason(&p.body)),
                (kind::DISCONNECT, 0x95)
            );
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// Many connections that each send garbage, one after the other and at once, leave the hub
/// serving (and the process alive).
#[test]
fn a_burst_of_garbage_connections_leaves_the_hub_serving() {
    let mut hub = Hub::start();
    let addr = hub.mqtt_addr();
    let garbage: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xFF; 64],
        &[0x10, 0x00],
        &[0x10, 0x7F, 0x00, 0x04, b'M', b'Q'],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let bytes = garbage[i % garbage.len()].to_vec();
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr);
                let _ = c.send(&bytes);
                c.drop_connection();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for bytes in garbage {
        let mut c = RawClient::connect(addr);
        let _ = c.send(bytes);
        // Either closed at once or left waiting for more bytes; never a CONNACK success.
        if let Ok(p) = c.read_packet(QUIET) {
            assert!(
                p.kind() != kind::CONNACK || p.body.get(1) != Some(&0),
                "{p:?}"
            );
        }
    }
    assert!(!hub.has_exited(), "the hub process died: {}", hub.logs());
    assert_serving(addr);
}
