//! Helpers shared by the integration tests that drive the `lambdaflow` binary: temporary
//! data directories, running subcommands, generating input files, and reading the log back.

#![allow(dead_code)]

pub mod http;

use lambdaflow_engine::log::Log;
use lambdaflow_jobs::shop::ShopEvent;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lambdaflow")
}

/// A uniquely named directory under the system temp dir, removed on drop.
pub use lambdaflow_engine::testing::TempDir;

/// Runs `lambdaflow --data DATA -w 2 ARGS...` and returns its output (whatever the exit code).
pub fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(bin()).arg("--data").arg(data).args(["-w", "2"]).args(args).output().expect("spawn lambdaflow")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Like [`run`], but panics with the command's stderr unless it succeeded.
pub fn run_ok(data: &Path, args: &[&str]) -> Output {
    let o = run(data, args);
    assert!(o.status.success(), "lambdaflow {args:?} failed ({}):\n{}", o.status, stderr(&o));
    o
}

/// Writes `events` generated shop events (seed `seed`, `format` ndjson or csv) to `path`.
pub fn gen_file(path: &Path, events: u64, seed: u64, format: &str) {
    let o = Command::new(bin())
        .args(["gen", "shop", "--events", &events.to_string(), "--seed", &seed.to_string(), "--format", format, "--out"])
        .arg(path)
        .output()
        .expect("spawn lambdaflow gen");
    assert!(o.status.success(), "gen failed: {}", stderr(&o));
}

/// Shop events over a small id space (200 customers, 30 products, 4 days), so that keys
/// of successive batches overlap.
pub fn small_events(seed: u64, n: u64) -> Vec<ShopEvent> {
    lambdaflow_jobs::shop::gen::Generator::new(lambdaflow_jobs::shop::gen::GenConfig {
        events: n,
        seed,
        customers: 200,
        products: 30,
        days: 4,
        ..Default::default()
    })
    .collect()
}

/// `events` as an NDJSON request body.
pub fn ndjson(events: &[ShopEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        e.write_ndjson(&mut out);
        out.push(b'\n');
    }
    out
}

/// Parses an input file the way `ingest` does.
pub fn read_events(path: &Path) -> Vec<ShopEvent> {
    lambdaflow_engine::cli::read_events::<ShopEvent>(path).expect("parse generated input")
}

/// Ingests `file` into `data` and checks it succeeded.
pub fn ingest(data: &Path, file: &Path) -> Output {
    run_ok(data, &["ingest", file.to_str().expect("utf-8 path")])
}

/// The log's end offsets (opening it runs recovery).
pub fn end_offsets(data: &Path) -> Vec<u64> {
    Log::open(&data.join("log")).expect("open log").end_offsets()
}

/// Every record payload of every partition, in offset order.
pub fn payloads(log: &Log) -> Vec<Vec<Vec<u8>>> {
    (0..log.partitions())
        .map(|p| {
            let mut out = Vec::new();
            let mut next = 0u64;
            log.read(p, 0, u64::MAX, |offset, bytes| -> Result<(), lambdaflow_engine::log::LogError> {
                assert_eq!(offset, next, "partition {p}: offsets are not contiguous");
                next += 1;
                out.push(bytes.to_vec());
                Ok(())
            })
            .expect("read log");
            out
        })
        .collect()
}

/// Every segment file of the log with its size: a fingerprint of what is stored.
pub fn segment_files(data: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let log = data.join("log");
    for entry in std::fs::read_dir(&log).expect("list log dir") {
        let entry = entry.expect("dir entry");
        if entry.path().is_dir() {
            for seg in std::fs::read_dir(entry.path()).expect("list partition dir") {
                let seg = seg.expect("dir entry");
                out.insert(seg.path(), seg.metadata().expect("stat").len());
            }
        }
    }
    out
}

/// The segment files of partition `p`, in offset order.
pub fn partition_segments(data: &Path, p: u32) -> Vec<PathBuf> {
    let dir = data.join("log").join(format!("p{p:04}"));
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("list partition dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// `lambdaflow query VIEW --json` as key (compact JSON text) → value, the form of
/// `oracle::expected_views` and `testing::all_views`.
pub fn query_json(data: &Path, view: &str) -> BTreeMap<String, Value> {
    let o = run_ok(data, &["query", view, "--json", "--limit", "100000000"]);
    let out = stdout(&o);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("query output is not JSON ({e}): {out}"));
    assert_eq!(v["view"], view);
    items_by_key(&v)
}

/// The `items` of a range answer (`{"view","items":[{"key","value",..}],"freshness"}`, the
/// shape of both `query --json` and `GET /v1/views/{view}`) as key (compact JSON) → value.
pub fn items_by_key(answer: &Value) -> BTreeMap<String, Value> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {answer}"))
        .iter()
        .map(|item| (serde_json::to_string(&item["key"]).expect("key"), item["value"].clone()))
        .collect()
}

/// Asks the service for every view at `min_frontier` (plus `params`, e.g. `&timeout_ms=N`)
/// and asserts each equals the from-scratch computation over `events`, naming `what` and
/// the first differing key.
pub fn assert_views_exact(c: &mut http::Client, min_frontier: &str, params: &str, events: &[ShopEvent], what: &str) {
    use lambdaflow_jobs::shop::oracle::{expected_views, VIEW_NAMES};
    let expected = expected_views(events);
    for view in VIEW_NAMES {
        let r = c.get(&format!("/v1/views/{view}?limit=100000{params}&min_frontier={min_frontier}")).expect("query");
        assert_eq!(r.status, 200, "{what}: {view}: {}", r.text());
        let got = items_by_key(&r.json());
        let want = &expected[view];
        if &got != want {
            let diff = want
                .iter()
                .find(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, v)| format!("key {k}: expected {v}, got {:?}", got.get(k)))
                .unwrap_or_else(|| "extra keys in the answer".into());
            panic!("{what}: {view} differs from the from-scratch computation: {diff}");
        }
    }
}

/// Writes `events` as NDJSON next to `data` and ingests them (`--partitions P`).
pub fn ingest_events(data: &Path, events: &[ShopEvent], partitions: &str) {
    let file = data.with_extension("ingest.ndjson");
    std::fs::write(&file, ndjson(events)).expect("write events");
    run_ok(data, &["ingest", file.to_str().expect("path"), "--partitions", partitions]);
    let _ = std::fs::remove_file(&file);
}

/// Runs `lambdaflow --data DATA -w 2 ARGS` and gives up (failing the test) after `limit`, so
/// that a command that hangs cannot stall the test. A command that starts serving (prints
/// `listening on`) is stopped at once and its output returned, for the caller to refuse.
pub fn run_limited(data: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(data)
        .args(["-w", "2"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lambdaflow");
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = buf.clone();
        let t = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buf, t)
    };
    let (out, out_thread) = drain(Box::new(child.stdout.take().expect("stdout")));
    let (err, err_thread) = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if String::from_utf8_lossy(&err.lock().unwrap()).contains("listening on") {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lambdaflow {args:?} did not finish within {limit:?}; stderr:\n{}", String::from_utf8_lossy(&err.lock().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = (out_thread.join(), err_thread.join());
    let take = |b: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap());
    Output { status, stdout: take(out), stderr: take(err) }
}

/// What a client knows from its acknowledgements: each event at its (partition, offset).
pub struct Acked {
    partitions: u32,
    by_position: BTreeMap<(u32, u64), ShopEvent>,
}

impl Acked {
    /// Nothing acknowledged yet, in a log of `partitions`.
    pub fn new(partitions: u32) -> Acked {
        Acked { partitions, by_position: BTreeMap::new() }
    }

    /// Records one request's events from its ack (`positions`: per partition, the request's
    /// events of that partition in input order). A position acknowledged twice fails, and so
    /// does an ack that does not cover every event of the request.
    pub fn record(&mut self, batch: &[ShopEvent], ack: &Value) {
        use lambdaflow_operators::Event as _;
        let mut by_partition: BTreeMap<u32, Vec<&ShopEvent>> = BTreeMap::new();
        for e in batch {
            by_partition.entry(lambdaflow_engine::partition_of(e.partition_key(), self.partitions)).or_default().push(e);
        }
        let mut n = 0;
        for r in ack["positions"].as_array().expect("positions") {
            let p = r["partition"].as_u64().expect("partition") as u32;
            let (from, to) = (r["from"].as_u64().expect("from"), r["to"].as_u64().expect("to"));
            let evs = &by_partition[&p];
            assert_eq!(evs.len() as u64, to - from, "ack range {r} vs {} events of partition {p}", evs.len());
            for (i, e) in evs.iter().enumerate() {
                let old = self.by_position.insert((p, from + i as u64), *(*e));
                assert!(old.is_none(), "position {p}/{} acknowledged twice", from + i as u64);
                n += 1;
            }
        }
        assert_eq!(n, batch.len(), "the ack covers every event of the request");
    }

    /// Per partition, the end of the acknowledged offsets (checking they leave no gap).
    pub fn ends(&self) -> Vec<u64> {
        let mut ends = vec![0u64; self.partitions as usize];
        for &(p, o) in self.by_position.keys() {
            assert_eq!(o, ends[p as usize], "partition {p}: acknowledged offsets have a gap before {o}");
            ends[p as usize] += 1;
        }
        ends
    }

    /// The events before `frontier`, if every one of them is known.
    pub fn before(&self, frontier: &[u64]) -> Option<Vec<ShopEvent>> {
        let mut out = Vec::new();
        for (p, end) in frontier.iter().enumerate() {
            for o in 0..*end {
                out.push(*self.by_position.get(&(p as u32, o))?);
            }
        }
        Some(out)
    }

    /// Every acknowledged event with its position, in position order.
    pub fn positions(&self) -> impl Iterator<Item = (&(u32, u64), &ShopEvent)> {
        self.by_position.iter()
    }

    /// Every acknowledged event, in position order.
    pub fn events(&self) -> Vec<ShopEvent> {
        self.by_position.values().cloned().collect()
    }

    /// How many events are acknowledged.
    pub fn len(&self) -> usize {
        self.by_position.len()
    }
}

/// A test's seed: `var` if set (to replay a run), else the clock; always odd (xorshift
/// needs a non-zero state).
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7))
        | 1
}

/// A number from the environment variable `var`, or `default`.
pub fn number_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// xorshift64*: small, seeded, good enough for choosing delays and sizes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
