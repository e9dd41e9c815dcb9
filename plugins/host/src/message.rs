//! What a `handle` reports besides its outcomes, and what a route publishes back, as Rust
//! types (the WIT types stay inside this crate; the messages and outcomes are iothub-model's).

use bytes::Bytes;
use iothub_model::{Outcome, TopicName};

/// The kind of a capability call that failed during a `handle`: what the runtime turns into
/// hub events (the reference's S3 write and database connect/prepare/execute errors, and the
/// HTTP ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The call was outside the route's grants; nothing was sent.
    Denied,
    HttpInvalid,
    HttpConnect,
    HttpTimeout,
    DatabaseConnect,
    DatabasePrepare,
    DatabaseExecute,
    S3Write,
    HubPublish,
}

/// One failed capability call, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// The answer of a successful `handle`: one outcome per message, in order, and the
/// capability calls that failed meanwhile (the component decided the outcomes anyway).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandleReport {
    pub outcomes: Vec<Outcome>,
    pub failures: Vec<CapabilityFailure>,
}

/// A message a route publishes back into its hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishBack {
    pub topic: TopicName,
    pub payload: Bytes,
    /// 0 or 1.
    pub qos: u8,
    pub retain: bool,
}
