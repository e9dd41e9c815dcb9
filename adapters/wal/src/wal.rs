//! The log itself: segment files in a directory, the append buffer, group commit, recovery at open
//! and compaction.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::record::{self, HEADER_LEN, MAX_PAYLOAD};
use crate::{Location, Seq};

/// Everything that can go wrong with a log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file system call failed; `path` names the file or directory it was about.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another `Wal` (in this or another process) has the directory open.
    #[error("write-ahead log {} is already open elsewhere", .0.display())]
    Locked(PathBuf),
    /// The payload is larger than the format allows.
    #[error("record payload of {len} bytes is over the {MAX_PAYLOAD}-byte limit")]
    RecordTooLarge { len: usize },
    /// An earlier write or fsync failed. The kernel may already have dropped the unwritten pages, so the
    /// only safe way on is to reopen the log, which re-reads what really is on disk.
    #[error("an earlier write or fsync failed; reopen the write-ahead log")]
    Poisoned,
    /// [`Wal::read_at`]: no record with this sequence number at this location (the segment is
    /// gone, the offset is past its end, or another record is there: a stale location).
    #[error("record {seq} is not at {location}")]
    RecordNotFound { seq: Seq, location: Location },
    /// [`Wal::read_at`]: the record is there but its checksum does not match (damage on disk).
    #[error("record {seq} at {location} is damaged (checksum mismatch)")]
    RecordCorrupt { seq: Seq, location: Location },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// When committed records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every [`Wal::commit`] fsyncs before it returns. Loss window: none for committed records.
    Always,
    /// [`Wal::commit`] hands the records to the kernel and fsyncs only if the last fsync is at least
    /// this long ago; [`Wal::flush_due`] fsyncs once the interval has passed. Loss window: records
    /// committed in the last interval (plus however late the caller is with `flush_due`) on a power
    /// or kernel failure; none on a process crash, since the kernel already holds them.
    Grouped(Duration),
}

/// How the log is written. Segment size may change between opens; the format does not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A segment is closed and a new one started once the next record would take it past this size.
    /// A record larger than this still goes into a segment of its own.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_bytes: 16 << 20,
            fsync: FsyncPolicy::Grouped(Duration::from_millis(5)),
        }
    }
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records now in the log.
    pub records_replayed: u64,
    /// Bytes cut from the end of the last segment: a write that a crash left half done.
    pub torn_tail_bytes_dropped: u64,
    /// Damaged regions skipped (see the crate docs: one per region, which may hide several records).
    /// They are left in place and skipped again by every replay until compaction rewrites the log.
    pub corrupt_records_skipped: u64,
    /// Whether a compaction interrupted by a crash was rolled forward (true) or discarded.
    pub compaction_finished: bool,
}

/// What [`Wal::replay`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub corrupt_records_skipped: u64,
}

/// What [`Wal::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub kept: u64,
    pub dropped: u64,
    pub segments_removed: u64,
}

const LOCK_FILE: &str = "LOCK";
const SEGMENT_EXT: &str = "log";
/// The write buffer's capacity kept between batches.
const KEPT_BUFFER: usize = 1 << 20;

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    // Zero-padded so that a directory listing sorts in log order for a human too.
    dir.join(format!("{first:020}.{SEGMENT_EXT}"))
}

fn compaction_tmp(dir: &Path, upto: u64) -> PathBuf {
    dir.join(format!("compact-{upto:020}.tmp"))
}

fn compaction_done(dir: &Path, upto: u64) -> PathBuf {
    dir.join(format!("compact-{upto:020}.done"))
}

/// The files of a log directory, by kind.
#[derive(Default)]
struct Listing {
    segments: Vec<u64>,
    compaction_tmp: Vec<PathBuf>,
    compaction_done: Vec<(u64, PathBuf)>,
}

fn list(dir: &Path) -> Result<Listing, WalError> {
    let mut out = Listing::default();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.segments.push(seq);
        } else if name.starts_with("compact-") && name.ends_with(".tmp") {
            out.compaction_tmp.push(entry.path());
        } else if let Some(upto) = name
            .strip_prefix("compact-")
            .and_then(|s| s.strip_suffix(".done"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.compaction_done.push((upto, entry.path()));
        }
    }
    out.segments.sort_unstable();
    out.compaction_done.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

fn read(path: &Path) -> Result<Vec<u8>, WalError> {
    fs::read(path).map_err(io("read", path))
}

/// A segmented append-only log of `(seq, kind, payload)` records in one directory.
///
/// Single writer: the methods take `&mut self` and a lock file keeps a second `Wal` (even in another
/// process) off the directory. Dropping a `Wal` does not commit its buffered appends, as a crash
/// would not; [`Wal::close`] commits and fsyncs them.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: Options,
    /// Held for the lock; never read.
    _lock: File,
    segments: Vec<u64>,
    active: File,
    active_first: u64,
    /// Bytes of the active segment already handed to the kernel.
    active_len: u64,
    /// Encoded records appended but not yet committed.
    buffer: Vec<u8>,
    /// End offset in `buffer` and sequence number of each buffered record: where a commit may
    /// start a new segment.
    buffered: Vec<(usize, u64)>,
    next_seq: u64,
    /// Where the next append lands once committed: segment and offset, counting the buffered
    /// records (the same rule as `write_records` uses to start a new segment).
    tail_first: u64,
    tail_len: u64,
    /// Bytes written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    poisoned: bool,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, repairing what a crash left behind: a torn tail is cut
    /// off with a warning, damaged records are counted, an interrupted compaction is finished or
    /// discarded. It refuses only when the directory cannot be used (I/O error or already open).
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Wal, Recovery), WalError> {
        Self::open_with(dir, options, |_, _, _| {})
    }

    /// [`Wal::open`] that also replays: `visit` sees every record [`Wal::replay`] would, in the
    /// same single read of the log that validates it, which halves the disk reads of a start.
    pub fn open_with(
        dir: impl AsRef<Path>,
        options: Options,
        mut visit: impl FnMut(Seq, u8, &[u8]),
    ) -> Result<(Wal, Recovery), WalError> {
        Self::open_located(dir, options, |_, seq, kind, payload| {
            visit(seq, kind, payload)
        })
    }

    /// [`Wal::open_with`] that also tells `visit` each record's [`Location`], for [`Wal::read_at`].
    pub fn open_located(
        dir: impl AsRef<Path>,
        options: Options,
        mut visit: impl FnMut(Location, Seq, u8, &[u8]),
    ) -> Result<(Wal, Recovery), WalError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(WalError::Locked(dir)),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(WalError::Io {
                    op: "lock",
                    path: lock_path,
                    source,
                });
            }
        }

        let mut recovery = Recovery::default();
        let mut listing = list(&dir)?;
        for tmp in &listing.compaction_tmp {
            warn!(message = "discarding an unfinished compaction", path = %tmp.display());
            fs::remove_file(tmp).map_err(io("remove", tmp))?;
        }
        // At most one can exist (open finishes each before a new compaction can start); looping in
        // `upto` order is still right if there were more, as a later one covers the earlier ones.
        for (upto, done) in std::mem::take(&mut listing.compaction_done) {
            warn!(message = "finishing a compaction interrupted by a crash", path = %done.display());
            finish_compaction(&dir, &listing.segments, upto, &done, None)?;
            recovery.compaction_finished = true;
            listing = list(&dir)?;
        }

        let mut last_seq = 0;
        let count = listing.segments.len();
        for (i, &first) in listing.segments.iter().enumerate() {
            let path = segment_path(&dir, first);
            let data = read(&path)?;
            let scan = record::scan_located(
                &data,
                first.max(last_seq + 1),
                |offset, seq, kind, payload| visit(located(first, offset), seq, kind, payload),
            );
            recovery.records_replayed += scan.records;
            recovery.corrupt_records_skipped += scan.corrupt_regions;
            last_seq = last_seq.max(scan.last_seq);
            if scan.bad_tail == 0 {
                continue;
            }
            if i + 1 == count {
                warn!(
                    message = "truncating a torn tail",
                    path = %path.display(),
                    bytes = scan.bad_tail,
                    kept_records = scan.records
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                file.set_len(scan.valid_end as u64)
                    .map_err(io("truncate", &path))?;
                file.sync_all().map_err(io("fsync", &path))?;
                recovery.torn_tail_bytes_dropped += scan.bad_tail as u64;
            } else {
                // A closed segment was fsynced before the next one was created, so a bad end here
                // is damage, not a torn write.
                warn!(
                    message = "skipping a damaged end of a closed segment",
                    path = %path.display(),
                    bytes = scan.bad_tail
                );
                recovery.corrupt_records_skipped += 1;
            }
        }

        let mut segments = listing.segments;
        let (active_first, next_seq) = match segments.last() {
            Some(&first) => (first, first.max(last_seq + 1)),
            None => {
                let path = segment_path(&dir, 1);
                File::create(&path).map_err(io("create", &path))?;
                sync_dir(&dir)?;
                segments.push(1);
                (1, 1)
            }
        };
        let active_path = segment_path(&dir, active_first);
        let active = OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(io("open", &active_path))?;
        let active_len = active.metadata().map_err(io("stat", &active_path))?.len();
        debug!(
            message = "write-ahead log open",
            dir = %dir.display(),
            records = recovery.records_replayed,
            next_seq
        );
        let wal = Wal {
            dir,
            options,
            _lock: lock,
            segments,
            active,
            active_first,
            active_len,
            buffer: Vec::new(),
            buffered: Vec::new(),
            next_seq,
            tail_first: active_first,
            tail_len: active_len,
            dirty: false,
            last_sync: Instant::now(),
            poisoned: false,
        };
        Ok((wal, recovery))
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> Seq {
        Seq::new(self.next_seq)
    }

    /// Buffers one record in memory (no I/O) and returns its sequence number. Nothing is durable,
    /// or visible to [`Wal::replay`], until [`Wal::commit`]; many appends per commit is what makes
    /// commits cheap.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Seq, WalError> {
        self.append_located(kind, payload).map(|(seq, _)| seq)
    }

    /// [`Wal::append`] that also returns where the record will lie once committed, for
    /// [`Wal::read_at`] (which also finds it before the commit, in the append buffer).
    pub fn append_located(
        &mut self,
        kind: u8,
        payload: &[u8],
    ) -> Result<(Seq, Location), WalError> {
        self.check_poisoned()?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l as usize <= MAX_PAYLOAD)
            .ok_or(WalError::RecordTooLarge { len: payload.len() })?;
        let seq = Seq::new(self.next_seq);
        let record_len = (HEADER_LEN + payload.len()) as u64;
        // The rule of `write_records`, applied ahead of time.
        if self.tail_len > 0 && self.tail_len + record_len > self.options.segment_bytes {
            self.tail_first = seq.get();
            self.tail_len = 0;
        }
        let location = Location {
            segment: Seq::new(self.tail_first),
            offset: self.tail_len,
        };
        self.tail_len += record_len;
        record::encode(&mut self.buffer, seq, kind, payload, len);
        self.buffered.push((self.buffer.len(), seq.get()));
        self.next_seq += 1;
        Ok((seq, location))
    }

    /// Reads back the record `seq` at `location` and returns its kind and payload, checking that
    /// the record there has this sequence number and a matching checksum. A record appended but not
    /// yet committed is read from the append buffer. A stale location (the record was compacted
    /// away or moved) is [`WalError::RecordNotFound`], damage is [`WalError::RecordCorrupt`]; no
    /// input makes it panic.
    pub fn read_at(&self, location: Location, seq: Seq) -> Result<(u8, Vec<u8>), WalError> {
        self.check_poisoned()?;
        let not_found = WalError::RecordNotFound { seq, location };
        if let Some(&(_, first_buffered)) = self.buffered.first()
            && seq.get() >= first_buffered
        {
            let i = self
                .buffered
                .binary_search_by_key(&seq.get(), |&(_, s)| s)
                .map_err(|_| not_found)?;
            let start = match i {
                0 => 0,
                _ => self.buffered[i - 1].0,
            };
            let rec = record::decode_at(&self.buffer, start, seq.get())
                .filter(|r| r.seq == seq)
                .ok_or(WalError::RecordCorrupt { seq, location })?;
            return Ok((rec.kind, rec.payload.to_vec()));
        }
        if !self.segments.contains(&location.segment.get()) {
            return Err(not_found);
        }
        read_committed(&self.dir, location, seq)
    }

    /// A handle that reads committed records by location from another thread while this `Wal`
    /// goes on writing (see [`WalReader`]).
    pub fn reader(&self) -> WalReader {
        WalReader {
            dir: self.dir.clone(),
        }
    }

    /// Writes the buffered appends to the active segment and fsyncs as the policy says: always
    /// under [`FsyncPolicy::Always`], once the interval has passed under [`FsyncPolicy::Grouped`].
    pub fn commit(&mut self) -> Result<(), WalError> {
        self.write_buffer()?;
        match self.options.fsync {
            FsyncPolicy::Always => self.fsync(),
            FsyncPolicy::Grouped(interval) => {
                if self.last_sync.elapsed() >= interval {
                    self.fsync()?;
                }
                Ok(())
            }
        }
    }

    /// Under [`FsyncPolicy::Grouped`], fsyncs committed records once the interval has passed since
    /// the last fsync; call it from a timer (see [`Wal::sync_deadline`]). Returns whether it fsynced.
    pub fn flush_due(&mut self) -> Result<bool, WalError> {
        self.check_poisoned()?;
        let due = match self.options.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Grouped(interval) => self.last_sync.elapsed() >= interval,
        };
        if self.dirty && due {
            self.fsync()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// When [`Wal::flush_due`] next has work to do, if committed records are waiting for an fsync.
    pub fn sync_deadline(&self) -> Option<Instant> {
        match self.options.fsync {
            FsyncPolicy::Grouped(interval) if self.dirty => Some(self.last_sync + interval),
            _ => None,
        }
    }

    /// Commits the buffered appends and fsyncs now, whatever the policy (shutdown, or a caller that
    /// must not acknowledge before the disk has the record).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.write_buffer()?;
        self.fsync()
    }

    /// Commits, fsyncs and releases the directory.
    pub fn close(mut self) -> Result<(), WalError> {
        self.sync()
    }

    /// Calls `visit` for every committed record, in sequence order. Damaged records are skipped and
    /// counted; appends not yet committed are not visited.
    pub fn replay(
        &mut self,
        mut visit: impl FnMut(Seq, u8, &[u8]),
    ) -> Result<ReplayStats, WalError> {
        self.replay_located(|_, seq, kind, payload| visit(seq, kind, payload))
    }

    /// [`Wal::replay`] that also tells `visit` each record's [`Location`].
    pub fn replay_located(
        &mut self,
        mut visit: impl FnMut(Location, Seq, u8, &[u8]),
    ) -> Result<ReplayStats, WalError> {
        self.check_poisoned()?;
        let mut stats = ReplayStats::default();
        let mut last_seq = 0;
        for &first in &self.segments {
            let data = read(&segment_path(&self.dir, first))?;
            let scan = record::scan_located(
                &data,
                first.max(last_seq + 1),
                |offset, seq, kind, payload| visit(located(first, offset), seq, kind, payload),
            );
            stats.records += scan.records;
            stats.corrupt_records_skipped += scan.corrupt_regions + u64::from(scan.bad_tail > 0);
            last_seq = last_seq.max(scan.last_seq);
        }
        Ok(stats)
    }

    /// Rewrites the log keeping only the records `live` returns true for (with their sequence
    /// numbers), so the log stays proportional to the live state rather than to its history.
    ///
    /// Steps, each safe to crash after: (1) fsync and start a fresh active segment; (2) write the
    /// live records to `compact-<upto>.tmp` and fsync it (a crash here: open deletes the temporary
    /// file, the old segments are untouched); (3) rename it to `compact-<upto>.done` and fsync the
    /// directory, the commit point; (4) delete the segments before `<upto>` and rename the `.done`
    /// file to a segment named after its first record (a crash in (4): open repeats it).
    pub fn compact(
        &mut self,
        live: impl FnMut(Seq, u8, &[u8]) -> bool,
    ) -> Result<CompactStats, WalError> {
        self.compact_located(live, |_, _| {})
    }

    /// [`Wal::compact`] that, once the compaction is committed, calls `moved` with the new
    /// [`Location`] of every record it kept, in sequence order (records it did not touch, in the
    /// active segment, keep theirs). On an error before the commit point no record has moved; an
    /// error after it (step 4) may leave some moved, so after any error the caller should reopen
    /// the log, whose [`Wal::open_located`] reports every location as it is.
    pub fn compact_located(
        &mut self,
        live: impl FnMut(Seq, u8, &[u8]) -> bool,
        moved: impl FnMut(Seq, Location),
    ) -> Result<CompactStats, WalError> {
        let Some(mut compaction) = self.start_compaction()? else {
            return Ok(CompactStats::default());
        };
        compaction.write(live)?;
        self.finish_compaction(compaction, moved)
    }

    /// Step (1) of [`Wal::compact`], for a compaction whose expensive part runs on another thread
    /// while this log goes on: fsyncs and starts a fresh active segment, and returns the
    /// [`Compaction`] of every segment before it (`None`: there is none). Run
    /// [`Compaction::write`] anywhere, then [`Wal::finish_compaction`] here. Appends, commits
    /// and reads go on meanwhile (they touch only the new segments, or read the old ones, which
    /// stay until the finish); only one compaction may be open at a time, and nothing else
    /// may compact the log until it is finished.
    pub fn start_compaction(&mut self) -> Result<Option<Compaction>, WalError> {
        self.check_poisoned()?;
        self.sync()?;
        if self.active_len > 0 || self.active_first != self.next_seq {
            self.rotate()?;
        }
        let upto = self.active_first;
        let old: Vec<u64> = self
            .segments
            .iter()
            .copied()
            .filter(|&s| s < upto)
            .collect();
        if old.is_empty() {
            return Ok(None);
        }
        Ok(Some(Compaction {
            dir: self.dir.clone(),
            upto,
            old,
            kept: Vec::new(),
            stats: None,
        }))
    }

    /// Step (4) of [`Wal::compact`], on the log that started `compaction`, once
    /// [`Compaction::write`] succeeded: deletes the segments it replaced and puts the compacted
    /// file in their place, then calls `moved` with the new [`Location`] of every record kept.
    /// A compaction whose write failed or never ran changes nothing (its temporary file is
    /// removed). Errors as for [`Wal::compact_located`].
    pub fn finish_compaction(
        &mut self,
        compaction: Compaction,
        mut moved: impl FnMut(Seq, Location),
    ) -> Result<CompactStats, WalError> {
        let Compaction {
            upto, kept, stats, ..
        } = compaction;
        let done = compaction_done(&self.dir, upto);
        let Some(stats) = stats else {
            let tmp = compaction_tmp(&self.dir, upto);
            match fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &tmp)(e)),
            }
            return Ok(CompactStats::default());
        };
        let first = kept.first().map(|&(seq, _)| seq);
        finish_compaction(&self.dir, &self.segments, upto, &done, Some(first))?;
        self.segments = list(&self.dir)?.segments;
        if let Some(first) = first {
            for (seq, offset) in kept {
                moved(
                    Seq::new(seq),
                    Location {
                        segment: Seq::new(first),
                        offset,
                    },
                );
            }
        }
        Ok(stats)
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    /// Hands the buffered records to the kernel, closing segments that fill up on the way. A write
    /// error poisons the log: the segment may end in half a record, which only open repairs.
    fn write_buffer(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut buffered = std::mem::take(&mut self.buffered);
        let result = self.write_records(&buffer, &buffered);
        if result.is_err() {
            self.poisoned = true;
        }
        // Keep the allocations for the next batch, up to a size: a flood's batches of
        // megabytes would otherwise stay resident for good.
        buffer.clear();
        buffered.clear();
        buffer.shrink_to(KEPT_BUFFER);
        buffered.shrink_to(KEPT_BUFFER / 64);
        self.buffer = buffer;
        self.buffered = buffered;
        result
    }

    fn write_records(&mut self, buffer: &[u8], buffered: &[(usize, u64)]) -> Result<(), WalError> {
        let mut chunk_start = 0;
        let mut record_start = 0;
        let mut segment_len = self.active_len;
        for &(end, seq) in buffered {
            let record_len = (end - record_start) as u64;
            if segment_len > 0 && segment_len + record_len > self.options.segment_bytes {
                self.write_chunk(&buffer[chunk_start..record_start])?;
                self.rotate_to(seq)?;
                segment_len = 0;
                chunk_start = record_start;
            }
            segment_len += record_len;
            record_start = end;
        }
        self.write_chunk(&buffer[chunk_start..])
    }

    fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.active
            .write_all(bytes)
            .map_err(io("write", &segment_path(&self.dir, self.active_first)))?;
        self.active_len += bytes.len() as u64;
        self.dirty = true;
        Ok(())
    }

    fn fsync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if !self.dirty {
            return Ok(());
        }
        if let Err(e) = self.active.sync_data() {
            self.poisoned = true;
            return Err(io("fsync", &segment_path(&self.dir, self.active_first))(e));
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Closes the active segment (written and fsynced, so only the last segment can ever have a
    /// torn tail) and starts a new one named after the next sequence number.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.write_buffer()?;
        self.rotate_to(self.next_seq)?;
        self.tail_first = self.active_first;
        self.tail_len = self.active_len;
        Ok(())
    }

    /// Fsyncs the active segment and makes `first.log` the active one.
    fn rotate_to(&mut self, first: u64) -> Result<(), WalError> {
        self.fsync()?;
        let path = segment_path(&self.dir, first);
        // Append mode on an existing file keeps what is there; only an empty active segment can
        // already have this name, so its length is the right starting point either way.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("create", &path))?;
        let len = file.metadata().map_err(io("stat", &path))?.len();
        sync_dir(&self.dir)?;
        self.active = file;
        self.active_first = first;
        self.active_len = len;
        if self.segments.last() != Some(&first) {
            self.segments.push(first);
        }
        Ok(())
    }
}

/// A compaction between [`Wal::start_compaction`] and [`Wal::finish_compaction`]: the segments
/// it rewrites are closed, so [`Compaction::write`] (steps 2 and 3 of [`Wal::compact`], the part
/// that grows with the log) needs nothing of the [`Wal`] and can run on any thread.
#[derive(Debug)]
pub struct Compaction {
    dir: PathBuf,
    upto: u64,
    old: Vec<u64>,
    /// Sequence number and offset in the compacted file of every record kept.
    kept: Vec<(u64, u64)>,
    /// Set once `write` reached the commit point.
    stats: Option<CompactStats>,
}

impl Compaction {
    /// The first sequence number it does not cover: every record before it is in a segment it
    /// rewrites, every one from it on is untouched.
    pub fn upto(&self) -> Seq {
        Seq::new(self.upto)
    }

    /// Writes the records `live` keeps to `compact-<upto>.tmp`, fsyncs it and renames it to
    /// `compact-<upto>.done` (the commit point: from here a crash, or [`Wal::open`], finishes
    /// it). The old segments are only read.
    pub fn write(
        &mut self,
        mut live: impl FnMut(Seq, u8, &[u8]) -> bool,
    ) -> Result<CompactStats, WalError> {
        let tmp = compaction_tmp(&self.dir, self.upto);
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let mut out = BufWriter::new(file);
        let mut stats = CompactStats {
            segments_removed: self.old.len() as u64,
            ..CompactStats::default()
        };
        let mut encoded = Vec::new();
        let mut written: u64 = 0;
        let mut last_seq = 0;
        self.kept.clear();
        for &first in &self.old {
            let data = read(&segment_path(&self.dir, first))?;
            let mut write_err = None;
            let kept = &mut self.kept;
            let scan = record::scan(&data, first.max(last_seq + 1), |seq, kind, payload| {
                if write_err.is_some() {
                    return;
                }
                if !live(seq, kind, payload) {
                    stats.dropped += 1;
                    return;
                }
                stats.kept += 1;
                encoded.clear();
                // The payload came out of a valid record, so its length fits a u32.
                let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                record::encode(&mut encoded, seq, kind, payload, len);
                kept.push((seq.get(), written));
                written += encoded.len() as u64;
                if let Err(e) = out.write_all(&encoded) {
                    write_err = Some(e);
                }
            });
            if let Some(e) = write_err {
                return Err(io("write", &tmp)(e));
            }
            last_seq = last_seq.max(scan.last_seq);
        }
        let file = out
            .into_inner()
            .map_err(|e| io("write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        let done = compaction_done(&self.dir, self.upto);
        fs::rename(&tmp, &done).map_err(io("rename", &tmp))?;
        sync_dir(&self.dir)?;
        self.stats = Some(stats);
        Ok(stats)
    }
}

/// Reads the committed records of a log by [`Location`] from any thread, without the [`Wal`]
/// (which its single writer owns). It sees only records whose [`Wal::commit`] has returned: a
/// record being written at the same moment may read as [`WalError::RecordCorrupt`]. A record a
/// compaction moved or dropped meanwhile is [`WalError::RecordNotFound`] at its old location;
/// the caller resolves it again (see [`Wal::compact_located`]). It takes no lock on the
/// directory and keeps no file open between reads, so it never holds a deleted segment alive.
#[derive(Debug, Clone)]
pub struct WalReader {
    dir: PathBuf,
}

impl WalReader {
    /// [`Wal::read_at`] for committed records: the kind and payload of record `seq` at
    /// `location`, its sequence number and checksum checked.
    pub fn read_at(&self, location: Location, seq: Seq) -> Result<(u8, Vec<u8>), WalError> {
        read_committed(&self.dir, location, seq)
    }
}

/// One record of a segment file by location: one `pread` for the header, one for the payload.
fn read_committed(dir: &Path, location: Location, seq: Seq) -> Result<(u8, Vec<u8>), WalError> {
    let not_found = WalError::RecordNotFound { seq, location };
    let path = segment_path(dir, location.segment.get());
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found),
        Err(e) => return Err(io("open", &path)(e)),
    };
    let mut header = [0u8; HEADER_LEN];
    let eof_is_not_found = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => WalError::RecordNotFound { seq, location },
        _ => io("read", &path)(e),
    };
    file.read_exact_at(&mut header, location.offset)
        .map_err(eof_is_not_found)?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&header[..4]);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&header[8..16]);
    if u64::from_le_bytes(seq_bytes) != seq.get() {
        return Err(not_found);
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_PAYLOAD {
        return Err(WalError::RecordCorrupt { seq, location });
    }
    let mut data = vec![0u8; HEADER_LEN + len];
    data[..HEADER_LEN].copy_from_slice(&header);
    file.read_exact_at(&mut data[HEADER_LEN..], location.offset + HEADER_LEN as u64)
        .map_err(|e| match e.kind() {
            // The length field claims more than the segment holds: damage, as the sequence
            // number matched.
            std::io::ErrorKind::UnexpectedEof => WalError::RecordCorrupt { seq, location },
            _ => io("read", &path)(e),
        })?;
    let kind = header[16];
    match record::decode_at(&data, 0, seq.get()) {
        Some(rec) if rec.seq == seq => {
            data.drain(..HEADER_LEN);
            Ok((kind, data))
        }
        _ => Err(WalError::RecordCorrupt { seq, location }),
    }
}

fn located(segment: u64, offset: usize) -> Location {
    Location {
        segment: Seq::new(segment),
        offset: offset as u64,
    }
}

/// Step (4) of a compaction: delete the segments it replaced, then give its file a segment name.
/// Idempotent, so open can repeat it after a crash part way through.
/// Step (4) of a compaction. `first_kept`: the first record of the compacted file when the
/// caller knows it (`Some(None)`: it is empty); `None` reads the file to find it (open, after a
/// crash).
fn finish_compaction(
    dir: &Path,
    segments: &[u64],
    upto: u64,
    done: &Path,
    first_kept: Option<Option<u64>>,
) -> Result<(), WalError> {
    for &first in segments.iter().filter(|&&s| s < upto) {
        let path = segment_path(dir, first);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
    }
    sync_dir(dir)?;
    let first_live = match first_kept {
        Some(first) => first,
        None => {
            let data = read(done)?;
            let mut first = None;
            record::scan(&data, 1, |seq, _, _| {
                first.get_or_insert(seq.get());
            });
            first
        }
    };
    match first_live {
        Some(first) => {
            let path = segment_path(dir, first);
            fs::rename(done, &path).map_err(io("rename", done))?;
        }
        None => fs::remove_file(done).map_err(io("remove", done))?,
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            segment_bytes: 256,
            fsync: FsyncPolicy::Always,
        }
    }

    fn contents(wal: &mut Wal) -> Vec<(u64, u8, Vec<u8>)> {
        let mut out = Vec::new();
        wal.replay(|s, k, p| out.push((s.get(), k, p.to_vec())))
            .unwrap();
        out
    }

    /// Where a crash leaves a compaction, and what the log must hold after reopening.
    #[derive(Debug, Clone, Copy)]
    enum CrashAt {
        /// After the temporary file is written: the compaction is discarded.
        TmpWritten,
        /// After the rename to `.done`: the compaction is finished at open.
        DoneRenamed,
        /// After some old segments are deleted: open deletes the rest and renames.
        HalfDeleted,
    }

    #[test]
    fn crash_during_compaction_recovers() {
        for crash in [
            CrashAt::TmpWritten,
            CrashAt::DoneRenamed,
            CrashAt::HalfDeleted,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path(), opts()).unwrap();
            let mut all = Vec::new();
            for i in 0..40u8 {
                let payload = vec![i; 20];
                let seq = wal.append(i % 3, &payload).unwrap();
                all.push((seq.get(), i % 3, payload));
            }
            wal.commit().unwrap();
            let mut compaction = wal.start_compaction().unwrap().unwrap();
            compaction.write(|_, kind, _| kind == 0).unwrap();
            let upto = compaction.upto().get();
            let tmp = compaction_tmp(dir.path(), upto);
            let done = compaction_done(dir.path(), upto);
            match crash {
                // The crash came before the rename.
                CrashAt::TmpWritten => fs::rename(&done, &tmp).unwrap(),
                CrashAt::DoneRenamed => {}
                CrashAt::HalfDeleted => {
                    let old: Vec<u64> =
                        wal.segments.iter().copied().filter(|&s| s < upto).collect();
                    assert!(old.len() > 2, "the test needs several segments");
                    for first in &old[..old.len() / 2] {
                        fs::remove_file(segment_path(dir.path(), *first)).unwrap();
                    }
                }
            }
            drop(wal);
            let (mut wal, recovery) = Wal::open(dir.path(), opts()).unwrap();
            let expected: Vec<_> = match crash {
                CrashAt::TmpWritten => all.clone(),
                CrashAt::DoneRenamed | CrashAt::HalfDeleted => {
                    all.iter().filter(|r| r.1 == 0).cloned().collect()
                }
            };
            assert_eq!(contents(&mut wal), expected, "{crash:?}");
            assert_eq!(
                recovery.records_replayed,
                expected.len() as u64,
                "{crash:?}"
            );
            assert_eq!(
                recovery.compaction_finished,
                !matches!(crash, CrashAt::TmpWritten),
                "{crash:?}"
            );
            let leftovers = list(dir.path()).unwrap();
            assert!(leftovers.compaction_tmp.is_empty(), "{crash:?}");
            assert!(leftovers.compaction_done.is_empty(), "{crash:?}");
            // The log goes on after recovery, numbering after everything ever appended.
            let seq = wal.append(9, b"after").unwrap();
            assert_eq!(seq.get(), 41, "{crash:?}");
        }
    }
}
