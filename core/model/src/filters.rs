//! Message filters: which topics a device (or an anonymous client) may publish to and
//! subscribe to (SCALEWAY-API.md, Device `message_filters`).
//!
//! A [`FilterRule`] is a policy and a list of MQTT filters that may hold the templates
//! `{{ hub.id }}`, `{{ hub.name }}`, `{{ device.id }}` and `{{ device.name }}` (spaces inside
//! the braces optional). [`MessageFilters::expand`] substitutes them once, when a device is
//! registered or changed, into a [`CompiledFilters`] that the engine checks on every PUBLISH
//! and SUBSCRIBE without further parsing.
//!
//! Semantics:
//! - publish to topic T is allowed iff (accept) T matches one of the rule's filters, or
//!   (reject) T matches none of them. The default, reject with no filters, allows
//!   everything; accept with no filters allows nothing.
//! - subscribe to filter S is refused when S lies wholly inside a rejected filter (reject),
//!   or overlaps none of the accepted filters (accept). Otherwise it is granted; when S only
//!   partly overlaps the rule ([`SubscriptionCheck::PerMessage`]), each message delivered
//!   through it must pass [`CompiledRule::allows_topic`], so nothing forbidden leaks through
//!   a wildcard.
//! - rule filters match `$` topics with their wildcards too: the `$` exception of MQTT
//!   [MQTT-4.7.2-1] keeps `#` subscribers from receiving system topics by accident, but a
//!   rule is an authorisation, and `reject ["#"]` must reject everything.

use serde::{Deserialize, Serialize};

use crate::{HubId, TopicError, TopicFilter};

/// Whether a rule lists what is allowed or what is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterPolicy {
    Accept,
    Reject,
}

/// One direction (publish or subscribe) of a device's message filters, as the API shows it:
/// `{"policy": "accept"|"reject", "topics": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    pub policy: FilterPolicy,
    /// MQTT filters, possibly holding templates.
    pub topics: Vec<String>,
}

impl Default for FilterRule {
    /// The reference's default: reject with an empty list, which allows everything.
    fn default() -> Self {
        Self {
            policy: FilterPolicy::Reject,
            topics: Vec::new(),
        }
    }
}

/// Which topics a client may publish to and subscribe to. Missing halves default to
/// "allow all".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageFilters {
    pub publish: FilterRule,
    pub subscribe: FilterRule,
}

/// The values substituted into templates. Ids are given as text so that anonymous clients
/// (whose "device id" is their client id) use the same machinery.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    pub hub_id: HubId,
    pub hub_name: &'a str,
    pub device_id: &'a str,
    pub device_name: &'a str,
}

/// Why one templated filter cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("'{{{{' is not closed by '}}}}'")]
    Unclosed,
    #[error(
        "unknown template {{{{ {0} }}}}; known: {{{{ hub.id }}}}, {{{{ hub.name }}}}, {{{{ device.id }}}}, {{{{ device.name }}}}"
    )]
    UnknownTemplate(String),
    /// A substituted value would change the filter's structure (a '/', '+' or '#', or
    /// nothing at all), e.g. a client id "+" widening `clients/{{ device.id }}`.
    #[error("the value of {{{{ {0} }}}} is empty or holds '/', '+' or '#'")]
    InvalidValue(&'static str),
    #[error("not a valid MQTT filter once expanded: {0}")]
    Topic(#[from] TopicError),
}

/// A templated filter that cannot be used, with its place (`publish.topics[2]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}.topics[{index}]: {error}")]
pub struct FilterError {
    /// `"publish"` or `"subscribe"`.
    pub rule: &'static str,
    pub index: usize,
    pub error: TemplateError,
}

const TEMPLATES: [&str; 4] = ["hub.id", "hub.name", "device.id", "device.name"];

/// Substitutes the templates of `template` and parses the result as a filter.
fn expand_one(template: &str, vars: &TemplateVars<'_>) -> Result<TopicFilter, TemplateError> {
    if !template.contains("{{") {
        return Ok(TopicFilter::new(template)?);
    }
    let hub_id = vars.hub_id.to_string();
    let mut out = String::with_capacity(template.len() + 36);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let (name, value) = match after[..end].trim() {
            "hub.id" => (TEMPLATES[0], hub_id.as_str()),
            "hub.name" => (TEMPLATES[1], vars.hub_name),
            "device.id" => (TEMPLATES[2], vars.device_id),
            "device.name" => (TEMPLATES[3], vars.device_name),
            other => {
                return Err(TemplateError::UnknownTemplate(
                    other.chars().take(64).collect(),
                ));
            }
        };
        if value.is_empty() || value.contains(['/', '+', '#']) {
            return Err(TemplateError::InvalidValue(name));
        }
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(TopicFilter::new(&out)?)
}

fn uses_device_template(template: &str) -> bool {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return false;
        };
        if after[..end].trim().starts_with("device.") {
            return true;
        }
        rest = &after[end + 2..];
    }
    false
}

impl FilterRule {
    /// Reject with no filters: everything allowed, nothing to check.
    pub fn is_open(&self) -> bool {
        self.policy == FilterPolicy::Reject && self.topics.is_empty()
    }

    fn expand(
        &self,
        rule: &'static str,
        vars: &TemplateVars<'_>,
    ) -> Result<CompiledRule, FilterError> {
        let topics = self
            .topics
            .iter()
            .enumerate()
            .map(|(index, t)| {
                expand_one(t, vars).map_err(|error| FilterError { rule, index, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledRule {
            policy: self.policy,
            topics,
        })
    }
}

impl MessageFilters {
    /// Both rules allow everything (the default).
    pub fn is_open(&self) -> bool {
        self.publish.is_open() && self.subscribe.is_open()
    }

    /// Whether a filter names `{{ device.id }}` or `{{ device.name }}`, so that it must be
    /// expanded per client rather than once per hub.
    pub fn uses_device_templates(&self) -> bool {
        self.publish
            .topics
            .iter()
            .chain(&self.subscribe.topics)
            .any(|t| uses_device_template(t))
    }

    /// Substitutes the templates and parses every filter.
    pub fn expand(&self, vars: &TemplateVars<'_>) -> Result<CompiledFilters, FilterError> {
        Ok(CompiledFilters {
            publish: self.publish.expand("publish", vars)?,
            subscribe: self.subscribe.expand("subscribe", vars)?,
        })
    }

    /// Checks that every filter is valid once its templates are expanded, without real
    /// values (ids and names cannot hold '/', '+' or '#', so any valid ones expand alike).
    pub fn validate(&self) -> Result<(), FilterError> {
        let vars = TemplateVars {
            hub_id: HubId::from_uuid(uuid::Uuid::nil()),
            hub_name: "hub",
            device_id: "device",
            device_name: "device",
        };
        self.expand(&vars).map(|_| ())
    }
}

/// Message filters with their templates expanded and their filters parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompiledFilters {
    pub publish: CompiledRule,
    pub subscribe: CompiledRule,
}

/// One expanded rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    policy: FilterPolicy,
    topics: Vec<TopicFilter>,
}

impl Default for CompiledRule {
    fn default() -> Self {
        Self {
            policy: FilterPolicy::Reject,
            topics: Vec::new(),
        }
    }
}

/// What a rule says about a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionCheck {
    /// Every topic the filter matches is allowed: no check per message.
    Allowed,
    /// Some topics the filter matches are allowed, some not: each delivery is checked.
    PerMessage,
    /// No topic the filter matches is allowed (reject), or none is (accept).
    Refused,
}

impl CompiledRule {
    pub fn policy(&self) -> FilterPolicy {
        self.policy
    }

    pub fn topics(&self) -> &[TopicFilter] {
        &self.topics
    }

    /// Reject with no filters: everything allowed, nothing to check.
    pub fn is_open(&self) -> bool {
        self.policy == FilterPolicy::Reject && self.topics.is_empty()
    }

    /// Whether a message on `topic` may pass.
    pub fn allows_topic(&self, topic: &str) -> bool {
        let hit = self.topics.iter().any(|f| rule_matches(f.as_str(), topic));
        match self.policy {
            FilterPolicy::Accept => hit,
            FilterPolicy::Reject => !hit,
        }
    }

    /// What this rule says about a subscription to `filter` (without its `$share/` prefix).
    pub fn check_subscription(&self, filter: &TopicFilter) -> SubscriptionCheck {
        let s = filter.as_str();
        let covered = self.topics.iter().any(|r| covers(r.as_str(), s));
        let overlaps = || self.topics.iter().any(|r| overlap(r.as_str(), s));
        match self.policy {
            FilterPolicy::Reject if covered => SubscriptionCheck::Refused,
            FilterPolicy::Reject if overlaps() => SubscriptionCheck::PerMessage,
            FilterPolicy::Reject => SubscriptionCheck::Allowed,
            FilterPolicy::Accept if covered => SubscriptionCheck::Allowed,
            FilterPolicy::Accept if overlaps() => SubscriptionCheck::PerMessage,
            FilterPolicy::Accept => SubscriptionCheck::Refused,
        }
    }
}

/// Filter matching for rules: as MQTT's, but wildcards match `$` topics too (see the module
/// docs).
fn rule_matches(filter: &str, topic: &str) -> bool {
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

/// Whether every topic `sub` matches is matched by `rule` ("a/#" matches "a" itself).
fn covers(rule: &str, sub: &str) -> bool {
    let mut r = rule.split('/');
    let mut s = sub.split('/');
    loop {
        match (r.next(), s.next()) {
            (Some("#"), _) => return true,
            // `sub` goes on to any depth here; only '#' in `rule` follows it.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(rl), Some(sl)) if rl == sl && sl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters.
fn overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter_matches;
    use proptest::prelude::*;

    fn rule(policy: FilterPolicy, topics: &[&str]) -> CompiledRule {
        CompiledRule {
            policy,
            topics: topics
                .iter()
                .map(|t| TopicFilter::new(t).unwrap())
                .collect(),
        }
    }

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            hub_id: "0b2c7a5e-1f44-4c1b-9a53-3f0c2d1e6a11".parse().unwrap(),
            hub_name: "plant",
            device_id: "5d3c1a2b-0000-4000-8000-000000000001",
            device_name: "pump-7",
        }
    }

    #[test]
    fn serde_shapes_match_the_api() {
        let f: MessageFilters = serde_json::from_str(
            r#"{"publish":{"policy":"accept","topics":["a/#"]},"subscribe":{"policy":"reject","topics":[]}}"#,
        )
        .unwrap();
        assert_eq!(f.publish.policy, FilterPolicy::Accept);
        assert_eq!(f.publish.topics, ["a/#"]);
        assert!(f.subscribe.is_open());
        assert_eq!(
            serde_json::to_string(&MessageFilters::default()).unwrap(),
            r#"{"publish":{"policy":"reject","topics":[]},"subscribe":{"policy":"reject","topics":[]}}"#
        );
        let partial: MessageFilters =
            serde_json::from_str(r#"{"subscribe":{"policy":"accept","topics":["x"]}}"#).unwrap();
        assert!(partial.publish.is_open());
        for bad in [
            r#"{"publish":{"policy":"allow","topics":[]}}"#,
            r#"{"publish":{"policy":"accept","topics":[],"x":1}}"#,
            r#"{"other":{}}"#,
        ] {
            assert!(
                serde_json::from_str::<MessageFilters>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn templates_expand() {
        let table: &[(&str, Result<&str, TemplateError>)] = &[
            ("a/b", Ok("a/b")),
            ("{{hub.id}}/x", Ok("0b2c7a5e-1f44-4c1b-9a53-3f0c2d1e6a11/x")),
            ("{{ hub.name }}/+/t", Ok("plant/+/t")),
            (
                "d/{{  device.id }}/#",
                Ok("d/5d3c1a2b-0000-4000-8000-000000000001/#"),
            ),
            ("{{device.name}}{{ device.name }}", Ok("pump-7pump-7")),
            ("a/}}/b", Ok("a/}}/b")),
            (
                "{{ device.serial }}/x",
                Err(TemplateError::UnknownTemplate("device.serial".into())),
            ),
            ("a/{{ hub.id", Err(TemplateError::Unclosed)),
            (
                "a/{{ hub.name }}#",
                Err(TemplateError::Topic(
                    TopicError::MisplacedMultiLevelWildcard,
                )),
            ),
            ("", Err(TemplateError::Topic(TopicError::Empty))),
        ];
        for (template, expect) in table {
            let got = expand_one(template, &vars());
            assert_eq!(
                got.as_ref().map(TopicFilter::as_str).map_err(Clone::clone),
                expect.clone(),
                "{template}"
            );
        }
    }

    #[test]
    fn substituted_values_cannot_change_the_structure() {
        for value in ["+", "#", "a/b", ""] {
            let v = TemplateVars {
                device_id: value,
                ..vars()
            };
            assert_eq!(
                expand_one("c/{{ device.id }}", &v),
                Err(TemplateError::InvalidValue("device.id")),
                "{value:?}"
            );
            // A filter that does not name the template does not care.
            assert!(expand_one("c/x", &v).is_ok());
        }
    }

    #[test]
    fn errors_name_the_place_and_the_template() {
        let f = MessageFilters {
            publish: FilterRule::default(),
            subscribe: FilterRule {
                policy: FilterPolicy::Accept,
                topics: vec!["ok/#".into(), "{{ hub.region }}/x".into()],
            },
        };
        let err = f.validate().unwrap_err();
        assert_eq!((err.rule, err.index), ("subscribe", 1));
        let text = err.to_string();
        assert!(text.starts_with("subscribe.topics[1]: unknown template {{ hub.region }}"));
        assert!(MessageFilters::default().validate().is_ok());
    }

    #[test]
    fn device_templates_are_detected() {
        let with = |t: &str| MessageFilters {
            publish: FilterRule {
                policy: FilterPolicy::Accept,
                topics: vec![t.into()],
            },
            subscribe: FilterRule::default(),
        };
        for (t, expect) in [
            ("a/{{ device.id }}", true),
            ("a/{{device.name}}/#", true),
            ("{{ hub.id }}/#", false),
            ("plain", false),
            ("{{ device.id", false),
        ] {
            assert_eq!(with(t).uses_device_templates(), expect, "{t}");
        }
    }

    #[test]
    fn publish_rules() {
        use FilterPolicy::*;
        // (policy, topics, published topic, allowed)
        let table: &[(FilterPolicy, &[&str], &str, bool)] = &[
            (Reject, &[], "a/b", true),
            (Accept, &[], "a/b", false),
            (Accept, &["a/+"], "a/b", true),
            (Accept, &["a/+"], "a/b/c", false),
            (Accept, &["x", "a/#"], "a", true),
            (Reject, &["a/#"], "a/b", false),
            (Reject, &["a/#"], "b", true),
            (Reject, &["#"], "$aws/x", false),
            (Accept, &["+/x"], "$dev/x", true),
        ];
        for (policy, topics, topic, expect) in table {
            assert_eq!(
                rule(*policy, topics).allows_topic(topic),
                *expect,
                "{policy:?} {topics:?} {topic}"
            );
        }
    }

    #[test]
    fn subscribe_rules() {
        use FilterPolicy::*;
        use SubscriptionCheck::*;
        // (policy, topics, subscription filter, verdict)
        let table: &[(FilterPolicy, &[&str], &str, SubscriptionCheck)] = &[
            (Reject, &[], "#", Allowed),
            (Accept, &[], "a", Refused),
            (Reject, &["secret/#"], "secret/x", Refused),
            (Reject, &["secret/#"], "secret", Refused),
            (Reject, &["secret/#"], "secret/#", Refused),
            (Reject, &["secret/#"], "#", PerMessage),
            (Reject, &["secret/#"], "+/x", PerMessage),
            (Reject, &["secret/#"], "public/#", Allowed),
            (Reject, &["a/+/c"], "a/b/c", Refused),
            (Reject, &["a/+/c"], "a/+/c", Refused),
            (Reject, &["a/b/c"], "a/+/c", PerMessage),
            (Reject, &["a/+"], "a/#", PerMessage),
            (Accept, &["a/#"], "a/b/+", Allowed),
            (Accept, &["a/#"], "#", PerMessage),
            (Accept, &["a/#"], "b/#", Refused),
            (Accept, &["a/+"], "a/#", PerMessage),
            (Accept, &["a/+"], "a", Refused),
            (Accept, &["a/+/c", "d"], "+/x/c", PerMessage),
            (Accept, &["a"], "a/#", PerMessage),
        ];
        for (policy, topics, filter, expect) in table {
            let f = TopicFilter::new(filter).unwrap();
            assert_eq!(
                rule(*policy, topics).check_subscription(&f),
                *expect,
                "{policy:?} {topics:?} {filter}"
            );
        }
    }

    fn arb_filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof!["a", "b", "\\+"], 1..4).prop_flat_map(|levels| {
            prop::bool::ANY.prop_map(move |hash| {
                let mut s = levels.join("/");
                if hash {
                    s.push_str("/#");
                }
                s
            })
        })
    }

    fn arb_topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof!["a", "b", "c"], 1..6).prop_map(|l| l.join("/"))
    }

    proptest! {
        /// The verdict on a subscription never lets a forbidden message through unchecked,
        /// and never refuses a subscription that could receive an allowed message.
        #[test]
        fn subscription_verdicts_agree_with_topics(
            accept in any::<bool>(),
            rules in prop::collection::vec(arb_filter(), 0..3),
            sub in arb_filter(),
            topics in prop::collection::vec(arb_topic(), 1..20),
        ) {
            let policy = if accept { FilterPolicy::Accept } else { FilterPolicy::Reject };
            let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
            let r = rule(policy, &refs);
            let s = TopicFilter::new(&sub).unwrap();
            let verdict = r.check_subscription(&s);
            for t in &topics {
                if !filter_matches(&sub, t) {
                    continue;
                }
                let allowed = r.allows_topic(t);
                match verdict {
                    SubscriptionCheck::Allowed => prop_assert!(allowed, "{t} leaked"),
                    SubscriptionCheck::Refused => prop_assert!(!allowed, "{t} was allowed"),
                    SubscriptionCheck::PerMessage => {}
                }
            }
        }
    }
}
