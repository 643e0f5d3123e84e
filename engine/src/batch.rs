//! Batch mode: the job over the log before a cut, published as an immutable batch version.
//!
//! Every worker reads its share of partitions (`partition % workers == index`) from offset
//! 0 to the cut in large sequential chunks, feeds the events at time 0, and closes its
//! input. The job's operators pre-aggregate before the exchange, so what crosses workers is
//! one update per key, not one per event. When the dataflow drains, each view and each seed
//! is consolidated across workers and written; the version is published atomically.

use lambdaflow_operators::{Ctx, Job, Mode, Registry, Time};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use differential_dataflow::input::Input;

use crate::error::{Error, Result};
use crate::log::{Log, LogError};
use crate::store::{now_ms, BatchMeta, ViewStore};

/// Events fed between two steps of a worker while reading, so the dataflow drains as it goes.
const STEP_EVERY_EVENTS: u64 = 64 * 1024;

/// What a batch run did.
#[derive(Clone, Debug)]
pub struct BatchReport {
    /// The published version's metadata.
    pub meta: BatchMeta,
    /// Wall time of the dataflow (reading + computing), seconds.
    pub compute_secs: f64,
    /// Wall time of writing and publishing the views, seconds.
    pub write_secs: f64,
}

/// Progress of a running batch: events read so far, and the total to read.
#[derive(Default)]
pub struct Progress {
    /// Events read so far.
    pub done: AtomicU64,
    /// Events to read (the sum of the cut).
    pub total: AtomicU64,
}

pub(crate) fn decode_event<E: lambdaflow_operators::Event>(partition: u32, offset: u64, bytes: &[u8]) -> Result<E, LogError> {
    bincode::deserialize(bytes).map_err(|e| LogError::Callback(Error::Decode { partition, offset, detail: e.to_string() }.to_string()))
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
    let started_ms = now_ms();
    let cut = cut.unwrap_or_else(|| log.end_offsets());
    let ends = log.end_offsets();
    if cut.len() != ends.len() || cut.iter().zip(&ends).any(|(c, e)| c > e) {
        return Err(Error::Invalid(format!("cut {cut:?} is not a prefix of the log (ends {ends:?})")));
    }
    let total: u64 = cut.iter().sum();
    progress.total.store(total, Ordering::Relaxed);
    let registry = Arc::new(Registry::default());
    let abort = Arc::new(crate::guard::Abort::default());
    let t0 = Instant::now();
    let guards = {
        let (registry, cut, log, job, progress, abort) =
            (registry.clone(), cut.clone(), log.clone(), job.clone(), progress.clone(), abort.clone());
        timely::execute(timely::Config::process(workers.max(1)), move |worker| -> Result<()> {
            crate::guard::guarded(worker, &abort, |worker| {
                let (index, peers) = (worker.index(), worker.peers());
                let (mut input, errors) = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, events) = scope.new_collection::<J::Event, isize>();
                    let mut ctx = Ctx::new(scope, Mode::Batch, registry.clone(), None);
                    job.build(&mut ctx, events);
                    (input, ctx.errors().to_vec())
                });
                if !errors.is_empty() {
                    return Err(Error::Dataflow(format!("job {} is invalid: {}", job.name(), errors.join("; "))));
                }
                let mut fed = 0u64;
                for partition in (0..cut.len() as u32).filter(|p| *p as usize % peers == index) {
                    log.read(partition, 0, cut[partition as usize], |offset, bytes| {
                        input.update(decode_event::<J::Event>(partition, offset, bytes)?, 1);
                        fed += 1;
                        if fed.is_multiple_of(STEP_EVERY_EVENTS) {
                            progress.done.fetch_add(STEP_EVERY_EVENTS, Ordering::Relaxed);
                            input.flush();
                            worker.step();
                            if abort.raised() {
                                return Err(LogError::Callback("another worker failed".into()));
                            }
                        }
                        Ok(())
                    })?;
                }
                progress.done.fetch_add(fed % STEP_EVERY_EVENTS, Ordering::Relaxed);
                drop(input);
                // Step until every dataflow completes, or another worker fails.
                while !abort.raised() && worker.step_or_park(Some(std::time::Duration::from_millis(10))) {}
                Ok(())
            })
        })
        .map_err(Error::Dataflow)?
    };
    for result in guards.join() {
        result.map_err(Error::Dataflow)??;
    }
    if let Some(reason) = abort.reason() {
        return Err(Error::Dataflow(reason));
    }
    let compute_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let pending = store.begin()?;
    // Encoding (a sort per view) and writing are independent per view and seed: spread them
    // over `workers` threads, each taking the next unclaimed one.
    enum Out {
        View(Arc<dyn lambdaflow_operators::AnyView>),
        Seed(Arc<dyn lambdaflow_operators::ctx::AnySeed>),
    }
    let outputs: Vec<Out> = registry.views().into_iter().map(Out::View).chain(registry.seeds().into_iter().map(Out::Seed)).collect();
    let next = AtomicU64::new(0);
    let results: Vec<Result<Vec<(usize, usize)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, usize)>> {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(out) = outputs.get(i) else { return Ok(done) };
                        match out {
                            Out::View(view) => {
                                let (bytes, n) = view.take_batch_encoded().map_err(Error::Dataflow)?;
                                pending.write_view(&view.info().name, &bytes)?;
                                done.push((i, n));
                            }
                            Out::Seed(seed) => {
                                let (bytes, n) = seed.take_encoded().map_err(Error::Dataflow)?;
                                pending.write_seed(seed.name(), &bytes)?;
                                done.push((i, n));
                            }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Dataflow("view writer panicked".into())))).collect()
    });
    // Record counts by output index, so META lists views and seeds in declaration order.
    let mut counts = vec![0usize; outputs.len()];
    for r in results {
        for (i, n) in r? {
            counts[i] = n;
        }
    }
    let (mut views, mut seeds) = (Vec::new(), Vec::new());
    for (out, n) in outputs.iter().zip(counts) {
        match out {
            Out::View(v) => views.push((v.info().name.clone(), n)),
            Out::Seed(s) => seeds.push((s.name().to_string(), n)),
        }
    }
    let meta = BatchMeta {
        version: pending.version(),
        job: job.name().to_string(),
        job_version: job.version(),
        events: total,
        cut,
        started_ms,
        finished_ms: now_ms(),
        views,
        seeds,
    };
    store.publish(pending, &meta)?;
    Ok(BatchReport { meta, compute_secs, write_secs: t1.elapsed().as_secs_f64() })
}
