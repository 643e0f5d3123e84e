//! The interval join: facts (bids) joined to the one dimension row (auction) of their key
//! whose condition holds (the bid's time within the auction's `[start, expiry]`), keeping
//! only the state that can still match.
//!
//! ## Why a dimension, not a watermark
//!
//! An exact join of two insert-only collections must match a late-arriving row with every
//! old row of the other side it satisfies, so a plain join keeps both inputs forever (its
//! seeds hold every bid ever made). Dropping rows once "event time has passed them" is
//! exact only if nothing later can still match them, and in lambdaflow nothing bounds how
//! late an event arrives: a late event is appended and must change its old results, in the
//! batch layer, in the speed layer and across a handover alike.
//!
//! What *can* be bounded without any clock is the fact side of a join against a
//! **dimension**: a collection with at most one row per key (an auction per auction id, a
//! person per person id). A fact whose key already has its dimension row is joined with it
//! at once and never needed again: no later row can match it. Only facts whose key has no
//! row yet are kept, and they are released the moment the row arrives. So the state is the
//! dimension (one row per key: the job's state) plus the facts still waiting for their row;
//! it never holds a fact that has met its row, however long the history.
//!
//! ## The contract
//!
//! * Both inputs are [`Inserts`] (only the job's events and what `map`, `filter`,
//!   `flat_map`, `concat` derive from them), so nothing is ever retracted.
//! * `dims` has **at most one row per key**. A batch run is exact whatever the data (it
//!   sees everything at once, and keeps every fact of a key with two rows in the seed);
//!   the speed layer is exact as long as no key gets a *second* row after the cut. If one
//!   does, the facts before the cut that met the first row are gone: the speed updates for
//!   that key miss their pairs with the second row until the next batch run recomputes
//!   them from the log, and the operator says so on stderr (`interval join ...: key ...
//!   has a second dimension row`) and counts the key in the counter
//!   `interval_join.NAME.second_rows` (`status` shows it as `speed_counters`). Pick a key
//!   the source makes unique (an id), or use `ctx.join` and a `filter` (exact for any
//!   data, full seeds).
//! * The output pairs each fact with the dimension row of its key when `band(row, fact)`
//!   holds: any function of the two (a time band, a category, a same-window test). It is
//!   itself insert-only, so extremes after it keep one seed row per key.
//!
//! Seeds: `<name>.dims.seed` (the dimension rows) and `<name>.waiting.seed` (the facts whose
//! key had no row, or more than one, at the cut).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use crate::ctx::{Coll, Ctx, Mode, Time};
use crate::hash::{route, FxHashMap};
use crate::inserts::Inserts;
use crate::view::Data;

/// A key's state: its dimension rows (with counts) and, while it has not exactly one row,
/// the facts waiting for it.
struct Entry<D, F> {
    dims: Vec<(D, isize)>,
    waiting: Vec<(F, isize)>,
    /// Whether a violation of the one-row rule was reported for this key already.
    warned: bool,
}

impl<D, F> Default for Entry<D, F> {
    fn default() -> Self {
        Entry { dims: Vec::new(), waiting: Vec::new(), warned: false }
    }
}

impl<D, F> Entry<D, F> {
    fn rows(&self) -> isize {
        self.dims.iter().map(|(_, n)| *n).sum()
    }
}

/// One time's updates, buffered until both inputs are complete for it.
struct Pending<K, D, F> {
    cap: Capability<Time>,
    dims: Vec<(K, D, isize)>,
    facts: Vec<(K, F, isize)>,
}

/// What the operator emits: a joined pair, or (batch mode) a fact to keep in the seed.
type Out<K, D, F> = Result<(K, (D, F)), (K, F)>;

impl<'s> Ctx<'s> {
    /// Interval join against a dimension: each fact `(key, f)` paired with the dimension
    /// row `(key, d)` of its key when `band(&d, &f)` holds. `dims` must hold at most one row
    /// per key (see the module docs for what happens otherwise); the state kept is the
    /// dimension plus the facts whose row has not arrived yet, never a fact that has met
    /// its row.
    ///
    /// ```ignore
    /// // Bids within their auction's [date_time, expires] (Nexmark q4, q9).
    /// let auctions = inserts.clone().flat_map(|e| e.auction()).map(|a| (a.id, (a.date_time, a.expires, a.reserve)));
    /// let bids = inserts.flat_map(|e| e.bid()).map(|b| (b.auction, (b.date_time, b.price)));
    /// let valid = ctx.interval_join("auction_bids", auctions, bids, |(start, end, reserve), (ts, price)| {
    ///     start <= ts && ts <= end && price >= reserve
    /// });
    /// let winners = ctx.arg_max("winning_bid", valid.map(|(a, (_, bid))| (a, bid)), |(ts, price)| (*price, std::cmp::Reverse(*ts)));
    /// ```
    pub fn interval_join<K, D, F, B>(
        &mut self,
        name: &str,
        dims: Inserts<'s, (K, D)>,
        facts: Inserts<'s, (K, F)>,
        band: B,
    ) -> Inserts<'s, (K, (D, F))>
    where
        K: Data + Hash,
        D: Data,
        F: Data,
        B: Fn(&D, &F) -> bool + 'static,
    {
        self.claim("operator", name);
        let dims = self.seeded(&format!("{name}.dims"), dims.coll);
        let waiting_seed = format!("{name}.waiting");
        let mode = self.mode();
        let facts = match mode {
            Mode::Batch => facts.coll,
            Mode::Speed => self.seeded(&waiting_seed, facts.coll),
        };
        // Keys of this join that got a second dimension row in the speed layer, counted
        // once per key, for `status`.
        let second_rows = self.counter(&format!("interval_join.{name}.second_rows"));
        let out = band_join(name, mode, dims, facts, band, second_rows);
        if mode == Mode::Batch {
            let waiting = out.clone().flat_map(|o: Out<K, D, F>| o.err());
            self.seeded(&waiting_seed, waiting);
        }
        Inserts { coll: out.flat_map(|o: Out<K, D, F>| o.ok()) }
    }
}

/// The operator: both inputs exchanged by key; each time processed once both inputs are
/// complete for it, in time order, dimension rows before facts.
fn band_join<'s, K, D, F, B>(
    name: &str,
    mode: Mode,
    dims: Coll<'s, (K, D)>,
    facts: Coll<'s, (K, F)>,
    band: B,
    second_rows: Arc<AtomicU64>,
) -> Coll<'s, Out<K, D, F>>
where
    K: Data + Hash,
    D: Data,
    F: Data,
    B: Fn(&D, &F) -> bool + 'static,
{
    let label = name.to_string();
    dims.inner
        .binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<(Out<K, D, F>, Time, isize)>>, _, _, _, _>(
            facts.inner,
            Exchange::new(|((k, _), _, _): &((K, D), Time, isize)| route(k)),
            Exchange::new(|((k, _), _, _): &((K, F), Time, isize)| route(k)),
            &format!("IntervalJoin: {name}"),
            move |_cap, _info| {
                let mut state: FxHashMap<K, Entry<D, F>> = FxHashMap::default();
                let mut pending: HashMap<Time, Pending<K, D, F>> = HashMap::new();
                move |(dim_input, dim_frontier), (fact_input, fact_frontier), output| {
                    dim_input.for_each(|cap, data| {
                        for ((k, d), t, n) in data.drain(..) {
                            let p = pending.entry(t).or_insert_with(|| Pending {
                                cap: cap.delayed(&t, 0),
                                dims: Vec::new(),
                                facts: Vec::new(),
                            });
                            p.dims.push((k, d, n));
                        }
                    });
                    fact_input.for_each(|cap, data| {
                        for ((k, f), t, n) in data.drain(..) {
                            let p = pending.entry(t).or_insert_with(|| Pending {
                                cap: cap.delayed(&t, 0),
                                dims: Vec::new(),
                                facts: Vec::new(),
                            });
                            p.facts.push((k, f, n));
                        }
                    });
                    let mut done: Vec<Time> =
                        pending.keys().copied().filter(|t| !dim_frontier.less_equal(t) && !fact_frontier.less_equal(t)).collect();
                    done.sort_unstable();
                    for t in done {
                        let Some(p) = pending.remove(&t) else { continue };
                        let mut session = output.session(&p.cap);
                        // Dimension rows first: a row meets the facts waiting for its key
                        // (every earlier fact of a key with no row or several rows).
                        let mut touched: FxHashMap<K, ()> = FxHashMap::default();
                        touched.reserve(p.dims.len());
                        if state.is_empty() {
                            // The seed (time 0), or a first time: size the table once.
                            state.reserve(p.dims.len());
                        }
                        for (k, d, n) in p.dims {
                            let entry = state.entry(k.clone()).or_default();
                            // A key that had exactly one row before this time has dropped
                            // its facts: a further row cannot meet them.
                            if mode == Mode::Speed && t > 0 && !touched.contains_key(&k) && entry.rows() == 1 && !entry.warned {
                                // The facts that met the first row are gone (see the contract).
                                entry.warned = true;
                                second_rows.fetch_add(1, Ordering::Relaxed);
                                eprintln!(
                                    "interval join {label}: key {k:?} has a second dimension row; the speed layer's \
                                     pairs for it are incomplete until the next batch run (the dimension must be unique per key)"
                                );
                            }
                            for (f, m) in &entry.waiting {
                                if band(&d, f) {
                                    session.give((Ok((k.clone(), (d.clone(), f.clone()))), t, n * m));
                                }
                            }
                            match entry.dims.iter_mut().find(|(x, _)| *x == d) {
                                Some((_, c)) => *c += n,
                                None => {
                                    // A key has one row, normally: room for exactly that
                                    // one (a first push would make room for four).
                                    if entry.dims.is_empty() {
                                        entry.dims.reserve_exact(1);
                                    }
                                    entry.dims.push((d, n))
                                }
                            }
                            touched.insert(k, ());
                        }
                        // Then facts: joined with every row of their key (one, normally),
                        // and kept only while the key has not exactly one row.
                        for (k, f, m) in p.facts {
                            let entry = state.entry(k.clone()).or_default();
                            for (d, n) in &entry.dims {
                                if band(d, &f) {
                                    session.give((Ok((k.clone(), (d.clone(), f.clone()))), t, n * m));
                                }
                            }
                            if entry.rows() != 1 {
                                entry.waiting.push((f, m));
                            }
                        }
                        // A key with exactly one row needs none of its facts any more.
                        for (k, ()) in touched {
                            if let Some(entry) = state.get_mut(&k) {
                                if entry.rows() == 1 {
                                    entry.waiting = Vec::new();
                                }
                            }
                        }
                        if mode == Mode::Batch {
                            // What the speed layer must start from: the facts still waiting.
                            for (k, entry) in state.drain() {
                                for (f, m) in entry.waiting {
                                    session.give((Err((k.clone(), f)), t, m));
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}
