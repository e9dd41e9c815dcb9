//! [`Store`]: the engine's [`Journal`] over the write-ahead log, with one writer thread.
//!
//! `record` (called under engine locks) only pushes the operation onto a pending list
//! under a short mutex and takes a ticket. The writer thread takes the whole list at once,
//! encodes and appends every operation, commits them with one write (and, under
//! `FsyncPolicy::Always`, one fsync), folds them into its [`DurableState`], then publishes
//! "durable up to ticket N" on a `tokio::sync::watch`: group commit, so durability costs one
//! commit per batch, not per message, and the more load the bigger the batches. Under
//! `FsyncPolicy::Grouped` it also fsyncs at the WAL's deadline. When the log holds many
//! more records than the state needs it compacts, keeping the records
//! [`DurableState::live_seqs`] names: the writer starts the compaction (a fresh segment, the
//! live set), an `iothub-compact` thread rewrites the closed segments while commits go on, and
//! the writer finishes it (old segments deleted, index moved) when that thread reports. The
//! pause commits see is collecting the live set, which walks the state once.
//!
//! Reading messages back ([`Journal::load`], for the queue entries the engine spilled):
//! every message record's location is kept in an index (message id -> sequence number and
//! [`Location`], about 50 bytes per stored message) that the writer updates after each
//! commit and moves when a compaction finishes (under its write lock, so a load never reads
//! a segment being deleted); a message recorded but not yet committed is served from the
//! pending operations. A load reads one record with a [`WalReader`] (two `pread`s) on the
//! caller's thread.
//!
//! A failed write poisons the WAL: the writer logs it, stops, and never advances the
//! durable ticket again, so nothing more is acknowledged as durable (connections hold their
//! PUBACKs) rather than lying.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iothub_engine::{Journal, JournalOp, LoadError, MessageId, RestoredHub};
use iothub_model::{HubId, Message};
use iothub_wal::{
    CompactStats, Compaction, FsyncPolicy, Location, Options, Seq, Wal, WalError, WalReader,
};
use metrics::counter;
use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{error, info, warn};

use crate::codec::{self, DecodeError};
use crate::state::{DurableState, StateCounts};

/// How the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub fsync: FsyncPolicy,
    /// Compaction runs when the log holds more than this many records and more than twice
    /// the live ones.
    pub compact_min_records: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Grouped(Duration::from_millis(10)),
            compact_min_records: 100_000,
        }
    }
}

/// Why the store cannot open or close cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("the store's writer thread panicked")]
    WriterPanicked,
    #[error("the store's compaction thread panicked")]
    CompactionPanicked,
    #[error("the store stopped after a write error; acknowledged state is intact up to it")]
    Failed,
}

/// What opening the store found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub records: u64,
    pub torn_tail_bytes: u64,
    /// Damaged regions the WAL skipped, plus records whose payload did not decode.
    pub corrupt_records: u64,
    pub undecodable_records: u64,
    pub state: StateCounts,
    pub elapsed: Duration,
    /// The first journal id the engine may hand out (`Engine::restore`'s `next_id`).
    pub next_id: u64,
}

struct Pending {
    next_ticket: u64,
    ops: VecDeque<JournalOp>,
    closing: bool,
    /// Open groups ([`Journal::begin_group`]) by first ticket, with how many opened there:
    /// the writer takes no operation from the lowest one on until it closes.
    open_groups: BTreeMap<u64, u32>,
    /// Closed groups not yet written, as (first ticket, ticket after the last): a commit
    /// never ends inside one, so a crash keeps all of a group or none of it.
    closed_groups: Vec<(u64, u64)>,
    /// Messages recorded and not yet in the index: what `load` finds here is not on disk
    /// yet. The writer removes them once it has indexed them.
    unwritten: HashMap<MessageId, Arc<Message>>,
    /// Set by the compaction thread when it is done: wakes the writer to finish it.
    compacted: bool,
}

impl Pending {
    /// The ticket of the first operation waiting.
    fn first_ticket(&self) -> u64 {
        self.next_ticket - self.ops.len() as u64
    }

    /// The first ticket the writer may not take yet: the first of the open groups, or of a
    /// closed group that overlaps it (groups of concurrent threads interleave).
    fn barrier(&self) -> u64 {
        if self.closing {
            return u64::MAX;
        }
        let mut barrier = self.open_groups.keys().next().copied().unwrap_or(u64::MAX);
        while let Some(s) = self
            .closed_groups
            .iter()
            .filter(|(s, e)| *s < barrier && barrier < *e)
            .map(|(s, _)| *s)
            .min()
        {
            barrier = s;
        }
        barrier
    }

    /// Whether the first waiting operation may be taken (it is before every open group).
    fn first_takeable(&self) -> bool {
        !self.ops.is_empty() && self.first_ticket() < self.barrier()
    }

    /// Whether a commit may end before ticket `t` (no closed group spans it).
    fn may_end_before(&self, t: u64) -> bool {
        !self.closed_groups.iter().any(|(s, e)| *s < t && t < *e)
    }
}

/// At most this many operations, or about this many payload bytes, go into one commit, so
/// a flood does not build a batch (and a write buffer) of hundreds of megabytes.
const BATCH_OPS: usize = 8192;
const BATCH_BYTES: usize = 8 << 20;

/// The payload bytes an operation carries, to bound a batch.
fn op_bytes(op: &JournalOp) -> usize {
    match op {
        JournalOp::Message { message, .. } => message.weight(),
        JournalOp::WillPending { will, .. } => will.message.weight(),
        _ => 64,
    }
}

/// Where each committed message record lies (see the module docs).
type MessageIndex = HashMap<MessageId, (Seq, Location)>;

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: tokio::sync::watch::Sender<u64>,
    /// Written by the writer after each commit and when a compaction finishes (held while
    /// the old segments are deleted); read by `load`.
    index: RwLock<MessageIndex>,
    reader: WalReader,
    compactions: AtomicU64,
}

/// A store just opened: the store, the state to give `Engine::restore`, and what the open
/// found.
pub struct Opened {
    pub store: Store,
    pub restored: Vec<(HubId, RestoredHub)>,
    pub report: OpenReport,
}

/// The durable store. Implements [`Journal`]; [`Store::close`] flushes, fsyncs and stops it.
pub struct Store {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, replays it and starts the writer.
    /// Returns the state to hand to `Engine::restore`. A torn tail is cut and a damaged or
    /// undecodable record skipped, each counted and logged; only an unusable directory is
    /// an error.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Opened, StoreError> {
        let started = Instant::now();
        let mut state = DurableState::default();
        let mut undecodable = 0u64;
        let mut first_error: Option<(u64, DecodeError)> = None;
        let mut index = MessageIndex::new();
        let (wal, recovery) = Wal::open_located(
            dir,
            Options {
                fsync: options.fsync,
                ..Options::default()
            },
            |location, seq, kind, payload| match codec::decode(kind, payload) {
                Ok(op) => {
                    if let JournalOp::Message { id, .. } = &op {
                        index.insert(*id, (seq, location));
                    }
                    state.apply(seq.get(), &op);
                }
                Err(e) => {
                    undecodable += 1;
                    first_error.get_or_insert((seq.get(), e));
                }
            },
        )?;
        state.finish_replay();
        index.retain(|id, _| state.has_message(*id));
        if let Some((seq, e)) = &first_error {
            warn!(message = "store records that do not decode were skipped", count = undecodable, first_seq = seq, error = %e);
        }
        let report = OpenReport {
            records: recovery.records_replayed,
            torn_tail_bytes: recovery.torn_tail_bytes_dropped,
            corrupt_records: recovery.corrupt_records_skipped + undecodable,
            undecodable_records: undecodable,
            state: state.counts(),
            elapsed: started.elapsed(),
            next_id: state.next_id(),
        };
        counter!("iothub_store_corrupt_records_total").increment(report.corrupt_records);
        counter!("iothub_store_torn_tail_bytes_total").increment(report.torn_tail_bytes);
        // Exported from the start (at 0), so dashboards and alerts see them before the
        // first write or compaction.
        counter!("iothub_store_records_written_total").increment(0);
        counter!("iothub_store_commits_total").increment(0);
        counter!("iothub_store_compactions_total").increment(0);
        info!(
            message = "store opened",
            dir = %dir.display(),
            records = report.records,
            torn_tail_bytes = report.torn_tail_bytes,
            corrupt_records = report.corrupt_records,
            sessions = report.state.sessions,
            retained = report.state.retained,
            elapsed_ms = report.elapsed.as_millis() as u64,
        );
        let restored = state.restored();
        state.drop_payloads();
        let (durable, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                next_ticket: 1,
                ops: VecDeque::new(),
                closing: false,
                open_groups: BTreeMap::new(),
                closed_groups: Vec::new(),
                unwritten: HashMap::new(),
                compacted: false,
            }),
            wake: Condvar::new(),
            durable,
            index: RwLock::new(index),
            reader: wal.reader(),
            compactions: AtomicU64::new(0),
        });
        let writer = Writer {
            shared: shared.clone(),
            wal: Some(wal),
            state,
            log_records: recovery.records_replayed,
            next_compact_check: 0,
            options,
            buf: Vec::new(),
            written: Vec::new(),
            compaction: None,
        };
        let handle = std::thread::Builder::new()
            .name("iothub-store".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        Ok(Opened {
            store: Store {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            restored,
            report,
        })
    }

    /// Writes everything recorded so far, fsyncs and stops the writer. Later `record`s are
    /// not written. Idempotent.
    pub fn close(&self) -> Result<(), StoreError> {
        {
            let mut p = self.shared.pending.lock();
            p.closing = true;
        }
        self.shared.wake.notify_one();
        let handle = self.writer.lock().take();
        match handle {
            Some(h) => h.join().map_err(|_| StoreError::WriterPanicked)?,
            None => Ok(()),
        }
    }

    /// The highest ticket durable so far.
    pub fn durable_ticket(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Compactions finished since the store opened.
    pub fn compactions(&self) -> u64 {
        self.shared.compactions.load(Ordering::Relaxed)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            error!(message = "the store did not close cleanly", error = %e);
        }
    }
}

impl Journal for Store {
    fn record(&self, op: JournalOp) -> u64 {
        let (ticket, first) = {
            let mut p = self.shared.pending.lock();
            let ticket = p.next_ticket;
            p.next_ticket += 1;
            if let JournalOp::Message { id, message, .. } = &op {
                p.unwritten.insert(*id, message.clone());
            }
            p.ops.push_back(op);
            (ticket, p.ops.len() == 1)
        };
        if first {
            self.shared.wake.notify_one();
        }
        ticket
    }

    fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    fn begin_group(&self) -> u64 {
        let mut p = self.shared.pending.lock();
        let start = p.next_ticket;
        *p.open_groups.entry(start).or_default() += 1;
        start
    }

    fn loads_messages(&self) -> bool {
        true
    }

    fn load(&self, id: MessageId) -> Result<Arc<Message>, LoadError> {
        // The writer indexes a message before it leaves `unwritten`: not there means in the
        // index, or gone.
        if let Some(message) = self.shared.pending.lock().unwritten.get(&id) {
            return Ok(message.clone());
        }
        let index = self.shared.index.read();
        let &(seq, location) = index.get(&id).ok_or(LoadError::NotFound(id))?;
        let unreadable = |reason: String| LoadError::Unreadable { id, reason };
        let (kind, payload) = self
            .shared
            .reader
            .read_at(location, seq)
            .map_err(|e| unreadable(e.to_string()))?;
        drop(index);
        match codec::decode(kind, &payload) {
            Ok(JournalOp::Message {
                id: got, message, ..
            }) if got == id => Ok(message),
            Ok(_) => Err(unreadable(format!("record {seq} is not this message"))),
            Err(e) => Err(unreadable(e.to_string())),
        }
    }

    fn end_group(&self, start: u64) {
        let wake = {
            let mut p = self.shared.pending.lock();
            let Some(n) = p.open_groups.get_mut(&start) else {
                return;
            };
            *n -= 1;
            if *n == 0 {
                p.open_groups.remove(&start);
            }
            let end = p.next_ticket;
            if end > start + 1 {
                p.closed_groups.push((start, end));
            }
            p.first_takeable()
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    wal: Option<Wal>,
    state: DurableState,
    /// Records in the log (replayed + appended - compacted away).
    log_records: u64,
    /// `log_records` at which [`Writer::maybe_compact`] next looks at the live state.
    next_compact_check: u64,
    options: StoreOptions,
    buf: Vec<u8>,
    /// Message records of the batch being written, indexed once it is committed.
    written: Vec<(MessageId, Seq, Location)>,
    /// The compaction being written on its own thread, if one is.
    compaction: Option<RunningCompaction>,
}

/// A compaction whose [`Compaction::write`] runs on the `iothub-compact` thread.
struct RunningCompaction {
    thread: JoinHandle<(Compaction, Result<CompactStats, WalError>)>,
    started: Instant,
}

impl Writer {
    fn run(mut self) -> Result<(), StoreError> {
        let result = self.work();
        if let Err(e) = &result {
            error!(message = "the store stopped: nothing more is acknowledged as durable", error = %e);
        }
        result
    }

    fn work(&mut self) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        loop {
            let (last_ticket, closing) = {
                let mut p = self.shared.pending.lock();
                while !p.first_takeable() && !p.closing && !p.compacted {
                    let deadline = self.wal.as_ref().and_then(Wal::sync_deadline);
                    match deadline {
                        Some(at) => {
                            if self.shared.wake.wait_until(&mut p, at).timed_out() {
                                break;
                            }
                        }
                        None => self.shared.wake.wait(&mut p),
                    }
                }
                let mut bytes = 0;
                let barrier = p.barrier();
                loop {
                    let first = p.first_ticket();
                    if first >= barrier
                        || ((batch.len() >= BATCH_OPS || bytes >= BATCH_BYTES)
                            && p.may_end_before(first))
                    {
                        break;
                    }
                    let Some(op) = p.ops.pop_front() else {
                        break;
                    };
                    bytes += op_bytes(&op);
                    batch.push(op);
                }
                let first = p.first_ticket();
                p.closed_groups.retain(|(_, end)| *end > first);
                if p.ops.capacity() > 4 * BATCH_OPS && p.ops.len() < BATCH_OPS {
                    // A flood's backlog is written: give its memory back.
                    p.ops.shrink_to(BATCH_OPS);
                }
                // The ops left behind hold the tickets after this batch's last one.
                let last = p.next_ticket - 1 - p.ops.len() as u64;
                (last, p.closing && p.ops.is_empty())
            };
            if std::mem::take(&mut self.shared.pending.lock().compacted) {
                self.finish_compaction()?;
            }
            let Some(wal) = self.wal.as_mut() else {
                return Err(StoreError::Failed);
            };
            if batch.is_empty() {
                wal.flush_due()?;
            } else {
                for op in batch.drain(..) {
                    self.buf.clear();
                    let kind = codec::encode(&op, &mut self.buf);
                    let (seq, location) = wal.append_located(kind, &self.buf)?;
                    if let JournalOp::Message { id, .. } = &op {
                        self.written.push((*id, seq, location));
                    }
                    self.state.apply(seq.get(), &op);
                    self.log_records += 1;
                    counter!("iothub_store_records_written_total").increment(1);
                }
                wal.commit()?;
                counter!("iothub_store_commits_total").increment(1);
                self.index_written();
                self.shared.durable.send_replace(last_ticket);
                self.maybe_compact()?;
            }
            if closing {
                if self.compaction.is_some() {
                    // Finished now rather than by the next open.
                    self.finish_compaction()?;
                }
                if let Some(wal) = self.wal.take() {
                    wal.close()?;
                }
                info!(message = "store closed");
                return Ok(());
            }
        }
    }

    /// Indexes the message records just committed, then lets `unwritten` forget them.
    fn index_written(&mut self) {
        if self.written.is_empty() {
            return;
        }
        {
            let mut index = self.shared.index.write();
            for &(id, seq, location) in &self.written {
                index.insert(id, (seq, location));
            }
        }
        let mut p = self.shared.pending.lock();
        for (id, _, _) in self.written.drain(..) {
            p.unwritten.remove(&id);
        }
    }

    /// Starts a compaction when the log holds more than twice the records the live state
    /// needs. Only step 1 (a fresh active segment) and collecting the live set run here; the
    /// rewrite runs on the `iothub-compact` thread while commits go on, and
    /// [`Writer::finish_compaction`] ends it when that thread reports.
    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let min = self.options.compact_min_records;
        if self.compaction.is_some()
            || self.log_records <= min
            || self.log_records < self.next_compact_check
        {
            return Ok(());
        }
        let paused = Instant::now();
        let live = self.state.live_seqs();
        // Collecting the live set walks the whole state: doing it after every commit made a
        // growing state quadratic (issue 6: 1M retained messages took 170x the time of 100k).
        // Look again once the log has grown by an eighth: amortized O(1) per record, and the
        // log outgrows the compaction threshold by at most an eighth.
        self.next_compact_check = self.log_records + self.log_records / 8;
        let started = match self.wal.as_mut() {
            Some(wal) if self.log_records > 2 * live.len() as u64 => wal.start_compaction()?,
            _ => None,
        };
        if started.is_some() {
            // The state forgets now what the live set just left out, so that it matches the
            // compacted log whatever is applied while the rewrite runs.
            self.state.forget_unreferenced();
        }
        // What is unreferenced now leaves the live set at the next look.
        self.state.mark_unreferenced();
        let Some(mut compaction) = started else {
            return Ok(());
        };
        let live_records = live.len();
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("iothub-compact".into())
            .spawn(move || {
                let result = compaction.write(|seq, _, _| live.contains(&seq.get()));
                shared.pending.lock().compacted = true;
                shared.wake.notify_one();
                (compaction, result)
            })
            .map_err(StoreError::Thread)?;
        info!(
            message = "store compaction started",
            log_records = self.log_records,
            live_records,
            // What commits waited for: the live set, the fresh segment.
            pause_ms = paused.elapsed().as_millis() as u64,
        );
        self.compaction = Some(RunningCompaction {
            thread,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Waits for the running compaction's rewrite (at once when its thread reported), then
    /// puts the compacted file in place of the old segments and moves the index to the new
    /// locations, under the index's write lock: a load never reads a deleted segment.
    fn finish_compaction(&mut self) -> Result<(), StoreError> {
        let Some(running) = self.compaction.take() else {
            return Ok(());
        };
        let (compaction, written) = running
            .thread
            .join()
            .map_err(|_| StoreError::CompactionPanicked)?;
        let stats = written?;
        let Some(wal) = self.wal.as_mut() else {
            return Ok(());
        };
        let upto = compaction.upto();
        let mut moved = HashMap::new();
        let mut index = self.shared.index.write();
        wal.finish_compaction(compaction, |seq, location| {
            moved.insert(seq, location);
        })?;
        index.retain(|_, (seq, location)| {
            if *seq >= upto {
                return true;
            }
            match moved.get(seq) {
                Some(new) => {
                    *location = *new;
                    true
                }
                None => false,
            }
        });
        drop(index);
        self.log_records = self.log_records.saturating_sub(stats.dropped);
        self.next_compact_check = self.log_records + self.log_records / 8;
        counter!("iothub_store_compactions_total").increment(1);
        self.shared.compactions.fetch_add(1, Ordering::Relaxed);
        info!(
            message = "store compacted",
            kept = stats.kept,
            dropped = stats.dropped,
            segments_removed = stats.segments_removed,
            elapsed_ms = running.started.elapsed().as_millis() as u64,
        );
        Ok(())
    }
}
