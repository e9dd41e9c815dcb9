//! Tests of [`TlsTrust`] (which client chains it accepts and what it says they are) and of
//! the TLS listener end to end in process: real handshakes with a rustls client, then MQTT
//! CONNECT bytes, against an engine with hubs and devices. Certificates are made with rcgen
//! here; the end-to-end tests in `tests/` make theirs with the openssl CLI.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iothub_engine::{
    CertificateFingerprint, CertificateProof, DEFAULT_EVENTS_TOPIC_PREFIX, DeviceSpec, Engine,
    EngineConfig, HubSpec, VerifiedCertificate,
};
use iothub_model::{DeviceId, HubId, HubLimits, Plan, TopicName};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ListenerSettings;
use crate::tls::{
    PeerCertificate, ProvisionError, ProvisionFuture, Provisioner, TlsContext, identify, serve_tls,
};
use crate::tls_trust::{
    CertificateRefusal, HubCaOwner, TlsTrust, Trusted, certificates_from_pem, fingerprint,
};

// ---- certificates ---------------------------------------------------------------------------

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(ca_params(cn), key).unwrap(),
        }
    }

    fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::signed_by(ca_params(cn), key, &self.issuer).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A client certificate, its key, and the intermediates a client sends after it.
#[derive(Clone)]
struct Leaf {
    der: CertificateDer<'static>,
    key: String,
    intermediates: Vec<CertificateDer<'static>>,
}

impl Leaf {
    fn fingerprint(&self) -> CertificateFingerprint {
        fingerprint(&self.der)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.der.clone()];
        chain.extend(self.intermediates.iter().cloned());
        chain
    }
}

/// A device certificate: CN, clientAuth, digitalSignature, valid 2020..2080, then `tweak`;
/// signed by `issuer`, or self-signed.
fn leaf(cn: &str, issuer: Option<&Ca>, tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2080, 1, 1);
    tweak(&mut p);
    let key = KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(ca) => p.signed_by(&key, &ca.issuer).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    Leaf {
        der: cert.der().clone(),
        key: key.serialize_pem(),
        intermediates: Vec::new(),
    }
}

fn plain(_: &mut CertificateParams) {}

/// The server's certificate for `localhost`, signed by `ca`: (chain PEM, key PEM).
fn server_cert(ca: &Ca) -> (String, String) {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "iothub test server");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn now() -> UnixTime {
    UnixTime::now()
}

// ---- classification -------------------------------------------------------------------------

/// Which chains the trust accepts, and as what: every bad input of issue 4 a certificate can
/// be, and the ways a good one can verify (managed CA, custom CA with an intermediate,
/// pinned), with CAs and pins changed at run time.
#[test]
fn classify_accepts_hub_ca_chains_and_pins_and_refuses_the_rest() {
    let (hub_a, hub_b, hub_c) = (
        HubId::new_random(),
        HubId::new_random(),
        HubId::new_random(),
    );
    let ca_a = Ca::root("hub a");
    let ca_b = Ca::root("hub b");
    let root_c = Ca::root("customer root");
    let inter_c = root_c.intermediate("customer intermediate");
    let stranger = Ca::root("nobody's CA");
    let server_ca = Ca::root("server ca");
    let (chain, key) = server_cert(&server_ca);
    let trust = TlsTrust::new(&chain, &key).unwrap();
    trust.set_hub_ca(hub_a, &ca_a.pem(), false).unwrap();
    trust.set_hub_ca(hub_b, &ca_b.pem(), false).unwrap();
    trust.set_hub_ca(hub_c, &root_c.pem(), true).unwrap();

    let device = DeviceId::new_random().to_string();
    let good_a = leaf(&device, Some(&ca_a), plain);
    let good_b = leaf(&device, Some(&ca_b), plain);
    let via_inter = leaf("pump-1", Some(&inter_c), plain);
    let self_signed = leaf(&device, None, plain);
    let pinned = leaf("anything", None, plain);
    let pinned_expired = leaf("anything", None, |p| {
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let pinned_ca = Leaf {
        der: stranger.der(),
        key: String::new(),
        intermediates: Vec::new(),
    };
    let (pinned_device, pinned_hub) = (DeviceId::new_random(), hub_b);
    for (i, l) in [&pinned, &pinned_expired, &pinned_ca]
        .into_iter()
        .enumerate()
    {
        // one device per pin: a device has one certificate
        let d = if i == 0 {
            pinned_device
        } else {
            DeviceId::new_random()
        };
        trust.pin_device(d, pinned_hub, Some(l.fingerprint()));
    }
    let managed = |hub| Ok(Trusted::HubCa(vec![HubCaOwner { hub, custom: false }]));
    let custom = |hub| Ok(Trusted::HubCa(vec![HubCaOwner { hub, custom: true }]));
    let chain_of = |l: &Leaf| vec![l.der.clone()];

    type Case = (
        &'static str,
        Vec<CertificateDer<'static>>,
        Result<Trusted, CertificateRefusal>,
    );
    let table: Vec<Case> = vec![
        ("managed CA a", chain_of(&good_a), managed(hub_a)),
        ("managed CA b", chain_of(&good_b), managed(hub_b)),
        (
            "custom CA with its intermediate",
            vec![via_inter.der.clone(), inter_c.der()],
            custom(hub_c),
        ),
        (
            "truncated chain (intermediate missing)",
            chain_of(&via_inter),
            Err(CertificateRefusal::UnknownIssuer),
        ),
        (
            "expired",
            chain_of(&leaf(&device, Some(&ca_a), |p| {
                p.not_after = date_time_ymd(2021, 1, 1);
            })),
            Err(CertificateRefusal::Expired),
        ),
        (
            "not yet valid",
            chain_of(&leaf(&device, Some(&ca_a), |p| {
                p.not_before = date_time_ymd(2079, 1, 1);
            })),
            Err(CertificateRefusal::NotYetValid),
        ),
        (
            "server authentication only",
            chain_of(&leaf(&device, Some(&ca_a), |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            })),
            Err(CertificateRefusal::WrongKeyUsage),
        ),
        (
            "key encipherment only",
            chain_of(&leaf(&device, Some(&ca_a), |p| {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
            })),
            Err(CertificateRefusal::WrongKeyUsage),
        ),
        (
            "no key usage extensions at all",
            chain_of(&leaf(&device, Some(&ca_a), |p| {
                p.key_usages.clear();
                p.extended_key_usages.clear();
            })),
            managed(hub_a),
        ),
        (
            "wrong CA",
            chain_of(&leaf(&device, Some(&stranger), plain)),
            Err(CertificateRefusal::UnknownIssuer),
        ),
        (
            "self-signed, not pinned",
            chain_of(&self_signed),
            Err(CertificateRefusal::UnknownIssuer),
        ),
        (
            "a hub CA presented as a client certificate",
            vec![ca_a.der()],
            Err(CertificateRefusal::CaCertificate),
        ),
        (
            "pinned self-signed",
            chain_of(&pinned),
            Ok(Trusted::Pinned {
                device: pinned_device,
                hub: pinned_hub,
            }),
        ),
        (
            "pinned but expired",
            chain_of(&pinned_expired),
            Err(CertificateRefusal::Expired),
        ),
        (
            "pinned but a CA",
            chain_of(&pinned_ca),
            Err(CertificateRefusal::CaCertificate),
        ),
        (
            "not DER",
            vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])],
            Err(CertificateRefusal::Malformed),
        ),
    ];
    for (name, chain, expect) in table {
        assert_eq!(trust.classify(&chain, now()), expect, "{name}");
    }

    // Run-time changes: hub b's CA removed, hub a's replaced, a pin moved, a CA shared.
    trust.remove_hub_ca(hub_b);
    assert_eq!(
        trust.classify(&chain_of(&good_b), now()),
        Err(CertificateRefusal::UnknownIssuer)
    );
    let ca_a2 = Ca::root("hub a, second CA");
    trust.set_hub_ca(hub_a, &ca_a2.pem(), false).unwrap();
    assert_eq!(
        trust.classify(&chain_of(&good_a), now()),
        Err(CertificateRefusal::UnknownIssuer)
    );
    assert_eq!(
        trust.classify(&chain_of(&leaf(&device, Some(&ca_a2), plain)), now()),
        managed(hub_a)
    );
    trust.pin_device(pinned_device, pinned_hub, Some(self_signed.fingerprint()));
    assert_eq!(
        trust.classify(&chain_of(&pinned), now()),
        Err(CertificateRefusal::UnknownIssuer)
    );
    assert_eq!(
        trust.classify(&chain_of(&self_signed), now()),
        Ok(Trusted::Pinned {
            device: pinned_device,
            hub: pinned_hub
        })
    );
    trust.remove_device(pinned_device);
    assert_eq!(
        trust.classify(&chain_of(&self_signed), now()),
        Err(CertificateRefusal::UnknownIssuer)
    );
    let hub_d = HubId::new_random();
    trust.set_hub_ca(hub_d, &root_c.pem(), true).unwrap();
    let Ok(Trusted::HubCa(mut owners)) =
        trust.classify(&[via_inter.der.clone(), inter_c.der()], now())
    else {
        panic!("the shared custom CA verifies");
    };
    owners.sort_by_key(|o| o.hub);
    let mut expect = vec![
        HubCaOwner {
            hub: hub_c,
            custom: true,
        },
        HubCaOwner {
            hub: hub_d,
            custom: true,
        },
    ];
    expect.sort_by_key(|o| o.hub);
    assert_eq!(owners, expect, "a CA shared by two hubs names both");

    // start-up: every CA at once; a broken one is reported and skipped
    let failed = trust.replace_hub_cas([
        (hub_a, ca_a.pem().as_str(), false),
        (hub_b, "not a certificate", false),
    ]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, hub_b);
    assert_eq!(trust.classify(&chain_of(&good_a), now()), managed(hub_a));
    assert_eq!(
        trust.classify(&[via_inter.der.clone(), inter_c.der()], now()),
        Err(CertificateRefusal::UnknownIssuer),
        "replaced: hub c's CA is gone"
    );
}

#[test]
fn bad_server_certificates_and_cas_are_refused_with_a_reason() {
    let server_ca = Ca::root("server ca");
    let (chain, key) = server_cert(&server_ca);
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let cases: Vec<(&str, &str, &str)> = vec![
        ("no certificate", "", key.as_str()),
        ("no key", chain.as_str(), ""),
        ("mismatched key", chain.as_str(), other_key.as_str()),
    ];
    for (name, chain, key) in cases {
        let err = TlsTrust::new(chain, key).unwrap_err();
        assert!(!err.to_string().is_empty(), "{name}");
    }
    let trust = TlsTrust::new(&chain, &key).unwrap();
    assert!(trust.set_server_certificate(&chain, &other_key).is_err());
    assert_eq!(
        trust.server_chain(),
        certificates_from_pem(&chain).unwrap(),
        "a refused certificate leaves the old one in place"
    );
    assert!(
        trust
            .set_hub_ca(HubId::new_random(), "garbage", false)
            .is_err()
    );
}

// ---- the listener in process ----------------------------------------------------------------

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// An MQTT 3.1.1 CONNECT, clean session, with this client id.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

struct Fixture {
    engine: Engine,
    trust: Arc<TlsTrust>,
    server_ca: Ca,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Fixture {
    async fn start(provisioner: Option<Arc<dyn Provisioner>>) -> Fixture {
        let engine = Engine::new(EngineConfig::default());
        let server_ca = Ca::root("server ca");
        let (chain, key) = server_cert(&server_ca);
        let trust = TlsTrust::new(&chain, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let settings = ListenerSettings {
            name: "tls".into(),
            anonymous_hub: None,
            connect_timeout: Duration::from_secs(5),
            max_packet_size: 1 << 20,
        };
        tokio::spawn(serve_tls(
            listener,
            engine.clone(),
            settings,
            TlsContext {
                trust: trust.clone(),
                provisioner,
            },
            stop.clone(),
            TaskTracker::new(),
        ));
        Fixture {
            engine,
            trust,
            server_ca,
            addr,
            stop,
        }
    }

    fn hub(&self, ca: &Ca, custom: bool) -> HubId {
        let id = HubId::new_random();
        self.engine
            .create_hub(HubSpec {
                id,
                name: id.to_string(),
                plan: Plan::Dedicated,
                limits: HubLimits::default(),
                allow_anonymous: false,
                anonymous_filters: Default::default(),
                enabled: true,
                events_enabled: true,
                events_topic_prefix: TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).unwrap(),
            })
            .unwrap();
        self.trust.set_hub_ca(id, &ca.pem(), custom).unwrap();
        id
    }

    fn device(&self, hub: HubId, name: &str, certificate: Option<&Leaf>) -> DeviceId {
        let id = DeviceId::new_random();
        self.engine
            .upsert_device(spec(id, hub, name, certificate))
            .unwrap();
        id
    }

    /// A TLS connection that trusts `server_ca`, with `client` as client certificate.
    async fn tls(
        &self,
        server_ca: &Ca,
        client: Option<&Leaf>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_ca.der()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(l) => builder
                .with_client_auth_cert(
                    l.chain(),
                    PrivateKeyDer::try_from(pem_key_der(&l.key)).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(self.addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3: the server checks the client certificate after the client's side of the
        // handshake is done; a refusal arrives as an alert on the first read.
        stream.flush().await?;
        Ok(stream)
    }

    /// Connects with `client`, sends CONNECT with `client_id`, returns the CONNACK bytes
    /// (or the error that ended the connection first).
    async fn connack(&self, client: Option<&Leaf>, client_id: &str) -> std::io::Result<[u8; 4]> {
        let mut s = self.tls(&self.server_ca, client).await?;
        s.write_all(&connect_packet(client_id)).await?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await?;
        Ok(ack)
    }
}

fn pem_key_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .secret_der()
        .to_vec()
}

fn spec(id: DeviceId, hub: HubId, name: &str, certificate: Option<&Leaf>) -> DeviceSpec {
    DeviceSpec {
        id,
        hub,
        name: name.to_string(),
        enabled: true,
        allow_insecure: false,
        allow_multiple_connections: false,
        filters: Default::default(),
        certificate_fingerprint: certificate.map(Leaf::fingerprint),
    }
}

/// mTLS through the listener: the device whose current certificate it is connects (client
/// id empty or its own); a renewed-away certificate, another hub's certificate and a
/// certificate naming no device reach CONNECT and are refused there; refused chains fail
/// the handshake; plain MQTT on the TLS port is closed; the listener serves on after all.
#[tokio::test]
async fn the_listener_admits_devices_by_certificate_and_refuses_the_rest() {
    let fx = Fixture::start(None).await;
    let (ca_a, ca_b) = (Ca::root("hub a"), Ca::root("hub b"));
    let hub_a = fx.hub(&ca_a, false);
    let hub_b = fx.hub(&ca_b, false);
    let id = DeviceId::new_random();
    let current = leaf(&id.to_string(), Some(&ca_a), plain);
    let old = leaf(&id.to_string(), Some(&ca_a), plain);
    fx.engine
        .upsert_device(spec(id, hub_a, "d", Some(&current)))
        .unwrap();
    let b_device = fx.device(hub_b, "b", None);
    let a_cert_for_b = leaf(&b_device.to_string(), Some(&ca_a), plain);
    let nobody = leaf(&DeviceId::new_random().to_string(), Some(&ca_a), plain);
    let not_an_id = leaf("pump", Some(&ca_a), plain);
    let expired = leaf(&id.to_string(), Some(&ca_a), |p| {
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let stranger = leaf(&id.to_string(), Some(&Ca::root("stranger")), plain);
    let own = id.to_string();

    // (case, client certificate, client id) -> CONNACK
    let table: Vec<(&str, Option<&Leaf>, &str, [u8; 4])> = vec![
        ("current certificate", Some(&current), "", CONNACK_OK),
        ("current, own client id", Some(&current), &own, CONNACK_OK),
        (
            "current, other client id",
            Some(&current),
            "x",
            [0x20, 0x02, 0x00, 0x02],
        ),
        (
            "not the current one",
            Some(&old),
            "",
            CONNACK_NOT_AUTHORIZED,
        ),
        (
            "hub a's CA, device of hub b",
            Some(&a_cert_for_b),
            "",
            CONNACK_NOT_AUTHORIZED,
        ),
        ("no such device", Some(&nobody), "", CONNACK_NOT_AUTHORIZED),
        (
            "CN not a device id",
            Some(&not_an_id),
            "",
            CONNACK_NOT_AUTHORIZED,
        ),
        (
            "no certificate, mTLS device",
            None,
            &own,
            CONNACK_NOT_AUTHORIZED,
        ),
    ];
    for (name, cert, client_id, expect) in table {
        let got = fx.connack(cert, client_id).await;
        assert_eq!(got.ok(), Some(expect), "{name}");
    }
    for (name, cert) in [("expired", &expired), ("wrong CA", &stranger)] {
        let got = fx.connack(Some(cert), "").await;
        assert!(got.is_err(), "{name}: handshake refused, got {got:?}");
    }
    // plain MQTT to the TLS port: closed without an answer
    let mut raw = TcpStream::connect(fx.addr).await.unwrap();
    raw.write_all(&connect_packet("plain")).await.unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf).await;
    assert!(
        !buf.starts_with(&[0x20]),
        "no CONNACK over plain TCP: {buf:?}"
    );
    // the listener still serves
    assert_eq!(fx.connack(Some(&current), "").await.ok(), Some(CONNACK_OK));
}

/// A new server certificate applies to the next handshake; connections made before keep
/// going.
#[tokio::test]
async fn a_new_server_certificate_applies_to_new_connections() {
    let fx = Fixture::start(None).await;
    let before = fx.tls(&fx.server_ca, None).await.unwrap();
    let next_ca = Ca::root("next server ca");
    let (chain, key) = server_cert(&next_ca);
    fx.trust.set_server_certificate(&chain, &key).unwrap();
    assert!(
        fx.tls(&fx.server_ca, None).await.is_err(),
        "old CA no longer fits"
    );
    assert!(fx.tls(&next_ca, None).await.is_ok());
    drop(before);
}

/// Hubs with their own CA: the CN is the device name; an unknown one is handed to the
/// provisioner, whose device then connects; without auto-provisioning it is refused.
#[tokio::test]
async fn custom_ca_devices_are_found_by_name_or_provisioned() {
    #[derive(Default)]
    struct Recorder {
        fx: Mutex<Option<(Engine, HubId)>>,
        calls: Mutex<Vec<(HubId, String)>>,
    }
    impl Provisioner for Recorder {
        fn provision<'a>(
            &'a self,
            hub: HubId,
            common_name: &'a str,
            _peer: SocketAddr,
        ) -> ProvisionFuture<'a> {
            Box::pin(async move {
                self.calls
                    .lock()
                    .unwrap()
                    .push((hub, common_name.to_string()));
                let target = self.fx.lock().unwrap().clone();
                match target {
                    Some((engine, auto_hub)) if auto_hub == hub && common_name != "refused" => {
                        let id = DeviceId::new_random();
                        engine
                            .upsert_device(spec(id, hub, common_name, None))
                            .map_err(|e| ProvisionError(e.to_string()))?;
                        Ok(Some(id))
                    }
                    Some(_) if common_name == "refused" => {
                        Err(ProvisionError("quota exceeded".into()))
                    }
                    _ => Ok(None),
                }
            })
        }
    }
    let recorder = Arc::new(Recorder::default());
    let fx = Fixture::start(Some(recorder.clone())).await;
    let root = Ca::root("customer root");
    let inter = root.intermediate("customer intermediate");
    let auto_hub = fx.hub(&root, true);
    let manual_ca = Ca::root("manual customer");
    let manual_hub = fx.hub(&manual_ca, true);
    *recorder.fx.lock().unwrap() = Some((fx.engine.clone(), auto_hub));
    let known = fx.device(auto_hub, "pump", None);

    let chained = |cn: &str, ca: &Ca| Leaf {
        intermediates: if std::ptr::eq(ca, &inter) {
            vec![inter.der()]
        } else {
            Vec::new()
        },
        ..leaf(cn, Some(ca), plain)
    };
    // (case, certificate, CONNACK, provisioner called for)
    let cases: Vec<(&str, Leaf, [u8; 4], Option<&str>)> = vec![
        ("known name", chained("pump", &inter), CONNACK_OK, None),
        (
            "unknown name, auto-provisioning",
            chained("valve", &inter),
            CONNACK_OK,
            Some("valve"),
        ),
        (
            "provisioned before",
            chained("valve", &inter),
            CONNACK_OK,
            None,
        ),
        (
            "provisioner refuses",
            chained("refused", &inter),
            CONNACK_NOT_AUTHORIZED,
            Some("refused"),
        ),
        (
            "no auto-provisioning",
            chained("gauge", &manual_ca),
            CONNACK_NOT_AUTHORIZED,
            Some("gauge"),
        ),
    ];
    for (name, cert, expect, provisioned) in cases {
        let ack = fx.connack(Some(&cert), "").await.unwrap();
        assert_eq!(ack, expect, "{name}");
        let calls = std::mem::take(&mut *recorder.calls.lock().unwrap());
        assert_eq!(
            calls.last().map(|(_, cn)| cn.as_str()),
            provisioned,
            "{name}: {calls:?}"
        );
    }
    let provisioned = fx.engine.device_by_name(auto_hub, "valve");
    assert!(provisioned.is_some_and(|d| d != known));
    assert_eq!(fx.engine.device_by_name(manual_hub, "gauge"), None);
}

/// `identify` on its own, as wss and QUIC call it: no chain, a pinned certificate, and a
/// managed-CA certificate (the engine checks the fingerprint later).
#[tokio::test]
async fn identify_names_the_device_and_the_proof() {
    let fx = Fixture::start(None).await;
    let ca = Ca::root("hub");
    let hub = fx.hub(&ca, false);
    let id = DeviceId::new_random();
    let managed = leaf(&id.to_string(), Some(&ca), plain);
    let pinned = leaf("my own", None, plain);
    fx.trust.pin_device(id, hub, Some(pinned.fingerprint()));
    let ctx = TlsContext {
        trust: fx.trust.clone(),
        provisioner: None,
    };
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases: Vec<(Option<Vec<CertificateDer<'static>>>, PeerCertificate)> = vec![
        (None, PeerCertificate::None),
        (Some(vec![]), PeerCertificate::None),
        (
            Some(vec![pinned.der.clone()]),
            PeerCertificate::Verified(VerifiedCertificate {
                hub,
                device: id,
                proof: CertificateProof::Registered(pinned.fingerprint()),
            }),
        ),
        (
            Some(vec![managed.der.clone()]),
            PeerCertificate::Verified(VerifiedCertificate {
                hub,
                device: id,
                proof: CertificateProof::Registered(managed.fingerprint()),
            }),
        ),
        (
            Some(vec![leaf("x", None, plain).der]),
            PeerCertificate::Refused("the client certificate is no longer trusted"),
        ),
    ];
    for (i, (chain, expect)) in cases.into_iter().enumerate() {
        let got = identify(&ctx, &fx.engine, chain.as_deref(), peer).await;
        assert_eq!(got, expect, "case {i}");
    }
}

// ---- hub events of refused certificates -------------------------------------------------------

/// A refused client certificate is attributed to the hub whose CA is named as the issuer by
/// a certificate of the chain (or the pinned device's hub), never to another hub, and raises
/// "invalid device certificate" there; one no hub's CA issued is only counted.
#[test]
fn refused_certificates_raise_events_on_the_hub_that_issued_them() {
    let engine = Engine::new(EngineConfig::default());
    let (hub_a, hub_b) = (HubId::new_random(), HubId::new_random());
    let ca_a = Ca::root("hub a");
    let root_b = Ca::root("customer root");
    let inter_b = root_b.intermediate("customer intermediate");
    let server_ca = Ca::root("server ca");
    let (chain, key) = server_cert(&server_ca);
    let trust = TlsTrust::new(&chain, &key).unwrap();
    for (hub, ca, custom) in [(hub_a, &ca_a, false), (hub_b, &root_b, true)] {
        engine
            .create_hub(HubSpec {
                id: hub,
                name: hub.to_string(),
                plan: Plan::Dedicated,
                limits: HubLimits::default(),
                allow_anonymous: true,
                anonymous_filters: Default::default(),
                enabled: true,
                events_enabled: true,
                events_topic_prefix: TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).unwrap(),
            })
            .unwrap();
        trust.set_hub_ca(hub, &ca.pem(), custom).unwrap();
    }
    trust.raise_events_on(engine.clone());
    let expired = |p: &mut CertificateParams| p.not_after = date_time_ymd(2021, 1, 1);
    let pinned = leaf("anything", None, expired);
    let pinned_device = DeviceId::new_random();
    trust.pin_device(pinned_device, hub_b, Some(pinned.fingerprint()));
    let via_inter = leaf("pump", Some(&inter_b), expired);
    // (case, chain, hub and device it belongs to)
    type Case = (
        &'static str,
        Vec<CertificateDer<'static>>,
        Vec<(HubId, Option<DeviceId>)>,
    );
    let cases: Vec<Case> = vec![
        (
            "issued by hub a's CA",
            vec![leaf("x", Some(&ca_a), expired).der],
            vec![(hub_a, None)],
        ),
        (
            "through b's intermediate",
            vec![via_inter.der.clone(), inter_b.der()],
            vec![(hub_b, None)],
        ),
        (
            "pinned",
            vec![pinned.der.clone()],
            vec![(hub_b, Some(pinned_device))],
        ),
        ("truncated chain", vec![via_inter.der.clone()], vec![]),
        ("self-signed", vec![leaf("x", None, expired).der], vec![]),
        (
            "a stranger's CA",
            vec![leaf("x", Some(&Ca::root("stranger")), expired).der],
            vec![],
        ),
    ];
    for (case, chain, owners) in &cases {
        assert_eq!(&trust.attribute(chain), owners, "{case}");
    }
    // The events reach a subscriber of the attributed hub only.
    let subscribe = |hub: HubId| {
        let s = engine
            .connect(iothub_engine::ConnectRequest {
                hub,
                client_id: Some(iothub_model::ClientId::new("watcher").unwrap()),
                clean_start: true,
                session_expiry_secs: 0,
                receive_maximum: u16::MAX,
                will: None,
            })
            .unwrap()
            .session;
        let request = iothub_engine::SubscribeRequest {
            filter: iothub_model::SubscriptionFilter::parse("$SCW/events/#").unwrap(),
            qos: iothub_model::QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: iothub_engine::RetainHandling::SendAtSubscribe,
            subscription_id: None,
        };
        assert!(s.subscribe(&[request])[0].is_ok());
        s
    };
    let (watch_a, watch_b) = (subscribe(hub_a), subscribe(hub_b));
    let topics = |s: &iothub_engine::Session| -> Vec<(String, String)> {
        let mut out = Vec::new();
        s.poll_outgoing(&mut out, usize::MAX);
        out.into_iter()
            .filter_map(|o| match o {
                iothub_engine::Outgoing::Publish(p) => Some((
                    p.message.topic.as_str().to_string(),
                    String::from_utf8_lossy(&p.message.payload).into_owned(),
                )),
                _ => None,
            })
            .collect()
    };
    let now = UnixTime::since_unix_epoch(Duration::from_secs(1_900_000_000));
    for (case, chain, owners) in &cases {
        let refusal = trust.classify(chain, now).unwrap_err();
        trust.report_refusal(chain, &refusal);
        let (a, b) = (topics(&watch_a), topics(&watch_b));
        let expected = (
            owners.iter().any(|(h, _)| *h == hub_a),
            owners.iter().any(|(h, _)| *h == hub_b),
        );
        assert_eq!(
            (!a.is_empty(), !b.is_empty()),
            expected,
            "{case}: a {a:?} b {b:?}"
        );
        for (topic, payload) in a.iter().chain(&b) {
            assert!(topic.starts_with("$SCW/events/error/"), "{case}: {topic}");
            assert!(
                payload.contains("invalid device certificate: the client certificate has expired"),
                "{case}: {payload}"
            );
        }
    }
}
