use bytes::Bytes;

use crate::{ClientId, NetworkId, QoS, TopicName};

/// Where a message entered the hub. Routes never receive hub events they caused themselves,
/// and metrics and events name the origin, so every message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An MQTT client of the hub (a device or an anonymous client).
    Client(ClientId),
    /// The hub itself: events, `$SYS`.
    Hub,
    /// A device-unaware network of the hub (REST, SigFox, LoRaWAN ingress over HTTP).
    Network(NetworkId),
}

/// The MQTT 5 properties that travel with an application message from publisher to
/// subscribers. MQTT 3.1.1 messages have them all at their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator as the publisher sent it: `None` = absent, `Some(false)` = 0
    /// (unspecified bytes), `Some(true)` = 1 (UTF-8 text). Forwarded unaltered [MQTT-3.3.2-4].
    pub payload_is_utf8: Option<bool>,
    /// Message Expiry Interval in seconds, as the publisher set it.
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// An application message inside the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: MessageProperties,
    pub origin: Origin,
}

impl Message {
    /// Bytes this message holds in memory, as counted against a hub's budget: topic, payload
    /// and the variable-size properties.
    pub fn weight(&self) -> usize {
        let p = &self.properties;
        self.topic.as_str().len()
            + self.payload.len()
            + p.content_type.as_ref().map_or(0, String::len)
            + p.response_topic.as_ref().map_or(0, |t| t.as_str().len())
            + p.correlation_data.as_ref().map_or(0, Bytes::len)
            + p.user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_counts_topic_payload_and_properties() {
        let m = Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "vv".into())],
                ..Default::default()
            },
            origin: Origin::Hub,
        };
        assert_eq!(m.weight(), 3 + 5 + 10 + 3);
    }
}
