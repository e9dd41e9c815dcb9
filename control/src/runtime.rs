//! What the registry tells the running broker. The binary implements [`Runtime`] with the
//! engine; this crate never names the engine, so the control plane can be tested (and
//! reused) without a broker. Calls are synchronous and must be cheap: the engine queues
//! the change and applies it on its own task.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};

use iothub_model::{DeviceId, HubId, NetworkId};

use crate::records::{DeviceRecord, HubRecord, LorawanDeviceRecord, NetworkRecord};

/// Why the broker refuses a route's configuration: shown as a 400 naming `field` (e.g.
/// `rest_config.uri`, or `wasm_config.component` for a component that is not of the route
/// world).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRefusal {
    pub field: String,
    pub reason: String,
}

/// What [`Runtime::check_route`] returns.
pub type RouteCheck<'a> = Pin<Box<dyn Future<Output = Result<(), RouteRefusal>> + Send + 'a>>;

/// Live figures of a hub that only the broker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubCounts {
    pub connected_devices: u64,
}

/// Runtime effects of registry changes. Each call comes after the change is stored, so
/// the runtime never runs ahead of the database.
pub trait Runtime: Send + Sync + 'static {
    /// A hub was created, enabled or disabled, or its plan, limits or flags changed. The
    /// record says the whole new state (`enabled` decides whether devices are admitted).
    fn hub_upserted(&self, hub: &HubRecord);
    /// A hub was deleted (its devices were reported removed before).
    fn hub_removed(&self, hub: HubId);
    /// A device was created, enabled or disabled, its filters or flags changed, or it moved
    /// to another hub (`device.hub_id` is the new one).
    fn device_upserted(&self, device: &DeviceRecord);
    /// A device was deleted: its live connections must be closed.
    fn device_removed(&self, device: DeviceId);
    /// For the API's `connected_device_count`.
    fn hub_counts(&self, hub: HubId) -> HubCounts;
    /// For the API's `is_connected`.
    fn device_connected(&self, device: DeviceId) -> bool;
    /// A hub's CA is new or changed: made at hub creation (or on first need, for hubs older
    /// than certificates), or replaced by a custom CA. New TLS handshakes trust
    /// `ca_cert_pem` for this hub (and no other). With `custom`, a device presents its
    /// full chain and is the device whose *name* is the certificate's CN (or is
    /// auto-provisioned); otherwise the CN is the device *id* and the certificate's
    /// fingerprint must be the device's `certificate_fingerprint`. The binary loads the
    /// CAs at start with `Registry::all_hub_cas`.
    fn hub_ca_upserted(&self, _hub: HubId, _ca_cert_pem: &str, _custom: bool) {}
    /// The hub was deleted: its CA opens no more sessions.
    fn hub_ca_removed(&self, _hub: HubId) {}
    /// Before a route is stored (create, update): whether the broker can run it, e.g. the
    /// built-in component's `init` accepts the config, an uploaded component is of the
    /// route world. The default accepts everything.
    fn check_route<'a>(&'a self, _route: &'a crate::records::RouteRecord) -> RouteCheck<'a> {
        Box::pin(async { Ok(()) })
    }
    /// A route was created or changed: it (re)starts delivering with its new config; its
    /// durable queue is kept. The binary loads the stored ones at start with
    /// `Registry::all_routes`.
    fn route_upserted(&self, _route: &crate::records::RouteRecord) {}
    /// A route was deleted: it stops and its queue is deleted. Routes of a deleted hub go
    /// with `hub_removed`.
    fn route_removed(&self, _route: iothub_model::RouteId) {}
    /// A network was created (networks have no update): its endpoints accept its secret.
    /// The binary loads the stored ones at start with `Registry::all_networks`.
    fn network_upserted(&self, _network: &NetworkRecord) {}
    /// A network was deleted (with its LoRaWAN devices): its endpoints refuse everything.
    /// Networks of a deleted hub go with `hub_removed`.
    fn network_removed(&self, _network: NetworkId) {}
    /// A LoRaWAN device was registered in a network (`Registry::all_lorawan_devices` at
    /// start).
    fn lorawan_device_upserted(&self, _device: &LorawanDeviceRecord) {}
    /// A LoRaWAN device was deleted (`dev_eui`: lowercase hex).
    fn lorawan_device_removed(&self, _network: NetworkId, _dev_eui: &str) {}
}

/// A runtime that does nothing: for tools and tests that only need the records.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopRuntime;

impl Runtime for NoopRuntime {
    fn hub_upserted(&self, _hub: &HubRecord) {}
    fn hub_removed(&self, _hub: HubId) {}
    fn device_upserted(&self, _device: &DeviceRecord) {}
    fn device_removed(&self, _device: DeviceId) {}
    fn hub_counts(&self, _hub: HubId) -> HubCounts {
        HubCounts::default()
    }
    fn device_connected(&self, _device: DeviceId) -> bool {
        false
    }
}

/// One CA call the registry made, as [`RecordingRuntime`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCall {
    Upserted {
        hub: HubId,
        ca_cert_pem: String,
        custom: bool,
    },
    Removed(HubId),
}

/// One call the registry made, as [`RecordingRuntime`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCall {
    HubUpserted(HubRecord),
    HubRemoved(HubId),
    DeviceUpserted(DeviceRecord),
    DeviceRemoved(DeviceId),
}

/// A runtime that records every call, and answers `device_connected` from a set the test
/// controls: the mock beside the trait, for tests of the registry. CA calls are kept in
/// a log of their own ([`RecordingRuntime::take_ca_calls`]), so tests of hub and device
/// lifecycles see the same calls whether or not certificates are involved.
#[derive(Debug, Default)]
pub struct RecordingRuntime {
    calls: Mutex<Vec<RuntimeCall>>,
    ca_calls: Mutex<Vec<CaCall>>,
    connected: Mutex<HashSet<(HubId, DeviceId)>>,
}

/// A poisoned lock only means a test thread panicked while holding it; the data is still
/// what was recorded.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RecordingRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the calls recorded so far.
    pub fn take_calls(&self) -> Vec<RuntimeCall> {
        std::mem::take(&mut *lock(&self.calls))
    }

    /// Takes the CA calls recorded so far.
    pub fn take_ca_calls(&self) -> Vec<CaCall> {
        std::mem::take(&mut *lock(&self.ca_calls))
    }

    /// Pretends a device of `hub` is (or is no longer) connected.
    pub fn set_connected(&self, hub: HubId, device: DeviceId, connected: bool) {
        let mut set = lock(&self.connected);
        if connected {
            set.insert((hub, device));
        } else {
            set.remove(&(hub, device));
        }
    }

    fn push(&self, call: RuntimeCall) {
        lock(&self.calls).push(call);
    }
}

impl Runtime for RecordingRuntime {
    fn hub_upserted(&self, hub: &HubRecord) {
        self.push(RuntimeCall::HubUpserted(hub.clone()));
    }
    fn hub_removed(&self, hub: HubId) {
        self.push(RuntimeCall::HubRemoved(hub));
    }
    fn device_upserted(&self, device: &DeviceRecord) {
        self.push(RuntimeCall::DeviceUpserted(device.clone()));
    }
    fn device_removed(&self, device: DeviceId) {
        lock(&self.connected).retain(|(_, d)| *d != device);
        self.push(RuntimeCall::DeviceRemoved(device));
    }
    fn hub_counts(&self, hub: HubId) -> HubCounts {
        let connected_devices = lock(&self.connected)
            .iter()
            .filter(|(h, _)| *h == hub)
            .count() as u64;
        HubCounts { connected_devices }
    }
    fn device_connected(&self, device: DeviceId) -> bool {
        lock(&self.connected).iter().any(|(_, d)| *d == device)
    }
    fn hub_ca_upserted(&self, hub: HubId, ca_cert_pem: &str, custom: bool) {
        lock(&self.ca_calls).push(CaCall::Upserted {
            hub,
            ca_cert_pem: ca_cert_pem.to_owned(),
            custom,
        });
    }
    fn hub_ca_removed(&self, hub: HubId) {
        lock(&self.ca_calls).push(CaCall::Removed(hub));
    }
}
