//! The host side of the route world's imports. Every call is checked against the route's
//! grants first; a call outside them answers `denied` and sends nothing.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use iothub_model::TopicName;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use sqlx::Executor;
use tokio::net::TcpStream;

use crate::bindings::iothub::route::{clock, http, hub, log, objects, sql, types};
use crate::grants::{DbEngine, Scheme, parse_uri};
use crate::host::HostShared;
use crate::instance::{RouteContext, State};
use crate::{CapabilityFailure, FailureKind, Grants, HubPublisher, PublishBack};

/// Longest log line or error text taken from a guest.
const MAX_TEXT: usize = 2048;

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

enum DbPool {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// Connections of one route, shared by its instances, made on first use.
pub(crate) struct Shared {
    db: OnceLock<Result<DbPool, String>>,
    objects: OnceLock<Result<Arc<dyn ObjectStore>, String>>,
}

impl Shared {
    pub fn new(_grants: &Grants) -> Self {
        Self {
            db: OnceLock::new(),
            objects: OnceLock::new(),
        }
    }
}

/// The capability side of a store.
pub(crate) struct CapState {
    context: RouteContext,
    grants: Arc<Grants>,
    shared: Arc<Shared>,
    publisher: Arc<dyn HubPublisher>,
    runtime: tokio::runtime::Handle,
    tls: Arc<rustls::ClientConfig>,
    io_timeout: Duration,
    max_body: usize,
    pool_size: u32,
    /// Failed capability calls of the current `handle`.
    pub failures: Vec<CapabilityFailure>,
}

impl CapState {
    pub fn new(
        context: RouteContext,
        grants: Arc<Grants>,
        shared: Arc<Shared>,
        publisher: Arc<dyn HubPublisher>,
        runtime: tokio::runtime::Handle,
        host: &HostShared,
    ) -> Self {
        Self {
            context,
            grants,
            shared,
            publisher,
            runtime,
            tls: host.tls.clone(),
            io_timeout: host.config.io_timeout,
            max_body: host.config.max_response_body,
            pool_size: u32::try_from(host.config.pool_size.max(1)).unwrap_or(u32::MAX),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, kind: FailureKind, message: impl Into<String>) {
        let message = clip(message.into());
        tracing::debug!(route_id = %self.context.route_id, ?kind, %message, "route capability call failed");
        self.failures.push(CapabilityFailure { kind, message });
    }

    fn db(&self) -> Result<&DbPool, String> {
        let Some(target) = self.grants.database.as_ref() else {
            return Err("this route has no database grant".into());
        };
        let pool_size = self.pool_size;
        let timeout = self.io_timeout;
        let _enter = self.runtime.enter();
        self.shared
            .db
            .get_or_init(|| match target.engine() {
                DbEngine::Postgres => sqlx::postgres::PgPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(timeout)
                    .connect_lazy(target.url())
                    .map(DbPool::Postgres)
                    .map_err(|e| format!("database URL: {e}")),
                DbEngine::MySql => sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(timeout)
                    .connect_lazy(target.url())
                    .map(DbPool::MySql)
                    .map_err(|e| format!("database URL: {e}")),
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn object_store(&self) -> Result<&Arc<dyn ObjectStore>, String> {
        let Some(t) = self.grants.bucket.as_ref() else {
            return Err("this route has no bucket grant".into());
        };
        let _enter = self.runtime.enter();
        self.shared
            .objects
            .get_or_init(|| {
                let mut b = AmazonS3Builder::new()
                    .with_region(&t.region)
                    .with_bucket_name(&t.bucket)
                    .with_access_key_id(&t.access_key_id)
                    .with_secret_access_key(&t.secret_access_key);
                if let Some(endpoint) = &t.endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                b.build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                    .map_err(|e| format!("bucket: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl types::Host for State {}

// ---------------------------------------------------------------- http

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn http_send(
    tls: Arc<rustls::ClientConfig>,
    request: hyper::Request<Full<Bytes>>,
    scheme: Scheme,
    host: String,
    port: u16,
    max_body: usize,
) -> Result<http::Response, http::HttpError> {
    let connect = |e: &dyn std::fmt::Display| http::HttpError::Connect(clip(e.to_string()));
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| connect(&e))?;
    let _ = tcp.set_nodelay(true);
    let response = match scheme {
        Scheme::Http => exchange(TokioIo::new(tcp), request).await?,
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| http::HttpError::Invalid(format!("TLS server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| connect(&e))?;
            exchange(TokioIo::new(stream), request).await?
        }
    };
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| connect(&format!("reading the answer: {e}")))?
        .to_bytes();
    Ok(http::Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| http::Header {
                name: n.as_str().to_owned(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })
            .collect(),
        body: body.to_vec(),
    })
}

async fn exchange<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, http::HttpError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http::HttpError::Connect(clip(e.to_string())))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| http::HttpError::Connect(clip(e.to_string())))
}

impl http::Host for State {
    fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        let caps = &mut self.caps;
        let result = (|| {
            let parsed =
                parse_uri(&request.uri).map_err(|e| http::HttpError::Invalid(e.to_string()))?;
            if !caps.grants.allows_origin(&parsed.origin) {
                return Err(http::HttpError::Denied(format!(
                    "{} is not this route's target",
                    parsed.origin
                )));
            }
            let method = request.method.to_ascii_uppercase();
            if !METHODS.contains(&method.as_str()) {
                return Err(http::HttpError::Invalid(format!(
                    "method {:?} is not one of {METHODS:?}",
                    clip(request.method.clone())
                )));
            }
            let origin = parsed.origin.clone();
            let host_header = if origin.port() == origin.scheme().default_port() {
                origin.host().to_owned()
            } else if origin.host().contains(':') {
                format!("[{}]:{}", origin.host(), origin.port())
            } else {
                format!("{}:{}", origin.host(), origin.port())
            };
            let mut builder = hyper::Request::builder()
                .method(method.as_str())
                .uri(parsed.path_and_query.as_str())
                .header(hyper::header::HOST, host_header);
            for h in &request.headers {
                let name =
                    hyper::header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                        http::HttpError::Invalid(format!("header name {:?}", clip(h.name.clone())))
                    })?;
                if name == hyper::header::HOST
                    || name == hyper::header::CONTENT_LENGTH
                    || name == hyper::header::TRANSFER_ENCODING
                    || name == hyper::header::CONNECTION
                {
                    continue;
                }
                let value = hyper::header::HeaderValue::from_str(&h.value)
                    .map_err(|_| http::HttpError::Invalid(format!("value of header {name}")))?;
                builder = builder.header(name, value);
            }
            let req = builder
                .body(Full::new(Bytes::from(request.body)))
                .map_err(|e| http::HttpError::Invalid(clip(e.to_string())))?;
            let fut = http_send(
                caps.tls.clone(),
                req,
                origin.scheme(),
                origin.host().to_owned(),
                origin.port(),
                caps.max_body,
            );
            let timeout = caps.io_timeout;
            caps.runtime
                .block_on(async { tokio::time::timeout(timeout, fut).await })
                .unwrap_or(Err(http::HttpError::Timeout))
        })();
        if let Err(e) = &result {
            let (kind, text) = match e {
                http::HttpError::Denied(m) => (FailureKind::Denied, format!("HTTP: {m}")),
                http::HttpError::Invalid(m) => (FailureKind::HttpInvalid, m.clone()),
                http::HttpError::Connect(m) => (FailureKind::HttpConnect, m.clone()),
                http::HttpError::Timeout => (FailureKind::HttpTimeout, "no answer in time".into()),
            };
            caps.fail(kind, text);
        }
        result
    }
}

// ---------------------------------------------------------------- sql

#[derive(Clone, Copy)]
enum SqlStep {
    Connect,
    Prepare,
    Execute,
}

/// Sorts a database error by what went wrong rather than by the step that saw it: the
/// statement is prepared once per connection and cached, so a table dropped later shows up
/// at execute. SQLSTATE class 42 (syntax, unknown table or column, privileges) is a prepare
/// error, class 08 and I/O failures are connect errors, the rest execute errors.
fn sql_error(e: sqlx::Error, step: SqlStep) -> sql::SqlError {
    let text = clip(e.to_string());
    let class = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.chars().take(2).collect::<String>()),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => Some("08".to_owned()),
        _ => None,
    };
    match (class.as_deref(), step) {
        (Some("08"), _) | (_, SqlStep::Connect) => sql::SqlError::Connect(text),
        (Some("42"), _) | (_, SqlStep::Prepare) => sql::SqlError::Prepare(text),
        _ => sql::SqlError::Execute(text),
    }
}

macro_rules! run_batch {
    ($pool:expr, $db:ty, $statement:expr, $rows:expr) => {{
        let mut tx = $pool
            .begin()
            .await
            .map_err(|e| sql_error(e, SqlStep::Connect))?;
        (&mut *tx)
            .prepare($statement)
            .await
            .map_err(|e| sql_error(e, SqlStep::Prepare))?;
        let mut affected = 0u64;
        for row in $rows {
            let mut q = sqlx::query::<$db>($statement);
            for value in row {
                q = match value {
                    sql::Value::Null => q.bind(None::<String>),
                    sql::Value::Int(i) => q.bind(i),
                    sql::Value::Float(f) => q.bind(f),
                    sql::Value::Text(t) => q.bind(t),
                    sql::Value::Bytes(b) => q.bind(b),
                    sql::Value::Boolean(b) => q.bind(b),
                };
            }
            affected += q
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(e, SqlStep::Execute))?
                .rows_affected();
        }
        tx.commit()
            .await
            .map_err(|e| sql_error(e, SqlStep::Execute))?;
        Ok(affected)
    }};
}

impl sql::Host for State {
    fn execute(
        &mut self,
        statement: String,
        rows: Vec<Vec<sql::Value>>,
    ) -> Result<u64, sql::SqlError> {
        let caps = &mut self.caps;
        let result = match caps.db() {
            Err(m) if caps.grants.database.is_none() => Err(sql::SqlError::Denied(m)),
            Err(m) => Err(sql::SqlError::Connect(m)),
            Ok(pool) => {
                let timeout = caps.io_timeout;
                let statement = statement.as_str();
                caps.runtime.block_on(async {
                    let work = async {
                        match pool {
                            DbPool::Postgres(p) => run_batch!(p, sqlx::Postgres, statement, rows),
                            DbPool::MySql(p) => run_batch!(p, sqlx::MySql, statement, rows),
                        }
                    };
                    tokio::time::timeout(timeout, work)
                        .await
                        .unwrap_or_else(|_| {
                            Err(sql::SqlError::Connect(format!(
                                "no answer from the database within {timeout:?}"
                            )))
                        })
                })
            }
        };
        if let Err(e) = &result {
            let (kind, text) = match e {
                sql::SqlError::Denied(m) => (FailureKind::Denied, format!("SQL: {m}")),
                sql::SqlError::Connect(m) => (FailureKind::DatabaseConnect, m.clone()),
                sql::SqlError::Prepare(m) => (FailureKind::DatabasePrepare, m.clone()),
                sql::SqlError::Execute(m) => (FailureKind::DatabaseExecute, m.clone()),
            };
            caps.fail(kind, text);
        }
        result
    }
}

// ---------------------------------------------------------------- objects

impl objects::Host for State {
    fn put(
        &mut self,
        key: String,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> Result<(), objects::ObjectError> {
        let caps = &mut self.caps;
        let result = (|| {
            let Some(target) = caps.grants.bucket.as_ref() else {
                return Err(objects::ObjectError::Denied(
                    "this route has no bucket grant".into(),
                ));
            };
            if !target.allows_key(&key) {
                return Err(objects::ObjectError::Denied(format!(
                    "key {:?} is outside the prefix {:?} of bucket {:?}",
                    clip(key.clone()),
                    target.key_prefix,
                    target.bucket
                )));
            }
            let path = ObjectPath::parse(&key)
                .map_err(|e| objects::ObjectError::Write(clip(format!("key {key:?}: {e}"))))?;
            let store = caps.object_store().map_err(objects::ObjectError::Write)?;
            let mut attributes = Attributes::new();
            if let Some(ct) = content_type {
                attributes.insert(Attribute::ContentType, ct.into());
            }
            let opts = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            let timeout = caps.io_timeout;
            caps.runtime.block_on(async {
                match tokio::time::timeout(
                    timeout,
                    store.put_opts(&path, PutPayload::from(body), opts),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(objects::ObjectError::Write(clip(e.to_string()))),
                    Err(_) => Err(objects::ObjectError::Write(format!(
                        "no answer from the object store within {timeout:?}"
                    ))),
                }
            })
        })();
        if let Err(e) = &result {
            let (kind, text) = match e {
                objects::ObjectError::Denied(m) => (FailureKind::Denied, format!("S3: {m}")),
                objects::ObjectError::Write(m) => (FailureKind::S3Write, m.clone()),
            };
            caps.fail(kind, text);
        }
        result
    }
}

// ---------------------------------------------------------------- log, clock, hub

impl log::Host for State {
    fn log(&mut self, level: log::Level, message: String) {
        let route_id = &self.caps.context.route_id;
        let route = self.caps.context.name.as_str();
        let message = clip(message);
        match level {
            log::Level::Debug => tracing::debug!(%route_id, route, "{message}"),
            log::Level::Info => tracing::info!(%route_id, route, "{message}"),
            log::Level::Warn => tracing::warn!(%route_id, route, "{message}"),
            log::Level::Error => tracing::error!(%route_id, route, "{message}"),
        }
    }
}

impl clock::Host for State {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl hub::Host for State {
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    ) -> Result<(), String> {
        let caps = &mut self.caps;
        let result = (|| {
            if !caps.grants.hub_publish {
                return Err("this route may not publish to the hub".to_owned());
            }
            let topic =
                TopicName::new(&topic).map_err(|e| clip(format!("topic {topic:?}: {e}")))?;
            if qos > 1 {
                return Err(format!("qos {qos}: routes publish at QoS 0 or 1"));
            }
            let message = PublishBack {
                topic,
                payload: Bytes::from(payload),
                qos,
                retain,
            };
            let route = caps.context.route_id;
            let timeout = caps.io_timeout;
            let publisher = caps.publisher.clone();
            caps.runtime.block_on(async move {
                tokio::time::timeout(timeout, publisher.publish(route, message))
                    .await
                    .unwrap_or_else(|_| Err("the hub did not take the message in time".into()))
            })
        })();
        if let Err(e) = &result {
            caps.fail(FailureKind::HubPublish, e.clone());
        }
        result
    }
}
