//! Publish-path benchmark of the engine alone (no sockets): how many publishes per second
//! one thread routes into subscriber queues, for a few subscription shapes. Run with
//! `cargo bench -p iothub-engine`; it prints numbers and asserts nothing about speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use bytes::Bytes;
use iothub_engine::{
    ConnectRequest, DEFAULT_EVENTS_TOPIC_PREFIX, Engine, EngineConfig, HubSpec, Outgoing,
    RetainHandling, Session, SubscribeRequest,
};
use iothub_model::{
    ClientId, FilterPolicy, FilterRule, HubId, HubLimits, Message, MessageFilters,
    MessageProperties, Origin, Plan, QoS, SubscriptionFilter, TopicName,
};

fn connect(engine: &Engine, hub: HubId, id: &str) -> Session {
    engine
        .connect(ConnectRequest {
            hub,
            client_id: Some(ClientId::new(id).unwrap()),
            clean_start: true,
            session_expiry_secs: 0,
            receive_maximum: u16::MAX,
            will: None,
        })
        .unwrap()
        .session
}

fn subscribe(s: &Session, filter: &str, qos: QoS) {
    s.subscribe(&[SubscribeRequest {
        filter: SubscriptionFilter::parse(filter).unwrap(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
        subscription_id: None,
    }]);
}

/// Publishes `n` messages over `topics`, draining (and acknowledging) every subscriber
/// every `batch` publishes; returns publishes per second. Every client gets `filters`
/// (the hub's anonymous filters); the default ones cost nothing to check.
fn run(
    name: &str,
    subscribers: usize,
    filter: impl Fn(usize) -> String,
    topics: &[String],
    qos: QoS,
    filters: MessageFilters,
) {
    let engine = Engine::new(EngineConfig::default());
    let hub = HubId::new_random();
    let limits = HubLimits {
        budget_bytes: u64::MAX,
        ..HubLimits::default()
    };
    engine
        .create_hub(HubSpec {
            id: hub,
            name: "bench".into(),
            plan: Plan::Dedicated,
            limits,
            allow_anonymous: true,
            anonymous_filters: filters,
            enabled: true,
            events_enabled: true,
            events_topic_prefix: TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).unwrap(),
        })
        .unwrap();
    let subs: Vec<Session> = (0..subscribers)
        .map(|i| {
            let s = connect(&engine, hub, &format!("s{i}"));
            subscribe(&s, &filter(i), qos);
            s
        })
        .collect();
    let publisher = connect(&engine, hub, "p");
    let payload = Bytes::from(vec![b'x'; 64]);
    let messages: Vec<Message> = topics
        .iter()
        .map(|t| Message {
            topic: TopicName::new(t).unwrap(),
            payload: payload.clone(),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            origin: Origin::Client(ClientId::new("p").unwrap()),
        })
        .collect();
    let n = 200_000;
    let batch = 200;
    let mut out = Vec::new();
    let (mut delivered, start) = (0usize, Instant::now());
    for i in 0..n {
        let m = messages[i % messages.len()].clone();
        let id = (qos != QoS::AtMostOnce).then_some(1);
        publisher.publish(m, id).unwrap();
        if i % batch == batch - 1 {
            for s in &subs {
                // Like a connection task: poll, acknowledge at once, poll again while the
                // freed window lets more out.
                loop {
                    out.clear();
                    s.poll_outgoing(&mut out, usize::MAX);
                    if out.is_empty() {
                        break;
                    }
                    for o in &out {
                        match o {
                            Outgoing::Publish(p) => {
                                delivered += 1;
                                if let Some(id) = p.packet_id {
                                    s.acknowledge(id);
                                }
                            }
                            Outgoing::PubRel(_) => {}
                            Outgoing::Disconnect(reason) => panic!("kicked: {reason:?}"),
                        }
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<40} {:>10.0} publishes/s {:>10.0} deliveries/s",
        n as f64 / secs,
        delivered as f64 / secs
    );
}

fn main() {
    let devices: Vec<String> = (0..1000)
        .map(|i| format!("devices/{i}/telemetry"))
        .collect();
    run(
        "1:1 exact, QoS 0",
        1,
        |_| "a/b/c".into(),
        &["a/b/c".into()],
        QoS::AtMostOnce,
        MessageFilters::default(),
    );
    run(
        "1:1 exact, QoS 1",
        1,
        |_| "a/b/c".into(),
        &["a/b/c".into()],
        QoS::AtLeastOnce,
        MessageFilters::default(),
    );
    run(
        "1000 subscribers, one topic each, QoS 0",
        1000,
        |i| format!("devices/{i}/telemetry"),
        &devices,
        QoS::AtMostOnce,
        MessageFilters::default(),
    );
    run(
        "fan-out to 100 via devices/+/#, QoS 0",
        100,
        |_| "devices/+/#".into(),
        &devices,
        QoS::AtMostOnce,
        MessageFilters::default(),
    );
    run(
        "shared group of 10, QoS 1",
        10,
        |_| "$share/g/devices/#".into(),
        &devices,
        QoS::AtLeastOnce,
        MessageFilters::default(),
    );
    let rule = |policy, topics: &[&str]| FilterRule {
        policy,
        topics: topics.iter().map(|t| t.to_string()).collect(),
    };
    run(
        "1:1 exact, QoS 0, publish filter",
        1,
        |_| "a/b/c".into(),
        &["a/b/c".into()],
        QoS::AtMostOnce,
        MessageFilters {
            publish: rule(FilterPolicy::Accept, &["a/#", "x/+/y"]),
            subscribe: FilterRule::default(),
        },
    );
    run(
        "fan-out to 100 via devices/+/#, checked per message, QoS 0",
        100,
        |_| "devices/+/#".into(),
        &devices,
        QoS::AtMostOnce,
        MessageFilters {
            publish: FilterRule::default(),
            subscribe: rule(FilterPolicy::Reject, &["devices/999/#", "devices/+/secret"]),
        },
    );
}
