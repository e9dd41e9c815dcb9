//! The sandbox: runaway, greedy, nosy and broken components are contained within their
//! limits while another route of the same host keeps handling messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use iothub_plugin_host::{
    CallError, FailureKind, Grants, HostConfig, HttpOrigin, Outcome, ValidateError,
};

fn config() -> HostConfig {
    HostConfig {
        memory_limit: 16 << 20,
        call_deadline: Duration::from_millis(1500),
        pool_size: 2,
        ..HostConfig::default()
    }
}

/// Runs `bad` once on its own task while the no-op route of the same host handles 20
/// batches; returns the bad call's error and how long it took.
async fn contained(bad_handle: &str, imports: &str, data: &str) -> (CallError, Duration) {
    let host = host(config());
    let good = start(
        &host.compile(&noop_route()).unwrap(),
        Grants::default(),
        "{}",
    )
    .await;
    let bad = start(
        &host
            .compile(&route_component(imports, data, bad_handle))
            .unwrap(),
        Grants::default(),
        "{}",
    )
    .await;
    let started = Instant::now();
    let bad_call = {
        let bad = bad.clone();
        tokio::spawn(async move { bad.handle(vec![message("a/b", "x")]).await })
    };
    for i in 0..20 {
        let report = good
            .handle(vec![message("a/b", &i.to_string()), message("a/c", "y")])
            .await
            .unwrap();
        assert_eq!(
            report.outcomes,
            vec![Outcome::Delivered, Outcome::Delivered]
        );
    }
    let err = bad_call.await.unwrap().unwrap_err();
    let took = started.elapsed();
    // the failed instance was discarded: the next call makes a new one (and fails the same way)
    assert!(bad.handle(vec![message("a/b", "x")]).await.is_err());
    assert_eq!(bad.stats().instances_created, 2);
    // the good route was never disturbed
    assert_eq!(
        good.stats().traps + good.stats().deadlines + good.stats().memory,
        0
    );
    (err, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    let (err, took) = contained("(loop $forever (br $forever))", "", "").await;
    assert_eq!(err, CallError::Deadline(Duration::from_millis(1500)));
    // contained: stopped by the deadline, not by the test's own timeout
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_memory_limit() {
    let bomb = "(loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable";
    let (err, _) = contained(bomb, "", "").await;
    assert_eq!(err, CallError::Memory(16 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_is_a_trap_of_that_instance_only() {
    let (err, _) = contained("unreachable", "", "").await;
    match err {
        CallError::Trap(text) => assert!(text.contains("unreachable"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_number_of_outcomes_is_refused() {
    let host = host(config());
    // claims one outcome whatever the batch size
    let one = route_component("", "", "(local.set $len (i32.const 1))");
    let route = start(&host.compile(&one).unwrap(), Grants::default(), "{}").await;
    let err = route
        .handle(vec![message("a", "1"), message("a", "2")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::BadOutcomeCount {
            expected: 2,
            got: 1
        }
    );
}

#[test]
fn components_of_another_world_are_refused_at_compile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.wit"),
        "package test:other;\nworld other {\n  export run: func();\n}\n",
    )
    .unwrap();
    let other = component_from(
        dir.path(),
        "other",
        r#"(module (memory (export "memory") 1) (func (export "run")))"#,
    );
    let host = host(config());
    match host.compile(&other) {
        Err(ValidateError::WrongWorld(text)) => assert!(text.contains("no export"), "{text}"),
        other => panic!("{other:?}"),
    }
    // a core module, garbage and an empty upload get their own errors
    let core = wat::parse_str("(module)").unwrap();
    assert!(matches!(
        host.compile(&core),
        Err(ValidateError::NotAComponent(_))
    ));
    assert!(matches!(
        host.compile(b"not wasm"),
        Err(ValidateError::NotAComponent(_))
    ));
    assert!(matches!(
        host.compile(b""),
        Err(ValidateError::NotAComponent(_))
    ));
}

#[test]
fn compiled_components_are_cached_by_content() {
    let host = host(config());
    let a = host.compile(&noop_route()).unwrap();
    let b = host.compile(&noop_route()).unwrap();
    assert_eq!(a.hash(), b.hash());
    assert_eq!(host.cached_components(), 1);
}

/// The guest POSTs "hi" to `uri`; an error answer makes the outcome `retry`.
fn http_guest(uri: &str) -> Vec<u8> {
    let imports = r#"(import "iothub:route/http@0.1.0" "send" (func $send (param i32 i32 i32 i32 i32 i32 i32 i32 i32)))"#;
    let data = format!(
        r#"(data (i32.const 0x380) "hi") (data (i32.const 0x390) "e") (data (i32.const 0x400) "POST") (data (i32.const 0x410) "{uri}")"#
    );
    let body = format!(
        r#"(call $send (i32.const 0x400) (i32.const 4) (i32.const 0x410) (i32.const {len})
                  (i32.const 0) (i32.const 0) (i32.const 0x380) (i32.const 2) (i32.const 0x300))
           (if (i32.load8_u (i32.const 0x300))
             (then (i32.store8 (local.get $arr) (i32.const 1))
                   (i32.store offset=4 (local.get $arr) (i32.const 0x390))
                   (i32.store offset=8 (local.get $arr) (i32.const 1))))"#,
        len = uri.len()
    );
    route_component(imports, &data, &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outside_the_grant_is_denied_and_never_sent() {
    let granted = TestServer::start().await;
    let other = TestServer::start().await;
    let host = host(config());
    let grants = Grants {
        http: Some(HttpOrigin::from_uri(&granted.url("/")).unwrap()),
        ..Grants::default()
    };
    // inside the grant: the request arrives
    let ok = start(
        &host.compile(&http_guest(&granted.url("/in"))).unwrap(),
        grants.clone(),
        "{}",
    )
    .await;
    let report = ok.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Delivered]);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(granted.hits(), vec!["POST /in hi".to_owned()]);

    // same host, other port: denied by the host, nothing reaches the other server
    let nosy = start(
        &host.compile(&http_guest(&other.url("/steal"))).unwrap(),
        grants,
        "{}",
    )
    .await;
    let report = nosy.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Retry("e".into())]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].kind, FailureKind::Denied);
    assert!(report.failures[0].message.contains(&other.port.to_string()));
    assert!(other.hits().is_empty());

    // no grant at all: denied too
    let none = start(
        &host.compile(&http_guest(&granted.url("/x"))).unwrap(),
        Grants::default(),
        "{}",
    )
    .await;
    let report = none.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(report.failures[0].kind, FailureKind::Denied);
    assert_eq!(granted.hits().len(), 1);
}

/// A one-shot https server on 127.0.0.1 with a self-signed certificate for `localhost`:
/// answers every request `200 ok`; returns its port and certificate (DER).
async fn https_server() -> (u16, Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der.clone().into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, der, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_are_verified_against_the_trusted_roots() {
    let (port, der, served) = https_server().await;
    let uri = format!("https://localhost:{port}/in");
    let grants = Grants {
        http: Some(HttpOrigin::from_uri(&uri).unwrap()),
        ..Grants::default()
    };
    // the server's certificate trusted: the request arrives over TLS
    let trusting = host(HostConfig {
        extra_roots_der: vec![der],
        ..config()
    });
    let route = start(
        &trusting.compile(&http_guest(&uri)).unwrap(),
        grants.clone(),
        "{}",
    )
    .await;
    let report = route.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Delivered], "{report:?}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    // not trusted (Mozilla's roots only): the handshake fails, nothing is sent
    let strict = host(config());
    let route = start(&strict.compile(&http_guest(&uri)).unwrap(), grants, "{}").await;
    let report = route.handle(vec![message("a", "1")]).await.unwrap();
    assert_eq!(report.outcomes, vec![Outcome::Retry("e".into())]);
    assert_eq!(report.failures[0].kind, FailureKind::HttpConnect);
    assert!(
        report.failures[0].message.contains("certificate"),
        "{:?}",
        report.failures
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}
