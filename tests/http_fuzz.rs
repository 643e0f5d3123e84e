//! The fuzz target of the HTTP service and of the ingest parser.
//!
//! `http_fuzz` starts ONE `lambdaflow serve` and drives it with proptest-generated requests:
//! arbitrary bodies, mutated NDJSON/CSV (bit flips, inserted and deleted bytes, hostile tokens
//! such as `1e400`, `99999999999999999999`, `-0`, negative ids, duplicate fields, NUL, BOM,
//! invalid UTF-8, CRLF), JSON nested 100–100,000 deep, lines just under and over 1 MiB, odd
//! `Idempotency-Key` and `Content-Type` values, chunked bodies, `Content-Length` mismatches and
//! aborted bodies over raw TCP, raw and mutated HTTP requests, header floods, and random paths
//! and query strings for `GET /v1/views/{view}/{key}` and ranges (percent-encoding, `..`, keys
//! up to 70,000 bytes, unknown parameters, `limit=0/-1/huge`, `min_frontier` and `where=`
//! garbage). For every case it checks:
//!
//! - the answer is a 2xx or a 4xx: never a 5xx, never a dropped connection or a hang, except
//!   that a malformed request (raw bytes, a broken header) may be closed without an answer;
//! - every 4xx the service produced is JSON with an `"error"` string (protocol-level answers
//!   of the HTTP layer, an empty body with `connection: close`, are exempt);
//! - `GET /v1/status`'s `log.events` is unchanged after a rejected ingest request and grew by
//!   exactly `accepted` after an accepted one (a replayed one, `"duplicate": true`, adds nothing);
//! - for inputs with a known outcome (valid bodies, lines exactly at and just over 1 MiB,
//!   deep nesting, known-day point queries) the outcome is the documented one;
//! - the server printed no `panicked`.
//!
//! Server state carries over from case to case (that is how the sums of extreme amounts in
//! the views get interesting), so violations are collected for the whole run rather than
//! shrunk; the run fails at the end listing each kind of violation with its first case. After
//! the run the server must still answer `/v1/status`.
//!
//! `parser_fuzz` is the in-process twin over `lambdaflow_engine::parse_all` (no HTTP):
//! the same hostile bodies never panic the parser, and it returns either events (which
//! round-trip through both formats) or `Error::BadInput` naming a line that exists.
//! tests/bad_input.rs's `parser_never_panics` covers raw bytes and one-byte replacements; this
//! adds the structured mutations and the 1 MiB boundary.
//!
//! Cases: `LAMBDAFLOW_FUZZ_CASES` (default 1,000, a few seconds, for CI); seed: `LAMBDAFLOW_FUZZ_SEED` (printed
//! by every run). Run it long with
//!
//! ```sh
//! LAMBDAFLOW_FUZZ_CASES=100000 cargo test --release --test http_fuzz -- --nocapture
//! ```

mod common;

use common::http::{read_raw_response, Response, Server};
use common::TempDir;
use lambdaflow_engine::Error;
use lambdaflow_engine::{parse_all, LINE_BYTES_MAX};
use lambdaflow_jobs::shop::event::{CSV_HEADER, MAX_TS_MS};
use lambdaflow_jobs::shop::ShopEvent;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Configuration

/// Cases per run: `LAMBDAFLOW_FUZZ_CASES`, 1,000 by default.
fn fuzz_cases() -> u32 {
    std::env::var("LAMBDAFLOW_FUZZ_CASES").ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0).unwrap_or(1000)
}

/// The seed: `LAMBDAFLOW_FUZZ_SEED`, or one from the clock (printed, so a run can be repeated).
fn fuzz_seed() -> u64 {
    std::env::var("LAMBDAFLOW_FUZZ_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1))
}

fn runner(cases: u32, seed: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64).to_le_bytes());
    }
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 2000, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

// ---------------------------------------------------------------------------------------------
// Events and bodies

/// Event times fall on three days (so sums pile up per day) or at the extremes.
const DAY0_MS: i64 = 1_767_225_600_000;
const DAYS: [&str; 3] = ["2026-01-01", "2026-01-02", "2026-01-03"];
const VIEWS: [&str; 8] = [
    "revenue_by_day",
    "product_revenue_by_day",
    "top_products_by_day",
    "inventory_level",
    "customer_spend",
    "customer_segments",
    "daily_unique_viewers",
    "conversion_by_product",
];

fn ts() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => (0i64..3, 0i64..86_400_000).prop_map(|(d, ms)| DAY0_MS + d * 86_400_000 + ms),
        1 => Just(0i64),
        1 => Just(MAX_TS_MS),
    ]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![9 => 0u64..50, 1 => Just(u64::MAX)]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..100_000, 1 => Just(i64::MAX), 1 => (1i64 << 62)..=i64::MAX]
}

fn event() -> impl Strategy<Value = ShopEvent> {
    let quantity = prop_oneof![9 => 1u32..10, 1 => Just(u32::MAX)];
    let delta = prop_oneof![8 => -100i64..100, 1 => Just(i64::MIN), 1 => Just(i64::MAX)];
    prop_oneof![
        (ts(), id(), id(), id(), quantity, amount()).prop_map(|(ts, order_id, customer_id, product_id, quantity, amount_cents)| {
            ShopEvent::Purchase { ts, order_id, customer_id, product_id, quantity, amount_cents }
        }),
        (ts(), id(), id(), id(), amount()).prop_map(|(ts, order_id, customer_id, product_id, amount_cents)| ShopEvent::Refund {
            ts,
            order_id,
            customer_id,
            product_id,
            amount_cents
        }),
        (ts(), id(), id(), id()).prop_map(|(ts, customer_id, product_id, session_id)| ShopEvent::View {
            ts,
            customer_id,
            product_id,
            session_id
        }),
        (ts(), id(), delta).prop_map(|(ts, product_id, delta)| ShopEvent::Inventory { ts, product_id, delta }),
    ]
}

/// A valid view event's line without its closing brace (padding goes before the brace).
const OPEN_EVENT: &str = r#"{"type":"view","ts":1767225600000,"customer_id":1,"product_id":1,"session_id":1"#;

/// Hostile fragments spliced into bodies.
const TOKENS: &[&[u8]] = &[
    b"1e400",
    b"-1e400",
    b"99999999999999999999",
    b"-99999999999999999999",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"253402300800000",
    b"-0",
    b"-1",
    b"0",
    b"1.5",
    b"1e2",
    b"1E+2",
    b"0x10",
    b"+1",
    b"00012",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b"\"1\"",
    b"[]",
    b"{}",
    b"\"ts\":1,",
    b",\"ts\":1",
    b"\"type\":\"view\",",
    b",\"type\":\"purchase\"",
    b"\"extra\":1,",
    b"\"__proto__\":{},",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\r\n",
    b"\r",
    b"\n",
    b"\n\n\n",
    b",",
    b"\"",
    b"\\",
    b" ",
    b"\t",
    b"type,ts,order_id,customer_id,product_id,quantity,amount_cents,delta,session_id",
    b"purchase,1,1,1,1,1,1,,",
    b"view,1767225600000,,1,1,,,,1",
    br#"{"type":"view","ts":1767225600000,"customer_id":1,"product_id":1,"session_id":1}"#,
    br#"{"type":"refund","ts":1767225600000,"order_id":1,"customer_id":1,"product_id":1,"amount_cents":9223372036854775807}"#,
];

/// Where a token goes.
#[derive(Clone, Debug)]
enum Anchor {
    Anywhere(Index),
    AfterOpenBrace(Index),
    BeforeCloseBrace(Index),
    ReplaceNumber(Index),
    LineStart(Index),
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: Index, bit: u8 },
    Insert { at: Index, bytes: Vec<u8> },
    Delete { at: Index, len: usize },
    Token { anchor: Anchor, token: Index },
}

#[derive(Clone, Debug)]
enum Base {
    /// Valid events as NDJSON or CSV (header first).
    Events { events: Vec<ShopEvent>, csv: bool, crlf: bool },
    /// Arbitrary bytes.
    Bytes(Vec<u8>),
    /// JSON nested `depth` deep inside a line that starts like an event.
    Deep { depth: usize, object: bool },
    /// A valid event padded to `LINE_BYTES_MAX + over` bytes (without its newline), after
    /// `good_before` good lines.
    LongLine { over: i64, good_before: bool },
}

#[derive(Clone, Debug)]
struct BodySpec {
    base: Base,
    mutations: Vec<Mutation>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let anchor = prop_oneof![
        1 => any::<Index>().prop_map(Anchor::Anywhere),
        1 => any::<Index>().prop_map(Anchor::AfterOpenBrace),
        1 => any::<Index>().prop_map(Anchor::BeforeCloseBrace),
        3 => any::<Index>().prop_map(Anchor::ReplaceNumber),
        1 => any::<Index>().prop_map(Anchor::LineStart),
    ];
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        5 => (anchor, any::<Index>()).prop_map(|(anchor, token)| Mutation::Token { anchor, token }),
    ]
}

fn body_spec() -> impl Strategy<Value = BodySpec> {
    let base = prop_oneof![
        12 => (prop::collection::vec(event(), 0..20), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(events, csv, crlf)| Base::Events { events, csv, crlf }),
        3 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Base::Bytes),
        1 => (prop::sample::select(vec![100usize, 127, 128, 129, 1_000, 10_000, 100_000]), any::<bool>())
            .prop_map(|(depth, object)| Base::Deep { depth, object }),
        1 => (prop::sample::select(vec![-1000i64, -1, 0, 1, 2, 1000, LINE_BYTES_MAX as i64]), any::<bool>())
            .prop_map(|(over, good_before)| Base::LongLine { over, good_before }),
    ];
    let mutations = prop_oneof![2 => Just(Vec::new()), 3 => prop::collection::vec(mutation(), 1..4)];
    (base, mutations).prop_map(|(base, mutations)| BodySpec { base, mutations })
}

fn base_bytes(base: &Base) -> Vec<u8> {
    match base {
        Base::Events { events, csv, crlf } => {
            let end: &[u8] = if *crlf { b"\r\n" } else { b"\n" };
            let mut out = Vec::new();
            if *csv {
                out.extend_from_slice(CSV_HEADER.as_bytes());
                out.extend_from_slice(end);
            }
            for e in events {
                if *csv {
                    e.write_csv_row(&mut out);
                } else {
                    e.write_ndjson(&mut out);
                }
                out.extend_from_slice(end);
            }
            out
        }
        Base::Bytes(b) => b.clone(),
        Base::Deep { depth, object } => {
            let mut out = Vec::new();
            if *object {
                out.extend_from_slice(&b"{\"a\":".repeat(*depth));
                out.push(b'1');
                out.extend_from_slice(&b"}".repeat(*depth));
            } else {
                out.extend_from_slice(br#"{"type":"view","ts":"#);
                out.extend_from_slice(&b"[".repeat(*depth));
                out.extend_from_slice(&b"]".repeat(*depth));
                out.push(b'}');
            }
            out.push(b'\n');
            out
        }
        Base::LongLine { over, good_before } => {
            let mut out = Vec::new();
            if *good_before {
                out.extend_from_slice(OPEN_EVENT.as_bytes());
                out.extend_from_slice(b"}\n");
            }
            let pad = (LINE_BYTES_MAX as i64 + over - OPEN_EVENT.len() as i64 - 1).max(0) as usize;
            out.extend_from_slice(OPEN_EVENT.as_bytes());
            out.resize(out.len() + pad, b' ');
            out.extend_from_slice(b"}\n");
            out
        }
    }
}

fn positions(out: &[u8], pred: impl Fn(usize, u8) -> bool) -> Vec<usize> {
    out.iter().enumerate().filter(|(i, b)| pred(*i, **b)).map(|(i, _)| i).collect()
}

fn apply(out: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, bit } => {
            if !out.is_empty() {
                let i = at.index(out.len());
                out[i] ^= 1 << (bit % 8);
            }
        }
        Mutation::Insert { at, bytes } => {
            let i = at.index(out.len() + 1);
            out.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            if !out.is_empty() {
                let i = at.index(out.len());
                let end = (i + len).min(out.len());
                out.drain(i..end);
            }
        }
        Mutation::Token { anchor, token } => {
            let t = TOKENS[token.index(TOKENS.len())];
            let pick =
                |cands: Vec<usize>, ix: &Index, fallback: usize| if cands.is_empty() { fallback } else { cands[ix.index(cands.len())] };
            match anchor {
                Anchor::Anywhere(ix) => {
                    let i = ix.index(out.len() + 1);
                    out.splice(i..i, t.iter().copied());
                }
                Anchor::AfterOpenBrace(ix) => {
                    let i = pick(positions(out, |_, b| b == b'{').into_iter().map(|p| p + 1).collect(), ix, 0);
                    out.splice(i..i, t.iter().copied());
                }
                Anchor::BeforeCloseBrace(ix) => {
                    let i = pick(positions(out, |_, b| b == b'}'), ix, out.len());
                    out.splice(i..i, t.iter().copied());
                }
                Anchor::ReplaceNumber(ix) => {
                    // A maximal run of digits (with its sign).
                    let starts = positions(out, |i, b| (b.is_ascii_digit() || b == b'-') && (i == 0 || !out[i - 1].is_ascii_digit()));
                    if starts.is_empty() {
                        out.extend_from_slice(t);
                    } else {
                        let s = starts[ix.index(starts.len())];
                        let mut e = s + 1;
                        while e < out.len() && out[e].is_ascii_digit() {
                            e += 1;
                        }
                        out.splice(s..e, t.iter().copied());
                    }
                }
                Anchor::LineStart(ix) => {
                    let mut starts = vec![0];
                    starts.extend(positions(out, |_, b| b == b'\n').into_iter().map(|p| p + 1));
                    let i = starts[ix.index(starts.len())];
                    out.splice(i..i, t.iter().copied());
                }
            }
        }
    }
}

fn render_body(spec: &BodySpec) -> Vec<u8> {
    let mut out = base_bytes(&spec.base);
    for m in &spec.mutations {
        apply(&mut out, m);
    }
    out
}

/// What an ingest of an unmutated body must answer: `Ok(n)` (200 with `n` accepted) or
/// `Err(line)` (400; the line when known).
fn known_outcome(spec: &BodySpec) -> Option<Result<u64, Option<u64>>> {
    if !spec.mutations.is_empty() {
        return None;
    }
    match &spec.base {
        Base::Events { events, .. } => Some(Ok(events.len() as u64)),
        Base::Bytes(_) => None,
        Base::Deep { .. } => Some(Err(Some(1))),
        Base::LongLine { over, good_before } => {
            let line = 1 + u64::from(*good_before);
            Some(if *over <= 0 { Ok(line) } else { Err(Some(line)) })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Header values with odd bytes (never CR or LF, which would be a different request).
fn odd_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n');
    prop_oneof![
        prop::collection::vec(byte, 0..40),
        prop::collection::vec(0x21u8..0x7f, 0..300),
        (0usize..600).prop_map(|n| vec![b'k'; n]),
        prop::sample::select(vec![&b""[..], b" ", b"a b", b"\xff\xfe", b"caf\xc3\xa9", b"\t", b"k\x00", b"\x7f"]).prop_map(|v| v.to_vec()),
    ]
}

#[derive(Clone, Debug)]
enum KeyHeader {
    None,
    /// A unique, valid key.
    Unique,
    /// One of four keys shared across the run (replays and conflicts).
    Shared(u8),
    Odd(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Framing {
    /// `Content-Length` equal to the body.
    Exact,
    /// `Transfer-Encoding: chunked` with chunks of this size.
    Chunked(usize),
    /// `Content-Length` this much shorter than the body: the rest is a second (garbage) request.
    Short(usize),
    /// `Content-Length` this much longer: the client sends what it has and goes away.
    Abort(usize),
    /// A `Content-Length` header that is not a plain number.
    OddLength(String),
    /// Neither header: the body is the next request.
    Missing,
}

#[derive(Clone, Debug)]
struct IngestCase {
    body: BodySpec,
    key: KeyHeader,
    content_type: Option<Vec<u8>>,
    expect_continue: bool,
    framing: Framing,
}

#[derive(Clone, Debug)]
enum Target {
    View { view: Vec<u8>, key: Option<Vec<u8>> },
    Fixed(&'static str),
    Junk(Vec<u8>),
}

#[derive(Clone, Debug)]
struct QueryCase {
    method: &'static str,
    target: Target,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    /// 0: minimal percent-encoding; 1: encode every byte; 2: visible ASCII raw (stray `%`s).
    encoding: u8,
}

#[derive(Clone, Debug)]
enum RawCase {
    Bytes(Vec<u8>),
    Mutated { template: Index, mutations: Vec<Mutation> },
    Flood { headers: usize, value_len: usize },
}

#[derive(Clone, Debug)]
enum Case {
    Ingest(IngestCase),
    Query(QueryCase),
    Raw(RawCase),
    Batch,
}

fn ingest_case() -> impl Strategy<Value = IngestCase> {
    let key = prop_oneof![
        4 => Just(KeyHeader::None),
        2 => Just(KeyHeader::Unique),
        1 => (0u8..4).prop_map(KeyHeader::Shared),
        2 => odd_value().prop_map(KeyHeader::Odd),
    ];
    let content_type = prop_oneof![
        3 => Just(None),
        2 => prop::sample::select(vec![
            &b"application/x-ndjson"[..],
            b"application/json",
            b"text/csv",
            b"text/plain; charset=utf-16",
            b"multipart/form-data; boundary=x",
            b"application/octet-stream",
        ])
        .prop_map(|v| Some(v.to_vec())),
        1 => odd_value().prop_map(Some),
    ];
    let framing = prop_oneof![
        14 => Just(Framing::Exact),
        3 => (1usize..5000).prop_map(Framing::Chunked),
        1 => (1usize..50).prop_map(Framing::Short),
        1 => (1usize..1000).prop_map(Framing::Abort),
        1 => prop::sample::select(vec!["+{n}", "0{n}", "{n}, {n}", "{n},{n}", "{n} {n}", "-1", "18446744073709551616", "0x{n}", ""])
            .prop_map(|s| Framing::OddLength(s.to_string())),
        1 => Just(Framing::Missing),
    ];
    (body_spec(), key, content_type, prop::bool::weighted(0.1), framing)
        .prop_map(|(body, key, content_type, expect_continue, framing)| IngestCase { body, key, content_type, expect_continue, framing })
}

fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(DAYS.to_vec()).prop_map(|d| d.as_bytes().to_vec()),
        2 => (prop::sample::select(DAYS.to_vec()), 0u64..60).prop_map(|(d, p)| format!("{d}/{p}").into_bytes()),
        2 => (0u64..60).prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(vec!["none", "bronze", "silver", "gold"]).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::sample::select(vec![
            "..", "../..", "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e", "/etc/passwd", "\\..\\..\\windows",
            "-1", "18446744073709551616", "1e400", "-0", "0x10", " 1", "2026-02-30", "2026-1-1", "+2026-01-01", "-001-01-01",
            "9999-12-31", "0000-01-01", "2026-01-01/", "/1", "2026-01-01/-1", "2026-01-01/1/2",
            r#"{"day":"2026-01-01","product_id":1}"#, r#"{"day":1}"#, r#""gold""#, r#""\ud800""#, "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..24),
        1 => (1usize..70_000, any::<u8>()).prop_map(|(n, b)| vec![b'a' + b % 26; n]),
    ]
}

fn param() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let name = prop_oneof![
        6 => prop::sample::select(vec!["from", "to", "limit", "where", "min_frontier", "timeout_ms"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["", "LIMIT", "key", "token", "callback", "limit[]", "where "]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    let value = prop_oneof![
        4 => prop::sample::select(vec![
            "0", "-1", "1", "100000", "100001", "18446744073709551616", "99999999999999999999", "1e3", "", " 5", "abc",
            "0,0,0,0", "1,2", "0,0,0", "0,0,0,0,0", "a,b,c,d", "-1,0,0,0", "18446744073709551615,0,0,0", "0, 0 ,0,0", ",,,",
            "99999999999999999999,0,0,0", "level<10", "net_cents>=1e400", "x<NaN", "level<inf", "=", "<<", "a b<1", "level",
            "level<=-0", "views!=1", "gross_cents>9223372036854775807", "2026-01-01", "2026-01-03", "9999-12-31", "1/2",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => (0u64..8, 0u64..8, 0u64..8, 0u64..8).prop_map(|(a, b, c, d)| format!("{a},{b},{c},{d}").into_bytes()),
        1 => (0u64..200_000).prop_map(|n| n.to_string().into_bytes()),
        2 => prop::collection::vec(any::<u8>(), 0..20),
    ];
    (name, value)
}

fn query_case() -> impl Strategy<Value = QueryCase> {
    let method = prop_oneof![
        30 => Just("GET"),
        2 => Just("HEAD"),
        1 => prop::sample::select(vec!["PUT", "DELETE", "PATCH", "OPTIONS", "POST", "TRACE", "CONNECTX"]),
    ];
    let view = prop_oneof![
        8 => prop::sample::select(VIEWS.to_vec()).prop_map(|v| v.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["..", "%2e%2e", "REVENUE_BY_DAY", "revenue_by_day ", "", "views"]).prop_map(|v| v.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ];
    let target = prop_oneof![
        12 => (view, prop::option::weighted(0.6, key_bytes())).prop_map(|(view, key)| Target::View { view, key }),
        2 => prop::sample::select(vec!["/", "/v1/views", "/v1/status", "/metrics", "/v1/events", "/v1/batch", "/v1", "/v1/views/", "//v1/status"])
            .prop_map(Target::Fixed),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Target::Junk),
    ];
    (method, target, prop::collection::vec(param(), 0..4), 0u8..3).prop_map(|(method, target, params, encoding)| {
        // A POST to the batch endpoint is its own (rarer) case.
        let method = if matches!(target, Target::Fixed("/v1/batch")) && method == "POST" { "GET" } else { method };
        QueryCase { method, target, params, encoding }
    })
}

fn raw_case() -> impl Strategy<Value = RawCase> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(RawCase::Bytes),
        6 => (any::<Index>(), prop::collection::vec(mutation(), 1..4)).prop_map(|(template, mutations)| RawCase::Mutated { template, mutations }),
        1 => (prop::sample::select(vec![10usize, 99, 100, 101, 1000, 5000]), prop::sample::select(vec![1usize, 100, 8190, 70_000, 500_000]))
            .prop_map(|(headers, value_len)| RawCase::Flood { headers, value_len }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        50 => ingest_case().prop_map(Case::Ingest),
        40 => query_case().prop_map(Case::Query),
        10 => raw_case().prop_map(Case::Raw),
        1 => Just(Case::Batch),
    ]
}

/// Well-formed requests to start raw mutations from.
fn templates() -> Vec<Vec<u8>> {
    let line = format!("{OPEN_EVENT}}}\n");
    vec![
        b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{line}", line.len()).into_bytes(),
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n0\r\n\r\n", line.len())
            .into_bytes(),
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nIdempotency-Key: raw-1\r\nContent-Length: {}\r\n\r\n{line}", line.len())
            .into_bytes(),
        b"GET /v1/views/revenue_by_day?limit=10&from=2026-01-01 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        b"GET /v1/views/product_revenue_by_day/2026-01-01/1 HTTP/1.0\r\n\r\n".to_vec(),
    ]
}

/// Percent-encodes `bytes`; `keep` says which bytes go raw.
fn encode(out: &mut String, bytes: &[u8], keep: impl Fn(u8) -> bool) {
    for &b in bytes {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$'()*,;:@".contains(&b)
}

fn path_of(q: &QueryCase) -> String {
    let seg_keep = |slash: bool| {
        let mode = q.encoding;
        move |b: u8| match mode {
            0 => unreserved(b) || (slash && b == b'/'),
            1 => false,
            _ => (0x21..0x7f).contains(&b) && b != b'?' && b != b'#',
        }
    };
    let mut path = String::new();
    match &q.target {
        Target::View { view, key } => {
            path.push_str("/v1/views/");
            encode(&mut path, view, seg_keep(false));
            if let Some(k) = key {
                path.push('/');
                encode(&mut path, k, seg_keep(true));
            }
        }
        Target::Fixed(p) => path.push_str(p),
        Target::Junk(j) => {
            path.push('/');
            encode(&mut path, j, seg_keep(true));
        }
    }
    if !q.params.is_empty() {
        path.push('?');
        let keep = |b: u8| match q.encoding {
            0 => unreserved(b) && b != b'&' && b != b'=',
            1 => false,
            _ => (0x21..0x7f).contains(&b) && b != b'#',
        };
        for (i, (k, v)) in q.params.iter().enumerate() {
            if i > 0 {
                path.push('&');
            }
            encode(&mut path, k, keep);
            path.push('=');
            encode(&mut path, v, keep);
        }
    }
    path
}

/// How a request is sent and what may come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// On the kept-alive connection; exactly one answer.
    KeepAlive,
    /// On a fresh connection; exactly one answer.
    Fresh,
    /// On a fresh connection, followed by a well-formed `GET /v1/status` with `Connection:
    /// close`; read every answer until the server closes. Answers are optional (malformed).
    Raw,
    /// Send, wait a little, close without reading: the server must store nothing.
    Abort,
}

struct Rendered {
    bytes: Vec<u8>,
    mode: Mode,
    head: bool,
    label: &'static str,
    /// For ingest with a known outcome: Ok(accepted) or Err(line).
    outcome: Option<Result<u64, Option<u64>>>,
    /// For point queries of a known view and day: never 400.
    known_key: bool,
}

/// Whether a header value is well-formed (visible ASCII, SP, HTAB, obs-text).
fn header_ok(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn render(case: &Case, n: u64, templates: &[Vec<u8>]) -> Rendered {
    match case {
        Case::Ingest(c) => {
            let body = render_body(&c.body);
            let mut head = b"POST /v1/events HTTP/1.1\r\nHost: t\r\n".to_vec();
            let mut well_formed = true;
            let mut push_header = |name: &str, value: &[u8], head: &mut Vec<u8>| {
                well_formed &= header_ok(value);
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value);
                head.extend_from_slice(b"\r\n");
            };
            match &c.key {
                KeyHeader::None => {}
                KeyHeader::Unique => push_header("Idempotency-Key", format!("fuzz-{n}-{}", std::process::id()).as_bytes(), &mut head),
                KeyHeader::Shared(i) => push_header("Idempotency-Key", format!("shared-{i}").as_bytes(), &mut head),
                KeyHeader::Odd(v) => push_header("Idempotency-Key", v, &mut head),
            }
            // No Content-Type in the case: the usual one (a missing one is a plain 415).
            let ct = c.content_type.as_deref().unwrap_or(b"application/x-ndjson");
            push_header("Content-Type", ct, &mut head);
            let ct_accepted = [&b"application/x-ndjson"[..], b"application/json", b"text/csv"].contains(&ct);
            if c.expect_continue {
                push_header("Expect", b"100-continue", &mut head);
            }
            let mut mode = Mode::Fresh;
            let mut payload = body.clone();
            match &c.framing {
                Framing::Exact => push_header("Content-Length", body.len().to_string().as_bytes(), &mut head),
                Framing::Chunked(size) => {
                    push_header("Transfer-Encoding", b"chunked", &mut head);
                    payload.clear();
                    for chunk in body.chunks((*size).max(1)) {
                        payload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        payload.extend_from_slice(chunk);
                        payload.extend_from_slice(b"\r\n");
                    }
                    payload.extend_from_slice(b"0\r\n\r\n");
                }
                Framing::Short(k) => {
                    push_header("Content-Length", body.len().saturating_sub(*k).to_string().as_bytes(), &mut head);
                    mode = Mode::Raw;
                }
                Framing::Abort(k) => {
                    push_header("Content-Length", (body.len() + k).to_string().as_bytes(), &mut head);
                    mode = Mode::Abort;
                }
                Framing::OddLength(f) => {
                    push_header("Content-Length", f.replace("{n}", &body.len().to_string()).as_bytes(), &mut head);
                    mode = Mode::Raw;
                }
                Framing::Missing => mode = Mode::Raw,
            }
            if !well_formed && mode != Mode::Abort {
                mode = Mode::Raw;
            }
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&payload);
            let plain_key = matches!(c.key, KeyHeader::None | KeyHeader::Unique);
            let known = matches!(c.framing, Framing::Exact | Framing::Chunked(_)) && plain_key && ct_accepted && mode == Mode::Fresh;
            Rendered {
                bytes: head,
                mode,
                head: false,
                label: "POST /v1/events",
                outcome: if known { known_outcome(&c.body) } else { None },
                known_key: false,
            }
        }
        Case::Query(q) => {
            let path = path_of(q);
            let mut req = format!("{} {path} HTTP/1.1\r\nHost: t\r\n", q.method).into_bytes();
            if q.method != "GET" && q.method != "HEAD" {
                req.extend_from_slice(b"Content-Length: 0\r\n");
            }
            req.extend_from_slice(b"\r\n");
            let label = match &q.target {
                Target::View { key: Some(_), .. } => "GET /v1/views/{view}/{key}",
                Target::View { key: None, .. } => "GET /v1/views/{view}",
                _ => "GET other",
            };
            let known_key = match &q.target {
                Target::View { view, key: Some(k) } => {
                    q.method == "GET"
                        && q.params.is_empty()
                        && q.encoding != 2
                        && [&b"revenue_by_day"[..], b"top_products_by_day", b"daily_unique_viewers"].contains(&view.as_slice())
                        && DAYS.iter().any(|d| d.as_bytes() == k.as_slice())
                }
                _ => false,
            };
            let mode = if q.method == "GET" || q.method == "HEAD" { Mode::KeepAlive } else { Mode::Fresh };
            Rendered { bytes: req, mode, head: q.method == "HEAD", label, outcome: None, known_key }
        }
        Case::Raw(r) => {
            let bytes = match r {
                RawCase::Bytes(b) => b.clone(),
                RawCase::Mutated { template, mutations } => {
                    let mut b = templates[template.index(templates.len())].clone();
                    for m in mutations {
                        apply(&mut b, m);
                    }
                    b
                }
                RawCase::Flood { headers, value_len } => {
                    let mut b = b"GET /v1/status HTTP/1.1\r\nHost: t\r\n".to_vec();
                    let value = "v".repeat(*value_len);
                    for i in 0..*headers {
                        b.extend_from_slice(format!("X-Fuzz-{i}: {value}\r\n").as_bytes());
                        if b.len() > 4 << 20 {
                            break;
                        }
                    }
                    b.extend_from_slice(b"\r\n");
                    b
                }
            };
            Rendered { bytes, mode: Mode::Raw, head: false, label: "raw", outcome: None, known_key: false }
        }
        Case::Batch => Rendered {
            bytes: b"POST /v1/batch HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".to_vec(),
            mode: Mode::KeepAlive,
            head: false,
            label: "POST /v1/batch",
            outcome: None,
            known_key: false,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client

fn connect(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Writes `bytes` (from a helper thread when large, so an early answer can be read while the
/// server stops reading) and runs `read`.
fn write_then<T>(stream: &TcpStream, bytes: &[u8], read: impl FnOnce() -> T) -> T {
    if bytes.len() <= 64 << 10 {
        let _ = (&*stream).write_all(bytes);
        return read();
    }
    std::thread::scope(|s| {
        let w = stream.try_clone().expect("clone stream");
        s.spawn(move || {
            let _ = (&w).write_all(bytes);
        });
        read()
    })
}

/// Timeout for one answer: the longest `min_frontier` wait is 10 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// What came back for one request.
enum Outcome {
    /// Answers (Raw mode: zero or more).
    Answers(Vec<Response>),
    /// The connection was closed, reset or timed out without an answer.
    NoAnswer(String),
}

struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A kept-alive exchange, reconnecting once if the kept-alive connection was stale (GETs only).
    fn keep_alive(&mut self, bytes: &[u8], head: bool) -> Outcome {
        for attempt in 0..2 {
            let fresh = self.conn.is_none();
            if fresh {
                match connect(self.addr, ANSWER_TIMEOUT) {
                    Ok(s) => self.conn = Some(BufReader::new(s)),
                    Err(e) => return Outcome::NoAnswer(format!("connect: {e}")),
                }
            }
            let r = self.conn.as_mut().expect("connected");
            let stream = r.get_ref().try_clone().expect("clone stream");
            let result = write_then(&stream, bytes, || read_raw_response(r, head));
            match result {
                Ok(Some(resp)) => {
                    if resp.closes() {
                        self.conn = None;
                    }
                    return Outcome::Answers(vec![resp]);
                }
                Ok(None) | Err(_) if !fresh && attempt == 0 => self.conn = None,
                Ok(None) => {
                    self.conn = None;
                    return Outcome::NoAnswer("closed without an answer".into());
                }
                Err(e) => {
                    self.conn = None;
                    return Outcome::NoAnswer(format!("{:?}: {e}", e.kind()));
                }
            }
        }
        unreachable!("two attempts")
    }

    fn send(&mut self, r: &Rendered) -> Outcome {
        match r.mode {
            Mode::KeepAlive => self.keep_alive(&r.bytes, r.head),
            Mode::Fresh => {
                let s = match connect(self.addr, ANSWER_TIMEOUT) {
                    Ok(s) => s,
                    Err(e) => return Outcome::NoAnswer(format!("connect: {e}")),
                };
                let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
                match write_then(&s, &r.bytes, || read_raw_response(&mut reader, r.head)) {
                    Ok(Some(resp)) => Outcome::Answers(vec![resp]),
                    Ok(None) => Outcome::NoAnswer("closed without an answer".into()),
                    Err(e) => Outcome::NoAnswer(format!("{:?}: {e}", e.kind())),
                }
            }
            Mode::Raw => {
                let s = match connect(self.addr, Duration::from_millis(1500)) {
                    Ok(s) => s,
                    Err(e) => return Outcome::NoAnswer(format!("connect: {e}")),
                };
                let mut bytes = r.bytes.clone();
                bytes.extend_from_slice(b"GET /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
                let answers = write_then(&s, &bytes, || {
                    let mut answers = Vec::new();
                    let mut half_closed = false;
                    loop {
                        match read_raw_response(&mut reader, false) {
                            Ok(Some(resp)) => answers.push(resp),
                            Ok(None) => break,
                            // Nothing for 1.5 s: the server may be waiting for the rest of an
                            // incomplete request, or still committing a complete one. Close our
                            // side (ending any incomplete request) and wait for what is owed,
                            // so a late acknowledgement is still counted.
                            Err(e) if !half_closed && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                                half_closed = true;
                                let _ = s.shutdown(std::net::Shutdown::Write);
                                let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
                            }
                            Err(_) => break,
                        }
                    }
                    answers
                });
                Outcome::Answers(answers)
            }
            Mode::Abort => {
                let s = match connect(self.addr, Duration::from_millis(200)) {
                    Ok(s) => s,
                    Err(e) => return Outcome::NoAnswer(format!("connect: {e}")),
                };
                let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
                let answer = write_then(&s, &r.bytes, || read_raw_response(&mut reader, false));
                drop(reader);
                drop(s);
                match answer {
                    Ok(Some(resp)) => Outcome::Answers(vec![resp]),
                    _ => Outcome::Answers(Vec::new()),
                }
            }
        }
    }

    fn log_events(&mut self) -> Result<u64, String> {
        match self.keep_alive(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n", false) {
            Outcome::Answers(a) if a.len() == 1 && a[0].status == 200 => serde_json::from_slice::<Value>(&a[0].body)
                .ok()
                .and_then(|v| v["log"]["events"].as_u64())
                .ok_or_else(|| format!("status without log.events: {}", a[0].text())),
            Outcome::Answers(a) => Err(format!("status answered {:?}", a.iter().map(|r| (r.status, r.text())).collect::<Vec<_>>())),
            Outcome::NoAnswer(why) => Err(format!("status: {why}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP fuzzer

#[derive(Default)]
struct Fuzz {
    executions: u64,
    expected_events: u64,
    violations: BTreeMap<String, (u64, String)>,
    statuses: BTreeMap<(&'static str, u16), u64>,
    no_answer: u64,
    panics_seen: usize,
    dead: bool,
}

impl Fuzz {
    fn violation(&mut self, category: String, example: impl FnOnce() -> String) {
        let e = self.violations.entry(category).or_insert_with(|| (0, example()));
        e.0 += 1;
    }

    /// Runs one case and checks every property on it.
    fn run(&mut self, server: &Server, client: &mut Client, case: &Case, templates: &[Vec<u8>]) {
        self.executions += 1;
        if self.dead {
            return;
        }
        let r = render(case, self.executions, templates);
        let describe = |extra: &str| {
            let mut d = format!("{extra}\ncase: {case:?}");
            d.truncate(1500);
            let req = String::from_utf8_lossy(&r.bytes[..r.bytes.len().min(600)]).into_owned();
            format!("{d}\nrequest ({} bytes): {req:?}", r.bytes.len())
        };
        let outcome = client.send(&r);
        let answers = match outcome {
            Outcome::Answers(a) => a,
            Outcome::NoAnswer(why) => {
                self.no_answer += 1;
                if r.mode != Mode::Raw && r.mode != Mode::Abort {
                    let cat = format!("dropped connection / no answer [{}]", r.label);
                    self.violation(cat, || describe(&why));
                }
                Vec::new()
            }
        };
        if matches!(r.mode, Mode::KeepAlive | Mode::Fresh) && answers.len() != 1 {
            self.violation(format!("expected one answer [{}]", r.label), || describe(&format!("{} answers", answers.len())));
        }
        let mut grew = 0u64;
        for (i, resp) in answers.iter().enumerate() {
            // In Raw mode the last answer is usually the status sentinel's.
            let label = if r.mode == Mode::Raw { "raw" } else { r.label };
            *self.statuses.entry((label, resp.status)).or_default() += 1;
            let s = resp.status;
            if s >= 500 {
                self.violation(format!("5xx [{label}] {s}"), || describe(&resp.text()));
            } else if !(200..300).contains(&s) && !(400..500).contains(&s) {
                self.violation(format!("status neither 2xx nor 4xx [{label}] {s}"), || describe(&resp.text()));
            }
            let protocol_level = resp.body.is_empty() && resp.closes() && resp.header("content-type").is_none();
            if (400..500).contains(&s) && !protocol_level && !r.head {
                let ok = serde_json::from_slice::<Value>(&resp.body).ok().is_some_and(|v| v["error"].is_string());
                if !ok {
                    let snippet: String = resp.text().chars().take(40).collect();
                    self.violation(format!("4xx body is not JSON with an \"error\" string [{label}] {s} {snippet:?}"), || {
                        describe(&resp.text())
                    });
                }
            }
            let is_ack = s == 200 && (r.label == "POST /v1/events" || r.mode == Mode::Raw);
            if is_ack {
                if let Ok(v) = serde_json::from_slice::<Value>(&resp.body) {
                    if let Some(accepted) = v.get("accepted") {
                        let (Some(accepted), Some(dup), Some(pos)) =
                            (accepted.as_u64(), v["duplicate"].as_bool(), v["positions"].as_array())
                        else {
                            self.violation("malformed ack".into(), || describe(&resp.text()));
                            continue;
                        };
                        let span: u64 =
                            pos.iter().map(|p| p["to"].as_u64().unwrap_or(0).saturating_sub(p["from"].as_u64().unwrap_or(0))).sum();
                        if span != accepted {
                            self.violation("ack positions do not add up to accepted".into(), || describe(&resp.text()));
                        }
                        if !dup {
                            grew += accepted;
                        }
                    }
                } else if r.mode != Mode::Raw {
                    self.violation("200 ack is not JSON".into(), || describe(&resp.text()));
                }
            }
            if i == 0 {
                if let Some(expected) = r.outcome {
                    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                    let fine = match expected {
                        Ok(n) => s == 200 && body["accepted"].as_u64() == Some(n) && body["duplicate"] == false,
                        Err(None) => s == 400,
                        Err(Some(line)) => s == 400 && body["line"].as_u64() == Some(line),
                    };
                    if !fine {
                        self.violation(format!("wrong outcome [{label}] expected {expected:?}, got {s}"), || describe(&resp.text()));
                    }
                }
                if r.known_key && s != 200 && s != 404 {
                    self.violation(format!("point query of a known view and day [{label}] {s}"), || describe(&resp.text()));
                }
            }
        }
        // The log grew by exactly what was acknowledged.
        match client.log_events() {
            Ok(now) => {
                if now != self.expected_events + grew {
                    let (before, expected) = (self.expected_events, self.expected_events + grew);
                    self.violation(format!("log events changed by other than the acknowledged count [{}]", r.label), || {
                        describe(&format!("log.events {before} → {now}, acknowledged {grew} (expected {expected})"))
                    });
                }
                self.expected_events = now;
            }
            Err(why) => {
                self.violation("GET /v1/status failed".into(), || describe(&why));
                if TcpStream::connect_timeout(&client.addr, Duration::from_secs(2)).is_err() {
                    self.dead = true;
                    self.violation("server stopped accepting connections".into(), || describe(&server.stderr()));
                }
            }
        }
        let panics = server.stderr().matches("panicked").count();
        if panics > self.panics_seen {
            self.panics_seen = panics;
            let log = server.stderr();
            let at = log.rfind("panicked").unwrap_or(0);
            let line: String = log[at..].lines().next().unwrap_or("").chars().take(200).collect();
            self.violation(format!("server panicked [{}]", r.label), || describe(&format!("stderr: ...{line}")));
        }
    }
}

// http_fuzz proves no request makes the service answer 5xx, drop a well-formed request, hang,
// panic, answer a 4xx without a JSON error, or store anything other than exactly what it
// acknowledged; and that the server still serves afterwards (see the module docs).
#[test]
fn http_fuzz() {
    let cases = fuzz_cases();
    let seed = fuzz_seed();
    let tmp = TempDir::new("http-fuzz");
    let mut server = Server::start(tmp.path(), &["--allow-host", "t"]);
    let mut client = Client { addr: server.addr, conn: None };
    let started = Instant::now();
    let fuzz = RefCell::new(Fuzz::default());
    fuzz.borrow_mut().expected_events = client.log_events().expect("status at start");
    let templates = templates();
    let client = RefCell::new(client);
    let result = runner(cases, seed).run(&case(), |c| {
        fuzz.borrow_mut().run(&server, &mut client.borrow_mut(), &c, &templates);
        Ok(())
    });
    let fuzz = fuzz.into_inner();
    let mut client = client.into_inner();
    assert!(result.is_ok(), "the runner failed: {result:?}");

    eprintln!(
        "http_fuzz: {} executions in {:.1} s (seed {seed}; LAMBDAFLOW_FUZZ_SEED={seed} repeats it), {} events stored, {} well-formed requests got no answer",
        fuzz.executions,
        started.elapsed().as_secs_f64(),
        fuzz.expected_events,
        fuzz.no_answer
    );
    let mut hist = String::new();
    for ((label, status), n) in &fuzz.statuses {
        let _ = write!(hist, " [{label}] {status}×{n};");
    }
    eprintln!("http_fuzz: answers:{hist}");

    // The server survived: it still answers, and it never panicked.
    assert!(server.child.try_wait().expect("try_wait").is_none(), "the server exited:\n{}", server.stderr());
    let alive = client.log_events();
    let log = server.stderr();
    let mut report = String::new();
    for (category, (count, example)) in &fuzz.violations {
        let _ = writeln!(report, "\n=== {category} ({count}×); first:\n{example}");
    }
    assert!(
        fuzz.violations.is_empty(),
        "{} kinds of violations in {} executions (seed {seed}):{report}",
        fuzz.violations.len(),
        fuzz.executions
    );
    assert!(alive.is_ok(), "the server does not answer /v1/status after the run: {alive:?}");
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// The in-process parser fuzzer

/// Parses like `POST /v1/events` does.
fn parse(bytes: &[u8]) -> Result<Vec<ShopEvent>, Error> {
    parse_all::<ShopEvent>(&mut &bytes[..])
}

// parser_fuzz proves the parser is total on the same hostile bodies: no panic; either events,
// which are no more than the non-blank lines and serialize back (NDJSON and CSV) to input
// that parses to the same events, or Error::BadInput with a line number that exists.
#[test]
fn parser_fuzz() {
    let cases = fuzz_cases();
    let seed = fuzz_seed();
    let executions = std::cell::Cell::new(0u64);
    let result = runner(cases, seed).run(&body_spec(), |spec| {
        executions.set(executions.get() + 1);
        let input = render_body(&spec);
        let lines = input.split(|b| *b == b'\n').count() as u64;
        let non_blank = input.split(|b| *b == b'\n').filter(|l| l.iter().any(|b| !b.is_ascii_whitespace())).count() as u64;
        match parse(&input) {
            Ok(events) => {
                prop_assert!(events.len() as u64 <= non_blank, "{} events from {} non-blank lines", events.len(), non_blank);
                let mut nd = Vec::new();
                let mut csv = format!("{CSV_HEADER}\n").into_bytes();
                for e in &events {
                    e.write_ndjson(&mut nd);
                    nd.push(b'\n');
                    e.write_csv_row(&mut csv);
                    csv.push(b'\n');
                }
                prop_assert_eq!(parse(&nd).map_err(|e| e.to_string()), Ok(events.clone()), "NDJSON round trip");
                prop_assert_eq!(parse(&csv).map_err(|e| e.to_string()), Ok(events.clone()), "CSV round trip");
            }
            Err(Error::BadInput { line, .. }) => prop_assert!((1..=lines).contains(&line), "line {} of {}", line, lines),
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
        if let Some(expected) = known_outcome(&spec) {
            match (expected, parse(&input)) {
                (Ok(n), Ok(events)) => prop_assert_eq!(events.len() as u64, n),
                (Err(_), Ok(events)) if events.is_empty() => {}
                (Err(Some(line)), Err(Error::BadInput { line: got, .. })) => prop_assert_eq!(got, line),
                (Err(_), Err(_)) => {}
                (expected, got) => prop_assert!(false, "expected {:?}, got {:?}", expected, got.map(|e| e.len())),
            }
        }
        Ok(())
    });
    eprintln!("parser_fuzz: {} executions (seed {seed})", executions.get());
    if let Err(e) = result {
        panic!("parser_fuzz failed (seed {seed}): {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: what the fuzzer found, pinned down as plain tests of the correct behaviour.

/// Sends one request on a fresh connection and reads the answer.
fn once(addr: SocketAddr, request: &[u8]) -> Result<Response, String> {
    let mut c = Client { addr, conn: None };
    match c.send(&Rendered { bytes: request.to_vec(), mode: Mode::Fresh, head: false, label: "", outcome: None, known_key: false }) {
        Outcome::Answers(mut a) if a.len() == 1 => Ok(a.remove(0)),
        Outcome::Answers(a) => Err(format!("{} answers", a.len())),
        Outcome::NoAnswer(why) => Err(why),
    }
}

fn post_events(addr: SocketAddr, body: &[u8]) -> Result<Response, String> {
    let mut req =
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(body);
    once(addr, &req)
}

fn get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    once(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
}

// revenue_net_cents_does_not_overflow proves accepted input cannot make a query fail: two
// purchases of i64::MAX cents and a refund of i64::MAX cents on one day are each valid
// (amount_cents is 0..=i64::MAX), and their true net, i64::MAX, fits in an i64. The lanes
// wrap on purpose (operators/src/sums.rs: "exact whenever the true total fits"), so gross is
// -2 after wrapping and `gross - refund` in revenue_by_day's presenter must wrap too. Found by
// http_fuzz: a 500 ("attempt to subtract with overflow", jobs/src/shop/mod.rs:92) on ranges
// and a panic on point queries.
#[test]
fn revenue_net_cents_does_not_overflow() {
    let tmp = TempDir::new("fuzz-overflow");
    let server = Server::start(tmp.path(), &["--allow-host", "t"]);
    let max = i64::MAX;
    let body = format!(
        "{{\"type\":\"purchase\",\"ts\":{DAY0_MS},\"order_id\":1,\"customer_id\":1,\"product_id\":1,\"quantity\":1,\"amount_cents\":{max}}}\n\
         {{\"type\":\"purchase\",\"ts\":{DAY0_MS},\"order_id\":2,\"customer_id\":1,\"product_id\":1,\"quantity\":1,\"amount_cents\":{max}}}\n\
         {{\"type\":\"refund\",\"ts\":{DAY0_MS},\"order_id\":1,\"customer_id\":1,\"product_id\":1,\"amount_cents\":{max}}}\n"
    );
    let ack = post_events(server.addr, body.as_bytes()).expect("ingest");
    assert_eq!(ack.status, 200, "{}", ack.text());
    let ends = serde_json::from_slice::<Value>(&ack.body).expect("ack")["positions"].as_array().expect("positions").iter().fold(
        vec![0u64; 4],
        |mut ends, p| {
            ends[p["partition"].as_u64().expect("partition") as usize] = p["to"].as_u64().expect("to");
            ends
        },
    );
    let mf = ends.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let range = get(server.addr, &format!("/v1/views/revenue_by_day?min_frontier={mf}"));
    let point = get(server.addr, &format!("/v1/views/revenue_by_day/{}", DAYS[0]));
    let log = server.stderr();
    let range = range.unwrap_or_else(|e| panic!("range query got no answer ({e}); server log:\n{log}"));
    assert_eq!(range.status, 200, "range query: {}\nserver log:\n{log}", range.text());
    let v: Value = serde_json::from_slice(&range.body).expect("JSON");
    assert_eq!(v["items"][0]["value"]["net_cents"], max, "the true net fits in an i64 and must be exact: {v}");
    let point = point.unwrap_or_else(|e| panic!("point query got no answer ({e}); server log:\n{log}"));
    assert_eq!(point.status, 200, "point query: {}", point.text());
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

// errors_are_json proves the documented error shape (`{"error": "..."}`, docs/serving.md)
// holds for what the router itself refuses too. Found by http_fuzz: a path segment that is
// not UTF-8 once percent-decoded gets axum's plain-text "Invalid URL: Invalid UTF-8 in `key`",
// and a wrong method gets a 405 with an empty body.
#[test]
fn errors_are_json() {
    let tmp = TempDir::new("fuzz-errors");
    let server = Server::start(tmp.path(), &["--allow-host", "t"]);
    let mut failures = Vec::new();
    for (request, want) in [
        ("GET /v1/views/revenue_by_day/%FF HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET /v1/views/%C3%28 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("GET /v1/views/%FF/2026-01-01 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("DELETE /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405),
        ("GET /v1/batch HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        ("PUT /v1/views/revenue_by_day HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405),
    ] {
        let r = once(server.addr, request.as_bytes()).unwrap_or_else(|e| panic!("{request:?}: no answer: {e}"));
        let json_error = serde_json::from_slice::<Value>(&r.body).ok().is_some_and(|v| v["error"].is_string());
        if r.status != want || !json_error {
            failures.push(format!("{:?} → {} {:?}", request.lines().next().unwrap_or(""), r.status, r.text()));
        }
    }
    assert!(failures.is_empty(), "answers without a JSON error (want {{\"error\": ...}}):\n{}", failures.join("\n"));
}
