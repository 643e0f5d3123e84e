//! Parquet out and in, checked by an independent reader: DuckDB (the Python package) reads
//! every exported view and its rows must equal lambdaflow's own answers, for every shop view,
//! batch alone and merged; and shop events written to Parquet by DuckDB from a generated
//! CSV file read back as the same events.
//!
//! Needs `python3 -m pip install duckdb`. Without it the DuckDB tests print a notice and
//! pass, so that `cargo test --workspace` works on a fresh machine; with
//! `LAMBDAFLOW_REQUIRE_DUCKDB=1` (as `.ci/run` sets after installing it) they fail instead.

mod common;

use common::{gen_file, ingest, read_events, run, run_ok, stderr, stdout, TempDir};
use lambdaflow_engine::export::{parse_parquet, JobViews, MANIFEST};
use lambdaflow_jobs::shop::{Shop, ShopEvent};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Whether a missing DuckDB fails the test rather than skipping it.
fn duckdb_required() -> bool {
    std::env::var("LAMBDAFLOW_REQUIRE_DUCKDB").is_ok_and(|v| v == "1")
}

/// Whether `python3 -c "import duckdb"` works; if not, prints a notice (or panics when
/// `LAMBDAFLOW_REQUIRE_DUCKDB=1`).
fn duckdb_or_skip() -> bool {
    let why = match Command::new("python3").args(["-c", "import duckdb"]).output() {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!("python3 cannot import duckdb ({})", String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")),
        Err(e) => format!("python3 does not run ({e})"),
    };
    if duckdb_required() {
        panic!("LAMBDAFLOW_REQUIRE_DUCKDB=1, but {why}");
    }
    // Straight to stderr, not eprintln!: the test harness would hide that for a passing test.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: skipping a Parquet test: {why} (python3 -m pip install duckdb); set LAMBDAFLOW_REQUIRE_DUCKDB=1 to make this a failure"
    );
    false
}

/// Runs a Python script with DuckDB; its stdout parsed as JSON.
fn duckdb(script: &str, args: &[&str]) -> Value {
    let o = Command::new("python3").arg("-c").arg(script).args(args).output().expect("spawn python3");
    assert!(o.status.success(), "python3 failed ({}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("python3 printed no JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// Reads each file given as an argument with DuckDB: its column names and types, its rows as
/// JSON objects (dates as YYYY-MM-DD, decimals as integers, structs as objects), and the
/// file's key/value metadata.
const READ_VIEWS: &str = r#"
import sys, json, decimal, datetime, duckdb
def plain(v):
    if isinstance(v, datetime.date): return v.isoformat()
    if isinstance(v, decimal.Decimal): return int(v) if v == v.to_integral_value() else str(v)
    if isinstance(v, list): return [plain(x) for x in v]
    if isinstance(v, dict): return {k: plain(x) for k, x in v.items()}
    return v
out = {}
con = duckdb.connect()
for path in sys.argv[1:]:
    rel = con.sql("SELECT * FROM read_parquet(?)".replace("?", "'" + path.replace("'", "''") + "'"))
    cols = rel.columns
    rows = [{c: plain(v) for c, v in zip(cols, r)} for r in rel.fetchall()]
    kv = {k.decode(): v.decode() for k, v in con.execute("SELECT key, value FROM parquet_kv_metadata(?)", [path]).fetchall()}
    out[path] = {"columns": cols, "types": [str(t) for t in rel.types], "rows": rows, "meta": kv}
print(json.dumps(out))
"#;

/// The rows lambdaflow's own answers (`query VIEW --all --json`) make: an object key's or
/// value's fields as columns, otherwise one column `key` or `value`.
fn expected_rows(data: &Path, view: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for a in query_items(data, view) {
        let mut row = serde_json::Map::new();
        for (part, whole) in [(&a["key"], "key"), (&a["value"], "value")] {
            match part {
                Value::Object(fields) => row.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone()))),
                other => {
                    row.insert(whole.to_string(), other.clone());
                }
            }
        }
        rows.push(Value::Object(row));
    }
    rows
}

fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_cached_key(|r| r.to_string());
    rows
}

fn view_names() -> Vec<String> {
    JobViews::of(&Shop).views.iter().map(|v| v.info().name.clone()).collect()
}

/// Every file DuckDB read equals lambdaflow's answers, row for row; returns the files as read.
fn check_export(data: &Path, out: &Path, merged: bool) -> Value {
    let views = view_names();
    let paths: Vec<String> = views.iter().map(|v| out.join(format!("{v}.parquet")).to_string_lossy().into_owned()).collect();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let read = duckdb(READ_VIEWS, &args);
    let status: Value = serde_json::from_str(&stdout(&run_ok(data, &["status", "--json"]))).expect("status --json");
    let version = status["batch"]["version"].as_u64().expect("a batch version");
    let sums: Vec<String> = JobViews::of(&Shop)
        .views
        .iter()
        .filter(|v| matches!(v.info().kind, lambdaflow_operators::ViewKind::Sum))
        .map(|v| v.info().name.clone())
        .collect();
    for (view, path) in views.iter().zip(&paths) {
        let file = &read[path.as_str()];
        let key_columns = file["meta"]["lambdaflow.key_columns"].as_str().map(|k| serde_json::from_str::<Vec<String>>(k).unwrap()).unwrap();
        let want = expected_rows(data, view);
        assert!(!want.is_empty(), "view {view} has answers");
        let got = file["rows"].as_array().expect("rows").clone();
        assert_eq!(got.len(), want.len(), "view {view}: rows in the file vs lambdaflow's answers");
        assert!(sorted(got) == sorted(want), "view {view}: DuckDB's rows differ from lambdaflow's answers");
        // Typed columns, not text: days are DATEs, keys 64-bit integers, a sum view's values
        // DECIMAL(38,0) whatever their size.
        let types: Vec<&str> = file["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let columns: Vec<&str> = file["columns"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        for (c, t) in columns.iter().zip(&types) {
            let want_type = match *c {
                "day" => "DATE",
                "segment" | "key" if *view == "customer_segments" => "VARCHAR",
                "key" if view.ends_with("_by_day") || *view == "daily_unique_viewers" => "DATE",
                "value" if !sums.contains(view) => "STRUCT(net_cents BIGINT, product_id BIGINT)[]",
                c if sums.contains(view) && !key_columns.iter().any(|k| k == c) => "DECIMAL(38,0)",
                _ => "BIGINT",
            };
            assert_eq!(*t, want_type, "view {view}: column {c}");
        }
        let meta = &file["meta"];
        assert_eq!(meta["lambdaflow.view"], json!(view));
        assert_eq!(meta["lambdaflow.batch_version"], json!(version.to_string()));
        assert_eq!(meta["lambdaflow.merged"], json!(merged.to_string()));
        if merged {
            let frontier: Value = serde_json::from_str(meta["lambdaflow.frontier"].as_str().expect("a frontier")).unwrap();
            assert_eq!(frontier, status["log_end"], "view {view}: merged at the log's end");
        }
    }
    read
}

// Issue 13, item 4: DuckDB reads the exported files and its answers equal lambdaflow's for
// every shop view: the batch version alone, then the merged answers after more events.
#[test]
fn duckdb_reads_every_view_as_lambdaflow_answers_it() {
    if !duckdb_or_skip() {
        return;
    }
    let dir = TempDir::new("parquet-views");
    let data = dir.path().join("data");
    let (first, second) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    gen_file(&first, 20_000, 7, "ndjson");
    gen_file(&second, 3_000, 8, "ndjson");
    ingest(&data, &first);
    run_ok(&data, &["batch"]);

    let out = dir.path().join("batch");
    let o = run_ok(&data, &["export", "--all", "--format", "parquet", "--out", out.to_str().unwrap()]);
    assert!(stdout(&o).contains("batch version 1"), "{}", stdout(&o));
    let batch_read = check_export(&data, &out, false);
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["batch_version"], 1);
    assert_eq!(manifest["views"].as_array().unwrap().len(), view_names().len());
    // Nothing but the files and the manifest: no temporary file left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> =
        view_names().iter().map(|v| format!("{v}.parquet")).chain([MANIFEST.to_string(), ".lambdaflow.lock".to_string()]).collect();
    want.sort();
    assert_eq!(names, want);

    // More events, not in the batch: the merged export has them, the batch export not.
    ingest(&data, &second);
    let merged = dir.path().join("merged");
    run_ok(&data, &["export", "--all", "--merged", "--out", merged.to_str().unwrap()]);
    let merged_read = check_export(&data, &merged, true);
    let rows = |read: &Value, out: &Path| read[out.join("revenue_by_day.parquet").to_str().unwrap()]["rows"].clone();
    assert_ne!(rows(&batch_read, &out), rows(&merged_read, &merged), "the merged export includes the speed layer's events");

    // An analyst's query, in SQL: total net revenue equals lambdaflow's.
    let total = duckdb(
        "import sys, json, duckdb; print(json.dumps(int(duckdb.connect().execute('SELECT sum(net_cents) FROM read_parquet(?)', [sys.argv[1]]).fetchone()[0])))",
        &[merged.join("revenue_by_day.parquet").to_str().unwrap()],
    );
    let want: i128 = expected_rows(&data, "revenue_by_day").iter().map(|r| r["net_cents"].as_i64().unwrap() as i128).sum();
    assert_eq!(total.as_i64().unwrap() as i128, want);
}

// One view, and the errors: an unknown view, no batch version yet.
#[test]
fn export_one_view_and_refusals() {
    let dir = TempDir::new("parquet-one");
    let data = dir.path().join("data");
    let file = dir.path().join("e.ndjson");
    gen_file(&file, 2_000, 3, "ndjson");
    ingest(&data, &file);
    let out = dir.path().join("out");
    let o = run(&data, &["export", "revenue_by_day", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "no batch version yet is a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("run `batch` first"), "{}", stderr(&o));
    run_ok(&data, &["batch"]);
    let o = run(&data, &["export", "no_such_view", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no view named `no_such_view`") && stderr(&o).contains("revenue_by_day"), "{}", stderr(&o));
    let o = run(&data, &["export", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a view or --all is required");
    let o = run(&data, &["export", "revenue_by_day", "--version", "99", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "an unknown version is a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("no published batch version 99") && stderr(&o).contains("versions are: 1"), "{}", stderr(&o));
    run_ok(&data, &["export", "revenue_by_day", "--out", out.to_str().unwrap()]);
    assert!(out.join("revenue_by_day.parquet").exists());
    assert!(!out.join("customer_spend.parquet").exists());
}

// `batch --export-parquet DIR` writes the version it published, every run.
#[test]
fn batch_writes_parquet_alongside_each_version() {
    let dir = TempDir::new("parquet-batch");
    let data = dir.path().join("data");
    let out = dir.path().join("exports");
    let file = dir.path().join("e.ndjson");
    gen_file(&file, 3_000, 5, "ndjson");
    ingest(&data, &file);
    let version_in = |out: &Path| -> Value {
        let m: Value = serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).expect("a manifest")).unwrap();
        m["batch_version"].clone()
    };
    run_ok(&data, &["batch", "--export-parquet", out.to_str().unwrap()]);
    assert_eq!(version_in(&out), 1);
    ingest(&data, &file);
    let o = run_ok(&data, &["batch", "--export-parquet", out.to_str().unwrap()]);
    assert!(stderr(&o).contains("exported batch v2 as Parquet"), "{}", stderr(&o));
    assert_eq!(version_in(&out), 2);
    for v in view_names() {
        assert!(out.join(format!("{v}.parquet")).exists(), "{v}");
    }
    // An older published version, on request.
    let old = dir.path().join("old");
    run_ok(&data, &["export", "--all", "--version", "1", "--out", old.to_str().unwrap()]);
    assert_eq!(version_in(&old), 1);
    let o = run_ok(&data, &["export", "--help"]);
    assert!(stdout(&o).contains("Example") && stdout(&o).contains("docs/export.md"), "{}", stdout(&o));
}

// Parquet in: shop events written to Parquet by DuckDB from a generated CSV file read back
// as exactly the events of the CSV file; a bad row is reported with its row, field and value.
#[test]
fn shop_events_round_trip_through_parquet() {
    if !duckdb_or_skip() {
        return;
    }
    let dir = TempDir::new("parquet-in");
    let csv = dir.path().join("events.csv");
    gen_file(&csv, 5_000, 11, "csv");
    let parquet = dir.path().join("events.parquet");
    let to_parquet = r#"
import sys, json, duckdb
con = duckdb.connect()
con.execute("SET threads = 1")
con.execute("COPY (SELECT * FROM read_csv(?, header=true)) TO '" + sys.argv[2].replace("'", "''") + "' (FORMAT parquet)", [sys.argv[1]])
print(json.dumps([str(t) for t in con.sql("SELECT * FROM read_parquet('" + sys.argv[2].replace("'", "''") + "')").types]))
"#;
    let types = duckdb(to_parquet, &[csv.to_str().unwrap(), parquet.to_str().unwrap()]);
    assert_eq!(types[0], "VARCHAR", "type is a string column");
    assert_eq!(types[1], "BIGINT", "ts is an integer column");
    let from_csv: Vec<ShopEvent> = read_events(&csv);
    let from_parquet: Vec<ShopEvent> = parse_parquet(&parquet).expect("read the Parquet file");
    assert_eq!(from_parquet.len(), 5_000);
    assert!(from_parquet == from_csv, "the events read from Parquet differ from the CSV's");

    // The first purchase with a negative quantity: the job's parser names the field and the
    // value, the reader the row.
    let row = from_csv.iter().position(|e| matches!(e, ShopEvent::Purchase { .. })).expect("a purchase") + 1;
    let bad = dir.path().join("bad.parquet");
    let break_row = r#"
import sys, json, duckdb
con = duckdb.connect()
con.execute("SET threads = 1")
src, dst, row = sys.argv[1].replace("'", "''"), sys.argv[2].replace("'", "''"), int(sys.argv[3])
con.execute("COPY (SELECT * EXCLUDE (n) REPLACE (CASE WHEN n = " + str(row) + " THEN -3 ELSE quantity END AS quantity) FROM (SELECT *, row_number() OVER () AS n FROM read_parquet('" + src + "')) ORDER BY n) TO '" + dst + "' (FORMAT parquet)")
print("[]")
"#;
    duckdb(break_row, &[parquet.to_str().unwrap(), bad.to_str().unwrap(), &row.to_string()]);
    let err = parse_parquet::<ShopEvent>(&bad).unwrap_err();
    assert_eq!(err.exit_code(), 3, "bad input");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("line {row}:")) && msg.contains("\"quantity\"") && msg.contains("-3"), "{msg}");
    assert!(msg.contains(&format!("row {row} of")), "{msg}");

    // `lambdaflow ingest` reads Parquet: by extension, by `--format parquet`, or by its magic
    // bytes; the views equal those of the CSV file ingested.
    let (by_csv, by_parquet) = (dir.path().join("by-csv"), dir.path().join("by-parquet"));
    ingest(&by_csv, &csv);
    ingest(&by_parquet, &parquet);
    for view in view_names() {
        assert!(query_items(&by_parquet, &view) == query_items(&by_csv, &view), "view {view}: Parquet ingest differs from CSV ingest");
    }
    let (flagged, sniffed) = (dir.path().join("flagged"), dir.path().join("sniffed"));
    let renamed = dir.path().join("events.bin");
    std::fs::copy(&parquet, &renamed).unwrap();
    run_ok(&flagged, &["ingest", renamed.to_str().unwrap(), "--format", "parquet"]);
    ingest(&sniffed, &renamed);
    for data in [&flagged, &sniffed] {
        assert_eq!(common::end_offsets(data), common::end_offsets(&by_csv), "{}", data.display());
    }

    // A bad row: exit 3 naming the row, field and value, and nothing of the file is stored.
    let before = common::end_offsets(&by_parquet);
    let o = run(&by_parquet, &["ingest", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(msg.contains(&format!("line {row}")) && msg.contains("quantity") && msg.contains("-3"), "{msg}");
    assert_eq!(common::end_offsets(&by_parquet), before, "a rejected file stores nothing");

    // A row the reader cannot turn into NDJSON (a list column) is bad input too, naming the
    // file, row and column.
    let listy = dir.path().join("listy.parquet");
    let add_list = r#"
import sys, duckdb
con = duckdb.connect()
con.execute("COPY (SELECT *, [1, 2] AS tags FROM read_parquet('" + sys.argv[1].replace("'", "''") + "')) TO '" + sys.argv[2].replace("'", "''") + "' (FORMAT parquet)")
print("[]")
"#;
    duckdb(add_list, &[parquet.to_str().unwrap(), listy.to_str().unwrap()]);
    let o = run(&by_parquet, &["ingest", listy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(msg.contains("line 1") && msg.contains("tags") && msg.contains("listy.parquet"), "{msg}");
    assert_eq!(common::end_offsets(&by_parquet), before, "a rejected file stores nothing");
}

/// The batch version `DIR`'s manifest names, if it has one.
fn manifest_version(out: &Path) -> Option<u64> {
    let m: Value = serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).ok()?).ok()?;
    m["batch_version"].as_u64()
}

// `serve --export-parquet DIR` writes the current version at start and every version it
// publishes; `export` works next to the running service (the batch version from the store,
// merged answers from the service).
#[test]
fn serve_writes_parquet_for_every_version_and_export_works_next_to_it() {
    let dir = TempDir::new("parquet-serve");
    let data = dir.path().join("data");
    let out = dir.path().join("exports");
    let file = dir.path().join("e.ndjson");
    gen_file(&file, 3_000, 9, "ndjson");
    ingest(&data, &file);
    run_ok(&data, &["batch"]);
    let server = common::http::Server::start(&data, &["--export-parquet", out.to_str().unwrap()]);
    let wait_for = |version: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while manifest_version(&out) != Some(version) {
            assert!(std::time::Instant::now() < deadline, "no export of v{version} within 120 s:\n{}", server.stderr());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(1);
    // `batch` next to the service asks it for a run; the service exports what it publishes.
    run_ok(&data, &["batch"]);
    wait_for(2);
    for v in view_names() {
        assert!(out.join(format!("{v}.parquet")).exists(), "{v}");
    }

    let next_to = dir.path().join("next-to");
    run_ok(&data, &["export", "--all", "--out", next_to.to_str().unwrap()]);
    assert_eq!(manifest_version(&next_to), Some(2));
    let merged = dir.path().join("merged");
    let o = run_ok(&data, &["export", "customer_spend", "--merged", "--out", merged.to_str().unwrap()]);
    assert!(stdout(&o).contains("merged answers"), "{}", stdout(&o));
    let m: Value = serde_json::from_slice(&std::fs::read(merged.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(m["merged"], true);
    assert_eq!(m["views"][0]["rows"], read_rows_of_query(&data, "customer_spend"));
    server.terminate();
}

/// How many answers `query VIEW --all --json` prints.
fn read_rows_of_query(data: &Path, view: &str) -> Value {
    json!(query_items(data, view).len())
}

/// The answers `query VIEW --all --json` prints (`{"items": [{key, value, ...}], ...}`).
fn query_items(data: &Path, view: &str) -> Vec<Value> {
    let o = run_ok(data, &["query", view, "--all", "--json"]);
    let answer: Value = serde_json::from_str(&stdout(&o)).expect("query --json prints JSON");
    answer["items"].as_array().expect("items").clone()
}
