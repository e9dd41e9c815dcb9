//! The SigFox network: the backend's DATA/UPLINK and DATA/BIDIR custom callbacks. The body
//! is the callback's JSON template (see `tests/fixtures/sigfox/README.md`) and is published
//! unchanged on `<prefix>/<X-Topic>`, with `{variable}`s the backend left in `X-Topic`
//! replaced by the body's fields. A BIDIR callback (`"ack": true`) gets the device's pending
//! downlink as `{"<device>": {"downlinkData": "<16 hex>"}}`, else 204.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::codec::hex_decode;
use crate::rest::header;
use crate::{IngressError, NetworkSpec, Networks};

pub(crate) fn callback(
    networks: &Networks,
    spec: &NetworkSpec,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, IngressError> {
    let template = header(headers, "x-topic")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| IngressError::InvalidTopic("X-Topic is missing or empty".into()))?;
    let fields: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(IngressError::json("(body)", "not a JSON object")),
        Err(e) => return Err(IngressError::json("(body)", e.to_string())),
    };
    let device = device(&fields)?;
    data(&fields)?;
    let ack = flag(&fields, "ack")?;
    let suffix = expand(template, &fields)?;
    let topic = networks.topic(spec, &suffix)?;
    networks.publish(spec, topic, body)?;
    if ack && let Some(data) = networks.inner.downlinks.take_sigfox(spec.id, &device) {
        let mut answer = Map::new();
        answer.insert(device, json!({ "downlinkData": data }));
        return Ok((StatusCode::OK, Json(Value::Object(answer))).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `device`: 1 to 8 hex digits, as sent (the answer's key must equal it).
fn device(fields: &Map<String, Value>) -> Result<String, IngressError> {
    let device = match fields.get("device") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(IngressError::json("device", "must be a string")),
        None => return Err(IngressError::json("device", "missing")),
    };
    if device.is_empty() || device.len() > 8 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IngressError::encoding(
            "device",
            format!("{device:?} is not 1 to 8 hex digits"),
        ));
    }
    Ok(device)
}

/// `data`: even-length hex, at most 12 bytes.
fn data(fields: &Map<String, Value>) -> Result<(), IngressError> {
    let data = match fields.get("data") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(IngressError::json("data", "must be a string")),
        None => return Err(IngressError::json("data", "missing")),
    };
    let bytes = hex_decode(data).map_err(|e| IngressError::encoding("data", e))?;
    if bytes.len() > 12 {
        return Err(IngressError::encoding(
            "data",
            format!("{} bytes; SigFox frames carry at most 12", bytes.len()),
        ));
    }
    Ok(())
}

/// A boolean that may arrive quoted (`"true"`); absent is false.
fn flag(fields: &Map<String, Value>, name: &str) -> Result<bool, IngressError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(_) => Err(IngressError::json(name, "must be true or false")),
    }
}

/// Replaces each `{name}` of the topic template by the body's field `name` (a string as is,
/// a number or boolean as its JSON text). A variable the body does not have is refused.
fn expand(template: &str, fields: &Map<String, Value>) -> Result<String, IngressError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| IngressError::InvalidTopic(format!("unclosed '{{' in {template:?}")))?;
        let name = &after[..close];
        let value = match fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => {
                return Err(IngressError::InvalidTopic(format!(
                    "{{{name}}} in X-Topic is not a field of the callback body"
                )));
            }
        };
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Map<String, Value> {
        match json!({"device": "2BEE81", "seqNumber": 1287, "ack": "true", "data": "0e1a"}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn topic_variables_expand_from_the_body() {
        let f = fields();
        let cases = [
            ("sigfox/{device}", Ok("sigfox/2BEE81".to_owned())),
            ("{device}/{seqNumber}", Ok("2BEE81/1287".to_owned())),
            ("plain", Ok("plain".to_owned())),
        ];
        for (template, want) in cases {
            assert_eq!(expand(template, &f), want, "{template}");
        }
        assert!(matches!(
            expand("x/{nope}", &f),
            Err(IngressError::InvalidTopic(_))
        ));
        assert!(matches!(
            expand("x/{device", &f),
            Err(IngressError::InvalidTopic(_))
        ));
    }

    #[test]
    fn fields_are_checked() {
        let f = fields();
        assert_eq!(device(&f).unwrap(), "2BEE81");
        assert!(flag(&f, "ack").unwrap());
        assert!(!flag(&f, "longPolling").unwrap());
        assert!(data(&f).is_ok());
        let mut bad = f.clone();
        bad.insert("data".into(), json!("0e1"));
        assert!(matches!(
            data(&bad),
            Err(IngressError::InvalidEncoding { .. })
        ));
        bad.insert("device".into(), json!("XYZ"));
        assert!(matches!(
            device(&bad),
            Err(IngressError::InvalidEncoding { .. })
        ));
    }
}
