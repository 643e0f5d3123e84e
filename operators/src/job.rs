//! The `Job` trait: one definition, run in both modes.

use crate::ctx::{Coll, Ctx};
use crate::event::Event;

/// A lambdaflow job: an event type and one dataflow definition that declares views.
///
/// `build` runs once per worker per run. It must declare the same views, with the same
/// names and types, every time: the engine relies on it to match batch views, seeds and
/// speed updates. Bump [`Job::version`] whenever the definition changes what a view
/// contains; every batch view records the version that made it, and the engine never
/// merges a batch view of another version with this one's speed layer.
pub trait Job: Send + Sync + 'static {
    /// The job's event type, stored in the master dataset.
    type Event: Event;

    /// The job's name, e.g. `shop`.
    fn name(&self) -> &'static str;

    /// The job's version.
    fn version(&self) -> u32;

    /// Builds the dataflow over `events` and declares the job's views on `ctx`.
    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, Self::Event>);
}
