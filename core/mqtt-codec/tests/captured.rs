//! Frames recorded from real clients (mosquitto_pub/mosquitto_sub 2.0.11, paho-mqtt 2.2,
//! rumqttc 0.25) and a real broker (Mosquitto 2.0.11), see tests/fixtures/README.md.
//! Independent implementations wrote these bytes, so a misreading shared by our encoder and
//! decoder would show here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use common::{decode_one, encode_one};
use iothub_mqtt_codec::{
    AckProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, LastWill, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeProperties,
    SubscriptionOptions, UnsubAck, Unsubscribe, UnsubscribeProperties, WillProperties, decode,
    encoded_len,
};

/// Which side wrote a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    ClientToBroker,
    BrokerToClient,
}

struct Frame {
    direction: Direction,
    bytes: Vec<u8>,
}

struct Session {
    name: String,
    /// Frames per connection, in the order the capture proxy saw them.
    connections: Vec<Vec<Frame>>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/captured")
}

fn load(path: &Path) -> Session {
    let text = std::fs::read_to_string(path).unwrap();
    let mut connections: Vec<Vec<Frame>> = Vec::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        if line.starts_with("connection ") {
            connections.push(Vec::new());
            continue;
        }
        let (direction, hex) = line.split_once(' ').unwrap();
        let direction = match direction {
            ">" => Direction::ClientToBroker,
            "<" => Direction::BrokerToClient,
            other => panic!("bad direction {other:?} in {}", path.display()),
        };
        let frame = Frame {
            direction,
            bytes: common::hex(hex),
        };
        connections
            .last_mut()
            .expect("frame before `connection`")
            .push(frame);
    }
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    Session { name, connections }
}

fn sessions() -> Vec<Session> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hex"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "captured fixtures missing: {paths:?}");
    paths.iter().map(|path| load(path)).collect()
}

/// The protocol version of a connection, from its CONNECT (always the first client frame).
fn version_of(connection: &[Frame]) -> ProtocolVersion {
    let connect = connection
        .iter()
        .find(|frame| frame.direction == Direction::ClientToBroker);
    match decode_one(&connect.unwrap().bytes, None) {
        Ok(Packet::Connect(connect)) => connect.protocol,
        other => panic!("first client frame is not a CONNECT: {other:?}"),
    }
}

fn version_for(packet_byte: u8, version: ProtocolVersion) -> Option<ProtocolVersion> {
    if packet_byte >> 4 == 1 {
        None
    } else {
        Some(version)
    }
}

/// Frames whose re-encoding differs from the capture only because the client wrote the
/// properties in another order than ours (the spec lets each sender choose). For these the
/// test checks equal length and an equal decode of the re-encoding instead of equal bytes.
const PROPERTY_ORDER_DIFFERS: &[(&str, usize, usize)] = &[
    ("mosquitto_pub-5-properties", 1, 0),
    ("mosquitto_pub-5-properties", 1, 1),
    ("mosquitto_pub-5-properties", 1, 2),
    ("mosquitto_pub-5-qos2-will", 1, 0),
    ("mosquitto_pub-5-qos2-will", 1, 1),
    ("mosquitto_sub-5", 1, 1),
    ("mosquitto_sub-5", 2, 1),
    ("mosquitto_sub-5", 3, 1),
    ("paho-5", 1, 0),
    ("paho-5", 1, 1),
    ("paho-5", 1, 4),
    ("paho-5", 1, 5),
    ("paho-5", 1, 6),
    ("paho-5", 1, 7),
    ("paho-5", 1, 10),
    ("paho-5", 1, 13),
    ("rumqttc-5", 1, 1),
    ("rumqttc-5", 1, 5),
];

#[test]
fn every_captured_frame_decodes_and_re_encodes() {
    let mut reordered_seen = Vec::new();
    let mut frames = 0;
    for session in sessions() {
        for (connection_index, connection) in session.connections.iter().enumerate() {
            let connection_number = connection_index + 1;
            let version = version_of(connection);
            for (index, frame) in connection.iter().enumerate() {
                let at = format!(
                    "{} connection {connection_number} frame {index}",
                    session.name
                );
                let packet = decode_one(&frame.bytes, version_for(frame.bytes[0], version))
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                let again = encode_one(&packet, version);
                assert_eq!(
                    encoded_len(&packet, version).unwrap(),
                    frame.bytes.len(),
                    "{at}: encoded_len"
                );
                if again != frame.bytes {
                    let key = (session.name.as_str(), connection_number, index);
                    assert!(
                        PROPERTY_ORDER_DIFFERS.contains(&key),
                        "{at}: re-encoding differs\n captured {:02x?}\n ours     {again:02x?}",
                        frame.bytes
                    );
                    assert_eq!(again.len(), frame.bytes.len(), "{at}");
                    let redecoded = decode_one(&again, version_for(again[0], version)).unwrap();
                    assert_eq!(redecoded, packet, "{at}");
                    reordered_seen.push((session.name.clone(), connection_number, index));
                }
                frames += 1;
            }
        }
    }
    // The exception list must not outlive the frames it excuses.
    for &(name, connection, index) in PROPERTY_ORDER_DIFFERS {
        assert!(
            reordered_seen.contains(&(name.to_owned(), connection, index)),
            "{name} {connection} {index} re-encodes identically: remove it from the list"
        );
    }
    assert!(frames > 100, "only {frames} frames");
}

/// A whole captured byte stream, fed one byte at a time as a slow network would, yields the
/// same packets as frame-by-frame decoding, and never consumes a partial frame.
#[test]
fn captured_streams_decode_byte_by_byte() {
    for session in sessions() {
        for connection in &session.connections {
            let version = version_of(connection);
            for direction in [Direction::ClientToBroker, Direction::BrokerToClient] {
                let frames: Vec<&Frame> = connection
                    .iter()
                    .filter(|frame| frame.direction == direction)
                    .collect();
                let stream: Vec<u8> = frames
                    .iter()
                    .flat_map(|frame| frame.bytes.iter().copied())
                    .collect();
                let mut buf = BytesMut::new();
                let mut decoded = Vec::new();
                let mut negotiated = match direction {
                    Direction::ClientToBroker => None,
                    Direction::BrokerToClient => Some(version),
                };
                for &byte in &stream {
                    buf.extend_from_slice(&[byte]);
                    let before = buf.len();
                    match decode(&mut buf, negotiated, u32::MAX).unwrap() {
                        Some(packet) => {
                            if let Packet::Connect(connect) = &packet {
                                negotiated = Some(connect.protocol);
                            }
                            decoded.push(packet);
                        }
                        None => assert_eq!(
                            buf.len(),
                            before,
                            "{}: consumed a partial frame",
                            session.name
                        ),
                    }
                }
                assert!(buf.is_empty(), "{}: {} bytes left", session.name, buf.len());
                assert_eq!(decoded.len(), frames.len(), "{}", session.name);
            }
        }
    }
}

fn frame(session: &str, connection: usize, index: usize) -> (Packet, ProtocolVersion) {
    let session = load(&fixtures_dir().join(format!("{session}.hex")));
    let connection = &session.connections[connection - 1];
    let version = version_of(connection);
    let bytes = &connection[index].bytes;
    (
        decode_one(bytes, version_for(bytes[0], version)).unwrap(),
        version,
    )
}

fn text(value: &str) -> Bytes {
    Bytes::copy_from_slice(value.as_bytes())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn connect(protocol: ProtocolVersion, client_id: &str, keep_alive: u16) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive,
        client_id: client_id.to_owned(),
        ..Connect::default()
    }
}

fn publish(qos: QoS, topic: &str, packet_id: Option<u16>, payload: &str) -> Publish {
    Publish {
        qos,
        topic: topic.to_owned(),
        packet_id,
        payload: text(payload),
        ..Publish::default()
    }
}

fn ack(packet_id: u16) -> PubResponse {
    PubResponse {
        packet_id,
        ..PubResponse::default()
    }
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// Every field of the interesting frames, as written by hand from the client's command line
/// (tests/fixtures/README.md), not from our decoder's output.
fn expected_frames() -> Vec<(&'static str, usize, usize, Packet)> {
    use ProtocolVersion::{V5, V311};
    let m311 = "iothub-capture/mosq311";
    let m5 = "iothub-capture/mosq5";
    let p5 = "iothub-capture/paho5";
    vec![
        // rumqttc 0.25.1 (tests/examples/rumqttc_session.rs), 3.1.1 and 5.0
        (
            "rumqttc-311",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                clean_start: false,
                username: Some("rumq-user".into()),
                password: Some(text("rumq-pass")),
                will: Some(LastWill {
                    topic: "iothub-capture/rumq311/will".into(),
                    payload: text("gone"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: WillProperties::default(),
                }),
                ..connect(V311, "cap-rumqttc311", 20)
            })),
        ),
        (
            "rumqttc-311",
            1,
            6,
            Packet::Publish(Publish {
                retain: true,
                ..publish(
                    QoS::AtLeastOnce,
                    "iothub-capture/rumq311/retained",
                    Some(2),
                    "one",
                )
            }),
        ),
        (
            "rumqttc-5",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                clean_start: false,
                username: Some("rumq-user".into()),
                password: Some(text("rumq-pass")),
                properties: ConnectProperties {
                    session_expiry_interval: Some(60),
                    ..ConnectProperties::default()
                },
                will: Some(LastWill {
                    topic: "iothub-capture/rumq5/will".into(),
                    payload: text("gone"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: WillProperties::default(),
                }),
                ..connect(V5, "cap-rumqttc5", 20)
            })),
        ),
        // mosquitto_pub, 3.1.1
        (
            "mosquitto_pub-311-qos0",
            1,
            0,
            Packet::Connect(Box::new(connect(V311, "cap-pub311", 60))),
        ),
        (
            "mosquitto_pub-311-qos0",
            1,
            1,
            Packet::ConnAck(ConnAck::default()),
        ),
        (
            "mosquitto_pub-311-qos0",
            1,
            2,
            Packet::Publish(publish(
                QoS::AtMostOnce,
                &format!("{m311}/a"),
                None,
                "hello",
            )),
        ),
        (
            "mosquitto_pub-311-qos0",
            1,
            3,
            Packet::Disconnect(Disconnect::default()),
        ),
        (
            "mosquitto_pub-311-qos1-retain-auth",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                username: Some("mosq-user".into()),
                password: Some(text("mosq-pass")),
                ..connect(V311, "cap-pub311-q1", 20)
            })),
        ),
        (
            "mosquitto_pub-311-qos1-retain-auth",
            1,
            2,
            Packet::Publish(Publish {
                retain: true,
                ..publish(
                    QoS::AtLeastOnce,
                    &format!("{m311}/retained"),
                    Some(1),
                    "kept",
                )
            }),
        ),
        (
            "mosquitto_pub-311-qos1-retain-auth",
            1,
            3,
            Packet::PubAck(ack(1)),
        ),
        (
            "mosquitto_pub-311-qos2-will",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                clean_start: false,
                will: Some(LastWill {
                    topic: format!("{m311}/will"),
                    payload: text("bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: WillProperties::default(),
                }),
                ..connect(V311, "cap-pub311-q2", 60)
            })),
        ),
        (
            "mosquitto_pub-311-qos2-will",
            1,
            2,
            Packet::Publish(publish(
                QoS::ExactlyOnce,
                &format!("{m311}/b"),
                Some(1),
                "exactly once",
            )),
        ),
        ("mosquitto_pub-311-qos2-will", 1, 3, Packet::PubRec(ack(1))),
        ("mosquitto_pub-311-qos2-will", 1, 4, Packet::PubRel(ack(1))),
        ("mosquitto_pub-311-qos2-will", 1, 5, Packet::PubComp(ack(1))),
        // mosquitto_pub, 5.0
        (
            "mosquitto_pub-5-properties",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                properties: ConnectProperties {
                    session_expiry_interval: Some(60),
                    receive_maximum: Some(10),
                    maximum_packet_size: Some(10_000),
                    topic_alias_maximum: Some(5),
                    request_response_information: Some(true),
                    request_problem_information: Some(true),
                    user_properties: pairs(&[("ck", "cv")]),
                    ..ConnectProperties::default()
                },
                ..connect(V5, "cap-pub5", 60)
            })),
        ),
        (
            "mosquitto_pub-5-properties",
            1,
            1,
            Packet::ConnAck(ConnAck {
                properties: ConnAckProperties {
                    topic_alias_maximum: Some(10),
                    receive_maximum: Some(20),
                    ..ConnAckProperties::default()
                },
                ..ConnAck::default()
            }),
        ),
        (
            "mosquitto_pub-5-properties",
            1,
            2,
            Packet::Publish(Publish {
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(30),
                    topic_alias: Some(1),
                    response_topic: Some(format!("{m5}/reply")),
                    correlation_data: Some(text("corr")),
                    user_properties: pairs(&[("k", "v"), ("k", "v2")]),
                    subscription_identifiers: vec![],
                    content_type: Some("text/plain".into()),
                },
                ..publish(QoS::AtLeastOnce, &format!("{m5}/a"), Some(1), "hello5")
            }),
        ),
        (
            "mosquitto_pub-5-properties",
            1,
            3,
            Packet::PubAck(PubResponse {
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..ack(1)
            }),
        ),
        (
            "mosquitto_pub-5-properties",
            1,
            4,
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::NORMAL_DISCONNECTION,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    user_properties: pairs(&[("dk", "dv")]),
                    ..DisconnectProperties::default()
                },
            }),
        ),
        (
            "mosquitto_pub-5-qos2-will",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                will: Some(LastWill {
                    topic: format!("{m5}/will"),
                    payload: text("bye5"),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    properties: WillProperties {
                        will_delay_interval: Some(10),
                        payload_format_indicator: Some(1),
                        message_expiry_interval: Some(100),
                        content_type: Some("text/plain".into()),
                        response_topic: Some(format!("{m5}/will-reply")),
                        correlation_data: Some(text("wc")),
                        user_properties: pairs(&[("wk", "wv")]),
                    },
                }),
                username: Some("user5".into()),
                properties: ConnectProperties {
                    receive_maximum: Some(20),
                    ..ConnectProperties::default()
                },
                ..connect(V5, "cap-pub5-q2", 60)
            })),
        ),
        (
            "mosquitto_pub-5-qos2-will",
            1,
            2,
            Packet::Publish(Publish {
                retain: true,
                ..publish(
                    QoS::ExactlyOnce,
                    &format!("{m5}/retained"),
                    Some(1),
                    "kept5",
                )
            }),
        ),
        // mosquitto_sub, 3.1.1
        (
            "mosquitto_sub-311",
            1,
            2,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    (format!("{m311}/#"), options(QoS::ExactlyOnce)),
                    (format!("{m311}/+/x"), options(QoS::ExactlyOnce)),
                ],
                properties: SubscribeProperties::default(),
            }),
        ),
        (
            "mosquitto_sub-311",
            1,
            3,
            Packet::SubAck(SubAck {
                packet_id: 1,
                reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::GRANTED_QOS_2],
                properties: AckProperties::default(),
            }),
        ),
        (
            "mosquitto_sub-311",
            1,
            4,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["iothub-capture/old".into()],
                properties: UnsubscribeProperties::default(),
            }),
        ),
        (
            "mosquitto_sub-311",
            1,
            5,
            Packet::Publish(Publish {
                retain: true,
                ..publish(
                    QoS::AtLeastOnce,
                    &format!("{m311}/retained"),
                    Some(1),
                    "kept",
                )
            }),
        ),
        (
            "mosquitto_sub-311",
            1,
            7,
            Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                ..UnsubAck::default()
            }),
        ),
        // mosquitto_sub, 5.0
        (
            "mosquitto_sub-5",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                properties: ConnectProperties {
                    session_expiry_interval: Some(30),
                    receive_maximum: Some(3),
                    ..ConnectProperties::default()
                },
                ..connect(V5, "cap-sub5", 60)
            })),
        ),
        (
            "mosquitto_sub-5",
            1,
            2,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![(
                    format!("{m5}/#"),
                    SubscriptionOptions {
                        retain_as_published: true,
                        ..options(QoS::ExactlyOnce)
                    },
                )],
                properties: SubscribeProperties {
                    subscription_identifier: None,
                    user_properties: pairs(&[("sk", "sv")]),
                },
            }),
        ),
        (
            "mosquitto_sub-5",
            1,
            4,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["iothub-capture/old".into()],
                properties: UnsubscribeProperties {
                    user_properties: pairs(&[("uk", "uv")]),
                },
            }),
        ),
        (
            "mosquitto_sub-5",
            1,
            7,
            Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
                properties: AckProperties::default(),
            }),
        ),
        (
            "mosquitto_sub-5",
            1,
            10,
            Packet::Publish(Publish {
                properties: PublishProperties {
                    user_properties: pairs(&[("fk", "fv")]),
                    ..PublishProperties::default()
                },
                ..publish(QoS::AtLeastOnce, &format!("{m5}/c"), Some(2), "one")
            }),
        ),
        // paho-mqtt, 3.1.1
        (
            "paho-311",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                will: Some(LastWill {
                    topic: "iothub-capture/paho311/will".into(),
                    payload: text("gone"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: WillProperties::default(),
                }),
                username: Some("paho-user".into()),
                password: Some(text("paho-pass")),
                ..connect(V311, "cap-paho311", 30)
            })),
        ),
        (
            "paho-311",
            1,
            2,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    ("iothub-capture/paho311/q0".into(), options(QoS::AtMostOnce)),
                    (
                        "iothub-capture/paho311/q1".into(),
                        options(QoS::AtLeastOnce),
                    ),
                    (
                        "iothub-capture/paho311/q2".into(),
                        options(QoS::ExactlyOnce),
                    ),
                ],
                properties: SubscribeProperties::default(),
            }),
        ),
        // paho-mqtt, 5.0
        (
            "paho-5",
            1,
            0,
            Packet::Connect(Box::new(Connect {
                will: Some(LastWill {
                    topic: format!("{p5}/will"),
                    payload: text("gone"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: WillProperties {
                        will_delay_interval: Some(5),
                        payload_format_indicator: Some(1),
                        message_expiry_interval: Some(60),
                        content_type: Some("text/plain".into()),
                        response_topic: Some(format!("{p5}/will-reply")),
                        correlation_data: Some(Bytes::from_static(b"\x00\x01will")),
                        user_properties: pairs(&[("kind", "will")]),
                    },
                }),
                username: Some("paho-user".into()),
                password: Some(text("paho-pass")),
                properties: ConnectProperties {
                    session_expiry_interval: Some(120),
                    receive_maximum: Some(20),
                    maximum_packet_size: Some(65_536),
                    topic_alias_maximum: Some(10),
                    request_response_information: Some(true),
                    request_problem_information: Some(false),
                    user_properties: pairs(&[("app", "capture")]),
                    ..ConnectProperties::default()
                },
                ..connect(V5, "cap-paho5", 30)
            })),
        ),
        (
            "paho-5",
            1,
            2,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    (format!("{p5}/q0"), options(QoS::AtMostOnce)),
                    (
                        format!("{p5}/q1"),
                        SubscriptionOptions {
                            retain_as_published: true,
                            ..options(QoS::AtLeastOnce)
                        },
                    ),
                    (
                        format!("{p5}/q2"),
                        SubscriptionOptions {
                            retain_handling: RetainHandling::SendIfNewSubscription,
                            ..options(QoS::ExactlyOnce)
                        },
                    ),
                    (
                        format!("{p5}/nolocal"),
                        SubscriptionOptions {
                            no_local: true,
                            retain_handling: RetainHandling::DoNotSend,
                            ..options(QoS::AtLeastOnce)
                        },
                    ),
                ],
                properties: SubscribeProperties {
                    subscription_identifier: Some(7),
                    user_properties: pairs(&[("sub", "yes")]),
                },
            }),
        ),
        (
            "paho-5",
            1,
            3,
            Packet::SubAck(SubAck {
                packet_id: 1,
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_0,
                    ReasonCode::GRANTED_QOS_1,
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode::GRANTED_QOS_1,
                ],
                properties: AckProperties::default(),
            }),
        ),
        (
            "paho-5",
            1,
            10,
            Packet::Publish(Publish {
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(300),
                    topic_alias: Some(3),
                    response_topic: Some(format!("{p5}/reply")),
                    correlation_data: Some(Bytes::from_static(&[2, 0xFF])),
                    user_properties: pairs(&[("a", "1"), ("a", "2")]),
                    subscription_identifiers: vec![],
                    content_type: Some("text/plain".into()),
                },
                ..publish(QoS::ExactlyOnce, &format!("{p5}/q2"), Some(4), "qos 2")
            }),
        ),
        (
            // The broker's delivery: the alias is gone, the subscription identifier added.
            "paho-5",
            1,
            13,
            Packet::Publish(Publish {
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(300),
                    topic_alias: None,
                    response_topic: Some(format!("{p5}/reply")),
                    correlation_data: Some(Bytes::from_static(&[2, 0xFF])),
                    user_properties: pairs(&[("a", "1"), ("a", "2")]),
                    subscription_identifiers: vec![7],
                    content_type: Some("text/plain".into()),
                },
                ..publish(QoS::ExactlyOnce, &format!("{p5}/q2"), Some(2), "qos 2")
            }),
        ),
        (
            "paho-5",
            1,
            20,
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("done".into()),
                    user_properties: pairs(&[("bye", "now")]),
                    server_reference: None,
                },
            }),
        ),
    ]
}

#[test]
fn captured_frames_carry_the_fields_the_clients_were_told_to_send() {
    for (session, connection, index, expected) in expected_frames() {
        let (packet, _) = frame(session, connection, index);
        assert_eq!(
            packet, expected,
            "{session} connection {connection} frame {index}"
        );
    }
}

#[test]
fn captured_payloads_share_the_read_buffer() {
    let (packet, version) = frame("paho-5", 1, 10);
    let bytes = encode_one(&packet, version);
    let mut buf = BytesMut::from(&bytes[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(publish)) = decode(&mut buf, Some(version), u32::MAX).unwrap() else {
        panic!("not a PUBLISH");
    };
    let payload = publish.payload.as_ptr() as usize;
    assert!(
        (start..start + bytes.len()).contains(&payload),
        "payload was copied out of the read buffer"
    );
}
