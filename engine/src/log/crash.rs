//! Deterministic crash points of the bulk append's publication and of its recovery, for
//! tests.
//!
//! Every durable step of [`super::bulk`]'s publication (and of `Bulk::publish` around it)
//! and of its recovery at open calls [`point`]. With the environment variable
//! `LAMBDAFLOW_CRASH_AT=PHASE:K` (`PHASE` is `publish` or `recover`, `K` counts from 1), the
//! process stops at the `K`-th point of that phase as a crash would stop it: it prints
//! `simulated crash at PHASE step K: WHAT` on stderr and exits with [`EXIT_CODE`] at once,
//! running no destructor and no cleanup. `tests/bulk_ingest.rs::crash_at_every_step` walks
//! `K` over every step. Without the variable (always, outside tests) a point costs one
//! relaxed atomic add.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const ENV: &str = "LAMBDAFLOW_CRASH_AT";

/// The exit status of a simulated crash.
pub const EXIT_CODE: i32 = 86;

/// The phases with crash points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A bulk append's publication: sealing, the key journal, the MANIFEST replace, the
    /// renames into place.
    Publish,
    /// The recovery of a bulk append at a writer's open.
    Recover,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Publish => "publish",
            Phase::Recover => "recover",
        }
    }
}

static COUNTS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn target() -> Option<(String, usize)> {
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            // Loud, so a variable copied from a test shell into a service's environment
            // cannot make it exit for no visible reason.
            eprintln!("lambdaflow: {ENV}={v} is set: a test hook that stops this process at that step (unset it outside tests)");
            let (phase, k) = v.split_once(':')?;
            Some((phase.to_string(), k.parse().ok()?))
        })
        .clone()
}

/// A durable step of `phase` is done (`what` names it): stops the process here if
/// [`ENV`] names this step.
pub(crate) fn point(phase: Phase, what: impl FnOnce() -> String) {
    let k = COUNTS[phase as usize].fetch_add(1, Ordering::Relaxed) + 1;
    if let Some((name, at)) = target() {
        if name == phase.name() && at == k {
            eprintln!("simulated crash at {name} step {k}: {}", what());
            std::process::exit(EXIT_CODE);
        }
    }
}
