//! The load generator against a real iothub: the library entry point for each scenario and
//! QoS, and the `iothub-loadgen` binary's JSON output and argument checks.
//!
//! Each test starts its own `iothub serve` on 127.0.0.1 port 0 (the binary from `$IOTHUB_BIN`,
//! or `iothub` in the same cargo target directory: run `cargo build -p iothub` first). A
//! missing binary fails the test rather than skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use iothub_mqtt_codec::{ProtocolVersion, QoS};
use iothub_simulators::loadgen::{self, Live, LoadConfig, Scenario};

/// An `iothub serve` child process, killed on drop, with its own working directory (its data
/// directory lives there).
struct Hub {
    child: Child,
    mqtt: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Only what the generator needs: one MQTT listener and the API, both on free ports, so tests
/// running at once never collide on the embedded config's fixed TLS/WebSocket/QUIC ports.
const CONFIG: &str = "\
listeners:
  mqtt:
    - bind: 127.0.0.1:0
      anonymous_hub: default
api:
  bind: 127.0.0.1:0
hubs:
  - name: default
    allow_anonymous: true
";

impl Hub {
    fn start() -> Self {
        let bin = iothub_bin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("iothub.yaml"), CONFIG).unwrap();
        let mut child = Command::new(&bin)
            .current_dir(dir.path())
            .args(["serve", "--config", "iothub.yaml"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the log for the whole life of the hub, so a full pipe never blocks it.
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = mqtt_addr(&line) {
                    let _ = tx.send(Ok(addr));
                }
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(Err(log));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(mqtt)) => Hub {
                child,
                mqtt,
                _dir: dir,
            },
            Ok(Err(log)) => panic!("iothub exited before listening:\n{log}"),
            Err(e) => panic!("iothub did not report its MQTT listener: {e}"),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$IOTHUB_BIN`, or `iothub` beside the `deps/` directory holding this test executable.
fn iothub_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IOTHUB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("iothub"))
        .unwrap();
    assert!(
        bin.exists(),
        "the iothub binary is not at {}: run `cargo build -p iothub` first (same \
         CARGO_TARGET_DIR and profile), or set IOTHUB_BIN",
        bin.display()
    );
    bin
}

/// The address in `listening listener=mqtt addr=<ip:port>`.
fn mqtt_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening listener=mqtt addr=")? + 29..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn mqtt_addr_is_found_in_log_lines() {
    let cases = [
        (
            "2026-11-29T23:59:00.123Z  INFO iothub: listening listener=mqtt addr=127.0.0.1:40123",
            Some("127.0.0.1:40123"),
        ),
        ("INFO listening listener=api addr=127.0.0.1:8080", None),
        ("listening listener=mqtt addr=nonsense", None),
    ];
    for (line, expected) in cases {
        assert_eq!(
            mqtt_addr(line),
            expected.map(|a| a.parse().unwrap()),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_delivers_everything_at_qos_1_and_2() {
    let hub = Hub::start();
    // (scenario, version, qos, publishers, subscribers)
    let cases = [
        (Scenario::FanIn, ProtocolVersion::V5, QoS::AtLeastOnce, 3, 1),
        (
            Scenario::Pairs,
            ProtocolVersion::V311,
            QoS::AtLeastOnce,
            2,
            2,
        ),
        (
            Scenario::FanOut,
            ProtocolVersion::V5,
            QoS::ExactlyOnce,
            1,
            3,
        ),
        (
            Scenario::FanIn,
            ProtocolVersion::V311,
            QoS::ExactlyOnce,
            2,
            2,
        ),
    ];
    for (scenario, version, qos, publishers, subscribers) in cases {
        let mut config = LoadConfig::new(hub.mqtt);
        config.scenario = scenario;
        config.version = version;
        config.qos = qos;
        config.publishers = publishers;
        config.subscribers = subscribers;
        // A modest rate: a debug-build hub and generator share two cores with other tests.
        config.rate = 400;
        config.warmup = Duration::from_millis(300);
        config.duration = Duration::from_millis(1500);
        config.drain = Duration::from_secs(5);
        config.topic_prefix = "test/loadgen".into();
        let live = Arc::new(Live::default());
        let report = loadgen::run(&config, Arc::clone(&live)).await.unwrap();
        let case = format!("{scenario} {version:?} {qos:?} {publishers}->{subscribers}:\n{report}");
        assert!(report.errors.is_empty(), "{case}");
        assert!(report.sent > 0, "{case}");
        assert!(report.delivered > 0, "{case}");
        assert_eq!(report.lost, 0, "{case}");
        assert_eq!(report.delivered, report.expected, "{case}");
        assert_eq!(
            (
                report.duplicates,
                report.unexpected,
                report.refused,
                report.unacknowledged
            ),
            (0, 0, 0, 0),
            "{case}"
        );
        assert!(report.latency_us.count > 0, "{case}");
        assert!(report.latency_us.p50 <= report.latency_us.max, "{case}");
        assert_eq!(live.delivered(), report.delivered, "{case}");
        assert_eq!(live.sent(), report.sent, "{case}");
    }
}

/// A ramp of idle connections reads the hub's RSS at every step and fits a slope; the connects
/// loop opens and resets connections. Figures are not asserted (they belong to the benchmark),
/// only that they were measured and that no connection failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_and_connects_measure_the_hub_process() {
    let hub = Hub::start();
    let mut config = LoadConfig::new(hub.mqtt);
    config.version = ProtocolVersion::V311;
    config.broker_pid = Some(hub.child.id());
    config.connections = 300;
    config.ramp_steps = 3;
    config.source_addrs = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let ramp = loadgen::run_ramp(&config).await.unwrap();
    assert_eq!((ramp.connections, ramp.failures), (300, 0), "{ramp}");
    let steps: Vec<u64> = ramp.samples.iter().map(|s| s.connections).collect();
    assert_eq!(steps, [0, 100, 200, 300], "{ramp}");
    assert!(
        ramp.samples.iter().all(|s| s.broker_rss_bytes > 0),
        "{ramp}"
    );
    assert!(ramp.rss_per_connection_bytes.is_some(), "{ramp}");
    assert!(ramp.open_files_cap.is_some(), "{ramp}");
    let broker = ramp.broker.unwrap();
    assert_eq!(broker.pid, hub.child.id());
    assert!(broker.rss_peak_bytes > 0);

    config.connect_concurrency = 4;
    config.warmup = Duration::from_millis(100);
    config.duration = Duration::from_millis(700);
    let connects = loadgen::run_connects(&config).await.unwrap();
    assert!(connects.connections > 0, "{connects}");
    assert_eq!(connects.failures, 0, "{connects}");
    assert!(connects.connects_per_sec > 0.0, "{connects}");
    assert_eq!(
        connects.connect_latency_us.count, connects.connections,
        "{connects}"
    );
    assert!(connects.broker.is_some(), "{connects}");
}

#[test]
fn binary_prints_a_json_summary() {
    let hub = Hub::start();
    let output = Command::new(env!("CARGO_BIN_EXE_iothub-loadgen"))
        .args(["--broker", &hub.mqtt.to_string()])
        .args([
            "--scenario",
            "fan-in",
            "--publishers",
            "2",
            "--subscribers",
            "1",
        ])
        .args(["--qos", "1", "--payload", "100", "--rate", "300"])
        .args([
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--mqtt-version",
            "3.1.1",
        ])
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let field = |name: &str| report[name].clone();
    assert_eq!(field("scenario"), "fan-in");
    assert_eq!(field("mqtt_version"), "3.1.1");
    assert_eq!(field("qos"), 1);
    assert_eq!(field("payload_bytes"), 100);
    assert_eq!(field("lost"), 0, "{stdout}");
    assert_eq!(field("delivered"), field("expected"), "{stdout}");
    assert!(field("delivered").as_u64().unwrap() > 0, "{stdout}");
    assert!(
        field("delivered_per_sec").as_f64().unwrap() > 0.0,
        "{stdout}"
    );
    for key in ["p50", "p99", "p999", "max"] {
        assert!(report["latency_us"][key].is_u64(), "{key}: {stdout}");
    }
    assert!(report["generator_cpu"]["cores"].is_f64(), "{stdout}");
}

#[test]
fn binary_refuses_bad_arguments_before_connecting() {
    // Port 9 (discard) on loopback: nothing listens there, so a run that got as far as
    // connecting would fail differently; every case must be refused before that with exit 2.
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--scenario",
                "pairs",
                "--publishers",
                "2",
                "--subscribers",
                "1",
            ],
            "pairs",
        ),
        (&["--payload", "8"], "at least 16"),
        (&["--qos", "3"], "--qos"),
        (&["--scenario", "star"], "star"),
        (&["--topic-prefix", "a/+"], "wildcards"),
    ];
    for (args, message) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_iothub-loadgen"))
            .args(["--broker", "127.0.0.1:9", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
