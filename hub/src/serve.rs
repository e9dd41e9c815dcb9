//! `iothub serve`: builds the engine and its hubs from the configuration, binds every
//! listener (all of them before serving any, so a port that cannot be bound stops the start
//! cleanly), then runs until the shutdown signal.
//!
//! TLS: the tls, wss and quic listeners share one [`TlsTrust`]: the server certificate
//! (from `tls.cert_file`, or generated in `data_dir/tls`, read again every
//! `tls.reload_interval_secs`) and the client trust, which the control plane's runtime keeps
//! current (hub CAs, pinned device certificates). The same server CA is served by the API's
//! `server-ca` endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iothub_adapter_mqtt::tls::TlsContext;
use iothub_adapter_mqtt::tls_trust::TlsTrust;
use iothub_control::Registry;
use iothub_control::api::{ApiExtras, ServerCaPem};
use iothub_engine::{Engine, EngineConfig, HubSpec};
use iothub_model::{HubId, TopicName};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, TlsConfig};
use crate::metrics::{Collector, MeteredProvisioner};
use crate::runtime::{EngineRuntime, RegistryFrameCounters, RegistryProvisioner};

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
        // Route latency (tap to delivery) as a histogram: from a millisecond to the retry
        // budget's minutes.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("iothub_route_latency_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ],
        )
        .context("cannot configure the route latency histogram")?
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")?;
    // The durable store before the engine: the engine reports every durable change to it.
    let opened = open_store(&config).await?;
    let store = opened.as_ref().map(|o| o.store.clone());
    let engine = Engine::new(EngineConfig {
        journal: store.clone().map(|s| s as Arc<dyn iothub_engine::Journal>),
        ..EngineConfig::default()
    });
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
                events_enabled: !hub.disable_events,
                // Validated with the configuration.
                events_topic_prefix: TopicName::new(&hub.events_topic_prefix.value)
                    .unwrap_or_else(|_| iothub_engine::default_events_topic_prefix()),
            })
            .with_context(|| format!("cannot create hub {:?}", hub.name.value))?;
        hub_ids.insert(hub.name.value.clone(), id);
    }

    // The TLS material before the registry: the runtime keeps the trust's hub CAs and pins
    // current from the first stored record it loads.
    let server_ca = ServerCaPem::default();
    let tls = if config.listeners.any_tls() {
        let material = load_server_certificate(&config.tls, &config.data_dir).await?;
        let trust = TlsTrust::new(&material.chain_pem, &material.key_pem)
            .context("cannot use the TLS server certificate")?;
        // Refused client certificates raise hub events on the hub that issued them.
        trust.raise_events_on(engine.clone());
        server_ca.set(material.ca_pem.as_str());
        Some((trust, material))
    } else {
        None
    };
    let trust = tls.as_ref().map(|(trust, _)| trust.clone());
    let counters = Arc::new(RegistryFrameCounters::default());
    let runtime = Arc::new(EngineRuntime::new(
        engine.clone(),
        trust.clone(),
        counters.clone(),
    ));
    // Routes before the registry loads them (their queues live in <data_dir>/routes).
    let routes = crate::routes::RouteRuntime::new(
        engine.clone(),
        &config.data_dir,
        iothub_routes::DeliveryPolicy::default(),
    )?;
    runtime.set_routes(routes.clone());
    let registry = crate::control_plane::open(&config, runtime.clone()).await?;
    counters.set_registry(&registry);
    // Every hub and device is known: the durable state goes back before any listener opens.
    if let Some(opened) = opened {
        let started = std::time::Instant::now();
        let stats = engine.restore(opened.restored, opened.next_id);
        info!(
            message = "durable state restored",
            retained = stats.retained,
            sessions = stats.sessions,
            queued = stats.queued,
            spilled = stats.spilled,
            inflight = stats.inflight,
            sessions_dropped = stats.sessions_dropped,
            hubs_dropped = stats.hubs_dropped,
            elapsed_ms = started.elapsed().as_millis() as u64,
        );
    }
    // Routes after the restore: their taps resume their journaled sessions.
    crate::control_plane::start_routes(&registry, runtime.as_ref()).await?;
    // The metrics API's saved series, before any connection adds to them.
    let collector = Collector::start(engine.clone(), registry.clone()).await;
    let tls_context = trust.as_ref().map(|trust| TlsContext {
        trust: trust.clone(),
        provisioner: Some(Arc::new(MeteredProvisioner::new(Arc::new(
            RegistryProvisioner {
                registry: registry.clone(),
                runtime: runtime.clone(),
            },
        )))),
    });
    let wss_tls = match &tls_context {
        Some(tls) => Some(
            iothub_adapter_mqtt::ws::WssTls::new(tls.clone())
                .context("cannot build the TLS configuration")?,
        ),
        None => None,
    };

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
    if let Some(tls) = &tls_context {
        for l in &config.listeners.tls {
            let tcp = bind_tcp("TLS", l).await?;
            let addr = tcp.local_addr().context("listener address")?;
            let serve = iothub_adapter_mqtt::tls::serve_tls(
                tcp,
                engine.clone(),
                settings(l),
                tls.clone(),
                stop.clone(),
                tracker.clone(),
            );
            let name = l.name.clone();
            let serve = async move {
                if let Err(e) = serve.await {
                    warn!(message = "TLS listener stopped", listener = %name, %e);
                }
            };
            listeners.push((l.name.clone(), addr, Box::pin(serve)));
        }
    }
    let ws = config.listeners.ws.iter().map(|l| (l, None));
    let wss = config.listeners.wss.iter().map(|l| (l, wss_tls.clone()));
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
    if let Some(tls) = &tls_context {
        for l in &config.listeners.quic {
            let endpoint = iothub_adapter_mqtt::quic::bind(l.bind, tls)
                .with_context(|| format!("cannot start QUIC listener {:?}", l.name))?;
            let addr = endpoint.local_addr().context("listener address")?;
            let serve = iothub_adapter_mqtt::quic::serve_quic(
                endpoint,
                engine.clone(),
                settings(l),
                tls.clone(),
                stop.clone(),
                tracker.clone(),
            );
            listeners.push((l.name.clone(), addr, Box::pin(serve)));
        }
    }
    let api_listener = TcpListener::bind(config.api.bind)
        .await
        .with_context(|| format!("cannot bind the API listener on {}", config.api.bind))?;

    // The signal handlers are installed by the shutdown future's first poll: poll it before
    // announcing anything, so a SIGTERM right after the `listening` lines shuts down
    // gracefully instead of killing the process with the default action.
    let mut shutdown = std::pin::pin!(shutdown);
    let signalled_early = tokio::select! {
        biased;
        () = &mut shutdown => true,
        () = std::future::ready(()) => false,
    };

    // Every transport is announced before the API: whoever waits for the API's line (the
    // test harnesses) has then seen all of them.
    for (name, addr, serve) in listeners {
        info!("listening listener={name} addr={addr}");
        tracker.spawn(serve);
    }

    let api_addr = api_listener.local_addr().context("listener address")?;
    info!("listening listener=api addr={api_addr}");
    if let Some((trust, material)) = tls {
        tokio::spawn(reload_server_certificate(
            config.tls.clone(),
            config.data_dir.clone(),
            trust,
            server_ca.clone(),
            material,
            stop.clone(),
        ));
    }
    let networks = runtime.networks().clone();
    let api_stop = stop.clone();
    let api = tokio::spawn(async move {
        axum::serve(
            api_listener,
            api_router(prometheus, registry, server_ca, networks),
        )
        .with_graceful_shutdown(async move { api_stop.cancelled().await })
        .await
    });

    let collecting = tokio::spawn(collector.clone().run(stop.clone()));
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

    if !signalled_early {
        shutdown.await;
    }
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
    collecting.abort();
    // Routes stop taking messages and close (fsync) their queues; what is queued is
    // delivered after the restart.
    routes.shutdown().await;
    // The connections are gone and their last changes recorded: write, fsync, close.
    if let Some(store) = store {
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow::anyhow!(e).context("the store did not close cleanly")),
            Err(e) => return Err(anyhow::anyhow!(e).context("the store did not close cleanly")),
        }
    }
    // The connections are closed: their last counts are in, and saved for the restart.
    collector.finish().await;
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(message = "API server error", %e),
        Err(e) => warn!(message = "API server task failed", %e),
    }
    info!("stopped");
    Ok(())
}

/// The store opened, with what the engine must restore.
struct OpenedStore {
    store: Arc<iothub_persist::Store>,
    restored: Vec<(HubId, iothub_engine::RestoredHub)>,
    next_id: u64,
}

/// Opens the write-ahead log in `<data_dir>/wal` (`persistence.enabled`), replaying it.
async fn open_store(config: &Config) -> anyhow::Result<Option<OpenedStore>> {
    let p = &config.persistence;
    if !p.enabled {
        info!("persistence disabled: retained messages and sessions live in memory only");
        return Ok(None);
    }
    let options = iothub_persist::StoreOptions {
        fsync: match p.fsync {
            crate::config::FsyncMode::Always => iothub_persist::FsyncPolicy::Always,
            crate::config::FsyncMode::Grouped => iothub_persist::FsyncPolicy::Grouped(
                Duration::from_millis(u64::from(p.fsync_interval_ms)),
            ),
        },
        ..iothub_persist::StoreOptions::default()
    };
    let dir = config.wal_dir();
    let opened = tokio::task::spawn_blocking(move || iothub_persist::Store::open(&dir, options))
        .await
        .context("the store's open task failed")?
        .with_context(|| format!("cannot open the store in {}", config.wal_dir().display()))?;
    Ok(Some(OpenedStore {
        store: Arc::new(opened.store),
        restored: opened.restored,
        next_id: opened.report.next_id,
    }))
}

async fn bind_tcp(
    kind: &str,
    l: &crate::config::MqttListenerConfig,
) -> anyhow::Result<TcpListener> {
    TcpListener::bind(l.bind)
        .await
        .with_context(|| format!("cannot bind {kind} listener {:?} on {}", l.name, l.bind))
}

/// The TLS listeners' server certificate, and the CA devices should trust.
#[derive(Clone, PartialEq, Eq)]
struct ServerCertificate {
    chain_pem: String,
    key_pem: String,
    ca_pem: String,
}

/// Reads the configured certificate files, or loads (creating or renewing when needed) the
/// generated certificate in `data_dir/tls`.
async fn load_server_certificate(
    tls: &TlsConfig,
    data_dir: &Path,
) -> anyhow::Result<ServerCertificate> {
    let (tls, data_dir) = (tls.clone(), data_dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        if !tls.uses_files() {
            let pki = iothub_control::pki::ServerPki::load_or_create(&data_dir, &tls.hostnames)
                .with_context(|| {
                    format!(
                        "cannot load or create the server certificate in {}",
                        iothub_control::pki::ServerPki::dir(&data_dir).display()
                    )
                })?;
            return Ok(ServerCertificate {
                chain_pem: pki.cert_chain_pem,
                key_pem: pki.key_pem,
                ca_pem: pki.ca_pem,
            });
        }
        let read = |path: &Path, what: &str| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read tls.{what} {}", path.display()))
        };
        let chain_pem = read(&tls.cert_file, "cert_file")?;
        let key_pem = read(&tls.key_file, "key_file")?;
        let ca_pem = if tls.ca_file.as_os_str().is_empty() {
            last_certificate(&chain_pem).to_string()
        } else {
            read(&tls.ca_file, "ca_file")?
        };
        Ok(ServerCertificate {
            chain_pem,
            key_pem,
            ca_pem,
        })
    })
    .await
    .context("loading the server certificate")?
}

/// The last PEM certificate of a chain: the one nearest its root.
fn last_certificate(chain_pem: &str) -> &str {
    chain_pem
        .rfind("-----BEGIN CERTIFICATE-----")
        .map_or(chain_pem, |at| &chain_pem[at..])
}

/// Reads the server certificate's source again every `reload_interval_secs`; a changed
/// certificate applies to the next handshake (and the server-ca endpoint), a broken one is
/// logged and the current one kept.
async fn reload_server_certificate(
    config: TlsConfig,
    data_dir: std::path::PathBuf,
    trust: Arc<TlsTrust>,
    server_ca: ServerCaPem,
    mut current: ServerCertificate,
    stop: CancellationToken,
) {
    let period = Duration::from_secs(u64::from(config.reload_interval_secs));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        let fresh = match load_server_certificate(&config, &data_dir).await {
            Ok(fresh) if fresh == current => continue,
            Ok(fresh) => fresh,
            Err(e) => {
                warn!(message = "cannot reload the server certificate; keeping the current one", error = %format!("{e:#}"));
                continue;
            }
        };
        match trust.set_server_certificate(&fresh.chain_pem, &fresh.key_pem) {
            Ok(()) => {
                server_ca.set(fresh.ca_pem.as_str());
                info!("server certificate reloaded: new TLS connections use it");
                current = fresh;
            }
            Err(e) => {
                warn!(message = "the new server certificate cannot be used; keeping the current one", %e);
            }
        }
    }
}

/// What the binary itself serves on the API port besides the management API and the network
/// endpoints, as (method, path); documented in `control/openapi.json` (`x-served-by: hub`).
const HUB_ROUTES: [(&str, &str); 2] = [("get", "/healthz"), ("get", "/metrics")];

/// The management API with `/metrics` and `/healthz` beside it (the API router brings the
/// JSON fallback for unknown paths).
fn api_router(
    prometheus: PrometheusHandle,
    registry: Arc<Registry>,
    server_ca: ServerCaPem,
    networks: iothub_networks::Networks,
) -> axum::Router {
    use axum::routing::get;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    let [(_, healthz), (_, metrics)] = HUB_ROUTES;
    iothub_control::api::router_with(registry, ApiExtras { server_ca })
        .merge(networks.router())
        .route(healthz, get(|| async { "ok" }))
        .route(
            metrics,
            get(move || {
                let handle = prometheus.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        {
                            crate::metrics::refresh_process_metrics();
                            handle.render()
                        },
                    )
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operations of the OpenAPI document that the control plane's router does not serve
    /// (`x-served-by`) are exactly the network endpoints and the binary's own: with the control
    /// crate's test, every route the API port answers is documented and the reverse.
    #[test]
    fn the_api_ports_other_routes_are_documented() {
        let doc: serde_json::Value =
            serde_json::from_str(iothub_control::api::OPENAPI_JSON).expect("openapi.json");
        let mut documented: Vec<(String, String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if let Some(by) = op.get("x-served-by").and_then(serde_json::Value::as_str) {
                    documented.push((by.to_owned(), method.clone(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String, String)> = iothub_networks::ROUTES
            .iter()
            .map(|(m, p)| ("networks".to_owned(), (*m).to_owned(), (*p).to_owned()))
            .chain(
                HUB_ROUTES
                    .iter()
                    .map(|(m, p)| ("hub".to_owned(), (*m).to_owned(), (*p).to_owned())),
            )
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn server_ca_defaults_to_the_chains_last_certificate() {
        let leaf = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let root = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        // (chain file, what server-ca serves)
        let cases = [
            (format!("{leaf}{root}"), root),
            (leaf.to_string(), leaf),
            (format!("# comment\n{leaf}\n{root}"), root),
            ("no PEM at all".to_string(), "no PEM at all"),
        ];
        for (chain, served) in &cases {
            assert_eq!(last_certificate(chain), *served, "{chain:?}");
        }
    }
}
