//! Topic names and topic filters, validated as both MQTT specs require
//! (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2 for shared subscriptions).

use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid topic name or filter. Each maps to "malformed packet" or
/// "topic name/filter invalid" at the protocol boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must not be empty")]
    Empty,
    #[error("topic is {0} bytes long; the maximum is 65535")]
    TooLong(usize),
    #[error("topic must not contain the NUL character")]
    Nul,
    #[error("a topic name must not contain the wildcards '+' or '#'")]
    WildcardInName,
    #[error("'#' must be the last level of a filter and stand alone in it")]
    MisplacedMultiLevelWildcard,
    #[error("'+' must stand alone in its level")]
    MisplacedSingleLevelWildcard,
    #[error("a shared subscription needs '$share/<group>/<filter>' with a non-empty group")]
    InvalidShareGroup,
    #[error("the share group must not contain '/', '+' or '#'")]
    InvalidShareGroupCharacter,
}

const MAX_LEN: usize = 65_535;

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic a message is published to: non-empty UTF-8, no NUL, no wildcards.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(Arc<str>);

impl TopicName {
    pub fn new(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's levels, split on `/` (empty levels are levels too).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Topics beginning with `$` are not matched by a filter that starts with a wildcard
    /// ([MQTT-4.7.2-1]).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// A subscription filter without the `$share/<group>/` prefix: wildcards `+` and `#` allowed
/// where the specs allow them.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(Arc<str>);

impl TopicFilter {
    pub fn new(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::MisplacedMultiLevelWildcard);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::MisplacedSingleLevelWildcard);
            }
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    pub fn has_wildcards(&self) -> bool {
        self.0.contains(['+', '#'])
    }

    /// Whether `topic` matches this filter.
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.as_str(), topic.as_str())
    }
}

/// Whether a (valid) filter matches a (valid) topic name, `$`-rule included. The engine's
/// trie does the same walk for many filters at once; this is the one-filter form used by
/// message filters and tests.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What a SUBSCRIBE names: a plain filter, or a shared subscription `$share/<group>/<filter>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionFilter {
    pub share_group: Option<Arc<str>>,
    pub filter: TopicFilter,
}

impl SubscriptionFilter {
    pub const SHARE_PREFIX: &'static str = "$share/";

    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        if let Some(rest) = s.strip_prefix(Self::SHARE_PREFIX) {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::InvalidShareGroup)?;
            if group.is_empty() {
                return Err(TopicError::InvalidShareGroup);
            }
            if group.contains(['+', '#']) {
                return Err(TopicError::InvalidShareGroupCharacter);
            }
            return Ok(Self {
                share_group: Some(Arc::from(group)),
                filter: TopicFilter::new(filter)?,
            });
        }
        if s == "$share" {
            return Err(TopicError::InvalidShareGroup);
        }
        Ok(Self {
            share_group: None,
            filter: TopicFilter::new(s)?,
        })
    }

    pub fn is_shared(&self) -> bool {
        self.share_group.is_some()
    }
}

macro_rules! str_traits {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
str_traits!(TopicName);
str_traits!(TopicFilter);

impl fmt::Display for SubscriptionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.share_group {
            Some(g) => write!(f, "{}{}/{}", Self::SHARE_PREFIX, g, self.filter),
            None => write!(f, "{}", self.filter),
        }
    }
}

impl fmt::Debug for SubscriptionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubscriptionFilter({:?})", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names() {
        let table: &[(&str, Result<(), TopicError>)] = &[
            ("a/b/c", Ok(())),
            ("/", Ok(())),
            ("//", Ok(())),
            ("$SYS/x", Ok(())),
            ("a b", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/+", Err(TopicError::WildcardInName)),
            ("a/#", Err(TopicError::WildcardInName)),
            ("a#", Err(TopicError::WildcardInName)),
            ("a\0b", Err(TopicError::Nul)),
        ];
        for (input, expect) in table {
            assert_eq!(
                TopicName::new(input).map(|_| ()),
                *expect,
                "input {input:?}"
            );
        }
        assert_eq!(
            TopicName::new(&"a".repeat(65_536)).map(|_| ()),
            Err(TopicError::TooLong(65_536))
        );
    }

    #[test]
    fn topic_filters() {
        use TopicError::*;
        let table: &[(&str, Result<(), TopicError>)] = &[
            ("#", Ok(())),
            ("+", Ok(())),
            ("a/#", Ok(())),
            ("a/+/c", Ok(())),
            ("+/+", Ok(())),
            ("/+", Ok(())),
            ("a//b", Ok(())),
            ("a/#/c", Err(MisplacedMultiLevelWildcard)),
            ("a#", Err(MisplacedMultiLevelWildcard)),
            ("a/b#", Err(MisplacedMultiLevelWildcard)),
            ("a+", Err(MisplacedSingleLevelWildcard)),
            ("a/+b/c", Err(MisplacedSingleLevelWildcard)),
            ("", Err(Empty)),
            ("a\0", Err(Nul)),
        ];
        for (input, expect) in table {
            assert_eq!(
                TopicFilter::new(input).map(|_| ()),
                *expect,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn matching() {
        let table: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("/+", "/x", true),
            ("+", "/x", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("sport/tennis/#", "sport/tennis", true),
            ("sport/+", "sport/", true),
            ("sport/+", "sport", false),
        ];
        for (filter, topic, expect) in table {
            assert_eq!(filter_matches(filter, topic), *expect, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn shared_subscriptions() {
        let s = SubscriptionFilter::parse("$share/g1/a/+").unwrap();
        assert_eq!(s.share_group.as_deref(), Some("g1"));
        assert_eq!(s.filter.as_str(), "a/+");
        assert_eq!(s.to_string(), "$share/g1/a/+");
        assert!(!SubscriptionFilter::parse("$shared/a").unwrap().is_shared());
        use TopicError::*;
        for (input, err) in [
            ("$share/g1", InvalidShareGroup),
            ("$share//a", InvalidShareGroup),
            ("$share", InvalidShareGroup),
            ("$share/g+/a", InvalidShareGroupCharacter),
            ("$share/#/a", InvalidShareGroupCharacter),
            ("$share/g/a/#/b", MisplacedMultiLevelWildcard),
        ] {
            assert_eq!(SubscriptionFilter::parse(input).err(), Some(err), "{input}");
        }
    }

    proptest! {
        #[test]
        fn a_topic_matches_itself_and_hash(topic in "[a-z$/]{1,20}") {
            if let Ok(name) = TopicName::new(&topic) {
                prop_assert!(filter_matches(&topic, &topic));
                prop_assert_eq!(filter_matches("#", &topic), !name.is_system());
            }
        }
    }
}
