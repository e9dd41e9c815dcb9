//! Durability under kill -9 (issue 6): the hub is killed with SIGKILL at random moments while a
//! publisher sends QoS 1 and QoS 2 messages to persistent subscribers, restarted on the same
//! data directory, and the clients carry on with their sessions. Whatever the hub acknowledged
//! (PUBACK, PUBCOMP) must reach the subscribers: QoS 1 at least once, QoS 2 exactly once;
//! retained messages and subscriptions survive (nobody subscribes again after a restart).
//!
//! The clients are [`StatefulClient`]s: they keep their side of the session across connections
//! (re-send unacknowledged publishes with DUP, PUBREL for PUBREC'd ones, hold received QoS 2
//! ids until their PUBREL), so every duplicate or loss is the hub's. Random choices come from a
//! seeded generator whose seed is printed (`IOTHUB_TEST_SEED=<seed>` replays the kill moments).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use iothub_e2e::frames::{self, Connect, PropValue, Publish, kind, prop};
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::stateful::{Closed, Rng, StatefulClient};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, config, skip_unless_iothub, unique};

/// Kill/restart cycles per fsync policy.
const CYCLES: usize = 10;
/// Publishes the publisher keeps in flight (below the hub's Receive Maximum of 64).
const WINDOW: usize = 16;
/// Retained messages set before the first kill.
const RETAINED: usize = 20;
/// A session expiry long enough for the whole test (MQTT 5 clients).
const EXPIRY: u32 = 3600;

/// The test configuration with this `persistence:` section body. The sessions' queue bound is
/// small (4), so that subscribers' backlogs are spilled to the store (issue 6 item 3) and the
/// kills also hit spilled queues and their restore.
fn yaml(persistence: &str) -> String {
    format!(
        "{}persistence:\n{persistence}",
        config(&[], &[("max_session_queue_messages", 4)])
    )
}

fn v5_persistent(id: &str) -> Connect {
    Connect::v5(id, false).prop(prop::SESSION_EXPIRY, PropValue::U32(EXPIRY))
}

/// One run: a hub in a kept working directory, a publisher and two persistent subscribers
/// (MQTT 5 at QoS 2, MQTT 3.1.1 clean session 0 at QoS 1), and what went wrong so far.
struct Run<'a> {
    workdir: &'a Path,
    yaml: String,
    hub: Hub,
    rng: Rng,
    prefix: String,
    publisher: StatefulClient,
    /// MQTT 5, session expiry, subscribed at QoS 2: QoS 2 messages exactly once.
    sub_q2: StatefulClient,
    /// MQTT 3.1.1, clean session 0, subscribed at QoS 1: everything at least once.
    sub_q1: StatefulClient,
    next_seq: u64,
    /// Every payload published on the message topics, with its QoS.
    published: BTreeMap<Vec<u8>, u8>,
    /// Retained topic -> payload, for every retained publish.
    retained: BTreeMap<String, Vec<u8>>,
    failures: Vec<String>,
    /// `iothub_messages_spilled_total` of the hubs killed so far.
    spilled: f64,
}

impl<'a> Run<'a> {
    fn start(workdir: &'a Path, persistence: &str, rng: Rng) -> Run<'a> {
        let yaml = yaml(persistence);
        let hub = Hub::start_in(workdir, &yaml).expect("iothub mode");
        let prefix = unique("dk");
        let mut run = Run {
            workdir,
            yaml,
            hub,
            rng,
            publisher: StatefulClient::new(v5_persistent(&unique("dkp"))),
            sub_q2: StatefulClient::new(v5_persistent(&unique("dks2"))),
            sub_q1: StatefulClient::new(Connect::v4(&unique("dks1"), false)),
            prefix,
            next_seq: 0,
            published: BTreeMap::new(),
            retained: BTreeMap::new(),
            failures: Vec::new(),
            spilled: 0.0,
        };
        let addr = run.hub.mqtt_addr();
        let filter = format!("{}/m/#", run.prefix);
        for (client, qos) in [(&mut run.sub_q2, 2u8), (&mut run.sub_q1, 1)] {
            let ack = client.connect(addr).expect("first connect");
            assert!(!ack.session_present(), "a new client id has no session");
            let granted = client.subscribe(1, &[(&filter, qos)]).expect("SUBSCRIBE");
            assert_eq!(granted, vec![qos], "SUBACK of {filter} at QoS {qos}");
        }
        run.publisher.connect(addr).expect("first connect");
        for i in 0..RETAINED {
            run.publish_retained(&format!("r{i}"));
        }
        run.settle(Duration::from_secs(10));
        assert_eq!(
            run.publisher.inflight(),
            0,
            "the retained messages were not acknowledged before the first kill"
        );
        run
    }

    fn publish_retained(&mut self, name: &str) {
        let topic = format!("{}/r/{name}", self.prefix);
        let payload = format!("{name}:{}", self.next_seq).into_bytes();
        self.next_seq += 1;
        self.retained.insert(topic.clone(), payload.clone());
        if let Err(e) = self.publisher.publish(&topic, 1, true, &payload) {
            self.failures
                .push(format!("retained publish {topic}: {e:?}"));
        }
    }

    /// One message at a random QoS (1 or 2) on `<prefix>/m/q<qos>`, payload `<qos>:<seq>`.
    fn publish_next(&mut self) -> Result<(), Closed> {
        let qos = if self.rng.range(0, 2) == 0 { 1 } else { 2 };
        let payload = format!("{qos}:{}", self.next_seq).into_bytes();
        self.next_seq += 1;
        self.published.insert(payload.clone(), qos);
        let topic = format!("{}/m/q{qos}", self.prefix);
        self.publisher
            .publish(&topic, qos, false, &payload)
            .map(|_| ())
    }

    /// Pumps the three clients once: the publisher waits up to `wait` for acknowledgements,
    /// the subscribers take what has arrived. The first connection failure is returned with
    /// its client's name.
    fn pump_all(&mut self, wait: Duration) -> Result<(), String> {
        for (name, c, wait) in [
            ("publisher", &mut self.publisher, wait),
            ("QoS 2 subscriber", &mut self.sub_q2, Duration::ZERO),
            ("QoS 1 subscriber", &mut self.sub_q1, Duration::ZERO),
        ] {
            c.pump(wait).map_err(|e| format!("{name}: {e:?}"))?;
        }
        Ok(())
    }

    /// Publishes continuously for `length`, keeping the window full. It ends right after a
    /// refill, so a kill that follows finds a full window on its way through the hub.
    fn traffic(&mut self, length: Duration) {
        let end = Instant::now() + length;
        loop {
            while self.publisher.inflight() < WINDOW {
                if let Err(e) = self.publish_next() {
                    self.failures
                        .push(format!("publisher failed during traffic: {e:?}"));
                    return;
                }
            }
            if Instant::now() >= end {
                return;
            }
            if let Err(e) = self.pump_all(Duration::from_millis(1)) {
                self.failures
                    .push(format!("connection failed during traffic: {e}"));
                return;
            }
        }
    }

    /// Pumps without publishing until nothing is in flight or `timeout` passes.
    fn settle(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Err(e) = self.pump_all(Duration::from_millis(2)) {
                self.failures.push(format!("connection failed: {e}"));
                return;
            }
            if self.publisher.inflight() == 0 {
                return;
            }
        }
    }

    /// SIGKILL, read what the hub sent before dying, restart on the same data directory
    /// (new ports), reconnect every client with its session.
    fn kill_and_restart(&mut self, cycle: usize) {
        let inflight = self.publisher.inflight();
        self.spilled += spilled(&self.hub);
        self.hub.kill();
        for (name, c) in [
            ("publisher", &mut self.publisher),
            ("QoS 2 subscriber", &mut self.sub_q2),
            ("QoS 1 subscriber", &mut self.sub_q1),
        ] {
            if c.is_connected()
                && let Closed::Protocol(e) = c.drain_closed(Duration::from_secs(3))
            {
                self.failures
                    .push(format!("cycle {cycle}: {name} read bad bytes: {e}"));
            }
        }
        self.hub = Hub::start_in(self.workdir, &self.yaml).expect("iothub mode");
        let addr = self.hub.mqtt_addr();
        for (name, c) in [
            ("QoS 2 subscriber", &mut self.sub_q2),
            ("QoS 1 subscriber", &mut self.sub_q1),
            ("publisher", &mut self.publisher),
        ] {
            match reconnect(c, addr) {
                Ok(true) => {}
                Ok(false) => self.failures.push(format!(
                    "cycle {cycle}: {name} ({}) reconnected without Session Present",
                    c.client_id()
                )),
                Err(e) => self
                    .failures
                    .push(format!("cycle {cycle}: {name} cannot reconnect: {e:?}")),
            }
        }
        eprintln!(
            "cycle {cycle}: killed with {inflight} publishes in flight; {} published, {} acknowledged so far",
            self.published.len(),
            self.publisher.completed.len()
        );
    }

    /// The checks, after a final drain: returns every violation found.
    fn verdict(mut self) -> Vec<String> {
        // Drain: the publisher completes everything it still holds, subscribers get the rest.
        self.settle(Duration::from_secs(20));
        let acked: BTreeMap<Vec<u8>, u8> = self
            .publisher
            .completed
            .iter()
            .filter(|c| {
                if c.reason >= 0x80 {
                    self.failures.push(format!(
                        "{} refused with {:#04x}",
                        String::from_utf8_lossy(&c.payload),
                        c.reason
                    ));
                }
                c.reason < 0x80
            })
            .map(|c| (c.payload.clone(), c.qos))
            .collect();
        let want_all = self.published.len();
        // Wait (bounded) until each subscriber has every acknowledged message, then a little
        // longer so late duplicates show up too.
        // (Not when sessions were already lost: nothing more would come.)
        let wait = if self.failures.is_empty() { 10 } else { 0 };
        let end = Instant::now() + Duration::from_secs(wait);
        while Instant::now() < end
            && !(has_all(&self.sub_q2, &acked, &self.published)
                && has_all(&self.sub_q1, &acked, &self.published))
        {
            if let Err(e) = self.pump_all(Duration::from_millis(5)) {
                self.failures
                    .push(format!("connection failed in the drain: {e}"));
                break;
            }
        }
        let _ = self.pump_all(Duration::from_millis(300));
        if self.publisher.abandoned > 0 {
            self.failures.push(format!(
                "the publisher dropped {} unfinished publishes (its session was gone)",
                self.publisher.abandoned
            ));
        }
        if self.publisher.inflight() > 0 {
            self.failures.push(format!(
                "{} publishes never completed",
                self.publisher.inflight()
            ));
        }
        for (name, sub) in [
            ("QoS 2 subscriber", &self.sub_q2),
            ("QoS 1 subscriber", &self.sub_q1),
        ] {
            let counts = counts(sub);
            let mut lost = Vec::new();
            for (payload, qos) in &acked {
                if !self.published.contains_key(payload) {
                    continue; // a retained message, checked below
                }
                if !counts.contains_key(payload) {
                    lost.push(format!("{} (QoS {qos})", String::from_utf8_lossy(payload)));
                }
            }
            if !lost.is_empty() {
                self.failures.push(format!(
                    "{name}: {} acknowledged messages never delivered, e.g. {:?}",
                    lost.len(),
                    &lost[..lost.len().min(10)]
                ));
            }
            let unexpected: Vec<_> = counts
                .keys()
                .filter(|p| !self.published.contains_key(*p))
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if !unexpected.is_empty() {
                self.failures
                    .push(format!("{name}: messages nobody published: {unexpected:?}"));
            }
        }
        // Exactly once for QoS 2 at the QoS 2 subscriber, acknowledged or not.
        // Each copy as (connection, packet id, DUP): the same id with DUP on a later
        // connection means the hub re-sent a PUBLISH whose flow had completed (it forgot the
        // PUBREC or PUBCOMP); another id means it routed the message twice (it forgot the
        // publisher's packet id) or re-sent it under a new id.
        let dups: Vec<_> = counts(&self.sub_q2)
            .into_iter()
            .filter(|(p, n)| *n > 1 && self.published.get(p) == Some(&2))
            .map(|(p, _)| {
                let copies: Vec<_> = self
                    .sub_q2
                    .delivered
                    .iter()
                    .filter(|d| d.payload == p)
                    .map(|d| format!("conn {} id {} dup {}", d.connection, d.packet_id, d.dup))
                    .collect();
                format!("{}: {}", String::from_utf8_lossy(&p), copies.join(", "))
            })
            .collect();
        if !dups.is_empty() {
            self.failures.push(format!(
                "QoS 2 subscriber: {} QoS 2 messages delivered more than once: {:?}",
                dups.len(),
                &dups[..dups.len().min(10)]
            ));
        }
        let wrong_qos: Vec<_> = self
            .sub_q2
            .delivered
            .iter()
            .filter(|d| self.published.get(&d.payload).is_some_and(|q| *q != d.qos))
            .map(|d| format!("{} at QoS {}", String::from_utf8_lossy(&d.payload), d.qos))
            .collect();
        if !wrong_qos.is_empty() {
            self.failures.push(format!(
                "QoS 2 subscriber: delivered at another QoS than published: {:?}",
                &wrong_qos[..wrong_qos.len().min(10)]
            ));
        }
        // Retained messages survive every kill.
        let got = self.read_retained();
        let want: BTreeMap<String, Vec<u8>> = self.retained.clone();
        if got != want {
            let missing: BTreeSet<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            self.failures.push(format!(
                "retained: {} of {} topics wrong or missing (missing: {missing:?}); got {} topics",
                want.iter().filter(|(k, v)| got.get(*k) != Some(v)).count(),
                want.len(),
                got.len()
            ));
        }
        eprintln!(
            "{} messages published, {} acknowledged; QoS 2 subscriber got {} deliveries ({} duplicate PUBLISHes of held ids suppressed), QoS 1 subscriber {}",
            want_all,
            acked.len(),
            self.sub_q2.delivered.len(),
            self.sub_q2.suppressed_duplicates,
            self.sub_q1.delivered.len()
        );
        self.failures
    }

    /// A fresh client subscribes to the retained topics and reads what it is sent.
    fn read_retained(&mut self) -> BTreeMap<String, Vec<u8>> {
        // Persistent: a clean session past its queue bound of 4 would lose retained messages.
        let mut reader = StatefulClient::new(v5_persistent(&unique("dkr")));
        let addr = self.hub.mqtt_addr();
        if let Err(e) = reader.connect(addr) {
            self.failures.push(format!("retained reader: {e:?}"));
            return BTreeMap::new();
        }
        let filter = format!("{}/r/#", self.prefix);
        if let Err(e) = reader.subscribe(1, &[(&filter, 1)]) {
            self.failures.push(format!("retained reader: {e:?}"));
            return BTreeMap::new();
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && reader.delivered.len() < self.retained.len() {
            if reader.pump(Duration::from_millis(20)).is_err() {
                break;
            }
        }
        let _ = reader.pump(Duration::from_millis(200));
        reader
            .delivered
            .iter()
            .filter(|d| d.retain)
            .map(|d| (d.topic.clone(), d.payload.clone()))
            .collect()
    }
}

/// Connects to the restarted hub (a few tries: it reported its listener, but be lenient with
/// a loaded machine); returns Session Present.
fn reconnect(c: &mut StatefulClient, addr: SocketAddr) -> Result<bool, Closed> {
    let mut last = None;
    for _ in 0..5 {
        match c.connect(addr) {
            Ok(ack) => return Ok(ack.session_present()),
            Err(e @ Closed::Connect(_)) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Closed::Connect("no attempt".into())))
}

fn counts(sub: &StatefulClient) -> BTreeMap<Vec<u8>, usize> {
    let mut counts = BTreeMap::new();
    for d in &sub.delivered {
        *counts.entry(d.payload.clone()).or_insert(0) += 1;
    }
    counts
}

/// Has `sub` received every acknowledged message of the message topics?
fn has_all(
    sub: &StatefulClient,
    acked: &BTreeMap<Vec<u8>, u8>,
    published: &BTreeMap<Vec<u8>, u8>,
) -> bool {
    let got: BTreeSet<&[u8]> = sub.delivered.iter().map(|d| d.payload.as_slice()).collect();
    acked
        .keys()
        .filter(|p| published.contains_key(*p))
        .all(|p| got.contains(p.as_slice()))
}

/// Queue entries the hub spilled to its store so far.
fn spilled(hub: &Hub) -> f64 {
    let (status, text) = http_get(hub.api_addr().expect("iothub mode"), "/metrics");
    assert_eq!(status, 200);
    metric_sum(&text, "iothub_messages_spilled_total", &[]).unwrap_or(0.0)
}

/// Runs `cycles` kill/restart cycles under this `persistence:` section; returns the violations
/// and how many queue entries were spilled meanwhile.
fn kill_cycles(persistence: &str, cycles: usize) -> (Vec<String>, f64) {
    let seed = Rng::seed_from_env_or_clock();
    let rng = Rng::new(seed);
    eprintln!(
        "durability_kill: seed {seed} (replay with IOTHUB_TEST_SEED={seed}); persistence:\n{persistence}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = Run::start(dir.path(), persistence, rng);
    for cycle in 0..cycles {
        run.publish_retained(&format!("c{cycle}"));
        let length = Duration::from_millis(run.rng.range(100, 600));
        run.traffic(length);
        if !run.failures.is_empty() {
            break;
        }
        run.kill_and_restart(cycle);
    }
    let spilled = run.spilled + spilled(&run.hub);
    let failures = run.verdict();
    if !failures.is_empty() {
        eprintln!(
            "seed {seed}: {} violations:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    (failures, spilled)
}

fn assert_durable(persistence: &str) {
    let (failures, spilled) = kill_cycles(persistence, CYCLES);
    assert!(
        failures.is_empty(),
        "after {CYCLES} kill -9 cycles with persistence\n{persistence}the hub broke its promises:\n{}",
        failures.join("\n")
    );
    eprintln!("durability_kill: {spilled} queue entries spilled");
    assert!(
        spilled > 0.0,
        "no queue entry was spilled: the run did not test spilling"
    );
}

/// Issue 6: `fsync: always`, 10 SIGKILLs at random moments during QoS 1/2 traffic, each
/// followed by a restart on the same data directory: every PUBACK'd / PUBCOMP'd message is
/// delivered (QoS 1 at least once, QoS 2 exactly once), retained messages and subscriptions
/// (no SUBSCRIBE after a restart) survive, sessions are present after every restart.
#[test]
fn kill_9_loses_nothing_acknowledged_with_fsync_always() {
    if skip_unless_iothub("kill_9_loses_nothing_acknowledged_with_fsync_always") {
        return;
    }
    assert_durable("  enabled: true\n  fsync: always\n");
}

/// The same with `fsync: grouped` (10 ms): a process crash loses nothing acknowledged, since
/// acknowledged records are in the kernel before the PUBACK.
#[test]
fn kill_9_loses_nothing_acknowledged_with_fsync_grouped() {
    if skip_unless_iothub("kill_9_loses_nothing_acknowledged_with_fsync_grouped") {
        return;
    }
    assert_durable("  enabled: true\n  fsync: grouped\n  fsync_interval_ms: 10\n");
}

/// The checks above can fail: with persistence disabled, a SIGKILL loses the sessions, the
/// queued messages and the retained ones, and the same run reports it.
#[test]
fn kill_9_without_persistence_is_caught() {
    if skip_unless_iothub("kill_9_without_persistence_is_caught") {
        return;
    }
    let (failures, _) = kill_cycles("  enabled: false\n", 2);
    assert!(
        failures
            .iter()
            .any(|f| f.contains("without Session Present")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|f| f.starts_with("retained:")),
        "{failures:?}"
    );
}

/// Issue 6, item 4: SIGTERM sends DISCONNECT 0x8B (server shutting down) to a connected MQTT 5
/// client and exits 0 after flushing the store: a retained message and QoS 1/2 messages queued
/// for an offline persistent session are there after the restart, each once.
#[test]
fn sigterm_disconnects_with_0x8b_and_keeps_retained_and_queued_messages() {
    if skip_unless_iothub("sigterm_disconnects_with_0x8b_and_keeps_retained_and_queued_messages") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = yaml("  enabled: true\n  fsync: grouped\n  fsync_interval_ms: 10\n");
    let mut hub = Hub::start_in(dir.path(), &yaml).expect("iothub mode");
    let id = unique("st");
    let topic = format!("{id}/q");
    let retained_topic = format!("{id}/r");
    let persistent = v5_persistent(&unique("sts"));
    let (mut sub, _) = RawClient::connected(hub.mqtt_addr(), &persistent);
    assert_eq!(sub.subscribe(1, &[(&topic, 2)]), vec![2]);
    sub.send_ok(&frames::disconnect(Some(0)));
    sub.expect_closed(WAIT);

    let (mut publisher, _) =
        RawClient::connected(hub.mqtt_addr(), &Connect::v5(&unique("stp"), true));
    publisher.publish(&Publish::v5(&retained_topic, b"kept").qos(1, 1).retain(true));
    publisher.publish(&Publish::v5(&topic, b"one").qos(1, 2));
    publisher.publish(&Publish::v5(&topic, b"two").qos(2, 3));
    let status = hub.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "exit status {status:?}:\n{}",
        hub.logs()
    );
    let before = publisher.expect_closed(WAIT);
    assert_eq!(
        before
            .iter()
            .map(|p| (p.kind(), frames::disconnect_reason(&p.body)))
            .collect::<Vec<_>>(),
        vec![(kind::DISCONNECT, 0x8B)],
        "the connected MQTT 5 client gets DISCONNECT 0x8B, then the connection closes"
    );

    let hub = Hub::start_in(dir.path(), &yaml).expect("iothub mode");
    let (mut sub, ack) = RawClient::connected(hub.mqtt_addr(), &persistent);
    assert!(ack.session_present(), "the session survives SIGTERM");
    let got: Vec<(Vec<u8>, u8)> = sub
        .publishes_for(QUIET)
        .into_iter()
        .map(|r| (r.payload, r.qos))
        .collect();
    assert_eq!(got, vec![(b"one".to_vec(), 1), (b"two".to_vec(), 2)]);
    let (mut reader, _) = RawClient::connected(hub.mqtt_addr(), &Connect::v5(&unique("str"), true));
    assert_eq!(reader.subscribe(1, &[(&retained_topic, 1)]), vec![1]);
    let r = reader.expect_publish_acked();
    assert_eq!(
        (r.topic.as_str(), r.payload.as_slice(), r.retain),
        (retained_topic.as_str(), &b"kept"[..], true)
    );
}
