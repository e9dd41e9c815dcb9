//! The LoRaWAN gateway / network server: end devices with ABP session keys (and an AppKey for
//! join-requests) whose uplinks reach the hub the way a network server would hand them over:
//!
//! - `phy`: the raw PHYPayload, built and encrypted with the `lorawan` crate (MIC over the full
//!   32-bit FCnt with the NwkSKey, FRMPayload encrypted with the AppSKey, or the NwkSKey for
//!   FPort 0), posted as `application/octet-stream` (or as `{"phy_payload": base64}`);
//!   optionally a join-request per device first (MIC with the AppKey), and a replay of each
//!   accepted frame, which the hub must refuse.
//! - `chirpstack`: ChirpStack v4 HTTP-integration `?event=up` JSON (pbjson camelCase, base64
//!   data, lowercase hex EUIs, RFC 3339 `+00:00` times), as `chirpstack/src/integration/http.rs`
//!   posts it.
//! - `tts`: The Things Stack v3 webhook `uplink_message` JSON (snake_case, uppercase EUIs,
//!   64-bit integers as strings, zero fields omitted) with its `X-Downlink-*` headers.
//!
//! Downlinks come back in ChirpStack's enqueue format (`{"queueItem": {"devEui", "confirmed",
//! "fPort", "data"}}`, the body of `POST /api/devices/{devEui}/queue`); the simulator polls
//! them, checks each item, and builds the downlink PHYPayload it would transmit.
//!
//! EUIs, DevAddr and DevNonce are written MSB-first, as network servers display them; on air
//! they are little-endian, which is what the builders here put in the frame.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::Method;
use lorawan::creator::{DataPayloadCreator, JoinRequestCreator};
use lorawan::default_crypto::DefaultFactory;
use lorawan::keys::{AppKey, AppSKey, NewSKey};
use lorawan::parser::{DevAddr, DevNonce, EUI64, FCtrl};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::http::{HttpClient, ManagementApi};
use crate::summary::{Check, LOG_LIMIT, Report, Tally, progress};
use crate::util::{HexError, Pacer, SplitMix, count, hex, rfc3339, unhex_array};

/// One simulated end device.
#[derive(Clone, PartialEq, Eq)]
pub struct LoraDevice {
    /// MSB-first, as displayed.
    pub dev_eui: [u8; 8],
    pub join_eui: [u8; 8],
    pub dev_addr: [u8; 4],
    pub nwk_s_key: [u8; 16],
    pub app_s_key: [u8; 16],
    pub app_key: [u8; 16],
}

impl fmt::Debug for LoraDevice {
    /// Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoraDevice")
            .field("dev_eui", &hex(&self.dev_eui))
            .field("dev_addr", &hex(&self.dev_addr))
            .finish_non_exhaustive()
    }
}

/// Why a `--device` specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSpecError {
    #[error(
        "expected DEV_EUI:DEV_ADDR:NWK_S_KEY:APP_S_KEY[:APP_KEY[:JOIN_EUI]] (hex), got {0} fields"
    )]
    Fields(usize),
    #[error("{field}: {source}")]
    Hex {
        field: &'static str,
        source: HexError,
    },
}

impl FromStr for LoraDevice {
    type Err = DeviceSpecError;
    /// `DEV_EUI:DEV_ADDR:NWK_S_KEY:APP_S_KEY[:APP_KEY[:JOIN_EUI]]`, hex, MSB-first.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if !(4..=6).contains(&parts.len()) {
            return Err(DeviceSpecError::Fields(parts.len()));
        }
        fn field<const N: usize>(name: &'static str, v: &str) -> Result<[u8; N], DeviceSpecError> {
            unhex_array(v).map_err(|source| DeviceSpecError::Hex {
                field: name,
                source,
            })
        }
        Ok(Self {
            dev_eui: field("dev_eui", parts[0])?,
            dev_addr: field("dev_addr", parts[1])?,
            nwk_s_key: field("nwk_s_key", parts[2])?,
            app_s_key: field("app_s_key", parts[3])?,
            app_key: parts.get(4).map_or(Ok([0; 16]), |v| field("app_key", v))?,
            join_eui: parts.get(5).map_or(Ok([0; 8]), |v| field("join_eui", v))?,
        })
    }
}

impl LoraDevice {
    /// A made-up device: random keys, DevEUI and JoinEUI, and a DevAddr in the experimental
    /// NetID's range (NwkID 0x00, so 0x00..0x01 prefix) made from `rng`.
    pub fn generate(rng: &mut SplitMix) -> Self {
        let mut dev_addr: [u8; 4] = rng.bytes();
        dev_addr[0] &= 0x01;
        Self {
            dev_eui: rng.bytes(),
            join_eui: rng.bytes(),
            dev_addr,
            nwk_s_key: rng.bytes(),
            app_s_key: rng.bytes(),
            app_key: rng.bytes(),
        }
    }

    /// The DevEUI as the hub's topics use it: lowercase hex.
    #[must_use]
    pub fn dev_eui_hex(&self) -> String {
        hex(&self.dev_eui)
    }

    /// The registration body of the hub's management API (ABP keys and the AppKey).
    #[must_use]
    pub fn registration(&self, f_cnt_up: u32) -> Value {
        json!({
            "dev_eui": hex(&self.dev_eui), "join_eui": hex(&self.join_eui),
            "dev_addr": hex(&self.dev_addr), "nwk_s_key": hex(&self.nwk_s_key),
            "app_s_key": hex(&self.app_s_key), "app_key": hex(&self.app_key),
            "f_cnt_up": f_cnt_up,
        })
    }
}

fn reversed<const N: usize>(mut v: [u8; N]) -> [u8; N] {
    v.reverse();
    v
}

/// Why a frame could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the lorawan crate refused the frame: {0}")]
    Build(String),
}

/// One data frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFrame {
    pub uplink: bool,
    pub confirmed: bool,
    pub adr: bool,
    /// The full 32-bit counter: its low 16 bits go on air, all 32 into the MIC and keystream.
    pub f_cnt: u32,
    pub f_port: u8,
}

/// The PHYPayload of a data frame carrying `payload` (FRMPayload, encrypted here).
pub fn data_frame(
    device: &LoraDevice,
    frame: DataFrame,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let mut phy = DataPayloadCreator::new();
    let fctrl = FCtrl::new(if frame.adr { 0x80 } else { 0x00 }, frame.uplink);
    let dev_addr = reversed(device.dev_addr);
    phy.set_confirmed(frame.confirmed)
        .set_uplink(frame.uplink)
        .set_f_port(frame.f_port)
        .set_dev_addr(DevAddr::from(dev_addr))
        .set_fctrl(&fctrl)
        .set_fcnt(frame.f_cnt);
    phy.build(
        payload,
        &[],
        &NewSKey::from(device.nwk_s_key),
        &AppSKey::from(device.app_s_key),
    )
    .map(<[u8]>::to_vec)
    .map_err(|e| FrameError::Build(format!("{e:?}")))
}

/// The PHYPayload of a join-request (MIC with the AppKey).
#[must_use]
pub fn join_request(device: &LoraDevice, dev_nonce: u16) -> Vec<u8> {
    // A zeroed 23-byte buffer: MHDR 0x00 is a join-request, the setters fill the rest.
    let mut phy = JoinRequestCreator::<[u8; 23], DefaultFactory>::default();
    phy.set_app_eui(EUI64::from(reversed(device.join_eui)))
        .set_dev_eui(EUI64::from(reversed(device.dev_eui)))
        .set_dev_nonce(DevNonce::from(dev_nonce.to_le_bytes()));
    phy.build(&AppKey::from(device.app_key)).to_vec()
}

/// How uplinks reach the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Raw PHYPayload, `application/octet-stream`.
    Phy,
    /// Raw PHYPayload as `{"phy_payload": "<base64>", "rx": [...]}`.
    PhyJson,
    /// ChirpStack v4 HTTP integration, `?event=up`.
    ChirpStack,
    /// The Things Stack v3 webhook uplink.
    Tts,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "phy" => Ok(Mode::Phy),
            "phy-json" => Ok(Mode::PhyJson),
            "chirpstack" => Ok(Mode::ChirpStack),
            "tts" => Ok(Mode::Tts),
            other => Err(format!(
                "unknown mode {other:?}: expected phy, phy-json, chirpstack or tts"
            )),
        }
    }
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Phy => "phy",
            Mode::PhyJson => "phy-json",
            Mode::ChirpStack => "chirpstack",
            Mode::Tts => "tts",
        }
    }
}

/// Radio metadata of one simulated reception.
#[derive(Debug, Clone, PartialEq)]
pub struct Radio {
    pub gateway_eui: [u8; 8],
    pub rssi: i32,
    pub snr: f64,
    pub channel: u32,
    pub frequency: u64,
    pub spreading_factor: u32,
    pub time: SystemTime,
}

/// One uplink as a network server knows it after decryption.
#[derive(Debug, Clone)]
pub struct Uplink<'a> {
    pub device: &'a LoraDevice,
    pub frame: DataFrame,
    pub payload: &'a [u8],
    pub radio: &'a Radio,
    pub name: &'a str,
}

/// ChirpStack's `deviceInfo` (`integration.DeviceInfo`) of a simulated device.
fn device_info(device: &LoraDevice, name: &str) -> Value {
    json!({
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
        "tenantName": "iothub-sim",
        "applicationId": "0b1a4c5e-7c8d-4f2a-9e3b-6d5c4b3a2f10",
        "applicationName": "simulated",
        "deviceProfileId": "3d9f2c1b-8a7e-4d6c-b5a4-93f2e1d0c9b8",
        "deviceProfileName": "sim-eu868-classA",
        "deviceName": name,
        "devEui": hex(&device.dev_eui),
        "deviceClassEnabled": "CLASS_A",
        "tags": {}
    })
}

/// The ChirpStack v4 events other than `up`, as `?event=<name>` values.
pub const CHIRPSTACK_EVENTS: [&str; 6] = ["join", "status", "ack", "txack", "log", "location"];

/// ChirpStack v4's body for `event` (one of [`CHIRPSTACK_EVENTS`]) about `device`, shaped like
/// `integration.JoinEvent`, `StatusEvent`, `AckEvent`, `TxAckEvent`, `LogEvent` and
/// `LocationEvent` in pbjson's mapping (top-level fields present even when zero).
#[must_use]
pub fn chirpstack_event(
    event: &str,
    device: &LoraDevice,
    name: &str,
    time: SystemTime,
    n: u64,
) -> Option<Value> {
    let now = rfc3339(time, false);
    let info = device_info(device, name);
    let queue_item = uuidish(n ^ 0x5eed);
    Some(match event {
        "join" => json!({
            "deduplicationId": uuidish(n), "time": now, "deviceInfo": info,
            "devAddr": hex(&device.dev_addr), "regionConfigId": "eu868",
        }),
        "status" => json!({
            "deduplicationId": uuidish(n), "time": now, "deviceInfo": info,
            "margin": 9, "externalPowerSource": false, "batteryLevelUnavailable": false,
            "batteryLevel": 87.4,
        }),
        "ack" => json!({
            "deduplicationId": uuidish(n), "time": now, "deviceInfo": info,
            "queueItemId": queue_item, "acknowledged": true, "fCntDown": n % 1000,
        }),
        "txack" => json!({
            "downlinkId": n as u32, "time": now, "deviceInfo": info,
            "queueItemId": queue_item, "fCntDown": n % 1000, "gatewayId": "3c6105fffe0a1b2c",
            "txInfo": {
                "frequency": 868_500_000, "power": 14,
                "modulation": { "lora": {
                    "bandwidth": 125_000, "spreadingFactor": 7, "codeRate": "CR_4_5",
                    "polarizationInversion": true
                } },
                "timing": { "delay": { "delay": "1s" } },
                "context": BASE64.encode((n as u32).to_be_bytes()),
            }
        }),
        "log" => json!({
            "time": now, "deviceInfo": info, "level": "ERROR", "code": "UPLINK_CODEC",
            "description": "decodeUplink threw: unexpected payload length 3 on fPort 10",
            "context": { "deduplication_id": uuidish(n) },
        }),
        "location" => json!({
            "deduplicationId": uuidish(n), "time": now, "deviceInfo": info,
            "location": {
                "latitude": 48.856981, "longitude": 2.297513, "altitude": 41.0,
                "source": "GEO_RESOLVER_TDOA", "accuracy": 37.5
            }
        }),
        _ => return None,
    })
}

/// ChirpStack v4's `?event=up` body (`integration.UplinkEvent` in pbjson's JSON mapping).
#[must_use]
pub fn chirpstack_up(up: &Uplink<'_>, dedup: u64) -> Value {
    let now = rfc3339(up.radio.time, false);
    json!({
        "deduplicationId": uuidish(dedup),
        "time": now,
        "deviceInfo": device_info(up.device, up.name),
        "devAddr": hex(&up.device.dev_addr),
        "adr": up.frame.adr,
        "dr": 12u32.saturating_sub(up.radio.spreading_factor),
        "fCnt": up.frame.f_cnt,
        "fPort": up.frame.f_port,
        "confirmed": up.frame.confirmed,
        "data": BASE64.encode(up.payload),
        "rxInfo": [{
            "gatewayId": hex(&up.radio.gateway_eui),
            "uplinkId": dedup & 0xffff,
            "gwTime": now,
            "nsTime": now,
            "rssi": up.radio.rssi,
            "snr": up.radio.snr,
            "channel": up.radio.channel,
            "location": {},
            "context": BASE64.encode((dedup as u32).to_be_bytes()),
            "metadata": { "region_config_id": "eu868", "region_common_name": "EU868" },
            "crcStatus": "CRC_OK"
        }],
        "txInfo": {
            "frequency": up.radio.frequency,
            "modulation": { "lora": {
                "bandwidth": 125000, "spreadingFactor": up.radio.spreading_factor, "codeRate": "CR_4_5"
            } }
        },
        "regionConfigId": "eu868"
    })
}

/// The Things Stack v3's webhook body for an uplink (`ApplicationUp.uplink_message`).
#[must_use]
pub fn tts_uplink(up: &Uplink<'_>, dedup: u64) -> Value {
    let now = rfc3339(up.radio.time, true);
    let eui_upper = hex(&up.radio.gateway_eui).to_uppercase();
    let mut message = json!({
        "session_key_id": BASE64.encode(dedup.to_be_bytes()),
        "f_cnt": up.frame.f_cnt,
        "frm_payload": BASE64.encode(up.payload),
        "rx_metadata": [{
            "gateway_ids": { "gateway_id": format!("eui-{}", hex(&up.radio.gateway_eui)), "eui": eui_upper },
            "time": now,
            "timestamp": (dedup as u32),
            "rssi": up.radio.rssi,
            "channel_rssi": up.radio.rssi,
            "snr": up.radio.snr,
            "uplink_token": BASE64.encode(dedup.to_le_bytes()),
            "channel_index": up.radio.channel,
            "received_at": now
        }],
        "settings": {
            "data_rate": { "lora": {
                "bandwidth": 125000, "spreading_factor": up.radio.spreading_factor, "coding_rate": "4/5"
            } },
            "frequency": up.radio.frequency.to_string(),
            "timestamp": (dedup as u32),
            "time": now
        },
        "received_at": now,
        "consumed_airtime": "0.051456s",
        "network_ids": { "net_id": "000013", "tenant_id": "ttn", "cluster_id": "eu1" }
    });
    // TTS omits zero and false fields.
    if up.frame.f_port != 0 {
        message["f_port"] = json!(up.frame.f_port);
    }
    if up.frame.confirmed {
        message["confirmed"] = json!(true);
    }
    json!({
        "end_device_ids": {
            "device_id": up.name,
            "application_ids": { "application_id": "iothub-sim" },
            "dev_eui": hex(&up.device.dev_eui).to_uppercase(),
            "join_eui": hex(&up.device.join_eui).to_uppercase(),
            "dev_addr": hex(&up.device.dev_addr).to_uppercase()
        },
        "correlation_ids": [format!("as:up:{}", uuidish(dedup))],
        "received_at": now,
        "uplink_message": message
    })
}

/// A UUID-shaped id from a number (ChirpStack's deduplication ids are v4 UUIDs).
fn uuidish(n: u64) -> String {
    let mut rng = SplitMix::new(n);
    let mut b: [u8; 16] = rng.bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A LoRaWAN run.
#[derive(Debug, Clone)]
pub struct LorawanConfig {
    /// The network's endpoint, e.g. `http://127.0.0.1:8080/networks/<id>`; `/phy`,
    /// `/chirpstack`, `/tts` and `/downlinks` are appended.
    pub url: String,
    pub secret: String,
    pub mode: Mode,
    pub devices: Vec<LoraDevice>,
    /// Register the devices (session keys and AppKey) through the management API first:
    /// the API and the network id.
    pub register: Option<(ManagementApi, String)>,
    /// Uplinks per device.
    pub messages: u32,
    /// The 32-bit FCnt of each device's first uplink.
    pub f_cnt_start: u32,
    pub f_port: u8,
    pub confirmed: bool,
    /// The FRMPayload of every uplink; `None`: 6 bytes, the device index and the FCnt.
    pub payload: Option<Vec<u8>>,
    /// Send a join-request per device before its uplinks (raw modes only).
    pub join: bool,
    /// Post each accepted frame again; the hub must refuse the replay (raw modes only).
    pub replay: bool,
    /// Poll the downlink queue at the end until this many items came (or the timeout).
    pub expect_downlinks: u32,
    /// ChirpStack mode: these events (of [`CHIRPSTACK_EVENTS`]) are posted once per device
    /// before its uplinks.
    pub chirpstack_events: Vec<String>,
    /// Messages per second per device; 0 = back to back.
    pub rate: f64,
    pub seed: u64,
    pub timeout: Duration,
    pub quiet: bool,
}

/// The default FRMPayload of device `index`'s uplink with counter `f_cnt`.
#[must_use]
pub fn default_payload(index: usize, f_cnt: u32) -> Vec<u8> {
    let mut p = (index as u16).to_be_bytes().to_vec();
    p.extend_from_slice(&f_cnt.to_be_bytes());
    p
}

/// Runs the devices and reports: one group per run, checks for joins, replays and downlinks,
/// the downlink items received, and a log of every uplink (plaintext and PHYPayload).
pub async fn run(config: LorawanConfig) -> Report {
    let http = HttpClient::new(config.timeout);
    let started = Instant::now();
    let mut checks: HashMap<&'static str, Check> = HashMap::new();
    if let Some((api, network_id)) = &config.register {
        let check = checks.entry("registrations").or_default();
        for device in &config.devices {
            let result = api
                .register_lorawan_device(network_id, &device.registration(config.f_cnt_start))
                .await;
            check.record(result.is_ok(), || {
                format!(
                    "{}: {}",
                    device.dev_eui_hex(),
                    result.err().map(|e| e.to_string()).unwrap_or_default()
                )
            });
        }
    }
    let bar = progress(
        config.devices.len() as u64 * u64::from(config.messages),
        config.quiet,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (index, device) in config.devices.iter().enumerate() {
        let (http, config, bar, device) =
            (http.clone(), config.clone(), bar.clone(), device.clone());
        tasks.spawn(async move { run_device(&http, &config, index, &device, &bar).await });
    }
    let mut results = tasks.join_all().await;
    results.sort_by_key(|r| r.index);
    bar.finish_and_clear();
    let mut total = Tally::new();
    let mut log = Vec::new();
    for r in results {
        total.merge(&r.tally);
        log.extend(r.log);
        for (name, c) in r.checks {
            let check = checks.entry(name).or_default();
            check.passed += c.passed;
            check.failed += c.failed;
            check.details.extend(c.details);
        }
    }
    log.truncate(LOG_LIMIT);
    let mut received = Vec::new();
    if config.expect_downlinks > 0 {
        let check = checks.entry("downlinks").or_default();
        poll_downlinks(&http, &config, check, &mut received).await;
    }
    let mut report = Report::new(
        &format!("lorawan ({})", config.mode.name()),
        &config.url,
        started.elapsed(),
        &[(config.mode.name().to_owned(), total)],
    );
    report.checks = checks.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    report.log = log;
    report.received = received;
    report
}

struct DeviceResult {
    index: usize,
    tally: Tally,
    checks: Vec<(&'static str, Check)>,
    log: Vec<Value>,
}

async fn run_device(
    http: &HttpClient,
    config: &LorawanConfig,
    index: usize,
    device: &LoraDevice,
    bar: &indicatif::ProgressBar,
) -> DeviceResult {
    let mut rng = SplitMix::new(config.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut tally = Tally::new();
    let (mut joins, mut replays) = (Check::default(), Check::default());
    let mut log = Vec::new();
    let name = format!("sim-{}", device.dev_eui_hex());
    let raw = matches!(config.mode, Mode::Phy | Mode::PhyJson);
    if config.join && raw {
        let dev_nonce = (rng.next_u64() & 0xffff) as u16;
        let phy = join_request(device, dev_nonce);
        let outcome = post_phy(http, config, &phy, None).await;
        joins.record(outcome.as_ref().is_ok_and(|s| *s == 200), || {
            format!(
                "{}: join-request answered {outcome:?}",
                device.dev_eui_hex()
            )
        });
    }
    if config.mode == Mode::ChirpStack {
        for event in &config.chirpstack_events {
            let Some(body) =
                chirpstack_event(event, device, &name, SystemTime::now(), rng.next_u64())
            else {
                tally.sent();
                tally.failed(format!("unknown ChirpStack event {event:?}"));
                continue;
            };
            let url = format!("{}/chirpstack?event={event}", config.url);
            let headers = [
                ("x-secret", config.secret.as_str()),
                ("content-type", "application/json"),
            ];
            tally.sent();
            let t0 = Instant::now();
            let result = http
                .send(Method::POST, &url, &headers, Bytes::from(body.to_string()))
                .await;
            let answer = count(&mut tally, t0, result);
            log.push(json!({
                "dev_eui": device.dev_eui_hex(), "event": event, "body": body,
                "status": answer.as_ref().map(|a| a.status),
            }));
        }
    }
    let mut pacer = Pacer::new(config.rate);
    for k in 0..config.messages {
        pacer.tick().await;
        let f_cnt = config.f_cnt_start.wrapping_add(k);
        let frame = DataFrame {
            uplink: true,
            confirmed: config.confirmed,
            adr: true,
            f_cnt,
            f_port: config.f_port,
        };
        let payload = config
            .payload
            .clone()
            .unwrap_or_else(|| default_payload(index, f_cnt));
        let radio = Radio {
            gateway_eui: [0x3c, 0x61, 0x05, 0xff, 0xfe, 0x0a, 0x1b, 0x2c],
            rssi: -60 - (rng.next_u64() % 60) as i32,
            snr: (rng.next_u64() % 40) as f64 / 4.0 - 2.0,
            channel: (rng.next_u64() % 8) as u32,
            frequency: [868_100_000, 868_300_000, 868_500_000][(rng.next_u64() % 3) as usize],
            spreading_factor: 7 + (rng.next_u64() % 6) as u32,
            time: SystemTime::now(),
        };
        let up = Uplink {
            device,
            frame,
            payload: &payload,
            radio: &radio,
            name: &name,
        };
        let dedup = rng.next_u64();
        let mut entry = json!({
            "dev_eui": device.dev_eui_hex(), "dev_addr": hex(&device.dev_addr), "f_cnt": f_cnt,
            "f_port": config.f_port, "confirmed": config.confirmed, "data_hex": hex(&payload),
        });
        tally.sent();
        let t0 = Instant::now();
        let (result, phy) = match config.mode {
            Mode::Phy | Mode::PhyJson => match data_frame(device, frame, &payload) {
                Ok(phy) => {
                    let result = send_phy(http, config, &phy, Some(&radio)).await;
                    (result, Some(phy))
                }
                Err(e) => {
                    tally.failed(e.to_string());
                    bar.inc(1);
                    continue;
                }
            },
            Mode::ChirpStack => {
                let url = format!("{}/chirpstack?event=up", config.url);
                let json = chirpstack_up(&up, dedup);
                let body = json.to_string();
                entry["body"] = json;
                let headers = [
                    ("x-secret", config.secret.as_str()),
                    ("content-type", "application/json"),
                ];
                (
                    http.send(Method::POST, &url, &headers, Bytes::from(body))
                        .await,
                    None,
                )
            }
            Mode::Tts => {
                let url = format!("{}/tts", config.url);
                let json = tts_uplink(&up, dedup);
                let body = json.to_string();
                entry["body"] = json;
                let push = format!(
                    "https://eu1.cloud.thethings.network/api/v3/as/applications/iothub-sim/webhooks/iothub/devices/{name}/down/push"
                );
                let replace = push.replace("/down/push", "/down/replace");
                let headers = [
                    ("x-secret", config.secret.as_str()),
                    ("content-type", "application/json"),
                    ("x-downlink-apikey", "NNSXS.SIMULATED.SIMULATED"),
                    ("x-downlink-push", push.as_str()),
                    ("x-downlink-replace", replace.as_str()),
                    ("x-tts-domain", "eu1.cloud.thethings.network"),
                ];
                (
                    http.send(Method::POST, &url, &headers, Bytes::from(body))
                        .await,
                    None,
                )
            }
        };
        let answer = count(&mut tally, t0, result);
        entry["status"] = json!(answer.as_ref().map(|a| a.status));
        if let Some(phy) = &phy {
            entry["phy_payload_hex"] = json!(hex(phy));
            if config.replay && answer.as_ref().is_some_and(|a| a.status == 200) {
                let again = post_phy(http, config, phy, Some(&radio)).await;
                replays.record(again.as_ref().is_ok_and(|s| *s == 409), || {
                    format!(
                        "{} FCnt {f_cnt}: the replay was answered {again:?}, expected 409",
                        device.dev_eui_hex()
                    )
                });
            }
        }
        log.push(entry);
        bar.inc(1);
    }
    let mut checks = Vec::new();
    if config.join && raw {
        checks.push(("joins", joins));
    }
    if config.replay && raw {
        checks.push(("replays refused", replays));
    }
    DeviceResult {
        index,
        tally,
        checks,
        log,
    }
}

async fn send_phy(
    http: &HttpClient,
    config: &LorawanConfig,
    phy: &[u8],
    radio: Option<&Radio>,
) -> Result<crate::http::HttpResponse, crate::http::HttpError> {
    let url = format!("{}/phy", config.url);
    match config.mode {
        Mode::PhyJson => {
            let mut body = json!({ "phy_payload": BASE64.encode(phy) });
            if let Some(r) = radio {
                body["rx"] = json!([{
                    "gateway_id": hex(&r.gateway_eui), "rssi": r.rssi, "snr": r.snr,
                    "channel": r.channel, "time": rfc3339(r.time, false),
                }]);
            }
            let headers = [
                ("x-secret", config.secret.as_str()),
                ("content-type", "application/json"),
            ];
            http.send(Method::POST, &url, &headers, Bytes::from(body.to_string()))
                .await
        }
        _ => {
            let headers = [
                ("x-secret", config.secret.as_str()),
                ("content-type", "application/octet-stream"),
            ];
            http.send(Method::POST, &url, &headers, Bytes::copy_from_slice(phy))
                .await
        }
    }
}

/// Posts a raw frame and answers its status, or the error as text.
async fn post_phy(
    http: &HttpClient,
    config: &LorawanConfig,
    phy: &[u8],
    radio: Option<&Radio>,
) -> Result<u16, String> {
    send_phy(http, config, phy, radio)
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// Checks one downlink queue item: ChirpStack's `EnqueueDeviceQueueItemRequest` JSON.
/// Answers (devEui, fPort, confirmed, data) or why it is not one.
pub fn check_queue_item(item: &Value) -> Result<(String, u8, bool, Vec<u8>), String> {
    let q = item
        .get("queueItem")
        .ok_or_else(|| format!("no queueItem: {item}"))?;
    let dev_eui = q
        .get("devEui")
        .and_then(Value::as_str)
        .filter(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("devEui is not 16 hex digits: {q}"))?;
    let f_port = q
        .get("fPort")
        .and_then(Value::as_u64)
        .filter(|p| (1..=223).contains(p))
        .ok_or_else(|| format!("fPort is not 1..223: {q}"))?;
    let confirmed = match q.get("confirmed") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("confirmed is not a boolean: {q}"))?,
    };
    let data = match q.get("data") {
        None => Vec::new(),
        Some(v) => v
            .as_str()
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or_else(|| format!("data is not base64: {q}"))?,
    };
    Ok((dev_eui.to_owned(), f_port as u8, confirmed, data))
}

async fn poll_downlinks(
    http: &HttpClient,
    config: &LorawanConfig,
    check: &mut Check,
    received: &mut Vec<Value>,
) {
    let url = format!("{}/downlinks", config.url);
    let deadline = Instant::now() + config.timeout;
    let mut f_cnt_down: HashMap<String, u32> = HashMap::new();
    while received.len() < config.expect_downlinks as usize && Instant::now() < deadline {
        let answer = http
            .send(
                Method::GET,
                &url,
                &[("x-secret", config.secret.as_str())],
                Bytes::new(),
            )
            .await;
        let items = match answer {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<Value>(&r.body) {
                Ok(v) => v.get("items").and_then(Value::as_array).cloned(),
                Err(_) => None,
            },
            _ => None,
        };
        let Some(items) = items else {
            check.record(false, || {
                "the downlink queue did not answer 200 {\"items\": [...]}".to_owned()
            });
            return;
        };
        for item in items {
            match check_queue_item(&item) {
                Ok((dev_eui, f_port, confirmed, data)) => {
                    // Transmit it: the downlink PHYPayload this network server would send.
                    let device = config.devices.iter().find(|d| d.dev_eui_hex() == dev_eui);
                    let counter = f_cnt_down.entry(dev_eui.clone()).or_default();
                    let phy = device.map(|d| {
                        data_frame(
                            d,
                            DataFrame {
                                uplink: false,
                                confirmed,
                                adr: false,
                                f_cnt: *counter,
                                f_port,
                            },
                            &data,
                        )
                    });
                    *counter += 1;
                    check.record(device.is_some(), || {
                        format!("a downlink for an unknown DevEUI {dev_eui}")
                    });
                    received.push(json!({
                        "item": item, "dev_eui": dev_eui, "f_port": f_port, "confirmed": confirmed,
                        "data_hex": hex(&data),
                        "phy_payload_hex": phy.and_then(Result::ok).map(|p| hex(&p)),
                    }));
                }
                Err(why) => check.record(false, || why),
            }
        }
        if received.len() < config.expect_downlinks as usize {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if received.len() < config.expect_downlinks as usize {
        let got = received.len();
        check.record(false, || {
            format!(
                "{got} downlinks within {:?}, expected {}",
                config.timeout, config.expect_downlinks
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::unhex;

    fn device(dev_addr: &str, nwk: &str, app: &str) -> LoraDevice {
        format!("a1b2c3d4e5f60718:{dev_addr}:{nwk}:{app}")
            .parse()
            .unwrap()
    }

    /// The vectors of tests/fixtures/lorawan/vectors.json marked "generated with lorawan 0.9"
    /// and the lora-packet README frame: the builders give the same bytes.
    #[test]
    fn data_frames_match_the_fixture_vectors() {
        let d = device(
            "260B1F2A",
            "2b7e151628aed2a6abf7158809cf4f3c",
            "000102030405060708090a0b0c0d0e0f",
        );
        let frame = DataFrame {
            uplink: true,
            confirmed: false,
            adr: true,
            f_cnt: 42,
            f_port: 10,
        };
        let phy = data_frame(&d, frame, &unhex("016700e1").unwrap()).unwrap();
        assert_eq!(hex(&phy), "402a1f0b26802a000a92ee03aaa88fbc8c");

        let lora_packet = device(
            "49BE7DF1",
            "44024241ed4ce9a68c6a8bc055233fd3",
            "ec925802ae430ca77fd3dd73cb2cc588",
        );
        let frame = DataFrame {
            uplink: true,
            confirmed: false,
            adr: false,
            f_cnt: 2,
            f_port: 1,
        };
        let phy = data_frame(&lora_packet, frame, b"test").unwrap();
        assert_eq!(hex(&phy), "40f17dbe4900020001954378762b11ff0d");

        // FCnt 70000: only 4464 (0x1170) goes on air.
        let frame = DataFrame {
            uplink: true,
            confirmed: true,
            adr: true,
            f_cnt: 70_000,
            f_port: 2,
        };
        let phy = data_frame(&d, frame, &[0; 15]).unwrap();
        assert!(hex(&phy).starts_with("802a1f0b2680701102"), "{}", hex(&phy));
    }

    #[test]
    fn join_requests_match_the_fixture_vectors() {
        let mut d = device("00000000", &"00".repeat(16), &"00".repeat(16));
        d.join_eui = unhex_array("70B3D57ED0001234").unwrap();
        d.app_key = unhex_array("8f4a2c1be0d3a5967c18e2f05b4d3a21").unwrap();
        assert_eq!(
            hex(&join_request(&d, 0x4c2b)),
            "00341200d07ed5b3701807f6e5d4c3b2a12b4ce278ea9c"
        );
        d.join_eui = unhex_array("AA13693363343639").unwrap();
        d.dev_eui = unhex_array("3331383274356905").unwrap();
        d.app_key = unhex_array("98929b92c49edba9676d646d3b612456").unwrap();
        assert_eq!(
            hex(&join_request(&d, 0x8904)),
            "0039363463336913aa05693574323831330489c65b1304"
        );
    }

    #[test]
    fn device_specs_are_parsed_and_bad_ones_named() {
        let d: LoraDevice = "A1B2C3D4E5F60718:260b1f2a:2b7e151628aed2a6abf7158809cf4f3c:000102030405060708090a0b0c0d0e0f"
            .parse()
            .unwrap();
        assert_eq!(d.dev_eui_hex(), "a1b2c3d4e5f60718");
        assert_eq!(d.registration(7)["dev_addr"], "260b1f2a");
        assert_eq!(d.registration(7)["f_cnt_up"], 7);
        assert_eq!("a:b".parse::<LoraDevice>(), Err(DeviceSpecError::Fields(2)));
        assert!(matches!(
            "zz:260b1f2a:00:00".parse::<LoraDevice>(),
            Err(DeviceSpecError::Hex {
                field: "dev_eui",
                ..
            })
        ));
    }

    /// The ChirpStack body has the fixture's shape: camelCase, base64 data, lowercase hex.
    #[test]
    fn chirpstack_and_tts_bodies_have_the_products_shapes() {
        let d = device(
            "260B1F2A",
            "2b7e151628aed2a6abf7158809cf4f3c",
            "000102030405060708090a0b0c0d0e0f",
        );
        let radio = Radio {
            gateway_eui: [0x3c, 0x61, 0x05, 0xff, 0xfe, 0x0a, 0x1b, 0x2c],
            rssi: -87,
            snr: 7.75,
            channel: 2,
            frequency: 868_500_000,
            spreading_factor: 7,
            time: SystemTime::UNIX_EPOCH + Duration::new(1_741_944_413, 417_283_905),
        };
        let payload = unhex("016700e1").unwrap();
        let up = Uplink {
            device: &d,
            frame: DataFrame {
                uplink: true,
                confirmed: false,
                adr: true,
                f_cnt: 42,
                f_port: 10,
            },
            payload: &payload,
            radio: &radio,
            name: "freezer-07",
        };
        let cs = chirpstack_up(&up, 1);
        assert_eq!(cs["deviceInfo"]["devEui"], "a1b2c3d4e5f60718");
        assert_eq!(cs["devAddr"], "260b1f2a");
        assert_eq!(cs["data"], "AWcA4Q==");
        assert_eq!(cs["fCnt"], 42);
        assert_eq!(cs["confirmed"], false);
        assert_eq!(cs["time"], "2025-03-14T09:26:53.417283905+00:00");
        assert_eq!(cs["rxInfo"][0]["gatewayId"], "3c6105fffe0a1b2c");
        assert_eq!(cs["txInfo"]["modulation"]["lora"]["codeRate"], "CR_4_5");
        let tts = tts_uplink(&up, 1);
        assert_eq!(tts["end_device_ids"]["dev_eui"], "A1B2C3D4E5F60718");
        assert_eq!(tts["uplink_message"]["frm_payload"], "AWcA4Q==");
        assert_eq!(tts["uplink_message"]["f_port"], 10);
        assert_eq!(tts["uplink_message"]["settings"]["frequency"], "868500000");
        assert!(tts["uplink_message"].get("confirmed").is_none());
        assert_eq!(
            tts["uplink_message"]["rx_metadata"][0]["gateway_ids"]["eui"],
            "3C6105FFFE0A1B2C"
        );
    }

    /// Each event has the fixture's top-level fields (tests/fixtures/chirpstack-v4/*.json).
    #[test]
    fn chirpstack_events_have_the_fixture_fields() {
        let d = device("260B1F2A", &"00".repeat(16), &"00".repeat(16));
        let cases: &[(&str, &[&str])] = &[
            (
                "join",
                &[
                    "deduplicationId",
                    "time",
                    "deviceInfo",
                    "devAddr",
                    "regionConfigId",
                ],
            ),
            (
                "status",
                &[
                    "deduplicationId",
                    "time",
                    "deviceInfo",
                    "margin",
                    "externalPowerSource",
                    "batteryLevelUnavailable",
                    "batteryLevel",
                ],
            ),
            (
                "ack",
                &[
                    "deduplicationId",
                    "time",
                    "deviceInfo",
                    "queueItemId",
                    "acknowledged",
                    "fCntDown",
                ],
            ),
            (
                "txack",
                &[
                    "downlinkId",
                    "time",
                    "deviceInfo",
                    "queueItemId",
                    "fCntDown",
                    "gatewayId",
                    "txInfo",
                ],
            ),
            (
                "log",
                &[
                    "time",
                    "deviceInfo",
                    "level",
                    "code",
                    "description",
                    "context",
                ],
            ),
            (
                "location",
                &["deduplicationId", "time", "deviceInfo", "location"],
            ),
        ];
        for (event, keys) in cases {
            let v = chirpstack_event(event, &d, "n", SystemTime::UNIX_EPOCH, 3).unwrap();
            let mut got: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            let mut want = keys.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{event}");
            assert_eq!(v["deviceInfo"]["devEui"], "a1b2c3d4e5f60718");
        }
        assert_eq!(
            chirpstack_event("up", &d, "n", SystemTime::UNIX_EPOCH, 3),
            None
        );
    }

    #[test]
    fn queue_items_are_checked() {
        let ok = json!({"queueItem": {"devEui": "a1b2c3d4e5f60718", "confirmed": false, "fPort": 10, "data": "AQI="}});
        assert_eq!(
            check_queue_item(&ok),
            Ok(("a1b2c3d4e5f60718".into(), 10, false, vec![1, 2]))
        );
        for bad in [
            json!({"devEui": "a1b2c3d4e5f60718"}),
            json!({"queueItem": {"devEui": "a1b2", "fPort": 10}}),
            json!({"queueItem": {"devEui": "a1b2c3d4e5f60718", "fPort": 0}}),
            json!({"queueItem": {"devEui": "a1b2c3d4e5f60718", "fPort": 1, "data": "!!"}}),
        ] {
            assert!(check_queue_item(&bad).is_err(), "{bad}");
        }
    }
}
