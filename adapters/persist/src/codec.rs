//! The byte layout of each [`JournalOp`]: one WAL record kind per operation, fields in a
//! fixed order, integers little-endian, strings and byte strings with a `u32` length, options
//! with a one-byte tag. Only this module knows it. Decoding checks everything it reads
//! (lengths, UTF-8, topic and id rules, QoS, tags, no trailing bytes): a record that passes
//! the WAL's CRC but not these checks (a bug, or a format from the future) is a
//! [`DecodeError`], never a panic.

use std::sync::Arc;

use bytes::Bytes;
use iothub_engine::{
    EntryId, JournalOp, MessageId, SessionOwner, SubscriptionOptions, WallMs, Will,
};
use iothub_model::{
    ClientId, DeviceId, HubId, Message, MessageProperties, NetworkId, Origin, QoS,
    SubscriptionFilter, TopicName,
};
use uuid::Uuid;

/// Why a record's payload is not an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record ends inside the {0} field")]
    Truncated(&'static str),
    #[error("{0} bytes after the last field")]
    TrailingBytes(usize),
    #[error("the {0} field is not UTF-8")]
    Utf8(&'static str),
    #[error("the {field} field is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the {field} field has the unknown tag {tag}")]
    Tag { field: &'static str, tag: u8 },
}

mod kind {
    pub const MESSAGE: u8 = 1;
    pub const RETAIN_SET: u8 = 2;
    pub const RETAIN_CLEAR: u8 = 3;
    pub const SESSION_UP: u8 = 4;
    pub const SESSION_DOWN: u8 = 5;
    pub const SESSION_END: u8 = 6;
    pub const SUBSCRIBE: u8 = 7;
    pub const UNSUBSCRIBE: u8 = 8;
    pub const QUEUE: u8 = 9;
    pub const UNQUEUE: u8 = 10;
    pub const SENT: u8 = 11;
    pub const ACKED: u8 = 12;
    pub const RECEIVED: u8 = 13;
    pub const INBOUND_QOS2: u8 = 14;
    pub const RELEASED: u8 = 15;
    pub const WILL_PENDING: u8 = 16;
    pub const WILL_CLEARED: u8 = 17;
    pub const HUB_CLEARED: u8 = 18;
}

/// Appends `op`'s payload to `out` and returns its record kind.
pub fn encode(op: &JournalOp, out: &mut Vec<u8>) -> u8 {
    let mut w = Writer(out);
    match op {
        JournalOp::Message { id, hub, message } => {
            w.hub(*hub);
            w.u64(id.0);
            w.message(message);
            kind::MESSAGE
        }
        JournalOp::RetainSet {
            hub,
            message,
            expires_at,
        } => {
            w.hub(*hub);
            w.u64(message.0);
            w.opt_u64(*expires_at);
            kind::RETAIN_SET
        }
        JournalOp::RetainClear { hub, topic } => {
            w.hub(*hub);
            w.str(topic.as_str());
            kind::RETAIN_CLEAR
        }
        JournalOp::SessionUp {
            hub,
            client,
            owner,
            expiry_secs,
        } => {
            w.session(*hub, client);
            match owner {
                SessionOwner::Anonymous => w.u8(0),
                SessionOwner::Device(d) => {
                    w.u8(1);
                    w.uuid(d.as_uuid());
                }
                SessionOwner::Route => w.u8(2),
            }
            w.u32(*expiry_secs);
            kind::SESSION_UP
        }
        JournalOp::SessionDown {
            hub,
            client,
            at,
            expiry_secs,
        } => {
            w.session(*hub, client);
            w.u64(*at);
            w.u32(*expiry_secs);
            kind::SESSION_DOWN
        }
        JournalOp::SessionEnd { hub, client } => {
            w.session(*hub, client);
            kind::SESSION_END
        }
        JournalOp::Subscribe {
            hub,
            client,
            filter,
            options,
        } => {
            w.session(*hub, client);
            w.str(&filter.to_string());
            w.u8(options.qos as u8);
            w.u8(u8::from(options.no_local) | (u8::from(options.retain_as_published) << 1));
            w.opt_u32(options.subscription_id);
            kind::SUBSCRIBE
        }
        JournalOp::Unsubscribe {
            hub,
            client,
            filter,
        } => {
            w.session(*hub, client);
            w.str(&filter.to_string());
            kind::UNSUBSCRIBE
        }
        JournalOp::Queue {
            hub,
            client,
            entry,
            message,
            qos,
            retain,
            subscription_ids,
            expires_at,
        } => {
            w.session(*hub, client);
            w.u64(entry.0);
            w.u64(message.0);
            w.u8(*qos as u8);
            w.u8(u8::from(*retain));
            w.len(subscription_ids.len());
            for id in subscription_ids {
                w.u32(*id);
            }
            w.opt_u64(*expires_at);
            kind::QUEUE
        }
        JournalOp::Unqueue { hub, client, entry } => {
            w.session(*hub, client);
            w.u64(entry.0);
            kind::UNQUEUE
        }
        JournalOp::Sent {
            hub,
            client,
            entry,
            packet_id,
        } => {
            w.session(*hub, client);
            w.u64(entry.0);
            w.u16(*packet_id);
            kind::SENT
        }
        JournalOp::Acked {
            hub,
            client,
            packet_id,
        } => w.packet(*hub, client, *packet_id, kind::ACKED),
        JournalOp::Received {
            hub,
            client,
            packet_id,
        } => w.packet(*hub, client, *packet_id, kind::RECEIVED),
        JournalOp::InboundQos2 {
            hub,
            client,
            packet_id,
        } => w.packet(*hub, client, *packet_id, kind::INBOUND_QOS2),
        JournalOp::Released {
            hub,
            client,
            packet_id,
        } => w.packet(*hub, client, *packet_id, kind::RELEASED),
        JournalOp::WillPending {
            hub,
            client,
            will,
            due,
        } => {
            w.session(*hub, client);
            w.u32(will.delay_secs);
            w.u64(*due);
            w.message(&will.message);
            kind::WILL_PENDING
        }
        JournalOp::WillCleared { hub, client } => {
            w.session(*hub, client);
            kind::WILL_CLEARED
        }
        JournalOp::HubCleared { hub } => {
            w.hub(*hub);
            kind::HUB_CLEARED
        }
    }
}

/// The operation a record of `kind` holds.
pub fn decode(kind: u8, payload: &[u8]) -> Result<JournalOp, DecodeError> {
    let mut r = Reader(payload);
    let op = match kind {
        kind::MESSAGE => {
            let hub = r.hub()?;
            let id = MessageId(r.u64("message id")?);
            let message = Arc::new(r.message()?);
            JournalOp::Message { id, hub, message }
        }
        kind::RETAIN_SET => JournalOp::RetainSet {
            hub: r.hub()?,
            message: MessageId(r.u64("message id")?),
            expires_at: r.opt_u64("expires at")?,
        },
        kind::RETAIN_CLEAR => JournalOp::RetainClear {
            hub: r.hub()?,
            topic: r.topic("topic")?,
        },
        kind::SESSION_UP => {
            let (hub, client) = r.session()?;
            let owner = match r.u8("owner")? {
                0 => SessionOwner::Anonymous,
                1 => SessionOwner::Device(DeviceId::from_uuid(r.uuid("device id")?)),
                2 => SessionOwner::Route,
                tag => {
                    return Err(DecodeError::Tag {
                        field: "owner",
                        tag,
                    });
                }
            };
            JournalOp::SessionUp {
                hub,
                client,
                owner,
                expiry_secs: r.u32("expiry")?,
            }
        }
        kind::SESSION_DOWN => {
            let (hub, client) = r.session()?;
            JournalOp::SessionDown {
                hub,
                client,
                at: r.u64("disconnected at")?,
                expiry_secs: r.u32("expiry")?,
            }
        }
        kind::SESSION_END => {
            let (hub, client) = r.session()?;
            JournalOp::SessionEnd { hub, client }
        }
        kind::SUBSCRIBE => {
            let (hub, client) = r.session()?;
            let filter = r.filter()?;
            let qos = r.qos()?;
            let flags = r.u8("subscription flags")?;
            if flags > 3 {
                return Err(DecodeError::Tag {
                    field: "subscription flags",
                    tag: flags,
                });
            }
            JournalOp::Subscribe {
                hub,
                client,
                filter,
                options: SubscriptionOptions {
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    subscription_id: r.opt_u32("subscription id")?,
                },
            }
        }
        kind::UNSUBSCRIBE => {
            let (hub, client) = r.session()?;
            JournalOp::Unsubscribe {
                hub,
                client,
                filter: r.filter()?,
            }
        }
        kind::QUEUE => {
            let (hub, client) = r.session()?;
            let entry = EntryId(r.u64("entry id")?);
            let message = MessageId(r.u64("message id")?);
            let qos = r.qos()?;
            let retain = r.bool("retain")?;
            let n = r.u32("subscription ids")? as usize;
            let mut subscription_ids = Vec::with_capacity(n.min(r.0.len() / 4));
            for _ in 0..n {
                subscription_ids.push(r.u32("subscription id")?);
            }
            JournalOp::Queue {
                hub,
                client,
                entry,
                message,
                qos,
                retain,
                subscription_ids,
                expires_at: r.opt_u64("expires at")?,
            }
        }
        kind::UNQUEUE => {
            let (hub, client) = r.session()?;
            JournalOp::Unqueue {
                hub,
                client,
                entry: EntryId(r.u64("entry id")?),
            }
        }
        kind::SENT => {
            let (hub, client) = r.session()?;
            JournalOp::Sent {
                hub,
                client,
                entry: EntryId(r.u64("entry id")?),
                packet_id: r.packet_id()?,
            }
        }
        kind::ACKED => {
            let (hub, client, packet_id) = r.packet()?;
            JournalOp::Acked {
                hub,
                client,
                packet_id,
            }
        }
        kind::RECEIVED => {
            let (hub, client, packet_id) = r.packet()?;
            JournalOp::Received {
                hub,
                client,
                packet_id,
            }
        }
        kind::INBOUND_QOS2 => {
            let (hub, client, packet_id) = r.packet()?;
            JournalOp::InboundQos2 {
                hub,
                client,
                packet_id,
            }
        }
        kind::RELEASED => {
            let (hub, client, packet_id) = r.packet()?;
            JournalOp::Released {
                hub,
                client,
                packet_id,
            }
        }
        kind::WILL_PENDING => {
            let (hub, client) = r.session()?;
            let delay_secs = r.u32("will delay")?;
            let due = r.u64("will due")?;
            let message = r.message()?;
            JournalOp::WillPending {
                hub,
                client,
                will: Will {
                    message,
                    delay_secs,
                },
                due,
            }
        }
        kind::WILL_CLEARED => {
            let (hub, client) = r.session()?;
            JournalOp::WillCleared { hub, client }
        }
        kind::HUB_CLEARED => JournalOp::HubCleared { hub: r.hub()? },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes(r.0.len()));
    }
    Ok(op)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A length; the engine's strings and payloads are far below 4 GiB (the WAL refuses
    /// records over 64 MiB anyway), so saturating never happens in practice.
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn uuid(&mut self, u: &Uuid) {
        self.0.extend_from_slice(u.as_bytes());
    }
    fn hub(&mut self, hub: HubId) {
        self.uuid(hub.as_uuid());
    }
    fn session(&mut self, hub: HubId, client: &ClientId) {
        self.hub(hub);
        self.str(client.as_str());
    }
    fn packet(&mut self, hub: HubId, client: &ClientId, packet_id: u16, kind: u8) -> u8 {
        self.session(hub, client);
        self.u16(packet_id);
        kind
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
        }
    }
    fn message(&mut self, m: &Message) {
        self.str(m.topic.as_str());
        self.bytes(&m.payload);
        self.u8(m.qos as u8);
        self.u8(u8::from(m.retain));
        let p = &m.properties;
        self.u8(match p.payload_is_utf8 {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
        self.opt_u32(p.message_expiry_interval);
        self.opt_bytes(p.content_type.as_deref().map(str::as_bytes));
        self.opt_bytes(p.response_topic.as_ref().map(|t| t.as_str().as_bytes()));
        self.opt_bytes(p.correlation_data.as_deref());
        self.len(p.user_properties.len());
        for (k, v) in &p.user_properties {
            self.str(k);
            self.str(v);
        }
        match &m.origin {
            Origin::Client(c) => {
                self.u8(0);
                self.str(c.as_str());
            }
            Origin::Hub => self.u8(1),
            Origin::Network(n) => {
                self.u8(2);
                self.uuid(n.as_uuid());
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::Tag { field, tag }),
        }
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn tag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        self.bool(field)
    }
    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.u32(field)?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<WallMs>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.u64(field)?)
        } else {
            None
        })
    }
    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }
    fn opt_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.bytes(field)?)
        } else {
            None
        })
    }
    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| DecodeError::Utf8(field))
    }
    fn uuid(&mut self, field: &'static str) -> Result<Uuid, DecodeError> {
        Ok(Uuid::from_bytes(self.array(field)?))
    }
    fn hub(&mut self) -> Result<HubId, DecodeError> {
        Ok(HubId::from_uuid(self.uuid("hub id")?))
    }
    fn client(&mut self) -> Result<ClientId, DecodeError> {
        let s = self.str("client id")?;
        ClientId::new(s).map_err(|e| invalid("client id", e))
    }
    fn session(&mut self) -> Result<(HubId, ClientId), DecodeError> {
        Ok((self.hub()?, self.client()?))
    }
    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("packet id")? {
            0 => Err(DecodeError::Invalid {
                field: "packet id",
                reason: "0 is not a packet id".into(),
            }),
            id => Ok(id),
        }
    }
    fn packet(&mut self) -> Result<(HubId, ClientId, u16), DecodeError> {
        let (hub, client) = self.session()?;
        Ok((hub, client, self.packet_id()?))
    }
    fn topic(&mut self, field: &'static str) -> Result<TopicName, DecodeError> {
        TopicName::new(self.str(field)?).map_err(|e| invalid(field, e))
    }
    fn filter(&mut self) -> Result<SubscriptionFilter, DecodeError> {
        SubscriptionFilter::parse(self.str("filter")?).map_err(|e| invalid("filter", e))
    }
    fn qos(&mut self) -> Result<QoS, DecodeError> {
        let v = self.u8("qos")?;
        QoS::try_from(v).map_err(|_| DecodeError::Tag {
            field: "qos",
            tag: v,
        })
    }
    fn message(&mut self) -> Result<Message, DecodeError> {
        let topic = self.topic("topic")?;
        let payload = Bytes::copy_from_slice(self.bytes("payload")?);
        let qos = self.qos()?;
        let retain = self.bool("retain")?;
        let payload_is_utf8 = match self.u8("payload format")? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            tag => {
                return Err(DecodeError::Tag {
                    field: "payload format",
                    tag,
                });
            }
        };
        let message_expiry_interval = self.opt_u32("message expiry")?;
        let content_type = self
            .opt_bytes("content type")?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8("content type")))
            .transpose()?;
        let response_topic = match self.opt_bytes("response topic")? {
            None => None,
            Some(b) => {
                let s = std::str::from_utf8(b).map_err(|_| DecodeError::Utf8("response topic"))?;
                Some(TopicName::new(s).map_err(|e| invalid("response topic", e))?)
            }
        };
        let correlation_data = self
            .opt_bytes("correlation data")?
            .map(Bytes::copy_from_slice);
        let n = self.u32("user properties")? as usize;
        let mut user_properties = Vec::with_capacity(n.min(self.0.len() / 8));
        for _ in 0..n {
            let k = self.str("user property")?.to_string();
            let v = self.str("user property")?.to_string();
            user_properties.push((k, v));
        }
        let origin = match self.u8("origin")? {
            0 => Origin::Client(self.client()?),
            1 => Origin::Hub,
            2 => Origin::Network(NetworkId::from_uuid(self.uuid("network id")?)),
            tag => {
                return Err(DecodeError::Tag {
                    field: "origin",
                    tag,
                });
            }
        };
        Ok(Message {
            topic,
            payload,
            qos,
            retain,
            properties: MessageProperties {
                payload_is_utf8,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
            origin,
        })
    }
}

fn invalid(field: &'static str, e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: e.to_string(),
    }
}
