//! The API's error answers: `{"message","type","details"}` in the reference's shape, one
//! HTTP status per kind of mistake.
//!
//! Registry errors map one to one ([`RegistryError`] already names the field, the
//! resource or the quota); the HTTP layer adds its own for what never reaches the
//! registry: a body that is not JSON, a query value that does not parse, a missing key.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::RegistryError;

/// Why a request was refused. Every variant becomes one JSON error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_arguments`: a body field, query parameter, path segment or header.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        field: String,
        reason: String,
        help: String,
    },
    /// 401 `denied_authentication`.
    #[error("authentication denied: {reason}")]
    Unauthenticated { reason: &'static str },
    /// 404 `not_found` for a path this API does not have.
    #[error("no such path: {path}")]
    NoSuchPath { path: String },
    /// 405 `method_not_allowed`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413 `invalid_request`: a body beyond the limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// 412 `precondition_failed`: an `If-Match` that cannot match any version.
    #[error("If-Match {value:?} matches no version of the resource")]
    UnmatchableEtag { value: String },
    /// 500: something this layer cannot explain to the client (logged, not shown).
    #[error("internal error: {0}")]
    Internal(String),
    /// Whatever the registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ApiError {
    pub fn invalid(
        field: impl Into<String>,
        reason: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
            help: help.into(),
        }
    }
}

/// One entry of `details`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Detail {
    Argument {
        argument_name: String,
        reason: String,
        help_message: String,
    },
    Quota {
        resource: &'static str,
        current: u64,
        quota: u64,
    },
}

/// The error body. `resource`/`resource_id` (not found) and `precondition`/`help_message`
/// (precondition failed) sit at the top level, where the reference puts them.
#[derive(Debug, Serialize)]
struct ErrorBody {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    details: Vec<Detail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precondition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    help_message: Option<String>,
}

impl ErrorBody {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
            details: Vec::new(),
            resource: None,
            resource_id: None,
            precondition: None,
            help_message: None,
        }
    }

    fn argument(field: String, reason: String, help: String) -> Self {
        Self {
            details: vec![Detail::Argument {
                argument_name: field,
                reason,
                help_message: help,
            }],
            ..Self::new("invalid_arguments", "invalid argument(s)")
        }
    }

    fn precondition(precondition: &'static str, message: String, help: &str) -> Self {
        Self {
            precondition: Some(precondition),
            help_message: Some(help.to_owned()),
            ..Self::new("precondition_failed", message)
        }
    }
}

/// The ETag help shared by every stale `If-Match` answer.
const STALE_HELP: &str = "read the resource again (GET) and retry with its current ETag";

fn registry_error(e: RegistryError) -> (StatusCode, ErrorBody) {
    match e {
        RegistryError::InvalidArgument {
            field,
            reason,
            help,
        } => (
            StatusCode::BAD_REQUEST,
            ErrorBody::argument(field, reason, help),
        ),
        RegistryError::NotFound { resource, id } => (
            StatusCode::NOT_FOUND,
            ErrorBody {
                resource: Some(resource.to_owned()),
                resource_id: Some(id),
                ..ErrorBody::new("not_found", format!("{resource} is not found"))
            },
        ),
        RegistryError::QuotaExceeded {
            resource,
            current,
            quota,
        } => (
            StatusCode::FORBIDDEN,
            ErrorBody {
                details: vec![Detail::Quota {
                    resource,
                    current,
                    quota,
                }],
                ..ErrorBody::new(
                    "quotas_exceeded",
                    format!("quota exceeded for {resource}: {current} of {quota} used"),
                )
            },
        ),
        RegistryError::AlreadyExists { resource, field } => (
            StatusCode::CONFLICT,
            ErrorBody {
                details: vec![Detail::Argument {
                    argument_name: field.to_owned(),
                    reason: format!("a {resource} with this {field} already exists"),
                    help_message: format!("choose another {field}"),
                }],
                ..ErrorBody::new("conflict", format!("the {resource} already exists"))
            },
        ),
        e @ RegistryError::Conflict { .. } => (
            StatusCode::CONFLICT,
            ErrorBody::new("conflict", e.to_string()),
        ),
        e @ RegistryError::PreconditionFailed { .. } => (
            StatusCode::PRECONDITION_FAILED,
            ErrorBody::precondition("etag_mismatch", e.to_string(), STALE_HELP),
        ),
        RegistryError::FailedPrecondition { message } => (
            StatusCode::PRECONDITION_FAILED,
            ErrorBody::precondition(
                "resource_state",
                message,
                "change the resource's state first, as the message says",
            ),
        ),
        RegistryError::Denied { message } => (
            StatusCode::FORBIDDEN,
            ErrorBody::new("permission_denied", message),
        ),
        e @ (RegistryError::Store(_) | RegistryError::Entropy(_) | RegistryError::Pki(_)) => {
            internal(&e.to_string())
        }
    }
}

fn internal(cause: &str) -> (StatusCode, ErrorBody) {
    tracing::error!(message = "management API request failed", error = cause);
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorBody::new(
            "internal_error",
            "internal error; the server log has the cause",
        ),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::InvalidArgument {
                field,
                reason,
                help,
            } => (
                StatusCode::BAD_REQUEST,
                ErrorBody::argument(field, reason, help),
            ),
            Self::Unauthenticated { reason } => (
                StatusCode::UNAUTHORIZED,
                ErrorBody {
                    details: vec![Detail::Argument {
                        argument_name: "X-Auth-Token".to_owned(),
                        reason: reason.to_owned(),
                        help_message: "send an API key of your account in the X-Auth-Token header"
                            .to_owned(),
                    }],
                    ..ErrorBody::new("denied_authentication", "authentication is denied")
                },
            ),
            Self::NoSuchPath { path } => (
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", format!("no such path: {path}")),
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody::new(
                    "method_not_allowed",
                    "this path does not answer that method; see /openapi.json",
                ),
            ),
            Self::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody::new("invalid_request", "the request body is too large"),
            ),
            e @ Self::UnmatchableEtag { .. } => (
                StatusCode::PRECONDITION_FAILED,
                ErrorBody::precondition("etag_mismatch", e.to_string(), STALE_HELP),
            ),
            Self::Internal(cause) => internal(&cause),
            Self::Registry(e) => registry_error(e),
        };
        (status, Json(body)).into_response()
    }
}
