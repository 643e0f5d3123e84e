//! Rejected input stores nothing (DESIGN.md §2 point 1, shop spec "Events"): every kind of
//! bad line is refused by `lambdaflow ingest` with exit code 2 and an error naming the line,
//! the field and the value, and the log of a data directory that already holds events is
//! left byte for byte as it was. The parser itself never panics on arbitrary bytes.

mod common;

use common::*;
use lambdaflow_engine::parse_all;
use lambdaflow_engine::Error;
use lambdaflow_jobs::shop::{event::CSV_HEADER, ShopEvent};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PURCHASE: &str =
    r#"{"type":"purchase","ts":1767225600000,"order_id":1,"customer_id":2,"product_id":3,"quantity":4,"amount_cents":500}"#;
const VIEW: &str = r#"{"type":"view","ts":1767225600000,"customer_id":2,"product_id":3,"session_id":9}"#;
const CSV_PURCHASE: &str = "purchase,1767225600000,1,2,3,4,500,,";
const CSV_VIEW: &str = "view,1767225600000,,2,3,,,,9";

/// A data directory that already holds 300 good events, and what its log looked like.
struct Fixture {
    tmp: TempDir,
    data: PathBuf,
    ends: Vec<u64>,
    files: BTreeMap<PathBuf, u64>,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let tmp = TempDir::new(tag);
        let data = tmp.join("data");
        let good = tmp.join("good.ndjson");
        gen_file(&good, 300, 3, "ndjson");
        ingest(&data, &good);
        let ends = end_offsets(&data);
        assert_eq!(ends.iter().sum::<u64>(), 300);
        let files = segment_files(&data);
        Fixture { tmp, data, ends, files }
    }

    /// Asserts the log is exactly as it was after the good events.
    fn assert_unchanged(&self, case: &str) {
        assert_eq!(segment_files(&self.data), self.files, "{case}: segment files changed: something was stored");
        assert_eq!(end_offsets(&self.data), self.ends, "{case}: end offsets changed: something was stored");
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.tmp.join(name);
        std::fs::write(&path, bytes).expect("write input");
        path
    }

    /// Ingests `input` from a file and checks that it is rejected at `line` with every one
    /// of `expect` in the error, and that nothing was stored.
    fn reject(&self, case: &str, input: &str, line: u64, expect: &[&str]) {
        self.reject_bytes(case, input.as_bytes(), line, expect);
    }

    fn reject_bytes(&self, case: &str, input: &[u8], line: u64, expect: &[&str]) {
        let path = self.write("case.in", input);
        let o = run(&self.data, &["ingest", path.to_str().expect("utf-8 path"), "--print-acks"]);
        check_rejected(case, &o, line, expect);
        self.assert_unchanged(case);
    }
}

fn check_rejected(case: &str, o: &Output, line: u64, expect: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(3), "{case}: exit code 3 (bad input); stderr:\n{err}");
    assert!(stdout(o).is_empty(), "{case}: nothing may be acknowledged: {}", stdout(o));
    let head = format!("error: line {line}: ");
    assert!(err.contains(&head), "{case}: error must start with `{head}`: {err}");
    for e in expect {
        assert!(err.contains(e), "{case}: error must mention `{e}`: {err}");
    }
}

/// `lambdaflow --data DATA ingest - --print-acks` with `input` on stdin.
fn ingest_stdin(data: &Path, input: &[u8]) -> Output {
    let mut child = Command::new(bin())
        .arg("--data")
        .arg(data)
        .args(["ingest", "-", "--print-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ingest");
    let mut stdin = child.stdin.take().expect("stdin");
    let bytes = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let o = child.wait_with_output().expect("wait for ingest");
    writer.join().expect("stdin writer");
    o
}

fn lines(ls: &[&str]) -> String {
    ls.iter().map(|l| format!("{l}\n")).collect()
}

// ndjson_rejections proves that each kind of bad NDJSON line is refused with exit code 2, the
// right line number, field and value, and stores nothing. Method: a data directory with 300
// good events; for each case a small file of good lines with one bad line (at line 1, 2 or
// 3) is ingested; the error text is checked for `line L`, `field "F"`, `value "V"` and the
// reason, and the log's segment files (names and sizes) and end offsets must be unchanged.
#[test]
fn ndjson_rejections() {
    let fx = Fixture::new("bad-ndjson");
    let p = |s: &str| PURCHASE.replace(r#""quantity":4"#, s);
    let cases: Vec<(&str, String, u64, Vec<&str>)> = vec![
        ("malformed JSON", lines(&[PURCHASE, r#"{"type":"view","ts":1767225600000,"customer_id":2"#, VIEW]), 2, vec!["not valid JSON"]),
        ("not an object", lines(&[PURCHASE, VIEW, "[1,2]"]), 3, vec!["JSON object"]),
        (
            "string for ts",
            lines(&[PURCHASE, &VIEW.replace(r#""ts":1767225600000"#, r#""ts":"1767225600000""#)]),
            2,
            vec![r#"field "ts""#, r#"value "1767225600000""#, "not a string"],
        ),
        ("float quantity", lines(&[VIEW, &p(r#""quantity":1.5"#)]), 2, vec![r#"field "quantity""#, r#"value "1.5""#, "fractional"]),
        ("negative quantity", lines(&[&p(r#""quantity":-2"#), VIEW]), 1, vec![r#"field "quantity""#, r#"value "-2""#, "at least 1"]),
        ("zero quantity", lines(&[VIEW, VIEW, &p(r#""quantity":0"#)]), 3, vec![r#"field "quantity""#, r#"value "0""#, "at least 1"]),
        (
            "negative amount_cents",
            lines(&[VIEW, &PURCHASE.replace(r#""amount_cents":500"#, r#""amount_cents":-500"#)]),
            2,
            vec![r#"field "amount_cents""#, r#"value "-500""#, "negative"],
        ),
        (
            "negative refund amount",
            lines(&[VIEW, r#"{"type":"refund","ts":1767225600000,"order_id":1,"customer_id":2,"product_id":3,"amount_cents":-7}"#]),
            2,
            vec![r#"field "amount_cents""#, r#"value "-7""#, "negative"],
        ),
        (
            "unknown type",
            lines(&[VIEW, r#"{"type":"wishlist","ts":1767225600000,"customer_id":2,"product_id":3}"#]),
            2,
            vec![r#"field "type""#, r#"value "wishlist""#, "unknown event type"],
        ),
        (
            "unknown field",
            lines(&[&PURCHASE.replace('}', r#","coupon":"X"}"#), VIEW]),
            1,
            vec![r#"field "coupon""#, r#"value "X""#, "not a field of purchase events"],
        ),
        (
            "field of another type",
            lines(&[PURCHASE, &VIEW.replace('}', r#","delta":3}"#)]),
            2,
            vec![r#"field "delta""#, r#"value "3""#, "not a field of view events"],
        ),
        (
            "missing field",
            lines(&[PURCHASE, PURCHASE, r#"{"type":"view","ts":1767225600000,"customer_id":2,"product_id":3}"#]),
            3,
            vec![r#"field "session_id""#, "required but missing"],
        ),
        ("missing type", lines(&[r#"{"ts":1767225600000,"product_id":3,"delta":1}"#]), 1, vec![r#"field "type""#, "required but missing"]),
        (
            "negative id",
            lines(&[VIEW, &VIEW.replace(r#""customer_id":2"#, r#""customer_id":-2"#)]),
            2,
            vec![r#"field "customer_id""#, r#"value "-2""#, "negative"],
        ),
        (
            "id out of range",
            lines(&[VIEW, &VIEW.replace(r#""product_id":3"#, r#""product_id":18446744073709551616"#)]),
            2,
            vec![r#"field "product_id""#, r#"value "18446744073709551616""#, "out of range"],
        ),
    ];
    for (case, input, line, expect) in &cases {
        fx.reject(case, input, *line, expect);
    }
}

// csv_rejections proves the same for CSV input, whose line 1 is the header. Method: as for
// NDJSON: a header, good rows and one bad row; the error must name the line (header
// included in the count), the column and its value, and the log must be unchanged.
#[test]
fn csv_rejections() {
    let fx = Fixture::new("bad-csv");
    let cases: Vec<(&str, String, u64, Vec<&str>)> = vec![
        ("too few columns", lines(&[CSV_HEADER, CSV_PURCHASE, "view,1767225600000,,2,3,,,"]), 3, vec!["9 comma-separated columns"]),
        ("too many columns", lines(&[CSV_HEADER, "view,1767225600000,,2,3,,,,9,", CSV_VIEW]), 2, vec!["9 comma-separated columns"]),
        ("bad number", lines(&[CSV_HEADER, CSV_VIEW, "view,five,,2,3,,,,9"]), 3, vec![r#"field "ts""#, r#"value "five""#, "integer"]),
        (
            "fractional quantity",
            lines(&[CSV_HEADER, "purchase,1767225600000,1,2,3,1.5,500,,"]),
            2,
            vec![r#"field "quantity""#, r#"value "1.5""#],
        ),
        (
            "zero quantity",
            lines(&[CSV_HEADER, CSV_VIEW, "purchase,1767225600000,1,2,3,0,500,,"]),
            3,
            vec![r#"field "quantity""#, r#"value "0""#, "at least 1"],
        ),
        (
            "negative amount_cents",
            lines(&[CSV_HEADER, CSV_VIEW, CSV_VIEW, "refund,1767225600000,1,2,3,,-5,,"]),
            4,
            vec![r#"field "amount_cents""#, r#"value "-5""#, "negative"],
        ),
        (
            "unused column not empty",
            lines(&[CSV_HEADER, CSV_PURCHASE, "view,1767225600000,5,2,3,,,,9"]),
            3,
            vec![r#"field "order_id""#, r#"value "5""#, "not a field of view events"],
        ),
        (
            "used column empty",
            lines(&[CSV_HEADER, "view,1767225600000,,2,3,,,,"]),
            2,
            vec![r#"field "session_id""#, "required but missing"],
        ),
        (
            "unknown type",
            lines(&[CSV_HEADER, "wishlist,1767225600000,,2,3,,,,9"]),
            2,
            vec![r#"field "type""#, r#"value "wishlist""#, "unknown event type"],
        ),
        ("no header", lines(&[CSV_VIEW, CSV_VIEW]), 1, vec!["CSV header"]),
        ("header twice", lines(&[CSV_HEADER, CSV_VIEW, CSV_HEADER, CSV_VIEW]), 3, vec![]),
    ];
    for (case, input, line, expect) in &cases {
        fx.reject(case, input, *line, expect);
    }
}

// one_bad_line_in_the_middle proves that a bad line deep inside an otherwise good file is
// reported with its exact line number and that none of the good lines before it is stored.
// Method: 1,000 generated events (NDJSON, then CSV with its header); one line replaced by a
// bad one; blank lines and CRLF line ends before it must be counted as lines. After the
// rejection (exit 2, log unchanged), the same file without the bad line is ingested
// successfully, which shows the good lines were ingestible and were held back only because
// the request as a whole was rejected.
#[test]
fn one_bad_line_in_the_middle() {
    let fx = Fixture::new("bad-middle");
    for format in ["ndjson", "csv"] {
        let gen = fx.tmp.join(&format!("gen.{format}"));
        gen_file(&gen, 1_000, 17, format);
        let text = std::fs::read_to_string(&gen).expect("read generated");
        let mut ls: Vec<String> = text.lines().map(str::to_owned).collect();
        // Blank lines count as lines; CRLF ends are tolerated.
        ls.insert(5, String::new());
        ls.insert(6, "   ".to_string());
        for l in ls.iter_mut().take(100) {
            l.push('\r');
        }
        let good: String = ls.iter().map(|l| format!("{l}\n")).collect();
        let bad_line = 637;
        let (bad, field) = match format {
            "ndjson" => (PURCHASE.replace(r#""quantity":4"#, r#""quantity":0"#), r#"field "quantity""#),
            _ => ("inventory,1767225600000,,,3,,,1.5,".to_string(), r#"field "delta""#),
        };
        ls.insert(bad_line - 1, bad);
        let with_bad: String = ls.iter().map(|l| format!("{l}\n")).collect();
        fx.reject(&format!("{format}: bad line {bad_line}"), &with_bad, bad_line as u64, &[field]);

        // The same through stdin.
        let o = ingest_stdin(&fx.data, with_bad.as_bytes());
        check_rejected(&format!("{format} via stdin"), &o, bad_line as u64, &[field]);
        fx.assert_unchanged(&format!("{format} via stdin"));

        // Without the bad line, the file is accepted (then undone by a fresh fixture below).
        let path = fx.write(&format!("nobad.{format}"), good.as_bytes());
        let o = run_ok(&fx.data, &["ingest", path.to_str().expect("utf-8 path")]);
        assert!(stderr(&o).contains("ingested 1000 events"), "{}", stderr(&o));
        assert_eq!(end_offsets(&fx.data).iter().sum::<u64>(), 1_300);
        // Restore the fixture's log for the next format.
        std::fs::remove_dir_all(&fx.data).expect("reset data dir");
        let seed = fx.tmp.join("good.ndjson");
        ingest(&fx.data, &seed);
        fx.assert_unchanged("fixture rebuilt");
    }
}

// invalid_utf8_and_empty_input proves that bytes that are not UTF-8 are rejected with their
// line number (from a file and from stdin), and that empty input (no bytes, only blank lines,
// or a CSV header alone) is accepted as 0 events and stores nothing.
#[test]
fn invalid_utf8_and_empty_input() {
    let fx = Fixture::new("bad-utf8");
    let mut input = lines(&[PURCHASE, VIEW]).into_bytes();
    input.extend_from_slice(b"{\"type\":\"view\",\"ts\":1,\"customer_id\":1,\"product_id\":1,\"session_id\":1,\"x\":\"\xff\xfe\"}\n");
    input.extend_from_slice(lines(&[VIEW]).as_bytes());
    fx.reject_bytes("invalid UTF-8", &input, 3, &["not valid UTF-8"]);
    let o = ingest_stdin(&fx.data, &input);
    check_rejected("invalid UTF-8 via stdin", &o, 3, &["not valid UTF-8"]);
    fx.assert_unchanged("invalid UTF-8 via stdin");
    let mut latin1 = lines(&[CSV_HEADER]).into_bytes();
    latin1.extend_from_slice(b"view,1767225600000,,2,3,,,,9\xe9\n");
    fx.reject_bytes("invalid UTF-8 in CSV", &latin1, 2, &["not valid UTF-8"]);

    for (case, input) in [("empty file", ""), ("blank lines", "\n\n  \r\n"), ("CSV header only", &lines(&[CSV_HEADER]))] {
        let path = fx.write("empty.in", input.as_bytes());
        let o = run(&fx.data, &["ingest", path.to_str().expect("utf-8 path"), "--print-acks"]);
        assert!(o.status.success(), "{case}: empty input is fine: {}", stderr(&o));
        assert!(stderr(&o).contains("ingested 0 events"), "{case}: {}", stderr(&o));
        fx.assert_unchanged(case);
    }
    let o = ingest_stdin(&fx.data, b"");
    assert!(o.status.success(), "empty stdin is fine: {}", stderr(&o));
    fx.assert_unchanged("empty stdin");
}

fn parse(bytes: &[u8]) -> Result<Vec<ShopEvent>, Error> {
    let mut r: &[u8] = bytes;
    parse_all::<ShopEvent>(&mut r)
}

fn event() -> impl Strategy<Value = ShopEvent> {
    let ts = 0i64..2_000_000_000_000;
    prop_oneof![
        (ts.clone(), 0u64..100, 0u64..100, 0u64..100, 1u32..10, 0i64..100_000).prop_map(
            |(ts, order_id, customer_id, product_id, quantity, amount_cents)| {
                ShopEvent::Purchase { ts, order_id, customer_id, product_id, quantity, amount_cents }
            }
        ),
        (ts.clone(), 0u64..100, 0u64..100, 0u64..100, 0i64..100_000).prop_map(|(ts, order_id, customer_id, product_id, amount_cents)| {
            ShopEvent::Refund { ts, order_id, customer_id, product_id, amount_cents }
        }),
        (ts.clone(), 0u64..100, 0u64..100, 0u64..100).prop_map(|(ts, customer_id, product_id, session_id)| ShopEvent::View {
            ts,
            customer_id,
            product_id,
            session_id
        }),
        (ts, 0u64..100, -100i64..100).prop_map(|(ts, product_id, delta)| ShopEvent::Inventory { ts, product_id, delta }),
    ]
}

/// A line of input: good, bad, or garbage, as bytes.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => event().prop_map(|e| e.to_ndjson().into_bytes()),
        2 => event().prop_map(|e| e.to_csv_row().into_bytes()),
        1 => Just(CSV_HEADER.as_bytes().to_vec()),
        1 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..40),
        3 => (event(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(e, i, b)| {
            let mut line = e.to_ndjson().into_bytes();
            let at = i.index(line.len());
            line[at] = b;
            line
        }),
    ]
}

fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (prop::collection::vec(fragment(), 0..12), prop::bool::ANY).prop_map(|(frags, crlf)| {
            let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            frags.join(sep)
        }),
    ]
}

const BAD_NDJSON: [&str; 6] = [
    "not json",
    r#"{"type":"wishlist","ts":1}"#,
    r#"{"type":"view""#,
    r#"{"type":"purchase","ts":1,"order_id":1,"customer_id":2,"product_id":3,"quantity":0,"amount_cents":5}"#,
    "[1]",
    r#"{"type":"view","ts":-1,"customer_id":1,"product_id":1,"session_id":1}"#,
];

const BAD_CSV: [&str; 5] = ["view,1,,1,1,,,", "view,x,,1,1,,,,1", r#"{"type":"view"}"#, "purchase,1,1,2,3,0,5,,", "view,1,7,1,1,,,,1"];

proptest! {
    // 1,000 cases in CI; `PROPTEST_CASES=N` runs N (the long version, docs/reliability.md).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000),
        ..ProptestConfig::default()
    })]

    // parser_never_panics proves the ingest parser is total: on arbitrary bytes (raw, or
    // lines mixing good NDJSON/CSV, headers, garbage and one-byte mutations of good lines,
    // with LF or CRLF ends) it returns without panicking, either events (no more than there
    // are lines) or Error::BadInput with a line number between 1 and the number of lines.
    #[test]
    fn parser_never_panics(input in arbitrary_input()) {
        let line_count = input.split(|b| *b == b'\n').count() as u64;
        match parse(&input) {
            Ok(events) => prop_assert!(events.len() as u64 <= line_count),
            Err(Error::BadInput { line, .. }) => prop_assert!((1..=line_count).contains(&line), "line {} of {}", line, line_count),
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }

    // bad_line_is_located proves line numbers are exact: good events in NDJSON or CSV (header
    // first) parse back to themselves, and with one known-bad line inserted anywhere the
    // error names exactly that line.
    #[test]
    fn bad_line_is_located(
        events in prop::collection::vec(event(), 0..30),
        at in any::<prop::sample::Index>(),
        which in any::<prop::sample::Index>(),
        csv in prop::bool::ANY,
    ) {
        let mut ls: Vec<String> = if csv {
            std::iter::once(CSV_HEADER.to_string()).chain(events.iter().map(ShopEvent::to_csv_row)).collect()
        } else {
            events.iter().map(ShopEvent::to_ndjson).collect()
        };
        let good: String = ls.iter().map(|l| format!("{l}\n")).collect();
        prop_assert_eq!(parse(good.as_bytes()).expect("good input parses"), events.clone());
        let first = usize::from(csv); // the bad line may not replace the header
        let pos = first + at.index(ls.len() + 1 - first);
        let bad = if csv { BAD_CSV[which.index(BAD_CSV.len())] } else { BAD_NDJSON[which.index(BAD_NDJSON.len())] };
        ls.insert(pos, bad.to_string());
        let text: String = ls.iter().map(|l| format!("{l}\n")).collect();
        match parse(text.as_bytes()) {
            Err(Error::BadInput { line, .. }) => prop_assert_eq!(line, pos as u64 + 1, "bad line {:?}", bad),
            other => prop_assert!(false, "{:?} at line {} not rejected: {:?}", bad, pos + 1, other.map(|e| e.len())),
        }
    }
}
