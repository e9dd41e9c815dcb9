//! Every refusal of a network request: one status, one JSON error
//! `{"message","type","details"}` (the API's shape) and the kind of the hub event it raises.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iothub_engine::EventKind;
use serde_json::json;

/// Why a network request is refused. Nothing is published for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    #[error("missing or wrong X-Secret, or no such network")]
    Unauthorized,
    #[error("this endpoint is not for {kind} networks: {hint}")]
    WrongEndpoint { kind: &'static str, hint: String },
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("topic {0:?} is reserved to the hub")]
    ReservedTopic(String),
    #[error("invalid JSON body: {field}: {message}")]
    InvalidJson { field: String, message: String },
    #[error("invalid encoding of {field}: {message}")]
    InvalidEncoding { field: String, message: String },
    #[error(
        "unknown or missing event {0:?}; expected one of up, join, status, ack, txack, log, location"
    )]
    UnknownEvent(String),
    #[error("payload of {size} bytes is larger than the hub's limit of {max}")]
    PayloadTooLarge { size: usize, max: u32 },
    #[error("the hub is disabled")]
    HubDisabled,
    #[error("malformed PHYPayload: {0}")]
    MalformedPhy(String),
    #[error("unknown device: {0}")]
    UnknownDevice(String),
    #[error("invalid MIC: {0}")]
    InvalidMic(String),
    #[error(
        "replayed frame: device {dev_eui} frame counter {f_cnt} was already accepted (next accepted: {next})"
    )]
    ReplayedFrame {
        dev_eui: String,
        f_cnt: u32,
        next: u32,
    },
    #[error("replayed join-request: device {dev_eui} already joined with DevNonce {dev_nonce:04x}")]
    ReplayedJoin { dev_eui: String, dev_nonce: u16 },
    #[error("unsupported content type {0:?}; use application/octet-stream or application/json")]
    UnsupportedMediaType(String),
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::WrongEndpoint { .. } | Self::UnknownDevice(_) => StatusCode::NOT_FOUND,
            Self::InvalidTopic(_)
            | Self::InvalidJson { .. }
            | Self::InvalidEncoding { .. }
            | Self::UnknownEvent(_)
            | Self::MalformedPhy(_) => StatusCode::BAD_REQUEST,
            Self::ReservedTopic(_) => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HubDisabled | Self::ReplayedFrame { .. } | Self::ReplayedJoin { .. } => {
                StatusCode::CONFLICT
            }
            Self::InvalidMic(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `type` of the JSON error.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::WrongEndpoint { .. } => "not_found",
            Self::InvalidTopic(_) => "invalid_topic",
            Self::ReservedTopic(_) => "not_authorized",
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidEncoding { .. } => "invalid_encoding",
            Self::UnknownEvent(_) => "unknown_event",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::HubDisabled => "hub_disabled",
            Self::MalformedPhy(_) => "malformed_phy_payload",
            Self::UnknownDevice(_) => "unknown_device",
            Self::InvalidMic(_) => "invalid_mic",
            Self::ReplayedFrame { .. } => "replayed_frame",
            Self::ReplayedJoin { .. } => "replayed_join",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
        }
    }

    /// The hub event a refusal raises: undecodable input is a malformed packet, a topic the
    /// hub refuses an unauthorized topic, limits and a disabled hub their own kinds, the
    /// rest (secret, MIC, replay, unknown device or event) a protocol error.
    pub const fn event_kind(&self) -> EventKind {
        match self {
            Self::InvalidJson { .. }
            | Self::InvalidEncoding { .. }
            | Self::MalformedPhy(_)
            | Self::UnsupportedMediaType(_) => EventKind::MalformedPacket,
            Self::InvalidTopic(_) | Self::ReservedTopic(_) => EventKind::UnauthorizedTopic,
            Self::PayloadTooLarge { .. } => EventKind::QuotaExceeded,
            Self::HubDisabled => EventKind::HubNotReady,
            Self::Unauthorized
            | Self::WrongEndpoint { .. }
            | Self::UnknownEvent(_)
            | Self::UnknownDevice(_)
            | Self::InvalidMic(_)
            | Self::ReplayedFrame { .. }
            | Self::ReplayedJoin { .. } => EventKind::ProtocolError,
        }
    }

    pub(crate) fn json(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidJson {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn encoding(field: impl Into<String>, message: impl ToString) -> Self {
        Self::InvalidEncoding {
            field: field.into(),
            message: message.to_string(),
        }
    }

    fn details(&self) -> serde_json::Value {
        match self {
            Self::InvalidJson { field, .. } | Self::InvalidEncoding { field, .. } => {
                json!({ "field": field })
            }
            Self::PayloadTooLarge { size, max } => json!({ "size": size, "max": max }),
            Self::ReplayedFrame {
                dev_eui,
                f_cnt,
                next,
            } => json!({ "dev_eui": dev_eui, "f_cnt": f_cnt, "next": next }),
            Self::ReplayedJoin { dev_eui, dev_nonce } => {
                json!({ "dev_eui": dev_eui, "dev_nonce": format!("{dev_nonce:04x}") })
            }
            _ => json!({}),
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let body = json!({
            "message": self.to_string(),
            "type": self.kind(),
            "details": self.details(),
        });
        (self.status(), Json(body)).into_response()
    }
}
