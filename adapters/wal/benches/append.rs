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

fn run(case: &Case) -> (u64, Duration) {
    let base = std::env::var_os("WAL_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
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
}
