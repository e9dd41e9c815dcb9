//! `POST /iot/v1/accounts`: the admin account creates accounts (answers the new account's
//! first API key, shown this once). The admin rule is the registry's.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::views::CreatedAccount;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountBody {
    name: String,
}

pub async fn create(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateAccountBody>,
) -> Result<Response, ApiError> {
    let (account, api_key) = state.registry.create_account(&caller, &body.name).await?;
    Ok(Json(CreatedAccount {
        account: account.into(),
        api_key,
    })
    .into_response())
}
