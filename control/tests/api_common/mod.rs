//! The API test harness: the router driven in-process (`tower::ServiceExt::oneshot`) over a
//! registry on SQLite (a temporary file) or PostgreSQL (a fresh schema on the machine's
//! server; an unreachable server fails the test, never skips it).
//!
//! Every reply is checked against `control/openapi.json`: the path must be documented,
//! the status documented for that operation, the body valid against its schema and the
//! documented headers (ETag) present. A test opts out only for paths the document must
//! not have (`unchecked`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod schema;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use iothub_control::api::{self, OPENAPI_JSON};
use iothub_control::registry::RegistryConfig;
use iothub_control::store::{SqlStore, Store};
use iothub_control::testing::{self, PostgresSchema};
use iothub_control::{RecordingRuntime, Registry};
use serde_json::Value;
use tower::ServiceExt;

use self::schema::Document;

/// The prefix of relative paths given to [`Client`] calls.
pub const BASE: &str = "/iot/v1/regions/fr-par/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's database, removed at the end.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<PostgresSchema>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                Self {
                    url: testing::sqlite_url(dir.path()),
                    _dir: Some(dir),
                    schema: None,
                }
            }
            Backend::Postgres => {
                let schema = PostgresSchema::create().await.unwrap_or_else(|e| {
                    let url = std::env::var(testing::POSTGRES_URL_VAR)
                        .unwrap_or_else(|_| testing::DEFAULT_POSTGRES_URL.to_owned());
                    panic!(
                        "the PostgreSQL test server is unreachable ({url}; set {} to another): {e}",
                        testing::POSTGRES_URL_VAR
                    )
                });
                Self {
                    url: schema.url(),
                    _dir: None,
                    schema: Some(schema),
                }
            }
        }
    }

    pub async fn finish(self) {
        if let Some(schema) = self.schema {
            schema.drop_schema().await.expect("drop the test schema");
        }
    }
}

/// A running API over one database.
pub struct Api {
    router: Router,
    pub registry: Arc<Registry>,
    pub runtime: Arc<RecordingRuntime>,
    store: SqlStore,
    url: String,
    /// The bootstrap admin's API key.
    pub admin_key: String,
    pub doc: Arc<Document>,
}

impl Api {
    async fn open(url: &str, config: RegistryConfig, admin_key: Option<String>) -> Self {
        let store = SqlStore::open(url).await.expect("open the store");
        store.migrate().await.expect("migrate");
        let runtime = Arc::new(RecordingRuntime::new());
        let registry = Arc::new(Registry::new(
            Arc::new(store.clone()),
            runtime.clone(),
            config,
        ));
        let admin_key = match admin_key {
            Some(key) => {
                assert!(
                    registry
                        .bootstrap_admin()
                        .await
                        .expect("bootstrap")
                        .is_none(),
                    "a reopened database has its admin already"
                );
                key
            }
            None => {
                let (_, key) = registry
                    .bootstrap_admin()
                    .await
                    .expect("bootstrap")
                    .expect("a fresh database gets an admin");
                key
            }
        };
        Self {
            router: api::router(registry.clone()),
            registry,
            runtime,
            store,
            url: url.to_owned(),
            admin_key,
            doc: Arc::new(Document::new(OPENAPI_JSON)),
        }
    }

    /// The same database opened again, as after a restart, with `config`.
    pub async fn reopen(&self, config: RegistryConfig) -> Api {
        Api::open(&self.url, config, Some(self.admin_key.clone())).await
    }

    pub async fn close(&self) {
        self.store.close().await;
    }

    /// A client without an API key.
    pub fn anonymous(&self) -> Client<'_> {
        Client {
            api: self,
            key: None,
        }
    }

    pub fn admin(&self) -> Client<'_> {
        self.client(&self.admin_key)
    }

    pub fn client<'a>(&'a self, key: &str) -> Client<'a> {
        Client {
            api: self,
            key: Some(key.to_owned()),
        }
    }

    /// Creates an account through the API and returns its API key.
    pub async fn new_account(&self, name: &str) -> String {
        let reply = self
            .admin()
            .post("/iot/v1/accounts")
            .json(serde_json::json!({ "name": name }))
            .send()
            .await
            .expect(200);
        reply["api_key"].as_str().expect("api_key").to_owned()
    }
}

/// Runs `body` over a fresh database of `backend` with the default configuration.
pub async fn run(backend: Backend, body: impl AsyncFnOnce(&Api)) {
    let db = TestDb::new(backend).await;
    let api = Api::open(&db.url, RegistryConfig::default(), None).await;
    body(&api).await;
    api.close().await;
    db.finish().await;
}

/// Declares `mod <name> { sqlite, postgres }` tests running `async fn <name>(&Api)`.
#[macro_export]
macro_rules! api_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use $crate::api_common::{Backend, run};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(Backend::Sqlite, super::$name).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(Backend::Postgres, super::$name).await;
                }
            }
        )+
    };
}

/// Calls as one account (or none).
#[derive(Clone)]
pub struct Client<'a> {
    api: &'a Api,
    key: Option<String>,
}

impl<'a> Client<'a> {
    pub fn call(&self, method: Method, path: &str) -> Call<'a> {
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{BASE}{path}")
        };
        let mut headers = Vec::new();
        if let Some(key) = &self.key {
            headers.push(("x-auth-token".to_owned(), key.clone()));
        }
        Call {
            api: self.api,
            method,
            path,
            headers,
            body: None,
            checked: true,
        }
    }
    pub fn get(&self, path: &str) -> Call<'a> {
        self.call(Method::GET, path)
    }
    pub fn post(&self, path: &str) -> Call<'a> {
        self.call(Method::POST, path)
    }
    pub fn patch(&self, path: &str) -> Call<'a> {
        self.call(Method::PATCH, path)
    }
    pub fn delete(&self, path: &str) -> Call<'a> {
        self.call(Method::DELETE, path)
    }
}

/// One request being built.
pub struct Call<'a> {
    api: &'a Api,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    checked: bool,
}

impl Call<'_> {
    pub fn json(mut self, v: Value) -> Self {
        self.body = Some(serde_json::to_vec(&v).unwrap());
        self.headers
            .push(("content-type".to_owned(), "application/json".to_owned()));
        self
    }
    /// A body sent as is (malformed JSON and the like).
    pub fn raw(mut self, body: &str) -> Self {
        self.body = Some(body.as_bytes().to_vec());
        self.headers
            .push(("content-type".to_owned(), "application/json".to_owned()));
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn if_match(self, etag: &str) -> Self {
        self.header("if-match", etag)
    }
    /// Skips the document check: for paths and methods the API must not have.
    pub fn unchecked(mut self) -> Self {
        self.checked = false;
        self
    }

    pub async fn send(self) -> Reply {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(&self.path);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let req = req
            .body(self.body.map_or_else(Body::empty, Body::from))
            .unwrap();
        let response = self.api.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{} {} answered {status} with a body that is not JSON ({e}): {text}",
                    self.method, self.path
                )
            })
        };
        let reply = Reply {
            method: self.method,
            path: self.path,
            status,
            headers,
            body,
            text,
        };
        if self.checked {
            reply.check_against(&self.api.doc);
        }
        reply
    }
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `Null` when the body is empty.
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Checks the reply against the document (panics with every mismatch).
    fn check_against(&self, doc: &Document) {
        let path = self.path.split('?').next().unwrap_or_default();
        let what = format!("{} {} -> {}", self.method, self.path, self.status);
        let template = doc
            .template_of(path)
            .unwrap_or_else(|| panic!("{what}: the path is not documented"));
        let method = self.method.as_str().to_ascii_lowercase();
        let documented = doc
            .response(&method, template, self.status.as_u16())
            .unwrap_or_else(|e| panic!("{what}: {e}; body: {}", self.text));
        match documented.schema {
            Some(schema) => {
                let errors = doc.check(schema, &self.body);
                assert!(
                    errors.is_empty(),
                    "{what}: the body does not match the document:\n  {}\nbody: {}",
                    errors.join("\n  "),
                    self.text
                );
                let content_type = self
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert!(
                    content_type.starts_with("application/json"),
                    "{what}: content-type {content_type:?}"
                );
            }
            None => assert!(
                self.text.is_empty(),
                "{what}: documented without a body, got {}",
                self.text
            ),
        }
        for header in &documented.headers {
            assert!(
                self.headers.contains_key(header.as_str()),
                "{what}: the documented header {header} is missing"
            );
        }
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{} {}: {}",
            self.method,
            self.path,
            self.text
        );
        self.body
    }

    /// Asserts an error answer: status, `type`, and (when given) the argument named in
    /// `details`. Returns the body.
    #[track_caller]
    pub fn expect_error(self, status: u16, kind: &str, argument: Option<&str>) -> Value {
        let what = format!("{} {}", self.method, self.path);
        let body = self.expect(status);
        assert_eq!(body["type"], kind, "{what}: {body}");
        if let Some(argument) = argument {
            let named: Vec<&str> = body["details"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["argument_name"].as_str())
                .collect();
            assert_eq!(named, [argument], "{what}: {body}");
        }
        body
    }

    pub fn etag(&self) -> String {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{} {}: no ETag", self.method, self.path))
            .to_owned()
    }
}

/// Lets `reply["field"]` read the body.
impl std::ops::Index<&str> for Reply {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        &self.body[key]
    }
}

/// The `id` of a created resource (`{"device": {...}}` answers included).
pub fn id_of(body: &Value) -> String {
    body.get("id")
        .or_else(|| body.get("device").and_then(|d| d.get("id")))
        .or_else(|| body.get("network").and_then(|n| n.get("id")))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_owned()
}
