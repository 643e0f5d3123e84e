//! The HTTP server's connections: the accept loop, a deadline for request heads, and bounds
//! on open connections (in all, and per peer address) that leave file descriptors for the
//! log, batch runs and the speed layer.
//!
//! A client that opens connections and sends half a request line (slowloris) holds each for
//! at most the header timeout; beyond the bounds a new connection gets a short refusal (503
//! when the service is full, 429 when that peer holds its share), after its request head is
//! read (briefly and bounded), and is closed.
//!
//! A client that asks for a large answer and does not read it holds its connection (and the
//! answer, built in memory) for at most the write timeout: a write that gets no byte accepted
//! for that long fails, and the connection is closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::metrics::Metrics;

/// File descriptors kept free of connections whatever the limit: the log's segments, the
/// idempotency journal, batch-run files, worker pipes and sockets.
pub(crate) const FD_RESERVE_MIN: u64 = 64;

/// The most connections when the open-files limit cannot be read (no `/proc`, not Linux):
/// small enough for the smallest common default soft limit (256 on macOS) to keep half of it
/// for the data directory.
pub(crate) const CAP_LIMIT_UNKNOWN: usize = 128;

/// The soft limit on open files of this process (`RLIMIT_NOFILE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileLimit {
    /// This many.
    Max(u64),
    /// No limit.
    Unlimited,
    /// It could not be read.
    Unknown,
}

/// The open-files limit, from `/proc/self/limits`.
pub(crate) fn open_files_limit() -> FileLimit {
    match std::fs::read_to_string("/proc/self/limits") {
        Ok(text) => parse_open_files_limit(&text),
        Err(_) => FileLimit::Unknown,
    }
}

fn parse_open_files_limit(limits: &str) -> FileLimit {
    let field =
        limits.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l["Max open files".len()..].split_whitespace().next());
    match field {
        Some("unlimited") => FileLimit::Unlimited,
        Some(n) => n.parse().map_or(FileLimit::Unknown, FileLimit::Max),
        None => FileLimit::Unknown,
    }
}

/// The most connections the service holds with `limit` open files: half of them, less
/// [`FD_RESERVE_MIN`], so the other half is always there for the data directory (at least 8,
/// at most 16,384); [`CAP_LIMIT_UNKNOWN`] when the limit is unknown.
pub(crate) fn connection_cap(limit: FileLimit) -> usize {
    match limit {
        FileLimit::Unlimited => 16_384,
        FileLimit::Unknown => CAP_LIMIT_UNKNOWN,
        FileLimit::Max(n) => (n / 2).saturating_sub(FD_RESERVE_MIN).clamp(8, 16_384) as usize,
    }
}

/// What a peer's connections are counted under: its IPv4 address (also when it comes mapped
/// into IPv6, `::ffff:a.b.c.d`), or its IPv6 address's /64 prefix. One IPv6 host is usually
/// given a whole /64 and can pick any address in it, so counting full IPv6 addresses would
/// give it as many shares as it likes.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

/// Open connections, in all and per peer (see [`peer_key`]).
#[derive(Default)]
pub(crate) struct Tracker {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The service holds its maximum of connections.
    Full(usize),
    /// This peer holds its maximum.
    Peer(usize),
}

/// A connection's place in the [`Tracker`]; given back when dropped.
pub(crate) struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

impl Tracker {
    /// Takes a place for a connection from `ip`, if the bounds allow it.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize, per_peer: usize) -> Result<Slot, Refusal> {
        let ip = peer_key(ip);
        let mut guard = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, peers) = &mut *guard;
        if *total >= max {
            return Err(Refusal::Full(max));
        }
        let mine = peers.entry(ip).or_insert(0);
        if *mine >= per_peer {
            return Err(Refusal::Peer(per_peer));
        }
        *mine += 1;
        *total += 1;
        Ok(Slot { tracker: self.clone(), ip })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.tracker.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, peers) = &mut *guard;
        *total -= 1;
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// How connections are bounded.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one peer (an IPv4 address or an IPv6 /64).
    pub per_peer: usize,
    /// How long a request head (request line and headers) may take to arrive; an idle
    /// kept-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// How long a write may wait for the peer to take a byte before the connection is closed.
    pub write_timeout: Duration,
}

/// A stream whose writes fail with `TimedOut` once the peer has taken no byte for `timeout`
/// (its receive window stays shut), so a client that never reads its answer does not hold
/// the connection and the answer's buffer. Reads are untouched (the header timeout bounds
/// those).
pub(crate) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Started when a write could not proceed; cleared when one does. With the runtime it
    /// was made on ([`HTTP`] or [`LANE`]): a timer belongs to its runtime's driver.
    stalled: Option<(Pin<Box<tokio::time::Sleep>>, u8)>,
    /// Where a connection that moves between runtimes runs now.
    place: Option<Arc<Place>>,
}

impl<S> WriteTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout { inner, timeout, stalled: None, place: None }
    }

    /// For a connection that moves between runtimes: a stall's timer is remade (same
    /// deadline) on the runtime that serves the connection now, so it never depends on the
    /// other one (which may be shut down first).
    fn following(mut self, place: Arc<Place>) -> Self {
        self.place = Some(place);
        self
    }

    /// Passes a write's outcome through, turning a wait of `timeout` without progress into an
    /// error.
    fn progress<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Pending => {
                let timeout = self.timeout;
                let here = self.place.as_ref().map_or(HTTP, |p| p.here.load(Relaxed));
                if let Some((sleep, on)) = self.stalled.as_mut().filter(|(_, on)| *on != here) {
                    *sleep = Box::pin(tokio::time::sleep_until(sleep.deadline()));
                    *on = here;
                }
                let (stalled, _) = self.stalled.get_or_insert_with(|| (Box::pin(tokio::time::sleep(timeout)), here));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took no byte of the answer for {} s (--write-timeout)", timeout.as_secs_f64()),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, outcome)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, outcome)
    }
}

/// Refusals answered at once after reading the request head; beyond that many, a refusal is
/// written without waiting for the head (a flood of refused connections holds at most this
/// many file descriptors, each for at most twice [`REFUSAL_WAIT`]).
const REFUSING_MAX: usize = 32;

/// How long a refused connection's request head may take to arrive, and then how long the
/// rest of what the client sends is read and dropped after the answer.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// The most bytes read from a refused connection (head and what follows).
const REFUSAL_READ_MAX: usize = 64 << 10;

/// The answer to a refused connection.
fn refusal(why: &Refusal) -> Vec<u8> {
    let (status, message) = match why {
        Refusal::Full(n) => {
            ("503 Service Unavailable", format!("the service holds its maximum of {n} connections (--max-connections); retry shortly"))
        }
        Refusal::Peer(n) => (
            "429 Too Many Requests",
            format!(
                "your address (for IPv6: its /64) holds its maximum of {n} connections (--max-connections-per-ip); reuse or close some"
            ),
        ),
    };
    let body = serde_json::json!({ "error": message }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes a refusal without waiting for the peer: what already arrived is read and dropped,
/// nothing more (when [`REFUSING_MAX`] refusals are under way already).
fn refuse_now(stream: tokio::net::TcpStream, answer: &[u8]) {
    let mut sink = [0u8; 4096];
    let _ = stream.try_read(&mut sink);
    let _ = stream.try_write(answer);
}

/// Reads the request head (for at most [`REFUSAL_WAIT`] and [`REFUSAL_READ_MAX`] bytes), writes
/// the refusal, closes the sending side and reads what the client still sends until it closes
/// (bounded the same way), so the close is not a reset that discards the answer.
async fn refuse_after_head(mut stream: tokio::net::TcpStream, answer: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    let mut read = 0;
    let mut tail: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + REFUSAL_WAIT;
    while read < REFUSAL_READ_MAX && !tail.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                read += n;
                tail.drain(..tail.len().saturating_sub(3));
                tail.extend_from_slice(&buf[..n]);
            }
            _ => break,
        }
    }
    let deadline = tokio::time::Instant::now() + REFUSAL_WAIT;
    let written = tokio::time::timeout_at(deadline, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    while read < REFUSAL_READ_MAX {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => break,
        }
    }
}

/// Accepts and serves connections until `stop` turns true, then lets open connections finish
/// their requests (each closes after its current answer) and returns once all are closed.
///
/// With a `lane` (a runtime at the process's priority), every request is routed on its
/// own: one that writes events (`POST /v1/events`) or waits for freshness (`min_frontier=`)
/// is served on the lane, every other one on this runtime, whose threads run below the
/// speed path (see [`super::ServeConfig::http_nice`]). A connection moves between the two
/// when its next request needs the other ([`Place`]), so what a connection sent first
/// never decides the priority of what it sends later.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    lane: Option<tokio::runtime::Handle>,
    published: Published,
) {
    let tracker = Arc::new(Tracker::default());
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING_MAX));
    let http = tokio::runtime::Handle::current();
    // Every connection task holds a receiver; `closed()` below waits for the last to go.
    let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a connection reset before it was accepted):
                // wait a little instead of spinning; the reserve keeps the data directory going.
                if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let slot = match tracker.acquire(peer.ip(), bounds.max, bounds.per_peer) {
            Ok(slot) => slot,
            Err(why) => {
                metrics.connections_refused.fetch_add(1, Relaxed);
                let answer = refusal(&why);
                match refusing.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            refuse_after_head(stream, answer).await;
                            drop(permit);
                        });
                    }
                    Err(_) => refuse_now(stream, &answer),
                }
                continue;
            }
        };
        metrics.connections_open.store(tracker.open() as u64, Relaxed);
        let _ = stream.set_nodelay(true); // answers are small and latency matters
        let done = Done { slot: Some(slot), metrics: metrics.clone(), tracker: tracker.clone(), _alive: alive_rx.clone() };
        match &lane {
            None => {
                let (router, stop) = (router.clone(), stop.clone());
                tokio::spawn(async move {
                    serve_one(stream, router, bounds, stop).await;
                    drop(done);
                });
            }
            Some(lane) => {
                let place = Arc::new(Place::default());
                let io = Movable { stream: Some(stream), on: HTTP, place: place.clone() };
                let service = Routed {
                    inner: hyper_util::service::TowerToHyperService::new(router.clone()),
                    place: place.clone(),
                    published: published.clone(),
                };
                let conn: Conn = Box::pin(http1(bounds).serve_connection(
                    hyper_util::rt::TokioIo::new(WriteTimeout::new(io, bounds.write_timeout).following(place.clone())),
                    service,
                ));
                let session =
                    Session { conn, place, stop: stop.clone(), shutting: false, http: http.clone(), lane: lane.clone(), _done: done };
                session.run();
            }
        }
    }
    drop(listener);
    drop(alive_rx);
    alive_tx.closed().await;
}

/// What a closed connection gives back: its place in the [`Tracker`] (and the gauge), and its
/// share in the server's wait for open connections.
struct Done {
    slot: Option<Slot>,
    metrics: Arc<Metrics>,
    tracker: Arc<Tracker>,
    _alive: tokio::sync::watch::Receiver<()>,
}

impl Drop for Done {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.metrics.connections_open.store(self.tracker.open() as u64, Relaxed);
    }
}

/// The published frontier of the speed layer serving now (per partition).
pub(crate) type Published = Arc<dyn Fn() -> Vec<u64> + Send + Sync>;

/// Whether a request goes to the ingest lane: it appends events or waits for freshness (a
/// `min_frontier` the `published` frontier does not cover yet; one already covered is
/// answered at once, like any query, and one that does not parse is refused).
fn on_lane(method: &axum::http::Method, uri: &axum::http::Uri, published: &dyn Fn() -> Vec<u64>) -> bool {
    if method == axum::http::Method::POST && uri.path() == "/v1/events" {
        return true;
    }
    let Some(value) = uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("min_frontier="))) else {
        return false;
    };
    let value = value.replace("%2C", ",").replace("%2c", ",");
    let Ok(min) = value.split(',').map(|x| x.trim().parse::<u64>()).collect::<Result<Vec<u64>, _>>() else {
        return false;
    };
    let published = published();
    min.len() == published.len() && min.iter().zip(&published).any(|(m, p)| m > p)
}

/// Runs on the HTTP runtime (lowered threads).
const HTTP: u8 = 0;
/// Runs on the ingest lane (the process's priority).
const LANE: u8 = 1;

/// Where a connection is served now ([`HTTP`] or [`LANE`]) and where its current request
/// wants to be: the request's service future asks to move ([`MoveTo`]), the session sees
/// it once the connection's poll returns, and continues the connection on the other runtime.
#[derive(Default)]
struct Place {
    here: AtomicU8,
    want: AtomicU8,
}

impl Place {
    fn moving(&self) -> bool {
        self.here.load(Relaxed) != self.want.load(Relaxed)
    }
}

/// Ready once the connection runs where `want` says (asks for the move on its first poll).
struct MoveTo {
    place: Arc<Place>,
    want: u8,
}

impl Future for MoveTo {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.place.here.load(Relaxed) == self.want {
            return Poll::Ready(());
        }
        // No waker: the session checks `Place::moving` after every poll of the connection.
        self.place.want.store(self.want, Relaxed);
        Poll::Pending
    }
}

/// The router, each request first moved to the runtime it belongs on ([`on_lane`]).
#[derive(Clone)]
struct Routed {
    inner: hyper_util::service::TowerToHyperService<axum::Router>,
    place: Arc<Place>,
    published: Published,
}

type Answer = Pin<Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Routed {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Answer {
        let want = if on_lane(req.method(), req.uri(), &*self.published) { LANE } else { HTTP };
        let answer = self.inner.call(req);
        if self.place.here.load(Relaxed) == want {
            return Box::pin(answer);
        }
        let to = MoveTo { place: self.place.clone(), want };
        Box::pin(async move {
            to.await;
            answer.await
        })
    }
}

/// A connection's socket, registered with the I/O driver of the runtime that serves it
/// now: after a move it re-registers with the new one at its next use, so nothing about
/// the connection waits for the other runtime's threads.
struct Movable {
    stream: Option<tokio::net::TcpStream>,
    on: u8,
    place: Arc<Place>,
}

impl Movable {
    fn stream(&mut self) -> io::Result<Pin<&mut tokio::net::TcpStream>> {
        let here = self.place.here.load(Relaxed);
        if here != self.on {
            let stream = self.stream.take().ok_or_else(|| io::Error::other("the connection's socket was lost in a move"))?;
            self.stream = Some(tokio::net::TcpStream::from_std(stream.into_std()?)?);
            self.on = here;
        }
        match self.stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::Error::other("the connection's socket was lost in a move")),
        }
    }
}

impl AsyncRead for Movable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Movable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// A connection served by hyper over a [`Movable`] socket.
type Conn = Pin<Box<hyper::server::conn::http1::Connection<hyper_util::rt::TokioIo<WriteTimeout<Movable>>, Routed>>>;

/// One connection of a server with a lane, moving between the two runtimes.
struct Session {
    conn: Conn,
    place: Arc<Place>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Whether the server is stopping (the connection closes after its current answer).
    shutting: bool,
    http: tokio::runtime::Handle,
    lane: tokio::runtime::Handle,
    /// Given back when the session ends.
    _done: Done,
}

impl Session {
    /// Serves the connection on the runtime its current request wants, until it closes or
    /// must move, then goes on from the other one.
    fn run(self) {
        let want = self.place.want.load(Relaxed);
        let runtime = if want == LANE { &self.lane } else { &self.http };
        runtime.clone().spawn(async move {
            let mut session = self;
            session.place.here.store(want, Relaxed);
            if session.serve_here().await {
                session.run();
            }
        });
    }

    /// Polls the connection until it ends (false) or its request asks to move (true).
    async fn serve_here(&mut self) -> bool {
        if !self.shutting {
            let (conn, place, stop) = (&mut self.conn, &self.place, &mut self.stop);
            tokio::select! {
                moved = until_moved(conn, place) => return moved,
                _ = stop.wait_for(|s| *s) => {}
            }
            self.shutting = true;
            self.conn.as_mut().graceful_shutdown();
        }
        until_moved(&mut self.conn, &self.place).await
    }
}

/// Polls `conn` until it ends (false) or its request asks to move (true).
async fn until_moved(conn: &mut Conn, place: &Place) -> bool {
    std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
        Poll::Ready(_) => Poll::Ready(false),
        Poll::Pending if place.moving() => Poll::Ready(true),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// The HTTP/1.1 connection settings.
fn http1(bounds: Bounds) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(bounds.header_timeout);
    builder
}

/// Serves one connection with hyper until it closes or the server stops.
async fn serve_one(stream: tokio::net::TcpStream, router: axum::Router, bounds: Bounds, mut stop: tokio::sync::watch::Receiver<bool>) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let stream = WriteTimeout::new(stream, bounds.write_timeout);
    let conn = http1(bounds).serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves which requests go to the ingest lane: those that append events or wait for
    // freshness (a `min_frontier` the published frontier does not cover yet); queries, status,
    // a `min_frontier` already covered (range queries included) and the rest do not.
    #[test]
    fn ingest_and_freshness_waits_go_to_the_lane() {
        use axum::http::{Method, Uri};
        let published = || vec![5, 5, 5, 5];
        let lane = |m: Method, u: &str| on_lane(&m, &u.parse::<Uri>().expect("uri"), &published);
        assert!(lane(Method::POST, "/v1/events"));
        assert!(lane(Method::GET, "/v1/views/customer_spend/7?min_frontier=1,2,3,6&timeout_ms=5000"));
        assert!(lane(Method::GET, "/v1/views/customer_spend?limit=3&min_frontier=6%2C0%2C0%2C0"));
        assert!(!lane(Method::GET, "/v1/views/customer_spend/7?min_frontier=1,2,3,4&timeout_ms=5000"));
        assert!(!lane(Method::GET, "/v1/views/customer_spend?limit=3&min_frontier=0,0,0,0"));
        assert!(!lane(Method::GET, "/v1/views/customer_spend?min_frontier=5,5,5,5&limit=3"));
        assert!(!lane(Method::GET, "/v1/views/customer_spend/7?min_frontier=nope"));
        assert!(!lane(Method::GET, "/v1/views/customer_spend/7"));
        assert!(!lane(Method::GET, "/v1/views/customer_spend/7?x_min_frontier=1"));
        assert!(!lane(Method::GET, "/v1/views/min_frontier=1"));
        assert!(!lane(Method::GET, "/v1/events"));
        assert!(!lane(Method::GET, "/v1/status"));
        assert!(!lane(Method::POST, "/v1/batch"));
    }

    /// Sends `request` on `stream` and returns the answer's body (Content-Length framed).
    #[cfg(target_os = "linux")]
    fn exchange(stream: &mut std::net::TcpStream, request: &str) -> String {
        use std::io::{Read, Write};
        stream.write_all(request.as_bytes()).expect("send");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).expect("receive");
            assert!(n > 0, "the server closed the connection");
            got.extend_from_slice(&chunk[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("length"))
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                return String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
            }
        }
    }

    // Proves the lane is chosen per request, not per connection: on one kept-alive
    // connection, an ingest request and a freshness wait run at the process's priority and
    // every other request on the lowered HTTP threads, whatever the connection sent first
    // (the old rule served a connection whose first request was `POST /v1/events` or had
    // `min_frontier=` on the lane for its whole life, queries included).
    #[cfg(target_os = "linux")]
    #[test]
    fn every_request_runs_where_it_belongs_whatever_came_before_on_its_connection() {
        use axum::routing::{get, post};
        let base = std::thread::spawn(crate::serve::nice_now).join().expect("thread");
        let lowered = (base + crate::serve::HTTP_NICE_DEFAULT).min(19);
        if lowered == base {
            return; // already at the lowest priority: nothing to tell apart
        }
        let runtime = crate::serve::http_runtime(crate::serve::HTTP_NICE_DEFAULT).expect("runtime");
        let lane = crate::serve::ingest_lane().expect("lane");
        let nice = || async { crate::serve::nice_now().to_string() };
        let router = axum::Router::new().route("/v1/events", post(nice)).route("/v1/views/{view}/{key}", get(nice));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let bounds = Bounds { max: 8, per_peer: 8, header_timeout: Duration::from_secs(10), write_timeout: Duration::from_secs(10) };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let handle = lane.handle().clone();
        let server = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            serve(listener, router, bounds, Arc::new(Metrics::default()), stop_rx, Some(handle), Arc::new(|| vec![5])).await;
        });
        let post = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let query = "GET /v1/views/customer_spend/7 HTTP/1.1\r\nHost: x\r\n\r\n";
        let wait = "GET /v1/views/customer_spend/7?min_frontier=6 HTTP/1.1\r\nHost: x\r\n\r\n";
        // Already covered (the published frontier is 5): answered at once on the HTTP threads.
        let covered = "GET /v1/views/customer_spend/7?min_frontier=5 HTTP/1.1\r\nHost: x\r\n\r\n";
        for first in [post, wait, query, covered] {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            let mut seen = Vec::new();
            for request in [first, query, post, covered, wait, query, covered, query] {
                let priority: i32 = exchange(&mut c, request).parse().expect("a nice value");
                let want = if request == query || request == covered { lowered } else { base };
                seen.push(priority);
                assert_eq!(priority, want, "after {seen:?}, a request `{}` ran at nice {priority}", request.lines().next().unwrap_or(""));
            }
        }
        stop_tx.send(true).expect("stop");
        runtime.block_on(server).expect("server");
    }

    // Proves a write stalled on one runtime keeps its timeout when its connection moves to
    // the other one, and that the timer then no longer belongs to the first: polled after
    // that runtime is gone (a shutdown drops the HTTP runtime before the lane), it does not
    // panic.
    #[test]
    fn a_stalled_write_moves_its_timer_with_the_connection() {
        let place = Arc::new(Place::default());
        let (inner, _peer) = tokio::io::duplex(1);
        let mut w = WriteTimeout::new(inner, Duration::from_secs(3600)).following(place.clone());
        let first = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let stalled = first.block_on(std::future::poll_fn(|cx| {
            // The first byte fills the pipe; the next write stalls and starts the timer.
            let wrote = Pin::new(&mut w).poll_write(cx, b"ab");
            assert!(matches!(wrote, Poll::Ready(Ok(1))));
            Poll::Ready(Pin::new(&mut w).poll_write(cx, b"b").is_pending())
        }));
        assert!(stalled);
        let deadline = w.stalled.as_ref().map(|(s, _)| s.deadline()).expect("a stall timer");
        place.here.store(LANE, Relaxed);
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let pending = second.block_on(std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_write(cx, b"b").is_pending())));
        assert!(pending);
        assert_eq!(w.stalled.as_ref().map(|(s, on)| (s.deadline(), *on)), Some((deadline, LANE)), "the same deadline, on the new runtime");
    }

    // Proves the per-peer bound refuses only that peer (another is still let in), the global
    // bound refuses everyone, and a closed connection gives its place back.
    #[test]
    fn bounds_per_peer_and_in_all() {
        let t = Arc::new(Tracker::default());
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap(), "::1".parse().unwrap());
        let a1 = t.acquire(a, 4, 2).expect("a 1");
        let _a2 = t.acquire(a, 4, 2).expect("a 2");
        assert_eq!(t.acquire(a, 4, 2).err(), Some(Refusal::Peer(2)));
        let _b1 = t.acquire(b, 4, 2).expect("another peer is let in");
        let _c1 = t.acquire(c, 4, 2).expect("and a third");
        assert_eq!(t.acquire(b, 4, 2).err(), Some(Refusal::Full(4)));
        assert_eq!(t.open(), 4);
        drop(a1);
        assert_eq!(t.open(), 3);
        let _a3 = t.acquire(a, 4, 2).expect("a's place came back");
    }

    // Proves an IPv6 host cannot take more shares by using more addresses of its /64 (another
    // /64 still gets its own), and an IPv4 address mapped into IPv6 counts as that address.
    #[test]
    fn ipv6_peers_count_by_their_64() {
        let t = Arc::new(Tracker::default());
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _held1 = t.acquire(ip("2001:db8:1:2::1"), 100, 2).expect("first");
        let _held2 = t.acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 100, 2).expect("second, same /64");
        assert_eq!(t.acquire(ip("2001:db8:1:2:abcd::9"), 100, 2).err(), Some(Refusal::Peer(2)), "a third address of the /64");
        let _held3 = t.acquire(ip("2001:db8:1:3::1"), 100, 2).expect("the next /64 is another peer");
        let _held4 = t.acquire(ip("10.0.0.1"), 100, 2).expect("v4");
        let _held5 = t.acquire(ip("::ffff:10.0.0.1"), 100, 2).expect("v4 mapped: the same peer's second");
        assert_eq!(t.acquire(ip("10.0.0.1"), 100, 2).err(), Some(Refusal::Peer(2)));
        assert_eq!(peer_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(peer_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    // Proves the open-files limit is read from /proc/self/limits' format and the cap leaves
    // at least half of it (and the reserve) to the data directory.
    #[test]
    fn cap_from_the_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            400                  4096                 files\n";
        assert_eq!(parse_open_files_limit(limits), FileLimit::Max(400));
        assert_eq!(parse_open_files_limit("Max open files  unlimited  unlimited  files\n"), FileLimit::Unlimited);
        assert_eq!(connection_cap(FileLimit::Max(400)), 136);
        assert_eq!(connection_cap(FileLimit::Max(20)), 8);
        assert_eq!(connection_cap(FileLimit::Max(1 << 20)), 16_384);
        assert_eq!(connection_cap(FileLimit::Unlimited), 16_384);
    }

    // Proves that when the limit cannot be read (no /proc, an unexpected format) the cap is
    // the small fallback, not the largest one, and that it also lowers --max-connections.
    #[test]
    fn unknown_file_limit_gives_a_small_cap() {
        assert_eq!(parse_open_files_limit(""), FileLimit::Unknown);
        assert_eq!(parse_open_files_limit("Max open files  lots  lots  files\n"), FileLimit::Unknown);
        assert_eq!(connection_cap(FileLimit::Unknown), CAP_LIMIT_UNKNOWN);
        let cfg = crate::serve::ServeConfig { max_connections: Some(10_000), ..Default::default() };
        assert_eq!(cfg.bounds(FileLimit::Unknown).max, CAP_LIMIT_UNKNOWN);
        assert_eq!(crate::serve::ServeConfig::default().bounds(FileLimit::Unknown).max, CAP_LIMIT_UNKNOWN);
    }
}
