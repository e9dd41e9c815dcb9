//! `/networks`: create (answers the secret once), list, get, delete. Networks have no
//! update in the reference, hence no version and no ETag.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iothub_model::HubId;
use serde::Deserialize;

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, JsonBody, PathId, QueryParams};
use super::views::{CreatedNetwork, NetworkList, NetworkView};
use crate::ids::NetworkId;
use crate::records::NetworkType;
use crate::registry::NetworkCreate;
use crate::store::NetworkFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkBody {
    hub_id: HubId,
    name: String,
    #[serde(rename = "type")]
    network_type: NetworkType,
    topic_prefix: String,
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
