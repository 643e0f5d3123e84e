//! The command line next to a running service and in a shell: nothing deletes or rewrites a
//! data directory another process holds, commands answer through a running service instead of
//! waiting for it, output into a closed pipe ends quietly, and flags take readable units.

mod common;

use common::http::Server;
use common::{ndjson, run, run_limited, small_events, stderr, stdout, TempDir};
use serde_json::Value;
use std::time::Duration;

/// Generous: only a hang reaches it (the commands answer in well under a second).
const LIMIT: Duration = Duration::from_secs(60);

fn log_events(server: &Server) -> u64 {
    let r = server.client().get("/v1/status").expect("status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["log"]["events"].as_u64().expect("log.events")
}

fn post_acked(server: &Server, key: &str, n: u64) {
    let r = server.client().post("/v1/events", &[("Idempotency-Key", key)], &ndjson(&small_events(1, n))).expect("post");
    assert_eq!(r.status, 200, "{}", r.text());
}

// `demo --fresh` next to a running `serve` on the same directory: refused with exit code 5
// naming the holder's PID and command, and the acknowledged data is still there.
#[test]
fn demo_fresh_refuses_a_directory_a_service_holds() {
    let tmp = TempDir::new("cli-fresh");
    let server = Server::start(tmp.path(), &[]);
    post_acked(&server, "k1", 500);
    let o = run(tmp.path(), &["--wait", "1s", "demo", "--fresh", "--history", "100", "--seconds", "1", "--listen", "127.0.0.1:0"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "demo --fresh was not refused:\n{err}");
    assert!(err.contains(&format!("process {}", server.child.id())), "the holder's PID is not named:\n{err}");
    assert!(err.contains("serve"), "the holder's command is not named:\n{err}");
    assert!(tmp.join("log").join("MANIFEST").exists(), "the data directory was deleted");
    assert_eq!(log_events(&server), 500);
    drop(server);
    // After the service is gone the directory is the demo's to reset; the record the service
    // left is not taken for a holder.
    let o = run(tmp.path(), &["--wait", "0", "demo", "--fresh", "--history", "100", "--seconds", "1", "--listen", "127.0.0.1:0"]);
    assert!(o.status.success(), "demo --fresh after the service stopped failed:\n{}", stderr(&o));
    assert!(stdout(&o).contains("appended 100 historical events"), "{}", stdout(&o));
}

// Every command that reads (query, status, views, verify) or asks for a batch answers through
// a service that holds the directory instead of waiting for it, with the service's answers.
#[test]
fn commands_answer_through_a_running_service() {
    let tmp = TempDir::new("cli-remote");
    let server = Server::start(tmp.path(), &[]);
    post_acked(&server, "k1", 800);
    let ok = |args: &[&str]| {
        let o = run_limited(tmp.path(), args, LIMIT);
        assert!(o.status.success(), "{args:?} failed next to the service:\n{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("answered by process {}", server.child.id())), "{args:?}: {}", stderr(&o));
        o
    };
    // The speed layer has taken in every acknowledged event: both reads below see the same.
    let end = server.client().get("/v1/status").expect("status").json()["log"]["end"].clone();
    let end: Vec<String> = end.as_array().expect("log.end").iter().map(|o| o.to_string()).collect();
    let r = server.client().get(&format!("/v1/views/revenue_by_day?limit=1&min_frontier={}", end.join(","))).expect("wait");
    assert_eq!(r.status, 200, "{}", r.text());
    let o = ok(&["query", "revenue_by_day", "--json", "--limit", "100000"]);
    let got: Value = serde_json::from_str(stdout(&o).trim()).expect("query --json is JSON");
    let want = server.client().get("/v1/views/revenue_by_day?limit=100000").expect("query").json();
    assert_eq!(got["items"], want["items"]);
    let o = ok(&["status", "--json"]);
    let st: Value = serde_json::from_str(&stdout(&o)).expect("status --json is JSON");
    assert_eq!(st["log"]["events"], 800);
    assert!(stdout(&ok(&["status"])).contains("log: 800 events"));
    let o = ok(&["views"]);
    assert_eq!(stdout(&o).lines().count(), 8, "{}", stdout(&o));
    let o = ok(&["verify"]);
    assert!(stdout(&o).contains("800 records"), "{}", stdout(&o));
    ok(&["batch"]);
    let st = server.client().get("/v1/status").expect("status").json();
    assert_eq!(st["batch"]["events"], 800, "the service ran the batch: {st}");
    // The job's speed-layer counters (none for the shop job) are there, as an object.
    assert!(st["speed"]["counters"].is_object(), "speed.counters: {st}");
}

// A service with a token: a command without --token-file is told to pass it (exit 2); with
// it, it answers.
#[test]
fn commands_through_a_service_with_a_token() {
    let tmp = TempDir::new("cli-remote-token");
    let token = tmp.path().parent().expect("temp").join(format!("lambdaflow-cli-token-{}", std::process::id()));
    std::fs::write(&token, "0123456789abcdef0123").expect("write token");
    let server = Server::start(tmp.path(), &["--token-file", token.to_str().expect("utf-8")]);
    let o = run_limited(tmp.path(), &["status"], LIMIT);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--token-file"), "{}", stderr(&o));
    let o = run_limited(tmp.path(), &["status", "--token-file", token.to_str().expect("utf-8")], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(server);
    let _ = std::fs::remove_file(token);
}

// A holder that is not a service (no address) is waited for at most --wait, then the command
// gives up with exit code 5 naming the holder's PID and command.
#[test]
fn a_busy_directory_is_waited_for_a_bounded_time() {
    let tmp = TempDir::new("cli-busy");
    let lock = std::fs::File::create(tmp.join("LOCK")).expect("create LOCK");
    lock.try_lock().expect("lock");
    let me = std::process::id();
    let record =
        serde_json::json!({ "pid": me, "command": "ingest", "argv": "lambdaflow ingest big.ndjson", "addr": null, "token": false });
    std::fs::write(tmp.join("HOLDER.json"), record.to_string()).expect("write holder");
    for args in [&["--wait", "1s", "query", "revenue_by_day"][..], &["--wait", "1s", "status"], &["--wait", "0", "batch"]] {
        let o = run_limited(tmp.path(), args, LIMIT);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(5), "{args:?}: {err}");
        assert!(err.contains(&format!("process {me}")) && err.contains("lambdaflow ingest big.ndjson"), "{args:?}: {err}");
    }
    drop(lock);
    let o = run_limited(tmp.path(), &["--wait", "1s", "status"], LIMIT);
    assert!(!stderr(&o).contains("in use by"), "a released lock still counts as held: {}", stderr(&o));
}

/// Runs `lambdaflow ARGS` with stdout into a pipe that is closed after the first line (like
/// `| head -1`), and returns the exit status and stderr.
fn closed_early(data: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::bin())
        .arg("--data")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lambdaflow");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read the first line");
    assert!(!first.is_empty(), "{args:?} printed nothing");
    drop(stdout);
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    (child.wait().expect("wait"), err)
}

// Output into a pipe that closes early (`| head`) ends quietly with exit code 0, as a
// shell user expects: no panic, no error. The outputs are larger than a pipe's buffer.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let tmp = TempDir::new("cli-pipe");
    let file = tmp.join("events.ndjson");
    common::gen_file(&file, 60_000, 3, "ndjson");
    common::ingest(&tmp.join("data"), &file);
    let full = common::run_ok(&tmp.join("data"), &["query", "product_revenue_by_day", "--limit", "100000000"]);
    assert!(full.stdout.len() > 1 << 20, "the query's output ({} bytes) must exceed a pipe's buffer", full.stdout.len());
    for args in [&["query", "product_revenue_by_day", "--limit", "100000000"][..], &["gen", "shop", "--events", "200000"]] {
        let (status, err) = closed_early(&tmp.join("data"), args);
        assert!(status.success(), "{args:?} into a closed pipe: {status}\n{err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

// Every duration and size flag takes units (`10m`, `64MiB`), `serve` says its schedule in
// them, and absurd values are refused naming the flag and value rather than capped.
#[test]
fn flags_take_units() {
    let tmp = TempDir::new("cli-units");
    let server = Server::start(tmp.path(), &["--max-body", "64MiB", "--batch-every", "10m", "--peer-timeout", "1m"]);
    // The helper returns on the address, maybe before it has stored the line that names it.
    let deadline = std::time::Instant::now() + LIMIT;
    while !server.stderr().contains("listening on") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stderr().contains("batch runs every 10m"), "{}", server.stderr());
    let big = vec![b' '; 20 << 20];
    let r = server.client().post("/v1/events", &[], &big).expect("post");
    assert_ne!(r.status, 413, "a 20 MiB body is within --max-body 64MiB: {}", r.text());
    drop(server);
    for (args, flag) in [
        (&["demo", "--batch-every", "999999999999999d"][..], "--batch-every"),
        (&["serve", "--max-body", "64 parsecs"], "--max-body"),
        (&["serve", "--batch-every", "0s"], "--batch-every"),
        (&["--wait", "forever", "status"], "--wait"),
    ] {
        let o = run(tmp.path(), args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(args[args.len() - 1 - usize::from(flag == "--wait")]), "{args:?}: {err}");
    }
    let o = run(tmp.path(), &["demo", "--batch-every", "10m", "--seconds", "1s", "--history", "100", "--listen", "127.0.0.1:0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("a batch run every 10m; stopping after 1s"), "{}", stdout(&o));
    // The closing hint names a command that runs: here (a test run by cargo) `cargo run --`,
    // and the binary's own path outside cargo.
    assert!(stdout(&o).contains("serve it again: cargo run -- --data"), "{}", stdout(&o));
    let o = std::process::Command::new(common::bin())
        .env_remove("CARGO")
        .arg("--data")
        .arg(tmp.path())
        .args(["demo", "--seconds", "1s", "--history", "100", "--listen", "127.0.0.1:0"])
        .output()
        .expect("spawn demo");
    assert!(stdout(&o).contains(&format!("serve it again: {} --data", common::bin())), "{}", stdout(&o));
}

// What a newcomer reads: `query` says when it stops at --limit ("2 of N answers") and
// offers --all; --top limits items per key of a top-k view while --limit limits keys;
// "1 answer"; `views` shows fields, not Rust types; every subcommand's help has an example;
// --version names lambdaflow.
#[test]
fn query_views_and_help_read_well() {
    let tmp = TempDir::new("cli-read");
    let file = tmp.join("events.ndjson");
    common::gen_file(&file, 5000, 4, "ndjson");
    let data = tmp.join("data");
    common::ingest(&data, &file);
    let lens = |args: &[&str]| -> Vec<usize> {
        let o = common::run_ok(&data, args);
        let v: Value = serde_json::from_str(stdout(&o).trim()).expect("json");
        v["items"].as_array().expect("items").iter().map(|i| i["value"].as_array().expect("a list").len()).collect()
    };
    assert_eq!(lens(&["query", "top_products_by_day", "--limit", "2", "--json"]).len(), 2, "--limit counts keys (days)");
    let full = lens(&["query", "top_products_by_day", "--all", "--json"]);
    let top2 = lens(&["query", "top_products_by_day", "--all", "--top", "2", "--json"]);
    assert!(full.iter().any(|&n| n > 2), "{full:?}");
    assert_eq!(top2, full.iter().map(|&n| n.min(2)).collect::<Vec<_>>(), "--top counts products a day");
    let all = common::run_ok(&data, &["query", "top_products_by_day", "--all"]);
    let days = stdout(&all).lines().count();
    assert!(days > 2, "{}", stdout(&all));
    assert!(stderr(&all).contains(&format!("-- {days} answers;")), "{}", stderr(&all));
    let o = common::run_ok(&data, &["query", "top_products_by_day", "--limit", "2"]);
    assert!(stderr(&o).contains(&format!("-- 2 of {days} answers (--all")), "{}", stderr(&o));
    let day = stdout(&o).split('\t').next().expect("a day").to_string();
    let o = common::run_ok(&data, &["query", "revenue_by_day", &day]);
    assert!(stderr(&o).contains("-- 1 answer;"), "{}", stderr(&o));
    let o = common::run_ok(&data, &["views"]);
    assert!(!stdout(&o).contains("Sums<") && stdout(&o).contains("net_cents"), "{}", stdout(&o));
    let o = common::run_ok(&data, &["--version"]);
    assert!(stdout(&o).starts_with("lambdaflow "), "{}", stdout(&o));
    for cmd in ["gen", "ingest", "batch", "query", "views", "status", "verify", "demo", "serve", "cluster", "worker"] {
        let o = common::run_ok(&data, &[cmd, "--help"]);
        assert!(stdout(&o).contains("Example"), "`{cmd} --help` has no example:\n{}", stdout(&o));
    }
}

// A file larger than the service's --max-body: a plain POST gets a 413 that points to
// `ingest --server`, which sends it in requests that fit (finding the size on its own) and
// stores every event once; a re-run (as after a failure) stores nothing twice. A file with a
// bad line is refused before anything is sent.
#[test]
fn ingest_server_sends_a_large_file_in_fitting_requests() {
    let tmp = TempDir::new("cli-ingest-server");
    let server = Server::start(&tmp.join("data"), &["--max-body", "64KiB"]);
    let file = tmp.join("events.ndjson");
    common::gen_file(&file, 3000, 5, "ndjson");
    let bytes = std::fs::read(&file).expect("read");
    assert!(bytes.len() > 4 * 65536, "the file must need several requests");
    let r = server.client().post("/v1/events", &[], &bytes).expect("post");
    assert_eq!(r.status, 413);
    assert!(r.text().contains("ingest --server"), "{}", r.text());
    let url = format!("http://{}", server.addr);
    let send = |path: &std::path::Path| {
        std::process::Command::new(common::bin()).args(["ingest", "--server", &url]).arg(path).output().expect("spawn ingest --server")
    };
    let rejected = |server: &Server| server.client().get("/v1/status").expect("status").json()["ingest"]["rejected"].clone();
    let rejected_before = rejected(&server);
    let o = send(&file);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(log_events(&server), 3000);
    // It asked the service for its limit first: no request was refused as too large.
    let st = server.client().get("/v1/status").expect("status").json();
    assert_eq!(st["max_body_bytes"], 65536, "{st}");
    assert_eq!(st["ingest"]["rejected"], rejected_before, "a request was refused: {}", stderr(&o));
    assert!(stderr(&o).contains("requests of up to 64 KiB"), "{}", stderr(&o));
    let o = send(&file);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already stored by an earlier run"), "{}", stderr(&o));
    assert_eq!(log_events(&server), 3000, "a re-run stored events twice");
    // CSV: every request carries the header.
    let csv = tmp.join("events.csv");
    common::gen_file(&csv, 3000, 6, "csv");
    let o = send(&csv);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(log_events(&server), 6000);
    // A bad line far into the file: refused whole, naming it, before anything is sent.
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str(
        "{\"type\":\"purchase\",\"ts\":1,\"order_id\":1,\"customer_id\":2,\"product_id\":3,\"quantity\":-1,\"amount_cents\":5}\n",
    );
    let bad = tmp.join("bad.ndjson");
    std::fs::write(&bad, text).expect("write");
    let o = send(&bad);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("line 3001"), "{}", stderr(&o));
    assert_eq!(log_events(&server), 6000, "a refused file stored events");
}

/// Sends FILE with `ingest --server URL` and extra flags.
fn ingest_server(url: &str, file: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["ingest", "--server", url];
    args.extend_from_slice(extra);
    args.push(file.to_str().expect("utf-8"));
    run_limited(file.parent().expect("dir"), &args, LIMIT)
}

// A line longer than a request may hold is found before anything is sent: refused (exit 2)
// naming the line and a --request-size that fits, and nothing is stored; with that size the
// file goes through. A re-run after the service restarted with another --max-body (still
// above --request-size) cuts the file the same way and stores nothing twice.
#[test]
fn ingest_server_cuts_by_request_size_alone() {
    let tmp = TempDir::new("cli-ingest-long");
    let file = tmp.join("events.ndjson");
    common::gen_file(&file, 2000, 8, "ndjson");
    let mut text = std::fs::read_to_string(&file).expect("read");
    let last = text.lines().last().expect("a line").to_string();
    text.push_str(&format!("{}{}}}\n", &last[..last.len() - 1], " ".repeat(3000)));
    std::fs::write(&file, &text).expect("write");
    let server = Server::start(&tmp.join("data"), &["--max-body", "64KiB"]);
    let url = format!("http://{}", server.addr);
    let o = ingest_server(&url, &file, &["--request-size", "2KiB"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2001") && err.contains("nothing was sent") && err.contains("--request-size 4KiB"), "{err}");
    assert_eq!(log_events(&server), 0, "requests were stored before the long line was found");
    let o = ingest_server(&url, &file, &["--request-size", "4KiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(log_events(&server), 2001);
    drop(server);
    let server = Server::start(&tmp.join("data"), &["--max-body", "1MiB"]);
    let o = ingest_server(&format!("http://{}", server.addr), &file, &["--request-size", "4KiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already stored by an earlier run"), "{}", stderr(&o));
    assert_eq!(log_events(&server), 2001, "a re-run after the service's --max-body changed stored events twice");
}

// `--server` with a host name tries every address it resolves to, and when none takes the
// connection it fails at once (exit 5) naming the addresses, instead of retrying.
#[test]
fn ingest_server_fails_fast_when_nothing_listens() {
    let tmp = TempDir::new("cli-ingest-refused");
    let file = tmp.join("events.ndjson");
    common::gen_file(&file, 10, 9, "ndjson");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let o = ingest_server(&format!("http://localhost:{port}"), &file, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("nothing answers"), "{err}");
}

/// A stand-in for a service holding the data directory `dir` (its LOCK held by this process,
/// its address in HOLDER.json): answers each request (method, path, body) with `handler`'s status
/// and JSON body.
struct FakeService {
    _lock: std::fs::File,
}

fn fake_service(dir: &std::path::Path, handler: impl Fn(&str, &str, &[u8]) -> (u16, String) + Send + 'static) -> FakeService {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(s.read(&mut byte), Ok(1)) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:")?.trim().parse().ok());
            let mut body = vec![0u8; length.unwrap_or(0)];
            let _ = s.read_exact(&mut body);
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let (status, body) = handler(method, path, &body);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    std::fs::create_dir_all(dir).expect("dir");
    let lock = std::fs::File::create(dir.join("LOCK")).expect("create LOCK");
    lock.try_lock().expect("lock");
    let record =
        serde_json::json!({ "pid": std::process::id(), "command": "serve", "argv": "lambdaflow serve", "addr": addr, "token": false });
    std::fs::write(dir.join("HOLDER.json"), record.to_string()).expect("write holder");
    FakeService { _lock: lock }
}

/// `?a=1&b=2` → the value of `name`.
fn param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    path.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

// A remote range query follows the service's cursor: a service that answers in pages smaller
// than asked (`more: true`, `next`) still gives --all every answer and --limit N exactly N,
// and the footer says "all" or "there are more" as it is.
#[test]
fn remote_query_follows_the_cursor() {
    let tmp = TempDir::new("cli-remote-pages");
    const KEYS: usize = 250;
    let _service = fake_service(tmp.path(), |_, path, _| {
        let after: usize = param(path, "after").map_or(0, |a| a.parse::<usize>().expect("a cursor") + 1);
        let limit: usize = param(path, "limit").expect("limit").parse().expect("a number");
        let end = (after + limit.min(100)).min(KEYS);
        let items: Vec<Value> = (after..end).map(|k| serde_json::json!({ "key": k, "value": k * 10 })).collect();
        let more = end < KEYS;
        let next = if more { Value::String((end - 1).to_string()) } else { Value::Null };
        (200, serde_json::json!({ "view": "v", "items": items, "more": more, "next": next, "freshness": {} }).to_string())
    });
    let o = run_limited(tmp.path(), &["query", "v", "--all"], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    let keys: Vec<usize> = stdout(&o).lines().map(|l| l.split('\t').next().expect("key").parse().expect("a number")).collect();
    assert_eq!(keys, (0..KEYS).collect::<Vec<_>>());
    assert!(stderr(&o).contains(&format!("-- {KEYS} answers;")), "{}", stderr(&o));
    let o = run_limited(tmp.path(), &["query", "v", "--limit", "150"], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 150);
    assert!(stderr(&o).contains("the first 150 answers (there are more"), "{}", stderr(&o));
}

// A remote `batch` waits for a run that started after its request, not for the end of one
// already in progress, and gives up after --timeout with exit code 5.
#[test]
fn remote_batch_waits_for_its_own_run() {
    use std::sync::{Arc, Mutex};
    let tmp = TempDir::new("cli-remote-batch");
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let started = now_ms() - 60_000;
    // Status requests after the POST: the older run ends first (v8), then this one (v9).
    let polls: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
    let stuck = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stuck.clone();
    let p = polls.clone();
    let _service = fake_service(tmp.path(), move |method, path, _| {
        let mut polls = p.lock().unwrap();
        let last = |version: u64, started_ms: u64| {
            serde_json::json!({ "batch_run": { "last": { "ok": true, "version": version, "events": 1, "cut": [1], "started_ms": started_ms } } })
                .to_string()
        };
        match (method, path) {
            ("POST", "/v1/batch") => {
                *polls = Some(0);
                (202, serde_json::json!({ "queued": true, "running": true }).to_string())
            }
            (_, "/v1/status") => match polls.as_mut() {
                None => (200, last(7, started - 1)),
                Some(n) => {
                    *n += 1;
                    match *n {
                        _ if s.load(std::sync::atomic::Ordering::Relaxed) => (200, last(8, started)),
                        1..=3 => (200, last(8, started)),
                        _ => (200, last(9, now_ms())),
                    }
                }
            },
            _ => (404, "{}".into()),
        }
    });
    let o = run_limited(tmp.path(), &["batch"], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("batch v9 published"), "the older run was taken for this one:\n{}", stderr(&o));
    stuck.store(true, std::sync::atomic::Ordering::Relaxed); // no run ends any more
    let o = run_limited(tmp.path(), &["batch", "--timeout", "1s"], LIMIT);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("--timeout"), "{}", stderr(&o));
}

// A line the service refuses is named by its line in the file, blank lines counted: they stay
// in the request, so the service's numbering matches the file's.
#[test]
fn ingest_server_names_the_refused_line_exactly() {
    let tmp = TempDir::new("cli-ingest-line");
    let events = String::from_utf8(ndjson(&small_events(3, 4))).expect("utf-8");
    let lines: Vec<&str> = events.lines().collect();
    // File lines: 1 event, 2 blank, 3 blank, 4 event, 5 event, 6 blank, 7 event.
    let text = format!("{}\n\n\n{}\n{}\n\n{}\n", lines[0], lines[1], lines[2], lines[3]);
    let file = tmp.join("events.ndjson");
    std::fs::write(&file, text).expect("write");
    // The service refuses file line 5, numbering the lines of the body it got.
    let refused = lines[2].to_string();
    let _service = fake_service(&tmp.join("data"), move |method, _, body| match method {
        "GET" => (200, serde_json::json!({ "max_body_bytes": 1 << 20 }).to_string()),
        _ => {
            let line = String::from_utf8_lossy(body).lines().position(|l| l == refused).expect("the line is sent") + 1;
            (400, serde_json::json!({ "error": "no", "line": line }).to_string())
        }
    });
    let url = std::fs::read_to_string(tmp.join("data").join("HOLDER.json")).expect("holder");
    let addr = serde_json::from_str::<Value>(&url).expect("json")["addr"].as_str().expect("addr").to_string();
    let o = ingest_server(&format!("http://{addr}"), &file, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("refused line 5 of"), "{}", stderr(&o));
}

/// `lambdaflow query ARGS` on `data` with `LAMBDAFLOW_QUERY_EXPLAIN` set: its output and
/// the line saying what the answer was computed from.
fn explained_query(data: &std::path::Path, args: &[&str]) -> (Value, String) {
    let o = std::process::Command::new(common::bin())
        .arg("--data")
        .arg(data)
        .args(["-w", "2", "query"])
        .args(args)
        .arg("--json")
        .env("LAMBDAFLOW_QUERY_EXPLAIN", "1")
        .output()
        .expect("spawn query");
    assert!(o.status.success(), "query {args:?} failed:\n{}", stderr(&o));
    let explained = stderr(&o).lines().find(|l| l.starts_with("query: answered from")).unwrap_or_default().to_string();
    (serde_json::from_str(stdout(&o).trim()).expect("query --json is JSON"), explained)
}

/// Every view's range answer and the point answers of its first and last keys equal the
/// oracle's over `events`; returns view → what its range answer was computed from.
fn assert_local_queries_exact(data: &std::path::Path, events: &[lambdaflow_jobs::shop::ShopEvent], what: &str) -> Vec<(String, String)> {
    use lambdaflow_jobs::shop::oracle::{expected_views, VIEW_NAMES};
    let expected = expected_views(events);
    let mut explained = Vec::new();
    for view in VIEW_NAMES {
        let (answer, how) = explained_query(data, &[view, "--all"]);
        let got = common::items_by_key(&answer);
        assert_eq!(&got, &expected[view], "{what}: {view} differs from the oracle");
        assert!(!got.is_empty(), "{what}: {view} is empty: the test checks nothing");
        for key in [got.keys().next().expect("a key"), got.keys().last().expect("a key")] {
            let (point, _) = explained_query(data, &[view, key]);
            assert_eq!(&point["value"], &expected[view][key], "{what}: {view} key {key}");
        }
        explained.push((view.to_string(), how));
    }
    explained
}

// Issue 12: a local `query` loads only what the queried view needs. With no event after the
// batch cut it answers from the stored view alone; with events after it, it runs the speed
// dataflow over them with only the seeds upstream of the view (a sum view needs none, a
// top-k or distinct view its own). Both answers equal the oracle's (the merged answer a
// service gives), for every view, range and point.
#[test]
fn local_query_loads_only_what_the_view_needs_and_is_exact() {
    let tmp = TempDir::new("cli-local-query");
    let data = tmp.join("data");
    let first = small_events(1, 3000);
    common::ingest_events(&data, &first, "4");
    common::run_ok(&data, &["batch"]);
    for (view, how) in assert_local_queries_exact(&data, &first, "no event after the cut") {
        assert!(how.contains("stored view alone"), "{view}: {how}");
    }
    // Keys of the second slice overlap the first's (small id space): batch and speed merge.
    let second = small_events(2, 1500);
    common::ingest_events(&data, &second, "4");
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let explained = assert_local_queries_exact(&data, &all, "events after the cut");
    let how = |view: &str| explained.iter().find(|(v, _)| v == view).map(|(_, h)| h.clone()).expect("view");
    assert!(how("revenue_by_day").ends_with("1500 events after its cut, loading no seed"), "{}", how("revenue_by_day"));
    assert!(how("top_products_by_day").ends_with("loading seeds top_products_by_day.seed"), "{}", how("top_products_by_day"));
    assert!(how("daily_unique_viewers").ends_with("loading seeds daily_unique_viewers.seed"), "{}", how("daily_unique_viewers"));
}
