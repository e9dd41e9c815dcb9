//! The SQL store against SQLite and PostgreSQL: round trips, optimistic versions, lists
//! (filters, orders, pages), quotas under concurrency, hub deletion, persistence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{TestDb, account};
use iothub_control::records::{
    AccountRecord, ApiKeyRecord, DbConfig, DbEngine, DeviceRecord, DeviceStatus, FilterPolicy,
    FilterRule, HubRecord, HubStatus, LorawanDeviceRecord, MessageFilters, NetworkRecord,
    NetworkType, RestConfig, RestVerb, RouteConfig, RouteRecord, S3Config, S3Strategy,
};
use iothub_control::store::{
    DeviceFilter, HubFilter, ListQuery, NetworkFilter, OrderBy, Page, Paging, RouteFilter,
    SqlStore, Store, StoreError,
};
use iothub_control::{AccountId, ApiKeyId, NetworkId, RouteId, Timestamp};
use iothub_model::{DeviceId, HubId, HubLimits, Plan};

fn hub(account: &AccountRecord, name: &str, plan: Plan, created: i64) -> HubRecord {
    HubRecord {
        id: HubId::new_random(),
        account_id: account.id,
        name: name.to_owned(),
        status: HubStatus::Ready,
        plan,
        enabled: true,
        disable_events: false,
        events_topic_prefix: "$SCW/events".to_owned(),
        enable_device_auto_provisioning: false,
        has_custom_ca: false,
        allow_anonymous: false,
        limits: HubLimits::default(),
        region: "fr-par".to_owned(),
        created_at: Timestamp::from_micros(created),
        updated_at: Timestamp::from_micros(created),
        version: 1,
    }
}

fn device(hub: &HubRecord, name: &str, allow_insecure: bool, created: i64) -> DeviceRecord {
    DeviceRecord {
        id: DeviceId::new_random(),
        hub_id: hub.id,
        account_id: hub.account_id,
        name: name.to_owned(),
        description: String::new(),
        status: DeviceStatus::Enabled,
        allow_insecure,
        allow_multiple_connections: false,
        message_filters: MessageFilters::default(),
        has_custom_certificate: false,
        certificate_fingerprint: None,
        last_activity_at: Timestamp::EPOCH,
        created_at: Timestamp::from_micros(created),
        updated_at: Timestamp::from_micros(created),
        version: 1,
    }
}

fn route(hub: &HubRecord, name: &str, config: RouteConfig, created: i64) -> RouteRecord {
    RouteRecord {
        id: RouteId::new_random(),
        hub_id: hub.id,
        account_id: hub.account_id,
        name: name.to_owned(),
        topic: "sensors/#".to_owned(),
        route_type: config.route_type(),
        config,
        created_at: Timestamp::from_micros(created),
        updated_at: Timestamp::from_micros(created),
        version: 1,
    }
}

fn network(hub: &HubRecord, name: &str, kind: NetworkType, prefix: &str) -> NetworkRecord {
    NetworkRecord {
        id: NetworkId::new_random(),
        hub_id: hub.id,
        account_id: hub.account_id,
        name: name.to_owned(),
        network_type: kind,
        topic_prefix: prefix.to_owned(),
        secret_hash: format!("secret-of-{name}-{}", NetworkId::new_random()),
        ns_url: None,
        ns_token: None,
        created_at: Timestamp::from_micros(1),
    }
}

fn rest_config() -> RouteConfig {
    RouteConfig::Rest(RestConfig {
        verb: RestVerb::Post,
        uri: "http://127.0.0.1:9/in".to_owned(),
        headers: BTreeMap::from([("X-Key".to_owned(), "v".to_owned())]),
    })
}

fn s3_config() -> RouteConfig {
    RouteConfig::S3(S3Config {
        bucket_region: "fr-par".to_owned(),
        bucket_name: "bucket".to_owned(),
        object_prefix: "p/".to_owned(),
        strategy: S3Strategy::PerMessage,
        endpoint: None,
        access_key_id: None,
        secret_access_key: None,
    })
}

fn db_config() -> RouteConfig {
    RouteConfig::Database(DbConfig {
        engine: DbEngine::Mysql,
        host: "127.0.0.1".to_owned(),
        port: 3306,
        dbname: "iot".to_owned(),
        username: "u".to_owned(),
        password: "p".to_owned(),
        query: "INSERT INTO m VALUES ($TOPIC, $PAYLOAD)".to_owned(),
    })
}

fn all<F: Default>(filter: F, order_by: &str) -> ListQuery<F> {
    ListQuery {
        filter,
        order_by: order_by.parse().unwrap(),
        paging: None,
    }
}

fn names<T>(page: &Page<T>, name: impl Fn(&T) -> &str) -> Vec<String> {
    page.items.iter().map(|i| name(i).to_owned()).collect()
}

async fn migrations_are_idempotent_and_refuse_newer_schemas(db: &TestDb) {
    let store = db.open().await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM iothub_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        row.0, 5,
        "registry, certificates, metrics, lorawan, network_server"
    );
    sqlx::query(
        "INSERT INTO iothub_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 999,
                known: 5
            }
        ),
        "{err}"
    );
}

async fn bootstrap_happens_once(db: &TestDb) {
    let store = db.open().await;
    let admin = |name: &str| AccountRecord {
        id: AccountId::new_random(),
        name: name.to_owned(),
        is_admin: true,
        created_at: Timestamp::from_micros(5),
    };
    let key = |account: &AccountRecord, hash: &str| ApiKeyRecord {
        id: ApiKeyId::new_random(),
        account_id: account.id,
        secret_hash: hash.to_owned(),
        created_at: Timestamp::from_micros(6),
    };
    let first = admin("admin");
    assert!(
        store
            .bootstrap_admin(&first, &key(&first, "h1"))
            .await
            .unwrap()
    );
    let second = admin("admin2");
    assert!(
        !store
            .bootstrap_admin(&second, &key(&second, "h2"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_account(first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_account(second.id).await.unwrap(), None);
    let found = store.find_api_key("h1").await.unwrap().unwrap();
    assert_eq!(found.account_id, first.id);
    assert_eq!(found.created_at, Timestamp::from_micros(6));
    assert_eq!(store.find_api_key("h2").await.unwrap(), None);

    // Even racing bootstraps create one admin.
    let db2 = TestDb::new(db.backend).await;
    let store2 = Arc::new(db2.open().await);
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&store2);
            tokio::spawn(async move {
                let a = admin(&format!("admin{i}"));
                let k = key(&a, &format!("race{i}"));
                store.bootstrap_admin(&a, &k).await.unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1);
    store2.close().await;
    db2.finish().await;
}

async fn hubs_round_trip_with_versions(db: &TestDb) {
    let store = db.open().await;
    let owner = account(&store, "owner").await;
    let mut h = hub(&owner, "plant", Plan::Ha, 10);
    h.status = HubStatus::Enabling;
    h.disable_events = true;
    h.allow_anonymous = true;
    h.events_topic_prefix = "ev/x".to_owned();
    h.limits.max_payload_bytes = 1234;
    store.insert_hub(&h, 50).await.unwrap();
    assert_eq!(store.get_hub(h.id).await.unwrap(), Some(h.clone()));
    assert_eq!(store.get_hub(HubId::new_random()).await.unwrap(), None);

    let changed = HubRecord {
        name: "plant-2".to_owned(),
        status: HubStatus::Disabled,
        enabled: false,
        disable_events: false,
        enable_device_auto_provisioning: true,
        has_custom_ca: true,
        updated_at: Timestamp::from_micros(20),
        ..h.clone()
    };
    let stored = store.update_hub(&changed, 1, None).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(store.get_hub(h.id).await.unwrap(), Some(stored.clone()));

    let stale = store.update_hub(&changed, 1, None).await.unwrap_err();
    assert!(
        matches!(stale, StoreError::VersionConflict { expected: 1, .. }),
        "{stale}"
    );
    let ghost = HubRecord {
        id: HubId::new_random(),
        ..changed.clone()
    };
    let missing = store.update_hub(&ghost, 1, None).await.unwrap_err();
    assert!(
        matches!(
            missing,
            StoreError::NotFound {
                resource: "hub",
                ..
            }
        ),
        "{missing}"
    );
    assert_eq!(store.get_hub(h.id).await.unwrap(), Some(stored));
}

async fn devices_round_trip_and_names_are_unique_per_hub(db: &TestDb) {
    let store = db.open().await;
    let owner = account(&store, "owner").await;
    let h1 = hub(&owner, "h1", Plan::Dedicated, 1);
    let h2 = hub(&owner, "h2", Plan::Dedicated, 2);
    store.insert_hub(&h1, 50).await.unwrap();
    store.insert_hub(&h2, 50).await.unwrap();

    let mut d = device(&h1, "pump", true, 3);
    d.description = "the pump".to_owned();
    d.allow_multiple_connections = true;
    d.message_filters = MessageFilters {
        publish: FilterRule {
            policy: FilterPolicy::Accept,
            topics: vec![
                "{{ hub.id }}/{{ device.name }}/#".to_owned(),
                "a/+".to_owned(),
            ],
        },
        subscribe: FilterRule::default(),
    };
    store.insert_device(&d, None, 10).await.unwrap();
    assert_eq!(store.get_device(d.id).await.unwrap(), Some(d.clone()));

    let twin = device(&h1, "pump", false, 4);
    let err = store.insert_device(&twin, None, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Duplicate {
                resource: "device",
                field: "name"
            }
        ),
        "{err}"
    );
    let elsewhere = device(&h2, "pump", false, 4);
    store.insert_device(&elsewhere, None, 10).await.unwrap();

    // Moving `d` to h2 collides with h2's "pump".
    let moved = DeviceRecord {
        hub_id: h2.id,
        ..d.clone()
    };
    let err = store.update_device(&moved, 1, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");
    store.delete_device(elsewhere.id, None).await.unwrap();
    let stored = store.update_device(&moved, 1, 10).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(store.get_device(d.id).await.unwrap(), Some(stored.clone()));

    // Activity is not an edit.
    store
        .set_device_last_activity(d.id, Timestamp::from_micros(99))
        .await
        .unwrap();
    let active = store.get_device(d.id).await.unwrap().unwrap();
    assert_eq!(active.last_activity_at, Timestamp::from_micros(99));
    assert_eq!(active.version, 2);

    let err = store.delete_device(d.id, Some(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
    store.delete_device(d.id, Some(2)).await.unwrap();
    let err = store.delete_device(d.id, None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store
        .set_device_last_activity(d.id, Timestamp::EPOCH)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    // A device cannot point at a hub that does not exist.
    let orphan = DeviceRecord {
        hub_id: HubId::new_random(),
        ..device(&h1, "orphan", false, 5)
    };
    let err = store.insert_device(&orphan, None, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                resource: "hub",
                ..
            }
        ),
        "{err}"
    );
}

async fn hub_lists_filter_order_and_page(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let b = account(&store, "b").await;
    let specs = [
        ("delta", Plan::Shared, 40),
        ("alpha", Plan::Ha, 30),
        ("Charlie", Plan::Dedicated, 10),
        ("bravo_1", Plan::Dedicated, 20),
        ("echo%", Plan::Shared, 50),
    ];
    for (name, plan, created) in specs {
        store
            .insert_hub(&hub(&a, name, plan, created), 50)
            .await
            .unwrap();
    }
    store
        .insert_hub(&hub(&b, "zulu", Plan::Shared, 5), 50)
        .await
        .unwrap();
    let of_a = || HubFilter {
        account_id: Some(a.id),
        ..HubFilter::default()
    };

    let cases: &[(&str, &[&str])] = &[
        (
            "name_asc",
            &["Charlie", "alpha", "bravo_1", "delta", "echo%"],
        ),
        (
            "name_desc",
            &["echo%", "delta", "bravo_1", "alpha", "Charlie"],
        ),
        (
            "created_at_asc",
            &["Charlie", "bravo_1", "alpha", "delta", "echo%"],
        ),
        (
            "created_at_desc",
            &["echo%", "delta", "alpha", "bravo_1", "Charlie"],
        ),
        // Ties (two dedicated, two shared) break on the id, so check the plan order only.
    ];
    for (order, want) in cases {
        let page = store.list_hubs(&all(of_a(), order)).await.unwrap();
        let got = names(&page, |h| &h.name);
        // Byte order puts "Charlie" first on SQLite; PostgreSQL's collation may not, so
        // compare against the backend-neutral expectation only where case does not matter.
        if order.starts_with("name") {
            let mut want_sorted: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            let mut got_sorted = got.clone();
            want_sorted.sort();
            got_sorted.sort();
            assert_eq!(got_sorted, want_sorted, "{order}");
            let lower: Vec<String> = got.iter().filter(|n| *n != "Charlie").cloned().collect();
            let want_lower: Vec<String> = want
                .iter()
                .filter(|n| **n != "Charlie")
                .map(|s| (*s).to_owned())
                .collect();
            assert_eq!(lower, want_lower, "{order}");
        } else {
            assert_eq!(got, *want, "{order}");
        }
        assert_eq!(page.total_count, 5);
    }
    let by_plan = store
        .list_hubs(&all(of_a(), "product_plan_desc"))
        .await
        .unwrap();
    let plans: Vec<Plan> = by_plan.items.iter().map(|h| h.plan).collect();
    // Stored words order as plan_dedicated < plan_ha < plan_shared.
    assert_eq!(
        plans,
        [
            Plan::Shared,
            Plan::Shared,
            Plan::Ha,
            Plan::Dedicated,
            Plan::Dedicated
        ]
    );

    // Pages: 2 per page over 5 hubs in creation order.
    let pages: &[(u32, &[&str])] = &[
        (1, &["Charlie", "bravo_1"]),
        (2, &["alpha", "delta"]),
        (3, &["echo%"]),
        (4, &[]),
    ];
    for (page, want) in pages {
        let query = ListQuery {
            filter: of_a(),
            order_by: "created_at_asc".parse().unwrap(),
            paging: Some(Paging {
                page: *page,
                page_size: 2,
            }),
        };
        let got = store.list_hubs(&query).await.unwrap();
        assert_eq!(names(&got, |h| &h.name), *want, "page {page}");
        assert_eq!(got.total_count, 5, "page {page}");
    }

    // Name filter: case-insensitive substring, `%` and `_` literal.
    let filters: &[(&str, &[&str])] = &[
        ("a", &["Charlie", "alpha", "bravo_1", "delta"]),
        ("CHAR", &["Charlie"]),
        ("%", &["echo%"]),
        ("_", &["bravo_1"]),
        ("zulu", &[]),
    ];
    for (needle, want) in filters {
        let filter = HubFilter {
            name: Some((*needle).to_owned()),
            ..of_a()
        };
        let got = store
            .list_hubs(&all(filter, "created_at_asc"))
            .await
            .unwrap();
        let mut got = names(&got, |h| &h.name);
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "name contains {needle:?}");
    }

    // No account filter: every account's hubs (the runtime's load).
    let everything = store
        .list_hubs(&all(HubFilter::default(), "name_asc"))
        .await
        .unwrap();
    assert_eq!(everything.total_count, 6);

    for order in ["hub_id_asc", "type_asc", "allow_insecure_desc"] {
        let err = store.list_hubs(&all(of_a(), order)).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedOrder {
                    resource: "hub",
                    ..
                }
            ),
            "{order}: {err}"
        );
    }
}

async fn device_lists_filter_and_order(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let h1 = hub(&a, "h1", Plan::Dedicated, 1);
    let h2 = hub(&a, "h2", Plan::Dedicated, 2);
    store.insert_hub(&h1, 50).await.unwrap();
    store.insert_hub(&h2, 50).await.unwrap();
    let mut d3 = device(&h2, "d3", true, 30);
    d3.status = DeviceStatus::Disabled;
    d3.allow_multiple_connections = true;
    for d in [
        device(&h1, "d1", false, 10),
        device(&h1, "d2", true, 20),
        d3,
    ] {
        store.insert_device(&d, None, 10).await.unwrap();
    }
    let cases: Vec<(DeviceFilter, &str, Vec<&str>)> = vec![
        (DeviceFilter::default(), "name_desc", vec!["d3", "d2", "d1"]),
        (
            DeviceFilter {
                hub_id: Some(h1.id),
                ..DeviceFilter::default()
            },
            "name_asc",
            vec!["d1", "d2"],
        ),
        (
            DeviceFilter {
                allow_insecure: Some(true),
                ..DeviceFilter::default()
            },
            "created_at_asc",
            vec!["d2", "d3"],
        ),
        (
            DeviceFilter {
                allow_insecure: Some(false),
                ..DeviceFilter::default()
            },
            "name_asc",
            vec!["d1"],
        ),
        (
            DeviceFilter {
                status: Some(DeviceStatus::Disabled),
                ..DeviceFilter::default()
            },
            "name_asc",
            vec!["d3"],
        ),
        (
            DeviceFilter {
                allow_multiple_connections: Some(true),
                ..DeviceFilter::default()
            },
            "name_asc",
            vec!["d3"],
        ),
        (
            DeviceFilter {
                account_id: Some(AccountId::new_random()),
                ..DeviceFilter::default()
            },
            "name_asc",
            vec![],
        ),
        (
            DeviceFilter::default(),
            "status_desc",
            vec!["d1", "d2", "d3"],
        ),
        (DeviceFilter::default(), "hub_id_asc", {
            if h1.id < h2.id {
                vec!["d1", "d2", "d3"]
            } else {
                vec!["d3", "d1", "d2"]
            }
        }),
    ];
    for (filter, order, want) in cases {
        let label = format!("{filter:?} {order}");
        let got = store.list_devices(&all(filter, order)).await.unwrap();
        let got_names = names(&got, |d| &d.name);
        if order == "status_desc" {
            // enabled > disabled: the disabled one comes last; ties by id.
            assert_eq!(got_names.last().map(String::as_str), Some("d3"), "{label}");
        } else if order == "hub_id_asc" {
            let hubs: Vec<HubId> = got.items.iter().map(|d| d.hub_id).collect();
            let mut sorted = hubs.clone();
            sorted.sort_by_key(|h| h.to_string());
            assert_eq!(hubs, sorted, "{label}");
        } else {
            assert_eq!(got_names, want, "{label}");
        }
    }
    let insecure_first = store
        .list_devices(&all(DeviceFilter::default(), "allow_insecure_desc"))
        .await
        .unwrap();
    assert_eq!(
        insecure_first
            .items
            .iter()
            .map(|d| d.allow_insecure)
            .collect::<Vec<_>>(),
        [true, true, false]
    );

    let counts = store
        .count_devices(&[h1.id, h2.id, HubId::new_random()])
        .await
        .unwrap();
    let mut counts: Vec<(String, u64)> = counts
        .into_iter()
        .map(|(h, n)| (h.to_string(), n))
        .collect();
    counts.sort();
    let mut want = vec![(h1.id.to_string(), 2), (h2.id.to_string(), 1)];
    want.sort();
    assert_eq!(counts, want);
    assert!(store.count_devices(&[]).await.unwrap().is_empty());
}

async fn quotas_hold_under_concurrency(db: &TestDb) {
    let store = Arc::new(db.open().await);
    let a = account(store.as_ref(), "a").await;

    // Hubs are counted per plan.
    store
        .insert_hub(&hub(&a, "s1", Plan::Shared, 1), 2)
        .await
        .unwrap();
    store
        .insert_hub(&hub(&a, "s2", Plan::Shared, 2), 2)
        .await
        .unwrap();
    let err = store
        .insert_hub(&hub(&a, "s3", Plan::Shared, 3), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                resource: "hubs",
                current: 2,
                quota: 2
            }
        ),
        "{err}"
    );
    let d1 = hub(&a, "d1", Plan::Dedicated, 4);
    store.insert_hub(&d1, 2).await.unwrap();
    // A plan change into a full plan is refused too.
    let to_shared = HubRecord {
        plan: Plan::Shared,
        ..d1.clone()
    };
    let err = store.update_hub(&to_shared, 1, Some(2)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::QuotaExceeded { current: 2, .. }),
        "{err}"
    );

    // Ten devices race for three places.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(&store);
            let d = device(&d1, &format!("dev{i}"), false, i);
            tokio::spawn(async move { store.insert_device(&d, None, 3).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::QuotaExceeded { quota: 3, .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 3);
    let page = store
        .list_devices(&all(DeviceFilter::default(), "name_asc"))
        .await
        .unwrap();
    assert_eq!(page.total_count, 3);

    // Moving a device into a full hub is refused; within the quota it works.
    let other = hub(&a, "d2", Plan::Dedicated, 5);
    store.insert_hub(&other, 2).await.unwrap();
    let mover = DeviceRecord {
        hub_id: other.id,
        ..page.items[0].clone()
    };
    let err = store.update_device(&mover, 1, 0).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                current: 0,
                quota: 0,
                ..
            }
        ),
        "{err}"
    );
    store.update_device(&mover, 1, 1).await.unwrap();

    store
        .insert_route(&route(&d1, "r1", rest_config(), 1), 1)
        .await
        .unwrap();
    let err = store
        .insert_route(&route(&d1, "r2", rest_config(), 2), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                resource: "routes",
                ..
            }
        ),
        "{err}"
    );
    store
        .insert_network(&network(&d1, "n1", NetworkType::Rest, "in"), 1)
        .await
        .unwrap();
    let err = store
        .insert_network(&network(&d1, "n2", NetworkType::Rest, "in"), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                resource: "networks",
                ..
            }
        ),
        "{err}"
    );
}

async fn hub_deletion_rules(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let h = hub(&a, "h", Plan::Dedicated, 1);
    store.insert_hub(&h, 50).await.unwrap();
    let d1 = device(&h, "d1", false, 1);
    let d2 = device(&h, "d2", false, 2);
    store.insert_device(&d1, None, 10).await.unwrap();
    store.insert_device(&d2, None, 10).await.unwrap();
    let r = route(&h, "r", s3_config(), 1);
    store.insert_route(&r, 10).await.unwrap();
    let n = network(&h, "n", NetworkType::Sigfox, "sigfox");
    store.insert_network(&n, 10).await.unwrap();

    let err = store.delete_hub(h.id, None, false).await.unwrap_err();
    assert!(
        matches!(err, StoreError::HubHasDevices { devices: 2, .. }),
        "{err}"
    );
    let err = store.delete_hub(h.id, Some(7), true).await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionConflict { expected: 7, .. }),
        "{err}"
    );
    assert!(store.get_device(d1.id).await.unwrap().is_some());

    let mut deleted = store.delete_hub(h.id, Some(1), true).await.unwrap();
    deleted.sort();
    let mut want = vec![d1.id, d2.id];
    want.sort();
    assert_eq!(deleted, want);
    assert_eq!(store.get_hub(h.id).await.unwrap(), None);
    assert_eq!(store.get_device(d1.id).await.unwrap(), None);
    assert_eq!(store.get_route(r.id).await.unwrap(), None);
    assert_eq!(store.get_network(n.id).await.unwrap(), None);
    let err = store.delete_hub(h.id, None, true).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                resource: "hub",
                ..
            }
        ),
        "{err}"
    );

    // An empty hub goes without delete_devices.
    let empty = hub(&a, "empty", Plan::Dedicated, 2);
    store.insert_hub(&empty, 50).await.unwrap();
    assert!(
        store
            .delete_hub(empty.id, None, false)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn routes_and_networks_round_trip(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let h = hub(&a, "h", Plan::Dedicated, 1);
    store.insert_hub(&h, 50).await.unwrap();
    let routes = [
        route(&h, "to-rest", rest_config(), 1),
        route(&h, "to-s3", s3_config(), 2),
        route(&h, "to-db", db_config(), 3),
    ];
    for r in &routes {
        store.insert_route(r, 100).await.unwrap();
        assert_eq!(store.get_route(r.id).await.unwrap().as_ref(), Some(r));
    }
    let by_type = store
        .list_routes(&all(RouteFilter::default(), "type_asc"))
        .await
        .unwrap();
    assert_eq!(names(&by_type, |r| &r.name), ["to-db", "to-rest", "to-s3"]);
    let filtered = store
        .list_routes(&all(
            RouteFilter {
                hub_id: Some(h.id),
                name: Some("S3".to_owned()),
                ..RouteFilter::default()
            },
            "name_asc",
        ))
        .await
        .unwrap();
    assert_eq!(names(&filtered, |r| &r.name), ["to-s3"]);

    let updated = RouteRecord {
        name: "to-rest-2".to_owned(),
        topic: "a/+".to_owned(),
        ..routes[0].clone()
    };
    let stored = store.update_route(&updated, 1).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(store.get_route(updated.id).await.unwrap(), Some(stored));
    let err = store.update_route(&updated, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
    let err = store.delete_route(updated.id, Some(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
    store.delete_route(updated.id, Some(2)).await.unwrap();
    let err = store.delete_route(updated.id, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                resource: "route",
                ..
            }
        ),
        "{err}"
    );

    let n1 = network(&h, "rest-in", NetworkType::Rest, "rest/in");
    let n2 = network(&h, "lora", NetworkType::Lorawan, "lora");
    for n in [&n1, &n2] {
        store.insert_network(n, 100).await.unwrap();
        assert_eq!(store.get_network(n.id).await.unwrap().as_ref(), Some(n));
    }
    let by_prefix = store
        .list_networks(&all(
            NetworkFilter {
                topic_prefix: Some("lora".to_owned()),
                ..NetworkFilter::default()
            },
            "name_asc",
        ))
        .await
        .unwrap();
    assert_eq!(names(&by_prefix, |n| &n.name), ["lora"]);
    let by_type = store
        .list_networks(&all(NetworkFilter::default(), "type_desc"))
        .await
        .unwrap();
    assert_eq!(names(&by_type, |n| &n.name), ["rest-in", "lora"]);
    store.delete_network(n1.id).await.unwrap();
    let err = store.delete_network(n1.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                resource: "network",
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .list_networks(&all(NetworkFilter::default(), "status_asc"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedOrder { .. }), "{err}");
}

async fn records_survive_a_reopen(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let h = hub(&a, "h", Plan::Ha, 1);
    store.insert_hub(&h, 50).await.unwrap();
    let d = device(&h, "d", true, 2);
    store.insert_device(&d, None, 10).await.unwrap();
    let r = route(&h, "r", db_config(), 3);
    store.insert_route(&r, 10).await.unwrap();
    let n = network(&h, "n", NetworkType::Sigfox, "sf");
    store.insert_network(&n, 10).await.unwrap();
    store.close().await;

    let reopened = SqlStore::open(&db.url).await.unwrap();
    reopened.migrate().await.unwrap();
    assert_eq!(reopened.get_account(a.id).await.unwrap(), Some(a));
    assert_eq!(reopened.get_hub(h.id).await.unwrap(), Some(h));
    assert_eq!(reopened.get_device(d.id).await.unwrap(), Some(d));
    assert_eq!(reopened.get_route(r.id).await.unwrap(), Some(r));
    assert_eq!(reopened.get_network(n.id).await.unwrap(), Some(n));
}

async fn corrupt_rows_are_reported(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let h = hub(&a, "h", Plan::Dedicated, 1);
    store.insert_hub(&h, 50).await.unwrap();
    let cases = [
        (
            "UPDATE hubs SET status = 'sleeping' WHERE id = $1",
            "status",
        ),
        (
            "UPDATE hubs SET status = 'ready', plan = 'plan_free' WHERE id = $1",
            "plan",
        ),
        (
            "UPDATE hubs SET plan = 'plan_ha', limits = '{\"nope\": 1}' WHERE id = $1",
            "limits",
        ),
    ];
    for (sql, column) in cases {
        sqlx::query(sql)
            .bind(h.id.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        let err = store.get_hub(h.id).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "hubs", column: c, .. } if *c == column),
            "{column}: {err}"
        );
    }
}

async fn unknown_urls_are_refused(_db: &TestDb) {
    let err = SqlStore::open("mysql://user:secret@127.0.0.1/x")
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::UnsupportedUrl(_)), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

/// A LoRaWAN network keeps its network server (URL and token), and a LoRaWAN device the
/// DevNonces of its accepted join-requests, appended in order, its frame counter untouched.
async fn network_servers_and_dev_nonces_round_trip(db: &TestDb) {
    let store = db.open().await;
    let a = account(&store, "a").await;
    let h = hub(&a, "h", Plan::Dedicated, 1);
    store.insert_hub(&h, 50).await.unwrap();
    let n = NetworkRecord {
        ns_url: Some("http://127.0.0.1:8090".to_owned()),
        ns_token: Some("token-1".to_owned()),
        ..network(&h, "lora", NetworkType::Lorawan, "lora")
    };
    store.insert_network(&n, 100).await.unwrap();
    assert_eq!(store.get_network(n.id).await.unwrap().as_ref(), Some(&n));
    let device = LorawanDeviceRecord {
        network_id: n.id,
        dev_eui: "a1b2c3d4e5f60718".to_owned(),
        hub_id: h.id,
        account_id: a.id,
        join_eui: None,
        app_key: Some("8f4a2c1be0d3a5967c18e2f05b4d3a21".to_owned()),
        dev_addr: None,
        nwk_s_key: None,
        app_s_key: None,
        f_cnt_up: 7,
        dev_nonces: Vec::new(),
        created_at: Timestamp::from_micros(3),
    };
    store.insert_lorawan_device(&device).await.unwrap();
    for nonce in [0x4c2b, 0x0001, 0xffff] {
        store
            .add_lorawan_dev_nonce(n.id, &device.dev_eui, nonce)
            .await
            .unwrap();
    }
    let got = store
        .get_lorawan_device(n.id, &device.dev_eui)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.dev_nonces, vec![0x4c2b, 0x0001, 0xffff]);
    assert_eq!(got.f_cnt_up, 7);
}

on_both_backends!(
    migrations_are_idempotent_and_refuse_newer_schemas,
    bootstrap_happens_once,
    hubs_round_trip_with_versions,
    devices_round_trip_and_names_are_unique_per_hub,
    hub_lists_filter_order_and_page,
    device_lists_filter_and_order,
    quotas_hold_under_concurrency,
    hub_deletion_rules,
    routes_and_networks_round_trip,
    network_servers_and_dev_nonces_round_trip,
    records_survive_a_reopen,
    corrupt_rows_are_reported,
    unknown_urls_are_refused,
);

#[test]
fn order_by_default_is_name_asc() {
    assert_eq!(OrderBy::default().to_string(), "name_asc");
}

/// Paths with URL-special characters still name the right file.
#[tokio::test]
async fn sqlite_paths_with_special_characters() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "plain.db",
        "with space.db",
        "per%cent.db",
        "what?.db",
        "hash#.db",
    ] {
        let path = dir.path().join(name);
        let store = SqlStore::open(&SqlStore::sqlite_url(&path)).await.unwrap();
        store.migrate().await.unwrap();
        store.close().await;
        assert!(path.exists(), "{name}");
    }
}
