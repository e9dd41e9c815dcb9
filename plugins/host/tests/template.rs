//! The plugin guide's template (plugins/template), built with the guide's command verbatim
//! and run in the host against a local HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use iothub_plugin_host::{Grants, HostConfig, HttpOrigin, InstantiateError, NoPublish, Outcome};

/// `cd plugins/template && cargo build --target wasm32-wasip2 --release`, with the
/// environment of a user's shell (none of cargo test's variables, no CARGO_TARGET_DIR).
fn build_template() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template");
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--target", "wasm32-wasip2", "--release"])
        .current_dir(&dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUST") && key != "RUSTUP_HOME"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("cargo");
    assert!(
        status.success(),
        "the guide's build command failed: {status}"
    );
    std::fs::read(dir.join("target/wasm32-wasip2/release/iothub_route_template.wasm"))
        .expect("the component where the guide says it is")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_builds_as_the_guide_says_and_forwards_messages() {
    let bytes = tokio::task::spawn_blocking(build_template).await.unwrap();
    let server = TestServer::start().await;
    let host = host(HostConfig::default());
    let compiled = host.compile(&bytes).unwrap();
    let grants = Grants {
        http: Some(HttpOrigin::from_uri(&server.url("/")).unwrap()),
        ..Grants::default()
    };
    let config = format!(r#"{{"uri":"{}"}}"#, server.url("/fwd"));
    let route = compiled
        .instantiate(
            context("template"),
            grants.clone(),
            &config,
            Arc::new(NoPublish),
        )
        .await
        .unwrap();
    let report = route
        .handle(vec![
            message("sensors/1", "21.5"),
            message("sensors/2", "\u{e9}t\u{e9}"),
        ])
        .await
        .unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Delivered; 2]);
    let hits = server.requests();
    assert_eq!(hits.len(), 2);
    let doc: serde_json::Value = serde_json::from_slice(&hits[1].body).unwrap();
    assert_eq!(hits[1].path, "/fwd");
    assert_eq!(doc["topic"], "sensors/2");
    assert_eq!(doc["payload"], "\u{e9}t\u{e9}");
    assert_eq!(doc["qos"], 1);
    assert_eq!(doc["received_ms"], 1_700_000_000_000u64);

    // its init refuses a misspelt configuration
    match compiled
        .instantiate(
            context("template"),
            grants,
            r#"{"url":"http://x/"}"#,
            Arc::new(NoPublish),
        )
        .await
    {
        Err(InstantiateError::Init(text)) => assert!(text.contains("unknown field"), "{text}"),
        other => panic!("{other:?}"),
    }
}
