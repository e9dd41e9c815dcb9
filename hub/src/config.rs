//! The `iothub.yaml` configuration: its schema, the embedded default, loading and validation.
//!
//! Every mistake is reported with the file, line and column it sits at, before anything is
//! bound or started, so a bad config never half-starts a hub.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use iothub_model::{HubLimits, Plan, TopicName};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

/// The default configuration compiled into the binary (`iothub generate-config` prints it).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../configs/iothub.yaml");

/// Where the configuration came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Embedded => f.write_str("<embedded default config>"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A configuration mistake, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}:{line}:{column}: {message}")]
    At {
        source_name: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the hub keeps its state (registry database, admin key). Relative paths are
    /// relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub store: StoreConfig,
    /// The write-ahead log of retained messages, persistent sessions, QoS 1/2 state and
    /// delayed wills, in `<data_dir>/wal/`.
    #[serde(default)]
    pub persistence: PersistenceConfig,
    /// Quotas of the control plane (hubs per account per plan, devices, routes, networks per hub).
    #[serde(default)]
    pub quotas: iothub_control::registry::Quotas,
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The server certificate of the TLS-based listeners (tls, wss, quic).
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_hubs")]
    pub hubs: Vec<HubConfig>,
}

/// Every listener kind is a list: a kind that is not named in a `listeners:` section has no
/// listener (only a configuration without `listeners:` at all gets the defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// MQTT over TCP.
    #[serde(default)]
    pub mqtt: Vec<MqttListenerConfig>,
    /// MQTT over TLS (8883): client certificates identify devices (mutual TLS); clients
    /// without one connect as on `mqtt` (devices that allow insecure connections, the
    /// anonymous hub).
    #[serde(default)]
    pub tls: Vec<MqttListenerConfig>,
    /// MQTT over WebSocket (HTTP path `/mqtt`, subprotocol `mqtt`).
    #[serde(default)]
    pub ws: Vec<MqttListenerConfig>,
    /// MQTT over WebSocket over TLS, with the TLS listeners' server certificate and
    /// client-certificate verification.
    #[serde(default)]
    pub wss: Vec<MqttListenerConfig>,
    /// MQTT over QUIC (UDP, ALPN `mqtt`, one MQTT connection per bidirectional stream), with
    /// the TLS listeners' certificates.
    #[serde(default)]
    pub quic: Vec<MqttListenerConfig>,
}

impl Default for Listeners {
    fn default() -> Self {
        let local = |name: &str, port: u16| MqttListenerConfig {
            name: name.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            anonymous_hub: Some(unlocated("default".into())),
        };
        Self {
            mqtt: vec![local("mqtt", 1883)],
            tls: vec![local("tls", 8883)],
            ws: vec![local("ws", 8083)],
            wss: vec![local("wss", 8084)],
            quic: vec![local("quic", 14567)],
        }
    }
}

impl Listeners {
    /// Every listener with its kind (`mqtt`, `ws`, ...), for checks that span kinds.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &MqttListenerConfig)> {
        [
            ("mqtt", &self.mqtt),
            ("tls", &self.tls),
            ("ws", &self.ws),
            ("wss", &self.wss),
            ("quic", &self.quic),
        ]
        .into_iter()
        .flat_map(|(kind, list)| list.iter().map(move |l| (kind, l)))
    }

    /// A listener declared without a name is named after its kind.
    fn name_unnamed(&mut self) {
        for (kind, list) in [
            ("mqtt", &mut self.mqtt),
            ("tls", &mut self.tls),
            ("ws", &mut self.ws),
            ("wss", &mut self.wss),
            ("quic", &mut self.quic),
        ] {
            for l in list.iter_mut().filter(|l| l.name.is_empty()) {
                l.name = kind.into();
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttListenerConfig {
    /// Used in logs and metric labels; unique across all listeners. Default: the kind.
    #[serde(default)]
    pub name: String,
    pub bind: SocketAddr,
    /// Clients that are not registered devices join this hub (it must allow anonymous clients).
    #[serde(default)]
    pub anonymous_hub: Option<Spanned<String>>,
}

impl Listeners {
    /// Whether any listener needs the server certificate.
    pub fn any_tls(&self) -> bool {
        !(self.tls.is_empty() && self.wss.is_empty() && self.quic.is_empty())
    }
}

/// The server certificate of the TLS-based listeners. Without files, a local CA and a
/// certificate for `localhost`, `127.0.0.1`, `::1` and `hostnames` are generated in
/// `data_dir/tls` (renewed 30 days before they expire); `GET /iot/v1/regions/{region}/server-ca`
/// serves the CA devices should trust. The source is read again every
/// `reload_interval_secs`: a changed certificate applies to new connections without a
/// restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM chain, server certificate first. Empty: generated.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`'s certificate.
    pub key_file: PathBuf,
    /// PEM of what devices should trust (served by the server-ca endpoint); with
    /// `cert_file` only. Empty: the last certificate of `cert_file`.
    pub ca_file: PathBuf,
    /// Extra names (DNS or IP) of the generated certificate.
    pub hostnames: Vec<String>,
    pub reload_interval_secs: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            hostnames: Vec::new(),
            reload_interval_secs: 60,
        }
    }
}

impl TlsConfig {
    /// Whether the certificate comes from files rather than being generated.
    pub fn uses_files(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("iothub-data")
}

/// The registry database.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; empty = SQLite in `data_dir`.
    pub url: String,
}

/// When an acknowledged message is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// PUBACK/PUBREC after the records are fsynced: nothing acknowledged is lost, even on
    /// power failure.
    Always,
    /// PUBACK/PUBREC after the records are written to the kernel; fsync at most
    /// `fsync_interval_ms` later. A process crash (kill -9) loses nothing acknowledged; a power
    /// or kernel failure loses at most the last `fsync_interval_ms`.
    Grouped,
}

/// The durable store of the MQTT state (issue 6), in `<data_dir>/wal/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// `false`: everything lives in memory and is lost on restart.
    pub enabled: bool,
    pub fsync: FsyncMode,
    /// With `fsync: grouped`: the longest time between a write and its fsync.
    pub fsync_interval_ms: u32,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fsync: FsyncMode::Grouped,
            fsync_interval_ms: 10,
        }
    }
}

impl Config {
    /// Where the write-ahead log lives.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub bind: SocketAddr,
    /// The region in the API's paths (`/iot/v1/regions/{region}/...`).
    #[serde(default = "default_region")]
    pub region: String,
}

fn default_region() -> String {
    "fr-par".into()
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            region: default_region(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Seconds a client may take between opening a connection and sending CONNECT.
    pub connect_timeout_secs: u32,
    /// Largest packet accepted from a client, fixed header included.
    pub max_packet_size: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            max_packet_size: 4 * 1024 * 1024 + 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub plan: Plan,
    #[serde(default = "unlocated_false")]
    pub allow_anonymous: Spanned<bool>,
    #[serde(default)]
    pub limits: HubLimits,
    /// No hub events for this hub (the API's `disable_events`).
    #[serde(default)]
    pub disable_events: bool,
    /// Where its hub events are published (`<prefix>/<severity>/<object-type>/<id>`);
    /// clients cannot publish under it.
    #[serde(default = "default_events_topic_prefix")]
    pub events_topic_prefix: Spanned<String>,
}

fn default_events_topic_prefix() -> Spanned<String> {
    unlocated(iothub_engine::DEFAULT_EVENTS_TOPIC_PREFIX.to_string())
}

fn unlocated<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

fn unlocated_false() -> Spanned<bool> {
    unlocated(false)
}

fn default_hubs() -> Vec<HubConfig> {
    vec![HubConfig {
        name: unlocated("default".into()),
        plan: Plan::Dedicated,
        allow_anonymous: unlocated(true),
        limits: HubLimits::default(),
        disable_events: false,
        events_topic_prefix: default_events_topic_prefix(),
    }]
}

impl Config {
    /// Loads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse(EMBEDDED_DEFAULT, &Source::Embedded),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, &Source::File(p.to_path_buf()))
            }
        }
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str, source: &Source) -> Result<Config, ConfigError> {
        let source_name = source.to_string();
        // An empty file means "all defaults"; serde-saphyr reads it as a null document.
        let mut config: Config = if text.trim().is_empty() {
            serde_saphyr::from_str("{}")
        } else {
            serde_saphyr::from_str(text)
        }
        .map_err(|e| {
            let message = first_line(&e.to_string());
            match e.location() {
                Some(loc) => ConfigError::At {
                    source_name: source_name.clone(),
                    line: loc.line(),
                    column: loc.column(),
                    message,
                },
                None => ConfigError::Invalid {
                    source_name: source_name.clone(),
                    message,
                },
            }
        })?;
        config.listeners.name_unnamed();
        config.validate(&source_name)?;
        Ok(config)
    }

    /// The registry database URL: the configured one, or SQLite in the data directory.
    pub fn store_url(&self) -> String {
        if self.store.url.is_empty() {
            iothub_control::SqlStore::sqlite_url(&self.data_dir.join("iothub.db"))
        } else {
            self.store.url.clone()
        }
    }

    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let at = |loc: Location, message: String| {
            if loc == Location::UNKNOWN {
                ConfigError::Invalid {
                    source_name: source_name.to_string(),
                    message,
                }
            } else {
                ConfigError::At {
                    source_name: source_name.to_string(),
                    line: loc.line(),
                    column: loc.column(),
                    message,
                }
            }
        };
        let plain = |message: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            message,
        };

        let mut names = HashSet::new();
        for hub in &self.hubs {
            let name = hub.name.value.as_str();
            if name.is_empty() || name.len() > 255 {
                return Err(at(
                    hub.name.referenced,
                    "hubs[].name must be 1 to 255 characters".into(),
                ));
            }
            if !names.insert(name) {
                return Err(at(
                    hub.name.referenced,
                    format!("hub name {name:?} is declared twice"),
                ));
            }
            if let Err(e) = TopicName::new(&hub.events_topic_prefix.value) {
                return Err(at(
                    hub.events_topic_prefix.referenced,
                    format!("hub {name:?}: events_topic_prefix is not a topic name: {e}"),
                ));
            }
            if hub.allow_anonymous.value && hub.plan == Plan::Shared {
                return Err(at(
                    hub.allow_anonymous.referenced,
                    format!("hub {name:?}: allow_anonymous is not available on plan_shared"),
                ));
            }
            let l = &hub.limits;
            for (field, value) in [
                ("max_payload_bytes", u64::from(l.max_payload_bytes)),
                ("budget_bytes", l.budget_bytes),
                (
                    "max_session_queue_messages",
                    u64::from(l.max_session_queue_messages),
                ),
                ("max_session_queue_bytes", l.max_session_queue_bytes),
                ("max_inflight_messages", u64::from(l.max_inflight_messages)),
                ("receive_maximum", u64::from(l.receive_maximum)),
            ] {
                if value == 0 {
                    return Err(at(
                        hub.name.referenced,
                        format!("hub {name:?}: limits.{field} must be greater than 0"),
                    ));
                }
            }
        }

        // "api" names the HTTP listener in the `listening listener=...` log line.
        let mut listener_names = HashSet::from(["api"]);
        for (kind, l) in self.listeners.all() {
            if !listener_names.insert(l.name.as_str()) {
                return Err(plain(format!(
                    "listeners.{kind}: the name {:?} is used by another listener",
                    l.name
                )));
            }
            if let Some(hub_name) = &l.anonymous_hub {
                let Some(hub) = self.hubs.iter().find(|h| h.name.value == hub_name.value) else {
                    return Err(at(
                        hub_name.referenced,
                        format!(
                            "listener {:?}: anonymous_hub {:?} is not declared under hubs",
                            l.name, hub_name.value
                        ),
                    ));
                };
                if !hub.allow_anonymous.value {
                    return Err(at(
                        hub_name.referenced,
                        format!(
                            "listener {:?}: hub {:?} does not allow anonymous clients \
                             (set allow_anonymous: true on it)",
                            l.name, hub_name.value
                        ),
                    ));
                }
            }
        }
        if !self.store.url.is_empty()
            && !["sqlite:", "postgres:", "postgresql:"]
                .iter()
                .any(|p| self.store.url.starts_with(p))
        {
            return Err(plain(
                "store.url must start with sqlite:, postgres: or postgresql:".into(),
            ));
        }
        if self.api.region.is_empty()
            || !self
                .api
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(plain(
                "api.region must be letters, digits and '-' (e.g. fr-par)".into(),
            ));
        }
        if self.persistence.fsync_interval_ms == 0 || self.persistence.fsync_interval_ms > 10_000 {
            return Err(plain(
                "persistence.fsync_interval_ms must be 1 to 10000".into(),
            ));
        }
        if self.mqtt.connect_timeout_secs == 0 {
            return Err(plain(
                "mqtt.connect_timeout_secs must be greater than 0".into(),
            ));
        }
        if self.mqtt.max_packet_size < 128 {
            return Err(plain(
                "mqtt.max_packet_size must be at least 128 bytes".into(),
            ));
        }
        let tls = &self.tls;
        let set = |p: &Path| !p.as_os_str().is_empty();
        if set(&tls.cert_file) != set(&tls.key_file) {
            return Err(plain(
                "tls.cert_file and tls.key_file go together (both empty: generated)".into(),
            ));
        }
        if set(&tls.ca_file) && !tls.uses_files() {
            return Err(plain(
                "tls.ca_file needs tls.cert_file (the generated certificate has its own CA)".into(),
            ));
        }
        if !tls.hostnames.is_empty() && tls.uses_files() {
            return Err(plain(
                "tls.hostnames only apply to the generated certificate (not with tls.cert_file)"
                    .into(),
            ));
        }
        if tls.hostnames.iter().any(|h| h.trim().is_empty()) {
            return Err(plain("tls.hostnames: a name is empty".into()));
        }
        if tls.reload_interval_secs == 0 {
            return Err(plain(
                "tls.reload_interval_secs must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

/// serde-saphyr renders a snippet of the document after the message; the first line is the
/// message itself, which is what a terminal user needs next to file:line:column.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_matches_the_built_in_defaults() {
        let c = Config::parse(EMBEDDED_DEFAULT, &Source::Embedded).unwrap();
        let d = Config::parse("", &Source::Embedded).unwrap();
        let binds = |c: &Config| {
            c.listeners
                .all()
                .map(|(kind, l)| {
                    (
                        kind,
                        l.name.clone(),
                        l.bind,
                        l.anonymous_hub.clone().map(|h| h.value),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(binds(&c), binds(&d));
        assert_eq!(
            binds(&c)
                .iter()
                .map(|(kind, _, a, _)| (*kind, a.port()))
                .collect::<Vec<_>>(),
            [
                ("mqtt", 1883),
                ("tls", 8883),
                ("ws", 8083),
                ("wss", 8084),
                ("quic", 14567)
            ]
        );
        assert_eq!(c.api.bind, d.api.bind);
        assert_eq!(c.api.region, d.api.region);
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.store.url, d.store.url);
        assert_eq!(c.persistence.enabled, d.persistence.enabled);
        assert_eq!(c.persistence.fsync, d.persistence.fsync);
        assert_eq!(
            c.persistence.fsync_interval_ms,
            d.persistence.fsync_interval_ms
        );
        assert_eq!(c.wal_dir(), d.data_dir.join("wal"));
        assert_eq!(c.quotas, d.quotas);
        assert_eq!(c.mqtt.connect_timeout_secs, d.mqtt.connect_timeout_secs);
        assert_eq!(c.mqtt.max_packet_size, d.mqtt.max_packet_size);
        assert_eq!(c.tls.cert_file, d.tls.cert_file);
        assert_eq!(c.tls.key_file, d.tls.key_file);
        assert_eq!(c.tls.ca_file, d.tls.ca_file);
        assert_eq!(c.tls.hostnames, d.tls.hostnames);
        assert_eq!(c.tls.reload_interval_secs, d.tls.reload_interval_secs);
        assert!(!c.tls.uses_files());
        assert_eq!(c.hubs.len(), 1);
        assert_eq!(c.hubs[0].name.value, "default");
        assert_eq!(c.hubs[0].limits, HubLimits::default());
        assert!(c.hubs[0].allow_anonymous.value);
        assert!(!c.hubs[0].disable_events);
        assert_eq!(c.hubs[0].events_topic_prefix.value, "$SCW/events");
        assert_eq!(
            c.hubs[0].events_topic_prefix.value,
            d.hubs[0].events_topic_prefix.value
        );
    }

    #[test]
    fn mistakes_name_line_and_column() {
        let table: &[(&str, &str)] = &[
            ("api:\n  bnd: 1.2.3.4:5\n", "f.yaml:2:3"),
            ("mqtt:\n  connect_timeout_secs: soon\n", "f.yaml:2:"),
            ("hubs:\n  - name: a\n    plan: plan_gold\n", "f.yaml:3:"),
            (
                "hubs:\n  - name: a\n    events_topic_prefix: \"ev/#\"\n",
                "f.yaml:3:",
            ),
            (
                "listeners:\n  mqtt:\n    - bind: 127.0.0.1:1\n      anonymous_hub: nope\n",
                "f.yaml:4:",
            ),
            ("hubs:\n  - name: a\n  - name: a\n", "f.yaml:3:"),
            (
                "hubs:\n  - name: s\n    plan: plan_shared\n    allow_anonymous: true\n",
                "f.yaml:4:",
            ),
        ];
        for (yaml, expect) in table {
            let err = Config::parse(yaml, &Source::File("f.yaml".into()))
                .expect_err(yaml)
                .to_string();
            assert!(err.starts_with(expect), "{yaml:?} gave {err:?}");
        }
    }

    #[test]
    fn listener_names_default_to_their_kind_and_are_unique_across_kinds() {
        let hubs = "hubs:\n  - name: default\n    allow_anonymous: true\n";
        // (listeners section, Ok(names in order) or Err(part of the message))
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            (
                "  mqtt:\n    - bind: 127.0.0.1:0\n  ws:\n    - bind: 127.0.0.1:0\n  wss:\n    - bind: 127.0.0.1:0\n  quic:\n    - bind: 127.0.0.1:0\n",
                Ok(&["mqtt", "ws", "wss", "quic"]),
            ),
            (
                "  ws:\n    - name: a\n      bind: 127.0.0.1:0\n    - name: b\n      bind: 127.0.0.1:0\n",
                Ok(&["a", "b"]),
            ),
            (
                "  mqtt:\n    - name: x\n      bind: 127.0.0.1:0\n  quic:\n    - name: x\n      bind: 127.0.0.1:0\n",
                Err("listeners.quic: the name \"x\" is used by another listener"),
            ),
            (
                "  ws:\n    - bind: 127.0.0.1:0\n    - bind: 127.0.0.1:0\n",
                Err("listeners.ws: the name \"ws\" is used by another listener"),
            ),
            (
                "  wss:\n    - name: api\n      bind: 127.0.0.1:0\n",
                Err("the name \"api\" is used by another listener"),
            ),
            (
                "  quic:\n    - bind: 127.0.0.1:0\n      anonymous_hub: nope\n",
                Err("f.yaml:4:"),
            ),
            ("  websocket:\n    - bind: 127.0.0.1:0\n", Err("f.yaml:2:")),
        ];
        for (listeners, want) in cases {
            let yaml = format!("listeners:\n{listeners}{hubs}");
            let got = Config::parse(&yaml, &Source::File("f.yaml".into()));
            match (got, want) {
                (Ok(c), Ok(names)) => {
                    let got: Vec<_> = c.listeners.all().map(|(_, l)| l.name.clone()).collect();
                    assert_eq!(got, *names, "{yaml}");
                }
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{yaml}: {e}"),
                (got, _) => panic!("{yaml}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn tls_settings_are_checked() {
        // (tls section, None = valid or Some(part of the message))
        let cases: &[(&str, Option<&str>)] = &[
            ("tls: {}\n", None),
            (
                "tls:\n  cert_file: s.crt\n  key_file: s.key\n  ca_file: ca.crt\n",
                None,
            ),
            ("tls:\n  hostnames: [hub.example, 10.0.0.7]\n", None),
            ("tls:\n  cert_file: s.crt\n", Some("go together")),
            ("tls:\n  key_file: s.key\n", Some("go together")),
            ("tls:\n  ca_file: ca.crt\n", Some("tls.ca_file needs")),
            (
                "tls:\n  cert_file: s.crt\n  key_file: s.key\n  hostnames: [a]\n",
                Some("only apply to the generated"),
            ),
            ("tls:\n  hostnames: ['']\n", Some("a name is empty")),
            ("tls:\n  reload_interval_secs: 0\n", Some("greater than 0")),
            ("tls:\n  certfile: s.crt\n", Some("f.yaml:2:")),
            ("persistence:\n  fsync: always\n", None),
            (
                "persistence:\n  fsync: grouped\n  fsync_interval_ms: 50\n",
                None,
            ),
            ("persistence:\n  fsync: sometimes\n", Some("f.yaml:2:")),
            (
                "persistence:\n  fsync_interval_ms: 0\n",
                Some("fsync_interval_ms must be 1 to 10000"),
            ),
        ];
        for (yaml, want) in cases {
            let got = Config::parse(yaml, &Source::File("f.yaml".into()));
            match (got, want) {
                (Ok(_), None) => {}
                (Err(e), Some(part)) => assert!(e.to_string().contains(part), "{yaml}: {e}"),
                (got, _) => panic!("{yaml}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn listener_must_name_an_anonymous_hub() {
        let yaml = "hubs:\n  - name: closed\n    allow_anonymous: false\nlisteners:\n  mqtt:\n    - bind: 127.0.0.1:0\n      anonymous_hub: closed\n";
        let err = Config::parse(yaml, &Source::File("f.yaml".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not allow anonymous"), "{err}");
    }
}
