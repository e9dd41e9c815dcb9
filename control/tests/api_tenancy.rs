//! Accounts, tenancy (another account's ids answer 404 and nothing changes), quotas and
//! restarts, through the HTTP API on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_common;

use api_common::{Api, Client, id_of};
use iothub_control::registry::{PlanQuotas, Quotas, RegistryConfig};
use serde_json::{Value, json};

api_tests!(
    admin_creates_accounts_and_only_the_admin,
    another_accounts_ids_answer_404_and_change_nothing,
    quotas_refuse_with_the_quota_and_change_nothing,
    records_survive_a_restart,
);

/// One of each resource, for `client`: (hub, device, route, network) ids.
async fn populate(client: &Client<'_>, prefix: &str) -> (String, String, String, String) {
    let hub = id_of(
        &client
            .post("hubs")
            .json(json!({"name": format!("{prefix}-hub")}))
            .send()
            .await
            .expect(200),
    );
    let device = id_of(
        &client
            .post("devices")
            .json(json!({"hub_id": hub, "name": format!("{prefix}-device")}))
            .send()
            .await
            .expect(200),
    );
    let route = id_of(
        &client
            .post("routes")
            .json(
                json!({"hub_id": hub, "name": format!("{prefix}-route"), "topic": "#",
                         "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/"}}),
            )
            .send()
            .await
            .expect(200),
    );
    let network = id_of(
        &client
            .post("networks")
            .json(
                json!({"hub_id": hub, "name": format!("{prefix}-net"), "type": "rest",
                         "topic_prefix": "in"}),
            )
            .send()
            .await
            .expect(200),
    );
    (hub, device, route, network)
}

/// Everything `client` can see: each resource as GET answers it.
async fn snapshot(client: &Client<'_>, ids: &(String, String, String, String)) -> Vec<Value> {
    let (hub, device, route, network) = ids;
    let mut all = Vec::new();
    for path in [
        format!("hubs/{hub}"),
        format!("devices/{device}"),
        format!("routes/{route}"),
        format!("networks/{network}"),
    ] {
        all.push(client.get(&path).send().await.expect(200));
    }
    all
}

async fn admin_creates_accounts_and_only_the_admin(api: &Api) {
    let created = api
        .admin()
        .post("/iot/v1/accounts")
        .json(json!({"name": "alice"}))
        .send()
        .await
        .expect(200);
    assert_eq!(created["account"]["name"], "alice");
    assert_eq!(created["account"]["is_admin"], false);
    let key = created["api_key"].as_str().unwrap();
    assert_ne!(key, api.admin_key);

    let alice = api.client(key);
    assert_eq!(alice.get("hubs").send().await.expect(200)["total_count"], 0);
    let denied = alice
        .post("/iot/v1/accounts")
        .json(json!({"name": "mallory"}))
        .send()
        .await
        .expect_error(403, "permission_denied", None);
    assert!(
        denied["message"].as_str().unwrap().contains("admin"),
        "{denied}"
    );

    let cases: &[(Value, &str)] = &[
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({}), "name"),
        (json!({"name": "a", "is_admin": true}), "is_admin"),
    ];
    for (body, field) in cases {
        api.admin()
            .post("/iot/v1/accounts")
            .json(body.clone())
            .send()
            .await
            .expect_error(400, "invalid_arguments", Some(field));
    }
}

async fn another_accounts_ids_answer_404_and_change_nothing(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let bob = api.client(&api.new_account("bob").await);
    let ids = populate(&alice, "a").await;
    let (bob_hub, bob_device, _, _) = populate(&bob, "b").await;
    let before = snapshot(&alice, &ids).await;
    let (hub, device, route, network) = &ids;

    let s3 = json!({"bucket_region": "fr-par", "bucket_name": "bucket", "strategy": "per_topic"});
    let cases: Vec<(&str, String, Option<Value>, &str)> = vec![
        ("GET", format!("hubs/{hub}"), None, "hub"),
        (
            "PATCH",
            format!("hubs/{hub}"),
            Some(json!({"name": "x"})),
            "hub",
        ),
        (
            "DELETE",
            format!("hubs/{hub}?delete_devices=true"),
            None,
            "hub",
        ),
        ("POST", format!("hubs/{hub}/disable"), None, "hub"),
        ("POST", format!("hubs/{hub}/enable"), None, "hub"),
        ("GET", format!("devices/{device}"), None, "device"),
        (
            "PATCH",
            format!("devices/{device}"),
            Some(json!({"description": "x"})),
            "device",
        ),
        ("DELETE", format!("devices/{device}"), None, "device"),
        ("POST", format!("devices/{device}/disable"), None, "device"),
        ("POST", format!("devices/{device}/enable"), None, "device"),
        ("GET", format!("routes/{route}"), None, "route"),
        (
            "PATCH",
            format!("routes/{route}"),
            Some(json!({"name": "x"})),
            "route",
        ),
        ("DELETE", format!("routes/{route}"), None, "route"),
        ("GET", format!("networks/{network}"), None, "network"),
        ("DELETE", format!("networks/{network}"), None, "network"),
        // Bob's requests that name Alice's hub.
        (
            "POST",
            "devices".into(),
            Some(json!({"hub_id": hub, "name": "intruder"})),
            "hub",
        ),
        (
            "POST",
            "routes".into(),
            Some(json!({"hub_id": hub, "name": "r", "topic": "#", "s3_config": s3})),
            "hub",
        ),
        (
            "POST",
            "networks".into(),
            Some(json!({"hub_id": hub, "name": "n", "type": "rest", "topic_prefix": "in"})),
            "hub",
        ),
        (
            "PATCH",
            format!("devices/{bob_device}"),
            Some(json!({"hub_id": hub})),
            "hub",
        ),
    ];
    for (method, path, body, resource) in cases {
        let mut call = bob.call(method.parse().unwrap(), &path);
        if let Some(body) = body {
            call = call.json(body);
        }
        let answer = call.send().await.expect_error(404, "not_found", None);
        assert_eq!(answer["resource"], resource, "{method} {path}");
    }

    // Bob's lists hold only his own, even when filtered on Alice's hub.
    for list in ["hubs", "devices", "routes", "networks"] {
        let body = bob.get(list).send().await.expect(200);
        assert_eq!(body["total_count"], 1, "{list}");
        if list != "hubs" {
            let filtered = bob
                .get(&format!("{list}?hub_id={hub}"))
                .send()
                .await
                .expect(200);
            assert_eq!(filtered["total_count"], 0, "{list}");
        }
    }
    assert_eq!(
        bob.get(&format!("devices/{bob_device}"))
            .send()
            .await
            .expect(200)["hub_id"],
        bob_hub.as_str()
    );
    assert_eq!(
        snapshot(&alice, &ids).await,
        before,
        "Alice's records are intact"
    );
}

async fn quotas_refuse_with_the_quota_and_change_nothing(api: &Api) {
    let config = RegistryConfig {
        quotas: Quotas {
            hubs_per_account: PlanQuotas {
                plan_shared: 1,
                plan_dedicated: 2,
                plan_ha: 1,
            },
            devices_per_hub: 2,
            routes_per_hub: 1,
            networks_per_hub: 1,
        },
        ..RegistryConfig::default()
    };
    let api = api.reopen(config).await;
    let alice = api.client(&api.new_account("alice").await);

    let hub = |name: &str, plan: &str| json!({"name": name, "product_plan": plan});
    let shared = id_of(
        &alice
            .post("hubs")
            .json(hub("s1", "plan_shared"))
            .send()
            .await
            .expect(200),
    );
    let refused = alice
        .post("hubs")
        .json(hub("s2", "plan_shared"))
        .send()
        .await
        .expect_error(403, "quotas_exceeded", None);
    assert_eq!(
        refused["details"],
        json!([{"resource": "hubs", "current": 1, "quota": 1}])
    );
    // Quotas are per plan: a dedicated hub still fits.
    let dedicated = id_of(
        &alice
            .post("hubs")
            .json(hub("d1", "plan_dedicated"))
            .send()
            .await
            .expect(200),
    );

    // A plan change into a full plan is refused too (the hub must be disabled first).
    alice
        .post(&format!("hubs/{dedicated}/disable"))
        .send()
        .await
        .expect(200);
    alice
        .patch(&format!("hubs/{dedicated}"))
        .json(json!({"product_plan": "plan_shared"}))
        .send()
        .await
        .expect_error(403, "quotas_exceeded", None);

    let device = |name: &str, hub: &str| json!({"hub_id": hub, "name": name});
    for name in ["d1", "d2"] {
        alice
            .post("devices")
            .json(device(name, &shared))
            .send()
            .await
            .expect(200);
    }
    let refused = alice
        .post("devices")
        .json(device("d3", &shared))
        .send()
        .await
        .expect_error(403, "quotas_exceeded", None);
    assert_eq!(
        refused["details"],
        json!([{"resource": "devices", "current": 2, "quota": 2}])
    );
    // Moving a device into a full hub is refused as well.
    let mover = id_of(
        &alice
            .post("devices")
            .json(device("m", &dedicated))
            .send()
            .await
            .expect(200),
    );
    alice
        .patch(&format!("devices/{mover}"))
        .json(json!({"hub_id": shared}))
        .send()
        .await
        .expect_error(403, "quotas_exceeded", None);

    let route = json!({"hub_id": shared, "name": "r", "topic": "#",
                       "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/"}});
    alice
        .post("routes")
        .json(route.clone())
        .send()
        .await
        .expect(200);
    alice
        .post("routes")
        .json(route)
        .send()
        .await
        .expect_error(403, "quotas_exceeded", None);
    let network = json!({"hub_id": shared, "name": "n", "type": "rest", "topic_prefix": "in"});
    alice
        .post("networks")
        .json(network.clone())
        .send()
        .await
        .expect(200);
    alice
        .post("networks")
        .json(network)
        .send()
        .await
        .expect_error(403, "quotas_exceeded", None);

    let counts: &[(&str, u64)] = &[("hubs", 2), ("devices", 3), ("routes", 1), ("networks", 1)];
    for (list, count) in counts {
        let body = alice.get(list).send().await.expect(200);
        assert_eq!(body["total_count"], *count, "{list}");
    }
    let moved = alice
        .get(&format!("devices/{mover}"))
        .send()
        .await
        .expect(200);
    assert_eq!(moved["hub_id"], dedicated.as_str());
    let replanned = alice
        .get(&format!("hubs/{dedicated}"))
        .send()
        .await
        .expect(200);
    assert_eq!(replanned["product_plan"], "plan_dedicated");
    api.close().await;
}

async fn records_survive_a_restart(api: &Api) {
    let key = api.new_account("alice").await;
    let alice = api.client(&key);
    let ids = populate(&alice, "a").await;
    alice
        .post(&format!("devices/{}/disable", ids.1))
        .send()
        .await
        .expect(200);
    let before = snapshot(&alice, &ids).await;
    let etag = alice.get(&format!("hubs/{}", ids.0)).send().await.etag();
    api.close().await;

    let restarted = api.reopen(RegistryConfig::default()).await;
    let alice = restarted.client(&key);
    assert_eq!(snapshot(&alice, &ids).await, before);
    assert_eq!(
        alice.get(&format!("hubs/{}", ids.0)).send().await.etag(),
        etag,
        "versions survive too"
    );
    // The admin key survives as well.
    restarted.admin().get("hubs").send().await.expect(200);
    restarted.close().await;
}
