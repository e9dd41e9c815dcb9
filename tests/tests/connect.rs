//! CONNECT / CONNACK, keep-alive and PINGREQ, for MQTT 3.1.1 and 5, in raw bytes so that every
//! flag and reason code the hub sends is checked as sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use iothub_e2e::frames::{Connect, PropValue, Will, kind, prop};
use iothub_e2e::raw::{QUIET, RawClient, WAIT, assert_serving};
use iothub_e2e::{Hub, config, unique};

/// Every packet sent before a close that follows a refused CONNECT must be a CONNACK with a
/// failure code (>= 0x80 for MQTT 5, 1..=5 for 3.1.1) — never a success.
fn assert_only_refusals(before_close: &[iothub_e2e::raw::Packet], v5: bool, what: &str) {
    for p in before_close {
        assert_eq!(
            p.kind(),
            kind::CONNACK,
            "{what}: only a CONNACK may precede the close: {p:?}"
        );
        let code = p.body.get(1).copied().unwrap_or(0);
        if v5 {
            assert!(
                code >= 0x80,
                "{what}: CONNACK code {code:#x} is not a refusal"
            );
        } else {
            assert!(
                (1..=5).contains(&code),
                "{what}: CONNACK code {code:#x} is not a refusal"
            );
        }
        assert_eq!(
            p.body[0] & 0x01,
            0,
            "{what}: Session Present must be 0 on a refusal"
        );
    }
}

/// v3.1.1: [MQTT-3.1.4-4] [MQTT-3.2.0-1] [MQTT-3.2.2-1] [MQTT-3.1.4-3]
/// v5: [MQTT-3.1.4-5] [MQTT-3.2.0-1] [MQTT-3.2.2-1] [MQTT-3.2.2-2]
#[test]
fn connack_success_is_the_first_packet_with_clean_flags() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let connect = Connect {
            level,
            ..Connect::v4(&unique("ok"), true)
        };
        let ack = c.handshake(&connect);
        assert_eq!(ack.code, 0, "level {level}");
        assert_eq!(
            ack.flags, 0,
            "level {level}: reserved bits and Session Present are 0"
        );
        c.ping();
    }
}

/// v3.1.1: [MQTT-3.1.2-2] [MQTT-3.2.2-4] [MQTT-3.2.2-5]
/// v5: [MQTT-3.1.2-2] [MQTT-3.2.2-6] [MQTT-3.2.2-7] [MQTT-4.13.2-1]
#[test]
fn unsupported_protocol_levels_are_refused_with_0x01_and_closed() {
    let hub = Hub::start();
    // (protocol name, level, iothub-only): MQIsdp/3 is MQTT 3.1, which Mosquitto still serves
    // but iothub does not; the others no broker supports.
    let cases: &[(&str, u8, bool)] = &[
        ("MQIsdp", 3, true),
        ("MQTT", 3, false),
        ("MQTT", 6, false),
        ("MQTT", 0, false),
        ("MQTT", 255, false),
    ];
    for (name, level, iothub_only) in cases {
        if *iothub_only && !hub.is_iothub() {
            eprintln!("note: level {level} ({name}) row skipped against the external broker");
            continue;
        }
        let mut c = RawClient::connect(hub.mqtt_addr());
        let mut connect = Connect::v4(&unique("lvl"), true);
        connect.protocol_name = (*name).into();
        connect.level = *level;
        c.send_ok(&connect.encode());
        let before = c.expect_closed(WAIT);
        assert_eq!(
            before.len(),
            1,
            "{name}/{level}: one CONNACK then close: {before:?}"
        );
        assert_eq!(before[0].first_byte, 0x20, "{name}/{level}: CONNACK");
        assert_eq!(
            before[0].body,
            vec![0x00, 0x01],
            "{name}/{level}: 3.1.1 CONNACK 0x01"
        );
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-3.1.2-1] [MQTT-3.1.4-1]
/// v5: [MQTT-3.1.2-1] [MQTT-3.1.4-1]
#[test]
fn wrong_protocol_name_is_closed_without_success() {
    let hub = Hub::start();
    for (name, level) in [("MQTX", 4u8), ("mqtt", 4), ("MQTT5", 5), ("", 5)] {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let mut connect = Connect::v4(&unique("name"), true);
        connect.protocol_name = name.into();
        connect.level = level;
        c.send_ok(&connect.encode());
        let before = c.expect_closed(WAIT);
        for p in &before {
            assert_eq!(p.kind(), kind::CONNACK, "{name}: {p:?}");
            assert_ne!(p.body.get(1), Some(&0), "{name}: must not be accepted");
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-3.1.2-3] [MQTT-3.1.4-1] [MQTT-3.2.2-6]
/// v5: [MQTT-3.1.2-3] [MQTT-3.1.4-1] [MQTT-3.2.2-7]
#[test]
fn connect_reserved_flag_set_is_refused() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let connect = Connect {
            level,
            extra_flags: 0x01,
            ..Connect::v4(&unique("rsv"), true)
        };
        c.send_ok(&connect.encode());
        let before = c.expect_closed(WAIT);
        assert_only_refusals(&before, level == 5, "reserved connect flag");
    }
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] [MQTT-3.1.2-14] [MQTT-3.1.2-22] [MQTT-3.1.4-1]
/// v5: [MQTT-3.1.2-11] [MQTT-3.1.2-12] [MQTT-3.1.2-13] [MQTT-3.1.4-1]
#[test]
fn inconsistent_connect_flags_are_refused() {
    let hub = Hub::start();
    // (what, level, extra flags, will)
    let bad_will = Will {
        topic: "w".into(),
        payload: b"x".to_vec(),
        qos: 3,
        retain: false,
        props: Vec::new(),
    };
    let cases: Vec<(&str, u8, u8, Option<Will>)> = vec![
        ("will QoS 1 without will flag", 4, 0x08, None),
        ("will QoS 1 without will flag", 5, 0x08, None),
        ("will retain without will flag", 4, 0x20, None),
        ("will retain without will flag", 5, 0x20, None),
        ("will QoS 3", 4, 0, Some(bad_will.clone())),
        ("will QoS 3", 5, 0, Some(bad_will)),
    ];
    for (what, level, extra, will) in cases {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let connect = Connect {
            level,
            extra_flags: extra,
            will,
            ..Connect::v4(&unique("flg"), true)
        };
        c.send_ok(&connect.encode());
        let before = c.expect_closed(WAIT);
        assert_only_refusals(&before, level == 5, what);
    }
    // 3.1.1 only: a password without a user name [MQTT-3.1.2-22].
    let mut c = RawClient::connect(hub.mqtt_addr());
    let connect = Connect {
        password: Some(b"secret".to_vec()),
        ..Connect::v4(&unique("pwd"), true)
    };
    c.send_ok(&connect.encode());
    let before = c.expect_closed(WAIT);
    assert_only_refusals(&before, false, "password without user name");
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-3.1.3-8] [MQTT-3.1.3-9] [MQTT-3.2.2-4] [MQTT-3.2.2-5]
#[test]
fn v4_empty_client_id_with_clean_session_0_is_refused_with_0x02() {
    let hub = Hub::start();
    let mut c = RawClient::connect(hub.mqtt_addr());
    c.send_ok(&Connect::v4("", false).encode());
    let before = c.expect_closed(WAIT);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].first_byte, 0x20);
    assert_eq!(
        before[0].body,
        vec![0x00, 0x02],
        "identifier rejected, Session Present 0"
    );
    assert_serving(hub.mqtt_addr());
}

/// v3.1.1: [MQTT-3.1.3-6] [MQTT-3.1.3-7]
#[test]
fn v4_empty_client_id_with_clean_session_1_is_accepted_and_served() {
    let hub = Hub::start();
    let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &Connect::v4("", true));
    assert!(!ack.session_present());
    let topic = format!("{}/empty-id", unique("t"));
    assert_eq!(c.subscribe(1, &[(&topic, 0)]), vec![0]);
    c.publish(&iothub_e2e::frames::Publish::v4(&topic, b"hi"));
    assert_eq!(c.expect_publish().payload, b"hi");
}

/// v5: [MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16]
#[test]
fn v5_empty_client_ids_get_distinct_assigned_identifiers() {
    let hub = Hub::start();
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let (c, ack) = RawClient::connected(hub.mqtt_addr(), &Connect::v5("", true));
        match ack.prop(prop::ASSIGNED_CLIENT_ID) {
            Some(PropValue::Str(id)) if !id.is_empty() => ids.push(id.clone()),
            other => panic!("CONNACK without an Assigned Client Identifier: {other:?} ({ack:?})"),
        }
        conns.push(c);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "assigned ids must be unique: {ids:?}");
    // The assigned id names the session: reconnecting with it finds nothing stored (clean start)
    // but is accepted.
    let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&ids[0], true));
    assert!(!ack.session_present());
}

/// v3.1.1: [MQTT-3.1.3-5]
/// v5: [MQTT-3.1.3-5]
#[test]
fn client_ids_of_1_to_23_alphanumerics_are_accepted() {
    let hub = Hub::start();
    let long = unique("Z0123456789abcdefghijkl");
    assert_eq!(long.len(), 23);
    let ids = [unique("a"), unique("0"), long, unique("AbC")];
    for level in [4u8, 5] {
        for id in &ids {
            let connect = Connect {
                level,
                ..Connect::v4(id, true)
            };
            let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
            c.ping();
        }
    }
}

/// v3.1.1: [MQTT-3.12.4-1]
/// v5: [MQTT-3.12.4-1]
#[test]
fn pingreq_is_answered_with_pingresp() {
    let hub = Hub::start();
    for connect in [
        Connect::v4(&unique("p"), true),
        Connect::v5(&unique("p"), true),
    ] {
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        for _ in 0..3 {
            c.send_ok(&iothub_e2e::frames::pingreq());
            let p = c.expect_kind(kind::PINGRESP, "PINGRESP");
            assert_eq!((p.first_byte, p.body.len()), (0xD0, 0));
        }
    }
}

/// v3.1.1: [MQTT-3.1.2-24]
/// v5: [MQTT-3.1.2-22] [MQTT-3.2.2-22]
#[test]
fn keep_alive_expiry_closes_a_silent_client_but_not_a_pinging_one() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let connect = Connect {
            level,
            ..Connect::v4(&unique("ka"), true)
        }
        .keep_alive(1);
        let (mut c, ack) = RawClient::connected(hub.mqtt_addr(), &connect);
        assert!(
            ack.prop(prop::SERVER_KEEP_ALIVE)
                .is_none_or(|v| *v == PropValue::U16(1)),
            "a server keep alive other than 1 would change the test: {ack:?}"
        );
        // Packets every half keep-alive keep the connection open for well over 1.5 x 1 s.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(500));
            c.ping();
        }
        // Then silence: the hub must close within 1.5 x keep-alive (WAIT is the upper bound).
        let before = c.expect_closed(WAIT);
        for p in &before {
            assert_eq!(p.kind(), kind::DISCONNECT, "{p:?}");
            assert_eq!(
                p.body.first(),
                Some(&0x8D),
                "v5 DISCONNECT on keep-alive: 0x8D"
            );
        }
    }
    assert_serving(hub.mqtt_addr());
}

/// v5: [MQTT-3.1.2-28] — no Response Information unless requested.
#[test]
fn v5_no_response_information_unless_requested() {
    let hub = Hub::start();
    let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&unique("ri"), true));
    assert!(ack.prop(prop::RESPONSE_INFO).is_none(), "{ack:?}");
    let connect =
        Connect::v5(&unique("ri"), true).prop(prop::REQUEST_RESPONSE_INFO, PropValue::Byte(0));
    let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &connect);
    assert!(ack.prop(prop::RESPONSE_INFO).is_none(), "{ack:?}");
}

/// v5: [MQTT-3.1.2-29] — with Request Problem Information 0, no Reason String or User
/// Property on SUBACK, PUBACK, PUBREC, PUBCOMP or UNSUBACK.
#[test]
fn v5_request_problem_information_0_keeps_acks_bare() {
    let hub = Hub::start();
    let connect =
        Connect::v5(&unique("rp"), true).prop(prop::REQUEST_PROBLEM_INFO, PropValue::Byte(0));
    let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
    let topic = format!("{}/rp", unique("t"));
    let no_sub = format!("{}/nobody", unique("t"));
    let check = |p: &iothub_e2e::raw::Packet, props_at: usize| {
        if p.body.len() > props_at {
            let (props, _) = iothub_e2e::frames::parse_props(&p.body[props_at..]).unwrap();
            assert!(
                props
                    .iter()
                    .all(|(id, _)| *id != prop::REASON_STRING && *id != prop::USER_PROPERTY),
                "problem information was not requested: {props:?} in type {}",
                p.kind()
            );
        }
    };
    c.send_ok(&iothub_e2e::frames::subscribe(
        1,
        &[(&topic, 1), ("bad/#/filter", 0)],
        Some(&[]),
    ));
    match c.read_packet(WAIT) {
        Ok(p) if p.kind() == kind::SUBACK => check(&p, 2),
        // Closing on the invalid filter is allowed too; then nothing more to check here.
        Ok(p) if p.kind() == kind::DISCONNECT => return,
        Err(iothub_e2e::raw::ReadError::Closed) => return,
        other => panic!("expected SUBACK, got {other:?}"),
    }
    for (qos, t) in [(1u8, &no_sub), (2, &no_sub)] {
        c.send_ok(
            &iothub_e2e::frames::Publish::v5(t, b"x")
                .qos(qos, 5)
                .encode(),
        );
        let p = c.expect_packet("PUBACK/PUBREC");
        check(&p, 3);
        if qos == 2 {
            c.send_ok(&iothub_e2e::frames::ack(kind::PUBREL, 5));
            let p = c.expect_kind(kind::PUBCOMP, "PUBCOMP");
            check(&p, 3);
        }
    }
    c.send_ok(&iothub_e2e::frames::unsubscribe(
        9,
        &["never/subscribed"],
        true,
    ));
    let p = c.expect_kind(kind::UNSUBACK, "UNSUBACK");
    check(&p, 2);
}

/// v5: [MQTT-4.12.0-1] [MQTT-4.12.0-6] [MQTT-3.2.2-7] — an authentication method the hub
/// does not support: refused (0x8C or 0x87) and closed, never an AUTH exchange.
#[test]
fn v5_unsupported_authentication_method_is_refused() {
    let hub = Hub::start();
    let mut c = RawClient::connect(hub.mqtt_addr());
    let connect = Connect::v5(&unique("au"), true)
        .prop(prop::AUTH_METHOD, PropValue::Str("X-E2E-UNKNOWN".into()));
    c.send_ok(&connect.encode());
    let before = c.expect_closed(WAIT);
    for p in &before {
        assert_eq!(p.kind(), kind::CONNACK, "no AUTH may be sent: {p:?}");
        let code = p.body[1];
        assert!(
            matches!(code, 0x8C | 0x87),
            "CONNACK {code:#x}, want 0x8C or 0x87"
        );
    }
    assert_serving(hub.mqtt_addr());
}

/// v5: [MQTT-3.2.2-21] [MQTT-3.2.2-22] — the MQTT 5 CONNACK announces the limits configured
/// for the hub (§3.2.2.3): Receive Maximum, Topic Alias Maximum, Maximum Packet Size, and caps
/// Session Expiry and Keep Alive (Server Keep Alive) at the configured maxima.
#[test]
fn v5_connack_announces_the_configured_limits() {
    let yaml = config(
        &[("max_packet_size", 20_000)],
        &[
            ("receive_maximum", 7),
            ("topic_alias_maximum", 5),
            ("max_session_expiry_secs", 30),
            ("max_keep_alive_secs", 20),
        ],
    );
    let Some(hub) = Hub::start_with(&yaml) else {
        return;
    };
    let connect = Connect::v5(&unique("lim"), true)
        .keep_alive(100)
        .prop(prop::SESSION_EXPIRY, PropValue::U32(3600));
    let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &connect);
    let cases = [
        ("Receive Maximum", prop::RECEIVE_MAXIMUM, PropValue::U16(7)),
        (
            "Topic Alias Maximum",
            prop::TOPIC_ALIAS_MAXIMUM,
            PropValue::U16(5),
        ),
        (
            "Maximum Packet Size",
            prop::MAXIMUM_PACKET_SIZE,
            PropValue::U32(20_000),
        ),
        (
            "Session Expiry Interval",
            prop::SESSION_EXPIRY,
            PropValue::U32(30),
        ),
        (
            "Server Keep Alive",
            prop::SERVER_KEEP_ALIVE,
            PropValue::U16(20),
        ),
    ];
    for (what, id, want) in cases {
        assert_eq!(ack.prop(id), Some(&want), "{what} in {ack:?}");
    }
    // Within the limits nothing is overridden.
    let connect = Connect::v5(&unique("lim"), true)
        .keep_alive(10)
        .prop(prop::SESSION_EXPIRY, PropValue::U32(10));
    let (_c, ack) = RawClient::connected(hub.mqtt_addr(), &connect);
    assert!(
        ack.prop(prop::SERVER_KEEP_ALIVE)
            .is_none_or(|v| *v == PropValue::U16(10)),
        "{ack:?}"
    );
    assert!(
        ack.prop(prop::SESSION_EXPIRY)
            .is_none_or(|v| *v == PropValue::U32(10)),
        "{ack:?}"
    );
}

/// v3.1.1: [MQTT-3.1.4-5] — data sent after a refused CONNECT is not processed: a PUBLISH
/// pipelined behind a refused CONNECT never reaches a subscriber.
/// v5: [MQTT-3.1.4-6]
#[test]
fn data_after_a_refused_connect_is_not_processed() {
    let hub = Hub::start();
    let topic = format!("{}/after-refusal", unique("t"));
    let (mut sub, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("s"), true));
    sub.subscribe(1, &[(&topic, 0)]);
    for (level, refused) in [
        (4u8, Connect::v4("", false)),
        (
            5,
            Connect {
                level: 6,
                ..Connect::v4(&unique("r"), true)
            },
        ),
    ] {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let mut bytes = refused.encode();
        let publish = if level == 5 {
            iothub_e2e::frames::Publish::v5(&topic, b"smuggled")
        } else {
            iothub_e2e::frames::Publish::v4(&topic, b"smuggled")
        };
        bytes.extend_from_slice(&publish.encode());
        c.send_ok(&bytes);
        c.expect_closed(WAIT);
    }
    let sentinel = format!("{topic}/end");
    sub.send_ok(&iothub_e2e::frames::subscribe(2, &[(&sentinel, 0)], None));
    sub.expect_kind(kind::SUBACK, "SUBACK");
    let (mut p, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("p"), true));
    p.publish(&iothub_e2e::frames::Publish::v4(&sentinel, b"end"));
    assert!(sub.publishes_until(&sentinel).is_empty());
    sub.expect_silence(QUIET);
}

/// Clients need not wait for CONNACK: CONNECT, SUBSCRIBE and PUBLISH written at once are all
/// processed, and CONNACK comes first.
/// v3.1.1: [MQTT-3.2.0-1] §3.1.4 / v5: [MQTT-3.2.0-1] [MQTT-3.2.0-2] §3.1.4
#[test]
fn packets_pipelined_behind_connect_are_processed_after_connack() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let id = unique("pipe");
        let topic = format!("{id}/self");
        let connect = Connect {
            level,
            ..Connect::v4(&id, true)
        };
        let props: &[(u8, PropValue)] = &[];
        let publish = if level == 5 {
            iothub_e2e::frames::Publish::v5(&topic, b"me")
        } else {
            iothub_e2e::frames::Publish::v4(&topic, b"me")
        };
        let mut bytes = connect.encode();
        bytes.extend_from_slice(&iothub_e2e::frames::subscribe(
            1,
            &[(&topic, 0)],
            (level == 5).then_some(props),
        ));
        bytes.extend_from_slice(&publish.qos(1, 2).encode());
        let mut c = RawClient::connect(hub.mqtt_addr());
        c.v5 = level == 5;
        c.send_ok(&bytes);
        let first = c.expect_packet("CONNACK");
        assert_eq!(
            (first.kind(), first.body.get(1)),
            (kind::CONNACK, Some(&0)),
            "level {level}"
        );
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let p = c.read_packet(WAIT).unwrap_or_else(|e| {
                panic!("level {level}: after CONNACK got {kinds:?}, then {e:?}")
            });
            assert_ne!(p.kind(), kind::CONNACK, "only one CONNACK");
            kinds.push(p.kind());
        }
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            vec![kind::PUBLISH, kind::PUBACK, kind::SUBACK],
            "level {level}"
        );
    }
}

/// Keep Alive 0 turns the keep-alive mechanism off (§3.1.2.10): a silent 3.1.1 client stays
/// connected; an MQTT 5 client too unless the hub announced a Server Keep Alive.
#[test]
fn keep_alive_zero_disables_the_timeout() {
    let hub = Hub::start();
    let mut clients = Vec::new();
    for level in [4u8, 5] {
        let connect = Connect {
            level,
            ..Connect::v4(&unique("ka0"), true)
        }
        .keep_alive(0);
        let (c, ack) = RawClient::connected(hub.mqtt_addr(), &connect);
        if ack.prop(prop::SERVER_KEEP_ALIVE).is_some() {
            eprintln!("note: level {level}: the hub set a Server Keep Alive; not checked");
            continue;
        }
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(2500));
    for mut c in clients {
        c.ping();
    }
}
