//! LoRaWAN downlinks pushed to the network server: a network created with a network server
//! (ChirpStack v4 REST API) gets one worker that POSTs each downlink, in the order they were
//! published, to `<url>/api/devices/<dev_eui>/queue` with the body of ChirpStack's
//! `EnqueueDeviceQueueItemRequest` (`{"queueItem": {"devEui", "confirmed", "fPort", "data"}}`)
//! and `Authorization: Bearer <token>`. A connection error, a timeout, a 429 or a 5xx is
//! retried with backoff ([`BACKOFF`]); another status is final. A downlink that is not
//! delivered raises a hub event and is dropped. The worker's queue is bounded
//! ([`MAX_PENDING_PUSHES`]): beyond it a downlink is dropped with an event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use iothub_engine::{EventKind, HubEvent};
use iothub_model::NetworkId;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::codec::Eui64;
use crate::{NetworkServer, NetworkSpec, Networks};

/// Waits before each retry: four attempts in all, over about 3.5 s.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_millis(800),
    Duration::from_millis(2400),
];

/// One attempt's limit (connection, request and answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Downlinks waiting for a network's worker; beyond this a downlink is dropped.
pub const MAX_PENDING_PUSHES: usize = 1000;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Push {
    dev_eui: Eui64,
    body: Value,
}

/// The push workers, one per network that has pushed a downlink.
#[derive(Default)]
pub(crate) struct Pushers {
    queues: Mutex<HashMap<NetworkId, mpsc::Sender<Push>>>,
}

impl Pushers {
    /// The worker ends once its queue is drained.
    pub(crate) fn forget_network(&self, network: NetworkId) {
        self.queues.lock().remove(&network);
    }
}

impl Networks {
    /// Hands a downlink to the network's push worker (started on the first one).
    pub(crate) fn push_downlink(
        &self,
        spec: &Arc<NetworkSpec>,
        server: &NetworkServer,
        dev_eui: Eui64,
        body: Value,
    ) {
        let sent = {
            let mut queues = self.inner.pushers.queues.lock();
            let sender = queues.entry(spec.id).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(MAX_PENDING_PUSHES);
                tokio::spawn(self.clone().run_pusher(spec.clone(), server.clone(), rx));
                tx
            });
            sender.try_send(Push { dev_eui, body })
        };
        if sent.is_err() {
            self.push_failed(
                spec,
                server,
                dev_eui,
                &format!("{MAX_PENDING_PUSHES} downlinks already wait for it"),
            );
        }
    }

    async fn run_pusher(
        self,
        spec: Arc<NetworkSpec>,
        server: NetworkServer,
        mut rx: mpsc::Receiver<Push>,
    ) {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        while let Some(push) = rx.recv().await {
            if !self.inner.directory.read().networks.contains_key(&spec.id) {
                // The network was deleted: what it had not sent yet goes with it.
                return;
            }
            let mut attempt = 0;
            let failure = loop {
                match post(&client, &server, &push).await {
                    Ok(()) => break None,
                    Err(Failure::Final(reason)) => break Some(reason),
                    Err(Failure::Retry(reason)) => match BACKOFF.get(attempt) {
                        Some(wait) => {
                            tracing::debug!(message = "retrying a downlink push", network = %spec.id, %reason);
                            attempt += 1;
                            tokio::time::sleep(*wait).await;
                        }
                        None => {
                            break Some(format!("{reason} (after {} attempts)", attempt + 1));
                        }
                    },
                }
            };
            if let Some(reason) = failure {
                self.push_failed(&spec, &server, push.dev_eui, &reason);
            }
        }
    }

    fn push_failed(&self, spec: &NetworkSpec, server: &NetworkServer, dev_eui: Eui64, why: &str) {
        tracing::warn!(message = "a downlink was not delivered to the network server", network = %spec.id, %dev_eui, reason = why);
        let event = HubEvent::about_hub(
            EventKind::RouteHttp,
            spec.hub,
            format!(
                "network {} ({}): downlink for {dev_eui} not delivered to the network server {}: {why}",
                spec.name, spec.id, server.url
            ),
        );
        self.inner.engine.raise_event(spec.hub, event);
    }
}

enum Failure {
    Retry(String),
    Final(String),
}

async fn post(client: &HttpClient, server: &NetworkServer, push: &Push) -> Result<(), Failure> {
    let uri = format!("{}/api/devices/{}/queue", server.url, push.dev_eui);
    let request = Request::post(&uri)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {}", server.token))
        .body(Full::new(Bytes::from(push.body.to_string())))
        .map_err(|e| Failure::Final(format!("invalid request to {uri}: {e}")))?;
    let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
        let response = client.request(request).await?;
        let status = response.status();
        // Read the answer so the connection can be reused.
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        Ok::<_, hyper_util::client::legacy::Error>((status, body))
    })
    .await;
    match answer {
        Err(_) => Err(Failure::Retry(format!(
            "no answer within {} s",
            ATTEMPT_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(Failure::Retry(format!("request failed: {e}"))),
        Ok(Ok((status, body))) if status.is_success() => {
            drop(body);
            Ok(())
        }
        Ok(Ok((status, body))) => {
            let text = body
                .ok()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned())
                .unwrap_or_default();
            let reason = format!("HTTP {status}: {text}");
            if status.is_server_error() || status.as_u16() == 429 {
                Err(Failure::Retry(reason))
            } else {
                Err(Failure::Final(reason))
            }
        }
    }
}
