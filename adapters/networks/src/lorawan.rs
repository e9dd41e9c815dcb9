//! The LoRaWAN network: ChirpStack v4 HTTP-integration events, The Things Stack v3 webhook
//! uplinks, and raw PHYPayloads that the hub checks itself with the `lorawan` crate (ABP
//! data frames: MIC over the full 32-bit frame counter, replays refused, FRMPayload
//! decrypted; join-requests: MIC with the AppKey). Messages go to
//! `<prefix>/<dev_eui>/<event>` (lowercase DevEUI).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use lorawan::parser::{DataHeader, DataPayload, FRMPayload, MICAble, PhyPayload};
use serde_json::{Map, Value, json};

use crate::codec::{DevAddr, Eui64, base64_decode, base64_encode, hex_decode, hex_lower};
use crate::rest::secret;
use crate::{IngressError, NetworkKind, NetworkSpec, Networks};

const EVENTS: [&str; 7] = ["up", "join", "status", "ack", "txack", "log", "location"];

/// Authenticates a LoRaWAN endpoint's request, runs `handle`, and raises the hub event of a
/// refusal.
fn serve(
    networks: &Networks,
    id: &str,
    headers: &HeaderMap,
    handle: impl FnOnce(&NetworkSpec) -> Result<Response, IngressError>,
) -> Response {
    let spec = match networks.authenticate(id, secret(headers)) {
        Ok(spec) => spec,
        Err(e) => return e.into_response(),
    };
    let result = if spec.kind == NetworkKind::Lorawan {
        handle(&spec)
    } else {
        Err(IngressError::WrongEndpoint {
            kind: spec.kind.as_str(),
            hint: format!("POST to /networks/{id}"),
        })
    };
    match result {
        Ok(r) => r,
        Err(e) => networks.refuse(&spec, e).into_response(),
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, IngressError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(IngressError::json("(body)", "not a JSON object")),
        Err(e) => Err(IngressError::json("(body)", e.to_string())),
    }
}

/// The value at a dotted path of nested objects.
fn at<'a>(v: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = v.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}

fn string_at<'a>(v: &'a Map<String, Value>, path: &str) -> Result<&'a str, IngressError> {
    match at(v, path) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(IngressError::json(path, "must be a string")),
        None => Err(IngressError::json(path, "missing")),
    }
}

fn eui_at(v: &Map<String, Value>, path: &str) -> Result<Eui64, IngressError> {
    string_at(v, path)?
        .parse()
        .map_err(|e| IngressError::encoding(path, e))
}

/// A number that protobuf JSON may write as a string (64-bit integers).
fn number_at(v: &Map<String, Value>, path: &str) -> Result<Option<u64>, IngressError> {
    match at(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| IngressError::json(path, "must be a non-negative integer")),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| IngressError::json(path, "must be a non-negative integer")),
        Some(_) => Err(IngressError::json(path, "must be a number")),
    }
}

fn bool_at(v: &Map<String, Value>, path: &str) -> Result<bool, IngressError> {
    match at(v, path) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(IngressError::json(path, "must be true or false")),
    }
}

fn base64_at(v: &Map<String, Value>, path: &str) -> Result<Vec<u8>, IngressError> {
    match at(v, path) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => base64_decode(s).map_err(|e| IngressError::encoding(path, e)),
        Some(_) => Err(IngressError::json(path, "must be a base64 string")),
    }
}

fn port(n: Option<u64>, path: &str) -> Result<Option<u8>, IngressError> {
    n.map(|p| u8::try_from(p).map_err(|_| IngressError::json(path, "must be 0 to 255")))
        .transpose()
}

/// The uplink JSON every LoRaWAN source publishes on `<prefix>/<dev_eui>/up`.
struct Uplink {
    source: &'static str,
    dev_eui: Eui64,
    dev_addr: Option<DevAddr>,
    f_port: Option<u8>,
    f_cnt: u32,
    confirmed: bool,
    data: Vec<u8>,
    rx: Vec<Value>,
    frequency: Option<u64>,
    spreading_factor: Option<u64>,
    bandwidth: Option<u64>,
    time: Option<Value>,
}

impl Uplink {
    fn to_json(&self) -> Value {
        json!({
            "source": self.source,
            "event": "up",
            "dev_eui": self.dev_eui.to_string(),
            "dev_addr": self.dev_addr.map(|a| a.to_string()),
            "f_port": self.f_port,
            "f_cnt": self.f_cnt,
            "confirmed": self.confirmed,
            "data": base64_encode(&self.data),
            "data_hex": hex_lower(&self.data),
            "rx": self.rx,
            "frequency": self.frequency,
            "spreading_factor": self.spreading_factor,
            "bandwidth": self.bandwidth,
            "time": self.time.clone().unwrap_or(Value::Null),
        })
    }
}

fn rx_entry(gateway_id: Option<String>, m: &Map<String, Value>, time: Option<&Value>) -> Value {
    json!({
        "gateway_id": gateway_id,
        "rssi": m.get("rssi").cloned().unwrap_or(Value::Null),
        "snr": m.get("snr").cloned().unwrap_or(Value::Null),
        "channel": m.get("channel").cloned().or_else(|| m.get("channel_index").cloned()).unwrap_or(Value::Null),
        "time": time.cloned().unwrap_or(Value::Null),
    })
}

fn publish_json(
    networks: &Networks,
    spec: &NetworkSpec,
    dev_eui: Eui64,
    event: &str,
    payload: &Value,
    extra: Map<String, Value>,
) -> Result<Response, IngressError> {
    let topic = networks.topic(spec, &format!("{dev_eui}/{event}"))?;
    let bytes = Bytes::from(payload.to_string());
    networks.publish(spec, topic.clone(), bytes)?;
    let mut answer = extra;
    answer.insert("topic".into(), Value::String(topic.as_str().to_owned()));
    Ok(Json(Value::Object(answer)).into_response())
}

// ---------------------------------------------------------------------------------------
// ChirpStack v4

pub(crate) async fn chirpstack(
    State(networks): State<Networks>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&networks, &id, &headers, |spec| {
        let event = query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("event="))
            .unwrap_or_default();
        if !EVENTS.contains(&event) {
            return Err(IngressError::UnknownEvent(event.to_owned()));
        }
        let v = object(&body)?;
        let dev_eui = eui_at(&v, "deviceInfo.devEui")?;
        if event != "up" {
            let payload = json!({
                "source": "chirpstack",
                "event": event,
                "dev_eui": dev_eui.to_string(),
                "chirpstack": Value::Object(v),
            });
            return publish_json(&networks, spec, dev_eui, event, &payload, Map::new());
        }
        let uplink = chirpstack_up(&v, dev_eui)?;
        publish_json(
            &networks,
            spec,
            dev_eui,
            "up",
            &uplink.to_json(),
            Map::new(),
        )
    })
}

fn chirpstack_up(v: &Map<String, Value>, dev_eui: Eui64) -> Result<Uplink, IngressError> {
    let dev_addr = match at(v, "devAddr") {
        None | Some(Value::Null) => None,
        Some(_) => Some(
            string_at(v, "devAddr")?
                .parse()
                .map_err(|e| IngressError::encoding("devAddr", e))?,
        ),
    };
    let f_cnt = number_at(v, "fCnt")?.unwrap_or(0);
    let f_cnt = u32::try_from(f_cnt).map_err(|_| IngressError::json("fCnt", "above 2^32"))?;
    let mut rx = Vec::new();
    if let Some(list) = at(v, "rxInfo") {
        let list = list
            .as_array()
            .ok_or_else(|| IngressError::json("rxInfo", "must be a list"))?;
        for (i, item) in list.iter().enumerate() {
            let m = item
                .as_object()
                .ok_or_else(|| IngressError::json(format!("rxInfo[{i}]"), "must be an object"))?;
            let gw = m
                .get("gatewayId")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let time = m.get("gwTime").or_else(|| m.get("nsTime"));
            rx.push(rx_entry(gw, m, time));
        }
    }
    Ok(Uplink {
        source: "chirpstack",
        dev_eui,
        dev_addr,
        f_port: port(number_at(v, "fPort")?, "fPort")?,
        f_cnt,
        confirmed: bool_at(v, "confirmed")?,
        data: base64_at(v, "data")?,
        rx,
        frequency: number_at(v, "txInfo.frequency")?,
        spreading_factor: number_at(v, "txInfo.modulation.lora.spreadingFactor")?,
        bandwidth: number_at(v, "txInfo.modulation.lora.bandwidth")?,
        time: at(v, "time").cloned(),
    })
}

// ---------------------------------------------------------------------------------------
// The Things Stack v3

pub(crate) async fn tts(
    State(networks): State<Networks>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&networks, &id, &headers, |spec| {
        let v = object(&body)?;
        let uplink = tts_up(&v)?;
        let dev_eui = uplink.dev_eui;
        publish_json(
            &networks,
            spec,
            dev_eui,
            "up",
            &uplink.to_json(),
            Map::new(),
        )
    })
}

fn tts_up(v: &Map<String, Value>) -> Result<Uplink, IngressError> {
    let dev_eui = eui_at(v, "end_device_ids.dev_eui")?;
    let up = match v.get("uplink_message") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(IngressError::json("uplink_message", "must be an object")),
        None => return Err(IngressError::json("uplink_message", "missing")),
    };
    let dev_addr = match at(v, "end_device_ids.dev_addr") {
        None => None,
        Some(_) => Some(
            string_at(v, "end_device_ids.dev_addr")?
                .parse()
                .map_err(|e| IngressError::encoding("end_device_ids.dev_addr", e))?,
        ),
    };
    let f_cnt = number_at(up, "f_cnt")?.unwrap_or(0);
    let f_cnt = u32::try_from(f_cnt)
        .map_err(|_| IngressError::json("uplink_message.f_cnt", "above 2^32"))?;
    let mut rx = Vec::new();
    if let Some(list) = up.get("rx_metadata") {
        let list = list
            .as_array()
            .ok_or_else(|| IngressError::json("uplink_message.rx_metadata", "must be a list"))?;
        for (i, item) in list.iter().enumerate() {
            let m = item.as_object().ok_or_else(|| {
                IngressError::json(
                    format!("uplink_message.rx_metadata[{i}]"),
                    "must be an object",
                )
            })?;
            let ids = m.get("gateway_ids");
            let gw = ids
                .and_then(|g| g.get("eui"))
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .or_else(|| {
                    ids.and_then(|g| g.get("gateway_id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            rx.push(rx_entry(gw, m, m.get("time")));
        }
    }
    let lora = |field: &str| number_at(up, &format!("settings.data_rate.lora.{field}"));
    Ok(Uplink {
        source: "tts",
        dev_eui,
        dev_addr,
        // TTS omits zero values: no f_port means FPort 0.
        f_port: Some(port(number_at(up, "f_port")?, "uplink_message.f_port")?.unwrap_or(0)),
        f_cnt,
        confirmed: bool_at(up, "confirmed")?,
        data: base64_at(up, "frm_payload")
            .map_err(|e| rename_field(e, "uplink_message.frm_payload"))?,
        rx,
        frequency: number_at(up, "settings.frequency")?,
        spreading_factor: lora("spreading_factor")?,
        bandwidth: lora("bandwidth")?,
        time: up
            .get("received_at")
            .or_else(|| v.get("received_at"))
            .cloned(),
    })
}

fn rename_field(e: IngressError, field: &str) -> IngressError {
    match e {
        IngressError::InvalidEncoding { message, .. } => IngressError::encoding(field, message),
        IngressError::InvalidJson { message, .. } => IngressError::json(field, message),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// Raw PHYPayloads

pub(crate) async fn phy(
    State(networks): State<Networks>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec = match networks.authenticate(&id, secret(&headers)) {
        Ok(spec) => spec,
        Err(e) => return e.into_response(),
    };
    let result = match spec.kind {
        NetworkKind::Lorawan => phy_frame(&networks, &spec, &headers, &body).await,
        kind => Err(IngressError::WrongEndpoint {
            kind: kind.as_str(),
            hint: format!("POST to /networks/{id}"),
        }),
    };
    match result {
        Ok(r) => r,
        Err(e) => networks.refuse(&spec, e).into_response(),
    }
}

/// The PHYPayload bytes and the gateways' metadata of a `/phy` request.
fn phy_body(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<u8>, Vec<Value>), IngressError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/octet-stream" => Ok((body.to_vec(), Vec::new())),
        "application/json" => {
            let v = object(body)?;
            let bytes = match (v.get("phy_payload"), v.get("phy_payload_hex")) {
                (Some(Value::String(s)), None) => {
                    base64_decode(s).map_err(|e| IngressError::encoding("phy_payload", e))?
                }
                (None, Some(Value::String(s))) => {
                    hex_decode(s).map_err(|e| IngressError::encoding("phy_payload_hex", e))?
                }
                _ => {
                    return Err(IngressError::json(
                        "phy_payload",
                        "give exactly one of phy_payload (base64) and phy_payload_hex (strings)",
                    ));
                }
            };
            let rx = match v.get("rx") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(list)) => list.clone(),
                Some(_) => return Err(IngressError::json("rx", "must be a list")),
            };
            Ok((bytes, rx))
        }
        other => Err(IngressError::UnsupportedMediaType(other.to_owned())),
    }
}

/// What the MIC check of a data frame decided, under the devices' lock.
struct Accepted {
    dev_eui: Eui64,
    dev_addr: DevAddr,
    f_cnt: u32,
    nwk_s_key: crate::Key128,
    app_s_key: crate::Key128,
}

async fn phy_frame(
    networks: &Networks,
    spec: &NetworkSpec,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, IngressError> {
    let (bytes, rx) = phy_body(headers, body)?;
    let parsed = lorawan::parser::parse(bytes.clone())
        .map_err(|e| IngressError::MalformedPhy(format!("{e:?}")))?;
    match parsed {
        PhyPayload::JoinRequest(join) => {
            let dev_eui = Eui64::from_air(join.dev_eui().as_ref())
                .ok_or_else(|| IngressError::MalformedPhy("DevEUI".into()))?;
            let join_eui = Eui64::from_air(join.app_eui().as_ref())
                .ok_or_else(|| IngressError::MalformedPhy("JoinEUI".into()))?;
            let mut nonce = join.dev_nonce().as_ref().to_vec();
            nonce.reverse();
            let dev_nonce = match nonce[..] {
                [hi, lo] => u16::from_be_bytes([hi, lo]),
                _ => return Err(IngressError::MalformedPhy("DevNonce".into())),
            };
            let app_key = {
                let all = networks.inner.devices.lock();
                let device = all
                    .get(&spec.id)
                    .and_then(|d| d.by_eui.get(&dev_eui))
                    .ok_or_else(|| {
                        IngressError::UnknownDevice(format!("no device with DevEUI {dev_eui}"))
                    })?;
                device.app_key.ok_or_else(|| {
                    IngressError::InvalidMic(format!(
                        "device {dev_eui} has no AppKey to check a join-request with"
                    ))
                })?
            };
            if !join.validate_mic(&app_key.aes()) {
                return Err(IngressError::InvalidMic(format!(
                    "join-request of {dev_eui} (MIC {})",
                    hex_lower(&join.mic().0)
                )));
            }
            accept_dev_nonce(networks, spec, dev_eui, dev_nonce)?;
            if let Err(error) = networks
                .inner
                .counters
                .save_dev_nonce(spec.id, dev_eui, dev_nonce)
                .await
            {
                tracing::warn!(
                    message = "could not save a LoRaWAN DevNonce",
                    %error,
                    network = %spec.id,
                    %dev_eui
                );
            }
            let payload = json!({
                "source": "phy",
                "event": "join",
                "dev_eui": dev_eui.to_string(),
                "join_eui": join_eui.to_string(),
                "dev_nonce": hex_lower(&nonce),
                "rx": rx,
            });
            publish_json(networks, spec, dev_eui, "join", &payload, Map::new())
        }
        PhyPayload::JoinAccept(_) => Err(IngressError::MalformedPhy(
            "a join-accept is a downlink; the hub takes uplinks only".into(),
        )),
        PhyPayload::Data(DataPayload::Decrypted(_)) => Err(IngressError::MalformedPhy(
            "unexpected decrypted frame".into(),
        )),
        PhyPayload::Data(DataPayload::Encrypted(frame)) => {
            if !frame.is_uplink() {
                return Err(IngressError::MalformedPhy(
                    "a data downlink; the hub takes uplinks only".into(),
                ));
            }
            let fhdr = frame.fhdr();
            let dev_addr = DevAddr::from_air(fhdr.dev_addr().as_ref())
                .ok_or_else(|| IngressError::MalformedPhy("DevAddr".into()))?;
            let wire = fhdr.fcnt();
            let accepted = check_data_frame(networks, spec, dev_addr, wire, |key, f_cnt| {
                frame.validate_mic(key, f_cnt)
            })?;
            let confirmed = frame.is_confirmed();
            let decrypted = frame
                .decrypt(
                    Some(&accepted.nwk_s_key.aes()),
                    Some(&accepted.app_s_key.aes()),
                    accepted.f_cnt,
                )
                .map_err(|e| IngressError::MalformedPhy(format!("{e:?}")))?;
            let f_port = decrypted.f_port();
            let data = match decrypted.frm_payload() {
                FRMPayload::Data(d) => d.to_vec(),
                FRMPayload::MACCommands(m) => m.data().to_vec(),
                FRMPayload::None => Vec::new(),
            };
            if let Err(error) = networks
                .inner
                .counters
                .save_f_cnt_up(spec.id, accepted.dev_eui, accepted.f_cnt.saturating_add(1))
                .await
            {
                tracing::warn!(
                    message = "could not save a LoRaWAN frame counter",
                    %error,
                    network = %spec.id,
                    dev_eui = %accepted.dev_eui
                );
            }
            let uplink = Uplink {
                source: "phy",
                dev_eui: accepted.dev_eui,
                dev_addr: Some(accepted.dev_addr),
                f_port,
                f_cnt: accepted.f_cnt,
                confirmed,
                data,
                rx,
                frequency: None,
                spreading_factor: None,
                bandwidth: None,
                time: None,
            };
            let mut extra = Map::new();
            extra.insert("dev_eui".into(), json!(accepted.dev_eui.to_string()));
            extra.insert("f_cnt".into(), json!(accepted.f_cnt));
            extra.insert("f_port".into(), json!(f_port));
            publish_json(
                networks,
                spec,
                accepted.dev_eui,
                "up",
                &uplink.to_json(),
                extra,
            )
        }
    }
}

/// Records the DevNonce of a join-request whose MIC is valid, under the devices' lock; a
/// DevNonce the device already used is a replayed join-request (LoRaWAN 1.0.x).
fn accept_dev_nonce(
    networks: &Networks,
    spec: &NetworkSpec,
    dev_eui: Eui64,
    dev_nonce: u16,
) -> Result<(), IngressError> {
    let mut all = networks.inner.devices.lock();
    let device = all
        .get_mut(&spec.id)
        .and_then(|d| d.by_eui.get_mut(&dev_eui))
        .ok_or_else(|| IngressError::UnknownDevice(format!("no device with DevEUI {dev_eui}")))?;
    if device.dev_nonces.insert(dev_nonce) {
        Ok(())
    } else {
        Err(IngressError::ReplayedJoin {
            dev_eui: dev_eui.to_string(),
            dev_nonce,
        })
    }
}

/// The 32-bit frame counter a 16-bit wire counter stands for, given the lowest counter still
/// accepted: the first value at or above `next` whose low 16 bits are `wire`.
pub(crate) fn full_f_cnt(next: u32, wire: u16) -> u32 {
    let candidate = (next & 0xFFFF_0000) | u32::from(wire);
    if candidate < next {
        candidate.wrapping_add(0x1_0000)
    } else {
        candidate
    }
}

/// Finds the device of a data frame, checks its MIC over the rebuilt 32-bit counter and
/// advances the counter, all under the devices' lock. A frame whose MIC only verifies with
/// the counter 2^16 lower (already accepted) is a replay.
fn check_data_frame(
    networks: &Networks,
    spec: &NetworkSpec,
    dev_addr: DevAddr,
    wire: u16,
    mic_ok: impl Fn(&lorawan::keys::AES128, u32) -> bool,
) -> Result<Accepted, IngressError> {
    let mut all = networks.inner.devices.lock();
    let devices = all
        .get_mut(&spec.id)
        .ok_or_else(|| IngressError::UnknownDevice(format!("no device with DevAddr {dev_addr}")))?;
    let dev_eui = *devices
        .by_addr
        .get(&dev_addr)
        .ok_or_else(|| IngressError::UnknownDevice(format!("no device with DevAddr {dev_addr}")))?;
    let device = devices
        .by_eui
        .get_mut(&dev_eui)
        .ok_or_else(|| IngressError::UnknownDevice(format!("no device with DevAddr {dev_addr}")))?;
    let session = device
        .session
        .clone()
        .ok_or_else(|| IngressError::UnknownDevice(format!("{dev_eui} has no session keys")))?;
    let next = device.f_cnt_up;
    let f_cnt = full_f_cnt(next, wire);
    let key = session.nwk_s_key.aes();
    if !mic_ok(&key, f_cnt) {
        if f_cnt >= 0x1_0000 && f_cnt - 0x1_0000 < next && mic_ok(&key, f_cnt - 0x1_0000) {
            return Err(IngressError::ReplayedFrame {
                dev_eui: dev_eui.to_string(),
                f_cnt: f_cnt - 0x1_0000,
                next,
            });
        }
        return Err(IngressError::InvalidMic(format!(
            "data frame of {dev_eui} (DevAddr {dev_addr}, frame counter {f_cnt})"
        )));
    }
    device.f_cnt_up = f_cnt.saturating_add(1);
    Ok(Accepted {
        dev_eui,
        dev_addr,
        f_cnt,
        nwk_s_key: session.nwk_s_key,
        app_s_key: session.app_s_key,
    })
}

// ---------------------------------------------------------------------------------------
// Downlinks, by poll

pub(crate) async fn downlinks(
    State(networks): State<Networks>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&networks, &id, &headers, |spec| {
        let items = networks.inner.downlinks.drain_lorawan(spec.id);
        Ok(Json(json!({ "items": items })).into_response())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counters_rebuild_from_the_low_16_bits() {
        let cases = [
            (0, 0, 0),
            (0, 5, 5),
            (3, 2, 0x1_0002),
            (65_600, 4464, 70_000),
            (0, 4464, 4464),
            (0x1_0000, 0xFFFF, 0x1_FFFF),
            (0xFFFF, 0, 0x1_0000),
        ];
        for (next, wire, want) in cases {
            assert_eq!(full_f_cnt(next, wire), want, "next {next} wire {wire}");
        }
    }
}
