//! `iothub serve`: builds the engine and its hubs from the configuration, binds every
//! listener (all of them before serving any, so a port that cannot be bound stops the start
//! cleanly), then runs until the shutdown signal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iothub_control::Registry;
use iothub_engine::{Engine, EngineConfig, HubSpec};
use iothub_model::HubId;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;

/// Namespace of the stable ids of hubs declared in the configuration: the same name gives the
/// same id on every start, so persistent state keyed by hub id survives a restart.
const CONFIG_HUB_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x5d, 0x0a, 0x6e, 0x1c, 0x33, 0x7b, 0x4f, 0x52, 0x9c, 0x0e, 0x61, 0x7a, 0x2b, 0x45, 0x11, 0x90,
]);

/// How often the engine's timers (will delay, session and message expiry) are driven.
const TICK: Duration = Duration::from_millis(250);
/// How long connections get to say goodbye at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(message = "cannot listen for ctrl-c", %e);
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(message = "cannot listen for SIGTERM", %e);
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

pub fn config_hub_id(name: &str) -> HubId {
    HubId::from_uuid(uuid::Uuid::new_v5(&CONFIG_HUB_NAMESPACE, name.as_bytes()))
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // First: metric handles taken before the recorder exists (the engine resolves its per-hub
    // handles when a hub is created) would count into nothing.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")?;
    let engine = Engine::new(EngineConfig::default());
    let mut hub_ids: HashMap<String, HubId> = HashMap::new();
    for hub in &config.hubs {
        let id = config_hub_id(&hub.name.value);
        engine
            .create_hub(HubSpec {
                id,
                name: hub.name.value.clone(),
                plan: hub.plan,
                limits: hub.limits.clone(),
                allow_anonymous: hub.allow_anonymous.value,
                anonymous_filters: Default::default(),
                enabled: true,
            })
            .with_context(|| format!("cannot create hub {:?}", hub.name.value))?;
        hub_ids.insert(hub.name.value.clone(), id);
    }

    let registry = crate::control_plane::open(
        &config,
        Arc::new(crate::runtime::EngineRuntime::new(engine.clone())),
    )
    .await?;

    // Bind everything first: a port that cannot be bound is fatal and names itself.
    let mut mqtt_listeners = Vec::new();
    for l in &config.listeners.mqtt {
        let tcp = TcpListener::bind(l.bind)
            .await
            .with_context(|| format!("cannot bind MQTT listener {:?} on {}", l.name, l.bind))?;
        let settings = iothub_adapter_mqtt::ListenerSettings {
            name: l.name.clone(),
            anonymous_hub: l
                .anonymous_hub
                .as_ref()
                .and_then(|h| hub_ids.get(&h.value).copied()),
            connect_timeout: Duration::from_secs(u64::from(config.mqtt.connect_timeout_secs)),
            max_packet_size: config.mqtt.max_packet_size,
        };
        mqtt_listeners.push((tcp, settings));
    }
    let api_listener = TcpListener::bind(config.api.bind)
        .await
        .with_context(|| format!("cannot bind the API listener on {}", config.api.bind))?;

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    for (tcp, settings) in mqtt_listeners {
        let addr = tcp.local_addr().context("listener address")?;
        info!("listening listener={} addr={addr}", settings.name);
        tracker.spawn(iothub_adapter_mqtt::serve_tcp(
            tcp,
            engine.clone(),
            settings,
            stop.clone(),
            tracker.clone(),
        ));
    }

    let api_addr = api_listener.local_addr().context("listener address")?;
    info!("listening listener=api addr={api_addr}");
    let api_stop = stop.clone();
    let api = tokio::spawn(async move {
        axum::serve(api_listener, api_router(prometheus, registry))
            .with_graceful_shutdown(async move { api_stop.cancelled().await })
            .await
    });

    let ticker = {
        let engine = engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => engine.tick(),
                    () = stop.cancelled() => break,
                }
            }
        })
    };

    shutdown.await;
    info!("shutting down: closing listeners and disconnecting clients");
    stop.cancel();
    engine.shutdown();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close within {DRAIN_TIMEOUT:?}; exiting anyway");
    }
    ticker.abort();
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(message = "API server error", %e),
        Err(e) => warn!(message = "API server task failed", %e),
    }
    info!("stopped");
    Ok(())
}

/// The management API with `/metrics` and `/healthz` beside it (the API router brings the
/// JSON fallback for unknown paths).
fn api_router(prometheus: PrometheusHandle, registry: Arc<Registry>) -> axum::Router {
    use axum::routing::get;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    iothub_control::api::router(registry)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let handle = prometheus.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        handle.render(),
                    )
                }
            }),
        )
}
