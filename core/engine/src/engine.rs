//! The [`Engine`]: the registry of hubs and the entry point of every connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iothub_model::{
    ClientId, DeviceId, FilterError, HubId, HubLimits, Message, MessageFilters, Plan, QoS,
    SubscriptionFilter, TopicName,
};
use parking_lot::{Mutex, RwLock};

use crate::certificate::CertificateProof;
use crate::clock::{Clock, SystemClock};
use crate::directory::{Credentials, DeviceEntry, DeviceSpec, Directory};
use crate::events::{EventCounts, EventKind, EventOutcome, HubEvent};
use crate::hub::{DeviceChange, Hub, HubActivity, HubConfig};
use crate::journal::{Journal, RestoreStats, RestoredHub};
use crate::route_tap::Admit;
use crate::session::{KickReason, Session};

/// How the engine is built. Only the clock today; tests pass a `ManualClock`.
#[derive(Clone)]
pub struct EngineConfig {
    pub clock: Arc<dyn Clock>,
    /// Where durable changes go (see `crate::journal`); `None`: the engine keeps
    /// everything in memory only.
    pub journal: Option<Arc<dyn Journal>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            journal: None,
        }
    }
}

/// What the control plane knows about a hub when it asks the engine to serve it
/// ([`Engine::create_hub`]) or changes it ([`Engine::update_hub`]).
#[derive(Debug, Clone)]
pub struct HubSpec {
    pub id: HubId,
    pub name: String,
    pub plan: Plan,
    pub limits: HubLimits,
    /// Whether clients that are not a registered device may join this hub (always refused
    /// on the shared plan).
    pub allow_anonymous: bool,
    /// The message filters of anonymous clients. `{{ device.id }}` and `{{ device.name }}`
    /// stand for the client's id there (expanded at CONNECT; a client id holding '/', '+'
    /// or '#' is then refused with `ClientIdInvalid`).
    pub anonymous_filters: MessageFilters,
    /// A disabled hub refuses CONNECT with `HubDisabled`.
    pub enabled: bool,
    /// Whether the hub publishes hub events (the registry's `!disable_events`).
    pub events_enabled: bool,
    /// Where: `<prefix>/<severity>/<object-type>/<object-id>`; clients may not publish
    /// under it. Default [`crate::DEFAULT_EVENTS_TOPIC_PREFIX`].
    pub events_topic_prefix: TopicName,
}

/// Administration failures (hubs and devices).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("hub {0} already exists")]
    HubExists(HubId),
    #[error("hub {0} does not exist")]
    UnknownHub(HubId),
    #[error("device {0} does not exist")]
    UnknownDevice(DeviceId),
    #[error("invalid message filters: {0}")]
    InvalidFilters(#[from] FilterError),
}

/// A subscription removed by a live change of message filters (it is no longer allowed),
/// for the caller's log; the engine raises its "unauthorized topic" hub event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSubscription {
    pub hub: HubId,
    /// The device, or `None` for an anonymous client.
    pub device: Option<DeviceId>,
    pub client_id: ClientId,
    pub filter: SubscriptionFilter,
}

/// What a hub offers its clients, derived from its plan and limits. The adapter announces
/// these in CONNACK (MQTT 5) and the engine enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubCaps {
    /// Highest QoS a client may PUBLISH with (MQTT 5 Maximum QoS).
    pub maximum_qos: QoS,
    pub retain_available: bool,
    pub wildcard_available: bool,
    pub shared_available: bool,
    pub subscription_ids_available: bool,
    /// Incoming QoS 2 messages a client may leave unreleased (the hub's Receive Maximum).
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_payload_bytes: u32,
    /// Longest keep-alive granted; a longer one is lowered (MQTT 5 Server Keep Alive).
    pub max_keep_alive_secs: u16,
}

/// Messages dropped by the engine, by reason (the `reason` label of
/// `iothub_messages_dropped_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedCounts {
    /// A session's queue bound was reached.
    pub queue_full: u64,
    /// The hub's byte budget was exhausted.
    pub hub_budget: u64,
    /// The message expiry interval elapsed before delivery started.
    pub expired: u64,
    /// A message spilled to the store could not be read back.
    pub unreadable: u64,
}

/// A snapshot of one hub, for tests, metrics and `$SYS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Sessions that exist (connected or kept for a later reconnect).
    pub sessions: usize,
    /// Sessions with a live connection.
    pub connected: usize,
    /// Subscriptions of all sessions, shared ones included.
    pub subscriptions: usize,
    pub retained_messages: usize,
    /// Weight ([`Message::weight`]) of the retained messages.
    pub retained_bytes: u64,
    /// Messages waiting in the sessions' queues, not yet sent.
    pub queued_messages: usize,
    /// QoS 1/2 messages sent and not yet acknowledged (PUBACK, PUBREC/PUBCOMP).
    pub inflight_messages: usize,
    /// Bytes of retained, queued, inflight and will messages counted against the budget.
    pub budget_used_bytes: u64,
    pub dropped: DroppedCounts,
}

/// Who is connecting, as [`Engine::resolve_client`] decided it; the engine applies the
/// hub's and the device's rules to it again at [`Engine::connect_as`], under the hub's
/// session lock, so a concurrent live change is never missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A client that is not a registered device: its own client id is its session.
    Anonymous,
    /// A registered device: its session's client id is the device id, whatever client id
    /// the client sent (with `certificate`, that must be the device id or empty).
    Device {
        id: DeviceId,
        /// How the client's verified certificate named this device; checked again at
        /// [`Engine::connect_as`] (a registered certificate must still be the device's
        /// current one). Without one, the device must allow insecure connections.
        certificate: Option<CertificateProof>,
    },
}

/// A will message and its MQTT 5 Will Delay Interval (0 for MQTT 3.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub message: Message,
    pub delay_secs: u32,
}

/// A CONNECT, as far as the engine cares.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub hub: HubId,
    /// `None` = the client sent an empty client id: the engine assigns a unique one.
    pub client_id: Option<ClientId>,
    /// MQTT 3.1.1 Clean Session / MQTT 5 Clean Start.
    pub clean_start: bool,
    /// 0 = the session ends with the connection; `u32::MAX` = never (clamped to
    /// `limits.max_session_expiry_secs`). MQTT 3.1.1: clean session 1 -> 0, 0 -> `u32::MAX`.
    pub session_expiry_secs: u32,
    /// The client's Receive Maximum (65535 when absent): caps our outbound QoS 1/2 inflight.
    pub receive_maximum: u16,
    pub will: Option<Will>,
}

/// A successful CONNECT: the session handle and what CONNACK must say.
pub struct Connected {
    pub session: Session,
    pub session_present: bool,
    /// The client id in use (assigned or the requested one).
    pub client_id: ClientId,
    /// Whether the engine assigned `client_id` (MQTT 5 Assigned Client Identifier).
    pub assigned: bool,
    /// The session expiry interval granted.
    pub session_expiry_secs: u32,
    pub caps: HubCaps,
}

/// Why a CONNECT is refused. Each maps to one CONNACK reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no such hub")]
    UnknownHub,
    #[error("the hub is disabled")]
    HubDisabled,
    #[error("the client id is not valid for this client")]
    ClientIdInvalid,
    #[error("not authorized")]
    NotAuthorized,
    #[error("the device is disabled")]
    DeviceDisabled,
    #[error("the device requires mutual TLS (it does not allow insecure connections)")]
    MutualTlsRequired,
    #[error("the certificate is not the device's current one (renewed, replaced or removed)")]
    CertificateNotCurrent,
    #[error("the certificate was issued by another hub's CA than the device's")]
    CertificateOtherHub,
    #[error("the hub's plan requires a clean session")]
    CleanStartRequired,
    #[error("the hub's budget cannot hold the will message")]
    QuotaExceeded,
    #[error("the will message's QoS is not supported by the hub")]
    QosNotSupported,
    #[error("the hub does not support retained messages (will retain)")]
    RetainNotSupported,
    #[error("the will payload is larger than the hub accepts")]
    PayloadTooLarge,
}

impl ConnectError {
    /// A short name for metric labels (`iothub_auth_refusals_total{reason}`) and logs.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::UnknownHub => "unknown_hub",
            Self::HubDisabled => "hub_disabled",
            Self::ClientIdInvalid => "client_id_invalid",
            Self::NotAuthorized => "not_authorized",
            Self::DeviceDisabled => "device_disabled",
            Self::MutualTlsRequired => "mutual_tls_required",
            Self::CertificateNotCurrent => "certificate_not_current",
            Self::CertificateOtherHub => "certificate_other_hub",
            Self::CleanStartRequired => "clean_start_required",
            Self::QuotaExceeded => "quota_exceeded",
            Self::QosNotSupported => "qos_not_supported",
            Self::RetainNotSupported => "retain_not_supported",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }
}

/// The broker. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    clock: Arc<dyn Clock>,
    journal: Option<Arc<dyn Journal>>,
    /// Journal message and entry ids, shared by every hub.
    ids: Arc<AtomicU64>,
    /// Serialises administration (hubs and devices), so live changes reach sessions in the
    /// order they were made. Never taken on a client's path; first in the lock order.
    admin: Mutex<()>,
    /// The hub registry, held only to find or change hubs.
    hubs: RwLock<Hubs>,
    /// The device directory, shared with every hub: the registry pushes devices in, CONNECT
    /// reads them.
    devices: Arc<Directory>,
    /// Version of the next device record (see `Inner::admitted`).
    device_version: AtomicU64,
}

/// The hubs being served. Names are not keys: two accounts may each have a hub called
/// "prod" (the registry scopes names by account), and ids are what everything refers to.
#[derive(Default)]
struct Hubs {
    by_id: HashMap<HubId, Arc<Hub>>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            inner: Arc::new(EngineInner {
                clock: config.clock,
                journal: config.journal,
                ids: Arc::new(AtomicU64::new(1)),
                admin: Mutex::new(()),
                hubs: RwLock::new(Hubs::default()),
                devices: Arc::new(Directory::default()),
                device_version: AtomicU64::new(1),
            }),
        }
    }

    pub(crate) fn hub(&self, id: HubId) -> Option<Arc<Hub>> {
        self.inner.hubs.read().by_id.get(&id).cloned()
    }

    #[cfg(test)]
    pub(crate) fn inner_hub_for_tests(&self, id: HubId) -> Arc<Hub> {
        self.hub(id).unwrap()
    }

    fn all_hubs(&self) -> Vec<Arc<Hub>> {
        self.inner.hubs.read().by_id.values().cloned().collect()
    }

    // ---- hubs ---------------------------------------------------------------------------

    /// Starts serving a hub. Ids are unique; the anonymous filters must expand.
    pub fn create_hub(&self, spec: HubSpec) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock();
        let config = HubConfig::new(&spec)?;
        let mut hubs = self.inner.hubs.write();
        if hubs.by_id.contains_key(&spec.id) {
            return Err(EngineError::HubExists(spec.id));
        }
        let id = spec.id;
        let hub = Arc::new(Hub::new(
            id,
            config,
            spec.enabled,
            self.inner.clock.clone(),
            self.inner.devices.clone(),
            self.inner.journal.clone(),
            self.inner.ids.clone(),
        ));
        hub.update_gauges();
        hubs.by_id.insert(id, hub);
        tracing::debug!(message = "hub created", hub_id = %id);
        Ok(())
    }

    /// Changes a hub, with immediate effect on its live connections:
    /// - `enabled` off: connections kicked (`AdministrativeAction`), sessions kept, CONNECT
    ///   refused with `HubDisabled`; on: admitted again;
    /// - a plan change: every connection is kicked so it reconnects under the new caps (the
    ///   reference raises "plan changed"); moving to the shared plan also ends every
    ///   session, since that plan keeps none;
    /// - limits: budget and queue bounds apply at once; when the caps announced in CONNACK
    ///   (or the keep-alive maximum) change, connections are kicked to learn them;
    /// - anonymous clients no longer admitted (`allow_anonymous` off, or the shared plan):
    ///   their sessions end;
    /// - anonymous filters, or a new name that templates use: applied like a device's
    ///   filter change (see [`Engine::upsert_device`]).
    ///
    /// Refused, with nothing changed, for an unknown hub or filters
    /// (the hub's or, after a rename, its devices') that do not expand.
    pub fn update_hub(&self, spec: HubSpec) -> Result<Vec<RevokedSubscription>, EngineError> {
        let _admin = self.inner.admin.lock();
        let hub = self.hub(spec.id).ok_or(EngineError::UnknownHub(spec.id))?;
        let config = HubConfig::new(&spec)?;
        let old_name = hub.config().name.clone();
        let renamed = old_name != spec.name;
        // Devices whose filters change with the name, re-expanded before anything changes.
        let mut reexpanded: Vec<(DeviceId, DeviceEntry)> = Vec::new();
        if renamed {
            let devices = self.inner.devices.read();
            for (id, entry) in devices.iter().filter(|(_, e)| e.hub == spec.id) {
                let fresh = entry.renamed(*id, &spec.name, self.next_device_version())?;
                if !fresh.filters.same_as(&entry.filters) {
                    reexpanded.push((*id, fresh));
                }
            }
        }
        let old_plan = hub.config().plan;
        let mut revoked = hub.reconfigure(config, spec.enabled);
        for (id, entry) in reexpanded {
            let filters = entry.filters.clone();
            let version = entry.version;
            self.inner.devices.write().insert(id, Arc::new(entry));
            revoked.extend(
                hub.apply_device(
                    id,
                    DeviceChange::Update {
                        kick: false,
                        filters: Some(filters),
                        version,
                    },
                )
                .revoked,
            );
        }
        if old_plan != spec.plan {
            hub.raise(HubEvent::about_hub(
                EventKind::PlanChanged,
                spec.id,
                "hub product plan has changed",
            ));
        }
        raise_revoked(&hub, &revoked);
        Ok(revoked)
    }

    /// Removes a hub: its sessions are kicked with `KickReason::AdministrativeAction` and
    /// everything it holds (sessions, subscriptions, retained messages, wills) is freed.
    /// Wills are not published: there is no hub left to publish them to. Devices still
    /// registered in it can no longer connect (remove them too).
    pub fn remove_hub(&self, id: HubId) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock();
        let hub = {
            let mut hubs = self.inner.hubs.write();
            hubs.by_id.remove(&id).ok_or(EngineError::UnknownHub(id))?
        };
        hub.enabled.store(false, Ordering::Release);
        hub.remove_all(KickReason::AdministrativeAction);
        tracing::debug!(message = "hub removed", hub_id = %id);
        Ok(())
    }

    /// Enables or disables a hub. Disabling kicks its live connections with
    /// `KickReason::AdministrativeAction` (sessions stay); a disabled hub refuses CONNECT
    /// with `HubDisabled`.
    pub fn set_hub_enabled(&self, id: HubId, enabled: bool) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock();
        let hub = self.hub(id).ok_or(EngineError::UnknownHub(id))?;
        hub.set_enabled(enabled);
        Ok(())
    }

    // ---- devices ------------------------------------------------------------------------

    fn next_device_version(&self) -> u64 {
        self.inner.device_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a device, or changes one, with immediate effect on its sessions (connected
    /// or kept offline):
    /// - disabled: its connections are kicked (`AdministrativeAction`, MQTT 5 DISCONNECT
    ///   0x98), its sessions kept; CONNECT refused with `DeviceDisabled`;
    /// - moved to another hub: its sessions in the old hub end (kicked the same way); the
    ///   next CONNECT joins the new hub;
    /// - `allow_insecure` or `allow_multiple_connections` turned off, or its registered
    ///   certificate changed (renewed, replaced, removed): its connections are kicked so
    ///   each reconnects under the new rule (the reference's "device security changed"; a
    ///   connection that used the old certificate cannot come back with it);
    /// - message filters changed: each session takes the new filters at once; its
    ///   subscriptions are re-checked and those no longer allowed removed (returned, for an
    ///   event), queued messages the new subscribe rule refuses are dropped, and a will the
    ///   new publish rule refuses is discarded.
    ///
    /// Refused, with nothing changed, when the hub is unknown or the filters do not expand.
    pub fn upsert_device(&self, spec: DeviceSpec) -> Result<Vec<RevokedSubscription>, EngineError> {
        let _admin = self.inner.admin.lock();
        let hub = self
            .hub(spec.hub)
            .ok_or(EngineError::UnknownHub(spec.hub))?;
        let hub_name = hub.config().name.clone();
        let id = spec.id;
        let entry = DeviceEntry::new(spec, &hub_name, self.next_device_version())?;
        let change = entry.clone();
        let old = self.inner.devices.write().insert(id, Arc::new(entry));
        let Some(old) = old else {
            return Ok(Vec::new());
        };
        if old.hub != change.hub {
            if let Some(old_hub) = self.hub(old.hub)
                && old_hub.apply_device(id, DeviceChange::End).kicked > 0
            {
                old_hub.raise(HubEvent::about_device(
                    EventKind::DeviceDeleted,
                    id,
                    "device is deleted (moved to another hub)",
                ));
            }
            return Ok(Vec::new());
        }
        let kick = (old.enabled && !change.enabled)
            || (old.allow_insecure && !change.allow_insecure)
            || (old.allow_multiple_connections && !change.allow_multiple_connections)
            || old.certificate_fingerprint != change.certificate_fingerprint;
        let filters = (!old.filters.same_as(&change.filters)).then(|| change.filters.clone());
        if !kick && filters.is_none() {
            return Ok(Vec::new());
        }
        let applied = hub.apply_device(
            id,
            DeviceChange::Update {
                kick,
                filters,
                version: change.version,
            },
        );
        if applied.kicked > 0 {
            let (kind, msg) = if old.enabled && !change.enabled {
                (EventKind::DeviceDisabled, "device is not enabled")
            } else {
                (
                    EventKind::DeviceSecurityChanged,
                    "device security has changed, requires authentication",
                )
            };
            hub.raise(HubEvent::about_device(kind, id, msg));
        }
        raise_revoked(&hub, &applied.revoked);
        Ok(applied.revoked)
    }

    /// Unregisters a device: its sessions end (live connections kicked with
    /// `AdministrativeAction`) and its CONNECTs are no longer recognised.
    pub fn remove_device(&self, id: DeviceId) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock();
        let old = self
            .inner
            .devices
            .write()
            .remove(&id)
            .ok_or(EngineError::UnknownDevice(id))?;
        if let Some(hub) = self.hub(old.hub)
            && hub.apply_device(id, DeviceChange::End).kicked > 0
        {
            hub.raise(HubEvent::about_device(
                EventKind::DeviceDeleted,
                id,
                "device is deleted",
            ));
        }
        Ok(())
    }

    /// The device of `hub` with this name: hubs with their own CA name devices by the
    /// common name of their certificates.
    pub fn device_by_name(&self, hub: HubId, name: &str) -> Option<DeviceId> {
        self.inner.devices.read().by_name(hub, name)
    }

    /// Whether the device has at least one live connection (the API's `is_connected`).
    pub fn device_connected(&self, id: DeviceId) -> bool {
        let hub = self.inner.devices.read().get(&id).map(|e| e.hub);
        hub.and_then(|h| self.hub(h))
            .is_some_and(|hub| hub.device_connected(id))
    }

    /// Devices of the hub with at least one live connection (the API's
    /// `connected_device_count`); 0 for an unknown hub.
    pub fn hub_connected_devices(&self, hub: HubId) -> u64 {
        self.hub(hub).map_or(0, |h| h.connected_devices())
    }

    /// Decides who a CONNECT is and which hub it joins (DESIGN.md, identity), in order:
    /// 1. a verified client certificate names the device (TLS listeners fill
    ///    `credentials.certificate`); the device must be in the hub whose CA verified the
    ///    chain (`CertificateOtherHub`), a registered certificate must be its current one
    ///    (`CertificateNotCurrent`), and the client id must be the device id or empty (or
    ///    the device's name, when its hub's own CA names it);
    /// 2. the client id is the id of a registered device;
    /// 3. the username is the id of a registered device and the password is empty;
    /// 4. the username is the id of a hub that admits anonymous clients: the client joins
    ///    that hub anonymously (the convention for reaching a hub other than the
    ///    listener's; a hub that does not admit them refuses);
    /// 5. the listener's anonymous hub, if it has one.
    ///
    /// A device found in steps 1–3 must be enabled (`DeviceDisabled`) and, without a
    /// certificate, allow insecure connections (`MutualTlsRequired`). Anything else is
    /// `NotAuthorized`. Costs one read-locked map lookup in the usual cases and allocates
    /// nothing.
    pub fn resolve_client(
        &self,
        listener_anonymous_hub: Option<HubId>,
        credentials: &Credentials<'_>,
    ) -> Result<(HubId, Identity), ConnectError> {
        if let Some(found) = crate::directory::resolve(&self.inner.devices, credentials) {
            return found;
        }
        if let Some(hub) = credentials.username.and_then(crate::directory::parse_uuid) {
            let hub = HubId::from_uuid(hub);
            if let Some(h) = self.hub(hub) {
                return if h.config().admits_anonymous() {
                    Ok((hub, Identity::Anonymous))
                } else {
                    Err(ConnectError::NotAuthorized)
                };
            }
        }
        listener_anonymous_hub
            .map(|hub| (hub, Identity::Anonymous))
            .ok_or(ConnectError::NotAuthorized)
    }

    /// Whom a CONNECT that [`Engine::resolve_client`] refused was about, for its hub event:
    /// the hub and device its certificate, client id or username name (a device of another
    /// hub than its certificate's is the device's hub's), or a hub named by the username;
    /// `None` when it names nothing the engine knows (the event is then only counted).
    /// Only for the refusal path: it repeats the lookups.
    pub fn refusal_subject(
        &self,
        credentials: &Credentials<'_>,
    ) -> Option<(HubId, Option<DeviceId>)> {
        if let Some(found) = crate::directory::subject(&self.inner.devices, credentials) {
            return Some(found);
        }
        let hub = HubId::from_uuid(
            credentials
                .username
                .and_then(crate::directory::parse_uuid)?,
        );
        self.hub(hub).map(|_| (hub, None))
    }

    /// Raises a hub event on `hub` (see the `events` module): published on the hub's
    /// events topic unless the hub has events off or the event's kind is over its rate.
    /// Never call it while holding a lock of the engine (nothing outside the crate can).
    pub fn raise_event(&self, hub: HubId, event: HubEvent) -> EventOutcome {
        match self.hub(hub) {
            Some(h) => h.raise(event),
            None => {
                crate::events::count_unattributed(event.kind);
                EventOutcome::UnknownHub
            }
        }
    }

    /// Events the hub published and dropped (rate limited) so far.
    pub fn event_counts(&self, hub: HubId) -> Option<EventCounts> {
        self.hub(hub).map(|h| h.events.counts())
    }

    // ---- clients ------------------------------------------------------------------------

    /// An anonymous client connects (`connect_as(Identity::Anonymous, ..)`).
    pub fn connect(&self, req: ConnectRequest) -> Result<Connected, ConnectError> {
        self.connect_as(Identity::Anonymous, req)
    }

    /// A client connects, usually as [`Engine::resolve_client`] decided.
    ///
    /// Anonymous clients need a hub with `allow_anonymous` and not on the shared plan, and
    /// get the hub's anonymous filters. A device must be registered in `req.hub`, enabled,
    /// and allow insecure connections unless it presented its certificate; its session's
    /// client id is the device id (`assigned` when the client sent another or none).
    /// With `allow_multiple_connections` (not on the shared plan), a connection arriving
    /// while the device's session is connected gets its own session, client id
    /// `<device-id>.<n>`, that ends with the connection; the first connection keeps the
    /// device's (possibly persistent) session and none kicks another. Without it, the new
    /// connection takes the session over (the old one gets `SessionTakenOver`, 0x8E).
    ///
    /// An existing session of the client id is resumed, or discarded with `clean_start`
    /// [MQTT-3.1.2-4] or when another owner held it; a live connection to it is taken over
    /// [MQTT-3.1.4-3].
    pub fn connect_as(
        &self,
        identity: Identity,
        req: ConnectRequest,
    ) -> Result<Connected, ConnectError> {
        let hub = self.hub(req.hub).ok_or(ConnectError::UnknownHub)?;
        hub.connect(Admit::Client(identity), req)
    }

    /// Publishes a message the hub itself produces, bypassing client rules (a retained one
    /// is stored if the budget allows). Hub events ([`Engine::raise_event`]) and `$SYS`
    /// ([`Engine::tick`]) have paths of their own. Returns whether any subscriber matched.
    pub fn publish(&self, hub: HubId, message: Message) -> Result<bool, EngineError> {
        let hub = self.hub(hub).ok_or(EngineError::UnknownHub(hub))?;
        let now = hub.now();
        let message = Arc::new(message);
        if message.retain {
            // Refused only for lack of budget; the message is still delivered.
            let _ = hub.store_retained(&message, now);
        }
        let matched = hub.route(&message, None, now);
        hub.metrics.received.increment(1);
        Ok(matched)
    }

    /// Called by the binary every ~250 ms (and by tests with a manual clock): fires delayed
    /// wills, ends expired sessions (dropping their subscriptions and queued messages,
    /// freeing budget), drops expired messages of offline sessions and expired retained
    /// messages, refreshes gauges.
    pub fn tick(&self) {
        let now = self.inner.clock.now();
        for hub in self.all_hubs() {
            hub.tick(now);
            hub.tick_sys(now);
        }
    }

    /// Puts back what a store read at startup (see `crate::journal`), before any client
    /// connects: every hub's retained messages and persistent sessions (offline, with
    /// subscriptions, queues, inflight exchanges, inbound QoS 2 ids, pending wills), and
    /// makes the journal ids handed out from now on start at `next_id`. State of a hub
    /// the engine does not serve is dropped, and recorded as gone so the store forgets it.
    pub fn restore(&self, hubs: Vec<(HubId, RestoredHub)>, next_id: u64) -> RestoreStats {
        let _admin = self.inner.admin.lock();
        self.inner.ids.fetch_max(next_id.max(1), Ordering::Relaxed);
        let mut stats = RestoreStats::default();
        for (id, state) in hubs {
            match self.hub(id) {
                Some(hub) => {
                    hub.reserve_ids(next_id);
                    hub.restore(state, &mut stats);
                }
                None => {
                    stats.hubs_dropped += 1;
                    stats.sessions_dropped += state.sessions.len();
                    if let Some(journal) = &self.inner.journal {
                        journal.record(crate::journal::JournalOp::HubCleared { hub: id });
                    }
                }
            }
        }
        stats
    }

    /// Server shutdown: every live session gets `Outgoing::Disconnect(ServerShuttingDown)`.
    pub fn shutdown(&self) {
        for hub in self.all_hubs() {
            hub.kick_all(KickReason::ServerShuttingDown);
        }
    }

    pub fn hub_stats(&self, id: HubId) -> Option<HubStats> {
        self.hub(id).map(|hub| hub.stats())
    }

    /// The packets every hub's connections exchanged since the previous call, per hub and
    /// per device (see [`HubActivity`]): what the metrics API's rings are fed with. Hubs
    /// without any are left out.
    pub fn take_activity(&self) -> Vec<HubActivity> {
        self.all_hubs()
            .iter()
            .map(|hub| hub.take_activity())
            .filter(|a| a.messages > 0)
            .collect()
    }

    /// Refreshes the gauges that walk every session (`iothub_queued_messages`,
    /// `iothub_inflight_messages`); the binary calls it every few seconds rather than on
    /// every tick.
    pub fn update_session_gauges(&self) {
        for hub in self.all_hubs() {
            hub.update_session_gauges();
        }
    }
}

/// One "unauthorized topic" event per subscription a filter change removed.
fn raise_revoked(hub: &Hub, revoked: &[RevokedSubscription]) {
    for r in revoked {
        let filter = match &r.filter.share_group {
            Some(group) => format!("$share/{group}/{}", r.filter.filter.as_str()),
            None => r.filter.filter.as_str().to_string(),
        };
        let event = HubEvent::about(
            EventKind::UnauthorizedTopic,
            r.hub,
            r.device,
            format!("unauthorized topic {filter}: subscription removed (message filters changed)"),
        );
        hub.raise(event);
    }
}
