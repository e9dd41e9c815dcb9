//! A plain HTTP/1.1 client (hyper) for the simulators that speak HTTP to the hub (network
//! callbacks, the management API), and the few management API calls the fleet needs.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why an HTTP exchange failed (no answer, or an answer we cannot use).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid header {name}: {reason}")]
    Header { name: String, reason: String },
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered JSON without {field}: {body}")]
    Missing {
        url: String,
        field: &'static str,
        body: String,
    },
    #[error("{url} answered something that is not JSON: {reason}")]
    Json { url: String, reason: String },
}

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8, for messages.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value when it is valid ASCII.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled HTTP/1.1 client (keep-alive connections) with a per-request timeout.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose requests give up after `timeout`.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<HttpResponse, HttpError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| HttpError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            let name_ok =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| HttpError::Header {
                    name: (*name).to_owned(),
                    reason: e.to_string(),
                })?;
            let value_ok = HeaderValue::from_str(value).map_err(|e| HttpError::Header {
                name: (*name).to_owned(),
                reason: e.to_string(),
            })?;
            request = request.header(name_ok, value_ok);
        }
        let request = request.body(Full::new(body)).map_err(|e| HttpError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let transport = |reason: String| HttpError::Transport {
            method: method.clone(),
            url: url.to_owned(),
            reason,
        };
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| transport(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                method: method.clone(),
                url: url.to_owned(),
                timeout: self.timeout,
            })?
    }
}

/// An error and its sources, joined: hyper's top-level message alone ("client error
/// (Connect)") does not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A device the management API created: its id, name, and the certificate and private key it
/// answered (PEM; the key is shown only once).
#[derive(Debug, Clone)]
pub struct CreatedDevice {
    pub id: String,
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The management API (`.../iot/v1/regions/<region>`) with an `X-Auth-Token`.
#[derive(Clone)]
pub struct ManagementApi {
    http: HttpClient,
    base: String,
    token: String,
}

impl std::fmt::Debug for ManagementApi {
    /// The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ManagementApi {
    /// `base` is the region URL, e.g. `http://127.0.0.1:8080/iot/v1/regions/fr-par`.
    #[must_use]
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: HttpClient::new(Duration::from_secs(30)),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, HttpError> {
        let url = format!("{}/{path}", self.base);
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let mut headers = vec![("x-auth-token", self.token.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let response = self
            .http
            .send(method.clone(), &url, &headers, bytes)
            .await?;
        if !(200..300).contains(&response.status) {
            return Err(HttpError::Status {
                method,
                url,
                status: response.status,
                body: response.text(),
            });
        }
        if response.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&response.body).map_err(|e| HttpError::Json {
            url,
            reason: e.to_string(),
        })
    }

    /// Creates a hub named `name` and answers its id.
    pub async fn create_hub(&self, name: &str) -> Result<String, HttpError> {
        let hub = self
            .call(
                Method::POST,
                "hubs",
                Some(&serde_json::json!({ "name": name })),
            )
            .await?;
        string_at(&hub, &["id"], &format!("{}/hubs", self.base), "id")
    }

    /// Creates a device in `hub_id`; `allow_insecure` lets it connect without a certificate.
    pub async fn create_device(
        &self,
        hub_id: &str,
        name: &str,
        allow_insecure: bool,
    ) -> Result<CreatedDevice, HttpError> {
        let url = format!("{}/devices", self.base);
        let created = self
            .call(
                Method::POST,
                "devices",
                Some(&serde_json::json!({
                    "hub_id": hub_id, "name": name, "allow_insecure": allow_insecure,
                })),
            )
            .await?;
        Ok(CreatedDevice {
            id: string_at(&created, &["device", "id"], &url, "device.id")?,
            name: name.to_owned(),
            cert_pem: string_at(&created, &["certificate", "crt"], &url, "certificate.crt")?,
            key_pem: string_at(&created, &["certificate", "key"], &url, "certificate.key")?,
        })
    }

    /// Deletes a device.
    pub async fn delete_device(&self, id: &str) -> Result<(), HttpError> {
        self.call(Method::DELETE, &format!("devices/{id}"), None)
            .await
            .map(drop)
    }

    /// Registers a LoRaWAN device (DevEUI, ABP session keys, AppKey) in a `lorawan` network.
    pub async fn register_lorawan_device(
        &self,
        network_id: &str,
        body: &Value,
    ) -> Result<Value, HttpError> {
        self.call(
            Method::POST,
            &format!("networks/{network_id}/lorawan-devices"),
            Some(body),
        )
        .await
    }

    /// The PEM of the CA that signs the hub's TLS server certificate (`server-ca`, public).
    pub async fn server_ca(&self) -> Result<String, HttpError> {
        let url = format!("{}/server-ca", self.base);
        let response = self.http.send(Method::GET, &url, &[], Bytes::new()).await?;
        if response.status != 200 {
            return Err(HttpError::Status {
                method: Method::GET,
                url,
                status: response.status,
                body: response.text(),
            });
        }
        Ok(response.text())
    }
}

fn string_at(
    v: &Value,
    path: &[&str],
    url: &str,
    field: &'static str,
) -> Result<String, HttpError> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| HttpError::Missing {
            url: url.to_owned(),
            field,
            body: v.to_string(),
        })
}
