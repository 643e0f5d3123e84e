//! Event-time day bucketing: `Day` is a UTC calendar day, shown as `YYYY-MM-DD`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds in a UTC day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// The last event time a parser should accept, 9999-12-31T23:59:59.999Z: later days have
/// no `YYYY-MM-DD` form, so they could not be asked for. The shop and clicks parsers refuse
/// times outside `0..=MAX_TS_MS` with a field error.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// A UTC calendar day, stored as days since 1970-01-01 so it is small and sorts by date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(pub i32);

impl Day {
    /// The earliest day, about 5.9 million years before the epoch.
    pub const MIN: Day = Day(i32::MIN);
    /// The latest day, about 5.9 million years after the epoch.
    pub const MAX: Day = Day(i32::MAX);

    /// The UTC day holding the event time `ts_ms` (milliseconds since the Unix epoch).
    ///
    /// **Saturating, never panics**: a time beyond about ±5.9 million years gives
    /// [`Day::MIN`] or [`Day::MAX`]. A job's `sum` closure runs on every stored event in
    /// every later batch run and speed layer, so a panic on one accepted event would break
    /// the engine for good; saturating keeps it running. Such a day is not a real calendar
    /// bucket, so event parsers should still bound their times (to `0..=`[`MAX_TS_MS`], as
    /// the shop and clicks parsers do), and use [`Day::try_of_ms`] where they need to know.
    #[inline]
    pub fn of_ms(ts_ms: i64) -> Day {
        // Every i64 time divides to a day count within i64; only the i32 may saturate.
        match i32::try_from(ts_ms.div_euclid(MS_PER_DAY)) {
            Ok(days) => Day(days),
            Err(_) if ts_ms < 0 => Day::MIN,
            Err(_) => Day::MAX,
        }
    }

    /// [`Day::of_ms`] for an unsigned time (e.g. a clock's `u64` milliseconds): saturating,
    /// never panics.
    #[inline]
    pub fn of_ms_u64(ts_ms: u64) -> Day {
        Day::of_ms(i64::try_from(ts_ms).unwrap_or(i64::MAX))
    }

    /// The UTC day holding `ts_ms`, or `None` when it is outside [`Day::MIN`]..=[`Day::MAX`].
    pub fn try_of_ms(ts_ms: i64) -> Option<Day> {
        i32::try_from(ts_ms.div_euclid(MS_PER_DAY)).ok().map(Day)
    }

    /// The day's (year, month, day) in the proleptic Gregorian calendar.
    pub fn civil(self) -> (i64, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = self.0 as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// Parses `YYYY-MM-DD` (and what [`Day`]'s display gives beyond it: more year digits
    /// after year 9999, a `-` before year 0).
    pub fn parse(s: &str) -> Result<Day, String> {
        let bad = || format!("\"{s}\" is not a day of the form YYYY-MM-DD");
        let (negative, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let b = rest.as_bytes();
        let n = b.len();
        if !(10..=16).contains(&n)
            || b[n - 3] != b'-'
            || b[n - 6] != b'-'
            || !b.iter().enumerate().all(|(i, c)| c.is_ascii_digit() || i == n - 3 || i == n - 6)
        {
            return Err(bad());
        }
        let y: i64 = rest[..n - 6].parse().map_err(|_| bad())?;
        let y = if negative { -y } else { y };
        let m: i64 = rest[n - 5..n - 3].parse().map_err(|_| bad())?;
        let d: i64 = rest[n - 2..].parse().map_err(|_| bad())?;
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        // Hinnant's days_from_civil.
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = i32::try_from(era * 146_097 + doe - 719_468).map_err(|_| bad())?;
        let day = Day(days);
        if day.civil() != (y, m as u32, d as u32) {
            return Err(bad());
        }
        Ok(day)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        let sign = if y < 0 { "-" } else { "" };
        write!(f, "{sign}{:04}-{m:02}-{d:02}", y.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Days must format and parse as UTC calendar dates, including before the epoch and
    // around leap days, because view keys and query arguments use that form.
    // Issue 11.4: one event with ts = i64::MAX made `Day::of_ms` panic in every later run.
    // It saturates now, at both ends, and agrees with `try_of_ms` wherever that has a day.
    #[test]
    fn extreme_times_saturate() {
        assert_eq!(Day::of_ms(i64::MAX), Day::MAX);
        assert_eq!(Day::of_ms(i64::MIN), Day::MIN);
        assert_eq!(Day::of_ms_u64(u64::MAX), Day::MAX);
        assert_eq!(Day::of_ms_u64(0), Day(0));
        assert_eq!(Day::try_of_ms(i64::MAX), None);
        assert_eq!(Day::of_ms(MAX_TS_MS).to_string(), "9999-12-31");
        assert_eq!(Day::of_ms(MAX_TS_MS + 1).to_string(), "10000-01-01");
        let last_ms = (i64::from(i32::MAX) + 1) * MS_PER_DAY - 1;
        assert_eq!(Day::try_of_ms(last_ms), Some(Day::MAX));
        assert_eq!(Day::try_of_ms(last_ms + 1), None);
        assert_eq!(Day::of_ms(last_ms + 1), Day::MAX);
        assert_eq!(Day::try_of_ms(i64::from(i32::MIN) * MS_PER_DAY), Some(Day::MIN));
        assert_eq!(Day::of_ms(i64::from(i32::MIN) * MS_PER_DAY - 1), Day::MIN);
        // Every day displays, even the saturated ones.
        assert!(!Day::MAX.to_string().is_empty() && !Day::MIN.to_string().is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        // `Day::of_ms` never panics on any i64 or u64, its day always displays, it equals
        // the exact day wherever that fits, and it is monotone.
        #[test]
        fn of_ms_never_panics(a in proptest::prelude::any::<i64>(), b in proptest::prelude::any::<u64>()) {
            let d = Day::of_ms(a);
            let _ = d.to_string();
            match Day::try_of_ms(a) {
                Some(exact) => proptest::prop_assert_eq!(d, exact),
                None => proptest::prop_assert!(d == Day::MIN || d == Day::MAX),
            }
            proptest::prop_assert!(d <= Day::of_ms(a.saturating_add(1)));
            // Every day's display parses back to it, also beyond years 0..=9999.
            proptest::prop_assert_eq!(Day::parse(&d.to_string()), Ok(d));
            let u = Day::of_ms_u64(b);
            let _ = u.to_string();
            proptest::prop_assert_eq!(u, i64::try_from(b).map_or(Day::MAX, Day::of_ms));
        }
    }

    #[test]
    fn known_days() {
        assert_eq!(Day::of_ms(0).to_string(), "1970-01-01");
        assert_eq!(Day::of_ms(-1).to_string(), "1969-12-31");
        assert_eq!(Day::of_ms(1_767_225_600_000).to_string(), "2026-01-01");
        assert_eq!(Day::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        assert!(Day::parse("2023-02-29").is_err());
        assert!(Day::parse("2023-13-01").is_err());
        // From 0001-01-01 to 9999-12-31, every day.
        for d in -719_162..2_932_897 {
            let day = Day(d);
            assert_eq!(Day::parse(&day.to_string()), Ok(day));
        }
    }
}
