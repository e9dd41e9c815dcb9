//! iothub's domain types, shared by the engine, the adapters and the control plane.
//!
//! Everything here is plain data with validation at construction: ids and topics are
//! newtypes that cannot hold an invalid value, `QoS` is an enum, a [`Message`] carries its
//! payload as [`bytes::Bytes`] so that one publish fans out to many subscribers without a
//! copy. This crate must never depend on an async runtime, a socket, a wire format or any
//! other iothub crate: it is the bottom of the crate graph.

mod filters;
mod ids;
mod message;
mod plan;
mod qos;
mod route;
mod topic;

pub use filters::{
    CompiledFilters, CompiledRule, FilterError, FilterPolicy, FilterRule, MessageFilters,
    SubscriptionCheck, TemplateError, TemplateVars,
};
pub use ids::{AccountId, ApiKeyId, ClientId, DeviceId, HubId, IdError, NetworkId, RouteId};
pub use message::{Message, MessageProperties, Origin};
pub use plan::{HubLimits, Plan};
pub use qos::{InvalidQoS, QoS};
pub use route::{Outcome, RouteMessage, RouteOrigin};
pub use topic::{SubscriptionFilter, TopicError, TopicFilter, TopicName, filter_matches};
