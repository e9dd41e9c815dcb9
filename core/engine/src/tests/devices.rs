//! Devices: admission (`resolve_client`, `connect_as`), multiple connections, message
//! filters on PUBLISH, SUBSCRIBE and delivery, and live changes of devices and hubs.

use iothub_model::{FilterPolicy, FilterRule};

use super::*;

fn rule(policy: FilterPolicy, topics: &[&str]) -> FilterRule {
    FilterRule {
        policy,
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

fn accept(topics: &[&str]) -> FilterRule {
    rule(FilterPolicy::Accept, topics)
}

fn reject(topics: &[&str]) -> FilterRule {
    rule(FilterPolicy::Reject, topics)
}

fn filters(publish: FilterRule, subscribe: FilterRule) -> MessageFilters {
    MessageFilters { publish, subscribe }
}

fn kicked(s: &Session) -> Option<KickReason> {
    drain(s).into_iter().find_map(|o| match o {
        Outgoing::Disconnect(reason) => Some(reason),
        _ => None,
    })
}

impl Fx {
    fn spec(&self, id: DeviceId) -> DeviceSpec {
        device_spec(id, self.hub, MessageFilters::default())
    }

    fn upsert(&self, spec: DeviceSpec) -> Vec<RevokedSubscription> {
        self.engine.upsert_device(spec).unwrap()
    }

    /// A device's CONNECT, with a certificate its hub's CA issued (`certificate`) or none.
    fn try_device(
        &self,
        device: DeviceId,
        certificate: bool,
        req: ConnectRequest,
    ) -> Result<Connected, ConnectError> {
        self.try_device_with(device, certificate.then_some(CertificateProof::HubCa), req)
    }

    fn try_device_with(
        &self,
        device: DeviceId,
        certificate: Option<CertificateProof>,
        req: ConnectRequest,
    ) -> Result<Connected, ConnectError> {
        self.engine.connect_as(
            Identity::Device {
                id: device,
                certificate,
            },
            req,
        )
    }

    /// A device's persistent connection (clean start false, expiry 60 s).
    fn device_session(&self, device: DeviceId) -> Connected {
        let req = ConnectRequest {
            client_id: None,
            ..self.req("unused", false, 60)
        };
        self.try_device(device, false, req).unwrap()
    }
}

// ---- admission ----------------------------------------------------------------------------

#[test]
fn resolve_client_follows_the_identity_order() {
    let fx = Fx::new();
    let a = fx.hub;
    let b = HubId::new_random();
    let shared = HubId::new_random();
    let closed = HubId::new_random();
    let e = &fx.engine;
    e.create_hub(hub_spec(
        b,
        "b",
        Plan::Dedicated,
        HubLimits::default(),
        true,
    ))
    .unwrap();
    e.create_hub(hub_spec(
        shared,
        "s",
        Plan::Shared,
        HubLimits::default(),
        true,
    ))
    .unwrap();
    e.create_hub(hub_spec(closed, "c", Plan::Ha, HubLimits::default(), false))
        .unwrap();
    let insecure_dev = fx.add_device(MessageFilters::default());
    let secure_dev = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_insecure: false,
        ..fx.spec(secure_dev)
    });
    let disabled_dev = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        enabled: false,
        ..fx.spec(disabled_dev)
    });
    let b_dev = DeviceId::new_random();
    e.upsert_device(device_spec(b_dev, b, MessageFilters::default()))
        .unwrap();
    let unknown = DeviceId::new_random().to_string();
    let (ins, sec, dis, bd) = (
        insecure_dev.to_string(),
        secure_dev.to_string(),
        disabled_dev.to_string(),
        b_dev.to_string(),
    );
    let (a_s, b_s, shared_s, closed_s) = (
        a.to_string(),
        b.to_string(),
        shared.to_string(),
        closed.to_string(),
    );
    let upper = ins.to_uppercase();
    let dev = |id, certificate: bool| Identity::Device {
        id,
        certificate: certificate.then_some(CertificateProof::HubCa),
    };
    let ca = |device| {
        Some(VerifiedCertificate {
            hub: a,
            device,
            proof: CertificateProof::HubCa,
        })
    };
    use ConnectError::*;
    // (listener hub, client id, username, password empty, certificate) -> result
    type Case<'a> = (
        Option<HubId>,
        &'a str,
        Option<&'a str>,
        bool,
        Option<VerifiedCertificate>,
        Result<(HubId, Identity), ConnectError>,
    );
    let table: Vec<Case> = vec![
        // 2. the client id is a device id.
        (
            None,
            &ins,
            None,
            true,
            None,
            Ok((a, dev(insecure_dev, false))),
        ),
        (
            Some(b),
            &ins,
            None,
            true,
            None,
            Ok((a, dev(insecure_dev, false))),
        ),
        (None, &bd, None, true, None, Ok((b, dev(b_dev, false)))),
        (
            None,
            &upper,
            None,
            true,
            None,
            Ok((a, dev(insecure_dev, false))),
        ),
        (None, &sec, None, true, None, Err(MutualTlsRequired)),
        (None, &dis, None, true, None, Err(DeviceDisabled)),
        // 1. a certificate decides; the client id must agree or be empty.
        (
            None,
            &sec,
            None,
            true,
            ca(secure_dev),
            Ok((a, dev(secure_dev, true))),
        ),
        (
            None,
            "",
            None,
            true,
            ca(secure_dev),
            Ok((a, dev(secure_dev, true))),
        ),
        (None, &ins, None, true, ca(secure_dev), Err(ClientIdInvalid)),
        (None, "x", None, true, ca(secure_dev), Err(ClientIdInvalid)),
        (None, "", None, true, ca(disabled_dev), Err(DeviceDisabled)),
        (
            Some(a),
            "",
            None,
            true,
            ca(DeviceId::new_random()),
            Err(NotAuthorized),
        ),
        // 3. the username is a device id, with an empty password.
        (
            None,
            "any",
            Some(&ins),
            true,
            None,
            Ok((a, dev(insecure_dev, false))),
        ),
        (
            None,
            "",
            Some(&ins),
            true,
            None,
            Ok((a, dev(insecure_dev, false))),
        ),
        (None, "any", Some(&sec), true, None, Err(MutualTlsRequired)),
        (None, "any", Some(&dis), true, None, Err(DeviceDisabled)),
        (None, "any", Some(&ins), false, None, Err(NotAuthorized)),
        (
            Some(b),
            "any",
            Some(&ins),
            false,
            None,
            Ok((b, Identity::Anonymous)),
        ),
        // 4. the username is a hub id that admits anonymous clients.
        (
            None,
            "any",
            Some(&a_s),
            true,
            None,
            Ok((a, Identity::Anonymous)),
        ),
        (
            Some(a),
            "any",
            Some(&b_s),
            false,
            None,
            Ok((b, Identity::Anonymous)),
        ),
        (
            Some(a),
            "any",
            Some(&shared_s),
            true,
            None,
            Err(NotAuthorized),
        ),
        (
            Some(a),
            "any",
            Some(&closed_s),
            true,
            None,
            Err(NotAuthorized),
        ),
        // 5. the listener's anonymous hub.
        (
            Some(a),
            &unknown,
            None,
            true,
            None,
            Ok((a, Identity::Anonymous)),
        ),
        (
            Some(b),
            "sensor",
            Some("user"),
            false,
            None,
            Ok((b, Identity::Anonymous)),
        ),
        (None, &unknown, None, true, None, Err(NotAuthorized)),
        (
            None,
            "sensor",
            Some(&unknown),
            true,
            None,
            Err(NotAuthorized),
        ),
    ];
    for (i, (listener, client_id, username, password_is_empty, certificate, expect)) in
        table.into_iter().enumerate()
    {
        let credentials = Credentials {
            client_id,
            username,
            password_is_empty,
            certificate,
        };
        assert_eq!(e.resolve_client(listener, &credentials), expect, "case {i}");
    }
}

#[test]
fn device_admission_at_connect() {
    let fx = Fx::new();
    let other_hub = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            other_hub,
            "other",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        ))
        .unwrap();
    let insecure_dev = fx.add_device(MessageFilters::default());
    let secure_dev = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_insecure: false,
        ..fx.spec(secure_dev)
    });
    let disabled_dev = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        enabled: false,
        ..fx.spec(disabled_dev)
    });
    let own = ClientId::from(insecure_dev);
    // (device, certificate, hub, client id) -> Ok((session client id, assigned)) or error
    type Case = (
        DeviceId,
        bool,
        HubId,
        Option<&'static str>,
        Result<(ClientId, bool), ConnectError>,
    );
    let table: Vec<Case> = vec![
        (insecure_dev, false, fx.hub, None, Ok((own.clone(), true))),
        (
            insecure_dev,
            false,
            fx.hub,
            Some("other"),
            Ok((own.clone(), true)),
        ),
        (
            insecure_dev,
            true,
            fx.hub,
            Some("other"),
            Err(ConnectError::ClientIdInvalid),
        ),
        (
            insecure_dev,
            false,
            other_hub,
            None,
            Err(ConnectError::NotAuthorized),
        ),
        (
            secure_dev,
            false,
            fx.hub,
            None,
            Err(ConnectError::MutualTlsRequired),
        ),
        (
            secure_dev,
            true,
            fx.hub,
            None,
            Ok((ClientId::from(secure_dev), true)),
        ),
        (
            disabled_dev,
            true,
            fx.hub,
            None,
            Err(ConnectError::DeviceDisabled),
        ),
        (
            DeviceId::new_random(),
            false,
            fx.hub,
            None,
            Err(ConnectError::NotAuthorized),
        ),
    ];
    for (i, (device, certificate, hub, client_id, expect)) in table.into_iter().enumerate() {
        let req = ConnectRequest {
            hub,
            client_id: client_id.map(|c| ClientId::new(c).unwrap()),
            ..fx.req("unused", true, 0)
        };
        let got = fx
            .try_device(device, certificate, req)
            .map(|c| (c.client_id, c.assigned));
        assert_eq!(got, expect, "case {i}");
    }
    // The device id itself as client id is not "assigned".
    let c = fx.connect_device(insecure_dev, Some(own.as_str()));
    assert_eq!((c.client_id, c.assigned), (own, false));
}

#[test]
fn a_second_connection_takes_the_device_session_over() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let first = fx.device_session(device);
    subscribe(&first.session, "t", Q1);
    let second = fx.device_session(device);
    assert!(second.session_present);
    assert_eq!(kicked(&first.session), Some(KickReason::SessionTakenOver));
    publish(&fx.client("p"), "t", "m", Q1);
    assert_eq!(payloads(&second.session), ["m"]);
    assert!(fx.engine.device_connected(device));
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 1);
}

#[test]
fn multiple_connections_each_get_their_own_session() {
    let fx = Fx::new();
    let device = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_multiple_connections: true,
        ..fx.spec(device)
    });
    let own = ClientId::from(device);
    let conns: Vec<Connected> = (0..3).map(|_| fx.device_session(device)).collect();
    assert_eq!(conns[0].client_id, own);
    for extra in &conns[1..] {
        assert!(extra.client_id.as_str().starts_with(&format!("{own}.")));
        assert!(!extra.assigned);
        assert!(!extra.session_present);
        // Extra sessions end with their connection.
        assert_eq!(extra.session_expiry_secs, 0);
    }
    assert_ne!(conns[1].client_id, conns[2].client_id);
    for (c, topic) in conns.iter().zip(["a", "b", "c"]) {
        subscribe(&c.session, topic, Q1);
    }
    let p = fx.client("p");
    for topic in ["a", "b", "c"] {
        publish(&p, topic, topic, Q1);
    }
    for (c, topic) in conns.iter().zip(["a", "b", "c"]) {
        assert_eq!(payloads(&c.session), [topic], "{}", c.client_id);
    }
    assert_eq!(fx.stats().sessions, 4);
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 1);
    // The first connection leaves: its persistent session stays for the next one, the
    // others keep running.
    let mut conns = conns.into_iter();
    let first = conns.next().unwrap();
    first.session.disconnect(DisconnectKind::Normal {
        session_expiry_secs: None,
    });
    assert!(fx.engine.device_connected(device));
    let back = fx.device_session(device);
    assert_eq!(back.client_id, own);
    assert!(back.session_present);
    // An extra connection's session ends with it, whatever DISCONNECT asks.
    let extra = conns.next().unwrap();
    extra.session.disconnect(DisconnectKind::Normal {
        session_expiry_secs: Some(600),
    });
    assert_eq!(fx.stats().sessions, 3);
    let last = conns.next().unwrap();
    assert_eq!(kicked(&last.session), None);
}

#[test]
fn the_shared_plan_ignores_multiple_connections() {
    let fx = Fx::with(Plan::Shared, HubLimits::default());
    let device = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_multiple_connections: true,
        ..fx.spec(device)
    });
    let first = fx.connect_device(device, None);
    let second = fx.connect_device(device, None);
    assert_eq!(first.client_id, second.client_id);
    assert_eq!(kicked(&first.session), Some(KickReason::SessionTakenOver));
    // And device sessions follow the plan's rules like any other.
    let req = ConnectRequest {
        client_id: None,
        ..fx.req("unused", false, 0)
    };
    assert!(matches!(
        fx.try_device(device, false, req),
        Err(ConnectError::CleanStartRequired)
    ));
}

#[test]
fn a_device_never_resumes_an_anonymous_session_with_its_id() {
    let fx = Fx::new();
    let device = DeviceId::new_random();
    let anonymous = fx.persistent(&device.to_string(), true, 60);
    subscribe(&anonymous.session, "t", Q1);
    fx.upsert(fx.spec(device));
    let c = fx.device_session(device);
    assert!(!c.session_present);
    assert_eq!(
        kicked(&anonymous.session),
        Some(KickReason::SessionTakenOver)
    );
    assert_eq!(fx.stats().subscriptions, 0);
}

// ---- live device changes ------------------------------------------------------------------

#[test]
fn disabling_a_device_kicks_and_refuses_it() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let c = fx.device_session(device);
    fx.upsert(DeviceSpec {
        enabled: false,
        ..fx.spec(device)
    });
    assert_eq!(kicked(&c.session), Some(KickReason::AdministrativeAction));
    c.session.disconnect(DisconnectKind::Abnormal);
    assert!(!fx.engine.device_connected(device));
    let req = fx.req("unused", false, 60);
    assert!(matches!(
        fx.try_device(device, false, req),
        Err(ConnectError::DeviceDisabled)
    ));
    // Its session was kept: enabling it again resumes it.
    fx.upsert(fx.spec(device));
    assert!(fx.device_session(device).session_present);
}

#[test]
fn removing_a_device_ends_its_sessions() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let c = fx.device_session(device);
    subscribe(&c.session, "t", Q1);
    fx.engine.remove_device(device).unwrap();
    assert_eq!(kicked(&c.session), Some(KickReason::AdministrativeAction));
    assert_eq!((fx.stats().sessions, fx.stats().subscriptions), (0, 0));
    assert_eq!(fx.stats().budget_used_bytes, 0);
    assert!(!fx.engine.device_connected(device));
    let req = fx.req("unused", true, 0);
    assert!(matches!(
        fx.try_device(device, false, req),
        Err(ConnectError::NotAuthorized)
    ));
    assert_eq!(
        fx.engine.remove_device(device),
        Err(EngineError::UnknownDevice(device))
    );
    let credentials = Credentials {
        client_id: &device.to_string(),
        ..Credentials::default()
    };
    assert_eq!(
        fx.engine.resolve_client(None, &credentials),
        Err(ConnectError::NotAuthorized)
    );
}

#[test]
fn moving_a_device_to_another_hub() {
    let fx = Fx::new();
    let other = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            other,
            "other",
            Plan::Dedicated,
            HubLimits::default(),
            false,
        ))
        .unwrap();
    let device = fx.add_device(MessageFilters::default());
    let c = fx.device_session(device);
    subscribe(&c.session, "t", Q1);
    fx.upsert(DeviceSpec {
        hub: other,
        ..fx.spec(device)
    });
    assert_eq!(kicked(&c.session), Some(KickReason::AdministrativeAction));
    assert_eq!(fx.stats().sessions, 0);
    let credentials = Credentials {
        client_id: &device.to_string(),
        ..Credentials::default()
    };
    assert_eq!(
        fx.engine.resolve_client(Some(fx.hub), &credentials),
        Ok((
            other,
            Identity::Device {
                id: device,
                certificate: None
            }
        ))
    );
    let req = ConnectRequest {
        hub: other,
        ..fx.req("unused", true, 0)
    };
    let moved = fx.try_device(device, false, req).unwrap();
    assert!(!moved.session_present);
    assert_eq!(fx.engine.hub_connected_devices(other), 1);
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 0);
}

#[test]
fn security_changes_kick_only_connections_admitted_before_them() {
    let fx = Fx::new();
    let device = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_multiple_connections: true,
        ..fx.spec(device)
    });
    let first = fx.connect_device(device, None);
    let second = fx.connect_device(device, None);
    // (change, kicks)
    let secure = DeviceSpec {
        allow_insecure: false,
        allow_multiple_connections: true,
        ..fx.spec(device)
    };
    fx.upsert(secure.clone());
    assert_eq!(
        kicked(&first.session),
        Some(KickReason::AdministrativeAction)
    );
    assert_eq!(
        kicked(&second.session),
        Some(KickReason::AdministrativeAction)
    );
    drop((first, second));
    // Now only a certificate admits it.
    let req = ConnectRequest {
        client_id: None,
        ..fx.req("unused", true, 0)
    };
    assert!(matches!(
        fx.try_device(device, false, req.clone()),
        Err(ConnectError::MutualTlsRequired)
    ));
    let with_cert = fx.try_device(device, true, req.clone()).unwrap();
    let extra = fx.try_device(device, true, req).unwrap();
    // A change that loosens nothing kicks no one: neither re-enabling insecure nor the
    // same record again.
    fx.upsert(secure);
    fx.upsert(DeviceSpec {
        allow_multiple_connections: true,
        ..fx.spec(device)
    });
    assert_eq!(kicked(&with_cert.session), None);
    assert_eq!(kicked(&extra.session), None);
    // Turning multiple connections off kicks every connection.
    fx.upsert(fx.spec(device));
    assert_eq!(
        kicked(&with_cert.session),
        Some(KickReason::AdministrativeAction)
    );
    assert_eq!(
        kicked(&extra.session),
        Some(KickReason::AdministrativeAction)
    );
}

#[test]
fn device_administration_errors_change_nothing() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let c = fx.device_session(device);
    let bad = filters(accept(&["ok/#", "{{ device.serial }}/x"]), reject(&[]));
    let err = fx
        .engine
        .upsert_device(DeviceSpec {
            filters: bad,
            ..fx.spec(device)
        })
        .unwrap_err();
    assert!(matches!(&err, EngineError::InvalidFilters(e) if e.index == 1));
    assert!(err.to_string().contains("device.serial"), "{err}");
    let nowhere = HubId::new_random();
    assert_eq!(
        fx.engine.upsert_device(DeviceSpec {
            hub: nowhere,
            enabled: false,
            ..fx.spec(device)
        }),
        Err(EngineError::UnknownHub(nowhere))
    );
    // Still enabled, still unfiltered, still connected.
    assert_eq!(
        publish(&c.session, "anything", "x", Q1),
        PublishAck::Delivered { matched: false }
    );
    assert_eq!(kicked(&c.session), None);
    assert!(fx.engine.device_connected(device));
}

// ---- message filters ----------------------------------------------------------------------

#[test]
fn publish_filters() {
    // (publish rule, topic) -> allowed
    type Case = (FilterRule, &'static str, bool);
    let table: Vec<Case> = vec![
        (reject(&[]), "a/b", true),
        (accept(&[]), "a/b", false),
        (accept(&["a/+"]), "a/b", true),
        (accept(&["a/+"]), "a/b/c", false),
        (reject(&["secret/#"]), "secret/x", false),
        (reject(&["secret/#"]), "public/x", true),
        (
            accept(&["devices/{{ device.id }}/#"]),
            "devices/SELF/up",
            true,
        ),
        (
            accept(&["devices/{{ device.id }}/#"]),
            "devices/OTHER/up",
            false,
        ),
        (
            accept(&["{{ hub.name }}/{{ device.name }}"]),
            "default/NAME",
            true,
        ),
        (accept(&["{{ hub.id }}/+"]), "HUB/x", true),
    ];
    let fx = Fx::new();
    for (i, (publish_rule, topic, allowed)) in table.into_iter().enumerate() {
        let device = fx.add_device(filters(publish_rule, reject(&[])));
        let name = device_spec(device, fx.hub, MessageFilters::default()).name;
        let topic = topic
            .replace("SELF", &device.to_string())
            .replace("OTHER", &DeviceId::new_random().to_string())
            .replace("NAME", &name)
            .replace("HUB", &fx.hub.to_string());
        let c = fx.connect_device(device, None);
        for qos in [Q0, Q1, Q2] {
            let got = c
                .session
                .publish(msg(&topic, "x", qos, false), (qos != Q0).then_some(7));
            let want = if allowed {
                Ok(PublishAck::Delivered { matched: false })
            } else {
                Err(PublishError::NotAuthorized)
            };
            assert_eq!(got, want, "case {i}, {topic}, QoS {qos}");
            c.session.release(7);
        }
    }
}

#[test]
fn subscribe_filters_and_per_message_checks() {
    // (subscribe rule, subscription) -> granted, then (published topic, delivered)
    type Case = (
        FilterRule,
        &'static str,
        bool,
        &'static [(&'static str, bool)],
    );
    let table: Vec<Case> = vec![
        (reject(&[]), "#", true, &[("a", true), ("secret/x", true)]),
        (reject(&["secret/#"]), "secret/x", false, &[]),
        (reject(&["secret/#"]), "secret/#", false, &[]),
        (
            reject(&["secret/#"]),
            "#",
            true,
            &[("public/x", true), ("secret/x", false), ("secret", false)],
        ),
        (
            reject(&["secret/#"]),
            "$share/g/+/x",
            true,
            &[("public/x", true), ("secret/x", false)],
        ),
        (accept(&["a/#"]), "b/#", false, &[]),
        (accept(&["a/#"]), "a/b/+", true, &[("a/b/c", true)]),
        (
            accept(&["a/+"]),
            "a/#",
            true,
            &[("a/b", true), ("a/b/c", false), ("a", false)],
        ),
        (
            accept(&["cmd/{{ device.id }}/#"]),
            "cmd/+/go",
            true,
            &[("cmd/SELF/go", true), ("cmd/OTHER/go", false)],
        ),
    ];
    let fx = Fx::new();
    let p = fx.client("p");
    for (i, (subscribe_rule, filter, granted, deliveries)) in table.into_iter().enumerate() {
        let device = fx.add_device(filters(reject(&[]), subscribe_rule));
        let c = fx.connect_device(device, None);
        let fill = |t: &str| {
            t.replace("SELF", &device.to_string())
                .replace("OTHER", &DeviceId::new_random().to_string())
        };
        let got = c.session.subscribe(&[sub(filter, Q1)]);
        let want = if granted {
            Ok(Q1)
        } else {
            Err(SubscribeError::NotAuthorized)
        };
        assert_eq!(got, [want], "case {i}");
        for (topic, delivered) in deliveries {
            let topic = fill(topic);
            publish(&p, &topic, &topic, Q1);
            let expect: Vec<String> = if *delivered {
                vec![topic.clone()]
            } else {
                vec![]
            };
            assert_eq!(payloads(&c.session), expect, "case {i}, {topic}");
        }
    }
}

#[test]
fn retained_messages_pass_the_subscribe_filter_too() {
    let fx = Fx::new();
    let p = fx.client("p");
    for topic in ["public/a", "secret/b"] {
        p.publish(msg(topic, topic, Q1, true), Some(1)).unwrap();
    }
    let device = fx.add_device(filters(reject(&[]), reject(&["secret/#"])));
    let c = fx.connect_device(device, None);
    subscribe(&c.session, "+/+", Q1);
    assert_eq!(payloads(&c.session), ["public/a"]);
}

#[test]
fn shared_group_messages_go_to_members_allowed_to_receive_them() {
    let fx = Fx::new();
    let open = fx.add_device(MessageFilters::default());
    let limited = fx.add_device(filters(reject(&[]), reject(&["secret/#"])));
    let a = fx.connect_device(open, None);
    let b = fx.connect_device(limited, None);
    subscribe(&a.session, "$share/g/#", Q1);
    subscribe(&b.session, "$share/g/#", Q1);
    let p = fx.client("p");
    for i in 0..4 {
        publish(&p, "secret/x", &format!("s{i}"), Q1);
        publish(&p, "public/x", &format!("p{i}"), Q1);
    }
    let to_b = payloads(&b.session);
    assert!(to_b.iter().all(|m| m.starts_with('p')), "{to_b:?}");
    assert!(!to_b.is_empty());
    let to_a = payloads(&a.session);
    assert_eq!(to_a.len() + to_b.len(), 8);
    assert_eq!(to_a.iter().filter(|m| m.starts_with('s')).count(), 4);
    // When the open member leaves, its secret messages do not move to the limited one.
    publish(&p, "secret/y", "late", Q1);
    a.session.disconnect(DisconnectKind::Abnormal);
    assert!(payloads(&b.session).is_empty());
}

#[test]
fn wills_must_pass_the_publish_filter() {
    let fx = Fx::new();
    let device = fx.add_device(filters(accept(&["status/#"]), reject(&[])));
    for (topic, expect) in [("status/gone", true), ("other", false)] {
        let req = ConnectRequest {
            client_id: None,
            will: Some(Will {
                message: msg(topic, "bye", Q1, false),
                delay_secs: 0,
            }),
            ..fx.req("unused", true, 0)
        };
        let got = fx.try_device(device, false, req);
        assert_eq!(got.is_ok(), expect, "{topic}");
        if let Err(e) = got {
            assert_eq!(e, ConnectError::NotAuthorized);
        }
    }
}

#[test]
fn live_filter_changes_apply_to_every_session_at_once() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let will_req = ConnectRequest {
        client_id: None,
        will: Some(Will {
            message: msg("alerts/gone", "bye", Q1, false),
            delay_secs: 0,
        }),
        ..fx.req("unused", false, 60)
    };
    let c = fx.try_device(device, false, will_req).unwrap();
    for f in ["alerts/#", "#", "public/x"] {
        subscribe(&c.session, f, Q1);
    }
    let p = fx.client("p");
    publish(&p, "alerts/a", "queued", Q1);
    let budget_before = fx.stats().budget_used_bytes;
    assert!(budget_before > 0);
    let revoked = fx.upsert(DeviceSpec {
        filters: filters(reject(&["alerts/#"]), reject(&["alerts/#"])),
        ..fx.spec(device)
    });
    // The subscription wholly inside the rejected filter is gone, and reported.
    assert_eq!(
        revoked,
        [RevokedSubscription {
            hub: fx.hub,
            device: Some(device),
            client_id: ClientId::from(device),
            filter: SubscriptionFilter::parse("alerts/#").unwrap(),
        }]
    );
    assert_eq!(fx.stats().subscriptions, 2);
    // The queued alert is dropped and the will (on a refused topic) discarded: only the
    // hub budget of nothing remains.
    assert!(payloads(&c.session).is_empty());
    assert_eq!(fx.stats().budget_used_bytes, 0);
    // "#" stays, checked per message now.
    publish(&p, "alerts/b", "no", Q1);
    publish(&p, "public/x", "yes", Q1);
    assert_eq!(payloads(&c.session), ["yes"]);
    // Publishing is checked with the new rule.
    assert_eq!(
        c.session.publish(msg("alerts/x", "x", Q0, false), None),
        Err(PublishError::NotAuthorized)
    );
    // Back to open: "#" no longer needs a check; nothing is revoked.
    assert!(fx.upsert(fx.spec(device)).is_empty());
    publish(&p, "alerts/c", "now", Q1);
    assert_eq!(payloads(&c.session), ["now"]);
    c.session.disconnect(DisconnectKind::Abnormal);
    // Offline sessions are changed too: the kept session loses its now refused
    // subscription while nobody is connected.
    let revoked = fx.upsert(DeviceSpec {
        filters: filters(reject(&[]), accept(&["other/#"])),
        ..fx.spec(device)
    });
    let gone: Vec<String> = revoked.iter().map(|r| r.filter.to_string()).collect();
    assert_eq!(gone, ["public/x"]);
    let back = fx.device_session(device);
    assert!(back.session_present);
    publish(&p, "public/x", "no", Q1);
    publish(&p, "other/1", "yes", Q1);
    assert_eq!(payloads(&back.session), ["yes"]);
}

// ---- live hub changes ---------------------------------------------------------------------

#[test]
fn update_hub_applies_at_once() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let spec = hub_spec(
        fx.hub,
        "default",
        Plan::Dedicated,
        HubLimits::default(),
        true,
    );
    let d = fx.device_session(device);
    let anon = fx.persistent("anon", true, 60);
    // Limits that the caps do not show apply without kicking anyone.
    let quiet = HubSpec {
        limits: HubLimits {
            max_session_queue_messages: 1,
            ..HubLimits::default()
        },
        ..spec.clone()
    };
    assert!(fx.engine.update_hub(quiet).unwrap().is_empty());
    assert_eq!(kicked(&d.session), None);
    subscribe(&d.session, "t", Q0);
    let p = fx.client("p");
    publish(&p, "t", "1", Q0);
    publish(&p, "t", "2", Q0);
    // The bound of 1 applies: the oldest QoS 0 message made room for the newer.
    assert_eq!(payloads(&d.session), ["2"]);
    // A change of the caps kicks every connection.
    let caps = HubSpec {
        limits: HubLimits {
            max_keep_alive_secs: 30,
            ..HubLimits::default()
        },
        ..spec.clone()
    };
    fx.engine.update_hub(caps.clone()).unwrap();
    let spec = caps;
    assert_eq!(kicked(&d.session), Some(KickReason::AdministrativeAction));
    assert_eq!(
        kicked(&anon.session),
        Some(KickReason::AdministrativeAction)
    );
    drop((d, anon, p));
    let d = fx.device_session(device);
    assert_eq!(d.caps.max_keep_alive_secs, 30);
    assert!(d.session_present);
    // Anonymous clients no longer admitted: their sessions end.
    let anon = fx.persistent("anon", false, 60);
    assert!(anon.session_present);
    fx.engine
        .update_hub(HubSpec {
            allow_anonymous: false,
            ..spec.clone()
        })
        .unwrap();
    assert_eq!(
        kicked(&anon.session),
        Some(KickReason::AdministrativeAction)
    );
    assert_eq!(fx.stats().sessions, 1);
    assert!(matches!(
        fx.engine.connect(fx.req("anon", false, 60)),
        Err(ConnectError::NotAuthorized)
    ));
    // Disabled through update_hub: kicked and refused, sessions kept.
    fx.engine
        .update_hub(HubSpec {
            enabled: false,
            ..spec.clone()
        })
        .unwrap();
    assert_eq!(kicked(&d.session), Some(KickReason::AdministrativeAction));
    drop(d);
    assert!(matches!(
        fx.try_device(device, false, fx.req("unused", false, 60)),
        Err(ConnectError::HubDisabled)
    ));
    // A plan change to shared ends every session (the shared plan keeps none) and brings
    // the shared caps.
    fx.engine
        .update_hub(HubSpec {
            plan: Plan::Shared,
            allow_anonymous: false,
            ..spec.clone()
        })
        .unwrap();
    assert_eq!(fx.stats().sessions, 0);
    let d = fx.connect_device(device, None);
    assert!(!d.session_present);
    assert_eq!(d.caps.maximum_qos, Q1);
    assert_eq!(
        d.session.publish(msg("t", "x", Q1, true), Some(1)),
        Err(PublishError::RetainNotSupported)
    );
    // Back to dedicated: connections are kicked to learn the new caps.
    fx.engine.update_hub(spec).unwrap();
    assert_eq!(kicked(&d.session), Some(KickReason::AdministrativeAction));
    assert_eq!(fx.connect_device(device, None).caps.maximum_qos, Q2);
}

#[test]
fn anonymous_filters_with_client_templates() {
    let fx = Fx::new();
    let spec = HubSpec {
        anonymous_filters: filters(
            accept(&["clients/{{ device.id }}/#", "broadcast"]),
            accept(&["clients/{{ device.id }}/#", "broadcast"]),
        ),
        ..hub_spec(
            fx.hub,
            "default",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        )
    };
    assert!(fx.engine.update_hub(spec.clone()).unwrap().is_empty());
    let a = fx.client("a");
    assert_eq!(
        publish(&a, "clients/a/x", "ok", Q1),
        PublishAck::Delivered { matched: false }
    );
    assert_eq!(
        a.publish(msg("clients/b/x", "no", Q1, false), Some(2)),
        Err(PublishError::NotAuthorized)
    );
    assert_eq!(
        a.subscribe(&[sub("clients/b/#", Q1), sub("+/+", Q1), sub("broadcast", Q1)]),
        [Err(SubscribeError::NotAuthorized), Ok(Q1), Ok(Q1)]
    );
    let b = fx.client("b");
    publish(&b, "clients/b/x", "not for a", Q1);
    publish(&b, "broadcast", "all", Q1);
    assert_eq!(payloads(&a), ["all"]);
    // A client id that would widen the filter is refused.
    for id in ["+", "#", "x/y"] {
        assert!(
            matches!(
                fx.engine.connect(fx.req(id, true, 0)),
                Err(ConnectError::ClientIdInvalid)
            ),
            "{id}"
        );
    }
    // An assigned id is fine.
    let assigned = fx.connect_full(ConnectRequest {
        client_id: None,
        ..fx.req("unused", true, 0)
    });
    assert!(assigned.assigned);
    // Changing the anonymous filters re-checks anonymous sessions only.
    let device = fx.add_device(MessageFilters::default());
    let d = fx.connect_device(device, None);
    subscribe(&d.session, "broadcast", Q1);
    let revoked = fx
        .engine
        .update_hub(HubSpec {
            anonymous_filters: filters(reject(&[]), reject(&["broadcast"])),
            ..spec
        })
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].client_id.as_str(), "a");
    assert_eq!(revoked[0].device, None);
    assert_eq!(revoked[0].filter.to_string(), "broadcast");
    publish(&b, "broadcast", "again", Q1);
    assert_eq!(payloads(&d.session), ["again"]);
    assert!(payloads(&a).is_empty());
}

#[test]
fn renaming_a_hub_reexpands_name_templates() {
    let fx = Fx::new();
    let device = fx.add_device(filters(accept(&["{{ hub.name }}/#"]), reject(&[])));
    let c = fx.connect_device(device, None);
    assert!(publish_ok(&c.session, "default/x"));
    // Names are not unique across hubs (accounts name their hubs freely).
    let namesake = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            namesake,
            "plant",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        ))
        .unwrap();
    let spec = hub_spec(fx.hub, "plant", Plan::Dedicated, HubLimits::default(), true);
    fx.engine.update_hub(spec).unwrap();
    assert!(publish_ok(&c.session, "plant/x"));
    assert!(!publish_ok(&c.session, "default/x"));
    assert_eq!(kicked(&c.session), None);
}

fn publish_ok(s: &Session, topic: &str) -> bool {
    s.publish(msg(topic, "x", Q0, false), None).is_ok()
}

#[test]
fn connected_device_counts() {
    let fx = Fx::new();
    let devices: Vec<DeviceId> = (0..3)
        .map(|_| fx.add_device(MessageFilters::default()))
        .collect();
    let _anon = fx.client("anon");
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 0);
    let c0 = fx.device_session(devices[0]);
    let _c1 = fx.connect_device(devices[1], None);
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 2);
    assert!(fx.engine.device_connected(devices[0]));
    assert!(!fx.engine.device_connected(devices[2]));
    // Offline with a kept session: not connected.
    c0.session.disconnect(DisconnectKind::Abnormal);
    assert!(!fx.engine.device_connected(devices[0]));
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 1);
    assert_eq!(fx.engine.hub_connected_devices(HubId::new_random()), 0);
    assert!(!fx.engine.device_connected(DeviceId::new_random()));
}

// ---- certificates -------------------------------------------------------------------------

fn fingerprint(byte: u8) -> CertificateFingerprint {
    CertificateFingerprint::from_bytes([byte; 32])
}

/// A registered certificate admits its device only while it is the device's current one,
/// only in the hub whose CA verified it, and only under the device's id (or an empty one).
#[test]
fn certificates_admit_only_their_current_device_in_their_hub() {
    let fx = Fx::new();
    let other_hub = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            other_hub,
            "other",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        ))
        .unwrap();
    let device = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_insecure: false,
        certificate_fingerprint: Some(fingerprint(1)),
        ..fx.spec(device)
    });
    let bare = DeviceId::new_random();
    fx.upsert(DeviceSpec {
        allow_insecure: false,
        ..fx.spec(bare)
    });
    let id = device.to_string();
    let (device_name, bare_name) = (fx.spec(device).name, fx.spec(bare).name);
    let registered = |fp| CertificateProof::Registered(fingerprint(fp));
    let cert = |hub, device, proof| Some(VerifiedCertificate { hub, device, proof });
    // (client id, certificate) -> resolve_client's answer
    type Case<'a> = (
        &'a str,
        Option<VerifiedCertificate>,
        Result<(HubId, Identity), ConnectError>,
    );
    let table: Vec<Case> = vec![
        (
            "",
            cert(fx.hub, device, registered(1)),
            Ok((
                fx.hub,
                Identity::Device {
                    id: device,
                    certificate: Some(registered(1)),
                },
            )),
        ),
        (
            &id,
            cert(fx.hub, device, registered(1)),
            Ok((
                fx.hub,
                Identity::Device {
                    id: device,
                    certificate: Some(registered(1)),
                },
            )),
        ),
        // renewed or replaced: the old certificate no longer opens anything
        (
            "",
            cert(fx.hub, device, registered(2)),
            Err(ConnectError::CertificateNotCurrent),
        ),
        // a device without a registered certificate has none to match
        (
            "",
            cert(fx.hub, bare, registered(1)),
            Err(ConnectError::CertificateNotCurrent),
        ),
        // issued by another hub's CA: never a session here
        (
            "",
            cert(other_hub, device, registered(1)),
            Err(ConnectError::CertificateOtherHub),
        ),
        (
            "",
            cert(other_hub, device, CertificateProof::HubCa),
            Err(ConnectError::CertificateOtherHub),
        ),
        // the hub's own CA names devices by name: no per-device certificate to match
        (
            "",
            cert(fx.hub, bare, CertificateProof::HubCa),
            Ok((
                fx.hub,
                Identity::Device {
                    id: bare,
                    certificate: Some(CertificateProof::HubCa),
                },
            )),
        ),
        (
            "someone-else",
            cert(fx.hub, device, registered(1)),
            Err(ConnectError::ClientIdInvalid),
        ),
        // named by the hub's own CA: the client id may be the device's name (the CN)
        (
            &bare_name,
            cert(fx.hub, bare, CertificateProof::HubCa),
            Ok((
                fx.hub,
                Identity::Device {
                    id: bare,
                    certificate: Some(CertificateProof::HubCa),
                },
            )),
        ),
        (
            &device_name,
            cert(fx.hub, device, registered(1)),
            Err(ConnectError::ClientIdInvalid),
        ),
    ];
    for (i, (client_id, certificate, expect)) in table.into_iter().enumerate() {
        let credentials = Credentials {
            client_id,
            certificate,
            ..Credentials::default()
        };
        assert_eq!(
            fx.engine.resolve_client(Some(fx.hub), &credentials),
            expect,
            "case {i}"
        );
    }

    // connect_as checks again, so a renewal racing with a CONNECT is never missed.
    let req = ConnectRequest {
        client_id: None,
        ..fx.req("unused", true, 0)
    };
    assert!(matches!(
        fx.try_device_with(device, Some(registered(2)), req.clone()),
        Err(ConnectError::CertificateNotCurrent)
    ));
    assert!(matches!(
        fx.try_device_with(device, None, req.clone()),
        Err(ConnectError::MutualTlsRequired)
    ));
    let other = ConnectRequest {
        hub: other_hub,
        ..req.clone()
    };
    assert!(matches!(
        fx.try_device_with(device, Some(registered(1)), other),
        Err(ConnectError::NotAuthorized)
    ));
    fx.try_device_with(device, Some(registered(1)), req)
        .unwrap();
    let by_name = |name: &str, id, proof| {
        let req = ConnectRequest {
            client_id: Some(ClientId::new(name).unwrap()),
            ..fx.req("unused", true, 0)
        };
        fx.try_device_with(id, Some(proof), req)
            .map(|c| (c.client_id, c.assigned))
    };
    assert_eq!(
        by_name(&bare_name, bare, CertificateProof::HubCa).ok(),
        Some((ClientId::from(bare), true)),
        "the session's client id is the device id, assigned"
    );
    assert!(matches!(
        by_name(&device_name, device, registered(1)),
        Err(ConnectError::ClientIdInvalid)
    ));
}

/// Renewing, replacing or removing a device's certificate closes its live connections
/// (all of them: the engine does not know which certificate each one used); the same record
/// again closes nothing.
#[test]
fn a_certificate_change_kicks_the_device() {
    let fx = Fx::new();
    let device = DeviceId::new_random();
    let with = |fp: Option<u8>| DeviceSpec {
        allow_multiple_connections: true,
        certificate_fingerprint: fp.map(fingerprint),
        ..fx.spec(device)
    };
    let connect = |fp: Option<u8>| {
        let req = ConnectRequest {
            client_id: None,
            ..fx.req("unused", true, 0)
        };
        let proof = fp.map(|fp| CertificateProof::Registered(fingerprint(fp)));
        fx.try_device_with(device, proof, req).unwrap()
    };
    fx.upsert(with(Some(1)));
    // (registered certificate before, after) -> the live connections are kicked
    let table = [
        (Some(1), Some(1), false),
        (Some(1), Some(2), true),
        (Some(2), None, true),
        (None, None, false),
        (None, Some(3), true),
    ];
    for (i, (before, after, kicks)) in table.into_iter().enumerate() {
        // one connection with the certificate, one without (the device allows insecure)
        let live = [connect(before), connect(None)];
        fx.upsert(with(after));
        let expect = kicks.then_some(KickReason::AdministrativeAction);
        for c in &live {
            assert_eq!(kicked(&c.session), expect, "case {i}");
        }
    }
}

/// Devices are found by hub and name (hubs with their own CA name devices by the common
/// name of their certificates), through renames, moves and removals.
#[test]
fn devices_are_found_by_name_in_their_hub() {
    let fx = Fx::new();
    let other_hub = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            other_hub,
            "other",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        ))
        .unwrap();
    let (a, b) = (DeviceId::new_random(), DeviceId::new_random());
    let named = |id, hub, name: &str| DeviceSpec {
        hub,
        name: name.to_string(),
        ..fx.spec(id)
    };
    let e = &fx.engine;
    e.upsert_device(named(a, fx.hub, "pump")).unwrap();
    e.upsert_device(named(b, other_hub, "pump")).unwrap();
    let find = |hub, name| e.device_by_name(hub, name);
    assert_eq!(find(fx.hub, "pump"), Some(a));
    assert_eq!(find(other_hub, "pump"), Some(b));
    assert_eq!(find(fx.hub, "Pump"), None, "names are exact");
    e.upsert_device(named(a, fx.hub, "valve")).unwrap();
    assert_eq!(
        (find(fx.hub, "pump"), find(fx.hub, "valve")),
        (None, Some(a))
    );
    e.upsert_device(named(b, fx.hub, "pump")).unwrap();
    assert_eq!(
        (find(other_hub, "pump"), find(fx.hub, "pump")),
        (None, Some(b))
    );
    e.remove_device(a).unwrap();
    assert_eq!(find(fx.hub, "valve"), None);
    assert_eq!(find(fx.hub, "pump"), Some(b));
}
