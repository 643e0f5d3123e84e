//! The queries, one module each: `Nexmark::build` calls each query's `build`, a
//! non-generic function that is never inlined, so an edit to one query recompiles that
//! query's module (and the generic operator code it instantiates), not the others nor the
//! binary. What several queries share is here.

use crate::Nexmark;
use lambdaflow_operators::differential_dataflow::AsCollection;
use lambdaflow_operators::timely::dataflow::operators::vec::Map as _;
use lambdaflow_operators::{Coll, Ctx, Data, Inserts};

pub(crate) mod q11;
pub(crate) mod q15;
pub(crate) mod q16;
pub(crate) mod q17;
pub(crate) mod q18;
pub(crate) mod q19;
pub(crate) mod q3;
pub(crate) mod q4;
pub(crate) mod q5;
pub(crate) mod q6;
pub(crate) mod q7;
pub(crate) mod q8;
pub(crate) mod q9;

/// An event time as the `i64` windows take (bounded by the parser).
pub(crate) fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// q15's price rank of a bid: 1 below 10 000 cents, 2 below 1 000 000, 3 from there.
pub fn price_rank(price: u64) -> u8 {
    match price {
        0..=9_999 => 1,
        10_000..=999_999 => 2,
        _ => 3,
    }
}

/// A value collection (one `(key, value)` per key) as a sum: `lane(value, difference)`
/// per update, so the key's sum holds the lane of its current value (q16's minute, q17's
/// min and max folded into one sum view with the counts).
#[inline]
pub(crate) fn value_lane<'s, K: Data, V: Data, A: lambdaflow_operators::Diff>(
    values: Coll<'s, (K, V)>,
    lane: impl Fn(V, i128) -> A + 'static,
) -> Coll<'s, K, A> {
    values.inner.map(move |((k, v), t, d)| (k, t, lane(v, d as i128))).as_collection()
}

/// The result of a join in either form: bounded (the interval join) or plain (join, then
/// filter), so the queries after it are written once.
pub(crate) enum Joined<'s, D: Data> {
    Bounded(Inserts<'s, D>),
    Plain(Coll<'s, D>),
}

impl<'s, D: Data> Joined<'s, D> {
    #[inline]
    pub(crate) fn map<D2: Data>(self, f: impl Fn(D) -> D2 + 'static) -> Joined<'s, D2> {
        match self {
            Joined::Bounded(i) => Joined::Bounded(i.map(f)),
            Joined::Plain(c) => Joined::Plain(c.map(f)),
        }
    }

    #[inline]
    pub(crate) fn into_coll(self) -> Coll<'s, D> {
        match self {
            Joined::Bounded(i) => i.into_coll(),
            Joined::Plain(c) => c,
        }
    }
}

impl Nexmark {
    /// Joins `facts` to `dims` in the form the job is set to: the interval join, or `ctx.join`
    /// and a filter.
    #[inline]
    pub(crate) fn join<'s, K, D, F>(
        &self,
        ctx: &mut Ctx<'s>,
        name: &str,
        dims: Inserts<'s, (K, D)>,
        facts: Inserts<'s, (K, F)>,
        band: impl Fn(&D, &F) -> bool + 'static,
    ) -> Joined<'s, (K, (D, F))>
    where
        K: Data,
        D: Data,
        F: Data,
    {
        if self.plain_join {
            Joined::Plain(ctx.join(name, dims.into_coll(), facts.into_coll()).filter(move |(_, (d, f))| band(d, f)))
        } else {
            Joined::Bounded(ctx.interval_join(name, dims, facts, band))
        }
    }
}
