//! The control plane's [`Runtime`], implemented with the engine and the TLS listeners'
//! trust: every stored change of a hub, a device or a certificate is applied to the running
//! broker at once (live connections included), and new TLS handshakes trust the hubs' CAs
//! and the devices' pinned certificates as they are now. [`RegistryProvisioner`] creates
//! devices on first connection for hubs that auto-provision them. Networks, the state of
//! their hubs and LoRaWAN devices go to the network ingress ([`Networks`]), whose frame
//! counters are saved through [`RegistryFrameCounters`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock, Weak};

use iothub_adapter_mqtt::tls::{ProvisionError, ProvisionFuture, Provisioner};
use iothub_adapter_mqtt::tls_trust::TlsTrust;
use iothub_control::records::RouteRecord;
use iothub_control::records::{
    DeviceRecord, HubRecord, LorawanDeviceRecord, NetworkRecord, NetworkType,
};
use iothub_control::runtime::{HubCounts, RouteCheck};
use iothub_control::{Registry, Runtime};
use iothub_engine::{
    CertificateFingerprint, DeviceSpec, Engine, EngineError, HubSpec, RevokedSubscription,
    default_events_topic_prefix,
};
use iothub_model::{DeviceId, HubId, NetworkId, RouteId, TopicName};
use iothub_networks::{
    AbpSession, Eui64, FrameCounterStore, HubState, LorawanDevice, NetworkKind, NetworkServer,
    NetworkSpec, Networks, StoreFuture,
};
use tracing::{info, warn};

use crate::routes::RouteRuntime;

pub struct EngineRuntime {
    engine: Engine,
    /// The TLS listeners' trust, when there are TLS-based listeners.
    trust: Option<Arc<TlsTrust>>,
    /// Hubs that create devices on first connection (custom CA, auto-provisioning on,
    /// enabled), so a certificate of a hub that does not is refused without asking the
    /// database.
    auto_provisioning: RwLock<HashSet<HubId>>,
    /// The network ingress (REST, SigFox, LoRaWAN endpoints).
    networks: Networks,
    /// The routes (set once at start, before the registry loads them).
    routes: OnceLock<Arc<RouteRuntime>>,
}

impl EngineRuntime {
    pub fn new(
        engine: Engine,
        trust: Option<Arc<TlsTrust>>,
        counters: Arc<RegistryFrameCounters>,
    ) -> Self {
        Self {
            networks: Networks::new(engine.clone(), counters),
            engine,
            trust,
            auto_provisioning: RwLock::new(HashSet::new()),
            routes: OnceLock::new(),
        }
    }

    /// The network ingress, whose router the API port serves.
    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    /// Routes run from now on (call before the registry loads them).
    pub fn set_routes(&self, routes: Arc<RouteRuntime>) {
        if self.routes.set(routes).is_err() {
            warn!("the route runtime was set twice; keeping the first");
        }
    }

    fn auto_provisions(&self, hub: HubId) -> bool {
        self.auto_provisioning
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&hub)
    }

    fn set_auto_provisioning(&self, hub: HubId, on: bool) {
        let mut set = self
            .auto_provisioning
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if on {
            set.insert(hub);
        } else {
            set.remove(&hub);
        }
    }

    fn log_revoked(&self, revoked: &[RevokedSubscription]) {
        for r in revoked {
            info!(
                message = "subscription removed: no longer allowed by the message filters",
                ?r
            );
        }
    }
}

fn hub_spec(hub: &HubRecord) -> HubSpec {
    HubSpec {
        id: hub.id,
        name: hub.name.clone(),
        plan: hub.plan,
        limits: hub.limits.clone(),
        allow_anonymous: hub.allow_anonymous,
        anonymous_filters: Default::default(),
        enabled: hub.enabled,
        events_enabled: !hub.disable_events,
        events_topic_prefix: events_topic_prefix(hub),
    }
}

/// The hub's events prefix as a topic. The registry validates it as one; a stored value
/// that is not (edited by hand) is logged and the default used.
fn events_topic_prefix(hub: &HubRecord) -> TopicName {
    TopicName::new(&hub.events_topic_prefix).unwrap_or_else(|e| {
        warn!(message = "ignoring an events topic prefix that is not a topic; using the default", hub = %hub.id, prefix = %hub.events_topic_prefix, %e);
        default_events_topic_prefix()
    })
}

/// The device's current certificate, as the engine compares it. The registry stores
/// lowercase hex; anything else is logged and treated as no certificate (the device then
/// cannot connect with one until the record is fixed).
fn certificate_fingerprint(device: &DeviceRecord) -> Option<CertificateFingerprint> {
    let hex = device.certificate_fingerprint.as_deref()?;
    match hex.parse() {
        Ok(fp) => Some(fp),
        Err(e) => {
            warn!(message = "ignoring a device certificate fingerprint", device = %device.id, %e);
            None
        }
    }
}

/// The LoRaWAN frame counters, saved in the registry. The registry is opened after the
/// runtime it drives, so it is set once it exists; it is held weakly (the registry holds
/// the runtime).
#[derive(Default)]
pub struct RegistryFrameCounters {
    registry: OnceLock<Weak<Registry>>,
}

impl RegistryFrameCounters {
    pub fn set_registry(&self, registry: &Arc<Registry>) {
        let _ = self.registry.set(Arc::downgrade(registry));
    }
}

impl FrameCounterStore for RegistryFrameCounters {
    fn save_f_cnt_up(&self, network: NetworkId, dev_eui: Eui64, next: u32) -> StoreFuture<'_> {
        Box::pin(async move {
            let registry = self
                .registry
                .get()
                .and_then(Weak::upgrade)
                .ok_or("the registry is not open")?;
            registry
                .save_lorawan_f_cnt_up(network, &dev_eui.to_string(), next)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn save_dev_nonce(
        &self,
        network: NetworkId,
        dev_eui: Eui64,
        dev_nonce: u16,
    ) -> StoreFuture<'_> {
        Box::pin(async move {
            let registry = self
                .registry
                .get()
                .and_then(Weak::upgrade)
                .ok_or("the registry is not open")?;
            registry
                .add_lorawan_dev_nonce(network, &dev_eui.to_string(), dev_nonce)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

fn network_spec(network: &NetworkRecord) -> Option<NetworkSpec> {
    let topic_prefix = match TopicName::new(&network.topic_prefix) {
        Ok(t) => t,
        Err(e) => {
            warn!(message = "ignoring a network whose topic prefix is not a topic", network = %network.id, %e);
            return None;
        }
    };
    Some(NetworkSpec {
        id: network.id,
        hub: network.hub_id,
        name: network.name.clone(),
        kind: match network.network_type {
            NetworkType::Rest => NetworkKind::Rest,
            NetworkType::Sigfox => NetworkKind::Sigfox,
            NetworkType::Lorawan => NetworkKind::Lorawan,
        },
        topic_prefix,
        secret_hash: network.secret_hash.clone(),
        server: match (&network.ns_url, &network.ns_token) {
            (Some(url), Some(token)) => Some(NetworkServer {
                url: url.clone(),
                token: token.clone(),
            }),
            _ => None,
        },
    })
}

/// The registry validated every field as hex of the right length; a stored value that is
/// not (edited by hand) is logged and the device left out.
fn lorawan_device(d: &LorawanDeviceRecord) -> Result<LorawanDevice, String> {
    fn opt<T: std::str::FromStr>(field: &str, v: &Option<String>) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        v.as_deref()
            .map(|v| v.parse().map_err(|e| format!("{field}: {e}")))
            .transpose()
    }
    let session = match (
        opt("dev_addr", &d.dev_addr)?,
        opt("nwk_s_key", &d.nwk_s_key)?,
        opt("app_s_key", &d.app_s_key)?,
    ) {
        (Some(dev_addr), Some(nwk_s_key), Some(app_s_key)) => Some(AbpSession {
            dev_addr,
            nwk_s_key,
            app_s_key,
        }),
        _ => None,
    };
    Ok(LorawanDevice {
        network: d.network_id,
        dev_eui: d.dev_eui.parse().map_err(|e| format!("dev_eui: {e}"))?,
        join_eui: opt("join_eui", &d.join_eui)?,
        app_key: opt("app_key", &d.app_key)?,
        session,
        f_cnt_up: d.f_cnt_up,
        dev_nonces: d.dev_nonces.iter().copied().collect(),
    })
}

impl Runtime for EngineRuntime {
    fn hub_upserted(&self, hub: &HubRecord) {
        self.networks.hub_upserted(HubState {
            id: hub.id,
            enabled: hub.enabled,
            max_payload_bytes: hub.limits.max_payload_bytes,
            events_prefix: events_topic_prefix(hub),
        });
        self.set_auto_provisioning(
            hub.id,
            hub.has_custom_ca && hub.enable_device_auto_provisioning && hub.enabled,
        );
        let spec = hub_spec(hub);
        let result = match self.engine.create_hub(spec.clone()) {
            Err(EngineError::HubExists(_)) => self.engine.update_hub(spec).map(|revoked| {
                self.log_revoked(&revoked);
            }),
            other => other,
        };
        if let Err(e) = result {
            warn!(message = "cannot apply a hub change to the engine", hub = %hub.id, %e);
        }
    }

    fn hub_removed(&self, hub: HubId) {
        self.networks.hub_removed(hub);
        if let Some(routes) = self.routes.get() {
            routes.remove_hub(hub);
        }
        self.set_auto_provisioning(hub, false);
        if let Err(e) = self.engine.remove_hub(hub) {
            warn!(message = "cannot remove a hub from the engine", %hub, %e);
        }
    }

    fn device_upserted(&self, device: &DeviceRecord) {
        let spec = DeviceSpec {
            id: device.id,
            hub: device.hub_id,
            name: device.name.clone(),
            enabled: device.enabled(),
            allow_insecure: device.allow_insecure,
            allow_multiple_connections: device.allow_multiple_connections,
            filters: device.message_filters.clone(),
            certificate_fingerprint: certificate_fingerprint(device),
        };
        // Pinned before the engine learns the device: a handshake with the new certificate
        // then finds a device that accepts it.
        if let Some(trust) = &self.trust {
            let pinned = spec
                .certificate_fingerprint
                .filter(|_| device.has_custom_certificate);
            trust.pin_device(device.id, device.hub_id, pinned);
        }
        match self.engine.upsert_device(spec) {
            Ok(revoked) => self.log_revoked(&revoked),
            Err(e) => {
                warn!(message = "cannot apply a device change to the engine", device = %device.id, %e)
            }
        }
    }

    fn device_removed(&self, device: DeviceId) {
        if let Err(e) = self.engine.remove_device(device) {
            warn!(message = "cannot remove a device from the engine", %device, %e);
        }
        if let Some(trust) = &self.trust {
            trust.remove_device(device);
        }
    }

    fn hub_ca_upserted(&self, hub: HubId, ca_cert_pem: &str, custom: bool) {
        if let Some(trust) = &self.trust
            && let Err(e) = trust.set_hub_ca(hub, ca_cert_pem, custom)
        {
            warn!(message = "cannot trust a hub CA; its devices cannot use certificates", %hub, %e);
        }
    }

    fn hub_ca_removed(&self, hub: HubId) {
        if let Some(trust) = &self.trust {
            trust.remove_hub_ca(hub);
        }
    }

    fn network_upserted(&self, network: &NetworkRecord) {
        if let Some(spec) = network_spec(network) {
            self.networks.network_upserted(spec);
            self.networks.spawn_downlink_tap(network.id);
        }
    }

    fn network_removed(&self, network: NetworkId) {
        self.networks.network_removed(network);
    }

    fn lorawan_device_upserted(&self, device: &LorawanDeviceRecord) {
        match lorawan_device(device) {
            Ok(d) => self.networks.lorawan_device_upserted(d),
            Err(e) => {
                warn!(message = "ignoring a LoRaWAN device with a malformed field", network = %device.network_id, dev_eui = %device.dev_eui, %e)
            }
        }
    }

    fn lorawan_device_removed(&self, network: NetworkId, dev_eui: &str) {
        match dev_eui.parse() {
            Ok(eui) => self.networks.lorawan_device_removed(network, eui),
            Err(e) => warn!(message = "cannot remove a LoRaWAN device", %network, %dev_eui, %e),
        }
    }

    fn hub_counts(&self, hub: HubId) -> HubCounts {
        HubCounts {
            connected_devices: self.engine.hub_connected_devices(hub),
        }
    }

    fn device_connected(&self, device: DeviceId) -> bool {
        self.engine.device_connected(device)
    }

    fn check_route<'a>(&'a self, route: &'a RouteRecord) -> RouteCheck<'a> {
        Box::pin(async move {
            match self.routes.get() {
                Some(routes) => routes.check(route).await,
                None => Ok(()),
            }
        })
    }

    fn route_upserted(&self, route: &RouteRecord) {
        if let Some(routes) = self.routes.get() {
            routes.upsert(route);
        }
    }

    fn route_removed(&self, route: RouteId) {
        if let Some(routes) = self.routes.get() {
            routes.remove(route);
        }
    }
}

/// Auto-provisioning through the registry: an unknown CN of a hub that auto-provisions
/// devices becomes a device (`Registry::auto_provision`, which also pushes it into the
/// engine), then connects.
pub struct RegistryProvisioner {
    pub registry: Arc<Registry>,
    pub runtime: Arc<EngineRuntime>,
}

impl Provisioner for RegistryProvisioner {
    fn provision<'a>(
        &'a self,
        hub: HubId,
        common_name: &'a str,
        peer: SocketAddr,
    ) -> ProvisionFuture<'a> {
        Box::pin(async move {
            if !self.runtime.auto_provisions(hub) {
                return Ok(None);
            }
            match self
                .registry
                .auto_provision(hub, common_name, peer.ip())
                .await
            {
                Ok(device) => Ok(Some(device.id)),
                Err(e) => Err(ProvisionError(e.to_string())),
            }
        })
    }
}
