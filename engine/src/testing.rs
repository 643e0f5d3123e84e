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
        let dir = std::env::temp_dir().join(format!("lambdaflow-{tag}-{}-{n}-{}", std::process::id(), crate::store::now_ms()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
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
    Options { workers, log: LogConfig { partitions: 4, segment_bytes: 64 << 10 } }
}

/// Reads every key of every view.
pub fn all_views<J: Job>(lambda: &Lambda<J>) -> crate::Result<Views> {
    let mut out = Views::new();
    for info in lambda.views() {
        let result = lambda.query(&info.name, &Selection::Range { from: None, to: None, limit: usize::MAX })?;
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
