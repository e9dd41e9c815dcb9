//! Bad input to the control plane through the real binary: a few of each kind (the
//! in-process API tests in control/tests cover the whole table). Every refusal is a JSON
//! error naming what was wrong, and nothing changes; the CLI prints the API's error with the
//! field it names and exits 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iothub_e2e::api::{
    Api, Backend, RegistryDb, cli_as, http, id_of, iothub_cli, start_registry_hub,
};
use serde_json::json;

/// Issue 3 bad input, authentication: no `X-Auth-Token`, an empty one, a wrong one, a
/// well-formed but unknown one: 401 with the JSON error `denied_authentication`, on reads and
/// writes, and nothing is created. The OpenAPI document needs no key.
#[test]
fn missing_or_wrong_keys_answer_401_json() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((_hub, admin)) = start_registry_hub(&db, false) else {
        return;
    };
    let wrong = format!("{}x", admin.key);
    let keys: &[(&str, Option<&str>)] = &[
        ("no key", None),
        ("an empty key", Some("")),
        ("a wrong key", Some("not-a-key")),
        ("the admin key plus one character", Some(&wrong)),
    ];
    let body = json!({"name": "sneaky"}).to_string();
    for (what, key) in keys {
        for (method, path, body) in [
            ("GET", "/iot/v1/regions/fr-par/hubs", None),
            ("POST", "/iot/v1/regions/fr-par/hubs", Some(body.as_bytes())),
            (
                "POST",
                "/iot/v1/accounts",
                Some(br#"{"name":"x"}"#.as_slice()),
            ),
        ] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(k) = key {
                headers.push(("X-Auth-Token", k));
            }
            let answer = http(admin.addr, method, path, &headers, body);
            assert_eq!(
                answer.status, 401,
                "{what}: {method} {path}: {}",
                answer.body
            );
            answer.expect_error(401, "denied_authentication", None);
        }
    }
    assert_eq!(admin.get("hubs").expect(200)["total_count"], 0);
    let doc = http(admin.addr, "GET", "/openapi.json", &[], None).expect(200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
}

/// Issue 3 bad input, bodies: malformed JSON (400 naming `body`), a wrong type, an unknown
/// field, an over-long name, an id that is not a UUID, an invalid filter, an unknown plan:
/// 400 `invalid_arguments` whose detail names the field; a plan change of an enabled hub:
/// 412 `precondition_failed` saying to disable it first; and nothing is created or changed.
#[test]
fn malformed_bodies_answer_400_naming_the_field() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((_hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let hub = api.create_hub(&json!({"name": "plant"}));
    let hub_id = id_of(&hub);
    let long = "n".repeat(256);
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("POST", "hubs".into(), r#"{"name": "#.into(), "body"),
        ("POST", "hubs".into(), "[1, 2]".into(), "body"),
        ("POST", "hubs".into(), r#"{"name": 5}"#.into(), "name"),
        (
            "POST",
            "hubs".into(),
            r#"{"name": "x", "colour": "red"}"#.into(),
            "colour",
        ),
        (
            "POST",
            "hubs".into(),
            json!({"name": long}).to_string(),
            "name",
        ),
        (
            "POST",
            "hubs".into(),
            r#"{"name": "x", "product_plan": "plan_gold"}"#.into(),
            "product_plan",
        ),
        (
            "POST",
            "devices".into(),
            r#"{"hub_id": "not-a-uuid", "name": "d"}"#.into(),
            "hub_id",
        ),
        (
            "POST",
            "devices".into(),
            json!({"hub_id": hub_id, "name": "d", "allow_insecure": "yes"}).to_string(),
            "allow_insecure",
        ),
        (
            "POST",
            "devices".into(),
            json!({"hub_id": hub_id, "name": "d",
                   "message_filters": {"publish": {"policy": "accept", "topics": ["a/#/b"]}}})
            .to_string(),
            "message_filters.publish.topics[0]",
        ),
        (
            "PATCH",
            format!("hubs/{hub_id}"),
            r#"{"name": ""}"#.into(),
            "name",
        ),
    ];
    for (method, path, body, field) in &cases {
        let answer = api.send(method, path, Some(body), &[]);
        assert_eq!(
            answer.status, 400,
            "{method} {path} {body}: {}",
            answer.body
        );
        answer.expect_error(400, "invalid_arguments", Some(field));
    }
    // A plan change of an enabled hub is refused whole: 412, the hub's state being wrong.
    let refused = api
        .patch(
            &format!("hubs/{hub_id}"),
            &json!({"product_plan": "plan_shared"}),
        )
        .expect_error(412, "precondition_failed", None);
    assert!(
        refused["message"].as_str().unwrap().contains("disable"),
        "the message says what to do: {refused}"
    );
    let hubs = api.get("hubs").expect(200);
    assert_eq!(hubs["total_count"], 1, "{hubs}");
    assert_eq!(
        hubs["hubs"][0],
        api.get(&format!("hubs/{hub_id}")).expect(200)
    );
    assert_eq!(hubs["hubs"][0]["name"], "plant");
    assert_eq!(hubs["hubs"][0]["product_plan"], "plan_dedicated");
    assert_eq!(api.get("devices").expect(200)["total_count"], 0);
}

/// Issue 3 CLI: an API refusal is printed on stderr with the field the API names (a filter
/// that is not a valid MQTT filter, an over-long name, an id that is not a UUID), a wrong key
/// is reported as the 401 it is, and each exits with status 1, printing nothing on stdout.
#[test]
fn cli_prints_the_api_error_with_the_field_and_exits_1() {
    let db = RegistryDb::new(Backend::Sqlite);
    let Some((hub, api)) = start_registry_hub(&db, false) else {
        return;
    };
    let hub_id = id_of(&api.create_hub(&json!({"name": "plant"})));
    let cwd = tempfile::tempdir().unwrap();
    let long = "n".repeat(256);
    let cases: Vec<(Api, Vec<&str>, &[&str])> = vec![
        (
            api.clone(),
            vec![
                "device",
                "create",
                "--hub-id",
                &hub_id,
                "--name",
                "d",
                "--publish-filter",
                "accept:a/#/b",
            ],
            &["400", "message_filters.publish.topics[0]"],
        ),
        (
            api.clone(),
            vec!["hub", "create", "--name", &long],
            &["400", "name"],
        ),
        (
            api.clone(),
            vec!["hub", "get", "not-a-uuid"],
            &["400", "hub_id"],
        ),
        (api.with_key("wrong"), vec!["hub", "list"], &["401"]),
    ];
    for (caller, args, needles) in &cases {
        let run = cli_as(caller, cwd.path(), args);
        assert_eq!(run.code, Some(1), "iothub {args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "iothub {args:?}: {run:?}");
        for n in *needles {
            assert!(
                run.stderr.contains(n),
                "iothub {args:?}: stderr lacks {n:?}: {run:?}"
            );
        }
    }
    // With no key at all (no flag, no variable, no key file in the working directory).
    let endpoint = format!("http://{}", hub.api_addr().unwrap());
    let run = iothub_cli(cwd.path(), &["--endpoint", &endpoint, "hub", "list"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("--api-key"), "{run:?}");
    assert_eq!(api.get("devices").expect(200)["total_count"], 0);
    assert_eq!(api.get("hubs").expect(200)["total_count"], 1);
}
