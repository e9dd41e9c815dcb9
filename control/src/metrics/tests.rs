use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn device(n: u128) -> DeviceId {
    DeviceId::from_uuid(uuid::Uuid::from_u128(n))
}

fn hub(n: u128) -> HubId {
    HubId::from_uuid(uuid::Uuid::from_u128(n))
}

/// (time, value) of a series, times as text.
fn points(response: &MetricsResponse, name: &str) -> Vec<(String, u64)> {
    let series = response
        .metrics
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no series {name}"));
    series
        .points
        .iter()
        .map(|p| (p.time.to_string(), p.value))
        .collect()
}

/// The non-zero points only.
fn nonzero(response: &MetricsResponse, name: &str) -> Vec<(String, u64)> {
    points(response, name)
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn range(period: Period, now: &str) -> SeriesRange {
    SeriesRange::new(Some(period), None, at(now)).unwrap()
}

#[test]
fn intervals_start_on_utc_boundaries() {
    let t = at("2024-05-01T13:34:56.789Z");
    // (resolution, start of the interval holding t)
    let table = [
        (Resolution::Minute, "2024-05-01T13:34:00.000000Z"),
        (Resolution::Hour, "2024-05-01T13:00:00.000000Z"),
        (Resolution::FourHours, "2024-05-01T12:00:00.000000Z"),
        (Resolution::Day, "2024-05-01T00:00:00.000000Z"),
        (Resolution::Month, "2024-05-01T00:00:00.000000Z"),
    ];
    for (resolution, start) in table {
        let index = resolution.index_of(t);
        assert_eq!(
            resolution.start_of(index).to_string(),
            start,
            "{resolution:?}"
        );
        assert_eq!(resolution.index_of(resolution.start_of(index)), index);
        assert!(resolution.start_of(index + 1) > t, "{resolution:?}");
        assert_eq!(resolution.as_str().parse::<Resolution>(), Ok(resolution));
    }
    // Months have their calendar lengths, across years.
    let months = [
        (
            "2024-02-29T23:59:59Z",
            "2024-02-01T00:00:00.000000Z",
            "2024-03-01T00:00:00.000000Z",
        ),
        (
            "2023-12-31T12:00:00Z",
            "2023-12-01T00:00:00.000000Z",
            "2024-01-01T00:00:00.000000Z",
        ),
        (
            "1969-12-15T00:00:00Z",
            "1969-12-01T00:00:00.000000Z",
            "1970-01-01T00:00:00.000000Z",
        ),
    ];
    for (t, start, next) in months {
        let i = Resolution::Month.index_of(at(t));
        assert_eq!(Resolution::Month.start_of(i).to_string(), start, "{t}");
        assert_eq!(Resolution::Month.start_of(i + 1).to_string(), next, "{t}");
    }
}

#[test]
fn periods_and_their_ranges() {
    let now = "2024-05-01T13:34:56Z";
    // (period, start_date) -> (period chosen, points, first point)
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Period,
        usize,
        &'static str,
    );
    let table: &[Case] = &[
        (None, None, Period::Hour, 60, "2024-05-01T12:35:00.000000Z"),
        (
            Some("hour"),
            None,
            Period::Hour,
            60,
            "2024-05-01T12:35:00.000000Z",
        ),
        (
            Some("day"),
            None,
            Period::Day,
            24,
            "2024-04-30T14:00:00.000000Z",
        ),
        (
            Some("week"),
            None,
            Period::Week,
            42,
            "2024-04-24T16:00:00.000000Z",
        ),
        (
            Some("month"),
            None,
            Period::Month,
            30,
            "2024-04-02T00:00:00.000000Z",
        ),
        (
            Some("year"),
            None,
            Period::Year,
            12,
            "2023-06-01T00:00:00.000000Z",
        ),
        // start_date picks the shortest period reaching it and trims the points before it.
        (
            None,
            Some("2024-05-01T13:30:10Z"),
            Period::Hour,
            5,
            "2024-05-01T13:30:00.000000Z",
        ),
        (
            None,
            Some("2024-05-01T12:34:56Z"),
            Period::Hour,
            60,
            "2024-05-01T12:35:00.000000Z",
        ),
        (
            None,
            Some("2024-05-01T12:34:55Z"),
            Period::Day,
            2,
            "2024-05-01T12:00:00.000000Z",
        ),
        (
            None,
            Some("2024-04-29T00:00:00Z"),
            Period::Week,
            16,
            "2024-04-29T00:00:00.000000Z",
        ),
        (
            None,
            Some("2024-04-10T00:00:00Z"),
            Period::Month,
            22,
            "2024-04-10T00:00:00.000000Z",
        ),
        (
            None,
            Some("2020-01-01T00:00:00Z"),
            Period::Year,
            12,
            "2023-06-01T00:00:00.000000Z",
        ),
        (
            None,
            Some("2024-05-01T13:34:56Z"),
            Period::Hour,
            1,
            "2024-05-01T13:34:00.000000Z",
        ),
        // Both: the period decides the resolution, start_date trims.
        (
            Some("day"),
            Some("2024-05-01T10:00:00Z"),
            Period::Day,
            4,
            "2024-05-01T10:00:00.000000Z",
        ),
    ];
    for (period, start, want_period, count, first) in table {
        let period = period.map(|p| p.parse::<Period>().unwrap());
        let r = SeriesRange::new(period, start.map(at), at(now)).unwrap();
        let response = MetricRings::default().hub_series(hub(1), &r);
        let got = points(&response, "messages");
        let case = format!("{period:?} {start:?}");
        assert_eq!(r.period, *want_period, "{case}");
        assert_eq!(got.len(), *count, "{case}");
        assert_eq!(got[0].0, *first, "{case}");
        let last = r
            .resolution
            .start_of(r.resolution.index_of(at(now)))
            .to_string();
        assert_eq!(
            got[got.len() - 1].0,
            last,
            "{case}: ends with the interval in progress"
        );
    }
    assert_eq!(
        SeriesRange::new(None, Some(at("2024-05-01T13:35:00Z")), at(now)),
        Err(RangeError::StartInFuture)
    );
    for bad in ["", "Hour", "minute", "days"] {
        assert_eq!(bad.parse::<Period>(), Err(InvalidPeriod), "{bad:?}");
    }
}

#[test]
fn every_packet_counts_and_devices_are_active_once_per_interval() {
    let rings = MetricRings::default();
    let (h, a, b) = (hub(1), device(1), device(2));
    // (time, hub messages, devices) as the binary records them
    type Feed<'a> = (&'a str, u64, &'a [(DeviceId, u64)]);
    let feed: &[Feed] = &[
        ("2024-05-01T10:00:05Z", 7, &[(a, 4)]),
        ("2024-05-01T10:00:40Z", 3, &[(a, 1), (b, 2)]),
        ("2024-05-01T10:01:10Z", 2, &[(b, 2)]),
        ("2024-05-01T10:03:00Z", 1, &[]),
    ];
    for (t, messages, devices) in feed {
        rings.record(at(t), h, *messages, devices);
    }
    let hour = range(Period::Hour, "2024-05-01T10:05:00Z");
    let r = rings.hub_series(h, &hour);
    assert_eq!(
        nonzero(&r, "messages"),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 10),
            ("2024-05-01T10:01:00.000000Z".into(), 2),
            ("2024-05-01T10:03:00.000000Z".into(), 1),
        ]
    );
    assert_eq!(
        nonzero(&r, "active_devices"),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 2),
            ("2024-05-01T10:01:00.000000Z".into(), 1),
        ]
    );
    let day = rings.hub_series(h, &range(Period::Day, "2024-05-01T10:05:00Z"));
    assert_eq!(
        nonzero(&day, "messages"),
        [("2024-05-01T10:00:00.000000Z".into(), 13)]
    );
    assert_eq!(
        nonzero(&day, "active_devices"),
        [("2024-05-01T10:00:00.000000Z".into(), 2)]
    );
    let dev = rings.device_series(b, &hour);
    assert_eq!(
        nonzero(&dev, "messages"),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 2),
            ("2024-05-01T10:01:00.000000Z".into(), 2),
        ]
    );
    assert_eq!(
        nonzero(&dev, "activity"),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 1),
            ("2024-05-01T10:01:00.000000Z".into(), 1),
        ]
    );
    // Nothing leaks to other hubs or devices.
    assert!(nonzero(&rings.hub_series(hub(2), &hour), "messages").is_empty());
    assert!(nonzero(&rings.device_series(device(3), &hour), "messages").is_empty());
}

#[test]
fn rings_are_bounded_and_forget_what_left_the_period() {
    let rings = MetricRings::default();
    let h = hub(1);
    rings.record(at("2024-05-01T10:00:00Z"), h, 5, &[]);
    // 61 minutes later, the minute ring has reused the slot; the hour ring still has it.
    rings.record(at("2024-05-01T11:00:30Z"), h, 1, &[]);
    let hour = rings.hub_series(h, &range(Period::Hour, "2024-05-01T11:01:00Z"));
    assert_eq!(
        nonzero(&hour, "messages"),
        [("2024-05-01T11:00:00.000000Z".into(), 1)]
    );
    let day = rings.hub_series(h, &range(Period::Day, "2024-05-01T11:01:00Z"));
    assert_eq!(
        nonzero(&day, "messages"),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 5),
            ("2024-05-01T11:00:00.000000Z".into(), 1),
        ]
    );
    // A count for an interval already pushed out of the ring is not recorded over it.
    rings.record(at("2024-05-01T10:00:10Z"), h, 100, &[]);
    let hour = rings.hub_series(h, &range(Period::Hour, "2024-05-01T11:01:00Z"));
    assert_eq!(
        nonzero(&hour, "messages"),
        [("2024-05-01T11:00:00.000000Z".into(), 1)]
    );
    let saved = rings.take_dirty(at("2024-05-01T11:01:00Z"));
    let minute = saved
        .iter()
        .find(|r| r.resolution == Resolution::Minute)
        .unwrap();
    assert!(minute.buckets.len() <= Resolution::Minute.slots());
}

#[test]
fn saved_rings_come_back_with_the_interval_in_progress() {
    let (h, a, b) = (hub(1), device(1), device(2));
    let rings = MetricRings::default();
    rings.record(at("2024-05-01T10:00:05Z"), h, 3, &[(a, 3)]);
    rings.record(at("2024-05-01T10:30:00Z"), h, 1, &[(b, 1)]);
    let saved = rings.take_dirty(at("2024-05-01T10:30:01Z"));
    assert_eq!(
        saved.len(),
        3 * Resolution::ALL.len(),
        "one hub, two devices"
    );
    assert!(rings.take_dirty(at("2024-05-01T10:30:02Z")).is_empty());

    let restarted = MetricRings::default();
    restarted.restore(&saved, at("2024-05-01T10:40:00Z"));
    // Both were active earlier in the hour in progress.
    restarted.record(at("2024-05-01T10:40:00Z"), h, 2, &[(a, 1), (b, 1)]);
    let day = restarted.hub_series(h, &range(Period::Day, "2024-05-01T10:41:00Z"));
    assert_eq!(
        nonzero(&day, "messages"),
        [("2024-05-01T10:00:00.000000Z".into(), 6)]
    );
    assert_eq!(
        nonzero(&day, "active_devices"),
        [("2024-05-01T10:00:00.000000Z".into(), 2)],
        "devices active before the restart are not counted twice"
    );
    let hour = restarted.hub_series(h, &range(Period::Hour, "2024-05-01T10:41:00Z"));
    assert_eq!(
        nonzero(&hour, "active_devices"),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 1),
            ("2024-05-01T10:30:00.000000Z".into(), 1),
            ("2024-05-01T10:40:00.000000Z".into(), 2),
        ]
    );
    assert_eq!(
        nonzero(
            &restarted.device_series(a, &range(Period::Hour, "2024-05-01T10:41:00Z")),
            "messages"
        ),
        [
            ("2024-05-01T10:00:00.000000Z".into(), 3),
            ("2024-05-01T10:40:00.000000Z".into(), 1),
        ]
    );
    // A failed save gives its rows back.
    let pending = restarted.take_dirty(at("2024-05-01T10:41:00Z"));
    assert!(!pending.is_empty());
    restarted.mark_dirty(&pending);
    assert_eq!(
        restarted.take_dirty(at("2024-05-01T10:41:00Z")).len(),
        pending.len()
    );
}

#[test]
fn deleted_hubs_and_devices_are_forgotten() {
    let (h, other, a, b) = (hub(1), hub(2), device(1), device(2));
    let rings = MetricRings::default();
    rings.record(at("2024-05-01T10:00:00Z"), h, 2, &[(a, 2)]);
    rings.record(at("2024-05-01T10:00:00Z"), other, 1, &[(b, 1)]);
    let hour = range(Period::Hour, "2024-05-01T10:01:00Z");
    rings.forget_device(b);
    assert!(nonzero(&rings.device_series(b, &hour), "messages").is_empty());
    rings.forget_hub(h);
    assert!(nonzero(&rings.hub_series(h, &hour), "messages").is_empty());
    assert!(nonzero(&rings.device_series(a, &hour), "messages").is_empty());
    assert_eq!(
        nonzero(&rings.hub_series(other, &hour), "messages").len(),
        1
    );
    let saved = rings.take_dirty(at("2024-05-01T10:01:00Z"));
    assert!(
        saved.iter().all(|r| r.object == MetricObject::Hub(other)),
        "{saved:?}"
    );
}

#[test]
fn answers_have_the_reference_shape() {
    let rings = MetricRings::default();
    rings.record(at("2024-05-01T10:00:00Z"), hub(1), 4, &[]);
    let r = SeriesRange::new(
        None,
        Some(at("2024-05-01T10:00:30Z")),
        at("2024-05-01T10:01:00Z"),
    )
    .unwrap();
    let json = serde_json::to_value(rings.hub_series(hub(1), &r)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"metrics": [
            {
                "name": "messages",
                "points": [["2024-05-01T10:00:00.000000Z", 4], ["2024-05-01T10:01:00.000000Z", 0]],
                "metadata": {"period": "hour", "resolution": "minute"},
            },
            {
                "name": "active_devices",
                "points": [["2024-05-01T10:00:00.000000Z", 0], ["2024-05-01T10:01:00.000000Z", 0]],
                "metadata": {"period": "hour", "resolution": "minute"},
            },
        ]})
    );
    for (kind, id) in [
        ("hub", hub(7).to_string()),
        ("device", device(7).to_string()),
    ] {
        let object = MetricObject::parse(kind, &id).unwrap();
        assert_eq!((object.kind(), object.id()), (kind, id));
    }
    assert_eq!(MetricObject::parse("route", &hub(7).to_string()), None);
    assert_eq!(MetricObject::parse("hub", "not-a-uuid"), None);
}
