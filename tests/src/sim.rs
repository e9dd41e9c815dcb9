//! The simulators (`iothub-sim`: device fleet, REST publisher, Sigfox backend, LoRaWAN network
//! server) run as a separate process against a hub, and an MQTT subscriber that collects
//! everything arriving on a filter, so a test can compare what the simulator sent with what
//! the hub delivered. The simulator binary is another program, not a library linked here:
//! this crate still shares no code with the hub.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::clients::V5;
use crate::iothub_bin;

/// The `iothub-sim` binary: `$IOTHUB_SIM_BIN`, or next to the iothub binary (same target
/// directory and profile; `cargo build -p iothub-simulators` builds it).
pub fn sim_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IOTHUB_SIM_BIN") {
        return PathBuf::from(p);
    }
    let bin = iothub_bin().with_file_name("iothub-sim");
    assert!(
        bin.exists(),
        "the simulator is not at {}: run `cargo build -p iothub-simulators` first (same \
         CARGO_TARGET_DIR and profile), or set IOTHUB_SIM_BIN",
        bin.display()
    );
    bin
}

/// What one simulator run did: its exit status and its JSON report.
#[derive(Debug)]
pub struct SimRun {
    pub success: bool,
    pub report: Value,
    pub stderr: String,
}

impl SimRun {
    /// The report's total line (`sent`, `accepted`, `refused`, `failed`, `reasons`, ...).
    pub fn total(&self) -> &Value {
        &self.report["total"]
    }

    /// The report's check `name` as (passed, failed).
    pub fn check(&self, name: &str) -> (u64, u64) {
        let c = &self.report["checks"][name];
        assert!(c.is_object(), "no check {name:?} in {}", self.report);
        (
            c["passed"].as_u64().unwrap_or(0),
            c["failed"].as_u64().unwrap_or(0),
        )
    }

    /// Every entry of the report's log.
    pub fn log(&self) -> Vec<Value> {
        self.report["log"].as_array().cloned().unwrap_or_default()
    }
}

/// Runs `iothub-sim <args> --json --quiet` to completion.
pub fn run_sim(args: &[&str]) -> SimRun {
    let out = Command::new(sim_bin())
        .args(args)
        .args(["--json", "--quiet"])
        .env_remove("IOTHUB_API_KEY")
        .env_remove("IOTHUB_NETWORK_SECRET")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", sim_bin().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("iothub-sim {args:?} printed no JSON report ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    SimRun {
        success: out.status.success(),
        report,
        stderr,
    }
}

/// Every PUBLISH `subscriber` receives until `count` arrived and then nothing more for
/// `quiet` (or `timeout` passed), as (topic, payload) in arrival order.
pub fn collect(
    subscriber: &mut V5,
    count: usize,
    timeout: Duration,
    quiet: Duration,
) -> Vec<(String, Vec<u8>)> {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let wait = if got.len() >= count {
            quiet
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match subscriber.inbox.wait(wait, |p| matches!(p, P5::Publish(_))) {
            Some(P5::Publish(p)) => got.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
            )),
            _ => return got,
        }
    }
}
