//! The registry's certificate rules on SQLite and PostgreSQL: hub CAs, device
//! certificates (issued, renewed, custom), custom hub CAs with proof of possession,
//! auto-provisioning, the runtime calls, and what survives a restart. Certificates users
//! upload are made by the `openssl` tool, and issued ones are verified by it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::TestDb;
use iothub_control::pki::{fingerprint_sha256, single_certificate_der};
use iothub_control::records::{AccountRecord, FilterPolicy, HubStatus, MessageFilters};
use iothub_control::registry::{DeviceCreate, DeviceUpdate, HubCreate, HubUpdate, Quotas};
use iothub_control::runtime::{CaCall, RuntimeCall};
use iothub_control::store::Store;
use iothub_control::testing::openssl::{CertRequest, Openssl, OpensslCert};
use iothub_control::{RecordingRuntime, Registry, RegistryConfig, RegistryError, SqlStore};
use iothub_model::{DeviceId, HubId, Plan};
use x509_parser::prelude::{FromDer, X509Certificate};

on_both_backends!(
    hubs_get_a_ca_and_devices_a_certificate_that_chains_to_it,
    renewal_replaces_the_certificate_and_the_fingerprint,
    custom_device_certificates_are_pinned_and_unique,
    moving_a_device_drops_the_certificate_its_old_hub_issued,
    a_custom_ca_needs_a_disabled_hub_and_a_proof_then_clears_device_certificates,
    auto_provisioning_creates_the_named_device_once,
    deleting_removes_certificates_and_cas,
    hubs_without_a_ca_get_one_and_certificates_survive_a_restart,
);

struct Fixture {
    registry: Arc<Registry>,
    runtime: Arc<RecordingRuntime>,
    store: SqlStore,
    admin: AccountRecord,
    owner: AccountRecord,
    _dir: tempfile::TempDir,
    openssl: Openssl,
}

async fn fixture_with(db: &TestDb, quotas: Quotas) -> Fixture {
    let store = db.open().await;
    let runtime = Arc::new(RecordingRuntime::new());
    let registry = Arc::new(Registry::new(
        Arc::new(store.clone()),
        runtime.clone(),
        RegistryConfig {
            quotas,
            ..RegistryConfig::default()
        },
    ));
    let (admin, _) = registry.bootstrap_admin().await.unwrap().unwrap();
    let (owner, _) = registry.create_account(&admin, "owner").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let openssl = Openssl::new(dir.path()).unwrap();
    Fixture {
        registry,
        runtime,
        store,
        admin,
        owner,
        _dir: dir,
        openssl,
    }
}

async fn fixture(db: &TestDb) -> Fixture {
    fixture_with(db, Quotas::default()).await
}

impl Fixture {
    async fn hub(&self, name: &str) -> HubId {
        self.registry
            .create_hub(
                &self.owner,
                HubCreate {
                    name: name.to_owned(),
                    product_plan: Plan::Dedicated,
                    ..HubCreate::default()
                },
            )
            .await
            .unwrap()
            .hub
            .id
    }

    async fn device(&self, hub: HubId, name: &str) -> (DeviceId, Option<(String, String)>) {
        let (info, credentials) = self
            .registry
            .create_device(
                &self.owner,
                DeviceCreate {
                    hub_id: hub,
                    name: name.to_owned(),
                    description: String::new(),
                    allow_insecure: false,
                    allow_multiple_connections: false,
                    message_filters: MessageFilters::default(),
                },
            )
            .await
            .unwrap();
        (info.device.id, credentials.map(|c| (c.crt, c.key)))
    }

    async fn fingerprint(&self, device: DeviceId) -> Option<String> {
        self.registry
            .get_device(&self.owner, device)
            .await
            .unwrap()
            .device
            .certificate_fingerprint
    }

    /// Disables `hub` and installs a custom CA made by openssl; returns the CA.
    async fn custom_ca(&self, hub: HubId) -> OpensslCert {
        self.registry
            .disable_hub(&self.owner, hub, None)
            .await
            .unwrap();
        let ca = self.openssl.ca("factory ca").unwrap();
        let challenge = self.openssl.plain(&hub.to_string(), Some(&ca)).unwrap();
        self.registry
            .set_hub_ca(&self.owner, hub, &ca.cert_pem, &challenge.cert_pem, None)
            .await
            .unwrap();
        ca
    }
}

fn der(pem: &str) -> Vec<u8> {
    single_certificate_der(pem).unwrap()
}

/// `openssl verify` of `leaf` against `ca` only: an independent check of the chain.
fn openssl_verifies(dir: &Path, ca: &str, leaf: &str) -> (bool, String) {
    std::fs::write(dir.join("verify-ca.pem"), ca).unwrap();
    std::fs::write(dir.join("verify-leaf.pem"), leaf).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "verify-ca.pem",
            "verify-leaf.pem",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn invalid(result: Result<impl std::fmt::Debug, RegistryError>) -> (String, String) {
    match result {
        Err(RegistryError::InvalidArgument { field, reason, .. }) => (field, reason),
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

fn precondition(result: Result<impl std::fmt::Debug, RegistryError>) -> String {
    match result {
        Err(RegistryError::FailedPrecondition { message }) => message,
        other => panic!("expected a failed precondition, got {other:?}"),
    }
}

async fn hubs_get_a_ca_and_devices_a_certificate_that_chains_to_it(db: &TestDb) {
    let f = fixture(db).await;
    let hub = f.hub("plant").await;
    let other = f.hub("other").await;
    let ca_pem = f.registry.get_hub_ca(&f.owner, hub).await.unwrap();
    let other_pem = f.registry.get_hub_ca(&f.owner, other).await.unwrap();
    assert_ne!(ca_pem, other_pem, "every hub has its own CA");
    let calls = f.runtime.take_ca_calls();
    assert_eq!(
        calls,
        [
            CaCall::Upserted {
                hub,
                ca_cert_pem: ca_pem.clone(),
                custom: false
            },
            CaCall::Upserted {
                hub: other,
                ca_cert_pem: other_pem.clone(),
                custom: false
            },
        ]
    );

    f.runtime.take_calls();
    let (device, credentials) = f.device(hub, "pump").await;
    let (crt, key) = credentials.expect("a certificate on a hub with its own CA");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));

    // Chains to its hub's CA and to no other, says openssl as well as x509-parser.
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = openssl_verifies(dir.path(), &ca_pem, &crt);
    assert!(ok, "{text}");
    let (ok, _) = openssl_verifies(dir.path(), &other_pem, &crt);
    assert!(!ok, "verified by another hub's CA");
    let (ca_der, leaf_der) = (der(&ca_pem), der(&crt));
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(
        leaf.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        device.to_string()
    );

    // The record pins the certificate; the runtime heard the fingerprint.
    let fingerprint = fingerprint_sha256(&leaf_der);
    assert_eq!(f.fingerprint(device).await, Some(fingerprint.clone()));
    match f.runtime.take_calls().as_slice() {
        [RuntimeCall::DeviceUpserted(d)] => {
            assert_eq!(d.certificate_fingerprint, Some(fingerprint.clone()));
            assert!(!d.has_custom_certificate);
        }
        other => panic!("{other:?}"),
    }
    let (_, stored) = f
        .registry
        .get_device_certificate(&f.owner, device)
        .await
        .unwrap();
    assert_eq!(stored, crt);
    // The key is not kept anywhere.
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM device_certificates WHERE cert_pem LIKE '%PRIVATE KEY%'",
    )
    .fetch_one(f.store.pool())
    .await
    .unwrap();
    assert_eq!(row.0, 0);
    // Listing devices carries the fingerprints too (the runtime loads them at start).
    let all = f.registry.all_devices().await.unwrap();
    assert_eq!(
        all.iter()
            .find(|d| d.id == device)
            .unwrap()
            .certificate_fingerprint,
        Some(fingerprint)
    );
}

async fn renewal_replaces_the_certificate_and_the_fingerprint(db: &TestDb) {
    let f = fixture(db).await;
    let hub = f.hub("plant").await;
    let (device, credentials) = f.device(hub, "pump").await;
    let (old_crt, old_key) = credentials.unwrap();
    let before = f
        .registry
        .get_device(&f.owner, device)
        .await
        .unwrap()
        .device;
    f.runtime.take_calls();

    let (info, renewed) = f
        .registry
        .renew_device_certificate(&f.owner, device, Some(before.version))
        .await
        .unwrap();
    assert_ne!(renewed.crt, old_crt);
    assert_ne!(renewed.key, old_key);
    assert_eq!(info.device.version, before.version + 1);
    let fingerprint = fingerprint_sha256(&der(&renewed.crt));
    assert_eq!(
        info.device.certificate_fingerprint,
        Some(fingerprint.clone())
    );
    assert_ne!(before.certificate_fingerprint, Some(fingerprint.clone()));
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(info.device.clone())],
        "the runtime hears the new fingerprint and drops sessions of the old one"
    );
    let (_, stored) = f
        .registry
        .get_device_certificate(&f.owner, device)
        .await
        .unwrap();
    assert_eq!(stored, renewed.crt);
    let dir = tempfile::tempdir().unwrap();
    let ca = f.registry.get_hub_ca(&f.owner, hub).await.unwrap();
    assert!(openssl_verifies(dir.path(), &ca, &renewed.crt).0);

    // A stale version is refused and changes nothing.
    let stale = f
        .registry
        .renew_device_certificate(&f.owner, device, Some(before.version))
        .await;
    assert!(
        matches!(stale, Err(RegistryError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    assert_eq!(f.fingerprint(device).await, Some(fingerprint));
    // Another account's device is not found.
    let (stranger, _) = f
        .registry
        .create_account(&f.admin, "stranger")
        .await
        .unwrap();
    assert!(matches!(
        f.registry
            .renew_device_certificate(&stranger, device, None)
            .await,
        Err(RegistryError::NotFound {
            resource: "device",
            ..
        })
    ));
}

async fn custom_device_certificates_are_pinned_and_unique(db: &TestDb) {
    let f = fixture(db).await;
    let hub = f.hub("plant").await;
    let (a, _) = f.device(hub, "a").await;
    let (b, _) = f.device(hub, "b").await;
    let user_ca = f.openssl.ca("user ca").unwrap();
    let cert = f.openssl.client("sensor-a", Some(&user_ca)).unwrap();
    let self_signed = f.openssl.client("sensor-b", None).unwrap();
    f.runtime.take_calls();

    let (info, stored) = f
        .registry
        .set_device_certificate(&f.owner, a, &format!("text\n{}", cert.cert_pem), None)
        .await
        .unwrap();
    assert_eq!(stored, cert.cert_pem, "stored as one PEM block");
    assert!(info.device.has_custom_certificate);
    let pinned = fingerprint_sha256(&der(&cert.cert_pem));
    assert_eq!(info.device.certificate_fingerprint, Some(pinned.clone()));
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(info.device.clone())]
    );
    let (_, got) = f
        .registry
        .get_device_certificate(&f.owner, a)
        .await
        .unwrap();
    assert_eq!(got, cert.cert_pem);

    // The same certificate cannot identify a second device; the same device may set it
    // again; a self-signed one is fine.
    assert!(matches!(
        f.registry
            .set_device_certificate(&f.owner, b, &cert.cert_pem, None)
            .await,
        Err(RegistryError::AlreadyExists {
            resource: "device certificate",
            field: "certificate_pem"
        })
    ));
    f.registry
        .set_device_certificate(&f.owner, a, &cert.cert_pem, None)
        .await
        .unwrap();
    f.registry
        .set_device_certificate(&f.owner, b, &self_signed.cert_pem, None)
        .await
        .unwrap();

    // Refusals name certificate_pem and change nothing.
    let expired = f
        .openssl
        .issue(&CertRequest {
            common_name: "old",
            issuer: Some(&user_ca),
            not_before: Some("20000101000000Z"),
            not_after: Some("20010101000000Z"),
            ..CertRequest::default()
        })
        .unwrap();
    let version = f
        .registry
        .get_device(&f.owner, a)
        .await
        .unwrap()
        .device
        .version;
    let cases: &[(&str, &str)] = &[
        ("garbage", "holds no PEM certificate"),
        ("", "holds no PEM certificate"),
        (&expired.cert_pem, "expired on 2001-01-01T00:00:00.000000Z"),
        (&user_ca.cert_pem, "is a CA certificate"),
        (&cert.key_pem, "holds a private key"),
    ];
    for (pem, reason) in cases {
        let (field, got) = invalid(
            f.registry
                .set_device_certificate(&f.owner, a, pem, None)
                .await,
        );
        assert_eq!(field, "certificate_pem");
        assert!(got.contains(reason), "{got}");
    }
    let after = f.registry.get_device(&f.owner, a).await.unwrap().device;
    assert_eq!(after.version, version);
    assert_eq!(after.certificate_fingerprint, Some(pinned));

    // A renewal on a hub with its own CA replaces a custom certificate with an issued one.
    let (info, _) = f
        .registry
        .renew_device_certificate(&f.owner, a, None)
        .await
        .unwrap();
    assert!(!info.device.has_custom_certificate);
}

async fn moving_a_device_drops_the_certificate_its_old_hub_issued(db: &TestDb) {
    let f = fixture(db).await;
    let (from, to) = (f.hub("from").await, f.hub("to").await);
    let (issued, _) = f.device(from, "issued").await;
    let (custom, _) = f.device(from, "custom").await;
    let own = f.openssl.client("own", None).unwrap();
    f.registry
        .set_device_certificate(&f.owner, custom, &own.cert_pem, None)
        .await
        .unwrap();
    f.runtime.take_calls();
    let moved = |id| {
        f.registry.update_device(
            &f.owner,
            id,
            DeviceUpdate {
                hub_id: Some(to),
                ..DeviceUpdate::default()
            },
            None,
        )
    };
    let issued_moved = moved(issued).await.unwrap().device;
    assert_eq!(issued_moved.certificate_fingerprint, None);
    assert!(matches!(
        f.registry.get_device_certificate(&f.owner, issued).await,
        Err(RegistryError::NotFound {
            resource: "device certificate",
            ..
        })
    ));
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(issued_moved)],
        "the runtime stops accepting the old hub's certificate"
    );
    let custom_moved = moved(custom).await.unwrap().device;
    assert_eq!(
        custom_moved.certificate_fingerprint,
        Some(fingerprint_sha256(&der(&own.cert_pem)))
    );
    // Renewal issues one from the new hub's CA.
    let (_, renewed) = f
        .registry
        .renew_device_certificate(&f.owner, issued, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to_ca = f.registry.get_hub_ca(&f.owner, to).await.unwrap();
    assert!(openssl_verifies(dir.path(), &to_ca, &renewed.crt).0);
}

async fn a_custom_ca_needs_a_disabled_hub_and_a_proof_then_clears_device_certificates(db: &TestDb) {
    let f = fixture(db).await;
    let hub = f.hub("plant").await;
    let (issued, _) = f.device(hub, "issued").await;
    let (custom, _) = f.device(hub, "custom").await;
    let own = f.openssl.client("own", None).unwrap();
    f.registry
        .set_device_certificate(&f.owner, custom, &own.cert_pem, None)
        .await
        .unwrap();
    let ca = f.openssl.ca("factory ca").unwrap();
    let proof = f.openssl.plain(&hub.to_string(), Some(&ca)).unwrap();

    // An enabled hub refuses, whatever the certificates.
    let message = precondition(
        f.registry
            .set_hub_ca(&f.owner, hub, &ca.cert_pem, &proof.cert_pem, None)
            .await,
    );
    assert!(message.contains("must be disabled"), "{message}");
    // Auto-provisioning needs a custom CA.
    let (field, _) = invalid(
        f.registry
            .update_hub(
                &f.owner,
                hub,
                HubUpdate {
                    enable_device_auto_provisioning: Some(true),
                    ..HubUpdate::default()
                },
                None,
            )
            .await,
    );
    assert_eq!(field, "enable_device_auto_provisioning");

    f.registry.disable_hub(&f.owner, hub, None).await.unwrap();
    let impostor = f.openssl.ca("factory ca").unwrap();
    let wrong_signer = f.openssl.plain(&hub.to_string(), Some(&impostor)).unwrap();
    let wrong_cn = f
        .openssl
        .plain(&HubId::new_random().to_string(), Some(&ca))
        .unwrap();
    let expired = f
        .openssl
        .issue(&CertRequest {
            common_name: &hub.to_string(),
            issuer: Some(&ca),
            not_before: Some("20000101000000Z"),
            not_after: Some("20010101000000Z"),
            ..CertRequest::default()
        })
        .unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            &ca.cert_pem,
            &wrong_cn.cert_pem,
            "challenge_cert_pem",
            "has the common name",
        ),
        (
            &ca.cert_pem,
            &wrong_signer.cert_pem,
            "challenge_cert_pem",
            "is not signed by the CA",
        ),
        (
            &ca.cert_pem,
            &expired.cert_pem,
            "challenge_cert_pem",
            "expired on",
        ),
        (
            &ca.cert_pem,
            "",
            "challenge_cert_pem",
            "holds no PEM certificate",
        ),
        (
            &own.cert_pem,
            &proof.cert_pem,
            "ca_cert_pem",
            "is not a CA certificate",
        ),
        (
            "x",
            &proof.cert_pem,
            "ca_cert_pem",
            "holds no PEM certificate",
        ),
    ];
    let hub_before = f.registry.get_hub(&f.owner, hub).await.unwrap().hub;
    for (ca_pem, challenge_pem, want_field, want_reason) in cases {
        let (field, reason) = invalid(
            f.registry
                .set_hub_ca(&f.owner, hub, ca_pem, challenge_pem, None)
                .await,
        );
        assert_eq!(field, *want_field, "{reason}");
        assert!(reason.contains(want_reason), "{field}: {reason}");
    }
    assert_eq!(
        f.registry.get_hub(&f.owner, hub).await.unwrap().hub,
        hub_before,
        "refusals change nothing"
    );
    assert!(f.fingerprint(issued).await.is_some());

    f.runtime.take_calls();
    f.runtime.take_ca_calls();
    let versions = [
        f.registry
            .get_device(&f.owner, issued)
            .await
            .unwrap()
            .device
            .version,
        f.registry
            .get_device(&f.owner, custom)
            .await
            .unwrap()
            .device
            .version,
    ];
    let info = f
        .registry
        .set_hub_ca(
            &f.owner,
            hub,
            &ca.cert_pem,
            &proof.cert_pem,
            Some(hub_before.version),
        )
        .await
        .unwrap();
    assert!(info.hub.has_custom_ca);
    assert_eq!(info.hub.status, HubStatus::Disabled);
    assert_eq!(
        f.runtime.take_ca_calls(),
        [CaCall::Upserted {
            hub,
            ca_cert_pem: ca.cert_pem.clone(),
            custom: true
        }]
    );
    let calls = f.runtime.take_calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0], RuntimeCall::HubUpserted(info.hub.clone()));
    for (id, version) in [issued, custom].into_iter().zip(versions) {
        let device = f.registry.get_device(&f.owner, id).await.unwrap().device;
        assert_eq!(device.certificate_fingerprint, None);
        assert!(!device.has_custom_certificate);
        assert_eq!(device.version, version + 1);
        assert!(calls.contains(&RuntimeCall::DeviceUpserted(device)));
    }
    assert_eq!(
        f.registry.get_hub_ca(&f.owner, hub).await.unwrap(),
        ca.cert_pem
    );
    // The managed CA's key is gone with it.
    let ca_row = f.store.get_hub_ca(hub).await.unwrap().unwrap();
    assert!(ca_row.is_custom && ca_row.key_pem.is_none());

    // Devices of a custom-CA hub get no certificate and cannot renew; custom ones still
    // may be set.
    let (late, credentials) = f.device(hub, "late").await;
    assert!(credentials.is_none());
    assert_eq!(f.fingerprint(late).await, None);
    let message = precondition(
        f.registry
            .renew_device_certificate(&f.owner, late, None)
            .await,
    );
    assert!(message.contains("custom CA"), "{message}");
    assert!(matches!(
        f.registry.get_device_certificate(&f.owner, late).await,
        Err(RegistryError::NotFound { .. })
    ));
    f.registry
        .set_device_certificate(&f.owner, late, &own.cert_pem, None)
        .await
        .unwrap();

    // Auto-provisioning may now be turned on, and another custom CA may replace this one
    // while the hub is disabled.
    f.registry
        .update_hub(
            &f.owner,
            hub,
            HubUpdate {
                enable_device_auto_provisioning: Some(true),
                ..HubUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    let next_ca = f.openssl.ca("next ca").unwrap();
    let next_proof = f.openssl.plain(&hub.to_string(), Some(&next_ca)).unwrap();
    f.registry
        .set_hub_ca(&f.owner, hub, &next_ca.cert_pem, &next_proof.cert_pem, None)
        .await
        .unwrap();
    assert_eq!(
        f.registry.get_hub_ca(&f.owner, hub).await.unwrap(),
        next_ca.cert_pem
    );
    assert_eq!(f.fingerprint(late).await, None, "cleared again");
    // Enabled again, the hub refuses CA changes.
    f.registry.enable_hub(&f.owner, hub, None).await.unwrap();
    precondition(
        f.registry
            .set_hub_ca(&f.owner, hub, &ca.cert_pem, &proof.cert_pem, None)
            .await,
    );
}

async fn auto_provisioning_creates_the_named_device_once(db: &TestDb) {
    let f = fixture_with(
        db,
        Quotas {
            devices_per_hub: 2,
            ..Quotas::default()
        },
    )
    .await;
    let source: IpAddr = "10.1.2.3".parse().unwrap();
    let managed = f.hub("managed").await;
    let message = precondition(f.registry.auto_provision(managed, "serial-1", source).await);
    assert!(message.contains("does not auto-provision"), "{message}");

    let hub = f.hub("factory").await;
    f.custom_ca(hub).await;
    // A custom CA without the flag does not provision.
    precondition(f.registry.auto_provision(hub, "serial-1", source).await);
    f.registry
        .update_hub(
            &f.owner,
            hub,
            HubUpdate {
                enable_device_auto_provisioning: Some(true),
                ..HubUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    // Disabled (as a custom CA needs), it does not provision either.
    let message = precondition(f.registry.auto_provision(hub, "serial-1", source).await);
    assert!(message.contains("disabled"), "{message}");
    f.registry.enable_hub(&f.owner, hub, None).await.unwrap();

    f.runtime.take_calls();
    let device = f
        .registry
        .auto_provision(hub, "serial-1", source)
        .await
        .unwrap();
    assert_eq!(device.name, "serial-1");
    assert_eq!(device.hub_id, hub);
    assert_eq!(device.account_id, f.owner.id);
    assert_eq!(device.description, "auto-provisioned from 10.1.2.3");
    assert!(!device.allow_insecure && !device.allow_multiple_connections);
    assert_eq!(device.message_filters, MessageFilters::default());
    assert_eq!(device.message_filters.publish.policy, FilterPolicy::Reject);
    assert!(device.message_filters.publish.topics.is_empty());
    assert_eq!(device.certificate_fingerprint, None);
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(device.clone())]
    );
    assert_eq!(
        f.registry
            .get_device(&f.owner, device.id)
            .await
            .unwrap()
            .device,
        device
    );
    // Asked again (two first connections at once), the same device answers.
    let again = f
        .registry
        .auto_provision(hub, "serial-1", "10.9.9.9".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(again, device);
    assert!(f.runtime.take_calls().is_empty());

    let ipv6 = f
        .registry
        .auto_provision(hub, "serial-2", "::1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(ipv6.description, "auto-provisioned from ::1");
    // Bad names and the quota.
    for cn in ["", "a/b", "a+b", "#"] {
        let (field, _) = invalid(f.registry.auto_provision(hub, cn, source).await);
        assert_eq!(field, "common_name", "{cn:?}");
    }
    assert!(matches!(
        f.registry.auto_provision(hub, "serial-3", source).await,
        Err(RegistryError::QuotaExceeded {
            resource: "devices",
            ..
        })
    ));
    assert!(matches!(
        f.registry
            .auto_provision(HubId::new_random(), "x", source)
            .await,
        Err(RegistryError::NotFound {
            resource: "hub",
            ..
        })
    ));
}

async fn deleting_removes_certificates_and_cas(db: &TestDb) {
    let f = fixture(db).await;
    let hub = f.hub("plant").await;
    let (a, _) = f.device(hub, "a").await;
    let (b, _) = f.device(hub, "b").await;
    let own = f.openssl.client("own", None).unwrap();
    f.registry
        .set_device_certificate(&f.owner, a, &own.cert_pem, None)
        .await
        .unwrap();

    // Deleting a device frees its certificate for another device.
    f.registry.delete_device(&f.owner, a, None).await.unwrap();
    assert!(f.store.get_device_certificate(a).await.unwrap().is_none());
    f.registry
        .set_device_certificate(&f.owner, b, &own.cert_pem, None)
        .await
        .unwrap();

    f.runtime.take_ca_calls();
    f.registry
        .delete_hub(&f.owner, hub, true, None)
        .await
        .unwrap();
    assert_eq!(f.runtime.take_ca_calls(), [CaCall::Removed(hub)]);
    assert!(f.store.get_hub_ca(hub).await.unwrap().is_none());
    assert!(f.store.get_device_certificate(b).await.unwrap().is_none());
    let rows: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM device_certificates")
        .fetch_one(f.store.pool())
        .await
        .unwrap();
    assert_eq!(rows.0, 0);
    assert!(f.registry.all_hub_cas().await.unwrap().is_empty());
}

async fn hubs_without_a_ca_get_one_and_certificates_survive_a_restart(db: &TestDb) {
    let f = fixture(db).await;
    let old = f.hub("old").await;
    let kept = f.hub("kept").await;
    let custom = f.hub("custom").await;
    let custom_ca = f.custom_ca(custom).await;
    let (device, _) = f.device(kept, "pump").await;
    let fingerprint = f.fingerprint(device).await;
    let kept_ca = f.registry.get_hub_ca(&f.owner, kept).await.unwrap();
    // A hub from before certificates existed: no CA row.
    sqlx::query("DELETE FROM hub_cas WHERE hub_id = $1")
        .bind(old.to_string())
        .execute(f.store.pool())
        .await
        .unwrap();
    f.runtime.take_ca_calls();

    // After a restart, every hub has its CA and the device its certificate.
    let store = db.open().await;
    let runtime = Arc::new(RecordingRuntime::new());
    let registry = Registry::new(
        Arc::new(store.clone()),
        runtime.clone(),
        RegistryConfig::default(),
    );
    let cas = registry.all_hub_cas().await.unwrap();
    let by_hub = |hub: HubId| cas.iter().find(|ca| ca.hub_id == hub).unwrap();
    assert_eq!(cas.len(), 3);
    assert_eq!(by_hub(kept).cert_pem, kept_ca);
    assert!(!by_hub(kept).is_custom && by_hub(kept).key_pem.is_some());
    assert_eq!(by_hub(custom).cert_pem, custom_ca.cert_pem);
    assert!(by_hub(custom).is_custom && by_hub(custom).key_pem.is_none());
    let made = by_hub(old);
    assert!(!made.is_custom);
    assert_eq!(
        runtime.take_ca_calls(),
        [CaCall::Upserted {
            hub: old,
            ca_cert_pem: made.cert_pem.clone(),
            custom: false
        }]
    );
    // Made once: asked again, the same CAs.
    let again = registry.all_hub_cas().await.unwrap();
    assert_eq!(again, cas);
    // The old hub's devices get certificates from it.
    let (info, credentials) = registry
        .create_device(
            &f.owner,
            DeviceCreate {
                hub_id: old,
                name: "late".into(),
                description: String::new(),
                allow_insecure: false,
                allow_multiple_connections: false,
                message_filters: MessageFilters::default(),
            },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(openssl_verifies(dir.path(), &made.cert_pem, &credentials.unwrap().crt).0);
    assert!(info.device.certificate_fingerprint.is_some());
    let devices = registry.all_devices().await.unwrap();
    assert_eq!(
        devices
            .iter()
            .find(|d| d.id == device)
            .unwrap()
            .certificate_fingerprint,
        fingerprint
    );
    assert!(
        !format!("{made:?}").contains("PRIVATE KEY"),
        "Debug hides the key"
    );
    store.close().await;
}
