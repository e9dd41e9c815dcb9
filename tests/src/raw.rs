//! A byte-level MQTT client over a blocking `TcpStream`, for tests that must send what no
//! well-behaved client library would (bad flags, bad lengths, half packets) and see exactly
//! which bytes the hub answers with.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::frames::{self, Connack, Connect, Received, kind};

/// How long a test waits for something that should arrive.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should *not* arrive.
pub const QUIET: Duration = Duration::from_millis(400);

/// Why [`RawClient::read_packet`] returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing (or only part of a packet) arrived before the deadline.
    Timeout,
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// The bytes cannot be an MQTT frame (remaining length longer than 4 bytes).
    Malformed,
}

/// One received control packet: the first byte (type and flags) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub first_byte: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }
}

pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// MQTT 5 decoding of properties in the helpers below.
    pub v5: bool,
}

impl RawClient {
    /// Opens a TCP connection; sends nothing.
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("cannot open TCP connection to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: Vec::new(),
            v5: false,
        }
    }

    /// Writes raw bytes. A write error is returned, not a panic: after bad input the hub may
    /// already have closed the socket, and the test then checks that with [`Self::expect_closed`].
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Like [`Self::send`] but the test fails if the bytes cannot be written.
    pub fn send_ok(&mut self, bytes: &[u8]) {
        self.send(bytes)
            .unwrap_or_else(|e| panic!("write of {} bytes failed: {e}", bytes.len()));
    }

    /// Reads one packet, parsing only the fixed header and the remaining length.
    pub fn read_packet(&mut self, timeout: Duration) -> Result<Packet, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.take_buffered()? {
                return Ok(p);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Timeout);
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadError::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    fn take_buffered(&mut self) -> Result<Option<Packet>, ReadError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let Some((len, n)) = frames::get_vbi(&self.buf[1..]) else {
            return if self.buf.len() >= 5 {
                Err(ReadError::Malformed)
            } else {
                Ok(None)
            };
        };
        let total = 1 + n + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let packet = Packet {
            first_byte: self.buf[0],
            body: self.buf[1 + n..total].to_vec(),
        };
        self.buf.drain(..total);
        Ok(Some(packet))
    }

    /// Reads one packet or fails the test, naming what was expected.
    pub fn expect_packet(&mut self, what: &str) -> Packet {
        match self.read_packet(WAIT) {
            Ok(p) => p,
            Err(e) => panic!("expected {what}, got {e:?}"),
        }
    }

    /// Reads one packet and checks its type.
    pub fn expect_kind(&mut self, packet_kind: u8, what: &str) -> Packet {
        let p = self.expect_packet(what);
        assert_eq!(
            p.kind(),
            packet_kind,
            "expected {what} (type {packet_kind}), got type {} flags {:#x} body {:02x?}",
            p.kind(),
            p.first_byte & 0x0f,
            p.body
        );
        p
    }

    /// Waits for the hub to close the connection; returns the packets it sent before closing
    /// (a v5 DISCONNECT with a reason code, for example), so the test can check them.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet(left) {
                Ok(p) => before.push(p),
                Err(ReadError::Closed) => return before,
                Err(ReadError::Malformed) => panic!("the hub sent bytes that are not MQTT"),
                Err(ReadError::Timeout) => panic!(
                    "the hub did not close the connection within {timeout:?} (packets seen: {before:?})"
                ),
            }
        }
    }

    /// Asserts that nothing arrives for `quiet` and the connection stays open.
    pub fn expect_silence(&mut self, quiet: Duration) {
        match self.read_packet(quiet) {
            Err(ReadError::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Sends a CONNECT and returns the CONNACK; `v5` decoding follows the CONNECT's level.
    pub fn handshake(&mut self, connect: &Connect) -> Connack {
        self.v5 = connect.level >= 5;
        self.send_ok(&connect.encode());
        let p = self.expect_kind(kind::CONNACK, "CONNACK");
        frames::parse_connack(&p.body, self.v5)
            .unwrap_or_else(|| panic!("malformed CONNACK {:02x?}", p.body))
    }

    /// Opens a connection and completes a successful handshake.
    pub fn connected(addr: SocketAddr, connect: &Connect) -> (RawClient, Connack) {
        let mut c = RawClient::connect(addr);
        let ack = c.handshake(connect);
        assert_eq!(ack.code, 0, "CONNACK refused the connection: {ack:?}");
        (c, ack)
    }

    /// Subscribes and returns the SUBACK reason codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let props: &[(u8, frames::PropValue)] = &[];
        self.subscribe_with(packet_id, filters, props)
    }

    /// Subscribes with MQTT 5 SUBSCRIBE properties (ignored when the connection is 3.1.1).
    pub fn subscribe_with(
        &mut self,
        packet_id: u16,
        filters: &[(&str, u8)],
        props: &[(u8, frames::PropValue)],
    ) -> Vec<u8> {
        let bytes = frames::subscribe(packet_id, filters, self.v5.then_some(props));
        self.send_ok(&bytes);
        let p = self.expect_kind(kind::SUBACK, "SUBACK");
        let (id, codes) = frames::parse_ack_codes(&p.body, self.v5)
            .unwrap_or_else(|| panic!("malformed SUBACK {:02x?}", p.body));
        assert_eq!(id, packet_id, "SUBACK packet id");
        codes
    }

    /// Reads the next packet, which must be a PUBLISH, and decodes it.
    pub fn expect_publish(&mut self) -> Received {
        let p = self.expect_kind(kind::PUBLISH, "PUBLISH");
        frames::parse_publish(p.first_byte, &p.body, self.v5)
            .unwrap_or_else(|| panic!("malformed PUBLISH {:02x?}", p.body))
    }

    /// Reads the next PUBLISH and acknowledges it as its QoS requires (QoS 2 completes the
    /// whole PUBREC/PUBREL/PUBCOMP exchange).
    pub fn expect_publish_acked(&mut self) -> Received {
        let r = self.expect_publish();
        match r.qos {
            1 => self.send_ok(&frames::ack(kind::PUBACK, r.packet_id)),
            2 => {
                self.send_ok(&frames::ack(kind::PUBREC, r.packet_id));
                let rel = self.expect_kind(kind::PUBREL, "PUBREL");
                assert_eq!(rel.first_byte & 0x0f, 0x02, "PUBREL flags [MQTT-3.6.1-1]");
                self.send_ok(&frames::ack(kind::PUBCOMP, r.packet_id));
            }
            _ => {}
        }
        r
    }

    /// Publishes and completes the acknowledgement flow of its QoS.
    pub fn publish(&mut self, publish: &frames::Publish) {
        self.send_ok(&publish.encode());
        match publish.qos {
            1 => {
                let ack = self.expect_kind(kind::PUBACK, "PUBACK");
                assert_eq!(
                    &ack.body[..2],
                    &publish.packet_id.to_be_bytes(),
                    "PUBACK id"
                );
            }
            2 => {
                let rec = self.expect_kind(kind::PUBREC, "PUBREC");
                assert_eq!(
                    &rec.body[..2],
                    &publish.packet_id.to_be_bytes(),
                    "PUBREC id"
                );
                self.send_ok(&frames::ack(kind::PUBREL, publish.packet_id));
                let comp = self.expect_kind(kind::PUBCOMP, "PUBCOMP");
                assert_eq!(
                    &comp.body[..2],
                    &publish.packet_id.to_be_bytes(),
                    "PUBCOMP id"
                );
            }
            _ => {}
        }
    }

    /// A PINGREQ answered by a PINGRESP: proof that the connection is alive and served.
    pub fn ping(&mut self) {
        self.send_ok(&frames::pingreq());
        self.expect_kind(kind::PINGRESP, "PINGRESP");
    }

    /// Closes the socket without a DISCONNECT (a network failure as far as the hub knows).
    pub fn drop_connection(self) {
        self.stream.shutdown(Shutdown::Both).ok();
    }
}

impl RawClient {
    /// Reads PUBLISH packets (acknowledging each as its QoS requires) until one arrives on
    /// `sentinel`; returns those received before it. Publishers send the sentinel last: MQTT
    /// keeps one publisher's order on a topic filter [MQTT-4.6.0-5], so whatever should have
    /// arrived before the sentinel has arrived by then — a negative check without a sleep.
    pub fn publishes_until(&mut self, sentinel: &str) -> Vec<Received> {
        let mut before = Vec::new();
        loop {
            match self.next_publish(WAIT) {
                Ok(r) if r.topic == sentinel => return before,
                Ok(r) => before.push(r),
                Err(e) => {
                    panic!("no PUBLISH on the sentinel {sentinel} ({e:?}); before it: {before:?}")
                }
            }
        }
    }

    /// Collects PUBLISH packets until nothing arrives for `quiet`.
    pub fn publishes_for(&mut self, quiet: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        loop {
            match self.next_publish(quiet) {
                Ok(r) => got.push(r),
                Err(ReadError::Timeout) => return got,
                Err(e) => panic!("connection failed while collecting PUBLISH packets: {e:?}"),
            }
        }
    }

    /// The next PUBLISH, acknowledged at once (PUBACK, or PUBREC then PUBCOMP when the hub's
    /// PUBREL comes, whenever that is); other packet types fail the test.
    pub fn next_publish(&mut self, timeout: Duration) -> Result<Received, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.read_packet(deadline.saturating_duration_since(Instant::now()))?;
            match p.kind() {
                kind::PUBLISH => {
                    let r = frames::parse_publish(p.first_byte, &p.body, self.v5)
                        .unwrap_or_else(|| panic!("malformed PUBLISH {:02x?}", p.body));
                    match r.qos {
                        1 => self.send_ok(&frames::ack(kind::PUBACK, r.packet_id)),
                        2 => self.send_ok(&frames::ack(kind::PUBREC, r.packet_id)),
                        _ => {}
                    }
                    return Ok(r);
                }
                kind::PUBREL => {
                    let id = u16::from_be_bytes([p.body[0], p.body[1]]);
                    self.send_ok(&frames::ack(kind::PUBCOMP, id));
                }
                _ => panic!(
                    "expected a PUBLISH, got type {} body {:02x?}",
                    p.kind(),
                    p.body
                ),
            }
        }
    }
}

/// After bad input on one connection, the hub must keep serving everyone else: a fresh
/// 3.1.1 client subscribes, publishes at QoS 1 and receives its own message.
pub fn assert_serving(addr: SocketAddr) {
    let id = crate::unique("alive");
    let topic = format!("{id}/alive");
    let (mut sub, _) = RawClient::connected(addr, &Connect::v4(&id, true));
    assert_eq!(
        sub.subscribe(1, &[(&topic, 1)]),
        vec![1],
        "SUBACK of the liveness check"
    );
    let (mut publisher, _) =
        RawClient::connected(addr, &Connect::v4(&crate::unique("alive"), true));
    publisher.publish(&frames::Publish::v4(&topic, b"still serving").qos(1, 2));
    let r = sub.expect_publish_acked();
    assert_eq!(
        (r.topic.as_str(), r.payload.as_slice()),
        (topic.as_str(), &b"still serving"[..])
    );
}
