//! Every endpoint's happy path: hubs, devices, routes and networks through the HTTP API,
//! on SQLite and on PostgreSQL, every answer checked against the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_common;

use api_common::{Api, id_of};
use iothub_control::records::{DeviceStatus, HubStatus};
use iothub_control::runtime::RuntimeCall;
use iothub_model::{DeviceId, HubId};
use serde_json::{Value, json};

api_tests!(
    hub_lifecycle,
    hub_list_paging_order_and_filters,
    hub_with_devices_is_deleted_only_with_delete_devices,
    device_lifecycle,
    device_list_filters,
    routes,
    networks,
    lorawan_devices,
);

/// The `name` of every item of a list answer.
fn names(body: &Value, list: &str) -> Vec<String> {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {body}"))
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The hub statuses the runtime was told about, in order.
fn hub_statuses(api: &Api) -> Vec<HubStatus> {
    api.runtime
        .take_calls()
        .into_iter()
        .filter_map(|c| match c {
            RuntimeCall::HubUpserted(h) => Some(h.status),
            _ => None,
        })
        .collect()
}

async fn hub_lifecycle(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    api.runtime.take_calls();

    let created = alice
        .post("hubs")
        .json(json!({"name": "home", "product_plan": "plan_shared"}))
        .send()
        .await;
    let etag = created.etag();
    let hub = created.expect(200);
    assert_eq!(hub["status"], "ready");
    assert_eq!(hub["enabled"], true);
    assert_eq!(hub["product_plan"], "plan_shared");
    assert_eq!(hub["events_topic_prefix"], "$SCW/events");
    assert_eq!(hub["region"], "fr-par");
    assert_eq!(hub["device_count"], 0);
    assert_eq!(hub["limits"]["max_payload_bytes"], 4 * 1024 * 1024);
    assert_eq!(
        hub_statuses(api),
        [HubStatus::Enabling, HubStatus::Ready],
        "created as enabling, then ready"
    );
    let id = id_of(&hub);

    let got = alice.get(&format!("hubs/{id}")).send().await;
    assert_eq!(got.etag(), etag);
    assert_eq!(got.expect(200), hub);

    let list = alice.get("hubs").send().await.expect(200);
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["hubs"][0], hub);

    let patched = alice
        .patch(&format!("hubs/{id}"))
        .json(json!({"name": "house", "disable_events": true}))
        .send()
        .await;
    assert_ne!(patched.etag(), etag);
    let patched = patched.expect(200);
    assert_eq!(patched["name"], "house");
    assert_eq!(patched["disable_events"], true);
    assert_eq!(patched["product_plan"], "plan_shared");

    let disabled = alice
        .post(&format!("hubs/{id}/disable"))
        .send()
        .await
        .expect(200);
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(disabled["enabled"], false);
    assert_eq!(
        hub_statuses(api),
        [HubStatus::Ready, HubStatus::Disabling, HubStatus::Disabled]
    );

    let replanned = alice
        .patch(&format!("hubs/{id}"))
        .json(json!({"product_plan": "plan_dedicated", "allow_anonymous": true}))
        .send()
        .await
        .expect(200);
    assert_eq!(replanned["product_plan"], "plan_dedicated");
    assert_eq!(replanned["allow_anonymous"], true);
    assert_eq!(replanned["status"], "disabled");

    let enabled = alice
        .post(&format!("hubs/{id}/enable"))
        .send()
        .await
        .expect(200);
    assert_eq!(enabled["status"], "ready");
    assert_eq!(enabled["enabled"], true);
    hub_statuses(api);

    alice.delete(&format!("hubs/{id}")).send().await.expect(204);
    assert!(
        api.runtime
            .take_calls()
            .contains(&RuntimeCall::HubRemoved(id.parse::<HubId>().unwrap()))
    );
    let gone = alice
        .get(&format!("hubs/{id}"))
        .send()
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(gone["resource"], "hub");
    assert_eq!(gone["resource_id"], id.as_str());
}

async fn hub_list_paging_order_and_filters(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let created = [
        ("gamma", "plan_shared"),
        ("alpha", "plan_dedicated"),
        ("epsilon", "plan_ha"),
        ("beta", "plan_dedicated"),
        ("delta", "plan_dedicated"),
    ];
    for (name, plan) in created {
        alice
            .post("hubs")
            .json(json!({ "name": name, "product_plan": plan }))
            .send()
            .await
            .expect(200);
    }
    let cases: &[(&str, &[&str], u64)] = &[
        ("", &["alpha", "beta", "delta", "epsilon", "gamma"], 5),
        (
            "?order_by=name_desc",
            &["gamma", "epsilon", "delta", "beta", "alpha"],
            5,
        ),
        ("?page_size=2", &["alpha", "beta"], 5),
        ("?page_size=2&page=3", &["gamma"], 5),
        ("?page=4&page_size=2", &[], 5),
        ("?name=ta", &["beta", "delta"], 2),
        ("?name=ALP", &["alpha"], 1),
        ("?name=zzz", &[], 0),
        (
            "?order_by=created_at_asc",
            &["gamma", "alpha", "epsilon", "beta", "delta"],
            5,
        ),
        (
            "?order_by=created_at_desc&page_size=100",
            &["delta", "beta", "epsilon", "alpha", "gamma"],
            5,
        ),
        // Ties are broken by id, so these pages stop before the three dedicated hubs.
        (
            "?order_by=product_plan_desc&page_size=2",
            &["gamma", "epsilon"],
            5,
        ),
        (
            "?order_by=product_plan_asc&page_size=2&page=3",
            &["gamma"],
            5,
        ),
        ("?order_by=status_asc&name=ps", &["epsilon"], 1),
    ];
    for (query, want, total) in cases {
        let body = alice.get(&format!("hubs{query}")).send().await.expect(200);
        assert_eq!(names(&body, "hubs"), *want, "{query}");
        assert_eq!(body["total_count"], *total, "{query}");
    }
}

async fn hub_with_devices_is_deleted_only_with_delete_devices(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "h"}))
            .send()
            .await
            .expect(200),
    );
    let device = id_of(
        &alice
            .post("devices")
            .json(json!({"hub_id": hub, "name": "d"}))
            .send()
            .await
            .expect(200),
    );
    let refused = alice
        .delete(&format!("hubs/{hub}"))
        .send()
        .await
        .expect_error(412, "precondition_failed", None);
    assert_eq!(refused["precondition"], "resource_state");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("delete_devices=true"),
        "{refused}"
    );
    assert_eq!(
        alice.get(&format!("hubs/{hub}")).send().await.expect(200)["device_count"],
        1
    );
    alice
        .delete(&format!("hubs/{hub}?delete_devices=false"))
        .send()
        .await
        .expect(412);

    api.runtime.take_calls();
    alice
        .delete(&format!("hubs/{hub}?delete_devices=true"))
        .send()
        .await
        .expect(204);
    let calls = api.runtime.take_calls();
    assert_eq!(
        calls,
        [
            RuntimeCall::DeviceRemoved(device.parse::<DeviceId>().unwrap()),
            RuntimeCall::HubRemoved(hub.parse::<HubId>().unwrap()),
        ]
    );
    alice
        .get(&format!("devices/{device}"))
        .send()
        .await
        .expect_error(404, "not_found", None);
}

async fn device_lifecycle(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "h"}))
            .send()
            .await
            .expect(200),
    );
    let created = alice
        .post("devices")
        .json(json!({"hub_id": hub, "name": "sensor-1", "allow_insecure": true}))
        .send()
        .await;
    let etag = created.etag();
    let created = created.expect(200);
    let device = &created["device"];
    let id = id_of(device);
    assert_eq!(device["name"], "sensor-1");
    assert_eq!(device["hub_id"], hub.as_str());
    assert_eq!(device["status"], "enabled");
    assert_eq!(device["allow_insecure"], true);
    assert_eq!(device["is_connected"], false);
    assert_eq!(device["last_activity_at"], "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        device["message_filters"],
        json!({"publish": {"policy": "reject", "topics": []},
               "subscribe": {"policy": "reject", "topics": []}})
    );

    let got = alice.get(&format!("devices/{id}")).send().await;
    assert_eq!(got.etag(), etag);
    assert_eq!(&got.expect(200), device);

    let hub_id: HubId = hub.parse().unwrap();
    let device_id: DeviceId = id.parse().unwrap();
    api.runtime.set_connected(hub_id, device_id, true);
    assert_eq!(
        alice.get(&format!("devices/{id}")).send().await.expect(200)["is_connected"],
        true
    );
    let hub_view = alice.get(&format!("hubs/{hub}")).send().await.expect(200);
    assert_eq!(hub_view["device_count"], 1);
    assert_eq!(hub_view["connected_device_count"], 1);

    api.runtime.take_calls();
    let patched = alice
        .patch(&format!("devices/{id}"))
        .json(json!({
            "description": "kitchen",
            "message_filters": {"publish": {"policy": "accept", "topics": ["{{ hub.id }}/{{ device.name }}/+"]}}
        }))
        .send()
        .await;
    assert_ne!(patched.etag(), etag);
    let patched = patched.expect(200);
    assert_eq!(patched["description"], "kitchen");
    assert_eq!(
        patched["message_filters"]["publish"],
        json!({"policy": "accept", "topics": ["{{ hub.id }}/{{ device.name }}/+"]})
    );
    assert_eq!(
        patched["message_filters"]["subscribe"],
        json!({"policy": "reject", "topics": []}),
        "an absent direction keeps its rule"
    );
    assert!(
        matches!(api.runtime.take_calls().as_slice(), [RuntimeCall::DeviceUpserted(d)] if d.description == "kitchen"),
        "the runtime hears of the change"
    );

    let disabled = alice
        .post(&format!("devices/{id}/disable"))
        .send()
        .await
        .expect(200);
    assert_eq!(disabled["status"], "disabled");
    assert!(matches!(
        api.runtime.take_calls().as_slice(),
        [RuntimeCall::DeviceUpserted(d)] if d.status == DeviceStatus::Disabled
    ));
    let enabled = alice
        .post(&format!("devices/{id}/enable"))
        .send()
        .await
        .expect(200);
    assert_eq!(enabled["status"], "enabled");

    // Moving to another hub of the same account.
    let other = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "other"}))
            .send()
            .await
            .expect(200),
    );
    let moved = alice
        .patch(&format!("devices/{id}"))
        .json(json!({"hub_id": other}))
        .send()
        .await
        .expect(200);
    assert_eq!(moved["hub_id"], other.as_str());
    assert_eq!(moved["description"], "kitchen");
    let in_other = alice
        .get(&format!("devices?hub_id={other}"))
        .send()
        .await
        .expect(200);
    assert_eq!(names(&in_other, "devices"), ["sensor-1"]);

    api.runtime.take_calls();
    alice
        .delete(&format!("devices/{id}"))
        .send()
        .await
        .expect(204);
    assert_eq!(
        api.runtime.take_calls(),
        [RuntimeCall::DeviceRemoved(device_id)]
    );
    alice
        .get(&format!("devices/{id}"))
        .send()
        .await
        .expect_error(404, "not_found", None);
}

async fn device_list_filters(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = |name: &'static str| {
        let alice = alice.clone();
        async move {
            id_of(
                &alice
                    .post("hubs")
                    .json(json!({ "name": name }))
                    .send()
                    .await
                    .expect(200),
            )
        }
    };
    let (h1, h2) = (hub("h1").await, hub("h2").await);
    let devices = [
        ("a", &h1, true, false),
        ("b", &h1, false, true),
        ("c", &h1, true, false),
        ("d", &h2, false, false),
    ];
    for (name, hub, insecure, disable) in devices {
        let id = id_of(
            &alice
                .post("devices")
                .json(json!({"hub_id": hub, "name": name, "allow_insecure": insecure}))
                .send()
                .await
                .expect(200),
        );
        if disable {
            alice
                .post(&format!("devices/{id}/disable"))
                .send()
                .await
                .expect(200);
        }
    }
    let cases: Vec<(String, Vec<&str>)> = vec![
        (String::new(), vec!["a", "b", "c", "d"]),
        (format!("?hub_id={h1}"), vec!["a", "b", "c"]),
        (format!("?hub_id={h2}"), vec!["d"]),
        ("?allow_insecure=true".into(), vec!["a", "c"]),
        ("?allow_insecure=false".into(), vec!["b", "d"]),
        ("?status=disabled".into(), vec!["b"]),
        (
            "?status=enabled&order_by=name_desc".into(),
            vec!["d", "c", "a"],
        ),
        ("?allow_multiple_connections=true".into(), vec![]),
        ("?name=c".into(), vec!["c"]),
        (
            format!("?hub_id={h1}&allow_insecure=true&status=enabled"),
            vec!["a", "c"],
        ),
        (
            format!("?order_by=allow_insecure_asc&hub_id={h1}&page_size=1"),
            vec!["b"],
        ),
        ("?order_by=hub_id_asc&name=d".into(), vec!["d"]),
    ];
    for (query, want) in cases {
        let body = alice
            .get(&format!("devices{query}"))
            .send()
            .await
            .expect(200);
        assert_eq!(names(&body, "devices"), want, "{query}");
    }
}

async fn routes(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "h"}))
            .send()
            .await
            .expect(200),
    );
    let configs = [
        (
            "to-s3",
            "s3",
            json!({"s3_config": {"bucket_region": "fr-par", "bucket_name": "my-bucket",
                                 "object_prefix": "iot", "strategy": "per_topic"}}),
        ),
        (
            "to-db",
            "database",
            json!({"db_config": {"engine": "postgresql", "host": "127.0.0.1", "port": 5432,
                                 "dbname": "iot", "username": "writer", "password": "s3cret",
                                 "query": "INSERT INTO m VALUES ($TOPIC, $PAYLOAD)"}}),
        ),
        (
            "to-rest",
            "rest",
            json!({"rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/in",
                                   "headers": {"X-Source": "iothub"}}}),
        ),
    ];
    let mut ids = Vec::new();
    for (name, kind, config) in &configs {
        let mut body = json!({"hub_id": hub, "name": name, "topic": "sensors/+/temp"});
        body.as_object_mut()
            .unwrap()
            .extend(config.as_object().unwrap().clone());
        let created = alice.post("routes").json(body).send().await.expect(200);
        assert_eq!(created["type"], *kind);
        let block = config.as_object().unwrap().keys().next().unwrap();
        assert!(created.get(block).is_some(), "{created}");
        let got = alice
            .get(&format!("routes/{}", id_of(&created)))
            .send()
            .await
            .expect(200);
        assert_eq!(got, created);
        ids.push(id_of(&created));
    }
    let db = alice
        .get(&format!("routes/{}", ids[1]))
        .send()
        .await
        .expect(200);
    assert_eq!(db["db_config"]["username"], "writer");
    assert!(
        db["db_config"].get("password").is_none(),
        "the password is write-only: {db}"
    );

    let list = alice
        .get(&format!("routes?hub_id={hub}"))
        .send()
        .await
        .expect(200);
    assert_eq!(list["total_count"], 3);
    assert_eq!(names(&list, "routes"), ["to-db", "to-rest", "to-s3"]);
    for route in list["routes"].as_array().unwrap() {
        for block in ["s3_config", "db_config", "rest_config"] {
            assert!(route.get(block).is_none(), "lists omit the config: {route}");
        }
    }
    let by_type = alice
        .get("routes?order_by=type_desc")
        .send()
        .await
        .expect(200);
    assert_eq!(names(&by_type, "routes"), ["to-s3", "to-rest", "to-db"]);

    let s3 = &ids[0];
    let patched = alice
        .patch(&format!("routes/{s3}"))
        .json(json!({"name": "archive", "topic": "sensors/#",
                     "s3_config": {"bucket_region": "nl-ams", "bucket_name": "other-bucket",
                                   "strategy": "per_message"}}))
        .send()
        .await
        .expect(200);
    assert_eq!(patched["name"], "archive");
    assert_eq!(patched["topic"], "sensors/#");
    assert_eq!(patched["s3_config"]["strategy"], "per_message");
    assert_eq!(patched["s3_config"]["object_prefix"], "");

    alice
        .patch(&format!("routes/{s3}"))
        .json(json!({"rest_config": {"verb": "get", "uri": "http://127.0.0.1:9/"}}))
        .send()
        .await
        .expect_error(400, "invalid_arguments", Some("rest_config"));

    for id in &ids {
        alice
            .delete(&format!("routes/{id}"))
            .send()
            .await
            .expect(204);
        alice
            .get(&format!("routes/{id}"))
            .send()
            .await
            .expect_error(404, "not_found", None);
    }
    assert_eq!(
        alice.get("routes").send().await.expect(200)["total_count"],
        0
    );
}

async fn networks(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "h"}))
            .send()
            .await
            .expect(200),
    );
    let mut secrets = Vec::new();
    for (name, kind, prefix) in [
        ("rest-in", "rest", "ingest/rest"),
        ("sigfox-in", "sigfox", "ingest/sigfox"),
    ] {
        let created = alice
            .post("networks")
            .json(json!({"hub_id": hub, "name": name, "type": kind, "topic_prefix": prefix}))
            .send()
            .await
            .expect(200);
        assert_eq!(created["network"]["type"], kind);
        assert_eq!(created["network"]["topic_prefix"], prefix);
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.len() >= 32, "a strong secret: {secret}");
        secrets.push(secret);
        let id = id_of(&created);
        let got = alice
            .get(&format!("networks/{id}"))
            .send()
            .await
            .expect(200);
        assert_eq!(got, created["network"]);
        assert!(got.get("secret").is_none(), "the secret is shown once");
    }
    assert_ne!(secrets[0], secrets[1]);

    let cases: &[(&str, &[&str])] = &[
        ("", &["rest-in", "sigfox-in"]),
        ("?topic_prefix=ingest/sigfox", &["sigfox-in"]),
        ("?topic_prefix=ingest", &[]),
        ("?order_by=type_desc", &["sigfox-in", "rest-in"]),
        ("?name=rest", &["rest-in"]),
    ];
    for (query, want) in cases {
        let body = alice
            .get(&format!("networks{query}"))
            .send()
            .await
            .expect(200);
        assert_eq!(names(&body, "networks"), *want, "{query}");
    }

    let list = alice.get("networks").send().await.expect(200);
    let id = id_of(&list["networks"][0]);
    // Networks have no update in the reference.
    alice
        .patch(&format!("networks/{id}"))
        .json(json!({"name": "x"}))
        .unchecked()
        .send()
        .await
        .expect_error(405, "method_not_allowed", None);
    alice
        .delete(&format!("networks/{id}"))
        .send()
        .await
        .expect(204);
    alice
        .get(&format!("networks/{id}"))
        .send()
        .await
        .expect_error(404, "not_found", None);
}

/// LoRaWAN devices of a LoRaWAN network: registered with their keys (never shown again),
/// listed, fetched by DevEUI in either case, deleted; refused on other networks, with bad hex,
/// half an ABP session, no key at all, or a DevEUI or DevAddr already used in the network.
async fn lorawan_devices(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "h"}))
            .send()
            .await
            .expect(200),
    );
    let network = |kind: &'static str| {
        let alice = &alice;
        let hub = hub.clone();
        async move {
            let created = alice
                .post("networks")
                .json(json!({"hub_id": hub, "name": kind, "type": kind, "topic_prefix": kind}))
                .send()
                .await
                .expect(200);
            assert_eq!(
                created["network"]["endpoint"],
                format!("/networks/{}", id_of(&created))
            );
            id_of(&created)
        }
    };
    let lora = network("lorawan").await;
    let rest = network("rest").await;
    let devices = format!("networks/{lora}/lorawan-devices");

    let abp = json!({
        "dev_eui": "A1B2C3D4E5F60718", "dev_addr": "260B1F2A",
        "nwk_s_key": "2b7e151628aed2a6abf7158809cf4f3c",
        "app_s_key": "000102030405060708090a0b0c0d0e0f", "f_cnt_up": 40
    });
    let created = alice
        .post(&devices)
        .json(abp.clone())
        .send()
        .await
        .expect(200);
    assert_eq!(created["dev_eui"], "a1b2c3d4e5f60718");
    assert_eq!(created["dev_addr"], "260b1f2a");
    assert_eq!(created["f_cnt_up"], 40);
    assert_eq!(created["has_session_keys"], true);
    assert_eq!(created["has_app_key"], false);
    assert!(created.get("nwk_s_key").is_none(), "keys are never shown");
    let otaa = json!({
        "dev_eui": "0203040502030405", "join_eui": "70B3D57ED0001234",
        "app_key": "01010101010101010101010101010101"
    });
    alice.post(&devices).json(otaa).send().await.expect(200);

    let list = alice.get(&devices).send().await.expect(200);
    assert_eq!(list["total_count"], 2);
    assert_eq!(list["lorawan_devices"][0]["dev_eui"], "0203040502030405");
    let got = alice
        .get(&format!("{devices}/A1B2C3D4E5F60718"))
        .send()
        .await
        .expect(200);
    assert_eq!(got, created);

    let mut same_addr = abp.clone();
    same_addr["dev_eui"] = json!("1111111111111111");
    let refused: &[(&str, Value, u16, &str, Option<&str>)] = &[
        (&devices, abp.clone(), 409, "conflict", None),
        (&devices, same_addr, 409, "conflict", None),
        (
            &devices,
            json!({"dev_eui": "a1b2", "app_key": "01010101010101010101010101010101"}),
            400,
            "invalid_arguments",
            Some("dev_eui"),
        ),
        (
            &devices,
            json!({"dev_eui": "2222222222222222", "app_key": "zz010101010101010101010101010101"}),
            400,
            "invalid_arguments",
            Some("app_key"),
        ),
        (
            &devices,
            json!({"dev_eui": "2222222222222222", "dev_addr": "01020304"}),
            400,
            "invalid_arguments",
            Some("dev_addr"),
        ),
        (
            &devices,
            json!({"dev_eui": "2222222222222222"}),
            400,
            "invalid_arguments",
            Some("app_key"),
        ),
    ];
    for (path, body, status, kind, argument) in refused {
        alice
            .post(path)
            .json(body.clone())
            .send()
            .await
            .expect_error(*status, kind, *argument);
    }
    alice
        .post(&format!("networks/{rest}/lorawan-devices"))
        .json(json!({"dev_eui": "2222222222222222", "app_key": "01010101010101010101010101010101"}))
        .send()
        .await
        .expect_error(400, "invalid_arguments", Some("network_id"));

    alice
        .delete(&format!("{devices}/a1b2c3d4e5f60718"))
        .send()
        .await
        .expect(204);
    alice
        .get(&format!("{devices}/a1b2c3d4e5f60718"))
        .send()
        .await
        .expect_error(404, "not_found", None);
    // Deleting the network deletes its devices.
    alice
        .delete(&format!("networks/{lora}"))
        .send()
        .await
        .expect(204);
    alice
        .get(&devices)
        .send()
        .await
        .expect_error(404, "not_found", None);
}
