//! Storage faults injected under the real `lambdaflow` binary. Every case ends either in a
//! correct recovery (every acknowledged event present exactly once, merged answers equal to
//! the oracle over the acknowledged events) or in a clear refusal (non-zero exit whose message
//! names the file and, where it applies, the byte offset). Never a wrong answer, never silent
//! loss, never a panic.
//!
//! Cases (those of tests/durability.rs are not repeated here):
//! 1. `MANIFEST` missing or half-written beside segments: refused; a stale `MANIFEST.tmp`
//!    beside a good `MANIFEST`: removed, recovered.
//! 2. A sealed segment missing, shorter or longer than the manifest says: refused.
//! 3. The last record of an active segment torn at every byte: truncated, the rest kept.
//! 4. The idempotency journal: a torn tail is truncated and the keys before it remembered; a
//!    damaged record followed by others is refused naming the journal and the byte offset.
//! 5. A full disk during HTTP ingest: a file-size limit (`ulimit -f`, EFBIG) reached by a
//!    segment, or by the key journal (ingest stops until a restart); and when the test may
//!    mount one, a tiny tmpfs (ENOSPC), also with small segments that seal while it fills.
//! 6. A batch run that fails on a full disk: reported, nothing published, old views serve.

mod common;

use common::http::{Client, Response, Server};
use common::small_events as events;
use common::*;
use lambdaflow_engine::log::{Log, LogConfig, RECORD_HEADER_BYTES};
use lambdaflow_engine::operators::Event;
use lambdaflow_engine::testing::{all_views, diff};
use lambdaflow_engine::{partition_of, Appender, Encoded};
use lambdaflow_engine::{Lambda, Options};
use lambdaflow_jobs::shop::{oracle::expected_views, Shop, ShopEvent};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
/// A command that should refuse at once is killed (and the test failed) after this.
const LIMIT: Duration = Duration::from_secs(30);
/// `serve` arguments for a command that is expected to refuse before listening.
const SERVE: [&str; 3] = ["serve", "--listen", "127.0.0.1:0"];

// ----- data ------------------------------------------------------------------------------

/// `n` shop events from `seed` over small id spaces (so views have many events per key).
fn write_input(path: &Path, events: &[ShopEvent]) {
    fs::write(path, ndjson(events)).expect("write input file");
}

/// Builds a log of `events` through the library, with `segment_bytes` segments (the CLI has
/// no flag for them), appended in group commits of 100 so that segments seal.
fn build_segmented_log(data: &Path, events: &[ShopEvent], segment_bytes: u64) {
    let appender = Appender::open(data, LogConfig { partitions: PARTITIONS, segment_bytes }).expect("create log");
    for chunk in events.chunks(100) {
        appender.append(chunk).expect("append");
    }
}

/// The byte offsets and payload lengths of a file of `[len][crc][payload]` records (a
/// segment or the key journal).
fn records_of(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        out.push((pos, len));
        pos += RECORD_HEADER_BYTES + len;
    }
    assert_eq!(pos, bytes.len(), "the file is not whole records");
    out
}

/// Framed bytes a request's events add to each partition.
fn bytes_per_partition(batch: &[ShopEvent]) -> Vec<u64> {
    let enc = Encoded::of(batch, PARTITIONS).expect("encode");
    let mut out = vec![0u64; PARTITIONS as usize];
    for (p, payload) in enc.records() {
        out[p as usize] += (RECORD_HEADER_BYTES + payload.len()) as u64;
    }
    out
}

// ----- processes -------------------------------------------------------------------------

fn assert_no_panic(what: &str, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{what}: the process panicked:\n{stderr}");
}

/// Asserts `o` is a clear refusal: a non-zero exit, no answers, no panic, not listening, and
/// a message naming every one of `needles`. Returns stderr.
fn assert_refused(o: &Output, what: &str, needles: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "{what}: must be refused, but exited 0; stdout:\n{}\nstderr:\n{err}", stdout(o));
    assert_no_panic(what, &err);
    assert!(stdout(o).trim().is_empty(), "{what}: a refusal prints no answers:\n{}", stdout(o));
    assert!(!err.contains("listening on"), "{what}: the service must not start:\n{err}");
    assert!(err.contains("error:"), "{what}: the refusal says it is an error:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: the message must name `{n}`:\n{err}");
    }
    err
}

/// `lambdaflow --data DATA -w 2 serve --listen 127.0.0.1:0` under a file-size limit of
/// `blocks` 512-byte blocks: writes past it fail with EFBIG (SIGXFSZ is ignored, and the
/// ignore survives `exec`).
fn start_limited(data: &Path, blocks: u64) -> Server {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("trap \"\" XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""))
        .arg(bin())
        .arg("--data")
        .arg(data)
        .args(["-w", "2"])
        .args(SERVE);
    Server::spawn(cmd)
}

/// Stops a server with SIGTERM, checks it exits cleanly and never panicked, and returns all
/// it printed on stderr (read to its last line, `... stopped`).
fn stop(server: Server, what: &str) -> String {
    let log = server.log.clone();
    let code = server.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.lock().unwrap().contains("lambdaflow serve: stopped") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = log.lock().unwrap().clone();
    assert_no_panic(what, &err);
    assert_eq!(code, Some(0), "{what}: SIGTERM must be a clean exit:\n{err}");
    assert!(err.contains("lambdaflow serve: stopped"), "{what}: the service says it stopped:\n{err}");
    err
}

// ----- HTTP --------------------------------------------------------------------------------

fn post(c: &mut Client, batch: &[ShopEvent], key: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| vec![("Idempotency-Key", k)]).unwrap_or_default();
    c.post("/v1/events", &headers, &ndjson(batch)).expect("post events")
}

fn u64s(v: &Value) -> Vec<u64> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a list of offsets ({e}): {v}"))
}

/// Asserts the service holds exactly `events` and that every view, read at the log's end,
/// equals the oracle over them. Returns the batch version the answers merged.
fn assert_served_exact(c: &mut Client, events: &[ShopEvent], when: &str) -> Value {
    let s = common::http::status(c);
    assert_eq!(s["log"]["events"], events.len() as u64, "{when}: the log holds exactly the acknowledged events");
    let mf = u64s(&s["log"]["end"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let expected = expected_views(events);
    let mut batch_version = Value::Null;
    for (view, want) in &expected {
        let r = c.get(&format!("/v1/views/{view}?limit=100000&min_frontier={mf}")).expect("query");
        assert_eq!(r.status, 200, "{when}: {view}: {}", r.text());
        let answer = r.json();
        let got = items_by_key(&answer);
        if let Some(d) = diff(&[(view.clone(), want.clone())].into(), &[(view.clone(), got)].into()) {
            panic!("{when}: the served answers differ from the oracle over {} events: {d}", events.len());
        }
        batch_version = answer["freshness"]["batch_version"].clone();
    }
    batch_version
}

/// Every merged view of the data directory (through the library, no server running) equals
/// the oracle over `events`.
fn assert_views_exact(data: &Path, events: &[ShopEvent], when: &str) {
    let lambda = Lambda::open(Shop, data, Options { workers: 2, ..Options::default() }).expect("open data dir");
    lambda.sync(Duration::from_secs(60)).expect("speed layer catches up");
    let merged = all_views(&lambda).expect("read all views");
    if let Some(d) = diff(&expected_views(events), &merged) {
        panic!("{when}: merged views differ from the oracle over {} events: {d}", events.len());
    }
}

/// The log (read through the library, no server running) holds exactly the acknowledged
/// events: every record is the engine's encoding of the event acknowledged at its position,
/// and nothing else is there.
fn assert_log_holds(data: &Path, acked: &Acked, when: &str) {
    let log = Log::open(&data.join("log")).expect("open log");
    assert_eq!(log.end_offsets(), acked.ends(), "{when}: the log ends where the acknowledgements end");
    let got = payloads(&log);
    for ((p, o), e) in acked.positions() {
        let want = Encoded::of(std::slice::from_ref(e), PARTITIONS).expect("encode").bytes;
        assert!(got[*p as usize][*o as usize] == want, "{when}: partition {p} offset {o} is not the event acknowledged there");
    }
}

/// Waits until the service has finished `n` batch runs (ok or failed) and returns the last
/// run's outcome (`batch_run.last`).
fn wait_batch_runs(c: &mut Client, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = common::http::status(c);
        let run = &s["batch_run"];
        let done = run["ok"].as_u64().expect("ok") + run["failed"].as_u64().expect("failed");
        if done >= n && run["running"].is_null() {
            return run["last"].clone();
        }
        assert!(Instant::now() < deadline, "batch run {n} did not finish: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- 1. MANIFEST -----------------------------------------------------------------------

// manifest_missing_or_half_written_is_refused proves that the log never guesses its layout:
// with segments on disk, a missing MANIFEST, a half-written one (truncated JSON, as a torn
// non-atomic copy would leave) and an empty one are each refused by `serve`, `verify` and
// `query` with a non-zero exit naming DIR/log/MANIFEST, and nothing is written (no manifest
// is invented, no segment touched). It also proves that a stale, half-written MANIFEST.tmp
// beside a good MANIFEST (a crash during a manifest update) is removed with a note on
// stderr and ignored: `query` answers, `verify` counts every record, and every view equals
// the oracle over the ingested events.
#[test]
fn manifest_missing_or_half_written_is_refused() {
    let tmp = TempDir::new("sf-manifest");
    let data = tmp.join("data");
    let evs = events(11, 600);
    let input = tmp.join("in.ndjson");
    write_input(&input, &evs);
    ingest(&data, &input);
    let manifest = data.join("log").join("MANIFEST");
    let original = fs::read(&manifest).expect("read MANIFEST");
    let files = segment_files(&data);
    let name = manifest.display().to_string();

    let cases: [(&str, Option<Vec<u8>>, &str); 3] = [
        ("missing", None, "MANIFEST is missing but partition directories exist"),
        ("half-written", Some(original[..original.len() / 2].to_vec()), "not a valid manifest"),
        ("empty", Some(Vec::new()), "not a valid manifest"),
    ];
    for (what, content, detail) in cases {
        match &content {
            None => fs::remove_file(&manifest).expect("remove MANIFEST"),
            Some(bytes) => fs::write(&manifest, bytes).expect("write MANIFEST"),
        }
        for args in [&SERVE[..], &["verify"], &["query", "customer_spend"]] {
            let o = run_limited(&data, args, LIMIT);
            assert_refused(&o, &format!("MANIFEST {what}, {args:?}"), &[&name, detail]);
        }
        assert_eq!(fs::read(&manifest).ok(), content, "MANIFEST {what}: the refusal must not write a manifest");
        assert_eq!(segment_files(&data), files, "MANIFEST {what}: the refusal must not touch a segment");
    }

    fs::write(&manifest, &original).expect("restore MANIFEST");
    // Half of a manifest that, if believed, would claim a sealed segment that does not exist.
    let stale = data.join("log").join("MANIFEST.tmp");
    fs::write(&stale, br#"{"format_version":1,"partitions":4,"segment_bytes":4096,"sealed":[[{"base_offset":0,"rec"#).expect("write tmp");
    let o = run_limited(&data, &["query", "customer_spend", "--json", "--limit", "100000"], LIMIT);
    assert!(o.status.success(), "a stale MANIFEST.tmp must not stop recovery:\n{}", stderr(&o));
    assert_no_panic("stale MANIFEST.tmp", &stderr(&o));
    assert!(stderr(&o).contains("removed a stale MANIFEST.tmp"), "the removal is noted:\n{}", stderr(&o));
    assert!(!stale.exists(), "the stale MANIFEST.tmp is removed");
    assert_eq!(fs::read(&manifest).expect("read MANIFEST"), original, "the good MANIFEST is kept as it was");
    let answer: Value = serde_json::from_str(stdout(&o).trim()).expect("query --json");
    assert_eq!(items_by_key(&answer), expected_views(&evs)["customer_spend"], "exact after removing the stale tmp");
    let o = run_ok(&data, &["verify"]);
    assert!(stdout(&o).contains("log OK: 600 records"), "{}", stdout(&o));
    assert_views_exact(&data, &evs, "after a stale MANIFEST.tmp");
}

// ----- 2. sealed segments ------------------------------------------------------------------

// sealed_segment_missing_or_resized_is_refused proves that open checks every sealed segment
// against the manifest and refuses, naming the file, when one is missing, one byte short,
// half its length, empty, or longer than recorded (garbage appended): `serve`, `status` and
// `verify` each exit non-zero with the segment's path and what differs (the lengths), and
// nothing on disk is changed (no truncation, no manifest rewrite). Restoring the file makes
// `verify` pass and every view equal the oracle again, so the refusal pinpointed the damage.
#[test]
fn sealed_segment_missing_or_resized_is_refused() {
    let tmp = TempDir::new("sf-sealed");
    let data = tmp.join("data");
    let evs = events(21, 1000);
    build_segmented_log(&data, &evs, 4096);
    let segs = partition_segments(&data, 1);
    assert!(segs.len() >= 3, "expected sealed segments before the active one: {segs:?}");
    let victim = segs[1].clone();
    let original = fs::read(&victim).expect("read segment");
    let len = original.len();
    let manifest = data.join("log").join("MANIFEST");
    let manifest_before = fs::read(&manifest).expect("read MANIFEST");
    let name = victim.display().to_string();
    let mismatch = |now: usize| format!("sealed segment is {now} bytes but MANIFEST records {len}");
    let mut longer = original.clone();
    longer.extend_from_slice(&original[..40]);

    let cases: [(&str, Option<Vec<u8>>, String); 5] = [
        ("missing", None, "sealed segment listed in MANIFEST is missing".to_string()),
        ("one byte short", Some(original[..len - 1].to_vec()), mismatch(len - 1)),
        ("half", Some(original[..len / 2].to_vec()), mismatch(len / 2)),
        ("empty", Some(Vec::new()), mismatch(0)),
        ("longer", Some(longer.clone()), mismatch(longer.len())),
    ];
    for (what, content, detail) in cases {
        match &content {
            None => fs::remove_file(&victim).expect("remove segment"),
            Some(bytes) => fs::write(&victim, bytes).expect("write segment"),
        }
        let files = segment_files(&data);
        for args in [&SERVE[..], &["status", "--json"], &["verify"]] {
            let o = run_limited(&data, args, LIMIT);
            assert_refused(&o, &format!("sealed segment {what}, {args:?}"), &[&name, &detail]);
        }
        assert_eq!(segment_files(&data), files, "sealed segment {what}: the refusal changes no segment");
        assert_eq!(fs::read(&victim).ok(), content, "sealed segment {what}: the damaged file is left as it is");
        assert_eq!(fs::read(&manifest).expect("read MANIFEST"), manifest_before, "sealed segment {what}: MANIFEST unchanged");
    }

    fs::write(&victim, &original).expect("restore segment");
    let o = run_ok(&data, &["verify"]);
    assert!(stdout(&o).contains("log OK: 1000 records"), "{}", stdout(&o));
    assert_eq!(query_json(&data, "customer_spend"), expected_views(&evs)["customer_spend"]);
    assert_views_exact(&data, &evs, "after restoring the sealed segment");
}

// ----- 3. torn active tail -----------------------------------------------------------------

// torn_last_record_is_truncated_at_every_byte proves recovery of a torn final record in an
// active segment that follows sealed ones (a crash during an unacknowledged append), at
// every possible tear: for each cut from 1 byte of the last record to all but its last byte
// (inside the header, at the header's end, anywhere in the payload), `verify` recovers the
// log, reports the truncation naming the file and the record's byte offset, keeps every
// other record (N-1 records verified) and leaves the file exactly at the record's start.
// A tear left to `query` is recovered the same way and the answers equal the oracle over
// the surviving events; every view too. Resending the dropped event (its append was never
// acknowledged) puts it back exactly once: the segment is then byte-identical to before the
// tear and every view equals the oracle over all events.
#[test]
fn torn_last_record_is_truncated_at_every_byte() {
    let tmp = TempDir::new("sf-torn");
    let data = tmp.join("data");
    let evs = events(31, 1000);
    build_segmented_log(&data, &evs, 4096);
    let p = 2u32;
    let segs = partition_segments(&data, p);
    assert!(segs.len() >= 2, "the active segment should follow sealed ones: {segs:?}");
    let active = segs.last().expect("active segment").clone();
    let pristine = fs::read(&active).expect("read active segment");
    let files = segment_files(&data);
    let (start, len) = *records_of(&pristine).last().expect("a record");
    let framed = RECORD_HEADER_BYTES + len;
    // The last record of partition p holds the last input event routed there.
    let last = evs.iter().rposition(|e| partition_of(e.partition_key(), PARTITIONS) == p).expect("an event in p");
    let kept: Vec<ShopEvent> = evs.iter().enumerate().filter(|(i, _)| *i != last).map(|(_, e)| *e).collect();
    let note = format!("truncated {} at byte {start}", active.display());

    for cut in 1..framed {
        fs::write(&active, &pristine[..start + cut]).expect("tear the last record");
        let o = run_limited(&data, &["verify"], LIMIT);
        let err = stderr(&o);
        assert!(o.status.success(), "cut {cut}/{framed}: a torn tail must be recovered:\n{err}");
        assert_no_panic(&format!("cut {cut}"), &err);
        assert!(stdout(&o).contains(&format!("log OK: {} records", evs.len() - 1)), "cut {cut}: {}", stdout(&o));
        assert!(err.contains(&note), "cut {cut}: the truncation is reported with file and offset:\n{err}");
        assert_eq!(fs::metadata(&active).expect("stat").len(), start as u64, "cut {cut}: truncated at the record's start");
    }

    fs::write(&active, &pristine[..start + framed / 2]).expect("tear again");
    let o = run_limited(&data, &["query", "customer_spend", "--json", "--limit", "100000"], LIMIT);
    assert!(o.status.success(), "query recovers a torn tail:\n{}", stderr(&o));
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    let answer: Value = serde_json::from_str(stdout(&o).trim()).expect("query --json");
    assert_eq!(items_by_key(&answer), expected_views(&kept)["customer_spend"], "exact over the surviving events");
    assert_views_exact(&data, &kept, "after truncating the torn record");

    let resend = tmp.join("resend.ndjson");
    write_input(&resend, std::slice::from_ref(&evs[last]));
    ingest(&data, &resend);
    // A local ingest seals the active segment as it is and publishes the resent event in a
    // compressed segment after it: the event gets exactly the torn one's offset.
    assert_eq!(fs::read(&active).expect("read"), &pristine[..start], "the active segment is sealed as recovered");
    let reference = tmp.join("reference");
    build_segmented_log(&reference, &evs, 4096);
    let log = Log::open(&data.join("log")).expect("open");
    let want = Log::open(&reference.join("log")).expect("open reference");
    assert!(payloads(&log) == payloads(&want), "the resent event lands exactly where the torn one was");
    drop((log, want));
    assert_eq!(segment_files(&data).len(), files.len() + 1, "one new (compressed) segment");
    assert_views_exact(&data, &evs, "after resending the dropped event");
}

// ----- 4. idempotency journal ----------------------------------------------------------------

// journal_torn_tail_is_truncated_and_damage_refused proves both outcomes for the key
// journal DIR/keys/journal, written by a real service (5 keyed requests, one record each).
// Torn tail: a 6th group's record cut short by a crash during its prepare (so its events
// never reached the log) in several shapes (3 bytes of header, a bare header, half a
// record, all but one byte, a whole record failing its checksum) is truncated at start-up,
// with a note naming the journal, back to exactly the 5 valid records, and the log is left
// alone. Keys before the tear are remembered: after a restart, retries of earlier keys are
// duplicates with their original positions and append nothing, while the torn group's
// request, sent again, is appended once. Damage: a flipped byte in the payload, checksum
// or length field of a middle record makes `serve` refuse with the journal's path and the
// record's byte offset, changing nothing; restored, the data directory serves exactly.
#[test]
fn journal_torn_tail_is_truncated_and_damage_refused() {
    let tmp = TempDir::new("sf-journal");
    let data = tmp.join("data");
    let batches: Vec<Vec<ShopEvent>> = (0..6).map(|i| events(40 + i, 100)).collect();
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let mut acked = Acked::new(PARTITIONS);
    let mut positions = Vec::new();
    for (i, b) in batches[..5].iter().enumerate() {
        let r = post(&mut c, b, Some(&format!("j{i}")));
        assert_eq!(r.status, 200, "{}", r.text());
        acked.record(b, &r.json());
        positions.push(r.json()["positions"].clone());
    }
    stop(server, "first service");

    let journal = data.join("keys").join("journal");
    let jname = journal.display().to_string();
    let pristine = fs::read(&journal).expect("read journal");
    let recs = records_of(&pristine);
    assert_eq!(recs.len(), 5, "one journal record per keyed group commit");
    let ends = end_offsets(&data);
    assert_eq!(ends, acked.ends());
    let (pos, len) = recs[4];
    let frame = &pristine[pos..pos + RECORD_HEADER_BYTES + len];
    let mut bad_crc = frame.to_vec();
    bad_crc[RECORD_HEADER_BYTES + len / 2] ^= 0x20;
    let tails: [(&str, Vec<u8>); 5] = [
        ("3 bytes of a header", frame[..3].to_vec()),
        ("a bare header", frame[..RECORD_HEADER_BYTES].to_vec()),
        ("half a record", frame[..RECORD_HEADER_BYTES + len / 2].to_vec()),
        ("all but one byte", frame[..frame.len() - 1].to_vec()),
        ("a whole record failing its checksum", bad_crc),
    ];
    for (what, tail) in &tails {
        let mut torn = pristine.clone();
        torn.extend_from_slice(tail);
        fs::write(&journal, &torn).expect("write torn journal");
        let o = run_limited(&data, &["status", "--json"], LIMIT);
        let err = stderr(&o);
        assert!(o.status.success(), "journal tail {what}: must be recovered:\n{err}");
        assert_no_panic(what, &err);
        assert!(err.contains(&jname) && err.contains("truncating the torn tail"), "journal tail {what}: noted:\n{err}");
        assert_eq!(fs::read(&journal).expect("read journal"), pristine, "journal tail {what}: truncated to the valid records");
        let st: Value = serde_json::from_str(&stdout(&o)).expect("status --json");
        assert_eq!(u64s(&st["log_end"]), ends, "journal tail {what}: the log is untouched");
    }

    // Torn once more, this time recovered by the service itself.
    let mut torn = pristine.clone();
    torn.extend_from_slice(&tails[2].1);
    fs::write(&journal, &torn).expect("write torn journal");
    let server = Server::start(&data, &[]);
    assert!(server.stderr().contains("truncating the torn tail"), "{}", server.stderr());
    let mut c = server.client();
    for i in [0usize, 2, 4] {
        let r = post(&mut c, &batches[i], Some(&format!("j{i}")));
        assert_eq!(r.status, 200, "retry j{i}: {}", r.text());
        assert_eq!(r.json()["duplicate"], true, "retry j{i}: the key is remembered");
        assert_eq!(r.json()["positions"], positions[i], "retry j{i}: answered with the original positions");
    }
    assert_eq!(common::http::status(&mut c)["log"]["events"], 500, "retries of remembered keys append nothing");
    let r = post(&mut c, &batches[5], Some("j5"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["duplicate"], false, "the torn group was never acknowledged, so it is appended now");
    acked.record(&batches[5], &r.json());
    let again = post(&mut c, &batches[5], Some("j5"));
    assert_eq!((again.status, again.json()["duplicate"].clone()), (200, Value::Bool(true)));
    assert_served_exact(&mut c, &acked.events(), "after the torn journal tail");
    stop(server, "service after the torn tail");
    assert_log_holds(&data, &acked, "after the torn journal tail");

    let pristine = fs::read(&journal).expect("read journal");
    let recs = records_of(&pristine);
    assert_eq!(recs.len(), 6);
    let ends = end_offsets(&data);
    let (pos, len) = recs[2];
    for (what, at) in [("payload", pos + RECORD_HEADER_BYTES + len / 2), ("checksum", pos + 5), ("length", pos)] {
        let mut damaged = pristine.clone();
        damaged[at] ^= 0x01;
        fs::write(&journal, &damaged).expect("write damaged journal");
        let o = run_limited(&data, &SERVE, LIMIT);
        assert_refused(&o, &format!("journal {what} flipped"), &[&jname, &format!("at byte {pos}")]);
        assert_eq!(fs::read(&journal).expect("read journal"), damaged, "journal {what} flipped: nothing is modified");
        assert_eq!(end_offsets(&data), ends, "journal {what} flipped: the log is untouched");
    }
    fs::write(&journal, &pristine).expect("restore journal");
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let r = post(&mut c, &batches[3], Some("j3"));
    assert_eq!((r.status, r.json()["duplicate"].clone()), (200, Value::Bool(true)), "{}", r.text());
    assert_served_exact(&mut c, &acked.events(), "after restoring the journal");
    stop(server, "service after restoring the journal");
}

// ----- 5. full disk during ingest ------------------------------------------------------------

// full_disk_during_ingest_file_size_limit proves that a full disk during HTTP ingest costs
// no acknowledged event and stores nothing of a failed request. The service runs under
// `ulimit -f 40` (20 KiB per file, SIGXFSZ ignored), so appending to a segment fails with
// EFBIG once that segment would pass 20 KiB. 30 keyed requests of 100 events and then 10
// of one event are posted; before each, the test computes from the log's per-partition
// bytes whether the request fits, and every request must get 200 exactly when it fits and
// 503 (naming the cause) exactly when it does not: no 200 for a request that was not
// stored, no other status, and after each answer the log holds exactly the acknowledged
// events (nothing of a failed request). Small requests that fit after failures succeed (the
// failure does not poison ingest). Queries keep answering exactly meanwhile. After a
// restart without the limit every acknowledged event is there once and every view equals
// the oracle; retries of acknowledged keys are duplicates; retries of the failed requests
// with their keys are appended exactly once; the log then holds exactly the acknowledged
// events, each at its acknowledged position.
#[test]
fn full_disk_during_ingest_file_size_limit() {
    const BLOCKS: u64 = 40;
    let limit = BLOCKS * 512;
    let tmp = TempDir::new("sf-efbig");
    let data = tmp.join("data");
    let server = start_limited(&data, BLOCKS);
    let mut c = server.client();
    let batches: Vec<Vec<ShopEvent>> = (0..40u64).map(|i| if i < 30 { events(500 + i, 100) } else { events(500 + i, 1) }).collect();
    let mut acked = Acked::new(PARTITIONS);
    let mut acks: BTreeMap<usize, Value> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut bytes = vec![0u64; PARTITIONS as usize];
    for (i, b) in batches.iter().enumerate() {
        let need = bytes_per_partition(b);
        let fits = bytes.iter().zip(&need).all(|(have, more)| have + more <= limit);
        let r = post(&mut c, b, Some(&format!("efbig-{i}")));
        match r.status {
            200 => {
                assert!(fits, "request {i} was acknowledged but cannot have been stored (needs {need:?} on {bytes:?} of {limit})");
                assert_eq!(r.json()["duplicate"], false);
                acked.record(b, &r.json());
                acks.insert(i, r.json());
            }
            503 => {
                assert!(!fits, "request {i} fits ({need:?} on {bytes:?} of {limit}) but failed: {}", r.text());
                let msg = r.json()["error"].as_str().expect("error message").to_string();
                assert!(msg.contains("File too large") && msg.contains("nothing of the request is stored"), "request {i}: {msg}");
                failed.push(i);
            }
            other => panic!("request {i}: HTTP {other} on a full disk (expected 200 or 503): {}", r.text()),
        }
        let s = common::http::status(&mut c);
        assert_eq!(s["log"]["events"], acked.len() as u64, "request {i}: the log holds exactly the acknowledged events");
        assert_eq!(u64s(&s["log"]["end"]), acked.ends(), "request {i}: nothing of a failed request is stored");
        bytes = u64s(&s["log"]["bytes"]);
    }
    let first_failure = *failed.first().unwrap_or_else(|| panic!("no request hit the {limit}-byte limit"));
    assert!(first_failure >= 5, "the limit should allow several requests first: first failure at {first_failure}");
    assert!(failed.len() >= 5, "the limit should be hit by several requests: {failed:?}");
    assert!(acks.keys().any(|i| *i > first_failure), "requests that fit succeed again after a failure (ingest is not poisoned)");
    let jlen = fs::metadata(data.join("keys").join("journal")).expect("journal").len();
    assert!(jlen < limit / 2, "the journal ({jlen} bytes) stays far below the limit: the segments hit it");
    assert_served_exact(&mut c, &acked.events(), "while the disk is full");
    let err = stop(server, "service under the file-size limit");
    eprintln!("service under ulimit -f {BLOCKS}: {} acknowledged, {} failed; its stderr:\n{err}", acks.len(), failed.len());

    let server = Server::start(&data, &[]);
    let mut c = server.client();
    assert_served_exact(&mut c, &acked.events(), "after a restart without the limit");
    for (i, ack) in acks.iter().take(3) {
        let r = post(&mut c, &batches[*i], Some(&format!("efbig-{i}")));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["duplicate"], true);
        assert_eq!(r.json()["positions"], ack["positions"]);
    }
    for i in &failed {
        let r = post(&mut c, &batches[*i], Some(&format!("efbig-{i}")));
        assert_eq!(r.status, 200, "retry of failed request {i}: {}", r.text());
        assert_eq!(r.json()["duplicate"], false, "failed request {i} was never stored, so its retry appends it");
        acked.record(&batches[*i], &r.json());
    }
    let r = post(&mut c, &batches[failed[0]], Some(&format!("efbig-{}", failed[0])));
    assert_eq!((r.status, r.json()["duplicate"].clone()), (200, Value::Bool(true)), "a second retry appends nothing");
    assert_eq!(acked.len(), batches.iter().map(Vec::len).sum::<usize>(), "every request is now stored");
    assert_served_exact(&mut c, &acked.events(), "after retrying the failed requests");
    stop(server, "service after the full disk");
    assert_log_holds(&data, &acked, "after retrying the failed requests");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let uid = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(str::to_string)));
        if uid.as_deref().is_some_and(|u| u != "0") {
            return Err(format!("not running as root (effective uid {})", uid.unwrap_or_default()));
        }
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("mount -t tmpfs failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Gives the file system more room (the operator freeing space).
    fn grow(&self, size: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().expect("run mount");
        assert!(o.status.success(), "remount failed: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Posts 2,000-event keyed requests to a service whose data directory lives on a 2 MiB tmpfs
/// (with `segment_bytes` segments when given: the log is created with them through the
/// library, and the service keeps them) until several have failed, then grows the file
/// system and checks recovery. See the two tests below.
fn full_disk_on_tmpfs(tag: &str, segment_bytes: Option<u64>) {
    let tmp = TempDir::new(tag);
    let mnt = tmp.join("mnt");
    fs::create_dir_all(&mnt).expect("create mount point");
    let fs_guard = match Tmpfs::mount(&mnt, "2m") {
        Ok(g) => g,
        Err(why) => {
            eprintln!("{tag}: skipped, cannot mount a tmpfs: {why}");
            return;
        }
    };
    let data = mnt.join("data");
    if let Some(bytes) = segment_bytes {
        build_segmented_log(&data, &[], bytes);
    }
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let mut acked = Acked::new(PARTITIONS);
    let mut batches = Vec::new();
    let mut failed = Vec::new();
    for i in 0..60u64 {
        let b = events(900 + i, 2000);
        let r = post(&mut c, &b, Some(&format!("enospc-{i}")));
        match r.status {
            200 => acked.record(&b, &r.json()),
            503 => {
                let msg = r.json()["error"].as_str().expect("error message").to_string();
                assert!(msg.contains("No space left on device"), "{tag}: request {i}: the 503 names the cause: {msg}");
                failed.push(i as usize);
            }
            other => panic!("{tag}: request {i}: HTTP {other} on a full disk (expected 200 or 503): {}", r.text()),
        }
        batches.push(b);
        let s = common::http::status(&mut c);
        assert_eq!(s["log"]["events"], acked.len() as u64, "{tag}: request {i}: the log holds exactly the acknowledged events");
        assert_eq!(u64s(&s["log"]["end"]), acked.ends(), "{tag}: request {i}: nothing of a failed request is stored");
        if failed.len() >= 4 {
            break;
        }
    }
    assert!(!failed.is_empty(), "{tag}: 2 MiB never filled up");
    assert!(failed[0] >= 2, "{tag}: some requests should succeed before the disk is full: {failed:?}");
    assert_served_exact(&mut c, &acked.events(), &format!("{tag}: while the tmpfs is full"));
    let err = stop(server, &format!("{tag}: service on a full tmpfs"));
    eprintln!("{tag}: {} events acknowledged, requests {failed:?} failed; the service's stderr:\n{err}", acked.len());

    fs_guard.grow("64m");
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    assert_served_exact(&mut c, &acked.events(), &format!("{tag}: after a restart with room"));
    for i in &failed {
        let r = post(&mut c, &batches[*i], Some(&format!("enospc-{i}")));
        assert_eq!(r.status, 200, "{tag}: retry of failed request {i}: {}", r.text());
        assert_eq!(r.json()["duplicate"], false, "{tag}: failed request {i} was never stored");
        acked.record(&batches[*i], &r.json());
        let again = post(&mut c, &batches[*i], Some(&format!("enospc-{i}")));
        assert_eq!(again.json()["duplicate"], true, "{tag}: a second retry appends nothing");
    }
    assert_served_exact(&mut c, &acked.events(), &format!("{tag}: after retrying the failed requests"));
    stop(server, &format!("{tag}: service after the full tmpfs"));
    assert_log_holds(&data, &acked, &format!("{tag}: after the full tmpfs"));
    let o = run_ok(&data, &["verify"]);
    assert!(stdout(&o).contains(&format!("log OK: {} records", acked.len())), "{tag}: {}", stdout(&o));
    if segment_bytes.is_some() {
        assert!((0..PARTITIONS).all(|p| partition_segments(&data, p).len() >= 3), "{tag}: segments were sealed as the disk filled");
    }
}

// full_disk_during_ingest_tmpfs proves the same contract as the file-size-limit case with a
// real ENOSPC: the data directory lives on a 2 MiB tmpfs and 2,000-event keyed requests are
// posted until several have failed. Every answer is 200 or 503 (naming "No space left on
// device"); after each, the log holds exactly the acknowledged events; queries keep
// answering exactly. After the file system is grown and the service restarted, every
// acknowledged event is there once, views equal the oracle, the failed requests' retries
// with their keys are appended exactly once, and `verify` passes. Without root or mount
// permission the case prints why and returns.
#[test]
fn full_disk_during_ingest_tmpfs() {
    full_disk_on_tmpfs("sf-enospc", None);
}

// full_disk_while_sealing_segments_tmpfs proves the same with 16 KiB segments: a request
// puts ~25 KiB in each partition, so every append, the failing ones too, seals segments,
// rewrites MANIFEST and creates segment files, here on a full disk:
// the undo (remove the new segments, restore the manifest, truncate) leaves exactly the
// acknowledged events, the restart finds a consistent manifest, and `verify` passes.
#[test]
fn full_disk_while_sealing_segments_tmpfs() {
    full_disk_on_tmpfs("sf-enospc-seal", Some(16 << 10));
}

// journal_full_stops_ingest_until_restart proves the other full-disk path: the key journal,
// not a segment, hits the limit. The service runs under `ulimit -f 8` (4 KiB per file) and
// gets one-event requests with 250-character keys, so each journal record is ~400 bytes
// while the segments stay tiny. The request whose journal record does not fit gets 503
// naming the journal and "File too large"; from then on ingest is stopped (every request,
// keyed or not, 503 "ingest is stopped until the service restarts"), nothing is stored,
// queries keep answering exactly, and the service says so on stderr. After a restart
// without the limit (the journal's torn tail truncated) the acknowledged keys are
// remembered (their retries are duplicates with the original positions), the failed
// requests' retries are appended exactly once, and the log holds exactly the acknowledged
// events: the stopped state does not survive the restart.
#[test]
fn journal_full_stops_ingest_until_restart() {
    const BLOCKS: u64 = 8;
    let tmp = TempDir::new("sf-journal-full");
    let data = tmp.join("data");
    let journal = data.join("keys").join("journal");
    let key = |i: usize| format!("{i:0>250}");
    let server = start_limited(&data, BLOCKS);
    let mut c = server.client();
    let batches: Vec<Vec<ShopEvent>> = (0..20u64).map(|i| events(300 + i, 1)).collect();
    let mut acked = Acked::new(PARTITIONS);
    let mut acks: BTreeMap<usize, Value> = BTreeMap::new();
    let mut failed = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let r = post(&mut c, b, Some(&key(i)));
        match r.status {
            200 => {
                assert!(failed.is_empty(), "request {i} acknowledged after ingest was stopped");
                acked.record(b, &r.json());
                acks.insert(i, r.json());
            }
            503 => {
                let msg = r.json()["error"].as_str().expect("error message").to_string();
                assert!(msg.contains("File too large") && msg.contains(&journal.display().to_string()), "request {i}: {msg}");
                if !failed.is_empty() {
                    assert!(msg.contains("ingest is stopped until the service restarts"), "request {i}: {msg}");
                }
                failed.push(i);
            }
            other => panic!("request {i}: HTTP {other} with a full journal (expected 200 or 503): {}", r.text()),
        }
        let s = common::http::status(&mut c);
        assert_eq!(u64s(&s["log"]["end"]), acked.ends(), "request {i}: nothing of a failed request is stored");
    }
    assert!(failed.first().is_some_and(|f| *f >= 3), "the journal should fill after a few requests: {failed:?}");
    assert!(fs::metadata(&journal).expect("journal").len() <= BLOCKS * 512);
    let unkeyed = post(&mut c, &events(399, 1), None);
    assert_eq!(unkeyed.status, 503, "unkeyed ingest is stopped too: {}", unkeyed.text());
    assert_eq!(common::http::status(&mut c)["log"]["events"], acked.len() as u64);
    assert_served_exact(&mut c, &acked.events(), "with ingest stopped");
    let err = stop(server, "service with a full journal");
    assert!(err.contains("refusing further appends until a restart"), "the stop is on stderr:\n{err}");

    let server = Server::start(&data, &[]);
    let mut c = server.client();
    assert_served_exact(&mut c, &acked.events(), "after the restart");
    for (i, ack) in &acks {
        let r = post(&mut c, &batches[*i], Some(&key(*i)));
        assert_eq!((r.status, r.json()["duplicate"].clone()), (200, Value::Bool(true)), "retry {i}: {}", r.text());
        assert_eq!(r.json()["positions"], ack["positions"], "retry {i}: the original positions");
    }
    for i in &failed {
        let r = post(&mut c, &batches[*i], Some(&key(*i)));
        assert_eq!((r.status, r.json()["duplicate"].clone()), (200, Value::Bool(false)), "retry of failed {i}: {}", r.text());
        acked.record(&batches[*i], &r.json());
    }
    assert_served_exact(&mut c, &acked.events(), "after retrying the failed requests");
    stop(server, "service after the full journal");
    assert_log_holds(&data, &acked, "after the full journal");
}

// ----- 6. batch run on a full disk -----------------------------------------------------------

// batch_run_on_full_disk_fails_cleanly proves that a batch run that cannot write its views
// publishes nothing and the service keeps answering exactly. A service ingests 1,500
// events, publishes batch v1, and ingests 1,000 more; it is restarted under `ulimit -f 2`
// (1 KiB per file: smaller than the views, while the log is only read). There, ingest
// answers 503 and stores nothing; `POST /v1/batch` runs and fails: `/v1/status` reports the
// failed run (`batch_run.last.ok == false`, an error naming the views directory and "File
// too large", `failed == 1`) and the metrics count it; `views/CURRENT` and v1's META.json
// are unchanged and no v2 directory exists; every view, merging batch v1 with the speed
// layer, still equals the oracle over all 2,500 events. Restarted without the limit, the
// next run publishes v2, removes the failed run's leftovers, and answers stay exact.
#[test]
fn batch_run_on_full_disk_fails_cleanly() {
    let tmp = TempDir::new("sf-batch");
    let data = tmp.join("data");
    let first = events(60, 1500);
    let second = events(61, 1000);
    let all: Vec<ShopEvent> = first.iter().chain(&second).cloned().collect();

    let server = Server::start(&data, &[]);
    let mut c = server.client();
    assert_eq!(post(&mut c, &first, None).status, 200);
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    let last = wait_batch_runs(&mut c, 1);
    assert_eq!((last["ok"].clone(), last["version"].clone()), (Value::Bool(true), Value::from(1)), "{last}");
    assert_eq!(post(&mut c, &second, None).status, 200);
    stop(server, "service before the limit");

    let views = data.join("views");
    let current = fs::read(views.join("CURRENT")).expect("CURRENT");
    assert_eq!(current, b"v000001\n");
    let meta = fs::read(views.join("v000001").join("META.json")).expect("META.json");
    let largest = fs::read_dir(views.join("v000001")).expect("list v1").map(|e| e.expect("entry").metadata().expect("stat").len()).max();
    assert!(largest.unwrap_or(0) > 1024, "some view or seed file must exceed the 1 KiB limit: {largest:?}");
    let listing = || -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(&views).expect("list views").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };

    let server = start_limited(&data, 2);
    let mut c = server.client();
    assert_eq!(assert_served_exact(&mut c, &all, "under the limit, before the batch run"), 1);
    let r = post(&mut c, &events(62, 50), None);
    assert_eq!(r.status, 503, "ingest on a full disk: {}", r.text());
    assert_eq!(common::http::status(&mut c)["log"]["events"], 2500, "nothing of the failed request is stored");
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    let last = wait_batch_runs(&mut c, 1);
    assert_eq!(last["ok"], false, "the batch run cannot write its views: {last}");
    let error = last["error"].as_str().unwrap_or_else(|| panic!("the failed run has an error: {last}"));
    assert!(
        error.contains("File too large") && error.contains(&views.display().to_string()),
        "the error names the cause and file: {error}"
    );
    let s = common::http::status(&mut c);
    assert_eq!((s["batch_run"]["failed"].clone(), s["batch_run"]["ok"].clone()), (Value::from(1), Value::from(0)), "{s}");
    assert_eq!(s["batch"]["version"], 1, "the previous version keeps serving: {s}");
    let metrics = c.get("/metrics").expect("metrics").text();
    assert!(metrics.contains("lambdaflow_batch_runs_total{result=\"failed\"} 1"), "{metrics}");
    assert_eq!(assert_served_exact(&mut c, &all, "after the failed batch run"), 1, "answers still merge batch v1");
    assert_eq!(fs::read(views.join("CURRENT")).expect("CURRENT"), current, "CURRENT is unchanged");
    assert_eq!(fs::read(views.join("v000001").join("META.json")).expect("META"), meta, "v1 is unchanged");
    assert!(!listing().iter().any(|n| n.starts_with('v') && n != "v000001"), "no new version is published: {:?}", listing());
    let err = stop(server, "service under the limit");
    assert!(err.contains("batch run failed, the previous views keep serving"), "the failure is on stderr:\n{err}");

    let server = Server::start(&data, &[]);
    let mut c = server.client();
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    let last = wait_batch_runs(&mut c, 1);
    assert_eq!((last["ok"].clone(), last["version"].clone()), (Value::Bool(true), Value::from(2)), "{last}");
    assert_eq!(fs::read(views.join("CURRENT")).expect("CURRENT"), b"v000002\n");
    assert!(!listing().iter().any(|n| n.starts_with(".tmp-")), "the failed run's leftovers are removed: {:?}", listing());
    assert_eq!(assert_served_exact(&mut c, &all, "after the next batch run"), 2);
    stop(server, "service after the limit");
}

// journal_length_field_damage_is_refused proves that damage to the *length field* of a
// middle journal record is refused like
// damage anywhere else in it, instead of being taken for a torn tail. Five keyed requests
// are acknowledged; then each of the four length bytes of the 3rd journal record is flipped
// in turn. Each must make `serve` refuse, naming the journal and the record's byte offset,
// leaving the file as it is. A flip in a high length byte makes the length exceed the
// rest of the file; taking that for a torn tail would forget the keys of records 3 to 5
// whose events are in the log (a retry of key j3 would then be appended a second time).
#[test]
fn journal_length_field_damage_is_refused() {
    let tmp = TempDir::new("sf-journal-len");
    let data = tmp.join("data");
    let batches: Vec<Vec<ShopEvent>> = (0..5).map(|i| events(40 + i, 100)).collect();
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let mut acked = Acked::new(PARTITIONS);
    for (i, b) in batches.iter().enumerate() {
        let r = post(&mut c, b, Some(&format!("j{i}")));
        assert_eq!(r.status, 200, "{}", r.text());
        acked.record(b, &r.json());
    }
    stop(server, "first service");
    let journal = data.join("keys").join("journal");
    let jname = journal.display().to_string();
    let pristine = fs::read(&journal).expect("read journal");
    let (pos, _) = records_of(&pristine)[2];
    for byte in 0..4 {
        let mut damaged = pristine.clone();
        damaged[pos + byte] ^= 0x01;
        fs::write(&journal, &damaged).expect("write damaged journal");
        let o = run_limited(&data, &SERVE, LIMIT);
        assert_refused(&o, &format!("length byte {byte} flipped"), &[&jname, &format!("at byte {pos}")]);
        assert_eq!(fs::read(&journal).expect("read journal"), damaged, "length byte {byte} flipped: nothing is modified");
    }
    fs::write(&journal, &pristine).expect("restore journal");
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let r = post(&mut c, &batches[3], Some("j3"));
    assert_eq!((r.status, r.json()["duplicate"].clone()), (200, Value::Bool(true)), "{}", r.text());
    assert_served_exact(&mut c, &acked.events(), "after restoring the journal");
    stop(server, "service after restoring the journal");
}

// ----- 5. compressed segments --------------------------------------------------------------

/// The byte offsets of the blocks of a compressed segment file (after its 8-byte header).
fn blocks_of(bytes: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&bytes[..4], b"LFZS", "a compressed segment starts with its magic");
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        out.push((pos, len));
        pos += RECORD_HEADER_BYTES + len;
    }
    assert_eq!(pos, bytes.len(), "the file is not whole blocks");
    out
}

// compressed_segment_damage_is_located proves that damage inside a compressed segment (as a
// local `ingest` writes them) is still located by file and byte offset: a flipped byte in
// the middle of the second block makes `verify`, `batch` and `query` fail naming the segment
// file and the block's byte offset, and restoring the byte makes `verify` pass again.
#[test]
fn compressed_segment_damage_is_located() {
    let tmp = TempDir::new("sf-compressed");
    let data = tmp.join("data");
    let input = tmp.join("in.csv");
    gen_file(&input, 30_000, 21, "csv");
    run_ok(&data, &["ingest", input.to_str().expect("utf-8"), "--partitions", "1"]);
    let segs = partition_segments(&data, 0);
    let sealed = segs.iter().find(|s| fs::read(s).is_ok_and(|b| b.starts_with(b"LFZS"))).expect("a compressed segment").clone();
    let original = fs::read(&sealed).expect("read segment");
    let blocks = blocks_of(&original);
    assert!(blocks.len() >= 2, "several blocks: {blocks:?}");
    let (pos, len) = blocks[1];
    let mut bytes = original.clone();
    bytes[pos + RECORD_HEADER_BYTES + len / 2] ^= 0x10;
    fs::write(&sealed, &bytes).expect("write flipped segment");
    let name = sealed.display().to_string();
    for args in [&["verify"][..], &["batch"], &["query", "customer_spend"]] {
        let o = run_limited(&data, args, LIMIT);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} must fail on a flipped byte: {}", stdout(&o));
        assert!(err.contains(&name) && err.contains(&format!("at byte {pos}")), "{args:?} names the file and block offset {pos}: {err}");
        assert_no_panic(&format!("{args:?}"), &err);
    }
    fs::write(&sealed, &original).expect("restore segment");
    assert!(stdout(&run_ok(&data, &["verify"])).contains("log OK: 30000 records"));
}

// old_format_log_opens_and_grows proves that a log written in the plain format (every
// segment uncompressed, MANIFEST format_version 1, as the library's group commit still
// writes it and every earlier build did) opens unchanged, and that a local `ingest` extends
// it: the old active segment is sealed as it is, the new events follow in compressed
// segments, MANIFEST says format_version 2, and the log holds exactly the old events then
// the new ones, per partition, with `verify` passing.
#[test]
fn old_format_log_opens_and_grows() {
    let tmp = TempDir::new("sf-old-format");
    let data = tmp.join("data");
    let old = events(31, 3000);
    build_segmented_log(&data, &old, 8 << 10);
    let manifest = data.join("log").join("MANIFEST");
    let m: Value = serde_json::from_slice(&fs::read(&manifest).expect("read")).expect("json");
    assert_eq!(m["format_version"], 1);
    let plain = segment_files(&data);
    assert!(stdout(&run_ok(&data, &["verify"])).contains("log OK: 3000 records"));

    let input = tmp.join("new.ndjson");
    let new = events(32, 5000);
    write_input(&input, &new);
    ingest(&data, &input);
    let m: Value = serde_json::from_slice(&fs::read(&manifest).expect("read")).expect("json");
    assert_eq!(m["format_version"], 2);
    for (path, len) in &plain {
        if fs::metadata(path).is_ok_and(|m| m.len() == *len) {
            assert!(!fs::read(path).expect("read").starts_with(b"LFZS"), "old segments stay plain: {}", path.display());
        }
    }
    let reference = Appender::open(&tmp.join("scratch"), LogConfig { partitions: PARTITIONS, ..LogConfig::default() }).expect("scratch");
    reference.append(&old).expect("old");
    reference.append(&new).expect("new");
    let log = Log::open(&data.join("log")).expect("open");
    assert!(payloads(&log) == payloads(reference.log()), "old events then new ones, per partition");
    drop(log);
    assert!(stdout(&run_ok(&data, &["verify"])).contains("log OK: 8000 records"));
    let all: Vec<ShopEvent> = old.iter().chain(&new).cloned().collect();
    assert_views_exact(&data, &all, "after a bulk ingest into an old-format log");
}
