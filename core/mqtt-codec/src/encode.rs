//! The encoder. Each packet body is described once, in [`body`], and walked twice: first to
//! measure (which also validates every field, so nothing can fail half-written), then to write
//! into a buffer reserved to the exact size.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PubResponse, Publish, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::properties::{AckProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::types::{PacketType, ProtocolVersion, QoS};
use crate::wire::{
    MAX_VARIABLE_INTEGER, binary_len, put_binary, put_variable_integer, string_len,
    variable_integer_len,
};

/// Encodes `packet` for a connection speaking `version` and appends it to `buf`.
///
/// What 3.1.1 cannot carry (properties, most reason codes, subscription options other than QoS)
/// is silently left out, so the engine can build one packet for subscribers of both versions.
/// CONNECT is the exception to `version`: it is laid out for its own `protocol` field, as the
/// decoder reads it by its own protocol level.
///
/// On error nothing has been written to `buf`.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, version)?;
    buf.reserve(1 + variable_integer_len(remaining) + remaining);
    buf.put_u8(first_byte(packet));
    put_variable_integer(buf, remaining);
    body(packet, version, &mut Out::Write(buf))
}

/// Size of the encoded packet, fixed header included, without encoding it; used to honour the
/// peer's Maximum Packet Size before deciding to send.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = remaining_len(packet, version)?;
    Ok(1 + variable_integer_len(remaining) + remaining)
}

fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let mut out = Out::Measure(0);
    body(packet, version, &mut out)?;
    let remaining = match out {
        Out::Measure(len) => len,
        Out::Write(_) => 0,
    };
    if remaining > MAX_VARIABLE_INTEGER as usize {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    Ok(remaining)
}

/// Type nibble and flags (spec 2.1.2, 2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(publish) => {
            (u8::from(publish.dup) << 3) | ((publish.qos as u8) << 1) | u8::from(publish.retain)
        }
        _ => packet_type.required_flags(),
    };
    ((packet_type as u8) << 4) | flags
}

/// Either measures or writes; the measuring pass is the one that validates.
enum Out<'a> {
    Measure(usize),
    Write(&'a mut BytesMut),
}

impl Out<'_> {
    fn u8(&mut self, value: u8) {
        match self {
            Self::Measure(len) => *len += 1,
            Self::Write(buf) => buf.put_u8(value),
        }
    }

    fn u16(&mut self, value: u16) {
        match self {
            Self::Measure(len) => *len += 2,
            Self::Write(buf) => buf.put_u16(value),
        }
    }

    fn packet_id(&mut self, id: u16) -> Result<(), EncodeError> {
        if id == 0 {
            return Err(EncodeError::ZeroPacketId);
        }
        self.u16(id);
        Ok(())
    }

    fn string(&mut self, value: &str) -> Result<(), EncodeError> {
        match self {
            Self::Measure(len) => *len += string_len(value)?,
            Self::Write(buf) => put_binary(buf, value.as_bytes()),
        }
        Ok(())
    }

    fn binary(&mut self, value: &[u8]) -> Result<(), EncodeError> {
        match self {
            Self::Measure(len) => *len += binary_len(value)?,
            Self::Write(buf) => put_binary(buf, value),
        }
        Ok(())
    }

    /// Bytes with no length prefix: the PUBLISH payload.
    fn raw(&mut self, value: &[u8]) {
        match self {
            Self::Measure(len) => *len += value.len(),
            Self::Write(buf) => buf.put_slice(value),
        }
    }

    fn properties<P: PropertySet>(&mut self, properties: &P) -> Result<(), EncodeError> {
        match self {
            Self::Measure(len) => *len += properties.section_len()?,
            Self::Write(buf) => properties.write(buf)?,
        }
        Ok(())
    }
}

fn body(packet: &Packet, version: ProtocolVersion, out: &mut Out<'_>) -> Result<(), EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    match packet {
        Packet::Connect(connect) => connect_body(connect, out),
        Packet::ConnAck(connack) => connack_body(connack, v5, out),
        Packet::Publish(publish) => publish_body(publish, v5, out),
        Packet::PubAck(response)
        | Packet::PubRec(response)
        | Packet::PubRel(response)
        | Packet::PubComp(response) => pub_response_body(response, v5, out),
        Packet::Subscribe(subscribe) => subscribe_body(subscribe, v5, out),
        Packet::SubAck(suback) => suback_body(suback, v5, out),
        Packet::Unsubscribe(unsubscribe) => unsubscribe_body(unsubscribe, v5, out),
        Packet::UnsubAck(unsuback) => unsuback_body(unsuback, v5, out),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(disconnect) => disconnect_body(disconnect, v5, out),
        Packet::Auth(auth) if v5 => auth_body(auth, out),
        Packet::Auth(_) => Err(EncodeError::NotInVersion(PacketType::Auth)),
    }
}

fn connect_body(connect: &Connect, out: &mut Out<'_>) -> Result<(), EncodeError> {
    let v5 = connect.protocol == ProtocolVersion::V5;
    if !v5 && connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0b100 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
    }
    flags |= u8::from(connect.password.is_some()) << 6;
    flags |= u8::from(connect.username.is_some()) << 7;

    out.string("MQTT")?;
    out.u8(connect.protocol.level());
    out.u8(flags);
    out.u16(connect.keep_alive);
    if v5 {
        out.properties(&connect.properties)?;
    }
    out.string(&connect.client_id)?;
    if let Some(will) = &connect.will {
        if v5 {
            out.properties(&will.properties)?;
        }
        out.string(&will.topic)?;
        out.binary(&will.payload)?;
    }
    if let Some(username) = &connect.username {
        out.string(username)?;
    }
    if let Some(password) = &connect.password {
        out.binary(password)?;
    }
    Ok(())
}

fn connack_body(connack: &ConnAck, v5: bool, out: &mut Out<'_>) -> Result<(), EncodeError> {
    // A refusal never claims a session [MQTT-3.2.2-4] / [MQTT-3.2.2-6].
    out.u8(u8::from(
        connack.session_present && !connack.reason_code.is_error(),
    ));
    if v5 {
        out.u8(connack.reason_code.0);
        out.properties(&connack.properties)
    } else {
        out.u8(connack.reason_code.v311_connack_return_code());
        Ok(())
    }
}

fn publish_body(publish: &Publish, v5: bool, out: &mut Out<'_>) -> Result<(), EncodeError> {
    if v5 && publish.topic.is_empty() && publish.properties.topic_alias.is_none() {
        return Err(EncodeError::EmptyTopicWithoutAlias);
    }
    out.string(&publish.topic)?;
    match (publish.qos, publish.packet_id) {
        (QoS::AtMostOnce, None) if publish.dup => return Err(EncodeError::DupWithQoS0),
        (QoS::AtMostOnce, None) => {}
        (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::UnexpectedPacketId),
        (qos, None) => return Err(EncodeError::MissingPacketId(qos as u8)),
        (_, Some(id)) => out.packet_id(id)?,
    }
    if v5 {
        out.properties(&publish.properties)?;
    }
    out.raw(&publish.payload);
    Ok(())
}

/// Writes the shortest form the spec allows (spec 3.4.2.1): no reason code and no properties
/// when they are Success and empty, which is also what every client sends.
fn pub_response_body(
    response: &PubResponse,
    v5: bool,
    out: &mut Out<'_>,
) -> Result<(), EncodeError> {
    out.packet_id(response.packet_id)?;
    if v5 {
        reason_and_properties(response.reason_code, &response.properties, out)?;
    }
    Ok(())
}

fn reason_and_properties(
    reason_code: ReasonCode,
    properties: &AckProperties,
    out: &mut Out<'_>,
) -> Result<(), EncodeError> {
    if properties.is_empty() {
        if reason_code != ReasonCode::SUCCESS {
            out.u8(reason_code.0);
        }
        return Ok(());
    }
    out.u8(reason_code.0);
    out.properties(properties)
}

fn subscribe_body(subscribe: &Subscribe, v5: bool, out: &mut Out<'_>) -> Result<(), EncodeError> {
    if subscribe.filters.is_empty() {
        return Err(EncodeError::NoFilters(PacketType::Subscribe));
    }
    out.packet_id(subscribe.packet_id)?;
    if v5 {
        out.properties(&subscribe.properties)?;
    }
    for (filter, options) in &subscribe.filters {
        out.string(filter)?;
        let mut byte = options.qos as u8;
        if v5 {
            byte |= u8::from(options.no_local) << 2;
            byte |= u8::from(options.retain_as_published) << 3;
            byte |= (options.retain_handling as u8) << 4;
        }
        out.u8(byte);
    }
    Ok(())
}

fn suback_body(suback: &SubAck, v5: bool, out: &mut Out<'_>) -> Result<(), EncodeError> {
    out.packet_id(suback.packet_id)?;
    if v5 {
        out.properties(&suback.properties)?;
    }
    for code in &suback.reason_codes {
        out.u8(if v5 { code.0 } else { code.v311_suback() });
    }
    Ok(())
}

fn unsubscribe_body(
    unsubscribe: &Unsubscribe,
    v5: bool,
    out: &mut Out<'_>,
) -> Result<(), EncodeError> {
    if unsubscribe.filters.is_empty() {
        return Err(EncodeError::NoFilters(PacketType::Unsubscribe));
    }
    out.packet_id(unsubscribe.packet_id)?;
    if v5 {
        out.properties(&unsubscribe.properties)?;
    }
    for filter in &unsubscribe.filters {
        out.string(filter)?;
    }
    Ok(())
}

fn unsuback_body(unsuback: &UnsubAck, v5: bool, out: &mut Out<'_>) -> Result<(), EncodeError> {
    out.packet_id(unsuback.packet_id)?;
    if v5 {
        out.properties(&unsuback.properties)?;
        for code in &unsuback.reason_codes {
            out.u8(code.0);
        }
    }
    Ok(())
}

/// Empty for 3.1.1 and for a 5.0 normal disconnection without properties (spec 3.14.2.1).
fn disconnect_body(
    disconnect: &Disconnect,
    v5: bool,
    out: &mut Out<'_>,
) -> Result<(), EncodeError> {
    if !v5 || (disconnect.reason_code == ReasonCode::SUCCESS && disconnect.properties.is_empty()) {
        return Ok(());
    }
    out.u8(disconnect.reason_code.0);
    if !disconnect.properties.is_empty() {
        out.properties(&disconnect.properties)?;
    }
    Ok(())
}

/// Empty for Success without properties (spec 3.15.2.1).
fn auth_body(auth: &Auth, out: &mut Out<'_>) -> Result<(), EncodeError> {
    if auth.reason_code == ReasonCode::SUCCESS && auth.properties.is_empty() {
        return Ok(());
    }
    out.u8(auth.reason_code.0);
    out.properties(&auth.properties)
}
