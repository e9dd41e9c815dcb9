//! Guest components made in the tests: core modules written in WAT (canonical ABI by hand),
//! given the route world's metadata and turned into components with wit-component.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use iothub_model::{RouteId, TopicName};
use iothub_plugin_host::{
    CompiledRoute, Grants, HostConfig, NoPublish, PluginHost, RouteContext, RouteInstance,
    RouteMessage, RouteOrigin,
};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

/// A component of `world` (from `wit_dir`) around the core module `wat`.
pub fn component_from(wit_dir: &std::path::Path, world: &str, wat: &str) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_path(wit_dir).expect("wit parses");
    let world = resolve.select_world(&[pkg], Some(world)).expect("world");
    let mut module = wat::parse_str(wat).expect("wat parses");
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).expect("embed");
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .expect("module")
        .encode()
        .expect("encode")
}

pub fn route_wit() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit")
}

/// A route component whose core module has `imports` and the given `handle` body. The
/// body sees `$ptr $len` (the batch) and local `$arr`: an array of `$len` outcomes, zeroed
/// (= delivered), already allocated; the function returns it.
pub fn route_component(imports: &str, data: &str, handle_body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  {data}
  (global $heap (mut i32) (i32.const 0x10000))
  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
       (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
       (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (block $done
      (loop $grow
        (br_if $done (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $p))
  (func (export "init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 0x100) (i32.const 0))
    (i32.const 0x100))
  (func (export "handle") (param $ptr i32) (param $len i32) (result i32)
    (local $arr i32)
    (local.set $arr (call $realloc (i32.const 0) (i32.const 0) (i32.const 4)
                                   (i32.mul (local.get $len) (i32.const 12))))
    (memory.fill (local.get $arr) (i32.const 0) (i32.mul (local.get $len) (i32.const 12)))
    {handle_body}
    (i32.store (i32.const 0x200) (local.get $arr))
    (i32.store (i32.const 0x204) (local.get $len))
    (i32.const 0x200))
)"#
    );
    component_from(&route_wit(), "route", &wat)
}

/// Delivers every message, does nothing else.
pub fn noop_route() -> Vec<u8> {
    route_component("", "", "")
}

pub fn message(topic: &str, payload: &str) -> RouteMessage {
    RouteMessage {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from(payload.to_owned()),
        qos: 1,
        retain: false,
        origin: RouteOrigin::Device("dev-1".into()),
        timestamp_ms: 1_700_000_000_000,
        user_properties: vec![("k".into(), "v".into())],
        content_type: None,
    }
}

pub fn context(name: &str) -> RouteContext {
    RouteContext {
        route_id: RouteId::new_random(),
        name: name.into(),
    }
}

pub fn host(config: HostConfig) -> PluginHost {
    PluginHost::new(config).unwrap()
}

pub async fn start(compiled: &CompiledRoute, grants: Grants, config: &str) -> RouteInstance {
    compiled
        .instantiate(context("test"), grants, config, Arc::new(NoPublish))
        .await
        .unwrap()
}

/// One request a [`TestServer`] received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a [`TestServer`] answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A local HTTP server (axum) that records what it receives.
pub struct TestServer {
    pub port: u16,
    hits: Arc<parking_lot::Mutex<Vec<Hit>>>,
    reply: Arc<parking_lot::Mutex<Reply>>,
    _task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        use axum::body::Bytes as AxBytes;
        use axum::http::{HeaderMap, Method, Uri};
        let hits = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let reply = Arc::new(parking_lot::Mutex::new(Reply {
            status: 200,
            headers: vec![],
            body: b"ok".to_vec(),
        }));
        let (h, r) = (hits.clone(), reply.clone());
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: AxBytes| {
                let (h, r) = (h.clone(), r.clone());
                async move {
                    h.lock().push(Hit {
                        method: method.to_string(),
                        path: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect(),
                        body: body.to_vec(),
                    });
                    let reply = r.lock().clone();
                    let mut resp = axum::response::Response::builder().status(reply.status);
                    for (k, v) in reply.headers {
                        resp = resp.header(k, v);
                    }
                    resp.body(axum::body::Body::from(reply.body)).unwrap()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            hits,
            reply,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `METHOD path body` of every request so far.
    pub fn hits(&self) -> Vec<String> {
        self.hits
            .lock()
            .iter()
            .map(|h| {
                format!(
                    "{} {} {}",
                    h.method,
                    h.path,
                    String::from_utf8_lossy(&h.body)
                )
            })
            .collect()
    }

    pub fn requests(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    pub fn answer(&self, reply: Reply) {
        *self.reply.lock() = reply;
    }
}
