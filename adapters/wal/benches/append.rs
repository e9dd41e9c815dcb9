//! Appends per second of 100-byte records for each fsync policy, on the disk that holds the
//! temporary directory (or `WAL_BENCH_DIR`). A plain `main`: it measures and prints, it asserts
//! nothing about speed.
//!
//! `cargo bench -p iothub-wal --bench append`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use iothub_wal::{FsyncPolicy, Options, Wal};

/// One scenario: a policy and how many appends share a commit.
struct Case {
    name: &'static str,
    fsync: FsyncPolicy,
    per_commit: usize,
}

const RUN_FOR: Duration = Duration::from_secs(3);

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WAL_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn run(case: &Case) -> (u64, Duration) {
    let dir = bench_dir();
    let options = Options {
        segment_bytes: 64 << 20,
        fsync: case.fsync,
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    let payload = [0x5a_u8; 100];
    let start = Instant::now();
    let mut appended = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..case.per_commit {
            wal.append(1, &payload).unwrap();
        }
        wal.commit().unwrap();
        wal.flush_due().unwrap();
        appended += case.per_commit as u64;
    }
    wal.close().unwrap();
    (appended, start.elapsed())
}

/// Time to open (validate every record) and then replay a log of `records` 100-byte records: the
/// startup cost issue 6 asks to state for 1M retained messages.
fn startup(records: u64) {
    let dir = bench_dir();
    let options = Options {
        segment_bytes: 64 << 20,
        fsync: FsyncPolicy::Grouped(Duration::from_millis(10)),
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    let payload = [0x5a_u8; 100];
    for i in 0..records {
        wal.append(1, &payload).unwrap();
        if i % 1000 == 999 {
            wal.commit().unwrap();
        }
    }
    wal.close().unwrap();
    let start = Instant::now();
    let (mut wal, recovery) = Wal::open(dir.path(), options).unwrap();
    let opened = start.elapsed();
    let mut bytes = 0usize;
    let stats = wal.replay(|_, _, p| bytes += p.len()).unwrap();
    let replayed = start.elapsed();
    assert_eq!(recovery.records_replayed, records);
    assert_eq!(stats.records, records);
    drop(wal);
    let start = Instant::now();
    let mut visited = 0u64;
    let (_wal, _) = Wal::open_with(dir.path(), options, |_, _, _| visited += 1).unwrap();
    let open_with = start.elapsed();
    assert_eq!(visited, records);
    println!(
        "startup with {records} records: open {:.2} s, open + replay {:.2} s, open_with {:.2} s ({} MB of payload)",
        opened.as_secs_f64(),
        replayed.as_secs_f64(),
        open_with.as_secs_f64(),
        bytes >> 20
    );
}

fn main() {
    let cases = [
        Case {
            name: "Always, 1 append per commit",
            fsync: FsyncPolicy::Always,
            per_commit: 1,
        },
        Case {
            name: "Always, 100 appends per commit",
            fsync: FsyncPolicy::Always,
            per_commit: 100,
        },
        Case {
            name: "Grouped(2ms), 1 append per commit",
            fsync: FsyncPolicy::Grouped(Duration::from_millis(2)),
            per_commit: 1,
        },
        Case {
            name: "Grouped(10ms), 1 append per commit",
            fsync: FsyncPolicy::Grouped(Duration::from_millis(10)),
            per_commit: 1,
        },
    ];
    println!("100-byte records, {} s per case", RUN_FOR.as_secs());
    for case in &cases {
        let (n, took) = run(case);
        let rate = n as f64 / took.as_secs_f64();
        println!(
            "{:<38} {:>12.0} appends/s ({n} in {:.2} s)",
            case.name,
            rate,
            took.as_secs_f64()
        );
    }
    startup(1_000_000);
}
