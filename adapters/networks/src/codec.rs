//! Hex, base64 and the LoRaWAN identifiers (EUI-64, DevAddr, AES-128 keys) as validated
//! newtypes. EUIs and DevAddrs are written MSB first (as network servers show them) and
//! displayed in lowercase hex.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// Why a text is not the expected encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("not hexadecimal: {0}")]
    Hex(String),
    #[error("not base64: {0}")]
    Base64(String),
    #[error("{what} must be {want} hex digits, got {got}")]
    Length {
        what: &'static str,
        want: usize,
        got: usize,
    },
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Hex digits (either case, even count) to bytes.
pub fn hex_decode(s: &str) -> Result<Vec<u8>, EncodingError> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(EncodingError::Hex(format!(
            "{} digits, an odd count",
            b.len()
        )));
    }
    b.chunks(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(EncodingError::Hex(format!(
                "{:?} is not a hex digit pair",
                String::from_utf8_lossy(pair)
            ))),
        })
        .collect()
}

pub fn base64_decode(s: &str) -> Result<Vec<u8>, EncodingError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| EncodingError::Base64(e.to_string()))
}

pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fixed<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], EncodingError> {
    let bytes = hex_decode(s)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| EncodingError::Length {
        what,
        want: N * 2,
        got: s.len(),
    })
}

/// A 64-bit extended unique identifier (DevEUI, JoinEUI), MSB first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eui64([u8; 8]);

impl Eui64 {
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }
    /// From the little-endian order of the air interface.
    pub fn from_air(le: &[u8]) -> Option<Self> {
        let mut b = <[u8; 8]>::try_from(le).ok()?;
        b.reverse();
        Some(Self(b))
    }
    pub const fn bytes(&self) -> [u8; 8] {
        self.0
    }
}

impl FromStr for Eui64 {
    type Err = EncodingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fixed::<8>(s, "an EUI-64").map(Self)
    }
}

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_lower(&self.0))
    }
}

/// A LoRaWAN device address (32 bits), MSB first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevAddr(u32);

impl DevAddr {
    pub const fn new(value: u32) -> Self {
        Self(value)
    }
    /// From the little-endian order of the air interface.
    pub fn from_air(le: &[u8]) -> Option<Self> {
        let b = <[u8; 4]>::try_from(le).ok()?;
        Some(Self(u32::from_le_bytes(b)))
    }
    pub const fn value(&self) -> u32 {
        self.0
    }
}

impl FromStr for DevAddr {
    type Err = EncodingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fixed::<4>(s, "a DevAddr").map(|b| Self(u32::from_be_bytes(b)))
    }
}

impl fmt::Display for DevAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_lower(&self.0.to_be_bytes()))
    }
}

/// An AES-128 key (AppKey, NwkSKey, AppSKey), MSB first as network servers show it. Its
/// `Debug` does not show the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key128([u8; 16]);

impl Key128 {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    pub const fn bytes(&self) -> [u8; 16] {
        self.0
    }
    pub(crate) fn aes(&self) -> lorawan::keys::AES128 {
        lorawan::keys::AES128(self.0)
    }
}

impl fmt::Debug for Key128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key128(..)")
    }
}

impl FromStr for Key128 {
    type Err = EncodingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fixed::<16>(s, "an AES-128 key").map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses() {
        assert_eq!(hex_decode("0aFf").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(hex_lower(&[0x0a, 0xff]), "0aff");
        assert!(matches!(hex_decode("abc"), Err(EncodingError::Hex(_))));
        assert!(matches!(hex_decode("zz"), Err(EncodingError::Hex(_))));
    }

    #[test]
    fn identifiers_parse_msb_first() {
        let eui: Eui64 = "A1B2C3D4E5F60718".parse().unwrap();
        assert_eq!(eui.to_string(), "a1b2c3d4e5f60718");
        let air = [0x18, 0x07, 0xf6, 0xe5, 0xd4, 0xc3, 0xb2, 0xa1];
        assert_eq!(Eui64::from_air(&air), Some(eui));
        let addr: DevAddr = "260B1F2A".parse().unwrap();
        assert_eq!(DevAddr::from_air(&[0x2a, 0x1f, 0x0b, 0x26]), Some(addr));
        assert_eq!(addr.to_string(), "260b1f2a");
        assert!(matches!(
            "0102".parse::<Key128>(),
            Err(EncodingError::Length { want: 32, .. })
        ));
        assert_eq!(format!("{:?}", Key128::from_bytes([7; 16])), "Key128(..)");
    }

    #[test]
    fn base64_refuses_garbage() {
        assert_eq!(base64_decode("AWcA4Q==").unwrap(), vec![1, 0x67, 0, 0xe1]);
        assert!(base64_decode("not base64!").is_err());
    }
}
