//! Wire primitives (spec section 1.5): integers, variable byte integers, UTF-8 strings and
//! binary data, read from a frozen frame and written into a `BytesMut`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Largest value of a variable byte integer, and so of the remaining length.
pub(crate) const MAX_VARIABLE_INTEGER: u32 = 268_435_455;

/// Outcome of reading the remaining length from a buffer that may not hold all of it yet.
pub(crate) enum Remaining {
    /// Value and the number of bytes it used.
    Complete(u32, usize),
    Incomplete,
}

/// Reads a variable byte integer from the start of `bytes` without consuming anything, so the
/// fixed header can be inspected before the body has arrived.
///
/// Refuses more than four bytes and non-minimal encodings (a last byte of 0 after a
/// continuation, [MQTT-1.5.5-1]): both are Malformed Packets.
pub(crate) fn peek_variable_integer(bytes: &[u8]) -> Result<Remaining, ()> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if byte == 0 && index > 0 {
                return Err(());
            }
            return Ok(Remaining::Complete(value, index + 1));
        }
    }
    if bytes.len() >= 4 {
        Err(())
    } else {
        Ok(Remaining::Incomplete)
    }
}

/// Number of bytes `value` takes as a variable byte integer (`value` already checked).
pub(crate) fn variable_integer_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_variable_integer(buf: &mut BytesMut, mut value: usize) {
    loop {
        // Truncation is the point: the low seven bits go out first.
        #[allow(clippy::cast_possible_truncation)]
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Length on the wire of a UTF-8 string field, checking the limits the peer enforces.
pub(crate) fn string_len(value: &str) -> Result<usize, EncodeError> {
    if value.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString);
    }
    binary_len(value.as_bytes())
}

/// Length on the wire of a binary data field (two-byte length prefix plus the bytes).
pub(crate) fn binary_len(value: &[u8]) -> Result<usize, EncodeError> {
    if value.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong(value.len()));
    }
    Ok(2 + value.len())
}

/// Writes a length-prefixed field whose length [`binary_len`] already checked.
pub(crate) fn put_binary(buf: &mut BytesMut, value: &[u8]) {
    // Checked by `binary_len` / `string_len` during the length pass.
    #[allow(clippy::cast_possible_truncation)]
    buf.put_u16(value.len() as u16);
    buf.put_slice(value);
}

/// A cursor over one complete, frozen frame body.
///
/// Binary fields and the payload are `Bytes::slice`s of the frame: a reference count bump, not
/// a copy. Strings are validated and copied into `String`s, the one allocation they need.
pub(crate) struct Reader {
    frame: Bytes,
    pos: usize,
    end: usize,
}

impl Reader {
    pub(crate) fn new(frame: Bytes, start: usize) -> Self {
        let end = frame.len();
        Self {
            frame,
            pos: start,
            end,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    /// Fails unless every byte of the current section has been read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.frame[start..self.pos])
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let bytes = self.take(1)?;
        Ok(bytes[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A packet identifier, which may never be 0.
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    pub(crate) fn variable_integer(&mut self) -> Result<u32, DecodeError> {
        match peek_variable_integer(&self.frame[self.pos..self.end]) {
            Ok(Remaining::Complete(value, used)) => {
                self.pos += used;
                Ok(value)
            }
            Ok(Remaining::Incomplete) => Err(DecodeError::Truncated),
            Err(()) => Err(DecodeError::InvalidVariableInteger),
        }
    }

    /// The raw bytes of a length-prefixed field, borrowed from the frame.
    pub(crate) fn binary_slice(&mut self) -> Result<&[u8], DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A length-prefixed binary field as a zero-copy slice of the frame.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.frame.slice(start..self.pos))
    }

    /// A UTF-8 string field: well-formed UTF-8 and no U+0000.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary_slice()?;
        let text = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if raw.contains(&0) {
            return Err(DecodeError::NulInString);
        }
        Ok(text.to_owned())
    }

    /// Everything left in the frame, as a zero-copy slice.
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }

    /// Restricts reading to the next `len` bytes (a property section); returns the outer end
    /// to hand back to [`Reader::leave`].
    pub(crate) fn enter(&mut self, len: usize) -> Result<usize, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        let outer = self.end;
        self.end = self.pos + len;
        Ok(outer)
    }

    /// Ends a section opened by [`Reader::enter`], which must have been read to its end.
    pub(crate) fn leave(&mut self, outer_end: usize) -> Result<(), DecodeError> {
        self.finish()?;
        self.end = outer_end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_integers_from_the_spec_table() {
        // Spec 1.5.5: the boundaries of each encoded length.
        let table: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in table {
            let mut buf = BytesMut::new();
            put_variable_integer(&mut buf, value);
            assert_eq!(&buf[..], bytes, "encode {value}");
            assert_eq!(variable_integer_len(value), bytes.len(), "len {value}");
            match peek_variable_integer(bytes) {
                Ok(Remaining::Complete(decoded, used)) => {
                    assert_eq!((decoded as usize, used), (value, bytes.len()));
                }
                _ => panic!("{value} did not decode"),
            }
        }
    }

    #[test]
    fn variable_integer_edge_cases() {
        assert!(matches!(
            peek_variable_integer(&[]),
            Ok(Remaining::Incomplete)
        ));
        assert!(matches!(
            peek_variable_integer(&[0x80, 0x80, 0x80]),
            Ok(Remaining::Incomplete)
        ));
        assert!(peek_variable_integer(&[0x80, 0x80, 0x80, 0x80]).is_err());
        assert!(peek_variable_integer(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        // Non-minimal: 0 written on two bytes, 127 on three.
        assert!(peek_variable_integer(&[0x80, 0x00]).is_err());
        assert!(peek_variable_integer(&[0xFF, 0x80, 0x00]).is_err());
    }

    #[test]
    fn strings_are_checked() {
        let table: [(&[u8], Result<&str, DecodeError>); 5] = [
            (&[0x00, 0x02, b'h', b'i'], Ok("hi")),
            (
                &[0x00, 0x03, b'a', 0x00, b'b'],
                Err(DecodeError::NulInString),
            ),
            // U+D800 encoded as UTF-8 (a surrogate) is not well-formed [MQTT-1.5.4-1].
            (
                &[0x00, 0x03, 0xED, 0xA0, 0x80],
                Err(DecodeError::InvalidUtf8),
            ),
            (&[0x00, 0x01, 0xFF], Err(DecodeError::InvalidUtf8)),
            (&[0x00, 0x05, b'a'], Err(DecodeError::Truncated)),
        ];
        for (bytes, expected) in table {
            let mut reader = Reader::new(Bytes::copy_from_slice(bytes), 0);
            assert_eq!(reader.string().as_deref(), expected.as_deref(), "{bytes:?}");
        }
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would_refuse() {
        assert_eq!(string_len("a\0b"), Err(EncodeError::NulInString));
        assert_eq!(
            string_len(&"x".repeat(65_536)),
            Err(EncodeError::FieldTooLong(65_536))
        );
        assert_eq!(string_len(&"x".repeat(65_535)), Ok(65_537));
    }
}
