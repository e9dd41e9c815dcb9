//! The control packets as plain data.
//!
//! One struct per packet, shared by both protocol versions: fields that only MQTT 5 carries
//! (properties, most reason codes) are left at their defaults when 3.1.1 is decoded and are
//! silently dropped when 3.1.1 is encoded. Strings are owned `String`s (validated UTF-8 without
//! U+0000); payloads and binary data are `Bytes` sliced from the read buffer without a copy.

use bytes::Bytes;

use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use crate::reason::ReasonCode;
use crate::types::{PacketType, ProtocolVersion, QoS, RetainHandling};

/// Any MQTT control packet.
///
/// CONNECT is boxed because it is by far the largest and is seen once per connection; keeping
/// it inline would make every PUBLISH moved through a channel pay for its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only: encoding it for 3.1.1 is an [`crate::EncodeError`].
    Auth(Auth),
}

impl Packet {
    /// The packet's type, for logs and dispatch.
    #[must_use]
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT: the first packet of every connection (spec 3.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Taken from the protocol level byte; it decides how every later packet is read.
    pub protocol: ProtocolVersion,
    /// "Clean Session" in 3.1.1, "Clean Start" in 5.0.
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// May be empty (the server then assigns one, or refuses it in 3.1.1 without clean start:
    /// that decision belongs to the engine, not the codec).
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK (spec 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// Always an MQTT 5 code; 3.1.1 return codes are translated both ways (see
    /// [`ReasonCode::v311_connack_return_code`]).
    pub reason_code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH (spec 3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in MQTT 5 when a topic alias stands for it; topic-level rules (wildcards,
    /// length of levels) are the engine's business, not the codec's.
    pub topic: String,
    /// Present exactly when `qos` is above 0.
    pub packet_id: Option<u16>,
    pub properties: PublishProperties,
    /// Zero-copy slice of the read buffer.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (spec 3.4 to 3.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResponse {
    pub packet_id: u16,
    /// Only MQTT 5 carries it; 3.1.1 decodes as [`ReasonCode::SUCCESS`].
    pub reason_code: ReasonCode,
    pub properties: AckProperties,
}

/// SUBSCRIBE (spec 3.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Never empty on the wire. Filters are raw strings, including any `$share/` prefix.
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: SubscribeProperties,
}

/// The options byte that follows each filter of a SUBSCRIBE.
///
/// 3.1.1 only carries `qos`; the other fields are decoded as their defaults and not encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// SUBACK (spec 3.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter of the SUBSCRIBE, in order. 3.1.1 only carries granted QoS or 0x80.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// UNSUBSCRIBE (spec 3.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// Never empty on the wire.
    pub filters: Vec<String>,
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK (spec 3.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// One per filter in MQTT 5; empty on the wire in 3.1.1, so decoded empty there.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// DISCONNECT (spec 3.14). In 3.1.1 it has no body at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: DisconnectProperties,
}

/// AUTH (spec 3.15), MQTT 5 only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: AuthProperties,
}
