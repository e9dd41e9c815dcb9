//! Issue 7's benchmark (BENCHMARKS.md, "Routes"): in one process, with a real engine, real
//! durable queues on disk and the real wasm host,
//! 1. messages/s from a publisher session to a subscriber session with no route, and with a
//!    no-op wasm route on the same filter (the time until the route delivered everything);
//! 2. rows/s into PostgreSQL through the built-in database route, and the same inserts done
//!    directly with sqlx (transactions of the route's batch size).
//!
//! Run: `cargo bench -p iothub-routes --bench routes` (PostgreSQL on 127.0.0.1:5432, db
//! `test`, or `IOTHUB_BENCH_POSTGRES_URL`). Figures go to stdout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iothub_engine::{
    ConnectRequest, DEFAULT_EVENTS_TOPIC_PREFIX, Engine, EngineConfig, HubSpec, Outgoing,
    RetainHandling, Session, SubscribeRequest,
};
use iothub_model::{
    ClientId, HubId, HubLimits, Message, MessageFilters, MessageProperties, Origin, Plan, QoS,
    RouteId, SubscriptionFilter, TopicName,
};
use iothub_plugin_host::{
    BuiltinKind, DbTarget, Grants, HostConfig, NoPublish, PluginHost, RouteContext, RouteInstance,
};
use iothub_routes::{
    Delivery, DeliveryPolicy, Outcome, RouteMessage, RouteSpec, RouteTarget, Routes, TapPublisher,
};

const MESSAGES: u64 = 50_000;
const ROWS: u64 = 20_000;

/// The wasm host as a route target, counting deliveries.
struct Wasm {
    instance: RouteInstance,
    delivered: AtomicU64,
}

impl RouteTarget for Wasm {
    fn deliver(
        &self,
        batch: Vec<RouteMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<Delivery, String>> + Send + '_>> {
        Box::pin(async move {
            let report = self
                .instance
                .handle(batch)
                .await
                .map_err(|e| e.to_string())?;
            let outcomes = report.outcomes;
            let ok = outcomes
                .iter()
                .filter(|o| **o == Outcome::Delivered)
                .count();
            self.delivered.fetch_add(ok as u64, Ordering::Relaxed);
            Ok(Delivery {
                outcomes,
                failures: Vec::new(),
            })
        })
    }
}

/// A no-op route component: `handle` answers delivered for every message (core module in
/// WAT, made a component of the route world with wit-component).
fn noop_component() -> Vec<u8> {
    let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_path(&wit).unwrap();
    let world = resolve.select_world(&[pkg], Some("route")).unwrap();
    let wat = r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 0x10000))
  (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $done (loop $grow
      (br_if $done (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br $grow)))
    (local.get $p))
  (func (export "init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 0x100) (i32.const 0)) (i32.const 0x100))
  (func (export "handle") (param $ptr i32) (param $len i32) (result i32)
    (local $arr i32)
    (global.set $heap (i32.const 0x10000))
    (local.set $arr (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.mul (local.get $len) (i32.const 12))))
    (memory.fill (local.get $arr) (i32.const 0) (i32.mul (local.get $len) (i32.const 12)))
    (i32.store (i32.const 0x200) (local.get $arr))
    (i32.store (i32.const 0x204) (local.get $len))
    (i32.const 0x200)))"#;
    let mut module = wat::parse_str(wat).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .unwrap()
        .encode()
        .unwrap()
}

fn new_engine() -> (Engine, HubId) {
    let engine = Engine::new(EngineConfig::default());
    let hub = HubId::new_random();
    let limits = HubLimits {
        max_session_queue_messages: 1_000_000,
        max_session_queue_bytes: 1 << 30,
        budget_bytes: 1 << 31,
        ..HubLimits::default()
    };
    engine
        .create_hub(HubSpec {
            id: hub,
            name: "bench".into(),
            plan: Plan::Dedicated,
            limits,
            allow_anonymous: true,
            anonymous_filters: MessageFilters::default(),
            enabled: true,
            events_enabled: true,
            events_topic_prefix: TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).unwrap(),
        })
        .unwrap();
    (engine, hub)
}

fn session(engine: &Engine, hub: HubId, id: &str) -> Session {
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

/// A subscriber that acknowledges everything; returns how many it received.
fn subscriber(engine: &Engine, hub: HubId) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let s = session(engine, hub, "sub");
    let req = SubscribeRequest {
        filter: SubscriptionFilter::parse("bench/#").unwrap(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
        subscription_id: None,
    };
    assert!(s.subscribe(&[req])[0].is_ok());
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        while g.load(Ordering::Relaxed) < MESSAGES {
            s.ready().await;
            out.clear();
            s.poll_outgoing(&mut out, 1024);
            for o in &out {
                if let Outgoing::Publish(p) = o {
                    if let Some(id) = p.packet_id {
                        s.acknowledge(id);
                    }
                    g.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    (got, task)
}

async fn publish_all(engine: &Engine, hub: HubId, n: u64) {
    let p = session(engine, hub, "pub");
    let payload = Bytes::from(vec![b'x'; 64]);
    for i in 0..n {
        let m = Message {
            topic: TopicName::new(&format!("bench/{}", i % 100)).unwrap(),
            payload: payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            origin: Origin::Client(p.client_id().clone()),
        };
        p.publish(m, Some(1)).unwrap();
        if i % 1000 == 999 {
            tokio::task::yield_now().await;
        }
    }
}

async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn messages_per_second() {
    // No route.
    let (engine, hub) = new_engine();
    let (got, task) = subscriber(&engine, hub);
    let t = Instant::now();
    publish_all(&engine, hub, MESSAGES).await;
    until(|| got.load(Ordering::Relaxed) >= MESSAGES).await;
    let plain = t.elapsed();
    task.await.unwrap();

    // A no-op wasm route on the same filter.
    let (engine, hub) = new_engine();
    let dir = tempfile::tempdir().unwrap();
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let compiled = host.compile(&noop_component()).unwrap();
    let instance = compiled
        .instantiate(
            RouteContext {
                route_id: RouteId::new_random(),
                name: "noop".into(),
            },
            Grants::default(),
            "{}",
            Arc::new(NoPublish),
        )
        .await
        .unwrap();
    let target = Arc::new(Wasm {
        instance,
        delivered: AtomicU64::new(0),
    });
    let routes = Routes::new(engine.clone(), dir.path(), DeliveryPolicy::default());
    let spec = RouteSpec {
        id: RouteId::new_random(),
        hub,
        name: "noop".into(),
        filter: SubscriptionFilter::parse("bench/#").unwrap(),
    };
    let id = spec.id;
    routes.upsert(spec, target.clone(), Arc::new(TapPublisher::default()));
    until(|| routes.queue_depth(id) == Some(0)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (got, task) = subscriber(&engine, hub);
    let t = Instant::now();
    publish_all(&engine, hub, MESSAGES).await;
    until(|| got.load(Ordering::Relaxed) >= MESSAGES).await;
    let subscriber_done = t.elapsed();
    until(|| target.delivered.load(Ordering::Relaxed) >= MESSAGES).await;
    let routed = t.elapsed();
    task.await.unwrap();
    routes.shutdown(Duration::from_secs(10)).await;
    let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
    println!("messages: {MESSAGES} QoS 1, 64-byte payloads, one subscriber");
    println!(
        "no route:               {:>10.0} msgs/s to the subscriber",
        rate(plain)
    );
    println!(
        "no-op wasm route:       {:>10.0} msgs/s to the subscriber, {:>10.0} msgs/s through the route (queued on disk, delivered)",
        rate(subscriber_done),
        rate(routed)
    );
}

async fn rows_per_second() {
    let url = std::env::var("IOTHUB_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("PostgreSQL");
    let table = format!("bench_routes_{}", std::process::id());
    sqlx::query(&format!(
        "CREATE TABLE {table} (topic TEXT NOT NULL, payload BYTEA NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let count = |pool: sqlx::PgPool, table: String| async move {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        n as u64
    };

    // Directly, in transactions of the route's batch size.
    let batch = DeliveryPolicy::default().batch_max as u64;
    let payload = vec![b'x'; 64];
    let t = Instant::now();
    let mut i = 0;
    while i < ROWS {
        let mut tx = pool.begin().await.unwrap();
        for j in i..(i + batch).min(ROWS) {
            sqlx::query(&format!(
                "INSERT INTO {table} (topic, payload) VALUES ($1, $2)"
            ))
            .bind(format!("bench/{}", j % 100))
            .bind(&payload)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        i += batch;
    }
    let direct = t.elapsed();
    sqlx::query(&format!("DELETE FROM {table}"))
        .execute(&pool)
        .await
        .unwrap();

    // Through the hub: publisher -> engine -> tap -> queue -> database route component.
    let (engine, hub) = new_engine();
    let dir = tempfile::tempdir().unwrap();
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let compiled = host.builtin(BuiltinKind::Database).unwrap();
    let instance = compiled
        .instantiate(
            RouteContext {
                route_id: RouteId::new_random(),
                name: "db".into(),
            },
            Grants {
                database: Some(DbTarget::new(&url).unwrap()),
                ..Grants::default()
            },
            &serde_json::json!({"engine": "postgresql",
                "query": format!("INSERT INTO {table} (topic, payload) VALUES ($TOPIC, $PAYLOAD)")})
            .to_string(),
            Arc::new(NoPublish),
        )
        .await
        .unwrap();
    let target = Arc::new(Wasm {
        instance,
        delivered: AtomicU64::new(0),
    });
    let routes = Routes::new(engine.clone(), dir.path(), DeliveryPolicy::default());
    let spec = RouteSpec {
        id: RouteId::new_random(),
        hub,
        name: "db".into(),
        filter: SubscriptionFilter::parse("bench/#").unwrap(),
    };
    let id = spec.id;
    routes.upsert(spec, target.clone(), Arc::new(TapPublisher::default()));
    until(|| routes.queue_depth(id) == Some(0)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    publish_all(&engine, hub, ROWS).await;
    until(|| target.delivered.load(Ordering::Relaxed) >= ROWS).await;
    let routed = t.elapsed();
    assert_eq!(count(pool.clone(), table.clone()).await, ROWS);
    routes.shutdown(Duration::from_secs(10)).await;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
    let rate = |d: Duration| ROWS as f64 / d.as_secs_f64();
    println!("rows: {ROWS} into PostgreSQL, transactions of {batch}");
    println!("direct sqlx:            {:>10.0} rows/s", rate(direct));
    println!(
        "database route:         {:>10.0} rows/s (publish to committed row)",
        rate(routed)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        messages_per_second().await;
        rows_per_second().await;
    });
}
