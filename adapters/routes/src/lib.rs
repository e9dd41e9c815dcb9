//! iothub's route delivery runtime (issue 7). Each route runs as two tasks of its own around
//! a bounded durable queue, so a slow or broken route never slows publishers or other routes:
//!
//! - its *tap* (`Engine::connect_route`): an internal session of the hub subscribed to the
//!   route's filter at QoS 1 with No Local and Retain As Published, which acknowledges a
//!   message only once it is in the route's queue, and skips hub events about the route
//!   itself (a route never receives an event it caused);
//! - its *queue* ([`queue`]): one write-ahead log (iothub-wal) per route under
//!   `<data_dir>/routes/<route-id>/`, surviving restarts; bounded in messages and bytes, and
//!   when full the newest messages are dropped and counted
//!   (`iothub_route_failed_total{reason="queue_full"}`, and a dead-letter hub event);
//! - its *delivery loop* ([`runner`]): batches of up to `batch_max` messages (waiting up to
//!   `batch_wait` to fill), at least once, retries with exponential backoff and jitter,
//!   dead-letter hub events after `max_attempts`.
//!
//! Where messages go is a [`RouteTarget`], which the binary implements over the wasm host
//! (`plugins/host`); this crate never names wasmtime, and the engine never names it.
//!
//! Hub events (`<prefix>/error/route/<route-id>`, object name = the route's name): the
//! target's failures by kind (S3 write, database connect/prepare/execute, HTTP, the
//! component itself), one per kind per call and rate limited by the hub; dead letters.
//!
//! Metrics, labelled `hub` and `route`: `iothub_route_delivered_total`,
//! `iothub_route_retried_total` (messages a call answered with retry),
//! `iothub_route_failed_total{reason=rejected|retry_budget|queue_full}` (messages given up),
//! `iothub_route_queue_depth`, `iothub_route_latency_seconds` (from the tap to delivery).

mod codec;
mod message;
pub mod queue;
pub mod runner;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use iothub_engine::Engine;
use iothub_model::RouteId;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use codec::DecodeError;
pub use iothub_model::{Outcome, RouteMessage, RouteOrigin};
pub use message::{Delivery, Failure, FailureKind};
pub use queue::QueueLimits;
pub use runner::{DeliveryPolicy, RouteSpec, RouteTarget, TapPublisher};

struct Running {
    cancel: CancellationToken,
    shared: Arc<runner::Shared>,
    task: Option<JoinHandle<()>>,
}

/// Every route of the process. Cheap to share (`Arc`); calls are synchronous and spawn on
/// the current tokio runtime.
pub struct Routes {
    engine: Engine,
    dir: PathBuf,
    policy: DeliveryPolicy,
    running: Mutex<HashMap<RouteId, Running>>,
}

impl Routes {
    /// Routes whose queues live under `<data_dir>/routes/`.
    pub fn new(engine: Engine, data_dir: &Path, policy: DeliveryPolicy) -> Self {
        Self {
            engine,
            dir: data_dir.join("routes"),
            policy,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The directory of a route's queue.
    pub fn queue_dir(&self, id: RouteId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Starts `spec` delivering to `target`, or restarts it with them (a changed filter,
    /// config or component): the previous tasks stop first, the queue is kept. `publisher`
    /// is the one the target was built with (see [`TapPublisher`]).
    pub fn upsert(
        &self,
        spec: RouteSpec,
        target: Arc<dyn RouteTarget>,
        publisher: Arc<TapPublisher>,
    ) {
        let id = spec.id;
        let cancel = CancellationToken::new();
        let shared = runner::Shared::new(
            spec,
            self.engine.clone(),
            self.policy,
            target,
            publisher,
            cancel.clone(),
        );
        let dir = self.queue_dir(id);
        let mut running = self.running.lock();
        let previous = running.remove(&id).and_then(|mut r| {
            r.cancel.cancel();
            r.task.take()
        });
        // The tap subscribes now, before the caller goes on (at start: before the listeners
        // open), so no message published from here on misses the route.
        let first = match shared.open_tap() {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(message = "route tap not connected yet", route = %id, %error);
                None
            }
        };
        let run = shared.clone();
        let task = tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            run.run(dir, first).await;
        });
        running.insert(
            id,
            Running {
                cancel,
                shared,
                task: Some(task),
            },
        );
    }

    /// Stops a deleted route and deletes its queue.
    pub fn remove(&self, id: RouteId) {
        let Some(mut r) = self.running.lock().remove(&id) else {
            return;
        };
        r.cancel.cancel();
        let task = r.task.take();
        let dir = self.queue_dir(id);
        let (engine, hub) = (self.engine.clone(), r.shared.spec.hub);
        tokio::spawn(async move {
            if let Some(t) = task {
                let _ = t.await;
            }
            // A clean connection ends the tap's session and drops what it still held.
            drop(engine.connect_route(hub, &id.to_string(), 1, false));
            let removed = tokio::task::spawn_blocking(move || {
                match std::fs::remove_dir_all(&dir) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(message = "route queue not deleted", dir = %dir.display(), %error);
                    }
                    _ => {}
                }
            });
            let _ = removed.await;
        });
    }

    /// Pending messages of a route (`None`: not running).
    pub fn queue_depth(&self, id: RouteId) -> Option<usize> {
        self.running
            .lock()
            .get(&id)
            .map(|r| r.shared.depth.load(Ordering::Relaxed))
    }

    pub fn is_running(&self, id: RouteId) -> bool {
        self.running.lock().contains_key(&id)
    }

    /// Stops every route (their queues are closed, fsynced), waiting at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let tasks: Vec<JoinHandle<()>> = self
            .running
            .lock()
            .drain()
            .filter_map(|(_, mut r)| {
                r.cancel.cancel();
                r.task.take()
            })
            .collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(grace, all).await;
    }
}
