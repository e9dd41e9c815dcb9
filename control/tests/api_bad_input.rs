//! The bad input of issue 3 through the HTTP API: each mistake answers a specific 4xx
//! naming the field, and nothing changes. Also `If-Match` (a stale ETag answers 412) and
//! concurrent updates of one record (serialised: with one `If-Match`, exactly one wins).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_common;

use api_common::{Api, Client, id_of};
use serde_json::{Value, json};

api_tests!(
    malformed_requests_name_the_field_and_change_nothing,
    stale_if_match_answers_412_and_changes_nothing,
    plan_change_on_an_enabled_hub_is_refused,
    concurrent_patches_with_one_if_match_let_exactly_one_win,
    concurrent_patches_without_if_match_are_all_applied,
    rules_of_the_registry_name_the_field,
);

/// Alice's hub, device, route and network ids.
struct World {
    hub: String,
    device: String,
    route: String,
    network: String,
}

async fn world(alice: &Client<'_>) -> World {
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": "h", "product_plan": "plan_shared"}))
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
    let route = id_of(
        &alice
            .post("routes")
            .json(json!({"hub_id": hub, "name": "r", "topic": "#",
                         "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/"}}))
            .send()
            .await
            .expect(200),
    );
    let network = id_of(
        &alice
            .post("networks")
            .json(json!({"hub_id": hub, "name": "n", "type": "rest", "topic_prefix": "in"}))
            .send()
            .await
            .expect(200),
    );
    World {
        hub,
        device,
        route,
        network,
    }
}

/// Every record of Alice's with its ETag, and every list's count.
async fn state(alice: &Client<'_>, w: &World) -> Vec<(Value, Option<String>)> {
    let mut all = Vec::new();
    for path in [
        format!("hubs/{}", w.hub),
        format!("devices/{}", w.device),
        format!("routes/{}", w.route),
        format!("networks/{}", w.network),
    ] {
        let reply = alice.get(&path).send().await;
        let etag = reply
            .headers
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        all.push((reply.expect(200), etag));
    }
    for list in ["hubs", "devices", "routes", "networks"] {
        all.push((alice.get(list).send().await.expect(200), None));
    }
    all
}

/// One bad request: method, path (relative to the region), raw body, and the field the
/// 400 must name.
type Case = (&'static str, String, Option<String>, &'static str);

fn body(v: Value) -> Option<String> {
    Some(v.to_string())
}

async fn malformed_requests_name_the_field_and_change_nothing(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let w = world(&alice).await;
    let before = state(&alice, &w).await;
    let (hub, device, route) = (&w.hub, &w.device, &w.route);
    let long = "x".repeat(256);
    let filters = |publish: Value| json!({"hub_id": hub, "name": "d2", "message_filters": {"publish": publish}});
    let rest = |rest_config: Value| json!({"hub_id": hub, "name": "r2", "topic": "#", "rest_config": rest_config});
    let cases: Vec<Case> = vec![
        // Malformed JSON and non-objects.
        ("POST", "hubs".into(), Some(r#"{"name": "#.into()), "body"),
        (
            "POST",
            "hubs".into(),
            Some(r#"{"name": "x",}"#.into()),
            "body",
        ),
        (
            "POST",
            "hubs".into(),
            Some(r#"{"name": "x"} {}"#.into()),
            "body",
        ),
        ("POST", "hubs".into(), Some("name=x".into()), "body"),
        ("POST", "hubs".into(), Some(String::new()), "body"),
        ("POST", "hubs".into(), None, "body"),
        ("POST", "hubs".into(), Some("[]".into()), "body"),
        ("POST", "hubs".into(), Some("null".into()), "body"),
        (
            "PATCH",
            format!("devices/{device}"),
            Some("\"x\"".into()),
            "body",
        ),
        // Unknown fields, at the top and nested.
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "colour": "red"})),
            "colour",
        ),
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "project_id": "p"})),
            "project_id",
        ),
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "limits": {"max_payload": 1}})),
            "limits.max_payload",
        ),
        (
            "POST",
            "devices".into(),
            body(filters(
                json!({"policy": "accept", "topics": [], "mode": 1}),
            )),
            "message_filters.publish.mode",
        ),
        (
            "POST",
            "routes".into(),
            body(rest(
                json!({"verb": "post", "uri": "http://127.0.0.1:9/", "body": "x"}),
            )),
            "rest_config.body",
        ),
        (
            "PATCH",
            format!("hubs/{hub}"),
            body(json!({"status": "ready"})),
            "status",
        ),
        (
            "PATCH",
            format!("routes/{route}"),
            body(json!({"hub_id": hub})),
            "hub_id",
        ),
        // Missing required fields.
        ("POST", "hubs".into(), body(json!({})), "name"),
        (
            "POST",
            "devices".into(),
            body(json!({"name": "d2"})),
            "hub_id",
        ),
        (
            "POST",
            "devices".into(),
            body(filters(json!({"policy": "accept"}))),
            "message_filters.publish.topics",
        ),
        (
            "POST",
            "networks".into(),
            body(json!({"hub_id": hub, "name": "n2", "type": "rest"})),
            "topic_prefix",
        ),
        // Wrong types.
        ("POST", "hubs".into(), body(json!({"name": 5})), "name"),
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "disable_events": "yes"})),
            "disable_events",
        ),
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "product_plan": "plan_free"})),
            "product_plan",
        ),
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "limits": {"max_inflight_messages": 70000}})),
            "limits.max_inflight_messages",
        ),
        (
            "POST",
            "devices".into(),
            body(json!({"hub_id": "nope", "name": "d2"})),
            "hub_id",
        ),
        (
            "POST",
            "devices".into(),
            body(json!({"hub_id": 7, "name": "d2"})),
            "hub_id",
        ),
        (
            "POST",
            "devices".into(),
            body(filters(json!({"policy": "maybe", "topics": []}))),
            "message_filters.publish.policy",
        ),
        (
            "POST",
            "devices".into(),
            body(filters(json!({"policy": "accept", "topics": ["a", 2]}))),
            "message_filters.publish.topics[1]",
        ),
        (
            "PATCH",
            format!("devices/{device}"),
            body(json!({"allow_insecure": 1})),
            "allow_insecure",
        ),
        (
            "POST",
            "routes".into(),
            body(rest(json!({"verb": "fetch", "uri": "http://127.0.0.1:9/"}))),
            "rest_config.verb",
        ),
        (
            "POST",
            "routes".into(),
            body(json!({"hub_id": hub, "name": "r2", "topic": "#",
                        "db_config": {"engine": "postgresql", "host": "h", "port": 70000,
                                      "dbname": "d", "username": "u", "query": "q"}})),
            "db_config.port",
        ),
        (
            "POST",
            "networks".into(),
            body(
                json!({"hub_id": hub, "name": "n2", "type": "carrier-pigeon", "topic_prefix": "in"}),
            ),
            "type",
        ),
        // Over-long and empty names, and other values the registry refuses.
        ("POST", "hubs".into(), body(json!({"name": long})), "name"),
        ("POST", "hubs".into(), body(json!({"name": ""})), "name"),
        ("POST", "hubs".into(), body(json!({"name": "a/b"})), "name"),
        (
            "PATCH",
            format!("hubs/{hub}"),
            body(json!({"name": long})),
            "name",
        ),
        (
            "POST",
            "devices".into(),
            body(json!({"hub_id": hub, "name": long})),
            "name",
        ),
        (
            "POST",
            "devices".into(),
            body(json!({"hub_id": hub, "name": "d2", "description": "x".repeat(1025)})),
            "description",
        ),
        (
            "POST",
            "routes".into(),
            body(json!({"hub_id": hub, "name": long, "topic": "#",
            "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/"}})),
            "name",
        ),
        (
            "POST",
            "networks".into(),
            body(json!({"hub_id": hub, "name": long, "type": "rest",
            "topic_prefix": "in"})),
            "name",
        ),
        (
            "POST",
            "hubs".into(),
            body(json!({"name": "x", "events_topic_prefix": "ev/#"})),
            "events_topic_prefix",
        ),
        // Invalid filters.
        (
            "POST",
            "devices".into(),
            body(filters(
                json!({"policy": "accept", "topics": ["ok/+", "a/#/b"]}),
            )),
            "message_filters.publish.topics[1]",
        ),
        (
            "PATCH",
            format!("devices/{device}"),
            body(json!({"message_filters": {"subscribe": {"policy": "reject", "topics": ["x+"]}}})),
            "message_filters.subscribe.topics[0]",
        ),
        (
            "POST",
            "routes".into(),
            body(json!({"hub_id": hub, "name": "r2", "topic": "a/#/b",
            "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/"}})),
            "topic",
        ),
        (
            "POST",
            "routes".into(),
            body(rest(json!({"verb": "post", "uri": "ftp://127.0.0.1/"}))),
            "rest_config.uri",
        ),
        (
            "POST",
            "networks".into(),
            body(json!({"hub_id": hub, "name": "n2", "type": "rest",
            "topic_prefix": "in/+"})),
            "topic_prefix",
        ),
        // Route config blocks: none, or two.
        (
            "POST",
            "routes".into(),
            body(json!({"hub_id": hub, "name": "r2", "topic": "#"})),
            "s3_config",
        ),
        (
            "POST",
            "routes".into(),
            body(json!({"hub_id": hub, "name": "r2", "topic": "#",
                        "rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/"},
                        "s3_config": {"bucket_region": "fr-par", "bucket_name": "bucket", "strategy": "per_topic"}})),
            "rest_config",
        ),
        // Read-only fields.
        (
            "PATCH",
            format!("devices/{device}"),
            body(json!({"name": "renamed"})),
            "name",
        ),
        // Query parameters.
        ("GET", "hubs?page=0".into(), None, "page"),
        ("GET", "hubs?page=-1".into(), None, "page"),
        ("GET", "hubs?page=abc".into(), None, "page"),
        ("GET", "hubs?page_size=0".into(), None, "page_size"),
        ("GET", "hubs?page_size=101".into(), None, "page_size"),
        ("GET", "hubs?page=1&page=2".into(), None, "page"),
        ("GET", "hubs?order_by=bogus".into(), None, "order_by"),
        ("GET", "hubs?order_by=name".into(), None, "order_by"),
        ("GET", "hubs?order_by=type_asc".into(), None, "order_by"),
        ("GET", "hubs?colour=red".into(), None, "colour"),
        ("GET", "devices?status=maybe".into(), None, "status"),
        (
            "GET",
            "devices?allow_insecure=yes".into(),
            None,
            "allow_insecure",
        ),
        ("GET", "devices?hub_id=nope".into(), None, "hub_id"),
        ("GET", "routes?hub_id=".into(), None, "hub_id"),
        (
            "GET",
            "networks?order_by=updated_at_asc".into(),
            None,
            "order_by",
        ),
        (
            "DELETE",
            format!("hubs/{hub}?delete_devices=maybe"),
            None,
            "delete_devices",
        ),
        // Path ids.
        ("GET", "hubs/not-a-uuid".into(), None, "hub_id"),
        ("POST", "hubs/123/enable".into(), None, "hub_id"),
        ("GET", "devices/xyz".into(), None, "device_id"),
        ("DELETE", "routes/1".into(), None, "route_id"),
        ("GET", "networks/x".into(), None, "network_id"),
    ];
    for (method, path, raw, field) in cases {
        let mut call = alice.call(method.parse().unwrap(), &path);
        if let Some(raw) = &raw {
            call = call.raw(raw);
        }
        call.send()
            .await
            .expect_error(400, "invalid_arguments", Some(field));
    }
    // A malformed If-Match is an argument error too.
    alice
        .patch(&format!("hubs/{hub}"))
        .if_match("3")
        .json(json!({"name": "y"}))
        .send()
        .await
        .expect_error(400, "invalid_arguments", Some("If-Match"));
    // A body beyond the limit is refused before it is parsed.
    let huge = format!(
        r#"{{"name": "x", "description": "{}"}}"#,
        "x".repeat(3 << 20)
    );
    alice
        .post("devices")
        .raw(&huge)
        .send()
        .await
        .expect_error(413, "invalid_request", None);
    assert_eq!(
        state(&alice, &w).await,
        before,
        "a refused request changes nothing"
    );
}

async fn stale_if_match_answers_412_and_changes_nothing(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let w = world(&alice).await;
    let hub_path = format!("hubs/{}", w.hub);
    let first = alice.get(&hub_path).send().await.etag();
    let second = alice
        .patch(&hub_path)
        .if_match(&first)
        .json(json!({"name": "renamed"}))
        .send()
        .await;
    let second = {
        let etag = second.etag();
        second.expect(200);
        etag
    };
    assert_ne!(first, second);
    let before = state(&alice, &w).await;

    let device_path = format!("devices/{}", w.device);
    let route_path = format!("routes/{}", w.route);
    let device_etag = alice.get(&device_path).send().await.etag();
    let route_etag = alice.get(&route_path).send().await.etag();
    let bumped_device = alice
        .patch(&device_path)
        .if_match(&device_etag)
        .json(json!({"description": "v2"}))
        .send()
        .await
        .etag();
    let bumped_route = alice
        .patch(&route_path)
        .if_match(&route_etag)
        .json(json!({"name": "r2"}))
        .send()
        .await
        .etag();
    let before_stale = state(&alice, &w).await;
    assert_ne!(before, before_stale);

    let calls = vec![
        alice
            .patch(&hub_path)
            .if_match(&first)
            .json(json!({"name": "lost"})),
        alice.delete(&hub_path).if_match(&first),
        alice.post(&format!("{hub_path}/disable")).if_match(&first),
        alice.post(&format!("{hub_path}/enable")).if_match(&first),
        alice
            .patch(&hub_path)
            .if_match("W/\"2\"")
            .json(json!({"name": "weak"})),
        alice
            .patch(&hub_path)
            .if_match("\"999\"")
            .json(json!({"name": "future"})),
        alice
            .patch(&device_path)
            .if_match(&device_etag)
            .json(json!({"description": "lost"})),
        alice.delete(&device_path).if_match(&device_etag),
        alice
            .post(&format!("{device_path}/disable"))
            .if_match(&device_etag),
        alice
            .patch(&route_path)
            .if_match(&route_etag)
            .json(json!({"name": "lost"})),
        alice.delete(&route_path).if_match(&route_etag),
    ];
    for call in calls {
        let body = call
            .send()
            .await
            .expect_error(412, "precondition_failed", None);
        assert_eq!(body["precondition"], "etag_mismatch", "{body}");
    }
    assert_eq!(state(&alice, &w).await, before_stale, "nothing changed");

    // The current ETag, or `*`, is accepted.
    let current = [
        (format!("{hub_path}/disable"), second.clone()),
        (format!("{device_path}/disable"), bumped_device),
        (route_path.clone(), bumped_route),
    ];
    for (path, etag) in current {
        let call = if path.starts_with("routes/") {
            alice.patch(&path).json(json!({"topic": "a/#"}))
        } else {
            alice.post(&path)
        };
        call.if_match(&etag).send().await.expect(200);
    }
    alice
        .patch(&hub_path)
        .if_match("*")
        .json(json!({"name": "star"}))
        .send()
        .await
        .expect(200);
    // With a current ETag, a hub that still has devices is refused for its state.
    let last = alice.get(&hub_path).send().await.etag();
    let body = alice
        .delete(&hub_path)
        .if_match(&last)
        .send()
        .await
        .expect_error(412, "precondition_failed", None);
    assert_eq!(body["precondition"], "resource_state", "{body}");
}

async fn plan_change_on_an_enabled_hub_is_refused(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let w = world(&alice).await;
    let before = state(&alice, &w).await;
    let body = alice
        .patch(&format!("hubs/{}", w.hub))
        .json(json!({"product_plan": "plan_dedicated", "name": "renamed"}))
        .send()
        .await
        .expect_error(412, "precondition_failed", None);
    assert_eq!(body["precondition"], "resource_state");
    assert!(
        body["message"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
    // The same plan is no change, so it is accepted while enabled.
    alice
        .patch(&format!("hubs/{}", w.hub))
        .json(json!({"product_plan": "plan_shared"}))
        .send()
        .await
        .expect(200);
    let after = state(&alice, &w).await;
    assert_eq!(after[0].0["name"], before[0].0["name"], "nothing changed");
    assert_eq!(after[0].0["product_plan"], "plan_shared");
}

/// `n` PATCHes of one hub in flight at once, each with `if_match` (if any).
async fn concurrent_patches(
    alice: &Client<'_>,
    path: &str,
    if_match: Option<&str>,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<api_common::Reply> {
    let calls = (0..n).map(|i| {
        let mut call = alice.patch(path).json(body(i));
        if let Some(etag) = if_match {
            call = call.if_match(etag);
        }
        call.send()
    });
    futures_util::future::join_all(calls).await
}

async fn concurrent_patches_with_one_if_match_let_exactly_one_win(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let w = world(&alice).await;
    for path in [
        format!("hubs/{}", w.hub),
        format!("devices/{}", w.device),
        format!("routes/{}", w.route),
    ] {
        let etag = alice.get(&path).send().await.etag();
        let field = if path.starts_with("devices/") {
            "description"
        } else {
            "name"
        };
        let replies = concurrent_patches(
            &alice,
            &path,
            Some(&etag),
            8,
            |i| json!({ field: format!("writer-{i}") }),
        )
        .await;
        let mut won = Vec::new();
        for reply in replies {
            match reply.status.as_u16() {
                200 => won.push(reply.body[field].clone()),
                412 => {
                    let body = reply.expect_error(412, "precondition_failed", None);
                    assert_eq!(body["precondition"], "etag_mismatch");
                }
                other => panic!("{path}: unexpected {other}: {}", reply.text),
            }
        }
        assert_eq!(won.len(), 1, "{path}: exactly one writer wins: {won:?}");
        let now = alice.get(&path).send().await;
        let version = |etag: &str| etag.trim_matches('"').parse::<i64>().unwrap();
        assert_eq!(version(&now.etag()), version(&etag) + 1, "{path}");
        assert_eq!(
            now.expect(200)[field],
            won[0],
            "{path}: the winner's write is kept"
        );
    }
}

async fn concurrent_patches_without_if_match_are_all_applied(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let w = world(&alice).await;
    let path = format!("devices/{}", w.device);
    let etag = alice.get(&path).send().await.etag();
    let n = 8;
    let replies = concurrent_patches(
        &alice,
        &path,
        None,
        n,
        |i| json!({"description": format!("writer-{i}")}),
    )
    .await;
    for reply in replies {
        reply.expect(200);
    }
    let now = alice.get(&path).send().await;
    let version = |etag: &str| etag.trim_matches('"').parse::<usize>().unwrap();
    assert_eq!(
        version(&now.etag()),
        version(&etag) + n,
        "every update was applied, one after the other"
    );
    let description = now.expect(200)["description"].as_str().unwrap().to_owned();
    assert!(description.starts_with("writer-"), "{description}");
}

/// Rules that only the registry knows still answer a 4xx naming the field.
async fn rules_of_the_registry_name_the_field(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let w = world(&alice).await;
    let before = state(&alice, &w).await;
    let cases: Vec<(&str, String, Value, u16, &str, &str)> = vec![
        (
            "POST",
            "hubs".into(),
            json!({"name": "anon", "product_plan": "plan_shared", "allow_anonymous": true}),
            400,
            "invalid_arguments",
            "allow_anonymous",
        ),
        (
            "POST",
            "hubs".into(),
            json!({"name": "auto", "enable_device_auto_provisioning": true}),
            400,
            "invalid_arguments",
            "enable_device_auto_provisioning",
        ),
        (
            "POST",
            "devices".into(),
            json!({"hub_id": w.hub, "name": "multi", "allow_multiple_connections": true}),
            400,
            "invalid_arguments",
            "allow_multiple_connections",
        ),
        (
            "POST",
            "devices".into(),
            json!({"hub_id": w.hub, "name": "d"}),
            409,
            "conflict",
            "name",
        ),
        (
            "PATCH",
            format!("routes/{}", w.route),
            json!({"s3_config": {"bucket_region": "fr-par", "bucket_name": "bucket", "strategy": "per_topic"}}),
            400,
            "invalid_arguments",
            "s3_config",
        ),
    ];
    for (method, path, body, status, kind, field) in cases {
        alice
            .call(method.parse().unwrap(), &path)
            .json(body)
            .send()
            .await
            .expect_error(status, kind, Some(field));
    }
    assert_eq!(state(&alice, &w).await, before, "nothing changed");
}
