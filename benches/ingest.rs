//! Bulk ingest: events/s, peak memory and log bytes per event.
//!
//! `cargo bench --bench ingest -- [--events N] [--memory SIZE] [--threads T] [--dir DIR]`
//!
//! Generates N shop events (default 2,000,000) as CSV and as NDJSON with `lambdaflow gen`,
//! then times `lambdaflow ingest FILE` of each into a fresh data directory: the whole
//! command (open, stream, parse on every core, compress, fsync, publish). Reports events/s,
//! the CPU time the ingest process used (user + system, from this process's children
//! times in /proc/self/stat: comparable across runs on a loaded machine, where wall time is
//! not) per event, the ingest process's peak resident memory (VmHWM, which `ingest` reads from
//! /proc/self/status and prints), the input's and the log's bytes per event, and how long a
//! full `verify` (read and checksum every block, decompressing it) takes. The files are
//! written under DIR (default: the system's temp directory) and deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lambdaflow")
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() { dir_bytes(&path) } else { entry.metadata().map_or(0, |m| m.len()) };
    }
    total
}

/// The user + system CPU seconds of this process's reaped children (Linux: fields 16 and 17
/// of /proc/self/stat, in clock ticks of 1/100 s); 0 where that cannot be read.
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // `rest` starts at field 3 (state), so field N is fields[N - 3].
    match (fields.get(13), fields.get(14)) {
        (Some(u), Some(s)) => (u + s) as f64 / 100.0,
        _ => 0.0,
    }
}

/// Runs lambdaflow with `args`: wall seconds, CPU seconds (user + system) and stderr.
fn run(args: &[&str]) -> (f64, f64, String) {
    let cpu = children_cpu_secs();
    let t = Instant::now();
    let o = Command::new(bin()).args(args).output().expect("run lambdaflow");
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "lambdaflow {args:?} failed: {err}");
    (secs, children_cpu_secs() - cpu, err)
}

fn main() {
    let events: u64 = arg("--events").map_or(2_000_000, |v| v.parse().expect("--events N"));
    let memory = arg("--memory").unwrap_or_else(|| "256MiB".into());
    let threads = arg("--threads");
    let root: PathBuf =
        arg("--dir").map_or_else(std::env::temp_dir, PathBuf::from).join(format!("lambdaflow-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("bench directory");
    println!(
        "bulk ingest of {events} shop events (--memory {memory}, {} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<7} {:>9} {:>13} {:>9} {:>11} {:>10} {:>12} {:>11} {:>10}",
        "format", "seconds", "events/s", "cpu s", "cpu ns/ev", "peak MiB", "input B/ev", "log B/ev", "verify s"
    );
    for format in ["csv", "ndjson"] {
        let input = root.join(format!("in.{format}"));
        let data = root.join(format!("data-{format}"));
        let n = events.to_string();
        run(&["gen", "shop", "--events", &n, "--seed", "7", "--format", format, "--out", input.to_str().expect("utf-8")]);
        let input_bytes = std::fs::metadata(&input).expect("stat input").len();
        let mut args = vec!["--data", data.to_str().expect("utf-8"), "ingest", input.to_str().expect("utf-8"), "--memory", &memory];
        if let Some(t) = &threads {
            args.extend(["--threads", t.as_str()]);
        }
        let (secs, cpu, err) = run(&args);
        let peak = err.split("peak memory ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("?").to_string();
        let log_bytes = dir_bytes(&data.join("log"));
        let _ = std::fs::remove_file(&input);
        let (verify_secs, _, _) = run(&["--data", data.to_str().expect("utf-8"), "verify"]);
        println!(
            "{format:<7} {secs:>9.2} {:>13.0} {cpu:>9.2} {:>11.0} {peak:>10} {:>12.1} {:>11.2} {verify_secs:>10.2}",
            events as f64 / secs,
            cpu * 1e9 / events as f64,
            input_bytes as f64 / events as f64,
            log_bytes as f64 / events as f64,
        );
        let _ = std::fs::remove_dir_all(&data);
    }
    let _ = std::fs::remove_dir_all(&root);
}
