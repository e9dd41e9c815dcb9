//! The queue's record payloads: a [`RouteMessage`] in a small length-prefixed binary layout,
//! and the sequence numbers a `done` record settles. Decoding never panics: a record that
//! does not parse is a [`DecodeError`], counted and skipped by the queue.

use bytes::Bytes;
use iothub_model::{RouteMessage, RouteOrigin, TopicName};

/// Why a stored record does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown origin tag {0}")]
    Origin(u8),
    #[error("invalid UTF-8 in a text field")]
    Utf8,
    #[error("invalid topic name: {0}")]
    Topic(String),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes a message for the queue.
pub fn encode(m: &RouteMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + m.topic.as_str().len() + m.payload.len());
    out.push(1); // layout version
    put_bytes(&mut out, m.topic.as_str().as_bytes());
    put_bytes(&mut out, &m.payload);
    out.push(m.qos);
    out.push(u8::from(m.retain));
    let (tag, text) = match &m.origin {
        RouteOrigin::Device(s) => (0, s.as_str()),
        RouteOrigin::Network(s) => (1, s.as_str()),
        RouteOrigin::Anonymous(s) => (2, s.as_str()),
        RouteOrigin::Hub => (3, ""),
        RouteOrigin::Route(s) => (4, s.as_str()),
    };
    out.push(tag);
    put_bytes(&mut out, text.as_bytes());
    out.extend_from_slice(&m.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(m.user_properties.len() as u32).to_le_bytes());
    for (k, v) in &m.user_properties {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    match &m.content_type {
        Some(c) => {
            out.push(1);
            put_bytes(&mut out, c.as_bytes());
        }
        None => out.push(0),
    }
    out
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8)
    }
}

/// Decodes what [`encode`] wrote.
pub fn decode(data: &[u8]) -> Result<RouteMessage, DecodeError> {
    let mut r = Reader { data, at: 0 };
    let _version = r.u8()?;
    let topic = r.text()?;
    let topic = TopicName::new(&topic).map_err(|e| DecodeError::Topic(e.to_string()))?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let qos = r.u8()?.min(2);
    let retain = r.u8()? != 0;
    let tag = r.u8()?;
    let text = r.text()?;
    let origin = match tag {
        0 => RouteOrigin::Device(text),
        1 => RouteOrigin::Network(text),
        2 => RouteOrigin::Anonymous(text),
        3 => RouteOrigin::Hub,
        4 => RouteOrigin::Route(text),
        other => return Err(DecodeError::Origin(other)),
    };
    let timestamp_ms = r.u64()?;
    let n = r.u32()? as usize;
    let mut user_properties = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        user_properties.push((r.text()?, r.text()?));
    }
    let content_type = match r.u8()? {
        0 => None,
        _ => Some(r.text()?),
    };
    if r.at != data.len() {
        return Err(DecodeError::Trailing(data.len() - r.at));
    }
    Ok(RouteMessage {
        topic,
        payload,
        qos,
        retain,
        origin,
        timestamp_ms,
        user_properties,
        content_type,
    })
}

/// A `done` record: the sequence numbers it settles.
pub fn encode_done(seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seqs.len() * 8);
    for s in seqs {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

pub fn decode_done(data: &[u8]) -> Result<Vec<u64>, DecodeError> {
    if !data.len().is_multiple_of(8) {
        return Err(DecodeError::Truncated(data.len() - data.len() % 8));
    }
    Ok(data
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(origin: RouteOrigin, content_type: Option<&str>) -> RouteMessage {
        RouteMessage {
            topic: TopicName::new("sensors/a/temp").unwrap(),
            payload: Bytes::from_static(b"\x00\x01binary\xff"),
            qos: 1,
            retain: true,
            origin,
            timestamp_ms: 1_764_000_000_123,
            user_properties: vec![("k".into(), "v".into()), ("é".into(), String::new())],
            content_type: content_type.map(str::to_owned),
        }
    }

    #[test]
    fn round_trip_of_every_origin() {
        for origin in [
            RouteOrigin::Device("d".into()),
            RouteOrigin::Network("n".into()),
            RouteOrigin::Anonymous("a".into()),
            RouteOrigin::Hub,
            RouteOrigin::Route("r".into()),
        ] {
            for ct in [None, Some("application/json")] {
                let m = sample(origin.clone(), ct);
                assert_eq!(decode(&encode(&m)).unwrap(), m);
            }
        }
        assert_eq!(
            decode_done(&encode_done(&[1, 7, u64::MAX])).unwrap(),
            vec![1, 7, u64::MAX]
        );
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let good = encode(&sample(RouteOrigin::Hub, Some("t")));
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(DecodeError::Trailing(1)));
        let mut bad_origin = encode(&sample(RouteOrigin::Hub, None));
        // version(1) + topic(4+14) + payload(4+9) + qos + retain = 34: the origin tag.
        bad_origin[34] = 9;
        assert_eq!(decode(&bad_origin), Err(DecodeError::Origin(9)));
        let mut huge = good;
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(DecodeError::Truncated(_))));
        assert!(decode_done(&[1, 2, 3]).is_err());
    }
}
