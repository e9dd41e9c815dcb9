//! Hub events of client certificates (issue 5) through the real binary: refused
//! certificates, devices that cannot be identified, auto-provisioning. Certificates are made
//! with the openssl command-line tool and presented by Debian's `mosquitto_pub` on the TLS
//! listener; the events are received over plain MQTT by a device of the same hub subscribed to
//! `$SCW/events/#`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use iothub_e2e::api::{Api, DATA_DIR, id_of};
use iothub_e2e::frames::Connect;
use iothub_e2e::raw::{QUIET, RawClient, WAIT};
use iothub_e2e::tools::{http_get, metric_sum};
use iothub_e2e::{Hub, unique};
use serde_json::{Value, json};

// ---- certificates made by openssl ---------------------------------------------------------------

/// A certificate and its key, as files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

impl Pem {
    fn cert_pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
                      subjectKeyIdentifier=hash";
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid";
/// Valid from 2020 to 2080: "now" for any test run.
const FROM: &str = "20200101000000Z";
const UNTIL: &str = "20800101000000Z";

/// `openssl ca` in a directory of its own (it takes any start and end date).
struct Openssl {
    dir: PathBuf,
    serial: std::cell::Cell<u32>,
}

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
                 copy_extensions = none\n[policy]\ncommonName = optional\norganizationName = optional\n",
                d = dir.display()
            ),
        )
        .unwrap();
        Openssl {
            dir,
            serial: std::cell::Cell::new(0x2000),
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

    /// A certificate for `subject` (openssl's `/CN=...` form) with `extensions`, valid from
    /// `from` to `until`, signed by `issuer` (or self-signed).
    fn make(
        &self,
        name: &str,
        subject: &str,
        issuer: Option<&Pem>,
        extensions: &str,
        (from, until): (&str, &str),
    ) -> Pem {
        let path = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        let (key, csr, cert, ext) = (
            s(path("key")),
            s(path("csr")),
            s(path("crt")),
            s(path("ext")),
        );
        self.run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        self.run(&["req", "-new", "-key", &key, "-subj", subject, "-out", &csr]);
        std::fs::write(&ext, format!("[ext]\n{extensions}\n")).unwrap();
        let serial = self.serial.get() + 1;
        self.serial.set(serial);
        std::fs::write(self.dir.join("serial"), format!("{serial:X}\n")).unwrap();
        let config = s(self.dir.join("ca.cnf"));
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", &config, "-in", &csr, "-out", &cert,
        ];
        args.extend([
            "-extfile",
            &ext,
            "-extensions",
            "ext",
            "-startdate",
            from,
            "-enddate",
            until,
        ]);
        let (issuer_cert, issuer_key);
        match issuer {
            Some(i) => {
                issuer_cert = s(i.cert.clone());
                issuer_key = s(i.key.clone());
                args.extend(["-cert", &issuer_cert, "-keyfile", &issuer_key]);
            }
            None => args.extend(["-selfsign", "-keyfile", &key]),
        }
        self.run(&args);
        Pem {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        }
    }

    fn ca(&self, name: &str) -> Pem {
        self.make(name, &format!("/CN={name} CA"), None, CA_EXT, (FROM, UNTIL))
    }

    fn client(&self, name: &str, subject: &str, issuer: &Pem, validity: (&str, &str)) -> Pem {
        self.make(name, subject, Some(issuer), CLIENT_EXT, validity)
    }
}

// ---- the hub -------------------------------------------------------------------------------------

struct Fx {
    hub: Hub,
    api: Api,
    tls: SocketAddr,
    dir: tempfile::TempDir,
    server_ca: PathBuf,
}

impl Fx {
    fn start() -> Option<Fx> {
        let yaml = format!(
            "data_dir: {DATA_DIR}\nlisteners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n\
             \x20 tls:\n    - name: tls\n      bind: 127.0.0.1:0\napi:\n  bind: 127.0.0.1:0\nhubs: []\n"
        );
        let hub = Hub::start_with(&yaml)?;
        let api = Api::admin(&hub);
        let tls = hub.listener("tls");
        let dir = tempfile::tempdir().unwrap();
        let server_ca = dir.path().join("server-ca.pem");
        let (status, body) = http_get(api.addr, "/iot/v1/regions/fr-par/server-ca");
        assert_eq!(status, 200, "server-ca: {body}");
        std::fs::write(&server_ca, body).unwrap();
        Some(Fx {
            hub,
            api,
            tls,
            dir,
            server_ca,
        })
    }

    fn hub(&self) -> String {
        id_of(&self.api.create_hub(&json!({ "name": unique("h") })))
    }

    /// Creates a device; returns its id and the certificate the API issued (if any).
    fn device(&self, hub: &str, extra: Value) -> (String, Option<Pem>) {
        let mut body = json!({ "hub_id": hub, "name": unique("d") });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let created = self.api.post("devices", &body).expect(200);
        let id = id_of(&created["device"]);
        let pem = created.get("certificate").map(|c| {
            let cert = self.dir.path().join(format!("{id}.crt"));
            let key = self.dir.path().join(format!("{id}.key"));
            std::fs::write(&cert, c["crt"].as_str().unwrap()).unwrap();
            std::fs::write(&key, c["key"].as_str().unwrap()).unwrap();
            Pem { cert, key }
        });
        (id, pem)
    }

    /// A device of `hub` over plain MQTT, subscribed to `$SCW/events/#`.
    fn observer(&self, hub: &str) -> RawClient {
        let (id, _) = self.device(hub, json!({ "allow_insecure": true }));
        let (mut c, _) = RawClient::connected(self.hub.mqtt_addr(), &Connect::v5(&id, true));
        assert_eq!(c.subscribe(1, &[("$SCW/events/#", 1)]), vec![1]);
        c
    }

    /// Gives `hub` its own CA `root` (proof of possession: CN = hub id, signed by it), which
    /// needs the hub disabled; enables it again.
    fn custom_ca(&self, o: &Openssl, hub: &str, root: &Pem) {
        self.api
            .post(&format!("hubs/{hub}/disable"), &json!({}))
            .expect(200);
        let proof = o.client(
            &format!("proof-{hub}"),
            &format!("/CN={hub}"),
            root,
            (FROM, UNTIL),
        );
        self.api
            .post(
                &format!("hubs/{hub}/ca"),
                &json!({ "ca_cert_pem": root.cert_pem(), "challenge_cert_pem": proof.cert_pem() }),
            )
            .expect(200);
        self.api
            .post(&format!("hubs/{hub}/enable"), &json!({}))
            .expect(200);
    }

    /// `mosquitto_pub` over TLS to `localhost` (the server certificate's name) with `pem`.
    fn publish_with(&self, pem: &Pem, client_id: &str) -> Output {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &self.tls.port().to_string()])
            .args(["--cafile", &path(&self.server_ca)])
            .args(["--cert", &path(&pem.cert), "--key", &path(&pem.key)])
            .args(["-i", client_id, "-t", "t", "-m", "x", "-q", "1"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_pub: {e}"))
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&http_get(self.api.addr, "/metrics").1, name, labels).unwrap_or(0.0)
    }
}

/// The next event on `topic` whose `msg` starts with `msg` (others are skipped), as JSON,
/// after checking that severity, object type and id match the topic.
fn expect_event(c: &mut RawClient, topic: &str, msg: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = c.next_publish(left).unwrap_or_else(|e| {
            panic!("no event on {topic} with msg {msg:?} ({e:?}); seen: {seen:#?}")
        });
        let event: Value = serde_json::from_slice(&r.payload).unwrap();
        let levels: Vec<&str> = r.topic.rsplitn(4, '/').collect();
        assert_eq!(
            (
                event["object-id"].as_str(),
                event["object-type"].as_str(),
                event["severity"].as_str()
            ),
            (Some(levels[0]), Some(levels[1]), Some(levels[2])),
            "{}: {event}",
            r.topic
        );
        if r.topic == topic && event["msg"].as_str().unwrap().starts_with(msg) {
            return event;
        }
        seen.push((r.topic, event));
    }
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

// ---- tests ---------------------------------------------------------------------------------------

/// For a hub with its own CA: a certificate it issued that has expired is refused at the
/// handshake with "invalid device certificate" on that hub (found by the issuer, no source
/// address); one a stranger's CA issued reaches no hub and is only counted; a certificate
/// without CN ("empty certificate common name") and one naming no device while
/// auto-provisioning is off ("could not identify device") are provisioning errors with the
/// CN as `object-name` and the client's address; with auto-provisioning on, a new CN becomes
/// a device and raises the info event "device was auto-provisioned" about it.
#[test]
fn certificate_and_provisioning_events() {
    let Some(fx) = Fx::start() else { return };
    let o = Openssl::new(fx.dir.path());
    let root = o.ca("factory");
    let hub = fx.hub();
    fx.custom_ca(&o, &hub, &root);
    let other = fx.hub();
    let mut observer = fx.observer(&hub);
    let mut other_observer = fx.observer(&other);
    let hub_errors = format!("$SCW/events/error/hub/{hub}");

    let expired = o.client("expired", "/CN=pump", &root, (FROM, "20210101000000Z"));
    assert!(!ok(&fx.publish_with(&expired, "pump")), "expired accepted");
    let event = expect_event(
        &mut observer,
        &hub_errors,
        "invalid device certificate: the client certificate has expired",
    );
    assert!(
        event["packet"].as_str().unwrap().contains("CN=pump"),
        "{event}"
    );

    let before = fx.metric(
        "iothub_events_unattributed_total",
        &[("kind", "invalid_certificate")],
    );
    let stranger = o.client(
        "stranger-leaf",
        "/CN=pump",
        &o.ca("stranger"),
        (FROM, UNTIL),
    );
    assert!(
        !ok(&fx.publish_with(&stranger, "pump")),
        "stranger accepted"
    );
    let after = fx.metric(
        "iothub_events_unattributed_total",
        &[("kind", "invalid_certificate")],
    );
    assert_eq!(after, before + 1.0, "the stranger's certificate is counted");

    let no_cn = o.client("nocn", "/O=factory floor", &root, (FROM, UNTIL));
    assert!(
        !ok(&fx.publish_with(&no_cn, "x")),
        "a certificate without CN accepted"
    );
    let event = expect_event(&mut observer, &hub_errors, "empty certificate common name");
    assert!(
        event["source-address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{event}"
    );

    let unknown = o.client("unknown", "/CN=valve-9", &root, (FROM, UNTIL));
    assert!(
        !ok(&fx.publish_with(&unknown, "valve-9")),
        "an unknown CN accepted"
    );
    let event = expect_event(&mut observer, &hub_errors, "could not identify device");
    assert_eq!(event["object-name"], "valve-9", "{event}");
    assert!(
        event["source-address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{event}"
    );

    fx.api
        .patch(
            &format!("hubs/{hub}"),
            &json!({ "enable_device_auto_provisioning": true }),
        )
        .expect(200);
    let out = fx.publish_with(&unknown, "valve-9");
    assert!(ok(&out), "auto-provisioned: {out:?}");
    let listed = fx.api.get(&format!("devices?hub_id={hub}")).expect(200);
    let made = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "valve-9")
        .unwrap_or_else(|| panic!("no device valve-9: {listed}"))
        .clone();
    let made_id = id_of(&made);
    let event = expect_event(
        &mut observer,
        &format!("$SCW/events/info/device/{made_id}"),
        "device was auto-provisioned",
    );
    assert_eq!(event["object-name"], "valve-9", "{event}");
    assert!(
        event["source-address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{event}"
    );

    assert!(
        other_observer.publishes_for(QUIET).is_empty(),
        "another hub saw these events"
    );
}

/// A managed-CA certificate replaced by a renewal is refused at CONNECT with "invalid device
/// certificate" about the device, and a device that requires mutual TLS connecting without
/// its certificate over TLS raises "mutual TLS authentication is required".
#[test]
fn refused_device_certificates_raise_events_about_the_device() {
    let Some(fx) = Fx::start() else { return };
    let hub = fx.hub();
    let mut observer = fx.observer(&hub);
    let (device, pem) = fx.device(&hub, json!({}));
    let old = pem.unwrap();
    assert!(
        ok(&fx.publish_with(&old, &device)),
        "the issued certificate connects"
    );
    fx.api
        .post(&format!("devices/{device}/renew-certificate"), &json!({}))
        .expect(200);
    let out = fx.publish_with(&old, &device);
    assert!(!ok(&out), "the replaced certificate still connects");
    let event = expect_event(
        &mut observer,
        &format!("$SCW/events/error/device/{device}"),
        "invalid device certificate: it is not the device's current certificate",
    );
    assert!(
        event["packet"].as_str().unwrap().starts_with("CONNECT"),
        "{event}"
    );
    assert!(
        event["source-address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{event}"
    );

    // Server-only TLS (no client certificate) for a device that requires mutual TLS.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &fx.tls.port().to_string()])
        .args(["--cafile", fx.server_ca.to_str().unwrap()])
        .args(["-i", &device, "-t", "t", "-m", "x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!ok(&out), "no certificate, accepted");
    expect_event(
        &mut observer,
        &format!("$SCW/events/error/device/{device}"),
        "mutual TLS authentication is required",
    );
}
