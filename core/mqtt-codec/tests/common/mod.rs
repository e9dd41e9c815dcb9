//! Helpers shared by the integration tests: hex fixtures and one-call decode/encode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use bytes::BytesMut;
use iothub_mqtt_codec::{DecodeError, Packet, ProtocolVersion, decode, encode};

/// Bytes from hex text; spaces, newlines and `_` are ignored so fixtures can be grouped by field.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits in {text:?}");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Decodes exactly one packet that must fill `bytes` completely.
pub fn decode_one(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, u32::MAX)?;
    let packet = packet.unwrap_or_else(|| panic!("incomplete: {bytes:02x?}"));
    assert!(buf.is_empty(), "{} bytes left after {packet:?}", buf.len());
    Ok(packet)
}

pub fn encode_one(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap_or_else(|e| panic!("encode {packet:?}: {e}"));
    buf.to_vec()
}
