//! [`TlsTrust`]: what the TLS listeners (tls, wss, QUIC) present and whom they trust, changed
//! at run time without a restart.
//!
//! - The server certificate: a rustls [`ResolvesServerCert`] over a swappable
//!   `Arc<CertifiedKey>`; a new certificate applies to the next handshake.
//! - Client trust: every hub's CA (the managed one the hub generated, or the custom one its
//!   owner uploaded) as a trust anchor, and device certificates pinned by their SHA-256
//!   fingerprint (custom device certificates: self-signed or from any CA). The handshake
//!   accepts a chain that verifies to any hub CA (the union) or a pinned end-entity
//!   certificate, and refuses expired, not-yet-valid, wrong-key-usage, unknown-issuer
//!   (self-signed and unpinned, wrong CA, truncated chain) and CA certificates. A client
//!   without a certificate is let through (client authentication is optional), so devices
//!   that allow insecure connections can use server-only TLS; the engine refuses the others.
//!
//! After the handshake, [`TlsTrust::classify`] runs the same checks again and says which hub
//! CAs verified the chain, so the session is bound to that hub ([`crate::tls::identify`]).
//! Running them again (rather than remembering the handshake's answer) also covers resumed
//! TLS sessions and a CA removed in between.
//!
//! A refused certificate raises the hub event "invalid device certificate" (once the binary
//! named the engine with [`TlsTrust::raise_events_on`]) on the hub it can be attributed to:
//! the pinned device's hub, else every hub whose CA's subject is the issuer named by a
//! certificate of the chain (an expired certificate of the hub's CA, a broken chain to
//! it). A certificate no hub's CA issued (self-signed, a stranger's CA) names no hub: it is
//! only counted (`iothub_events_unattributed_total`). The handshake does not tell the
//! client's address to the verifier, so these events have no `source-address`. The issuer
//! is a name anyone can copy into a certificate: at worst someone raises refusals on a hub,
//! which the events' rate limit bounds.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use iothub_engine::{CertificateFingerprint, Engine, EventKind, HubEvent, count_unattributed};
use iothub_model::{DeviceId, HubId};
use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate or key that cannot be used (configuration and API input).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("the PEM text is not valid: {0}")]
    Pem(String),
    #[error("no private key in the PEM text")]
    NoPrivateKey,
    #[error("the private key cannot be used with the certificate: {0}")]
    Key(rustls::Error),
    #[error("the CA certificate cannot be a trust anchor: {0:?}")]
    Anchor(webpki::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Why a client certificate is refused. The handshake answers with the matching TLS alert
/// (certificate_expired, unknown_ca, ...), so the client's TLS library can say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    #[error("the client certificate cannot be parsed")]
    Malformed,
    #[error("the client certificate has expired")]
    Expired,
    #[error("the client certificate is not valid yet")]
    NotYetValid,
    #[error(
        "the client certificate was not issued by a hub's CA (wrong CA, self-signed and not \
         registered, or an incomplete chain)"
    )]
    UnknownIssuer,
    #[error("a signature in the client certificate's chain does not verify")]
    BadSignature,
    #[error("the client certificate may not be used for client authentication (key usage)")]
    WrongKeyUsage,
    #[error("a CA certificate cannot identify a device")]
    CaCertificate,
    #[error("the client certificate is refused: {0}")]
    Other(String),
}

impl CertificateRefusal {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnknownIssuer => "unknown_issuer",
            Self::BadSignature => "bad_signature",
            Self::WrongKeyUsage => "wrong_key_usage",
            Self::CaCertificate => "ca_certificate",
            Self::Other(_) => "other",
        }
    }

    fn from_webpki(e: &webpki::Error) -> Self {
        use webpki::Error as E;
        match e {
            E::BadDer
            | E::BadDerTime
            | E::TrailingData(_)
            | E::MalformedExtensions
            | E::ExtensionValueInvalid
            | E::InvalidSerialNumber
            | E::UnsupportedCertVersion => Self::Malformed,
            E::CertExpired { .. } | E::InvalidCertValidity => Self::Expired,
            E::CertNotValidYet { .. } => Self::NotYetValid,
            E::UnknownIssuer => Self::UnknownIssuer,
            E::InvalidSignatureForPublicKey => Self::BadSignature,
            E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => Self::WrongKeyUsage,
            E::CaUsedAsEndEntity => Self::CaCertificate,
            other => Self::Other(format!("{other:?}")),
        }
    }

    fn to_rustls(&self) -> rustls::Error {
        use rustls::CertificateError as C;
        let e = match self {
            Self::Malformed => C::BadEncoding,
            Self::Expired => C::Expired,
            Self::NotYetValid => C::NotValidYet,
            Self::UnknownIssuer => C::UnknownIssuer,
            Self::BadSignature => C::BadSignature,
            Self::WrongKeyUsage => C::InvalidPurpose,
            Self::CaCertificate | Self::Other(_) => {
                C::Other(rustls::OtherError(Arc::new(self.clone())))
            }
        };
        rustls::Error::InvalidCertificate(e)
    }
}

/// A client certificate in words, for hub events: subject, issuer, validity and
/// fingerprint (or only the fingerprint and size of one that does not parse).
pub fn describe_certificate(der: &CertificateDer<'_>) -> String {
    let fp = fingerprint(der);
    match parse(der) {
        Ok(c) => format!(
            "client certificate subject \"{}\" issuer \"{}\" valid {} to {} SHA-256 {fp}",
            c.subject(),
            c.issuer(),
            c.validity().not_before,
            c.validity().not_after,
        ),
        Err(_) => format!("client certificate of {} bytes SHA-256 {fp}", der.len()),
    }
}

/// The SHA-256 of a certificate's DER: how pinned and registered certificates are named.
pub fn fingerprint(der: &[u8]) -> CertificateFingerprint {
    CertificateFingerprint::from_bytes(Sha256::digest(der).into())
}

/// Every certificate in PEM text, in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// What a client certificate that passed the checks is, for identification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trusted {
    /// A device's pinned (custom) certificate.
    Pinned { device: DeviceId, hub: HubId },
    /// Verified to the CA of these hubs (one, unless several hubs share a custom CA).
    HubCa(Vec<HubCaOwner>),
}

/// A hub whose CA verified a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubCaOwner {
    pub hub: HubId,
    /// The hub's own CA (devices named by CN = device name) rather than the managed one
    /// (CN = device id).
    pub custom: bool,
}

/// The hub CAs as webpki trust anchors, rebuilt whole on every change (CAs change rarely;
/// handshakes read a snapshot without waiting for a writer).
#[derive(Default)]
struct Anchors {
    hubs: HashMap<HubId, (CertificateDer<'static>, bool)>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Per anchor, the hubs it is the CA of: anchors with the same subject and key are one.
    owners: Vec<Vec<HubCaOwner>>,
    /// Per anchor, its subject as DER (a whole Name), to attribute a refused certificate by
    /// its issuer.
    subjects: Vec<Vec<u8>>,
}

impl Anchors {
    fn build(hubs: HashMap<HubId, (CertificateDer<'static>, bool)>) -> Self {
        let mut anchors: Vec<TrustAnchor<'static>> = Vec::new();
        let mut owners: Vec<Vec<HubCaOwner>> = Vec::new();
        let mut subjects: Vec<Vec<u8>> = Vec::new();
        let mut ordered: Vec<_> = hubs.iter().collect();
        ordered.sort_by_key(|(hub, _)| **hub);
        for (hub, (der, custom)) in ordered {
            // Checked when the CA was added.
            let Ok(anchor) = webpki::anchor_from_trusted_cert(der) else {
                continue;
            };
            let owner = HubCaOwner {
                hub: *hub,
                custom: *custom,
            };
            match anchors.iter().position(|a| {
                a.subject == anchor.subject
                    && a.subject_public_key_info == anchor.subject_public_key_info
            }) {
                Some(i) => owners[i].push(owner),
                None => {
                    anchors.push(anchor.to_owned());
                    owners.push(vec![owner]);
                    subjects.push(
                        parse(der)
                            .map(|c| c.subject().as_raw().to_vec())
                            .unwrap_or_default(),
                    );
                }
            }
        }
        Self {
            hubs,
            anchors,
            owners,
            subjects,
        }
    }
}

/// Pinned device certificates.
#[derive(Default)]
struct Pins {
    by_fingerprint: HashMap<CertificateFingerprint, (DeviceId, HubId)>,
    by_device: HashMap<DeviceId, CertificateFingerprint>,
}

impl Pins {
    fn unpin(&mut self, device: DeviceId) {
        if let Some(old) = self.by_device.remove(&device)
            && self
                .by_fingerprint
                .get(&old)
                .is_some_and(|(d, _)| *d == device)
        {
            self.by_fingerprint.remove(&old);
        }
    }
}

/// The server certificate and the client trust of every TLS listener; see the module docs.
pub struct TlsTrust {
    server: RwLock<Arc<CertifiedKey>>,
    anchors: RwLock<Arc<Anchors>>,
    pins: RwLock<Pins>,
    provider: Arc<CryptoProvider>,
    /// Where refused client certificates raise hub events.
    events: RwLock<Option<Engine>>,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let anchors = self.anchors.read();
        f.debug_struct("TlsTrust")
            .field("hub_cas", &anchors.hubs.len())
            .field("pinned", &self.pins.read().by_device.len())
            .finish()
    }
}

impl TlsTrust {
    /// Trust with this server certificate (chain PEM, leaf first, and its key), no hub CA
    /// and nothing pinned yet. Uses ring (the only crypto provider iothub builds).
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = certified_key(&provider, chain_pem, key_pem)?;
        Ok(Arc::new(Self {
            server: RwLock::new(Arc::new(server)),
            anchors: RwLock::new(Arc::new(Anchors::default())),
            pins: RwLock::new(Pins::default()),
            provider,
            events: RwLock::new(None),
        }))
    }

    /// Raises "invalid device certificate" hub events on `engine` for the client
    /// certificates this trust refuses (see the module docs).
    pub fn raise_events_on(&self, engine: Engine) {
        *self.events.write() = Some(engine);
    }

    /// The hubs (and the device, for a pinned certificate) a client chain belongs to, as far
    /// as it can be told without trusting it: see the module docs.
    pub fn attribute(&self, chain: &[CertificateDer<'_>]) -> Vec<(HubId, Option<DeviceId>)> {
        let Some(leaf) = chain.first() else {
            return Vec::new();
        };
        if let Some((device, hub)) = self.pins.read().by_fingerprint.get(&fingerprint(leaf)) {
            return vec![(*hub, Some(*device))];
        }
        let anchors = self.anchors.read().clone();
        let mut found: Vec<(HubId, Option<DeviceId>)> = Vec::new();
        for cert in chain {
            let Ok(parsed) = parse(cert) else { continue };
            let issuer = parsed.issuer().as_raw();
            for (i, subject) in anchors.subjects.iter().enumerate() {
                if subject.as_slice() != issuer {
                    continue;
                }
                for owner in &anchors.owners[i] {
                    if !found.iter().any(|(h, _)| *h == owner.hub) {
                        found.push((owner.hub, None));
                    }
                }
            }
        }
        found
    }

    /// Raises "invalid device certificate: <why>" for a refused chain on the hubs it belongs
    /// to ([`TlsTrust::attribute`]), or counts it when it belongs to none.
    pub fn report_refusal(&self, chain: &[CertificateDer<'_>], refusal: &CertificateRefusal) {
        let Some(engine) = self.events.read().clone() else {
            return;
        };
        let subjects = self.attribute(chain);
        if subjects.is_empty() {
            count_unattributed(EventKind::InvalidCertificate);
            return;
        }
        let packet = chain.first().map(describe_certificate).unwrap_or_default();
        for (hub, device) in subjects {
            let event = HubEvent::about(
                EventKind::InvalidCertificate,
                hub,
                device,
                format!("invalid device certificate: {refusal}"),
            )
            .with_packet(packet.clone());
            engine.raise_event(hub, event);
        }
    }

    /// Replaces the server certificate; the next handshake presents it.
    pub fn set_server_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(&self.provider, chain_pem, key_pem)?;
        *self.server.write() = Arc::new(key);
        Ok(())
    }

    /// The server certificate chain presented now (leaf first).
    pub fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        self.server.read().cert.clone()
    }

    /// Trusts `ca_pem` (its first certificate) as `hub`'s CA, replacing the hub's previous
    /// one; `custom` = the hub's own CA, which names devices by CN = device name.
    pub fn set_hub_ca(&self, hub: HubId, ca_pem: &str, custom: bool) -> Result<(), TlsError> {
        let der = certificates_from_pem(ca_pem)?.swap_remove(0);
        webpki::anchor_from_trusted_cert(&der).map_err(TlsError::Anchor)?;
        self.update_hubs(|hubs| {
            hubs.insert(hub, (der, custom));
        });
        Ok(())
    }

    /// Stops trusting `hub`'s CA (the hub was deleted).
    pub fn remove_hub_ca(&self, hub: HubId) {
        self.update_hubs(|hubs| {
            hubs.remove(&hub);
        });
    }

    /// Replaces every hub CA at once (start-up), skipping and returning those that cannot
    /// be anchors.
    pub fn replace_hub_cas<'a>(
        &self,
        cas: impl IntoIterator<Item = (HubId, &'a str, bool)>,
    ) -> Vec<(HubId, TlsError)> {
        let mut hubs = HashMap::new();
        let mut failed = Vec::new();
        for (hub, pem, custom) in cas {
            let der = match certificates_from_pem(pem) {
                Ok(mut certs) => certs.swap_remove(0),
                Err(e) => {
                    failed.push((hub, e));
                    continue;
                }
            };
            if let Err(e) = webpki::anchor_from_trusted_cert(&der) {
                failed.push((hub, TlsError::Anchor(e)));
                continue;
            }
            hubs.insert(hub, (der, custom));
        }
        *self.anchors.write() = Arc::new(Anchors::build(hubs));
        failed
    }

    fn update_hubs(
        &self,
        change: impl FnOnce(&mut HashMap<HubId, (CertificateDer<'static>, bool)>),
    ) {
        let mut anchors = self.anchors.write();
        let mut hubs = anchors.hubs.clone();
        change(&mut hubs);
        *anchors = Arc::new(Anchors::build(hubs));
    }

    /// Pins `device`'s custom certificate (`Some`) or forgets its pin (`None`: it has no
    /// certificate, or one its hub's CA issued). The fingerprint then identifies the
    /// device on its own, whoever issued the certificate.
    pub fn pin_device(
        &self,
        device: DeviceId,
        hub: HubId,
        certificate: Option<CertificateFingerprint>,
    ) {
        let mut pins = self.pins.write();
        pins.unpin(device);
        if let Some(fp) = certificate {
            pins.by_device.insert(device, fp);
            pins.by_fingerprint.insert(fp, (device, hub));
        }
    }

    /// Forgets a deleted device's pin.
    pub fn remove_device(&self, device: DeviceId) {
        self.pins.write().unpin(device);
    }

    /// Checks a client chain (leaf first) at `now`: a pinned leaf, or a chain that verifies
    /// to a hub CA for client authentication. See the module docs for what is refused.
    pub fn classify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Trusted, CertificateRefusal> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(CertificateRefusal::Malformed);
        };
        let pinned = self
            .pins
            .read()
            .by_fingerprint
            .get(&fingerprint(leaf))
            .copied();
        if let Some((device, hub)) = pinned {
            check_pinned(leaf, now)?;
            return Ok(Trusted::Pinned { device, hub });
        }
        let anchors = self.anchors.read().clone();
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| CertificateRefusal::from_webpki(&e))?;
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors.anchors,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| CertificateRefusal::from_webpki(&e))?;
        let anchor = path.anchor();
        let owners = anchors
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, anchor))
            .map(|i| anchors.owners[i].clone())
            .unwrap_or_default();
        check_key_usage(&parse(leaf)?)?;
        Ok(Trusted::HubCa(owners))
    }

    /// The rustls server configuration of a TLS listener: this trust's certificate resolver
    /// and client verifier (both follow later changes), TLS 1.2 and 1.3, and `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = Arc::new(ClientVerifier {
            trust: self.clone(),
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(ServerCertResolver {
                trust: self.clone(),
            }));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A tokio-rustls acceptor over [`TlsTrust::server_config`] without ALPN (the MQTT TLS
    /// port and wss).
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(self.server_config(&[])?))
    }
}

fn certified_key(
    provider: &CryptoProvider,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates_from_pem(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
        other => TlsError::Pem(other.to_string()),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Key)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertificateRefusal> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|_| CertificateRefusal::Malformed)
}

/// The common name of a certificate's subject (the first one), if it is text.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let cert = parse(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// A leaf signs the handshake: a key usage extension must allow digital signatures, and an
/// extended key usage one must allow client authentication.
fn check_key_usage(cert: &X509Certificate<'_>) -> Result<(), CertificateRefusal> {
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => {
            return Err(CertificateRefusal::WrongKeyUsage);
        }
        Err(_) => return Err(CertificateRefusal::Malformed),
        _ => {}
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.client_auth || eku.value.any) => {
            Err(CertificateRefusal::WrongKeyUsage)
        }
        Err(_) => Err(CertificateRefusal::Malformed),
        _ => Ok(()),
    }
}

/// A pinned certificate needs no issuer, but it must be in its validity period, not a CA,
/// and fit for client authentication.
fn check_pinned(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), CertificateRefusal> {
    let cert = parse(der)?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(CertificateRefusal::NotYetValid);
    }
    if now > validity.not_after.timestamp() {
        return Err(CertificateRefusal::Expired);
    }
    if cert.is_ca() {
        return Err(CertificateRefusal::CaCertificate);
    }
    check_key_usage(&cert)
}

#[derive(Debug)]
struct ServerCertResolver {
    trust: Arc<TlsTrust>,
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.trust.server.read().clone())
    }
}

#[derive(Debug)]
struct ClientVerifier {
    trust: Arc<TlsTrust>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Optional: devices that allow insecure connections may use server-only TLS.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: the CA set changes at run time and may be large, and clients send the one
    /// certificate they have anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        match self.trust.classify(&chain, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refusal) => {
                self.trust.report_refusal(&chain, &refusal);
                Err(refusal.to_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
