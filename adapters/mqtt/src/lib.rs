//! iothub's MQTT listeners.
//!
//! One connection task ([`connection::run`]) speaks MQTT 3.1.1 and 5.0 over any
//! `AsyncRead + AsyncWrite` stream and drives the engine through its session handle; the TCP
//! listener here feeds it plain sockets, and TLS ([`tls`]), WebSocket and QUIC feed it their
//! streams. [`tls_trust::TlsTrust`] is the server certificate and the client trust (hub CAs,
//! pinned device certificates) every TLS-based listener shares, changed at run time;
//! [`tls::identify`] turns a verified client certificate into the device it names.
//! [`events`] turns what clients send that the hub refuses (and what their certificates turn
//! out to be) into hub events, raised on the client's hub through the engine.
//!
//! This crate is the only one that knows the MQTT wire format (through `iothub-mqtt-codec`)
//! and transports; it never reaches into the engine's internals, only its link API (connect ->
//! session -> publish/subscribe/ack). It must never depend on the control plane, HTTP or wasm
//! (auto-provisioning reaches the registry through the [`tls::Provisioner`] trait).

mod aliases;
pub mod connection;
mod convert;
pub mod events;
pub mod quic;
pub mod tls;
#[cfg(test)]
mod tls_tests;
pub mod tls_trust;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use iothub_engine::Engine;
use iothub_model::HubId;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// What one MQTT listener needs besides its socket.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// The listener's name, used in logs and metric labels.
    pub name: String,
    /// The hub that clients which are not registered devices join, if any (the last step of
    /// `Engine::resolve_client`; devices always join their own hub).
    pub anonymous_hub: Option<HubId>,
    /// How long a client may take between opening the connection and sending CONNECT.
    pub connect_timeout: Duration,
    /// Largest packet accepted from a client (fixed header included); announced in CONNACK.
    pub max_packet_size: u32,
}

/// Accepts TCP connections until `stop` is cancelled, running each on `tracker` so the caller
/// can wait for them to finish at shutdown.
pub async fn serve_tcp(
    listener: TcpListener,
    engine: Engine,
    settings: ListenerSettings,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let settings = Arc::new(settings);
    let transport = connection::Transport::new("tcp", &settings.name);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(message = "cannot set TCP_NODELAY", %peer, %e);
                    }
                    tracker.spawn(connection::run(
                        stream,
                        peer,
                        engine.clone(),
                        settings.clone(),
                        transport.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors or a similar resource error: back off instead of
                    // spinning on accept.
                    warn!(message = "accept failed", listener = %settings.name, %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
