//! The job context: what a job's `build` receives, and the operators of the DSL.
//!
//! A job is written once against [`Ctx`]. The engine builds it in one of two modes:
//!
//! * **batch**: every event before the cut enters at time 0 and the input closes; each view
//!   and each seed is captured consolidated, then the run ends;
//! * **speed**: events at and after the cut enter at times 1, 2, ... as they are appended.
//!
//! Decomposable operators (`sum`, `count`) need nothing from history: in speed mode they
//! produce the *changes* since the cut, which add to the batch view. Operators whose output
//! is not a sum of parts (`distinct_count`, `top_k`, `per_key`, `join`) are **seeded**: in
//! batch mode they also persist their consolidated input at the cut; in speed mode that seed
//! enters at time 0 and their input's own time-0 updates are dropped, so they see exactly
//! "input at the cut + changes since". View sinks drop time-0 output in speed mode (it
//! restates the batch view), so merged = batch view + speed updates, exactly.

use differential_dataflow::difference::Multiply;
use differential_dataflow::{AsCollection, VecCollection};
use serde_json::Value;
use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::vec::Map as _;
use timely::dataflow::operators::vec::ToStream;
use timely::dataflow::{ProbeHandle, Scope};

use crate::view::{describe, AnyView, Data, Diff, Example, ViewCell, ViewInfo, ViewKey, ViewKind};

/// Logical time inside lambdaflow dataflows: 0 holds the batch state (batch mode: all of
/// it; speed mode: the seeds), and speed mode's epochs of appended events are 1, 2, ...
pub type Time = u64;

/// A collection in a lambdaflow dataflow.
pub type Coll<'s, D, R = isize> = VecCollection<'s, Time, D, R>;

/// The mode a job runs in. Jobs do not see it; operators do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bounded run over the log before a cut.
    Batch,
    /// Incremental run over the log from the cut on.
    Speed,
}

/// A persisted operator state as the engine sees it (type-erased).
///
/// A batch run captures a seed in **parts**, one per worker (the part of worker `i` is
/// shard `i` of the seed: see the engine's store), so the parts are encoded and written in
/// parallel and workers never share a buffer. A seed whose input is the very collection a
/// view is declared over is **shared** with that view: its rows are the view's rows (a
/// view file is the consolidated collection, and `((K, ()), R)` and `(K, R)` encode to the
/// same bincode), so nothing is captured or written for it and it is read from the view's
/// file.
pub trait AnySeed: Send + Sync {
    /// The seed's name (`{operator}.{input}`).
    fn name(&self) -> &str;
    /// The view whose batch file holds this seed's rows, if the seed is shared with one.
    fn shared_view(&self) -> Option<String>;
    /// The indices of the parts this process's workers captured (worker indices, global
    /// across the processes of a run), ascending. Empty for a shared seed.
    fn local_parts(&self) -> Vec<usize>;
    /// The number of parts in the whole run (its workers, in every process).
    fn parts(&self) -> usize;
    /// Batch mode: takes part `index` and encodes it (as captured, not consolidated),
    /// with its row count.
    fn take_part_encoded(&self, index: usize) -> Result<(Vec<u8>, usize), String>;
}

struct SeedCell<D, R> {
    name: String,
    /// One part per worker of the run; `Some` for this process's workers (set when the
    /// worker builds the seed), written only by that worker's sink.
    parts: Vec<Mutex<Option<Vec<(D, R)>>>>,
    /// The view this seed is shared with (set while building, before any data flows).
    shared: std::sync::OnceLock<String>,
}

impl<D: Data, R: Diff> AnySeed for SeedCell<D, R> {
    fn name(&self) -> &str {
        &self.name
    }
    fn shared_view(&self) -> Option<String> {
        self.shared.get().cloned()
    }
    fn local_parts(&self) -> Vec<usize> {
        if self.shared_view().is_some() {
            return Vec::new();
        }
        (0..self.parts.len()).filter(|i| self.parts[*i].lock().unwrap_or_else(|e| e.into_inner()).is_some()).collect()
    }
    fn parts(&self) -> usize {
        self.parts.len()
    }
    fn take_part_encoded(&self, index: usize) -> Result<(Vec<u8>, usize), String> {
        // Stored as captured, unsorted: the speed layer feeds a seed into a differential
        // dataflow at time 0, which consolidates it anyway, and in batch mode seeded inputs
        // come out of hash aggregations that hold one record per key already. Sorting the
        // largest seed (distinct pairs) would be most of a batch run's write time.
        let part = self.parts.get(index).ok_or_else(|| format!("seed {}: no part {index}", self.name))?;
        let rows = part.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map(std::mem::take).unwrap_or_default();
        let n = rows.len();
        crate::rows::encode(rows.iter()).map(|b| (b, n)).map_err(|e| format!("seed {}: encode failed: {e}", self.name))
    }
}

/// Marks a seed shared with a view (see [`AnySeed`]).
trait ShareSeed {
    fn share_with(&self, view: &str);
}

impl<D: Data, R: Diff> ShareSeed for SeedCell<D, R> {
    fn share_with(&self, view: &str) {
        // The first view declared over the collection holds the rows; every worker builds
        // the same job, so every worker picks the same one.
        let _ = self.shared.set(view.to_string());
        for part in &self.parts {
            if let Some(rows) = part.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                rows.clear();
            }
        }
    }
}

/// What one run's workers share: the views and seeds the job declared, by name, so that
/// every worker's sink feeds the same cell.
#[derive(Default)]
pub struct Registry {
    /// Whether sinks send everything to worker 0 first (see [`Registry::gathered`]).
    gather: bool,
    cells: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    views: Mutex<Vec<Arc<dyn AnyView>>>,
    seeds: Mutex<Vec<Arc<dyn AnySeed>>>,
}

impl Registry {
    /// A registry for a run that spans processes: each view's output is exchanged to
    /// worker 0 (in process 0) before it is captured, so process 0 holds all of it. (Seeds
    /// are not: each process writes its own shard of them.) Within one process every
    /// worker's sink feeds the same cell anyway.
    pub fn gathered() -> Registry {
        Registry { gather: true, ..Registry::default() }
    }

    /// The views declared so far, in declaration order.
    pub fn views(&self) -> Vec<Arc<dyn AnyView>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The seeds declared so far, in declaration order.
    pub fn seeds(&self) -> Vec<Arc<dyn AnySeed>> {
        self.seeds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn cell<C: Any + Send + Sync>(&self, name: &str, make: impl FnOnce() -> C, register: impl FnOnce(&Arc<C>)) -> Arc<C> {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = cells.get(name) {
            return Arc::clone(existing)
                .downcast::<C>()
                .unwrap_or_else(|_| panic!("job declares `{name}` with different types on different workers"));
        }
        let cell = Arc::new(make());
        register(&cell);
        cells.insert(name.to_string(), cell.clone());
        cell
    }
}

/// Where speed mode finds the seeds a batch run persisted.
pub trait SeedSource {
    /// The encoded seed named `name`. `Ok(None)` means there is no batch version at all
    /// (the speed layer starts from offset 0, so an empty seed is right); an error means a
    /// batch version exists but cannot provide this seed (a job changed without bumping its
    /// version, or a damaged file) — starting empty would silently drop history.
    fn seed(&self, name: &str) -> Result<Option<Arc<Vec<u8>>>, String>;

    /// The seed `name` as the shards it was written in (each a whole file of rows, as
    /// [`SeedSource::seed`] returns), so that each of several workers decodes only its own
    /// shards when there are at least as many shards as workers. The default is
    /// [`SeedSource::seed`] as one shard.
    fn seed_shards(&self, name: &str) -> Result<Option<Vec<Arc<Vec<u8>>>>, String> {
        Ok(self.seed(name)?.map(|bytes| vec![bytes]))
    }
}

/// The job's handle on the dataflow under construction: the DSL.
pub struct Ctx<'s> {
    scope: Scope<'s, Time>,
    mode: Mode,
    registry: Arc<Registry>,
    seeds: Option<Arc<dyn SeedSource>>,
    names: BTreeSet<String>,
    errors: Vec<String>,
    probe: ProbeHandle<Time>,
    /// The job's events stream, once the engine names it (see [`Ctx::set_events`]).
    events: Option<timely::progress::Source>,
    /// Batch mode: the collections views are declared over, by stream, with the first
    /// view's name; and the seeds captured from collections, by stream (see [`AnySeed`]).
    view_streams: std::collections::BTreeMap<timely::progress::Source, String>,
    seed_streams: std::collections::BTreeMap<timely::progress::Source, Vec<Arc<dyn ShareSeed + Send + Sync>>>,
}

impl<'s> Ctx<'s> {
    /// A context for building a job in `mode` (called by the engine, and by tests).
    pub fn new(scope: Scope<'s, Time>, mode: Mode, registry: Arc<Registry>, seeds: Option<Arc<dyn SeedSource>>) -> Self {
        Ctx {
            scope,
            mode,
            registry,
            seeds,
            names: BTreeSet::new(),
            errors: Vec::new(),
            probe: ProbeHandle::new(),
            events: None,
            view_streams: Default::default(),
            seed_streams: Default::default(),
        }
    }

    /// Names the collection of the job's events, so that [`Ctx::inserts`] can tell it apart
    /// from derived collections. The engine calls it once, before `build`; a second call
    /// (a job trying to declare another collection insert-only) is a build error, since
    /// extremes over a collection that retracts would be wrong with bounded seeds.
    #[doc(hidden)]
    pub fn set_events<D: Data>(&mut self, events: &Coll<'s, D>) {
        if self.events.is_some() {
            self.errors.push(
                "ctx.set_events is the engine's: the job's events are named already. Use ctx.inserts(events) \
                 on build's own `events` for an insert-only collection"
                    .to_string(),
            );
            return;
        }
        self.events = Some(*events.inner.name());
    }

    /// The job's `events` as an [`Inserts`](crate::Inserts): a collection known never to
    /// retract, over which `max`, `min`, `arg_max` and `arg_min` keep one row per key instead
    /// of every input row. Only the `events` argument of `build` qualifies (anything else
    /// is a build error naming the fix): derive insert-only collections from it with the
    /// methods of `Inserts`.
    pub fn inserts<D: Data>(&mut self, events: Coll<'s, D>) -> crate::Inserts<'s, D> {
        if self.events != Some(*events.inner.name()) {
            self.errors.push(
                "ctx.inserts(..) takes the job's own `events` (the argument of `build`), not a derived collection: \
                 call it on `events` first and shape the result with Inserts' map/filter/flat_map/concat"
                    .to_string(),
            );
        }
        crate::Inserts { coll: events }
    }

    /// The mode this context builds in.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The scope, for jobs that need a raw differential or timely operator.
    pub fn scope(&self) -> Scope<'s, Time> {
        self.scope
    }

    /// A probe that every view and seed sink feeds: when it passes a time, every sink on
    /// every worker has received all of that time's output.
    pub fn probe(&self) -> ProbeHandle<Time> {
        self.probe.clone()
    }

    /// Errors found while building (duplicate names, missing seeds). The engine refuses
    /// to run a job that has any.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Names live in three namespaces (operators, views, seeds), so a view may share the
    /// name of the operator that computes it.
    pub(crate) fn claim(&mut self, kind: &str, name: &str) {
        // Names become file names of batch views and seeds: check them now, not after a
        // whole batch computation.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-') {
            self.errors.push(format!("the {kind} name `{name}` must be non-empty ASCII letters, digits, `_`, `.` or `-`"));
        }
        if !self.names.insert(format!("{kind}:{name}")) {
            self.errors.push(format!("the {kind} name `{name}` is used twice in this job"));
        }
    }

    /// Declares a **sum view**: `coll` holds keys whose difference is the aggregate.
    /// `present` renders the aggregate as the view's JSON value. The view's listing
    /// describes the JSON of the key's and the aggregate's [`Example`].
    pub fn sum_view<K, R>(&mut self, name: &str, coll: Coll<'s, K, R>, present: impl Fn(&R) -> Value + Send + Sync + 'static)
    where
        K: ViewKey,
        R: Diff + Example,
    {
        let present = Arc::new(move |_: &(), r: &R| present(r));
        // The view's file holds `((K, ()), R)` rows: the same bincode as `coll`'s `(K, R)`.
        self.note_view_stream(name, *coll.inner.name());
        self.view_core::<K, (), R>(name, ViewKind::Sum, coll.map(|k| (k, ())), present);
    }

    /// Declares a **value view**: `coll` holds one `(key, value)` record per key. The
    /// view's listing describes the JSON of the key's and the value's [`Example`].
    pub fn value_view<K, V>(&mut self, name: &str, coll: Coll<'s, (K, V)>, present: impl Fn(&V) -> Value + Send + Sync + 'static)
    where
        K: ViewKey,
        V: Data + Example,
    {
        let present = Arc::new(move |v: &V, _: &isize| present(v));
        self.note_view_stream(name, *coll.inner.name());
        self.view_core(name, ViewKind::Value, coll, present);
    }

    /// Batch mode: a view `name` is declared over the collection `stream`. Seeds captured
    /// from that same collection (before or after this) are shared with the first view
    /// declared over it: its file holds exactly their rows (see [`AnySeed`]).
    fn note_view_stream(&mut self, name: &str, stream: timely::progress::Source) {
        if self.mode != Mode::Batch {
            return;
        }
        let view = self.view_streams.entry(stream).or_insert_with(|| name.to_string()).clone();
        for seed in self.seed_streams.get(&stream).into_iter().flatten() {
            seed.share_with(&view);
        }
    }

    fn view_core<K, V, R>(
        &mut self,
        name: &str,
        kind: ViewKind,
        coll: Coll<'s, (K, V), R>,
        present: Arc<dyn Fn(&V, &R) -> Value + Send + Sync>,
    ) where
        K: ViewKey,
        V: Data + Example,
        R: Diff + Example,
    {
        self.claim("view", name);
        // Users see the views' JSON forms, never Rust type names: describe what the key and
        // the presentation of an example value look like.
        let info = ViewInfo {
            name: name.to_string(),
            kind,
            key: describe(&K::example().to_json()),
            value: describe(&present(&V::example(), &R::example())),
        };
        let cell = self.registry.cell(
            &format!("view:{name}"),
            || ViewCell::<K, V, R>::new(info, present),
            |c| self.registry.views.lock().unwrap_or_else(|e| e.into_inner()).push(c.clone() as Arc<dyn AnyView>),
        );
        // Speed updates at time 0 restate the batch view (the operators' seeds) and every
        // drain drops them: they are not kept at all (one row per key of the view, held
        // until the first drain, for every view of the job), nor sent to worker 0 first.
        let coll = match self.mode {
            Mode::Speed => after_time_zero(coll),
            Mode::Batch => coll,
        };
        let coll = self.gather(coll);
        let mut buffer = Vec::new();
        // No consolidation here in either mode. Batch: the cell consolidates everything the
        // workers captured when it encodes the batch view (it sorts to write it anyway).
        // Speed: the speed table adds updates up per key itself, so an arrangement here would
        // only hold every output ever produced (growing memory, merge pauses in the tail).
        coll.inspect_batch(move |_time, data| {
            buffer.extend_from_slice(data);
            if !buffer.is_empty() {
                cell.push(&mut buffer);
            }
        })
        .probe_with(&self.probe);
    }

    /// In a run that spans processes, routes `coll` to worker 0 (see [`Registry::gathered`]).
    fn gather<D: Data, R: Diff>(&self, coll: Coll<'s, D, R>) -> Coll<'s, D, R> {
        if self.registry.gather {
            timely::dataflow::operators::Exchange::exchange(coll.inner, |_| 0).as_collection()
        } else {
            coll
        }
    }

    /// Groups by key and applies `logic` to each key's consolidated values: a hash group-by
    /// in batch mode; in speed mode an incremental group-by over the totally ordered epochs
    /// (a hash table of each key's values and last output, no arrangement), which emits
    /// what differential's `reduce` would.
    pub(crate) fn group<K, V, R, V2, L>(&self, name: &str, coll: Coll<'s, (K, V), R>, logic: L) -> Coll<'s, (K, V2)>
    where
        K: Data,
        V: Data,
        R: Diff,
        V2: Data,
        L: FnMut(&K, &[(&V, R)], &mut Vec<(V2, isize)>) + 'static,
    {
        match self.mode {
            Mode::Batch => crate::hash::reduce_by_hash(name, coll, logic),
            Mode::Speed => crate::hash::reduce_ordered(name, coll, logic),
        }
    }

    /// Seeds a stateful operator's input (see the module docs). Batch mode: captures the
    /// consolidated input as the seed `name` and passes the input on. Speed mode: returns
    /// the stored seed at time 0 plus the input's updates after time 0.
    pub fn seeded<D, R>(&mut self, name: &str, input: Coll<'s, D, R>) -> Coll<'s, D, R>
    where
        D: Data,
        R: Diff,
    {
        let seed_name = format!("{name}.seed");
        self.claim("seed", &seed_name);
        match self.mode {
            Mode::Batch => {
                let (index, peers) = (self.scope.index(), self.scope.peers());
                let cell = self.registry.cell(
                    &format!("seed:{seed_name}"),
                    || SeedCell::<D, R> {
                        name: seed_name.clone(),
                        parts: (0..peers).map(|_| Mutex::new(None)).collect(),
                        shared: std::sync::OnceLock::new(),
                    },
                    |c| self.registry.seeds.lock().unwrap_or_else(|e| e.into_inner()).push(c.clone() as Arc<dyn AnySeed>),
                );
                // This worker's part: its sink is the only writer.
                *cell.parts[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
                let stream = *input.inner.name();
                match self.view_streams.get(&stream) {
                    // A view holds these rows already: capture nothing.
                    Some(view) => {
                        cell.share_with(view);
                        return input;
                    }
                    None => self.seed_streams.entry(stream).or_default().push(cell.clone()),
                }
                // Each worker captures its own part; the engine writes the parts (shards)
                // in parallel. Not gathered across processes: each process writes its own.
                input
                    .clone()
                    .inspect_batch(move |_time, data| {
                        let mut part = cell.parts[index].lock().unwrap_or_else(|e| e.into_inner());
                        // Cleared (and no longer filled) once a view declared later shares it.
                        if cell.shared.get().is_none() {
                            if let Some(rows) = part.as_mut() {
                                rows.extend(data.iter().map(|(d, _t, r)| (d.clone(), r.clone())));
                            }
                        }
                    })
                    .probe_with(&self.probe);
                input
            }
            Mode::Speed => {
                let seed = match &self.seeds {
                    Some(source) => source.seed_shards(&seed_name),
                    None => Ok(None),
                };
                let records: Vec<(D, Time, R)> = match seed {
                    Err(e) => {
                        self.errors.push(e);
                        Vec::new()
                    }
                    // No batch run yet: the speed layer covers the log from offset 0.
                    Ok(None) => Vec::new(),
                    Ok(Some(shards)) => match decode_own_shards::<D, R>(
                        &shards.iter().map(|s| s.as_slice()).collect::<Vec<_>>(),
                        self.scope.index(),
                        self.scope.peers(),
                    ) {
                        Ok(rows) => rows,
                        Err(e) => {
                            self.errors.push(format!("seed {seed_name} does not decode: {e}"));
                            Vec::new()
                        }
                    },
                };
                let seed = records.to_stream(self.scope).as_collection();
                let changes = after_time_zero(input);
                seed.concat(changes)
            }
        }
    }

    /// Keyed sum: `f` maps each record to at most one `(key, aggregate)`; the result holds
    /// each key with its aggregate as difference. Pre-aggregates per worker and time before
    /// the exchange, so a batch run ships one update per key and worker, not per event.
    pub fn sum<D, K, R, F>(&mut self, name: &str, input: Coll<'s, D>, f: F) -> Coll<'s, K, R>
    where
        D: Data,
        K: Data + std::hash::Hash,
        R: Diff + Multiply<isize, Output = R>,
        F: Fn(&D) -> Option<(K, R)> + 'static,
    {
        self.claim("operator", name);
        let local = crate::hash::aggregate(&format!("Sum: {name}"), input, false, crate::hash::PARTIAL_KEYS_MAX, f);
        match self.mode {
            // Batch: finish the aggregation across workers now, so everything downstream
            // (views, seeds, top-k) receives one update per key.
            Mode::Batch => crate::hash::consolidate_by_hash(&format!("Sum (exchange): {name}"), local),
            Mode::Speed => local,
        }
    }

    /// Keyed count: the number of records per key `f(record)` (records with `f` = `None`
    /// are not counted), as a one-lane [`crate::Sums`]. A [`Ctx::sum`] with a lane of 1s.
    pub fn count<D, K, F>(&mut self, name: &str, input: Coll<'s, D>, f: F) -> Coll<'s, K, crate::Sums<1>>
    where
        D: Data,
        K: Data + std::hash::Hash,
        F: Fn(&D) -> Option<K> + 'static,
    {
        self.sum(name, input, move |d| f(d).map(|k| (k, crate::Sums([1]))))
    }

    /// Distinct count: for `(key, item)` records, the number of distinct items per key: an
    /// item counts while its accumulated count for the key is positive (retracting an
    /// occurrence with a negative diff is allowed). Seeded with the distinct pairs at the cut.
    pub fn distinct_count<K, I>(&mut self, name: &str, input: Coll<'s, (K, I)>) -> Coll<'s, K, crate::Sums<1>>
    where
        K: Data + std::hash::Hash,
        I: Data,
    {
        self.claim("operator", name);
        // The seed is each pair's accumulated count at the cut (one record per pair), not the
        // thresholded set: with retractions a pair can sit at a non-positive count, and a later
        // +1 must not make it count. The threshold (count > 0) applies after the seed, in
        // both modes.
        let counted = match self.mode {
            // NB: `usize::MAX` keeps one record per pair; a pair emitted twice as partial
            // counts would be thresholded twice.
            Mode::Batch => crate::hash::aggregate(&format!("DistinctCount (pairs): {name}"), input, true, usize::MAX, |p: &(K, I)| {
                Some((p.clone(), 1isize))
            }),
            Mode::Speed => input,
        };
        let pairs = self.seeded(name, counted);
        let distinct = match self.mode {
            Mode::Batch => pairs.inner.flat_map(|(p, t, n)| if n > 0 { Some((p, t, 1isize)) } else { None }).as_collection(),
            // What `threshold(count > 0)` gives, from a hash table of counts per pair.
            Mode::Speed => crate::hash::positive_ordered(&format!("DistinctCount: {name}"), pairs),
        };
        crate::hash::aggregate(&format!("DistinctCount: {name}"), distinct, false, crate::hash::PARTIAL_KEYS_MAX, |(k, _i): &(K, I)| {
            Some((k.clone(), crate::Sums([1])))
        })
    }

    /// Aggregate of an aggregate, step one: for each key of an aggregated collection, the
    /// value `f(key, aggregate)` (e.g. a customer's segment from their total spend). Seeded
    /// with the aggregate at the cut. Follow it with [`Ctx::count`] or [`Ctx::sum`].
    pub fn per_key<K, R, V, F>(&mut self, name: &str, input: Coll<'s, K, R>, f: F) -> Coll<'s, (K, V)>
    where
        K: Data,
        R: Diff,
        V: Data,
        F: Fn(&K, &R) -> V + 'static,
    {
        self.claim("operator", name);
        let input = self.seeded(name, input);
        self.group(&format!("PerKey: {name}"), input.map(|k| (k, ())), move |k, vals: &[(&(), R)], out| {
            out.push((f(k, &vals[0].1), 1isize));
        })
    }

    /// Top-k per key: for `((key, item), aggregate)` records, the `k` items with the highest
    /// `score(aggregate)` per key, ties broken by the smaller item, as one sorted list per
    /// key. Seeded with the aggregated input at the cut. The score is any ordered type,
    /// usually a [`crate::Sums`] lane (an `i128`, so scores are exact sums too).
    pub fn top_k<K, I, R, S, F>(&mut self, name: &str, input: Coll<'s, (K, I), R>, k: usize, score: F) -> Coll<'s, (K, Vec<(I, S)>)>
    where
        K: Data,
        I: Data,
        R: Diff,
        S: Data,
        F: Fn(&R) -> S + 'static,
    {
        self.claim("operator", name);
        let input = self.seeded(name, input);
        self.top_k_seeded(name, input, k, score)
    }

    /// [`Ctx::top_k`] over a keyed aggregate whose key `split`s into `(key, item)`, e.g. the
    /// revenue per (day, product) ranked per day. The seed is `input` itself, before the
    /// split: when a view is declared over the same collection (as a keyed sum usually is),
    /// the seed is shared with that view and the batch run writes those rows once.
    pub fn top_k_by<D, K, I, R, S, P, F>(
        &mut self,
        name: &str,
        input: Coll<'s, D, R>,
        split: P,
        k: usize,
        score: F,
    ) -> Coll<'s, (K, Vec<(I, S)>)>
    where
        D: Data,
        K: Data,
        I: Data,
        R: Diff,
        S: Data,
        P: Fn(D) -> (K, I) + 'static,
        F: Fn(&R) -> S + 'static,
    {
        self.claim("operator", name);
        let input = self.seeded(name, input).map(split);
        self.top_k_seeded(name, input, k, score)
    }

    fn top_k_seeded<K, I, R, S, F>(&mut self, name: &str, input: Coll<'s, (K, I), R>, k: usize, score: F) -> Coll<'s, (K, Vec<(I, S)>)>
    where
        K: Data,
        I: Data,
        R: Diff,
        S: Data,
        F: Fn(&R) -> S + 'static,
    {
        if self.mode == Mode::Speed {
            // Items ranked per key: a change costs O(log n), not a pass over the key's items.
            return crate::hash::top_k_ordered(&format!("TopK: {name}"), input, k, score);
        }
        self.group(&format!("TopK: {name}"), input, move |_key, vals: &[(&I, R)], out| {
            let mut scored: Vec<(S, &I)> = vals.iter().map(|(i, r)| (score(r), *i)).collect();
            scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            let top: Vec<(I, S)> = scored.into_iter().take(k).map(|(s, i)| (i.clone(), s)).collect();
            out.push((top, 1isize));
        })
    }

    /// Equi-join of two keyed collections. Seeded on both sides, so the join's output in
    /// speed mode is exactly "join at the cut + its changes since".
    pub fn join<K, A, B>(&mut self, name: &str, left: Coll<'s, (K, A)>, right: Coll<'s, (K, B)>) -> Coll<'s, (K, (A, B))>
    where
        K: Data,
        A: Data,
        B: Data,
    {
        self.claim("operator", name);
        let left = self.seeded(&format!("{name}.left"), left);
        let right = self.seeded(&format!("{name}.right"), right);
        left.join(right)
    }
}

impl Registry {
    /// The counters the job's operators keep while they run (see [`Ctx::counter`]), by
    /// name, summed over this process's workers, sorted by name. An interval join counts
    /// `interval_join.NAME.second_rows`: keys that got a second dimension row in the speed
    /// layer (their pairs are incomplete until the next batch run).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let mut counters: Vec<(String, u64)> = cells
            .iter()
            .filter_map(|(name, cell)| {
                let name = name.strip_prefix("counter:")?;
                let counter = Arc::clone(cell).downcast::<std::sync::atomic::AtomicU64>().ok()?;
                Some((name.to_string(), counter.load(std::sync::atomic::Ordering::Relaxed)))
            })
            .collect();
        counters.sort();
        counters
    }
}

impl<'s> Ctx<'s> {
    /// A counter named `name`, shared by this run's workers (one per name), that the
    /// engine reads with [`Registry::counters`] (the speed layer's appear in `status`).
    pub(crate) fn counter(&self, name: &str) -> Arc<std::sync::atomic::AtomicU64> {
        self.registry.cell(&format!("counter:{name}"), || std::sync::atomic::AtomicU64::new(0), |_| {})
    }
}

/// The updates of `coll` after time 0: in speed mode, time 0 holds the seeds, and what a
/// collection says at time 0 restates them.
fn after_time_zero<'s, D: Data, R: Diff>(coll: Coll<'s, D, R>) -> Coll<'s, D, R> {
    timely::dataflow::operators::vec::Filter::filter(coll.inner, |(_, t, _)| *t > 0).as_collection()
}

/// Decodes a seed in shards (each a file of rows, see `rows`) and keeps only the rows of
/// worker `index` of `peers`, as records at time 0. With at least as many shards as
/// workers, the worker decodes whole shards (`index`, `index + peers`, ...) and no other
/// byte; with fewer, every worker reads every shard and keeps the rows whose position `i`
/// in the shards' concatenation has `i % peers == index`. Either way each row is restored
/// by exactly one worker. Rows are split by position, not by key: the seeded operators
/// exchange their input by key themselves, so any partition restoring each row exactly
/// once is exact. Streaming keeps a worker's memory at its own share, not the whole
/// decoded seed.
pub(crate) fn decode_own_shards<D, R>(shards: &[&[u8]], index: usize, peers: usize) -> Result<Vec<(D, Time, R)>, bincode::Error>
where
    D: serde::de::DeserializeOwned,
    R: serde::de::DeserializeOwned,
{
    let mut rows = Vec::new();
    if shards.len() >= peers {
        // Room for the rows at once (growing through every power of two copies them and
        // touches twice the memory); never more than one row per byte, whatever a count says.
        let counted: u64 = shards.iter().skip(index).step_by(peers).map(|s| crate::rows::count_bound(s)).sum();
        rows.reserve(counted as usize);
        for shard in shards.iter().skip(index).step_by(peers) {
            crate::rows::decode_each(shard, |_, (d, r): (D, R)| rows.push((d, 0, r)))?;
        }
        return Ok(rows);
    }
    let mut base = 0u64;
    for shard in shards {
        let mut count = 0;
        crate::rows::decode_each(shard, |i, (d, r): (D, R)| {
            count = i + 1;
            if (base + i) % peers as u64 == index as u64 {
                rows.push((d, 0, r));
            }
        })?;
        base += count;
    }
    Ok(rows)
}

#[cfg(test)]
mod decode_tests {
    use super::decode_own_shards;

    // Review issue: every worker decoded the whole seed. The streamed decode keeps only its
    // own rows, and across any number of workers and shards restores each row exactly once;
    // with at least as many shards as workers, a worker's rows are its whole shards.
    #[test]
    fn each_row_restored_by_exactly_one_worker() {
        let rows: Vec<(String, isize)> = (0..23).map(|i| (format!("k{i}"), i as isize - 3)).collect();
        for shards in 1..6usize {
            // Uneven shards: shard s holds rows s, s + shards, ...; from 3 shards on, an
            // empty one among them. Fixed-width rows (format 2) with an odd number of
            // shards, variable-length ones (format 3) with an even one.
            let mut parts: Vec<Vec<(String, isize)>> =
                (0..shards).map(|s| rows.iter().skip(s).step_by(shards).cloned().collect()).collect();
            if shards >= 3 {
                parts[1] = Vec::new();
                parts[0].extend(rows.iter().skip(1).step_by(shards).cloned());
            }
            let files: Vec<Vec<u8>> = parts
                .iter()
                .map(|p| if shards % 2 == 1 { bincode::serialize(p).unwrap() } else { crate::rows::encode(p.iter()).unwrap() })
                .collect();
            for peers in [1, 2, 3, 4, 7, 16] {
                let mut all: Vec<(String, isize)> = Vec::new();
                for index in 0..peers {
                    let own =
                        decode_own_shards::<String, isize>(&files.iter().map(|f| f.as_slice()).collect::<Vec<_>>(), index, peers).unwrap();
                    let own: Vec<(String, isize)> = own
                        .into_iter()
                        .map(|(d, t, r)| {
                            assert_eq!(t, 0);
                            (d, r)
                        })
                        .collect();
                    if shards >= peers {
                        let whole: Vec<(String, isize)> = parts.iter().skip(index).step_by(peers).flatten().cloned().collect();
                        assert_eq!(own, whole, "{shards} shards, {peers} workers: worker {index} decodes its whole shards");
                    } else {
                        assert!(own.len() <= rows.len() / peers + 1, "{peers} workers: worker {index} kept {}", own.len());
                    }
                    all.extend(own);
                }
                all.sort();
                let mut expected = rows.clone();
                expected.sort();
                assert_eq!(all, expected, "{shards} shards, {peers} workers");
            }
            // A truncated shard is an error, not a silently shorter seed.
            let mut cut = files.clone();
            let last = cut.last_mut().unwrap();
            last.pop();
            assert!(
                decode_own_shards::<String, isize>(&cut.iter().map(|f| f.as_slice()).collect::<Vec<_>>(), 0, 1).is_err(),
                "{shards} shards"
            );
        }
    }
}

#[cfg(test)]
mod speed_view_tests {
    use super::{Ctx, Mode, Registry, SeedSource};
    use crate::view::ViewCell;
    use crate::Time;
    use std::sync::Arc;

    struct OneSeed(Arc<Vec<u8>>);

    impl SeedSource for OneSeed {
        fn seed(&self, _name: &str) -> Result<Option<Arc<Vec<u8>>>, String> {
            Ok(Some(self.0.clone()))
        }
    }

    // A speed-mode view keeps none of the time-0 updates that restate the seeds (every
    // drain drops them): a seed of 200 keys and one event after it leave one update in the
    // view's cell, not 201 until the first drain.
    #[test]
    fn speed_views_keep_no_time_zero_restatement() {
        let rows: Vec<((u64, u64), isize)> = (0..200).map(|k| ((k, 2 * k), 1)).collect();
        let bytes = Arc::new(bincode::serialize(&rows).expect("encode"));
        let registry = Arc::new(Registry::default());
        let r = registry.clone();
        timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, events) = differential_dataflow::input::Input::new_collection::<(u64, u64), isize>(&scope);
                let mut ctx = Ctx::new(scope, Mode::Speed, r.clone(), Some(Arc::new(OneSeed(bytes.clone())) as Arc<dyn SeedSource>));
                let coll = ctx.seeded("s", events);
                ctx.value_view("v", coll, |v: &u64| serde_json::json!(v));
                (input, ctx.probe())
            });
            input.advance_to(1);
            input.insert((500, 7));
            input.advance_to(2);
            input.flush();
            while probe.less_than(&2) {
                worker.step();
            }
        });
        let cell = registry.cell::<ViewCell<u64, u64, isize>>("view:v", || unreachable!("declared by the run"), |_| {});
        assert_eq!(cell.pending(), vec![((500, 7), 1, 1)]);
    }
}
