//! Certificates through the HTTP API on SQLite and PostgreSQL (every answer checked against
//! `control/openapi.json` by the harness): device certificates issued at creation and by
//! `renew-certificate` (verified by the `openssl` tool), custom device certificates, a
//! custom hub CA with its proof of possession, and the public `server-ca` endpoint. The bad
//! input of issue 4 that is the control plane's answers 400 naming the field, or 412.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_common;

use std::path::Path;
use std::process::Command;

use api_common::{Api, Client, id_of};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use iothub_control::api::{self, ApiExtras, ServerCaPem};
use iothub_control::pki::ServerPki;
use iothub_control::testing::openssl::{CertRequest, Openssl};
use serde_json::{Value, json};
use tower::ServiceExt;

api_tests!(
    device_creation_answers_a_certificate_that_openssl_verifies,
    renewal_answers_a_new_certificate_and_the_old_one_is_gone,
    custom_device_certificates_are_checked_and_pinned,
    a_custom_ca_is_proven_on_a_disabled_hub_and_clears_certificates,
    the_server_ca_is_served_without_a_key,
);

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes `ca` and `crt` and asks `openssl verify` whether the one signed the other for
/// TLS client use.
fn verifies(dir: &Path, ca: &str, crt: &str) -> bool {
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("crt.pem"), crt).unwrap();
    openssl(
        dir,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ca.pem",
            "crt.pem",
        ],
    )
    .0
}

async fn new_hub(alice: &Client<'_>, name: &str) -> String {
    id_of(
        &alice
            .post("hubs")
            .json(json!({"name": name}))
            .send()
            .await
            .expect(200),
    )
}

/// The harness has no `put` shortcut; `call` takes any method.
fn put<'a>(client: &Client<'a>, path: &str, body: Value) -> api_common::Call<'a> {
    client.call(Method::PUT, path).json(body)
}

async fn device_creation_answers_a_certificate_that_openssl_verifies(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = new_hub(&alice, "plant").await;
    let ca = alice
        .get(&format!("hubs/{hub}/ca"))
        .send()
        .await
        .expect(200)["ca_cert_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = alice
        .post("devices")
        .json(json!({"hub_id": hub, "name": "pump"}))
        .send()
        .await
        .expect(200);
    let device = id_of(&created);
    let crt = created["certificate"]["crt"].as_str().unwrap();
    let key = created["certificate"]["key"].as_str().unwrap();

    let dir = tempfile::tempdir().unwrap();
    assert!(verifies(dir.path(), &ca, crt));
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let (ok, subject) = openssl(
        dir.path(),
        &["x509", "-noout", "-subject", "-in", "crt.pem"],
    );
    assert!(
        ok && subject.contains(&format!("CN = {device}")),
        "{subject}"
    );
    // The key is the certificate's.
    let (_, from_cert) = openssl(dir.path(), &["x509", "-noout", "-pubkey", "-in", "crt.pem"]);
    let (_, from_key) = openssl(dir.path(), &["pkey", "-pubout", "-in", "key.pem"]);
    assert_eq!(from_cert, from_key);
    // Another hub's CA does not verify it.
    let other = new_hub(&alice, "other").await;
    let other_ca = alice
        .get(&format!("hubs/{other}/ca"))
        .send()
        .await
        .expect(200);
    assert!(!verifies(
        dir.path(),
        other_ca["ca_cert_pem"].as_str().unwrap(),
        crt
    ));

    let got = alice
        .get(&format!("devices/{device}/certificate"))
        .send()
        .await
        .expect(200);
    assert_eq!(got["certificate_pem"], crt);
    assert_eq!(got["device"]["id"], device.as_str());
    assert_eq!(got["device"]["has_custom_certificate"], false);

    // Bad ids and other accounts' ids.
    let bob = api.client(&api.new_account("bob").await);
    for path in [
        format!("hubs/{hub}/ca"),
        format!("devices/{device}/certificate"),
    ] {
        bob.get(&path)
            .send()
            .await
            .expect_error(404, "not_found", None);
    }
    bob.post(&format!("devices/{device}/renew-certificate"))
        .send()
        .await
        .expect_error(404, "not_found", None);
    alice
        .get("hubs/nope/ca")
        .send()
        .await
        .expect_error(400, "invalid_arguments", Some("hub_id"));
    alice
        .get("devices/nope/certificate")
        .send()
        .await
        .expect_error(400, "invalid_arguments", Some("device_id"));
}

async fn renewal_answers_a_new_certificate_and_the_old_one_is_gone(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = new_hub(&alice, "plant").await;
    let created = alice
        .post("devices")
        .json(json!({"hub_id": hub, "name": "pump"}))
        .send()
        .await;
    let etag = created.etag();
    let created = created.expect(200);
    let device = id_of(&created);
    let path = format!("devices/{device}/renew-certificate");

    let renewed = alice.post(&path).if_match(&etag).send().await;
    let new_etag = renewed.etag();
    let renewed = renewed.expect(200);
    assert_ne!(new_etag, etag);
    assert_ne!(renewed["certificate"]["crt"], created["certificate"]["crt"]);
    assert_ne!(renewed["certificate"]["key"], created["certificate"]["key"]);
    assert_eq!(renewed["device"]["id"], device.as_str());
    let current = alice
        .get(&format!("devices/{device}/certificate"))
        .send()
        .await
        .expect(200);
    assert_eq!(current["certificate_pem"], renewed["certificate"]["crt"]);
    let ca = alice
        .get(&format!("hubs/{hub}/ca"))
        .send()
        .await
        .expect(200);
    let dir = tempfile::tempdir().unwrap();
    assert!(verifies(
        dir.path(),
        ca["ca_cert_pem"].as_str().unwrap(),
        renewed["certificate"]["crt"].as_str().unwrap()
    ));
    // The stale ETag is refused and changes nothing.
    let stale = alice.post(&path).if_match(&etag).send().await.expect_error(
        412,
        "precondition_failed",
        None,
    );
    assert_eq!(stale["precondition"], "etag_mismatch");
    let still = alice
        .get(&format!("devices/{device}/certificate"))
        .send()
        .await
        .expect(200);
    assert_eq!(still["certificate_pem"], renewed["certificate"]["crt"]);
}

async fn custom_device_certificates_are_checked_and_pinned(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = new_hub(&alice, "plant").await;
    let device = |name: &'static str| {
        let alice = alice.clone();
        let hub = hub.clone();
        async move {
            id_of(
                &alice
                    .post("devices")
                    .json(json!({"hub_id": hub, "name": name}))
                    .send()
                    .await
                    .expect(200),
            )
        }
    };
    let (a, b) = (device("a").await, device("b").await);
    let dir = tempfile::tempdir().unwrap();
    let o = Openssl::new(dir.path()).unwrap();
    let user_ca = o.ca("user ca").unwrap();
    let good = o.client("sensor", Some(&user_ca)).unwrap();
    let dated = |start, end| {
        o.issue(&CertRequest {
            common_name: "sensor",
            issuer: Some(&user_ca),
            not_before: Some(start),
            not_after: Some(end),
            ..CertRequest::default()
        })
        .unwrap()
        .cert_pem
    };
    let server_only = o
        .issue(&CertRequest {
            common_name: "sensor",
            issuer: Some(&user_ca),
            extensions: &["extendedKeyUsage=serverAuth"],
            ..CertRequest::default()
        })
        .unwrap()
        .cert_pem;
    let cert_path = format!("devices/{a}/certificate");
    let before = alice.get(&cert_path).send().await.expect(200);

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "expired",
            json!({"certificate_pem": dated("20000101000000Z", "20010101000000Z")}),
            "certificate_pem",
            "expired on 2001-01-01",
        ),
        (
            "not yet valid",
            json!({"certificate_pem": dated("20990101000000Z", "21000101000000Z")}),
            "certificate_pem",
            "is not valid yet",
        ),
        (
            "a CA",
            json!({"certificate_pem": user_ca.cert_pem}),
            "certificate_pem",
            "is a CA certificate",
        ),
        (
            "garbage",
            json!({"certificate_pem": "not a certificate"}),
            "certificate_pem",
            "holds no PEM certificate",
        ),
        (
            "a private key",
            json!({"certificate_pem": good.key_pem}),
            "certificate_pem",
            "holds a private key",
        ),
        (
            "server only",
            json!({"certificate_pem": server_only}),
            "certificate_pem",
            "clientAuth",
        ),
        (
            "truncated",
            json!({"certificate_pem": &good.cert_pem[..good.cert_pem.len() / 2]}),
            "certificate_pem",
            "is not valid PEM",
        ),
        ("missing", json!({}), "certificate_pem", "missing field"),
        (
            "not a string",
            json!({"certificate_pem": 3}),
            "certificate_pem",
            "invalid type",
        ),
        (
            "unknown field",
            json!({"certificate_pem": good.cert_pem, "key_pem": "x"}),
            "key_pem",
            "unknown field",
        ),
    ];
    for (name, body, field, reason) in cases {
        let refused = put(&alice, &cert_path, body).send().await.expect_error(
            400,
            "invalid_arguments",
            Some(field),
        );
        let got = refused["details"][0]["reason"].as_str().unwrap();
        assert!(got.contains(reason), "{name}: {got}");
    }
    assert_eq!(
        alice.get(&cert_path).send().await.expect(200),
        before,
        "refusals change nothing"
    );

    let set = put(
        &alice,
        &cert_path,
        json!({"certificate_pem": good.cert_pem}),
    )
    .send()
    .await
    .expect(200);
    assert_eq!(set["certificate_pem"], good.cert_pem.as_str());
    assert_eq!(set["device"]["has_custom_certificate"], true);
    let got = alice.get(&cert_path).send().await.expect(200);
    assert_eq!(got["certificate_pem"], good.cert_pem.as_str());
    let listed = alice.get(&format!("devices/{a}")).send().await.expect(200);
    assert_eq!(listed["has_custom_certificate"], true);

    // One certificate identifies one device.
    let taken = put(
        &alice,
        &format!("devices/{b}/certificate"),
        json!({"certificate_pem": good.cert_pem}),
    )
    .send()
    .await
    .expect_error(409, "conflict", Some("certificate_pem"));
    assert!(
        taken["message"]
            .as_str()
            .unwrap()
            .contains("device certificate"),
        "{taken}"
    );
    // Another account cannot set it on alice's device.
    let bob = api.client(&api.new_account("bob").await);
    put(&bob, &cert_path, json!({"certificate_pem": good.cert_pem}))
        .send()
        .await
        .expect_error(404, "not_found", None);
}

async fn a_custom_ca_is_proven_on_a_disabled_hub_and_clears_certificates(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let hub = new_hub(&alice, "factory").await;
    let managed = hub_ca(&alice, &hub).await;
    let device = id_of(
        &alice
            .post("devices")
            .json(json!({"hub_id": hub, "name": "pump"}))
            .send()
            .await
            .expect(200),
    );
    let dir = tempfile::tempdir().unwrap();
    let o = Openssl::new(dir.path()).unwrap();
    let ca = o.ca("factory ca").unwrap();
    let proof = o.plain(&hub, Some(&ca)).unwrap();
    let ca_path = format!("hubs/{hub}/ca");
    let body = |ca_pem: &str, challenge: &str| json!({"ca_cert_pem": ca_pem, "challenge_cert_pem": challenge});

    // An enabled hub refuses the upload.
    let refused = alice
        .post(&ca_path)
        .json(body(&ca.cert_pem, &proof.cert_pem))
        .send()
        .await
        .expect_error(412, "precondition_failed", None);
    assert_eq!(refused["precondition"], "resource_state");
    assert!(
        refused["message"].as_str().unwrap().contains("disabled"),
        "{refused}"
    );
    // Auto-provisioning needs a custom CA.
    alice
        .patch(&format!("hubs/{hub}"))
        .json(json!({"enable_device_auto_provisioning": true}))
        .send()
        .await
        .expect_error(
            400,
            "invalid_arguments",
            Some("enable_device_auto_provisioning"),
        );

    let disabled = alice.post(&format!("hubs/{hub}/disable")).send().await;
    let etag = disabled.etag();
    disabled.expect(200);
    let impostor = o.ca("factory ca").unwrap();
    let wrong_cn = o.plain("not-the-hub", Some(&ca)).unwrap().cert_pem;
    let wrong_signer = o.plain(&hub, Some(&impostor)).unwrap().cert_pem;
    let self_signed = o.plain(&hub, None).unwrap().cert_pem;
    let expired = o
        .issue(&CertRequest {
            common_name: &hub,
            issuer: Some(&ca),
            not_before: Some("20000101000000Z"),
            not_after: Some("20010101000000Z"),
            ..CertRequest::default()
        })
        .unwrap()
        .cert_pem;
    let leaf = o.client("leaf", None).unwrap();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "wrong CN",
            body(&ca.cert_pem, &wrong_cn),
            "challenge_cert_pem",
            "has the common name \"not-the-hub\"",
        ),
        (
            "wrong signer",
            body(&ca.cert_pem, &wrong_signer),
            "challenge_cert_pem",
            "is not signed by the CA of ca_cert_pem",
        ),
        (
            "self-signed challenge",
            body(&ca.cert_pem, &self_signed),
            "challenge_cert_pem",
            "is not signed by the CA of ca_cert_pem",
        ),
        (
            "expired challenge",
            body(&ca.cert_pem, &expired),
            "challenge_cert_pem",
            "expired on",
        ),
        (
            "garbage challenge",
            body(&ca.cert_pem, "garbage"),
            "challenge_cert_pem",
            "holds no PEM certificate",
        ),
        (
            "a leaf as the CA",
            body(
                &leaf.cert_pem,
                &o.plain(&hub, Some(&leaf)).unwrap().cert_pem,
            ),
            "ca_cert_pem",
            "is not a CA certificate",
        ),
        (
            "garbage CA",
            body("garbage", &proof.cert_pem),
            "ca_cert_pem",
            "holds no PEM certificate",
        ),
        (
            "the CA's key with it",
            body(&format!("{}{}", ca.cert_pem, ca.key_pem), &proof.cert_pem),
            "ca_cert_pem",
            "holds a private key",
        ),
        (
            "no challenge",
            json!({"ca_cert_pem": ca.cert_pem}),
            "challenge_cert_pem",
            "missing field",
        ),
    ];
    for (name, body, field, reason) in cases {
        let refused = alice.post(&ca_path).json(body).send().await.expect_error(
            400,
            "invalid_arguments",
            Some(field),
        );
        let got = refused["details"][0]["reason"].as_str().unwrap();
        assert!(got.contains(reason), "{name}: {got}");
    }
    assert_eq!(
        hub_ca(&alice, &hub).await,
        managed,
        "refusals change nothing"
    );

    let set = alice
        .post(&ca_path)
        .if_match(&etag)
        .json(body(&ca.cert_pem, &proof.cert_pem))
        .send()
        .await;
    assert_ne!(set.etag(), etag);
    let set = set.expect(200);
    assert_eq!(set["has_custom_ca"], true);
    assert_eq!(set["status"], "disabled");
    assert_eq!(hub_ca(&alice, &hub).await, ca.cert_pem);

    // The device's certificate is gone; new devices get none; renewal is refused.
    let gone = alice
        .get(&format!("devices/{device}/certificate"))
        .send()
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(gone["resource"], "device certificate");
    let late = alice
        .post("devices")
        .json(json!({"hub_id": hub, "name": "late"}))
        .send()
        .await
        .expect(200);
    assert!(late.get("certificate").is_none(), "{late}");
    let renewal = alice
        .post(&format!("devices/{}/renew-certificate", id_of(&late)))
        .send()
        .await
        .expect_error(412, "precondition_failed", None);
    assert_eq!(renewal["precondition"], "resource_state");
    assert!(
        renewal["message"].as_str().unwrap().contains("custom CA"),
        "{renewal}"
    );
    // A device certificate from the custom CA may still be pinned.
    let from_ca = o.client("late", Some(&ca)).unwrap();
    put(
        &alice,
        &format!("devices/{}/certificate", id_of(&late)),
        json!({"certificate_pem": from_ca.cert_pem}),
    )
    .send()
    .await
    .expect(200);
    // Auto-provisioning may now be turned on.
    let patched = alice
        .patch(&format!("hubs/{hub}"))
        .json(json!({"enable_device_auto_provisioning": true}))
        .send()
        .await
        .expect(200);
    assert_eq!(patched["enable_device_auto_provisioning"], true);
    // Enabled again, the hub refuses a new CA.
    alice
        .post(&format!("hubs/{hub}/enable"))
        .send()
        .await
        .expect(200);
    alice
        .post(&ca_path)
        .json(body(&ca.cert_pem, &proof.cert_pem))
        .send()
        .await
        .expect_error(412, "precondition_failed", None);
}

async fn hub_ca(alice: &Client<'_>, hub: &str) -> String {
    alice
        .get(&format!("hubs/{hub}/ca"))
        .send()
        .await
        .expect(200)["ca_cert_pem"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A raw GET through a router (the harness expects JSON; the server CA is a PEM file).
async fn raw_get(router: &axum::Router, path: &str) -> (StatusCode, String, String) {
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn the_server_ca_is_served_without_a_key(api: &Api) {
    let data = tempfile::tempdir().unwrap();
    let pki = ServerPki::load_or_create(data.path(), &[]).unwrap();
    let shared = ServerCaPem::new(pki.ca_pem.clone());
    let router = api::router_with(
        api.registry.clone(),
        ApiExtras {
            server_ca: shared.clone(),
        },
    );
    let path = "/iot/v1/regions/fr-par/server-ca";
    let (status, content_type, body) = raw_get(&router, path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/x-pem-file");
    assert_eq!(body, pki.ca_pem);
    // The PEM served is one openssl reads as a CA.
    std::fs::write(data.path().join("served.pem"), &body).unwrap();
    let (ok, text) = openssl(
        data.path(),
        &[
            "x509",
            "-noout",
            "-ext",
            "basicConstraints",
            "-in",
            "served.pem",
        ],
    );
    assert!(ok && text.contains("CA:TRUE"), "{text}");

    // A replaced CA is served at once.
    shared.set("-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n");
    assert!(raw_get(&router, path).await.2.contains("new"));

    // Another region is not here; without a CA the endpoint answers 404 in JSON.
    let (status, content_type, body) = raw_get(&router, "/iot/v1/regions/nl-ams/server-ca").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(content_type.starts_with("application/json"));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["resource"], "region");
    let (status, _, body) = raw_get(&api::router(api.registry.clone()), path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["type"], "not_found");
    assert_eq!(body["resource"], "server CA");
    // The document says the same: public, a PEM file, 404 otherwise.
    let op = &api.doc.doc["paths"]["/iot/v1/regions/{region}/server-ca"]["get"];
    assert_eq!(op["security"], json!([]));
    assert!(op["responses"]["200"]["content"]["application/x-pem-file"].is_object());
    assert!(op["responses"]["404"].is_object());
}
