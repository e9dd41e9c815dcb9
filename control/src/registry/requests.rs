//! What clients ask the registry for (creations, updates, list parameters) and the views
//! it answers with. Plain data: the rules live in the registry.

use iothub_model::{HubId, HubLimits, Plan};

use super::config::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use super::error::{RegistryError, invalid};
use crate::records::{
    DeviceRecord, FilterRule, HubRecord, MessageFilters, NetworkType, RouteConfig,
};
use crate::store::{ListQuery, OrderBy, Paging};

/// Paging and order of a list request, as the client sent them (`None`: default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    /// 1-based; default 1.
    pub page: Option<u32>,
    /// 1..=100; default 20.
    pub page_size: Option<u32>,
    /// `<field>_asc|_desc`; default `name_asc`.
    pub order_by: Option<String>,
}

impl ListParams {
    pub(crate) fn query<F>(&self, filter: F) -> Result<ListQuery<F>, RegistryError> {
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err(invalid(
                "page",
                "must be at least 1",
                "pages are numbered from 1",
            ));
        }
        let page_size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(invalid(
                "page_size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
                format!("ask for at most {MAX_PAGE_SIZE} items per page"),
            ));
        }
        let order_by = match &self.order_by {
            None => OrderBy::default(),
            Some(s) => s.parse::<OrderBy>().map_err(|e| {
                invalid(
                    "order_by",
                    e.to_string(),
                    "e.g. name_asc or created_at_desc",
                )
            })?,
        };
        Ok(ListQuery {
            filter,
            order_by,
            paging: Some(Paging { page, page_size }),
        })
    }
}

/// A hub as the API shows it: the record plus counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubInfo {
    pub hub: HubRecord,
    pub device_count: u64,
    pub connected_device_count: u64,
}

/// A device as the API shows it: the record plus its connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device: DeviceRecord,
    pub is_connected: bool,
}

/// A new hub. Unset options take the reference's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubCreate {
    pub name: String,
    pub product_plan: Plan,
    pub disable_events: Option<bool>,
    pub events_topic_prefix: Option<String>,
    pub enable_device_auto_provisioning: Option<bool>,
    pub allow_anonymous: Option<bool>,
    pub limits: Option<HubLimits>,
}

/// A hub update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubUpdate {
    pub name: Option<String>,
    pub product_plan: Option<Plan>,
    pub disable_events: Option<bool>,
    pub events_topic_prefix: Option<String>,
    pub enable_device_auto_provisioning: Option<bool>,
    pub allow_anonymous: Option<bool>,
    pub limits: Option<HubLimits>,
}

/// A new device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCreate {
    pub hub_id: HubId,
    pub name: String,
    pub description: String,
    pub allow_insecure: bool,
    pub allow_multiple_connections: bool,
    pub message_filters: MessageFilters,
}

/// Message filters to change: a direction left `None` keeps its rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFiltersUpdate {
    pub publish: Option<FilterRule>,
    pub subscribe: Option<FilterRule>,
}

/// A device update (`name` is read-only, as in the reference). Setting `hub_id` moves the
/// device to another hub of the same account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    pub description: Option<String>,
    pub allow_insecure: Option<bool>,
    pub allow_multiple_connections: Option<bool>,
    pub message_filters: Option<MessageFiltersUpdate>,
    pub hub_id: Option<HubId>,
}

/// A new route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCreate {
    pub hub_id: HubId,
    pub name: String,
    pub topic: String,
    pub config: RouteConfig,
}

/// A route update. `config` must be of the route's type (a route cannot change type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteUpdate {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub config: Option<RouteConfig>,
}

/// A LoRaWAN device to register in a LoRaWAN network: an AppKey (join-requests), ABP
/// session keys (data frames), or both. Hex in either case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LorawanDeviceCreate {
    pub dev_eui: String,
    pub join_eui: Option<String>,
    pub app_key: Option<String>,
    pub dev_addr: Option<String>,
    pub nwk_s_key: Option<String>,
    pub app_s_key: Option<String>,
    pub f_cnt_up: Option<u32>,
}

/// A new network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkCreate {
    pub hub_id: HubId,
    pub name: String,
    pub network_type: NetworkType,
    pub topic_prefix: String,
    /// LoRaWAN only: push downlinks to this network server (with `ns_token`).
    pub ns_url: Option<String>,
    pub ns_token: Option<String>,
}
