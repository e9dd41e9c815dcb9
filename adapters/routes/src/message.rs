//! What a route is given and what its target answers.

use bytes::Bytes;
use iothub_model::TopicName;

/// Where a message came from (the WIT world's `origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOrigin {
    Device(String),
    Network(String),
    Anonymous(String),
    Hub,
    Route(String),
}

/// One hub message in a route's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    /// 0, 1 or 2, as published.
    pub qos: u8,
    /// As published (the tap subscribes with Retain As Published).
    pub retain: bool,
    pub origin: RouteOrigin,
    /// When the route's tap took it, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Not delivered, worth retrying (unreachable, 5xx, timeout).
    Retry(String),
    /// Not delivered and never will be: dead-lettered now.
    Reject(String),
}

/// The class of a failure the target saw while delivering: which hub event it raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Http,
    S3Write,
    DatabaseConnect,
    DatabasePrepare,
    DatabaseExecute,
    /// The component itself (trap, deadline, memory, wrong outcome count, a capability call
    /// outside its grants).
    Component,
}

/// One failure seen during a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// The answer of a delivery that ran: one outcome per message, in order, and the failures
/// seen meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    pub outcomes: Vec<Outcome>,
    pub failures: Vec<Failure>,
}
