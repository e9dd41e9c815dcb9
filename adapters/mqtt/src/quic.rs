//! MQTT over QUIC: the `quic` listener (UDP).
//!
//! A QUIC connection is TLS 1.3 with the ALPN [`ALPN`] (a client offering anything else fails
//! the handshake: rustls answers `no_application_protocol`), and every bidirectional stream
//! the client opens on it is one MQTT connection: the stream's two halves are joined into one
//! `AsyncRead + AsyncWrite` and handed to the same [`connection::run`](crate::connection::run)
//! as TCP. Unidirectional streams are not allowed (their credit is 0).
//!
//! QUIC shares the TLS listeners' [`TlsContext`]: the same server certificate and client
//! verification; a client certificate presented in the QUIC handshake identifies the device
//! of every MQTT connection on that QUIC connection, exactly as on the TLS port
//! ([`tls::identify`](crate::tls::identify)).
//!
//! Lifetimes follow MQTT rather than QUIC: the server sets no idle timeout of its own (a
//! client's MQTT keep-alive, which the connection task enforces, decides when a silent
//! client is gone; the client may still ask for a QUIC idle timeout), the first stream must
//! be opened within the listener's connect timeout, and the QUIC connection is closed when
//! its last MQTT connection ends. Server-initiated goodbyes (a DISCONNECT before a takeover,
//! say) are finished on the stream and given a moment to be acknowledged before the close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iothub_engine::Engine;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::ListenerSettings;
use crate::connection::{self, Transport};
use crate::tls::{self, PeerCertificate, TlsContext};
use crate::tls_trust::TlsError;

/// The ALPN protocol id of MQTT over QUIC.
pub const ALPN: &[u8] = b"mqtt";
/// Concurrent MQTT connections (bidirectional streams) one QUIC connection may carry.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How long a finished stream's last bytes get to be acknowledged before the connection closes.
const LINGER: Duration = Duration::from_secs(2);
/// Application close codes (RFC 9000 §20.2 leaves them to the application protocol).
const CLOSE_DONE: u32 = 0;
const CLOSE_NO_STREAM: u32 = 1;

/// A QUIC listener cannot be configured or bound.
#[derive(Debug, thiserror::Error)]
pub enum QuicConfigError {
    #[error("the TLS configuration cannot serve QUIC (it needs TLS 1.3 with AES-128-GCM): {0}")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error(transparent)]
    Trust(#[from] TlsError),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a QUIC endpoint on `addr` (UDP) for [`serve_quic`], with [`server_config`] over the
/// shared trust's TLS configuration. Must be called within the tokio runtime.
pub fn bind(addr: SocketAddr, tls: &TlsContext) -> Result<Endpoint, QuicConfigError> {
    let tls = tls.trust.server_config(&[ALPN])?;
    let config = server_config(&tls)?;
    Endpoint::server(config, addr).map_err(|source| QuicConfigError::Bind { addr, source })
}

/// The quinn server configuration for MQTT over QUIC from the TLS configuration the TLS
/// listeners use (same server certificate, same client-certificate verifier, so updates to
/// either apply to QUIC too), with ALPN `mqtt` and the stream limits of this module.
pub fn server_config(tls: &rustls::ServerConfig) -> Result<quinn::ServerConfig, QuicConfigError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // QUIC carries no early data for us; 0 is one of the two values QUIC accepts.
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(None);
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts QUIC connections on `endpoint` (bound by the caller with [`server_config`]) until
/// `stop` is cancelled. Each connection runs on `tracker` and ends after its MQTT connections.
pub async fn serve_quic(
    endpoint: Endpoint,
    engine: Engine,
    settings: ListenerSettings,
    tls: TlsContext,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let settings = Arc::new(settings);
    let transport = Transport::new("quic", &settings.name);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tracker.spawn(serve_connection(
                        incoming,
                        tls.clone(),
                        engine.clone(),
                        settings.clone(),
                        transport.clone(),
                        stop.clone(),
                    ));
                }
                // The endpoint was closed.
                None => break,
            }
        }
    }
    // No new connections; the live ones end with their sessions (the engine's shutdown).
    endpoint.set_server_config(None);
}

async fn serve_connection(
    incoming: Incoming,
    tls: TlsContext,
    engine: Engine,
    settings: Arc<ListenerSettings>,
    transport: Transport,
    stop: CancellationToken,
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(message = "QUIC connection refused", %peer, error = %e);
            return;
        }
    };
    // The handshake and the identification of the client certificate, if any, together
    // within the connect timeout.
    let handshake = async {
        let conn = connecting.await?;
        let chain = peer_chain(&conn);
        let certificate = tls::identify(&tls, &engine, chain.as_deref(), peer).await;
        Ok::<_, quinn::ConnectionError>((conn, certificate))
    };
    let (conn, certificate) = match tokio::time::timeout(settings.connect_timeout, handshake).await
    {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            debug!(message = "QUIC handshake failed", listener = %settings.name, %peer, error = %e);
            return;
        }
        Err(_) => {
            debug!(message = "QUIC handshake not finished in time", listener = %settings.name, %peer);
            return;
        }
    };
    let mut streams = JoinSet::new();
    let mut accepting = true;
    let code = loop {
        tokio::select! {
            () = stop.cancelled(), if accepting => {
                accepting = false;
                if streams.is_empty() {
                    break CLOSE_DONE;
                }
            }
            accepted = conn.accept_bi(), if accepting => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(run_stream(
                        send,
                        recv,
                        peer,
                        certificate,
                        engine.clone(),
                        settings.clone(),
                        transport.clone(),
                    ));
                }
                Err(e) => {
                    // The client closed the connection (or it broke): its streams end on
                    // their own with read errors.
                    debug!(message = "QUIC connection ended", %peer, reason = %e);
                    accepting = false;
                    if streams.is_empty() {
                        break CLOSE_DONE;
                    }
                }
            },
            Some(_) = streams.join_next() => {
                if streams.is_empty() {
                    break CLOSE_DONE;
                }
            }
            () = tokio::time::sleep(settings.connect_timeout), if accepting && streams.is_empty() => {
                debug!(message = "no MQTT stream opened in time; closing", %peer);
                break CLOSE_NO_STREAM;
            }
        }
    };
    close(&conn, code);
}

/// The client's certificate chain (leaf first) as rustls verified it in the handshake.
fn peer_chain(conn: &Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

fn close(conn: &Connection, code: u32) {
    let reason: &[u8] = match code {
        CLOSE_NO_STREAM => b"no MQTT stream opened in time",
        _ => b"",
    };
    conn.close(VarInt::from_u32(code), reason);
}

/// One MQTT connection on one bidirectional stream.
async fn run_stream(
    send: SendStream,
    recv: RecvStream,
    peer: SocketAddr,
    certificate: PeerCertificate,
    engine: Engine,
    settings: Arc<ListenerSettings>,
    transport: Transport,
) {
    let mut io = tokio::io::join(recv, send);
    connection::run_with_certificate(&mut io, peer, engine, settings, transport, certificate).await;
    let (_recv, mut send) = io.into_inner();
    // Already finished when the connection task shut its stream down; a second finish is a
    // harmless error.
    let _ = send.finish();
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QUIC needs TLS 1.3 and the AES-128-GCM initial suite: a TLS 1.2-only provider cannot
    /// serve it, the default ring provider can.
    #[test]
    fn server_config_needs_a_tls13_provider() {
        let key = rustls::crypto::ring::default_provider();
        let resolver = Arc::new(rustls::server::ResolvesServerCertUsingSni::new());
        let ok = rustls::ServerConfig::builder_with_provider(Arc::new(key.clone()))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        assert!(server_config(&ok).is_ok());

        let mut only_tls12 = key;
        only_tls12.cipher_suites.retain(|s| s.tls13().is_none());
        let bad = rustls::ServerConfig::builder_with_provider(Arc::new(only_tls12))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        assert!(matches!(server_config(&bad), Err(QuicConfigError::Tls(_))));
    }
}
