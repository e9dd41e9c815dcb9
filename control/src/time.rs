//! Timestamps as the store keeps them: microseconds since the Unix epoch in a BIGINT, the
//! one representation SQLite and PostgreSQL read and order the same way through sqlx's
//! `Any` driver (which has no date type). The API shows them as RFC 3339 in UTC.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The epoch: the reference's `last_activity_at` of a device that never connected.
    pub const EPOCH: Self = Self(0);

    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1_000_000))
    }

    /// Whole seconds, rounded down (towards the past).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// The current time. A clock before 1970 (or beyond year 292277) reads as the epoch:
    /// it is not worth an error path on every mutation.
    pub fn now() -> Self {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_micros()).ok())
            .map_or(Self::EPOCH, Self)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after the classic
/// era-based civil-from-days derivation (eras of 400 years = 146097 days).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in [1, 31] and month in [1, 12] by construction.
    (year, month as u32, day as u32)
}

/// The inverse of [`civil_from_days`]: days since 1970-01-01 of a proleptic Gregorian date
/// (`month` 1..=12, `day` 1..=31; not checked against the month's length).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = (month + 9) % 12; // [0, 11], March-based
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Why a date-time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 date-time (e.g. 2024-05-01T12:00:00Z): {0}")]
pub struct InvalidTimestamp(&'static str);

impl FromStr for Timestamp {
    type Err = InvalidTimestamp;

    /// RFC 3339: `YYYY-MM-DDTHH:MM:SS`, optional fraction (up to nanoseconds; kept to the
    /// microsecond), then `Z` or `±HH:MM`. `t` and `z` are accepted as RFC 3339 allows.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let num = |from: usize, len: usize, what: &'static str| -> Result<i64, InvalidTimestamp> {
            let digits = b.get(from..from + len).ok_or(InvalidTimestamp(what))?;
            digits.iter().try_fold(0i64, |n, d| {
                d.is_ascii_digit()
                    .then(|| n * 10 + i64::from(d - b'0'))
                    .ok_or(InvalidTimestamp(what))
            })
        };
        let sep = |at: usize, allowed: &[u8], what: &'static str| {
            b.get(at)
                .filter(|c| allowed.contains(c))
                .map(|_| ())
                .ok_or(InvalidTimestamp(what))
        };
        let year = num(0, 4, "year")?;
        sep(4, b"-", "'-' after the year")?;
        let month = num(5, 2, "month")?;
        sep(7, b"-", "'-' after the month")?;
        let day = num(8, 2, "day")?;
        sep(10, b"Tt", "'T' between date and time")?;
        let hour = num(11, 2, "hour")?;
        sep(13, b":", "':' after the hour")?;
        let minute = num(14, 2, "minute")?;
        sep(16, b":", "':' after the minutes")?;
        let second = num(17, 2, "second")?;
        let mut at = 19;
        let mut micros = 0i64;
        if b.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                if at - start < 6 {
                    micros = micros * 10 + i64::from(b[at] - b'0');
                }
                at += 1;
            }
            let digits = at - start;
            if digits == 0 || digits > 9 {
                return Err(InvalidTimestamp("fraction of a second"));
            }
            for _ in digits..6 {
                micros *= 10;
            }
        }
        let offset_secs = match b.get(at) {
            Some(b'Z' | b'z') if at + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
                let hours = num(at + 1, 2, "offset hours")?;
                sep(at + 3, b":", "':' in the offset")?;
                let minutes = num(at + 4, 2, "offset minutes")?;
                if hours > 23 || minutes > 59 {
                    return Err(InvalidTimestamp("offset"));
                }
                let secs = hours * 3_600 + minutes * 60;
                if *sign == b'+' { secs } else { -secs }
            }
            _ => {
                return Err(InvalidTimestamp(
                    "'Z' or an offset such as +02:00 at the end",
                ));
            }
        };
        let month_u = u32::try_from(month).map_err(|_| InvalidTimestamp("month"))?;
        let day_u = u32::try_from(day).map_err(|_| InvalidTimestamp("day"))?;
        if !(1..=12).contains(&month_u) {
            return Err(InvalidTimestamp("month"));
        }
        let days = days_from_civil(year, month_u, day_u);
        // A day past the month's end comes back as another date.
        if day_u == 0 || civil_from_days(days) != (year, month_u, day_u) {
            return Err(InvalidTimestamp("day"));
        }
        // 60: a leap second, read as the next second.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(InvalidTimestamp("time of day"));
        }
        let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_secs;
        Ok(Self(secs * 1_000_000 + micros))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2024-05-01T12:00:00.123456Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3_600,
            sod % 3_600 / 60,
            sod % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let cases: &[(i64, &str)] = &[
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (951_868_799_500_000, "2000-02-29T23:59:59.500000Z"),
            (1_714_564_800_123_456, "2024-05-01T12:00:00.123456Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
        ];
        for &(micros, want) in cases {
            assert_eq!(Timestamp::from_micros(micros).to_string(), want, "{micros}");
        }
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        for days in (-800_000..800_000)
            .step_by(997)
            .chain([0, 59, 60, 11_016, 47_541])
        {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn parses_rfc3339() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-05-01T12:00:00.123456Z", Some(1_714_564_800_123_456)),
            ("2024-05-01T12:00:00.1234567891Z", None),
            (
                "2024-05-01T12:00:00.123456789Z",
                Some(1_714_564_800_123_456),
            ),
            ("2024-05-01t12:00:00.5z", Some(1_714_564_800_500_000)),
            ("2024-05-01T14:00:00+02:00", Some(1_714_564_800_000_000)),
            ("2024-05-01T11:30:00-00:30", Some(1_714_564_800_000_000)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000_000)),
            ("2001-02-29T00:00:00Z", None),
            ("2024-13-01T00:00:00Z", None),
            ("2024-05-01T24:00:00Z", None),
            ("2024-05-01T12:00:00", None),
            ("2024-05-01 12:00:00Z", None),
            ("2024-05-01T12:00:00.Z", None),
            ("2024-05-01T12:00:00+0200", None),
            ("2024-05-01", None),
            ("", None),
            ("yesterday", None),
        ];
        for &(text, want) in cases {
            let got = text.parse::<Timestamp>().ok().map(Timestamp::as_micros);
            assert_eq!(got, want, "{text}");
        }
        let now = Timestamp::now();
        assert_eq!(
            now.to_string().parse::<Timestamp>(),
            Ok(now),
            "Display parses back"
        );
    }

    #[test]
    fn now_is_after_2024() {
        assert!(Timestamp::now() > Timestamp::from_micros(1_704_067_200_000_000));
    }
}
