//! The concurrency storm: four writers hammer one service while it runs batch runs back to
//! back, and every sampled answer stays exact.
//!
//! Each writer, in a loop: sends a new keyed request (most of the time); retries an
//! acknowledged one with the same key and body (it must be answered as a duplicate, with the
//! original positions, appending nothing); reuses an acknowledged key with a different body
//! (it must be refused, 422, appending nothing); or races a new request against itself from
//! two connections (one is appended, the other answered as its duplicate). Meanwhile the
//! service runs `--batch-every 30ms` with `--keep 2`, so handovers and garbage collection
//! happen throughout. A sampler reads views at whatever frontier they are at and checks
//! each against the from-scratch computation over exactly the acknowledged events before
//! that frontier; at the end, every view is checked at the log's end and the log must hold
//! every acknowledged event exactly once.
//!
//! Seeded: `LAMBDAFLOW_STORM_SEED=S` replays the writers' decisions; the seed is printed at
//! the start and in every failure. `LAMBDAFLOW_STORM_SECS=N` sets the duration (default 6,
//! as in CI); run long by hand with e.g.
//! `LAMBDAFLOW_STORM_SECS=300 cargo test --release --test storm -- --nocapture`.

mod common;

use common::http::{status, Server};
use common::{items_by_key, ndjson, Acked, Rng, TempDir};
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::oracle::{expected_views, VIEW_NAMES};
use lambdaflow_jobs::shop::ShopEvent;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: u64 = 4;
/// The service's partitions (the default).
const PARTITIONS: u32 = 4;

/// An acknowledged request: what a retry must be answered with.
#[derive(Clone)]
struct Done {
    key: String,
    body: Vec<u8>,
    positions: Value,
}

/// What every writer shares: the acknowledged events and requests.
#[derive(Default)]
struct World {
    acked: Option<Acked>,
    done: Vec<Done>,
    counts: [u64; 4],
}

fn events(seed: u64, size: u64) -> Vec<ShopEvent> {
    Generator::new(GenConfig { events: size, seed, customers: 200, products: 30, days: 4, ..GenConfig::default() }).collect()
}

fn writer(addr: std::net::SocketAddr, world: Arc<Mutex<World>>, seed: u64, w: u64, deadline: Instant, replay: String) {
    let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut c = common::http::Client::new(addr);
    let mut id = 0u64;
    while Instant::now() < deadline {
        id += 1;
        let choice = rng.below(100);
        let pick = {
            let world = world.lock().unwrap();
            (!world.done.is_empty()).then(|| world.done[rng.below(world.done.len() as u64) as usize].clone())
        };
        match (choice, pick) {
            (70..=84, Some(d)) => {
                let r = c.post("/v1/events", &[("Idempotency-Key", &d.key)], &d.body).expect("retry");
                assert_eq!(r.status, 200, "{replay}: retry of {}: {}", d.key, r.text());
                let ack = r.json();
                assert_eq!(ack["duplicate"], true, "{replay}: a retry of {} must be answered as a duplicate: {ack}", d.key);
                assert_eq!(ack["positions"], d.positions, "{replay}: a retry of {} must get the original positions", d.key);
                world.lock().unwrap().counts[1] += 1;
            }
            (85..=94, Some(d)) => {
                let other = ndjson(&events(seed.wrapping_add(w << 40).wrapping_add(id), 2));
                let r = c.post("/v1/events", &[("Idempotency-Key", &d.key)], &other).expect("conflict");
                assert_eq!(r.status, 422, "{replay}: key {} reused for another body: {}", d.key, r.text());
                world.lock().unwrap().counts[2] += 1;
            }
            (95.., _) => {
                // The same new request from two connections at once.
                let evs = events(seed.wrapping_add(w << 32).wrapping_add(id), 1 + rng.below(20));
                let (key, body) = (format!("storm-{seed}-{w}-{id}"), ndjson(&evs));
                let twin = {
                    let (key, body) = (key.clone(), body.clone());
                    std::thread::spawn(move || {
                        let mut c2 = common::http::Client::new(addr);
                        c2.post("/v1/events", &[("Idempotency-Key", &key)], &body).expect("twin").json()
                    })
                };
                let r = c.post("/v1/events", &[("Idempotency-Key", &key)], &body).expect("race");
                assert_eq!(r.status, 200, "{replay}: race {key}: {}", r.text());
                let (a, b) = (r.json(), twin.join().expect("twin thread"));
                assert_eq!(a["positions"], b["positions"], "{replay}: both sides of race {key} get the same positions");
                let originals = [&a, &b].iter().filter(|x| x["duplicate"] == false).count();
                assert_eq!(originals, 1, "{replay}: exactly one side of race {key} is appended: {a} / {b}");
                let mut world = world.lock().unwrap();
                world.acked.as_mut().expect("ledger").record(&evs, &a);
                world.done.push(Done { key, body, positions: a["positions"].clone() });
                world.counts[3] += 1;
            }
            _ => {
                let evs = events(seed.wrapping_add(w << 32).wrapping_add(id), 1 + rng.below(40));
                let (key, body) = (format!("storm-{seed}-{w}-{id}"), ndjson(&evs));
                let r = c.post("/v1/events", &[("Idempotency-Key", &key)], &body).expect("post");
                assert_eq!(r.status, 200, "{replay}: new request {key}: {}", r.text());
                let ack = r.json();
                assert_eq!(ack["duplicate"], false, "{replay}: a new key is appended: {ack}");
                let mut world = world.lock().unwrap();
                world.acked.as_mut().expect("ledger").record(&evs, &ack);
                world.done.push(Done { key, body, positions: ack["positions"].clone() });
                world.counts[0] += 1;
            }
        }
    }
}

/// Reads `view` at whatever frontier it is at and checks it against the acknowledged events
/// before that frontier (waiting for their acknowledgements, which may still be on the way).
fn check_sample(c: &mut common::http::Client, world: &Mutex<World>, view: &str, replay: &str) -> bool {
    let r = c.get(&format!("/v1/views/{view}?limit=100000")).expect("query");
    assert_eq!(r.status, 200, "{replay}: {view}: {}", r.text());
    let answer = r.json();
    let frontier: Vec<u64> = serde_json::from_value(answer["freshness"]["speed_frontier"].clone()).expect("frontier");
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        if let Some(evs) = world.lock().unwrap().acked.as_ref().expect("ledger").before(&frontier) {
            break evs;
        }
        assert!(Instant::now() < deadline, "{replay}: events before frontier {frontier:?} were never acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    };
    let want = &expected_views(&before)[view];
    let got = items_by_key(&answer);
    assert_eq!(&got, want, "{replay}: {view} at frontier {frontier:?} differs from the from-scratch computation");
    !before.is_empty()
}

#[test]
fn storm() {
    let seed = common::seed_from_env("LAMBDAFLOW_STORM_SEED");
    let secs: u64 = common::number_from_env("LAMBDAFLOW_STORM_SECS", 6);
    eprintln!("storm: seed {seed} (replay with LAMBDAFLOW_STORM_SEED={seed}), {secs} s");
    let replay = format!("[storm seed {seed}: replay with LAMBDAFLOW_STORM_SEED={seed}]");
    let tmp = TempDir::new("storm");
    let server = Server::start(tmp.path(), &["--batch-every", "30ms", "--keep", "2"]);
    let world = Arc::new(Mutex::new(World { acked: Some(Acked::new(PARTITIONS)), ..World::default() }));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (world, replay) = (world.clone(), replay.clone());
            let addr = server.addr;
            std::thread::spawn(move || writer(addr, world, seed, w, deadline, replay))
        })
        .collect();
    let mut c = server.client();
    let mut samples = 0u64;
    while Instant::now() < deadline {
        for view in VIEW_NAMES {
            if check_sample(&mut c, &world, view, &replay) {
                samples += 1;
            }
        }
    }
    for w in writers {
        w.join().expect("a writer failed (see its panic above)");
    }
    let world = world.lock().unwrap();
    let acked = world.acked.as_ref().expect("ledger");
    let s = status(&mut c);
    assert_eq!(s["log"]["events"].as_u64(), Some(acked.len() as u64), "{replay}: the log holds every acknowledged event exactly once");
    let ends: Vec<String> = acked.ends().iter().map(u64::to_string).collect();
    common::assert_views_exact(&mut c, &ends.join(","), "&timeout_ms=30000", &acked.events(), &format!("{replay} at the end"));
    let batches = s["batch_run"]["ok"].as_u64().unwrap_or(0);
    assert_eq!(s["batch_run"]["failed"].as_u64(), Some(0), "{replay}: no batch run failed: {}", s["batch_run"]);
    let [new, retries, conflicts, races] = world.counts;
    eprintln!(
        "storm: {new} new requests, {retries} retries, {conflicts} conflicting reuses, {races} races; {} events; \
         {batches} batch runs; {samples} exact samples",
        acked.len()
    );
    assert!(new > 0 && batches > 0 && samples > 0, "{replay}: the storm did not exercise the service");
}
