//! External tools as a user would run them: Debian's `mosquitto_pub` / `mosquitto_sub`, and a
//! plain HTTP/1.1 GET for `/metrics` and `/healthz`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::raw::WAIT;

/// Runs `mosquitto_pub -h <ip> -p <port> <args>` to completion.
pub fn mosquitto_pub(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run mosquitto_pub (apt-get install mosquitto-clients): {e}")
        })
}

/// A running `mosquitto_sub`, its output lines read on a thread.
pub struct MosquittoSub {
    child: Child,
    lines: Receiver<String>,
}

/// Prefix of the lines that carry messages (`-F`), to tell them from `-d` debug lines.
const MSG: &str = "MSG ";

impl MosquittoSub {
    /// Starts `mosquitto_sub -d -F 'MSG %t %p' <args>` and waits until its SUBACK arrived, so
    /// that messages published after this returns are delivered to it.
    pub fn start(addr: SocketAddr, args: &[&str]) -> MosquittoSub {
        // stdbuf: mosquitto_sub's stdout is block-buffered on a pipe, and the test must see
        // each line as it is printed.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-d", "-F", "MSG %t %p"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run mosquitto_sub (apt-get install mosquitto-clients): {e}")
            });
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if tx.send(format!("stderr: {line}")).is_err() {
                        break;
                    }
                }
            });
        }
        let sub = MosquittoSub { child, lines };
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sub.lines.recv_timeout(left) {
                Ok(line) if line.contains("received SUBACK") => break,
                Ok(line) => seen.push(line),
                Err(_) => panic!("mosquitto_sub got no SUBACK; output: {seen:?}"),
            }
        }
        sub
    }

    /// The next message as (topic, payload), or `None` after `timeout`.
    pub fn next_message(&mut self, timeout: Duration) -> Option<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            if let Some(rest) = line.strip_prefix(MSG) {
                let (topic, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                return Some((topic.to_string(), payload.to_string()));
            }
        }
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("cannot connect to the API at {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("HTTP write: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("HTTP read: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

pub(crate) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sum of the samples of metric `name` whose label set contains every `label="value"` pair in
/// `labels` (Prometheus text format). `None` when no such sample exists.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if !labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_matching_series_only() {
        let text = "# TYPE iothub_messages_dropped_total counter\n\
                    iothub_messages_dropped_total{hub=\"default\",reason=\"queue_full\"} 3\n\
                    iothub_messages_dropped_total{hub=\"other\",reason=\"queue_full\"} 2\n\
                    iothub_messages_dropped_total{hub=\"default\",reason=\"expired\"} 7\n\
                    iothub_messages_dropped_total_extra 9\n\
                    iothub_connections 4\n";
        type Labels<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Labels, Option<f64>)] = &[
            (
                "iothub_messages_dropped_total",
                &[("reason", "queue_full")],
                Some(5.0),
            ),
            ("iothub_messages_dropped_total", &[], Some(12.0)),
            ("iothub_messages_dropped_total", &[("reason", "nope")], None),
            ("iothub_connections", &[], Some(4.0)),
            ("iothub_missing", &[], None),
        ];
        for (name, labels, want) in cases {
            assert_eq!(metric_sum(text, name, labels), *want, "{name} {labels:?}");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
