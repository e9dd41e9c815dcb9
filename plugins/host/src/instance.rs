//! Instances of one configured route: a pool of stores, each call on a blocking thread
//! under a deadline and a memory limit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iothub_model::RouteId;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{Route, iothub::route::types as wit};
use crate::caps::{CapState, Shared};
use crate::host::{CompiledRoute, HostShared};
use crate::{Grants, HandleReport, HubPublisher, Outcome, RouteMessage, RouteOrigin};

/// Which route an instance belongs to (log lines and hub publishes carry it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteContext {
    pub route_id: RouteId,
    /// The route's name, for log lines.
    pub name: String,
}

/// Why a route could not be instantiated.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InstantiateError {
    /// The component's `init` refused the configuration; its message.
    #[error("{0}")]
    Init(String),
    #[error("instantiation failed: {0}")]
    Link(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Why a call did not return outcomes. The instance that failed is discarded (except for
/// [`CallError::BadOutcomeCount`]); the route's other instances are unaffected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("the component trapped: {0}")]
    Trap(String),
    #[error("the call overran its deadline of {0:?}")]
    Deadline(Duration),
    #[error("the component exceeded its memory limit of {0} bytes")]
    Memory(usize),
    #[error("the component returned {got} outcomes for a batch of {expected}")]
    BadOutcomeCount { expected: usize, got: usize },
    /// A new instance's `init` refused the configuration it accepted before.
    #[error("init failed: {0}")]
    Init(String),
    #[error("the host is shutting down")]
    Closed,
}

/// Counters of one route's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceStats {
    pub calls: u64,
    pub traps: u64,
    pub deadlines: u64,
    pub memory: u64,
    pub instances_created: u64,
}

/// Memory limits that remember a refusal, so a trap after a refused `memory.grow` is told
/// apart from other traps.
pub(crate) struct Limiter {
    max: usize,
    denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.max;
        self.denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // a table element is a pointer: count it against the same budget
        let ok = desired.saturating_mul(8) <= self.max;
        self.denied |= !ok;
        Ok(ok)
    }
}

/// What a store holds.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    pub caps: CapState,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// An empty WASI context: no args, env, preopens, stdio or network.
fn empty_wasi() -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    b.build()
}

struct Slot {
    store: Store<State>,
    route: Route,
}

struct Inner {
    compiled: CompiledRoute,
    context: RouteContext,
    config_json: String,
    grants: Arc<Grants>,
    shared: Arc<Shared>,
    publisher: Arc<dyn HubPublisher>,
    runtime: tokio::runtime::Handle,
    idle: Mutex<Vec<Slot>>,
    permits: Arc<Semaphore>,
    calls: AtomicU64,
    traps: AtomicU64,
    deadlines: AtomicU64,
    memory: AtomicU64,
    created: AtomicU64,
}

/// One configured route: its component, configuration and grants, and a pool of up to
/// `pool_size` instances. Cheap to clone.
#[derive(Clone)]
pub struct RouteInstance {
    inner: Arc<Inner>,
}

impl fmt::Debug for RouteInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteInstance")
            .field("route", &self.inner.context)
            .field("component", &self.inner.compiled.hash)
            .finish_non_exhaustive()
    }
}

fn ticks(host: &HostShared, d: Duration) -> u64 {
    let tick = host.config.tick.max(Duration::from_millis(1)).as_nanos();
    u64::try_from(d.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Inner {
    fn host(&self) -> &HostShared {
        &self.compiled.host
    }

    /// Classifies a failed call; the store is dropped by the caller.
    fn classify(&self, store: &Store<State>, e: &wasmtime::Error, deadline: Duration) -> CallError {
        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            self.deadlines.fetch_add(1, Ordering::Relaxed);
            CallError::Deadline(deadline)
        } else if store.data().limiter.denied {
            self.memory.fetch_add(1, Ordering::Relaxed);
            CallError::Memory(store.data().limiter.max)
        } else {
            self.traps.fetch_add(1, Ordering::Relaxed);
            CallError::Trap(format!("{e:#}"))
        }
    }

    /// A new store, instance and `init`; runs on a blocking thread.
    fn new_slot(&self) -> Result<Slot, InstantiateError> {
        let host = self.host();
        let state = State {
            wasi: empty_wasi(),
            table: ResourceTable::new(),
            limiter: Limiter {
                max: host.config.memory_limit,
                denied: false,
            },
            caps: CapState::new(
                self.context.clone(),
                self.grants.clone(),
                self.shared.clone(),
                self.publisher.clone(),
                self.runtime.clone(),
                host,
            ),
        };
        let mut store = Store::new(&host.engine, state);
        store.limiter(|s| &mut s.limiter);
        let deadline = host.config.init_deadline;
        store.set_epoch_deadline(ticks(host, deadline));
        store.epoch_deadline_trap();
        self.created.fetch_add(1, Ordering::Relaxed);
        let route = match self.compiled.pre.instantiate(&mut store) {
            Ok(r) => r,
            Err(e) => {
                return Err(match self.classify(&store, &e, deadline) {
                    CallError::Trap(_) => InstantiateError::Link(format!("{e:#}")),
                    other => InstantiateError::Call(other),
                });
            }
        };
        match route.call_init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Slot { store, route }),
            Ok(Err(refusal)) => Err(InstantiateError::Init(refusal)),
            Err(e) => Err(InstantiateError::Call(self.classify(&store, &e, deadline))),
        }
    }

    /// One `handle` call on `slot`; gives the slot back when it may be reused.
    fn call(
        &self,
        mut slot: Slot,
        batch: &[wit::Message],
    ) -> (Result<HandleReport, CallError>, Option<Slot>) {
        let deadline = self.host().config.call_deadline;
        slot.store.set_epoch_deadline(ticks(self.host(), deadline));
        slot.store.data_mut().caps.failures.clear();
        self.calls.fetch_add(1, Ordering::Relaxed);
        match slot.route.call_handle(&mut slot.store, batch) {
            Ok(outcomes) => {
                let failures = std::mem::take(&mut slot.store.data_mut().caps.failures);
                if outcomes.len() != batch.len() {
                    let err = CallError::BadOutcomeCount {
                        expected: batch.len(),
                        got: outcomes.len(),
                    };
                    return (Err(err), Some(slot));
                }
                let outcomes = outcomes
                    .into_iter()
                    .map(|o| match o {
                        wit::Outcome::Delivered => Outcome::Delivered,
                        wit::Outcome::Retry(r) => Outcome::Retry(r),
                        wit::Outcome::Reject(r) => Outcome::Reject(r),
                    })
                    .collect();
                (Ok(HandleReport { outcomes, failures }), Some(slot))
            }
            Err(e) => (Err(self.classify(&slot.store, &e, deadline)), None),
        }
    }
}

fn to_wit(m: RouteMessage) -> wit::Message {
    wit::Message {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload.to_vec(),
        qos: m.qos,
        retain: m.retain,
        origin: match m.origin {
            RouteOrigin::Device(id) => wit::Origin::Device(id),
            RouteOrigin::Network(id) => wit::Origin::Network(id),
            RouteOrigin::Anonymous(id) => wit::Origin::Anonymous(id),
            RouteOrigin::Hub => wit::Origin::Hub,
            RouteOrigin::Route(id) => wit::Origin::Route(id),
        },
        timestamp_ms: m.timestamp_ms,
        user_properties: m
            .user_properties
            .into_iter()
            .map(|(key, value)| wit::UserProperty { key, value })
            .collect(),
        content_type: m.content_type,
    }
}

impl CompiledRoute {
    /// Makes the route's first instance and calls its `init` with `config_json`: a refusal
    /// is [`InstantiateError::Init`] with the component's message. Must be called inside a
    /// tokio runtime (capabilities run on it).
    pub async fn instantiate(
        &self,
        context: RouteContext,
        grants: Grants,
        config_json: &str,
        publisher: Arc<dyn HubPublisher>,
    ) -> Result<RouteInstance, InstantiateError> {
        let pool = self.host.config.pool_size.max(1);
        let inner = Arc::new(Inner {
            compiled: self.clone(),
            shared: Arc::new(Shared::new(&grants)),
            context,
            config_json: config_json.to_owned(),
            grants: Arc::new(grants),
            publisher,
            runtime: tokio::runtime::Handle::current(),
            idle: Mutex::new(Vec::with_capacity(pool)),
            permits: Arc::new(Semaphore::new(pool)),
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            deadlines: AtomicU64::new(0),
            memory: AtomicU64::new(0),
            created: AtomicU64::new(0),
        });
        let builder = inner.clone();
        let slot = tokio::task::spawn_blocking(move || builder.new_slot())
            .await
            .map_err(|e| InstantiateError::Call(CallError::Trap(format!("host task: {e}"))))??;
        inner.idle.lock().push(slot);
        Ok(RouteInstance { inner })
    }
}

impl RouteInstance {
    /// Delivers `batch`: one outcome per message, in order. Waits for a free instance when
    /// `pool_size` calls are already running. A failed call discards its instance only.
    pub async fn handle(&self, batch: Vec<RouteMessage>) -> Result<HandleReport, CallError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallError::Closed)?;
        let inner = self.inner.clone();
        let batch: Vec<wit::Message> = batch.into_iter().map(to_wit).collect();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let slot = inner.idle.lock().pop();
            let slot = match slot {
                Some(s) => s,
                None => inner.new_slot().map_err(|e| match e {
                    InstantiateError::Init(m) | InstantiateError::Link(m) => CallError::Init(m),
                    InstantiateError::Call(c) => c,
                })?,
            };
            let (result, slot) = inner.call(slot, &batch);
            if let Some(slot) = slot {
                inner.idle.lock().push(slot);
            }
            result
        })
        .await
        .map_err(|e| CallError::Trap(format!("host task: {e}")))?
    }

    pub fn context(&self) -> &RouteContext {
        &self.inner.context
    }

    pub fn stats(&self) -> InstanceStats {
        let i = &self.inner;
        InstanceStats {
            calls: i.calls.load(Ordering::Relaxed),
            traps: i.traps.load(Ordering::Relaxed),
            deadlines: i.deadlines.load(Ordering::Relaxed),
            memory: i.memory.load(Ordering::Relaxed),
            instances_created: i.created.load(Ordering::Relaxed),
        }
    }
}
