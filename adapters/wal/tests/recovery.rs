//! The log through its public API and the files it leaves: round trips, reopening, every torn-tail
//! truncation point, every flipped byte of a record, compaction across reopen, and a model check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iothub_wal::{FsyncPolicy, Options, Recovery, Wal};
use proptest::prelude::*;

type Rec = (u64, u8, Vec<u8>);

const HEADER_LEN: usize = 17;

fn opts(segment_bytes: u64) -> Options {
    Options {
        segment_bytes,
        fsync: FsyncPolicy::Always,
    }
}

fn contents(wal: &mut Wal) -> Vec<Rec> {
    let mut out = Vec::new();
    wal.replay(|s, k, p| out.push((s.get(), k, p.to_vec())))
        .unwrap();
    out
}

/// Appends `payloads` (kind = index) and commits them, returning what the log should hold.
fn fill(wal: &mut Wal, payloads: &[&[u8]]) -> Vec<Rec> {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let kind = u8::try_from(i).unwrap();
        let seq = wal.append(kind, p).unwrap();
        out.push((seq.get(), kind, p.to_vec()));
    }
    wal.commit().unwrap();
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

/// A fresh directory holding a copy of `from`'s segments, so each damage case starts clean.
fn copy_log(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for seg in segments(from) {
        fs::copy(&seg, to.path().join(seg.file_name().unwrap())).unwrap();
    }
    to
}

const PAYLOADS: [&[u8]; 5] = [b"first", b"", b"the third record", &[0; 40], b"last one"];

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Grouped(Duration::from_millis(50)),
    ] {
        let options = Options {
            segment_bytes: 64,
            fsync: policy,
        };
        let sub = dir.path().join(format!("{policy:?}"));
        let (mut wal, recovery) = Wal::open(&sub, options).unwrap();
        assert_eq!(recovery, Recovery::default());
        let written = fill(&mut wal, &PAYLOADS);
        assert_eq!(contents(&mut wal), written, "{policy:?} before reopen");
        assert_eq!(
            written.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        wal.close().unwrap();
        assert!(segments(&sub).len() > 1, "64-byte segments must rotate");

        let (mut wal, recovery) = Wal::open(&sub, options).unwrap();
        assert_eq!(recovery.records_replayed, 5, "{policy:?}");
        assert_eq!(contents(&mut wal), written, "{policy:?} after reopen");
        assert_eq!(wal.append(0, b"more").unwrap().get(), 6);
    }
}

#[test]
fn open_with_visits_what_replay_visits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(64)).unwrap();
    fill(&mut wal, &PAYLOADS);
    wal.compact(|seq, _, _| seq.get() != 2).unwrap();
    fill(&mut wal, &PAYLOADS[..2]);
    let expected = contents(&mut wal);
    wal.close().unwrap();
    let mut seen = Vec::new();
    let (mut wal, recovery) = Wal::open_with(dir.path(), opts(64), |s, k, p| {
        seen.push((s.get(), k, p.to_vec()));
    })
    .unwrap();
    assert_eq!(seen, expected);
    assert_eq!(recovery.records_replayed as usize, expected.len());
    assert_eq!(contents(&mut wal), expected);
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(dir.path(), opts(1024)).unwrap();
    let second = Wal::open(dir.path(), opts(1024));
    assert!(
        matches!(second, Err(iothub_wal::WalError::Locked(_))),
        "{second:?}"
    );
}

#[test]
fn uncommitted_appends_are_not_replayed_and_lost_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    let written = fill(&mut wal, &PAYLOADS[..2]);
    wal.append(7, b"pending").unwrap();
    assert_eq!(contents(&mut wal), written);
    drop(wal);
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(contents(&mut wal), written);
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    let written = fill(&mut wal, &PAYLOADS);
    wal.close().unwrap();
    let [segment] = segments(dir.path()).try_into().unwrap();
    let full = fs::metadata(&segment).unwrap().len() as usize;
    let last_start = full - HEADER_LEN - PAYLOADS[4].len();

    for cut in last_start..full {
        let copy = copy_log(dir.path());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(segment.file_name().unwrap()))
            .unwrap();
        file.set_len(cut as u64).unwrap();
        drop(file);

        let (mut wal, recovery) = Wal::open(copy.path(), opts(1 << 20)).unwrap();
        assert_eq!(recovery.records_replayed, 4, "cut at {cut}");
        assert_eq!(
            recovery.torn_tail_bytes_dropped,
            (cut - last_start) as u64,
            "cut at {cut}"
        );
        assert_eq!(recovery.corrupt_records_skipped, 0, "cut at {cut}");
        assert_eq!(contents(&mut wal), written[..4], "cut at {cut}");
        // The log goes on from the cut: the torn record's number is reused, nothing is glued to garbage.
        assert_eq!(wal.append(9, b"new").unwrap().get(), 5, "cut at {cut}");
        wal.close().unwrap();
        let (mut wal, recovery) = Wal::open(copy.path(), opts(1 << 20)).unwrap();
        assert_eq!(recovery.torn_tail_bytes_dropped, 0, "cut at {cut}");
        assert_eq!(contents(&mut wal).len(), 5, "cut at {cut}");
    }
}

#[test]
fn flipped_byte_in_every_position_of_a_middle_record_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    let written = fill(&mut wal, &PAYLOADS);
    wal.close().unwrap();
    let [segment] = segments(dir.path()).try_into().unwrap();
    let name = segment.file_name().unwrap();
    let original = fs::read(&segment).unwrap();
    // The third record (index 2): after the first two records.
    let start = 2 * HEADER_LEN + PAYLOADS[0].len() + PAYLOADS[1].len();
    let end = start + HEADER_LEN + PAYLOADS[2].len();
    let expected: Vec<Rec> = written.iter().filter(|r| r.0 != 3).cloned().collect();

    for pos in start..end {
        for mask in [0x01_u8, 0x80, 0xff] {
            let copy = copy_log(dir.path());
            let mut damaged = original.clone();
            damaged[pos] ^= mask;
            fs::write(copy.path().join(name), &damaged).unwrap();

            let (mut wal, recovery) = Wal::open(copy.path(), opts(1 << 20)).unwrap();
            let case = format!("byte {} of the record, mask {mask:#x}", pos - start);
            assert_eq!(recovery.corrupt_records_skipped, 1, "{case}");
            assert_eq!(recovery.torn_tail_bytes_dropped, 0, "{case}");
            assert_eq!(recovery.records_replayed, 4, "{case}");
            assert_eq!(contents(&mut wal), expected, "{case}");
            assert_eq!(wal.append(1, b"x").unwrap().get(), 6, "{case}");
        }
    }
}

#[test]
fn flipped_byte_in_the_last_record_is_a_torn_tail() {
    // No valid record follows, so damage and a torn write cannot be told apart: the record is cut
    // off (it was the last write, the one a crash can tear) and the log opens.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    let written = fill(&mut wal, &PAYLOADS);
    wal.close().unwrap();
    let [segment] = segments(dir.path()).try_into().unwrap();
    let mut data = fs::read(&segment).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x10;
    fs::write(&segment, &data).unwrap();
    let (mut wal, recovery) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(
        recovery.torn_tail_bytes_dropped as usize,
        HEADER_LEN + PAYLOADS[4].len()
    );
    assert_eq!(contents(&mut wal), written[..4]);
}

#[test]
fn damage_in_a_closed_segment_keeps_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(64)).unwrap();
    let written = fill(&mut wal, &PAYLOADS);
    wal.close().unwrap();
    let first = segments(dir.path()).remove(0);
    let mut data = fs::read(&first).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x10;
    fs::write(&first, &data).unwrap();
    let (mut wal, recovery) = Wal::open(dir.path(), opts(64)).unwrap();
    assert_eq!(recovery.corrupt_records_skipped, 1);
    assert_eq!(recovery.torn_tail_bytes_dropped, 0);
    let got = contents(&mut wal);
    assert_eq!(got.len(), written.len() - 1);
    assert_eq!(got.last(), written.last());
}

#[test]
fn compaction_keeps_exactly_the_live_records_across_reopen() {
    struct Case {
        name: &'static str,
        keep: fn(u64, u8) -> bool,
    }
    let cases = [
        Case {
            name: "keep all",
            keep: |_, _| true,
        },
        Case {
            name: "keep none",
            keep: |_, _| false,
        },
        Case {
            name: "even seqs",
            keep: |seq, _| seq % 2 == 0,
        },
        Case {
            name: "kind 1 only",
            keep: |_, kind| kind == 1,
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), opts(128)).unwrap();
        let mut written = Vec::new();
        for i in 0..60u32 {
            let kind = u8::try_from(i % 3).unwrap();
            let payload = i.to_le_bytes().repeat(5);
            let seq = wal.append(kind, &payload).unwrap();
            written.push((seq.get(), kind, payload));
        }
        // Leave the last few uncommitted: compaction commits them first.
        wal.commit().unwrap();
        for i in 60..63u32 {
            let payload = i.to_le_bytes().to_vec();
            let seq = wal.append(1, &payload).unwrap();
            written.push((seq.get(), 1, payload));
        }
        let before = segments(dir.path()).len();
        let stats = wal
            .compact(|seq, kind, _| (case.keep)(seq.get(), kind))
            .unwrap();
        let expected: Vec<Rec> = written
            .iter()
            .filter(|r| (case.keep)(r.0, r.1))
            .cloned()
            .collect();
        assert_eq!(stats.kept as usize, expected.len(), "{}", case.name);
        assert_eq!(stats.kept + stats.dropped, 63, "{}", case.name);
        assert_eq!(contents(&mut wal), expected, "{}", case.name);
        assert!(
            segments(dir.path()).len() <= 2,
            "{}: {before} before",
            case.name
        );

        let after = wal.append(7, b"after compaction").unwrap();
        assert_eq!(after.get(), 64, "{}", case.name);
        wal.close().unwrap();
        let (mut wal, recovery) = Wal::open(dir.path(), opts(128)).unwrap();
        let mut expected = expected;
        expected.push((64, 7, b"after compaction".to_vec()));
        assert_eq!(
            recovery.records_replayed as usize,
            expected.len(),
            "{}",
            case.name
        );
        assert_eq!(contents(&mut wal), expected, "{}", case.name);
        assert_eq!(wal.append(0, b"").unwrap().get(), 65, "{}", case.name);
        // Compacting again over an already compacted log changes nothing it should keep.
        wal.commit().unwrap();
        expected.push((65, 0, Vec::new()));
        wal.compact(|_, _, _| true).unwrap();
        assert_eq!(contents(&mut wal), expected, "{}", case.name);
    }
}

#[test]
fn leftover_compaction_tmp_file_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(64)).unwrap();
    let written = fill(&mut wal, &PAYLOADS);
    wal.close().unwrap();
    let tmp = dir.path().join(format!("compact-{:020}.tmp", 6));
    fs::write(&tmp, b"half a compaction").unwrap();
    let (mut wal, recovery) = Wal::open(dir.path(), opts(64)).unwrap();
    assert!(!recovery.compaction_finished);
    assert!(!tmp.exists());
    assert_eq!(contents(&mut wal), written);
}

/// One step of the model check.
#[derive(Debug, Clone)]
enum Op {
    Append(u8, Vec<u8>),
    Commit,
    FlushDue,
    /// Drop without committing, then reopen: a crash.
    Crash,
    /// `close`, then reopen.
    Reopen,
    /// Keep records whose kind differs from this one.
    Compact(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, proptest::collection::vec(any::<u8>(), 0..60)).prop_map(|(k, p)| Op::Append(k, p)),
        3 => Just(Op::Commit),
        1 => Just(Op::FlushDue),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        1 => (0u8..4).prop_map(Op::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_operations_match_a_model(
        ops in proptest::collection::vec(op(), 1..80),
        segment_bytes in 40u64..400,
        grouped in any::<bool>(),
    ) {
        let options = Options {
            segment_bytes,
            fsync: if grouped {
                FsyncPolicy::Grouped(Duration::from_millis(1))
            } else {
                FsyncPolicy::Always
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
        let mut committed: Vec<Rec> = Vec::new();
        let mut pending: Vec<Rec> = Vec::new();
        for op in ops {
            match op {
                Op::Append(kind, payload) => {
                    let seq = wal.append(kind, &payload).unwrap().get();
                    let last = pending.last().or(committed.last()).map_or(0, |r| r.0);
                    prop_assert!(seq > last, "seq {} after {}", seq, last);
                    pending.push((seq, kind, payload));
                }
                Op::Commit => {
                    wal.commit().unwrap();
                    committed.append(&mut pending);
                }
                Op::FlushDue => {
                    wal.flush_due().unwrap();
                }
                Op::Crash => {
                    drop(wal);
                    let (reopened, recovery) = Wal::open(dir.path(), options).unwrap();
                    prop_assert_eq!(recovery.corrupt_records_skipped, 0);
                    prop_assert_eq!(recovery.torn_tail_bytes_dropped, 0);
                    // Every committed record and none of the uncommitted ones.
                    prop_assert_eq!(recovery.records_replayed as usize, committed.len());
                    pending.clear();
                    wal = reopened;
                }
                Op::Reopen => {
                    wal.close().unwrap();
                    committed.append(&mut pending);
                    let (reopened, recovery) = Wal::open(dir.path(), options).unwrap();
                    prop_assert_eq!(recovery.records_replayed as usize, committed.len());
                    prop_assert_eq!(recovery.torn_tail_bytes_dropped, 0);
                    wal = reopened;
                }
                Op::Compact(drop_kind) => {
                    wal.compact(|_, kind, _| kind != drop_kind).unwrap();
                    committed.append(&mut pending);
                    committed.retain(|r| r.1 != drop_kind);
                }
            }
            prop_assert_eq!(contents(&mut wal), committed.clone());
        }
    }
}

#[test]
fn fsync_policy_decides_when_committed_records_wait_for_a_sync() {
    // Which state leaves committed records waiting for an fsync (`sync_deadline` is Some), per policy.
    struct Case {
        name: &'static str,
        fsync: FsyncPolicy,
        after_commit: bool,
        after_flush_due: bool,
    }
    let cases = [
        Case {
            name: "always: commit fsyncs",
            fsync: FsyncPolicy::Always,
            after_commit: false,
            after_flush_due: false,
        },
        Case {
            // The first commit after open is within the interval, so it does not fsync, and
            // `flush_due` is not due for an hour either.
            name: "grouped(1h): commit and flush_due wait",
            fsync: FsyncPolicy::Grouped(Duration::from_secs(3600)),
            after_commit: true,
            after_flush_due: true,
        },
        Case {
            name: "grouped(0): every commit is due",
            fsync: FsyncPolicy::Grouped(Duration::ZERO),
            after_commit: false,
            after_flush_due: false,
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_bytes: 1 << 20,
            fsync: case.fsync,
        };
        let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
        assert_eq!(wal.sync_deadline(), None, "{}: fresh", case.name);
        wal.append(1, b"x").unwrap();
        wal.commit().unwrap();
        assert_eq!(
            wal.sync_deadline().is_some(),
            case.after_commit,
            "{}",
            case.name
        );
        wal.flush_due().unwrap();
        assert_eq!(
            wal.sync_deadline().is_some(),
            case.after_flush_due,
            "{}",
            case.name
        );
        wal.sync().unwrap();
        assert_eq!(wal.sync_deadline(), None, "{}: after sync", case.name);
        // Committed but not yet fsynced records are already visible to replay and to a reopen
        // after a process crash: the kernel has them.
        wal.append(2, b"y").unwrap();
        wal.commit().unwrap();
        drop(wal);
        let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
        assert_eq!(contents(&mut wal).len(), 2, "{}", case.name);
    }
}

#[test]
fn oversized_record_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    let big = vec![0u8; iothub_wal::MAX_PAYLOAD + 1];
    let refused = wal.append(1, &big);
    assert!(
        matches!(refused, Err(iothub_wal::WalError::RecordTooLarge { len }) if len == big.len()),
        "{refused:?}"
    );
    assert_eq!(wal.append(1, b"fine").unwrap().get(), 1);
}

#[test]
fn unrelated_files_in_the_directory_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("x.log"), b"not a segment name").unwrap();
    let (mut wal, recovery) = Wal::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(recovery, Recovery::default());
    let written = fill(&mut wal, &PAYLOADS);
    wal.compact(|_, _, _| true).unwrap();
    assert_eq!(contents(&mut wal), written);
    assert!(dir.path().join("notes.txt").exists());
    assert!(dir.path().join("x.log").exists());
}
