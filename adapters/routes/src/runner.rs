//! One route at run time: its tap (intake) and its delivery loop, each a task, around the
//! route's [`DurableQueue`].
//!
//! Intake: the tap session (`Engine::connect_route`) subscribes to the route's filter at
//! QoS 1 with No Local and Retain As Published; each wake-up drains what the engine queued,
//! appends it to the durable queue and only then acknowledges the QoS 1 packet ids, so a
//! message the engine handed over is in the queue or still the engine's. Events about the
//! route itself are skipped. A kick (hub disabled, shutdown, queue bound) reconnects.
//!
//! Delivery: batches of up to `batch_max` messages from the front of the queue (waiting up
//! to `batch_wait` for a batch to fill), one target call each; delivered and rejected
//! messages are settled, a retry keeps the batch at the front and waits with exponential
//! backoff and jitter; a message whose attempts reach `max_attempts` is dead-lettered (hub
//! event, settled).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use iothub_engine::{
    Engine, EventKind, HubEvent, Outgoing, OutgoingPublish, RetainHandling, Session,
    SubscribeRequest,
};
use iothub_model::{
    HubId, Message, MessageProperties, Origin, Outcome, QoS, RouteId, RouteMessage, RouteOrigin,
    SubscriptionFilter, TopicName,
};
use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::{Delivery, FailureKind};
use crate::queue::{DurableQueue, QueueLimits};

/// Where a route's messages go: the binary implements it over the wasm host. `Err` is a
/// call that returned no outcomes (trap, deadline, ...): the whole batch is retried.
pub trait RouteTarget: Send + Sync + 'static {
    fn deliver(
        &self,
        batch: Vec<RouteMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<Delivery, String>> + Send + '_>>;
}

/// How routes deliver. The defaults keep a message for about 3 minutes of failures
/// (0.2 s doubling to a 30 s cap, 12 attempts), enough for a target restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Messages per target call.
    pub batch_max: usize,
    /// How long a call waits for a batch to fill once it has a message.
    pub batch_wait: Duration,
    /// Attempts before a message is dead-lettered.
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub queue: QueueLimits,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            batch_max: 100,
            batch_wait: Duration::from_millis(10),
            max_attempts: 12,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            queue: QueueLimits::default(),
        }
    }
}

impl DeliveryPolicy {
    /// The wait after the `attempt`-th failure (1-based): doubling from `backoff_initial`,
    /// capped at `backoff_max`, times a jitter in [0.5, 1.5).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
    }
}

/// What a route is, for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub id: RouteId,
    pub hub: HubId,
    pub name: String,
    pub filter: SubscriptionFilter,
}

/// Publishing back into the route's hub through its tap (so No Local keeps those messages
/// from the route). Handed to the target before the route runs; refuses while the tap is
/// not connected.
#[derive(Default)]
pub struct TapPublisher {
    session: Mutex<Option<Arc<Session>>>,
}

impl TapPublisher {
    /// `qos` 0 or 1 (2 is lowered to 1).
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Result<(), String> {
        let topic = TopicName::new(topic).map_err(|e| format!("invalid topic: {e}"))?;
        let session = self
            .session
            .lock()
            .clone()
            .ok_or_else(|| "the route is not connected to its hub".to_owned())?;
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let message = Message {
            topic,
            payload,
            qos,
            retain,
            properties: MessageProperties::default(),
            origin: Origin::Client(session.client_id().clone()),
        };
        let packet_id = (qos != QoS::AtMostOnce).then_some(1);
        session
            .publish(message, packet_id)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Per-route metric handles (labels `hub`, `route`).
#[derive(Clone)]
struct RouteMetrics {
    delivered: Counter,
    retried: Counter,
    failed_rejected: Counter,
    failed_budget: Counter,
    failed_queue_full: Counter,
    depth: Gauge,
    latency: Histogram,
}

impl RouteMetrics {
    fn new(spec: &RouteSpec) -> Self {
        let hub = spec.hub.to_string();
        let route = spec.id.to_string();
        let failed = |reason: &'static str| metrics::counter!("iothub_route_failed_total", "hub" => hub.clone(), "route" => route.clone(), "reason" => reason);
        Self {
            delivered: metrics::counter!("iothub_route_delivered_total", "hub" => hub.clone(), "route" => route.clone()),
            retried: metrics::counter!("iothub_route_retried_total", "hub" => hub.clone(), "route" => route.clone()),
            failed_rejected: failed("rejected"),
            failed_budget: failed("retry_budget"),
            failed_queue_full: failed("queue_full"),
            depth: metrics::gauge!("iothub_route_queue_depth", "hub" => hub.clone(), "route" => route.clone()),
            latency: metrics::histogram!("iothub_route_latency_seconds", "hub" => hub, "route" => route),
        }
    }
}

/// State the two tasks of a route share.
pub(crate) struct Shared {
    pub(crate) spec: RouteSpec,
    engine: Engine,
    policy: DeliveryPolicy,
    target: Arc<dyn RouteTarget>,
    pub(crate) publisher: Arc<TapPublisher>,
    queue: Mutex<Option<DurableQueue>>,
    /// Intake -> delivery: something was queued.
    queued: Notify,
    metrics: RouteMetrics,
    cancel: CancellationToken,
    /// Pending messages, for tests and the runtime.
    pub(crate) depth: std::sync::atomic::AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether `m` is a hub event about route `route` (`<prefix>/<severity>/route/<route>`).
fn is_own_event(m: &Message, route: &str) -> bool {
    if m.origin != Origin::Hub {
        return false;
    }
    let mut levels = m.topic.as_str().rsplit('/');
    levels.next() == Some(route) && levels.next() == Some("route")
}

fn origin_of(origin: &Origin) -> RouteOrigin {
    match origin {
        Origin::Hub => RouteOrigin::Hub,
        Origin::Network(n) => RouteOrigin::Network(n.to_string()),
        Origin::Client(c) => {
            let s = c.as_str();
            if let Some(route) = s.strip_prefix(iothub_engine::ROUTE_CLIENT_PREFIX) {
                RouteOrigin::Route(route.to_owned())
            } else if uuid::Uuid::parse_str(s).is_ok() {
                // A device's session has its id as client id.
                RouteOrigin::Device(s.to_owned())
            } else {
                RouteOrigin::Anonymous(s.to_owned())
            }
        }
    }
}

fn to_route_message(p: &OutgoingPublish, now: u64) -> RouteMessage {
    let m = &p.message;
    RouteMessage {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos as u8,
        retain: p.retain,
        origin: origin_of(&m.origin),
        timestamp_ms: now,
        user_properties: m.properties.user_properties.clone(),
        content_type: m.properties.content_type.clone(),
    }
}

impl Shared {
    pub(crate) fn new(
        spec: RouteSpec,
        engine: Engine,
        policy: DeliveryPolicy,
        target: Arc<dyn RouteTarget>,
        publisher: Arc<TapPublisher>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let metrics = RouteMetrics::new(&spec);
        Arc::new(Self {
            spec,
            engine,
            policy,
            target,
            publisher,
            queue: Mutex::new(None),
            queued: Notify::new(),
            metrics,
            cancel,
            depth: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn raise(&self, kind: EventKind, msg: String, payload: Option<String>) {
        let mut event =
            HubEvent::about_route(kind, self.spec.id, msg).with_object_name(self.spec.name.clone());
        if let Some(p) = payload {
            event = event.with_payload(p);
        }
        self.engine.raise_event(self.spec.hub, event);
    }

    fn set_depth(&self, n: usize) {
        self.depth.store(n, std::sync::atomic::Ordering::Relaxed);
        self.metrics.depth.set(n as f64);
    }

    /// Runs `f` on the queue on a blocking thread.
    async fn with_queue<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut DurableQueue) -> T + Send + 'static,
    ) -> Option<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = me.queue.lock();
            let q = guard.as_mut()?;
            let out = f(q);
            let n = q.len();
            drop(guard);
            me.set_depth(n);
            Some(out)
        })
        .await
        .ok()
        .flatten()
    }

    /// Opens the queue (retrying every few seconds while the disk refuses), runs intake and
    /// delivery until cancelled, then closes the queue.
    pub(crate) async fn run(self: Arc<Self>, dir: PathBuf, first: Option<Arc<Session>>) {
        loop {
            let limits = self.policy.queue;
            let d = dir.clone();
            let opened = tokio::task::spawn_blocking(move || DurableQueue::open(&d, limits)).await;
            match opened {
                Ok(Ok((q, opened))) => {
                    if opened.corrupt > 0 || opened.torn_tail_bytes > 0 {
                        tracing::warn!(message = "route queue repaired at open", route = %self.spec.id, corrupt = opened.corrupt, torn_tail_bytes = opened.torn_tail_bytes);
                    }
                    tracing::info!(message = "route started", route = %self.spec.id, hub = %self.spec.hub, pending = opened.pending);
                    self.set_depth(q.len());
                    *self.queue.lock() = Some(q);
                    break;
                }
                Ok(Err(error)) => {
                    tracing::error!(message = "route queue cannot be opened", route = %self.spec.id, %error);
                    self.raise(
                        EventKind::RouteFailed,
                        format!("route queue cannot be opened: {error}"),
                        None,
                    );
                }
                Err(error) => tracing::error!(message = "route queue task failed", %error),
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        let delivery = tokio::spawn(self.clone().deliver_loop());
        self.clone().intake_loop(first).await;
        let _ = delivery.await;
        *self.publisher.session.lock() = None;
        let queue = self.queue.lock().take();
        if let Some(q) = queue {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(error) = q.close() {
                    tracing::warn!(message = "route queue close failed", %error);
                }
            })
            .await;
        }
    }

    /// Connects the tap and subscribes it to the route's filter. Synchronous, so the
    /// runtime can do it before the hub takes any message (at start, before the listeners
    /// open): what arrives before the queue is open waits in the tap's session.
    pub(crate) fn open_tap(&self) -> Result<Arc<Session>, String> {
        let route = self.spec.id.to_string();
        let connected = self
            .engine
            .connect_route(self.spec.hub, &route, 1024, true)
            .map_err(|e| e.to_string())?;
        let session = Arc::new(connected.session);
        let req = SubscribeRequest {
            filter: self.spec.filter.clone(),
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
            subscription_id: None,
        };
        match session.subscribe(&[req]).into_iter().next() {
            Some(Err(error)) => Err(format!(
                "route cannot subscribe to {}: {error}",
                self.spec.filter.filter.as_str()
            )),
            _ => Ok(session),
        }
    }

    async fn intake_loop(self: Arc<Self>, first: Option<Arc<Session>>) {
        let route = self.spec.id.to_string();
        let mut out = Vec::with_capacity(512);
        if let Some(session) = first {
            *self.publisher.session.lock() = Some(session.clone());
            let kicked = self.drain_tap(&session, &route, &mut out).await;
            *self.publisher.session.lock() = None;
            if !kicked {
                drop(session);
                if let Ok(c) = self.engine.connect_route(self.spec.hub, &route, 1024, true) {
                    self.move_to_queue(&c.session, &route, &mut out).await;
                }
                return;
            }
        }
        self.intake(&route, &mut out).await;
        // Stopping (shutdown, route changed): what the engine still holds for the tap goes
        // into the queue first, so nothing a publisher was acknowledged for stays behind.
        if let Ok(c) = self.engine.connect_route(self.spec.hub, &route, 1024, true) {
            self.move_to_queue(&c.session, &route, &mut out).await;
        }
    }

    async fn intake(self: &Arc<Self>, route: &str, out: &mut Vec<Outgoing>) {
        while !self.cancel.is_cancelled() {
            let session = match self.open_tap() {
                Ok(s) => s,
                Err(error) => {
                    tracing::debug!(message = "route tap cannot connect", route = %route, %error);
                    if error.contains("subscribe") {
                        self.raise(EventKind::RouteFailed, error, None);
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            *self.publisher.session.lock() = Some(session.clone());
            let kicked = self.drain_tap(&session, route, out).await;
            *self.publisher.session.lock() = None;
            drop(session);
            if !kicked {
                return;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Moves what the tap receives into the queue until cancelled; `true` when the tap was
    /// kicked (or the queue could not write).
    async fn drain_tap(
        self: &Arc<Self>,
        session: &Session,
        route: &str,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = session.ready() => {}
            }
            if let Some(kicked) = self.move_to_queue(session, route, out).await {
                return kicked;
            }
        }
    }

    /// Moves everything the tap holds now into the queue, acknowledging it once written.
    /// `Some(true)`: kicked or the write failed; `Some(false)`: the queue is closed;
    /// `None`: drained.
    async fn move_to_queue(
        self: &Arc<Self>,
        session: &Session,
        route: &str,
        out: &mut Vec<Outgoing>,
    ) -> Option<bool> {
        loop {
            out.clear();
            session.poll_outgoing(out, 512);
            if out.is_empty() {
                return None;
            }
            let now = now_ms();
            let mut messages = Vec::with_capacity(out.len());
            let mut acks = Vec::with_capacity(out.len());
            let mut kicked = false;
            for o in out.drain(..) {
                match o {
                    Outgoing::Publish(p) => {
                        if let Some(id) = p.packet_id {
                            acks.push(id);
                        }
                        if !is_own_event(&p.message, route) {
                            messages.push(to_route_message(&p, now));
                        }
                    }
                    Outgoing::PubRel(_) => {}
                    Outgoing::Disconnect(_) => kicked = true,
                }
            }
            let offered = messages.len();
            if offered > 0 {
                let pushed = self.with_queue(move |q| q.push(messages)).await;
                match pushed {
                    Some(Ok(kept)) => {
                        if kept < offered {
                            let lost = (offered - kept) as u64;
                            self.metrics.failed_queue_full.increment(lost);
                            self.raise(
                                EventKind::RouteDeadLetter,
                                format!("route queue is full: {lost} messages dropped"),
                                None,
                            );
                        }
                        self.queued.notify_one();
                    }
                    Some(Err(error)) => {
                        // Not acknowledged: the engine keeps them inflight and sends them
                        // again to the next connection of the tap.
                        tracing::error!(message = "route queue write failed", route = %route, %error);
                        self.raise(
                            EventKind::RouteFailed,
                            format!("route queue write failed: {error}"),
                            None,
                        );
                        return Some(true);
                    }
                    None => return Some(false),
                }
            }
            for id in acks {
                session.acknowledge(id);
            }
            if kicked {
                return Some(true);
            }
        }
    }

    async fn deliver_loop(self: Arc<Self>) {
        let policy = self.policy;
        let mut flush = tokio::time::interval(crate::queue::FSYNC_INTERVAL);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = match self.with_queue(move |q| q.front(policy.batch_max)).await {
                Some(b) => b,
                None => return,
            };
            if batch.is_empty() {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = self.queued.notified() => {}
                    _ = flush.tick() => {
                        let _ = self.with_queue(|q| q.flush_due()).await;
                    }
                }
                continue;
            }
            let batch = if batch.len() < policy.batch_max && !policy.batch_wait.is_zero() {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep(policy.batch_wait) => {}
                }
                match self.with_queue(move |q| q.front(policy.batch_max)).await {
                    Some(b) => b,
                    None => return,
                }
            } else {
                batch
            };
            let messages: Vec<RouteMessage> = batch.iter().map(|p| (*p.message).clone()).collect();
            let result = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = self.target.deliver(messages) => r,
            };
            let (outcomes, failures) = match result {
                Ok(d) if d.outcomes.len() == batch.len() => (d.outcomes, d.failures),
                Ok(d) => {
                    let why = format!(
                        "the route returned {} outcomes for a batch of {}",
                        d.outcomes.len(),
                        batch.len()
                    );
                    (
                        vec![Outcome::Retry(why.clone()); batch.len()],
                        vec![crate::message::Failure {
                            kind: FailureKind::Component,
                            message: why,
                        }],
                    )
                }
                Err(why) => (
                    vec![Outcome::Retry(why.clone()); batch.len()],
                    vec![crate::message::Failure {
                        kind: FailureKind::Component,
                        message: why,
                    }],
                ),
            };
            self.report_failures(&failures, &batch);
            let now = now_ms();
            let mut settle = Vec::new();
            let mut retry = Vec::new();
            for (p, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Outcome::Delivered => {
                        self.metrics.delivered.increment(1);
                        self.metrics
                            .latency
                            .record(now.saturating_sub(p.message.timestamp_ms) as f64 / 1000.0);
                        settle.push(p.seq);
                    }
                    Outcome::Reject(why) => {
                        self.metrics.failed_rejected.increment(1);
                        self.dead_letter(&p.message, &format!("rejected by the route: {why}"));
                        settle.push(p.seq);
                    }
                    Outcome::Retry(why) => retry.push((p.seq, why)),
                }
            }
            let mut wait = None;
            if !retry.is_empty() {
                self.metrics.retried.increment(retry.len() as u64);
                let seqs: Vec<u64> = retry.iter().map(|(s, _)| *s).collect();
                let counted = self
                    .with_queue(move |q| q.note_retry(&seqs))
                    .await
                    .unwrap_or_default();
                let mut worst = 0;
                for (seq, attempts) in counted {
                    if attempts < policy.max_attempts {
                        worst = worst.max(attempts);
                        continue;
                    }
                    let message = batch.iter().find(|p| p.seq == seq);
                    let why = retry
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map_or("", |(_, w)| w.as_str());
                    if let Some(p) = message {
                        self.metrics.failed_budget.increment(1);
                        self.dead_letter(
                            &p.message,
                            &format!("gave up after {attempts} attempts: {why}"),
                        );
                    }
                    settle.push(seq);
                }
                if worst > 0 {
                    wait = Some(policy.backoff(worst, jitter()));
                }
            }
            if !settle.is_empty() {
                match self.with_queue(move |q| q.settle(&settle)).await {
                    Some(Ok(())) => {}
                    Some(Err(error)) => {
                        tracing::error!(message = "route queue write failed", route = %self.spec.id, %error);
                    }
                    None => return,
                }
            }
            if let Some(wait) = wait {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    fn dead_letter(&self, m: &RouteMessage, why: &str) {
        tracing::warn!(message = "route dead letter", route = %self.spec.id, topic = %m.topic.as_str(), why);
        self.raise(
            EventKind::RouteDeadLetter,
            format!("message on topic {} dropped: {why}", m.topic.as_str()),
            None,
        );
    }

    /// One hub event per kind of failure a call saw.
    fn report_failures(
        &self,
        failures: &[crate::message::Failure],
        batch: &[crate::queue::Pending],
    ) {
        let mut seen: Vec<FailureKind> = Vec::new();
        for f in failures {
            if seen.contains(&f.kind) {
                continue;
            }
            seen.push(f.kind);
            let (kind, text) = match f.kind {
                FailureKind::S3Write => (EventKind::RouteS3Write, "failed to write object to S3"),
                FailureKind::DatabaseConnect => (
                    EventKind::RouteDatabaseConnect,
                    "failed to connect to database",
                ),
                FailureKind::DatabasePrepare => (
                    EventKind::RouteDatabasePrepare,
                    "failed to prepare database query",
                ),
                FailureKind::DatabaseExecute => (
                    EventKind::RouteDatabaseExecute,
                    "failed to execute database query",
                ),
                FailureKind::Http => (EventKind::RouteHttp, "HTTP request failed"),
                FailureKind::Component => (EventKind::RouteFailed, "route failed"),
            };
            let payload = matches!(
                f.kind,
                FailureKind::DatabaseConnect
                    | FailureKind::DatabasePrepare
                    | FailureKind::DatabaseExecute
            )
            .then(|| {
                batch
                    .first()
                    .map(|p| String::from_utf8_lossy(&p.message.payload).into_owned())
            })
            .flatten();
            self.raise(kind, format!("{text}: {}", f.message), payload);
        }
    }
}
