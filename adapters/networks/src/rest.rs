//! The REST network: `POST /networks/{id}` with `X-Secret` and `X-Topic`, the body is the
//! payload, published on `<prefix>/<X-Topic>`. The same path serves SigFox networks.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::{IngressError, NetworkKind, Networks, sigfox};

pub(crate) fn header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, IngressError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| IngressError::InvalidTopic(format!("{name} is not visible ASCII"))),
    }
}

pub(crate) fn secret(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-secret").and_then(|v| v.to_str().ok())
}

pub(crate) async fn rest_or_sigfox(
    State(networks): State<Networks>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec = match networks.authenticate(&id, secret(&headers)) {
        Ok(spec) => spec,
        Err(e) => return e.into_response(),
    };
    let result = match spec.kind {
        NetworkKind::Rest => rest(&networks, &spec, &headers, body),
        NetworkKind::Sigfox => sigfox::callback(&networks, &spec, &headers, body),
        NetworkKind::Lorawan => Err(IngressError::WrongEndpoint {
            kind: "lorawan",
            hint: format!("POST to /networks/{id}/chirpstack, /tts or /phy"),
        }),
    };
    match result {
        Ok(response) => response,
        Err(e) => networks.refuse(&spec, e).into_response(),
    }
}

fn rest(
    networks: &Networks,
    spec: &crate::NetworkSpec,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, IngressError> {
    let suffix = header(headers, "x-topic")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| IngressError::InvalidTopic("X-Topic is missing or empty".into()))?;
    let topic = networks.topic(spec, suffix)?;
    networks.publish(spec, topic.clone(), body)?;
    Ok(Json(json!({ "topic": topic.as_str() })).into_response())
}
