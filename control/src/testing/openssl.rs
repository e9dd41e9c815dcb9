//! Certificates made by the `openssl` command-line tool, for tests that must not trust the
//! code under test to make their fixtures: custom CAs, proof-of-possession certificates,
//! device certificates with odd validity, key usages or algorithms. A missing `openssl`
//! is an error (the test fails), never a skip.
//!
//! Everything happens in a directory the caller owns (a temporary one in tests), through
//! `openssl ca`, which alone among the 3.0 subcommands takes arbitrary start and end dates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why openssl did not produce a certificate.
#[derive(Debug, thiserror::Error)]
pub enum OpensslError {
    #[error("openssl {args}: {reason}")]
    Failed { args: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The key algorithm of a certificate made by openssl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    EcP256,
    EcP384,
    Rsa2048,
    Ed25519,
}

impl KeyType {
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            Self::EcP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Self::EcP384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Self::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Self::Ed25519 => &["-algorithm", "ED25519"],
        }
    }
}

/// A certificate and its key, as PEM text and as files (for `mosquitto_pub --cert`).
#[derive(Debug, Clone)]
pub struct OpensslCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// What to make.
#[derive(Debug, Clone, Default)]
pub struct CertRequest<'a> {
    pub common_name: &'a str,
    /// The signer; `None` for a self-signed certificate.
    pub issuer: Option<&'a OpensslCert>,
    /// Lines of an openssl extension section, e.g. `basicConstraints=critical,CA:TRUE`.
    /// None at all gives a version 1 certificate.
    pub extensions: &'a [&'a str],
    /// `YYYYMMDDHHMMSSZ`; `None`: now.
    pub not_before: Option<&'a str>,
    /// `YYYYMMDDHHMMSSZ`; `None`: `days` after now.
    pub not_after: Option<&'a str>,
    /// Validity when `not_after` is `None` (default 365).
    pub days: Option<u32>,
    pub key_type: KeyType,
}

/// Extensions of a CA.
pub const CA_EXTENSIONS: &[&str] = &[
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier=hash",
];

/// Extensions of a TLS client (device) certificate.
pub const CLIENT_EXTENSIONS: &[&str] = &[
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=clientAuth",
];

/// A directory where openssl makes certificates.
#[derive(Debug)]
pub struct Openssl {
    dir: PathBuf,
    next: AtomicUsize,
}

const CA_CONFIG: &str = "[ca]
default_ca = iothub_test
[iothub_test]
database = db/index.txt
new_certs_dir = db
serial = db/serial
default_md = sha256
policy = any_cn
unique_subject = no
copy_extensions = none
email_in_dn = no
[any_cn]
commonName = supplied
";

fn write(path: &Path, contents: &str) -> Result<(), OpensslError> {
    std::fs::write(path, contents).map_err(|source| OpensslError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, OpensslError> {
    std::fs::read_to_string(path).map_err(|source| OpensslError::Io {
        path: path.to_owned(),
        source,
    })
}

impl Openssl {
    /// Prepares `dir` (created if needed) for `openssl ca`.
    pub fn new(dir: &Path) -> Result<Self, OpensslError> {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).map_err(|source| OpensslError::Io {
            path: db.clone(),
            source,
        })?;
        write(&db.join("index.txt"), "")?;
        write(&db.join("serial"), "1000\n")?;
        write(&dir.join("ca.cnf"), CA_CONFIG)?;
        Ok(Self {
            dir: dir.to_owned(),
            next: AtomicUsize::new(0),
        })
    }

    fn run(&self, args: &[&str]) -> Result<(), OpensslError> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| OpensslError::Failed {
                args: args.join(" "),
                reason: format!("cannot run openssl (is it installed?): {e}"),
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(OpensslError::Failed {
                args: args.join(" "),
                reason: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }

    /// Makes a key and a certificate as `req` says.
    pub fn issue(&self, req: &CertRequest<'_>) -> Result<OpensslCert, OpensslError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("c{n}.key");
        let csr = format!("c{n}.csr");
        let crt = format!("c{n}.crt");
        let ext = format!("c{n}.ext");

        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(req.key_type.genpkey_args());
        genpkey.extend_from_slice(&["-out", &key]);
        self.run(&genpkey)?;
        let subject = format!("/CN={}", req.common_name);
        self.run(&["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr])?;
        let mut section = String::from("[ext]\n");
        for line in req.extensions {
            section.push_str(line);
            section.push('\n');
        }
        write(&self.dir.join(&ext), &section)?;

        let days = req.days.unwrap_or(365).to_string();
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-in",
            &csr,
            "-out",
            &crt,
            "-extfile",
            &ext,
            "-extensions",
            "ext",
        ];
        let issuer_cert;
        let issuer_key;
        match req.issuer {
            None => args.extend_from_slice(&["-selfsign", "-keyfile", &key]),
            Some(issuer) => {
                issuer_cert = issuer.cert_path.display().to_string();
                issuer_key = issuer.key_path.display().to_string();
                args.extend_from_slice(&["-cert", &issuer_cert, "-keyfile", &issuer_key]);
            }
        }
        if let Some(start) = req.not_before {
            args.extend_from_slice(&["-startdate", start]);
        }
        match req.not_after {
            Some(end) => args.extend_from_slice(&["-enddate", end]),
            None => args.extend_from_slice(&["-days", &days]),
        }
        self.run(&args)?;

        let cert_path = self.dir.join(&crt);
        let key_path = self.dir.join(&key);
        Ok(OpensslCert {
            cert_pem: read(&cert_path)?,
            key_pem: read(&key_path)?,
            cert_path,
            key_path,
        })
    }

    /// A self-signed CA (P-256) valid a year.
    pub fn ca(&self, common_name: &str) -> Result<OpensslCert, OpensslError> {
        self.issue(&CertRequest {
            common_name,
            extensions: CA_EXTENSIONS,
            ..CertRequest::default()
        })
    }

    /// A TLS client certificate signed by `issuer` (self-signed when `None`), valid a year.
    pub fn client(
        &self,
        common_name: &str,
        issuer: Option<&OpensslCert>,
    ) -> Result<OpensslCert, OpensslError> {
        self.issue(&CertRequest {
            common_name,
            issuer,
            extensions: CLIENT_EXTENSIONS,
            ..CertRequest::default()
        })
    }

    /// A certificate with no extensions at all, signed by `issuer`: what a bare proof of
    /// possession usually is.
    pub fn plain(
        &self,
        common_name: &str,
        issuer: Option<&OpensslCert>,
    ) -> Result<OpensslCert, OpensslError> {
        self.issue(&CertRequest {
            common_name,
            issuer,
            ..CertRequest::default()
        })
    }
}
