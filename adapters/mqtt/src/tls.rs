//! The MQTT-over-TLS listener (8883) and device identity from client certificates.
//!
//! A connection is a TCP socket, a TLS handshake against [`TlsTrust`] (the server
//! certificate, and client certificates verified to a hub CA or pinned), then the same
//! [`connection`] task as plain TCP. Between the two, [`identify`] turns the client's
//! certificate into a [`VerifiedCertificate`] for `Engine::resolve_client` (DESIGN.md,
//! identity): the hub whose CA verified the chain, then the device —
//! - managed hub CA: CN = device id, and the certificate must be the device's current one
//!   (the engine checks the fingerprint);
//! - the hub's own (custom) CA: CN = device name in that hub, or, unknown, a device created
//!   by the [`Provisioner`] when the hub auto-provisions devices;
//! - a pinned custom device certificate: its fingerprint names the device.
//!
//! A certificate that verifies but names no device lets the client reach CONNECT, which is
//! then refused (CONNACK not authorized, with the reason for MQTT 5 clients): the client
//! learns why, no session is created. A certificate that does not verify fails the
//! handshake with the TLS alert that says why (certificate_expired, unknown_ca, ...). A
//! client without a certificate connects as on plain TCP (devices that allow insecure
//! connections, anonymous clients of the listener's hub). wss and QUIC call [`identify`]
//! too, after their own handshakes.
//!
//! Plain MQTT sent to this port fails the handshake (not TLS) and is closed; the listener
//! keeps serving. Handshake and identification together must end within the listener's
//! connect timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use iothub_engine::{CertificateProof, Engine, EventKind, HubEvent, VerifiedCertificate};
use iothub_model::{DeviceId, HubId};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ListenerSettings;
use crate::connection::{self, Transport};
use crate::tls_trust::{
    CertificateRefusal, TlsTrust, Trusted, common_name, describe_certificate, fingerprint,
};

/// What a connection's client certificate says about its identity, for the CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCertificate {
    /// No client certificate (plain transports, server-only TLS).
    None,
    /// A verified certificate that names a device.
    Verified(VerifiedCertificate),
    /// A verified certificate that names no device that may use it: the CONNECT is refused
    /// (not authorized) with this reason.
    Refused(&'static str),
}

/// A refusal from the [`Provisioner`], for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProvisionError(pub String);

/// The future a [`Provisioner`] returns.
pub type ProvisionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<DeviceId>, ProvisionError>> + Send + 'a>>;

/// Creates devices on first connection (auto-provisioning). The binary implements it with
/// the registry, which this crate must not know; the registry also pushes the new device
/// into the engine before answering, so the CONNECT that follows finds it.
pub trait Provisioner: Send + Sync + 'static {
    /// Creates the device named `common_name` in `hub`, whose own CA issued the client's
    /// certificate, for a client connecting from `peer`. `Ok(None)` when the hub does not
    /// auto-provision devices.
    fn provision<'a>(
        &'a self,
        hub: HubId,
        common_name: &'a str,
        peer: SocketAddr,
    ) -> ProvisionFuture<'a>;
}

/// What every listener that takes client certificates (tls, wss, QUIC) shares.
#[derive(Clone)]
pub struct TlsContext {
    pub trust: Arc<TlsTrust>,
    pub provisioner: Option<Arc<dyn Provisioner>>,
}

/// Finds the device a client certificate chain (leaf first, as the handshake received it)
/// names; see the module docs. The chain is checked again against the current trust (a
/// resumed TLS session, or a CA removed since the handshake).
///
/// Raises the hub events of what it finds, each with the certificate in words and, for
/// provisioning, the CN as `object-name` and the client's address: a certificate no longer
/// trusted or whose CN names no device of a managed-CA hub ("invalid device certificate",
/// about the hub), and for hubs with their own CA "empty certificate common name", "could
/// not identify device" and "device auto-provisioning failed" (errors about the hub) or
/// "device was auto-provisioned" (info, about the new device).
pub async fn identify(
    tls: &TlsContext,
    engine: &Engine,
    chain: Option<&[CertificateDer<'_>]>,
    peer: SocketAddr,
) -> PeerCertificate {
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        return PeerCertificate::None;
    };
    let leaf = &chain[0];
    let owners = match tls.trust.classify(chain, UnixTime::now()) {
        Ok(Trusted::Pinned { device, hub }) => {
            return PeerCertificate::Verified(VerifiedCertificate {
                hub,
                device,
                proof: CertificateProof::Registered(fingerprint(leaf)),
            });
        }
        Ok(Trusted::HubCa(owners)) => owners,
        Err(refusal) => {
            debug!(message = "client certificate no longer trusted", %peer, %refusal);
            tls.trust.report_refusal(chain, &refusal);
            return PeerCertificate::Refused("the client certificate is no longer trusted");
        }
    };
    let raise = |hub: HubId, event: HubEvent| {
        let event = event
            .with_packet(describe_certificate(leaf))
            .with_source_address(peer);
        engine.raise_event(hub, event);
    };
    let managed = owners.iter().find(|o| !o.custom).copied();
    let custom: Vec<HubId> = owners.iter().filter(|o| o.custom).map(|o| o.hub).collect();
    let Some(cn) = common_name(leaf).filter(|cn| !cn.is_empty()) else {
        for o in &owners {
            let event = if o.custom {
                HubEvent::about_hub(
                    EventKind::ProvisioningFailed,
                    o.hub,
                    "empty certificate common name",
                )
            } else {
                HubEvent::about_hub(
                    EventKind::InvalidCertificate,
                    o.hub,
                    "invalid device certificate: it has no common name",
                )
            };
            raise(o.hub, event);
        }
        return PeerCertificate::Refused("the client certificate has no common name");
    };
    if let Some(owner) = managed {
        // The hub's managed CA: CN = device id; the engine checks it is the device's current
        // certificate and that the device is in this hub.
        return match cn.parse::<DeviceId>() {
            Ok(device) => PeerCertificate::Verified(VerifiedCertificate {
                hub: owner.hub,
                device,
                proof: CertificateProof::Registered(fingerprint(leaf)),
            }),
            Err(_) => {
                let event = HubEvent::about_hub(
                    EventKind::InvalidCertificate,
                    owner.hub,
                    "invalid device certificate: its CN is not a device id",
                );
                raise(owner.hub, event);
                PeerCertificate::Refused("the client certificate's CN is not a device id")
            }
        };
    }
    for &hub in &custom {
        if let Some(device) = engine.device_by_name(hub, &cn) {
            return verified_by_hub_ca(hub, device);
        }
    }
    if let Some(provisioner) = &tls.provisioner {
        for &hub in &custom {
            match provisioner.provision(hub, &cn, peer).await {
                Ok(Some(device)) => {
                    info!(message = "device auto-provisioned", hub_id = %hub, device_id = %device, name = %cn, %peer);
                    let event = HubEvent::about_device(
                        EventKind::DeviceProvisioned,
                        device,
                        "device was auto-provisioned",
                    )
                    .with_object_name(cn.clone());
                    raise(hub, event);
                    return verified_by_hub_ca(hub, device);
                }
                Ok(None) => {}
                Err(e) => {
                    info!(message = "device auto-provisioning refused", hub_id = %hub, name = %cn, %peer, error = %e);
                    let event = HubEvent::about_hub(
                        EventKind::ProvisioningFailed,
                        hub,
                        format!("device auto-provisioning failed: {e}"),
                    )
                    .with_object_name(cn.clone());
                    raise(hub, event);
                    return PeerCertificate::Refused("device auto-provisioning refused");
                }
            }
        }
    }
    for &hub in &custom {
        let event = HubEvent::about_hub(
            EventKind::ProvisioningFailed,
            hub,
            format!(
                "could not identify device: no device is named {cn:?} (auto-provisioning is off)"
            ),
        )
        .with_object_name(cn.clone());
        raise(hub, event);
    }
    PeerCertificate::Refused("the client certificate's CN names no device of its hub")
}

fn verified_by_hub_ca(hub: HubId, device: DeviceId) -> PeerCertificate {
    PeerCertificate::Verified(VerifiedCertificate {
        hub,
        device,
        proof: CertificateProof::HubCa,
    })
}

/// Accepts TLS connections until `stop` is cancelled, running each on `tracker`.
pub async fn serve_tls(
    listener: TcpListener,
    engine: Engine,
    settings: ListenerSettings,
    tls: TlsContext,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), crate::tls_trust::TlsError> {
    let acceptor = tls.trust.acceptor()?;
    let settings = Arc::new(settings);
    let transport = Transport::new("tls", &settings.name);
    let failures = HandshakeFailures::new(&settings.name);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(message = "cannot set TCP_NODELAY", %peer, %e);
                    }
                    let (acceptor, engine, settings, transport, tls, failures) = (
                        acceptor.clone(),
                        engine.clone(),
                        settings.clone(),
                        transport.clone(),
                        tls.clone(),
                        failures.clone(),
                    );
                    tracker.spawn(async move {
                        let handshake = async {
                            let stream = acceptor.accept(stream).await?;
                            let chain = stream.get_ref().1.peer_certificates();
                            let certificate = identify(&tls, &engine, chain, peer).await;
                            Ok::<_, std::io::Error>((stream, certificate))
                        };
                        match tokio::time::timeout(settings.connect_timeout, handshake).await {
                            Ok(Ok((stream, certificate))) => {
                                connection::run_with_certificate(
                                    stream, peer, engine, settings, transport, certificate,
                                )
                                .await;
                            }
                            Ok(Err(e)) => failures.record(&settings.name, peer, &e),
                            Err(_) => {
                                failures.timeout.increment(1);
                                debug!(message = "TLS handshake not finished in time; closing", listener = %settings.name, %peer);
                            }
                        }
                    });
                }
                Err(e) => {
                    warn!(message = "accept failed", listener = %settings.name, %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

/// `iothub_tls_handshake_failures_total{listener, reason}`.
#[derive(Clone)]
struct HandshakeFailures {
    listener: String,
    timeout: metrics::Counter,
}

impl HandshakeFailures {
    fn new(listener: &str) -> Self {
        Self {
            listener: listener.to_string(),
            timeout: Self::counter(listener, "timeout"),
        }
    }

    fn counter(listener: &str, reason: &'static str) -> metrics::Counter {
        metrics::counter!(
            "iothub_tls_handshake_failures_total",
            "listener" => listener.to_string(),
            "reason" => reason
        )
    }

    /// Counts and logs a failed handshake: refused client certificates at info (someone
    /// holds a certificate we do not accept), the rest (not TLS, resets) at debug.
    fn record(&self, listener: &str, peer: SocketAddr, error: &std::io::Error) {
        let reason = handshake_failure(error);
        Self::counter(&self.listener, reason.label()).increment(1);
        match reason {
            HandshakeFailure::Certificate(refusal) => {
                info!(message = "TLS handshake refused: client certificate", listener, %peer, reason = %refusal);
            }
            other => {
                debug!(message = "TLS handshake failed", listener, %peer, reason = other.label(), %error);
            }
        }
    }
}

/// Why a TLS handshake failed, from what tokio-rustls returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client's certificate was refused.
    Certificate(CertificateRefusal),
    /// The client did not speak TLS (plain MQTT on the TLS port, say).
    NotTls,
    /// A TLS protocol failure (no common version or cipher suite, a bad message, an alert
    /// from the client: it did not trust our certificate).
    Protocol,
    /// The connection failed underneath (reset, closed).
    Io,
}

impl HandshakeFailure {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Certificate(r) => r.label(),
            Self::NotTls => "not_tls",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }
}

/// Classifies a handshake error.
pub fn handshake_failure(error: &std::io::Error) -> HandshakeFailure {
    use rustls::CertificateError as C;
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return HandshakeFailure::Io;
    };
    let refusal = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            C::BadEncoding => CertificateRefusal::Malformed,
            C::Expired | C::ExpiredContext { .. } => CertificateRefusal::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => CertificateRefusal::NotYetValid,
            C::UnknownIssuer => CertificateRefusal::UnknownIssuer,
            C::BadSignature => CertificateRefusal::BadSignature,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                CertificateRefusal::WrongKeyUsage
            }
            C::Other(other) => other
                .0
                .downcast_ref::<CertificateRefusal>()
                .cloned()
                .unwrap_or_else(|| CertificateRefusal::Other(other.to_string())),
            other => CertificateRefusal::Other(format!("{other:?}")),
        },
        rustls::Error::InvalidMessage(_) => return HandshakeFailure::NotTls,
        _ => return HandshakeFailure::Protocol,
    };
    HandshakeFailure::Certificate(refusal)
}
