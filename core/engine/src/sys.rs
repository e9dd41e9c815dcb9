//! `$SYS` topics: a dedicated or HA hub's own figures, published retained under
//! `$SYS/broker/...` with Mosquitto's names where one fits, so the tools people already point
//! at Mosquitto work here too. Shared hubs have none (the reference offers `$SYS` only on the
//! dedicated and HA plans).
//!
//! [`crate::Engine::tick`] publishes them every [`SYS_INTERVAL`] (the first time on the first
//! tick after the hub is created), each only when its value changed (the uptime always
//! does). They are kept beside the retained store, not in it: a new subscription to a
//! matching filter receives them like retained messages, but they are not counted as the
//! hub's retained messages nor held against its byte budget (a fixed handful of short
//! values per hub). Deliveries to subscribers are ordinary queue entries and do count.
//! Clients can never publish under `$SYS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iothub_model::{Message, MessageProperties, Origin, Plan, QoS, TopicFilter, TopicName};
use parking_lot::{Mutex, RwLock};

use crate::hub::Hub;

/// How often a hub's `$SYS` figures are refreshed.
pub const SYS_INTERVAL: Duration = Duration::from_secs(10);

/// The `$SYS/broker/version` value.
pub const SYS_VERSION: &str = concat!("iothub ", env!("CARGO_PKG_VERSION"));

/// One hub's `$SYS` state.
pub(crate) struct SysTopics {
    started: Instant,
    /// When the figures are next due; `None` = at the next tick.
    next: Mutex<Option<Instant>>,
    /// The figures last published, as retained messages.
    current: RwLock<Vec<Arc<Message>>>,
}

impl SysTopics {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            next: Mutex::new(None),
            current: RwLock::new(Vec::new()),
        }
    }
}

/// A hub's figures, as `$SYS` publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SysFigures {
    pub(crate) uptime_secs: u64,
    pub(crate) clients_connected: usize,
    pub(crate) clients_total: usize,
    pub(crate) subscriptions: usize,
    pub(crate) retained: usize,
    pub(crate) store_bytes: u64,
    pub(crate) publish_received: u64,
    pub(crate) publish_sent: u64,
}

impl SysFigures {
    /// `(topic, value)` of every figure.
    pub(crate) fn topics(&self) -> [(&'static str, String); 9] {
        [
            ("$SYS/broker/version", SYS_VERSION.to_string()),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.uptime_secs),
            ),
            (
                "$SYS/broker/clients/connected",
                self.clients_connected.to_string(),
            ),
            ("$SYS/broker/clients/total", self.clients_total.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                self.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained.to_string(),
            ),
            (
                "$SYS/broker/store/messages/bytes",
                self.store_bytes.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/received",
                self.publish_received.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                self.publish_sent.to_string(),
            ),
        ]
    }
}

impl Hub {
    /// Publishes the `$SYS` figures when they are due (dedicated and HA hubs); on the shared
    /// plan (a hub moved there) forgets them. Called by `Engine::tick` with no lock held.
    pub(crate) fn tick_sys(&self, now: Instant) {
        if self.config().plan == Plan::Shared {
            self.sys.current.write().clear();
            *self.sys.next.lock() = None;
            return;
        }
        {
            let mut next = self.sys.next.lock();
            if next.is_some_and(|at| now < at) {
                return;
            }
            *next = Some(now + SYS_INTERVAL);
        }
        let stats = self.stats();
        let (publish_received, publish_sent) =
            (self.metrics.received.get(), self.metrics.delivered.get());
        let figures = SysFigures {
            uptime_secs: now.saturating_duration_since(self.sys.started).as_secs(),
            clients_connected: stats.connected,
            clients_total: stats.sessions,
            subscriptions: stats.subscriptions,
            retained: stats.retained_messages,
            store_bytes: stats.budget_used_bytes,
            publish_received,
            publish_sent,
        };
        for (topic, value) in figures.topics() {
            let changed = {
                let current = self.sys.current.read();
                current
                    .iter()
                    .find(|m| m.topic.as_str() == topic)
                    .is_none_or(|m| m.payload != value.as_bytes())
            };
            if !changed {
                continue;
            }
            let Ok(topic) = TopicName::new(topic) else {
                continue;
            };
            let message = Arc::new(Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
                origin: Origin::Hub,
            });
            {
                let mut current = self.sys.current.write();
                match current.iter_mut().find(|m| m.topic == message.topic) {
                    Some(slot) => *slot = message.clone(),
                    None => current.push(message.clone()),
                }
            }
            self.route(&message, None, now);
        }
    }

    /// Calls `f` with each current `$SYS` figure `filter` matches, for a new subscription.
    pub(crate) fn for_each_sys(&self, filter: &TopicFilter, mut f: impl FnMut(&Arc<Message>)) {
        if self.config().plan == Plan::Shared {
            // Moved to the shared plan since the last tick, which forgets them.
            return;
        }
        let current = self.sys.current.read();
        for message in current.iter().filter(|m| filter.matches(&m.topic)) {
            f(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_have_mosquittos_names_and_plain_text_values() {
        let figures = SysFigures {
            uptime_secs: 42,
            clients_connected: 3,
            clients_total: 5,
            subscriptions: 7,
            retained: 2,
            store_bytes: 1024,
            publish_received: 11,
            publish_sent: 13,
        };
        let topics = figures.topics();
        // (topic, value)
        let cases = [
            ("$SYS/broker/version", SYS_VERSION),
            ("$SYS/broker/uptime", "42 seconds"),
            ("$SYS/broker/clients/connected", "3"),
            ("$SYS/broker/clients/total", "5"),
            ("$SYS/broker/subscriptions/count", "7"),
            ("$SYS/broker/retained messages/count", "2"),
            ("$SYS/broker/store/messages/bytes", "1024"),
            ("$SYS/broker/publish/messages/received", "11"),
            ("$SYS/broker/publish/messages/sent", "13"),
        ];
        for (topic, value) in cases {
            let found = topics.iter().find(|(t, _)| *t == topic);
            assert_eq!(found.map(|(_, v)| v.as_str()), Some(value), "{topic}");
        }
        for (topic, _) in &topics {
            assert!(TopicName::new(topic).is_ok(), "{topic}");
        }
    }
}
