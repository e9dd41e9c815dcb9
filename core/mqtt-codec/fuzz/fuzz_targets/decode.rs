//! Fuzz target: decode whatever arrives, and every packet that decodes must encode and decode
//! again to the same packet, with `encoded_len` equal to the bytes written.
//!
//! The first input byte picks the connection state (before CONNECT, 3.1.1 or 5.0) and whether
//! a small maximum packet size applies; the rest is the byte stream, decoded packet after
//! packet as the adapter would.
#![no_main]

use bytes::BytesMut;
use iothub_mqtt_codec::{Packet, ProtocolVersion, decode, encode, encoded_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut version = match mode % 3 {
        0 => None,
        1 => Some(ProtocolVersion::V311),
        _ => Some(ProtocolVersion::V5),
    };
    let max = if mode & 0x80 != 0 {
        u32::from(mode)
    } else {
        u32::MAX
    };
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(packet)) = decode(&mut buf, version, max) {
        let negotiated = match &packet {
            Packet::Connect(connect) => connect.protocol,
            _ => version.expect("only CONNECT decodes before the version is known"),
        };
        let mut encoded = BytesMut::new();
        encode(&packet, negotiated, &mut encoded).expect("a decoded packet must encode");
        assert_eq!(encoded_len(&packet, negotiated), Ok(encoded.len()));
        let again_version = match packet {
            Packet::Connect(_) => None,
            _ => Some(negotiated),
        };
        let again = decode(&mut encoded, again_version, u32::MAX);
        assert_eq!(
            again,
            Ok(Some(packet)),
            "re-encoded packet decodes differently"
        );
        assert!(encoded.is_empty(), "re-encoded packet left bytes behind");
        version = Some(negotiated);
    }
});
