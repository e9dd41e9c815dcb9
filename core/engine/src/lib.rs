//! The broker engine (skeleton: implementation follows).
//!
//! It must never do I/O: no sockets, no wire format (it does not depend on the codec), no
//! TLS, HTTP or wasm.

mod clock;
mod engine;
mod hub;
mod metrics;
mod retained;
mod session;
mod state;
mod trie;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    ConnectError, ConnectRequest, Connected, DroppedCounts, Engine, EngineConfig, EngineError,
    HubCaps, HubSpec, HubStats, Identity, Will,
};
pub use session::{
    DisconnectKind, KickReason, Outgoing, OutgoingPublish, PublishAck, PublishError,
    RetainHandling, Session, SubscribeError, SubscribeRequest,
};
