//! Speed mode: the same job, incrementally, over the log from a batch cut on.
//!
//! Seeds from the batch version enter at time 0; appended events enter at epochs 1, 2, ...
//! Each worker tails its share of partitions. A worker that read something moves to the
//! next epoch and tells every other worker (a control stream inside the dataflow), so an
//! idle worker never holds the frontier back. Each worker reports, per partition (or share
//! of one: more workers than partitions split them, see `log/split.rs`) it reads,
//! the offset it had read when it left an epoch, to worker 0. When an epoch completes
//! everywhere, worker 0 folds the views' updates up to it into the speed tables and
//! publishes them with the new frontier (one offset per partition) as one immutable
//! snapshot, so readers always see one consistent epoch.
//!
//! Readers never delay publication: a reader clones the `Arc` of the current snapshot
//! (under a lock held only for that clone) and reads it without any lock. The publisher
//! keeps two spare copies of the tables, snapshots it replaced: it drains the epoch's
//! updates into a small delta, merges the delta into the newest spare no reader holds
//! (brought up to date while idle with the deltas it lacks) and swaps the pointer. Only if
//! readers hold both spares does it copy the current tables instead of waiting for a
//! reader ([`SpeedLayer::snapshot_copies`] counts those). A lost spare (dropped because a
//! reader held it too long) is cloned again on a thread of its own, never by the publisher.
//! Nor does the publisher's thread, as a rule, apply a large delta to a spare copy: a
//! publication whose delta is large (a backlog published in one step) hands another spare
//! copy and the delta to a helper thread at once, and the next publication takes that copy
//! (waiting for it if the helper has no more left to do than the publisher would) instead
//! of applying the large delta again on its path; a copy found lacking a large delta later
//! is caught up by a helper too ([`LARGE_CATCH_UP_ROWS`]). The exceptions (the helper busy
//! with an earlier delta, many small deltas adding up) are counted in
//! [`SpeedLayer::spare_rows_on_path`].
//!
//! The same code runs on one process or several ([`crate::cluster`]): process 0 is the
//! serving process; it owns the log and sends its acknowledged ends to the workers of the
//! other processes, which follow the log read-only. View updates are gathered to worker 0.

use lambdaflow_operators::runtime::{AnyView, Mode, Registry, SeedSource, SpeedTable};
use lambdaflow_operators::{Ctx, Job, Time};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::{Exchange, Input as _, Inspect, Probe};

use differential_dataflow::input::Input;

use crate::batch::decode_event;
use crate::clock::now_ms;
use crate::cluster::{LocalCluster, Peers};
use crate::error::{DataflowError, Error, Result};
use crate::log::split::{shares, slots_of, Interleaved, Share};
use crate::log::Log;
use crate::store::ViewStore;

/// Events one worker feeds from one partition in one epoch, at most: bounds the work
/// between two publications while catching up.
const EPOCH_EVENTS_MAX: u64 = 256 * 1024;

/// How long an idle worker parks before polling the log again.
const IDLE_PARK: Duration = Duration::from_millis(1);

/// Commits remembered for the commit → publication histogram, at most (the oldest are
/// dropped first; only a layer that stopped publishing holds this many).
const COMMITS_MAX: usize = 4096;

/// Buckets of [`VisibleLatency`]: bucket `i` holds latencies up to 10 µs × 1.1^i (~40 s).
const LATENCY_BUCKETS: usize = 160;

/// Commit → publication latency: from an append's group commit (its fsync; the ack
/// follows at once) to the publication whose frontier first covers it. Log-spaced buckets
/// 10% wide, so percentiles are within 10%.
pub struct VisibleLatency {
    counts: [AtomicU64; LATENCY_BUCKETS],
    max_us: AtomicU64,
}

impl Default for VisibleLatency {
    fn default() -> Self {
        VisibleLatency { counts: std::array::from_fn(|_| AtomicU64::new(0)), max_us: AtomicU64::new(0) }
    }
}

impl VisibleLatency {
    fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.max_us.fetch_max(us, Ordering::Relaxed);
        let i = if us <= 10 { 0 } else { ((us as f64 / 10.0).ln() / 1.1f64.ln()).ceil() as usize };
        self.counts[i.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The bucket counts (bucket `i`: up to 10 µs × 1.1^i), so a caller can subtract two
    /// readings to get one period's distribution.
    pub fn counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The upper bound of bucket `i`, ms.
    pub fn bucket_ms(i: usize) -> f64 {
        0.01 * 1.1f64.powi(i as i32)
    }

    /// The `p` quantile (0..=1) of `counts` (from [`VisibleLatency::counts`]), ms: the upper
    /// bound of the bucket holding it (NaN when empty).
    pub fn quantile_ms(counts: &[u64], p: f64) -> f64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((total - 1) as f64 * p).round() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::bucket_ms(i);
            }
        }
        Self::bucket_ms(counts.len() - 1)
    }

    /// The largest latency observed, ms.
    pub fn max_ms(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1e3
    }
}

/// The speed layer's published state: one immutable snapshot per publication.
pub struct SpeedState {
    /// One table per view, in the registry's order.
    pub tables: Vec<Box<dyn SpeedTable>>,
    /// The last complete epoch.
    pub epoch: u64,
    /// Log offsets covered: the merged answer reflects exactly the events before these.
    pub frontier: Vec<u64>,
    /// When the frontier last moved, ms since the epoch.
    pub updated_ms: u64,
}

struct Shared {
    views: Vec<Arc<dyn AnyView>>,
    /// The run's registry, for the counters the job's operators keep.
    registry: Arc<Registry>,
    /// The published snapshot. Readers hold the lock only to clone the `Arc`; the publisher
    /// only to swap it.
    state: RwLock<Arc<SpeedState>>,
    /// Publications so far.
    publications: AtomicU64,
    /// Publications that copied the tables because readers still held every spare copy.
    snapshot_copies: AtomicU64,
    /// Times the idle publisher brought the spare copies up to date or re-created a lost one
    /// (`Spare::catch_up`).
    spare_catch_ups: AtomicU64,
    /// Whether a spare copy lacks a publication's updates.
    spare_behind: AtomicBool,
    /// Rows (keys with updates) of earlier publications' deltas applied to a spare copy to
    /// bring it up to date: on the publish path (between draining a publication's updates
    /// and swapping the pointer), by worker 0 between publications, and on a helper thread.
    spare_rows_on_path: AtomicU64,
    spare_rows_between: AtomicU64,
    spare_rows_helper: AtomicU64,
    /// Publications that waited for a helper thread's caught-up copy rather than apply a
    /// large delta on the publish path.
    helper_waits: AtomicU64,
    /// Events read from the log by each of this process's workers.
    read: Vec<AtomicU64>,
    moved: Condvar,
    moved_lock: Mutex<()>,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Raised when any worker fails, so the others stop.
    abort: crate::guard::Abort,
    /// The worker threads, so an in-process append can wake them at once.
    threads: Mutex<Vec<std::thread::Thread>>,
    /// Commits not yet published: the log's ends after each, and when it was made.
    commits: Mutex<VecDeque<(Vec<u64>, Instant)>>,
    /// Commit → publication latency.
    visible: VisibleLatency,
    /// `LAMBDAFLOW_SPEED_TRACE=FILE`: worker 0 appends one line per publication with the
    /// times of its stages (see `Trace`).
    trace: Option<Mutex<std::fs::File>>,
}

impl Shared {
    /// Records why the layer stopped; the first reason wins.
    fn record_failure(&self, reason: String) {
        let mut failure = crate::sync::lock(&self.failure);
        if failure.is_none() {
            *failure = Some(reason);
        }
    }
}

/// The seeds of batch version `version` (none without one), each read from the store once and
/// kept while the dataflow is built (every worker restores its share from the same bytes).
/// Kept as the shards they were written in, so that each worker can decode only its own
/// shards (see `SeedSource::seed_shards`).
pub(crate) struct StoreSeeds {
    store: ViewStore,
    version: Option<u64>,
    cache: Mutex<HashMap<String, Vec<Arc<Vec<u8>>>>>,
}

impl StoreSeeds {
    pub(crate) fn new(store: ViewStore, version: Option<u64>) -> Self {
        StoreSeeds { store, version, cache: Mutex::default() }
    }

    /// Drops the bytes read so far (once every worker has restored its share).
    pub(crate) fn forget(&self) {
        crate::sync::lock(&self.cache).clear();
    }
}

impl SeedSource for StoreSeeds {
    fn seed(&self, name: &str) -> Result<Option<Arc<Vec<u8>>>, String> {
        let Some(shards) = self.seed_shards(name)? else { return Ok(None) };
        Ok(Some(match shards.as_slice() {
            [one] => one.clone(),
            _ => Arc::new(crate::store::join_rows(&shards.iter().map(|s| s.as_slice()).collect::<Vec<_>>())),
        }))
    }

    fn seed_shards(&self, name: &str) -> Result<Option<Vec<Arc<Vec<u8>>>>, String> {
        let Some(version) = self.version else {
            return Ok(None);
        };
        let mut cache = crate::sync::lock(&self.cache);
        if let Some(hit) = cache.get(name) {
            return Ok(Some(hit.clone()));
        }
        let shards: Vec<Arc<Vec<u8>>> = match self.store.read_seed_shards(version, name) {
            Ok(Some(shards)) => shards.into_iter().map(Arc::new).collect(),
            Ok(None) => {
                return Err(format!(
                    "batch version {version} has no seed `{name}`: the job's dataflow changed without a new Job::version \
                     (bump the version so the engine serves from the log until a batch run under it)"
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        cache.insert(name.to_string(), shards.clone());
        Ok(Some(shards))
    }
}

/// Where a speed layer's workers run: this process only, or this process as process 0 of
/// a cluster whose other processes it starts on loopback.
#[derive(Clone, Debug)]
pub struct Spread {
    /// Processes in all, this one included.
    pub processes: usize,
    /// The binary the other processes run (`worker --role speed`).
    pub exe: PathBuf,
    /// The data directory they follow.
    pub dir: PathBuf,
    /// How long the processes have to connect to each other.
    pub peer_timeout: Duration,
}

/// A control message between speed workers, inside the dataflow (so it crosses processes).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Ctl {
    /// The sender left `epoch` having read its slot of `partition` up to `next` (for worker 0).
    Offset { partition: u32, slot: u32, epoch: u64, next: u64 },
    /// Some worker read events: move to this epoch.
    Advance(u64),
    /// The log's acknowledged ends (from worker 0 to workers that follow the log).
    Ends(Vec<u64>),
    /// The layer stops (from worker 0 to the other processes' workers).
    Stop,
}

type CtlInput = timely::dataflow::InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<(usize, Ctl)>>>;

/// A running speed layer.
pub struct SpeedLayer {
    shared: Arc<Shared>,
    guards: Mutex<Option<timely::communication::WorkerGuards<Result<()>>>>,
    /// The other processes of a cluster, when it spans several.
    cluster: Mutex<Option<LocalCluster>>,
    /// The cut this layer started from.
    pub cut: Vec<u64>,
    /// The batch version whose seeds it started from.
    pub batch_version: Option<u64>,
}

/// What [`launch`] returns: this process's shared state and its workers.
type Launched = (Arc<Shared>, timely::communication::WorkerGuards<Result<()>>);

/// Where a speed layer starts and on which processes: what [`launch`] and [`run_member`]
/// are given besides the job, the log and the store.
#[derive(Clone, Debug)]
pub(crate) struct Start {
    /// The batch version whose seeds it starts from (none: from offset 0, no seeds).
    pub batch_version: Option<u64>,
    /// The cut it starts from (the batch version's).
    pub cut: Vec<u64>,
    /// The processes and threads of the layer.
    pub peers: Peers,
    /// How long the processes have to connect to each other.
    pub peer_timeout: Duration,
}

/// One worker's part of the speed dataflow, as built.
struct Parts<E: lambdaflow_operators::Event> {
    input: differential_dataflow::input::InputSession<Time, E, isize>,
    ctl: CtlInput,
    inbox: Rc<RefCell<Vec<Ctl>>>,
    probe: timely::dataflow::ProbeHandle<Time>,
}

/// Builds the job's speed dataflow (and the control stream) on `worker`. A panic in the
/// job's `build` is caught and returned as an error, so it cannot leave the other workers
/// waiting at the start barrier.
fn build_on<J: Job>(
    worker: &mut timely::worker::Worker,
    job: &J,
    registry: &Arc<Registry>,
    seeds: Arc<dyn SeedSource>,
) -> std::result::Result<Parts<J::Event>, Vec<String>> {
    let index = worker.index();
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<J::Event, isize>();
            let mut ctx = Ctx::new(scope, Mode::Speed, registry.clone(), Some(seeds));
            ctx.set_events(&events);
            job.build(&mut ctx, events);
            let probe = ctx.probe();
            let mut ctl = CtlInput::new();
            let inbox: Rc<RefCell<Vec<Ctl>>> = Rc::default();
            let sink = inbox.clone();
            scope
                .input_from(&mut ctl)
                .exchange(|(to, _): &(usize, Ctl)| *to as u64)
                .inspect(move |(_, msg): &(usize, Ctl)| sink.borrow_mut().push(msg.clone()))
                .probe_with(&probe);
            (Parts { input, ctl, inbox, probe }, ctx.errors().to_vec())
        })
    }));
    match built {
        Ok((parts, errors)) if errors.is_empty() => Ok(parts),
        Ok((_, errors)) => Err(errors),
        Err(payload) => {
            Err(vec![format!("worker {index} panicked while building the job: {}", crate::guard::panic_message(payload.as_ref()))])
        }
    }
}

/// The state this process's workers share, for a layer that starts at `cut`.
fn new_shared(registry: &Arc<Registry>, cut: &[u64], threads: usize) -> Arc<Shared> {
    let views = registry.views();
    let tables = views.iter().map(|v| v.new_speed_table()).collect();
    Arc::new(Shared {
        views,
        registry: registry.clone(),
        state: RwLock::new(Arc::new(SpeedState { tables, epoch: 0, frontier: cut.to_vec(), updated_ms: now_ms() })),
        publications: AtomicU64::new(0),
        snapshot_copies: AtomicU64::new(0),
        spare_catch_ups: AtomicU64::new(0),
        spare_behind: AtomicBool::new(false),
        spare_rows_on_path: AtomicU64::new(0),
        spare_rows_between: AtomicU64::new(0),
        spare_rows_helper: AtomicU64::new(0),
        helper_waits: AtomicU64::new(0),
        read: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        moved: Condvar::new(),
        moved_lock: Mutex::new(()),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        threads: Mutex::new(Vec::new()),
        abort: crate::guard::Abort::default(),
        commits: Mutex::new(VecDeque::new()),
        visible: VisibleLatency::default(),
        trace: std::env::var_os("LAMBDAFLOW_SPEED_TRACE")
            .and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).ok())
            .map(Mutex::new),
    })
}

/// Builds the speed dataflow on this process's workers and starts them. Returns once every
/// local worker has built the job and the seeds are loaded.
fn launch<J: Job>(job: Arc<J>, log: Arc<Log>, store: ViewStore, start: Start, alive: impl FnMut() -> Result<()>) -> Result<Launched> {
    let Start { batch_version, cut, peers, peer_timeout } = start;
    let partitions = log.partitions() as usize;
    if cut.len() != partitions {
        return Err(Error::Usage(format!("cut has {} offsets, the log {partitions} partitions", cut.len())));
    }
    let registry = Arc::new(if peers.spans_processes() { Registry::gathered() } else { Registry::default() });
    let seeds = Arc::new(StoreSeeds::new(store, batch_version));
    let (built_tx, built_rx) = std::sync::mpsc::channel::<Result<()>>();
    let built_tx = Mutex::new(built_tx);
    let shared_slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
    let threads = peers.threads;
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let build_errors: Arc<Mutex<Vec<String>>> = Arc::default();

    let (builders, others) = crate::cluster::communication(&peers, peer_timeout, alive)?;
    let run = {
        let (registry, seeds, slot, cut, log, job, barrier, build_errors, peers) = (
            registry.clone(),
            seeds.clone(),
            shared_slot.clone(),
            cut.clone(),
            log.clone(),
            job.clone(),
            barrier.clone(),
            build_errors.clone(),
            peers.clone(),
        );
        move |worker: &mut timely::worker::Worker| -> Result<()> {
            let leader = worker.index().is_multiple_of(threads);
            let parts =
                build_on(worker, &*job, &registry, seeds.clone()).map_err(|errors| crate::sync::lock(&build_errors).extend(errors)).ok();
            // Every local worker has built (and registered its views), or failed to, past here.
            barrier.wait();
            if leader {
                let mut errors = crate::sync::lock(&build_errors).clone();
                errors.sort();
                errors.dedup();
                // The seeds are in the dataflow now: do not keep their bytes too.
                crate::sync::lock(&seeds.cache).clear();
                let result = if errors.is_empty() {
                    *crate::sync::lock(&slot) = Some(new_shared(&registry, &cut, threads));
                    Ok(())
                } else {
                    Err(Error::Dataflow(DataflowError::InvalidJob { job: job.name().to_string(), detail: errors.join("; ") }))
                };
                let _ = crate::sync::lock(&built_tx).send(result);
            }
            barrier.wait();
            let shared = crate::sync::lock(&slot).clone();
            let (Some(shared), Some(Parts { mut input, mut ctl, inbox, probe })) = (shared, parts) else {
                // The start failed: drop what was built rather than wait for it.
                crate::guard::drop_dataflows(worker);
                return Ok(());
            };
            crate::sync::lock(&shared.threads).push(std::thread::current());
            let result = crate::guard::guarded(worker, &shared.abort, |worker| {
                drive(worker, &shared, &log, &cut, &peers, &mut input, &mut ctl, &inbox, &probe)
            });
            if let Err(e) = &result {
                shared.record_failure(shared.abort.reason().unwrap_or_else(|| e.to_string()));
                shared.stop.store(true, Ordering::SeqCst);
                let _waiters = crate::sync::lock(&shared.moved_lock);
                shared.moved.notify_all();
            }
            // Stopped: drop the dataflow rather than wait for it to complete (it never
            // will: the input stays open).
            crate::guard::drop_dataflows(worker);
            result
        }
    };
    let guards = timely::execute::execute_from(builders, others, timely::WorkerConfig::default(), run)
        .map_err(|e| Error::Dataflow(DataflowError::ProcessFailed(e)))?;
    let started = match built_rx.recv() {
        Ok(r) => r,
        Err(_) => Err(Error::Dataflow(DataflowError::Failed("speed layer failed to start: a worker exited while building".into()))),
    };
    if let Err(e) = started {
        crate::guard::exit_if_fail_fast(&e.to_string());
        if peers.spans_processes() {
            // The peers may still be up, and joining waits for their connections to close:
            // join on the side; the caller stops the peers.
            std::thread::spawn(move || crate::guard::join_workers(guards));
        } else {
            let _ = crate::guard::join_workers(guards);
        }
        return Err(e);
    }
    let shared = crate::sync::lock(&shared_slot).clone().expect("the leader publishes shared state before signalling");
    Ok((shared, guards))
}

/// Runs this process's part (`peers.process > 0`) of a speed layer whose process 0 is a
/// serving process: follows the log, computes, sends view updates to worker 0, and returns
/// when process 0 stops the layer (or fails).
pub(crate) fn run_member<J: Job>(job: Arc<J>, log: Arc<Log>, store: ViewStore, start: Start) -> Result<()> {
    let (shared, guards) = launch(job, log, store, start, || Ok(()))?;
    println!("{}", crate::cluster::protocol::FORMED);
    let result = crate::guard::join_workers(guards);
    let failure = crate::sync::lock(&shared.failure).clone();
    match failure {
        Some(f) => Err(Error::Dataflow(DataflowError::Failed(f))),
        None => result,
    }
}

impl SpeedLayer {
    /// Starts the speed layer for `job` over `log` from `cut`, seeded from batch
    /// `batch_version` of `store` (which must have been computed at `cut`), on `workers`
    /// threads. Returns once the dataflow is built and the seeds are loaded.
    pub fn start<J: Job>(
        job: Arc<J>,
        log: Arc<Log>,
        store: ViewStore,
        batch_version: Option<u64>,
        cut: Vec<u64>,
        workers: usize,
    ) -> Result<SpeedLayer> {
        Self::start_spread(job, log, store, batch_version, cut, workers, None)
    }

    /// [`SpeedLayer::start`], on `spread.processes` processes of `workers` threads when
    /// `spread` is given: this one (process 0, which holds the speed tables) and others
    /// started on loopback. A process that fails makes the layer fail (see
    /// [`SpeedLayer::failure`]); the caller starts a new one.
    pub fn start_spread<J: Job>(
        job: Arc<J>,
        log: Arc<Log>,
        store: ViewStore,
        batch_version: Option<u64>,
        cut: Vec<u64>,
        workers: usize,
        spread: Option<&Spread>,
    ) -> Result<SpeedLayer> {
        let workers = workers.max(1);
        let (peers, mut cluster, timeout) = match spread.filter(|s| s.processes > 1) {
            None => (Peers::single(workers), None, crate::cluster::PEER_TIMEOUT),
            Some(s) => {
                let args = crate::cluster::WorkerArgs::of_run(crate::cluster::Role::Speed, &cut, batch_version, s.peer_timeout);
                let cluster = LocalCluster::start(&s.exe, &s.dir, "speed", s.processes, workers, 1, &args)?;
                (cluster.peers.clone(), Some(cluster), s.peer_timeout)
            }
        };
        let alive = || -> Result<()> {
            match cluster.as_mut().map(|c| c.exited()).transpose()?.flatten() {
                Some((p, status)) => Err(cluster.as_ref().map(|c| c.failure(p, status)).expect("a cluster")),
                None => Ok(()),
            }
        };
        let start = Start { batch_version, cut: cut.clone(), peers, peer_timeout: timeout };
        let (shared, guards) = launch(job, log, store, start, alive)?;
        Ok(SpeedLayer { shared, guards: Mutex::new(Some(guards)), cluster: Mutex::new(cluster), cut, batch_version })
    }

    /// The views, in the order of [`SpeedState::tables`].
    pub fn views(&self) -> &[Arc<dyn AnyView>] {
        &self.shared.views
    }

    /// Stops the layer and lets its other processes leave cleanly (worker 0 tells them),
    /// killing any still running after `grace`. The published state stays readable.
    pub fn stop_processes(&self, grace: Duration) {
        self.freeze();
        if let Some(mut cluster) = crate::sync::lock(&self.cluster).take() {
            cluster.wait_all(grace);
        }
    }

    /// Kills the layer's other processes (a failed layer never resumes; its workers here
    /// stop on their own).
    pub fn kill_processes(&self) {
        if let Some(mut cluster) = crate::sync::lock(&self.cluster).take() {
            cluster.kill_all();
        }
    }

    /// The layer's other processes, as `(process, pid)` (none on one process).
    pub fn pids(&self) -> Vec<(usize, u32)> {
        crate::sync::lock(&self.cluster).as_ref().map(|c| c.pids()).unwrap_or_default()
    }

    /// Wakes the workers: call after appending to the log in this process, so they read the
    /// new events now rather than at their next poll.
    pub fn notify(&self) {
        for t in crate::sync::lock(&self.shared.threads).iter() {
            t.unpark();
        }
    }

    /// Wakes the workers after an append made in this process whose commit left the log's
    /// ends at `ends`, and remembers when, for [`SpeedLayer::visible_latency`].
    pub fn appended(&self, ends: Vec<u64>) {
        {
            let mut commits = crate::sync::lock(&self.shared.commits);
            // A worker may have read and published the commit before it was announced here
            // (the log shows it first): then it is visible already. Queued, it would wait
            // for the next publication that covers it, minutes later on a quiet service,
            // and be recorded as that late. (A publication swaps its state before it takes
            // this lock, so one that covers `ends` is seen here or pops the entry itself.)
            if self.frontier().iter().zip(&ends).all(|(f, e)| f >= e) {
                self.shared.visible.observe(Duration::ZERO);
            } else {
                if commits.len() >= COMMITS_MAX {
                    commits.pop_front();
                }
                commits.push_back((ends, Instant::now()));
            }
        }
        self.notify();
    }

    /// Commit → publication latency of the appends announced by [`SpeedLayer::appended`].
    pub fn visible_latency(&self) -> &VisibleLatency {
        &self.shared.visible
    }

    /// The published state: an immutable snapshot, read without any lock (holding it never
    /// delays a publication).
    pub fn snapshot(&self) -> Arc<SpeedState> {
        crate::sync::read(&self.shared.state).clone()
    }

    /// Runs `f` on the published state (a snapshot: see [`SpeedLayer::snapshot`]).
    pub fn with_state<T>(&self, f: impl FnOnce(&SpeedState) -> T) -> T {
        f(&self.snapshot())
    }

    /// The published frontier.
    pub fn frontier(&self) -> Vec<u64> {
        self.snapshot().frontier.clone()
    }

    /// Events read from the log so far by each of this process's workers.
    pub fn events_read_per_worker(&self) -> Vec<u64> {
        self.shared.read.iter().map(|r| r.load(Ordering::Relaxed)).collect()
    }

    /// Publications so far (each a new epoch and frontier).
    pub fn publications(&self) -> u64 {
        self.shared.publications.load(Ordering::Relaxed)
    }

    /// Publications that copied the speed tables because readers still held every spare copy
    /// (instead of waiting for them).
    pub fn snapshot_copies(&self) -> u64 {
        self.shared.snapshot_copies.load(Ordering::Relaxed)
    }

    /// Times the publisher, idle, brought its spare copies of the tables up to date (or
    /// re-created a lost one), so that the next publication applies only its own updates.
    pub fn spare_catch_ups(&self) -> u64 {
        self.shared.spare_catch_ups.load(Ordering::Relaxed)
    }

    /// Whether a spare copy of the tables the publisher keeps still lacks a publication's
    /// updates (they catch up when it is idle and no reader holds them).
    pub fn spare_behind(&self) -> bool {
        self.shared.spare_behind.load(Ordering::Relaxed)
    }

    /// Rows (keys with updates) of earlier publications' deltas the publisher applied on
    /// the publish path to bring the spare copy it writes into up to date (besides the
    /// publication's own updates). Stays small: a large delta is applied to spare copies
    /// on a helper thread, not on the path (see [`LARGE_CATCH_UP_ROWS`]), unless the helper
    /// is busy with an earlier one or small deltas add up.
    pub fn spare_rows_on_path(&self) -> u64 {
        self.shared.spare_rows_on_path.load(Ordering::Relaxed)
    }

    /// As [`SpeedLayer::spare_rows_on_path`], applied by the publisher (worker 0) between
    /// publications: right after one, or while idle.
    pub fn spare_rows_between_publications(&self) -> u64 {
        self.shared.spare_rows_between.load(Ordering::Relaxed)
    }

    /// As [`SpeedLayer::spare_rows_on_path`], applied on a helper thread of the publisher's,
    /// off worker 0.
    pub fn spare_rows_on_helper(&self) -> u64 {
        self.shared.spare_rows_helper.load(Ordering::Relaxed)
    }

    /// Publications that waited for the helper thread's caught-up copy of the tables
    /// instead of applying a large earlier delta on the publish path.
    pub fn helper_waits(&self) -> u64 {
        self.shared.helper_waits.load(Ordering::Relaxed)
    }

    /// Why the speed layer stopped by itself, if it did.
    pub fn failure(&self) -> Option<String> {
        crate::sync::lock(&self.shared.failure).clone()
    }

    /// Waits until the frontier covers `offsets` in every partition, or `timeout` passes.
    /// Returns whether it does.
    pub fn wait_for(&self, offsets: &[u64], timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let guard = crate::sync::lock(&self.shared.moved_lock);
            if self.frontier().iter().zip(offsets).all(|(f, o)| f >= o) {
                return Ok(true);
            }
            if let Some(f) = self.failure() {
                return Err(Error::Dataflow(DataflowError::Failed(format!("speed layer failed: {f}"))));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let _ = self.shared.moved.wait_timeout(guard, (deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Stops the workers without waiting for them: the published state stays readable and
    /// its frontier never moves again. Used at a handover so frontiers never go backwards.
    pub fn freeze(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A publish that started before `stop` was set holds the write lock while it swaps;
        // once we get it, no further publish happens (publish re-checks `stop` under the lock).
        drop(crate::sync::write(&self.shared.state));
        self.notify();
    }

    /// Marks the layer failed with `reason` (it is frozen and will not catch up), so that
    /// waiters get the reason instead of a timeout.
    pub fn fail(&self, reason: String) {
        self.shared.record_failure(reason);
        self.freeze();
        self.shared.moved.notify_all();
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.notify();
        let guards = crate::sync::lock(&self.guards).take();
        let cluster = crate::sync::lock(&self.cluster).take();
        let Some(guards) = guards else { return Ok(()) };
        let Some(mut cluster) = cluster else { return crate::guard::join_workers(guards) };
        // The other processes leave on worker 0's Stop; this process's communication
        // threads end when they have. One that does not leave is killed.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(crate::guard::join_workers(guards));
        });
        cluster.wait_all(Duration::from_secs(5));
        rx.recv().unwrap_or_else(|_| Err(Error::Dataflow(DataflowError::Panicked("joining the speed workers panicked".into()))))
    }
}

impl Drop for SpeedLayer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Sends `msg` to each worker in `to` at the control input's current epoch.
fn send_all(ctl: &mut CtlInput, to: &[usize], msg: &Ctl) {
    for w in to {
        ctl.send((*w, msg.clone()));
    }
}

#[allow(clippy::too_many_arguments)]
fn drive<E: lambdaflow_operators::Event>(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    log: &Log,
    cut: &[u64],
    peers: &Peers,
    input: &mut differential_dataflow::input::InputSession<Time, E, isize>,
    ctl: &mut CtlInput,
    inbox: &RefCell<Vec<Ctl>>,
    probe: &timely::dataflow::ProbeHandle<Time>,
) -> Result<()> {
    let (index, workers) = (worker.index(), worker.peers());
    // More workers than partitions share partitions (on one process; a follower process
    // knows only the partitions its workers own whole).
    let split = !peers.spans_processes();
    let mut mine: Vec<Interleaved> =
        shares(cut.len(), workers, index, split).into_iter().map(|s| Interleaved::new(s, cut[s.partition as usize])).collect();
    let others: Vec<usize> = (0..workers).filter(|w| *w != index).collect();
    // Worker 0 sends the log's ends to the workers of other processes, which follow it.
    let followers: Vec<usize> = if index == 0 { (0..workers).filter(|w| peers.process_of(*w) != 0).collect() } else { Vec::new() };
    let mut ends_sent: Vec<u64> = cut.to_vec();
    // Worker 0: per partition and slot, the offset read when its reader left each epoch.
    let mut history: Vec<Vec<BTreeMap<u64, u64>>> = (0..cut.len())
        .map(|p| {
            (0..slots_of(cut.len(), workers, p, split))
                .map(|slot| {
                    let start =
                        Interleaved::new(Share { partition: p as u32, slot, slots: slots_of(cut.len(), workers, p, split) }, cut[p]);
                    BTreeMap::from([(0u64, start.next)])
                })
                .collect()
        })
        .collect();
    let mut epoch: u64 = 1;
    let mut target: u64 = 1;
    input.advance_to(epoch);
    input.flush();
    ctl.advance_to(epoch);
    let mut published: u64 = 0;
    let mut spare = Spare::default();
    let mut trace = Trace::default();
    let mut stopped = false;
    while !stopped {
        if shared.stop.load(Ordering::SeqCst) || shared.abort.raised() {
            if !followers.is_empty() {
                // Tell the other processes. The exchange ships a partial buffer only when the
                // input's epoch closes, hence the advance; the step sends it.
                send_all(ctl, &followers, &Ctl::Stop);
                ctl.advance_to(epoch + 1);
                worker.step();
            }
            break;
        }
        // One look at the log's ends per round: what this worker reads, and (worker 0) what
        // the followers are told.
        let ends = log.end_offsets();
        if !followers.is_empty() && ends != ends_sent {
            send_all(ctl, &followers, &Ctl::Ends(ends.clone()));
            ends_sent.clone_from(&ends);
            // New events to read, perhaps only by followers: move to the next epoch like a
            // read would, which also closes this one and so ships the message (the
            // exchange holds a partial buffer until the input's epoch closes).
            if target <= epoch {
                target = epoch + 1;
                send_all(ctl, &others, &Ctl::Advance(target));
            }
        }
        let mut read = 0u64;
        for share in mine.iter_mut() {
            let p = share.partition();
            let end = ends[p as usize];
            let mut budget = EPOCH_EVENTS_MAX;
            loop {
                let (from, to) = share.range(end, budget);
                if from >= to {
                    break;
                }
                let n = log.read(p, from, to, |offset, bytes| -> Result<()> {
                    input.update(decode_event::<E>(p, offset, bytes)?, 1);
                    Ok(())
                })?;
                read += n;
                shared.read[index % shared.read.len()].fetch_add(n, Ordering::Relaxed);
                budget -= to - from;
                share.advance(to);
            }
        }
        if read > 0 {
            trace.read(read);
        }
        if read > 0 && target <= epoch {
            target = epoch + 1;
            send_all(ctl, &others, &Ctl::Advance(target));
        }
        // Every message sent above is at `epoch`, and leaving it (below) ships them.
        if target > epoch {
            for share in &mine {
                ctl.send((0, Ctl::Offset { partition: share.partition(), slot: share.slot(), epoch, next: share.next }));
            }
            epoch = target;
            input.advance_to(epoch);
            input.flush();
            ctl.advance_to(epoch);
            trace.advanced.get_or_insert_with(Instant::now);
        }
        ctl.flush();
        trace.rounds += 1;
        worker.step_or_park(if read > 0 { Some(Duration::ZERO) } else { Some(IDLE_PARK) });
        for msg in inbox.borrow_mut().drain(..) {
            match msg {
                Ctl::Offset { partition, slot, epoch, next } => {
                    let at = history[partition as usize][slot as usize].entry(epoch).or_insert(next);
                    *at = (*at).max(next);
                }
                Ctl::Advance(t) => target = target.max(t),
                Ctl::Ends(ends) => log.follow_to(&peers.own_ends(&ends))?,
                Ctl::Stop => stopped = true,
            }
        }
        if index == 0 {
            let complete = probe.with_frontier(|f| f.first().map(|t| t.saturating_sub(1)).unwrap_or(u64::MAX));
            let complete = complete.min(epoch.saturating_sub(1));
            if complete > published {
                let completed = Instant::now();
                let cpu = shared.trace.as_ref().map(|_| thread_cpu());
                let done = publish(shared, complete, &mut history, &mut spare);
                published = complete;
                let cpu = cpu.map(|c| thread_cpu().saturating_sub(c)).unwrap_or_default();
                trace.published(shared, complete, &done, completed, cpu);
                // Published: off the path to visibility, keep the spare copies close.
                let cpu = shared.trace.as_ref().map(|_| thread_cpu());
                spare.bound_lag(shared);
                trace.catch_up_cpu += cpu.map(|c| thread_cpu().saturating_sub(c)).unwrap_or_default();
            } else if read == 0 && published + 1 >= epoch {
                // Idle (nothing read, every epoch published): prepare the next publication.
                let cpu = shared.trace.as_ref().map(|_| thread_cpu());
                if spare.catch_up(shared) {
                    trace.catch_up_cpu += cpu.map(|c| thread_cpu().saturating_sub(c)).unwrap_or_default();
                }
            }
        }
    }
    Ok(())
}

/// Worker 0's stage times between two publications, written to `LAMBDAFLOW_SPEED_TRACE`
/// (a file) when it is set: one line per publication, times in µs since the oldest commit
/// the publication made visible (`-` when it covers none), then the publication's wall and
/// CPU time (`publish_us`, `publish_cpu_us`: a large wall time with a small CPU time is a
/// publisher that waited for the core), whether it copied the tables (`copied`), and the
/// CPU time spent bringing spare copies up to date since the last one (`catch_up_cpu_us`),
/// the rows (keys with updates) of its own delta (`delta_rows`) and of earlier deltas it
/// applied on its path to bring its spare copy up to date (`catch_up_rows`), how long it
/// waited for a helper's caught-up copy (`helper_wait_us`), and whether it handed its delta
/// to a helper (`helper`).
#[derive(Default)]
struct Trace {
    /// When worker 0 first read events since the last publication, and how many it read.
    first_read: Option<Instant>,
    events: u64,
    /// When it first moved to a new epoch since the last publication.
    advanced: Option<Instant>,
    /// Rounds of its loop (each a step of the dataflow) since the last publication.
    rounds: u64,
    /// CPU time worker 0 spent bringing spare copies up to date since the last publication.
    catch_up_cpu: Duration,
}

impl Trace {
    fn read(&mut self, n: u64) {
        self.first_read.get_or_insert_with(Instant::now);
        self.events += n;
    }

    fn published(&mut self, shared: &Shared, epoch: u64, what: &Published, completed: Instant, cpu: Duration) {
        let (oldest, copied) = (what.oldest, what.copied);
        let trace = std::mem::take(self);
        let Some(file) = &shared.trace else { return };
        let done = Instant::now();
        let since = |t: Option<Instant>| match (t, oldest) {
            (Some(t), Some(o)) => {
                format!("{}", t.saturating_duration_since(o).as_micros() as i128 - o.saturating_duration_since(t).as_micros() as i128)
            }
            _ => "-".into(),
        };
        let line = format!(
"epoch {epoch} events {} rounds {} read {} advanced {} complete {} published {} publish_us {} copied {} publish_cpu_us {} catch_up_cpu_us {} \
             delta_rows {} catch_up_rows {} helper_wait_us {} helper {}\n",
            trace.events,
            trace.rounds,
            since(trace.first_read),
            since(trace.advanced),
            since(Some(completed)),
            since(Some(done)),
            done.duration_since(completed).as_micros(),
            u8::from(copied),
            cpu.as_micros(),
            trace.catch_up_cpu.as_micros(),
            what.delta_rows,
            what.catch_up_rows,
            what.waited.as_micros(),
            u8::from(what.helper)
        );
        use std::io::Write as _;
        let _ = crate::sync::lock(file).write_all(line.as_bytes());
    }
}

/// Retired snapshots the publisher keeps to write the next publications into, besides the
/// published one. With one, a reader that still holds it when the next publication comes
/// (a query thread preempted for a few ms while it held the snapshot) made the publisher
/// copy every table on the path to visibility: O(state), 70-160 ms at 40 MB. With two, a
/// publication finds an unshared copy unless two retired snapshots are held at once.
/// `LAMBDAFLOW_SPEED_SPARES=N` (1 to 4) sets another number, to compare (1 is the old
/// behaviour).
const SPARES: usize = 2;

/// The number of spare copies: [`SPARES`], or `LAMBDAFLOW_SPEED_SPARES`.
fn spares_wanted() -> usize {
    std::env::var("LAMBDAFLOW_SPEED_SPARES").ok().and_then(|v| v.trim().parse().ok()).filter(|n| (1..=4).contains(n)).unwrap_or(SPARES)
}

/// CPU time of the calling thread (for the trace: time a stage ran, not waited for the core).
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Duration {
    Duration::ZERO
}

/// A spare copy is grown (cloned) right after a publication only while the tables are at
/// most this big (a new layer starts with empty tables); otherwise, and for a copy dropped
/// later, the idle publisher clones the published tables (`Spare::catch_up`).
const SPARE_GROW_BYTES: usize = 4 << 20;

/// A retired copy that lacks more publications than this (a reader held it all that time)
/// is dropped rather than caught up.
const SPARE_LACKS_MAX: usize = 16;

/// A retired copy a reader holds is dropped once the updates it lacks exceed this fraction
/// (1/`SPARE_LACKS_BYTES_DIV`) of the published tables' size, so that a held copy does not
/// pin many large deltas; the idle publisher clones a new one.
const SPARE_LACKS_BYTES_DIV: usize = 2;

/// Right after a publication, spare copies no reader holds that lack at least this many
/// publications are brought up to date, so that a layer that is never idle (catching up a
/// backlog) does not let them fall behind: a publication that has to use such a copy would
/// apply every delta it lacks (90 ms CPU for a run of large epochs, seen in a trace).
const SPARE_LAG_AFTER_PUBLISH: usize = 2;

/// One publication's updates, one table per view (shared by the spare copies that lack it,
/// and by a helper thread that brings one of them up to date).
type Delta = Arc<Vec<Box<dyn SpeedTable>>>;

/// A spare copy that lacks more rows (keys with updates) than this is brought up to date
/// by a helper thread, not on worker 0 (neither on the publish path nor between
/// publications) while the helper is free (see [`Spare::hand_over`]). Applying ~100k rows took 40-48 ms of CPU on the
/// publish path (a publication after a backlog published in one step: the ack → visible
/// p99 tail of the service bench); this many take about 1-2 ms.
const LARGE_CATCH_UP_ROWS: usize = 4096;

/// Whether large catch-ups go to a helper thread: yes unless `LAMBDAFLOW_SPEED_HELPER=0`
/// (worker 0 applies them itself, the old behaviour, to compare).
fn helper_wanted() -> bool {
    std::env::var("LAMBDAFLOW_SPEED_HELPER").map(|v| v.trim() != "0").unwrap_or(true)
}

/// A snapshot the publisher replaced, kept to be written into again once no reader holds
/// it, and the publications' updates it lacks (oldest first).
struct Retired {
    state: Arc<SpeedState>,
    lacks: Vec<Delta>,
    /// The approximate size of `lacks`.
    lacks_bytes: usize,
    /// The rows (keys with updates) of `lacks`: the work of catching up.
    lacks_rows: usize,
}

impl Retired {
    fn current(state: Arc<SpeedState>) -> Self {
        Retired { state, lacks: Vec::new(), lacks_bytes: 0, lacks_rows: 0 }
    }

    /// Whether no reader holds it (readers clone only the published snapshot, never a
    /// retired one: a retired copy no reader holds stays so).
    fn unshared(&mut self) -> bool {
        Arc::get_mut(&mut self.state).is_some()
    }
}

/// The approximate size of some tables.
fn tables_bytes(tables: &[Box<dyn SpeedTable>]) -> usize {
    tables.iter().map(|t| t.approx_bytes()).sum()
}

/// The rows (keys with updates) of some tables.
fn tables_rows(tables: &[Box<dyn SpeedTable>]) -> usize {
    tables.iter().map(|t| t.keys()).sum()
}

/// The publisher's spare copies of the speed tables: retired snapshots, oldest first.
struct Spare {
    copies: Vec<Retired>,
    /// How many it keeps ([`SPARES`]).
    keep: usize,
    /// A copy coming back from a thread of its own, so that the publisher never stops
    /// reading for the tens of milliseconds a clone of large tables or a large catch-up
    /// takes: a lost copy cloned again (a clone made inline while idle delayed the events
    /// that arrived meanwhile: 30-60 ms at the start of a layer with a backlog, seen in a
    /// trace), or a copy a helper brings up to date with a large delta.
    pending: Option<Pending>,
    /// Whether large catch-ups go to a helper thread ([`helper_wanted`]).
    helper: bool,
}

impl Default for Spare {
    fn default() -> Self {
        Spare { copies: Vec::new(), keep: spares_wanted(), pending: None, helper: helper_wanted() }
    }
}

/// A copy of the tables being made or brought up to date on another thread, and the
/// publications' updates it will lack when it arrives (every publication after the one it
/// reflects).
struct Pending {
    /// The copy, and the rows the thread applied to it.
    arrival: std::sync::mpsc::Receiver<(Arc<SpeedState>, usize)>,
    lacks: Vec<Delta>,
    lacks_bytes: usize,
    lacks_rows: usize,
    /// For a catch-up (work about the size of the delta it applies, not a clone: work the
    /// size of the tables), the rows it applies (what the copy lacked, and the delta under
    /// way): a publication whose best copy lacks a large delta waits for it only when that
    /// is no more than its best copy lacks. `None` for a clone.
    catch_up_rows: Option<usize>,
}

/// A copy of `current`'s tables, made by `views` (read-only: readers may hold `current`).
fn clone_state(views: &[Arc<dyn AnyView>], current: &SpeedState) -> SpeedState {
    let tables = views.iter().zip(&current.tables).map(|(view, table)| view.clone_speed(table.as_ref())).collect();
    SpeedState { tables, epoch: current.epoch, frontier: current.frontier.clone(), updated_ms: current.updated_ms }
}

/// Applies `lacks` (oldest first) to `tables`: moved out of a delta no other copy needs,
/// merged by reference otherwise. Returns the rows applied.
fn apply_lacks(views: &[Arc<dyn AnyView>], tables: &mut [Box<dyn SpeedTable>], lacks: Vec<Delta>) -> usize {
    let mut rows = 0;
    for delta in lacks {
        rows += tables_rows(&delta);
        match Arc::try_unwrap(delta) {
            Ok(mut owned) => {
                for ((view, table), d) in views.iter().zip(tables.iter_mut()).zip(owned.iter_mut()) {
                    view.absorb_speed(d.as_mut(), table.as_mut());
                }
            }
            Err(shared_delta) => {
                for ((view, table), d) in views.iter().zip(tables.iter_mut()).zip(shared_delta.iter()) {
                    view.merge_speed(d.as_ref(), table.as_mut());
                }
            }
        }
    }
    rows
}

/// Runs `work` on a thread of its own; what it makes arrives on the receiver (none when no
/// thread can be had).
fn spawn_spare(
    work: impl FnOnce() -> (Arc<SpeedState>, usize) + Send + 'static,
) -> Option<std::sync::mpsc::Receiver<(Arc<SpeedState>, usize)>> {
    let (deliver, arrival) = std::sync::mpsc::sync_channel(1);
    let run = move || {
        // The publisher may have stopped waiting (dropped the receiver).
        let _ = deliver.send(work());
    };
    std::thread::Builder::new().name("lambdaflow-spare".into()).spawn(run).ok().map(|_| arrival)
}

impl Spare {
    /// Takes in the copy a thread of its own made, if it arrived (`wait`: waits for it).
    /// Keeps at most `keep` copies, dropping those that lack the most. Returns whether it
    /// kept it.
    fn receive(&mut self, shared: &Shared, wait: bool) -> bool {
        let Some(pending) = &self.pending else { return false };
        let got =
            if wait { pending.arrival.recv().map_err(|_| std::sync::mpsc::TryRecvError::Disconnected) } else { pending.arrival.try_recv() };
        match got {
            Ok((state, rows)) => {
                let Pending { lacks, lacks_bytes, lacks_rows, .. } = self.pending.take().expect("pending");
                self.copies.insert(0, Retired { state, lacks, lacks_bytes, lacks_rows });
                while self.copies.len() > self.keep {
                    // Copies readers hold go first (the arrived one may be the only copy a
                    // publication can take), then those that lack the most.
                    let worst = self
                        .copies
                        .iter_mut()
                        .enumerate()
                        .map(|(i, c)| (i, (!c.unshared(), c.lacks_rows)))
                        .max_by_key(|(_, key)| *key)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    self.copies.remove(worst);
                    if worst == 0 {
                        return false;
                    }
                }
                shared.spare_rows_helper.fetch_add(rows as u64, Ordering::Relaxed);
                true
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => false,
            // The thread died (it cannot panic short of allocation failure).
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.pending = None;
                false
            }
        }
    }

    /// The copy no reader holds that lacks the fewest rows (of equals, the most recently
    /// retired).
    fn best(&mut self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, copy) in self.copies.iter_mut().enumerate() {
            if copy.unshared() && best.is_none_or(|(_, rows)| copy.lacks_rows <= rows) {
                best = Some((i, copy.lacks_rows));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Hands copy `i` (no reader holds it) to a helper thread that applies the updates it
    /// lacks and then `more` (a publication's under way), so that worker 0 never applies a
    /// large delta to a spare copy. The copy comes back through the returned [`Pending`]
    /// (the caller keeps it in `pending`), lacking only what is published after it. (Were
    /// no thread to be had, the copy is lost; the idle publisher clones a new one.)
    fn hand_over(&mut self, shared: &Shared, i: usize, more: Option<(&Delta, usize)>) -> Option<Pending> {
        let Retired { state, mut lacks, lacks_rows, .. } = self.copies.remove(i);
        let mut state = Arc::try_unwrap(state).ok()?;
        let catch_up_rows = Some(lacks_rows + more.map_or(0, |(_, rows)| rows));
        lacks.extend(more.map(|(delta, _)| delta.clone()));
        let views = shared.views.clone();
        let arrival = spawn_spare(move || {
            let rows = apply_lacks(&views, &mut state.tables, lacks);
            (Arc::new(state), rows)
        })?;
        Some(Pending { arrival, lacks: Vec::new(), lacks_bytes: 0, lacks_rows: 0, catch_up_rows })
    }

    /// Brings the copies no reader holds that lack at least `min_lacks` publications up to
    /// date, off the publish path: those that lack a few rows here, and of the others the
    /// one lacking the fewest rows on a helper thread (one at a time). Returns whether it
    /// applied or handed over anything.
    fn tend(&mut self, shared: &Shared, min_lacks: usize) -> bool {
        let mut acted = false;
        let helper = self.helper;
        // The large copy lacking the fewest rows, `(index, rows)`.
        let mut large: Option<(usize, usize)> = None;
        for (i, copy) in self.copies.iter_mut().enumerate() {
            if copy.lacks.len() < min_lacks.max(1) || !copy.unshared() {
                continue;
            }
            if helper && copy.lacks_rows > LARGE_CATCH_UP_ROWS {
                if large.is_none_or(|(_, rows)| copy.lacks_rows < rows) {
                    large = Some((i, copy.lacks_rows));
                }
                continue;
            }
            if let Some(state) = Arc::get_mut(&mut copy.state) {
                let rows = apply_lacks(&shared.views, &mut state.tables, std::mem::take(&mut copy.lacks));
                (copy.lacks_bytes, copy.lacks_rows) = (0, 0);
                shared.spare_rows_between.fetch_add(rows as u64, Ordering::Relaxed);
                acted = true;
            }
        }
        if let Some((i, _)) = large.filter(|_| self.pending.is_none()) {
            self.pending = self.hand_over(shared, i, None);
            acted = true;
        }
        acted
    }

    /// Brings the spare copies up to date with the published tables where no reader holds
    /// them any more, so the next publication only applies its own deltas. Worker 0 calls
    /// this while idle, off the path from an append to its publication. Returns whether it
    /// applied anything.
    fn catch_up(&mut self, shared: &Shared) -> bool {
        let mut applied = self.receive(shared, false);
        applied |= self.tend(shared, 1);
        // A copy lost (never grown because the tables were large, or dropped because a
        // reader held it too long) comes back, off the path to visibility: a clone of the
        // published tables (read-only, readers may hold them), made on another thread while
        // this one goes on reading and publishing; it arrives at a later call.
        if self.pending.is_none() && self.copies.len() < self.keep {
            let current = crate::sync::read(&shared.state).clone();
            if current.tables.len() == shared.views.len() {
                let views = shared.views.clone();
                let source = current.clone();
                match spawn_spare(move || (Arc::new(clone_state(&views, &source)), 0)) {
                    Some(arrival) => {
                        self.pending = Some(Pending { arrival, lacks: Vec::new(), lacks_bytes: 0, lacks_rows: 0, catch_up_rows: None })
                    }
                    // No thread to be had: clone here, late rather than never.
                    None => {
                        self.copies.push(Retired::current(Arc::new(clone_state(&shared.views, &current))));
                        applied = true;
                    }
                }
            }
        }
        if applied {
            shared.spare_catch_ups.fetch_add(1, Ordering::Relaxed);
        }
        shared.spare_behind.store(self.behind(), Ordering::Relaxed);
        applied
    }

    /// Right after a publication: brings unshared copies that lack at least
    /// [`SPARE_LAG_AFTER_PUBLISH`] publications up to date (the others wait for idle time).
    fn bound_lag(&mut self, shared: &Shared) {
        self.receive(shared, false);
        self.tend(shared, SPARE_LAG_AFTER_PUBLISH);
    }

    /// Whether some spare copy lacks a publication's updates.
    fn behind(&self) -> bool {
        self.pending.is_some() || self.copies.iter().any(|c| !c.lacks.is_empty())
    }

    /// The tables of the copy no reader holds that lacks the fewest updates, brought up to
    /// date with the publications it lacks, and the rows that took; `None` when readers
    /// hold every copy. When that copy lacks a large delta and a helper is bringing another
    /// one up to date, waits for the helper's (it started at the publication of that delta,
    /// so it has less left to do than this thread would) and adds the wait to `waited`.
    fn take_unshared(&mut self, shared: &Shared, waited: &mut Duration) -> Option<(Vec<Box<dyn SpeedTable>>, usize)> {
        self.receive(shared, false);
        // What the best copy lacks (with none, the alternative is a clone of every table).
        let best_lacks = self.best().map_or(usize::MAX, |i| self.copies[i].lacks_rows);
        // Wait only for a helper that has no more to apply than this thread would.
        if best_lacks > LARGE_CATCH_UP_ROWS
            && self
                .pending
                .as_ref()
                .is_some_and(|p| p.lacks_rows <= LARGE_CATCH_UP_ROWS && p.catch_up_rows.is_some_and(|work| work <= best_lacks))
        {
            let start = Instant::now();
            if self.receive(shared, true) {
                shared.helper_waits.fetch_add(1, Ordering::Relaxed);
            }
            *waited += start.elapsed();
        }
        let i = self.best()?;
        let Retired { state, lacks, .. } = self.copies.remove(i);
        let mut tables = Arc::try_unwrap(state).ok()?.tables;
        if tables.len() != shared.views.len() {
            return None;
        }
        let rows = apply_lacks(&shared.views, &mut tables, lacks);
        shared.spare_rows_on_path.fetch_add(rows as u64, Ordering::Relaxed);
        Some((tables, rows))
    }

    /// Keeps `replaced` (just retired) as a spare copy; every copy now lacks `delta` (of
    /// about `delta_bytes` and `delta_rows`; the published tables hold about
    /// `published_bytes`). Drops the copies that lack more than [`SPARE_LACKS_MAX`]
    /// publications, and those a reader holds that lack more than 1/[`SPARE_LACKS_BYTES_DIV`]
    /// of the tables' size in updates. Keeps at most [`SPARES`] copies (dropping those held
    /// longest) and `extra`, a fresh clone of the published tables, when there is room.
    fn retire(
        &mut self,
        replaced: Arc<SpeedState>,
        delta: Delta,
        delta_bytes: usize,
        delta_rows: usize,
        published_bytes: usize,
        extra: Option<Arc<SpeedState>>,
    ) {
        for copy in &mut self.copies {
            copy.lacks.push(delta.clone());
            copy.lacks_bytes += delta_bytes;
            copy.lacks_rows += delta_rows;
        }
        if let Some(pending) = &mut self.pending {
            pending.lacks.push(delta.clone());
            pending.lacks_bytes += delta_bytes;
            pending.lacks_rows += delta_rows;
            // A clone that takes longer than the publisher keeps updates for it: it would
            // arrive too far behind to be worth catching up; the next idle call starts anew.
            if pending.lacks.len() > SPARE_LACKS_MAX || pending.lacks_bytes > published_bytes / SPARE_LACKS_BYTES_DIV {
                self.pending = None;
            }
        }
        self.copies.retain_mut(|c| {
            c.lacks.len() <= SPARE_LACKS_MAX
                && (c.lacks_bytes <= published_bytes / SPARE_LACKS_BYTES_DIV || Arc::get_mut(&mut c.state).is_some())
        });
        self.copies.push(Retired { state: replaced, lacks: vec![delta], lacks_bytes: delta_bytes, lacks_rows: delta_rows });
        if let Some(state) = extra.filter(|_| self.copies.len() < self.keep) {
            self.copies.push(Retired::current(state));
        }
        while self.copies.len() > self.keep {
            // Drop the copy that lacks the most (the oldest retired), held or not.
            let worst = self.copies.iter().enumerate().max_by_key(|(_, c)| c.lacks.len()).map(|(i, _)| i).unwrap_or(0);
            self.copies.remove(worst);
        }
    }
}

/// What [`publish`] did, for the trace.
#[derive(Default)]
struct Published {
    /// When the oldest commit it made visible was made (if it made any visible).
    oldest: Option<Instant>,
    /// Whether it copied the tables (readers held every spare copy).
    copied: bool,
    /// The rows of its own delta.
    delta_rows: usize,
    /// The rows of earlier deltas it applied to bring its spare copy up to date.
    catch_up_rows: usize,
    /// How long it waited for a helper's caught-up copy.
    waited: Duration,
    /// Whether it handed its (large) delta to a helper that brings another copy up to date.
    helper: bool,
}

/// Folds every view's updates up to `epoch` into a new snapshot of the speed tables and
/// publishes it with the frontier at the offsets the partitions' owners had read when they
/// left `epoch` (all delivered: the epoch is complete). Never waits for a reader: the
/// tables it writes are a spare copy no reader holds, or a fresh copy. Returns what it did
/// ([`Published`]: when the oldest commit it made visible was made, whether it had to copy
/// the tables, ...).
fn publish(shared: &Shared, epoch: u64, history: &mut [Vec<BTreeMap<u64, u64>>], spare: &mut Spare) -> Published {
    // Per partition, the least position of its slots: every event below it was read.
    let frontier: Vec<u64> = history
        .iter_mut()
        .map(|slots| {
            slots
                .iter_mut()
                .map(|h| {
                    let at = h.range(..=epoch).next_back().map(|(_, o)| *o).expect("epoch 0 is always recorded");
                    // Older entries are no longer needed.
                    let keep = h.split_off(&epoch);
                    *h = keep;
                    h.insert(epoch, at);
                    at
                })
                .min()
                .expect("a partition has at least one slot")
        })
        .collect();
    let deltas: Vec<Box<dyn SpeedTable>> = shared
        .views
        .iter()
        .map(|view| {
            let mut delta = view.new_speed_table();
            view.drain_speed(epoch, delta.as_mut());
            delta
        })
        .collect();
    let mut done = Published { delta_rows: tables_rows(&deltas), ..Published::default() };
    let deltas: Delta = Arc::new(deltas);
    // A spare copy no reader holds (brought up to date); else a copy of the current tables
    // (held by readers, read-only here).
    let mut tables = match spare.take_unshared(shared, &mut done.waited) {
        Some((tables, rows)) => {
            done.catch_up_rows = rows;
            tables
        }
        None => {
            shared.snapshot_copies.fetch_add(1, Ordering::Relaxed);
            done.copied = true;
            let current = crate::sync::read(&shared.state).clone();
            clone_state(&shared.views, &current).tables
        }
    };
    // A large delta: a helper brings another spare copy up to date with it now, on another
    // core while this thread applies it to the tables it publishes, so that the next
    // publication finds a copy that lacks only small deltas (without it, the next one
    // applied this delta again on its path: 40-48 ms of CPU after a backlog).
    let helper = match spare.best() {
        Some(i) if spare.helper && done.delta_rows > LARGE_CATCH_UP_ROWS && spare.pending.is_none() => {
            spare.hand_over(shared, i, Some((&deltas, done.delta_rows)))
        }
        _ => None,
    };
    done.helper = helper.is_some();
    for ((view, table), delta) in shared.views.iter().zip(tables.iter_mut()).zip(deltas.iter()) {
        view.merge_speed(delta.as_ref(), table.as_mut());
    }
    let updated_ms = now_ms();
    let published_bytes = tables_bytes(&tables);
    let delta_bytes = tables_bytes(&deltas);
    let next = Arc::new(SpeedState { tables, epoch, frontier, updated_ms });
    let published = next.clone();
    let mut state = crate::sync::write(&shared.state);
    if shared.stop.load(Ordering::SeqCst) {
        // Frozen (see `SpeedLayer::freeze`): the published state must not move any more.
        return done;
    }
    // Readers rely on it: a published frontier never moves backwards.
    assert!(
        epoch >= state.epoch && next.frontier.iter().zip(&state.frontier).all(|(new, old)| new >= old),
        "speed layer would publish epoch {epoch} at {:?} after epoch {} at {:?}",
        next.frontier,
        state.epoch,
        state.frontier
    );
    // Counted before the swap, so whoever sees the new frontier sees the count too.
    shared.publications.fetch_add(1, Ordering::Relaxed);
    let covered = next.frontier.clone();
    // Before the swap: whoever sees the new state sees that the spare lacks its updates.
    shared.spare_behind.store(true, Ordering::Relaxed);
    let replaced = std::mem::replace(&mut *state, next);
    drop(state);
    // Under the waiters' lock: a waiter checks the frontier and starts waiting under it, so
    // it cannot miss this wake-up.
    {
        let _waiters = crate::sync::lock(&shared.moved_lock);
        shared.moved.notify_all();
    }
    // After the swap, off the path to visibility: while the tables are small (a new layer),
    // a second spare copy costs next to nothing (a clone of the published tables, read-only).
    let extra = (spare.copies.len() + 1 < spare.keep && spare.pending.is_none() && helper.is_none() && published_bytes <= SPARE_GROW_BYTES)
        .then(|| Arc::new(clone_state(&shared.views, &published)));
    drop(published);
    spare.retire(replaced, deltas, delta_bytes, done.delta_rows, published_bytes, extra);
    // Set after `retire`: the helper's copy already has this publication's updates.
    if helper.is_some() {
        spare.pending = helper;
    }
    let now = Instant::now();
    let mut commits = crate::sync::lock(&shared.commits);
    while let Some((ends, at)) = commits.front() {
        if !ends.iter().zip(&covered).all(|(e, f)| e <= f) {
            break;
        }
        done.oldest.get_or_insert(*at);
        shared.visible.observe(now.saturating_duration_since(*at));
        commits.pop_front();
    }
    done
}

impl SpeedLayer {
    /// The counters the job's operators keep in this layer, in this process (e.g.
    /// `interval_join.NAME.second_rows`), by name.
    /// Then the layer's own: `spare.rows_on_path`, `spare.rows_between_publications`,
    /// `spare.rows_on_helper` and `spare.helper_waits` (see
    /// [`SpeedLayer::spare_rows_on_path`] and the next ones).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut counters = self.shared.registry.counters();
        counters.extend([
            ("spare.rows_on_path".to_string(), self.spare_rows_on_path()),
            ("spare.rows_between_publications".to_string(), self.spare_rows_between_publications()),
            ("spare.rows_on_helper".to_string(), self.spare_rows_on_helper()),
            ("spare.helper_waits".to_string(), self.helper_waits()),
        ]);
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: u64) -> Arc<SpeedState> {
        Arc::new(SpeedState { tables: Vec::new(), epoch, frontier: vec![epoch], updated_ms: 0 })
    }

    /// A copy a reader holds is dropped once the updates it lacks exceed half the tables'
    /// size, long before it lacks `SPARE_LACKS_MAX` publications; one no reader holds is kept
    /// (it is caught up instead).
    #[test]
    fn a_held_copy_is_dropped_once_its_lacking_updates_outgrow_half_the_tables() {
        let mut spare = Spare { copies: Vec::new(), keep: 2, pending: None, helper: true };
        let held = state(1);
        spare.copies.push(Retired::current(held.clone()));
        spare.copies.push(Retired::current(state(2)));
        // 2 × 300 bytes lacked of 1000: kept.
        spare.retire(state(3), Arc::new(Vec::new()), 300, 0, 1000, None);
        assert!(spare.copies.iter().any(|c| Arc::ptr_eq(&c.state, &held)));
        // 3 × 300 > 1000 / 2: dropped, while the unheld copies stay.
        spare.retire(state(4), Arc::new(Vec::new()), 300, 0, 1000, None);
        assert!(!spare.copies.iter().any(|c| Arc::ptr_eq(&c.state, &held)), "a held copy pins too many updates");
        assert_eq!(spare.copies.len(), 2);
        assert!(spare.copies.iter().all(|c| c.lacks_bytes <= 1000 / SPARE_LACKS_BYTES_DIV || Arc::strong_count(&c.state) == 1));
    }

    /// A copy that lacks `rows` rows in one (here empty) delta.
    fn lacking(state: Arc<SpeedState>, rows: usize) -> Retired {
        Retired { state, lacks: vec![Arc::new(Vec::new())], lacks_bytes: 0, lacks_rows: rows }
    }

    /// A publication writes into the spare copy that lacks the fewest rows, not the newest
    /// one (which lacks the previous publication's delta, however large).
    #[test]
    fn a_publication_takes_the_spare_that_lacks_the_fewest_rows() {
        let shared = new_shared(&Arc::new(Registry::default()), &[0], 1);
        let mut spare = Spare { copies: Vec::new(), keep: 2, pending: None, helper: true };
        spare.copies.push(lacking(state(1), 10));
        spare.copies.push(lacking(state(2), 100_000));
        let mut waited = Duration::ZERO;
        assert!(spare.take_unshared(&shared, &mut waited).is_some());
        assert_eq!(spare.copies.iter().map(|c| c.state.epoch).collect::<Vec<_>>(), vec![2], "took the copy lacking 100k rows");
    }

    /// When every spare lacks a large delta and a helper is bringing a copy up to date, the
    /// publication takes the helper's copy (waiting for it if need be) instead of applying
    /// the large delta on its path.
    #[test]
    fn a_publication_takes_the_helpers_copy_over_one_that_lacks_a_large_delta() {
        let shared = new_shared(&Arc::new(Registry::default()), &[0], 1);
        let mut spare = Spare { copies: Vec::new(), keep: 2, pending: None, helper: true };
        spare.copies.push(lacking(state(1), LARGE_CATCH_UP_ROWS + 1));
        let (deliver, arrival) = std::sync::mpsc::sync_channel(1);
        spare.pending = Some(Pending { arrival, lacks: Vec::new(), lacks_bytes: 0, lacks_rows: 0, catch_up_rows: Some(0) });
        let helper = std::thread::spawn(move || deliver.send((state(2), 7)).expect("the publisher takes it"));
        let mut waited = Duration::ZERO;
        assert!(spare.take_unshared(&shared, &mut waited).is_some());
        helper.join().expect("helper");
        assert_eq!(spare.copies.iter().map(|c| c.state.epoch).collect::<Vec<_>>(), vec![1], "applied the large delta on the path");
        assert_eq!(shared.spare_rows_on_path.load(Ordering::Relaxed), 0);
        assert_eq!(shared.spare_rows_helper.load(Ordering::Relaxed), 7);
    }

    /// Off the path too, a copy that lacks a large delta is caught up on a helper thread,
    /// one that lacks a small one by the publisher.
    #[test]
    fn between_publications_a_large_catch_up_goes_to_the_helper() {
        let shared = new_shared(&Arc::new(Registry::default()), &[0], 1);
        let mut spare = Spare { copies: Vec::new(), keep: 2, pending: None, helper: true };
        spare.copies.push(lacking(state(1), 10));
        spare.copies.push(lacking(state(2), LARGE_CATCH_UP_ROWS + 1));
        assert!(spare.tend(&shared, 1));
        assert_eq!(spare.copies.iter().map(|c| (c.state.epoch, c.lacks.len())).collect::<Vec<_>>(), vec![(1, 0)]);
        assert!(spare.pending.as_ref().is_some_and(|p| p.catch_up_rows.is_some()));
        assert!(spare.receive(&shared, true));
        assert_eq!(spare.copies.len(), 2);
        assert!(spare.copies.iter().all(|c| c.lacks.is_empty()));
    }
}
