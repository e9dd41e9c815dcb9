//! Journal groups ([`Journal::begin_group`]) on a real `Store`: what a group records is
//! written together, after the group closed, and nothing recorded after its start goes
//! ahead of it; a reopened store has all of a closed group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use iothub_engine::{Journal, JournalOp, SessionOwner};
use iothub_model::{ClientId, HubId};
use iothub_persist::{FsyncPolicy, Opened, Store, StoreOptions};

fn options() -> StoreOptions {
    StoreOptions {
        fsync: FsyncPolicy::Grouped(Duration::from_millis(1)),
        compact_min_records: 1_000_000,
    }
}

fn up(hub: HubId, client: &str) -> JournalOp {
    JournalOp::SessionUp {
        hub,
        client: ClientId::new(client).unwrap(),
        owner: SessionOwner::Anonymous,
        expiry_secs: 60,
    }
}

fn wait_durable(store: &Store, ticket: u64) {
    let mut rx = store.durable();
    for _ in 0..5000 {
        if *rx.borrow_and_update() >= ticket {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("ticket {ticket} never became durable");
}

#[test]
fn a_group_is_written_only_once_closed_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubId::new_random();
    let Opened { store, .. } = Store::open(dir.path(), options()).unwrap();
    let before = store.record(up(hub, "before"));
    wait_durable(&store, before);

    let start = store.begin_group();
    let in_group = store.record(up(hub, "in-group-1"));
    // Recorded by another thread while the group is open: it must wait behind the group.
    let after = store.record(up(hub, "after"));
    // The writer is idle and would have written both within a few ms; the group holds them.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        *store.durable().borrow(),
        before,
        "an open group was written"
    );
    let last_in_group = store.record(up(hub, "in-group-2"));
    store.end_group(start);
    wait_durable(&store, last_in_group.max(after));
    assert!(in_group < after && after < last_in_group);
    store.close().unwrap();
    drop(store);

    let Opened { restored, .. } = Store::open(dir.path(), options()).unwrap();
    let mut clients: Vec<String> = restored
        .iter()
        .flat_map(|(_, h)| h.sessions.iter().map(|s| s.client.as_str().to_owned()))
        .collect();
    clients.sort();
    assert_eq!(clients, ["after", "before", "in-group-1", "in-group-2"]);
}
