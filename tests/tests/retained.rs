//! Retained messages: set, replace, delete, the RETAIN flag on delivery, Retain Handling and
//! Retain As Published.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::frames::{Connect, Publish, Received};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::tools::{MosquittoSub, mosquitto_pub};
use iothub_e2e::{Hub, unique};

fn raw(hub: &Hub, level: u8) -> RawClient {
    let connect = Connect {
        level,
        ..Connect::v4(&unique("r"), true)
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

/// Publishes at QoS 1 on an unrelated topic and waits for the PUBACK: the hub handles one
/// connection's packets in order, so the publishes before it have taken effect when it returns.
fn barrier(p: &mut RawClient, level: u8) {
    p.publish(&publish(level, &format!("{}/barrier", unique("b")), b"").qos(1, 0xFFF0));
}

/// Subscribes a fresh client to `filter` and returns the retained messages it is sent.
fn retained_for(hub: &Hub, level: u8, filter: &str, qos: u8) -> Vec<Received> {
    let mut c = raw(hub, level);
    c.subscribe(1, &[(filter, qos)]);
    c.publishes_for(QUIET)
}

/// v3.1.1: [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] [MQTT-3.1.2-7]
/// v5: [MQTT-3.3.1-5] [MQTT-3.3.1-9]
#[test]
fn retained_message_goes_to_new_subscribers_with_retain_set() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let topic = format!("{}/r", unique("t"));
        {
            // The publisher's session ends right away; the retained message stays.
            let mut p = raw(&hub, level);
            p.publish(&publish(level, &topic, b"kept").retain(true).qos(1, 1));
            p.send_ok(&iothub_e2e::frames::disconnect(None));
        }
        for sub_level in [4u8, 5] {
            let got = retained_for(&hub, sub_level, &topic, 1);
            assert_eq!(got.len(), 1, "level {level}->{sub_level}: {got:?}");
            assert!(
                got[0].retain,
                "RETAIN 1 on a message sent because of a new subscription"
            );
            assert_eq!((got[0].payload.as_slice(), got[0].qos), (&b"kept"[..], 1));
        }
    }
}

/// v3.1.1: [MQTT-3.3.1-5] [MQTT-3.3.1-7] / v5: [MQTT-3.3.1-5] — a newer retained message
/// replaces the stored one, whatever its QoS.
#[test]
fn a_newer_retained_message_replaces_the_old_one() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let topic = format!("{}/r", unique("t"));
        let mut p = raw(&hub, level);
        p.publish(&publish(level, &topic, b"old").retain(true).qos(2, 1));
        p.publish(&publish(level, &topic, b"new").retain(true));
        barrier(&mut p, level);
        let got = retained_for(&hub, level, &topic, 2);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].payload.as_slice(), got[0].qos), (&b"new"[..], 0));
    }
}

/// v3.1.1: [MQTT-3.3.1-10] [MQTT-3.3.1-11] / v5: [MQTT-3.3.1-6] [MQTT-3.3.1-7] — an empty
/// retained payload is delivered normally to current subscribers and deletes the stored one.
#[test]
fn an_empty_retained_payload_deletes_the_retained_message() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let base = unique("t");
        let (gone, kept) = (format!("{base}/gone"), format!("{base}/kept"));
        let mut p = raw(&hub, level);
        p.publish(&publish(level, &gone, b"x").retain(true));
        p.publish(&publish(level, &kept, b"y").retain(true));
        barrier(&mut p, level);
        let mut live = raw(&hub, level);
        live.subscribe(1, &[(&gone, 0)]);
        assert_eq!(
            live.expect_publish().payload,
            b"x",
            "retained copy at subscribe time"
        );
        p.publish(&publish(level, &gone, b"").retain(true));
        barrier(&mut p, level);
        let r = live.expect_publish();
        assert!(
            r.payload.is_empty(),
            "the delete is delivered as a normal message"
        );
        let got: Vec<String> = retained_for(&hub, level, &format!("{base}/+"), 0)
            .into_iter()
            .map(|r| r.topic)
            .collect();
        assert_eq!(got, vec![kept], "level {level}");
    }
}

/// v3.1.1: [MQTT-3.3.1-12] / v5: [MQTT-3.3.1-8] — a publish without RETAIN neither stores nor
/// replaces nor deletes the retained message.
#[test]
fn a_non_retained_publish_leaves_the_retained_message_alone() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let base = unique("t");
        let (set, unset) = (format!("{base}/set"), format!("{base}/unset"));
        let mut p = raw(&hub, level);
        p.publish(&publish(level, &set, b"retained").retain(true));
        p.publish(&publish(level, &set, b"live"));
        p.publish(&publish(level, &set, b""));
        p.publish(&publish(level, &unset, b"live"));
        barrier(&mut p, level);
        let got = retained_for(&hub, level, &format!("{base}/#"), 0);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].topic.as_str(), got[0].payload.as_slice()),
            (set.as_str(), &b"retained"[..])
        );
    }
}

/// v3.1.1: [MQTT-3.3.1-9] / v5: [MQTT-3.3.1-12] [MQTT-3.3.1-13] — on a live delivery RETAIN
/// is 0, unless an MQTT 5 subscription asked for Retain As Published.
#[test]
fn retain_flag_on_live_delivery_follows_retain_as_published() {
    let hub = Hub::start();
    // (subscriber level, subscription options, RETAIN expected on a live retained publish)
    let cases: &[(u8, u8, bool)] = &[(4, 0x00, false), (5, 0x00, false), (5, 0x08, true)];
    for (level, options, want) in cases {
        let topic = format!("{}/live", unique("t"));
        let mut sub = raw(&hub, *level);
        sub.subscribe(1, &[(&topic, *options)]);
        let mut p = raw(&hub, 5);
        p.publish(&Publish::v5(&topic, b"r").retain(true));
        p.publish(&Publish::v5(&topic, b"n"));
        let r = sub.expect_publish();
        assert_eq!(
            (r.payload.as_slice(), r.retain),
            (&b"r"[..], *want),
            "{level} {options:#x}"
        );
        let r = sub.expect_publish();
        assert_eq!(
            (r.payload.as_slice(), r.retain),
            (&b"n"[..], false),
            "{level} {options:#x}"
        );
    }
}

/// v5: [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.8.4-4] — Retain Handling 0 sends
/// retained messages on every SUBSCRIBE, 1 only when the subscription is new, 2 never.
/// v3.1.1: [MQTT-3.8.4-3] — re-subscribing re-sends the retained messages.
#[test]
fn retain_handling_decides_when_retained_messages_are_sent() {
    let hub = Hub::start();
    // (level, options, retained copies on first SUBSCRIBE, on the repeated SUBSCRIBE)
    let cases: &[(u8, u8, usize, usize)] = &[
        (4, 0x00, 1, 1),
        (5, 0x00, 1, 1),
        (5, 0x10, 1, 0),
        (5, 0x20, 0, 0),
    ];
    for (level, options, first, again) in cases {
        let topic = format!("{}/rh", unique("t"));
        let mut p = raw(&hub, 5);
        p.publish(&Publish::v5(&topic, b"r").retain(true));
        barrier(&mut p, 5);
        let mut sub = raw(&hub, *level);
        sub.subscribe(1, &[(&topic, *options)]);
        assert_eq!(
            sub.publishes_for(QUIET).len(),
            *first,
            "level {level} options {options:#x}"
        );
        sub.subscribe(2, &[(&topic, *options)]);
        assert_eq!(
            sub.publishes_for(QUIET).len(),
            *again,
            "again: level {level} options {options:#x}"
        );
        // Live messages flow whatever the Retain Handling.
        p.publish(&Publish::v5(&topic, b"live"));
        assert_eq!(sub.expect_publish().payload, b"live");
    }
}

/// v3.1.1: [MQTT-3.3.1-5] [MQTT-3.8.4-6] / v5: [MQTT-3.8.4-8] — a retained message is sent at
/// the lower of its stored QoS and the subscription's.
#[test]
fn retained_delivery_qos_is_the_minimum_of_stored_and_granted() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        let topic = format!("{}/rq", unique("t"));
        let mut p = raw(&hub, level);
        p.publish(&publish(level, &topic, b"q1").retain(true).qos(1, 5));
        for (sub_qos, want) in [(0u8, 0u8), (1, 1), (2, 1)] {
            let got = retained_for(&hub, level, &topic, sub_qos);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].qos, want, "level {level} subscription QoS {sub_qos}");
        }
    }
}

/// A wildcard subscription receives every matching retained message, and only those.
/// v3.1.1: [MQTT-3.3.1-6] [MQTT-3.3.2-3] / v5: [MQTT-3.3.1-9] [MQTT-3.3.2-3]
#[test]
fn wildcard_subscriptions_get_exactly_the_matching_retained_messages() {
    let hub = Hub::start();
    let base = unique("t");
    let mut p = raw(&hub, 4);
    let topics = ["a/x", "b/x", "a/y", "a/x/deeper", "c"];
    for t in topics {
        p.publish(&Publish::v4(&format!("{base}/{t}"), t.as_bytes()).retain(true));
    }
    barrier(&mut p, 4);
    let cases: &[(&str, &[&str])] = &[
        ("+/x", &["a/x", "b/x"]),
        ("a/#", &["a/x", "a/y", "a/x/deeper"]),
        ("#", &["a/x", "b/x", "a/y", "a/x/deeper", "c"]),
        ("+", &["c"]),
        ("a/x", &["a/x"]),
        ("d/#", &[]),
    ];
    for (filter, want) in cases {
        let mut got: Vec<String> = retained_for(&hub, 4, &format!("{base}/{filter}"), 0)
            .into_iter()
            .map(|r| {
                assert!(r.retain);
                String::from_utf8(r.payload).unwrap()
            })
            .collect();
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "filter {filter}");
    }
}

/// mosquitto_pub -r stores a retained message that a later mosquitto_sub receives (both
/// protocol versions).
#[test]
fn mosquitto_clients_set_and_read_retained_messages() {
    let hub = Hub::start();
    let addr = hub.mqtt_addr();
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("{}/mosq", unique("t"));
        let out = mosquitto_pub(
            addr,
            &["-V", version, "-r", "-q", "1", "-t", &topic, "-m", "hello"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut sub = MosquittoSub::start(addr, &["-V", version, "-t", &topic]);
        assert_eq!(
            sub.next_message(WAIT),
            Some((topic.clone(), "hello".into())),
            "{version}"
        );
        // Delete it again: a later subscriber gets nothing.
        let out = mosquitto_pub(addr, &["-V", version, "-r", "-t", &topic, "-n"]);
        assert!(out.status.success());
        let mut sub = MosquittoSub::start(addr, &["-V", version, "-t", &topic]);
        assert_eq!(sub.next_message(QUIET), None, "{version}");
    }
}
