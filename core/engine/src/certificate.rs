//! What the engine knows of client certificates: a device's registered certificate (by its
//! SHA-256 fingerprint) and the proof a transport brings at CONNECT that a verified
//! certificate names a device ([`VerifiedCertificate`]).
//!
//! The engine never sees a certificate: the TLS listener verifies chains and signatures and
//! maps the certificate to a device; the engine checks, under the same locks as every other
//! admission rule, that the mapping still holds (the device is in the hub whose CA verified
//! the chain, and the certificate is the device's current one), so renewing or replacing a
//! certificate takes effect on the CONNECT that races with it too.

use std::fmt;
use std::str::FromStr;

use iothub_model::{DeviceId, HubId};

/// SHA-256 of a certificate's DER encoding: how a device's registered certificate is named.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertificateFingerprint([u8; 32]);

/// A fingerprint that is not 64 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a certificate fingerprint is 64 hexadecimal digits (SHA-256)")]
pub struct FingerprintError;

impl CertificateFingerprint {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for CertificateFingerprint {
    type Err = FingerprintError;

    /// Hexadecimal, either case (the control plane stores lowercase).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.as_bytes();
        if digits.len() != 64 {
            return Err(FingerprintError);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(FingerprintError),
        };
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for CertificateFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertificateFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateFingerprint({self})")
    }
}

/// How a verified client certificate names its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateProof {
    /// The device's registered certificate: one the hub's managed CA issued (CN = device id)
    /// or a custom certificate pinned to the device. Admitted only while it is the device's
    /// current one (`DeviceSpec::certificate_fingerprint`): a renewed or replaced
    /// certificate stops working at once.
    Registered(CertificateFingerprint),
    /// Issued by the hub's own (custom) CA for the device's name: the hub's CA is the
    /// authority, the registry keeps no certificate per device.
    HubCa,
}

/// A client certificate the transport verified (chain, validity, key usage, proof of the
/// private key) and mapped to a device, for [`crate::Credentials::certificate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifiedCertificate {
    /// The hub whose CA verified the chain (for a pinned certificate, the device's hub):
    /// the session is bound to it, and a device of another hub is refused.
    pub hub: HubId,
    pub device: DeviceId,
    pub proof: CertificateProof,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_and_print_as_hex() {
        let lower = "00ff10a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c";
        let fp: CertificateFingerprint = lower.parse().unwrap();
        assert_eq!(fp.as_bytes()[..3], [0x00, 0xff, 0x10]);
        assert_eq!(fp.to_string(), lower);
        assert_eq!(
            lower.to_uppercase().parse::<CertificateFingerprint>(),
            Ok(fp)
        );
        for bad in [
            "",
            &lower[..62],
            &format!("{lower}00"),
            &format!("{}zz", &lower[..62]),
            &format!("+{}", &lower[1..]),
        ] {
            assert_eq!(
                bad.parse::<CertificateFingerprint>(),
                Err(FingerprintError),
                "{bad:?}"
            );
        }
    }
}
