//! The built-in route components against real targets: a local HTTP server, the machine's
//! PostgreSQL and MariaDB (database `test`), and an S3-compatible server (moto, started by
//! the test; the test fails when `moto_server` is missing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::*;
use iothub_model::RouteId;
use iothub_plugin_host::{
    BuiltinKind, DbTarget, FailureKind, Grants, HostConfig, HttpOrigin, HubPublisher,
    InstantiateError, NoPublish, Outcome, PluginHost, PublishBack, RouteInstance, S3Target,
};

#[derive(Default)]
struct Recorder(parking_lot::Mutex<Vec<PublishBack>>);

impl HubPublisher for Recorder {
    fn publish(
        &self,
        _route: RouteId,
        message: PublishBack,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        self.0.lock().push(message);
        Box::pin(async { Ok(()) })
    }
}

/// One host for the whole file: each built-in is compiled once (cranelift is slow in debug
/// builds).
fn shared_host() -> &'static PluginHost {
    static HOST: std::sync::OnceLock<PluginHost> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        host(HostConfig {
            io_timeout: std::time::Duration::from_secs(3),
            ..HostConfig::default()
        })
    })
}

async fn builtin(
    kind: BuiltinKind,
    grants: Grants,
    config: &str,
    publisher: Arc<dyn HubPublisher>,
) -> Result<RouteInstance, InstantiateError> {
    shared_host()
        .builtin(kind)
        .unwrap()
        .instantiate(context(kind.as_str()), grants, config, publisher)
        .await
}

fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_posts_each_message_and_publishes_a_2xx_reply_with_x_mqtt_topic_back() {
    let server = TestServer::start().await;
    server.answer(reply(
        200,
        &[("X-Mqtt-Topic", "replies/1"), ("X-Mqtt-Retain", "true")],
        "pong",
    ));
    let recorder = Arc::new(Recorder::default());
    let grants = Grants {
        http: Some(HttpOrigin::from_uri(&server.url("/")).unwrap()),
        hub_publish: true,
        ..Grants::default()
    };
    let config = format!(
        r#"{{"verb":"put","uri":"{}","headers":{{"X-Custom":"yes"}}}}"#,
        server.url("/in?x=1")
    );
    let route = builtin(BuiltinKind::Rest, grants, &config, recorder.clone())
        .await
        .unwrap();
    let mut retained = message("sensors/1", "21.5");
    retained.retain = true;
    let report = route
        .handle(vec![retained, message("sensors/2", "22")])
        .await
        .unwrap();
    assert_eq!(
        report.outcomes,
        vec![Outcome::Delivered, Outcome::Delivered]
    );
    let hits = server.requests();
    assert_eq!(hits.len(), 2);
    let header = |i: usize, name: &str| {
        hits[i]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(hits[0].method, "PUT");
    assert_eq!(hits[0].path, "/in?x=1");
    assert_eq!(hits[0].body, b"21.5");
    assert_eq!(header(0, "x-mqtt-topic").as_deref(), Some("sensors/1"));
    assert_eq!(header(0, "x-mqtt-retain").as_deref(), Some("true"));
    assert_eq!(header(1, "x-mqtt-retain").as_deref(), Some("false"));
    assert_eq!(header(1, "x-custom").as_deref(), Some("yes"));
    let published = recorder.0.lock().clone();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].topic.as_str(), "replies/1");
    assert_eq!(&published[0].payload[..], b"pong");
    assert!(published[0].retain);
    assert_eq!(published[0].qos, 1);

    // a 2xx without X-Mqtt-Topic publishes nothing; 503 retries, 404 rejects
    server.answer(reply(204, &[], ""));
    let r = route.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(r.outcomes, vec![Outcome::Delivered]);
    assert_eq!(recorder.0.lock().len(), 2);
    server.answer(reply(503, &[], ""));
    let r = route.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(r.outcomes, vec![Outcome::Retry("HTTP 503".into())]);
    server.answer(reply(404, &[], ""));
    let r = route.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(r.outcomes, vec![Outcome::Reject("HTTP 404".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_retries_when_the_target_is_down_and_reports_the_failure() {
    // a port nobody listens on
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let uri = format!("http://127.0.0.1:{port}/x");
    let grants = Grants {
        http: Some(HttpOrigin::from_uri(&uri).unwrap()),
        ..Grants::default()
    };
    let config = format!(r#"{{"verb":"post","uri":"{uri}"}}"#);
    let route = builtin(BuiltinKind::Rest, grants, &config, Arc::new(NoPublish))
        .await
        .unwrap();
    let r = route.handle(vec![message("a", "1")]).await.unwrap();
    assert!(
        matches!(&r.outcomes[0], Outcome::Retry(why) if why.starts_with("HTTP connect")),
        "{r:?}"
    );
    assert_eq!(r.failures[0].kind, FailureKind::HttpConnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_configs_are_checked_by_init() {
    let cases = [
        (BuiltinKind::Rest, r#"{"uri":"http://a/"}"#, "verb"),
        (
            BuiltinKind::Rest,
            r#"{"verb":"fetch","uri":"http://a/"}"#,
            "rest_config.verb",
        ),
        (
            BuiltinKind::Rest,
            r#"{"verb":"get","uri":"ftp://a/"}"#,
            "rest_config.uri",
        ),
        (
            BuiltinKind::Rest,
            r#"{"verb":"get","uri":"http://a/","headers":{"a":1}}"#,
            "rest_config",
        ),
        (
            BuiltinKind::S3,
            r#"{"bucket_name":"b","strategy":"sometimes"}"#,
            "s3_config.strategy",
        ),
        (
            BuiltinKind::S3,
            r#"{"bucket_name":"","strategy":"per_topic"}"#,
            "s3_config.bucket_name",
        ),
        (
            BuiltinKind::Database,
            r#"{"engine":"oracle","query":"x"}"#,
            "db_config.engine",
        ),
        (
            BuiltinKind::Database,
            r#"{"engine":"mysql","query":" "}"#,
            "db_config.query",
        ),
        (BuiltinKind::Database, "not json", "db_config"),
    ];
    for (kind, config, field) in cases {
        match builtin(kind, Grants::default(), config, Arc::new(NoPublish)).await {
            Err(InstantiateError::Init(text)) => {
                assert!(text.contains(field), "{kind:?} {config}: {text}")
            }
            other => panic!("{kind:?} {config}: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------ databases

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";

fn table() -> String {
    format!("h7a_route_{}", uuid::Uuid::new_v4().simple())
}

async fn database_route(url: &str, engine: &str, query: &str) -> RouteInstance {
    let grants = Grants {
        database: Some(DbTarget::new(url).unwrap()),
        ..Grants::default()
    };
    let config = serde_json::json!({
        "engine": engine, "host": "ignored", "port": 1, "dbname": "ignored",
        "username": "ignored", "password": "ignored", "query": query,
    })
    .to_string();
    builtin(BuiltinKind::Database, grants, &config, Arc::new(NoPublish))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_route_on_postgresql_binds_topic_and_payload_and_batches() {
    let pool = sqlx::PgPool::connect(PG)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let t = table();
    sqlx::query(&format!(
        "CREATE TABLE {t} (topic text NOT NULL, payload bytea UNIQUE, note text)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // $TOPIC twice, and inside a literal where it stays text
    let route = database_route(
        PG,
        "postgresql",
        &format!(
            "INSERT INTO {t} (topic, payload, note) VALUES ($TOPIC, $PAYLOAD, '$TOPIC' || $TOPIC)"
        ),
    )
    .await;
    let tricky = "x'); DROP TABLE t; --";
    let report = route
        .handle(vec![message("a/1", "p1"), message(tricky, "p2")])
        .await
        .unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Delivered; 2]);
    let rows: Vec<(String, Vec<u8>, String)> = sqlx::query_as(&format!(
        "SELECT topic, payload, note FROM {t} ORDER BY payload"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("a/1".into(), b"p1".to_vec(), "$TOPICa/1".into()),
            (tricky.into(), b"p2".to_vec(), format!("$TOPIC{tricky}")),
        ]
    );
    // one refused row: the others of the batch still land, that one is rejected
    let report = route
        .handle(vec![
            message("b", "p3"),
            message("b", "p1"),
            message("b", "p4"),
        ])
        .await
        .unwrap();
    assert_eq!(report.outcomes[0], Outcome::Delivered);
    assert!(matches!(&report.outcomes[1], Outcome::Reject(w) if w.contains("database execute")));
    assert_eq!(report.outcomes[2], Outcome::Delivered);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.kind == FailureKind::DatabaseExecute)
    );
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 4);
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .unwrap();

    // the table is gone: a prepare error, retried
    let report = route.handle(vec![message("c", "p5")]).await.unwrap();
    assert!(
        matches!(&report.outcomes[0], Outcome::Retry(w) if w.contains("database prepare")),
        "{report:?}"
    );
    assert_eq!(report.failures[0].kind, FailureKind::DatabasePrepare);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_route_on_mariadb_binds_topic_and_payload_and_batches() {
    let pool = sqlx::MySqlPool::connect(MY)
        .await
        .expect("MariaDB on 127.0.0.1:3306");
    let t = table();
    sqlx::query(&format!(
        "CREATE TABLE {t} (topic TEXT NOT NULL, payload BLOB, n INT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let route = database_route(
        MY,
        "mysql",
        &format!("INSERT INTO {t} (payload, topic, n) VALUES ($PAYLOAD, $TOPIC, LENGTH($PAYLOAD))"),
    )
    .await;
    let batch: Vec<_> = (0..5)
        .map(|i| message(&format!("m/{i}"), &"x".repeat(i + 1)))
        .collect();
    let report = route.handle(batch).await.unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Delivered; 5]);
    let rows: Vec<(String, Vec<u8>, i32)> =
        sqlx::query_as(&format!("SELECT topic, payload, n FROM {t} ORDER BY n"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4], ("m/4".into(), b"xxxxx".to_vec(), 5));
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_route_retries_when_the_database_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let route = database_route(
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        "postgresql",
        "INSERT INTO nowhere VALUES ($TOPIC)",
    )
    .await;
    let report = route.handle(vec![message("a", "1")]).await.unwrap();
    assert!(
        matches!(&report.outcomes[0], Outcome::Retry(w) if w.contains("database connect")),
        "{report:?}"
    );
    assert_eq!(report.failures[0].kind, FailureKind::DatabaseConnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_without_a_database_grant_is_denied() {
    let route = builtin(
        BuiltinKind::Database,
        Grants::default(),
        r#"{"engine":"postgresql","query":"SELECT $TOPIC"}"#,
        Arc::new(NoPublish),
    )
    .await
    .unwrap();
    let report = route.handle(vec![message("a", "1")]).await.unwrap();
    assert!(matches!(&report.outcomes[0], Outcome::Reject(w) if w.contains("denied")));
    assert_eq!(report.failures[0].kind, FailureKind::Denied);
}

// ------------------------------------------------------------------ S3

/// `moto_server` (PyPI `moto[server]`) on a free port, killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Moto {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]', see tests/python/requirements.txt)");
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return moto;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("moto_server did not listen on {port}");
}

/// Creates a bucket with one raw (unsigned) request: moto accepts it.
async fn create_bucket(endpoint: &str, bucket: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn s3_target(endpoint: &str, bucket: &str, prefix: &str) -> S3Target {
    S3Target {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        key_prefix: prefix.into(),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
    }
}

async fn object_keys(target: &S3Target) -> Vec<(String, Vec<u8>)> {
    use futures_util::StreamExt;
    use object_store::ObjectStore;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(target.endpoint.clone().unwrap())
        .with_allow_http(true)
        .with_region(&target.region)
        .with_bucket_name(&target.bucket)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    let mut listed: Vec<_> = store.list(None).collect::<Vec<_>>().await;
    listed.sort_by_key(|m| m.as_ref().unwrap().location.to_string());
    let mut out = Vec::new();
    for meta in listed {
        let path = meta.unwrap().location;
        let body = store.get(&path).await.unwrap().bytes().await.unwrap();
        out.push((path.to_string(), body.to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_route_writes_per_topic_and_per_message_keys() {
    let moto = moto().await;
    create_bucket(&moto.endpoint, "iothub").await;
    let grants = |prefix: &str| Grants {
        bucket: Some(s3_target(&moto.endpoint, "iothub", prefix)),
        ..Grants::default()
    };

    let per_topic = builtin(
        BuiltinKind::S3,
        grants("hub/"),
        r#"{"bucket_region":"us-east-1","bucket_name":"iothub","object_prefix":"hub","strategy":"per_topic"}"#,
        Arc::new(NoPublish),
    )
    .await
    .unwrap();
    let r = per_topic
        .handle(vec![
            message("room/1", "first"),
            message("room/1", "second"),
            message("a//b", "x"),
        ])
        .await
        .unwrap();
    assert_eq!(r.outcomes[..2], [Outcome::Delivered, Outcome::Delivered]);
    assert!(matches!(&r.outcomes[2], Outcome::Reject(_)));
    assert_eq!(
        object_keys(&s3_target(&moto.endpoint, "iothub", "")).await,
        vec![("hub/room/1".to_owned(), b"second".to_vec())]
    );

    let per_message = builtin(
        BuiltinKind::S3,
        grants("log/"),
        r#"{"bucket_region":"us-east-1","bucket_name":"iothub","object_prefix":"log/","strategy":"per_message"}"#,
        Arc::new(NoPublish),
    )
    .await
    .unwrap();
    let mut a = message("room/2", "a");
    a.timestamp_ms = 1_700_000_000_123;
    let mut b = a.clone();
    b.payload = "b".into();
    let r = per_message.handle(vec![a, b]).await.unwrap();
    assert_eq!(r.outcomes, vec![Outcome::Delivered; 2]);
    let keys = object_keys(&s3_target(&moto.endpoint, "iothub", "")).await;
    assert_eq!(
        keys,
        vec![
            ("hub/room/1".to_owned(), b"second".to_vec()),
            (
                "log/room/2/2023-11-14T22:13:20.123000001Z".to_owned(),
                b"b".to_vec()
            ),
            (
                "log/room/2/2023-11-14T22:13:20.123Z".to_owned(),
                b"a".to_vec()
            ),
        ]
    );

    // a prefix outside the grant is denied by the host; a missing bucket is a write error
    let outside = builtin(
        BuiltinKind::S3,
        grants("hub/"),
        r#"{"bucket_region":"us-east-1","bucket_name":"iothub","object_prefix":"other","strategy":"per_topic"}"#,
        Arc::new(NoPublish),
    )
    .await
    .unwrap();
    let r = outside.handle(vec![message("x", "1")]).await.unwrap();
    assert!(matches!(&r.outcomes[0], Outcome::Reject(w) if w.contains("denied")));
    assert_eq!(r.failures[0].kind, FailureKind::Denied);
    let missing = builtin(
        BuiltinKind::S3,
        Grants {
            bucket: Some(s3_target(&moto.endpoint, "no-such-bucket", "")),
            ..Grants::default()
        },
        r#"{"bucket_region":"us-east-1","bucket_name":"no-such-bucket","strategy":"per_topic"}"#,
        Arc::new(NoPublish),
    )
    .await
    .unwrap();
    let r = missing.handle(vec![message("x", "1")]).await.unwrap();
    assert!(
        matches!(&r.outcomes[0], Outcome::Retry(w) if w.contains("S3 write")),
        "{r:?}"
    );
    assert_eq!(r.failures[0].kind, FailureKind::S3Write);
}
