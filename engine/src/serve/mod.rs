//! `serve`: ingestion, the serving layer and a live dashboard as one long-running service.
//!
//! One process owns the data directory. HTTP requests (tokio + axum) are parsed on the
//! blocking pool and handed to the group committer ([`ingest`]); the speed layer tails the
//! log; a scheduler thread runs batch runs and hands over; queries read the current serving
//! pair through a small cache that every speed publication and handover invalidates.
//! See docs/serving.md for the API and docs/operations.md for running it.

mod api;
pub(crate) mod committer;
pub(crate) mod conn;
pub(crate) mod metrics;

use lambdaflow_operators::Job;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::batch::Progress;
use crate::clock::now_ms;
use crate::error::{DataflowError, Error, Result};
use crate::lambda::Lambda;
use crate::store::ViewStore;

/// How long open connections may take to finish after a shutdown signal.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The page `GET /` serves when the application gives none: views and freshness.
pub(crate) const GENERIC_DASHBOARD: &str = include_str!("generic.html");

/// When batch runs happen on their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Only on demand (`POST /v1/batch`).
    Never,
    /// Every interval, counted from the end of the previous run.
    Every(Duration),
    /// Daily at this UTC time (hours, minutes).
    DailyAt(u32, u32),
}

/// As users write and read it: `every 10m`, `daily at 02:00 UTC`, `on demand only`.
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Never => f.write_str("on demand only (POST /v1/batch; see --batch-every, --batch-at)"),
            Schedule::Every(d) => write!(f, "every {}", crate::units::format_duration(*d)),
            Schedule::DailyAt(h, m) => write!(f, "daily at {h:02}:{m:02} UTC"),
        }
    }
}

impl Schedule {
    /// Milliseconds since the Unix epoch of the next run after `last_end_ms` (now: `now`).
    pub fn next_ms(&self, last_end_ms: u64, now: u64) -> Option<u64> {
        match *self {
            Schedule::Never => None,
            Schedule::Every(d) => Some(last_end_ms.saturating_add(d.as_millis().min(u64::MAX as u128) as u64)),
            Schedule::DailyAt(h, m) => {
                const DAY: u64 = 86_400_000;
                let at = (h as u64 * 60 + m as u64) * 60_000;
                let today = now - now % DAY + at;
                Some(if today > now { today } else { today + DAY })
            }
        }
    }
}

/// Parses `HH:MM` (UTC).
pub(crate) fn parse_time_of_day(s: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a time of day HH:MM (UTC), e.g. 02:00");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

/// How the service runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on (loopback by default).
    pub listen: SocketAddr,
    /// When batch runs happen.
    pub schedule: Schedule,
    /// Batch versions kept on disk (older ones are deleted after a handover).
    pub keep: usize,
    /// Bearer token required by write and admin endpoints (and reads unless `public_reads`).
    pub token: Option<String>,
    /// With a token: let reads (views, status, metrics, dashboard) through without it.
    pub public_reads: bool,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Ingest answers 429 while the speed layer is this many events behind the log.
    pub max_lag_events: u64,
    /// Request bodies held in memory at once (being parsed or waiting for their group
    /// commit), bytes; beyond it requests wait up to `admission_wait`, then get 429.
    pub max_inflight_bytes: usize,
    /// How long a request may wait for room before 429.
    pub admission_wait: Duration,
    /// Host names (besides `localhost` and IP addresses with the port the service listens
    /// on) that requests may name in their `Host` header, any port; others get 421.
    pub allow_hosts: Vec<String>,
    /// Connections open at once (`None`: [`conn::connection_cap`] of the open-files limit,
    /// which also caps a larger number).
    pub max_connections: Option<usize>,
    /// Connections open at once from one peer address (`None`: half of `max_connections`).
    pub max_connections_per_peer: Option<usize>,
    /// How long a request head may take to arrive (and an idle connection may stay open).
    pub header_timeout: Duration,
    /// How long writing an answer may wait for the client to take a byte before the
    /// connection is closed.
    pub write_timeout: Duration,
    /// Nice levels the HTTP threads (the async runtime and its blocking pool: queries and
    /// request parsing) run below the rest of the process, so the committer and the speed
    /// workers win the CPU when queries would take it all (0: the same priority; Linux only).
    pub http_nice: i32,
}

impl ServeConfig {
    /// The connection bounds in force under `open_files` (the process's file limit).
    pub fn bounds(&self, open_files: conn::FileLimit) -> conn::Bounds {
        let cap = conn::connection_cap(open_files);
        let max = self.max_connections.map_or(cap, |m| m.clamp(1, cap));
        let per_peer = self.max_connections_per_peer.unwrap_or(max.div_ceil(2)).clamp(1, max);
        conn::Bounds { max, per_peer, header_timeout: self.header_timeout, write_timeout: self.write_timeout }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            schedule: Schedule::Never,
            keep: 3,
            token: None,
            public_reads: false,
            max_body_bytes: 16 << 20,
            max_lag_events: 2_000_000,
            max_inflight_bytes: 256 << 20,
            admission_wait: Duration::from_secs(2),
            allow_hosts: Vec::new(),
            max_connections: None,
            max_connections_per_peer: None,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            http_nice: HTTP_NICE_DEFAULT,
        }
    }
}

/// State of the batch scheduler, for status and metrics.
#[derive(Default)]
pub(crate) struct BatchState {
    /// Events read by the running batch, and its total.
    pub progress: Mutex<Option<Arc<Progress>>>,
    /// Last run's outcome.
    pub last: Mutex<Option<serde_json::Value>>,
    /// When the next scheduled run is due, ms since the epoch (0: none).
    pub next_ms: AtomicU64,
    /// Set by `POST /v1/batch`.
    requested: Mutex<bool>,
    wake: Condvar,
}

impl BatchState {
    /// Asks for a batch run now; returns false if one is already queued.
    pub(crate) fn request(&self) -> bool {
        let mut r = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = !*r;
        *r = true;
        self.wake.notify_all();
        fresh
    }
}

/// Everything a request handler needs.
pub(crate) struct AppState<J: Job> {
    /// The engine.
    pub lambda: Arc<Lambda<J>>,
    /// The configuration.
    pub cfg: ServeConfig,
    /// Counters and histograms.
    pub metrics: Arc<metrics::Metrics>,
    /// Batch scheduling state.
    pub batch: Arc<BatchState>,
    /// The dashboard page.
    pub dashboard: &'static str,
    committer: Mutex<Option<std::sync::mpsc::Sender<committer::Submission>>>,
    inflight: Arc<tokio::sync::Semaphore>,
    waiters: Arc<tokio::sync::Semaphore>,
    cache: api::Cache,
    /// The address the service listens on (its port decides which `Host` headers are ours).
    bound: SocketAddr,
    started: Instant,
    stopping: AtomicBool,
    /// The ingest lane ([`ingest_lane`]): request parsing and `min_frontier` waits run on
    /// its blocking pool, at the process's priority, not the HTTP threads' lower one.
    lane: tokio::runtime::Handle,
}

/// A running service (for tests and `demo`): its address and a way to stop it.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Running {
    /// Stops the service gracefully (in-flight requests finish) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Dataflow(DataflowError::Panicked("the service thread panicked".into())))?,
            None => Ok(()),
        }
    }

    /// Whether the service has stopped (e.g. on a signal).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the service stops by itself (a signal).
    pub fn wait(mut self) -> Result<()> {
        // Keep the sender alive: dropping it would read as a stop request.
        let _keep = self.shutdown.take();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Dataflow(DataflowError::Panicked("the service thread panicked".into())))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Starts the service for `lambda` in the background and returns once it listens.
/// SIGINT/SIGTERM (when `signals`) or [`Running::stop`] shut it down gracefully.
pub(crate) fn start<J: Job>(lambda: Arc<Lambda<J>>, cfg: ServeConfig, dashboard: &'static str, signals: bool) -> Result<Running> {
    let runtime = http_runtime(cfg.http_nice)?;
    let lane = ingest_lane()?;
    let (std_listener, addr) = bind(cfg.listen)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let keys = lambda.appender().keys();
    metrics.idempotency_keys.store(keys as u64, Ordering::Relaxed);
    let (tx, rx) = std::sync::mpsc::channel();
    let committer = start_committer(lambda.clone(), rx, metrics.clone())?;
    let batch = Arc::new(BatchState::default());
    let state = Arc::new(AppState {
        lambda: lambda.clone(),
        inflight: Arc::new(tokio::sync::Semaphore::new(cfg.max_inflight_bytes.max(cfg.max_body_bytes).min(u32::MAX as usize))),
        waiters: Arc::new(tokio::sync::Semaphore::new(api::WAITERS_MAX)),
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        batch: batch.clone(),
        dashboard,
        committer: Mutex::new(Some(tx)),
        cache: api::Cache::default(),
        bound: addr,
        started: Instant::now(),
        stopping: AtomicBool::new(false),
        lane: lane.handle().clone(),
    });
    let stop_background = Arc::new(AtomicBool::new(false));
    let scheduler = start_scheduler(lambda.clone(), metrics, batch, &cfg, stop_background.clone())?;
    start_supervisor(lambda, stop_background.clone())?;
    let open_files = conn::open_files_limit();
    let bounds = cfg.bounds(open_files);
    match open_files {
        conn::FileLimit::Max(n) if cfg.max_connections.is_some_and(|m| m > bounds.max) => eprintln!(
            "lambdaflow serve: --max-connections lowered to {} (half the open-files limit of {n}, less a reserve, stays for the data directory)",
            bounds.max
        ),
        conn::FileLimit::Unknown => eprintln!(
            "lambdaflow serve: the open-files limit cannot be read (no /proc/self/limits); at most {} connections",
            bounds.max
        ),
        _ => {}
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let background = Background { committer, scheduler, stop: stop_background };
    let thread = std::thread::Builder::new()
        .name("lambdaflow-serve".into())
        .spawn(move || {
            let result = runtime.block_on(serve_until_stopped(std_listener, addr, state.clone(), bounds, shutdown_rx, signals));
            // Drop the runtime (and the connections it still holds) before draining the committer.
            drop(runtime);
            drop(lane);
            background.stop(&state);
            result
        })
        .map_err(Error::system("spawn the server"))?;
    Ok(Running { addr, shutdown: Some(shutdown_tx), thread: Some(thread) })
}

/// Threads of the HTTP server's async runtime: one per core the process may use (point
/// queries run on them, so the query rate grows with the cores), at least two.
pub(crate) fn http_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2)
}

/// Default of [`ServeConfig::http_nice`]: at nice +10 a thread's CPU weight is about a
/// tenth of one at +0, so a ready speed worker or committer runs first, and the HTTP
/// threads still get whatever CPU is left (all of it while the speed layer is idle).
pub(crate) const HTTP_NICE_DEFAULT: i32 = 10;

/// The async runtime the HTTP server runs on ([`http_threads`] threads; parsing and range
/// queries go to its blocking pool), every thread of it `nice` levels below the process.
fn http_runtime(nice: i32) -> Result<tokio::runtime::Runtime> {
    // An absolute target, from the priority of the thread that builds the runtime: a
    // thread the blocking pool starts from an already lowered thread inherits its nice
    // value, and must not be lowered a second time.
    let target = if nice > 0 { this_thread_nice().map(|base| (base + nice).min(19)) } else { None };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_threads())
        .thread_name("lambdaflow-http")
        .on_thread_start(move || lower_this_thread(target))
        .enable_all()
        .build()
        .map_err(Error::system("start the async runtime"))
}

/// The ingest lane: a runtime whose blocking pool parses ingest requests and waits for
/// `min_frontier` at the process's priority. The work between a request's arrival and its
/// ack, and the wake-up of a read waiting for freshness, must not queue behind queries on
/// the lowered HTTP threads.
fn ingest_lane() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lambdaflow-ingest")
        .enable_all()
        .build()
        .map_err(Error::system("start the ingest runtime"))
}

/// Runs `f` on the ingest lane's blocking pool, at the process's priority. The task that
/// calls `spawn_blocking` runs on the lane's own worker, because a blocking-pool thread is
/// started by (and inherits the priority of) the thread that asks for it: asked from a
/// lowered HTTP thread, the lane would grow lowered threads.
pub(crate) async fn on_lane<T: Send + 'static>(
    lane: &tokio::runtime::Handle,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, tokio::task::JoinError> {
    lane.spawn(async move { tokio::task::spawn_blocking(f).await }).await.and_then(|r| r)
}

/// The calling thread's nice value, if the system tells it.
fn this_thread_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Lowers the calling thread's scheduling priority to nice `target` unless it is there or
/// lower already. Failing to is not fatal (the thread keeps its priority): it is reported once.
fn lower_this_thread(target: Option<i32>) {
    let Some(target) = target else { return };
    if this_thread_nice().is_some_and(|now| now >= target) {
        return;
    }
    if let Err(e) = renice_this_thread(target) {
        static REPORTED: std::sync::Once = std::sync::Once::new();
        REPORTED.call_once(|| eprintln!("lambdaflow serve: could not lower the HTTP threads' priority ({e}); they keep the process's"));
    }
}

#[cfg(target_os = "linux")]
fn renice_this_thread(target: i32) -> std::io::Result<()> {
    // On Linux a thread id names one thread for the PRIO_PROCESS calls.
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), target)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn renice_this_thread(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

/// The calling thread's nice value (tests on Linux).
#[cfg(all(test, target_os = "linux"))]
fn nice_now() -> i32 {
    this_thread_nice().expect("getpriority")
}

/// Binds the listening socket; returns it (non-blocking) and the address it got.
fn bind(listen: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr)> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { path: PathBuf::from(listen.to_string()), what, source }
    };
    let listener = std::net::TcpListener::bind(listen).map_err(io("listen on"))?;
    listener.set_nonblocking(true).map_err(io("configure"))?;
    let addr = listener.local_addr().map_err(io("listen on"))?;
    Ok((listener, addr))
}

/// The group committer's thread ([`committer::run`]); it ends when every sender is dropped.
fn start_committer<J: Job>(
    lambda: Arc<Lambda<J>>,
    rx: std::sync::mpsc::Receiver<committer::Submission>,
    metrics: Arc<metrics::Metrics>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("lambdaflow-commit".into())
        .spawn(move || committer::run(lambda, rx, metrics))
        .map_err(Error::system("spawn the committer"))
}

/// The batch scheduler's thread ([`scheduler`]).
fn start_scheduler<J: Job>(
    lambda: Arc<Lambda<J>>,
    metrics: Arc<metrics::Metrics>,
    batch: Arc<BatchState>,
    cfg: &ServeConfig,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let (schedule, keep) = (cfg.schedule, cfg.keep);
    std::thread::Builder::new()
        .name("lambdaflow-batch".into())
        .spawn(move || scheduler(lambda, metrics, batch, schedule, keep, stop))
        .map_err(Error::system("spawn the scheduler"))
}

/// The speed layer's supervisor: a failed layer (in a cluster, a process died) is restarted
/// from the batch cut; meanwhile its last state keeps answering.
fn start_supervisor<J: Job>(lambda: Arc<Lambda<J>>, stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("lambdaflow-heal".into())
        .spawn(move || supervise_speed(lambda, stop))
        .map_err(Error::system("spawn the speed supervisor"))?;
    Ok(())
}

fn supervise_speed<J: Job>(lambda: Arc<Lambda<J>>, stop: Arc<AtomicBool>) {
    // A failure that recurs (say, an event the job cannot process) would replay the log from
    // the cut over and over: after each attempt, wait 1 s, doubling up to 60 s; the wait
    // resets once a layer has stayed healthy for a minute.
    let mut backoff = Duration::ZERO;
    let mut last_attempt_end: Option<Instant> = None;
    let mut healthy_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if lambda.serving().speed.failure().is_none() {
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(60) {
                backoff = Duration::ZERO;
            }
            continue;
        }
        healthy_since = None;
        if last_attempt_end.is_some_and(|t| t.elapsed() < backoff) {
            continue;
        }
        let result = lambda.restart_speed_if_failed();
        last_attempt_end = Some(Instant::now());
        backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        if let Err(e) = result {
            eprintln!("lambdaflow serve: restarting the speed layer failed ({e}); trying again in {}s", backoff.as_secs());
        }
    }
}

/// Serves HTTP until a stop request (or a signal), then gives open connections
/// [`SHUTDOWN_GRACE`] to finish.
async fn serve_until_stopped<J: Job>(
    std_listener: std::net::TcpListener,
    addr: SocketAddr,
    state: Arc<AppState<J>>,
    bounds: conn::Bounds,
    shutdown_rx: tokio::sync::oneshot::Receiver<()>,
    signals: bool,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|source| Error::Io {
        path: PathBuf::from(addr.to_string()),
        what: "listen on".into(),
        source,
    })?;
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if signals {
            tokio::select! {
                _ = shutdown_rx => {}
                _ = terminate_signal() => {
                    eprintln!("lambdaflow serve: shutting down (in-flight requests finish; every acknowledged event is already durable)");
                }
            }
        } else {
            let _ = shutdown_rx.await;
        }
        let _ = stopping_tx.send(true);
    });
    let lane = (state.cfg.http_nice > 0).then(|| state.lane.clone());
    let serve = conn::serve(listener, api::router(state.clone()), bounds, state.metrics.clone(), stopping_rx.clone(), lane);
    // Connections get a grace period to finish; a client trickling a body does not hold the
    // shutdown up for longer.
    let grace = async move {
        let _ = stopping_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        eprintln!("lambdaflow serve: connections still open after {} s; closing them", SHUTDOWN_GRACE.as_secs());
    };
    tokio::select! {
        _ = serve => {}
        _ = grace => {}
    }
    Ok(())
}

/// The threads behind the HTTP server, stopped after it.
struct Background {
    committer: std::thread::JoinHandle<()>,
    scheduler: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Background {
    /// Drains the committer (every queued request is committed and answered) and stops the
    /// scheduler and the supervisor; a batch run in progress is abandoned.
    fn stop<J: Job>(self, state: &AppState<J>) {
        state.stopping.store(true, Ordering::SeqCst);
        // No more submissions: the committer finishes what is queued and exits.
        state.committer.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.stop.store(true, Ordering::SeqCst);
        state.batch.request();
        if self.scheduler.is_finished() || state.batch.progress.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            let _ = self.scheduler.join();
        } else {
            eprintln!("lambdaflow serve: a batch run is in progress; it is abandoned (its unpublished files are removed at the next run)");
        }
        if self.committer.join().is_err() {
            eprintln!("lambdaflow serve: the committer thread panicked");
        }
    }
}

async fn terminate_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The batch scheduler: runs batches when due or requested, hands over, collects garbage.
fn scheduler<J: Job>(
    lambda: Arc<Lambda<J>>,
    metrics: Arc<metrics::Metrics>,
    batch: Arc<BatchState>,
    schedule: Schedule,
    keep: usize,
    stop: Arc<AtomicBool>,
) {
    let mut last_end = now_ms();
    loop {
        let next = schedule.next_ms(last_end, now_ms());
        batch.next_ms.store(next.unwrap_or(0), Ordering::Relaxed);
        {
            let mut requested = batch.requested.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if *requested || next.is_some_and(|n| now_ms() >= n) {
                    break;
                }
                let wait = next.map(|n| n.saturating_sub(now_ms())).unwrap_or(60_000).clamp(1, 1000);
                requested = batch.wake.wait_timeout(requested, Duration::from_millis(wait)).unwrap_or_else(|e| e.into_inner()).0;
            }
            *requested = false;
        }
        let progress = Arc::new(Progress::default());
        *batch.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
        let t = Instant::now();
        let started_ms = now_ms();
        let result = lambda.batch_and_handover(progress);
        let took = t.elapsed();
        *batch.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let outcome = match result {
            Ok(report) => {
                metrics.batch_ok.fetch_add(1, Ordering::Relaxed);
                metrics.batch_last_ms.store(took.as_millis() as u64, Ordering::Relaxed);
                // Never the version being served (a late run's version is served although a
                // newer one is current).
                let serving: Vec<u64> = lambda.serving().batch.iter().map(|b| b.meta.version).collect();
                let removed = ViewStore::open(lambda.dir()).and_then(|s| s.gc(keep, &serving));
                if let Err(e) = &removed {
                    eprintln!("lambdaflow serve: removing old batch versions failed: {e}");
                }
                eprintln!(
                    "lambdaflow serve: batch v{} over {} events published and handed over in {:.2}s",
                    report.meta.version,
                    report.meta.events,
                    took.as_secs_f64()
                );
                serde_json::json!({
                    "ok": true,
                    "version": report.meta.version,
                    "cut": report.meta.cut,
                    "events": report.meta.events,
                    "started_ms": started_ms,
                    "duration_ms": took.as_millis() as u64,
                    "removed_versions": removed.unwrap_or_default(),
                })
            }
            Err(e) => {
                metrics.batch_failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("lambdaflow serve: batch run failed, the previous views keep serving: {e}");
                serde_json::json!({ "ok": false, "error": e.to_string(), "started_ms": started_ms, "duration_ms": took.as_millis() as u64 })
            }
        };
        *batch.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        last_end = now_ms();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::parse_positive_duration as parse_duration;

    // Proves the HTTP runtime's threads (async workers and the blocking pool, where
    // queries and parsing run) run below the process, and the process's own threads (the
    // committer's, the speed workers') keep their priority.
    #[cfg(target_os = "linux")]
    #[test]
    fn http_threads_run_below_the_speed_path() {
        let base = std::thread::spawn(nice_now).join().expect("thread");
        let runtime = http_runtime(HTTP_NICE_DEFAULT).expect("runtime");
        let (worker, blocking) = runtime.block_on(async {
            let worker = tokio::spawn(async { nice_now() }).await.expect("task");
            let blocking = tokio::task::spawn_blocking(nice_now).await.expect("blocking task");
            (worker, blocking)
        });
        let want = (base + HTTP_NICE_DEFAULT).min(19);
        assert_eq!((worker, blocking), (want, want), "HTTP threads at nice {worker}/{blocking}, the process at {base}");
        assert_eq!(std::thread::spawn(nice_now).join().expect("thread"), base, "a new thread of the process kept its priority");
        // A blocking thread started from a lowered worker is not lowered twice.
        let nested = runtime.block_on(async {
            tokio::spawn(async { tokio::task::spawn_blocking(nice_now).await.expect("blocking task") }).await.expect("task")
        });
        assert_eq!(nested, want, "a blocking thread started by a lowered one");
        // Parsing and freshness waits run at the process's priority, also when asked for
        // from a lowered HTTP thread (which would start lowered lane threads).
        let lane = ingest_lane().expect("lane");
        let handle = lane.handle().clone();
        let from_http = runtime
            .block_on(async { tokio::spawn(async move { on_lane(&handle, nice_now).await.expect("lane task") }).await.expect("task") });
        assert_eq!(from_http, base, "the ingest lane runs at the process's priority");
        let same = http_runtime(0).expect("runtime");
        assert_eq!(same.block_on(async { tokio::spawn(async { nice_now() }).await.expect("task") }), base);
    }

    // Proves schedules read as users write them, never as Rust values.
    #[test]
    fn schedules_read_well() {
        assert_eq!(Schedule::Every(Duration::from_secs(600)).to_string(), "every 10m");
        assert_eq!(Schedule::DailyAt(2, 5).to_string(), "daily at 02:05 UTC");
        assert!(Schedule::Never.to_string().starts_with("on demand"));
    }

    // Proves durations and times of day parse, and bad ones are refused with the input named.
    #[test]
    fn parse_schedules() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10 parsecs").unwrap_err().contains("10 parsecs"));
        assert_eq!(parse_time_of_day("02:30"), Ok((2, 30)));
        assert!(parse_time_of_day("24:00").is_err());
        assert!(parse_time_of_day("2pm").is_err());
    }

    // Proves the next run of a daily schedule is later today or tomorrow, and an interval
    // counts from the previous run's end.
    #[test]
    fn next_run() {
        let day = 86_400_000u64;
        let now = 100 * day + 3 * 3_600_000; // 03:00
        assert_eq!(Schedule::DailyAt(2, 0).next_ms(0, now), Some(101 * day + 2 * 3_600_000));
        assert_eq!(Schedule::DailyAt(4, 0).next_ms(0, now), Some(100 * day + 4 * 3_600_000));
        assert_eq!(Schedule::Every(Duration::from_secs(60)).next_ms(now, now), Some(now + 60_000));
        assert_eq!(Schedule::Never.next_ms(0, now), None);
    }
}
