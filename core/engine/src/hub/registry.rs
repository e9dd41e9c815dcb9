//! The sessions of one hub, indexed by client id and by device, behind the hub's
//! `sessions` mutex.

use std::collections::HashMap;
use std::sync::Arc;

use iothub_model::{ClientId, DeviceId};

use crate::state::{Owner, SessionState};

/// The sessions of one hub, by client id and by device.
#[derive(Default)]
pub(crate) struct Registry {
    pub(super) by_client: HashMap<ClientId, Arc<SessionState>>,
    /// Every session of each device: its own and, with multiple connections, the extra
    /// ones.
    pub(super) by_device: HashMap<DeviceId, Vec<Arc<SessionState>>>,
}

impl Registry {
    pub(super) fn get(&self, client: &ClientId) -> Option<&Arc<SessionState>> {
        self.by_client.get(client)
    }

    pub(super) fn insert(&mut self, state: Arc<SessionState>) {
        if let Owner::Device(device) = state.owner {
            self.by_device
                .entry(device)
                .or_default()
                .push(state.clone());
        }
        self.by_client.insert(state.client_id.clone(), state);
    }

    /// Removes `state` if it is the registered session of its client id.
    pub(super) fn remove(&mut self, state: &Arc<SessionState>) {
        if !self
            .by_client
            .get(&state.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, state))
        {
            return;
        }
        self.by_client.remove(&state.client_id);
        if let Owner::Device(device) = state.owner
            && let Some(list) = self.by_device.get_mut(&device)
        {
            list.retain(|s| !Arc::ptr_eq(s, state));
            if list.is_empty() {
                self.by_device.remove(&device);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_client.len()
    }

    pub(super) fn sessions(&self) -> impl Iterator<Item = &Arc<SessionState>> {
        self.by_client.values()
    }

    pub(super) fn of_device(&self, device: DeviceId) -> Vec<Arc<SessionState>> {
        self.by_device.get(&device).cloned().unwrap_or_default()
    }
}
