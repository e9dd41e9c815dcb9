//! A subscriber that never reads must not hold up publishers or other subscribers; the hub
//! bounds its queue (QoS 0 over the bound dropped and counted, QoS 1/2 over the bound ends the
//! session with 0x97 Quota exceeded) and keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iothub_e2e::frames::{self, Connect, Publish, kind};
use iothub_e2e::raw::{RawClient, WAIT, assert_serving};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, config, unique};

/// A subscriber on its own thread that reads (and acknowledges) everything until the
/// sentinel; `received` counts what it got so far, so the publisher can stay within a window of
/// it ([`publish_paced`]). Returns the payload sizes it got.
struct FastSubscriber {
    received: Arc<AtomicUsize>,
    thread: thread::JoinHandle<Vec<usize>>,
}

fn fast_subscriber(hub: &Hub, topic: &str, sentinel: &str) -> FastSubscriber {
    let (mut fast, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("fast"), true));
    assert_eq!(fast.subscribe(1, &[(topic, 1), (sentinel, 1)]), vec![1, 1]);
    let sentinel = sentinel.to_string();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let thread = thread::spawn(move || {
        let mut sizes = Vec::new();
        loop {
            match fast.next_publish(WAIT) {
                Ok(r) if r.topic == sentinel => return sizes,
                Ok(r) => {
                    sizes.push(r.payload.len());
                    counter.fetch_add(1, Ordering::Release);
                }
                Err(e) => panic!("the reading subscriber lost its connection: {e:?}"),
            }
        }
    });
    FastSubscriber { received, thread }
}

/// Publishes `count` QoS 1 messages, never more than `window` ahead of what the reading
/// subscriber has received: it keeps up however loaded the machine is, so only the stuck
/// subscriber can exceed its queue bound.
fn publish_paced(
    p: &mut RawClient,
    topic: &str,
    payload: &[u8],
    count: usize,
    window: usize,
    fast: &FastSubscriber,
) {
    for i in 0..count {
        let deadline = Instant::now() + WAIT;
        while i >= fast.received.load(Ordering::Acquire) + window {
            assert!(
                Instant::now() < deadline,
                "the reading subscriber stopped at {i}"
            );
            thread::sleep(Duration::from_millis(1));
        }
        p.publish(&Publish::v4(topic, payload).qos(1, (i % 60_000 + 1) as u16));
    }
}

/// Issue 2's "a subscriber that never reads": another subscriber gets every message in order,
/// the publisher's QoS 1 publishes are all acknowledged, and the hub serves new clients; on
/// iothub the messages dropped for the stuck subscriber are counted in
/// `iothub_messages_dropped_total{reason="queue_full"}`.
#[test]
fn a_subscriber_that_never_reads_does_not_hold_up_anyone() {
    let hub = Hub::start();
    let topic = format!("{}/flood", unique("t"));
    let sentinel = format!("{topic}/end");
    let (mut stuck, _) =
        RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("stuck"), true));
    assert_eq!(stuck.subscribe(1, &[(&topic, 0)]), vec![0]);
    let fast = fast_subscriber(&hub, &topic, &sentinel);
    let (mut p, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("p"), true));
    // 3000 x 16 KiB = 48 MiB: more than the stuck client's socket buffers and the default
    // per-session queue (1000 messages / 16 MiB) together.
    let payload = vec![0x5Au8; 16 * 1024];
    let count = 3000;
    publish_paced(&mut p, &topic, &payload, count, 200, &fast);
    p.publish(&Publish::v4(&sentinel, b"").qos(1, 1));
    let got = fast.thread.join().unwrap();
    assert_eq!(got.len(), count, "the reading subscriber got every message");
    assert!(got.iter().all(|n| *n == payload.len()));
    assert_serving(hub.mqtt_addr());
    if let Some(api) = hub.api_addr() {
        let (status, text) = http_get(api, "/metrics");
        assert_eq!(status, 200);
        let dropped = metric_sum(
            &text,
            "iothub_messages_dropped_total",
            &[("reason", "queue_full")],
        );
        assert!(
            dropped.is_some_and(|n| n > 0.0),
            "QoS 0 messages dropped for the stuck subscriber are counted: {dropped:?}\n{text}"
        );
    }
    drop(stuck);
}

/// QoS 1 over the per-session bound: the stuck MQTT 5 session is disconnected (DISCONNECT 0x97
/// Quota exceeded when it can still be written, else a close), while a reading subscriber gets
/// everything and the hub serves new clients.
#[test]
fn a_stuck_qos1_subscriber_over_its_quota_is_disconnected_with_0x97() {
    let yaml = config(
        &[],
        &[
            ("max_session_queue_messages", 50),
            ("max_session_queue_bytes", 1_000_000),
        ],
    );
    let Some(hub) = Hub::start_with(&yaml) else {
        return;
    };
    let topic = format!("{}/q1", unique("t"));
    let sentinel = format!("{topic}/end");
    let (mut stuck, _) =
        RawClient::connected(hub.mqtt_addr(), &Connect::v5(&unique("stuck"), true));
    assert_eq!(stuck.subscribe(1, &[(&topic, 1)]), vec![1]);
    let fast = fast_subscriber(&hub, &topic, &sentinel);
    let (mut p, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v4(&unique("p"), true));
    let payload = vec![0xA5u8; 4096];
    let count = 2500;
    publish_paced(&mut p, &topic, &payload, count, 20, &fast);
    p.publish(&Publish::v4(&sentinel, b"").qos(1, 1));
    assert_eq!(
        fast.thread.join().unwrap().len(),
        count,
        "the reading subscriber got every message"
    );
    // Now read what the stuck client was sent: its connection must have been ended.
    let before = stuck.expect_closed(WAIT);
    let disconnects: Vec<_> = before
        .iter()
        .filter(|p| p.kind() == kind::DISCONNECT)
        .collect();
    eprintln!(
        "stuck client: {} packets, disconnects {disconnects:?}",
        before.len()
    );
    for d in &disconnects {
        assert_eq!(frames::disconnect_reason(&d.body), 0x97, "quota exceeded");
    }
    assert!(
        before.len() < count,
        "the stuck session cannot have been sent all {count} messages within its quota"
    );
    assert_serving(hub.mqtt_addr());
}
