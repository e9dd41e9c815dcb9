//! Certificates the hub makes: a hub's CA and the device certificates it signs (rcgen,
//! ECDSA P-256 with SHA-256 throughout: small, fast, and accepted by every TLS stack a
//! device is likely to run).

use std::fmt;

use iothub_model::{DeviceId, HubId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use super::{PkiError, fingerprint_sha256, random_serial};
use crate::time::Timestamp;

/// A hub CA is valid for 20 years: it outlives every device certificate it signs.
pub(crate) const HUB_CA_DAYS: i64 = 20 * 365 + 5;
/// A device certificate is valid for 10 years (devices in the field are rarely reflashed).
pub(crate) const DEVICE_DAYS: i64 = 10 * 365 + 2;
/// Certificates start a few minutes in the past, so one checked the instant it is issued
/// by a clock slightly behind ours still verifies.
const BACKDATE_MINUTES: i64 = 5;

/// A time as rcgen wants it.
pub(crate) fn datetime(t: Timestamp) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t.as_micros().div_euclid(1_000_000)).map_err(|e| {
        PkiError::Stored {
            what: "clock".into(),
            reason: e.to_string(),
        }
    })
}

/// A time read back from a certificate.
pub(crate) fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_micros(t.unix_timestamp().saturating_mul(1_000_000))
}

fn validity(
    params: &mut CertificateParams,
    now: Timestamp,
    days: i64,
) -> Result<Timestamp, PkiError> {
    let now = datetime(now)?;
    params.not_before = now - Duration::minutes(BACKDATE_MINUTES);
    params.not_after = now + Duration::days(days);
    Ok(timestamp(params.not_after))
}

/// A newly made CA: its certificate and private key, both PEM (the key PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for GeneratedCa {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedCa")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// The parameters of a CA certificate named `common_name`, good for `days`.
pub(crate) fn ca_params(
    common_name: &str,
    now: Timestamp,
    days: i64,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "iothub");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Path length 0: a hub CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    validity(&mut params, now, days)?;
    Ok(params)
}

/// Makes the CA of a hub: CN `iothub hub <hub-id>`, ECDSA P-256, `CA:TRUE` (path length
/// 0), `keyCertSign`, valid 20 years from `now`.
pub fn generate_hub_ca(hub: HubId, now: Timestamp) -> Result<GeneratedCa, PkiError> {
    let params = ca_params(&format!("iothub hub {hub}"), now, HUB_CA_DAYS)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(GeneratedCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a device is handed at creation or renewal: its certificate and private key, PEM.
/// The hub keeps the certificate and forgets the key.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    pub crt: String,
    pub key: String,
}

impl fmt::Debug for DeviceCredentials {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("crt", &self.crt)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A device certificate just issued, with what the registry stores about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedDeviceCertificate {
    pub credentials: DeviceCredentials,
    pub fingerprint_sha256: String,
    pub not_after: Timestamp,
}

/// Signs a new key for `device` with a hub's CA: CN = device id, `CA:FALSE`,
/// `digitalSignature`, extended key usage `clientAuth`, valid 10 years from `now`. No
/// subject alternative names: the device is identified by the CN and the pinned
/// fingerprint, never by a host name.
pub fn issue_device_certificate(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    device: DeviceId,
    now: Timestamp,
) -> Result<IssuedDeviceCertificate, PkiError> {
    let stored = |reason: String| PkiError::Stored {
        what: "hub CA".into(),
        reason,
    };
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| stored(e.to_string()))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| stored(e.to_string()))?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device.to_string());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let not_after = validity(&mut params, now, DEVICE_DAYS)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedDeviceCertificate {
        fingerprint_sha256: fingerprint_sha256(cert.der()),
        not_after,
        credentials: DeviceCredentials {
            crt: cert.pem(),
            key: key.serialize_pem(),
        },
    })
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::pki::single_certificate_der;

    const SECONDS_PER_DAY: i64 = 86_400;

    fn parse(pem: &str) -> Vec<u8> {
        single_certificate_der(pem).unwrap()
    }

    #[test]
    fn a_hub_ca_is_a_p256_ca_for_twenty_years() {
        let hub = HubId::new_random();
        let now = Timestamp::now();
        let ca = generate_hub_ca(hub, now).unwrap();
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(
            !format!("{ca:?}").contains("PRIVATE KEY"),
            "Debug shows the key"
        );
        let der = parse(&ca.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            format!("iothub hub {hub}")
        );
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        // P-256 public key, self-signed.
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        cert.verify_signature(None).unwrap();
        let days = (cert.validity().not_after.timestamp() - now.as_micros() / 1_000_000) / 86_400;
        assert_eq!(days, HUB_CA_DAYS);
    }

    #[test]
    fn a_device_certificate_chains_to_its_hub_ca_and_only_to_it() {
        let now = Timestamp::now();
        let hub_ca = generate_hub_ca(HubId::new_random(), now).unwrap();
        let other_ca = generate_hub_ca(HubId::new_random(), now).unwrap();
        let device = DeviceId::new_random();
        let issued =
            issue_device_certificate(&hub_ca.cert_pem, &hub_ca.key_pem, device, now).unwrap();
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));

        let ca_der = parse(&hub_ca.cert_pem);
        let other_der = parse(&other_ca.cert_pem);
        let leaf_der = parse(&issued.credentials.crt);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let (_, other) = X509Certificate::from_der(&other_der).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();

        leaf.verify_signature(Some(ca.public_key())).unwrap();
        assert!(leaf.verify_signature(Some(other.public_key())).is_err());
        assert!(leaf.verify_signature(None).is_err(), "not self-signed");
        assert_eq!(leaf.issuer(), ca.subject());

        let cn = leaf.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), device.to_string());
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(leaf.key_usage().unwrap().unwrap().value.digital_signature());
        assert!(leaf.subject_alternative_name().unwrap().is_none());

        assert_eq!(issued.fingerprint_sha256, fingerprint_sha256(&leaf_der));
        assert_eq!(
            issued.not_after.as_micros(),
            leaf.validity().not_after.timestamp() * 1_000_000
        );
        let days = (issued.not_after.as_micros() / 1_000_000 - now.as_micros() / 1_000_000)
            / SECONDS_PER_DAY;
        assert_eq!(days, DEVICE_DAYS);
        assert!(leaf.validity().not_before.timestamp() < now.as_micros() / 1_000_000);

        // The key handed out is the certificate's.
        let key = KeyPair::from_pem(&issued.credentials.key).unwrap();
        assert_eq!(
            key.public_key_raw(),
            leaf.public_key().subject_public_key.data.as_ref()
        );
    }

    #[test]
    fn two_issues_give_two_keys_and_two_fingerprints() {
        let now = Timestamp::now();
        let ca = generate_hub_ca(HubId::new_random(), now).unwrap();
        let device = DeviceId::new_random();
        let a = issue_device_certificate(&ca.cert_pem, &ca.key_pem, device, now).unwrap();
        let b = issue_device_certificate(&ca.cert_pem, &ca.key_pem, device, now).unwrap();
        assert_ne!(a.fingerprint_sha256, b.fingerprint_sha256);
        assert_ne!(a.credentials.key, b.credentials.key);
    }

    #[test]
    fn a_broken_stored_ca_is_an_error_not_a_panic() {
        let now = Timestamp::now();
        let ca = generate_hub_ca(HubId::new_random(), now).unwrap();
        let device = DeviceId::new_random();
        let cases: &[(&str, &str)] = &[
            (&ca.cert_pem, "garbage"),
            ("garbage", &ca.key_pem),
            ("", ""),
        ];
        for (cert, key) in cases {
            assert!(
                matches!(
                    issue_device_certificate(cert, key, device, now),
                    Err(PkiError::Stored { .. })
                ),
                "{cert:.20} / {key:.20}"
            );
        }
    }
}
