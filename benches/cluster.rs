//! Batch-mode throughput of the shop job across worker processes: what timely's exchange
//! between processes costs, at equal total workers.
//!
//! `cargo bench --bench cluster -- [--events N] [--configs 1x2,2x1,4x1,1x4] [--partitions P] [--dir D] [--repeat R]`
//!
//! Appends N generated events (once, in `--dir`), then for each `PROCESSESxWORKERS` runs
//! `lambdaflow -w WORKERS batch --processes PROCESSES` (one process runs in-process; more
//! start worker processes on loopback; views are gathered to process 0, each process
//! writes its own seed shards, and process 0 publishes). Reports
//! the dataflow time (reading + computing + gathering), the write time, the wall time of
//! the command, events/s, and the peak of the summed RSS of every process of the run.

use lambdaflow_engine::log::LogConfig;
use lambdaflow_engine::Appender;
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::arg;

/// Summed VmRSS (MiB) of every process whose command line mentions `dir`.
fn rss_of_processes_using(dir: &Path) -> f64 {
    let needle = dir.to_string_lossy().to_string();
    let mut kib = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if !cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        kib += status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    kib as f64 / 1024.0
}

struct Run {
    compute: f64,
    write: f64,
    wall: f64,
    peak_mib: f64,
}

fn run_batch(dir: &Path, processes: usize, workers: usize) -> Run {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lambdaflow"))
        .arg("--data")
        .arg(dir)
        .args(["-w", &workers.to_string(), "batch", "--keep", "1", "--processes", &processes.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lambdaflow batch");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut peak: f64 = 0.0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        peak = peak.max(rss_of_processes_using(dir));
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = t.elapsed().as_secs_f64();
    let err = reader.join().unwrap_or_default();
    assert!(status.success(), "batch on {processes}x{workers} failed: {err}");
    // "batch vN published: E events at cut [..] in Cs compute + Ws write (..)"
    let line = err.lines().find(|l| l.contains(" published: ")).unwrap_or_else(|| panic!("no report in: {err}"));
    let secs = |before: &str| -> f64 {
        let head = line.split(before).next().unwrap_or("");
        head.rsplit(' ').next().and_then(|s| s.trim_end_matches('s').parse().ok()).unwrap_or(f64::NAN)
    };
    Run { compute: secs("s compute"), write: secs("s write"), wall, peak_mib: peak }
}

fn main() {
    let events: u64 = arg("--events", "10000000").parse().expect("--events");
    let partitions: u32 = arg("--partitions", "8").parse().expect("--partitions");
    let repeat: usize = arg("--repeat", "1").parse().expect("--repeat");
    let configs: Vec<(usize, usize)> = arg("--configs", "1x2,2x1,4x1,1x4")
        .split(',')
        .map(|c| {
            let (p, w) = c.split_once('x').expect("--configs: PROCESSESxWORKERS,...");
            (p.parse().expect("processes"), w.parse().expect("workers"))
        })
        .collect();
    let dir = PathBuf::from(arg("--dir", &format!("{}/lambdaflow-bench-cluster-{events}", std::env::temp_dir().display())));
    if !dir.join("log").exists() {
        eprintln!("appending {events} events to {} ({partitions} partitions) ...", dir.display());
        let appender = Appender::open(&dir, LogConfig { partitions, ..LogConfig::default() }).expect("log");
        let mut gen = Generator::new(GenConfig { events, seed: 1, ..GenConfig::default() });
        loop {
            let chunk: Vec<_> = gen.by_ref().take(500_000).collect();
            if chunk.is_empty() {
                break;
            }
            appender.append(&chunk).expect("append");
        }
    }
    println!(
        "batch mode, shop job, {events} events, {partitions} partitions, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:>10} {:>8} {:>11} {:>9} {:>9} {:>13} {:>13}",
        "processes", "workers", "dataflow s", "write s", "wall s", "events/s", "peak RSS MiB"
    );
    // Per run: (config, dataflow + write seconds, wall seconds).
    let mut results: Vec<((usize, usize), f64, f64)> = Vec::new();
    for &(p, w) in &configs {
        for _ in 0..repeat {
            let r = run_batch(&dir, p, w);
            let rate = events as f64 / r.compute;
            println!("{p:>10} {w:>8} {:>11.2} {:>9.2} {:>9.2} {:>13.0} {:>13.0}", r.compute, r.write, r.wall, rate, r.peak_mib);
            results.push(((p, w), r.compute + r.write, r.wall));
        }
    }
    // Overhead at equal total workers, against one process: the time to a published
    // version (dataflow + write; across processes, the seed shards are written inside the
    // dataflow's time), and the command's wall time (process start, following the log).
    let median = |cfg: (usize, usize), wall: bool| {
        let mut v: Vec<f64> = results.iter().filter(|(c, _, _)| *c == cfg).map(|(_, t, w)| if wall { *w } else { *t }).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for &(p, w) in &configs {
        if p > 1 && configs.contains(&(1, p * w)) {
            let pct = |wall: bool| (median((p, w), wall) / median((1, p * w), wall) - 1.0) * 100.0;
            println!(
                "{p} processes x {w} vs 1 process x {} (medians): dataflow + write {:+.1}%, wall {:+.1}%",
                p * w,
                pct(false),
                pct(true)
            );
        }
    }
}
