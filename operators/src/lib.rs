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
//! ## What is here
//!
//! The crate root is the DSL, everything a job uses:
//!
//! * the job and its events: [`Job`], [`Event`] (with [`FieldError`], [`Format`]), and
//!   [`from_ndjson`], serde NDJSON parsing with field-precise errors;
//! * building the dataflow: [`Ctx`] (the operators: `sum`, `count`, `distinct_count`,
//!   `per_key`, `top_k`, `join`, `max`, `min`, `arg_max`, `arg_min`, `reduce`, `seeded`,
//!   and the view declarations `sum_view`, `value_view`), [`Coll`], [`Inserts`] (the
//!   insert-only collections over which extremes keep one seed row per key) and
//!   [`Input`], [`Time`];
//! * values: [`Sums`] (the exact aggregate difference) and [`aggregate!`] (the same with
//!   named fields), [`Day`] (event-time days, with [`MS_PER_DAY`] and [`MAX_TS_MS`]),
//!   [`Window`] (tumbling and sliding event-time windows), [`ViewKey`] (how a view key shows and parses),
//!   [`Example`] (what describes a view's key and value to users),
//!   [`Data`] and [`Diff`] (what records and differences must implement);
//! * what queries return: [`Selection`], [`Answer`], [`ViewInfo`], [`ViewKind`].
//!
//! [`runtime`] is the engine's side: the run modes, the registry of declared views and
//! seeds, and the type-erased views it stores, merges and queries. Jobs do not need it.
//!
//! Inside, `ctx` holds the operators and how they seed the speed layer, `view` the views,
//! batch and speed tables and the merge, `hash` the hash operators (batch mode's, and the
//! speed mode's stateful ones over the ordered epochs), `sums`,
//! `day`, `event` and `job` what their names say; all private, used through the
//! re-exports above.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod aggregate;
mod ctx;
mod day;
mod event;
mod extreme;
mod hash;
mod inserts;
mod interval;
mod job;
mod ndjson;
mod rows;
mod sums;
mod topk;
mod view;
mod window;

pub use ctx::{Coll, Ctx, Time};
pub use day::{Day, MAX_TS_MS, MS_PER_DAY};
pub use event::NO_CSV;
pub use event::{Event, FieldError, Format};
pub use inserts::{Input, Inserts};
pub use job::Job;
pub use ndjson::from_ndjson;
pub use sums::Sums;
pub use view::{Answer, Data, Diff, Example, Selection, ViewInfo, ViewKey, ViewKind};
pub use window::Window;

pub mod runtime {
    //! The engine's side of the DSL: how a job is run, not how it is written.
    //!
    //! The engine builds a job's dataflow with [`Ctx::new`](crate::Ctx::new) in a [`Mode`],
    //! collects the views and seeds the job declared from a [`Registry`], feeds the speed
    //! layer the seeds a batch run stored through a [`SeedSource`], and holds every view as a
    //! type-erased [`AnyView`] that encodes batch views ([`BatchTable`]), folds speed updates
    //! ([`SpeedTable`]) and answers queries; a batch run writes each [`AnySeed`].

    pub use crate::ctx::{AnySeed, Mode, Registry, SeedSource};
    pub use crate::rows::{header as rows_header, VARINT_ROWS};
    pub use crate::view::{AnyView, BatchTable, SpeedTable};
}

pub use aggregate::__private;

/// Re-exported so jobs can use the same versions the engine does.
pub use differential_dataflow;
pub use serde_json;
pub use timely;
