//! Per-key extremes (`max`, `min`, `arg_max`, `arg_min`) and the general seeded `reduce`.
//!
//! An extreme is not a sum of parts, so the speed layer needs state from before the cut.
//! How much depends on the input ([`crate::Input`]):
//!
//! * over an [`Inserts`](crate::Inserts) (values only arrive), the batch run stores its
//!   *output* as the seed, one row per key: the extreme of "extreme at the cut + values
//!   since" is the extreme of all values. Seed `<name>.bounded.seed`.
//! * over any other collection (values may be retracted, e.g. after `per_key`), the next
//!   best value must be at hand when the best one goes, so the seed is the whole input at
//!   the cut, consolidated (`<name>.seed`: each distinct record once, with its count).
//!
//! The two seeds have different names, so a job that switches an input between the two
//! kinds without bumping its version cannot feed one as the other: the speed layer refuses
//! to start without the seed it expects, and a batch run writes it.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use differential_dataflow::AsCollection;

use crate::ctx::{Coll, Ctx, Mode, Time};
use crate::hash::{route, FxHashMap};
use crate::inserts::Input;
use crate::view::{Data, Diff};

impl<'s> Ctx<'s> {
    /// General seeded group-by: `logic(key, values, output)` sees each key's values with
    /// their (non-zero, consolidated) differences, sorted, and pushes the key's output
    /// values with their differences, as differential's `reduce` does. Seeded with the
    /// input at the cut, so it is exact in both modes whatever `logic` computes.
    ///
    /// ```ignore
    /// // The median bid price per auction.
    /// let median = ctx.reduce("median_price", bids.map(|b| (b.auction, b.price)), |_a, prices, out| {
    ///     let n: isize = prices.iter().map(|(_, c)| *c).sum();
    ///     let mut seen = 0;
    ///     for (price, count) in prices {
    ///         seen += count;
    ///         if 2 * seen >= n { out.push((**price, 1)); break; }
    ///     }
    /// });
    /// ```
    pub fn reduce<K, V, R, V2, L>(&mut self, name: &str, input: Coll<'s, (K, V), R>, logic: L) -> Coll<'s, (K, V2)>
    where
        K: Data,
        V: Data,
        R: Diff,
        V2: Data,
        L: FnMut(&K, &[(&V, R)], &mut Vec<(V2, isize)>) + 'static,
    {
        self.claim("operator", name);
        let input = self.seeded_consolidated(name, input);
        self.group(&format!("Reduce: {name}"), input, logic)
    }

    /// The largest value per key: for `(key, value)` records, one `(key, max)` per key that
    /// has a value. Pass an [`Inserts`](crate::Inserts) for one seed row per key.
    ///
    /// ```ignore
    /// let prices = ctx.inserts(events).flat_map(|e| e.bid()).map(|b| (b.auction, b.price));
    /// let highest = ctx.max("highest_bid", prices);
    /// ```
    pub fn max<K, V>(&mut self, name: &str, input: impl Input<'s, (K, V)>) -> Coll<'s, (K, V)>
    where
        K: Data,
        V: Data,
    {
        self.best(name, "Max", input, |a: &V, b: &V| a.cmp(b))
    }

    /// The smallest value per key (see [`Ctx::max`]).
    pub fn min<K, V>(&mut self, name: &str, input: impl Input<'s, (K, V)>) -> Coll<'s, (K, V)>
    where
        K: Data,
        V: Data,
    {
        self.best(name, "Min", input, |a: &V, b: &V| b.cmp(a))
    }

    /// The item with the highest `score` per key, ties broken by the smaller item (as in
    /// `top_k`): for `(key, item)` records, one `(key, item)` per key.
    ///
    /// ```ignore
    /// // The winning bid of each 10-second window (Nexmark q7).
    /// let best = ctx.arg_max("best_bid", bids.map(|b| (b.ts / 10_000, b)), |b: &Bid| b.price);
    /// ```
    pub fn arg_max<K, I, S, F>(&mut self, name: &str, input: impl Input<'s, (K, I)>, score: F) -> Coll<'s, (K, I)>
    where
        K: Data,
        I: Data,
        S: Ord,
        F: Fn(&I) -> S + 'static,
    {
        self.best(name, "ArgMax", input, move |a: &I, b: &I| score(a).cmp(&score(b)).then_with(|| b.cmp(a)))
    }

    /// The item with the lowest `score` per key, ties broken by the smaller item.
    pub fn arg_min<K, I, S, F>(&mut self, name: &str, input: impl Input<'s, (K, I)>, score: F) -> Coll<'s, (K, I)>
    where
        K: Data,
        I: Data,
        S: Ord,
        F: Fn(&I) -> S + 'static,
    {
        self.best(name, "ArgMin", input, move |a: &I, b: &I| score(b).cmp(&score(a)).then_with(|| b.cmp(a)))
    }

    /// [`Ctx::seeded`] of a collection that may hold a record many times (raw events):
    /// consolidated first in batch mode, so the seed holds each distinct record once with
    /// its count, not once per occurrence.
    fn seeded_consolidated<D: Data, R: Diff>(&mut self, name: &str, input: Coll<'s, D, R>) -> Coll<'s, D, R> {
        let input = match self.mode() {
            Mode::Batch => crate::hash::consolidate_by_hash(&format!("Consolidate: {name}"), input),
            Mode::Speed => input,
        };
        self.seeded(name, input)
    }

    /// The greatest value per key by `order`, among values whose accumulated count is
    /// positive (a value retracted as often as it was asserted is gone).
    fn best<K, V, O>(&mut self, name: &str, label: &str, input: impl Input<'s, (K, V)>, order: O) -> Coll<'s, (K, V)>
    where
        K: Data,
        V: Data,
        O: Fn(&V, &V) -> Ordering + 'static,
    {
        self.claim("operator", name);
        let (coll, insert_only) = input.into_input();
        let op = format!("{label}: {name}");
        if !insert_only {
            let pick = move |_key: &K, vals: &[(&V, isize)], out: &mut Vec<(V, isize)>| {
                if let Some(best) = vals.iter().filter(|(_, n)| *n > 0).map(|(v, _)| *v).max_by(|a, b| order(a, b)) {
                    out.push((best.clone(), 1));
                }
            };
            let input = self.seeded_consolidated(name, coll);
            return self.group(&op, input, pick);
        }
        let seed = format!("{name}.bounded");
        let held = self.counter(&format!("extreme.{name}.values"));
        match self.mode() {
            // The output, one row per key, is what the speed layer starts from.
            Mode::Batch => {
                let out = best_of_inserts(&op, coll, order, held);
                self.seeded(&seed, out)
            }
            // Seed (the extremes at the cut) + values since: the extreme of all values.
            Mode::Speed => {
                let input = self.seeded(&seed, coll);
                best_of_inserts(&op, input, order, held)
            }
        }
    }
}

/// The greatest value per key by `order` over an insert-only collection, in either mode:
/// what `group` with "the greatest value of positive count" emits, with one value of state
/// per key instead of every value the key ever had.
///
/// Over inserts a key's best value only ever gets better, so the state is the current best
/// per key (a hash table), and a completed time costs one lookup per update: updates are
/// exchanged by key and, per pending time, folded into the best value per key of that
/// time as they arrive (no staging of every update, no sort); when the time completes, in
/// order, each of its keys whose best improved emits the old best's retraction and the new
/// best, exactly what a `reduce` emits at that time. The last time of a bounded run (batch
/// mode: time 0, the input closed) with no earlier state moves its values out instead of
/// keeping a copy.
///
/// Every update must have a positive difference (an [`Inserts`](crate::Inserts) gives +1;
/// the speed layer's bounded seed gives each key's best once with +1): a retraction would
/// need the values this operator does not keep, and is reported as an engine fault.
///
/// `held` counts the values kept (one per key, summed over the workers): the counter
/// `extreme.NAME.values` (`status` shows the speed layer's).
fn best_of_inserts<'s, K, V, O>(name: &str, input: Coll<'s, (K, V)>, order: O, held: Arc<AtomicU64>) -> Coll<'s, (K, V)>
where
    K: Data,
    V: Data,
    O: Fn(&V, &V) -> Ordering + 'static,
{
    use std::collections::hash_map::Entry;
    use std::collections::BTreeMap;
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::generic::operator::Operator;
    use timely::dataflow::operators::Capability;

    let label = name.to_string();
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((K, V), Time, isize)>>, _, _, _>(
            Exchange::new(|((k, _v), _t, _r): &((K, V), Time, isize)| route(k)),
            name,
            move |_cap, _info| {
                // Per pending time: its capability and the best value per key among its updates.
                let mut pending: BTreeMap<Time, (Capability<Time>, FxHashMap<K, V>)> = BTreeMap::new();
                // Per key, the best value of the completed times (the output so far).
                let mut state: FxHashMap<K, V> = FxHashMap::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let mut updates = data.drain(..).peekable();
                        while let Some(&(_, t, _)) = updates.peek() {
                            let bests = &mut pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), FxHashMap::default())).1;
                            while let Some(((k, v), _, r)) = updates.next_if(|(_, t2, _)| *t2 == t) {
                                assert!(r > 0, "{label}: an insert-only input retracted a value (difference {r}): an engine fault");
                                match bests.entry(k) {
                                    Entry::Occupied(mut e) => {
                                        if order(&v, e.get()) == Ordering::Greater {
                                            e.insert(v);
                                        }
                                    }
                                    Entry::Vacant(e) => {
                                        e.insert(v);
                                    }
                                }
                            }
                        }
                    });
                    // Times are totally ordered: once the frontier passes a time, it and every
                    // earlier one are complete; apply them in order.
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (time, (cap, bests)) = entry.remove_entry();
                        let mut session = output.session(&cap);
                        if state.is_empty() && pending.is_empty() && frontier.is_empty() {
                            // The only time there will ever be: nothing to retract, nothing to keep.
                            for (k, v) in bests {
                                session.give(((k, v), time, 1));
                            }
                            continue;
                        }
                        // Room for every key first: inserting one hash table's entries, in
                        // its bucket order, into a smaller table with the same (fixed) hasher
                        // piles them into a few probe runs (the speed layer's seed at time 0,
                        // 1.4M keys a worker at 10M Nexmark events: seconds instead of
                        // milliseconds).
                        state.reserve(bests.len());
                        for (k, v) in bests {
                            match state.entry(k) {
                                Entry::Occupied(mut e) => {
                                    if order(&v, e.get()) == Ordering::Greater {
                                        let old = std::mem::replace(e.get_mut(), v);
                                        session.give(((e.key().clone(), old), time, -1));
                                        session.give(((e.key().clone(), e.get().clone()), time, 1));
                                    }
                                }
                                Entry::Vacant(e) => {
                                    session.give(((e.key().clone(), v.clone()), time, 1));
                                    e.insert(v);
                                    held.fetch_add(1, AtomicOrdering::Relaxed);
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::best_of_inserts;
    use crate::hash::tests::run_timed;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    type Item = (u8, u8);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        // The insert-only extreme (one best value per key) emits exactly what the general
        // group-by with the same pick emits, time by time: ties on the score (the first
        // field) broken by the smaller item, one key updated from several workers in a time,
        // repeated records, and (all at time 0, then the input closed) the batch's one-step
        // form; for the `arg_max` order and for `min`'s.
        #[test]
        fn best_of_inserts_is_the_group_by(
            updates in proptest::collection::vec(((0u8..4, (0u8..4, 0u8..4)), 0u64..6, 1isize..3), 0..40),
            workers in 1usize..4,
            at_zero in any::<bool>(),
            lowest in any::<bool>(),
        ) {
            let updates: Vec<((u8, Item), u64, isize)> =
                updates.into_iter().map(|(d, t, r)| (d, if at_zero { 0 } else { t }, r)).collect();
            let order = move |a: &Item, b: &Item| {
                if lowest { b.cmp(a) } else { a.0.cmp(&b.0).then_with(|| b.cmp(a)) }
            };
            let pick = move |_k: &u8, vals: &[(&Item, isize)], out: &mut Vec<(Item, isize)>| {
                if let Some(best) = vals.iter().filter(|(_, n)| *n > 0).map(|(v, _)| *v).max_by(|a, b| order(a, b)) {
                    out.push((*best, 1));
                }
            };
            let got = run_timed(workers, updates.clone(), move |c| best_of_inserts("t", c, order, Arc::new(AtomicU64::new(0))));
            let want = run_timed(workers, updates, move |c| c.reduce_named("r", pick));
            prop_assert_eq!(got, want);
        }
    }
}
