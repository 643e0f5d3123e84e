//! Speed mode: the same job, incrementally, over the log from a batch cut on.
//!
//! Seeds from the batch version enter at time 0; appended events enter at epochs 1, 2, ...
//! Each worker tails its share of partitions. Workers advance their inputs to a shared
//! target epoch (any worker that read something raises it), so an idle worker never holds
//! the frontier back. When an epoch completes everywhere, worker 0 folds the views' updates
//! up to it into the speed tables and publishes the new frontier (one offset per partition)
//! under a write lock, so readers always see one consistent epoch.

use lambdaflow_operators::view::SpeedTable;
use lambdaflow_operators::{AnyView, Ctx, Job, Mode, Registry, SeedSource, Time};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;

use crate::batch::decode_event;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::store::{now_ms, ViewStore};

/// Events one worker feeds from one partition in one epoch, at most: bounds the work
/// between two publications while catching up.
const EPOCH_EVENTS_MAX: u64 = 256 * 1024;

/// How long an idle worker parks before polling the log again.
const IDLE_PARK: Duration = Duration::from_millis(1);

/// The speed layer's published state.
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
    state: RwLock<SpeedState>,
    moved: Condvar,
    moved_lock: Mutex<()>,
    stop: AtomicBool,
    target_epoch: AtomicU64,
    /// Per partition: offsets after each epoch, recorded by the partition's worker.
    offsets: Mutex<Vec<BTreeMap<u64, u64>>>,
    failure: Mutex<Option<String>>,
    /// Raised when any worker fails, so the others stop.
    abort: crate::guard::Abort,
    /// Set once time 0 (the seeds) has been absorbed everywhere.
    ready: AtomicBool,
    /// The worker threads, so an in-process append can wake them at once.
    threads: Mutex<Vec<std::thread::Thread>>,
}

impl Shared {
    /// Records why the layer stopped; the first reason wins.
    fn record_failure(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some(reason);
        }
    }
}

struct StoreSeeds {
    store: ViewStore,
    version: Option<u64>,
    cache: Mutex<HashMap<String, Option<Arc<Vec<u8>>>>>,
}

impl SeedSource for StoreSeeds {
    fn seed(&self, name: &str) -> Result<Option<Arc<Vec<u8>>>, String> {
        let Some(version) = self.version else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(name) {
            return Ok(hit.clone());
        }
        let bytes = match self.store.read_seed(version, name) {
            Ok(Some(bytes)) => Arc::new(bytes),
            Ok(None) => {
                return Err(format!(
                    "batch version {version} has no seed `{name}`: the job's dataflow changed without a new Job::version \
                     (bump the version so the engine serves from the log until a batch run under it)"
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        cache.insert(name.to_string(), Some(bytes.clone()));
        Ok(Some(bytes))
    }
}

/// A running speed layer.
pub struct SpeedLayer {
    shared: Arc<Shared>,
    guards: Mutex<Option<timely::communication::WorkerGuards<Result<()>>>>,
    /// The cut this layer started from.
    pub cut: Vec<u64>,
    /// The batch version whose seeds it started from.
    pub batch_version: Option<u64>,
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
        let partitions = log.partitions() as usize;
        if cut.len() != partitions {
            return Err(Error::Invalid(format!("cut has {} offsets, the log {partitions} partitions", cut.len())));
        }
        let registry = Arc::new(Registry::default());
        let seeds = Arc::new(StoreSeeds { store, version: batch_version, cache: Mutex::default() });
        let (built_tx, built_rx) = std::sync::mpsc::channel::<Result<()>>();
        let built_tx = Mutex::new(built_tx);
        let shared_slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
        let offsets0: Vec<BTreeMap<u64, u64>> = cut.iter().map(|c| BTreeMap::from([(0u64, *c)])).collect();
        let workers = workers.max(1);
        let barrier = Arc::new(std::sync::Barrier::new(workers));
        let build_errors: Arc<Mutex<Vec<String>>> = Arc::default();

        let guards = {
            let (registry, seeds, slot, cut, log, job, barrier, build_errors) = (
                registry.clone(),
                seeds.clone(),
                shared_slot.clone(),
                cut.clone(),
                log.clone(),
                job.clone(),
                barrier.clone(),
                build_errors.clone(),
            );
            timely::execute(timely::Config::process(workers), move |worker| -> Result<()> {
                let (index, peers) = (worker.index(), worker.peers());
                let seed_source: Arc<dyn SeedSource> = seeds.clone();
                // A panic in the job's `build` on any worker must not leave the others at the
                // barrier: catch it, and let every worker's problems decide together.
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker.dataflow::<Time, _, _>(|scope| {
                        let (input, events) = scope.new_collection::<J::Event, isize>();
                        let mut ctx = Ctx::new(scope, Mode::Speed, registry.clone(), Some(seed_source));
                        job.build(&mut ctx, events);
                        (input, ctx.probe(), ctx.errors().to_vec())
                    })
                }));
                let parts = match built {
                    Ok((input, probe, errors)) => {
                        build_errors.lock().unwrap_or_else(|e| e.into_inner()).extend(errors);
                        Some((input, probe))
                    }
                    Err(payload) => {
                        let msg =
                            format!("worker {index} panicked while building the job: {}", crate::guard::panic_message(payload.as_ref()));
                        build_errors.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                        None
                    }
                };
                // Every worker has built (and registered its views), or failed to, past here.
                barrier.wait();
                if index == 0 {
                    let mut errors = build_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    errors.sort();
                    errors.dedup();
                    // The seeds are in the dataflow now: do not keep their bytes too.
                    seeds.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    let result = if errors.is_empty() {
                        let views = registry.views();
                        let tables = views.iter().map(|v| v.new_speed_table()).collect();
                        let shared = Arc::new(Shared {
                            views,
                            state: RwLock::new(SpeedState { tables, epoch: 0, frontier: cut.clone(), updated_ms: now_ms() }),
                            moved: Condvar::new(),
                            moved_lock: Mutex::new(()),
                            stop: AtomicBool::new(false),
                            target_epoch: AtomicU64::new(1),
                            offsets: Mutex::new(offsets0.clone()),
                            failure: Mutex::new(None),
                            threads: Mutex::new(Vec::new()),
                            ready: AtomicBool::new(false),
                            abort: crate::guard::Abort::default(),
                        });
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared);
                        Ok(())
                    } else {
                        Err(Error::Dataflow(format!("job {}: {}", job.name(), errors.join("; "))))
                    };
                    let _ = built_tx.lock().unwrap_or_else(|e| e.into_inner()).send(result);
                }
                barrier.wait();
                let shared = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (Some(shared), Some((mut input, probe))) = (shared, parts) else {
                    // The start failed: drop what was built rather than wait for it.
                    crate::guard::drop_dataflows(worker);
                    return Ok(());
                };
                shared.threads.lock().unwrap_or_else(|e| e.into_inner()).push(std::thread::current());
                let result = crate::guard::guarded(worker, &shared.abort, |worker| {
                    drive(worker, &shared, &log, &cut, index, peers, &mut input, &probe)
                });
                if let Err(e) = &result {
                    shared.record_failure(shared.abort.reason().unwrap_or_else(|| e.to_string()));
                    shared.stop.store(true, Ordering::SeqCst);
                    shared.moved.notify_all();
                }
                // Stopped: drop the dataflow rather than wait for it to complete (it never
                // will: the input stays open).
                crate::guard::drop_dataflows(worker);
                result
            })
            .map_err(Error::Dataflow)?
        };
        match built_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = guards.join();
                return Err(e);
            }
            Err(_) => {
                let joined = guards.join();
                let detail = joined.into_iter().filter_map(|r| r.err()).collect::<Vec<_>>().join("; ");
                return Err(Error::Dataflow(format!("speed layer failed to start: {detail}")));
            }
        }
        let shared =
            shared_slot.lock().unwrap_or_else(|e| e.into_inner()).clone().expect("worker 0 publishes shared state before signalling");
        Ok(SpeedLayer { shared, guards: Mutex::new(Some(guards)), cut, batch_version })
    }

    /// The views, in the order of [`SpeedState::tables`].
    pub fn views(&self) -> &[Arc<dyn AnyView>] {
        &self.shared.views
    }

    /// Wakes the workers: call after appending to the log in this process, so they read the
    /// new events now rather than at their next poll.
    pub fn notify(&self) {
        for t in self.shared.threads.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.unpark();
        }
    }

    /// Runs `f` on the published state (under a read lock: keep it short).
    pub fn with_state<T>(&self, f: impl FnOnce(&SpeedState) -> T) -> T {
        f(&self.shared.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The published frontier.
    pub fn frontier(&self) -> Vec<u64> {
        self.with_state(|s| s.frontier.clone())
    }

    /// Why the speed layer stopped by itself, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the frontier covers `offsets` in every partition, or `timeout` passes.
    /// Returns whether it does.
    pub fn wait_for(&self, offsets: &[u64], timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let guard = self.shared.moved_lock.lock().unwrap_or_else(|e| e.into_inner());
            if self.frontier().iter().zip(offsets).all(|(f, o)| f >= o) {
                return Ok(true);
            }
            if let Some(f) = self.failure() {
                return Err(Error::Dataflow(format!("speed layer failed: {f}")));
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
        // A publish that started before `stop` was set holds the write lock; once we get it,
        // no further publish happens (publish re-checks `stop` under the lock).
        drop(self.shared.state.write().unwrap_or_else(|e| e.into_inner()));
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
        if let Some(guards) = self.guards.lock().unwrap_or_else(|e| e.into_inner()).take() {
            for r in guards.join() {
                r.map_err(Error::Dataflow)??;
            }
        }
        Ok(())
    }
}

impl Drop for SpeedLayer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[allow(clippy::too_many_arguments)]
fn drive<E: lambdaflow_operators::Event>(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    log: &Log,
    cut: &[u64],
    index: usize,
    peers: usize,
    input: &mut differential_dataflow::input::InputSession<Time, E, isize>,
    probe: &timely::dataflow::ProbeHandle<Time>,
) -> Result<()> {
    let mine: Vec<u32> = (0..cut.len() as u32).filter(|p| *p as usize % peers == index).collect();
    let mut next: Vec<u64> = mine.iter().map(|p| cut[*p as usize]).collect();
    let mut epoch: u64 = 1;
    input.advance_to(epoch);
    input.flush();
    let mut published: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) && !shared.abort.raised() {
        let ends = log.end_offsets();
        let mut read = 0u64;
        for (i, p) in mine.iter().enumerate() {
            let end = ends[*p as usize];
            if next[i] < end {
                let to = end.min(next[i] + EPOCH_EVENTS_MAX);
                let p = *p;
                read += log.read(p, next[i], to, |offset, bytes| {
                    input.update(decode_event::<E>(p, offset, bytes)?, 1);
                    Ok(())
                })?;
                next[i] = to;
            }
        }
        if read > 0 {
            shared.target_epoch.fetch_max(epoch + 1, Ordering::SeqCst);
        }
        let target = shared.target_epoch.load(Ordering::SeqCst);
        if target > epoch {
            {
                let mut offsets = shared.offsets.lock().unwrap_or_else(|e| e.into_inner());
                for (i, p) in mine.iter().enumerate() {
                    offsets[*p as usize].insert(epoch, next[i]);
                }
            }
            epoch = target;
            input.advance_to(epoch);
            input.flush();
        }
        worker.step_or_park(if read > 0 { Some(Duration::ZERO) } else { Some(IDLE_PARK) });
        if index == 0 {
            if !shared.ready.load(Ordering::Relaxed) && !probe.less_equal(&0) {
                shared.ready.store(true, Ordering::SeqCst);
                shared.moved.notify_all();
            }
            let complete = probe.with_frontier(|f| f.first().map(|t| t.saturating_sub(1)).unwrap_or(u64::MAX));
            let complete = complete.min(epoch.saturating_sub(1));
            if complete > published {
                publish(shared, complete);
                published = complete;
            }
        }
    }
    Ok(())
}

/// Folds every view's updates up to `epoch` into the speed tables and moves the frontier.
fn publish(shared: &Shared, epoch: u64) {
    let frontier: Vec<u64> = {
        let mut offsets = shared.offsets.lock().unwrap_or_else(|e| e.into_inner());
        offsets
            .iter_mut()
            .map(|history| {
                let at = history.range(..=epoch).next_back().map(|(_, o)| *o).expect("epoch 0 is always recorded");
                // Older entries are no longer needed.
                let keep = history.split_off(&epoch);
                *history = keep;
                history.insert(epoch, at);
                at
            })
            .collect()
    };
    let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
    if shared.stop.load(Ordering::SeqCst) {
        // Frozen (see `SpeedLayer::freeze`): the published state must not move any more.
        return;
    }
    for (view, table) in shared.views.iter().zip(state.tables.iter_mut()) {
        view.drain_speed(epoch, table.as_mut());
    }
    state.epoch = epoch;
    state.frontier = frontier;
    state.updated_ms = now_ms();
    drop(state);
    // Under the waiters' lock: a waiter checks the frontier and starts waiting under it, so
    // it cannot miss this wake-up.
    let _waiters = shared.moved_lock.lock().unwrap_or_else(|e| e.into_inner());
    shared.moved.notify_all();
}
