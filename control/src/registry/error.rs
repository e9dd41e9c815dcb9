//! [`RegistryError`]: one enum for every refusal, each variant one HTTP status.

use crate::pki::PkiError;
use crate::secret::EntropyError;
use crate::store::StoreError;
use crate::validate::Invalid;

/// Why a registry call failed; each variant is one HTTP status for the API.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 400 `invalid_arguments`.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        field: String,
        reason: String,
        help: String,
    },
    /// 404 `not_found` (also for another account's ids).
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    /// 403 `quotas_exceeded`.
    #[error("quota exceeded for {resource}: {current} of {quota} used")]
    QuotaExceeded {
        resource: &'static str,
        current: u64,
        quota: u64,
    },
    /// 409 `conflict`: a unique field is taken.
    #[error("a {resource} with this {field} already exists")]
    AlreadyExists {
        resource: &'static str,
        field: &'static str,
    },
    /// 409 `conflict`: the record kept changing under an update without `If-Match`.
    #[error("{resource} {id} is being changed concurrently; retry")]
    Conflict { resource: &'static str, id: String },
    /// 412 `precondition_failed`: the `If-Match` version is stale.
    #[error("{resource} {id} is at version {current}, not {expected}")]
    PreconditionFailed {
        resource: &'static str,
        id: String,
        expected: i64,
        current: i64,
    },
    /// 412 `precondition_failed` in the reference's sense: the request is valid but the
    /// resource's state forbids it now (plan change on an enabled hub, hub with devices…).
    #[error("{message}")]
    FailedPrecondition { message: String },
    /// 403 `permission_denied`: authenticated, but not allowed (e.g. a non-admin creating
    /// an account).
    #[error("{message}")]
    Denied { message: String },
    /// 500: the database failed or holds something unreadable.
    #[error(transparent)]
    Store(StoreError),
    /// 500: no randomness for a secret.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// 500: a key or certificate could not be made (or a stored CA cannot sign).
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl From<Invalid> for RegistryError {
    fn from(i: Invalid) -> Self {
        Self::InvalidArgument {
            field: i.field,
            reason: i.reason,
            help: i.help,
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { resource, id } => Self::NotFound { resource, id },
            StoreError::VersionConflict { resource, id, .. } => Self::Conflict { resource, id },
            StoreError::Duplicate { resource, field } => Self::AlreadyExists { resource, field },
            StoreError::QuotaExceeded {
                resource,
                current,
                quota,
            } => Self::QuotaExceeded {
                resource,
                current,
                quota,
            },
            StoreError::UnsupportedOrder { resource, order_by } => Self::InvalidArgument {
                field: "order_by".into(),
                reason: format!("{resource}s cannot be ordered by {order_by}"),
                help: "see the API reference for the orders of this list".into(),
            },
            StoreError::HubHasDevices { hub, devices } => Self::FailedPrecondition {
                message: format!(
                    "hub {hub} still has {devices} device(s): delete them first, or delete the hub with delete_devices=true"
                ),
            },
            other => Self::Store(other),
        }
    }
}

pub(crate) fn invalid(
    field: &str,
    reason: impl Into<String>,
    help: impl Into<String>,
) -> RegistryError {
    RegistryError::InvalidArgument {
        field: field.to_owned(),
        reason: reason.into(),
        help: help.into(),
    }
}
