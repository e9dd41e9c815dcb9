//! The registry's configuration: region and quotas (the `quotas:` block of the config).

use iothub_model::Plan;
use serde::Deserialize;

/// The reference's default events prefix.
pub const DEFAULT_EVENTS_TOPIC_PREFIX: &str = "$SCW/events";
/// The default region name.
pub const DEFAULT_REGION: &str = "fr-par";
/// Default and largest `page_size` of lists.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;

/// Hubs an account may have, per plan.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanQuotas {
    pub plan_shared: u64,
    pub plan_dedicated: u64,
    pub plan_ha: u64,
}

impl Default for PlanQuotas {
    /// The reference's: 5 shared, 50 dedicated, 50 HA hubs per account.
    fn default() -> Self {
        Self {
            plan_shared: 5,
            plan_dedicated: 50,
            plan_ha: 50,
        }
    }
}

impl PlanQuotas {
    pub fn for_plan(&self, plan: Plan) -> u64 {
        match plan {
            Plan::Shared => self.plan_shared,
            Plan::Dedicated => self.plan_dedicated,
            Plan::Ha => self.plan_ha,
        }
    }
}

/// The `quotas:` block of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub hubs_per_account: PlanQuotas,
    pub devices_per_hub: u64,
    pub routes_per_hub: u64,
    pub networks_per_hub: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            hubs_per_account: PlanQuotas::default(),
            devices_per_hub: 10_000,
            routes_per_hub: 100,
            networks_per_hub: 100,
        }
    }
}

/// What the registry needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The region this node serves (`fr-par` by default); stamped on hubs.
    pub region: String,
    pub quotas: Quotas,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            region: DEFAULT_REGION.to_owned(),
            quotas: Quotas::default(),
        }
    }
}
