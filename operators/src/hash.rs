//! Hash-based operators for batch mode, and a fast non-cryptographic hasher.
//!
//! In batch mode every update has time 0 and the input is bounded, so differential's
//! incremental machinery (arrangements that keep history, sort-merge batchers) does work the
//! batch run never uses. These operators produce, at time 0, exactly the collection their
//! differential counterparts produce, with hash tables: pre-aggregate on each worker,
//! exchange by key, accumulate, and emit once the input is complete. They are correct at
//! any time (they work per time), but hold everything until the time completes, so they are
//! only used for batch mode.
//!
//! The `*_ordered` operators are the speed mode's stateful operators: epochs are totally
//! ordered, so they apply each completed time in order to per-key hash state and emit the
//! output's changes at that time, exactly what differential's `reduce` and `threshold`
//! emit, without an arrangement or any history.

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::difference::Multiply;
use differential_dataflow::AsCollection;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, InputCapability};

use crate::ctx::{Coll, Time};
use crate::view::{Data, Diff};

/// FxHash (rustc's hasher): a multiply-rotate hash, several times faster than SipHash on
/// small keys. Not DoS-resistant; keys here come from the job, not from a network peer.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for b in chunks.remainder() {
            self.add(*b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.add(i as u32 as u64)
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The routing hash of a record: which worker consolidates it.
pub(crate) fn route<D: Hash>(d: &D) -> u64 {
    let mut h = FxHasher::default();
    d.hash(&mut h);
    // Mix the high bits down: FxHash's low bits are weak and routing uses `% peers`.
    let x = h.finish();
    x ^ (x >> 29) ^ (x >> 47)
}

/// Keys a pre-aggregation table holds before it emits partial sums early (bounding memory).
pub(crate) const PARTIAL_KEYS_MAX: usize = 1 << 22;

/// Keys past which an aggregation [`Table`] splits into [`SHARDS`] tables.
const SPLIT_KEYS: usize = 1 << 16;

/// Shards of a split [`Table`].
const SHARDS: usize = 64;

/// Records a split [`Table`] stages per shard before adding them. Staging took a 10M-event
/// shop batch from 4.08 to 3.88 CPU-seconds (2.10 → 1.97 s on 2 workers; 256 and 64K-event
/// steps, `benches/lambda.rs`).
const STAGED: usize = 256;

/// Inputs after which a pre-aggregation that may emit partial sums checks how much it
/// reduces: holding more than one key per two inputs, it stops aggregating and passes its
/// input on (see [`aggregate`]).
const REDUCTION_CHECK: u64 = 1 << 18;

/// The hash table of an aggregation: one `FxHashMap` while small, [`SHARDS`] of them, chosen
/// by key hash, once it holds more than `split` keys. A batch run's large aggregations (the
/// distinct (day, customer) pairs: 2M+ keys per worker at 10M events) grow by doubling;
/// one table of 100+ MB rehashes every entry into fresh memory each time (a cache miss per
/// entry, and new pages the kernel must zero), while shards of a few MB rehash in cache,
/// reuse the memory their smaller predecessors freed, and grow one at a time.
pub(crate) struct Table<K, R> {
    shards: Vec<FxHashMap<K, R>>,
    /// A split table's records not yet added, per shard (see [`Table::add`]).
    staged: Vec<Vec<(K, R)>>,
    /// Keys held, over all shards.
    len: usize,
    split: usize,
    /// Records added so far.
    inputs: u64,
    /// Whether the aggregation passes its input on instead (see [`aggregate`]).
    passthrough: bool,
}

impl<K: Hash + Eq, R: differential_dataflow::difference::Semigroup> Table<K, R> {
    /// An empty table that splits past `split` keys.
    pub(crate) fn new(split: usize) -> Self {
        Table { shards: vec![FxHashMap::default()], staged: Vec::new(), len: 0, split, inputs: 0, passthrough: false }
    }

    /// The shard of `k` in a split table: hash bits 32..38, which hashbrown uses neither for
    /// a table's bucket index (low bits) nor for its tag (top 7 bits), so keys sharing a
    /// shard still spread over its buckets and tags.
    #[inline]
    fn shard_of(k: &K) -> usize {
        let mut h = FxHasher::default();
        k.hash(&mut h);
        (h.finish() >> 32) as usize % SHARDS
    }

    /// Adds `r` to `k`'s aggregate.
    ///
    /// A split table stages records per shard and adds a shard's [`STAGED`] at once: the
    /// shard's map (a 64th of the table) then takes a run of inserts back to back, whose
    /// cache misses overlap, instead of one miss into the whole table per record between
    /// the dataflow's other work.
    #[inline]
    pub(crate) fn add(&mut self, k: K, r: R) {
        self.inputs += 1;
        if self.shards.len() == 1 {
            self.insert(0, k, r);
            return;
        }
        let shard = Self::shard_of(&k);
        let staged = &mut self.staged[shard];
        staged.push((k, r));
        if staged.len() >= STAGED {
            self.flush(shard);
        }
    }

    /// Adds shard `shard`'s staged records.
    fn flush(&mut self, shard: usize) {
        let mut staged = std::mem::take(&mut self.staged[shard]);
        for (k, r) in staged.drain(..) {
            self.insert(shard, k, r);
        }
        self.staged[shard] = staged;
    }

    /// Adds every staged record.
    pub(crate) fn flush_all(&mut self) {
        for shard in 0..self.staged.len() {
            if !self.staged[shard].is_empty() {
                self.flush(shard);
            }
        }
    }

    #[inline]
    fn insert(&mut self, shard: usize, k: K, r: R) {
        match self.shards[shard].entry(k) {
            Entry::Occupied(mut acc) => acc.get_mut().plus_equals(&r),
            Entry::Vacant(slot) => {
                slot.insert(r);
                self.len += 1;
                if self.len > self.split && self.shards.len() == 1 {
                    self.split_up();
                }
            }
        }
    }

    fn split_up(&mut self) {
        let one = std::mem::take(&mut self.shards[0]);
        let each = one.len() / SHARDS * 2;
        self.shards = (0..SHARDS).map(|_| FxHashMap::with_capacity_and_hasher(each, Default::default())).collect();
        for (k, r) in one {
            self.shards[Self::shard_of(&k)].insert(k, r);
        }
        self.staged = (0..SHARDS).map(|_| Vec::with_capacity(STAGED)).collect();
    }

    /// Keys held (staged records not counted: [`Table::flush_all`] first for the exact
    /// number).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Takes every key and aggregate, leaving the table empty (with its memory).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (K, R)> + '_ {
        self.flush_all();
        self.len = 0;
        self.shards.iter_mut().flat_map(|m| m.drain())
    }
}

/// Accumulates `f(record) -> (key, diff)` per time in a hash table and emits the keys when
/// the time completes. With `exchange`, records first go to the worker owning their key.
///
/// `keys_max` bounds the table: past it, the table is emitted early as partial sums and
/// restarted, so a key may then appear more than once per time. A table that may emit
/// partial sums (`keys_max` below `usize::MAX`) and, after [`REDUCTION_CHECK`] records,
/// holds more than one key per two of them (the revenue per (day, product) at 10M events:
/// 724k keys from 1.5M events per worker) is emitted and the time's further records are
/// passed on as they come: pre-aggregating them would cost a cache miss into a large table
/// per record to save little of the exchange, which the consolidation after it aggregates
/// anyway. Partial sums are valid
/// differential updates (they add up downstream), but a caller that needs one record per
/// key and time (e.g. to threshold counts into a distinct set) must pass `usize::MAX`.
pub(crate) fn aggregate<'s, D, K, R, F>(name: &str, input: Coll<'s, D>, exchange: bool, keys_max: usize, f: F) -> Coll<'s, K, R>
where
    D: Data,
    K: Data + Hash,
    R: Diff + Multiply<isize, Output = R>,
    F: Fn(&D) -> Option<(K, R)> + 'static,
{
    aggregate_split(name, input, exchange, keys_max, SPLIT_KEYS, REDUCTION_CHECK, f)
}

/// [`aggregate`] whose tables split into shards past `split` keys and check their reduction
/// after `check` records (tests use small ones).
#[allow(clippy::too_many_arguments)]
pub(crate) fn aggregate_split<'s, D, K, R, F>(
    name: &str,
    input: Coll<'s, D>,
    exchange: bool,
    keys_max: usize,
    split: usize,
    check: u64,
    f: F,
) -> Coll<'s, K, R>
where
    D: Data,
    K: Data + Hash,
    R: Diff + Multiply<isize, Output = R>,
    F: Fn(&D) -> Option<(K, R)> + 'static,
{
    if exchange {
        aggregate_with(name, input, Exchange::new(|(d, _t, _r): &(D, Time, isize)| route(d)), keys_max, (split, check), f)
    } else {
        aggregate_with(name, input, Pipeline, keys_max, (split, check), f)
    }
}

/// Like [`aggregate`] for a collection whose diff is already the aggregate: consolidates it
/// across workers by record, one record per key and time (no early emission).
pub(crate) fn consolidate_by_hash<'s, D, R>(name: &str, input: Coll<'s, D, R>) -> Coll<'s, D, R>
where
    D: Data + Hash,
    R: Diff,
{
    aggregate_core(name, input, Exchange::new(|(d, _t, _r): &(D, Time, R)| route(d)), usize::MAX, (SPLIT_KEYS, u64::MAX), |d: &D, r: &R| {
        Some((d.clone(), r.clone()))
    })
}

fn aggregate_with<'s, D, K, R, F, P>(name: &str, input: Coll<'s, D>, pact: P, keys_max: usize, tuning: (usize, u64), f: F) -> Coll<'s, K, R>
where
    D: Data,
    K: Data + Hash,
    R: Diff + Multiply<isize, Output = R>,
    F: Fn(&D) -> Option<(K, R)> + 'static,
    P: ParallelizationContract<Time, Vec<(D, Time, isize)>>,
{
    // Almost every update is an insert (diff 1): skip the lane-wise multiply for it.
    aggregate_core(name, input, pact, keys_max, tuning, move |d: &D, diff: &isize| {
        f(d).map(|(k, r)| (k, if *diff == 1 { r } else { r.multiply(diff) }))
    })
}

fn aggregate_core<'s, D, R0, K, R, F, P>(
    name: &str,
    input: Coll<'s, D, R0>,
    pact: P,
    keys_max: usize,
    (split, check): (usize, u64),
    f: F,
) -> Coll<'s, K, R>
where
    D: Data,
    R0: Diff,
    K: Data + Hash,
    R: Diff,
    F: Fn(&D, &R0) -> Option<(K, R)> + 'static,
    P: ParallelizationContract<Time, Vec<(D, Time, R0)>>,
{
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(K, Time, R)>>, _, _, _>(pact, name, |_cap, _info| {
            // Few times are pending at once (batch mode: one), so a BTreeMap, looked up once
            // per run of updates with the same time, not a SipHash per update.
            let mut pending: BTreeMap<Time, (Capability<Time>, Table<K, R>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let mut updates = data.drain(..).peekable();
                    while let Some(&(_, t, _)) = updates.peek() {
                        // An update's own time may be later than its message's stamp.
                        let (tcap, table) = pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Table::new(split)));
                        if table.passthrough {
                            let mut session = output.session(tcap);
                            while let Some((d, _, diff)) = updates.next_if(|(_, t2, _)| *t2 == t) {
                                let Some((k, r)) = f(&d, &diff) else { continue };
                                if !r.is_zero() {
                                    session.give((k, t, r));
                                }
                            }
                            continue;
                        }
                        while let Some((d, _, diff)) = updates.next_if(|(_, t2, _)| *t2 == t) {
                            let Some((k, r)) = f(&d, &diff) else { continue };
                            table.add(k, r);
                        }
                    }
                });
                pending.retain(|time, (cap, table)| {
                    table.flush_all();
                    let done = !frontier.less_equal(time);
                    // Reducing too little to be worth it: pass the rest on (see `aggregate`).
                    let poor =
                        keys_max != usize::MAX && !table.passthrough && table.inputs >= check && table.len() as u64 * 2 > table.inputs;
                    if poor {
                        table.passthrough = true;
                    }
                    if done || poor || table.len() >= keys_max {
                        let mut session = output.session(cap);
                        for (k, r) in table.drain() {
                            if !r.is_zero() {
                                session.give((k, *time, r));
                            }
                        }
                    }
                    !done
                });
            }
        })
        .as_collection()
}

/// Batch-mode group-by: for `((key, value), diff)` updates, exchanges by key and, once the
/// time completes, calls `logic(key, values, output)` with the key's consolidated, non-zero
/// values in sorted order — what differential's `reduce` does at the first time.
pub(crate) fn reduce_by_hash<'s, K, V, R, V2, L>(name: &str, input: Coll<'s, (K, V), R>, mut logic: L) -> Coll<'s, (K, V2)>
where
    K: Data + Hash,
    V: Data,
    R: Diff,
    V2: Data,
    L: FnMut(&K, &[(&V, R)], &mut Vec<(V2, isize)>) + 'static,
{
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((K, V2), Time, isize)>>, _, _, _>(
            Exchange::new(|((k, _v), _t, _r): &((K, V), Time, R)| route(k)),
            name,
            |_cap, _info| {
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<((K, V), R)>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| stage(&mut pending, &cap, data));
                    pending.retain(|time, (cap, updates)| {
                        if frontier.less_equal(time) {
                            return true;
                        }
                        consolidate(updates);
                        let mut session = output.session(cap);
                        let mut out = Vec::new();
                        let mut vals: Vec<(&V, R)> = Vec::new();
                        let mut i = 0;
                        while i < updates.len() {
                            let key = &updates[i].0 .0;
                            vals.clear();
                            while i < updates.len() && updates[i].0 .0 == *key {
                                vals.push((&updates[i].0 .1, updates[i].1.clone()));
                                i += 1;
                            }
                            out.clear();
                            logic(key, &vals, &mut out);
                            for (v2, r2) in out.drain(..) {
                                session.give(((key.clone(), v2), *time, r2));
                            }
                        }
                        false
                    });
                }
            },
        )
        .as_collection()
}

/// Moves a message's updates into `pending`, by time: one map lookup per run of updates
/// with the same time (an update's own time may be later than its message's stamp).
fn stage<D, R>(pending: &mut BTreeMap<Time, (Capability<Time>, Vec<(D, R)>)>, cap: &InputCapability<Time>, data: &mut Vec<(D, Time, R)>) {
    let mut updates = data.drain(..).peekable();
    while let Some(&(_, t, _)) = updates.peek() {
        let staged = &mut pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new())).1;
        while let Some((d, _, r)) = updates.next_if(|(_, t2, _)| *t2 == t) {
            staged.push((d, r));
        }
    }
}

/// Takes the pending times the frontier has passed, oldest first. Times are totally
/// ordered, so once the frontier passes `t` no update at `t` or earlier can arrive: the
/// times come out complete and in order.
fn complete<D>(
    pending: &mut BTreeMap<Time, (Capability<Time>, Vec<D>)>,
    frontier: &timely::progress::frontier::MutableAntichain<Time>,
) -> Vec<(Time, Capability<Time>, Vec<D>)> {
    let mut done = Vec::new();
    while let Some(entry) = pending.first_entry() {
        if frontier.less_equal(entry.key()) {
            break;
        }
        let (t, (cap, updates)) = entry.remove_entry();
        done.push((t, cap, updates));
    }
    done
}

/// `from`'s elements moved into `into` (cleared), reallocated only if its room is too small
/// or more than twice what they need: per-key state sized to what it holds (a Vec grown by
/// a first push has room for four), while `from` keeps its buffer for the next key.
fn exactly<T>(mut into: Vec<T>, from: &mut Vec<T>) -> Vec<T> {
    into.clear();
    if into.capacity() < from.len() || into.capacity() > 2 * from.len() {
        into = Vec::with_capacity(from.len());
    }
    into.append(from);
    into
}

/// Speed-mode group-by over totally ordered times: what differential's `reduce` computes,
/// with a hash table of each key's consolidated values and last output instead of an
/// arrangement. Updates are exchanged by key and held until their time completes; then,
/// time by time in order, each touched key's values are updated, `logic` runs on them
/// (consolidated, non-zero, sorted, as `reduce` passes them), and the difference between
/// the new output and the key's previous one is emitted at that time. Exact for every
/// time, including time 0 (the seeds), with no history kept: u64 times are totally ordered,
/// so "the input accumulated up to `t`" is all a key's output at `t` depends on.
pub(crate) fn reduce_ordered<'s, K, V, R, V2, L>(name: &str, input: Coll<'s, (K, V), R>, mut logic: L) -> Coll<'s, (K, V2)>
where
    K: Data + Hash,
    V: Data,
    R: Diff,
    V2: Data,
    L: FnMut(&K, &[(&V, R)], &mut Vec<(V2, isize)>) + 'static,
{
    struct KeyState<V, R, V2> {
        /// Consolidated, non-zero, sorted by value.
        vals: Vec<(V, R)>,
        /// The output last emitted for the key, consolidated.
        out: Vec<(V2, isize)>,
    }
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((K, V2), Time, isize)>>, _, _, _>(
            Exchange::new(|((k, _v), _t, _r): &((K, V), Time, R)| route(k)),
            name,
            |_cap, _info| {
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<((K, V), R)>)> = BTreeMap::new();
                let mut state: FxHashMap<K, KeyState<V, R, V2>> = FxHashMap::default();
                let (mut merged, mut out, mut diff) = (Vec::new(), Vec::new(), Vec::new());
                move |(input, frontier), output| {
                    input.for_each(|cap, data| stage(&mut pending, &cap, data));
                    for (time, cap, mut updates) in complete(&mut pending, frontier) {
                        consolidate(&mut updates);
                        if state.is_empty() {
                            // The seed (time 0), or a first time: size the table once for
                            // its keys instead of growing it through every power of two.
                            let keys = 1 + updates.windows(2).filter(|w| w[0].0 .0 != w[1].0 .0).count();
                            state.reserve(keys);
                        }
                        let mut session = output.session(&cap);
                        let mut updates = updates.into_iter().peekable();
                        while let Some(((key, _), _)) = updates.peek() {
                            let key = key.clone();
                            let entry = state.entry(key.clone()).or_insert_with(|| KeyState { vals: Vec::new(), out: Vec::new() });
                            // Merge the key's (sorted, consolidated) updates into its values.
                            merged.clear();
                            let mut old = std::mem::take(&mut entry.vals).into_iter().peekable();
                            while let Some(((_, v), r)) = updates.next_if(|((k, _), _)| *k == key) {
                                while let Some((ov, or)) = old.next_if(|(ov, _)| *ov < v) {
                                    merged.push((ov, or));
                                }
                                match old.next_if(|(ov, _)| *ov == v) {
                                    Some((ov, mut or)) => {
                                        or.plus_equals(&r);
                                        if !or.is_zero() {
                                            merged.push((ov, or));
                                        }
                                    }
                                    None => merged.push((v, r)),
                                }
                            }
                            merged.extend(old);
                            // Exactly sized (a key usually holds one value; a pushed Vec has
                            // room for four): `merged` keeps its buffer for the next key.
                            entry.vals = exactly(std::mem::take(&mut entry.vals), &mut merged);
                            out.clear();
                            if !entry.vals.is_empty() {
                                let vals: Vec<(&V, R)> = entry.vals.iter().map(|(v, r)| (v, r.clone())).collect();
                                logic(&key, &vals, &mut out);
                                consolidate(&mut out);
                            }
                            // Emit new output minus old output.
                            diff.clear();
                            diff.extend(entry.out.iter().map(|(v2, n)| (v2.clone(), -*n)));
                            diff.extend(out.iter().cloned());
                            consolidate(&mut diff);
                            for (v2, n) in diff.drain(..) {
                                session.give(((key.clone(), v2), time, n));
                            }
                            entry.out = exactly(std::mem::take(&mut entry.out), &mut out);
                            if entry.vals.is_empty() && entry.out.is_empty() {
                                state.remove(&key);
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Speed-mode top-k per key over totally ordered times: for `((key, item), aggregate)`
/// updates, the `k` items with the highest `score(aggregate)` per key (ties: the smaller
/// item), as one sorted list per key, exactly as a `reduce` with that logic. Each key keeps
/// its items ranked, so a time costs O(log n) per changed item and O(k) per touched key,
/// not a pass over every item of the key.
pub(crate) fn top_k_ordered<'s, K, I, R, S, F>(name: &str, input: Coll<'s, (K, I), R>, k: usize, score: F) -> Coll<'s, (K, Vec<(I, S)>)>
where
    K: Data + Hash,
    I: Data,
    R: Diff,
    S: Data,
    F: Fn(&R) -> S + 'static,
{
    struct KeyState<I, R, S> {
        items: BTreeMap<I, R>,
        ranked: std::collections::BTreeSet<(std::cmp::Reverse<S>, I)>,
        out: Option<Vec<(I, S)>>,
    }
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((K, Vec<(I, S)>), Time, isize)>>, _, _, _>(
            Exchange::new(|((key, _i), _t, _r): &((K, I), Time, R)| route(key)),
            name,
            |_cap, _info| {
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<((K, I), R)>)> = BTreeMap::new();
                let mut state: FxHashMap<K, KeyState<I, R, S>> = FxHashMap::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| stage(&mut pending, &cap, data));
                    for (time, cap, mut updates) in complete(&mut pending, frontier) {
                        consolidate(&mut updates);
                        let mut session = output.session(&cap);
                        let mut updates = updates.into_iter().peekable();
                        while let Some(((key, _), _)) = updates.peek() {
                            let key = key.clone();
                            let entry = state.entry(key.clone()).or_insert_with(|| KeyState {
                                items: BTreeMap::new(),
                                ranked: std::collections::BTreeSet::new(),
                                out: None,
                            });
                            if entry.items.is_empty() {
                                // A new key (in speed mode: mostly the seed): its updates are
                                // its items, sorted and consolidated, so both maps bulk-build.
                                let mut fresh = Vec::new();
                                while let Some(((_, item), r)) = updates.next_if(|((k, _), _)| *k == key) {
                                    fresh.push((item, r));
                                }
                                entry.ranked = fresh.iter().map(|(i, r)| (std::cmp::Reverse(score(r)), i.clone())).collect();
                                entry.items = fresh.into_iter().collect();
                            }
                            while let Some(((_, item), r)) = updates.next_if(|((k, _), _)| *k == key) {
                                let acc = match entry.items.remove(&item) {
                                    Some(mut acc) => {
                                        entry.ranked.remove(&(std::cmp::Reverse(score(&acc)), item.clone()));
                                        acc.plus_equals(&r);
                                        acc
                                    }
                                    None => r,
                                };
                                if !acc.is_zero() {
                                    entry.ranked.insert((std::cmp::Reverse(score(&acc)), item.clone()));
                                    entry.items.insert(item, acc);
                                }
                            }
                            let top: Option<Vec<(I, S)>> = if entry.items.is_empty() {
                                None
                            } else {
                                Some(entry.ranked.iter().take(k).map(|(s, i)| (i.clone(), s.0.clone())).collect())
                            };
                            if top != entry.out {
                                if let Some(old) = entry.out.take() {
                                    session.give(((key.clone(), old), time, -1));
                                }
                                if let Some(new) = &top {
                                    session.give(((key.clone(), new.clone()), time, 1));
                                }
                                entry.out = top;
                            }
                            if entry.items.is_empty() {
                                state.remove(&key);
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Speed-mode threshold over totally ordered times: for `(record, count)` updates, each
/// record with count 1 while its accumulated count is positive (what differential's
/// `threshold` with `count > 0` gives), from a hash table of accumulated counts: O(1) per
/// update, no arrangement.
pub(crate) fn positive_ordered<'s, D>(name: &str, input: Coll<'s, D>) -> Coll<'s, D>
where
    D: Data + Hash,
{
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(D, Time, isize)>>, _, _, _>(
            Exchange::new(|(d, _t, _r): &(D, Time, isize)| route(d)),
            name,
            |_cap, _info| {
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<(D, isize)>)> = BTreeMap::new();
                let mut counts: FxHashMap<D, isize> = FxHashMap::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| stage(&mut pending, &cap, data));
                    for (time, cap, updates) in complete(&mut pending, frontier) {
                        let mut session = output.session(&cap);
                        if counts.is_empty() {
                            // The first time with updates (in speed mode: the seed, the bulk
                            // of the state): counts are the changes, one table, sized once.
                            counts.reserve(updates.len());
                            for (d, n) in updates {
                                *counts.entry(d).or_insert(0) += n;
                            }
                            counts.retain(|d, n| {
                                if *n > 0 {
                                    session.give((d.clone(), time, 1));
                                }
                                *n != 0
                            });
                            continue;
                        }
                        // Net change per record at this time, so a record crossing zero and
                        // back within one time emits nothing.
                        let mut changes: FxHashMap<D, isize> = FxHashMap::default();
                        for (d, n) in updates {
                            *changes.entry(d).or_insert(0) += n;
                        }
                        for (d, n) in changes {
                            if n == 0 {
                                continue;
                            }
                            let (before, after) = match counts.entry(d.clone()) {
                                Entry::Occupied(mut c) => {
                                    let before = *c.get();
                                    *c.get_mut() += n;
                                    let after = *c.get();
                                    if after == 0 {
                                        c.remove();
                                    }
                                    (before, after)
                                }
                                Entry::Vacant(slot) => {
                                    slot.insert(n);
                                    (0, n)
                                }
                            };
                            let change = isize::from(after > 0) - isize::from(before > 0);
                            if change != 0 {
                                session.give((d, time, change));
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Sums;
    use differential_dataflow::input::Input;
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::vec::Map as _;

    /// Runs `build` over `input` on `workers` threads; returns the consolidated output.
    fn run<K: Data + Hash, R: Diff>(
        workers: usize,
        input: Vec<u64>,
        build: impl for<'s> Fn(Coll<'s, u64>) -> Coll<'s, K, R> + Send + Sync + 'static,
    ) -> Vec<(K, R)> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        timely::execute(timely::Config::process(workers), move |worker| {
            let sink = sink.clone();
            let mut session = worker.dataflow::<Time, _, _>(|scope| {
                let (session, coll) = scope.new_collection::<u64, isize>();
                build(coll).inspect(move |(k, _t, r)| sink.lock().unwrap().push((k.clone(), r.clone())));
                session
            });
            if worker.index() == 0 {
                for x in &input {
                    session.insert(*x);
                }
            }
        })
        .unwrap();
        let mut v = out.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate(&mut v);
        v
    }

    // Early emission of partial sums (a tiny table) still adds up to the exact totals, on
    // one and on several workers: partial sums are valid updates.
    #[test]
    fn partial_sums_add_up() {
        let input: Vec<u64> = (0..2000).map(|i| i * 7919 % 97).collect();
        let mut expected: Vec<(u64, Sums<1>)> = Vec::new();
        for x in &input {
            expected.push((x % 13, Sums([i128::from(*x)])));
        }
        differential_dataflow::consolidation::consolidate(&mut expected);
        for workers in [1, 3] {
            let got = run(workers, input.clone(), |c| aggregate("t", c, true, 3, |x: &u64| Some((x % 13, Sums([i128::from(*x)])))));
            assert_eq!(got, expected, "{workers} workers");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        // The split (sharded) table aggregates exactly what one table does, whether it splits
        // early, late or never, with retractions, zero sums, partial emission, and a switch
        // to passing records on (a poor reduction) early, late or never, on top.
        #[test]
        fn split_tables_aggregate_exactly(
            input in proptest::collection::vec((0u64..400, -3i64..4), 0..1500),
            split in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..50, proptest::strategy::Just(usize::MAX)],
            keys_max in proptest::prop_oneof![proptest::strategy::Just(usize::MAX), 5usize..200],
            check in proptest::prop_oneof![proptest::strategy::Just(u64::MAX), 0u64..100],
            exchange in proptest::bool::ANY,
            workers in 1usize..3,
        ) {
            let mut expected: Vec<(u64, Sums<2>)> = input.iter().map(|(k, v)| (*k, Sums([i128::from(*v), 1]))).collect();
            differential_dataflow::consolidation::consolidate(&mut expected);
            // Each record is a key and an amount, encoded in one u64 for the test harness.
            let encoded: Vec<u64> = input.iter().map(|(k, v)| k * 16 + (v + 8) as u64).collect();
            let got = run(workers, encoded, move |c| {
                aggregate_split("t", c, exchange, keys_max, split, check, |x: &u64| Some((x / 16, Sums([i128::from((x % 16) as i64 - 8), 1]))))
            });
            proptest::prop_assert_eq!(got, expected);
        }

        // The table alone: every key once in `drain`, with its exact total, across the split.
        #[test]
        fn split_table_drains_every_key_once(adds in proptest::collection::vec((0u32..3000, -2i64..3), 0..4000), split in 0usize..100) {
            let mut table: Table<u32, isize> = Table::new(split);
            let mut reference: BTreeMap<u32, isize> = BTreeMap::new();
            for (k, r) in &adds {
                table.add(*k, *r as isize);
                *reference.entry(*k).or_default() += *r as isize;
            }
            table.flush_all();
            proptest::prop_assert_eq!(table.len(), reference.len());
            let mut drained: Vec<(u32, isize)> = table.drain().collect();
            drained.sort();
            proptest::prop_assert_eq!(drained, reference.into_iter().collect::<Vec<_>>());
            proptest::prop_assert_eq!(table.len(), 0);
        }
    }

    // A split table stages records per shard and adds a shard's records once it holds
    // STAGED of them: across many such flushes (and the partial flush of `drain`), every
    // key comes out once with its exact total.
    #[test]
    fn staged_records_are_all_added() {
        let mut table: Table<u64, isize> = Table::new(0);
        let mut reference: BTreeMap<u64, isize> = BTreeMap::new();
        for i in 0..(SHARDS * STAGED * 5 + 123) as u64 {
            let (k, r) = (i * 2_654_435_761 % 10_007, (i % 5) as isize - 1);
            table.add(k, r);
            *reference.entry(k).or_default() += r;
        }
        let mut drained: Vec<(u64, isize)> = table.drain().collect();
        drained.sort();
        assert_eq!(drained, reference.into_iter().collect::<Vec<_>>());
        assert_eq!(table.drain().count(), 0, "drained empty");
    }

    // With `usize::MAX` a key is emitted once per time, so thresholding the counts into a
    // distinct set is exact (the batch path of `distinct_count` relies on it).
    #[test]
    fn unbounded_table_emits_each_key_once() {
        let input: Vec<u64> = (0..5000).map(|i| i % 250).collect();
        let got = run(2, input, |c| {
            aggregate("t", c, true, usize::MAX, |x: &u64| Some((*x, 1isize)))
                .inner
                .flat_map(|(k, t, n)| if n > 0 { Some((k, t, 1isize)) } else { None })
                .as_collection()
        });
        assert_eq!(got.len(), 250);
        assert!(got.iter().all(|(_, n)| *n == 1), "each key exactly once: {got:?}");
    }

    /// Runs `build` over timed updates (fed in time order, one epoch per time, stepping in
    /// between) on `workers` threads; returns every output update with its time,
    /// consolidated per (record, time): the operator's exact output stream.
    pub(crate) fn run_timed<D: Data, R: Diff, D2: Data + Hash, R2: Diff>(
        workers: usize,
        updates: Vec<(D, Time, R)>,
        build: impl for<'s> Fn(Coll<'s, D, R>) -> Coll<'s, D2, R2> + Send + Sync + 'static,
    ) -> Vec<((D2, Time), R2)> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        timely::execute(timely::Config::process(workers), move |worker| {
            let sink = sink.clone();
            let (mut session, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (session, coll) = scope.new_collection::<D, R>();
                let probe = build(coll).inspect(move |(d, t, r)| sink.lock().unwrap().push(((d.clone(), *t), r.clone()))).probe().0;
                (session, probe)
            });
            let mut sorted = updates.clone();
            sorted.sort_by_key(|(_, t, _)| *t);
            let last = sorted.last().map_or(0, |(_, t, _)| *t);
            for t in 0..=last {
                session.advance_to(t);
                // A time's updates spread over the workers (one key's from several).
                let (index, peers) = (worker.index(), worker.peers());
                for (i, (d, _, r)) in sorted.iter().filter(|(_, ut, _)| *ut == t).enumerate() {
                    if (i + t as usize) % peers == index {
                        session.update(d.clone(), r.clone());
                    }
                }
                session.flush();
                // Sometimes let a time complete before the next arrives, sometimes not.
                if t % 2 == 0 {
                    while probe.less_than(session.time()) {
                        worker.step();
                    }
                }
            }
        })
        .unwrap();
        let mut v = out.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate(&mut v);
        v
    }

    fn timed_updates() -> impl proptest::strategy::Strategy<Value = Vec<((u8, u8), Time, i128)>> {
        use proptest::prelude::*;
        prop::collection::vec(((0u8..4, 0u8..6), 0u64..6, -2i128..4), 0..60)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        // The speed-mode group-by emits exactly what differential's `reduce` emits, update
        // for update and time for time, for any updates (retractions and negative counts
        // included), on one and two workers.
        #[test]
        fn reduce_ordered_is_differentials_reduce(updates in timed_updates(), workers in 1usize..3) {
            let updates: Vec<((u8, u8), Time, isize)> = updates.into_iter().map(|(d, t, r)| (d, t, r as isize)).collect();
            // A logic whose output depends on every value and count: the sorted values
            // with their counts, and their number.
            let logic = |_k: &u8, vals: &[(&u8, isize)], out: &mut Vec<((usize, Vec<(u8, isize)>), isize)>| {
                let seen: Vec<(u8, isize)> = vals.iter().map(|(v, r)| (**v, *r)).collect();
                out.push(((seen.len(), seen), 1));
                if vals.len() > 2 {
                    out.push(((0, Vec::new()), 2));
                }
            };
            let got = run_timed(workers, updates.clone(), move |c| reduce_ordered("t", c, logic));
            let want = run_timed(workers, updates, move |c| c.reduce_named("r", logic));
            proptest::prop_assert_eq!(got, want);
        }

        // The speed-mode top-k emits exactly what `reduce` with top_k's logic emits.
        #[test]
        fn top_k_ordered_is_the_reduce(updates in timed_updates(), k in 1usize..4, workers in 1usize..3) {
            let updates: Vec<((u8, u8), Time, Sums<1>)> = updates.into_iter().map(|(d, t, r)| (d, t, Sums([r * 7 % 5]))).collect();
            let got = run_timed(workers, updates.clone(), move |c| top_k_ordered("t", c, k, |s: &Sums<1>| s.get(0)));
            let want = run_timed(workers, updates, move |c| {
                c.reduce_named("r", move |_key, vals: &[(&u8, Sums<1>)], out: &mut Vec<(Vec<(u8, i128)>, isize)>| {
                    let mut scored: Vec<(i128, &u8)> = vals.iter().map(|(i, r)| (r.get(0), *i)).collect();
                    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
                    out.push((scored.into_iter().take(k).map(|(s, i)| (*i, s)).collect(), 1));
                })
            });
            proptest::prop_assert_eq!(got, want);
        }

        // The speed-mode threshold emits exactly what `threshold(count > 0)` emits.
        #[test]
        fn positive_ordered_is_the_threshold(updates in timed_updates(), workers in 1usize..3) {
            let updates: Vec<((u8, u8), Time, isize)> = updates.into_iter().map(|(d, t, r)| (d, t, r as isize)).collect();
            let got = run_timed(workers, updates.clone(), |c| positive_ordered("t", c));
            let want = run_timed(workers, updates, |c| c.threshold_named("r", |_, n: &isize| if *n > 0 { 1isize } else { 0 }));
            proptest::prop_assert_eq!(got, want);
        }
    }
}
