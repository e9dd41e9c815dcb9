//! `/routes`: create, list, get, update, delete. The broker checks a route before it is
//! stored (`Runtime::check_route`) and runs it once stored. A custom route (`wasm_config`)
//! carries its component in base64.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iothub_model::HubId;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Caller, IfMatch, JsonBody, PathId, QueryParams};
use super::views::{RouteList, RouteSummary, RouteView};
use super::{ApiState, tagged};
use crate::ids::RouteId;
use crate::records::{DbConfig, RestConfig, RouteConfig, RouteRecord, S3Config, WasmConfig};
use crate::registry::{RouteCreate, RouteUpdate};
use crate::store::RouteFilter;

/// The reference's three optional config blocks and iothub's `wasm_config`, of which a
/// request names one.
struct ConfigBlocks {
    s3_config: Option<S3Config>,
    db_config: Option<DbConfig>,
    rest_config: Option<RestConfig>,
    wasm_config: Option<WasmConfig>,
}

impl ConfigBlocks {
    /// The one block given; `None` when there is none.
    fn single(self) -> Result<Option<RouteConfig>, ApiError> {
        let mut given = Vec::new();
        if let Some(c) = self.s3_config {
            given.push(("s3_config", RouteConfig::S3(c)));
        }
        if let Some(c) = self.db_config {
            given.push(("db_config", RouteConfig::Database(c)));
        }
        if let Some(c) = self.rest_config {
            given.push(("rest_config", RouteConfig::Rest(c)));
        }
        if let Some(c) = self.wasm_config {
            given.push(("wasm_config", RouteConfig::Wasm(c)));
        }
        let mut given = given.into_iter();
        let first = given.next();
        if let Some((second, _)) = given.next() {
            return Err(ApiError::invalid(
                second,
                "a route has exactly one of s3_config, db_config, rest_config and wasm_config",
                "send only the block of the route's type",
            ));
        }
        Ok(first.map(|(_, c)| c))
    }
}

// serde's `flatten` does not combine with `deny_unknown_fields`, so the blocks are spelled
// out in both bodies and gathered into `ConfigBlocks` after parsing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRouteBody {
    hub_id: HubId,
    name: String,
    topic: String,
    s3_config: Option<S3Config>,
    db_config: Option<DbConfig>,
    rest_config: Option<RestConfig>,
    wasm_config: Option<WasmConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRouteBody {
    name: Option<String>,
    topic: Option<String>,
    s3_config: Option<S3Config>,
    db_config: Option<DbConfig>,
    rest_config: Option<RestConfig>,
    wasm_config: Option<WasmConfig>,
}

fn route_response(route: RouteRecord) -> Response {
    let version = route.version;
    tagged(version, RouteView::from(route))
}

pub async fn create(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateRouteBody>,
) -> Result<Response, ApiError> {
    let config = ConfigBlocks {
        s3_config: body.s3_config,
        db_config: body.db_config,
        rest_config: body.rest_config,
        wasm_config: body.wasm_config,
    }
    .single()?
    .ok_or_else(|| {
        ApiError::invalid(
            "s3_config",
            "a route needs one of s3_config, db_config, rest_config and wasm_config",
            "send the config block of the route's type",
        )
    })?;
    let req = RouteCreate {
        hub_id: body.hub_id,
        name: body.name,
        topic: body.topic,
        config,
    };
    Ok(route_response(
        state.registry.create_route(&caller, req).await?,
    ))
}

pub async fn list(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let params = query.list_params()?;
    let filter = RouteFilter {
        account_id: None,
        hub_id: query.parse("hub_id", "give the id of one of your hubs")?,
        name: query.take("name")?,
    };
    query.finish()?;
    let page = state.registry.list_routes(&caller, filter, &params).await?;
    Ok(Json(RouteList {
        routes: page.items.into_iter().map(RouteSummary::from).collect(),
        total_count: page.total_count,
    })
    .into_response())
}

pub async fn get(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<RouteId>,
) -> Result<Response, ApiError> {
    Ok(route_response(state.registry.get_route(&caller, id).await?))
}

pub async fn update(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<RouteId>,
    IfMatch(if_version): IfMatch,
    JsonBody(body): JsonBody<UpdateRouteBody>,
) -> Result<Response, ApiError> {
    let config = ConfigBlocks {
        s3_config: body.s3_config,
        db_config: body.db_config,
        rest_config: body.rest_config,
        wasm_config: body.wasm_config,
    }
    .single()?;
    let req = RouteUpdate {
        name: body.name,
        topic: body.topic,
        config,
    };
    Ok(route_response(
        state
            .registry
            .update_route(&caller, id, req, if_version)
            .await?,
    ))
}

pub async fn delete(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<RouteId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    state.registry.delete_route(&caller, id, if_version).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
