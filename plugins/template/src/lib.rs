//! A custom iothub route: forwards each message to one HTTP endpoint as a JSON document
//! `{"topic", "payload", "qos", "retain", "received_ms"}` (the payload as UTF-8 text, invalid
//! bytes replaced).
//!
//! Configuration (the JSON given to `init`): `{"uri": "http://host:port/path"}`. The route's
//! HTTP grant must be that URI's origin; a request anywhere else is `denied` by the host.
//!
//! Outcomes: a 2xx answer delivers the message; 408, 429, 5xx, a connection failure or a
//! timeout asks for a retry; anything else rejects it.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({
    world: "route",
    path: "../../wit",
});

use iothub::route::http::{self, Header, HttpError, Request};
use iothub::route::log::{self, Level};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    uri: String,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

#[derive(serde::Serialize)]
struct Forwarded<'a> {
    topic: &'a str,
    payload: String,
    qos: u8,
    retain: bool,
    received_ms: u64,
}

struct Route;

impl Guest for Route {
    fn init(config: String) -> Result<(), String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("configuration: {e}"))?;
        if !(config.uri.starts_with("http://") || config.uri.starts_with("https://")) {
            return Err("configuration: uri must be an absolute http:// or https:// URI".into());
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Outcome> {
        CONFIG.with(|c| {
            let config = c.borrow();
            let Some(config) = config.as_ref() else {
                return batch
                    .iter()
                    .map(|_| Outcome::Retry("not initialised".into()))
                    .collect();
            };
            batch.iter().map(|m| forward(&config.uri, m)).collect()
        })
    }
}

fn forward(uri: &str, m: &Message) -> Outcome {
    let body = Forwarded {
        topic: &m.topic,
        payload: String::from_utf8_lossy(&m.payload).into_owned(),
        qos: m.qos,
        retain: m.retain,
        received_ms: m.timestamp_ms,
    };
    let Ok(body) = serde_json::to_vec(&body) else {
        return Outcome::Reject("could not encode the message".into());
    };
    let request = Request {
        method: "POST".into(),
        uri: uri.into(),
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body,
    };
    match http::send(&request) {
        Ok(r) if (200..300).contains(&r.status) => Outcome::Delivered,
        Ok(r) if r.status == 408 || r.status == 429 || r.status >= 500 => {
            Outcome::Retry(format!("HTTP {}", r.status))
        }
        Ok(r) => Outcome::Reject(format!("HTTP {}", r.status)),
        Err(HttpError::Connect(e)) => Outcome::Retry(format!("connect: {e}")),
        Err(HttpError::Timeout) => Outcome::Retry("timeout".into()),
        Err(HttpError::Denied(e)) => {
            log::log(Level::Error, &format!("denied: {e}"));
            Outcome::Reject(format!("denied: {e}"))
        }
        Err(HttpError::Invalid(e)) => Outcome::Reject(format!("invalid request: {e}")),
    }
}

export!(Route);
