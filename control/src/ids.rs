//! Ids of the control plane's records. They are validated UUID newtypes of `iothub-model`
//! (one definition for the whole workspace); this module re-exports them for the crate's
//! callers.

pub use iothub_model::{AccountId, ApiKeyId, IdError, NetworkId, RouteId};
