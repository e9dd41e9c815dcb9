//! The REST publisher: services that POST messages to a REST network (`X-Secret`,
//! `X-Topic`, body = payload). Each publisher sends its messages one after the other at its
//! rate; the hub answers once the engine accepted the message, so the latency is the whole
//! ingest path.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use tokio::time::Instant;

use crate::http::HttpClient;
use crate::summary::{LOG_LIMIT, Report, Tally, progress};
use crate::util::{Pacer, count};

/// A REST publisher run.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// The network's endpoint, e.g. `http://127.0.0.1:8080/networks/<id>`.
    pub url: String,
    pub secret: String,
    /// `X-Topic`, with `{publisher}` and `{seq}` replaced.
    pub topic: String,
    /// The body, with `{publisher}` and `{seq}` replaced.
    pub body: String,
    pub publishers: u32,
    /// Messages per publisher.
    pub messages: u32,
    /// Messages per second per publisher; 0 = back to back.
    pub rate: f64,
    pub timeout: Duration,
    pub quiet: bool,
}

fn expand(template: &str, publisher: u32, seq: u32) -> String {
    template
        .replace("{publisher}", &publisher.to_string())
        .replace("{seq}", &seq.to_string())
}

/// Runs the publishers and reports.
pub async fn run(config: RestConfig) -> Report {
    let http = HttpClient::new(config.timeout);
    let bar = progress(
        u64::from(config.publishers) * u64::from(config.messages),
        config.quiet,
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for publisher in 0..config.publishers {
        let (http, config, bar) = (http.clone(), config.clone(), bar.clone());
        tasks.spawn(async move {
            let mut tally = Tally::new();
            let mut log = Vec::new();
            let mut pacer = Pacer::new(config.rate);
            for seq in 0..config.messages {
                pacer.tick().await;
                let topic = expand(&config.topic, publisher, seq);
                let body = expand(&config.body, publisher, seq);
                let t0 = Instant::now();
                tally.sent();
                let result = http
                    .send(
                        Method::POST,
                        &config.url,
                        &[("x-secret", &config.secret), ("x-topic", &topic)],
                        Bytes::from(body.clone()),
                    )
                    .await;
                let answer = count(&mut tally, t0, result);
                log.push(json!({
                    "publisher": publisher, "seq": seq, "x_topic": topic, "payload": body,
                    "status": answer.as_ref().map(|a| a.status),
                    "answer": answer.as_ref().map(|a| a.text()),
                }));
                bar.inc(1);
            }
            (publisher, tally, log)
        });
    }
    let mut results = tasks.join_all().await;
    results.sort_by_key(|(p, _, _)| *p);
    bar.finish_and_clear();
    let mut total = Tally::new();
    let mut log = Vec::new();
    for (_, tally, entries) in results {
        total.merge(&tally);
        log.extend(entries);
    }
    log.truncate(LOG_LIMIT);
    let mut report = Report::new(
        "rest",
        &config.url,
        started.elapsed(),
        &[("rest".to_owned(), total)],
    );
    report.log = log;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_publisher_and_sequence() {
        assert_eq!(expand("a/{publisher}/{seq}", 3, 14), "a/3/14");
        assert_eq!(expand("{\"n\":{seq}}", 0, 2), "{\"n\":2}");
        assert_eq!(expand("plain", 1, 1), "plain");
    }
}
