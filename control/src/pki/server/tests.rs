//! The server PKI: made once, kept, renewed when names change or expiry nears, and
//! verified by the `openssl` tool (independently of the code that made it).

use std::process::Command;

use super::*;

const DAY_MICROS: i64 = 86_400 * 1_000_000;

fn names(pki: &ServerPki) -> BTreeSet<Name> {
    let der = single_certificate_der(leaf_pem(pki)).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    names_of(&cert).unwrap()
}

/// The first certificate of the chain.
fn leaf_pem(pki: &ServerPki) -> &str {
    let end = "-----END CERTIFICATE-----\n";
    let at = pki.cert_chain_pem.find(end).unwrap() + end.len();
    &pki.cert_chain_pem[..at]
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn made_once_then_kept_and_verified_by_openssl() {
    let data = tempfile::tempdir().unwrap();
    let extra = strings(&["hub.example.com", "10.0.0.7"]);
    let first = ServerPki::load_or_create(data.path(), &extra).unwrap();
    assert!(!format!("{first:?}").contains("PRIVATE KEY"));
    assert!(first.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        first.cert_chain_pem.ends_with(&first.ca_pem),
        "leaf, then CA"
    );

    let want: BTreeSet<Name> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "hub.example.com",
        "10.0.0.7",
    ]
    .into_iter()
    .map(|n| Name::parse(n).unwrap())
    .collect();
    assert_eq!(names(&first), want);

    // openssl agrees: the chain verifies for server use and the names match.
    let dir = ServerPki::dir(data.path());
    std::fs::write(dir.join("leaf.pem"), leaf_pem(&first)).unwrap();
    let (ok, text) = openssl(
        &dir,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.crt",
            "leaf.pem",
        ],
    );
    assert!(ok, "{text}");
    for check in [
        ["-checkhost", "localhost"],
        ["-checkip", "127.0.0.1"],
        ["-checkip", "::1"],
        ["-checkhost", "hub.example.com"],
        ["-checkip", "10.0.0.7"],
    ] {
        let (ok, text) = openssl(
            &dir,
            &["x509", "-noout", "-in", "leaf.pem", check[0], check[1]],
        );
        assert!(ok && text.contains("does match"), "{check:?}: {text}");
    }
    let (_, text) = openssl(
        &dir,
        &[
            "x509",
            "-noout",
            "-in",
            "leaf.pem",
            "-checkhost",
            "other.example.com",
        ],
    );
    assert!(text.contains("does NOT match"), "{text}");
    let (ok, text) = openssl(&dir, &["pkey", "-in", "server.key", "-noout"]);
    assert!(ok, "{text}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for (file, mode) in [
            ("ca.key", 0o600),
            ("server.key", 0o600),
            ("ca.crt", 0o644),
            ("server.crt", 0o644),
        ] {
            let meta = std::fs::metadata(dir.join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    // The same names, spelled differently, keep everything.
    let again = ServerPki::load_or_create(
        data.path(),
        &strings(&["HUB.example.com", " 10.0.0.7 ", "localhost"]),
    )
    .unwrap();
    assert_eq!(again, first);
}

#[test]
fn renewed_when_names_change_or_expiry_nears_keeping_the_ca_while_it_lasts() {
    let data = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let later = |days: i64| Timestamp::from_micros(now.as_micros() + days * DAY_MICROS);
    let first = ServerPki::load_or_create_at(data.path(), &[], now).unwrap();

    // (when, extra names, server renewed, CA renewed)
    let cases: &[(i64, &[&str], bool, bool)] = &[
        (0, &[], false, false),
        (1, &["hub.example.com"], true, false),
        (1, &[], true, false),
        (
            SERVER_DAYS - SERVER_RENEW_BEFORE_DAYS - 2,
            &[],
            false,
            false,
        ),
        (SERVER_DAYS - SERVER_RENEW_BEFORE_DAYS + 1, &[], true, false),
        (
            LOCAL_CA_DAYS - SERVER_RENEW_BEFORE_DAYS + 1,
            &[],
            true,
            true,
        ),
    ];
    let mut current = first;
    for (days, extra, server_renewed, ca_renewed) in cases {
        let next =
            ServerPki::load_or_create_at(data.path(), &strings(extra), later(*days)).unwrap();
        let what = format!("day {days}, {extra:?}");
        assert_eq!(next.key_pem != current.key_pem, *server_renewed, "{what}");
        assert_eq!(next.ca_pem != current.ca_pem, *ca_renewed, "{what}");
        // Whatever happened, the leaf is signed by the CA it is served with.
        let ca_der = single_certificate_der(&next.ca_pem).unwrap();
        let leaf_der = single_certificate_der(leaf_pem(&next)).unwrap();
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        current = next;
    }
}

#[test]
fn unreadable_files_are_replaced() {
    // (file, contents, CA renewed)
    let cases: &[(&str, &str, bool)] = &[
        ("server.crt", "garbage", false),
        ("server.key", "garbage", false),
        ("ca.key", "garbage", true),
        ("ca.crt", "garbage", true),
    ];
    for (file, contents, ca_renewed) in cases {
        let data = tempfile::tempdir().unwrap();
        let first = ServerPki::load_or_create(data.path(), &[]).unwrap();
        std::fs::write(ServerPki::dir(data.path()).join(file), contents).unwrap();
        let next = ServerPki::load_or_create(data.path(), &[]).unwrap();
        assert_ne!(next.key_pem, first.key_pem, "{file}");
        assert_eq!(next.ca_pem != first.ca_pem, *ca_renewed, "{file}");
        let third = ServerPki::load_or_create(data.path(), &[]).unwrap();
        assert_eq!(third, next, "{file}: stable once repaired");
    }
}

#[test]
fn a_server_certificate_of_another_ca_is_replaced() {
    let data = tempfile::tempdir().unwrap();
    let first = ServerPki::load_or_create(data.path(), &[]).unwrap();
    let dir = ServerPki::dir(data.path());
    // Another CA's key pair takes the place of ours: the stored leaf no longer verifies.
    let other = tempfile::tempdir().unwrap();
    ServerPki::load_or_create(other.path(), &[]).unwrap();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(ServerPki::dir(other.path()).join(file), dir.join(file)).unwrap();
    }
    let next = ServerPki::load_or_create(data.path(), &[]).unwrap();
    assert_ne!(next.key_pem, first.key_pem);
    assert_ne!(next.ca_pem, first.ca_pem);
}

#[test]
fn bad_host_names_are_refused_by_name() {
    let long = format!("{}.com", "a".repeat(250));
    let label = format!("{}.com", "a".repeat(64));
    let cases: &[(&str, bool)] = &[
        ("hub.example.com", true),
        ("*.example.com", true),
        ("a-b.example", true),
        ("192.168.1.10", true),
        ("fe80::1", true),
        ("", false),
        ("   ", false),
        ("a b.com", false),
        ("-x.com", false),
        ("x-.com", false),
        ("x..com", false),
        ("x.com.", false),
        ("*.*.example.com", false),
        ("exa_mple.com", false),
        ("bücher.example", false),
        ("https://example.com", false),
        (&long, false),
        (&label, false),
    ];
    for (name, ok) in cases {
        let data = tempfile::tempdir().unwrap();
        let got = ServerPki::load_or_create(data.path(), &[(*name).to_owned()]);
        match got {
            Ok(_) => assert!(ok, "{name:?} accepted"),
            Err(PkiError::Hostname { name: named, .. }) => {
                assert!(!ok, "{name:?} refused");
                assert_eq!(named, name.chars().take(128).collect::<String>());
            }
            Err(other) => panic!("{name:?}: {other}"),
        }
    }
}
