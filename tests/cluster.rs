//! Cluster mode through the real binary: batch runs and speed layers on 1, 2 and 4 worker
//! processes (1–2 threads each) on loopback give the same merged views as the from-scratch
//! computation, in batch mode, in speed mode and across handovers; the layers scale
//! independently; a worker process killed mid-batch makes that attempt fail cleanly and
//! the retry succeed; a speed process killed is replaced from the batch cut; nothing
//! acknowledged is lost; a peer that never comes up is a clear error.

mod common;

use common::http::{Client, Server};
use common::{ndjson, small_events, TempDir};
use lambdaflow_jobs::shop::oracle::{expected_views, VIEW_NAMES};
use lambdaflow_jobs::shop::ShopEvent;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Partitions of every data directory here: 8, so 4 processes × 2 threads each own one.
const PARTITIONS: &str = "8";

/// Posts `events` with idempotency key `key`; returns whether it was acknowledged.
fn post(c: &mut Client, key: &str, events: &[ShopEvent]) -> bool {
    match c.post("/v1/events", &[("Idempotency-Key", key)], &ndjson(events)) {
        Ok(r) if r.status == 200 => true,
        Ok(r) => panic!("ingest {key}: {} {}", r.status, r.text()),
        Err(_) => false,
    }
}

/// Every view, read at (at least) the log's current end, equals the oracle over `events`.
fn check_views(c: &mut Client, events: &[ShopEvent], what: &str) {
    let s = common::http::status(c);
    assert_eq!(s["log"]["events"].as_u64(), Some(events.len() as u64), "{what}: the log holds every acknowledged event once");
    let ends: Vec<String> = s["log"]["end"].as_array().expect("ends").iter().map(|e| e.to_string()).collect();
    common::assert_views_exact(c, &ends.join(","), "&timeout_ms=30000", events, what);
}

/// Requests a batch run and waits until it has handed over (the run count `ok` grows).
fn batch_and_wait(c: &mut Client, what: &str) -> Value {
    let before = common::http::status(c)["batch_run"]["ok"].as_u64().unwrap_or(0);
    let failed_before = common::http::status(c)["batch_run"]["failed"].as_u64().unwrap_or(0);
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = common::http::status(c);
        if s["batch_run"]["ok"].as_u64().unwrap_or(0) > before {
            return s;
        }
        assert_eq!(s["batch_run"]["failed"].as_u64().unwrap_or(0), failed_before, "{what}: batch run failed: {}", s["batch_run"]["last"]);
        assert!(Instant::now() < deadline, "{what}: batch did not finish in 120 s: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(data: &Path, workers: usize, args: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lambdaflow"));
    cmd.arg("--data").arg(data).args(["-w", &workers.to_string()]).args(args).args(["--listen", "127.0.0.1:0", "--partitions", PARTITIONS]);
    Server::spawn(cmd)
}

/// Pids of this data directory's worker processes of `role`, from /proc.
fn worker_pids(data: &Path, role: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let data = data.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        let has = |w: &str| args.iter().any(|a| a == w);
        if has("worker") && has(role) && has(&data) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn batch_runs_on_1_2_4_processes_match_the_oracle() {
    let dir = TempDir::new("cluster-batch");
    let events = small_events(11, 4_000);
    let data = dir.join("data");
    common::ingest_events(&data, &events, PARTITIONS);
    let expected = expected_views(&events);
    for (processes, workers) in [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)] {
        let what = format!("batch on {processes} process(es) × {workers} worker(s)");
        let o = Command::new(common::bin())
            .arg("--data")
            .arg(&data)
            .args(["-w", &workers.to_string(), "batch", "--processes", &processes.to_string()])
            .output()
            .expect("spawn");
        assert!(o.status.success(), "{what}: {}", common::stderr(&o));
        // Each worker of each process wrote its own shard of every seed (not shared with a view).
        let current = std::fs::read_to_string(data.join("views").join("CURRENT")).expect("CURRENT");
        let version = data.join("views").join(current.trim());
        let names: Vec<String> =
            std::fs::read_dir(&version).expect("version").flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        let is_shard = |n: &String| {
            n.starts_with("seed.")
                && n.strip_suffix(".bin").and_then(|n| n.rsplit_once(".p")).is_some_and(|(_, p)| p.parse::<usize>().is_ok())
        };
        let shards = names.iter().filter(|n| is_shard(n)).count();
        let seeds = names.iter().filter(|n| n.starts_with("seed.") && !is_shard(n)).count();
        assert_eq!(shards, seeds * (processes * workers - 1), "{what}: seed shards in {}", version.display());
        for view in VIEW_NAMES {
            // `query` serves batch + speed; the speed layer starts at the cut (the log's end),
            // so this is the batch view itself.
            let got = common::query_json(&data, view);
            assert_eq!(&got, &expected[view], "{what}: {view}");
        }
    }
}

#[test]
fn speed_layer_and_handovers_on_clusters_match_the_oracle() {
    // (batch processes, speed processes, workers): equal layers, and each layer on more
    // processes than the other.
    for (batch, speed, workers) in [(2, 2, 1), (4, 4, 1), (2, 2, 2), (4, 1, 1), (1, 2, 2)] {
        let what = format!("batch on {batch} × {workers}, speed on {speed} × {workers}");
        let dir = TempDir::new("cluster-speed");
        let data = dir.join("data");
        let server = start(&data, workers, &["serve", "--batch-processes", &batch.to_string(), "--speed-processes", &speed.to_string()]);
        let mut c = server.client();
        let s = common::http::status(&mut c);
        assert_eq!(s["cluster"]["speed_processes"].as_u64(), Some(speed as u64), "{what}: {s}");
        assert_eq!(s["cluster"]["speed_pids"].as_array().map(|a| a.len()), Some(speed - 1), "{what}: {s}");
        let events = small_events(21, 3_000);
        let mut acked = Vec::new();
        for (i, chunk) in events.chunks(250).enumerate() {
            assert!(post(&mut c, &format!("k{i}"), chunk), "{what}: post {i}");
            acked.extend_from_slice(chunk);
            if i == 3 {
                check_views(&mut c, &acked, &format!("{what}: speed only"));
                let s = batch_and_wait(&mut c, &what);
                assert_eq!(s["batch"]["events"].as_u64(), Some(acked.len() as u64), "{what}: the batch covers what was acked");
            }
        }
        check_views(&mut c, &acked, &format!("{what}: batch + speed after a handover"));
        batch_and_wait(&mut c, &what);
        check_views(&mut c, &acked, &format!("{what}: after a second handover"));
        let more = small_events(22, 500);
        assert!(post(&mut c, "last", &more));
        acked.extend(more);
        check_views(&mut c, &acked, &format!("{what}: new events after the second handover"));
        assert_eq!(server.terminate(), Some(0), "{what}: clean exit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !worker_pids(&data, "speed").is_empty() {
            assert!(Instant::now() < deadline, "{what}: no speed worker outlives the server");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_worker_killed_mid_batch_fails_the_attempt_and_the_retry_succeeds() {
    let dir = TempDir::new("cluster-kill-batch");
    let data = dir.join("data");
    let history = small_events(31, 100_000);
    common::ingest_events(&data, &history, PARTITIONS);
    // Each batch worker reads at most 20k events/s (inherited by the worker processes), so
    // the run lasts about 2.5 s and is surely killed mid-way.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lambdaflow"));
    cmd.env("LAMBDAFLOW_BATCH_MAX_RATE", "20000").arg("--data").arg(&data).args(["-w", "1", "serve", "--batch-processes", "2"]);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let server = Server::spawn(cmd);
    let mut c = server.client();
    let mut acked = history.clone();
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    // Kill process 1 of the batch run once it has read something.
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed = loop {
        let s = common::http::status(&mut c);
        let done = s["batch_run"]["running"]["done"].as_u64().unwrap_or(0);
        let pids = worker_pids(&data, "batch");
        if done > 0 && pids.len() == 2 {
            let target = pids.iter().copied().find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains("--process 1 "))
                    .unwrap_or(false)
            });
            let target = target.unwrap_or(pids[0]);
            Command::new("kill").args(["-9", &target.to_string()]).status().expect("kill");
            break done;
        }
        assert!(s["batch_run"]["ok"].as_u64().unwrap_or(0) == 0, "the batch finished before it could be killed; make the history larger");
        assert!(Instant::now() < deadline, "no batch worker appeared: {s}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Events acknowledged while the batch fails and is retried.
    for i in 0..6 {
        let chunk = small_events(100 + i, 200);
        assert!(post(&mut c, &format!("during{i}"), &chunk));
        acked.extend(chunk);
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let s = loop {
        let s = common::http::status(&mut c);
        if s["batch_run"]["ok"].as_u64().unwrap_or(0) >= 1 || s["batch_run"]["failed"].as_u64().unwrap_or(0) >= 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "the batch did not end: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s["batch_run"]["ok"].as_u64(), Some(1), "the retried run succeeds: {}", s["batch_run"]);
    assert_eq!(s["batch"]["events"].as_u64(), Some(history.len() as u64), "the retry ran at the same cut");
    let log = server.stderr();
    assert!(log.contains("attempt 1 of 3 failed"), "the failed attempt is reported (killed after {killed} events read):\n{log}");
    check_views(&mut c, &acked, "after the retried batch");
    assert!(worker_pids(&data, "batch").is_empty(), "no batch worker is left running");
    let leftovers: Vec<String> = std::fs::read_dir(data.join("views"))
        .expect("views")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "the failed attempt's shards and pending version are removed: {leftovers:?}");
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn a_speed_worker_killed_is_replaced_from_the_batch_cut() {
    let dir = TempDir::new("cluster-kill-speed");
    let data = dir.join("data");
    let server = start(&data, 1, &["cluster", "--processes", "2"]);
    let mut c = server.client();
    let mut acked = Vec::new();
    for i in 0..4 {
        let chunk = small_events(200 + i, 300);
        assert!(post(&mut c, &format!("a{i}"), &chunk));
        acked.extend(chunk);
    }
    batch_and_wait(&mut c, "first batch");
    let more = small_events(210, 300);
    assert!(post(&mut c, "b", &more));
    acked.extend(more);
    check_views(&mut c, &acked, "before the kill");
    let s = common::http::status(&mut c);
    let pid = s["cluster"]["speed_pids"][0][1].as_u64().expect("a speed worker pid");
    Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    // Keep ingesting while the layer fails and is restarted.
    for i in 0..5 {
        let chunk = small_events(220 + i, 200);
        assert!(post(&mut c, &format!("c{i}"), &chunk));
        acked.extend(chunk);
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = common::http::status(&mut c);
        if s["speed"]["restarts"].as_u64().unwrap_or(0) >= 1 && s["speed"]["failure"].is_null() {
            let pids = s["cluster"]["speed_pids"].as_array().expect("pids").clone();
            assert_eq!(pids.len(), 1, "a new speed worker: {s}");
            assert_ne!(pids[0][1].as_u64(), Some(pid), "a new process");
            break;
        }
        assert!(Instant::now() < deadline, "the speed layer was not restarted: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    check_views(&mut c, &acked, "after the speed layer restarted");
    batch_and_wait(&mut c, "a batch after the restart");
    check_views(&mut c, &acked, "after a handover on the restarted layer");
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn a_peer_that_never_comes_up_is_a_clear_error() {
    let dir = TempDir::new("cluster-peer");
    let data = dir.join("data");
    let events = small_events(41, 100);
    common::ingest_events(&data, &events, PARTITIONS);
    let ends = common::end_offsets(&data).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    // Two free ports; nobody will be process 1.
    let ports: Vec<std::net::TcpListener> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let hosts: Vec<String> = ports.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    drop(ports);
    let hostfile = dir.join("hosts");
    std::fs::write(&hostfile, format!("# test\n{}\n", hosts.join("\n"))).expect("hostfile");
    let h = hostfile.to_str().expect("path");
    let t = Instant::now();
    let o = common::run(
        &data,
        &["worker", "--role", "batch", "--processes", "2", "--process", "0", "--hostfile", h, "--cut", &ends, "--peer-timeout-secs", "2"],
    );
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.contains("did not form within 2s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "it gives up after the timeout");
    assert!(!data.join("views").join("CURRENT").exists(), "nothing was published");

    // Bad cluster descriptions are refused, naming what is wrong.
    std::fs::write(&hostfile, "127.0.0.1:7000\nnot-an-address\n").expect("hostfile");
    let o = common::run(&data, &["worker", "--role", "batch", "--processes", "2", "--process", "0", "--hostfile", h, "--cut", &ends]);
    assert!(common::stderr(&o).contains("line 2: `not-an-address` is not host:port"), "{}", common::stderr(&o));
    std::fs::write(&hostfile, "127.0.0.1:7000\n").expect("hostfile");
    let o = common::run(&data, &["worker", "--role", "batch", "--processes", "2", "--process", "0", "--hostfile", h, "--cut", &ends]);
    assert!(common::stderr(&o).contains("lists 1 address(es), but --processes is 2"), "{}", common::stderr(&o));
    let o = common::run(&data, &["worker", "--role", "batch", "--processes", "2", "--process", "2", "--hostfile", h, "--cut", &ends]);
    assert!(common::stderr(&o).contains("--process 2 is out of range"), "{}", common::stderr(&o));
    let o = common::run(&data, &["worker", "--role", "batch", "--processes", "1", "--process", "0", "--hostfile", h, "--cut", "1,2"]);
    assert!(common::stderr(&o).contains("--cut has 2 offsets, but the log has 8 partitions"), "{}", common::stderr(&o));
}

/// Partition of a shop event in a log of `partitions` (as the engine assigns it).
fn partition(e: &ShopEvent, partitions: u32) -> u32 {
    use lambdaflow_operators::Event as _;
    lambdaflow_engine::partition_of(e.partition_key(), partitions)
}

#[test]
fn events_only_for_another_process_partitions_become_visible() {
    // 2 processes × 1 thread, 8 partitions: the odd partitions are read by process 1 only.
    let dir = TempDir::new("cluster-remote-only");
    let data = dir.join("data");
    let server = start(&data, 1, &["cluster", "--processes", "2"]);
    let mut c = server.client();
    let remote: Vec<ShopEvent> = small_events(51, 4_000).into_iter().filter(|e| partition(e, 8) % 2 == 1).collect();
    assert!(remote.len() > 1_000);
    let mut acked = Vec::new();
    for (i, chunk) in remote.chunks(300).enumerate() {
        assert!(post(&mut c, &format!("r{i}"), chunk));
        acked.extend_from_slice(chunk);
        // Each chunk must become visible by itself: nothing else moves the epochs.
        check_views(&mut c, &acked, &format!("only process 1's partitions, chunk {i}"));
    }
    batch_and_wait(&mut c, "batch");
    let more: Vec<ShopEvent> = small_events(52, 1_000).into_iter().filter(|e| partition(e, 8) % 2 == 1).collect();
    assert!(post(&mut c, "more", &more));
    acked.extend(more);
    check_views(&mut c, &acked, "after a handover, only process 1's partitions");
    // A clean stop: the speed layer's other process is told to leave, rather than see the
    // server vanish (which would show as a panic in its connection threads).
    let (log, before) = (server.log.clone(), server.stderr().len());
    assert_eq!(server.terminate(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    let after = log.lock().unwrap()[before..].to_string();
    assert!(!after.contains("panicked") && !after.contains("is gone"), "shutdown: {after}");
}

#[test]
fn a_worker_that_fails_inside_the_dataflow_fails_the_run_without_hanging() {
    let dir = TempDir::new("cluster-poison");
    let data = dir.join("data");
    let events = small_events(61, 2_000);
    common::ingest_events(&data, &events, PARTITIONS);
    // A record with a valid checksum that is not an event, in partition 1: read by process 1
    // of a 2 × 1 run. Its worker fails while the dataflow runs.
    {
        let appender = lambdaflow_engine::Appender::open(&data, Default::default()).expect("log");
        appender.append_records(&[(1, b"\xff\xff\xff\xff not an event".as_slice())]).expect("append");
    }
    let t = Instant::now();
    let mut child = Command::new(common::bin())
        .arg("--data")
        .arg(&data)
        .args(["-w", "1", "batch", "--processes", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("a failed worker left the batch run hanging");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(!status.success(), "{err}");
    assert!(err.contains("partition 1") && err.contains("exited with"), "the failure names the record and the process: {err}");
    assert!(!data.join("views").join("CURRENT").exists(), "nothing was published");
    assert!(worker_pids(&data, "batch").is_empty(), "no worker is left running");
}

// Proves a batch worker run by hand next to a service that runs (and garbage-collects)
// batch runs back to back never collides with it: every hand run publishes, no server run
// fails, and no pending directory is removed under a running writer (issue: with
// `--batch-every 20ms --keep 1`, hand runs and server runs failed with "Directory not
// empty" and "No such file", both having picked "highest version + 1").
#[test]
fn hand_batch_runs_beside_the_servers_runs() {
    let dir = TempDir::new("cluster-hand-batch");
    let data = dir.join("data");
    let events = small_events(71, 3_000);
    common::ingest_events(&data, &events, PARTITIONS);
    let server = start(&data, 1, &["serve", "--batch-every", "20ms", "--keep", "1"]);
    let mut c = server.client();
    let ends: Vec<String> = common::http::status(&mut c)["log"]["end"].as_array().expect("ends").iter().map(|e| e.to_string()).collect();
    let hostfile = dir.join("hosts");
    std::fs::write(&hostfile, "127.0.0.1:1\n").expect("hostfile");
    let mut hand_versions = Vec::new();
    for i in 0..12 {
        let o = Command::new(common::bin())
            .arg("--data")
            .arg(&data)
            .args(["-w", "1", "worker", "--role", "batch", "--processes", "1", "--process", "0", "--hostfile"])
            .arg(&hostfile)
            .args(["--cut", &ends.join(",")])
            .output()
            .expect("run worker");
        assert!(o.status.success(), "hand run {i} failed: {}", common::stderr(&o));
        let out = common::stdout(&o);
        let published = out.lines().find_map(|l| l.strip_prefix("lambdaflow-worker published ")).expect("published line");
        hand_versions.push(published.split_whitespace().next().expect("version").to_string());
    }
    let mut unique = hand_versions.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hand_versions.len(), "every hand run got its own version: {hand_versions:?}");
    let s = common::http::status(&mut c);
    assert_eq!(s["batch_run"]["failed"].as_u64(), Some(0), "no server run failed: {}", s["batch_run"]);
    assert!(s["batch_run"]["ok"].as_u64().unwrap_or(0) > 0, "the server ran batches meanwhile: {}", s["batch_run"]);
    common::assert_views_exact(&mut c, &ends.join(","), "&timeout_ms=30000", &events, "after hand runs");
    drop(c);
    assert_eq!(server.terminate(), Some(0), "the server stops cleanly");
}
