//! [`SqlStore`]: the [`Store`] over sqlx's `AnyPool`, one code path for SQLite and
//! PostgreSQL.
//!
//! Portability rules this file keeps (both databases accept every statement as written):
//! - `$n` placeholders (SQLite reads `$1` as a positional parameter too);
//! - BOOLEAN columns are read through `CASE WHEN c THEN 1 ELSE 0 END`, because the `Any`
//!   driver refuses a column SQLite declares BOOLEAN; they are written as bound `bool`s;
//! - write transactions begin with `BEGIN IMMEDIATE` on SQLite (so a transaction that reads
//!   before it writes cannot fail to upgrade its lock) and, on PostgreSQL, lock the parent
//!   row with a no-op `UPDATE` before counting its children (quotas stay exact under
//!   concurrent inserts without `SELECT … FOR UPDATE`, which SQLite lacks).

use std::str::FromStr;

use iothub_model::{DeviceId, HubId};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Row};

use super::{
    DeviceFilter, HubFilter, ListQuery, NetworkFilter, OrderBy, OrderField, Page, RouteFilter,
    SortDirection, Store, StoreError, StoreFuture,
};
use crate::ids::{AccountId, NetworkId, RouteId};
use crate::metrics::{MetricBucket, MetricObject, MetricRingRecord, Resolution};
use crate::records::{
    AccountRecord, ApiKeyRecord, DeviceCertificateRecord, DeviceRecord, HubCaRecord, HubRecord,
    LorawanDeviceRecord, NetworkRecord, RouteRecord, parse_plan, plan_as_str,
};
use crate::time::Timestamp;

/// The migrations, in order. A migration is never edited once released: add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/0001_registry.sql"),
    ),
    (
        2,
        "certificates",
        include_str!("../../migrations/0002_certificates.sql"),
    ),
    (
        3,
        "metrics",
        include_str!("../../migrations/0003_metrics.sql"),
    ),
    (
        4,
        "lorawan",
        include_str!("../../migrations/0004_lorawan.sql"),
    ),
    (
        5,
        "network_server",
        include_str!("../../migrations/0005_network_server.sql"),
    ),
];

/// An arbitrary constant naming iothub's migration lock among PostgreSQL advisory locks.
const PG_MIGRATION_LOCK: i64 = 0x696f_7468_7562;

/// Which database a [`SqlStore`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite,
    Postgres,
}

impl StoreBackend {
    /// The backend a store URL names.
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            // Never echo a URL that may hold a password.
            let scheme = url.split_once(':').map_or("", |(s, _)| s);
            Err(StoreError::UnsupportedUrl(format!("{scheme}:…")))
        }
    }
}

/// The registry's SQL store.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: StoreBackend,
}

impl SqlStore {
    /// Connects to `sqlite://<path>?mode=rwc` or `postgres://…`. Does not migrate: call
    /// [`Store::migrate`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let backend = StoreBackend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(url)?;
        // SQLite serialises writers anyway; a few connections let reads proceed beside a
        // write (in WAL mode, set below).
        let max = match backend {
            StoreBackend::Sqlite => 4,
            StoreBackend::Postgres => 8,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await?;
        if backend == StoreBackend::Sqlite {
            // WAL is a property of the file: readers no longer wait for a writer.
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_optional(&pool)
                .await?;
        }
        Ok(Self { pool, backend })
    }

    /// The URL of the SQLite database file at `path` (created on first open). `%`, `?` and
    /// `#` in the path are percent-encoded, as the SQLite URL parser expects.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        let mut url = String::from("sqlite://");
        for c in path.display().to_string().chars() {
            match c {
                '%' => url.push_str("%25"),
                '?' => url.push_str("%3F"),
                '#' => url.push_str("%23"),
                c => url.push(c),
            }
        }
        url.push_str("?mode=rwc");
        url
    }

    pub fn backend(&self) -> StoreBackend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection (waits for those in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            StoreBackend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            StoreBackend::Postgres => self.pool.begin().await?,
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend == StoreBackend::Postgres {
            sqlx::query("SELECT CAST(pg_advisory_xact_lock($1) AS TEXT) AS locked")
                .bind(PG_MIGRATION_LOCK)
                .fetch_one(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS iothub_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM iothub_migrations")
            .fetch_one(&mut *tx)
            .await?;
        let current: i64 = row.try_get("v")?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tracing::info!(message = "applying migration", version, name);
            for statement in statements(sql) {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO iothub_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(Timestamp::now().as_micros())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Row decoding

fn text(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    Ok(row.try_get::<String, _>(column)?)
}

fn int(row: &AnyRow, column: &str) -> Result<i64, StoreError> {
    Ok(row.try_get::<i64, _>(column)?)
}

/// BOOLEAN columns are selected as `CASE … THEN 1 ELSE 0 END` (see the module docs).
fn flag(row: &AnyRow, column: &str) -> Result<bool, StoreError> {
    Ok(int(row, column)? != 0)
}

fn stamp(row: &AnyRow, column: &str) -> Result<Timestamp, StoreError> {
    Ok(Timestamp::from_micros(int(row, column)?))
}

fn parsed<T>(row: &AnyRow, table: &'static str, column: &'static str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let value = text(row, column)?;
    value.parse().map_err(|e: T::Err| StoreError::Corrupt {
        table,
        column,
        reason: e.to_string(),
        value,
    })
}

fn json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    table: &'static str,
    column: &'static str,
) -> Result<T, StoreError> {
    let value = text(row, column)?;
    serde_json::from_str(&value).map_err(|e| StoreError::Corrupt {
        table,
        column,
        reason: e.to_string(),
        value,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising our own plain structs (string keys, no maps with non-string keys) cannot
    // fail; an empty object would be caught by the reader as corrupt rather than panic.
    serde_json::to_string(value).unwrap_or_default()
}

fn bool_col(column: &str) -> String {
    format!("CASE WHEN {column} THEN 1 ELSE 0 END AS {column}")
}

const ACCOUNT_TABLE: &str = "accounts";
const HUB_TABLE: &str = "hubs";
const DEVICE_TABLE: &str = "devices";
const ROUTE_TABLE: &str = "routes";
const NETWORK_TABLE: &str = "networks";

fn account_columns() -> String {
    format!("id, name, {}, created_at", bool_col("is_admin"))
}

fn account_from(row: &AnyRow) -> Result<AccountRecord, StoreError> {
    Ok(AccountRecord {
        id: parsed(row, ACCOUNT_TABLE, "id")?,
        name: text(row, "name")?,
        is_admin: flag(row, "is_admin")?,
        created_at: stamp(row, "created_at")?,
    })
}

fn api_key_from(row: &AnyRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: parsed(row, "api_keys", "id")?,
        account_id: parsed(row, "api_keys", "account_id")?,
        secret_hash: text(row, "secret_hash")?,
        created_at: stamp(row, "created_at")?,
    })
}

fn hub_columns() -> String {
    format!(
        "id, account_id, name, status, plan, {}, {}, events_topic_prefix, {}, {}, {}, limits, \
         region, created_at, updated_at, version",
        bool_col("enabled"),
        bool_col("disable_events"),
        bool_col("enable_device_auto_provisioning"),
        bool_col("has_custom_ca"),
        bool_col("allow_anonymous"),
    )
}

fn hub_from(row: &AnyRow) -> Result<HubRecord, StoreError> {
    let plan = text(row, "plan")?;
    Ok(HubRecord {
        id: parsed(row, HUB_TABLE, "id")?,
        account_id: parsed(row, HUB_TABLE, "account_id")?,
        name: text(row, "name")?,
        status: parsed(row, HUB_TABLE, "status")?,
        plan: parse_plan(&plan).map_err(|e| StoreError::Corrupt {
            table: HUB_TABLE,
            column: "plan",
            reason: e.to_string(),
            value: plan.clone(),
        })?,
        enabled: flag(row, "enabled")?,
        disable_events: flag(row, "disable_events")?,
        events_topic_prefix: text(row, "events_topic_prefix")?,
        enable_device_auto_provisioning: flag(row, "enable_device_auto_provisioning")?,
        has_custom_ca: flag(row, "has_custom_ca")?,
        allow_anonymous: flag(row, "allow_anonymous")?,
        limits: json(row, HUB_TABLE, "limits")?,
        region: text(row, "region")?,
        created_at: stamp(row, "created_at")?,
        updated_at: stamp(row, "updated_at")?,
        version: int(row, "version")?,
    })
}

/// The device's certificate fingerprint comes from `device_certificates` through a scalar
/// subquery rather than a join, so list filters and orders keep naming the devices'
/// columns unqualified.
fn device_columns() -> String {
    format!(
        "id, hub_id, account_id, name, description, status, {}, {}, message_filters, {}, \
         last_activity_at, created_at, updated_at, version, {DEVICE_FINGERPRINT} AS certificate_fingerprint",
        bool_col("allow_insecure"),
        bool_col("allow_multiple_connections"),
        bool_col("has_custom_certificate"),
    )
}

const DEVICE_FINGERPRINT: &str = "(SELECT c.fingerprint_sha256 FROM device_certificates c \
     WHERE c.device_id = devices.id)";

fn device_from(row: &AnyRow) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: parsed(row, DEVICE_TABLE, "id")?,
        hub_id: parsed(row, DEVICE_TABLE, "hub_id")?,
        account_id: parsed(row, DEVICE_TABLE, "account_id")?,
        name: text(row, "name")?,
        description: text(row, "description")?,
        status: parsed(row, DEVICE_TABLE, "status")?,
        allow_insecure: flag(row, "allow_insecure")?,
        allow_multiple_connections: flag(row, "allow_multiple_connections")?,
        message_filters: json(row, DEVICE_TABLE, "message_filters")?,
        has_custom_certificate: flag(row, "has_custom_certificate")?,
        certificate_fingerprint: row.try_get::<Option<String>, _>("certificate_fingerprint")?,
        last_activity_at: stamp(row, "last_activity_at")?,
        created_at: stamp(row, "created_at")?,
        updated_at: stamp(row, "updated_at")?,
        version: int(row, "version")?,
    })
}

fn hub_ca_columns() -> String {
    format!(
        "hub_id, cert_pem, key_pem, {}, created_at",
        bool_col("is_custom")
    )
}

fn hub_ca_from(row: &AnyRow) -> Result<HubCaRecord, StoreError> {
    Ok(HubCaRecord {
        hub_id: parsed(row, "hub_cas", "hub_id")?,
        cert_pem: text(row, "cert_pem")?,
        key_pem: row.try_get::<Option<String>, _>("key_pem")?,
        is_custom: flag(row, "is_custom")?,
        created_at: stamp(row, "created_at")?,
    })
}

fn device_certificate_columns() -> String {
    format!(
        "device_id, cert_pem, fingerprint_sha256, {}, not_after, created_at",
        bool_col("is_custom")
    )
}

fn device_certificate_from(row: &AnyRow) -> Result<DeviceCertificateRecord, StoreError> {
    Ok(DeviceCertificateRecord {
        device_id: parsed(row, "device_certificates", "device_id")?,
        cert_pem: text(row, "cert_pem")?,
        fingerprint_sha256: text(row, "fingerprint_sha256")?,
        is_custom: flag(row, "is_custom")?,
        not_after: stamp(row, "not_after")?,
        created_at: stamp(row, "created_at")?,
    })
}

const ROUTE_COLUMNS: &str =
    "id, hub_id, account_id, name, topic, route_type, config, created_at, updated_at, version";

fn metric_ring_from(row: &AnyRow) -> Result<MetricRingRecord, StoreError> {
    const TABLE: &str = "metric_rings";
    let kind = text(row, "object_type")?;
    let id = text(row, "object_id")?;
    let object = MetricObject::parse(&kind, &id).ok_or_else(|| StoreError::Corrupt {
        table: TABLE,
        column: "object_id",
        value: format!("{kind} {id}"),
        reason: "not a hub or device id".into(),
    })?;
    let resolution = text(row, "resolution")?;
    let resolution = resolution
        .parse::<Resolution>()
        .map_err(|()| StoreError::Corrupt {
            table: TABLE,
            column: "resolution",
            value: resolution,
            reason: "not a metric resolution".into(),
        })?;
    Ok(MetricRingRecord {
        object,
        hub_id: parsed(row, TABLE, "hub_id")?,
        resolution,
        buckets: json::<Vec<MetricBucket>>(row, TABLE, "buckets")?,
        updated_at: stamp(row, "updated_at")?,
    })
}

fn route_from(row: &AnyRow) -> Result<RouteRecord, StoreError> {
    let route = RouteRecord {
        id: parsed(row, ROUTE_TABLE, "id")?,
        hub_id: parsed(row, ROUTE_TABLE, "hub_id")?,
        account_id: parsed(row, ROUTE_TABLE, "account_id")?,
        name: text(row, "name")?,
        topic: text(row, "topic")?,
        route_type: parsed(row, ROUTE_TABLE, "route_type")?,
        config: json(row, ROUTE_TABLE, "config")?,
        created_at: stamp(row, "created_at")?,
        updated_at: stamp(row, "updated_at")?,
        version: int(row, "version")?,
    };
    if route.config.route_type() != route.route_type {
        return Err(StoreError::Corrupt {
            table: ROUTE_TABLE,
            column: "config",
            value: route.route_type.to_string(),
            reason: format!("holds a {} config", route.config.route_type()),
        });
    }
    Ok(route)
}

const NETWORK_COLUMNS: &str = "id, hub_id, account_id, name, network_type, topic_prefix, \
     secret_hash, ns_url, ns_token, created_at";

fn network_from(row: &AnyRow) -> Result<NetworkRecord, StoreError> {
    Ok(NetworkRecord {
        id: parsed(row, NETWORK_TABLE, "id")?,
        hub_id: parsed(row, NETWORK_TABLE, "hub_id")?,
        account_id: parsed(row, NETWORK_TABLE, "account_id")?,
        name: text(row, "name")?,
        network_type: parsed(row, NETWORK_TABLE, "network_type")?,
        topic_prefix: text(row, "topic_prefix")?,
        secret_hash: text(row, "secret_hash")?,
        ns_url: row.try_get::<Option<String>, _>("ns_url")?,
        ns_token: row.try_get::<Option<String>, _>("ns_token")?,
        created_at: stamp(row, "created_at")?,
    })
}

const LORAWAN_COLUMNS: &str = "network_id, dev_eui, hub_id, account_id, join_eui, app_key, \
     dev_addr, nwk_s_key, app_s_key, f_cnt_up, dev_nonces, created_at";

fn lorawan_from(row: &AnyRow) -> Result<LorawanDeviceRecord, StoreError> {
    const TABLE: &str = "lorawan_devices";
    let f_cnt_up = int(row, "f_cnt_up")?;
    Ok(LorawanDeviceRecord {
        network_id: parsed(row, TABLE, "network_id")?,
        dev_eui: text(row, "dev_eui")?,
        hub_id: parsed(row, TABLE, "hub_id")?,
        account_id: parsed(row, TABLE, "account_id")?,
        join_eui: row.try_get::<Option<String>, _>("join_eui")?,
        app_key: row.try_get::<Option<String>, _>("app_key")?,
        dev_addr: row.try_get::<Option<String>, _>("dev_addr")?,
        nwk_s_key: row.try_get::<Option<String>, _>("nwk_s_key")?,
        app_s_key: row.try_get::<Option<String>, _>("app_s_key")?,
        f_cnt_up: u32::try_from(f_cnt_up).map_err(|e| StoreError::Corrupt {
            table: TABLE,
            column: "f_cnt_up",
            value: f_cnt_up.to_string(),
            reason: e.to_string(),
        })?,
        dev_nonces: dev_nonces(&text(row, "dev_nonces")?)?,
        created_at: stamp(row, "created_at")?,
    })
}

/// `"00a1,ff02,"`: the DevNonces column (4 lowercase hex digits, each followed by a comma).
fn dev_nonces(column: &str) -> Result<Vec<u16>, StoreError> {
    column
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| {
            u16::from_str_radix(n, 16).map_err(|e| StoreError::Corrupt {
                table: "lorawan_devices",
                column: "dev_nonces",
                value: n.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Dynamic queries (lists): only whitelisted column names are ever formatted into SQL;
// every value is a bound parameter.

#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
    Bool(bool),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_all<'q>(mut query: AnyQuery<'q>, args: &[Arg]) -> AnyQuery<'q> {
    for arg in args {
        query = match arg {
            Arg::Text(s) => query.bind(s.clone()),
            Arg::Int(i) => query.bind(*i),
            Arg::Bool(b) => query.bind(*b),
        };
    }
    query
}

#[derive(Debug, Default)]
struct Where {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    fn eq(&mut self, column: &str, arg: Arg) {
        self.args.push(arg);
        self.clauses
            .push(format!("{column} = ${}", self.args.len()));
    }

    fn eq_opt<T: ToString>(&mut self, column: &str, value: Option<&T>) {
        if let Some(v) = value {
            self.eq(column, Arg::Text(v.to_string()));
        }
    }

    fn flag_opt(&mut self, column: &str, value: Option<bool>) {
        if let Some(v) = value {
            self.eq(column, Arg::Bool(v));
        }
    }

    /// Case-insensitive substring match (`LOWER` on both sides, so each database applies
    /// its own notion of lower case consistently; `%`, `_` and `\` in the needle are
    /// literal).
    fn contains(&mut self, column: &str, needle: Option<&String>) {
        let Some(needle) = needle else { return };
        let mut pattern = String::with_capacity(needle.len() + 2);
        pattern.push('%');
        for c in needle.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        self.args.push(Arg::Text(pattern));
        self.clauses.push(format!(
            "LOWER({column}) LIKE LOWER(${}) ESCAPE '\\'",
            self.args.len()
        ));
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// The column an order field sorts on, per table; `None` when the resource has no such
/// field.
fn order_column(table: &'static str, field: OrderField) -> Option<&'static str> {
    use OrderField as F;
    match (table, field) {
        (_, F::Name) => Some("name"),
        (_, F::CreatedAt) => Some("created_at"),
        (HUB_TABLE | DEVICE_TABLE | ROUTE_TABLE, F::UpdatedAt) => Some("updated_at"),
        (HUB_TABLE | DEVICE_TABLE, F::Status) => Some("status"),
        (HUB_TABLE, F::ProductPlan) => Some("plan"),
        (DEVICE_TABLE | ROUTE_TABLE | NETWORK_TABLE, F::HubId) => Some("hub_id"),
        (DEVICE_TABLE, F::AllowInsecure) => Some("allow_insecure"),
        (ROUTE_TABLE, F::Type) => Some("route_type"),
        (NETWORK_TABLE, F::Type) => Some("network_type"),
        _ => None,
    }
}

/// What a list reads: the table, its resource name for errors, its select list and row
/// decoder.
struct Listing<T> {
    table: &'static str,
    resource: &'static str,
    columns: String,
    decode: fn(&AnyRow) -> Result<T, StoreError>,
}

impl SqlStore {
    async fn list<T>(
        &self,
        listing: Listing<T>,
        filter: Where,
        order_by: OrderBy,
        paging: Option<super::Paging>,
    ) -> Result<Page<T>, StoreError> {
        let Listing {
            table,
            resource,
            columns,
            decode,
        } = listing;
        let column = order_column(table, order_by.field).ok_or(StoreError::UnsupportedOrder {
            resource,
            order_by: order_by.field.as_str(),
        })?;
        let direction = match order_by.direction {
            SortDirection::Asc => "ASC",
            SortDirection::Desc => "DESC",
        };
        let where_sql = filter.sql();
        let count_sql = format!("SELECT COUNT(*) AS n FROM {table}{where_sql}");
        let count_row = bind_all(sqlx::query(&count_sql), &filter.args)
            .fetch_one(&self.pool)
            .await?;
        let total_count = u64::try_from(int(&count_row, "n")?).unwrap_or(0);

        let mut args = filter.args;
        let mut sql = format!(
            "SELECT {columns} FROM {table}{where_sql} ORDER BY {column} {direction}, id ASC"
        );
        if let Some(p) = paging {
            let size = i64::from(p.page_size);
            let offset = i64::from(p.page.saturating_sub(1)) * size;
            args.push(Arg::Int(size));
            args.push(Arg::Int(offset));
            sql.push_str(&format!(
                " LIMIT ${} OFFSET ${}",
                args.len() - 1,
                args.len()
            ));
        }
        let rows = bind_all(sqlx::query(&sql), &args)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, total_count })
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the writes

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn unique_as_duplicate(e: sqlx::Error, resource: &'static str, field: &'static str) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Duplicate { resource, field }
    } else {
        StoreError::Database(e)
    }
}

/// After an `UPDATE … WHERE id = $1 AND version = $2` touched no row: was the row gone,
/// or at another version?
async fn missing_or_conflict(
    conn: &mut AnyConnection,
    table: &'static str,
    resource: &'static str,
    id: String,
    expected: i64,
) -> StoreError {
    let sql = format!("SELECT version FROM {table} WHERE id = $1");
    match sqlx::query(&sql)
        .bind(id.clone())
        .fetch_optional(conn)
        .await
    {
        Ok(Some(_)) => StoreError::VersionConflict {
            resource,
            id,
            expected,
        },
        Ok(None) => StoreError::NotFound { resource, id },
        Err(e) => StoreError::Database(e),
    }
}

/// Locks a parent row for the rest of the transaction (PostgreSQL row lock; on SQLite the
/// `BEGIN IMMEDIATE` already excludes other writers). `NotFound` when it does not exist.
async fn lock_row(
    conn: &mut AnyConnection,
    table: &'static str,
    resource: &'static str,
    id: String,
) -> Result<(), StoreError> {
    let sql = format!("UPDATE {table} SET id = id WHERE id = $1");
    let done = sqlx::query(&sql).bind(id.clone()).execute(conn).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound { resource, id });
    }
    Ok(())
}

async fn count(conn: &mut AnyConnection, sql: &str, args: &[Arg]) -> Result<u64, StoreError> {
    let row = bind_all(sqlx::query(sql), args).fetch_one(conn).await?;
    Ok(u64::try_from(int(&row, "n")?).unwrap_or(0))
}

fn check_quota(resource: &'static str, current: u64, quota: u64) -> Result<(), StoreError> {
    if current >= quota {
        return Err(StoreError::QuotaExceeded {
            resource,
            current,
            quota,
        });
    }
    Ok(())
}

/// Writes every column of a hub at `expected` version (the version is bumped).
async fn write_hub(
    conn: &mut AnyConnection,
    hub: &HubRecord,
    expected: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE hubs SET name = $3, status = $4, plan = $5, enabled = $6, \
         disable_events = $7, events_topic_prefix = $8, \
         enable_device_auto_provisioning = $9, has_custom_ca = $10, \
         allow_anonymous = $11, limits = $12, region = $13, updated_at = $14, \
         version = version + 1 \
         WHERE id = $1 AND version = $2",
    )
    .bind(hub.id.to_string())
    .bind(expected)
    .bind(hub.name.clone())
    .bind(hub.status.as_str())
    .bind(plan_as_str(hub.plan))
    .bind(hub.enabled)
    .bind(hub.disable_events)
    .bind(hub.events_topic_prefix.clone())
    .bind(hub.enable_device_auto_provisioning)
    .bind(hub.has_custom_ca)
    .bind(hub.allow_anonymous)
    .bind(to_json(&hub.limits))
    .bind(hub.region.clone())
    .bind(hub.updated_at.as_micros())
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        let id = hub.id.to_string();
        return Err(missing_or_conflict(conn, HUB_TABLE, "hub", id, expected).await);
    }
    Ok(())
}

/// A hub-issued certificate cannot be stored for a device of a hub with a custom CA (the
/// hub switched while the certificate was being made): the caller retries and sees the
/// custom CA.
async fn check_hub_issues(
    conn: &mut AnyConnection,
    hub: &HubId,
    certificate: &DeviceCertificateRecord,
) -> Result<(), StoreError> {
    if certificate.is_custom {
        return Ok(());
    }
    let sql = format!(
        "SELECT {} FROM hubs WHERE id = $1",
        bool_col("has_custom_ca")
    );
    let row = sqlx::query(&sql)
        .bind(hub.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            resource: "hub",
            id: hub.to_string(),
        })?;
    if flag(&row, "has_custom_ca")? {
        return Err(StoreError::VersionConflict {
            resource: "hub",
            id: hub.to_string(),
            expected: 0,
        });
    }
    Ok(())
}

async fn insert_device_certificate(
    conn: &mut AnyConnection,
    certificate: &DeviceCertificateRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO device_certificates (device_id, cert_pem, fingerprint_sha256, is_custom, \
         not_after, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(certificate.device_id.to_string())
    .bind(certificate.cert_pem.clone())
    .bind(certificate.fingerprint_sha256.clone())
    .bind(certificate.is_custom)
    .bind(certificate.not_after.as_micros())
    .bind(certificate.created_at.as_micros())
    .execute(conn)
    .await
    .map_err(|e| unique_as_duplicate(e, "device certificate", "certificate_pem"))?;
    Ok(())
}

/// The fingerprint of a device's certificate as stored now.
async fn stored_fingerprint(
    conn: &mut AnyConnection,
    device: &DeviceId,
) -> Result<Option<String>, StoreError> {
    let row =
        sqlx::query("SELECT fingerprint_sha256 FROM device_certificates WHERE device_id = $1")
            .bind(device.to_string())
            .fetch_optional(conn)
            .await?;
    row.as_ref()
        .map(|r| text(r, "fingerprint_sha256"))
        .transpose()
}

/// Deletes one row, optionally only at `expected` version.
async fn delete_row(
    pool: &AnyPool,
    table: &'static str,
    resource: &'static str,
    id: String,
    expected: Option<i64>,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let done = match expected {
        Some(v) => {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE id = $1 AND version = $2"
            ))
            .bind(id.clone())
            .bind(v)
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
                .bind(id.clone())
                .execute(&mut *conn)
                .await?
        }
    };
    if done.rows_affected() == 0 {
        return Err(match expected {
            Some(v) => missing_or_conflict(&mut conn, table, resource, id, v).await,
            None => StoreError::NotFound { resource, id },
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The Store

impl Store for SqlStore {
    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.run_migrations())
    }

    fn bootstrap_admin<'a>(
        &'a self,
        account: &'a AccountRecord,
        key: &'a ApiKeyRecord,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO accounts (id, name, is_admin, created_at) \
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM accounts)",
            )
            .bind(account.id.to_string())
            .bind(account.name.clone())
            .bind(account.is_admin)
            .bind(account.created_at.as_micros())
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(done) if done.rows_affected() == 1 => {}
                Ok(_) => return Ok(false),
                // Another node bootstrapped at the same instant (single-admin index).
                Err(e) if is_unique_violation(&e) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            insert_key(&mut tx, key).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn insert_account<'a>(
        &'a self,
        account: &'a AccountRecord,
        key: &'a ApiKeyRecord,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO accounts (id, name, is_admin, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(account.id.to_string())
            .bind(account.name.clone())
            .bind(account.is_admin)
            .bind(account.created_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "account", "id"))?;
            insert_key(&mut tx, key).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_account(&self, id: AccountId) -> StoreFuture<'_, Option<AccountRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {} FROM accounts WHERE id = $1", account_columns());
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(account_from).transpose()
        })
    }

    fn insert_api_key<'a>(&'a self, key: &'a ApiKeyRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            insert_key(&mut conn, key).await
        })
    }

    fn find_api_key<'a>(&'a self, secret_hash: &'a str) -> StoreFuture<'a, Option<ApiKeyRecord>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, account_id, secret_hash, created_at FROM api_keys WHERE secret_hash = $1",
            )
            .bind(secret_hash.to_owned())
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(api_key_from).transpose()
        })
    }

    fn insert_hub<'a>(&'a self, hub: &'a HubRecord, plan_quota: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            lock_row(
                &mut tx,
                ACCOUNT_TABLE,
                "account",
                hub.account_id.to_string(),
            )
            .await?;
            let current = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM hubs WHERE account_id = $1 AND plan = $2",
                &[
                    Arg::Text(hub.account_id.to_string()),
                    Arg::Text(plan_as_str(hub.plan).to_owned()),
                ],
            )
            .await?;
            check_quota("hubs", current, plan_quota)?;
            sqlx::query(
                "INSERT INTO hubs (id, account_id, name, status, plan, enabled, disable_events, \
                 events_topic_prefix, enable_device_auto_provisioning, has_custom_ca, \
                 allow_anonymous, limits, region, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            )
            .bind(hub.id.to_string())
            .bind(hub.account_id.to_string())
            .bind(hub.name.clone())
            .bind(hub.status.as_str())
            .bind(plan_as_str(hub.plan))
            .bind(hub.enabled)
            .bind(hub.disable_events)
            .bind(hub.events_topic_prefix.clone())
            .bind(hub.enable_device_auto_provisioning)
            .bind(hub.has_custom_ca)
            .bind(hub.allow_anonymous)
            .bind(to_json(&hub.limits))
            .bind(hub.region.clone())
            .bind(hub.created_at.as_micros())
            .bind(hub.updated_at.as_micros())
            .bind(hub.version)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "hub", "id"))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_hub(&self, id: HubId) -> StoreFuture<'_, Option<HubRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {} FROM hubs WHERE id = $1", hub_columns());
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(hub_from).transpose()
        })
    }

    fn update_hub<'a>(
        &'a self,
        hub: &'a HubRecord,
        expected_version: i64,
        plan_quota: Option<u64>,
    ) -> StoreFuture<'a, HubRecord> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            if let Some(quota) = plan_quota {
                lock_row(
                    &mut tx,
                    ACCOUNT_TABLE,
                    "account",
                    hub.account_id.to_string(),
                )
                .await?;
                let current = count(
                    &mut tx,
                    "SELECT COUNT(*) AS n FROM hubs WHERE account_id = $1 AND plan = $2 AND id <> $3",
                    &[
                        Arg::Text(hub.account_id.to_string()),
                        Arg::Text(plan_as_str(hub.plan).to_owned()),
                        Arg::Text(hub.id.to_string()),
                    ],
                )
                .await?;
                check_quota("hubs", current, quota)?;
            }
            write_hub(&mut tx, hub, expected_version).await?;
            tx.commit().await?;
            Ok(HubRecord {
                version: expected_version + 1,
                ..hub.clone()
            })
        })
    }

    fn delete_hub(
        &self,
        id: HubId,
        expected_version: Option<i64>,
        delete_devices: bool,
    ) -> StoreFuture<'_, Vec<DeviceId>> {
        Box::pin(async move {
            let hub = id.to_string();
            let mut tx = self.begin_write().await?;
            lock_row(&mut tx, HUB_TABLE, "hub", hub.clone()).await?;
            if let Some(expected) = expected_version {
                let row = sqlx::query("SELECT version FROM hubs WHERE id = $1")
                    .bind(hub.clone())
                    .fetch_one(&mut *tx)
                    .await?;
                if int(&row, "version")? != expected {
                    return Err(StoreError::VersionConflict {
                        resource: "hub",
                        id: hub,
                        expected,
                    });
                }
            }
            let rows = sqlx::query("SELECT id FROM devices WHERE hub_id = $1")
                .bind(hub.clone())
                .fetch_all(&mut *tx)
                .await?;
            let devices = rows
                .iter()
                .map(|row| parsed::<DeviceId>(row, DEVICE_TABLE, "id"))
                .collect::<Result<Vec<_>, _>>()?;
            if !devices.is_empty() {
                if !delete_devices {
                    return Err(StoreError::HubHasDevices {
                        hub: id,
                        devices: devices.len() as u64,
                    });
                }
                for sql in [
                    "DELETE FROM device_certificates WHERE device_id IN \
                     (SELECT id FROM devices WHERE hub_id = $1)",
                    "DELETE FROM metric_rings WHERE object_type = 'device' AND object_id IN \
                     (SELECT id FROM devices WHERE hub_id = $1)",
                    "DELETE FROM devices WHERE hub_id = $1",
                ] {
                    sqlx::query(sql).bind(hub.clone()).execute(&mut *tx).await?;
                }
            }
            for sql in [
                "DELETE FROM metric_rings WHERE object_type = 'hub' AND object_id = $1",
                "DELETE FROM hub_cas WHERE hub_id = $1",
                "DELETE FROM routes WHERE hub_id = $1",
                "DELETE FROM lorawan_devices WHERE hub_id = $1",
                "DELETE FROM networks WHERE hub_id = $1",
                "DELETE FROM hubs WHERE id = $1",
            ] {
                sqlx::query(sql).bind(hub.clone()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(devices)
        })
    }

    fn list_hubs<'a>(
        &'a self,
        query: &'a ListQuery<HubFilter>,
    ) -> StoreFuture<'a, Page<HubRecord>> {
        Box::pin(async move {
            let mut w = Where::default();
            w.eq_opt("account_id", query.filter.account_id.as_ref());
            w.contains("name", query.filter.name.as_ref());
            self.list(
                Listing {
                    table: HUB_TABLE,
                    resource: "hub",
                    columns: hub_columns(),
                    decode: hub_from,
                },
                w,
                query.order_by,
                query.paging,
            )
            .await
        })
    }

    fn count_devices<'a>(&'a self, hubs: &'a [HubId]) -> StoreFuture<'a, Vec<(HubId, u64)>> {
        Box::pin(async move {
            if hubs.is_empty() {
                return Ok(Vec::new());
            }
            let placeholders = (1..=hubs.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT hub_id, COUNT(*) AS n FROM devices WHERE hub_id IN ({placeholders}) GROUP BY hub_id"
            );
            let args: Vec<Arg> = hubs.iter().map(|h| Arg::Text(h.to_string())).collect();
            let rows = bind_all(sqlx::query(&sql), &args)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| {
                    let hub = parsed::<HubId>(row, DEVICE_TABLE, "hub_id")?;
                    Ok((hub, u64::try_from(int(row, "n")?).unwrap_or(0)))
                })
                .collect()
        })
    }

    fn insert_device<'a>(
        &'a self,
        device: &'a DeviceRecord,
        certificate: Option<&'a DeviceCertificateRecord>,
        hub_quota: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            lock_row(&mut tx, HUB_TABLE, "hub", device.hub_id.to_string()).await?;
            let current = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM devices WHERE hub_id = $1",
                &[Arg::Text(device.hub_id.to_string())],
            )
            .await?;
            check_quota("devices", current, hub_quota)?;
            sqlx::query(
                "INSERT INTO devices (id, hub_id, account_id, name, description, status, \
                 allow_insecure, allow_multiple_connections, message_filters, \
                 has_custom_certificate, last_activity_at, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(device.id.to_string())
            .bind(device.hub_id.to_string())
            .bind(device.account_id.to_string())
            .bind(device.name.clone())
            .bind(device.description.clone())
            .bind(device.status.as_str())
            .bind(device.allow_insecure)
            .bind(device.allow_multiple_connections)
            .bind(to_json(&device.message_filters))
            .bind(device.has_custom_certificate)
            .bind(device.last_activity_at.as_micros())
            .bind(device.created_at.as_micros())
            .bind(device.updated_at.as_micros())
            .bind(device.version)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "device", "name"))?;
            if let Some(certificate) = certificate {
                check_hub_issues(&mut tx, &device.hub_id, certificate).await?;
                insert_device_certificate(&mut tx, certificate).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_device(&self, id: DeviceId) -> StoreFuture<'_, Option<DeviceRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {} FROM devices WHERE id = $1", device_columns());
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(device_from).transpose()
        })
    }

    fn update_device<'a>(
        &'a self,
        device: &'a DeviceRecord,
        expected_version: i64,
        hub_quota: u64,
    ) -> StoreFuture<'a, DeviceRecord> {
        Box::pin(async move {
            let id = device.id.to_string();
            let mut tx = self.begin_write().await?;
            let stored = sqlx::query("SELECT hub_id FROM devices WHERE id = $1")
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    resource: "device",
                    id: id.clone(),
                })?;
            if text(&stored, "hub_id")? != device.hub_id.to_string() {
                sqlx::query(
                    "DELETE FROM device_certificates WHERE device_id = $1 AND is_custom = $2",
                )
                .bind(id.clone())
                .bind(false)
                .execute(&mut *tx)
                .await?;
                lock_row(&mut tx, HUB_TABLE, "hub", device.hub_id.to_string()).await?;
                let current = count(
                    &mut tx,
                    "SELECT COUNT(*) AS n FROM devices WHERE hub_id = $1",
                    &[Arg::Text(device.hub_id.to_string())],
                )
                .await?;
                check_quota("devices", current, hub_quota)?;
            }
            let done = sqlx::query(
                "UPDATE devices SET hub_id = $3, account_id = $4, name = $5, description = $6, \
                 status = $7, allow_insecure = $8, allow_multiple_connections = $9, \
                 message_filters = $10, has_custom_certificate = $11, updated_at = $12, \
                 version = version + 1 \
                 WHERE id = $1 AND version = $2",
            )
            .bind(id.clone())
            .bind(expected_version)
            .bind(device.hub_id.to_string())
            .bind(device.account_id.to_string())
            .bind(device.name.clone())
            .bind(device.description.clone())
            .bind(device.status.as_str())
            .bind(device.allow_insecure)
            .bind(device.allow_multiple_connections)
            .bind(to_json(&device.message_filters))
            .bind(device.has_custom_certificate)
            .bind(device.updated_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "device", "name"))?;
            if done.rows_affected() == 0 {
                return Err(missing_or_conflict(
                    &mut tx,
                    DEVICE_TABLE,
                    "device",
                    id,
                    expected_version,
                )
                .await);
            }
            let certificate_fingerprint = stored_fingerprint(&mut tx, &device.id).await?;
            tx.commit().await?;
            Ok(DeviceRecord {
                version: expected_version + 1,
                certificate_fingerprint,
                ..device.clone()
            })
        })
    }

    fn delete_device(&self, id: DeviceId, expected_version: Option<i64>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let device = id.to_string();
            let mut tx = self.begin_write().await?;
            // Locked, so the version read below is still the row's at the delete.
            lock_row(&mut tx, DEVICE_TABLE, "device", device.clone()).await?;
            if let Some(expected) = expected_version {
                let row = sqlx::query("SELECT version FROM devices WHERE id = $1")
                    .bind(device.clone())
                    .fetch_one(&mut *tx)
                    .await?;
                if int(&row, "version")? != expected {
                    return Err(StoreError::VersionConflict {
                        resource: "device",
                        id: device,
                        expected,
                    });
                }
            }
            for sql in [
                "DELETE FROM device_certificates WHERE device_id = $1",
                "DELETE FROM metric_rings WHERE object_type = 'device' AND object_id = $1",
                "DELETE FROM devices WHERE id = $1",
            ] {
                sqlx::query(sql)
                    .bind(device.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn find_device_by_name<'a>(
        &'a self,
        hub: HubId,
        name: &'a str,
    ) -> StoreFuture<'a, Option<DeviceRecord>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {} FROM devices WHERE hub_id = $1 AND name = $2",
                device_columns()
            );
            let row = sqlx::query(&sql)
                .bind(hub.to_string())
                .bind(name.to_owned())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(device_from).transpose()
        })
    }

    fn get_device_certificate(
        &self,
        id: DeviceId,
    ) -> StoreFuture<'_, Option<DeviceCertificateRecord>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {} FROM device_certificates WHERE device_id = $1",
                device_certificate_columns()
            );
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(device_certificate_from).transpose()
        })
    }

    fn replace_device_certificate<'a>(
        &'a self,
        device: &'a DeviceRecord,
        expected_version: i64,
        certificate: &'a DeviceCertificateRecord,
    ) -> StoreFuture<'a, DeviceRecord> {
        Box::pin(async move {
            let id = device.id.to_string();
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "UPDATE devices SET has_custom_certificate = $3, updated_at = $4, \
                 version = version + 1 WHERE id = $1 AND version = $2",
            )
            .bind(id.clone())
            .bind(expected_version)
            .bind(certificate.is_custom)
            .bind(device.updated_at.as_micros())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(missing_or_conflict(
                    &mut tx,
                    DEVICE_TABLE,
                    "device",
                    id,
                    expected_version,
                )
                .await);
            }
            check_hub_issues(&mut tx, &device.hub_id, certificate).await?;
            sqlx::query("DELETE FROM device_certificates WHERE device_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            insert_device_certificate(&mut tx, certificate).await?;
            tx.commit().await?;
            Ok(DeviceRecord {
                version: expected_version + 1,
                has_custom_certificate: certificate.is_custom,
                certificate_fingerprint: Some(certificate.fingerprint_sha256.clone()),
                ..device.clone()
            })
        })
    }

    fn insert_hub_ca<'a>(&'a self, ca: &'a HubCaRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            lock_row(&mut tx, HUB_TABLE, "hub", ca.hub_id.to_string()).await?;
            sqlx::query(
                "INSERT INTO hub_cas (hub_id, cert_pem, key_pem, is_custom, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ca.hub_id.to_string())
            .bind(ca.cert_pem.clone())
            .bind(ca.key_pem.clone())
            .bind(ca.is_custom)
            .bind(ca.created_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "hub CA", "hub_id"))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_hub_ca(&self, hub: HubId) -> StoreFuture<'_, Option<HubCaRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {} FROM hub_cas WHERE hub_id = $1", hub_ca_columns());
            let row = sqlx::query(&sql)
                .bind(hub.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(hub_ca_from).transpose()
        })
    }

    fn list_hub_cas(&self) -> StoreFuture<'_, Vec<HubCaRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {} FROM hub_cas ORDER BY hub_id", hub_ca_columns());
            let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
            rows.iter().map(hub_ca_from).collect()
        })
    }

    fn set_hub_ca<'a>(
        &'a self,
        hub: &'a HubRecord,
        expected_version: i64,
        ca: &'a HubCaRecord,
    ) -> StoreFuture<'a, (HubRecord, Vec<DeviceId>)> {
        Box::pin(async move {
            let id = hub.id.to_string();
            let mut tx = self.begin_write().await?;
            write_hub(&mut tx, hub, expected_version).await?;
            sqlx::query("DELETE FROM hub_cas WHERE hub_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO hub_cas (hub_id, cert_pem, key_pem, is_custom, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.clone())
            .bind(ca.cert_pem.clone())
            .bind(ca.key_pem.clone())
            .bind(ca.is_custom)
            .bind(ca.created_at.as_micros())
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(
                "SELECT d.id AS id FROM devices d JOIN device_certificates c \
                 ON c.device_id = d.id WHERE d.hub_id = $1 ORDER BY d.id",
            )
            .bind(id.clone())
            .fetch_all(&mut *tx)
            .await?;
            let devices = rows
                .iter()
                .map(|row| parsed::<DeviceId>(row, DEVICE_TABLE, "id"))
                .collect::<Result<Vec<_>, _>>()?;
            for device in &devices {
                sqlx::query(
                    "UPDATE devices SET has_custom_certificate = $2, updated_at = $3, \
                     version = version + 1 WHERE id = $1",
                )
                .bind(device.to_string())
                .bind(false)
                .bind(hub.updated_at.as_micros())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM device_certificates WHERE device_id = $1")
                    .bind(device.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok((
                HubRecord {
                    version: expected_version + 1,
                    ..hub.clone()
                },
                devices,
            ))
        })
    }

    fn list_devices<'a>(
        &'a self,
        query: &'a ListQuery<DeviceFilter>,
    ) -> StoreFuture<'a, Page<DeviceRecord>> {
        Box::pin(async move {
            let f = &query.filter;
            let mut w = Where::default();
            w.eq_opt("account_id", f.account_id.as_ref());
            w.eq_opt("hub_id", f.hub_id.as_ref());
            w.contains("name", f.name.as_ref());
            w.flag_opt("allow_insecure", f.allow_insecure);
            w.flag_opt("allow_multiple_connections", f.allow_multiple_connections);
            w.eq_opt("status", f.status.as_ref());
            self.list(
                Listing {
                    table: DEVICE_TABLE,
                    resource: "device",
                    columns: device_columns(),
                    decode: device_from,
                },
                w,
                query.order_by,
                query.paging,
            )
            .await
        })
    }

    fn set_device_last_activity(&self, id: DeviceId, at: Timestamp) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let done = sqlx::query("UPDATE devices SET last_activity_at = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(at.as_micros())
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound {
                    resource: "device",
                    id: id.to_string(),
                });
            }
            Ok(())
        })
    }

    fn insert_route<'a>(&'a self, route: &'a RouteRecord, hub_quota: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            lock_row(&mut tx, HUB_TABLE, "hub", route.hub_id.to_string()).await?;
            let current = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM routes WHERE hub_id = $1",
                &[Arg::Text(route.hub_id.to_string())],
            )
            .await?;
            check_quota("routes", current, hub_quota)?;
            sqlx::query(
                "INSERT INTO routes (id, hub_id, account_id, name, topic, route_type, config, \
                 created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(route.id.to_string())
            .bind(route.hub_id.to_string())
            .bind(route.account_id.to_string())
            .bind(route.name.clone())
            .bind(route.topic.clone())
            .bind(route.route_type.as_str())
            .bind(to_json(&route.config))
            .bind(route.created_at.as_micros())
            .bind(route.updated_at.as_micros())
            .bind(route.version)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "route", "id"))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_route(&self, id: RouteId) -> StoreFuture<'_, Option<RouteRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {ROUTE_COLUMNS} FROM routes WHERE id = $1");
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(route_from).transpose()
        })
    }

    fn update_route<'a>(
        &'a self,
        route: &'a RouteRecord,
        expected_version: i64,
    ) -> StoreFuture<'a, RouteRecord> {
        Box::pin(async move {
            let id = route.id.to_string();
            let mut conn = self.pool.acquire().await?;
            let done = sqlx::query(
                "UPDATE routes SET name = $3, topic = $4, route_type = $5, config = $6, \
                 updated_at = $7, version = version + 1 \
                 WHERE id = $1 AND version = $2",
            )
            .bind(id.clone())
            .bind(expected_version)
            .bind(route.name.clone())
            .bind(route.topic.clone())
            .bind(route.route_type.as_str())
            .bind(to_json(&route.config))
            .bind(route.updated_at.as_micros())
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Err(missing_or_conflict(
                    &mut conn,
                    ROUTE_TABLE,
                    "route",
                    id,
                    expected_version,
                )
                .await);
            }
            Ok(RouteRecord {
                version: expected_version + 1,
                ..route.clone()
            })
        })
    }

    fn delete_route(&self, id: RouteId, expected_version: Option<i64>) -> StoreFuture<'_, ()> {
        Box::pin(delete_row(
            &self.pool,
            ROUTE_TABLE,
            "route",
            id.to_string(),
            expected_version,
        ))
    }

    fn list_routes<'a>(
        &'a self,
        query: &'a ListQuery<RouteFilter>,
    ) -> StoreFuture<'a, Page<RouteRecord>> {
        Box::pin(async move {
            let f = &query.filter;
            let mut w = Where::default();
            w.eq_opt("account_id", f.account_id.as_ref());
            w.eq_opt("hub_id", f.hub_id.as_ref());
            w.contains("name", f.name.as_ref());
            self.list(
                Listing {
                    table: ROUTE_TABLE,
                    resource: "route",
                    columns: ROUTE_COLUMNS.to_owned(),
                    decode: route_from,
                },
                w,
                query.order_by,
                query.paging,
            )
            .await
        })
    }

    fn insert_network<'a>(
        &'a self,
        network: &'a NetworkRecord,
        hub_quota: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            lock_row(&mut tx, HUB_TABLE, "hub", network.hub_id.to_string()).await?;
            let current = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM networks WHERE hub_id = $1",
                &[Arg::Text(network.hub_id.to_string())],
            )
            .await?;
            check_quota("networks", current, hub_quota)?;
            sqlx::query(
                "INSERT INTO networks (id, hub_id, account_id, name, network_type, topic_prefix, \
                 secret_hash, ns_url, ns_token, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(network.id.to_string())
            .bind(network.hub_id.to_string())
            .bind(network.account_id.to_string())
            .bind(network.name.clone())
            .bind(network.network_type.as_str())
            .bind(network.topic_prefix.clone())
            .bind(network.secret_hash.clone())
            .bind(network.ns_url.clone())
            .bind(network.ns_token.clone())
            .bind(network.created_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "network", "id"))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_network(&self, id: NetworkId) -> StoreFuture<'_, Option<NetworkRecord>> {
        Box::pin(async move {
            let sql = format!("SELECT {NETWORK_COLUMNS} FROM networks WHERE id = $1");
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(network_from).transpose()
        })
    }

    fn delete_network(&self, id: NetworkId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            sqlx::query("DELETE FROM lorawan_devices WHERE network_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("DELETE FROM networks WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound {
                    resource: "network",
                    id: id.to_string(),
                });
            }
            Ok(())
        })
    }

    fn list_networks<'a>(
        &'a self,
        query: &'a ListQuery<NetworkFilter>,
    ) -> StoreFuture<'a, Page<NetworkRecord>> {
        Box::pin(async move {
            let f = &query.filter;
            let mut w = Where::default();
            w.eq_opt("account_id", f.account_id.as_ref());
            w.eq_opt("hub_id", f.hub_id.as_ref());
            w.contains("name", f.name.as_ref());
            w.eq_opt("topic_prefix", f.topic_prefix.as_ref());
            self.list(
                Listing {
                    table: NETWORK_TABLE,
                    resource: "network",
                    columns: NETWORK_COLUMNS.to_owned(),
                    decode: network_from,
                },
                w,
                query.order_by,
                query.paging,
            )
            .await
        })
    }

    fn insert_lorawan_device<'a>(&'a self, device: &'a LorawanDeviceRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            lock_row(
                &mut tx,
                NETWORK_TABLE,
                "network",
                device.network_id.to_string(),
            )
            .await?;
            let exists = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM lorawan_devices WHERE network_id = $1 AND dev_eui = $2",
                &[
                    Arg::Text(device.network_id.to_string()),
                    Arg::Text(device.dev_eui.clone()),
                ],
            )
            .await?;
            if exists > 0 {
                return Err(StoreError::Duplicate {
                    resource: "lorawan device",
                    field: "dev_eui",
                });
            }
            sqlx::query(
                "INSERT INTO lorawan_devices (network_id, dev_eui, hub_id, account_id, join_eui, \
                 app_key, dev_addr, nwk_s_key, app_s_key, f_cnt_up, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(device.network_id.to_string())
            .bind(device.dev_eui.clone())
            .bind(device.hub_id.to_string())
            .bind(device.account_id.to_string())
            .bind(device.join_eui.clone())
            .bind(device.app_key.clone())
            .bind(device.dev_addr.clone())
            .bind(device.nwk_s_key.clone())
            .bind(device.app_s_key.clone())
            .bind(i64::from(device.f_cnt_up))
            .bind(device.created_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_duplicate(e, "lorawan device", "dev_addr"))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_lorawan_device<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
    ) -> StoreFuture<'a, Option<LorawanDeviceRecord>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {LORAWAN_COLUMNS} FROM lorawan_devices WHERE network_id = $1 AND dev_eui = $2"
            );
            let row = sqlx::query(&sql)
                .bind(network.to_string())
                .bind(dev_eui.to_owned())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(lorawan_from).transpose()
        })
    }

    fn list_lorawan_devices(
        &self,
        network: Option<NetworkId>,
    ) -> StoreFuture<'_, Vec<LorawanDeviceRecord>> {
        Box::pin(async move {
            let rows = match network {
                Some(n) => {
                    let sql = format!(
                        "SELECT {LORAWAN_COLUMNS} FROM lorawan_devices WHERE network_id = $1 \
                         ORDER BY dev_eui"
                    );
                    sqlx::query(&sql)
                        .bind(n.to_string())
                        .fetch_all(&self.pool)
                        .await?
                }
                None => {
                    let sql = format!(
                        "SELECT {LORAWAN_COLUMNS} FROM lorawan_devices ORDER BY network_id, dev_eui"
                    );
                    sqlx::query(&sql).fetch_all(&self.pool).await?
                }
            };
            rows.iter().map(lorawan_from).collect()
        })
    }

    fn delete_lorawan_device<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let done =
                sqlx::query("DELETE FROM lorawan_devices WHERE network_id = $1 AND dev_eui = $2")
                    .bind(network.to_string())
                    .bind(dev_eui.to_owned())
                    .execute(&self.pool)
                    .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound {
                    resource: "lorawan device",
                    id: dev_eui.to_owned(),
                });
            }
            Ok(())
        })
    }

    fn set_lorawan_f_cnt_up<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
        f_cnt_up: u32,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // Never backwards: two saves racing keep the higher counter.
            sqlx::query(
                "UPDATE lorawan_devices SET f_cnt_up = $1 \
                 WHERE network_id = $2 AND dev_eui = $3 AND f_cnt_up < $1",
            )
            .bind(i64::from(f_cnt_up))
            .bind(network.to_string())
            .bind(dev_eui.to_owned())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn add_lorawan_dev_nonce<'a>(
        &'a self,
        network: NetworkId,
        dev_eui: &'a str,
        dev_nonce: u16,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // An append in one statement: two joins saving at once both stay.
            sqlx::query(
                "UPDATE lorawan_devices SET dev_nonces = dev_nonces || $1 \
                 WHERE network_id = $2 AND dev_eui = $3",
            )
            .bind(format!("{dev_nonce:04x},"))
            .bind(network.to_string())
            .bind(dev_eui.to_owned())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn save_metric_rings<'a>(&'a self, rings: &'a [MetricRingRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if rings.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin_write().await?;
            for ring in rings {
                sqlx::query(
                    "INSERT INTO metric_rings \
                     (object_type, object_id, resolution, hub_id, buckets, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (object_type, object_id, resolution) DO UPDATE SET \
                     hub_id = excluded.hub_id, buckets = excluded.buckets, \
                     updated_at = excluded.updated_at",
                )
                .bind(ring.object.kind())
                .bind(ring.object.id())
                .bind(ring.resolution.as_str())
                .bind(ring.hub_id.to_string())
                .bind(to_json(&ring.buckets))
                .bind(ring.updated_at.as_micros())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn load_metric_rings(&self) -> StoreFuture<'_, Vec<MetricRingRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT object_type, object_id, resolution, hub_id, buckets, updated_at \
                 FROM metric_rings",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(metric_ring_from).collect()
        })
    }
}

async fn insert_key(conn: &mut AnyConnection, key: &ApiKeyRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, account_id, secret_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(key.id.to_string())
    .bind(key.account_id.to_string())
    .bind(key.secret_hash.clone())
    .bind(key.created_at.as_micros())
    .execute(conn)
    .await
    .map_err(|e| unique_as_duplicate(e, "api key", "secret"))?;
    Ok(())
}

/// The statements of a migration file: split on `;`, comments and blanks dropped.
/// Migration files therefore hold no `;` inside literals or comments. (Running them one by
/// one keeps every statement on the prepared-statement path both drivers share.)
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|chunk| {
        chunk
            .lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_whole_statements() {
        for (version, name, sql) in MIGRATIONS {
            for line in sql.lines().filter(|l| l.trim_start().starts_with("--")) {
                assert!(
                    !line.contains(';'),
                    "migration {version} {name}: ';' in comment {line:?}"
                );
            }
            for statement in statements(sql) {
                let code: Vec<&str> = statement
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
                    .collect();
                assert!(
                    code.first()
                        .is_some_and(|l| l.starts_with("CREATE ") || l.starts_with("ALTER TABLE ")),
                    "migration {version} {name}: {statement:?}"
                );
            }
        }
        let split: Vec<&str> = statements("-- c\nA;\n\n;B ;-- only a comment\n").collect();
        assert_eq!(split, ["-- c\nA", "B"]);
    }

    #[test]
    fn backends_of_urls() {
        let cases: &[(&str, Option<StoreBackend>)] = &[
            ("sqlite://x.db?mode=rwc", Some(StoreBackend::Sqlite)),
            ("sqlite::memory:", Some(StoreBackend::Sqlite)),
            ("postgres://u@h/db", Some(StoreBackend::Postgres)),
            ("postgresql://u@h/db", Some(StoreBackend::Postgres)),
            ("mysql://u@h/db", None),
            ("x.db", None),
        ];
        for (url, want) in cases {
            assert_eq!(StoreBackend::of_url(url).ok(), *want, "{url}");
        }
    }
}
