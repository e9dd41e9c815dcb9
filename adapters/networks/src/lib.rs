//! Networks: device-unaware ingress over HTTP. A network of a hub (REST, SigFox or LoRaWAN)
//! authenticates with its own secret (`X-Secret`) and turns each accepted request into one
//! [`Message`] on the hub, under the network's topic prefix, with [`Origin::Network`].
//!
//! Layout: [`Networks`] is the directory the binary keeps current (networks, the state of
//! their hubs, LoRaWAN devices and their frame counters) and the state of the axum handlers
//! built by [`Networks::router`]; `rest.rs` and `sigfox.rs` are the reference's two networks,
//! `lorawan.rs` the LoRaWAN network (ChirpStack v4 and The Things Stack v3 integrations, and raw
//! PHYPayloads checked with the `lorawan` crate); `error.rs` maps every refusal to one status,
//! one JSON error and one hub event; `downlink.rs` keeps what the hub's clients published for
//! the networks to fetch (SigFox BIDIR answers, the ChirpStack enqueue queue).
//!
//! Every refusal answers a specific 4xx and publishes nothing. Endpoints, bodies and topics
//! are documented in the README's "Networks" section.
//!
//! This crate never names the control plane: the binary translates registry records into
//! [`NetworkSpec`], [`HubState`] and [`LorawanDevice`], and persists frame counters through
//! [`FrameCounterStore`].

mod codec;
mod downlink;
mod error;
mod lorawan;
mod push;
mod rest;
mod sigfox;
mod tap;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use bytes::Bytes;
use iothub_engine::{Engine, EventKind, HubEvent};
use iothub_model::{HubId, Message, MessageProperties, NetworkId, Origin, QoS, TopicName};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

pub use codec::{DevAddr, Eui64, Key128};
pub use downlink::DownlinkError;
pub use error::IngressError;

use downlink::Downlinks;

/// Largest request body read (above the 4 MiB payload limit, so the hub's own limit answers
/// with its JSON error; beyond this axum answers 413 itself).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The kind of network, which decides its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkKind {
    Rest,
    Sigfox,
    Lorawan,
}

impl NetworkKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Sigfox => "sigfox",
            Self::Lorawan => "lorawan",
        }
    }
}

/// A network as the registry stores it (the secret only as its hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub id: NetworkId,
    pub hub: HubId,
    pub name: String,
    pub kind: NetworkKind,
    pub topic_prefix: TopicName,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    /// LoRaWAN: the network server downlinks are pushed to (`None`: they wait for a poll).
    pub server: Option<NetworkServer>,
}

/// The network server (ChirpStack v4 REST API) a LoRaWAN network pushes its downlinks to:
/// `POST <url>/api/devices/<dev_eui>/queue` with `Authorization: Bearer <token>`.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkServer {
    /// `http://host[:port][/path]`, without a trailing `/`.
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for NetworkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkServer")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What ingress needs to know of a hub: the rules a client's PUBLISH would meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubState {
    pub id: HubId,
    pub enabled: bool,
    pub max_payload_bytes: u32,
    /// Topics under this prefix (and `$SYS`, `$SCW`) are the hub's own.
    pub events_prefix: TopicName,
}

/// ABP session keys of a LoRaWAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbpSession {
    pub dev_addr: DevAddr,
    pub nwk_s_key: Key128,
    pub app_s_key: Key128,
}

/// A LoRaWAN device registered in a network: an AppKey (join-requests are checked with it)
/// and/or ABP session keys (data frames are checked and decrypted with them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LorawanDevice {
    pub network: NetworkId,
    pub dev_eui: Eui64,
    pub join_eui: Option<Eui64>,
    pub app_key: Option<Key128>,
    pub session: Option<AbpSession>,
    /// The lowest 32-bit uplink frame counter still accepted (the last accepted + 1).
    pub f_cnt_up: u32,
    /// The DevNonces of accepted join-requests: a join-request reusing one is a replay.
    pub dev_nonces: HashSet<u16>,
}

/// A future of the frame counter store.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where accepted uplink frame counters and join DevNonces are kept, so a restart does not
/// reopen replays. The binary implements it with the registry.
pub trait FrameCounterStore: Send + Sync + 'static {
    /// `next` is the device's new `f_cnt_up`.
    fn save_f_cnt_up(&self, network: NetworkId, dev_eui: Eui64, next: u32) -> StoreFuture<'_>;
    /// The DevNonce of a join-request just accepted from the device.
    fn save_dev_nonce(&self, network: NetworkId, dev_eui: Eui64, dev_nonce: u16)
    -> StoreFuture<'_>;
}

/// A store that keeps nothing (tests of the directory alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFrameCounterStore;

impl FrameCounterStore for NoFrameCounterStore {
    fn save_f_cnt_up(&self, _: NetworkId, _: Eui64, _: u32) -> StoreFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    fn save_dev_nonce(&self, _: NetworkId, _: Eui64, _: u16) -> StoreFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, Default)]
struct LorawanDevices {
    by_eui: HashMap<Eui64, LorawanDevice>,
    by_addr: HashMap<DevAddr, Eui64>,
}

#[derive(Default)]
struct Directory {
    networks: HashMap<NetworkId, Arc<NetworkSpec>>,
    hubs: HashMap<HubId, HubState>,
}

/// The networks the hub serves: cheap to clone, every clone is the same directory.
#[derive(Clone)]
pub struct Networks {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    directory: RwLock<Directory>,
    /// One lock for every network's devices: a frame's MIC check and its counter update are
    /// one step, so two copies of a frame can never both pass.
    devices: Mutex<HashMap<NetworkId, LorawanDevices>>,
    counters: Arc<dyn FrameCounterStore>,
    downlinks: Downlinks,
    pushers: push::Pushers,
}

/// The endpoints [`Networks::router`] serves, as (method, path): the binary's test compares
/// them with the OpenAPI document (`control/openapi.json`, `x-served-by: networks`).
pub const ROUTES: [(&str, &str); 5] = [
    ("post", "/networks/{network_id}"),
    ("post", "/networks/{network_id}/chirpstack"),
    ("post", "/networks/{network_id}/tts"),
    ("post", "/networks/{network_id}/phy"),
    ("get", "/networks/{network_id}/downlinks"),
];

impl Networks {
    pub fn new(engine: Engine, counters: Arc<dyn FrameCounterStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                directory: RwLock::new(Directory::default()),
                devices: Mutex::new(HashMap::new()),
                counters,
                downlinks: Downlinks::default(),
                pushers: push::Pushers::default(),
            }),
        }
    }

    /// The HTTP endpoints of every network, to merge into the API router ([`ROUTES`]).
    pub fn router(&self) -> Router {
        let [ingress, chirpstack, tts, phy, downlinks] = ROUTES.map(|(_, path)| path);
        Router::new()
            .route(ingress, post(rest::rest_or_sigfox))
            .route(chirpstack, post(lorawan::chirpstack))
            .route(tts, post(lorawan::tts))
            .route(phy, post(lorawan::phy))
            .route(downlinks, get(lorawan::downlinks))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// A network was created (networks have no update).
    pub fn network_upserted(&self, spec: NetworkSpec) {
        self.inner
            .directory
            .write()
            .networks
            .insert(spec.id, Arc::new(spec));
    }

    /// A network was deleted: its endpoints answer 401, its devices and downlinks go.
    pub fn network_removed(&self, id: NetworkId) {
        self.inner.directory.write().networks.remove(&id);
        self.inner.devices.lock().remove(&id);
        self.inner.downlinks.forget_network(id);
        self.inner.pushers.forget_network(id);
    }

    /// A hub was created or changed.
    pub fn hub_upserted(&self, hub: HubState) {
        self.inner.directory.write().hubs.insert(hub.id, hub);
    }

    /// A hub was deleted (its networks were reported removed or are removed with it).
    pub fn hub_removed(&self, id: HubId) {
        let mut dir = self.inner.directory.write();
        dir.hubs.remove(&id);
        let gone: Vec<NetworkId> = dir
            .networks
            .values()
            .filter(|n| n.hub == id)
            .map(|n| n.id)
            .collect();
        drop(dir);
        for n in gone {
            self.network_removed(n);
        }
    }

    /// A LoRaWAN device was registered (or its keys or counter changed).
    pub fn lorawan_device_upserted(&self, device: LorawanDevice) {
        let mut all = self.inner.devices.lock();
        let devices = all.entry(device.network).or_default();
        if let Some(old) = devices.by_eui.remove(&device.dev_eui)
            && let Some(s) = old.session
        {
            devices.by_addr.remove(&s.dev_addr);
        }
        if let Some(s) = &device.session {
            devices.by_addr.insert(s.dev_addr, device.dev_eui);
        }
        devices.by_eui.insert(device.dev_eui, device);
    }

    /// A LoRaWAN device was deleted.
    pub fn lorawan_device_removed(&self, network: NetworkId, dev_eui: Eui64) {
        let mut all = self.inner.devices.lock();
        if let Some(devices) = all.get_mut(&network)
            && let Some(old) = devices.by_eui.remove(&dev_eui)
            && let Some(s) = old.session
        {
            devices.by_addr.remove(&s.dev_addr);
        }
    }

    /// A message a client published on the hub of `network` that may be a downlink for it
    /// (`<prefix>/<device>/down`): kept for the network server to fetch. `Ok(false)` when
    /// the topic is not a downlink topic of that network. A malformed downlink raises a hub
    /// event and is not kept.
    pub fn offer_downlink(
        &self,
        network: NetworkId,
        topic: &TopicName,
        payload: &[u8],
    ) -> Result<bool, DownlinkError> {
        let Some(spec) = self.inner.directory.read().networks.get(&network).cloned() else {
            return Ok(false);
        };
        let result = match &spec.server {
            Some(server) if spec.kind == NetworkKind::Lorawan => {
                downlink::lorawan_downlink(&spec, topic, payload).map(|item| match item {
                    Some((dev_eui, item)) => {
                        self.push_downlink(&spec, server, dev_eui, item);
                        true
                    }
                    None => false,
                })
            }
            _ => self.inner.downlinks.offer(&spec, topic, payload),
        };
        if let Err(e) = &result {
            let event = HubEvent::about_hub(
                EventKind::ProtocolError,
                spec.hub,
                format!("network {} ({}): {e}", spec.name, spec.id),
            );
            self.inner.engine.raise_event(spec.hub, event);
        }
        result
    }

    /// The networks of `hub` with downlinks (SigFox and LoRaWAN): the binary subscribes to
    /// `<prefix>/+/down` of each.
    pub fn downlink_networks(&self, hub: HubId) -> Vec<(NetworkId, TopicName)> {
        self.inner
            .directory
            .read()
            .networks
            .values()
            .filter(|n| n.hub == hub && n.kind != NetworkKind::Rest)
            .map(|n| (n.id, n.topic_prefix.clone()))
            .collect()
    }

    /// The network with `id` if `secret` is its secret. A missing network and a wrong
    /// secret are the same refusal; the hub of a known network hears of it.
    fn authenticate(
        &self,
        id: &str,
        secret: Option<&str>,
    ) -> Result<Arc<NetworkSpec>, IngressError> {
        let spec = id
            .parse::<NetworkId>()
            .ok()
            .and_then(|id| self.inner.directory.read().networks.get(&id).cloned());
        let Some(spec) = spec else {
            iothub_engine::count_unattributed(EventKind::ProtocolError);
            return Err(IngressError::Unauthorized);
        };
        let ok = secret.is_some_and(|s| hash_secret(s) == spec.secret_hash);
        if ok {
            Ok(spec)
        } else {
            Err(self.refuse(&spec, IngressError::Unauthorized))
        }
    }

    /// Raises the hub event of a refusal and hands the refusal back.
    fn refuse(&self, spec: &NetworkSpec, error: IngressError) -> IngressError {
        let event = HubEvent::about_hub(
            error.event_kind(),
            spec.hub,
            format!("network {} ({}): {error}", spec.name, spec.id),
        );
        self.inner.engine.raise_event(spec.hub, event);
        error
    }

    /// `<prefix>/<suffix>` as a topic name, or the refusal.
    fn topic(&self, spec: &NetworkSpec, suffix: &str) -> Result<TopicName, IngressError> {
        let full = format!("{}/{suffix}", spec.topic_prefix.as_str());
        TopicName::new(&full).map_err(|e| IngressError::InvalidTopic(format!("{full:?}: {e}")))
    }

    /// Publishes `payload` on `topic` of the network's hub with a client's rules: the hub
    /// enabled, the payload within its limit, the topic not reserved. Returns once the engine
    /// has routed it.
    fn publish(
        &self,
        spec: &NetworkSpec,
        topic: TopicName,
        payload: Bytes,
    ) -> Result<(), IngressError> {
        let hub = self.inner.directory.read().hubs.get(&spec.hub).cloned();
        let Some(hub) = hub.filter(|h| h.enabled) else {
            return Err(IngressError::HubDisabled);
        };
        if payload.len() > hub.max_payload_bytes as usize {
            return Err(IngressError::PayloadTooLarge {
                size: payload.len(),
                max: hub.max_payload_bytes,
            });
        }
        if reserved(&topic, &hub.events_prefix) {
            return Err(IngressError::ReservedTopic(topic.as_str().to_owned()));
        }
        let message = Message {
            topic,
            payload,
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            origin: Origin::Network(spec.id),
        };
        self.inner
            .engine
            .publish(spec.hub, message)
            .map(|_| ())
            .map_err(|_| IngressError::HubDisabled)
    }
}

/// `$SYS/..`, `$SCW/..` and the hub's events prefix are written by the hub only.
fn reserved(topic: &TopicName, events_prefix: &TopicName) -> bool {
    let first = topic.levels().next().unwrap_or_default();
    if first == "$SYS" || first == "$SCW" {
        return true;
    }
    topic
        .as_str()
        .strip_prefix(events_prefix.as_str())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The registry's hash of a secret (lowercase hex SHA-256).
pub fn hash_secret(secret: &str) -> String {
    codec::hex_lower(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_topics() {
        let prefix = TopicName::new("$SCW/events").unwrap();
        let custom = TopicName::new("alerts").unwrap();
        let cases = [
            ("$SYS/broker", &prefix, true),
            ("$SCW/events/error", &prefix, true),
            ("$SCW/twins", &prefix, true),
            ("rest/a", &prefix, false),
            ("alerts", &custom, true),
            ("alerts/x", &custom, true),
            ("alertsx", &custom, false),
        ];
        for (topic, events, want) in cases {
            let t = TopicName::new(topic).unwrap();
            assert_eq!(reserved(&t, events), want, "{topic}");
        }
    }

    #[test]
    fn network_server_tokens_stay_out_of_logs() {
        let server = NetworkServer {
            url: "http://ns:8090".into(),
            token: "very-secret-token".into(),
        };
        let shown = format!("{server:?}");
        assert!(shown.contains("http://ns:8090"), "{shown}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
    }

    #[test]
    fn secret_hash_is_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
