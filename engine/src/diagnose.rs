//! Naming the event a job's code panicked on.
//!
//! The log is immutable, so an event the job's code cannot handle (a helper that panics on
//! an extreme value, an `unwrap` on a field) fails every later batch run. The operator
//! needs to know *which* event. A batch worker records the events it fed since its last
//! completed step (its window); when a run fails with a panic, [`poison_event`] replays
//! those windows through the job on one fresh worker, halving the set until one event
//! alone makes the job panic, and names it: partition, offset, its JSON form and the panic.
//! A panic that no single event reproduces (it needs several together) is reported as it
//! was, without a culprit.

use lambdaflow_operators::runtime::{Mode, Registry};
use lambdaflow_operators::{Ctx, Job, Time};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use differential_dataflow::input::Input;

use crate::error::{DataflowError, Error, Result};
use crate::log::Log;

/// Events replayed at most (a window is at most one step's worth per worker).
const REPLAY_EVENTS_MAX: usize = 1 << 20;

/// The event in `windows` that alone makes `job` panic, as an error naming it; `None` if
/// no single event does (or the windows cannot be read back).
pub(crate) fn poison_event<J: Job>(job: &Arc<J>, log: &Log, windows: &[Vec<(u32, u64, u64)>]) -> Option<Error> {
    let mut events: Vec<(u32, u64, J::Event)> = Vec::new();
    let mut ranges: Vec<(u32, u64, u64)> = windows.iter().flatten().copied().collect();
    ranges.sort_unstable();
    for (partition, from, to) in ranges {
        let read = log.read(partition, from, to, |offset, bytes| -> Result<()> {
            if events.len() < REPLAY_EVENTS_MAX {
                events.push((partition, offset, crate::batch::decode_event(partition, offset, bytes)?));
            }
            Ok(())
        });
        read.ok()?;
    }
    panics(job, &events)?;
    // Halve the set while one half panics on its own.
    let mut suspects: &[(u32, u64, J::Event)] = &events;
    let message = loop {
        if suspects.len() == 1 {
            break panics(job, suspects)?;
        }
        let (left, right) = suspects.split_at(suspects.len() / 2);
        suspects = if panics(job, left).is_some() {
            left
        } else if panics(job, right).is_some() {
            right
        } else {
            return None;
        };
    };
    let (partition, offset, event) = &suspects[0];
    let json = serde_json::to_string(event).unwrap_or_else(|e| format!("<no JSON form: {e}>"));
    Some(Error::Dataflow(DataflowError::JobPanicked { partition: *partition, offset: *offset, event: json, message }))
}

/// Runs `job` in batch mode over `events` on one fresh worker; the panic message if it
/// panics.
fn panics<J: Job>(job: &Arc<J>, events: &[(u32, u64, J::Event)]) -> Option<String> {
    let job = job.clone();
    let events: Vec<J::Event> = events.iter().map(|(_, _, e)| e.clone()).collect();
    // On its own thread: a panic unwinds through timely's worker, which is then dropped.
    let outcome = std::thread::spawn(move || {
        catch_unwind(AssertUnwindSafe(|| {
            timely::execute::execute_directly(move |worker| {
                let registry = Arc::new(Registry::default());
                let mut input = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, collection) = scope.new_collection::<J::Event, isize>();
                    let mut ctx = Ctx::new(scope, Mode::Batch, registry, None);
                    ctx.set_events(&collection);
                    job.build(&mut ctx, collection);
                    input
                });
                for e in events {
                    input.update(e, 1);
                }
            })
        }))
    })
    .join();
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(payload)) | Err(payload) => Some(crate::guard::panic_message(payload.as_ref())),
    }
}
