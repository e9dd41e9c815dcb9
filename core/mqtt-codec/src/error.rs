//! Decode and encode errors.
//!
//! Every way a frame can be malformed or break a protocol rule checkable without session state
//! has its own variant, so tests can assert the exact rule and the adapter can answer with the
//! reason code the spec asks for ([`DecodeError::reason_code`]).

use thiserror::Error;

use crate::reason::ReasonCode;
use crate::types::PacketType;

/// Why a frame could not be decoded. After any of these the connection must be closed
/// (after a CONNACK or DISCONNECT carrying [`DecodeError::reason_code`] where the spec allows
/// one); the decoder makes no promise about what is left in the buffer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The remaining length uses more than four bytes, or more bytes than its value needs
    /// (spec 1.5.5 / 2.2.3).
    #[error("remaining length is longer than four bytes or not minimally encoded")]
    InvalidRemainingLength,
    /// A variable byte integer inside the packet (property length, property id, subscription
    /// identifier) uses more than four bytes, or more bytes than its value needs.
    #[error("variable byte integer is longer than four bytes or not minimally encoded")]
    InvalidVariableInteger,
    /// Fixed-header flags other than the ones the packet type requires (spec 2.1.3).
    #[error("reserved flags {flags:#06b} set on {packet_type}")]
    ReservedFlags { packet_type: PacketType, flags: u8 },
    /// QoS 3 in a PUBLISH header, a will or a subscription.
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A string is not well-formed UTF-8 (this includes the surrogates U+D800..U+DFFF).
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains U+0000")]
    NulInString,
    /// Packet type 0, or 15 (AUTH) in 3.1.1.
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// A CONNECT with a protocol level other than 4 or 5, or an MQTT 3.1 (`MQIsdp`) CONNECT.
    /// The adapter answers it with a CONNACK (3.1.1 return code 1, MQTT 5 reason code 0x84)
    /// before closing, as [MQTT-3.1.2-2] asks.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// The CONNECT protocol name is not `MQTT` [MQTT-3.1.2-1].
    #[error("protocol name is not \"MQTT\"")]
    InvalidProtocolName,
    /// Bit 0 of the CONNECT flags is set [MQTT-3.1.2-3].
    #[error("reserved CONNECT flag is set")]
    ReservedConnectFlag,
    /// Will QoS or will retain set without the will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    #[error("will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    /// 3.1.1 only: the password flag without the user name flag [MQTT-3.1.2-22].
    #[error("password flag set without the user name flag")]
    PasswordWithoutUsername,
    /// Reserved bits of the CONNACK acknowledge flags are set [MQTT-3.2.2-1].
    #[error("reserved CONNACK flags {0:#04x} set")]
    ReservedConnAckFlags(u8),
    /// 3.1.1: a refused CONNACK with session present set [MQTT-3.2.2-4].
    #[error("session present set on a refused CONNACK")]
    SessionPresentOnRefusal,
    /// A property that may appear once appears twice.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property identifier the spec does not define.
    #[error("unknown property identifier {0:#x}")]
    UnknownProperty(u32),
    /// A defined property in a packet (or will) that may not carry it.
    #[error("property {property:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        property: u8,
        /// The packet name, or "will" for will properties.
        packet: &'static str,
    },
    /// A property value the spec forbids (0 for receive maximum, maximum packet size or a
    /// subscription identifier, a boolean that is not 0 or 1, a payload format above 1, ...).
    #[error("property {property:#04x} has an invalid value")]
    InvalidPropertyValue { property: u8 },
    /// MQTT 5 PUBLISH with an empty topic and no topic alias (spec 3.3.2.3.4).
    #[error("empty topic without a topic alias")]
    EmptyTopicWithoutAlias,
    /// CONNECT with authentication data but no authentication method (spec 3.1.2.11.10).
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
    /// Topic alias 0 [MQTT-3.3.2-8].
    #[error("topic alias 0")]
    TopicAliasZero,
    /// The whole packet (fixed header included) is above the receiver's maximum; detected from
    /// the fixed header alone, before the body arrives.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: u32, max: u32 },
    /// A field runs past the end of the packet (or of its property section).
    #[error("packet ends inside a field")]
    Truncated,
    /// Bytes are left after the last field of a packet that has no payload to absorb them.
    #[error("unexpected bytes after the end of the packet")]
    TrailingBytes,
    /// Packet identifier 0 where one is required [MQTT-2.2.1-3].
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// SUBSCRIBE without any filter [MQTT-3.8.3-3].
    #[error("SUBSCRIBE without topic filters")]
    EmptySubscribe,
    /// UNSUBSCRIBE without any filter [MQTT-3.10.3-2].
    #[error("UNSUBSCRIBE without topic filters")]
    EmptyUnsubscribe,
    /// Reserved bits, QoS 3 or retain handling 3 in a subscription options byte.
    #[error("invalid subscription options byte {0:#04x}")]
    InvalidSubscriptionOptions(u8),
    /// A reason code (or 3.1.1 return code) that this packet type may not carry.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { packet: PacketType, code: u8 },
    /// The first packet of a connection is not CONNECT [MQTT-3.1.0-1].
    #[error("first packet is {0}, not CONNECT")]
    UnexpectedFirstPacket(PacketType),
}

impl DecodeError {
    /// The MQTT 5 reason code to put in the CONNACK or DISCONNECT sent before closing.
    ///
    /// The spec distinguishes a Malformed Packet (cannot be parsed as specified) from a
    /// Protocol Error (parsed, but breaks a rule); each variant follows the wording of the rule
    /// it enforces. Two get their own codes: an unsupported protocol (level or name) is 0x84 and
    /// a too large packet is 0x95; topic alias 0 is 0x94 as 3.3.2.3.4 asks.
    #[must_use]
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::UnsupportedProtocolVersion(_) | Self::InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue { .. }
            | Self::ZeroPacketId
            | Self::EmptySubscribe
            | Self::EmptyUnsubscribe
            | Self::SessionPresentOnRefusal
            | Self::EmptyTopicWithoutAlias
            | Self::AuthenticationDataWithoutMethod
            | Self::UnexpectedFirstPacket(_) => ReasonCode::PROTOCOL_ERROR,
            Self::InvalidRemainingLength
            | Self::InvalidVariableInteger
            | Self::ReservedFlags { .. }
            | Self::InvalidQoS(_)
            | Self::DupWithQoS0
            | Self::InvalidUtf8
            | Self::NulInString
            | Self::UnknownPacketType(_)
            | Self::ReservedConnectFlag
            | Self::WillFlagsWithoutWill
            | Self::PasswordWithoutUsername
            | Self::ReservedConnAckFlags(_)
            | Self::UnknownProperty(_)
            | Self::PropertyNotAllowed { .. }
            | Self::Truncated
            | Self::TrailingBytes
            | Self::InvalidSubscriptionOptions(_)
            | Self::InvalidReasonCode { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Why a packet could not be encoded: the value does not fit the wire format, or would be a
/// frame the peer must refuse (so the broker never sends one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field of {0} bytes is longer than 65535")]
    FieldTooLong(usize),
    /// A string contains U+0000, which the peer would refuse.
    #[error("string contains U+0000")]
    NulInString,
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    /// A variable byte integer value (subscription identifier) above 268,435,455.
    #[error("variable byte integer {0} exceeds 268435455")]
    VariableIntegerTooLarge(u32),
    /// A QoS 1 or 2 PUBLISH without a packet identifier.
    #[error("QoS {0} PUBLISH without a packet identifier")]
    MissingPacketId(u8),
    /// A QoS 0 PUBLISH with a packet identifier (the wire has no room for it).
    #[error("QoS 0 PUBLISH with a packet identifier")]
    UnexpectedPacketId,
    /// DUP on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// Packet identifier 0.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// MQTT 5 PUBLISH with an empty topic and no topic alias to stand for it.
    #[error("empty topic without a topic alias")]
    EmptyTopicWithoutAlias,
    /// SUBSCRIBE or UNSUBSCRIBE without filters.
    #[error("{0} without topic filters")]
    NoFilters(PacketType),
    /// A property value the peer would refuse (0 for topic alias, receive maximum, maximum
    /// packet size or subscription identifier; payload format indicator above 1).
    #[error("property {property:#04x} has an invalid value")]
    InvalidPropertyValue { property: u8 },
    /// 3.1.1 CONNECT with a password but no user name [MQTT-3.1.2-22].
    #[error("password without a user name in a 3.1.1 CONNECT")]
    PasswordWithoutUsername,
    /// The packet does not exist in this protocol version (AUTH in 3.1.1).
    #[error("{0} does not exist in MQTT 3.1.1")]
    NotInVersion(PacketType),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_follow_the_spec_wording() {
        let table = [
            (
                DecodeError::InvalidRemainingLength,
                ReasonCode::MALFORMED_PACKET,
            ),
            (
                DecodeError::ReservedConnectFlag,
                ReasonCode::MALFORMED_PACKET,
            ),
            (
                DecodeError::DuplicateProperty(0x11),
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                DecodeError::InvalidPropertyValue { property: 0x21 },
                ReasonCode::PROTOCOL_ERROR,
            ),
            (DecodeError::TopicAliasZero, ReasonCode::TOPIC_ALIAS_INVALID),
            (
                DecodeError::PacketTooLarge { size: 10, max: 5 },
                ReasonCode::PACKET_TOO_LARGE,
            ),
            (
                DecodeError::UnsupportedProtocolVersion(3),
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ),
            (
                DecodeError::InvalidProtocolName,
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ),
            (
                DecodeError::UnexpectedFirstPacket(PacketType::Publish),
                ReasonCode::PROTOCOL_ERROR,
            ),
        ];
        for (error, code) in table {
            assert_eq!(error.reason_code(), code, "{error}");
        }
    }
}
