//! Hub events and `$SYS` through the engine's API: where events go (their hub, their
//! topic, the subscribers' filters), the switch and the prefix, the rate limit on the
//! manual clock, the events the engine raises itself for live changes, and the `$SYS`
//! figures of dedicated hubs.

use std::time::UNIX_EPOCH;

use iothub_model::{FilterPolicy, FilterRule};

use super::*;

const PREFIX: &str = DEFAULT_EVENTS_TOPIC_PREFIX;

/// The events (topic, JSON) waiting for `s`, acknowledged.
fn events(s: &Session) -> Vec<(String, serde_json::Value)> {
    let out = drain(s);
    publishes(&out)
        .iter()
        .map(|p| {
            if let Some(id) = p.packet_id {
                assert!(s.acknowledge(id));
            }
            let json = serde_json::from_slice(&p.message.payload).unwrap();
            (p.message.topic.as_str().to_string(), json)
        })
        .collect()
}

fn observer(fx: &Fx, id: &str, filter: &str) -> Session {
    let s = fx.client(id);
    subscribe(&s, filter, Q1);
    s
}

fn protocol_error(device: DeviceId) -> HubEvent {
    HubEvent::about_device(EventKind::ProtocolError, device, "protocol error: test")
}

fn kicked(s: &Session) -> Option<KickReason> {
    drain(s).into_iter().find_map(|o| match o {
        Outgoing::Disconnect(reason) => Some(reason),
        _ => None,
    })
}

#[test]
fn events_go_to_subscribers_of_their_hub_only() {
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
    let here = observer(&fx, "here", "$SCW/events/#");
    let everything = observer(&fx, "everything", "#");
    let errors_only = observer(&fx, "errors", "$SCW/events/error/#");
    let warnings_only = observer(&fx, "warnings", "$SCW/events/warning/#");
    let there = fx
        .engine
        .connect(ConnectRequest {
            hub: other,
            ..fx.req("there", true, 0)
        })
        .unwrap()
        .session;
    subscribe(&there, "$SCW/#", Q1);

    let device = DeviceId::new_random();
    let event = protocol_error(device).with_packet("00 00");
    assert_eq!(
        fx.engine.raise_event(fx.hub, event),
        EventOutcome::Published
    );
    let got = events(&here);
    assert_eq!(got.len(), 1, "{got:?}");
    let (topic, json) = &got[0];
    assert_eq!(topic, &format!("{PREFIX}/error/device/{device}"));
    assert_eq!(json["severity"], "error");
    assert_eq!(json["object-type"], "device");
    assert_eq!(json["object-id"], device.to_string());
    assert_eq!(json["msg"], "protocol error: test");
    assert_eq!(json["packet"], "00 00");
    assert_eq!(events(&errors_only).len(), 1);
    assert!(events(&warnings_only).is_empty());
    // [MQTT-4.7.2-1]: `#` does not match topics that start with `$`.
    assert!(events(&everything).is_empty());
    assert!(events(&there).is_empty(), "another hub's subscriber got it");

    // Events are QoS 1 application messages from the hub itself.
    let quota = HubEvent::about_hub(EventKind::QuotaExceeded, fx.hub, "budget");
    fx.engine.raise_event(fx.hub, quota);
    let out = drain(&here);
    let p = publishes(&out)[0];
    assert_eq!((p.qos, p.retain), (Q1, false));
    assert_eq!(p.message.origin, Origin::Hub);
    assert_eq!(
        p.message.topic.as_str(),
        format!("{PREFIX}/warning/hub/{}", fx.hub)
    );
    assert_eq!(
        p.message.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        fx.engine
            .raise_event(HubId::new_random(), protocol_error(device)),
        EventOutcome::UnknownHub
    );
}

#[test]
fn subscribers_filters_apply_to_events() {
    let fx = Fx::new();
    let denied = fx.add_device(MessageFilters {
        publish: FilterRule::default(),
        subscribe: FilterRule {
            policy: FilterPolicy::Reject,
            topics: vec!["$SCW/events/error/#".into()],
        },
    });
    let d = fx.connect_device(denied, None).session;
    // Overlapping the refused filter only in part: granted, and checked per message.
    subscribe(&d, "$SCW/events/#", Q1);
    fx.engine.raise_event(fx.hub, protocol_error(denied));
    fx.engine.raise_event(
        fx.hub,
        HubEvent::about_device(EventKind::ServiceLevel, denied, "service level: test"),
    );
    let got = events(&d);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1["severity"], "warning");
}

#[test]
fn events_can_be_turned_off_and_moved() {
    let fx = Fx::new();
    let default_topic = observer(&fx, "default", "$SCW/events/#");
    let custom_topic = observer(&fx, "custom", "ops/events/#");
    let device = DeviceId::new_random();
    let base = hub_spec(
        fx.hub,
        "default",
        Plan::Dedicated,
        HubLimits::default(),
        true,
    );
    let off = HubSpec {
        events_enabled: false,
        ..base.clone()
    };
    fx.engine.update_hub(off).unwrap();
    assert_eq!(
        fx.engine.raise_event(fx.hub, protocol_error(device)),
        EventOutcome::Disabled
    );
    assert!(events(&default_topic).is_empty());
    let moved = HubSpec {
        events_topic_prefix: TopicName::new("ops/events").unwrap(),
        ..base
    };
    fx.engine.update_hub(moved).unwrap();
    // A new reserved topic closes the connections, so each learns it.
    assert_eq!(
        kicked(&default_topic),
        Some(KickReason::AdministrativeAction)
    );
    assert_eq!(
        kicked(&custom_topic),
        Some(KickReason::AdministrativeAction)
    );
    let custom_topic = observer(&fx, "custom2", "ops/events/#");
    assert_eq!(
        fx.engine.raise_event(fx.hub, protocol_error(device)),
        EventOutcome::Published
    );
    let got = events(&custom_topic);
    assert_eq!(got[0].0, format!("ops/events/error/device/{device}"));
}

#[test]
fn clients_cannot_publish_under_reserved_topics() {
    let fx = Fx::new();
    let spec = HubSpec {
        events_topic_prefix: TopicName::new("ops/events").unwrap(),
        ..hub_spec(
            fx.hub,
            "default",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        )
    };
    fx.engine.update_hub(spec).unwrap();
    let c = fx.client("c");
    // (topic, refused)
    let cases = [
        ("ops/events", true),
        ("ops/events/error/device/x", true),
        ("$SCW/events/error/device/x", true),
        ("$SCW/twins/x", true),
        ("$SYS/broker/version", true),
        ("ops/eventsx", false),
        ("ops", false),
        ("x/ops/events", false),
    ];
    for (topic, refused) in cases {
        let result = c.publish(msg(topic, "x", Q0, false), None);
        assert_eq!(
            result == Err(PublishError::NotAuthorized),
            refused,
            "{topic}: {result:?}"
        );
        let will = Will {
            message: msg(topic, "w", Q0, false),
            delay_secs: 0,
        };
        let connect = fx.engine.connect(ConnectRequest {
            will: Some(will),
            ..fx.req("w", true, 0)
        });
        assert_eq!(
            connect.err() == Some(ConnectError::NotAuthorized),
            refused,
            "will on {topic}"
        );
    }
}

#[test]
fn each_kind_is_rate_limited_on_its_own() {
    let fx = Fx::new();
    let o = observer(&fx, "o", "$SCW/events/#");
    let device = DeviceId::new_random();
    let raise = |kind: EventKind, n: usize| -> usize {
        (0..n)
            .filter(|_| {
                let e = HubEvent::about_device(kind, device, "m");
                fx.engine.raise_event(fx.hub, e) == EventOutcome::Published
            })
            .count()
    };
    assert_eq!(raise(EventKind::ProtocolError, 30), EVENT_BURST as usize);
    // Another kind has its own bucket.
    assert_eq!(raise(EventKind::UnauthorizedTopic, 5), 5);
    // (seconds later, events tried, published)
    let cases = [(0, 5, 0), (1, 20, 10), (60, 50, 20)];
    for (secs, tried, published) in cases {
        fx.clock.advance(Duration::from_secs(secs));
        assert_eq!(
            raise(EventKind::ProtocolError, tried),
            published,
            "after {secs} s"
        );
    }
    let counts = fx.engine.event_counts(fx.hub).unwrap();
    assert_eq!(
        counts,
        EventCounts {
            published: 20 + 5 + 10 + 20,
            dropped: 10 + 5 + 10 + 30
        }
    );
    assert_eq!(events(&o).len() as u64, counts.published);
}

#[test]
fn events_are_stamped_with_the_clocks_calendar_time() {
    let fx = Fx::new();
    let o = observer(&fx, "o", "$SCW/events/#");
    let before = fx.clock.wall();
    fx.clock.advance(Duration::from_secs(90));
    fx.engine
        .raise_event(fx.hub, protocol_error(DeviceId::new_random()));
    let stamped = HubEvent::about_hub(EventKind::PlanChanged, fx.hub, "m")
        .with_time(UNIX_EPOCH + Duration::from_secs(86_400));
    fx.engine.raise_event(fx.hub, stamped);
    let got = events(&o);
    let expected = crate::events::rfc3339(before + Duration::from_secs(90));
    assert_eq!(got[0].1["time"], expected.as_str());
    assert_eq!(got[1].1["time"], "1970-01-02T00:00:00.000Z");
}

#[test]
fn live_changes_raise_events_about_connected_devices() {
    let fx = Fx::new();
    let o = observer(&fx, "o", "$SCW/events/#");
    let connected = |fx: &Fx| {
        let id = fx.add_device(MessageFilters::default());
        (id, fx.connect_device(id, None).session)
    };
    type Change = fn(&Fx, DeviceId);
    // (case, change, expected message)
    let cases: [(&str, Change, &str); 5] = [
        (
            "disabled",
            |fx, id| {
                let spec = DeviceSpec {
                    enabled: false,
                    ..device_spec(id, fx.hub, MessageFilters::default())
                };
                fx.engine.upsert_device(spec).unwrap();
            },
            "device is not enabled",
        ),
        (
            "insecure no longer allowed",
            |fx, id| {
                let spec = DeviceSpec {
                    allow_insecure: false,
                    ..device_spec(id, fx.hub, MessageFilters::default())
                };
                fx.engine.upsert_device(spec).unwrap();
            },
            "device security has changed, requires authentication",
        ),
        (
            "certificate registered (renewed, replaced)",
            |fx, id| {
                let spec = DeviceSpec {
                    certificate_fingerprint: Some(CertificateFingerprint::from_bytes([7; 32])),
                    ..device_spec(id, fx.hub, MessageFilters::default())
                };
                fx.engine.upsert_device(spec).unwrap();
            },
            "device security has changed, requires authentication",
        ),
        (
            "removed",
            |fx, id| fx.engine.remove_device(id).unwrap(),
            "device is deleted",
        ),
        (
            "moved to another hub",
            |fx, id| {
                let other = HubId::new_random();
                let spec = hub_spec(other, "other", Plan::Dedicated, HubLimits::default(), false);
                fx.engine.create_hub(spec).unwrap();
                fx.engine
                    .upsert_device(device_spec(id, other, MessageFilters::default()))
                    .unwrap();
            },
            "device is deleted (moved to another hub)",
        ),
    ];
    for (case, change, expected) in cases {
        let (id, session) = connected(&fx);
        change(&fx, id);
        assert_eq!(
            kicked(&session),
            Some(KickReason::AdministrativeAction),
            "{case}"
        );
        let got = events(&o);
        assert_eq!(got.len(), 1, "{case}: {got:?}");
        assert_eq!(got[0].0, format!("{PREFIX}/error/device/{id}"), "{case}");
        assert_eq!(got[0].1["msg"], expected, "{case}");
    }
    // A change that closes no connection raises nothing.
    let offline = fx.add_device(MessageFilters::default());
    fx.engine.remove_device(offline).unwrap();
    assert!(events(&o).is_empty());
    // A filter change that removes a subscription raises "unauthorized topic".
    let (id, session) = connected(&fx);
    subscribe(&session, "reports/#", Q1);
    let refused = MessageFilters {
        publish: FilterRule::default(),
        subscribe: FilterRule {
            policy: FilterPolicy::Reject,
            topics: vec!["reports/#".into()],
        },
    };
    let revoked = fx
        .engine
        .upsert_device(device_spec(id, fx.hub, refused))
        .unwrap();
    assert_eq!(revoked.len(), 1);
    let got = events(&o);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].1["msg"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized topic reports/#"),
        "{got:?}"
    );
}

#[test]
fn a_plan_change_raises_an_event_about_the_hub() {
    let fx = Fx::new();
    // A kept session hears of it when it comes back (the hub is disabled for plan changes).
    let o = fx.persistent("o", true, 600).session;
    subscribe(&o, "$SCW/events/#", Q1);
    o.disconnect(DisconnectKind::Normal {
        session_expiry_secs: None,
    });
    let ha = hub_spec(fx.hub, "default", Plan::Ha, HubLimits::default(), true);
    fx.engine.update_hub(ha.clone()).unwrap();
    fx.engine.update_hub(ha).unwrap();
    let back = fx.persistent("o", false, 600);
    assert!(back.session_present);
    let got = events(&back.session);
    assert_eq!(got.len(), 1, "one event per change: {got:?}");
    assert_eq!(got[0].0, format!("{PREFIX}/error/hub/{}", fx.hub));
    assert_eq!(got[0].1["msg"], "hub product plan has changed");
}

#[test]
fn refused_connects_name_their_subject() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let (device_id, hub_id) = (device.to_string(), fx.hub.to_string());
    let unknown = DeviceId::new_random().to_string();
    let other_hub = HubId::new_random();
    let cert = |device: DeviceId, hub: HubId| VerifiedCertificate {
        hub,
        device,
        proof: CertificateProof::HubCa,
    };
    type Subject = Option<(HubId, Option<DeviceId>)>;
    // (client id, username, certificate, subject)
    let cases: [(&str, Option<&str>, Option<VerifiedCertificate>, Subject); 7] = [
        (&device_id, None, None, Some((fx.hub, Some(device)))),
        ("x", Some(&device_id), None, Some((fx.hub, Some(device)))),
        ("x", Some(&hub_id), None, Some((fx.hub, None))),
        (&unknown, None, None, None),
        ("x", Some(&unknown), None, None),
        (
            "",
            None,
            Some(cert(device, other_hub)),
            Some((fx.hub, Some(device))),
        ),
        (
            "",
            None,
            Some(cert(DeviceId::new_random(), other_hub)),
            Some((other_hub, None)),
        ),
    ];
    for (client_id, username, certificate, subject) in cases {
        let credentials = Credentials {
            client_id,
            username,
            password_is_empty: true,
            certificate,
        };
        assert_eq!(
            fx.engine.refusal_subject(&credentials),
            subject,
            "{client_id} {username:?} {certificate:?}"
        );
    }
}

// ---- $SYS ---------------------------------------------------------------------------------

fn sys(s: &Session) -> Vec<(String, String, bool)> {
    let out = drain(s);
    publishes(&out)
        .iter()
        .map(|p| {
            (
                p.message.topic.as_str().to_string(),
                String::from_utf8_lossy(&p.message.payload).into_owned(),
                p.retain,
            )
        })
        .collect()
}

#[test]
fn dedicated_hubs_publish_sys_figures() {
    let fx = Fx::new();
    let live = fx.client("live");
    subscribe(&live, "$SYS/#", Q0);
    let stats_before = fx.stats();
    fx.engine.tick();
    let first = sys(&live);
    let value = |list: &[(String, String, bool)], topic: &str| {
        list.iter()
            .find(|(t, _, _)| t == topic)
            .map(|(_, v, _)| v.clone())
    };
    assert_eq!(
        value(&first, "$SYS/broker/version").as_deref(),
        Some(SYS_VERSION)
    );
    assert_eq!(
        value(&first, "$SYS/broker/uptime").as_deref(),
        Some("0 seconds")
    );
    assert_eq!(
        value(&first, "$SYS/broker/clients/connected").as_deref(),
        Some("1")
    );
    assert_eq!(
        value(&first, "$SYS/broker/subscriptions/count").as_deref(),
        Some("1")
    );
    assert_eq!(first.len(), 9, "{first:?}");
    assert!(
        first.iter().all(|(_, _, retain)| !retain),
        "live deliveries are not retained"
    );
    // Not the hub's retained messages, not in its budget.
    let stats = fx.stats();
    assert_eq!(stats.retained_messages, stats_before.retained_messages);
    // Nothing before the interval; then only what changed (the uptime, here).
    fx.advance(5);
    assert!(sys(&live).is_empty());
    fx.advance(5);
    let second = sys(&live);
    assert_eq!(
        value(&second, "$SYS/broker/uptime").as_deref(),
        Some("10 seconds")
    );
    assert!(
        value(&second, "$SYS/broker/version").is_none(),
        "{second:?}"
    );
    // A new subscription gets every figure at once, retained.
    let late = fx.client("late");
    subscribe(&late, "$SYS/broker/clients/+", Q0);
    let got = sys(&late);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(_, _, retain)| *retain));
    // Clients cannot write them.
    assert_eq!(
        late.publish(msg("$SYS/broker/uptime", "0", Q0, true), None),
        Err(PublishError::NotAuthorized)
    );
}

#[test]
fn shared_hubs_have_no_sys_figures() {
    let fx = Fx::with(Plan::Dedicated, HubLimits::default());
    fx.engine.tick();
    let shared = hub_spec(fx.hub, "default", Plan::Shared, HubLimits::default(), false);
    fx.engine.update_hub(shared).unwrap();
    let device = fx.add_device(MessageFilters::default());
    let d = fx.connect_device(device, None).session;
    assert_eq!(d.subscribe(&[sub("$SYS/#", Q0)]), vec![Ok(Q0)]);
    fx.advance(20);
    assert!(sys(&d).is_empty());
}
