//! The adapter's side of hub events: what a client sent that the hub refused, turned into
//! the event the engine publishes ([`iothub_engine::HubEvent`]), with the offending packet
//! as a readable excerpt.
//!
//! The adapter is where packets are seen, so it raises the events about them: malformed
//! packets and protocol errors (from the codec's [`DecodeError`] or the connection's own
//! checks), refused PUBLISH, SUBSCRIBE and wills (message filters, reserved topics, plan
//! service levels, limits), refused CONNECTs (hub not ready, device disabled, mutual TLS
//! required, certificates), and, in `tls`, what a client certificate turned out to be
//! (invalid, unknown to the hub, auto-provisioned). An event names the device when the
//! client is one, else the hub (anonymous clients, certificates naming no device); before
//! the hub is known (a CONNECT that does not parse, a certificate no hub's CA issued) it is
//! only counted (`iothub_events_unattributed_total`).
//!
//! Excerpts: a packet that parsed is described in words (`PUBLISH topic="a/b" qos=1 ...`);
//! bytes that did not parse are shown in hex, at most [`HEX_EXCERPT`] of them.

use std::fmt::Write as _;

use iothub_engine::{ConnectError, EventKind};
use iothub_mqtt_codec::{self as codec, DecodeError, Packet};

/// Bytes of a packet that does not parse shown in its event.
pub const HEX_EXCERPT: usize = 64;

/// The first bytes of the read buffer, copied before each decode so that the bytes of a
/// packet that fails to decode can be shown (the decoder may have consumed them).
pub(crate) struct Head {
    bytes: [u8; HEX_EXCERPT],
    len: usize,
    /// The buffer's length when copied.
    buffered: usize,
}

impl Head {
    pub(crate) fn of(buf: &[u8]) -> Self {
        let len = buf.len().min(HEX_EXCERPT);
        let mut bytes = [0; HEX_EXCERPT];
        bytes[..len].copy_from_slice(&buf[..len]);
        Self {
            bytes,
            len,
            buffered: buf.len(),
        }
    }

    /// Hex of the offending packet: the bytes the decoder consumed (it took the frame and
    /// failed on its body), or those still buffered (it failed on the fixed header).
    pub(crate) fn excerpt(&self, buffered_after: usize) -> String {
        let consumed = self.buffered.saturating_sub(buffered_after);
        let total = if consumed > 0 {
            consumed
        } else {
            self.buffered
        };
        hex_excerpt(&self.bytes[..self.len.min(total)], total)
    }
}

/// `bytes` in hex, space-separated, saying how many there were in all when `total` is more.
pub fn hex_excerpt(bytes: &[u8], total: usize) -> String {
    let mut out = String::with_capacity(bytes.len() * 3 + 24);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{b:02x}");
    }
    if total > bytes.len() {
        let _ = write!(out, " ... ({total} bytes)");
    }
    out
}

/// The event of a packet the codec refused, in the reference's words: a fixed header that
/// cannot be read is "cannot decode MQTT header", a body that cannot be read "failed to
/// unpack message body"; an unknown type, QoS 3 and an empty topic are protocol errors with
/// their own messages, and so is every rule the codec checks (reason code 0x82).
pub fn decode_event(e: &DecodeError) -> (EventKind, String) {
    use DecodeError as D;
    match e {
        D::UnknownPacketType(t) => (
            EventKind::ProtocolError,
            format!("unknown MQTT message type: {t}"),
        ),
        D::InvalidQoS(q) => (
            EventKind::ProtocolError,
            format!("invalid MQTT QoS value: {q}"),
        ),
        D::EmptyTopicWithoutAlias => (
            EventKind::ProtocolError,
            "empty topics are not authorized".into(),
        ),
        D::InvalidRemainingLength
        | D::ReservedFlags { .. }
        | D::DupWithQoS0
        | D::PacketTooLarge { .. } => (
            EventKind::MalformedPacket,
            format!("cannot decode MQTT header: {e}"),
        ),
        other if other.reason_code() == codec::ReasonCode::MALFORMED_PACKET => (
            EventKind::MalformedPacket,
            format!("failed to unpack message body: {other}"),
        ),
        other => (EventKind::ProtocolError, format!("protocol error: {other}")),
    }
}

/// The event of a CONNECT the engine refused, if it is one the hub's owner should see.
/// `certificate` = the client presented a verified certificate; `will_topic` = the
/// CONNECT's will topic. Refusals without an event: an unknown hub (the listener's
/// configuration), and "not authorized" for a client that is no device of the hub.
pub fn connect_event(
    e: &ConnectError,
    certificate: bool,
    will_topic: Option<&str>,
) -> Option<(EventKind, String)> {
    use ConnectError as E;
    let event = match e {
        E::UnknownHub => return None,
        E::HubDisabled => (EventKind::HubNotReady, "hub is not ready".into()),
        E::ClientIdInvalid if certificate => (
            EventKind::InvalidCertificate,
            "invalid device certificate: the client id is not the certificate's device".into(),
        ),
        E::ClientIdInvalid => (
            EventKind::ProtocolError,
            "client identifier not valid".into(),
        ),
        E::NotAuthorized => (
            EventKind::UnauthorizedTopic,
            format!("unauthorized topic {}", will_topic?),
        ),
        E::DeviceDisabled => (EventKind::DeviceDisabled, "device is not enabled".into()),
        E::MutualTlsRequired => (
            EventKind::MutualTlsRequired,
            "mutual TLS authentication is required".into(),
        ),
        E::CertificateNotCurrent => (
            EventKind::InvalidCertificate,
            "invalid device certificate: it is not the device's current certificate \
             (renewed, replaced or removed)"
                .into(),
        ),
        E::CertificateOtherHub => (
            EventKind::InvalidCertificate,
            "invalid device certificate: it was issued by another hub's CA".into(),
        ),
        E::CleanStartRequired => (
            EventKind::ServiceLevel,
            "service level: persistent sessions are not available on this plan \
             (clean session required)"
                .into(),
        ),
        E::QuotaExceeded => (
            EventKind::QuotaExceeded,
            "hub memory budget exhausted: the will message does not fit".into(),
        ),
        E::QosNotSupported => (
            EventKind::ServiceLevel,
            "service level: QoS 2 will messages are not available on this plan".into(),
        ),
        E::RetainNotSupported => (
            EventKind::ServiceLevel,
            "service level: retained will messages are not available on this plan".into(),
        ),
        E::PayloadTooLarge => (
            EventKind::QuotaExceeded,
            "the will payload is larger than the hub accepts".into(),
        ),
    };
    Some(event)
}

/// A readable excerpt of a decoded packet for an event: its type and the fields that
/// matter for a refusal (never the payload, only its size).
pub fn describe(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => describe_connect(c),
        Packet::Publish(p) => describe_publish(p),
        Packet::Subscribe(s) => describe_subscribe(s),
        Packet::Unsubscribe(u) => format!(
            "UNSUBSCRIBE packet_id={} filters={:?}",
            u.packet_id, u.filters
        ),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            format!("{} packet_id={}", packet.packet_type(), r.packet_id)
        }
        other => other.packet_type().to_string(),
    }
}

pub fn describe_connect(c: &codec::Connect) -> String {
    let mut out = format!(
        "CONNECT protocol={} client_id={:?} clean_start={} keep_alive={}",
        match c.protocol {
            codec::ProtocolVersion::V311 => "3.1.1",
            codec::ProtocolVersion::V5 => "5",
        },
        c.client_id,
        c.clean_start,
        c.keep_alive
    );
    if let Some(u) = &c.username {
        let _ = write!(out, " username={u:?}");
    }
    if let Some(expiry) = c.properties.session_expiry_interval {
        let _ = write!(out, " session_expiry={expiry}");
    }
    if let Some(w) = &c.will {
        let _ = write!(
            out,
            " will_topic={:?} will_qos={} will_retain={} will_payload={} bytes",
            w.topic,
            qos_number(w.qos),
            w.retain,
            w.payload.len()
        );
    }
    out
}

pub fn describe_publish(p: &codec::Publish) -> String {
    let mut out = format!(
        "PUBLISH topic={:?} qos={} retain={} dup={}",
        p.topic,
        qos_number(p.qos),
        p.retain,
        p.dup
    );
    if let Some(id) = p.packet_id {
        let _ = write!(out, " packet_id={id}");
    }
    if let Some(alias) = p.properties.topic_alias {
        let _ = write!(out, " topic_alias={alias}");
    }
    let _ = write!(out, " payload={} bytes", p.payload.len());
    out
}

pub fn describe_subscribe(s: &codec::Subscribe) -> String {
    let mut out = format!("SUBSCRIBE packet_id={}", s.packet_id);
    for (filter, opts) in &s.filters {
        let _ = write!(out, " {filter:?} qos={}", qos_number(opts.qos));
    }
    out
}

fn qos_number(q: codec::QoS) -> u8 {
    u8::from(crate::convert::qos_in(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_map_to_the_references_messages() {
        // (error, kind, message start)
        let cases = [
            (
                DecodeError::UnknownPacketType(0),
                EventKind::ProtocolError,
                "unknown MQTT message type: 0",
            ),
            (
                DecodeError::InvalidQoS(3),
                EventKind::ProtocolError,
                "invalid MQTT QoS value: 3",
            ),
            (
                DecodeError::EmptyTopicWithoutAlias,
                EventKind::ProtocolError,
                "empty topics are not authorized",
            ),
            (
                DecodeError::InvalidRemainingLength,
                EventKind::MalformedPacket,
                "cannot decode MQTT header",
            ),
            (
                DecodeError::PacketTooLarge { size: 10, max: 5 },
                EventKind::MalformedPacket,
                "cannot decode MQTT header",
            ),
            (
                DecodeError::Truncated,
                EventKind::MalformedPacket,
                "failed to unpack message body",
            ),
            (
                DecodeError::InvalidUtf8,
                EventKind::MalformedPacket,
                "failed to unpack message body",
            ),
            (
                DecodeError::ZeroPacketId,
                EventKind::ProtocolError,
                "protocol error: packet identifier 0",
            ),
        ];
        for (e, kind, start) in cases {
            let (k, msg) = decode_event(&e);
            assert_eq!(k, kind, "{e:?}");
            assert!(msg.starts_with(start), "{e:?}: {msg}");
        }
    }

    #[test]
    fn excerpts_show_the_offending_bytes() {
        // (buffer before decode, buffered after the failed decode, excerpt)
        let long: Vec<u8> = (0..100).collect();
        let cases: [(&[u8], usize, String); 4] = [
            (
                &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
                6,
                "30 ff ff ff ff 7f".into(),
            ),
            (
                &[0x82, 0x02, 0x00, 0x00, 0xc0, 0x00],
                2,
                "82 02 00 00".into(),
            ),
            (
                &long,
                100,
                format!("{} ... (100 bytes)", hex_excerpt(&long[..64], 64)),
            ),
            (
                &long,
                0,
                format!("{} ... (100 bytes)", hex_excerpt(&long[..64], 64)),
            ),
        ];
        for (before, after, want) in cases {
            assert_eq!(Head::of(before).excerpt(after), want, "{before:?}");
        }
        assert_eq!(hex_excerpt(&[0, 1, 0xab], 3), "00 01 ab");
    }

    #[test]
    fn packets_are_described_without_their_payload() {
        let publish = codec::Publish {
            qos: codec::QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(7),
            payload: bytes::Bytes::from_static(b"secret"),
            ..Default::default()
        };
        let text = describe(&Packet::Publish(publish));
        assert_eq!(
            text,
            "PUBLISH topic=\"a/b\" qos=1 retain=true dup=false packet_id=7 payload=6 bytes"
        );
        let subscribe = codec::Subscribe {
            packet_id: 3,
            filters: vec![(
                "x/#".into(),
                codec::SubscriptionOptions {
                    qos: codec::QoS::ExactlyOnce,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        };
        assert_eq!(
            describe(&Packet::Subscribe(subscribe)),
            "SUBSCRIBE packet_id=3 \"x/#\" qos=2"
        );
        assert_eq!(describe(&Packet::PingReq), "PINGREQ");
    }

    #[test]
    fn connect_refusals_name_their_event() {
        // (refusal, certificate presented, will topic, kind)
        let cases = [
            (
                ConnectError::HubDisabled,
                false,
                None,
                Some(EventKind::HubNotReady),
            ),
            (
                ConnectError::DeviceDisabled,
                false,
                None,
                Some(EventKind::DeviceDisabled),
            ),
            (
                ConnectError::MutualTlsRequired,
                false,
                None,
                Some(EventKind::MutualTlsRequired),
            ),
            (
                ConnectError::CertificateNotCurrent,
                true,
                None,
                Some(EventKind::InvalidCertificate),
            ),
            (
                ConnectError::ClientIdInvalid,
                true,
                None,
                Some(EventKind::InvalidCertificate),
            ),
            (
                ConnectError::ClientIdInvalid,
                false,
                None,
                Some(EventKind::ProtocolError),
            ),
            (
                ConnectError::CleanStartRequired,
                false,
                None,
                Some(EventKind::ServiceLevel),
            ),
            (
                ConnectError::NotAuthorized,
                false,
                Some("w"),
                Some(EventKind::UnauthorizedTopic),
            ),
            (ConnectError::NotAuthorized, false, None, None),
            (ConnectError::UnknownHub, false, None, None),
        ];
        for (e, certificate, will, kind) in cases {
            assert_eq!(
                connect_event(&e, certificate, will).map(|(k, _)| k),
                kind,
                "{e:?}"
            );
        }
    }
}
