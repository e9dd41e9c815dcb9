//! The downlink tap of a SigFox or LoRaWAN network: an internal session of its hub (the
//! engine's route tap, client id `$route/network/<network-id>`) subscribed at QoS 0 to
//! `<prefix>/+/down`; each message is offered to the network's downlinks. The task follows
//! the hub: while the hub is disabled or unknown it retries every second, and it ends when
//! the network is removed. Each connection is a new session (no `resume`): a downlink
//! published while the hub was disabled is not kept.

use std::time::Duration;

use iothub_engine::{Outgoing, RetainHandling, Session, SubscribeRequest};
use iothub_model::{NetworkId, QoS, SubscriptionFilter};
use tracing::{debug, warn};

use crate::{NetworkSpec, Networks};

const RETRY: Duration = Duration::from_secs(1);

impl Networks {
    /// Starts the downlink tap of `network` (a no-op for REST networks and unknown ones). The
    /// first subscription is made before this returns (when the hub is enabled), so a downlink
    /// published once the network exists is not missed.
    pub fn spawn_downlink_tap(&self, network: NetworkId) {
        let Some(spec) = self.inner.directory.read().networks.get(&network).cloned() else {
            return;
        };
        if spec.kind == crate::NetworkKind::Rest {
            return;
        }
        let filter = format!("{}/+/down", spec.topic_prefix.as_str());
        let filter = match SubscriptionFilter::parse(&filter) {
            Ok(f) => f,
            Err(e) => {
                warn!(message = "no downlinks for this network: its filter is invalid", network = %spec.id, %e);
                return;
            }
        };
        let mut session = self.open_tap(&spec, &filter);
        let networks = self.clone();
        tokio::spawn(async move {
            while networks.is_current(&spec) {
                let Some(tap) = session.take().or_else(|| networks.open_tap(&spec, &filter)) else {
                    tokio::time::sleep(RETRY).await;
                    continue;
                };
                networks.run_tap(&spec, &tap).await;
            }
        });
    }

    /// Connects the tap and subscribes it; `None` while the hub is disabled or unknown.
    fn open_tap(&self, spec: &NetworkSpec, filter: &SubscriptionFilter) -> Option<Session> {
        let name = format!("network/{}", spec.id);
        let connected = match self.inner.engine.connect_route(spec.hub, &name, 64, false) {
            Ok(c) => c,
            Err(e) => {
                debug!(message = "downlink tap waits for its hub", network = %spec.id, %e);
                return None;
            }
        };
        let session = connected.session;
        let granted = session.subscribe(&[SubscribeRequest {
            filter: filter.clone(),
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
            subscription_id: None,
        }]);
        if granted.iter().any(Result::is_err) {
            warn!(message = "the downlink tap's subscription was refused", network = %spec.id, ?granted);
            return None;
        }
        Some(session)
    }

    /// Hands the tap's messages to the network until the tap is kicked or the network goes.
    async fn run_tap(&self, spec: &NetworkSpec, session: &Session) {
        let mut out = Vec::new();
        while self.is_current(spec) {
            tokio::select! {
                () = session.ready() => {}
                () = tokio::time::sleep(RETRY) => continue,
            }
            out.clear();
            session.poll_outgoing(&mut out, 64);
            for item in out.drain(..) {
                match item {
                    Outgoing::Publish(p) => {
                        if let Some(id) = p.packet_id {
                            session.acknowledge(id);
                        }
                        // A malformed downlink raised its hub event already.
                        let _ = self.offer_downlink(spec.id, &p.message.topic, &p.message.payload);
                    }
                    Outgoing::PubRel(_) => {}
                    Outgoing::Disconnect(_) => return,
                }
            }
        }
    }

    /// Whether `spec` is still the network the directory holds.
    fn is_current(&self, spec: &NetworkSpec) -> bool {
        self.inner
            .directory
            .read()
            .networks
            .get(&spec.id)
            .is_some_and(|n| **n == *spec)
    }
}
