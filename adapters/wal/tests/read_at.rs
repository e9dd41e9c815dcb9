//! Reading one record back by its location ([`Wal::read_at`]): from the append buffer, from closed
//! and active segments, after a reopen, after compaction moved it, and the errors for a stale
//! location, a damaged record and a location that points nowhere; a compaction written on another
//! thread while the log goes on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs;

use iothub_wal::{FsyncPolicy, Location, Options, Seq, Wal, WalError};

fn opts() -> Options {
    Options {
        segment_bytes: 128,
        fsync: FsyncPolicy::Always,
    }
}

fn payload(i: u8) -> Vec<u8> {
    vec![i; usize::from(i % 7) * 9]
}

/// Appends 30 records of varied sizes (several segments of 128 bytes) and returns their locations.
fn fill(wal: &mut Wal) -> Vec<(Seq, Location, u8, Vec<u8>)> {
    (0..30u8)
        .map(|i| {
            let p = payload(i);
            let (seq, loc) = wal.append_located(i % 4, &p).unwrap();
            (seq, loc, i % 4, p)
        })
        .collect()
}

#[test]
fn reads_back_buffered_committed_and_reopened_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
    let recs = fill(&mut wal);
    let segments: std::collections::HashSet<_> = recs.iter().map(|r| r.1.segment).collect();
    assert!(segments.len() > 2, "the test needs several segments");
    // Not committed yet: served from the append buffer.
    for (seq, loc, kind, p) in &recs {
        assert_eq!(
            wal.read_at(*loc, *seq).unwrap(),
            (*kind, p.clone()),
            "{seq}"
        );
    }
    wal.commit().unwrap();
    for (seq, loc, kind, p) in &recs {
        assert_eq!(
            wal.read_at(*loc, *seq).unwrap(),
            (*kind, p.clone()),
            "{seq}"
        );
    }
    // The locations handed out at append are the ones a replay and a reopen see.
    let mut replayed = Vec::new();
    wal.replay_located(|loc, seq, _, _| replayed.push((seq, loc)))
        .unwrap();
    let expected: Vec<_> = recs.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(replayed, expected);
    drop(wal);
    let mut reopened = Vec::new();
    let (wal, _) = Wal::open_located(dir.path(), opts(), |loc, seq, _, _| {
        reopened.push((seq, loc))
    })
    .unwrap();
    assert_eq!(reopened, expected);
    for (seq, loc, kind, p) in &recs {
        assert_eq!(
            wal.read_at(*loc, *seq).unwrap(),
            (*kind, p.clone()),
            "{seq}"
        );
    }
}

#[test]
fn stale_and_bogus_locations_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
    let recs = fill(&mut wal);
    wal.commit().unwrap();
    let (seq, loc, _, _) = recs[3];
    let (other_seq, other_loc, _, _) = recs[4];
    let cases = [
        ("another record's location", other_loc, seq),
        ("another record's number", loc, other_seq),
        (
            "no such segment",
            Location {
                segment: Seq::new(999_999),
                offset: 0,
            },
            seq,
        ),
        (
            "past the end of the segment",
            Location {
                segment: loc.segment,
                offset: 1 << 20,
            },
            seq,
        ),
        (
            "inside a record",
            Location {
                segment: loc.segment,
                offset: loc.offset + 1,
            },
            seq,
        ),
        ("never appended", loc, Seq::new(10_000)),
    ];
    for (name, location, s) in cases {
        match wal.read_at(location, s) {
            Err(WalError::RecordNotFound { seq, location: l }) => {
                assert_eq!((seq, l), (s, location), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_damaged_record_is_corrupt_and_its_neighbours_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
    let recs = fill(&mut wal);
    wal.commit().unwrap();
    // A record with a payload, and its neighbours in the same segment.
    let i = recs
        .iter()
        .position(|r| r.3.len() > 4 && r.1.offset > 0)
        .unwrap();
    let (seq, loc, _, _) = &recs[i];
    let path = dir.path().join(format!("{:020}.log", loc.segment.get()));
    let mut bytes = fs::read(&path).unwrap();
    // Last byte of the payload, and separately the length field.
    let last = usize::try_from(loc.offset).unwrap() + 17 + recs[i].3.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    match wal.read_at(*loc, *seq) {
        Err(WalError::RecordCorrupt { seq: s, location }) => {
            assert_eq!((s, location), (*seq, *loc))
        }
        other => panic!("flipped payload byte: {other:?}"),
    }
    bytes[last] ^= 0x40;
    let len_at = usize::try_from(loc.offset).unwrap();
    bytes[len_at + 3] = 0xff; // a length far past the segment (and past MAX_PAYLOAD)
    fs::write(&path, &bytes).unwrap();
    assert!(
        matches!(wal.read_at(*loc, *seq), Err(WalError::RecordCorrupt { .. })),
        "huge length"
    );
    bytes[len_at + 3] = 0;
    bytes[len_at] = bytes[len_at].wrapping_add(100); // a length past the end of this segment
    fs::write(&path, &bytes).unwrap();
    assert!(
        matches!(wal.read_at(*loc, *seq), Err(WalError::RecordCorrupt { .. })),
        "long length"
    );
    for (s, l, kind, p) in recs.iter().filter(|r| r.0 != *seq) {
        assert_eq!(wal.read_at(*l, *s).unwrap(), (*kind, p.clone()), "{s}");
    }
}

#[test]
fn compaction_reports_new_locations() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
    let recs = fill(&mut wal);
    wal.commit().unwrap();
    let mut moved = HashMap::new();
    let stats = wal
        .compact_located(
            |_, kind, _| kind != 1,
            |seq, loc| {
                assert!(moved.insert(seq, loc).is_none(), "{seq} reported twice");
            },
        )
        .unwrap();
    assert_eq!(stats.kept, moved.len() as u64);
    assert!(stats.dropped > 0);
    for (seq, old, kind, p) in &recs {
        if *kind == 1 {
            assert!(!moved.contains_key(seq), "{seq} was dropped");
            assert!(
                matches!(
                    wal.read_at(*old, *seq),
                    Err(WalError::RecordNotFound { .. })
                ),
                "{seq}: a dropped record is gone"
            );
            continue;
        }
        let new = moved.get(seq).copied().unwrap_or(*old);
        assert_eq!(wal.read_at(new, *seq).unwrap(), (*kind, p.clone()), "{seq}");
    }
    // Appends after the compaction are located correctly too, and so is everything after a reopen.
    let (seq, loc) = wal.append_located(7, b"after compaction").unwrap();
    wal.commit().unwrap();
    assert_eq!(
        wal.read_at(loc, seq).unwrap(),
        (7, b"after compaction".to_vec())
    );
    drop(wal);
    let mut seen = Vec::new();
    let (wal, _) =
        Wal::open_located(dir.path(), opts(), |loc, seq, _, _| seen.push((seq, loc))).unwrap();
    for (s, l) in seen {
        wal.read_at(l, s).unwrap();
    }
}

#[test]
fn a_reader_on_another_thread_reads_committed_records_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
    let reader = wal.reader();
    let (tx, rx) = std::sync::mpsc::channel::<(Seq, Location, u8, Vec<u8>)>();
    let checker = std::thread::spawn(move || {
        let mut read = 0;
        for (seq, loc, kind, p) in rx {
            assert_eq!(reader.read_at(loc, seq).unwrap(), (kind, p), "{seq}");
            read += 1;
        }
        (read, reader)
    });
    for _ in 0..20 {
        let recs = fill(&mut wal);
        wal.commit().unwrap();
        // Handed over only once committed, as the reader requires.
        for rec in recs {
            tx.send(rec).unwrap();
        }
    }
    drop(tx);
    let (read, reader) = checker.join().unwrap();
    assert_eq!(read, 20 * 30);
    // After a compaction the reader finds the kept records at their new locations only, and
    // the dropped ones nowhere.
    let (seq, old) = wal.append_located(3, b"kept").unwrap();
    let (gone, gone_at) = wal.append_located(1, b"dropped").unwrap();
    wal.commit().unwrap();
    let mut moved = HashMap::new();
    wal.compact_located(
        |s, _, _| s != gone,
        |s, l| {
            moved.insert(s, l);
        },
    )
    .unwrap();
    let new = moved[&seq];
    assert_ne!(new, old);
    assert_eq!(reader.read_at(new, seq).unwrap(), (3, b"kept".to_vec()));
    assert!(matches!(
        reader.read_at(old, seq),
        Err(WalError::RecordNotFound { .. })
    ));
    assert!(matches!(
        reader.read_at(gone_at, gone),
        Err(WalError::RecordNotFound { .. })
    ));
}

/// A compaction split in three ([`Wal::start_compaction`], [`Compaction::write`] on another
/// thread, [`Wal::finish_compaction`]) while the log goes on: records appended and committed
/// meanwhile are untouched and readable, the old ones stay readable at their old locations
/// until the finish, kept ones are readable at the locations the finish reports, and a replay
/// (also after a reopen) holds exactly the kept records and the new ones, in order.
#[test]
fn a_compaction_written_on_another_thread_while_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
    let old = fill(&mut wal);
    wal.commit().unwrap();
    let mut compaction = wal.start_compaction().unwrap().expect("closed segments");
    assert!(old.iter().all(|r| r.0 < compaction.upto()));
    let writer = std::thread::spawn(move || {
        let stats = compaction.write(|_, kind, _| kind == 1).unwrap();
        (compaction, stats)
    });
    let mut new = Vec::new();
    for i in 100..120u8 {
        let p = payload(i);
        let (seq, loc) = wal.append_located(i % 4, &p).unwrap();
        new.push((seq, loc, i % 4, p));
        wal.commit().unwrap();
    }
    let (compaction, stats) = writer.join().unwrap();
    let kept_count = old.iter().filter(|r| r.2 == 1).count() as u64;
    assert_eq!((stats.kept, stats.dropped), (kept_count, 30 - kept_count));
    // Not finished: every old record still reads where it was.
    for (seq, loc, kind, p) in &old {
        assert_eq!(wal.read_at(*loc, *seq).unwrap(), (*kind, p.clone()));
    }
    let mut moved = HashMap::new();
    wal.finish_compaction(compaction, |seq, loc| {
        moved.insert(seq, loc);
    })
    .unwrap();
    assert_eq!(moved.len() as u64, kept_count);
    for (seq, _, kind, p) in old.iter().filter(|r| r.2 == 1) {
        assert_eq!(wal.read_at(moved[seq], *seq).unwrap(), (*kind, p.clone()));
    }
    for (seq, loc, kind, p) in &new {
        assert_eq!(wal.read_at(*loc, *seq).unwrap(), (*kind, p.clone()));
    }
    let expected: Vec<(Seq, u8, Vec<u8>)> = old
        .iter()
        .filter(|r| r.2 == 1)
        .chain(&new)
        .map(|(seq, _, kind, p)| (*seq, *kind, p.clone()))
        .collect();
    let mut seen = Vec::new();
    wal.replay(|seq, kind, p| seen.push((seq, kind, p.to_vec())))
        .unwrap();
    assert_eq!(seen, expected);
    drop(wal);
    let mut seen = Vec::new();
    let (mut wal, recovery) = Wal::open(dir.path(), opts()).unwrap();
    assert!(!recovery.compaction_finished);
    wal.replay(|seq, kind, p| seen.push((seq, kind, p.to_vec())))
        .unwrap();
    assert_eq!(seen, expected);
}
