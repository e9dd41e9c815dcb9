//! The records the registry keeps, one per table. They hold validated values: the store
//! refuses a row that does not parse back into one (see `StoreError::Corrupt`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use iothub_model::{DeviceId, HubId, HubLimits, Plan};
use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, ApiKeyId, NetworkId, RouteId};
use crate::time::Timestamp;

/// Why a stored or submitted word is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind} (expected one of: {expected})")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Enums stored as their API word (`plan_shared`, `ready`, `s3` …), so a row reads the
/// same in SQL as in JSON.
macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        kind: $kind,
                        value: s.chars().take(64).collect(),
                        expected: concat!($($word, " "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum!(
    /// A hub's lifecycle state (the reference's `status`).
    HubStatus, "hub status" {
        Unknown = "unknown",
        Error = "error",
        /// Created or enabled; the runtime is being told.
        Enabling = "enabling",
        /// Serving devices.
        Ready = "ready",
        /// Disabled; live connections are being closed.
        Disabling = "disabling",
        /// Refuses every connection.
        Disabled = "disabled",
    }
);

word_enum!(
    /// Whether a device may connect.
    DeviceStatus, "device status" {
        Enabled = "enabled",
        Disabled = "disabled",
    }
);

word_enum!(
    /// The kind of outside target a route writes to.
    RouteType, "route type" {
        S3 = "s3",
        Database = "database",
        Rest = "rest",
        /// A custom route: an uploaded WebAssembly component of the route world.
        Wasm = "wasm",
    }
);

word_enum!(
    /// The kind of device-unaware ingress a network is.
    NetworkType, "network type" {
        Sigfox = "sigfox",
        Rest = "rest",
        Lorawan = "lorawan",
    }
);

word_enum!(
    /// How an S3 route names objects: one per topic (overwritten) or one per message.
    S3Strategy, "s3 strategy" {
        PerTopic = "per_topic",
        PerMessage = "per_message",
    }
);

word_enum!(
    /// The database a database route writes to.
    DbEngine, "database engine" {
        Postgresql = "postgresql",
        Mysql = "mysql",
    }
);

word_enum!(
    /// The HTTP method of a REST route.
    RestVerb, "http verb" {
        Get = "get",
        Post = "post",
        Put = "put",
        Patch = "patch",
        Delete = "delete",
    }
);

/// The product plan's API word (`plan_shared` …): `Plan` lives in the model crate, which
/// serialises it but has no `FromStr`.
pub fn plan_as_str(plan: Plan) -> &'static str {
    match plan {
        Plan::Shared => "plan_shared",
        Plan::Dedicated => "plan_dedicated",
        Plan::Ha => "plan_ha",
    }
}

/// Parses `plan_shared|plan_dedicated|plan_ha`.
pub fn parse_plan(s: &str) -> Result<Plan, UnknownValue> {
    match s {
        "plan_shared" => Ok(Plan::Shared),
        "plan_dedicated" => Ok(Plan::Dedicated),
        "plan_ha" => Ok(Plan::Ha),
        _ => Err(UnknownValue {
            kind: "product plan",
            value: s.chars().take(64).collect(),
            expected: "plan_shared plan_dedicated plan_ha",
        }),
    }
}

/// An account: owns hubs (and everything in them) and API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountRecord {
    pub id: AccountId,
    pub name: String,
    /// The bootstrap account; the only one allowed to create accounts.
    pub is_admin: bool,
    pub created_at: Timestamp,
}

/// An API key. The secret is never stored: `secret_hash` is the hex SHA-256 of the token.
/// Tokens are 256 random bits, so a plain hash is as strong as a slow one (there is no
/// dictionary to try) and lets `authenticate` look the key up by an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub account_id: AccountId,
    #[serde(skip)]
    pub secret_hash: String,
    pub created_at: Timestamp,
}

/// A hub: one isolated MQTT namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubRecord {
    pub id: HubId,
    pub account_id: AccountId,
    pub name: String,
    pub status: HubStatus,
    #[serde(rename = "product_plan")]
    pub plan: Plan,
    pub enabled: bool,
    pub disable_events: bool,
    pub events_topic_prefix: String,
    pub enable_device_auto_provisioning: bool,
    pub has_custom_ca: bool,
    pub allow_anonymous: bool,
    pub limits: HubLimits,
    pub region: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every stored change; the API's ETag.
    pub version: i64,
}

/// Message filters are the model's types (their templates are expanded by the engine).
pub use iothub_model::{FilterPolicy, FilterRule, MessageFilters};

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub hub_id: HubId,
    pub account_id: AccountId,
    /// Unique in its hub; read-only after creation.
    pub name: String,
    pub description: String,
    pub status: DeviceStatus,
    pub allow_insecure: bool,
    pub allow_multiple_connections: bool,
    pub message_filters: MessageFilters,
    pub has_custom_certificate: bool,
    /// Lowercase hex SHA-256 of the DER of the device's current certificate (issued by the
    /// hub or set by the user), or `None` when it has none (hubs with a custom CA identify
    /// their devices by the CN instead). The TLS listener admits a certificate for this
    /// device only when its fingerprint is this one, so a renewed or replaced certificate
    /// stops working at once. Read from `device_certificates`, never written through the
    /// device row.
    pub certificate_fingerprint: Option<String>,
    /// The epoch when the device never connected (as the reference answers).
    pub last_activity_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
}

impl DeviceRecord {
    pub fn enabled(&self) -> bool {
        self.status == DeviceStatus::Enabled
    }
}

/// A hub's certificate authority: the one the hub made at creation (with its key), or the
/// custom one the user uploaded (no key: the hub then issues no certificates).
#[derive(Clone, PartialEq, Eq)]
pub struct HubCaRecord {
    pub hub_id: HubId,
    pub cert_pem: String,
    /// PKCS#8 PEM of a managed CA's private key, kept in plain text in the database.
    pub key_pem: Option<String>,
    pub is_custom: bool,
    pub created_at: Timestamp,
}

impl fmt::Debug for HubCaRecord {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubCaRecord")
            .field("hub_id", &self.hub_id)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "[redacted]"))
            .field("is_custom", &self.is_custom)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A device's current certificate (its key is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificateRecord {
    pub device_id: DeviceId,
    pub cert_pem: String,
    /// Lowercase hex SHA-256 of the DER; unique among devices.
    pub fingerprint_sha256: String,
    /// Set by the user rather than issued by the hub's CA.
    pub is_custom: bool,
    pub not_after: Timestamp,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket_region: String,
    pub bucket_name: String,
    #[serde(default)]
    pub object_prefix: String,
    pub strategy: S3Strategy,
    /// An S3-compatible server's base URL (path-style requests); absent: AWS's endpoint
    /// for the region. An iothub extension, like the two credentials below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Write-only: never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    pub engine: DbEngine,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// SQL run per message; `$TOPIC` and `$PAYLOAD` are bound parameters.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    pub verb: RestVerb,
    pub uri: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The database a custom route may run statements on (its grant): a database route's
/// target without the query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbGrant {
    pub engine: DbEngine,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    /// Write-only: never shown by the API.
    #[serde(default)]
    pub password: String,
}

impl DbConfig {
    /// The database this route writes to, as a grant.
    pub fn grant(&self) -> DbGrant {
        DbGrant {
            engine: self.engine,
            host: self.host.clone(),
            port: self.port,
            dbname: self.dbname.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

/// What a custom route may reach; every capability not granted answers `denied`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmGrants {
    /// An http:// or https:// URL: its scheme, host and port are the one origin the
    /// route may send requests to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DbGrant>,
    /// The bucket (and key prefix, `object_prefix`) it may write objects to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<S3Config>,
    /// Whether it may publish back into its hub.
    #[serde(default)]
    pub hub_publish: bool,
}

/// A custom route: an uploaded component (base64 of a wasm32-wasip2 component of the
/// `iothub:route@0.1.0` world), the JSON its `init` gets, and its grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    pub component: String,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    #[serde(default)]
    pub grants: WasmGrants,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Largest uploaded component, decoded.
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;

impl WasmConfig {
    /// The component's bytes; the error says what is wrong with the field.
    pub fn component_bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        if self.component.len() > MAX_COMPONENT_BYTES / 3 * 4 + 4 {
            return Err(format!(
                "the component is larger than {MAX_COMPONENT_BYTES} bytes"
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.component.trim())
            .map_err(|e| format!("not base64 (standard alphabet, padded): {e}"))?;
        if bytes.is_empty() {
            return Err("the component is empty".to_owned());
        }
        Ok(bytes)
    }

    /// SHA-256 of the component, lowercase hex (shown instead of the bytes).
    pub fn component_sha256(&self) -> Option<String> {
        use sha2::Digest as _;
        let bytes = self.component_bytes().ok()?;
        Some(
            sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
}

/// A route's target: exactly one of the reference's three config blocks. Serialised
/// externally tagged, i.e. `{"s3_config": {...}}`, the shape of the API's field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteConfig {
    #[serde(rename = "s3_config")]
    S3(S3Config),
    #[serde(rename = "db_config")]
    Database(DbConfig),
    #[serde(rename = "rest_config")]
    Rest(RestConfig),
    #[serde(rename = "wasm_config")]
    Wasm(WasmConfig),
}

impl RouteConfig {
    pub fn route_type(&self) -> RouteType {
        match self {
            Self::S3(_) => RouteType::S3,
            Self::Database(_) => RouteType::Database,
            Self::Rest(_) => RouteType::Rest,
            Self::Wasm(_) => RouteType::Wasm,
        }
    }
}

/// A route of a hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteRecord {
    pub id: RouteId,
    pub hub_id: HubId,
    pub account_id: AccountId,
    pub name: String,
    /// An MQTT filter.
    pub topic: String,
    #[serde(rename = "type")]
    pub route_type: RouteType,
    #[serde(flatten)]
    pub config: RouteConfig,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
}

/// A device-unaware network of a hub. Networks have no update, hence no version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkRecord {
    pub id: NetworkId,
    pub hub_id: HubId,
    pub account_id: AccountId,
    pub name: String,
    #[serde(rename = "type")]
    pub network_type: NetworkType,
    /// A topic name (no wildcards) the network's messages are published under.
    pub topic_prefix: String,
    /// Hex SHA-256 of the secret shown once at creation.
    #[serde(skip)]
    pub secret_hash: String,
    /// LoRaWAN only: the network server's base URL (`http://host:port`, no trailing `/`)
    /// downlinks are POSTed to (ChirpStack v4 REST); `None`: downlinks wait for a poll.
    pub ns_url: Option<String>,
    /// The network server's API token, sent as `Authorization: Bearer`; never shown.
    #[serde(skip)]
    pub ns_token: Option<String>,
    pub created_at: Timestamp,
}

/// A LoRaWAN device of a LoRaWAN network: what the hub checks its raw PHYPayloads with.
/// EUIs, DevAddr and keys are lowercase hex (validated by the registry); keys are never
/// shown by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LorawanDeviceRecord {
    pub network_id: NetworkId,
    /// 16 hex digits, MSB first.
    pub dev_eui: String,
    pub hub_id: HubId,
    pub account_id: AccountId,
    pub join_eui: Option<String>,
    /// OTAA root key (32 hex digits): join-requests are checked with it.
    pub app_key: Option<String>,
    /// ABP session: DevAddr (8 hex digits) with both session keys, or none of the three.
    pub dev_addr: Option<String>,
    pub nwk_s_key: Option<String>,
    pub app_s_key: Option<String>,
    /// The lowest 32-bit uplink frame counter still accepted.
    pub f_cnt_up: u32,
    /// The DevNonces of the join-requests accepted from the device (never accepted again).
    pub dev_nonces: Vec<u16>,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in HubStatus::ALL {
            assert_eq!(s.as_str().parse::<HubStatus>(), Ok(*s));
        }
        for t in RouteType::ALL {
            assert_eq!(t.as_str().parse::<RouteType>(), Ok(*t));
        }
        for p in [Plan::Shared, Plan::Dedicated, Plan::Ha] {
            assert_eq!(parse_plan(plan_as_str(p)), Ok(p));
        }
        let err = "ready!".parse::<HubStatus>().unwrap_err();
        assert_eq!(err.kind, "hub status");
        assert!(parse_plan("plan_free").is_err());
    }

    #[test]
    fn route_config_json_shape() {
        let config = RouteConfig::Rest(RestConfig {
            verb: RestVerb::Post,
            uri: "http://127.0.0.1:9/x".into(),
            headers: BTreeMap::new(),
        });
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"rest_config": {"verb": "post", "uri": "http://127.0.0.1:9/x", "headers": {}}})
        );
        let back: RouteConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
    }
}
