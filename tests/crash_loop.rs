//! The crash loop: start the real service, drive ingest + batch runs + queries, SIGKILL it at
//! a random moment, restart it, retry every request whose acknowledgement never came (with
//! its `Idempotency-Key`, as a real client does), and check after every restart that
//!
//! * every acknowledged event is present (the log holds at least the acknowledged events and
//!   at most those plus the requests in flight at the kill), and after the retries every
//!   event is present exactly once;
//! * every merged view equals the from-scratch computation over exactly those events;
//! * the server never panicked.
//!
//! The kill moments rotate through: during steady ingest (mid-append, mid-fsync), shortly
//! after `POST /v1/batch` (mid-batch write, mid-handover), and right after a burst.
//!
//! Seeded: the seed is printed at the start and in every failure, and
//! `LAMBDAFLOW_CRASH_SEED=S` replays its decisions (event contents, sizes, kill delays; the
//! machine's timing still varies). `LAMBDAFLOW_CRASH_CYCLES=N` sets the number of cycles
//! (default 20, as in CI); run long by hand with e.g.
//! `LAMBDAFLOW_CRASH_CYCLES=500 cargo test --release --test crash_loop -- --nocapture`.

mod common;

use common::http::{Client, Server};
use common::TempDir;
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::{oracle::expected_views, ShopEvent};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIEWS: [&str; 8] = [
    "revenue_by_day",
    "product_revenue_by_day",
    "inventory_level",
    "customer_spend",
    "customer_segments",
    "daily_unique_viewers",
    "top_products_by_day",
    "conversion_by_product",
];

/// xorshift64*: small, seeded, good enough for choosing delays and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One client request: its key, its events and body, and whether it was acknowledged.
struct Request {
    key: String,
    events: Vec<ShopEvent>,
    body: Vec<u8>,
    acked: bool,
}

fn request(run_seed: u64, id: u64, size: u64) -> Request {
    let events: Vec<ShopEvent> = Generator::new(GenConfig {
        events: size,
        seed: run_seed.wrapping_mul(1_000_003).wrapping_add(id),
        customers: 150,
        products: 25,
        days: 3,
        ..GenConfig::default()
    })
    .collect();
    let mut body = Vec::with_capacity(events.len() * 150);
    for e in &events {
        e.write_ndjson(&mut body);
        body.push(b'\n');
    }
    Request { key: format!("crash-{run_seed}-{id}"), events, body, acked: false }
}

fn post(c: &mut Client, r: &Request) -> std::io::Result<common::http::Response> {
    c.post("/v1/events", &[("Idempotency-Key", &r.key)], &r.body)
}

fn status(c: &mut Client) -> Value {
    let r = c.get("/v1/status").expect("status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Everything the loop knows, shared with the writer thread.
struct World {
    requests: Vec<Request>,
}

#[test]
fn crash_loop() {
    let seed: u64 = std::env::var("LAMBDAFLOW_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7) | 1
    });
    let cycles: u64 = std::env::var("LAMBDAFLOW_CRASH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    eprintln!("crash loop: seed {seed} (replay with LAMBDAFLOW_CRASH_SEED={seed}), {cycles} cycles");
    let replay = format!("[crash loop seed {seed}: replay with LAMBDAFLOW_CRASH_SEED={seed}]");
    let tmp = TempDir::new("crash-loop");
    let mut rng = Rng(seed);
    let world = Arc::new(Mutex::new(World { requests: Vec::new() }));
    let mut next_id = 0u64;
    let mut batches = 0u64;
    let mut kills_mid_batch = 0u64;
    let mut in_flight_stored = 0u64;
    let started = Instant::now();

    for cycle in 0..cycles {
        let server = Server::start(tmp.path(), &["--keep", "2"]);
        let addr = server.addr;
        let mut c = server.client();

        // 1. After the restart: everything acknowledged is there, nothing beyond the
        //    requests that were in flight at the kill.
        let (acked_events, all_events): (u64, u64) = {
            let w = world.lock().unwrap();
            (
                w.requests.iter().filter(|r| r.acked).map(|r| r.events.len() as u64).sum(),
                w.requests.iter().map(|r| r.events.len() as u64).sum(),
            )
        };
        let stored = status(&mut c)["log"]["events"].as_u64().expect("log.events");
        assert!(stored >= acked_events, "{replay} cycle {cycle}: acknowledged events lost: {stored} stored < {acked_events} acknowledged");
        assert!(stored <= all_events, "{replay} cycle {cycle}: {stored} events stored, but only {all_events} were ever sent");
        if stored > acked_events {
            in_flight_stored += 1;
        }

        // 2. Retry every unacknowledged request with its key, as a client would.
        {
            let mut w = world.lock().unwrap();
            for r in w.requests.iter_mut().filter(|r| !r.acked) {
                let resp = post(&mut c, r).expect("retry");
                assert_eq!(resp.status, 200, "{replay} cycle {cycle}: retry of {}: {}", r.key, resp.text());
                r.acked = true;
            }
        }

        // 3. Exactly once, and every merged view exact.
        let w = world.lock().unwrap();
        let everything: Vec<ShopEvent> = w.requests.iter().flat_map(|r| r.events.iter().cloned()).collect();
        drop(w);
        let s = status(&mut c);
        assert_eq!(
            s["log"]["events"].as_u64(),
            Some(everything.len() as u64),
            "{replay} cycle {cycle}: after the retries every event must be stored exactly once"
        );
        let ends: Vec<String> = s["log"]["end"].as_array().expect("ends").iter().map(|e| e.to_string()).collect();
        let expected = expected_views(&everything);
        for view in VIEWS {
            let r = c.get(&format!("/v1/views/{view}?limit=100000&min_frontier={}", ends.join(","))).expect("query");
            assert_eq!(r.status, 200, "{replay} cycle {cycle}: {view}: {}", r.text());
            let got = common::items_by_key(&r.json());
            let want = &expected[view];
            if &got != want {
                let diff = want
                    .iter()
                    .find(|(k, v)| got.get(*k) != Some(v))
                    .map(|(k, v)| format!("key {k}: expected {v}, got {:?}", got.get(k)))
                    .unwrap_or_else(|| "extra keys in the answer".into());
                panic!("{replay} cycle {cycle}: {view} differs from the from-scratch computation: {diff}");
            }
        }

        // 4. Drive ingest (+ queries, + maybe a batch run), then kill at a chosen moment.
        let mode = cycle % 3;
        let stop = Arc::new(AtomicBool::new(false));
        let sizes: Vec<u64> = (0..200).map(|_| 20 + rng.below(400)).collect();
        let first_id = next_id;
        next_id += sizes.len() as u64;
        let writer = {
            let (world, stop) = (world.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                for (i, size) in sizes.into_iter().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = request(seed, first_id + i as u64, size);
                    let (key, body) = (r.key.clone(), r.body.clone());
                    let index = {
                        let mut w = world.lock().unwrap();
                        w.requests.push(r);
                        w.requests.len() - 1
                    };
                    match c.post("/v1/events", &[("Idempotency-Key", &key)], &body) {
                        Ok(resp) if resp.status == 200 => world.lock().unwrap().requests[index].acked = true,
                        Ok(resp) if resp.status == 429 => std::thread::sleep(Duration::from_millis(20)),
                        Ok(resp) => panic!("ingest got HTTP {}: {}", resp.status, resp.text()),
                        Err(_) => break, // the server is gone: this request's fate is unknown
                    }
                }
            })
        };
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut answered = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    match c.get("/v1/views/customer_segments?limit=10") {
                        Ok(r) => {
                            assert!(r.status < 500, "query got HTTP {}: {}", r.status, r.text());
                            answered += 1;
                        }
                        Err(_) => break,
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                answered
            })
        };
        let delay = Duration::from_millis(20 + rng.below(250));
        match mode {
            0 => std::thread::sleep(delay), // steady ingest: mid-append / mid-fsync
            1 => {
                // mid-batch write or mid-handover
                std::thread::sleep(delay / 2);
                let r = c.post("/v1/batch", &[], b"").expect("batch");
                assert_eq!(r.status, 202, "{replay}: {}", r.text());
                batches += 1;
                std::thread::sleep(Duration::from_millis(rng.below(120)));
                if status(&mut c)["batch_run"]["running"].is_object() {
                    kills_mid_batch += 1;
                }
            }
            _ => std::thread::sleep(delay / 4), // right after the first burst
        }
        let log = server.stderr();
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap_or_else(|_| panic!("{replay} cycle {cycle}: the writer failed"));
        reader.join().unwrap_or_else(|_| panic!("{replay} cycle {cycle}: the reader failed"));
        assert!(!log.contains("panicked"), "{replay} cycle {cycle}: the server panicked:\n{log}");
    }

    // A last restart checks the final state once more (with the same steps as a cycle).
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    {
        let mut w = world.lock().unwrap();
        for r in w.requests.iter_mut().filter(|r| !r.acked) {
            assert_eq!(post(&mut c, r).expect("retry").status, 200);
            r.acked = true;
        }
    }
    let w = world.lock().unwrap();
    let total: u64 = w.requests.iter().map(|r| r.events.len() as u64).sum();
    assert_eq!(status(&mut c)["log"]["events"].as_u64(), Some(total), "{replay}: exactly once at the end");
    eprintln!(
        "crash loop: {cycles} kill/restart cycles survived in {:.1}s; {} requests / {total} events acknowledged, 0 lost, \
         0 wrong answers; {batches} batch runs requested ({kills_mid_batch} kills during a run); \
         {in_flight_stored} restarts found an unacknowledged request stored (completed by its retry)",
        started.elapsed().as_secs_f64(),
        w.requests.len()
    );
}
