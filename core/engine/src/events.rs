//! Hub events: what went wrong (or, for provisioning, right) with a hub's clients, published
//! by the hub itself on its own topics so its owner sees it with any MQTT client.
//!
//! An event ([`HubEvent`]) is raised where the problem is detected — the adapter for what a
//! client sent (malformed and refused packets, refused CONNECTs, certificates), the engine
//! for live changes (a device disabled, deleted or its security changed while connected, a
//! plan change, subscriptions a filter change revoked) — and published on
//! `<events_topic_prefix>/<severity>/<object-type>/<object-id>` (default prefix
//! `$SCW/events`) of that hub only, QoS 1, not retained, [`Origin::Hub`], with the
//! reference's JSON keys (`time`, `severity`, `object-type`, `object-id`, `msg`, `packet`, and
//! `object-name`, `source-address`, `payload` when set). Subscribers get events as their
//! filters allow, like any message; clients can never publish under the prefix (nor under
//! `$SYS` and `$SCW`).
//!
//! A hub with events disabled (`disable_events`) publishes none. Each hub has a token bucket
//! per [`EventKind`] ([`RATE_PER_SEC`] per second, bursts of [`BURST`]): a misbehaving client
//! can neither flood the events topic nor, by flooding one kind, hide the others. Counted:
//! `iothub_events_published_total{hub,kind}`, `iothub_events_dropped_total{hub,kind}` (rate
//! limited) and `iothub_events_unattributed_total{kind}` (detected before the hub was known,
//! e.g. a TLS handshake with a certificate no hub's CA issued: counted only).

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use iothub_model::{DeviceId, HubId, Message, MessageProperties, Origin, QoS, TopicName};
use metrics::Counter;
use parking_lot::Mutex;

use crate::hub::Hub;

/// The events topic prefix of a hub that does not set one (the reference's).
pub const DEFAULT_EVENTS_TOPIC_PREFIX: &str = "$SCW/events";
/// [`DEFAULT_EVENTS_TOPIC_PREFIX`] as a topic name.
pub fn default_events_topic_prefix() -> TopicName {
    #[allow(clippy::expect_used)] // a constant, and a valid topic name (tested below)
    TopicName::new(DEFAULT_EVENTS_TOPIC_PREFIX).expect("the default prefix is a topic name")
}

/// Events of one kind a hub publishes per second, once its burst is spent.
pub const RATE_PER_SEC: f64 = 10.0;
/// Events of one kind a hub publishes at once after a quiet spell.
pub const BURST: f64 = 20.0;

/// How bad an event is: the second level of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// What an event is about: the third level of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    Device,
    Hub,
    /// Route failures (routes arrive with a later issue).
    Route,
}

impl ObjectType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Hub => "hub",
            Self::Route => "route",
        }
    }
}

/// The kinds of event, each rate-limited on its own. The `kind` label of the event metrics;
/// the severity is the kind's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A packet that cannot be parsed ("cannot decode MQTT header", "failed to unpack
    /// message body").
    MalformedPacket,
    /// A packet that parses but breaks a protocol rule (unknown packet type, invalid QoS,
    /// empty topic, a second CONNECT, an invalid topic alias, ...).
    ProtocolError,
    /// A PUBLISH, will or SUBSCRIBE the device's message filters (or a reserved topic)
    /// refuse, or a subscription a filter change removed: "unauthorized topic T".
    UnauthorizedTopic,
    /// A client certificate refused (at the TLS handshake or at CONNECT).
    InvalidCertificate,
    /// A device that does not allow insecure connections connected without its certificate.
    MutualTlsRequired,
    /// A CONNECT to a disabled hub.
    HubNotReady,
    /// A disabled device connected, or was disconnected because it was disabled.
    DeviceDisabled,
    /// A connected device was deleted (or moved to another hub).
    DeviceDeleted,
    /// The hub's plan changed: connections must reconnect under the new one.
    PlanChanged,
    /// A connected device's security changed (insecure connections or multiple connections
    /// no longer allowed, certificate renewed, replaced or removed): it must authenticate
    /// again.
    DeviceSecurityChanged,
    /// A certificate of the hub's own CA names no device and none was created (empty CN,
    /// unknown CN without auto-provisioning, the registry refused the new device).
    ProvisioningFailed,
    /// A device was created from its certificate on first connection.
    DeviceProvisioned,
    /// What the shared plan does not offer was asked for (retained or QoS 2 PUBLISH, QoS 1/2
    /// SUBSCRIBE downgraded, a persistent session).
    ServiceLevel,
    /// A hub limit refused something: the byte budget (retained message, will) or the
    /// payload size.
    QuotaExceeded,
    /// An S3 route could not write an object.
    RouteS3Write,
    /// A database route could not connect to its database.
    RouteDatabaseConnect,
    /// A database route's query could not be prepared.
    RouteDatabasePrepare,
    /// A database route's query failed when executed.
    RouteDatabaseExecute,
    /// A REST route's request failed (no connection, timeout, non-2xx status).
    RouteHttp,
    /// A route's component failed (trap, deadline, wrong outcomes) or refused a message.
    RouteFailed,
    /// A route gave up on a message after its retry budget (or the target rejected it): the
    /// message is dropped from the route's queue.
    RouteDeadLetter,
}

impl EventKind {
    /// Every kind, in `index` order.
    pub const ALL: [EventKind; 21] = [
        Self::MalformedPacket,
        Self::ProtocolError,
        Self::UnauthorizedTopic,
        Self::InvalidCertificate,
        Self::MutualTlsRequired,
        Self::HubNotReady,
        Self::DeviceDisabled,
        Self::DeviceDeleted,
        Self::PlanChanged,
        Self::DeviceSecurityChanged,
        Self::ProvisioningFailed,
        Self::DeviceProvisioned,
        Self::ServiceLevel,
        Self::QuotaExceeded,
        Self::RouteS3Write,
        Self::RouteDatabaseConnect,
        Self::RouteDatabasePrepare,
        Self::RouteDatabaseExecute,
        Self::RouteHttp,
        Self::RouteFailed,
        Self::RouteDeadLetter,
    ];

    /// The `kind` label of the event metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Self::MalformedPacket => "malformed_packet",
            Self::ProtocolError => "protocol_error",
            Self::UnauthorizedTopic => "unauthorized_topic",
            Self::InvalidCertificate => "invalid_certificate",
            Self::MutualTlsRequired => "mutual_tls_required",
            Self::HubNotReady => "hub_not_ready",
            Self::DeviceDisabled => "device_disabled",
            Self::DeviceDeleted => "device_deleted",
            Self::PlanChanged => "plan_changed",
            Self::DeviceSecurityChanged => "device_security_changed",
            Self::ProvisioningFailed => "provisioning_failed",
            Self::DeviceProvisioned => "device_provisioned",
            Self::ServiceLevel => "service_level",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RouteS3Write => "route_s3_write",
            Self::RouteDatabaseConnect => "route_database_connect",
            Self::RouteDatabasePrepare => "route_database_prepare",
            Self::RouteDatabaseExecute => "route_database_execute",
            Self::RouteHttp => "route_http",
            Self::RouteFailed => "route_failed",
            Self::RouteDeadLetter => "route_dead_letter",
        }
    }

    /// The reference's severities: errors for what a client or its owner must fix,
    /// warnings for plan service levels and limits, info for a provisioned device.
    pub const fn severity(self) -> Severity {
        match self {
            Self::DeviceProvisioned => Severity::Info,
            Self::ServiceLevel | Self::QuotaExceeded => Severity::Warning,
            _ => Severity::Error,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// One hub event. Build it with [`HubEvent::about_device`] / [`HubEvent::about_hub`] and the
/// `with_*` setters, then raise it with `Engine::raise_event` or `Session::raise_event`.
///
/// Object ids: a device's id when the event concerns a known device, else the hub's id (an
/// anonymous client, a certificate that names no device, a hub-wide change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEvent {
    pub kind: EventKind,
    /// `None`: stamped with the engine's clock when raised.
    pub time: Option<SystemTime>,
    pub severity: Severity,
    pub object_type: ObjectType,
    /// The topic's last level: a UUID, never holding `/`, `+` or `#`.
    pub object_id: String,
    pub object_name: Option<String>,
    pub msg: String,
    /// The offending packet, or a readable excerpt of it (hex for bytes that do not parse).
    pub packet: Option<String>,
    pub source_address: Option<String>,
    pub payload: Option<String>,
}

impl HubEvent {
    /// An event of `kind` (with its severity) about `object_id`.
    pub fn new(
        kind: EventKind,
        object_type: ObjectType,
        object_id: impl fmt::Display,
        msg: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            time: None,
            severity: kind.severity(),
            object_type,
            object_id: object_id.to_string(),
            object_name: None,
            msg: msg.into(),
            packet: None,
            source_address: None,
            payload: None,
        }
    }

    pub fn about_device(kind: EventKind, device: DeviceId, msg: impl Into<String>) -> Self {
        Self::new(kind, ObjectType::Device, device, msg)
    }

    pub fn about_hub(kind: EventKind, hub: HubId, msg: impl Into<String>) -> Self {
        Self::new(kind, ObjectType::Hub, hub, msg)
    }

    /// About a route (its id, a UUID): published on `<prefix>/error/route/<route-id>`, which
    /// the route itself never receives (see `Engine::connect_route`).
    pub fn about_route(kind: EventKind, route: impl fmt::Display, msg: impl Into<String>) -> Self {
        Self::new(kind, ObjectType::Route, route, msg)
    }

    /// About the device when it is known, else about the hub.
    pub fn about(
        kind: EventKind,
        hub: HubId,
        device: Option<DeviceId>,
        msg: impl Into<String>,
    ) -> Self {
        match device {
            Some(d) => Self::about_device(kind, d, msg),
            None => Self::about_hub(kind, hub, msg),
        }
    }

    pub fn with_packet(mut self, packet: impl Into<String>) -> Self {
        self.packet = Some(packet.into());
        self
    }

    pub fn with_object_name(mut self, name: impl Into<String>) -> Self {
        self.object_name = Some(name.into());
        self
    }

    pub fn with_source_address(mut self, address: impl fmt::Display) -> Self {
        self.source_address = Some(address.to_string());
        self
    }

    pub fn with_payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    pub fn with_time(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }

    /// `<prefix>/<severity>/<object-type>/<object-id>`; `None` when the object id is not one
    /// topic level.
    pub fn topic(&self, prefix: &TopicName) -> Option<TopicName> {
        let id = &self.object_id;
        if id.is_empty() || id.contains(['/', '+', '#']) {
            return None;
        }
        let topic = format!(
            "{}/{}/{}/{}",
            prefix.as_str(),
            self.severity.as_str(),
            self.object_type.as_str(),
            id
        );
        TopicName::new(&topic).ok()
    }

    /// The JSON payload, with the reference's keys: `time` (RFC 3339, UTC, milliseconds),
    /// `severity`, `object-type`, `object-id`, `object-name` (when set), `msg`, `packet` (the
    /// empty string when there is none), `source-address` and `payload` (when set).
    pub fn to_json(&self, time: SystemTime) -> String {
        let mut out = String::with_capacity(160 + self.msg.len());
        out.push('{');
        let mut field = |key: &str, value: &str, first: bool| {
            if !first {
                out.push(',');
            }
            json_string(&mut out, key);
            out.push(':');
            json_string(&mut out, value);
        };
        field("time", &rfc3339(time), true);
        field("severity", self.severity.as_str(), false);
        field("object-type", self.object_type.as_str(), false);
        field("object-id", &self.object_id, false);
        if let Some(name) = &self.object_name {
            field("object-name", name, false);
        }
        field("msg", &self.msg, false);
        field("packet", self.packet.as_deref().unwrap_or(""), false);
        if let Some(address) = &self.source_address {
            field("source-address", address, false);
        }
        if let Some(payload) = &self.payload {
            field("payload", payload, false);
        }
        out.push('}');
        out
    }
}

/// What became of a raised event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Published on the hub's events topic (whether or not anyone subscribes).
    Published,
    /// The hub has events turned off.
    Disabled,
    /// Over the kind's rate: dropped and counted.
    RateLimited,
    /// No such hub: counted as unattributed.
    UnknownHub,
    /// The object id cannot be a topic level: dropped (logged).
    InvalidObjectId,
}

/// Events a hub published and dropped (rate limited), for tests and `$SYS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub published: u64,
    pub dropped: u64,
}

/// Counts an event detected before any hub could be named (a TLS handshake whose
/// certificate no hub's CA issued, a malformed CONNECT): `iothub_events_unattributed_total`.
pub fn count_unattributed(kind: EventKind) {
    metrics::counter!("iothub_events_unattributed_total", "kind" => kind.label()).increment(1);
}

/// A token bucket, in tokens, refilled from the hub's clock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    const FULL: Bucket = Bucket {
        tokens: BURST,
        last: None,
    };

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * RATE_PER_SEC;
            self.tokens = (self.tokens + refill).min(BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

const KINDS: usize = EventKind::ALL.len();

/// One hub's event state: the rate limiter and the counters. Metric handles are taken on a
/// kind's first event, so a quiet hub exports no event series.
pub(crate) struct HubEvents {
    hub: String,
    buckets: Mutex<[Bucket; KINDS]>,
    published: [OnceLock<Counter>; KINDS],
    dropped: [OnceLock<Counter>; KINDS],
    published_count: AtomicU64,
    dropped_count: AtomicU64,
}

impl HubEvents {
    pub(crate) fn new(hub: HubId) -> Self {
        Self {
            hub: hub.to_string(),
            buckets: Mutex::new([Bucket::FULL; KINDS]),
            published: Default::default(),
            dropped: Default::default(),
            published_count: AtomicU64::new(0),
            dropped_count: AtomicU64::new(0),
        }
    }

    fn counter(
        &self,
        slots: &[OnceLock<Counter>; KINDS],
        name: &'static str,
        kind: EventKind,
    ) -> Counter {
        slots[kind.index()]
            .get_or_init(
                || metrics::counter!(name, "hub" => self.hub.clone(), "kind" => kind.label()),
            )
            .clone()
    }

    fn admit(&self, kind: EventKind, now: Instant) -> bool {
        let admitted = self.buckets.lock()[kind.index()].take(now);
        if admitted {
            self.counter(&self.published, "iothub_events_published_total", kind)
                .increment(1);
            self.published_count.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counter(&self.dropped, "iothub_events_dropped_total", kind)
                .increment(1);
            self.dropped_count.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    pub(crate) fn counts(&self) -> EventCounts {
        EventCounts {
            published: self.published_count.load(Ordering::Relaxed),
            dropped: self.dropped_count.load(Ordering::Relaxed),
        }
    }
}

impl Hub {
    /// Publishes `event` on this hub's events topic, unless events are off or the kind is
    /// over its rate. Takes the same locks as routing a message: never call it while
    /// holding a hub lock.
    pub(crate) fn raise(&self, event: HubEvent) -> EventOutcome {
        let config = self.config();
        if !config.events_enabled {
            return EventOutcome::Disabled;
        }
        let Some(topic) = event.topic(&config.events_prefix) else {
            tracing::warn!(message = "hub event not published: its object id is not a topic level", hub_id = %self.id, object_id = %event.object_id, msg = %event.msg);
            return EventOutcome::InvalidObjectId;
        };
        let now = self.now();
        if !self.events.admit(event.kind, now) {
            return EventOutcome::RateLimited;
        }
        let time = event.time.unwrap_or_else(|| self.wall_now());
        tracing::debug!(message = "hub event", hub_id = %self.id, topic = %topic.as_str(), kind = event.kind.label(), msg = %event.msg);
        let message = Arc::new(Message {
            topic,
            payload: Bytes::from(event.to_json(time)),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties {
                payload_is_utf8: Some(true),
                content_type: Some("application/json".into()),
                ..MessageProperties::default()
            },
            origin: Origin::Hub,
        });
        self.route(&message, None, now);
        EventOutcome::Published
    }
}

/// Appends `s` as a JSON string (RFC 8259: quotes, backslashes and control characters
/// escaped; everything else as is, since the output is UTF-8).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `time` as RFC 3339 in UTC with milliseconds (`2024-05-01T12:34:56.789Z`). Times before
/// 1970 (a clock gone wrong) print as the epoch.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01: count 400-year eras (146,097
/// days each) from 0000-03-01, so that the leap day ends each year, then the year of the
/// era, the day of that year and the month (March = 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    const DAYS_0000_03_01_TO_EPOCH: u64 = 719_468;
    let z = days + DAYS_0000_03_01_TO_EPOCH;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_print_as_rfc3339_utc() {
        // (seconds since the epoch, milliseconds, expected)
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (951_868_799, 999, "2000-02-29T23:59:59.999Z"),
            (1_709_210_096, 123, "2024-02-29T12:34:56.123Z"),
            (1_735_689_599, 0, "2024-12-31T23:59:59.000Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000Z"),
        ];
        for (secs, millis, want) in cases {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(rfc3339(t), want, "{secs}");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        // (input, JSON text)
        let cases = [
            ("plain", r#""plain""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("line\nbreak\ttab\r", r#""line\nbreak\ttab\r""#),
            ("\u{1}\u{1f}", r#""\u0001\u001f""#),
            ("é/ü 東", "\"é/ü 東\""),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            json_string(&mut out, input);
            assert_eq!(out, want);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, input);
        }
    }

    #[test]
    fn events_serialise_with_the_reference_keys() {
        let device = DeviceId::new_random();
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let plain = HubEvent::about_device(
            EventKind::UnauthorizedTopic,
            device,
            "unauthorized topic a/b",
        )
        .with_packet("PUBLISH topic=\"a/b\"");
        let json: serde_json::Value = serde_json::from_str(&plain.to_json(t)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.250Z",
                "severity": "error",
                "object-type": "device",
                "object-id": device.to_string(),
                "msg": "unauthorized topic a/b",
                "packet": "PUBLISH topic=\"a/b\"",
            })
        );
        let hub = HubId::new_random();
        let provisioned = HubEvent::about_hub(
            EventKind::DeviceProvisioned,
            hub,
            "device was auto-provisioned",
        )
        .with_object_name("sensor-7")
        .with_source_address("127.0.0.1:4000")
        .with_payload("p");
        let json: serde_json::Value = serde_json::from_str(&provisioned.to_json(t)).unwrap();
        assert_eq!(json["severity"], "info");
        assert_eq!(json["object-type"], "hub");
        assert_eq!(json["object-name"], "sensor-7");
        assert_eq!(json["source-address"], "127.0.0.1:4000");
        assert_eq!(json["payload"], "p");
        assert_eq!(json["packet"], "");
        // Keys in the reference's order.
        let text = provisioned.to_json(t);
        let order: Vec<usize> = [
            "\"time\"",
            "\"severity\"",
            "\"object-type\"",
            "\"object-id\"",
            "\"msg\"",
            "\"packet\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn topics_name_severity_object_type_and_id() {
        let prefix = default_events_topic_prefix();
        assert_eq!(prefix.as_str(), "$SCW/events");
        let custom = TopicName::new("ops/hub-events").unwrap();
        let hub = HubId::new_random();
        // (kind, object type, object id, prefix, expected topic)
        let cases: [(EventKind, ObjectType, String, &TopicName, Option<String>); 6] = [
            (
                EventKind::ProtocolError,
                ObjectType::Device,
                "d1".into(),
                &prefix,
                Some("$SCW/events/error/device/d1".into()),
            ),
            (
                EventKind::ServiceLevel,
                ObjectType::Hub,
                hub.to_string(),
                &prefix,
                Some(format!("$SCW/events/warning/hub/{hub}")),
            ),
            (
                EventKind::DeviceProvisioned,
                ObjectType::Device,
                "d2".into(),
                &custom,
                Some("ops/hub-events/info/device/d2".into()),
            ),
            (
                EventKind::ProtocolError,
                ObjectType::Route,
                "r".into(),
                &prefix,
                Some("$SCW/events/error/route/r".into()),
            ),
            (
                EventKind::ProtocolError,
                ObjectType::Device,
                "a/b".into(),
                &prefix,
                None,
            ),
            (
                EventKind::ProtocolError,
                ObjectType::Device,
                "".into(),
                &prefix,
                None,
            ),
        ];
        for (kind, object_type, id, prefix, want) in cases {
            let event = HubEvent::new(kind, object_type, &id, "m");
            assert_eq!(
                event.topic(prefix).map(|t| t.as_str().to_string()),
                want,
                "{id}"
            );
        }
    }

    #[test]
    fn every_kind_has_its_own_label_and_slot() {
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
            let same = EventKind::ALL
                .iter()
                .filter(|k| k.label() == kind.label())
                .count();
            assert_eq!(same, 1, "{kind:?}");
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::FULL;
        let burst = (0..50).filter(|_| bucket.take(start)).count();
        assert_eq!(burst as f64, BURST);
        // (elapsed since the burst in ms, events tried then, events admitted)
        let cases = [
            (0, 1, 0),
            (100, 2, 1),
            (200, 1, 1),
            (1_200, 20, 10),
            (60_000, 50, 20),
        ];
        for (ms, tried, admitted) in cases {
            let now = start + Duration::from_millis(ms);
            let got = (0..tried).filter(|_| bucket.take(now)).count();
            assert_eq!(got, admitted, "at {ms} ms");
        }
    }
}
