//! The device fleet: N devices created through the management API (`X-Auth-Token`), spread
//! round robin over the transports asked for, each connecting as itself (client id = device
//! id; over TLS, wss and QUIC with the certificate and key the API answered, i.e. mutual TLS;
//! over TCP and ws as an `allow_insecure` device) and publishing its messages at its rate.
//!
//! At QoS 1 a message is accepted when its PUBACK carries a success code (latency = PUBLISH
//! to PUBACK) and refused otherwise; at QoS 0 there is no answer, so a message counts as
//! accepted once written. The summary has one line per transport.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use iothub_model::{ClientId, TopicName};
use iothub_mqtt_codec::{ProtocolVersion, QoS};
use serde_json::json;
use tokio::time::Instant;

use crate::client::{ClientOptions, Event, Outgoing};
use crate::http::{CreatedDevice, ManagementApi};
use crate::summary::{Check, LOG_LIMIT, Report, Tally, progress};
use crate::transport::{ClientIdentity, Listeners, Transport, connect};
use crate::util::Pacer;

/// A fleet run.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The hub to create the devices in; `None` creates a hub named `hub_name`.
    pub hub_id: Option<String>,
    pub hub_name: String,
    pub devices: u32,
    /// Transports, assigned round robin (device i uses `transports[i % len]`).
    pub transports: Vec<Transport>,
    pub listeners: Listeners,
    /// Messages per device.
    pub messages: u32,
    /// Messages per second per device; 0 = back to back.
    pub rate: f64,
    pub qos: QoS,
    pub version: ProtocolVersion,
    /// Topic of each message, with `{transport}`, `{device}` (its name) and `{seq}` replaced.
    pub topic: String,
    /// A prefix of the devices' names (each gets `-<index>`).
    pub name_prefix: String,
    /// Delete the devices at the end.
    pub cleanup: bool,
    pub timeout: Duration,
    pub quiet: bool,
}

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no transport given")]
    NoTransport,
    #[error(transparent)]
    Api(#[from] crate::http::HttpError),
}

fn expand(template: &str, transport: Transport, device: &str, seq: u32) -> String {
    template
        .replace("{transport}", transport.name())
        .replace("{device}", device)
        .replace("{seq}", &seq.to_string())
}

/// The payload of a device's `seq`-th message.
#[must_use]
pub fn payload(device: &str, transport: Transport, seq: u32) -> String {
    json!({ "device": device, "transport": transport.name(), "seq": seq }).to_string()
}

/// Creates the devices, runs them and reports (deleting them at the end with `cleanup`).
pub async fn run(api: &ManagementApi, mut config: FleetConfig) -> Result<Report, FleetError> {
    if config.transports.is_empty() {
        return Err(FleetError::NoTransport);
    }
    let hub_id = match &config.hub_id {
        Some(id) => id.clone(),
        None => api.create_hub(&config.hub_name).await?,
    };
    if config.listeners.server_ca_pem.is_none()
        && config.transports.iter().any(|t| t.uses_certificate())
    {
        config.listeners.server_ca_pem = Some(api.server_ca().await?);
    }
    let mut devices = Vec::new();
    for i in 0..config.devices {
        let transport = config.transports[i as usize % config.transports.len()];
        let name = format!("{}-{i}", config.name_prefix);
        let device = api
            .create_device(&hub_id, &name, !transport.uses_certificate())
            .await?;
        devices.push((transport, device));
    }
    let bar = progress(
        u64::from(config.devices) * u64::from(config.messages),
        config.quiet,
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (transport, device)) in devices.iter().cloned().enumerate() {
        let (config, bar) = (config.clone(), bar.clone());
        tasks.spawn(async move {
            let r = run_device(&config, transport, &device, &bar).await;
            (index, transport, r)
        });
    }
    let mut results = tasks.join_all().await;
    results.sort_by_key(|r| r.0);
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let mut groups: BTreeMap<Transport, Tally> = BTreeMap::new();
    let mut connections: BTreeMap<Transport, Check> = BTreeMap::new();
    let mut log = Vec::new();
    for (_, transport, r) in results {
        groups.entry(transport).or_default().merge(&r.tally);
        let check = connections.entry(transport).or_default();
        check.record(r.connect_error.is_none(), || {
            r.connect_error.clone().unwrap_or_default()
        });
        log.extend(r.log);
    }
    log.truncate(LOG_LIMIT);
    if config.cleanup {
        for (_, device) in &devices {
            // Best effort: a device left behind is reported, not fatal.
            if let Err(e) = api.delete_device(&device.id).await {
                tracing::warn!(message = "cannot delete a fleet device", device = %device.id, error = %e);
            }
        }
    }
    let groups: Vec<(String, Tally)> = groups
        .into_iter()
        .map(|(t, tally)| (t.name().to_owned(), tally))
        .collect();
    let mut report = Report::new("fleet", &format!("hub {hub_id}"), elapsed, &groups);
    for (transport, check) in connections {
        report
            .checks
            .insert(format!("{} connections", transport.name()), check);
    }
    report.log = log;
    Ok(report)
}

struct DeviceRun {
    tally: Tally,
    connect_error: Option<String>,
    log: Vec<serde_json::Value>,
}

async fn run_device(
    config: &FleetConfig,
    transport: Transport,
    device: &CreatedDevice,
    bar: &indicatif::ProgressBar,
) -> DeviceRun {
    let mut run = DeviceRun {
        tally: Tally::new(),
        connect_error: None,
        log: Vec::new(),
    };
    let client_id = match ClientId::new(&device.id) {
        Ok(id) => id,
        Err(e) => {
            run.connect_error = Some(format!(
                "{}: device id is not a client id: {e}",
                device.name
            ));
            return run;
        }
    };
    let mut options = ClientOptions::new(client_id);
    options.version = config.version;
    options.inflight = 1;
    options.connect_timeout = config.timeout;
    let identity = transport.uses_certificate().then(|| ClientIdentity {
        cert_pem: device.cert_pem.clone(),
        key_pem: device.key_pem.clone(),
    });
    let mut client = match connect(transport, &config.listeners, identity.as_ref(), &options).await
    {
        Ok(c) => c,
        Err(e) => {
            run.connect_error = Some(format!("{} over {transport}: {e}", device.name));
            bar.inc(u64::from(config.messages));
            return run;
        }
    };
    let mut pacer = Pacer::new(config.rate);
    for seq in 0..config.messages {
        pacer.tick().await;
        let topic_text = expand(&config.topic, transport, &device.name, seq);
        let body = payload(&device.name, transport, seq);
        let mut entry = json!({
            "device": device.name, "device_id": device.id, "transport": transport.name(),
            "topic": topic_text, "payload": body, "seq": seq,
        });
        let topic = match TopicName::new(&topic_text) {
            Ok(t) => t,
            Err(e) => {
                run.tally
                    .failed(format!("invalid topic {topic_text:?}: {e}"));
                break;
            }
        };
        let mut template = Outgoing::new(&topic, config.qos, false);
        run.tally.sent();
        let t0 = Instant::now();
        let outcome = publish_one(
            &mut client,
            &mut template,
            Bytes::from(body),
            config.timeout,
        )
        .await;
        match &outcome {
            Ok(None) => run.tally.accepted(t0.elapsed()),
            Ok(Some(reason)) => run.tally.refused(reason.clone()),
            Err(e) => run.tally.failed(e.clone()),
        }
        entry["outcome"] = json!(match &outcome {
            Ok(None) => "accepted".to_owned(),
            Ok(Some(r)) => r.clone(),
            Err(e) => e.clone(),
        });
        run.log.push(entry);
        bar.inc(1);
        if outcome.is_err() {
            bar.inc(u64::from(config.messages - seq - 1));
            return run;
        }
    }
    if let Err(e) = client.disconnect().await {
        tracing::debug!(message = "disconnect failed", device = %device.id, error = %e);
    }
    run
}

/// Publishes one message and, at QoS 1/2, waits for its acknowledgement. `Ok(None)`:
/// accepted; `Ok(Some(reason))`: refused by the broker; `Err`: the connection failed.
async fn publish_one(
    client: &mut crate::transport::AnyClient,
    template: &mut Outgoing,
    payload: Bytes,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let id = client
        .publish(template, payload)
        .map_err(|e| e.to_string())?;
    let Some(id) = id else {
        client.flush().await.map_err(|e| e.to_string())?;
        return Ok(None);
    };
    let wait = async {
        loop {
            match client.next_event().await {
                Ok(Event::Acked { packet_id, reason }) if packet_id == id => {
                    return Ok(if reason.is_error() {
                        Some(format!("reason code {:#04x}", reason.0))
                    } else {
                        None
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| format!("no acknowledgement within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_payloads_name_device_transport_and_sequence() {
        assert_eq!(
            expand(
                "fleet/{transport}/{device}/{seq}",
                Transport::Quic,
                "d-1",
                3
            ),
            "fleet/quic/d-1/3"
        );
        let p: serde_json::Value =
            serde_json::from_str(&payload("d-1", Transport::Wss, 2)).unwrap();
        assert_eq!(p, json!({"device": "d-1", "transport": "wss", "seq": 2}));
    }
}
