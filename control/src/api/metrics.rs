//! `GET /hubs/{hub_id}/metrics` and `GET /devices/{device_id}/metrics`: the time series of
//! [`crate::metrics`], for `?period=hour|day|week|month|year` and/or `?start_date=`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use iothub_model::{DeviceId, HubId};

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, PathId, QueryParams};
use crate::metrics::Period;
use crate::time::Timestamp;

/// `period` and `start_date`, parsed (their names are the API's field names on refusal).
fn range_params(query: &mut QueryParams) -> Result<(Option<Period>, Option<Timestamp>), ApiError> {
    let period = query.parse::<Period>("period", "use hour, day, week, month or year")?;
    let start_date = query.parse::<Timestamp>(
        "start_date",
        "give an RFC 3339 date-time such as 2024-05-01T12:00:00Z",
    )?;
    Ok((period, start_date))
}

pub async fn hub(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<HubId>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let (period, start_date) = range_params(&mut query)?;
    query.finish()?;
    let metrics = state
        .registry
        .hub_metrics(&caller, id, period, start_date)
        .await?;
    Ok(Json(metrics).into_response())
}

pub async fn device(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathId(id): PathId<DeviceId>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let (period, start_date) = range_params(&mut query)?;
    query.finish()?;
    let metrics = state
        .registry
        .device_metrics(&caller, id, period, start_date)
        .await?;
    Ok(Json(metrics).into_response())
}
