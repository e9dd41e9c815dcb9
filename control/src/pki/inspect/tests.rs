//! The checks against certificates made by the `openssl` tool (independent of the code
//! under test) as well as by rcgen.

use std::process::Command;

use iothub_model::{DeviceId, HubId};

use super::*;
use crate::pki::{generate_hub_ca, issue_device_certificate};
use crate::testing::openssl::{
    CA_EXTENSIONS, CLIENT_EXTENSIONS, CertRequest, KeyType, Openssl, OpensslCert,
};

const PAST_START: &str = "20000101000000Z";
const PAST_END: &str = "20010101000000Z";
const FUTURE_START: &str = "20990101000000Z";
const FUTURE_END: &str = "21000101000000Z";

fn workspace() -> (tempfile::TempDir, Openssl) {
    let dir = tempfile::tempdir().unwrap();
    let openssl = Openssl::new(dir.path()).unwrap();
    (dir, openssl)
}

/// openssl's own SHA-256 fingerprint of a certificate file, as lowercase hex.
fn openssl_fingerprint(cert: &OpensslCert) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert.cert_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().rsplit('=').next().unwrap();
    hex.replace(':', "").to_ascii_lowercase()
}

fn kind(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::NoCertificate => "no certificate",
        CertificateError::PrivateKey => "private key",
        CertificateError::UnexpectedBlock(_) => "unexpected block",
        CertificateError::Several(_) => "several",
        CertificateError::BadPem(_) => "bad pem",
        CertificateError::Unparsable(_) => "unparsable",
        CertificateError::Expired(_) => "expired",
        CertificateError::NotYetValid(_) => "not yet valid",
        CertificateError::IsCa => "is ca",
        CertificateError::NotCa => "not ca",
        CertificateError::NoClientAuth => "no client auth",
        CertificateError::NoDigitalSignature => "no digital signature",
        CertificateError::NoKeyCertSign => "no key cert sign",
        CertificateError::WrongCommonName { .. } => "wrong common name",
        CertificateError::WrongSigner(_) => "wrong signer",
        CertificateError::BadExtension(_) => "bad extension",
    }
}

#[test]
fn device_certificates_made_by_openssl_are_judged() {
    let (dir, o) = workspace();
    let ca = o.ca("user ca").unwrap();
    let make = |req: CertRequest<'_>| o.issue(&req).unwrap().cert_pem;
    let client = |extensions, key_type| {
        make(CertRequest {
            common_name: "sensor",
            issuer: Some(&ca),
            extensions,
            key_type,
            ..CertRequest::default()
        })
    };
    let dated = |start, end| {
        make(CertRequest {
            common_name: "sensor",
            issuer: Some(&ca),
            extensions: CLIENT_EXTENSIONS,
            not_before: Some(start),
            not_after: Some(end),
            ..CertRequest::default()
        })
    };
    let signed = client(CLIENT_EXTENSIONS, KeyType::EcP256);
    let self_signed = o.client("sensor", None).unwrap();
    let cases: Vec<(&str, String, Result<(), &str>)> = vec![
        ("signed by the user's CA", signed.clone(), Ok(())),
        ("self-signed", self_signed.cert_pem.clone(), Ok(())),
        ("RSA", client(CLIENT_EXTENSIONS, KeyType::Rsa2048), Ok(())),
        (
            "Ed25519",
            client(CLIENT_EXTENSIONS, KeyType::Ed25519),
            Ok(()),
        ),
        ("P-384", client(CLIENT_EXTENSIONS, KeyType::EcP384), Ok(())),
        ("no extensions", client(&[], KeyType::EcP256), Ok(())),
        (
            "any extended key usage",
            client(&["extendedKeyUsage=anyExtendedKeyUsage"], KeyType::EcP256),
            Ok(()),
        ),
        (
            "client and server",
            client(&["extendedKeyUsage=serverAuth,clientAuth"], KeyType::EcP256),
            Ok(()),
        ),
        ("CRLF line ends", signed.replace('\n', "\r\n"), Ok(())),
        (
            "text around the block",
            format!("subject=CN = sensor\n{signed}\ntrailing words\n"),
            Ok(()),
        ),
        ("expired", dated(PAST_START, PAST_END), Err("expired")),
        (
            "not yet valid",
            dated(FUTURE_START, FUTURE_END),
            Err("not yet valid"),
        ),
        ("a CA", ca.cert_pem.clone(), Err("is ca")),
        (
            "server only",
            client(&["extendedKeyUsage=serverAuth"], KeyType::EcP256),
            Err("no client auth"),
        ),
        (
            "email only",
            client(
                &[
                    "keyUsage=digitalSignature",
                    "extendedKeyUsage=emailProtection",
                ],
                KeyType::EcP256,
            ),
            Err("no client auth"),
        ),
        (
            "key encipherment only",
            client(&["keyUsage=keyEncipherment"], KeyType::Rsa2048),
            Err("no digital signature"),
        ),
        ("garbage", "hello".into(), Err("no certificate")),
        ("empty", String::new(), Err("no certificate")),
        (
            "a private key",
            self_signed.key_pem.clone(),
            Err("private key"),
        ),
        (
            "certificate then key",
            format!("{}{}", self_signed.cert_pem, self_signed.key_pem),
            Err("private key"),
        ),
        (
            "two certificates",
            format!("{signed}{}", ca.cert_pem),
            Err("several"),
        ),
        (
            "a request",
            // The request openssl made for the first certificate of the workspace.
            std::fs::read_to_string(dir.path().join("c0.csr")).unwrap(),
            Err("unexpected block"),
        ),
        (
            "truncated",
            signed[..signed.len() / 2].to_owned(),
            Err("bad pem"),
        ),
        (
            "not base64",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
            Err("bad pem"),
        ),
        (
            "base64 of garbage",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n".into(),
            Err("unparsable"),
        ),
    ];
    let now = Timestamp::now();
    for (name, pem, want) in cases {
        let got = check_device_certificate(&pem, now);
        match (&got, want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(k)) => assert_eq!(kind(e), k, "{name}: {e}"),
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn an_accepted_certificate_is_stored_as_openssl_writes_it_with_openssls_fingerprint() {
    let (_dir, o) = workspace();
    let ca = o.ca("user ca").unwrap();
    for key_type in [KeyType::EcP256, KeyType::Rsa2048, KeyType::Ed25519] {
        let cert = o
            .issue(&CertRequest {
                common_name: "sensor",
                issuer: Some(&ca),
                extensions: CLIENT_EXTENSIONS,
                key_type,
                ..CertRequest::default()
            })
            .unwrap();
        let checked = check_device_certificate(
            &format!("noise before\n{}", cert.cert_pem),
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(checked.cert_pem, cert.cert_pem, "{key_type:?}");
        assert_eq!(
            checked.info.fingerprint_sha256,
            openssl_fingerprint(&cert),
            "{key_type:?}"
        );
        assert_eq!(checked.info.common_name.as_deref(), Some("sensor"));
        assert!(!checked.info.is_ca);
    }
}

#[test]
fn rcgen_device_certificates_pass_and_hub_cas_do_not() {
    let now = Timestamp::now();
    let ca = generate_hub_ca(HubId::new_random(), now).unwrap();
    let issued =
        issue_device_certificate(&ca.cert_pem, &ca.key_pem, DeviceId::new_random(), now).unwrap();
    let checked = check_device_certificate(&issued.credentials.crt, now).unwrap();
    assert_eq!(checked.cert_pem, issued.credentials.crt);
    assert_eq!(checked.info.fingerprint_sha256, issued.fingerprint_sha256);
    assert_eq!(
        check_device_certificate(&ca.cert_pem, now).unwrap_err(),
        CertificateError::IsCa
    );
}

#[test]
fn custom_cas_and_their_proofs_of_possession_are_judged() {
    let (_dir, o) = workspace();
    let hub = HubId::new_random();
    let other_hub = HubId::new_random();
    let hub_cn = hub.to_string();
    let ca = o.ca("factory ca").unwrap();
    let challenge = o.plain(&hub_cn, Some(&ca)).unwrap();
    // Another key under the very same name: only the signature tells them apart.
    let impostor = o.ca("factory ca").unwrap();
    let make = |req: CertRequest<'_>| o.issue(&req).unwrap();
    let ca_of = |key_type| {
        make(CertRequest {
            common_name: "factory ca",
            extensions: CA_EXTENSIONS,
            key_type,
            ..CertRequest::default()
        })
    };
    let rsa_ca = ca_of(KeyType::Rsa2048);
    let ed_ca = ca_of(KeyType::Ed25519);
    let p384_ca = ca_of(KeyType::EcP384);
    let expired_ca = make(CertRequest {
        common_name: "old ca",
        extensions: CA_EXTENSIONS,
        not_before: Some(PAST_START),
        not_after: Some(PAST_END),
        ..CertRequest::default()
    });
    let no_sign_ca = make(CertRequest {
        common_name: "odd ca",
        extensions: &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=digitalSignature",
        ],
        ..CertRequest::default()
    });
    let leaf_as_ca = o.client("not a ca", None).unwrap();
    let challenge_by = |issuer: &OpensslCert| o.plain(&hub_cn, Some(issuer)).unwrap().cert_pem;
    let dated_challenge = |start, end| {
        make(CertRequest {
            common_name: &hub_cn,
            issuer: Some(&ca),
            not_before: Some(start),
            not_after: Some(end),
            ..CertRequest::default()
        })
        .cert_pem
    };

    type Case = (
        &'static str,
        String,
        String,
        Result<(), (&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "valid",
            ca.cert_pem.clone(),
            challenge.cert_pem.clone(),
            Ok(()),
        ),
        (
            "upper-case hub id",
            ca.cert_pem.clone(),
            o.plain(&hub_cn.to_uppercase(), Some(&ca)).unwrap().cert_pem,
            Ok(()),
        ),
        (
            "RSA CA",
            rsa_ca.cert_pem.clone(),
            challenge_by(&rsa_ca),
            Ok(()),
        ),
        (
            "Ed25519 CA",
            ed_ca.cert_pem.clone(),
            challenge_by(&ed_ca),
            Ok(()),
        ),
        (
            "P-384 CA",
            p384_ca.cert_pem.clone(),
            challenge_by(&p384_ca),
            Ok(()),
        ),
        (
            "challenge for another hub",
            ca.cert_pem.clone(),
            o.plain(&other_hub.to_string(), Some(&ca)).unwrap().cert_pem,
            Err(("challenge_cert_pem", "wrong common name")),
        ),
        (
            "challenge named like the CA",
            ca.cert_pem.clone(),
            o.plain("factory ca", Some(&ca)).unwrap().cert_pem,
            Err(("challenge_cert_pem", "wrong common name")),
        ),
        (
            "challenge self-signed",
            ca.cert_pem.clone(),
            o.plain(&hub_cn, None).unwrap().cert_pem,
            Err(("challenge_cert_pem", "wrong signer")),
        ),
        (
            "challenge signed by an impostor of the same name",
            ca.cert_pem.clone(),
            challenge_by(&impostor),
            Err(("challenge_cert_pem", "wrong signer")),
        ),
        (
            "challenge signed by another algorithm's CA",
            ca.cert_pem.clone(),
            challenge_by(&rsa_ca),
            Err(("challenge_cert_pem", "wrong signer")),
        ),
        (
            "challenge expired",
            ca.cert_pem.clone(),
            dated_challenge(PAST_START, PAST_END),
            Err(("challenge_cert_pem", "expired")),
        ),
        (
            "challenge not yet valid",
            ca.cert_pem.clone(),
            dated_challenge(FUTURE_START, FUTURE_END),
            Err(("challenge_cert_pem", "not yet valid")),
        ),
        (
            "challenge garbage",
            ca.cert_pem.clone(),
            "garbage".into(),
            Err(("challenge_cert_pem", "no certificate")),
        ),
        (
            "challenge is a key",
            ca.cert_pem.clone(),
            challenge.key_pem.clone(),
            Err(("challenge_cert_pem", "private key")),
        ),
        (
            "CA is a leaf",
            leaf_as_ca.cert_pem.clone(),
            challenge_by(&leaf_as_ca),
            Err(("ca_cert_pem", "not ca")),
        ),
        (
            "CA expired",
            expired_ca.cert_pem.clone(),
            challenge_by(&expired_ca),
            Err(("ca_cert_pem", "expired")),
        ),
        (
            "CA may not sign certificates",
            no_sign_ca.cert_pem.clone(),
            challenge_by(&no_sign_ca),
            Err(("ca_cert_pem", "no key cert sign")),
        ),
        (
            "CA garbage",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".into(),
            challenge.cert_pem.clone(),
            Err(("ca_cert_pem", "unparsable")),
        ),
        (
            "CA with its key",
            format!("{}{}", ca.cert_pem, ca.key_pem),
            challenge.cert_pem.clone(),
            Err(("ca_cert_pem", "private key")),
        ),
    ];
    let now = Timestamp::now();
    for (name, ca_pem, challenge_pem, want) in cases {
        let got = check_custom_ca(&ca_pem, &challenge_pem, hub, now);
        match (&got, want) {
            (Ok(checked), Ok(())) => {
                assert_eq!(checked.cert_pem, ca_pem, "{name}: stored as sent");
                assert!(checked.info.is_ca);
            }
            (Err(e), Err((field, k))) => {
                assert_eq!((e.field, kind(&e.error)), (field, k), "{name}: {e}");
            }
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn refusals_read_as_precise_sentences() {
    let hub = HubId::new_random();
    let cases: Vec<(CertificateError, String)> = vec![
        (
            CertificateError::WrongCommonName {
                expected: hub.to_string(),
                found: Some("x".into()),
            },
            format!("has the common name \"x\"; it must be {hub}"),
        ),
        (
            CertificateError::WrongCommonName {
                expected: hub.to_string(),
                found: None,
            },
            format!("has no common name (CN); it must be {hub}"),
        ),
        (
            CertificateError::Expired(Timestamp::from_micros(978_307_200_000_000)),
            "expired on 2001-01-01T00:00:00.000000Z".into(),
        ),
        (
            CertificateError::NotYetValid(Timestamp::from_micros(4_070_908_800_000_000)),
            "is not valid yet: its validity starts on 2099-01-01T00:00:00.000000Z".into(),
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
    let e = CustomCaError {
        field: "challenge_cert_pem",
        error: CertificateError::WrongSigner("its signature does not verify".into()),
    };
    assert_eq!(
        e.to_string(),
        "challenge_cert_pem is not signed by the CA of ca_cert_pem: its signature does not verify"
    );
}

#[test]
fn der_to_pem_matches_the_standard_encoding() {
    // RFC 4648 test vectors, wrapped in a PEM block.
    let cases: &[(&[u8], &str)] = &[
        (b"", ""),
        (b"f", "Zg==\n"),
        (b"fo", "Zm8=\n"),
        (b"foo", "Zm9v\n"),
        (b"foob", "Zm9vYg==\n"),
        (b"fooba", "Zm9vYmE=\n"),
        (b"foobar", "Zm9vYmFy\n"),
    ];
    for (der, body) in cases {
        assert_eq!(
            der_to_pem(der),
            format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
        );
    }
    let long = der_to_pem(&[0xffu8; 61]);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines[1].len(), 64);
    assert_eq!(lines[2], "/////////////////w==");
}
