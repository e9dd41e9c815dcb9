//! MQTT 5 reason codes and their translation to the 3.1.1 return codes.

use crate::types::PacketType;

/// An MQTT 5 reason code (spec section 2.4).
///
/// A newtype over the byte rather than an enum: the same value has different names in
/// different packets (0x00 is Success, Normal disconnection and Granted QoS 0), and a peer may
/// send a code this codec validates per packet type but never needs to name. The engine speaks
/// in reason codes for both protocol versions; [`ReasonCode::v311_connack_return_code`] and
/// [`ReasonCode::v311_suback`] translate at the edge.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: Self = Self(0x00);
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    pub const GRANTED_QOS_0: Self = Self(0x00);
    pub const GRANTED_QOS_1: Self = Self(0x01);
    pub const GRANTED_QOS_2: Self = Self(0x02);
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    pub const RE_AUTHENTICATE: Self = Self(0x19);
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const BANNED: Self = Self(0x8A);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    pub const SERVER_MOVED: Self = Self(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    /// Codes of 0x80 and above report a failure (spec 2.4).
    #[must_use]
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The granted-QoS code for a subscription that succeeded at `qos`.
    #[must_use]
    pub fn granted(qos: crate::QoS) -> Self {
        Self(qos as u8)
    }

    /// The CONNACK return code a 3.1.1 client understands (3.1.1 table 3.1).
    ///
    /// 3.1.1 has only five refusals, so the MQTT 5 codes are folded onto the closest one:
    /// - success codes (below 0x80) -> 0 accepted;
    /// - 0x84 unsupported protocol version -> 1;
    /// - 0x85 client identifier not valid -> 2 identifier rejected;
    /// - 0x86 bad user name or password -> 4;
    /// - refusals about *who* the client is (0x87 not authorized, 0x8A banned, 0x8C bad
    ///   authentication method) -> 5 not authorized;
    /// - every other error (server unavailable, busy, quota, moved, malformed, ...) -> 3 server
    ///   unavailable, because it tells the client that retrying later, or elsewhere, may work,
    ///   and it claims nothing about its credentials.
    #[must_use]
    pub fn v311_connack_return_code(self) -> u8 {
        match self {
            c if !c.is_error() => 0,
            Self::UNSUPPORTED_PROTOCOL_VERSION => 1,
            Self::CLIENT_IDENTIFIER_NOT_VALID => 2,
            Self::BAD_USER_NAME_OR_PASSWORD => 4,
            Self::NOT_AUTHORIZED | Self::BANNED | Self::BAD_AUTHENTICATION_METHOD => 5,
            _ => 3,
        }
    }

    /// The reason code for a 3.1.1 CONNACK return code, `None` for the reserved values 6-255.
    #[must_use]
    pub fn from_v311_connack_return_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::SUCCESS,
            1 => Self::UNSUPPORTED_PROTOCOL_VERSION,
            2 => Self::CLIENT_IDENTIFIER_NOT_VALID,
            3 => Self::SERVER_UNAVAILABLE,
            4 => Self::BAD_USER_NAME_OR_PASSWORD,
            5 => Self::NOT_AUTHORIZED,
            _ => return None,
        })
    }

    /// The SUBACK return code a 3.1.1 client understands: the granted QoS 0, 1 or 2, or 0x80
    /// for every failure (3.1.1 has a single failure code).
    #[must_use]
    pub fn v311_suback(self) -> u8 {
        match self.0 {
            code @ 0..=2 => code,
            _ => 0x80,
        }
    }

    /// Whether the spec allows this code in a packet of type `packet` (spec 2.4, table 2-6 and
    /// the reason code tables of each packet). The decoder refuses any other code.
    #[must_use]
    pub fn allowed_in(self, packet: PacketType) -> bool {
        let allowed: &[u8] = match packet {
            PacketType::ConnAck => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            PacketType::PubAck | PacketType::PubRec => {
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
            }
            PacketType::PubRel | PacketType::PubComp => &[0x00, 0x92],
            PacketType::SubAck => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            PacketType::UnsubAck => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            PacketType::Disconnect => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
            PacketType::Auth => &[0x00, 0x18, 0x19],
            PacketType::Connect
            | PacketType::Publish
            | PacketType::Subscribe
            | PacketType::Unsubscribe
            | PacketType::PingReq
            | PacketType::PingResp => &[],
        };
        allowed.contains(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_connack_return_codes() {
        let table = [
            (ReasonCode::SUCCESS, 0),
            (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, 1),
            (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, 2),
            (ReasonCode::SERVER_UNAVAILABLE, 3),
            (ReasonCode::SERVER_BUSY, 3),
            (ReasonCode::QUOTA_EXCEEDED, 3),
            (ReasonCode::MALFORMED_PACKET, 3),
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
            (ReasonCode::NOT_AUTHORIZED, 5),
            (ReasonCode::BANNED, 5),
            (ReasonCode::BAD_AUTHENTICATION_METHOD, 5),
        ];
        for (code, expected) in table {
            assert_eq!(code.v311_connack_return_code(), expected, "{code:?}");
        }
    }

    #[test]
    fn v311_connack_return_codes_round_trip() {
        for raw in 0..=5u8 {
            let code = ReasonCode::from_v311_connack_return_code(raw);
            assert_eq!(code.map(ReasonCode::v311_connack_return_code), Some(raw));
        }
        assert_eq!(ReasonCode::from_v311_connack_return_code(6), None);
    }

    #[test]
    fn v311_suback_codes() {
        let table = [
            (ReasonCode::GRANTED_QOS_0, 0),
            (ReasonCode::GRANTED_QOS_1, 1),
            (ReasonCode::GRANTED_QOS_2, 2),
            (ReasonCode::UNSPECIFIED_ERROR, 0x80),
            (ReasonCode::NOT_AUTHORIZED, 0x80),
            (ReasonCode::TOPIC_FILTER_INVALID, 0x80),
        ];
        for (code, expected) in table {
            assert_eq!(code.v311_suback(), expected, "{code:?}");
        }
    }

    #[test]
    fn is_error_boundary() {
        assert!(!ReasonCode(0x7F).is_error());
        assert!(ReasonCode(0x80).is_error());
        assert!(!ReasonCode::RE_AUTHENTICATE.is_error());
    }

    #[test]
    fn allowed_codes_per_packet() {
        let table = [
            (ReasonCode::SUCCESS, PacketType::PubAck, true),
            (
                ReasonCode::NO_MATCHING_SUBSCRIBERS,
                PacketType::PubAck,
                true,
            ),
            (
                ReasonCode::NO_MATCHING_SUBSCRIBERS,
                PacketType::PubRel,
                false,
            ),
            (
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                PacketType::PubComp,
                true,
            ),
            (ReasonCode::GRANTED_QOS_2, PacketType::SubAck, true),
            (ReasonCode::GRANTED_QOS_2, PacketType::UnsubAck, false),
            (
                ReasonCode::DISCONNECT_WITH_WILL,
                PacketType::Disconnect,
                true,
            ),
            (ReasonCode::DISCONNECT_WITH_WILL, PacketType::ConnAck, false),
            (ReasonCode::CONTINUE_AUTHENTICATION, PacketType::Auth, true),
            (ReasonCode::SUCCESS, PacketType::Publish, false),
        ];
        for (code, packet, expected) in table {
            assert_eq!(code.allowed_in(packet), expected, "{code:?} in {packet}");
        }
    }
}
