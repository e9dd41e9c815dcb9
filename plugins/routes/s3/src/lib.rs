//! The built-in S3 route (the reference's `s3_config {bucket_region, bucket_name,
//! object_prefix, strategy}`). The host holds the bucket and its credentials (the route's
//! grant); this component names the objects:
//! - `per_topic`: `<object_prefix>/<topic>` (each message replaces the previous one);
//! - `per_message`: `<object_prefix>/<topic>/<RFC3339Nano time it entered the route's queue>`.
//!
//! Without a prefix the key starts at the topic. The body is the payload, the content type
//! the message's when it has one. Within one instance, `per_message` keys are unique: a
//! message accepted in the same millisecond as the previous one gets the next nanosecond.
//! Topics with empty levels (`a//b`, `/a`) make no valid key and are rejected.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({ world: "route", path: "../../../wit" });

use iothub::route::objects::{self, ObjectError};

#[derive(Deserialize)]
struct Config {
    bucket_name: String,
    #[serde(default)]
    bucket_region: Option<String>,
    #[serde(default)]
    object_prefix: Option<String>,
    strategy: String,
}

struct Ready {
    prefix: String,
    per_message: bool,
    last_ms: u64,
    same_ms: u32,
}

thread_local! {
    static READY: RefCell<Option<Ready>> = const { RefCell::new(None) };
}

fn configure(json: &str) -> Result<Ready, String> {
    let c: Config = serde_json::from_str(json).map_err(|e| format!("s3_config: {e}"))?;
    if c.bucket_name.is_empty() {
        return Err("s3_config.bucket_name: must not be empty".into());
    }
    if c.bucket_region.as_deref() == Some("") {
        return Err("s3_config.bucket_region: must not be empty".into());
    }
    let per_message = match c.strategy.as_str() {
        "per_topic" => false,
        "per_message" => true,
        other => {
            return Err(format!(
                "s3_config.strategy: {other:?} is not per_topic or per_message"
            ));
        }
    };
    let prefix = c
        .object_prefix
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    Ok(Ready {
        prefix,
        per_message,
        last_ms: 0,
        same_ms: 0,
    })
}

/// `ms` since the epoch plus `extra_ns`, as Go's `time.RFC3339Nano` prints UTC: trailing
/// zeros of the fraction dropped, `Z`.
fn rfc3339_nano(ms: u64, extra_ns: u32) -> String {
    let secs = ms / 1000;
    let nanos = (ms % 1000) as u32 * 1_000_000 + extra_ns % 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil from days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn deliver(r: &mut Ready, m: &Message) -> Outcome {
    if m.topic.is_empty() || m.topic.split('/').any(str::is_empty) {
        return Outcome::Reject("S3: a topic with empty levels makes no object key".into());
    }
    let mut key = String::with_capacity(r.prefix.len() + m.topic.len() + 40);
    if !r.prefix.is_empty() {
        key.push_str(&r.prefix);
        key.push('/');
    }
    key.push_str(&m.topic);
    if r.per_message {
        let mut extra = 0;
        if m.timestamp_ms == r.last_ms {
            r.same_ms += 1;
            extra = r.same_ms;
        } else if m.timestamp_ms > r.last_ms {
            r.last_ms = m.timestamp_ms;
            r.same_ms = 0;
        }
        key.push('/');
        key.push_str(&rfc3339_nano(m.timestamp_ms, extra));
    }
    match objects::put(&key, &m.payload, m.content_type.as_deref()) {
        Ok(()) => Outcome::Delivered,
        Err(ObjectError::Write(e)) => Outcome::Retry(format!("S3 write: {e}")),
        Err(ObjectError::Denied(e)) => Outcome::Reject(format!("S3 denied: {e}")),
    }
}

struct S3;

impl Guest for S3 {
    fn init(config: String) -> Result<(), String> {
        let ready = configure(&config)?;
        READY.with(|r| *r.borrow_mut() = Some(ready));
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Outcome> {
        READY.with(|r| match r.borrow_mut().as_mut() {
            Some(ready) => batch.iter().map(|m| deliver(ready, m)).collect(),
            None => batch
                .iter()
                .map(|_| Outcome::Retry("not initialised".into()))
                .collect(),
        })
    }
}

export!(S3);
