//! iothub's WebAssembly route host.
//!
//! A route is a WebAssembly component of the `iothub:route@0.1.0` world (`wit/route.wit`): it
//! exports `init(config)` and `handle(batch) -> outcomes` and may import only the host's
//! capabilities (HTTP, SQL, objects, log, clock, hub publish), each checked here against the
//! route's [`Grants`] before anything reaches the network. WASI imports are satisfied with an
//! empty context: no preopened directories, no environment, no arguments, no sockets, no
//! inherited stdio.
//!
//! Layout:
//! - [`PluginHost`]: the wasmtime engine (epoch interruption, a ticker thread), the linker,
//!   the cache of compiled components by content hash, and the built-in components.
//! - [`CompiledRoute`]: a validated component; [`CompiledRoute::instantiate`] makes a
//!   [`RouteInstance`] for one configured route.
//! - [`RouteInstance`]: a pool of instances of one route, each in its own store with a memory
//!   limit; every call runs on a blocking thread under a deadline; a trap, a deadline overrun
//!   or a memory overrun discards that instance only and is counted.
//! - `caps`: the capability implementations (hyper + rustls/ring, sqlx, object_store).
//!
//! This is the only crate of the workspace that names wasmtime. It knows nothing of queues,
//! retries or events: the delivery runtime (adapters/routes) decides what an outcome or a
//! [`CallError`] means.

mod builtin;
mod caps;
mod grants;
mod host;
mod instance;
mod message;

pub use builtin::BuiltinKind;
pub use grants::{DbEngine, DbTarget, GrantError, Grants, HttpOrigin, S3Target, Scheme};
pub use host::{CompiledRoute, ComponentHash, HostConfig, HostError, PluginHost, ValidateError};
pub use instance::{CallError, InstanceStats, InstantiateError, RouteContext, RouteInstance};
pub use iothub_model::{Outcome, RouteMessage, RouteOrigin};
pub use message::{CapabilityFailure, FailureKind, HandleReport, PublishBack};

use std::future::Future;
use std::pin::Pin;

/// Publishing back into the route's hub; the runtime supplies it. Messages published this
/// way carry the route as their origin and are never routed back to the same route.
pub trait HubPublisher: Send + Sync + 'static {
    /// `Err` carries the reason shown to the component (invalid topic, refused by rules).
    fn publish(
        &self,
        route: iothub_model::RouteId,
        message: PublishBack,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// A publisher that refuses everything (routes without hub publish).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPublish;

impl HubPublisher for NoPublish {
    fn publish(
        &self,
        _route: iothub_model::RouteId,
        _message: PublishBack,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Err("this route may not publish to the hub".to_owned()) })
    }
}

/// The `route` world's host bindings (the only place its WIT types exist as Rust).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "route",
    });
}
