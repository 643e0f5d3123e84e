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
    /// Started when a write could not proceed; cleared when one does.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout { inner, timeout, stalled: None }
    }

    /// Passes a write's outcome through, turning a wait of `timeout` without progress into an
    /// error.
    fn progress<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
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

/// Answers held back for one write: beyond this many bytes a write goes out at once.
const CORK_MAX: usize = 64 << 10;

/// Coalesces the answers to pipelined requests into one write. hyper flushes after every
/// answer; here a flush only marks the answer as due, and it is written when the client has
/// nothing more to read (the next read would wait), when the connection is polled again
/// after the one that produced it (so an answer never waits for a slower request behind
/// it), before closing (also when the client half-closes), or as soon as [`CORK_MAX`] bytes
/// are held. A flush when the last read would have waited (the client sent nothing after the
/// request: hyper reads once more after a request to see the end of the stream) writes at
/// once, so a client that sends one request and waits gets its answer in the same poll as
/// before; one that sends N requests
/// at once gets N answers in one write instead of N (each write on loopback also wakes the
/// client, the largest part of a small query's cost).
///
/// Unlike hyper's `pipeline_flush`, the bytes held are bounded and a partial request at the
/// end of the read buffer does not hold the answers back.
pub(crate) struct Cork<S> {
    inner: S,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// Counts the polls of the connection ([`serve_one`] adds one before each).
    polls: Arc<std::sync::atomic::AtomicU64>,
    /// The poll in which a flush was deferred (the task was woken to come back).
    deferred_in: Option<u64>,
    /// Whether the last read of the connection would have waited: the client had sent
    /// nothing more, so no pipelined request follows the answer being flushed.
    read_waits: bool,
}

/// After a write, a buffer grown past this is given back, so that a connection that once
/// held a large answer does not keep its memory for life.
const CORK_KEEP: usize = 16 << 10;

impl<S: AsyncWrite + Unpin> Cork<S> {
    pub(crate) fn new(inner: S, polls: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Cork { inner, out: Vec::new(), sent: 0, polls, deferred_in: None, read_waits: false }
    }

    /// Writes what is held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.out.capacity() > CORK_KEEP {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.sent = 0;
        self.deferred_in = None;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: writes what is held first when they would not fit.
    /// `Ready(true)`: hold them; `Ready(false)`: write them through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.out.len() + len > CORK_MAX {
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(len <= CORK_MAX))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Cork<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => {
                self.read_waits = true;
                if self.out.is_empty() {
                    return Poll::Pending;
                }
                match self.poll_drain(cx) {
                    // Nothing more to read now: the answers held go out.
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Pending,
                }
            }
            // The end of the client's stream (it half-closed after its last request): hyper
            // ends the connection on it, so what is held goes out first. Until it has, the
            // read waits (the write arranged the wake-up; the end is read again).
            Poll::Ready(Ok(())) if buf.filled().len() == before && !self.out.is_empty() => match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            other => {
                self.read_waits = false;
                other
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cork<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.poll_room(cx, buf.len()) {
            Poll::Ready(Ok(true)) => {
                self.out.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Ready(Ok(false)) => Pin::new(&mut self.inner).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        match self.poll_room(cx, len) {
            Poll::Ready(Ok(true)) => {
                for b in bufs {
                    self.out.extend_from_slice(b);
                }
                Poll::Ready(Ok(len))
            }
            Poll::Ready(Ok(false)) => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.out.is_empty() && self.read_waits {
            // The client has sent nothing after this request: no answer to wait for, so it
            // goes out now (not a poll later).
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        } else if !self.out.is_empty() {
            let now = self.polls.load(Relaxed);
            match self.deferred_in {
                // The first flush of what is held: defer it, and come back in the next poll
                // at the latest (the read that would wait usually writes it first).
                None => {
                    self.deferred_in = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                // More answers in the same poll (pipelined requests): hold them too.
                Some(poll) if poll == now => return Poll::Ready(Ok(())),
                Some(_) => match self.poll_drain(cx) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                },
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
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
/// A connection whose first request writes events (`POST /v1/events`) or waits for
/// freshness (`min_frontier=`) is served on `lane` (a runtime at the process's priority)
/// for its whole life; every other connection stays on this runtime, whose threads run
/// below the speed path (see [`super::ServeConfig::http_nice`]).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    lane: Option<tokio::runtime::Handle>,
) {
    let tracker = Arc::new(Tracker::default());
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING_MAX));
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
        let (router, mut stop, alive, metrics, tracker) =
            (router.clone(), stop.clone(), alive_rx.clone(), metrics.clone(), tracker.clone());
        let lane = lane.clone();
        tokio::spawn(async move {
            // Which runtime serves it: decided by a look (without reading) at its first
            // request; a client that sends nothing within the header timeout is closed.
            if let Some(lane) = lane {
                let mut head = [0u8; 1024];
                let peeked = tokio::select! {
                    p = tokio::time::timeout(bounds.header_timeout, stream.peek(&mut head)) => p,
                    _ = stop.wait_for(|s| *s) => Ok(Ok(0)),
                };
                let n = match peeked {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => {
                        drop(slot);
                        metrics.connections_open.store(tracker.open() as u64, Relaxed);
                        return;
                    }
                };
                if on_lane(&head[..n]) {
                    // Re-registered with the lane's own I/O driver, so nothing about it waits
                    // for this runtime's threads.
                    let moved = stream.into_std();
                    let served = lane.spawn(async move {
                        let Ok(stream) = moved.and_then(tokio::net::TcpStream::from_std) else { return };
                        serve_one(stream, router, bounds, stop).await;
                    });
                    let _ = served.await;
                    drop(slot);
                    metrics.connections_open.store(tracker.open() as u64, Relaxed);
                    drop(alive);
                    return;
                }
            }
            serve_one(stream, router, bounds, stop).await;
            drop(slot);
            metrics.connections_open.store(tracker.open() as u64, Relaxed);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive_rx);
    alive_tx.closed().await;
}

/// Whether a connection whose first bytes are `head` goes to the ingest lane: its first
/// request appends events or waits for freshness.
fn on_lane(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    line.starts_with(b"POST /v1/events") || line.windows(13).any(|w| w == b"min_frontier=")
}

/// Serves one connection with hyper until it closes or the server stops.
async fn serve_one(stream: tokio::net::TcpStream, router: axum::Router, bounds: Bounds, mut stop: tokio::sync::watch::Receiver<bool>) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(bounds.header_timeout);
    let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream = Cork::new(WriteTimeout::new(stream, bounds.write_timeout), polls.clone());
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut stopping = std::pin::pin!(stopping);
    let mut shutting = false;
    std::future::poll_fn(|cx| {
        if !shutting && stopping.as_mut().poll(cx).is_ready() {
            conn.as_mut().graceful_shutdown();
            shutting = true;
        }
        // A new poll: answers deferred in an earlier one are written (see `Cork`).
        polls.fetch_add(1, Relaxed);
        conn.as_mut().poll(cx).map(|_| ())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that records each write it takes; a read returns `next_read` once (empty:
    /// the end of the stream), else waits.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        shut: bool,
        next_read: Option<Vec<u8>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            match self.next_read.take() {
                Some(bytes) => {
                    buf.put_slice(&bytes);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    // Proves the cork: answers flushed within one poll go out in one write, when the next
    // read would wait; an answer flushed after a read that waited goes out at once (a lone
    // request's answer is not delayed); one deferred in a poll goes out in the next poll at
    // the latest; the end of the client's stream writes what is held; more than CORK_MAX bytes
    // are never held; closing writes what is held first.
    #[test]
    fn answers_of_one_poll_go_out_in_one_write() {
        let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut cork = Cork::new(Recorder::default(), polls.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut c = Pin::new(&mut cork);
        let mut space = [0u8; 16];
        // Pipelined requests were read (data): their answers are held.
        c.inner.next_read = Some(b"GET".to_vec());
        assert!(c.as_mut().poll_read(&mut cx, &mut ReadBuf::new(&mut space)).is_ready());
        for answer in [&b"one"[..], b"two", b"three"] {
            assert!(matches!(c.as_mut().poll_write(&mut cx, answer), Poll::Ready(Ok(n)) if n == answer.len()));
            assert!(matches!(c.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        }
        assert!(c.inner.writes.is_empty(), "held while the poll goes on");
        assert!(c.as_mut().poll_read(&mut cx, &mut ReadBuf::new(&mut space)).is_pending());
        assert_eq!(c.inner.writes, [b"onetwothree".to_vec()], "one write when the read would wait");
        // The last read waited: the client sent nothing more, the next answer goes out now.
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"four"), Poll::Ready(Ok(4))));
        assert!(matches!(c.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes.last().map(Vec::as_slice), Some(&b"four"[..]), "a lone answer is not held");
        // After a read of data: deferred in one poll, written in the next.
        c.inner.next_read = Some(b"GET".to_vec());
        assert!(c.as_mut().poll_read(&mut cx, &mut ReadBuf::new(&mut space)).is_ready());
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"five"), Poll::Ready(Ok(4))));
        assert!(matches!(c.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes.len(), 2);
        polls.fetch_add(1, Relaxed);
        assert!(matches!(c.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes.last().map(Vec::as_slice), Some(&b"five"[..]));
        // The end of the client's stream (a half-close after pipelined requests) writes what
        // is held before hyper sees it.
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"six"), Poll::Ready(Ok(3))));
        assert!(matches!(c.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        c.inner.next_read = Some(Vec::new());
        assert!(c.as_mut().poll_read(&mut cx, &mut ReadBuf::new(&mut space)).is_ready());
        assert_eq!(c.inner.writes.last().map(Vec::as_slice), Some(&b"six"[..]), "written before the end is seen");
        // Never more than CORK_MAX held: a large answer goes through after what is held.
        let big = vec![7u8; CORK_MAX + 1];
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"seven"), Poll::Ready(Ok(5))));
        assert!(matches!(c.as_mut().poll_write(&mut cx, &big), Poll::Ready(Ok(n)) if n == big.len()));
        let n = c.inner.writes.len();
        assert_eq!(&c.inner.writes[n - 2..], [b"seven".to_vec(), big]);
        // Closing writes what is held first.
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"eight"), Poll::Ready(Ok(5))));
        assert!(matches!(c.as_mut().poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes.last().map(Vec::as_slice), Some(&b"eight"[..]));
        assert!(c.inner.shut);
    }

    // Proves which connections go to the ingest lane: a first request that appends events
    // or waits for freshness; queries, status and the rest stay on the lowered threads.
    #[test]
    fn ingest_and_freshness_waits_go_to_the_lane() {
        assert!(on_lane(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(on_lane(b"GET /v1/views/customer_spend/7?min_frontier=1,2,3,4&timeout_ms=5000 HTTP/1.1\r\n"));
        assert!(!on_lane(b"GET /v1/views/customer_spend/7 HTTP/1.1\r\nX-Note: min_frontier=1\r\n\r\n"));
        assert!(!on_lane(b"GET /v1/status HTTP/1.1\r\n\r\n"));
        assert!(!on_lane(b"POST /v1/batch HTTP/1.1\r\n\r\n"));
        assert!(!on_lane(b""));
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
