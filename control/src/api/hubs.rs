//! `/hubs`: create, list, get, update, delete, enable, disable, and the hub's CA.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iothub_model::{HubId, HubLimits, Plan};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Caller, IfMatch, JsonBody, PathId, QueryParams};
use super::views::{HubCaView, HubList, HubView};
use super::{ApiState, tagged};
use crate::registry::{HubCreate, HubInfo, HubUpdate};
use crate::store::HubFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateHubBody {
    name: String,
    /// `plan_dedicated` when absent.
    product_plan: Option<Plan>,
    disable_events: Option<bool>,
    events_topic_prefix: Option<String>,
    enable_device_auto_provisioning: Option<bool>,
    allow_anonymous: Option<bool>,
    limits: Option<HubLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateHubBody {
    name: Option<String>,
    product_plan: Option<Plan>,
    disable_events: Option<bool>,
    events_topic_prefix: Option<String>,
    enable_device_auto_provisioning: Option<bool>,
    allow_anonymous: Option<bool>,
    limits: Option<HubLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCaBody {
    ca_cert_pem: String,
    challenge_cert_pem: String,
}

fn hub_response(info: HubInfo) -> Response {
    let version = info.hub.version;
    tagged(version, HubView::from(info))
}

pub async fn create(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateHubBody>,
) -> Result<Response, ApiError> {
    let req = HubCreate {
        name: body.name,
        product_plan: body.product_plan.unwrap_or_default(),
        disable_events: body.disable_events,
        events_topic_prefix: body.events_topic_prefix,
        enable_device_auto_provisioning: body.enable_device_auto_provisioning,
        allow_anonymous: body.allow_anonymous,
        limits: body.limits,
    };
    Ok(hub_response(state.registry.create_hub(&caller, req).await?))
}

pub async fn list(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let params = query.list_params()?;
    let filter = HubFilter {
        account_id: None,
        name: query.take("name")?,
    };
    query.finish()?;
    let page = state.registry.list_hubs(&caller, filter, &params).await?;
    Ok(Json(HubList {
        hubs: page.items.into_iter().map(HubView::from).collect(),
        total_count: page.total_count,
    })
    .into_response())
}

pub async fn get(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
) -> Result<Response, ApiError> {
    Ok(hub_response(state.registry.get_hub(&caller, id).await?))
}

pub async fn update(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
    IfMatch(if_version): IfMatch,
    JsonBody(body): JsonBody<UpdateHubBody>,
) -> Result<Response, ApiError> {
    let req = HubUpdate {
        name: body.name,
        product_plan: body.product_plan,
        disable_events: body.disable_events,
        events_topic_prefix: body.events_topic_prefix,
        enable_device_auto_provisioning: body.enable_device_auto_provisioning,
        allow_anonymous: body.allow_anonymous,
        limits: body.limits,
    };
    Ok(hub_response(
        state
            .registry
            .update_hub(&caller, id, req, if_version)
            .await?,
    ))
}

pub async fn delete(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
    IfMatch(if_version): IfMatch,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let delete_devices = query.boolean("delete_devices")?.unwrap_or(false);
    query.finish()?;
    state
        .registry
        .delete_hub(&caller, id, delete_devices, if_version)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn enable(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    Ok(hub_response(
        state.registry.enable_hub(&caller, id, if_version).await?,
    ))
}

pub async fn disable(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    Ok(hub_response(
        state.registry.disable_hub(&caller, id, if_version).await?,
    ))
}

pub async fn set_ca(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
    IfMatch(if_version): IfMatch,
    JsonBody(body): JsonBody<SetCaBody>,
) -> Result<Response, ApiError> {
    Ok(hub_response(
        state
            .registry
            .set_hub_ca(
                &caller,
                id,
                &body.ca_cert_pem,
                &body.challenge_cert_pem,
                if_version,
            )
            .await?,
    ))
}

pub async fn get_ca(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
) -> Result<Response, ApiError> {
    let ca_cert_pem = state.registry.get_hub_ca(&caller, id).await?;
    Ok(Json(HubCaView { ca_cert_pem }).into_response())
}
