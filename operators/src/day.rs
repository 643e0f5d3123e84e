//! Event-time day bucketing: `Day` is a UTC calendar day, shown as `YYYY-MM-DD`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds in a UTC day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// A UTC calendar day, stored as days since 1970-01-01 so it is small and sorts by date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(pub i32);

impl Day {
    /// The UTC day holding the event time `ts_ms` (milliseconds since the Unix epoch).
    ///
    /// # Panics
    ///
    /// If the day does not fit (beyond about ±5.8 million years): an event parser must
    /// bound its times (the shop job accepts 1970-01-01 to 9999-12-31). A panic in a job
    /// ends the run with an error naming it, where a silently wrapped day would be a wrong
    /// answer.
    pub fn of_ms(ts_ms: i64) -> Day {
        let days = ts_ms.div_euclid(MS_PER_DAY);
        Day(i32::try_from(days).unwrap_or_else(|_| panic!("event time {ts_ms} ms is outside the range of Day")))
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

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Day, String> {
        let bad = || format!("\"{s}\" is not a day of the form YYYY-MM-DD");
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let y: i64 = s[0..4].parse().map_err(|_| bad())?;
        let m: i64 = s[5..7].parse().map_err(|_| bad())?;
        let d: i64 = s[8..10].parse().map_err(|_| bad())?;
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
        let day = Day((era * 146_097 + doe - 719_468) as i32);
        if day.civil() != (y, m as u32, d as u32) {
            return Err(bad());
        }
        Ok(day)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Days must format and parse as UTC calendar dates, including before the epoch and
    // around leap days, because view keys and query arguments use that form.
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
