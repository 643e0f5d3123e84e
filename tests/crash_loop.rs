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
//! Three writers ingest at once (so group commits carry several keys). The kill moments
//! rotate through: steady ingest (mid-append, mid-fsync); a batch run while it computes;
//! a batch run once it has read everything and is writing, publishing or handing over
//! (watched through `/v1/status`); and right after the first burst. After each restart a
//! sample of acknowledged requests is sent again and must be recognised (same positions,
//! `duplicate: true`).
//!
//! Seeded: the seed is printed at the start and in every failure, and
//! `LAMBDAFLOW_CRASH_SEED=S` replays its decisions (event contents, sizes, kill delays; the
//! machine's timing still varies). `LAMBDAFLOW_CRASH_CYCLES=N` sets the number of cycles
//! (default 20, as in CI); run long by hand with e.g.
//! `LAMBDAFLOW_CRASH_CYCLES=500 cargo test --release --test crash_loop -- --nocapture`.

mod common;

use common::http::{Client, Server};
use common::{Rng, TempDir};
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::ShopEvent;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One client request: its key, its events and body, and its acknowledgement if it got one.
struct Request {
    key: String,
    events: Vec<ShopEvent>,
    body: Vec<u8>,
    ack: Option<Value>,
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
    Request { key: format!("crash-{run_seed}-{id}"), events, body, ack: None }
}

fn post(c: &mut Client, r: &Request) -> std::io::Result<common::http::Response> {
    c.post("/v1/events", &[("Idempotency-Key", &r.key)], &r.body)
}

/// Retries every unacknowledged request with its key; then checks that the log holds every
/// event exactly once and that every merged view equals the from-scratch computation.
fn settle_and_check(c: &mut Client, requests: &mut [Request], replay: &str, when: &str) {
    for r in requests.iter_mut().filter(|r| r.ack.is_none()) {
        let resp = post(c, r).expect("retry");
        assert_eq!(resp.status, 200, "{replay} {when}: retry of {}: {}", r.key, resp.text());
        r.ack = Some(resp.json());
    }
    let everything: Vec<ShopEvent> = requests.iter().flat_map(|r| r.events.iter().cloned()).collect();
    let s = common::http::status(c);
    assert_eq!(s["log"]["events"].as_u64(), Some(everything.len() as u64), "{replay} {when}: every event must be stored exactly once");
    let ends: Vec<String> = s["log"]["end"].as_array().expect("ends").iter().map(|e| e.to_string()).collect();
    common::assert_views_exact(c, &ends.join(","), "", &everything, &format!("{replay} {when}"));
}

/// Waits until the server's stderr reader has seen the end of the stream (the process is
/// gone), so a panic message printed just before the kill is not missed.
fn final_stderr(log: &Arc<Mutex<String>>) -> String {
    std::thread::sleep(Duration::from_millis(100));
    log.lock().unwrap().clone()
}

const WRITERS: u64 = 3;

#[test]
fn crash_loop() {
    let seed = common::seed_from_env("LAMBDAFLOW_CRASH_SEED");
    let cycles: u64 = common::number_from_env("LAMBDAFLOW_CRASH_CYCLES", 20);
    eprintln!("crash loop: seed {seed} (replay with LAMBDAFLOW_CRASH_SEED={seed}), {cycles} cycles");
    let replay = format!("[crash loop seed {seed}: replay with LAMBDAFLOW_CRASH_SEED={seed}]");
    let tmp = TempDir::new("crash-loop");
    let mut rng = Rng(seed);
    let world: Arc<Mutex<Vec<Request>>> = Arc::new(Mutex::new(Vec::new()));
    let mut next_id = 0u64;
    let (mut batches, mut kills_computing, mut kills_writing, mut in_flight_stored, mut replays_checked) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();

    for cycle in 0..cycles {
        let server = Server::start(tmp.path(), &["--keep", "2"]);
        let addr = server.addr;
        let mut c = server.client();
        let when = format!("cycle {cycle}");

        // 1. After the restart: everything acknowledged is there, nothing beyond the
        //    requests that were in flight at the kill.
        let (acked_events, all_events): (u64, u64) = {
            let w = world.lock().unwrap();
            let acked = w.iter().filter(|r| r.ack.is_some()).map(|r| r.events.len() as u64).sum();
            (acked, w.iter().map(|r| r.events.len() as u64).sum())
        };
        let stored = common::http::status(&mut c)["log"]["events"].as_u64().expect("log.events");
        assert!(stored >= acked_events, "{replay} {when}: acknowledged events lost: {stored} stored < {acked_events} acknowledged");
        assert!(stored <= all_events, "{replay} {when}: {stored} events stored, but only {all_events} were ever sent");
        if stored > acked_events {
            in_flight_stored += 1;
        }

        // 2. Acknowledged requests sent again are recognised: same positions, nothing appended.
        {
            let w = world.lock().unwrap();
            let acked: Vec<&Request> = w.iter().filter(|r| r.ack.is_some()).collect();
            for _ in 0..acked.len().min(5) {
                let r = acked[rng.below(acked.len() as u64) as usize];
                let resp = post(&mut c, r).expect("resend");
                assert_eq!(resp.status, 200, "{replay} {when}: resend of {}: {}", r.key, resp.text());
                let (got, first) = (resp.json(), r.ack.as_ref().expect("acked"));
                assert_eq!(got["positions"], first["positions"], "{replay} {when}: resend of {} got other positions", r.key);
                assert_eq!(got["duplicate"], true, "{replay} {when}: resend of {} was appended again", r.key);
                replays_checked += 1;
            }
        }

        // 3. Retry every unacknowledged request with its key; exactly once; every view exact.
        settle_and_check(&mut c, &mut world.lock().unwrap(), &replay, &when);

        // 4. Drive ingest from several writers (so group commits carry several keys), queries,
        //    maybe a batch run; then kill at a chosen moment.
        let mode = cycle % 4;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let sizes: Vec<u64> = (0..80).map(|_| 20 + rng.below(300)).collect();
                let first_id = next_id;
                next_id += sizes.len() as u64;
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
                            w.push(r);
                            w.len() - 1
                        };
                        match c.post("/v1/events", &[("Idempotency-Key", &key)], &body) {
                            Ok(resp) if resp.status == 200 => world.lock().unwrap()[index].ack = Some(resp.json()),
                            Ok(resp) if resp.status == 429 => std::thread::sleep(Duration::from_millis(20)),
                            Ok(resp) => panic!("ingest got HTTP {}: {}", resp.status, resp.text()),
                            Err(_) => break, // the server is gone: this request's fate is unknown
                        }
                    }
                })
            })
            .collect();
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    match c.get("/v1/views/customer_segments?limit=10") {
                        Ok(r) => assert!(r.status < 500, "query got HTTP {}: {}", r.status, r.text()),
                        Err(_) => break,
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let delay = Duration::from_millis(20 + rng.below(200));
        match mode {
            0 => std::thread::sleep(delay), // steady ingest: mid-append / mid-fsync
            1 | 2 => {
                // A batch run: kill while it computes (mode 1), or once it has read everything
                // and is writing, publishing or handing over (mode 2).
                std::thread::sleep(delay / 2);
                let r = c.post("/v1/batch", &[], b"").expect("batch");
                assert_eq!(r.status, 202, "{replay}: {}", r.text());
                batches += 1;
                let deadline = Instant::now() + Duration::from_secs(20);
                let extra = Duration::from_millis(rng.below(15));
                loop {
                    let s = common::http::status(&mut c);
                    let running = &s["batch_run"]["running"];
                    if running.is_object() {
                        let (done, total) = (running["done"].as_u64().unwrap_or(0), running["total"].as_u64().unwrap_or(u64::MAX));
                        if mode == 1 {
                            std::thread::sleep(extra);
                            kills_computing += 1;
                            break;
                        }
                        if done >= total {
                            kills_writing += 1;
                            break;
                        }
                    } else if s["batch_run"]["last"].is_object()
                        && s["batch_run"]["ok"].as_u64().unwrap_or(0) + s["batch_run"]["failed"].as_u64().unwrap_or(0) > 0
                    {
                        break; // it finished before we saw the moment: an ordinary kill
                    }
                    assert!(Instant::now() < deadline, "{replay} {when}: the batch run never started: {s}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            _ => std::thread::sleep(delay / 4), // right after the first burst
        }
        let log = server.log.clone();
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap_or_else(|_| panic!("{replay} {when}: a writer failed"));
        }
        reader.join().unwrap_or_else(|_| panic!("{replay} {when}: the reader failed"));
        let log = final_stderr(&log);
        assert!(!log.contains("panicked"), "{replay} {when}: the server panicked:\n{log}");
    }

    // A last restart runs the same checks once more.
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    settle_and_check(&mut c, &mut world.lock().unwrap(), &replay, "at the end");
    let w = world.lock().unwrap();
    let total: u64 = w.iter().map(|r| r.events.len() as u64).sum();
    if cycles >= 20 {
        assert!(kills_computing + kills_writing > 0, "{replay}: no kill landed during a batch run");
    }
    eprintln!(
        "crash loop: {cycles} kill/restart cycles survived in {:.1}s; {} requests / {total} events acknowledged, 0 lost, \
         0 wrong answers; {batches} batch runs, killed {kills_computing} times while computing and {kills_writing} times \
         while writing/publishing/handing over; {in_flight_stored} restarts found an unacknowledged request stored \
         (completed by its retry); {replays_checked} resent acknowledged requests recognised",
        started.elapsed().as_secs_f64(),
        w.len()
    );
}
