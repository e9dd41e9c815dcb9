//! Networks (issue 8) fed with every file of `tests/fixtures` through the real binary, and
//! their bad input: each request goes to the network endpoints on the API port over plain
//! HTTP, and a device of the same hub, subscribed to `#` and `$SCW/events/#` with rumqttc,
//! checks exactly what arrives (messages, events, nothing else).
//!
//! Fixture files and where each goes: `chirpstack-v4/<event>.json` to
//! `/chirpstack?event=<event>`; `ttn-v3/uplink.json` to `/tts` with the headers of
//! `ttn-v3/uplink.headers.json`; `sigfox/data-uplink.json` and `sigfox/data-bidir.json` to a
//! SigFox network, `sigfox/bidir-response.json` being the answer the BIDIR callback must get;
//! every vector of `lorawan/vectors.json` through the raw `/phy` path with its keys registered
//! (positives published decrypted, negatives refused with their error). The two README.md
//! files are documentation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use iothub_e2e::api::{Api, Backend, RegistryDb, Response, http, id_of, start_registry_hub};
use iothub_e2e::clients::{V4, v4_options};
use iothub_e2e::raw::QUIET;
use iothub_e2e::unique;
use rumqttc::QoS;
use serde_json::{Value, json};

fn fixture(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Fx {
    _hub: iothub_e2e::Hub,
    api: Api,
    hub_id: String,
    sub: V4,
}

impl Fx {
    /// A registry hub with one hub (dedicated plan) and a device of it subscribed to `#` and
    /// to the hub's events.
    fn start() -> Option<Fx> {
        let (hub, api) = start_registry_hub(&RegistryDb::new(Backend::Sqlite), false)?;
        let hub_id = id_of(
            &api.create_hub(&json!({"name": unique("net"), "product_plan": "plan_dedicated"})),
        );
        let device = id_of(&api.create_device(
            &json!({"hub_id": hub_id, "name": unique("observer"), "allow_insecure": true}),
        ));
        let mut sub = V4::connect(v4_options(hub.mqtt_addr(), &device));
        for filter in ["#", "$SCW/events/#"] {
            let codes = sub.subscribe(filter, QoS::AtMostOnce);
            assert!(
                matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)),
                "{filter}: {codes:?}"
            );
        }
        Some(Fx {
            _hub: hub,
            api,
            hub_id,
            sub,
        })
    }

    /// A network of the hub: (id, secret).
    fn network(&self, kind: &str, prefix: &str) -> (String, String) {
        let created = self
            .api
            .post(
                "networks",
                &json!({"hub_id": self.hub_id, "name": unique(kind), "type": kind, "topic_prefix": prefix}),
            )
            .expect(200);
        let id = id_of(&created["network"]);
        assert_eq!(created["network"]["endpoint"], format!("/networks/{id}"));
        (id, created["secret"].as_str().unwrap().to_owned())
    }

    fn lorawan_device(&self, network: &str, body: &Value) {
        self.api
            .post(&format!("networks/{network}/lorawan-devices"), body)
            .expect(200);
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        http(self.api.addr, "POST", path, headers, Some(body))
    }

    /// The next `n` messages, then nothing more for a while.
    fn expect_exactly(&mut self, n: usize) -> Vec<(String, Vec<u8>)> {
        let got: Vec<(String, Vec<u8>)> = (0..n)
            .map(|_| {
                let p = self.sub.expect_publish();
                (p.topic, p.payload.to_vec())
            })
            .collect();
        self.sub.expect_no_publish(QUIET);
        got
    }

    /// Exactly one message, on `topic`, as JSON.
    fn expect_json(&mut self, topic: &str) -> Value {
        let got = self.expect_exactly(1);
        assert_eq!(got[0].0, topic, "{}", String::from_utf8_lossy(&got[0].1));
        serde_json::from_slice(&got[0].1).unwrap()
    }

    /// Exactly one hub event of this hub (the refusal's), naming the network; nothing else.
    fn expect_refusal_event(&mut self, severity: &str, network: &str) {
        let got = self.expect_exactly(1);
        let want = format!("$SCW/events/{severity}/hub/{}", self.hub_id);
        assert_eq!(got[0].0, want, "{}", String::from_utf8_lossy(&got[0].1));
        let event: Value = serde_json::from_slice(&got[0].1).unwrap();
        let msg = event["msg"].as_str().unwrap();
        assert!(
            msg.contains(network),
            "the event names the network: {event}"
        );
    }
}

fn expect_error(r: &Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], kind, "{v}");
    assert!(v["message"].is_string(), "{v}");
}

/// `chirpstack-v4/*.json`, `ttn-v3/*` and the SigFox callbacks arrive as documented: the
/// ChirpStack and TTS uplinks (the same frame: FCnt 42, FPort 10, `016700e1`) as the uplink
/// JSON on `<prefix>/<dev_eui>/up`, the other ChirpStack events with their body unchanged on
/// `<prefix>/<dev_eui>/<event>`, SigFox bodies unchanged on the expanded `X-Topic`; a downlink
/// published on `<prefix>/<device>/down` is answered to the next BIDIR callback exactly as
/// `sigfox/bidir-response.json`, once; a LoRaWAN downlink is polled in ChirpStack's enqueue
/// format.
#[test]
fn integration_fixtures_arrive_as_documented() {
    let Some(mut fx) = Fx::start() else { return };
    let (lora, lora_secret) = fx.network("lorawan", "lora");
    let secret = [("X-Secret", lora_secret.as_str())];

    // ChirpStack v4: every event file.
    for event in ["up", "join", "status", "ack", "txack", "log", "location"] {
        let body = fixture(&format!("chirpstack-v4/{event}.json"));
        let r = fx.post(
            &format!("/networks/{lora}/chirpstack?event={event}"),
            &[
                ("X-Secret", &lora_secret),
                ("Content-Type", "application/json"),
            ],
            &body,
        );
        let topic = format!("lora/a1b2c3d4e5f60718/{event}");
        assert_eq!(r.status, 200, "{event}: {}", r.body);
        assert_eq!(r.json()["topic"], topic);
        let got = fx.expect_json(&topic);
        assert_eq!(got["source"], "chirpstack");
        assert_eq!(got["event"], event);
        assert_eq!(got["dev_eui"], "a1b2c3d4e5f60718");
        if event == "up" {
            assert_eq!(got["f_port"], 10);
            assert_eq!(got["f_cnt"], 42);
            assert_eq!(got["confirmed"], false);
            assert_eq!(got["data"], "AWcA4Q==");
            assert_eq!(got["data_hex"], "016700e1");
            assert_eq!(got["dev_addr"], "260b1f2a");
            assert_eq!(got["frequency"], 868_500_000);
            assert_eq!(got["spreading_factor"], 7);
            assert_eq!(got["bandwidth"], 125_000);
            assert_eq!(got["rx"].as_array().unwrap().len(), 2);
            assert_eq!(got["rx"][0]["gateway_id"], "3c6105fffe0a1b2c");
            assert_eq!(got["rx"][0]["rssi"], -87);
            assert_eq!(got["rx"][0]["snr"], 7.75);
            assert_eq!(got["rx"][1]["gateway_id"], "0080e1fffe33c4d5");
        } else {
            let original: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got["chirpstack"], original, "{event}");
        }
    }

    // The Things Stack v3: the uplink with the headers TTS sends.
    let tts_headers = fixture_json("ttn-v3/uplink.headers.json");
    let mut headers: Vec<(&str, &str)> = tts_headers
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    headers.extend(secret);
    let r = fx.post(
        &format!("/networks/{lora}/tts"),
        &headers,
        &fixture("ttn-v3/uplink.json"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = fx.expect_json("lora/a1b2c3d4e5f60718/up");
    assert_eq!(got["source"], "tts");
    assert_eq!(got["f_port"], 10);
    assert_eq!(got["f_cnt"], 42);
    assert_eq!(got["data_hex"], "016700e1");
    assert_eq!(got["dev_addr"], "260b1f2a");
    assert_eq!(got["frequency"], 868_500_000);
    assert_eq!(got["spreading_factor"], 7);
    assert_eq!(got["rx"][0]["gateway_id"], "3c6105fffe0a1b2c");
    assert_eq!(got["time"], "2025-03-14T09:26:53.356201445Z");

    // LoRaWAN downlink: published by a client, polled in ChirpStack's enqueue format.
    fx.sub.publish(
        "lora/A1B2C3D4E5F60718/down",
        QoS::AtMostOnce,
        false,
        br#"{"f_port": 10, "data_hex": "0102", "confirmed": true}"#,
    );
    fx.expect_exactly(1);
    let items = poll_downlinks(&fx, &lora, &lora_secret, 1);
    assert_eq!(
        items,
        json!([{"queueItem": {"devEui": "a1b2c3d4e5f60718", "confirmed": true, "fPort": 10, "data": "AQI="}}])
    );
    let again = http(
        fx.api.addr,
        "GET",
        &format!("/networks/{lora}/downlinks"),
        &secret,
        None,
    );
    assert_eq!(again.json()["items"], json!([]), "the queue was drained");

    // SigFox: DATA/UPLINK, then a downlink for the device and two DATA/BIDIR callbacks.
    let (sigfox, sigfox_secret) = fx.network("sigfox", "sf");
    let headers = [
        ("X-Secret", sigfox_secret.as_str()),
        ("X-Topic", "{device}/data"),
        ("Content-Type", "application/json"),
    ];
    let uplink = fixture("sigfox/data-uplink.json");
    let r = fx.post(&format!("/networks/{sigfox}"), &headers, &uplink);
    assert_eq!(r.status, 204, "{}", r.body);
    let got = fx.expect_exactly(1);
    assert_eq!(got, vec![("sf/2BEE81/data".to_owned(), uplink)]);

    let want_answer = fixture_json("sigfox/bidir-response.json");
    let data = want_answer["2BEE81"]["downlinkData"].as_str().unwrap();
    fx.sub
        .publish("sf/2BEE81/down", QoS::AtMostOnce, false, data.as_bytes());
    fx.expect_exactly(1);
    let bidir = fixture("sigfox/data-bidir.json");
    let (r, tries) = wait_for_downlink(&fx, &sigfox, &headers, &bidir);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), want_answer);
    let r = fx.post(&format!("/networks/{sigfox}"), &headers, &bidir);
    assert_eq!(r.status, 204, "the downlink was consumed: {}", r.body);
    let got = fx.expect_exactly(tries + 1);
    assert!(
        got.iter()
            .all(|(t, p)| t == "sf/2BEE81/data" && *p == bidir)
    );
}

/// The downlink reaches the network through its tap shortly after it is published: retries
/// the BIDIR callback while it answers 204. Returns the answer and how many callbacks were
/// sent (each one publishes its body).
fn wait_for_downlink(
    fx: &Fx,
    network: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (Response, usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut tries = 0;
    loop {
        let r = fx.post(&format!("/networks/{network}"), headers, body);
        tries += 1;
        if r.status != 204 || std::time::Instant::now() > deadline {
            return (r, tries);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn poll_downlinks(fx: &Fx, network: &str, secret: &str, want: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = http(
            fx.api.addr,
            "GET",
            &format!("/networks/{network}/downlinks"),
            &[("X-Secret", secret)],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let items = r.json()["items"].clone();
        if items.as_array().unwrap().len() >= want || std::time::Instant::now() > deadline {
            return items;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every vector of `lorawan/vectors.json` through the raw path, each in a LoRaWAN network of
/// its own with the vector's keys registered (the frame counter at the vector's `f_cnt`):
/// valid data uplinks are published decrypted (`frm_payload_hex`, FPort, the 32-bit FCnt) on
/// `<prefix>/<dev_eui>/up` and the same frame again is a replay (409); join-requests are
/// published on `<prefix>/<dev_eui>/join` with JoinEUI and DevNonce; a wrong MIC is 422 (the
/// FCnt-70000 frame too while the session is below 65536, and it is accepted as 70000 once the
/// session's counter is past 65536); the downlink is refused (400). Refusals raise an event.
#[test]
fn lorawan_vectors_through_the_raw_path() {
    let Some(mut fx) = Fx::start() else { return };
    let vectors = fixture_json("lorawan/vectors.json");
    for (i, v) in vectors.as_array().unwrap().iter().enumerate() {
        let what = v["description"].as_str().unwrap();
        let prefix = format!("v{i}");
        let (network, secret) = fx.network("lorawan", &prefix);
        let e = &v["expected"];
        let phy = v["phy_payload_hex"].as_str().unwrap();
        let mtype = e["mtype"].as_str().unwrap();
        let dev_eui = format!("{:016x}", 0x1000 + i);
        if mtype == "JoinRequest" {
            let dev_eui = e["dev_eui"].as_str().unwrap().to_ascii_lowercase();
            fx.lorawan_device(
                &network,
                &json!({"dev_eui": dev_eui, "app_key": v["keys"]["app_key"]}),
            );
        } else {
            fx.lorawan_device(
                &network,
                &json!({
                    "dev_eui": dev_eui, "dev_addr": v["dev_addr"],
                    "nwk_s_key": v["keys"]["nwk_s_key"], "app_s_key": v["keys"]["app_s_key"],
                    "f_cnt_up": v["f_cnt"],
                }),
            );
        }
        // Alternate the two body forms.
        let send = |fx: &Fx| {
            if i % 2 == 0 {
                fx.post(
                    &format!("/networks/{network}/phy"),
                    &[("X-Secret", &secret), ("Content-Type", "application/json")],
                    json!({"phy_payload_hex": phy}).to_string().as_bytes(),
                )
            } else {
                fx.post(
                    &format!("/networks/{network}/phy"),
                    &[
                        ("X-Secret", &secret),
                        ("Content-Type", "application/octet-stream"),
                    ],
                    &hex(phy),
                )
            }
        };
        let r = send(&fx);
        match (mtype, e["mic_valid"].as_bool().unwrap()) {
            ("JoinRequest", true) => {
                assert_eq!(r.status, 200, "{what}: {}", r.body);
                let dev_eui = e["dev_eui"].as_str().unwrap().to_ascii_lowercase();
                let got = fx.expect_json(&format!("{prefix}/{dev_eui}/join"));
                assert_eq!(got["dev_eui"], dev_eui, "{what}");
                assert_eq!(
                    got["join_eui"],
                    e["join_eui"].as_str().unwrap().to_ascii_lowercase(),
                    "{what}"
                );
                assert_eq!(
                    got["dev_nonce"],
                    e["dev_nonce"].as_str().unwrap().to_ascii_lowercase(),
                    "{what}"
                );
            }
            (_, true) if e["uplink"] == true => {
                assert_eq!(r.status, 200, "{what}: {}", r.body);
                let got = fx.expect_json(&format!("{prefix}/{dev_eui}/up"));
                assert_eq!(got["source"], "phy");
                assert_eq!(got["f_cnt"], v["f_cnt"], "{what}");
                assert_eq!(got["f_port"], e["f_port"], "{what}");
                assert_eq!(
                    got["data_hex"],
                    e["frm_payload_hex"].as_str().unwrap_or(""),
                    "{what}"
                );
                assert_eq!(
                    got["dev_addr"],
                    v["dev_addr"].as_str().unwrap().to_ascii_lowercase()
                );
                assert_eq!(got["confirmed"], mtype == "ConfirmedDataUp", "{what}");
                assert_eq!(r.json()["f_cnt"], v["f_cnt"]);
                // The same frame again is a replay.
                expect_error(&send(&fx), 409, "replayed_frame");
                fx.expect_refusal_event("error", &network);
            }
            (_, true) => {
                // A downlink frame: the hub takes uplinks only.
                expect_error(&r, 400, "malformed_phy_payload");
                fx.expect_refusal_event("error", &network);
            }
            (_, false) => {
                expect_error(&r, 422, "invalid_mic");
                fx.expect_refusal_event("error", &network);
                if v["f_cnt"] == 4464 {
                    // The session past 65536: the frame is FCnt 70000 and valid.
                    fx.api
                        .delete(&format!("networks/{network}/lorawan-devices/{dev_eui}"))
                        .expect(204);
                    let body = json!({
                        "dev_eui": dev_eui, "dev_addr": v["dev_addr"],
                        "nwk_s_key": v["keys"]["nwk_s_key"], "app_s_key": v["keys"]["app_s_key"],
                        "f_cnt_up": 65_600,
                    });
                    fx.lorawan_device(&network, &body);
                    let r = send(&fx);
                    assert_eq!(r.status, 200, "{what}: {}", r.body);
                    let got = fx.expect_json(&format!("{prefix}/{dev_eui}/up"));
                    assert_eq!(got["f_cnt"], 70_000);
                    assert_eq!(got["f_port"], e["f_port"]);
                    let stored = fx
                        .api
                        .get(&format!("networks/{network}/lorawan-devices/{dev_eui}"))
                        .expect(200);
                    assert_eq!(stored["f_cnt_up"], 70_001, "the counter is saved");
                }
            }
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Bad input on every network: each answered with its specific status and error type, one
/// hub event naming the network (severity as the kind's), and nothing published.
#[test]
fn bad_input_is_refused_with_an_event_and_nothing_published() {
    let Some(mut fx) = Fx::start() else { return };
    let (rest, rest_secret) = fx.network("rest", "in");
    let (sigfox, sigfox_secret) = fx.network("sigfox", "sf");
    let (lora, lora_secret) = fx.network("lorawan", "lora");
    let uplink = fixture("sigfox/data-uplink.json");
    let up = fixture("chirpstack-v4/up.json");
    let mut bad_base64: Value = serde_json::from_slice(&up).unwrap();
    bad_base64["data"] = json!("not*base64");
    let bad_base64 = bad_base64.to_string().into_bytes();
    let mut no_uplink = fixture_json("ttn-v3/uplink.json");
    no_uplink.as_object_mut().unwrap().remove("uplink_message");
    let no_uplink = no_uplink.to_string().into_bytes();
    let mut bad_hex: Value = serde_json::from_slice(&uplink).unwrap();
    bad_hex["data"] = json!("0e1x");
    let bad_hex = bad_hex.to_string().into_bytes();
    let too_big = vec![b'x'; 4 * 1024 * 1024 + 1];
    let rest_path = format!("/networks/{rest}");
    let sigfox_path = format!("/networks/{sigfox}");
    let cs_path = |event: &str| format!("/networks/{lora}/chirpstack?event={event}");
    let phy_path = format!("/networks/{lora}/phy");
    let json_ct = ("Content-Type", "application/json");

    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, String, Vec<(&str, &str)>, &[u8], u16, &str, &str)> = vec![
        (
            "missing secret",
            rest_path.clone(),
            vec![("X-Topic", "t")],
            b"p",
            401,
            "unauthorized",
            "error",
        ),
        (
            "wrong secret",
            rest_path.clone(),
            vec![("X-Secret", &sigfox_secret), ("X-Topic", "t")],
            b"p",
            401,
            "unauthorized",
            "error",
        ),
        (
            "wildcard topic",
            rest_path.clone(),
            vec![("X-Secret", &rest_secret), ("X-Topic", "a/+")],
            b"p",
            400,
            "invalid_topic",
            "error",
        ),
        (
            "missing topic",
            rest_path.clone(),
            vec![("X-Secret", &rest_secret)],
            b"p",
            400,
            "invalid_topic",
            "error",
        ),
        (
            "payload over the limit",
            rest_path.clone(),
            vec![("X-Secret", &rest_secret), ("X-Topic", "t")],
            &too_big,
            413,
            "payload_too_large",
            "warning",
        ),
        (
            "lorawan path of a rest network",
            format!("/networks/{rest}/phy"),
            vec![("X-Secret", &rest_secret)],
            b"p",
            404,
            "not_found",
            "error",
        ),
        (
            "sigfox malformed JSON",
            sigfox_path.clone(),
            vec![
                ("X-Secret", &sigfox_secret),
                ("X-Topic", "{device}"),
                json_ct,
            ],
            b"{\"device\":",
            400,
            "invalid_json",
            "error",
        ),
        (
            "sigfox bad hex",
            sigfox_path.clone(),
            vec![
                ("X-Secret", &sigfox_secret),
                ("X-Topic", "{device}"),
                json_ct,
            ],
            &bad_hex,
            400,
            "invalid_encoding",
            "error",
        ),
        (
            "sigfox unknown topic variable",
            sigfox_path.clone(),
            vec![("X-Secret", &sigfox_secret), ("X-Topic", "{nope}"), json_ct],
            &uplink,
            400,
            "invalid_topic",
            "error",
        ),
        (
            "chirpstack unknown event",
            cs_path("nope"),
            vec![("X-Secret", &lora_secret), json_ct],
            &up,
            400,
            "unknown_event",
            "error",
        ),
        (
            "chirpstack malformed JSON",
            cs_path("up"),
            vec![("X-Secret", &lora_secret), json_ct],
            b"[1,",
            400,
            "invalid_json",
            "error",
        ),
        (
            "chirpstack bad base64",
            cs_path("up"),
            vec![("X-Secret", &lora_secret), json_ct],
            &bad_base64,
            400,
            "invalid_encoding",
            "error",
        ),
        (
            "tts without uplink_message",
            format!("/networks/{lora}/tts"),
            vec![("X-Secret", &lora_secret), json_ct],
            &no_uplink,
            400,
            "invalid_json",
            "error",
        ),
        (
            "phy bad hex",
            phy_path.clone(),
            vec![("X-Secret", &lora_secret), json_ct],
            br#"{"phy_payload_hex": "40f1zz"}"#,
            400,
            "invalid_encoding",
            "error",
        ),
        (
            "phy bad base64",
            phy_path.clone(),
            vec![("X-Secret", &lora_secret), json_ct],
            br#"{"phy_payload": "@@"}"#,
            400,
            "invalid_encoding",
            "error",
        ),
        (
            "phy garbage",
            phy_path.clone(),
            vec![
                ("X-Secret", &lora_secret),
                ("Content-Type", "application/octet-stream"),
            ],
            b"\x40\x01",
            400,
            "malformed_phy_payload",
            "error",
        ),
        (
            "phy unknown DevAddr",
            phy_path.clone(),
            vec![("X-Secret", &lora_secret), json_ct],
            br#"{"phy_payload_hex": "40f17dbe4900020001954378762b11ff0d"}"#,
            404,
            "unknown_device",
            "error",
        ),
        (
            "phy unsupported content type",
            phy_path.clone(),
            vec![("X-Secret", &lora_secret), ("Content-Type", "text/plain")],
            b"40f1",
            415,
            "unsupported_media_type",
            "error",
        ),
    ];
    for (what, path, headers, body, status, kind, severity) in &cases {
        let r = fx.post(path, headers, body);
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        assert_eq!(r.json()["type"], *kind, "{what}: {}", r.body);
        let network = if path.contains(&rest) {
            &rest
        } else if path.contains(&sigfox) {
            &sigfox
        } else {
            &lora
        };
        fx.expect_refusal_event(severity, network);
    }

    // An unknown network: the same 401, no hub to tell.
    let r = fx.post(
        "/networks/6a2f8c1e-0000-4000-8000-000000000000",
        &[("X-Secret", &rest_secret), ("X-Topic", "t")],
        b"p",
    );
    expect_error(&r, 401, "unauthorized");
    fx.sub.expect_no_publish(QUIET);

    // What a good request looks like, for contrast: published, answered with the topic.
    let r = fx.post(
        &rest_path,
        &[("X-Secret", &rest_secret), ("X-Topic", "room/1")],
        b"\x00\x01binary",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"topic": "in/room/1"}));
    assert_eq!(
        fx.expect_exactly(1),
        vec![("in/room/1".to_owned(), b"\x00\x01binary".to_vec())]
    );

    // A disabled hub takes nothing.
    fx.api
        .post(&format!("hubs/{}/disable", fx.hub_id), &json!({}))
        .expect(200);
    let r = fx.post(
        &rest_path,
        &[("X-Secret", &rest_secret), ("X-Topic", "t")],
        b"p",
    );
    expect_error(&r, 409, "hub_disabled");
}

/// The uplink frame counter of a raw LoRaWAN device is kept with the registry: the FCnt-42
/// frame accepted before a SIGTERM restart is a replay after it (409, nothing published), and
/// the registered keys still verify it.
#[test]
fn lorawan_frame_counters_survive_a_restart() {
    let db = RegistryDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let yaml = iothub_e2e::api::registry_config(db.store_url(), false);
    let Some(mut hub) = iothub_e2e::Hub::start_in(dir.path(), &yaml) else {
        return;
    };
    let api = Api::admin(&hub);
    let hub_id = id_of(&api.create_hub(&json!({"name": unique("restart")})));
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
        &json!({
            "dev_eui": "a1b2c3d4e5f60718", "dev_addr": "260b1f2a",
            "nwk_s_key": "2b7e151628aed2a6abf7158809cf4f3c",
            "app_s_key": "000102030405060708090a0b0c0d0e0f", "f_cnt_up": 42
        }),
    )
    .expect(200);
    let frame = json!({"phy_payload_hex": "402a1f0b26802a000a92ee03aaa88fbc8c"}).to_string();
    let send = |api: &Api| {
        http(
            api.addr,
            "POST",
            &format!("/networks/{network}/phy"),
            &[("X-Secret", &secret), ("Content-Type", "application/json")],
            Some(frame.as_bytes()),
        )
    };
    let r = send(&api);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["f_cnt"], 42);

    let status = hub.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    drop(hub);
    let hub = iothub_e2e::Hub::start_in(dir.path(), &yaml).unwrap();
    let api = Api::admin(&hub);
    let device = id_of(&api.create_device(
        &json!({"hub_id": hub_id, "name": unique("observer"), "allow_insecure": true}),
    ));
    let mut sub = V4::connect(v4_options(hub.mqtt_addr(), &device));
    sub.subscribe("#", QoS::AtMostOnce);
    let stored = api
        .get(&format!(
            "networks/{network}/lorawan-devices/a1b2c3d4e5f60718"
        ))
        .expect(200);
    assert_eq!(stored["f_cnt_up"], 43);
    expect_error(&send(&api), 409, "replayed_frame");
    sub.expect_no_publish(QUIET);
}

/// A message on a downlink topic that is not a valid downlink (SigFox: not 8 bytes; LoRaWAN:
/// not the JSON) is delivered to subscribers like any message, raises a hub event naming the
/// network, and is not handed to the network (the BIDIR answer stays 204, the poll empty).
#[test]
fn malformed_downlinks_raise_an_event_and_are_not_kept() {
    let Some(mut fx) = Fx::start() else { return };
    let (sigfox, sigfox_secret) = fx.network("sigfox", "sf");
    let (lora, lora_secret) = fx.network("lorawan", "lora");
    let headers = [
        ("X-Secret", sigfox_secret.as_str()),
        ("X-Topic", "{device}/data"),
        ("Content-Type", "application/json"),
    ];
    let bidir = fixture("sigfox/data-bidir.json");
    // The taps are live once a valid downlink of each network went through.
    fx.sub.publish(
        "sf/2BEE81/down",
        QoS::AtMostOnce,
        false,
        b"0102030405060708",
    );
    fx.sub.publish(
        "lora/a1b2c3d4e5f60718/down",
        QoS::AtMostOnce,
        false,
        br#"{"f_port": 1, "data": "AQI="}"#,
    );
    fx.expect_exactly(2);
    let (r, tries) = wait_for_downlink(&fx, &sigfox, &headers, &bidir);
    assert_eq!(r.status, 200, "{}", r.body);
    fx.expect_exactly(tries);
    assert_eq!(
        poll_downlinks(&fx, &lora, &lora_secret, 1)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for (topic, payload, network) in [
        ("sf/2BEE81/down", &b"0100"[..], &sigfox),
        (
            "lora/a1b2c3d4e5f60718/down",
            br#"{"f_port": 0, "data": "AQI="}"#,
            &lora,
        ),
    ] {
        fx.sub.publish(topic, QoS::AtMostOnce, false, payload);
        let mut got = fx.expect_exactly(2);
        got.sort();
        assert_eq!(got[1], (topic.to_owned(), payload.to_vec()));
        assert_eq!(got[0].0, format!("$SCW/events/error/hub/{}", fx.hub_id));
        let event: Value = serde_json::from_slice(&got[0].1).unwrap();
        assert!(
            event["msg"].as_str().unwrap().contains(network.as_str()),
            "{event}"
        );
    }
    let r = fx.post(&format!("/networks/{sigfox}"), &headers, &bidir);
    assert_eq!(r.status, 204, "{}", r.body);
    fx.expect_exactly(1);
    let r = http(
        fx.api.addr,
        "GET",
        &format!("/networks/{lora}/downlinks"),
        &[("X-Secret", &lora_secret)],
        None,
    );
    assert_eq!(r.json(), json!({"items": []}));
}
