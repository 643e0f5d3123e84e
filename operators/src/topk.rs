//! Top-k of items per key with a bounded state over insert-only input (`ctx.top_k_items`).
//!
//! `top_k` ranks aggregated items and must keep every item of a key: a later retraction
//! can bring back any of them. Over an [`Inserts`](crate::Inserts) nothing is ever
//! retracted, so an item that is not among a key's `k` best now never will be again (items
//! only arrive, and a newcomer can only push it further down). The `k` best items per key
//! are therefore all the state either mode needs:
//!
//! * batch mode keeps at most `k` items per key while it reads the input (never the whole
//!   input), and its output, those items, is the seed (`<name>.bounded.seed`);
//! * speed mode starts from that seed and keeps at most `k` items per key too: the best `k`
//!   of "best `k` at the cut + items since" are the best `k` of all items.
//!
//! Over any other collection (one that may retract) the operator falls back to the full
//! consolidated input as its seed (`<name>.seed`) and a group-by, exact as well.
//!
//! Items are a set per key, as in `top_k` (which ranks each distinct `(key, item)` once):
//! an item inserted twice takes one place.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use crate::ctx::{Coll, Ctx, Mode, Time};
use crate::hash::{route, FxHashMap};
use crate::inserts::Input;
use crate::view::Data;

/// The order of a key's list: the higher score first, then the smaller item.
fn rank<I: Ord, S: Ord>(a: &(I, S), b: &(I, S)) -> Ordering {
    (Reverse(&a.1), &a.0).cmp(&(Reverse(&b.1), &b.0))
}

impl<'s> Ctx<'s> {
    /// The `k` items with the highest `score` per key, ties broken by the smaller item, as
    /// one list per key sorted best first (the shape `top_k` gives): for `(key, item)`
    /// records, each distinct item of a key ranked once. Pass an
    /// [`Inserts`](crate::Inserts) and the seed and the speed state hold at most `k` items
    /// per key, not every record; any other collection is seeded in full (see the module
    /// docs).
    ///
    /// ```ignore
    /// // The 10 highest bids of each auction (Nexmark q19): one seed row per kept bid.
    /// let bids = ctx.inserts(events).flat_map(|e| e.bid());
    /// let top = ctx.top_k_items("top_bids", bids.map(|b| (b.auction, (b.date_time, b.bidder, b.price))), 10, |(_, _, price)| *price);
    /// ```
    pub fn top_k_items<K, I, S, F>(&mut self, name: &str, input: impl Input<'s, (K, I)>, k: usize, score: F) -> Coll<'s, (K, Vec<(I, S)>)>
    where
        K: Data,
        I: Data,
        S: Data,
        F: Fn(&I) -> S + 'static,
    {
        self.claim("operator", name);
        let op = format!("TopKItems: {name}");
        let (coll, insert_only) = input.into_input();
        if !insert_only {
            // Items may leave: keep the whole consolidated input, as `top_k` does.
            let input = match self.mode() {
                Mode::Batch => crate::hash::consolidate_by_hash(&format!("Consolidate: {name}"), coll),
                Mode::Speed => coll,
            };
            let input = self.seeded(name, input);
            return self.group(&op, input, move |_key, items: &[(&I, isize)], out| {
                let mut list: Vec<(I, S)> = items.iter().filter(|(_, n)| *n > 0).map(|(i, _)| ((*i).clone(), score(i))).collect();
                list.sort_by(rank);
                list.truncate(k);
                if !list.is_empty() {
                    out.push((list, 1));
                }
            });
        }
        let seed = format!("{name}.bounded");
        match self.mode() {
            // The output, at most k items per key, is what the speed layer starts from.
            Mode::Batch => {
                let top = bounded_top_k(&op, coll, k, score);
                let kept = top.clone().flat_map(|(key, list): (K, Vec<(I, S)>)| {
                    list.into_iter().map(move |(item, _)| (key.clone(), item)).collect::<Vec<_>>()
                });
                self.seeded(&seed, kept);
                top
            }
            // Seed (the k best at the cut) + items since: the k best of all items.
            Mode::Speed => {
                let input = self.seeded(&seed, coll);
                bounded_top_k(&op, input, k, score)
            }
        }
    }
}

/// One time's records, buffered until the input is complete for it.
struct Pending<K, I> {
    cap: Capability<Time>,
    records: Vec<(K, I, isize)>,
}

/// The operator over insert-only input: records exchanged by key; each time processed once
/// the input is complete for it, in time order; per key a list of at most `k` items, best
/// first. A key whose list changed at a time emits the old list's retraction and the new
/// list at that time.
fn bounded_top_k<'s, K, I, S, F>(name: &str, input: Coll<'s, (K, I)>, k: usize, score: F) -> Coll<'s, (K, Vec<(I, S)>)>
where
    K: Data,
    I: Data,
    S: Data,
    F: Fn(&I) -> S + 'static,
{
    input
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((K, Vec<(I, S)>), Time, isize)>>, _, _, _>(
            Exchange::new(|((key, _), _, _): &((K, I), Time, isize)| route(key)),
            name,
            move |_cap, _info| {
                let mut lists: FxHashMap<K, Vec<(I, S)>> = FxHashMap::default();
                let mut pending: BTreeMap<Time, Pending<K, I>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for ((key, item), t, n) in data.drain(..) {
                            pending
                                .entry(t)
                                .or_insert_with(|| Pending { cap: cap.delayed(&t, 0), records: Vec::new() })
                                .records
                                .push((key, item, n));
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let t = *entry.key();
                        let p = entry.remove();
                        // The lists before this time, of the keys it changed.
                        let mut before: FxHashMap<K, Vec<(I, S)>> = FxHashMap::default();
                        for (key, item, n) in p.records {
                            // Insert-only by type: a record is present once it arrives.
                            if n <= 0 || k == 0 {
                                continue;
                            }
                            let s = score(&item);
                            let entry = (item, s);
                            let list = match lists.get_mut(&key) {
                                Some(list) => list,
                                None => lists.entry(key.clone()).or_default(),
                            };
                            // Already ranked (a set per key), or below the k-th: no change.
                            let Err(pos) = list.binary_search_by(|x| rank(x, &entry)) else { continue };
                            if pos >= k {
                                continue;
                            }
                            // Empty (no allocation) for a key new at this time: at time 0,
                            // every key.
                            before.entry(key).or_insert_with(|| list.clone());
                            list.insert(pos, entry);
                            list.truncate(k);
                        }
                        let mut session = output.session(&p.cap);
                        for (key, old) in before {
                            let new = lists.get(&key).cloned().unwrap_or_default();
                            if new == old {
                                continue;
                            }
                            if !old.is_empty() {
                                session.give(((key.clone(), old), t, -1));
                            }
                            session.give(((key, new), t, 1));
                        }
                    }
                }
            },
        )
        .as_collection()
}
