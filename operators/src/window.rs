//! Event-time windows as view keys: tumbling and sliding.
//!
//! A window is a key like a [`Day`]: map each event to the window(s) its event time falls
//! in, then aggregate per window with any operator (`sum`, `count`, `max`, `arg_max`,
//! `distinct_count`, ...). Windows are by **event time**, so a late event changes its old
//! window's merged answer, exactly as it changes its old day's.
//!
//! ```
//! use lambdaflow_operators::Window;
//!
//! let ts = 1_772_364_607_250; // 2026-03-01T11:30:07.250Z
//! let w = Window::tumbling(ts, 10_000);
//! assert_eq!(w.to_string(), "2026-03-01T11:30:00Z/2026-03-01T11:30:10Z");
//! assert!(w.contains(ts));
//! assert_eq!(Window::parse(&w.to_string()), Ok(w));
//!
//! // Sliding: 10-second windows every 5 seconds, each event in two of them.
//! let both: Vec<String> = Window::sliding(ts, 10_000, 5_000).map(|w| w.to_string()).collect();
//! assert_eq!(both, ["2026-03-01T11:30:05Z/2026-03-01T11:30:15Z", "2026-03-01T11:30:00Z/2026-03-01T11:30:10Z"]);
//! ```
//!
//! In a job (Nexmark q7, the highest bid of each 10-second window):
//!
//! ```ignore
//! let bids = ctx.inserts(events).flat_map(|e| e.bid());
//! let highest = ctx.max("highest_bid", bids.map(|b| (Window::tumbling(b.ts, 10_000), b.price)));
//! ctx.value_view("highest_bid", highest, |price: &u64| json!({ "price": price }));
//! ```
//!
//! Answers show a window as an ISO 8601 interval of UTC times, start included and end
//! excluded (`2026-03-01T11:30:00Z/2026-03-01T11:30:10Z`, with `.mmm` when a bound is not
//! on a whole second), and a query names a window the same way.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::day::{Day, MS_PER_DAY};
use crate::view::{Example, ViewKey};
use serde_json::Value;

/// An event-time window `[start_ms, start_ms + size_ms)`, in milliseconds since the Unix
/// epoch. It sorts by start, then by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// The first millisecond in the window.
    pub start_ms: i64,
    /// The window's length in milliseconds (at least 1).
    pub size_ms: i64,
}

impl Window {
    /// The tumbling window of `size_ms` holding `ts_ms`: windows start at multiples of
    /// `size_ms` from the epoch and do not overlap. A `size_ms` below 1 counts as 1.
    ///
    /// This runs on every stored event in every later run, so it never panics: a start
    /// before `i64::MIN` (only for times within one window of it) is clamped to `i64::MIN`.
    /// Bound event times in the parser (`0..=`[`MAX_TS_MS`](crate::MAX_TS_MS)) and this
    /// never happens.
    pub fn tumbling(ts_ms: i64, size_ms: i64) -> Window {
        let size_ms = size_ms.max(1);
        Window { start_ms: floor_to(ts_ms, size_ms), size_ms }
    }

    /// Every sliding window of `size_ms`, starting at multiples of `slide_ms`, that holds
    /// `ts_ms`, latest first: `size / slide` of them, or one more depending on where
    /// `ts_ms` falls. Sizes and slides below 1 count as 1. Use it with `flat_map`.
    ///
    /// A small slide multiplies the records: at most [`Window::SLIDING_MAX`] windows are
    /// produced per event (a job with more is mis-specified; the earliest are left out).
    /// Never panics, whatever the arguments.
    pub fn sliding(ts_ms: i64, size_ms: i64, slide_ms: i64) -> impl Iterator<Item = Window> {
        let (size_ms, slide_ms) = (size_ms.max(1), slide_ms.max(1));
        let latest = floor_to(ts_ms, slide_ms);
        std::iter::successors(Some(latest), move |start: &i64| start.checked_sub(slide_ms))
            .take_while(move |start| i128::from(ts_ms) - i128::from(*start) < i128::from(size_ms))
            .take(Self::SLIDING_MAX)
            .map(move |start_ms| Window { start_ms, size_ms })
    }

    /// The most windows [`Window::sliding`] gives one event.
    pub const SLIDING_MAX: usize = 100_000;

    /// The first millisecond after the window (saturating at `i64::MAX`).
    pub fn end_ms(&self) -> i64 {
        self.start_ms.saturating_add(self.size_ms)
    }

    /// Whether `ts_ms` falls in the window.
    pub fn contains(&self, ts_ms: i64) -> bool {
        self.start_ms <= ts_ms && ts_ms < self.end_ms()
    }

    /// Parses the display form, `START/END` with UTC times `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = |why: &str| format!("\"{s}\" is not a window of the form 2026-03-01T11:30:00Z/2026-03-01T11:30:10Z: {why}");
        let (start, end) = s.split_once('/').ok_or_else(|| bad("no `/` between start and end"))?;
        let start_ms = parse_utc(start).map_err(|e| bad(&e))?;
        let end_ms = parse_utc(end).map_err(|e| bad(&e))?;
        if end_ms <= start_ms {
            return Err(bad("the end must be after the start"));
        }
        Ok(Window { start_ms, size_ms: end_ms - start_ms })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_utc(f, self.start_ms)?;
        f.write_str("/")?;
        write_utc(f, self.end_ms())
    }
}

impl Example for Window {
    fn example() -> Self {
        Window::tumbling(0, 10_000)
    }
}

impl ViewKey for Window {
    fn to_json(&self) -> Value {
        Value::from(self.to_string())
    }
    fn parse_key(s: &str) -> Result<Self, String> {
        Window::parse(s.trim().trim_matches('"'))
    }
}

/// The largest multiple of `size` at or below `ts`, clamped to the i64 range.
fn floor_to(ts: i64, size: i64) -> i64 {
    let start = i128::from(ts).div_euclid(i128::from(size)) * i128::from(size);
    i64::try_from(start).unwrap_or(i64::MIN)
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
fn write_utc(f: &mut fmt::Formatter<'_>, ms: i64) -> fmt::Result {
    let day = Day::of_ms(ms);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (h, m, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    write!(f, "{day}T{h:02}:{m:02}:{s:02}")?;
    if milli != 0 {
        write!(f, ".{milli:03}")?;
    }
    f.write_str("Z")
}

fn parse_utc(s: &str) -> Result<i64, String> {
    let (date, time) = s.split_once('T').ok_or_else(|| format!("`{s}` has no `T` between date and time"))?;
    let day = Day::parse(date)?;
    let time = time.strip_suffix('Z').ok_or_else(|| format!("`{s}` must end in `Z` (UTC)"))?;
    let (hms, milli) = match time.split_once('.') {
        Some((hms, frac)) if frac.len() == 3 && frac.bytes().all(|b| b.is_ascii_digit()) => (hms, frac.parse::<i64>().unwrap_or(0)),
        Some(_) => return Err(format!("`{s}`: milliseconds must be three digits")),
        None => (time, 0),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let field = |i: usize, max: i64| -> Result<i64, String> {
        match parts.get(i).filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit())).and_then(|p| p.parse::<i64>().ok()) {
            Some(v) if (0..=max).contains(&v) => Ok(v),
            _ => Err(format!("`{s}` is not a time of the form HH:MM:SS")),
        }
    };
    if parts.len() != 3 {
        return Err(format!("`{s}` is not a time of the form HH:MM:SS"));
    }
    let in_day = field(0, 23)? * 3_600_000 + field(1, 59)? * 60_000 + field(2, 59)? * 1000 + milli;
    i64::from(day.0)
        .checked_mul(MS_PER_DAY)
        .and_then(|ms| ms.checked_add(in_day))
        .ok_or_else(|| format!("`{s}` is beyond the range of times"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumbling_windows_floor_also_before_the_epoch() {
        assert_eq!(Window::tumbling(0, 10), Window { start_ms: 0, size_ms: 10 });
        assert_eq!(Window::tumbling(-1, 10), Window { start_ms: -10, size_ms: 10 });
        assert_eq!(Window::tumbling(i64::MAX, 10).end_ms(), i64::MAX);
        assert_eq!(Window::tumbling(5, 0), Window { start_ms: 5, size_ms: 1 });
        assert_eq!(Window::tumbling(-1, 10).to_string(), "1969-12-31T23:59:59.990Z/1970-01-01T00:00:00Z");
    }

    #[test]
    fn extreme_times_never_panic() {
        for ts in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            for size in [i64::MIN, -1, 0, 1, 3, 10, 86_400_000, i64::MAX] {
                let w = Window::tumbling(ts, size);
                assert!(w.size_ms >= 1);
                let _ = w.to_string();
                for slide in [1, 3, i64::MAX] {
                    assert!(Window::sliding(ts, size, slide).count() <= Window::SLIDING_MAX);
                }
            }
        }
        assert_eq!(Window::tumbling(i64::MIN + 1, 10).start_ms, i64::MIN);
        assert_eq!(Window::sliding(5, i64::MAX, 1).count(), Window::SLIDING_MAX);
    }

    #[test]
    fn windows_past_year_9999_round_trip() {
        let w = Window::tumbling(crate::MAX_TS_MS, 7 * 86_400_000);
        assert!(w.to_string().contains("/10000-01-"), "{w}");
        assert_eq!(Window::parse(&w.to_string()), Ok(w));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(Window::parse("2026-03-01T+1:+0:+0Z/2026-03-01T11:30:10Z").unwrap_err().contains("HH:MM:SS"));
        assert!(Window::parse("2026-03-01T11:30:00Z").unwrap_err().contains("no `/`"));
        assert!(Window::parse("2026-03-01T11:30:10Z/2026-03-01T11:30:00Z").unwrap_err().contains("after the start"));
        assert!(Window::parse("2026-03-01T11:30:00/2026-03-01T11:30:10Z").unwrap_err().contains("`Z`"));
        assert!(Window::parse("2026-03-01T25:00:00Z/2026-03-02T00:00:00Z").unwrap_err().contains("HH:MM:SS"));
        assert_eq!(Window::parse_key("\"2026-03-01T11:30:00Z/2026-03-01T11:30:10.500Z\"").unwrap().size_ms, 10_500);
    }

    proptest! {
        #[test]
        fn sliding_windows_are_exactly_those_that_hold_the_time(ts in -10_000_000i64..10_000_000, size in 1i64..5000, slide in 1i64..5000) {
            let got: Vec<Window> = Window::sliding(ts, size, slide).collect();
            for w in &got {
                prop_assert!(w.contains(ts));
                prop_assert_eq!(w.start_ms.rem_euclid(slide), 0);
            }
            // Every window starting at a multiple of `slide` that holds `ts` is there.
            let expected = (ts - size + 1..=ts).filter(|s| s.rem_euclid(slide) == 0).count();
            prop_assert_eq!(got.len(), expected);
        }

        #[test]
        fn display_round_trips(start in -crate::MAX_TS_MS..crate::MAX_TS_MS, size in 1i64..10_000_000_000) {
            let w = Window { start_ms: start, size_ms: size };
            prop_assert_eq!(Window::parse(&w.to_string()), Ok(w));
        }
    }
}
