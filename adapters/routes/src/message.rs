//! What a route's target answers (the messages and their outcomes are iothub-model's).

use iothub_model::Outcome;

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
