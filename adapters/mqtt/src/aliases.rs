//! MQTT 5 topic aliases in both directions (MQTT 5.0 §3.3.2.3.4).

use std::collections::HashMap;

use iothub_model::TopicName;

/// Aliases the client set towards us. Index = alias (1..=maximum); alias 0 is never valid.
#[derive(Debug)]
pub struct InboundAliases {
    slots: Vec<Option<TopicName>>,
}

/// Why an inbound alias cannot be used; each is a DISCONNECT reason.
#[derive(Debug, PartialEq, Eq)]
pub enum AliasError {
    /// Alias 0 or above the maximum we announced [MQTT-3.3.2-8, MQTT-3.3.2-9]: 0x94.
    OutOfRange,
    /// An empty topic with an alias that has no mapping yet: protocol error 0x82.
    Unknown,
}

impl InboundAliases {
    pub fn new(maximum: u16) -> Self {
        Self {
            slots: vec![None; usize::from(maximum) + 1],
        }
    }

    /// Sets (`topic` given) or resolves (`topic` `None`) an alias.
    pub fn resolve(
        &mut self,
        alias: u16,
        topic: Option<TopicName>,
    ) -> Result<TopicName, AliasError> {
        let idx = usize::from(alias);
        if alias == 0 || idx >= self.slots.len() {
            return Err(AliasError::OutOfRange);
        }
        match topic {
            Some(t) => {
                self.slots[idx] = Some(t.clone());
                Ok(t)
            }
            None => self.slots[idx].clone().ok_or(AliasError::Unknown),
        }
    }
}

/// Aliases we use towards the client, up to the maximum it announced. New topics take free
/// aliases; once all are taken, aliases are reused in rotation.
#[derive(Debug)]
pub struct OutboundAliases {
    maximum: u16,
    by_topic: HashMap<TopicName, u16>,
    by_alias: Vec<Option<TopicName>>,
    next_reuse: u16,
}

/// How to send a topic.
#[derive(Debug, PartialEq, Eq)]
pub enum OutboundTopic {
    /// No alias: the topic in full.
    Plain,
    /// The topic in full and a new alias for it.
    Establish(u16),
    /// An empty topic and the alias.
    Alias(u16),
}

impl OutboundAliases {
    pub fn new(maximum: u16) -> Self {
        Self {
            maximum,
            by_topic: HashMap::new(),
            by_alias: vec![None; usize::from(maximum) + 1],
            next_reuse: 1,
        }
    }

    pub fn lookup(&mut self, topic: &TopicName) -> OutboundTopic {
        if self.maximum == 0 {
            return OutboundTopic::Plain;
        }
        if let Some(&alias) = self.by_topic.get(topic) {
            return OutboundTopic::Alias(alias);
        }
        let alias = if self.by_topic.len() < usize::from(self.maximum) {
            // Free aliases are 1..=len in order: the next one is len + 1.
            u16::try_from(self.by_topic.len() + 1).unwrap_or(self.maximum)
        } else {
            let a = self.next_reuse;
            self.next_reuse = if a >= self.maximum { 1 } else { a + 1 };
            a
        };
        if let Some(old) = self.by_alias[usize::from(alias)].take() {
            self.by_topic.remove(&old);
        }
        self.by_alias[usize::from(alias)] = Some(topic.clone());
        self.by_topic.insert(topic.clone(), alias);
        OutboundTopic::Establish(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn inbound_aliases() {
        let mut a = InboundAliases::new(2);
        assert_eq!(a.resolve(0, Some(t("x"))), Err(AliasError::OutOfRange));
        assert_eq!(a.resolve(3, Some(t("x"))), Err(AliasError::OutOfRange));
        assert_eq!(a.resolve(1, None), Err(AliasError::Unknown));
        assert_eq!(a.resolve(1, Some(t("a/b"))), Ok(t("a/b")));
        assert_eq!(a.resolve(1, None), Ok(t("a/b")));
        assert_eq!(a.resolve(1, Some(t("c"))), Ok(t("c")));
        assert_eq!(a.resolve(1, None), Ok(t("c")));
        assert!(InboundAliases::new(0).resolve(1, None).is_err());
    }

    #[test]
    fn outbound_aliases_assign_then_rotate() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.lookup(&t("a")), OutboundTopic::Establish(1));
        assert_eq!(a.lookup(&t("a")), OutboundTopic::Alias(1));
        assert_eq!(a.lookup(&t("b")), OutboundTopic::Establish(2));
        assert_eq!(a.lookup(&t("c")), OutboundTopic::Establish(1));
        assert_eq!(a.lookup(&t("a")), OutboundTopic::Establish(2));
        assert_eq!(a.lookup(&t("c")), OutboundTopic::Alias(1));
        assert_eq!(
            OutboundAliases::new(0).lookup(&t("a")),
            OutboundTopic::Plain
        );
    }
}
