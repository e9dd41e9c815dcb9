//! MQTT 5 properties (spec 2.2.2): one struct per packet kind, and the code that reads and
//! writes them.
//!
//! Each struct lists exactly the properties its packet may carry, so a property in the wrong
//! packet cannot even be represented. Decoding goes through [`PropertySet::apply`], which
//! refuses ids the packet may not carry and duplicates of single-valued properties; encoding
//! goes through [`PropertySet::visit`], walked once to measure and once to write, so the two can
//! never disagree about the length.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::types::QoS;
use crate::wire::{
    MAX_VARIABLE_INTEGER, Reader, binary_len, put_binary, put_variable_integer, string_len,
    variable_integer_len,
};

/// Property identifiers (spec table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// CONNECT properties (spec 3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<(String, String)>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

/// Will properties, carried in the CONNECT payload (spec 3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// CONNACK properties (spec 3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// Only 0 or 1 on the wire: "QoS 2 is supported" is said by leaving it out.
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH properties (spec 3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// Server to client only; one per matching subscription that had an identifier.
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK (all the same two).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

/// SUBSCRIBE properties (spec 3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<(String, String)>,
}

/// UNSUBSCRIBE properties (spec 3.10.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: Vec<(String, String)>,
}

/// DISCONNECT properties (spec 3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub server_reference: Option<String>,
}

/// AUTH properties (spec 3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

/// One decoded property value; its shape follows from the id (spec table 2-4).
pub(crate) enum Value {
    Byte(u8),
    Two(u16),
    Four(u32),
    Variable(u32),
    Text(String),
    Binary(Bytes),
    Pair(String, String),
}

/// A walk over a property set, either measuring it or writing it.
pub(crate) enum Sink<'a> {
    Measure(usize),
    Write(&'a mut BytesMut),
}

impl Sink<'_> {
    fn byte(&mut self, id: u8, value: u8) {
        match self {
            Self::Measure(len) => *len += 2,
            Self::Write(buf) => {
                buf.put_u8(id);
                buf.put_u8(value);
            }
        }
    }

    fn two(&mut self, id: u8, value: u16) {
        match self {
            Self::Measure(len) => *len += 3,
            Self::Write(buf) => {
                buf.put_u8(id);
                buf.put_u16(value);
            }
        }
    }

    fn four(&mut self, id: u8, value: u32) {
        match self {
            Self::Measure(len) => *len += 5,
            Self::Write(buf) => {
                buf.put_u8(id);
                buf.put_u32(value);
            }
        }
    }

    fn variable(&mut self, id: u8, value: u32) -> Result<(), EncodeError> {
        if value == 0 {
            return Err(EncodeError::InvalidPropertyValue { property: id });
        }
        if value > MAX_VARIABLE_INTEGER {
            return Err(EncodeError::VariableIntegerTooLarge(value));
        }
        let value = value as usize;
        match self {
            Self::Measure(len) => *len += 1 + variable_integer_len(value),
            Self::Write(buf) => {
                buf.put_u8(id);
                put_variable_integer(buf, value);
            }
        }
        Ok(())
    }

    fn text(&mut self, id: u8, value: &str) -> Result<(), EncodeError> {
        match self {
            Self::Measure(len) => *len += 1 + string_len(value)?,
            Self::Write(buf) => {
                buf.put_u8(id);
                put_binary(buf, value.as_bytes());
            }
        }
        Ok(())
    }

    fn binary(&mut self, id: u8, value: &[u8]) -> Result<(), EncodeError> {
        match self {
            Self::Measure(len) => *len += 1 + binary_len(value)?,
            Self::Write(buf) => {
                buf.put_u8(id);
                put_binary(buf, value);
            }
        }
        Ok(())
    }

    fn user_properties(&mut self, pairs: &[(String, String)]) -> Result<(), EncodeError> {
        for (key, value) in pairs {
            match self {
                Self::Measure(len) => *len += 1 + string_len(key)? + string_len(value)?,
                Self::Write(buf) => {
                    buf.put_u8(id::USER_PROPERTY);
                    put_binary(buf, key.as_bytes());
                    put_binary(buf, value.as_bytes());
                }
            }
        }
        Ok(())
    }

    fn opt_byte(&mut self, id: u8, value: Option<u8>) {
        if let Some(value) = value {
            self.byte(id, value);
        }
    }

    fn opt_bool(&mut self, id: u8, value: Option<bool>) {
        self.opt_byte(id, value.map(u8::from));
    }

    /// Payload format indicator: only 0 (bytes) and 1 (UTF-8) exist.
    fn opt_payload_format(&mut self, value: Option<u8>) -> Result<(), EncodeError> {
        if value.is_some_and(|format| format > 1) {
            return Err(EncodeError::InvalidPropertyValue {
                property: id::PAYLOAD_FORMAT_INDICATOR,
            });
        }
        self.opt_byte(id::PAYLOAD_FORMAT_INDICATOR, value);
        Ok(())
    }

    fn opt_two(&mut self, id: u8, value: Option<u16>) {
        if let Some(value) = value {
            self.two(id, value);
        }
    }

    /// Receive maximum and topic alias may not be 0.
    fn opt_two_nonzero(&mut self, id: u8, value: Option<u16>) -> Result<(), EncodeError> {
        if value == Some(0) {
            return Err(EncodeError::InvalidPropertyValue { property: id });
        }
        self.opt_two(id, value);
        Ok(())
    }

    fn opt_four(&mut self, id: u8, value: Option<u32>) {
        if let Some(value) = value {
            self.four(id, value);
        }
    }

    /// Maximum packet size may not be 0.
    fn opt_four_nonzero(&mut self, id: u8, value: Option<u32>) -> Result<(), EncodeError> {
        if value == Some(0) {
            return Err(EncodeError::InvalidPropertyValue { property: id });
        }
        self.opt_four(id, value);
        Ok(())
    }

    fn opt_text(&mut self, id: u8, value: Option<&str>) -> Result<(), EncodeError> {
        match value {
            Some(value) => self.text(id, value),
            None => Ok(()),
        }
    }

    fn opt_binary(&mut self, id: u8, value: Option<&Bytes>) -> Result<(), EncodeError> {
        match value {
            Some(value) => self.binary(id, value),
            None => Ok(()),
        }
    }
}

/// What every property struct provides to the generic reader and writer.
pub(crate) trait PropertySet: Default {
    /// Stores one decoded property; `Ok(false)` if this packet may not carry `id`.
    fn apply(&mut self, id: u8, value: Value) -> Result<bool, DecodeError>;

    /// Walks the set in a fixed order (measure or write).
    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError>;

    /// Length of the property content, without the length prefix. Also the validation pass.
    fn content_len(&self) -> Result<usize, EncodeError> {
        let mut sink = Sink::Measure(0);
        self.visit(&mut sink)?;
        Ok(match sink {
            Sink::Measure(len) => len,
            Sink::Write(_) => 0,
        })
    }

    /// Length of the whole property section: length prefix plus content.
    fn section_len(&self) -> Result<usize, EncodeError> {
        let content = self.content_len()?;
        Ok(variable_integer_len(content) + content)
    }

    /// Writes the section; lengths and values were checked by [`PropertySet::section_len`].
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let content = self.content_len()?;
        put_variable_integer(buf, content);
        self.visit(&mut Sink::Write(buf))
    }
}

/// Reads one property: its id (a variable byte integer, spec 2.2.2.2) and its value.
fn read_property(reader: &mut Reader) -> Result<(u8, Value), DecodeError> {
    let raw = reader.variable_integer()?;
    let property = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(raw))?;
    let value = match property {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::REQUEST_PROBLEM_INFORMATION
        | id::REQUEST_RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => Value::Byte(reader.u8()?),
        id::SERVER_KEEP_ALIVE | id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::TOPIC_ALIAS => {
            Value::Two(reader.u16()?)
        }
        id::MESSAGE_EXPIRY_INTERVAL
        | id::SESSION_EXPIRY_INTERVAL
        | id::WILL_DELAY_INTERVAL
        | id::MAXIMUM_PACKET_SIZE => Value::Four(reader.u32()?),
        id::SUBSCRIPTION_IDENTIFIER => Value::Variable(reader.variable_integer()?),
        id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::ASSIGNED_CLIENT_IDENTIFIER
        | id::AUTHENTICATION_METHOD
        | id::RESPONSE_INFORMATION
        | id::SERVER_REFERENCE
        | id::REASON_STRING => Value::Text(reader.string()?),
        id::CORRELATION_DATA | id::AUTHENTICATION_DATA => Value::Binary(reader.binary()?),
        id::USER_PROPERTY => {
            let key = reader.string()?;
            Value::Pair(key, reader.string()?)
        }
        _ => return Err(DecodeError::UnknownProperty(raw)),
    };
    Ok((property, value))
}

/// Reads a property section (length prefix, then properties) for the packet named `packet`.
pub(crate) fn read_properties<P: PropertySet>(
    reader: &mut Reader,
    packet: &'static str,
) -> Result<P, DecodeError> {
    let len = reader.variable_integer()? as usize;
    let mut properties = P::default();
    if len == 0 {
        return Ok(properties);
    }
    let outer = reader.enter(len)?;
    while !reader.is_empty() {
        let (property, value) = read_property(reader)?;
        if !properties.apply(property, value)? {
            return Err(DecodeError::PropertyNotAllowed { property, packet });
        }
    }
    reader.leave(outer)?;
    Ok(properties)
}

/// Stores a single-valued property, refusing a second occurrence.
fn once<T>(slot: &mut Option<T>, property: u8, value: T) -> Result<bool, DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(property));
    }
    *slot = Some(value);
    Ok(true)
}

fn boolean(property: u8, value: u8) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue { property }),
    }
}

fn nonzero_u16(property: u8, value: u16) -> Result<u16, DecodeError> {
    if value == 0 {
        Err(DecodeError::InvalidPropertyValue { property })
    } else {
        Ok(value)
    }
}

fn nonzero_u32(property: u8, value: u32) -> Result<u32, DecodeError> {
    if value == 0 {
        Err(DecodeError::InvalidPropertyValue { property })
    } else {
        Ok(value)
    }
}

fn payload_format(value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        Err(DecodeError::InvalidPropertyValue {
            property: id::PAYLOAD_FORMAT_INDICATOR,
        })
    } else {
        Ok(value)
    }
}

fn push_pair(
    list: &mut Vec<(String, String)>,
    key: String,
    value: String,
) -> Result<bool, DecodeError> {
    list.push((key, value));
    Ok(true)
}

impl PropertySet for ConnectProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::SESSION_EXPIRY_INTERVAL, Value::Four(v)) => {
                once(&mut self.session_expiry_interval, property, v)
            }
            (id::RECEIVE_MAXIMUM, Value::Two(v)) => once(
                &mut self.receive_maximum,
                property,
                nonzero_u16(property, v)?,
            ),
            (id::MAXIMUM_PACKET_SIZE, Value::Four(v)) => once(
                &mut self.maximum_packet_size,
                property,
                nonzero_u32(property, v)?,
            ),
            (id::TOPIC_ALIAS_MAXIMUM, Value::Two(v)) => {
                once(&mut self.topic_alias_maximum, property, v)
            }
            (id::REQUEST_RESPONSE_INFORMATION, Value::Byte(v)) => once(
                &mut self.request_response_information,
                property,
                boolean(property, v)?,
            ),
            (id::REQUEST_PROBLEM_INFORMATION, Value::Byte(v)) => once(
                &mut self.request_problem_information,
                property,
                boolean(property, v)?,
            ),
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            (id::AUTHENTICATION_METHOD, Value::Text(v)) => {
                once(&mut self.authentication_method, property, v)
            }
            (id::AUTHENTICATION_DATA, Value::Binary(v)) => {
                once(&mut self.authentication_data, property, v)
            }
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        // "It is a Protocol Error to include Authentication Data if there is no Authentication
        // Method" (3.1.2.11.10).
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(EncodeError::InvalidPropertyValue {
                property: id::AUTHENTICATION_DATA,
            });
        }
        sink.opt_four(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        sink.opt_two_nonzero(id::RECEIVE_MAXIMUM, self.receive_maximum)?;
        sink.opt_four_nonzero(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size)?;
        sink.opt_two(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        sink.opt_bool(
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        sink.opt_bool(
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        sink.user_properties(&self.user_properties)?;
        sink.opt_text(
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        sink.opt_binary(id::AUTHENTICATION_DATA, self.authentication_data.as_ref())
    }
}

impl PropertySet for WillProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::WILL_DELAY_INTERVAL, Value::Four(v)) => {
                once(&mut self.will_delay_interval, property, v)
            }
            (id::PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => once(
                &mut self.payload_format_indicator,
                property,
                payload_format(v)?,
            ),
            (id::MESSAGE_EXPIRY_INTERVAL, Value::Four(v)) => {
                once(&mut self.message_expiry_interval, property, v)
            }
            (id::CONTENT_TYPE, Value::Text(v)) => once(&mut self.content_type, property, v),
            (id::RESPONSE_TOPIC, Value::Text(v)) => once(&mut self.response_topic, property, v),
            (id::CORRELATION_DATA, Value::Binary(v)) => {
                once(&mut self.correlation_data, property, v)
            }
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        sink.opt_four(id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        sink.opt_payload_format(self.payload_format_indicator)?;
        sink.opt_four(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        sink.opt_text(id::CONTENT_TYPE, self.content_type.as_deref())?;
        sink.opt_text(id::RESPONSE_TOPIC, self.response_topic.as_deref())?;
        sink.opt_binary(id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        sink.user_properties(&self.user_properties)
    }
}

impl PropertySet for ConnAckProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::SESSION_EXPIRY_INTERVAL, Value::Four(v)) => {
                once(&mut self.session_expiry_interval, property, v)
            }
            (id::RECEIVE_MAXIMUM, Value::Two(v)) => once(
                &mut self.receive_maximum,
                property,
                nonzero_u16(property, v)?,
            ),
            (id::MAXIMUM_QOS, Value::Byte(v)) => {
                let qos = match v {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::InvalidPropertyValue { property }),
                };
                once(&mut self.maximum_qos, property, qos)
            }
            (id::RETAIN_AVAILABLE, Value::Byte(v)) => {
                once(&mut self.retain_available, property, boolean(property, v)?)
            }
            (id::MAXIMUM_PACKET_SIZE, Value::Four(v)) => once(
                &mut self.maximum_packet_size,
                property,
                nonzero_u32(property, v)?,
            ),
            (id::ASSIGNED_CLIENT_IDENTIFIER, Value::Text(v)) => {
                once(&mut self.assigned_client_identifier, property, v)
            }
            (id::TOPIC_ALIAS_MAXIMUM, Value::Two(v)) => {
                once(&mut self.topic_alias_maximum, property, v)
            }
            (id::REASON_STRING, Value::Text(v)) => once(&mut self.reason_string, property, v),
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            (id::WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => once(
                &mut self.wildcard_subscription_available,
                property,
                boolean(property, v)?,
            ),
            (id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(v)) => once(
                &mut self.subscription_identifiers_available,
                property,
                boolean(property, v)?,
            ),
            (id::SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => once(
                &mut self.shared_subscription_available,
                property,
                boolean(property, v)?,
            ),
            (id::SERVER_KEEP_ALIVE, Value::Two(v)) => {
                once(&mut self.server_keep_alive, property, v)
            }
            (id::RESPONSE_INFORMATION, Value::Text(v)) => {
                once(&mut self.response_information, property, v)
            }
            (id::SERVER_REFERENCE, Value::Text(v)) => once(&mut self.server_reference, property, v),
            (id::AUTHENTICATION_METHOD, Value::Text(v)) => {
                once(&mut self.authentication_method, property, v)
            }
            (id::AUTHENTICATION_DATA, Value::Binary(v)) => {
                once(&mut self.authentication_data, property, v)
            }
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        if self.maximum_qos == Some(QoS::ExactlyOnce) {
            return Err(EncodeError::InvalidPropertyValue {
                property: id::MAXIMUM_QOS,
            });
        }
        sink.opt_four(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        sink.opt_two_nonzero(id::RECEIVE_MAXIMUM, self.receive_maximum)?;
        sink.opt_byte(id::MAXIMUM_QOS, self.maximum_qos.map(|qos| qos as u8));
        sink.opt_bool(id::RETAIN_AVAILABLE, self.retain_available);
        sink.opt_four_nonzero(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size)?;
        sink.opt_text(
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        )?;
        sink.opt_two(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        sink.opt_text(id::REASON_STRING, self.reason_string.as_deref())?;
        sink.user_properties(&self.user_properties)?;
        sink.opt_bool(
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        sink.opt_bool(
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        sink.opt_bool(
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        sink.opt_two(id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        sink.opt_text(
            id::RESPONSE_INFORMATION,
            self.response_information.as_deref(),
        )?;
        sink.opt_text(id::SERVER_REFERENCE, self.server_reference.as_deref())?;
        sink.opt_text(
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        sink.opt_binary(id::AUTHENTICATION_DATA, self.authentication_data.as_ref())
    }
}

impl PropertySet for PublishProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => once(
                &mut self.payload_format_indicator,
                property,
                payload_format(v)?,
            ),
            (id::MESSAGE_EXPIRY_INTERVAL, Value::Four(v)) => {
                once(&mut self.message_expiry_interval, property, v)
            }
            (id::TOPIC_ALIAS, Value::Two(v)) => {
                if v == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                once(&mut self.topic_alias, property, v)
            }
            (id::RESPONSE_TOPIC, Value::Text(v)) => once(&mut self.response_topic, property, v),
            (id::CORRELATION_DATA, Value::Binary(v)) => {
                once(&mut self.correlation_data, property, v)
            }
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            (id::SUBSCRIPTION_IDENTIFIER, Value::Variable(v)) => {
                self.subscription_identifiers
                    .push(nonzero_u32(property, v)?);
                Ok(true)
            }
            (id::CONTENT_TYPE, Value::Text(v)) => once(&mut self.content_type, property, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        sink.opt_payload_format(self.payload_format_indicator)?;
        sink.opt_four(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        sink.opt_two_nonzero(id::TOPIC_ALIAS, self.topic_alias)?;
        sink.opt_text(id::RESPONSE_TOPIC, self.response_topic.as_deref())?;
        sink.opt_binary(id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        sink.user_properties(&self.user_properties)?;
        for &identifier in &self.subscription_identifiers {
            sink.variable(id::SUBSCRIPTION_IDENTIFIER, identifier)?;
        }
        sink.opt_text(id::CONTENT_TYPE, self.content_type.as_deref())
    }
}

impl PropertySet for AckProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::REASON_STRING, Value::Text(v)) => once(&mut self.reason_string, property, v),
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        sink.opt_text(id::REASON_STRING, self.reason_string.as_deref())?;
        sink.user_properties(&self.user_properties)
    }
}

impl AckProperties {
    /// Whether nothing would be written, which lets acks use their short forms.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl PropertySet for SubscribeProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::SUBSCRIPTION_IDENTIFIER, Value::Variable(v)) => once(
                &mut self.subscription_identifier,
                property,
                nonzero_u32(property, v)?,
            ),
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        if let Some(identifier) = self.subscription_identifier {
            sink.variable(id::SUBSCRIPTION_IDENTIFIER, identifier)?;
        }
        sink.user_properties(&self.user_properties)
    }
}

impl PropertySet for UnsubscribeProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        sink.user_properties(&self.user_properties)
    }
}

impl PropertySet for DisconnectProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::SESSION_EXPIRY_INTERVAL, Value::Four(v)) => {
                once(&mut self.session_expiry_interval, property, v)
            }
            (id::REASON_STRING, Value::Text(v)) => once(&mut self.reason_string, property, v),
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            (id::SERVER_REFERENCE, Value::Text(v)) => once(&mut self.server_reference, property, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        sink.opt_four(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        sink.opt_text(id::REASON_STRING, self.reason_string.as_deref())?;
        sink.user_properties(&self.user_properties)?;
        sink.opt_text(id::SERVER_REFERENCE, self.server_reference.as_deref())
    }
}

impl DisconnectProperties {
    /// Whether nothing would be written, which lets DISCONNECT use its short forms.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl PropertySet for AuthProperties {
    fn apply(&mut self, property: u8, value: Value) -> Result<bool, DecodeError> {
        match (property, value) {
            (id::AUTHENTICATION_METHOD, Value::Text(v)) => {
                once(&mut self.authentication_method, property, v)
            }
            (id::AUTHENTICATION_DATA, Value::Binary(v)) => {
                once(&mut self.authentication_data, property, v)
            }
            (id::REASON_STRING, Value::Text(v)) => once(&mut self.reason_string, property, v),
            (id::USER_PROPERTY, Value::Pair(k, v)) => push_pair(&mut self.user_properties, k, v),
            _ => Ok(false),
        }
    }

    fn visit(&self, sink: &mut Sink<'_>) -> Result<(), EncodeError> {
        sink.opt_text(
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        sink.opt_binary(id::AUTHENTICATION_DATA, self.authentication_data.as_ref())?;
        sink.opt_text(id::REASON_STRING, self.reason_string.as_deref())?;
        sink.user_properties(&self.user_properties)
    }
}

impl AuthProperties {
    /// Whether nothing would be written, which lets AUTH use its empty form.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
