//! [`Session`]: the handle one connection task holds, and the types of its operations.

use std::sync::Arc;

use iothub_model::{ClientId, HubId, Message, QoS, SubscriptionFilter};

/// The result of an accepted PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishAck {
    /// Routed. `matched = false` lets MQTT 5 PUBACK/PUBREC say 0x10 No matching subscribers.
    Delivered { matched: bool },
    /// A QoS 2 PUBLISH whose packet id still awaits PUBREL: not routed again; answer PUBREC
    /// 0x00 ([MQTT-4.3.3-9]).
    Duplicate,
}

/// Why a PUBLISH is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("payload larger than the hub accepts")]
    PayloadTooLarge,
    #[error("the hub does not support retained messages")]
    RetainNotSupported,
    #[error("the hub does not support this QoS")]
    QosNotSupported,
    #[error("not authorized to publish to this topic")]
    NotAuthorized,
    #[error("the hub's budget is exhausted")]
    QuotaExceeded,
    #[error("the packet id awaits PUBREL of a QoS 2 message")]
    PacketIdInUse,
    #[error("more QoS 2 messages awaiting PUBREL than the hub's receive maximum")]
    ReceiveMaximumExceeded,
}

/// MQTT 5 Retain Handling (3.1.1 subscriptions use `SendAtSubscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe,
    SendIfNewSubscription,
    DoNotSend,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub filter: SubscriptionFilter,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    pub subscription_id: Option<u32>,
}

/// Why one filter of a SUBSCRIBE is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("not authorized to subscribe to this filter")]
    NotAuthorized,
    #[error("the hub does not support this QoS")]
    QosNotSupported,
    #[error("the hub does not support shared subscriptions")]
    SharedNotSupported,
    #[error("the hub does not support wildcard subscriptions")]
    WildcardNotSupported,
    #[error("the hub does not support subscription identifiers")]
    SubscriptionIdsNotSupported,
    #[error("quota exceeded")]
    QuotaExceeded,
}

/// How a connection ended, as the adapter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// DISCONNECT 0x00: the will is discarded [MQTT-3.1.2-10].
    Normal { session_expiry_secs: Option<u32> },
    /// MQTT 5 DISCONNECT 0x04: the will is published.
    WithWill { session_expiry_secs: Option<u32> },
    /// Network error, keep-alive timeout, protocol error, kicked: the will is published
    /// after its delay.
    Abnormal,
}

/// Why the engine ends a connection (server-sent DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Another connection with the same client id took the session over (0x8E).
    SessionTakenOver,
    /// The hub was removed or disabled (0x98).
    AdministrativeAction,
    /// The server is stopping (0x8B).
    ServerShuttingDown,
    /// The session's queue bound was reached by QoS 1/2 messages (0x97).
    QuotaExceeded,
}

/// One application message for the connection to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingPublish {
    /// Some for QoS 1/2.
    pub packet_id: Option<u16>,
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub message: Arc<Message>,
    /// Identifiers of every subscription of this session the message matched.
    pub subscription_ids: Vec<u32>,
    /// Message Expiry Interval left, in seconds, when the message had one [MQTT-3.3.2-6].
    pub message_expiry_remaining: Option<u32>,
}

/// Work for the connection task, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Publish(OutgoingPublish),
    /// Resend PUBREL for an outbound QoS 2 message (after reconnect).
    PubRel(u16),
    /// Close the connection with this reason; nothing follows.
    Disconnect(KickReason),
}

/// The session of one connection. Owned by that connection's task; not `Clone`.
/// Dropping it without [`Session::disconnect`] is `DisconnectKind::Abnormal`.
pub struct Session {
    client_id: ClientId,
    hub: HubId,
}

impl Session {
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn hub(&self) -> HubId {
        self.hub
    }

    /// An application message from this client. `packet_id` is Some for QoS 1/2.
    pub fn publish(
        &self,
        _message: Message,
        _packet_id: Option<u16>,
    ) -> Result<PublishAck, PublishError> {
        todo!()
    }

    /// PUBREL from the client: forgets the QoS 2 packet id. `false` = unknown id (PUBCOMP
    /// 0x92).
    pub fn release(&self, _packet_id: u16) -> bool {
        todo!()
    }

    pub fn subscribe(&self, _requests: &[SubscribeRequest]) -> Vec<Result<QoS, SubscribeError>> {
        todo!()
    }

    /// `true` per filter that existed.
    pub fn unsubscribe(&self, _filters: &[SubscriptionFilter]) -> Vec<bool> {
        todo!()
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for one of our outbound messages.
    pub fn acknowledge(&self, _packet_id: u16) -> bool {
        todo!()
    }

    /// PUBREC for our outbound QoS 2: the adapter answers PUBREL.
    pub fn received(&self, _packet_id: u16) -> bool {
        todo!()
    }

    /// Moves ready work to the connection, at most `max` items.
    pub fn poll_outgoing(&self, _out: &mut Vec<Outgoing>, _max: usize) {
        todo!()
    }

    /// Resolves when `poll_outgoing` has something new. Cancel-safe.
    pub async fn ready(&self) {
        todo!()
    }

    pub fn disconnect(self, _how: DisconnectKind) {
        todo!()
    }
}
