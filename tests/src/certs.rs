//! Client certificates for the TLS, WebSocket and QUIC tests: a device created through the API
//! with the certificate it answers saved to files, and a self-signed one made by the openssl
//! CLI that no hub CA knows.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api::{Api, id_of};
use crate::unique;

/// A certificate and its private key, as PEM files.
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a device through the API and saves the certificate it answers in `dir`.
pub fn create_device(api: &Api, dir: &Path, hub: &str, allow_insecure: bool) -> (String, Pem) {
    let created = api
        .post(
            "devices",
            &serde_json::json!({ "hub_id": hub, "name": unique("dev"), "allow_insecure": allow_insecure }),
        )
        .expect(200);
    let id = id_of(&created["device"]);
    let pem = Pem {
        cert: dir.join(format!("{id}.crt")),
        key: dir.join(format!("{id}.key")),
    };
    std::fs::write(&pem.cert, created["certificate"]["crt"].as_str().unwrap()).unwrap();
    std::fs::write(&pem.key, created["certificate"]["key"].as_str().unwrap()).unwrap();
    (id, pem)
}

/// A self-signed client certificate made by the openssl CLI (no hub CA knows it).
pub fn self_signed(dir: &Path, cn: &str) -> Pem {
    let pem = Pem {
        cert: dir.join("self-signed.crt"),
        key: dir.join("self-signed.key"),
    };
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "extendedKeyUsage=clientAuth", "-keyout"])
        .arg(&pem.key)
        .arg("-out")
        .arg(&pem.cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pem
}
