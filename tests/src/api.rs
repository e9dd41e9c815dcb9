//! The control plane as a user reaches it: the management API over plain HTTP/1.1 (what
//! `curl` sends, byte for byte the same shape), the `iothub` CLI as a child process, and the
//! registry's database for one test (SQLite in the hub's data directory, or a fresh
//! PostgreSQL database created with `psql` and dropped afterwards).
//!
//! Like the rest of this crate it shares no code with iothub: requests are written by hand
//! and answers read with serde_json, so a bug in the server's JSON cannot hide here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::raw::WAIT;
use crate::{Hub, iothub_bin};

/// The data directory the configurations of [`registry_config`] name, relative to the
/// hub's working directory (the embedded default's too).
pub const DATA_DIR: &str = "iothub-data";
/// The file in the data directory where the hub writes the admin key at its first start.
pub const ADMIN_KEY_FILE: &str = "admin-api-key";
/// The region of the API paths (the configurations here keep the default).
pub const REGION: &str = "fr-par";
/// Environment variable naming the PostgreSQL server the tests create databases on.
pub const POSTGRES_URL_ENV: &str = "IOTHUB_TEST_POSTGRES_URL";
/// The machine's PostgreSQL, as scripts/test prepares it.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long one CLI command may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the hub's registry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The default: SQLite in the data directory.
    Sqlite,
    /// `store.url: postgres://...`, a database of its own per test.
    Postgres,
}

impl Backend {
    /// Both backends, for tests that run on each.
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
}

/// One test's registry database. For PostgreSQL the database is created here and dropped
/// when this is dropped; the PostgreSQL variant fails, never skips, when the server is
/// unreachable.
pub struct RegistryDb {
    pub backend: Backend,
    postgres: Option<PgDatabase>,
}

impl RegistryDb {
    pub fn new(backend: Backend) -> RegistryDb {
        RegistryDb {
            backend,
            postgres: (backend == Backend::Postgres).then(PgDatabase::create),
        }
    }

    /// The `store.url` of the configuration: empty for SQLite (the hub's default).
    pub fn store_url(&self) -> &str {
        self.postgres.as_ref().map_or("", |p| p.url.as_str())
    }
}

/// A PostgreSQL database of its own, created with `psql` on the test server.
pub struct PgDatabase {
    server: String,
    name: String,
    /// The URL the hub opens.
    pub url: String,
}

/// Runs one SQL statement with `psql` on `url`; `Err` carries psql's complaint.
fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql (apt-get install postgresql-client): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

impl PgDatabase {
    /// Creates `iothub_e2e_<unique>` on the test server (`$IOTHUB_TEST_POSTGRES_URL`, default
    /// [`DEFAULT_POSTGRES_URL`]); the test fails, naming the URL tried, when it cannot.
    pub fn create() -> PgDatabase {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let server = std::env::var(POSTGRES_URL_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "iothub_e2e_{}_{:x}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = psql(&server, &format!("CREATE DATABASE {name}")) {
            panic!(
                "the PostgreSQL test server at {server} cannot create a database ({e}); \
                 start it (scripts/test does) or set {POSTGRES_URL_ENV} to another server"
            );
        }
        let url = with_database(&server, &name);
        PgDatabase { server, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // FORCE: a hub killed by a failed test may still hold connections.
        if let Err(e) = psql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("note: could not drop the test database {}: {e}", self.name);
        }
    }
}

/// A configuration for the control-plane tests: the data directory [`DATA_DIR`], the
/// registry at `store_url` (empty: SQLite in the data directory), the MQTT listener and the
/// API on port 0. With `anonymous_hub` the listener admits clients that are not devices
/// into a development hub `default` (as the embedded default does); without it, only
/// registered devices connect.
pub fn registry_config(store_url: &str, anonymous_hub: bool) -> String {
    let mut y = format!(
        "data_dir: {DATA_DIR}\nstore:\n  url: \"{store_url}\"\n\
         listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n"
    );
    if anonymous_hub {
        y.push_str("      anonymous_hub: default\n");
    }
    y.push_str("api:\n  bind: 127.0.0.1:0\n");
    if anonymous_hub {
        y.push_str(
            "hubs:\n  - name: default\n    plan: plan_dedicated\n    allow_anonymous: true\n",
        );
    } else {
        y.push_str("hubs: []\n");
    }
    y
}

/// The admin API key the hub wrote at its first start into `<workdir>/iothub-data/`.
pub fn admin_key(hub: &Hub) -> String {
    let path = admin_key_path(hub);
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
        other => panic!(
            "no admin key in {} ({other:?}); hub stderr:\n{}",
            path.display(),
            hub.logs()
        ),
    }
}

/// Where [`admin_key`] reads the key.
pub fn admin_key_path(hub: &Hub) -> PathBuf {
    hub.workdir()
        .unwrap_or_else(|| panic!("the admin key needs iothub itself, not an external broker"))
        .join(DATA_DIR)
        .join(ADMIN_KEY_FILE)
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; the test fails when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "the answer (status {}) is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }

    /// Checks the status and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "expected status {status}, got {} with body {}",
            self.status, self.body
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Checks an error answer: the status, the JSON shape `{"message","type","details"}`
    /// with this `type`, and (when given) a detail whose `argument_name` is `field`.
    pub fn expect_error(&self, status: u16, kind: &str, field: Option<&str>) -> Value {
        let v = self.expect(status);
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {v}"
        );
        assert_eq!(v["type"], kind, "error type in {v}");
        let details = v["details"]
            .as_array()
            .unwrap_or_else(|| panic!("error without a details array: {v}"));
        if let Some(field) = field {
            assert!(
                details.iter().any(|d| d["argument_name"] == field),
                "no detail names the field {field:?}: {v}"
            );
        }
        v
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole answer.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("cannot connect to the API at {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).ok();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream
        .write_all(&bytes)
        .unwrap_or_else(|e| panic!("HTTP write to {addr}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("HTTP read of {method} {target}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response to {method} {target}: {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        crate::tools::dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        headers,
        body,
    }
}

/// A caller of the management API: the API's address and an account's key.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub key: String,
}

impl Api {
    /// The hub's API as its admin (the key from the data directory).
    pub fn admin(hub: &Hub) -> Api {
        Api {
            addr: hub
                .api_addr()
                .unwrap_or_else(|| panic!("the API needs iothub itself")),
            key: admin_key(hub),
        }
    }

    /// The same API with another account's key.
    pub fn with_key(&self, key: &str) -> Api {
        Api {
            addr: self.addr,
            key: key.to_string(),
        }
    }

    /// `/iot/v1/regions/fr-par/<path>`, or `path` itself when it starts with `/`.
    pub fn target(path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/iot/v1/regions/{REGION}/{path}")
        }
    }

    /// One request with `X-Auth-Token` and, with a body, `Content-Type: application/json`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Response {
        let mut headers = vec![("X-Auth-Token", self.key.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        headers.extend_from_slice(extra);
        http(
            self.addr,
            method,
            &Self::target(path),
            &headers,
            body.map(str::as_bytes),
        )
    }

    pub fn get(&self, path: &str) -> Response {
        self.send("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.send("POST", path, Some(&body.to_string()), &[])
    }

    pub fn patch(&self, path: &str, body: &Value) -> Response {
        self.send("PATCH", path, Some(&body.to_string()), &[])
    }

    pub fn delete(&self, path: &str) -> Response {
        self.send("DELETE", path, None, &[])
    }

    /// Creates a hub (`POST /hubs`) and returns it.
    pub fn create_hub(&self, body: &Value) -> Value {
        self.post("hubs", body).expect(200)
    }

    /// Creates a device (`POST /devices`) and returns the device (the answer's `device`).
    pub fn create_device(&self, body: &Value) -> Value {
        let created = self.post("devices", body).expect(200);
        created["device"].clone()
    }

    /// Creates an account as the admin (`POST /iot/v1/accounts`); returns the account and
    /// its API key.
    pub fn create_account(&self, name: &str) -> (Value, String) {
        let created = self
            .post("/iot/v1/accounts", &serde_json::json!({ "name": name }))
            .expect(200);
        let key = created["api_key"]
            .as_str()
            .unwrap_or_else(|| panic!("no api_key in {created}"))
            .to_string();
        (created["account"].clone(), key)
    }
}

/// The `id` of a resource (the test fails when it has none).
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// A hub for the control-plane tests: [`registry_config`] on `db`, or `None` (the caller
/// returns) in external-broker mode, which has no control plane.
pub fn start_registry_hub(db: &RegistryDb, anonymous_hub: bool) -> Option<(Hub, Api)> {
    let hub = Hub::start_with(&registry_config(db.store_url(), anonymous_hub))?;
    let api = Api::admin(&hub);
    Some((hub, api))
}

/// What one CLI run did.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Checks that the command succeeded and returns its standard output.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "the CLI failed: stdout {:?} stderr {:?}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// The standard output as JSON (for `-o json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("the CLI's output is not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `iothub <args>` in `cwd` with only `env` among the CLI's environment variables (the
/// test's own IOTHUB_* settings are removed); fails the test if it runs over 30 s.
pub fn iothub_cli(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let mut cmd = Command::new(iothub_bin());
    cmd.current_dir(cwd).args(args);
    for var in [
        "IOTHUB_ENDPOINT",
        "IOTHUB_API_KEY",
        "IOTHUB_REGION",
        "IOTHUB_CONFIG",
        "IOTHUB_LOG",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", iothub_bin().display()));
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap_or_else(|e| panic!("wait: {e}")) {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`iothub {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliRun {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The CLI as an operator runs it against `api`: `--endpoint` and `--api-key` given.
pub fn cli_as(api: &Api, cwd: &Path, args: &[&str]) -> CliRun {
    let endpoint = format!("http://{}", api.addr);
    let mut all = vec![
        "--endpoint",
        endpoint.as_str(),
        "--api-key",
        api.key.as_str(),
    ];
    all.extend_from_slice(args);
    iothub_cli(cwd, &all, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        let cases: &[(&str, &str)] = &[
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u:p@127.0.0.1:5432/test?sslmode=disable",
                "postgres://u:p@127.0.0.1:5432/x?sslmode=disable",
            ),
            ("postgres://127.0.0.1:5432", "postgres://127.0.0.1:5432/x"),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "x"), *want, "{url}");
        }
    }

    #[test]
    fn registry_configs_name_their_store_and_listener() {
        let y = registry_config("postgres://h/db", false);
        assert!(y.contains("url: \"postgres://h/db\""), "{y}");
        assert!(y.contains("hubs: []"), "{y}");
        assert!(!y.contains("anonymous_hub"), "{y}");
        let y = registry_config("", true);
        assert!(y.contains("anonymous_hub: default"), "{y}");
        assert!(y.contains("allow_anonymous: true"), "{y}");
    }
}
