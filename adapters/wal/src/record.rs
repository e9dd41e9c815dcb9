//! The on-disk record format and the scanner that validates a segment.
//!
//! A record is `len: u32 LE | crc: u32 LE | seq: u64 LE | kind: u8 | payload[len]`, where `crc` is the
//! CRC32C of `seq | kind | payload`. The sequence number is stored in the record (not derived from the
//! record's position) so that a compacted segment can keep the original numbers of its live records,
//! and so that a scan that skips a damaged region knows where it stands again.
//!
//! This module does no I/O: it encodes into a buffer and scans a byte slice, so it can be tested
//! against any damage pattern without touching a file.

use crate::Seq;

/// Bytes before the payload: length, checksum, sequence number and kind.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 1;

/// The largest payload a record may carry. It is a constant of the format, not an option, because
/// recovery must judge a length field plausible or not without knowing how the log was written.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Appends one encoded record to `buf`. The caller has checked `payload.len() <= MAX_PAYLOAD`.
pub(crate) fn encode(buf: &mut Vec<u8>, seq: Seq, kind: u8, payload: &[u8], len: u32) {
    let crc = checksum(seq.get(), kind, payload);
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq.get().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

fn checksum(seq: u64, kind: u8, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &[kind]);
    crc32c::crc32c_append(crc, payload)
}

fn u32_at(data: &[u8], pos: usize) -> Option<u32> {
    let bytes: [u8; 4] = data.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn u64_at(data: &[u8], pos: usize) -> Option<u64> {
    let bytes: [u8; 8] = data.get(pos..pos.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// One valid record found in a slice.
pub(crate) struct Decoded<'a> {
    pub seq: Seq,
    pub kind: u8,
    pub payload: &'a [u8],
    /// Header plus payload: where the next record starts, relative to this one.
    pub total_len: usize,
}

/// The record starting at `pos`, if it is complete, its checksum matches and its sequence number is
/// at least `min_seq` (numbers only ever increase through a log, so a smaller one is not ours).
pub(crate) fn decode_at(data: &[u8], pos: usize, min_seq: u64) -> Option<Decoded<'_>> {
    let len = usize::try_from(u32_at(data, pos)?).ok()?;
    if len > MAX_PAYLOAD {
        return None;
    }
    let seq = u64_at(data, pos + 8)?;
    // Cheap filters first: they reject almost every position of a damaged region before any CRC.
    if seq < min_seq || seq == 0 {
        return None;
    }
    let end = pos.checked_add(HEADER_LEN)?.checked_add(len)?;
    let kind = *data.get(pos + 16)?;
    let payload = data.get(pos + HEADER_LEN..end)?;
    let crc = u32_at(data, pos + 4)?;
    if checksum(seq, kind, payload) != crc {
        return None;
    }
    Some(Decoded {
        seq: Seq::new(seq),
        kind,
        payload,
        total_len: HEADER_LEN + len,
    })
}

/// What a scan of one segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Valid records visited.
    pub records: u64,
    /// Damaged regions skipped because a valid record follows them. Each region counts once: when
    /// a length field is damaged we cannot know how many records the region hid.
    pub corrupt_regions: u64,
    /// End of the last valid record; everything after it is `bad_tail` bytes of damage.
    pub valid_end: usize,
    /// Bytes after `valid_end` with no valid record in them (a torn write, or damage at the end).
    pub bad_tail: usize,
    /// The highest sequence number seen, or the `min_seq - 1` the scan started from.
    pub last_seq: u64,
}

/// Validates `data` record by record, calling `visit` for each valid one.
///
/// At a position that does not hold a valid record, the scan searches forward byte by byte for the
/// next one (a complete record whose CRC matches and whose sequence number is higher than the last
/// good one). If it finds one, the region between is skipped and counted; if not, the rest of the
/// segment is reported as a bad tail. Scanning forward, rather than stopping, is what keeps the
/// records after a single flipped length byte: stopping would throw away the rest of the segment.
pub(crate) fn scan(data: &[u8], min_seq: u64, mut visit: impl FnMut(Seq, u8, &[u8])) -> Scan {
    scan_located(data, min_seq, |_, seq, kind, payload| {
        visit(seq, kind, payload)
    })
}

/// [`scan`] that also tells `visit` the offset in `data` at which each valid record starts.
pub(crate) fn scan_located(
    data: &[u8],
    min_seq: u64,
    mut visit: impl FnMut(usize, Seq, u8, &[u8]),
) -> Scan {
    let mut out = Scan {
        records: 0,
        corrupt_regions: 0,
        valid_end: 0,
        bad_tail: 0,
        last_seq: min_seq.saturating_sub(1),
    };
    let mut pos = 0;
    while pos < data.len() {
        let floor = out.last_seq.saturating_add(1).max(min_seq);
        if let Some(rec) = decode_at(data, pos, floor) {
            visit(pos, rec.seq, rec.kind, rec.payload);
            out.records += 1;
            out.last_seq = rec.seq.get();
            pos += rec.total_len;
            out.valid_end = pos;
            continue;
        }
        match (pos + 1..data.len()).find(|&p| decode_at(data, p, floor).is_some()) {
            Some(next) => {
                out.corrupt_regions += 1;
                pos = next;
            }
            None => break,
        }
    }
    out.bad_tail = data.len() - out.valid_end;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[(u64, u8, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &(seq, kind, payload) in records {
            let len = u32::try_from(payload.len()).unwrap();
            encode(&mut buf, Seq::new(seq), kind, payload, len);
        }
        buf
    }

    fn collect(data: &[u8], min_seq: u64) -> (Vec<(u64, u8, Vec<u8>)>, Scan) {
        let mut seen = Vec::new();
        let scan = scan(data, min_seq, |seq, kind, p| {
            seen.push((seq.get(), kind, p.to_vec()))
        });
        (seen, scan)
    }

    #[test]
    fn scan_table() {
        let good = log(&[(1, 1, b"a"), (2, 2, b"bb"), (3, 3, b"")]);
        let mut zero_tail = good.clone();
        zero_tail.extend_from_slice(&[0; 40]);
        let mut seq_backwards = good.clone();
        seq_backwards.extend_from_slice(&log(&[(2, 9, b"old")]));
        struct Case {
            name: &'static str,
            data: Vec<u8>,
            min_seq: u64,
            seqs: Vec<u64>,
            corrupt: u64,
            tail: usize,
        }
        let case = |name, data, min_seq, seqs, corrupt, tail| Case {
            name,
            data,
            min_seq,
            seqs,
            corrupt,
            tail,
        };
        let cases = [
            case("empty", Vec::new(), 1, vec![], 0, 0),
            case("three", good.clone(), 1, vec![1, 2, 3], 0, 0),
            case("zeroes after", zero_tail, 1, vec![1, 2, 3], 0, 40),
            case("below min_seq", good.clone(), 3, vec![3], 1, 0),
            case(
                "seq going back",
                seq_backwards,
                1,
                vec![1, 2, 3],
                0,
                HEADER_LEN + 3,
            ),
            case(
                "header only",
                good[..HEADER_LEN - 1].to_vec(),
                1,
                vec![],
                0,
                HEADER_LEN - 1,
            ),
        ];
        for c in cases {
            let (seen, scan) = collect(&c.data, c.min_seq);
            let got: Vec<u64> = seen.iter().map(|r| r.0).collect();
            assert_eq!(got, c.seqs, "{}", c.name);
            assert_eq!(scan.corrupt_regions, c.corrupt, "{}", c.name);
            assert_eq!(scan.bad_tail, c.tail, "{}", c.name);
            assert_eq!(scan.valid_end + scan.bad_tail, c.data.len(), "{}", c.name);
        }
    }

    #[test]
    fn payload_survives_round_trip() {
        let data = log(&[(7, 200, b"hello"), (9, 0, &[0xff; 300])]);
        let (seen, scan) = collect(&data, 1);
        assert_eq!(
            seen,
            vec![(7, 200, b"hello".to_vec()), (9, 0, vec![0xff; 300])]
        );
        assert_eq!(scan.last_seq, 9);
    }
}
