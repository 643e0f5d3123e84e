//! The Nexmark job and the interval join, exact in both modes.
//!
//! * The Nexmark views (`jobs/nexmark`) through `check_exact` (batch runs and handovers at
//!   several cuts, the speed layer in between, every merged state compared with a batch run
//!   from scratch) on 1 and 2 workers, over a stream whose events arrive out of order (bids
//!   before their auction, auctions before their seller), and the final views compared
//!   with the plain-Rust oracle. The same with the join-then-filter form of the job.
//! * The interval join's state: after a batch run its seeds hold the dimension and the
//!   facts still waiting for their row, not every fact (the plain join's seed holds every
//!   bid).
//! * The interval join alone, on random inputs (proptest), and with a key that has two
//!   dimension rows at the cut (kept exact: its facts stay in the seed).

use lambdaflow_engine::testing::{all_views, batch_from_scratch, check_exact, diff, test_options, TempDir, Views};
use lambdaflow_engine::{Lambda, Progress, ViewStore};
use lambdaflow_nexmark::{gen, oracle, Nexmark, NexmarkEvent};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Coll, Ctx, Event, Job, Sums};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A splitmix64 step.
fn mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `events` shuffled within blocks of `block`: arrival order differs from event order, so
/// bids arrive before their auction and auctions before their seller, across cuts too.
fn shuffled<T>(mut events: Vec<T>, seed: u64, block: usize) -> Vec<T> {
    let mut state = seed;
    for chunk in events.chunks_mut(block) {
        for i in (1..chunk.len()).rev() {
            let j = (mix(&mut state) % (i as u64 + 1)) as usize;
            chunk.swap(i, j);
        }
    }
    events
}

/// 2 400 Nexmark events at 20 events per second of event time (two minutes: several
/// 10-second windows, sessions with gaps, long auctions), out of order, from one minute
/// before midnight UTC: the per-day views (q15, q16, q17) have two days, and auctions and
/// sessions span the day boundary.
fn nexmark_events() -> Vec<NexmarkEvent> {
    shuffled(gen::events_at(0, 2_400, gen::GEN_START_MS - 60_000, 20).collect(), 7, 300)
}

#[test]
fn nexmark_views_are_exact_and_match_the_oracle() {
    let events = nexmark_events();
    let expected = oracle::views(&events);
    for view in oracle::VIEW_NAMES {
        assert!(!expected[view].is_empty(), "the test stream gives {view} no rows: it would prove nothing");
    }
    assert_eq!(expected["q15_bidding_statistics"].len(), 2, "the test stream spans two days");
    assert!(expected["q16_channel_statistics"].len() > 2, "several channels a day");
    let n = events.len();
    for (workers, cuts) in [(1, vec![0, 1, n / 3, 2 * n / 3]), (2, vec![50, n / 2, n - 10])] {
        let report = check_exact(Nexmark::default(), &events, &cuts, workers).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.checks >= 2 * cuts.len() + 2);
        assert_eq!(diff(&expected, &report.final_views), None, "{workers} workers, cuts {cuts:?}");
        assert_eq!(diff(&report.final_views, &expected), None, "{workers} workers, cuts {cuts:?}: rows the oracle lacks");
    }
}

// The join-then-filter form gives the same views (it is the reference the interval join's
// seeds are compared with).
#[test]
fn plain_join_form_is_exact_too() {
    let events = nexmark_events();
    let n = events.len();
    let report =
        check_exact(Nexmark { plain_join: true, ..Nexmark::default() }, &events, &[n / 4, 3 * n / 4], 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(diff(&oracle::views(&events), &report.final_views), None);
}

/// Seed name → (rows, bytes on disk) of the current batch version in `dir`.
fn seeds(dir: &Path) -> BTreeMap<String, (usize, u64)> {
    let store = ViewStore::open(dir).unwrap();
    let meta = store.current_meta().unwrap().expect("a batch version");
    let version = store.current().unwrap().expect("a batch version");
    meta.seeds
        .into_iter()
        .map(|(name, rows)| {
            let bytes = store.read_seed(version, &name).unwrap().map_or(0, |b| b.len() as u64);
            (name, (rows, bytes))
        })
        .collect()
}

fn batch_seeds(job: Nexmark, events: &[NexmarkEvent]) -> BTreeMap<String, (usize, u64)> {
    let dir = TempDir::new("nexmark-seeds");
    let lambda = Lambda::open(job, dir.path(), test_options(2)).unwrap();
    lambda.append(events).unwrap();
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
    seeds(dir.path())
}

#[test]
fn interval_join_seeds_hold_the_dimension_and_waiting_facts_only() {
    let events: Vec<NexmarkEvent> = gen::stream(20_000);
    let bids = events.iter().filter(|e| matches!(e, NexmarkEvent::Bid(_))).count();
    let auctions = events.iter().filter(|e| matches!(e, NexmarkEvent::Auction(_))).count();
    let bounded = batch_seeds(Nexmark::default(), &events);
    let plain = batch_seeds(Nexmark { plain_join: true, ..Nexmark::default() }, &events);
    // The plain join stores every bid; the interval join one row per auction and the bids
    // whose auction has not arrived (the generator bids up to 10 auctions ahead).
    assert_eq!(plain["q9_auction_bids.right.seed"].0, bids);
    assert_eq!(bounded["q9_auction_bids.dims.seed"].0, auctions);
    let waiting = bounded["q9_auction_bids.waiting.seed"].0;
    assert!(waiting * 100 < bids, "{waiting} of {bids} bids kept: the interval join stores facts that met their row");
    // The seeds of the queries built on a join (the others are the same in both forms).
    let total = |s: &BTreeMap<String, (usize, u64)>| {
        s.iter().filter(|(name, _)| ["q3_", "q8_", "q9_"].iter().any(|q| name.starts_with(q))).map(|(_, (_, b))| b).sum::<u64>()
    };
    assert!(total(&bounded) * 2 < total(&plain), "seed bytes: interval {bounded:?}, plain {plain:?}");
}

// ---------------------------------------------------------------------------------------
// The interval join alone.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Band {
    /// A dimension row: key `key` is open over `[start, end]`.
    Dim { key: u64, start: u64, end: u64 },
    /// A fact at time `t`.
    Fact { key: u64, t: u64, id: u64 },
}

impl Event for Band {
    fn partition_key(&self) -> u64 {
        match self {
            Band::Dim { key, .. } | Band::Fact { key, .. } => *key,
        }
    }
}

#[derive(Clone)]
struct BandJob;

impl Job for BandJob {
    type Event = Band;
    fn name(&self) -> &'static str {
        "band"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Band>) {
        let inserts = ctx.inserts(events);
        let dims = inserts.clone().flat_map(|e| match e {
            Band::Dim { key, start, end } => Some((key, (start, end))),
            Band::Fact { .. } => None,
        });
        let facts = inserts.flat_map(|e| match e {
            Band::Fact { key, t, id } => Some((key, (t, id))),
            Band::Dim { .. } => None,
        });
        let joined = ctx.interval_join("band", dims, facts, |(start, end): &(u64, u64), (t, _): &(u64, u64)| start <= t && t <= end);
        let pairs = ctx.sum("pairs", joined.clone().into_coll(), |(k, (_, (t, _))): &(u64, ((u64, u64), (u64, u64)))| {
            Some((*k, Sums([1, i128::from(*t)])))
        });
        ctx.sum_view("pairs", pairs, |s: &Sums<2>| json!({ "pairs": s.get(0), "sum_t": s.get(1) }));
        // The join's output is insert-only: an extreme after it keeps one seed row per key.
        let latest = ctx.max("latest", joined.map(|(k, (_, (_, id)))| (k, id)));
        ctx.value_view("latest", latest, |id: &u64| json!(id));
    }
}

/// The views of [`BandJob`], naively: every (row, fact) pair of a key within the band.
fn band_oracle(events: &[Band]) -> Views {
    let mut pairs: BTreeMap<u64, (i128, i128)> = BTreeMap::new();
    let mut latest: BTreeMap<u64, u64> = BTreeMap::new();
    for d in events {
        let Band::Dim { key, start, end } = d else { continue };
        for f in events {
            let Band::Fact { key: fk, t, id } = f else { continue };
            if fk == key && start <= t && t <= end {
                let p = pairs.entry(*key).or_default();
                p.0 += 1;
                p.1 += i128::from(*t);
                let l = latest.entry(*key).or_insert(*id);
                *l = (*l).max(*id);
            }
        }
    }
    let mut views = Views::new();
    views.insert("pairs".into(), pairs.into_iter().map(|(k, (n, s))| (k.to_string(), json!({ "pairs": n, "sum_t": s }))).collect());
    views.insert("latest".into(), latest.into_iter().map(|(k, id)| (k.to_string(), json!(id))).collect());
    views
}

/// One dimension row for each of `keys` keys (in random places), and facts on keys with
/// and without a row, at times around the bands.
fn band_events() -> impl Strategy<Value = Vec<Band>> {
    (1u64..12, prop::collection::vec((0u64..14, 0u64..40, 0u64..12), 1..60), any::<u64>()).prop_map(|(keys, facts, seed)| {
        let mut events: Vec<Band> = (0..keys).map(|key| Band::Dim { key, start: key * 2, end: key * 2 + 10 + key % 3 * 5 }).collect();
        events.extend(facts.into_iter().enumerate().map(|(id, (key, t, _))| Band::Fact { key, t, id: id as u64 }));
        shuffled(events, seed, usize::MAX)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn interval_join_is_exact(events in band_events(), a in 0usize..60, b in 0usize..60, workers in 1usize..3) {
        let n = events.len();
        let cuts = vec![a.min(n), b.min(n)];
        let report = check_exact(BandJob, &events, &cuts, workers).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(diff(&band_oracle(&events), &report.final_views), None);
        prop_assert_eq!(diff(&report.final_views, &band_oracle(&events)), None);
    }
}

// A key with two dimension rows at the cut keeps its facts in the seed, so facts and rows
// after the cut are joined with all of them, exactly. (A second row arriving *after* the
// cut for a key whose facts were released is the documented limit of the contract.)
#[test]
fn duplicate_dimension_rows_at_the_cut_stay_exact() {
    let before = vec![
        Band::Fact { key: 1, t: 5, id: 0 },
        Band::Dim { key: 1, start: 0, end: 10 },
        Band::Dim { key: 1, start: 4, end: 20 },
        Band::Fact { key: 1, t: 15, id: 1 },
        Band::Dim { key: 2, start: 0, end: 100 },
        Band::Fact { key: 2, t: 50, id: 2 },
        Band::Fact { key: 3, t: 7, id: 3 },
    ];
    let after = vec![Band::Fact { key: 1, t: 8, id: 4 }, Band::Dim { key: 1, start: 6, end: 7 }, Band::Dim { key: 3, start: 7, end: 7 }];
    let after2 = vec![Band::Fact { key: 1, t: 6, id: 5 }, Band::Fact { key: 2, t: 60, id: 6 }];
    let dir = TempDir::new("band-duplicates");
    let lambda = Lambda::open(BandJob, dir.path(), test_options(2)).unwrap();
    lambda.append(&before).unwrap();
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
    let waiting = seeds(dir.path())["band.waiting.seed"].0;
    assert_eq!(waiting, 3, "key 1's two facts (two rows) and key 3's fact (no row) wait; key 2's fact met its row");
    lambda.append(&after).unwrap();
    lambda.append(&after2).unwrap();
    lambda.sync(Duration::from_secs(60)).unwrap();
    let all: Vec<Band> = before.iter().chain(&after).chain(&after2).cloned().collect();
    let merged = all_views(&lambda).unwrap();
    assert_eq!(diff(&band_oracle(&all), &merged), None);
    assert_eq!(diff(&batch_from_scratch(BandJob, &all, 2).unwrap(), &merged), None);
}

// ---------------------------------------------------------------------------------------
// The bounded top-k over insert-only input (`ctx.top_k_items`).
// ---------------------------------------------------------------------------------------

/// A scored row of a key (`id` tells rows of equal score apart; equal rows repeat).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Scored {
    key: u64,
    score: u64,
    id: u64,
}

impl Event for Scored {
    fn partition_key(&self) -> u64 {
        self.id
    }
}

/// The same top-k three ways: bounded over `Inserts`, the same operator over a `Coll` (full
/// seed), and the general `top_k` (items ranked by a constant score, so by the item:
/// `(u64::MAX - score, id)` ascending is score descending, then id).
#[derive(Clone)]
struct TopJob {
    k: usize,
}

fn shown(list: &[(u64, u64)]) -> lambdaflow_operators::serde_json::Value {
    json!(list)
}

impl Job for TopJob {
    type Event = Scored;
    fn name(&self) -> &'static str {
        "top"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Scored>) {
        let rows = ctx.inserts(events).map(|r| (r.key, (r.score, r.id)));
        let score = |(s, _): &(u64, u64)| *s;
        let bounded = ctx.top_k_items("bounded", rows.clone(), self.k, score);
        ctx.value_view("bounded", bounded, |l: &Vec<((u64, u64), u64)>| shown(&l.iter().map(|(i, _)| *i).collect::<Vec<_>>()));
        let fallback = ctx.top_k_items("fallback", rows.clone().into_coll(), self.k, score);
        ctx.value_view("fallback", fallback, |l: &Vec<((u64, u64), u64)>| shown(&l.iter().map(|(i, _)| *i).collect::<Vec<_>>()));
        let full = ctx.top_k("full", rows.into_coll().map(|(k, (s, id))| (k, (u64::MAX - s, id))), self.k, |_n: &isize| 0u8);
        ctx.value_view("full", full, |l: &Vec<((u64, u64), u8)>| {
            shown(&l.iter().map(|((r, id), _)| (u64::MAX - r, *id)).collect::<Vec<_>>())
        });
    }
}

/// Rows on few keys with few scores (many ties) and ids (equal rows repeat).
fn scored_rows() -> impl Strategy<Value = Vec<Scored>> {
    prop::collection::vec((0u64..4, 0u64..4, 0u64..6), 1..50)
        .prop_map(|rows| rows.into_iter().map(|(key, score, id)| Scored { key, score, id }).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    // Batch runs and handovers at two cuts, the speed layer in between (check_exact), and
    // the three forms equal key by key, ties and repeated rows included.
    #[test]
    fn bounded_top_k_is_exact_and_equals_the_full_top_k(rows in scored_rows(), a in 0usize..50, b in 0usize..50, k in 1usize..4, workers in 1usize..3) {
        let n = rows.len();
        let report = check_exact(TopJob { k }, &rows, &[a.min(n), b.min(n)], workers).unwrap_or_else(|e| panic!("{e}"));
        let views = &report.final_views;
        prop_assert!(!views["full"].is_empty());
        prop_assert_eq!(&views["bounded"], &views["full"]);
        prop_assert_eq!(&views["fallback"], &views["full"]);
    }
}

// Over `Inserts` the seed holds at most k rows per key; over a `Coll`, every distinct row.
#[test]
fn bounded_top_k_seed_holds_k_rows_per_key() {
    let rows: Vec<Scored> = (0..400u64).map(|i| Scored { key: i % 4, score: mix(&mut i.clone()) % 50, id: i }).collect();
    let dir = TempDir::new("top-seeds");
    let lambda = Lambda::open(TopJob { k: 3 }, dir.path(), test_options(2)).unwrap();
    lambda.append(&rows).unwrap();
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
    let seeds = seeds(dir.path());
    assert_eq!(seeds["bounded.bounded.seed"].0, 4 * 3, "{seeds:?}");
    assert_eq!(seeds["fallback.seed"].0, 400, "{seeds:?}");
    // Later rows, some better than the kept ones, some tied with them, some worse.
    let later: Vec<Scored> = (400..460u64).map(|i| Scored { key: i % 5, score: i % 60, id: i % 7 }).collect();
    lambda.append(&later).unwrap();
    lambda.sync(Duration::from_secs(60)).unwrap();
    let all: Vec<Scored> = rows.iter().chain(&later).cloned().collect();
    let merged = all_views(&lambda).unwrap();
    assert_eq!(merged["bounded"], merged["full"]);
    assert_eq!(diff(&batch_from_scratch(TopJob { k: 3 }, &all, 2).unwrap(), &merged), None);
}

// ---------------------------------------------------------------------------------------
// The interval join's uniqueness violations: counted, and exact everywhere else.
// ---------------------------------------------------------------------------------------

const SECOND_ROWS: &str = "interval_join.band.second_rows";

fn second_rows<J: Job>(lambda: &Lambda<J>) -> Option<u64> {
    lambda.status().speed_counters.iter().find(|(name, _)| name == SECOND_ROWS).map(|(_, n)| *n)
}

// `status` counts the keys that got a second dimension row in the speed layer, once per key;
// a key's first row is no violation, and a new speed layer (after a batch run, which makes
// the keys exact again) starts from zero.
#[test]
fn second_dimension_rows_are_counted_in_status() {
    let dir = TempDir::new("band-counter");
    let lambda = Lambda::open(BandJob, dir.path(), test_options(2)).unwrap();
    lambda.append(&[Band::Dim { key: 1, start: 0, end: 10 }, Band::Fact { key: 1, t: 5, id: 0 }]).unwrap();
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
    assert_eq!(second_rows(&lambda), Some(0), "the counter is there from the start: {:?}", lambda.status().speed_counters);
    let steps: [(Band, u64); 5] = [
        (Band::Dim { key: 2, start: 0, end: 10 }, 0), // key 2's first row
        (Band::Dim { key: 1, start: 3, end: 9 }, 1),  // key 1's second row (one at the cut)
        (Band::Dim { key: 1, start: 4, end: 9 }, 1),  // key 1 again: counted once
        (Band::Dim { key: 2, start: 1, end: 10 }, 2), // key 2's second row (none at the cut)
        (Band::Fact { key: 2, t: 5, id: 1 }, 2),
    ];
    for (event, expected) in steps {
        lambda.append(std::slice::from_ref(&event)).unwrap();
        lambda.sync(Duration::from_secs(60)).unwrap();
        assert_eq!(second_rows(&lambda), Some(expected), "after {event:?}");
    }
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
    assert_eq!(second_rows(&lambda), Some(0));
}

/// Keys with zero to three dimension rows, and facts, in random order.
fn band_events_with_duplicates() -> impl Strategy<Value = Vec<Band>> {
    (prop::collection::vec((0u64..6, 0u64..20, 0u64..20), 0..14), prop::collection::vec((0u64..7, 0u64..40), 1..24), any::<u64>()).prop_map(
        |(dims, facts, seed)| {
            let mut events: Vec<Band> = dims.into_iter().map(|(key, s, len)| Band::Dim { key, start: s, end: s + len }).collect();
            events.extend(facts.into_iter().enumerate().map(|(id, (key, t))| Band::Fact { key, t, id: id as u64 }));
            shuffled(events, seed, usize::MAX)
        },
    )
}

/// The keys whose pairs the speed layer cannot make exact when `events[cut..]` arrive one
/// epoch each: a row arriving while its key has exactly one row.
fn violating_keys(events: &[Band], cut: usize) -> std::collections::BTreeSet<u64> {
    let mut rows: BTreeMap<u64, usize> = BTreeMap::new();
    let mut bad = std::collections::BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        if let Band::Dim { key, .. } = e {
            let n = rows.entry(*key).or_default();
            if i >= cut && *n == 1 {
                bad.insert(*key);
            }
            *n += 1;
        }
    }
    bad
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    // With duplicate dimension rows before and after the cut: the counter names exactly the
    // keys that broke the contract, every other key is exact in the speed layer, and the
    // next batch run makes every key exact.
    #[test]
    fn interval_join_with_duplicate_rows_is_exact_but_for_counted_keys(events in band_events_with_duplicates(), cut in 0usize..40, workers in 1usize..3) {
        let cut = cut.min(events.len());
        let dir = TempDir::new("band-dup-prop");
        let lambda = Lambda::open(BandJob, dir.path(), test_options(workers)).unwrap();
        lambda.append(&events[..cut]).unwrap();
        lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
        for e in &events[cut..] {
            lambda.append(std::slice::from_ref(e)).unwrap();
            lambda.sync(Duration::from_secs(60)).unwrap();
        }
        let bad = violating_keys(&events, cut);
        prop_assert_eq!(second_rows(&lambda), Some(bad.len() as u64));
        let keep = |views: Views| -> Views {
            views.into_iter().map(|(v, rows)| (v, rows.into_iter().filter(|(k, _)| !bad.contains(&k.parse::<u64>().unwrap())).collect())).collect()
        };
        let expected = band_oracle(&events);
        prop_assert_eq!(diff(&keep(expected.clone()), &keep(all_views(&lambda).unwrap())), None);
        lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
        prop_assert_eq!(diff(&expected, &all_views(&lambda).unwrap()), None);
        prop_assert_eq!(second_rows(&lambda), Some(0));
    }
}

// ---------------------------------------------------------------------------------------
// The command line's `query` on Nexmark, pruned to the seeds upstream of the view asked.

/// Set in the environment of this test binary run as the `lambdaflow-nexmark` command line
/// (see [`cli_child`]): the arguments, one a line.
const CLI_ARGS: &str = "LAMBDAFLOW_NEXMARK_TEST_CLI_ARGS";

/// Not a test of its own: when [`CLI_ARGS`] is set, this process is the Nexmark binary's
/// command line (`lambdaflow_engine::cli::main_with`), run by [`nexmark_cli`] (the root
/// package's tests cannot name another package's binary).
#[test]
fn cli_child() {
    if let Ok(args) = std::env::var(CLI_ARGS) {
        let app = lambdaflow_engine::cli::App::new(Nexmark::default()).generator(gen::NexmarkGenerator);
        let args = std::iter::once("lambdaflow-nexmark").chain(args.lines());
        let code = lambdaflow_engine::cli::main_with(app, args);
        std::process::exit(code.into());
    }
}

/// Runs the Nexmark command line `args` on `data` (with `LAMBDAFLOW_QUERY_EXPLAIN` set):
/// its stdout (what follows the test harness's own lines) and stderr.
fn nexmark_cli(data: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["--data", data.to_str().expect("utf-8"), "-w", "2"];
    all.extend_from_slice(args);
    let o = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "cli_child", "--nocapture", "--test-threads", "1"])
        .env(CLI_ARGS, all.join("\n"))
        .env("LAMBDAFLOW_QUERY_EXPLAIN", "1")
        .output()
        .expect("spawn the command line");
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(o.status.success(), "{args:?} failed ({:?}):\n{err}\n{out}", o.status);
    // The harness prints "running 1 test" and "test cli_child ... " first; the command line
    // exits before the harness's verdict and summary.
    let out = out.split_once("test cli_child ... ").map_or(out.as_str(), |(_, rest)| rest).to_string();
    (out, err)
}

fn write_ndjson(path: &Path, events: &[NexmarkEvent]) {
    let text: String = events.iter().map(|e| e.to_ndjson() + "\n").collect();
    std::fs::write(path, text).expect("write events");
}

// `query` of the command line (no service: it loads the batch version and runs the events
// after its cut through the views asked for) answers q4 (the interval join of auctions and
// bids, then `arg_max` and `sum`) and q3 (the interval join with the person dimension) as
// the oracle does over every event, and loads only the seeds upstream of the view: q4
// loads q9's join and winning bids, none of q3's or q19's; q3 none of q9's.
#[test]
fn cli_query_loads_only_the_seeds_upstream_and_matches_the_oracle() {
    let events = nexmark_events();
    let cut = 2 * events.len() / 3;
    let tmp = TempDir::new("nexmark-cli-query");
    let data = tmp.path().join("data");
    let (before, after) = (tmp.path().join("before.ndjson"), tmp.path().join("after.ndjson"));
    write_ndjson(&before, &events[..cut]);
    write_ndjson(&after, &events[cut..]);
    nexmark_cli(&data, &["ingest", before.to_str().expect("utf-8")]);
    nexmark_cli(&data, &["batch"]);
    nexmark_cli(&data, &["ingest", after.to_str().expect("utf-8")]);
    let store = ViewStore::open(&data).unwrap();
    let all_seeds: Vec<String> = store.current_meta().unwrap().expect("a batch version").seeds.into_iter().map(|(s, _)| s).collect();
    let expected = oracle::views(&events);
    for (view, upstream, unrelated) in
        [("q4_avg_price_by_category", "q9_", ["q3_", "q19_"]), ("q3_local_item_suggestion", "q3_", ["q9_", "q19_"])]
    {
        let (out, err) = nexmark_cli(&data, &["query", view, "--all", "--json"]);
        let answer: lambdaflow_operators::serde_json::Value =
            lambdaflow_operators::serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let got: BTreeMap<String, lambdaflow_operators::serde_json::Value> = answer["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {answer}"))
            .iter()
            .map(|item| (item["key"].to_string(), item["value"].clone()))
            .collect();
        assert!(!got.is_empty(), "{view}: no rows, the test would prove nothing");
        assert_eq!(got, expected[view], "{view} differs from the oracle");
        let explained = err.lines().find(|l| l.starts_with("query: answered from")).unwrap_or_else(|| panic!("no explanation: {err}"));
        let after_cut = format!("{} events after its cut", events.len() - cut);
        assert!(explained.contains(&after_cut), "{view}: {explained}");
        let (_, loaded) = explained.split_once("loading seeds ").unwrap_or_else(|| panic!("{view} loaded no seed: {explained}"));
        let loaded: Vec<&str> = loaded.split(", ").collect();
        assert!(loaded.iter().all(|s| all_seeds.iter().any(|a| a == s)), "{view}: {loaded:?} not among {all_seeds:?}");
        assert!(loaded.iter().any(|s| s.starts_with(upstream)), "{view}: {loaded:?}");
        for prefix in unrelated {
            assert!(all_seeds.iter().any(|s| s.starts_with(prefix)), "the batch version has {prefix} seeds: {all_seeds:?}");
            assert!(!loaded.iter().any(|s| s.starts_with(prefix)), "{view} loaded a seed of {prefix}: {loaded:?}");
        }
    }
}

// The Nexmark job has no CSV form: a CSV file whose name does not say so is refused by its
// first line, naming the file (exit 3), and nothing is stored.
#[test]
fn cli_ingest_of_csv_found_by_its_first_line_names_the_file() {
    let tmp = TempDir::new("nexmark-cli-csv");
    let data = tmp.path().join("data");
    let file = tmp.path().join("bids.txt");
    std::fs::write(&file, "auction,bidder,price\n1000,1001,500\n").expect("write");
    let mut args = ["--data", data.to_str().expect("utf-8"), "ingest", file.to_str().expect("utf-8")];
    let o = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "cli_child", "--nocapture", "--test-threads", "1"])
        .env(CLI_ARGS, args.join("\n"))
        .output()
        .expect("spawn the command line");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("{}: its first line (`auction,bidder,price`)", file.display())) && err.contains("no CSV form"), "{err}");
    assert!(!data.join("log").exists(), "a refused input created a log");
    // The same events as NDJSON are ingested.
    let ndjson = tmp.path().join("bids.ndjson");
    write_ndjson(&ndjson, &gen::stream(10));
    args[3] = ndjson.to_str().expect("utf-8");
    let o = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "cli_child", "--nocapture", "--test-threads", "1"])
        .env(CLI_ARGS, args.join("\n"))
        .output()
        .expect("spawn the command line");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

// ---------------------------------------------------------------------------------------
// q18: `arg_max` over inserts keeps one value per (bidder, auction), not every bid.
// ---------------------------------------------------------------------------------------

// The speed layer's `arg_max` state over an insert-only input is one value per key (the
// seed's keys and the new ones), not every value a key has had: `status` counts what it
// holds (`extreme.NAME.values`), and the merged view is the oracle's at the end.
#[test]
fn q18_speed_state_holds_one_value_per_bidder_and_auction() {
    let events: Vec<NexmarkEvent> = gen::stream(20_000);
    let (before, after) = events.split_at(events.len() / 2);
    let bids_after = after.iter().filter(|e| matches!(e, NexmarkEvent::Bid(_))).count() as u64;
    let dir = TempDir::new("nexmark-q18-state");
    let lambda = Lambda::open(Nexmark::default().only("q18").unwrap(), dir.path(), test_options(2)).unwrap();
    lambda.append(before).unwrap();
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
    lambda.append(after).unwrap();
    lambda.sync(Duration::from_secs(60)).unwrap();
    let expected = oracle::views(&events);
    let keys = expected["q18_last_bid"].len() as u64;
    let cut_keys = oracle::views(before)["q18_last_bid"].len() as u64;
    let counters = lambda.status().speed_counters;
    let held = counters.iter().find(|(n, _)| n == "extreme.q18_last_bid.values").map(|(_, v)| *v);
    assert_eq!(held, Some(keys), "one value per key: {counters:?}");
    // Not a trivial count: a state of every value since the cut (the seed's rows and every
    // bid after it) would hold more.
    assert!(cut_keys > 0 && cut_keys + bids_after > keys, "{bids_after} bids, {keys} keys, {cut_keys} at the cut");
    let got = all_views(&lambda).unwrap();
    assert_eq!(got["q18_last_bid"], expected["q18_last_bid"]);
}

// ---------------------------------------------------------------------------------------
// q15 and q16 over any channel name.
// ---------------------------------------------------------------------------------------

// q16 keys the generator's channels by a code and counts their distinct bidders and
// auctions over packed pairs; any other name goes its own way (`q16_distinct_other`). With
// a third of the bids renamed to names that are not the generator's (some that look like
// its `channel-N` but are not canonical or are too large for a code, `channel-007`,
// `channel-99999999999`), on the same days as coded ones, q15 and q16 stay exact at every
// cut and match the oracle, and every name shows as it was given.
#[test]
fn q16_is_exact_for_any_channel_name() {
    let odd = [
        "channel-007",
        "channel-99999999999",
        "channel-999999999",
        "channel-",
        "channel/1",
        "",
        "google",
        "Google ",
        "channel-1a",
        "\u{e7}anal",
    ];
    let mut i = 0;
    let events: Vec<NexmarkEvent> = nexmark_events()
        .into_iter()
        .map(|e| match e {
            NexmarkEvent::Bid(mut b) => {
                i += 1;
                if i % 3 == 0 {
                    b.channel = odd[(i / 3) % odd.len()].to_string();
                }
                NexmarkEvent::Bid(b)
            }
            e => e,
        })
        .collect();
    let views = ["q15_bidding_statistics", "q16_channel_statistics"];
    let expected: Views = oracle::views(&events).into_iter().filter(|(v, _)| views.contains(&v.as_str())).collect();
    let shown: std::collections::BTreeSet<String> = expected["q16_channel_statistics"]
        .keys()
        .map(|k| serde_json::from_str::<serde_json::Value>(k).unwrap()["channel"].as_str().unwrap().to_string())
        .collect();
    for name in odd.iter().chain(&["Google"]) {
        assert!(shown.contains(*name), "the test stream has no bid on {name:?}: it would prove nothing");
    }
    let numbered = |c: &&String| c.strip_prefix("channel-").is_some_and(|n| n.len() < 9 && !n.starts_with('0') && n.parse::<u32>().is_ok());
    assert!(shown.iter().filter(numbered).count() > 10, "the generator's channel-N among the others: {shown:?}");
    let job = Nexmark::default().only("q15,q16").unwrap();
    let n = events.len();
    for (workers, cuts) in [(1, vec![0, n / 3, 2 * n / 3]), (2, vec![50, n / 2, n - 10])] {
        let report = check_exact(job, &events, &cuts, workers).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(diff(&expected, &report.final_views), None, "{workers} workers, cuts {cuts:?}");
        assert_eq!(diff(&report.final_views, &expected), None, "{workers} workers, cuts {cuts:?}: rows the oracle lacks");
    }
}
