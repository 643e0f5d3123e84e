//! `query` on a data directory without a service: the merged answer of one view, loading
//! only what that view needs.
//!
//! A service keeps a speed layer running, seeded with every operator's state at the batch
//! cut. A one-shot query needs much less:
//!
//! * **no event after the batch cut**: the merged answer is the batch view itself. The job's
//!   dataflow is built (not run) only to learn its views' types, and only the queried view's
//!   stored table is read and decoded.
//! * **events after the cut**: the job's speed dataflow runs once over them, bounded (the
//!   events at times 1, 2, …, every worker ending on the same last time). Only the seeds of the operators upstream of
//!   the queried view are loaded; the others start empty, which changes only views that are
//!   not asked for. What is upstream is read from the dataflow's graph (timely's operator
//!   and channel log of a build with empty seeds): a seed is loaded when its source operator
//!   reaches the view's sink. When the graph cannot be matched to the seeds and views (a job
//!   with raw operators of the same kinds as the engine's markers), every seed is loaded.
//!
//! The answer is the one a service would give at the same log end: the batch view merged
//! with the speed layer's updates since the cut (time-0 output, restating the seeds, is
//! dropped exactly as the service's speed tables drop it).

use lambdaflow_operators::runtime::{AnyView, Mode, Registry, SeedSource};
use lambdaflow_operators::{Ctx, Job, Selection, Time};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use crate::clock::now_ms;
use crate::error::{DataflowError, Error, Result};
use crate::lambda::{Freshness, QueryResult};
use crate::log::Log;
use crate::store::{BatchMeta, ViewStore};

/// The job's views, from a build that is never run, and for each view the seeds upstream
/// of it (`None`: not known, load them all).
struct Plan {
    views: Vec<Arc<dyn AnyView>>,
    upstream: Option<Vec<BTreeSet<String>>>,
    /// Raw stateful operators that read the job's events without a seed (see [`lint`]).
    unseeded: Vec<String>,
}

type Planned = (Vec<Arc<dyn AnyView>>, Option<Vec<BTreeSet<String>>>, Vec<String>);

/// A seed source for the planning build: every seed is empty, and each request records the
/// identifier the seed's source operator (built right after it) gets.
struct Marking {
    worker: timely::worker::Worker,
    seeds: RefCell<Vec<(String, usize)>>,
}

impl SeedSource for Marking {
    fn seed(&self, name: &str) -> std::result::Result<Option<Arc<Vec<u8>>>, String> {
        self.seeds.borrow_mut().push((name.to_string(), self.worker.peek_identifier()));
        Ok(None)
    }
}

/// The dataflow graph as timely logs it: operators by address, channels between them.
#[derive(Default)]
struct Graph {
    /// Operator identifier → (address, name).
    operators: HashMap<usize, (Vec<usize>, String)>,
    /// Address → the addresses it sends to. A nested scope is one node (its inputs reach
    /// its outputs), which can only over-approximate what is upstream.
    edges: HashMap<Vec<usize>, Vec<Vec<usize>>>,
}

impl Graph {
    fn record(&mut self, event: timely::logging::TimelyEvent) {
        use timely::logging::TimelyEvent;
        match event {
            TimelyEvent::Operates(o) => {
                self.operators.insert(o.id, (o.addr, o.name));
            }
            TimelyEvent::Channels(c) => {
                let node = |index: usize| {
                    let mut addr = c.scope_addr.clone();
                    // Index 0 is the scope's own boundary: the scope as a node.
                    if index != 0 {
                        addr.push(index);
                    }
                    addr
                };
                self.edges.entry(node(c.source.0)).or_default().push(node(c.target.0));
            }
            _ => {}
        }
    }

    /// The names of the arrangements (what every raw stateful differential operator
    /// builds: `reduce`, `join`, `distinct`, `count`, `threshold`, `arrange`) reachable from
    /// `events` without passing a seed's merge (the operator right after a seed source).
    /// In speed mode those see only the events since the cut. The engine's own speed-mode
    /// operators hold hash tables, not arrangements, and `ctx.join` arranges seeded inputs.
    fn unseeded(&self, events: &[usize], sources: &[&Vec<usize>]) -> Vec<String> {
        let blocked: HashSet<&Vec<usize>> = sources.iter().flat_map(|s| self.edges.get(*s).into_iter().flatten()).collect();
        let names: HashMap<&Vec<usize>, &String> = self.operators.values().map(|(a, n)| (a, n)).collect();
        let mut seen: HashSet<Vec<usize>> = HashSet::from([events.to_vec()]);
        let mut todo = vec![events.to_vec()];
        let mut found = BTreeSet::new();
        while let Some(node) = todo.pop() {
            if let Some(name) = names.get(&node).filter(|n| n.starts_with("Arrange")) {
                found.insert(name.to_string());
            }
            for next in self.edges.get(&node).into_iter().flatten() {
                if !blocked.contains(next) && seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        found.into_iter().collect()
    }

    /// Every address reachable from `from`, itself included.
    fn reachable(&self, from: &[usize]) -> HashSet<Vec<usize>> {
        let mut seen: HashSet<Vec<usize>> = HashSet::from([from.to_vec()]);
        let mut todo = vec![from.to_vec()];
        while let Some(node) = todo.pop() {
            for next in self.edges.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }
}

/// Timely's name for the operator of `to_stream` (a seed's source in speed mode).
const SEED_SOURCE_OPERATOR: &str = "ToStreamBuilder";
/// Timely's name for the operator of `inspect_batch` (a view's sink).
const VIEW_SINK_OPERATOR: &str = "Inspect";

/// Builds the job's speed dataflow once, with empty seeds, on a throwaway worker, and
/// reads from its graph which seeds each view depends on.
fn plan<J: Job>(job: Arc<J>) -> Result<Plan> {
    let name = job.name().to_string();
    let planned = timely::execute::execute_directly(move |worker| -> std::result::Result<Planned, Vec<String>> {
        let graph = Rc::new(RefCell::new(Graph::default()));
        if let Some(mut register) = worker.log_register() {
            let graph = graph.clone();
            register.insert::<timely::logging::TimelyEventBuilder, _>("timely", move |_time, data| {
                if let Some(data) = data {
                    let mut graph = graph.borrow_mut();
                    for (_, event) in data.drain(..) {
                        graph.record(event);
                    }
                }
            });
        }
        let registry = Arc::new(Registry::default());
        // `Ctx` takes its seed source as an `Arc`; this one never leaves the planning thread.
        #[allow(clippy::arc_with_non_send_sync)]
        let marking = Arc::new(Marking { worker: worker.clone(), seeds: RefCell::default() });
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker.dataflow::<Time, _, _>(|scope| {
                // The events' input is the next operator built.
                let input_id = marking.worker.peek_identifier();
                let (_input, events) = differential_dataflow::input::Input::new_collection::<J::Event, isize>(&scope);
                let mut ctx = Ctx::new(scope, Mode::Speed, registry.clone(), Some(marking.clone() as Arc<dyn SeedSource>));
                ctx.set_events(&events);
                job.build(&mut ctx, events);
                (ctx.errors().to_vec(), input_id)
            })
        }));
        if let Some(mut register) = worker.log_register() {
            register.flush();
            register.remove("timely");
        }
        crate::guard::drop_dataflows(worker);
        let (errors, input_id) = match built {
            Ok(built) => built,
            Err(payload) => (vec![format!("the job panicked while building: {}", crate::guard::panic_message(payload.as_ref()))], 0),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let views = registry.views();
        let graph = graph.borrow();
        let seeds = marking.seeds.borrow();
        // Match the graph to the seeds and views, or give up on pruning.
        let mut sinks: Vec<(usize, &Vec<usize>)> =
            graph.operators.iter().filter(|(_, (_, n))| n == VIEW_SINK_OPERATOR).map(|(id, (addr, _))| (*id, addr)).collect();
        sinks.sort_unstable();
        let sources: Option<Vec<(&String, &Vec<usize>)>> = seeds
            .iter()
            .map(|(seed, id)| match graph.operators.get(id) {
                Some((addr, n)) if n == SEED_SOURCE_OPERATOR => Some((seed, addr)),
                _ => None,
            })
            .collect();
        let unseeded = match (&sources, graph.operators.get(&input_id)) {
            (Some(sources), Some((events, _))) => {
                let sources: Vec<&Vec<usize>> = sources.iter().map(|(_, a)| *a).collect();
                graph.unseeded(events, &sources)
            }
            _ => Vec::new(),
        };
        let upstream = match sources {
            Some(sources) if sinks.len() == views.len() => {
                let reach: Vec<(&String, HashSet<Vec<usize>>)> = sources.iter().map(|(s, addr)| (*s, graph.reachable(addr))).collect();
                Some(
                    sinks
                        .iter()
                        .map(|(_, sink)| reach.iter().filter(|(_, r)| r.contains(*sink)).map(|(s, _)| (*s).clone()).collect())
                        .collect(),
                )
            }
            _ => None,
        };
        Ok((views, upstream, unseeded))
    });
    match planned {
        Ok((views, upstream, unseeded)) => Ok(Plan { views, upstream, unseeded }),
        Err(mut errors) => {
            errors.sort();
            errors.dedup();
            Err(Error::Dataflow(DataflowError::InvalidJob { job: name, detail: errors.join("; ") }))
        }
    }
}

/// A job mistake found in its speed dataflow's graph, with the fix: raw stateful
/// differential operators that read the job's events without a seed, so that in speed mode
/// they would see only the events since the batch cut (and a value view fed by one merges
/// to two records per key). `None` when there is none (or the graph cannot be matched to
/// the job's seeds, when nothing is said).
pub(crate) fn lint<J: Job>(job: Arc<J>) -> Result<Option<String>> {
    let plan = plan(job.clone())?;
    Ok(unseeded_message(job.name(), &plan.unseeded))
}

fn unseeded_message(job: &str, unseeded: &[String]) -> Option<String> {
    if unseeded.is_empty() {
        return None;
    }
    Some(format!(
        "job {}: the raw stateful operator(s) {} read the job's events without a seed: in speed mode they see only the \
         events since the batch cut, so their output misses the history before it. Wrap their input in \
         ctx.seeded(name, input) (or use a DSL operator, which is seeded already)",
        job,
        unseeded.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    ))
}

/// Seeds from the store, only those named in `wanted` (the others are empty).
struct SomeSeeds {
    seeds: crate::speed::StoreSeeds,
    wanted: Option<BTreeSet<String>>,
}

impl SeedSource for SomeSeeds {
    fn seed(&self, name: &str) -> std::result::Result<Option<Arc<Vec<u8>>>, String> {
        if self.wanted.as_ref().is_some_and(|w| !w.contains(name)) {
            return Ok(None);
        }
        self.seeds.seed(name)
    }

    fn seed_shards(&self, name: &str) -> std::result::Result<Option<Vec<Arc<Vec<u8>>>>, String> {
        if self.wanted.as_ref().is_some_and(|w| !w.contains(name)) {
            return Ok(None);
        }
        self.seeds.seed_shards(name)
    }
}

/// What a local query loaded (printed on stderr under `LAMBDAFLOW_QUERY_EXPLAIN`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Loaded {
    /// Whether a dataflow ran (events after the cut, or no batch version).
    pub(super) ran: bool,
    /// The seeds loaded (`None`: every seed, the graph could not be matched).
    pub(super) seeds: Option<Vec<String>>,
    /// Whether the job's graph has a raw stateful operator on an unseeded input (the lint).
    pub(super) unseeded: bool,
    /// Where the time went, phase by phase (milliseconds), in order.
    pub(super) phases: Vec<(&'static str, u64)>,
}

impl Loaded {
    /// One line for stderr (`LAMBDAFLOW_QUERY_EXPLAIN`): what the answer was computed from.
    pub(super) fn describe(&self, f: &Freshness) -> String {
        let batch = f.batch_version.map_or("no batch version".to_string(), |v| format!("batch version {v}"));
        if !self.ran {
            return format!("query: answered from {batch}'s stored view alone (no event after its cut)");
        }
        let seeds = match &self.seeds {
            Some(s) if s.is_empty() => "no seed".to_string(),
            Some(s) => format!("seeds {}", s.join(", ")),
            None => "every seed (the job's graph could not be matched to its seeds and views)".to_string(),
        };
        format!("query: answered from {batch} and {} events after its cut, loading {seeds}", f.speed_events)
    }

    /// Where the time went (`LAMBDAFLOW_QUERY_EXPLAIN`): `query: took 12 ms (open 1 ms, ...)`.
    pub(super) fn timings(&self) -> String {
        let total: u64 = self.phases.iter().map(|(_, ms)| ms).sum();
        let phases: Vec<String> = self.phases.iter().map(|(name, ms)| format!("{name} {ms} ms")).collect();
        format!("query: took {total} ms ({})", phases.join(", "))
    }
}

/// The merged answers of `view` for `sel` at the log's current end, loading only what the
/// view needs (see the module docs). With `exit_fast` (a process that exits right after
/// the answer, as the command line does), a run's workers are left idle with their state
/// instead of shutting their dataflow down (see [`LEAK_STATE_AT_EXIT`]).
pub(super) fn query<J: Job>(
    job: J,
    dir: &Path,
    workers: usize,
    view: &str,
    sel: &Selection,
    exit_fast: bool,
) -> Result<(QueryResult, Loaded)> {
    if !dir.join("log").exists() {
        return Err(Error::Usage(format!("{} holds no lambdaflow data yet (run `ingest` first, or pass --data DIR)", dir.display())));
    }
    // Through the key journal, as every command that opens the directory: a keyed group
    // append a crash interrupted is rolled back before anything is read (those events were
    // never acknowledged). The caller holds the directory's lock, so recovering is allowed.
    let mut clock = Phases::start();
    let log = super::options::open_log(dir, 1)?.log().clone();
    let store = ViewStore::open(dir)?;
    let job = Arc::new(job);
    let meta = usable_batch(&*job, &store, &log)?;
    let ends = log.end_offsets();
    let cut = meta.as_ref().map(|m| m.cut.clone()).unwrap_or_else(|| vec![0; ends.len()]);
    clock.lap("open");
    let plan = plan(job.clone())?;
    clock.lap("plan");
    let unseeded = !plan.unseeded.is_empty();
    if let Some(why) = unseeded_message(job.name(), &plan.unseeded) {
        eprintln!("warning: {why}");
    }
    let i = plan.views.iter().position(|v| v.info().name == view).ok_or_else(|| {
        let names: Vec<_> = plan.views.iter().map(|v| v.info().name.clone()).collect();
        Error::Usage(format!("no view named `{view}`; the views are: {}", names.join(", ")))
    })?;
    let batch = match &meta {
        None => None,
        Some(m) => {
            let bytes = store.read_view(m.version, view)?.ok_or_else(|| {
                Error::Inconsistent(format!(
                    "batch version {} has no view `{view}`: the job changed without a new Job::version \
                     (bump it, and the engine serves from the log until a batch run under it)",
                    m.version
                ))
            })?;
            Some(plan.views[i].decode_batch(&bytes).map_err(Error::Inconsistent)?)
        }
    };
    clock.lap("batch view");
    let mut loaded = Loaded { unseeded, ..Loaded::default() };
    let mut speed = plan.views[i].new_speed_table();
    if ends != cut {
        let wanted = plan.upstream.as_ref().map(|u| u[i].clone());
        loaded = Loaded { ran: true, seeds: wanted.as_ref().map(|w| w.iter().cloned().collect()), unseeded, phases: Vec::new() };
        let seeds = Arc::new(SomeSeeds { seeds: crate::speed::StoreSeeds::new(store, meta.as_ref().map(|m| m.version)), wanted });
        let (run_view, marks) = run_bounded(job, log.clone(), seeds, &cut, &ends, workers, view, exit_fast)?;
        for (name, at) in ["build", "run", "free"].into_iter().zip(marks) {
            clock.lap_at(name, at);
        }
        clock.lap("join");
        run_view.drain_speed(u64::MAX, speed.as_mut());
    }
    let answers = plan.views[i].query(batch.as_deref(), speed.as_ref(), sel).map_err(Error::Usage)?;
    clock.lap("answer");
    loaded.phases = clock.phases;
    let now = now_ms();
    let freshness = Freshness {
        batch_version: meta.as_ref().map(|m| m.version),
        batch_cut: cut.clone(),
        batch_age_ms: meta.as_ref().map(|m| now.saturating_sub(m.finished_ms)),
        speed_frontier: ends.clone(),
        speed_events: ends.iter().zip(&cut).map(|(e, c)| e.saturating_sub(*c)).sum(),
        speed_lag_events: 0,
        speed_age_ms: 0,
        speed_failure: None,
    };
    Ok((QueryResult { view: view.to_string(), answers, freshness }, loaded))
}

/// Wall time by phase, for [`Loaded::timings`].
struct Phases {
    last: std::time::Instant,
    phases: Vec<(&'static str, u64)>,
}

impl Phases {
    fn start() -> Self {
        Phases { last: std::time::Instant::now(), phases: Vec::new() }
    }

    /// Ends the phase `name` now.
    fn lap(&mut self, name: &'static str) {
        self.lap_at(name, std::time::Instant::now());
    }

    /// Ends the phase `name` at `at` (an instant taken elsewhere).
    fn lap_at(&mut self, name: &'static str, at: std::time::Instant) {
        self.phases.push((name, at.saturating_duration_since(self.last).as_millis() as u64));
        self.last = at;
    }
}

/// The current batch version if this job and version computed it (as the service picks
/// it), checked against the log.
fn usable_batch<J: Job>(job: &J, store: &ViewStore, log: &Log) -> Result<Option<BatchMeta>> {
    let meta = store.current_meta()?.filter(|m| crate::lambda::batch_usable(job, m, log.partitions(), "answering"));
    if let Some(m) = &meta {
        let ends = log.end_offsets();
        if let Some(p) = (0..m.cut.len()).find(|p| m.cut[*p] > ends[*p]) {
            return Err(Error::Inconsistent(format!(
                "batch version {} covers partition {p} up to offset {}, but the log ends at {}: acknowledged records \
                 are missing from the log (see `verify`); refusing to answer what would be wrong",
                m.version, m.cut[p], ends[p]
            )));
        }
    }
    Ok(meta)
}

/// Events each worker feeds at one time of a local query's run (a handful in unit tests,
/// so that they cover several times and workers ending on different ones).
const EPOCH_EVENTS: u64 = if cfg!(test) { 8 } else { 100_000 };

/// Every how many epochs worker 0 says how far it has read (on stderr).
const PROGRESS_EPOCHS: u64 = 50;

/// Runs the job's speed dataflow once over the log in `[cut, ends)` on `workers` threads,
/// the events at times 1, 2, … (a new time every [`EPOCH_EVENTS`] events per worker), and
/// returns the view `view` holding what it produced.
fn run_bounded<J: Job>(
    job: Arc<J>,
    log: Arc<Log>,
    seeds: Arc<SomeSeeds>,
    cut: &[u64],
    ends: &[u64],
    workers: usize,
    view: &str,
    exit_fast: bool,
) -> Result<(Arc<dyn AnyView>, Vec<std::time::Instant>)> {
    // Worker 0's milestones: dataflow built (seeds decoded), run complete, state dropped.
    let marks: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    // Workers done (the answer complete, or failed): with `LEAK_STATE_AT_EXIT`, a worker
    // whose run completed counts itself and idles until the process exits.
    let finished: Arc<(Mutex<usize>, std::sync::Condvar)> = Arc::default();
    let registry = Arc::new(Registry::default());
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let barrier = Arc::new(std::sync::Barrier::new(workers));
    let (cut, ends) = (cut.to_vec(), ends.to_vec());
    let name = job.name().to_string();
    let abort = Arc::new(crate::guard::Abort::default());
    // The latest time any worker has moved its input to, and how many workers are still
    // reading: a worker that has read its share keeps following the others' times until
    // none reads, so every worker ends at the same last time (one that stopped at an
    // earlier time would hold the others' probes back forever).
    let latest = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let reading = Arc::new(std::sync::atomic::AtomicUsize::new(workers));
    let guards = {
        let (registry, errors, seeds, abort, marks, finished, latest, reading) = (
            registry.clone(),
            errors.clone(),
            seeds.clone(),
            abort.clone(),
            marks.clone(),
            finished.clone(),
            latest.clone(),
            reading.clone(),
        );
        timely::execute::execute(timely::Config::process(workers), move |worker| -> Result<()> {
            // Counts this worker as finished when it returns, however it does.
            let finished = Finished::new(finished.clone());
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                worker.dataflow::<Time, _, _>(|scope| {
                    let (input, events) = differential_dataflow::input::Input::new_collection::<J::Event, isize>(&scope);
                    let mut ctx = Ctx::new(scope, Mode::Speed, registry.clone(), Some(seeds.clone() as Arc<dyn SeedSource>));
                    ctx.set_events(&events);
                    job.build(&mut ctx, events);
                    (input, ctx.probe(), ctx.errors().to_vec())
                })
            }));
            let parts = match built {
                Ok((input, probe, errs)) => {
                    crate::sync::lock(&errors).extend(errs);
                    Some((input, probe))
                }
                Err(payload) => {
                    crate::sync::lock(&errors)
                        .push(format!("the job panicked while building: {}", crate::guard::panic_message(payload.as_ref())));
                    None
                }
            };
            barrier.wait();
            let failed = !crate::sync::lock(&errors).is_empty();
            let Some((mut input, probe)) = parts.filter(|_| !failed) else {
                crate::guard::drop_dataflows(worker);
                return Ok(());
            };
            // The seeds are in the dataflow now: do not keep their bytes too.
            barrier.wait();
            seeds.seeds.forget();
            let first = worker.index() == 0;
            let mark = |marks: &Mutex<Vec<std::time::Instant>>| {
                if first {
                    crate::sync::lock(marks).push(std::time::Instant::now());
                }
            };
            mark(&marks);
            // A panic or an error in job code on one worker stops every worker (none waits
            // forever for a peer that will not step again).
            crate::guard::guarded(worker, &abort, |worker| {
                let park = Some(std::time::Duration::from_millis(10));
                // Events go in at times 1, 2, …, a new one every `EPOCH_EVENTS` events per
                // worker, and the worker lets the previous epoch complete before reading
                // on: the operators hold about one epoch of updates, not every event since
                // the cut. (The view keeps every time after 0, so the answer is the same.)
                let mut epoch: Time = 1;
                input.advance_to(epoch);
                let mut fed = 0u64;
                let (index, peers) = (worker.index(), worker.peers());
                for p in (0..ends.len()).filter(|p| p % peers == index) {
                    log.read(p as u32, cut[p], ends[p], |offset, bytes| -> Result<()> {
                        input.update(crate::batch::decode_event::<J::Event>(p as u32, offset, bytes)?, 1);
                        fed += 1;
                        if fed.is_multiple_of(EPOCH_EVENTS) {
                            epoch += 1;
                            latest.fetch_max(epoch, SeqCst);
                            input.advance_to(epoch);
                            input.flush();
                            while !abort.raised() && probe.less_than(&epoch) {
                                worker.step_or_park(park);
                            }
                            if abort.raised() {
                                return Err(crate::guard::another_worker_failed());
                            }
                            if index == 0 && epoch.is_multiple_of(PROGRESS_EPOCHS) {
                                eprintln!("query: {fed} events read on worker 0 ({} workers)", peers);
                            }
                        }
                        Ok(())
                    })?;
                    input.flush();
                    worker.step();
                }
                // Follow the other workers' times until every worker has read its share.
                reading.fetch_sub(1, SeqCst);
                loop {
                    if abort.raised() {
                        return Err(crate::guard::another_worker_failed());
                    }
                    let (done, last) = (reading.load(SeqCst) == 0, latest.load(SeqCst));
                    if last > epoch {
                        epoch = last;
                        input.advance_to(epoch);
                        input.flush();
                    } else if done {
                        break;
                    }
                    worker.step_or_park(park);
                }
                // Done once the probe passes the last epoch (the same on every worker). The
                // input is not closed: timely would shut the finished operators down and
                // free their state (a hash-table entry per seed row) before the answer
                // could be printed.
                input.advance_to(epoch + 1);
                input.flush();
                while !abort.raised() && probe.less_equal(&epoch) {
                    worker.step_or_park(park);
                }
                if exit_fast && !abort.raised() {
                    // The process exits once the answer is printed: shutting the dataflow
                    // down would free every operator's state first (a hash-table entry per
                    // seed row), and only delay the answer. Count this worker as done and
                    // idle (with its input open, nothing runs) until the exit, or until
                    // another worker fails and every worker must return.
                    mark(&marks);
                    finished.count();
                    while !abort.raised() {
                        worker.step_or_park(Some(std::time::Duration::from_millis(100)));
                    }
                }
                Ok(())
            })?;
            mark(&marks);
            crate::guard::drop_dataflows(worker);
            mark(&marks);
            Ok(())
        })
        .map_err(|e| Error::Dataflow(DataflowError::ProcessFailed(e)))?
    };
    if exit_fast {
        let (count, changed) = &*finished;
        let mut count = crate::sync::lock(count);
        while *count < workers {
            count = changed.wait(count).unwrap_or_else(|e| e.into_inner());
        }
        let all_idle = !abort.raised() && crate::sync::lock(&errors).is_empty();
        drop(count);
        if all_idle {
            // Every worker completed its run and idles: the answer is in the view. The
            // workers are left to the process's exit (joining them would wait forever).
            std::mem::forget(guards);
            return answer_view(&registry, view, &marks);
        }
    }
    crate::guard::join_workers(guards)?;
    if let Some(reason) = abort.reason() {
        return Err(Error::Dataflow(DataflowError::Failed(reason)));
    }
    let mut errs = crate::sync::lock(&errors).clone();
    if !errs.is_empty() {
        errs.sort();
        errs.dedup();
        return Err(Error::Dataflow(DataflowError::InvalidJob { job: name, detail: errs.join("; ") }));
    }
    answer_view(&registry, view, &marks)
}

/// The view `view` of a completed bounded run, with worker 0's milestones (dataflow
/// built, run complete, state freed).
fn answer_view(
    registry: &Registry,
    view: &str,
    marks: &Mutex<Vec<std::time::Instant>>,
) -> Result<(Arc<dyn AnyView>, Vec<std::time::Instant>)> {
    let view = registry
        .views()
        .into_iter()
        .find(|v| v.info().name == view)
        .ok_or_else(|| Error::Internal(format!("view `{view}` was declared when planning, not when running")))?;
    Ok((view, crate::sync::lock(marks).clone()))
}

/// Counts a worker of a bounded run as finished, once: explicitly when its run completed,
/// or when it returns (dropped), whichever comes first.
struct Finished {
    shared: Arc<(Mutex<usize>, std::sync::Condvar)>,
    counted: std::cell::Cell<bool>,
}

impl Finished {
    fn new(shared: Arc<(Mutex<usize>, std::sync::Condvar)>) -> Self {
        Finished { shared, counted: std::cell::Cell::new(false) }
    }

    fn count(&self) {
        if !self.counted.replace(true) {
            *crate::sync::lock(&self.shared.0) += 1;
            self.shared.1.notify_all();
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.count();
    }
}

/// Set by a process that exits right after one command (the command line's `main`): a
/// local query's bounded run then leaves its workers idle, holding their operators' state,
/// once the answer is complete, and the process's exit ends them. Shutting the dataflow
/// down would free that state first (a hash-table entry per seed row: about a fifth of the
/// query's CPU at 5M Nexmark events) and only delay the answer. Off by default, so that
/// tests and tools running queries in-process (`main_with`) leave no threads behind.
pub(crate) static LEAK_STATE_AT_EXIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
