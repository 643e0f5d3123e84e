//! The service benchmark: `lambdaflow serve` in its own process, loaded over loopback HTTP
//! by this process.
//!
//! `cargo bench --bench serve -- [--history N] [--ingest-events N] [--connections C]
//!  [--rate EVENTS_PER_S] [--seconds S] [--query-connections Q] [--workers W] [--partitions P]
//!  [--speed-processes N] [--batch-processes N] [--http-nice N] [--pipeline N]
//!  [--keys-per-request K] [--matrix] [--mode-list 1x1,16x1,1x16] [--query-rate R]
//!  [--client-nice N]`
//!
//! `--matrix` runs the service matrix: for 1 and 2 workers (one server each), phases 1 and
//! 2 once, then phase 3 with Q = 1, 2, 8 and 32 query connections; it prints one table.
//! `--query-list 1,2,8,32` and `--worker-list 1,2` choose other rows.
//!
//! How a query connection asks (the table's `mode` column; default `1x1`, one request per
//! round trip, as in figures before these flags): `--pipeline N` writes N requests before
//! reading the N answers (HTTP/1.1 pipelining), `--keys-per-request K` asks K keys of one
//! view per request (`GET /v1/views/{view}?key=..&key=..`; K = 1 uses the one-key path);
//! `--mode-list NxK,...` runs each mode in turn for every Q (back to back on one server).
//! Requests/s and keys answered/s are both reported; latency is per round trip.
//! `--query-rate R` paces the Q connections to about R requests/s in all (the default, 0,
//! asks as fast as answers come): freshness at a given query load, not at saturation.
//! `--client-nice N` runs the query clients N nice levels down (default 0): on this
//! machine they share the server's cores, which clients on other machines would not.
//!
//! 1. history: N events posted in requests of 1,000, then a batch run (so queries merge a
//!    batch view with the speed layer);
//! 2. ingest: `--ingest-events` more, in requests of 1,000 events each with an
//!    Idempotency-Key, from C connections as fast as the server acknowledges: durable events/s;
//!    then the time until the speed layer has caught up with them (its lag is 0), so phase 3
//!    measures freshness, not a backlog left by phase 2;
//! 3. mixed: one connection ingests at `--rate` events/s (requests of 1,000); after each ack
//!    it asks for a merged answer with `min_frontier` = the ack's positions and records the
//!    ack-to-visible time; meanwhile Q connections issue merged point queries on random keys
//!    (revenue_by_day, customer_spend, inventory_level, product_revenue_by_day) as fast as
//!    they are answered: queries/s and latency percentiles.
//!
//! Peak RSS of the server is read from /proc at the end.

#[path = "../tests/common/http.rs"]
mod http;

use http::{Client, Server};
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::ShopEvent;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{arg, peak_rss_mib_of, percentile};

fn num(name: &str, default: u64) -> u64 {
    arg(name, &default.to_string()).parse().unwrap_or_else(|_| panic!("{name} takes a number"))
}

fn bodies(seed: u64, events: u64) -> Vec<Vec<u8>> {
    let evs: Vec<ShopEvent> = Generator::new(GenConfig { events, seed, ..GenConfig::default() }).collect();
    evs.chunks(1000)
        .map(|c| {
            let mut out = Vec::with_capacity(c.len() * 150);
            for e in c {
                e.write_ndjson(&mut out);
                out.push(b'\n');
            }
            out
        })
        .collect()
}

/// CPU seconds (user + system) the server's HTTP threads (`lambdaflow-http`: the async
/// workers that parse requests and run point queries, and their blocking pool) have used, from
/// /proc; threads that exited are not counted.
fn http_cpu_s(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return f64::NAN };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else { continue };
        if name != "lambdaflow-http" {
            continue;
        }
        // After the name: state (field 3), ..., utime (14), stime (15).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += [11, 12].iter().filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok())).sum::<u64>();
    }
    ticks as f64 / 100.0 // USER_HZ
}

/// Posts `bodies` from `connections` threads; returns (events acknowledged, seconds).
fn ingest(addr: std::net::SocketAddr, bodies: Arc<Vec<Vec<u8>>>, connections: usize, tag: &str) -> (u64, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            let (bodies, next, tag) = (bodies.clone(), next.clone(), tag.to_string());
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut events = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(body) = bodies.get(i) else { break };
                    loop {
                        let r = c.post("/v1/events", &[("Idempotency-Key", &format!("{tag}-{i}"))], body).expect("post");
                        match r.status {
                            200 => {
                                events += r.json()["accepted"].as_u64().expect("accepted");
                                break;
                            }
                            429 => std::thread::sleep(Duration::from_millis(20)),
                            s => panic!("ingest: HTTP {s}: {}", r.text()),
                        }
                    }
                }
                events
            })
        })
        .collect();
    let events = handles.into_iter().map(|h| h.join().expect("ingest thread")).sum();
    (events, t.elapsed().as_secs_f64())
}

/// A lean keep-alive HTTP/1.1 client for the point-query load: requests built once, one
/// reused buffer; every response is read whole (`Content-Length` framing) and checked: its
/// status, and that a 200 answers the view asked for and a 404 is an error object (this
/// machine's cores are shared with the server, so the client's CPU is the server's loss).
struct Lean {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Lean {
    fn connect(addr: std::net::SocketAddr) -> Lean {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Lean { stream, buf: Vec::with_capacity(1 << 16) }
    }

    /// Sends `requests` (whole HTTP/1.1 requests, written at once), reads one response per
    /// entry of `expect` (the view asked and how many keys: 1 for the one-key path) and
    /// checks each.
    fn send(&mut self, requests: &[u8], expect: &[(&str, usize)]) {
        use std::io::{Read, Write};
        self.stream.write_all(requests).expect("send");
        self.buf.clear();
        let mut chunk = [0u8; 64 << 10];
        let mut at = 0;
        for (view, keys) in expect {
            let (head, length) = loop {
                if let Some(end) = self.buf[at..].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&self.buf[at..at + end]).expect("ASCII head");
                    let length = head
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                        .map(|(_, v)| v.trim().parse::<usize>().expect("Content-Length"))
                        .expect("a Content-Length");
                    break (at + end + 4, length);
                }
                let n = self.stream.read(&mut chunk).expect("receive");
                assert!(n > 0, "the server closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            };
            while self.buf.len() < head + length {
                let n = self.stream.read(&mut chunk).expect("receive");
                assert!(n > 0, "the server closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let status: u16 = std::str::from_utf8(&self.buf[at + 9..at + 12]).ok().and_then(|s| s.parse().ok()).expect("a status");
            let body = &self.buf[head..head + length];
            let ok = match status {
                200 => {
                    body.starts_with(b"{\"view\":\"")
                        && body[9..].starts_with(view.as_bytes())
                        && body.ends_with(b"}")
                        && (*keys == 1 || body.windows(6).filter(|w| w == b"\"key\":").count() == *keys)
                }
                404 => *keys == 1 && body.starts_with(b"{\"error\":"),
                _ => false,
            };
            assert!(ok, "HTTP {status}: {}", String::from_utf8_lossy(body));
            at = head + length;
        }
        assert_eq!(at, self.buf.len(), "bytes after the last answer");
    }
}

/// How a query connection asks: `pipeline` requests per round trip, `keys` per request.
#[derive(Clone, Copy)]
struct Mode {
    pipeline: usize,
    keys: usize,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.pipeline, self.keys)
    }
}

fn modes() -> Vec<Mode> {
    let given = format!("{}x{}", num("--pipeline", 1), num("--keys-per-request", 1));
    arg("--mode-list", &given)
        .split(',')
        .map(|m| {
            let (p, k) =
                m.trim().split_once('x').unwrap_or_else(|| panic!("--mode-list takes PIPELINExKEYS,... (e.g. 1x1,16x1), not `{m}`"));
            let n =
                |t: &str| t.parse::<usize>().ok().filter(|n| *n >= 1).unwrap_or_else(|| panic!("--mode-list: `{m}` needs numbers >= 1"));
            Mode { pipeline: n(p), keys: n(k) }
        })
        .collect()
}

/// What one mixed phase measured.
struct Row {
    workers: usize,
    queries: usize,
    mode: Mode,
    offered: f64,
    visible_p50: f64,
    visible_p99: f64,
    visible_max: f64,
    /// Requests answered per second, and keys answered per second.
    qps: f64,
    kps: f64,
    query_p50: f64,
    query_p99: f64,
    /// CPU of the server's HTTP threads per request answered, µs (the paced ingest's requests
    /// and visibility checks included, a few hundred per second).
    http_cpu_us: f64,
    /// The server's own commit → publication latency over the phase (its histogram).
    published_p50: f64,
    published_p99: f64,
}

/// The server's commit → publication histogram (bucket `i`: up to 10 µs × 1.1^i).
fn visible_buckets(c: &mut Client) -> Vec<u64> {
    let s = c.get("/v1/status").expect("status").json();
    s["speed"]["visible_latency"]["buckets"].as_array().map(|b| b.iter().map(|n| n.as_u64().unwrap_or(0)).collect()).unwrap_or_default()
}

/// The `p` quantile of the latencies counted in `after` but not `before`, ms.
fn bucket_quantile(before: &[u64], after: &[u64], p: f64) -> f64 {
    let counts: Vec<u64> = after.iter().enumerate().map(|(i, a)| a.saturating_sub(before.get(i).copied().unwrap_or(0))).collect();
    lambdaflow_engine::VisibleLatency::quantile_ms(&counts, p)
}

fn list(name: &str, default: &str) -> Vec<usize> {
    arg(name, default).split(',').map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name} takes numbers separated by commas"))).collect()
}

fn main() {
    let matrix = std::env::args().any(|a| a == "--matrix");
    let (workers, queries) = if matrix {
        (list("--worker-list", "1,2"), list("--query-list", "1,2,8,32"))
    } else {
        (vec![num("--workers", 2) as usize], vec![num("--query-connections", 2) as usize])
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine: {} cores, load average {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), load.trim());
    let mut rows = Vec::new();
    for w in workers {
        rows.extend(server_run(w, &queries));
    }
    println!();
    println!(
        "| workers | Q | mode (pipeline x keys/request) | offered ev/s | ack→visible p50 ms | p99 ms | max ms | requests/s | keys answered/s | round trip p50 ms | round trip p99 ms | HTTP CPU µs/request | server commit→publish p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.3} | {:.3} | {:.1} | {:.2} | {:.2} |",
            r.workers,
            r.queries,
            r.mode,
            r.offered,
            r.visible_p50,
            r.visible_p99,
            r.visible_max,
            r.qps,
            r.kps,
            r.query_p50,
            r.query_p99,
            r.http_cpu_us,
            r.published_p50,
            r.published_p99
        );
    }
}

/// Starts a server with `workers` workers, loads history, runs a batch, measures ingest,
/// then runs the mixed phase once per entry of `queries`.
fn server_run(workers: usize, queries: &[usize]) -> Vec<Row> {
    let history = num("--history", 1_000_000);
    let ingest_events = num("--ingest-events", 2_000_000);
    let connections = num("--connections", 4) as usize;
    let rate = num("--rate", 100_000);
    let seconds = num("--seconds", 10);
    let dir = std::env::temp_dir().join(format!("lambdaflow-bench-serve-{}-w{workers}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // `--speed-processes N` / `--batch-processes N`: the layers on N local processes each.
    let speed_processes = num("--speed-processes", 1).to_string();
    let batch_processes = num("--batch-processes", 1).to_string();
    let partitions = num("--partitions", 4).to_string();
    let workers_arg = workers.to_string();
    // `LAMBDAFLOW_BENCH_BIN=path`: load another build of the server (e.g. an older commit's).
    let bin = std::env::var("LAMBDAFLOW_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lambdaflow").to_string());
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--data").arg(&dir).args(["-w", &workers_arg, "serve", "--listen", "127.0.0.1:0"]);
    cmd.args([
        "--max-lag",
        "100000000",
        "--partitions",
        &partitions,
        "--speed-processes",
        &speed_processes,
        "--batch-processes",
        &batch_processes,
    ]);
    // `--http-nice N`: passed to the server (a server older than the flag refuses it).
    if let Some(nice) = std::env::args().skip_while(|a| a != "--http-nice").nth(1) {
        cmd.args(["--http-nice", &nice]);
    }
    let server = Server::spawn(cmd);
    let addr = server.addr;
    let pid = server.child.id();
    println!(
        "lambdaflow serve bench: server pid {pid} on {addr}, {workers} worker(s) per process, {partitions} partitions, \
         speed on {speed_processes} process(es), batch on {batch_processes}; client: this process"
    );

    // 1. History, then a batch run.
    let t = Instant::now();
    let (n, secs) = ingest(addr, Arc::new(bodies(1, history)), connections, "history");
    println!("history: {n} events in {secs:.2}s");
    let mut c = Client::new(addr);
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    loop {
        let s = c.get("/v1/status").expect("status").json();
        if s["batch"]["version"].as_u64().unwrap_or(0) >= 1 && s["batch_run"]["running"].is_null() {
            println!("batch v1 over {} events ready after {:.2}s", s["batch"]["events"], t.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // 2. Ingest throughput, then the speed layer's catch-up.
    let payload = Arc::new(bodies(2, ingest_events));
    let (n, secs) = ingest(addr, payload, connections, "ingest");
    println!(
        "ingest: {n} events in requests of 1000 over {connections} connections: {secs:.2}s = {:.0} events/s durable ({:.0} requests/s)",
        n as f64 / secs,
        n as f64 / 1000.0 / secs
    );
    let t = Instant::now();
    let lag = |c: &mut Client| c.get("/v1/status").expect("status").json()["freshness"]["speed_lag_events"].as_u64().unwrap_or(u64::MAX);
    let behind = lag(&mut c);
    while lag(&mut c) > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("speed layer: caught up with {behind} events of lag in {:.2}s after the ingest", t.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    let mut run = 0;
    for q in queries {
        for mode in modes() {
            rows.push(mixed(addr, pid, workers, *q, mode, rate, seconds, run));
            run += 1;
        }
    }
    let s = c.get("/v1/status").expect("status").json();
    println!(
        "server: {} events in the log, peak RSS {:.0} MiB, speed state {} KiB, {} publications ({} copied the tables)",
        s["log"]["events"],
        peak_rss_mib_of(&pid.to_string()),
        s["speed"]["bytes"].as_u64().unwrap_or(0) / 1024,
        s["speed"]["publications"],
        s["speed"]["snapshot_copies"]
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// Phase 3: paced ingest with ack-to-visible, and point queries from `query_connections`
/// connections as fast as they are answered.
#[allow(clippy::too_many_arguments)]
fn mixed(
    addr: std::net::SocketAddr,
    pid: u32,
    workers: usize,
    query_connections: usize,
    mode: Mode,
    rate: u64,
    seconds: u64,
    run: u64,
) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let mut status = Client::new(addr);
    let published_before = visible_buckets(&mut status);
    let cpu_before = http_cpu_s(pid);
    let paced: Arc<Vec<Vec<u8>>> = Arc::new(bodies(3 + run, rate * seconds));
    // Visibility checks run on their own connections, so the ingest pace never waits for them.
    let (check_tx, check_rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let check_rx = Arc::new(std::sync::Mutex::new(check_rx));
    let checkers: Vec<_> = (0..2)
        .map(|_| {
            let check_rx = check_rx.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut visible = Vec::new();
                loop {
                    let next = check_rx.lock().unwrap().recv();
                    let Ok((acked, mf)) = next else { break };
                    let q = c.get(&format!("/v1/views/customer_segments/gold?min_frontier={mf}&timeout_ms=5000")).expect("visible");
                    assert_eq!(q.status, 200, "{}", q.text());
                    visible.push(acked.elapsed().as_secs_f64() * 1e3);
                }
                visible
            })
        })
        .collect();
    let ingester = {
        let (paced, stop) = (paced.clone(), stop.clone());
        let partitions: usize = num("--partitions", 4) as usize;
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut requests = 0u64;
            let mut acks = Vec::new();
            let start = Instant::now();
            for (i, body) in paced.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 * 1000.0 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let sent = Instant::now();
                let r = c.post("/v1/events", &[("Idempotency-Key", &format!("paced-{run}-{i}"))], body).expect("post");
                assert_eq!(r.status, 200, "{}", r.text());
                let acked = Instant::now();
                acks.push((acked - sent).as_secs_f64() * 1e3);
                let mut frontier = vec![0u64; partitions];
                for p in r.json()["positions"].as_array().expect("positions") {
                    frontier[p["partition"].as_u64().expect("p") as usize] = p["to"].as_u64().expect("to");
                }
                let mf = frontier.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(",");
                check_tx.send((acked, mf)).expect("checkers run");
                requests += 1;
            }
            (requests, start.elapsed().as_secs_f64(), acks)
        })
    };
    // `--query-rate R`: the Q connections together ask about R requests/s (each paces its
    // round trips); 0, the default, asks as fast as answers come.
    let query_rate = num("--query-rate", 0);
    let trip_every = (query_rate > 0).then(|| Duration::from_secs_f64((query_connections * mode.pipeline) as f64 / query_rate as f64));
    // `--client-nice N`: the query clients' threads run N nice levels down, as clients on
    // other machines would not take the server's cores (default 0: they compete).
    let client_nice = num("--client-nice", 0) as i32;
    let queriers: Vec<_> = (0..query_connections)
        .map(|qi| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                if client_nice > 0 {
                    let tid = Some(rustix::thread::gettid());
                    let now = rustix::process::getpriority_process(tid).unwrap_or(0);
                    rustix::process::setpriority_process(tid, (now + client_nice).min(19)).expect("--client-nice: setpriority");
                }
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ qi as u64;
                let today = lambdaflow_operators::Day::of_ms(lambdaflow_engine::now_ms() as i64).0;
                let mut rand = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let key = |view: usize, x: u64| {
                    let day = lambdaflow_operators::Day(today - (x % 90) as i32);
                    match view {
                        0 => day.to_string(),
                        1 => (x % 100_000).to_string(),
                        2 => (x % 10_000).to_string(),
                        _ => format!("{day}/{}", x % 10_000),
                    }
                };
                const VIEWS: [&str; 4] = ["revenue_by_day", "customer_spend", "inventory_level", "product_revenue_by_day"];
                // 4096 random point queries (in round trips of `mode`), built before the
                // clock starts and sent in turn.
                let trips: Vec<(Vec<u8>, Vec<(&str, usize)>)> = (0..(4096 / (mode.pipeline * mode.keys)).max(64))
                    .map(|_| {
                        let mut bytes = Vec::new();
                        let mut expect = Vec::new();
                        for _ in 0..mode.pipeline {
                            let v = (rand() % 4) as usize;
                            let path = if mode.keys == 1 {
                                format!("/v1/views/{}/{}", VIEWS[v], key(v, rand()))
                            } else {
                                let keys: Vec<String> = (0..mode.keys).map(|_| format!("key={}", key(v, rand()))).collect();
                                format!("/v1/views/{}?{}", VIEWS[v], keys.join("&"))
                            };
                            bytes.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
                            expect.push((VIEWS[v], mode.keys));
                        }
                        (bytes, expect)
                    })
                    .collect();
                let mut c = Lean::connect(addr);
                let mut lat = Vec::with_capacity(1 << 20);
                let start = Instant::now();
                for (n, (requests, expect)) in trips.iter().cycle().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(lead) = trip_every.and_then(|every| (every * n as u32).checked_sub(start.elapsed())) {
                        std::thread::sleep(lead);
                    }
                    let t = Instant::now();
                    c.send(requests, expect);
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let (requests, ingest_secs, mut acks) = ingester.join().expect("ingester");
    acks.sort_by(f64::total_cmp);
    let mut visible: Vec<f64> = checkers.into_iter().flat_map(|c| c.join().expect("checker")).collect();
    let mut lat: Vec<f64> = queriers.into_iter().flat_map(|q| q.join().expect("querier")).collect();
    visible.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    let published_after = visible_buckets(&mut status);
    let http_cpu = http_cpu_s(pid) - cpu_before;
    let row = Row {
        workers,
        queries: query_connections,
        mode,
        offered: requests as f64 * 1000.0 / ingest_secs,
        visible_p50: percentile(&visible, 0.5),
        visible_p99: percentile(&visible, 0.99),
        visible_max: visible.last().copied().unwrap_or(f64::NAN),
        qps: (lat.len() * mode.pipeline) as f64 / seconds as f64,
        kps: (lat.len() * mode.pipeline * mode.keys) as f64 / seconds as f64,
        query_p50: percentile(&lat, 0.5),
        query_p99: percentile(&lat, 0.99),
        http_cpu_us: http_cpu * 1e6 / (lat.len() * mode.pipeline).max(1) as f64,
        published_p50: bucket_quantile(&published_before, &published_after, 0.5),
        published_p99: bucket_quantile(&published_before, &published_after, 0.99),
    };
    println!(
        "mixed ({seconds}s, {workers} worker(s), Q={query_connections}, mode {mode}): ingest {:.0} events/s; ack-to-visible p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} requests)",
        row.offered,
        row.visible_p50,
        row.visible_p99,
        row.visible_max,
        visible.len()
    );
    println!(
        "mixed ({seconds}s, {workers} worker(s), Q={query_connections}, mode {mode}): {} round trips = {:.0} requests/s = {:.0} keys answered/s; round trip p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms",
        lat.len(),
        row.qps,
        row.kps,
        row.query_p50,
        row.query_p99,
        percentile(&lat, 0.999)
    );
    println!(
        "mixed ({seconds}s, {workers} worker(s), Q={query_connections}, mode {mode}): server commit→publish p50 {:.2} ms p99 {:.2} ms (10% buckets); \
         send→ack p50 {:.2} ms p99 {:.2} ms (an ack slower than the pace lowers the offered rate)",
        row.published_p50,
        row.published_p99,
        percentile(&acks, 0.5),
        percentile(&acks, 0.99)
    );
    row
}
