//! The README's quick tour through the real binary, as a new user follows it: the hub on the
//! embedded default configuration (ports moved to 0), the admin key from the data directory,
//! a hub and insecure devices made with the CLI (or with the HTTP calls curl makes), then
//! mosquitto_sub and mosquitto_pub connected as those devices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;

use iothub_e2e::Hub;
use iothub_e2e::api::{REGION, Response, admin_key, admin_key_path, http, id_of, iothub_cli};
use iothub_e2e::frames::Connect;
use iothub_e2e::raw::{RawClient, WAIT};
use iothub_e2e::tools::{MosquittoSub, mosquitto_pub};
use iothub_e2e::unique;
use serde_json::json;

/// The embedded default configuration as the binary prints it (`iothub generate-config`,
/// what `iothub serve` runs on when given no file), with every listener moved to port 0 (the
/// machine's Mosquitto holds 1883, and tests run side by side).
fn embedded_default() -> String {
    let cwd = tempfile::tempdir().unwrap();
    let printed = iothub_cli(cwd.path(), &["generate-config"], &[]);
    printed
        .ok()
        .lines()
        .map(|line| match line.split_once("bind: ") {
            Some((indent, addr)) if addr.starts_with("127.0.0.1:") => {
                format!("{indent}bind: 127.0.0.1:0")
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first start's promises: the key is in `iothub-data/admin-api-key`, mode 0600, and
/// the log shows it exactly once.
fn check_first_start(hub: &Hub) -> String {
    let key = admin_key(hub);
    let mode = std::fs::metadata(admin_key_path(hub))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode of the admin key file");
    assert_eq!(
        hub.logs().matches(key.as_str()).count(),
        1,
        "the admin key is printed once at the first start; stderr:\n{}",
        hub.logs()
    );
    key
}

/// README "Quick tour" with the CLI: `iothub hub create`, two `iothub device create
/// --allow-insecure`, `iothub device list`, run from the hub's directory with no key given
/// (the CLI reads `iothub-data/admin-api-key`); then `mosquitto_sub -i $APP` receives what
/// `mosquitto_pub -i $SENSOR` publishes. An anonymous subscriber of the development hub on
/// the same filter does not: the devices' hub is another namespace.
#[test]
fn readme_quick_tour_with_the_cli() {
    let Some(hub) = Hub::start_with(&embedded_default()) else {
        return;
    };
    check_first_start(&hub);
    let workdir = hub.workdir().unwrap().to_path_buf();
    let endpoint = format!("http://{}", hub.api_addr().unwrap());
    let env = [("IOTHUB_ENDPOINT", endpoint.as_str())];
    let cli = |args: &[&str]| iothub_cli(&workdir, args, &env);

    let created = cli(&["hub", "create", "--name", "demo", "-o", "json"]).json();
    assert_eq!(created["name"], "demo", "{created}");
    assert_eq!(created["status"], "ready", "{created}");
    let hub_id = id_of(&created);
    let mut devices = Vec::new();
    for name in ["sensor", "app"] {
        let created = cli(&[
            "device",
            "create",
            "--hub-id",
            &hub_id,
            "--name",
            name,
            "--allow-insecure",
            "-o",
            "json",
        ])
        .json();
        assert_eq!(created["device"]["allow_insecure"], true, "{created}");
        devices.push(id_of(&created["device"]));
    }
    let (sensor, app) = (&devices[0], &devices[1]);

    let table = cli(&["device", "list", "--hub-id", &hub_id]);
    let table = table.ok();
    for (id, name) in [(sensor, "sensor"), (app, "app")] {
        assert!(
            table
                .lines()
                .any(|l| l.contains(id.as_str()) && l.contains(name) && l.contains("enabled")),
            "device list shows {name} ({id}):\n{table}"
        );
    }
    assert!(table.contains("(2 in all)"), "{table}");

    let mqtt = hub.mqtt_addr();
    let bystander = unique("bystander");
    let mut anonymous = MosquittoSub::start(mqtt, &["-i", &bystander, "-t", "sensors/#"]);
    let mut sub = MosquittoSub::start(mqtt, &["-i", app, "-t", "sensors/#"]);
    let out = mosquitto_pub(
        mqtt,
        &[
            "-i",
            sensor,
            "-t",
            "sensors/kitchen/temperature",
            "-m",
            "21.5",
        ],
    );
    assert!(out.status.success(), "mosquitto_pub as the sensor: {out:?}");
    assert_eq!(
        sub.next_message(WAIT),
        Some(("sensors/kitchen/temperature".into(), "21.5".into())),
        "the app receives the sensor's message"
    );
    // The sensor's message was routed (the app has it) before this one is published.
    let out = mosquitto_pub(mqtt, &["-t", "sensors/sentinel", "-m", "end"]);
    assert!(out.status.success(), "anonymous mosquitto_pub: {out:?}");
    assert_eq!(
        anonymous.next_message(WAIT),
        Some(("sensors/sentinel".into(), "end".into())),
        "the development hub's subscriber gets its own hub's message and nothing of the demo hub"
    );
}

/// What `curl -s -H "X-Auth-Token: $KEY" [-d BODY] URL` sends: curl's headers, and with
/// `-d` the form content type (the README does not pass `-H Content-Type`).
fn curl(hub: &Hub, key: &str, path: &str, data: Option<&str>) -> Response {
    let addr = hub.api_addr().unwrap();
    let target = format!("/iot/v1/regions/{REGION}/{path}");
    let mut headers = vec![
        ("User-Agent", "curl/7.88.1"),
        ("Accept", "*/*"),
        ("X-Auth-Token", key),
    ];
    let method = if data.is_some() {
        headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        "POST"
    } else {
        "GET"
    };
    http(addr, method, &target, &headers, data.map(str::as_bytes))
}

/// README "The same with curl": the key read from `iothub-data/admin-api-key`, a hub and an
/// insecure device created with the HTTP requests curl makes (form content type included),
/// the device listed by `?hub_id=`, then `mosquitto_pub -i $DEV -q 1` publishes as that
/// device and another device of the hub receives it.
#[test]
fn readme_quick_tour_with_curl() {
    let Some(hub) = Hub::start_with(&embedded_default()) else {
        return;
    };
    let key_file = hub.workdir().unwrap().join("iothub-data/admin-api-key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(key, check_first_start(&hub));

    let created = curl(&hub, &key, "hubs", Some(r#"{"name":"demo2"}"#)).expect(200);
    let hub_id = id_of(&created);
    let mut ids = Vec::new();
    for name in ["thermo", "display"] {
        let body = json!({"hub_id": hub_id, "name": name, "allow_insecure": true}).to_string();
        let created = curl(&hub, &key, "devices", Some(&body)).expect(200);
        ids.push(id_of(&created["device"]));
    }
    let (dev, display) = (&ids[0], &ids[1]);
    let listed = curl(&hub, &key, &format!("devices?hub_id={hub_id}"), None).expect(200);
    assert_eq!(listed["total_count"], 2, "{listed}");
    let listed_ids: Vec<&str> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert!(listed_ids.contains(&dev.as_str()), "{listed}");

    let (mut watcher, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v4(display, true));
    assert_eq!(watcher.subscribe(1, &[("thermo/#", 1)]), vec![1]);
    let out = mosquitto_pub(
        hub.mqtt_addr(),
        &["-i", dev, "-t", "thermo/state", "-m", "ok", "-q", "1"],
    );
    assert!(out.status.success(), "mosquitto_pub as the device: {out:?}");
    let got = watcher.expect_publish_acked();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("thermo/state", &b"ok"[..])
    );
}

/// README "Quick tour", the curl block run as written with bash from the hub's directory: only
/// the ports change (8080 and 1883 to the test hub's), mosquitto_sub's output is line-buffered
/// (`stdbuf -oL`: a pipe is not a terminal) and the script waits a second before `kill %1` (a
/// reader of the terminal waits for the line by eye). The subscriber prints the message.
#[test]
fn readme_quick_tour_curl_block_runs_as_written() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let at = readme
        .find("The same with curl")
        .expect("README has the curl tour");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    let block = &rest[start..start + end];
    assert!(
        block.contains("mosquitto_sub") && block.contains("mosquitto_pub"),
        "{block}"
    );
    let hub = Hub::start_with(&embedded_default()).expect("iothub mode");
    check_first_start(&hub);
    let script = block
        .replace("127.0.0.1:8080", &hub.api_addr().unwrap().to_string())
        .replace("-p 1883", &format!("-p {}", hub.mqtt_addr().port()))
        .replace("mosquitto_sub ", "stdbuf -oL mosquitto_sub ")
        .replace("kill %1", "sleep 1; kill %1");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(hub.workdir().unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the curl tour failed: {out:?}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.ends_with("thermo/state ok")),
        "the subscriber did not print the message:\n{stdout}"
    );
}
