//! Hash-based operators for batch mode, and a fast non-cryptographic hasher.
//!
//! In batch mode every update has time 0 and the input is bounded, so differential's
//! incremental machinery (arrangements that keep history, sort-merge batchers) does work the
//! batch run never uses. These operators produce, at time 0, exactly the collection their
//! differential counterparts produce, with hash tables: pre-aggregate on each worker,
//! exchange by key, accumulate, and emit once the input is complete. They are correct at
//! any time (they work per time), but hold everything until the time completes, so they are
//! only used for batch mode.

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::difference::Multiply;
use differential_dataflow::AsCollection;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

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

/// Accumulates `f(record) -> (key, diff)` per time in a hash table and emits the keys when
/// the time completes. With `exchange`, records first go to the worker owning their key.
///
/// `keys_max` bounds the table: past it, the table is emitted early as partial sums and
/// restarted, so a key may then appear more than once per time. Partial sums are valid
/// differential updates (they add up downstream), but a caller that needs one record per
/// key and time (e.g. to threshold counts into a distinct set) must pass `usize::MAX`.
pub(crate) fn aggregate<'s, D, K, R, F>(name: &str, input: Coll<'s, D>, exchange: bool, keys_max: usize, f: F) -> Coll<'s, K, R>
where
    D: Data,
    K: Data + Hash,
    R: Diff + Multiply<isize, Output = R>,
    F: Fn(&D) -> Option<(K, R)> + 'static,
{
    if exchange {
        aggregate_with(name, input, Exchange::new(|(d, _t, _r): &(D, Time, isize)| route(d)), keys_max, f)
    } else {
        aggregate_with(name, input, Pipeline, keys_max, f)
    }
}

/// Like [`aggregate`] for a collection whose diff is already the aggregate: consolidates it
/// across workers by record, one record per key and time (no early emission).
pub(crate) fn consolidate_by_hash<'s, D, R>(name: &str, input: Coll<'s, D, R>) -> Coll<'s, D, R>
where
    D: Data + Hash,
    R: Diff,
{
    aggregate_core(name, input, Exchange::new(|(d, _t, _r): &(D, Time, R)| route(d)), usize::MAX, |d: &D, r: &R| {
        Some((d.clone(), r.clone()))
    })
}

fn aggregate_with<'s, D, K, R, F, P>(name: &str, input: Coll<'s, D>, pact: P, keys_max: usize, f: F) -> Coll<'s, K, R>
where
    D: Data,
    K: Data + Hash,
    R: Diff + Multiply<isize, Output = R>,
    F: Fn(&D) -> Option<(K, R)> + 'static,
    P: ParallelizationContract<Time, Vec<(D, Time, isize)>>,
{
    aggregate_core(name, input, pact, keys_max, move |d: &D, diff: &isize| f(d).map(|(k, r)| (k, r.multiply(diff))))
}

fn aggregate_core<'s, D, R0, K, R, F, P>(name: &str, input: Coll<'s, D, R0>, pact: P, keys_max: usize, f: F) -> Coll<'s, K, R>
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
            let mut pending: HashMap<Time, (Capability<Time>, FxHashMap<K, R>)> = HashMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (d, t, diff) in data.drain(..) {
                        let Some((k, r)) = f(&d, &diff) else { continue };
                        // An update's own time may be later than its message's stamp.
                        let table = &mut pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), FxHashMap::default())).1;
                        match table.get_mut(&k) {
                            Some(acc) => acc.plus_equals(&r),
                            None => {
                                table.insert(k, r);
                            }
                        }
                    }
                });
                pending.retain(|time, (cap, table)| {
                    let done = !frontier.less_equal(time);
                    if done || table.len() >= keys_max {
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
                let mut pending: HashMap<Time, (Capability<Time>, Vec<((K, V), R)>)> = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (d, t, r) in data.drain(..) {
                            pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new())).1.push((d, r));
                        }
                    });
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

#[cfg(test)]
mod tests {
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
}
