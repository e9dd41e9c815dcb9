//! MQTT over QUIC: the `quic` listener (UDP, ALPN `mqtt`, one MQTT connection per
//! bidirectional stream), driven by a minimal quinn client written here that sends the
//! hand-written frames of `iothub_e2e::frames` on its streams and verifies the hub's server
//! certificate (the generated one, under `data_dir/tls`, for `localhost`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_e2e::api::{Api, id_of};
use iothub_e2e::certs::{Pem, create_device, self_signed};
use iothub_e2e::clients::{V4, v4_options};
use iothub_e2e::frames::{self, Connect, PropValue, kind};
use iothub_e2e::raw::{Packet, QUIET, ReadError, WAIT};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, unique};
use tokio::runtime::Runtime;

/// A hub with an MQTT and a QUIC listener admitting anonymous clients; `extra` is added at
/// the top of the YAML (an `mqtt:` section, say).
fn quic_hub(extra: &str) -> Option<Hub> {
    Hub::start_with(&format!(
        "{extra}listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
         \x20 quic:\n    - name: quic\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
         api:\n  bind: 127.0.0.1:0\n\
         hubs:\n  - name: default\n    plan: plan_dedicated\n    allow_anonymous: true\n"
    ))
}

/// The CA that signs the hub's generated server certificate.
fn server_ca(hub: &Hub) -> PathBuf {
    hub.workdir().unwrap().join("iothub-data/tls/ca.crt")
}

/// `iothub_connections_total` of one listener: how many MQTT connections it started.
fn connections_started(hub: &Hub, listener: &str) -> f64 {
    let (status, text) = http_get(hub.api_addr().unwrap(), "/metrics");
    assert_eq!(status, 200);
    metric_sum(&text, "iothub_connections_total", &[("listener", listener)]).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// A minimal QUIC MQTT client: quinn on its own small runtime, used synchronously.
// ---------------------------------------------------------------------------------------

struct QuicClient {
    rt: Arc<Runtime>,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

/// One MQTT connection: a bidirectional stream of a [`QuicClient`].
struct MqttStream {
    rt: Arc<Runtime>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    data: Vec<u8>,
}

impl QuicClient {
    /// Connects to `addr` as `localhost`, offering `alpn`, trusting only the PEM CA `ca`;
    /// `Err` carries quinn's reason when the handshake fails.
    fn connect(addr: SocketAddr, alpn: &[&[u8]], ca: &Path) -> Result<Self, String> {
        Self::connect_as(addr, alpn, ca, None)
    }

    /// [`Self::connect`] presenting the client certificate `client`.
    fn connect_as(
        addr: SocketAddr,
        alpn: &[&[u8]],
        ca: &Path,
        client: Option<&Pem>,
    ) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        );
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
        let mut tls = match client {
            Some(pem) => {
                let chain = CertificateDer::pem_file_iter(&pem.cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                builder
                    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&pem.key).unwrap())
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let (endpoint, conn) = rt.block_on(async {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.set_default_client_config(config);
            let connecting = endpoint
                .connect(addr, "localhost")
                .map_err(|e| e.to_string())?;
            let conn = tokio::time::timeout(WAIT, connecting)
                .await
                .map_err(|_| "QUIC handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((endpoint, conn))
        })?;
        Ok(QuicClient { rt, endpoint, conn })
    }

    fn open(addr: SocketAddr, ca: &Path) -> Self {
        Self::connect(addr, &[b"mqtt"], ca).unwrap_or_else(|e| panic!("QUIC connect: {e}"))
    }

    /// Opens a bidirectional stream (the server sees it with its first bytes).
    fn stream(&self) -> MqttStream {
        let (send, recv) = self.rt.block_on(self.conn.open_bi()).unwrap();
        MqttStream {
            rt: self.rt.clone(),
            send,
            recv,
            data: Vec::new(),
        }
    }

    /// A stream with a completed MQTT 3.1.1 CONNECT.
    fn connected(&self, client_id: &str) -> MqttStream {
        let mut s = self.stream();
        s.send(&Connect::v4(client_id, true).encode());
        let p = s.expect_packet();
        assert_eq!(
            (p.kind(), p.body.as_slice()),
            (kind::CONNACK, &[0u8, 0][..]),
            "CONNACK"
        );
        s
    }

    /// Waits for the server to close the connection; its close code and reason.
    fn expect_closed(&self) -> (u64, String) {
        let err = self
            .rt
            .block_on(async { tokio::time::timeout(WAIT, self.conn.closed()).await })
            .unwrap_or_else(|_| panic!("the QUIC connection is still open after {WAIT:?}"));
        match err {
            quinn::ConnectionError::ApplicationClosed(close) => (
                close.error_code.into_inner(),
                String::from_utf8_lossy(&close.reason).to_string(),
            ),
            other => panic!("closed otherwise than by the server application: {other}"),
        }
    }
}

impl QuicClient {
    /// Waits for the server to close the connection with a TLS error (a refused client
    /// certificate); its description.
    fn expect_handshake_refused(&self) -> String {
        let err = self
            .rt
            .block_on(async { tokio::time::timeout(WAIT, self.conn.closed()).await })
            .unwrap_or_else(|_| panic!("the QUIC connection is still open after {WAIT:?}"));
        match err {
            quinn::ConnectionError::ConnectionClosed(close) => close.to_string(),
            other => panic!("closed otherwise than by a TLS error: {other}"),
        }
    }
}

impl Drop for QuicClient {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"");
        let endpoint = self.endpoint.clone();
        // Let the close go out before the runtime stops.
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await
        });
    }
}

impl MqttStream {
    fn send(&mut self, bytes: &[u8]) {
        self.rt.block_on(self.send.write_all(bytes)).unwrap();
    }

    fn read_packet(&mut self, timeout: Duration) -> Result<Packet, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = take_packet(&mut self.data)? {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let read = self.rt.block_on(async {
                tokio::time::timeout(left, self.recv.read_chunk(65536, true)).await
            });
            match read {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(Some(chunk))) => self.data.extend_from_slice(&chunk.bytes),
                Ok(Ok(None) | Err(_)) => return Err(ReadError::Closed),
            }
        }
    }

    fn expect_packet(&mut self) -> Packet {
        self.read_packet(WAIT)
            .unwrap_or_else(|e| panic!("no MQTT packet over QUIC: {e:?}"))
    }

    fn expect_publish(&mut self) -> frames::Received {
        let p = self.expect_packet();
        assert_eq!(p.kind(), kind::PUBLISH, "{p:?}");
        frames::parse_publish(p.first_byte, &p.body, false).unwrap()
    }

    fn subscribe(&mut self, filter: &str) {
        self.send(&frames::subscribe(1, &[(filter, 0)], None));
        let p = self.expect_packet();
        assert_eq!(
            (p.kind(), p.body.as_slice()),
            (kind::SUBACK, &[0, 1, 0][..])
        );
    }
}

/// One MQTT packet from the front of `data`, if complete.
fn take_packet(data: &mut Vec<u8>) -> Result<Option<Packet>, ReadError> {
    if data.len() < 2 {
        return Ok(None);
    }
    let Some((len, n)) = frames::get_vbi(&data[1..]) else {
        return if data.len() >= 5 {
            Err(ReadError::Malformed)
        } else {
            Ok(None)
        };
    };
    let total = 1 + n + len as usize;
    if data.len() < total {
        return Ok(None);
    }
    let packet = Packet {
        first_byte: data[0],
        body: data[1 + n..total].to_vec(),
    };
    data.drain(..total);
    Ok(Some(packet))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// An MQTT connection over QUIC exchanges messages with a TCP client both ways, with the
/// server certificate verified (CA under data_dir/tls, name `localhost`).
#[test]
fn mqtt_over_quic_talks_to_tcp_clients() {
    let Some(hub) = quic_hub("") else { return };
    let quic = QuicClient::open(hub.listener("quic"), &server_ca(&hub));
    let topic = format!("{}/q", unique("quic"));
    let mut s = quic.connected(&unique("q"));
    s.subscribe(&topic);
    let mut tcp = V4::connect(v4_options(hub.mqtt_addr(), &unique("t")));
    tcp.subscribe(&topic, rumqttc::QoS::AtLeastOnce);

    tcp.publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"from tcp");
    assert_eq!(s.expect_publish().payload, b"from tcp");
    s.send(&frames::Publish::v4(&topic, b"from quic").qos(1, 9).encode());
    let mut kinds = Vec::new();
    for _ in 0..2 {
        kinds.push(s.expect_packet().kind());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [kind::PUBLISH, kind::PUBACK],
        "own message and PUBACK"
    );
    let mut at_tcp: Vec<_> = (0..2)
        .map(|_| tcp.expect_publish().payload.to_vec())
        .collect();
    at_tcp.sort();
    assert_eq!(at_tcp, [b"from quic".to_vec(), b"from tcp".to_vec()]);
    assert_eq!(connections_started(&hub, "quic"), 1.0);
}

/// A client offering any ALPN but `mqtt` (or none) fails the handshake (TLS alert 120,
/// no_application_protocol) and no MQTT connection starts; the listener keeps serving, and
/// a client offering `mqtt` among others gets it.
#[test]
fn wrong_alpn_is_refused_at_the_handshake() {
    let Some(hub) = quic_hub("") else { return };
    let (addr, ca) = (hub.listener("quic"), server_ca(&hub));
    let cases: &[(&[&[u8]], bool)] = &[
        (&[b"h3"], false),
        (&[b"mqttx"], false),
        (&[b"MQTT"], false),
        (&[b"mqt"], false),
        (&[], false),
        (&[b"h3", b"mqtt"], true),
        (&[b"mqtt"], true),
    ];
    let mut accepted = 0.0;
    for (alpn, ok) in cases {
        let shown: Vec<_> = alpn.iter().map(|p| String::from_utf8_lossy(p)).collect();
        match QuicClient::connect(addr, alpn, &ca) {
            Ok(client) => {
                assert!(ok, "ALPN {shown:?} was accepted");
                let mut s = client.connected(&unique("alpn"));
                s.send(&frames::pingreq());
                assert_eq!(s.expect_packet().kind(), kind::PINGRESP);
                accepted += 1.0;
            }
            Err(e) => {
                assert!(!ok, "ALPN {shown:?} refused: {e}");
                assert!(
                    e.contains("120"),
                    "ALPN {shown:?}: not a no_application_protocol alert: {e}"
                );
            }
        }
    }
    assert_eq!(connections_started(&hub, "quic"), accepted);
    iothub_e2e::raw::assert_serving(hub.mqtt_addr());
}

/// Several QUIC connections at once, each carrying several MQTT connections (one per
/// bidirectional stream, each its own session): all receive a message published over QUIC.
#[test]
fn several_mqtt_connections_over_quic_at_once() {
    let Some(hub) = quic_hub("") else { return };
    let (addr, ca) = (hub.listener("quic"), server_ca(&hub));
    let topic = format!("{}/all", unique("many"));
    let clients: Vec<QuicClient> = (0..5).map(|_| QuicClient::open(addr, &ca)).collect();
    let mut streams: Vec<MqttStream> = clients
        .iter()
        .flat_map(|c| {
            (0..3)
                .map(|_| c.connected(&unique("s")))
                .collect::<Vec<_>>()
        })
        .collect();
    for s in &mut streams {
        s.subscribe(&topic);
    }
    streams[4].send(&frames::Publish::v4(&topic, b"to fifteen").encode());
    for (i, s) in streams.iter_mut().enumerate() {
        assert_eq!(s.expect_publish().payload, b"to fifteen", "stream {i}");
        assert_eq!(
            s.read_packet(QUIET).unwrap_err(),
            ReadError::Timeout,
            "stream {i}"
        );
    }
    assert_eq!(connections_started(&hub, "quic"), 15.0);
}

/// Lifetimes: a QUIC connection that opens no stream within `mqtt.connect_timeout_secs`
/// (1 s here) is closed with code 1; a stream that starts a CONNECT and stalls is ended by
/// the connect timeout, and the connection with it (code 0); a DISCONNECT on the last
/// stream closes the connection; a takeover's DISCONNECT 0x8E reaches the old stream
/// before its connection closes. The listener keeps serving.
#[test]
fn quic_connections_end_with_their_mqtt_connections() {
    let Some(hub) = quic_hub("mqtt:\n  connect_timeout_secs: 1\n") else {
        return;
    };
    let (addr, ca) = (hub.listener("quic"), server_ca(&hub));

    let idle = QuicClient::open(addr, &ca);
    let (code, reason) = idle.expect_closed();
    assert_eq!(
        (code, reason.as_str()),
        (1, "no MQTT stream opened in time")
    );

    let stalled = QuicClient::open(addr, &ca);
    let mut s = stalled.stream();
    s.send(&Connect::v4(&unique("half"), true).encode()[..3]);
    assert_eq!(s.read_packet(WAIT).unwrap_err(), ReadError::Closed);
    assert_eq!(stalled.expect_closed().0, 0);

    let leaving = QuicClient::open(addr, &ca);
    let mut s = leaving.connected(&unique("bye"));
    s.send(&frames::disconnect(None));
    assert_eq!(s.read_packet(WAIT).unwrap_err(), ReadError::Closed);
    assert_eq!(leaving.expect_closed().0, 0);

    let id = unique("take");
    let old = QuicClient::open(addr, &ca);
    let mut first = old.stream();
    first.send(&Connect::v5(&id, true).encode());
    assert_eq!(first.expect_packet().kind(), kind::CONNACK);
    let new = QuicClient::open(addr, &ca);
    let mut second = new.stream();
    second.send(
        &Connect::v5(&id, true)
            .prop(0x11, PropValue::U32(0))
            .encode(),
    );
    assert_eq!(second.expect_packet().kind(), kind::CONNACK);
    let p = first.expect_packet();
    assert_eq!(
        (p.kind(), frames::disconnect_reason(&p.body)),
        (kind::DISCONNECT, 0x8E),
        "session taken over"
    );
    assert_eq!(old.expect_closed().0, 0);

    let alive = QuicClient::open(addr, &ca);
    let mut s = alive.connected(&unique("alive"));
    s.send(&frames::pingreq());
    assert_eq!(s.expect_packet().kind(), kind::PINGRESP);
}

/// QUIC identifies devices by the client certificate of the QUIC handshake, like the TLS
/// port: a device's certificate (from the API) connects it with its id or an empty client
/// id; without a certificate only an `allow_insecure` device gets in (CONNACK 5 otherwise);
/// a certificate never opens another device's session, nor one in another hub (CONNACK 2); a
/// self-signed certificate fails the handshake. Devices of one hub exchange messages.
#[test]
fn devices_are_identified_by_client_certificates_over_quic() {
    let Some(hub) = Hub::start_with(
        "listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n\
         \x20 quic:\n    - name: quic\n      bind: 127.0.0.1:0\n\
         api:\n  bind: 127.0.0.1:0\nhubs: []\n",
    ) else {
        return;
    };
    let addr = hub.listener("quic");
    let api = Api::admin(&hub);
    let dir = tempfile::tempdir().unwrap();
    let (status, ca_pem) = http_get(api.addr, "/iot/v1/regions/fr-par/server-ca");
    assert_eq!(status, 200, "{ca_pem}");
    let ca = dir.path().join("server-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let hub_a = id_of(&api.create_hub(&serde_json::json!({ "name": unique("a") })));
    let hub_b = id_of(&api.create_hub(&serde_json::json!({ "name": unique("b") })));
    let (a1, a1_pem) = create_device(&api, dir.path(), &hub_a, false);
    let (insecure, _) = create_device(&api, dir.path(), &hub_a, true);
    let (b1, b1_pem) = create_device(&api, dir.path(), &hub_b, false);
    let stranger = self_signed(dir.path(), &a1);

    // (what, certificate, client id, CONNACK return code or None: handshake refused).
    // 5 = not authorized; 2 = identifier rejected: the certificate names a device, and the
    // client id must then be that device's id (or empty).
    let cases: &[(&str, Option<&Pem>, &str, Option<u8>)] = &[
        ("own certificate, own id", Some(&a1_pem), &a1, Some(0)),
        ("own certificate, empty id", Some(&a1_pem), "", Some(0)),
        ("no certificate, mTLS device", None, &a1, Some(5)),
        ("no certificate, insecure device", None, &insecure, Some(0)),
        (
            "certificate of another hub's device",
            Some(&b1_pem),
            &a1,
            Some(2),
        ),
        (
            "own certificate, other hub's device id",
            Some(&a1_pem),
            &b1,
            Some(2),
        ),
        (
            "self-signed certificate with CN = device id",
            Some(&stranger),
            &a1,
            None,
        ),
    ];
    for (what, pem, client_id, code) in cases {
        match (QuicClient::connect_as(addr, &[b"mqtt"], &ca, *pem), code) {
            (Ok(client), Some(code)) => {
                let mut s = client.stream();
                s.send(&Connect::v4(client_id, true).encode());
                let p = s.expect_packet();
                assert_eq!((p.kind(), p.body[1]), (kind::CONNACK, *code), "{what}");
            }
            (Err(e), None) => assert!(!e.is_empty(), "{what}"),
            // TLS 1.3: the client may finish its side of the handshake before the server
            // has checked its certificate; the server then closes the connection.
            (Ok(client), None) => {
                let reason = client.expect_handshake_refused();
                assert!(reason.contains("certificate"), "{what}: {reason}");
            }
            (Err(e), Some(_)) => panic!("{what}: handshake refused: {e}"),
        }
    }

    let topic = format!("{}/t", unique("cert"));
    let secure = QuicClient::connect_as(addr, &[b"mqtt"], &ca, Some(&a1_pem)).unwrap();
    let mut s = secure.connected(&a1);
    s.subscribe(&topic);
    let plain = QuicClient::open(addr, &ca);
    let mut p = plain.connected(&insecure);
    p.send(&frames::Publish::v4(&topic, b"same hub").encode());
    assert_eq!(s.expect_publish().payload, b"same hub");
}

/// SIGTERM: an MQTT 5 client on a QUIC stream gets DISCONNECT 0x8B (server shutting down)
/// before the hub exits with status 0.
#[test]
fn sigterm_disconnects_quic_clients_gracefully() {
    let Some(mut hub) = quic_hub("") else { return };
    let quic = QuicClient::open(hub.listener("quic"), &server_ca(&hub));
    let mut s = quic.stream();
    s.send(&Connect::v5(&unique("bye"), true).encode());
    assert_eq!(s.expect_packet().kind(), kind::CONNACK);
    let status = hub.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let p = s.expect_packet();
    assert_eq!(
        (p.kind(), frames::disconnect_reason(&p.body)),
        (kind::DISCONNECT, 0x8B)
    );
}
