//! The HTTP API: routes, handlers, authentication, the query cache.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lambdaflow_operators::{Job, Selection};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::committer::{Outcome, Submission};
use super::metrics::Gauges;
use super::AppState;
use crate::append::Encoded;
use crate::error::{Error, ErrorKind};
use crate::lambda::{Lambda, Serving};
use crate::speed::VisibleLatency;

/// Most answers a range query returns.
pub(super) const LIMIT_MAX: usize = 100_000;
/// Most keys one request may ask for (`GET /v1/views/{view}?key=A&key=B...`).
pub(super) const KEYS_MAX: usize = 256;
/// Requests for more keys than this run on the blocking pool, not the async thread: 256
/// keys take about 1 ms, which every other connection of that thread would wait for.
pub(super) const KEYS_INLINE_MAX: usize = 32;
/// Longest a query may wait for `min_frontier`.
pub(super) const WAIT_MAX: Duration = Duration::from_secs(10);
/// Bytes of answers the query cache holds before it is cleared.
const CACHE_BYTES_MAX: usize = 64 << 20;
/// Answers larger than this are not cached.
const CACHE_ENTRY_BYTES_MAX: usize = 1 << 20;
/// Reads waiting for `min_frontier` at once; more get 429.
pub(super) const WAITERS_MAX: usize = 64;
/// Longest a request body may take to arrive.
pub(super) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
        // Outermost first: the Host and Origin checks, then the token, then the route.
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token::<J>))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::<J>))
        .with_state(state)
}

/// Media types `POST /v1/events` accepts (parameters such as `charset` are allowed).
pub(super) const EVENT_MEDIA_TYPES: [&str; 3] = ["application/x-ndjson", "application/json", "text/csv"];

/// Checks every request before routing: the `Host` header must name this service (421
/// otherwise: DNS rebinding), and a write (anything but GET/HEAD) must not come from another
/// site (403: cross-site request forgery from a browser).
async fn guard<J: Job>(State(s): State<Arc<AppState<J>>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = match headers.get(header::HOST).map(|h| h.to_str()) {
        None => None,
        Some(Ok(h)) if host_allowed(h, s.bound.port(), &s.cfg.allow_hosts) => Some(h),
        Some(h) => {
            let shown = h.map(str::to_string).unwrap_or_else(|_| "(not visible ASCII)".into());
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host `{shown}` is not this service: use localhost or an IP address with port {}, or start the service \
                     with --allow-host NAME for a name it is reached by",
                    s.bound.port()
                ),
            )
            .into_response();
        }
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Err(e) = same_origin(headers, host) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Splits a `Host` value into the name (IPv6 without brackets) and the port, if any.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((name, port));
    }
    match host.rsplit_once(':') {
        Some((name, _)) if name.contains(':') => None, // IPv6 needs brackets
        Some((name, port)) => Some((name, Some(port.parse().ok()?))),
        None => Some((host, None)),
    }
}

/// Whether a `Host` header names this service: `localhost` or an IP address (a browser only
/// sends those for a page it loaded from that very address, so they cannot carry a DNS
/// rebinding) with the port the service listens on, or a name given to `--allow-host` (any
/// port).
fn host_allowed(host: &str, port: u16, allow: &[String]) -> bool {
    let Some((name, given)) = split_host(host.trim()) else { return false };
    if name.is_empty() {
        return false;
    }
    if allow.iter().any(|a| a.eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(host.trim())) {
        return true;
    }
    let local = name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
    local && given.unwrap_or(80) == port
}

/// Refuses a write that a browser sent from another site: an `Origin` that is not this
/// service's own (`http(s)://` plus the `Host` header), or `Sec-Fetch-Site: cross-site`.
/// Requests without either header (curl, scripts, the test clients) are not browsers'.
fn same_origin(headers: &HeaderMap, host: Option<&str>) -> ApiResult<()> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        let ours = matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()));
        if !ours {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!(
                    "Origin `{origin}` is not this service's origin (http://{}): writes from another site are refused",
                    host.unwrap_or("?")
                ),
            ));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes().eq_ignore_ascii_case(b"cross-site") {
            return Err(error(StatusCode::FORBIDDEN, "Sec-Fetch-Site is `cross-site`: writes from another site are refused"));
        }
    }
    Ok(())
}

/// Whether a `Content-Type` is one `POST /v1/events` reads.
fn event_media_type(value: Option<&HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else { return false };
    let media = v.split(';').next().unwrap_or("").trim();
    EVENT_MEDIA_TYPES.iter().any(|t| t.eq_ignore_ascii_case(media))
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer: a status and a JSON object `{"error": "...", ...}`, perhaps with a
/// `Retry-After` or `WWW-Authenticate` header. Handlers return `Result<Response, ApiError>`;
/// engine errors convert with `?` ([`From<Error>`] maps their kinds to statuses).
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    body: Value,
    retry_after: bool,
    www_authenticate: bool,
}

/// What handlers return.
type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, body: json!({ "error": message.into() }), retry_after: false, www_authenticate: false }
    }

    /// The status this kind of engine error answers with (one place for all of them).
    fn status_of(kind: ErrorKind) -> StatusCode {
        match kind {
            ErrorKind::Usage | ErrorKind::BadInput => StatusCode::BAD_REQUEST,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Corruption | ErrorKind::Io | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::BadInput { line, error: mut fe } => {
                fe.message = without_inner_line(&fe.message);
                ApiError {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({
                        "error": format!("line {line}: {fe}; nothing of this request was stored"),
                        "line": line,
                        "field": fe.field,
                        "value": fe.value,
                        "message": fe.message,
                    }),
                    retry_after: false,
                    www_authenticate: false,
                }
            }
            e => ApiError::new(ApiError::status_of(e.kind()), e.to_string()),
        }
    }
}

/// A JSON parser's message about one line says "at line 1 column 9" (the line as its own
/// document): keep the column only, so the only line number is the body's (`line N:`).
fn without_inner_line(message: &str) -> String {
    if let Some(i) = message.rfind(" at line ") {
        if let Some((l, c)) = message[i + " at line ".len()..].split_once(" column ") {
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            if digits(l) && digits(c) {
                return format!("{} at column {c}", &message[..i]);
            }
        }
    }
    message.to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(self.status, self.body.to_string());
        if self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.www_authenticate {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

fn too_many(message: String) -> ApiError {
    ApiError { retry_after: true, ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message) }
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// Checks the bearer token before anything else about the request is looked at (path,
/// parameters, media type, body): every route but the static dashboard page needs it when a
/// token is configured, reads (GET/HEAD) only without `--public-reads`.
async fn require_token<J: Job>(State(s): State<Arc<AppState<J>>>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if !write && req.uri().path() == "/" {
        return next.run(req).await;
    }
    match authorize(&s, req.headers(), write) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `Ok` if the request may proceed: no token configured, a read with public reads, or the
/// right bearer token.
fn authorize<J: Job>(s: &AppState<J>, headers: &HeaderMap, write: bool) -> ApiResult<()> {
    let Some(token) = &s.cfg.token else { return Ok(()) };
    if !write && s.cfg.public_reads {
        return Ok(());
    }
    // The scheme is case-insensitive (RFC 7235); one space separates it from the token.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            s.metrics.auth_refused.fetch_add(1, Relaxed);
            let message = "this endpoint needs `Authorization: Bearer <token>` (the token given to --token-file)";
            Err(ApiError { www_authenticate: true, ..ApiError::new(StatusCode::UNAUTHORIZED, message) })
        }
    }
}

async fn dashboard<J: Job>(State(s): State<Arc<AppState<J>>>) -> Response {
    let mut r = Html(s.dashboard).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn post_events<J: Job>(State(s): State<Arc<AppState<J>>>, headers: HeaderMap, body: Body) -> ApiResult {
    let received = Instant::now();
    let rejected = |r: ApiError| {
        s.metrics.ingest_rejected.fetch_add(1, Relaxed);
        r
    };
    if !event_media_type(headers.get(header::CONTENT_TYPE)) {
        let what = match headers.get(header::CONTENT_TYPE) {
            Some(v) => format!("Content-Type `{}` is not accepted", String::from_utf8_lossy(v.as_bytes())),
            None => "the request has no Content-Type".to_string(),
        };
        let msg = format!("{what}; send {} (parameters such as charset=utf-8 are fine)", EVENT_MEDIA_TYPES.join(", "));
        return Err(rejected(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg)));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().map_err(|_| "Idempotency-Key must be visible ASCII".to_string()).and_then(|k| {
            crate::keys::validate_key(k)?;
            Ok(k.to_string())
        }) {
            Ok(k) => Some(k),
            Err(e) => return Err(rejected(error(StatusCode::BAD_REQUEST, e))),
        },
    };
    let max = s.cfg.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        return Err(rejected(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is {n} bytes; the limit is {max} (--max-body); for a larger file use `lambdaflow ingest --server URL FILE`"
            ),
        )));
    }
    // Backpressure 1: the speed layer is too far behind the log.
    let lag = {
        let serving = s.lambda.serving();
        let frontier = serving.speed.frontier();
        s.lambda.log().end_offsets().iter().zip(&frontier).map(|(e, f)| e.saturating_sub(*f)).sum::<u64>()
    };
    if lag > s.cfg.max_lag_events {
        s.metrics.ingest_throttled.fetch_add(1, Relaxed);
        return Err(too_many(format!(
            "the speed layer is {lag} events behind the log (limit {}); retry after a second",
            s.cfg.max_lag_events
        )));
    }
    // Backpressure 2: bytes in flight are bounded; they are reserved as they arrive (so a
    // client that declares a large body and stalls holds only what it sent).
    let (bytes, permit) = match read_body(&s, body, max).await {
        Ok(b) => b,
        Err((throttled, r)) => {
            if throttled {
                s.metrics.ingest_throttled.fetch_add(1, Relaxed);
                return Err(r);
            }
            return Err(rejected(r));
        }
    };
    let partitions = s.lambda.log().partitions();
    let hash = key.as_ref().map(|_| crate::keys::body_hash(&bytes));
    // On the ingest lane: parsing is on the way to the ack, so it runs at the process's
    // priority, not behind queries.
    let parsed = super::on_lane(&s.lane, move || -> crate::Result<Encoded> {
        let events: Vec<J::Event> = crate::input::parse_all(&mut &bytes[..])?;
        Encoded::of(&events, partitions)
    })
    .await;
    let encoded = match parsed {
        Ok(Ok(e)) if !e.is_empty() => e,
        Ok(Ok(_)) => {
            // No events (an empty body, blank lines, a CSV header alone): like `ingest` of
            // empty input, nothing to store and nothing refused. The key is not recorded.
            s.metrics.ingest_requests.fetch_add(1, Relaxed);
            let ack = super::committer::Ack { accepted: 0, positions: Vec::new(), duplicate: false };
            return Ok(json_response(StatusCode::OK, serde_json::to_string(&ack).unwrap_or_default()));
        }
        Ok(Err(e)) => return Err(rejected(ApiError::from(e))),
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("parsing the request failed: {e}"))),
    };
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let submission = Submission { key: key.zip(hash), encoded, received, reply, permit };
    let sent = match s.committer.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(tx) => tx.send(submission).is_ok(),
        None => false,
    };
    if !sent {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the service is shutting down; nothing of this request was stored"));
    }
    match outcome.await {
        Ok(Outcome::Ok(ack)) => Ok(json_response(StatusCode::OK, serde_json::to_string(&ack).unwrap_or_default())),
        Ok(Outcome::KeyConflict(msg)) => Err(rejected(error(StatusCode::UNPROCESSABLE_ENTITY, msg))),
        Ok(Outcome::Failed(msg)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, msg)),
        Err(_) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "the committer stopped before answering; retry with the same Idempotency-Key"))
        }
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
) -> Result<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>), (bool, ApiError)> {
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

async fn list_views<J: Job>(State(s): State<Arc<AppState<J>>>) -> ApiResult {
    let views: Vec<Value> =
        s.lambda.views().into_iter().map(|v| json!({ "name": v.name, "kind": v.kind, "key": v.key, "value": v.value })).collect();
    Ok(json_response(StatusCode::OK, json!({ "job": s.lambda.job().name(), "views": views }).to_string()))
}

/// What a cached answer was asked: the view, and the key or the range parameters.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    view: String,
    key: Option<String>,
    from: Option<String>,
    after: Option<String>,
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
/// every handover invalidates it. Sharded by the key's hash, so concurrent queries on
/// different keys do not queue on one lock.
pub(super) struct Cache {
    shards: Vec<Mutex<(HashMap<CacheKey, Cached>, usize)>>,
    hasher: std::collections::hash_map::RandomState,
}

/// Shards of the query cache, each holding at most its share of [`CACHE_BYTES_MAX`].
const CACHE_SHARDS: usize = 16;

impl Default for Cache {
    fn default() -> Self {
        Cache { shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(), hasher: Default::default() }
    }
}

fn cached_bytes(c: &Cached) -> usize {
    c.body.as_ref().map_or(0, |b| b.len()) + 64
}

impl Cache {
    /// The cached answer, if it was computed at this serving pair and frontier; a stale
    /// entry is dropped.
    fn get(&self, key: &CacheKey, serving: u64, frontier: &[u64]) -> Option<Option<Arc<str>>> {
        let mut guard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
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

    fn shard(&self, key: &CacheKey) -> &Mutex<(HashMap<CacheKey, Cached>, usize)> {
        use std::hash::BuildHasher;
        &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()]
    }

    /// Caches an answer; the cache holds at most [`CACHE_BYTES_MAX`] (each shard its share)
    /// and a full shard starts over.
    fn put(&self, key: CacheKey, c: Cached) {
        let size = cached_bytes(&c);
        if size > CACHE_ENTRY_BYTES_MAX {
            return;
        }
        let mut guard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let (map, bytes) = &mut *guard;
        if *bytes + size > CACHE_BYTES_MAX / CACHE_SHARDS {
            map.clear();
            *bytes = 0;
        }
        if let Some(old) = map.insert(key, c) {
            *bytes -= cached_bytes(&old);
        }
        *bytes += size;
    }
}

/// A `where` threshold: integers compare exactly as integers; a float compares as a float.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Threshold {
    /// An integer, within `i64::MIN..=u64::MAX` (what a JSON field can hold exactly).
    Int(i128),
    /// A finite number with a fraction or an exponent.
    Float(f64),
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Int(i) => write!(f, "{i}"),
            Threshold::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// The order of an integer and a finite float, exactly (no rounding of either).
fn cmp_int_float(i: i128, f: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    const TWO_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    if f >= TWO_127 {
        return Ordering::Less;
    }
    if f < -TWO_127 {
        return Ordering::Greater;
    }
    // Within ±2^127 the integer part of a float is exact as an i128.
    let whole = f.trunc();
    match i.cmp(&(whole as i128)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal),
        other => other,
    }
}

/// A numeric filter on a value field: `field<10`, `field>=3`, ...
#[derive(Debug)]
struct Where {
    field: String,
    op: &'static str,
    value: Threshold,
}

impl Where {
    fn parse(s: &str) -> Result<Where, String> {
        for op in ["<=", ">=", "!=", "<", ">", "="] {
            if let Some((f, v)) = s.split_once(op) {
                let value = Where::threshold(v.trim())?;
                let field = f.trim();
                if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("where: `{field}` is not a field name"));
                }
                return Ok(Where { field: field.to_string(), op, value });
            }
        }
        Err(format!("where: `{s}` is not FIELD<N, FIELD>N, FIELD<=N, FIELD>=N, FIELD=N or FIELD!=N"))
    }

    fn threshold(v: &str) -> Result<Threshold, String> {
        let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return match v.parse::<i128>() {
                Ok(i) if (i64::MIN as i128..=u64::MAX as i128).contains(&i) => Ok(Threshold::Int(i)),
                _ => Err(format!("where: `{v}` is outside the integer range {}..={}", i64::MIN, u64::MAX)),
            };
        }
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && v.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => Ok(Threshold::Float(x)),
            _ => Err(format!("where: `{v}` is not a number")),
        }
    }

    fn keeps(&self, value: &Value) -> bool {
        use std::cmp::Ordering;
        let Some(Value::Number(n)) = value.get(&self.field) else { return false };
        let field = match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Threshold::Int(i128::from(i)),
            (_, Some(u), _) => Threshold::Int(i128::from(u)),
            (_, _, Some(x)) if x.is_finite() => Threshold::Float(x),
            _ => return false,
        };
        let order = match (field, self.value) {
            (Threshold::Int(a), Threshold::Int(b)) => a.cmp(&b),
            (Threshold::Int(a), Threshold::Float(b)) => cmp_int_float(a, b),
            (Threshold::Float(a), Threshold::Int(b)) => cmp_int_float(b, a).reverse(),
            (Threshold::Float(a), Threshold::Float(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
        };
        match self.op {
            "<" => order == Ordering::Less,
            "<=" => order != Ordering::Greater,
            ">" => order == Ordering::Greater,
            ">=" => order != Ordering::Less,
            "=" => order == Ordering::Equal,
            _ => order != Ordering::Equal,
        }
    }
}

/// Checks the view exists in `serving` (404 naming the views otherwise).
fn check_view<J: Job>(lambda: &Lambda<J>, serving: &Serving, view: &str) -> ApiResult<()> {
    if serving.speed.views().iter().any(|v| v.info().name == view) {
        return Ok(());
    }
    let names: Vec<String> = lambda.views().into_iter().map(|v| v.name).collect();
    Err(error(StatusCode::NOT_FOUND, format!("no view named `{view}`; the views are: {}", names.join(", "))))
}

/// Waits (off the async threads) until the speed layer covers `offsets`.
async fn wait_visible<J: Job>(s: &AppState<J>, offsets: Vec<u64>, timeout: Duration) -> ApiResult<bool> {
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
    // On the ingest lane: the wake-up after a publication must not queue behind queries.
    let waited = super::on_lane(&s.lane, move || -> crate::Result<bool> {
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
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Keys a range query with `where` merges per page.
const FILTER_PAGE: usize = 4096;
/// Keys one range request examines at most; past them it answers what it found with a cursor.
pub(super) const SCAN_MAX: usize = 1_000_000;

/// A range query: `[from, to]` or `(after, to]`, at most `limit` answers that pass a filter.
struct RangeQuery {
    from: Option<String>,
    after: Option<String>,
    to: Option<String>,
    limit: usize,
}

/// What a range query found: answers in key order, all at one speed frontier, and the
/// cursor to continue after them when there are more.
struct RangePage {
    items: Vec<lambdaflow_operators::Answer>,
    next: Option<String>,
    freshness: crate::lambda::Freshness,
}

/// The cursor for "after this key": the key's JSON text, which every view key parses.
fn cursor_of(key: &Value) -> String {
    key.to_string()
}

impl RangeQuery {
    /// Merges the range in pages until `limit` answers pass the filter (and one more shows
    /// that others follow), the range ends, [`SCAN_MAX`] keys were examined, or the speed
    /// layer moved on between pages (the answer keeps to one frontier; the cursor goes on).
    fn run<J: Job>(self, lambda: &Lambda<J>, serving: &Serving, view: &str, filter: Option<&Where>) -> crate::Result<RangePage> {
        // The key to skip: `after` itself, then each page's last key (pages overlap by one).
        let mut skip: Option<Value> = None;
        let mut lower = self.from;
        if let Some(after) = self.after {
            let point = lambda.query_on(serving, view, &Selection::Key(after.clone()))?;
            skip = point.answers.into_iter().next().map(|a| a.key);
            lower = Some(after);
        }
        let page = if filter.is_some() { FILTER_PAGE } else { self.limit + 1 };
        let mut items: Vec<lambdaflow_operators::Answer> = Vec::new();
        let mut scanned = 0usize;
        let mut frontier: Option<crate::lambda::Freshness> = None;
        loop {
            let asked = page + usize::from(skip.is_some());
            let result = lambda.query_on(serving, view, &Selection::Range { from: lower.clone(), to: self.to.clone(), limit: asked })?;
            match &frontier {
                Some(f) if f.speed_frontier != result.freshness.speed_frontier => {
                    // The speed layer published between pages: stop at what the first
                    // frontier answered; the cursor continues from there.
                    let next = items.last().map(|a| cursor_of(&a.key)).or_else(|| skip.as_ref().map(cursor_of));
                    return Ok(RangePage { items, next, freshness: frontier.expect("set") });
                }
                Some(_) => {}
                None => frontier = Some(result.freshness.clone()),
            }
            let got = result.answers.len();
            let mut last: Option<Value> = None;
            for a in result.answers {
                if skip.as_ref() == Some(&a.key) {
                    continue;
                }
                scanned += 1;
                last = Some(a.key.clone());
                if a.error.is_some() || filter.is_none_or(|w| w.keeps(&a.value)) {
                    if items.len() == self.limit {
                        let next = items.last().map(|a| cursor_of(&a.key));
                        return Ok(RangePage { items, next, freshness: frontier.expect("set") });
                    }
                    items.push(a);
                }
            }
            let freshness = frontier.clone().expect("set");
            let Some(last) = last.filter(|_| got == asked) else {
                return Ok(RangePage { items, next: None, freshness }); // the range ended
            };
            if scanned >= SCAN_MAX {
                return Ok(RangePage { items, next: Some(cursor_of(&last)), freshness });
            }
            lower = Some(cursor_of(&last));
            skip = Some(last);
        }
    }
}

/// Parsed query parameters shared by point and range queries.
struct Params {
    from: Option<String>,
    /// The cursor: answers strictly after this key.
    after: Option<String>,
    to: Option<String>,
    limit: usize,
    filter: Option<Where>,
    min_frontier: Option<Vec<u64>>,
    timeout: Duration,
    /// Keys asked for by `key=` (several point queries in one request), in order.
    keys: Vec<String>,
}

fn parse_params(params: Vec<(String, String)>, partitions: usize, range: bool) -> ApiResult<Params> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let mut p = Params {
        from: None,
        after: None,
        to: None,
        limit: 1000,
        filter: None,
        min_frontier: None,
        timeout: Duration::from_secs(5),
        keys: Vec::new(),
    };
    let mut range_given: Option<String> = None;
    for (k, v) in params {
        if range && matches!(k.as_str(), "from" | "after" | "to" | "limit" | "where") {
            range_given.get_or_insert_with(|| k.clone());
        }
        match k.as_str() {
            "key" if range => {
                if p.keys.len() == KEYS_MAX {
                    return Err(bad(format!("at most {KEYS_MAX} keys per request (key=); split the keys over several requests")));
                }
                p.keys.push(v)
            }
            "from" if range => p.from = Some(v),
            "after" if range => p.after = Some(v),
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
                let allowed =
                    if range { "key, from, after, to, limit, where, min_frontier, timeout_ms" } else { "min_frontier, timeout_ms" };
                return Err(bad(format!("unknown query parameter `{other}`; this endpoint takes {allowed}")));
            }
        }
    }
    if p.from.is_some() && p.after.is_some() {
        return Err(bad("give from or after (the cursor of a previous answer), not both".into()));
    }
    if let (Some(r), false) = (range_given, p.keys.is_empty()) {
        return Err(bad(format!("key= asks for keys and {r}= for a range: give one or the other")));
    }
    Ok(p)
}

async fn get_range<J: Job>(
    State(s): State<Arc<AppState<J>>>,
    view: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    match (view, params) {
        (Ok(Path(view)), Ok(Query(params))) => answer(s, view, None, params).await,
        (Err(e), _) => Err(error(StatusCode::BAD_REQUEST, format!("bad path: {e}"))),
        (_, Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("bad query string: {e}"))),
    }
}

async fn get_key<J: Job>(
    State(s): State<Arc<AppState<J>>>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    match (path, params) {
        (Ok(Path((view, key))), Ok(Query(params))) => answer(s, view, Some(key), params).await,
        (Err(e), _) => Err(error(StatusCode::BAD_REQUEST, format!("bad path: {e}"))),
        (_, Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("bad query string: {e}"))),
    }
}

async fn answer<J: Job>(s: Arc<AppState<J>>, view: String, key: Option<String>, params: Vec<(String, String)>) -> ApiResult {
    let t = Instant::now();
    let serving: Arc<Serving> = s.lambda.serving();
    check_view(&s.lambda, &serving, &view)?;
    let mut p = parse_params(params, s.lambda.log().partitions() as usize, key.is_none())?;
    let serving = match p.min_frontier.clone() {
        Some(offsets) => {
            if !wait_visible(&s, offsets, p.timeout).await? {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the speed layer did not reach min_frontier within {} ms", p.timeout.as_millis()),
                ));
            }
            // A handover may have replaced the pair meanwhile.
            s.lambda.serving()
        }
        None => serving,
    };
    if key.is_none() && p.keys.len() > KEYS_INLINE_MAX {
        s.metrics.keys_offloaded.fetch_add(1, Relaxed);
        let keys = std::mem::take(&mut p.keys);
        return tokio::task::spawn_blocking(move || answer_keys(&s, &serving, &view, &keys, t))
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("query failed: {e}")))?;
    }
    if key.is_none() && !p.keys.is_empty() {
        return answer_keys(&s, &serving, &view, &p.keys, t);
    }
    let (body, freshness) = match &key {
        Some(k) => {
            // A point query is a few microseconds, on the async thread, and not cached: a
            // cache entry lives until the next publication (every few ms under ingest), so
            // looking it up and storing it cost more than the query (a random key is
            // rarely asked twice in between).
            let result = s.lambda.query_on(&serving, &view, &Selection::Key(k.clone()))?;
            let body = result.answers.first().map(|a| Arc::from(serde_json::to_string(a).unwrap_or_default()));
            (body, result.freshness)
        }
        None => {
            let cache_key = CacheKey {
                view: view.clone(),
                key: None,
                from: p.from.clone(),
                after: p.after.clone(),
                to: p.to.clone(),
                limit: p.limit,
                filter: p.filter.as_ref().map(|w| format!("{}{}{}", w.field, w.op, w.value)),
            };
            let (frontier, updated_ms) = serving.speed.with_state(|st| (st.frontier.clone(), st.updated_ms));
            match s.cache.get(&cache_key, serving.id, &frontier) {
                Some(body) => {
                    s.metrics.cache_hits.fetch_add(1, Relaxed);
                    (body, s.lambda.freshness(&serving, frontier, updated_ms))
                }
                None => {
                    // A range may merge many keys: off the async threads, in pages.
                    let serving_id = serving.id;
                    let (lambda, serving, view) = (s.lambda.clone(), serving.clone(), view.clone());
                    let range = RangeQuery { from: p.from.clone(), after: p.after.clone(), to: p.to.clone(), limit: p.limit };
                    let filter = p.filter.take();
                    let page = tokio::task::spawn_blocking(move || range.run(&lambda, &serving, &view, filter.as_ref()))
                        .await
                        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("query failed: {e}")))??;
                    let next = page.next.as_ref().map_or(Value::Null, |n| Value::String(n.clone()));
                    let body: Option<Arc<str>> = Some(Arc::from(format!(
                        "\"items\":{},\"more\":{},\"next\":{next}",
                        serde_json::to_string(&page.items).unwrap_or_default(),
                        page.next.is_some()
                    )));
                    let cached = Cached { serving: serving_id, frontier: page.freshness.speed_frontier.clone(), body: body.clone() };
                    s.cache.put(cache_key, cached);
                    (body, page.freshness)
                }
            }
        }
    };
    let fresh = serde_json::to_string(&freshness).unwrap_or_default();
    let view_json = Value::String(view).to_string();
    let response = match (key, body) {
        (None, Some(items)) => json_response(StatusCode::OK, format!("{{\"view\":{view_json},{items},\"freshness\":{fresh}}}")),
        (Some(_), Some(answer)) if answer_error(&answer).is_some() => {
            let (key, e) = answer_error(&answer).unwrap_or_default();
            json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": e, "key": key, "freshness": freshness }).to_string())
        }
        (Some(_), Some(answer)) => {
            // `answer` is an object `{"key":..,...}`: splice the view and freshness in.
            let rest = answer.strip_prefix('{').unwrap_or(&answer);
            json_response(StatusCode::OK, format!("{{\"view\":{view_json},\"freshness\":{fresh},{rest}"))
        }
        (Some(k), None) => json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("view {view_json} has no key `{k}` (no events for it yet)"), "freshness": freshness }).to_string(),
        ),
        (None, None) => json_response(
            StatusCode::OK,
            format!("{{\"view\":{view_json},\"items\":[],\"more\":false,\"next\":null,\"freshness\":{fresh}}}"),
        ),
    };
    s.metrics.queries.fetch_add(1, Relaxed);
    s.metrics.query_latency.observe(t.elapsed());
    Ok(response)
}

/// Several point queries in one request (`?key=A&key=B`): per key, in the order asked, what
/// the single-key query answers without `view` and `freshness` (given once for all, since
/// every key is merged at one speed frontier). A key without events is an entry
/// `{"key", "error", "status": 404}`, a key in error `{"key", "error", "status": 500}`; a key
/// that does not parse makes the request a `400` naming it.
fn answer_keys<J: Job>(s: &AppState<J>, serving: &Serving, view: &str, keys: &[String], t: Instant) -> ApiResult {
    let (answers, freshness) = s.lambda.query_keys_on(serving, view, keys)?;
    let view_json = Value::String(view.to_string()).to_string();
    let fresh = serde_json::to_string(&freshness).unwrap_or_default();
    let mut out = String::with_capacity(view_json.len() + fresh.len() + 64 + keys.len() * 160);
    out.push_str("{\"view\":");
    out.push_str(&view_json);
    out.push_str(",\"freshness\":");
    out.push_str(&fresh);
    out.push_str(",\"answers\":[");
    for (n, (k, a)) in keys.iter().zip(answers).enumerate() {
        if n > 0 {
            out.push(',');
        }
        match a {
            Err(e) => {
                let message = format!("key {} of {} (`{k}`): {e}", n + 1, keys.len());
                return Err(ApiError { body: json!({ "error": message, "key": k }), ..error(StatusCode::BAD_REQUEST, "") });
            }
            Ok(Some(answer)) => match &answer.error {
                // Error entries carry the key as the request gave it (a 404 has no other).
                Some(e) => out.push_str(&json!({ "key": k, "error": e, "status": 500 }).to_string()),
                None => out.push_str(&serde_json::to_string(&answer).unwrap_or_default()),
            },
            Ok(None) => {
                let e = format!("view {view_json} has no key `{k}` (no events for it yet)");
                out.push_str(&json!({ "key": k, "error": e, "status": 404 }).to_string());
            }
        }
    }
    out.push_str("]}");
    s.metrics.queries.fetch_add(1, Relaxed);
    s.metrics.query_latency.observe(t.elapsed());
    Ok(json_response(StatusCode::OK, out))
}

async fn post_batch<J: Job>(State(s): State<Arc<AppState<J>>>) -> ApiResult {
    let running = s.batch.progress.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    let queued = s.batch.request();
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({
            "queued": queued,
            "running": running,
            "message": if running { "a batch run is in progress; another starts when it ends" } else { "a batch run starts now" },
            "status": "/v1/status",
        })
        .to_string(),
    ))
}

fn batch_run_json<J: Job>(s: &AppState<J>) -> Value {
    let progress = s.batch.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last = s.batch.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let next = s.batch.next_ms.load(Relaxed);
    json!({
        "running": progress.as_ref().map(|p| json!({ "done": p.done.load(Relaxed), "total": p.total.load(Relaxed) })),
        "last": last,
        "next_ms": if next == 0 { Value::Null } else { json!(next) },
        "schedule": s.cfg.schedule.to_string(),
        "ok": s.metrics.batch_ok.load(Relaxed),
        "failed": s.metrics.batch_failed.load(Relaxed),
    })
}

async fn get_status<J: Job>(State(s): State<Arc<AppState<J>>>) -> ApiResult {
    let st = s.lambda.status();
    let keys = s.metrics.idempotency_keys.load(Relaxed);
    let m = &s.metrics;
    let body = json!({
        "job": st.job,
        "job_version": st.job_version,
        "uptime_s": s.started.elapsed().as_secs(),
        "max_body_bytes": s.cfg.max_body_bytes,
        "log": { "events": st.log_end.iter().sum::<u64>(), "end": st.log_end, "bytes": st.log_bytes },
        "batch": st.batch,
        "batch_run": batch_run_json(&s),
        "freshness": st.freshness,
        "speed": {
            "keys": st.speed_keys.iter().map(|(v, n)| (v.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "bytes": st.speed_bytes,
            "failure": st.speed_failure,
            "restarts": st.speed_restarts,
            "publications": st.speed_publications,
            "snapshot_copies": st.speed_snapshot_copies,
            "events_read": st.speed_events_read,
            // The job's own speed-layer counters (e.g. `interval_join.NAME.second_rows`).
            "counters": st.speed_counters.iter().map(|(name, n)| (name.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "visible_latency": {
                "count": st.speed_visible_counts.iter().sum::<u64>(),
                "p50_ms": VisibleLatency::quantile_ms(&st.speed_visible_counts, 0.5),
                "p99_ms": VisibleLatency::quantile_ms(&st.speed_visible_counts, 0.99),
                "max_ms": st.speed_visible_max_ms,
                "buckets": st.speed_visible_counts,
            },
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
        "kafka": crate::connect::current().map(|k| k.to_json()),
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

async fn get_metrics<J: Job>(State(s): State<Arc<AppState<J>>>) -> ApiResult {
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
        speed_publications: st.speed_publications,
        speed_snapshot_copies: st.speed_snapshot_copies,
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
    Ok(r)
}

/// The key and error of a point answer in error (its records did not merge to one value),
/// from its JSON.
fn answer_error(answer: &str) -> Option<(Value, String)> {
    if !answer.contains("\"error\":") {
        return None;
    }
    let v: Value = serde_json::from_str(answer).ok()?;
    Some((v.get("key")?.clone(), v.get("error")?.as_str()?.to_string()))
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

    // Proves engine errors answer with the status of their kind (Usage and BadInput 400,
    // Unavailable 503, Corruption/Io/Internal 500) in the JSON error shape, and bad input
    // keeps its line, field and value.
    #[test]
    fn engine_errors_map_to_statuses_by_kind() {
        let cases = [
            (Error::Usage("bad key".into()), 400),
            (Error::Unavailable("ingest is stopped".into()), 503),
            (Error::Inconsistent("damaged".into()), 500),
            (Error::io("/x", "read")(std::io::Error::other("boom")), 500),
            (Error::Internal("bug".into()), 500),
        ];
        for (e, status) in cases {
            let message = e.to_string();
            let r = ApiError::from(e).into_response();
            assert_eq!(r.status().as_u16(), status, "{message}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        }
        let fe = lambdaflow_operators::FieldError::field("amount_cents", "12x", "not an integer");
        let e = ApiError::from(Error::BadInput { line: 2, error: fe });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["line"], 2);
        assert_eq!(e.body["field"], "amount_cents");
        assert_eq!(e.body["value"], "12x");
        assert!(e.body["error"].as_str().is_some_and(|m| m.starts_with("line 2: ")), "{}", e.body);
        // A JSON parser's own "line 1" does not contradict the body's line number.
        let fe = lambdaflow_operators::FieldError::line("not valid JSON: EOF while parsing an object at line 1 column 8");
        let e = ApiError::from(Error::BadInput { line: 4, error: fe });
        let text = e.body["error"].as_str().expect("error").to_string();
        assert_eq!(text.matches("line").count(), 1, "{text}");
        assert!(text.starts_with("line 4: ") && text.contains("at column 8"), "{text}");
        assert_eq!(e.body["message"], "not valid JSON: EOF while parsing an object at column 8");
        assert_eq!(without_inner_line("a value at line 3 of the file"), "a value at line 3 of the file");
        let r = too_many("slow down".into()).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    // Proves which Host headers name the service: localhost and IP literals with its port,
    // allow-listed names with any port (or exactly as listed), nothing else.
    #[test]
    fn host_header_check() {
        let allow = vec!["lf.example".to_string(), "proxy.example:8443".to_string()];
        for ok in [
            "localhost:7070",
            "LocalHost:7070",
            "127.0.0.1:7070",
            "[::1]:7070",
            "10.1.2.3:7070",
            "lf.example",
            "lf.example:1",
            "proxy.example:8443",
        ] {
            assert!(host_allowed(ok, 7070, &allow), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "localhost",
            "localhost:7071",
            "127.0.0.1",
            "[::1]",
            "::1:7070",
            "lf.example.evil",
            "proxy.example",
            "",
            ":7070",
            "localhost:x",
        ] {
            assert!(!host_allowed(bad, 7070, &allow), "{bad}");
        }
        assert!(host_allowed("localhost", 80, &[]), "no port means 80");
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

    // Proves integers compare as integers: no rounding through f64 at 2^53 or at the ends
    // of the i64/u64 range, floats still compare (exactly against integers), and thresholds
    // beyond what a JSON integer can hold are refused with the value named.
    #[test]
    fn where_compares_integers_exactly() {
        let keeps = |w: &str, v: Value| Where::parse(w).expect("parses").keeps(&json!({ "level": v }));
        let big = 9_007_199_254_740_993i64; // 2^53 + 1: not an f64
        assert!(!keeps("level=9007199254740992", json!(big)));
        assert!(keeps("level>9007199254740992", json!(big)));
        assert!(keeps("level!=9007199254740992", json!(big)));
        assert!(keeps("level=9007199254740993", json!(big)));
        assert!(!keeps("level<9007199254740993", json!(big)));
        assert!(keeps("level<=-9223372036854775808", json!(i64::MIN)));
        assert!(!keeps("level<-9223372036854775807", json!(i64::MIN + 1)));
        assert!(keeps("level>18446744073709551614", json!(u64::MAX)));
        assert!(keeps("level>9223372036854775807", json!(u64::MAX)));
        assert!(!keeps("level<=-1", json!(u64::MAX)));
        // Floats: in the field, in the threshold, or both.
        assert!(keeps("level<2.5", json!(2)));
        assert!(!keeps("level<2.5", json!(3)));
        assert!(keeps("level>9007199254740992.0", json!(big)), "2^53+1 > 2^53 exactly");
        assert!(!keeps("level=9007199254740992.0", json!(big)));
        assert!(keeps("level>2", json!(2.5)));
        assert!(keeps("level<3", json!(2.5)));
        assert!(keeps("level=2", json!(2.0)));
        assert!(keeps("level<1e3", json!(999.5)));
        assert!(!keeps("level<1e3", json!("5")), "a string is not a number");
        assert!(cmp_int_float(i128::MAX, 1e300) == std::cmp::Ordering::Less);
        assert!(cmp_int_float(-1, -0.5) == std::cmp::Ordering::Less);
        for v in ["-9223372036854775809", "18446744073709551616", "99999999999999999999999999999999999999999"] {
            let e = Where::parse(&format!("level<={v}")).unwrap_err();
            assert!(e.contains(v) && e.contains("outside the integer range"), "{e}");
        }
        for v in ["1e400", "NaN", "inf", "-infinity", "0x10", "", "+"] {
            assert!(Where::parse(&format!("level<{v}")).is_err(), "{v}");
        }
    }
}
