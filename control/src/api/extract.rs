//! Request extractors whose refusals are the API's JSON errors naming the field.
//!
//! axum's own extractors answer plain text ("Failed to deserialize the JSON body…"), which
//! a client cannot act on. These parse the same things and answer `invalid_arguments` with
//! the offending field's path (`message_filters.publish.topics[0]`), found with
//! `serde_path_to_error`.

use std::fmt::Display;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::header::IF_MATCH;
use axum::http::request::Parts;
use iothub_model::{DeviceId, HubId};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::ids::{NetworkId, RouteId};
use crate::records::AccountRecord;
use crate::registry::ListParams;

/// The authenticated account, put in the request's extensions by the API's gate.
#[derive(Debug, Clone)]
pub struct Caller(pub AccountRecord);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            // Only a route registered without the gate could get here.
            .ok_or_else(|| ApiError::Internal("route without authentication".into()))
    }
}

/// An id taken from the path, under the parameter name the document gives it.
pub trait PathParam: FromStr {
    const NAME: &'static str;
}

impl PathParam for HubId {
    const NAME: &'static str = "hub_id";
}
impl PathParam for DeviceId {
    const NAME: &'static str = "device_id";
}
impl PathParam for RouteId {
    const NAME: &'static str = "route_id";
}
impl PathParam for NetworkId {
    const NAME: &'static str = "network_id";
}

/// A LoRaWAN DevEUI in a path: 16 hex digits, held lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevEuiParam(pub String);

impl FromStr for DevEuiParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::validate::hex_id("dev_eui", s, 16)
            .map(Self)
            .map_err(|i| i.reason)
    }
}

impl PathParam for DevEuiParam {
    const NAME: &'static str = "dev_eui";
}

/// The id of the addressed resource; a malformed one is a 400 naming the parameter.
#[derive(Debug, Clone, Copy)]
pub struct PathId<T>(pub T);

impl<S: Send + Sync, T: PathParam> FromRequestParts<S> for PathId<T>
where
    T::Err: Display,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Internal(format!("path parameters: {e}")))?;
        let raw = params
            .iter()
            .find(|(name, _)| *name == T::NAME)
            .map(|(_, value)| value)
            .ok_or_else(|| ApiError::Internal(format!("no {} in the route", T::NAME)))?;
        raw.parse().map(PathId).map_err(|e: T::Err| {
            ApiError::invalid(
                T::NAME,
                e.to_string(),
                "ids are UUIDs as the API returned them",
            )
        })
    }
}

/// The version an `If-Match` header asks for: `None` without the header or with `*`.
///
/// ETags are the record's version in quotes (`"3"`). A weak tag (`W/"3"`) never matches:
/// `If-Match` compares strongly (RFC 9110 §13.1.1), so it answers 412 at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<i64>);

impl IfMatch {
    /// Parses one header value.
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        let value = value.trim();
        if value == "*" {
            return Ok(Self(None));
        }
        if value.starts_with("W/") {
            return Err(ApiError::UnmatchableEtag {
                value: value.chars().take(64).collect(),
            });
        }
        let malformed = || {
            ApiError::invalid(
                "If-Match",
                format!(
                    "{:?} is not one entity tag",
                    value.chars().take(64).collect::<String>()
                ),
                "send the ETag of the last response for this resource, quotes included, e.g. \"3\"",
            )
        };
        let inner = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(malformed)?;
        if inner.contains('"') {
            return Err(malformed());
        }
        // A well-formed tag that is not one of ours cannot match any version.
        match inner.parse::<i64>() {
            Ok(version) if version > 0 => Ok(Self(Some(version))),
            _ => Err(ApiError::UnmatchableEtag {
                value: value.chars().take(64).collect(),
            }),
        }
    }

    /// The ETag of a version, as responses carry it.
    pub fn etag(version: i64) -> String {
        format!("\"{version}\"")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IF_MATCH).iter();
        let Some(first) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(ApiError::invalid(
                "If-Match",
                "the header is repeated",
                "send one If-Match header with one ETag",
            ));
        }
        let text = first.to_str().map_err(|_| {
            ApiError::invalid("If-Match", "is not ASCII", "send the ETag as received")
        })?;
        Self::parse(text)
    }
}

/// A JSON request body, deserialized into `T` (whose structs deny unknown fields).
///
/// The content type is not checked: `curl -d` sends form encoding by default, and a body
/// that is not JSON is refused anyway, with a clearer message than 415 would give.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge
                } else {
                    ApiError::invalid("body", e.body_text(), "send a JSON object")
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON object into `T`, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    const HELP: &str = "send a JSON object with the fields the API reference lists";
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::invalid("body", "the request body is empty", HELP));
        }
        // serde would read a struct from an array too; the API takes objects only.
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "body",
                "the request body is not a JSON object",
                HELP,
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

/// The field a serde error is about, and its message without serde_json's position suffix.
fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    let position = format!("at line {} column {} of the body", e.line(), e.column());
    if e.is_syntax() || e.is_eof() {
        return ApiError::invalid(
            "body",
            format!("malformed JSON: {reason}"),
            format!("fix the JSON {position}"),
        );
    }
    let mut field = match path {
        "." | "?" => String::new(),
        p => p.to_owned(),
    };
    // "missing field `x`" points at the parent; name the field itself.
    if let Some(missing) = reason
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(missing);
    }
    if field.is_empty() {
        field.push_str("body");
    }
    ApiError::invalid(field, reason, format!("see the API reference ({position})"))
}

/// The query string as name/value pairs, consumed parameter by parameter so unknown or
/// repeated parameters are refused by name.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e: QueryRejection| {
                ApiError::invalid(
                    "query",
                    e.body_text(),
                    "percent-encode the query string as UTF-8",
                )
            })?;
        Ok(Self(pairs))
    }
}

impl QueryParams {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// Removes and returns the parameter's value.
    pub fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut found = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].0 == name {
                let (_, value) = self.0.remove(i);
                if found.is_some() {
                    return Err(ApiError::invalid(
                        name,
                        "the parameter is repeated",
                        "give each query parameter once",
                    ));
                }
                found = Some(value);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    /// Removes and parses the parameter.
    pub fn parse<T: FromStr>(&mut self, name: &str, help: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: Display,
    {
        self.take(name)?
            .map(|v| {
                v.parse::<T>().map_err(|e| {
                    ApiError::invalid(
                        name,
                        format!("{:?}: {e}", v.chars().take(64).collect::<String>()),
                        help,
                    )
                })
            })
            .transpose()
    }

    /// `true` or `false`.
    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        self.parse(name, "use true or false")
    }

    /// `page`, `page_size` and `order_by`; their ranges are the registry's to check.
    pub fn list_params(&mut self) -> Result<ListParams, ApiError> {
        Ok(ListParams {
            page: self.parse("page", "pages are numbered from 1")?,
            page_size: self.parse("page_size", "ask for 1 to 100 items per page")?,
            order_by: self.take("order_by")?,
        })
    }

    /// Refuses what the endpoint did not take.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.into_iter().next() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::invalid(
                name.chars().take(64).collect::<String>(),
                "unknown query parameter",
                "see the API reference for this endpoint's parameters",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        policy: String,
        topics: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: Option<u32>,
        rule: Option<Rule>,
    }

    fn field_of(body: &str) -> Option<String> {
        match parse_json::<Body>(body.as_bytes()) {
            Ok(_) => None,
            Err(ApiError::InvalidArgument { field, .. }) => Some(field),
            Err(other) => Some(format!("unexpected {other:?}")),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"name":"a"}"#, None),
            (r#"  {"name":"a"}  "#, None),
            (r#"{"name":"a","bogus":1}"#, Some("bogus")),
            (r#"{"count":1}"#, Some("name")),
            (r#"{"name":1}"#, Some("name")),
            (r#"{"name":"a","count":-1}"#, Some("count")),
            (r#"{"name":"a","count":"1"}"#, Some("count")),
            (r#"{"name":"a","rule":{"topics":[]}}"#, Some("rule.policy")),
            (
                r#"{"name":"a","rule":{"policy":"x","topics":[1]}}"#,
                Some("rule.topics[0]"),
            ),
            (
                r#"{"name":"a","rule":{"policy":"x","topics":[],"z":0}}"#,
                Some("rule.z"),
            ),
            (r#"{"name":"a""#, Some("body")),
            (r#"{"name":"a"} trailing"#, Some("body")),
            (r#"{name:"a"}"#, Some("body")),
            ("", Some("body")),
            ("   ", Some("body")),
            (r#"["a"]"#, Some("body")),
            ("null", Some("body")),
        ];
        for (body, want) in cases {
            assert_eq!(field_of(body).as_deref(), *want, "{body}");
        }
    }

    #[test]
    fn malformed_json_reason_has_no_position_suffix_but_help_has_it() {
        let Err(ApiError::InvalidArgument { reason, help, .. }) =
            parse_json::<Body>(br#"{"name": }"#)
        else {
            panic!("accepted malformed JSON");
        };
        assert!(reason.starts_with("malformed JSON"), "{reason}");
        assert!(!reason.contains("line 1"), "{reason}");
        assert!(help.contains("line 1 column"), "{help}");
    }

    #[test]
    fn if_match_values() {
        let cases: &[(&str, Result<Option<i64>, &str>)] = &[
            ("\"3\"", Ok(Some(3))),
            (" \"12\" ", Ok(Some(12))),
            ("*", Ok(None)),
            ("W/\"3\"", Err("412")),
            ("\"abc\"", Err("412")),
            ("\"0\"", Err("412")),
            ("\"-1\"", Err("412")),
            ("3", Err("400")),
            ("\"3", Err("400")),
            ("\"3\", \"4\"", Err("400")),
            ("", Err("400")),
        ];
        for (value, want) in cases {
            let got = match IfMatch::parse(value) {
                Ok(IfMatch(v)) => Ok(v),
                Err(ApiError::UnmatchableEtag { .. }) => Err("412"),
                Err(ApiError::InvalidArgument { .. }) => Err("400"),
                Err(other) => panic!("{value}: {other:?}"),
            };
            assert_eq!(got, *want, "{value:?}");
        }
        assert_eq!(IfMatch::etag(7), "\"7\"");
    }

    #[test]
    fn query_params_refuse_repeats_unknowns_and_bad_values() {
        let pairs = |p: &[(&str, &str)]| {
            QueryParams::from_pairs(
                p.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let mut q = pairs(&[("page", "2"), ("order_by", "name_desc"), ("x", "1")]);
        let list = q.list_params().unwrap();
        assert_eq!(list.page, Some(2));
        assert_eq!(list.order_by.as_deref(), Some("name_desc"));
        assert!(matches!(q.finish(), Err(ApiError::InvalidArgument { field, .. }) if field == "x"));

        let mut q = pairs(&[("page", "1"), ("page", "2")]);
        assert!(
            matches!(q.list_params(), Err(ApiError::InvalidArgument { field, .. }) if field == "page")
        );

        let table: &[(&str, &str)] = &[("page", "-1"), ("page", "x"), ("page_size", "1.5")];
        for (name, value) in table {
            let mut q = pairs(&[(name, value)]);
            assert!(
                matches!(q.list_params(), Err(ApiError::InvalidArgument { ref field, .. }) if field == name),
                "{name}={value}"
            );
        }
        let mut q = pairs(&[("b", "yes")]);
        assert!(q.boolean("b").is_err());
        let mut q = pairs(&[("b", "true")]);
        assert_eq!(q.boolean("b").unwrap(), Some(true));
    }
}
