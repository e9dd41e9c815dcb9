//! The TLS listeners' own certificate when none is configured: a local CA and a server
//! certificate it signs, kept as files under `data_dir/tls/` so that devices which trust
//! the CA (served at `GET /iot/v1/regions/{region}/server-ca`) keep trusting the hub
//! across restarts and across server certificate renewals.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use time::Duration;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::inspect::single_certificate_der;
use super::issue::{ca_params, datetime};
use super::{PkiError, random_serial};
use crate::time::Timestamp;

/// A certificate (CA or server) expiring within this many days is replaced.
pub const SERVER_RENEW_BEFORE_DAYS: i64 = 30;
/// The local CA lives 10 years: devices are configured to trust it once.
const LOCAL_CA_DAYS: i64 = 10 * 365 + 2;
/// The server certificate lives 397 days (what browsers accept, for wss) and is renewed
/// by [`ServerPki::load_or_create`] 30 days before it expires.
const SERVER_DAYS: i64 = 397;
/// Names every generated server certificate carries, so local clients verify the server
/// rather than skip verification.
const BUILTIN_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const SERVER_CERT_FILE: &str = "server.crt";
const SERVER_KEY_FILE: &str = "server.key";

/// The TLS material of the listeners.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerPki {
    /// The CA devices should trust (PEM).
    pub ca_pem: String,
    /// The server certificate followed by the CA (PEM), as the listeners present it.
    pub cert_chain_pem: String,
    /// The server's private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl fmt::Debug for ServerPki {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPki")
            .field("ca_pem", &self.ca_pem)
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A host name or address as certificates compare them: IPs in canonical form, DNS names
/// in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl Name {
    fn parse(name: &str) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::Hostname {
            name: name.chars().take(128).collect(),
            reason: reason.to_owned(),
        };
        let trimmed = name.trim();
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if trimmed.is_empty() {
            return Err(bad("it is empty"));
        }
        if trimmed.len() > 253 {
            return Err(bad("a DNS name has at most 253 characters"));
        }
        let lower = trimmed.to_ascii_lowercase();
        let body = lower.strip_prefix("*.").unwrap_or(&lower);
        for label in body.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each dot-separated label must have 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(
                    "a DNS name holds only letters, digits, '-' and '.' (and may start with '*.')",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label may not start or end with '-'"));
            }
        }
        Ok(Self::Dns(lower))
    }

    fn san(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            Self::Ip(ip) => SanType::IpAddress(*ip),
            Self::Dns(dns) => SanType::DnsName(dns.as_str().try_into()?),
        })
    }
}

/// The names a server certificate must carry: the built-in ones and the configured ones.
fn wanted_names(extra_hostnames: &[String]) -> Result<BTreeSet<Name>, PkiError> {
    BUILTIN_NAMES
        .iter()
        .copied()
        .chain(extra_hostnames.iter().map(String::as_str))
        .map(Name::parse)
        .collect()
}

/// The names a certificate carries in its subject alternative names.
fn names_of(cert: &X509Certificate<'_>) -> Option<BTreeSet<Name>> {
    let san = cert.subject_alternative_name().ok()??;
    let mut names = BTreeSet::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => {
                names.insert(Name::Dns(dns.to_ascii_lowercase()));
            }
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                    _ => return None,
                };
                names.insert(Name::Ip(ip));
            }
            _ => return None,
        }
    }
    Some(names)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a file; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Writes a file atomically (a temporary beside it, then a rename), readable by the owner
/// only when it holds a key.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    #[cfg(unix)]
    {
        // The mode above applies only to a file that did not exist yet.
        use std::os::unix::fs::PermissionsExt;
        let mode = if secret { 0o600 } else { 0o644 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_error(&tmp))?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// A certificate and key that belong together, read back from files.
struct Loaded {
    cert_pem: String,
    key_pem: String,
}

/// Whether `cert_der` is good until `deadline` and `key` is its key.
fn usable_until(cert: &X509Certificate<'_>, key: &KeyPair, now: i64, deadline: i64) -> bool {
    let validity = cert.validity();
    validity.not_before.timestamp() <= now
        && validity.not_after.timestamp() > deadline
        && cert.public_key().raw == key.subject_public_key_info().as_slice()
}

impl ServerPki {
    /// Where the files live: `data_dir/tls/`.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("tls")
    }

    /// Loads the local CA and the server certificate from `data_dir/tls/`, making what is
    /// missing, unreadable, expiring within 30 days, or (for the server certificate) not
    /// carrying exactly `localhost`, `127.0.0.1`, `::1` and `extra_hostnames`, or not signed
    /// by the current CA. A renewed server certificate keeps the CA, so devices keep
    /// trusting the hub. Call it again (e.g. daily) to renew without a restart.
    pub fn load_or_create(data_dir: &Path, extra_hostnames: &[String]) -> Result<Self, PkiError> {
        Self::load_or_create_at(data_dir, extra_hostnames, Timestamp::now())
    }

    /// [`Self::load_or_create`] at a given time (for tests of renewal).
    pub fn load_or_create_at(
        data_dir: &Path,
        extra_hostnames: &[String],
        now: Timestamp,
    ) -> Result<Self, PkiError> {
        let names = wanted_names(extra_hostnames)?;
        let dir = Self::dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error(&dir))?;
        }
        let now_secs = now.as_micros().div_euclid(1_000_000);
        let deadline = now_secs + SERVER_RENEW_BEFORE_DAYS * 86_400;

        let ca = match Self::load_ca(&dir, now_secs, deadline)? {
            Some(ca) => ca,
            None => {
                let params = ca_params("iothub local CA", now, LOCAL_CA_DAYS)?;
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                let cert = params.self_signed(&key)?;
                let ca = Loaded {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                };
                write_file(&dir.join(CA_KEY_FILE), &ca.key_pem, true)?;
                write_file(&dir.join(CA_CERT_FILE), &ca.cert_pem, false)?;
                tracing::info!(message = "made a new local CA for the TLS listeners", dir = %dir.display());
                ca
            }
        };
        let ca_der = single_certificate_der(&ca.cert_pem).map_err(|e| PkiError::Stored {
            what: "local CA".into(),
            reason: e.to_string(),
        })?;
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).map_err(|e| PkiError::Stored {
            what: "local CA".into(),
            reason: e.to_string(),
        })?;

        let server = match Self::load_server(&dir, &ca_cert, &names, now_secs, deadline)? {
            Some(server) => server,
            None => {
                let server = Self::make_server(&ca, &names, now)?;
                write_file(&dir.join(SERVER_KEY_FILE), &server.key_pem, true)?;
                write_file(&dir.join(SERVER_CERT_FILE), &server.cert_pem, false)?;
                tracing::info!(message = "made a new server certificate for the TLS listeners", dir = %dir.display());
                server
            }
        };
        Ok(Self {
            cert_chain_pem: format!("{}{}", server.cert_pem, ca.cert_pem),
            ca_pem: ca.cert_pem,
            key_pem: server.key_pem,
        })
    }

    fn load_pair(dir: &Path, cert_file: &str, key_file: &str) -> Result<Option<Loaded>, PkiError> {
        let (Some(cert_pem), Some(key_pem)) = (
            read_optional(&dir.join(cert_file))?,
            read_optional(&dir.join(key_file))?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Loaded { cert_pem, key_pem }))
    }

    fn load_ca(dir: &Path, now: i64, deadline: i64) -> Result<Option<Loaded>, PkiError> {
        let Some(loaded) = Self::load_pair(dir, CA_CERT_FILE, CA_KEY_FILE)? else {
            return Ok(None);
        };
        let usable = (|| {
            let der = single_certificate_der(&loaded.cert_pem).ok()?;
            let (_, cert) = X509Certificate::from_der(&der).ok()?;
            let key = KeyPair::from_pem(&loaded.key_pem).ok()?;
            Some(cert.is_ca() && usable_until(&cert, &key, now, deadline))
        })()
        .unwrap_or(false);
        if !usable {
            tracing::warn!(message = "the local CA is missing, unreadable or expiring: making a new one; devices must trust the new CA", dir = %dir.display());
            return Ok(None);
        }
        Ok(Some(loaded))
    }

    fn load_server(
        dir: &Path,
        ca: &X509Certificate<'_>,
        names: &BTreeSet<Name>,
        now: i64,
        deadline: i64,
    ) -> Result<Option<Loaded>, PkiError> {
        let Some(loaded) = Self::load_pair(dir, SERVER_CERT_FILE, SERVER_KEY_FILE)? else {
            return Ok(None);
        };
        let usable = (|| {
            // The file holds the server certificate alone.
            let der = single_certificate_der(&loaded.cert_pem).ok()?;
            let (_, cert) = X509Certificate::from_der(&der).ok()?;
            let key = KeyPair::from_pem(&loaded.key_pem).ok()?;
            Some(
                usable_until(&cert, &key, now, deadline)
                    && names_of(&cert).as_ref() == Some(names)
                    && cert.verify_signature(Some(ca.public_key())).is_ok(),
            )
        })()
        .unwrap_or(false);
        Ok(usable.then_some(loaded))
    }

    fn make_server(
        ca: &Loaded,
        names: &BTreeSet<Name>,
        now: Timestamp,
    ) -> Result<Loaded, PkiError> {
        let ca_key = KeyPair::from_pem(&ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "iothub");
        dn.push(DnType::CommonName, "iothub server");
        params.distinguished_name = dn;
        params.subject_alt_names = names.iter().map(Name::san).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let start = datetime(now)?;
        params.not_before = start - Duration::minutes(5);
        params.not_after = start + Duration::days(SERVER_DAYS);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Loaded {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests;
