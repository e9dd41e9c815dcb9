//! Hub events (issue 5) through the real binary: every kind a client can cause over plain
//! MQTT, triggered with hand-written bytes (no test hooks), and received over MQTT by a
//! device of the same hub subscribed to `$SCW/events/#`, topic and JSON fields checked.
//! Also: events stay in their hub, `disable_events` silences them, a custom
//! `events_topic_prefix` moves them (and is closed to clients), the rate limit holds under a
//! flood, and `$SYS` exists on dedicated hubs only. Certificate and provisioning events are in
//! `events_tls.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use iothub_e2e::api::{Api, Backend, RegistryDb, id_of, start_registry_hub};
use iothub_e2e::frames::{Connect, PropValue, Publish, kind};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, unique};
use serde_json::{Value, json};

/// MQTT 5 property: Topic Alias.
const TOPIC_ALIAS: u8 = 0x23;

// ---- fixture -----------------------------------------------------------------------------------

/// A hub with its registry and no anonymous hub: every client is a device.
struct Fx {
    hub: Hub,
    api: Api,
}

impl Fx {
    fn start() -> Option<Fx> {
        let (hub, api) = start_registry_hub(&RegistryDb::new(Backend::Sqlite), false)?;
        Some(Fx { hub, api })
    }

    /// A hub (dedicated unless `body` says otherwise); returns its id.
    fn hub(&self, body: Value) -> String {
        let mut b = json!({ "name": unique("h") });
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().cloned().unwrap_or_default());
        id_of(&self.api.create_hub(&b))
    }

    /// An insecure device of `hub` with `extra` fields; returns its id.
    fn device(&self, hub: &str, extra: Value) -> String {
        let mut body = json!({ "hub_id": hub, "name": unique("d"), "allow_insecure": true });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        id_of(&self.api.create_device(&body))
    }

    /// A device of `hub` subscribed to `filter` (QoS 1, or what the plan grants).
    fn observer(&self, hub: &str, filter: &str) -> Observer {
        let id = self.device(hub, json!({}));
        Observer::connect(&self.hub, &id, filter, true)
    }

    fn connect(&self, level: u8, id: &str) -> RawClient {
        let packet = if level == 5 {
            Connect::v5(id, true)
        } else {
            Connect::v4(id, true)
        };
        RawClient::connected(self.hub.mqtt_addr(), &packet).0
    }

    fn metrics(&self) -> String {
        http_get(self.api.addr, "/metrics").1
    }
}

/// A subscriber of hub events.
struct Observer {
    client: RawClient,
}

impl Observer {
    /// Connects device `id` (MQTT 5, a clean or a kept session) and subscribes to `filter`.
    fn connect(hub: &Hub, id: &str, filter: &str, clean: bool) -> Observer {
        let mut connect = Connect::v5(id, clean);
        if !clean {
            connect = connect.prop(0x11, PropValue::U32(3600));
        }
        let (mut client, _) = RawClient::connected(hub.mqtt_addr(), &connect);
        let codes = client.subscribe(1, &[(filter, 1)]);
        assert!(codes[0] <= 1, "SUBACK of {filter}: {codes:?}");
        Observer { client }
    }

    /// Waits for the event on `topic` whose `msg` starts with `msg`, skipping others;
    /// checks the fields every event has and returns its JSON.
    fn expect(&mut self, topic: &str, msg: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.next_publish(left) {
                Ok(r) => {
                    let event = parse_event(&r.topic, &r.payload);
                    if r.topic == topic && event["msg"].as_str().unwrap().starts_with(msg) {
                        return event;
                    }
                    seen.push((r.topic, event));
                }
                Err(e) => panic!(
                    "no event on {topic} with msg {msg:?} ({e:?}); received instead: {seen:#?}"
                ),
            }
        }
    }

    /// Asserts that no event arrives for a while.
    fn expect_none(&mut self) {
        let got = self.client.publishes_for(QUIET);
        assert!(
            got.is_empty(),
            "unexpected events: {:#?}",
            got.iter()
                .map(|r| (
                    r.topic.clone(),
                    String::from_utf8_lossy(&r.payload).into_owned()
                ))
                .collect::<Vec<_>>()
        );
    }
}

/// Parses an event and checks what every event must be: JSON with the reference's keys,
/// `time` in RFC 3339 (UTC), and `severity`, `object-type` and `object-id` matching the
/// topic's last three levels.
fn parse_event(topic: &str, payload: &[u8]) -> Value {
    let event: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
        panic!(
            "event on {topic} is not JSON ({e}): {}",
            String::from_utf8_lossy(payload)
        )
    });
    let levels: Vec<&str> = topic.rsplitn(4, '/').collect();
    assert_eq!(levels.len(), 4, "event topic {topic}");
    let (id, object_type, severity) = (levels[0], levels[1], levels[2]);
    assert_eq!(event["severity"], severity, "{topic}: {event}");
    assert_eq!(event["object-type"], object_type, "{topic}: {event}");
    assert_eq!(event["object-id"], id, "{topic}: {event}");
    assert!(event["msg"].is_string(), "{event}");
    assert!(event["packet"].is_string(), "{event}");
    let time = event["time"].as_str().unwrap_or_default();
    let shape = time.len() == 24
        && time.as_bytes()[4] == b'-'
        && time.as_bytes()[10] == b'T'
        && time.ends_with('Z');
    assert!(shape, "time is not RFC 3339 UTC: {event}");
    event
}

fn error_topic(device: &str) -> String {
    format!("$SCW/events/error/device/{device}")
}

// ---- malformed packets and protocol errors ---------------------------------------------------

/// Each malformed packet or protocol error closes the connection and raises an error event
/// about the device, with the reference's message and the offending bytes (hex) or packet
/// (in words) in `packet`.
#[test]
fn malformed_packets_and_protocol_errors_raise_error_events() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({}));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let bad = fx.device(&hub, json!({}));
    let alias_out_of_range = Publish::v5("t", b"x").prop(TOPIC_ALIAS, PropValue::U16(1000));
    // (case, protocol level, bytes after CONNECT, msg start, packet start)
    let cases: Vec<(&str, u8, Vec<u8>, &str, &str)> = vec![
        (
            "reserved flags on PINGREQ",
            4,
            vec![0xC1, 0x00],
            "cannot decode MQTT header",
            "c1 00",
        ),
        (
            "remaining length of five bytes",
            4,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
            "cannot decode MQTT header",
            "30 ff ff ff ff 7f",
        ),
        (
            "packet type 0",
            4,
            vec![0x00, 0x00],
            "unknown MQTT message type: 0",
            "00 00",
        ),
        (
            "PUBLISH with QoS 3",
            4,
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            "invalid MQTT QoS value: 3",
            "36 05 00 01 61",
        ),
        (
            "a topic length past the end of the packet",
            4,
            vec![0x30, 0x03, 0x00, 0x05, b'a'],
            "failed to unpack message body",
            "30 03 00 05 61",
        ),
        (
            "an empty topic without alias",
            5,
            vec![0x30, 0x03, 0x00, 0x00, 0x00],
            "empty topics are not authorized",
            "30 03 00 00 00",
        ),
        (
            "a second CONNECT",
            4,
            Connect::v4(&bad, true).encode(),
            "protocol error: second CONNECT",
            "CONNECT protocol=3.1.1",
        ),
        (
            "a topic alias above the maximum",
            5,
            alias_out_of_range.encode(),
            "protocol error: topic alias invalid",
            "PUBLISH topic=\"t\"",
        ),
        (
            "a wildcard in a topic name",
            4,
            Publish::v4("a/#", b"x").encode(),
            "protocol error: topic name invalid",
            "PUBLISH topic=\"a/#\"",
        ),
    ];
    for (case, level, bytes, msg, packet) in cases {
        let mut c = fx.connect(level, &bad);
        let _ = c.send(&bytes);
        c.expect_closed(WAIT);
        let event = observer.expect(&error_topic(&bad), msg);
        assert!(
            event["packet"].as_str().unwrap().starts_with(packet),
            "{case}: packet of {event}"
        );
    }
    // A connection that ends inside a packet: the header arrived, the rest never will.
    let mut c = fx.connect(4, &bad);
    c.send_ok(&[0x30, 0x0a, 0x00]);
    c.drop_connection();
    let event = observer.expect(&error_topic(&bad), "cannot read MQTT header");
    assert_eq!(event["packet"], "30 0a 00", "{event}");
}

// ---- refused publish, subscribe and will -----------------------------------------------------

/// A PUBLISH, SUBSCRIBE or will the device's filters refuse, and a PUBLISH under the events
/// prefix, raise "unauthorized topic T" (the device keeps its connection: MQTT 5 gets 0x87,
/// 3.1.1 a plain acknowledgement or SUBACK 0x80).
#[test]
fn refused_topics_raise_unauthorized_topic_events() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({}));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let filters = json!({ "message_filters": {
        "publish": { "policy": "accept", "topics": ["allowed/#"] },
        "subscribe": { "policy": "reject", "topics": ["secret/#"] },
    }});
    let device = fx.device(&hub, filters);
    for level in [5, 4] {
        let mut c = fx.connect(level, &device);
        // (topic) -> refused publish
        for topic in ["forbidden/x", "$SCW/events/error/device/fake"] {
            let publish = if level == 5 {
                Publish::v5(topic, b"x")
            } else {
                Publish::v4(topic, b"x")
            };
            c.send_ok(&publish.qos(1, 7).encode());
            let ack = c.expect_kind(kind::PUBACK, "PUBACK");
            let code = ack.body.get(2).copied().unwrap_or(0);
            assert_eq!(code, if level == 5 { 0x87 } else { 0 }, "{topic}");
            let event = observer.expect(
                &error_topic(&device),
                &format!("unauthorized topic {topic}"),
            );
            assert!(
                event["packet"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("PUBLISH topic={topic:?}")),
                "{event}"
            );
        }
        let codes = c.subscribe(3, &[("secret/plans", 1), ("allowed/x", 1)]);
        assert_eq!(
            codes,
            if level == 5 {
                vec![0x87, 1]
            } else {
                vec![0x80, 1]
            }
        );
        let event = observer.expect(&error_topic(&device), "unauthorized topic secret/plans");
        assert!(
            event["packet"].as_str().unwrap().starts_with("SUBSCRIBE"),
            "{event}"
        );
        c.ping();
    }
    // A will on a forbidden topic refuses the CONNECT.
    let will = iothub_e2e::frames::Will {
        topic: "forbidden/will".into(),
        payload: b"bye".to_vec(),
        ..Default::default()
    };
    let mut c = RawClient::connect(fx.hub.mqtt_addr());
    let ack = c.handshake(&Connect::v5(&device, true).will(will));
    assert_eq!(ack.code, 0x87, "CONNACK of a forbidden will");
    let event = observer.expect(&error_topic(&device), "unauthorized topic forbidden/will");
    assert!(
        event["packet"]
            .as_str()
            .unwrap()
            .contains("will_topic=\"forbidden/will\""),
        "{event}"
    );
    assert!(
        event["source-address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{event}"
    );
}

// ---- CONNECT refusals and live changes -------------------------------------------------------

/// A device that requires mutual TLS connecting over plain TCP, and a disabled device, are
/// refused with an event naming the device and the client's address.
#[test]
fn refused_connects_raise_security_events() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({}));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let secure = fx.device(&hub, json!({ "allow_insecure": false }));
    let disabled = fx.device(&hub, json!({}));
    fx.api
        .post(&format!("devices/{disabled}/disable"), &json!({}))
        .expect(200);
    // (device, msg)
    let cases = [
        (&secure, "mutual TLS authentication is required"),
        (&disabled, "device is not enabled"),
    ];
    for (device, msg) in cases {
        for level in [4, 5] {
            let packet = if level == 5 {
                Connect::v5(device, true)
            } else {
                Connect::v4(device, true)
            };
            let mut c = RawClient::connect(fx.hub.mqtt_addr());
            let ack = c.handshake(&packet);
            assert_ne!(ack.code, 0, "{msg}: accepted");
            let event = observer.expect(&error_topic(device), msg);
            assert!(
                event["packet"].as_str().unwrap().starts_with("CONNECT"),
                "{event}"
            );
            assert!(
                event["source-address"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:"),
                "{event}"
            );
        }
    }
}

/// Live changes that close a device's connection raise an event about the device: disabled
/// ("device is not enabled"), insecure connections no longer allowed ("device security has
/// changed"), deleted ("device is deleted"); a filter change that removes a subscription
/// raises "unauthorized topic F".
#[test]
fn live_changes_raise_device_events() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({}));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    type Change = fn(&Api, &str);
    // (case, change, msg)
    let cases: [(&str, Change, &str); 3] = [
        (
            "disabled",
            |api, id| {
                api.post(&format!("devices/{id}/disable"), &json!({}))
                    .expect(200);
            },
            "device is not enabled",
        ),
        (
            "insecure no longer allowed",
            |api, id| {
                api.patch(
                    &format!("devices/{id}"),
                    &json!({ "allow_insecure": false }),
                )
                .expect(200);
            },
            "device security has changed, requires authentication",
        ),
        (
            "deleted",
            |api, id| {
                api.delete(&format!("devices/{id}")).expect(204);
            },
            "device is deleted",
        ),
    ];
    for (case, change, msg) in cases {
        let device = fx.device(&hub, json!({}));
        let mut c = fx.connect(5, &device);
        change(&fx.api, &device);
        let packets = c.expect_closed(WAIT);
        assert!(
            packets.iter().any(|p| p.kind() == kind::DISCONNECT),
            "{case}: DISCONNECT before the close"
        );
        observer.expect(&error_topic(&device), msg);
    }
    let device = fx.device(&hub, json!({}));
    let mut c = fx.connect(5, &device);
    assert_eq!(c.subscribe(1, &[("reports/#", 1)]), vec![1]);
    fx.api
        .patch(
            &format!("devices/{device}"),
            &json!({ "message_filters": { "subscribe": { "policy": "reject", "topics": ["reports/#"] } } }),
        )
        .expect(200);
    observer.expect(&error_topic(&device), "unauthorized topic reports/#");
}

/// A CONNECT to a disabled hub ("hub is not ready", about the device) and a plan change
/// ("hub product plan has changed", about the hub) happen while nobody can be connected: an observer with a kept
/// session and a QoS 1 subscription receives both when the hub is enabled again.
#[test]
fn hub_not_ready_and_plan_changed_reach_a_kept_session() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({}));
    let observer_id = fx.device(&hub, json!({}));
    let observer = Observer::connect(&fx.hub, &observer_id, "$SCW/events/#", false);
    observer.client.drop_connection();
    let device = fx.device(&hub, json!({}));
    fx.api
        .post(&format!("hubs/{hub}/disable"), &json!({}))
        .expect(200);
    let mut c = RawClient::connect(fx.hub.mqtt_addr());
    let ack = c.handshake(&Connect::v5(&device, true));
    assert_eq!(ack.code, 0x88, "CONNACK: server unavailable");
    fx.api
        .patch(
            &format!("hubs/{hub}"),
            &json!({ "product_plan": "plan_ha" }),
        )
        .expect(200);
    fx.api
        .post(&format!("hubs/{hub}/enable"), &json!({}))
        .expect(200);
    let (client, ack) = RawClient::connected(
        fx.hub.mqtt_addr(),
        &Connect::v5(&observer_id, false).prop(0x11, PropValue::U32(3600)),
    );
    assert!(ack.session_present(), "the observer's session was kept");
    let mut observer = Observer { client };
    // About the device that tried (the object is the device when it is known).
    observer.expect(&error_topic(&device), "hub is not ready");
    observer.expect(
        &format!("$SCW/events/error/hub/{hub}"),
        "hub product plan has changed",
    );
}

// ---- shared plan and limits ------------------------------------------------------------------

/// On the shared plan, what the plan does not offer raises a warning event about the device:
/// a retained PUBLISH and a QoS 2 PUBLISH (MQTT 3.1.1: acknowledged and dropped; MQTT 5:
/// DISCONNECT 0x9A / 0x9B), a QoS 1 SUBSCRIBE (granted QoS 0) and a persistent session.
#[test]
fn shared_plan_service_levels_raise_warnings() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({ "product_plan": "plan_shared" }));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let device = fx.device(&hub, json!({}));
    let warning = format!("$SCW/events/warning/device/{device}");
    let mut c = fx.connect(4, &device);
    c.send_ok(&Publish::v4("t", b"r").retain(true).qos(1, 1).encode());
    c.expect_kind(kind::PUBACK, "PUBACK");
    observer.expect(&warning, "service level: retained messages");
    c.send_ok(&Publish::v4("t", b"q").qos(2, 2).encode());
    c.expect_kind(kind::PUBREC, "PUBREC");
    observer.expect(&warning, "service level: QoS 2 messages");
    assert_eq!(c.subscribe(3, &[("t", 1)]), vec![0], "granted QoS 0");
    let event = observer.expect(&warning, "service level: QoS 1 subscriptions");
    assert!(
        event["packet"].as_str().unwrap().starts_with("SUBSCRIBE"),
        "{event}"
    );
    // MQTT 5 is told with a DISCONNECT.
    for (publish, code, msg) in [
        (
            Publish::v5("t", b"r").retain(true),
            0x9A,
            "service level: retained messages",
        ),
        (
            Publish::v5("t", b"q").qos(2, 4),
            0x9B,
            "service level: QoS 2 messages",
        ),
    ] {
        let mut c5 = fx.connect(5, &device);
        c5.send_ok(&publish.encode());
        let before = c5.expect_closed(WAIT);
        assert_eq!(
            before.last().map(|p| (p.kind(), p.body.first().copied())),
            Some((kind::DISCONNECT, Some(code)))
        );
        observer.expect(&warning, msg);
    }
    let mut kept = RawClient::connect(fx.hub.mqtt_addr());
    let ack = kept.handshake(&Connect::v4(&device, false));
    assert_ne!(ack.code, 0, "a persistent session on the shared plan");
    observer.expect(&warning, "service level: persistent sessions");
}

/// At the hub's byte budget a retained PUBLISH is refused (MQTT 5 PUBACK 0x97) with a
/// warning event; so is a payload above the hub's maximum.
#[test]
fn limits_raise_quota_events() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({ "limits": { "budget_bytes": 4096, "max_payload_bytes": 3000 } }));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let device = fx.device(&hub, json!({}));
    let warning = format!("$SCW/events/warning/device/{device}");
    let mut c = fx.connect(5, &device);
    // (case, payload size, msg)
    let cases = [
        ("over the budget", 2000, "hub memory budget exhausted"),
        ("over the payload maximum", 3500, "payload of 3500 bytes"),
    ];
    // Fill the budget first: 2500 bytes retained, then 2000 more do not fit in 4096.
    c.send_ok(
        &Publish::v5("fill/1", &[0; 2500])
            .retain(true)
            .qos(1, 1)
            .encode(),
    );
    let ack = c.expect_kind(kind::PUBACK, "PUBACK");
    assert!(
        ack.body.get(2).is_none_or(|c| *c < 0x80),
        "first retained message fits"
    );
    for (i, (case, size, msg)) in cases.into_iter().enumerate() {
        let id = 10 + i as u16;
        let topic = format!("fill/{id}");
        c.send_ok(
            &Publish::v5(&topic, &vec![0; size])
                .retain(true)
                .qos(1, id)
                .encode(),
        );
        let ack = c.expect_kind(kind::PUBACK, "PUBACK");
        assert_eq!(ack.body.get(2), Some(&0x97), "{case}");
        observer.expect(&warning, msg);
    }
}

// ---- tenancy, disable_events, prefix, rate limit -----------------------------------------------

/// Events of hub A never reach hub B (even a subscriber of `#` and `$SCW/#`), and an
/// anonymous client's events name its hub.
#[test]
fn events_stay_in_their_hub() {
    let Some((hub, api)) = start_registry_hub(&RegistryDb::new(Backend::Sqlite), true) else {
        return;
    };
    let fx = Fx { hub, api };
    let a = fx.hub(json!({}));
    let b = fx.hub(json!({}));
    let mut observer_a = fx.observer(&a, "$SCW/events/#");
    let mut observer_b = fx.observer(&b, "$SCW/#");
    let (mut anonymous, _) =
        RawClient::connected(fx.hub.mqtt_addr(), &Connect::v5(&unique("anon"), true));
    anonymous.subscribe(1, &[("$SCW/#", 1), ("#", 1)]);
    let device = fx.device(&a, json!({}));
    let mut c = fx.connect(4, &device);
    let _ = c.send(&[0x00, 0x00]);
    c.expect_closed(WAIT);
    observer_a.expect(&error_topic(&device), "unknown MQTT message type");
    observer_b.expect_none();
    assert!(
        anonymous.publishes_for(QUIET).is_empty(),
        "the anonymous hub saw an event"
    );

    // An anonymous client's event is about its hub (the development hub here).
    let _ = anonymous.send(&[0x00, 0x00]);
    anonymous.expect_closed(WAIT);
    let mut watcher = RawClient::connected(fx.hub.mqtt_addr(), &Connect::v5(&unique("w"), true)).0;
    watcher.subscribe(1, &[("$SCW/events/error/hub/+", 1)]);
    let mut other = RawClient::connected(fx.hub.mqtt_addr(), &Connect::v4(&unique("o"), true)).0;
    let _ = other.send(&[0xC1, 0x00]);
    other.expect_closed(WAIT);
    let r = watcher
        .next_publish(WAIT)
        .expect("an event about the anonymous client's hub");
    let event = parse_event(&r.topic, &r.payload);
    assert!(
        event["msg"]
            .as_str()
            .unwrap()
            .starts_with("cannot decode MQTT header"),
        "{event}"
    );
    observer_a.expect_none();
    observer_b.expect_none();
}

/// `disable_events` silences a hub's events; turning it off brings them back; a custom
/// `events_topic_prefix` moves them, and clients may publish under neither it nor `$SCW`.
#[test]
fn disable_events_and_the_topic_prefix() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({ "disable_events": true }));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let mut custom = fx.observer(&hub, "ops/events/#");
    let device = fx.device(&hub, json!({}));
    let misbehave = |fx: &Fx| {
        let mut c = fx.connect(4, &device);
        let _ = c.send(&[0x00, 0x00]);
        c.expect_closed(WAIT);
    };
    misbehave(&fx);
    observer.expect_none();
    fx.api
        .patch(&format!("hubs/{hub}"), &json!({ "disable_events": false }))
        .expect(200);
    misbehave(&fx);
    observer.expect(&error_topic(&device), "unknown MQTT message type");
    fx.api
        .patch(
            &format!("hubs/{hub}"),
            &json!({ "events_topic_prefix": "ops/events" }),
        )
        .expect(200);
    // The prefix change closed the connections, so that each learns the new reserved topic.
    let observer_id = fx.device(&hub, json!({}));
    let mut custom_now = Observer::connect(&fx.hub, &observer_id, "ops/events/#", true);
    misbehave(&fx);
    custom_now.expect(
        &format!("ops/events/error/device/{device}"),
        "unknown MQTT message type",
    );
    let mut c = fx.connect(5, &device);
    // (topic, PUBACK reason code): under the prefix and under $SCW refused; elsewhere fine.
    for (topic, code) in [
        ("ops/events/x", 0x87),
        ("$SCW/x", 0x87),
        ("ops/other", 0x10),
    ] {
        c.send_ok(&Publish::v5(topic, b"x").qos(1, 9).encode());
        let ack = c.expect_kind(kind::PUBACK, "PUBACK");
        assert_eq!(ack.body.get(2).copied().unwrap_or(0), code, "{topic}");
    }
    // The observers connected before the change were closed by it (MQTT 5: 0x98).
    let before = custom.client.expect_closed(WAIT);
    assert_eq!(
        before.last().map(|p| (p.kind(), p.body.first().copied())),
        Some((kind::DISCONNECT, Some(0x98)))
    );
}

/// A flood of bad packets cannot flood the events topic: per kind, at most a burst of 20 and
/// then 10 per second are published, and the rest are counted as dropped
/// (`iothub_events_published_total` + `iothub_events_dropped_total` = packets sent).
#[test]
fn the_rate_limit_holds_under_a_flood() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub(json!({}));
    let mut observer = fx.observer(&hub, "$SCW/events/#");
    let device = fx.device(
        &hub,
        json!({ "message_filters": {
            "publish": { "policy": "reject", "topics": ["forbidden/#"] },
        }}),
    );
    const FLOOD: usize = 300;
    let started = Instant::now();
    // Refused PUBLISH packets on one connection, all in one write.
    let mut c = fx.connect(4, &device);
    let mut bytes = Vec::new();
    for _ in 0..FLOOD {
        bytes.extend(Publish::v4("forbidden/x", b"x").encode());
    }
    c.send_ok(&bytes);
    c.ping();
    // Malformed packets, one connection each.
    for _ in 0..FLOOD / 3 {
        let mut bad = fx.connect(4, &device);
        let _ = bad.send(&[0x00, 0x00]);
        bad.expect_closed(WAIT);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let received = observer.client.publishes_for(Duration::from_secs(1));
    // Whatever the machine's speed: the bucket holds 20 and refills 10 per second.
    let bound = |seconds: f64| (20.0 + 10.0 * (seconds + 1.0)) as usize;
    for (kind, sent, msg) in [
        ("unauthorized_topic", FLOOD, "unauthorized topic"),
        ("protocol_error", FLOOD / 3, "unknown MQTT message type"),
    ] {
        let got = received
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.payload).contains(msg))
            .count();
        let limit = bound(elapsed + 1.0);
        assert!(
            got <= limit,
            "{kind}: {got} events in {elapsed:.1} s, more than the bucket allows ({limit})"
        );
        assert!(got >= 20, "{kind}: the burst of 20 is published, got {got}");
        let metrics = fx.metrics();
        let labels = [("hub", hub.as_str()), ("kind", kind)];
        let published = metric_sum(&metrics, "iothub_events_published_total", &labels).unwrap();
        let dropped = metric_sum(&metrics, "iothub_events_dropped_total", &labels).unwrap_or(0.0);
        assert_eq!(
            published as usize, got,
            "{kind}: published events reached the observer"
        );
        assert_eq!(
            (published + dropped) as usize,
            sent,
            "{kind}: every bad packet raised one event, published or dropped"
        );
    }
}

// ---- $SYS ---------------------------------------------------------------------------------------

/// A dedicated hub publishes its `$SYS/broker/...` figures (retained: a new subscriber gets
/// them at once), so does an HA hub; a shared hub has none; clients cannot publish under
/// `$SYS`.
#[test]
fn sys_topics_exist_on_dedicated_hubs_only() {
    let Some(fx) = Fx::start() else { return };
    let dedicated = fx.hub(json!({}));
    let shared = fx.hub(json!({ "product_plan": "plan_shared" }));
    let id = fx.device(&dedicated, json!({}));
    let mut c = fx.connect(5, &id);
    // The hub publishes its first figures on the engine's first tick after its creation;
    // from then on a new subscriber gets them at once, retained.
    let mut first = fx.connect(5, &fx.device(&dedicated, json!({})));
    first.subscribe(1, &[("$SYS/#", 0)]);
    let got = first.next_publish(WAIT).expect("the first $SYS figures");
    assert!(got.topic.starts_with("$SYS/broker/"), "{got:?}");
    let mut sub = fx.connect(5, &fx.device(&dedicated, json!({})));
    sub.subscribe(1, &[("$SYS/#", 0)]);
    let topics = sub.publishes_for(QUIET);
    let value = |name: &str| -> String {
        let r = topics.iter().find(|r| r.topic == name).unwrap_or_else(|| {
            panic!(
                "no {name} among {:?}",
                topics.iter().map(|r| &r.topic).collect::<Vec<_>>()
            )
        });
        assert!(r.retain, "{name} is retained");
        String::from_utf8(r.payload.clone()).unwrap()
    };
    assert!(value("$SYS/broker/version").starts_with("iothub "));
    assert!(value("$SYS/broker/uptime").ends_with(" seconds"));
    for name in [
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/total",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/publish/messages/sent",
        "$SYS/broker/store/messages/bytes",
    ] {
        let v = value(name);
        assert!(v.parse::<u64>().is_ok(), "{name} = {v:?}");
    }
    c.send_ok(
        &Publish::v5("$SYS/broker/version", b"fake")
            .qos(1, 1)
            .encode(),
    );
    let ack = c.expect_kind(kind::PUBACK, "PUBACK");
    assert_eq!(
        ack.body.get(2),
        Some(&0x87),
        "publishing under $SYS is refused"
    );

    let mut shared_sub = fx.connect(5, &fx.device(&shared, json!({})));
    shared_sub.subscribe(1, &[("$SYS/#", 0)]);
    assert!(
        shared_sub.publishes_for(Duration::from_secs(1)).is_empty(),
        "a shared hub has no $SYS"
    );

    let ha = fx.hub(json!({ "product_plan": "plan_ha" }));
    let mut ha_sub = fx.connect(5, &fx.device(&ha, json!({})));
    ha_sub.subscribe(1, &[("$SYS/#", 0)]);
    let got = ha_sub.next_publish(WAIT).expect("an HA hub's $SYS figures");
    assert!(got.topic.starts_with("$SYS/broker/"), "{got:?}");
}
