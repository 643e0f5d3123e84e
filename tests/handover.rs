//! Handover: batch at C1, the speed layer runs, a batch at C2 completes while events keep
//! arriving, and every answer before, during and after the swap is exact.
//!
//! Method: one thread appends generated shop events in small chunks and records the
//! position each event got. Another thread queries every view over and over; for each
//! answer it takes the answer's own freshness (the speed frontier, one offset per partition)
//! and checks the answer against the naive oracle over exactly the events before that
//! frontier. Meanwhile the main thread runs two batch runs with handovers. The speed tables
//! must be smaller right after a handover than right before it (the new cut covers what the
//! old speed layer held), and the frontier a reader sees never goes backwards.

use lambdaflow_engine::log::{LogConfig, Position};
use lambdaflow_engine::testing::TempDir;
use lambdaflow_engine::Progress;
use lambdaflow_engine::{Lambda, Options};
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::{oracle::expected_views, Shop, ShopEvent};
use lambdaflow_operators::Selection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Appended = Arc<Mutex<Vec<(Position, ShopEvent)>>>;

fn events(seed: u64, n: u64) -> Vec<ShopEvent> {
    // A small id space so the speed layer's keys overlap the batch's.
    Generator::new(GenConfig { events: n, seed, customers: 300, products: 40, days: 5, ..GenConfig::default() }).collect()
}

fn append(lambda: &Lambda<Shop>, log: &Appended, batch: &[ShopEvent]) {
    let positions = lambda.append(batch).expect("append");
    let mut log = log.lock().unwrap();
    log.extend(positions.into_iter().zip(batch.iter().cloned()));
}

fn speed_keys(lambda: &Lambda<Shop>) -> usize {
    lambda.status().speed_keys.iter().map(|(_, k)| *k).sum()
}

/// Checks one view's answers against the oracle over the events before `frontier`.
fn check(view: &str, answers: &BTreeMap<String, serde_json::Value>, frontier: &[u64], appended: &Appended) -> Result<(), String> {
    // Wait until every event below the frontier has been recorded by the writer (its append
    // may have become visible a moment before it returned).
    let deadline = Instant::now() + Duration::from_secs(5);
    let covered = loop {
        let log = appended.lock().unwrap();
        let mut counts = vec![0u64; frontier.len()];
        let mut covered = Vec::new();
        for (pos, e) in log.iter() {
            if pos.offset < frontier[pos.partition as usize] {
                counts[pos.partition as usize] += 1;
                covered.push(*e);
            }
        }
        if counts.as_slice() == frontier {
            break covered;
        }
        drop(log);
        if Instant::now() > deadline {
            return Err(format!("events below frontier {frontier:?} never recorded (have {counts:?})"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let expected = expected_views(&covered);
    let exp = &expected[view];
    if exp != answers {
        let first = exp
            .iter()
            .find(|(k, v)| answers.get(*k) != Some(v))
            .map(|(k, v)| format!("key {k}: expected {v}, got {:?}", answers.get(k)))
            .unwrap_or_else(|| "extra keys in the answer".into());
        return Err(format!("{view} at frontier {frontier:?} ({} events): {first}", covered.len()));
    }
    Ok(())
}

#[test]
fn answers_stay_exact_across_handovers() {
    let dir = TempDir::new("handover");
    let opts = Options { workers: 2, log: LogConfig { partitions: 4, segment_bytes: 256 << 10 }, ..Options::default() };
    let lambda = Arc::new(Lambda::open(Shop, dir.path(), opts).unwrap());
    let appended: Appended = Arc::default();

    append(&lambda, &appended, &events(1, 5_000));
    lambda.batch_and_handover(Arc::new(Progress::default())).unwrap(); // C1
    append(&lambda, &appended, &events(2, 4_000));
    lambda.sync(Duration::from_secs(30)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (lambda, appended, stop) = (lambda.clone(), appended.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seed = 100;
            while !stop.load(Ordering::SeqCst) {
                append(&lambda, &appended, &events(seed, 150));
                seed += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let reader = {
        let (lambda, appended, stop, checked) = (lambda.clone(), appended.clone(), stop.clone(), checked.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let views = lambda.views();
            let mut last_frontier: Vec<u64> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for v in &views {
                    let r =
                        lambda.query(&v.name, &Selection::Range { from: None, to: None, limit: usize::MAX }).map_err(|e| e.to_string())?;
                    // Frontiers never go backwards, across handovers too.
                    let f = &r.freshness.speed_frontier;
                    if !last_frontier.is_empty() && f.iter().zip(&last_frontier).any(|(now, before)| now < before) {
                        return Err(format!("frontier went backwards: {last_frontier:?} then {f:?}"));
                    }
                    last_frontier = f.clone();
                    let answers = r.answers.iter().map(|a| (serde_json::to_string(&a.key).unwrap(), a.value.clone())).collect();
                    check(&v.name, &answers, &r.freshness.speed_frontier, &appended)?;
                    checked.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(())
        })
    };

    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        let before = speed_keys(&lambda);
        let report = lambda.batch_and_handover(Arc::new(Progress::default())).unwrap(); // C2, C3
        let after = speed_keys(&lambda);
        assert!(after < before, "speed state must shrink at a handover: {before} keys before, {after} after (cut {:?})", report.meta.cut);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    reader.join().unwrap().unwrap();
    assert!(checked.load(Ordering::SeqCst) >= 16, "the reader checked too few answers");

    // Finally: everything appended, merged, equals the oracle over everything.
    lambda.sync(Duration::from_secs(30)).unwrap();
    let all: Vec<ShopEvent> = appended.lock().unwrap().iter().map(|(_, e)| *e).collect();
    let merged = lambdaflow_engine::testing::all_views(&lambda).unwrap();
    assert_eq!(lambdaflow_engine::testing::diff(&expected_views(&all), &merged), None);
}
