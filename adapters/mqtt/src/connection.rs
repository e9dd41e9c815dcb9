//! One MQTT connection, from the first byte to the close, over any `AsyncRead + AsyncWrite`.
//!
//! The task reads and decodes packets, turns each into one call on the engine's session
//! handle, and writes what the session hands back (acknowledgements, deliveries, a server
//! DISCONNECT). Writes are batched: everything produced while handling one read, or one
//! wake-up of the session, goes out in one write.
//!
//! At CONNECT the client id, username, password and (on TLS listeners) the device the
//! client certificate names ([`PeerCertificate`], found by `tls::identify` after the
//! handshake) go to `Engine::resolve_client`, which decides the hub and the identity
//! (device or anonymous, with the listener's `anonymous_hub` as the last resort); the
//! session is then opened with `Engine::connect_as`, and every refusal is answered with its
//! CONNACK code (identity refusals: MQTT 5 0x87, MQTT 3.1.1 return code 5) and logged at
//! debug with the client id, username and reason. The keep-alive maximum comes from the
//! resolved hub's caps.
//!
//! Protocol decisions that the engine cannot make live here: the CONNECT handshake, keep-alive,
//! topic aliases, maximum packet size in both directions, and the mapping of every refusal to the
//! reason code of the client's protocol version (MQTT 5 reason codes; MQTT 3.1.1 has only
//! CONNACK return codes and SUBACK 0x80, so other refusals close the connection or, for a
//! refused PUBLISH, acknowledge and drop it [MQTT-3.3.5-2]).
//!
//! Hub events ([`crate::events`]): a packet that does not decode, a protocol error, a
//! refused PUBLISH, SUBSCRIBE, will or CONNECT, and what the shared plan does not offer
//! raise an event on the client's hub (about its device, or the hub for an anonymous
//! client) with the offending packet; before the CONNECT names a hub they are only counted.
//!
//! Metrics: packets and bytes per listener ([`Transport`]) from the first byte; per hub
//! (and, for the metrics API, per device) through the session's `Traffic` once the CONNECT
//! is accepted, the CONNECT and the bytes read before it included; refused CONNECTs as
//! `iothub_auth_refusals_total{listener, reason}` (the engine's `ConnectError::label`,
//! `certificate_refused`, or `protocol`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use iothub_engine::{
    ConnectRequest, Connected, Credentials, DisconnectKind, Engine, EventKind, HubEvent, Identity,
    Outgoing, OutgoingPublish, PublishAck, PublishError, Session, SubscribeError, SubscribeRequest,
    Traffic, Will, count_unattributed,
};
use iothub_model::{ClientId, DeviceId, HubId, Message, Origin, SubscriptionFilter, TopicName};
use iothub_mqtt_codec::{self as codec, Packet, ProtocolVersion, ReasonCode};
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::ListenerSettings;
use crate::aliases::{AliasError, InboundAliases, OutboundAliases, OutboundTopic};
use crate::convert;
use crate::events::{self as ev, Head};
use crate::tls::PeerCertificate;

/// A write that makes no progress for this long means the client stopped reading: the
/// connection is closed rather than holding its task and buffers forever.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Outgoing items taken from the session per wake-up before writing.
const OUTGOING_BATCH: usize = 256;
/// Flush the write buffer once it holds this much, even in the middle of a batch.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Room made in the read buffer before a read while the client is quiet: an idle
/// connection holds no more than this (memory per connection, issue 9).
const READ_MIN: usize = 256;
/// Most room made before a read; reached by doubling while reads fill what was made.
const READ_MAX: usize = 64 * 1024;
/// A flush of at most this many bytes gives the write buffer back (the connection is
/// probably going quiet); a busy connection keeps its grown buffer.
const WRITE_KEEP: usize = 4 * 1024;
/// Where responses to a client's requests may be published (MQTT 5 Response Information).
const RESPONSE_TOPIC_BASE: &str = "response";

/// Per-transport metric handles, resolved once per listener rather than once per packet.
#[derive(Clone)]
pub struct Transport {
    connections: Gauge,
    connections_total: Counter,
    packets_in: Counter,
    packets_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Transport {
    pub fn new(transport: &'static str, listener: &str) -> Self {
        let labels = [
            ("transport", transport.to_string()),
            ("listener", listener.to_string()),
        ];
        Self {
            connections: metrics::gauge!("iothub_connections", &labels),
            connections_total: metrics::counter!("iothub_connections_total", &labels),
            packets_in: metrics::counter!("iothub_packets_received_total", &labels),
            packets_out: metrics::counter!("iothub_packets_sent_total", &labels),
            bytes_in: metrics::counter!("iothub_bytes_received_total", &labels),
            bytes_out: metrics::counter!("iothub_bytes_sent_total", &labels),
        }
    }
}

/// Why a connection ended; decides the will and what the client is told.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Client(DisconnectKind),
    /// We end it with this reason: MQTT 5 clients get a DISCONNECT first; the will is published.
    Server(ReasonCode, &'static str),
    /// Like `Server`, for a packet the client should not have sent: raises a hub event of
    /// `kind` with `msg` and the packet (in words) first.
    Violation {
        code: ReasonCode,
        why: &'static str,
        kind: EventKind,
        msg: String,
        packet: String,
    },
    /// The engine ended the session's connection (takeover, shutdown, ...): told, then closed.
    Kicked(ReasonCode),
    /// The network went away (EOF, I/O error, stalled writes): the will is published.
    Network,
}

impl Close {
    /// A protocol error: event "protocol error: <why>".
    fn protocol(code: ReasonCode, why: &'static str, packet: String) -> Self {
        Close::Violation {
            code,
            why,
            kind: EventKind::ProtocolError,
            msg: format!("protocol error: {why}"),
            packet,
        }
    }
}

/// Runs one connection to the end. Never panics on input; every outcome is logged at debug.
pub async fn run<S>(
    stream: S,
    peer: SocketAddr,
    engine: Engine,
    settings: Arc<ListenerSettings>,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    run_with_certificate(
        stream,
        peer,
        engine,
        settings,
        transport,
        PeerCertificate::None,
    )
    .await;
}

/// [`run`] for a connection whose client certificate was checked (TLS, wss, QUIC): a
/// verified certificate names the device at CONNECT, a refused one refuses the CONNECT.
pub async fn run_with_certificate<S>(
    stream: S,
    peer: SocketAddr,
    engine: Engine,
    settings: Arc<ListenerSettings>,
    transport: Transport,
    certificate: PeerCertificate,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    transport.connections.increment(1.0);
    transport.connections_total.increment(1);
    let mut conn = Conn {
        stream,
        peer,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        read_room: READ_MIN,
        read_want: 0,
        topic_buf: String::new(),
        transport: transport.clone(),
        settings,
        certificate,
        traffic: None,
        bytes_before_connack: 0,
    };
    conn.serve(&engine).await;
    transport.connections.decrement(1.0);
}

struct Conn<S> {
    stream: S,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Room to make in `rbuf` before the next read (see [`Conn::make_read_room`]).
    read_room: usize,
    /// The room there was before the last read: a read that filled it means more is waiting.
    read_want: usize,
    /// The topic of the last delivery, kept for its allocation (see `send_publish`).
    topic_buf: String,
    transport: Transport,
    settings: Arc<ListenerSettings>,
    certificate: PeerCertificate,
    /// The hub's counters, once the CONNECT is accepted (see `iothub_engine::Traffic`).
    traffic: Option<Traffic>,
    /// Bytes read before the hub was known, attributed to it when the CONNECT is accepted.
    bytes_before_connack: u64,
}

/// State of an established MQTT connection.
struct Established {
    version: ProtocolVersion,
    session: Session,
    client_id: ClientId,
    /// Who the client's messages come from: the device id for every connection of a device
    /// (an extra connection's session has a client id of its own), else the client id.
    origin: ClientId,
    keep_alive: Option<Duration>,
    /// Session expiry the client asked for at CONNECT (0 may not be raised at DISCONNECT).
    connect_session_expiry: u32,
    inbound_aliases: InboundAliases,
    outbound_aliases: OutboundAliases,
    /// The client's Maximum Packet Size: larger packets are not sent to it [MQTT-3.1.2-24].
    client_max_packet: Option<u32>,
    max_qos: iothub_model::QoS,
    retain_available: bool,
    outgoing: Vec<Outgoing>,
    /// The device the client is, for hub events (`None`: an anonymous client; its events are
    /// about the hub).
    device: Option<DeviceId>,
}

impl Established {
    /// Raises a hub event about this client (its device, else its hub).
    fn raise(&self, kind: EventKind, msg: String, packet: String) {
        let event = HubEvent::about(kind, self.session.hub(), self.device, msg).with_packet(packet);
        self.session.raise_event(event);
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self, engine: &Engine) {
        let connect =
            match tokio::time::timeout(self.settings.connect_timeout, self.read_connect()).await {
                // Moved out of its box here, so the box is freed now rather than held for
                // the life of the connection.
                Ok(Some(c)) => *c,
                Ok(None) => return,
                Err(_) => {
                    debug!(message = "no CONNECT in time; closing", peer = %self.peer);
                    return;
                }
            };
        // Boxed: the handshake's state lives only while connecting, and an unboxed one would
        // size every connection's task for it (memory per idle connection, issue 9).
        let Some(mut est) = Box::pin(self.handshake(engine, connect)).await else {
            return;
        };
        let close = self.established(&mut est).await;
        self.finish(est, close).await;
    }

    /// Reads until a CONNECT is decoded. `None` when the connection must close (already
    /// answered where the protocol says so).
    async fn read_connect(&mut self) -> Option<Box<codec::Connect>> {
        loop {
            match codec::decode(&mut self.rbuf, None, self.settings.max_packet_size) {
                Ok(Some(Packet::Connect(c))) => {
                    self.transport.packets_in.increment(1);
                    return Some(c);
                }
                Ok(Some(other)) => {
                    debug!(message = "first packet is not CONNECT; closing", peer = %self.peer, packet = ?packet_name(&other));
                    count_unattributed(EventKind::ProtocolError);
                    return None;
                }
                Ok(None) => {}
                Err(e) => {
                    // No hub is known before a CONNECT decodes: counted only.
                    count_unattributed(ev::decode_event(&e).0);
                    if let codec::DecodeError::UnsupportedProtocolVersion(level) = e {
                        // [MQTT-3.1.2-2]: answer with return code 0x01 in the 3.1.1 form, which
                        // every protocol level can read, then close.
                        debug!(message = "unsupported protocol level", peer = %self.peer, level);
                        self.wbuf.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
                        let _ = self.flush().await;
                    } else if self.rbuf.starts_with(&[0x16, 0x03]) {
                        // A TLS record header (handshake, version 3.x) where CONNECT belongs.
                        debug!(message = "TLS spoken to a plain MQTT listener (use the TLS port); closing", peer = %self.peer);
                    } else {
                        debug!(message = "malformed CONNECT; closing", peer = %self.peer, error = %e);
                    }
                    return None;
                }
            }
            self.make_read_room();
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    self.after_read(n);
                    self.transport.bytes_in.increment(n as u64);
                    self.bytes_before_connack += n as u64;
                }
            }
        }
    }

    /// Validates the CONNECT, opens the session and answers CONNACK.
    async fn handshake(&mut self, engine: &Engine, c: codec::Connect) -> Option<Established> {
        let version = c.protocol;
        let v5 = version == ProtocolVersion::V5;
        let refuse = |code: ReasonCode, why: &'static str| (code, why);
        // The `reason` of `iothub_auth_refusals_total`: the engine's, the certificate's, or
        // a CONNECT the protocol refuses.
        let mut refusal = "protocol";
        // The hub event of a refusal, and whom it is about when the hub is known.
        let mut event: Option<(EventKind, String)> = None;
        let mut subject: Option<(HubId, Option<DeviceId>)> = None;
        let with_certificate = matches!(self.certificate, PeerCertificate::Verified(_));
        let will_topic = c.will.as_ref().map(|w| w.topic.as_str());

        let result: Result<(Connected, ConnectRequestInfo), (ReasonCode, &'static str)> = (|| {
            if c.properties.authentication_method.is_some() {
                return Err(refuse(
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    "enhanced authentication is not supported",
                ));
            }
            let client_id = if c.client_id.is_empty() {
                if !v5 && !c.clean_start {
                    // [MQTT-3.1.3-8]
                    return Err(refuse(
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "an empty client id needs clean session",
                    ));
                }
                None
            } else {
                Some(ClientId::new(&c.client_id).map_err(|_| {
                    event = Some((
                        EventKind::ProtocolError,
                        "client identifier not valid".into(),
                    ));
                    refuse(
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "client identifier not valid",
                    )
                })?)
            };
            // Who the client is and which hub it joins (DESIGN.md, identity). Plain
            // transports carry no certificate; TLS listeners pass the device their client
            // certificate names.
            let certificate = match self.certificate {
                PeerCertificate::None => None,
                PeerCertificate::Verified(c) => Some(c),
                PeerCertificate::Refused(why) => {
                    refusal = "certificate_refused";
                    return Err(refuse(ReasonCode::NOT_AUTHORIZED, why));
                }
            };
            let credentials = Credentials {
                client_id: &c.client_id,
                username: c.username.as_deref(),
                password_is_empty: c.password.as_ref().is_none_or(|p| p.is_empty()),
                certificate,
            };
            let (hub, identity) = engine
                .resolve_client(self.settings.anonymous_hub, &credentials)
                .map_err(|e| {
                    refusal = e.label();
                    // The will is checked at `connect_as`: an identity refusal is not about it.
                    event = ev::connect_event(&e, with_certificate, None);
                    convert::connect_refusal(&e)
                })?;
            subject = Some((hub, device_of(identity)));
            // Messages name the session they come from: a device's is its device id.
            let origin = match identity {
                Identity::Device { id, .. } => Origin::Client(ClientId::from(id)),
                Identity::Anonymous => client_id.clone().map_or(Origin::Hub, Origin::Client),
            };
            let will = match &c.will {
                None => None,
                Some(w) => {
                    let topic = TopicName::new(&w.topic).map_err(|_| {
                        event = Some((
                            EventKind::ProtocolError,
                            "protocol error: the will topic is not valid".into(),
                        ));
                        refuse(
                            ReasonCode::TOPIC_NAME_INVALID,
                            "the will topic is not valid",
                        )
                    })?;
                    let p = &w.properties;
                    let properties = convert::message_properties(
                        p.payload_format_indicator,
                        p.message_expiry_interval,
                        p.content_type.as_ref(),
                        p.response_topic.as_ref(),
                        p.correlation_data.as_ref(),
                        &p.user_properties,
                    )
                    .ok_or_else(|| {
                        refuse(
                            ReasonCode::PROTOCOL_ERROR,
                            "the will's response topic is not valid",
                        )
                    })?;
                    if properties.payload_is_utf8 == Some(true)
                        && std::str::from_utf8(&w.payload).is_err()
                    {
                        return Err(refuse(
                            ReasonCode::PAYLOAD_FORMAT_INVALID,
                            "the will payload is not UTF-8 as its format indicator says",
                        ));
                    }
                    Some(Will {
                        message: Message {
                            topic,
                            payload: w.payload.clone(),
                            qos: convert::qos_in(w.qos),
                            retain: w.retain,
                            properties,
                            origin,
                        },
                        delay_secs: p.will_delay_interval.unwrap_or(0),
                    })
                }
            };
            let session_expiry_secs = if v5 {
                c.properties.session_expiry_interval.unwrap_or(0)
            } else if c.clean_start {
                0
            } else {
                u32::MAX
            };
            let connected = engine
                .connect_as(
                    identity,
                    ConnectRequest {
                        hub,
                        client_id,
                        clean_start: c.clean_start,
                        session_expiry_secs,
                        receive_maximum: c.properties.receive_maximum.unwrap_or(u16::MAX),
                        will,
                    },
                )
                .map_err(|e| {
                    refusal = e.label();
                    event = ev::connect_event(&e, with_certificate, will_topic);
                    convert::connect_refusal(&e)
                })?;
            Ok((
                connected,
                ConnectRequestInfo {
                    session_expiry_secs,
                    identity,
                },
            ))
        })(
        );

        let (connected, info) = match result {
            Ok(ok) => ok,
            Err((code, why)) => {
                debug!(message = "connection refused", peer = %self.peer, client_id = %c.client_id, username = ?c.username, reason = why, code = code.0);
                if let Some((kind, msg)) = event {
                    self.raise_refusal(engine, &c, subject, kind, msg);
                }
                metrics::counter!(
                    "iothub_auth_refusals_total",
                    "listener" => self.settings.name.clone(),
                    "reason" => refusal
                )
                .increment(1);
                let ack = codec::ConnAck {
                    session_present: false,
                    reason_code: code,
                    properties: codec::ConnAckProperties {
                        reason_string: if v5 { Some(why.to_string()) } else { None },
                        ..Default::default()
                    },
                };
                self.send(&Packet::ConnAck(ack), version);
                let _ = self.flush().await;
                return None;
            }
        };

        // From here on the hub is known: its counters take the CONNECT and what follows.
        let traffic = connected.session.traffic();
        traffic.packet_received();
        traffic.bytes_received(self.bytes_before_connack);
        self.traffic = Some(traffic);
        let client_id = connected.client_id.clone();
        let caps = connected.caps;
        let requested_keep_alive = c.keep_alive;
        let max_keep_alive = caps.max_keep_alive_secs;
        let keep_alive_secs = if v5 && (requested_keep_alive > max_keep_alive) {
            max_keep_alive
        } else {
            requested_keep_alive
        };
        let mut props = codec::ConnAckProperties::default();
        if v5 {
            if connected.session_expiry_secs != info.session_expiry_secs {
                props.session_expiry_interval = Some(connected.session_expiry_secs);
            }
            props.receive_maximum = Some(caps.receive_maximum);
            if caps.maximum_qos < iothub_model::QoS::ExactlyOnce {
                props.maximum_qos = Some(convert::qos_out(caps.maximum_qos));
            }
            if !caps.retain_available {
                props.retain_available = Some(false);
            }
            props.maximum_packet_size = Some(self.settings.max_packet_size);
            if connected.assigned {
                props.assigned_client_identifier = Some(client_id.to_string());
            }
            props.topic_alias_maximum = Some(caps.topic_alias_maximum);
            if !caps.wildcard_available {
                props.wildcard_subscription_available = Some(false);
            }
            if !caps.subscription_ids_available {
                props.subscription_identifiers_available = Some(false);
            }
            if !caps.shared_available {
                props.shared_subscription_available = Some(false);
            }
            if keep_alive_secs != requested_keep_alive {
                props.server_keep_alive = Some(keep_alive_secs);
            }
            if c.properties.request_response_information == Some(true) {
                props.response_information = Some(format!("{RESPONSE_TOPIC_BASE}/{client_id}"));
            }
        }
        let ack = codec::ConnAck {
            session_present: connected.session_present,
            reason_code: ReasonCode::SUCCESS,
            properties: props,
        };
        self.send(&Packet::ConnAck(ack), version);
        debug!(message = "connected", peer = %self.peer, client_id = %client_id, ?version, session_present = connected.session_present);

        let origin = match info.identity {
            Identity::Device { id, .. } => ClientId::from(id),
            Identity::Anonymous => client_id.clone(),
        };
        Some(Established {
            version,
            client_id,
            origin,
            keep_alive: (keep_alive_secs > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500)),
            connect_session_expiry: info.session_expiry_secs,
            inbound_aliases: InboundAliases::new(if v5 { caps.topic_alias_maximum } else { 0 }),
            outbound_aliases: OutboundAliases::new(if v5 {
                c.properties.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            }),
            client_max_packet: c.properties.maximum_packet_size,
            max_qos: caps.maximum_qos,
            retain_available: caps.retain_available,
            session: connected.session,
            // Grows on the first busy wake-up; an idle connection holds none (a 256-item
            // batch is 16 KiB).
            outgoing: Vec::new(),
            device: device_of(info.identity),
        })
    }

    /// The hub event of a refused CONNECT: about the device or hub it named (`subject`, or
    /// what its credentials name), with the CONNECT in words and the client's address;
    /// counted only when it names nothing the engine knows.
    fn raise_refusal(
        &self,
        engine: &Engine,
        c: &codec::Connect,
        subject: Option<(HubId, Option<DeviceId>)>,
        kind: EventKind,
        msg: String,
    ) {
        let subject = subject.or_else(|| {
            let certificate = match self.certificate {
                PeerCertificate::Verified(v) => Some(v),
                PeerCertificate::None | PeerCertificate::Refused(_) => None,
            };
            engine.refusal_subject(&Credentials {
                client_id: &c.client_id,
                username: c.username.as_deref(),
                password_is_empty: c.password.as_ref().is_none_or(|p| p.is_empty()),
                certificate,
            })
        });
        match subject {
            Some((hub, device)) => {
                let event = HubEvent::about(kind, hub, device, msg)
                    .with_packet(ev::describe_connect(c))
                    .with_source_address(self.peer);
                engine.raise_event(hub, event);
            }
            None => count_unattributed(kind),
        }
    }

    /// The established connection's loop: until the client, the server or the network ends it.
    async fn established(&mut self, est: &mut Established) -> Close {
        // CONNACK first, then anything a resumed session has pending, then the packets the
        // client sent right behind its CONNECT (MQTT 3.1.4 lets it): they are already in the
        // read buffer and no new read would wake us for them.
        if let Some(close) = self.drain_outgoing(est) {
            return close;
        }
        if let Some(close) = self.handle_input(est) {
            return close;
        }
        if let Some(close) = self.drain_outgoing(est) {
            return close;
        }
        // Durability: what the write buffer acknowledges (PUBACK, PUBREC, PUBCOMP) or sends
        // under a fresh QoS 2 packet id leaves only once the journal has it
        // (`Session::durable_ticket`); reading goes on meanwhile.
        let mut durable = est.session.durability();
        wait_durable(&mut durable, est.session.durable_ticket()).await;
        if self.flush().await.is_err() {
            return Close::Network;
        }
        let keep_alive = est.keep_alive;
        let mut last_read = Instant::now();
        let far = Duration::from_secs(365 * 24 * 3600);
        let deadline = tokio::time::sleep(keep_alive.unwrap_or(far));
        tokio::pin!(deadline);
        loop {
            let need = est.session.durable_ticket();
            let held = is_held(&durable, need);
            // Writes held at the end of the last turn may have become durable since: send
            // them now, or nothing would until the next read or delivery.
            if !held && !self.wbuf.is_empty() && self.flush().await.is_err() {
                return Close::Network;
            }
            self.make_read_room();
            // Set when a read filled the room it had: the client sends faster than we read.
            let mut flooded = false;
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.rbuf) => {
                    match read {
                        Ok(0) => {
                            self.truncated(est);
                            return Close::Network;
                        }
                        Err(e) => {
                            debug!(message = "read error", peer = %self.peer, %e);
                            self.truncated(est);
                            return Close::Network;
                        }
                        Ok(n) => {
                            flooded = self.after_read(n);
                            self.transport.bytes_in.increment(n as u64);
                            if let Some(t) = &self.traffic {
                                t.bytes_received(n as u64);
                            }
                            last_read = Instant::now();
                        }
                    }
                    if let Some(close) = self.handle_input(est) {
                        return close;
                    }
                    if let Some(close) = self.drain_outgoing(est) {
                        return close;
                    }
                    self.release_read_buffer();
                }
                () = est.session.ready() => {
                    if let Some(close) = self.drain_outgoing(est) {
                        return close;
                    }
                }
                () = wait_durable(&mut durable, need), if held => {}
                () = &mut deadline => {
                    if let Some(ka) = keep_alive {
                        let due = last_read + ka;
                        if Instant::now() >= due {
                            debug!(message = "keep-alive timeout", peer = %self.peer, client_id = %est.client_id);
                            return Close::Server(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                        }
                        deadline.as_mut().reset(due);
                    } else {
                        deadline.as_mut().reset(Instant::now() + far);
                    }
                }
            }
            if is_held(&durable, est.session.durable_ticket()) {
                continue;
            }
            if self.flush().await.is_err() {
                return Close::Network;
            }
            if flooded {
                // A flooding publisher would otherwise keep its worker for a whole coop
                // budget of reads while the subscribers it just woke wait, their queues
                // overflowing: let them run between reads.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Makes `read_room` bytes of room in the read buffer once the current one is nearly
    /// full. Small while the client is quiet, so an idle connection holds little; doubled
    /// by [`Conn::after_read`] while reads fill it. The buffer is only replaced when nearly
    /// full: payloads decoded from it share its allocation, so leaving a large tail unused
    /// would pin memory for as long as they are queued or retained.
    fn make_read_room(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_MIN {
            self.rbuf.reserve(self.read_room);
        }
        self.read_want = self.rbuf.capacity() - self.rbuf.len();
    }

    /// Adapts the room to a read of `n` bytes; true when the read filled it (more is waiting).
    fn after_read(&mut self, n: usize) -> bool {
        let filled = n >= self.read_want;
        if filled {
            self.read_room = (self.read_room * 2).min(READ_MAX);
        } else if n < self.read_room / 4 {
            self.read_room = (self.read_room / 2).max(READ_MIN);
        }
        filled
    }

    /// Gives back a read buffer grown by a burst once everything in it has been handled.
    fn release_read_buffer(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * self.read_room {
            self.rbuf = BytesMut::new();
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn handle_input(&mut self, est: &mut Established) -> Option<Close> {
        loop {
            // The offending bytes, should this packet not decode.
            let head = Head::of(&self.rbuf);
            let packet = match codec::decode(
                &mut self.rbuf,
                Some(est.version),
                self.settings.max_packet_size,
            ) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => {
                    debug!(message = "bad packet", peer = %self.peer, client_id = %est.client_id, error = %e);
                    let (kind, msg) = ev::decode_event(&e);
                    est.raise(kind, msg, head.excerpt(self.rbuf.len()));
                    return Some(Close::Server(
                        e.reason_code(),
                        "malformed or invalid packet",
                    ));
                }
            };
            self.transport.packets_in.increment(1);
            if let Some(t) = &self.traffic {
                t.packet_received();
            }
            if let Some(close) = self.handle_packet(est, packet) {
                return Some(close);
            }
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                // Answers pile up faster than we write them: let the loop flush first.
                return None;
            }
        }
    }

    /// The connection ended inside a packet (its first bytes arrived, the rest never will):
    /// the reference's "cannot read MQTT header" event, with those bytes.
    fn truncated(&self, est: &Established) {
        if self.rbuf.is_empty() {
            return;
        }
        let msg = format!(
            "cannot read MQTT header: the connection closed {} bytes into a packet",
            self.rbuf.len()
        );
        let head = Head::of(&self.rbuf);
        est.raise(
            EventKind::MalformedPacket,
            msg,
            head.excerpt(self.rbuf.len()),
        );
    }

    fn handle_packet(&mut self, est: &mut Established, packet: Packet) -> Option<Close> {
        let v5 = est.version == ProtocolVersion::V5;
        match packet {
            Packet::Publish(p) => return self.handle_publish(est, p),
            Packet::PubAck(a) | Packet::PubComp(a) => {
                est.session.acknowledge(a.packet_id);
            }
            Packet::PubRec(r) => {
                if r.reason_code.is_error() {
                    // The client refused the message: the exchange ends here.
                    est.session.acknowledge(r.packet_id);
                } else {
                    let code = if est.session.received(r.packet_id) {
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                    };
                    self.send_ack(est, Packet::PubRel, r.packet_id, code);
                }
            }
            Packet::PubRel(r) => {
                let code = if est.session.release(r.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send_ack(est, Packet::PubComp, r.packet_id, code);
            }
            Packet::Subscribe(s) => return self.handle_subscribe(est, s),
            Packet::Unsubscribe(u) => {
                let mut codes = Vec::with_capacity(u.filters.len());
                let mut valid = Vec::with_capacity(u.filters.len());
                let mut slots = Vec::with_capacity(u.filters.len());
                for f in &u.filters {
                    match SubscriptionFilter::parse(f) {
                        Ok(sf) => {
                            slots.push(Some(valid.len()));
                            valid.push(sf);
                        }
                        Err(_) => slots.push(None),
                    }
                }
                let found = est.session.unsubscribe(&valid);
                for slot in slots {
                    codes.push(match slot {
                        None => ReasonCode::TOPIC_FILTER_INVALID,
                        Some(i) if found.get(i).copied().unwrap_or(false) => ReasonCode::SUCCESS,
                        Some(_) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
                    });
                }
                let ack = codec::UnsubAck {
                    packet_id: u.packet_id,
                    reason_codes: if v5 { codes } else { Vec::new() },
                    properties: codec::AckProperties::default(),
                };
                self.send(&Packet::UnsubAck(ack), est.version);
            }
            Packet::PingReq => self.send(&Packet::PingResp, est.version),
            Packet::Disconnect(d) => {
                let expiry = d.properties.session_expiry_interval;
                if est.connect_session_expiry == 0 && expiry.is_some_and(|e| e != 0) {
                    // [MQTT-3.14.2-2]
                    return Some(Close::protocol(
                        ReasonCode::PROTOCOL_ERROR,
                        "session expiry cannot be set at DISCONNECT when it was 0 at CONNECT",
                        format!("DISCONNECT session_expiry={}", expiry.unwrap_or(0)),
                    ));
                }
                let kind = if d.reason_code == ReasonCode::SUCCESS {
                    DisconnectKind::Normal {
                        session_expiry_secs: expiry,
                    }
                } else {
                    DisconnectKind::WithWill {
                        session_expiry_secs: expiry,
                    }
                };
                return Some(Close::Client(kind));
            }
            Packet::Connect(c) => {
                // [MQTT-3.1.0-2]
                return Some(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "second CONNECT",
                    ev::describe_connect(&c),
                ));
            }
            Packet::Auth(_) => {
                return Some(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH without enhanced authentication",
                    "AUTH".into(),
                ));
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                return Some(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "a packet only a server may send",
                    ev::describe(&other),
                ));
            }
        }
        None
    }

    fn handle_publish(&mut self, est: &mut Established, p: codec::Publish) -> Option<Close> {
        let v5 = est.version == ProtocolVersion::V5;
        let protocol = |why: &'static str, p: &codec::Publish| {
            Some(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                why,
                ev::describe_publish(p),
            ))
        };
        if !p.properties.subscription_identifiers.is_empty() {
            // [MQTT-3.3.4-6]
            return protocol(
                "a client PUBLISH must not carry subscription identifiers",
                &p,
            );
        }
        let qos = convert::qos_in(p.qos);
        if v5 {
            // MQTT 5 names these refusals with a DISCONNECT [MQTT-3.2.2-11, MQTT-3.2.2-14];
            // MQTT 3.1.1 has no such code: the engine refuses and the message is acknowledged
            // and dropped below.
            if qos > est.max_qos {
                return Some(service_level(&PublishError::QosNotSupported, &p));
            }
            if p.retain && !est.retain_available {
                return Some(service_level(&PublishError::RetainNotSupported, &p));
            }
        }
        let named = if p.topic.is_empty() {
            None
        } else {
            match TopicName::new(&p.topic) {
                Ok(t) => Some(t),
                Err(_) => {
                    return Some(Close::protocol(
                        ReasonCode::TOPIC_NAME_INVALID,
                        "topic name invalid",
                        ev::describe_publish(&p),
                    ));
                }
            }
        };
        let topic = match (p.properties.topic_alias, named) {
            (Some(alias), named) => match est.inbound_aliases.resolve(alias, named) {
                Ok(t) => t,
                Err(AliasError::OutOfRange) => {
                    return Some(Close::protocol(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        "topic alias invalid",
                        ev::describe_publish(&p),
                    ));
                }
                Err(AliasError::Unknown) => {
                    return protocol("topic alias used before it was set", &p);
                }
            },
            (None, Some(t)) => t,
            (None, None) => {
                return Some(Close::Violation {
                    code: ReasonCode::PROTOCOL_ERROR,
                    why: "empty topic without alias",
                    kind: EventKind::ProtocolError,
                    msg: "empty topics are not authorized".into(),
                    packet: ev::describe_publish(&p),
                });
            }
        };
        let pp = &p.properties;
        let Some(properties) = convert::message_properties(
            pp.payload_format_indicator,
            pp.message_expiry_interval,
            pp.content_type.as_ref(),
            pp.response_topic.as_ref(),
            pp.correlation_data.as_ref(),
            &pp.user_properties,
        ) else {
            return protocol("response topic is not a valid topic name", &p);
        };
        let packet_id = p.packet_id;
        let result = if properties.payload_is_utf8 == Some(true)
            && std::str::from_utf8(&p.payload).is_err()
        {
            est.raise(
                EventKind::ProtocolError,
                "protocol error: the payload is not UTF-8 as its format indicator says".into(),
                ev::describe_publish(&p),
            );
            Err(ReasonCode::PAYLOAD_FORMAT_INVALID)
        } else {
            let message = Message {
                topic,
                // A shared reference: `p` stays whole for the event of a refusal.
                payload: p.payload.clone(),
                qos,
                retain: p.retain,
                properties,
                origin: Origin::Client(est.origin.clone()),
            };
            match est.session.publish(message, packet_id) {
                Ok(PublishAck::Delivered { matched }) => Ok(if matched || !v5 {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_MATCHING_SUBSCRIBERS
                }),
                Ok(PublishAck::Duplicate) => Ok(ReasonCode::SUCCESS),
                Err(e) => match e {
                    PublishError::ReceiveMaximumExceeded => {
                        return Some(Close::protocol(
                            ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                            "receive maximum exceeded",
                            ev::describe_publish(&p),
                        ));
                    }
                    PublishError::QosNotSupported | PublishError::RetainNotSupported if v5 => {
                        return Some(service_level(&e, &p));
                    }
                    other => {
                        let max = est.session.caps().max_payload_bytes;
                        let (kind, msg) = publish_event(&other, &p, max);
                        est.raise(kind, msg, ev::describe_publish(&p));
                        Err(publish_refusal(&other))
                    }
                },
            }
        };
        let code = match result {
            Ok(code) => code,
            Err(code) => {
                debug!(message = "publish refused", peer = %self.peer, client_id = %est.client_id, code = code.0);
                // MQTT 3.1.1 cannot say no to a PUBLISH: acknowledge and drop [MQTT-3.3.5-2].
                if v5 { code } else { ReasonCode::SUCCESS }
            }
        };
        match (qos, packet_id) {
            (iothub_model::QoS::AtLeastOnce, Some(id)) => {
                self.send_ack(est, Packet::PubAck, id, code)
            }
            (iothub_model::QoS::ExactlyOnce, Some(id)) => {
                self.send_ack(est, Packet::PubRec, id, code)
            }
            _ => {}
        }
        None
    }

    fn handle_subscribe(&mut self, est: &mut Established, s: codec::Subscribe) -> Option<Close> {
        let v5 = est.version == ProtocolVersion::V5;
        let subscription_id = s.properties.subscription_identifier;
        let mut requests = Vec::with_capacity(s.filters.len());
        let mut slots: Vec<Result<usize, ReasonCode>> = Vec::with_capacity(s.filters.len());
        for (filter, opts) in &s.filters {
            match SubscriptionFilter::parse(filter) {
                Ok(sf) => {
                    if sf.is_shared() && opts.no_local {
                        // [MQTT-3.8.3-4]
                        return Some(Close::protocol(
                            ReasonCode::PROTOCOL_ERROR,
                            "no local on a shared subscription",
                            ev::describe_subscribe(&s),
                        ));
                    }
                    slots.push(Ok(requests.len()));
                    requests.push(SubscribeRequest {
                        filter: sf,
                        qos: convert::qos_in(opts.qos),
                        no_local: opts.no_local,
                        retain_as_published: opts.retain_as_published,
                        retain_handling: convert::retain_handling_in(opts.retain_handling),
                        subscription_id,
                    });
                }
                Err(_) => slots.push(Err(ReasonCode::TOPIC_FILTER_INVALID)),
            }
        }
        let results = est.session.subscribe(&requests);
        let mut codes = Vec::with_capacity(slots.len());
        for (slot, (filter, opts)) in slots.into_iter().zip(&s.filters) {
            let requested = convert::qos_in(opts.qos);
            let event = match slot {
                Err(_) if filter.is_empty() => Some((
                    EventKind::ProtocolError,
                    "empty topics are not authorized".to_string(),
                )),
                Err(_) => Some((
                    EventKind::ProtocolError,
                    format!("protocol error: topic filter invalid: {filter}"),
                )),
                Ok(i) => match results.get(i) {
                    Some(Ok(q)) if *q < requested => Some((
                        EventKind::ServiceLevel,
                        format!(
                            "service level: QoS {} subscriptions are not available on this plan: \
                             {filter} granted QoS {}",
                            u8::from(requested),
                            u8::from(*q)
                        ),
                    )),
                    Some(Err(SubscribeError::NotAuthorized)) => Some((
                        EventKind::UnauthorizedTopic,
                        format!("unauthorized topic {filter}"),
                    )),
                    Some(Err(SubscribeError::QuotaExceeded)) => Some((
                        EventKind::QuotaExceeded,
                        format!("subscription refused: {filter} has too many levels"),
                    )),
                    _ => None,
                },
            };
            if let Some((kind, msg)) = event {
                est.raise(kind, msg, ev::describe_subscribe(&s));
            }
            let code = match slot {
                Err(code) => code,
                Ok(i) => match results.get(i) {
                    Some(Ok(q)) => ReasonCode(u8::from(*q)),
                    Some(Err(e)) => subscribe_refusal(e),
                    None => ReasonCode::UNSPECIFIED_ERROR,
                },
            };
            codes.push(if v5 || !code.is_error() {
                code
            } else {
                ReasonCode(0x80)
            });
        }
        let ack = codec::SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: codec::AckProperties::default(),
        };
        self.send(&Packet::SubAck(ack), est.version);
        None
    }

    /// Takes what the session has ready and encodes it. `Some` when the session was kicked.
    fn drain_outgoing(&mut self, est: &mut Established) -> Option<Close> {
        loop {
            est.outgoing.clear();
            est.session.poll_outgoing(&mut est.outgoing, OUTGOING_BATCH);
            if est.outgoing.is_empty() {
                return None;
            }
            let n = est.outgoing.len();
            let items = std::mem::take(&mut est.outgoing);
            let mut kicked = None;
            for item in &items {
                match item {
                    Outgoing::Publish(p) => self.send_publish(est, p),
                    Outgoing::PubRel(id) => {
                        self.send_ack(est, Packet::PubRel, *id, ReasonCode::SUCCESS)
                    }
                    Outgoing::Disconnect(reason) => {
                        kicked = Some(Close::Kicked(convert::kick_reason(*reason)));
                        break;
                    }
                }
            }
            // Keep the vector's allocation for the next batch.
            est.outgoing = items;
            if kicked.is_some() {
                return kicked;
            }
            if n < OUTGOING_BATCH || self.wbuf.len() >= WRITE_HIGH_WATER {
                return None;
            }
        }
    }

    fn send_publish(&mut self, est: &mut Established, p: &OutgoingPublish) {
        let m = &p.message;
        let mut properties = codec::PublishProperties::default();
        // The packet owns its topic: reuse one allocation for every delivery rather than
        // allocating a String per message.
        let mut topic = std::mem::take(&mut self.topic_buf);
        topic.clear();
        topic.push_str(m.topic.as_str());
        if est.version == ProtocolVersion::V5 {
            let mp = &m.properties;
            properties.payload_format_indicator = mp.payload_is_utf8.map(u8::from);
            properties.message_expiry_interval = p.message_expiry_remaining;
            properties.content_type = mp.content_type.clone();
            properties.response_topic = mp.response_topic.as_ref().map(|t| t.as_str().to_string());
            properties.correlation_data = mp.correlation_data.clone();
            properties.user_properties = mp.user_properties.clone();
            properties.subscription_identifiers = p.subscription_ids.to_vec();
            match est.outbound_aliases.lookup(&m.topic) {
                OutboundTopic::Plain => {}
                OutboundTopic::Establish(a) => properties.topic_alias = Some(a),
                OutboundTopic::Alias(a) => {
                    properties.topic_alias = Some(a);
                    topic.clear();
                }
            }
        }
        let packet = Packet::Publish(codec::Publish {
            dup: p.dup,
            qos: convert::qos_out(p.qos),
            retain: p.retain,
            topic,
            packet_id: p.packet_id,
            properties,
            payload: m.payload.clone(),
        });
        if let Some(max) = est.client_max_packet {
            let too_large =
                codec::encoded_len(&packet, est.version).map_or(true, |len| len > max as usize);
            if too_large {
                // [MQTT-3.1.2-25]: discard it as if it had been delivered.
                debug!(message = "delivery larger than the client's maximum packet size dropped", client_id = %est.client_id);
                if let Some(id) = p.packet_id {
                    est.session.acknowledge(id);
                }
                return;
            }
        }
        self.send(&packet, est.version);
        if let Packet::Publish(sent) = packet {
            self.topic_buf = sent.topic;
        }
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP (`kind` is the `Packet` variant's constructor).
    fn send_ack(
        &mut self,
        est: &Established,
        kind: fn(codec::PubResponse) -> Packet,
        packet_id: u16,
        code: ReasonCode,
    ) {
        let packet = kind(codec::PubResponse {
            packet_id,
            reason_code: code,
            properties: codec::AckProperties::default(),
        });
        self.send(&packet, est.version);
    }

    fn send(&mut self, packet: &Packet, version: ProtocolVersion) {
        match codec::encode(packet, version, &mut self.wbuf) {
            Ok(()) => {
                self.transport.packets_out.increment(1);
                if let Some(t) = &self.traffic {
                    t.packet_sent();
                }
            }
            Err(e) => {
                debug!(message = "cannot encode packet; not sent", peer = %self.peer, error = %e, packet = ?packet_name(packet));
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let n = self.wbuf.len();
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_STALL_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.transport.bytes_out.increment(n as u64);
                if let Some(t) = &self.traffic {
                    t.bytes_sent(n as u64);
                }
                if n <= WRITE_KEEP {
                    // A small flush: the connection is probably going quiet, and an idle
                    // connection should hold no write buffer.
                    self.wbuf = BytesMut::new();
                } else {
                    self.wbuf.clear();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client has not read for too long",
            )),
        }
    }

    /// Ends the connection: tells the client why where the protocol allows, settles the
    /// session (will, expiry) and closes the stream.
    async fn finish(&mut self, est: Established, close: Close) {
        let v5 = est.version == ProtocolVersion::V5;
        let mut durable = est.session.durability();
        let need = est.session.durable_ticket();
        let kind = match close {
            Close::Client(kind) => kind,
            Close::Server(code, why) => {
                if v5 {
                    self.send_disconnect(code, Some(why), est.client_max_packet);
                }
                info!(message = "closing connection", peer = %self.peer, client_id = %est.client_id, reason = why);
                DisconnectKind::Abnormal
            }
            Close::Violation {
                code,
                why,
                kind,
                msg,
                packet,
            } => {
                est.raise(kind, msg, packet);
                if v5 {
                    self.send_disconnect(code, Some(why), est.client_max_packet);
                }
                info!(message = "closing connection", peer = %self.peer, client_id = %est.client_id, reason = why);
                DisconnectKind::Abnormal
            }
            Close::Kicked(code) => {
                if v5 {
                    self.send_disconnect(code, None, est.client_max_packet);
                }
                debug!(message = "connection ended by the server", peer = %self.peer, client_id = %est.client_id, code = code.0);
                DisconnectKind::Abnormal
            }
            Close::Network => DisconnectKind::Abnormal,
        };
        est.session.disconnect(kind);
        if !self.wbuf.is_empty() {
            wait_durable(&mut durable, need).await;
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// A server DISCONNECT (MQTT 5 only). Acknowledgements never carry reason strings, so
    /// Request Problem Information = 0 needs no special case [MQTT-3.1.2-29]: DISCONNECT may.
    /// The reason string is left out when the packet would exceed the client's Maximum Packet
    /// Size [MQTT-3.14.2-3]; the reason code alone always fits (the smallest allowed maximum).
    fn send_disconnect(&mut self, code: ReasonCode, why: Option<&str>, client_max: Option<u32>) {
        let mut packet = Packet::Disconnect(codec::Disconnect {
            reason_code: code,
            properties: codec::DisconnectProperties {
                reason_string: why.map(str::to_string),
                ..Default::default()
            },
        });
        let too_large = |p: &Packet| {
            client_max.is_some_and(|max| {
                codec::encoded_len(p, ProtocolVersion::V5).map_or(true, |len| len > max as usize)
            })
        };
        if too_large(&packet) {
            packet = Packet::Disconnect(codec::Disconnect {
                reason_code: code,
                properties: codec::DisconnectProperties::default(),
            });
        }
        self.send(&packet, ProtocolVersion::V5);
    }
}

struct ConnectRequestInfo {
    session_expiry_secs: u32,
    identity: Identity,
}

/// Whom a session belongs to: its device, or nobody for an anonymous client.
fn device_of(identity: Identity) -> Option<DeviceId> {
    match identity {
        Identity::Device { id, .. } => Some(id),
        Identity::Anonymous => None,
    }
}

/// Whether bytes written after recording journal ticket `need` must wait (the journal has
/// not made it durable yet).
fn is_held(durable: &Option<watch::Receiver<u64>>, need: u64) -> bool {
    durable.as_ref().is_some_and(|rx| *rx.borrow() < need)
}

/// Resolves once the journal is durable up to `need` (at once without a journal, or if the
/// store is gone).
async fn wait_durable(durable: &mut Option<watch::Receiver<u64>>, need: u64) {
    if let Some(rx) = durable {
        let _ = rx.wait_for(|d| *d >= need).await;
    }
}

/// The close of an MQTT 5 PUBLISH the plan does not offer (QoS 2, retain), with its
/// "service level" event.
fn service_level(e: &PublishError, p: &codec::Publish) -> Close {
    let (code, why) = match e {
        PublishError::RetainNotSupported => {
            (ReasonCode::RETAIN_NOT_SUPPORTED, "retain not supported")
        }
        _ => (ReasonCode::QOS_NOT_SUPPORTED, "QoS not supported"),
    };
    let (kind, msg) = publish_event(e, p, 0);
    Close::Violation {
        code,
        why,
        kind,
        msg,
        packet: ev::describe_publish(p),
    }
}

/// The event of a PUBLISH the engine refused (`max_payload` = the hub's maximum).
fn publish_event(e: &PublishError, p: &codec::Publish, max_payload: u32) -> (EventKind, String) {
    match e {
        PublishError::NotAuthorized => (
            EventKind::UnauthorizedTopic,
            format!("unauthorized topic {}", p.topic),
        ),
        PublishError::QuotaExceeded => (
            EventKind::QuotaExceeded,
            format!(
                "hub memory budget exhausted: the retained message on {} was refused",
                p.topic
            ),
        ),
        PublishError::PayloadTooLarge => (
            EventKind::QuotaExceeded,
            format!(
                "payload of {} bytes is larger than the hub's maximum of {max_payload} bytes",
                p.payload.len()
            ),
        ),
        PublishError::QosNotSupported => (
            EventKind::ServiceLevel,
            "service level: QoS 2 messages are not available on this plan".into(),
        ),
        PublishError::RetainNotSupported => (
            EventKind::ServiceLevel,
            "service level: retained messages are not available on this plan".into(),
        ),
        PublishError::PacketIdInUse => (
            EventKind::ProtocolError,
            "protocol error: packet identifier in use".into(),
        ),
        PublishError::ReceiveMaximumExceeded => (
            EventKind::ProtocolError,
            "protocol error: receive maximum exceeded".into(),
        ),
    }
}

fn publish_refusal(e: &PublishError) -> ReasonCode {
    match e {
        PublishError::PayloadTooLarge | PublishError::QuotaExceeded => ReasonCode::QUOTA_EXCEEDED,
        PublishError::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
        PublishError::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
        PublishError::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        PublishError::PacketIdInUse => ReasonCode::PACKET_IDENTIFIER_IN_USE,
        PublishError::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
    }
}

fn subscribe_refusal(e: &SubscribeError) -> ReasonCode {
    match e {
        SubscribeError::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        SubscribeError::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
        SubscribeError::SharedNotSupported => ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        SubscribeError::WildcardNotSupported => ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        SubscribeError::SubscriptionIdsNotSupported => {
            ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
        }
        SubscribeError::QuotaExceeded => ReasonCode::QUOTA_EXCEEDED,
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
