//! Plans over MQTT through the real binary: a device of a `plan_shared` hub is held to the
//! shared plan exactly as the engine documents it (clean session mandatory, no retained
//! PUBLISH, no QoS 2 PUBLISH, subscriptions granted QoS 0), while a dedicated hub's device
//! gets all of MQTT; and the API refuses what the shared plan does not offer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::api::{Api, Backend, RegistryDb, id_of, start_registry_hub};
use iothub_e2e::frames::{Connect, PropValue, Publish, disconnect_reason, kind, prop};
use iothub_e2e::raw::{RawClient, WAIT};
use iothub_e2e::{Hub, unique};
use serde_json::json;

/// A hub on `plan` with insecure devices `names`; returns the hub id and the device ids.
fn hub_with_devices(api: &Api, plan: &str, names: &[&str]) -> (String, Vec<String>) {
    let hub = id_of(&api.create_hub(&json!({"name": unique("hub"), "product_plan": plan})));
    let ids = names
        .iter()
        .map(|n| {
            id_of(&api.create_device(&json!({"hub_id": hub, "name": n, "allow_insecure": true})))
        })
        .collect();
    (hub, ids)
}

fn connect(hub: &Hub, level: u8, id: &str) -> RawClient {
    let packet = if level == 5 {
        Connect::v5(id, true)
    } else {
        Connect::v4(id, true)
    };
    RawClient::connected(hub.mqtt_addr(), &packet).0
}

/// Issue 3 plans: on `plan_shared` a session must be clean. MQTT 3.1.1 clean session 0 is
/// refused with return code 5, MQTT 5 clean start 0 or a Session Expiry Interval above 0 with
/// 0x87; clean ones are admitted. The MQTT 5 CONNACK announces Maximum QoS 1 and Retain
/// Available 0. The same CONNECTs are all admitted on `plan_dedicated`, whose CONNACK
/// announces neither limit.
#[test]
fn shared_plan_requires_clean_sessions_and_announces_its_limits() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (_, shared) = hub_with_devices(&api, "plan_shared", &["tracker"]);
    let (_, dedicated) = hub_with_devices(&api, "plan_dedicated", &["tracker"]);
    let rows = |id: &str| -> Vec<(&'static str, Connect, u8)> {
        vec![
            ("3.1.1 clean session 0", Connect::v4(id, false), 5),
            ("MQTT 5 clean start 0", Connect::v5(id, false), 0x87),
            (
                "MQTT 5 session expiry 60",
                Connect::v5(id, true).prop(prop::SESSION_EXPIRY, PropValue::U32(60)),
                0x87,
            ),
            ("3.1.1 clean session 1", Connect::v4(id, true), 0),
            ("MQTT 5 clean start 1", Connect::v5(id, true), 0),
            (
                "MQTT 5 session expiry 0",
                Connect::v5(id, true).prop(prop::SESSION_EXPIRY, PropValue::U32(0)),
                0,
            ),
        ]
    };
    for (what, connect, code) in rows(&shared[0]) {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let ack = c.handshake(&connect);
        assert_eq!(ack.code, code, "shared plan, {what}: {ack:?}");
        if code != 0 {
            c.expect_closed(WAIT);
        } else if connect.level == 5 {
            assert_eq!(
                ack.prop(prop::MAXIMUM_QOS),
                Some(&PropValue::Byte(1)),
                "{what}: {ack:?}"
            );
            assert_eq!(
                ack.prop(prop::RETAIN_AVAILABLE),
                Some(&PropValue::Byte(0)),
                "{what}: {ack:?}"
            );
        }
    }
    for (what, connect, _) in rows(&dedicated[0]) {
        let mut c = RawClient::connect(hub.mqtt_addr());
        let ack = c.handshake(&connect);
        assert_eq!(ack.code, 0, "dedicated plan, {what}: {ack:?}");
        if connect.level == 5 {
            assert_eq!(ack.prop(prop::MAXIMUM_QOS), None, "{what}: {ack:?}");
            assert_eq!(ack.prop(prop::RETAIN_AVAILABLE), None, "{what}: {ack:?}");
        }
        c.ping();
        c.drop_connection();
    }
}

/// Issue 3 plans: on `plan_shared`, SUBSCRIBE at QoS 1 or 2 is granted QoS 0 (both
/// versions) and QoS 1 messages arrive at QoS 0; an MQTT 5 PUBLISH at QoS 2 is answered with
/// DISCONNECT 0x9B (QoS not supported) and a retained one with DISCONNECT 0x9A (Retain not
/// supported); an MQTT 3.1.1 retained or QoS 2 PUBLISH is acknowledged and dropped: not
/// delivered, not stored.
#[test]
fn shared_plan_downgrades_subscriptions_and_refuses_qos2_and_retain() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (_, ids) = hub_with_devices(&api, "plan_shared", &["reader", "writer", "late"]);
    let (reader, writer, late) = (&ids[0], &ids[1], &ids[2]);
    for level in [4, 5] {
        let mut r = connect(&hub, level, reader);
        assert_eq!(
            r.subscribe(1, &[("fleet/#", 2), ("other/#", 1), ("zero/#", 0)]),
            vec![0, 0, 0],
            "level {level}: granted QoS 0"
        );
        let mut w = connect(&hub, 5, writer);
        w.publish(&Publish::v5("fleet/q1", b"one").qos(1, 1));
        let got = r.expect_publish();
        assert_eq!((got.topic.as_str(), got.qos), ("fleet/q1", 0));
        r.drop_connection();
    }

    let mut r = connect(&hub, 5, reader);
    assert_eq!(r.subscribe(1, &[("fleet/#", 1)]), vec![0]);
    for (what, publish, reason) in [
        ("QoS 2", Publish::v5("fleet/q2", b"x").qos(2, 1), 0x9B),
        ("retained", Publish::v5("fleet/r", b"x").retain(true), 0x9A),
        (
            "retained QoS 1",
            Publish::v5("fleet/r1", b"x").qos(1, 2).retain(true),
            0x9A,
        ),
    ] {
        let mut w = connect(&hub, 5, writer);
        w.send_ok(&publish.encode());
        let before = w.expect_closed(WAIT);
        let last = before
            .iter()
            .rfind(|p| p.kind() == kind::DISCONNECT)
            .unwrap_or_else(|| panic!("MQTT 5 {what} PUBLISH: no DISCONNECT: {before:?}"));
        assert_eq!(
            disconnect_reason(&last.body),
            reason,
            "MQTT 5 {what} PUBLISH: DISCONNECT reason"
        );
    }

    let mut w4 = connect(&hub, 4, writer);
    w4.publish(&Publish::v4("fleet/r4", b"kept?").qos(1, 1).retain(true));
    w4.send_ok(&Publish::v4("fleet/r0", b"kept?").retain(true).encode());
    w4.publish(&Publish::v4("fleet/q2v4", b"exactly once?").qos(2, 2));
    w4.publish(&Publish::v4("fleet/end", b"end").qos(1, 3));
    let before: Vec<String> = r
        .publishes_until("fleet/end")
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(
        before,
        Vec::<String>::new(),
        "3.1.1 retained and QoS 2 publishes are acknowledged and dropped"
    );

    let mut l = connect(&hub, 5, late);
    assert_eq!(l.subscribe(1, &[("fleet/#", 0)]), vec![0]);
    w4.publish(&Publish::v4("fleet/end2", b"end").qos(1, 4));
    let stored: Vec<(String, bool)> = l
        .publishes_until("fleet/end2")
        .into_iter()
        .map(|m| (m.topic, m.retain))
        .collect();
    assert_eq!(stored, Vec::<(String, bool)>::new(), "nothing was retained");
}

/// Issue 3 plans through the API: `allow_multiple_connections` is refused for a device of a
/// `plan_shared` hub and `allow_anonymous` for a `plan_shared` hub (400 naming the field),
/// and neither record is created.
#[test]
fn shared_plan_options_are_refused_by_the_api() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((_hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (hub_id, _) = hub_with_devices(&api, "plan_shared", &[]);
    api.post(
        "devices",
        &json!({"hub_id": hub_id, "name": "multi", "allow_insecure": true,
                "allow_multiple_connections": true}),
    )
    .expect_error(400, "invalid_arguments", Some("allow_multiple_connections"));
    assert_eq!(
        api.get(&format!("devices?hub_id={hub_id}")).expect(200)["total_count"],
        0
    );
    let name = unique("anon");
    api.post(
        "hubs",
        &json!({"name": name, "product_plan": "plan_shared", "allow_anonymous": true}),
    )
    .expect_error(400, "invalid_arguments", Some("allow_anonymous"));
    assert_eq!(
        api.get(&format!("hubs?name={name}")).expect(200)["total_count"],
        0
    );
}
