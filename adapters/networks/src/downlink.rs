//! Downlinks the hub's clients publish for a network's devices, on `<prefix>/<device>/down`:
//! for SigFox the latest 8 bytes per device, handed out by the next BIDIR callback; for
//! LoRaWAN a bounded queue per network of ChirpStack enqueue requests, drained by
//! `GET /networks/{id}/downlinks` (or pushed to the network server, see `push.rs`).

use std::collections::{HashMap, VecDeque};

use iothub_model::{NetworkId, TopicName};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::codec::{Eui64, base64_decode, base64_encode, hex_decode, hex_lower};
use crate::{NetworkKind, NetworkSpec};

/// Queued LoRaWAN downlinks per network; beyond this the oldest is dropped.
pub const MAX_QUEUED_DOWNLINKS: usize = 1000;

/// Why a message on a downlink topic cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    #[error("downlink on {topic}: {reason}")]
    Invalid { topic: String, reason: String },
}

#[derive(Default)]
pub(crate) struct Downlinks {
    /// (network, uppercase SigFox device id) -> 16 lowercase hex digits.
    sigfox: Mutex<HashMap<(NetworkId, String), String>>,
    lorawan: Mutex<HashMap<NetworkId, VecDeque<Value>>>,
}

impl Downlinks {
    pub(crate) fn offer(
        &self,
        spec: &NetworkSpec,
        topic: &TopicName,
        payload: &[u8],
    ) -> Result<bool, DownlinkError> {
        let Some(device) = device_of(spec, topic) else {
            return Ok(false);
        };
        let invalid = |reason: String| invalid(topic, reason);
        match spec.kind {
            NetworkKind::Rest => Ok(false),
            NetworkKind::Sigfox => {
                if device.is_empty()
                    || device.len() > 8
                    || !device.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(invalid(format!("{device:?} is not a SigFox device id")));
                }
                let data = sigfox_data(payload).map_err(invalid)?;
                self.sigfox
                    .lock()
                    .insert((spec.id, device.to_ascii_uppercase()), data);
                Ok(true)
            }
            NetworkKind::Lorawan => {
                let Some((_, item)) = lorawan_downlink(spec, topic, payload)? else {
                    return Ok(false);
                };
                let mut all = self.lorawan.lock();
                let queue = all.entry(spec.id).or_default();
                if queue.len() >= MAX_QUEUED_DOWNLINKS {
                    queue.pop_front();
                }
                queue.push_back(item);
                Ok(true)
            }
        }
    }

    /// The pending downlink of a SigFox device (matched case-insensitively), consumed.
    pub(crate) fn take_sigfox(&self, network: NetworkId, device: &str) -> Option<String> {
        self.sigfox
            .lock()
            .remove(&(network, device.to_ascii_uppercase()))
    }

    /// Every queued LoRaWAN downlink of a network, oldest first, removed from the queue.
    pub(crate) fn drain_lorawan(&self, network: NetworkId) -> Vec<Value> {
        self.lorawan
            .lock()
            .remove(&network)
            .map(Vec::from)
            .unwrap_or_default()
    }

    pub(crate) fn forget_network(&self, network: NetworkId) {
        self.sigfox.lock().retain(|(n, _), _| *n != network);
        self.lorawan.lock().remove(&network);
    }
}

/// The device of `<prefix>/<device>/down`, if `topic` is a downlink topic of `spec`.
fn device_of<'t>(spec: &NetworkSpec, topic: &'t TopicName) -> Option<&'t str> {
    topic
        .as_str()
        .strip_prefix(spec.topic_prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))?
        .strip_suffix("/down")
        .filter(|d| !d.contains('/'))
}

fn invalid(topic: &TopicName, reason: String) -> DownlinkError {
    DownlinkError::Invalid {
        topic: topic.as_str().to_owned(),
        reason,
    }
}

/// A LoRaWAN downlink as the DevEUI and ChirpStack's enqueue request body; `None` when
/// `topic` is not a downlink topic of the network.
pub(crate) fn lorawan_downlink(
    spec: &NetworkSpec,
    topic: &TopicName,
    payload: &[u8],
) -> Result<Option<(Eui64, Value)>, DownlinkError> {
    let Some(device) = device_of(spec, topic) else {
        return Ok(None);
    };
    let dev_eui: Eui64 = device
        .parse()
        .map_err(|e| invalid(topic, format!("{device:?}: {e}")))?;
    let item = lorawan_item(dev_eui, payload).map_err(|r| invalid(topic, r))?;
    Ok(Some((dev_eui, item)))
}

/// 16 hex digits as text, or 8 raw bytes: the 16 lowercase hex digits SigFox wants.
fn sigfox_data(payload: &[u8]) -> Result<String, String> {
    if payload.len() == 16
        && let Ok(text) = std::str::from_utf8(payload)
        && let Ok(bytes) = hex_decode(text)
    {
        return Ok(hex_lower(&bytes));
    }
    if payload.len() == 8 {
        return Ok(hex_lower(payload));
    }
    Err(format!(
        "the payload must be 16 hex digits or 8 bytes, got {} bytes",
        payload.len()
    ))
}

/// `{"f_port", "data" | "data_hex", "confirmed"?}` to ChirpStack's enqueue request body.
fn lorawan_item(dev_eui: Eui64, payload: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let f_port = v
        .get("f_port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=223).contains(p))
        .ok_or("f_port must be an integer from 1 to 223")?;
    let data = match (v.get("data"), v.get("data_hex")) {
        (Some(Value::String(b64)), None) => base64_decode(b64).map_err(|e| format!("data: {e}"))?,
        (None, Some(Value::String(hex))) => {
            hex_decode(hex).map_err(|e| format!("data_hex: {e}"))?
        }
        _ => return Err("give exactly one of data (base64) and data_hex".into()),
    };
    let confirmed = match v.get("confirmed") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("confirmed must be true or false".into()),
    };
    Ok(json!({
        "queueItem": {
            "devEui": dev_eui.to_string(),
            "confirmed": confirmed,
            "fPort": f_port,
            "data": base64_encode(&data),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iothub_model::HubId;

    fn spec(kind: NetworkKind) -> NetworkSpec {
        NetworkSpec {
            id: NetworkId::new_random(),
            hub: HubId::new_random(),
            name: "n".into(),
            kind,
            topic_prefix: TopicName::new("net").unwrap(),
            secret_hash: String::new(),
            server: None,
        }
    }

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn sigfox_downlinks_are_kept_per_device_and_consumed() {
        let d = Downlinks::default();
        let s = spec(NetworkKind::Sigfox);
        assert_eq!(
            d.offer(&s, &topic("net/2bee81/down"), b"01003C0000000A00"),
            Ok(true)
        );
        assert_eq!(d.offer(&s, &topic("other/2BEE81/down"), b"x"), Ok(false));
        assert_eq!(d.offer(&s, &topic("net/2BEE81/up"), b"x"), Ok(false));
        assert!(d.offer(&s, &topic("net/2BEE81/down"), b"0100").is_err());
        assert!(d.offer(&s, &topic("net/XYZ/down"), b"0100").is_err());
        assert_eq!(
            d.take_sigfox(s.id, "2BEE81").as_deref(),
            Some("01003c0000000a00")
        );
        assert_eq!(d.take_sigfox(s.id, "2BEE81"), None);
        assert_eq!(
            d.offer(&s, &topic("net/1/down"), &[1, 2, 3, 4, 5, 6, 7, 8]),
            Ok(true)
        );
        assert_eq!(
            d.take_sigfox(s.id, "1").as_deref(),
            Some("0102030405060708")
        );
    }

    #[test]
    fn lorawan_downlinks_become_chirpstack_enqueue_requests() {
        let d = Downlinks::default();
        let s = spec(NetworkKind::Lorawan);
        let t = topic("net/A1B2C3D4E5F60718/down");
        assert_eq!(
            d.offer(&s, &t, br#"{"f_port": 10, "data_hex": "0102"}"#),
            Ok(true)
        );
        assert_eq!(
            d.offer(
                &s,
                &t,
                br#"{"f_port": 2, "data": "AQI=", "confirmed": true}"#
            ),
            Ok(true)
        );
        for bad in [
            &br#"{"f_port": 0, "data": "AQI="}"#[..],
            br#"{"f_port": 1}"#,
            br#"{"f_port": 1, "data": "!!"}"#,
            br#"{"f_port": 1, "data": "AQI=", "data_hex": "01"}"#,
            b"not json",
        ] {
            assert!(
                d.offer(&s, &t, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let items = d.drain_lorawan(s.id);
        assert_eq!(
            items,
            vec![
                json!({"queueItem": {"devEui": "a1b2c3d4e5f60718", "confirmed": false, "fPort": 10, "data": "AQI="}}),
                json!({"queueItem": {"devEui": "a1b2c3d4e5f60718", "confirmed": true, "fPort": 2, "data": "AQI="}}),
            ]
        );
        assert!(d.drain_lorawan(s.id).is_empty());
    }
}
