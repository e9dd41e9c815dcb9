//! Behaviour tests of the engine through its public API, driven by a [`ManualClock`].
//! Normative statements are cited as `[MQTT-x.y.z-n]`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iothub_model::{
    ClientId, DeviceId, HubId, HubLimits, Message, MessageFilters, MessageProperties, Origin, Plan,
    QoS, SubscriptionFilter, TopicName,
};

use crate::*;

mod activity;
mod budget;
mod devices;
mod events;
mod journal;
mod route_tap;
mod tenancy;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

struct Fx {
    engine: Engine,
    clock: ManualClock,
    hub: HubId,
}

impl Fx {
    fn new() -> Self {
        Self::with(Plan::Dedicated, HubLimits::default())
    }

    fn with(plan: Plan, limits: HubLimits) -> Self {
        let clock = ManualClock::new();
        let engine = Engine::new(EngineConfig {
            clock: Arc::new(clock.clone()),
            journal: None,
        });
        let hub = HubId::new_random();
        engine
            .create_hub(hub_spec(hub, "default", plan, limits, true))
            .unwrap();
        Self { engine, clock, hub }
    }

    /// Registers an enabled device of the hub that may connect without a certificate.
    fn add_device(&self, filters: MessageFilters) -> DeviceId {
        let id = DeviceId::new_random();
        self.engine
            .upsert_device(device_spec(id, self.hub, filters))
            .unwrap();
        id
    }

    /// A device connects with `client_id` (`None` = empty) and a clean session.
    fn connect_device(&self, device: DeviceId, client_id: Option<&str>) -> Connected {
        let req = ConnectRequest {
            client_id: client_id.map(|c| ClientId::new(c).unwrap()),
            ..self.req("unused", true, 0)
        };
        self.engine.connect_as(insecure(device), req).unwrap()
    }

    fn req(&self, id: &str, clean_start: bool, expiry: u32) -> ConnectRequest {
        ConnectRequest {
            hub: self.hub,
            client_id: Some(ClientId::new(id).unwrap()),
            clean_start,
            session_expiry_secs: expiry,
            receive_maximum: u16::MAX,
            will: None,
        }
    }

    fn connect_full(&self, req: ConnectRequest) -> Connected {
        self.engine.connect(req).unwrap()
    }

    /// A clean session that ends with its connection.
    fn client(&self, id: &str) -> Session {
        self.connect_full(self.req(id, true, 0)).session
    }

    /// A session kept `expiry` seconds after its connection.
    fn persistent(&self, id: &str, clean_start: bool, expiry: u32) -> Connected {
        self.connect_full(self.req(id, clean_start, expiry))
    }

    fn stats(&self) -> HubStats {
        self.engine.hub_stats(self.hub).unwrap()
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.engine.tick();
    }
}

fn hub_spec(id: HubId, name: &str, plan: Plan, limits: HubLimits, anonymous: bool) -> HubSpec {
    HubSpec {
        id,
        name: name.into(),
        plan,
        limits,
        allow_anonymous: anonymous,
        anonymous_filters: MessageFilters::default(),
        enabled: true,
        events_enabled: true,
        events_topic_prefix: TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).unwrap(),
    }
}

fn device_spec(id: DeviceId, hub: HubId, filters: MessageFilters) -> DeviceSpec {
    DeviceSpec {
        id,
        hub,
        name: format!("dev-{}", &id.to_string()[..8]),
        enabled: true,
        allow_insecure: true,
        allow_multiple_connections: false,
        filters,
        certificate_fingerprint: None,
    }
}

/// A device identified without a certificate (client id or username).
fn insecure(id: DeviceId) -> Identity {
    Identity::Device {
        id,
        certificate: None,
    }
}

fn msg(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
    Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: MessageProperties::default(),
        origin: Origin::Hub,
    }
}

fn expiring(topic: &str, payload: &str, qos: QoS, secs: u32) -> Message {
    let mut m = msg(topic, payload, qos, false);
    m.properties.message_expiry_interval = Some(secs);
    m
}

fn sub(filter: &str, qos: QoS) -> SubscribeRequest {
    SubscribeRequest {
        filter: SubscriptionFilter::parse(filter).unwrap(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
        subscription_id: None,
    }
}

fn subscribe(s: &Session, filter: &str, qos: QoS) {
    assert_eq!(s.subscribe(&[sub(filter, qos)]), vec![Ok(qos)]);
}

/// Publishes and, for QoS 2, releases the packet id at once (PUBREL), so id 1 serves
/// every call.
fn publish(s: &Session, topic: &str, payload: &str, qos: QoS) -> PublishAck {
    let id = (qos != Q0).then_some(1);
    let ack = s.publish(msg(topic, payload, qos, false), id).unwrap();
    if qos == Q2 {
        s.release(1);
    }
    ack
}

fn drain(s: &Session) -> Vec<Outgoing> {
    let mut out = Vec::new();
    s.poll_outgoing(&mut out, usize::MAX);
    out
}

fn publishes(out: &[Outgoing]) -> Vec<&OutgoingPublish> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Payloads of the publishes waiting for `s`, each acknowledged like a well-behaved
/// client does (PUBACK, or PUBREC then PUBCOMP).
fn payloads(s: &Session) -> Vec<String> {
    let out = drain(s);
    publishes(&out)
        .iter()
        .map(|p| {
            if let Some(id) = p.packet_id {
                if p.qos == Q2 {
                    assert!(s.received(id));
                }
                assert!(s.acknowledge(id));
            }
            String::from_utf8_lossy(&p.message.payload).into_owned()
        })
        .collect()
}

#[test]
fn engine_and_session_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
    check::<Session>();
}

// ---- routing --------------------------------------------------------------------------

#[test]
fn overlapping_subscriptions_deliver_one_copy() {
    // (subscriptions (filter, qos, id), published topic and qos, expected (qos, ids) or none)
    type Case = (
        &'static [(&'static str, QoS, Option<u32>)],
        &'static str,
        QoS,
        Option<(QoS, &'static [u32])>,
    );
    let table: &[Case] = &[
        (&[("a/b", Q1, None)], "a/b", Q2, Some((Q1, &[]))),
        (&[("a/b", Q2, None)], "a/b", Q1, Some((Q1, &[]))),
        // [MQTT-3.3.4-2]: one copy with the maximum QoS of the overlapping subscriptions.
        (
            &[("a/+", Q0, Some(1)), ("a/#", Q2, Some(2)), ("#", Q1, None)],
            "a/b",
            Q2,
            Some((Q2, &[1, 2])),
        ),
        (
            &[("a/+", Q0, Some(7)), ("x/#", Q2, Some(8))],
            "a/b",
            Q1,
            Some((Q0, &[7])),
        ),
        (&[("a/+", Q1, Some(3))], "a/b/c", Q1, None),
        // [MQTT-4.7.2-1]: leading wildcards do not match $-topics.
        (&[("#", Q1, None), ("+/x", Q1, None)], "$data/x", Q1, None),
        (
            &[("$data/#", Q1, Some(4)), ("#", Q1, Some(5))],
            "$data/x",
            Q1,
            Some((Q1, &[4])),
        ),
        (&[("+/+", Q1, None)], "/x", Q0, Some((Q0, &[]))),
    ];
    for (subs, topic, qos, expect) in table {
        let fx = Fx::new();
        let subscriber = fx.client("sub");
        for (filter, q, id) in *subs {
            let mut r = sub(filter, *q);
            r.subscription_id = *id;
            assert_eq!(subscriber.subscribe(&[r]), vec![Ok(*q)]);
        }
        let publisher = fx.client("pub");
        let ack = publish(&publisher, topic, "m", *qos);
        assert_eq!(
            ack,
            PublishAck::Delivered {
                matched: expect.is_some()
            },
            "{topic}"
        );
        let out = drain(&subscriber);
        let got: Vec<(QoS, Vec<u32>)> = publishes(&out)
            .iter()
            .map(|p| {
                let mut ids = p.subscription_ids.clone();
                ids.sort();
                (p.qos, ids)
            })
            .collect();
        let want: Vec<(QoS, Vec<u32>)> = expect.iter().map(|(q, ids)| (*q, ids.to_vec())).collect();
        assert_eq!(got, want, "subs {subs:?} topic {topic}");
    }
}

#[test]
fn no_local_and_retain_as_published() {
    // (no_local, retain_as_published, published retain) -> (delivered, retain flag)
    // [MQTT-3.3.1-12/13]: RETAIN as published only with Retain As Published.
    let table = [
        (false, false, true, Some(false)),
        (false, true, true, Some(true)),
        (false, true, false, Some(false)),
        // [MQTT-3.8.3-3]: No Local: not sent back to the publishing client.
        (true, false, false, None),
    ];
    for (no_local, rap, retain, expect) in table {
        let fx = Fx::new();
        let s = fx.client("me");
        let mut r = sub("t", Q1);
        r.no_local = no_local;
        r.retain_as_published = rap;
        s.subscribe(&[r]);
        s.publish(msg("t", "x", Q1, retain), Some(9)).unwrap();
        let out = drain(&s);
        let got = publishes(&out).first().map(|p| p.retain);
        assert_eq!(got, expect, "no_local {no_local} rap {rap} retain {retain}");
    }
}

#[test]
fn unsubscribe_stops_delivery_and_reports_existence() {
    let fx = Fx::new();
    let s = fx.client("s");
    subscribe(&s, "a/#", Q1);
    subscribe(&s, "$share/g/b", Q1);
    let filters = ["a/#", "$share/g/b", "never"].map(|f| SubscriptionFilter::parse(f).unwrap());
    assert_eq!(s.unsubscribe(&filters), vec![true, true, false]);
    assert_eq!(fx.stats().subscriptions, 0);
    let p = fx.client("p");
    assert_eq!(
        publish(&p, "a/x", "m", Q1),
        PublishAck::Delivered { matched: false }
    );
    assert!(drain(&s).is_empty());
}

#[test]
fn resubscribe_replaces_and_keeps_queue() {
    let fx = Fx::new();
    let s = fx.client("s");
    let p = fx.client("p");
    subscribe(&s, "t", Q2);
    publish(&p, "t", "one", Q2);
    // [MQTT-3.8.4-3]: replaced, the queued message stays, one subscription remains.
    subscribe(&s, "t", Q1);
    assert_eq!(fx.stats().subscriptions, 1);
    publish(&p, "t", "two", Q2);
    let out = drain(&s);
    let got: Vec<(String, QoS)> = publishes(&out)
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.message.payload).into_owned(),
                p.qos,
            )
        })
        .collect();
    assert_eq!(got, [("one".into(), Q2), ("two".into(), Q1)]);
}

// ---- retained -------------------------------------------------------------------------

#[test]
fn retained_set_replace_delete_and_wildcard_lookup() {
    let fx = Fx::new();
    let p = fx.client("p");
    for (topic, payload) in [
        ("a/b", "1"),
        ("a/c", "2"),
        ("a/b", "3"),
        ("x", "4"),
        ("$SYS/y", "5"),
    ] {
        let m = msg(topic, payload, Q1, true);
        let ack = if topic.starts_with('$') {
            fx.engine
                .publish(fx.hub, m)
                .map(|_| PublishAck::Delivered { matched: false })
                .unwrap()
        } else {
            p.publish(m, Some(1)).unwrap()
        };
        assert!(matches!(ack, PublishAck::Delivered { .. }));
    }
    assert_eq!(fx.stats().retained_messages, 4);
    // [MQTT-3.3.1-6/7]: a retained PUBLISH with an empty payload deletes the message.
    p.publish(msg("x", "", Q1, true), Some(2)).unwrap();
    assert_eq!(fx.stats().retained_messages, 3);
    let table: &[(&str, &[&str])] = &[
        ("a/+", &["2", "3"]),
        ("#", &["2", "3"]),
        ("a/b", &["3"]),
        ("x", &[]),
        ("$SYS/#", &["5"]),
        ("+/y", &[]),
    ];
    for (filter, expect) in table {
        let s = fx.client("s");
        subscribe(&s, filter, Q2);
        let out = drain(&s);
        let mut got: Vec<String> = publishes(&out)
            .iter()
            .map(|p| {
                // [MQTT-3.3.1-8]: retained messages sent at subscribe carry RETAIN.
                assert!(p.retain);
                String::from_utf8_lossy(&p.message.payload).into_owned()
            })
            .collect();
        got.sort();
        assert_eq!(got, *expect, "filter {filter}");
        s.disconnect(DisconnectKind::Normal {
            session_expiry_secs: None,
        });
    }
}

#[test]
fn retain_handling_options() {
    // (handling, second subscribe) -> retained messages at first and second SUBSCRIBE
    let table = [
        (RetainHandling::SendAtSubscribe, 1, 1),
        (RetainHandling::SendIfNewSubscription, 1, 0),
        (RetainHandling::DoNotSend, 0, 0),
    ];
    for (handling, first, second) in table {
        let fx = Fx::new();
        let p = fx.client("p");
        p.publish(msg("t", "r", Q1, true), Some(1)).unwrap();
        let s = fx.client("s");
        let mut r = sub("t", Q1);
        r.retain_handling = handling;
        s.subscribe(std::slice::from_ref(&r));
        assert_eq!(publishes(&drain(&s)).len(), first, "{handling:?}");
        s.subscribe(&[r]);
        assert_eq!(publishes(&drain(&s)).len(), second, "{handling:?}");
    }
}

#[test]
fn retained_qos_is_min_of_message_and_grant_and_never_for_shared() {
    let fx = Fx::new();
    let p = fx.client("p");
    p.publish(msg("t", "r", Q2, true), Some(1)).unwrap();
    p.release(1);
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    let out = drain(&s);
    assert_eq!(publishes(&out)[0].qos, Q1);
    subscribe(&s, "$share/g/t", Q2);
    assert!(drain(&s).is_empty());
}

#[test]
fn retained_message_expires() {
    let fx = Fx::new();
    let p = fx.client("p");
    let mut m = expiring("t", "r", Q1, 10);
    m.retain = true;
    p.publish(m, Some(1)).unwrap();
    fx.advance(4);
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    let out = drain(&s);
    // [MQTT-3.3.2-6]: sent with the interval left.
    assert_eq!(publishes(&out)[0].message_expiry_remaining, Some(6));
    fx.advance(6);
    assert_eq!(fx.stats().retained_messages, 0);
    let late = fx.client("late");
    subscribe(&late, "t", Q1);
    assert!(drain(&late).is_empty());
}

// ---- sessions -------------------------------------------------------------------------

#[test]
fn session_resume_vs_clean_start() {
    // (first expiry, second clean_start) -> (session_present, subscription still there)
    let table = [
        (0, false, false, false),
        (0, true, false, false),
        (60, false, true, true),
        // [MQTT-3.1.2-4]: clean start discards the session.
        (60, true, false, false),
    ];
    for (expiry, clean, present, subscribed) in table {
        let fx = Fx::new();
        let c = fx.persistent("c", true, expiry);
        assert!(!c.session_present);
        subscribe(&c.session, "t", Q1);
        c.session.disconnect(DisconnectKind::Normal {
            session_expiry_secs: None,
        });
        let again = fx.persistent("c", clean, expiry);
        assert_eq!(
            again.session_present, present,
            "expiry {expiry} clean {clean}"
        );
        let p = fx.client("p");
        publish(&p, "t", "m", Q1);
        assert_eq!(
            payloads(&again.session).len(),
            usize::from(subscribed),
            "expiry {expiry} clean {clean}"
        );
    }
}

#[test]
fn offline_session_queues_qos1_and_2_only() {
    let fx = Fx::new();
    let c = fx.persistent("c", true, 60);
    subscribe(&c.session, "t", Q2);
    c.session.disconnect(DisconnectKind::Abnormal);
    let p = fx.client("p");
    publish(&p, "t", "zero", Q0);
    publish(&p, "t", "one", Q1);
    p.publish(msg("t", "two", Q2, false), Some(2)).unwrap();
    let back = fx.persistent("c", false, 60);
    assert!(back.session_present);
    assert_eq!(payloads(&back.session), ["one", "two"]);
}

#[test]
fn assigned_client_id() {
    let fx = Fx::new();
    let mut req = fx.req("x", true, 0);
    req.client_id = None;
    let a = fx.connect_full(req.clone());
    let b = fx.connect_full(req);
    assert!(a.assigned && b.assigned);
    assert!(a.client_id.as_str().starts_with("auto-"));
    assert_ne!(a.client_id, b.client_id);
    assert_eq!(a.session.client_id(), &a.client_id);
    assert_eq!(fx.stats().connected, 2);
}

#[test]
fn session_expiry_is_clamped_and_replaced_at_disconnect() {
    let limits = HubLimits {
        max_session_expiry_secs: 100,
        ..HubLimits::default()
    };
    // (requested at CONNECT, at DISCONNECT) -> (granted, alive after 99 s, alive after 101 s)
    let table = [
        (u32::MAX, None, 100, true, false),
        (50, None, 50, false, false),
        (50, Some(200), 50, true, false),
        (10, Some(0), 10, false, false),
    ];
    for (asked, at_disconnect, granted, after_99, after_101) in table {
        let fx = Fx::with(Plan::Dedicated, limits.clone());
        let c = fx.persistent("c", true, asked);
        assert_eq!(c.session_expiry_secs, granted);
        c.session.disconnect(DisconnectKind::Normal {
            session_expiry_secs: at_disconnect,
        });
        fx.advance(99);
        assert_eq!(
            fx.stats().sessions == 1,
            after_99,
            "{asked} {at_disconnect:?}"
        );
        fx.advance(2);
        assert_eq!(
            fx.stats().sessions == 1,
            after_101,
            "{asked} {at_disconnect:?}"
        );
    }
}

#[test]
fn session_expiry_ends_session_and_frees_everything() {
    let fx = Fx::new();
    let c = fx.persistent("c", true, 10);
    subscribe(&c.session, "t/#", Q1);
    c.session.disconnect(DisconnectKind::Abnormal);
    let p = fx.client("p");
    publish(&p, "t/1", "m", Q1);
    assert!(fx.stats().budget_used_bytes > 0);
    fx.advance(9);
    assert_eq!((fx.stats().sessions, fx.stats().subscriptions), (2, 1));
    fx.advance(1);
    let stats = fx.stats();
    assert_eq!(
        (stats.sessions, stats.subscriptions, stats.budget_used_bytes),
        (1, 0, 0)
    );
    let back = fx.persistent("c", false, 10);
    assert!(!back.session_present);
}

#[test]
fn expired_session_is_not_resumed_before_the_tick() {
    let fx = Fx::new();
    let c = fx.persistent("c", true, 10);
    c.session.disconnect(DisconnectKind::Abnormal);
    fx.clock.advance(Duration::from_secs(11));
    let back = fx.persistent("c", false, 10);
    assert!(!back.session_present);
}

#[test]
fn takeover_kicks_old_connection_and_old_handle_is_inert() {
    for clean in [false, true] {
        let fx = Fx::new();
        let old = fx.persistent("c", true, 60).session;
        subscribe(&old, "t", Q1);
        let new = fx.persistent("c", clean, 60);
        assert_eq!(new.session_present, !clean);
        // [MQTT-3.1.4-3]: the existing connection is closed.
        let out = drain(&old);
        assert_eq!(out, [Outgoing::Disconnect(KickReason::SessionTakenOver)]);
        assert!(drain(&old).is_empty());
        // The old handle changes nothing any more.
        assert!(old.subscribe(&[sub("u", Q1)])[0].is_err());
        assert_eq!(
            old.unsubscribe(&[SubscriptionFilter::parse("t").unwrap()]),
            [false]
        );
        assert!(!old.acknowledge(1));
        assert_eq!(
            publish(&old, "t", "ghost", Q0),
            PublishAck::Delivered { matched: false }
        );
        old.disconnect(DisconnectKind::Normal {
            session_expiry_secs: Some(0),
        });
        let stats = fx.stats();
        assert_eq!((stats.sessions, stats.connected), (1, 1));
        let p = fx.client("p");
        publish(&p, "t", "m", Q1);
        assert_eq!(
            payloads(&new.session).len(),
            usize::from(!clean),
            "clean {clean}"
        );
    }
}

// ---- QoS ------------------------------------------------------------------------------

#[test]
fn inflight_window_and_packet_ids() {
    let fx = Fx::new();
    let mut req = fx.req("s", true, 0);
    req.receive_maximum = 2;
    let s = fx.connect_full(req).session;
    subscribe(&s, "t", Q2);
    let p = fx.client("p");
    for (i, q) in [Q1, Q2, Q1, Q0, Q1].into_iter().enumerate() {
        p.publish(msg("t", &i.to_string(), q, false), Some(i as u16 + 1))
            .unwrap();
    }
    let ids = |out: &[Outgoing]| -> Vec<Option<u16>> {
        publishes(out).iter().map(|p| p.packet_id).collect()
    };
    // Window of 2: the QoS 0 message behind the third waits too (one FIFO).
    assert_eq!(ids(&drain(&s)), [Some(1), Some(2)]);
    assert!(drain(&s).is_empty());
    assert!(s.acknowledge(1));
    assert!(!s.acknowledge(1));
    assert_eq!(ids(&drain(&s)), [Some(3), None]);
    assert!(s.received(2));
    assert!(!s.received(3), "PUBREC for a QoS 1 message");
    // PUBREC does not free the slot: the id awaits PUBCOMP.
    assert!(drain(&s).is_empty());
    assert!(s.acknowledge(2));
    assert_eq!(ids(&drain(&s)), [Some(4)]);
}

#[test]
fn inflight_is_capped_by_hub_limit() {
    let limits = HubLimits {
        max_inflight_messages: 3,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    let p = fx.client("p");
    for _ in 0..5 {
        publish(&p, "t", "m", Q1);
    }
    assert_eq!(publishes(&drain(&s)).len(), 3);
}

#[test]
fn poll_respects_max_and_signals_more() {
    let fx = Fx::new();
    let s = fx.client("s");
    subscribe(&s, "t", Q0);
    let p = fx.client("p");
    for _ in 0..5 {
        publish(&p, "t", "m", Q0);
    }
    let mut out = Vec::new();
    s.poll_outgoing(&mut out, 2);
    assert_eq!(out.len(), 2);
    s.poll_outgoing(&mut out, 0);
    assert_eq!(out.len(), 2);
    s.poll_outgoing(&mut out, 10);
    assert_eq!(out.len(), 5);
}

#[test]
fn redelivery_after_reconnect_with_dup_and_pubrel() {
    let fx = Fx::new();
    let c = fx.persistent("c", true, 60);
    subscribe(&c.session, "t", Q2);
    let p = fx.client("p");
    publish(&p, "t", "one", Q1);
    p.publish(msg("t", "two", Q2, false), Some(5)).unwrap();
    p.publish(msg("t", "three", Q2, false), Some(6)).unwrap();
    let first = drain(&c.session);
    assert_eq!(publishes(&first).len(), 3);
    assert!(publishes(&first).iter().all(|p| !p.dup));
    assert!(c.session.received(3));
    c.session.disconnect(DisconnectKind::Abnormal);
    let back = fx.persistent("c", false, 60);
    // [MQTT-4.4.0-1]: unacknowledged PUBLISHes with their ids and DUP, then PUBREL.
    let again = drain(&back.session);
    let summary: Vec<String> = again
        .iter()
        .map(|o| match o {
            Outgoing::Publish(p) => format!(
                "{}:{}:{}",
                String::from_utf8_lossy(&p.message.payload),
                p.packet_id.unwrap_or_default(),
                p.dup
            ),
            Outgoing::PubRel(id) => format!("rel:{id}"),
            Outgoing::Disconnect(r) => format!("{r:?}"),
        })
        .collect();
    assert_eq!(summary, ["one:1:true", "two:2:true", "rel:3"]);
    assert!(drain(&back.session).is_empty(), "resent once, not again");
    for id in [1, 2, 3] {
        assert!(back.session.acknowledge(id));
    }
    assert_eq!(fx.stats().budget_used_bytes, 0);
}

#[test]
fn inbound_qos2_duplicate_is_not_routed_again() {
    let limits = HubLimits {
        receive_maximum: 2,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let s = fx.client("s");
    subscribe(&s, "t", Q2);
    let p = fx.client("p");
    let m = || msg("t", "m", Q2, false);
    // (message qos, packet id) -> result; PUBRELs between some steps.
    assert_eq!(
        p.publish(m(), Some(7)),
        Ok(PublishAck::Delivered { matched: true })
    );
    // [MQTT-4.3.3-9]: the retransmission is acknowledged but not delivered again.
    assert_eq!(p.publish(m(), Some(7)), Ok(PublishAck::Duplicate));
    assert_eq!(
        p.publish(msg("t", "q1", Q1, false), Some(7)),
        Err(PublishError::PacketIdInUse)
    );
    assert_eq!(
        p.publish(m(), Some(8)),
        Ok(PublishAck::Delivered { matched: true })
    );
    assert_eq!(
        p.publish(m(), Some(9)),
        Err(PublishError::ReceiveMaximumExceeded)
    );
    assert!(p.release(7));
    assert!(!p.release(7));
    assert_eq!(
        p.publish(m(), Some(7)),
        Ok(PublishAck::Delivered { matched: true })
    );
    assert_eq!(payloads(&s).len(), 3);
}

#[test]
fn inbound_qos2_state_survives_reconnect() {
    let fx = Fx::new();
    let p = fx.persistent("p", true, 60);
    p.session
        .publish(msg("t", "m", Q2, false), Some(3))
        .unwrap();
    p.session.disconnect(DisconnectKind::Abnormal);
    let back = fx.persistent("p", false, 60);
    assert_eq!(
        back.session.publish(msg("t", "m", Q2, false), Some(3)),
        Ok(PublishAck::Duplicate)
    );
    assert!(back.session.release(3));
}

#[test]
fn packet_ids_wrap_and_skip_ids_in_use() {
    let fx = Fx::new();
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    let p = fx.client("p");
    // Keep id 1 in flight while 65535 more messages go through the window.
    publish(&p, "t", "held", Q1);
    assert_eq!(publishes(&drain(&s))[0].packet_id, Some(1));
    let mut last = 0;
    for _ in 0..u16::MAX {
        publish(&p, "t", "m", Q1);
        let out = drain(&s);
        let id = publishes(&out)[0].packet_id.unwrap_or_default();
        assert_ne!(id, 1);
        assert!(s.acknowledge(id));
        last = id;
    }
    // 2..=65535, then 1 is skipped: the 65535th id is 2 again.
    assert_eq!(last, 2, "wrapped past 65535 and skipped 1");
}

// ---- message expiry ---------------------------------------------------------------------

#[test]
fn message_expiry_drops_waiting_messages_and_reports_remaining() {
    // (expiry interval, seconds waited) -> delivered with remaining, or dropped
    let table = [
        (10, 0, Some(10)),
        (10, 3, Some(7)),
        (10, 10, None),
        (10, 12, None),
    ];
    for (interval, waited, expect) in table {
        let fx = Fx::new();
        let c = fx.persistent("c", true, 60);
        subscribe(&c.session, "t", Q1);
        c.session.disconnect(DisconnectKind::Abnormal);
        let p = fx.client("p");
        p.publish(expiring("t", "m", Q1, interval), Some(1))
            .unwrap();
        fx.advance(waited);
        let back = fx.persistent("c", false, 60);
        let out = drain(&back.session);
        let got = publishes(&out)
            .first()
            .and_then(|p| p.message_expiry_remaining);
        assert_eq!(got, expect, "interval {interval} waited {waited}");
        assert_eq!(fx.stats().dropped.expired, u64::from(expect.is_none()));
    }
}

#[test]
fn expired_messages_of_offline_sessions_free_budget_at_tick() {
    let fx = Fx::new();
    let c = fx.persistent("c", true, 600);
    subscribe(&c.session, "t", Q1);
    c.session.disconnect(DisconnectKind::Abnormal);
    let p = fx.client("p");
    p.publish(expiring("t", "short", Q1, 5), Some(1)).unwrap();
    p.publish(expiring("t", "long", Q1, 50), Some(2)).unwrap();
    let both = fx.stats().budget_used_bytes;
    fx.advance(6);
    let stats = fx.stats();
    assert_eq!(stats.dropped.expired, 1);
    assert!(stats.budget_used_bytes < both && stats.budget_used_bytes > 0);
    fx.advance(50);
    assert_eq!(fx.stats().dropped.expired, 2);
    assert_eq!(fx.stats().budget_used_bytes, 0);
}

#[test]
fn flapping_clients_and_replaced_retained_leave_no_stale_timers() {
    let fx = Fx::new();
    let hub = fx.engine.inner_hub_for_tests(fx.hub);
    for _ in 0..100 {
        let c = fx.connect_full(will_request(&fx, "flap", 30, 600));
        subscribe(&c.session, "t", Q1);
        c.session.disconnect(DisconnectKind::Abnormal);
    }
    // One will timer and one expiry timer for the last disconnect.
    assert_eq!(hub.pending_timers(), 2);
    let p = fx.client("p");
    for i in 0..100 {
        let mut m = expiring("r", &i.to_string(), Q0, 60);
        m.retain = true;
        p.publish(m, None).unwrap();
        p.publish(expiring("t", "queued", Q1, 60), Some(1)).unwrap();
    }
    // Plus one retained expiry and one purge for the offline session's queue.
    assert_eq!(hub.pending_timers(), 4);
    fx.advance(1000);
    assert_eq!(hub.pending_timers(), 0);
    assert_eq!(fx.stats().budget_used_bytes, 0);
}

// ---- wills ------------------------------------------------------------------------------

fn will_request(fx: &Fx, id: &str, delay: u32, expiry: u32) -> ConnectRequest {
    let mut req = fx.req(id, true, expiry);
    req.will = Some(Will {
        message: msg("will/topic", "gone", Q1, false),
        delay_secs: delay,
    });
    req
}

#[test]
fn wills_per_disconnect_kind_delay_and_expiry() {
    use DisconnectKind::*;
    // (disconnect, will delay, session expiry, seconds after) -> will seen at each step
    type Case = (DisconnectKind, u32, u32, &'static [(u64, bool)]);
    let table: &[Case] = &[
        // [MQTT-3.1.2-10]: a normal DISCONNECT discards the will.
        (
            Normal {
                session_expiry_secs: None,
            },
            0,
            0,
            &[(0, false), (100, false)],
        ),
        (
            WithWill {
                session_expiry_secs: None,
            },
            0,
            0,
            &[(0, true)],
        ),
        (Abnormal, 0, 60, &[(0, true)]),
        // Will delay: published after the delay.
        (Abnormal, 10, 60, &[(0, false), (9, false), (1, true)]),
        // ...or at session end if that is sooner.
        (Abnormal, 30, 10, &[(0, false), (9, false), (1, true)]),
        (Abnormal, 30, 0, &[(0, true)]),
    ];
    for (how, delay, expiry, steps) in table {
        let fx = Fx::new();
        let watcher = fx.client("w");
        subscribe(&watcher, "will/#", Q1);
        let c = fx.connect_full(will_request(&fx, "c", *delay, *expiry));
        c.session.disconnect(*how);
        let mut seen = false;
        for (secs, expect) in *steps {
            fx.advance(*secs);
            seen |= !payloads(&watcher).is_empty();
            assert_eq!(
                seen, *expect,
                "{how:?} delay {delay} expiry {expiry} at +{secs}"
            );
        }
        assert_eq!(fx.stats().budget_used_bytes, 0, "{how:?} {delay} {expiry}");
    }
}

#[test]
fn dropping_the_handle_is_an_abnormal_disconnect() {
    let fx = Fx::new();
    let watcher = fx.client("w");
    subscribe(&watcher, "will/#", Q1);
    let c = fx.connect_full(will_request(&fx, "c", 0, 0));
    drop(c);
    assert_eq!(payloads(&watcher), ["gone"]);
}

#[test]
fn reconnect_before_delay_cancels_the_will() {
    let fx = Fx::new();
    let watcher = fx.client("w");
    subscribe(&watcher, "will/#", Q1);
    let c = fx.connect_full(will_request(&fx, "c", 10, 60));
    c.session.disconnect(DisconnectKind::Abnormal);
    fx.advance(5);
    // [MQTT-3.1.3-9]
    let back = fx.persistent("c", false, 60);
    assert!(back.session_present);
    fx.advance(60);
    assert!(payloads(&watcher).is_empty());
    assert_eq!(fx.stats().budget_used_bytes, 0);
}

#[test]
fn will_on_takeover() {
    // (will delay, new connection clean start) -> will published
    let table = [
        (0, false, true),
        (10, false, false),
        (10, true, true),
        (0, true, true),
    ];
    for (delay, clean, expect) in table {
        let fx = Fx::new();
        let watcher = fx.client("w");
        subscribe(&watcher, "will/#", Q1);
        let old = fx.connect_full(will_request(&fx, "c", delay, 60));
        let _new = fx.persistent("c", clean, 60);
        fx.advance(20);
        assert_eq!(
            !payloads(&watcher).is_empty(),
            expect,
            "delay {delay} clean {clean}"
        );
        drop(old);
        fx.advance(20);
        assert!(
            payloads(&watcher).is_empty(),
            "the stale handle publishes nothing"
        );
    }
}

#[test]
fn retained_will_is_stored() {
    let fx = Fx::new();
    let mut req = will_request(&fx, "c", 0, 0);
    if let Some(w) = &mut req.will {
        w.message.retain = true;
    }
    let c = fx.connect_full(req);
    c.session.disconnect(DisconnectKind::Abnormal);
    assert_eq!(fx.stats().retained_messages, 1);
}

// ---- shared subscriptions ---------------------------------------------------------------

#[test]
fn shared_subscription_round_robin_prefers_connected() {
    let fx = Fx::new();
    let a = fx.client("a");
    let b = fx.client("b");
    let offline = fx.persistent("c", true, 60);
    for s in [&a, &b, &offline.session] {
        subscribe(s, "$share/g/t/+", Q1);
    }
    offline.session.disconnect(DisconnectKind::Abnormal);
    let plain = fx.client("plain");
    subscribe(&plain, "t/#", Q1);
    let p = fx.client("p");
    for i in 0..6 {
        publish(&p, &format!("t/{i}"), "m", Q1);
    }
    assert_eq!(payloads(&a).len(), 3);
    assert_eq!(payloads(&b).len(), 3);
    assert_eq!(
        payloads(&plain).len(),
        6,
        "a plain subscription gets every message"
    );
    let back = fx.persistent("c", false, 60);
    assert!(payloads(&back.session).is_empty());
}

#[test]
fn shared_groups_are_independent_and_get_no_retained() {
    let fx = Fx::new();
    let a = fx.client("a");
    let b = fx.client("b");
    subscribe(&a, "$share/g1/t", Q1);
    subscribe(&b, "$share/g2/t", Q1);
    subscribe(&a, "t", Q1);
    let p = fx.client("p");
    publish(&p, "t", "m", Q1);
    // a: one copy by its plain subscription, one by g1 (the spec allows both).
    assert_eq!(payloads(&a).len(), 2);
    assert_eq!(payloads(&b).len(), 1);
}

#[test]
fn shared_messages_move_to_another_member_on_disconnect() {
    // (how the member leaves, its session expiry) -> messages moved to the other member
    let table = [
        (DisconnectKind::Abnormal, 60),
        (
            DisconnectKind::Normal {
                session_expiry_secs: None,
            },
            60,
        ),
        (DisconnectKind::Abnormal, 0),
    ];
    for (how, expiry) in table {
        let fx = Fx::new();
        let mut req = fx.req("a", true, expiry);
        req.receive_maximum = 1;
        let a = fx.connect_full(req).session;
        subscribe(&a, "$share/g/t", Q1);
        let b = fx.client("b");
        subscribe(&b, "$share/g/t", Q1);
        let p = fx.client("p");
        for i in 0..4 {
            publish(&p, "t", &i.to_string(), Q1);
        }
        // a got messages 0 and 2: one sent (inflight, unacknowledged), one queued.
        let sent = drain(&a);
        assert_eq!(publishes(&sent).len(), 1);
        let b_first = payloads(&b);
        assert_eq!(b_first.len(), 2);
        a.disconnect(how);
        let moved = payloads(&b);
        assert_eq!(moved, ["0", "2"], "{how:?} expiry {expiry}");
        let stats = fx.stats();
        assert_eq!(stats.sessions, if expiry > 0 { 3 } else { 2 });
    }
}

#[test]
fn sent_qos2_shared_message_stays_with_its_member() {
    // [MQTT-4.8.2-4] [MQTT-4.8.2-5]: a QoS 2 delivery that has begun is never moved; the
    // queued QoS 2 message behind it may be. Table: (how the member leaves, expiry).
    for (how, expiry) in [
        (DisconnectKind::Abnormal, 60),
        (DisconnectKind::Abnormal, 0),
    ] {
        let fx = Fx::new();
        let mut req = fx.req("a", true, expiry);
        req.receive_maximum = 1;
        let a = fx.connect_full(req).session;
        subscribe(&a, "$share/g/t", QoS::ExactlyOnce);
        let b = fx.client("b");
        subscribe(&b, "$share/g/t", QoS::ExactlyOnce);
        let p = fx.client("p");
        for i in 0..4 {
            publish(&p, "t", &i.to_string(), QoS::ExactlyOnce);
        }
        assert_eq!(
            publishes(&drain(&a)).len(),
            1,
            "a has 0 in flight, 2 queued"
        );
        assert_eq!(payloads(&b), ["1", "3"]);
        a.disconnect(how);
        assert_eq!(
            payloads(&b),
            ["2"],
            "{how:?} expiry {expiry}: only the queued one moves"
        );
        assert_eq!(
            fx.stats().budget_used_bytes > 0,
            expiry > 0,
            "kept only for a live session"
        );
    }
}

#[test]
fn shared_messages_stay_when_no_member_is_connected() {
    let fx = Fx::new();
    let a = fx.persistent("a", true, 60);
    subscribe(&a.session, "$share/g/t", Q1);
    let p = fx.client("p");
    publish(&p, "t", "m", Q1);
    assert_eq!(publishes(&drain(&a.session)).len(), 1);
    a.session.disconnect(DisconnectKind::Abnormal);
    let back = fx.persistent("a", false, 60);
    let out = drain(&back.session);
    assert!(publishes(&out)[0].dup, "resent as unacknowledged");
}

// ---- queue policy and budget -------------------------------------------------------------

#[test]
fn queue_bound_drops_and_kicks_for_qos1() {
    let limits = HubLimits {
        max_session_queue_messages: 3,
        ..HubLimits::default()
    };
    // (qos of the flood) -> (kicked)
    for (qos, kicked) in [(Q0, false), (Q1, true)] {
        let fx = Fx::with(Plan::Dedicated, limits.clone());
        let slow = fx.client("slow");
        subscribe(&slow, "t", qos);
        let fast = fx.client("fast");
        subscribe(&fast, "t", qos);
        let p = fx.client("p");
        for _ in 0..5 {
            // The publisher is never refused or blocked by a slow subscriber.
            assert_eq!(
                publish(&p, "t", "m", qos),
                PublishAck::Delivered { matched: true }
            );
            drain(&fast);
        }
        let stats = fx.stats();
        assert_eq!(stats.dropped.queue_full, 2, "{qos:?}");
        let out = drain(&slow);
        if kicked {
            assert_eq!(out, [Outgoing::Disconnect(KickReason::QuotaExceeded)]);
        } else {
            assert_eq!(publishes(&out).len(), 3);
        }
    }
}

#[test]
fn queue_byte_bound_counts_inflight() {
    let limits = HubLimits {
        max_session_queue_bytes: 10,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    let p = fx.client("p");
    publish(&p, "t", "1234", Q1); // weight 1 + 4
    assert_eq!(publishes(&drain(&s)).len(), 1);
    publish(&p, "t", "1234", Q1);
    publish(&p, "t", "1234", Q1);
    assert_eq!(fx.stats().dropped.queue_full, 1);
    assert!(s.acknowledge(1));
    publish(&p, "t", "1234", Q1);
    assert_eq!(fx.stats().dropped.queue_full, 1);
}

#[test]
fn hub_budget_refuses_retained_and_drops_deliveries() {
    let limits = HubLimits {
        budget_bytes: 20,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let p = fx.client("p");
    // weight = topic (1) + payload
    assert!(p.publish(msg("r", "123456789", Q1, true), Some(1)).is_ok());
    assert_eq!(fx.stats().budget_used_bytes, 10);
    assert_eq!(
        p.publish(msg("s", "1234567890123", Q1, true), Some(2)),
        Err(PublishError::QuotaExceeded)
    );
    // Replacing counts the difference only.
    assert!(
        p.publish(msg("r", "1234567890123456789", Q1, true), Some(3))
            .is_ok()
    );
    assert_eq!(fx.stats().budget_used_bytes, 20);
    p.publish(msg("r", "", Q1, true), Some(4)).unwrap();
    assert_eq!(fx.stats().budget_used_bytes, 0);
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    publish(&p, "t", "123456789", Q1);
    publish(&p, "t", "123456789", Q1);
    publish(&p, "t", "123456789", Q1);
    assert_eq!(fx.stats().dropped.hub_budget, 1);
    assert_eq!(payloads(&s).len(), 2);
}

#[test]
fn will_over_budget_refuses_connect() {
    let limits = HubLimits {
        budget_bytes: 5,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let req = will_request(&fx, "c", 0, 0);
    assert!(matches!(
        fx.engine.connect(req),
        Err(ConnectError::QuotaExceeded)
    ));
    assert_eq!(fx.stats().budget_used_bytes, 0);
}

#[test]
fn budget_returns_to_zero_after_everything_is_freed() {
    let fx = Fx::new();
    let watcher = fx.client("w");
    subscribe(&watcher, "#", Q2);
    let persistent = fx.persistent("keep", true, 30);
    subscribe(&persistent.session, "a/#", Q2);
    subscribe(&persistent.session, "$share/g/a/#", Q1);
    let c = fx.connect_full(will_request(&fx, "c", 5, 60));
    let p = fx.client("p");
    p.publish(msg("a/r", "retained", Q1, true), Some(1))
        .unwrap();
    p.publish(msg("a/q2", "exactly", Q2, false), Some(2))
        .unwrap();
    publish(&p, "a/q0", "zero", Q0);
    p.publish(expiring("a/e", "expiring", Q1, 3), Some(3))
        .unwrap();
    assert!(fx.stats().budget_used_bytes > 0);
    // Deliver everything to the watcher and complete every QoS flow.
    for o in drain(&watcher) {
        if let Outgoing::Publish(OutgoingPublish {
            packet_id: Some(id),
            qos,
            ..
        }) = o
        {
            if qos == Q2 {
                assert!(watcher.received(id));
            }
            assert!(watcher.acknowledge(id));
        }
    }
    persistent.session.disconnect(DisconnectKind::Abnormal);
    c.session.disconnect(DisconnectKind::Abnormal);
    p.publish(msg("a/r", "", Q1, true), Some(4)).unwrap();
    fx.advance(100);
    drain(&watcher).into_iter().for_each(|o| {
        if let Outgoing::Publish(OutgoingPublish {
            packet_id: Some(id),
            ..
        }) = o
        {
            watcher.acknowledge(id);
        }
    });
    assert_eq!(fx.stats().budget_used_bytes, 0);
    assert_eq!(fx.stats().sessions, 2);
}

// ---- hubs -----------------------------------------------------------------------------------

#[test]
fn hubs_are_isolated() {
    let fx = Fx::new();
    let other = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            other,
            "other",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        ))
        .unwrap();
    let here = fx.persistent("same", true, 60);
    subscribe(&here.session, "t", Q1);
    let mut req = fx.req("same", false, 60);
    req.hub = other;
    let there = fx.connect_full(req);
    // Same client id in two hubs: two sessions, no takeover.
    assert!(!there.session_present);
    assert!(drain(&here.session).is_empty());
    subscribe(&there.session, "t", Q1);
    there
        .session
        .publish(msg("t", "there", Q1, true), Some(1))
        .unwrap();
    assert_eq!(payloads(&there.session), ["there"]);
    assert!(payloads(&here.session).is_empty());
    assert_eq!(fx.stats().retained_messages, 0);
    assert_eq!(
        fx.engine.hub_stats(other).map(|s| s.retained_messages),
        Some(1)
    );
}

#[test]
fn hub_administration() {
    let fx = Fx::new();
    let spec = |id, name: &str| hub_spec(id, name, Plan::Dedicated, HubLimits::default(), true);
    assert_eq!(
        fx.engine.create_hub(spec(fx.hub, "x")),
        Err(EngineError::HubExists(fx.hub))
    );
    // Another hub may have the same name: names are the accounts' business.
    assert_eq!(
        fx.engine.create_hub(spec(HubId::new_random(), "default")),
        Ok(())
    );
    let s = fx.persistent("s", true, 60).session;
    fx.engine.set_hub_enabled(fx.hub, false).unwrap();
    assert_eq!(
        drain(&s),
        [Outgoing::Disconnect(KickReason::AdministrativeAction)]
    );
    assert!(matches!(
        fx.engine.connect(fx.req("t", true, 0)),
        Err(ConnectError::HubDisabled)
    ));
    fx.engine.set_hub_enabled(fx.hub, true).unwrap();
    let t = fx.client("t");
    fx.engine.shutdown();
    assert_eq!(
        drain(&t),
        [Outgoing::Disconnect(KickReason::ServerShuttingDown)]
    );
}

#[test]
fn removing_a_hub_kicks_and_frees_everything() {
    let fx = Fx::new();
    let s = fx.persistent("s", true, 60).session;
    subscribe(&s, "t", Q1);
    let p = fx.connect_full(will_request(&fx, "p", 10, 60)).session;
    p.publish(msg("r", "kept", Q1, true), Some(1)).unwrap();
    publish(&p, "t", "m", Q1);
    fx.engine.remove_hub(fx.hub).unwrap();
    assert_eq!(
        drain(&s),
        [Outgoing::Disconnect(KickReason::AdministrativeAction)]
    );
    assert!(fx.engine.hub_stats(fx.hub).is_none());
    assert_eq!(
        fx.engine.remove_hub(fx.hub),
        Err(EngineError::UnknownHub(fx.hub))
    );
    assert!(matches!(
        fx.engine.connect(fx.req("x", true, 0)),
        Err(ConnectError::UnknownHub)
    ));
    assert_eq!(
        publish(&p, "t", "late", Q1),
        PublishAck::Delivered { matched: false }
    );
    drop(p);
    drop(s);
}

#[test]
fn removed_hub_budget_is_zero() {
    let fx = Fx::new();
    let s = fx.persistent("s", true, 60).session;
    subscribe(&s, "t", Q1);
    let p = fx.client("p");
    p.publish(msg("t", "kept", Q1, true), Some(1)).unwrap();
    let hub = fx.engine.inner_hub_for_tests(fx.hub);
    fx.engine.remove_hub(fx.hub).unwrap();
    assert_eq!(hub.stats().budget_used_bytes, 0);
    assert_eq!(hub.stats().sessions, 0);
}

// ---- connect rules and plans -------------------------------------------------------------

#[test]
fn connect_refusals() {
    let device = DeviceId::new_random();
    let own = ClientId::from(device);
    // (plan, allow_anonymous, identity, client id, clean start, expiry, will) -> result
    type Case = (
        Plan,
        bool,
        Identity,
        Option<ClientId>,
        bool,
        u32,
        Option<Message>,
        Result<(), ConnectError>,
    );
    let table: Vec<Case> = vec![
        (
            Plan::Dedicated,
            true,
            Identity::Anonymous,
            None,
            true,
            0,
            None,
            Ok(()),
        ),
        (
            Plan::Dedicated,
            false,
            Identity::Anonymous,
            None,
            true,
            0,
            None,
            Err(ConnectError::NotAuthorized),
        ),
        (
            Plan::Shared,
            true,
            Identity::Anonymous,
            None,
            true,
            0,
            None,
            Err(ConnectError::NotAuthorized),
        ),
        (
            Plan::Shared,
            false,
            insecure(device),
            None,
            true,
            0,
            None,
            Ok(()),
        ),
        (
            Plan::Shared,
            false,
            insecure(device),
            None,
            false,
            0,
            None,
            Err(ConnectError::CleanStartRequired),
        ),
        (
            Plan::Shared,
            false,
            insecure(device),
            None,
            true,
            10,
            None,
            Err(ConnectError::CleanStartRequired),
        ),
        (
            Plan::Dedicated,
            false,
            insecure(device),
            Some(own.clone()),
            true,
            0,
            None,
            Ok(()),
        ),
        // Without a certificate (username = device id), any client id becomes the device's.
        (
            Plan::Dedicated,
            false,
            insecure(device),
            ClientId::new("other").ok(),
            true,
            0,
            None,
            Ok(()),
        ),
        // With one, the client id must be the device's or empty.
        (
            Plan::Dedicated,
            false,
            Identity::Device {
                id: device,
                certificate: Some(CertificateProof::HubCa),
            },
            ClientId::new("other").ok(),
            true,
            0,
            None,
            Err(ConnectError::ClientIdInvalid),
        ),
        (
            Plan::Dedicated,
            false,
            Identity::Device {
                id: device,
                certificate: Some(CertificateProof::HubCa),
            },
            Some(own.clone()),
            true,
            0,
            None,
            Ok(()),
        ),
        (
            Plan::Dedicated,
            false,
            insecure(DeviceId::new_random()),
            None,
            true,
            0,
            None,
            Err(ConnectError::NotAuthorized),
        ),
        (
            Plan::Shared,
            false,
            insecure(device),
            None,
            true,
            0,
            Some(msg("w", "x", Q2, false)),
            Err(ConnectError::QosNotSupported),
        ),
        (
            Plan::Shared,
            false,
            insecure(device),
            None,
            true,
            0,
            Some(msg("w", "x", Q1, true)),
            Err(ConnectError::RetainNotSupported),
        ),
        (
            Plan::Dedicated,
            true,
            Identity::Anonymous,
            None,
            true,
            0,
            Some(msg("$SYS/w", "x", Q1, false)),
            Err(ConnectError::NotAuthorized),
        ),
    ];
    for (i, (plan, anonymous, identity, client_id, clean_start, expiry, will, expect)) in
        table.into_iter().enumerate()
    {
        let clock = ManualClock::new();
        let engine = Engine::new(EngineConfig {
            clock: Arc::new(clock),
            journal: None,
        });
        let hub = HubId::new_random();
        engine
            .create_hub(hub_spec(hub, "h", plan, HubLimits::default(), anonymous))
            .unwrap();
        engine
            .upsert_device(device_spec(device, hub, MessageFilters::default()))
            .unwrap();
        let req = ConnectRequest {
            hub,
            client_id,
            clean_start,
            session_expiry_secs: expiry,
            receive_maximum: 10,
            will: will.map(|message| Will {
                message,
                delay_secs: 0,
            }),
        };
        let got = engine.connect_as(identity, req);
        match (&got, expect) {
            (Ok(c), Ok(())) => {
                if let Identity::Device { .. } = identity {
                    assert_eq!(c.client_id, own, "case {i}");
                }
            }
            (Err(e), Err(want)) => assert_eq!(*e, want, "case {i}"),
            _ => panic!("case {i}: got {:?}, want {expect:?}", got.as_ref().err()),
        }
    }
}

#[test]
fn will_payload_too_large() {
    let limits = HubLimits {
        max_payload_bytes: 3,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    assert!(matches!(
        fx.engine.connect(will_request(&fx, "c", 0, 0)),
        Err(ConnectError::PayloadTooLarge)
    ));
}

#[test]
fn plan_caps_and_publish_rules() {
    // (plan, message) -> publish result
    let limits = HubLimits {
        max_payload_bytes: 4,
        ..HubLimits::default()
    };
    type Case = (Plan, Message, Result<(), PublishError>);
    let table: Vec<Case> = vec![
        (Plan::Dedicated, msg("t", "1234", Q2, true), Ok(())),
        (
            Plan::Dedicated,
            msg("t", "12345", Q0, false),
            Err(PublishError::PayloadTooLarge),
        ),
        (
            Plan::Dedicated,
            msg("$SYS/x", "1", Q0, false),
            Err(PublishError::NotAuthorized),
        ),
        (
            Plan::Dedicated,
            msg("$SCW/events", "1", Q0, false),
            Err(PublishError::NotAuthorized),
        ),
        (Plan::Dedicated, msg("$other", "1", Q0, false), Ok(())),
        (Plan::Shared, msg("t", "1", Q1, false), Ok(())),
        (
            Plan::Shared,
            msg("t", "1", Q2, false),
            Err(PublishError::QosNotSupported),
        ),
        (
            Plan::Shared,
            msg("t", "1", Q0, true),
            Err(PublishError::RetainNotSupported),
        ),
    ];
    for (i, (plan, message, expect)) in table.into_iter().enumerate() {
        let fx = Fx::with(plan, limits.clone());
        let c = fx.connect_device(fx.add_device(MessageFilters::default()), None);
        assert_eq!(c.caps, c.session.caps());
        let id = (message.qos != Q0).then_some(1);
        assert_eq!(
            c.session.publish(message, id).map(|_| ()),
            expect,
            "case {i}"
        );
    }
}

#[test]
fn shared_plan_caps_and_subscribe_downgrade() {
    let fx = Fx::with(Plan::Shared, HubLimits::default());
    let device = fx.add_device(MessageFilters::default());
    let c = fx.connect_device(device, None);
    assert_eq!(c.caps.maximum_qos, Q1);
    assert!(!c.caps.retain_available);
    assert_eq!(
        c.session
            .subscribe(&[sub("t", Q2), sub("u", Q1), sub("v", Q0)]),
        [Ok(Q0), Ok(Q0), Ok(Q0)]
    );
    let dedicated = Fx::new().client("d").caps();
    assert_eq!(dedicated.maximum_qos, Q2);
    assert!(
        dedicated.retain_available && dedicated.shared_available && dedicated.wildcard_available
    );
}

#[test]
fn too_deep_filters_are_refused() {
    let fx = Fx::new();
    let s = fx.client("s");
    let deep = vec!["a"; 300].join("/");
    assert_eq!(
        s.subscribe(&[sub(&deep, Q1)]),
        [Err(SubscribeError::QuotaExceeded)]
    );
    assert_eq!(
        s.publish(msg(&deep, "x", Q0, true), None),
        Err(PublishError::QuotaExceeded)
    );
    assert_eq!(
        s.publish(msg(&deep, "x", Q0, false), None),
        Ok(PublishAck::Delivered { matched: false })
    );
}

#[test]
fn hub_publish_reaches_subscribers() {
    let fx = Fx::new();
    let s = fx.client("s");
    subscribe(&s, "$SCW/events/#", Q1);
    assert_eq!(
        fx.engine
            .publish(fx.hub, msg("$SCW/events/x", "e", Q1, false)),
        Ok(true)
    );
    assert_eq!(payloads(&s), ["e"]);
    let unknown = HubId::new_random();
    assert_eq!(
        fx.engine.publish(unknown, msg("t", "e", Q1, false)),
        Err(EngineError::UnknownHub(unknown))
    );
}

// ---- wake-ups ---------------------------------------------------------------------------------

#[tokio::test]
async fn ready_keeps_a_wakeup_that_came_before_waiting() {
    let fx = Fx::new();
    let s = fx.client("s");
    subscribe(&s, "t", Q0);
    let p = fx.client("p");
    assert!(drain(&s).is_empty());
    publish(&p, "t", "m", Q0);
    // The message arrived before `ready` was awaited: the permit is kept.
    s.ready().await;
    assert_eq!(payloads(&s), ["m"]);
}

#[tokio::test]
async fn ready_wakes_a_waiting_task_on_publish_and_kick() {
    let fx = Fx::new();
    let s = fx.client("s");
    subscribe(&s, "t", Q0);
    let engine = fx.engine.clone();
    let p = fx.client("p");
    let waiter = tokio::spawn(async move {
        s.ready().await;
        let first = payloads(&s);
        s.ready().await;
        (first, drain(&s))
    });
    tokio::task::yield_now().await;
    publish(&p, "t", "m", Q0);
    tokio::task::yield_now().await;
    engine.shutdown();
    let (first, second) = waiter.await.unwrap();
    assert_eq!(first, ["m"]);
    assert_eq!(
        second,
        [Outgoing::Disconnect(KickReason::ServerShuttingDown)]
    );
}

// ---- concurrency ------------------------------------------------------------------------------

/// Publishers, subscribers that come and go, takeovers and ticks on several threads at once:
/// everything finishes (no deadlock) and the accounting is exact afterwards.
#[test]
fn concurrent_traffic_keeps_exact_accounting() {
    let fx = Arc::new(Fx::new());
    let mut threads = Vec::new();
    for publisher in 0..2 {
        let fx = fx.clone();
        threads.push(std::thread::spawn(move || {
            let p = fx.client(&format!("pub{publisher}"));
            for i in 0..2000u32 {
                let qos = [Q0, Q1, Q2][(i % 3) as usize];
                let mut m = msg(&format!("t/{}", i % 4), "payload", qos, i % 50 == 0);
                if i % 7 == 0 {
                    m.properties.message_expiry_interval = Some(1);
                }
                let id = (qos != Q0).then_some((i % 100 + 1) as u16);
                let ack = p.publish(m, id);
                assert!(ack.is_ok(), "{ack:?}");
                if let Some(id) = id {
                    p.release(id);
                }
            }
        }));
    }
    for subscriber in 0..3 {
        let fx = fx.clone();
        threads.push(std::thread::spawn(move || {
            let id = format!("sub{subscriber}");
            for round in 0..40 {
                let c = fx.persistent(&id, round % 5 == 0, 60);
                c.session
                    .subscribe(&[sub("t/#", Q2), sub("$share/g/t/+", Q1), sub("t/1", Q1)]);
                for _ in 0..5 {
                    payloads(&c.session);
                }
                if round % 2 == 0 {
                    c.session.disconnect(DisconnectKind::Abnormal);
                } else {
                    drop(c);
                }
            }
        }));
    }
    {
        let fx = fx.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..200 {
                let c = fx.persistent("taken", false, 60);
                subscribe(&c.session, "t/2", Q1);
                drain(&c.session);
                fx.clock.advance(Duration::from_millis(20));
                fx.engine.tick();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    // End every session and retained message: nothing may remain reserved.
    for id in ["sub0", "sub1", "sub2", "taken", "pub0", "pub1"] {
        let c = fx.persistent(id, true, 0);
        c.session.disconnect(DisconnectKind::Normal {
            session_expiry_secs: None,
        });
    }
    let retained = Fx::client(&fx, "cleaner");
    for i in 0..4 {
        retained
            .publish(msg(&format!("t/{i}"), "", Q0, true), None)
            .unwrap();
    }
    drop(retained);
    fx.advance(120);
    let stats = fx.stats();
    assert_eq!(
        (stats.sessions, stats.connected, stats.subscriptions),
        (0, 0, 0)
    );
    assert_eq!((stats.retained_messages, stats.budget_used_bytes), (0, 0));
}
