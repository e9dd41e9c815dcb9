//! MQTT 5 features: topic aliases both ways, subscription identifiers, no local, message
//! expiry, receive maximum, maximum packet size, user properties, request/response.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use iothub_e2e::clients::{V5, v5_options};
use iothub_e2e::frames::{self, Connect, PropValue, Publish, kind, prop};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::{Hub, unique};

fn v5(hub: &Hub) -> (RawClient, frames::Connack) {
    RawClient::connected(hub.mqtt_addr(), &Connect::v5(&unique("f"), true))
}

fn sub_v5(hub: &Hub, filter: &str, options: u8) -> RawClient {
    let (mut c, _) = v5(hub);
    c.subscribe(1, &[(filter, options)]);
    c
}

/// The Topic Alias Maximum the hub announced (absent means 0).
fn alias_max(ack: &frames::Connack) -> u16 {
    match ack.prop(prop::TOPIC_ALIAS_MAXIMUM) {
        Some(PropValue::U16(n)) => *n,
        _ => 0,
    }
}

/// v5: [MQTT-3.3.2-12] — the hub accepts every alias from 1 to its Topic Alias Maximum; an
/// alias can be set, used with an empty topic, and re-mapped.
#[test]
fn client_topic_aliases_are_accepted_and_remapped() {
    let hub = Hub::start();
    let base = unique("ta");
    let mut sub = sub_v5(&hub, &format!("{base}/#"), 0);
    let (mut p, ack) = v5(&hub);
    let max = alias_max(&ack);
    assert!(max >= 1, "the hub announces topic aliases: {ack:?}");
    let alias = |n: u16| (prop::TOPIC_ALIAS, PropValue::U16(n));
    let (a, b) = (format!("{base}/a"), format!("{base}/b"));
    let steps: Vec<(String, u16, &[u8], &str)> = vec![
        (a.clone(), 1, b"1", &a),
        (String::new(), 1, b"2", &a),
        (b.clone(), max, b"3", &b),
        (String::new(), max, b"4", &b),
        (b.clone(), 1, b"5", &b),
        (String::new(), 1, b"6", &b),
    ];
    for (topic, n, payload, _) in &steps {
        let mut m = Publish::v5(topic, payload);
        m.props = Some(vec![alias(*n)]);
        p.publish(&m);
    }
    for (_, _, payload, want_topic) in &steps {
        let r = sub.expect_publish();
        assert_eq!(
            (r.topic.as_str(), r.payload.as_slice()),
            (*want_topic, *payload)
        );
        assert!(
            r.prop(prop::TOPIC_ALIAS).is_none(),
            "the subscriber did not allow aliases"
        );
    }
}

/// v5: [MQTT-3.3.2-8] [MQTT-3.3.2-9] — (§3.3.2.3.4) alias 0 or above the announced maximum:
/// DISCONNECT 0x94 (Topic Alias invalid); an empty topic with an alias never set, or an alias
/// from a previous connection ([MQTT-3.3.2-7]): DISCONNECT 0x82.
#[test]
fn invalid_topic_aliases_disconnect() {
    let hub = Hub::start();
    let id = unique("ti");
    // Set alias 1 on one connection; the next connection must not know it.
    let (mut first, ack) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&id, true));
    let max = alias_max(&ack);
    first
        .publish(&Publish::v5(&format!("{id}/x"), b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(1)));
    first.send_ok(&frames::disconnect(Some(0)));
    first.expect_closed(WAIT);
    let cases: Vec<(&str, Publish, u8)> = vec![
        (
            "alias 0",
            Publish::v5("a/b", b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(0)),
            0x94,
        ),
        (
            "alias above the maximum",
            Publish::v5("a/b", b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(max.saturating_add(1))),
            0x94,
        ),
        (
            "unknown alias with an empty topic",
            Publish::v5("", b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(1)),
            0x82,
        ),
    ];
    for (what, publish, code) in cases {
        if what == "alias 0" && !hub.is_iothub() {
            // Mosquitto 2.0.11 answers alias 0 with 0x81 (Malformed Packet).
            eprintln!("note: the alias-0 row is skipped against the external reference");
            continue;
        }
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&id, true));
        c.send_ok(&publish.encode());
        let before = c.expect_closed(WAIT);
        assert_eq!(before.len(), 1, "{what}: one DISCONNECT: {before:?}");
        assert_eq!(
            (before[0].kind(), frames::disconnect_reason(&before[0].body)),
            (kind::DISCONNECT, code),
            "{what}"
        );
    }
    iothub_e2e::raw::assert_serving(hub.mqtt_addr());
}

/// v5: [MQTT-3.1.2-26] [MQTT-3.1.2-27] [MQTT-3.3.2-11] — the hub sends topic aliases only to
/// clients that allow them, never above their maximum, and the aliases it sends resolve to
/// the right topics.
#[test]
fn server_topic_aliases_respect_the_client_maximum() {
    let hub = Hub::start();
    let base = unique("sa");
    let filter = format!("{base}/#");
    let mut none = sub_v5(&hub, &filter, 0);
    let connect =
        Connect::v5(&unique("al"), true).prop(prop::TOPIC_ALIAS_MAXIMUM, PropValue::U16(2));
    let (mut two, _) = RawClient::connected(hub.mqtt_addr(), &connect);
    two.subscribe(1, &[(&filter, 0)]);
    let (mut p, _) = v5(&hub);
    let topics: Vec<String> = ["a", "b", "c", "a", "b", "a", "c", "c"]
        .iter()
        .map(|t| format!("{base}/{t}"))
        .collect();
    for t in &topics {
        p.publish(&Publish::v5(t, t.as_bytes()));
    }
    let mut aliases: HashMap<u16, String> = HashMap::new();
    for t in &topics {
        let r = none.expect_publish();
        assert_eq!(&r.topic, t);
        assert!(
            r.prop(prop::TOPIC_ALIAS).is_none(),
            "no aliases to a client without a maximum"
        );
        let r = two.expect_publish();
        let topic = match r.prop(prop::TOPIC_ALIAS) {
            Some(PropValue::U16(n)) => {
                assert!((1..=2).contains(n), "alias {n} outside 1..=2");
                if !r.topic.is_empty() {
                    aliases.insert(*n, r.topic.clone());
                }
                aliases
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| panic!("alias {n} used before being set"))
            }
            _ => r.topic.clone(),
        };
        assert_eq!(&topic, t, "alias resolution");
        assert_eq!(r.payload, t.as_bytes());
    }
}

/// v5: [MQTT-3.3.4-3] [MQTT-3.3.4-4] — a subscription's identifier (§3.8.2.1.2) comes with each
/// message it delivers; a subscription without one adds none; re-subscribing changes it.
#[test]
fn subscription_identifiers_are_returned_with_messages() {
    let hub = Hub::start();
    let base = unique("si");
    let (mut sub, ack) = v5(&hub);
    assert_ne!(
        ack.prop(prop::SUBSCRIPTION_IDS_AVAILABLE),
        Some(&PropValue::Byte(0))
    );
    let with = format!("{base}/with");
    let without = format!("{base}/without");
    sub.subscribe_with(
        1,
        &[(&with, 0)],
        &[(prop::SUBSCRIPTION_ID, PropValue::Vbi(268_435_455))],
    );
    sub.subscribe(2, &[(&without, 0)]);
    let (mut p, _) = v5(&hub);
    p.publish(&Publish::v5(&with, b"1"));
    p.publish(&Publish::v5(&without, b"2"));
    assert_eq!(
        sub.expect_publish().props_of(prop::SUBSCRIPTION_ID),
        vec![&PropValue::Vbi(268_435_455)]
    );
    assert!(
        sub.expect_publish()
            .props_of(prop::SUBSCRIPTION_ID)
            .is_empty()
    );
    sub.subscribe_with(
        3,
        &[(&with, 0)],
        &[(prop::SUBSCRIPTION_ID, PropValue::Vbi(7))],
    );
    p.publish(&Publish::v5(&with, b"3"));
    assert_eq!(
        sub.expect_publish().props_of(prop::SUBSCRIPTION_ID),
        vec![&PropValue::Vbi(7)]
    );
}

/// v5: [MQTT-3.8.3-3] — with No Local, a client's own messages are not sent back to it (other
/// subscribers still get them; without No Local the publisher gets its own message).
#[test]
fn no_local_keeps_a_clients_own_messages_from_it() {
    let hub = Hub::start();
    let base = unique("nl");
    let (topic, echo) = (format!("{base}/t"), format!("{base}/echo"));
    let (mut c, _) = v5(&hub);
    c.subscribe(1, &[(&topic, 0x04 | 1), (&echo, 1)]);
    let mut other = sub_v5(&hub, &topic, 0);
    c.send_ok(&Publish::v5(&topic, b"mine").encode());
    c.send_ok(&Publish::v5(&echo, b"echo").encode());
    let got = c.publishes_until(&echo);
    assert!(got.is_empty(), "No Local: {got:?}");
    assert_eq!(other.expect_publish().payload, b"mine");
}

/// v5: [MQTT-3.3.2-5] [MQTT-3.3.2-6] — a message whose expiry has passed is not delivered
/// (retained or queued for an offline session); one still valid arrives with the remaining
/// interval, lowered by the time it waited.
#[test]
fn message_expiry_drops_old_messages_and_counts_down() {
    let hub = Hub::start();
    let base = unique("me");
    let expiry = |s: u32| (prop::MESSAGE_EXPIRY, PropValue::U32(s));
    let (short, long) = (format!("{base}/short"), format!("{base}/long"));
    // An offline persistent session with a subscription.
    let id = unique("off");
    let persistent = Connect::v5(&id, false).prop(prop::SESSION_EXPIRY, PropValue::U32(300));
    let (mut off, _) = RawClient::connected(hub.mqtt_addr(), &persistent);
    off.subscribe(1, &[(&format!("{base}/+"), 1)]);
    off.send_ok(&frames::disconnect(Some(0)));
    off.expect_closed(WAIT);
    let (mut p, _) = v5(&hub);
    let mut m = Publish::v5(&short, b"s").retain(true).qos(1, 1);
    m.props = Some(vec![expiry(1)]);
    p.publish(&m);
    let mut m = Publish::v5(&long, b"l").retain(true).qos(1, 2);
    m.props = Some(vec![expiry(100)]);
    p.publish(&m);
    std::thread::sleep(Duration::from_millis(2200));
    let check = |got: Vec<frames::Received>, what: &str| {
        assert_eq!(got.len(), 1, "{what}: only the unexpired message: {got:?}");
        assert_eq!(got[0].topic, long, "{what}");
        match got[0].prop(prop::MESSAGE_EXPIRY) {
            Some(PropValue::U32(left)) => assert!(*left <= 98, "{what}: {left} s left after 2 s"),
            other => panic!("{what}: Message Expiry Interval missing: {other:?}"),
        }
    };
    let (mut back, ack) = RawClient::connected(hub.mqtt_addr(), &persistent);
    assert!(ack.session_present());
    check(back.publishes_for(QUIET), "queued for the offline session");
    let fresh = {
        let (mut c, _) = v5(&hub);
        c.subscribe(1, &[(&format!("{base}/+"), 1)]);
        c.publishes_for(QUIET)
    };
    check(fresh, "retained");
}

/// v5: [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-20]
/// [MQTT-3.3.2-4] — user properties (repeated keys included) arrive unchanged and in order,
/// and so do Response Topic, Correlation Data, Content Type and Payload Format Indicator.
#[test]
fn publish_properties_are_forwarded_unchanged_and_in_order() {
    let hub = Hub::start();
    let topic = format!("{}/props", unique("t"));
    let mut sub = sub_v5(&hub, &topic, 1);
    let (mut p, _) = v5(&hub);
    let user = |k: &str, v: &str| (prop::USER_PROPERTY, PropValue::Pair(k.into(), v.into()));
    let props = vec![
        user("z", "1"),
        user("a", "2"),
        (prop::PAYLOAD_FORMAT, PropValue::Byte(1)),
        user("z", "0"),
        (
            prop::CONTENT_TYPE,
            PropValue::Str("application/json; charset=utf-8".into()),
        ),
        (
            prop::RESPONSE_TOPIC,
            PropValue::Str(format!("{topic}/reply")),
        ),
        (
            prop::CORRELATION_DATA,
            PropValue::Bin(vec![0, 0xFF, 0x10, 0]),
        ),
        user("", ""),
        user("ünï", "çødé"),
    ];
    let mut m = Publish::v5(&topic, b"{}").qos(1, 1);
    m.props = Some(props.clone());
    p.publish(&m);
    let r = sub.expect_publish();
    let users = |list: &[(u8, PropValue)]| -> Vec<PropValue> {
        list.iter()
            .filter(|(i, _)| *i == prop::USER_PROPERTY)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(users(&r.props), users(&props), "user properties in order");
    for id in [
        prop::PAYLOAD_FORMAT,
        prop::CONTENT_TYPE,
        prop::RESPONSE_TOPIC,
        prop::CORRELATION_DATA,
    ] {
        assert_eq!(
            r.prop(id),
            frames::find_prop(&props, id),
            "property {id:#x}"
        );
    }
}

/// Request/response (§4.10) end to end with rumqttc: the responder answers on the request's
/// Response Topic with its Correlation Data, and the requester matches the answer.
#[test]
fn request_response_round_trip_with_rumqttc() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let hub = Hub::start();
    let addr = hub.mqtt_addr();
    let base = unique("rr");
    let (requests, replies) = (format!("{base}/req"), format!("{base}/reply/requester"));
    let mut responder = V5::connect(v5_options(addr, &unique("rs")));
    responder.subscribe(&requests, QoS::AtLeastOnce);
    let mut requester = V5::connect(v5_options(addr, &unique("rq")));
    requester.subscribe(&replies, QoS::AtLeastOnce);
    for n in 0..3u8 {
        let props = PublishProperties {
            response_topic: Some(replies.clone()),
            correlation_data: Some(bytes::Bytes::from(vec![n, 0, 255])),
            ..Default::default()
        };
        requester.publish_with(&requests, QoS::AtLeastOnce, false, &[n], Some(props));
        let req = responder.expect_publish();
        let req_props = req.properties.clone().expect("request properties");
        let answer = PublishProperties {
            correlation_data: req_props.correlation_data.clone(),
            ..Default::default()
        };
        let reply_to = req_props.response_topic.expect("response topic");
        responder.publish_with(
            &reply_to,
            QoS::AtLeastOnce,
            false,
            &[req.payload[0] * 2],
            Some(answer),
        );
        let reply = requester.expect_publish();
        assert_eq!(reply.payload.as_ref(), &[n * 2]);
        assert_eq!(
            reply.properties.and_then(|p| p.correlation_data).as_deref(),
            Some(&[n, 0, 255][..])
        );
    }
}

/// v5: [MQTT-3.3.4-9] [MQTT-3.3.4-10] [MQTT-4.9.0-2] [MQTT-4.9.0-3] — the hub never has more
/// unacknowledged QoS 1/2 messages at a client than its Receive Maximum, sends more as acks
/// come back, and keeps answering other packets meanwhile.
#[test]
fn receive_maximum_limits_unacknowledged_deliveries() {
    let hub = Hub::start();
    if !hub.is_iothub() {
        // Mosquitto 2.0.11 sends a third message while a QoS 2 and a QoS 1 one are unacked.
        eprintln!("note: skipped against the external reference (it exceeds Receive Maximum)");
        return;
    }
    let topic = format!("{}/rm", unique("t"));
    let connect = Connect::v5(&unique("rm"), true).prop(prop::RECEIVE_MAXIMUM, PropValue::U16(2));
    let (mut sub, _) = RawClient::connected(hub.mqtt_addr(), &connect);
    sub.subscribe(1, &[(&topic, 2)]);
    let (mut p, _) = v5(&hub);
    for i in 0..6u8 {
        p.publish(&Publish::v5(&topic, &[i]).qos(1 + i % 2, u16::from(i) + 1));
    }
    let mut received = Vec::new();
    let mut window: Vec<frames::Received> = (0..2).map(|_| sub.expect_publish()).collect();
    while received.len() < 6 {
        // Quota used up: nothing more until an acknowledgement, but PINGREQ is answered.
        sub.ping();
        sub.expect_silence(QUIET);
        let done = window.remove(0);
        if done.qos == 1 {
            sub.send_ok(&frames::ack(kind::PUBACK, done.packet_id));
        } else {
            sub.send_ok(&frames::ack(kind::PUBREC, done.packet_id));
            let rel = sub.expect_kind(kind::PUBREL, "PUBREL");
            assert_eq!(&rel.body[..2], &done.packet_id.to_be_bytes());
            sub.send_ok(&frames::ack(kind::PUBCOMP, done.packet_id));
        }
        received.push(done.payload[0]);
        if received.len() + window.len() < 6 {
            window.push(sub.expect_publish());
        }
    }
    assert_eq!(received, vec![0, 1, 2, 3, 4, 5]);
}

/// v5: [MQTT-3.1.2-24] [MQTT-3.1.2-25] — the hub never sends a packet larger than the
/// client's Maximum Packet Size: a too-large message is skipped for that client (others get
/// it) and the connection stays up.
#[test]
fn client_maximum_packet_size_is_respected() {
    let hub = Hub::start();
    let topic = format!("{}/mps", unique("t"));
    let connect =
        Connect::v5(&unique("mp"), true).prop(prop::MAXIMUM_PACKET_SIZE, PropValue::U32(200));
    let (mut small, _) = RawClient::connected(hub.mqtt_addr(), &connect);
    small.subscribe(1, &[(&topic, 1)]);
    let mut big = sub_v5(&hub, &topic, 1);
    let (mut p, _) = v5(&hub);
    p.publish(&Publish::v5(&topic, &[1u8; 50]).qos(1, 1));
    p.publish(&Publish::v5(&topic, &[2u8; 1000]).qos(1, 2));
    p.publish(&Publish::v5(&topic, &[3u8; 60]).qos(1, 3));
    let lens: Vec<usize> = small
        .publishes_for(QUIET)
        .iter()
        .map(|r| r.payload.len())
        .collect();
    assert_eq!(
        lens,
        vec![50, 60],
        "the 1000-byte message is not sent to the small client"
    );
    let lens: Vec<usize> = big
        .publishes_for(QUIET)
        .iter()
        .map(|r| r.payload.len())
        .collect();
    assert_eq!(lens, vec![50, 1000, 60]);
    small.ping();
}

/// MQTT 5 §3.4.2.1: a QoS 1 publish nobody subscribes to is acknowledged with 0x00 or 0x10 (No
/// matching subscribers), never an error.
#[test]
fn puback_for_a_topic_without_subscribers_is_a_success() {
    let hub = Hub::start();
    let (mut p, _) = v5(&hub);
    p.send_ok(
        &Publish::v5(&format!("{}/nobody", unique("t")), b"x")
            .qos(1, 1)
            .encode(),
    );
    let ack = p.expect_kind(kind::PUBACK, "PUBACK");
    let code = ack.body.get(2).copied().unwrap_or(0);
    assert!(matches!(code, 0x00 | 0x10), "PUBACK reason {code:#x}");
}

/// v5: [MQTT-3.14.2-3] [MQTT-3.14.2-4] — the server's DISCONNECT carries its reason string only
/// when the packet fits the client's Maximum Packet Size; the reason code always goes out.
/// (A client with the default maximum gets the reason string: the control row.)
#[test]
fn server_disconnect_reason_string_respects_the_client_maximum_packet_size() {
    let hub = Hub::start();
    // (client Maximum Packet Size, reason string expected)
    for (max, with_reason) in [(None, true), (Some(16u32), false)] {
        let mut connect = Connect::v5(&unique("mpd"), true);
        if let Some(max) = max {
            connect = connect.prop(prop::MAXIMUM_PACKET_SIZE, PropValue::U32(max));
        }
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        // A second CONNECT is a protocol error the hub answers with DISCONNECT 0x82 and a
        // reason string saying why.
        c.send_ok(&connect.encode());
        let before = c.expect_closed(WAIT);
        let d = before
            .iter()
            .find(|p| p.kind() == kind::DISCONNECT)
            .unwrap_or_else(|| panic!("no DISCONNECT before the close: {before:?}"));
        assert_eq!(frames::disconnect_reason(&d.body), 0x82);
        let props = d
            .body
            .get(1..)
            .and_then(frames::parse_props)
            .map(|(list, _)| list)
            .unwrap_or_default();
        let has_reason = frames::find_prop(&props, prop::REASON_STRING).is_some();
        assert_eq!(has_reason, with_reason, "max {max:?}: {:?}", d.body);
        if let Some(max) = max {
            // fixed header (1 byte + 1 byte of remaining length here) + body
            assert!(
                d.body.len() + 2 <= max as usize,
                "{} bytes",
                d.body.len() + 2
            );
        }
    }
}
