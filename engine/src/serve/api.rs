//! The HTTP API: routes, handlers, authentication, the query cache.

#![allow(clippy::result_large_err)] // handlers return `Response` errors; boxing them buys nothing here

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lambdaflow_operators::{Job, Selection};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ingest::{Outcome, Submission};
use super::metrics::Gauges;
use super::AppState;
use crate::error::Error;
use crate::lambda::{Encoded, Lambda, Serving};

/// Most answers a range query returns.
pub const LIMIT_MAX: usize = 100_000;
/// Longest a query may wait for `min_frontier`.
pub const WAIT_MAX: Duration = Duration::from_secs(10);
/// Bytes of answers the query cache holds before it is cleared.
const CACHE_BYTES_MAX: usize = 64 << 20;
/// Answers larger than this are not cached.
const CACHE_ENTRY_BYTES_MAX: usize = 1 << 20;
/// Reads waiting for `min_frontier` at once; more get 429.
pub const WAITERS_MAX: usize = 64;
/// Longest a request body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn router<J: Job>(state: Arc<AppState<J>>) -> Router {
    Router::new()
        .route("/", get(dashboard::<J>))
        .route("/v1/events", post(post_events::<J>))
        .route("/v1/views", get(list_views::<J>))
        .route("/v1/views/{view}", get(get_range::<J>))
        .route("/v1/views/{view}/{*key}", get(get_key::<J>))
        .route("/v1/batch", post(post_batch::<J>))
        .route("/v1/status", get(get_status::<J>))
        .route("/metrics", get(get_metrics::<J>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/serving.md (GET /v1/views lists the views)") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "this endpoint does not take that method; see docs/serving.md")
        })
        .with_state(state)
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }).to_string())
}

fn too_many(message: String) -> Response {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// `Ok` if the request may proceed: no token configured, a read with public reads, or the
/// right bearer token.
fn authorize<J: Job>(s: &AppState<J>, headers: &HeaderMap, write: bool) -> Result<(), Response> {
    let Some(token) = &s.cfg.token else { return Ok(()) };
    if !write && s.cfg.public_reads {
        return Ok(());
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            s.metrics.auth_refused.fetch_add(1, Relaxed);
            let mut r =
                error(StatusCode::UNAUTHORIZED, "this endpoint needs `Authorization: Bearer <token>` (the token given to --token-file)");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(r)
        }
    }
}

async fn dashboard<J: Job>(State(s): State<Arc<AppState<J>>>) -> Response {
    let mut r = Html(s.dashboard).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn post_events<J: Job>(State(s): State<Arc<AppState<J>>>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    if let Err(r) = authorize(&s, &headers, true) {
        return r;
    }
    let rejected = |r: Response| {
        s.metrics.ingest_rejected.fetch_add(1, Relaxed);
        r
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().map_err(|_| "Idempotency-Key must be visible ASCII".to_string()).and_then(|k| {
            crate::keys::validate_key(k)?;
            Ok(k.to_string())
        }) {
            Ok(k) => Some(k),
            Err(e) => return rejected(error(StatusCode::BAD_REQUEST, e)),
        },
    };
    let max = s.cfg.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        return rejected(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is {n} bytes; the limit is {max} (--max-body); for a larger file use `lambdaflow ingest --server URL FILE`"
            ),
        ));
    }
    // Backpressure 1: the speed layer is too far behind the log.
    let lag = {
        let serving = s.lambda.serving();
        let frontier = serving.speed.frontier();
        s.lambda.log().end_offsets().iter().zip(&frontier).map(|(e, f)| e.saturating_sub(*f)).sum::<u64>()
    };
    if lag > s.cfg.max_lag_events {
        s.metrics.ingest_throttled.fetch_add(1, Relaxed);
        return too_many(format!("the speed layer is {lag} events behind the log (limit {}); retry after a second", s.cfg.max_lag_events));
    }
    // Backpressure 2: bytes in flight are bounded; they are reserved as they arrive (so a
    // client that declares a large body and stalls holds only what it sent).
    let (bytes, permit) = match read_body(&s, body, max).await {
        Ok(b) => b,
        Err((throttled, r)) => {
            if throttled {
                s.metrics.ingest_throttled.fetch_add(1, Relaxed);
                return r;
            }
            return rejected(r);
        }
    };
    let partitions = s.lambda.log().partitions();
    let hash = key.as_ref().map(|_| crate::keys::body_hash(&bytes));
    let parsed = tokio::task::spawn_blocking(move || -> crate::Result<Encoded> {
        let events: Vec<J::Event> = crate::ingest::parse_all(&mut &bytes[..])?;
        Encoded::of(&events, partitions)
    })
    .await;
    let encoded = match parsed {
        Ok(Ok(e)) if !e.is_empty() => e,
        Ok(Ok(_)) => return rejected(error(StatusCode::BAD_REQUEST, "the request holds no events")),
        Ok(Err(Error::BadInput { line, error: fe })) => {
            let body = json!({
                "error": format!("line {line}: {fe}; nothing of this request was stored"),
                "line": line,
                "field": fe.field,
                "value": fe.value,
                "message": fe.message,
            });
            return rejected(json_response(StatusCode::BAD_REQUEST, body.to_string()));
        }
        Ok(Err(e)) => return rejected(error(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("parsing the request failed: {e}")),
    };
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let submission = Submission { key: key.zip(hash), encoded, received, reply, permit };
    let sent = match s.committer.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(tx) => tx.send(submission).is_ok(),
        None => false,
    };
    if !sent {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the service is shutting down; nothing of this request was stored");
    }
    match outcome.await {
        Ok(Outcome::Ok(ack)) => json_response(StatusCode::OK, serde_json::to_string(&ack).unwrap_or_default()),
        Ok(Outcome::KeyConflict(msg)) => rejected(error(StatusCode::UNPROCESSABLE_ENTITY, msg)),
        Ok(Outcome::Failed(msg)) => error(StatusCode::SERVICE_UNAVAILABLE, msg),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the committer stopped before answering; retry with the same Idempotency-Key"),
    }
}

/// Reads a request body of at most `max` bytes within [`BODY_READ_TIMEOUT`], reserving
/// in-flight budget for each chunk as it arrives.
///
/// Only a request that holds nothing yet waits for room (up to the admission wait); one that
/// already holds part of the budget and finds no room for its next chunk gives everything
/// back at once with a 429. No request waits while holding, so concurrent uploads can never
/// hold the whole budget between them and wait for each other.
/// Errors: `(true, 429)` when there is no room; `(false, 4xx)` for a body too large (413),
/// too slow (408) or malformed (400).
async fn read_body<J: Job>(
    s: &AppState<J>,
    mut body: Body,
    max: usize,
) -> Result<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>), (bool, Response)> {
    use axum::body::HttpBody;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let mut buf: Vec<u8> = Vec::new();
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout_at(deadline, frame).await {
            Err(_) => {
                let msg = format!("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs());
                return Err((false, error(StatusCode::REQUEST_TIMEOUT, msg)));
            }
            Ok(None) => return Ok((buf, permit)),
            Ok(Some(Err(e))) => return Err((false, error(StatusCode::BAD_REQUEST, format!("the request body is malformed: {e}")))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else { continue }; // trailers
        if buf.len() + chunk.len() > max {
            let msg = format!("request body is over {max} bytes (--max-body); for a larger file use `lambdaflow ingest --server URL FILE`");
            return Err((false, error(StatusCode::PAYLOAD_TOO_LARGE, msg)));
        }
        if chunk.is_empty() {
            continue;
        }
        let n = chunk.len() as u32;
        let got = match permit.as_mut() {
            Some(held) => s.inflight.clone().try_acquire_many_owned(n).ok().map(|p| held.merge(p)).is_some(),
            None => {
                let wait_until = deadline.min(tokio::time::Instant::now() + s.cfg.admission_wait);
                match tokio::time::timeout_at(wait_until, s.inflight.clone().acquire_many_owned(n)).await {
                    Ok(Ok(p)) => {
                        permit = Some(p);
                        true
                    }
                    _ => false,
                }
            }
        };
        if !got {
            return Err((true, too_many("too many request bytes in flight; retry after a second".into())));
        }
        if buf.is_empty() {
            buf.reserve(chunk.len().max(64 << 10).min(max));
        }
        buf.extend_from_slice(&chunk);
    }
}

async fn list_views<J: Job>(State(s): State<Arc<AppState<J>>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    let views: Vec<Value> =
        s.lambda.views().into_iter().map(|v| json!({ "name": v.name, "kind": v.kind, "key": v.key, "value": v.value })).collect();
    json_response(StatusCode::OK, json!({ "job": s.lambda.job().name(), "views": views }).to_string())
}

/// What a cached answer was asked: the view, and the key or the range parameters.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    view: String,
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: usize,
    filter: Option<String>,
}

/// Cached answers of one [`CacheKey`], valid for one serving pair at one frontier.
struct Cached {
    serving: u64,
    frontier: Vec<u64>,
    /// The answers as JSON: an array (range) or one answer object, or `None` for "no such key".
    body: Option<Arc<str>>,
}

/// Query results keyed by view and selection; an entry only answers while the serving pair
/// and its speed frontier are the ones it was computed at, so every speed publication and
/// every handover invalidates it.
#[derive(Default)]
pub(super) struct Cache {
    map: Mutex<(HashMap<CacheKey, Cached>, usize)>,
}

fn cached_bytes(c: &Cached) -> usize {
    c.body.as_ref().map_or(0, |b| b.len()) + 64
}

impl Cache {
    /// The cached answer, if it was computed at this serving pair and frontier; a stale
    /// entry is dropped.
    fn get(&self, key: &CacheKey, serving: u64, frontier: &[u64]) -> Option<Option<Arc<str>>> {
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (map, bytes) = &mut *guard;
        match map.get(key) {
            Some(c) if c.serving == serving && c.frontier == frontier => Some(c.body.clone()),
            Some(_) => {
                if let Some(old) = map.remove(key) {
                    *bytes -= cached_bytes(&old);
                }
                None
            }
            None => None,
        }
    }

    /// Caches an answer; the cache holds at most [`CACHE_BYTES_MAX`] and starts over when full.
    fn put(&self, key: CacheKey, c: Cached) {
        let size = cached_bytes(&c);
        if size > CACHE_ENTRY_BYTES_MAX {
            return;
        }
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (map, bytes) = &mut *guard;
        if *bytes + size > CACHE_BYTES_MAX {
            map.clear();
            *bytes = 0;
        }
        if let Some(old) = map.insert(key, c) {
            *bytes -= cached_bytes(&old);
        }
        *bytes += size;
    }
}

/// A numeric filter on a value field: `field<10`, `field>=3`, ...
#[derive(Debug)]
struct Where {
    field: String,
    op: &'static str,
    value: f64,
}

impl Where {
    fn parse(s: &str) -> Result<Where, String> {
        for op in ["<=", ">=", "!=", "<", ">", "="] {
            if let Some((f, v)) = s.split_once(op) {
                let value: f64 = v.trim().parse().map_err(|_| format!("where: `{v}` is not a number"))?;
                let field = f.trim();
                if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("where: `{field}` is not a field name"));
                }
                return Ok(Where { field: field.to_string(), op, value });
            }
        }
        Err(format!("where: `{s}` is not FIELD<N, FIELD>N, FIELD<=N, FIELD>=N, FIELD=N or FIELD!=N"))
    }

    fn keeps(&self, value: &Value) -> bool {
        let Some(x) = value.get(&self.field).and_then(Value::as_f64) else { return false };
        match self.op {
            "<" => x < self.value,
            "<=" => x <= self.value,
            ">" => x > self.value,
            ">=" => x >= self.value,
            "=" => x == self.value,
            _ => x != self.value,
        }
    }
}

/// Checks the view exists (404 naming the views otherwise).
fn check_view<J: Job>(lambda: &Lambda<J>, view: &str) -> Result<(), Response> {
    if lambda.serving().speed.views().iter().any(|v| v.info().name == view) {
        return Ok(());
    }
    let names: Vec<String> = lambda.views().into_iter().map(|v| v.name).collect();
    Err(error(StatusCode::NOT_FOUND, format!("no view named `{view}`; the views are: {}", names.join(", "))))
}

/// Waits (off the async threads) until the speed layer covers `offsets`.
async fn wait_visible<J: Job>(s: &AppState<J>, offsets: Vec<u64>, timeout: Duration) -> Result<bool, Response> {
    let lambda = s.lambda.clone();
    let ends = lambda.log().end_offsets();
    if let Some(p) = (0..ends.len()).find(|p| offsets[*p] > ends[*p]) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("min_frontier asks partition {p} for offset {}, but the log ends at {}: no ack ever named it", offsets[p], ends[p]),
        ));
    }
    if lambda.serving().speed.frontier().iter().zip(&offsets).all(|(f, o)| f >= o) {
        return Ok(true);
    }
    let Ok(_waiting) = s.waiters.clone().try_acquire_owned() else {
        return Err(too_many(format!("more than {WAITERS_MAX} reads are waiting for min_frontier; retry after a second")));
    };
    let waited = tokio::task::spawn_blocking(move || -> crate::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let serving = lambda.serving();
            let left = deadline.saturating_duration_since(Instant::now());
            if serving.speed.wait_for(&offsets, left.min(Duration::from_millis(50)))? {
                return Ok(true);
            }
            if left.is_zero() {
                return Ok(false);
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Parsed query parameters shared by point and range queries.
struct Params {
    from: Option<String>,
    to: Option<String>,
    limit: usize,
    filter: Option<Where>,
    min_frontier: Option<Vec<u64>>,
    timeout: Duration,
}

fn parse_params(params: Vec<(String, String)>, partitions: usize, range: bool) -> Result<Params, Response> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let mut p = Params { from: None, to: None, limit: 1000, filter: None, min_frontier: None, timeout: Duration::from_secs(5) };
    for (k, v) in params {
        match k.as_str() {
            "from" if range => p.from = Some(v),
            "to" if range => p.to = Some(v),
            "limit" if range => {
                p.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| bad(format!("limit must be 1 to {LIMIT_MAX}, not `{v}`")))?
            }
            "where" if range => p.filter = Some(Where::parse(&v).map_err(bad)?),
            "min_frontier" => {
                let offsets: Result<Vec<u64>, _> = v.split(',').map(|x| x.trim().parse::<u64>()).collect();
                match offsets {
                    Ok(o) if o.len() == partitions => p.min_frontier = Some(o),
                    _ => {
                        return Err(bad(format!(
                            "min_frontier must be {partitions} comma-separated offsets (one per partition), not `{v}`"
                        )))
                    }
                }
            }
            "timeout_ms" => {
                let ms: u64 = v.parse().map_err(|_| bad(format!("timeout_ms must be a number of milliseconds, not `{v}`")))?;
                p.timeout = Duration::from_millis(ms).min(WAIT_MAX);
            }
            other => {
                let allowed = if range { "from, to, limit, where, min_frontier, timeout_ms" } else { "min_frontier, timeout_ms" };
                return Err(bad(format!("unknown query parameter `{other}`; this endpoint takes {allowed}")));
            }
        }
    }
    Ok(p)
}

async fn get_range<J: Job>(
    State(s): State<Arc<AppState<J>>>,
    headers: HeaderMap,
    view: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    match (view, params) {
        (Ok(Path(view)), Ok(Query(params))) => answer(s, headers, view, None, params).await,
        (Err(e), _) => error(StatusCode::BAD_REQUEST, format!("bad path: {e}")),
        (_, Err(e)) => error(StatusCode::BAD_REQUEST, format!("bad query string: {e}")),
    }
}

async fn get_key<J: Job>(
    State(s): State<Arc<AppState<J>>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    match (path, params) {
        (Ok(Path((view, key))), Ok(Query(params))) => answer(s, headers, view, Some(key), params).await,
        (Err(e), _) => error(StatusCode::BAD_REQUEST, format!("bad path: {e}")),
        (_, Err(e)) => error(StatusCode::BAD_REQUEST, format!("bad query string: {e}")),
    }
}

async fn answer<J: Job>(
    s: Arc<AppState<J>>,
    headers: HeaderMap,
    view: String,
    key: Option<String>,
    params: Vec<(String, String)>,
) -> Response {
    let t = Instant::now();
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    if let Err(r) = check_view(&s.lambda, &view) {
        return r;
    }
    let p = match parse_params(params, s.lambda.log().partitions() as usize, key.is_none()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(offsets) = p.min_frontier.clone() {
        match wait_visible(&s, offsets, p.timeout).await {
            Ok(true) => {}
            Ok(false) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the speed layer did not reach min_frontier within {} ms", p.timeout.as_millis()),
                )
            }
            Err(r) => return r,
        }
    }
    let cache_key = CacheKey {
        view: view.clone(),
        key: key.clone(),
        from: p.from.clone(),
        to: p.to.clone(),
        limit: p.limit,
        filter: p.filter.as_ref().map(|w| format!("{}{}{}", w.field, w.op, w.value)),
    };
    let serving: Arc<Serving> = s.lambda.serving();
    let (frontier, updated_ms) = serving.speed.with_state(|st| (st.frontier.clone(), st.updated_ms));
    let (body, freshness) = match s.cache.get(&cache_key, serving.id, &frontier) {
        Some(body) => {
            s.metrics.cache_hits.fetch_add(1, Relaxed);
            (body, s.lambda.freshness(&serving, frontier, updated_ms))
        }
        None => {
            let sel = match &key {
                Some(k) => Selection::Key(k.clone()),
                None => Selection::Range {
                    from: p.from.clone(),
                    to: p.to.clone(),
                    limit: if p.filter.is_some() { usize::MAX } else { p.limit },
                },
            };
            // A point query is a few microseconds; a range may merge a whole view, so it runs
            // off the async threads.
            let result = if key.is_some() {
                s.lambda.query_on(&serving, &view, &sel)
            } else {
                let (lambda, serving, view) = (s.lambda.clone(), serving.clone(), view.clone());
                match tokio::task::spawn_blocking(move || lambda.query_on(&serving, &view, &sel)).await {
                    Ok(r) => r,
                    Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("query failed: {e}")),
                }
            };
            let result = match result {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let body: Option<Arc<str>> = match &key {
                Some(_) => result.answers.first().map(|a| Arc::from(serde_json::to_string(a).unwrap_or_default())),
                None => {
                    let items: Vec<_> = match &p.filter {
                        Some(w) => result.answers.iter().filter(|a| w.keeps(&a.value)).take(p.limit).collect(),
                        None => result.answers.iter().collect(),
                    };
                    Some(Arc::from(serde_json::to_string(&items).unwrap_or_default()))
                }
            };
            s.cache.put(cache_key, Cached { serving: serving.id, frontier: result.freshness.speed_frontier.clone(), body: body.clone() });
            (body, result.freshness)
        }
    };
    let fresh = serde_json::to_string(&freshness).unwrap_or_default();
    let view_json = Value::String(view).to_string();
    let response = match (key, body) {
        (None, Some(items)) => json_response(StatusCode::OK, format!("{{\"view\":{view_json},\"items\":{items},\"freshness\":{fresh}}}")),
        (Some(_), Some(answer)) => {
            // `answer` is an object `{"key":..,...}`: splice the view and freshness in.
            let rest = answer.strip_prefix('{').unwrap_or(&answer);
            json_response(StatusCode::OK, format!("{{\"view\":{view_json},\"freshness\":{fresh},{rest}"))
        }
        (Some(k), None) => json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("view {view_json} has no key `{k}` (no events for it yet)"), "freshness": freshness }).to_string(),
        ),
        (None, None) => json_response(StatusCode::OK, format!("{{\"view\":{view_json},\"items\":[],\"freshness\":{fresh}}}")),
    };
    s.metrics.queries.fetch_add(1, Relaxed);
    s.metrics.query_latency.observe(t.elapsed());
    response
}

async fn post_batch<J: Job>(State(s): State<Arc<AppState<J>>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, true) {
        return r;
    }
    let running = s.batch.progress.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    let queued = s.batch.request();
    json_response(
        StatusCode::ACCEPTED,
        json!({
            "queued": queued,
            "running": running,
            "message": if running { "a batch run is in progress; another starts when it ends" } else { "a batch run starts now" },
            "status": "/v1/status",
        })
        .to_string(),
    )
}

fn batch_run_json<J: Job>(s: &AppState<J>) -> Value {
    let progress = s.batch.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last = s.batch.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let next = s.batch.next_ms.load(Relaxed);
    json!({
        "running": progress.as_ref().map(|p| json!({ "done": p.done.load(Relaxed), "total": p.total.load(Relaxed) })),
        "last": last,
        "next_ms": if next == 0 { Value::Null } else { json!(next) },
        "schedule": format!("{:?}", s.cfg.schedule),
        "ok": s.metrics.batch_ok.load(Relaxed),
        "failed": s.metrics.batch_failed.load(Relaxed),
    })
}

async fn get_status<J: Job>(State(s): State<Arc<AppState<J>>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    let st = s.lambda.status();
    let keys = s.metrics.idempotency_keys.load(Relaxed);
    let m = &s.metrics;
    let body = json!({
        "job": st.job,
        "job_version": st.job_version,
        "uptime_s": s.started.elapsed().as_secs(),
        "log": { "events": st.log_end.iter().sum::<u64>(), "end": st.log_end, "bytes": st.log_bytes },
        "batch": st.batch,
        "batch_run": batch_run_json(&s),
        "freshness": st.freshness,
        "speed": {
            "keys": st.speed_keys.iter().map(|(v, n)| (v.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "bytes": st.speed_bytes,
            "failure": st.speed_failure,
            "restarts": st.speed_restarts,
        },
        "cluster": st.cluster,
        "ingest": {
            "events": m.ingest_events.load(Relaxed),
            "requests": m.ingest_requests.load(Relaxed),
            "replays": m.ingest_replays.load(Relaxed),
            "rejected": m.ingest_rejected.load(Relaxed),
            "throttled": m.ingest_throttled.load(Relaxed),
            "failed": m.ingest_failed.load(Relaxed),
            "idempotency_keys": keys,
        },
    });
    json_response(StatusCode::OK, body.to_string())
}

async fn get_metrics<J: Job>(State(s): State<Arc<AppState<J>>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    let st = s.lambda.status();
    let serving = s.lambda.serving();
    let batch_keys = match &serving.batch {
        Some(b) => st.speed_keys.iter().map(|(v, _)| v.clone()).zip(b.table_lens()).collect(),
        None => Vec::new(),
    };
    let g = Gauges {
        speed_lag_events: st.freshness.speed_lag_events,
        speed_events: st.freshness.speed_events,
        speed_bytes: st.speed_bytes,
        batch_version: st.batch.as_ref().map(|b| b.version).unwrap_or(0),
        batch_age_s: st.freshness.batch_age_ms.unwrap_or(0) as f64 / 1e3,
        batch_running: s.batch.progress.lock().unwrap_or_else(|e| e.into_inner()).is_some(),
        log_end: st.log_end,
        log_bytes: st.log_bytes,
        speed_keys: st.speed_keys,
        batch_keys,
    };
    let mut r = s.metrics.render(&g).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the token comparison accepts exactly the token.
    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    // Proves `where` filters parse and apply, and bad ones are named.
    #[test]
    fn where_filter() {
        let w = Where::parse("level<10").expect("parses");
        assert!(w.keeps(&json!({"level": 3})));
        assert!(!w.keeps(&json!({"level": 10})));
        assert!(!w.keeps(&json!({"other": 1})));
        assert!(Where::parse("level>=x").unwrap_err().contains("`x`"));
        assert!(Where::parse("a b<1").is_err());
        assert!(Where::parse("level").is_err());
    }
}
