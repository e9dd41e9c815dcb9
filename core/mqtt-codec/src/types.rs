//! Small wire enums shared by every packet: protocol version, QoS, retain handling and the
//! packet type carried in the high nibble of the fixed header.

use std::fmt;

use crate::error::DecodeError;

/// The MQTT protocol revision a connection speaks, fixed by its CONNECT packet.
///
/// Only 3.1.1 (level 4) and 5.0 (level 5) exist here: 3.1 (`MQIsdp`, level 3) is refused
/// with [`DecodeError::UnsupportedProtocolVersion`] so that the adapter can answer it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    #[default]
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of the CONNECT variable header.
    #[must_use]
    pub fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// The version for a protocol level byte, if this codec speaks it.
    #[must_use]
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            4 => Some(Self::V311),
            5 => Some(Self::V5),
            _ => None,
        }
    }
}

/// Quality of service of a PUBLISH, a will or a subscription.
///
/// The codec keeps its own enum instead of the model's so that it stays free of every other
/// iothub crate; the adapter converts between the two.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// Fire and forget.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged with PUBACK, may be duplicated.
    AtLeastOnce = 1,
    /// Four-way handshake, delivered exactly once.
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            other => Err(DecodeError::InvalidQoS(other)),
        }
    }
}

/// MQTT 5 subscription option: when retained messages are sent for a new subscription.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe (also the only 3.1.1 behaviour).
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist before.
    SendIfNewSubscription = 1,
    /// Never send retained messages for this subscribe.
    DoNotSend = 2,
}

impl TryFrom<u8> for RetainHandling {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Self::SendAtSubscribe),
            1 => Ok(Self::SendIfNewSubscription),
            2 => Ok(Self::DoNotSend),
            other => Err(DecodeError::InvalidSubscriptionOptions(other << 4)),
        }
    }
}

/// The control packet type, the high nibble of the first fixed-header byte.
///
/// Used in errors so that a log line says which packet was wrong, and by callers that want to
/// dispatch without matching on a whole [`crate::Packet`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// MQTT 5 only; type 15 is reserved in 3.1.1.
    Auth = 15,
}

impl PacketType {
    /// The packet type for a fixed-header nibble; `None` for the reserved value 0 and for
    /// values above 15.
    #[must_use]
    pub fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The spec's upper-case name, as used in logs and error messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    /// The fixed-header flags every packet but PUBLISH must carry (PUBLISH flags vary).
    pub(crate) fn required_flags(self) -> u8 {
        match self {
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
