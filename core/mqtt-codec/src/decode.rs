//! The decoder: fixed header first (type, flags, remaining length, size limit), then the body
//! once all of it is in the buffer.

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PubResponse, Publish, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::properties::{ConnectProperties, PublishProperties, WillProperties, read_properties};
use crate::reason::ReasonCode;
use crate::types::{PacketType, ProtocolVersion, QoS, RetainHandling};
use crate::wire::{Reader, Remaining, peek_variable_integer};

/// Decodes one packet from the front of `buf`.
///
/// - `Ok(None)`: the packet is incomplete; nothing was consumed and nothing allocated, so the
///   caller reads more bytes and calls again.
/// - `Ok(Some(packet))`: exactly that packet's bytes were consumed. Payloads and binary fields
///   share the buffer's memory (`split_to(..).freeze()`), so the caller should keep reading
///   into the same `BytesMut` rather than a fresh one per packet.
/// - `Err(_)`: the connection must be closed (see [`DecodeError::reason_code`]).
///
/// `version` is `None` until the CONNECT has been decoded: then only CONNECT is accepted, any
/// other type is [`DecodeError::UnexpectedFirstPacket`], and every error returned concerns that
/// CONNECT. The version used for a CONNECT body is always the one its protocol level names.
///
/// `max_packet_size` bounds the whole packet, fixed header included; it is checked as soon as
/// the fixed header is complete, before the body is waited for, so a peer cannot make the
/// receiver buffer a body it will refuse. Pass `u32::MAX` for "no limit" (the protocol's own
/// limit, 268,435,460 bytes, still applies).
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let nibble = first >> 4;
    let flags = first & 0x0F;
    let packet_type = match PacketType::from_nibble(nibble) {
        Some(PacketType::Auth) if version == Some(ProtocolVersion::V311) => {
            return Err(DecodeError::UnknownPacketType(nibble));
        }
        Some(packet_type) => packet_type,
        None => return Err(DecodeError::UnknownPacketType(nibble)),
    };
    if version.is_none() && packet_type != PacketType::Connect {
        return Err(DecodeError::UnexpectedFirstPacket(packet_type));
    }
    check_flags(packet_type, flags)?;

    let (remaining, length_bytes) = match peek_variable_integer(&buf[1..]) {
        Ok(Remaining::Complete(value, used)) => (value, used),
        Ok(Remaining::Incomplete) => return Ok(None),
        Err(()) => return Err(DecodeError::InvalidRemainingLength),
    };
    let header_len = 1 + length_bytes;
    // At most 5 + 268,435,455: always fits in a u32.
    let size = remaining + header_len as u32;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size as usize {
        return Ok(None);
    }

    let frame = buf.split_to(size as usize).freeze();
    let mut reader = Reader::new(frame, header_len);
    let packet = match (packet_type, version) {
        (PacketType::Connect, _) => Packet::Connect(Box::new(connect(&mut reader)?)),
        (_, None) => return Err(DecodeError::UnexpectedFirstPacket(packet_type)),
        (PacketType::ConnAck, Some(v)) => Packet::ConnAck(connack(&mut reader, v)?),
        (PacketType::Publish, Some(v)) => Packet::Publish(publish(&mut reader, v, flags)?),
        (PacketType::PubAck, Some(v)) => Packet::PubAck(pub_response(&mut reader, v, packet_type)?),
        (PacketType::PubRec, Some(v)) => Packet::PubRec(pub_response(&mut reader, v, packet_type)?),
        (PacketType::PubRel, Some(v)) => Packet::PubRel(pub_response(&mut reader, v, packet_type)?),
        (PacketType::PubComp, Some(v)) => {
            Packet::PubComp(pub_response(&mut reader, v, packet_type)?)
        }
        (PacketType::Subscribe, Some(v)) => Packet::Subscribe(subscribe(&mut reader, v)?),
        (PacketType::SubAck, Some(v)) => Packet::SubAck(suback(&mut reader, v)?),
        (PacketType::Unsubscribe, Some(v)) => Packet::Unsubscribe(unsubscribe(&mut reader, v)?),
        (PacketType::UnsubAck, Some(v)) => Packet::UnsubAck(unsuback(&mut reader, v)?),
        (PacketType::PingReq, Some(_)) => {
            reader.finish()?;
            Packet::PingReq
        }
        (PacketType::PingResp, Some(_)) => {
            reader.finish()?;
            Packet::PingResp
        }
        (PacketType::Disconnect, Some(v)) => Packet::Disconnect(disconnect(&mut reader, v)?),
        (PacketType::Auth, Some(_)) => Packet::Auth(auth(&mut reader)?),
    };
    Ok(Some(packet))
}

/// Fixed-header flags (spec 2.1.3): fixed values for every type but PUBLISH, whose QoS may not
/// be 3 and whose DUP must be 0 at QoS 0.
fn check_flags(packet_type: PacketType, flags: u8) -> Result<(), DecodeError> {
    if packet_type == PacketType::Publish {
        let qos = (flags >> 1) & 0b11;
        if qos == 3 {
            return Err(DecodeError::InvalidQoS(3));
        }
        if qos == 0 && flags & 0b1000 != 0 {
            return Err(DecodeError::DupWithQoS0);
        }
        return Ok(());
    }
    if flags == packet_type.required_flags() {
        Ok(())
    } else {
        Err(DecodeError::ReservedFlags { packet_type, flags })
    }
}

fn connect(reader: &mut Reader) -> Result<Connect, DecodeError> {
    let name = reader.binary_slice()?;
    let mqisdp = match name {
        b"MQTT" => false,
        b"MQIsdp" => true,
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let level = reader.u8()?;
    let protocol = match ProtocolVersion::from_level(level) {
        Some(protocol) if !mqisdp => protocol,
        // MQTT 3.1 or an unknown level: the adapter refuses it with a CONNACK.
        _ => return Err(DecodeError::UnsupportedProtocolVersion(level)),
    };

    let flags = reader.u8()?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    if will_flag {
        if will_qos == 3 {
            return Err(DecodeError::InvalidQoS(3));
        }
    } else if will_qos != 0 || will_retain {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    if protocol == ProtocolVersion::V311 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }

    let keep_alive = reader.u16()?;
    let properties: ConnectProperties = match protocol {
        ProtocolVersion::V5 => read_properties(reader, "CONNECT")?,
        ProtocolVersion::V311 => Default::default(),
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    let client_id = reader.string()?;
    let will = if will_flag {
        let properties = match protocol {
            ProtocolVersion::V5 => read_properties::<WillProperties>(reader, "will")?,
            ProtocolVersion::V311 => WillProperties::default(),
        };
        Some(LastWill {
            topic: reader.string()?,
            payload: reader.binary()?,
            qos: QoS::try_from(will_qos)?,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(reader.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(reader.binary()?)
    } else {
        None
    };
    reader.finish()?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(reader: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = reader.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ReservedConnAckFlags(flags));
    }
    let session_present = flags & 1 != 0;
    let code = reader.u8()?;
    let invalid = DecodeError::InvalidReasonCode {
        packet: PacketType::ConnAck,
        code,
    };
    let (reason_code, properties) = match version {
        ProtocolVersion::V311 => {
            let reason_code = ReasonCode::from_v311_connack_return_code(code).ok_or(invalid)?;
            (reason_code, Default::default())
        }
        ProtocolVersion::V5 => {
            let reason_code = ReasonCode(code);
            if !reason_code.allowed_in(PacketType::ConnAck) {
                return Err(invalid);
            }
            (reason_code, read_properties(reader, "CONNACK")?)
        }
    };
    if session_present && reason_code.is_error() {
        return Err(DecodeError::SessionPresentOnRefusal);
    }
    reader.finish()?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn publish(
    reader: &mut Reader,
    version: ProtocolVersion,
    flags: u8,
) -> Result<Publish, DecodeError> {
    let qos = QoS::try_from((flags >> 1) & 0b11)?;
    let topic = reader.string()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(reader.packet_id()?),
    };
    let properties: PublishProperties = match version {
        ProtocolVersion::V5 => read_properties(reader, "PUBLISH")?,
        ProtocolVersion::V311 => Default::default(),
    };
    // 3.1.1 forbids an empty topic too, but as a topic rule [MQTT-4.7.3-1]: the engine's call.
    if version == ProtocolVersion::V5 && topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicWithoutAlias);
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        properties,
        payload: reader.rest(),
    })
}

/// A 5.0 reason code that must be one of those allowed in `packet`.
fn reason_code(reader: &mut Reader, packet: PacketType) -> Result<ReasonCode, DecodeError> {
    let code = reader.u8()?;
    let reason_code = ReasonCode(code);
    if reason_code.allowed_in(packet) {
        Ok(reason_code)
    } else {
        Err(DecodeError::InvalidReasonCode { packet, code })
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In 5.0 the reason code and the properties may each be left
/// out (remaining length 2 or 3) when they are Success and empty (spec 3.4.2.1).
fn pub_response(
    reader: &mut Reader,
    version: ProtocolVersion,
    packet: PacketType,
) -> Result<PubResponse, DecodeError> {
    let packet_id = reader.packet_id()?;
    let mut response = PubResponse {
        packet_id,
        ..PubResponse::default()
    };
    if version == ProtocolVersion::V5 && !reader.is_empty() {
        response.reason_code = reason_code(reader, packet)?;
        if !reader.is_empty() {
            response.properties = read_properties(reader, packet.name())?;
        }
    }
    reader.finish()?;
    Ok(response)
}

fn subscribe(reader: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = reader.packet_id()?;
    let properties = match version {
        ProtocolVersion::V5 => read_properties(reader, "SUBSCRIBE")?,
        ProtocolVersion::V311 => Default::default(),
    };
    let mut filters = Vec::new();
    while !reader.is_empty() {
        let filter = reader.string()?;
        let options = subscription_options(reader.u8()?, version)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// The options byte (spec 3.8.3.1); in 3.1.1 only the QoS bits may be set [MQTT-3.8.3-4].
fn subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match version {
        ProtocolVersion::V311 => 0b1111_1100,
        ProtocolVersion::V5 => 0b1100_0000,
    };
    if byte & reserved != 0 || byte & 0b11 == 3 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let retain_handling = RetainHandling::try_from((byte >> 4) & 0b11)
        .map_err(|_| DecodeError::InvalidSubscriptionOptions(byte))?;
    Ok(SubscriptionOptions {
        qos: QoS::try_from(byte & 0b11)?,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn suback(reader: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = reader.packet_id()?;
    let properties = match version {
        ProtocolVersion::V5 => read_properties(reader, "SUBACK")?,
        ProtocolVersion::V311 => Default::default(),
    };
    let mut reason_codes = Vec::with_capacity(reader.remaining());
    while !reader.is_empty() {
        let code = match version {
            ProtocolVersion::V5 => reason_code(reader, PacketType::SubAck)?,
            ProtocolVersion::V311 => match reader.u8()? {
                code @ (0 | 1 | 2 | 0x80) => ReasonCode(code),
                code => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet: PacketType::SubAck,
                        code,
                    });
                }
            },
        };
        reason_codes.push(code);
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(reader: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = reader.packet_id()?;
    let properties = match version {
        ProtocolVersion::V5 => read_properties(reader, "UNSUBSCRIBE")?,
        ProtocolVersion::V311 => Default::default(),
    };
    let mut filters = Vec::new();
    while !reader.is_empty() {
        filters.push(reader.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(reader: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = reader.packet_id()?;
    let mut unsuback = UnsubAck {
        packet_id,
        ..UnsubAck::default()
    };
    if version == ProtocolVersion::V5 {
        unsuback.properties = read_properties(reader, "UNSUBACK")?;
        unsuback.reason_codes.reserve_exact(reader.remaining());
        while !reader.is_empty() {
            unsuback
                .reason_codes
                .push(reason_code(reader, PacketType::UnsubAck)?);
        }
    }
    reader.finish()?;
    Ok(unsuback)
}

/// DISCONNECT: empty in 3.1.1; in 5.0 the reason code and properties may be left out
/// (spec 3.14.2.1).
fn disconnect(reader: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if version == ProtocolVersion::V5 && !reader.is_empty() {
        disconnect.reason_code = reason_code(reader, PacketType::Disconnect)?;
        if !reader.is_empty() {
            disconnect.properties = read_properties(reader, "DISCONNECT")?;
        }
    }
    reader.finish()?;
    Ok(disconnect)
}

/// AUTH (5.0 only): an empty body means Success without properties (spec 3.15.2.1).
fn auth(reader: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if !reader.is_empty() {
        auth.reason_code = reason_code(reader, PacketType::Auth)?;
        if !reader.is_empty() {
            auth.properties = read_properties(reader, "AUTH")?;
        }
    }
    reader.finish()?;
    Ok(auth)
}
