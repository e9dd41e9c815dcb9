//! `iothub serve`: builds the engine and its hubs from the configuration, binds every
//! listener (all of them before serving any, so a port that cannot be bound stops the start
//! cleanly), then runs until the shutdown signal.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// A bound listener's accept loop, not yet started.
type AcceptLoop = Pin<Box<dyn Future<Output = ()> + Send>>;

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

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let settings = |l: &crate::config::MqttListenerConfig| iothub_adapter_mqtt::ListenerSettings {
        name: l.name.clone(),
        anonymous_hub: l
            .anonymous_hub
            .as_ref()
            .and_then(|h| hub_ids.get(&h.value).copied()),
        connect_timeout: Duration::from_secs(u64::from(config.mqtt.connect_timeout_secs)),
        max_packet_size: config.mqtt.max_packet_size,
    };
    // Bind everything first: a port that cannot be bound is fatal and names itself. Each
    // bound listener waits here as its not yet started accept loop.
    let mut listeners: Vec<(String, SocketAddr, AcceptLoop)> = Vec::new();
    for l in &config.listeners.mqtt {
        let tcp = bind_tcp("MQTT", l).await?;
        let addr = tcp.local_addr().context("listener address")?;
        let serve = iothub_adapter_mqtt::serve_tcp(
            tcp,
            engine.clone(),
            settings(l),
            stop.clone(),
            tracker.clone(),
        );
        listeners.push((l.name.clone(), addr, Box::pin(serve)));
    }
    let server_tls = if config.listeners.wss.is_empty() && config.listeners.quic.is_empty() {
        None
    } else {
        Some(server_tls_config(&config)?)
    };
    let ws = config.listeners.ws.iter().map(|l| (l, None));
    let wss = config.listeners.wss.iter().map(|l| {
        (
            l,
            server_tls
                .as_ref()
                .map(|t| iothub_adapter_mqtt::ws::tls_acceptor(t)),
        )
    });
    for (l, tls) in ws.chain(wss) {
        let kind = if tls.is_some() { "wss" } else { "ws" };
        let tcp = bind_tcp(kind, l).await?;
        let addr = tcp.local_addr().context("listener address")?;
        let serve = iothub_adapter_mqtt::ws::serve_ws(
            tcp,
            tls,
            engine.clone(),
            settings(l),
            stop.clone(),
            tracker.clone(),
        );
        listeners.push((l.name.clone(), addr, Box::pin(serve)));
    }
    if let Some(tls) = &server_tls {
        for l in &config.listeners.quic {
            let endpoint = iothub_adapter_mqtt::quic::bind(l.bind, tls)
                .with_context(|| format!("cannot start QUIC listener {:?}", l.name))?;
            let addr = endpoint.local_addr().context("listener address")?;
            let serve = iothub_adapter_mqtt::quic::serve_quic(
                endpoint,
                engine.clone(),
                settings(l),
                stop.clone(),
                tracker.clone(),
            );
            listeners.push((l.name.clone(), addr, Box::pin(serve)));
        }
    }
    let api_listener = TcpListener::bind(config.api.bind)
        .await
        .with_context(|| format!("cannot bind the API listener on {}", config.api.bind))?;

    // Every transport is announced before the API: whoever waits for the API's line (the
    // test harnesses) has then seen all of them.
    for (name, addr, serve) in listeners {
        info!("listening listener={name} addr={addr}");
        tracker.spawn(serve);
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

async fn bind_tcp(
    kind: &str,
    l: &crate::config::MqttListenerConfig,
) -> anyhow::Result<TcpListener> {
    TcpListener::bind(l.bind)
        .await
        .with_context(|| format!("cannot bind {kind} listener {:?} on {}", l.name, l.bind))
}

/// The TLS server configuration of the wss and QUIC listeners: the local server certificate
/// from `data_dir/tls` (made on first use), no client certificates yet.
// TODO(issue 4, tls helper): replace with the shared TlsTrust configuration (hot-reloaded
// server certificate, client-certificate verification), which these listeners then share.
fn server_tls_config(config: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = iothub_control::pki::ServerPki::load_or_create(&config.data_dir, &[])
        .context("cannot load or create the server certificate")?;
    let chain = CertificateDer::pem_slice_iter(pki.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the server certificate chain is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())
        .context("the server key is not PEM")?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the server certificate and key do not match")?;
    Ok(Arc::new(tls))
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
