//! `/networks`: create (answers the secret once), list, get, delete. Networks have no
//! update in the reference, hence no version and no ETag. The LoRaWAN devices of a LoRaWAN
//! network: register (keys are never shown again), list, get, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iothub_model::HubId;
use serde::Deserialize;

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, DevEuiParam, JsonBody, PathId, QueryParams};
use super::views::{
    CreatedNetwork, LorawanDeviceList, LorawanDeviceView, NetworkList, NetworkView,
};
use crate::ids::NetworkId;
use crate::records::NetworkType;
use crate::registry::{LorawanDeviceCreate, NetworkCreate};
use crate::store::NetworkFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkBody {
    hub_id: HubId,
    name: String,
    #[serde(rename = "type")]
    network_type: NetworkType,
    topic_prefix: String,
    #[serde(default)]
    network_server_url: Option<String>,
    #[serde(default)]
    network_server_token: Option<String>,
}

pub async fn create(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateNetworkBody>,
) -> Result<Response, ApiError> {
    let req = NetworkCreate {
        hub_id: body.hub_id,
        name: body.name,
        network_type: body.network_type,
        topic_prefix: body.topic_prefix,
        ns_url: body.network_server_url,
        ns_token: body.network_server_token,
    };
    let (network, secret) = state.registry.create_network(&caller, req).await?;
    Ok(Json(CreatedNetwork {
        network: network.into(),
        secret,
    })
    .into_response())
}

pub async fn list(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let params = query.list_params()?;
    let filter = NetworkFilter {
        account_id: None,
        hub_id: query.parse("hub_id", "give the id of one of your hubs")?,
        name: query.take("name")?,
        topic_prefix: query.take("topic_prefix")?,
    };
    query.finish()?;
    let page = state
        .registry
        .list_networks(&caller, filter, &params)
        .await?;
    Ok(Json(NetworkList {
        networks: page.items.into_iter().map(NetworkView::from).collect(),
        total_count: page.total_count,
    })
    .into_response())
}

pub async fn get(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<NetworkId>,
) -> Result<Response, ApiError> {
    let network = state.registry.get_network(&caller, id).await?;
    Ok(Json(NetworkView::from(network)).into_response())
}

pub async fn delete(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<NetworkId>,
) -> Result<Response, ApiError> {
    state.registry.delete_network(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLorawanDeviceBody {
    dev_eui: String,
    #[serde(default)]
    join_eui: Option<String>,
    #[serde(default)]
    app_key: Option<String>,
    #[serde(default)]
    dev_addr: Option<String>,
    #[serde(default)]
    nwk_s_key: Option<String>,
    #[serde(default)]
    app_s_key: Option<String>,
    #[serde(default)]
    f_cnt_up: Option<u32>,
}

pub async fn create_lorawan_device(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(network): PathId<NetworkId>,
    JsonBody(body): JsonBody<CreateLorawanDeviceBody>,
) -> Result<Response, ApiError> {
    let req = LorawanDeviceCreate {
        dev_eui: body.dev_eui,
        join_eui: body.join_eui,
        app_key: body.app_key,
        dev_addr: body.dev_addr,
        nwk_s_key: body.nwk_s_key,
        app_s_key: body.app_s_key,
        f_cnt_up: body.f_cnt_up,
    };
    let device = state
        .registry
        .create_lorawan_device(&caller, network, req)
        .await?;
    Ok(Json(LorawanDeviceView::from(device)).into_response())
}

pub async fn list_lorawan_devices(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(network): PathId<NetworkId>,
) -> Result<Response, ApiError> {
    let devices = state
        .registry
        .list_lorawan_devices(&caller, network)
        .await?;
    Ok(Json(LorawanDeviceList {
        total_count: devices.len() as u64,
        lorawan_devices: devices.into_iter().map(LorawanDeviceView::from).collect(),
    })
    .into_response())
}

pub async fn get_lorawan_device(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(network): PathId<NetworkId>,
    PathId(DevEuiParam(dev_eui)): PathId<DevEuiParam>,
) -> Result<Response, ApiError> {
    let device = state
        .registry
        .get_lorawan_device(&caller, network, &dev_eui)
        .await?;
    Ok(Json(LorawanDeviceView::from(device)).into_response())
}

pub async fn delete_lorawan_device(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(network): PathId<NetworkId>,
    PathId(DevEuiParam(dev_eui)): PathId<DevEuiParam>,
) -> Result<Response, ApiError> {
    state
        .registry
        .delete_lorawan_device(&caller, network, &dev_eui)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
