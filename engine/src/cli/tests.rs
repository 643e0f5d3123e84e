//! The command line with jobs of its own: one whose events have no CSV form.

use super::*;
use lambdaflow_operators::{Coll, Ctx, Event, FieldError};
use serde::{Deserialize, Serialize};

/// An event with the DSL's defaults: NDJSON through serde, no CSV form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Plain {
    k: u64,
}

impl Event for Plain {
    fn partition_key(&self) -> u64 {
        self.k
    }
}

/// The same event with a CSV form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Tabular {
    k: u64,
}

impl Event for Tabular {
    fn csv_header() -> &'static str {
        "k"
    }
    fn parse_csv(line: &str) -> std::result::Result<Self, FieldError> {
        line.trim().parse().map(|k| Tabular { k }).map_err(|_| FieldError::field("k", line, "expected an unsigned integer"))
    }
    fn partition_key(&self) -> u64 {
        self.k
    }
}

struct Counts<E>(std::marker::PhantomData<E>);

impl<E: Event> Job for Counts<E> {
    type Event = E;
    fn name(&self) -> &'static str {
        "counts"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, E>) {
        let n = ctx.count("n", events, |_| Some(0u64));
        ctx.sum_view("n", n, |s| serde_json::json!({ "events": s.0[0] }));
    }
}

fn help_of_ingest<E: Event>() -> String {
    let mut cmd = command::<E>();
    cmd.build();
    cmd.find_subcommand_mut("ingest").expect("ingest").render_long_help().to_string()
}

// Issue 12: CSV is optional. `ingest --help` of a job without a CSV form says it reads
// NDJSON or Parquet and that CSV is refused; a job with one still offers CSV.
#[test]
fn ingest_help_says_which_formats_the_job_reads() {
    let plain = help_of_ingest::<Plain>();
    assert!(plain.contains("NDJSON or Parquet") && plain.contains("no CSV form"), "{plain}");
    assert!(!plain.contains("ndjson, csv or parquet"), "{plain}");
    let tabular = help_of_ingest::<Tabular>();
    assert!(tabular.contains("NDJSON or CSV") && tabular.contains("ndjson, csv or parquet"), "{tabular}");
}

/// `lambdaflow --data DIR ingest ARGS` for `Counts<E>`.
fn ingest_as<E: Event>(dir: &Path, args: &[&str]) -> Result<()> {
    let mut argv = vec!["lambdaflow", "--data", dir.to_str().expect("utf-8"), "--wait", "0", "ingest"];
    argv.extend_from_slice(args);
    let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("valid arguments");
    let g = Global { data: cli.data, workers: 1, workers_given: true, wait: cli.wait };
    match cli.command {
        Command::Ingest(args) => ingest::<Counts<E>>(&g, args),
        _ => unreachable!("parsed as ingest"),
    }
}

// Issue 12: a job without a CSV form refuses a CSV input with an error naming the file and
// saying the job reads NDJSON/Parquet only, and stores nothing (no log is even created);
// named CSV by its extension or by --format, or found to be CSV by its first line. The same
// file is ingested by a job with a CSV form.
#[test]
fn a_job_without_csv_refuses_csv_input_and_stores_nothing() {
    let tmp = crate::testing::TempDir::new("cli-no-csv");
    let csv = tmp.join("events.csv");
    std::fs::write(&csv, "k\n1\n2\n").expect("write");
    let data = tmp.join("data");
    let err = ingest_as::<Plain>(&data, &[csv.to_str().expect("utf-8")]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::BadInput { line: 1, .. }), "{err:?}");
    assert!(text.contains(&csv.display().to_string()) && text.contains("NDJSON (one JSON object a line) or Parquet only"), "{text}");
    assert!(text.contains("nothing was stored"), "{text}");
    assert!(!data.join("log").exists(), "a refused input created a log");
    // Named CSV by --format, whatever its name.
    let named = tmp.join("events.txt");
    std::fs::write(&named, "k\n1\n").expect("write");
    let err = ingest_as::<Plain>(&data, &["--format", "csv", named.to_str().expect("utf-8")]).unwrap_err();
    assert!(err.to_string().contains("events.txt: CSV input"), "{err}");
    assert!(!data.join("log").exists(), "a refused input created a log");
    // Found by its first line: refused at line 1 with the same reason, naming the file and
    // the line (the first non-blank one).
    let err = ingest_as::<Plain>(&data, &[named.to_str().expect("utf-8")]).unwrap_err();
    assert!(matches!(&err, Error::BadInput { line: 1, .. }) && err.to_string().contains("no CSV form"), "{err}");
    assert!(err.to_string().contains(&format!("{}: its first line (`k`)", named.display())), "{err}");
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(!data.join("log").exists(), "a refused input created a log");
    let blank_first = tmp.join("blank-first.ndjson");
    std::fs::write(&blank_first, "\n  \nk,v\n1,2\n").expect("write");
    let err = ingest_as::<Plain>(&data, &[blank_first.to_str().expect("utf-8")]).unwrap_err();
    assert!(matches!(&err, Error::BadInput { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("{}: its first line (`k,v`)", blank_first.display())), "{err}");
    assert_eq!(crate::log::Log::open(&data.join("log")).map(|l| l.end_offsets().iter().sum::<u64>()).unwrap_or(0), 0);
    // A job with a CSV form reads the same file; NDJSON is read by both.
    ingest_as::<Tabular>(&tmp.join("tabular"), &[csv.to_str().expect("utf-8")]).expect("CSV ingested");
    let ndjson = tmp.join("events.ndjson");
    std::fs::write(&ndjson, "{\"k\":1}\n").expect("write");
    ingest_as::<Plain>(&data, &[ndjson.to_str().expect("utf-8")]).expect("NDJSON ingested");
    let log = crate::log::Log::open(&tmp.join("tabular").join("log")).expect("log");
    assert_eq!(log.end_offsets().iter().sum::<u64>(), 2);
}

// Without the default, a CSV row of a type without a CSV form says why.
#[test]
fn the_default_csv_parser_says_there_is_no_csv_form() {
    assert!(!Plain::reads_csv() && Tabular::reads_csv());
    assert!(Plain::parse_csv("1").unwrap_err().to_string().contains("no CSV form"));
    let parsed = crate::input::parse_all::<Plain>(&mut "k\n1\n".as_bytes()).unwrap_err();
    assert!(parsed.to_string().contains("line 1") && parsed.to_string().contains("no CSV form"), "{parsed}");
}

/// A keyed value event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Set {
    k: u64,
    v: u64,
}

impl Event for Set {
    fn partition_key(&self) -> u64 {
        self.k
    }
}

/// The mistake of issue 12: a raw differential `reduce` on an unseeded input. In speed mode
/// it sees only the events since the cut, so a key updated after a batch gets a second
/// value with no retraction of the batch one.
#[derive(Clone)]
struct Unseeded;

impl Job for Unseeded {
    type Event = Set;
    fn name(&self) -> &'static str {
        "unseeded"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Set>) {
        let latest = events.map(|e| (e.k, e.v)).reduce(|_k, vals, out| out.push((*vals[vals.len() - 1].0, 1)));
        ctx.value_view("largest", latest, |v: &u64| serde_json::json!(v));
    }
}

// Issue 12: one malformed key does not fail a range query. The key that merged to two
// records is an entry with its error (naming the key and the fix: seed the operator's
// input) beside the other keys' answers, in the service's merge and in a local `query`
// alike; `check_exact` fails with that message; a point query of that key is an error.
#[test]
fn a_malformed_key_is_an_entry_beside_the_good_answers() {
    let tmp = crate::testing::TempDir::new("cli-malformed");
    let dir = tmp.join("data");
    let all = Selection::Range { from: None, to: None, limit: usize::MAX };
    let (first, later) = (vec![Set { k: 1, v: 1 }, Set { k: 2, v: 5 }, Set { k: 3, v: 7 }], vec![Set { k: 1, v: 3 }]);
    let served = {
        let lambda = Lambda::open(Unseeded, &dir, crate::testing::test_options(1)).expect("open");
        lambda.append(&first).expect("append");
        lambda.batch_and_handover(Arc::new(Progress::default())).expect("batch");
        lambda.append(&later).expect("append");
        lambda.sync(Duration::from_secs(60)).expect("sync");
        lambda.query("largest", &all).expect("a range query answers").answers
    };
    let shape = |answers: &[lambdaflow_operators::Answer]| -> Vec<(serde_json::Value, serde_json::Value, bool)> {
        answers.iter().map(|a| (a.key.clone(), a.value.clone(), a.error.is_some())).collect()
    };
    use serde_json::{json, Value};
    assert_eq!(shape(&served), vec![(json!(1), Value::Null, true), (json!(2), json!(5), false), (json!(3), json!(7), false)]);
    let err = served[0].error.as_deref().expect("error");
    assert!(err.contains("key 1") && err.contains("merged to 2 records") && err.contains("ctx.seeded"), "{err}");
    let (local, _) = local::query(Unseeded, &dir, 1, "largest", &all, false).expect("a local range query answers");
    assert_eq!(local.answers, served, "a local query answers as the service");
    let (point, _) = local::query(Unseeded, &dir, 1, "largest", &Selection::Key("2".into()), false).expect("point");
    assert_eq!(shape(&point.answers), vec![(json!(2), json!(5), false)]);
}

/// [`Unseeded`] fixed: the reduce's input is seeded.
#[derive(Clone)]
struct Seeded;

impl Job for Seeded {
    type Event = Set;
    fn name(&self) -> &'static str {
        "seeded"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Set>) {
        let input = ctx.seeded("largest", events.map(|e| (e.k, e.v)));
        let latest = input.reduce(|_k, vals, out| out.push((*vals[vals.len() - 1].0, 1)));
        ctx.value_view("largest", latest, |v: &u64| serde_json::json!(v));
    }
}

// Issue 12: the mistake is caught before any run, from the job's graph: `check_exact` fails
// at once naming the operator and the fix, and a local query warns. The fixed job (and a
// job of DSL operators only) passes, exactly.
#[test]
fn an_unseeded_stateful_operator_is_reported_with_the_fix() {
    let why = crate::cli::lint_job(Arc::new(Unseeded)).expect("builds").expect("reported");
    assert!(why.contains("job unseeded") && why.contains("Reduce") && why.contains("ctx.seeded(name, input)"), "{why}");
    let events: Vec<Set> = (0..40).map(|i| Set { k: i % 7, v: (i * 37) % 11 }).collect();
    let err = crate::testing::check_exact(Unseeded, &events, &[20], 1).err().expect("check_exact fails");
    assert!(err.ends_with(&format!("\nhint: {why}")), "{err}");
    assert_eq!(crate::cli::lint_job(Arc::new(Seeded)).expect("builds"), None);
    assert_eq!(crate::cli::lint_job(Arc::new(Counts::<Plain>(std::marker::PhantomData))).expect("builds"), None);
    crate::testing::check_exact(Seeded, &events, &[20], 1).expect("the seeded job is exact");
}

// A local query opens the directory through the key journal: a keyed group append a crash
// interrupted (journal record written, part of the group in the log) is rolled back before
// the query reads, so the answer counts only acknowledged events.
#[test]
fn a_local_query_rolls_back_an_interrupted_keyed_group() {
    use crate::keys::{KeyEntry, KeyJournal, Range};
    let tmp = crate::testing::TempDir::new("cli-interrupted-group");
    let dir = tmp.join("data");
    let cfg = crate::log::LogConfig { partitions: 2, ..crate::log::LogConfig::default() };
    {
        let appender = crate::append::Appender::open(&dir, cfg).expect("open");
        appender.append(&[Set { k: 1, v: 1 }, Set { k: 2, v: 5 }]).expect("append");
    }
    {
        let log = crate::log::Log::open(&dir.join("log")).expect("log");
        let ends = log.end_offsets();
        let (mut journal, log) = KeyJournal::open(&dir, log, Duration::from_secs(3600), 1000).expect("journal");
        let mut end = ends.clone();
        end[0] += 2;
        end[1] += 1;
        let entry = KeyEntry {
            key: "k".into(),
            body_hash: 0,
            events: 3,
            ranges: vec![Range { partition: 0, from: ends[0], to: end[0] }, Range { partition: 1, from: ends[1], to: end[1] }],
            at_ms: 0,
        };
        journal.prepare(ends.clone(), end, &[entry]).expect("prepare");
        // Only one event of the group reaches the disk before the "crash".
        let bytes = bincode::serialize(&Set { k: 9, v: 9 }).expect("encode");
        log.append(&[(0, &bytes[..])]).expect("append");
    }
    let all = Selection::Range { from: None, to: None, limit: usize::MAX };
    let (result, _) = local::query(Seeded, &dir, 1, "largest", &all, false).expect("query");
    let keys: Vec<_> = result.answers.iter().map(|a| a.key.clone()).collect();
    assert_eq!(keys, vec![serde_json::json!(1), serde_json::json!(2)], "the unacknowledged event is not counted");
}

// An export holds values only: a key in error (null value) is not written as if it were
// one; the export is refused naming the view, the key and the cause.
#[test]
fn an_export_with_a_key_in_error_is_refused() {
    let tmp = crate::testing::TempDir::new("cli-export-error");
    let dir = tmp.join("data");
    let lambda = Lambda::open(Unseeded, &dir, crate::testing::test_options(1)).expect("open");
    lambda.append(&[Set { k: 1, v: 1 }, Set { k: 2, v: 5 }]).expect("append");
    lambda.batch_and_handover(Arc::new(Progress::default())).expect("batch");
    lambda.append(&[Set { k: 1, v: 3 }]).expect("append");
    lambda.sync(Duration::from_secs(60)).expect("sync");
    let out = tmp.join("out");
    let err = crate::export::export_merged(&lambda, &["largest".to_string()], &out).expect_err("refused");
    assert!(matches!(err, Error::Inconsistent(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("view `largest`") && msg.contains("key 1") && msg.contains("merged to 2 records"), "{msg}");
}

/// A job whose code panics on one event (key 13).
struct Panics;

impl Job for Panics {
    type Event = Set;
    fn name(&self) -> &'static str {
        "panics"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Set>) {
        let events = events.map(|e| {
            assert!(e.k != 13, "boom on key 13");
            e
        });
        let n = ctx.count("n", events, |_| Some(0u64));
        ctx.sum_view("n", n, |s| serde_json::json!({ "events": s.0[0] }));
    }
}

// A local query's workers end on the same time however unevenly they read: one partition
// and two workers, so worker 1 reads nothing and worker 0 moves through many times (a few
// events each under test). Worker 1 follows worker 0's times instead of stopping at the
// first (which held worker 0's probe back forever), in both ways a run can end, and the
// answer is every event's.
#[test]
fn a_local_query_ends_when_its_workers_read_unevenly() {
    let tmp = crate::testing::TempDir::new("cli-query-uneven");
    let dir = tmp.join("data");
    let cfg = crate::log::LogConfig { partitions: 1, ..crate::log::LogConfig::default() };
    let events: Vec<Set> = (0..61).map(|i| Set { k: i % 5, v: (i * 37) % 101 }).collect();
    crate::append::Appender::open(&dir, cfg).expect("open").append(&events).expect("append");
    let mut expected: std::collections::BTreeMap<u64, u64> = Default::default();
    for e in &events {
        let v = expected.entry(e.k).or_default();
        *v = (*v).max(e.v);
    }
    for exit_fast in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let all = Selection::Range { from: None, to: None, limit: usize::MAX };
            let _ = tx.send(local::query(Seeded, &d, 2, "largest", &all, exit_fast));
        });
        let (result, loaded) = rx.recv_timeout(Duration::from_secs(120)).expect("the query ends").expect("the query answers");
        assert!(loaded.ran, "the events ran through the dataflow");
        let got: std::collections::BTreeMap<u64, u64> =
            result.answers.iter().map(|a| (a.key.as_u64().expect("key"), a.value.as_u64().expect("value"))).collect();
        assert_eq!(got, expected, "exit_fast {exit_fast}");
    }
}

// A panic in job code on one worker of a local query's run stops every worker: the query
// fails with the panic's message instead of the other workers parking forever.
#[test]
fn a_panic_on_one_worker_fails_a_local_query() {
    let tmp = crate::testing::TempDir::new("cli-query-panic");
    let dir = tmp.join("data");
    let cfg = crate::log::LogConfig { partitions: 2, ..crate::log::LogConfig::default() };
    {
        let appender = crate::append::Appender::open(&dir, cfg).expect("open");
        let events: Vec<Set> = (0..40).map(|k| Set { k, v: k }).collect();
        appender.append(&events).expect("append");
    }
    // Also when the workers that complete their run idle until the process exits (the
    // command line's `exit_fast`): they see the failure and return, and the query fails.
    for exit_fast in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let all = Selection::Range { from: None, to: None, limit: usize::MAX };
            let _ = tx.send(local::query(Panics, &d, 2, "n", &all, exit_fast).map(|_| ()));
        });
        // Generous: the run takes milliseconds; without the guard it never ends.
        let outcome = rx.recv_timeout(Duration::from_secs(300)).expect("the query ends");
        let err = outcome.expect_err("the job panicked");
        assert!(err.to_string().contains("boom on key 13"), "exit_fast {exit_fast}: {err}");
    }
}

/// A raw join of the events with a constant dimension (from `to_stream`): linear in the
/// events, so exact without a seed, although the lint reports its arrangement.
#[derive(Clone)]
struct ConstJoin;

impl Job for ConstJoin {
    type Event = Set;
    fn name(&self) -> &'static str {
        "const-join"
    }
    fn version(&self) -> u32 {
        1
    }
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Set>) {
        use differential_dataflow::AsCollection;
        use timely::dataflow::operators::vec::ToStream;
        let rows: Vec<((u64, u64), lambdaflow_operators::Time, isize)> = (0..7u64).map(|k| ((k, k * 10), 0, 1)).collect();
        let dim = rows.to_stream(ctx.scope()).as_collection();
        let joined = events.map(|e| (e.k, e.v)).join(dim);
        let n = ctx.count("per_k", joined, |(k, _): &(u64, (u64, u64))| Some(*k));
        ctx.sum_view("per_k", n, |s| serde_json::json!({ "events": s.0[0] }));
    }
}

// The lint reports a raw stateful operator on an unseeded input, but only as the hint of
// a failed comparison: a raw operator that is exact anyway passes `check_exact`.
#[test]
fn a_linear_raw_join_passes_check_exact() {
    assert!(crate::cli::lint_job(Arc::new(ConstJoin)).expect("builds").is_some(), "the lint reports the join");
    let events: Vec<Set> = (0..40).map(|i| Set { k: i % 7, v: (i * 37) % 11 }).collect();
    crate::testing::check_exact(ConstJoin, &events, &[20], 1).expect("exact");
}

/// `lambdaflow --data DIR query ARGS` for `job`.
fn query_as<J: Job>(job: J, dir: &Path, args: &[&str]) -> Result<()> {
    let mut argv = vec!["lambdaflow", "--data", dir.to_str().expect("utf-8"), "--wait", "0", "query"];
    argv.extend_from_slice(args);
    let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("valid arguments");
    let g = Global { data: cli.data, workers: 1, workers_given: true, wait: cli.wait };
    match cli.command {
        Command::Query(args) => query(App::new(job), &g, args),
        _ => unreachable!("parsed as query"),
    }
}

// A range query with a key in error prints the good answers and then fails (exit 70: the
// lint names the job's unseeded operator), so a script notices; so does a point query of
// that key, and a query of good keys only succeeds.
#[test]
fn a_query_with_a_key_in_error_fails_after_printing() {
    let tmp = crate::testing::TempDir::new("cli-query-exit");
    let dir = tmp.join("data");
    {
        let lambda = Lambda::open(Unseeded, &dir, crate::testing::test_options(1)).expect("open");
        lambda.append(&[Set { k: 1, v: 1 }, Set { k: 2, v: 5 }]).expect("append");
        lambda.batch_and_handover(Arc::new(Progress::default())).expect("batch");
        lambda.append(&[Set { k: 1, v: 3 }]).expect("append");
    }
    let err = query_as(Unseeded, &dir, &["largest", "--limit", "1"]).expect_err("a key is in error");
    assert!(matches!(err, Error::Dataflow(DataflowError::InvalidJob { .. })), "{err:?}");
    assert!(err.to_string().contains("key 1"), "{err}");
    let err = query_as(Unseeded, &dir, &["largest", "1"]).expect_err("the key is in error");
    assert!(matches!(err, Error::Dataflow(DataflowError::InvalidJob { .. })), "{err:?}");
    query_as(Unseeded, &dir, &["largest", "2"]).expect("a good key");
}
