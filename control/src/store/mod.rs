//! The registry's persistence: a [`Store`] trait and its one implementation, [`SqlStore`],
//! over sqlx's `AnyPool` (SQLite by default, PostgreSQL for a cluster).
//!
//! The store is deliberately dumb about rules (the registry owns them) except where a rule
//! needs the database to be atomic: quotas and "a hub with devices cannot be deleted" are
//! checked inside the write's transaction, after locking the parent row, so two concurrent
//! creations cannot both take the last slot.
//!
//! The trait returns boxed futures rather than using `async fn`: that keeps it
//! dyn-compatible, so the registry holds an `Arc<dyn Store>` and tests can hand it a store
//! that fails on purpose. One allocation per database round trip is noise.

mod sql;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use iothub_model::{DeviceId, HubId};

use crate::ids::{AccountId, NetworkId, RouteId};
use crate::metrics::MetricRingRecord;
use crate::records::{
    AccountRecord, ApiKeyRecord, DeviceCertificateRecord, DeviceRecord, DeviceStatus, HubCaRecord,
    HubRecord, LorawanDeviceRecord, NetworkRecord, RouteRecord,
};
use crate::time::Timestamp;

pub use sql::{SqlStore, StoreBackend};

/// What every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store url {0:?}: expected sqlite://<path>?mode=rwc or postgres://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the database schema is at version {found}, newer than this build knows ({known}); upgrade iothub"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{table}.{column} holds {value:?}, which is not valid: {reason}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        value: String,
        reason: String,
    },
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    /// The row's version is not the one the caller read (optimistic concurrency).
    #[error("{resource} {id} changed since version {expected}")]
    VersionConflict {
        resource: &'static str,
        id: String,
        expected: i64,
    },
    /// A unique constraint (device name in its hub, …) refused the write.
    #[error("a {resource} with this {field} already exists")]
    Duplicate {
        resource: &'static str,
        field: &'static str,
    },
    #[error("quota exceeded for {resource}: {current} of {quota}")]
    QuotaExceeded {
        resource: &'static str,
        current: u64,
        quota: u64,
    },
    /// The resource cannot be ordered by that field (hubs have no `hub_id`, …).
    #[error("{resource}s cannot be ordered by {order_by}")]
    UnsupportedOrder {
        resource: &'static str,
        order_by: &'static str,
    },
    #[error("hub {hub} still has {devices} device(s)")]
    HubHasDevices { hub: HubId, devices: u64 },
}

/// A sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortDirection {
    #[default]
    Asc,
    Desc,
}

/// A field lists can be ordered by (the reference's `order_by` words, before `_asc`/`_desc`).
/// Not every resource has every field: the store answers `InvalidOrder` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderField {
    #[default]
    Name,
    Status,
    HubId,
    Type,
    CreatedAt,
    UpdatedAt,
    ProductPlan,
    AllowInsecure,
}

impl OrderField {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Status => "status",
            Self::HubId => "hub_id",
            Self::Type => "type",
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::ProductPlan => "product_plan",
            Self::AllowInsecure => "allow_insecure",
        }
    }

    const ALL: [Self; 8] = [
        Self::Name,
        Self::Status,
        Self::HubId,
        Self::Type,
        Self::CreatedAt,
        Self::UpdatedAt,
        Self::ProductPlan,
        Self::AllowInsecure,
    ];
}

/// `<field>_asc` or `<field>_desc`; the default is `name_asc`, as in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderBy {
    pub field: OrderField,
    pub direction: SortDirection,
}

/// Why an `order_by` word was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid order: expected <field>_asc or <field>_desc")]
pub struct InvalidOrder(pub String);

impl FromStr for OrderBy {
    type Err = InvalidOrder;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidOrder(s.chars().take(64).collect());
        let (field, direction) = if let Some(f) = s.strip_suffix("_asc") {
            (f, SortDirection::Asc)
        } else if let Some(f) = s.strip_suffix("_desc") {
            (f, SortDirection::Desc)
        } else {
            return Err(bad());
        };
        let field = OrderField::ALL
            .into_iter()
            .find(|f| f.as_str() == field)
            .ok_or_else(bad)?;
        Ok(Self { field, direction })
    }
}

impl fmt::Display for OrderBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            SortDirection::Asc => "asc",
            SortDirection::Desc => "desc",
        };
        write!(f, "{}_{dir}", self.field.as_str())
    }
}

/// A page of a list: 1-based page number and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub page: u32,
    pub page_size: u32,
}

/// Filters of the hub list. `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubFilter {
    /// Always set by the registry to the caller's account.
    pub account_id: Option<AccountId>,
    /// Case-insensitive (ASCII) substring of the name.
    pub name: Option<String>,
}

/// Filters of the device list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    pub account_id: Option<AccountId>,
    pub hub_id: Option<HubId>,
    pub name: Option<String>,
    pub allow_insecure: Option<bool>,
    pub allow_multiple_connections: Option<bool>,
    pub status: Option<DeviceStatus>,
}

/// Filters of the route list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFilter {
    pub account_id: Option<AccountId>,
    pub hub_id: Option<HubId>,
    pub name: Option<String>,
}

/// Filters of the network list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkFilter {
    pub account_id: Option<AccountId>,
    pub hub_id: Option<HubId>,
    pub name: Option<String>,
    /// Exact topic prefix.
    pub topic_prefix: Option<String>,
}

/// One list request: filters, order and page (`None`: every row, for loading the runtime).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery<F> {
    pub filter: F,
    pub order_by: OrderBy,
    pub paging: Option<Paging>,
}

/// One page of results and the number of rows matching the filters in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total_count: u64,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total_count: self.total_count,
        }
    }
}

/// Persistence of the registry. Every `update_*` writes the whole record when the stored
/// version equals `expected_version` and stores `expected_version + 1` (returned);
/// otherwise `VersionConflict` (or `NotFound`). `delete_*` with `Some(version)` deletes
/// only that version.
pub trait Store: Send + Sync + 'static {
    /// Creates or upgrades the schema. Idempotent; safe to run from several nodes at once.
    fn migrate(&self) -> StoreFuture<'_, ()>;

    /// Inserts the admin account and its key when no account exists at all. `false` when
    /// some account already exists (nothing is written).
    fn bootstrap_admin<'a>(
        &'a self,
        account: &'a AccountRecord,
        key: &'a ApiKeyRecord,
    ) -> StoreFuture<'a, bool>;
    /// Inserts an account and its first key in one transaction.
    fn insert_account<'a>(
        &'a self,
        account: &'a AccountRecord,
        key: &'a ApiKeyRecord,
    ) -> StoreFuture<'a, ()>;
    fn get_account(&self, id: AccountId) -> StoreFuture<'_, Option<AccountRecord>>;
    fn insert_api_key<'a>(&'a self, key: &'a ApiKeyRecord) -> StoreFuture<'a, ()>;
    /// The key whose secret hashes to `secret_hash`.
    fn find_api_key<'a>(&'a self, secret_hash: &'a str) -> StoreFuture<'a, Option<ApiKeyRecord>>;

    /// Inserts a hub unless its account already has `plan_quota` hubs of the same plan.
    fn insert_hub<'a>(&'a self, hub: &'a HubRecord, plan_quota: u64) -> StoreFuture<'a, ()>;
    fn get_hub(&self, id: HubId) -> StoreFuture<'_, Option<HubRecord>>;
    /// `plan_quota` is checked (for the hub's new plan, this hub excluded) when `Some`: the
    /// registry passes it when the plan changes.
    fn update_hub<'a>(
        &'a self,
        hub: &'a HubRecord,
        expected_version: i64,
        plan_quota: Option<u64>,
    ) -> StoreFuture<'a, HubRecord>;
    /// Deletes a hub with its CA, routes, networks and metric rings, and its devices (with
    /// their certificates and metric rings) when `delete_devices` (returned); otherwise a
    /// hub with devices is refused with `HubHasDevices`.
    fn delete_hub(
        &self,
        id: HubId,
        expected_version: Option<i64>,
        delete_devices: bool,
    ) -> StoreFuture<'_, Vec<DeviceId>>;
    fn list_hubs<'a>(&'a self, query: &'a ListQuery<HubFilter>)
    -> StoreFuture<'a, Page<HubRecord>>;
    /// Device counts of the given hubs (hubs without devices are absent).
    fn count_devices<'a>(&'a self, hubs: &'a [HubId]) -> StoreFuture<'a, Vec<(HubId, u64)>>;

    /// Inserts a device, with its first certificate in the same transaction, unless its
    /// hub already has `hub_quota` devices. `device.certificate_fingerprint` is not
    /// written: the certificate row is the fingerprint. A certificate of another device
    /// is `Duplicate`; a hub-issued certificate (`!is_custom`) for a hub that has meanwhile
    /// got a custom CA is a `VersionConflict` on the hub.
    fn insert_device<'a>(
        &'a self,
        device: &'a DeviceRecord,
        certificate: Option<&'a DeviceCertificateRecord>,
        hub_quota: u64,
    ) -> StoreFuture<'a, ()>;
    fn get_device(&self, id: DeviceId) -> StoreFuture<'_, Option<DeviceRecord>>;
    /// The device named `name` in `hub` (names are unique in a hub).
    fn find_device_by_name<'a>(
        &'a self,
        hub: HubId,
        name: &'a str,
    ) -> StoreFuture<'a, Option<DeviceRecord>>;
    /// When the device moves to another hub, that hub's `hub_quota` is checked and a
    /// certificate the old hub issued is deleted (it chains to the old hub's CA, so it
    /// must not open sessions on the new one); a custom certificate stays. The answer's
    /// `certificate_fingerprint` is read back from the database.
    fn update_device<'a>(
        &'a self,
        device: &'a DeviceRecord,
        expected_version: i64,
        hub_quota: u64,
    ) -> StoreFuture<'a, DeviceRecord>;
    /// Deletes a device, its certificate and its metric rings.
    fn delete_device(&self, id: DeviceId, expected_version: Option<i64>) -> StoreFuture<'_, ()>;
    fn get_device_certificate(
        &self,
        id: DeviceId,
    ) -> StoreFuture<'_, Option<DeviceCertificateRecord>>;
    /// Makes `certificate` the device's only certificate and writes the device's
    /// `has_custom_certificate` (= `certificate.is_custom`) and `updated_at`, at
    /// `expected_version`, in one transaction. `Duplicate` when another device has this
    /// certificate; `VersionConflict` on the hub when a hub-issued certificate meets a hub
    /// that has meanwhile got a custom CA.
    fn replace_device_certificate<'a>(
        &'a self,
        device: &'a DeviceRecord,
        expected_version: i64,
        certificate: &'a DeviceCertificateRecord,
    ) -> StoreFuture<'a, DeviceRecord>;
    fn list_devices<'a>(
        &'a self,
        query: &'a ListQuery<DeviceFilter>,
    ) -> StoreFuture<'a, Page<DeviceRecord>>;
    /// Records activity without bumping the version: activity is not an edit.
    fn set_device_last_activity(&self, id: DeviceId, at: Timestamp) -> StoreFuture<'_, ()>;

    /// Stores a hub's first CA; `Duplicate` when it has one already.
    fn insert_hub_ca<'a>(&'a self, ca: &'a HubCaRecord) -> StoreFuture<'a, ()>;
    fn get_hub_ca(&self, hub: HubId) -> StoreFuture<'_, Option<HubCaRecord>>;
    /// Every hub's CA, for the TLS listener at start.
    fn list_hub_cas(&self) -> StoreFuture<'_, Vec<HubCaRecord>>;
    /// Writes the hub at `expected_version` (as `update_hub`, without a quota), makes `ca`
    /// its CA, and deletes every certificate of its devices, clearing their
    /// `has_custom_certificate` and bumping their versions: one transaction. Answers the
    /// stored hub and the devices that lost a certificate.
    fn set_hub_ca<'a>(
        &'a self,
        hub: &'a HubRecord,
        expected_version: i64,
        ca: &'a HubCaRecord,
    ) -> StoreFuture<'a, (HubRecord, Vec<DeviceId>)>;

    fn insert_route<'a>(&'a self, route: &'a RouteRecord, hub_quota: u64) -> StoreFuture<'a, ()>;
    fn get_route(&self, id: RouteId) -> StoreFuture<'_, Option<RouteRecord>>;
    fn update_route<'a>(
        &'a self,
        route: &'a RouteRecord,
        expected_version: i64,
    ) -> StoreFuture<'a, RouteRecord>;
    fn delete_route(&self, id: RouteId, expected_version: Option<i64>) -> StoreFuture<'_, ()>;
    fn list_routes<'a>(
        &'a self,
        query: &'a ListQuery<RouteFilter>,
    ) -> StoreFuture<'a, Page<RouteRecord>>;

    fn insert_network<'a>(
        &'a self,
        network: &'a NetworkRecord,
        hub_quota: u64,
    ) -> StoreFuture<'a, ()>;
    fn get_network(&self, id: NetworkId) -> StoreFuture<'_, Option<NetworkRecord>>;
    fn delete_network(&self, id: NetworkId) -> StoreFuture<'_, ()>;
    fn list_networks<'a>(
        &'a self,
        query: &'a ListQuery<NetworkFilter>,
    ) -> StoreFuture<'a, Page<NetworkRecord>>;

    /// Registers a LoRaWAN device in its network (a DevEUI or DevAddr already used there is
    /// a `Duplicate`).
    fn insert_lorawan_device<'a>(&'a self, device: &'a LorawanDeviceRecord) -> StoreFuture<'a, ()>;
    fn get_lorawan_device<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
    ) -> StoreFuture<'a, Option<LorawanDeviceRecord>>;
    /// The devices of one network, or of every network (for the start), by DevEUI.
    fn list_lorawan_devices(
        &self,
        network: Option<NetworkId>,
    ) -> StoreFuture<'_, Vec<LorawanDeviceRecord>>;
    fn delete_lorawan_device<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Raises a device's uplink frame counter (never lowers it).
    fn set_lorawan_f_cnt_up<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
        f_cnt_up: u32,
    ) -> StoreFuture<'a, ()>;
    /// Appends a DevNonce to a device's used DevNonces.
    fn add_lorawan_dev_nonce<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
        dev_nonce: u16,
    ) -> StoreFuture<'a, ()>;

    /// Writes the metric rings (each row replaces the stored one of its object and
    /// resolution), in one transaction.
    fn save_metric_rings<'a>(&'a self, rings: &'a [MetricRingRecord]) -> StoreFuture<'a, ()>;
    /// Every stored metric ring, for the start.
    fn load_metric_rings(&self) -> StoreFuture<'_, Vec<MetricRingRecord>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_words() {
        let cases: &[(&str, Option<(OrderField, SortDirection)>)] = &[
            ("name_asc", Some((OrderField::Name, SortDirection::Asc))),
            (
                "created_at_desc",
                Some((OrderField::CreatedAt, SortDirection::Desc)),
            ),
            ("hub_id_asc", Some((OrderField::HubId, SortDirection::Asc))),
            (
                "allow_insecure_desc",
                Some((OrderField::AllowInsecure, SortDirection::Desc)),
            ),
            (
                "product_plan_asc",
                Some((OrderField::ProductPlan, SortDirection::Asc)),
            ),
            ("name", None),
            ("_asc", None),
            ("name_up", None),
            ("id_asc", None),
            ("NAME_ASC", None),
            ("", None),
        ];
        for (word, want) in cases {
            let got = word.parse::<OrderBy>().ok().map(|o| (o.field, o.direction));
            assert_eq!(got, *want, "{word}");
            if let Ok(o) = word.parse::<OrderBy>() {
                assert_eq!(o.to_string(), *word);
            }
        }
    }
}
