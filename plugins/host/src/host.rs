//! The engine, the linker and the component cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::BuiltinKind;
use crate::bindings::RoutePre;
use crate::instance::State;

/// Limits and timeouts of every route instance of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Linear memory (and table) bytes one instance may grow to.
    pub memory_limit: usize,
    /// Wall-clock deadline of one `handle` call, checked while the guest runs (host calls
    /// have their own timeouts); an overrun traps and discards the instance.
    pub call_deadline: Duration,
    /// Deadline of instantiation plus `init`.
    pub init_deadline: Duration,
    /// Instances of one route that may run at once (and stay pooled between calls).
    pub pool_size: usize,
    /// Timeout of one capability call that does I/O: an HTTP request (connect, send, whole
    /// answer), a SQL batch (connect, transaction), an object put.
    pub io_timeout: Duration,
    /// Largest HTTP answer body a route is given; longer answers are an HTTP error.
    pub max_response_body: usize,
    /// Granularity of the deadlines: the epoch ticker's period.
    pub tick: Duration,
    /// DER certificates trusted for https targets besides Mozilla's roots (webpki-roots):
    /// a private CA of the deployment.
    pub extra_roots_der: Vec<Vec<u8>>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_limit: 64 << 20,
            call_deadline: Duration::from_secs(30),
            init_deadline: Duration::from_secs(5),
            pool_size: 2,
            io_timeout: Duration::from_secs(10),
            max_response_body: 4 << 20,
            tick: Duration::from_millis(10),
            extra_roots_der: Vec::new(),
        }
    }
}

/// The host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("linking the host capabilities: {0}")]
    Linker(String),
    #[error("embedded {kind:?} component: {reason}")]
    Builtin { kind: BuiltinKind, reason: String },
}

/// Why a component was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error("the component imports something a route may not have: {0}")]
    Imports(String),
    #[error("the component does not export the iothub:route@0.1.0 world: {0}")]
    WrongWorld(String),
}

/// SHA-256 of a component's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComponentHash([u8; 32]);

impl ComponentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ComponentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ComponentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComponentHash({self})")
    }
}

/// Compiled components kept; past this the cache forgets an arbitrary entry (the routes
/// holding a [`CompiledRoute`] keep theirs).
const CACHE_ENTRIES: usize = 64;

pub(crate) struct HostShared {
    pub engine: Engine,
    pub linker: Linker<State>,
    pub config: HostConfig,
    pub tls: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
}

impl Drop for HostShared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Compiles, validates and caches route components. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<HostShared>,
    cache: Arc<Mutex<HashMap<ComponentHash, CompiledRoute>>>,
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// A host with its epoch ticker thread (stopped when the last clone is dropped).
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&wasm).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| HostError::Linker(format!("{e:#}")))?;
        crate::bindings::Route::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| HostError::Linker(format!("{e:#}")))?;

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (i, der) in config.extra_roots_der.iter().enumerate() {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| HostError::Engine(format!("extra_roots_der[{i}]: {e}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| HostError::Engine(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        let tick = config.tick.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| HostError::Engine(format!("epoch ticker: {e}")))?;

        Ok(Self {
            shared: Arc::new(HostShared {
                engine,
                linker,
                config,
                tls: Arc::new(tls),
                stop,
            }),
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    /// Compiles `bytes` and checks it against the `route` world (imports the host can
    /// satisfy, exports `init` and `handle` with the right types). Cached by content hash:
    /// the same bytes compile once. CPU-heavy: call from a blocking context for big inputs.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledRoute, ValidateError> {
        let hash = ComponentHash::of(bytes);
        if let Some(hit) = self.cache.lock().get(&hash) {
            return Ok(hit.clone());
        }
        if wasmparser_is_core_module(bytes) {
            return Err(ValidateError::NotAComponent(
                "this is a core WebAssembly module; make a component of it (wasm32-wasip2 \
                 target, or `wasm-tools component new`)"
                    .into(),
            ));
        }
        let component = Component::new(&self.shared.engine, bytes).map_err(|e| {
            let text = format!("{e:#}");
            if bytes.get(..4) != Some(b"\0asm") {
                ValidateError::NotAComponent(text)
            } else {
                ValidateError::Compile(text)
            }
        })?;
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ValidateError::Imports(format!("{e:#}")))?;
        let pre = RoutePre::new(pre).map_err(|e| ValidateError::WrongWorld(format!("{e:#}")))?;
        let compiled = CompiledRoute {
            hash,
            pre,
            host: self.shared.clone(),
        };
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES
            && let Some(victim) = cache.keys().next().copied()
        {
            cache.remove(&victim);
        }
        cache.insert(hash, compiled.clone());
        Ok(compiled)
    }

    /// The embedded built-in component of `kind` (compiled on first use, then cached).
    pub fn builtin(&self, kind: BuiltinKind) -> Result<CompiledRoute, HostError> {
        self.compile(kind.component_bytes())
            .map_err(|e| HostError::Builtin {
                kind,
                reason: e.to_string(),
            })
    }

    /// Compiled components currently in the cache.
    pub fn cached_components(&self) -> usize {
        self.cache.lock().len()
    }
}

/// A core module starts with the same magic but version 1 (components have layer 1).
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// A validated, compiled route component. Cheap to clone.
#[derive(Clone)]
pub struct CompiledRoute {
    pub(crate) hash: ComponentHash,
    pub(crate) pre: RoutePre<State>,
    pub(crate) host: Arc<HostShared>,
}

impl fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl CompiledRoute {
    pub fn hash(&self) -> ComponentHash {
        self.hash
    }
}
