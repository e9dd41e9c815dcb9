//! iothub's write-ahead log: the local-disk store under retained messages, persistent sessions,
//! QoS 1/2 inflight state and delayed wills (issue 6). It stores opaque `(kind, payload)` records
//! under increasing sequence numbers; what a kind means is the caller's business. It must never
//! depend on the engine, the model or any async runtime (no tokio): the engine drives it from
//! whatever thread it likes, and the log stays testable with nothing but a temporary directory.
//!
//! # Format
//!
//! A directory holds segment files `<first-seq>.log` (zero-padded to 20 digits) and a `LOCK` file.
//! A segment is a run of records, each
//! `len: u32 LE | crc: u32 LE | seq: u64 LE | kind: u8 | payload[len]`, where `crc` is the CRC32C of
//! `seq | kind | payload`. The sequence number is stored in each record rather than implied by its
//! position: compaction keeps the original numbers of the records it keeps, and a scan that skipped
//! damage knows where it is again. Payloads are at most [`MAX_PAYLOAD`] bytes. A segment is closed
//! (fsynced) and a new one started when the next record would take it past
//! [`Options::segment_bytes`].
//!
//! # Recovery rules ([`Wal::open`])
//!
//! - A record is valid when it is complete, its CRC matches and its sequence number is higher than
//!   the previous valid record's.
//! - At a position that does not hold a valid record, the scan searches forward byte by byte for
//!   the next valid one. If it finds one, the region in between is skipped and counted in
//!   [`Recovery::corrupt_records_skipped`], and everything before and after stays. One damaged
//!   region counts once, even if it hid several records (a damaged length field makes the number
//!   unknowable). We scan rather than stop so that one flipped byte in a length field does not
//!   lose the rest of the segment; the sequence number check and the CRC make a false match in
//!   random data about a 2^-32 chance per position that passes the length check.
//! - If no valid record follows, the rest of the *last* segment is a torn tail: it is cut off with
//!   a warning and counted in [`Recovery::torn_tail_bytes_dropped`], never a refusal to open. In an
//!   earlier segment (fsynced before the next one began) it is damage and counted as corrupt.
//! - Damaged regions in the middle are left on disk and skipped by every replay until compaction
//!   rewrites them away.
//!
//! # Fsync policies and their loss windows
//!
//! [`Wal::append`] only buffers in memory; [`Wal::commit`] writes the buffer to the kernel.
//! - [`FsyncPolicy::Always`]: `commit` fsyncs before returning. A committed record survives any
//!   crash, including power loss. Group commit comes from appending many records per `commit`.
//! - [`FsyncPolicy::Grouped`]`(d)`: `commit` fsyncs only when the last fsync is at least `d` old;
//!   otherwise [`Wal::flush_due`] (called from the caller's timer, see [`Wal::sync_deadline`]) does.
//!   A process crash (SIGKILL) loses nothing committed, since the kernel has it; a power or kernel
//!   failure loses at most the records committed in the last `d` plus the caller's timer lateness.
//! - Under both: appends not yet committed are lost by a crash and by dropping the [`Wal`]
//!   ([`Wal::close`] commits and fsyncs). A failed write or fsync poisons the log
//!   ([`WalError::Poisoned`]): the kernel may have dropped the pages, so only a reopen, which
//!   re-reads the disk and cuts any half-written record, tells the truth.
//!
//! # Compaction
//!
//! [`Wal::compact`] rewrites every closed segment into one file holding only the records a
//! predicate keeps, then deletes the old segments. The rename of `compact-<upto>.tmp` to
//! `compact-<upto>.done` is the commit point: open discards a leftover `.tmp` (old segments
//! intact) and finishes a leftover `.done` (deletes the segments it replaced, renames it to a
//! segment). A crash at any step therefore leaves either the old log or the compacted one.
//! The compacted file is not split to [`Options::segment_bytes`]: its size is that of the live state.
//! [`Wal::compact`] runs on the caller's thread; to keep writing meanwhile, split it:
//! [`Wal::start_compaction`] (step 1), [`Compaction::write`] on any thread (steps 2 and 3: reads
//! the closed segments, writes the compacted file), [`Wal::finish_compaction`] (step 4).
//!
//! # Reading one record back
//!
//! [`Wal::read_at`] reads a single record by its [`Location`] (one `pread` of the header and one of
//! the payload; a record not yet committed comes from the append buffer). It is what lets a caller
//! keep only a record's location in memory and drop its payload. Compaction moves records:
//! [`Wal::compact_located`] reports every kept record's new location. [`Wal::reader`] gives a
//! [`WalReader`] that reads committed records from other threads while the writer goes on.
//!
//! # Costs to know
//!
//! Open and replay read one whole segment into memory at a time, and open validates every record
//! (so a start reads the log once to open and once to replay). The forward scan past damage tries
//! every byte position of the damaged region, but rejects almost all of them on the length and
//! sequence number fields before computing any CRC.

mod record;
mod wal;

pub use record::MAX_PAYLOAD;
pub use wal::{
    CompactStats, Compaction, FsyncPolicy, Options, Recovery, ReplayStats, Wal, WalError, WalReader,
};

/// Where a record lies: the segment (named by its first sequence number) and the byte offset of the
/// record's header in it. [`Wal::append_located`] and [`Wal::open_located`] hand them out and
/// [`Wal::read_at`] reads one record back. A location is good until a compaction moves the record
/// ([`Wal::compact_located`] reports the new ones); [`Wal::read_at`] checks the sequence number
/// and the CRC, so a stale or damaged location is an error, never another record's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub segment: Seq,
    pub offset: u64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// The sequence number of a record: unique and increasing through the life of a log, kept by
/// compaction, never reused (except for records a torn tail took with it, which were never durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// Sequence numbers start at 1; 0 never names a record.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
