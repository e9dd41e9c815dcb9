//! The SigFox backend: posts DATA callbacks the way Sigfox's cloud does. Sigfox has no fixed
//! body: the customer writes a template in which `{device}`, `{time}`, `{data}`,
//! `{seqNumber}`, ... are replaced *textually*, so this simulator does exactly that with the
//! templates of `tests/fixtures/sigfox/README.md` (or yours). Every `--bidir-every`-th message
//! is a DATA/BIDIR callback with `ack: true`; its answer is checked like the backend does:
//! HTTP 204 (nothing to send), or 200 with `{"<device>": {"downlinkData": "<16 hex>"}}` where
//! the key is the device id exactly as sent.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::http::{HttpClient, HttpResponse};
use crate::summary::{Check, LOG_LIMIT, Report, Tally, progress};
use crate::util::{Pacer, SplitMix, count, hex, unix_secs};

/// The DATA/UPLINK body template of the fixtures (numbers unquoted, strings quoted).
pub const UPLINK_TEMPLATE: &str = r#"{"device":"{device}","time":{time},"data":"{data}","seqNumber":{seqNumber},"deviceTypeId":"{deviceTypeId}","station":"{station}","rssi":{rssi},"snr":{snr}}"#;
/// The DATA/BIDIR body template of the fixtures.
pub const BIDIR_TEMPLATE: &str = r#"{"device":"{device}","time":{time},"data":"{data}","seqNumber":{seqNumber},"deviceTypeId":"{deviceTypeId}","ack":{ack},"longPolling":{longPolling},"station":"{station}","rssi":{rssi}}"#;

/// A SigFox backend run.
#[derive(Debug, Clone)]
pub struct SigfoxConfig {
    /// The network's endpoint, e.g. `http://127.0.0.1:8080/networks/<id>`.
    pub url: String,
    pub secret: String,
    /// The `X-Topic` header as configured in the callback (may contain `{device}` etc.).
    pub topic: String,
    /// Replace the variables in `X-Topic` before sending (as the backend does for custom
    /// headers); without it the header goes as typed and the hub expands it.
    pub expand_topic: bool,
    /// Device ids (hex, up to 8 characters, as the backend shows them: uppercase).
    pub devices: Vec<String>,
    /// Messages per device.
    pub messages: u32,
    /// `seqNumber` of each device's first message.
    pub seq_start: u32,
    /// Every n-th message of a device is a BIDIR callback with `ack: true` (0: never).
    pub bidir_every: u32,
    pub uplink_template: String,
    pub bidir_template: String,
    /// Messages per second per device; 0 = back to back.
    pub rate: f64,
    pub seed: u64,
    pub timeout: Duration,
    pub quiet: bool,
}

/// `n` made-up device ids (6 uppercase hex digits, like most Sigfox ids).
#[must_use]
pub fn generate_devices(n: u32, seed: u64) -> Vec<String> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| format!("{:06X}", rng.next_u64() & 0xff_ffff))
        .collect()
}

/// The values of one callback, by Sigfox variable name.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub device: String,
    pub time: u64,
    pub data: String,
    pub seq_number: u32,
    pub device_type_id: String,
    pub ack: bool,
    pub long_polling: bool,
    pub station: String,
    pub rssi: f64,
    pub snr: f64,
}

impl Callback {
    /// `template` with every known `{variable}` replaced by its value, textually, as the
    /// Sigfox backend does; unknown ones are left as they are.
    #[must_use]
    pub fn expand(&self, template: &str) -> String {
        template
            .replace("{device}", &self.device)
            .replace("{time}", &self.time.to_string())
            .replace("{data}", &self.data)
            .replace("{seqNumber}", &self.seq_number.to_string())
            .replace("{deviceTypeId}", &self.device_type_id)
            .replace("{ack}", &self.ack.to_string())
            .replace("{longPolling}", &self.long_polling.to_string())
            .replace("{station}", &self.station)
            .replace("{rssi}", &format!("{:.2}", self.rssi))
            .replace("{snr}", &format!("{:.2}", self.snr))
    }
}

/// What a callback answer says, checked as the backend would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx without a body: nothing to send to the device.
    NoDownlink,
    /// 200 with a valid downlink for this device: the 8 bytes as 16 hex characters.
    Downlink(String),
    /// An answer the backend would not accept, and why.
    Invalid(String),
}

/// Checks a 2xx answer to a callback for `device` (`bidir`: the callback asked for a
/// downlink).
#[must_use]
pub fn check_answer(device: &str, bidir: bool, response: &HttpResponse) -> Answer {
    if response.body.is_empty() || response.status == 204 {
        return Answer::NoDownlink;
    }
    if !bidir {
        // The backend ignores the body of an UPLINK callback's answer; a hub should not
        // have produced one with a downlink in it.
        return match serde_json::from_slice::<Value>(&response.body) {
            Ok(v) if v.get(device).is_some() => {
                Answer::Invalid(format!("a downlink answered an UPLINK callback: {v}"))
            }
            _ => Answer::NoDownlink,
        };
    }
    let v: Value = match serde_json::from_slice(&response.body) {
        Ok(v) => v,
        Err(e) => return Answer::Invalid(format!("not JSON ({e}): {}", response.text())),
    };
    let Some(map) = v.as_object() else {
        return Answer::Invalid(format!("not a JSON object: {v}"));
    };
    if map.len() != 1 {
        return Answer::Invalid(format!("expected exactly one key, {device:?}: {v}"));
    }
    let Some(inner) = map.get(device) else {
        return Answer::Invalid(format!(
            "the key is not the device id {device:?} as sent: {v}"
        ));
    };
    match inner.get("downlinkData").and_then(Value::as_str) {
        Some(d) if d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Answer::Downlink(d.to_owned())
        }
        Some(d) => Answer::Invalid(format!("downlinkData {d:?} is not 16 hex characters")),
        None => Answer::Invalid(format!("no downlinkData string: {v}")),
    }
}

/// Runs the backend and reports: one group, a `downlink answers` check, the downlinks
/// received, and a log of every callback.
pub async fn run(config: SigfoxConfig) -> Report {
    let http = HttpClient::new(config.timeout);
    let bar = progress(
        config.devices.len() as u64 * u64::from(config.messages),
        config.quiet,
    );
    let mut rng = SplitMix::new(config.seed);
    let device_type_id = hex(&rng.bytes::<12>());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, device) in config.devices.iter().enumerate() {
        let (http, config, bar) = (http.clone(), config.clone(), bar.clone());
        let device = device.clone();
        let device_type_id = device_type_id.clone();
        let mut rng = SplitMix::new(config.seed ^ (index as u64 + 1).wrapping_mul(0x2545_f491));
        tasks.spawn(async move {
            let mut tally = Tally::new();
            let mut check = Check::default();
            let (mut log, mut received) = (Vec::new(), Vec::new());
            let mut pacer = Pacer::new(config.rate);
            let station = format!("{:04X}", rng.next_u64() & 0xffff);
            for k in 0..config.messages {
                pacer.tick().await;
                let seq_number = config.seq_start.wrapping_add(k);
                let bidir = config.bidir_every > 0 && (k + 1) % config.bidir_every == 0;
                let mut data = seq_number.to_be_bytes().to_vec();
                data.extend_from_slice(&rng.bytes::<8>());
                let cb = Callback {
                    device: device.clone(),
                    time: unix_secs(SystemTime::now()),
                    data: hex(&data),
                    seq_number,
                    device_type_id: device_type_id.clone(),
                    ack: bidir,
                    long_polling: false,
                    station: station.clone(),
                    rssi: -100.0 - (rng.next_u64() % 3000) as f64 / 100.0,
                    snr: (rng.next_u64() % 2000) as f64 / 100.0,
                };
                let body = cb.expand(if bidir {
                    &config.bidir_template
                } else {
                    &config.uplink_template
                });
                let topic = if config.expand_topic {
                    cb.expand(&config.topic)
                } else {
                    config.topic.clone()
                };
                let t0 = Instant::now();
                tally.sent();
                let result = http
                    .send(
                        Method::POST,
                        &config.url,
                        &[
                            ("x-secret", &config.secret),
                            ("x-topic", &topic),
                            ("content-type", "application/json"),
                        ],
                        Bytes::from(body.clone()),
                    )
                    .await;
                let answer = count(&mut tally, t0, result);
                let verdict = answer
                    .as_ref()
                    .filter(|a| (200..300).contains(&a.status))
                    .map(|a| check_answer(&device, bidir, a));
                match &verdict {
                    Some(Answer::Downlink(d)) => {
                        check.record(true, String::new);
                        received.push(json!({
                            "device": device, "seqNumber": seq_number, "downlinkData": d,
                        }));
                    }
                    Some(Answer::NoDownlink) => check.record(true, String::new),
                    Some(Answer::Invalid(why)) => {
                        check.record(false, || format!("{device} seq {seq_number}: {why}"));
                    }
                    None => {}
                }
                log.push(json!({
                    "device": device, "seqNumber": seq_number, "bidir": bidir, "x_topic": topic,
                    "body": body, "status": answer.as_ref().map(|a| a.status),
                }));
                bar.inc(1);
            }
            (index, tally, check, log, received)
        });
    }
    let mut results = tasks.join_all().await;
    results.sort_by_key(|r| r.0);
    bar.finish_and_clear();
    let (mut total, mut check) = (Tally::new(), Check::default());
    let (mut log, mut received) = (Vec::new(), Vec::new());
    for (_, tally, c, l, r) in results {
        total.merge(&tally);
        check.passed += c.passed;
        check.failed += c.failed;
        check.details.extend(c.details);
        log.extend(l);
        received.extend(r);
    }
    log.truncate(LOG_LIMIT);
    let mut report = Report::new(
        "sigfox",
        &config.url,
        started.elapsed(),
        &[("sigfox".to_owned(), total)],
    );
    report.checks.insert("downlink answers".to_owned(), check);
    report.log = log;
    report.received = received;
    report
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderMap;

    use super::*;

    fn callback() -> Callback {
        Callback {
            device: "2BEE81".into(),
            time: 1_741_948_013,
            data: "0e1b0064ff3a0b2201000000".into(),
            seq_number: 1288,
            device_type_id: "5e8c4b2f9e93c60a1f7d3a21".into(),
            ack: true,
            long_polling: false,
            station: "7C2A".into(),
            rssi: -119.5,
            snr: 12.34,
        }
    }

    /// The BIDIR template expanded with the fixture's values is the fixture's body.
    #[test]
    fn the_bidir_template_expands_to_the_fixture() {
        let body: Value = serde_json::from_str(&callback().expand(BIDIR_TEMPLATE)).unwrap();
        let fixture = json!({
            "device": "2BEE81", "time": 1741948013, "data": "0e1b0064ff3a0b2201000000",
            "seqNumber": 1288, "deviceTypeId": "5e8c4b2f9e93c60a1f7d3a21", "ack": true,
            "longPolling": false, "station": "7C2A", "rssi": -119.50
        });
        assert_eq!(body, fixture);
        let uplink: Value = serde_json::from_str(&callback().expand(UPLINK_TEMPLATE)).unwrap();
        assert_eq!(uplink["snr"], json!(12.34));
        assert!(uplink.get("ack").is_none());
    }

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn downlink_answers_are_checked_like_the_backend() {
        let cases: &[(&str, bool, u16, &str, Answer)] = &[
            ("2BEE81", true, 204, "", Answer::NoDownlink),
            (
                "2BEE81",
                true,
                200,
                r#"{"2BEE81":{"downlinkData":"01003c0000000a00"}}"#,
                Answer::Downlink("01003c0000000a00".into()),
            ),
            (
                "2BEE81",
                true,
                200,
                r#"{"2bee81":{"downlinkData":"01003c0000000a00"}}"#,
                Answer::Invalid(String::new()),
            ),
            (
                "2BEE81",
                true,
                200,
                r#"{"2BEE81":{"downlinkData":"01003c00"}}"#,
                Answer::Invalid(String::new()),
            ),
            (
                "2BEE81",
                true,
                200,
                "nonsense",
                Answer::Invalid(String::new()),
            ),
            (
                "2BEE81",
                false,
                200,
                r#"{"2BEE81":{"downlinkData":"01003c0000000a00"}}"#,
                Answer::Invalid(String::new()),
            ),
        ];
        for (device, bidir, status, body, want) in cases {
            let got = check_answer(device, *bidir, &answer(*status, body));
            match (want, &got) {
                (Answer::Invalid(_), Answer::Invalid(_)) => {}
                _ => assert_eq!(&got, want, "{body}"),
            }
        }
    }

    #[test]
    fn generated_devices_are_short_uppercase_hex() {
        let ids = generate_devices(5, 1);
        assert_eq!(ids.len(), 5);
        for id in ids {
            assert!(
                id.len() == 6
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()),
                "{id}"
            );
        }
    }
}
