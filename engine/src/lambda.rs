//! The serving layer: one batch version + one speed layer, merged on read, handed over
//! atomically.
//!
//! [`Lambda`] owns the master dataset, the view store and the current [`Serving`] pair. A
//! query takes the current pair (an `Arc`), takes the speed layer's published snapshot
//! (another `Arc`: no lock is held while it reads, so it never delays a publication), and
//! consolidates the batch view's records for the key with the speed layer's updates: one
//! consistent state, "batch at cut C + speed over [C, frontier)". A handover builds the next
//! pair completely (new batch version loaded, new speed layer seeded from it and caught up
//! to at least the old frontier) before swapping the pointer, so readers see the old pair
//! or the new one, never a mix; the old speed layer, and its state, is then dropped.

use lambdaflow_operators::runtime::BatchTable;
use lambdaflow_operators::{Answer, Job, Selection, ViewInfo};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::append::Appender;
use crate::batch::{run_batch_on, BatchReport, BatchRun, Progress};
use crate::clock::now_ms;
use crate::error::{DataflowError, Error, Result};
use crate::log::{Log, LogConfig, Position};
use crate::speed::{SpeedLayer, Spread};
use crate::store::{BatchMeta, ViewStore};

/// A loaded batch version: its metadata and one decoded table per view.
pub struct LoadedBatch {
    /// The version's metadata.
    pub meta: BatchMeta,
    tables: Vec<Option<Arc<dyn BatchTable>>>,
}

impl LoadedBatch {
    /// Records per view, in the job's view order.
    pub fn table_lens(&self) -> Vec<usize> {
        self.tables.iter().map(|t| t.as_ref().map(|t| t.len()).unwrap_or(0)).collect()
    }
}

/// One batch version and the speed layer seeded from it.
pub struct Serving {
    /// Unique per pair built by this process: a cache keyed by it never confuses two pairs.
    pub id: u64,
    /// The batch version (none before the first batch run).
    pub batch: Option<Arc<LoadedBatch>>,
    /// The speed layer over the log from the batch cut (or from 0).
    pub speed: SpeedLayer,
}

/// Which state an answer reflects and how old it is.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Freshness {
    /// The batch version merged in, if any.
    pub batch_version: Option<u64>,
    /// The batch cut: one offset per partition.
    pub batch_cut: Vec<u64>,
    /// Age of the batch view (since its run finished), ms.
    pub batch_age_ms: Option<u64>,
    /// Speed frontier: the answer covers exactly the events before these offsets.
    pub speed_frontier: Vec<u64>,
    /// Events in the speed layer (frontier − cut).
    pub speed_events: u64,
    /// Acknowledged events the speed layer has not applied yet (log end − frontier).
    pub speed_lag_events: u64,
    /// Since the speed frontier last moved, ms.
    pub speed_age_ms: u64,
    /// Why the speed layer stopped, if it failed: the answer then reflects its last good
    /// state (exact, but no longer moving) until a restarted layer takes over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_failure: Option<String>,
}

/// A merged answer set with its freshness.
#[derive(Clone, Debug, Serialize)]
pub struct QueryResult {
    /// The view queried.
    pub view: String,
    /// The answers, in key order.
    pub answers: Vec<Answer>,
    /// What they reflect.
    pub freshness: Freshness,
}

/// The state of a data directory, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The job.
    pub job: String,
    /// The job's version.
    pub job_version: u32,
    /// Events per partition (the log's end offsets).
    pub log_end: Vec<u64>,
    /// Bytes on disk per partition.
    pub log_bytes: Vec<u64>,
    /// The serving batch version.
    pub batch: Option<BatchMeta>,
    /// The speed layer's freshness.
    pub freshness: Freshness,
    /// Keys held in the speed tables, per view.
    pub speed_keys: Vec<(String, usize)>,
    /// Approximate bytes held in the speed tables.
    pub speed_bytes: usize,
    /// Why the serving speed layer stopped, if it failed (it is being restarted).
    pub speed_failure: Option<String>,
    /// Speed layers restarted after a failure since this process started.
    pub speed_restarts: u64,
    /// Publications of the serving speed layer (each a new epoch and frontier).
    pub speed_publications: u64,
    /// Of those, the ones that copied the speed tables because a reader still held the
    /// spare copy (a publication never waits for a reader).
    pub speed_snapshot_copies: u64,
    /// Events each of the serving speed layer's workers in this process has read.
    pub speed_events_read: Vec<u64>,
    /// The serving speed layer's commit → publication latency histogram: bucket counts
    /// (see [`crate::speed::VisibleLatency::counts`]; trailing empty buckets left out).
    pub speed_visible_counts: Vec<u64>,
    /// Its largest commit → publication latency, ms.
    pub speed_visible_max_ms: f64,
    /// Processes per layer, and the speed layer's other processes as `(process, pid)`.
    pub cluster: ClusterStatus,
    /// The counters the job's operators keep in the serving speed layer (this process),
    /// by name: `interval_join.NAME.second_rows` counts the keys of interval join NAME
    /// that got a second dimension row since the cut (inexact until the next batch run).
    pub speed_counters: Vec<(String, u64)>,
}

/// The processes of each layer, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    /// Processes per batch run.
    pub batch_processes: usize,
    /// Processes of the speed layer.
    pub speed_processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// The serving speed layer's processes other than this one: `(process, pid)`.
    pub speed_pids: Vec<(usize, u32)>,
}

/// Options for opening a data directory.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads for batch and speed dataflows.
    pub workers: usize,
    /// Log configuration for a new data directory.
    pub log: LogConfig,
    /// How long idempotency keys are remembered.
    pub key_retention: Duration,
    /// At most this many idempotency keys are remembered (the oldest are forgotten first).
    pub max_keys: usize,
    /// How many processes batch runs and the speed layer use.
    pub cluster: ClusterOptions,
    /// Events per second each batch worker reads at most (`None`: as fast as it can), so a
    /// batch run does not take every core from the speed layer and queries.
    pub batch_max_rate: Option<u64>,
}

/// Processes for each layer (see [`crate::cluster`]). The layers scale independently: a
/// batch run can use more processes than the speed layer. With more than one, the other
/// processes are started on loopback as `worker` children of this one, each with
/// [`Options::workers`] threads.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Processes per batch run (all children; process 0 of them publishes).
    pub batch_processes: usize,
    /// Processes of the speed layer (this one, which holds the speed tables, and children).
    pub speed_processes: usize,
    /// The binary the children run (default: this one).
    pub exe: Option<PathBuf>,
    /// How long the processes of a run have to connect to each other.
    pub peer_timeout: Duration,
    /// Attempts per batch run on a cluster: a failed attempt (a process died) is retried
    /// from scratch, at the same cut.
    pub batch_attempts: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { batch_processes: 1, speed_processes: 1, exe: None, peer_timeout: crate::cluster::PEER_TIMEOUT, batch_attempts: 3 }
    }
}

impl ClusterOptions {
    /// The binary worker processes run.
    pub fn exe_path(&self) -> Result<PathBuf> {
        match &self.exe {
            Some(exe) => Ok(exe.clone()),
            None => std::env::current_exe().map_err(|source| Error::Io {
                path: PathBuf::from("/proc/self/exe"),
                what: "find this binary (to start worker processes)".into(),
                source,
            }),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            log: LogConfig::default(),
            key_retention: crate::keys::KEY_RETENTION_DEFAULT,
            max_keys: crate::keys::KEYS_MAX_DEFAULT,
            cluster: ClusterOptions::default(),
            batch_max_rate: None,
        }
    }
}

/// Which batch version a new serving pair uses.
#[derive(Clone, Copy, Debug)]
enum Pick {
    /// The store's current version.
    Current,
    /// This version.
    Version(u64),
    /// None: the speed layer covers the log from offset 0.
    Nothing,
}

impl Pick {
    /// The version `serving` uses (a restart or a restore keeps it).
    fn of(serving: &Serving) -> Pick {
        serving.batch.as_ref().map(|b| Pick::Version(b.meta.version)).unwrap_or(Pick::Nothing)
    }
}

/// A job running over a data directory: master dataset, batch views, speed layer.
pub struct Lambda<J: Job> {
    job: Arc<J>,
    log: Arc<Log>,
    dir: PathBuf,
    workers: usize,
    cluster: ClusterOptions,
    batch_max_rate: Option<u64>,
    /// Speed layers restarted after a failure.
    restarts: std::sync::atomic::AtomicU64,
    current: RwLock<Arc<Serving>>,
    handover: Mutex<()>,
    batch: Mutex<()>,
    /// The only way to append (owns the writable log and the key journal).
    appender: Appender,
}

static NEXT_SERVING_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<J: Job> Lambda<J> {
    /// Opens (or creates) the data directory `dir`, recovers the log, loads the current
    /// batch version and starts the speed layer from its cut.
    pub fn open(job: J, dir: &Path, opts: Options) -> Result<Lambda<J>> {
        let job = Arc::new(job);
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            what: "create data directory".into(),
            source,
        })?;
        let appender = Appender::open_with_keys(dir, opts.log, opts.key_retention, opts.max_keys)?;
        let log = appender.log().clone();
        let serving = Self::serving_for(&job, &log, dir, opts.workers, &opts.cluster, Pick::Current)?;
        Ok(Lambda {
            job,
            log,
            dir: dir.to_path_buf(),
            workers: opts.workers,
            cluster: opts.cluster,
            batch_max_rate: opts.batch_max_rate,
            restarts: std::sync::atomic::AtomicU64::new(0),
            current: RwLock::new(Arc::new(serving)),
            handover: Mutex::new(()),
            batch: Mutex::new(()),
            appender,
        })
    }

    /// Builds a serving pair for the batch version `pick` chooses (the store's current one
    /// is used only if it was computed by this job and version; otherwise, and for
    /// [`Pick::Nothing`], no batch and speed from offset 0).
    fn serving_for(job: &Arc<J>, log: &Arc<Log>, dir: &Path, workers: usize, cluster: &ClusterOptions, pick: Pick) -> Result<Serving> {
        let store = ViewStore::open(dir)?;
        let meta = match pick {
            Pick::Version(v) => Some(store.meta(v)?),
            // One written by a newer lambdaflow (a newer format) is not read, but the log
            // holds everything: serve from it, as for another job's version.
            Pick::Current => match store.current()? {
                Some(v) => Some(store.meta_of_any_format(v)?),
                None => None,
            },
            Pick::Nothing => None,
        };
        let meta = meta.filter(|m| batch_usable(&**job, m, log.partitions(), "serving"));
        let cut = meta.as_ref().map(|m| m.cut.clone()).unwrap_or_else(|| vec![0; log.partitions() as usize]);
        // A batch view covering records the log no longer has would merge with a speed layer
        // that starts past the log's end: refuse instead of serving a wrong answer.
        let ends = log.end_offsets();
        if let Some(p) = (0..cut.len()).find(|p| cut[*p] > ends[*p]) {
            return Err(Error::Inconsistent(format!(
                "batch version {} covers partition {p} up to offset {}, but the log ends at {}: acknowledged records \
                 are missing from the log (see `verify`); refusing to serve answers that would be wrong",
                meta.as_ref().map(|m| m.version).unwrap_or(0),
                cut[p],
                ends[p]
            )));
        }
        let spread = if cluster.speed_processes > 1 {
            Some(Spread {
                processes: cluster.speed_processes,
                exe: cluster.exe_path()?,
                dir: dir.to_path_buf(),
                peer_timeout: cluster.peer_timeout,
            })
        } else {
            None
        };
        let speed = SpeedLayer::start_spread(
            job.clone(),
            log.clone(),
            ViewStore::open(dir)?,
            meta.as_ref().map(|m| m.version),
            cut,
            workers,
            spread.as_ref(),
        )?;
        let batch = match meta {
            None => None,
            Some(meta) => {
                let mut tables = Vec::new();
                for view in speed.views() {
                    let name = &view.info().name;
                    let bytes = store.read_view(meta.version, name)?.ok_or_else(|| {
                        Error::Inconsistent(format!(
                            "batch version {} has no view `{name}`: the job changed without a new Job::version \
                             (bump it, and the engine serves from the log until a batch run under it)",
                            meta.version
                        ))
                    })?;
                    tables.push(Some(view.decode_batch(&bytes).map_err(Error::Inconsistent)?));
                }
                Some(Arc::new(LoadedBatch { meta, tables }))
            }
        };
        Ok(Serving { id: NEXT_SERVING_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed), batch, speed })
    }

    /// The job.
    pub fn job(&self) -> &J {
        &self.job
    }

    /// The master dataset, for reading. Appends go through [`Lambda::append`] or
    /// [`Lambda::appender`].
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The current serving pair.
    pub fn serving(&self) -> Arc<Serving> {
        crate::sync::read(&self.current).clone()
    }

    /// The job's views.
    pub fn views(&self) -> Vec<ViewInfo> {
        self.serving().speed.views().iter().map(|v| v.info().clone()).collect()
    }

    /// Appends events durably, unkeyed (see [`Appender::append`]), and wakes the speed layer.
    pub fn append(&self, events: &[J::Event]) -> Result<Vec<Position>> {
        let positions = self.appender.append(events)?;
        self.notify();
        Ok(positions)
    }

    /// The append path (keyed group commits: see [`crate::append`]). Whoever appends through
    /// it calls [`Lambda::notify`] afterwards.
    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    /// Wakes the speed layer after an append to the log made in this process.
    pub fn notify(&self) {
        self.serving().speed.appended(self.log.end_offsets());
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the speed layer reflects every event acknowledged before this call.
    pub fn sync(&self, timeout: Duration) -> Result<()> {
        self.sync_with(timeout, |_, _| {})
    }

    /// As [`Lambda::sync`], calling `progress(done, total)` with the events the speed layer
    /// has applied since its cut and the number it must reach, every 50 ms while it waits.
    pub fn sync_with(&self, timeout: Duration, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let ends = self.log.end_offsets();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Re-fetch the pair each round: a handover may replace (and freeze) it meanwhile.
            let serving = self.serving();
            if serving.speed.wait_for(&ends, Duration::from_millis(50))? {
                return Ok(());
            }
            let since_cut = |offsets: &[u64]| -> u64 { offsets.iter().zip(&serving.speed.cut).map(|(o, c)| o.saturating_sub(*c)).sum() };
            progress(since_cut(&serving.speed.frontier()), since_cut(&ends));
            if std::time::Instant::now() >= deadline {
                return Err(Error::Dataflow(DataflowError::Timeout(format!("speed layer did not reach {ends:?} within {timeout:?}"))));
            }
        }
    }

    /// The merged answers of `view` for `sel`, with their freshness.
    pub fn query(&self, view: &str, sel: &Selection) -> Result<QueryResult> {
        self.query_on(&self.serving(), view, sel)
    }

    /// As [`Lambda::query`], on a given serving pair (from [`Lambda::serving`]).
    pub fn query_on(&self, serving: &Serving, view: &str, sel: &Selection) -> Result<QueryResult> {
        let speed = &serving.speed;
        let i = view_index(speed, view)?;
        let batch_table = serving.batch.as_ref().and_then(|b| b.tables[i].clone());
        let (answers, frontier, updated_ms) = speed
            .with_state(|state| {
                speed.views()[i]
                    .query(batch_table.as_deref(), state.tables[i].as_ref(), sel)
                    .map(|a| (a, state.frontier.clone(), state.updated_ms))
            })
            .map_err(Error::Usage)?;
        Ok(QueryResult { view: view.to_string(), answers, freshness: self.freshness(serving, frontier, updated_ms) })
    }

    /// Runs a batch at the log's current end and hands over to it. Batch runs of one `Lambda` run one at a time.
    pub fn batch_and_handover(&self, progress: Arc<Progress>) -> Result<BatchReport> {
        let _one_batch_at_a_time = crate::sync::lock(&self.batch);
        let store = ViewStore::open(&self.dir)?;
        let report = if self.cluster.batch_processes > 1 {
            self.run_batch_cluster(&store, progress)?
        } else {
            let run = BatchRun { max_rate: self.batch_max_rate, ..BatchRun::local(self.workers) };
            run_batch_on(self.job.clone(), self.log.clone(), &store, &run, progress, || Ok(()))?.expect("process 0 publishes")
        };
        self.handover(report.meta.version)?;
        Ok(report)
    }

    /// A batch run on `batch_processes` local worker processes, at the log's current end;
    /// an attempt that fails (a process died, or the cluster did not form) is retried at
    /// the same cut, up to `batch_attempts` times.
    fn run_batch_cluster(&self, store: &ViewStore, progress: Arc<Progress>) -> Result<BatchReport> {
        let cut = self.log.end_offsets();
        let exe = self.cluster.exe_path()?;
        let attempts = self.cluster.batch_attempts.max(1);
        let mut attempt = 1;
        loop {
            progress.done.store(0, std::sync::atomic::Ordering::Relaxed);
            let result = crate::batch::run_batch_local(
                &exe,
                &self.dir,
                store,
                self.cluster.batch_processes,
                self.workers,
                cut.clone(),
                progress.clone(),
                self.cluster.peer_timeout,
            );
            match result {
                Ok(report) => return Ok(report),
                Err(e) if attempt < attempts => {
                    eprintln!("lambdaflow: batch run attempt {attempt} of {attempts} failed ({e}); retrying at the same cut");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::Dataflow(DataflowError::ProcessFailed(format!(
                        "batch run failed {attempts} time(s); the last failure: {e}"
                    ))))
                }
            }
        }
    }

    /// If the speed layer failed (in a cluster: one of its processes died), starts a new
    /// one from the current batch version's cut, lets it catch up to where the failed one
    /// stopped, and swaps it in. The failed layer keeps answering (its frozen state is
    /// still exact, just not moving) until then. Returns whether it restarted one.
    pub fn restart_speed_if_failed(&self) -> Result<bool> {
        let _one_at_a_time = crate::sync::lock(&self.handover);
        let old = self.serving();
        let Some(reason) = old.speed.failure() else { return Ok(false) };
        eprintln!("lambdaflow: the speed layer failed ({reason}); restarting it from the batch cut");
        // Frozen first, so its frontier cannot move between here and the swap; its other
        // processes (if any) are of no more use.
        old.speed.freeze();
        old.speed.kill_processes();
        let next = Self::serving_for(&self.job, &self.log, &self.dir, self.workers, &self.cluster, Pick::of(&old))?;
        // No reader may see the frontier go backwards.
        if !next.speed.wait_for(&old.speed.frontier(), Duration::from_secs(600))? {
            return Err(Error::Dataflow(DataflowError::Timeout("the restarted speed layer did not catch up within 600 s".into())));
        }
        *crate::sync::write(&self.current) = Arc::new(next);
        self.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// Stops the serving speed layer's other processes cleanly (at shutdown).
    pub fn stop_processes(&self) {
        self.serving().speed.stop_processes(Duration::from_secs(5));
    }

    /// How many times the speed layer was restarted after a failure.
    pub fn speed_restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switches serving to batch `version`: loads it, starts a speed layer from its cut and
    /// lets it catch up with the old one while the old one keeps serving; then freezes the
    /// old layer (so no frontier a reader saw is ever ahead of the new pair's), closes the
    /// remaining gap, and swaps atomically.
    pub fn handover(&self, version: u64) -> Result<()> {
        let _one_at_a_time = crate::sync::lock(&self.handover);
        let next = Self::serving_for(&self.job, &self.log, &self.dir, self.workers, &self.cluster, Pick::Version(version))?;
        let old = self.serving();
        let covers = |frontier: &[u64]| -> Vec<u64> { frontier.iter().zip(&next.speed.cut).map(|(a, b)| *a.max(b)).collect() };
        if !next.speed.wait_for(&covers(&old.speed.frontier()), Duration::from_secs(600))? {
            return Err(Error::Dataflow(DataflowError::Timeout(
                "new speed layer did not catch up within 600 s; still serving the previous batch".into(),
            )));
        }
        old.speed.freeze();
        let frozen = old.speed.frontier();
        let caught_up = next.speed.wait_for(&covers(&frozen), Duration::from_secs(60));
        if !matches!(caught_up, Ok(true)) {
            let cause = match caught_up {
                Err(e) => e.to_string(),
                Ok(_) => "new speed layer did not close the last gap within 60 s".to_string(),
            };
            // Put a live speed layer back for the old batch version, caught up to the frozen
            // frontier (so no reader sees it go backwards), before reporting.
            let restore = || -> Result<Serving> {
                let restored = Self::serving_for(&self.job, &self.log, &self.dir, self.workers, &self.cluster, Pick::of(&old))?;
                if !restored.speed.wait_for(&frozen, Duration::from_secs(600))? {
                    return Err(Error::Dataflow(DataflowError::Timeout("the restored speed layer did not catch up within 600 s".into())));
                }
                Ok(restored)
            };
            return match restore() {
                Ok(restored) => {
                    *crate::sync::write(&self.current) = Arc::new(restored);
                    Err(Error::Dataflow(DataflowError::Failed(format!(
                        "handover to batch version {version} failed ({cause}); still serving the previous batch"
                    ))))
                }
                Err(e) => {
                    let reason = format!(
                        "handover to batch version {version} failed ({cause}) and restoring the previous speed layer failed too ({e})"
                    );
                    old.speed.fail(reason.clone());
                    Err(Error::Dataflow(DataflowError::Failed(reason)))
                }
            };
        }
        let old = std::mem::replace(&mut *crate::sync::write(&self.current), Arc::new(next));
        // Readers that still hold the old pair finish with it; its workers are joined when
        // the last of them drops it.
        drop(old);
        Ok(())
    }

    /// The data directory's state.
    pub fn status(&self) -> Status {
        let serving = self.serving();
        let (frontier, updated_ms, speed_keys, speed_bytes) = serving.speed.with_state(|s| {
            let keys = serving.speed.views().iter().zip(&s.tables).map(|(v, t)| (v.info().name.clone(), t.keys())).collect();
            (s.frontier.clone(), s.updated_ms, keys, s.tables.iter().map(|t| t.approx_bytes()).sum())
        });
        Status {
            job: self.job.name().to_string(),
            job_version: self.job.version(),
            log_end: self.log.end_offsets(),
            log_bytes: self.log.disk_bytes(),
            batch: serving.batch.as_ref().map(|b| b.meta.clone()),
            freshness: self.freshness(&serving, frontier, updated_ms),
            speed_keys,
            speed_bytes,
            speed_failure: serving.speed.failure(),
            speed_restarts: self.speed_restarts(),
            speed_publications: serving.speed.publications(),
            speed_snapshot_copies: serving.speed.snapshot_copies(),
            speed_events_read: serving.speed.events_read_per_worker(),
            speed_visible_counts: {
                let mut counts = serving.speed.visible_latency().counts();
                while counts.last() == Some(&0) {
                    counts.pop();
                }
                counts
            },
            speed_visible_max_ms: serving.speed.visible_latency().max_ms(),
            cluster: ClusterStatus {
                batch_processes: self.cluster.batch_processes,
                speed_processes: self.cluster.speed_processes,
                workers: self.workers,
                speed_pids: serving.speed.pids(),
            },
            speed_counters: serving.speed.counters(),
        }
    }
}

impl<J: Job> Lambda<J> {
    /// The freshness of `serving` at `frontier` (published at `updated_ms`).
    pub fn freshness(&self, serving: &Serving, frontier: Vec<u64>, updated_ms: u64) -> Freshness {
        let now = now_ms();
        let cut = serving.speed.cut.clone();
        let ends = self.log.end_offsets();
        Freshness {
            batch_version: serving.batch.as_ref().map(|b| b.meta.version),
            batch_age_ms: serving.batch.as_ref().map(|b| now.saturating_sub(b.meta.finished_ms)),
            speed_events: frontier
                .iter()
                .zip(&cut)
                .map(|(f, c)| {
                    // A speed layer starts at its cut and only moves forward.
                    assert!(f >= c, "speed frontier {frontier:?} is behind its cut {cut:?}");
                    f - c
                })
                .sum(),
            speed_lag_events: ends.iter().zip(&frontier).map(|(e, f)| e.saturating_sub(*f)).sum(),
            batch_cut: cut,
            speed_frontier: frontier,
            speed_age_ms: now.saturating_sub(updated_ms),
            speed_failure: serving.speed.failure(),
        }
    }
}

impl<J: Job> Lambda<J> {
    /// Point queries of several `keys` of `view` at one speed frontier: per key, in order,
    /// what [`Lambda::query_on`] with `Selection::Key` answers (`Ok(None)`: no such key;
    /// `Err`: the key does not parse), and the freshness they all reflect.
    pub fn query_keys_on(
        &self,
        serving: &Serving,
        view: &str,
        keys: &[String],
    ) -> Result<(Vec<std::result::Result<Option<Answer>, String>>, Freshness)> {
        let speed = &serving.speed;
        let i = view_index(speed, view)?;
        let batch_table = serving.batch.as_ref().and_then(|b| b.tables[i].clone());
        let (answers, frontier, updated_ms) = speed.with_state(|state| {
            let answers = keys
                .iter()
                .map(|k| {
                    let sel = Selection::Key(k.clone());
                    speed.views()[i].query(batch_table.as_deref(), state.tables[i].as_ref(), &sel).map(|a| a.into_iter().next())
                })
                .collect();
            (answers, state.frontier.clone(), state.updated_ms)
        });
        Ok((answers, self.freshness(serving, frontier, updated_ms)))
    }
}

/// Whether batch version `m` can serve `job` over a log of `partitions` partitions: this
/// build reads its format, and this job and version computed it with as many partitions.
/// When not, says why on stderr, and that the answers come from the log alone (`doing`:
/// "serving", "answering") until a batch run that makes a usable one.
pub(crate) fn batch_usable<J: Job>(job: &J, m: &BatchMeta, partitions: u32, doing: &str) -> bool {
    if !m.readable() {
        eprintln!(
            "lambdaflow: batch version {} was written by a newer lambdaflow (format {}; this build reads up to {}); \
             {doing} from the log alone until a batch run by this build",
            m.version,
            m.format,
            crate::store::FORMAT
        );
        return false;
    }
    let usable = m.job == job.name() && m.job_version == job.version() && m.cut.len() == partitions as usize;
    if !usable {
        eprintln!(
            "lambdaflow: batch version {} was computed by job {} version {} (this is {} version {}); \
             {doing} from the log alone until a batch run under this version",
            m.version,
            m.job,
            m.job_version,
            job.name(),
            job.version()
        );
    }
    usable
}

/// The index of `view` among the job's views, or a usage error that lists them.
fn view_index(speed: &SpeedLayer, view: &str) -> Result<usize> {
    speed.views().iter().position(|v| v.info().name == view).ok_or_else(|| {
        let names: Vec<_> = speed.views().iter().map(|v| v.info().name.clone()).collect();
        Error::Usage(format!("no view named `{view}`; the views are: {}", names.join(", ")))
    })
}
