//! # lambdaflow-operators: the job DSL
//!
//! A lambdaflow job is one Rust definition over differential-dataflow collections. The
//! engine runs that one definition in two modes (batch over the log before a cut, speed over
//! the log from the cut on) and merges their outputs; the job never knows which mode runs it.
//!
//! ```ignore
//! fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Click>) {
//!     let per_page = ctx.count("clicks_by_page", events.clone(), |c| Some(c.page));
//!     ctx.sum_view("clicks_by_page", per_page, |n| json!({ "clicks": n.get(0) }));
//!     let visitors = ctx.distinct_count("visitors_by_page", events.map(|c| (c.page, c.user)));
//!     ctx.sum_view("visitors_by_page", visitors, |n| json!({ "visitors": n.get(0) }));
//! }
//! ```
//!
//! Module map: [`event`] (what an event type provides), [`ctx`] (the DSL operators and how
//! they seed the speed layer), [`view`] (views, batch tables, speed tables, the merge),
//! [`sums`] (the aggregate difference type), [`day`] (event-time day bucketing), [`job`]
//! (the `Job` trait).

#![deny(missing_docs)]

pub mod ctx;
pub mod day;
pub mod event;
pub mod hash;
pub mod job;
pub mod sums;
pub mod view;

pub use ctx::{Coll, Ctx, Mode, Registry, SeedSource, Time};
pub use day::Day;
pub use event::{Event, FieldError, Format};
pub use job::Job;
pub use sums::Sums;
pub use view::{Answer, AnyView, Selection, ViewInfo, ViewKey, ViewKind};

/// Re-exported so jobs can use the same versions the engine does.
pub use differential_dataflow;
pub use serde_json;
pub use timely;
