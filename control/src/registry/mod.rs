//! The registry: every rule of the control plane (validation, quotas, hub lifecycle,
//! tenancy, authentication) over a [`Store`] and a [`Runtime`]. The HTTP layer only
//! parses requests and maps [`RegistryError`] to responses.
//!
//! Tenancy: every lookup is scoped by the caller's account and answers `NotFound` for
//! another account's ids, so an id's existence never leaks.
//!
//! Concurrency: updates are read-modify-write with the record's `version`. A request that
//! carries the version it saw (`If-Match`) fails with `PreconditionFailed` when the record
//! has moved on; one without is retried on the fresh record, so concurrent updates of one
//! record are serialised rather than lost.
//!
//! Every mutation calls the runtime after the store accepted it.
//!
//! Certificates (the `certificates` submodule): every hub has a CA, made at creation; a
//! device of a hub without a custom CA gets a certificate at creation (the key is
//! answered once, never stored) and may renew it; any device may instead be pinned to a
//! certificate the user sets; a disabled hub may switch to a custom CA, proven by a
//! certificate with CN = hub id signed by it, which deletes every device certificate of
//! the hub. See [`crate::pki`] for the certificates themselves.

mod config;
mod error;
mod requests;

use std::sync::Arc;

use iothub_model::{DeviceId, HubId, Plan};

pub use config::{
    DEFAULT_EVENTS_TOPIC_PREFIX, DEFAULT_PAGE_SIZE, DEFAULT_REGION, MAX_PAGE_SIZE, PlanQuotas,
    Quotas, RegistryConfig,
};
pub use error::RegistryError;
use error::invalid;
pub use requests::{
    DeviceCreate, DeviceInfo, DeviceUpdate, HubCreate, HubInfo, HubUpdate, ListParams,
    LorawanDeviceCreate, MessageFiltersUpdate, NetworkCreate, RouteCreate, RouteUpdate,
};

use crate::ids::{AccountId, ApiKeyId, NetworkId, RouteId};
use crate::metrics::{MetricRings, MetricsResponse, Period, RangeError, SeriesRange};
use crate::pki::{self, DeviceCredentials};
use crate::records::{
    AccountRecord, ApiKeyRecord, DeviceRecord, DeviceStatus, HubCaRecord, HubRecord, HubStatus,
    LorawanDeviceRecord, MessageFilters, NetworkRecord, NetworkType, RouteConfig, RouteRecord,
    plan_as_str,
};
use crate::runtime::Runtime;
use crate::secret::{generate_secret, hash_secret};
use crate::store::{
    DeviceFilter, HubFilter, ListQuery, NetworkFilter, OrderBy, Page, Paging, RouteFilter, Store,
    StoreError,
};
use crate::time::Timestamp;
use crate::validate::{self, Invalid};

/// Attempts of an update without `If-Match` that keeps losing races before `Conflict`.
const UPDATE_ATTEMPTS: usize = 8;

/// Outcome of one attempt of an optimistic update.
enum Attempt<T> {
    Done(T),
    /// The stored version moved between read and write.
    Raced,
}

/// Runs an attempt (an async block answering `Result<Attempt<T>, RegistryError>`) until it
/// is not raced, at most `UPDATE_ATTEMPTS` times; evaluates to the `T`. A macro rather
/// than a function taking an async closure: async closures borrowing the caller's
/// arguments currently make the future lose `Send`, which the HTTP layer needs.
macro_rules! retry_raced {
    ($resource:expr, $id:expr, $if_version:expr, $attempt:block) => {{
        let mut done = None;
        for _ in 0..UPDATE_ATTEMPTS {
            let attempt: Result<Attempt<_>, RegistryError> = async $attempt.await;
            match attempt {
                Ok(Attempt::Done(value)) => {
                    done = Some(value);
                    break;
                }
                Ok(Attempt::Raced) | Err(RegistryError::Conflict { .. }) => {
                    Self::raced($resource, &$id, $if_version)?
                }
                Err(e) => return Err(e),
            }
        }
        match done {
            Some(value) => value,
            None => {
                return Err(RegistryError::Conflict {
                    resource: $resource,
                    id: $id.to_string(),
                })
            }
        }
    }};
}

// After `retry_raced!`, which it uses.
mod certificates;

/// What a device mutation changes.
enum DeviceChange<'a> {
    Status(DeviceStatus),
    Update(&'a DeviceUpdate),
}

/// The control plane's rules over a store and a runtime.
pub struct Registry {
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    config: RegistryConfig,
    /// The metrics API's rings, fed by the binary ([`Registry::metrics`]).
    metrics: Arc<MetricRings>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The store must already be migrated.
    pub fn new(store: Arc<dyn Store>, runtime: Arc<dyn Runtime>, config: RegistryConfig) -> Self {
        Self {
            store,
            runtime,
            config,
            metrics: Arc::default(),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    pub fn region(&self) -> &str {
        &self.config.region
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The metrics API's rings: the binary records the broker's counts into them.
    pub fn metrics(&self) -> &Arc<MetricRings> {
        &self.metrics
    }

    // -----------------------------------------------------------------------------------
    // Metrics (see `crate::metrics`)

    /// Loads the saved rings (at start, before anything is recorded).
    pub async fn load_metrics(&self) -> Result<usize, RegistryError> {
        let records = self.store.load_metric_rings().await?;
        self.metrics.restore(&records, Timestamp::now());
        Ok(records.len())
    }

    /// Saves the rings that changed since the last save; on failure they stay marked for
    /// the next one. Answers the rows written.
    pub async fn save_metrics(&self) -> Result<usize, RegistryError> {
        let records = self.metrics.take_dirty(Timestamp::now());
        if let Err(e) = self.store.save_metric_rings(&records).await {
            self.metrics.mark_dirty(&records);
            return Err(e.into());
        }
        Ok(records.len())
    }

    fn metrics_range(
        period: Option<Period>,
        start_date: Option<Timestamp>,
    ) -> Result<SeriesRange, RegistryError> {
        SeriesRange::new(period, start_date, Timestamp::now()).map_err(|e| match e {
            RangeError::StartInFuture => invalid(
                "start_date",
                e.to_string(),
                "give a start date in the past, or a period",
            ),
        })
    }

    /// A hub's `messages` and `active_devices` series (see [`crate::metrics`]).
    pub async fn hub_metrics(
        &self,
        caller: &AccountRecord,
        id: HubId,
        period: Option<Period>,
        start_date: Option<Timestamp>,
    ) -> Result<MetricsResponse, RegistryError> {
        self.hub_of(caller, id).await?;
        let range = Self::metrics_range(period, start_date)?;
        Ok(self.metrics.hub_series(id, &range))
    }

    /// A device's `messages` and `activity` series (see [`crate::metrics`]).
    pub async fn device_metrics(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        period: Option<Period>,
        start_date: Option<Timestamp>,
    ) -> Result<MetricsResponse, RegistryError> {
        self.device_of(caller, id).await?;
        let range = Self::metrics_range(period, start_date)?;
        Ok(self.metrics.device_series(id, &range))
    }

    // -----------------------------------------------------------------------------------
    // Accounts and authentication

    fn new_key(
        account_id: AccountId,
        now: Timestamp,
    ) -> Result<(ApiKeyRecord, String), RegistryError> {
        let token = generate_secret()?;
        let key = ApiKeyRecord {
            id: ApiKeyId::new_random(),
            account_id,
            secret_hash: hash_secret(&token),
            created_at: now,
        };
        Ok((key, token))
    }

    /// On a database without any account, creates the admin account and its API key and
    /// returns them (the key is never retrievable again). `None` when an account exists.
    pub async fn bootstrap_admin(&self) -> Result<Option<(AccountRecord, String)>, RegistryError> {
        let now = Timestamp::now();
        let account = AccountRecord {
            id: AccountId::new_random(),
            name: "admin".to_owned(),
            is_admin: true,
            created_at: now,
        };
        let (key, token) = Self::new_key(account.id, now)?;
        if self.store.bootstrap_admin(&account, &key).await? {
            tracing::info!(message = "created the admin account", account_id = %account.id);
            Ok(Some((account, token)))
        } else {
            Ok(None)
        }
    }

    /// Creates an account and its first API key (admin only).
    pub async fn create_account(
        &self,
        caller: &AccountRecord,
        name: &str,
    ) -> Result<(AccountRecord, String), RegistryError> {
        if !caller.is_admin {
            return Err(RegistryError::Denied {
                message: "only the admin account may create accounts".into(),
            });
        }
        validate::name("name", name)?;
        let now = Timestamp::now();
        let account = AccountRecord {
            id: AccountId::new_random(),
            name: name.to_owned(),
            is_admin: false,
            created_at: now,
        };
        let (key, token) = Self::new_key(account.id, now)?;
        self.store.insert_account(&account, &key).await?;
        Ok((account, token))
    }

    /// Creates another API key for the caller's own account.
    pub async fn create_api_key(
        &self,
        caller: &AccountRecord,
    ) -> Result<(ApiKeyRecord, String), RegistryError> {
        let (key, token) = Self::new_key(caller.id, Timestamp::now())?;
        self.store.insert_api_key(&key).await?;
        Ok((key, token))
    }

    /// The account an `X-Auth-Token` belongs to; `Ok(None)` for an unknown token (401),
    /// `Err` only when the database fails (500).
    pub async fn authenticate(&self, token: &str) -> Result<Option<AccountRecord>, RegistryError> {
        if token.is_empty() || token.len() > 1024 {
            return Ok(None);
        }
        let Some(key) = self.store.find_api_key(&hash_secret(token)).await? else {
            return Ok(None);
        };
        Ok(self.store.get_account(key.account_id).await?)
    }

    // -----------------------------------------------------------------------------------
    // Scoped lookups

    async fn hub_of(&self, caller: &AccountRecord, id: HubId) -> Result<HubRecord, RegistryError> {
        owned(
            self.store.get_hub(id).await?,
            |h| h.account_id,
            caller,
            "hub",
            id,
        )
    }

    async fn device_of(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
    ) -> Result<DeviceRecord, RegistryError> {
        owned(
            self.store.get_device(id).await?,
            |d| d.account_id,
            caller,
            "device",
            id,
        )
    }

    async fn route_of(
        &self,
        caller: &AccountRecord,
        id: RouteId,
    ) -> Result<RouteRecord, RegistryError> {
        owned(
            self.store.get_route(id).await?,
            |r| r.account_id,
            caller,
            "route",
            id,
        )
    }

    async fn network_of(
        &self,
        caller: &AccountRecord,
        id: NetworkId,
    ) -> Result<NetworkRecord, RegistryError> {
        owned(
            self.store.get_network(id).await?,
            |n| n.account_id,
            caller,
            "network",
            id,
        )
    }

    /// `If-Match` check against the version just read.
    fn check_version(
        resource: &'static str,
        id: &dyn std::fmt::Display,
        if_version: Option<i64>,
        current: i64,
    ) -> Result<(), RegistryError> {
        match if_version {
            Some(expected) if expected != current => Err(RegistryError::PreconditionFailed {
                resource,
                id: id.to_string(),
                expected,
                current,
            }),
            _ => Ok(()),
        }
    }

    /// A read-modify-write lost a race. With `If-Match` the client's version is now stale;
    /// without, the caller tries again on the fresh record.
    fn raced(
        resource: &'static str,
        id: &dyn std::fmt::Display,
        if_version: Option<i64>,
    ) -> Result<(), RegistryError> {
        match if_version {
            Some(expected) => Err(RegistryError::PreconditionFailed {
                resource,
                id: id.to_string(),
                expected,
                current: expected + 1,
            }),
            None => Ok(()),
        }
    }

    // -----------------------------------------------------------------------------------
    // Hubs

    async fn hub_info(&self, hub: HubRecord) -> Result<HubInfo, RegistryError> {
        let device_count = self
            .store
            .count_devices(&[hub.id])
            .await?
            .first()
            .map_or(0, |(_, n)| *n);
        let connected_device_count = self.runtime.hub_counts(hub.id).connected_devices;
        Ok(HubInfo {
            hub,
            device_count,
            connected_device_count,
        })
    }

    fn check_hub_rules(hub: &HubRecord, anonymous_field: &str) -> Result<(), RegistryError> {
        if hub.allow_anonymous && hub.plan == Plan::Shared {
            return Err(invalid(
                anonymous_field,
                "anonymous clients are not available on plan_shared",
                "use plan_dedicated or plan_ha, or leave allow_anonymous off",
            ));
        }
        if hub.enable_device_auto_provisioning && !hub.has_custom_ca {
            return Err(invalid(
                "enable_device_auto_provisioning",
                "device auto-provisioning needs a custom CA on the hub",
                "set the hub's custom CA first",
            ));
        }
        Ok(())
    }

    /// Stores a status step of the hub lifecycle and tells the runtime.
    async fn hub_step(
        &self,
        hub: &HubRecord,
        status: HubStatus,
        enabled: bool,
    ) -> Result<HubRecord, RegistryError> {
        let next = HubRecord {
            status,
            enabled,
            updated_at: Timestamp::now(),
            ..hub.clone()
        };
        let stored = self.store.update_hub(&next, hub.version, None).await?;
        self.runtime.hub_upserted(&stored);
        Ok(stored)
    }

    /// Creates a hub with its CA: stored as `enabling`, applied to the runtime (hub, then
    /// CA), then `ready`.
    pub async fn create_hub(
        &self,
        caller: &AccountRecord,
        req: HubCreate,
    ) -> Result<HubInfo, RegistryError> {
        validate::topic_safe_name("name", &req.name)?;
        let events_topic_prefix = req
            .events_topic_prefix
            .unwrap_or_else(|| DEFAULT_EVENTS_TOPIC_PREFIX.to_owned());
        validate::topic_prefix("events_topic_prefix", &events_topic_prefix)?;
        let now = Timestamp::now();
        let hub = HubRecord {
            id: HubId::new_random(),
            account_id: caller.id,
            name: req.name,
            status: HubStatus::Enabling,
            plan: req.product_plan,
            enabled: true,
            disable_events: req.disable_events.unwrap_or(false),
            events_topic_prefix,
            enable_device_auto_provisioning: req.enable_device_auto_provisioning.unwrap_or(false),
            has_custom_ca: false,
            allow_anonymous: req.allow_anonymous.unwrap_or(false),
            limits: req.limits.unwrap_or_default(),
            region: self.config.region.clone(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        Self::check_hub_rules(&hub, "allow_anonymous")?;
        // Made before anything is stored: a failure leaves nothing behind.
        let ca = pki::generate_hub_ca(hub.id, now)?;
        let quota = self.config.quotas.hubs_per_account.for_plan(hub.plan);
        self.store.insert_hub(&hub, quota).await?;
        self.runtime.hub_upserted(&hub);
        let ca = HubCaRecord {
            hub_id: hub.id,
            cert_pem: ca.cert_pem,
            key_pem: Some(ca.key_pem),
            is_custom: false,
            created_at: now,
        };
        self.store.insert_hub_ca(&ca).await?;
        self.runtime.hub_ca_upserted(hub.id, &ca.cert_pem, false);
        let ready = match self.hub_step(&hub, HubStatus::Ready, true).await {
            Ok(ready) => ready,
            // Someone changed the hub in the instant since it was stored: show theirs.
            Err(RegistryError::Conflict { .. }) => self.hub_of(caller, hub.id).await?,
            Err(e) => return Err(e),
        };
        self.hub_info(ready).await
    }

    pub async fn get_hub(
        &self,
        caller: &AccountRecord,
        id: HubId,
    ) -> Result<HubInfo, RegistryError> {
        let hub = self.hub_of(caller, id).await?;
        self.hub_info(hub).await
    }

    /// The caller's hubs (`filter.account_id` is ignored: always the caller's).
    pub async fn list_hubs(
        &self,
        caller: &AccountRecord,
        filter: HubFilter,
        params: &ListParams,
    ) -> Result<Page<HubInfo>, RegistryError> {
        let query = params.query(HubFilter {
            account_id: Some(caller.id),
            ..filter
        })?;
        let page = self.store.list_hubs(&query).await?;
        let ids: Vec<HubId> = page.items.iter().map(|h| h.id).collect();
        let counts = self.store.count_devices(&ids).await?;
        Ok(page.map(|hub| {
            let device_count = counts
                .iter()
                .find(|(id, _)| *id == hub.id)
                .map_or(0, |(_, n)| *n);
            let connected_device_count = self.runtime.hub_counts(hub.id).connected_devices;
            HubInfo {
                hub,
                device_count,
                connected_device_count,
            }
        }))
    }

    /// Updates a hub. The product plan changes only while the hub is disabled.
    pub async fn update_hub(
        &self,
        caller: &AccountRecord,
        id: HubId,
        req: HubUpdate,
        if_version: Option<i64>,
    ) -> Result<HubInfo, RegistryError> {
        if let Some(name) = &req.name {
            validate::topic_safe_name("name", name)?;
        }
        if let Some(prefix) = &req.events_topic_prefix {
            validate::topic_prefix("events_topic_prefix", prefix)?;
        }
        let stored = retry_raced!("hub", id, if_version, {
            let hub = self.hub_of(caller, id).await?;
            Self::check_version("hub", &id, if_version, hub.version)?;
            let plan_changes = req.product_plan.is_some_and(|p| p != hub.plan);
            if plan_changes && (hub.enabled || hub.status != HubStatus::Disabled) {
                return Err(RegistryError::FailedPrecondition {
                    message: format!("hub {id} must be disabled before its product plan changes"),
                });
            }
            let next = HubRecord {
                name: req.name.clone().unwrap_or_else(|| hub.name.clone()),
                plan: req.product_plan.unwrap_or(hub.plan),
                disable_events: req.disable_events.unwrap_or(hub.disable_events),
                events_topic_prefix: req
                    .events_topic_prefix
                    .clone()
                    .unwrap_or_else(|| hub.events_topic_prefix.clone()),
                enable_device_auto_provisioning: req
                    .enable_device_auto_provisioning
                    .unwrap_or(hub.enable_device_auto_provisioning),
                allow_anonymous: req.allow_anonymous.unwrap_or(hub.allow_anonymous),
                limits: req.limits.clone().unwrap_or_else(|| hub.limits.clone()),
                updated_at: Timestamp::now(),
                ..hub.clone()
            };
            let anonymous_field = if req.allow_anonymous.is_some() {
                "allow_anonymous"
            } else {
                "product_plan"
            };
            Self::check_hub_rules(&next, anonymous_field)?;
            if plan_changes && next.plan == Plan::Shared {
                let multi = self
                    .store
                    .list_devices(&ListQuery {
                        filter: DeviceFilter {
                            hub_id: Some(id),
                            allow_multiple_connections: Some(true),
                            ..DeviceFilter::default()
                        },
                        order_by: OrderBy::default(),
                        paging: Some(Paging {
                            page: 1,
                            page_size: 1,
                        }),
                    })
                    .await?;
                if multi.total_count > 0 {
                    return Err(RegistryError::FailedPrecondition {
                        message: format!(
                            "{} device(s) of hub {id} allow multiple connections, which plan_shared does not offer: turn it off first",
                            multi.total_count
                        ),
                    });
                }
            }
            let quota =
                plan_changes.then(|| self.config.quotas.hubs_per_account.for_plan(next.plan));
            match self.store.update_hub(&next, hub.version, quota).await {
                Ok(stored) => Ok(Attempt::Done(stored)),
                Err(StoreError::VersionConflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e.into()),
            }
        });
        self.runtime.hub_upserted(&stored);
        self.hub_info(stored).await
    }

    /// Enables a hub: `enabling`, applied to the runtime, then `ready`.
    pub async fn enable_hub(
        &self,
        caller: &AccountRecord,
        id: HubId,
        if_version: Option<i64>,
    ) -> Result<HubInfo, RegistryError> {
        let hub = retry_raced!("hub", id, if_version, {
            let hub = self.hub_of(caller, id).await?;
            Self::check_version("hub", &id, if_version, hub.version)?;
            if hub.enabled && hub.status == HubStatus::Ready {
                return Ok(Attempt::Done(hub));
            }
            match self.hub_step(&hub, HubStatus::Enabling, true).await {
                Ok(enabling) => Ok(Attempt::Done(
                    self.hub_step(&enabling, HubStatus::Ready, true).await?,
                )),
                Err(RegistryError::Conflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e),
            }
        });
        self.hub_info(hub).await
    }

    /// Disables a hub: `disabling` (the runtime closes its connections), then `disabled`.
    pub async fn disable_hub(
        &self,
        caller: &AccountRecord,
        id: HubId,
        if_version: Option<i64>,
    ) -> Result<HubInfo, RegistryError> {
        let hub = retry_raced!("hub", id, if_version, {
            let hub = self.hub_of(caller, id).await?;
            Self::check_version("hub", &id, if_version, hub.version)?;
            if !hub.enabled && hub.status == HubStatus::Disabled {
                return Ok(Attempt::Done(hub));
            }
            match self.hub_step(&hub, HubStatus::Disabling, false).await {
                Ok(disabling) => Ok(Attempt::Done(
                    self.hub_step(&disabling, HubStatus::Disabled, false)
                        .await?,
                )),
                Err(RegistryError::Conflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e),
            }
        });
        self.hub_info(hub).await
    }

    /// Deletes a hub with its routes and networks. A hub with devices is refused unless
    /// `delete_devices`, which deletes them too.
    pub async fn delete_hub(
        &self,
        caller: &AccountRecord,
        id: HubId,
        delete_devices: bool,
        if_version: Option<i64>,
    ) -> Result<(), RegistryError> {
        let hub = self.hub_of(caller, id).await?;
        Self::check_version("hub", &id, if_version, hub.version)?;
        let devices = match self.store.delete_hub(id, if_version, delete_devices).await {
            Ok(devices) => devices,
            Err(StoreError::VersionConflict { expected, .. }) => {
                return Err(RegistryError::PreconditionFailed {
                    resource: "hub",
                    id: id.to_string(),
                    expected,
                    current: expected + 1,
                });
            }
            Err(e) => return Err(e.into()),
        };
        for device in devices {
            self.metrics.forget_device(device);
            self.runtime.device_removed(device);
        }
        self.metrics.forget_hub(id);
        self.runtime.hub_ca_removed(id);
        self.runtime.hub_removed(id);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Devices

    fn device_info(&self, device: DeviceRecord) -> DeviceInfo {
        let is_connected = self.runtime.device_connected(device.id);
        DeviceInfo {
            device,
            is_connected,
        }
    }

    fn check_multiple_connections(hub: &HubRecord, allow: bool) -> Result<(), RegistryError> {
        if allow && hub.plan == Plan::Shared {
            return Err(invalid(
                "allow_multiple_connections",
                format!("is not available on {}", plan_as_str(hub.plan)),
                "use a hub on plan_dedicated or plan_ha",
            ));
        }
        Ok(())
    }

    /// Creates a device. On a hub without a custom CA it gets a certificate signed by the
    /// hub's CA, answered with its key this once (the key is not kept); on a hub with a
    /// custom CA, none (the user's CA signs its certificate, CN = the device name).
    pub async fn create_device(
        &self,
        caller: &AccountRecord,
        req: DeviceCreate,
    ) -> Result<(DeviceInfo, Option<DeviceCredentials>), RegistryError> {
        validate::topic_safe_name("name", &req.name)?;
        validate::description("description", &req.description)?;
        validate::message_filters("message_filters", &req.message_filters)?;
        let hub = self.hub_of(caller, req.hub_id).await?;
        Self::check_multiple_connections(&hub, req.allow_multiple_connections)?;
        let now = Timestamp::now();
        let id = DeviceId::new_random();
        let (credentials, certificate) = if hub.has_custom_ca {
            (None, None)
        } else {
            let ca = self.ensure_hub_ca(&hub).await?;
            let (credentials, certificate) = Self::issue(&ca, id, now)?;
            (Some(credentials), Some(certificate))
        };
        let device = DeviceRecord {
            id,
            hub_id: hub.id,
            account_id: caller.id,
            name: req.name,
            description: req.description,
            status: DeviceStatus::Enabled,
            allow_insecure: req.allow_insecure,
            allow_multiple_connections: req.allow_multiple_connections,
            message_filters: req.message_filters,
            has_custom_certificate: false,
            certificate_fingerprint: certificate.as_ref().map(|c| c.fingerprint_sha256.clone()),
            last_activity_at: Timestamp::EPOCH,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        self.store
            .insert_device(
                &device,
                certificate.as_ref(),
                self.config.quotas.devices_per_hub,
            )
            .await?;
        self.runtime.device_upserted(&device);
        Ok((self.device_info(device), credentials))
    }

    pub async fn get_device(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
    ) -> Result<DeviceInfo, RegistryError> {
        let device = self.device_of(caller, id).await?;
        Ok(self.device_info(device))
    }

    /// The caller's devices (`filter.account_id` is ignored).
    pub async fn list_devices(
        &self,
        caller: &AccountRecord,
        filter: DeviceFilter,
        params: &ListParams,
    ) -> Result<Page<DeviceInfo>, RegistryError> {
        let query = params.query(DeviceFilter {
            account_id: Some(caller.id),
            ..filter
        })?;
        let page = self.store.list_devices(&query).await?;
        Ok(page.map(|d| self.device_info(d)))
    }

    /// Shared body of the device mutations: read, check, change, store, tell the runtime.
    async fn change_device(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        if_version: Option<i64>,
        change: DeviceChange<'_>,
    ) -> Result<DeviceInfo, RegistryError> {
        let stored = retry_raced!("device", id, if_version, {
            let device = self.device_of(caller, id).await?;
            Self::check_version("device", &id, if_version, device.version)?;
            let version = device.version;
            let mut next = match change {
                DeviceChange::Status(status) => DeviceRecord { status, ..device },
                DeviceChange::Update(req) => self.apply_device_update(caller, device, req).await?,
            };
            next.updated_at = Timestamp::now();
            match self
                .store
                .update_device(&next, version, self.config.quotas.devices_per_hub)
                .await
            {
                Ok(stored) => Ok(Attempt::Done(stored)),
                Err(StoreError::VersionConflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e.into()),
            }
        });
        self.runtime.device_upserted(&stored);
        Ok(self.device_info(stored))
    }

    /// The device as `req` changes it, checked against its (possibly new) hub.
    async fn apply_device_update(
        &self,
        caller: &AccountRecord,
        device: DeviceRecord,
        req: &DeviceUpdate,
    ) -> Result<DeviceRecord, RegistryError> {
        let hub_id = req.hub_id.unwrap_or(device.hub_id);
        let hub = self.hub_of(caller, hub_id).await.map_err(|e| match e {
            // The device's own hub vanished under it: that is the device's absence.
            RegistryError::NotFound { .. } if req.hub_id.is_none() => RegistryError::NotFound {
                resource: "device",
                id: device.id.to_string(),
            },
            other => other,
        })?;
        let allow_multiple_connections = req
            .allow_multiple_connections
            .unwrap_or(device.allow_multiple_connections);
        Self::check_multiple_connections(&hub, allow_multiple_connections)?;
        let mut message_filters = device.message_filters.clone();
        if let Some(update) = &req.message_filters {
            if let Some(publish) = &update.publish {
                message_filters.publish = publish.clone();
            }
            if let Some(subscribe) = &update.subscribe {
                message_filters.subscribe = subscribe.clone();
            }
        }
        Ok(DeviceRecord {
            hub_id,
            description: req
                .description
                .clone()
                .unwrap_or_else(|| device.description.clone()),
            allow_insecure: req.allow_insecure.unwrap_or(device.allow_insecure),
            allow_multiple_connections,
            message_filters,
            ..device
        })
    }

    /// Updates a device; a new `hub_id` moves it (same account, target hub's quota).
    pub async fn update_device(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        req: DeviceUpdate,
        if_version: Option<i64>,
    ) -> Result<DeviceInfo, RegistryError> {
        if let Some(description) = &req.description {
            validate::description("description", description)?;
        }
        if let Some(filters) = &req.message_filters {
            let probe = MessageFilters {
                publish: filters.publish.clone().unwrap_or_default(),
                subscribe: filters.subscribe.clone().unwrap_or_default(),
            };
            validate::message_filters("message_filters", &probe)?;
        }
        self.change_device(caller, id, if_version, DeviceChange::Update(&req))
            .await
    }

    pub async fn enable_device(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        if_version: Option<i64>,
    ) -> Result<DeviceInfo, RegistryError> {
        self.change_device(
            caller,
            id,
            if_version,
            DeviceChange::Status(DeviceStatus::Enabled),
        )
        .await
    }

    /// Disables a device: the runtime closes its live connections.
    pub async fn disable_device(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        if_version: Option<i64>,
    ) -> Result<DeviceInfo, RegistryError> {
        self.change_device(
            caller,
            id,
            if_version,
            DeviceChange::Status(DeviceStatus::Disabled),
        )
        .await
    }

    pub async fn delete_device(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        if_version: Option<i64>,
    ) -> Result<(), RegistryError> {
        let device = self.device_of(caller, id).await?;
        Self::check_version("device", &id, if_version, device.version)?;
        match self.store.delete_device(id, if_version).await {
            Ok(()) => {}
            Err(StoreError::VersionConflict { expected, .. }) => {
                return Err(RegistryError::PreconditionFailed {
                    resource: "device",
                    id: id.to_string(),
                    expected,
                    current: expected + 1,
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.metrics.forget_device(id);
        self.runtime.device_removed(id);
        Ok(())
    }

    /// Records that a device was active (called by the runtime; no version bump).
    pub async fn record_device_activity(
        &self,
        id: DeviceId,
        at: Timestamp,
    ) -> Result<(), RegistryError> {
        Ok(self.store.set_device_last_activity(id, at).await?)
    }

    // -----------------------------------------------------------------------------------
    // Routes

    pub async fn create_route(
        &self,
        caller: &AccountRecord,
        req: RouteCreate,
    ) -> Result<RouteRecord, RegistryError> {
        validate::name("name", &req.name)?;
        validate::topic_filter("topic", &req.topic)?;
        validate::route_config(&req.config)?;
        let hub = self.hub_of(caller, req.hub_id).await?;
        let now = Timestamp::now();
        let route = RouteRecord {
            id: RouteId::new_random(),
            hub_id: hub.id,
            account_id: caller.id,
            name: req.name,
            topic: req.topic,
            route_type: req.config.route_type(),
            config: req.config,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        self.check_route(&route).await?;
        self.store
            .insert_route(&route, self.config.quotas.routes_per_hub)
            .await?;
        self.runtime.route_upserted(&route);
        Ok(route)
    }

    pub async fn get_route(
        &self,
        caller: &AccountRecord,
        id: RouteId,
    ) -> Result<RouteRecord, RegistryError> {
        self.route_of(caller, id).await
    }

    pub async fn list_routes(
        &self,
        caller: &AccountRecord,
        filter: RouteFilter,
        params: &ListParams,
    ) -> Result<Page<RouteRecord>, RegistryError> {
        let query = params.query(RouteFilter {
            account_id: Some(caller.id),
            ..filter
        })?;
        Ok(self.store.list_routes(&query).await?)
    }

    pub async fn update_route(
        &self,
        caller: &AccountRecord,
        id: RouteId,
        req: RouteUpdate,
        if_version: Option<i64>,
    ) -> Result<RouteRecord, RegistryError> {
        if let Some(name) = &req.name {
            validate::name("name", name)?;
        }
        if let Some(topic) = &req.topic {
            validate::topic_filter("topic", topic)?;
        }
        if let Some(config) = &req.config {
            validate::route_config(config)?;
        }
        Ok(retry_raced!("route", id, if_version, {
            let route = self.route_of(caller, id).await?;
            Self::check_version("route", &id, if_version, route.version)?;
            if let Some(config) = &req.config
                && config.route_type() != route.route_type
            {
                let field = match config {
                    RouteConfig::S3(_) => "s3_config",
                    RouteConfig::Database(_) => "db_config",
                    RouteConfig::Rest(_) => "rest_config",
                    RouteConfig::Wasm(_) => "wasm_config",
                };
                return Err(invalid(
                    field,
                    format!(
                        "the route is of type {}; its type cannot change",
                        route.route_type
                    ),
                    "create a new route for another target type",
                ));
            }
            let next = RouteRecord {
                name: req.name.clone().unwrap_or_else(|| route.name.clone()),
                topic: req.topic.clone().unwrap_or_else(|| route.topic.clone()),
                config: req.config.clone().unwrap_or_else(|| route.config.clone()),
                updated_at: Timestamp::now(),
                ..route.clone()
            };
            if req.config.is_some() || req.topic.is_some() {
                self.check_route(&next).await?;
            }
            match self.store.update_route(&next, route.version).await {
                Ok(stored) => {
                    self.runtime.route_upserted(&stored);
                    Ok(Attempt::Done(stored))
                }
                Err(StoreError::VersionConflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e.into()),
            }
        }))
    }

    pub async fn delete_route(
        &self,
        caller: &AccountRecord,
        id: RouteId,
        if_version: Option<i64>,
    ) -> Result<(), RegistryError> {
        let route = self.route_of(caller, id).await?;
        Self::check_version("route", &id, if_version, route.version)?;
        match self.store.delete_route(id, if_version).await {
            Ok(()) => {
                self.runtime.route_removed(id);
                Ok(())
            }
            Err(StoreError::VersionConflict { expected, .. }) => {
                Err(RegistryError::PreconditionFailed {
                    resource: "route",
                    id: id.to_string(),
                    expected,
                    current: expected + 1,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The broker's verdict on a route before it is stored (a 400 naming the field).
    async fn check_route(&self, route: &RouteRecord) -> Result<(), RegistryError> {
        self.runtime.check_route(route).await.map_err(|r| {
            invalid(
                &r.field,
                r.reason,
                "fix the route's configuration (the route component refused it)",
            )
        })
    }

    /// Every route of every account, for the binary to start at boot.
    pub async fn all_routes(&self) -> Result<Vec<RouteRecord>, RegistryError> {
        let query = ListQuery {
            filter: RouteFilter::default(),
            order_by: OrderBy::default(),
            paging: None,
        };
        Ok(self.store.list_routes(&query).await?.items)
    }

    // -----------------------------------------------------------------------------------
    // Networks

    /// Creates a network and returns it with its secret, shown this once (only its hash is
    /// kept).
    pub async fn create_network(
        &self,
        caller: &AccountRecord,
        req: NetworkCreate,
    ) -> Result<(NetworkRecord, String), RegistryError> {
        validate::name("name", &req.name)?;
        validate::topic_prefix("topic_prefix", &req.topic_prefix)?;
        let (ns_url, ns_token) = validate::network_server(
            req.network_type == NetworkType::Lorawan,
            req.ns_url,
            req.ns_token,
        )?;
        let hub = self.hub_of(caller, req.hub_id).await?;
        let secret = generate_secret()?;
        let network = NetworkRecord {
            id: NetworkId::new_random(),
            hub_id: hub.id,
            account_id: caller.id,
            name: req.name,
            network_type: req.network_type,
            topic_prefix: req.topic_prefix,
            secret_hash: hash_secret(&secret),
            ns_url,
            ns_token,
            created_at: Timestamp::now(),
        };
        self.store
            .insert_network(&network, self.config.quotas.networks_per_hub)
            .await?;
        self.runtime.network_upserted(&network);
        Ok((network, secret))
    }

    pub async fn get_network(
        &self,
        caller: &AccountRecord,
        id: NetworkId,
    ) -> Result<NetworkRecord, RegistryError> {
        self.network_of(caller, id).await
    }

    pub async fn list_networks(
        &self,
        caller: &AccountRecord,
        filter: NetworkFilter,
        params: &ListParams,
    ) -> Result<Page<NetworkRecord>, RegistryError> {
        let query = params.query(NetworkFilter {
            account_id: Some(caller.id),
            ..filter
        })?;
        Ok(self.store.list_networks(&query).await?)
    }

    pub async fn delete_network(
        &self,
        caller: &AccountRecord,
        id: NetworkId,
    ) -> Result<(), RegistryError> {
        self.network_of(caller, id).await?;
        self.store.delete_network(id).await?;
        self.runtime.network_removed(id);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // LoRaWAN devices of LoRaWAN networks

    /// Registers a LoRaWAN device in one of the caller's LoRaWAN networks.
    pub async fn create_lorawan_device(
        &self,
        caller: &AccountRecord,
        network: NetworkId,
        req: LorawanDeviceCreate,
    ) -> Result<LorawanDeviceRecord, RegistryError> {
        let network = self.network_of(caller, network).await?;
        if network.network_type != NetworkType::Lorawan {
            return Err(Invalid::new(
                "network_id",
                format!(
                    "network {} is a {} network",
                    network.id,
                    network.network_type.as_str()
                ),
                "register LoRaWAN devices in a network of type lorawan",
            )
            .into());
        }
        let hex = |field: &str, v: Option<String>, digits| {
            v.map(|v| validate::hex_id(field, &v, digits)).transpose()
        };
        let dev_eui = validate::hex_id("dev_eui", &req.dev_eui, 16)?;
        let join_eui = hex("join_eui", req.join_eui, 16)?;
        let app_key = hex("app_key", req.app_key, 32)?;
        let dev_addr = hex("dev_addr", req.dev_addr, 8)?;
        let nwk_s_key = hex("nwk_s_key", req.nwk_s_key, 32)?;
        let app_s_key = hex("app_s_key", req.app_s_key, 32)?;
        let session = [dev_addr.is_some(), nwk_s_key.is_some(), app_s_key.is_some()];
        if session.iter().any(|s| *s) && !session.iter().all(|s| *s) {
            return Err(Invalid::new(
                "dev_addr",
                "an ABP session needs dev_addr, nwk_s_key and app_s_key together",
                "give all three, or none (OTAA join checks with app_key only)",
            )
            .into());
        }
        if app_key.is_none() && dev_addr.is_none() {
            return Err(Invalid::new(
                "app_key",
                "a LoRaWAN device needs an app_key, ABP session keys, or both",
                "give app_key (join-requests) or dev_addr, nwk_s_key and app_s_key (data frames)",
            )
            .into());
        }
        let device = LorawanDeviceRecord {
            network_id: network.id,
            dev_eui,
            hub_id: network.hub_id,
            account_id: network.account_id,
            join_eui,
            app_key,
            dev_addr,
            nwk_s_key,
            app_s_key,
            f_cnt_up: req.f_cnt_up.unwrap_or(0),
            dev_nonces: Vec::new(),
            created_at: Timestamp::now(),
        };
        self.store.insert_lorawan_device(&device).await?;
        self.runtime.lorawan_device_upserted(&device);
        Ok(device)
    }

    pub async fn get_lorawan_device(
        &self,
        caller: &AccountRecord,
        network: NetworkId,
        dev_eui: &str,
    ) -> Result<LorawanDeviceRecord, RegistryError> {
        self.network_of(caller, network).await?;
        let dev_eui = dev_eui.to_ascii_lowercase();
        self.store
            .get_lorawan_device(network, &dev_eui)
            .await?
            .ok_or(RegistryError::NotFound {
                resource: "lorawan device",
                id: dev_eui,
            })
    }

    pub async fn list_lorawan_devices(
        &self,
        caller: &AccountRecord,
        network: NetworkId,
    ) -> Result<Vec<LorawanDeviceRecord>, RegistryError> {
        self.network_of(caller, network).await?;
        Ok(self.store.list_lorawan_devices(Some(network)).await?)
    }

    pub async fn delete_lorawan_device(
        &self,
        caller: &AccountRecord,
        network: NetworkId,
        dev_eui: &str,
    ) -> Result<(), RegistryError> {
        self.network_of(caller, network).await?;
        let dev_eui = dev_eui.to_ascii_lowercase();
        self.store.delete_lorawan_device(network, &dev_eui).await?;
        self.runtime.lorawan_device_removed(network, &dev_eui);
        Ok(())
    }

    /// Stores a device's new uplink frame counter (the broker calls it after each accepted
    /// raw frame); the store never lowers it.
    pub async fn save_lorawan_f_cnt_up(
        &self,
        network: NetworkId,
        dev_eui: &str,
        f_cnt_up: u32,
    ) -> Result<(), RegistryError> {
        Ok(self
            .store
            .set_lorawan_f_cnt_up(network, dev_eui, f_cnt_up)
            .await?)
    }

    /// Records a DevNonce of an accepted join-request of a device (the broker calls it; the
    /// broker refuses a DevNonce already recorded).
    pub async fn add_lorawan_dev_nonce(
        &self,
        network: NetworkId,
        dev_eui: &str,
        dev_nonce: u16,
    ) -> Result<(), RegistryError> {
        Ok(self
            .store
            .add_lorawan_dev_nonce(network, dev_eui, dev_nonce)
            .await?)
    }

    /// Every network of every account, for the binary to load at start.
    pub async fn all_networks(&self) -> Result<Vec<NetworkRecord>, RegistryError> {
        let query = ListQuery {
            filter: NetworkFilter::default(),
            order_by: OrderBy::default(),
            paging: None,
        };
        Ok(self.store.list_networks(&query).await?.items)
    }

    /// Every LoRaWAN device of every network, for the binary to load at start.
    pub async fn all_lorawan_devices(&self) -> Result<Vec<LorawanDeviceRecord>, RegistryError> {
        Ok(self.store.list_lorawan_devices(None).await?)
    }

    // -----------------------------------------------------------------------------------
    // Loading the runtime at start

    /// Every hub of every account, for the binary to load into the engine at start.
    pub async fn all_hubs(&self) -> Result<Vec<HubRecord>, RegistryError> {
        let query = ListQuery {
            filter: HubFilter::default(),
            order_by: OrderBy::default(),
            paging: None,
        };
        Ok(self.store.list_hubs(&query).await?.items)
    }

    /// Completes hub transitions a stop interrupted (`enabling` -> `ready`, `disabling` ->
    /// `disabled`, telling the runtime), and answers how many it completed. The binary
    /// calls it at start, after loading the hubs into the engine.
    pub async fn finish_interrupted_transitions(&self) -> Result<usize, RegistryError> {
        let mut finished = 0;
        for hub in self.all_hubs().await? {
            let target = match hub.status {
                HubStatus::Enabling => HubStatus::Ready,
                HubStatus::Disabling => HubStatus::Disabled,
                _ => continue,
            };
            match self.hub_step(&hub, target, hub.enabled).await {
                Ok(_) => finished += 1,
                // Changed meanwhile by a request, which completes its own transition.
                Err(RegistryError::Conflict { .. } | RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(finished)
    }

    /// Every device of every account, for the binary to load into the engine at start.
    pub async fn all_devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        let query = ListQuery {
            filter: DeviceFilter::default(),
            order_by: OrderBy::default(),
            paging: None,
        };
        Ok(self.store.list_devices(&query).await?.items)
    }
}

/// `record` when it belongs to the caller's account; otherwise (absent, or another account's)
/// the same `NotFound`, so ids of other accounts cannot be told from ids that do not exist.
fn owned<T>(
    record: Option<T>,
    owner: impl Fn(&T) -> AccountId,
    caller: &AccountRecord,
    resource: &'static str,
    id: impl ToString,
) -> Result<T, RegistryError> {
    match record {
        Some(r) if owner(&r) == caller.id => Ok(r),
        _ => Err(RegistryError::NotFound {
            resource,
            id: id.to_string(),
        }),
    }
}

/// The HTTP layer runs registry calls on a multi-threaded runtime: every future must be
/// `Send`. This does not run; it fails to compile when a future stops being `Send`.
#[cfg(test)]
#[allow(dead_code)]
fn registry_futures_are_send(r: &Registry, a: &AccountRecord, hub: HubId, device: DeviceId) {
    fn send<T: Send>(_: T) {}
    let p = ListParams::default();
    send(r.bootstrap_admin());
    send(r.create_account(a, "x"));
    send(r.create_api_key(a));
    send(r.authenticate("t"));
    send(r.create_hub(a, HubCreate::default()));
    send(r.get_hub(a, hub));
    send(r.list_hubs(a, HubFilter::default(), &p));
    send(r.update_hub(a, hub, HubUpdate::default(), None));
    send(r.enable_hub(a, hub, None));
    send(r.disable_hub(a, hub, None));
    send(r.delete_hub(a, hub, false, None));
    send(r.get_device(a, device));
    send(r.list_devices(a, DeviceFilter::default(), &p));
    send(r.update_device(a, device, DeviceUpdate::default(), None));
    send(r.enable_device(a, device, None));
    send(r.disable_device(a, device, None));
    send(r.delete_device(a, device, None));
    send(r.record_device_activity(device, Timestamp::EPOCH));
    send(r.list_routes(a, RouteFilter::default(), &p));
    send(r.update_route(a, RouteId::new_random(), RouteUpdate::default(), None));
    send(r.delete_route(a, RouteId::new_random(), None));
    send(r.get_route(a, RouteId::new_random()));
    send(r.list_networks(a, NetworkFilter::default(), &p));
    send(r.get_network(a, NetworkId::new_random()));
    send(r.delete_network(a, NetworkId::new_random()));
    send(r.all_hubs());
    send(r.all_devices());
    send(r.finish_interrupted_transitions());
    send(r.get_hub_ca(a, hub));
    send(r.set_hub_ca(a, hub, "", "", None));
    send(r.renew_device_certificate(a, device, None));
    send(r.set_device_certificate(a, device, "", None));
    send(r.get_device_certificate(a, device));
    send(r.auto_provision(hub, "cn", std::net::IpAddr::from([127, 0, 0, 1])));
    send(r.all_hub_cas());
}
