//! Overload: ingest faster than the speed layer applies events.
//!
//! `lambdaflow serve --max-lag 20000` is blasted by 4 threads posting pre-built NDJSON bodies
//! of 1,000–5,000 events, back to back, for 5 s, while a reader queries and a monitor samples
//! the server's resident memory and the speed layer's lag. Backpressure must hold the lag
//! near `--max-lag` (ingest answers 429 with `Retry-After`, or acks slow down), nothing may
//! be a 5xx, memory must stay bounded, queries must keep answering, and once the blast stops
//! the speed layer must catch up and the merged answers must equal the from-scratch oracle
//! over exactly the acknowledged events.

mod common;

use common::http::{Client, Server};
use common::ndjson;
use common::TempDir;
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::{oracle::expected_views, ShopEvent};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_LAG: u64 = 20_000;
const WRITERS: usize = 4;
const BODIES_PER_WRITER: usize = 8;
const BLAST: Duration = Duration::from_secs(5);
const PARTITIONS: u32 = 4;

/// The largest body, in events.
const BODY_EVENTS_MAX: u64 = 5_000;

/// Resident memory the server may use at any time during the blast. What it holds: the
/// engine and runtime (tens of MiB), the speed layer's state for at most ~25,000 keys
/// (5,000 customers, 500 products, 30 days; a few MiB), at most 4 bodies in flight (one per
/// writer, ≤ 600 kB each, times 2–3 while parsed), the query cache (≤ 64 MiB by design), and
/// whatever the speed layer buffers while it is behind, which --max-lag bounds to about
/// 40,000 events (20,000 + one 5,000-event body per writer admitted at the limit), a few MiB
/// even at a kilobyte per event. 512 MiB is several times all of that; an unbounded queue
/// of the ~1M events a 5 s blast offers, or a leak per request, goes past it.
const RSS_MAX_BYTES: u64 = 512 << 20;

/// The lag may overshoot --max-lag by the bodies admitted while it was just under it.
const LAG_BOUND: u64 = MAX_LAG + WRITERS as u64 * BODY_EVENTS_MAX;

fn body_events(writer: usize, i: usize) -> Vec<ShopEvent> {
    let n = 1_000 + ((writer * BODIES_PER_WRITER + i) as u64 * 1_237) % (BODY_EVENTS_MAX - 1_000 + 1);
    let seed = 1_000 + (writer * BODIES_PER_WRITER + i) as u64;
    Generator::new(GenConfig { events: n, seed, customers: 5_000, products: 500, days: 30, ..GenConfig::default() }).collect()
}

/// An ingest answer: status, whether it had `Retry-After`, body.
struct Answer {
    status: u16,
    retry_after: bool,
    body: Vec<u8>,
}

/// POSTs `body` to /v1/events on a fresh connection, writing from a helper thread while the
/// answer is read: a 429 comes before the body is read, and the server then closes the
/// connection, so a client that writes the whole body first would see a broken pipe instead.
fn post_events(addr: SocketAddr, body: &[u8]) -> std::io::Result<Answer> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut reader = BufReader::new(s.try_clone()?);
    std::thread::scope(|scope| {
        let w = s.try_clone()?;
        scope.spawn(move || {
            let _ = (&w).write_all(head.as_bytes()).and_then(|_| (&w).write_all(body));
        });
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        let (mut len, mut retry_after) = (0usize, false);
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                retry_after |= k.eq_ignore_ascii_case("retry-after") && v.trim() == "1";
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        Ok(Answer { status, retry_after, body })
    })
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Every acknowledged event at its (partition, offset).
#[derive(Default)]
struct Acked(Vec<Vec<Option<ShopEvent>>>);

impl Acked {
    /// Records one request's events from its ack: per partition, in input order.
    fn record(&mut self, batch: &[ShopEvent], ack: &Value) {
        if self.0.is_empty() {
            self.0 = vec![Vec::new(); PARTITIONS as usize];
        }
        let mut by_partition: Vec<Vec<&ShopEvent>> = vec![Vec::new(); PARTITIONS as usize];
        for e in batch {
            by_partition[lambdaflow_engine::partition_of(lambdaflow_operators::Event::partition_key(e), PARTITIONS) as usize].push(e);
        }
        for r in ack["positions"].as_array().expect("positions") {
            let p = r["partition"].as_u64().expect("partition") as usize;
            let (from, to) = (r["from"].as_u64().expect("from") as usize, r["to"].as_u64().expect("to") as usize);
            let evs = &by_partition[p];
            assert_eq!(evs.len(), to - from, "ack range {r} vs {} events of partition {p}", evs.len());
            let slots = &mut self.0[p];
            if slots.len() < to {
                slots.resize(to, None);
            }
            for (i, e) in evs.iter().enumerate() {
                assert!(slots[from + i].is_none(), "offset {} of partition {p} acknowledged twice", from + i);
                slots[from + i] = Some(*(*e));
            }
        }
    }
}

#[derive(Default)]
struct WriterReport {
    ok: u64,
    throttled: u64,
    throttled_without_retry_after: u64,
    other: Vec<String>,
    max_ack: Duration,
}

// overload_backpressure_bounds_lag_and_memory_and_stays_exact proves the service degrades
// gracefully under more ingest than the speed layer applies: ingest is pushed back (429
// with Retry-After, or slower acks) instead of queueing without bound, so the speed layer's
// lag never exceeds --max-lag by more than the requests admitted at the limit; no answer is a
// 5xx; resident memory stays under RSS_MAX_BYTES; queries and status keep answering within
// 3 s; and afterwards the lag drains to 0 and every view equals the oracle over exactly the
// acknowledged events (no acknowledged event lost, nothing unacknowledged stored).
#[test]
fn overload_backpressure_bounds_lag_and_memory_and_stays_exact() {
    let tmp = TempDir::new("overload");
    let server = Server::start(tmp.path(), &["--allow-host", "t", "--max-lag", &MAX_LAG.to_string()]);
    let (addr, pid) = (server.addr, server.child.id());
    let baseline = rss_bytes(pid).expect("read VmRSS");

    let bodies: Arc<Vec<Vec<(Vec<ShopEvent>, Vec<u8>)>>> = Arc::new(
        (0..WRITERS)
            .map(|w| {
                (0..BODIES_PER_WRITER)
                    .map(|i| {
                        let evs = body_events(w, i);
                        let body = ndjson(&evs);
                        (evs, body)
                    })
                    .collect()
            })
            .collect(),
    );
    let offered: u64 = bodies.iter().flatten().map(|(e, _)| e.len() as u64).sum();

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(baseline));
    let max_lag = Arc::new(AtomicU64::new(0));

    // Memory and lag monitor.
    let monitor = {
        let (stop, max_rss, max_lag) = (stop.clone(), max_rss.clone(), max_lag.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                }
                if let Ok(r) = c.get("/v1/status") {
                    if r.status == 200 {
                        if let Some(lag) = r.json()["freshness"]["speed_lag_events"].as_u64() {
                            max_lag.fetch_max(lag, Ordering::Relaxed);
                        }
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    // A reader: range, point and status queries must keep answering within 3 s.
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || -> (u64, Duration, Vec<String>) {
            let mut c = Client::new(addr);
            let (mut n, mut worst, mut bad) = (0u64, Duration::ZERO, Vec::new());
            let paths = [
                "/v1/views/revenue_by_day?limit=1000",
                "/v1/views/customer_spend/17",
                "/v1/status",
                "/v1/views/top_products_by_day?limit=5",
            ];
            while !stop.load(Ordering::Relaxed) {
                for path in paths {
                    let t = Instant::now();
                    match c.get(path) {
                        Ok(r) if r.status == 200 || (r.status == 404 && path.contains("/17")) => {}
                        Ok(r) => bad.push(format!("GET {path}: {} {}", r.status, r.text())),
                        Err(e) => bad.push(format!("GET {path}: {e}")),
                    }
                    worst = worst.max(t.elapsed());
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (n, worst, bad)
        })
    };

    // The blast.
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (bodies, acked) = (bodies.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut rep = WriterReport::default();
                let mut i = 0;
                while started.elapsed() < BLAST {
                    let (evs, body) = &bodies[w][i % BODIES_PER_WRITER];
                    let t = Instant::now();
                    match post_events(addr, body) {
                        Ok(r) if r.status == 200 => {
                            rep.max_ack = rep.max_ack.max(t.elapsed());
                            let ack: Value = serde_json::from_slice(&r.body).expect("ack is JSON");
                            assert_eq!(ack["accepted"].as_u64(), Some(evs.len() as u64), "{ack}");
                            acked.lock().unwrap().record(evs, &ack);
                            rep.ok += 1;
                        }
                        Ok(r) if r.status == 429 => {
                            rep.throttled += 1;
                            if !r.retry_after {
                                rep.throttled_without_retry_after += 1;
                            }
                            // Honour Retry-After a little (not the full second: keep pushing).
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Ok(r) => rep.other.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
                        Err(e) => rep.other.push(format!("error: {e}")),
                    }
                    i += 1;
                }
                rep
            })
        })
        .collect();
    let reports: Vec<WriterReport> = writers.into_iter().map(|w| w.join().expect("writer")).collect();
    let blast = started.elapsed();

    // Catch-up: the lag drains to 0 with the log's end as the frontier.
    let mut c = Client::new(addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let end: Vec<u64> = loop {
        let s = c.get("/v1/status").expect("status").json();
        let end: Vec<u64> = serde_json::from_value(s["log"]["end"].clone()).expect("log.end");
        let frontier: Vec<u64> = serde_json::from_value(s["freshness"]["speed_frontier"].clone()).expect("frontier");
        if s["freshness"]["speed_lag_events"] == 0 && frontier == end {
            break end;
        }
        assert!(Instant::now() < deadline, "the speed layer did not catch up within 60 s: {}", s["freshness"]);
        std::thread::sleep(Duration::from_millis(50));
    };
    let catch_up = blast.max(started.elapsed()) - blast;
    stop.store(true, Ordering::Relaxed);
    let samples = monitor.join().expect("monitor");
    let (queries, worst_query, bad_queries) = reader.join().expect("reader");

    let ok: u64 = reports.iter().map(|r| r.ok).sum();
    let throttled: u64 = reports.iter().map(|r| r.throttled).sum();
    let max_ack = reports.iter().map(|r| r.max_ack).max().unwrap_or_default();
    let acked = Arc::try_unwrap(acked).ok().expect("one owner").into_inner().unwrap();
    let acked_events: u64 = acked.0.iter().flatten().filter(|e| e.is_some()).count() as u64;
    eprintln!(
        "overload: {ok} requests acknowledged ({acked_events} events) and {throttled} throttled in {:.1} s (bodies offered: {offered} events), \
         slowest ack {:?}; lag peaked at {} (bound {LAG_BOUND}); RSS {} MiB → peak {} MiB over {samples} samples (bound {} MiB); \
         {queries} queries, slowest {worst_query:?}; caught up {:.1} s after the blast",
        blast.as_secs_f64(),
        max_ack,
        max_lag.load(Ordering::Relaxed),
        baseline >> 20,
        max_rss.load(Ordering::Relaxed) >> 20,
        RSS_MAX_BYTES >> 20,
        catch_up.as_secs_f64(),
    );

    let other: Vec<&String> = reports.iter().flat_map(|r| &r.other).collect();
    assert!(other.is_empty(), "ingest answers other than 200/429 (5xx, errors): {other:?}");
    assert_eq!(reports.iter().map(|r| r.throttled_without_retry_after).sum::<u64>(), 0, "a 429 without Retry-After");
    assert!(ok > 0, "nothing was acknowledged");
    assert!(throttled > 0, "no backpressure showed: no 429 (the slowest ack took {max_ack:?}; was the load too light?)");
    assert!(max_lag.load(Ordering::Relaxed) <= LAG_BOUND, "the lag reached {} (bound {LAG_BOUND})", max_lag.load(Ordering::Relaxed));
    assert!(max_rss.load(Ordering::Relaxed) < RSS_MAX_BYTES, "RSS peaked at {} MiB", max_rss.load(Ordering::Relaxed) >> 20);
    assert!(bad_queries.is_empty(), "queries failed during the blast: {:?}", &bad_queries[..bad_queries.len().min(5)]);
    assert!(worst_query < Duration::from_secs(3), "a query took {worst_query:?} during the blast");

    // Exactly the acknowledged events are in the log, and the views equal the oracle over them.
    let all: Vec<ShopEvent> = end
        .iter()
        .enumerate()
        .flat_map(|(p, &e)| {
            let slots = acked.0.get(p).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(slots.len() as u64, e, "partition {p}: the log ends at {e}, acknowledgements at {}", slots.len());
            slots
                .iter()
                .enumerate()
                .map(move |(o, s)| (*s).unwrap_or_else(|| panic!("partition {p} offset {o} stored but never acknowledged")))
        })
        .collect();
    assert_eq!(all.len() as u64, acked_events);
    let expected = expected_views(&all);
    let mf = end.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    for (view, want) in &expected {
        let r = c.get(&format!("/v1/views/{view}?limit=100000&min_frontier={mf}")).expect("query");
        assert_eq!(r.status, 200, "{view}: {}", r.text());
        let v = r.json();
        let got = common::items_by_key(&v);
        assert!(got.len() < 100_000, "{view}: the answer may be truncated");
        assert_eq!(got.len(), want.len(), "{view}: key count");
        assert!(got == *want, "{view}: merged answer differs from the oracle over the acknowledged events");
    }
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

// concurrent_uploads_never_wait_for_each_other proves the in-flight budget cannot deadlock:
// with a budget of 3 MiB, 8 clients upload 1 MiB bodies at once, each in 16 KiB pieces. A
// request that holds part of the budget never waits for more (it gives everything back with
// a 429), so every attempt is answered within seconds, and with retries every body is stored
// exactly once.
#[test]
fn concurrent_uploads_never_wait_for_each_other() {
    let tmp = common::TempDir::new("overload-budget");
    let server = common::http::Server::start(tmp.path(), &["--allow-host", "t", "--max-body", "1200000", "--max-inflight", "3000000"]);
    let addr = server.addr;
    let mut body = Vec::new();
    let mut n = 0u64;
    let evs: Vec<ShopEvent> = Generator::new(GenConfig { events: 20_000, seed: 77, ..GenConfig::default() }).collect();
    for e in &evs {
        if body.len() > 1_000_000 {
            break;
        }
        e.write_ndjson(&mut body);
        body.push(b'\n');
        n += 1;
    }
    let body = Arc::new(body);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let body = body.clone();
            std::thread::spawn(move || -> (u32, u32) {
                let (mut throttled, mut attempts) = (0, 0);
                loop {
                    attempts += 1;
                    let mut s = TcpStream::connect(addr).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                    let head = format!(
                        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nIdempotency-Key: upload-{i}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let t = Instant::now();
                    let _ = s.write_all(head.as_bytes());
                    for piece in body.chunks(16 << 10) {
                        if s.write_all(piece).is_err() {
                            break; // answered early (429) and closed
                        }
                    }
                    let mut resp = Vec::new();
                    let _ = s.read_to_end(&mut resp);
                    let text = String::from_utf8_lossy(&resp).to_string();
                    assert!(t.elapsed() < Duration::from_secs(10), "an upload attempt took {:?}", t.elapsed());
                    if text.starts_with("HTTP/1.1 200") {
                        return (throttled, attempts);
                    }
                    assert!(text.starts_with("HTTP/1.1 429"), "upload {i}: {}", text.lines().next().unwrap_or(""));
                    throttled += 1;
                    assert!(attempts < 200, "upload {i} never got through");
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    let results: Vec<(u32, u32)> = handles.into_iter().map(|h| h.join().expect("uploader")).collect();
    let mut c = server.client();
    let s = c.get("/v1/status").expect("status").json();
    assert_eq!(s["log"]["events"].as_u64(), Some(8 * n), "every body stored exactly once ({results:?})");
    eprintln!("8 concurrent 1 MB uploads against a 3 MB budget: (429s, attempts) per client {results:?}");
}

// ---------------------------------------------------------------------------------------------
// Connections: slow request heads, connection bounds, the file-descriptor reserve

/// Opens a connection and sends `bytes` (perhaps nothing); the stream reads with `timeout`.
fn open_with(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    Ok(s)
}

/// Reads until the server closes; `Err` if it is still open when the read times out.
fn read_until_closed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

fn status_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().next().unwrap_or("").to_string()
}

// half_sent_request_heads_are_closed proves a slowloris client holds nothing for long: with
// --header-timeout 1s, connections that send half a request line, a request line and part
// of the headers, or nothing at all are closed by the server (the reads below give up only
// after 30 s), while other clients are served meanwhile.
#[test]
fn half_sent_request_heads_are_closed() {
    let tmp = TempDir::new("overload-heads");
    let server = Server::start(tmp.path(), &["--allow-host", "t", "--header-timeout", "1s"]);
    let partial: [&[u8]; 4] = [b"GET /v1/sta", b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Le", b"", b"G"];
    let mut held: Vec<(usize, TcpStream)> = Vec::new();
    for round in 0..10 {
        for (i, p) in partial.iter().enumerate() {
            held.push((i, open_with(server.addr, p, Duration::from_secs(30)).unwrap_or_else(|e| panic!("connect {round}/{i}: {e}"))));
        }
    }
    let mut c = server.client();
    assert_eq!(c.get("/v1/status").expect("status").status, 200, "served while slow heads are open");
    for (i, s) in &mut held {
        let got = read_until_closed(s).unwrap_or_else(|e| panic!("a connection sending {:?} is still open: {e}", partial[*i]));
        let line = status_line(&got);
        assert!(got.is_empty() || line.contains(" 408 ") || line.contains(" 400 "), "{:?} was answered {line:?}", partial[*i]);
    }
    // A complete request on a kept-alive connection is still answered after the timeout.
    let mut c = server.client();
    assert_eq!(c.get("/v1/status").expect("status").status, 200);
}

// connections_beyond_the_peer_bound_are_refused proves one address cannot hold more than
// --max-connections-per-ip connections: the next is answered at once with a 429 naming the
// flag (and closed), the held ones are still served, and a place closed by the client is
// free again. (That another address is still let in at the same time is proved by the
// engine's serve::conn tests: the test machine has one loopback source address.)
#[test]
fn connections_beyond_the_peer_bound_are_refused() {
    const PER_IP: usize = 10;
    let tmp = TempDir::new("overload-peers");
    let server =
        Server::start(tmp.path(), &["--allow-host", "t", "--max-connections-per-ip", &PER_IP.to_string(), "--header-timeout", "60s"]);
    let mut held: Vec<TcpStream> = (0..PER_IP).map(|_| open_with(server.addr, b"", Duration::from_secs(30)).expect("connect")).collect();
    for _ in 0..3 {
        let mut extra = open_with(server.addr, b"", Duration::from_secs(30)).expect("connect");
        let got = read_until_closed(&mut extra).expect("the refusal comes at once and closes");
        let text = String::from_utf8_lossy(&got);
        assert!(status_line(&got).contains(" 429 "), "{text}");
        assert!(text.contains("--max-connections-per-ip") && text.contains(&PER_IP.to_string()), "{text}");
    }
    // The held connections are served.
    for s in held.iter_mut().take(3) {
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("read");
        assert!(line.contains(" 200 "), "{line}");
    }
    // Closing one frees its place (the server notices the close asynchronously: retry).
    drop(held.pop());
    let served = (0..100).any(|_| {
        let mut s = open_with(server.addr, b"GET /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(30))
            .expect("connect");
        let ok = read_until_closed(&mut s).is_ok_and(|got| status_line(&got).contains(" 200 "));
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(served, "a freed place was never given to a new connection");
    // The refusals are counted (once the held connections are closed, there is room to ask).
    drop(held);
    let metrics = (0..100)
        .find_map(|_| match server.client().get("/metrics") {
            Ok(r) if r.status == 200 => Some(r.text()),
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        })
        .expect("metrics answer once the held connections are closed");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lambdaflow_http_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal counter:\n{metrics}"));
    assert!(refused >= 3, "{refused} refusals counted:\n{metrics}");
}

// a_connection_flood_does_not_starve_batch_runs proves the file-descriptor reserve: under an
// open-files limit of 256, a client opens 300 connections that each send half a request
// line and holds them. The service takes at most half the limit less a reserve of them and
// refuses the rest, so scheduled batch runs keep publishing meanwhile (none fails with "Too
// many open files"); once the held connections time out, ingest and status answer again and
// the batch runs show no failure.
#[test]
fn a_connection_flood_does_not_starve_batch_runs() {
    let tmp = TempDir::new("overload-fds");
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=256:256", "--", common::bin(), "--data"]).arg(tmp.path()).args([
        "-w",
        "2",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--allow-host",
        "t",
        "--max-connections-per-ip",
        "1000",
        "--header-timeout",
        "5s",
        "--batch-every",
        "1s",
    ]);
    let server = Server::spawn(cmd);
    let mut c = server.client();
    let events: Vec<ShopEvent> = Generator::new(GenConfig { events: 2_000, seed: 7, ..GenConfig::default() }).collect();
    assert_eq!(c.post("/v1/events", &[], &ndjson(&events)).expect("post").status, 200);
    drop(c);
    let mark = server.stderr().len();
    let flood: Vec<std::io::Result<TcpStream>> =
        (0..300).map(|_| open_with(server.addr, b"GET /v1/sta", Duration::from_secs(30))).collect();
    let connected = flood.iter().filter(|s| s.is_ok()).count();
    // Two batch runs publish after the flood started (bounded wait on the server's log).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = server.stderr();
        let after = &log[mark..];
        assert!(!after.contains("batch run failed") && !after.contains("Too many open files"), "a batch run starved:\n{after}");
        if after.matches("published and handed over").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no batch run published during the flood ({connected} of 300 connected):\n{after}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = flood
        .into_iter()
        .flatten()
        .map(|mut s| read_until_closed(&mut s).map(|got| status_line(&got).contains(" 503 ")).unwrap_or(false))
        .filter(|r| *r)
        .count();
    assert!(refused >= 300 - 128, "only {refused} of 300 connections were refused under a limit of 256 open files");
    let mut c = server.client();
    let more: Vec<ShopEvent> = Generator::new(GenConfig { events: 100, seed: 8, ..GenConfig::default() }).collect();
    assert_eq!(c.post("/v1/events", &[], &ndjson(&more)).expect("post").status, 200);
    let s = c.get("/v1/status").expect("status").json();
    assert_eq!(s["batch_run"]["failed"], 0, "{s}");
    assert!(server.stderr().contains("lambdaflow serve: batch"), "{}", server.stderr());
}

// answers_nobody_reads_are_dropped_after_the_write_timeout proves a client that asks for
// large answers and never reads them holds nothing for long: with --write-timeout 1s and
// --max-connections-per-ip 1, a client pipelines enough requests for a large view (about
// 24 MiB of answers, beyond what the kernel buffers on loopback) and reads only the start of
// the first. The server's writes stall; it closes the connection, so its place comes back (a
// second connection is served again, where it got 429 while the first was held) and what the
// client got was cut short of the answers it asked for.
#[test]
fn answers_nobody_reads_are_dropped_after_the_write_timeout() {
    let tmp = TempDir::new("overload-write-timeout");
    let file = tmp.path().join("events.ndjson");
    common::gen_file(&file, 20_000, 11, "ndjson");
    let data = tmp.path().join("data");
    common::run_ok(&data, &["ingest", file.to_str().expect("utf-8 path")]);
    let server =
        Server::start(&data, &["--allow-host", "t", "--max-connections-per-ip", "1", "--header-timeout", "60s", "--write-timeout", "1s"]);
    let mut c = server.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get("/v1/status").expect("status").json()["freshness"]["speed_lag_events"] != 0 {
        assert!(Instant::now() < deadline, "the speed layer did not catch up within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    const PATH: &str = "/v1/views/customer_spend?limit=100000";
    let one = c.get(PATH).expect("view").body.len();
    drop(c);
    assert!(one > 10_000, "the view's answer is only {one} bytes");
    let n = ((24 << 20) / one + 1).min(2_000);
    let request = format!("GET {PATH} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(n);
    // The client above may still hold the one place for a moment (the server notices its
    // close asynchronously): retry until the stalling client is served.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stalled = loop {
        let mut s = open_with(server.addr, request.as_bytes(), Duration::from_secs(10)).expect("connect");
        let mut start = [0u8; 12];
        s.read_exact(&mut start).expect("an answer starts");
        if &start == b"HTTP/1.1 200" {
            break s;
        }
        assert!(Instant::now() < deadline, "never served: {}", String::from_utf8_lossy(&start));
        std::thread::sleep(Duration::from_millis(100));
    };
    // While it is held, this address gets no more; once it is closed, it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    loop {
        let mut s = open_with(server.addr, b"GET /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(10))
            .expect("connect");
        let line = status_line(&read_until_closed(&mut s).expect("answered and closed"));
        if line.contains(" 200 ") {
            break;
        }
        assert!(line.contains(" 429 "), "{line}");
        refused += 1;
        assert!(Instant::now() < deadline, "the stalled connection still holds its place after 30 s ({refused} refusals)");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = read_until_closed(&mut stalled).expect("the server closed the stalled connection");
    assert!(got.len() + 12 < n * one, "the stalled client got all {} bytes it asked for", got.len() + 12);
}

// a_refusal_is_seen_after_a_large_request_head proves a refused client sees the refusal even
// when it sent a large request head at once: with --max-connections-per-ip 1 and one
// connection held, a client that sends a 12 KiB head (a big cookie) and then reads gets the
// 429 answer, not a reset that discards it.
#[test]
fn a_refusal_is_seen_after_a_large_request_head() {
    let tmp = TempDir::new("overload-refusal-head");
    let server = Server::start(tmp.path(), &["--allow-host", "t", "--max-connections-per-ip", "1", "--header-timeout", "60s"]);
    let _held = open_with(server.addr, b"", Duration::from_secs(30)).expect("connect");
    let head = format!("GET /v1/status HTTP/1.1\r\nHost: t\r\nCookie: c={}\r\n\r\n", "x".repeat(12 << 10));
    for attempt in 0..5 {
        let mut s = open_with(server.addr, head.as_bytes(), Duration::from_secs(30)).expect("connect");
        let mut got = Vec::new();
        let outcome = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(outcome.is_ok(), "attempt {attempt}: {outcome:?} after {} bytes: {text}", got.len());
        assert!(status_line(&got).contains(" 429 ") && text.contains("--max-connections-per-ip"), "attempt {attempt}: {text}");
    }
}
