//! End-to-end test harness for iothub: black-box tests that start the real `iothub` binary on
//! 127.0.0.1 port 0 and drive it with clients that share no code with it.
//!
//! Layout: this file starts and stops hubs ([`Hub`]) and names things uniquely; [`frames`] and
//! [`raw`] speak MQTT byte by byte for bad-input tests; [`stateful`] is a client over them that
//! keeps its session state across connections (for kill -9 tests); [`clients`] wraps rumqttc (v4 and v5);
//! [`tools`] runs `mosquitto_pub`/`mosquitto_sub` and reads `/metrics`; [`api`] speaks to the
//! management API over plain HTTP, runs the `iothub` CLI and provides the registry's databases
//! (SQLite in the hub's data directory, or a fresh PostgreSQL database); [`sim`] runs the
//! `iothub-sim` simulators as separate processes. The tests themselves
//! are in `tests/*.rs`, one file per theme.
//!
//! This crate must never depend on an iothub crate (codec, engine, model): a shared bug would
//! then hide on both sides of the wire. With `IOTHUB_TEST_EXTERNAL_BROKER=127.0.0.1:1883` the
//! tests run against that broker instead (a conformant reference such as Mosquitto, to validate
//! the tests themselves); tests that need iothub's own configuration then skip with a note.
//!
//! Everything here is test-helper code: a failed expectation is reported by panicking with a
//! message that says what was expected, which is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod certs;
pub mod clients;
pub mod frames;
pub mod raw;
pub mod sim;
pub mod stateful;
pub mod tools;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable naming an already-running broker to test instead of iothub.
pub const EXTERNAL_ENV: &str = "IOTHUB_TEST_EXTERNAL_BROKER";
/// How long a hub may take to report its listeners before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The external broker address, when the tests run in external mode.
pub fn external_broker() -> Option<SocketAddr> {
    let value = std::env::var(EXTERNAL_ENV).ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(
        value
            .parse()
            .unwrap_or_else(|e| panic!("{EXTERNAL_ENV}={value} is not an ip:port address: {e}")),
    )
}

/// In external mode, prints a note and returns true: the caller returns early because the test
/// needs iothub itself (its configuration, its CLI or its metrics).
pub fn skip_unless_iothub(test: &str) -> bool {
    if external_broker().is_some() {
        eprintln!("note: {test} skipped: it needs iothub itself ({EXTERNAL_ENV} is set)");
        return true;
    }
    false
}

/// The iothub binary: `$IOTHUB_BIN`, or `iothub` next to the `deps/` directory that holds
/// this test executable (that is, the same cargo target directory and profile).
pub fn iothub_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IOTHUB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe.parent().map(|d| d.join("..")).unwrap_or_default();
    let bin = dir.join("iothub");
    if !bin.exists() {
        panic!(
            "the iothub binary is not at {}: run `cargo build -p iothub` first (with the same \
             CARGO_TARGET_DIR and profile), or set IOTHUB_BIN",
            bin.display()
        );
    }
    bin
}

/// A name no other test (nor an earlier run against a persistent external broker) uses:
/// `tag` then hex digits, at most 23 characters of `[0-9a-zA-Z]` as MQTT-3.1.3-5 allows.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_add(n << 20);
    let mut s = format!("{tag}{mixed:x}{n:x}");
    s.truncate(23);
    s
}

/// A hub configuration with one anonymous hub "default"; `mqtt` and `limits` are extra
/// `key: value` lines of the `mqtt:` section and of the hub's `limits:`.
pub fn config(mqtt: &[(&str, u64)], limits: &[(&str, u64)]) -> String {
    let mut y = String::from(
        "listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
         api:\n  bind: 127.0.0.1:0\n",
    );
    if !mqtt.is_empty() {
        y.push_str("mqtt:\n");
        for (k, v) in mqtt {
            y.push_str(&format!("  {k}: {v}\n"));
        }
    }
    y.push_str("hubs:\n  - name: default\n    plan: plan_dedicated\n    allow_anonymous: true\n");
    if !limits.is_empty() {
        y.push_str("    limits:\n");
        for (k, v) in limits {
            y.push_str(&format!("      {k}: {v}\n"));
        }
    }
    y
}

/// Finds `listening listener=<name> addr=<ip:port>` in one log line.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = &line[line.find("listening listener=")? + "listening listener=".len()..];
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let addr = words.next()?.strip_prefix("addr=")?.parse().ok()?;
    Some((name, addr))
}

/// A running hub: an `iothub serve` child process, or the external broker.
pub struct Hub {
    child: Option<Child>,
    mqtt: SocketAddr,
    api: Option<SocketAddr>,
    logs: Arc<Mutex<String>>,
    /// The hub's working directory: its relative `data_dir` lives there.
    workdir: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Hub {
    /// A hub with the test default configuration ([`config`] with nothing extra), or the
    /// external broker in external mode.
    pub fn start() -> Hub {
        if let Some(addr) = external_broker() {
            return Hub {
                child: None,
                mqtt: addr,
                api: None,
                logs: Arc::default(),
                workdir: None,
                _dir: None,
            };
        }
        Hub::spawn(&config(&[], &[]))
    }

    /// A hub with this YAML configuration. In external mode it prints a note and returns
    /// `None`: the caller skips, since the external broker cannot take iothub's configuration.
    pub fn start_with(yaml: &str) -> Option<Hub> {
        if skip_unless_iothub("this test") {
            return None;
        }
        Some(Hub::spawn(yaml))
    }

    /// Like [`Hub::start_with`], but in the working directory `workdir`, which the caller
    /// owns and keeps: a hub started again in the same directory finds the same data
    /// directory (a restart).
    pub fn start_in(workdir: &Path, yaml: &str) -> Option<Hub> {
        if skip_unless_iothub("this test") {
            return None;
        }
        Some(Hub::spawn_in(None, workdir, yaml))
    }

    fn spawn(yaml: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let workdir = dir.path().to_path_buf();
        // The temporary directory is also the working directory, so that anything the hub
        // writes relative to it (a data directory, say) goes away with the test.
        Hub::spawn_in(Some(dir), &workdir, yaml)
    }

    fn spawn_in(dir: Option<tempfile::TempDir>, workdir: &Path, yaml: &str) -> Hub {
        let path = workdir.join("iothub.yaml");
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("write config: {e}"));
        let mut child = Command::new(iothub_bin())
            .current_dir(workdir)
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--mqtt-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .env_remove("IOTHUB_CONFIG")
            .env_remove("IOTHUB_MQTT_ADDR")
            .env_remove("IOTHUB_API_ADDR")
            .env_remove("IOTHUB_LOG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", iothub_bin().display()));
        let logs: Arc<Mutex<String>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(found) = parse_listening(&line) {
                        let _ = tx.send(found);
                    }
                    if let Ok(mut l) = logs.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let mut hub = Hub {
            child: Some(child),
            mqtt: SocketAddr::from(([0, 0, 0, 0], 0)),
            api: None,
            logs,
            workdir: Some(workdir.to_path_buf()),
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut mqtt, mut api) = (None, None);
        while mqtt.is_none() || api.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, addr)) if name == "mqtt" => mqtt = Some(addr),
                Ok((name, addr)) if name == "api" => api = Some(addr),
                Ok(_) => {}
                Err(_) => {
                    // Give the reader a moment to copy the last lines (an early exit's reason).
                    std::thread::sleep(Duration::from_millis(100));
                    let status = hub.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    panic!(
                        "iothub did not report both `listening listener=mqtt|api addr=...` lines \
                         within {START_TIMEOUT:?} (exit status: {status:?}); config:\n{yaml}\nstderr:\n{}",
                        hub.logs()
                    );
                }
            }
        }
        hub.mqtt = mqtt.unwrap_or(hub.mqtt);
        hub.api = api;
        hub
    }

    /// Where MQTT clients connect.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt
    }

    /// The address the listener `name` reported in its `listening listener=<name> addr=...`
    /// line (iothub only).
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.logs()
            .lines()
            .filter_map(parse_listening)
            .find(|(n, _)| n == name)
            .map(|(_, addr)| addr)
            .unwrap_or_else(|| panic!("no `listening listener={name}` line in:\n{}", self.logs()))
    }

    /// The HTTP API address (iothub only; `None` for an external broker).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api
    }

    /// The hub's working directory (iothub only; `None` for an external broker).
    pub fn workdir(&self) -> Option<&Path> {
        self.workdir.as_deref()
    }

    /// Everything the hub wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Is this a hub the test started (not the external broker)?
    pub fn is_iothub(&self) -> bool {
        self.child.is_some()
    }

    /// The hub's process id (iothub only), to read `/proc/<pid>/...`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (a crash: no shutdown, no flush) and waits for it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Has the hub process exited (crashed)? Always false for an external broker.
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_are_recognised() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "2026-11-29T23:59:00.123Z  INFO iothub: listening listener=mqtt addr=127.0.0.1:40123",
                Some(("mqtt", "127.0.0.1:40123")),
            ),
            (
                "2026-11-29T23:59:00Z INFO listening listener=api addr=127.0.0.1:8080 extra=1",
                Some(("api", "127.0.0.1:8080")),
            ),
            ("INFO listening listener=mqtt addr=nonsense", None),
            ("INFO started", None),
        ];
        for (line, want) in cases {
            let got = parse_listening(line);
            let want = want.map(|(n, a)| (n.to_string(), a.parse::<SocketAddr>().unwrap()));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn unique_names_are_valid_short_client_ids() {
        let a = unique("c");
        let b = unique("c");
        assert_ne!(a, b);
        for s in [a, b] {
            assert!(
                s.len() <= 23 && s.chars().all(|c| c.is_ascii_alphanumeric()),
                "{s}"
            );
        }
    }

    /// RUST_TESTS_INDEX.md (which docs/CONFORMANCE.md links to) names every test in
    /// tests/*.rs, so a new or renamed test cannot silently fall out of it.
    #[test]
    fn the_index_lists_every_test() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let index = std::fs::read_to_string(root.join("RUST_TESTS_INDEX.md")).unwrap();
        let mut missing = Vec::new();
        let mut count = 0;
        for entry in std::fs::read_dir(root.join("tests")).unwrap() {
            let path = entry.unwrap().path();
            let Some(file) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.trim() != "#[test]" {
                    continue;
                }
                let Some(name) = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("fn "))
                    .and_then(|l| l.split('(').next())
                else {
                    continue;
                };
                count += 1;
                if !index.contains(&format!("`{file}::{name}`")) {
                    missing.push(format!("{file}::{name}"));
                }
            }
        }
        assert!(count > 0, "no tests found under {}", root.display());
        assert!(
            missing.is_empty(),
            "not in RUST_TESTS_INDEX.md: {missing:?}"
        );
    }

    #[test]
    fn config_lists_extra_keys_in_their_sections() {
        let y = config(&[("connect_timeout_secs", 1)], &[("receive_maximum", 2)]);
        assert!(y.contains("mqtt:\n  connect_timeout_secs: 1\n"), "{y}");
        assert!(y.contains("    limits:\n      receive_maximum: 2\n"), "{y}");
    }
}
