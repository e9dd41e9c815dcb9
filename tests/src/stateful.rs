//! An MQTT client that keeps its own session state across connections, the way MQTT asks of a
//! client whose session outlives its network connection (3.1.1 §4.4, 5.0 §4.4), for tests that
//! break connections on purpose (a hub killed with SIGKILL and restarted, say).
//!
//! What it remembers between connections ([`Session`]):
//! - publishes it sent at QoS 1/2 and has no PUBACK / PUBREC for: re-sent with DUP=1 and the
//!   same packet id after a reconnect with Session Present [MQTT-4.4.0-1];
//! - QoS 2 publishes the hub PUBREC'd: the PUBREL is re-sent instead [MQTT-4.4.0-1];
//! - packet ids of QoS 2 publishes it received and PUBREC'd but has no PUBREL for: a PUBLISH
//!   with one of these ids is acknowledged again but *not* delivered a second time (method B of
//!   5.0 §4.3.3, "Store Packet Identifier ... then initiate onward delivery").
//!
//! Every completed acknowledgement flow of its own publishes ([`StatefulClient::completed`]) and
//! every message it delivered ([`StatefulClient::delivered`]) is recorded, so a test can compare
//! what the hub promised (PUBACK, PUBCOMP) with what subscribers got. Connection failures are
//! values ([`Closed`]), not panics: the test decides whether they were expected.

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::frames::{self, Connack, Connect, kind};

/// How long a connect, a write or a wait for CONNACK/SUBACK may take before the connection is
/// given up as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ended (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The TCP connection could not be opened, or the CONNACK did not come.
    Connect(String),
    /// The peer closed or reset the connection, or a write failed.
    Lost(String),
    /// The hub sent DISCONNECT with this reason code (0 for a 3.1.1 DISCONNECT).
    Disconnect(u8),
    /// The hub answered with bytes this client cannot accept (a test failure).
    Protocol(String),
}

/// One of our publishes, not yet completed.
#[derive(Debug, Clone)]
struct Outgoing {
    /// The order it was first sent in: re-sends keep it [MQTT-4.6.0-1].
    order: u64,
    publish: frames::Publish,
    /// QoS 2 only: the hub sent PUBREC and we sent PUBREL.
    released: bool,
}

/// One message handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    /// Which connection of this client it arrived on (1 for the first).
    pub connection: u32,
    pub payload: Vec<u8>,
}

/// One of our publishes whose flow completed (PUBACK for QoS 1, PUBCOMP for QoS 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub qos: u8,
    pub payload: Vec<u8>,
    /// The reason code of the PUBACK or PUBREC (MQTT 5; 0 for 3.1.1): 0x80 and above is a
    /// refusal, and the message was not accepted.
    pub reason: u8,
}

/// The client side of the session: what survives a broken connection.
#[derive(Debug, Default)]
struct Session {
    next_order: u64,
    last_id: u16,
    outgoing: BTreeMap<u16, Outgoing>,
    /// QoS 2 packet ids received and PUBREC'd, waiting for their PUBREL.
    held: HashSet<u16>,
}

impl Session {
    fn free_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&self.last_id) {
                return Some(self.last_id);
            }
        }
        None
    }
}

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A client with a persistent session, driven by the test's own loop: [`Self::publish`] sends,
/// [`Self::pump`] reads and answers whatever arrived.
pub struct StatefulClient {
    connect: Connect,
    v5: bool,
    session: Session,
    conn: Option<Connection>,
    /// Publishes whose flow completed, in completion order.
    pub completed: Vec<Completed>,
    /// Messages delivered to the application, in arrival order.
    pub delivered: Vec<Delivery>,
    /// QoS 2 PUBLISH packets that arrived for an id we still held: acknowledged, not delivered.
    pub suppressed_duplicates: u64,
    /// Publishes dropped unfinished because a CONNACK had no Session Present.
    pub abandoned: usize,
    /// Connections opened so far.
    connections: u32,
}

impl StatefulClient {
    /// A client that will connect with this CONNECT (which should keep the session: clean
    /// session 0, or clean start 0 with a Session Expiry Interval). Nothing is opened yet.
    pub fn new(connect: Connect) -> StatefulClient {
        StatefulClient {
            v5: connect.level >= 5,
            connect,
            session: Session::default(),
            conn: None,
            completed: Vec::new(),
            delivered: Vec::new(),
            suppressed_duplicates: 0,
            abandoned: 0,
            connections: 0,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.connect.client_id
    }

    /// Publishes not completed yet (sent, or waiting for PUBCOMP).
    pub fn inflight(&self) -> usize {
        self.session.outgoing.len()
    }

    /// QoS 2 packet ids received and not yet released by a PUBREL.
    pub fn held(&self) -> usize {
        self.session.held.len()
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Opens a connection and sends CONNECT. With Session Present, re-sends what the session
    /// holds, in the original order: PUBLISH with DUP=1 for what has no PUBACK/PUBREC, PUBREL
    /// for what has PUBREC. Returns the CONNACK (a refusal is `Closed::Connect`). Without
    /// Session Present the client discards its session state [MQTT-3.2.2-5] (5.0): the
    /// publishes it held are counted in [`Self::abandoned`], and the verdict is the caller's.
    pub fn connect(&mut self, addr: SocketAddr) -> Result<Connack, Closed> {
        self.conn = None;
        self.connections += 1;
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| Closed::Connect(format!("{addr}: {e}")))?;
        stream.set_nodelay(true).ok();
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
        self.conn = Some(Connection {
            stream,
            buf: Vec::new(),
        });
        let connect = self.connect.encode();
        self.write(&connect)
            .map_err(|e| Closed::Connect(format!("{e:?}")))?;
        let deadline = Instant::now() + IO_TIMEOUT;
        let p = match self.read_packet(deadline) {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.conn = None;
                return Err(Closed::Connect("no CONNACK".into()));
            }
            Err(e) => {
                self.conn = None;
                return Err(Closed::Connect(format!("waiting for CONNACK: {e:?}")));
            }
        };
        let ack = (p.0 >> 4 == kind::CONNACK)
            .then(|| frames::parse_connack(&p.1, self.v5))
            .flatten()
            .ok_or_else(|| Closed::Protocol(format!("expected CONNACK, got {p:02x?}")))?;
        if ack.code != 0 {
            self.conn = None;
            return Err(Closed::Connect(format!(
                "CONNACK refused: {:#04x}",
                ack.code
            )));
        }
        if !ack.session_present() {
            self.abandoned += self.session.outgoing.len();
            self.session.outgoing.clear();
            self.session.held.clear();
        } else {
            let mut resend: Vec<&Outgoing> = self.session.outgoing.values().collect();
            resend.sort_by_key(|o| o.order);
            let bytes: Vec<Vec<u8>> = resend
                .into_iter()
                .map(|o| {
                    if o.released {
                        frames::ack(kind::PUBREL, o.publish.packet_id)
                    } else {
                        let mut again = o.publish.clone();
                        again.dup = true;
                        again.encode()
                    }
                })
                .collect();
            for b in bytes {
                self.write(&b)?;
            }
        }
        Ok(ack)
    }

    /// Subscribes (filter, options byte) and waits for the SUBACK, delivering whatever
    /// PUBLISH packets come first. Returns the SUBACK's reason codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Result<Vec<u8>, Closed> {
        let props: &[(u8, frames::PropValue)] = &[];
        let bytes = frames::subscribe(packet_id, filters, self.v5.then_some(props));
        self.write(&bytes)?;
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let Some(p) = self.read_packet(deadline)? else {
                return Err(Closed::Lost("no SUBACK".into()));
            };
            if p.0 >> 4 == kind::SUBACK {
                let (id, codes) = frames::parse_ack_codes(&p.1, self.v5)
                    .ok_or_else(|| Closed::Protocol(format!("malformed SUBACK {:02x?}", p.1)))?;
                if id != packet_id {
                    return Err(Closed::Protocol(format!(
                        "SUBACK for {id}, not {packet_id}"
                    )));
                }
                return Ok(codes);
            }
            self.handle(p)?;
        }
    }

    /// Sends a PUBLISH at QoS 1 or 2 under a free packet id and remembers it until its flow
    /// completes. Returns the packet id. The message belongs to the session from here on: if
    /// the write fails it is re-sent after the next connect.
    pub fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &[u8],
    ) -> Result<u16, Closed> {
        let id = self
            .session
            .free_id()
            .ok_or_else(|| Closed::Protocol("all 65535 packet ids in flight".into()))?;
        let base = if self.v5 {
            frames::Publish::v5(topic, payload)
        } else {
            frames::Publish::v4(topic, payload)
        };
        let publish = base.qos(qos, id).retain(retain);
        let bytes = publish.encode();
        let order = self.session.next_order;
        self.session.next_order += 1;
        self.session.outgoing.insert(
            id,
            Outgoing {
                order,
                publish,
                released: false,
            },
        );
        self.write(&bytes)?;
        Ok(id)
    }

    /// Reads and answers every packet that arrives within `wait`, then whatever else is
    /// already there. `Duration::ZERO` takes only what has arrived, without blocking.
    pub fn pump(&mut self, wait: Duration) -> Result<(), Closed> {
        let deadline = Instant::now() + wait;
        while let Some(p) = self.read_packet(deadline)? {
            self.handle(p)?;
        }
        Ok(())
    }

    /// After the peer died: reads whatever it sent before dying (acknowledgements it already
    /// promised) until the connection reports closed, then forgets the connection.
    pub fn drain_closed(&mut self, timeout: Duration) -> Closed {
        let deadline = Instant::now() + timeout;
        loop {
            if self.conn.is_none() {
                return Closed::Lost("not connected".into());
            }
            match self.read_packet(deadline) {
                Ok(Some(p)) => {
                    if let Err(e) = self.handle(p) {
                        self.conn = None;
                        return e;
                    }
                }
                Ok(None) if Instant::now() >= deadline => {
                    self.conn = None;
                    return Closed::Lost(format!("still open after {timeout:?}"));
                }
                Ok(None) => {}
                Err(e) => {
                    self.conn = None;
                    return e;
                }
            }
        }
    }

    /// Sends DISCONNECT (normal) and closes the socket; the session stays on both sides.
    pub fn disconnect(&mut self) {
        let bytes = frames::disconnect(self.v5.then_some(0));
        let _ = self.write(&bytes);
        self.conn = None;
    }

    fn handle(&mut self, (first, body): (u8, Vec<u8>)) -> Result<(), Closed> {
        let id_of = |body: &[u8]| -> Result<u16, Closed> {
            match body {
                [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
                _ => Err(Closed::Protocol(format!(
                    "acknowledgement without packet id: {first:#04x} {body:02x?}"
                ))),
            }
        };
        // MQTT 5 acks may carry a reason code after the id; 3.1.1 acks never do.
        let reason = |body: &[u8]| body.get(2).copied().unwrap_or(0);
        match first >> 4 {
            kind::PUBLISH => {
                let r = frames::parse_publish(first, &body, self.v5)
                    .ok_or_else(|| Closed::Protocol(format!("malformed PUBLISH {body:02x?}")))?;
                let delivery = Delivery {
                    topic: r.topic.clone(),
                    qos: r.qos,
                    retain: r.retain,
                    dup: r.dup,
                    packet_id: r.packet_id,
                    connection: self.connections,
                    payload: r.payload,
                };
                match r.qos {
                    0 => self.delivered.push(delivery),
                    1 => {
                        self.delivered.push(delivery);
                        self.write(&frames::ack(kind::PUBACK, r.packet_id))?;
                    }
                    2 => {
                        if self.session.held.insert(r.packet_id) {
                            self.delivered.push(delivery);
                        } else {
                            self.suppressed_duplicates += 1;
                        }
                        self.write(&frames::ack(kind::PUBREC, r.packet_id))?;
                    }
                    q => return Err(Closed::Protocol(format!("PUBLISH with QoS {q}"))),
                }
            }
            kind::PUBREL => {
                let id = id_of(&body)?;
                self.session.held.remove(&id);
                self.write(&frames::ack(kind::PUBCOMP, id))?;
            }
            kind::PUBACK => {
                let id = id_of(&body)?;
                match self.session.outgoing.get(&id) {
                    Some(o) if o.publish.qos == 1 => {
                        if let Some(o) = self.session.outgoing.remove(&id) {
                            self.completed.push(Completed {
                                qos: 1,
                                payload: o.publish.payload,
                                reason: reason(&body),
                            });
                        }
                    }
                    other => {
                        return Err(Closed::Protocol(format!(
                            "PUBACK {id} for {:?}",
                            other.map(|o| o.publish.qos)
                        )));
                    }
                }
            }
            kind::PUBREC => {
                let id = id_of(&body)?;
                let code = reason(&body);
                match self.session.outgoing.get_mut(&id) {
                    Some(o) if o.publish.qos == 2 && code >= 0x80 => {
                        // Refused: the flow ends here [MQTT-4.3.3-9].
                        let payload = o.publish.payload.clone();
                        self.session.outgoing.remove(&id);
                        self.completed.push(Completed {
                            qos: 2,
                            payload,
                            reason: code,
                        });
                    }
                    Some(o) if o.publish.qos == 2 => {
                        o.released = true;
                        self.write(&frames::ack(kind::PUBREL, id))?;
                    }
                    other => {
                        return Err(Closed::Protocol(format!(
                            "PUBREC {id} for {:?}",
                            other.map(|o| o.publish.qos)
                        )));
                    }
                }
            }
            kind::PUBCOMP => {
                let id = id_of(&body)?;
                match self.session.outgoing.get(&id) {
                    Some(o) if o.publish.qos == 2 && o.released => {
                        if let Some(o) = self.session.outgoing.remove(&id) {
                            self.completed.push(Completed {
                                qos: 2,
                                payload: o.publish.payload,
                                reason: 0,
                            });
                        }
                    }
                    other => {
                        return Err(Closed::Protocol(format!(
                            "PUBCOMP {id} for {:?}",
                            other.map(|o| (o.publish.qos, o.released))
                        )));
                    }
                }
            }
            kind::PINGRESP => {}
            kind::DISCONNECT => {
                self.conn = None;
                return Err(Closed::Disconnect(if self.v5 {
                    frames::disconnect_reason(&body)
                } else {
                    0
                }));
            }
            other => {
                return Err(Closed::Protocol(format!(
                    "unexpected packet type {other}: {body:02x?}"
                )));
            }
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Closed::Lost("not connected".into()));
        };
        if let Err(e) = conn.stream.write_all(bytes) {
            self.conn = None;
            return Err(Closed::Lost(format!("write: {e}")));
        }
        Ok(())
    }

    /// The next whole packet (first byte, body), waiting until `deadline`; `Ok(None)` when
    /// none arrived in time.
    fn read_packet(&mut self, deadline: Instant) -> Result<Option<(u8, Vec<u8>)>, Closed> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(Closed::Lost("not connected".into()));
            };
            if conn.buf.len() >= 2 {
                match frames::get_vbi(&conn.buf[1..]) {
                    Some((len, n)) => {
                        let total = 1 + n + len as usize;
                        if conn.buf.len() >= total {
                            let packet = (conn.buf[0], conn.buf[1 + n..total].to_vec());
                            conn.buf.drain(..total);
                            return Ok(Some(packet));
                        }
                    }
                    None if conn.buf.len() >= 5 => {
                        self.conn = None;
                        return Err(Closed::Protocol("remaining length over 4 bytes".into()));
                    }
                    None => {}
                }
            }
            // A deadline already passed means "only what is there now": a non-blocking read
            // (a read timeout cannot be zero, and the kernel rounds small ones up to a tick).
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                conn.stream.set_nonblocking(true).ok();
            } else {
                conn.stream.set_nonblocking(false).ok();
                conn.stream.set_read_timeout(Some(left)).ok();
            }
            let mut chunk = [0u8; 65536];
            let read = conn.stream.read(&mut chunk);
            conn.stream.set_nonblocking(false).ok();
            match read {
                Ok(0) => {
                    self.conn = None;
                    return Err(Closed::Lost("connection closed".into()));
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.conn = None;
                    return Err(Closed::Lost(format!("read: {e}")));
                }
            }
        }
    }
}

/// A small seeded generator (xorshift64*), so a run's random choices can be replayed from the
/// seed it prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// `$IOTHUB_TEST_SEED` when set (to replay a failure), else a seed from the clock. The
    /// caller prints it.
    pub fn seed_from_env_or_clock() -> u64 {
        std::env::var("IOTHUB_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_replays_from_its_seed_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            let (x, y) = (a.range(100, 700), b.range(100, 700));
            assert_eq!(x, y);
            assert!((100..700).contains(&x), "{x}");
        }
        assert_eq!(Rng::new(0).range(5, 5), 5);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_zero() {
        let mut s = Session {
            last_id: u16::MAX - 1,
            ..Session::default()
        };
        let placeholder = Outgoing {
            order: 0,
            publish: frames::Publish::v4("t", b""),
            released: false,
        };
        s.outgoing.insert(1, placeholder);
        assert_eq!(s.free_id(), Some(u16::MAX));
        assert_eq!(s.free_id(), Some(2), "0 is never an id, 1 is in flight");
    }
}
