//! Live changes of a hub and of its devices, applied to sessions at once (connected ones
//! and those kept offline): kicks, ends, new filters. Each change takes the session
//! registry first, like CONNECT, so a CONNECT racing with a change is either seen by it or
//! sees it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use iothub_model::{DeviceId, Plan, SubscriptionFilter};

use super::{Hub, HubConfig};
use crate::engine::RevokedSubscription;
use crate::session::KickReason;
use crate::state::{Owner, SessionFilters, SessionState, SubEntry, SubOptions};
use crate::trie::SubTrie;

/// What a device change did: the subscriptions its new filters removed, and how many live
/// connections it closed (for the events the engine raises).
#[derive(Default)]
pub(crate) struct Applied {
    pub(crate) revoked: Vec<RevokedSubscription>,
    pub(crate) kicked: usize,
}

/// A live change of one device, as the engine applies it to the device's sessions.
pub(crate) enum DeviceChange {
    /// Removed, or moved to another hub: its sessions here end.
    End,
    Update {
        /// Kick connections admitted before `version` (disabled, security changed).
        kick: bool,
        /// New filters, for every session of the device.
        filters: Option<SessionFilters>,
        version: u64,
    },
}

impl Hub {
    /// Enables or disables the hub. Disabling kicks every live connection; CONNECT checks
    /// the flag under the session lock, so none slips in between.
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        if !enabled {
            self.kick_all(KickReason::AdministrativeAction);
        }
    }

    /// Applies a device's change to its sessions here. Returns the subscriptions removed
    /// because the new filters refuse them and the number of connections closed.
    pub(crate) fn apply_device(&self, device: DeviceId, change: DeviceChange) -> Applied {
        let now = self.now();
        let mut revoked = Vec::new();
        let mut ended = Vec::new();
        let mut kicked = 0;
        {
            let mut registry = self.sessions.lock();
            let states = registry.of_device(device);
            match change {
                DeviceChange::End => {
                    for state in &states {
                        kicked += usize::from(state.is_connected());
                        ended.push(self.end_session_locked(
                            &mut registry,
                            state,
                            Some(KickReason::AdministrativeAction),
                        ));
                    }
                }
                DeviceChange::Update {
                    kick,
                    filters,
                    version,
                } => {
                    if let Some(filters) = filters {
                        let mut subs = self.subs.write();
                        for state in &states {
                            self.refilter_locked(&mut subs, state, &filters, &mut revoked);
                        }
                    }
                    if kick {
                        for state in &states {
                            let inner = state.inner.lock();
                            if inner.admitted < version
                                && let Some(conn) = &inner.conn
                            {
                                conn.kick(KickReason::AdministrativeAction);
                                kicked += 1;
                            }
                        }
                    }
                }
            }
        }
        for e in ended {
            self.finish_ended(e, now);
        }
        self.update_gauges();
        Applied { revoked, kicked }
    }

    /// Gives `state` new filters (the caller holds the session registry and the trie):
    /// subscriptions the subscribe rule now refuses are removed (and reported), the others
    /// get the guard the new rule needs; queued messages the subscribe rule refuses are
    /// dropped; a will the publish rule refuses is discarded.
    fn refilter_locked(
        &self,
        subs: &mut SubTrie<SubEntry>,
        state: &Arc<SessionState>,
        filters: &SessionFilters,
        revoked: &mut Vec<RevokedSubscription>,
    ) {
        let mut inner = state.inner.lock();
        if inner.ended {
            return;
        }
        inner.filters = filters.clone();
        let current: Vec<(SubscriptionFilter, SubOptions)> = inner
            .subscriptions
            .iter()
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        for (filter, opts) in current {
            match filters.subscription_guard(&filter.filter) {
                Ok(guard) => {
                    let entry = SubEntry {
                        session: state.clone(),
                        opts,
                        guard,
                    };
                    subs.insert(&filter, state.client_id.clone(), entry);
                }
                Err(()) => {
                    subs.remove(&filter, &state.client_id);
                    inner.subscriptions.remove(&filter);
                    if inner.journaled {
                        let hub = self.id;
                        self.record(|| crate::journal::JournalOp::Unsubscribe {
                            hub,
                            client: state.client_id.clone(),
                            filter: filter.clone(),
                        });
                    }
                    revoked.push(RevokedSubscription {
                        hub: self.id,
                        device: match state.owner {
                            Owner::Device(d) => Some(d),
                            Owner::Anonymous | Owner::Route => None,
                        },
                        client_id: state.client_id.clone(),
                        filter,
                    });
                }
            }
        }
        if let Some(rule) = &filters.subscribe {
            let mut freed = 0;
            inner.queue.retain(|q| {
                let keep = rule.allows_topic(q.topic().as_str());
                if !keep {
                    freed += q.weight;
                    self.journal_unqueue(&state.client_id, q);
                }
                keep
            });
            inner.bytes -= freed;
            self.release(freed);
        }
        let will_refused = inner
            .will
            .as_ref()
            .is_some_and(|w| !filters.allows_publish(w.will.message.topic.as_str()));
        if will_refused {
            if let Some(w) = inner.will.take() {
                self.release(w.weight);
                if inner.journaled {
                    let hub = self.id;
                    self.record(|| crate::journal::JournalOp::WillCleared {
                        hub,
                        client: state.client_id.clone(),
                    });
                }
            }
            self.cancel([inner.will_timer.take()]);
        }
    }

    /// Replaces the hub's settings and applies the change to live sessions (see
    /// `Engine::update_hub`). Returns the subscriptions anonymous filters now refuse.
    pub(crate) fn reconfigure(
        &self,
        config: Arc<HubConfig>,
        enabled: bool,
    ) -> Vec<RevokedSubscription> {
        let old = std::mem::replace(&mut *self.config.write(), config.clone());
        self.set_hot_limits(&config.limits);
        let now = self.now();
        let plan_changed = old.plan != config.plan;
        // A new events prefix is a new reserved topic: connections learn it by reconnecting,
        // like new caps (each session checks the settings it was admitted under).
        let caps_changed = old.caps != config.caps || old.events_prefix != config.events_prefix;
        let end_all = plan_changed && config.plan == Plan::Shared;
        let end_anonymous = old.admits_anonymous() && !config.admits_anonymous();
        let refilter_anonymous = config.admits_anonymous()
            && (old.anonymous_filters != config.anonymous_filters || old.name != config.name);
        let mut revoked = Vec::new();
        let mut ended = Vec::new();
        {
            let mut registry = self.sessions.lock();
            let states: Vec<Arc<SessionState>> = registry.sessions().cloned().collect();
            let mut refilter = Vec::new();
            for state in states {
                let anonymous = state.owner == Owner::Anonymous;
                if end_all || (end_anonymous && anonymous) {
                    ended.push(self.end_session_locked(
                        &mut registry,
                        &state,
                        Some(KickReason::AdministrativeAction),
                    ));
                    continue;
                }
                if (plan_changed || caps_changed)
                    && let Some(conn) = &state.inner.lock().conn
                {
                    conn.kick(KickReason::AdministrativeAction);
                }
                if refilter_anonymous && anonymous {
                    match config.anonymous_filters_for(self.id, &state.client_id) {
                        Ok(filters) => {
                            if !filters.same_as(&state.inner.lock().filters) {
                                refilter.push((state, filters));
                            }
                        }
                        // The client id cannot fill the new templates: it could not
                        // connect now, so its session ends.
                        Err(_) => ended.push(self.end_session_locked(
                            &mut registry,
                            &state,
                            Some(KickReason::AdministrativeAction),
                        )),
                    }
                }
            }
            if !refilter.is_empty() {
                let mut subs = self.subs.write();
                for (state, filters) in refilter {
                    self.refilter_locked(&mut subs, &state, &filters, &mut revoked);
                }
            }
        }
        for e in ended {
            self.finish_ended(e, now);
        }
        if enabled != self.enabled.load(Ordering::Acquire) {
            self.set_enabled(enabled);
        }
        self.update_gauges();
        revoked
    }

    /// Whether `device` has a live connection here.
    pub(crate) fn device_connected(&self, device: DeviceId) -> bool {
        let registry = self.sessions.lock();
        registry
            .by_device
            .get(&device)
            .is_some_and(|list| list.iter().any(|s| s.is_connected()))
    }

    /// Devices with at least one live connection here.
    pub(crate) fn connected_devices(&self) -> u64 {
        let registry = self.sessions.lock();
        registry
            .by_device
            .values()
            .filter(|list| list.iter().any(|s| s.is_connected()))
            .count() as u64
    }
}
