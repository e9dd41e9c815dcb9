//! The management REST API: the reference's paths under `/iot/v1/regions/{region}/`
//! (hubs and their CA, devices and their certificate, their metrics, routes, networks),
//! `POST /iot/v1/accounts` for the admin, the OpenAPI document at `GET /openapi.json`, and
//! the CA devices should trust for the TLS listeners at
//! `GET /iot/v1/regions/{region}/server-ca` (no key needed: it is public by nature).
//!
//! The HTTP layer only parses and shapes: every rule lives in the [`Registry`]. Requests
//! pass a gate (API key in `X-Auth-Token`, then the region) before any body or path is
//! parsed, so an unauthenticated client learns nothing about what it sent. Every refusal
//! is the JSON error of [`error`], naming the field.
//!
//! [`ROUTES`] is the one list of (method, path) pairs: the router is built from it, and a
//! test compares it with the paths of `control/openapi.json`, so the document and the
//! server cannot drift apart.

pub mod error;
pub mod extract;
pub mod views;

mod accounts;
mod devices;
mod hubs;
mod metrics;
mod networks;
mod routes;

use std::sync::{Arc, PoisonError, RwLock};

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde::Serialize;

use self::error::ApiError;
use self::extract::{Caller, IfMatch};
use crate::registry::{Registry, RegistryError};

/// The OpenAPI 3.0 document of this API, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// What every handler gets.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub server_ca: ServerCaPem,
}

/// The PEM `GET /iot/v1/regions/{region}/server-ca` serves: the CA that devices should
/// trust to verify the TLS listeners. Clones share it, so the binary can replace it when it
/// reloads its TLS material, without rebuilding the router. Empty: the endpoint answers
/// 404 (e.g. no TLS listener).
#[derive(Debug, Clone, Default)]
pub struct ServerCaPem(Arc<RwLock<Option<Arc<str>>>>);

impl ServerCaPem {
    pub fn new(pem: impl Into<Arc<str>>) -> Self {
        let shared = Self::default();
        shared.set(pem);
        shared
    }

    pub fn set(&self, pem: impl Into<Arc<str>>) {
        // A poisoned lock only means a writer panicked; the value is still a PEM or none.
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(pem.into());
    }

    pub fn get(&self) -> Option<Arc<str>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What the API serves besides the registry.
#[derive(Debug, Clone, Default)]
pub struct ApiExtras {
    /// The TLS listeners' CA, for the `server-ca` endpoint.
    pub server_ca: ServerCaPem,
}

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    /// The lower-case name the OpenAPI document uses for the operation.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }

    const fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Patch => MethodFilter::PATCH,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key needed (the OpenAPI document, the server CA); the region is still checked.
    Public,
    /// An API key of an account (admin-only rules are the registry's).
    ApiKey,
}

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub verb: Verb,
    /// axum 0.8 / OpenAPI template syntax: `{hub_id}`.
    pub path: &'static str,
    pub access: Access,
    /// Builds the method router for this verb's filter.
    handler: fn(MethodFilter) -> MethodRouter<ApiState>,
}

const fn ep(
    verb: Verb,
    path: &'static str,
    access: Access,
    handler: fn(MethodFilter) -> MethodRouter<ApiState>,
) -> Endpoint {
    Endpoint {
        verb,
        path,
        access,
        handler,
    }
}

use Access::{ApiKey, Public};
use Verb::{Delete, Get, Patch, Post, Put};

/// Every route the API answers. The router is built from this table and a test checks it
/// against `control/openapi.json` both ways.
#[rustfmt::skip] // one route per line: the table is read more than it is edited
pub const ROUTES: &[Endpoint] = &[
    ep(Get, "/openapi.json", Public, |m| on(m, openapi_document)),
    ep(Post, "/iot/v1/accounts", ApiKey, |m| {
        on(m, accounts::create)
    }),
    // hubs
    ep(Get, "/iot/v1/regions/{region}/hubs", ApiKey, |m| {
        on(m, hubs::list)
    }),
    ep(Post, "/iot/v1/regions/{region}/hubs", ApiKey, |m| {
        on(m, hubs::create)
    }),
    ep(Get, "/iot/v1/regions/{region}/hubs/{hub_id}", ApiKey, |m| {
        on(m, hubs::get)
    }),
    ep(
        Patch,
        "/iot/v1/regions/{region}/hubs/{hub_id}",
        ApiKey,
        |m| on(m, hubs::update),
    ),
    ep(
        Delete,
        "/iot/v1/regions/{region}/hubs/{hub_id}",
        ApiKey,
        |m| on(m, hubs::delete),
    ),
    ep(
        Post,
        "/iot/v1/regions/{region}/hubs/{hub_id}/enable",
        ApiKey,
        |m| on(m, hubs::enable),
    ),
    ep(
        Post,
        "/iot/v1/regions/{region}/hubs/{hub_id}/disable",
        ApiKey,
        |m| on(m, hubs::disable),
    ),
    ep(Post, "/iot/v1/regions/{region}/hubs/{hub_id}/ca", ApiKey, |m| {
        on(m, hubs::set_ca)
    }),
    ep(Get, "/iot/v1/regions/{region}/hubs/{hub_id}/ca", ApiKey, |m| {
        on(m, hubs::get_ca)
    }),
    ep(Get, "/iot/v1/regions/{region}/hubs/{hub_id}/metrics", ApiKey, |m| {
        on(m, metrics::hub)
    }),
    // devices
    ep(Get, "/iot/v1/regions/{region}/devices", ApiKey, |m| {
        on(m, devices::list)
    }),
    ep(Post, "/iot/v1/regions/{region}/devices", ApiKey, |m| {
        on(m, devices::create)
    }),
    ep(
        Get,
        "/iot/v1/regions/{region}/devices/{device_id}",
        ApiKey,
        |m| on(m, devices::get),
    ),
    ep(
        Patch,
        "/iot/v1/regions/{region}/devices/{device_id}",
        ApiKey,
        |m| on(m, devices::update),
    ),
    ep(
        Delete,
        "/iot/v1/regions/{region}/devices/{device_id}",
        ApiKey,
        |m| on(m, devices::delete),
    ),
    ep(
        Post,
        "/iot/v1/regions/{region}/devices/{device_id}/enable",
        ApiKey,
        |m| on(m, devices::enable),
    ),
    ep(
        Post,
        "/iot/v1/regions/{region}/devices/{device_id}/disable",
        ApiKey,
        |m| on(m, devices::disable),
    ),
    ep(
        Post,
        "/iot/v1/regions/{region}/devices/{device_id}/renew-certificate",
        ApiKey,
        |m| on(m, devices::renew_certificate),
    ),
    ep(
        Put,
        "/iot/v1/regions/{region}/devices/{device_id}/certificate",
        ApiKey,
        |m| on(m, devices::set_certificate),
    ),
    ep(
        Get,
        "/iot/v1/regions/{region}/devices/{device_id}/certificate",
        ApiKey,
        |m| on(m, devices::get_certificate),
    ),
    ep(
        Get,
        "/iot/v1/regions/{region}/devices/{device_id}/metrics",
        ApiKey,
        |m| on(m, metrics::device),
    ),
    // routes
    ep(Get, "/iot/v1/regions/{region}/routes", ApiKey, |m| {
        on(m, routes::list)
    }),
    ep(Post, "/iot/v1/regions/{region}/routes", ApiKey, |m| {
        on(m, routes::create)
    }),
    ep(
        Get,
        "/iot/v1/regions/{region}/routes/{route_id}",
        ApiKey,
        |m| on(m, routes::get),
    ),
    ep(
        Patch,
        "/iot/v1/regions/{region}/routes/{route_id}",
        ApiKey,
        |m| on(m, routes::update),
    ),
    ep(
        Delete,
        "/iot/v1/regions/{region}/routes/{route_id}",
        ApiKey,
        |m| on(m, routes::delete),
    ),
    // networks
    ep(Get, "/iot/v1/regions/{region}/networks", ApiKey, |m| {
        on(m, networks::list)
    }),
    ep(Post, "/iot/v1/regions/{region}/networks", ApiKey, |m| {
        on(m, networks::create)
    }),
    ep(
        Get,
        "/iot/v1/regions/{region}/networks/{network_id}",
        ApiKey,
        |m| on(m, networks::get),
    ),
    ep(
        Delete,
        "/iot/v1/regions/{region}/networks/{network_id}",
        ApiKey,
        |m| on(m, networks::delete),
    ),
    ep(
        Get,
        "/iot/v1/regions/{region}/networks/{network_id}/lorawan-devices",
        ApiKey,
        |m| on(m, networks::list_lorawan_devices),
    ),
    ep(
        Post,
        "/iot/v1/regions/{region}/networks/{network_id}/lorawan-devices",
        ApiKey,
        |m| on(m, networks::create_lorawan_device),
    ),
    ep(
        Get,
        "/iot/v1/regions/{region}/networks/{network_id}/lorawan-devices/{dev_eui}",
        ApiKey,
        |m| on(m, networks::get_lorawan_device),
    ),
    ep(
        Delete,
        "/iot/v1/regions/{region}/networks/{network_id}/lorawan-devices/{dev_eui}",
        ApiKey,
        |m| on(m, networks::delete_lorawan_device),
    ),
    // the TLS listeners' CA
    ep(Get, "/iot/v1/regions/{region}/server-ca", Public, |m| on(m, server_ca)),
];

/// The management API over `registry`, ready to be merged next to `/metrics` and
/// `/healthz`. It sets a JSON fallback for unknown paths, so merge it into a router that
/// has none of its own (axum refuses two fallbacks). The `server-ca` endpoint answers 404:
/// use [`router_with`] to serve a CA.
pub fn router(registry: Arc<Registry>) -> Router {
    router_with(registry, ApiExtras::default())
}

/// [`router`] with what the API serves besides the registry (the server CA).
pub fn router_with(registry: Arc<Registry>, extras: ApiExtras) -> Router {
    let state = ApiState {
        registry,
        server_ca: extras.server_ca,
    };
    let mut keyed = Router::new();
    let mut public = Router::new();
    for endpoint in ROUTES {
        let method_router = (endpoint.handler)(endpoint.verb.filter());
        match endpoint.access {
            Access::Public => public = public.route(endpoint.path, method_router),
            Access::ApiKey => keyed = keyed.route(endpoint.path, method_router),
        }
    }
    keyed
        .route_layer(middleware::from_fn_with_state(state.clone(), gate))
        .merge(public.route_layer(middleware::from_fn_with_state(state.clone(), region_gate)))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_such_path)
        .with_state(state)
}

/// Authenticates the caller (`X-Auth-Token`), then checks the region of the path: only
/// then does the handler parse anything.
async fn gate(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match admit(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn admit(state: &ApiState, req: Request) -> Result<Request, ApiError> {
    let (mut parts, body) = req.into_parts();
    let token = match parts.headers.get("x-auth-token") {
        None => {
            return Err(ApiError::Unauthenticated {
                reason: "the X-Auth-Token header is missing",
            });
        }
        Some(value) => value.to_str().map_err(|_| ApiError::Unauthenticated {
            reason: "the X-Auth-Token header is not a valid API key",
        })?,
    };
    let account = state
        .registry
        .authenticate(token)
        .await?
        .ok_or(ApiError::Unauthenticated {
            reason: "the X-Auth-Token header is not a valid API key",
        })?;
    check_region(state, &mut parts).await?;
    parts.extensions.insert(Caller(account));
    Ok(Request::from_parts(parts, body))
}

/// A path's `{region}` must be this node's: another region's resources are not here.
async fn check_region(state: &ApiState, parts: &mut Parts) -> Result<(), ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::Internal(format!("path parameters: {e}")))?;
    if let Some((_, region)) = params.iter().find(|(name, _)| *name == "region")
        && region != state.registry.region()
    {
        return Err(RegistryError::NotFound {
            resource: "region",
            id: region.chars().take(64).collect(),
        }
        .into());
    }
    Ok(())
}

/// The region check alone, for public endpoints.
async fn region_gate(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    match check_region(&state, &mut parts).await {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(e) => e.into_response(),
    }
}

/// The CA that devices should trust for the TLS listeners, as a PEM file.
async fn server_ca(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let pem = state.server_ca.get().ok_or(RegistryError::NotFound {
        resource: "server CA",
        id: "server-ca".to_owned(),
    })?;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        )],
        pem.to_string(),
    )
        .into_response())
}

async fn openapi_document() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI_JSON,
    )
        .into_response()
}

async fn no_such_path(uri: Uri) -> ApiError {
    ApiError::NoSuchPath {
        path: uri.path().chars().take(256).collect(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A JSON answer with the record's version as its ETag.
fn tagged(version: i64, body: impl Serialize) -> Response {
    let etag = HeaderValue::from_str(&IfMatch::etag(version))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    ([(ETAG, etag)], Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    const DOC_METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths object");
        let mut documented = BTreeSet::new();
        for (path, item) in paths {
            for method in DOC_METHODS {
                // Served beside this router on the API port (network endpoints, health,
                // metrics): the binary's test compares those.
                if item
                    .get(*method)
                    .is_some_and(|op| op.get("x-served-by").is_none())
                {
                    documented.insert(((*method).to_owned(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|e| (e.verb.as_str().to_owned(), e.path.to_owned()))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "a route is listed twice");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served, not documented: {undocumented:?}"
        );
        assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
    }

    /// The document's security matches who may call: public operations say
    /// `security: []`, the others inherit the API key requirement.
    #[test]
    fn documented_security_matches_access() {
        let doc = document();
        assert_eq!(
            doc["security"],
            serde_json::json!([{"ApiKeyAuth": []}]),
            "global security"
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["ApiKeyAuth"],
            serde_json::json!({"type": "apiKey", "in": "header", "name": "X-Auth-Token"})
        );
        for e in ROUTES {
            let op = &doc["paths"][e.path][e.verb.as_str()];
            let public = op.get("security") == Some(&serde_json::json!([]));
            assert_eq!(
                public,
                e.access == Access::Public,
                "{} {}",
                e.verb.as_str(),
                e.path
            );
            if e.access == Access::ApiKey {
                assert!(
                    op["responses"].get("401").is_some(),
                    "{} {} documents no 401",
                    e.verb.as_str(),
                    e.path
                );
            }
        }
    }

    /// Every `{param}` of a path is declared as a path parameter of its operations, and
    /// nothing else is.
    #[test]
    fn path_parameters_are_declared() {
        let doc = document();
        for e in ROUTES {
            let wanted: BTreeSet<&str> = e
                .path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            let item = &doc["paths"][e.path];
            let op = &item[e.verb.as_str()];
            let mut declared = BTreeSet::new();
            for list in [&item["parameters"], &op["parameters"]] {
                for p in list.as_array().into_iter().flatten() {
                    let p = resolve(&doc, p);
                    if p["in"] == "path" {
                        declared.insert(p["name"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
            let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
            assert_eq!(declared, wanted, "{} {}", e.verb.as_str(), e.path);
        }
    }

    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.trim_start_matches('#');
                doc.pointer(pointer).expect("dangling $ref")
            }
            None => v,
        }
    }

    #[tokio::test]
    async fn the_router_builds_from_the_table() {
        // Building panics on a duplicate (method, path) or a bad template.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqlStore::open(&crate::testing::sqlite_url(dir.path()))
            .await
            .unwrap();
        let registry = Registry::new(
            Arc::new(store),
            Arc::new(crate::runtime::NoopRuntime),
            crate::registry::RegistryConfig::default(),
        );
        let _router = router(Arc::new(registry));
    }
}
