//! What a route may reach, checked by the host on every capability call. A route gets at most
//! one HTTP origin, one database and one bucket (with a key prefix): the target of its
//! configuration. Nothing else is reachable, whatever the component asks.

use std::fmt;

/// Why a grant could not be built from configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("{0:?} is not an absolute http:// or https:// URI")]
    BadUri(String),
    #[error("database URL {0:?} is not postgres://, postgresql:// or mysql://")]
    BadDatabaseUrl(String),
    #[error("bucket name is empty")]
    EmptyBucket,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The one HTTP origin (scheme, host, port) a route may send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpOrigin {
    scheme: Scheme,
    /// Lower-cased host name or IP literal (IPv6 without brackets).
    host: String,
    port: u16,
}

/// The parts of an absolute URI the host needs: origin and request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUri {
    pub origin: HttpOrigin,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl HttpOrigin {
    /// The origin of an absolute `http://` or `https://` URI (user info refused).
    pub fn from_uri(uri: &str) -> Result<Self, GrantError> {
        parse_uri(uri).map(|p| p.origin)
    }
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HttpOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

pub(crate) fn parse_uri(uri: &str) -> Result<ParsedUri, GrantError> {
    let bad = || GrantError::BadUri(uri.chars().take(200).collect());
    let parsed: hyper::Uri = uri.parse().map_err(|_| bad())?;
    let scheme = match parsed.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        _ => return Err(bad()),
    };
    let authority = parsed.authority().ok_or_else(bad)?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad());
    }
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    let path_and_query = parsed
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Ok(ParsedUri {
        origin: HttpOrigin { scheme, host, port },
        path_and_query,
    })
}

/// PostgreSQL or MySQL (MariaDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbEngine {
    Postgres,
    MySql,
}

/// The one database a route may run statements on. The URL carries the credentials; the
/// route never sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct DbTarget {
    engine: DbEngine,
    url: String,
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never print the password
        f.debug_struct("DbTarget")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl DbTarget {
    /// `postgres://user:pass@host:port/db` or `mysql://user:pass@host:port/db`.
    pub fn new(url: &str) -> Result<Self, GrantError> {
        let lower = url.to_ascii_lowercase();
        let engine = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            DbEngine::Postgres
        } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            DbEngine::MySql
        } else {
            let shown = url.split('@').next_back().unwrap_or_default();
            return Err(GrantError::BadDatabaseUrl(
                shown.chars().take(100).collect(),
            ));
        };
        let url = if lower.starts_with("mariadb://") {
            format!("mysql://{}", &url["mariadb://".len()..])
        } else {
            url.to_owned()
        };
        Ok(Self { engine, url })
    }
    pub fn engine(&self) -> DbEngine {
        self.engine
    }
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// The one S3 bucket (and key prefix) a route may write objects to, with the credentials
/// the host signs with.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Target {
    /// `None`: AWS's endpoint for the region; else an S3-compatible server's base URL
    /// (path-style requests).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Every key the route writes must start with this (empty: the whole bucket).
    pub key_prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    /// Whether `key` lies inside the grant: under the prefix, no empty, `.` or `..` segment.
    pub fn allows_key(&self, key: &str) -> bool {
        if !key.starts_with(&self.key_prefix) || key.is_empty() || key.starts_with('/') {
            return false;
        }
        key.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    }
}

/// Everything one route may reach. The default grants nothing: every capability call but
/// log and clock (and hub publish) is `denied`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub http: Option<HttpOrigin>,
    pub database: Option<DbTarget>,
    pub bucket: Option<S3Target>,
    /// Whether the route may publish back into its hub.
    pub hub_publish: bool,
}

impl Grants {
    /// Whether a request to `origin` is inside the grant.
    pub fn allows_origin(&self, origin: &HttpOrigin) -> bool {
        self.http.as_ref() == Some(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let g = Grants {
            http: Some(HttpOrigin::from_uri("http://Example.com:8080/x").unwrap()),
            ..Grants::default()
        };
        let check = |uri: &str| g.allows_origin(&HttpOrigin::from_uri(uri).unwrap());
        assert!(check("http://example.com:8080/other?q=1"));
        assert!(!check("https://example.com:8080/"));
        assert!(!check("http://example.com/"));
        assert!(!check("http://example.com.evil:8080/"));
        assert!(!check("http://127.0.0.1:8080/"));
    }

    #[test]
    fn bad_uris_are_refused() {
        for uri in [
            "ftp://a/",
            "/relative",
            "http://user:pw@host/",
            "",
            "http:///x",
        ] {
            assert!(
                matches!(HttpOrigin::from_uri(uri), Err(GrantError::BadUri(_))),
                "{uri}"
            );
        }
        assert_eq!(
            HttpOrigin::from_uri("https://[::1]/").unwrap().to_string(),
            "https://[::1]:443"
        );
    }

    #[test]
    fn keys_stay_under_the_prefix() {
        let t = S3Target {
            endpoint: None,
            region: "fr-par".into(),
            bucket: "b".into(),
            key_prefix: "hub1/".into(),
            access_key_id: "a".into(),
            secret_access_key: "s".into(),
        };
        assert!(t.allows_key("hub1/room/1"));
        assert!(!t.allows_key("hub2/room/1"));
        assert!(!t.allows_key("hub1/../hub2/x"));
        assert!(!t.allows_key("hub1//x"));
    }

    #[test]
    fn database_urls_name_their_engine_and_hide_the_password() {
        let pg = DbTarget::new("postgres://u:secret@127.0.0.1/test").unwrap();
        assert_eq!(pg.engine(), DbEngine::Postgres);
        assert!(!format!("{pg:?}").contains("secret"));
        let my = DbTarget::new("mariadb://root@127.0.0.1/test").unwrap();
        assert_eq!(my.engine(), DbEngine::MySql);
        assert!(my.url().starts_with("mysql://"));
        assert!(matches!(
            DbTarget::new("sqlite://x:pw@h/db"),
            Err(GrantError::BadDatabaseUrl(s)) if !s.contains("pw")
        ));
    }
}
