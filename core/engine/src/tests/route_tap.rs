//! Route taps (`Engine::connect_route`): admitted on a hub without anonymous clients, not
//! counted as a device, their client ids out of reach of clients, No Local for what the
//! route publishes back, and survive the end of anonymous admission.

use super::*;

fn tap(fx: &Fx, route: &str) -> Session {
    let c = fx.engine.connect_route(fx.hub, route, 64, true).unwrap();
    assert_eq!(
        c.client_id.as_str(),
        format!("{ROUTE_CLIENT_PREFIX}{route}")
    );
    let req = SubscribeRequest {
        no_local: true,
        retain_as_published: true,
        ..sub("sensors/#", Q1)
    };
    assert_eq!(c.session.subscribe(&[req]), vec![Ok(Q1)]);
    c.session
}

#[test]
fn a_tap_gets_matching_messages_but_not_its_own() {
    let fx = Fx::with(Plan::Dedicated, HubLimits::default());
    let t = tap(&fx, "r1");
    let publisher = fx.client("p");
    publish(&publisher, "sensors/a", "one", Q1);
    publish(&publisher, "other", "two", Q1);
    // What the route publishes back does not come back to it [MQTT-3.8.3-3].
    let back = Message {
        origin: Origin::Client(t.client_id().clone()),
        ..msg("sensors/echo", "echo", Q1, false)
    };
    t.publish(back, None).unwrap();
    assert_eq!(payloads(&t), vec!["one"]);
}

#[test]
fn a_tap_is_admitted_without_anonymous_clients_and_is_not_a_device() {
    let fx = Fx::new();
    fx.engine
        .update_hub(hub_spec(
            fx.hub,
            "default",
            Plan::Dedicated,
            HubLimits::default(),
            false,
        ))
        .unwrap();
    let t = tap(&fx, "r2");
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 0);
    let d = fx.add_device(MessageFilters::default());
    let dev = fx.connect_device(d, None);
    publish(&dev.session, "sensors/x", "from-device", Q1);
    assert_eq!(payloads(&t), vec!["from-device"]);
    assert_eq!(fx.engine.hub_connected_devices(fx.hub), 1);
}

#[test]
fn clients_cannot_take_a_tap_client_id() {
    let fx = Fx::new();
    let _t = tap(&fx, "r3");
    let err = fx
        .engine
        .connect(fx.req(&format!("{ROUTE_CLIENT_PREFIX}r3"), true, 0))
        .err();
    assert_eq!(err, Some(ConnectError::ClientIdInvalid));
}

#[test]
fn a_tap_outlives_the_end_of_anonymous_admission() {
    let fx = Fx::new();
    let t = tap(&fx, "r4");
    let anon = fx.client("anon");
    fx.engine
        .update_hub(hub_spec(
            fx.hub,
            "default",
            Plan::Dedicated,
            HubLimits::default(),
            false,
        ))
        .unwrap();
    drop(anon);
    fx.engine
        .publish(fx.hub, msg("sensors/y", "hub", Q1, false))
        .unwrap();
    assert_eq!(payloads(&t), vec!["hub"]);
}

#[test]
fn a_kicked_tap_resumes_with_what_was_queued_and_a_clean_one_does_not() {
    let fx = Fx::new();
    let t = tap(&fx, "r5");
    let p = fx.client("p");
    publish(&p, "sensors/a", "kept", Q1);
    // Sent but not acknowledged, then the connection goes (a kick, a restart of the task).
    assert_eq!(publishes(&drain(&t)).len(), 1);
    drop(t);
    publish(&p, "sensors/a", "queued", Q1);
    let again = fx.engine.connect_route(fx.hub, "r5", 64, true).unwrap();
    assert!(again.session_present);
    let out = drain(&again.session);
    let got: Vec<(bool, String)> = publishes(&out)
        .iter()
        .map(|p| {
            (
                p.dup,
                String::from_utf8_lossy(&p.message.payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(got, vec![(true, "kept".into()), (false, "queued".into())]);
    drop(again);
    let clean = fx.engine.connect_route(fx.hub, "r5", 64, false).unwrap();
    assert!(!clean.session_present);
    assert!(drain(&clean.session).is_empty());
}
