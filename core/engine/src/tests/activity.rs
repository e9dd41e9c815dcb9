//! Traffic counted for the metrics API (`Engine::take_activity`) and the session totals of
//! `HubStats`.

use super::*;

/// (packets received, packets sent) on one connection's `Traffic`.
fn exchange(traffic: &Traffic, received: u64, sent: u64) {
    for _ in 0..received {
        traffic.packet_received();
    }
    for _ in 0..sent {
        traffic.packet_sent();
    }
}

fn activity_of(fx: &Fx) -> Option<HubActivity> {
    fx.engine
        .take_activity()
        .into_iter()
        .find(|a| a.hub == fx.hub)
}

#[test]
fn every_packet_counts_once_for_its_hub_and_device() {
    // (connections: (device index or anonymous, received, sent, ended before collecting))
    // -> messages of the hub, and of devices 0 and 1
    type Conn = (Option<usize>, u64, u64, bool);
    let table: &[(&[Conn], u64, [u64; 2])] = &[
        (&[(Some(0), 3, 2, false)], 5, [5, 0]),
        (&[(None, 4, 4, false)], 8, [0, 0]),
        (&[(Some(0), 1, 0, true)], 1, [1, 0]),
        (
            &[
                (Some(0), 2, 1, false),
                (Some(1), 0, 7, true),
                (None, 1, 1, true),
            ],
            12,
            [3, 7],
        ),
        (&[(Some(1), 0, 0, false)], 0, [0, 0]),
    ];
    for (conns, messages, per_device) in table {
        let fx = Fx::new();
        let devices = [
            fx.add_device(MessageFilters::default()),
            fx.add_device(MessageFilters::default()),
        ];
        let mut live = Vec::new();
        for (i, (device, received, sent, ended)) in conns.iter().enumerate() {
            let session = match device {
                Some(d) => fx.connect_device(devices[*d], None).session,
                None => fx.client(&format!("anon{i}")),
            };
            let traffic = session.traffic();
            exchange(&traffic, *received, *sent);
            if *ended {
                drop(traffic);
                session.disconnect(DisconnectKind::Abnormal);
            } else {
                live.push((session, traffic));
            }
        }
        let got = activity_of(&fx);
        let case = format!("{conns:?}");
        assert_eq!(got.as_ref().map_or(0, |a| a.messages), *messages, "{case}");
        let mut want: Vec<(DeviceId, u64)> = devices
            .iter()
            .zip(per_device)
            .filter(|(_, n)| **n > 0)
            .map(|(d, n)| (*d, *n))
            .collect();
        want.sort_unstable();
        assert_eq!(got.map(|a| a.devices).unwrap_or_default(), want, "{case}");
        // Collected once: the next collection is empty until new traffic.
        assert_eq!(activity_of(&fx), None, "{case}");
        for (_, traffic) in &live {
            traffic.packet_sent();
        }
        let again = activity_of(&fx).map_or(0, |a| a.messages);
        assert_eq!(again, live.len() as u64, "{case}");
    }
}

#[test]
fn a_taken_over_connection_counts_until_its_end_and_never_twice() {
    let fx = Fx::new();
    let device = fx.add_device(MessageFilters::default());
    let old = fx.connect_device(device, None).session;
    let old_traffic = old.traffic();
    exchange(&old_traffic, 2, 0);
    let new = fx.connect_device(device, None).session;
    let new_traffic = new.traffic();
    exchange(&new_traffic, 1, 1);
    // The old connection still writes its DISCONNECT after the takeover.
    old_traffic.packet_sent();
    drop(old_traffic);
    drop(old);
    let got = activity_of(&fx).unwrap();
    assert_eq!((got.messages, got.devices), (5, vec![(device, 5)]));
    drop(new_traffic);
    assert_eq!(activity_of(&fx), None);
}

#[test]
fn activity_stays_in_its_hub() {
    let fx = Fx::new();
    let other = HubId::new_random();
    fx.engine
        .create_hub(hub_spec(
            other,
            "other",
            Plan::Dedicated,
            HubLimits::default(),
            true,
        ))
        .unwrap();
    let here = fx.client("c");
    exchange(&here.traffic(), 3, 0);
    let there = fx
        .engine
        .connect(ConnectRequest {
            hub: other,
            ..fx.req("c", true, 0)
        })
        .unwrap()
        .session;
    let there_traffic = there.traffic();
    exchange(&there_traffic, 0, 2);
    assert_eq!(there_traffic.hub(), other);
    let mut all = fx.engine.take_activity();
    all.sort_unstable_by_key(|a| a.hub == other);
    let totals: Vec<(HubId, u64)> = all.iter().map(|a| (a.hub, a.messages)).collect();
    assert_eq!(totals, [(fx.hub, 3), (other, 2)]);
}

#[test]
fn stats_count_queued_and_inflight_messages() {
    let limits = HubLimits {
        max_inflight_messages: 2,
        ..HubLimits::default()
    };
    let fx = Fx::with(Plan::Dedicated, limits);
    let s = fx.client("s");
    subscribe(&s, "t", Q1);
    let p = fx.client("p");
    for _ in 0..5 {
        publish(&p, "t", "m", Q1);
    }
    let stats = fx.stats();
    assert_eq!((stats.queued_messages, stats.inflight_messages), (5, 0));
    assert_eq!(publishes(&drain(&s)).len(), 2);
    let stats = fx.stats();
    assert_eq!((stats.queued_messages, stats.inflight_messages), (3, 2));
    assert!(s.acknowledge(1));
    let stats = fx.stats();
    assert_eq!((stats.queued_messages, stats.inflight_messages), (3, 1));
}
