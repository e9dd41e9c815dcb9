//! Property tests: every packet a version can carry survives encode -> decode unchanged; the
//! decoder never panics, never consumes an incomplete packet, and refuses an oversize packet
//! from its fixed header alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use iothub_mqtt_codec::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    DecodeError, Disconnect, DisconnectProperties, LastWill, Packet, PacketType, ProtocolVersion,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, UnsubAck, Unsubscribe, UnsubscribeProperties,
    WillProperties, decode, encode, encoded_len,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

// ---- value strategies -------------------------------------------------------------------

/// Any Unicode text without U+0000, including multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,8}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn variable_integer() -> impl Strategy<Value = u32> {
    prop_oneof![1..=127u32, 128..=16_383u32, 1..=268_435_455u32]
}

/// A reason code the spec allows in `packet`.
fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let allowed: Vec<ReasonCode> = (0..=255u8)
        .map(ReasonCode)
        .filter(|code| code.allowed_in(packet))
        .collect();
    proptest::sample::select(allowed)
}

// ---- packet strategies (MQTT 5: everything) --------------------------------------------

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            of(any::<u32>()),
            of(1..=u16::MAX),
            of(1..=u32::MAX),
            of(any::<u16>()),
        ),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            pairs(),
            of(text()),
            of(binary()),
        ),
    )
        .prop_map(
            |((expiry, receive, size, alias), (rri, rpi, user, method, data))| ConnectProperties {
                session_expiry_interval: expiry,
                receive_maximum: receive,
                maximum_packet_size: size,
                topic_alias_maximum: alias,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: user,
                // Data without a method is a protocol error (3.1.2.11.10).
                authentication_data: data.filter(|_| method.is_some()),
                authentication_method: method,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(0..=1u8),
        of(any::<u32>()),
        of(text()),
        of(text()),
        of(binary()),
        pairs(),
    )
        .prop_map(
            |(delay, format, expiry, content, response, correlation, user)| WillProperties {
                will_delay_interval: delay,
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                content_type: content,
                response_topic: response,
                correlation_data: correlation,
                user_properties: user,
            },
        )
}

fn connect() -> impl Strategy<Value = Packet> {
    let will = of(
        (text(), binary(), qos(), any::<bool>(), will_properties()).prop_map(
            |(topic, payload, qos, retain, properties)| LastWill {
                topic,
                payload,
                qos,
                retain,
                properties,
            },
        ),
    );
    (
        (any::<bool>(), any::<u16>(), text(), will),
        (of(text()), of(binary()), connect_properties()),
    )
        .prop_map(
            |((clean_start, keep_alive, client_id, will), (username, password, properties))| {
                Packet::Connect(Box::new(Connect {
                    protocol: ProtocolVersion::V5,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    let properties = (
        (
            of(any::<u32>()),
            of(1..=u16::MAX),
            of(0..=1u8),
            of(any::<bool>()),
            of(1..=u32::MAX),
        ),
        (
            of(text()),
            of(any::<u16>()),
            of(text()),
            pairs(),
            of(any::<bool>()),
        ),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<u16>()),
            of(text()),
        ),
        (of(text()), of(text()), of(binary())),
    )
        .prop_map(|(a, b, c, d)| ConnAckProperties {
            session_expiry_interval: a.0,
            receive_maximum: a.1,
            maximum_qos: a.2.map(|q| {
                if q == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                }
            }),
            retain_available: a.3,
            maximum_packet_size: a.4,
            assigned_client_identifier: b.0,
            topic_alias_maximum: b.1,
            reason_string: b.2,
            user_properties: b.3,
            wildcard_subscription_available: b.4,
            subscription_identifiers_available: c.0,
            shared_subscription_available: c.1,
            server_keep_alive: c.2,
            response_information: c.3,
            server_reference: d.0,
            authentication_method: d.1,
            authentication_data: d.2,
        });
    (any::<bool>(), reason(PacketType::ConnAck), properties).prop_map(
        |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                // A refusal never has a session (decoder rule).
                session_present: session_present && !reason_code.is_error(),
                reason_code,
                properties,
            })
        },
    )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        (of(0..=1u8), of(any::<u32>()), of(1..=u16::MAX), of(text())),
        (
            of(binary()),
            pairs(),
            vec(variable_integer(), 0..3),
            of(text()),
        ),
    )
        .prop_map(
            |((format, expiry, alias, response), (correlation, user, ids, content))| {
                PublishProperties {
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    topic_alias: alias,
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: user,
                    subscription_identifiers: ids,
                    content_type: content,
                }
            },
        )
}

fn publish() -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        text(),
        1..=u16::MAX,
        publish_properties(),
        binary(),
    )
        .prop_map(|(qos, dup, retain, topic, id, mut properties, payload)| {
            let at_least_once = qos != QoS::AtMostOnce;
            if topic.is_empty() && properties.topic_alias.is_none() {
                properties.topic_alias = Some(1);
            }
            Packet::Publish(Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic,
                packet_id: at_least_once.then_some(id),
                properties,
                payload,
            })
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (of(text()), pairs()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn pub_response(packet: PacketType) -> impl Strategy<Value = Packet> {
    (1..=u16::MAX, reason(packet), ack_properties()).prop_map(
        move |(packet_id, reason_code, properties)| {
            let response = PubResponse {
                packet_id,
                reason_code,
                properties,
            };
            match packet {
                PacketType::PubAck => Packet::PubAck(response),
                PacketType::PubRec => Packet::PubRec(response),
                PacketType::PubRel => Packet::PubRel(response),
                _ => Packet::PubComp(response),
            }
        },
    )
}

fn subscription_options() -> impl Strategy<Value = SubscriptionOptions> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNewSubscription),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(
        |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
    )
}

fn subscribe() -> impl Strategy<Value = Packet> {
    let properties =
        (of(variable_integer()), pairs()).prop_map(|(subscription_identifier, user_properties)| {
            SubscribeProperties {
                subscription_identifier,
                user_properties,
            }
        });
    (
        1..=u16::MAX,
        vec((text(), subscription_options()), 1..4),
        properties,
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback() -> impl Strategy<Value = Packet> {
    (
        1..=u16::MAX,
        vec(reason(PacketType::SubAck), 0..4),
        ack_properties(),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
}

fn unsubscribe() -> impl Strategy<Value = Packet> {
    (1..=u16::MAX, vec(text(), 1..4), pairs()).prop_map(|(packet_id, filters, user_properties)| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters,
            properties: UnsubscribeProperties { user_properties },
        })
    })
}

fn unsuback() -> impl Strategy<Value = Packet> {
    (
        1..=u16::MAX,
        vec(reason(PacketType::UnsubAck), 0..4),
        ack_properties(),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
}

fn disconnect() -> impl Strategy<Value = Packet> {
    let properties = (of(any::<u32>()), of(text()), pairs(), of(text())).prop_map(
        |(session_expiry_interval, reason_string, user_properties, server_reference)| {
            DisconnectProperties {
                session_expiry_interval,
                reason_string,
                user_properties,
                server_reference,
            }
        },
    );
    (reason(PacketType::Disconnect), properties).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
    })
}

fn auth() -> impl Strategy<Value = Packet> {
    let properties = (of(text()), of(binary()), of(text()), pairs()).prop_map(
        |(authentication_method, authentication_data, reason_string, user_properties)| {
            AuthProperties {
                authentication_method,
                authentication_data,
                reason_string,
                user_properties,
            }
        },
    );
    (reason(PacketType::Auth), properties).prop_map(|(reason_code, properties)| {
        Packet::Auth(Auth {
            reason_code,
            properties,
        })
    })
}

fn v5_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        2 => connect(),
        1 => connack(),
        4 => publish(),
        1 => pub_response(PacketType::PubAck),
        1 => pub_response(PacketType::PubRec),
        1 => pub_response(PacketType::PubRel),
        1 => pub_response(PacketType::PubComp),
        2 => subscribe(),
        1 => suback(),
        1 => unsubscribe(),
        1 => unsuback(),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => disconnect(),
        1 => auth(),
    ]
}

// ---- MQTT 3.1.1: only what it can carry --------------------------------------------------

/// Reduces a 5.0 packet to what 3.1.1 can carry: no properties, the few reason codes 3.1.1
/// has, QoS-only subscription options, no AUTH. Written from the 3.1.1 packet layouts.
fn to_v311(packet: Packet) -> Option<Packet> {
    let v311_connack = [
        ReasonCode::SUCCESS,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        ReasonCode::SERVER_UNAVAILABLE,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ReasonCode::NOT_AUTHORIZED,
    ];
    Some(match packet {
        Packet::Connect(mut connect) => {
            connect.protocol = ProtocolVersion::V311;
            connect.properties = ConnectProperties::default();
            if let Some(will) = &mut connect.will {
                will.properties = WillProperties::default();
            }
            if connect.username.is_none() {
                connect.password = None;
            }
            Packet::Connect(connect)
        }
        Packet::ConnAck(connack) => {
            let reason_code = v311_connack[usize::from(connack.reason_code.0) % v311_connack.len()];
            Packet::ConnAck(ConnAck {
                session_present: connack.session_present && reason_code == ReasonCode::SUCCESS,
                reason_code,
                properties: ConnAckProperties::default(),
            })
        }
        Packet::Publish(publish) => Packet::Publish(Publish {
            properties: PublishProperties::default(),
            ..publish
        }),
        Packet::PubAck(r) => Packet::PubAck(PubResponse {
            packet_id: r.packet_id,
            ..Default::default()
        }),
        Packet::PubRec(r) => Packet::PubRec(PubResponse {
            packet_id: r.packet_id,
            ..Default::default()
        }),
        Packet::PubRel(r) => Packet::PubRel(PubResponse {
            packet_id: r.packet_id,
            ..Default::default()
        }),
        Packet::PubComp(r) => Packet::PubComp(PubResponse {
            packet_id: r.packet_id,
            ..Default::default()
        }),
        Packet::Subscribe(subscribe) => Packet::Subscribe(Subscribe {
            packet_id: subscribe.packet_id,
            filters: subscribe
                .filters
                .into_iter()
                .map(|(filter, options)| {
                    (
                        filter,
                        SubscriptionOptions {
                            qos: options.qos,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            properties: SubscribeProperties::default(),
        }),
        Packet::SubAck(suback) => Packet::SubAck(SubAck {
            packet_id: suback.packet_id,
            reason_codes: suback
                .reason_codes
                .into_iter()
                .map(|code| {
                    if code.0 <= 2 {
                        code
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    }
                })
                .collect(),
            properties: AckProperties::default(),
        }),
        Packet::Unsubscribe(unsubscribe) => Packet::Unsubscribe(Unsubscribe {
            properties: UnsubscribeProperties::default(),
            ..unsubscribe
        }),
        Packet::UnsubAck(unsuback) => Packet::UnsubAck(UnsubAck {
            packet_id: unsuback.packet_id,
            ..Default::default()
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::default()),
        Packet::Auth(_) => return None,
        other @ (Packet::PingReq | Packet::PingResp) => other,
    })
}

fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    match version {
        ProtocolVersion::V5 => v5_packet().boxed(),
        ProtocolVersion::V311 => v5_packet()
            .prop_filter_map("AUTH is 5.0 only", to_v311)
            .boxed(),
    }
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|version| (Just(version), packet(version)))
}

/// The version argument decode needs: `None` for CONNECT, as on a fresh connection.
fn decode_version(packet: &Packet, version: ProtocolVersion) -> Option<ProtocolVersion> {
    if matches!(packet, Packet::Connect(_)) {
        None
    } else {
        Some(version)
    }
}

fn encoded(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap();
    buf.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encode_then_decode_gives_the_packet_back((version, packet) in versioned_packet()) {
        let bytes = encoded(&packet, version);
        prop_assert_eq!(encoded_len(&packet, version), Ok(bytes.len()));
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = decode(&mut buf, decode_version(&packet, version), u32::MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_prefixes_consume_nothing((version, packet) in versioned_packet()) {
        let bytes = encoded(&packet, version);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            let result = decode(&mut buf, decode_version(&packet, version), u32::MAX);
            prop_assert_eq!(result, Ok(None), "prefix of {} bytes", len);
            prop_assert_eq!(&buf[..], &bytes[..len]);
        }
    }

    #[test]
    fn oversize_is_refused_from_the_fixed_header_alone((version, packet) in versioned_packet()) {
        let bytes = encoded(&packet, version);
        let size = u32::try_from(bytes.len()).unwrap();
        // The fixed header is the first byte plus the remaining length, whose last byte is
        // the first one without the continuation bit.
        let header = 2 + bytes[1..].iter().take_while(|byte| *byte & 0x80 != 0).count();
        let mut buf = BytesMut::from(&bytes[..header]);
        let result = decode(&mut buf, decode_version(&packet, version), size - 1);
        prop_assert_eq!(result, Err(DecodeError::PacketTooLarge { size, max: size - 1 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..256),
        version in of(version()),
        max in prop_oneof![Just(u32::MAX), 0..512u32],
    ) {
        check_decode_reencode(&bytes, version, max)?;
    }

    /// Valid frames with one byte changed reach much deeper into the decoder than random bytes.
    #[test]
    fn mutated_frames_never_panic(
        (version, packet) in versioned_packet(),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = encoded(&packet, version);
        let position = position.index(bytes.len());
        bytes[position] = value;
        check_decode_reencode(&bytes, decode_version(&packet, version), u32::MAX)?;
    }
}

/// Decodes everything in `bytes`; each decoded packet must re-encode and decode to itself
/// (what the fuzz target checks too).
fn check_decode_reencode(
    bytes: &[u8],
    mut version: Option<ProtocolVersion>,
    max: u32,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, version, max) {
        let negotiated = match &packet {
            Packet::Connect(connect) => connect.protocol,
            _ => version.unwrap(),
        };
        let again = encoded(&packet, negotiated);
        let mut again = BytesMut::from(&again[..]);
        let redecoded = decode(&mut again, decode_version(&packet, negotiated), u32::MAX);
        prop_assert_eq!(redecoded, Ok(Some(packet)));
        version = Some(negotiated);
    }
    Ok(())
}
