//! Routes in the binary: the control plane's route records become running routes
//! (`iothub-routes`: tap, durable queue, retries) delivering through the wasm host
//! (`iothub-plugin-host`: the built-in REST, S3 and database components, or an uploaded
//! one). This is the only place both crates meet: the delivery runtime never names wasmtime
//! and the host knows nothing of queues.
//!
//! A route record is turned into a component, grants (what its target is: the REST URI's
//! origin, the database URL, the S3 bucket) and the JSON config its `init` gets; that is
//! checked before the record is stored ([`RouteRuntime::check`]: the component's refusal
//! becomes a 400 naming the config field) and again when the route starts (a refusal then
//! is a `route_failed` hub event, e.g. for a stored route whose component changed).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use iothub_control::records::{DbEngine, DbGrant, RouteConfig, RouteRecord};
use iothub_control::runtime::RouteRefusal;
use iothub_engine::{Engine, EventKind, HubEvent};
use iothub_model::{HubId, RouteId, SubscriptionFilter};
use iothub_plugin_host::{
    BuiltinKind, CallError, CompiledRoute, DbTarget, FailureKind as HostFailure, Grants,
    HostConfig, HttpOrigin, HubPublisher, PluginHost, PublishBack, RouteContext, RouteInstance,
    S3Target,
};
use iothub_routes::{
    Delivery, DeliveryPolicy, Failure, FailureKind, RouteMessage, RouteSpec, RouteTarget, Routes,
    TapPublisher,
};
use parking_lot::Mutex;
use tracing::{info, warn};

/// How long a route gets to finish its current call and close its queue at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a route record asks the host for.
struct Plan {
    component: Component,
    grants: Grants,
    config_json: String,
}

enum Component {
    Builtin(BuiltinKind),
    Uploaded(Vec<u8>),
}

fn refusal(field: &str, reason: impl Into<String>) -> RouteRefusal {
    RouteRefusal {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Percent-encodes a URL user-info or path part (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The database URL of a database route (credentials included; the component never sees
/// it).
pub fn database_url(c: &DbGrant) -> String {
    let scheme = match c.engine {
        DbEngine::Postgresql => "postgres",
        DbEngine::Mysql => "mysql",
    };
    let auth = if c.password.is_empty() {
        encode(&c.username)
    } else {
        format!("{}:{}", encode(&c.username), encode(&c.password))
    };
    let host = if c.host.contains(':') {
        format!("[{}]", c.host)
    } else {
        c.host.clone()
    };
    format!("{scheme}://{auth}@{host}:{}/{}", c.port, encode(&c.dbname))
}

fn plan(route: &RouteRecord) -> Result<Plan, RouteRefusal> {
    match &route.config {
        RouteConfig::Rest(c) => {
            let origin = HttpOrigin::from_uri(&c.uri)
                .map_err(|e| refusal("rest_config.uri", e.to_string()))?;
            let config_json =
                serde_json::to_string(c).map_err(|e| refusal("rest_config", e.to_string()))?;
            Ok(Plan {
                component: Component::Builtin(BuiltinKind::Rest),
                grants: Grants {
                    http: Some(origin),
                    hub_publish: true,
                    ..Grants::default()
                },
                config_json,
            })
        }
        RouteConfig::Database(c) => {
            let target = DbTarget::new(&database_url(&c.grant()))
                .map_err(|e| refusal("db_config.host", e.to_string()))?;
            let config_json = serde_json::json!({
                "engine": c.engine,
                "host": c.host,
                "port": c.port,
                "dbname": c.dbname,
                "username": c.username,
                "query": c.query,
            })
            .to_string();
            Ok(Plan {
                component: Component::Builtin(BuiltinKind::Database),
                grants: Grants {
                    database: Some(target),
                    ..Grants::default()
                },
                config_json,
            })
        }
        RouteConfig::S3(c) => {
            let config_json = serde_json::json!({
                "bucket_region": c.bucket_region,
                "bucket_name": c.bucket_name,
                "object_prefix": c.object_prefix,
                "strategy": c.strategy,
            })
            .to_string();
            Ok(Plan {
                component: Component::Builtin(BuiltinKind::S3),
                grants: Grants {
                    bucket: Some(S3Target {
                        endpoint: c.endpoint.clone(),
                        region: c.bucket_region.clone(),
                        bucket: c.bucket_name.clone(),
                        key_prefix: c.object_prefix.clone(),
                        access_key_id: c.access_key_id.clone().unwrap_or_default(),
                        secret_access_key: c.secret_access_key.clone().unwrap_or_default(),
                    }),
                    ..Grants::default()
                },
                config_json,
            })
        }
        RouteConfig::Wasm(c) => {
            let bytes = c
                .component_bytes()
                .map_err(|e| refusal("wasm_config.component", e))?;
            let mut grants = Grants {
                hub_publish: c.grants.hub_publish,
                ..Grants::default()
            };
            if let Some(uri) = &c.grants.http_origin {
                grants.http = Some(
                    HttpOrigin::from_uri(uri)
                        .map_err(|e| refusal("wasm_config.grants.http_origin", e.to_string()))?,
                );
            }
            if let Some(db) = &c.grants.database {
                grants.database = Some(
                    DbTarget::new(&database_url(db))
                        .map_err(|e| refusal("wasm_config.grants.database", e.to_string()))?,
                );
            }
            if let Some(s3) = &c.grants.bucket {
                grants.bucket = Some(S3Target {
                    endpoint: s3.endpoint.clone(),
                    region: s3.bucket_region.clone(),
                    bucket: s3.bucket_name.clone(),
                    key_prefix: s3.object_prefix.clone(),
                    access_key_id: s3.access_key_id.clone().unwrap_or_default(),
                    secret_access_key: s3.secret_access_key.clone().unwrap_or_default(),
                });
            }
            Ok(Plan {
                component: Component::Uploaded(bytes),
                grants,
                config_json: c.config.to_string(),
            })
        }
    }
}

fn config_field(route: &RouteRecord) -> &'static str {
    match route.config {
        RouteConfig::Rest(_) => "rest_config",
        RouteConfig::Database(_) => "db_config",
        RouteConfig::S3(_) => "s3_config",
        RouteConfig::Wasm(_) => "wasm_config.config",
    }
}

/// Publishing back through the route's tap.
struct Bridge(Arc<TapPublisher>);

impl HubPublisher for Bridge {
    fn publish(
        &self,
        _route: RouteId,
        message: PublishBack,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let result = self.0.publish(
            message.topic.as_str(),
            message.payload,
            message.qos,
            message.retain,
        );
        Box::pin(async move { result })
    }
}

/// A route's component as the delivery runtime's target. The route's tap and queue start
/// at once (so no message is missed while the component compiles); the component is
/// instantiated in the background and the first delivery waits for it. An instance that
/// cannot be made (its init refuses a stored config) fails every delivery with the reason,
/// evented once, until the route is changed.
struct HostTarget {
    runtime: Arc<RouteRuntime>,
    route: RouteRecord,
    publisher: Arc<TapPublisher>,
    instance: tokio::sync::OnceCell<Result<RouteInstance, String>>,
}

impl HostTarget {
    async fn instance(&self) -> Result<&RouteInstance, String> {
        self.instance
            .get_or_init(|| async {
                let made = self
                    .runtime
                    .instantiate(&self.route, self.publisher.clone())
                    .await;
                match made {
                    Ok(i) => {
                        info!(message = "route running", route = %self.route.id, hub = %self.route.hub_id, r#type = %self.route.route_type);
                        Ok(i)
                    }
                    Err(r) => {
                        warn!(message = "route cannot start", route = %self.route.id, field = %r.field, reason = %r.reason);
                        let event = HubEvent::about_route(
                            EventKind::RouteFailed,
                            self.route.id,
                            format!("route cannot start: {}: {}", r.field, r.reason),
                        )
                        .with_object_name(self.route.name.clone());
                        self.runtime.engine.raise_event(self.route.hub_id, event);
                        Err(format!("route cannot start: {}: {}", r.field, r.reason))
                    }
                }
            })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn failure_kind(kind: HostFailure) -> FailureKind {
    match kind {
        HostFailure::HttpInvalid | HostFailure::HttpConnect | HostFailure::HttpTimeout => {
            FailureKind::Http
        }
        HostFailure::DatabaseConnect => FailureKind::DatabaseConnect,
        HostFailure::DatabasePrepare => FailureKind::DatabasePrepare,
        HostFailure::DatabaseExecute => FailureKind::DatabaseExecute,
        HostFailure::S3Write => FailureKind::S3Write,
        _ => FailureKind::Component,
    }
}

impl RouteTarget for HostTarget {
    fn deliver(
        &self,
        batch: Vec<RouteMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<Delivery, String>> + Send + '_>> {
        Box::pin(async move {
            let instance = self.instance().await?;
            match instance.handle(batch).await {
                Ok(report) => Ok(Delivery {
                    outcomes: report.outcomes,
                    failures: report
                        .failures
                        .into_iter()
                        .map(|f| Failure {
                            kind: failure_kind(f.kind),
                            message: f.message,
                        })
                        .collect(),
                }),
                Err(e @ CallError::Closed) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// The routes of the process over one plugin host.
pub struct RouteRuntime {
    host: PluginHost,
    /// The built-in components, compiled once (at start, in the background): a route check
    /// that comes meanwhile waits for that compilation rather than starting another.
    builtins: [tokio::sync::OnceCell<CompiledRoute>; 3],
    routes: Arc<Routes>,
    engine: Engine,
    /// The hub of each running route, so a deleted hub stops its routes.
    hubs: Mutex<Vec<(RouteId, HubId)>>,
}

impl RouteRuntime {
    pub fn new(
        engine: Engine,
        data_dir: &Path,
        policy: DeliveryPolicy,
    ) -> anyhow::Result<Arc<Self>> {
        let host = PluginHost::new(HostConfig::default())?;
        let me = Arc::new(Self {
            host,
            builtins: Default::default(),
            routes: Arc::new(Routes::new(engine.clone(), data_dir, policy)),
            engine,
            hubs: Mutex::new(Vec::new()),
        });
        for kind in BuiltinKind::ALL {
            let warm = me.clone();
            tokio::spawn(async move {
                if let Err(r) = warm.compile(Component::Builtin(kind)).await {
                    warn!(message = "built-in route component does not compile", r#type = kind.as_str(), reason = %r.reason);
                }
            });
        }
        Ok(me)
    }

    async fn compile(&self, component: Component) -> Result<CompiledRoute, RouteRefusal> {
        match component {
            Component::Builtin(kind) => {
                let slot = match kind {
                    BuiltinKind::Rest => &self.builtins[0],
                    BuiltinKind::S3 => &self.builtins[1],
                    BuiltinKind::Database => &self.builtins[2],
                };
                slot.get_or_try_init(|| async {
                    let host = self.host.clone();
                    tokio::task::spawn_blocking(move || host.builtin(kind))
                        .await
                        .map_err(|e| refusal("type", e.to_string()))?
                        .map_err(|e| refusal("type", e.to_string()))
                })
                .await
                .cloned()
            }
            Component::Uploaded(bytes) => {
                let host = self.host.clone();
                tokio::task::spawn_blocking(move || host.compile(&bytes))
                    .await
                    .map_err(|e| refusal("wasm_config.component", e.to_string()))?
                    .map_err(|e| refusal("wasm_config.component", e.to_string()))
            }
        }
    }

    async fn instantiate(
        &self,
        route: &RouteRecord,
        publisher: Arc<TapPublisher>,
    ) -> Result<RouteInstance, RouteRefusal> {
        let plan = plan(route)?;
        let compiled = self.compile(plan.component).await?;
        compiled
            .instantiate(
                RouteContext {
                    route_id: route.id,
                    name: route.name.clone(),
                },
                plan.grants,
                &plan.config_json,
                Arc::new(Bridge(publisher)),
            )
            .await
            .map_err(|e| refusal(config_field(route), e.to_string()))
    }

    /// Whether `route` can run: its component compiles and its `init` takes the config.
    pub async fn check(&self, route: &RouteRecord) -> Result<(), RouteRefusal> {
        SubscriptionFilter::parse(&route.topic).map_err(|e| refusal("topic", e.to_string()))?;
        self.instantiate(route, Arc::new(TapPublisher::default()))
            .await
            .map(|_| ())
    }

    /// Starts (or restarts) a stored route: its tap subscribes before this returns; its
    /// component is made in the background (failures are logged and evented).
    pub fn upsert(self: &Arc<Self>, route: &RouteRecord) {
        let filter = match SubscriptionFilter::parse(&route.topic) {
            Ok(f) => f,
            Err(error) => {
                warn!(message = "route not started: invalid topic filter", route = %route.id, %error);
                return;
            }
        };
        let publisher = Arc::new(TapPublisher::default());
        let target = Arc::new(HostTarget {
            runtime: self.clone(),
            route: route.clone(),
            publisher: publisher.clone(),
            instance: tokio::sync::OnceCell::new(),
        });
        let warm = target.clone();
        tokio::spawn(async move {
            let _ = warm.instance().await;
        });
        {
            let mut hubs = self.hubs.lock();
            hubs.retain(|(id, _)| *id != route.id);
            hubs.push((route.id, route.hub_id));
        }
        self.routes.upsert(
            RouteSpec {
                id: route.id,
                hub: route.hub_id,
                name: route.name.clone(),
                filter,
            },
            target,
            publisher,
        );
    }

    pub fn remove(&self, id: RouteId) {
        self.hubs.lock().retain(|(r, _)| *r != id);
        self.routes.remove(id);
    }

    /// A deleted hub's routes stop and their queues go.
    pub fn remove_hub(&self, hub: HubId) {
        let ids: Vec<RouteId> = self
            .hubs
            .lock()
            .iter()
            .filter(|(_, h)| *h == hub)
            .map(|(r, _)| *r)
            .collect();
        for id in ids {
            self.remove(id);
        }
    }

    pub async fn shutdown(&self) {
        self.routes.shutdown(SHUTDOWN_GRACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_encode_credentials() {
        let c = DbGrant {
            engine: DbEngine::Postgresql,
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "test".into(),
            username: "u@x".into(),
            password: "p:/ss".into(),
        };
        assert_eq!(
            database_url(&c),
            "postgres://u%40x:p%3A%2Fss@127.0.0.1:5432/test"
        );
        let m = DbGrant {
            engine: DbEngine::Mysql,
            password: String::new(),
            username: "root".into(),
            host: "::1".into(),
            port: 3306,
            ..c
        };
        assert_eq!(database_url(&m), "mysql://root@[::1]:3306/test");
    }
}
