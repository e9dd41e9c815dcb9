//! The built-in REST route (the reference's `rest_config {verb, uri, headers}`).
//!
//! Each message becomes one request: the configured verb and URI, the configured headers
//! plus `X-Mqtt-Topic` and `X-Mqtt-Retain`, the payload as body. A 2xx answer delivers the
//! message; when it carries `X-Mqtt-Topic`, its body is published back on the hub at that
//! topic (QoS 1, retained when its `X-Mqtt-Retain` is `true`). 408, 429 and 5xx answers,
//! connection failures and timeouts are retried; other answers reject the message.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;

wit_bindgen::generate!({ world: "route", path: "../../../wit" });

use iothub::route::http::{self, Header, HttpError, Request};
use iothub::route::{hub, log};

#[derive(Deserialize)]
struct Config {
    verb: String,
    uri: String,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

struct Ready {
    method: String,
    uri: String,
    headers: Vec<Header>,
}

thread_local! {
    static READY: RefCell<Option<Ready>> = const { RefCell::new(None) };
}

const VERBS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn configure(json: &str) -> Result<Ready, String> {
    let c: Config = serde_json::from_str(json).map_err(|e| format!("rest_config: {e}"))?;
    let verb = c.verb.to_ascii_lowercase();
    if !VERBS.contains(&verb.as_str()) {
        return Err(format!(
            "rest_config.verb: {:?} is not one of get, post, put, patch, delete",
            c.verb
        ));
    }
    if !(c.uri.starts_with("http://") || c.uri.starts_with("https://")) {
        return Err("rest_config.uri: must be an absolute http:// or https:// URI".into());
    }
    let headers = c
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| Header { name, value })
        .collect();
    Ok(Ready {
        method: verb.to_ascii_uppercase(),
        uri: c.uri,
        headers,
    })
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn deliver(r: &Ready, m: &Message) -> Outcome {
    let mut headers = r.headers.clone();
    headers.push(Header {
        name: "X-Mqtt-Topic".into(),
        value: m.topic.clone(),
    });
    headers.push(Header {
        name: "X-Mqtt-Retain".into(),
        value: m.retain.to_string(),
    });
    let request = Request {
        method: r.method.clone(),
        uri: r.uri.clone(),
        headers,
        body: m.payload.clone(),
    };
    match http::send(&request) {
        Ok(resp) if (200..300).contains(&resp.status) => {
            if let Some(topic) = header(&resp.headers, "X-Mqtt-Topic").filter(|t| !t.is_empty()) {
                let retain = header(&resp.headers, "X-Mqtt-Retain")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                if let Err(e) = hub::publish(topic, &resp.body, 1, retain) {
                    log::log(
                        log::Level::Warn,
                        &format!("REST reply not published back on {topic:?}: {e}"),
                    );
                }
            }
            Outcome::Delivered
        }
        Ok(resp) if resp.status == 408 || resp.status == 429 || resp.status >= 500 => {
            Outcome::Retry(format!("HTTP {}", resp.status))
        }
        Ok(resp) => Outcome::Reject(format!("HTTP {}", resp.status)),
        Err(HttpError::Connect(e)) => Outcome::Retry(format!("HTTP connect: {e}")),
        Err(HttpError::Timeout) => Outcome::Retry("HTTP: no answer in time".into()),
        Err(HttpError::Denied(e)) => Outcome::Reject(format!("HTTP denied: {e}")),
        Err(HttpError::Invalid(e)) => Outcome::Reject(format!("HTTP invalid request: {e}")),
    }
}

struct Rest;

impl Guest for Rest {
    fn init(config: String) -> Result<(), String> {
        let ready = configure(&config)?;
        READY.with(|r| *r.borrow_mut() = Some(ready));
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Outcome> {
        READY.with(|r| match r.borrow().as_ref() {
            Some(ready) => batch.iter().map(|m| deliver(ready, m)).collect(),
            None => batch
                .iter()
                .map(|_| Outcome::Retry("not initialised".into()))
                .collect(),
        })
    }
}

export!(Rest);
