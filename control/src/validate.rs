//! Validation of what clients submit, and the message-filter templates.
//!
//! Every check answers a [`Invalid`] naming the field as the API spells it
//! (`rest_config.uri`, `message_filters.publish.topics[2]`), with a reason and a hint, so
//! the HTTP layer only has to copy it out.

use iothub_model::{TopicFilter, TopicName};

use crate::records::{DbConfig, MessageFilters, RestConfig, RouteConfig, S3Config};

/// A refused field: what, why, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
    pub help: String,
}

impl Invalid {
    pub fn new(
        field: impl Into<String>,
        reason: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            help: help.into(),
        }
    }
}

/// Longest name of any resource, in characters (the reference's limit).
pub const MAX_NAME_CHARS: usize = 255;
/// Longest device description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Most topics in one direction of a device's message filters: every PUBLISH and SUBSCRIBE
/// is checked against them, so the list stays short.
pub const MAX_FILTER_TOPICS: usize = 100;

/// A resource name: 1 to 255 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<(), Invalid> {
    let chars = value.chars().count();
    if chars == 0 || value.trim().is_empty() {
        return Err(Invalid::new(
            field,
            "must not be empty",
            "give a name of 1 to 255 characters",
        ));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Invalid::new(
            field,
            format!("is {chars} characters long; the maximum is {MAX_NAME_CHARS}"),
            "use a shorter name",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must not contain control characters",
            "use printable characters only",
        ));
    }
    Ok(())
}

/// A hub or device name: a [`name`] that may also be substituted into a topic by the
/// `{{ hub.name }}` / `{{ device.name }}` templates, so it holds no `/`, `+` or `#`.
pub fn topic_safe_name(field: &str, value: &str) -> Result<(), Invalid> {
    name(field, value)?;
    if value.contains(['/', '+', '#']) {
        return Err(Invalid::new(
            field,
            "must not contain '/', '+' or '#'",
            "names are substituted into topic filters by templates; remove those characters",
        ));
    }
    Ok(())
}

pub fn description(field: &str, value: &str) -> Result<(), Invalid> {
    let chars = value.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(Invalid::new(
            field,
            format!("is {chars} characters long; the maximum is {MAX_DESCRIPTION_CHARS}"),
            "use a shorter description",
        ));
    }
    if value.contains('\0') {
        return Err(Invalid::new(
            field,
            "must not contain NUL",
            "remove the NUL character",
        ));
    }
    Ok(())
}

/// `digits` hex digits (either case), answered lowercase: LoRaWAN EUIs (16), DevAddr (8)
/// and AES-128 keys (32).
pub fn hex_id(field: &str, value: &str, digits: usize) -> Result<String, Invalid> {
    if value.len() != digits || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::new(
            field,
            format!("must be {digits} hexadecimal digits"),
            format!("give {} bytes in hex, most significant first", digits / 2),
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// The network server a LoRaWAN network pushes its downlinks to: an `http://` base URL
/// (answered without a trailing `/`) and the API token it is called with, both or neither;
/// other network types take neither.
pub fn network_server(
    lorawan: bool,
    url: Option<String>,
    token: Option<String>,
) -> Result<(Option<String>, Option<String>), Invalid> {
    let (url, token) = match (url, token) {
        (None, None) => return Ok((None, None)),
        (Some(url), Some(token)) => (url, token),
        (None, Some(_)) => {
            return Err(Invalid::new(
                "network_server_token",
                "a token without network_server_url",
                "give network_server_url too, or neither",
            ));
        }
        (Some(_), None) => {
            return Err(Invalid::new(
                "network_server_token",
                "missing: the network server is called with an API token",
                "give the network server's API token (sent as Authorization: Bearer)",
            ));
        }
    };
    if !lorawan {
        return Err(Invalid::new(
            "network_server_url",
            "only LoRaWAN networks push downlinks to a network server",
            "leave network_server_url and network_server_token out",
        ));
    }
    let host = url.strip_prefix("http://").unwrap_or_default();
    let host_part = host.split('/').next().unwrap_or_default();
    if url.len() > 2048
        || host_part.is_empty()
        || url
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b == b'?' || b == b'#')
    {
        return Err(Invalid::new(
            "network_server_url",
            "must be an http:// URL with a host, without query or fragment (https is not supported)",
            "give the base URL of ChirpStack's REST API, e.g. \"http://chirpstack-rest:8090\"",
        ));
    }
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::new(
            "network_server_token",
            "must be 1 to 4096 printable ASCII characters without spaces",
            "give the API token the network server issued",
        ));
    }
    Ok((Some(url.trim_end_matches('/').to_owned()), Some(token)))
}

/// A topic prefix (events, networks): a topic name, so no wildcards.
pub fn topic_prefix(field: &str, value: &str) -> Result<(), Invalid> {
    TopicName::new(value).map(|_| ()).map_err(|e| {
        Invalid::new(
            field,
            e.to_string(),
            "give a topic without wildcards, e.g. \"sensors/site-1\"",
        )
    })
}

/// A route's topic: an MQTT filter (wildcards allowed).
pub fn topic_filter(field: &str, value: &str) -> Result<(), Invalid> {
    TopicFilter::new(value).map(|_| ()).map_err(|e| {
        Invalid::new(
            field,
            e.to_string(),
            "give an MQTT topic filter, e.g. \"sensors/+/temperature\"",
        )
    })
}

pub fn message_filters(field: &str, filters: &MessageFilters) -> Result<(), Invalid> {
    for (rule, r) in [
        ("publish", &filters.publish),
        ("subscribe", &filters.subscribe),
    ] {
        if r.topics.len() > MAX_FILTER_TOPICS {
            return Err(Invalid::new(
                format!("{field}.{rule}.topics"),
                format!(
                    "has {} topics; the maximum is {MAX_FILTER_TOPICS}",
                    r.topics.len()
                ),
                "use wildcards to cover several topics with one filter",
            ));
        }
    }
    // The engine expands the same templates the same way at run time (one implementation,
    // in the model).
    filters.validate().map_err(|e| {
        Invalid::new(
            format!("{field}.{}.topics[{}]", e.rule, e.index),
            e.error.to_string(),
            "give an MQTT filter; templates {{ hub.id }}, {{ hub.name }}, {{ device.id }}, {{ device.name }} are allowed",
        )
    })
}

fn non_empty(field: &str, value: &str, max: usize, help: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::new(field, "must not be empty", help));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(Invalid::new(
            field,
            format!("is {chars} characters long; the maximum is {max}"),
            help,
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must not contain control characters",
            help,
        ));
    }
    Ok(())
}

fn s3(config: &S3Config) -> Result<(), Invalid> {
    let region = &config.bucket_region;
    if region.is_empty()
        || region.len() > 64
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Invalid::new(
            "s3_config.bucket_region",
            "must be 1 to 64 characters of a-z, 0-9 and '-'",
            "give the bucket's region, e.g. \"fr-par\"",
        ));
    }
    if let Some(endpoint) = &config.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(Invalid::new(
            "s3_config.endpoint",
            "must be an http:// or https:// URL",
            "give the S3-compatible server's base URL, or leave it out for AWS",
        ));
    }
    let bucket = config.bucket_name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !bucket
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        || !edge_ok(bucket.first())
        || !edge_ok(bucket.last())
    {
        return Err(Invalid::new(
            "s3_config.bucket_name",
            "must be 3 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
            "give an S3 bucket name, e.g. \"my-bucket\"",
        ));
    }
    if config.object_prefix.len() > 1024 || config.object_prefix.chars().any(char::is_control) {
        return Err(Invalid::new(
            "s3_config.object_prefix",
            "must be at most 1024 bytes without control characters",
            "give a shorter prefix",
        ));
    }
    Ok(())
}

fn db(config: &DbConfig) -> Result<(), Invalid> {
    if config.host.is_empty()
        || config.host.len() > 255
        || config.host.contains(char::is_whitespace)
    {
        return Err(Invalid::new(
            "db_config.host",
            "must be a host name or address of 1 to 255 characters without spaces",
            "give the database host, e.g. \"127.0.0.1\"",
        ));
    }
    if config.port == 0 {
        return Err(Invalid::new(
            "db_config.port",
            "must be 1 to 65535",
            "give the database port, e.g. 5432",
        ));
    }
    non_empty(
        "db_config.dbname",
        &config.dbname,
        255,
        "give the database name",
    )?;
    non_empty(
        "db_config.username",
        &config.username,
        255,
        "give the user to connect as",
    )?;
    if config.password.len() > 1024 {
        return Err(Invalid::new(
            "db_config.password",
            "is longer than 1024 bytes",
            "use a shorter password",
        ));
    }
    if config.query.trim().is_empty() || config.query.len() > 65_535 || config.query.contains('\0')
    {
        return Err(Invalid::new(
            "db_config.query",
            "must be 1 to 65535 bytes of SQL without NUL",
            "give the statement run per message; $TOPIC and $PAYLOAD are bound parameters",
        ));
    }
    Ok(())
}

/// RFC 9110 token characters, what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn rest(config: &RestConfig) -> Result<(), Invalid> {
    let uri = &config.uri;
    let host = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    if host.is_none_or(str::is_empty)
        || uri.len() > 2048
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Invalid::new(
            "rest_config.uri",
            "must be an http:// or https:// URL with a host, at most 2048 bytes, without spaces",
            "give the URL to call, e.g. \"https://example.com/ingest\"",
        ));
    }
    if config.headers.len() > 64 {
        return Err(Invalid::new(
            "rest_config.headers",
            "has more than 64 headers",
            "send fewer headers",
        ));
    }
    for (name, value) in &config.headers {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(Invalid::new(
                format!("rest_config.headers.{name}"),
                "is not a valid header name",
                "header names are letters, digits and !#$%&'*+-.^_`|~",
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) || value.len() > 8192 {
            return Err(Invalid::new(
                format!("rest_config.headers.{name}"),
                "must be at most 8192 bytes without CR, LF or NUL",
                "give a single-line header value",
            ));
        }
    }
    Ok(())
}

pub fn route_config(config: &RouteConfig) -> Result<(), Invalid> {
    match config {
        RouteConfig::S3(c) => s3(c),
        RouteConfig::Database(c) => db(c),
        RouteConfig::Rest(c) => rest(c),
        RouteConfig::Wasm(c) => wasm(c),
    }
}

/// An uploaded component's block: the component decodes, the config is a JSON object, the
/// grants are well formed (whether the component is of the route world is the broker's
/// check, `Runtime::check_route`).
fn wasm(config: &crate::records::WasmConfig) -> Result<(), Invalid> {
    config.component_bytes().map_err(|reason| {
        Invalid::new(
            "wasm_config.component",
            reason,
            "send the .wasm file's bytes in base64 (e.g. `base64 -w0 route.wasm`)",
        )
    })?;
    if !config.config.is_object() {
        return Err(Invalid::new(
            "wasm_config.config",
            "must be a JSON object",
            "give the object the component's init expects, or {}",
        ));
    }
    if let Some(origin) = &config.grants.http_origin {
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && origin.split("://").nth(1).is_some_and(|rest| {
                let host = rest.split('/').next().unwrap_or("");
                !host.is_empty() && !host.contains(['@', ' '])
            });
        if !ok {
            return Err(Invalid::new(
                "wasm_config.grants.http_origin",
                "must be an http:// or https:// URL with a host",
                "e.g. \"https://api.example.com\" (scheme, host and port are granted)",
            ));
        }
    }
    if let Some(db) = &config.grants.database {
        if db.host.trim().is_empty() {
            return Err(Invalid::new(
                "wasm_config.grants.database.host",
                "must not be empty",
                "give the database server's host name or address",
            ));
        }
        if db.port == 0 {
            return Err(Invalid::new(
                "wasm_config.grants.database.port",
                "must be 1 to 65535",
                "e.g. 5432 for PostgreSQL, 3306 for MySQL",
            ));
        }
    }
    if let Some(bucket) = &config.grants.bucket {
        s3(bucket).map_err(|mut e| {
            e.field = e
                .field
                .replacen("s3_config", "wasm_config.grants.bucket", 1);
            e
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let long = "n".repeat(256);
        let max = "é".repeat(255);
        let cases: &[(&str, bool, bool)] = &[
            // value, valid as name, valid as topic-safe name
            ("sensor-1", true, true),
            ("my hub", true, true),
            (&max, true, true),
            ("", false, false),
            ("   ", false, false),
            (&long, false, false),
            ("a\nb", false, false),
            ("a/b", true, false),
            ("a+b", true, false),
            ("a#", true, false),
        ];
        for &(value, plain, safe) in cases {
            assert_eq!(name("name", value).is_ok(), plain, "{value:?}");
            assert_eq!(topic_safe_name("name", value).is_ok(), safe, "{value:?}");
        }
    }

    #[test]
    fn filter_fields_are_named() {
        let filters = MessageFilters {
            publish: crate::records::FilterRule::default(),
            subscribe: crate::records::FilterRule {
                policy: crate::records::FilterPolicy::Accept,
                topics: vec!["ok/+".into(), "bad/#/x".into()],
            },
        };
        let err = message_filters("message_filters", &filters).unwrap_err();
        assert_eq!(err.field, "message_filters.subscribe.topics[1]");
    }

    #[test]
    fn wasm_configs_name_the_field() {
        use crate::records::{DbEngine, DbGrant, WasmConfig, WasmGrants};
        let ok = WasmConfig {
            component: "AGFzbQ0AAQA=".into(),
            config: serde_json::json!({"a": 1}),
            grants: WasmGrants {
                http_origin: Some("https://api.example.com:8443".into()),
                database: Some(DbGrant {
                    engine: DbEngine::Mysql,
                    host: "127.0.0.1".into(),
                    port: 3306,
                    dbname: "test".into(),
                    username: "root".into(),
                    password: String::new(),
                }),
                bucket: None,
                hub_publish: true,
            },
        };
        let cases: Vec<(WasmConfig, Option<&str>)> = vec![
            (ok.clone(), None),
            (
                WasmConfig {
                    component: "not base64!".into(),
                    ..ok.clone()
                },
                Some("wasm_config.component"),
            ),
            (
                WasmConfig {
                    component: String::new(),
                    ..ok.clone()
                },
                Some("wasm_config.component"),
            ),
            (
                WasmConfig {
                    config: serde_json::json!([1]),
                    ..ok.clone()
                },
                Some("wasm_config.config"),
            ),
            (
                WasmConfig {
                    grants: WasmGrants {
                        http_origin: Some("ftp://x".into()),
                        ..ok.grants.clone()
                    },
                    ..ok.clone()
                },
                Some("wasm_config.grants.http_origin"),
            ),
            (
                WasmConfig {
                    grants: WasmGrants {
                        bucket: Some(S3Config {
                            bucket_region: "fr-par".into(),
                            bucket_name: "B".into(),
                            object_prefix: String::new(),
                            strategy: crate::records::S3Strategy::PerTopic,
                            endpoint: None,
                            access_key_id: None,
                            secret_access_key: None,
                        }),
                        ..ok.grants.clone()
                    },
                    ..ok.clone()
                },
                Some("wasm_config.grants.bucket.bucket_name"),
            ),
        ];
        for (config, want) in cases {
            let got = route_config(&RouteConfig::Wasm(config.clone()))
                .err()
                .map(|e| e.field);
            assert_eq!(got.as_deref(), want, "{config:?}");
        }
        assert_eq!(ok.component_bytes().unwrap(), b"\x00asm\x0d\x00\x01\x00");
        assert_eq!(ok.component_sha256().map(|h| h.len()), Some(64));
    }

    #[test]
    fn route_configs() {
        use crate::records::{DbEngine, RestVerb, S3Strategy};
        let s3c = |region: &str, bucket: &str| {
            RouteConfig::S3(S3Config {
                bucket_region: region.into(),
                bucket_name: bucket.into(),
                object_prefix: "p".into(),
                strategy: S3Strategy::PerTopic,
                endpoint: None,
                access_key_id: None,
                secret_access_key: None,
            })
        };
        let rest_c = |uri: &str, header: (&str, &str)| {
            RouteConfig::Rest(RestConfig {
                verb: RestVerb::Post,
                uri: uri.into(),
                headers: [(header.0.to_owned(), header.1.to_owned())].into(),
            })
        };
        let db_c = |host: &str, port: u16, query: &str| {
            RouteConfig::Database(DbConfig {
                engine: DbEngine::Postgresql,
                host: host.into(),
                port,
                dbname: "iot".into(),
                username: "u".into(),
                password: String::new(),
                query: query.into(),
            })
        };
        let cases: Vec<(RouteConfig, Option<&str>)> = vec![
            (s3c("fr-par", "my-bucket"), None),
            (s3c("", "my-bucket"), Some("s3_config.bucket_region")),
            (s3c("fr-par", "My_Bucket"), Some("s3_config.bucket_name")),
            (s3c("fr-par", "ab"), Some("s3_config.bucket_name")),
            (s3c("fr-par", "-bucket"), Some("s3_config.bucket_name")),
            (rest_c("https://example.com/x", ("X-Key", "v")), None),
            (rest_c("http://127.0.0.1:8080", ("A", "")), None),
            (
                rest_c("ftp://example.com", ("A", "v")),
                Some("rest_config.uri"),
            ),
            (rest_c("http:///path", ("A", "v")), Some("rest_config.uri")),
            (rest_c("http://a b", ("A", "v")), Some("rest_config.uri")),
            (
                rest_c("http://h", ("Bad Header", "v")),
                Some("rest_config.headers.Bad Header"),
            ),
            (
                rest_c("http://h", ("A", "v\r\nInjected: 1")),
                Some("rest_config.headers.A"),
            ),
            (
                db_c("127.0.0.1", 5432, "INSERT INTO t VALUES ($TOPIC, $PAYLOAD)"),
                None,
            ),
            (db_c("", 5432, "SELECT 1"), Some("db_config.host")),
            (db_c("h", 0, "SELECT 1"), Some("db_config.port")),
            (db_c("h", 5432, " "), Some("db_config.query")),
        ];
        for (config, want) in cases {
            let got = route_config(&config).err().map(|e| e.field);
            assert_eq!(got.as_deref(), want, "{config:?}");
        }
    }

    #[test]
    fn prefixes_and_filters() {
        assert!(topic_prefix("p", "$SCW/events").is_ok());
        assert!(topic_prefix("p", "a/+").is_err());
        assert!(topic_prefix("p", "").is_err());
        assert!(topic_filter("t", "a/+/#").is_ok());
        assert!(topic_filter("t", "a#").is_err());
    }
}
