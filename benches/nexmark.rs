//! The Nexmark benchmark: every query of `jobs/nexmark` (or a selection), one at a time, in
//! batch mode and in speed mode, over one generated log.
//!
//! `cargo bench --bench nexmark -- [--events N] [--queries q4,q9] [--workers W] [--partitions P]
//!  [--rate EVENTS_PER_S] [--dir D] [--keep yes]`
//!
//! Defaults: 10 000 000 events, all queries, 2 workers, 4 partitions, 100 000 events/s.
//!
//! 1. append (once): events `0 .. N` of the Nexmark stream (`gen nexmark`'s), generated in
//!    chunks of 100 000 (never all in memory) and appended durably;
//! 2. for each query, in a copy of that data directory (the log stays as appended):
//!    * batch: one batch run of a job building only that query's views
//!      (`Nexmark::only`); events/s on the wall clock and per core: events divided by the
//!      CPU time (user + system) the process used, from `/proc/self/stat` (the counters
//!      `getrusage` reads), so other load on the machine does not count; then the bytes the
//!      version wrote, seeds (per seed) and views;
//!    * speed: the speed layer, seeded from that version, absorbs events `N .. N + N/10`
//!      appended as fast as possible in group commits of 10 000 (append + incremental
//!      update, until the merged answers cover them); then its state (`status`: keys and
//!      approximate bytes of the speed tables);
//!    * latency: once the layer has caught up with the speed phase's events and its spare
//!      copies are up to date (steady state), 500 ticks of 10 ms, `--rate / 100` events a
//!      tick, the next events of the stream; for each tick the time from its acknowledgement until the speed frontier
//!      covers it (a merged answer reflects it): p50 and p99. Not measured when the speed
//!      phase's events per CPU-second times the workers are fewer than offered (the
//!      backlog would grow without bound).
//!
//! A failed phase is reported and the bench goes on with the next query.
//!
//! Each phase runs in its own child process, so its peak RSS (VmHWM) is its own. One table
//! at the end.

use lambdaflow_engine::log::{Log, LogConfig};
use lambdaflow_engine::{run_batch, Appender, Lambda, Options, Progress, ViewStore};
use lambdaflow_nexmark::gen::{self, GEN_START_MS};
use lambdaflow_nexmark::{Nexmark, NexmarkEvent, QUERIES};
use lambdaflow_operators::serde_json::{self, json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{arg, peak_rss_mib, percentile};

/// Clock ticks per second of `/proc/self/stat`'s CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU seconds (user + system, all threads, living and exited) this process has used.
fn cpu_secs(ticks: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (n(14 - 3) + n(15 - 3)) / ticks
}

/// Events `first .. first + count` of the stream, `chunk` at a time.
fn chunks(first: u64, count: u64, chunk: usize) -> impl Iterator<Item = Vec<NexmarkEvent>> {
    let mut it = gen::events(first, count, GEN_START_MS);
    std::iter::from_fn(move || {
        let c: Vec<NexmarkEvent> = it.by_ref().take(chunk).collect();
        (!c.is_empty()).then_some(c)
    })
}

/// Bytes of the files of the current batch version: per seed (`seed.NAME[.pI].bin`, summed
/// over shards) and, under `views`, everything else.
fn version_bytes(dir: &Path) -> BTreeMap<String, u64> {
    let store = ViewStore::open(dir).unwrap();
    let version = store.current().unwrap().expect("a batch version");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("views").join(format!("v{version:06}"))).unwrap() {
        let entry = entry.unwrap();
        let bytes = entry.metadata().unwrap().len();
        let name = entry.file_name().to_string_lossy().to_string();
        let key = match name.strip_prefix("seed.") {
            Some(seed) => {
                let seed = seed.strip_suffix(".bin").unwrap_or(seed);
                let seed = match seed.rsplit_once(".p") {
                    Some((s, i)) if i.chars().all(|c| c.is_ascii_digit()) => s,
                    _ => seed,
                };
                format!("seed {seed}")
            }
            None => "views".to_string(),
        };
        *out.entry(key).or_insert(0) += bytes;
    }
    out
}

fn record(results: &Path, value: Value) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(results).unwrap();
    writeln!(f, "{value}").unwrap();
}

struct Run {
    dir: PathBuf,
    events: u64,
    workers: usize,
    partitions: u32,
    rate: u64,
    query: String,
    results: PathBuf,
}

impl Run {
    fn job(&self) -> Nexmark {
        Nexmark::default().only(&self.query).expect("a query of the job")
    }

    fn opts(&self) -> Options {
        Options { workers: self.workers, log: LogConfig { partitions: self.partitions, ..LogConfig::default() }, ..Options::default() }
    }

    fn speed_events(&self) -> u64 {
        (self.events / 10).max(10_000)
    }

    fn phase(&self, name: &str) {
        let ticks = clock_ticks();
        let q = &self.query;
        match name {
            "append" => {
                let appender = Appender::open(&self.dir, self.opts().log).unwrap();
                let t = Instant::now();
                for chunk in chunks(0, self.events, 100_000) {
                    appender.append(&chunk).unwrap();
                }
                let s = t.elapsed().as_secs_f64();
                let bytes: u64 = appender.log().disk_bytes().iter().sum();
                println!(
                    "append       {:>11} events  {s:8.2} s  {:>10.0} events/s (generated and appended durably, group commit 100k)  log {:.0} MiB  peak RSS {:.0} MiB",
                    self.events,
                    self.events as f64 / s,
                    bytes as f64 / (1 << 20) as f64,
                    peak_rss_mib()
                );
            }
            "batch" => {
                let log = Arc::new(Log::open(&self.dir.join("log")).unwrap());
                let store = ViewStore::open(&self.dir).unwrap();
                let cpu0 = cpu_secs(ticks);
                let t = Instant::now();
                let r = run_batch(Arc::new(self.job()), log, &store, self.workers, None, Arc::new(Progress::default())).unwrap();
                let s = t.elapsed().as_secs_f64();
                let cpu = cpu_secs(ticks) - cpu0;
                let n = r.meta.events;
                let bytes = version_bytes(&self.dir);
                let seed_bytes: u64 = bytes.iter().filter(|(k, _)| k.starts_with("seed ")).map(|(_, b)| b).sum();
                let rss = peak_rss_mib();
                println!(
                    "{q:<4} batch   {n:>11} events  {s:8.2} s wall  {:>10.0} events/s  CPU {cpu:.2} s = {:>9.0} events/s per core  (compute {:.2} s, write {:.2} s)  peak RSS {rss:.0} MiB",
                    n as f64 / s,
                    n as f64 / cpu,
                    r.compute_secs,
                    r.write_secs,
                );
                for (k, b) in &bytes {
                    println!("{q:<4}           {k}: {b} bytes");
                }
                record(
                    &self.results,
                    json!({"query": q, "phase": "batch", "events": n, "wall": s, "cpu": cpu, "compute": r.compute_secs,
                           "write": r.write_secs, "seed_bytes": seed_bytes, "view_bytes": bytes.get("views").copied().unwrap_or(0),
                           "rss": rss}),
                );
            }
            "speed" => {
                let t0 = Instant::now();
                let lambda = Lambda::open(self.job(), &self.dir, self.opts()).unwrap();
                lambda.sync(Duration::from_secs(3600)).unwrap();
                let start_secs = t0.elapsed().as_secs_f64();
                let n = self.speed_events();
                let cpu0 = cpu_secs(ticks);
                let t = Instant::now();
                for chunk in chunks(self.events, n, 10_000) {
                    lambda.append(&chunk).unwrap();
                }
                lambda.sync(Duration::from_secs(3600)).unwrap();
                let s = t.elapsed().as_secs_f64();
                let cpu = cpu_secs(ticks) - cpu0;
                let status = lambda.status();
                let keys: usize = status.speed_keys.iter().map(|(_, k)| k).sum();
                let rss = peak_rss_mib();
                println!(
                    "{q:<4} speed   {n:>11} events  {s:8.2} s wall  {:>10.0} events/s  CPU {cpu:.2} s = {:>9.0} events/s per core  (append + update; start-up with seeds {start_secs:.2} s)  state {keys} keys, {:.1} MiB  peak RSS {rss:.0} MiB",
                    n as f64 / s,
                    n as f64 / cpu,
                    status.speed_bytes as f64 / (1 << 20) as f64,
                );
                record(
                    &self.results,
                    json!({"query": q, "phase": "speed", "events": n, "wall": s, "cpu": cpu, "start": start_secs,
                           "state_keys": keys, "state_bytes": status.speed_bytes, "rss": rss}),
                );
            }
            "latency" => {
                // A speed layer slower than the offered rate never catches up: its latency
                // grows with the run, so it is not measured (q16). Its capacity: the speed
                // phase's events per CPU-second times the workers (the wall rate would
                // count the machine's other load).
                let text = std::fs::read_to_string(&self.results).unwrap_or_default();
                let speed = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|r| r["query"] == q.as_str() && r["phase"] == "speed")
                    .and_then(|r| Some(r["events"].as_f64()? / r["cpu"].as_f64()? * self.workers as f64));
                if let Some(speed) = speed.filter(|s| *s < self.rate as f64) {
                    println!(
                        "{q:<4} latency not measured: the speed layer absorbs at most about {speed:.0} events/s ({} workers), less than the offered {}/s",
                        self.workers, self.rate
                    );
                    return;
                }
                let lambda = Arc::new(Lambda::open(self.job(), &self.dir, self.opts()).unwrap());
                lambda.sync(Duration::from_secs(3600)).unwrap();
                // Steady state, not recovery (as benches/lambda.rs): the layer has just caught
                // up with the speed phase's events, and its spare copies of the tables are
                // still being brought up to date with that backlog on helper threads (q18's
                // 293k keys at 10M events: hundreds of ms on 2 cores). Start the clock once
                // they are (at most 10 s).
                let settled = Instant::now();
                while lambda.serving().speed.spare_behind() && settled.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let tick = Duration::from_millis(10);
                let per_tick = (self.rate / 100).max(1);
                let ticks_n = 500u64;
                let first = self.events + self.speed_events();
                // The appender offers load on a fixed schedule (events generated as it goes);
                // the watcher, independently, notes when each acknowledged chunk becomes
                // visible in merged answers.
                let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u64>)>();
                let watcher = {
                    let lambda = lambda.clone();
                    std::thread::spawn(move || {
                        let mut lat_ms = Vec::new();
                        for (acked, target) in rx {
                            assert!(lambda.serving().speed.wait_for(&target, Duration::from_secs(60)).unwrap(), "speed layer stalled");
                            lat_ms.push(acked.elapsed().as_secs_f64() * 1e3);
                        }
                        lat_ms
                    })
                };
                let start = Instant::now();
                for (i, chunk) in chunks(first, per_tick * ticks_n, per_tick as usize).enumerate() {
                    let due = start + tick * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let positions = lambda.append(&chunk).unwrap();
                    let acked = Instant::now();
                    let mut target = vec![0u64; lambda.log().partitions() as usize];
                    for p in positions {
                        target[p.partition as usize] = target[p.partition as usize].max(p.offset + 1);
                    }
                    tx.send((acked, target)).unwrap();
                }
                drop(tx);
                let mut lat_ms = watcher.join().unwrap();
                let achieved = (per_tick * ticks_n) as f64 / start.elapsed().as_secs_f64();
                lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let (p50, p99) = (percentile(&lat_ms, 0.5), percentile(&lat_ms, 0.99));
                let rss = peak_rss_mib();
                println!(
                    "{q:<4} latency {:>11} events  offered {}/s, achieved {achieved:.0}/s; ack -> merged answer p50 {p50:.2} ms  p99 {p99:.2} ms  max {:.2} ms  peak RSS {rss:.0} MiB",
                    per_tick * ticks_n,
                    self.rate,
                    lat_ms.last().copied().unwrap_or(f64::NAN),
                );
                record(&self.results, json!({"query": q, "phase": "latency", "achieved": achieved, "p50": p50, "p99": p99, "rss": rss}));
            }
            other => panic!("unknown phase {other}"),
        }
    }
}

/// Copies `from` into `to` (files and directories), leaving out `skip` at the top.
fn copy_dir(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == skip {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, "");
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn table(results: &Path, queries: &[String], events: u64, workers: usize) {
    let text = std::fs::read_to_string(results).unwrap_or_default();
    let rows: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let get = |q: &str, phase: &str| rows.iter().find(|r| r["query"] == q && r["phase"] == phase).cloned().unwrap_or(Value::Null);
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mib = |v: &Value| f(v) / (1 << 20) as f64;
    println!();
    println!("Nexmark, {events} events, {workers} workers (per core: events / CPU seconds of the process)");
    println!(
        "| query | batch events/s (wall) | batch CPU s | batch events/s per core | batch peak RSS MiB | seeds MiB | views MiB | speed events/s (wall) | speed events/s per core | speed state (keys, MiB) | speed peak RSS MiB | ack → visible p50 / p99 ms (achieved/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for q in queries {
        let (b, s, l) = (get(q, "batch"), get(q, "speed"), get(q, "latency"));
        println!(
            "| {q} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {}, {:.1} | {:.0} | {:.1} / {:.1} ({:.0}) |",
            f(&b["events"]) / f(&b["wall"]),
            f(&b["cpu"]),
            f(&b["events"]) / f(&b["cpu"]),
            f(&b["rss"]),
            mib(&b["seed_bytes"]),
            mib(&b["view_bytes"]),
            f(&s["events"]) / f(&s["wall"]),
            f(&s["events"]) / f(&s["cpu"]),
            s["state_keys"],
            mib(&s["state_bytes"]),
            f(&s["rss"]),
            f(&l["p50"]),
            f(&l["p99"]),
            f(&l["achieved"]),
        );
    }
}

fn main() {
    let events: u64 = arg("--events", "10000000").replace('_', "").parse().expect("--events N");
    let workers: usize = arg("--workers", "2").parse().expect("--workers W");
    let rate: u64 = arg("--rate", "100000").parse().expect("--rate R");
    let partitions: u32 = arg("--partitions", "4").parse().expect("--partitions P");
    let all = QUERIES.iter().map(|q| format!("q{q}")).collect::<Vec<_>>().join(",");
    let queries: Vec<String> = arg("--queries", &all).split(',').map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty()).collect();
    for q in &queries {
        Nexmark::default().only(q).unwrap_or_else(|e| panic!("--queries: {e}"));
    }
    if let Ok(p) = std::env::var("LAMBDAFLOW_BENCH_PHASE") {
        let run = Run {
            dir: PathBuf::from(arg("--dir", "")),
            events,
            workers,
            partitions,
            rate,
            query: arg("--query", ""),
            results: PathBuf::from(arg("--results", "")),
        };
        run.phase(&p);
        return;
    }
    // Its own directory under --dir (never --dir itself, which may hold other data), removed
    // at the end unless --keep yes.
    let parent = PathBuf::from(arg("--dir", &std::env::temp_dir().to_string_lossy()));
    let dir = parent.join(format!("lambdaflow-nexmark-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base");
    let results = dir.join("results.ndjson");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "lambdaflow nexmark bench: {events} events, queries {}, {workers} workers, {partitions} partitions, rate {rate}/s, data in {}; {} cores, load average {}",
        queries.join(","),
        dir.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.trim()
    );
    let me = std::env::current_exe().unwrap();
    let child = |phase: &str, query: &str, at: &Path| -> bool {
        let status = Command::new(&me)
            .env("LAMBDAFLOW_BENCH_PHASE", phase)
            .args(["--events", &events.to_string(), "--workers", &workers.to_string(), "--rate", &rate.to_string()])
            .args(["--partitions", &partitions.to_string(), "--query", query, "--results"])
            .arg(&results)
            .arg("--dir")
            .arg(at)
            .status()
            .unwrap();
        if !status.success() {
            println!("{query:<4} {phase}: failed ({status}); going on with the next query");
        }
        status.success()
    };
    assert!(child("append", "", &base), "append failed");
    for q in &queries {
        let qdir = dir.join(q);
        copy_dir(&base, &qdir, "views");
        for phase in ["batch", "speed", "latency"] {
            if !child(phase, q, &qdir) {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&qdir);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
    table(&results, &queries, events, workers);
    if arg("--keep", "no") == "no" {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
