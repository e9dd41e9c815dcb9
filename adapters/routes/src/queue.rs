//! A route's durable queue: one write-ahead log (iothub-wal) per route under
//! `<data_dir>/routes/<route-id>/`, holding `message` records (a [`RouteMessage`]) and `done`
//! records (the sequence numbers of messages delivered or dead-lettered). What is pending is
//! every message without a `done`: rebuilt by replay at open, kept in memory meanwhile
//! (bounded, see [`QueueLimits`]). Compaction rewrites the closed segments keeping only
//! pending messages, once enough `done` records piled up.
//!
//! The calls are blocking (file I/O): the runner makes them on blocking threads. The log's
//! fsync policy is grouped: an appended batch is in the kernel when [`DurableQueue::push`]
//! returns (a SIGKILL loses nothing), and on disk within [`FSYNC_INTERVAL`].

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iothub_wal::{FsyncPolicy, Options, Seq, Wal, WalError};

use crate::codec;
use iothub_model::RouteMessage;

const KIND_MESSAGE: u8 = 1;
const KIND_DONE: u8 = 2;
/// Grouped fsync: the loss window on a power failure (none on a process crash).
pub const FSYNC_INTERVAL: Duration = Duration::from_millis(20);
/// Compact once this many messages were settled since the last compaction.
const COMPACT_AFTER: u64 = 20_000;
const SEGMENT_BYTES: u64 = 4 << 20;

/// How much one route's queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_messages: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// One pending message.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub message: Arc<RouteMessage>,
    /// Delivery attempts that ended in a retry (not persisted: a restart starts again).
    pub attempts: u32,
}

impl Pending {
    fn weight(&self) -> u64 {
        (self.message.topic.as_str().len() + self.message.payload.len()) as u64 + 64
    }
}

/// What opening found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    pub pending: usize,
    /// Records that did not parse (skipped; their messages are lost) plus damaged regions.
    pub corrupt: u64,
    pub torn_tail_bytes: u64,
}

pub struct DurableQueue {
    wal: Wal,
    pending: VecDeque<Pending>,
    bytes: u64,
    limits: QueueLimits,
    settled_since_compaction: u64,
}

impl DurableQueue {
    /// Opens (or creates) the queue in `dir` and rebuilds what is pending.
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<(Self, Opened), QueueError> {
        let mut messages: Vec<(u64, RouteMessage)> = Vec::new();
        let mut done: HashSet<u64> = HashSet::new();
        let mut corrupt = 0u64;
        let options = Options {
            segment_bytes: SEGMENT_BYTES,
            fsync: FsyncPolicy::Grouped(FSYNC_INTERVAL),
        };
        let (wal, recovery) = Wal::open_with(dir, options, |seq, kind, payload| match kind {
            KIND_MESSAGE => match codec::decode(payload) {
                Ok(m) => messages.push((seq.get(), m)),
                Err(error) => {
                    corrupt += 1;
                    tracing::warn!(message = "route queue: unreadable message record skipped", %error, seq = seq.get());
                }
            },
            KIND_DONE => match codec::decode_done(payload) {
                Ok(seqs) => done.extend(seqs),
                Err(_) => corrupt += 1,
            },
            _ => corrupt += 1,
        })?;
        let mut q = DurableQueue {
            wal,
            pending: VecDeque::new(),
            bytes: 0,
            limits,
            settled_since_compaction: done.len() as u64,
        };
        for (seq, m) in messages {
            if !done.contains(&seq) {
                let p = Pending {
                    seq,
                    message: Arc::new(m),
                    attempts: 0,
                };
                q.bytes += p.weight();
                q.pending.push_back(p);
            }
        }
        let opened = Opened {
            pending: q.pending.len(),
            corrupt: corrupt + recovery.corrupt_records_skipped,
            torn_tail_bytes: recovery.torn_tail_bytes_dropped,
        };
        Ok((q, opened))
    }

    /// Appends `messages` and hands them to the kernel; returns how many were kept. Those
    /// beyond the limits are refused (the queue-full policy: the newest are dropped).
    pub fn push(&mut self, messages: Vec<RouteMessage>) -> Result<usize, QueueError> {
        let mut kept = Vec::with_capacity(messages.len());
        for m in messages {
            let weight = (m.topic.as_str().len() + m.payload.len()) as u64 + 64;
            if self.pending.len() + kept.len() >= self.limits.max_messages
                || self.bytes + weight > self.limits.max_bytes
            {
                continue;
            }
            let seq = self.wal.append(KIND_MESSAGE, &codec::encode(&m))?;
            self.bytes += weight;
            kept.push(Pending {
                seq: seq.get(),
                message: Arc::new(m),
                attempts: 0,
            });
        }
        self.wal.commit()?;
        let n = kept.len();
        self.pending.extend(kept);
        Ok(n)
    }

    /// Up to `max` pending messages from the front (oldest first), left in the queue.
    pub fn front(&self, max: usize) -> Vec<Pending> {
        self.pending.iter().take(max).cloned().collect()
    }

    /// Records that `seqs` are settled (delivered or dead-lettered) and forgets them.
    pub fn settle(&mut self, seqs: &[u64]) -> Result<(), QueueError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.wal.append(KIND_DONE, &codec::encode_done(seqs))?;
        self.wal.commit()?;
        let set: HashSet<u64> = seqs.iter().copied().collect();
        let mut freed = 0;
        self.pending.retain(|p| {
            let keep = !set.contains(&p.seq);
            if !keep {
                freed += p.weight();
            }
            keep
        });
        self.bytes -= freed.min(self.bytes);
        self.settled_since_compaction += seqs.len() as u64;
        if self.settled_since_compaction >= COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    /// Counts a failed attempt for each of `seqs`; returns their attempt counts.
    pub fn note_retry(&mut self, seqs: &[u64]) -> Vec<(u64, u32)> {
        let set: HashSet<u64> = seqs.iter().copied().collect();
        self.pending
            .iter_mut()
            .filter(|p| set.contains(&p.seq))
            .map(|p| {
                p.attempts += 1;
                (p.seq, p.attempts)
            })
            .collect()
    }

    /// Rewrites the closed segments keeping only pending messages.
    pub fn compact(&mut self) -> Result<(), QueueError> {
        let live: HashSet<u64> = self.pending.iter().map(|p| p.seq).collect();
        self.wal
            .compact(|seq: Seq, kind, _| kind == KIND_MESSAGE && live.contains(&seq.get()))?;
        self.settled_since_compaction = 0;
        Ok(())
    }

    /// Fsyncs if the grouped interval has passed.
    pub fn flush_due(&mut self) -> Result<(), QueueError> {
        self.wal.flush_due()?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limits.max_messages
    }

    /// Fsyncs and closes the log.
    pub fn close(self) -> Result<(), QueueError> {
        self.wal.close()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use iothub_model::TopicName;

    use super::*;
    use iothub_model::RouteOrigin;

    fn m(i: usize) -> RouteMessage {
        RouteMessage {
            topic: TopicName::new(&format!("t/{i}")).unwrap(),
            payload: Bytes::from(format!("p{i}")),
            qos: 1,
            retain: false,
            origin: RouteOrigin::Anonymous("c".into()),
            timestamp_ms: i as u64,
            user_properties: vec![],
            content_type: None,
        }
    }

    fn payloads(q: &DurableQueue) -> Vec<String> {
        q.front(usize::MAX)
            .iter()
            .map(|p| String::from_utf8_lossy(&p.message.payload).into_owned())
            .collect()
    }

    #[test]
    fn pending_messages_survive_a_reopen_and_settled_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueueLimits::default();
        {
            let (mut q, opened) = DurableQueue::open(dir.path(), limits).unwrap();
            assert_eq!(opened.pending, 0);
            assert_eq!(q.push((0..5).map(m).collect()).unwrap(), 5);
            let front = q.front(2);
            q.settle(&front.iter().map(|p| p.seq).collect::<Vec<_>>())
                .unwrap();
            // Dropped without close: only what push/settle committed counts (a crash).
        }
        let (q, opened) = DurableQueue::open(dir.path(), limits).unwrap();
        assert_eq!(opened.pending, 3);
        assert_eq!(payloads(&q), vec!["p2", "p3", "p4"]);
    }

    #[test]
    fn a_full_queue_refuses_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueueLimits {
            max_messages: 3,
            max_bytes: u64::MAX,
        };
        let (mut q, _) = DurableQueue::open(dir.path(), limits).unwrap();
        assert_eq!(q.push((0..5).map(m).collect()).unwrap(), 3);
        assert!(q.is_full());
        assert_eq!(payloads(&q), vec!["p0", "p1", "p2"]);
        let by_bytes = QueueLimits {
            max_messages: usize::MAX,
            max_bytes: 2 * (3 + 2 + 64),
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = DurableQueue::open(dir.path(), by_bytes).unwrap();
        assert_eq!(q.push((0..5).map(m).collect()).unwrap(), 2);
    }

    #[test]
    fn compaction_keeps_exactly_the_pending_messages() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueueLimits::default();
        {
            let (mut q, _) = DurableQueue::open(dir.path(), limits).unwrap();
            for round in 0..3 {
                q.push((round * 100..round * 100 + 100).map(m).collect())
                    .unwrap();
                let front = q.front(90);
                q.settle(&front.iter().map(|p| p.seq).collect::<Vec<_>>())
                    .unwrap();
            }
            q.compact().unwrap();
            q.close().unwrap();
        }
        let (q, opened) = DurableQueue::open(dir.path(), limits).unwrap();
        assert_eq!(opened.pending, 30);
        assert_eq!(opened.corrupt, 0);
        // 300 pushed, the oldest 270 settled.
        let want: Vec<String> = (270..300).map(|i| format!("p{i}")).collect();
        assert_eq!(payloads(&q), want);
    }

    #[test]
    fn retries_are_counted_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = DurableQueue::open(dir.path(), QueueLimits::default()).unwrap();
        q.push((0..2).map(m).collect()).unwrap();
        let seqs: Vec<u64> = q.front(2).iter().map(|p| p.seq).collect();
        q.note_retry(&seqs);
        let again = q.note_retry(&seqs[..1]);
        assert_eq!(again, vec![(seqs[0], 2)]);
        assert_eq!(q.front(2)[1].attempts, 1);
    }
}
