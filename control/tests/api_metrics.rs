//! The metrics API through the HTTP router on SQLite and PostgreSQL (every answer checked
//! against `control/openapi.json` by the harness): the series' shape and lengths per
//! period, what was recorded showing up in the interval in progress, tenancy and bad
//! parameters, and the rings surviving a restart while deleted hubs and devices leave
//! none behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_common;

use api_common::{Api, Client, id_of};
use iothub_control::Timestamp;
use iothub_control::metrics::MetricObject;
use iothub_control::registry::RegistryConfig;
use iothub_model::{DeviceId, HubId};
use serde_json::{Value, json};

api_tests!(
    series_have_the_documented_shape_and_length,
    metrics_are_scoped_and_parameters_checked,
    rings_survive_a_restart_and_deletions_leave_none,
);

async fn hub_and_device(alice: &Client<'_>, name: &str) -> (String, String) {
    let hub = id_of(
        &alice
            .post("hubs")
            .json(json!({"name": name}))
            .send()
            .await
            .expect(200),
    );
    let device = id_of(
        &alice
            .post("devices")
            .json(json!({"hub_id": hub, "name": format!("{name}-dev")}))
            .send()
            .await
            .expect(200),
    );
    (hub, device)
}

/// What the binary does with the engine's counts, here by hand; answers when.
fn record(api: &Api, hub: &str, messages: u64, devices: &[(&str, u64)]) -> Timestamp {
    let devices: Vec<(DeviceId, u64)> = devices
        .iter()
        .map(|(d, n)| (d.parse().unwrap(), *n))
        .collect();
    let now = Timestamp::now();
    api.registry
        .metrics()
        .record(now, hub.parse::<HubId>().unwrap(), messages, &devices);
    now
}

/// Each series' sum: what was recorded lies in the window whichever interval boundary the
/// clock crossed meanwhile.
fn sums(body: &Value) -> Vec<(String, u64)> {
    values(body)
        .into_iter()
        .map(|(name, points)| (name, points.iter().sum()))
        .collect()
}

/// The series of a metrics answer by name: the points' values.
fn values(body: &Value) -> Vec<(String, Vec<u64>)> {
    body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let points = s["points"].as_array().unwrap();
            let values = points.iter().map(|p| p[1].as_u64().unwrap()).collect();
            (s["name"].as_str().unwrap().to_owned(), values)
        })
        .collect()
}

async fn series_have_the_documented_shape_and_length(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let (hub, device) = hub_and_device(&alice, "plant").await;
    record(api, &hub, 7, &[(&device, 5)]);
    // (query, points per series)
    let table = [
        ("", 60),
        ("?period=hour", 60),
        ("?period=day", 24),
        ("?period=week", 42),
        ("?period=month", 30),
        ("?period=year", 12),
    ];
    for (query, len) in table {
        for (path, names, sum) in [
            (
                format!("hubs/{hub}/metrics{query}"),
                ["messages", "active_devices"],
                [7, 1],
            ),
            (
                format!("devices/{device}/metrics{query}"),
                ["messages", "activity"],
                [5, 1],
            ),
        ] {
            let body = alice.get(&path).send().await.expect(200);
            let got = values(&body);
            assert_eq!(got.len(), 2, "{path}: {body}");
            for ((name, points), (want_name, want_sum)) in got.iter().zip(names.iter().zip(sum)) {
                assert_eq!(name, want_name, "{path}");
                assert_eq!(points.len(), len, "{path} {name}");
                // Recorded just now: in the interval in progress, or the one before if the
                // clock crossed a boundary since.
                assert_eq!(
                    points[len - 2..].iter().sum::<u64>(),
                    want_sum,
                    "{path} {name}"
                );
                assert_eq!(points.iter().sum::<u64>(), want_sum, "{path} {name}");
            }
            let times: Vec<&str> = body["metrics"][0]["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[0].as_str().unwrap())
                .collect();
            let mut sorted = times.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted, times,
                "{path}: oldest first, one point per interval"
            );
        }
    }
    // start_date picks the period: 10 minutes back is the hour, by minute, trimmed.
    let ten_minutes_ago = Timestamp::from_micros(Timestamp::now().as_micros() - 600_000_000);
    let body = alice
        .get(&format!("hubs/{hub}/metrics?start_date={ten_minutes_ago}"))
        .send()
        .await
        .expect(200);
    assert_eq!(body["metrics"][0]["metadata"]["period"], "hour", "{body}");
    let points = body["metrics"][0]["points"].as_array().unwrap().len();
    assert!((10..=11).contains(&points), "{points} points: {body}");
}

async fn metrics_are_scoped_and_parameters_checked(api: &Api) {
    let alice = api.client(&api.new_account("alice").await);
    let bob = api.client(&api.new_account("bob").await);
    let (hub, device) = hub_and_device(&alice, "plant").await;
    for path in [
        format!("hubs/{hub}/metrics"),
        format!("devices/{device}/metrics"),
    ] {
        bob.get(&path)
            .send()
            .await
            .expect_error(404, "not_found", None);
        let future = Timestamp::from_micros(Timestamp::now().as_micros() + 3_600_000_000);
        // (query, field named in the refusal)
        let table = [
            ("?period=minute".to_owned(), "period"),
            ("?period=".to_owned(), "period"),
            ("?start_date=yesterday".to_owned(), "start_date"),
            ("?start_date=2024-05-01T12:00:00".to_owned(), "start_date"),
            (format!("?start_date={future}"), "start_date"),
            ("?period=day&period=hour".to_owned(), "period"),
            ("?resolution=minute".to_owned(), "resolution"),
        ];
        for (query, field) in table {
            alice
                .get(&format!("{path}{query}"))
                .send()
                .await
                .expect_error(400, "invalid_arguments", Some(field));
        }
    }
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("hubs/{unknown}/metrics"),
        format!("devices/{unknown}/metrics"),
    ] {
        alice
            .get(&path)
            .send()
            .await
            .expect_error(404, "not_found", None);
    }
}

async fn rings_survive_a_restart_and_deletions_leave_none(api: &Api) {
    let alice_key = api.new_account("alice").await;
    let alice = api.client(&alice_key);
    let (hub, device) = hub_and_device(&alice, "plant").await;
    let (gone_hub, gone_device) = hub_and_device(&alice, "gone").await;
    let first = record(api, &hub, 9, &[(&device, 4)]);
    record(api, &gone_hub, 3, &[(&gone_device, 3)]);
    let rows = api.registry.save_metrics().await.unwrap();
    assert_eq!(
        rows,
        4 * 5,
        "two hubs and two devices, five resolutions each"
    );
    assert_eq!(
        api.registry.save_metrics().await.unwrap(),
        0,
        "nothing changed"
    );
    let before = alice
        .get(&format!("hubs/{hub}/metrics?period=day"))
        .send()
        .await
        .expect(200);

    alice
        .delete(&format!("hubs/{gone_hub}?delete_devices=true"))
        .send()
        .await
        .expect(204);
    let stored = api.registry.store().load_metric_rings().await.unwrap();
    let objects: std::collections::HashSet<MetricObject> =
        stored.iter().map(|r| r.object).collect();
    assert_eq!(
        objects,
        [
            MetricObject::Hub(hub.parse().unwrap()),
            MetricObject::Device(device.parse().unwrap()),
        ]
        .into(),
        "the deleted hub's and device's rows went with them"
    );

    let restarted = api.reopen(RegistryConfig::default()).await;
    assert_eq!(restarted.registry.load_metrics().await.unwrap(), 2 * 5);
    let alice = restarted.client(&alice_key);
    let after = alice
        .get(&format!("hubs/{hub}/metrics?period=day"))
        .send()
        .await
        .expect(200);
    assert_eq!(sums(&after), sums(&before));
    assert_eq!(
        sums(&after),
        [("messages".to_owned(), 9), ("active_devices".to_owned(), 1)]
    );
    // A device already counted in the interval in progress is not counted again.
    let second = record(&restarted, &hub, 1, &[(&device, 1)]);
    let again = alice
        .get(&format!("hubs/{hub}/metrics?period=day"))
        .send()
        .await
        .expect(200);
    let hour = iothub_control::metrics::Resolution::Hour;
    let active = if hour.index_of(first) == hour.index_of(second) {
        1
    } else {
        2
    };
    assert_eq!(
        sums(&again),
        [
            ("messages".to_owned(), 10),
            ("active_devices".to_owned(), active)
        ],
        "{again}"
    );
    alice
        .delete(&format!("devices/{device}"))
        .send()
        .await
        .expect(204);
    let stored = restarted
        .registry
        .store()
        .load_metric_rings()
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|r| r.object == MetricObject::Hub(hub.parse().unwrap())),
        "{stored:?}"
    );
    restarted.close().await;
}
