//! Hand-checked frames: the specs' non-normative examples completed into whole packets, one
//! frame per packet form, and one malformed frame per rule the decoder enforces. Each hex
//! string is grouped by field so it can be checked against the spec by eye.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{decode_one, encode_one, hex};
use iothub_mqtt_codec::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    DecodeError, Disconnect, DisconnectProperties, EncodeError, LastWill, Packet, PacketType,
    ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, WillProperties, decode, encode, encoded_len,
};

use ProtocolVersion::{V5, V311};

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Frames that must decode to the packet and encode back to the same bytes.
fn both_directions() -> Vec<(&'static str, ProtocolVersion, &'static str, Packet)> {
    let will_example = |properties| LastWill {
        topic: "w".into(),
        payload: b("m"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    };
    vec![
        (
            // 3.1.1 section 3.1.2.10, figure 3.6: flags 0xCE, keep alive 10; payload completed.
            "3.1.1 CONNECT spec example",
            V311,
            "10 19 | 0004 4d515454 | 04 | ce | 000a | 0001 63 | 0001 77 | 0001 6d | 0001 75 | 0001 70",
            Packet::Connect(Box::new(Connect {
                protocol: V311,
                clean_start: true,
                keep_alive: 10,
                client_id: "c".into(),
                will: Some(will_example(WillProperties::default())),
                username: Some("u".into()),
                password: Some(b("p")),
                properties: ConnectProperties::default(),
            })),
        ),
        (
            // 5.0 section 3.1.2.12, figure 3-6: flags 0xCE, keep alive 10, session expiry 10.
            "5.0 CONNECT spec example",
            V5,
            "10 20 | 0004 4d515454 | 05 | ce | 000a | 05 11 0000000a | 0001 63 | 00 | 0001 77 | 0001 6d | 0001 75 | 0001 70",
            Packet::Connect(Box::new(Connect {
                protocol: V5,
                clean_start: true,
                keep_alive: 10,
                client_id: "c".into(),
                will: Some(will_example(WillProperties::default())),
                username: Some("u".into()),
                password: Some(b("p")),
                properties: ConnectProperties {
                    session_expiry_interval: Some(10),
                    ..ConnectProperties::default()
                },
            })),
        ),
        (
            // 5.0: a password without a user name is allowed (3.1.2.9).
            "5.0 CONNECT password only, empty client id",
            V5,
            "10 13 | 0004 4d515454 | 05 | 40 | 0000 | 00 | 0000 | 0004 73656372",
            Packet::Connect(Box::new(Connect {
                protocol: V5,
                password: Some(b("secr")),
                ..Connect::default()
            })),
        ),
        (
            "3.1.1 CONNACK accepted, session present",
            V311,
            "20 02 | 01 | 00",
            Packet::ConnAck(ConnAck {
                session_present: true,
                ..ConnAck::default()
            }),
        ),
        (
            "3.1.1 CONNACK not authorized",
            V311,
            "20 02 | 00 | 05",
            Packet::ConnAck(ConnAck {
                reason_code: ReasonCode::NOT_AUTHORIZED,
                ..ConnAck::default()
            }),
        ),
        (
            "5.0 CONNACK unsupported protocol version",
            V5,
            "20 03 | 00 | 84 | 00",
            Packet::ConnAck(ConnAck {
                reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ..ConnAck::default()
            }),
        ),
        (
            "5.0 CONNACK with assigned client identifier and limits",
            V5,
            "20 14 | 00 | 00 | 11 | 24 01 | 25 00 | 12 0005 6175746f31 | 28 00 | 13 001e",
            Packet::ConnAck(ConnAck {
                properties: ConnAckProperties {
                    assigned_client_identifier: Some("auto1".into()),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    wildcard_subscription_available: Some(false),
                    server_keep_alive: Some(30),
                    ..ConnAckProperties::default()
                },
                ..ConnAck::default()
            }),
        ),
        (
            // 3.1.1 section 3.3.2.3, figure 3.11: topic "a/b", packet identifier 10.
            "3.1.1 PUBLISH spec example",
            V311,
            "32 07 | 0003 612f62 | 000a",
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "a/b".into(),
                packet_id: Some(10),
                ..Publish::default()
            }),
        ),
        (
            // 5.0 section 3.3.2.3, figure 3-9: the same plus an empty property length.
            "5.0 PUBLISH spec example",
            V5,
            "32 08 | 0003 612f62 | 000a | 00",
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "a/b".into(),
                packet_id: Some(10),
                ..Publish::default()
            }),
        ),
        (
            "3.1.1 PUBLISH QoS 2, DUP, retain, payload",
            V311,
            "3d 0a | 0003 612f62 | 1234 | 686579",
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: "a/b".into(),
                packet_id: Some(0x1234),
                payload: b("hey"),
                ..Publish::default()
            }),
        ),
        (
            "5.0 PUBLISH empty topic with topic alias",
            V5,
            "30 07 | 0000 | 03 2300 05 | 78",
            Packet::Publish(Publish {
                properties: PublishProperties {
                    topic_alias: Some(5),
                    ..PublishProperties::default()
                },
                payload: b("x"),
                ..Publish::default()
            }),
        ),
        (
            "5.0 PUBLISH two subscription identifiers, one of two bytes",
            V5,
            "30 09 | 0001 74 | 05 0b 8001 0b 01",
            Packet::Publish(Publish {
                topic: "t".into(),
                properties: PublishProperties {
                    subscription_identifiers: vec![128, 1],
                    ..PublishProperties::default()
                },
                ..Publish::default()
            }),
        ),
        (
            "3.1.1 PUBACK",
            V311,
            "40 02 | 0001",
            Packet::PubAck(PubResponse {
                packet_id: 1,
                ..PubResponse::default()
            }),
        ),
        (
            "5.0 PUBACK short form",
            V5,
            "40 02 | 0001",
            Packet::PubAck(PubResponse {
                packet_id: 1,
                ..PubResponse::default()
            }),
        ),
        (
            "5.0 PUBACK reason code, no properties",
            V5,
            "40 03 | 0001 | 10",
            Packet::PubAck(PubResponse {
                packet_id: 1,
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..PubResponse::default()
            }),
        ),
        (
            "5.0 PUBREC with reason string",
            V5,
            "50 0a | 0001 | 87 | 06 1f 0003 6e6f70",
            Packet::PubRec(PubResponse {
                packet_id: 1,
                reason_code: ReasonCode::NOT_AUTHORIZED,
                properties: AckProperties {
                    reason_string: Some("nop".into()),
                    ..AckProperties::default()
                },
            }),
        ),
        (
            "5.0 PUBREL packet identifier not found",
            V5,
            "62 03 | 0001 | 92",
            Packet::PubRel(PubResponse {
                packet_id: 1,
                reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                ..PubResponse::default()
            }),
        ),
        (
            "3.1.1 PUBCOMP",
            V311,
            "70 02 | ffff",
            Packet::PubComp(PubResponse {
                packet_id: 0xFFFF,
                ..PubResponse::default()
            }),
        ),
        (
            // 3.1.1 section 3.8.3, figure 3.22: "a/b" QoS 1 and "c/d" QoS 2, packet id 10.
            "3.1.1 SUBSCRIBE spec example",
            V311,
            "82 0e | 000a | 0003 612f62 01 | 0003 632f64 02",
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                filters: vec![
                    (
                        "a/b".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    ),
                    (
                        "c/d".into(),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            ..Default::default()
                        },
                    ),
                ],
                properties: SubscribeProperties::default(),
            }),
        ),
        (
            "5.0 SUBSCRIBE identifier and every option bit",
            V5,
            "82 0b | 0001 | 02 0b 05 | 0003 612f62 2d",
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![(
                    "a/b".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                )],
                properties: SubscribeProperties {
                    subscription_identifier: Some(5),
                    ..Default::default()
                },
            }),
        ),
        (
            // 3.1.1 section 3.9.3, figure 3.26: success QoS 0, 2 and a failure.
            "3.1.1 SUBACK spec example",
            V311,
            "90 05 | 000a | 00 02 80",
            Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_0,
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode::UNSPECIFIED_ERROR,
                ],
                properties: AckProperties::default(),
            }),
        ),
        (
            "5.0 SUBACK with reason string",
            V5,
            "90 09 | 000a | 05 1f 0002 6e6f | 8f",
            Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![ReasonCode::TOPIC_FILTER_INVALID],
                properties: AckProperties {
                    reason_string: Some("no".into()),
                    ..AckProperties::default()
                },
            }),
        ),
        (
            // 3.1.1 section 3.10.3, figure 3.30: "a/b" and "c/d".
            "3.1.1 UNSUBSCRIBE spec example",
            V311,
            "a2 0c | 000a | 0003 612f62 | 0003 632f64",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 10,
                filters: vec!["a/b".into(), "c/d".into()],
                properties: UnsubscribeProperties::default(),
            }),
        ),
        (
            "5.0 UNSUBSCRIBE with user property",
            V5,
            "a2 0f | 000a | 07 26 0001 6b 0001 76 | 0003 612f62",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 10,
                filters: vec!["a/b".into()],
                properties: UnsubscribeProperties {
                    user_properties: vec![("k".into(), "v".into())],
                },
            }),
        ),
        (
            "3.1.1 UNSUBACK",
            V311,
            "b0 02 | 000a",
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                ..UnsubAck::default()
            }),
        ),
        (
            "5.0 UNSUBACK",
            V5,
            "b0 05 | 000a | 00 | 00 11",
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
                properties: AckProperties::default(),
            }),
        ),
        ("3.1.1 PINGREQ", V311, "c0 00", Packet::PingReq),
        ("5.0 PINGRESP", V5, "d0 00", Packet::PingResp),
        (
            "3.1.1 DISCONNECT",
            V311,
            "e0 00",
            Packet::Disconnect(Disconnect::default()),
        ),
        (
            "5.0 DISCONNECT short form",
            V5,
            "e0 00",
            Packet::Disconnect(Disconnect::default()),
        ),
        (
            "5.0 DISCONNECT session taken over",
            V5,
            "e0 01 | 8e",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::SESSION_TAKEN_OVER,
                properties: DisconnectProperties::default(),
            }),
        ),
        (
            "5.0 DISCONNECT use another server",
            V5,
            "e0 0c | 9c | 0a 1c 0007 6f746865723a31",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::USE_ANOTHER_SERVER,
                properties: DisconnectProperties {
                    server_reference: Some("other:1".into()),
                    ..DisconnectProperties::default()
                },
            }),
        ),
        (
            "5.0 AUTH short form",
            V5,
            "f0 00",
            Packet::Auth(Auth::default()),
        ),
        (
            "5.0 AUTH continue",
            V5,
            "f0 0f | 18 | 0d 15 0005 5343524d31 16 0002 0102",
            Packet::Auth(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some("SCRM1".into()),
                    authentication_data: Some(Bytes::from_static(&[1, 2])),
                    ..AuthProperties::default()
                },
            }),
        ),
    ]
}

#[test]
fn hand_checked_frames_decode_and_encode() {
    let mut failures = Vec::new();
    for (name, version, text, packet) in both_directions() {
        let bytes = hex(text);
        let first = if matches!(packet, Packet::Connect(_)) {
            None
        } else {
            Some(version)
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = decode(&mut buf, first, u32::MAX);
        if decoded.as_ref() != Ok(&Some(packet.clone())) || !buf.is_empty() {
            failures.push(format!(
                "decode {name}: {decoded:?}, {} bytes left",
                buf.len()
            ));
        }
        let encoded = encode_one(&packet, version);
        if encoded != bytes {
            failures.push(format!(
                "encode {name}:\n  expected {bytes:02x?}\n  got      {encoded:02x?}"
            ));
        }
        assert_eq!(
            encoded_len(&packet, version),
            Ok(bytes.len()),
            "encoded_len {name}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Forms a peer may send that we decode but never write ourselves.
#[test]
fn lenient_forms_decode() {
    let table: Vec<(&str, ProtocolVersion, &str, Packet)> = vec![
        (
            "5.0 PUBACK with Success and empty properties spelled out",
            V5,
            "40 04 | 0001 | 00 | 00",
            Packet::PubAck(PubResponse {
                packet_id: 1,
                ..PubResponse::default()
            }),
        ),
        (
            "5.0 DISCONNECT with Normal and empty properties spelled out",
            V5,
            "e0 02 | 00 | 00",
            Packet::Disconnect(Disconnect::default()),
        ),
        (
            "2-byte remaining length 128 (smallest)",
            V311,
            "30 80 01 | 0001 74",
            Packet::Publish(Publish {
                topic: "t".into(),
                payload: Bytes::from(vec![0xAB; 125]),
                ..Publish::default()
            }),
        ),
    ];
    for (name, version, text, expected) in table {
        let mut bytes = hex(text);
        if let Packet::Publish(publish) = &expected {
            bytes.extend_from_slice(&publish.payload);
        }
        assert_eq!(decode_one(&bytes, Some(version)), Ok(expected), "{name}");
    }
}

/// One malformed frame per rule. `None` as version means "first packet of the connection".
fn malformed() -> Vec<(
    &'static str,
    Option<ProtocolVersion>,
    &'static str,
    DecodeError,
)> {
    use DecodeError as E;
    let s5 = Some(V5);
    let s3 = Some(V311);
    vec![
        (
            "first packet not CONNECT",
            None,
            "30 02 0000",
            E::UnexpectedFirstPacket(PacketType::Publish),
        ),
        (
            "first packet PINGREQ",
            None,
            "c0 00",
            E::UnexpectedFirstPacket(PacketType::PingReq),
        ),
        ("packet type 0", s5, "00 00", E::UnknownPacketType(0)),
        ("AUTH in 3.1.1", s3, "f0 00", E::UnknownPacketType(15)),
        (
            "CONNECT flags",
            None,
            "12 00",
            E::ReservedFlags {
                packet_type: PacketType::Connect,
                flags: 2,
            },
        ),
        (
            "PUBACK flags",
            s5,
            "41 02 0001",
            E::ReservedFlags {
                packet_type: PacketType::PubAck,
                flags: 1,
            },
        ),
        (
            "PUBREL flags 0",
            s3,
            "60 02 0001",
            E::ReservedFlags {
                packet_type: PacketType::PubRel,
                flags: 0,
            },
        ),
        (
            "SUBSCRIBE flags 0",
            s3,
            "80 06 0001 0001 61 00",
            E::ReservedFlags {
                packet_type: PacketType::Subscribe,
                flags: 0,
            },
        ),
        (
            "UNSUBSCRIBE flags 0",
            s5,
            "a0 05 0001 00 0000",
            E::ReservedFlags {
                packet_type: PacketType::Unsubscribe,
                flags: 0,
            },
        ),
        (
            "PINGREQ flags",
            s3,
            "c8 00",
            E::ReservedFlags {
                packet_type: PacketType::PingReq,
                flags: 8,
            },
        ),
        (
            "DISCONNECT flags",
            s5,
            "ef 00",
            E::ReservedFlags {
                packet_type: PacketType::Disconnect,
                flags: 15,
            },
        ),
        ("PUBLISH QoS 3", s3, "36 05 0001 74 0001", E::InvalidQoS(3)),
        (
            "PUBLISH DUP at QoS 0 [MQTT-3.3.1-2]",
            s5,
            "38 04 0001 74 00",
            E::DupWithQoS0,
        ),
        (
            "remaining length of five bytes",
            s3,
            "30 ff ff ff ff 01",
            E::InvalidRemainingLength,
        ),
        (
            "remaining length not minimal",
            s3,
            "c0 80 00",
            E::InvalidRemainingLength,
        ),
        ("topic not UTF-8", s3, "30 04 0002 c328", E::InvalidUtf8),
        (
            "topic with a surrogate",
            s3,
            "30 05 0003 eda080",
            E::InvalidUtf8,
        ),
        ("topic with U+0000", s3, "30 05 0003 610062", E::NulInString),
        (
            "MQTT 3.1 (MQIsdp)",
            None,
            "10 0f 0006 4d5149736470 03 02 003c 0001 63",
            E::UnsupportedProtocolVersion(3),
        ),
        (
            "protocol level 6",
            None,
            "10 0d 0004 4d515454 06 02 003c 00 0001 63",
            E::UnsupportedProtocolVersion(6),
        ),
        (
            "protocol level 3 named MQTT",
            None,
            "10 0c 0004 4d515454 03 02 003c 0001 63",
            E::UnsupportedProtocolVersion(3),
        ),
        (
            "protocol name MQTX",
            None,
            "10 0c 0004 4d515458 04 02 003c 0001 63",
            E::InvalidProtocolName,
        ),
        (
            "protocol name mqtt",
            None,
            "10 0c 0004 6d717474 04 02 003c 0001 63",
            E::InvalidProtocolName,
        ),
        (
            "CONNECT reserved flag [MQTT-3.1.2-3]",
            None,
            "10 0c 0004 4d515454 04 03 003c 0001 63",
            E::ReservedConnectFlag,
        ),
        (
            "will QoS without will",
            None,
            "10 0c 0004 4d515454 04 0a 003c 0001 63",
            E::WillFlagsWithoutWill,
        ),
        (
            "will retain without will",
            None,
            "10 0d 0004 4d515454 05 22 003c 00 0001 63",
            E::WillFlagsWithoutWill,
        ),
        (
            "will QoS 3",
            None,
            "10 12 0004 4d515454 04 1e 003c 0001 63 0001 77 0001 6d",
            E::InvalidQoS(3),
        ),
        (
            "3.1.1 password without user name",
            None,
            "10 0f 0004 4d515454 04 42 003c 0001 63 0001 70",
            E::PasswordWithoutUsername,
        ),
        (
            "CONNECT missing client id",
            None,
            "10 0a 0004 4d515454 04 02 003c",
            E::Truncated,
        ),
        (
            "CONNECT client id longer than packet",
            None,
            "10 0c 0004 4d515454 04 02 003c 0005 63",
            E::Truncated,
        ),
        (
            "CONNECT trailing byte",
            None,
            "10 0e 0004 4d515454 04 02 003c 0001 63 ff",
            E::TrailingBytes,
        ),
        (
            "CONNECT will payload missing",
            None,
            "10 0f 0004 4d515454 04 06 003c 0001 63 0001 77",
            E::Truncated,
        ),
        (
            "duplicate session expiry",
            None,
            "10 18 0004 4d515454 05 02 003c 0a 11 00000001 11 00000002 0001 63",
            E::DuplicateProperty(0x11),
        ),
        (
            "unknown property 0x05",
            None,
            "10 10 0004 4d515454 05 02 003c 02 05 00 0001 63",
            E::UnknownProperty(5),
        ),
        (
            "unknown property 128 (two-byte id)",
            s5,
            "40 07 0001 00 03 8001 00",
            E::UnknownProperty(128),
        ),
        (
            "topic alias in CONNECT",
            None,
            "10 11 0004 4d515454 05 02 003c 03 23 0001 0001 63",
            E::PropertyNotAllowed {
                property: 0x23,
                packet: "CONNECT",
            },
        ),
        (
            "will delay in CONNECT properties",
            None,
            "10 13 0004 4d515454 05 02 003c 05 18 00000001 0001 63",
            E::PropertyNotAllowed {
                property: 0x18,
                packet: "CONNECT",
            },
        ),
        (
            "session expiry in will properties",
            None,
            "10 19 0004 4d515454 05 06 003c 00 0001 63 05 11 00000001 0001 77 0000",
            E::PropertyNotAllowed {
                property: 0x11,
                packet: "will",
            },
        ),
        (
            "reason string in PUBLISH",
            s5,
            "30 08 0001 74 04 1f 0001 78",
            E::PropertyNotAllowed {
                property: 0x1f,
                packet: "PUBLISH",
            },
        ),
        (
            "subscription identifier in PUBACK",
            s5,
            "40 06 0001 00 02 0b 01",
            E::PropertyNotAllowed {
                property: 0x0b,
                packet: "PUBACK",
            },
        ),
        (
            "session expiry in AUTH",
            s5,
            "f0 07 18 05 11 00000001",
            E::PropertyNotAllowed {
                property: 0x11,
                packet: "AUTH",
            },
        ),
        (
            "receive maximum 0",
            None,
            "10 10 0004 4d515454 05 02 003c 03 21 0000 0001 63",
            E::InvalidPropertyValue { property: 0x21 },
        ),
        (
            "maximum packet size 0",
            None,
            "10 12 0004 4d515454 05 02 003c 05 27 00000000 0001 63",
            E::InvalidPropertyValue { property: 0x27 },
        ),
        (
            "request problem information 2",
            None,
            "10 0f 0004 4d515454 05 02 003c 02 17 02 0001 63",
            E::InvalidPropertyValue { property: 0x17 },
        ),
        (
            "payload format indicator 2",
            s5,
            "30 06 0001 74 02 01 02",
            E::InvalidPropertyValue { property: 0x01 },
        ),
        (
            "subscription identifier 0 in SUBSCRIBE",
            s5,
            "82 09 0001 02 0b 00 0001 61 00",
            E::InvalidPropertyValue { property: 0x0b },
        ),
        (
            "subscription identifier 0 in PUBLISH",
            s5,
            "30 06 0001 74 02 0b 00",
            E::InvalidPropertyValue { property: 0x0b },
        ),
        (
            "maximum QoS 2",
            s5,
            "20 05 00 00 02 24 02",
            E::InvalidPropertyValue { property: 0x24 },
        ),
        (
            "retain available 2",
            s5,
            "20 05 00 00 02 25 02",
            E::InvalidPropertyValue { property: 0x25 },
        ),
        (
            "authentication data without method",
            None,
            "10 12 0004 4d515454 05 02 003c 05 16 0002 0102 0001 63",
            E::AuthenticationDataWithoutMethod,
        ),
        (
            "topic alias 0 [MQTT-3.3.2-8]",
            s5,
            "30 07 0001 74 03 23 0000",
            E::TopicAliasZero,
        ),
        (
            "empty topic without alias",
            s5,
            "30 03 0000 00",
            E::EmptyTopicWithoutAlias,
        ),
        (
            "property section longer than packet",
            s5,
            "40 05 0001 00 05 1f",
            E::Truncated,
        ),
        (
            "property value cut by its section",
            s5,
            "40 08 0001 00 02 1f 0001 78",
            E::Truncated,
        ),
        (
            "property length of five bytes",
            s5,
            "40 07 0001 00 ff ff ff ff",
            E::InvalidVariableInteger,
        ),
        (
            "3.1.1 PUBACK trailing byte",
            s3,
            "40 03 0001 00",
            E::TrailingBytes,
        ),
        ("PINGREQ with a body", s3, "c0 01 00", E::TrailingBytes),
        (
            "3.1.1 DISCONNECT with a body",
            s3,
            "e0 01 00",
            E::TrailingBytes,
        ),
        ("PUBACK cut short", s5, "40 01 00", E::Truncated),
        (
            "PUBLISH packet id 0 [MQTT-2.2.1-3]",
            s3,
            "32 05 0001 74 0000",
            E::ZeroPacketId,
        ),
        ("PUBACK packet id 0", s5, "40 02 0000", E::ZeroPacketId),
        (
            "SUBSCRIBE packet id 0",
            s3,
            "82 06 0000 0001 61 00",
            E::ZeroPacketId,
        ),
        (
            "SUBSCRIBE without filters 3.1.1 [MQTT-3.8.3-3]",
            s3,
            "82 02 0001",
            E::EmptySubscribe,
        ),
        (
            "SUBSCRIBE without filters 5.0",
            s5,
            "82 03 0001 00",
            E::EmptySubscribe,
        ),
        (
            "UNSUBSCRIBE without filters [MQTT-3.10.3-2]",
            s3,
            "a2 02 0001",
            E::EmptyUnsubscribe,
        ),
        (
            "SUBSCRIBE filter without options",
            s3,
            "82 05 0001 0001 61",
            E::Truncated,
        ),
        (
            "3.1.1 subscription option bit 2 [MQTT-3.8.3-4]",
            s3,
            "82 06 0001 0001 61 04",
            E::InvalidSubscriptionOptions(0x04),
        ),
        (
            "subscription QoS 3",
            s5,
            "82 07 0001 00 0001 61 03",
            E::InvalidSubscriptionOptions(0x03),
        ),
        (
            "retain handling 3",
            s5,
            "82 07 0001 00 0001 61 30",
            E::InvalidSubscriptionOptions(0x30),
        ),
        (
            "subscription reserved bits",
            s5,
            "82 07 0001 00 0001 61 80",
            E::InvalidSubscriptionOptions(0x80),
        ),
        (
            "PUBACK reason 0x04",
            s5,
            "40 03 0001 04",
            E::InvalidReasonCode {
                packet: PacketType::PubAck,
                code: 4,
            },
        ),
        (
            "PUBREL reason 0x10",
            s5,
            "62 03 0001 10",
            E::InvalidReasonCode {
                packet: PacketType::PubRel,
                code: 0x10,
            },
        ),
        (
            "DISCONNECT reason 0x01",
            s5,
            "e0 01 01",
            E::InvalidReasonCode {
                packet: PacketType::Disconnect,
                code: 1,
            },
        ),
        (
            "AUTH reason 0x87",
            s5,
            "f0 02 87 00",
            E::InvalidReasonCode {
                packet: PacketType::Auth,
                code: 0x87,
            },
        ),
        (
            "UNSUBACK reason 0x02",
            s5,
            "b0 04 0001 00 02",
            E::InvalidReasonCode {
                packet: PacketType::UnsubAck,
                code: 2,
            },
        ),
        (
            "5.0 CONNACK reason 0x04",
            s5,
            "20 03 00 04 00",
            E::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: 4,
            },
        ),
        (
            "3.1.1 CONNACK return code 6",
            s3,
            "20 02 00 06",
            E::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: 6,
            },
        ),
        (
            "3.1.1 SUBACK return code 3",
            s3,
            "90 03 0001 03",
            E::InvalidReasonCode {
                packet: PacketType::SubAck,
                code: 3,
            },
        ),
        (
            "CONNACK reserved flags [MQTT-3.2.2-1]",
            s3,
            "20 02 02 00",
            E::ReservedConnAckFlags(2),
        ),
        (
            "session present on refusal",
            s3,
            "20 02 01 05",
            E::SessionPresentOnRefusal,
        ),
        (
            "3.1.1 CONNACK trailing byte",
            s3,
            "20 03 00 00 00",
            E::TrailingBytes,
        ),
    ]
}

#[test]
fn malformed_frames_are_refused_with_the_exact_rule() {
    let mut failures = Vec::new();
    for (name, version, text, expected) in malformed() {
        let mut buf = BytesMut::from(&hex(text)[..]);
        let got = decode(&mut buf, version, u32::MAX);
        if got != Err(expected.clone()) {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The size limit applies to the whole packet and is enforced from the fixed header alone.
#[test]
fn maximum_packet_size_is_checked_from_the_fixed_header() {
    let table: [(&str, u32, Result<bool, DecodeError>); 4] = [
        // remaining length 16383 (ff 7f) + 3 header bytes = 16386
        ("ff 7f", 16_386, Ok(false)),
        (
            "ff 7f",
            16_385,
            Err(DecodeError::PacketTooLarge {
                size: 16_386,
                max: 16_385,
            }),
        ),
        (
            "ff ff 7f",
            1_000,
            Err(DecodeError::PacketTooLarge {
                size: 2_097_155,
                max: 1_000,
            }),
        ),
        ("80 80 80 01", u32::MAX, Ok(false)),
    ];
    for (length, max, expected) in table {
        let mut buf = BytesMut::from(&hex(&format!("30 {length}"))[..]);
        let before = buf.clone();
        let result = decode(&mut buf, Some(V5), max).map(|packet| packet.is_some());
        assert_eq!(result, expected, "{length} max {max}");
        if result.is_ok() {
            assert_eq!(buf, before, "an incomplete packet consumed bytes");
        }
    }
}

#[test]
fn packet_of_exactly_the_maximum_size_is_accepted() {
    let bytes = hex("30 05 0001 74 6869"); // 7 bytes
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode(&mut buf, Some(V311), 7),
        Ok(Some(Packet::Publish(_)))
    ));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, Some(V311), 6),
        Err(DecodeError::PacketTooLarge { size: 7, max: 6 })
    );
}

#[test]
fn back_to_back_packets_are_split_exactly() {
    let bytes = hex("c0 00 | 32 07 0003 612f62 000a | e0 00");
    let mut buf = BytesMut::from(&bytes[..]);
    let mut packets = Vec::new();
    while let Some(packet) = decode(&mut buf, Some(V311), u32::MAX).unwrap() {
        packets.push(packet.packet_type());
    }
    assert_eq!(
        packets,
        [
            PacketType::PingReq,
            PacketType::Publish,
            PacketType::Disconnect
        ]
    );
    assert!(buf.is_empty());
}

/// What 3.1.1 cannot carry is dropped or translated, never an error.
#[test]
fn v311_encoding_drops_and_translates_v5_fields() {
    let table: Vec<(&str, Packet, &str)> = vec![
        (
            "PUBLISH properties dropped",
            Packet::Publish(Publish {
                topic: "t".into(),
                properties: PublishProperties {
                    user_properties: vec![("k".into(), "v".into())],
                    message_expiry_interval: Some(5),
                    ..PublishProperties::default()
                },
                payload: b("x"),
                ..Publish::default()
            }),
            "30 04 0001 74 78",
        ),
        (
            "CONNACK banned becomes not authorized",
            Packet::ConnAck(ConnAck {
                reason_code: ReasonCode::BANNED,
                ..ConnAck::default()
            }),
            "20 02 00 05",
        ),
        (
            "CONNACK server busy becomes server unavailable, session present cleared",
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::SERVER_BUSY,
                properties: ConnAckProperties {
                    reason_string: Some("busy".into()),
                    ..Default::default()
                },
            }),
            "20 02 00 03",
        ),
        (
            "SUBACK errors become 0x80",
            Packet::SubAck(SubAck {
                packet_id: 1,
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_1,
                    ReasonCode::NOT_AUTHORIZED,
                    ReasonCode::QUOTA_EXCEEDED,
                ],
                properties: AckProperties::default(),
            }),
            "90 05 0001 01 80 80",
        ),
        (
            "PUBACK reason code dropped",
            Packet::PubAck(PubResponse {
                packet_id: 7,
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..PubResponse::default()
            }),
            "40 02 0007",
        ),
        (
            "UNSUBACK reason codes dropped",
            Packet::UnsubAck(UnsubAck {
                packet_id: 7,
                reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
                properties: AckProperties::default(),
            }),
            "b0 02 0007",
        ),
        (
            "subscription options other than QoS dropped",
            Packet::Subscribe(Subscribe {
                packet_id: 7,
                filters: vec![(
                    "a".into(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                )],
                properties: SubscribeProperties {
                    subscription_identifier: Some(3),
                    ..Default::default()
                },
            }),
            "82 06 0007 0001 61 02",
        ),
        (
            "DISCONNECT reason dropped",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
                ..Default::default()
            }),
            "e0 00",
        ),
    ];
    for (name, packet, expected) in table {
        assert_eq!(encode_one(&packet, V311), hex(expected), "{name}");
    }
}

#[test]
fn values_the_wire_cannot_carry_are_encode_errors() {
    let publish = |f: fn(&mut Publish)| {
        let mut publish = Publish {
            topic: "t".into(),
            ..Publish::default()
        };
        f(&mut publish);
        Packet::Publish(publish)
    };
    let long = "x".repeat(65_536);
    let table: Vec<(&str, ProtocolVersion, Packet, EncodeError)> = vec![
        (
            "topic over 65535 bytes",
            V311,
            Packet::Publish(Publish {
                topic: long.clone(),
                ..Publish::default()
            }),
            EncodeError::FieldTooLong(65_536),
        ),
        (
            "user property over 65535 bytes",
            V5,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 1,
                filters: vec!["a".into()],
                properties: UnsubscribeProperties {
                    user_properties: vec![(long, "v".into())],
                },
            }),
            EncodeError::FieldTooLong(65_536),
        ),
        (
            "NUL in topic",
            V5,
            publish(|p| p.topic = "a\0b".into()),
            EncodeError::NulInString,
        ),
        (
            "QoS 1 without packet id",
            V5,
            publish(|p| p.qos = QoS::AtLeastOnce),
            EncodeError::MissingPacketId(1),
        ),
        (
            "QoS 0 with packet id",
            V5,
            publish(|p| p.packet_id = Some(1)),
            EncodeError::UnexpectedPacketId,
        ),
        (
            "DUP at QoS 0",
            V311,
            publish(|p| p.dup = true),
            EncodeError::DupWithQoS0,
        ),
        (
            "packet id 0",
            V311,
            publish(|p| {
                p.qos = QoS::ExactlyOnce;
                p.packet_id = Some(0);
            }),
            EncodeError::ZeroPacketId,
        ),
        (
            "PUBACK packet id 0",
            V5,
            Packet::PubAck(PubResponse::default()),
            EncodeError::ZeroPacketId,
        ),
        (
            "empty topic without alias",
            V5,
            publish(|p| p.topic.clear()),
            EncodeError::EmptyTopicWithoutAlias,
        ),
        (
            "topic alias 0",
            V5,
            publish(|p| p.properties.topic_alias = Some(0)),
            EncodeError::InvalidPropertyValue { property: 0x23 },
        ),
        (
            "payload format 2",
            V5,
            publish(|p| p.properties.payload_format_indicator = Some(2)),
            EncodeError::InvalidPropertyValue { property: 0x01 },
        ),
        (
            "subscription identifier 0",
            V5,
            publish(|p| p.properties.subscription_identifiers = vec![0]),
            EncodeError::InvalidPropertyValue { property: 0x0b },
        ),
        (
            "subscription identifier too large",
            V5,
            publish(|p| p.properties.subscription_identifiers = vec![268_435_456]),
            EncodeError::VariableIntegerTooLarge(268_435_456),
        ),
        (
            "receive maximum 0",
            V5,
            Packet::Connect(Box::new(Connect {
                properties: ConnectProperties {
                    receive_maximum: Some(0),
                    ..Default::default()
                },
                ..Connect::default()
            })),
            EncodeError::InvalidPropertyValue { property: 0x21 },
        ),
        (
            "authentication data without method",
            V5,
            Packet::Connect(Box::new(Connect {
                properties: ConnectProperties {
                    authentication_data: Some(b("d")),
                    ..Default::default()
                },
                ..Connect::default()
            })),
            EncodeError::InvalidPropertyValue { property: 0x16 },
        ),
        (
            "maximum QoS 2",
            V5,
            Packet::ConnAck(ConnAck {
                properties: ConnAckProperties {
                    maximum_qos: Some(QoS::ExactlyOnce),
                    ..Default::default()
                },
                ..ConnAck::default()
            }),
            EncodeError::InvalidPropertyValue { property: 0x24 },
        ),
        (
            "3.1.1 password without user name",
            V311,
            Packet::Connect(Box::new(Connect {
                protocol: V311,
                password: Some(b("p")),
                ..Connect::default()
            })),
            EncodeError::PasswordWithoutUsername,
        ),
        (
            "SUBSCRIBE without filters",
            V5,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                ..Default::default()
            }),
            EncodeError::NoFilters(PacketType::Subscribe),
        ),
        (
            "UNSUBSCRIBE without filters",
            V311,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 1,
                ..Default::default()
            }),
            EncodeError::NoFilters(PacketType::Unsubscribe),
        ),
        (
            "AUTH in 3.1.1",
            V311,
            Packet::Auth(Auth::default()),
            EncodeError::NotInVersion(PacketType::Auth),
        ),
        (
            // vec![0; n] is calloc'ed: the pages are never touched because only the length is read.
            "remaining length over 268435455",
            V311,
            Packet::Publish(Publish {
                topic: "t".into(),
                payload: Bytes::from(vec![0u8; 268_435_453]),
                ..Publish::default()
            }),
            EncodeError::PacketTooLarge(268_435_456),
        ),
    ];
    for (name, version, packet, expected) in table {
        let mut buf = BytesMut::from(&b"kept"[..]);
        assert_eq!(
            encode(&packet, version, &mut buf),
            Err(expected.clone()),
            "{name}"
        );
        assert_eq!(&buf[..], b"kept", "{name}: a failed encode wrote bytes");
        assert_eq!(
            encoded_len(&packet, version),
            Err(expected),
            "{name}: encoded_len"
        );
    }
}

#[test]
fn largest_remaining_length_is_encoded_in_four_bytes() {
    let packet = Packet::Publish(Publish {
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; 268_435_452]),
        ..Publish::default()
    });
    assert_eq!(encoded_len(&packet, V311), Ok(1 + 4 + 268_435_455));
}
