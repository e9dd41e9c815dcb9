//! LoRaWAN networks (issue 8) and their network server: downlinks published on
//! `<prefix>/<dev_eui>/down` are POSTed to the network server's ChirpStack v4 REST API (a
//! local axum server here checks the exact request: path, `Authorization: Bearer`, body), a
//! failing server is retried and yields a hub event; join-requests replaying a DevNonce are
//! refused (409), also after a restart. The real binary, plain HTTP, rumqttc observers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use iothub_e2e::api::{Api, Backend, RegistryDb, http, id_of, start_registry_hub};
use iothub_e2e::clients::{V4, v4_options};
use iothub_e2e::raw::QUIET;
use iothub_e2e::unique;
use rumqttc::QoS;
use serde_json::{Value, json};

/// One request the network server received.
#[derive(Debug, Clone)]
struct Received {
    path_dev_eui: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

type Log = Arc<Mutex<Vec<Received>>>;

async fn enqueue(
    State((log, status)): State<(Log, StatusCode)>,
    Path(dev_eui): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    log.lock().unwrap().push(Received {
        path_dev_eui: dev_eui,
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let answer = if status.is_success() {
        json!({"id": "0b3c2f4e-52b8-4a58-a5a6-6a3a1c1f2b00"})
    } else {
        json!({"code": 14, "message": "unavailable"})
    };
    (status, answer.to_string())
}

/// A ChirpStack-like REST API on 127.0.0.1: `/api/devices/{dev_eui}/queue` answers 200 and
/// `/fail/api/devices/{dev_eui}/queue` 503; each logs what it received.
struct NetworkServer {
    addr: SocketAddr,
    ok: Log,
    failing: Log,
    _runtime: tokio::runtime::Runtime,
}

impl NetworkServer {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ok = Log::default();
        let failing = Log::default();
        let app = Router::new()
            .route(
                "/api/devices/{dev_eui}/queue",
                post(enqueue).with_state((ok.clone(), StatusCode::OK)),
            )
            .route(
                "/fail/api/devices/{dev_eui}/queue",
                post(enqueue).with_state((failing.clone(), StatusCode::SERVICE_UNAVAILABLE)),
            );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            ok,
            failing,
            _runtime: runtime,
        }
    }

    /// Waits until `log` holds `n` requests (or 30 s passed) and returns them.
    fn wait(log: &Log, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = log.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A LoRaWAN network with a network server: the view names its URL and never the token;
/// a downlink is POSTed once to `<url>/api/devices/<dev_eui>/queue` with
/// `Authorization: Bearer <token>` and ChirpStack's `{"queueItem": {...}}` body, and is not
/// left for a poll. A network server answering 503 is tried 4 times (3 retries with backoff),
/// then a hub event names the network and the device. Bad network-server fields are refused.
#[test]
fn lorawan_downlinks_are_pushed_to_the_network_server() {
    let Some((hub, api)) = start_registry_hub(&RegistryDb::new(Backend::Sqlite), false) else {
        return;
    };
    let ns = NetworkServer::start();
    let hub_id = id_of(&api.create_hub(&json!({"name": unique("push")})));
    let device = id_of(&api.create_device(
        &json!({"hub_id": hub_id, "name": unique("observer"), "allow_insecure": true}),
    ));
    let mut sub = V4::connect(v4_options(hub.mqtt_addr(), &device));
    for filter in ["#", "$SCW/events/#"] {
        sub.subscribe(filter, QoS::AtMostOnce);
    }
    let token = "cs-api-token.eyJhbGciOiJIUzI1NiJ9";
    let create = |prefix: &str, url: String| {
        api.post(
            "networks",
            &json!({"hub_id": hub_id, "name": unique("lora"), "type": "lorawan",
                    "topic_prefix": prefix, "network_server_url": url,
                    "network_server_token": token}),
        )
    };

    let r = create("lora", format!("http://{}/", ns.addr));
    assert!(
        !r.body.contains(token),
        "the token is never shown: {}",
        r.body
    );
    let created = r.expect(200);
    let network = id_of(&created["network"]);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        created["network"]["network_server_url"],
        format!("http://{}", ns.addr)
    );
    let shown = api.get(&format!("networks/{network}"));
    assert!(!shown.body.contains(token), "{}", shown.body);
    assert_eq!(
        shown.expect(200)["network_server_url"],
        format!("http://{}", ns.addr)
    );

    let downlink = br#"{"f_port": 10, "data_hex": "0102", "confirmed": true}"#;
    sub.publish(
        "lora/A1B2C3D4E5F60718/down",
        QoS::AtMostOnce,
        false,
        downlink,
    );
    assert_eq!(sub.expect_publish().topic, "lora/A1B2C3D4E5F60718/down");
    let got = NetworkServer::wait(&ns.ok, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    let req = &got[0];
    assert_eq!(req.path_dev_eui, "a1b2c3d4e5f60718");
    assert_eq!(
        req.authorization.as_deref(),
        Some(&*format!("Bearer {token}"))
    );
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        req.body,
        json!({"queueItem": {"devEui": "a1b2c3d4e5f60718", "confirmed": true, "fPort": 10, "data": "AQI="}})
    );
    let polled = http(
        api.addr,
        "GET",
        &format!("/networks/{network}/downlinks"),
        &[("X-Secret", &secret)],
        None,
    );
    assert_eq!(polled.json(), json!({"items": []}), "pushed, not queued");

    let created = create("fail", format!("http://{}/fail", ns.addr)).expect(200);
    let failing = id_of(&created["network"]);
    sub.publish(
        "fail/0102030405060708/down",
        QoS::AtMostOnce,
        false,
        br#"{"f_port": 2, "data": "AQI="}"#,
    );
    assert_eq!(sub.expect_publish().topic, "fail/0102030405060708/down");
    let attempts = NetworkServer::wait(&ns.failing, 4);
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|a| a.path_dev_eui == "0102030405060708")
    );
    let event = sub.expect_publish();
    assert_eq!(event.topic, format!("$SCW/events/error/hub/{hub_id}"));
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    let msg = event["msg"].as_str().unwrap();
    assert!(
        msg.contains(&failing) && msg.contains("0102030405060708") && msg.contains("503"),
        "{event}"
    );
    assert!(!msg.contains(token), "{event}");
    sub.expect_no_publish(QUIET);
    assert_eq!(ns.failing.lock().unwrap().len(), 4, "no fifth attempt");
    assert_eq!(ns.ok.lock().unwrap().len(), 1);

    for (body, field) in [
        (
            json!({"type": "lorawan", "network_server_url": format!("http://{}", ns.addr)}),
            "network_server_token",
        ),
        (
            json!({"type": "lorawan", "network_server_token": token}),
            "network_server_token",
        ),
        (
            json!({"type": "lorawan", "network_server_url": "https://ns.example", "network_server_token": token}),
            "network_server_url",
        ),
        (
            json!({"type": "lorawan", "network_server_url": "http://", "network_server_token": token}),
            "network_server_url",
        ),
        (
            json!({"type": "lorawan", "network_server_url": "http://ns/x", "network_server_token": "a b"}),
            "network_server_token",
        ),
        (
            json!({"type": "sigfox", "network_server_url": "http://ns", "network_server_token": token}),
            "network_server_url",
        ),
    ] {
        let mut body = body;
        body["hub_id"] = json!(hub_id);
        body["name"] = json!(unique("bad"));
        body["topic_prefix"] = json!("bad");
        api.post("networks", &body)
            .expect_error(400, "invalid_arguments", Some(field));
    }
}

/// A join-request whose DevNonce the device already used is refused (409 `replayed_join`,
/// a hub event, nothing published), and the DevNonces are kept with the device in the
/// registry: the replay is still refused after a SIGTERM restart, while a join-request with
/// a new DevNonce would pass its other checks (an invalid MIC stays 422, not 409).
#[test]
fn replayed_join_requests_are_refused_across_a_restart() {
    let db = RegistryDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let yaml = iothub_e2e::api::registry_config(db.store_url(), false);
    let Some(mut hub) = iothub_e2e::Hub::start_in(dir.path(), &yaml) else {
        return;
    };
    let api = Api::admin(&hub);
    let hub_id = id_of(&api.create_hub(&json!({"name": unique("join")})));
    let created = api
        .post(
            "networks",
            &json!({"hub_id": hub_id, "name": "lora", "type": "lorawan", "topic_prefix": "lora"}),
        )
        .expect(200);
    let network = id_of(&created["network"]);
    let secret = created["secret"].as_str().unwrap().to_owned();
    api.post(
        &format!("networks/{network}/lorawan-devices"),
        &json!({"dev_eui": "a1b2c3d4e5f60718", "app_key": "8f4a2c1be0d3a5967c18e2f05b4d3a21"}),
    )
    .expect(200);
    // tests/fixtures/lorawan/vectors.json: JoinEUI 70B3D57ED0001234, DevNonce 0x4C2B.
    let join =
        json!({"phy_payload_hex": "00341200d07ed5b3701807f6e5d4c3b2a12b4ce278ea9c"}).to_string();
    let send = |api: &Api, body: &str| {
        http(
            api.addr,
            "POST",
            &format!("/networks/{network}/phy"),
            &[("X-Secret", &secret), ("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    };
    let observe = |hub: &iothub_e2e::Hub, api: &Api| {
        let device = id_of(&api.create_device(
            &json!({"hub_id": hub_id, "name": unique("observer"), "allow_insecure": true}),
        ));
        let mut sub = V4::connect(v4_options(hub.mqtt_addr(), &device));
        for filter in ["#", "$SCW/events/#"] {
            sub.subscribe(filter, QoS::AtMostOnce);
        }
        sub
    };
    let expect_replay = |r: iothub_e2e::api::Response, sub: &mut V4| {
        assert_eq!(r.status, 409, "{}", r.body);
        let v = r.json();
        assert_eq!(v["type"], "replayed_join", "{v}");
        assert_eq!(v["details"]["dev_nonce"], "4c2b", "{v}");
        let event = sub.expect_publish();
        assert_eq!(event.topic, format!("$SCW/events/error/hub/{hub_id}"));
        sub.expect_no_publish(QUIET);
    };

    let mut sub = observe(&hub, &api);
    let r = send(&api, &join);
    assert_eq!(r.status, 200, "{}", r.body);
    let joined = sub.expect_publish();
    assert_eq!(joined.topic, "lora/a1b2c3d4e5f60718/join");
    let payload: Value = serde_json::from_slice(&joined.payload).unwrap();
    assert_eq!(payload["dev_nonce"], "4c2b");
    sub.expect_no_publish(QUIET);
    expect_replay(send(&api, &join), &mut sub);
    // A corrupted MIC is still a MIC error, not a replay: the MIC is checked first.
    let bad_mic =
        json!({"phy_payload_hex": "00341200d07ed5b3701807f6e5d4c3b2a12b4ce278ea9d"}).to_string();
    let r = send(&api, &bad_mic);
    assert_eq!(r.status, 422, "{}", r.body);
    sub.expect_publish();
    drop(sub);

    let status = hub.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    drop(hub);
    let hub = iothub_e2e::Hub::start_in(dir.path(), &yaml).unwrap();
    let api = Api::admin(&hub);
    let mut sub = observe(&hub, &api);
    expect_replay(send(&api, &join), &mut sub);
}
