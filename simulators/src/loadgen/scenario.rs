//! Scenarios: who publishes where and who subscribes to what.
//!
//! A [`Scenario`] is only a shape; [`Plan::new`] turns it into validated topics and filters for
//! one run and says, for each subscriber, which publishers it must hear from. Everything that
//! counts loss or expected deliveries works from [`Plan::sources`], so a new scenario is one
//! more arm in [`Plan::new`].

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use iothub_model::{TopicError, TopicFilter, TopicName};
use serde::Serialize;

/// The traffic shapes the generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Publisher i on `<base>/<i>`; every subscriber on `<base>/+` hears every publisher.
    FanIn,
    /// Every publisher on `<base>/all`; every subscriber on `<base>/all` hears all of them.
    FanOut,
    /// Publisher i on `<base>/<i>`, heard only by subscriber i (needs as many of each).
    Pairs,
}

impl Scenario {
    /// Every scenario, in the order the CLI lists them.
    pub const ALL: [Scenario; 3] = [Scenario::FanIn, Scenario::FanOut, Scenario::Pairs];

    /// The name used on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::FanIn => "fan-in",
            Self::FanOut => "fan-out",
            Self::Pairs => "pairs",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario name that is not one of [`Scenario::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario {0:?} (expected fan-in, fan-out or pairs)")]
pub struct UnknownScenario(pub String);

impl FromStr for Scenario {
    type Err = UnknownScenario;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| UnknownScenario(s.to_owned()))
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the pairs scenario needs as many subscribers as publishers ({publishers} != {subscribers})"
    )]
    UnpairedPairs {
        publishers: usize,
        subscribers: usize,
    },
    #[error("topic prefix {prefix:?} does not make valid topics: {source}")]
    Topic { prefix: String, source: TopicError },
}

/// The concrete topics of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Topic of publisher i.
    pub topics: Vec<TopicName>,
    /// Filter subscriber j subscribes to.
    pub filters: Vec<TopicFilter>,
    /// Publishers subscriber j receives from: a contiguous range of publisher indexes.
    pub sources: Vec<Range<usize>>,
}

impl Plan {
    /// Topics under `base` (the prefix plus a run id, so runs never see each other's traffic).
    pub fn new(
        scenario: Scenario,
        base: &str,
        publishers: usize,
        subscribers: usize,
    ) -> Result<Self, PlanError> {
        let topic_err = |source| PlanError::Topic {
            prefix: base.to_owned(),
            source,
        };
        let topic = |suffix: &str| TopicName::new(&format!("{base}/{suffix}")).map_err(topic_err);
        let filter =
            |suffix: &str| TopicFilter::new(&format!("{base}/{suffix}")).map_err(topic_err);
        let plan = match scenario {
            Scenario::FanIn => Plan {
                topics: (0..publishers)
                    .map(|i| topic(&i.to_string()))
                    .collect::<Result<_, _>>()?,
                filters: vec![filter("+")?; subscribers],
                sources: vec![0..publishers; subscribers],
            },
            Scenario::FanOut => Plan {
                topics: vec![topic("all")?; publishers],
                filters: vec![filter("all")?; subscribers],
                sources: vec![0..publishers; subscribers],
            },
            Scenario::Pairs => {
                if publishers != subscribers {
                    return Err(PlanError::UnpairedPairs {
                        publishers,
                        subscribers,
                    });
                }
                Plan {
                    topics: (0..publishers)
                        .map(|i| topic(&i.to_string()))
                        .collect::<Result<_, _>>()?,
                    filters: (0..subscribers)
                        .map(|j| filter(&j.to_string()))
                        .collect::<Result<_, _>>()?,
                    sources: (0..subscribers).map(|j| j..j + 1).collect(),
                }
            }
        };
        Ok(plan)
    }

    /// Deliveries expected when publisher i has sent `sent[i]` messages.
    #[must_use]
    pub fn expected(&self, sent: &[u64]) -> u64 {
        self.sources
            .iter()
            .map(|range| sent[range.clone()].iter().sum::<u64>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iothub_model::filter_matches;

    #[test]
    fn names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse::<Scenario>(), Ok(scenario));
        }
        assert!("fanin".parse::<Scenario>().is_err());
    }

    #[test]
    fn plans_route_each_publisher_to_its_sources() {
        // (scenario, publishers, subscribers, topics, filters, sources as (start, end))
        type Case = (
            Scenario,
            usize,
            usize,
            &'static [&'static str],
            &'static [&'static str],
            &'static [(usize, usize)],
        );
        let cases: [Case; 4] = [
            (
                Scenario::FanIn,
                3,
                1,
                &["b/0", "b/1", "b/2"],
                &["b/+"],
                &[(0, 3)],
            ),
            (
                Scenario::FanOut,
                1,
                3,
                &["b/all"],
                &["b/all", "b/all", "b/all"],
                &[(0, 1), (0, 1), (0, 1)],
            ),
            (
                Scenario::Pairs,
                2,
                2,
                &["b/0", "b/1"],
                &["b/0", "b/1"],
                &[(0, 1), (1, 2)],
            ),
            (Scenario::FanIn, 2, 0, &["b/0", "b/1"], &[], &[]),
        ];
        for (scenario, n, m, topics, filters, sources) in cases {
            let sources: Vec<Range<usize>> = sources.iter().map(|&(a, b)| a..b).collect();
            let plan = Plan::new(scenario, "b", n, m).unwrap();
            let got: Vec<&str> = plan.topics.iter().map(TopicName::as_str).collect();
            assert_eq!(got, topics, "{scenario}");
            let got: Vec<&str> = plan.filters.iter().map(TopicFilter::as_str).collect();
            assert_eq!(got, filters, "{scenario}");
            assert_eq!(plan.sources, sources, "{scenario}");
            // The sources are exactly the publishers whose topic the filter matches.
            for (j, filter) in plan.filters.iter().enumerate() {
                for (i, topic) in plan.topics.iter().enumerate() {
                    assert_eq!(
                        filter_matches(filter.as_str(), topic.as_str()),
                        plan.sources[j].contains(&i),
                        "{scenario}: subscriber {j}, publisher {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_impossible_plans() {
        let cases: [(Scenario, &str, usize, usize); 4] = [
            (Scenario::Pairs, "b", 2, 3),
            (Scenario::FanIn, "a/+", 1, 1),
            (Scenario::FanOut, "a/#", 1, 1),
            (Scenario::Pairs, "a\0b", 1, 1),
        ];
        for (scenario, base, n, m) in cases {
            assert!(
                Plan::new(scenario, base, n, m).is_err(),
                "{scenario} {base:?}"
            );
        }
    }

    #[test]
    fn expected_deliveries() {
        let cases: [(Scenario, &[u64], usize, u64); 3] = [
            (Scenario::FanIn, &[10, 20], 3, 90),
            (Scenario::FanOut, &[5], 4, 20),
            (Scenario::Pairs, &[1, 2, 3], 3, 6),
        ];
        for (scenario, sent, m, expected) in cases {
            let plan = Plan::new(scenario, "b", sent.len(), m).unwrap();
            assert_eq!(plan.expected(sent), expected, "{scenario}");
        }
    }
}
