//! `Sums<N>`: a fixed-width vector of signed 128-bit sums used as a differential *diff*.
//!
//! Differential dataflow lets a record carry any commutative group as its difference. A
//! keyed sum is then a collection of keys whose difference *is* the aggregate: consolidating
//! the collection adds the aggregates, so a batch view at a cut and the speed layer's updates
//! since the cut merge by plain consolidation, exactly. Put a count of contributing events in
//! one lane and a key with events never consolidates to zero, so "a product whose stock nets
//! to 0 keeps level 0" holds without any special case.
//!
//! Lanes are i128. An event contributes at most an i64 (or u64) to a lane, and a log holds
//! fewer than 2^64 events, so every true total, and every partial sum differential forms on
//! the way (a sum of some of the contributions, some negated), is below 2^127 in magnitude:
//! it fits, and every aggregate is exact for every accepted input. (With i64 lanes, two
//! purchases of `i64::MAX` cents summed to −2.) The arithmetic is still wrapping, so even a
//! job that feeds lanes values beyond i64 can never make an operator panic; it is exact
//! whenever the true total fits in an i128.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// `N` signed 128-bit sums, added lane by lane.
///
/// Build one from an event's numbers with `Sums([i128::from(amount), 1])` (or
/// [`Sums::of`] for i64 lanes); read lane `i` with [`Sums::get`] or `s.0[i]`. The JSON
/// form of an i128 is an exact integer, so present lanes with `json!` as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sums<const N: usize>(pub [i128; N]);

impl<const N: usize> Sums<N> {
    /// All lanes zero.
    pub const ZERO: Self = Sums([0; N]);

    /// Sums from i64 lanes (an event's own numbers), widened exactly.
    pub fn of(lanes: [i64; N]) -> Self {
        Sums(lanes.map(i128::from))
    }

    /// Lane `i`.
    pub fn get(&self, i: usize) -> i128 {
        self.0[i]
    }
}

impl<const N: usize> crate::Example for Sums<N> {
    /// All lanes 1.
    fn example() -> Self {
        Sums([1; N])
    }
}

impl<const N: usize> Default for Sums<N> {
    fn default() -> Self {
        Self::ZERO
    }
}

impl<const N: usize> IsZero for Sums<N> {
    fn is_zero(&self) -> bool {
        self.0.iter().all(|x| *x == 0)
    }
}

impl<const N: usize> Semigroup for Sums<N> {
    fn plus_equals(&mut self, rhs: &Self) {
        for (a, b) in self.0.iter_mut().zip(rhs.0.iter()) {
            // NB: wrapping on purpose. With i64-sized contributions no partial sum leaves
            // i128 (see the module docs), so this never wraps for such jobs; for a job that
            // feeds wider values, arithmetic mod 2^128 is associative and commutative, so the
            // final lane is still exact whenever the *true* total fits, whatever grouping
            // differential's batches give, and no operator panics on a partial sum.
            *a = a.wrapping_add(*b);
        }
    }
}

impl<const N: usize> Monoid for Sums<N> {
    fn zero() -> Self {
        Self::ZERO
    }
}

impl<const N: usize> Abelian for Sums<N> {
    fn negate(&mut self) {
        for a in self.0.iter_mut() {
            *a = a.wrapping_neg();
        }
    }
}

impl<const N: usize> Multiply<isize> for Sums<N> {
    type Output = Self;
    fn multiply(mut self, rhs: &isize) -> Self {
        for a in self.0.iter_mut() {
            *a = a.wrapping_mul(*rhs as i128);
        }
        self
    }
}

impl<const N: usize> Serialize for Sums<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(N)?;
        for x in &self.0 {
            t.serialize_element(x)?;
        }
        t.end()
    }
}

impl<'de, const N: usize> Deserialize<'de> for Sums<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = Sums<N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a tuple of {N} i128")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sums<N>, A::Error> {
                let mut out = [0i128; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Sums(out))
            }
        }
        deserializer.deserialize_tuple(N, V::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sums must behave as a commutative group lane by lane, and survive bincode unchanged,
    // because batch views store them and the merge adds them.
    #[test]
    fn group_laws_and_round_trip() {
        let mut a = Sums([1, -2, 3]);
        a.plus_equals(&Sums([4, 2, -3]));
        assert_eq!(a, Sums([5, 0, 0]));
        assert!(!a.is_zero());
        let mut n = a;
        n.negate();
        n.plus_equals(&a);
        assert!(n.is_zero());
        assert_eq!(Sums([2, 3]).multiply(&-2isize), Sums([-4, -6]));
        let json = serde_json::to_string(&Sums([7, -8])).unwrap();
        assert_eq!(serde_json::from_str::<Sums<2>>(&json).unwrap(), Sums([7, -8]));
    }

    // A partial sum may leave i128 while the true total fits: the lane must still come out
    // exact (differential groups additions arbitrarily), never panic.
    #[test]
    fn partial_overflow_is_exact_when_total_fits() {
        let mut chunk = Sums([i128::MAX]);
        chunk.plus_equals(&Sums([1])); // this chunk alone leaves i128
        let mut total = Sums([-1]);
        total.plus_equals(&chunk);
        assert_eq!(total, Sums([i128::MAX]));
    }

    // Totals beyond i64 are exact (issue 15.1: two i64::MAX amounts summed to -2), in any
    // grouping and through negation and multiplication, and survive bincode and JSON as the
    // exact integer.
    #[test]
    fn totals_beyond_i64_are_exact() {
        let mut two = Sums::of([i64::MAX, i64::MIN]);
        two.plus_equals(&Sums::of([i64::MAX, i64::MIN]));
        assert_eq!(two, Sums([18_446_744_073_709_551_614, -18_446_744_073_709_551_616]));
        let mut many = Sums::<1>::ZERO;
        for _ in 0..1000 {
            many.plus_equals(&Sums::of([i64::MAX]));
        }
        assert_eq!(many.get(0), 1000 * i128::from(i64::MAX));
        assert_eq!(Sums::of([i64::MAX]).multiply(&3isize), Sums([3 * i128::from(i64::MAX)]));
        let mut neg = many;
        neg.negate();
        assert_eq!(neg.get(0), -1000 * i128::from(i64::MAX));
        let bytes = bincode::serialize(&many).unwrap();
        assert_eq!(bincode::deserialize::<Sums<1>>(&bytes).unwrap(), many);
        assert_eq!(serde_json::to_string(&two).unwrap(), "[18446744073709551614,-18446744073709551616]");
        let value = serde_json::json!({ "n": many.get(0) });
        assert_eq!(value.to_string(), r#"{"n":9223372036854775807000}"#);
    }
}
