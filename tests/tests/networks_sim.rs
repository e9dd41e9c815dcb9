//! The networks (REST, SigFox, LoRaWAN) driven end to end by the simulators of `iothub-sim`
//! (a separate program: the REST publisher, the Sigfox backend, the LoRaWAN network server
//! that builds real encrypted PHYPayloads), with an MQTT subscriber of the same hub checking
//! exactly what arrives: topics, payloads, count. The simulators' formats come from the real
//! products (and are checked against tests/fixtures in their own unit tests), so the hub and
//! the simulators cannot agree on a shared mistake unnoticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use iothub_e2e::api::{Api, id_of, registry_config};
use iothub_e2e::clients::{V5, v5_options};
use iothub_e2e::sim::{collect, run_sim};
use iothub_e2e::{Hub, unique};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};

/// How long a test waits for what it expects, and how long it listens for extras after.
const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

/// A hub with its registry (no anonymous hub), one API-created hub, a subscriber device of it
/// connected over MQTT, and the admin API.
struct Fx {
    hub: Hub,
    api: Api,
    hub_id: String,
    subscriber: V5,
}

impl Fx {
    fn start() -> Option<Fx> {
        let hub = Hub::start_with(&registry_config("", false))?;
        let api = Api::admin(&hub);
        let hub_id = id_of(&api.create_hub(&json!({ "name": unique("nets") })));
        let device = api.create_device(&json!({
            "hub_id": hub_id, "name": unique("app"), "allow_insecure": true,
        }));
        let subscriber = V5::connect(v5_options(hub.mqtt_addr(), &id_of(&device)));
        Some(Fx {
            hub,
            api,
            hub_id,
            subscriber,
        })
    }

    /// Creates a network; answers its endpoint URL and secret.
    fn network(&self, kind: &str, prefix: &str) -> (String, String) {
        let created = self
            .api
            .post(
                "networks",
                &json!({ "hub_id": self.hub_id, "name": unique(kind), "type": kind, "topic_prefix": prefix }),
            )
            .expect(200);
        let id = id_of(&created["network"]);
        let secret = created["secret"].as_str().unwrap().to_string();
        (format!("http://{}/networks/{id}", self.api.addr), secret)
    }

    fn region_url(&self) -> String {
        format!("http://{}/iot/v1/regions/fr-par", self.api.addr)
    }

    fn subscribe(&mut self, filter: &str) {
        self.subscriber.subscribe(filter, QoS::AtLeastOnce);
    }

    fn collect(&mut self, count: usize) -> Vec<(String, Vec<u8>)> {
        collect(&mut self.subscriber, count, WAIT, QUIET)
    }
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(payload)))
}

/// Two REST publishers, five messages each: exactly those ten arrive, on prefix + X-Topic,
/// with the bodies as payloads; the publisher saw ten 2xx answers.
#[test]
fn rest_publisher_messages_arrive_exactly() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, secret) = fx.network("rest", "svc");
    fx.subscribe("svc/#");
    let run = run_sim(&[
        "rest",
        "--url",
        &url,
        "--secret",
        &secret,
        "--publishers",
        "2",
        "--messages",
        "5",
        "--topic",
        "line/{publisher}",
        "--body",
        "reading {publisher}.{seq}",
    ]);
    assert!(run.success, "{}\n{}", run.report, run.stderr);
    assert_eq!(run.total()["sent"], 10);
    assert_eq!(run.total()["accepted"], 10);
    assert_eq!(run.total()["latency_us"]["count"], 10);
    let got: BTreeSet<(String, String)> = fx
        .collect(10)
        .into_iter()
        .map(|(t, p)| (t, String::from_utf8(p).unwrap()))
        .collect();
    let want: BTreeSet<(String, String)> = (0..2)
        .flat_map(|p| (0..5).map(move |s| (format!("svc/line/{p}"), format!("reading {p}.{s}"))))
        .collect();
    assert_eq!(got, want);
    // Each answer names the topic it published on.
    for entry in run.log() {
        let answer: Value = serde_json::from_str(entry["answer"].as_str().unwrap()).unwrap();
        assert_eq!(
            answer["topic"],
            format!("svc/{}", entry["x_topic"].as_str().unwrap())
        );
    }
}

/// A publisher with the wrong secret: every post refused with 401, nothing published.
#[test]
fn rest_publisher_with_a_wrong_secret_is_refused_and_nothing_arrives() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, _secret) = fx.network("rest", "svc");
    fx.subscribe("svc/#");
    let run = run_sim(&[
        "rest",
        "--url",
        &url,
        "--secret",
        "not-the-secret",
        "--messages",
        "3",
    ]);
    assert!(!run.success, "a refused run must exit non-zero");
    assert_eq!(run.total()["accepted"], 0);
    assert_eq!(run.total()["refused"], 3);
    assert_eq!(run.total()["reasons"], json!({ "401 unauthorized": 3 }));
    assert_eq!(fx.collect(0), vec![]);
}

/// The Sigfox backend, two devices, four callbacks each with every second one a BIDIR with
/// ack=true. A downlink was published for one device (and seen taken: a malformed one
/// published after it raised its event): its first BIDIR answer carries it
/// (exactly once, key = device id as sent), every other answer is 204. Every callback body
/// arrives unchanged on prefix/<device>.
#[test]
fn sigfox_backend_uplinks_arrive_and_bidir_takes_the_downlink() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, secret) = fx.network("sigfox", "sfx");
    fx.subscribe("$SCW/events/#");
    fx.subscriber.publish(
        "sfx/2BEE81/down",
        QoS::AtLeastOnce,
        false,
        b"01003C0000000A00".as_slice(),
    );
    // The network takes downlinks from its own subscription, asynchronously but in order:
    // once the event of a malformed downlink published next arrives, the valid one was taken
    // before the first BIDIR callback asks for it.
    fx.subscriber
        .publish("sfx/XYZ/down", QoS::AtLeastOnce, false, b"0100".as_slice());
    let event = fx.collect(1);
    assert_eq!(event[0].0, format!("$SCW/events/error/hub/{}", fx.hub_id));
    let event = json_of(&event[0].1);
    assert!(
        event["msg"].as_str().unwrap().contains("sfx/XYZ/down"),
        "{event}"
    );
    fx.subscribe("sfx/#");
    let run = run_sim(&[
        "sigfox",
        "--url",
        &url,
        "--secret",
        &secret,
        "--device",
        "2BEE81",
        "--device",
        "1A2B3C",
        "--messages",
        "4",
        "--bidir-every",
        "2",
        "--seq-start",
        "1287",
        "--topic",
        "{device}",
        "--seed",
        "7",
    ]);
    assert!(run.success, "{}\n{}", run.report, run.stderr);
    assert_eq!(run.total()["accepted"], 8);
    assert_eq!(run.check("downlink answers"), (8, 0));
    assert_eq!(
        run.report["received"],
        json!([{ "device": "2BEE81", "seqNumber": 1288, "downlinkData": "01003c0000000a00" }])
    );
    let mut got: Vec<(String, Value)> = fx
        .collect(8)
        .into_iter()
        .map(|(t, p)| (t, json_of(&p)))
        .collect();
    let mut want: Vec<(String, Value)> = run
        .log()
        .iter()
        .map(|e| {
            let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
            (format!("sfx/{}", e["device"].as_str().unwrap()), body)
        })
        .collect();
    let key = |(t, v): &(String, Value)| (t.clone(), v["seqNumber"].as_u64());
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
    // The callbacks had the fixture's shape: BIDIR ones with ack, uplinks with snr.
    assert!(
        want.iter()
            .any(|(_, v)| v["ack"] == true && v.get("snr").is_none())
    );
    assert!(
        want.iter()
            .any(|(_, v)| v.get("ack").is_none() && v["snr"].is_number())
    );
}

const DEV_A: &str = "a1b2c3d4e5f60718:260b1f2a:2b7e151628aed2a6abf7158809cf4f3c:000102030405060708090a0b0c0d0e0f:8f4a2c1be0d3a5967c18e2f05b4d3a21:70b3d57ed0001234";
const DEV_B: &str = "0004a30b001c0530:01234567:00112233445566778899aabbccddeeff:ffeeddccbbaa99887766554433221100:0123456789abcdef0123456789abcdef:0000000000000001";

/// The LoRaWAN network server registers two ABP devices, sends a join-request each, then
/// three uplinks each across the 16-bit FCnt rollover (65534, 65535, 65536), and replays
/// every accepted frame. Exactly the joins and the six decrypted uplinks arrive, with the
/// full 32-bit FCnt; every replay is refused (409). Then a downlink published on
/// prefix/<dev_eui>/down reaches the network server in ChirpStack's enqueue format.
#[test]
fn lorawan_phy_uplinks_are_decrypted_replays_refused_and_downlinks_enqueued() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, secret) = fx.network("lorawan", "lora");
    let key = iothub_e2e::api::admin_key(&fx.hub);
    let region = fx.region_url();
    fx.subscribe("lora/#");
    let run = run_sim(&[
        "lorawan",
        "--url",
        &url,
        "--secret",
        &secret,
        "--mode",
        "phy",
        "--device",
        DEV_A,
        "--device",
        DEV_B,
        "--register",
        "--api",
        &region,
        "--token",
        &key,
        "--messages",
        "3",
        "--f-cnt-start",
        "65534",
        "--f-port",
        "10",
        "--join",
        "--replay",
    ]);
    assert!(run.success, "{}\n{}", run.report, run.stderr);
    assert_eq!(run.check("registrations"), (2, 0));
    assert_eq!(run.check("joins"), (2, 0));
    assert_eq!(run.check("replays refused"), (6, 0));
    assert_eq!(run.total()["accepted"], 6);

    let got = fx.collect(8);
    let mut joins = BTreeSet::new();
    let mut ups = BTreeSet::new();
    for (topic, payload) in &got {
        let v = json_of(payload);
        assert_eq!(v["source"], "phy", "{topic} {v}");
        match topic.rsplit('/').next() {
            Some("join") => {
                joins.insert((topic.clone(), v["dev_eui"].as_str().unwrap().to_string()));
            }
            Some("up") => {
                ups.insert((
                    topic.clone(),
                    v["f_cnt"].as_u64().unwrap(),
                    v["f_port"].as_u64().unwrap(),
                    v["data_hex"].as_str().unwrap().to_string(),
                ));
            }
            _ => panic!("unexpected message on {topic}: {v}"),
        }
    }
    assert_eq!(got.len(), 8, "{got:?}");
    let want_joins: BTreeSet<_> = ["a1b2c3d4e5f60718", "0004a30b001c0530"]
        .into_iter()
        .map(|d| (format!("lora/{d}/join"), d.to_string()))
        .collect();
    assert_eq!(joins, want_joins);
    // The simulator's default payload: device index (2 bytes) then the FCnt (4 bytes).
    let want_ups: BTreeSet<_> = [(0u16, "a1b2c3d4e5f60718"), (1, "0004a30b001c0530")]
        .into_iter()
        .flat_map(|(i, d)| {
            (65534u32..=65536).map(move |f| {
                let data = format!("{i:04x}{f:08x}");
                (format!("lora/{d}/up"), u64::from(f), 10, data)
            })
        })
        .collect();
    assert_eq!(ups, want_ups);

    // A downlink for device A, published by an MQTT client of the hub.
    fx.subscriber.publish(
        "lora/a1b2c3d4e5f60718/down",
        QoS::AtLeastOnce,
        false,
        br#"{"f_port": 5, "data_hex": "cafe01"}"#.as_slice(),
    );
    let run = run_sim(&[
        "lorawan",
        "--url",
        &url,
        "--secret",
        &secret,
        "--device",
        DEV_A,
        "--messages",
        "0",
        "--expect-downlinks",
        "1",
        "--timeout",
        "5",
    ]);
    assert!(run.success, "{}\n{}", run.report, run.stderr);
    assert_eq!(run.check("downlinks"), (1, 0));
    let received = run.report["received"].as_array().unwrap();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0]["item"],
        json!({ "queueItem": { "devEui": "a1b2c3d4e5f60718", "confirmed": false, "fPort": 5, "data": "yv4B" } })
    );
}

/// ChirpStack v4 `?event=up` and TTS v3 webhook uplinks from the network-server simulator:
/// each arrives on prefix/<dev_eui>/up with the uplink JSON of its source (f_cnt, f_port,
/// data in base64 and hex, the gateway's metadata).
#[test]
fn lorawan_chirpstack_and_tts_uplinks_arrive_as_uplink_json() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, secret) = fx.network("lorawan", "lns");
    fx.subscribe("lns/#");
    for (mode, f_cnt_start) in [("chirpstack", "7"), ("tts", "100")] {
        let run = run_sim(&[
            "lorawan",
            "--url",
            &url,
            "--secret",
            &secret,
            "--mode",
            mode,
            "--device",
            DEV_B,
            "--messages",
            "2",
            "--f-cnt-start",
            f_cnt_start,
            "--f-port",
            "3",
            "--payload-hex",
            "016700e1",
        ]);
        assert!(run.success, "{mode}: {}\n{}", run.report, run.stderr);
        assert_eq!(run.total()["accepted"], 2, "{mode}");
        let got = fx.collect(2);
        assert_eq!(got.len(), 2, "{mode}: {got:?}");
        let start: u64 = f_cnt_start.parse().unwrap();
        for (k, (topic, payload)) in got.iter().enumerate() {
            assert_eq!(topic, "lns/0004a30b001c0530/up");
            let v = json_of(payload);
            assert_eq!(v["source"], mode, "{v}");
            assert_eq!(v["event"], "up");
            assert_eq!(v["dev_eui"], "0004a30b001c0530");
            assert_eq!(v["dev_addr"], "01234567");
            assert_eq!(v["f_cnt"], start + k as u64, "{v}");
            assert_eq!(v["f_port"], 3);
            assert_eq!(v["data"], "AWcA4Q==");
            assert_eq!(v["data_hex"], "016700e1");
            assert_eq!(v["rx"][0]["gateway_id"], "3c6105fffe0a1b2c", "{v}");
        }
    }
}

/// Frames the hub must refuse, sent by the network server: a device registered with other
/// session keys (the MIC does not verify: 422 `invalid_mic`) and a device it does not know
/// (404 `unknown_device`). The simulator exits 1 with exactly those refusals, and nothing is
/// published.
#[test]
fn lorawan_frames_with_wrong_keys_or_of_unknown_devices_are_refused_and_nothing_arrives() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, secret) = fx.network("lorawan", "bad");
    let network_id = url.rsplit('/').next().unwrap().to_string();
    // Device A registered through the API with its real keys.
    fx.api
        .post(
            &format!("networks/{network_id}/lorawan-devices"),
            &json!({
                "dev_eui": "a1b2c3d4e5f60718", "dev_addr": "260b1f2a",
                "nwk_s_key": "2b7e151628aed2a6abf7158809cf4f3c",
                "app_s_key": "000102030405060708090a0b0c0d0e0f",
            }),
        )
        .expect(200);
    fx.subscribe("bad/#");
    // The same DevEUI and DevAddr with another NwkSKey.
    let forged = "a1b2c3d4e5f60718:260b1f2a:ffffffffffffffffffffffffffffffff:000102030405060708090a0b0c0d0e0f";
    let cases = [(forged, "422 invalid_mic"), (DEV_B, "404 unknown_device")];
    for (device, reason) in cases {
        let run = run_sim(&[
            "lorawan",
            "--url",
            &url,
            "--secret",
            &secret,
            "--device",
            device,
            "--messages",
            "2",
        ]);
        assert!(!run.success, "{reason}: a refused run must exit non-zero");
        assert_eq!(run.total()["sent"], 2, "{}", run.report);
        assert_eq!(run.total()["accepted"], 0, "{}", run.report);
        assert_eq!(
            run.total()["reasons"],
            json!({ reason: 2 }),
            "{}",
            run.report
        );
    }
    assert_eq!(fx.collect(0), vec![]);
}

/// The ChirpStack v4 events other than `up` (join, status, ack, txack, log, location), one
/// each from the network-server simulator: each arrives on prefix/<dev_eui>/<event> as
/// `{"source": "chirpstack", "event", "dev_eui", "chirpstack": <the body as posted>}`.
#[test]
fn lorawan_chirpstack_events_arrive_with_their_body() {
    let Some(mut fx) = Fx::start() else { return };
    let (url, secret) = fx.network("lorawan", "cs");
    fx.subscribe("cs/#");
    let run = run_sim(&[
        "lorawan",
        "--url",
        &url,
        "--secret",
        &secret,
        "--mode",
        "chirpstack",
        "--device",
        DEV_B,
        "--messages",
        "0",
        "--events",
        "join,status,ack,txack,log,location",
    ]);
    assert!(run.success, "{}\n{}", run.report, run.stderr);
    assert_eq!(run.total()["accepted"], 6);
    let mut got: Vec<(String, String)> = fx
        .collect(6)
        .into_iter()
        .map(|(t, p)| (t, json_of(&p).to_string()))
        .collect();
    let mut want: Vec<(String, String)> = run
        .log()
        .iter()
        .map(|e| {
            let event = e["event"].as_str().unwrap();
            let payload = json!({
                "source": "chirpstack", "event": event, "dev_eui": "0004a30b001c0530",
                "chirpstack": e["body"],
            });
            (format!("cs/0004a30b001c0530/{event}"), payload.to_string())
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}
