//! Durability across restarts (issue 6): retained messages, a persistent session's
//! subscriptions and its queued QoS 1/2 messages survive a clean stop (SIGTERM) and a crash
//! (SIGKILL) of the hub, under both fsync policies; a publisher's PUBACK/PUBCOMP means the
//! message is on the hub's disk. (The kill-at-random-moments loop is durability_kill.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use iothub_e2e::clients::{V4, v4_options};
use iothub_e2e::{Hub, config};
use rumqttc::QoS;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

fn run(fsync: &str, stop: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}persistence:\n  fsync: {fsync}\n  fsync_interval_ms: 10\n",
        config(&[], &[])
    );
    let Some(mut hub) = Hub::start_in(dir.path(), &yaml) else {
        return;
    };

    // A persistent subscriber (clean session 0) subscribes, then goes away.
    let mut opts = v4_options(hub.mqtt_addr(), "durable-sub");
    opts.set_clean_session(false);
    let mut sub = V4::connect(opts);
    sub.subscribe("d/#", QoS::ExactlyOnce);
    sub.disconnect();

    // Every PUBACK / PUBCOMP below promises the message is durable.
    let mut publisher = V4::connect(v4_options(hub.mqtt_addr(), "durable-pub"));
    publisher.publish("d/retained", QoS::AtLeastOnce, true, b"kept");
    for i in 0..5 {
        publisher.publish(
            "d/q1",
            QoS::AtLeastOnce,
            false,
            format!("one-{i}").as_bytes(),
        );
        publisher.publish(
            "d/q2",
            QoS::ExactlyOnce,
            false,
            format!("two-{i}").as_bytes(),
        );
    }
    drop(publisher);

    match stop {
        Stop::Term => {
            let status = hub
                .terminate(Duration::from_secs(10))
                .expect("exits on SIGTERM");
            assert!(status.success(), "{status:?}\n{}", hub.logs());
            assert!(hub.logs().contains("store closed"), "{}", hub.logs());
        }
        Stop::Kill => {
            hub.kill();
        }
    }
    drop(hub);

    let hub = Hub::start_in(dir.path(), &yaml).unwrap();
    let logs = hub.logs();
    assert!(
        logs.contains("durable state restored retained=1 sessions=1"),
        "{logs}"
    );

    // The session is back (session present), with its subscription: no SUBSCRIBE here.
    let mut opts = v4_options(hub.mqtt_addr(), "durable-sub");
    opts.set_clean_session(false);
    let mut sub = V4::connect(opts);
    assert!(sub.connack.session_present, "{logs}");
    let mut seen: HashMap<String, usize> = HashMap::new();
    // 5 + 5 queued, and the retained message's routed copy.
    for _ in 0..11 {
        let p = sub.expect_publish();
        *seen
            .entry(String::from_utf8_lossy(&p.payload).into_owned())
            .or_default() += 1;
    }
    for i in 0..5 {
        assert!(
            seen.get(&format!("one-{i}")).is_some_and(|n| *n >= 1),
            "{seen:?}"
        );
        // Exactly once.
        assert_eq!(seen.get(&format!("two-{i}")), Some(&1), "{seen:?}");
    }
    assert_eq!(seen.get("kept"), Some(&1), "{seen:?}");
    sub.expect_no_publish(Duration::from_millis(300));

    // The subscription routes new messages too.
    let mut publisher = V4::connect(v4_options(hub.mqtt_addr(), "durable-pub"));
    publisher.publish("d/after", QoS::ExactlyOnce, false, b"after");
    let p = sub.expect_publish();
    assert_eq!(&p.payload[..], b"after");

    // The retained message is there for a newcomer.
    let mut fresh = V4::connect(v4_options(hub.mqtt_addr(), "newcomer"));
    fresh.subscribe("d/retained", QoS::AtLeastOnce);
    let p = fresh.expect_publish();
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
}

/// SIGTERM under the grouped policy: the store is flushed, fsynced and closed, exit 0, and
/// everything is back after the restart.
#[test]
fn state_survives_a_clean_restart() {
    run("grouped", Stop::Term);
}

/// SIGKILL under the always policy: nothing acknowledged is lost.
#[test]
fn state_survives_sigkill_with_fsync_always() {
    run("always", Stop::Kill);
}

/// SIGKILL under the grouped policy: the kernel has every acknowledged record, so a process
/// crash loses nothing either.
#[test]
fn state_survives_sigkill_with_fsync_grouped() {
    run("grouped", Stop::Kill);
}
