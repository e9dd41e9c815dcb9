//! MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): the `ws` and `wss` listeners, driven by
//! rumqttc's WebSocket transport and by a WebSocket client written here byte by byte (RFC
//! 6455 framing), which can split and join MQTT packets across messages at will and send what
//! a library would not (text messages, upgrades without the `mqtt` subprotocol).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_e2e::api::{Api, id_of};
use iothub_e2e::certs::{Pem, create_device, self_signed};
use iothub_e2e::clients::{V4, V5};
use iothub_e2e::frames::{self, Connect, kind};
use iothub_e2e::raw::{Packet, QUIET, ReadError, WAIT};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, unique};

/// A hub with an MQTT, a ws and a wss listener, all admitting anonymous clients.
fn ws_hub() -> Option<Hub> {
    ws_hub_with("")
}

/// [`ws_hub`] with extra top-level YAML (an `mqtt:` section, say).
fn ws_hub_with(extra: &str) -> Option<Hub> {
    Hub::start_with(&format!(
        "{extra}listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
         \x20 ws:\n    - name: ws\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
         \x20 wss:\n    - name: wss\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
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
// A WebSocket client written from RFC 6455.
// ---------------------------------------------------------------------------------------

mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The key of RFC 6455 §1.3 and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The server's answer to an upgrade request.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// The rest of the response (an error's body), read until the server closed.
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct RawWs {
    stream: TcpStream,
    /// Bytes received and not yet parsed as WebSocket frames.
    wire: Vec<u8>,
    /// MQTT bytes received (binary and continuation payloads) and not yet parsed as packets.
    data: Vec<u8>,
    pongs: usize,
    texts: usize,
}

/// Sends an upgrade request for `path` offering `protocols` (the Sec-WebSocket-Protocol
/// value, if any). 101 gives a client ready for MQTT; anything else the whole answer.
fn upgrade(
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
) -> Result<(RawWs, Answer), Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();

    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(Instant::now() < deadline, "no HTTP answer: {got:?}");
        match read_some(&mut stream, deadline) {
            Some(chunk) if !chunk.is_empty() => got.extend_from_slice(&chunk),
            _ => panic!(
                "connection closed before an HTTP answer: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = got[head_end..].to_vec();
    let mut answer = Answer {
        status,
        headers,
        body: String::new(),
    };
    if status == 101 {
        let ws = RawWs {
            stream,
            wire: rest,
            data: Vec::new(),
            pongs: 0,
            texts: 0,
        };
        return Ok((ws, answer));
    }
    let mut body = rest;
    while let Some(chunk) = read_some(&mut stream, deadline) {
        if chunk.is_empty() {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    answer.body = String::from_utf8_lossy(&body).to_string();
    Err(answer)
}

/// One read before `deadline`: `Some(empty)` at EOF or reset, `None` on timeout.
fn read_some(stream: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    stream.set_read_timeout(Some(left)).unwrap();
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => return Some(chunk[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some(Vec::new()),
        }
    }
}

/// A client frame (always masked, RFC 6455 §5.3).
fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl RawWs {
    /// Upgrades with the `mqtt` subprotocol on /mqtt; the test fails otherwise.
    fn open(addr: SocketAddr) -> RawWs {
        match upgrade(addr, "/mqtt", Some("mqtt")) {
            Ok((ws, _)) => ws,
            Err(answer) => panic!("upgrade refused: {answer:?}"),
        }
    }

    /// Upgrades and completes an MQTT 3.1.1 CONNECT.
    fn connected(addr: SocketAddr, client_id: &str) -> RawWs {
        let mut ws = RawWs::open(addr);
        ws.binary(&Connect::v4(client_id, true).encode());
        let p = ws.expect_packet();
        assert_eq!(
            (p.kind(), p.body.as_slice()),
            (kind::CONNACK, &[0u8, 0][..]),
            "CONNACK"
        );
        ws
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// One binary message.
    fn binary(&mut self, payload: &[u8]) {
        self.send(&client_frame(true, opcode::BINARY, payload))
            .unwrap();
    }

    /// Reads frames until one MQTT packet is complete.
    fn read_packet(&mut self, timeout: Duration) -> Result<Packet, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = take_packet(&mut self.data)? {
                return Ok(p);
            }
            self.read_frame(deadline)?;
        }
    }

    fn expect_packet(&mut self) -> Packet {
        self.read_packet(WAIT)
            .unwrap_or_else(|e| panic!("no MQTT packet over WebSocket: {e:?}"))
    }

    /// Reads and handles one frame: data is queued, pings answered, pongs counted.
    fn read_frame(&mut self, deadline: Instant) -> Result<(), ReadError> {
        loop {
            if let Some((fin_op, payload, used)) = parse_server_frame(&self.wire)? {
                self.wire.drain(..used);
                match fin_op & 0x0f {
                    opcode::BINARY | opcode::CONTINUATION => self.data.extend_from_slice(&payload),
                    opcode::TEXT => self.texts += 1,
                    opcode::PING => {
                        let pong = client_frame(true, opcode::PONG, &payload);
                        let _ = self.send(&pong);
                    }
                    opcode::PONG => self.pongs += 1,
                    opcode::CLOSE => return Err(ReadError::Closed),
                    _ => return Err(ReadError::Malformed),
                }
                return Ok(());
            }
            match read_some(&mut self.stream, deadline) {
                None => return Err(ReadError::Timeout),
                Some(chunk) if chunk.is_empty() => return Err(ReadError::Closed),
                Some(chunk) => self.wire.extend_from_slice(&chunk),
            }
        }
    }

    /// Waits until the server closes (a close frame or the TCP close).
    fn expect_closed(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read_frame(deadline) {
                Ok(()) => {}
                Err(ReadError::Closed) => return,
                Err(e) => panic!("expected the connection to be closed, got {e:?}"),
            }
        }
    }
}

/// A whole server frame at the start of `wire`: (first byte, payload, bytes used). Server
/// frames must not be masked (RFC 6455 §5.1).
fn parse_server_frame(wire: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, ReadError> {
    if wire.len() < 2 {
        return Ok(None);
    }
    if wire[1] & 0x80 != 0 {
        return Err(ReadError::Malformed);
    }
    let (len, at) = match wire[1] & 0x7f {
        126 if wire.len() >= 4 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
        127 if wire.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&wire[2..10]);
            (
                usize::try_from(u64::from_be_bytes(b)).map_err(|_| ReadError::Malformed)?,
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if wire.len() < at + len {
        return Ok(None);
    }
    Ok(Some((wire[0], wire[at..at + len].to_vec(), at + len)))
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

/// A fresh WebSocket client subscribes and receives its own QoS 1 message: the listener
/// still serves.
fn assert_ws_serving(addr: SocketAddr) {
    let id = unique("wsalive");
    let topic = format!("{id}/alive");
    let mut ws = RawWs::connected(addr, &id);
    ws.binary(&frames::subscribe(1, &[(&topic, 1)], None));
    let suback = ws.expect_packet();
    assert_eq!(
        (suback.kind(), suback.body.as_slice()),
        (kind::SUBACK, &[0, 1, 1][..])
    );
    ws.binary(
        &frames::Publish::v4(&topic, b"still serving")
            .qos(1, 7)
            .encode(),
    );
    let mut got_publish = false;
    let mut got_puback = false;
    while !(got_publish && got_puback) {
        let p = ws.expect_packet();
        match p.kind() {
            kind::PUBACK => got_puback = true,
            kind::PUBLISH => {
                let r = frames::parse_publish(p.first_byte, &p.body, false).unwrap();
                assert_eq!(r.payload, b"still serving");
                got_publish = true;
            }
            other => panic!("unexpected packet type {other}"),
        }
    }
}

fn ws_v4_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, format!("ws://{addr}/mqtt"), addr.port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

fn ws_v5_options(addr: SocketAddr, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, format!("ws://{addr}/mqtt"), addr.port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// rustls client configuration (ring) trusting only the PEM CA at `ca`, presenting `client`.
fn client_tls(ca: &Path, client: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
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
    Arc::new(config)
}

/// rumqttc 3.1.1 over wss to 127.0.0.1 (a SAN of the generated server certificate).
fn wss_v4_options(
    addr: SocketAddr,
    client_id: &str,
    ca: &Path,
    client: Option<&Pem>,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, format!("wss://{addr}/mqtt"), addr.port());
    o.set_transport(rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Rustls(
        client_tls(ca, client),
    )));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The upgrade succeeds only on /mqtt with the `mqtt` subprotocol offered, and then selects
/// it; an upgrade without it gets 400 (a wrong path 404) with the reason, and no MQTT
/// connection is started for any refusal.
/// v3.1.1: [MQTT-6.0.0-4]
/// v5: [MQTT-6.0.0-4]
#[test]
fn upgrade_needs_the_mqtt_subprotocol_on_the_mqtt_path() {
    let Some(hub) = ws_hub() else { return };
    let addr = hub.listener("ws");
    // (path, offered subprotocols, expected status, part of the refusal's body)
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/mqtt", Some("mqtt"), 101, ""),
        ("/mqtt", Some("mqttv3.1, mqtt"), 101, ""),
        ("/mqtt?x=1", Some("mqtt"), 101, ""),
        ("/mqtt", None, 400, "subprotocol \"mqtt\""),
        ("/mqtt", Some("mqttv3.1"), 400, "subprotocol \"mqtt\""),
        ("/mqtt", Some("MQTT"), 400, "subprotocol \"mqtt\""),
        ("/mqtt", Some(""), 400, "subprotocol \"mqtt\""),
        ("/", Some("mqtt"), 404, "/mqtt"),
        ("/ws", Some("mqtt"), 404, "/mqtt"),
    ];
    let mut upgraded = 0.0;
    for (path, offered, status, reason) in cases {
        match upgrade(addr, path, *offered) {
            Ok((mut ws, answer)) => {
                assert_eq!(*status, 101, "{path} {offered:?}: upgraded");
                // [MQTT-6.0.0-4] the server selects "mqtt"; RFC 6455 §4.2.2 accept value.
                assert_eq!(answer.header("Sec-WebSocket-Protocol"), Some("mqtt"));
                assert_eq!(answer.header("Sec-WebSocket-Accept"), Some(ACCEPT));
                ws.binary(&Connect::v4(&unique("up"), true).encode());
                assert_eq!(
                    ws.expect_packet().kind(),
                    kind::CONNACK,
                    "{path} {offered:?}"
                );
                upgraded += 1.0;
            }
            Err(answer) => {
                assert_eq!(answer.status, *status, "{path} {offered:?}: {answer:?}");
                assert!(
                    answer.body.contains(reason),
                    "{path} {offered:?}: {answer:?}"
                );
                assert_eq!(answer.header("Sec-WebSocket-Protocol"), None);
            }
        }
    }
    assert_eq!(connections_started(&hub, "ws"), upgraded);
    assert_ws_serving(addr);
}

/// Bad handshakes on the ws and wss ports (plain MQTT, TLS to the ws port, HTTP without an
/// upgrade, garbage, a request cut short then silence, a WebSocket upgrade in clear to the
/// wss port) are closed without any MQTT answer or session — the silent ones once
/// `mqtt.connect_timeout_secs` (1 s here) has passed — and every listener keeps serving.
#[test]
fn bad_handshakes_are_closed_and_the_listeners_keep_serving() {
    let Some(mut hub) = ws_hub_with("mqtt:\n  connect_timeout_secs: 1\n") else {
        return;
    };
    let (ws, wss) = (hub.listener("ws"), hub.listener("wss"));
    let connect = Connect::v4(&unique("bad"), true).encode();
    let upgrade_request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    // A TLS 1.2 ClientHello record header and the start of its handshake message.
    let client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ];
    let cases: &[(&str, SocketAddr, &[u8])] = &[
        ("plain MQTT CONNECT to ws", ws, &connect),
        ("TLS ClientHello to ws", ws, client_hello),
        (
            "HTTP GET without upgrade to ws",
            ws,
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        ("garbage to ws", ws, b"\x00\xff\x00\xff\r\n\r\n"),
        (
            "half an upgrade to ws, then silence",
            ws,
            &upgrade_request.as_bytes()[..40],
        ),
        ("nothing at all to ws", ws, b""),
        ("nothing at all to wss", wss, b""),
        ("upgrade in clear to wss", wss, upgrade_request.as_bytes()),
        ("plain MQTT CONNECT to wss", wss, &connect),
    ];
    for (what, addr, bytes) in cases {
        let mut s = TcpStream::connect_timeout(addr, WAIT).unwrap();
        s.write_all(bytes).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut answer = Vec::new();
        loop {
            match read_some(&mut s, deadline) {
                Some(chunk) if chunk.is_empty() => break,
                Some(chunk) => answer.extend_from_slice(&chunk),
                None => panic!("{what}: still open after {WAIT:?} ({answer:?})"),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !text.starts_with("HTTP/1.1 101") && answer.first() != Some(&0x20),
            "{what}: {text:?}"
        );
    }
    assert_eq!(connections_started(&hub, "ws"), 0.0);
    assert_eq!(connections_started(&hub, "wss"), 0.0);
    assert!(!hub.has_exited());
    assert_ws_serving(ws);
    iothub_e2e::raw::assert_serving(hub.mqtt_addr());
}

/// An MQTT packet may span WebSocket messages and one message may hold several packets;
/// fragmented messages and pings in between change nothing.
/// v3.1.1: [MQTT-6.0.0-2]
/// v5: [MQTT-6.0.0-2]
#[test]
fn mqtt_packets_may_span_and_share_websocket_messages() {
    let Some(hub) = ws_hub() else { return };
    let addr = hub.listener("ws");
    let mut ws = RawWs::open(addr);
    let id = unique("span");
    let topic = format!("{id}/t");
    // CONNECT in three messages, the first one byte long.
    let connect = Connect::v4(&id, true).encode();
    for part in [&connect[..1], &connect[1..5], &connect[5..]] {
        ws.binary(part);
    }
    assert_eq!(ws.expect_packet().kind(), kind::CONNACK);
    // SUBSCRIBE and the first half of a PUBLISH in one message, a ping, then the rest of
    // the PUBLISH as a fragmented message (first fragment, continuation with FIN).
    let publish = frames::Publish::v4(&topic, b"across frames").encode();
    let mut first = frames::subscribe(1, &[(&topic, 0)], None);
    first.extend_from_slice(&publish[..4]);
    ws.binary(&first);
    ws.send(&client_frame(true, opcode::PING, b"hi")).unwrap();
    ws.send(&client_frame(false, opcode::BINARY, &publish[4..6]))
        .unwrap();
    ws.send(&client_frame(true, opcode::CONTINUATION, &publish[6..]))
        .unwrap();
    let suback = ws.expect_packet();
    assert_eq!(
        (suback.kind(), suback.body.as_slice()),
        (kind::SUBACK, &[0, 1, 0][..])
    );
    let p = ws.expect_packet();
    let r = frames::parse_publish(p.first_byte, &p.body, false).unwrap();
    assert_eq!(
        (r.topic.as_str(), r.payload.as_slice()),
        (topic.as_str(), &b"across frames"[..])
    );
    assert_eq!(ws.pongs, 1, "the ping is answered with a pong");
    // Several packets in one message: three PINGREQs, three PINGRESPs.
    ws.binary(&[frames::pingreq(), frames::pingreq(), frames::pingreq()].concat());
    for _ in 0..3 {
        assert_eq!(ws.expect_packet().kind(), kind::PINGRESP);
    }
    assert_eq!(ws.read_packet(QUIET).unwrap_err(), ReadError::Timeout);
}

/// A text message is not MQTT: the connection is closed and its will is published.
/// v3.1.1: [MQTT-6.0.0-1]
/// v5: [MQTT-6.0.0-1]
#[test]
fn a_text_message_closes_the_connection() {
    let Some(hub) = ws_hub() else { return };
    let addr = hub.listener("ws");
    let id = unique("text");
    let will_topic = format!("{id}/will");
    let mut watcher = V4::connect(iothub_e2e::clients::v4_options(
        hub.mqtt_addr(),
        &unique("w"),
    ));
    watcher.subscribe(&will_topic, rumqttc::QoS::AtMostOnce);
    let mut ws = RawWs::open(addr);
    let connect = Connect::v4(&id, true).will(frames::Will {
        topic: will_topic.clone(),
        payload: b"gone".to_vec(),
        ..Default::default()
    });
    ws.binary(&connect.encode());
    assert_eq!(ws.expect_packet().kind(), kind::CONNACK);
    ws.send(&client_frame(true, opcode::TEXT, &frames::pingreq()))
        .unwrap();
    ws.expect_closed();
    assert_eq!(watcher.expect_publish().payload.as_ref(), b"gone");
}

/// rumqttc over WebSocket (3.1.1 and 5) exchanges messages with a TCP client, both ways.
#[test]
fn rumqttc_over_websocket_talks_to_tcp_clients() {
    let Some(hub) = ws_hub() else { return };
    let addr = hub.listener("ws");
    let topic = format!("{}/x", unique("rws"));
    let mut ws4 = V4::connect(ws_v4_options(addr, &unique("ws4")));
    ws4.subscribe(&topic, rumqttc::QoS::AtLeastOnce);
    let mut ws5 = V5::connect(ws_v5_options(addr, &unique("ws5")));
    ws5.subscribe(&topic, rumqttc::v5::mqttbytes::QoS::ExactlyOnce);
    let mut tcp = V4::connect(iothub_e2e::clients::v4_options(
        hub.mqtt_addr(),
        &unique("tcp"),
    ));
    tcp.subscribe(&topic, rumqttc::QoS::AtLeastOnce);

    tcp.publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"from tcp");
    ws5.publish(
        &topic,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        false,
        b"from ws5",
    );
    let mut at_ws4: Vec<_> = (0..2)
        .map(|_| ws4.expect_publish().payload.to_vec())
        .collect();
    let mut at_ws5: Vec<_> = (0..2)
        .map(|_| ws5.expect_publish().payload.to_vec())
        .collect();
    let mut at_tcp: Vec<_> = (0..2)
        .map(|_| tcp.expect_publish().payload.to_vec())
        .collect();
    for got in [&mut at_ws4, &mut at_ws5, &mut at_tcp] {
        got.sort();
        assert_eq!(*got, vec![b"from tcp".to_vec(), b"from ws5".to_vec()]);
    }
}

/// Many WebSocket connections at once, each with its own session, all receive a message
/// published over TCP and each other's.
#[test]
fn several_connections_over_websocket_at_once() {
    let Some(hub) = ws_hub() else { return };
    let addr = hub.listener("ws");
    let topic = format!("{}/all", unique("many"));
    let mut clients: Vec<RawWs> = (0..20)
        .map(|_| {
            let mut ws = RawWs::connected(addr, &unique("m"));
            ws.binary(&frames::subscribe(1, &[(&topic, 0)], None));
            assert_eq!(ws.expect_packet().kind(), kind::SUBACK);
            ws
        })
        .collect();
    let mut tcp = V4::connect(iothub_e2e::clients::v4_options(
        hub.mqtt_addr(),
        &unique("t"),
    ));
    tcp.publish(&topic, rumqttc::QoS::AtMostOnce, false, b"to all");
    clients[7].binary(&frames::Publish::v4(&topic, b"from seven").encode());
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut got: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let p = ws.expect_packet();
                frames::parse_publish(p.first_byte, &p.body, false)
                    .unwrap()
                    .payload
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![b"from seven".to_vec(), b"to all".to_vec()],
            "client {i}"
        );
    }
    assert_eq!(connections_started(&hub, "ws"), 20.0);
}

/// wss: rumqttc verifies the hub's server certificate (signed by the CA under
/// data_dir/tls, for 127.0.0.1) and exchanges messages with a ws client.
#[test]
fn rumqttc_over_wss_verifies_the_server_and_talks_to_ws_clients() {
    let Some(hub) = ws_hub() else { return };
    let (ws, wss) = (hub.listener("ws"), hub.listener("wss"));
    let topic = format!("{}/s", unique("wss"));
    let mut o = rumqttc::MqttOptions::new(unique("wss"), format!("wss://{wss}/mqtt"), wss.port());
    o.set_transport(rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Rustls(
        client_tls(&server_ca(&hub), None),
    )));
    let mut secure = V4::connect(o);
    secure.subscribe(&topic, rumqttc::QoS::AtLeastOnce);
    let mut plain = RawWs::connected(ws, &unique("p"));
    plain.binary(&frames::Publish::v4(&topic, b"over tls").qos(1, 3).encode());
    assert_eq!(plain.expect_packet().kind(), kind::PUBACK);
    assert_eq!(secure.expect_publish().payload.as_ref(), b"over tls");
    assert_eq!(connections_started(&hub, "wss"), 1.0);
}

/// wss identifies devices by their client certificates, like the TLS port: a device's
/// certificate (from the API) connects it with its id or an empty client id; without a
/// certificate only an `allow_insecure` device gets in (over ws too); a certificate never
/// opens another device's session, nor one in another hub; a self-signed certificate fails
/// the handshake. Connected devices of one hub exchange messages across ws and wss.
#[test]
fn devices_are_identified_by_client_certificates_over_wss() {
    let Some(hub) = Hub::start_with(
        "listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n\
         \x20 ws:\n    - name: ws\n      bind: 127.0.0.1:0\n\
         \x20 wss:\n    - name: wss\n      bind: 127.0.0.1:0\n\
         api:\n  bind: 127.0.0.1:0\nhubs: []\n",
    ) else {
        return;
    };
    let (ws, wss) = (hub.listener("ws"), hub.listener("wss"));
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

    // (what, listener, certificate, client id, admitted)
    let cases: &[(&str, SocketAddr, Option<&Pem>, &str, bool)] = &[
        ("own certificate, own id", wss, Some(&a1_pem), &a1, true),
        ("own certificate, empty id", wss, Some(&a1_pem), "", true),
        ("no certificate, mTLS device", wss, None, &a1, false),
        (
            "no certificate, insecure device",
            wss,
            None,
            &insecure,
            true,
        ),
        (
            "certificate of another device's hub",
            wss,
            Some(&b1_pem),
            &a1,
            false,
        ),
        (
            "own certificate, other hub's device id",
            wss,
            Some(&a1_pem),
            &b1,
            false,
        ),
        (
            "self-signed certificate with CN = device id",
            wss,
            Some(&stranger),
            &a1,
            false,
        ),
        ("ws, mTLS device", ws, None, &a1, false),
        ("ws, insecure device", ws, None, &insecure, true),
    ];
    for (what, addr, pem, client_id, admitted) in cases {
        let options = if *addr == wss {
            wss_v4_options(*addr, client_id, &ca, *pem)
        } else {
            ws_v4_options(*addr, client_id)
        };
        match V4::try_connect(options) {
            Ok(c) => {
                assert!(admitted, "{what}: admitted");
                c.disconnect();
            }
            Err(e) => assert!(!admitted, "{what}: refused: {e}"),
        }
    }

    let topic = format!("{}/t", unique("cert"));
    let mut secure = V4::connect(wss_v4_options(wss, &a1, &ca, Some(&a1_pem)));
    secure.subscribe(&topic, rumqttc::QoS::AtLeastOnce);
    let mut plain = V4::connect(ws_v4_options(ws, &insecure));
    plain.publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"same hub");
    assert_eq!(secure.expect_publish().payload.as_ref(), b"same hub");
    assert_ws_serving_devices(&hub, wss, &ca, &a1, &a1_pem);
}

/// After the refusals the wss listener still admits the device (a fresh connection).
fn assert_ws_serving_devices(hub: &Hub, wss: SocketAddr, ca: &Path, id: &str, pem: &Pem) {
    let c = V4::try_connect(wss_v4_options(wss, id, ca, Some(pem)))
        .unwrap_or_else(|e| panic!("wss no longer serves: {e}\n{}", hub.logs()));
    c.disconnect();
}

/// SIGTERM: an MQTT 5 client over WebSocket gets DISCONNECT 0x8B (server shutting down)
/// before the hub exits with status 0.
#[test]
fn sigterm_disconnects_websocket_clients_gracefully() {
    let Some(mut hub) = ws_hub() else { return };
    let mut ws = RawWs::open(hub.listener("ws"));
    ws.binary(&Connect::v5(&unique("bye"), true).encode());
    assert_eq!(ws.expect_packet().kind(), kind::CONNACK);
    let status = hub.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let p = ws.expect_packet();
    assert_eq!(
        (p.kind(), frames::disconnect_reason(&p.body)),
        (kind::DISCONNECT, 0x8B)
    );
}
