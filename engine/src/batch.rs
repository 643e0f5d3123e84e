//! Batch mode: the job over the log before a cut, published as an immutable batch version.
//!
//! Every worker reads its share of partitions (`partition % workers == index`; with more
//! workers than partitions, a slice of one: see `log::split`) from offset 0 to the cut in
//! large sequential chunks, feeds the events at time 0, and closes its input. The job's
//! operators pre-aggregate before the exchange, so what crosses workers is one update per
//! key, not one per event. When the dataflow drains, each view and each seed
//! is consolidated across workers and written; the version is published atomically.

use lambdaflow_operators::runtime::{AnySeed, AnyView, Mode, Registry};
use lambdaflow_operators::{Ctx, Job, Time};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;

use crate::clock::now_ms;
use crate::cluster::{Peers, PEER_TIMEOUT};
use crate::error::{DataflowError, Error, Result};
use crate::log::Log;
use crate::store::{BatchMeta, PendingVersion, ViewStore};

/// Events read between two updates of the run's progress.
const PROGRESS_EVERY_EVENTS: u64 = 4096;

/// Events fed between two steps of a worker while reading, so the dataflow drains as it goes.
const STEP_EVERY_EVENTS: u64 = 64 * 1024;

/// The environment variable that limits how fast each batch worker reads the log; read once,
/// at the command line ([`max_rate_from_env`]), and carried in [`BatchRun::max_rate`].
pub const MAX_RATE_ENV: &str = "LAMBDAFLOW_BATCH_MAX_RATE";

/// `LAMBDAFLOW_BATCH_MAX_RATE`: events per second each batch worker reads at most (unset:
/// as fast as it can). A batch run on the serving machine can otherwise take every core
/// from the speed layer and queries; worker processes inherit it.
pub fn max_rate_from_env() -> Result<Option<u64>> {
    match std::env::var(MAX_RATE_ENV) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::Usage(format!("{MAX_RATE_ENV} must be a positive number of events per second, not `{v}`"))),
        },
    }
}

/// Where one process's part of a batch run runs, and how it reads.
#[derive(Clone, Debug)]
pub struct BatchRun {
    /// The processes and threads of the run (see [`crate::cluster`]).
    pub peers: Peers,
    /// The cut (default: the log's end when the run starts); every process must get the same.
    pub cut: Option<Vec<u64>>,
    /// How long the processes have to connect to each other.
    pub peer_timeout: Duration,
    /// Events per second each worker reads at most (`None`: as fast as it can).
    pub max_rate: Option<u64>,
}

impl BatchRun {
    /// A run in this process alone, on `workers` threads, at the log's end.
    pub fn local(workers: usize) -> BatchRun {
        BatchRun { peers: Peers::single(workers), cut: None, peer_timeout: PEER_TIMEOUT, max_rate: None }
    }
}

/// What a batch run did.
#[derive(Clone, Debug)]
pub struct BatchReport {
    /// The published version's metadata.
    pub meta: BatchMeta,
    /// Wall time of the dataflow (reading + computing), seconds.
    pub compute_secs: f64,
    /// Wall time of writing and publishing the views, seconds.
    pub write_secs: f64,
    /// Of `write_secs`, the publication (seed shards adopted, META written, the version
    /// made current), seconds; 0 when another process published.
    pub publish_secs: f64,
}

/// Progress of a running batch: events read so far, and the total to read.
#[derive(Default)]
pub struct Progress {
    /// Events read so far.
    pub done: AtomicU64,
    /// Events to read (the sum of the cut).
    pub total: AtomicU64,
}

pub(crate) fn decode_event<E: lambdaflow_operators::Event>(partition: u32, offset: u64, bytes: &[u8]) -> Result<E> {
    bincode::deserialize(bytes).map_err(|e| Error::Decode { partition, offset, detail: e.to_string() })
}

/// Runs the job in batch mode over `log` before `cut` (default: the log's current end) on
/// `workers` threads, writes the views and seeds, and publishes them as the next version.
pub fn run_batch<J: Job>(
    job: Arc<J>,
    log: Arc<Log>,
    store: &ViewStore,
    workers: usize,
    cut: Option<Vec<u64>>,
    progress: Arc<Progress>,
) -> Result<BatchReport> {
    let run = BatchRun { cut, ..BatchRun::local(workers) };
    let report = run_batch_on(job, log, store, &run, progress, || Ok(()))?;
    Ok(report.expect("process 0 publishes"))
}

/// Runs this process's part of a batch run (see [`crate::cluster`]): every worker reads its
/// partitions; views are gathered to worker 0, seeds written per process, and process 0
/// writes and publishes the version (`Some(report)`); other processes return `None`.
/// `alive` is checked while the cluster forms. Across processes, call it only in a process
/// set to [`crate::guard::fail_fast`]: a worker that fails must take its process down, or
/// its peers wait for it.
pub fn run_batch_on<J: Job>(
    job: Arc<J>,
    log: Arc<Log>,
    store: &ViewStore,
    run: &BatchRun,
    progress: Arc<Progress>,
    alive: impl FnMut() -> Result<()>,
) -> Result<Option<BatchReport>> {
    let started_ms = now_ms();
    let cut = checked_cut(&log, run)?;
    progress.total.store(cut.iter().sum(), Ordering::Relaxed);
    let windows = Windows::default();
    let computed = match compute(job.clone(), log.clone(), store, run, &cut, progress, &windows, alive) {
        Ok(c) => c,
        // A panic in the job's own code: name the event it panicked on (in one process,
        // where every worker's window is here to replay).
        Err(e @ Error::Dataflow(DataflowError::Panicked(_) | DataflowError::Failed(_))) if !run.peers.spans_processes() => {
            let windows = crate::sync::lock(&windows).clone();
            return Err(crate::diagnose::poison_event(&job, &log, &windows).unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    if run.peers.process != 0 {
        return Ok(None);
    }
    let t1 = Instant::now();
    // Views and seeds are written in parallel, one per thread: as many threads as the
    // machine has cores (at least the run's workers).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let written = write_version(store, &computed, run.peers.threads.max(cores))?;
    let t2 = Instant::now();
    let meta = publish(store, written, &*job, &computed, cut, started_ms)?;
    Ok(Some(BatchReport {
        meta,
        compute_secs: computed.compute_secs,
        write_secs: t1.elapsed().as_secs_f64(),
        publish_secs: t2.elapsed().as_secs_f64(),
    }))
}

/// The run's cut, checked to be a prefix of the log. This process reads only its own
/// partitions (a follower knows only those), so only their ends are checked.
fn checked_cut(log: &Log, run: &BatchRun) -> Result<Vec<u64>> {
    let ends = log.end_offsets();
    let cut = run.cut.clone().unwrap_or_else(|| ends.clone());
    if cut.len() != ends.len() || run.peers.own_ends(&cut).iter().zip(&ends).any(|(c, e)| c > e) {
        return Err(Error::Usage(format!("cut {cut:?} is not a prefix of the log (ends {ends:?})")));
    }
    Ok(cut)
}

/// What the dataflow of a run left for writing.
struct Computed {
    /// The views and seeds the job declared, holding their output.
    registry: Arc<Registry>,
    /// Across processes: where the other processes' seed shards are staged.
    shards: Option<PathBuf>,
    /// Rows per seed in the other processes' shards, as worker 0 learned them.
    shard_rows: Vec<usize>,
    /// Wall time of the dataflow, seconds.
    compute_secs: f64,
}

/// Per worker, the events it fed since its last completed step, as `(partition, from, to)`
/// ranges: where a panic in the job's code came from.
type Windows = Arc<Mutex<Vec<Vec<(u32, u64, u64)>>>>;

/// Phase 1: runs the dataflow over the cut on every worker of this process and waits for
/// it (and, across processes, for every process's seed shards) to complete.
#[allow(clippy::too_many_arguments)]
fn compute<J: Job>(
    job: Arc<J>,
    log: Arc<Log>,
    store: &ViewStore,
    run: &BatchRun,
    cut: &[u64],
    progress: Arc<Progress>,
    windows: &Windows,
    alive: impl FnMut() -> Result<()>,
) -> Result<Computed> {
    let peers = &run.peers;
    let workers = peers.threads;
    let registry = Arc::new(if peers.spans_processes() { Registry::gathered() } else { Registry::default() });
    let abort = Arc::new(crate::guard::Abort::default());
    // Across processes, each process writes its own seed shards (seeds are the bulk of a
    // run's output and need no order), staged here; process 0 moves them into the version.
    let shards = if peers.spans_processes() { Some(store.shard_dir(&run_id(peers, cut))?) } else { None };
    let shard_rows: Arc<Mutex<Vec<usize>>> = Arc::default();
    let local = Arc::new(std::sync::Barrier::new(workers));
    *crate::sync::lock(windows) = vec![Vec::new(); workers];
    let split = !peers.spans_processes();
    let t0 = Instant::now();
    let guards = {
        let (registry, cut, abort, max_rate, windows) = (registry.clone(), cut.to_vec(), abort.clone(), run.max_rate, windows.clone());
        let (shards, shard_rows, local, process) = (shards.clone(), shard_rows.clone(), local.clone(), peers.process);
        let (builders, others) = crate::cluster::communication(peers, run.peer_timeout, alive)?;
        let work = move |worker: &mut timely::worker::Worker| -> Result<()> {
            crate::guard::guarded(worker, &abort, |worker| {
                let (index, peers) = (worker.index(), worker.peers());
                let (mut input, errors) = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, events) = scope.new_collection::<J::Event, isize>();
                    let mut ctx = Ctx::new(scope, Mode::Batch, registry.clone(), None);
                    ctx.set_events(&events);
                    job.build(&mut ctx, events);
                    (input, ctx.errors().to_vec())
                });
                if !errors.is_empty() {
                    return Err(Error::Dataflow(DataflowError::InvalidJob { job: job.name().to_string(), detail: errors.join("; ") }));
                }
                // More workers than partitions split partitions into slices (on one
                // process: a follower process knows only the partitions its workers own).
                let mine = crate::log::split::shares(cut.len(), peers, index, split);
                let mut feed = Feed {
                    worker,
                    input: &mut input,
                    progress: &progress,
                    abort: &abort,
                    max_rate,
                    fed: 0,
                    started: Instant::now(),
                    windows: &windows,
                    slot: index % workers,
                    window: Vec::new(),
                };
                for share in mine {
                    let (from, to) = share.slice(0, cut[share.partition as usize]);
                    feed.partition(&log, share.partition, from, to)?;
                }
                progress.done.fetch_add(feed.fed % PROGRESS_EVERY_EVENTS, Ordering::Relaxed);
                // What the last steps will process.
                crate::sync::lock(&windows)[feed.slot] = std::mem::take(&mut feed.window);
                drop(input);
                // Step until every dataflow completes, or another worker fails.
                while !abort.raised() && worker.step_or_park(Some(Duration::from_millis(10))) {}
                if let Some(shards) = &shards {
                    // Every local sink has pushed its last output past this barrier. (A
                    // local worker that failed never gets here; across processes that
                    // only happens in a fail-fast worker process, which has exited.)
                    if abort.raised() {
                        return Err(crate::guard::another_worker_failed());
                    }
                    local.wait();
                    write_shards(worker, &registry, shards, process, &shard_rows, index % workers == 0)?;
                }
                Ok(())
            })
        };
        timely::execute::execute_from(builders, others, timely::WorkerConfig::default(), work)
            .map_err(|e| Error::Dataflow(DataflowError::ProcessFailed(e)))?
    };
    if peers.spans_processes() {
        println!("{}", crate::cluster::protocol::FORMED);
    }
    crate::guard::join_workers(guards)?;
    if let Some(reason) = abort.reason() {
        return Err(Error::Dataflow(DataflowError::Failed(reason)));
    }
    let shard_rows = crate::sync::lock(&shard_rows).clone();
    Ok(Computed { registry, shards, shard_rows, compute_secs: t0.elapsed().as_secs_f64() })
}

/// One worker's reading of its partitions into the dataflow's input.
struct Feed<'w, 'i, E: lambdaflow_operators::Event> {
    worker: &'w mut timely::worker::Worker,
    input: &'i mut differential_dataflow::input::InputSession<Time, E, isize>,
    progress: &'i Progress,
    abort: &'i crate::guard::Abort,
    max_rate: Option<u64>,
    /// Events fed so far.
    fed: u64,
    started: Instant,
    /// Where this worker records its window (see [`Windows`]).
    windows: &'i Mutex<Vec<Vec<(u32, u64, u64)>>>,
    slot: usize,
    /// Events fed since the last completed step.
    window: Vec<(u32, u64, u64)>,
}

impl<E: lambdaflow_operators::Event> Feed<'_, '_, E> {
    /// Feeds `partition` from offset `from` to `to`, stepping the worker as it goes, keeping
    /// to the rate limit, and reporting progress.
    fn partition(&mut self, log: &Log, partition: u32, from: u64, to: u64) -> Result<()> {
        log.read(partition, from, to, |offset, bytes| -> Result<()> {
            self.input.update(decode_event::<E>(partition, offset, bytes)?, 1);
            self.fed += 1;
            match self.window.last_mut() {
                Some((p, _, to)) if *p == partition && *to == offset => *to += 1,
                _ => self.window.push((partition, offset, offset + 1)),
            }
            if let Some(rate) = self.max_rate.filter(|_| self.fed.is_multiple_of(1024)) {
                // Keep to `rate` events/s: sleep off any lead.
                let due = Duration::from_secs_f64(self.fed as f64 / rate as f64);
                if let Some(lead) = due.checked_sub(self.started.elapsed()) {
                    std::thread::sleep(lead);
                }
            }
            if self.fed.is_multiple_of(PROGRESS_EVERY_EVENTS) {
                self.progress.done.fetch_add(PROGRESS_EVERY_EVENTS, Ordering::Relaxed);
            }
            if self.fed.is_multiple_of(STEP_EVERY_EVENTS) {
                self.input.flush();
                crate::sync::lock(self.windows)[self.slot] = self.window.clone();
                self.worker.step();
                self.window.clear();
                if self.abort.raised() {
                    return Err(crate::guard::another_worker_failed());
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// A view, or one part (shard) of a seed, to write.
enum Out {
    View(Arc<dyn AnyView>),
    /// A seed, its index in the registry's seeds, and the part.
    SeedPart(Arc<dyn AnySeed>, usize, usize),
}

/// A version written but not yet published: its views' and seeds' record counts, in
/// declaration order, and what the seeds' files are.
struct Written {
    pending: PendingVersion,
    views: Vec<(String, usize)>,
    seeds: Vec<(String, usize)>,
    /// Seeds shared with a view: `(seed, view)`.
    seed_views: Vec<(String, String)>,
    /// Shards of every seed that is not shared: one per worker of the run.
    seed_shards: usize,
    /// Per seed that is not shared, the shards other processes wrote (to adopt).
    adopt: Vec<(String, Vec<usize>)>,
}

/// Phase 2: encodes (a sort per view) and writes every view and every part of every seed
/// (one per worker) into a new pending version. They are independent: `threads` threads
/// each take the next unclaimed one, views first (the largest single items), then the seed
/// parts, which even out the threads' loads. A seed shared with a view is not written.
fn write_version(store: &ViewStore, computed: &Computed, threads: usize) -> Result<Written> {
    let pending = store.begin()?;
    let registry = &computed.registry;
    let seeds = registry.seeds();
    let mut outputs: Vec<Out> = registry.views().into_iter().map(Out::View).collect();
    for (index, seed) in seeds.iter().enumerate() {
        outputs.extend(seed.local_parts().into_iter().map(|part| Out::SeedPart(seed.clone(), index, part)));
    }
    let next = AtomicU64::new(0);
    // Files are fsync'd by a thread of their own as they come, so that the writers go on
    // encoding (CPU) while the disk flushes (an fsync waits 5-60 ms here): every one is
    // fsync'd before this returns, and so before the version is published.
    let (to_sync, written) = std::sync::mpsc::channel::<crate::store::Written>();
    let (results, synced): (Vec<Result<Vec<(usize, usize)>>>, Result<()>) = std::thread::scope(|scope| {
        let syncer = scope.spawn(move || -> Result<()> {
            // Every file is fsync'd even after a failure (the first error is returned).
            let mut first_error = Ok(());
            for file in written {
                let synced = crate::store::sync_written(file);
                if first_error.is_ok() {
                    first_error = synced;
                }
            }
            first_error
        });
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let to_sync = to_sync.clone();
                let (outputs, next, pending) = (&outputs, &next, &pending);
                scope.spawn(move || -> Result<Vec<(usize, usize)>> {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(out) = outputs.get(i) else { return Ok(done) };
                        let (file, n) = match out {
                            Out::View(view) => {
                                let (bytes, n) = view.take_batch_encoded().map_err(Error::Internal)?;
                                (pending.write_unsynced(&view.info().name, None, &bytes)?, n)
                            }
                            Out::SeedPart(seed, _, part) => {
                                let (bytes, n) = seed.take_part_encoded(*part).map_err(Error::Internal)?;
                                (pending.write_unsynced(seed.name(), Some(*part), &bytes)?, n)
                            }
                        };
                        // The syncer lives until every sender is gone.
                        let _ = to_sync.send(file);
                        done.push((i, n));
                    }
                })
            })
            .collect();
        drop(to_sync);
        let results = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Dataflow(DataflowError::Panicked("view writer panicked".into())))))
            .collect();
        let synced = syncer.join().unwrap_or_else(|_| Err(Error::Dataflow(DataflowError::Panicked("view syncer panicked".into()))));
        (results, synced)
    });
    synced?;
    // Record counts by output index, so META lists views and seeds in declaration order.
    let mut counts = vec![0usize; outputs.len()];
    for r in results {
        for (i, n) in r? {
            counts[i] = n;
        }
    }
    let mut views = Vec::new();
    let mut seed_rows = vec![0usize; seeds.len()];
    for (out, n) in outputs.iter().zip(counts) {
        match out {
            Out::View(v) => views.push((v.info().name.clone(), n)),
            Out::SeedPart(_, i, _) => seed_rows[*i] += n,
        }
    }
    let (mut rows, mut seed_views, mut adopt) = (Vec::new(), Vec::new(), Vec::new());
    let mut seed_shards = 1;
    for (i, seed) in seeds.iter().enumerate() {
        let name = seed.name().to_string();
        match seed.shared_view() {
            Some(view) => {
                let n = views.iter().find(|(v, _)| *v == view).map(|(_, n)| *n).ok_or_else(|| {
                    Error::Internal(format!("seed `{name}` is shared with view `{view}`, which the job does not declare"))
                })?;
                rows.push((name.clone(), n));
                seed_views.push((name, view));
            }
            None => {
                rows.push((name.clone(), seed_rows[i] + computed.shard_rows.get(i).copied().unwrap_or(0)));
                seed_shards = seed.parts();
                let local = seed.local_parts();
                adopt.push((name, (0..seed.parts()).filter(|p| !local.contains(p)).collect()));
            }
        }
    }
    Ok(Written { pending, views, seeds: rows, seed_views, seed_shards, adopt })
}

/// Phase 3: adopts the other processes' seed shards, writes META and publishes the version.
fn publish<J: Job>(store: &ViewStore, written: Written, job: &J, computed: &Computed, cut: Vec<u64>, started_ms: u64) -> Result<BatchMeta> {
    let Written { pending, views, seeds, seed_views, seed_shards, adopt } = written;
    for (name, parts) in &adopt {
        for part in parts {
            let shards = computed
                .shards
                .as_ref()
                .ok_or_else(|| Error::Internal(format!("seed `{name}`: part {part} was captured by no worker of this process")))?;
            // Written and fsync'd by its process before the barrier ended.
            pending.adopt_seed_shard(shards, name, *part)?;
        }
    }
    let meta = BatchMeta {
        version: pending.version(),
        job: job.name().to_string(),
        job_version: job.version(),
        events: cut.iter().sum(),
        cut,
        started_ms,
        finished_ms: now_ms(),
        views,
        seeds,
        seed_shards,
        seed_views,
        format: crate::store::FORMAT,
    };
    store.publish(pending, &meta)?;
    if let Some(shards) = &computed.shards {
        let _ = std::fs::remove_dir(shards);
    }
    Ok(meta)
}

/// Runs a batch over `cut` on `processes` worker processes started on loopback as children
/// of this one (`exe worker --role batch`), `threads` workers each; process 0 of them
/// publishes. Progress is what the children report. A child that fails, or a cluster that
/// does not form within `peer_timeout`, ends the run with an error naming the process; the
/// others are killed, and nothing is published.
pub(crate) fn run_batch_local(
    exe: &std::path::Path,
    dir: &std::path::Path,
    store: &ViewStore,
    processes: usize,
    threads: usize,
    cut: Vec<u64>,
    progress: Arc<Progress>,
    peer_timeout: std::time::Duration,
) -> Result<BatchReport> {
    use crate::cluster::{protocol, LocalCluster, Report};
    use std::time::Duration;
    progress.total.store(cut.iter().sum(), Ordering::Relaxed);
    let started_ms = now_ms();
    let args = crate::cluster::WorkerArgs::of_run(crate::cluster::Role::Batch, &cut, None, peer_timeout);
    let mut cluster = LocalCluster::start(exe, dir, "batch", processes, threads, 0, &args)?;
    let mut done = vec![0u64; processes];
    let mut formed = 0usize;
    let mut published: Option<(u64, f64, f64)> = None;
    // Process 0's output is complete once its reader reports the pipe closed.
    let mut closed0 = false;
    let form_deadline = Instant::now() + peer_timeout + Duration::from_secs(5);
    let mut handle = |report: Report, formed: &mut usize, published: &mut Option<(u64, f64, f64)>, closed0: &mut bool| match report {
        Report::Line(p, line) => {
            if line == protocol::FORMED {
                *formed += 1;
            } else if let Some(n) = line.strip_prefix(protocol::PROGRESS).and_then(|n| n.parse().ok()) {
                done[p] = n;
                progress.done.store(done.iter().sum(), Ordering::Relaxed);
            } else if p == 0 {
                *published = parse_published(&line).or(*published);
            }
        }
        Report::Closed(0) => *closed0 = true,
        Report::Closed(_) => {}
    };
    // A version with this cut published by this attempt: the run succeeded, whatever any
    // process did after process 0 published it.
    let published_here = || -> Result<Option<BatchMeta>> { store.find_published(|m| m.cut == cut && m.started_ms >= started_ms) };
    loop {
        // Take what the children reported, but not for ever: exits and deadlines are checked
        // at least every 100 ms.
        let until = Instant::now() + Duration::from_millis(100);
        while let Some(report) = cluster.next_report(Duration::from_millis(20)) {
            handle(report, &mut formed, &mut published, &mut closed0);
            if Instant::now() >= until {
                break;
            }
        }
        while let Some((p, status)) = cluster.exited()? {
            if !status.success() {
                let err = cluster.failure(p, status);
                let pids: Vec<u32> = cluster.pids().iter().map(|(_, pid)| *pid).collect();
                cluster.kill_all();
                let reported = match published {
                    Some((v, _, _)) => store.meta(v).ok().filter(|m| m.cut == cut),
                    None => None,
                };
                if let Some(meta) = reported.or(published_here()?) {
                    eprintln!("lambdaflow: {err}, after batch version {} was published; the run stands", meta.version);
                    break;
                }
                // What the failed attempt left: the other processes' seed shards, and
                // process 0's unpublished version directory.
                let _ = std::fs::remove_dir_all(store.shard_dir(&run_id(&cluster.peers, &cut))?);
                store.remove_abandoned(&pids);
                return Err(err);
            }
            cluster.forget(p);
        }
        if cluster.is_empty() {
            break;
        }
        if formed < processes && Instant::now() >= form_deadline {
            cluster.kill_all();
            return Err(Error::Dataflow(DataflowError::ProcessFailed(format!(
                "the batch cluster did not form within {}s ({formed} of {processes} processes connected)",
                peer_timeout.as_secs()
            ))));
        }
    }
    // Every child has exited; read process 0's last lines (they may arrive after its exit).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !closed0 && Instant::now() < deadline {
        if let Some(report) = cluster.next_report(Duration::from_millis(50)) {
            handle(report, &mut formed, &mut published, &mut closed0);
        }
    }
    let meta = match published {
        Some((version, _, _)) => store.meta(version)?,
        None => published_here()?
            .ok_or_else(|| Error::Dataflow(DataflowError::ProcessFailed("batch process 0 exited without publishing a version".into())))?,
    };
    if meta.cut != cut {
        return Err(Error::Internal(format!("batch version {} has cut {:?}, expected {cut:?}", meta.version, meta.cut)));
    }
    let (compute_secs, write_secs) = published.map(|(_, c, w)| (c, w)).unwrap_or((0.0, 0.0));
    progress.done.store(meta.events, Ordering::Relaxed);
    Ok(BatchReport { meta, compute_secs, write_secs, publish_secs: 0.0 })
}

/// `lambdaflow-worker published VERSION COMPUTE_SECS WRITE_SECS`.
fn parse_published(line: &str) -> Option<(u64, f64, f64)> {
    let mut f = line.strip_prefix(crate::cluster::protocol::PUBLISHED)?.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// A name for a run's shard directory that every process of it computes alike: the cut and
/// the cluster (a local cluster's ports differ per attempt, so every attempt has its own).
fn run_id(peers: &Peers, cut: &[u64]) -> String {
    let text = format!("{cut:?}/{}x{}/{:?}", peers.processes, peers.threads, peers.addresses);
    format!("{:08x}", crc32c::crc32c(text.as_bytes()))
}

/// After a run's dataflow, across processes: the leader of every process but 0 writes this
/// process's seed shards; then every worker joins a barrier dataflow in which the leaders
/// send their shards' row counts to worker 0. When it completes, every shard is on disk.
fn write_shards(
    worker: &mut timely::worker::Worker,
    registry: &Registry,
    shards: &std::path::Path,
    process: usize,
    shard_rows: &Mutex<Vec<usize>>,
    leader: bool,
) -> Result<()> {
    use timely::dataflow::operators::{Exchange, Input as _, Inspect, Probe};
    let mut rows: Vec<(usize, usize)> = Vec::new();
    if leader && process != 0 {
        // This process's workers' parts of every seed that is not shared with a view.
        for (i, seed) in registry.seeds().iter().enumerate() {
            for part in seed.local_parts() {
                let (bytes, n) = seed.take_part_encoded(part).map_err(Error::Internal)?;
                crate::store::write_seed_shard(shards, seed.name(), part, &bytes)?;
                rows.push((i, n));
            }
        }
    }
    let sink = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let (mut input, probe) = {
        let sink = sink.clone();
        worker.dataflow::<Time, _, _>(move |scope| {
            let mut input = timely::dataflow::InputHandle::<Time, timely::container::CapacityContainerBuilder<Vec<(usize, usize)>>>::new();
            let (probe, _) = scope
                .input_from(&mut input)
                .exchange(|_: &(usize, usize)| 0)
                .inspect(move |r: &(usize, usize)| sink.borrow_mut().push(*r))
                .probe();
            (input, probe)
        })
    };
    for r in rows {
        input.send(r);
    }
    drop(input);
    while worker.step_or_park(Some(std::time::Duration::from_millis(10))) {}
    let _ = probe;
    if worker.index() == 0 {
        let mut totals = crate::sync::lock(shard_rows);
        for (i, n) in sink.borrow().iter() {
            if totals.len() <= *i {
                totals.resize(i + 1, 0);
            }
            totals[*i] += n;
        }
    }
    Ok(())
}
