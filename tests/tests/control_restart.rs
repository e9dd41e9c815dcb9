//! A restart keeps every record: hubs, devices, routes, networks, accounts and their keys,
//! field for field (ETags included), on SQLite in the data directory and on PostgreSQL; and
//! the restarted broker admits the stored devices at once, with their stored rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use iothub_e2e::Hub;
use iothub_e2e::api::{Api, Backend, RegistryDb, admin_key, id_of, registry_config};
use iothub_e2e::frames::{self, Connect, kind};
use iothub_e2e::raw::RawClient;
use serde_json::{Value, json};

/// What the tests compare across the restart: every list (one page holds everything here)
/// and every record by id, with its ETag.
fn snapshot(api: &Api) -> Vec<(String, Option<String>, Value)> {
    let mut out = Vec::new();
    for list in ["hubs", "devices", "routes", "networks"] {
        let path = format!("{list}?page_size=100&order_by=created_at_asc");
        let body = api.get(&path).expect(200);
        let items = body[list].as_array().cloned().unwrap_or_default();
        assert_eq!(body["total_count"], items.len(), "{path}: {body}");
        for item in &items {
            let one = format!("{list}/{}", id_of(item));
            let answer = api.get(&one);
            let etag = answer.header("etag").map(str::to_string);
            out.push((one, etag, answer.expect(200)));
        }
        out.push((path, None, body));
    }
    out
}

/// Creates the records of one account: two hubs (one shared, one disabled), devices with
/// filters, flags and a disabled one, the three kinds of route and two networks. Returns
/// (sensor, actuator, disabled device, device of the disabled hub).
fn populate(api: &Api, tag: &str) -> (String, String, String, String) {
    let plant = id_of(&api.create_hub(&json!({
        "name": format!("{tag}-plant"),
        "product_plan": "plan_dedicated",
        "disable_events": true,
        "events_topic_prefix": format!("$SCW/{tag}"),
        "allow_anonymous": true,
    })));
    let fleet = id_of(
        &api.create_hub(&json!({"name": format!("{tag}-fleet"), "product_plan": "plan_shared"})),
    );
    let idle = id_of(&api.create_hub(&json!({"name": format!("{tag}-idle")})));
    let sensor = id_of(&api.create_device(&json!({
        "hub_id": plant,
        "name": "sensor",
        "description": "kitchen thermometer",
        "allow_insecure": true,
        "allow_multiple_connections": true,
        "message_filters": {
            "publish": {"policy": "accept", "topics": ["{{ device.name }}/#"]},
            "subscribe": {"policy": "reject", "topics": ["secret/#"]},
        },
    })));
    let actuator = id_of(
        &api.create_device(&json!({"hub_id": plant, "name": "actuator", "allow_insecure": true})),
    );
    id_of(&api.create_device(&json!({"hub_id": plant, "name": "secure"})));
    let tracker = id_of(
        &api.create_device(&json!({"hub_id": fleet, "name": "tracker", "allow_insecure": true})),
    );
    api.post(&format!("devices/{tracker}/disable"), &json!({}))
        .expect(200);
    let sleeper = id_of(
        &api.create_device(&json!({"hub_id": idle, "name": "sleeper", "allow_insecure": true})),
    );
    api.post(&format!("hubs/{idle}/disable"), &json!({}))
        .expect(200);
    let routes = [
        json!({"hub_id": plant, "name": "to-s3", "topic": "sensor/#",
               "s3_config": {"bucket_region": "fr-par", "bucket_name": "my-bucket", "object_prefix": "iot",
                             "strategy": "per_topic"}}),
        json!({"hub_id": plant, "name": "to-db", "topic": "sensor/+/t",
               "db_config": {"engine": "postgresql", "host": "127.0.0.1", "port": 5432,
                             "dbname": "iot", "username": "w", "password": "pw",
                             "query": "INSERT INTO m VALUES ($TOPIC, $PAYLOAD)"}}),
        json!({"hub_id": fleet, "name": "to-rest", "topic": "#",
               "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/in",
                               "headers": {"X-Source": "iothub"}}}),
    ];
    for r in &routes {
        api.post("routes", r).expect(200);
    }
    for (hub, name, kind, prefix) in [
        (&plant, "rest-in", "rest", "ingest/rest"),
        (&fleet, "sigfox-in", "sigfox", "ingest/sigfox"),
    ] {
        api.post(
            "networks",
            &json!({"hub_id": hub, "name": name, "type": kind, "topic_prefix": prefix}),
        )
        .expect(200);
    }
    (sensor, actuator, tracker, sleeper)
}

/// The CONNACK code a fresh MQTT 5 connection with this client id gets.
fn v5_connack(hub: &Hub, client_id: &str) -> u8 {
    RawClient::connect(hub.mqtt_addr())
        .handshake(&Connect::v5(client_id, true))
        .code
}

fn restart_keeps_every_record(backend: Backend) {
    let db = RegistryDb::new(backend);
    let dir = tempfile::tempdir().unwrap();
    let yaml = registry_config(db.store_url(), false);
    let Some(mut hub) = Hub::start_in(dir.path(), &yaml) else {
        return;
    };
    let admin = Api::admin(&hub);
    let (_, bob_key) = admin.create_account("bob");
    let bob = admin.with_key(&bob_key);
    let (sensor, actuator, tracker, sleeper) = populate(&admin, "a");
    let (bob_sensor, ..) = populate(&bob, "b");
    let before = (snapshot(&admin), snapshot(&bob));

    let status = hub.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: exit status {status:?}"
    );
    let first_logs = hub.logs();
    drop(hub);

    let hub = Hub::start_in(dir.path(), &yaml).unwrap();
    assert_eq!(admin_key(&hub), admin.key, "the key file is not rewritten");
    assert!(
        !hub.logs().contains("first start"),
        "no second admin account at a restart; stderr:\n{}",
        hub.logs()
    );
    // Every record as it was (compared before any device connects: connecting is activity,
    // and `is_connected` is live state, not a record).
    // The API listens on a new port (port 0 again); the keys are the same.
    let admin = Api::admin(&hub);
    let after = (snapshot(&admin), snapshot(&admin.with_key(&bob_key)));
    for (who, before, after) in [("admin", &before.0, &after.0), ("bob", &before.1, &after.1)] {
        let paths = |s: &Vec<(String, Option<String>, Value)>| {
            s.iter().map(|(p, ..)| p.clone()).collect::<Vec<_>>()
        };
        assert_eq!(paths(before), paths(after), "{who}'s records");
        for (b, a) in before.iter().zip(after) {
            assert_eq!(b, a, "{who}'s {}", b.0);
        }
    }
    assert!(first_logs.contains("first start"), "{first_logs}");

    // Devices connect right away, with their stored rules.
    let (mut actuator_conn, _) =
        RawClient::connected(hub.mqtt_addr(), &Connect::v5(&actuator, true));
    let (mut sensor_conn, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&sensor, true));
    let (mut bob_conn, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&bob_sensor, true));
    bob_conn.ping();
    assert_eq!(
        v5_connack(&hub, &tracker),
        0x87,
        "the disabled device stays refused"
    );
    assert_eq!(
        v5_connack(&hub, &sleeper),
        0x88,
        "the disabled hub's device stays refused (server unavailable)"
    );
    // The stored filters are in force: the sensor may publish only under its name.
    assert_eq!(actuator_conn.subscribe(1, &[("#", 1)]), vec![1]);
    assert_eq!(sensor_conn.subscribe(1, &[("secret/#", 0)]), vec![0x87]);
    for (topic, want) in [("other/t", 0x87), ("sensor/t", 0x00)] {
        sensor_conn.send_ok(&frames::Publish::v5(topic, b"x").qos(1, 7).encode());
        let ack = sensor_conn.expect_kind(kind::PUBACK, "PUBACK");
        assert_eq!(
            ack.body.get(2).copied().unwrap_or(0),
            want,
            "PUBACK of {topic}"
        );
    }
    let got = actuator_conn.expect_publish_acked();
    assert_eq!(
        got.topic, "sensor/t",
        "only the allowed publish is delivered"
    );
}

/// Issue 3 "a restart keeps every record", SQLite in the data directory: records of two
/// accounts created through the API, SIGTERM (exit 0), a start on the same data directory:
/// every list and every record equal (ETags too), the admin key unchanged and not printed
/// again, devices admitted at once with their stored filters, the disabled device and the
/// disabled hub's device still refused.
#[test]
fn restart_keeps_every_record_on_sqlite() {
    restart_keeps_every_record(Backend::Sqlite);
}

/// The same on PostgreSQL (`store.url`, a database of its own): fails, never skips, when
/// the server is unreachable.
#[test]
fn restart_keeps_every_record_on_postgresql() {
    restart_keeps_every_record(Backend::Postgres);
}
