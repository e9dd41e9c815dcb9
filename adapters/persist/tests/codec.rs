//! The journal encoding: every operation survives encode -> decode unchanged, and a payload
//! that is not an operation is a specific error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use iothub_engine::{EntryId, JournalOp, MessageId, SessionOwner, SubscriptionOptions, Will};
use iothub_model::{
    ClientId, DeviceId, HubId, Message, MessageProperties, NetworkId, Origin, QoS,
    SubscriptionFilter, TopicName,
};
use iothub_persist::DecodeError;
use iothub_persist::codec::{decode, encode};

fn message(topic: &str, full: bool) -> Message {
    Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(b"\x00payload\xff"),
        qos: QoS::ExactlyOnce,
        retain: full,
        properties: if full {
            MessageProperties {
                payload_is_utf8: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some(TopicName::new("reply/here").unwrap()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            }
        } else {
            MessageProperties::default()
        },
        origin: if full {
            Origin::Client(ClientId::new("pub-1").unwrap())
        } else {
            Origin::Network(NetworkId::new_random())
        },
    }
}

/// One of every operation (and both shapes of the ones with options).
fn every_op() -> Vec<JournalOp> {
    let hub = HubId::new_random();
    let client = ClientId::new("client/with spaces é").unwrap();
    let filter = SubscriptionFilter::parse("$share/g/a/+/#").unwrap();
    vec![
        JournalOp::Message {
            id: MessageId(7),
            hub,
            message: Arc::new(message("a/b", true)),
        },
        JournalOp::Message {
            id: MessageId(u64::MAX),
            hub,
            message: Arc::new(message("c", false)),
        },
        JournalOp::RetainSet {
            hub,
            message: MessageId(7),
            expires_at: Some(1_700_000_000_000),
        },
        JournalOp::RetainSet {
            hub,
            message: MessageId(8),
            expires_at: None,
        },
        JournalOp::RetainClear {
            hub,
            topic: TopicName::new("a/b").unwrap(),
        },
        JournalOp::SessionUp {
            hub,
            client: client.clone(),
            owner: SessionOwner::Anonymous,
            expiry_secs: u32::MAX,
        },
        JournalOp::SessionUp {
            hub,
            client: client.clone(),
            owner: SessionOwner::Device(DeviceId::new_random()),
            expiry_secs: 30,
        },
        JournalOp::SessionUp {
            hub,
            client: ClientId::new("$route/5d7e0c57-3f0e-4a53-a3f2-7f1c2b0e9a10").unwrap(),
            owner: SessionOwner::Route,
            expiry_secs: u32::MAX,
        },
        JournalOp::SessionDown {
            hub,
            client: client.clone(),
            at: 123,
            expiry_secs: 5,
        },
        JournalOp::SessionEnd {
            hub,
            client: client.clone(),
        },
        JournalOp::Subscribe {
            hub,
            client: client.clone(),
            filter: filter.clone(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                subscription_id: Some(268_435_455),
            },
        },
        JournalOp::Subscribe {
            hub,
            client: client.clone(),
            filter: SubscriptionFilter::parse("x").unwrap(),
            options: SubscriptionOptions {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                subscription_id: None,
            },
        },
        JournalOp::Unsubscribe {
            hub,
            client: client.clone(),
            filter,
        },
        JournalOp::Queue {
            hub,
            client: client.clone(),
            entry: EntryId(9),
            message: MessageId(7),
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![1, 2, 3],
            expires_at: Some(99),
        },
        JournalOp::Unqueue {
            hub,
            client: client.clone(),
            entry: EntryId(9),
        },
        JournalOp::Sent {
            hub,
            client: client.clone(),
            entry: EntryId(9),
            packet_id: 65535,
        },
        JournalOp::Acked {
            hub,
            client: client.clone(),
            packet_id: 1,
        },
        JournalOp::Received {
            hub,
            client: client.clone(),
            packet_id: 2,
        },
        JournalOp::InboundQos2 {
            hub,
            client: client.clone(),
            packet_id: 3,
        },
        JournalOp::Released {
            hub,
            client: client.clone(),
            packet_id: 4,
        },
        JournalOp::WillPending {
            hub,
            client: client.clone(),
            will: Will {
                message: message("will/t", true),
                delay_secs: 10,
            },
            due: 5000,
        },
        JournalOp::WillCleared {
            hub,
            client: client.clone(),
        },
        JournalOp::HubCleared { hub },
    ]
}

#[test]
fn every_operation_round_trips() {
    let ops = every_op();
    let mut kinds = std::collections::HashSet::new();
    for op in &ops {
        let mut buf = Vec::new();
        let kind = encode(op, &mut buf);
        kinds.insert(kind);
        assert_eq!(&decode(kind, &buf).unwrap(), op, "kind {kind}");
    }
    // Every operation has a kind of its own.
    assert_eq!(kinds.len(), 18);
}

#[test]
fn bad_records_are_errors() {
    for op in every_op() {
        let mut buf = Vec::new();
        let kind = encode(&op, &mut buf);
        // Every truncation is an error, never a panic or a different operation.
        for cut in 0..buf.len() {
            assert!(decode(kind, &buf[..cut]).is_err(), "{op:?} cut at {cut}");
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(decode(kind, &longer), Err(DecodeError::TrailingBytes(1)));
    }
    assert_eq!(decode(0, &[]), Err(DecodeError::UnknownKind(0)));
    assert_eq!(decode(200, &[1, 2]), Err(DecodeError::UnknownKind(200)));

    let hub = HubId::new_random();
    let ack = |packet_id| JournalOp::Acked {
        hub,
        client: ClientId::new("c").unwrap(),
        packet_id,
    };
    let mut buf = Vec::new();
    let kind = encode(&ack(1), &mut buf);
    // Packet id 0 does not exist.
    let n = buf.len();
    buf[n - 2..].copy_from_slice(&[0, 0]);
    assert!(matches!(
        decode(kind, &buf),
        Err(DecodeError::Invalid {
            field: "packet id",
            ..
        })
    ));

    // A QoS of 3, a client id that is not UTF-8, a topic with a wildcard.
    let mut buf = Vec::new();
    let kind = encode(
        &JournalOp::Queue {
            hub,
            client: ClientId::new("c").unwrap(),
            entry: EntryId(1),
            message: MessageId(1),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            expires_at: None,
        },
        &mut buf,
    );
    let qos_at = 16 + 4 + 1 + 8 + 8;
    buf[qos_at] = 3;
    assert_eq!(
        decode(kind, &buf),
        Err(DecodeError::Tag {
            field: "qos",
            tag: 3
        })
    );
    buf[qos_at] = 1;
    buf[16 + 4] = 0xff;
    assert_eq!(decode(kind, &buf), Err(DecodeError::Utf8("client id")));

    let mut buf = Vec::new();
    let kind = encode(
        &JournalOp::RetainClear {
            hub,
            topic: TopicName::new("a/b").unwrap(),
        },
        &mut buf,
    );
    let n = buf.len();
    buf[n - 1] = b'#';
    assert!(matches!(
        decode(kind, &buf),
        Err(DecodeError::Invalid { field: "topic", .. })
    ));
}
