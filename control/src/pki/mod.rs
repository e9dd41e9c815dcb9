//! Certificates: the per-hub certificate authorities, device certificates, the checks on
//! certificates users upload (custom device certificates, custom hub CAs with their proof
//! of possession) and the server certificate of the TLS listeners. Pure functions over PEM
//! text (plus the files of [`ServerPki`]): no database, no network.
//!
//! - [`generate_hub_ca`] makes a hub's own CA (ECDSA P-256, `CA:TRUE`, 20 years) at hub
//!   creation, and [`issue_device_certificate`] a device's key and certificate signed by it
//!   (CN = device id, `clientAuth`, 10 years). The device key is handed out once and never
//!   kept.
//! - [`check_device_certificate`] and [`check_custom_ca`] judge uploaded certificates and
//!   say precisely why one is refused ([`CertificateError`]).
//! - [`CertificateInfo`] and [`fingerprint_sha256`] read what the TLS listener needs to
//!   identify a device: a device is pinned to its current certificate by the SHA-256 of
//!   the certificate's DER, so a renewed or replaced certificate stops working at once.
//! - [`ServerPki`] keeps a local CA and the server certificate under `data_dir/tls/`.
//!
//! Keys at rest: a managed hub CA's private key is stored **in plain text** in the
//! registry's database (`hub_cas.key_pem`), as are the local server CA's and server's keys
//! in `data_dir/tls/` (files mode 0600). Whoever reads the database can issue device
//! certificates for every hub; protect it accordingly. A custom CA's key is never sent to
//! the hub, which therefore issues no certificates for such hubs.
//!
//! Crypto is ring's (through rcgen and x509-parser): aws-lc-rs must never be compiled in
//! (rustls would then refuse to choose a provider at run time).

mod inspect;
mod issue;
mod server;

use std::fmt::Write as _;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub use inspect::{
    CertificateError, CertificateInfo, CheckedCertificate, CheckedCustomCa, CustomCaError,
    check_custom_ca, check_device_certificate, single_certificate_der,
};
pub use issue::{
    DeviceCredentials, GeneratedCa, IssuedDeviceCertificate, generate_hub_ca,
    issue_device_certificate,
};
pub use server::{SERVER_RENEW_BEFORE_DAYS, ServerPki};

/// Why the hub could not make or keep a certificate (its own fault or its environment's,
/// never the user's: those are [`CertificateError`]s).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A stored CA (database row or file) no longer parses or cannot sign.
    #[error("the stored {what} is unusable: {reason}")]
    Stored { what: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name:?} cannot be a name of the server certificate: {reason}")]
    Hostname { name: String, reason: String },
    #[error("no randomness available from the operating system: {0}")]
    Entropy(String),
}

/// Lowercase hex SHA-256 of a certificate's DER: how a device is pinned to its current
/// certificate. The TLS listener must compute it with this function on the DER the client
/// presented, so both sides agree byte for byte.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(64);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A random positive serial number of 16 bytes (RFC 5280 allows up to 20; the top bit is
/// cleared so the DER integer stays positive without a padding byte).
fn random_serial() -> Result<rcgen::SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Entropy(e.to_string()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte either
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_hex() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (der, want) in cases {
            assert_eq!(fingerprint_sha256(der), *want);
        }
    }

    #[test]
    fn serials_are_positive_and_fresh() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
