//! Durability of the master dataset and of batch views, through the `lambdaflow` binary:
//! a SIGKILL in the middle of an ingest loses no acknowledged event and leaves a clean,
//! exact log; a torn tail is truncated on recovery; a flipped byte in a sealed segment is
//! reported (file and byte offset) and never served; a damaged batch view is refused.

mod common;

use common::*;
use lambdaflow_engine::log::{Log, LogConfig};
use lambdaflow_engine::operators::Event;
use lambdaflow_engine::testing::{all_views, diff};
use lambdaflow_engine::{partition_of, Appender};
use lambdaflow_engine::{Lambda, Options};
use lambdaflow_jobs::shop::{oracle::expected_views, Shop, ShopEvent};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHUNK: usize = 20_000;

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

/// What one killed ingest left behind.
enum Killed {
    /// The ingest finished before the kill: the input is too small for this machine.
    FinishedFirst,
    /// Killed; this many events had been acknowledged (the last `ack` line printed).
    After(usize),
}

/// Runs `ingest --chunk 20000 --print-acks` on `input` and SIGKILLs it `delay` after it has
/// printed `kill_after` acks.
fn ingest_and_kill(data: &Path, input: &Path, total: usize, kill_after: usize, delay: Duration) -> Killed {
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(data)
        .args(["ingest", input.to_str().expect("utf-8 path"), "--chunk", &CHUNK.to_string(), "--print-acks"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ingest");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut acks = Vec::new();
    let mut killed = false;
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).expect("read ack line") == 0 {
            break;
        }
        let n: usize = line
            .trim()
            .strip_prefix("ack ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ingest output line {line:?}"));
        acks.push(n);
        if acks.len() == kill_after && !killed {
            std::thread::sleep(delay);
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            child.kill().expect("SIGKILL ingest");
            killed = true;
        }
    }
    // Acks printed before the kill landed but not yet read are acknowledgements too.
    let status = child.wait().expect("wait for ingest");
    let mut err = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
    for (i, n) in acks.iter().enumerate() {
        assert_eq!(*n, ((i + 1) * CHUNK).min(total), "ack {} says {n}", i + 1);
    }
    let acked = acks.last().copied().unwrap_or(0);
    if !killed || acked == total {
        assert!(killed || status.success(), "ingest failed on its own ({status}): {err}");
        return Killed::FinishedFirst;
    }
    assert!(!status.success(), "a killed ingest cannot succeed");
    Killed::After(acked)
}

/// Checks the log left by a killed ingest of `events` with `acked` events acknowledged:
/// per partition, the log holds exactly a prefix of that partition's input events, at least
/// all acknowledged ones and at most those of one more chunk. Returns the events it holds.
fn check_killed_log(data: &Path, scratch: &Path, events: &[ShopEvent], acked: usize) -> Vec<ShopEvent> {
    let log = Log::open(&data.join("log")).expect("log reopens after the kill");
    let parts = log.partitions();
    let got = payloads(&log);
    drop(log);

    // The engine's own encoding and routing of the same events, appended in two steps:
    // the acknowledged ones, then the chunk that was in flight.
    let in_flight = (acked + CHUNK).min(events.len());
    let reference = Appender::open(scratch, LogConfig { partitions: parts, ..LogConfig::default() }).expect("scratch log");
    reference.append(&events[..acked]).expect("append acked");
    let lower = reference.log().end_offsets();
    reference.append(&events[acked..in_flight]).expect("append in-flight chunk");
    let upper = reference.log().end_offsets();
    let want = payloads(reference.log());
    drop(reference);

    let mut held = vec![0usize; parts as usize];
    for p in 0..parts as usize {
        let n = got[p].len() as u64;
        assert!(n >= lower[p], "partition {p}: {n} records, but {} were acknowledged: acknowledged events lost", lower[p]);
        assert!(n <= upper[p], "partition {p}: {n} records, more than the {} of the acknowledged events plus one chunk", upper[p]);
        if let Some(i) = (0..got[p].len()).find(|&i| got[p][i] != want[p][i]) {
            panic!("partition {p}: record at offset {i} is not the input event routed there (altered or reordered)");
        }
        held[p] = got[p].len();
    }

    // The same events as values: the first held[p] input events routed to partition p.
    let mut seen = vec![0usize; parts as usize];
    let mut in_log = Vec::new();
    for e in &events[..in_flight] {
        let p = partition_of(e.partition_key(), parts) as usize;
        if seen[p] < held[p] {
            in_log.push(e.clone());
        }
        seen[p] += 1;
    }
    let routed_acked: Vec<u64> =
        (0..parts).map(|p| events[..acked].iter().filter(|e| partition_of(e.partition_key(), parts) == p).count() as u64).collect();
    assert_eq!(routed_acked, lower, "partition_of routes like the engine");
    assert_eq!(in_log.len(), held.iter().sum::<usize>());
    in_log
}

// kill_mid_ingest proves contract point 1 under a crash: an ingest process SIGKILLed in the
// middle of its group commits loses no acknowledged event and serves nothing half-written.
// Method: ingest a generated CSV file with `--chunk 20000 --print-acks`, SIGKILL the process
// right after its 3rd (then, on fresh directories, its 10th, and 4 ms after its 6th, which
// usually lands inside the next chunk's write or fsync) `ack` line while it is still
// appending, and read any ack lines still in the pipe. Then reopen the log (recovery) and
// compare it, partition by partition, with the engine's own encoding of the input: each
// partition must hold exactly a prefix of the events routed to it, covering every
// acknowledged event and at most one more chunk. Finally `verify` must pass, and `batch`,
// `query customer_spend --json` and every merged view (library) must equal the oracle over
// exactly the events the log holds. If the ingest finishes before the kill, the input is
// doubled and the round repeated.
#[test]
fn kill_mid_ingest() {
    let tmp = TempDir::new("kill");
    let mut size = 600_000usize;
    let mut input = tmp.join("in.csv");
    gen_file(&input, size as u64, 7, "csv");
    let mut events = read_events(&input);
    // A kill right after an ack, and one a few ms later, likely in the next chunk's write
    // or fsync.
    let rounds = [(3usize, Duration::ZERO), (10, Duration::ZERO), (6, Duration::from_millis(4))];
    for (round, (kill_after, delay)) in rounds.into_iter().enumerate() {
        let data = tmp.join(&format!("data{round}"));
        let acked = loop {
            match ingest_and_kill(&data, &input, events.len(), kill_after, delay) {
                Killed::After(n) => break n,
                Killed::FinishedFirst => {
                    assert!(size < 8_000_000, "ingest of {size} events finished before {kill_after} acks could be read");
                    size *= 2;
                    input = tmp.join(&format!("in{size}.csv"));
                    gen_file(&input, size as u64, 7, "csv");
                    events = read_events(&input);
                    let _ = std::fs::remove_dir_all(&data);
                }
            }
        };
        assert!(acked >= kill_after * CHUNK && acked < events.len(), "acked {acked}");
        let scratch = tmp.join(&format!("scratch{round}"));
        let in_log = check_killed_log(&data, &scratch, &events, acked);
        let _ = std::fs::remove_dir_all(&scratch);
        eprintln!("kill {delay:?} after {kill_after} acks of {}: {acked} acknowledged, {} in the log", events.len(), in_log.len());

        let o = run_ok(&data, &["verify"]);
        assert!(stdout(&o).contains(&format!("log OK: {} records", in_log.len())), "verify: {}", stdout(&o));

        run_ok(&data, &["batch"]);
        let expected = expected_views(&in_log);
        let spend = query_json(&data, "customer_spend");
        if let Some(d) = diff(
            &[("customer_spend".to_string(), expected["customer_spend"].clone())].into(),
            &[("customer_spend".to_string(), spend)].into(),
        ) {
            panic!("kill after {kill_after} acks: `query customer_spend` differs from the oracle: {d}");
        }
        assert_views_exact(&data, &in_log, &format!("kill after {kill_after} acks ({acked} acked, {} in log)", in_log.len()));
        let _ = std::fs::remove_dir_all(&data);
    }
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
    ingest(&data, &a);
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
