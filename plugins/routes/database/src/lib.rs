//! The built-in database route (the reference's `db_config {engine, host, port, dbname,
//! username, password, query}`). The host holds the connection (the route's grant); this
//! component uses only `engine` and `query`.
//!
//! `$TOPIC` and `$PAYLOAD` in the query are bound parameters (topic text, payload bytes),
//! never text substitution: outside quoted literals they become `$1`/`$2` (PostgreSQL,
//! numbered by first use) or one `?` per use (MySQL). A batch is one transaction; when it
//! fails on a statement error, the messages are tried one by one so that only those the
//! database refuses are rejected. Connection failures and prepare errors (a missing table,
//! say) are retried.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({ world: "route", path: "../../../wit" });

use iothub::route::sql::{self, SqlError, Value};

#[derive(Deserialize)]
struct Config {
    engine: String,
    query: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Param {
    Topic,
    Payload,
}

struct Ready {
    statement: String,
    params: Vec<Param>,
}

thread_local! {
    static READY: RefCell<Option<Ready>> = const { RefCell::new(None) };
}

/// Rewrites `$TOPIC`/`$PAYLOAD` outside `'...'`, `"..."` and `` `...` `` literals.
fn rewrite(query: &str, postgres: bool) -> (String, Vec<Param>) {
    let mut out = String::with_capacity(query.len());
    let mut params = Vec::new();
    let mut quote: Option<char> = None;
    let mut rest = query;
    while let Some(c) = rest.chars().next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if matches!(c, '\'' | '"' | '`') {
            quote = Some(c);
        } else {
            let hit = [("$TOPIC", Param::Topic), ("$PAYLOAD", Param::Payload)]
                .into_iter()
                .find(|(name, _)| rest.starts_with(name));
            if let Some((name, p)) = hit {
                if postgres {
                    let n = match params.iter().position(|x| *x == p) {
                        Some(i) => i + 1,
                        None => {
                            params.push(p);
                            params.len()
                        }
                    };
                    out.push_str(&format!("${n}"));
                } else {
                    params.push(p);
                    out.push('?');
                }
                rest = &rest[name.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    (out, params)
}

fn configure(json: &str) -> Result<Ready, String> {
    let c: Config = serde_json::from_str(json).map_err(|e| format!("db_config: {e}"))?;
    let postgres = match c.engine.as_str() {
        "postgresql" => true,
        "mysql" => false,
        other => {
            return Err(format!(
                "db_config.engine: {other:?} is not postgresql or mysql"
            ));
        }
    };
    if c.query.trim().is_empty() {
        return Err("db_config.query: must not be empty".into());
    }
    let (statement, params) = rewrite(&c.query, postgres);
    Ok(Ready { statement, params })
}

fn row(r: &Ready, m: &Message) -> Vec<Value> {
    r.params
        .iter()
        .map(|p| match p {
            Param::Topic => Value::Text(m.topic.clone()),
            Param::Payload => Value::Bytes(m.payload.clone()),
        })
        .collect()
}

fn describe(e: &SqlError) -> String {
    match e {
        SqlError::Denied(m) => format!("database denied: {m}"),
        SqlError::Connect(m) => format!("database connect: {m}"),
        SqlError::Prepare(m) => format!("database prepare: {m}"),
        SqlError::Execute(m) => format!("database execute: {m}"),
    }
}

fn outcome_of(e: &SqlError) -> Outcome {
    match e {
        SqlError::Execute(_) | SqlError::Denied(_) => Outcome::Reject(describe(e)),
        SqlError::Connect(_) | SqlError::Prepare(_) => Outcome::Retry(describe(e)),
    }
}

fn deliver(r: &Ready, batch: &[Message]) -> Vec<Outcome> {
    if batch.is_empty() {
        return Vec::new();
    }
    let rows: Vec<Vec<Value>> = batch.iter().map(|m| row(r, m)).collect();
    match sql::execute(&r.statement, &rows) {
        Ok(_) => vec![Outcome::Delivered; batch.len()],
        Err(SqlError::Execute(_)) if batch.len() > 1 => rows
            .into_iter()
            .map(|one| match sql::execute(&r.statement, &[one]) {
                Ok(_) => Outcome::Delivered,
                Err(e) => outcome_of(&e),
            })
            .collect(),
        Err(e) => vec![outcome_of(&e); batch.len()],
    }
}

struct Database;

impl Guest for Database {
    fn init(config: String) -> Result<(), String> {
        let ready = configure(&config)?;
        READY.with(|r| *r.borrow_mut() = Some(ready));
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Outcome> {
        READY.with(|r| match r.borrow().as_ref() {
            Some(ready) => deliver(ready, &batch),
            None => batch
                .iter()
                .map(|_| Outcome::Retry("not initialised".into()))
                .collect(),
        })
    }
}

export!(Database);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let (s, p) = rewrite(
            "INSERT INTO t VALUES ($TOPIC, $PAYLOAD, '$TOPIC', $TOPIC)",
            true,
        );
        assert_eq!(s, "INSERT INTO t VALUES ($1, $2, '$TOPIC', $1)");
        assert_eq!(p, vec![Param::Topic, Param::Payload]);
        let (s, p) = rewrite("INSERT INTO t VALUES ($PAYLOAD, $TOPIC, $PAYLOAD)", false);
        assert_eq!(s, "INSERT INTO t VALUES (?, ?, ?)");
        assert_eq!(p, vec![Param::Payload, Param::Topic, Param::Payload]);
    }
}
