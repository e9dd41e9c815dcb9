//! The delivery runtime against a real engine and real queues on disk, with a scripted
//! target (the mock beside the `RouteTarget` trait): batching, at least once, retries and
//! dead letters, events about the route kept from it, and a queue surviving a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iothub_engine::{
    ConnectRequest, DEFAULT_EVENTS_TOPIC_PREFIX, Engine, EngineConfig, HubSpec, Outgoing,
    RetainHandling, Session, SubscribeRequest,
};
use iothub_model::{
    ClientId, HubId, HubLimits, Message, MessageFilters, MessageProperties, Origin, Plan, QoS,
    RouteId, SubscriptionFilter, TopicName,
};
use iothub_routes::{
    Delivery, DeliveryPolicy, Failure, FailureKind, Outcome, QueueLimits, RouteMessage, RouteSpec,
    RouteTarget, Routes, TapPublisher,
};
use parking_lot::Mutex;

/// What the scripted target does with each message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Deliver,
    Retry,
    Reject,
}

struct Scripted {
    mode: Mutex<Mode>,
    delivered: Mutex<Vec<String>>,
    batches: Mutex<Vec<usize>>,
}

impl Scripted {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(mode),
            delivered: Mutex::new(Vec::new()),
            batches: Mutex::new(Vec::new()),
        })
    }
}

impl RouteTarget for Scripted {
    fn deliver(
        &self,
        batch: Vec<RouteMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<Delivery, String>> + Send + '_>> {
        Box::pin(async move {
            self.batches.lock().push(batch.len());
            let mode = *self.mode.lock();
            let outcomes = batch
                .iter()
                .map(|m| match mode {
                    Mode::Deliver => {
                        self.delivered
                            .lock()
                            .push(String::from_utf8_lossy(&m.payload).into_owned());
                        Outcome::Delivered
                    }
                    Mode::Retry => Outcome::Retry("target down".into()),
                    Mode::Reject => Outcome::Reject("bad message".into()),
                })
                .collect();
            let failures = match mode {
                Mode::Retry => vec![Failure {
                    kind: FailureKind::DatabaseConnect,
                    message: "connection refused".into(),
                }],
                _ => vec![],
            };
            Ok(Delivery { outcomes, failures })
        })
    }
}

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        batch_max: 50,
        batch_wait: Duration::from_millis(5),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        queue: QueueLimits::default(),
    }
}

fn engine() -> (Engine, HubId) {
    let engine = Engine::new(EngineConfig::default());
    let hub = HubId::new_random();
    engine
        .create_hub(HubSpec {
            id: hub,
            name: "h".into(),
            plan: Plan::Dedicated,
            limits: HubLimits::default(),
            allow_anonymous: true,
            anonymous_filters: MessageFilters::default(),
            enabled: true,
            events_enabled: true,
            events_topic_prefix: TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).unwrap(),
        })
        .unwrap();
    (engine, hub)
}

fn client(engine: &Engine, hub: HubId, id: &str) -> Session {
    engine
        .connect(ConnectRequest {
            hub,
            client_id: Some(ClientId::new(id).unwrap()),
            clean_start: true,
            session_expiry_secs: 0,
            receive_maximum: u16::MAX,
            will: None,
        })
        .unwrap()
        .session
}

fn publish(s: &Session, topic: &str, payload: &str) {
    let m = Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from(payload.to_owned()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        origin: Origin::Client(s.client_id().clone()),
    };
    s.publish(m, Some(1)).unwrap();
}

fn spec(hub: HubId, filter: &str) -> RouteSpec {
    RouteSpec {
        id: RouteId::new_random(),
        hub,
        name: "r".into(),
        filter: SubscriptionFilter::parse(filter).unwrap(),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Topics of the events waiting for `s` (acknowledged).
fn drained_topics(s: &Session) -> Vec<(String, String)> {
    let mut out = Vec::new();
    s.poll_outgoing(&mut out, usize::MAX);
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Publish(p) => {
                if let Some(id) = p.packet_id {
                    s.acknowledge(id);
                }
                Some((
                    p.message.topic.as_str().to_owned(),
                    String::from_utf8_lossy(&p.message.payload).into_owned(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn watch(engine: &Engine, hub: HubId, filter: &str) -> Session {
    let s = client(engine, hub, "watcher");
    let req = SubscribeRequest {
        filter: SubscriptionFilter::parse(filter).unwrap(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
        subscription_id: None,
    };
    assert!(s.subscribe(&[req])[0].is_ok());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_messages_are_delivered_in_batches_and_settled() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, hub) = engine();
    let routes = Routes::new(engine.clone(), dir.path(), policy());
    let target = Scripted::new(Mode::Deliver);
    let s = spec(hub, "sensors/#");
    let id = s.id;
    routes.upsert(s, target.clone(), Arc::new(TapPublisher::default()));
    let p = client(&engine, hub, "pub");
    until("the tap", || routes.queue_depth(id) == Some(0)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..200 {
        publish(&p, "sensors/t", &format!("m{i}"));
    }
    publish(&p, "other/t", "not-routed");
    until("200 deliveries", || target.delivered.lock().len() >= 200).await;
    let got = target.delivered.lock().clone();
    let want: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    assert!(target.batches.lock().iter().all(|&n| n <= 50));
    assert!(target.batches.lock().len() < 200, "messages were batched");
    until("an empty queue", || routes.queue_depth(id) == Some(0)).await;
    routes.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letters_with_events_the_route_never_sees() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, hub) = engine();
    let routes = Routes::new(engine.clone(), dir.path(), policy());
    let watcher = watch(&engine, hub, "$SCW/events/#");
    // The route listens to every event of the hub, its own included.
    let target = Scripted::new(Mode::Retry);
    let s = spec(hub, "$SCW/events/#");
    let id = s.id;
    routes.upsert(s, target.clone(), Arc::new(TapPublisher::default()));
    until("the tap", || routes.queue_depth(id) == Some(0)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another route's event reaches this route.
    let other = RouteId::new_random();
    engine.raise_event(
        hub,
        iothub_engine::HubEvent::about_route(iothub_engine::EventKind::RouteHttp, other, "x"),
    );
    until("three attempts", || target.batches.lock().len() >= 3).await;
    until("the dead letter", || routes.queue_depth(id) == Some(0)).await;
    let events = drained_topics(&watcher);
    let own = format!("$SCW/events/error/route/{id}");
    assert!(
        events
            .iter()
            .any(|(t, p)| t == &own
                && p.contains("failed to connect to database: connection refused")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(t, p)| t == &own && p.contains("dropped: gave up after 3 attempts")),
        "{events:?}"
    );
    // Its own failure events never came back to it: it only ever saw the one message.
    assert!(
        target.batches.lock().iter().all(|&n| n == 1),
        "{:?}",
        target.batches.lock()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(routes.queue_depth(id), Some(0));
    routes.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, hub) = engine();
    let routes = Routes::new(engine.clone(), dir.path(), policy());
    let watcher = watch(&engine, hub, "$SCW/events/#");
    let target = Scripted::new(Mode::Reject);
    let s = spec(hub, "a/#");
    let id = s.id;
    routes.upsert(s, target.clone(), Arc::new(TapPublisher::default()));
    until("the tap", || routes.queue_depth(id) == Some(0)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&client(&engine, hub, "p"), "a/b", "x");
    until("one call", || !target.batches.lock().is_empty()).await;
    until("an empty queue", || routes.queue_depth(id) == Some(0)).await;
    assert_eq!(target.batches.lock().len(), 1);
    let events = drained_topics(&watcher);
    assert!(
        events
            .iter()
            .any(|(_, p)| p
                .contains("message on topic a/b dropped: rejected by the route: bad message")),
        "{events:?}"
    );
    routes.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_a_restart_and_drains_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, hub) = engine();
    let s = spec(hub, "q/#");
    let id = s.id;
    let down = Scripted::new(Mode::Retry);
    let long = DeliveryPolicy {
        max_attempts: 1000,
        ..policy()
    };
    {
        let routes = Routes::new(engine.clone(), dir.path(), long);
        routes.upsert(s.clone(), down.clone(), Arc::new(TapPublisher::default()));
        until("the tap", || routes.queue_depth(id) == Some(0)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = client(&engine, hub, "p");
        for i in 0..30 {
            publish(&p, "q/x", &format!("m{i}"));
        }
        until("30 queued", || routes.queue_depth(id) == Some(30)).await;
        routes.shutdown(Duration::from_secs(5)).await;
    }
    assert!(down.delivered.lock().is_empty());
    let up = Scripted::new(Mode::Deliver);
    let routes = Routes::new(engine.clone(), dir.path(), long);
    routes.upsert(s, up.clone(), Arc::new(TapPublisher::default()));
    until("30 delivered", || up.delivered.lock().len() >= 30).await;
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(*up.delivered.lock(), want);
    until("an empty queue", || routes.queue_depth(id) == Some(0)).await;
    // Removing the route deletes its queue.
    routes.remove(id);
    let qdir = routes.queue_dir(id);
    until("the queue deleted", || !qdir.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_route_publishes_back_does_not_come_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, hub) = engine();
    let routes = Routes::new(engine.clone(), dir.path(), policy());
    let watcher = watch(&engine, hub, "echo/#");
    let target = Scripted::new(Mode::Deliver);
    let publisher = Arc::new(TapPublisher::default());
    let s = spec(hub, "echo/#");
    let id = s.id;
    routes.upsert(s, target.clone(), publisher.clone());
    until("the tap", || {
        publisher
            .publish("echo/x", Bytes::from_static(b"back"), 1, false)
            .is_ok()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(target.delivered.lock().is_empty());
    let seen = drained_topics(&watcher);
    assert_eq!(seen, vec![("echo/x".to_owned(), "back".to_owned())]);
    assert!(publisher.publish("bad/#", Bytes::new(), 0, false).is_err());
    assert_eq!(routes.queue_depth(id), Some(0));
    routes.shutdown(Duration::from_secs(5)).await;
}
