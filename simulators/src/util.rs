//! Small helpers the network simulators share: hex, a seeded generator for made-up ids and
//! keys, RFC 3339 timestamps, per-device pacing, and how an HTTP answer counts in a
//! [`Tally`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::http::{HttpError, HttpResponse};
use crate::summary::Tally;

/// Lowercase hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why a hex string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("{0:?} has an odd number of hex digits")]
    OddLength(String),
    #[error("{0:?} is not hex")]
    NotHex(String),
    #[error("{text:?} is {got} bytes, expected {want}")]
    Length {
        text: String,
        got: usize,
        want: usize,
    },
}

/// Bytes from hex (either case).
pub fn unhex(text: &str) -> Result<Vec<u8>, HexError> {
    if !text.len().is_multiple_of(2) {
        return Err(HexError::OddLength(text.to_owned()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| HexError::NotHex(text.to_owned()))
        })
        .collect()
}

/// Exactly `N` bytes from hex.
pub fn unhex_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let bytes = unhex(text)?;
    bytes.as_slice().try_into().map_err(|_| HexError::Length {
        text: text.to_owned(),
        got: bytes.len(),
        want: N,
    })
}

/// A small deterministic generator (splitmix64) for made-up device ids, keys and payloads:
/// a run with the same `--seed` simulates the same devices.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the clock, for runs that do not give one.
    #[must_use]
    pub fn clock_seed() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `N` pseudo-random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` as RFC 3339 UTC with nanoseconds; `offset` picks `+00:00` (ChirpStack) or `Z` (TTS).
#[must_use]
pub fn rfc3339(t: SystemTime, zulu: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}{}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos(),
        if zulu { "Z" } else { "+00:00" }
    )
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Paces one device: the k-th message is due at `start + k / rate` (no catching up in bursts
/// beyond that schedule); a rate of 0 sends back to back.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    period: Option<Duration>,
    sent: u32,
}

impl Pacer {
    #[must_use]
    pub fn new(rate: f64) -> Self {
        Self {
            start: Instant::now(),
            period: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            sent: 0,
        }
    }

    /// Waits until the next message is due.
    pub async fn tick(&mut self) {
        if let Some(period) = self.period {
            tokio::time::sleep_until(self.start + period * self.sent).await;
        }
        self.sent = self.sent.saturating_add(1);
    }
}

/// The short name of a refusal: status and the error body's `type` when it has one
/// (`401 unauthorized`).
#[must_use]
pub fn refusal(response: &HttpResponse) -> String {
    let kind = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    match kind {
        Some(kind) => format!("{} {kind}", response.status),
        None => response.status.to_string(),
    }
}

/// Counts one HTTP exchange that started at `started`: 2xx is accepted, another status
/// refused, no answer failed. Returns the answer when there was one.
pub fn count(
    tally: &mut Tally,
    started: Instant,
    result: Result<HttpResponse, HttpError>,
) -> Option<HttpResponse> {
    match result {
        Ok(r) if (200..300).contains(&r.status) => {
            tally.accepted(started.elapsed());
            Some(r)
        }
        Ok(r) => {
            tally.refused(refusal(&r));
            Some(r)
        }
        Err(e) => {
            tally.failed(e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_bad_hex_is_named() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
        assert_eq!(unhex("0AfF00"), Ok(vec![0x0a, 0xff, 0x00]));
        assert_eq!(unhex("abc"), Err(HexError::OddLength("abc".into())));
        assert_eq!(unhex("zz"), Err(HexError::NotHex("zz".into())));
        assert_eq!(
            unhex_array::<4>("0102"),
            Err(HexError::Length {
                text: "0102".into(),
                got: 2,
                want: 4
            })
        );
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000+00:00"),
            (
                1_741_944_413,
                417_283_905,
                "2025-03-14T09:26:53.417283905+00:00",
            ),
            (951_782_400, 1, "2000-02-29T00:00:00.000000001+00:00"),
        ];
        for (secs, nanos, want) in cases {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(rfc3339(t, false), want);
        }
        assert!(rfc3339(UNIX_EPOCH, true).ends_with(".000000000Z"));
    }

    #[test]
    fn the_generator_is_deterministic() {
        let a: [u8; 16] = SplitMix::new(7).bytes();
        let b: [u8; 16] = SplitMix::new(7).bytes();
        let c: [u8; 16] = SplitMix::new(8).bytes();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
