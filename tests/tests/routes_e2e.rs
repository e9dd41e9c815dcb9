//! Routes end to end (issue 7): the real `iothub` binary with its registry, routes created
//! through the management API, messages published by an MQTT client, and real targets: a
//! local HTTP server written here, the machine's PostgreSQL and MariaDB (database `test`),
//! and an S3-compatible server (`moto_server` from PyPI, started by the test; the test fails
//! when it is missing). The outage test puts a switchable TCP proxy in front of every
//! target, takes them all down for 30 s under continuous publishing, restarts the hub
//! (SIGTERM) in the middle, and checks that every acknowledged message reached every
//! target once the targets are back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iothub_e2e::Hub;
use iothub_e2e::api::{Api, id_of, registry_config};
use iothub_e2e::clients::{V4, v4_options};
use serde_json::{Value, json};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

// ------------------------------------------------------------------ targets

/// What the HTTP target received: (method, path, headers lowercased, body).
type Request = (String, String, HashMap<String, String>, Vec<u8>);

/// A tiny HTTP/1.1 server (keep-alive, Content-Length bodies). With `reply`, a 200 carries
/// `X-Mqtt-Topic: reply/<last topic level>` and the body `ack:<body>`.
struct HttpTarget {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Request>>>,
}

impl HttpTarget {
    fn start(reply: bool) -> HttpTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let rec = rec.clone();
                std::thread::spawn(move || serve_http(conn, &rec, reply));
            }
        });
        HttpTarget { addr, received }
    }

    fn bodies(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.3).into_owned())
            .collect()
    }
}

fn serve_http(conn: TcpStream, rec: &Mutex<Vec<Request>>, reply: bool) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let topic = headers.get("x-mqtt-topic").cloned().unwrap_or_default();
        let answer_body = format!("ack:{}", String::from_utf8_lossy(&body));
        rec.lock().unwrap().push((method, path, headers, body));
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n",
            answer_body.len()
        );
        if reply {
            let last = topic.rsplit('/').next().unwrap_or("");
            answer.push_str(&format!("X-Mqtt-Topic: reply/{last}\r\n"));
        }
        answer.push_str("\r\n");
        answer.push_str(&answer_body);
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A TCP proxy that can be taken down: while down, it closes every connection it has and
/// every new one at once, like a target that is unreachable.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (d, c) = (down.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut all = c.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { addr, down, conns }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.conns.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// `moto_server` on a free port, killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn moto() -> Moto {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]', see tests/python/requirements.txt)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let moto = Moto { child, addr };
    for _ in 0..400 {
        if TcpStream::connect(addr).is_ok() {
            return moto;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto_server did not listen on {port}");
}

/// One raw HTTP request to moto (which accepts unsigned requests); (status, body).
fn raw_http(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Every object key of `bucket` (ListObjectsV2, following continuation tokens).
fn s3_keys(addr: SocketAddr, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut target = format!("/{bucket}?list-type=2&max-keys=1000");
        if let Some(t) = &token {
            target.push_str("&continuation-token=");
            target.push_str(
                &t.replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D"),
            );
        }
        let (status, body) = raw_http(addr, "GET", &target);
        assert_eq!(status, 200, "{body}");
        for part in body.split("<Key>").skip(1) {
            if let Some((k, _)) = part.split_once("</Key>") {
                keys.push(k.to_owned());
            }
        }
        token = body
            .split_once("<NextContinuationToken>")
            .and_then(|(_, rest)| rest.split_once("</NextContinuationToken>"))
            .map(|(t, _)| t.to_owned());
        if token.is_none() {
            return keys;
        }
    }
}

/// (key, size) of every object of `bucket` (one listing page).
fn s3_sizes(addr: SocketAddr, bucket: &str) -> Vec<(String, u64)> {
    let (status, body) = raw_http(addr, "GET", &format!("/{bucket}?list-type=2"));
    assert_eq!(status, 200, "{body}");
    body.split("<Contents>")
        .skip(1)
        .filter_map(|c| {
            let key = c.split_once("<Key>")?.1.split_once("</Key>")?.0.to_owned();
            let size = c
                .split_once("<Size>")?
                .1
                .split_once("</Size>")?
                .0
                .parse()
                .ok()?;
            Some((key, size))
        })
        .collect()
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([PG_URL, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mysql(sql: &str) -> String {
    let out = Command::new("mysql")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
            "-N",
            "-B",
            "test",
            "-e",
            sql,
        ])
        .output()
        .expect("mysql");
    assert!(
        out.status.success(),
        "mysql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

// ------------------------------------------------------------------ hub and API

fn start(dir: &Path) -> Hub {
    Hub::start_in(dir, &registry_config("", false)).expect("iothub")
}

/// A hub of the registry that admits anonymous clients (they name it as username).
fn create_hub(api: &Api) -> String {
    id_of(&api.create_hub(&json!({
        "name": format!("routes-{}", iothub_e2e::unique("h")),
        "product_plan": "plan_dedicated",
        "allow_anonymous": true,
    })))
}

fn client(hub: &Hub, hub_id: &str, id: &str) -> V4 {
    let mut o = v4_options(hub.mqtt_addr(), id);
    o.set_credentials(hub_id, "");
    V4::connect(o)
}

fn create_route(api: &Api, body: &Value) -> String {
    id_of(&api.post("routes", body).expect(200))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn table(tag: &str) -> String {
    format!("routes_{}", iothub_e2e::unique(tag).replace('-', "_"))
}

// ------------------------------------------------------------------ tests

/// A REST route posts each message with X-Mqtt-Topic / X-Mqtt-Retain and the route's own
/// headers, and a 2xx reply carrying X-Mqtt-Topic is published back on the hub (and not
/// routed to the route again: its filter matches the reply topic too).
#[test]
fn rest_route_posts_messages_and_publishes_the_reply_back() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    let target = HttpTarget::start(true);
    let route = create_route(
        &api,
        &json!({"hub_id": hub_id, "name": "to-http", "topic": "#",
                "rest_config": {"verb": "post", "uri": format!("http://{}/ingest", target.addr),
                                "headers": {"X-Key": "k1"}}}),
    );
    let mut sub = client(&hub, &hub_id, "sub");
    sub.subscribe("reply/#", rumqttc::QoS::AtLeastOnce);
    std::thread::sleep(Duration::from_millis(500));
    let mut p = client(&hub, &hub_id, "pub");
    p.publish("sensors/t1", rumqttc::QoS::AtLeastOnce, true, b"21.5");
    let back = sub.expect_publish();
    assert_eq!(back.topic, "reply/t1");
    assert_eq!(&back.payload[..], b"ack:21.5");
    wait_until("the request", Duration::from_secs(20), || {
        !target.bodies().is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = target.received.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "the reply was not routed back to the route: {got:?}"
    );
    let (method, path, headers, body) = &got[0];
    assert_eq!(
        (method.as_str(), path.as_str(), &body[..]),
        ("POST", "/ingest", &b"21.5"[..])
    );
    assert_eq!(
        headers.get("x-mqtt-topic").map(String::as_str),
        Some("sensors/t1")
    );
    assert_eq!(
        headers.get("x-mqtt-retain").map(String::as_str),
        Some("true")
    );
    assert_eq!(headers.get("x-key").map(String::as_str), Some("k1"));
    // Deleting the route stops it and deletes its queue.
    let queue = dir.path().join("iothub-data/routes").join(&route);
    assert!(queue.exists());
    api.delete(&format!("routes/{route}")).expect(204);
    wait_until("the queue deleted", Duration::from_secs(10), || {
        !queue.exists()
    });
    p.publish("sensors/t2", rumqttc::QoS::AtLeastOnce, false, b"x");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(target.bodies(), vec!["21.5"]);
}

/// Database routes insert one row per message in PostgreSQL and MariaDB, `$TOPIC` and
/// `$PAYLOAD` bound as parameters (a payload full of quotes is stored as sent).
#[test]
fn database_routes_insert_rows_in_postgresql_and_mariadb() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    let (pg, my) = (table("pg"), table("my"));
    psql(&format!(
        "CREATE TABLE {pg} (topic TEXT NOT NULL, payload BYTEA NOT NULL)"
    ));
    mysql(&format!(
        "CREATE TABLE {my} (topic TEXT NOT NULL, payload BLOB NOT NULL)"
    ));
    create_route(
        &api,
        &json!({"hub_id": hub_id, "name": "to-pg", "topic": "db/#",
                "db_config": {"engine": "postgresql", "host": "127.0.0.1", "port": 5432, "dbname": "test",
                              "username": "postgres", "password": "",
                              "query": format!("INSERT INTO {pg} (topic, payload) VALUES ($TOPIC, $PAYLOAD)")}}),
    );
    create_route(
        &api,
        &json!({"hub_id": hub_id, "name": "to-mariadb", "topic": "db/#",
                "db_config": {"engine": "mysql", "host": "127.0.0.1", "port": 3306, "dbname": "test",
                              "username": "root", "password": "",
                              "query": format!("INSERT INTO {my} (topic, payload) VALUES ($TOPIC, $PAYLOAD)")}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut p = client(&hub, &hub_id, "pub");
    let mut want = Vec::new();
    for i in 0..20 {
        let payload = format!("m{i:02} '); DROP TABLE x; --");
        p.publish(
            &format!("db/{i}"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload.as_bytes(),
        );
        want.push(format!("db/{i}|{payload}"));
    }
    let pg_rows = || {
        lines(&psql(&format!(
            "SELECT topic || '|' || convert_from(payload, 'UTF8') FROM {pg} ORDER BY topic"
        )))
    };
    let my_rows = || {
        lines(&mysql(&format!(
            "SELECT CONCAT(topic, '|', CAST(payload AS CHAR)) FROM {my} ORDER BY topic"
        )))
    };
    wait_until("20 PostgreSQL rows", Duration::from_secs(30), || {
        pg_rows().len() >= 20
    });
    wait_until("20 MariaDB rows", Duration::from_secs(30), || {
        my_rows().len() >= 20
    });
    want.sort();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(pg_rows()), want);
    assert_eq!(sorted(my_rows()), want);
    psql(&format!("DROP TABLE {pg}"));
    mysql(&format!("DROP TABLE {my}"));
}

/// An S3 route writes one object per topic (`prefix/topic`, overwritten) to a real
/// S3-compatible server.
#[test]
fn s3_route_writes_objects_to_an_s3_server() {
    let s3 = moto();
    assert_eq!(raw_http(s3.addr, "PUT", "/iothub-e2e").0, 200);
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    create_route(
        &api,
        &json!({"hub_id": hub_id, "name": "to-s3", "topic": "s3/#",
                "s3_config": {"bucket_region": "us-east-1", "bucket_name": "iothub-e2e", "object_prefix": "hub",
                              "strategy": "per_topic", "endpoint": format!("http://{}", s3.addr),
                              "access_key_id": "test", "secret_access_key": "test"}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut p = client(&hub, &hub_id, "pub");
    p.publish("s3/a", rumqttc::QoS::AtLeastOnce, false, b"first");
    p.publish("s3/a", rumqttc::QoS::AtLeastOnce, false, b"second");
    p.publish("s3/b", rumqttc::QoS::AtLeastOnce, false, b"other");
    wait_until("two objects", Duration::from_secs(30), || {
        s3_keys(s3.addr, "iothub-e2e").len() >= 2
    });
    // Objects are private (an unsigned GET is refused): their sizes in the listing tell
    // "second" (6 bytes) from "first" (5).
    wait_until("the overwrite", Duration::from_secs(30), || {
        s3_sizes(s3.addr, "iothub-e2e") == [("hub/s3/a".to_owned(), 6), ("hub/s3/b".to_owned(), 5)]
    });
    // The secret key is write-only.
    let shown = api.get("routes?page_size=10");
    let list = shown.expect(200);
    let id = id_of(&list["routes"][0]);
    let one = api.get(&format!("routes/{id}")).expect(200);
    assert_eq!(one["s3_config"]["access_key_id"], "test");
    assert!(one["s3_config"].get("secret_access_key").is_none(), "{one}");
}

/// Configurations the broker cannot run are refused before anything is stored, naming the
/// field: a component that is not a route component, and one that is not base64.
#[test]
fn routes_the_broker_cannot_run_are_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    let not_a_component = "AGFzbQEAAAA="; // a core module's header: "\0asm", version 1
    api.post(
        "routes",
        &json!({"hub_id": hub_id, "name": "bad", "topic": "a/#",
                "wasm_config": {"component": not_a_component}}),
    )
    .expect_error(400, "invalid_arguments", Some("wasm_config.component"));
    api.post(
        "routes",
        &json!({"hub_id": hub_id, "name": "bad", "topic": "a/#",
                "wasm_config": {"component": "%%%"}}),
    )
    .expect_error(400, "invalid_arguments", Some("wasm_config.component"));
    assert_eq!(api.get("routes").expect(200)["total_count"], 0);
}

/// Publishes `out/<n>` for n = 0, 1, ... every few milliseconds until `stop`, reconnecting
/// whenever the hub is away; `acked` holds every n the hub acknowledged (PUBACK).
fn publisher(
    addr: Arc<Mutex<SocketAddr>>,
    hub_id: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    next: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let a = *addr.lock().unwrap();
            let mut o = v4_options(a, "outage-pub");
            o.set_credentials(hub_id.clone(), "");
            let Ok(mut c) = V4::try_connect(o) else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if c.client
                    .publish(
                        format!("out/{n}"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        format!("{n}"),
                    )
                    .is_err()
                {
                    break;
                }
                let ok = c.inbox.wait(Duration::from_secs(5), |p| {
                    matches!(p, rumqttc::Packet::PubAck(_))
                });
                if ok.is_none() {
                    break;
                }
                acked.lock().unwrap().insert(n);
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    })
}

/// The outage: every route type's target unreachable for 30 s under continuous
/// publishing, the hub restarted (SIGTERM) in the middle of it; afterwards every message
/// the hub acknowledged reaches every target and the queues drain.
#[test]
fn every_route_type_loses_nothing_through_a_30s_outage_and_a_restart() {
    let s3 = moto();
    assert_eq!(raw_http(s3.addr, "PUT", "/outage").0, 200);
    let http = HttpTarget::start(false);
    let (pg, my) = (table("opg"), table("omy"));
    psql(&format!(
        "CREATE TABLE {pg} (topic TEXT NOT NULL, payload BYTEA NOT NULL)"
    ));
    mysql(&format!(
        "CREATE TABLE {my} (topic TEXT NOT NULL, payload BLOB NOT NULL)"
    ));
    let proxies = [
        Proxy::start(http.addr),
        Proxy::start("127.0.0.1:5432".parse().unwrap()),
        Proxy::start("127.0.0.1:3306".parse().unwrap()),
        Proxy::start(s3.addr),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    let port = |i: usize| proxies[i].addr.port();
    let routes = [
        json!({"rest_config": {"verb": "post", "uri": format!("http://127.0.0.1:{}/in", port(0))}}),
        json!({"db_config": {"engine": "postgresql", "host": "127.0.0.1", "port": port(1), "dbname": "test",
                             "username": "postgres", "password": "",
                             "query": format!("INSERT INTO {pg} (topic, payload) VALUES ($TOPIC, $PAYLOAD)")}}),
        json!({"db_config": {"engine": "mysql", "host": "127.0.0.1", "port": port(2), "dbname": "test",
                             "username": "root", "password": "",
                             "query": format!("INSERT INTO {my} (topic, payload) VALUES ($TOPIC, $PAYLOAD)")}}),
        json!({"s3_config": {"bucket_region": "us-east-1", "bucket_name": "outage", "object_prefix": "o",
                             "strategy": "per_topic", "endpoint": format!("http://127.0.0.1:{}", port(3)),
                             "access_key_id": "test", "secret_access_key": "test"}}),
    ];
    for (i, block) in routes.iter().enumerate() {
        let mut body = json!({"hub_id": hub_id, "name": format!("outage-{i}"), "topic": "out/#"});
        for (k, v) in block.as_object().unwrap() {
            body[k] = v.clone();
        }
        create_route(&api, &body);
    }
    std::thread::sleep(Duration::from_millis(500));

    let addr = Arc::new(Mutex::new(hub.mqtt_addr()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let next = Arc::new(AtomicU64::new(0));
    let publishing = publisher(
        addr.clone(),
        hub_id.clone(),
        stop.clone(),
        acked.clone(),
        next.clone(),
    );
    std::thread::sleep(Duration::from_secs(3));
    for p in &proxies {
        p.set_down(true);
    }
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    // The restart, in the middle of the outage.
    let status = hub.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {:?}\n{}",
        status,
        hub.logs()
    );
    let hub = start(dir.path());
    *addr.lock().unwrap() = hub.mqtt_addr();
    let left = Duration::from_secs(30).saturating_sub(outage.elapsed());
    std::thread::sleep(left);
    for p in &proxies {
        p.set_down(false);
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    publishing.join().unwrap();
    let acked: BTreeSet<u64> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 200,
        "too few messages published: {}",
        acked.len()
    );

    let want: BTreeSet<String> = acked.iter().map(|n| n.to_string()).collect();
    let covered = |got: &BTreeSet<String>| want.is_subset(got);
    let http_got = || http.bodies().into_iter().collect::<BTreeSet<_>>();
    let pg_got = || {
        lines(&psql(&format!(
            "SELECT convert_from(payload, 'UTF8') FROM {pg}"
        )))
        .into_iter()
        .collect()
    };
    let my_got = || {
        lines(&mysql(&format!("SELECT CAST(payload AS CHAR) FROM {my}")))
            .into_iter()
            .collect()
    };
    let s3_got = || {
        s3_keys(s3.addr, "outage")
            .into_iter()
            .filter_map(|k| k.strip_prefix("o/out/").map(str::to_owned))
            .collect()
    };
    let checks: [(&str, &dyn Fn() -> BTreeSet<String>); 4] = [
        ("REST", &http_got),
        ("PostgreSQL", &pg_got),
        ("MariaDB", &my_got),
        ("S3", &s3_got),
    ];
    for (name, got) in checks {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !covered(&got()) {
            if Instant::now() > deadline {
                let have = got();
                let missing: Vec<&String> = want.difference(&have).take(30).collect();
                panic!(
                    "{name}: {} of {} acknowledged messages missing, e.g. {missing:?}; hub log:\n{}",
                    want.difference(&have).count(),
                    want.len(),
                    hub.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The queues drained: nothing left pending on disk once delivered (depth 0 in /metrics).
    let metrics = iothub_e2e::api::http(hub.api_addr().unwrap(), "GET", "/metrics", &[], None).body;
    let depths: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("iothub_route_queue_depth{"))
        .collect();
    assert_eq!(depths.len(), 4, "{metrics}");
    for _ in 0..100 {
        let m = iothub_e2e::api::http(hub.api_addr().unwrap(), "GET", "/metrics", &[], None).body;
        if m.lines()
            .filter(|l| l.starts_with("iothub_route_queue_depth{"))
            .all(|l| l.ends_with(" 0"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = iothub_e2e::api::http(hub.api_addr().unwrap(), "GET", "/metrics", &[], None).body;
    for l in m
        .lines()
        .filter(|l| l.starts_with("iothub_route_queue_depth{"))
    {
        assert!(l.ends_with(" 0"), "{l}");
    }
    let delivered: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("iothub_route_delivered_total{"))
        .collect();
    assert_eq!(delivered.len(), 4, "{m}");
    assert!(
        m.contains("iothub_route_retried_total{"),
        "retries are counted"
    );
    psql(&format!("DROP TABLE {pg}"));
    mysql(&format!("DROP TABLE {my}"));
}

/// A route's messages survive SIGKILL (at least once per route through a crash): a REST
/// route whose target is down, a publisher's QoS 1 messages all acknowledged (pipelined, so
/// the route's tap still holds some when the last PUBACK arrives), the hub killed with
/// SIGKILL right after the last PUBACK and restarted on its data directory; once the target
/// is back, every acknowledged message reaches it. Without the taps journaled this lost
/// the messages still in the tap's session queue at the kill.
#[test]
fn a_routes_acknowledged_messages_survive_sigkill() {
    const N: usize = 400;
    let http = HttpTarget::start(false);
    let proxy = Proxy::start(http.addr);
    proxy.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let mut hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    create_route(
        &api,
        &json!({"hub_id": hub_id, "name": "kill-http", "topic": "kill/#",
                "rest_config": {"verb": "post", "uri": format!("http://{}/in", proxy.addr)}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut p = client(&hub, &hub_id, "kill-pub");
    for n in 0..N {
        p.client
            .publish(
                format!("kill/{n}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                n.to_string(),
            )
            .unwrap();
    }
    for acked in 0..N {
        let ack = p.inbox.wait(Duration::from_secs(20), |p| {
            matches!(p, rumqttc::Packet::PubAck(_))
        });
        assert!(
            ack.is_some(),
            "{acked} of {N} PUBACKs before the kill ({:?})",
            p.inbox.closed
        );
    }
    assert!(hub.kill().is_some(), "the hub did not die");
    drop(p);
    let hub = start(dir.path());
    proxy.set_down(false);
    let want: BTreeSet<String> = (0..N).map(|n| n.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<String> = http.bodies().into_iter().collect();
        if want.is_subset(&got) {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = want.difference(&got).collect();
            panic!(
                "{} of {N} acknowledged messages never reached the target after SIGKILL: {:?}; hub log:\n{}",
                missing.len(),
                missing.iter().take(30).collect::<Vec<_>>(),
                hub.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 7's custom route: the guide's template (`plugins/template`) built fresh with
/// `cargo build --target wasm32-wasip2 --release` (its own target directory, so nothing
/// stale is reused), uploaded with the guide's CLI command, and seen to work: each message
/// reaches the HTTP endpoint it was granted, as the template's JSON.
#[test]
fn the_guides_template_built_fresh_and_uploaded_delivers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let build_dir = tempfile::tempdir().unwrap();
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--release",
            "--locked",
        ])
        .current_dir(root.join("plugins/template"))
        .env("CARGO_TARGET_DIR", build_dir.path())
        .output()
        .expect("cargo");
    assert!(
        built.status.success(),
        "template build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = build_dir
        .path()
        .join("wasm32-wasip2/release/iothub_route_template.wasm");
    assert!(wasm.exists(), "{}", wasm.display());

    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    let target = HttpTarget::start(false);
    let origin = format!("http://{}", target.addr);
    let uri = format!("{origin}/in");
    let run = iothub_e2e::api::cli_as(
        &api,
        dir.path(),
        &[
            "route",
            "create",
            "--hub-id",
            &hub_id,
            "--name",
            "my-route",
            "--topic",
            "sensors/#",
            "--type",
            "wasm",
            "--component",
            wasm.to_str().unwrap(),
            "--config",
            &format!("{{\"uri\":\"{uri}\"}}"),
            "--http-origin",
            &origin,
        ],
    );
    let shown = run.ok();
    assert!(shown.contains("type         wasm"), "{shown}");
    assert!(
        shown.contains(&format!("\"http_origin\":\"{origin}\"")),
        "{shown}"
    );
    assert!(shown.contains("\"component_sha256\":\""), "{shown}");
    std::thread::sleep(Duration::from_millis(500));
    let mut p = client(&hub, &hub_id, "pub");
    p.publish("sensors/t", rumqttc::QoS::AtLeastOnce, false, b"hello");
    wait_until("the forwarded message", Duration::from_secs(30), || {
        !target.bodies().is_empty()
    });
    let got = target.received.lock().unwrap().clone();
    let (method, path, _, body) = &got[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/in"));
    let json: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["topic"], "sensors/t", "{json}");
    assert_eq!(json["payload"], "hello", "{json}");
}

/// The hub event `sub` receives about `route` within `timeout`, checked like every hub event:
/// topic `$SCW/events/<severity>/route/<route id>`, the reference's fields.
fn route_event(sub: &mut V4, route: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(rumqttc::Packet::Publish(p)) = sub.inbox.wait(Duration::from_millis(200), |p| {
            matches!(p, rumqttc::Packet::Publish(_))
        }) else {
            continue;
        };
        if !p.topic.ends_with(&format!("/route/{route}")) {
            continue;
        }
        let event: Value = serde_json::from_slice(&p.payload).unwrap();
        let severity = event["severity"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            p.topic,
            format!("$SCW/events/{severity}/route/{route}"),
            "{event}"
        );
        assert_eq!(event["object-type"], "route", "{event}");
        assert_eq!(event["object-id"], route, "{event}");
        assert!(
            event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{event}"
        );
        return event;
    }
    panic!("no hub event about route {route} within {timeout:?}");
}

/// Issue 5's route failure events, end to end: routes whose targets fail (an HTTP target
/// nobody listens on, a database that refuses the connection, a query naming a missing
/// table, a row the table's check refuses, a bucket that does not exist) each raise their
/// hub event, received over MQTT on `$SCW/events/...` with the reference's message; the
/// database ones carry the message's payload.
#[test]
fn route_failures_raise_hub_events_over_mqtt() {
    let s3 = moto();
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path());
    let api = Api::admin(&hub);
    let hub_id = create_hub(&api);
    let mut events = client(&hub, &hub_id, "events");
    events.subscribe("$SCW/events/#", rumqttc::QoS::AtLeastOnce);
    let checked = table("chk");
    psql(&format!(
        "CREATE TABLE {checked} (topic TEXT NOT NULL, payload BYTEA NOT NULL CHECK (length(payload) < 3))"
    ));
    let pg = |name: &str, port: u16, query: String| {
        json!({"hub_id": hub_id, "name": name, "topic": format!("{name}/#"),
               "db_config": {"engine": "postgresql", "host": "127.0.0.1", "port": port, "dbname": "test",
                             "username": "postgres", "password": "", "query": query}})
    };
    let cases = [
        (
            create_route(
                &api,
                &json!({"hub_id": hub_id, "name": "http", "topic": "http/#",
                        "rest_config": {"verb": "post", "uri": format!("http://127.0.0.1:{}/x", free_port())}}),
            ),
            "http",
            "HTTP request failed",
            false,
        ),
        (
            create_route(
                &api,
                &pg(
                    "connect",
                    free_port(),
                    format!("INSERT INTO {checked} (topic, payload) VALUES ($TOPIC, $PAYLOAD)"),
                ),
            ),
            "connect",
            "failed to connect to database",
            true,
        ),
        (
            create_route(
                &api,
                &pg(
                    "prepare",
                    5432,
                    "INSERT INTO no_such_table_iothub (t, p) VALUES ($TOPIC, $PAYLOAD)".into(),
                ),
            ),
            "prepare",
            "failed to prepare database query",
            true,
        ),
        (
            create_route(
                &api,
                &pg(
                    "execute",
                    5432,
                    format!("INSERT INTO {checked} (topic, payload) VALUES ($TOPIC, $PAYLOAD)"),
                ),
            ),
            "execute",
            "failed to execute database query",
            true,
        ),
        (
            create_route(
                &api,
                &json!({"hub_id": hub_id, "name": "s3", "topic": "s3/#",
                        "s3_config": {"bucket_region": "us-east-1", "bucket_name": "no-such-bucket-iothub",
                                      "object_prefix": "hub", "strategy": "per_topic",
                                      "endpoint": format!("http://{}", s3.addr),
                                      "access_key_id": "test", "secret_access_key": "test"}}),
            ),
            "s3",
            "failed to write object to S3",
            false,
        ),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let mut p = client(&hub, &hub_id, "pub");
    for (route, prefix, text, carries_payload) in &cases {
        let payload = format!("{prefix}-payload");
        p.publish(
            &format!("{prefix}/m"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload.as_bytes(),
        );
        let event = route_event(&mut events, route, Duration::from_secs(30));
        let msg = event["msg"].as_str().unwrap_or_default();
        assert!(msg.starts_with(text), "{prefix}: {event}");
        if *carries_payload {
            assert_eq!(event["payload"], payload, "{prefix}: {event}");
        }
    }
    psql(&format!("DROP TABLE {checked}"));
}
