//! The OpenAPI document as served, the checker the other API tests validate answers with,
//! and the gate every keyed operation of the document passes (API key, region).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_common;

use api_common::Api;
use api_common::schema::{Document, is_rfc3339};
use iothub_control::api::OPENAPI_JSON;
use serde_json::{Value, json};

api_tests!(
    the_document_is_served_without_a_key,
    every_keyed_operation_refuses_a_missing_or_wrong_key,
    every_regional_operation_refuses_another_region,
    unknown_paths_and_methods_answer_json,
);

/// Every operation of the document as (method, concrete path), path parameters filled.
fn operations(doc: &Document, region: &str) -> Vec<(String, String, bool)> {
    let mut ops = Vec::new();
    for (template, item) in doc.doc["paths"].as_object().unwrap() {
        let path: String = template
            .split('/')
            .map(|segment| match segment {
                "{region}" => region.to_owned(),
                s if s.starts_with('{') => uuid::Uuid::new_v4().to_string(),
                s => s.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let public = op.get("security") == Some(&json!([]));
            ops.push((method.clone(), path.clone(), public));
        }
    }
    ops
}

async fn the_document_is_served_without_a_key(api: &Api) {
    let served = api.anonymous().get("/openapi.json").send().await;
    assert_eq!(
        served.headers["content-type"], "application/json",
        "served as JSON"
    );
    let served = served.expect(200);
    let on_disk: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(served, on_disk);
    assert_eq!(served["openapi"], "3.0.3");
}

async fn every_keyed_operation_refuses_a_missing_or_wrong_key(api: &Api) {
    let ops = operations(&api.doc, "fr-par");
    assert!(ops.len() > 20, "{} operations", ops.len());
    let keys: &[(Option<&str>, &str)] = &[
        (None, "the X-Auth-Token header is missing"),
        (
            Some("not-a-key"),
            "the X-Auth-Token header is not a valid API key",
        ),
        (Some(""), "the X-Auth-Token header is not a valid API key"),
    ];
    for (method, path, public) in ops.iter().filter(|(_, _, public)| !public) {
        assert!(!public);
        for (key, reason) in keys {
            let client = match key {
                None => api.anonymous(),
                Some(key) => api.client(key),
            };
            let body = client
                .call(method.to_uppercase().parse().unwrap(), path)
                .json(json!({"name": "x"}))
                .send()
                .await
                .expect_error(401, "denied_authentication", Some("X-Auth-Token"));
            assert_eq!(body["details"][0]["reason"], *reason, "{method} {path}");
        }
    }
    // Nothing was created by the refused calls.
    let admin = api.admin();
    for list in ["hubs", "devices", "routes", "networks"] {
        let body = admin.get(list).send().await.expect(200);
        assert_eq!(body["total_count"], 0, "{list}");
    }
}

async fn every_regional_operation_refuses_another_region(api: &Api) {
    let admin = api.admin();
    let mut regional = 0;
    for (method, path, _) in operations(&api.doc, "nl-ams") {
        if !path.contains("/regions/") {
            continue;
        }
        regional += 1;
        let body = admin
            .call(method.to_uppercase().parse().unwrap(), &path)
            .json(json!({"name": "x"}))
            .send()
            .await
            .expect_error(404, "not_found", None);
        assert_eq!(body["resource"], "region", "{method} {path}");
        assert_eq!(body["resource_id"], "nl-ams");
    }
    assert!(regional > 20);
}

async fn unknown_paths_and_methods_answer_json(api: &Api) {
    let admin = api.admin();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/", 404, "not_found"),
        ("GET", "/iot/v1/regions/fr-par/twins", 404, "not_found"),
        ("GET", "/iot/v1/regions/fr-par/hubs/x/y/z", 404, "not_found"),
        (
            "PUT",
            "/iot/v1/regions/fr-par/hubs",
            405,
            "method_not_allowed",
        ),
        ("DELETE", "/openapi.json", 405, "method_not_allowed"),
        ("GET", "/iot/v1/accounts", 405, "method_not_allowed"),
    ];
    for (method, path, status, kind) in cases {
        admin
            .call(method.parse().unwrap(), path)
            .unchecked()
            .send()
            .await
            .expect_error(*status, kind, None);
    }
}

/// The checker the other tests rely on must refuse what the document does not allow.
#[test]
fn the_checker_refuses_what_the_document_does_not_allow() {
    let doc = Document::new(OPENAPI_JSON);
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let network = json!({
        "id": "6a2f8c1e-0000-4000-8000-000000000000",
        "name": "n",
        "type": "rest",
        "hub_id": "6a2f8c1e-0000-4000-8000-000000000001",
        "topic_prefix": "in",
        "endpoint": "/networks/6a2f8c1e-0000-4000-8000-000000000000",
        "created_at": "2024-05-01T12:00:00.123456Z"
    });
    let with = |key: &str, value: Value| {
        let mut v = network.clone();
        v[key] = value;
        v
    };
    let without = |key: &str| {
        let mut v = network.clone();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    let error =
        |details: Value| json!({"message": "m", "type": "invalid_arguments", "details": details});
    let cases: Vec<(&str, Value, bool)> = vec![
        ("Network", network.clone(), true),
        ("Network", without("name"), false),
        ("Network", with("extra", json!(1)), false),
        ("Network", with("type", json!("carrier-pigeon")), false),
        ("Network", with("name", json!(3)), false),
        ("Network", with("name", json!("")), false),
        ("Network", with("name", json!(null)), false),
        ("Network", with("id", json!("6a2f8c1e")), false),
        (
            "Network",
            with("created_at", json!("2024-05-01 12:00:00")),
            false,
        ),
        ("Network", json!([]), false),
        (
            "ListNetworksResponse",
            json!({"networks": [network.clone()], "total_count": 1}),
            true,
        ),
        (
            "ListNetworksResponse",
            json!({"networks": [with("type", json!("x"))], "total_count": 1}),
            false,
        ),
        (
            "ListNetworksResponse",
            json!({"networks": [], "total_count": -1}),
            false,
        ),
        (
            "ListNetworksResponse",
            json!({"networks": [], "total_count": 1.5}),
            false,
        ),
        ("Error", error(json!([])), true),
        (
            "Error",
            error(json!([{"argument_name": "a", "reason": "r", "help_message": "h"}])),
            true,
        ),
        (
            "Error",
            error(json!([{"resource": "hubs", "current": 5, "quota": 5}])),
            true,
        ),
        (
            "Error",
            error(json!([{"argument_name": "a", "reason": "r"}])),
            false,
        ),
        (
            "Error",
            error(json!([{"argument_name": "a", "reason": "r", "help_message": "h", "quota": 1}])),
            false,
        ),
        (
            "Error",
            json!({"message": "m", "type": "teapot", "details": []}),
            false,
        ),
        (
            "RestConfig",
            json!({"verb": "post", "uri": "u", "headers": {"a": "b"}}),
            true,
        ),
        (
            "RestConfig",
            json!({"verb": "post", "uri": "u", "headers": {"a": 1}}),
            false,
        ),
        (
            "FilterRule",
            json!({"policy": "accept", "topics": ["a", 2]}),
            false,
        ),
    ];
    for (name, value, valid) in cases {
        let errors = doc.check(&schema(name), &value);
        assert_eq!(errors.is_empty(), valid, "{name} {value}: {errors:?}");
    }
}

#[test]
fn rfc3339_shapes() {
    let cases: &[(&str, bool)] = &[
        ("2024-05-01T12:00:00Z", true),
        ("2024-05-01T12:00:00.123456Z", true),
        ("1970-01-01T00:00:00.000000Z", true),
        ("2024-05-01T12:00:00+02:00", true),
        ("2024-05-01t12:00:00z", true),
        ("2024-05-01T12:00:00", false),
        ("2024-05-01 12:00:00Z", false),
        ("2024-13-01T12:00:00Z", false),
        ("2024-05-01T24:00:00Z", false),
        ("2024-05-01T12:00:00.Z", false),
        ("2024-05-01T12:00:00+0200", false),
        ("", false),
    ];
    for (text, want) in cases {
        assert_eq!(is_rfc3339(text), *want, "{text}");
    }
}
