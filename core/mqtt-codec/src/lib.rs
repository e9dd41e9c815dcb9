//! I/O-free MQTT 3.1.1 and 5.0 encoder and decoder.
//!
//! The broker's hot path starts here, so the codec is built to do as little as possible per
//! packet: [`decode`] looks at the fixed header first (type, flags, remaining length, the
//! receiver's maximum packet size) and returns `Ok(None)` without allocating while a packet is
//! incomplete; a complete packet is split off the read buffer and frozen, so payloads and binary
//! fields are `Bytes` slices of it, not copies. [`encode`] measures first ([`encoded_len`],
//! which also validates every field) and then writes into an exactly reserved buffer.
//!
//! Everything the specs call a Malformed Packet or a Protocol Error that can be seen in one
//! packet is a typed [`DecodeError`] mapped to its reason code. Rules that need state or topic
//! semantics (wildcards in a PUBLISH topic, topic alias ranges, a second CONNECT, packet id
//! reuse) belong to the engine and the adapter.
//!
//! Layout: `types` (version, QoS, packet type), `reason` (reason codes), `packet` (the packet
//! structs), `properties` (MQTT 5 properties), `wire` (integers, strings), `decode`, `encode`,
//! `error`.
//!
//! This crate must never depend on an async runtime, a socket or any other iothub crate: it
//! depends only on `bytes` and `thiserror`, so it can be fuzzed and reused by clients (the load
//! generator) as well as by the broker.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
mod types;
mod wire;

pub use decode::decode;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PubResponse, Publish, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
    id as property_id,
};
pub use reason::ReasonCode;
pub use types::{PacketType, ProtocolVersion, QoS, RetainHandling};
