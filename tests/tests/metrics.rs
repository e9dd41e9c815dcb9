//! Metrics (issue 5) through the real binary: the monitoring kit in `configs/` against a live
//! scrape taken after traffic (both ways: no dashboard query without an exported metric, no
//! key metric without a panel), every file of `configs/` parses, and the metrics API counts
//! every MQTT packet of a device in either direction, for its hub and for the device, and
//! keeps the series across a restart (SQLite and PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iothub_e2e::api::{Api, Backend, RegistryDb, id_of, registry_config};
use iothub_e2e::frames::{self, Connect, Publish, kind};
use iothub_e2e::raw::{RawClient, WAIT};
use iothub_e2e::tools::http_get;
use iothub_e2e::{Hub, unique};
use serde_json::{Value, json};

/// The metrics an operator needs a panel for (issue 5): each must be queried by the
/// dashboard.
const KEY_METRICS: &[&str] = &[
    "iothub_connections",
    "iothub_connections_total",
    "iothub_packets_received_total",
    "iothub_packets_sent_total",
    "iothub_bytes_received_total",
    "iothub_bytes_sent_total",
    "iothub_hub_packets_received_total",
    "iothub_hub_packets_sent_total",
    "iothub_hub_bytes_received_total",
    "iothub_hub_bytes_sent_total",
    "iothub_messages_received_total",
    "iothub_messages_delivered_total",
    "iothub_messages_dropped_total",
    "iothub_messages_spilled_total",
    "iothub_spilled_messages",
    "iothub_sessions",
    "iothub_sessions_connected",
    "iothub_subscriptions",
    "iothub_retained_messages",
    "iothub_retained_bytes",
    "iothub_queued_messages",
    "iothub_inflight_messages",
    "iothub_budget_used_bytes",
    "iothub_budget_limit_bytes",
    "iothub_auth_refusals_total",
    "iothub_publish_refusals_total",
    "iothub_subscribe_refusals_total",
    "iothub_tls_handshake_failures_total",
    "iothub_provisioning_total",
    "iothub_events_published_total",
    "iothub_events_dropped_total",
    "iothub_events_unattributed_total",
    "iothub_route_delivered_total",
    "iothub_route_retried_total",
    "iothub_route_failed_total",
    "iothub_route_queue_depth",
    "iothub_route_latency_seconds",
    "iothub_store_records_written_total",
    "iothub_store_commits_total",
    "iothub_store_compactions_total",
    "iothub_store_corrupt_records_total",
    "iothub_store_torn_tail_bytes_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_start_time_seconds",
];

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// PromQL words that are not metric names: aggregation operators (which may be followed by
/// `by (...)` rather than a parenthesis), keywords and literals.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
];

/// The metric names a PromQL expression reads: identifiers that are not functions (followed
/// by `(`), keywords, label names (inside `{}` or after `by`/`without`/`on`/`ignoring`),
/// strings, durations (inside `[]`), numbers or dashboard variables (`$x`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    // After by/without/on/ignoring/group_*: the next parenthesised list is labels.
    let mut labels_next = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if labels_next => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                labels_next = false;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = chars.get(j) == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    labels_next = true;
                } else if !is_call && !PROMQL_WORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() => {
                // A number or a duration such as 5m: skip the whole token.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_metric_names_are_extracted() {
    // (expression, metric names)
    let table: &[(&str, &[&str])] = &[
        ("iothub_sessions", &["iothub_sessions"]),
        (
            r#"sum by (hub, reason) (rate(iothub_messages_dropped_total{hub=~"$hub"}[$__rate_interval]))"#,
            &["iothub_messages_dropped_total"],
        ),
        (
            r#"max by (hub) (iothub_budget_used_bytes{hub=~"$hub"} / iothub_budget_limit_bytes{hub=~"$hub"})"#,
            &["iothub_budget_limit_bytes", "iothub_budget_used_bytes"],
        ),
        (
            "time() - process_start_time_seconds",
            &["process_start_time_seconds"],
        ),
        (
            "rate(process_cpu_seconds_total[5m]) * 100",
            &["process_cpu_seconds_total"],
        ),
        (
            r#"a_total{x="by (y) z"} and on(hub) b offset 5m > bool 2"#,
            &["a_total", "b"],
        ),
        ("sum without (listener) (c)", &["c"]),
        ("topk by (hub) (3, d) + max(e)", &["d", "e"]),
    ];
    for (expr, want) in table {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

/// Every PromQL expression of the dashboard (panels, nested panels of rows, templating).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str()) {
            // label_values(metric, label): the metric is the first argument.
            if let Some(args) = q.strip_prefix("label_values(") {
                let metric = args.split([',', ')']).next().unwrap_or_default().trim();
                out.push((format!("variable {}", var["name"]), metric.to_string()));
            }
        }
    }
    out
}

/// The metric names of a Prometheus text exposition (`# TYPE` lines and samples).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') || line.trim().is_empty() => None,
            None => line.split(['{', ' ']).next(),
        })
        .map(str::to_string)
        .collect()
}

/// Traffic that makes every lazily registered series appear: messages, a retained one,
/// refused publishes past the event rate limit, a malformed CONNECT, a refused CONNECT and
/// a failed TLS handshake.
fn traffic(hub: &Hub) {
    let addr = hub.mqtt_addr();
    let mut sub = RawClient::connected(addr, &Connect::v5(&unique("s"), true)).0;
    assert_eq!(sub.subscribe(1, &[("m/#", 1)]), [1]);
    let mut publisher = RawClient::connected(addr, &Connect::v5(&unique("p"), true)).0;
    publisher.publish(&Publish::v5("m/a", b"hello").qos(1, 1));
    publisher.publish(&Publish::v5("m/kept", b"retained").retain(true).qos(1, 2));
    sub.expect_publish_acked();
    sub.expect_publish_acked();
    // $SYS is the hub's: each refusal is an unauthorized-topic event, past the burst dropped.
    for id in 0..60u16 {
        publisher.send_ok(&Publish::v5("$SYS/forged", b"x").qos(1, 100 + id).encode());
    }
    for _ in 0..60 {
        publisher.expect_kind(kind::PUBACK, "PUBACK of a refused publish");
    }
    publisher.ping();
    // A malformed CONNECT: no hub to name, counted only.
    let mut garbage = RawClient::connect(addr);
    garbage.send_ok(&[0x10, 0x03, 0xff, 0xff, 0xff]);
    garbage.expect_closed(WAIT);
    // A listener that admits no anonymous client refuses this one.
    let closed = hub.listener("closed");
    let ack = RawClient::connect(closed).handshake(&Connect::v5(&unique("x"), true));
    assert_eq!(ack.code, 0x87, "{ack:?}");
    route_traffic(hub);
    // Plain text on the TLS port.
    let mut tls = TcpStream::connect_timeout(&hub.listener("tls"), WAIT).unwrap();
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    tls.shutdown(std::net::Shutdown::Write).ok();
    let mut buf = Vec::new();
    tls.set_read_timeout(Some(WAIT)).ok();
    let _ = std::io::Read::read_to_end(&mut tls, &mut buf);
}

/// Routes' series: a hub of the registry with a REST route to an HTTP server that answers
/// 200 (a delivery, its latency) and one to a closed port (retries).
fn route_traffic(hub: &Hub) {
    use std::io::{BufRead, BufReader};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ok = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut writer = conn;
            let mut len = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let _ = writer
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let api = iothub_e2e::api::Api::admin(hub);
    let hub_id = iothub_e2e::api::id_of(&api.create_hub(&serde_json::json!({
        "name": "metrics-routes", "product_plan": "plan_dedicated", "allow_anonymous": true,
    })));
    for (name, addr) in [("ok", ok), ("down", closed)] {
        api.post(
            "routes",
            &serde_json::json!({"hub_id": hub_id, "name": name, "topic": "r/#",
                "rest_config": {"verb": "post", "uri": format!("http://{addr}/in")}}),
        )
        .expect(200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut options = iothub_e2e::clients::v4_options(hub.mqtt_addr(), &unique("rp"));
    options.set_credentials(hub_id, "");
    let mut publisher = iothub_e2e::clients::V4::connect(options);
    publisher.publish("r/x", rumqttc::QoS::AtLeastOnce, false, b"routed");
}

/// A histogram's name for its `_bucket`, `_sum` and `_count` series (the `# TYPE` line's).
fn histogram_base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| base.ends_with("_seconds"))
        .unwrap_or(name)
}

/// A scrape that holds every series the traffic causes (the TLS failure is counted when
/// the handshake task ends, so wait for it).
fn scrape_after_traffic(api: std::net::SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = http_get(api, "/metrics");
        assert_eq!(status, 200);
        let names = exported_names(&text);
        let missing: Vec<&&str> = KEY_METRICS
            .iter()
            .filter(|m| !names.contains(**m))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "not exported after traffic: {missing:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 5 "the dashboard test compares the dashboard's queries with a live scrape taken
/// after traffic, both ways": every metric a query of `configs/grafana/iothub-dashboard.json`
/// names is exported by a live hub, and every key metric is queried by some panel.
#[test]
fn the_dashboard_and_a_live_scrape_agree() {
    let yaml = "data_dir: iothub-data\n\
        listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
        \x20   - name: closed\n      bind: 127.0.0.1:0\n\
        \x20 tls:\n    - name: tls\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
        api:\n  bind: 127.0.0.1:0\n\
        hubs:\n  - name: default\n    plan: plan_dedicated\n    allow_anonymous: true\n";
    let Some(hub) = Hub::start_with(yaml) else {
        return;
    };
    traffic(&hub);
    let text = scrape_after_traffic(hub.api_addr().unwrap());
    let exported = exported_names(&text);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(configs_dir().join("grafana/iothub-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut queried = BTreeSet::new();
    let mut unknown = Vec::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "panel {panel:?} queries no metric: {expr}"
        );
        for name in names {
            if !exported.contains(&name) {
                unknown.push(format!("{panel}: {name}"));
            }
            queried.insert(histogram_base(&name).to_string());
            queried.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "dashboard queries naming no exported metric: {unknown:?}"
    );
    let without_panel: Vec<&&str> = KEY_METRICS
        .iter()
        .filter(|m| !queried.contains(**m))
        .collect();
    assert!(
        without_panel.is_empty(),
        "key metrics without a panel: {without_panel:?}"
    );
    // Every iothub_ metric the hub exports is a key metric: a new one needs a panel (and a
    // line above) rather than slipping by.
    let unlisted: Vec<&String> = exported
        .iter()
        .filter(|m| m.starts_with("iothub_") && !KEY_METRICS.contains(&histogram_base(m)))
        .collect();
    assert!(
        unlisted.is_empty(),
        "exported, not in KEY_METRICS: {unlisted:?}"
    );

    // The scrape configuration points Prometheus at that endpoint.
    let prometheus: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(configs_dir().join("prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics", "{prometheus}");
    let target = job["static_configs"][0]["targets"][0].as_str().unwrap();
    assert_eq!(target, "127.0.0.1:8080", "the default api.bind");
}

/// Issue 5 / DESIGN "a test parses every file in configs/": YAML and JSON files parse, and
/// nothing else lives there.
#[test]
fn every_file_in_configs_parses() {
    let all = files(&configs_dir());
    assert!(all.len() >= 3, "{all:?}");
    for path in all {
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = path.display();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                let v: Value = serde_saphyr::from_str(&text)
                    .unwrap_or_else(|e| panic!("{shown} is not YAML: {e}"));
                assert!(v.is_object(), "{shown}: a mapping at the top");
            }
            Some("json") => {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{shown} is not JSON: {e}"));
                assert!(v.is_object(), "{shown}: an object at the top");
            }
            _ => panic!("{shown}: configs/ holds YAML and JSON only"),
        }
    }
}

/// The series of a metrics answer by name, as the sums of their points.
fn sums(body: &Value) -> Vec<(String, u64)> {
    body["metrics"]
        .as_array()
        .unwrap_or_else(|| panic!("no metrics in {body}"))
        .iter()
        .map(|s| {
            let points = s["points"].as_array().unwrap();
            let sum = points.iter().map(|p| p[1].as_u64().unwrap()).sum();
            (s["name"].as_str().unwrap().to_string(), sum)
        })
        .collect()
}

/// Waits until `path`'s series sum to `want` (the hub collects every 5 s).
fn wait_for_sums(api: &Api, path: &str, want: &[(&str, u64)]) -> Value {
    let want: Vec<(String, u64)> = want.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = api.get(path).expect(200);
        if sums(&body) == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: expected sums {want:?}, got {:?}: {body}",
            sums(&body)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A device's session, packet by packet; answers how many packets crossed the wire (in
/// both directions, CONNECT to DISCONNECT).
fn device_session(addr: std::net::SocketAddr, device: &str) -> u64 {
    let mut c = RawClient::connected(addr, &Connect::v5(device, true)).0; // 2
    assert_eq!(c.subscribe(1, &[("t/#", 1)]), [1]); // 2
    for id in 1..=3u16 {
        // PUBLISH in, then PUBACK and the delivered copy out in either order, its PUBACK in.
        c.send_ok(&Publish::v5("t/x", b"m").qos(1, id).encode());
        let mut delivered = None;
        for _ in 0..2 {
            let p = c.expect_packet("PUBACK or PUBLISH");
            if p.kind() == kind::PUBLISH {
                delivered = frames::parse_publish(p.first_byte, &p.body, true);
            }
        }
        let delivered = delivered.unwrap_or_else(|| panic!("no delivery of message {id}"));
        c.send_ok(&frames::ack(kind::PUBACK, delivered.packet_id));
    }
    c.ping(); // 2
    c.send_ok(&frames::disconnect(None)); // 1
    c.expect_closed(WAIT);
    2 + 2 + 3 * 4 + 2 + 1
}

fn metrics_api_counts_every_packet_and_survives_a_restart(backend: Backend) {
    let db = RegistryDb::new(backend);
    let dir = tempfile::tempdir().unwrap();
    let yaml = registry_config(db.store_url(), false);
    let Some(mut hub) = Hub::start_in(dir.path(), &yaml) else {
        return;
    };
    let api = Api::admin(&hub);
    let hub_id = id_of(&api.create_hub(&json!({"name": unique("h")})));
    let mut devices = Vec::new();
    for _ in 0..2 {
        let body = json!({"hub_id": hub_id, "name": unique("d"), "allow_insecure": true});
        devices.push(id_of(&api.create_device(&body)));
    }
    let first = device_session(hub.mqtt_addr(), &devices[0]);
    let second = device_session(hub.mqtt_addr(), &devices[1]);
    let second_again = device_session(hub.mqtt_addr(), &devices[1]);
    assert_eq!(first, 19);
    let total = first + second + second_again;

    // A year by month: each device is active in one interval whichever minute or hour
    // boundary the test crosses (message sums hold over any period).
    let hub_path = format!("hubs/{hub_id}/metrics?period=year");
    let body = wait_for_sums(
        &api,
        &hub_path,
        &[("messages", total), ("active_devices", 2)],
    );
    assert_eq!(body["metrics"][0]["points"].as_array().unwrap().len(), 12);
    let device_path = format!("devices/{}/metrics?period=year", devices[1]);
    wait_for_sums(
        &api,
        &device_path,
        &[("messages", second + second_again), ("activity", 1)],
    );
    let by_minute = api.get(&format!("hubs/{hub_id}/metrics")).expect(200);
    assert_eq!(by_minute["metrics"][0]["metadata"]["resolution"], "minute");
    assert_eq!(sums(&by_minute)[0], ("messages".to_string(), total));

    let status = hub.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    drop(hub);
    let hub = Hub::start_in(dir.path(), &yaml).unwrap();
    let api = Api::admin(&hub);
    wait_for_sums(
        &api,
        &hub_path,
        &[("messages", total), ("active_devices", 2)],
    );
    wait_for_sums(
        &api,
        &device_path,
        &[("messages", second + second_again), ("activity", 1)],
    );
    // Counting goes on after the restart.
    let again = device_session(hub.mqtt_addr(), &devices[0]);
    wait_for_sums(
        &api,
        &hub_path,
        &[("messages", total + again), ("active_devices", 2)],
    );
}

/// Issue 5 metrics API, SQLite: every packet of a device in either direction is one message
/// of its hub and of the device (CONNECT to DISCONNECT, counted exactly), `active_devices`
/// counts each device once per interval, and a restart keeps the series.
#[test]
fn metrics_api_counts_every_packet_and_survives_a_restart_on_sqlite() {
    metrics_api_counts_every_packet_and_survives_a_restart(Backend::Sqlite);
}

/// The same on PostgreSQL.
#[test]
fn metrics_api_counts_every_packet_and_survives_a_restart_on_postgresql() {
    metrics_api_counts_every_packet_and_survives_a_restart(Backend::Postgres);
}
