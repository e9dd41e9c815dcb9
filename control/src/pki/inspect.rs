//! Reading and judging certificates users send (x509-parser): a device's own certificate,
//! a custom hub CA and its proof of possession. Every refusal says exactly what is wrong,
//! because the user has to fix the certificate, not guess.

use iothub_model::HubId;
use x509_parser::error::X509Error;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::fingerprint_sha256;
use crate::time::Timestamp;

/// Why an uploaded certificate is refused. The texts complete a sentence whose subject is
/// the field (`certificate_pem expired on …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("holds no PEM certificate (a block starting -----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("holds a private key: send only the certificate, never a key")]
    PrivateKey,
    #[error("holds a PEM block labelled {0:?}; only CERTIFICATE blocks are accepted")]
    UnexpectedBlock(String),
    #[error("holds {0} certificates; send exactly one")]
    Several(usize),
    #[error("is not valid PEM: {0}")]
    BadPem(String),
    #[error("is not a valid X.509 certificate: {0}")]
    Unparsable(String),
    #[error("expired on {0}")]
    Expired(Timestamp),
    #[error("is not valid yet: its validity starts on {0}")]
    NotYetValid(Timestamp),
    #[error(
        "is a CA certificate (basicConstraints CA:TRUE); a device presents its own leaf certificate"
    )]
    IsCa,
    #[error("is not a CA certificate: it lacks basicConstraints CA:TRUE")]
    NotCa,
    #[error("has an extended key usage without clientAuth, so it cannot authenticate a TLS client")]
    NoClientAuth,
    #[error("has a key usage without digitalSignature, which TLS client authentication needs")]
    NoDigitalSignature,
    #[error("has a key usage without keyCertSign, so it cannot sign certificates")]
    NoKeyCertSign,
    #[error("{}", wrong_common_name(expected, found.as_deref()))]
    WrongCommonName {
        expected: String,
        found: Option<String>,
    },
    #[error("is not signed by the CA of ca_cert_pem: {0}")]
    WrongSigner(String),
    #[error("has an extension that cannot be read: {0}")]
    BadExtension(String),
}

fn wrong_common_name(expected: &str, found: Option<&str>) -> String {
    match found {
        None => format!("has no common name (CN); it must be {expected}"),
        Some(found) => {
            let found: String = found.chars().take(128).collect();
            format!("has the common name {found:?}; it must be {expected}")
        }
    }
}

/// The single certificate of a PEM text, as DER. Text around the block is ignored (tools
/// print the certificate's fields before it); a private key, another kind of block, no
/// certificate or several are refused.
pub fn single_certificate_der(pem: &str) -> Result<Vec<u8>, CertificateError> {
    let mut certificates = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertificateError::BadPem(e.to_string()))?;
        if block.label.contains("PRIVATE KEY") {
            return Err(CertificateError::PrivateKey);
        }
        if block.label != "CERTIFICATE" {
            return Err(CertificateError::UnexpectedBlock(
                block.label.chars().take(64).collect(),
            ));
        }
        certificates.push(block.contents);
    }
    match certificates.len() {
        0 => Err(CertificateError::NoCertificate),
        1 => Ok(certificates.swap_remove(0)),
        n => Err(CertificateError::Several(n)),
    }
}

/// DER back to PEM (64-column base64), the one form the registry stores.
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let sextet = |shift: u32| ALPHABET[((n >> shift) & 0x3f) as usize];
        b64.push(sextet(18));
        b64.push(sextet(12));
        b64.push(if chunk.len() > 1 { sextet(6) } else { b'=' });
        b64.push(if chunk.len() > 2 { sextet(0) } else { b'=' });
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.chunks(64) {
        // The alphabet is ASCII.
        pem.extend(line.iter().map(|&b| char::from(b)));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What the hub reads from a certificate: enough to identify a device and to judge an
/// upload. The TLS listener uses it on the DER a client presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Lowercase hex SHA-256 of the DER ([`super::fingerprint_sha256`]).
    pub fingerprint_sha256: String,
    /// The subject's first common name, when it has one that is a string.
    pub common_name: Option<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// No extended key usage, or one with clientAuth (or anyExtendedKeyUsage).
    pub allows_client_auth: bool,
    /// No key usage, or one with digitalSignature.
    pub allows_digital_signature: bool,
    /// No key usage, or one with keyCertSign.
    pub allows_cert_sign: bool,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertificateError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertificateError::Unparsable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateError::Unparsable(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

fn secs(t: i64) -> Timestamp {
    Timestamp::from_micros(t.saturating_mul(1_000_000))
}

fn bad_extension(e: X509Error) -> CertificateError {
    CertificateError::BadExtension(e.to_string())
}

impl CertificateInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        let cert = parse(der)?;
        Self::of(&cert, der)
    }

    fn of(cert: &X509Certificate<'_>, der: &[u8]) -> Result<Self, CertificateError> {
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let is_ca = cert
            .basic_constraints()
            .map_err(bad_extension)?
            .is_some_and(|bc| bc.value.ca);
        let allows_client_auth = cert
            .extended_key_usage()
            .map_err(bad_extension)?
            .is_none_or(|eku| eku.value.client_auth || eku.value.any);
        let key_usage = cert.key_usage().map_err(bad_extension)?;
        let allows_digital_signature = key_usage
            .as_ref()
            .is_none_or(|ku| ku.value.digital_signature());
        let allows_cert_sign = key_usage.is_none_or(|ku| ku.value.key_cert_sign());
        Ok(Self {
            fingerprint_sha256: fingerprint_sha256(der),
            common_name,
            not_before: secs(cert.validity().not_before.timestamp()),
            not_after: secs(cert.validity().not_after.timestamp()),
            is_ca,
            allows_client_auth,
            allows_digital_signature,
            allows_cert_sign,
        })
    }

    /// Refuses a certificate outside its validity at `now`.
    pub fn check_validity(&self, now: Timestamp) -> Result<(), CertificateError> {
        if now < self.not_before {
            return Err(CertificateError::NotYetValid(self.not_before));
        }
        if now > self.not_after {
            return Err(CertificateError::Expired(self.not_after));
        }
        Ok(())
    }
}

/// An accepted device certificate: the PEM to store (normalised: one block, nothing
/// around it) and what was read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCertificate {
    pub cert_pem: String,
    pub info: CertificateInfo,
}

/// Judges a certificate a user sets on a device (`PUT /devices/{id}/certificate`): any
/// issuer (self-signed or the user's CA), but exactly one certificate, valid at `now`, not
/// a CA, and usable for TLS client authentication.
pub fn check_device_certificate(
    pem: &str,
    now: Timestamp,
) -> Result<CheckedCertificate, CertificateError> {
    let der = single_certificate_der(pem)?;
    let info = CertificateInfo::from_der(&der)?;
    info.check_validity(now)?;
    if info.is_ca {
        return Err(CertificateError::IsCa);
    }
    if !info.allows_client_auth {
        return Err(CertificateError::NoClientAuth);
    }
    if !info.allows_digital_signature {
        return Err(CertificateError::NoDigitalSignature);
    }
    Ok(CheckedCertificate {
        cert_pem: der_to_pem(&der),
        info,
    })
}

/// A refused custom CA upload: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {error}")]
pub struct CustomCaError {
    /// `ca_cert_pem` or `challenge_cert_pem`.
    pub field: &'static str,
    pub error: CertificateError,
}

/// An accepted custom CA: the PEM to store and what was read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCustomCa {
    pub cert_pem: String,
    pub info: CertificateInfo,
}

const CA_FIELD: &str = "ca_cert_pem";
const CHALLENGE_FIELD: &str = "challenge_cert_pem";

/// Judges a custom CA for `hub` (`POST /hubs/{id}/ca`). The CA must be a currently valid
/// CA certificate allowed to sign certificates; the challenge (proof of possession) must
/// have CN = the hub id, verify with the CA's public key (so whoever uploads holds the
/// CA's private key: CA certificates are public, and anyone could otherwise install
/// someone else's CA), and be valid at `now`.
pub fn check_custom_ca(
    ca_pem: &str,
    challenge_pem: &str,
    hub: HubId,
    now: Timestamp,
) -> Result<CheckedCustomCa, CustomCaError> {
    let ca_error = |error| CustomCaError {
        field: CA_FIELD,
        error,
    };
    let challenge_error = |error| CustomCaError {
        field: CHALLENGE_FIELD,
        error,
    };

    let ca_der = single_certificate_der(ca_pem).map_err(ca_error)?;
    let ca = parse(&ca_der).map_err(ca_error)?;
    let ca_info = CertificateInfo::of(&ca, &ca_der).map_err(ca_error)?;
    if !ca_info.is_ca {
        return Err(ca_error(CertificateError::NotCa));
    }
    if !ca_info.allows_cert_sign {
        return Err(ca_error(CertificateError::NoKeyCertSign));
    }
    ca_info.check_validity(now).map_err(ca_error)?;

    let challenge_der = single_certificate_der(challenge_pem).map_err(challenge_error)?;
    let challenge = parse(&challenge_der).map_err(challenge_error)?;
    let challenge_info =
        CertificateInfo::of(&challenge, &challenge_der).map_err(challenge_error)?;
    let names_hub = challenge_info
        .common_name
        .as_deref()
        .and_then(|cn| cn.trim().parse::<HubId>().ok())
        == Some(hub);
    if !names_hub {
        return Err(challenge_error(CertificateError::WrongCommonName {
            expected: hub.to_string(),
            found: challenge_info.common_name,
        }));
    }
    challenge
        .verify_signature(Some(ca.public_key()))
        .map_err(|e| {
            let reason = match e {
                X509Error::SignatureVerificationError => {
                    "its signature does not verify with the CA's public key".to_owned()
                }
                X509Error::SignatureUnsupportedAlgorithm => {
                    "its signature algorithm is not supported (use ECDSA, Ed25519 or RSA with SHA-256/384/512)"
                        .to_owned()
                }
                other => other.to_string(),
            };
            challenge_error(CertificateError::WrongSigner(reason))
        })?;
    challenge_info
        .check_validity(now)
        .map_err(challenge_error)?;

    Ok(CheckedCustomCa {
        cert_pem: der_to_pem(&ca_der),
        info: ca_info,
    })
}

#[cfg(test)]
mod tests;
