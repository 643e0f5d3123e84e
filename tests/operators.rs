//! The DSL's per-key extremes and general `reduce`, exact in both modes.
//!
//! A small job over `(key, value, item)` observations declares each operator over an
//! insert-only input (`ctx.inserts`, bounded seeds) and over a general one (full seeds),
//! plus an extreme over an input that retracts (the count per value, which moves as counts
//! grow). `check_exact` runs it the way production does, with batch runs and handovers at
//! random cuts and the speed layer in between, and compares every merged view with a batch
//! run from scratch after every step; the final views are also compared with plain Rust.

use lambdaflow_engine::testing::{check_exact, diff, Views};
use lambdaflow_operators::serde_json::{json, Value};
use lambdaflow_operators::{aggregate, Coll, Ctx, Event, FieldError, Job, Sums, Window};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Obs {
    key: u64,
    value: i64,
    item: u64,
}

// NDJSON parsing is the serde default (`from_ndjson`).
impl Event for Obs {
    fn csv_header() -> &'static str {
        "key,value,item"
    }
    fn parse_csv(_line: &str) -> Result<Self, FieldError> {
        Err(FieldError::line("this test event reads NDJSON only"))
    }
    fn partition_key(&self) -> u64 {
        self.item
    }
}

aggregate! {
    /// Per sliding window: the sum of the items, and (as `records`) how many there were.
    struct ItemStats { items }
}

#[derive(Clone)]
struct Extremes;

impl Job for Extremes {
    type Event = Obs;
    fn name(&self) -> &'static str {
        "extremes"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Obs>) {
        let inserts = ctx.inserts(events.clone());
        // Through every method of Inserts: the odd values and the even ones, concatenated,
        // and each observation once more as a copy shifted by 0 (flat_map of one).
        let odd = inserts.clone().filter(|o| o.value % 2 != 0);
        let even = inserts.clone().filter(|o| o.value % 2 == 0);
        let kv = odd.concat(even).flat_map(|o| Some((o.key, o.value)));

        let max = ctx.max("max_bounded", kv.clone());
        ctx.value_view("max_bounded", max, |v: &i64| json!(v));
        let min = ctx.min("min_bounded", kv.clone());
        ctx.value_view("min_bounded", min, |v: &i64| json!(v));
        let best = ctx.arg_max("arg_max_bounded", inserts.clone().map(|o| (o.key, (o.item, o.value))), |(_, v): &(u64, i64)| *v);
        ctx.value_view("arg_max_bounded", best, |(item, _): &(u64, i64)| json!(item));
        let worst = ctx.arg_min(
            "arg_min_bounded",
            inserts.filter(|o| o.value % 2 == 0).map(|o| (o.key, (o.item, o.value))),
            |(_, v): &(u64, i64)| *v,
        );
        ctx.value_view("arg_min_bounded", worst, |(item, _): &(u64, i64)| json!(item));

        // The same over a general collection: full seeds.
        let max_full = ctx.max("max_full", events.clone().map(|o| (o.key, o.value)));
        ctx.value_view("max_full", max_full, |v: &i64| json!(v));

        // An input that retracts: (key, value) counts change as observations arrive, so the
        // largest count per key moves, and the old (value, count) rows are retracted.
        let counts = ctx.count("count_by_key_value", events.clone(), |o| Some((o.key, o.value)));
        let per_value = ctx.per_key("count_of_value", counts, |kv: &(u64, i64), n: &Sums<1>| (kv.0, n.get(0)));
        let most = ctx.arg_max("most_frequent", per_value.map(|(kv, (k, n))| (k, (kv.1, n))), |(_, n): &(i64, i128)| *n);
        ctx.value_view("most_frequent", most, |(v, n): &(i64, i128)| json!([v, n]));

        // Windows as keys, reading `value` as an event time: the largest item per tumbling
        // window (bounded seed), and a named aggregate per sliding window.
        let by_window = ctx.inserts(events.clone()).map(|o| (Window::tumbling(o.value, 7), o.item));
        let tumbling = ctx.max("max_item_by_window", by_window);
        ctx.value_view("max_item_by_window", tumbling, |item: &u64| json!(item));
        let sliding = events.clone().flat_map(|o| Window::sliding(o.value, 10, 5).map(move |w| (w, o.item)));
        let stats = ctx
            .sum("items_by_sliding_window", sliding, |(w, item)| Some((*w, ItemStats { items: i128::from(*item), ..ItemStats::record() })));
        ctx.sum_view("items_by_sliding_window", stats, |s: &ItemStats| json!({ "items": s.items, "records": s.records }));

        // The general seeded reduce: the lower median of the values per key.
        let median = ctx.reduce("median", events.map(|o| (o.key, o.value)), |_k, vals: &[(&i64, isize)], out| {
            let n: isize = vals.iter().map(|(_, c)| *c).filter(|c| *c > 0).sum();
            let mut seen = 0;
            for (v, c) in vals.iter().filter(|(_, c)| *c > 0) {
                seen += c;
                if 2 * seen >= n {
                    out.push((**v, 1));
                    break;
                }
            }
        });
        ctx.value_view("median", median, |v: &i64| json!(v));
    }
}

/// Plain Rust over all observations.
fn oracle(events: &[Obs]) -> Views {
    let mut by_key: BTreeMap<u64, Vec<&Obs>> = BTreeMap::new();
    for o in events {
        by_key.entry(o.key).or_default().push(o);
    }
    // Every declared view is there, also when no key has a value (a view with no keys).
    let names = [
        "max_bounded",
        "max_full",
        "min_bounded",
        "arg_max_bounded",
        "arg_min_bounded",
        "most_frequent",
        "median",
        "max_item_by_window",
        "items_by_sliding_window",
    ];
    let mut views: Views = names.iter().map(|n| (n.to_string(), BTreeMap::new())).collect();
    let key_of = |w: Window| serde_json::to_string(&w.to_string()).unwrap();
    for o in events {
        let tumbling = views.entry("max_item_by_window".into()).or_default();
        let slot = tumbling.entry(key_of(Window::tumbling(o.value, 7))).or_insert(json!(o.item));
        if slot.as_u64().unwrap() < o.item {
            *slot = json!(o.item);
        }
        for w in Window::sliding(o.value, 10, 5) {
            let stats =
                views.entry("items_by_sliding_window".into()).or_default().entry(key_of(w)).or_insert(json!({ "items": 0, "records": 0 }));
            stats["items"] = json!(stats["items"].as_u64().unwrap() + o.item);
            stats["records"] = json!(stats["records"].as_u64().unwrap() + 1);
        }
    }
    let mut put = |view: &str, key: u64, value: Value| {
        views.entry(view.to_string()).or_default().insert(key.to_string(), value);
    };
    for (k, obs) in &by_key {
        let max = obs.iter().map(|o| o.value).max().expect("non-empty");
        put("max_bounded", *k, json!(max));
        put("max_full", *k, json!(max));
        put("min_bounded", *k, json!(obs.iter().map(|o| o.value).min().expect("non-empty")));
        // Highest value, ties to the smaller item.
        let best = obs.iter().map(|o| (o.value, std::cmp::Reverse(o.item))).max().expect("non-empty");
        put("arg_max_bounded", *k, json!(best.1 .0));
        if let Some(worst) = obs.iter().filter(|o| o.value % 2 == 0).map(|o| (o.value, o.item)).min() {
            put("arg_min_bounded", *k, json!(worst.1));
        }
        let mut counts: BTreeMap<i64, i128> = BTreeMap::new();
        for o in obs {
            *counts.entry(o.value).or_default() += 1;
        }
        // Most frequent value, ties to the smaller (value, count) item.
        let (n, v) = counts.iter().map(|(v, n)| (*n, std::cmp::Reverse(*v))).max().expect("non-empty");
        put("most_frequent", *k, json!([v.0, n]));
        let mut values: Vec<i64> = obs.iter().map(|o| o.value).collect();
        values.sort_unstable();
        put("median", *k, json!(values[(values.len() - 1) / 2]));
    }
    views
}

fn obs() -> impl Strategy<Value = Obs> {
    (0u64..4, -20i64..20, 0u64..30).prop_map(|(key, value, item)| Obs { key, value, item })
}

fn run(events: &[Obs], cuts: &[usize], workers: usize) -> Result<(), String> {
    let report = check_exact(Extremes, events, cuts, workers)?;
    match diff(&oracle(events), &report.final_views) {
        None => Ok(()),
        Some(d) => Err(format!("merged views differ from plain Rust ({workers} workers, cuts {cuts:?}): {d}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn extremes_and_reduce_are_exact_in_both_modes(
        events in prop::collection::vec(obs(), 1..80),
        cut_fracs in prop::collection::vec(0.0f64..1.0, 0..3),
        workers in prop::sample::select(vec![1usize, 2]),
    ) {
        let mut cuts: Vec<usize> = cut_fracs.iter().map(|f| (f * events.len() as f64) as usize).collect();
        cuts.sort_unstable();
        cuts.dedup();
        if let Err(e) = run(&events, &cuts, workers) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A new maximum after the cut replaces the seeded one; a smaller value leaves it.
#[test]
fn a_new_extreme_after_the_cut_replaces_the_seeded_one() {
    let o = |key, value, item| Obs { key, value, item };
    let events = vec![o(1, 5, 1), o(1, 3, 2), o(2, -4, 3), o(1, 9, 4), o(1, 2, 5), o(2, -9, 6)];
    run(&events, &[3], 2).unwrap();
}

/// `ctx.inserts` on anything but the job's events is a build error that says what to do.
#[derive(Clone)]
struct Misuse;

impl Job for Misuse {
    type Event = Obs;
    fn name(&self) -> &'static str {
        "misuse"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Obs>) {
        let derived = events.map(|o| (o.key, o.value));
        let wrong = ctx.inserts(derived);
        let max = ctx.max("max", wrong);
        ctx.value_view("max", max, |v: &i64| json!(v));
    }
}

/// A job cannot name another collection its events to get bounded seeds over it.
#[derive(Clone)]
struct Renames;

impl Job for Renames {
    type Event = Obs;
    fn name(&self) -> &'static str {
        "renames"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Obs>) {
        let retracting = events.map(|o| (o.key, o.value)).negate();
        ctx.set_events(&retracting);
        let wrong = ctx.inserts(retracting);
        let max = ctx.max("max", wrong);
        ctx.value_view("max", max, |v: &i64| json!(v));
    }
}

#[test]
fn a_job_cannot_rename_its_events() {
    let Err(e) = check_exact(Renames, &[Obs { key: 1, value: 1, item: 1 }], &[], 1) else { panic!("a renamed events collection ran") };
    assert!(e.contains("ctx.set_events is the engine's"), "{e}");
}

#[test]
fn inserts_of_a_derived_collection_is_refused_with_the_fix() {
    let Err(e) = check_exact(Misuse, &[Obs { key: 1, value: 1, item: 1 }], &[], 1) else { panic!("a misused ctx.inserts ran") };
    assert!(e.contains("ctx.inserts(..) takes the job's own `events`"), "{e}");
}

/// The bounded seed holds one row per key, the full one every distinct input row.
#[test]
fn bounded_seeds_hold_one_row_per_key() {
    use lambdaflow_engine::{Lambda, Progress};
    let dir = lambdaflow_engine::testing::TempDir::new("extremes-seeds");
    let lambda = Lambda::open(Extremes, dir.path(), lambdaflow_engine::testing::test_options(2)).unwrap();
    let mut events: Vec<Obs> = (0..200).map(|i| Obs { key: i % 3, value: (i * 7 % 101) as i64, item: i }).collect();
    // Duplicates consolidate in the full seed: each distinct (key, value) once.
    events.extend(events.clone());
    lambda.append(&events).unwrap();
    let report = lambda.batch_and_handover(std::sync::Arc::new(Progress::default())).unwrap();
    let rows = |seed: &str| {
        report.meta.seeds.iter().find(|(name, _)| name == seed).unwrap_or_else(|| panic!("no seed {seed}: {:?}", report.meta.seeds)).1
    };
    assert_eq!(rows("max_bounded.bounded.seed"), 3);
    assert_eq!(rows("arg_max_bounded.bounded.seed"), 3);
    assert_eq!(rows("max_full.seed"), 200, "the full seed holds every distinct (key, value) row");
}
