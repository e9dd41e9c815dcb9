//! `/devices`: create, list, get, update, delete, enable, disable, and the device's
//! certificate (renew, set a custom one, get).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iothub_model::{DeviceId, HubId};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Caller, IfMatch, JsonBody, PathId, QueryParams};
use super::views::{
    CreatedDevice, DeviceCertificateView, DeviceList, DeviceView, RenewedCertificate,
};
use super::{ApiState, tagged};
use crate::records::{DeviceStatus, FilterRule, MessageFilters};
use crate::registry::{DeviceCreate, DeviceInfo, DeviceUpdate, MessageFiltersUpdate};
use crate::store::DeviceFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeviceBody {
    hub_id: HubId,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default)]
    allow_multiple_connections: bool,
    #[serde(default)]
    message_filters: MessageFilters,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiltersUpdateBody {
    publish: Option<FilterRule>,
    subscribe: Option<FilterRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDeviceBody {
    /// Read-only: taken only to refuse it with a precise message rather than "unknown field".
    name: Option<serde::de::IgnoredAny>,
    description: Option<String>,
    allow_insecure: Option<bool>,
    allow_multiple_connections: Option<bool>,
    message_filters: Option<FiltersUpdateBody>,
    hub_id: Option<HubId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCertificateBody {
    certificate_pem: String,
}

fn device_response(info: DeviceInfo) -> Response {
    let version = info.device.version;
    tagged(version, DeviceView::from(info))
}

pub async fn create(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateDeviceBody>,
) -> Result<Response, ApiError> {
    let req = DeviceCreate {
        hub_id: body.hub_id,
        name: body.name,
        description: body.description,
        allow_insecure: body.allow_insecure,
        allow_multiple_connections: body.allow_multiple_connections,
        message_filters: body.message_filters,
    };
    let (info, credentials) = state.registry.create_device(&caller, req).await?;
    let version = info.device.version;
    Ok(tagged(
        version,
        CreatedDevice {
            device: info.into(),
            certificate: credentials.map(Into::into),
        },
    ))
}

pub async fn list(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let params = query.list_params()?;
    let filter = DeviceFilter {
        account_id: None,
        hub_id: query.parse("hub_id", "give the id of one of your hubs")?,
        name: query.take("name")?,
        allow_insecure: query.boolean("allow_insecure")?,
        allow_multiple_connections: query.boolean("allow_multiple_connections")?,
        status: query.parse::<DeviceStatus>("status", "use enabled or disabled")?,
    };
    query.finish()?;
    let page = state
        .registry
        .list_devices(&caller, filter, &params)
        .await?;
    Ok(Json(DeviceList {
        devices: page.items.into_iter().map(DeviceView::from).collect(),
        total_count: page.total_count,
    })
    .into_response())
}

pub async fn get(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
) -> Result<Response, ApiError> {
    Ok(device_response(
        state.registry.get_device(&caller, id).await?,
    ))
}

pub async fn update(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    IfMatch(if_version): IfMatch,
    JsonBody(body): JsonBody<UpdateDeviceBody>,
) -> Result<Response, ApiError> {
    if body.name.is_some() {
        return Err(ApiError::invalid(
            "name",
            "a device's name is read-only",
            "create a new device to use another name",
        ));
    }
    let req = DeviceUpdate {
        description: body.description,
        allow_insecure: body.allow_insecure,
        allow_multiple_connections: body.allow_multiple_connections,
        message_filters: body.message_filters.map(|f| MessageFiltersUpdate {
            publish: f.publish,
            subscribe: f.subscribe,
        }),
        hub_id: body.hub_id,
    };
    Ok(device_response(
        state
            .registry
            .update_device(&caller, id, req, if_version)
            .await?,
    ))
}

pub async fn delete(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    state
        .registry
        .delete_device(&caller, id, if_version)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn enable(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    Ok(device_response(
        state
            .registry
            .enable_device(&caller, id, if_version)
            .await?,
    ))
}

pub async fn disable(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    Ok(device_response(
        state
            .registry
            .disable_device(&caller, id, if_version)
            .await?,
    ))
}

pub async fn renew_certificate(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    IfMatch(if_version): IfMatch,
) -> Result<Response, ApiError> {
    let (info, credentials) = state
        .registry
        .renew_device_certificate(&caller, id, if_version)
        .await?;
    let version = info.device.version;
    Ok(tagged(
        version,
        RenewedCertificate {
            device: info.into(),
            certificate: credentials.into(),
        },
    ))
}

pub async fn set_certificate(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    IfMatch(if_version): IfMatch,
    JsonBody(body): JsonBody<SetCertificateBody>,
) -> Result<Response, ApiError> {
    let (info, certificate_pem) = state
        .registry
        .set_device_certificate(&caller, id, &body.certificate_pem, if_version)
        .await?;
    let version = info.device.version;
    Ok(tagged(
        version,
        DeviceCertificateView {
            device: info.into(),
            certificate_pem,
        },
    ))
}

pub async fn get_certificate(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
) -> Result<Response, ApiError> {
    let (info, certificate_pem) = state.registry.get_device_certificate(&caller, id).await?;
    let version = info.device.version;
    Ok(tagged(
        version,
        DeviceCertificateView {
            device: info.into(),
            certificate_pem,
        },
    ))
}
