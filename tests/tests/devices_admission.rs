//! Device admission over MQTT through the real binary, with the registry behind it: who may
//! connect (client id or username = device id, insecure devices only on plain TCP), and what
//! the API does to live connections (device disable and delete, hub disable and enable,
//! `allow_multiple_connections`). The listener here has no anonymous hub, so a client that
//! is not a device has nowhere to go.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::api::{Api, Backend, RegistryDb, id_of, start_registry_hub};
use iothub_e2e::frames::{self, Connack, Connect, Publish, disconnect_reason, kind, prop};
use iothub_e2e::raw::{RawClient, WAIT};
use iothub_e2e::{Hub, unique};
use serde_json::json;

/// CONNACK refusal codes: MQTT 3.1.1 return code 5 / MQTT 5 0x87, Not authorized.
const NOT_AUTHORIZED: [(u8, u8); 2] = [(4, 5), (5, 0x87)];
/// A disabled hub: MQTT 3.1.1 return code 3 / MQTT 5 0x88, Server unavailable.
const SERVER_UNAVAILABLE: [(u8, u8); 2] = [(4, 3), (5, 0x88)];
/// MQTT 5 DISCONNECT reason codes.
const SESSION_TAKEN_OVER: u8 = 0x8E;
const ADMINISTRATIVE_ACTION: u8 = 0x98;

fn connect_packet(level: u8, client_id: &str) -> Connect {
    if level == 5 {
        Connect::v5(client_id, true)
    } else {
        Connect::v4(client_id, true)
    }
}

/// Opens a connection and returns the CONNACK; a refusal must also close the connection.
fn attempt(hub: &Hub, connect: &Connect) -> (RawClient, Connack) {
    let mut c = RawClient::connect(hub.mqtt_addr());
    let ack = c.handshake(connect);
    if ack.code != 0 {
        c.expect_closed(WAIT);
    }
    (c, ack)
}

/// A connection that must be refused with `code`.
fn refused(hub: &Hub, connect: &Connect, code: u8, what: &str) {
    let (_, ack) = attempt(hub, connect);
    assert_eq!(
        ack.code, code,
        "{what} (MQTT level {}): CONNACK {ack:?}",
        connect.level
    );
}

/// A connection that must be accepted and served.
fn accepted(hub: &Hub, connect: &Connect, what: &str) -> (RawClient, Connack) {
    let (mut c, ack) = attempt(hub, connect);
    assert_eq!(
        ack.code, 0,
        "{what} (MQTT level {}): CONNACK {ack:?}",
        connect.level
    );
    c.ping();
    (c, ack)
}

/// A dedicated hub with insecure devices `names`; returns the hub id and the device ids.
fn hub_with_devices(api: &Api, names: &[&str]) -> (String, Vec<String>) {
    let hub =
        id_of(&api.create_hub(&json!({"name": unique("hub"), "product_plan": "plan_dedicated"})));
    let ids = names
        .iter()
        .map(|n| {
            id_of(&api.create_device(&json!({"hub_id": hub, "name": n, "allow_insecure": true})))
        })
        .collect();
    (hub, ids)
}

/// The connection must get an MQTT 5 DISCONNECT with `reason` (3.1.1: nothing), then close.
fn expect_kicked(c: &mut RawClient, reason: u8, what: &str) {
    let before = c.expect_closed(WAIT);
    if c.v5 {
        let last = before
            .iter()
            .rfind(|p| p.kind() == kind::DISCONNECT)
            .unwrap_or_else(|| panic!("{what}: no DISCONNECT before the close: {before:?}"));
        assert_eq!(
            disconnect_reason(&last.body),
            reason,
            "{what}: DISCONNECT reason"
        );
    } else {
        assert!(
            before.iter().all(|p| p.kind() != kind::DISCONNECT),
            "{what}: a 3.1.1 client gets no DISCONNECT: {before:?}"
        );
    }
}

/// Issue 3 admission: an unknown client id (a UUID that is no device, or any other text)
/// with no anonymous hub on the listener is refused with Not authorized (3.1.1 return code 5,
/// MQTT 5 0x87) and closed; so are a device that does not allow insecure connections (plain
/// TCP carries no certificate) by client id or by username, a disabled device, and a device
/// id as username with a non-empty password. An insecure device is admitted by client id,
/// and by username with an empty password (any client id, or none: MQTT 5 then gets the
/// device id as Assigned Client Identifier).
#[test]
fn devices_are_admitted_only_as_their_settings_allow() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (hub_id, ids) = hub_with_devices(&api, &["insecure", "disabled"]);
    let (insecure, disabled) = (&ids[0], &ids[1]);
    let secure = id_of(&api.create_device(&json!({"hub_id": hub_id, "name": "secure"})));
    assert_eq!(
        api.get(&format!("devices/{secure}")).expect(200)["allow_insecure"],
        false
    );
    api.post(&format!("devices/{disabled}/disable"), &json!({}))
        .expect(200);
    let unknown_uuid = "6f1c0b52-5a7e-4c1d-9d8e-0123456789ab";

    for (level, code) in NOT_AUTHORIZED {
        let with_user = |client_id: &str, user: &str, password: &[u8]| Connect {
            username: Some(user.into()),
            password: Some(password.to_vec()),
            ..connect_packet(level, client_id)
        };
        let refusals: Vec<(&str, Connect)> = vec![
            (
                "an unknown UUID client id",
                connect_packet(level, unknown_uuid),
            ),
            (
                "an unknown client id",
                connect_packet(level, &unique("stranger")),
            ),
            (
                "a secure device by client id",
                connect_packet(level, &secure),
            ),
            (
                "a secure device by username",
                with_user(&unique("c"), &secure, b""),
            ),
            (
                "a disabled device by client id",
                connect_packet(level, disabled),
            ),
            (
                "a disabled device by username",
                with_user(&unique("c"), disabled, b""),
            ),
            (
                "a device id as username with a password",
                with_user(&unique("c"), insecure, b"secret"),
            ),
            (
                "an unknown UUID as username",
                with_user(&unique("c"), unknown_uuid, b""),
            ),
        ];
        for (what, connect) in &refusals {
            refused(&hub, connect, code, what);
        }

        let (c, _) = accepted(
            &hub,
            &connect_packet(level, insecure),
            "insecure by client id",
        );
        c.drop_connection();
        let (c, _) = accepted(
            &hub,
            &with_user(&unique("c"), insecure, b""),
            "insecure by username, empty password",
        );
        c.drop_connection();
        let (c, ack) = accepted(
            &hub,
            &Connect {
                password: None,
                ..with_user("", insecure, b"")
            },
            "insecure by username, no password, empty client id",
        );
        if level == 5 {
            assert_eq!(
                ack.prop(prop::ASSIGNED_CLIENT_ID),
                Some(&frames::PropValue::Str(insecure.clone())),
                "the session's client id is the device id: {ack:?}"
            );
        }
        c.drop_connection();
    }
}

/// Issue 3 live changes: disabling a connected device closes its connection at once (MQTT 5:
/// DISCONNECT 0x98 Administrative action; 3.1.1: closed) and refuses it afterwards (0x87 / 5)
/// until it is enabled again; deleting a connected device does the same and its id is then
/// unknown. Another device of the hub is not disturbed. The API shows `is_connected`.
#[test]
fn disabling_or_deleting_a_connected_device_closes_its_connection() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (hub_id, ids) = hub_with_devices(&api, &["a", "b", "c"]);
    for (level, code) in NOT_AUTHORIZED {
        let (mut a, _) = accepted(&hub, &connect_packet(level, &ids[0]), "device a");
        let (mut bystander, _) = accepted(&hub, &connect_packet(5, &ids[1]), "device b");
        assert_eq!(
            api.get(&format!("devices/{}", ids[0])).expect(200)["is_connected"],
            true
        );
        assert_eq!(
            api.get(&format!("hubs/{hub_id}")).expect(200)["connected_device_count"],
            2
        );
        api.post(&format!("devices/{}/disable", ids[0]), &json!({}))
            .expect(200);
        expect_kicked(&mut a, ADMINISTRATIVE_ACTION, "disabled device");
        refused(
            &hub,
            &connect_packet(level, &ids[0]),
            code,
            "disabled device",
        );
        bystander.ping();
        let enabled = api
            .post(&format!("devices/{}/enable", ids[0]), &json!({}))
            .expect(200);
        assert_eq!(enabled["status"], "enabled", "{enabled}");
        let (a, _) = accepted(&hub, &connect_packet(level, &ids[0]), "re-enabled device");
        a.drop_connection();
        bystander.drop_connection();
    }
    for level in [4, 5] {
        let id = id_of(&api.create_device(
            &json!({"hub_id": hub_id, "name": unique("doomed"), "allow_insecure": true}),
        ));
        let (mut c, _) = accepted(&hub, &connect_packet(level, &id), "device to delete");
        api.delete(&format!("devices/{id}")).expect(204);
        expect_kicked(&mut c, ADMINISTRATIVE_ACTION, "deleted device");
        let code = NOT_AUTHORIZED[usize::from(level == 5)].1;
        refused(&hub, &connect_packet(level, &id), code, "deleted device");
        api.get(&format!("devices/{id}"))
            .expect_error(404, "not_found", None);
    }
}

/// Issue 3 hub lifecycle: disabling a hub closes its devices' live connections at once (MQTT
/// 5: DISCONNECT 0x98) and refuses new ones (0x88 Server unavailable / 3.1.1 return code 3),
/// while another hub's device stays connected; enabling it admits them again and they
/// exchange messages.
#[test]
fn disabling_a_hub_closes_its_devices_and_refuses_new_ones() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (plant, ids) = hub_with_devices(&api, &["v5", "v4"]);
    let (_, other) = hub_with_devices(&api, &["elsewhere"]);
    let (mut d5, _) = accepted(&hub, &connect_packet(5, &ids[0]), "v5 device");
    let (mut d4, _) = accepted(&hub, &connect_packet(4, &ids[1]), "v4 device");
    let (mut elsewhere, _) = accepted(&hub, &connect_packet(5, &other[0]), "other hub's device");

    let disabled = api
        .post(&format!("hubs/{plant}/disable"), &json!({}))
        .expect(200);
    assert_eq!(disabled["enabled"], false, "{disabled}");
    expect_kicked(&mut d5, ADMINISTRATIVE_ACTION, "device of the disabled hub");
    expect_kicked(&mut d4, ADMINISTRATIVE_ACTION, "device of the disabled hub");
    elsewhere.ping();
    for (level, code) in SERVER_UNAVAILABLE {
        for id in &ids {
            refused(
                &hub,
                &connect_packet(level, id),
                code,
                "device of a disabled hub",
            );
        }
    }
    assert_eq!(
        api.get(&format!("hubs/{plant}")).expect(200)["status"],
        "disabled"
    );

    let enabled = api
        .post(&format!("hubs/{plant}/enable"), &json!({}))
        .expect(200);
    assert_eq!(enabled["enabled"], true, "{enabled}");
    assert_eq!(
        api.get(&format!("hubs/{plant}")).expect(200)["status"],
        "ready"
    );
    let (mut d5, _) = accepted(&hub, &connect_packet(5, &ids[0]), "v5 device after enable");
    let (mut d4, _) = accepted(&hub, &connect_packet(4, &ids[1]), "v4 device after enable");
    assert_eq!(d5.subscribe(1, &[("back/#", 1)]), vec![1]);
    d4.publish(&Publish::v4("back/on", b"hello").qos(1, 1));
    let got = d5.expect_publish_acked();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("back/on", &b"hello"[..])
    );
}

/// Issue 3 `allow_multiple_connections`: off, a second connection of the device (by client
/// id, or by username) takes the first one over: MQTT 5 DISCONNECT 0x8E Session taken over,
/// the newest is served. On (dedicated plan), two connections of one device both stay, and
/// both receive what they subscribed to.
#[test]
fn multiple_connections_only_when_the_device_allows_them() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (hub_id, ids) = hub_with_devices(&api, &["single", "publisher"]);
    let (single, publisher) = (&ids[0], &ids[1]);
    let multi = id_of(&api.create_device(&json!({
        "hub_id": hub_id, "name": "multi", "allow_insecure": true,
        "allow_multiple_connections": true,
    })));

    let (mut first, _) = accepted(&hub, &connect_packet(5, single), "first connection");
    let (mut second, _) = accepted(&hub, &connect_packet(5, single), "second connection");
    expect_kicked(&mut first, SESSION_TAKEN_OVER, "the older connection");
    second.ping();
    let by_username = Connect {
        username: Some(single.clone()),
        password: Some(Vec::new()),
        ..Connect::v5(&unique("other"), true)
    };
    let (mut third, _) = accepted(&hub, &by_username, "third connection, by username");
    expect_kicked(&mut second, SESSION_TAKEN_OVER, "the older connection");
    third.ping();

    let (mut m1, _) = accepted(&hub, &connect_packet(5, &multi), "first of multi");
    let (mut m2, _) = accepted(&hub, &connect_packet(5, &multi), "second of multi");
    assert_eq!(m1.subscribe(1, &[("fan/out", 1)]), vec![1]);
    assert_eq!(m2.subscribe(1, &[("fan/out", 1)]), vec![1]);
    let (mut p, _) = accepted(&hub, &connect_packet(5, publisher), "publisher");
    p.publish(&Publish::v5("fan/out", b"both").qos(1, 1));
    for (name, c) in [("first", &mut m1), ("second", &mut m2)] {
        let got = c.expect_publish_acked();
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice()),
            ("fan/out", &b"both"[..]),
            "the {name} connection of the multi device"
        );
        c.ping();
    }
}

/// SCALEWAY-API.md: a device's `last_activity_at` is the epoch until it is first seen; once it
/// exchanged packets the API answers a time at or after its connection (written within a few
/// seconds, then at most once a minute per device), and a device that stayed away keeps the
/// epoch.
#[test]
fn last_activity_at_follows_the_device() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let (_, ids) = hub_with_devices(&api, &["active", "idle"]);
    let activity = |id: &str| {
        api.get(&format!("devices/{id}")).expect(200)["last_activity_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    const EPOCH: &str = "1970-01-01T00:00:00.000000Z";
    assert_eq!(activity(&ids[0]), EPOCH);
    let (mut c, _) = accepted(&hub, &connect_packet(5, &ids[0]), "active device");
    c.send_ok(&Publish::v5("t/x", b"hello").encode());
    c.ping();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = loop {
        let at = activity(&ids[0]);
        if at != EPOCH {
            break at;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last_activity_at still the epoch 20 s after the device's traffic"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    // RFC 3339 timestamps of one format compare as text: the activity is recent.
    let created = api.get(&format!("devices/{}", ids[0])).expect(200)["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(seen >= created, "activity {seen} before creation {created}");
    assert_eq!(activity(&ids[1]), EPOCH, "a device that never connected");
}
