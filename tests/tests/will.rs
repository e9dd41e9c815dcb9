//! Will messages: published when a connection ends abnormally, not after a normal DISCONNECT,
//! with their retain flag and properties, MQTT 5 will delay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use iothub_e2e::frames::{self, Connect, PropValue, Publish, Will, prop};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::{Hub, unique};

fn will(topic: &str, payload: &[u8], qos: u8, retain: bool) -> Will {
    Will {
        topic: topic.into(),
        payload: payload.to_vec(),
        qos,
        retain,
        props: Vec::new(),
    }
}

fn watcher(hub: &Hub, level: u8, filter: &str) -> RawClient {
    let connect = Connect {
        level,
        ..Connect::v4(&unique("w"), true)
    };
    let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
    c.subscribe(1, &[(filter, 2)]);
    c
}

/// How the will's connection ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The client closes TCP without DISCONNECT.
    Drop,
    /// The client goes silent past 1.5 x its 1 s keep-alive.
    KeepAlive,
    /// The client sends a malformed packet and the hub closes the connection.
    ProtocolError,
}

/// v3.1.1: [MQTT-3.1.2-8] [MQTT-3.1.2-16] [MQTT-3.1.2-10]
/// v5: [MQTT-3.1.2-7] [MQTT-3.1.2-8] [MQTT-3.1.2-14] [MQTT-3.1.2-10]
/// — the will is published (once, non-retained) when the connection ends without DISCONNECT:
/// network drop, keep-alive expiry, or a close by the hub after bad input.
#[test]
fn will_is_published_when_the_connection_ends_abnormally() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        for end in [End::Drop, End::KeepAlive, End::ProtocolError] {
            let topic = format!("{}/will", unique("t"));
            let mut w = watcher(&hub, 4, &topic);
            let connect = Connect {
                level,
                ..Connect::v4(&unique("d"), true)
            }
            .keep_alive(1)
            .will(will(&topic, b"gone", 1, false));
            let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
            match end {
                End::Drop => c.drop_connection(),
                End::KeepAlive => {
                    c.expect_closed(WAIT);
                }
                End::ProtocolError => {
                    let _ = c.send(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]);
                    c.expect_closed(WAIT);
                }
            }
            let r = w
                .next_publish(WAIT)
                .unwrap_or_else(|e| panic!("level {level} {end:?}: no will ({e:?})"));
            assert_eq!(
                (r.topic.as_str(), r.payload.as_slice(), r.qos, r.retain),
                (topic.as_str(), &b"gone"[..], 1, false)
            );
            // Published once: the will is removed after publication.
            w.expect_silence(QUIET);
        }
    }
}

/// v3.1.1: [MQTT-3.1.2-10] [MQTT-3.14.4-3] / v5: [MQTT-3.1.2-10] [MQTT-3.14.4-3] — after a
/// normal DISCONNECT (MQTT 5: reason 0x00) the will is discarded; MQTT 5 reason 0x04
/// (Disconnect with Will Message) publishes it (§3.14.2.1).
#[test]
fn will_follows_the_disconnect_reason() {
    let hub = Hub::start();
    // (level, DISCONNECT bytes, will published)
    let cases: &[(u8, Vec<u8>, bool)] = &[
        (4, frames::disconnect(None), false),
        (5, frames::disconnect(Some(0x00)), false),
        (5, vec![0xE0, 0x00], false),
        (5, frames::disconnect(Some(0x04)), true),
    ];
    for (level, bytes, published) in cases {
        let topic = format!("{}/will", unique("t"));
        let mut w = watcher(&hub, 4, &topic);
        let connect = Connect {
            level: *level,
            ..Connect::v4(&unique("d"), true)
        }
        .will(will(&topic, b"bye", 0, false));
        let (mut c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        c.send_ok(bytes);
        c.expect_closed(WAIT);
        if *published {
            assert_eq!(
                w.next_publish(WAIT).unwrap().payload,
                b"bye",
                "{bytes:02x?}"
            );
        } else {
            w.expect_silence(QUIET);
        }
    }
}

/// v3.1.1: [MQTT-3.1.2-17] / v5: [MQTT-3.1.2-15] — a will with Will Retain 1 is published as
/// a retained message (later subscribers get it); with 0 it is not.
#[test]
fn will_retain_flag_makes_the_will_a_retained_message() {
    let hub = Hub::start();
    for level in [4u8, 5] {
        for retain in [true, false] {
            let topic = format!("{}/will", unique("t"));
            let mut live = watcher(&hub, level, &topic);
            let connect = Connect {
                level,
                ..Connect::v4(&unique("d"), true)
            }
            .will(will(&topic, b"last", 1, retain));
            let (c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
            c.drop_connection();
            assert_eq!(live.next_publish(WAIT).unwrap().payload, b"last");
            let mut later = watcher(&hub, level, &topic);
            let stored = later.publishes_for(QUIET);
            assert_eq!(
                stored.len(),
                usize::from(retain),
                "level {level} retain {retain}: {stored:?}"
            );
            if retain {
                assert!(stored[0].retain);
                assert_eq!(stored[0].payload, b"last");
            }
        }
    }
}

/// v5: [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
/// [MQTT-3.3.2-20] — will properties (§3.1.3.2: content type, response topic, correlation
/// data, user properties in order, payload format) travel with the will like with a PUBLISH.
#[test]
fn v5_will_properties_are_forwarded() {
    let hub = Hub::start();
    let topic = format!("{}/will", unique("t"));
    let mut w = watcher(&hub, 5, &topic);
    let props = vec![
        (prop::PAYLOAD_FORMAT, PropValue::Byte(1)),
        (prop::CONTENT_TYPE, PropValue::Str("text/plain".into())),
        (prop::RESPONSE_TOPIC, PropValue::Str("reply/here".into())),
        (prop::CORRELATION_DATA, PropValue::Bin(vec![0, 1, 2, 255])),
        (
            prop::USER_PROPERTY,
            PropValue::Pair("k".into(), "v1".into()),
        ),
        (
            prop::USER_PROPERTY,
            PropValue::Pair("k".into(), "v2".into()),
        ),
    ];
    let mut wl = will(&topic, b"props", 0, false);
    wl.props = props.clone();
    let (c, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&unique("d"), true).will(wl));
    c.drop_connection();
    let r = w.next_publish(WAIT).unwrap();
    for (id, value) in &props {
        if *id != prop::USER_PROPERTY {
            assert_eq!(
                r.prop(*id),
                Some(value),
                "property {id:#x} in {:?}",
                r.props
            );
        }
    }
    let users: Vec<&PropValue> = r.props_of(prop::USER_PROPERTY);
    assert_eq!(
        users,
        vec![&props[4].1, &props[5].1],
        "user properties in order"
    );
}

/// v5: [MQTT-3.1.2-8] [MQTT-3.1.3-9] — Will Delay Interval: the will waits for the delay; a
/// reconnect of the session within the delay cancels it; the end of the session publishes it
/// even before the delay is over.
#[test]
fn v5_will_delay_defers_cancels_and_yields_to_session_end() {
    let hub = Hub::start();
    // (will delay s, session expiry s, reconnect at once, will expected, earliest arrival)
    let cases: &[(u32, u32, bool, bool, Duration)] = &[
        (2, 300, false, true, Duration::from_millis(1000)),
        (2, 300, true, false, Duration::ZERO),
        (300, 1, false, true, Duration::ZERO),
    ];
    for (delay, expiry, reconnect, published, not_before) in cases {
        let id = unique("wd");
        let topic = format!("{id}/will");
        let mut w = watcher(&hub, 5, &topic);
        let mut wl = will(&topic, b"late", 0, false);
        wl.props = vec![(prop::WILL_DELAY, PropValue::U32(*delay))];
        let connect = Connect::v5(&id, false)
            .prop(prop::SESSION_EXPIRY, PropValue::U32(*expiry))
            .will(wl);
        let (c, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        c.drop_connection();
        let _again = reconnect.then(|| {
            let resume =
                Connect::v5(&id, false).prop(prop::SESSION_EXPIRY, PropValue::U32(*expiry));
            RawClient::connected(hub.mqtt_addr(), &resume).0
        });
        let case = format!("delay {delay} expiry {expiry} reconnect {reconnect}");
        if !not_before.is_zero() {
            w.expect_silence(*not_before);
        }
        if *published {
            let r = w
                .next_publish(WAIT)
                .unwrap_or_else(|e| panic!("{case}: no will ({e:?})"));
            assert_eq!(r.payload, b"late", "{case}");
        } else {
            w.expect_silence(Duration::from_secs(u64::from(*delay) + 1));
        }
    }
}

/// v5: [MQTT-3.1.4-3] [MQTT-3.1.3-9] — the will of a connection that is taken over is
/// published when its Will Delay is 0 (§3.1.4); with a Will Delay the new connection cancels it.
#[test]
fn v5_will_on_takeover_depends_on_will_delay() {
    let hub = Hub::start();
    for (delay, published) in [(0u32, true), (5, false)] {
        if published && !hub.is_iothub() {
            // Mosquitto 2.0.11 drops the will of a taken-over connection even with delay 0.
            eprintln!("note: the delay-0 row is skipped against the external reference");
            continue;
        }
        let id = unique("wt");
        let topic = format!("{id}/will");
        let mut w = watcher(&hub, 5, &topic);
        let mut wl = will(&topic, b"taken", 0, false);
        wl.props = vec![(prop::WILL_DELAY, PropValue::U32(delay))];
        let connect = |with_will: bool| {
            let c = Connect::v5(&id, false).prop(prop::SESSION_EXPIRY, PropValue::U32(300));
            if with_will { c.will(wl.clone()) } else { c }
        };
        let (_old, _) = RawClient::connected(hub.mqtt_addr(), &connect(true));
        let (_new, _) = RawClient::connected(hub.mqtt_addr(), &connect(false));
        if published {
            assert_eq!(
                w.next_publish(WAIT).unwrap().payload,
                b"taken",
                "delay {delay}"
            );
        } else {
            w.expect_silence(Duration::from_millis(1500));
        }
        // Either way the new connection works.
        let mut p = RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("p"), true)).0;
        p.publish(&Publish::v4(&format!("{id}/other"), b"x").qos(1, 1));
    }
}
