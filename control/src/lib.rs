//! iothub's control plane: the registry of accounts, API keys, hubs, devices, routes and
//! networks, kept in a SQL store (embedded SQLite by default, PostgreSQL for a cluster),
//! and the management API over it.
//!
//! Layout: [`records`] are the rows; [`store`] persists them ([`store::Store`], with
//! [`store::SqlStore`] over sqlx's `AnyPool` and the migrations in `control/migrations/`);
//! [`registry`] holds every rule (validation, quotas, hub lifecycle, tenancy, API keys) and
//! tells the broker about changes through the [`runtime::Runtime`] trait, which the binary
//! implements with the engine. [`api`] is the management REST API over the registry, with
//! its OpenAPI document (`control/openapi.json`). [`metrics`] keeps the metrics API's
//! time series in bounded rings, fed by the binary and saved in the store. [`pki`] makes
//! and judges certificates: each hub's CA, device certificates, custom CAs with their proof
//! of possession, and the TLS listeners' server certificate. A managed hub CA's private key is kept in plain text
//! in the database (see [`pki`]): protect the database like the keys it holds.
//!
//! This crate must never depend on the engine, the adapters, the MQTT codec or wasmtime:
//! the control plane is testable without a broker, and the broker without a database.

pub mod api;
pub mod ids;
pub mod metrics;
pub mod pki;
pub mod records;
pub mod registry;
pub mod runtime;
pub mod secret;
pub mod store;
pub mod testing;
pub mod time;
pub mod validate;

pub use ids::{AccountId, ApiKeyId, NetworkId, RouteId};
pub use registry::{Registry, RegistryConfig, RegistryError};
pub use runtime::{NoopRuntime, RecordingRuntime, Runtime};
pub use store::{SqlStore, Store, StoreError};
pub use time::Timestamp;
