//! Durability across restarts (issue 6): retained messages, a persistent session's
//! subscriptions and its queued QoS 1/2 messages survive a clean stop (SIGTERM) and a crash
//! (SIGKILL) of the hub, under both fsync policies; a publisher's PUBACK/PUBCOMP means the
//! message is on the hub's disk. (The kill-at-random-moments loop is durability_kill.rs.)
//! The will of a persistent session connected at a crash goes out after the restart (the
//! crash closed its connection without DISCONNECT); one cleared by DISCONNECT does not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use iothub_e2e::clients::{V4, v4_options};
use iothub_e2e::{Hub, config};
use rumqttc::{LastWill, QoS};

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

/// SIGKILL while a persistent session with a will is connected: after the restart the will
/// is published (a persistent subscriber gets it queued), while the will of a session that
/// ended its connection with DISCONNECT before the crash is not.
#[test]
fn the_will_of_a_session_connected_at_a_crash_is_published_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}persistence:\n  fsync: grouped\n  fsync_interval_ms: 10\n",
        config(&[], &[])
    );
    let Some(mut hub) = Hub::start_in(dir.path(), &yaml) else {
        return;
    };
    let mut opts = v4_options(hub.mqtt_addr(), "will-sub");
    opts.set_clean_session(false);
    let mut sub = V4::connect(opts);
    sub.subscribe("w/#", QoS::AtLeastOnce);
    sub.disconnect();

    let with_will = |client: &str, payload: &'static [u8]| {
        let mut opts = v4_options(hub.mqtt_addr(), client);
        opts.set_clean_session(false);
        opts.set_last_will(LastWill::new("w/will", payload, QoS::AtLeastOnce, false));
        V4::connect(opts)
    };
    let polite = with_will("will-polite", b"polite");
    polite.disconnect();
    let mut crashed = with_will("will-crashed", b"crashed");
    // A retained message is journaled, so its PUBACK waits until it is durable, and with it
    // every record before it (the session and its will). (CONNACK does not wait.)
    crashed.publish("other/x", QoS::AtLeastOnce, true, b"x");
    hub.kill();
    drop(hub);
    drop(crashed);

    let hub = Hub::start_in(dir.path(), &yaml).unwrap();
    let mut opts = v4_options(hub.mqtt_addr(), "will-sub");
    opts.set_clean_session(false);
    let mut sub = V4::connect(opts);
    assert!(sub.connack.session_present, "{}", hub.logs());
    let p = sub.expect_publish();
    assert_eq!(p.topic, "w/will");
    assert_eq!(&p.payload[..], b"crashed");
    sub.expect_no_publish(Duration::from_millis(500));
}
