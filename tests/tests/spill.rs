//! Slow and stuck consumers (issue 6): a persistent session's QoS 1/2 queue beyond its
//! in-memory bound is spilled to the store. The hub keeps only stubs in memory (the budget
//! stays small), and the subscriber gets every message, in order and exactly once, when it
//! comes back, also after the hub was killed with SIGKILL and restarted (the restore puts
//! the entries beyond the bound back as stubs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use iothub_e2e::clients::{V4, v4_options};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, config};
use rumqttc::QoS;

/// The per-session bound of this test's hub.
const BOUND: usize = 20;
/// Messages queued per round: five times the bound.
const COUNT: usize = 5 * BOUND;
const PAYLOAD: usize = 4096;

fn payload(round: usize, i: usize) -> Vec<u8> {
    let mut p = format!("{round}-{i:04}-").into_bytes();
    p.resize(PAYLOAD, b'x');
    p
}

fn metric(api: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = http_get(api, "/metrics");
    assert_eq!(status, 200);
    metric_sum(&text, name, labels).unwrap_or_else(|| panic!("{name} not exported"))
}

/// The persistent subscriber, connected without a clean session.
fn subscriber(hub: &Hub) -> V4 {
    let mut opts = v4_options(hub.mqtt_addr(), "spill-sub");
    opts.set_clean_session(false);
    V4::connect(opts)
}

/// Publishes round `round` (every PUBLISH acknowledged, so the hub owns each message).
fn publish_round(hub: &Hub, round: usize) {
    let mut p = V4::connect(v4_options(hub.mqtt_addr(), "spill-pub"));
    for i in 0..COUNT {
        p.publish("spill/t", QoS::AtLeastOnce, false, &payload(round, i));
    }
    p.disconnect();
}

/// While offline the session holds `COUNT` messages, `COUNT - BOUND` of them spilled: the
/// budget in use is far below the messages' size.
fn assert_spilled(hub: &Hub) {
    let api = hub.api_addr().unwrap();
    assert_eq!(
        metric(api, "iothub_spilled_messages", &[]),
        (COUNT - BOUND) as f64,
        "{}",
        hub.logs()
    );
    let used = metric(api, "iothub_budget_used_bytes", &[]);
    assert!(
        used < (2 * BOUND * PAYLOAD) as f64,
        "{COUNT} messages of {PAYLOAD} bytes queued, {used} bytes of budget in use"
    );
}

/// Reconnects and reads the round: every message once, in publish order.
fn receive_round(hub: &Hub, round: usize) {
    let mut sub = subscriber(hub);
    assert!(sub.connack.session_present);
    for i in 0..COUNT {
        let p = sub.expect_publish();
        assert_eq!(p.topic, "spill/t");
        assert!(
            p.payload[..] == payload(round, i)[..],
            "message {i} of round {round}: got {:?}",
            String::from_utf8_lossy(&p.payload[..12])
        );
    }
    sub.expect_no_publish(std::time::Duration::from_millis(300));
    sub.disconnect();
    let api = hub.api_addr().unwrap();
    assert_eq!(metric(api, "iothub_spilled_messages", &[]), 0.0);
    assert_eq!(
        metric(
            api,
            "iothub_messages_dropped_total",
            &[("reason", "unreadable")]
        ),
        0.0
    );
}

#[test]
fn a_persistent_subscribers_queue_beyond_its_bound_spills_and_comes_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(&[], &[("max_session_queue_messages", BOUND as u64)]);
    let Some(mut hub) = Hub::start_in(dir.path(), &yaml) else {
        return;
    };
    let mut sub = subscriber(&hub);
    sub.subscribe("spill/#", QoS::AtLeastOnce);
    sub.disconnect();

    // Round 0: spilled while offline, read back on reconnect.
    publish_round(&hub, 0);
    assert_spilled(&hub);
    let api = hub.api_addr().unwrap();
    assert!(metric(api, "iothub_messages_spilled_total", &[]) >= (COUNT - BOUND) as f64);
    receive_round(&hub, 0);

    // Round 1: spilled, then the hub is killed and restarted.
    publish_round(&hub, 1);
    assert_spilled(&hub);
    hub.kill();
    drop(hub);
    let hub = Hub::start_in(dir.path(), &yaml).unwrap();
    assert!(
        hub.logs().contains(&format!("queued={COUNT}")),
        "{}",
        hub.logs()
    );
    assert_spilled(&hub);
    receive_round(&hub, 1);
}
