//! Wire (codec) types to domain (model/engine) types and back. The codec and the model each
//! have their own `QoS` on purpose: the wire and the domain evolve separately, and this is
//! the one place that maps them.

use iothub_model::{MessageProperties, QoS, TopicName};
use iothub_mqtt_codec as codec;

pub fn qos_in(q: codec::QoS) -> QoS {
    match q {
        codec::QoS::AtMostOnce => QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub fn qos_out(q: QoS) -> codec::QoS {
    match q {
        QoS::AtMostOnce => codec::QoS::AtMostOnce,
        QoS::AtLeastOnce => codec::QoS::AtLeastOnce,
        QoS::ExactlyOnce => codec::QoS::ExactlyOnce,
    }
}

pub fn retain_handling_in(r: codec::RetainHandling) -> iothub_engine::RetainHandling {
    match r {
        codec::RetainHandling::SendAtSubscribe => iothub_engine::RetainHandling::SendAtSubscribe,
        codec::RetainHandling::SendIfNewSubscription => {
            iothub_engine::RetainHandling::SendIfNewSubscription
        }
        codec::RetainHandling::DoNotSend => iothub_engine::RetainHandling::DoNotSend,
    }
}

/// A PUBLISH's or a will's properties that travel with the message. `None` when the response
/// topic is not a valid topic name (a protocol error for the caller to answer).
pub fn message_properties(
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<&String>,
    response_topic: Option<&String>,
    correlation_data: Option<&bytes::Bytes>,
    user_properties: &[(String, String)],
) -> Option<MessageProperties> {
    let response_topic = match response_topic {
        Some(t) => Some(TopicName::new(t).ok()?),
        None => None,
    };
    Some(MessageProperties {
        payload_is_utf8: payload_format_indicator.map(|i| i == 1),
        message_expiry_interval,
        content_type: content_type.cloned(),
        response_topic,
        correlation_data: correlation_data.cloned(),
        user_properties: user_properties.to_vec(),
    })
}

/// MQTT 3.1.1 CONNACK return code / MQTT 5 CONNACK reason code for an engine refusal, with
/// the reason string MQTT 5 clients get. Identity refusals are all 0x87 Not authorized
/// (3.1.1 return code 5); the string tells which rule refused.
pub fn connect_refusal(e: &iothub_engine::ConnectError) -> (codec::ReasonCode, &'static str) {
    use iothub_engine::ConnectError as E;
    match e {
        E::UnknownHub => (codec::ReasonCode::NOT_AUTHORIZED, "unknown hub"),
        E::HubDisabled => (
            codec::ReasonCode::SERVER_UNAVAILABLE,
            "the hub is not ready",
        ),
        E::ClientIdInvalid => (
            codec::ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifier not valid",
        ),
        E::NotAuthorized => (codec::ReasonCode::NOT_AUTHORIZED, "not authorized"),
        E::DeviceDisabled => (codec::ReasonCode::NOT_AUTHORIZED, "device disabled"),
        E::MutualTlsRequired => (codec::ReasonCode::NOT_AUTHORIZED, "mutual TLS required"),
        E::CertificateNotCurrent => (
            codec::ReasonCode::NOT_AUTHORIZED,
            "the certificate is not the device's current one",
        ),
        E::CertificateOtherHub => (
            codec::ReasonCode::NOT_AUTHORIZED,
            "the certificate belongs to another hub",
        ),
        E::CleanStartRequired => (
            codec::ReasonCode::NOT_AUTHORIZED,
            "the hub's plan requires clean start and no session expiry",
        ),
        E::QuotaExceeded => (codec::ReasonCode::QUOTA_EXCEEDED, "quota exceeded"),
        E::QosNotSupported => (
            codec::ReasonCode::QOS_NOT_SUPPORTED,
            "will QoS not supported",
        ),
        E::RetainNotSupported => (
            codec::ReasonCode::RETAIN_NOT_SUPPORTED,
            "retained wills are not supported",
        ),
        E::PayloadTooLarge => (
            codec::ReasonCode::PACKET_TOO_LARGE,
            "will payload too large",
        ),
    }
}

pub fn kick_reason(k: iothub_engine::KickReason) -> codec::ReasonCode {
    use iothub_engine::KickReason as K;
    match k {
        K::SessionTakenOver => codec::ReasonCode::SESSION_TAKEN_OVER,
        K::AdministrativeAction => codec::ReasonCode::ADMINISTRATIVE_ACTION,
        K::ServerShuttingDown => codec::ReasonCode::SERVER_SHUTTING_DOWN,
        K::QuotaExceeded => codec::ReasonCode::QUOTA_EXCEEDED,
    }
}
