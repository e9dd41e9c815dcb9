//! MQTT over TLS (issue 4): device identity by client certificate on the `tls` listener,
//! through the real binary. Certificates come from the API (the hub's managed CA) and from
//! the openssl command-line tool (custom CAs, intermediates, odd validity and key usages),
//! never from iothub's code; clients are Debian's mosquitto_pub/mosquitto_sub with
//! `--cafile/--cert/--key` (verifying the server: no `--insecure`) and rumqttc over rustls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_e2e::Hub;
use iothub_e2e::api::{Api, DATA_DIR, id_of};
use iothub_e2e::clients::{V4, V5, v4_options};
use iothub_e2e::raw::WAIT;
use iothub_e2e::tools::{MosquittoSub, http_get, mosquitto_pub};
use serde_json::{Value, json};

// ---- certificates made by openssl -------------------------------------------------------------

/// Certificates made with the `openssl` tool in a directory of their own. `openssl ca` is
/// the 3.0 subcommand that takes arbitrary start and end dates, so every certificate goes
/// through it (a self-signed one with `-selfsign`).
struct Openssl {
    dir: PathBuf,
    serial: std::cell::Cell<u32>,
}

/// A certificate and its key, as files (for mosquitto) and PEM text (for the API).
#[derive(Clone)]
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

impl Pem {
    fn cert_pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }
}

/// What to make: a subject CN, extensions (openssl config lines), dates and the signer.
struct Spec<'a> {
    cn: &'a str,
    issuer: Option<&'a Pem>,
    extensions: &'a [&'a str],
    not_before: &'a str,
    not_after: &'a str,
}

const CA_EXT: &[&str] = &[
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier=hash",
];
const CLIENT_EXT: &[&str] = &[
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=clientAuth",
    "authorityKeyIdentifier=keyid",
];
const SERVER_EXT: &[&str] = &[
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=serverAuth",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
];
/// Valid from 2020 to 2080: "now" for any test run.
const FROM: &str = "20200101000000Z";
const UNTIL: &str = "20800101000000Z";

impl Openssl {
    fn new(dir: &Path) -> Openssl {
        let dir = dir.join("openssl");
        std::fs::create_dir_all(dir.join("issued")).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = any\n[any]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/issued\n\
                 serial = {d}/serial\ndefault_md = sha256\npolicy = policy\nunique_subject = no\n\
                 copy_extensions = none\n[policy]\ncommonName = supplied\n",
                d = dir.display()
            ),
        )
        .unwrap();
        Openssl {
            dir,
            serial: std::cell::Cell::new(0x1000),
        }
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn make(&self, name: &str, spec: &Spec<'_>) -> Pem {
        let path = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        let (key, csr, cert, ext) = (path("key"), path("csr"), path("crt"), path("ext"));
        let s = |p: &Path| p.to_str().unwrap().to_string();
        self.run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &s(&key),
        ]);
        self.run(&[
            "req",
            "-new",
            "-key",
            &s(&key),
            "-subj",
            &format!("/CN={}", spec.cn),
            "-out",
            &s(&csr),
        ]);
        std::fs::write(&ext, format!("[ext]\n{}\n", spec.extensions.join("\n"))).unwrap();
        let serial = self.serial.get() + 1;
        self.serial.set(serial);
        std::fs::write(self.dir.join("serial"), format!("{serial:X}\n")).unwrap();
        let config = s(&self.dir.join("ca.cnf"));
        let mut args = vec!["ca", "-batch", "-notext", "-config", &config, "-in"];
        let (csr_s, cert_s, ext_s) = (s(&csr), s(&cert), s(&ext));
        args.extend([
            csr_s.as_str(),
            "-out",
            cert_s.as_str(),
            "-extfile",
            ext_s.as_str(),
        ]);
        args.extend(["-extensions", "ext", "-startdate", spec.not_before]);
        args.extend(["-enddate", spec.not_after]);
        let (issuer_cert, issuer_key);
        match spec.issuer {
            Some(issuer) => {
                issuer_cert = s(&issuer.cert);
                issuer_key = s(&issuer.key);
                args.extend([
                    "-cert",
                    issuer_cert.as_str(),
                    "-keyfile",
                    issuer_key.as_str(),
                ]);
            }
            None => {
                issuer_key = s(&key);
                args.extend(["-selfsign", "-keyfile", issuer_key.as_str()]);
            }
        }
        self.run(&args);
        Pem { cert, key }
    }

    fn ca(&self, name: &str, issuer: Option<&Pem>) -> Pem {
        self.make(
            name,
            &Spec {
                cn: &format!("{name} CA"),
                issuer,
                extensions: CA_EXT,
                not_before: FROM,
                not_after: UNTIL,
            },
        )
    }

    /// A device certificate (clientAuth, digitalSignature) valid now.
    fn client(&self, name: &str, cn: &str, issuer: Option<&Pem>) -> Pem {
        self.make(
            name,
            &Spec {
                cn,
                issuer,
                extensions: CLIENT_EXT,
                not_before: FROM,
                not_after: UNTIL,
            },
        )
    }

    /// `pem` followed by `rest`, as one file (a chain a device presents).
    fn chain(&self, name: &str, pem: &Pem, rest: &[&Pem]) -> Pem {
        let mut text = pem.cert_pem();
        for p in rest {
            text.push_str(&p.cert_pem());
        }
        let cert = self.dir.join(format!("{name}.chain.crt"));
        std::fs::write(&cert, text).unwrap();
        Pem {
            cert,
            key: pem.key.clone(),
        }
    }
}

// ---- the hub -------------------------------------------------------------------------------

/// A hub with its registry, an MQTT and a TLS listener (no anonymous hub: only devices),
/// and `extra` top-level YAML.
fn tls_config(extra: &str) -> String {
    format!(
        "data_dir: {DATA_DIR}\n{extra}listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n\
         \x20 tls:\n    - name: tls\n      bind: 127.0.0.1:0\napi:\n  bind: 127.0.0.1:0\nhubs: []\n"
    )
}

/// A running hub for TLS tests, the admin API, and a scratch directory for certificates.
struct Fx {
    hub: Hub,
    api: Api,
    tls: SocketAddr,
    mqtt: SocketAddr,
    dir: tempfile::TempDir,
    /// The server CA from `GET /server-ca`, as a file for `--cafile`.
    server_ca: PathBuf,
}

/// A device made through the API, with the certificate the API answered (if any) saved.
struct Device {
    id: String,
    pem: Option<Pem>,
}

impl Fx {
    fn start() -> Option<Fx> {
        Fx::start_with("")
    }

    fn start_with(extra: &str) -> Option<Fx> {
        let hub = Hub::start_with(&tls_config(extra))?;
        let api = Api::admin(&hub);
        let tls = hub.listener("tls");
        let mqtt = hub.mqtt_addr();
        let dir = tempfile::tempdir().unwrap();
        let server_ca = dir.path().join("server-ca.pem");
        let (status, body) = http_get(api.addr, "/iot/v1/regions/fr-par/server-ca");
        assert_eq!(status, 200, "server-ca: {body}");
        std::fs::write(&server_ca, body).unwrap();
        Some(Fx {
            hub,
            api,
            tls,
            mqtt,
            dir,
            server_ca,
        })
    }

    fn openssl(&self) -> Openssl {
        Openssl::new(self.dir.path())
    }

    fn hub(&self, name: &str) -> String {
        id_of(&self.api.create_hub(&json!({ "name": name })))
    }

    /// Creates a device; saves the certificate and key the API answers.
    fn device(&self, hub: &str, name: &str, extra: Value) -> Device {
        let mut body = json!({ "hub_id": hub, "name": name });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let created = self.api.post("devices", &body).expect(200);
        let id = id_of(&created["device"]);
        let pem = created
            .get("certificate")
            .map(|c| self.save(&format!("{name}-{}", &id[..8]), c));
        Device { id, pem }
    }

    /// Saves `{crt, key}` as files.
    fn save(&self, name: &str, certificate: &Value) -> Pem {
        let cert = self.dir.path().join(format!("{name}.crt"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, certificate["crt"].as_str().unwrap()).unwrap();
        std::fs::write(&key, certificate["key"].as_str().unwrap()).unwrap();
        Pem { cert, key }
    }

    /// `mosquitto_pub` over TLS to `localhost` (the name the server certificate carries),
    /// verifying the server with its CA, with `pem` as client certificate.
    fn pub_tls(&self, pem: Option<&Pem>, client_id: &str, topic: &str, message: &str) -> Output {
        let mut args = vec![
            "-h".to_string(),
            "localhost".to_string(),
            "-p".to_string(),
            self.tls.port().to_string(),
            "--cafile".to_string(),
            path(&self.server_ca),
            "-q".to_string(),
            "1".to_string(),
        ];
        if let Some(p) = pem {
            args.extend(["--cert".into(), path(&p.cert), "--key".into(), path(&p.key)]);
        }
        args.extend(["-i".into(), client_id.into(), "-t".into(), topic.into()]);
        args.extend(["-m".into(), message.into()]);
        Command::new("mosquitto_pub")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_pub: {e}"))
    }

    /// `mosquitto_sub` over TLS (as [`Fx::pub_tls`]), once it has its SUBACK.
    fn sub_tls(&self, pem: &Pem, client_id: &str, filter: &str) -> MosquittoSub {
        let (ca, cert, key) = (path(&self.server_ca), path(&pem.cert), path(&pem.key));
        let localhost: SocketAddr = SocketAddr::new([127, 0, 0, 1].into(), self.tls.port());
        // MosquittoSub passes `-h 127.0.0.1`, which the certificate names too (IP SAN).
        MosquittoSub::start(
            localhost,
            &[
                "--cafile", &ca, "--cert", &cert, "--key", &key, "-i", client_id, "-t", filter,
            ],
        )
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(self.api.addr, name, labels)
    }
}

/// A metric's value from `/metrics`, summed over the series whose labels include `labels`.
fn metric(api: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(api, "/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- tests ---------------------------------------------------------------------------------

/// Devices identified by the certificate the API issued them (managed hub CA, CN = device
/// id) publish and subscribe over TLS with mosquitto, verifying the server against the CA
/// `GET /server-ca` serves. A certificate opens only its own device (another device's id as
/// client id is refused); without a certificate only an `allow_insecure` device connects
/// (server-only TLS); a device of another hub cannot be reached with this hub's certificate.
#[test]
fn devices_are_identified_by_their_certificate_over_tls() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub("plant");
    let other_hub = fx.hub("office");
    let sensor = fx.device(&hub, "sensor", json!({}));
    let app = fx.device(&hub, "app", json!({}));
    let loose = fx.device(&hub, "loose", json!({ "allow_insecure": true }));
    let elsewhere = fx.device(&other_hub, "elsewhere", json!({}));
    let (sensor_pem, app_pem) = (sensor.pem.as_ref().unwrap(), app.pem.as_ref().unwrap());

    let mut sub = fx.sub_tls(app_pem, &app.id, "plant/#");
    let out = fx.pub_tls(Some(sensor_pem), &sensor.id, "plant/temperature", "21.5");
    assert!(
        ok(&out),
        "mosquitto_pub with the sensor's certificate: {out:?}"
    );
    assert_eq!(
        sub.next_message(WAIT),
        Some(("plant/temperature".into(), "21.5".into()))
    );
    let out = fx.pub_tls(None, &loose.id, "plant/loose", "server-only TLS");
    assert!(
        ok(&out),
        "allow_insecure device without certificate: {out:?}"
    );
    assert_eq!(
        sub.next_message(WAIT),
        Some(("plant/loose".into(), "server-only TLS".into()))
    );

    // (case, certificate, client id): each refused with CONNACK 5 (not authorized)
    let refused: Vec<(&str, Option<&Pem>, &str)> = vec![
        ("mTLS device without a certificate", None, &sensor.id),
        (
            "the sensor's certificate, the app's id",
            Some(sensor_pem),
            &app.id,
        ),
        (
            "this hub's certificate, a device of another hub",
            Some(sensor_pem),
            &elsewhere.id,
        ),
    ];
    for (case, pem, client_id) in refused {
        let out = fx.pub_tls(pem, client_id, "plant/x", "no");
        assert!(!ok(&out), "{case}: accepted: {out:?}");
        assert!(
            stderr(&out).contains("not authorised") || stderr(&out).contains("refused"),
            "{case}: {}",
            stderr(&out)
        );
    }
    // The other hub's device, with its own certificate, lands in its own hub only.
    let out = fx.pub_tls(
        elsewhere.pem.as_ref(),
        &elsewhere.id,
        "plant/temperature",
        "not here",
    );
    assert!(ok(&out), "{out:?}");
    let out = fx.pub_tls(Some(sensor_pem), &sensor.id, "plant/temperature", "22");
    assert!(ok(&out), "{out:?}");
    assert_eq!(
        sub.next_message(WAIT),
        Some(("plant/temperature".into(), "22".into())),
        "the other hub's message never reaches this hub"
    );
}

/// Every bad client certificate of issue 4, made with openssl for a hub with its own CA
/// (devices present their full chain; CN = device name): expired, not yet valid, wrong CA,
/// self-signed, server authentication only, key encipherment only, a CA certificate,
/// truncated chain, and a certificate of another hub's CA. Each is refused at the TLS
/// handshake or at CONNECT, counted with its reason, no device session appears, and the
/// listener keeps serving the good certificate after each one.
#[test]
fn bad_client_certificates_are_refused_and_the_listener_keeps_serving() {
    let Some(fx) = Fx::start() else { return };
    let o = fx.openssl();
    let root = o.ca("factory", None);
    let inter = o.ca("factory line", Some(&root));
    let hub = fx.hub("factory");
    let pump = fx.device(&hub, "pump", json!({}));
    upload_custom_ca(&fx, &o, &hub, &root);
    let other_root = o.ca("other factory", None);
    let other_hub = fx.hub("other-factory");
    fx.device(&other_hub, "valve", json!({}));
    upload_custom_ca(&fx, &o, &other_hub, &other_root);

    let leaf = |name: &str, extensions: &[&str], from: &str, until: &str, issuer: &Pem| {
        o.make(
            name,
            &Spec {
                cn: "pump",
                issuer: Some(issuer),
                extensions,
                not_before: from,
                not_after: until,
            },
        )
    };
    let good = o.chain(
        "good",
        &leaf("good", CLIENT_EXT, FROM, UNTIL, &inter),
        &[&inter],
    );
    let with_chain = |name: &str, pem: Pem| o.chain(name, &pem, &[&inter]);
    let server_only: Vec<&str> = CLIENT_EXT
        .iter()
        .map(|e| {
            if e.starts_with("extendedKeyUsage") {
                "extendedKeyUsage=serverAuth"
            } else {
                e
            }
        })
        .collect();
    let encipher_only: Vec<&str> = CLIENT_EXT
        .iter()
        .map(|e| {
            if e.starts_with("keyUsage") {
                "keyUsage=critical,keyEncipherment"
            } else {
                e
            }
        })
        .collect();
    // (case, certificate chain and key, handshake failure reason or None = refused at CONNECT)
    let cases: Vec<(&str, Pem, Option<&str>)> = vec![
        (
            "expired",
            with_chain(
                "expired",
                leaf("expired", CLIENT_EXT, FROM, "20210101000000Z", &inter),
            ),
            Some("expired"),
        ),
        (
            "not yet valid",
            with_chain(
                "future",
                leaf("future", CLIENT_EXT, "20700101000000Z", UNTIL, &inter),
            ),
            Some("not_yet_valid"),
        ),
        (
            "wrong CA",
            leaf(
                "stranger",
                CLIENT_EXT,
                FROM,
                UNTIL,
                &o.ca("stranger-ca", None),
            ),
            Some("unknown_issuer"),
        ),
        (
            "self-signed",
            o.client("selfsigned", "pump", None),
            Some("unknown_issuer"),
        ),
        (
            "server authentication only",
            with_chain(
                "serveronly",
                leaf("serveronly", &server_only, FROM, UNTIL, &inter),
            ),
            Some("wrong_key_usage"),
        ),
        (
            "key encipherment only",
            with_chain(
                "encipher",
                leaf("encipher", &encipher_only, FROM, UNTIL, &inter),
            ),
            Some("wrong_key_usage"),
        ),
        (
            "a CA certificate",
            o.chain("cacert", &o.ca("pump", Some(&inter)), &[&inter]),
            Some("ca_certificate"),
        ),
        (
            "truncated chain (no intermediate)",
            leaf("truncated", CLIENT_EXT, FROM, UNTIL, &inter),
            Some("unknown_issuer"),
        ),
        (
            "another hub's CA (no device named pump there)",
            leaf("otherhub", CLIENT_EXT, FROM, UNTIL, &other_root),
            None,
        ),
    ];
    // The client id of a device its hub's own CA names may be its name (the CN).
    assert!(
        ok(&fx.pub_tls(Some(&good), "pump", "t", "good")),
        "the good chain connects"
    );
    for (case, pem, reason) in cases {
        let before = reason.map(|r| fx.handshake_failures(r));
        let out = fx.pub_tls(Some(&pem), "pump", "t", "bad");
        assert!(!ok(&out), "{case}: accepted: {out:?}");
        if let (Some(reason), Some(before)) = (reason, before) {
            let after = fx.handshake_failures(reason);
            assert!(
                after > before,
                "{case}: iothub_tls_handshake_failures_total{{reason={reason}}} {before} -> {after}; {}",
                stderr(&out)
            );
        } else {
            assert!(
                stderr(&out).contains("not authorised"),
                "{case}: {}",
                stderr(&out)
            );
        }
        let good_again = fx.pub_tls(Some(&good), &pump.id, "t", "good");
        assert!(ok(&good_again), "after {case}: {good_again:?}");
    }
    let listed = fx
        .api
        .get(&format!("devices?hub_id={other_hub}"))
        .expect(200);
    assert_eq!(
        listed["total_count"], 1,
        "no device was made in the other hub: {listed}"
    );
    let pump_now = fx.api.get(&format!("devices/{}", pump.id)).expect(200);
    assert_eq!(pump_now["is_connected"], false, "{pump_now}");
    assert!(
        fx.hub
            .logs()
            .contains("TLS handshake refused: client certificate"),
        "refusals are logged with their reason:\n{}",
        fx.hub.logs()
    );
}

impl Fx {
    fn handshake_failures(&self, reason: &str) -> f64 {
        self.metric(
            "iothub_tls_handshake_failures_total",
            &[("listener", "tls"), ("reason", reason)],
        )
    }
}

/// Gives `hub` its own CA `root` (proof of possession: a certificate for CN = hub id signed
/// by it), which needs the hub disabled; enables it again.
fn upload_custom_ca(fx: &Fx, o: &Openssl, hub: &str, root: &Pem) {
    fx.api
        .post(&format!("hubs/{hub}/disable"), &json!({}))
        .expect(200);
    let proof = o.client(&format!("proof-{hub}"), hub, Some(root));
    fx.api
        .post(
            &format!("hubs/{hub}/ca"),
            &json!({ "ca_cert_pem": root.cert_pem(), "challenge_cert_pem": proof.cert_pem() }),
        )
        .expect(200);
    fx.api
        .post(&format!("hubs/{hub}/enable"), &json!({}))
        .expect(200);
}

/// TLS spoken to the plain port and plain MQTT to the TLS port are refused (no CONNACK, no
/// session), and both listeners keep serving.
#[test]
fn tls_and_plain_mqtt_on_each_others_port_are_refused() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub("ports");
    let device = fx.device(&hub, "d", json!({ "allow_insecure": true }));
    let pem = device.pem.as_ref().unwrap();
    let tls_on_plain = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &fx.mqtt.port().to_string()])
        .args([
            "--cafile",
            &path(&fx.server_ca),
            "-i",
            &device.id,
            "-t",
            "t",
            "-m",
            "x",
        ])
        .output()
        .unwrap();
    assert!(
        !ok(&tls_on_plain),
        "TLS to the plain port: {tls_on_plain:?}"
    );
    let plain_on_tls = mosquitto_pub(fx.tls, &["-i", &device.id, "-t", "t", "-m", "x"]);
    assert!(
        !ok(&plain_on_tls),
        "plain MQTT to the TLS port: {plain_on_tls:?}"
    );
    assert!(fx.handshake_failures("not_tls") >= 1.0);
    // both keep serving
    let plain = mosquitto_pub(fx.mqtt, &["-i", &device.id, "-t", "t", "-m", "x"]);
    assert!(ok(&plain), "{plain:?}");
    assert!(ok(&fx.pub_tls(Some(pem), &device.id, "t", "x")));
    let answered = fx.api.get(&format!("devices/{}", device.id)).expect(200);
    assert_eq!(answered["is_connected"], false);
}

/// rumqttc (rustls, ring) over TLS with a client certificate: 3.1.1 and 5 devices exchange
/// QoS 1 messages, and the server is verified against the hub's server CA.
#[test]
fn rumqttc_over_tls_with_client_certificates() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub("rumqttc");
    let a = fx.device(&hub, "a", json!({}));
    let b = fx.device(&hub, "b", json!({}));
    let mut v5 = V5::connect(fx.v5_tls(&a));
    v5.subscribe("to-v5/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    let mut v4 = V4::connect(fx.v4_tls(&b));
    v4.subscribe("to-v4/#", rumqttc::QoS::AtLeastOnce);
    v4.publish("to-v5/x", rumqttc::QoS::AtLeastOnce, false, b"hello 5");
    let got = v5.expect_publish();
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"to-v5/x"[..], &b"hello 5"[..])
    );
    v5.publish(
        "to-v4/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        b"hello 4",
    );
    let got = v4.expect_publish();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("to-v4/x", &b"hello 4"[..])
    );
    // A client that does not trust the server's CA fails the handshake.
    let mut wrong = v4_options(SocketAddr::new([127, 0, 0, 1].into(), fx.tls.port()), &a.id);
    let stranger_ca = fx.openssl().ca("stranger", None);
    wrong.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(client_config(&stranger_ca.cert, a.pem.as_ref())),
    ));
    assert!(V4::try_connect(wrong).is_err());
}

impl Fx {
    fn tls_addr_for_rumqttc(&self) -> (String, u16) {
        ("localhost".to_string(), self.tls.port())
    }

    fn v4_tls(&self, device: &Device) -> rumqttc::MqttOptions {
        let (host, port) = self.tls_addr_for_rumqttc();
        let mut o = rumqttc::MqttOptions::new(&device.id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(client_config(&self.server_ca, device.pem.as_ref())),
        ));
        o
    }

    fn v5_tls(&self, device: &Device) -> rumqttc::v5::MqttOptions {
        let (host, port) = self.tls_addr_for_rumqttc();
        let mut o = rumqttc::v5::MqttOptions::new(&device.id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(client_config(&self.server_ca, device.pem.as_ref())),
        ));
        o
    }
}

/// An MQTT 5 connection over TLS written by hand (rustls), to see exactly what the hub
/// sends when it ends the connection.
struct RawTls {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl RawTls {
    /// Connects to `localhost` with `client` as certificate and CONNECTs as `client_id`;
    /// the CONNACK must be a success.
    fn connect(fx: &Fx, client: Option<&Pem>, client_id: &str) -> RawTls {
        use std::io::{Read, Write};
        let config = client_config(&fx.server_ca, client);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = std::net::TcpStream::connect(fx.tls).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        stream
            .write_all(&iothub_e2e::frames::Connect::v5(client_id, true).encode())
            .unwrap();
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0x20, "CONNACK");
        let mut body = vec![0u8; usize::from(head[1])];
        stream.read_exact(&mut body).unwrap();
        assert_eq!(body[1], 0, "CONNACK reason code");
        RawTls { stream }
    }

    /// Everything the hub sends from now until it closes the connection.
    fn rest(&mut self) -> Vec<u8> {
        use std::io::Read;
        let mut all = Vec::new();
        match self.stream.read_to_end(&mut all) {
            Ok(_) => all,
            Err(e) => panic!("the connection did not end cleanly: {e}; read {all:?}"),
        }
    }
}

/// A rustls client configuration (ring) trusting `ca`, with `client` as certificate.
fn client_config(ca: &Path, client: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some(pem) => {
            let chain = CertificateDer::pem_file_iter(&pem.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&pem.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Renewing a device's certificate, disabling the device or deleting it closes its live TLS
/// connection at once (MQTT 5 DISCONNECT 0x98, administrative action); after a renewal the
/// old certificate is refused and the new one connects.
#[test]
fn renewing_disabling_or_deleting_closes_the_live_tls_connection() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub("lifecycle");
    // (action, device) -> the device's connection is closed
    /// Acts on the device; a renewal answers the new certificate.
    type Action = fn(&Fx, &str) -> Option<Value>;
    let actions: [(&str, Action); 3] = [
        ("renew", |fx, id| {
            Some(
                fx.api
                    .post(&format!("devices/{id}/renew-certificate"), &json!({}))
                    .expect(200),
            )
        }),
        ("disable", |fx, id| {
            fx.api
                .post(&format!("devices/{id}/disable"), &json!({}))
                .expect(200);
            None
        }),
        ("delete", |fx, id| {
            fx.api.delete(&format!("devices/{id}")).expect(204);
            None
        }),
    ];
    for (action, act) in actions {
        let device = fx.device(&hub, action, json!({}));
        let mut live = RawTls::connect(&fx, device.pem.as_ref(), &device.id);
        let renewed = act(&fx, &device.id);
        assert_eq!(
            live.rest(),
            [0xE0, 0x01, 0x98],
            "{action}: DISCONNECT 0x98 (administrative action), then the end"
        );
        let again = V5::try_connect(fx.v5_tls(&device));
        assert!(
            again.is_err(),
            "{action}: the old certificate still connects"
        );
        if let Some(renewed) = renewed {
            let fresh = Device {
                id: device.id.clone(),
                pem: Some(fx.save("renewed", &renewed["certificate"])),
            };
            V5::connect(fx.v5_tls(&fresh)).disconnect();
        }
    }
}

/// A custom device certificate (self-signed, made by openssl) registered with `PUT
/// /devices/{id}/certificate` identifies its device by itself; the certificate the API had
/// issued stops working and its live connection is closed.
#[test]
fn a_registered_custom_certificate_identifies_its_device() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub("pinned");
    let device = fx.device(&hub, "gateway", json!({}));
    let issued = device.pem.clone().unwrap();
    let mut live = RawTls::connect(&fx, Some(&issued), &device.id);
    let own = fx.openssl().client("own", "anything at all", None);
    fx.api
        .send(
            "PUT",
            &format!("devices/{}/certificate", device.id),
            Some(&json!({ "certificate_pem": own.cert_pem() }).to_string()),
            &[],
        )
        .expect(200);
    assert_eq!(
        live.rest(),
        [0xE0, 0x01, 0x98],
        "the replaced certificate's connection"
    );
    let out = fx.pub_tls(Some(&own), &device.id, "g/x", "own certificate");
    assert!(ok(&out), "{out:?}");
    let out = fx.pub_tls(Some(&issued), &device.id, "g/x", "issued");
    assert!(!ok(&out), "the replaced certificate: {out:?}");
}

/// A hub with its own CA (uploaded at run time with proof of possession, no restart) and
/// auto-provisioning: a certificate its intermediate issued for an unknown CN creates the
/// device (name = CN, described as auto-provisioned from the client's address) and
/// connects; the next connection is that device; a known name connects as that device;
/// with auto-provisioning off, an unknown CN is refused and nothing is created.
#[test]
fn custom_ca_and_auto_provisioning_end_to_end() {
    let Some(fx) = Fx::start() else { return };
    let o = fx.openssl();
    let root = o.ca("fleet", None);
    let inter = o.ca("fleet line", Some(&root));
    let hub = fx.hub("fleet");
    let known = fx.device(&hub, "known", json!({}));
    assert!(
        known.pem.is_some(),
        "before the custom CA, devices get certificates"
    );
    upload_custom_ca(&fx, &o, &hub, &root);
    let chained = |cn: &str| o.chain(cn, &o.client(cn, cn, Some(&inter)), &[&inter]);

    // The client id is the device's name (the CN) or its id.
    let out = fx.pub_tls(Some(&chained("known")), "known", "f/x", "known");
    assert!(ok(&out), "a known name: {out:?}");
    let out = fx.pub_tls(Some(&chained("known")), &known.id, "f/x", "known");
    assert!(
        ok(&out),
        "a known name, the device id as client id: {out:?}"
    );
    let out = fx.pub_tls(Some(&chained("known")), "someone-else", "f/x", "known");
    assert!(!ok(&out), "another client id: {out:?}");
    let newcomer = chained("newcomer");
    let out = fx.pub_tls(Some(&newcomer), "newcomer", "f/x", "new");
    assert!(!ok(&out), "auto-provisioning is off: {out:?}");
    let names = |fx: &Fx| -> Vec<String> {
        let listed = fx.api.get(&format!("devices?hub_id={hub}")).expect(200);
        listed["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&fx), ["known"]);

    fx.api
        .patch(
            &format!("hubs/{hub}"),
            &json!({ "enable_device_auto_provisioning": true }),
        )
        .expect(200);
    let out = fx.pub_tls(Some(&newcomer), "newcomer", "f/x", "new");
    assert!(ok(&out), "auto-provisioned: {out:?}");
    let listed = fx.api.get(&format!("devices?hub_id={hub}")).expect(200);
    let made = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "newcomer")
        .unwrap_or_else(|| panic!("no device newcomer: {listed}"))
        .clone();
    assert!(
        made["description"]
            .as_str()
            .unwrap()
            .contains("auto-provisioned from 127.0.0.1"),
        "{made}"
    );
    assert_eq!(made["allow_insecure"], false);
    let made_id = id_of(&made);
    // The next connection is that device (its client id, too).
    let out = fx.pub_tls(Some(&newcomer), &made_id, "f/x", "again");
    assert!(ok(&out), "{out:?}");
    let mut sorted = names(&fx);
    sorted.sort();
    assert_eq!(sorted, ["known", "newcomer"]);
}

/// With `tls.cert_file`/`key_file`, the server certificate is read again every
/// `reload_interval_secs`: replacing the files applies to new connections without a
/// restart, and `server-ca` serves the configured `ca_file`.
#[test]
fn a_new_server_certificate_applies_without_restart() {
    if iothub_e2e::skip_unless_iothub("a_new_server_certificate_applies_without_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = Openssl::new(dir.path());
    let (ca_a, ca_b) = (o.ca("server a", None), o.ca("server b", None));
    let server = |name: &str, ca: &Pem| {
        o.make(
            name,
            &Spec {
                cn: "iothub test",
                issuer: Some(ca),
                extensions: SERVER_EXT,
                not_before: FROM,
                not_after: UNTIL,
            },
        )
    };
    let (a, b) = (server("a", &ca_a), server("b", &ca_b));
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let install = |pem: &Pem, ca: &Pem| {
        // Key first, then certificate, each by rename: a reload never sees half a file.
        for (from, to) in [
            (&pem.key, "server.key"),
            (&pem.cert, "server.crt"),
            (&ca.cert, "ca.crt"),
        ] {
            let tmp = live.join(format!("{to}.tmp"));
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, live.join(to)).unwrap();
        }
    };
    install(&a, &ca_a);
    let extra = format!(
        "tls:\n  cert_file: {l}/server.crt\n  key_file: {l}/server.key\n  ca_file: {l}/ca.crt\n  reload_interval_secs: 1\n",
        l = live.display()
    );
    let Some(fx) = Fx::start_with(&extra) else {
        return;
    };
    assert_eq!(
        std::fs::read_to_string(&fx.server_ca).unwrap(),
        ca_a.cert_pem(),
        "server-ca serves ca_file"
    );
    let hub = fx.hub("reload");
    let device = fx.device(&hub, "d", json!({}));
    let publish_trusting = |ca: &Pem| {
        let mut o = fx.v4_tls(&device);
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(client_config(&ca.cert, device.pem.as_ref())),
        ));
        V4::try_connect(o).map(V4::disconnect)
    };
    assert!(publish_trusting(&ca_a).is_ok());
    assert!(publish_trusting(&ca_b).is_err());
    let held = V4::connect({
        let mut o = fx.v4_tls(&device);
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(client_config(&ca_a.cert, device.pem.as_ref())),
        ));
        o
    });
    install(&b, &ca_b);
    // Bounded wait for the reload (every second), not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(20);
    while publish_trusting(&ca_b).is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 20 s:\n{}",
            fx.hub.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        publish_trusting(&ca_a).is_err(),
        "the old certificate is gone"
    );
    let (_, served) = http_get(fx.api.addr, "/iot/v1/regions/fr-par/server-ca");
    assert_eq!(served, ca_b.cert_pem(), "server-ca follows the reload");
    assert!(fx.hub.logs().contains("server certificate reloaded"));
    held.disconnect();
}

/// README "Connect a device with mTLS", run verbatim with bash in the hub's directory on the
/// embedded default configuration (only the ports moved: the listeners bind port 0, so the
/// recipe's 8080 and 8883 are replaced by the ports the hub reported).
#[test]
fn readme_recipe_connect_a_device_with_mtls() {
    if iothub_e2e::skip_unless_iothub("readme_recipe_connect_a_device_with_mtls") {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let script = recipe(&readme, "## Connect a device with mTLS");
    for needed in [
        "8883",
        "--cafile",
        "--cert",
        "--key",
        "server-ca",
        "127.0.0.1:8080",
    ] {
        assert!(
            script.contains(needed),
            "the recipe uses {needed}:\n{script}"
        );
    }
    assert!(
        !script.contains("--insecure"),
        "the recipe verifies the server"
    );
    let embedded = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/iothub.yaml"),
    )
    .unwrap();
    let config: String = embedded
        .lines()
        .map(|line| match line.split_once("bind: ") {
            Some((indent, addr)) if addr.starts_with("127.0.0.1:") => {
                format!("{indent}bind: 127.0.0.1:0\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let hub = Hub::start_with(&config).unwrap();
    let tls = hub.listener("tls");
    let api = hub.api_addr().unwrap();
    let script = script
        .replace("127.0.0.1:8080", &api.to_string())
        .replace("8883", &tls.port().to_string());
    let workdir = hub.workdir().unwrap().to_path_buf();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        ok(&out),
        "the recipe failed:\n{script}\nstdout:\n{}\nstderr:\n{}\nhub:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out),
        hub.logs()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("received CONNACK (0)") && stdout.contains("received PUBACK"),
        "mosquitto_pub -d shows the device connected and its QoS 1 message acknowledged:\n{stdout}"
    );
    assert_eq!(
        metric(api, "iothub_connections_total", &[("listener", "tls")]),
        1.0,
        "one connection over the TLS listener"
    );
}

/// The first ```sh block after `heading` in the README.
fn recipe(readme: &str, heading: &str) -> String {
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?} section"));
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].to_string()
}
