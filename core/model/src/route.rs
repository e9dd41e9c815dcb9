//! What a route is given and what it answers: the WIT world's `message`, `origin` and
//! `outcome` as Rust types, shared by the delivery runtime (which queues them) and the wasm
//! host (which hands them to a component), so neither maps one into the other.

use bytes::Bytes;

use crate::TopicName;

/// Where a message came from, as a route sees it (the WIT world's `origin`). Finer than
/// [`Origin`](crate::Origin): a client is a device, an anonymous client or a route
/// publishing back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOrigin {
    /// A registered device of the hub, by id.
    Device(String),
    /// A network of the hub (REST, SigFox, LoRaWAN), by id.
    Network(String),
    /// An anonymous MQTT client, by client id.
    Anonymous(String),
    /// The hub itself (events, `$SYS`).
    Hub,
    /// A route publishing back into the hub, by route id.
    Route(String),
}

/// One hub message in a route's queue, as the route's topic filter matched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    /// 0, 1 or 2, as published.
    pub qos: u8,
    /// As published (the tap subscribes with Retain As Published).
    pub retain: bool,
    pub origin: RouteOrigin,
    /// When the route's tap moved it into the route's queue, wall-clock milliseconds since
    /// the Unix epoch. Stored with the message, so retries and restarts keep it; not the
    /// publish time: a message that waited in the tap's session (route restarting, a
    /// retained message at subscribe) is stamped when it leaves it.
    pub timestamp_ms: u64,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 content type, when the publisher set one.
    pub content_type: Option<String>,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Not delivered, worth retrying (unreachable, 5xx, timeout); the reason.
    Retry(String),
    /// Not delivered and never will be: dead-lettered now; the reason.
    Reject(String),
}
