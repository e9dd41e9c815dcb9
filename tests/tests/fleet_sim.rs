//! The device fleet of `iothub-sim` against a hub with all its listeners (TCP, TLS, ws, wss,
//! QUIC): devices created through the management API, the TLS-based ones connecting with
//! the certificate the API answered (mutual TLS), each publishing a few messages; an MQTT
//! subscriber of the same hub checks exactly what arrives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use iothub_e2e::api::{Api, DATA_DIR, admin_key, id_of};
use iothub_e2e::clients::{V5, v5_options};
use iothub_e2e::sim::{collect, run_sim};
use iothub_e2e::{Hub, unique};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};

/// A hub with its registry and every listener on port 0; only registered devices connect.
fn all_listeners_hub() -> Option<Hub> {
    let listener = |kind: &str| format!("  {kind}:\n    - name: {kind}\n      bind: 127.0.0.1:0\n");
    Hub::start_with(&format!(
        "data_dir: {DATA_DIR}\nlisteners:\n{}{}{}{}{}api:\n  bind: 127.0.0.1:0\nhubs: []\n",
        listener("mqtt"),
        listener("tls"),
        listener("ws"),
        listener("wss"),
        listener("quic"),
    ))
}

/// Five devices, one per transport, three QoS 1 messages each: fifteen PUBACKs, and exactly
/// fifteen messages arrive on fleet/<transport>/<device name> with the payloads sent.
#[test]
fn a_fleet_over_every_transport_delivers_exactly_what_it_sent() {
    let Some(hub) = all_listeners_hub() else {
        return;
    };
    let api = Api::admin(&hub);
    let hub_id = id_of(&api.create_hub(&json!({ "name": unique("fleet") })));
    let app = api.create_device(&json!({
        "hub_id": hub_id, "name": unique("app"), "allow_insecure": true,
    }));
    let mut subscriber = V5::connect(v5_options(hub.mqtt_addr(), &id_of(&app)));
    subscriber.subscribe("fleet/#", QoS::AtLeastOnce);

    let addr = |name: &str| hub.listener(name).to_string();
    let region = format!("http://{}/iot/v1/regions/fr-par", api.addr);
    let key = admin_key(&hub);
    let prefix = unique("f");
    let run = run_sim(&[
        "fleet",
        "--api",
        &region,
        "--token",
        &key,
        "--hub-id",
        &hub_id,
        "--devices",
        "5",
        "--transports",
        "tcp,tls,ws,wss,quic",
        "--messages",
        "3",
        "--qos",
        "1",
        "--tcp",
        &addr("mqtt"),
        "--tls",
        &addr("tls"),
        "--ws",
        &addr("ws"),
        "--wss",
        &addr("wss"),
        "--quic",
        &addr("quic"),
        "--name-prefix",
        &prefix,
        "--cleanup",
    ]);
    assert!(
        run.success,
        "{}\n{}\n{}",
        run.report,
        run.stderr,
        hub.logs()
    );
    let groups: Vec<(String, u64, u64)> = run.report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_string(),
                g["sent"].as_u64().unwrap(),
                g["accepted"].as_u64().unwrap(),
            )
        })
        .collect();
    let want_groups: Vec<(String, u64, u64)> = ["tcp", "tls", "ws", "wss", "quic"]
        .into_iter()
        .map(|t| (t.to_string(), 3, 3))
        .collect();
    let mut sorted = groups.clone();
    sorted.sort();
    let mut want_sorted = want_groups.clone();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted);
    for t in ["tcp", "tls", "ws", "wss", "quic"] {
        assert_eq!(run.check(&format!("{t} connections")), (1, 0));
    }
    assert_eq!(run.total()["latency_us"]["count"], 15);

    // JSON values as their canonical text (serde_json sorts object keys) to compare as sets.
    let got: BTreeSet<(String, String)> = collect(
        &mut subscriber,
        15,
        Duration::from_secs(10),
        Duration::from_millis(500),
    )
    .into_iter()
    .map(|(t, p)| (t, serde_json::from_slice::<Value>(&p).unwrap().to_string()))
    .collect();
    let want: BTreeSet<(String, String)> = ["tcp", "tls", "ws", "wss", "quic"]
        .into_iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let name = format!("{prefix}-{i}");
            (0..3).map(move |seq| {
                (
                    format!("fleet/{t}/{name}"),
                    json!({ "device": name, "transport": t, "seq": seq }).to_string(),
                )
            })
        })
        .collect();
    assert_eq!(got.len(), 15);
    assert_eq!(got, want);

    // --cleanup deleted the fleet's devices: only the subscriber is left in the hub.
    let devices = api.get(&format!("devices?hub_id={hub_id}")).expect(200);
    assert_eq!(devices["total_count"], 1, "{devices}");
}

/// A fleet device on TLS whose hub does not exist: the fleet cannot start and says why
/// (the management API's 4xx), exit status 1, no report of messages.
#[test]
fn a_fleet_for_an_unknown_hub_fails_with_the_api_error() {
    let Some(hub) = all_listeners_hub() else {
        return;
    };
    let api = Api::admin(&hub);
    let region = format!("http://{}/iot/v1/regions/fr-par", api.addr);
    let out = std::process::Command::new(iothub_e2e::sim::sim_bin())
        .args([
            "fleet",
            "--api",
            &region,
            "--token",
            &admin_key(&hub),
            "--quiet",
        ])
        .args([
            "--hub-id",
            "00000000-0000-4000-8000-000000000000",
            "--devices",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/devices answered 4"),
        "the error names the API call and its status: {stderr}"
    );
}
