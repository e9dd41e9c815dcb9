//! The JSON the API answers, field for field as the reference names them (and as
//! `control/openapi.json` documents them). Separate from the records on purpose: records
//! carry what clients must not see (`account_id` of devices, versions, secret hashes,
//! database passwords), and the API's shape must not move when a column does.

use iothub_model::{DeviceId, HubId, HubLimits, Plan};
use serde::Serialize;

use crate::ids::{AccountId, NetworkId, RouteId};
use crate::pki::DeviceCredentials;
use crate::records::{
    AccountRecord, DbConfig, DbEngine, DeviceStatus, HubStatus, LorawanDeviceRecord,
    MessageFilters, NetworkRecord, NetworkType, RestConfig, RouteConfig, RouteRecord, RouteType,
    S3Config,
};
use crate::registry::{DeviceInfo, HubInfo};
use crate::time::Timestamp;

#[derive(Debug, Serialize)]
pub struct HubView {
    pub id: HubId,
    pub name: String,
    pub status: HubStatus,
    pub product_plan: Plan,
    pub enabled: bool,
    pub device_count: u64,
    pub connected_device_count: u64,
    pub disable_events: bool,
    pub events_topic_prefix: String,
    pub enable_device_auto_provisioning: bool,
    pub has_custom_ca: bool,
    pub allow_anonymous: bool,
    pub limits: HubLimits,
    pub region: String,
    /// The owner (the reference's project/organization).
    pub account_id: AccountId,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<HubInfo> for HubView {
    fn from(info: HubInfo) -> Self {
        let HubInfo {
            hub,
            device_count,
            connected_device_count,
        } = info;
        Self {
            id: hub.id,
            name: hub.name,
            status: hub.status,
            product_plan: hub.plan,
            enabled: hub.enabled,
            device_count,
            connected_device_count,
            disable_events: hub.disable_events,
            events_topic_prefix: hub.events_topic_prefix,
            enable_device_auto_provisioning: hub.enable_device_auto_provisioning,
            has_custom_ca: hub.has_custom_ca,
            allow_anonymous: hub.allow_anonymous,
            limits: hub.limits,
            region: hub.region,
            account_id: hub.account_id,
            created_at: hub.created_at,
            updated_at: hub.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HubList {
    pub hubs: Vec<HubView>,
    pub total_count: u64,
}

#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub id: DeviceId,
    pub name: String,
    pub description: String,
    pub hub_id: HubId,
    pub status: DeviceStatus,
    pub is_connected: bool,
    pub last_activity_at: Timestamp,
    pub allow_insecure: bool,
    pub allow_multiple_connections: bool,
    pub message_filters: MessageFilters,
    pub has_custom_certificate: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<DeviceInfo> for DeviceView {
    fn from(info: DeviceInfo) -> Self {
        let DeviceInfo {
            device,
            is_connected,
        } = info;
        Self {
            id: device.id,
            name: device.name,
            description: device.description,
            hub_id: device.hub_id,
            status: device.status,
            is_connected,
            last_activity_at: device.last_activity_at,
            allow_insecure: device.allow_insecure,
            allow_multiple_connections: device.allow_multiple_connections,
            message_filters: device.message_filters,
            has_custom_certificate: device.has_custom_certificate,
            created_at: device.created_at,
            updated_at: device.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
    pub total_count: u64,
}

/// A device's key and certificate, answered once (at creation or renewal).
#[derive(Debug, Serialize)]
pub struct CertificateView {
    pub crt: String,
    pub key: String,
}

impl From<DeviceCredentials> for CertificateView {
    fn from(c: DeviceCredentials) -> Self {
        Self {
            crt: c.crt,
            key: c.key,
        }
    }
}

/// Device creation's answer: with a certificate unless the hub has a custom CA.
#[derive(Debug, Serialize)]
pub struct CreatedDevice {
    pub device: DeviceView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateView>,
}

/// `renew-certificate`'s answer.
#[derive(Debug, Serialize)]
pub struct RenewedCertificate {
    pub device: DeviceView,
    pub certificate: CertificateView,
}

/// A device with its current certificate (`GET`/`PUT /devices/{id}/certificate`).
#[derive(Debug, Serialize)]
pub struct DeviceCertificateView {
    pub device: DeviceView,
    pub certificate_pem: String,
}

/// A hub's CA (`GET /hubs/{id}/ca`).
#[derive(Debug, Serialize)]
pub struct HubCaView {
    pub ca_cert_pem: String,
}

/// A database route's target as shown: the password is write-only.
#[derive(Debug, Serialize)]
pub struct DbConfigView {
    pub engine: DbEngine,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub query: String,
}

impl From<DbConfig> for DbConfigView {
    fn from(c: DbConfig) -> Self {
        Self {
            engine: c.engine,
            host: c.host,
            port: c.port,
            dbname: c.dbname,
            username: c.username,
            query: c.query,
        }
    }
}

/// A route with its config block (get, create, update).
#[derive(Debug, Serialize)]
pub struct RouteView {
    pub id: RouteId,
    pub name: String,
    pub hub_id: HubId,
    pub topic: String,
    #[serde(rename = "type")]
    pub route_type: RouteType,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_config: Option<S3Config>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_config: Option<DbConfigView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest_config: Option<RestConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm_config: Option<WasmConfigView>,
}

/// A custom route as shown: the component by its hash and size (not its bytes), the init
/// config, and the grants without their secrets.
#[derive(Debug, Serialize)]
pub struct WasmConfigView {
    pub component_sha256: String,
    pub component_size: usize,
    pub config: serde_json::Value,
    pub grants: crate::records::WasmGrants,
}

impl From<crate::records::WasmConfig> for WasmConfigView {
    fn from(c: crate::records::WasmConfig) -> Self {
        let size = c.component_bytes().map_or(0, |b| b.len());
        let mut grants = c.grants.clone();
        if let Some(db) = &mut grants.database {
            db.password = String::new();
        }
        if let Some(bucket) = &mut grants.bucket {
            bucket.secret_access_key = None;
        }
        Self {
            component_sha256: c.component_sha256().unwrap_or_default(),
            component_size: size,
            config: c.config,
            grants,
        }
    }
}

impl From<RouteRecord> for RouteView {
    fn from(r: RouteRecord) -> Self {
        let (mut s3_config, mut db_config, mut rest_config) = (None, None, None);
        let mut wasm_config = None;
        match r.config {
            RouteConfig::S3(c) => {
                // The secret key is write-only.
                s3_config = Some(S3Config {
                    secret_access_key: None,
                    ..c
                });
            }
            RouteConfig::Database(c) => db_config = Some(c.into()),
            RouteConfig::Rest(c) => rest_config = Some(c),
            RouteConfig::Wasm(c) => wasm_config = Some(c.into()),
        }
        Self {
            id: r.id,
            name: r.name,
            hub_id: r.hub_id,
            topic: r.topic,
            route_type: r.route_type,
            created_at: r.created_at,
            updated_at: r.updated_at,
            s3_config,
            db_config,
            rest_config,
            wasm_config,
        }
    }
}

/// A route in a list: the reference omits the config block there.
#[derive(Debug, Serialize)]
pub struct RouteSummary {
    pub id: RouteId,
    pub name: String,
    pub hub_id: HubId,
    pub topic: String,
    #[serde(rename = "type")]
    pub route_type: RouteType,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<RouteRecord> for RouteSummary {
    fn from(r: RouteRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            hub_id: r.hub_id,
            topic: r.topic,
            route_type: r.route_type,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RouteList {
    pub routes: Vec<RouteSummary>,
    pub total_count: u64,
}

#[derive(Debug, Serialize)]
pub struct NetworkView {
    pub id: NetworkId,
    pub name: String,
    #[serde(rename = "type")]
    pub network_type: NetworkType,
    pub hub_id: HubId,
    pub topic_prefix: String,
    /// Where the network posts, relative to the API's base URL (`/networks/{id}`; LoRaWAN
    /// networks add `/chirpstack`, `/tts` or `/phy`).
    pub endpoint: String,
    /// LoRaWAN networks that push downlinks: the network server (its token is never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_server_url: Option<String>,
    pub created_at: Timestamp,
}

impl From<NetworkRecord> for NetworkView {
    fn from(n: NetworkRecord) -> Self {
        Self {
            id: n.id,
            name: n.name,
            network_type: n.network_type,
            hub_id: n.hub_id,
            topic_prefix: n.topic_prefix,
            endpoint: format!("/networks/{}", n.id),
            network_server_url: n.ns_url,
            created_at: n.created_at,
        }
    }
}

/// A LoRaWAN device as the API shows it: never its keys.
#[derive(Debug, Serialize)]
pub struct LorawanDeviceView {
    pub network_id: NetworkId,
    pub dev_eui: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_eui: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_addr: Option<String>,
    pub f_cnt_up: u32,
    pub has_app_key: bool,
    pub has_session_keys: bool,
    pub created_at: Timestamp,
}

impl From<LorawanDeviceRecord> for LorawanDeviceView {
    fn from(d: LorawanDeviceRecord) -> Self {
        Self {
            network_id: d.network_id,
            dev_eui: d.dev_eui,
            join_eui: d.join_eui,
            has_session_keys: d.nwk_s_key.is_some(),
            dev_addr: d.dev_addr,
            f_cnt_up: d.f_cnt_up,
            has_app_key: d.app_key.is_some(),
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LorawanDeviceList {
    pub lorawan_devices: Vec<LorawanDeviceView>,
    pub total_count: u64,
}

#[derive(Debug, Serialize)]
pub struct NetworkList {
    pub networks: Vec<NetworkView>,
    pub total_count: u64,
}

/// Network creation's answer: the secret is shown this once.
#[derive(Debug, Serialize)]
pub struct CreatedNetwork {
    pub network: NetworkView,
    pub secret: String,
}

#[derive(Debug, Serialize)]
pub struct AccountView {
    pub id: AccountId,
    pub name: String,
    pub is_admin: bool,
    pub created_at: Timestamp,
}

impl From<AccountRecord> for AccountView {
    fn from(a: AccountRecord) -> Self {
        Self {
            id: a.id,
            name: a.name,
            is_admin: a.is_admin,
            created_at: a.created_at,
        }
    }
}

/// Account creation's answer: the API key is shown this once.
#[derive(Debug, Serialize)]
pub struct CreatedAccount {
    pub account: AccountView,
    pub api_key: String,
}
