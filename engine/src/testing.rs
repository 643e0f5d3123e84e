//! Exactness checks for job authors, to call from `#[test]`s.
//!
//! [`check_exact`] runs a job the way production does — appends in steps, batch runs and
//! handovers at given cuts, the speed layer catching up in between — with N worker threads,
//! and after every step compares every merged view with a batch run from scratch over
//! exactly the events appended so far. The batch runner is the oracle for the speed runner;
//! a job author can add their own plain-Rust oracle on top with [`all_views`].
//!
//! ```ignore
//! #[test]
//! fn clicks_are_exact() {
//!     let events = my_events();
//!     let report = lambdaflow_engine::testing::check_exact(MyJob, &events, &[10, 50], 2).unwrap();
//!     assert_eq!(report.final_views["clicks_by_page"]["7"], json!({"clicks": 3}));
//! }
//! ```

use lambdaflow_operators::{Job, Selection};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::batch::Progress;
use crate::lambda::{Lambda, Options};
use crate::log::LogConfig;

/// Every view's merged contents: view → key (compact JSON text) → value.
pub type Views = BTreeMap<String, BTreeMap<String, Value>>;

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temp dir.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lambdaflow-{tag}-{}-{n}-{}", std::process::id(), crate::clock::now_ms()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options for small test runs: `workers` threads, 4 partitions, small segments so rolls
/// happen.
pub fn test_options(workers: usize) -> Options {
    Options { workers, log: LogConfig { partitions: 4, segment_bytes: 64 << 10 }, ..Options::default() }
}

/// Reads every key of every view.
pub fn all_views<J: Job>(lambda: &Lambda<J>) -> crate::Result<Views> {
    let mut out = Views::new();
    for info in lambda.views() {
        let result = lambda.query(&info.name, &Selection::Range { from: None, to: None, limit: usize::MAX })?;
        // A key in error (a job mistake) fails the check with its cause and fix, not as a
        // null value that differs.
        if let Some(e) = result.answers.iter().find_map(|a| a.error.clone()) {
            let job = lambda.job().name().to_string();
            return Err(crate::error::Error::Dataflow(crate::error::DataflowError::InvalidJob { job, detail: e }));
        }
        let entries = result.answers.into_iter().map(|a| (serde_json::to_string(&a.key).unwrap_or_default(), a.value)).collect();
        out.insert(info.name, entries);
    }
    Ok(out)
}

/// The views computed by one batch run over `events`, from scratch.
pub fn batch_from_scratch<J: Job>(job: J, events: &[J::Event], workers: usize) -> crate::Result<Views> {
    let dir = TempDir::new("scratch");
    let lambda = Lambda::open(job, dir.path(), test_options(workers))?;
    lambda.append(events)?;
    lambda.batch_and_handover(Arc::new(Progress::default()))?;
    let views = all_views(&lambda)?;
    // The merged answer right after a handover must be the batch view alone.
    let f = lambda.serving().speed.frontier();
    assert_eq!(f, lambda.serving().speed.cut, "nothing after the cut");
    Ok(views)
}

/// What [`check_exact`] saw.
pub struct ExactReport {
    /// The merged views at the end (all events).
    pub final_views: Views,
    /// How many merged states were compared with a from-scratch run.
    pub checks: usize,
}

/// The first difference between two view sets, as a readable message.
pub fn diff(expected: &Views, actual: &Views) -> Option<String> {
    for (view, exp) in expected {
        let Some(act) = actual.get(view) else {
            return Some(format!("view {view} is missing"));
        };
        for (k, v) in exp {
            match act.get(k) {
                None => return Some(format!("view {view}: key {k} missing (expected {v})")),
                Some(a) if a != v => return Some(format!("view {view}: key {k}: expected {v}, got {a}")),
                _ => {}
            }
        }
        for (k, a) in act {
            if !exp.contains_key(k) {
                return Some(format!("view {view}: unexpected key {k} = {a}"));
            }
        }
    }
    for view in actual.keys() {
        if !expected.contains_key(view) {
            return Some(format!("unexpected view {view}"));
        }
    }
    None
}

/// Runs `job` over `events` with `workers` threads: appends up to each of `cuts` (event
/// indices, increasing), checks, runs a batch and hands over, checks again, and finally
/// appends the rest and checks. Each check compares every merged view with a batch run from
/// scratch over the events appended so far. Returns the first mismatch as an error.
pub fn check_exact<J: Job + Clone>(job: J, events: &[J::Event], cuts: &[usize], workers: usize) -> Result<ExactReport, String> {
    // A raw stateful operator on an unseeded input, found in the job's graph: the likely
    // cause if the comparison fails, so the hint of a failure; a job that is exact anyway
    // (e.g. a raw join with a constant dimension, linear in the changing side) passes.
    let hint = crate::cli::lint_job(Arc::new(job.clone())).map_err(|e| e.to_string())?;
    compare(job, events, cuts, workers).map_err(|e| match hint {
        Some(why) => format!("{e}\nhint: {why}"),
        None => e,
    })
}

/// [`check_exact`]'s comparisons.
fn compare<J: Job + Clone>(job: J, events: &[J::Event], cuts: &[usize], workers: usize) -> Result<ExactReport, String> {
    let dir = TempDir::new("exact");
    let lambda = Lambda::open(job.clone(), dir.path(), test_options(workers)).map_err(|e| e.to_string())?;
    let mut appended = 0usize;
    let mut checks = 0usize;
    let mut check = |lambda: &Lambda<J>, upto: usize, when: &str| -> Result<Views, String> {
        lambda.sync(Duration::from_secs(60)).map_err(|e| e.to_string())?;
        let merged = all_views(lambda).map_err(|e| e.to_string())?;
        let expected = batch_from_scratch(job.clone(), &events[..upto], workers).map_err(|e| e.to_string())?;
        checks += 1;
        match diff(&expected, &merged) {
            None => Ok(merged),
            Some(d) => Err(format!("{when} ({upto} events, {workers} workers): {d}")),
        }
    };
    let mut steps: Vec<usize> = cuts.iter().copied().filter(|c| *c <= events.len()).collect();
    steps.sort_unstable();
    for cut in steps {
        lambda.append(&events[appended..cut]).map_err(|e| e.to_string())?;
        appended = cut;
        check(&lambda, appended, "before handover")?;
        lambda.batch_and_handover(Arc::new(Progress::default())).map_err(|e| e.to_string())?;
        check(&lambda, appended, "after handover")?;
    }
    // The rest arrives in two steps so the speed layer sees several epochs.
    let mid = appended + (events.len() - appended) / 2;
    lambda.append(&events[appended..mid]).map_err(|e| e.to_string())?;
    check(&lambda, mid, "speed layer, first half of the tail")?;
    lambda.append(&events[mid..]).map_err(|e| e.to_string())?;
    let final_views = check(&lambda, events.len(), "speed layer, all events")?;
    Ok(ExactReport { final_views, checks })
}

#[cfg(test)]
mod tests {
    //! The DSL's operators in a job of their own, through `check_exact`: `join` with both
    //! sides changing after the cut (a user crossing a spend tier moves all their items to
    //! the other tier), `per_key`, `top_k`, `distinct_count`, checked against a naive oracle
    //! and against from-scratch batch runs at every step.

    use super::*;
    use lambdaflow_operators::serde_json::json;
    use lambdaflow_operators::{Coll, Ctx, Event, FieldError, Job, Sums};
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    struct Buy {
        user: u64,
        item: u64,
        amount: i64,
    }

    impl Event for Buy {
        fn parse_ndjson(line: &str) -> Result<Self, FieldError> {
            serde_json::from_str(line).map_err(|e| FieldError::line(e.to_string()))
        }
        fn csv_header() -> &'static str {
            "user,item,amount"
        }
        fn parse_csv(line: &str) -> Result<Self, FieldError> {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize, name: &str| f.get(i).and_then(|v| v.parse::<i64>().ok()).ok_or_else(|| FieldError::missing(name));
            Ok(Buy { user: num(0, "user")? as u64, item: num(1, "item")? as u64, amount: num(2, "amount")? })
        }
        fn partition_key(&self) -> u64 {
            self.user
        }
    }

    #[derive(Clone)]
    struct Tiers {
        with_items: bool,
    }

    impl Job for Tiers {
        type Event = Buy;
        fn name(&self) -> &'static str {
            "tiers"
        }
        fn version(&self) -> u32 {
            1
        }
        fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Buy>) {
            let spend = ctx.sum("spend", events.clone(), |b: &Buy| Some((b.user, Sums::of([b.amount, 1]))));
            ctx.sum_view("spend", spend.clone(), |s: &Sums<2>| json!({ "amount": s.0[0] }));
            if !self.with_items {
                return;
            }
            let tier = ctx.per_key("tier", spend, |_user, s: &Sums<2>| if s.0[0] >= 100 { "big".to_string() } else { "small".to_string() });
            let items = events.clone().map(|b| (b.user, b.item));
            let joined = ctx.join("items_by_tier", items, tier);
            let per_tier_item = ctx.count("tier_items", joined, |(_user, (item, tier))| Some((tier.clone(), *item)));
            let top = ctx.top_k("top_items", per_tier_item.map(|(tier, item)| (tier, item)), 2, |n: &Sums<1>| n.0[0]);
            ctx.value_view("top_items", top, |list: &Vec<(u64, i128)>| json!(list));
            let buyers = ctx.distinct_count("buyers", events.clone().map(|b| (b.item, b.user)));
            ctx.sum_view("buyers", buyers, |n: &Sums<1>| json!({ "buyers": n.0[0] }));
            // Retractions: a negative amount takes one occurrence of (item, user) back, so a
            // pair can go to zero or below and must stop counting (and not count again at +1).
            let adds = events.clone().filter(|b| b.amount >= 0).map(|b| (b.item, b.user));
            let takes = events.filter(|b| b.amount < 0).map(|b| (b.item, b.user)).negate();
            let holders = ctx.distinct_count("holders", adds.concat(takes));
            ctx.sum_view("holders", holders, |n: &Sums<1>| json!({ "holders": n.0[0] }));
        }
    }

    /// The views by hand, straight from their definitions.
    fn naive(events: &[Buy]) -> Views {
        let mut spend: BTreeMap<u64, i64> = BTreeMap::new();
        for b in events {
            *spend.entry(b.user).or_default() += b.amount;
        }
        let mut tier_item: BTreeMap<(String, u64), i64> = BTreeMap::new();
        for b in events {
            let tier = if spend[&b.user] >= 100 { "big" } else { "small" };
            *tier_item.entry((tier.to_string(), b.item)).or_default() += 1;
        }
        let mut top: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
        for ((tier, item), n) in &tier_item {
            top.entry(tier.clone()).or_default().push((*n, *item));
        }
        let mut buyers: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for b in events {
            buyers.entry(b.item).or_default().insert(b.user);
        }
        let mut held: BTreeMap<(u64, u64), i64> = BTreeMap::new();
        for b in events {
            *held.entry((b.item, b.user)).or_default() += if b.amount >= 0 { 1 } else { -1 };
        }
        let mut holders: BTreeMap<u64, i64> = BTreeMap::new();
        for ((item, _user), n) in &held {
            if *n > 0 {
                *holders.entry(*item).or_default() += 1;
            }
        }
        let mut v = Views::new();
        v.insert("holders".into(), holders.iter().map(|(i, n)| (i.to_string(), json!({ "holders": n }))).collect());
        v.insert("spend".into(), spend.iter().map(|(u, a)| (u.to_string(), json!({ "amount": a }))).collect());
        v.insert(
            "top_items".into(),
            top.into_iter()
                .map(|(tier, mut list)| {
                    list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                    let l: Vec<(u64, i64)> = list.into_iter().take(2).map(|(n, i)| (i, n)).collect();
                    (json!(tier).to_string(), json!(l))
                })
                .collect(),
        );
        v.insert("buyers".into(), buyers.iter().map(|(i, s)| (i.to_string(), json!({ "buyers": s.len() }))).collect());
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn join_per_key_top_k_distinct_are_exact(
            events in prop::collection::vec((1u64..6, 1u64..5, -30i64..80).prop_map(|(user, item, amount)| Buy { user, item, amount }), 1..60),
            cut in 0.0f64..1.0,
            workers in 1usize..3,
        ) {
            let c = (cut * events.len() as f64) as usize;
            let report = check_exact(Tiers { with_items: true }, &events, &[c], workers);
            prop_assert!(report.is_ok(), "{}", report.err().unwrap_or_default());
            let report = report.unwrap_or_else(|_| unreachable!());
            prop_assert_eq!(diff(&naive(&events), &report.final_views), None);
        }
    }

    // A batch version made by a job that declared fewer operators (same name and version, a
    // deployment mistake) must be refused, not silently used with empty seeds.
    #[test]
    fn batch_without_a_seed_is_refused() {
        let dir = TempDir::new("noseed");
        let events = vec![Buy { user: 1, item: 1, amount: 5 }];
        {
            let lambda = Lambda::open(Tiers { with_items: false }, dir.path(), test_options(1)).unwrap();
            lambda.append(&events).unwrap();
            lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
        }
        let err = Lambda::open(Tiers { with_items: true }, dir.path(), test_options(1)).err().expect("must refuse").to_string();
        assert!(err.contains("no seed") && err.contains("Job::version"), "{err}");
    }

    // A current version written by a newer lambdaflow (a newer format) is not read, but
    // does not stop the service either: it serves from the log alone, exactly, and a batch
    // run by this build makes a version it reads.
    #[test]
    fn a_newer_format_version_is_served_from_the_log() {
        let dir = TempDir::new("newer");
        let events = vec![Buy { user: 1, item: 1, amount: 5 }, Buy { user: 2, item: 1, amount: 7 }, Buy { user: 1, item: 2, amount: 1 }];
        let job = || Tiers { with_items: true };
        {
            let lambda = Lambda::open(job(), dir.path(), test_options(1)).unwrap();
            lambda.append(&events).unwrap();
            lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
        }
        let store = crate::store::ViewStore::open(dir.path()).unwrap();
        let version = store.current().unwrap().expect("a version");
        let meta = store.meta(version).unwrap();
        let newer = crate::store::BatchMeta { format: crate::store::FORMAT + 1, ..meta };
        let path = dir.path().join("views").join(format!("v{version:06}")).join("META.json");
        crate::store::write_framed(&path, &serde_json::to_vec(&newer).unwrap()).unwrap();
        let lambda = Lambda::open(job(), dir.path(), test_options(1)).expect("opens on a newer version");
        assert_eq!(lambda.serving().speed.cut, vec![0; lambda.serving().speed.cut.len()], "serves from the log alone");
        let ends = lambda.log().end_offsets();
        assert!(lambda.serving().speed.wait_for(&ends, std::time::Duration::from_secs(60)).unwrap(), "the speed layer reads the log");
        assert_eq!(diff(&naive(&events), &all_views(&lambda).unwrap()), None);
        lambda.batch_and_handover(Arc::new(Progress::default())).unwrap();
        assert!(store.meta(store.current().unwrap().expect("a version")).unwrap().readable());
        assert_eq!(diff(&naive(&events), &all_views(&lambda).unwrap()), None);
    }

    /// A job whose code panics on one poisoned event, to check that a job bug becomes a
    /// clear error in both modes instead of a hang.
    #[derive(Clone)]
    struct Panics;

    impl Job for Panics {
        type Event = Buy;
        fn name(&self) -> &'static str {
            "panics"
        }
        fn version(&self) -> u32 {
            1
        }
        fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Buy>) {
            let spend = ctx.sum("spend", events, |b: &Buy| {
                assert!(b.amount != 666, "job bug: amount 666");
                Some((b.user, Sums::of([b.amount, 1])))
            });
            ctx.sum_view("spend", spend, |s: &Sums<2>| json!({ "amount": s.0[0] }));
        }
    }

    // A panic in the job's code while the speed layer runs ends in an error from `sync`
    // (and from a batch run), naming the panic, within seconds: never a hang.
    #[test]
    fn job_panic_is_an_error_not_a_hang() {
        for workers in [1, 2] {
            let dir = TempDir::new("panic");
            let lambda = Lambda::open(Panics, dir.path(), test_options(workers)).unwrap();
            lambda.append(&[Buy { user: 1, item: 1, amount: 5 }]).unwrap();
            lambda.sync(Duration::from_secs(20)).unwrap();
            lambda.append(&[Buy { user: 2, item: 1, amount: 666 }]).unwrap();
            let t = std::time::Instant::now();
            let err = lambda.sync(Duration::from_secs(20)).expect_err("a panicked speed layer cannot catch up").to_string();
            assert!(err.contains("job bug: amount 666"), "{err}");
            assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
            let err = lambda.batch_and_handover(Arc::new(Progress::default())).expect_err("batch must fail").to_string();
            assert!(err.contains("job bug: amount 666"), "{err}");
            // The batch run names the poison event: its position and its JSON form.
            let (p1, p2) = (crate::append::partition_of(1, 4), crate::append::partition_of(2, 4));
            let at = format!("partition {p2} offset {}", u64::from(p1 == p2));
            assert!(err.contains(&at) && err.contains(r#""amount":666"#) && err.contains("Job::version"), "{err}");
        }
    }

    /// A job whose `build` panics on worker 1 only.
    #[derive(Clone)]
    struct BuildPanics;

    impl Job for BuildPanics {
        type Event = Buy;
        fn name(&self) -> &'static str {
            "build-panics"
        }
        fn version(&self) -> u32 {
            1
        }
        fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Buy>) {
            assert!(ctx.scope().index() != 1, "job bug: worker 1 cannot build");
            let n = ctx.count("n", events, |b: &Buy| Some(b.user));
            ctx.sum_view("n", n, |s: &Sums<1>| json!(s.0[0]));
        }
    }

    // A `build` that panics on some workers only ends `Lambda::open` with an error naming
    // the panic, instead of leaving the other workers waiting for it forever.
    #[test]
    fn build_panic_on_one_worker_is_an_error() {
        let dir = TempDir::new("buildpanic");
        let t = std::time::Instant::now();
        let err = Lambda::open(BuildPanics, dir.path(), test_options(2)).err().expect("open must fail").to_string();
        assert!(err.contains("worker 1 cannot build"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    }
}
