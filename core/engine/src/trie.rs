//! The subscription trie of one hub.
//!
//! One node per filter level: exact children in a map, a `+` child and a `#` slot. A
//! PUBLISH walks the topic's levels once, following the exact child and the `+` child at
//! each level and collecting the `#` slots it passes, so its cost depends on the topic's
//! depth and the matching branches, never on the number of subscriptions. Empty nodes are
//! removed on unsubscribe, so the trie never outgrows its live subscriptions.
//!
//! The trie is generic over the value it stores per subscriber, so it is tested on its own
//! against [`iothub_model::filter_matches`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use iothub_model::{ClientId, SubscriptionFilter, TopicFilter};

/// Deepest filter or retained topic the engine stores, in levels. Bounding it keeps every
/// recursive walk and every drop of a branch shallow (Mosquitto has a similar limit).
pub(crate) const MAX_TOPIC_LEVELS: usize = 256;

/// Whether a filter or topic is deeper than [`MAX_TOPIC_LEVELS`].
pub(crate) fn too_deep(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'/').count() >= MAX_TOPIC_LEVELS
}

/// The subscribers of one filter: plain ones by client id, shared ones by group name.
pub(crate) struct Leaf<V> {
    pub(crate) direct: HashMap<ClientId, V>,
    pub(crate) shared: HashMap<Arc<str>, SharedGroup<V>>,
}

impl<V> Default for Leaf<V> {
    fn default() -> Self {
        Self {
            direct: HashMap::new(),
            shared: HashMap::new(),
        }
    }
}

impl<V> Leaf<V> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

/// The members of one shared subscription `$share/<group>/<filter>`. Members are kept in
/// subscription order; `cursor` advances on every message (round robin) and is atomic so
/// that routing needs only the trie's read lock.
pub(crate) struct SharedGroup<V> {
    pub(crate) filter: TopicFilter,
    pub(crate) members: Vec<(ClientId, V)>,
    pub(crate) cursor: AtomicUsize,
}

struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    plus: Option<Box<Node<V>>>,
    /// Subscribers of the filter that ends at this node.
    here: Option<Box<Leaf<V>>>,
    /// Subscribers of the filter that ends with `#` right below this node.
    hash: Option<Box<Leaf<V>>>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            here: None,
            hash: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_none()
            && self.hash.is_none()
    }

    /// Collects the leaves matching `rest` (the topic levels below this node; `None` when
    /// the whole topic is consumed). Recursion depth is bounded by the trie's depth.
    fn walk<'a>(&'a self, rest: Option<&str>, f: &mut impl FnMut(&'a Leaf<V>)) {
        if let Some(hash) = &self.hash {
            f(hash);
        }
        let Some(rest) = rest else {
            if let Some(here) = &self.here {
                f(here);
            }
            return;
        };
        let (level, next) = split_level(rest);
        if let Some(child) = self.children.get(level) {
            child.walk(next, f);
        }
        if let Some(plus) = &self.plus {
            plus.walk(next, f);
        }
    }
}

/// The first level of `rest` and what follows its `/` (`None` when it was the last level).
pub(crate) fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    }
}

/// Where a filter's subscribers live: the node path and whether it ends with `#`.
fn path_of(filter: &TopicFilter) -> (Vec<&str>, bool) {
    let mut levels: Vec<&str> = filter.levels().collect();
    let hash = levels.last() == Some(&"#");
    if hash {
        levels.pop();
    }
    (levels, hash)
}

/// Subscriptions of one hub, indexed by filter.
pub(crate) struct SubTrie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for SubTrie<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> SubTrie<V> {
    /// Subscriptions stored (a shared subscription counts once per member).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds or replaces `key`'s subscription to `filter`; returns the replaced value.
    /// The caller has checked the depth ([`too_deep`]).
    pub(crate) fn insert(
        &mut self,
        filter: &SubscriptionFilter,
        key: ClientId,
        value: V,
    ) -> Option<V> {
        let (levels, hash) = path_of(&filter.filter);
        let mut node = &mut self.root;
        for level in levels {
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let slot = if hash { &mut node.hash } else { &mut node.here };
        let leaf = slot.get_or_insert_with(Box::default);
        let old = match &filter.share_group {
            None => leaf.direct.insert(key, value),
            Some(group) => {
                let group = leaf
                    .shared
                    .entry(group.clone())
                    .or_insert_with(|| SharedGroup {
                        filter: filter.filter.clone(),
                        members: Vec::new(),
                        cursor: AtomicUsize::new(0),
                    });
                match group.members.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => Some(std::mem::replace(v, value)),
                    None => {
                        group.members.push((key, value));
                        None
                    }
                }
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter` and prunes the nodes left empty.
    pub(crate) fn remove(&mut self, filter: &SubscriptionFilter, key: &ClientId) -> Option<V> {
        let (levels, hash) = path_of(&filter.filter);
        let removed = Self::remove_in(&mut self.root, &levels, hash, filter, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(
        node: &mut Node<V>,
        levels: &[&str],
        hash: bool,
        filter: &SubscriptionFilter,
        key: &ClientId,
    ) -> Option<V> {
        let Some((level, below)) = levels.split_first() else {
            let slot = if hash { &mut node.hash } else { &mut node.here };
            let leaf = slot.as_mut()?;
            let removed = match &filter.share_group {
                None => leaf.direct.remove(key),
                Some(group) => {
                    let Entry::Occupied(mut entry) = leaf.shared.entry(group.clone()) else {
                        return None;
                    };
                    let members = &mut entry.get_mut().members;
                    let at = members.iter().position(|(k, _)| k == key)?;
                    // `remove`, not `swap_remove`: members keep their round-robin order.
                    let (_, value) = members.remove(at);
                    if members.is_empty() {
                        entry.remove();
                    }
                    Some(value)
                }
            };
            if leaf.is_empty() {
                *slot = None;
            }
            return removed;
        };
        if *level == "+" {
            let child = node.plus.as_mut()?;
            let removed = Self::remove_in(child, below, hash, filter, key);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        } else {
            let child = node.children.get_mut(*level)?;
            let removed = Self::remove_in(child, below, hash, filter, key);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }

    /// Calls `f` with every leaf whose filter matches `topic` (a valid topic name). Topics
    /// starting with `$` are not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
    pub(crate) fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a Leaf<V>)) {
        if topic.starts_with('$') {
            let (level, next) = split_level(topic);
            if let Some(child) = self.root.children.get(level) {
                child.walk(next, &mut f);
            }
        } else {
            self.root.walk(Some(topic), &mut f);
        }
    }

    /// The shared group `$share/<group>/<filter>`, if it has members.
    pub(crate) fn shared_group(
        &self,
        group: &str,
        filter: &TopicFilter,
    ) -> Option<&SharedGroup<V>> {
        let (levels, hash) = path_of(filter);
        let mut node = &self.root;
        for level in levels {
            node = if level == "+" {
                node.plus.as_deref()?
            } else {
                node.children.get(level)?
            };
        }
        let leaf = if hash { &node.hash } else { &node.here };
        leaf.as_ref()?.shared.get(group)
    }

    /// Whether no node is left but the root (every subscription removed, nothing leaked).
    #[cfg(test)]
    pub(crate) fn is_pruned(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iothub_model::{TopicName, filter_matches};
    use proptest::prelude::*;

    fn sf(s: &str) -> SubscriptionFilter {
        SubscriptionFilter::parse(s).unwrap()
    }

    fn cid(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    /// The (client, filter) pairs whose subscription matches `topic`, sorted.
    fn matches(trie: &SubTrie<&'static str>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |leaf| {
            for (client, filter) in &leaf.direct {
                out.push(format!("{client}:{filter}"));
            }
            for (group, g) in &leaf.shared {
                for (client, filter) in &g.members {
                    out.push(format!("{client}:{filter}@{group}"));
                }
            }
        });
        out.sort();
        out
    }

    const FILTERS: &[&str] = &[
        "a/b",
        "a/+",
        "a/#",
        "#",
        "+/b",
        "+/+",
        "+",
        "/+",
        "a//b",
        "$SYS/#",
        "$SYS/+",
        "+/#",
        "a/b/c",
        "sport/tennis/#",
        "sport/+",
    ];

    #[test]
    fn matching_table() {
        let mut trie = SubTrie::default();
        for f in FILTERS {
            trie.insert(&sf(f), cid("c"), *f);
        }
        let table: &[(&str, &[&str])] = &[
            ("a/b", &["#", "+/#", "+/+", "+/b", "a/#", "a/+", "a/b"]),
            ("a", &["#", "+", "+/#", "a/#"]),
            ("a/b/c", &["#", "+/#", "a/#", "a/b/c"]),
            ("/x", &["#", "+/#", "+/+", "/+"]),
            ("a//b", &["#", "+/#", "a/#", "a//b"]),
            ("$SYS/x", &["$SYS/#", "$SYS/+"]),
            ("$SYS", &["$SYS/#"]),
            ("$other/b", &[]),
            (
                "sport/tennis",
                &["#", "+/#", "+/+", "sport/+", "sport/tennis/#"],
            ),
            ("sport/", &["#", "+/#", "+/+", "sport/+"]),
        ];
        for (topic, expect) in table {
            let mut expect: Vec<String> = expect.iter().map(|f| format!("c:{f}")).collect();
            expect.sort();
            assert_eq!(matches(&trie, topic), expect, "topic {topic}");
        }
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut trie = SubTrie::default();
        assert_eq!(trie.insert(&sf("a/+/c"), cid("x"), "one"), None);
        assert_eq!(trie.insert(&sf("a/+/c"), cid("x"), "two"), Some("one"));
        assert_eq!(trie.insert(&sf("a/+/c"), cid("y"), "three"), None);
        assert_eq!(trie.insert(&sf("$share/g/a/#"), cid("x"), "s1"), None);
        assert_eq!(trie.insert(&sf("$share/g/a/#"), cid("y"), "s2"), None);
        assert_eq!(trie.insert(&sf("$share/g/a/#"), cid("x"), "s3"), Some("s1"));
        assert_eq!(trie.len(), 4);
        let group = trie
            .shared_group("g", &TopicFilter::new("a/#").unwrap())
            .unwrap();
        let order: Vec<&str> = group.members.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(order, ["x", "y"]);
        assert_eq!(trie.remove(&sf("a/+/c"), &cid("x")), Some("two"));
        assert_eq!(trie.remove(&sf("a/+/c"), &cid("x")), None);
        assert_eq!(trie.remove(&sf("a/b/c"), &cid("y")), None);
        assert_eq!(trie.remove(&sf("$share/h/a/#"), &cid("y")), None);
        assert_eq!(trie.remove(&sf("a/+/c"), &cid("y")), Some("three"));
        assert_eq!(trie.remove(&sf("$share/g/a/#"), &cid("x")), Some("s3"));
        assert!(!trie.is_pruned());
        assert_eq!(trie.remove(&sf("$share/g/a/#"), &cid("y")), Some("s2"));
        assert_eq!(trie.len(), 0);
        assert!(trie.is_pruned());
    }

    #[test]
    fn depth_limit() {
        let ok = vec!["a"; MAX_TOPIC_LEVELS].join("/");
        let deep = vec!["a"; MAX_TOPIC_LEVELS + 1].join("/");
        assert!(!too_deep(&ok));
        assert!(too_deep(&deep));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("$x".to_string()),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let flevel = prop_oneof![level(), Just("+".to_string())];
        (prop::collection::vec(flevel, 0..5), any::<bool>()).prop_filter_map(
            "empty filter",
            |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_string());
                }
                let joined = levels.join("/");
                (!joined.is_empty()).then_some(joined)
            },
        )
    }

    proptest! {
        #[test]
        fn trie_agrees_with_filter_matches(
            filters in prop::collection::vec(filter(), 1..12),
            topics in prop::collection::vec(topic(), 1..8),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut trie: SubTrie<String> = SubTrie::default();
            let mut live: Vec<String> = Vec::new();
            for f in &filters {
                if !live.contains(f) {
                    trie.insert(&sf(f), cid("c"), f.clone());
                    live.push(f.clone());
                }
            }
            for index in &removed {
                if live.is_empty() {
                    break;
                }
                let f = live.remove(index.index(live.len()));
                prop_assert_eq!(trie.remove(&sf(&f), &cid("c")), Some(f));
            }
            for t in &topics {
                prop_assume!(TopicName::new(t).is_ok());
                let mut got = Vec::new();
                trie.for_each_match(t, |leaf| got.extend(leaf.direct.values().cloned()));
                got.sort();
                let mut want: Vec<String> =
                    live.iter().filter(|f| filter_matches(f, t)).cloned().collect();
                want.sort();
                prop_assert_eq!(got, want, "topic {}", t);
            }
            for f in live.drain(..) {
                prop_assert!(trie.remove(&sf(&f), &cid("c")).is_some());
            }
            prop_assert!(trie.is_pruned());
        }
    }
}
