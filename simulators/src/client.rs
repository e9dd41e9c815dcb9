//! A small async MQTT client for simulators and load generation.
//!
//! One [`Client`] owns one connection and does all of its I/O on the caller's task: there is no
//! background task and no channel per message, because the load generator runs thousands of
//! clients on two cores and every hop would show in its figures. Outgoing packets are encoded
//! into one write buffer and sent by a single `write` when the caller next waits
//! ([`Client::next_event`]), so a burst of publishes or acknowledgements costs one syscall.
//!
//! The protocol state a client must keep is here and nowhere else: packet ids in flight and
//! the window that bounds them, the QoS 2 handshakes in both directions (PUBREC → PUBREL →
//! PUBCOMP out, PUBREC / PUBCOMP back for QoS 2 deliveries, with a QoS 2 redelivery reported
//! only once), PUBACK for QoS 1 deliveries, and PINGREQ when the connection has been quiet for
//! half the keep-alive. Not here (not needed yet): reconnection and session resumption, topic
//! aliases, AUTH exchanges, PINGRESP timeouts.
//!
//! The client is generic over the byte stream so it can be tested against an in-memory peer;
//! [`Client::connect_tcp`] is the usual way in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use iothub_model::{ClientId, TopicFilter, TopicName};
use iothub_mqtt_codec::{
    AckProperties, ConnAck, Connect, ConnectProperties, DecodeError, Disconnect, EncodeError,
    Packet, PacketType, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, decode, encode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// Bytes reserved in the read buffer before each read: big enough that one read usually picks
/// up everything the broker has sent since the last one.
const READ_CHUNK: usize = 64 * 1024;
/// Packet ids cycle through 1..=65535; a window this large could not find a free id.
const MAX_WINDOW: u16 = 65_000;

/// Why a client operation failed. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("cannot bind the local address {addr}: {source}")]
    Bind { addr: IpAddr, source: io::Error },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("the broker closed the connection")]
    Closed,
    #[error("no CONNACK within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the broker refused the connection: reason code {:#04x}", .0.0)]
    Refused(ReasonCode),
    #[error("malformed packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("the broker disconnected the client: reason code {:#04x}{}", reason.0,
        reason_string.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Disconnected {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    #[error("unexpected {0} packet from the broker")]
    Unexpected(PacketType),
    #[error("{packet} for packet id {id}, which is not in flight")]
    UnknownPacketId { packet: PacketType, id: u16 },
    #[error("QoS {0:?} PUBLISH from the broker has no packet id")]
    MissingPacketId(QoS),
    #[error("the broker refused the subscription to {filter}: reason code {reason:#04x}")]
    SubscribeRefused { filter: String, reason: u8 },
    #[error("the inflight window is full")]
    WindowFull,
}

/// How to connect. `Default` gives an MQTT 5 client with clean start, a 60 s keep-alive and
/// a 64-message window; only the client id has to be set.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub client_id: ClientId,
    pub version: ProtocolVersion,
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval in seconds (`None`: 0, the session ends with the
    /// connection). With `clean_start: false` it makes the session persistent; MQTT 3.1.1 has
    /// no such property, and `clean_start: false` alone keeps the session there.
    pub session_expiry: Option<u32>,
    /// Seconds; 0 turns keep-alive (and our PINGREQs) off.
    pub keep_alive: u16,
    /// Outgoing QoS 1/2 publishes allowed unacknowledged at once. The broker's Receive Maximum
    /// (MQTT 5 CONNACK) lowers it further.
    pub inflight: u16,
    /// Largest packet we accept; announced as Maximum Packet Size in MQTT 5 when set.
    pub max_packet_size: Option<u32>,
    /// Source address to connect from (port chosen by the system): lets a load test spread
    /// connections over 127.0.0.x so it does not run out of ephemeral ports.
    pub local_addr: Option<IpAddr>,
    /// Time allowed for the TCP connect and for the CONNACK, each.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Options with the defaults described on the type.
    #[must_use]
    pub fn new(client_id: ClientId) -> Self {
        Self {
            client_id,
            version: ProtocolVersion::V5,
            clean_start: true,
            session_expiry: None,
            keep_alive: 60,
            inflight: 64,
            max_packet_size: None,
            local_addr: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`Client::next_event`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An application message; already acknowledged (or its QoS 2 handshake started) in the
    /// write buffer. A QoS 2 message redelivered before its PUBREL is not reported again.
    Message(Publish),
    /// One of our QoS 1/2 publishes completed (PUBACK, PUBCOMP, or an MQTT 5 PUBREC with an
    /// error code, which also ends the flow): its window slot is free again.
    Acked { packet_id: u16, reason: ReasonCode },
    /// A SUBACK; [`Client::subscribe`] consumes its own, so callers only see one for a
    /// SUBSCRIBE they queued themselves.
    SubAck(SubAck),
    /// The write buffer was non-empty and has now been handed to the transport in full: a
    /// publisher uses this to refill it.
    Drained,
}

/// A PUBLISH kept by the caller and reused for every message on one topic, so the hot path
/// neither clones the topic string nor allocates a packet per message.
#[derive(Debug, Clone)]
pub struct Outgoing {
    publish: Publish,
}

impl Outgoing {
    /// A template for messages to `topic`.
    #[must_use]
    pub fn new(topic: &TopicName, qos: QoS, retain: bool) -> Self {
        Self {
            publish: Publish {
                qos,
                retain,
                topic: topic.as_str().to_owned(),
                ..Publish::default()
            },
        }
    }

    /// The QoS every message from this template is sent with.
    #[must_use]
    pub fn qos(&self) -> QoS {
        self.publish.qos
    }
}

/// Where an outgoing packet id is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    PubAck,
    PubRec,
    PubComp,
    SubAck,
}

/// Why the I/O step returned.
enum Io {
    Read,
    Drained,
    PingDue,
}

/// One MQTT connection over any byte stream (`TcpStream` by default).
pub struct Client<S = TcpStream> {
    io: S,
    version: ProtocolVersion,
    read: BytesMut,
    write: BytesMut,
    /// The write buffer has been written but not yet flushed.
    needs_flush: bool,
    max_incoming: u32,
    window: usize,
    publishes_in_flight: usize,
    last_id: u16,
    outgoing: HashMap<u16, Pending>,
    /// QoS 2 deliveries we sent PUBREC for and whose PUBREL has not come yet.
    incoming_qos2: HashSet<u16>,
    /// Events seen while [`Client::subscribe`] waited for its SUBACK.
    queued: VecDeque<Event>,
    keep_alive: Option<Duration>,
    ping_timer: Pin<Box<Sleep>>,
    last_write: Instant,
    connack: ConnAck,
}

impl Client<TcpStream> {
    /// Opens a TCP connection (from `options.local_addr` if set, with Nagle off) and performs
    /// the CONNECT / CONNACK exchange.
    pub async fn connect_tcp(
        broker: SocketAddr,
        options: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let socket = if broker.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| ClientError::Connect {
            addr: broker,
            source,
        })?;
        if let Some(local) = options.local_addr {
            socket
                .bind(SocketAddr::new(local, 0))
                .map_err(|source| ClientError::Bind {
                    addr: local,
                    source,
                })?;
        }
        let stream = tokio::time::timeout(options.connect_timeout, socket.connect(broker))
            .await
            .map_err(|_| ClientError::Connect {
                addr: broker,
                source: io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| ClientError::Connect {
                addr: broker,
                source,
            })?;
        stream.set_nodelay(true)?;
        Self::handshake(stream, options).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Sends CONNECT over an already open stream and waits for the CONNACK.
    pub async fn handshake(io: S, options: &ClientOptions) -> Result<Self, ClientError> {
        let keep_alive =
            (options.keep_alive > 0).then(|| Duration::from_secs(u64::from(options.keep_alive)));
        let now = Instant::now();
        let mut client = Self {
            io,
            version: options.version,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::with_capacity(READ_CHUNK),
            needs_flush: false,
            max_incoming: options.max_packet_size.unwrap_or(u32::MAX),
            window: usize::from(options.inflight.clamp(1, MAX_WINDOW)),
            publishes_in_flight: 0,
            last_id: 0,
            outgoing: HashMap::new(),
            incoming_qos2: HashSet::new(),
            queued: VecDeque::new(),
            keep_alive,
            ping_timer: Box::pin(tokio::time::sleep_until(now + ping_interval(keep_alive))),
            last_write: now,
            connack: ConnAck::default(),
        };
        let connect = Connect {
            protocol: options.version,
            clean_start: options.clean_start,
            keep_alive: options.keep_alive,
            client_id: options.client_id.as_str().to_owned(),
            properties: ConnectProperties {
                maximum_packet_size: options.max_packet_size,
                session_expiry_interval: options.session_expiry,
                ..ConnectProperties::default()
            },
            ..Connect::default()
        };
        client.queue(&Packet::Connect(Box::new(connect)))?;
        let connack = tokio::time::timeout(options.connect_timeout, client.read_connack())
            .await
            .map_err(|_| ClientError::ConnectTimeout(options.connect_timeout))??;
        if connack.reason_code.is_error() {
            return Err(ClientError::Refused(connack.reason_code));
        }
        if let Some(receive_maximum) = connack.properties.receive_maximum {
            client.window = client.window.min(usize::from(receive_maximum.max(1)));
        }
        client.connack = connack;
        Ok(client)
    }

    /// The broker's CONNACK: its limits (Receive Maximum, Maximum QoS, Maximum Packet Size…).
    #[must_use]
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    /// The protocol version this connection speaks.
    #[must_use]
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether a QoS 1/2 publish may be sent now without exceeding the window (QoS 0 publishes
    /// are never held back by it).
    #[must_use]
    pub fn can_publish(&self) -> bool {
        self.publishes_in_flight < self.window
    }

    /// QoS 1/2 publishes sent and not yet completed.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.publishes_in_flight
    }

    /// The effective window: our `inflight` option, lowered to the broker's Receive Maximum.
    #[must_use]
    pub fn window(&self) -> usize {
        self.window
    }

    /// Bytes encoded but not yet handed to the transport.
    #[must_use]
    pub fn pending_write(&self) -> usize {
        self.write.len()
    }

    /// Encodes one PUBLISH from `template` carrying `payload` into the write buffer and returns
    /// its packet id (`None` for QoS 0). Nothing is sent until the next wait.
    pub fn publish(
        &mut self,
        template: &mut Outgoing,
        payload: Bytes,
    ) -> Result<Option<u16>, ClientError> {
        let packet_id = match template.publish.qos {
            QoS::AtMostOnce => None,
            qos => {
                if !self.can_publish() {
                    return Err(ClientError::WindowFull);
                }
                let pending = if qos == QoS::AtLeastOnce {
                    Pending::PubAck
                } else {
                    Pending::PubRec
                };
                Some(self.allocate_id(pending))
            }
        };
        template.publish.packet_id = packet_id;
        template.publish.payload = payload;
        let packet = Packet::Publish(std::mem::take(&mut template.publish));
        let result = self.queue(&packet);
        if let Packet::Publish(mut publish) = packet {
            // Hand the payload back so the caller's buffer can be reused for the next one.
            publish.payload = Bytes::new();
            template.publish = publish;
        }
        match (result, packet_id) {
            (Err(e), Some(id)) => {
                self.outgoing.remove(&id);
                self.publishes_in_flight -= 1;
                Err(e)
            }
            (Err(e), None) => Err(e),
            (Ok(()), id) => Ok(id),
        }
    }

    /// Subscribes to `filters` at `qos` and waits for the SUBACK; fails if any filter is
    /// refused. Messages that arrive meanwhile are kept for [`Client::next_event`].
    pub async fn subscribe(
        &mut self,
        filters: &[TopicFilter],
        qos: QoS,
    ) -> Result<(), ClientError> {
        let packet_id = self.allocate_id(Pending::SubAck);
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let subscribe = Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|f| (f.as_str().to_owned(), options))
                .collect(),
            properties: SubscribeProperties::default(),
        };
        self.queue(&Packet::Subscribe(subscribe))?;
        loop {
            match self.next_wire_event().await? {
                Event::SubAck(ack) if ack.packet_id == packet_id => {
                    return match filters
                        .iter()
                        .zip(&ack.reason_codes)
                        .find(|(_, r)| r.is_error())
                    {
                        Some((filter, reason)) => Err(ClientError::SubscribeRefused {
                            filter: filter.to_string(),
                            reason: reason.0,
                        }),
                        None => Ok(()),
                    };
                }
                Event::Drained => {}
                other => self.queued.push_back(other),
            }
        }
    }

    /// Waits for the next thing the caller must know about, writing whatever is buffered
    /// meanwhile. Cancel-safe: it can be a branch of `tokio::select!`, since protocol state
    /// only changes between awaits.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(event);
        }
        self.next_wire_event().await
    }

    /// Writes everything buffered (reading, but not decoding, what arrives meanwhile).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        while !self.write.is_empty() || self.needs_flush {
            match poll_fn(|cx| self.poll_io(cx)).await? {
                Io::Read | Io::Drained => {}
                Io::PingDue => self.queue(&Packet::PingReq)?,
            }
        }
        Ok(())
    }

    /// Sends DISCONNECT (normal disconnection), flushes and closes our side of the stream.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.queue(&Packet::Disconnect(Disconnect::default()))?;
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    fn allocate_id(&mut self, pending: Pending) -> u16 {
        loop {
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.outgoing.entry(self.last_id)
            {
                slot.insert(pending);
                if pending != Pending::SubAck {
                    self.publishes_in_flight += 1;
                }
                return self.last_id;
            }
        }
    }

    fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        encode(packet, self.version, &mut self.write)?;
        Ok(())
    }

    fn queue_response(&mut self, kind: PacketType, packet_id: u16, reason_code: ReasonCode) {
        let response = PubResponse {
            packet_id,
            reason_code,
            properties: AckProperties::default(),
        };
        let packet = match kind {
            PacketType::PubAck => Packet::PubAck(response),
            PacketType::PubRec => Packet::PubRec(response),
            PacketType::PubRel => Packet::PubRel(response),
            _ => Packet::PubComp(response),
        };
        // A response without properties is 4 to 6 bytes: it cannot exceed a wire limit.
        if let Err(error) = self.queue(&packet) {
            tracing::error!(%error, "cannot encode a publish response");
        }
    }

    async fn read_connack(&mut self) -> Result<ConnAck, ClientError> {
        loop {
            if let Some(packet) = decode(&mut self.read, Some(self.version), self.max_incoming)? {
                return match packet {
                    Packet::ConnAck(connack) => Ok(connack),
                    Packet::Disconnect(d) => Err(disconnected(d)),
                    other => Err(ClientError::Unexpected(other.packet_type())),
                };
            }
            poll_fn(|cx| self.poll_io(cx)).await?;
        }
    }

    async fn next_wire_event(&mut self) -> Result<Event, ClientError> {
        loop {
            while let Some(packet) = decode(&mut self.read, Some(self.version), self.max_incoming)?
            {
                if let Some(event) = self.handle(packet)? {
                    return Ok(event);
                }
            }
            match poll_fn(|cx| self.poll_io(cx)).await? {
                Io::Read => {}
                Io::Drained => return Ok(Event::Drained),
                Io::PingDue => self.queue(&Packet::PingReq)?,
            }
        }
    }

    /// Applies one packet from the broker to the protocol state; returns what the caller must
    /// see, if anything.
    fn handle(&mut self, packet: Packet) -> Result<Option<Event>, ClientError> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish),
            Packet::PubAck(ack) => {
                self.finish(PacketType::PubAck, ack.packet_id, Pending::PubAck)?;
                Ok(Some(Event::Acked {
                    packet_id: ack.packet_id,
                    reason: ack.reason_code,
                }))
            }
            Packet::PubRec(rec) => {
                if rec.reason_code.is_error() {
                    // MQTT 5: an error PUBREC ends the flow; no PUBREL follows [MQTT-4.3.3-4].
                    self.finish(PacketType::PubRec, rec.packet_id, Pending::PubRec)?;
                    return Ok(Some(Event::Acked {
                        packet_id: rec.packet_id,
                        reason: rec.reason_code,
                    }));
                }
                match self.outgoing.get_mut(&rec.packet_id) {
                    Some(state @ (Pending::PubRec | Pending::PubComp)) => *state = Pending::PubComp,
                    _ => {
                        return Err(ClientError::UnknownPacketId {
                            packet: PacketType::PubRec,
                            id: rec.packet_id,
                        });
                    }
                }
                self.queue_response(PacketType::PubRel, rec.packet_id, ReasonCode::SUCCESS);
                Ok(None)
            }
            Packet::PubComp(comp) => {
                self.finish(PacketType::PubComp, comp.packet_id, Pending::PubComp)?;
                Ok(Some(Event::Acked {
                    packet_id: comp.packet_id,
                    reason: comp.reason_code,
                }))
            }
            Packet::PubRel(rel) => {
                let reason = if self.incoming_qos2.remove(&rel.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.queue_response(PacketType::PubComp, rel.packet_id, reason);
                Ok(None)
            }
            Packet::SubAck(ack) => {
                match self.outgoing.get(&ack.packet_id) {
                    Some(Pending::SubAck) => {
                        self.outgoing.remove(&ack.packet_id);
                    }
                    _ => {
                        return Err(ClientError::UnknownPacketId {
                            packet: PacketType::SubAck,
                            id: ack.packet_id,
                        });
                    }
                }
                Ok(Some(Event::SubAck(ack)))
            }
            Packet::PingResp => Ok(None),
            Packet::Disconnect(d) => Err(disconnected(d)),
            other => Err(ClientError::Unexpected(other.packet_type())),
        }
    }

    fn handle_publish(&mut self, publish: Publish) -> Result<Option<Event>, ClientError> {
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => Ok(Some(Event::Message(publish))),
            (QoS::AtLeastOnce, Some(id)) => {
                self.queue_response(PacketType::PubAck, id, ReasonCode::SUCCESS);
                Ok(Some(Event::Message(publish)))
            }
            (QoS::ExactlyOnce, Some(id)) => {
                self.queue_response(PacketType::PubRec, id, ReasonCode::SUCCESS);
                // Delivered on first receipt; a resend before PUBREL is the same message.
                Ok(self
                    .incoming_qos2
                    .insert(id)
                    .then_some(Event::Message(publish)))
            }
            (qos, None) => Err(ClientError::MissingPacketId(qos)),
        }
    }

    /// Ends the flow of `id`, which must be waiting for `expected`.
    fn finish(
        &mut self,
        packet: PacketType,
        id: u16,
        expected: Pending,
    ) -> Result<(), ClientError> {
        match self.outgoing.get(&id) {
            Some(state) if *state == expected => {
                self.outgoing.remove(&id);
                self.publishes_in_flight -= 1;
                Ok(())
            }
            _ => Err(ClientError::UnknownPacketId { packet, id }),
        }
    }

    /// One step of I/O: writes what is buffered and reads what arrived, whichever can make
    /// progress, and notices when a PINGREQ is due.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<Io, ClientError>> {
        while !self.write.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.write) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ClientError::Closed)),
                Poll::Ready(Ok(n)) => {
                    self.write.advance(n);
                    self.needs_flush = true;
                    self.last_write = Instant::now();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        if self.write.is_empty() && self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.needs_flush = false;
                    return Poll::Ready(Ok(Io::Drained));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
        }

        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(ClientError::Closed)),
            Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Io::Read)),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => {}
        }

        if self.keep_alive.is_some() {
            let interval = ping_interval(self.keep_alive);
            while self.ping_timer.as_mut().poll(cx).is_ready() {
                let due = self.last_write + interval;
                let now = Instant::now();
                if due <= now {
                    // Re-armed now so the PINGREQ is not asked for twice before it is written.
                    self.ping_timer.as_mut().reset(now + interval);
                    return Poll::Ready(Ok(Io::PingDue));
                }
                self.ping_timer.as_mut().reset(due);
            }
        }
        Poll::Pending
    }
}

/// Quiet time after which a PINGREQ is sent: half the keep-alive, so it arrives well inside
/// the broker's 1.5 × keep-alive limit.
fn ping_interval(keep_alive: Option<Duration>) -> Duration {
    keep_alive.map_or(Duration::from_secs(3600), |k| k / 2)
}

fn disconnected(d: Disconnect) -> ClientError {
    ClientError::Disconnected {
        reason: d.reason_code,
        reason_string: d.properties.reason_string,
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted broker on an in-memory stream: each case feeds broker
    //! packets and checks what the client answers and reports.

    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn options(version: ProtocolVersion, inflight: u16) -> ClientOptions {
        let mut o = ClientOptions::new(ClientId::new("c1").unwrap());
        o.version = version;
        o.inflight = inflight;
        o.keep_alive = 0;
        o
    }

    /// The broker side: decodes what the client wrote, encodes what the script sends.
    struct Broker {
        io: DuplexStream,
        buf: BytesMut,
        version: ProtocolVersion,
    }

    impl Broker {
        async fn recv(&mut self) -> Packet {
            loop {
                if let Some(p) = decode(&mut self.buf, Some(self.version), u32::MAX).unwrap() {
                    return p;
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "client closed the stream");
            }
        }

        async fn send(&mut self, packet: Packet) {
            let mut out = BytesMut::new();
            encode(&packet, self.version, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }
    }

    /// A connected client and its broker; the broker answers CONNACK with `connack`.
    async fn pair(
        version: ProtocolVersion,
        inflight: u16,
        connack: ConnAck,
    ) -> (Client<DuplexStream>, Broker) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut broker = Broker {
            io: b,
            buf: BytesMut::new(),
            version,
        };
        let opts = options(version, inflight);
        let (client, connect) = tokio::join!(Client::handshake(a, &opts), async {
            let first = {
                loop {
                    if let Some(p) = decode(&mut broker.buf, None, u32::MAX).unwrap() {
                        break p;
                    }
                    broker.io.read_buf(&mut broker.buf).await.unwrap();
                }
            };
            broker.send(Packet::ConnAck(connack)).await;
            first
        });
        let Packet::Connect(connect) = connect else {
            panic!("first packet is not CONNECT: {connect:?}")
        };
        assert_eq!(connect.protocol, version);
        assert_eq!(connect.client_id, "c1");
        (client.unwrap(), broker)
    }

    fn response(packet_id: u16) -> PubResponse {
        PubResponse {
            packet_id,
            ..PubResponse::default()
        }
    }

    fn incoming(qos: QoS, packet_id: Option<u16>) -> Packet {
        Packet::Publish(Publish {
            qos,
            packet_id,
            topic: "t".into(),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        })
    }

    #[tokio::test]
    async fn outgoing_flows_complete_and_free_the_window() {
        // (version, qos, broker's answers after the PUBLISH, what the client must send back)
        let cases: [(ProtocolVersion, QoS, Vec<Packet>, Vec<Packet>); 4] = [
            (
                ProtocolVersion::V5,
                QoS::AtLeastOnce,
                vec![Packet::PubAck(response(1))],
                vec![],
            ),
            (
                ProtocolVersion::V311,
                QoS::AtLeastOnce,
                vec![Packet::PubAck(response(1))],
                vec![],
            ),
            (
                ProtocolVersion::V5,
                QoS::ExactlyOnce,
                vec![Packet::PubRec(response(1)), Packet::PubComp(response(1))],
                vec![Packet::PubRel(response(1))],
            ),
            (
                ProtocolVersion::V311,
                QoS::ExactlyOnce,
                vec![Packet::PubRec(response(1)), Packet::PubComp(response(1))],
                vec![Packet::PubRel(response(1))],
            ),
        ];
        for (version, qos, answers, expected_back) in cases {
            let (mut client, mut broker) = pair(version, 1, ConnAck::default()).await;
            let topic = TopicName::new("a/b").unwrap();
            let mut template = Outgoing::new(&topic, qos, false);
            let id = client
                .publish(&mut template, Bytes::from_static(b"x"))
                .unwrap();
            assert_eq!(id, Some(1));
            assert!(!client.can_publish(), "window of 1 is full");
            assert!(
                matches!(
                    client.publish(&mut template, Bytes::new()),
                    Err(ClientError::WindowFull)
                ),
                "{version:?} {qos:?}"
            );
            client.flush().await.unwrap();
            let Packet::Publish(sent) = broker.recv().await else {
                panic!("expected PUBLISH")
            };
            assert_eq!(
                (sent.qos, sent.packet_id, &sent.topic[..]),
                (qos, Some(1), "a/b")
            );
            for answer in answers {
                broker.send(answer).await;
            }
            let event = client.next_event().await.unwrap();
            assert_eq!(
                event,
                Event::Acked {
                    packet_id: 1,
                    reason: ReasonCode::SUCCESS
                }
            );
            assert!(client.can_publish());
            assert_eq!(client.in_flight(), 0);
            client.flush().await.unwrap();
            for back in expected_back {
                assert_eq!(broker.recv().await, back, "{version:?} {qos:?}");
            }
        }
    }

    #[tokio::test]
    async fn incoming_messages_are_acknowledged_and_qos2_reported_once() {
        // (qos, packet id) of each broker PUBLISH, then a PUBREL if any, and the expected
        // client responses and number of Message events.
        struct Case {
            script: Vec<Packet>,
            responses: Vec<Packet>,
            messages: usize,
        }
        let cases = [
            Case {
                script: vec![incoming(QoS::AtMostOnce, None)],
                responses: vec![],
                messages: 1,
            },
            Case {
                script: vec![incoming(QoS::AtLeastOnce, Some(7))],
                responses: vec![Packet::PubAck(response(7))],
                messages: 1,
            },
            Case {
                // A QoS 2 redelivery before PUBREL is answered again but not reported again.
                script: vec![
                    incoming(QoS::ExactlyOnce, Some(9)),
                    incoming(QoS::ExactlyOnce, Some(9)),
                    Packet::PubRel(response(9)),
                ],
                responses: vec![
                    Packet::PubRec(response(9)),
                    Packet::PubRec(response(9)),
                    Packet::PubComp(response(9)),
                ],
                messages: 1,
            },
        ];
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for case in &cases {
                let (mut client, mut broker) = pair(version, 8, ConnAck::default()).await;
                // The broker plays the script, reads every response, then sends a QoS 0
                // message with payload "end"; the client counts messages until it sees it.
                let (messages, ()) = tokio::join!(
                    async {
                        let mut messages = 0;
                        loop {
                            match client.next_event().await.unwrap() {
                                Event::Message(p) if &p.payload[..] == b"end" => break messages,
                                Event::Message(p) => {
                                    assert_eq!(&p.payload[..], b"hello");
                                    messages += 1;
                                }
                                Event::Drained => {}
                                other => panic!("unexpected event {other:?}"),
                            }
                        }
                    },
                    async {
                        for p in &case.script {
                            broker.send(p.clone()).await;
                        }
                        for expected in &case.responses {
                            assert_eq!(&broker.recv().await, expected, "{version:?}");
                        }
                        let mut end = incoming(QoS::AtMostOnce, None);
                        if let Packet::Publish(p) = &mut end {
                            p.payload = Bytes::from_static(b"end");
                        }
                        broker.send(end).await;
                    }
                );
                assert_eq!(messages, case.messages, "{version:?} {:?}", case.script);
            }
        }
    }

    #[tokio::test]
    async fn broker_limits_and_refusals() {
        // Receive Maximum lowers the window.
        let mut connack = ConnAck::default();
        connack.properties.receive_maximum = Some(3);
        let (client, _broker) = pair(ProtocolVersion::V5, 64, connack).await;
        assert_eq!(client.window(), 3);

        // A refusing CONNACK is an error carrying its reason code.
        let (a, b) = tokio::io::duplex(1024);
        let mut broker = Broker {
            io: b,
            buf: BytesMut::new(),
            version: ProtocolVersion::V5,
        };
        let refused = ConnAck {
            reason_code: ReasonCode::NOT_AUTHORIZED,
            ..ConnAck::default()
        };
        let opts = options(ProtocolVersion::V5, 1);
        let (result, ()) = tokio::join!(
            Client::handshake(a, &opts),
            broker.send(Packet::ConnAck(refused))
        );
        assert!(matches!(
            result,
            Err(ClientError::Refused(ReasonCode::NOT_AUTHORIZED))
        ));

        // A server DISCONNECT ends the connection with its reason code.
        let (mut client, mut broker) = pair(ProtocolVersion::V5, 1, ConnAck::default()).await;
        broker
            .send(Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::QUOTA_EXCEEDED,
                ..Disconnect::default()
            }))
            .await;
        let err = client.next_event().await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Disconnected {
                    reason: ReasonCode::QUOTA_EXCEEDED,
                    ..
                }
            ),
            "{err}"
        );

        // An acknowledgement for an id that is not in flight is a protocol violation.
        let (mut client, mut broker) = pair(ProtocolVersion::V311, 1, ConnAck::default()).await;
        broker.send(Packet::PubAck(response(42))).await;
        assert!(matches!(
            client.next_event().await,
            Err(ClientError::UnknownPacketId { id: 42, .. })
        ));
    }

    #[tokio::test]
    async fn quiet_connection_sends_pingreq() {
        let (a, b) = tokio::io::duplex(1024);
        let mut broker = Broker {
            io: b,
            buf: BytesMut::new(),
            version: ProtocolVersion::V311,
        };
        let mut opts = options(ProtocolVersion::V311, 1);
        opts.keep_alive = 1;
        let (client, ()) = tokio::join!(Client::handshake(a, &opts), async {
            assert!(matches!(broker.recv().await, Packet::Connect(_)));
            broker.send(Packet::ConnAck(ConnAck::default())).await;
        });
        let mut client = client.unwrap();
        // Nothing else is sent, so the next packet the broker sees must be a PINGREQ, twice.
        for _ in 0..2 {
            let client_side = async {
                loop {
                    match client.next_event().await {
                        Ok(Event::Drained) => {}
                        other => break other,
                    }
                }
            };
            tokio::select! {
                event = client_side => panic!("unexpected event {event:?}"),
                packet = broker.recv() => assert_eq!(packet, Packet::PingReq),
            }
            broker.send(Packet::PingResp).await;
        }
    }

    #[tokio::test]
    async fn subscribe_waits_for_its_suback_and_keeps_earlier_messages() {
        let (mut client, mut broker) = pair(ProtocolVersion::V5, 1, ConnAck::default()).await;
        let filters = [TopicFilter::new("a/+").unwrap()];
        let (result, ()) = tokio::join!(client.subscribe(&filters, QoS::AtLeastOnce), async {
            let Packet::Subscribe(sub) = broker.recv().await else {
                panic!("expected SUBSCRIBE")
            };
            assert_eq!(sub.filters[0].0, "a/+");
            assert_eq!(sub.filters[0].1.qos, QoS::AtLeastOnce);
            broker.send(incoming(QoS::AtMostOnce, None)).await;
            broker
                .send(Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    reason_codes: vec![ReasonCode::GRANTED_QOS_1],
                    ..SubAck::default()
                }))
                .await;
        });
        result.unwrap();
        assert!(matches!(client.next_event().await, Ok(Event::Message(_))));

        // A refused filter fails the subscribe.
        let filters = [TopicFilter::new("b").unwrap()];
        let (result, ()) = tokio::join!(client.subscribe(&filters, QoS::AtMostOnce), async {
            let Packet::Subscribe(sub) = broker.recv().await else {
                panic!("expected SUBSCRIBE")
            };
            broker
                .send(Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    reason_codes: vec![ReasonCode::NOT_AUTHORIZED],
                    ..SubAck::default()
                }))
                .await;
        });
        assert!(matches!(
            result,
            Err(ClientError::SubscribeRefused { reason: 0x87, .. })
        ));
    }

    /// A persistent session reaches the wire: clean start 0 and, in MQTT 5, the Session
    /// Expiry Interval property; 3.1.1 has only the flag.
    #[tokio::test]
    async fn persistent_session_options_are_in_the_connect() {
        for (version, expiry) in [
            (ProtocolVersion::V5, Some(300)),
            (ProtocolVersion::V311, None),
        ] {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let mut opts = options(version, 1);
            opts.clean_start = false;
            opts.session_expiry = Some(300);
            let (client, connect) = tokio::join!(Client::handshake(a, &opts), async {
                let mut buf = BytesMut::new();
                let first = loop {
                    if let Some(p) = decode(&mut buf, None, u32::MAX).unwrap() {
                        break p;
                    }
                    b.read_buf(&mut buf).await.unwrap();
                };
                let mut out = BytesMut::new();
                encode(&Packet::ConnAck(ConnAck::default()), version, &mut out).unwrap();
                b.write_all(&out).await.unwrap();
                first
            });
            client.unwrap();
            let Packet::Connect(connect) = connect else {
                panic!("first packet is not CONNECT: {connect:?}")
            };
            assert!(!connect.clean_start, "{version:?}");
            assert_eq!(
                connect.properties.session_expiry_interval, expiry,
                "{version:?}"
            );
        }
    }
}
