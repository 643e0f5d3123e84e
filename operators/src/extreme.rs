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

use crate::ctx::{Coll, Ctx, Mode};
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
        let pick = move |_key: &K, vals: &[(&V, isize)], out: &mut Vec<(V, isize)>| {
            if let Some(best) = vals.iter().filter(|(_, n)| *n > 0).map(|(v, _)| *v).max_by(|a, b| order(a, b)) {
                out.push((best.clone(), 1));
            }
        };
        if !insert_only {
            let input = self.seeded_consolidated(name, coll);
            return self.group(&op, input, pick);
        }
        let seed = format!("{name}.bounded");
        match self.mode() {
            // The output, one row per key, is what the speed layer starts from.
            Mode::Batch => {
                let out = self.group(&op, coll, pick);
                self.seeded(&seed, out)
            }
            // Seed (the extremes at the cut) + values since: the extreme of all values.
            Mode::Speed => {
                let input = self.seeded(&seed, coll);
                self.group(&op, input, pick)
            }
        }
    }
}
