//! The registry's rules on SQLite and PostgreSQL: accounts and keys, hub lifecycle,
//! validation, quotas, device rules, tenancy, optimistic concurrency, runtime calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::TestDb;
use iothub_control::records::{
    AccountRecord, DeviceStatus, FilterPolicy, FilterRule, HubStatus, MessageFilters, NetworkType,
    RestConfig, RestVerb, RouteConfig, S3Config, S3Strategy,
};
use iothub_control::registry::{
    DeviceCreate, DeviceUpdate, HubCreate, HubUpdate, ListParams, MessageFiltersUpdate,
    NetworkCreate, PlanQuotas, Quotas, RouteCreate, RouteUpdate,
};
use iothub_control::runtime::RuntimeCall;
use iothub_control::secret::hash_secret;
use iothub_control::store::{DeviceFilter, HubFilter, NetworkFilter, RouteFilter};
use iothub_control::{RecordingRuntime, Registry, RegistryConfig, RegistryError};
use iothub_model::{DeviceId, HubId, Plan};

struct Fixture {
    registry: Arc<Registry>,
    runtime: Arc<RecordingRuntime>,
    admin: AccountRecord,
    admin_token: String,
}

async fn fixture_with(db: &TestDb, quotas: Quotas) -> Fixture {
    let store = Arc::new(db.open().await);
    let runtime = Arc::new(RecordingRuntime::new());
    let registry = Arc::new(Registry::new(
        store,
        runtime.clone(),
        RegistryConfig {
            region: "nl-ams".to_owned(),
            quotas,
        },
    ));
    let (admin, admin_token) = registry.bootstrap_admin().await.unwrap().unwrap();
    Fixture {
        registry,
        runtime,
        admin,
        admin_token,
    }
}

async fn fixture(db: &TestDb) -> Fixture {
    fixture_with(db, Quotas::default()).await
}

impl Fixture {
    async fn account(&self, name: &str) -> AccountRecord {
        self.registry
            .create_account(&self.admin, name)
            .await
            .unwrap()
            .0
    }

    async fn hub(&self, owner: &AccountRecord, name: &str, plan: Plan) -> HubId {
        let info = self
            .registry
            .create_hub(
                owner,
                HubCreate {
                    name: name.to_owned(),
                    product_plan: plan,
                    ..HubCreate::default()
                },
            )
            .await
            .unwrap();
        info.hub.id
    }

    async fn device(&self, owner: &AccountRecord, hub: HubId, name: &str) -> DeviceId {
        self.registry
            .create_device(owner, device_req(hub, name))
            .await
            .unwrap()
            .0
            .device
            .id
    }
}

fn device_req(hub_id: HubId, name: &str) -> DeviceCreate {
    DeviceCreate {
        hub_id,
        name: name.to_owned(),
        description: String::new(),
        allow_insecure: false,
        allow_multiple_connections: false,
        message_filters: MessageFilters::default(),
    }
}

fn rest_route(hub_id: HubId, name: &str) -> RouteCreate {
    RouteCreate {
        hub_id,
        name: name.to_owned(),
        topic: "sensors/#".to_owned(),
        config: RouteConfig::Rest(RestConfig {
            verb: RestVerb::Post,
            uri: "http://127.0.0.1:9/in".to_owned(),
            headers: BTreeMap::new(),
        }),
    }
}

fn network_req(hub_id: HubId, name: &str) -> NetworkCreate {
    NetworkCreate {
        hub_id,
        name: name.to_owned(),
        network_type: NetworkType::Rest,
        topic_prefix: "rest/in".to_owned(),
        ns_url: None,
        ns_token: None,
    }
}

/// The field of an `InvalidArgument`, or a description of the other error.
fn field_of(result: Result<impl std::fmt::Debug, RegistryError>) -> String {
    match result {
        Err(RegistryError::InvalidArgument { field, .. }) => field,
        other => format!("not an invalid argument: {other:?}"),
    }
}

fn statuses(calls: &[RuntimeCall]) -> Vec<(HubStatus, bool)> {
    calls
        .iter()
        .filter_map(|c| match c {
            RuntimeCall::HubUpserted(h) => Some((h.status, h.enabled)),
            _ => None,
        })
        .collect()
}

async fn accounts_and_authentication(db: &TestDb) {
    let f = fixture(db).await;
    assert!(f.admin.is_admin);
    assert_eq!(f.registry.bootstrap_admin().await.unwrap(), None);
    assert_eq!(
        f.registry.authenticate(&f.admin_token).await.unwrap(),
        Some(f.admin.clone())
    );
    for wrong in ["", "nope", &"x".repeat(2000), &f.admin_token.to_uppercase()] {
        assert_eq!(
            f.registry.authenticate(wrong).await.unwrap(),
            None,
            "{wrong:?}"
        );
    }

    let (alice, alice_token) = f.registry.create_account(&f.admin, "alice").await.unwrap();
    assert!(!alice.is_admin);
    assert_ne!(alice_token, f.admin_token);
    assert_eq!(
        f.registry.authenticate(&alice_token).await.unwrap(),
        Some(alice.clone())
    );
    let err = f
        .registry
        .create_account(&alice, "mallory")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err}");
    assert_eq!(
        field_of(f.registry.create_account(&f.admin, "").await),
        "name"
    );

    let (key, second) = f.registry.create_api_key(&alice).await.unwrap();
    assert_eq!(key.account_id, alice.id);
    assert_eq!(key.secret_hash, hash_secret(&second));
    assert_eq!(f.registry.authenticate(&second).await.unwrap(), Some(alice));
}

async fn hub_lifecycle(db: &TestDb) {
    let f = fixture(db).await;
    let created = f
        .registry
        .create_hub(
            &f.admin,
            HubCreate {
                name: "plant".to_owned(),
                product_plan: Plan::Dedicated,
                ..HubCreate::default()
            },
        )
        .await
        .unwrap();
    let id = created.hub.id;
    assert_eq!(created.hub.status, HubStatus::Ready);
    assert!(created.hub.enabled);
    assert_eq!(created.hub.region, "nl-ams");
    assert_eq!(created.hub.events_topic_prefix, "$SCW/events");
    assert_eq!(created.hub.version, 2);
    assert_eq!(created.device_count, 0);
    assert_eq!(
        statuses(&f.runtime.take_calls()),
        [(HubStatus::Enabling, true), (HubStatus::Ready, true)]
    );

    // A plan change needs a disabled hub, and changes nothing when refused.
    let to_ha = HubUpdate {
        product_plan: Some(Plan::Ha),
        ..HubUpdate::default()
    };
    let err = f
        .registry
        .update_hub(&f.admin, id, to_ha.clone(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::FailedPrecondition { .. }),
        "{err}"
    );
    assert_eq!(f.registry.get_hub(&f.admin, id).await.unwrap(), created);
    assert!(f.runtime.take_calls().is_empty());

    let disabled = f.registry.disable_hub(&f.admin, id, None).await.unwrap();
    assert_eq!(
        (disabled.hub.status, disabled.hub.enabled),
        (HubStatus::Disabled, false)
    );
    assert_eq!(
        statuses(&f.runtime.take_calls()),
        [(HubStatus::Disabling, false), (HubStatus::Disabled, false)]
    );
    // Disabling again is a no-op.
    let again = f.registry.disable_hub(&f.admin, id, None).await.unwrap();
    assert_eq!(again.hub.version, disabled.hub.version);
    assert!(f.runtime.take_calls().is_empty());

    let ha = f
        .registry
        .update_hub(&f.admin, id, to_ha, None)
        .await
        .unwrap();
    assert_eq!(ha.hub.plan, Plan::Ha);
    assert_eq!(
        statuses(&f.runtime.take_calls()),
        [(HubStatus::Disabled, false)]
    );

    let enabled = f.registry.enable_hub(&f.admin, id, None).await.unwrap();
    assert_eq!(
        (enabled.hub.status, enabled.hub.enabled),
        (HubStatus::Ready, true)
    );
    assert_eq!(
        statuses(&f.runtime.take_calls()),
        [(HubStatus::Enabling, true), (HubStatus::Ready, true)]
    );

    // Delete: refused with devices, then with delete_devices=true.
    let d1 = f.device(&f.admin, id, "d1").await;
    let d2 = f.device(&f.admin, id, "d2").await;
    let info = f.registry.get_hub(&f.admin, id).await.unwrap();
    assert_eq!(info.device_count, 2);
    f.runtime.set_connected(id, d1, true);
    assert_eq!(
        f.registry
            .get_hub(&f.admin, id)
            .await
            .unwrap()
            .connected_device_count,
        1
    );
    assert!(
        f.registry
            .get_device(&f.admin, d1)
            .await
            .unwrap()
            .is_connected
    );
    assert!(
        !f.registry
            .get_device(&f.admin, d2)
            .await
            .unwrap()
            .is_connected
    );
    f.runtime.take_calls();

    let err = f
        .registry
        .delete_hub(&f.admin, id, false, None)
        .await
        .unwrap_err();
    match &err {
        RegistryError::FailedPrecondition { message } => {
            assert!(message.contains("2 device(s)"), "{message}");
            assert!(message.contains("delete_devices=true"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let stale = info.hub.version - 1;
    let err = f
        .registry
        .delete_hub(&f.admin, id, true, Some(stale))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PreconditionFailed { .. }),
        "{err}"
    );
    assert!(f.runtime.take_calls().is_empty());

    f.registry
        .delete_hub(&f.admin, id, true, Some(info.hub.version))
        .await
        .unwrap();
    let mut calls = f.runtime.take_calls();
    assert_eq!(calls.pop(), Some(RuntimeCall::HubRemoved(id)));
    let mut removed: Vec<RuntimeCall> = calls;
    removed.sort_by_key(|c| format!("{c:?}"));
    let mut want = vec![
        RuntimeCall::DeviceRemoved(d1),
        RuntimeCall::DeviceRemoved(d2),
    ];
    want.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(removed, want);
    let err = f.registry.get_hub(&f.admin, id).await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NotFound {
                resource: "hub",
                ..
            }
        ),
        "{err}"
    );
    let err = f.registry.get_device(&f.admin, d1).await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NotFound {
                resource: "device",
                ..
            }
        ),
        "{err}"
    );
}

async fn hub_rules(db: &TestDb) {
    let f = fixture(db).await;
    let create = |name: &str, plan: Plan, anonymous: bool, prefix: Option<&str>| HubCreate {
        name: name.to_owned(),
        product_plan: plan,
        allow_anonymous: Some(anonymous),
        events_topic_prefix: prefix.map(str::to_owned),
        ..HubCreate::default()
    };
    let long = "h".repeat(256);
    let cases: Vec<(HubCreate, &str)> = vec![
        (create("", Plan::Dedicated, false, None), "name"),
        (create(&long, Plan::Dedicated, false, None), "name"),
        (create("a/b", Plan::Dedicated, false, None), "name"),
        (create("tab\there", Plan::Dedicated, false, None), "name"),
        (create("ok", Plan::Shared, true, None), "allow_anonymous"),
        (
            create("ok", Plan::Dedicated, false, Some("ev/+")),
            "events_topic_prefix",
        ),
        (
            create("ok", Plan::Dedicated, false, Some("")),
            "events_topic_prefix",
        ),
        (
            HubCreate {
                enable_device_auto_provisioning: Some(true),
                ..create("ok", Plan::Dedicated, false, None)
            },
            "enable_device_auto_provisioning",
        ),
    ];
    for (req, field) in cases {
        let label = format!("{req:?}");
        assert_eq!(
            field_of(f.registry.create_hub(&f.admin, req).await),
            field,
            "{label}"
        );
    }
    assert!(f.runtime.take_calls().is_empty());
    let all = f
        .registry
        .list_hubs(&f.admin, HubFilter::default(), &ListParams::default())
        .await
        .unwrap();
    assert_eq!(all.total_count, 0, "refused creations store nothing");

    let anon = f
        .registry
        .create_hub(&f.admin, create("anon", Plan::Ha, true, Some("my/events")))
        .await
        .unwrap();
    assert!(anon.hub.allow_anonymous);
    assert_eq!(anon.hub.events_topic_prefix, "my/events");
    let shared = f.hub(&f.admin, "shared", Plan::Shared).await;
    let turn_on = HubUpdate {
        allow_anonymous: Some(true),
        ..HubUpdate::default()
    };
    assert_eq!(
        field_of(f.registry.update_hub(&f.admin, shared, turn_on, None).await),
        "allow_anonymous"
    );
    // Moving an anonymous hub to the shared plan is refused on the plan.
    f.registry
        .disable_hub(&f.admin, anon.hub.id, None)
        .await
        .unwrap();
    let to_shared = HubUpdate {
        product_plan: Some(Plan::Shared),
        ..HubUpdate::default()
    };
    assert_eq!(
        field_of(
            f.registry
                .update_hub(&f.admin, anon.hub.id, to_shared.clone(), None)
                .await
        ),
        "product_plan"
    );

    // A hub whose devices allow multiple connections cannot go shared.
    let dedicated = f.hub(&f.admin, "dedicated", Plan::Dedicated).await;
    f.registry
        .create_device(
            &f.admin,
            DeviceCreate {
                allow_multiple_connections: true,
                ..device_req(dedicated, "multi")
            },
        )
        .await
        .unwrap();
    f.registry
        .disable_hub(&f.admin, dedicated, None)
        .await
        .unwrap();
    let err = f
        .registry
        .update_hub(&f.admin, dedicated, to_shared, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::FailedPrecondition { .. }),
        "{err}"
    );

    // Plain updates.
    let renamed = f
        .registry
        .update_hub(
            &f.admin,
            shared,
            HubUpdate {
                name: Some("renamed".to_owned()),
                disable_events: Some(true),
                events_topic_prefix: Some("x/y".to_owned()),
                ..HubUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(renamed.hub.name, "renamed");
    assert!(renamed.hub.disable_events);
    assert_eq!(renamed.hub.events_topic_prefix, "x/y");
    assert_eq!(
        field_of(
            f.registry
                .update_hub(
                    &f.admin,
                    shared,
                    HubUpdate {
                        name: Some(String::new()),
                        ..HubUpdate::default()
                    },
                    None
                )
                .await
        ),
        "name"
    );
}

fn quota<T: std::fmt::Debug>(r: Result<T, RegistryError>) -> (&'static str, u64, u64) {
    match r {
        Err(RegistryError::QuotaExceeded {
            resource,
            current,
            quota,
        }) => (resource, current, quota),
        other => panic!("expected a quota error, got {other:?}"),
    }
}

async fn quotas_are_enforced(db: &TestDb) {
    let quotas = Quotas {
        hubs_per_account: PlanQuotas {
            plan_shared: 1,
            plan_dedicated: 2,
            plan_ha: 0,
        },
        devices_per_hub: 2,
        routes_per_hub: 1,
        networks_per_hub: 1,
    };
    let f = fixture_with(db, quotas).await;
    let hub_req = |name: &str, plan| HubCreate {
        name: name.to_owned(),
        product_plan: plan,
        ..HubCreate::default()
    };
    f.hub(&f.admin, "s1", Plan::Shared).await;
    assert_eq!(
        quota(
            f.registry
                .create_hub(&f.admin, hub_req("s2", Plan::Shared))
                .await
        ),
        ("hubs", 1, 1)
    );
    assert_eq!(
        quota(
            f.registry
                .create_hub(&f.admin, hub_req("h1", Plan::Ha))
                .await
        ),
        ("hubs", 0, 0)
    );
    let h = f.hub(&f.admin, "d1", Plan::Dedicated).await;
    // Another account has its own quota.
    let other = f.account("other").await;
    f.hub(&other, "s1", Plan::Shared).await;

    f.device(&f.admin, h, "a").await;
    f.device(&f.admin, h, "b").await;
    assert_eq!(
        quota(f.registry.create_device(&f.admin, device_req(h, "c")).await),
        ("devices", 2, 2)
    );
    f.registry
        .create_route(&f.admin, rest_route(h, "r1"))
        .await
        .unwrap();
    assert_eq!(
        quota(f.registry.create_route(&f.admin, rest_route(h, "r2")).await),
        ("routes", 1, 1)
    );
    f.registry
        .create_network(&f.admin, network_req(h, "n1"))
        .await
        .unwrap();
    assert_eq!(
        quota(
            f.registry
                .create_network(&f.admin, network_req(h, "n2"))
                .await
        ),
        ("networks", 1, 1)
    );
    // Moving a device into a full hub.
    let h2 = f.hub(&f.admin, "d2", Plan::Dedicated).await;
    let mover = f.device(&f.admin, h2, "mover").await;
    let to_full = DeviceUpdate {
        hub_id: Some(h),
        ..DeviceUpdate::default()
    };
    assert_eq!(
        quota(
            f.registry
                .update_device(&f.admin, mover, to_full, None)
                .await
        ),
        ("devices", 2, 2)
    );
}

async fn device_rules(db: &TestDb) {
    let f = fixture(db).await;
    let h = f.hub(&f.admin, "plant", Plan::Dedicated).await;
    let shared = f.hub(&f.admin, "shared", Plan::Shared).await;
    f.runtime.take_calls();

    let long = "d".repeat(256);
    let filters = |topics: &[&str]| MessageFilters {
        publish: FilterRule {
            policy: FilterPolicy::Accept,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        },
        subscribe: FilterRule::default(),
    };
    let cases: Vec<(DeviceCreate, &str)> = vec![
        (device_req(h, ""), "name"),
        (device_req(h, &long), "name"),
        (device_req(h, "a+b"), "name"),
        (
            DeviceCreate {
                description: "x".repeat(1025),
                ..device_req(h, "ok")
            },
            "description",
        ),
        (
            DeviceCreate {
                message_filters: filters(&["ok/#", "bad/#/x"]),
                ..device_req(h, "ok")
            },
            "message_filters.publish.topics[1]",
        ),
        (
            DeviceCreate {
                message_filters: filters(&["{{ hub.owner }}/x"]),
                ..device_req(h, "ok")
            },
            "message_filters.publish.topics[0]",
        ),
        (
            DeviceCreate {
                message_filters: filters(&["{{ device.id"]),
                ..device_req(h, "ok")
            },
            "message_filters.publish.topics[0]",
        ),
        (
            DeviceCreate {
                allow_multiple_connections: true,
                ..device_req(shared, "ok")
            },
            "allow_multiple_connections",
        ),
    ];
    for (req, field) in cases {
        let label = format!("{req:?}");
        assert_eq!(
            field_of(f.registry.create_device(&f.admin, req).await),
            field,
            "{label}"
        );
    }
    assert!(f.runtime.take_calls().is_empty());

    let created = f
        .registry
        .create_device(
            &f.admin,
            DeviceCreate {
                description: "pump".to_owned(),
                allow_insecure: true,
                message_filters: filters(&["{{ hub.name }}/{{ device.name }}/#"]),
                ..device_req(h, "pump")
            },
        )
        .await
        .unwrap()
        .0;
    let d = created.device.clone();
    assert_eq!(d.status, DeviceStatus::Enabled);
    assert_eq!(d.last_activity_at.as_micros(), 0);
    assert!(!created.is_connected);
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(d.clone())]
    );

    let err = f
        .registry
        .create_device(&f.admin, device_req(h, "pump"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::AlreadyExists {
                resource: "device",
                field: "name"
            }
        ),
        "{err}"
    );

    let disabled = f
        .registry
        .disable_device(&f.admin, d.id, None)
        .await
        .unwrap();
    assert_eq!(disabled.device.status, DeviceStatus::Disabled);
    assert_eq!(disabled.device.version, 2);
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(disabled.device.clone())]
    );
    let enabled = f
        .registry
        .enable_device(&f.admin, d.id, Some(2))
        .await
        .unwrap();
    assert_eq!(enabled.device.status, DeviceStatus::Enabled);

    // A stale If-Match changes nothing and tells nobody.
    f.runtime.take_calls();
    let err = f
        .registry
        .update_device(
            &f.admin,
            d.id,
            DeviceUpdate {
                description: Some("stale".to_owned()),
                ..DeviceUpdate::default()
            },
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::PreconditionFailed {
                expected: 1,
                current: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(f.runtime.take_calls().is_empty());
    assert_eq!(
        f.registry
            .get_device(&f.admin, d.id)
            .await
            .unwrap()
            .device
            .description,
        "pump"
    );

    // Partial filter update keeps the other direction.
    let updated = f
        .registry
        .update_device(
            &f.admin,
            d.id,
            DeviceUpdate {
                allow_insecure: Some(false),
                message_filters: Some(MessageFiltersUpdate {
                    publish: None,
                    subscribe: Some(FilterRule {
                        policy: FilterPolicy::Reject,
                        topics: vec!["secret/#".to_owned()],
                    }),
                }),
                ..DeviceUpdate::default()
            },
            Some(3),
        )
        .await
        .unwrap();
    assert!(!updated.device.allow_insecure);
    assert_eq!(
        updated.device.message_filters.publish,
        d.message_filters.publish
    );
    assert_eq!(
        updated.device.message_filters.subscribe.topics,
        ["secret/#"]
    );
    assert_eq!(
        field_of(
            f.registry
                .update_device(
                    &f.admin,
                    d.id,
                    DeviceUpdate {
                        message_filters: Some(MessageFiltersUpdate {
                            publish: Some(FilterRule {
                                policy: FilterPolicy::Accept,
                                topics: vec!["a#".to_owned()],
                            }),
                            subscribe: None,
                        }),
                        ..DeviceUpdate::default()
                    },
                    None,
                )
                .await
        ),
        "message_filters.publish.topics[0]"
    );

    // Moving: to a shared hub with multiple connections is refused; otherwise it moves.
    let multi = f
        .registry
        .update_device(
            &f.admin,
            d.id,
            DeviceUpdate {
                allow_multiple_connections: Some(true),
                ..DeviceUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert!(multi.device.allow_multiple_connections);
    let to_shared = DeviceUpdate {
        hub_id: Some(shared),
        ..DeviceUpdate::default()
    };
    assert_eq!(
        field_of(
            f.registry
                .update_device(&f.admin, d.id, to_shared, None)
                .await
        ),
        "allow_multiple_connections"
    );
    f.runtime.take_calls();
    let moved = f
        .registry
        .update_device(
            &f.admin,
            d.id,
            DeviceUpdate {
                hub_id: Some(shared),
                allow_multiple_connections: Some(false),
                ..DeviceUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(moved.device.hub_id, shared);
    assert_eq!(
        f.runtime.take_calls(),
        [RuntimeCall::DeviceUpserted(moved.device.clone())]
    );

    // Delete with a stale version, then for real.
    let err = f
        .registry
        .delete_device(&f.admin, d.id, Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PreconditionFailed { .. }),
        "{err}"
    );
    f.registry
        .delete_device(&f.admin, d.id, Some(moved.device.version))
        .await
        .unwrap();
    assert_eq!(f.runtime.take_calls(), [RuntimeCall::DeviceRemoved(d.id)]);
    let err = f
        .registry
        .delete_device(&f.admin, d.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NotFound {
                resource: "device",
                ..
            }
        ),
        "{err}"
    );

    let ghost = DeviceId::new_random();
    let err = f
        .registry
        .record_device_activity(ghost, iothub_control::Timestamp::now())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

async fn accounts_are_isolated(db: &TestDb) {
    let f = fixture(db).await;
    let alice = f.account("alice").await;
    let bob = f.account("bob").await;
    let hub = f.hub(&alice, "alice-hub", Plan::Dedicated).await;
    let device = f.device(&alice, hub, "alice-device").await;
    let route = f
        .registry
        .create_route(&alice, rest_route(hub, "r"))
        .await
        .unwrap()
        .id;
    let network = f
        .registry
        .create_network(&alice, network_req(hub, "n"))
        .await
        .unwrap()
        .0
        .id;
    let bob_hub = f.hub(&bob, "bob-hub", Plan::Dedicated).await;
    f.runtime.take_calls();

    let not_found = |r: Result<(), RegistryError>, what: &str| match r {
        Err(RegistryError::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    };
    let r = &f.registry;
    not_found(r.get_hub(&bob, hub).await.map(drop), "get hub");
    not_found(
        r.update_hub(&bob, hub, HubUpdate::default(), None)
            .await
            .map(drop),
        "update hub",
    );
    not_found(
        r.disable_hub(&bob, hub, None).await.map(drop),
        "disable hub",
    );
    not_found(r.enable_hub(&bob, hub, None).await.map(drop), "enable hub");
    not_found(r.delete_hub(&bob, hub, true, None).await, "delete hub");
    not_found(r.get_device(&bob, device).await.map(drop), "get device");
    not_found(
        r.disable_device(&bob, device, None).await.map(drop),
        "disable device",
    );
    not_found(
        r.update_device(&bob, device, DeviceUpdate::default(), None)
            .await
            .map(drop),
        "update device",
    );
    not_found(r.delete_device(&bob, device, None).await, "delete device");
    not_found(
        r.create_device(&bob, device_req(hub, "intruder"))
            .await
            .map(drop),
        "device in alice's hub",
    );
    not_found(
        r.create_route(&bob, rest_route(hub, "intruder"))
            .await
            .map(drop),
        "route in alice's hub",
    );
    not_found(
        r.create_network(&bob, network_req(hub, "intruder"))
            .await
            .map(drop),
        "network in alice's hub",
    );
    not_found(r.get_route(&bob, route).await.map(drop), "get route");
    not_found(
        r.update_route(&bob, route, RouteUpdate::default(), None)
            .await
            .map(drop),
        "update route",
    );
    not_found(r.delete_route(&bob, route, None).await, "delete route");
    not_found(r.get_network(&bob, network).await.map(drop), "get network");
    not_found(r.delete_network(&bob, network).await, "delete network");
    // Alice cannot move her device into Bob's hub.
    not_found(
        r.update_device(
            &alice,
            device,
            DeviceUpdate {
                hub_id: Some(bob_hub),
                ..DeviceUpdate::default()
            },
            None,
        )
        .await
        .map(drop),
        "move to bob's hub",
    );
    assert!(
        f.runtime.take_calls().is_empty(),
        "refusals reach no runtime"
    );

    // Lists only show the caller's records, even when filtering on another's hub.
    let p = ListParams::default();
    assert_eq!(
        r.list_hubs(&bob, HubFilter::default(), &p)
            .await
            .unwrap()
            .total_count,
        1
    );
    let foreign = DeviceFilter {
        hub_id: Some(hub),
        ..DeviceFilter::default()
    };
    assert_eq!(
        r.list_devices(&bob, foreign.clone(), &p)
            .await
            .unwrap()
            .total_count,
        0
    );
    assert_eq!(
        r.list_devices(&alice, foreign, &p)
            .await
            .unwrap()
            .total_count,
        1
    );
    let sneaky = HubFilter {
        account_id: Some(alice.id),
        ..HubFilter::default()
    };
    let bobs = r.list_hubs(&bob, sneaky, &p).await.unwrap();
    assert_eq!(bobs.items.len(), 1);
    assert_eq!(bobs.items[0].hub.id, bob_hub);
    assert_eq!(
        r.list_routes(&bob, RouteFilter::default(), &p)
            .await
            .unwrap()
            .total_count,
        0
    );
    assert_eq!(
        r.list_networks(&bob, NetworkFilter::default(), &p)
            .await
            .unwrap()
            .total_count,
        0
    );

    // The runtime's load sees everyone.
    assert_eq!(r.all_hubs().await.unwrap().len(), 2);
    assert_eq!(r.all_devices().await.unwrap().len(), 1);
}

async fn list_parameters(db: &TestDb) {
    let f = fixture(db).await;
    for i in 0..25 {
        f.hub(&f.admin, &format!("hub-{i:02}"), Plan::Dedicated)
            .await;
    }
    let list = |params: ListParams| {
        let registry = Arc::clone(&f.registry);
        let admin = f.admin.clone();
        async move {
            registry
                .list_hubs(&admin, HubFilter::default(), &params)
                .await
        }
    };
    let first = list(ListParams::default()).await.unwrap();
    assert_eq!(first.items.len(), 20);
    assert_eq!(first.total_count, 25);
    assert_eq!(first.items[0].hub.name, "hub-00");
    let last = list(ListParams {
        page: Some(3),
        page_size: Some(10),
        order_by: Some("name_desc".to_owned()),
    })
    .await
    .unwrap();
    let names: Vec<&str> = last.items.iter().map(|h| h.hub.name.as_str()).collect();
    assert_eq!(names, ["hub-04", "hub-03", "hub-02", "hub-01", "hub-00"]);

    let cases: &[(ListParams, &str)] = &[
        (
            ListParams {
                page: Some(0),
                ..ListParams::default()
            },
            "page",
        ),
        (
            ListParams {
                page_size: Some(0),
                ..ListParams::default()
            },
            "page_size",
        ),
        (
            ListParams {
                page_size: Some(101),
                ..ListParams::default()
            },
            "page_size",
        ),
        (
            ListParams {
                order_by: Some("size_asc".to_owned()),
                ..ListParams::default()
            },
            "order_by",
        ),
        (
            ListParams {
                order_by: Some("allow_insecure_asc".to_owned()),
                ..ListParams::default()
            },
            "order_by",
        ),
    ];
    for (params, field) in cases {
        assert_eq!(field_of(list(params.clone()).await), *field, "{params:?}");
    }
    let max = list(ListParams {
        page_size: Some(100),
        ..ListParams::default()
    })
    .await
    .unwrap();
    assert_eq!(max.items.len(), 25);
}

async fn routes_and_networks(db: &TestDb) {
    let f = fixture(db).await;
    let h = f.hub(&f.admin, "plant", Plan::Dedicated).await;
    let bad_s3 = RouteCreate {
        config: RouteConfig::S3(S3Config {
            bucket_region: "fr-par".to_owned(),
            bucket_name: "NO".to_owned(),
            object_prefix: String::new(),
            strategy: S3Strategy::PerTopic,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
        }),
        ..rest_route(h, "s3")
    };
    let cases: Vec<(RouteCreate, &str)> = vec![
        (rest_route(h, ""), "name"),
        (
            RouteCreate {
                topic: "a/#/b".to_owned(),
                ..rest_route(h, "r")
            },
            "topic",
        ),
        (bad_s3, "s3_config.bucket_name"),
    ];
    for (req, field) in cases {
        let label = format!("{req:?}");
        assert_eq!(
            field_of(f.registry.create_route(&f.admin, req).await),
            field,
            "{label}"
        );
    }

    let route = f
        .registry
        .create_route(&f.admin, rest_route(h, "r"))
        .await
        .unwrap();
    assert_eq!(route.version, 1);
    let wrong_type = RouteUpdate {
        config: Some(RouteConfig::S3(S3Config {
            bucket_region: "fr-par".to_owned(),
            bucket_name: "bucket".to_owned(),
            object_prefix: String::new(),
            strategy: S3Strategy::PerTopic,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
        })),
        ..RouteUpdate::default()
    };
    assert_eq!(
        field_of(
            f.registry
                .update_route(&f.admin, route.id, wrong_type, None)
                .await
        ),
        "s3_config"
    );
    let updated = f
        .registry
        .update_route(
            &f.admin,
            route.id,
            RouteUpdate {
                name: Some("r2".to_owned()),
                topic: Some("x/+".to_owned()),
                config: Some(RouteConfig::Rest(RestConfig {
                    verb: RestVerb::Put,
                    uri: "https://127.0.0.1/x".to_owned(),
                    headers: BTreeMap::new(),
                })),
            },
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            updated.name.as_str(),
            updated.topic.as_str(),
            updated.version
        ),
        ("r2", "x/+", 2)
    );
    let err = f
        .registry
        .update_route(&f.admin, route.id, RouteUpdate::default(), Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PreconditionFailed { .. }),
        "{err}"
    );
    let err = f
        .registry
        .delete_route(&f.admin, route.id, Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PreconditionFailed { .. }),
        "{err}"
    );
    f.registry
        .delete_route(&f.admin, route.id, Some(2))
        .await
        .unwrap();

    assert_eq!(
        field_of(
            f.registry
                .create_network(
                    &f.admin,
                    NetworkCreate {
                        topic_prefix: "in/#".to_owned(),
                        ..network_req(h, "n")
                    }
                )
                .await
        ),
        "topic_prefix"
    );
    let (network, secret) = f
        .registry
        .create_network(&f.admin, network_req(h, "n"))
        .await
        .unwrap();
    assert_eq!(secret.len(), 64);
    assert_eq!(network.secret_hash, hash_secret(&secret));
    let shown = serde_json::to_string(&network).unwrap();
    assert!(!shown.contains(&network.secret_hash), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    assert_eq!(
        f.registry.get_network(&f.admin, network.id).await.unwrap(),
        network
    );
    let (_, other_secret) = f
        .registry
        .create_network(&f.admin, network_req(h, "n2"))
        .await
        .unwrap();
    assert_ne!(secret, other_secret);
    f.registry
        .delete_network(&f.admin, network.id)
        .await
        .unwrap();
    let err = f
        .registry
        .get_network(&f.admin, network.id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NotFound {
                resource: "network",
                ..
            }
        ),
        "{err}"
    );
}

async fn concurrent_updates_are_serialised(db: &TestDb) {
    let f = fixture(db).await;
    let h = f.hub(&f.admin, "plant", Plan::Dedicated).await;
    let d = f.device(&f.admin, h, "pump").await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let registry = Arc::clone(&f.registry);
            let admin = f.admin.clone();
            tokio::spawn(async move {
                let req = DeviceUpdate {
                    description: Some(format!("writer {i}")),
                    ..DeviceUpdate::default()
                };
                registry.update_device(&admin, d, req, None).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Every update landed on its own version: none was lost.
    let final_state = f.registry.get_device(&f.admin, d).await.unwrap().device;
    assert_eq!(final_state.version, 9);
    assert!(final_state.description.starts_with("writer "));

    // With If-Match, exactly one of several writers holding the same version wins.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let registry = Arc::clone(&f.registry);
            let admin = f.admin.clone();
            tokio::spawn(async move {
                let req = DeviceUpdate {
                    description: Some(format!("guarded {i}")),
                    ..DeviceUpdate::default()
                };
                registry.update_device(&admin, d, req, Some(9)).await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(RegistryError::PreconditionFailed { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        f.registry
            .get_device(&f.admin, d)
            .await
            .unwrap()
            .device
            .version,
        10
    );
}

async fn interrupted_transitions_finish_at_start(db: &TestDb) {
    let f = fixture(db).await;
    let a = f.hub(&f.admin, "a", Plan::Dedicated).await;
    let b = f.hub(&f.admin, "b", Plan::Dedicated).await;
    let c = f.hub(&f.admin, "c", Plan::Dedicated).await;
    // Simulate a stop between the two steps of enable and of disable.
    let store = db.open().await;
    for (id, status, enabled) in [(a, "enabling", true), (b, "disabling", false)] {
        sqlx::query("UPDATE hubs SET status = $2, enabled = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(status)
            .bind(enabled)
            .execute(store.pool())
            .await
            .unwrap();
    }
    f.runtime.take_calls();
    assert_eq!(
        f.registry.finish_interrupted_transitions().await.unwrap(),
        2
    );
    let state = |id| {
        let registry = Arc::clone(&f.registry);
        let admin = f.admin.clone();
        async move {
            let hub = registry.get_hub(&admin, id).await.unwrap().hub;
            (hub.status, hub.enabled)
        }
    };
    assert_eq!(state(a).await, (HubStatus::Ready, true));
    assert_eq!(state(b).await, (HubStatus::Disabled, false));
    assert_eq!(state(c).await, (HubStatus::Ready, true));
    let mut told = statuses(&f.runtime.take_calls());
    told.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        told,
        [(HubStatus::Disabled, false), (HubStatus::Ready, true)]
    );
    assert_eq!(
        f.registry.finish_interrupted_transitions().await.unwrap(),
        0
    );
}

on_both_backends!(
    interrupted_transitions_finish_at_start,
    accounts_and_authentication,
    hub_lifecycle,
    hub_rules,
    quotas_are_enforced,
    device_rules,
    accounts_are_isolated,
    list_parameters,
    routes_and_networks,
    concurrent_updates_are_serialised,
);
