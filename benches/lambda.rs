//! The lambdaflow benchmark: durable append, batch mode, speed mode (throughput and
//! append-to-merged-answer latency), and peak memory of each, on the shop job.
//!
//! `cargo bench --bench lambda -- [--events N] [--workers W] [--partitions P] [--rate EVENTS_PER_S]
//!  [--dir D] [--phases append,batch,speed-throughput,speed-latency]`
//!
//! `--partitions` sets the log's partitions (default 4); more workers than partitions share
//! their reading.
//!
//! Each phase runs in its own child process so that its peak RSS (VmHWM) is its own:
//! 1. append: N generated events appended durably in group commits of 100,000 events;
//! 2. batch: one batch run over the log (reading it, computing all eight views, writing them);
//! 3. speed-throughput: the speed layer (seeded from that batch) absorbs 10% of N more events
//!    appended as fast as possible;
//! 4. speed-latency: events appended at `--rate` in chunks every 10 ms; for each chunk, the time
//!    from its acknowledgement to the speed frontier covering it (a merged answer reflecting it).
//!    The clock starts once the reopened layer has caught up with phase 3's events and its
//!    spare copies are up to date (steady state, not recovery from a backlog).

use lambdaflow_engine::log::{Log, LogConfig};
use lambdaflow_engine::Appender;
use lambdaflow_engine::ViewStore;
use lambdaflow_engine::{run_batch, Progress};
use lambdaflow_engine::{Lambda, Options};
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use lambdaflow_jobs::shop::{Shop, ShopEvent};
use lambdaflow_operators::Selection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{arg, peak_rss_mib, percentile};

fn gen(seed: u64, n: u64) -> Vec<ShopEvent> {
    Generator::new(GenConfig { events: n, seed, ..GenConfig::default() }).collect()
}

fn phase(name: &str, dir: &Path, events: u64, workers: usize, partitions: u32, rate: u64) {
    let opts = Options { workers, log: LogConfig { partitions, ..LogConfig::default() }, ..Options::default() };
    match name {
        "append" => {
            let evs = gen(1, events);
            let appender = Appender::open(dir, opts.log).unwrap();
            let t = Instant::now();
            for chunk in evs.chunks(100_000) {
                appender.append(chunk).unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "append        {events:>11} events  {s:8.3} s  {:>12.0} events/s  (durable, group commit 100k)  peak RSS {:.0} MiB",
                events as f64 / s,
                peak_rss_mib()
            );
        }
        "batch" => {
            let log = Arc::new(Log::open(&dir.join("log")).unwrap());
            let store = ViewStore::open(dir).unwrap();
            let t = Instant::now();
            let r = run_batch(Arc::new(Shop), log, &store, workers, None, Arc::new(Progress::default())).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "batch         {:>11} events  {s:8.3} s  {:>12.0} events/s  (compute {:.3} s = {:.0} events/s, write {:.3} s, publish {:.3} s, rest {:.3} s)  peak RSS {:.0} MiB",
                r.meta.events,
                r.meta.events as f64 / s,
                r.compute_secs,
                r.meta.events as f64 / r.compute_secs,
                r.write_secs - r.publish_secs,
                r.publish_secs,
                (s - r.compute_secs - r.write_secs).max(0.0),
                peak_rss_mib()
            );
        }
        "speed-throughput" => {
            let t0 = Instant::now();
            let lambda = Lambda::open(Shop, dir, opts).unwrap();
            let start_secs = t0.elapsed().as_secs_f64();
            let n = (events / 10).max(10_000);
            let evs = gen(2, n);
            let t = Instant::now();
            for chunk in evs.chunks(10_000) {
                lambda.append(chunk).unwrap();
            }
            lambda.sync(Duration::from_secs(3600)).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "speed         {n:>11} events  {s:8.3} s  {:>12.0} events/s  (append + incremental update of all views; start-up with seeds {start_secs:.2} s)  peak RSS {:.0} MiB",
                n as f64 / s,
                peak_rss_mib()
            );
        }
        "speed-latency" => {
            let lambda = Arc::new(Lambda::open(Shop, dir, opts).unwrap());
            lambda.sync(Duration::from_secs(3600)).unwrap();
            // Steady state, not recovery: the layer has just caught up with the speed
            // phase's 1M events, and its spare copies are still being brought up to date
            // with that backlog (a helper applies it; a publication before it is done waits
            // for it, 65 ms in a trace). Start the clock once they are (at most 10 s).
            let settled = Instant::now();
            while lambda.serving().speed.spare_behind() && settled.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let tick = Duration::from_millis(10);
            let per_tick = (rate / 100).max(1);
            let ticks = 500u64;
            let evs = gen(3, per_tick * ticks);
            // The appender offers load on a fixed schedule; the watcher, independently, notes
            // when each acknowledged chunk becomes visible in merged answers.
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u64>)>();
            let watcher = {
                let lambda = lambda.clone();
                std::thread::spawn(move || {
                    let mut lat_ms = Vec::new();
                    for (acked, target) in rx {
                        assert!(lambda.serving().speed.wait_for(&target, Duration::from_secs(10)).unwrap(), "speed layer stalled");
                        lat_ms.push(acked.elapsed().as_secs_f64() * 1e3);
                    }
                    lat_ms
                })
            };
            let start = Instant::now();
            for (i, chunk) in evs.chunks(per_tick as usize).enumerate() {
                let due = start + tick * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let positions = lambda.append(chunk).unwrap();
                let acked = Instant::now();
                let mut target = vec![0u64; lambda.log().partitions() as usize];
                for p in positions {
                    target[p.partition as usize] = target[p.partition as usize].max(p.offset + 1);
                }
                tx.send((acked, target)).unwrap();
            }
            drop(tx);
            let mut lat_ms = watcher.join().unwrap();
            let achieved = (per_tick * ticks) as f64 / start.elapsed().as_secs_f64();
            // Point queries against the live state.
            let mut q_us = Vec::new();
            for i in 0..2000u64 {
                let q = Instant::now();
                let _ = lambda.query("customer_spend", &Selection::Key((1 + i * 37 % 100_000).to_string())).unwrap();
                q_us.push(q.elapsed().as_secs_f64() * 1e6);
            }
            q_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
            lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "speed latency {:>11} events  offered {rate}/s, achieved {achieved:.0}/s; ack -> merged answer p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; point query p50 {:.0} us p99 {:.0} us  peak RSS {:.0} MiB",
                per_tick * ticks,
                percentile(&lat_ms, 0.5),
                percentile(&lat_ms, 0.99),
                lat_ms.last().copied().unwrap_or(f64::NAN),
                percentile(&q_us, 0.5),
                percentile(&q_us, 0.99),
                peak_rss_mib()
            );
        }
        other => panic!("unknown phase {other}"),
    }
}

fn main() {
    let events: u64 = arg("--events", "1000000").replace('_', "").parse().expect("--events N");
    let workers: usize = arg("--workers", "2").parse().expect("--workers W");
    let rate: u64 = arg("--rate", "100000").parse().expect("--rate R");
    let partitions: u32 = arg("--partitions", "4").parse().expect("--partitions P");
    if let Ok(p) = std::env::var("LAMBDAFLOW_BENCH_PHASE") {
        phase(&p, Path::new(&arg("--dir", "")), events, workers, partitions, rate);
        return;
    }
    let dir = PathBuf::from(arg("--dir", &std::env::temp_dir().join(format!("lambdaflow-bench-{}", std::process::id())).to_string_lossy()));
    let _ = std::fs::remove_dir_all(&dir);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "lambdaflow bench: shop job, {events} events, {workers} workers, {partitions} partitions, data in {}; {} cores, load average {}",
        dir.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.trim()
    );
    let me = std::env::current_exe().unwrap();
    let phases = arg("--phases", "append,batch,speed-throughput,speed-latency");
    for p in phases.split(',') {
        let status = Command::new(&me)
            .env("LAMBDAFLOW_BENCH_PHASE", p)
            .args(["--events", &events.to_string(), "--workers", &workers.to_string(), "--rate", &rate.to_string()])
            .args(["--partitions", &partitions.to_string(), "--dir"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "phase {p} failed");
    }
    if arg("--keep", "no") == "no" {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
