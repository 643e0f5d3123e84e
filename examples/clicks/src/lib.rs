//! # clicks: a lambdaflow job of your own, start to finish
//!
//! A website logs one [`Click`] per page view: who (`user`), which page, when (`ts`, ms
//! since the Unix epoch) and how long the visitor stayed (`ms_on_page`). The [`Clicks`] job
//! turns that stream into four views, written once and run by the engine both as a batch
//! job over history and as an incremental speed layer over what arrived since:
//!
//! | view                  | key    | value                           | operators                 |
//! |-----------------------|--------|---------------------------------|---------------------------|
//! | `clicks_by_page`      | page   | `{"clicks"}`                    | `count`                   |
//! | `visitors_by_page`    | page   | `{"visitors"}` (distinct users) | `distinct_count`          |
//! | `time_on_page_by_day` | day    | `{"ms_on_page", "clicks"}`      | `sum` + `Day`             |
//! | `users_by_activity`   | bucket | `{"users"}` per activity bucket | `sum`, `per_key`, `count` |
//!
//! `count` and `sum` are *decomposable*: batch part + speed part is the answer.
//! `distinct_count` and `per_key` are *seeded*: a batch run stores their input at the cut
//! and the speed layer starts from it, so the merged answer stays exact for them too.
//!
//! See `src/main.rs` for the binary, `examples/walkthrough.rs` for the library API, and
//! `tests/exact.rs` for how to test a job.

use lambdaflow_operators::serde_json::{self, json, Value};
use lambdaflow_operators::{Coll, Ctx, Day, Event, FieldError, Job, Sums, MAX_TS_MS, MS_PER_DAY};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// 1. The event type. Derive everything: events flow through differential dataflow (Ord,
//    Hash, Clone) and are stored in the log with bincode (Serialize, Deserialize).
// ---------------------------------------------------------------------------------------

/// One page view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Click {
    /// Event time, ms since the Unix epoch (UTC), from 0 to
    /// [`lambdaflow_operators::MAX_TS_MS`] (9999-12-31T23:59:59.999Z).
    pub ts: i64,
    /// Who clicked.
    pub user: u64,
    /// Which page.
    pub page: u64,
    /// Time spent on the page, ms.
    pub ms_on_page: u32,
}

/// The fields, in CSV column order.
const FIELDS: [&str; 4] = ["ts", "user", "page", "ms_on_page"];

/// Parses one field's text; the error names the field and quotes the value.
fn field<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, FieldError> {
    text.trim()
        .parse()
        .map_err(|_| FieldError::field(name, text, format!("must be an integer in the range of {}", std::any::type_name::<T>())))
}

/// Parses `ts` and bounds it to 1970-01-01 ..= 9999-12-31 (as the shop parser does): a time
/// outside has no `YYYY-MM-DD` day to ask for, and a job must never be handed one.
fn event_time(text: &str) -> Result<i64, FieldError> {
    let ts: i64 = field("ts", text)?;
    if ts < 0 {
        return Err(FieldError::field("ts", text, "must not be negative (milliseconds since the Unix epoch)"));
    }
    if ts > MAX_TS_MS {
        return Err(FieldError::field(
            "ts",
            text,
            format!("is out of range: after 9999-12-31T23:59:59.999Z ({MAX_TS_MS}), the last supported event time"),
        ));
    }
    Ok(ts)
}

/// A JSON value as the user wrote it, strings without their quotes.
fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

impl Event for Click {
    /// `{"ts":1772323200000,"user":7,"page":3,"ms_on_page":1500}`
    fn parse_ndjson(line: &str) -> Result<Self, FieldError> {
        let value: Value = serde_json::from_str(line).map_err(|e| FieldError::line(format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| FieldError::line("expected a JSON object"))?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(FieldError::field(unknown.as_str(), plain(&obj[unknown]), "is not a field of a click"));
        }
        // Every field is a JSON number; its text goes through the same parser as CSV.
        let get = |name: &str| -> Result<String, FieldError> {
            match obj.get(name) {
                None | Some(Value::Null) => Err(FieldError::missing(name)),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(other) => Err(FieldError::field(name, plain(other), "must be a number")),
            }
        };
        Ok(Click {
            ts: event_time(&get("ts")?)?,
            user: field("user", &get("user")?)?,
            page: field("page", &get("page")?)?,
            ms_on_page: field("ms_on_page", &get("ms_on_page")?)?,
        })
    }

    fn csv_header() -> &'static str {
        "ts,user,page,ms_on_page"
    }

    /// `1772323200000,7,3,1500`
    fn parse_csv(line: &str) -> Result<Self, FieldError> {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != FIELDS.len() {
            return Err(FieldError::line(format!("expected {} columns ({}), found {}", FIELDS.len(), Self::csv_header(), cols.len())));
        }
        Ok(Click {
            ts: event_time(cols[0])?,
            user: field("user", cols[1])?,
            page: field("page", cols[2])?,
            ms_on_page: field("ms_on_page", cols[3])?,
        })
    }

    /// A user's clicks stay in order in one log partition.
    fn partition_key(&self) -> u64 {
        self.user
    }
}

impl Click {
    /// The click as one NDJSON line (no newline).
    pub fn to_ndjson(&self) -> String {
        serde_json::to_string(self).expect("a click always serializes")
    }

    /// The click as one CSV row (no newline), in [`Event::csv_header`] order.
    pub fn to_csv(&self) -> String {
        format!("{},{},{},{}", self.ts, self.user, self.page, self.ms_on_page)
    }
}

// ---------------------------------------------------------------------------------------
// 2. The job: one `build`, run by the engine in batch mode and in speed mode.
// ---------------------------------------------------------------------------------------

/// A user's activity bucket by their all-time number of clicks.
pub fn activity(clicks: i128) -> &'static str {
    match clicks {
        i128::MIN..=4 => "casual",
        5..=19 => "regular",
        _ => "heavy",
    }
}

/// The clicks job.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clicks;

impl Job for Clicks {
    type Event = Click;

    fn name(&self) -> &'static str {
        "clicks"
    }

    /// Bump this whenever a change alters what a view contains. (2: `Sums` lanes became
    /// i128, so version-1 batch views and seeds do not decode as this version's.)
    fn version(&self) -> u32 {
        2
    }

    fn build<'s>(&self, ctx: &mut Ctx<'s>, clicks: Coll<'s, Click>) {
        // Clicks per page. `count` keys each record (None skips it); the count lives in
        // the collection's difference, a `Sums<1>`, so batch + speed merge by addition.
        let by_page = ctx.count("clicks_by_page", clicks.clone(), |c| Some(c.page));
        ctx.sum_view("clicks_by_page", by_page, |n: &Sums<1>| json!({ "clicks": n.get(0) }));

        // Distinct visitors per page: a distinct count of (page, user) pairs. Not a sum of
        // parts (a visitor seen before the cut and again after counts once), so it is
        // seeded: the speed layer starts from the distinct pairs at the cut.
        let visitors = ctx.distinct_count("visitors_by_page", clicks.clone().map(|c| (c.page, c.user)));
        ctx.sum_view("visitors_by_page", visitors, |n: &Sums<1>| json!({ "visitors": n.get(0) }));

        // Time on site per UTC day of event time. Lane 0 sums the milliseconds; lane 1
        // counts clicks, which keeps a day alive even if all its clicks lasted 0 ms (a key
        // whose lanes are all zero consolidates away).
        let per_day = ctx.sum("time_on_page_by_day", clicks.clone(), |c| Some((Day::of_ms(c.ts), Sums([i128::from(c.ms_on_page), 1]))));
        ctx.sum_view("time_on_page_by_day", per_day, |s: &Sums<2>| json!({ "ms_on_page": s.get(0), "clicks": s.get(1) }));

        // An aggregate of an aggregate: clicks per user, then each user's bucket, then
        // users per bucket. When a user's 5th click arrives, `per_key` retracts "casual"
        // and asserts "regular", so the speed part reads {-1 casual, +1 regular}.
        let per_user = ctx.sum("clicks_per_user", clicks, |c| Some((c.user, Sums([1]))));
        let bucket_of_user = ctx.per_key("user_activity", per_user, |_user, n: &Sums<1>| activity(n.get(0)).to_string());
        let buckets = ctx.count("users_by_activity", bucket_of_user, |(_user, bucket)| Some(bucket.clone()));
        ctx.sum_view("users_by_activity", buckets, |n: &Sums<1>| json!({ "users": n.get(0) }));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Synthetic clicks, for `gen clicks`, `demo` and the tests. Deterministic: the same
//    seed gives the same clicks. A tiny splitmix64, no rand crate.
// ---------------------------------------------------------------------------------------

/// `count` clicks from `seed` with event times spread over `days` days from `start_ms`;
/// about one in twenty arrives late (up to two days before its neighbours).
pub fn synthetic(seed: u64, count: u64, start_ms: i64, days: u32) -> Vec<Click> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move |below: u64| -> u64 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % below.max(1)
    };
    let span = days.max(1) as i64 * MS_PER_DAY;
    (0..count)
        .map(|i| {
            let mut ts = start_ms + (i as i64 * span) / count.max(1) as i64;
            if next(20) == 0 {
                ts -= next(2 * MS_PER_DAY as u64) as i64;
            }
            // Low page numbers and low user ids are more popular (min of two draws).
            let page = 1 + next(40).min(next(40));
            let user = 1 + next(300).min(next(300));
            // Some bounces: 0 ms on the page.
            let ms_on_page = if next(10) == 0 { 0 } else { next(120_000) as u32 };
            Click { ts, user, page, ms_on_page }
        })
        .collect()
}
