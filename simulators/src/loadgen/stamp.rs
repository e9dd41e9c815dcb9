//! The 16 bytes at the front of every load-generator payload.
//!
//! Latency is measured from a timestamp the publisher writes into the message itself, so no
//! per-message state has to be shared between the publishing and the receiving task; the
//! (publisher, sequence) pair lets every subscriber count loss and duplicates on its own.
//! Layout, big-endian: send time in nanoseconds since the run's start (u64), publisher index
//! (u32), sequence number (u32). The rest of the payload is zero padding.

use bytes::{Buf, BufMut, BytesMut};

/// Length of the stamp, and so the smallest payload the generator can send.
pub const STAMP_LEN: usize = 16;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds between the run's start and the moment the message was encoded.
    pub sent_ns: u64,
    pub publisher: u32,
    /// 0 for the publisher's first message, then +1 per message.
    pub sequence: u32,
}

impl Stamp {
    /// Appends the stamp followed by zeros up to `payload_len` bytes in total (at least
    /// [`STAMP_LEN`]).
    pub fn write(&self, buf: &mut BytesMut, payload_len: usize) {
        let start = buf.len();
        buf.reserve(payload_len.max(STAMP_LEN));
        buf.put_u64(self.sent_ns);
        buf.put_u32(self.publisher);
        buf.put_u32(self.sequence);
        buf.resize(start + payload_len.max(STAMP_LEN), 0);
    }

    /// Reads the stamp of a payload; `None` if it is too short to carry one.
    #[must_use]
    pub fn read(mut payload: &[u8]) -> Option<Self> {
        if payload.len() < STAMP_LEN {
            return None;
        }
        Some(Self {
            sent_ns: payload.get_u64(),
            publisher: payload.get_u32(),
            sequence: payload.get_u32(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let cases = [
            (
                Stamp {
                    sent_ns: 0,
                    publisher: 0,
                    sequence: 0,
                },
                16,
            ),
            (
                Stamp {
                    sent_ns: 1_234_567_890,
                    publisher: 7,
                    sequence: 42,
                },
                64,
            ),
            (
                Stamp {
                    sent_ns: u64::MAX,
                    publisher: u32::MAX,
                    sequence: u32::MAX,
                },
                65_536,
            ),
            // Asking for less than the stamp still writes the whole stamp.
            (
                Stamp {
                    sent_ns: 5,
                    publisher: 1,
                    sequence: 2,
                },
                3,
            ),
        ];
        for (stamp, len) in cases {
            let mut buf = BytesMut::new();
            stamp.write(&mut buf, len);
            assert_eq!(buf.len(), len.max(STAMP_LEN));
            assert!(buf[STAMP_LEN..].iter().all(|&b| b == 0));
            assert_eq!(Stamp::read(&buf), Some(stamp));
        }
    }

    #[test]
    fn known_bytes() {
        let bytes = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 9, 0xff];
        let cases: [(&[u8], Option<Stamp>); 3] = [
            (
                &bytes,
                Some(Stamp {
                    sent_ns: 256,
                    publisher: 3,
                    sequence: 9,
                }),
            ),
            (
                &bytes[..16],
                Some(Stamp {
                    sent_ns: 256,
                    publisher: 3,
                    sequence: 9,
                }),
            ),
            (&bytes[..15], None),
        ];
        for (input, expected) in cases {
            assert_eq!(Stamp::read(input), expected, "{input:?}");
        }
    }
}
