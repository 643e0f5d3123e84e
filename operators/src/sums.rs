//! `Sums<N>`: a fixed-width vector of signed 64-bit sums used as a differential *diff*.
//!
//! Differential dataflow lets a record carry any commutative group as its difference. A
//! keyed sum is then a collection of keys whose difference *is* the aggregate: consolidating
//! the collection adds the aggregates, so a batch view at a cut and the speed layer's updates
//! since the cut merge by plain consolidation, exactly. Put a count of contributing events in
//! one lane and a key with events never consolidates to zero, so "a product whose stock nets
//! to 0 keeps level 0" holds without any special case.
//!
//! Lanes are i64 with modular (wrapping) arithmetic: the merged value is exact whenever the
//! true total fits in an i64, whatever the partial sums along the way.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// `N` signed 64-bit sums, added lane by lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sums<const N: usize>(pub [i64; N]);

impl<const N: usize> Sums<N> {
    /// All lanes zero.
    pub const ZERO: Self = Sums([0; N]);

    /// Lane `i`.
    pub fn get(&self, i: usize) -> i64 {
        self.0[i]
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
            // NB: wrapping on purpose. Differential adds partial sums in whatever grouping and
            // order its batches give; arithmetic mod 2^64 is associative and commutative, so
            // the final lane is exact whenever the *true* total fits in an i64, even if some
            // partial sum along the way does not. (A checked add would fail on such valid
            // input; a true total beyond i64 is outside what a lane can represent.)
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
            *a = a.wrapping_mul(*rhs as i64);
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
                write!(f, "a tuple of {N} i64")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sums<N>, A::Error> {
                let mut out = [0i64; N];
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

    // A partial sum may leave i64 while the true total fits: the lane must still come out
    // exact (differential groups additions arbitrarily), never panic.
    #[test]
    fn partial_overflow_is_exact_when_total_fits() {
        let mut chunk = Sums([i64::MAX]);
        chunk.plus_equals(&Sums([1])); // this chunk alone leaves i64
        let mut total = Sums([-1]);
        total.plus_equals(&chunk);
        assert_eq!(total, Sums([i64::MAX]));
    }
}
