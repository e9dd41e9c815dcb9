//! Tenancy: each hub is its own namespace. A device of hub A can never receive, retain over
//! or take over anything of hub B, even when both use the same client ids, topics, retained
//! topics and shared group names (issue 3, item 9).

use super::*;

/// Two hubs, each with one device and one anonymous client named alike.
struct Two {
    fx: Fx,
    a: HubId,
    b: HubId,
    dev_a: DeviceId,
    dev_b: DeviceId,
}

impl Two {
    fn new() -> Self {
        let fx = Fx::new();
        let a = fx.hub;
        let b = HubId::new_random();
        fx.engine
            .create_hub(hub_spec(
                b,
                "b",
                Plan::Dedicated,
                HubLimits::default(),
                true,
            ))
            .unwrap();
        let dev_a = fx.add_device(MessageFilters::default());
        let dev_b = DeviceId::new_random();
        fx.engine
            .upsert_device(device_spec(dev_b, b, MessageFilters::default()))
            .unwrap();
        Self {
            fx,
            a,
            b,
            dev_a,
            dev_b,
        }
    }

    fn req(&self, hub: HubId, client_id: &str, clean_start: bool, expiry: u32) -> ConnectRequest {
        ConnectRequest {
            hub,
            ..self.fx.req(client_id, clean_start, expiry)
        }
    }

    fn anonymous(&self, hub: HubId, client_id: &str) -> Session {
        self.fx
            .engine
            .connect(self.req(hub, client_id, false, 60))
            .unwrap()
            .session
    }

    /// A device connects as `resolve_client` decides from its client id, whichever
    /// listener (anonymous hub) it came through.
    fn device(&self, device: DeviceId, listener: HubId) -> Connected {
        let client_id = device.to_string();
        let credentials = Credentials {
            client_id: &client_id,
            ..Credentials::default()
        };
        let (hub, identity) = self
            .fx
            .engine
            .resolve_client(Some(listener), &credentials)
            .unwrap();
        let req = self.req(hub, &client_id, false, 60);
        self.fx.engine.connect_as(identity, req).unwrap()
    }

    fn stats(&self, hub: HubId) -> HubStats {
        self.fx.engine.hub_stats(hub).unwrap()
    }
}

#[test]
fn a_device_joins_its_own_hub_whatever_the_listener() {
    let t = Two::new();
    for listener in [t.a, t.b] {
        assert_eq!(t.device(t.dev_a, listener).session.hub(), t.a);
        assert_eq!(t.device(t.dev_b, listener).session.hub(), t.b);
    }
    // And cannot be connected into the other hub directly.
    let req = t.req(t.b, &t.dev_a.to_string(), true, 0);
    assert!(matches!(
        t.fx.engine.connect_as(insecure(t.dev_a), req),
        Err(ConnectError::NotAuthorized)
    ));
}

#[test]
fn messages_subscriptions_and_shared_groups_stay_in_their_hub() {
    let t = Two::new();
    let a = t.device(t.dev_a, t.a);
    let b = t.device(t.dev_b, t.b);
    let anon_a = t.anonymous(t.a, "same");
    let anon_b = t.anonymous(t.b, "same");
    for s in [&a.session, &b.session, &anon_a, &anon_b] {
        subscribe(s, "#", Q1);
        subscribe(s, "$share/g/t", Q1);
    }
    // (publisher, hub it belongs to)
    let table: [(&Session, &str); 4] = [
        (&a.session, "from-dev-a"),
        (&anon_a, "from-anon-a"),
        (&b.session, "from-dev-b"),
        (&anon_b, "from-anon-b"),
    ];
    for (publisher, payload) in table {
        publish(publisher, "t", payload, Q1);
    }
    t.fx.engine
        .publish(t.a, msg("t", "from-hub-a", Q1, false))
        .unwrap();
    for (session, hub) in [
        (&a.session, "-a"),
        (&anon_a, "-a"),
        (&b.session, "-b"),
        (&anon_b, "-b"),
    ] {
        let got = payloads(session);
        assert!(!got.is_empty());
        assert!(
            got.iter().all(|p| p.ends_with(hub)),
            "{hub}: {got:?} leaked across hubs"
        );
    }
}

#[test]
fn retained_messages_belong_to_their_hub() {
    let t = Two::new();
    let a = t.device(t.dev_a, t.a);
    let b = t.device(t.dev_b, t.b);
    a.session
        .publish(msg("state", "a", Q1, true), Some(1))
        .unwrap();
    b.session
        .publish(msg("state", "b", Q1, true), Some(1))
        .unwrap();
    // B deletes its retained message; A's stays.
    b.session
        .publish(msg("state", "", Q1, true), Some(2))
        .unwrap();
    assert_eq!(t.stats(t.a).retained_messages, 1);
    assert_eq!(t.stats(t.b).retained_messages, 0);
    let watcher_b = t.anonymous(t.b, "watcher");
    subscribe(&watcher_b, "#", Q1);
    assert!(payloads(&watcher_b).is_empty());
    let watcher_a = t.anonymous(t.a, "watcher");
    subscribe(&watcher_a, "#", Q1);
    assert_eq!(payloads(&watcher_a), ["a"]);
}

#[test]
fn same_client_ids_never_take_each_other_over() {
    let t = Two::new();
    let dev = t.device(t.dev_a, t.a);
    subscribe(&dev.session, "t", Q1);
    // A client of hub B using device A's id as its own client id is an anonymous client
    // of B with its own session; A's device is not kicked.
    let impostor =
        t.fx.engine
            .connect(t.req(t.b, &t.dev_a.to_string(), true, 0))
            .unwrap();
    assert!(!impostor.session_present);
    assert!(drain(&dev.session).is_empty());
    let anon_a = t.anonymous(t.a, "same");
    let anon_b = t.anonymous(t.b, "same");
    assert!(drain(&anon_a).is_empty());
    publish(&t.anonymous(t.a, "p"), "t", "m", Q1);
    assert_eq!(payloads(&dev.session), ["m"]);
    assert!(payloads(&impostor.session).is_empty());
    assert!(payloads(&anon_b).is_empty());
    assert!(t.fx.engine.device_connected(t.dev_a));
    assert_eq!(t.fx.engine.hub_connected_devices(t.b), 0);
}

#[test]
fn wills_and_administration_stay_in_their_hub() {
    let t = Two::new();
    let watcher_a = t.anonymous(t.a, "watcher");
    let watcher_b = t.anonymous(t.b, "watcher");
    subscribe(&watcher_a, "#", Q1);
    subscribe(&watcher_b, "#", Q1);
    let req = ConnectRequest {
        will: Some(Will {
            message: msg("gone", "a", Q1, false),
            delay_secs: 0,
        }),
        ..t.req(t.a, &t.dev_a.to_string(), true, 0)
    };
    let dev = t.fx.engine.connect_as(insecure(t.dev_a), req).unwrap();
    drop(dev);
    assert_eq!(payloads(&watcher_a), ["a"]);
    assert!(payloads(&watcher_b).is_empty());
    // Disabling, then removing, hub B leaves A's sessions alone.
    let b_dev = t.device(t.dev_b, t.b);
    t.fx.engine.set_hub_enabled(t.b, false).unwrap();
    assert_eq!(
        drain(&b_dev.session),
        [Outgoing::Disconnect(KickReason::AdministrativeAction)]
    );
    assert!(drain(&watcher_a).is_empty());
    t.fx.engine.remove_hub(t.b).unwrap();
    assert!(drain(&watcher_a).is_empty());
    assert_eq!(t.stats(t.a).connected, 1);
    // Moving a device from A to B ends its session in A; what it retained in A stays
    // in A.
    let c = HubId::new_random();
    t.fx.engine
        .create_hub(hub_spec(
            c,
            "c",
            Plan::Dedicated,
            HubLimits::default(),
            false,
        ))
        .unwrap();
    let dev = t.device(t.dev_a, t.a);
    dev.session
        .publish(msg("state", "kept", Q1, true), Some(1))
        .unwrap();
    t.fx.engine
        .upsert_device(device_spec(t.dev_a, c, MessageFilters::default()))
        .unwrap();
    assert_eq!(t.stats(t.a).retained_messages, 1);
    assert_eq!(t.stats(c).retained_messages, 0);
    let moved = t.device(t.dev_a, t.a);
    assert_eq!(moved.session.hub(), c);
    assert!(!moved.session_present);
}
