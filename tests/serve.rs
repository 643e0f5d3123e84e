//! The service over real HTTP on loopback: `lambdaflow serve` as a child process.
//!
//! Ingest → query within the speed layer's latency; bad requests are 400 naming line and
//! field and store nothing; idempotent retries append nothing (also across kill -9);
//! token auth; body limits; batch runs and handovers under load with every answer exact
//! for its reported frontier; kill -9 mid-ingest loses nothing acknowledged.

mod common;

use common::http::{Client, Server};
use common::{ndjson, small_events as events};
use common::{Acked, TempDir};
use lambdaflow_jobs::shop::{oracle::expected_views, ShopEvent};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn log_events(c: &mut Client) -> u64 {
    let s = c.get("/v1/status").expect("status");
    assert_eq!(s.status, 200, "{}", s.text());
    s.json()["log"]["events"].as_u64().expect("log.events")
}

fn post(c: &mut Client, body: &[u8], key: Option<&str>) -> common::http::Response {
    let headers: Vec<(&str, &str)> = key.map(|k| vec![("Idempotency-Key", k)]).unwrap_or_default();
    c.post("/v1/events", &headers, body).expect("post events")
}

// Ingested events become visible in merged answers (read-your-writes with min_frontier),
// freshness is reported, and a range answer has the documented shape.
#[test]
fn ingest_then_query() {
    let tmp = TempDir::new("serve-basic");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let batch = events(1, 2000);
    let r = post(&mut c, &ndjson(&batch), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let ack = r.json();
    assert_eq!(ack["accepted"], 2000);
    assert_eq!(ack["duplicate"], false);
    let ends: Vec<u64> = {
        let mut ends = vec![0u64; 4];
        for r in ack["positions"].as_array().expect("positions") {
            ends[r["partition"].as_u64().expect("p") as usize] = r["to"].as_u64().expect("to");
        }
        ends
    };
    let mf = ends.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",");
    let t = Instant::now();
    let r = c.get(&format!("/v1/views/revenue_by_day?limit=100&min_frontier={mf}")).expect("query");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(v["view"], "revenue_by_day");
    assert_eq!(v["freshness"]["speed_frontier"], serde_json::json!(ends));
    assert_eq!(v["freshness"]["speed_lag_events"], 0);
    let expected = expected_views(&batch);
    assert_eq!(common::items_by_key(&v), expected["revenue_by_day"]);

    // A point answer carries its parts; with no batch yet the speed part is everything.
    let (day, want) = expected["revenue_by_day"].iter().next().expect("a day");
    let day: String = serde_json::from_str(day).expect("day key");
    let r = c.get(&format!("/v1/views/revenue_by_day/{day}")).expect("point");
    assert_eq!(r.status, 200, "{}", r.text());
    let p = r.json();
    assert_eq!(&p["value"], want);
    assert_eq!(p["key"], day.as_str());
    assert!(p["freshness"]["batch_version"].is_null());

    // Composite keys go in the path as written on the command line.
    let (dp, want) = expected["product_revenue_by_day"].iter().next().expect("a product day");
    let dp: Value = serde_json::from_str(dp).expect("key");
    let r = c.get(&format!("/v1/views/product_revenue_by_day/{}/{}", dp["day"].as_str().expect("day"), dp["product_id"])).expect("point");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(&r.json()["value"], want);

    // Without min_frontier, the events show up within the speed layer's latency.
    let more = events(2, 500);
    assert_eq!(post(&mut c, &ndjson(&more), None).status, 200);
    let all: Vec<ShopEvent> = batch.iter().chain(&more).cloned().collect();
    let want = expected_views(&all)["customer_spend"].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.get("/v1/views/customer_spend?limit=100000").expect("query").json();
        if common::items_by_key(&v) == want {
            break;
        }
        assert!(Instant::now() < deadline, "events not visible after 10 s: {}", v["freshness"]);
        std::thread::sleep(Duration::from_millis(5));
    }

    // Views, status and metrics.
    let v = c.get("/v1/views").expect("views").json();
    assert_eq!(v["views"].as_array().expect("views").len(), 8);
    let m = c.get("/metrics").expect("metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(text.contains("lambdaflow_ingest_events_total 2500"), "{text}");
    assert!(text.contains("lambdaflow_ack_latency_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
    assert!(text.contains("lambdaflow_view_keys{view=\"revenue_by_day\",layer=\"speed\"}"), "{text}");
    assert_eq!(server.terminate(), Some(0), "SIGTERM is a clean exit");
}

// Bad requests: 400 naming the line, field and value, nothing stored; unknown views and
// keys, bad parameters and unknown routes are 4xx with a message.
#[test]
fn bad_requests_are_refused_and_store_nothing() {
    let tmp = TempDir::new("serve-bad");
    let server = Server::start(tmp.path(), &["--max-body", "4096"]);
    let mut c = server.client();
    let good = ndjson(&events(3, 3));
    let mut body = good.clone();
    body.extend_from_slice(
        b"{\"type\":\"purchase\",\"ts\":1,\"order_id\":1,\"customer_id\":2,\"product_id\":3,\"quantity\":1,\"amount_cents\":\"12x\"}\n",
    );
    let r = post(&mut c, &body, None);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["line"], 4);
    assert_eq!(e["field"], "amount_cents");
    assert!(e["value"].as_str().expect("value").contains("12x"), "{e}");
    assert!(e["error"].as_str().expect("error").contains("nothing of this request was stored"));

    for (body, what) in [
        (&b"type,ts\nnot a header\n"[..], "bad CSV header"),
        (&b"\xff\xfe{}\n"[..], "invalid UTF-8"),
        (&b"{\"type\":\"teleport\",\"ts\":1}\n"[..], "unknown type"),
        (&b"{\"type\":\"view\",\"ts\":1,\"customer_id\":1,\"product_id\":99999999999999999999999,\"session_id\":1}\n"[..], "huge number"),
    ] {
        let r = post(&mut c, body, None);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{what}");
    }
    let r = post(&mut c, &vec![b' '; 5000], None);
    assert_eq!(r.status, 413, "oversized body: {}", r.text());
    let r = post(&mut c, &good, Some("bad key with spaces"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(log_events(&mut c), 0, "nothing of a rejected request is stored");

    assert_eq!(c.get("/v1/views/nope").expect("q").status, 404);
    assert!(c.get("/v1/views/nope").expect("q").text().contains("revenue_by_day"), "lists the views");
    assert_eq!(c.get("/v1/views/revenue_by_day/not-a-day").expect("q").status, 400);
    assert_eq!(c.get("/v1/views/revenue_by_day/2026-01-01").expect("q").status, 404, "no such key yet");
    assert_eq!(c.get("/v1/views/revenue_by_day?limit=0").expect("q").status, 400);
    assert_eq!(c.get("/v1/views/revenue_by_day?bogus=1").expect("q").status, 400);
    assert_eq!(c.get("/v1/views/revenue_by_day?min_frontier=1,2").expect("q").status, 400);
    let r = c.get("/v1/views/revenue_by_day?min_frontier=999999,0,0,0").expect("q");
    assert_eq!(r.status, 400, "an offset no ack named is refused at once, not waited for: {}", r.text());
    assert_eq!(c.get("/v1/views/revenue_by_day?min_frontier=0,0,0,0&timeout_ms=x").expect("q").status, 400);
    assert_eq!(c.get("/v1/views/inventory_level?where=level%3Cx").expect("q").status, 400);
    assert_eq!(c.get("/v2/anything").expect("q").status, 404);
    assert_eq!(c.get("/v1/events").expect("q").status, 405);
    // The server still serves.
    assert_eq!(post(&mut c, &good, None).status, 200);
    assert_eq!(log_events(&mut c), 3);
}

// A retried request with the same Idempotency-Key is acknowledged again with the same
// positions and appends nothing, also after kill -9 and a restart; the same key with a
// different body is refused.
#[test]
fn idempotent_retries_append_nothing() {
    let tmp = TempDir::new("serve-idem");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let body = ndjson(&events(4, 300));
    let first = post(&mut c, &body, Some("order-batch-1"));
    assert_eq!(first.status, 200, "{}", first.text());
    let again = post(&mut c, &body, Some("order-batch-1"));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["positions"], first.json()["positions"]);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(log_events(&mut c), 300);
    let other = post(&mut c, &ndjson(&events(5, 10)), Some("order-batch-1"));
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(log_events(&mut c), 300);

    // Concurrent retries of one key: exactly one append.
    let addr = server.addr;
    let body2 = Arc::new(ndjson(&events(6, 100)));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let body2 = body2.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                post(&mut c, &body2, Some("racing")).json()["positions"].clone()
            })
        })
        .collect();
    let answers: Vec<Value> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(log_events(&mut c), 400);

    server.kill9();
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let after = post(&mut c, &body, Some("order-batch-1"));
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["positions"], first.json()["positions"], "the key is durable with its events");
    assert_eq!(after.json()["duplicate"], true);
    assert_eq!(log_events(&mut c), 400);
}

// With a token, writes and admin need it (reads too, unless --public-reads); the
// comparison refuses near misses.
#[test]
fn token_auth() {
    let tmp = TempDir::new("serve-auth");
    let token_file = tmp.join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").expect("write token");
    let data = tmp.join("data");
    let server = Server::start(&data, &["--token-file", token_file.to_str().expect("path")]);
    let mut c = server.client();
    let body = ndjson(&events(7, 5));
    assert_eq!(post(&mut c, &body, None).status, 401);
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 401);
    assert_eq!(c.get("/v1/status").expect("status").status, 401, "reads need the token too by default");
    assert_eq!(c.get("/metrics").expect("metrics").status, 401);
    c.token = Some("s3cret-token-012345678".into());
    assert_eq!(post(&mut c, &body, None).status, 401, "a prefix of the token is refused");
    c.token = Some("s3cret-token-01234567890".into());
    assert_eq!(post(&mut c, &body, None).status, 401, "a longer token is refused");
    c.token = Some("s3cret-token-0123456789".into());
    assert_eq!(post(&mut c, &body, None).status, 200);
    assert_eq!(c.get("/v1/status").expect("status").status, 200);
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
    drop(server);

    let server = Server::start(&data, &["--token-file", token_file.to_str().expect("path"), "--public-reads"]);
    let mut c = server.client();
    assert_eq!(c.get("/v1/status").expect("status").status, 200, "public reads");
    assert_eq!(c.get("/v1/views/revenue_by_day").expect("q").status, 200);
    assert_eq!(post(&mut c, &body, None).status, 401, "writes still need the token");
    assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 401);
    assert!(c.get("/").expect("dashboard").text().contains("<html"), "the dashboard page itself is static");

    // A token file that is too short is refused at start-up.
    std::fs::write(&token_file, "short\n").expect("write token");
    let o = common::run(&data, &["serve", "--listen", "127.0.0.1:0", "--token-file", token_file.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("at least 16"), "{}", common::stderr(&o));
}

// A writer keeps ingesting and readers keep querying while batch runs are triggered and
// hand over. No answer is a 5xx, frontiers never go backwards, and every answer equals
// the from-scratch computation over exactly the acknowledged events before its frontier.
#[test]
fn handover_under_load_is_exact() {
    let tmp = TempDir::new("serve-handover");
    let server = Server::start(tmp.path(), &["--keep", "2"]);
    let addr = server.addr;
    let acked = Arc::new(Mutex::new(Acked::new(4)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut seed = 100;
            while !stop.load(Ordering::Relaxed) {
                let batch = events(seed, 200);
                let r = post(&mut c, &ndjson(&batch), Some(&format!("w-{seed}")));
                assert_eq!(r.status, 200, "ingest: {}", r.text());
                acked.lock().unwrap().record(&batch, &r.json());
                seed += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    type Seen = Vec<(String, Vec<u64>, BTreeMap<String, Value>)>;
    let readers: Vec<_> = ["revenue_by_day", "customer_segments", "daily_unique_viewers", "top_products_by_day"]
        .into_iter()
        .map(|view| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Seen {
                let mut c = Client::new(addr);
                let mut seen = Vec::new();
                let mut last: Vec<u64> = vec![0; 4];
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get(&format!("/v1/views/{view}?limit=100000")).expect("query");
                    assert!(r.status < 500, "{view}: HTTP {}: {}", r.status, r.text());
                    let v = r.json();
                    let frontier: Vec<u64> = serde_json::from_value(v["freshness"]["speed_frontier"].clone()).expect("frontier");
                    assert!(frontier.iter().zip(&last).all(|(a, b)| a >= b), "{view}: frontier went back from {last:?} to {frontier:?}");
                    last = frontier.clone();
                    seen.push((view.to_string(), frontier, common::items_by_key(&v)));
                    std::thread::sleep(Duration::from_millis(10));
                }
                seen
            })
        })
        .collect();
    let mut c = Client::new(addr);
    let mut versions = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(c.post("/v1/batch", &[], b"").expect("batch").status, 202);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = c.get("/v1/status").expect("status").json();
            let v = s["batch"]["version"].as_u64().unwrap_or(0);
            if v > versions && s["batch_run"]["running"].is_null() {
                versions = v;
                break;
            }
            assert!(Instant::now() < deadline, "batch run did not finish: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let seen: Vec<_> = readers.into_iter().flat_map(|r| r.join().expect("reader")).collect();
    assert!(seen.len() > 40, "too few answers to mean anything: {}", seen.len());
    let acked = acked.lock().unwrap();
    let mut checked = 0;
    let mut cache: BTreeMap<Vec<u64>, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
    for (view, frontier, items) in &seen {
        let expected = cache.entry(frontier.clone()).or_insert_with(|| {
            let evs = acked.before(frontier).unwrap_or_else(|| panic!("an answer covers events never acknowledged: {frontier:?}"));
            expected_views(&evs)
        });
        assert_eq!(items, &expected[view.as_str()], "{view} at frontier {frontier:?}");
        checked += 1;
    }
    // Old versions beyond --keep are collected.
    let versions_on_disk = std::fs::read_dir(tmp.join("views"))
        .expect("views dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('v'))
        .count();
    assert_eq!(versions_on_disk, 2, "keep the last 2 versions");
    eprintln!("{checked} answers checked across {versions} batch versions, {} events", acked.len());
}

// kill -9 while a client is ingesting: after a restart every acknowledged event is in the
// log exactly once and in the merged answers; retries of unacknowledged requests with
// their keys complete the set exactly once.
#[test]
fn kill9_mid_ingest_loses_nothing_acknowledged() {
    let tmp = TempDir::new("serve-kill");
    let server = Server::start(tmp.path(), &[]);
    let addr = server.addr;
    let batches: Vec<Vec<ShopEvent>> = (0..400).map(|i| events(1000 + i, 100)).collect();
    let batches = Arc::new(batches);
    let acked_upto = Arc::new(Mutex::new(0usize));
    let writer = {
        let (batches, acked_upto) = (batches.clone(), acked_upto.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            for (i, b) in batches.iter().enumerate() {
                match c.post("/v1/events", &[("Idempotency-Key", &format!("k{i}"))], &ndjson(b)) {
                    Ok(r) if r.status == 200 => *acked_upto.lock().unwrap() = i + 1,
                    _ => return,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while *acked_upto.lock().unwrap() < 50 {
        assert!(Instant::now() < deadline, "ingest too slow");
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill9();
    writer.join().expect("writer");
    let acked = *acked_upto.lock().unwrap();
    assert!(acked < batches.len(), "the kill came too late to mean anything");

    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let stored = log_events(&mut c);
    assert!(stored >= acked as u64 * 100, "acknowledged events lost: {stored} stored, {} acknowledged", acked * 100);
    assert!(stored <= (acked as u64 + 1) * 100, "at most the one in-flight request may be stored: {stored}");
    // The client retries everything it did not see acknowledged, with the same keys.
    for (i, b) in batches.iter().enumerate().skip(acked).take(20) {
        let r = c.post("/v1/events", &[("Idempotency-Key", &format!("k{i}"))], &ndjson(b)).expect("retry");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let sent: Vec<ShopEvent> = batches.iter().take(acked + 20).flatten().cloned().collect();
    assert_eq!(log_events(&mut c), sent.len() as u64, "every event exactly once");
    let ends = c.get("/v1/status").expect("status").json()["log"]["end"].clone();
    let mf = ends.as_array().expect("ends").iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",");
    let v = c.get(&format!("/v1/views/customer_spend?limit=100000&min_frontier={mf}")).expect("query").json();
    assert_eq!(common::items_by_key(&v), expected_views(&sent)["customer_spend"]);
}

/// `min_frontier` covering every position of an ack.
fn frontier_of(ack: &Value) -> String {
    let mut ends = [0u64; 4];
    for r in ack["positions"].as_array().expect("positions") {
        let p = r["partition"].as_u64().expect("p") as usize;
        ends[p] = ends[p].max(r["to"].as_u64().expect("to"));
    }
    ends.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",")
}

// where_filters_compare_integers_exactly proves over HTTP that `where` compares integer
// fields as integers: at 2^53 + 1 (not an f64) and at i64::MIN, `=`, `>` and `<=` pick
// exactly the right keys, and a threshold outside the integer range is a 400 naming it.
#[test]
fn where_filters_compare_integers_exactly() {
    let tmp = TempDir::new("serve-where");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let stock = |product: u64, delta: i64| format!(r#"{{"type":"inventory","ts":1767225600000,"product_id":{product},"delta":{delta}}}"#);
    let body = [stock(1, 9_007_199_254_740_993), stock(2, 9_007_199_254_740_992), stock(3, i64::MIN), stock(4, i64::MIN + 1)].join("\n");
    let r = post(&mut c, body.as_bytes(), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let mf = frontier_of(&r.json());
    let keys = |c: &mut Client, filter: &str| -> Vec<String> {
        let r = c.get(&format!("/v1/views/inventory_level?where={filter}&min_frontier={mf}")).expect("query");
        assert_eq!(r.status, 200, "where={filter}: {}", r.text());
        r.json()["items"].as_array().expect("items").iter().map(|i| i["key"].to_string()).collect()
    };
    assert_eq!(keys(&mut c, "level=9007199254740992"), ["2"]);
    assert_eq!(keys(&mut c, "level=9007199254740993"), ["1"]);
    assert_eq!(keys(&mut c, "level%3E9007199254740992"), ["1"]);
    assert_eq!(keys(&mut c, "level%3C=-9223372036854775808"), ["3"]);
    assert_eq!(keys(&mut c, "level%3C-9223372036854775807"), ["3"]);
    for v in ["-9223372036854775809", "18446744073709551616"] {
        let r = c.get(&format!("/v1/views/inventory_level?where=level%3C={v}")).expect("query");
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(v), "the error names the value: {}", r.text());
    }
}

/// Percent-encodes everything but unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Pages through `/v1/views/{view}?{params}` with `after`; returns every item's key (as JSON
/// text) in order and the number of pages.
fn page_through(c: &mut Client, view: &str, params: &str) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={}", pct(a))).unwrap_or_default();
        let r = c.get(&format!("/v1/views/{view}?{params}{cursor}")).expect("page");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        pages += 1;
        keys.extend(v["items"].as_array().expect("items").iter().map(|i| i["key"].to_string()));
        match (&v["more"], &v["next"]) {
            (Value::Bool(true), Value::String(next)) => after = Some(next.clone()),
            (Value::Bool(false), Value::Null) => return (keys, pages),
            other => panic!("more/next disagree: {other:?} in {v}"),
        }
        assert!(pages < 10_000, "paging does not end");
    }
}

// range_queries_page_with_a_cursor proves `after=` pages through a whole view: with a small
// `limit`, following `next` until `more` is false yields every key exactly once, in order,
// the same keys one large answer has (plain, and with a `where` filter, whose scan stops
// once `limit` matches are found); `from` and `after` together are refused.
#[test]
fn range_queries_page_with_a_cursor() {
    let tmp = TempDir::new("serve-pages");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let r = post(&mut c, &ndjson(&events(3, 3000)), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let mf = frontier_of(&r.json());
    let all = |c: &mut Client, view: &str, params: &str| -> Vec<String> {
        let v = c.get(&format!("/v1/views/{view}?limit=100000&min_frontier={mf}{params}")).expect("all").json();
        assert_eq!(v["more"], false, "{v}");
        v["items"].as_array().expect("items").iter().map(|i| i["key"].to_string()).collect()
    };
    for (view, filter) in [("customer_spend", ""), ("product_revenue_by_day", ""), ("customer_spend", "&where=net_cents%3E5000")] {
        let whole = all(&mut c, view, filter);
        assert!(whole.len() > 20, "{view}: too few keys to page ({})", whole.len());
        let (paged, pages) = page_through(&mut c, view, &format!("limit=7&min_frontier={mf}{filter}"));
        assert_eq!(paged, whole, "{view}{filter}: paging gave other keys than one answer");
        let unique: std::collections::BTreeSet<&String> = paged.iter().collect();
        assert_eq!(unique.len(), paged.len(), "a key came twice");
        assert_eq!(pages, whole.len().div_ceil(7), "{view}{filter}: a full last page must say there is no more");
    }
    // A filter with a limit stops at the limit and says there is more.
    let v = c.get(&format!("/v1/views/customer_spend?where=net_cents%3E0&limit=1&min_frontier={mf}")).expect("q").json();
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["more"], true, "{v}");
    assert_eq!(c.get("/v1/views/customer_spend?from=1&after=2").expect("q").status, 400);
}

// empty_bodies_store_nothing_and_succeed proves an ingest body with no events (empty, blank
// lines, a CSV header alone) is answered like `lambdaflow ingest` of empty input: 200 with
// `accepted: 0` and no positions, nothing stored, and its Idempotency-Key not recorded; and a
// truncated JSON line's error names one line number only (the body's).
#[test]
fn empty_bodies_store_nothing_and_succeed() {
    let tmp = TempDir::new("serve-empty");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let csv_header = format!("{}\n", lambdaflow_jobs::shop::event::CSV_HEADER);
    for (body, key) in [(&b""[..], None), (&b"\n\n  \n"[..], None), (csv_header.as_bytes(), None), (&b""[..], Some("empty-1"))] {
        let r = post(&mut c, body, key);
        assert_eq!(r.status, 200, "{body:?}: {}", r.text());
        let ack = r.json();
        assert_eq!(ack["accepted"], 0, "{ack}");
        assert_eq!(ack["positions"], serde_json::json!([]), "{ack}");
        assert_eq!(ack["duplicate"], false, "{ack}");
    }
    assert_eq!(log_events(&mut c), 0);
    // The key of the empty request was not recorded: with events it is a first use.
    let r = post(&mut c, &ndjson(&events(9, 2)), Some("empty-1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["duplicate"], false);
    assert_eq!(log_events(&mut c), 2);
    // One line number in a JSON error.
    let mut body = ndjson(&events(9, 2));
    body.extend_from_slice(b"{\"type\":\n");
    let r = post(&mut c, &body, None);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["line"], 3, "{e}");
    let text = e["error"].as_str().expect("error");
    assert!(text.starts_with("line 3: ") && text.matches("line").count() == 1, "two line numbers: {text}");
    assert!(!e["message"].as_str().expect("message").contains("line"), "{e}");
    assert_eq!(log_events(&mut c), 2);
}

/// An answer without the ages in its freshness (they grow between two reads of the same
/// state), for comparing answers read at different times.
fn without_ages(mut v: Value) -> Value {
    if let Some(f) = v.get_mut("freshness").and_then(Value::as_object_mut) {
        f.remove("speed_age_ms");
        f.remove("batch_age_ms");
    }
    v
}

/// Ingests `batch` and waits until the speed layer shows it; returns it.
fn ingest_visible(c: &mut Client, batch: Vec<ShopEvent>) -> Vec<ShopEvent> {
    let r = post(c, &ndjson(&batch), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(&format!("/v1/views/revenue_by_day?limit=1&min_frontier={}", frontier_of(&r.json()))).expect("wait");
    assert_eq!(r.status, 200, "{}", r.text());
    batch
}

// Requests written at once on one connection (HTTP/1.1 pipelining) are answered in order,
// each exactly as when asked alone: points, a missing key, a bad key, a range whose answer is
// larger than what the server holds back for one write, several keys at once, and a last
// request with `Connection: close`, whose answer arrives before the connection closes.
#[test]
fn pipelined_requests_are_answered_in_order_and_exactly() {
    use std::io::{BufReader, Write};
    let tmp = TempDir::new("serve-pipeline");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    // The generator's usual id space: many keys, so a range answer is over 64 KiB.
    let config = lambdaflow_jobs::shop::gen::GenConfig { events: 5000, seed: 11, ..Default::default() };
    let batch = ingest_visible(&mut c, lambdaflow_jobs::shop::gen::Generator::new(config).collect());
    let expected = expected_views(&batch);
    let days: Vec<String> = expected["revenue_by_day"].keys().map(|k| serde_json::from_str(k).expect("day")).collect();
    let mut paths: Vec<String> = Vec::new();
    for (i, day) in days.iter().take(8).enumerate() {
        paths.push(format!("/v1/views/revenue_by_day/{day}"));
        paths.push(format!("/v1/views/customer_spend/{i}"));
    }
    paths.push("/v1/views/revenue_by_day/1999-01-01".into()); // no events: 404
    paths.push("/v1/views/revenue_by_day/yesterday".into()); // does not parse: 400
    paths.push("/v1/views/customer_spend?limit=100000".into()); // over 64 KiB
    paths.push(format!("/v1/views/revenue_by_day?key={}&key={}&key=1999-01-01", days[0], days[1]));
    paths.push("/v1/views/customer_spend/3".into());
    let alone: Vec<(u16, Value)> = paths
        .iter()
        .map(|p| {
            let r = c.get(p).expect("query");
            (r.status, without_ages(r.json()))
        })
        .collect();
    let largest = alone.iter().map(|(_, v)| v.to_string().len()).max().unwrap_or(0);
    assert!(largest > 64 << 10, "a range answer over 64 KiB: {largest} bytes");
    assert!(alone.iter().any(|(s, _)| *s == 404), "a missing key among them");
    assert_eq!(alone.iter().filter(|(s, _)| *s == 400).count(), 1);

    for round in 0..3 {
        let mut raw = std::net::TcpStream::connect(server.addr).expect("connect");
        let mut requests = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let close = if i + 1 == paths.len() { "Connection: close\r\n" } else { "" };
            requests.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: {}\r\n{close}\r\n", server.addr).as_bytes());
        }
        raw.write_all(&requests).expect("write all requests at once");
        let mut r = BufReader::new(raw);
        for (i, (status, want)) in alone.iter().enumerate() {
            let got =
                common::http::read_raw_response(&mut r, false).expect("read").unwrap_or_else(|| panic!("round {round}: no answer {i}"));
            assert_eq!((got.status, without_ages(got.json())), (*status, want.clone()), "round {round}: answer {i} ({})", paths[i]);
        }
        assert!(common::http::read_raw_response(&mut r, false).expect("read").is_none(), "closed after the last answer");
    }
    assert_eq!(server.terminate(), Some(0));
}

// Several keys in one request (`?key=A&key=B`): each entry is exactly the one-key answer
// (without view and freshness, given once), in the order asked, duplicates included; a key
// without events is a 404 entry; a key that does not parse makes the request a 400 naming
// it; at most 256 keys; keys and a range cannot be mixed.
#[test]
fn several_keys_in_one_request() {
    let tmp = TempDir::new("serve-keys");
    let server = Server::start(tmp.path(), &[]);
    let mut c = server.client();
    let batch = ingest_visible(&mut c, events(12, 2000));
    let expected = expected_views(&batch);
    let days: Vec<String> = expected["revenue_by_day"].keys().map(|k| serde_json::from_str(k).expect("day")).collect();
    let pd: Value = serde_json::from_str(expected["product_revenue_by_day"].keys().next().expect("a product day")).expect("key");
    let pd = format!("{}/{}", pd["day"].as_str().expect("day"), pd["product_id"]);
    for (view, keys) in [
        ("revenue_by_day", vec![days[1].clone(), "1999-01-01".into(), days[0].clone(), days[1].clone()]),
        ("product_revenue_by_day", vec![pd.clone(), "1999-01-01/5".into()]),
        ("customer_spend", (0..40).map(|i| i.to_string()).collect()),
    ] {
        let query: Vec<String> = keys.iter().map(|k| format!("key={}", pct(k))).collect();
        let offloaded = keys_offloaded(&mut c);
        let r = c.get(&format!("/v1/views/{view}?{}", query.join("&"))).expect("keys");
        assert_eq!(r.status, 200, "{}", r.text());
        // More than 32 keys run on the blocking pool, not the async thread (same answers).
        assert_eq!(keys_offloaded(&mut c) - offloaded, u64::from(keys.len() > 32), "{view}: {} keys", keys.len());
        let all = without_ages(r.json());
        assert_eq!(all["view"], view);
        let answers = all["answers"].as_array().expect("answers");
        assert_eq!(answers.len(), keys.len());
        for (k, got) in keys.iter().zip(answers) {
            let one = c.get(&format!("/v1/views/{view}/{k}")).expect("one key");
            let mut one_json = without_ages(one.json());
            assert_eq!(one_json["freshness"], all["freshness"], "the same state");
            match one.status {
                200 => {
                    let o = one_json.as_object_mut().expect("object");
                    o.remove("view");
                    o.remove("freshness");
                    assert_eq!(got, &Value::Object(o.clone()), "{view}/{k}");
                }
                404 => {
                    assert_eq!(got["status"], 404, "{got}");
                    assert_eq!(got["key"], k.as_str());
                    assert_eq!(got["error"], one_json["error"]);
                }
                s => panic!("{view}/{k}: HTTP {s}"),
            }
        }
    }
    // A key that does not parse: 400 naming it and its place.
    let r = c.get(&format!("/v1/views/revenue_by_day?key={}&key=yesterday", days[0])).expect("bad key");
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["key"], "yesterday");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("key 2 of 2 (`yesterday`)")), "{e}");
    // 32 keys stay on the async thread, 33 do not; the answers are the same either way.
    let keys = |n: usize| (0..n).map(|i| format!("key={i}")).collect::<Vec<_>>().join("&");
    let answers = |c: &mut Client, n: usize| -> Vec<Value> {
        let r = c.get(&format!("/v1/views/customer_spend?{}", keys(n))).expect("keys");
        assert_eq!(r.status, 200, "{}", r.text());
        let mut all = without_ages(r.json());
        all["answers"].as_array_mut().map(std::mem::take).expect("answers")
    };
    let offloaded = keys_offloaded(&mut c);
    let inline = answers(&mut c, 32);
    assert_eq!(keys_offloaded(&mut c), offloaded);
    let pooled = answers(&mut c, 33);
    assert_eq!(keys_offloaded(&mut c), offloaded + 1);
    assert_eq!(pooled[..32], inline[..]);
    // The bound: 256 keys are answered, 257 are refused.
    let r = c.get(&format!("/v1/views/customer_spend?{}", keys(256))).expect("256 keys");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["answers"].as_array().map(Vec::len), Some(256));
    let r = c.get(&format!("/v1/views/customer_spend?{}", keys(257))).expect("257 keys");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("at most 256 keys"), "{}", r.text());
    // Keys and a range do not mix; an unknown view is a 404 as for one key.
    let r = c.get("/v1/views/customer_spend?key=1&limit=5").expect("mixed");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("key=") && r.text().contains("limit="), "{}", r.text());
    let r = c.get("/v1/views/no_such_view?key=1").expect("unknown view");
    assert_eq!(r.status, 404, "{}", r.text());
    // Without key= the range endpoint is unchanged.
    let r = c.get("/v1/views/customer_spend?limit=3").expect("range");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(server.terminate(), Some(0));
}

/// `lambdaflow_query_keys_offloaded_total` from `GET /metrics`: requests for more than 32
/// keys answered on the blocking pool.
fn keys_offloaded(c: &mut Client) -> u64 {
    let metrics = c.get("/metrics").expect("metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("lambdaflow_query_keys_offloaded_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lambdaflow_query_keys_offloaded_total in {metrics}"))
}
