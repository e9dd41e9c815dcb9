//! A hub's settings as the engine keeps them: plan, limits, the caps they give, anonymous
//! admission and the anonymous clients' message filters, and its hub events (on or off,
//! and the topic prefix no client may publish under).

use std::sync::Arc;

use iothub_model::{
    ClientId, FilterError, HubId, HubLimits, MessageFilters, Plan, QoS, TemplateVars, TopicName,
};

use crate::engine::{HubCaps, HubSpec};
use crate::state::SessionFilters;

/// A hub's settings. Replaced whole by `Hub::reconfigure`; each connection keeps the
/// snapshot it was admitted under (a change of caps kicks it, so it never outlives them).
#[derive(Debug)]
pub(crate) struct HubConfig {
    pub(crate) name: String,
    pub(crate) plan: Plan,
    pub(crate) limits: HubLimits,
    pub(crate) allow_anonymous: bool,
    pub(crate) caps: HubCaps,
    pub(crate) anonymous_filters: MessageFilters,
    /// The anonymous filters expanded once, when they name no device template; otherwise
    /// they are expanded per client at CONNECT.
    anonymous_compiled: Option<SessionFilters>,
    pub(crate) events_enabled: bool,
    pub(crate) events_prefix: TopicName,
}

impl HubConfig {
    pub(crate) fn new(spec: &HubSpec) -> Result<Arc<Self>, FilterError> {
        let filters = &spec.anonymous_filters;
        let probe = |device: &'static str| TemplateVars {
            hub_id: spec.id,
            hub_name: &spec.name,
            device_id: device,
            device_name: device,
        };
        let anonymous_compiled = if filters.is_open() {
            Some(SessionFilters::default())
        } else if filters.uses_device_templates() {
            // Checked now with a stand-in client id, so CONNECT can only fail on the id.
            filters.expand(&probe("client"))?;
            None
        } else {
            Some(SessionFilters::new(filters.expand(&probe("client"))?))
        };
        Ok(Arc::new(Self {
            name: spec.name.clone(),
            plan: spec.plan,
            limits: spec.limits.clone(),
            allow_anonymous: spec.allow_anonymous,
            caps: caps_for(spec.plan, &spec.limits),
            anonymous_filters: filters.clone(),
            anonymous_compiled,
            events_enabled: spec.events_enabled,
            events_prefix: spec.events_topic_prefix.clone(),
        }))
    }

    /// Whether clients may not publish to `topic`: `$SYS/..` and `$SCW/..` (hub events,
    /// `$SYS` figures) and anything under the hub's events prefix are written by the hub
    /// only, so a client can never fake them.
    pub(crate) fn reserved_topic(&self, topic: &TopicName) -> bool {
        let first = topic.levels().next().unwrap_or_default();
        if first == "$SYS" || first == "$SCW" {
            return true;
        }
        let (t, prefix) = (topic.as_str(), self.events_prefix.as_str());
        t.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Anonymous clients are admitted: `allow_anonymous`, and never on the shared plan.
    pub(crate) fn admits_anonymous(&self) -> bool {
        self.allow_anonymous && self.plan != Plan::Shared
    }

    /// Highest QoS granted to a subscription. The shared plan has "no QoS 1/2 subscribe":
    /// such requests are granted QoS 0, the downgrade MQTT allows [MQTT-3.8.4-7].
    pub(crate) fn max_subscribe_qos(&self) -> QoS {
        match self.plan {
            Plan::Shared => QoS::AtMostOnce,
            Plan::Dedicated | Plan::Ha => QoS::ExactlyOnce,
        }
    }

    /// The filters of anonymous client `client` of hub `hub`.
    pub(super) fn anonymous_filters_for(
        &self,
        hub: HubId,
        client: &ClientId,
    ) -> Result<SessionFilters, FilterError> {
        if let Some(compiled) = &self.anonymous_compiled {
            return Ok(compiled.clone());
        }
        let vars = TemplateVars {
            hub_id: hub,
            hub_name: &self.name,
            device_id: client.as_str(),
            device_name: client.as_str(),
        };
        Ok(SessionFilters::new(self.anonymous_filters.expand(&vars)?))
    }
}

/// What a plan and its limits offer (SCALEWAY-API.md: the shared plan has no retained
/// publish and no QoS 2 publish; QoS 0 and 1 publish remain).
pub(crate) fn caps_for(plan: Plan, limits: &HubLimits) -> HubCaps {
    let shared = plan == Plan::Shared;
    HubCaps {
        maximum_qos: if shared {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        },
        retain_available: !shared,
        wildcard_available: true,
        shared_available: true,
        subscription_ids_available: true,
        receive_maximum: limits.receive_maximum.max(1),
        topic_alias_maximum: limits.topic_alias_maximum,
        max_payload_bytes: limits.max_payload_bytes,
        max_keep_alive_secs: limits.max_keep_alive_secs,
    }
}
