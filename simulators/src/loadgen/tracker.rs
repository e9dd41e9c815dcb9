//! Loss and duplicate accounting for one (publisher, subscriber) pair.
//!
//! A bit per sequence number: memory is one bit per message the pair carried (a million
//! messages cost 125 KiB), reordering is handled for free, and a message that never came is
//! found at the end by comparing the number of distinct sequences seen with the number sent.

/// Sequence numbers at or above this are not tracked (a bitset for them would be huge): the
/// generator cannot send that many per publisher in a sensible run, so such a number means a
/// payload that was not ours.
pub const MAX_SEQUENCE: u32 = 1 << 30;

/// What [`SeqTracker::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Duplicate,
    /// At or above [`MAX_SEQUENCE`]: not recorded.
    OutOfRange,
}

/// Which sequence numbers of one publisher a subscriber has seen.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
}

impl SeqTracker {
    /// Records `sequence`.
    pub fn record(&mut self, sequence: u32) -> Seen {
        if sequence >= MAX_SEQUENCE {
            return Seen::OutOfRange;
        }
        let word = (sequence / 64) as usize;
        let bit = 1u64 << (sequence % 64);
        if word >= self.seen.len() {
            // Grow geometrically so a steady stream reallocates O(log n) times.
            self.seen.resize((word + 1).max(self.seen.len() * 2), 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        Seen::First
    }

    /// Distinct sequence numbers seen.
    #[must_use]
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Messages seen more than once (each extra copy counts).
    #[must_use]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Messages among the first `sent` that never arrived.
    #[must_use]
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unique_duplicates_and_loss() {
        // (sequences received, number sent, unique, duplicates, lost)
        let cases: [(&[u32], u64, u64, u64, u64); 7] = [
            (&[], 0, 0, 0, 0),
            (&[], 5, 0, 0, 5),
            (&[0, 1, 2, 3, 4], 5, 5, 0, 0),
            (&[4, 3, 2, 1, 0], 5, 5, 0, 0),
            (&[0, 1, 1, 2, 0], 3, 3, 2, 0),
            (&[0, 2, 4], 5, 3, 0, 2),
            (&[63, 64, 65, 1000, 64], 1001, 4, 1, 997),
        ];
        for (received, sent, unique, duplicates, lost) in cases {
            let mut t = SeqTracker::default();
            for &s in received {
                t.record(s);
            }
            assert_eq!(
                (t.unique(), t.duplicates(), t.lost(sent)),
                (unique, duplicates, lost),
                "{received:?} of {sent}"
            );
        }
    }

    #[test]
    fn record_reports_first_sight() {
        let mut t = SeqTracker::default();
        let steps = [
            (7, Seen::First),
            (7, Seen::Duplicate),
            (100_000, Seen::First),
            (100_000, Seen::Duplicate),
            (MAX_SEQUENCE, Seen::OutOfRange),
            (u32::MAX, Seen::OutOfRange),
            (6, Seen::First),
        ];
        for (seq, seen) in steps {
            assert_eq!(t.record(seq), seen, "{seq}");
        }
        assert_eq!((t.unique(), t.duplicates()), (3, 2));
    }
}
