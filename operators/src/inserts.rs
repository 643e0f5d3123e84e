//! Insert-only collections: what the master dataset's immutability buys.
//!
//! Every event in the log is appended once and never retracted, so the job's `events`
//! collection only grows, and so does anything derived from it by `map`, `filter`,
//! `flat_map` and `concat`. Over such a collection some stateful operators need far less
//! state than over a general one: the maximum of a key that only gains values is the
//! larger of its old maximum and the new value, so the batch run's *output* (one row per
//! key) is all the speed layer needs, not the input (one row per event).
//!
//! [`Inserts`] carries that fact in the type. The only way to get one is
//! [`Ctx::inserts`](crate::Ctx::inserts) on the job's own `events`, and its methods keep
//! it; operators that take an [`Input`] (`max`, `min`, `arg_max`, `arg_min`) store
//! bounded seeds for an `Inserts` and the full input for any other collection (one that
//! may retract, like the output of `count` or `per_key`), so they are exact either way.

use crate::ctx::Coll;
use crate::view::Data;

/// A collection whose records only ever enter with difference +1 and are never retracted:
/// the job's events and what `map`, `filter`, `flat_map` and `concat` derive from them.
///
/// ```ignore
/// let bids = ctx.inserts(events.clone()).flat_map(|e| e.bid());   // Inserts<Bid>
/// let best = ctx.max("max_price", bids.map(|b| (b.auction, b.price)));
/// let any: Coll<_> = bids.into_coll();                            // back to a Coll
/// ```
pub struct Inserts<'s, D: Data> {
    pub(crate) coll: Coll<'s, D>,
}

impl<'s, D: Data> Clone for Inserts<'s, D> {
    fn clone(&self) -> Self {
        Inserts { coll: self.coll.clone() }
    }
}

impl<'s, D: Data> Inserts<'s, D> {
    /// Each record mapped to one record.
    pub fn map<D2: Data>(self, f: impl Fn(D) -> D2 + 'static) -> Inserts<'s, D2> {
        Inserts { coll: self.coll.map(f) }
    }

    /// The records for which `f` holds.
    pub fn filter(self, f: impl Fn(&D) -> bool + 'static) -> Inserts<'s, D> {
        Inserts { coll: self.coll.filter(f) }
    }

    /// Each record mapped to any number of records.
    pub fn flat_map<I>(self, f: impl Fn(D) -> I + 'static) -> Inserts<'s, I::Item>
    where
        I: IntoIterator,
        I::Item: Data,
    {
        Inserts { coll: self.coll.flat_map(f) }
    }

    /// The records split among `parts` collections: each goes to the one `route` names
    /// (an index below `parts`; a record routed further is dropped), moved, not copied. For
    /// splitting one stream several ways, where `parts` separate `flat_map`s would each get
    /// (and drop) a copy of every record.
    ///
    /// ```ignore
    /// // Events of three kinds, each moved to its own stream.
    /// let mut kinds = ctx.inserts(events).partition(3, |e: &Event| e.kind_index());
    /// let (bids, auctions, persons) = (kinds.pop().unwrap(), kinds.pop().unwrap(), kinds.pop().unwrap());
    /// ```
    pub fn partition(self, parts: u64, route: impl Fn(&D) -> u64 + 'static) -> Vec<Inserts<'s, D>> {
        use differential_dataflow::AsCollection;
        use timely::dataflow::operators::vec::Partition;
        let mut streams = self.coll.inner.partition(parts + 1, move |(d, t, r)| (route(&d).min(parts), (d, t, r)));
        // The last stream takes the records routed past `parts`: nothing reads it.
        streams.pop();
        streams.into_iter().map(|s| Inserts { coll: s.as_collection() }).collect()
    }

    /// Both collections' records.
    pub fn concat(self, other: Inserts<'s, D>) -> Inserts<'s, D> {
        Inserts { coll: self.coll.concat(other.coll) }
    }

    /// The records as a general collection, for any differential operator (which may then
    /// retract: what comes out is no longer known to be insert-only).
    pub fn into_coll(self) -> Coll<'s, D> {
        self.coll
    }
}

/// What operators with a bounded form accept: an [`Inserts`] (bounded seeds) or any
/// [`Coll`] (the full input is seeded).
///
/// The trait is **sealed**: only this crate implements it, for `Coll` and `Inserts`. A job
/// cannot declare a collection of its own insert-only (a wrong claim would make a bounded
/// seed silently inexact); it gets an `Inserts` from `ctx.inserts(events)` and the methods
/// that keep insert-only-ness. Both kinds work wherever an `Input` is asked for:
///
/// ```
/// use lambdaflow_operators::{Coll, Ctx, Inserts};
///
/// fn highest<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, (u64, u64)>, any: Coll<'s, (u64, u64)>) {
///     let _bounded = ctx.max("highest_inserted", bids); // one seed row per key
///     let _full = ctx.max("highest_of_any", any); // the input at the cut is the seed
/// }
/// ```
///
/// An implementation outside the crate is refused at compile time (the supertrait is
/// private, so it cannot be implemented or even named):
///
/// ```compile_fail
/// use lambdaflow_operators::{Coll, Input};
///
/// struct Claimed<'s>(Coll<'s, (u64, u64)>);
///
/// impl<'s> Input<'s, (u64, u64)> for Claimed<'s> {
///     fn into_input(self) -> (Coll<'s, (u64, u64)>, bool) {
///         (self.0, true) // "trust me, it never retracts"
///     }
/// }
/// ```
pub trait Input<'s, D: Data>: sealed::Sealed {
    /// The collection, and whether it is known to be insert-only.
    fn into_input(self) -> (Coll<'s, D>, bool);
}

mod sealed {
    /// The private supertrait of [`Input`](super::Input): implemented here only.
    #[allow(unreachable_pub)]
    pub trait Sealed {}

    impl<D: crate::view::Data> Sealed for crate::ctx::Coll<'_, D> {}
    impl<D: crate::view::Data> Sealed for super::Inserts<'_, D> {}
}

impl<'s, D: Data> Input<'s, D> for Coll<'s, D> {
    fn into_input(self) -> (Coll<'s, D>, bool) {
        (self, false)
    }
}

impl<'s, D: Data> Input<'s, D> for Inserts<'s, D> {
    fn into_input(self) -> (Coll<'s, D>, bool) {
        (self.coll, true)
    }
}

#[cfg(test)]
mod tests {
    use crate::ctx::{Ctx, Mode, Registry, Time};
    use std::sync::{Arc, Mutex};

    // `partition` moves each record to the part its route names, exactly once, and drops
    // the records routed past the last part; on two workers as on one.
    #[test]
    fn partition_sends_each_record_to_its_part_once() {
        for workers in [1, 2] {
            let seen: Arc<Mutex<Vec<(usize, u64, isize)>>> = Arc::default();
            let s = seen.clone();
            timely::execute(timely::Config::process(workers), move |worker| {
                let s = s.clone();
                let probe = timely::dataflow::ProbeHandle::<Time>::new();
                let mut input = worker.dataflow::<Time, _, _>(|scope| {
                    use timely::dataflow::operators::{Inspect, Probe};
                    let (input, events) = differential_dataflow::input::Input::new_collection::<u64, isize>(&scope);
                    let mut ctx = Ctx::new(scope, Mode::Batch, Arc::new(Registry::default()), None);
                    let parts = ctx.inserts(events).partition(3, |n: &u64| n % 4);
                    assert_eq!(parts.len(), 3);
                    for (i, part) in parts.into_iter().enumerate() {
                        let s = s.clone();
                        part.into_coll().inner.inspect(move |(n, _t, r)| s.lock().unwrap().push((i, *n, *r))).probe_with(&probe);
                    }
                    input
                });
                if worker.index() == 0 {
                    for n in 0..40u64 {
                        input.insert(n);
                    }
                }
                input.advance_to(1);
                input.flush();
                worker.step_while(|| probe.less_than(&1));
            })
            .expect("run");
            let mut got = seen.lock().unwrap().clone();
            got.sort();
            let want: Vec<(usize, u64, isize)> = (0..40u64).filter(|n| n % 4 < 3).map(|n| ((n % 4) as usize, n, 1)).collect();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{workers} workers");
        }
    }
}
