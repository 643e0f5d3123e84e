//! Durability of the master dataset and of batch views, through the `lambdaflow` binary:
//! a SIGKILL in the middle of an ingest loses no acknowledged event and leaves a clean,
//! exact log; a torn tail is truncated on recovery; a flipped byte in a sealed segment is
//! reported (file and byte offset) and never served; a damaged batch view is refused.

mod common;

use common::*;
use lambdaflow_engine::log::{Log, LogConfig, LogError};
use lambdaflow_engine::testing::{all_views, diff};
use lambdaflow_engine::Appender;
use lambdaflow_engine::{Lambda, Options};
use lambdaflow_jobs::shop::{oracle::expected_views, Shop, ShopEvent};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn options() -> Options {
    Options { workers: 2, log: LogConfig::default(), ..Options::default() }
}

/// Checks every merged view of the data directory (via the library) against the oracle
/// over `events`.
fn assert_views_exact(data: &Path, events: &[ShopEvent], when: &str) {
    let lambda = Lambda::open(Shop, data, options()).expect("open data dir");
    lambda.sync(Duration::from_secs(60)).expect("speed layer catches up");
    let merged = all_views(&lambda).expect("read all views");
    if let Some(d) = diff(&expected_views(events), &merged) {
        panic!("{when}: merged views differ from the oracle over the {} events in the log: {d}", events.len());
    }
}

/// Runs `ingest --print-acks` on `input` and SIGKILLs it after `delay`; returns whether it
/// printed its acknowledgement (`ack N`, N = `total`) before the kill.
fn ingest_and_kill(data: &Path, input: &Path, total: usize, delay: Duration) -> bool {
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(data)
        .args(["ingest", input.to_str().expect("utf-8 path"), "--print-acks"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ingest");
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait().expect("wait for ingest");
    let mut out = String::new();
    let _ = child.stdout.take().expect("stdout").read_to_string(&mut out);
    match out.trim() {
        "" => false,
        ack => {
            assert_eq!(ack, format!("ack {total}"), "one acknowledgement, of the whole input");
            true
        }
    }
}

// kill_mid_ingest proves contract point 1 under a crash: an ingest process SIGKILLed at any
// moment loses no acknowledged event and serves nothing half-written. A local ingest is one
// all-or-nothing append acknowledged once (`ack N` after everything is durable), so after
// the kill the log must hold exactly none of the input or all of it (all of it if the ack
// was printed). Method: ingest a generated CSV file with `--print-acks` and SIGKILL it after
// seeded delays spread over an uninterrupted run's duration (LAMBDAFLOW_DURABILITY_SEED
// replays them); reopen the log (recovery) and compare it, partition by partition, with the
// engine's own encoding of the input. Then `verify` must pass, and `batch`, `query
// customer_spend --json` and every merged view (library) must equal the oracle over exactly
// the events the log holds.
#[test]
fn kill_mid_ingest() {
    let seed = seed_from_env("LAMBDAFLOW_DURABILITY_SEED");
    eprintln!("kill_mid_ingest: LAMBDAFLOW_DURABILITY_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = TempDir::new("kill");
    let input = tmp.join("in.csv");
    gen_file(&input, 300_000, 7, "csv");
    let events = read_events(&input);
    let reference = Appender::open(&tmp.join("scratch"), LogConfig::default()).expect("scratch log");
    reference.append(&events).expect("append");
    let want = payloads(reference.log());
    drop(reference);
    let probe = tmp.join("probe");
    let t = std::time::Instant::now();
    ingest(&probe, &input);
    let full = t.elapsed();
    for round in 0..3 {
        let data = tmp.join(&format!("data{round}"));
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 12 / 10));
        let acked = ingest_and_kill(&data, &input, events.len(), delay);
        let log = match Log::open(&data.join("log")) {
            Ok(log) => log,
            // Killed before it created the log, or between creating its directory and
            // writing its manifest (a fast ingest makes both likely for the early delays):
            // there is no log, so nothing is stored and nothing may have been acknowledged.
            // The next command must treat the directory as a new data directory.
            Err(LogError::NotFound { .. }) => {
                assert!(!acked, "round {round} (seed {seed}): the ingest was acknowledged but has no log");
                eprintln!("kill after {delay:?}: before the log existed; nothing stored");
                // What the kill left (maybe an empty log directory) does not block the
                // next ingest.
                run_ok(&data, &["ingest", input.to_str().expect("utf-8 path")]);
                let o = run_ok(&data, &["verify"]);
                let whole = format!("log OK: {} records", events.len());
                assert!(stdout(&o).contains(&whole), "verify after a retried ingest: {}", stdout(&o));
                let _ = std::fs::remove_dir_all(&data);
                continue;
            }
            Err(e) => panic!("round {round} (seed {seed}): the log does not reopen after the kill: {e}"),
        };
        let got = payloads(&log);
        drop(log);
        let in_log: Vec<ShopEvent> = if got.iter().all(Vec::is_empty) {
            assert!(!acked, "round {round} (seed {seed}): the ingest was acknowledged but the log is empty");
            Vec::new()
        } else {
            assert!(got == want, "round {round} (seed {seed}, kill after {delay:?}): the log holds part of the input");
            events.clone()
        };
        eprintln!("kill after {delay:?}: acknowledged {acked}, {} events in the log", in_log.len());
        let o = run_ok(&data, &["verify"]);
        assert!(stdout(&o).contains(&format!("log OK: {} records", in_log.len())), "verify: {}", stdout(&o));
        run_ok(&data, &["batch"]);
        let expected = expected_views(&in_log);
        let spend = query_json(&data, "customer_spend");
        if let Some(d) = diff(
            &[("customer_spend".to_string(), expected["customer_spend"].clone())].into(),
            &[("customer_spend".to_string(), spend)].into(),
        ) {
            panic!("round {round}: `query customer_spend` differs from the oracle: {d}");
        }
        assert_views_exact(&data, &in_log, &format!("kill after {delay:?} ({} in log)", in_log.len()));
        let _ = std::fs::remove_dir_all(&data);
    }
}

// an_empty_log_directory_is_no_log proves that what a kill between creating the log's
// directory and writing its manifest leaves behind (an empty `log/`) holds nothing and does
// not block the next ingest. Method: create the empty directory, ingest 2,000 events, and
// `verify` must count exactly them.
#[test]
fn an_empty_log_directory_is_no_log() {
    let tmp = TempDir::new("emptylog");
    let data = tmp.join("data");
    std::fs::create_dir_all(data.join("log")).expect("create an empty log directory");
    assert!(matches!(Log::open(&data.join("log")), Err(LogError::NotFound { .. })), "an empty directory is no log");
    let input = tmp.join("in.ndjson");
    gen_file(&input, 2_000, 5, "ndjson");
    run_ok(&data, &["ingest", input.to_str().expect("utf-8 path")]);
    let o = run_ok(&data, &["verify"]);
    assert!(stdout(&o).contains("log OK: 2000 records"), "verify: {}", stdout(&o));
}

/// Appends `tail` to the file at `path`.
fn append_bytes(path: &Path, tail: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open segment");
    f.write_all(tail).expect("append garbage");
}

/// The byte offsets and payload lengths of the records of a segment file.
fn records_of(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        out.push((pos, len));
        pos += 8 + len;
    }
    assert_eq!(pos, bytes.len(), "segment file is not whole records");
    out
}

// torn_tail_is_truncated proves that recovery detects a torn or corrupt tail of an active
// segment and truncates it, keeping every acknowledged record and serving none of the tail.
// Method: ingest 2,000 events (4 partitions), then damage the end of each partition's
// active segment a different way: half a record (valid header, half the payload), garbage
// bytes (an absurd length field), a whole record with a wrong checksum, and 3 bytes of an
// incomplete header. `status --json` must succeed and report exactly the acknowledged end
// offsets (each partition truncated back to its acknowledged length, with a note on
// stderr), `verify` must pass, and a following ingest must get contiguous offsets: every
// partition then equals the engine's own encoding of both inputs appended in order, and
// `query customer_spend` equals the oracle over both inputs.
#[test]
fn torn_tail_is_truncated() {
    let tmp = TempDir::new("torn");
    let data = tmp.join("data");
    let (a, b) = (tmp.join("a.ndjson"), tmp.join("b.ndjson"));
    gen_file(&a, 2_000, 11, "ndjson");
    gen_file(&b, 500, 12, "ndjson");
    // Through the library's group commit, which leaves records in the active segments (a
    // local `ingest` publishes sealed, compressed segments only).
    {
        let appender = Appender::open(&data, LogConfig::default()).expect("create log");
        appender.append(&read_events(&a)).expect("append a");
    }
    let acked_ends = end_offsets(&data);
    assert_eq!(acked_ends.len(), 4);
    assert_eq!(acked_ends.iter().sum::<u64>(), 2_000);
    let before = segment_files(&data);

    for p in 0..4u32 {
        let segs = partition_segments(&data, p);
        let active = segs.last().expect("an active segment");
        let bytes = std::fs::read(active).expect("read segment");
        let (pos, len) = records_of(&bytes)[0];
        let record = &bytes[pos..pos + 8 + len];
        let tail: Vec<u8> = match p {
            0 => record[..8 + len / 2].to_vec(),
            1 => b"\xde\xad\xbe\xef not a record".to_vec(),
            2 => {
                let mut r = record.to_vec();
                r[5] ^= 0x10;
                r
            }
            _ => vec![0u8; 3],
        };
        append_bytes(active, &tail);
    }
    assert_ne!(segment_files(&data), before, "the tails were appended");

    let o = run_ok(&data, &["status", "--json"]);
    let status: Value = serde_json::from_str(&stdout(&o)).expect("status --json is JSON");
    let log_end: Vec<u64> = serde_json::from_value(status["log_end"].clone()).expect("log_end");
    assert_eq!(log_end, acked_ends, "status reports exactly the acknowledged records");
    assert_eq!(stderr(&o).matches("truncated").count(), 4, "each torn tail is reported:\n{}", stderr(&o));
    assert_eq!(segment_files(&data), before, "each active segment is truncated back to its acknowledged length");

    let o = run_ok(&data, &["verify"]);
    assert!(stdout(&o).contains("log OK: 2000 records"), "{}", stdout(&o));

    ingest(&data, &b);
    let (ea, eb) = (read_events(&a), read_events(&b));
    let scratch = Appender::open(&tmp.join("scratch"), LogConfig::default()).expect("scratch log");
    scratch.append(&ea).expect("append a");
    scratch.append(&eb).expect("append b");
    let log = Log::open(&data.join("log")).expect("open log");
    assert_eq!(log.end_offsets(), scratch.log().end_offsets());
    // `payloads` asserts offsets are contiguous from 0.
    assert!(payloads(&log) == payloads(scratch.log()), "the log holds exactly both inputs, in order, per partition");
    drop(log);

    let all: Vec<ShopEvent> = ea.into_iter().chain(eb).collect();
    assert_eq!(query_json(&data, "customer_spend"), expected_views(&all)["customer_spend"]);
}

// flipped_byte_in_sealed_segment proves that corruption of acknowledged data in a sealed
// segment is detected and reported, never served or skipped. Method: build a one-partition
// log with 4 KiB segments through the library (so the 1,000 events fill many sealed
// segments), flip one byte in the payload of the third record of the second segment
// (keeping the file's length, so the manifest's length check passes). `verify` must exit
// non-zero naming the segment file and the record's byte offset; `batch` must fail naming
// the file and publish no view; `query` must fail rather than answer. Restoring the byte
// makes `verify` pass again, so the report pinpoints exactly the damage.
#[test]
fn flipped_byte_in_sealed_segment() {
    let tmp = TempDir::new("flip");
    let data = tmp.join("data");
    let input = tmp.join("in.csv");
    gen_file(&input, 1_000, 13, "csv");
    let events = read_events(&input);
    {
        let appender = Appender::open(&data, LogConfig { partitions: 1, segment_bytes: 4096 }).expect("create log");
        for chunk in events.chunks(100) {
            appender.append(chunk).expect("append");
        }
    }
    let segs = partition_segments(&data, 0);
    assert!(segs.len() >= 4, "expected several sealed segments, got {segs:?}");
    let sealed = &segs[1];
    let original = std::fs::read(sealed).expect("read segment");
    let (pos, len) = records_of(&original)[2];
    let mut bytes = original.clone();
    bytes[pos + 8 + len / 2] ^= 0x04;
    std::fs::write(sealed, &bytes).expect("write flipped segment");

    let o = run(&data, &["verify"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "verify must fail on a flipped byte; stdout: {}", stdout(&o));
    assert!(err.contains(&sealed.display().to_string()), "verify names the segment file: {err}");
    assert!(err.contains(&format!("at byte {pos}")), "verify names the record's byte offset {pos}: {err}");
    assert!(err.contains("checksum"), "verify says what is wrong: {err}");

    let o = run_limited(&data, &["batch"], Duration::from_secs(60));
    let err = stderr(&o);
    assert!(!o.status.success(), "batch over a corrupt log must fail");
    assert!(
        err.contains(&sealed.display().to_string()) && err.contains(&format!("at byte {pos}")),
        "batch names the file and offset: {err}"
    );
    assert!(!data.join("views").join("CURRENT").exists(), "no batch version may be published over a corrupt log");

    let o = run_limited(&data, &["query", "customer_spend"], Duration::from_secs(60));
    assert!(!o.status.success(), "query over a corrupt log must fail, not answer: {}", stdout(&o));
    assert!(stdout(&o).is_empty(), "no answers from a corrupt log: {}", stdout(&o));
    assert!(stderr(&o).contains(&sealed.display().to_string()), "query names the file: {}", stderr(&o));

    std::fs::write(sealed, &original).expect("restore segment");
    let o = run_ok(&data, &["verify"]);
    assert!(stdout(&o).contains("log OK: 1000 records"), "{}", stdout(&o));
}

// half_written_batch_view_is_refused proves that a damaged batch view is refused with its
// file named rather than served, and that the log alone still gives exact answers. Method:
// ingest 5,000 events, run `batch`, truncate `views/v000001/view.revenue_by_day.bin` to half
// its length: `query revenue_by_day` must fail, name that file and print no answer. Then
// remove `views/CURRENT` (as if the batch had never been published): queries must be
// answered from the log alone (no batch version in the freshness, all 5,000 events in the
// speed layer) and equal the oracle, for `revenue_by_day` through the CLI and for every view
// through the library.
#[test]
fn half_written_batch_view_is_refused() {
    let tmp = TempDir::new("view");
    let data = tmp.join("data");
    let input = tmp.join("in.ndjson");
    gen_file(&input, 5_000, 21, "ndjson");
    let events = read_events(&input);
    ingest(&data, &input);
    run_ok(&data, &["batch"]);
    let expected = expected_views(&events);
    assert_eq!(query_json(&data, "revenue_by_day"), expected["revenue_by_day"], "exact after the batch");

    let view_file = data.join("views").join("v000001").join("view.revenue_by_day.bin");
    let len = std::fs::metadata(&view_file).expect("view file exists").len();
    let f = std::fs::OpenOptions::new().write(true).open(&view_file).expect("open view file");
    f.set_len(len / 2).expect("truncate view file");
    drop(f);

    let o = run_limited(&data, &["query", "revenue_by_day"], Duration::from_secs(60));
    assert!(!o.status.success(), "a half-written view must be refused; got answers:\n{}", stdout(&o));
    assert!(stdout(&o).is_empty(), "no answers from a damaged view: {}", stdout(&o));
    assert!(stderr(&o).contains(&view_file.display().to_string()), "the error names the file: {}", stderr(&o));

    std::fs::remove_file(data.join("views").join("CURRENT")).expect("remove CURRENT");
    let o = run_ok(&data, &["query", "revenue_by_day", "--json", "--limit", "100000"]);
    let first: Value = serde_json::from_str(stdout(&o).lines().next().expect("answers")).expect("JSON");
    assert_eq!(first["freshness"]["batch_version"], Value::Null, "served from the log alone");
    assert_eq!(first["freshness"]["speed_events"], 5_000);
    assert_eq!(query_json(&data, "revenue_by_day"), expected["revenue_by_day"], "exact from the log alone");
    assert_views_exact(&data, &events, "without CURRENT");
}
