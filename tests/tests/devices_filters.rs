//! Message filters through the real binary: a device's publish and subscribe rules as the API
//! stores them, templates expanded with the device's and hub's names and ids, and a PATCH of
//! the rules applied to the live connection at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::api::{Api, Backend, RegistryDb, id_of, start_registry_hub};
use iothub_e2e::frames::{Connect, Publish, kind};
use iothub_e2e::raw::RawClient;
use iothub_e2e::{Hub, unique};
use serde_json::{Value, json};

/// MQTT 5 reason code Not authorized (PUBACK, SUBACK).
const NOT_AUTHORIZED: u8 = 0x87;
/// MQTT 3.1.1 SUBACK failure.
const V4_SUBACK_FAILURE: u8 = 0x80;

/// A dedicated hub named `name`; returns its id.
fn new_hub(api: &Api, name: &str) -> String {
    id_of(&api.create_hub(&json!({"name": name})))
}

/// An insecure device with these message filters; returns its id.
fn device(api: &Api, hub: &str, name: &str, filters: Value) -> String {
    id_of(&api.create_device(&json!({
        "hub_id": hub, "name": name, "allow_insecure": true, "message_filters": filters,
    })))
}

fn connect(hub: &Hub, level: u8, id: &str) -> RawClient {
    let packet = if level == 5 {
        Connect::v5(id, true)
    } else {
        Connect::v4(id, true)
    };
    RawClient::connected(hub.mqtt_addr(), &packet).0
}

/// Publishes at QoS 1 and returns the PUBACK reason code (0 when the PUBACK has none, as
/// 3.1.1 PUBACKs never do). 0x10 (No matching subscribers) is a success too: see [`ok`].
fn puback_code(c: &mut RawClient, topic: &str, packet_id: u16) -> u8 {
    let publish = if c.v5 {
        Publish::v5(topic, b"m")
    } else {
        Publish::v4(topic, b"m")
    };
    c.send_ok(&publish.qos(1, packet_id).encode());
    let ack = c.expect_kind(kind::PUBACK, "PUBACK");
    assert_eq!(&ack.body[..2], &packet_id.to_be_bytes(), "PUBACK id");
    ack.body.get(2).copied().unwrap_or(0)
}

/// A success reason code: 0x00, or 0x10 No matching subscribers.
fn ok(code: u8) -> bool {
    code == 0x00 || code == 0x10
}

/// Publishes at QoS 1 and checks the PUBACK: a success when `allowed`, else 0x87 (MQTT 5)
/// or a plain PUBACK (3.1.1, which cannot refuse a PUBLISH).
fn publish_checked(c: &mut RawClient, topic: &str, packet_id: u16, allowed: bool) {
    let code = puback_code(c, topic, packet_id);
    if allowed || !c.v5 {
        assert!(ok(code), "PUBACK of {topic}: {code:#04x}, expected success");
    } else {
        assert_eq!(code, NOT_AUTHORIZED, "PUBACK of {topic}");
    }
}

/// Topics of the PUBLISH packets `c` receives before the one on `sentinel`.
fn topics_until(c: &mut RawClient, sentinel: &str) -> Vec<String> {
    c.publishes_until(sentinel)
        .into_iter()
        .map(|r| r.topic)
        .collect()
}

/// Issue 3 publish filters: with `publish: accept ["{{ device.name }}/#", "shared/{{
/// hub.name }}/+"]`, an MQTT 5 PUBLISH elsewhere gets PUBACK 0x87 and is not delivered,
/// allowed topics get 0x00 (success) and are delivered; an MQTT 3.1.1 client, which cannot be
/// told no, gets its PUBACK but the message is not delivered either (QoS 0 and 1).
#[test]
fn publish_filters_refuse_or_drop() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let hub_name = unique("plant");
    let hub_id = new_hub(&api, &hub_name);
    let sensor = device(
        &api,
        &hub_id,
        "sensor",
        json!({"publish": {"policy": "accept",
                           "topics": ["{{ device.name }}/#", "shared/{{ hub.name }}/+"]}}),
    );
    let watcher = device(&api, &hub_id, "watcher", json!({}));
    let mut w = connect(&hub, 5, &watcher);
    assert_eq!(w.subscribe(1, &[("#", 1)]), vec![1]);

    let mut s = connect(&hub, 5, &sensor);
    let shared = format!("shared/{hub_name}/x");
    let rows: &[(&str, bool)] = &[
        ("other/temp", false),
        ("sensor/temp", true),
        ("sensorx/temp", false),
        ("shared/other-hub/x", false),
        (&shared, true),
        ("watcher/temp", false),
        ("sensor/end", true),
    ];
    for (i, (topic, allowed)) in rows.iter().enumerate() {
        publish_checked(&mut s, topic, i as u16 + 1, *allowed);
    }
    assert_eq!(
        topics_until(&mut w, "sensor/end"),
        vec!["sensor/temp".to_string(), shared.clone()],
        "only the allowed publishes are delivered"
    );
    s.send_ok(&iothub_e2e::frames::disconnect(Some(0)));

    let mut s4 = connect(&hub, 4, &sensor);
    publish_checked(&mut s4, "other/v4", 1, false);
    s4.send_ok(&Publish::v4("other/v4-qos0", b"m").encode());
    publish_checked(&mut s4, "sensor/v4", 2, true);
    assert_eq!(
        topics_until(&mut w, "sensor/v4"),
        Vec::<String>::new(),
        "a refused 3.1.1 publish is acknowledged and dropped"
    );
}

/// Issue 3 subscribe filters: with `subscribe: reject ["secret/#"]`, SUBSCRIBE to a filter
/// inside it is refused (MQTT 5 SUBACK 0x87, 3.1.1 0x80) while the other filters of the same
/// SUBSCRIBE are granted; `#`, which only partly overlaps, is granted, and nothing under
/// `secret/` is delivered through it.
#[test]
fn subscribe_filters_refuse_and_guard_wildcards() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let hub_id = new_hub(&api, &unique("plant"));
    let reader = device(
        &api,
        &hub_id,
        "reader",
        json!({"subscribe": {"policy": "reject", "topics": ["secret/#"]}}),
    );
    let writer = device(&api, &hub_id, "writer", json!({}));
    for (level, refusal) in [(5, NOT_AUTHORIZED), (4, V4_SUBACK_FAILURE)] {
        let mut r = connect(&hub, level, &reader);
        assert_eq!(
            r.subscribe(1, &[("secret/#", 1), ("secret/a/b", 0), ("data/#", 1)]),
            vec![refusal, refusal, 1],
            "SUBACK (level {level})"
        );
        assert_eq!(r.subscribe(2, &[("#", 1)]), vec![1], "partly allowed");
        let mut w = connect(&hub, 5, &writer);
        for (i, topic) in ["secret/x", "data/x", "secret", "other/y", "data/end"]
            .iter()
            .enumerate()
        {
            publish_checked(&mut w, topic, i as u16 + 1, true);
        }
        let got = topics_until(&mut r, "data/end");
        assert_eq!(
            got,
            vec!["data/x".to_string(), "other/y".to_string()],
            "level {level}: one copy of what data/# and # match, nothing `secret/#` matches"
        );
        r.drop_connection();
    }
}

/// Issue 3 templates: `{{ device.id }}`, `{{ device.name }}`, `{{ hub.id }}` and `{{
/// hub.name }}` (spaces optional) stand for this device and its hub, so one rule written for
/// a fleet confines each device to its own topics.
#[test]
fn templates_name_the_device_and_its_hub() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let hub_name = unique("fleet");
    let hub_id = new_hub(&api, &hub_name);
    let rules = json!({
        "publish": {"policy": "accept",
                    "topics": ["{{device.name}}/#", "hubs/{{ hub.id }}/+", "names/{{ hub.name }}"]},
        "subscribe": {"policy": "accept", "topics": ["cmd/{{ device.id }}/#"]},
    });
    let truck = device(&api, &hub_id, "truck", rules.clone());
    let van = device(&api, &hub_id, "van", rules);
    let mut t = connect(&hub, 5, &truck);
    let publishes: Vec<(String, bool)> = vec![
        ("truck/speed".into(), true),
        ("van/speed".into(), false),
        (format!("hubs/{hub_id}/x"), true),
        ("hubs/another-hub/x".into(), false),
        (format!("names/{hub_name}"), true),
        ("names/other".into(), false),
    ];
    for (i, (topic, allowed)) in publishes.iter().enumerate() {
        publish_checked(&mut t, topic, i as u16 + 1, *allowed);
    }
    let subscriptions: Vec<(String, u8)> = vec![
        (format!("cmd/{truck}/#"), 1),
        (format!("cmd/{truck}/open"), 1),
        (format!("cmd/{van}/#"), NOT_AUTHORIZED),
        ("cmd/#".into(), 1),
        ("#".into(), 1),
        ("status/#".into(), NOT_AUTHORIZED),
    ];
    for (i, (filter, code)) in subscriptions.iter().enumerate() {
        assert_eq!(
            t.subscribe(i as u16 + 1, &[(filter.as_str(), 1)]),
            vec![*code],
            "SUBACK of {filter}"
        );
    }
    // cmd/# and # overlap the rule only partly: neither the van's own messages nor its
    // commands reach the truck through them.
    let mut v = connect(&hub, 5, &van);
    publish_checked(&mut v, "van/x", 1, true);
    let dispatcher = device(&api, &hub_id, "dispatcher", json!({}));
    let mut d = connect(&hub, 5, &dispatcher);
    let own = format!("cmd/{truck}/go");
    for (i, topic) in [format!("cmd/{van}/go"), own.clone()].iter().enumerate() {
        publish_checked(&mut d, topic, i as u16 + 1, true);
    }
    assert_eq!(
        topics_until(&mut t, &own),
        Vec::<String>::new(),
        "the truck receives its own command and nothing of the van before it"
    );
}

/// Issue 3 live filters: a PATCH of a connected device's filters applies at once. A
/// subscription the new subscribe rule refuses is removed (nothing more is delivered through
/// it, and it does not come back when the rule is relaxed again), a new SUBSCRIBE to it is
/// refused, and the next PUBLISH obeys the new publish rule; the connection stays open.
#[test]
fn patching_filters_applies_to_the_live_connection() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let hub_id = new_hub(&api, &unique("plant"));
    let sensor = device(&api, &hub_id, "sensor", json!({}));
    let source = device(&api, &hub_id, "source", json!({}));
    let mut s = connect(&hub, 5, &sensor);
    let mut src = connect(&hub, 5, &source);
    assert_eq!(
        s.subscribe(1, &[("alerts/#", 1), ("data/#", 1)]),
        vec![1, 1]
    );
    publish_checked(&mut s, "alerts/mine", 1, true);
    let before: Vec<String> = topics_until(&mut s, "alerts/mine");
    assert!(before.is_empty(), "{before:?}");

    let patched = api
        .patch(
            &format!("devices/{sensor}"),
            &json!({"message_filters": {
                "publish": {"policy": "accept", "topics": ["data/#"]},
                "subscribe": {"policy": "reject", "topics": ["alerts/#"]},
            }}),
        )
        .expect(200);
    assert_eq!(
        patched["message_filters"]["subscribe"]["topics"][0],
        "alerts/#"
    );

    for (i, topic) in ["alerts/1", "data/1", "data/end"].iter().enumerate() {
        publish_checked(&mut src, topic, i as u16 + 1, true);
    }
    assert_eq!(
        topics_until(&mut s, "data/end"),
        vec!["data/1".to_string()],
        "the refused subscription no longer delivers"
    );
    assert_eq!(s.subscribe(2, &[("alerts/#", 1)]), vec![NOT_AUTHORIZED]);
    publish_checked(&mut s, "alerts/mine", 2, false);
    publish_checked(&mut s, "data/mine", 3, true);
    assert_eq!(
        topics_until(&mut s, "data/mine"),
        Vec::<String>::new(),
        "the refused publish went nowhere"
    );

    // Relaxed again: the removed subscription stays removed until the device subscribes.
    api.patch(
        &format!("devices/{sensor}"),
        &json!({"message_filters": {
            "publish": {"policy": "reject", "topics": []},
            "subscribe": {"policy": "reject", "topics": []},
        }}),
    )
    .expect(200);
    for (i, topic) in ["alerts/2", "data/2"].iter().enumerate() {
        publish_checked(&mut src, topic, i as u16 + 10, true);
    }
    assert_eq!(
        topics_until(&mut s, "data/2"),
        Vec::<String>::new(),
        "the removed subscription was removed, not paused"
    );
    assert_eq!(s.subscribe(3, &[("alerts/#", 1)]), vec![1]);
    publish_checked(&mut src, "alerts/3", 20, true);
    let got = s.expect_publish_acked();
    assert_eq!(got.topic, "alerts/3");
    s.ping();
}
