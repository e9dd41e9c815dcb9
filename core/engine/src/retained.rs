//! The retained messages of one hub, stored in a trie indexed by topic level.
//!
//! A SUBSCRIBE walks only the branches its filter can match: an exact level follows one
//! child, `+` visits the children of one node, `#` visits one subtree. It never scans every
//! retained message of the hub. Empty nodes are removed when a message is deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use iothub_model::{Message, MessageProperties, TopicFilter};

use crate::trie::split_level;

/// A copy of `message` that owns its bytes. Payloads arrive as slices of a connection's
/// read buffer, and a slice keeps that whole buffer allocated: a retained message lives on
/// (for days), so a small one could hold kilobytes, or megabytes after a large packet, far
/// beyond the weight the budget counts. One copy when it is stored makes the store's
/// memory its weight plus a fixed overhead per message (the flood test measures it).
pub(crate) fn owned_copy(message: &Message) -> Message {
    let p = &message.properties;
    Message {
        payload: Bytes::copy_from_slice(&message.payload),
        properties: MessageProperties {
            correlation_data: p.correlation_data.as_deref().map(Bytes::copy_from_slice),
            ..p.clone()
        },
        ..message.clone()
    }
}

/// One retained message with what its accounting and expiry need.
#[derive(Debug, Clone)]
pub(crate) struct Retained {
    pub(crate) message: Arc<Message>,
    /// [`Message::weight`], counted against the hub budget while stored.
    pub(crate) weight: u64,
    /// When the publisher's Message Expiry Interval runs out [MQTT-3.3.2-5].
    pub(crate) expires_at: Option<Instant>,
    /// The hub timer that deletes it at expiry, cancelled when it is replaced or deleted.
    pub(crate) timer: Option<crate::state::TimerKey>,
    /// Its id in the journal, when one is attached.
    pub(crate) id: Option<crate::journal::MessageId>,
}

#[derive(Default)]
struct Node {
    /// Boxed: a level with many children (one per device) is a table of small slots, not of
    /// whole nodes at the table's load factor.
    children: HashMap<Box<str>, Box<Node>>,
    value: Option<Retained>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.value.is_none()
    }

    /// Visits the messages under this node matching the remaining filter `levels`.
    /// `root` tells whether this node is the root, where `$` topics are hidden from
    /// wildcards [MQTT-4.7.2-1]. Recursion depth is bounded by the store's depth.
    fn visit<'a>(&'a self, levels: &[&str], root: bool, f: &mut impl FnMut(&'a Retained)) {
        let Some((level, below)) = levels.split_first() else {
            if let Some(value) = &self.value {
                f(value);
            }
            return;
        };
        match *level {
            "#" => {
                // "a/#" also matches "a" itself.
                if let Some(value) = &self.value {
                    f(value);
                }
                for (name, child) in &self.children {
                    if !(root && name.starts_with('$')) {
                        child.visit_all(f);
                    }
                }
            }
            "+" => {
                for (name, child) in &self.children {
                    if !(root && name.starts_with('$')) {
                        child.visit(below, false, f);
                    }
                }
            }
            exact => {
                if let Some(child) = self.children.get(exact) {
                    child.visit(below, false, f);
                }
            }
        }
    }

    fn visit_all<'a>(&'a self, f: &mut impl FnMut(&'a Retained)) {
        if let Some(value) = &self.value {
            f(value);
        }
        for child in self.children.values() {
            child.visit_all(f);
        }
    }

    fn remove(&mut self, rest: &str) -> Option<Retained> {
        let (level, next) = split_level(rest);
        let child = self.children.get_mut(level)?;
        let removed = match next {
            None => child.value.take(),
            Some(next) => child.remove(next),
        };
        if child.is_empty() {
            self.children.remove(level);
        }
        removed
    }
}

/// Retained messages by topic, with their count and weight.
#[derive(Default)]
pub(crate) struct RetainedStore {
    root: Node,
    len: usize,
    bytes: u64,
}

impl RetainedStore {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Weight of every stored message.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Stores `value` under `topic` (at most [`crate::trie::MAX_TOPIC_LEVELS`] deep, checked
    /// by the caller); returns the message it replaces.
    pub(crate) fn set(&mut self, topic: &str, value: Retained) -> Option<Retained> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        self.bytes += value.weight;
        let old = node.value.replace(value);
        match &old {
            Some(old) => self.bytes -= old.weight,
            None => self.len += 1,
        }
        old
    }

    /// Deletes the message under `topic`, pruning empty nodes.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<Retained> {
        let removed = self.root.remove(topic);
        if let Some(r) = &removed {
            self.len -= 1;
            self.bytes -= r.weight;
        }
        removed
    }

    pub(crate) fn get(&self, topic: &str) -> Option<&Retained> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Calls `f` with every message whose topic matches `filter`.
    pub(crate) fn for_each_match<'a>(
        &'a self,
        filter: &TopicFilter,
        mut f: impl FnMut(&'a Retained),
    ) {
        let levels: Vec<&str> = filter.levels().collect();
        self.root.visit(&levels, true, &mut f);
    }

    /// Empties the store; returns the weight it held.
    pub(crate) fn clear(&mut self) -> u64 {
        let bytes = self.bytes;
        *self = Self::default();
        bytes
    }

    #[cfg(test)]
    pub(crate) fn is_pruned(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use iothub_model::{Origin, QoS, TopicName, filter_matches};
    use proptest::prelude::*;

    fn retained(topic: &str, payload: &'static str) -> Retained {
        let message = Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            origin: Origin::Hub,
        };
        Retained {
            weight: message.weight() as u64,
            message: Arc::new(message),
            expires_at: None,
            timer: None,
            id: None,
        }
    }

    fn lookup(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.for_each_match(&TopicFilter::new(filter).unwrap(), |r| {
            out.push(r.message.topic.to_string());
        });
        out.sort();
        out
    }

    const TOPICS: &[&str] = &["a", "a/b", "a/b/c", "a/c", "/x", "b", "$SYS/up", "a//b"];

    #[test]
    fn wildcard_lookup_table() {
        let mut store = RetainedStore::default();
        for t in TOPICS {
            store.set(t, retained(t, "p"));
        }
        let table: &[(&str, &[&str])] = &[
            ("a", &["a"]),
            ("a/#", &["a", "a//b", "a/b", "a/b/c", "a/c"]),
            ("a/+", &["a/b", "a/c"]),
            ("+", &["a", "b"]),
            ("+/+", &["/x", "a/b", "a/c"]),
            ("#", &["/x", "a", "a//b", "a/b", "a/b/c", "a/c", "b"]),
            ("+/b/#", &["a/b", "a/b/c"]),
            ("$SYS/#", &["$SYS/up"]),
            ("$SYS/+", &["$SYS/up"]),
            ("a/+/b", &["a//b"]),
            ("nothing/#", &[]),
        ];
        for (filter, expect) in table {
            assert_eq!(lookup(&store, filter), *expect, "filter {filter}");
            for t in *expect {
                assert!(filter_matches(filter, t));
            }
        }
    }

    #[test]
    fn set_replace_delete_keep_counts_exact() {
        let mut store = RetainedStore::default();
        assert!(store.set("a/b", retained("a/b", "one")).is_none());
        assert_eq!((store.len(), store.bytes()), (1, 3 + 3));
        let old = store.set("a/b", retained("a/b", "three")).unwrap();
        assert_eq!(&old.message.payload[..], b"one");
        assert_eq!((store.len(), store.bytes()), (1, 3 + 5));
        store.set("a", retained("a", "x"));
        assert_eq!((store.len(), store.bytes()), (2, 8 + 2));
        assert_eq!(store.get("a/b").map(|r| r.weight), Some(8));
        assert!(store.remove("a/b/c").is_none());
        assert!(store.remove("a/b").is_some());
        assert!(store.get("a/b").is_none());
        assert!(store.get("a").is_some());
        assert!(store.remove("a").is_some());
        assert_eq!((store.len(), store.bytes()), (0, 0));
        assert!(store.is_pruned());
        store.set("q", retained("q", "z"));
        assert_eq!(store.clear(), 2);
        assert!(store.is_pruned());
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_filter_matches(
            topics in prop::collection::vec("(a|b|\\$s|)(/(a|b|)){0,3}", 1..10),
            filter in "(a|b|\\+|\\$s)(/(a|b|\\+)){0,3}(/#)?|#",
        ) {
            let mut store = RetainedStore::default();
            let mut live: Vec<String> = Vec::new();
            for t in &topics {
                if TopicName::new(t).is_ok() && !live.contains(t) {
                    store.set(t, retained(t, "p"));
                    live.push(t.clone());
                }
            }
            let mut want: Vec<String> =
                live.iter().filter(|t| filter_matches(&filter, t)).cloned().collect();
            want.sort();
            prop_assert_eq!(lookup(&store, &filter), want);
        }
    }
}
