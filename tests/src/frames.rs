//! MQTT frames written and read by hand, byte by byte, from the OASIS specs.
//!
//! This deliberately does not use `iothub-mqtt-codec`: if the project's codec misreads a field,
//! a test that shared it with the hub would agree with the bug. Only what the tests need is
//! here: builders for the packets a client sends, and small decoders for what a server sends.

/// Control packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// Appends a Variable Byte Integer (MQTT 5 §1.5.5, 3.1.1 §2.2.3).
pub fn put_vbi(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Reads a Variable Byte Integer; returns the value and the number of bytes it used.
pub fn get_vbi(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value += u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Appends a two-byte big-endian length followed by the bytes.
pub fn put_bin(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends an MQTT UTF-8 string (length-prefixed; the bytes are not checked, so tests can send
/// invalid UTF-8 on purpose through [`put_bin`]).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

/// A whole frame: first byte, remaining length, body.
pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    put_vbi(&mut out, u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(body);
    out
}

/// One MQTT 5 property value (§2.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Byte(u8),
    U16(u16),
    U32(u32),
    Vbi(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// MQTT 5 property identifiers used by the tests.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1A;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDS_AVAILABLE: u8 = 0x29;
    pub const SHARED_AVAILABLE: u8 = 0x2A;
}

/// The wire type of a property identifier, from the table in MQTT 5 §2.2.2.2.
fn prop_type(id: u8) -> Option<u8> {
    // 0 byte, 1 two-byte, 2 four-byte, 3 vbi, 4 string, 5 binary, 6 string pair
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 0,
        0x13 | 0x21 | 0x22 | 0x23 => 1,
        0x02 | 0x11 | 0x18 | 0x27 => 2,
        0x0B => 3,
        0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => 4,
        0x09 | 0x16 => 5,
        0x26 => 6,
        _ => return None,
    })
}

/// Encodes a property list *with* its leading Property Length.
pub fn props(list: &[(u8, PropValue)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, value) in list {
        put_vbi(&mut body, u32::from(*id));
        match value {
            PropValue::Byte(b) => body.push(*b),
            PropValue::U16(v) => body.extend_from_slice(&v.to_be_bytes()),
            PropValue::U32(v) => body.extend_from_slice(&v.to_be_bytes()),
            PropValue::Vbi(v) => put_vbi(&mut body, *v),
            PropValue::Str(s) => put_str(&mut body, s),
            PropValue::Bin(b) => put_bin(&mut body, b),
            PropValue::Pair(k, v) => {
                put_str(&mut body, k);
                put_str(&mut body, v);
            }
        }
    }
    let mut out = Vec::new();
    put_vbi(&mut out, u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&body);
    out
}

/// Decodes a property list that starts with its Property Length; returns the properties and
/// the number of bytes consumed, or `None` if the bytes are not a valid property list.
pub fn parse_props(bytes: &[u8]) -> Option<(Vec<(u8, PropValue)>, usize)> {
    let (len, n) = get_vbi(bytes)?;
    let end = n + usize::try_from(len).ok()?;
    let mut rest = bytes.get(n..end)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (id, idn) = get_vbi(rest)?;
        let id = u8::try_from(id).ok()?;
        rest = &rest[idn..];
        let value = match prop_type(id)? {
            0 => {
                let b = *rest.first()?;
                rest = &rest[1..];
                PropValue::Byte(b)
            }
            1 => {
                let v = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
                rest = &rest[2..];
                PropValue::U16(v)
            }
            2 => {
                let v = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                rest = &rest[4..];
                PropValue::U32(v)
            }
            3 => {
                let (v, vn) = get_vbi(rest)?;
                rest = &rest[vn..];
                PropValue::Vbi(v)
            }
            4 => {
                let (s, sn) = get_str(rest)?;
                rest = &rest[sn..];
                PropValue::Str(s)
            }
            5 => {
                let (b, bn) = get_bin(rest)?;
                rest = &rest[bn..];
                PropValue::Bin(b.to_vec())
            }
            _ => {
                let (k, kn) = get_str(rest)?;
                rest = &rest[kn..];
                let (v, vn) = get_str(rest)?;
                rest = &rest[vn..];
                PropValue::Pair(k, v)
            }
        };
        out.push((id, value));
    }
    Some((out, end))
}

fn get_bin(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    Some((bytes.get(2..2 + len)?, 2 + len))
}

fn get_str(bytes: &[u8]) -> Option<(String, usize)> {
    let (b, n) = get_bin(bytes)?;
    Some((String::from_utf8(b.to_vec()).ok()?, n))
}

/// Finds the first property with this id.
pub fn find_prop(list: &[(u8, PropValue)], id: u8) -> Option<&PropValue> {
    list.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
}

/// A will message in a hand-built CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 only: the will properties (without length); ignored for 3.1.1.
    pub props: Vec<(u8, PropValue)>,
}

/// A CONNECT packet, built field by field so tests can also set what a good client never would.
#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: String,
    /// 3 (MQIsdp), 4 (3.1.1) or 5.
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// MQTT 5 CONNECT properties (ignored below level 5).
    pub props: Vec<(u8, PropValue)>,
    /// Extra bits OR-ed into the Connect Flags byte (bit 0 is the reserved one).
    pub extra_flags: u8,
}

impl Connect {
    /// An MQTT 3.1.1 CONNECT with a 60 s keep-alive.
    pub fn v4(client_id: &str, clean: bool) -> Self {
        Connect {
            protocol_name: "MQTT".into(),
            level: 4,
            client_id: client_id.into(),
            clean,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            props: Vec::new(),
            extra_flags: 0,
        }
    }

    /// An MQTT 5 CONNECT with a 60 s keep-alive and no properties.
    pub fn v5(client_id: &str, clean: bool) -> Self {
        Connect {
            level: 5,
            ..Connect::v4(client_id, clean)
        }
    }

    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }

    pub fn prop(mut self, id: u8, value: PropValue) -> Self {
        self.props.push((id, value));
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, &self.protocol_name);
        body.push(self.level);
        let mut flags = self.extra_flags;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.level >= 5 {
            body.extend_from_slice(&props(&self.props));
        }
        put_str(&mut body, &self.client_id);
        if let Some(w) = &self.will {
            if self.level >= 5 {
                body.extend_from_slice(&props(&w.props));
            }
            put_str(&mut body, &w.topic);
            put_bin(&mut body, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut body, u);
        }
        if let Some(p) = &self.password {
            put_bin(&mut body, p);
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH packet. `props` is `None` for MQTT 3.1.1 and `Some` (possibly empty) for MQTT 5.
#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    pub props: Option<Vec<(u8, PropValue)>>,
    pub payload: Vec<u8>,
}

impl Publish {
    /// A QoS 0 MQTT 3.1.1 publish.
    pub fn v4(topic: &str, payload: &[u8]) -> Self {
        Publish {
            topic: topic.as_bytes().to_vec(),
            qos: 0,
            retain: false,
            dup: false,
            packet_id: 0,
            props: None,
            payload: payload.to_vec(),
        }
    }

    /// A QoS 0 MQTT 5 publish with no properties.
    pub fn v5(topic: &str, payload: &[u8]) -> Self {
        Publish {
            props: Some(Vec::new()),
            ..Publish::v4(topic, payload)
        }
    }

    pub fn qos(mut self, qos: u8, packet_id: u16) -> Self {
        self.qos = qos;
        self.packet_id = packet_id;
        self
    }

    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    pub fn prop(mut self, id: u8, value: PropValue) -> Self {
        self.props.get_or_insert_with(Vec::new).push((id, value));
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_bin(&mut body, &self.topic);
        if self.qos > 0 {
            body.extend_from_slice(&self.packet_id.to_be_bytes());
        }
        if let Some(p) = &self.props {
            body.extend_from_slice(&props(p));
        }
        body.extend_from_slice(&self.payload);
        let mut first = 0x30 | (self.qos << 1);
        if self.retain {
            first |= 0x01;
        }
        if self.dup {
            first |= 0x08;
        }
        frame(first, &body)
    }
}

/// SUBSCRIBE with (filter, subscription options byte) pairs. `props` is `None` for 3.1.1.
pub fn subscribe(
    packet_id: u16,
    filters: &[(&str, u8)],
    props_v5: Option<&[(u8, PropValue)]>,
) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if let Some(p) = props_v5 {
        body.extend_from_slice(&props(p));
    }
    for (filter, options) in filters {
        put_str(&mut body, filter);
        body.push(*options);
    }
    frame(0x82, &body)
}

/// UNSUBSCRIBE. `v5` adds an empty property list.
pub fn unsubscribe(packet_id: u16, filters: &[&str], v5: bool) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for filter in filters {
        put_str(&mut body, filter);
    }
    frame(0xA2, &body)
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP with just a packet id (valid in both versions).
pub fn ack(kind_nibble: u8, packet_id: u16) -> Vec<u8> {
    let first = (kind_nibble << 4) | if kind_nibble == kind::PUBREL { 0x02 } else { 0 };
    frame(first, &packet_id.to_be_bytes())
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT: 3.1.1 form when `reason` is `None`, MQTT 5 with a reason code otherwise.
pub fn disconnect(reason: Option<u8>) -> Vec<u8> {
    match reason {
        None => vec![0xE0, 0x00],
        Some(code) => vec![0xE0, 0x02, code, 0x00],
    }
}

/// A received CONNACK.
#[derive(Debug, Clone)]
pub struct Connack {
    pub flags: u8,
    pub code: u8,
    pub props: Vec<(u8, PropValue)>,
}

impl Connack {
    pub fn session_present(&self) -> bool {
        self.flags & 0x01 == 1
    }

    pub fn prop(&self, id: u8) -> Option<&PropValue> {
        find_prop(&self.props, id)
    }
}

/// Decodes a CONNACK body (`v5` selects whether properties follow).
pub fn parse_connack(body: &[u8], v5: bool) -> Option<Connack> {
    let flags = *body.first()?;
    let code = *body.get(1)?;
    let props = if v5 && body.len() > 2 {
        parse_props(&body[2..])?.0
    } else {
        Vec::new()
    };
    Some(Connack { flags, code, props })
}

/// A received PUBLISH.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    pub props: Vec<(u8, PropValue)>,
    pub payload: Vec<u8>,
}

impl Received {
    pub fn prop(&self, id: u8) -> Option<&PropValue> {
        find_prop(&self.props, id)
    }

    /// All values of a repeatable property, in order.
    pub fn props_of(&self, id: u8) -> Vec<&PropValue> {
        self.props
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .collect()
    }
}

/// Decodes a PUBLISH from its first byte and body.
pub fn parse_publish(first_byte: u8, body: &[u8], v5: bool) -> Option<Received> {
    let qos = (first_byte >> 1) & 0x03;
    let (topic, mut at) = get_str(body)?;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    let mut props = Vec::new();
    if v5 {
        let (p, n) = parse_props(body.get(at..)?)?;
        props = p;
        at += n;
    }
    Some(Received {
        topic,
        qos,
        retain: first_byte & 0x01 == 1,
        dup: first_byte & 0x08 != 0,
        packet_id,
        props,
        payload: body.get(at..)?.to_vec(),
    })
}

/// SUBACK / UNSUBACK: the packet id and the reason codes (properties skipped for v5).
pub fn parse_ack_codes(body: &[u8], v5: bool) -> Option<(u16, Vec<u8>)> {
    let id = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut at = 2;
    if v5 {
        at += parse_props(body.get(2..)?)?.1;
    }
    Some((id, body.get(at..)?.to_vec()))
}

/// The reason code of an MQTT 5 DISCONNECT body (an empty body means 0x00).
pub fn disconnect_reason(body: &[u8]) -> u8 {
    body.first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_round_trips_on_the_spec_boundaries() {
        // MQTT 5 §1.5.5, table 1-1.
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_vbi(&mut out, *value);
            assert_eq!(&out, bytes, "encode {value}");
            assert_eq!(
                get_vbi(bytes),
                Some((*value, bytes.len())),
                "decode {value}"
            );
        }
        assert_eq!(get_vbi(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), None);
    }

    #[test]
    fn connect_v4_matches_the_spec_example_layout() {
        // 3.1.1 §3.1: "MQTT", level 4, clean session, keep alive 10, client id "a".
        let bytes = Connect::v4("a", true).keep_alive(10).encode();
        assert_eq!(
            bytes,
            vec![
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'a'
            ]
        );
    }

    #[test]
    fn properties_round_trip() {
        let list = vec![
            (prop::SESSION_EXPIRY, PropValue::U32(30)),
            (prop::USER_PROPERTY, PropValue::Pair("k".into(), "v".into())),
            (prop::CORRELATION_DATA, PropValue::Bin(vec![0, 1, 2])),
            (prop::SUBSCRIPTION_ID, PropValue::Vbi(300)),
            (prop::TOPIC_ALIAS, PropValue::U16(7)),
            (prop::PAYLOAD_FORMAT, PropValue::Byte(1)),
            (prop::RESPONSE_TOPIC, PropValue::Str("r/t".into())),
        ];
        let bytes = props(&list);
        assert_eq!(parse_props(&bytes), Some((list, bytes.len())));
    }

    #[test]
    fn publish_v5_round_trips_through_the_decoder() {
        let p = Publish::v5("a/b", b"hi")
            .qos(1, 9)
            .retain(true)
            .prop(prop::CONTENT_TYPE, PropValue::Str("text/plain".into()));
        let bytes = p.encode();
        let (len, n) = get_vbi(&bytes[1..]).unwrap();
        assert_eq!(len as usize, bytes.len() - 1 - n);
        let r = parse_publish(bytes[0], &bytes[1 + n..], true).unwrap();
        assert_eq!(
            (r.topic.as_str(), r.qos, r.retain, r.packet_id),
            ("a/b", 1, true, 9)
        );
        assert_eq!(r.payload, b"hi");
        assert_eq!(
            r.prop(prop::CONTENT_TYPE),
            Some(&PropValue::Str("text/plain".into()))
        );
    }
}
