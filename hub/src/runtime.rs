//! The control plane's [`Runtime`], implemented with the engine: every stored change of a hub
//! or device is applied to the running broker at once (live connections included).

use iothub_control::Runtime;
use iothub_control::records::{DeviceRecord, HubRecord};
use iothub_control::runtime::HubCounts;
use iothub_engine::{DeviceSpec, Engine, EngineError, HubSpec, RevokedSubscription};
use iothub_model::{DeviceId, HubId};
use tracing::{info, warn};

pub struct EngineRuntime {
    engine: Engine,
}

impl EngineRuntime {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
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
    }
}

impl Runtime for EngineRuntime {
    fn hub_upserted(&self, hub: &HubRecord) {
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
            certificate_fingerprint: None,
        };
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
    }

    fn hub_counts(&self, hub: HubId) -> HubCounts {
        HubCounts {
            connected_devices: self.engine.hub_connected_devices(hub),
        }
    }

    fn device_connected(&self, device: DeviceId) -> bool {
        self.engine.device_connected(device)
    }
}
