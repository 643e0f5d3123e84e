//! Named aggregates: a struct of exact sums, instead of positional [`Sums`](crate::Sums)
//! lanes, that keeps its key alive when every sum is zero.
//!
//! ```
//! use lambdaflow_operators::aggregate;
//!
//! aggregate! {
//!     /// A day's revenue.
//!     pub struct Revenue { gross_cents, refund_cents, orders, refunds }
//! }
//!
//! // One purchase of 1250 cents: set what it adds, the rest stays zero.
//! let purchase = Revenue { gross_cents: 1250, orders: 1, ..Revenue::record() };
//! let refund = Revenue { refund_cents: 1250, refunds: 1, ..Revenue::record() };
//! use lambdaflow_operators::differential_dataflow::difference::{IsZero, Semigroup};
//! let mut day = purchase;
//! day.plus_equals(&refund);
//! assert_eq!((day.gross_cents - day.refund_cents, day.records), (0, 2));
//! assert!(!day.is_zero()); // net zero, but two records: the day stays in the view
//! assert_eq!(day.to_json().to_string(), r#"{"gross_cents":1250,"orders":1,"refund_cents":1250,"refunds":1}"#);
//! ```
//!
//! Use it as the difference of `ctx.sum` and present it with `to_json` (or pick fields):
//!
//! ```ignore
//! let revenue = ctx.sum("revenue_by_day", events, |e| match e {
//!     Purchase { ts, amount_cents, .. } => Some((Day::of_ms(*ts), Revenue { gross_cents: (*amount_cents).into(), orders: 1, ..Revenue::record() })),
//!     _ => None,
//! });
//! ctx.sum_view("revenue_by_day", revenue, Revenue::to_json);
//! ```
//!
//! Every field is an `i128` (exact for any number of i64 contributions, as `Sums` lanes
//! are). The struct has one more field, `records`: the number of records added up (minus
//! those retracted). [`record`](Revenue) sets it to 1, so a key some records reached never
//! consolidates away, even when all its sums net to zero: the "count lane" of `Sums`
//! jobs, kept for you. A field may not be called `records`:
//!
//! ```compile_fail
//! lambdaflow_operators::aggregate! { struct Bad { amount, records } }
//! ```

#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// Declares a named aggregate: a struct of `i128` sums usable as the difference of
/// `ctx.sum` (see [the module docs](crate::aggregate!)).
///
/// Generated: the struct with `pub` `i128` fields plus `records`, `Type::record()` (all
/// sums zero, `records` 1), `to_json()` (the named sums as a JSON object, without
/// `records`), and the traits a difference needs (differential's `Semigroup`, `Monoid`,
/// `Abelian`, `IsZero`, `Multiply<isize>`, serde as a compact tuple, and [`crate::Example`]).
#[macro_export]
macro_rules! aggregate {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $field:ident),+ $(,)? }) => {
        $($crate::__aggregate_field!($field);)+
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis struct $name {
            $($(#[$fmeta])* pub $field: i128,)+
            /// The number of records added up (minus those retracted): keeps a key whose
            /// sums are all zero in its view.
            pub records: i128,
        }

        impl $name {
            /// One record's contribution with every sum zero and `records` 1: set the
            /// fields the record adds, `T { field: x, ..T::record() }`.
            pub const fn record() -> Self {
                $name { $($field: 0,)+ records: 1 }
            }

            /// The named sums as a JSON object (exact integers; `records` left out). By
            /// reference, so `Type::to_json` is a view's presentation as it is.
            #[allow(clippy::wrong_self_convention)]
            pub fn to_json(&self) -> $crate::serde_json::Value {
                let mut object = $crate::serde_json::Map::new();
                $(object.insert(
                    ::core::stringify!($field).to_string(),
                    $crate::serde_json::to_value(self.$field).expect("an i128 is a JSON number"),
                );)+
                $crate::serde_json::Value::Object(object)
            }
        }

        impl $crate::differential_dataflow::difference::IsZero for $name {
            fn is_zero(&self) -> bool {
                $(self.$field == 0 &&)+ self.records == 0
            }
        }

        impl $crate::differential_dataflow::difference::Semigroup for $name {
            fn plus_equals(&mut self, rhs: &Self) {
                // Wrapping, as `Sums`: exact whenever the true total fits an i128.
                $(self.$field = self.$field.wrapping_add(rhs.$field);)+
                self.records = self.records.wrapping_add(rhs.records);
            }
        }

        impl $crate::differential_dataflow::difference::Monoid for $name {
            fn zero() -> Self {
                $name { $($field: 0,)+ records: 0 }
            }
        }

        impl $crate::differential_dataflow::difference::Abelian for $name {
            fn negate(&mut self) {
                $(self.$field = self.$field.wrapping_neg();)+
                self.records = self.records.wrapping_neg();
            }
        }

        impl $crate::differential_dataflow::difference::Multiply<isize> for $name {
            type Output = Self;
            fn multiply(self, rhs: &isize) -> Self {
                let k = *rhs as i128;
                $name { $($field: self.$field.wrapping_mul(k),)+ records: self.records.wrapping_mul(k) }
            }
        }

        impl $crate::Example for $name {
            /// Every sum 1 (so a presentation dividing by one does not divide by zero).
            fn example() -> Self {
                $name { $($field: 1,)+ records: 1 }
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error> {
                use $crate::__private::serde::ser::SerializeTuple;
                let mut t = serializer.serialize_tuple([$(::core::stringify!($field)),+].len() + 1)?;
                $(t.serialize_element(&self.$field)?;)+
                t.serialize_element(&self.records)?;
                t.end()
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(deserializer: D) -> ::std::result::Result<Self, D::Error> {
                struct __LambdaflowAggregateVisitor;
                impl<'de> $crate::__private::serde::de::Visitor<'de> for __LambdaflowAggregateVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter) -> ::std::fmt::Result {
                        f.write_str(::core::concat!("the sums of ", ::core::stringify!($name)))
                    }
                    fn visit_seq<A: $crate::__private::serde::de::SeqAccess<'de>>(self, mut seq: A) -> ::std::result::Result<$name, A::Error> {
                        let mut lane = 0usize;
                        let mut next = |seq: &mut A| -> ::std::result::Result<i128, A::Error> {
                            let value = seq.next_element()?.ok_or_else(|| $crate::__private::serde::de::Error::invalid_length(lane, &__LambdaflowAggregateVisitor))?;
                            lane += 1;
                            Ok(value)
                        };
                        Ok($name { $($field: next(&mut seq)?,)+ records: next(&mut seq)? })
                    }
                }
                deserializer.deserialize_tuple([$(::core::stringify!($field)),+].len() + 1, __LambdaflowAggregateVisitor)
            }
        }
    };
}

/// Refuses a field the generated struct has already (`records`).
#[doc(hidden)]
#[macro_export]
macro_rules! __aggregate_field {
    (records) => {
        ::core::compile_error!("aggregate!: `records` is the generated count of records; name the field differently");
    };
    ($field:ident) => {};
}

#[cfg(test)]
#[allow(unreachable_pub)]
mod tests {
    use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};

    aggregate! {
        /// Test aggregate.
        pub struct Stock { level, moves }
    }

    // The macro's own names do not collide with the user's.
    aggregate! {
        /// An aggregate named like the macro's former visitor, with one field.
        pub struct Lanes { a }
    }

    #[test]
    fn group_laws_and_the_records_field() {
        let a = Stock { level: 5, moves: 1, ..Stock::record() };
        let b = Stock { level: -5, moves: 1, ..Stock::record() };
        let mut sum = a;
        sum.plus_equals(&b);
        assert_eq!(sum, Stock { level: 0, moves: 2, records: 2 });
        assert!(!sum.is_zero());
        let mut neg = sum;
        neg.negate();
        neg.plus_equals(&sum);
        assert!(neg.is_zero());
        assert_eq!(neg, Stock::zero());
        assert_eq!(a.multiply(&-2), Stock { level: -10, moves: -2, records: -2 });
        // A record with all sums zero still counts.
        assert!(!Stock::record().is_zero());
    }

    #[test]
    fn serde_round_trip_is_a_compact_tuple() {
        let s = Stock { level: i128::MAX, moves: -3, records: 7 };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("[{},-3,7]", i128::MAX));
        assert_eq!(serde_json::from_str::<Stock>(&json).unwrap(), s);
        assert_eq!(bincode::deserialize::<Stock>(&bincode::serialize(&s).unwrap()).unwrap(), s);
        let short = serde_json::from_str::<Stock>("[1,2]").unwrap_err().to_string();
        assert!(short.contains("invalid length 2"), "{short}");
    }

    #[test]
    fn one_field_and_a_colliding_name_work() {
        let l = Lanes { a: i128::MAX, ..Lanes::record() };
        assert_eq!(serde_json::from_str::<Lanes>(&serde_json::to_string(&l).unwrap()).unwrap(), l);
        assert_eq!(l.to_json(), serde_json::json!({ "a": i128::MAX }));
    }

    #[test]
    fn json_names_the_sums() {
        let s = Stock { level: -4, moves: 2, ..Stock::record() };
        assert_eq!(s.to_json(), serde_json::json!({ "level": -4, "moves": 2 }));
    }
}
