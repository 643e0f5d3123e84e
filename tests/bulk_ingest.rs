//! Streaming bulk ingest through the `lambdaflow` binary: an input larger than the memory
//! bound it is given, a bad line at the very end, SIGKILL at seeded random moments followed
//! by a retry, and the compact compressed log it writes.

mod common;

use common::*;
use lambdaflow_engine::log::{Log, LogConfig};
use lambdaflow_engine::Appender;
use lambdaflow_jobs::shop::ShopEvent;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every record of the log per partition, as the engine's own encoding of `events` (appended
/// through the library to a scratch log with the same partitions) would hold them.
fn expected_payloads(scratch: &Path, events: &[ShopEvent], partitions: u32) -> Vec<Vec<Vec<u8>>> {
    let reference = Appender::open(scratch, LogConfig { partitions, ..LogConfig::default() }).expect("scratch log");
    for chunk in events.chunks(50_000) {
        reference.append(chunk).expect("append");
    }
    payloads(reference.log())
}

/// `base` followed by `more`, partition by partition.
fn concat(base: &[Vec<Vec<u8>>], more: &[Vec<Vec<u8>>]) -> Vec<Vec<Vec<u8>>> {
    base.iter().zip(more).map(|(a, b)| a.iter().chain(b).cloned().collect()).collect()
}

fn log_payloads(data: &Path) -> Vec<Vec<Vec<u8>>> {
    payloads(&Log::open(&data.join("log")).expect("open log"))
}

/// The peak memory `ingest` reports on stderr, in MiB.
fn peak_mib(err: &str) -> u64 {
    let at = err.find("peak memory ").unwrap_or_else(|| panic!("ingest reports its peak memory: {err}"));
    err[at + "peak memory ".len()..].split_whitespace().next().and_then(|n| n.parse().ok()).expect("a number of MiB")
}

// larger_than_memory_bound proves ingest streams: a CSV file several times larger than the
// `--memory` bound it is given is ingested whole, with the process's peak resident memory
// not growing with the input (an input 6 times larger, by far more bytes than the bound,
// peaks within a few MiB of the small one: the process's own baseline is the same for both),
// and the log holds exactly the engine's encoding of every event, in input order per
// partition, compressed to fewer bytes than the input.
#[test]
fn larger_than_memory_bound() {
    let tmp = TempDir::new("bulk-memory");
    let small = tmp.join("small.csv");
    gen_file(&small, 150_000, 4, "csv");
    let o = run_ok(&tmp.join("small-data"), &["ingest", small.to_str().expect("utf-8"), "--memory", "8MiB", "--threads", "2"]);
    let baseline = peak_mib(&stderr(&o)) << 20;
    let input = tmp.join("in.csv");
    gen_file(&input, 900_000, 3, "csv");
    let size = std::fs::metadata(&input).expect("stat").len();
    let small_size = std::fs::metadata(&small).expect("stat").len();
    assert!(size > 3 * (8 << 20) && size - small_size > 4 * (8 << 20), "the input ({size} bytes) is several times the bound");
    let data = tmp.join("data");
    let o = run_ok(&data, &["ingest", input.to_str().expect("utf-8"), "--memory", "8MiB", "--threads", "2"]);
    let err = stderr(&o);
    let peak = peak_mib(&err) << 20;
    assert!(peak < baseline + (12 << 20), "peak memory {peak} bytes for {size} input bytes grew from {baseline} for {small_size}: {err}");
    let events = read_events(&input);
    let want = expected_payloads(&tmp.join("scratch"), &events, 4);
    assert_eq!(log_payloads(&data), want, "the log holds every event once, in input order per partition");
    let log = Log::open(&data.join("log")).expect("open");
    let bytes: u64 = log.disk_bytes().iter().sum();
    assert!(bytes < size / 2, "the log ({bytes} bytes) is compressed well below the CSV ({size} bytes)");
    assert!(stdout(&run_ok(&data, &["verify"])).contains(&format!("log OK: {} records", events.len())));
}

// bad_last_line_stores_nothing proves all-or-nothing: inputs (a file in CSV and in NDJSON, and
// stdin) whose very last line is bad are rejected with exit code 3 naming that line, the
// field and the value, and the log (ends, segment files) is exactly as before, with no
// staging debris; the same inputs without the bad line are then ingested whole.
#[test]
fn bad_last_line_stores_nothing() {
    let tmp = TempDir::new("bulk-bad-last");
    let data = tmp.join("data");
    let seed = tmp.join("seed.ndjson");
    gen_file(&seed, 1000, 1, "ndjson");
    ingest(&data, &seed);
    let before = (end_offsets(&data), segment_files(&data));
    for format in ["csv", "ndjson"] {
        let good = tmp.join(&format!("good.{format}"));
        gen_file(&good, 120_000, 9, format);
        let mut bytes = std::fs::read(&good).expect("read");
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        let bad_line = if format == "csv" {
            "purchase,1700000000000,1,2,3,notanumber,5,,\n".to_string()
        } else {
            "{\"type\":\"purchase\",\"ts\":1700000000000,\"order_id\":1,\"customer_id\":2,\"product_id\":3,\"quantity\":\"notanumber\",\"amount_cents\":5}\n".to_string()
        };
        bytes.extend_from_slice(bad_line.as_bytes());
        let bad = tmp.join(&format!("bad.{format}"));
        std::fs::write(&bad, &bytes).expect("write");
        let o = run(&data, &["ingest", bad.to_str().expect("utf-8"), "--print-acks"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{format}: bad input is exit code 3: {err}");
        assert!(err.contains(&format!("line {}", lines + 1)), "{format}: names the last line {}: {err}", lines + 1);
        assert!(err.contains("quantity") && err.contains("notanumber"), "{format}: names field and value: {err}");
        assert!(stdout(&o).is_empty(), "{format}: nothing acknowledged");
        assert_eq!((end_offsets(&data), segment_files(&data)), before, "{format}: nothing stored");
        assert!(!data.join("log").join("staging").exists(), "{format}: no staging debris");

        let mut child = Command::new(bin())
            .arg("--data")
            .arg(&data)
            .args(["ingest", "-", "--format", format])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
        let o = child.wait_with_output().expect("wait");
        let _ = writer.join();
        assert_eq!(o.status.code(), Some(3), "{format} on stdin: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("line {}", lines + 1)), "{format} on stdin: {}", stderr(&o));
        assert_eq!((end_offsets(&data), segment_files(&data)), before, "{format} on stdin: nothing stored");
    }
    let good = tmp.join("good.csv");
    let o = run_ok(&data, &["ingest", good.to_str().expect("utf-8"), "--print-acks"]);
    assert_eq!(stdout(&o).trim(), "ack 120000");
    assert_eq!(end_offsets(&data).iter().sum::<u64>(), 121_000);
}

// kill_and_retry proves a SIGKILL at any moment of a bulk ingest leaves the log with none of
// the input or all of it, and that re-running the same command then stores it exactly once.
// Seeded (LAMBDAFLOW_BULK_SEED replays the kill delays; LAMBDAFLOW_BULK_ROUNDS sets the
// rounds, default 6): each round kills `ingest` after a random delay within 1.3 times an
// uninterrupted run's duration (so some kills land during staging, some during
// publication, some after), reopens the log (recovery), checks it holds the prior events
// and either nothing or every event of the input, then retries and checks every event is
// there exactly once, in order, and `verify` passes.
#[test]
fn kill_and_retry() {
    let seed = seed_from_env("LAMBDAFLOW_BULK_SEED");
    let rounds = number_from_env("LAMBDAFLOW_BULK_ROUNDS", 6);
    eprintln!("kill_and_retry: LAMBDAFLOW_BULK_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = TempDir::new("bulk-kill");
    let input = tmp.join("in.csv");
    gen_file(&input, 200_000, 5, "csv");
    let events = read_events(&input);
    let prior = tmp.join("prior.ndjson");
    gen_file(&prior, 500, 2, "ndjson");
    let scratch = tmp.join("scratch");
    let prior_events = read_events(&prior);
    let want_prior = expected_payloads(&scratch.join("a"), &prior_events, 4);
    let mut all = prior_events.clone();
    all.extend(events.iter().cloned());
    let want_all = expected_payloads(&scratch.join("b"), &all, 4);
    assert_eq!(concat(&want_prior, &expected_payloads(&scratch.join("c"), &events, 4)), want_all);

    // An uninterrupted run, for the range of kill moments.
    let probe = tmp.join("probe");
    ingest(&probe, &prior);
    let t = Instant::now();
    ingest(&probe, &input);
    let full = t.elapsed();
    assert_eq!(log_payloads(&probe), want_all);

    let (mut nothing, mut everything) = (0, 0);
    for round in 0..rounds {
        let data = tmp.join(&format!("data{round}"));
        ingest(&data, &prior);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 13 / 10));
        let mut child = Command::new(bin())
            .arg("--data")
            .arg(&data)
            .args(["ingest", input.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ingest");
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let got = log_payloads(&data);
        if got == want_prior {
            nothing += 1;
        } else if got == want_all {
            everything += 1;
        } else {
            let counts: Vec<usize> = got.iter().map(Vec::len).collect();
            panic!("round {round} (seed {seed}, kill after {delay:?}, {status}): the log holds part of the input: {counts:?}");
        }
        // The retry: the same command stores the input once, whatever the kill left.
        ingest(&data, &input);
        assert_eq!(log_payloads(&data), want_all, "round {round} (seed {seed}): after the retry every event is there once");
        assert!(stdout(&run_ok(&data, &["verify"])).contains(&format!("log OK: {} records", all.len())));
        let _ = std::fs::remove_dir_all(&data);
    }
    eprintln!("kill_and_retry: {rounds} rounds, {nothing} left nothing, {everything} left everything");
}

/// Runs `ingest -` with `bytes` on stdin and `extra` flags.
fn ingest_stdin(data: &Path, bytes: Vec<u8>, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--data", data.to_str().expect("utf-8"), "ingest", "-"];
    args.extend_from_slice(extra);
    let mut child =
        Command::new(bin()).args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
    let o = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    o
}

// A file ingested twice is stored once (its content is its idempotency key), but stdin has
// no such identity: the same bytes piped twice are two loads, unless --key names them.
#[test]
fn a_file_retry_appends_once_and_stdin_appends_each_time() {
    let tmp = TempDir::new("bulk-keys");
    let events = small_events(5, 300);
    let input = tmp.join("in.ndjson");
    std::fs::write(&input, ndjson(&events)).expect("write");
    let data = tmp.join("data");
    run_ok(&data, &["ingest", input.to_str().expect("utf-8")]);
    let again = run_ok(&data, &["ingest", input.to_str().expect("utf-8")]);
    assert!(stderr(&again).contains("already ingested"), "{}", stderr(&again));
    let count = |data: &Path| end_offsets(data).iter().sum::<u64>();
    assert_eq!(count(&data), 300);
    for _ in 0..2 {
        let o = ingest_stdin(&data, ndjson(&events), &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(count(&data), 900, "stdin without --key appends every time");
    for _ in 0..2 {
        let o = ingest_stdin(&data, ndjson(&events), &["--key", "nightly-2026-12-04"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(count(&data), 1200, "stdin with --key appends once");
}

/// Copies directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("list").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy file");
        }
    }
}

/// Runs `ingest FILE` with `LAMBDAFLOW_CRASH_AT=crash_at` (see engine/src/log/crash.rs).
fn ingest_crashing_at(data: &Path, file: &Path, crash_at: &str) -> std::process::Output {
    Command::new(bin())
        .arg("--data")
        .arg(data)
        .args(["ingest", file.to_str().expect("utf-8")])
        .env("LAMBDAFLOW_CRASH_AT", crash_at)
        .output()
        .expect("spawn ingest")
}

/// Whether `o` is a simulated crash at `crash_at`.
fn crashed_at(o: &std::process::Output, crash_at: &str) -> bool {
    let (phase, k) = crash_at.split_once(':').expect("PHASE:K");
    o.status.code() == Some(86) && stderr(o).contains(&format!("simulated crash at {phase} step {k}: "))
}

// crash_at_every_step proves the bulk append's publication and its recovery are crash-safe
// at every durable step, deterministically (where kill_and_retry's random moments rarely
// land): for each step K of the publication (sealing, the key journal record, the MANIFEST
// replace, each rename into place and directory fsync, the staging removal), an ingest
// stopped there leaves, once the log is reopened, either none of the input or all of it;
// for each step J of the recovery that follows, a retry stopped there still leaves none or
// all; the retry then holds every event exactly once. Both outcomes occur across the steps,
// and the steps run out (an ingest that passes every point succeeds).
#[test]
fn crash_at_every_step() {
    let tmp = TempDir::new("bulk-crash-steps");
    let input = tmp.join("in.csv");
    gen_file(&input, 3_000, 5, "csv");
    let prior = tmp.join("prior.ndjson");
    gen_file(&prior, 200, 2, "ndjson");
    let scratch = tmp.join("scratch");
    let prior_events = read_events(&prior);
    let want_prior = expected_payloads(&scratch.join("a"), &prior_events, 4);
    let mut all = prior_events.clone();
    all.extend(read_events(&input));
    let want_all = expected_payloads(&scratch.join("b"), &all, 4);
    let outcome = |got: &[Vec<Vec<u8>>], at: &str| -> bool {
        if got == want_all {
            true
        } else {
            let counts: Vec<usize> = got.iter().map(Vec::len).collect();
            assert!(got == want_prior, "after a crash at {at}, the log holds part of the input: {counts:?}");
            false
        }
    };
    let (mut nothing, mut everything, mut recover_steps) = (0, 0, 0);
    let mut k = 1;
    loop {
        let data = tmp.join(&format!("k{k}"));
        ingest(&data, &prior);
        let at = format!("publish:{k}");
        let o = ingest_crashing_at(&data, &input, &at);
        if o.status.success() {
            assert_eq!(log_payloads(&data), want_all, "an ingest past every crash point stores the input");
            break;
        }
        assert!(crashed_at(&o, &at), "{at}: {}", stderr(&o));
        // A second crash during the recovery, at each of its steps.
        let mut j = 1;
        loop {
            let copy = tmp.join(&format!("k{k}-j{j}"));
            copy_dir(&data, &copy);
            let rat = format!("recover:{j}");
            let o = ingest_crashing_at(&copy, &input, &rat);
            let done = o.status.success();
            if !done {
                assert!(crashed_at(&o, &rat), "{at} then {rat}: {}", stderr(&o));
                outcome(&log_payloads(&copy), &format!("{at} then {rat}"));
                ingest(&copy, &input);
            }
            assert_eq!(log_payloads(&copy), want_all, "{at} then {rat}: the retry stores every event once");
            let _ = std::fs::remove_dir_all(&copy);
            if done {
                recover_steps += j - 1;
                break;
            }
            j += 1;
            assert!(j < 50, "recovery after {at} does not run out of steps");
        }
        if outcome(&log_payloads(&data), &at) {
            everything += 1;
        } else {
            nothing += 1;
        }
        let o = ingest(&data, &input);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(log_payloads(&data), want_all, "{at}: the retry stores every event once");
        let again = ingest(&data, &input);
        assert!(stderr(&again).contains("already ingested"), "{}", stderr(&again));
        assert_eq!(log_payloads(&data), want_all, "{at}: a second retry appends nothing");
        let _ = std::fs::remove_dir_all(&data);
        k += 1;
        assert!(k < 100, "the publication does not run out of steps");
    }
    eprintln!(
        "crash_at_every_step: {} publication steps ({nothing} left nothing, {everything} everything), {recover_steps} recovery steps",
        k - 1
    );
    assert!(nothing >= 2 && everything >= 2, "both outcomes occur: {nothing} nothing, {everything} everything");
    assert!(recover_steps > k, "the recoveries had steps to crash in");
}

// A staged segment of a committed publication (listed in MANIFEST) whose length is not the
// listed one is damaged acknowledged data: the open refuses it, naming the file and both
// lengths, and neither moves nor deletes it (before, it was deleted as debris).
#[test]
fn staged_file_of_wrong_length_is_refused() {
    let tmp = TempDir::new("bulk-staged-length");
    let input = tmp.join("in.csv");
    gen_file(&input, 2_000, 5, "csv");
    let data = tmp.join("data");
    // The step just after the commit point: the staged files are listed but not moved.
    let at = (1..20)
        .map(|k| format!("publish:{k}"))
        .find(|at| {
            let _ = std::fs::remove_dir_all(&data);
            let o = ingest_crashing_at(&data, &input, at);
            assert!(crashed_at(&o, at), "{at}: {}", stderr(&o));
            stderr(&o).contains("MANIFEST replaced")
        })
        .expect("a crash point after the MANIFEST replace");
    let staged = std::fs::read_dir(data.join("log/staging/p0000")).expect("staging of partition 0").next().expect("a staged file");
    let staged = staged.expect("entry").path();
    let len = std::fs::metadata(&staged).expect("stat").len();
    std::fs::OpenOptions::new().write(true).open(&staged).expect("open").set_len(len - 1).expect("truncate");
    let err = Log::open(&data.join("log")).err().unwrap_or_else(|| panic!("{at}: a short staged file is refused")).to_string();
    assert!(
        err.contains(&staged.display().to_string()) && err.contains(&format!("{} bytes", len - 1)) && err.contains(&format!("{len} bytes")),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&staged).expect("the file is left in place").len(), len - 1);
    let o = run(&data, &["ingest", input.to_str().expect("utf-8")]);
    assert!(!o.status.success(), "ingest refuses the damaged log too");
}
