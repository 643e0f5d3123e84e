//! Running a worker's part of a dataflow so that a failure anywhere ends the run with an
//! error on every worker, never a hang.
//!
//! A panic in job code (or any error) on one worker would otherwise leave its peers waiting
//! forever for progress that worker will never make, and leave timely's post-closure loop
//! (which steps until every dataflow completes) waiting too. [`guarded`] catches the panic,
//! raises a shared abort flag that the peers poll, and drops the worker's dataflows, so
//! every worker returns.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use timely::worker::Worker;

use crate::error::{DataflowError, Error, Result};

/// Set in a worker process of a cluster: a failure ends the process at once.
static FAIL_FAST: AtomicBool = AtomicBool::new(false);

/// Makes any worker failure in this process end the process (exit code 1) instead of
/// returning an error. For the worker processes of a cluster: timely shuts a process's
/// connections down cleanly when its workers return, and a clean shutdown does not tell
/// the peers anything went wrong, so they would wait for it forever. An exit breaks the
/// connections, which makes every peer fail too.
pub(crate) fn fail_fast() {
    FAIL_FAST.store(true, Ordering::SeqCst);
}

/// In a process set to [`fail_fast`], reports `reason` and exits; otherwise does nothing.
pub(crate) fn exit_if_fail_fast(reason: &str) {
    if FAIL_FAST.load(Ordering::SeqCst) {
        eprintln!("lambdaflow worker: {reason}; exiting, so that the cluster's other processes stop too");
        std::process::exit(1);
    }
}

/// Shared by the workers of one run: set once any of them fails, with the first reason.
#[derive(Default)]
pub(crate) struct Abort {
    raised: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Abort {
    /// Whether some worker failed.
    pub(crate) fn raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Records a failure (the first reason wins).
    pub(crate) fn raise(&self, reason: String) {
        let mut r = crate::sync::lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        self.raised.store(true, Ordering::SeqCst);
    }

    /// The first failure's reason.
    pub(crate) fn reason(&self) -> Option<String> {
        crate::sync::lock(&self.reason).clone()
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a worker panicked".to_string()
    }
}

/// Drops every dataflow installed on `worker`, so timely's post-closure loop (which steps
/// until they complete) does not wait for a dataflow that never will.
pub(crate) fn drop_dataflows(worker: &mut Worker) {
    // NB: dropping a dataflow whose operators panicked may panic again; either way the
    // worker must come out of here without waiting for peers.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
    }));
}

/// Runs `body` on `worker`; on an error or a panic raises `abort` (with the reason) and drops
/// the worker's dataflows; on any outcome, once the body has returned, drops them too if the
/// run was aborted elsewhere.
pub(crate) fn guarded<T>(worker: &mut Worker, abort: &Abort, body: impl FnOnce(&mut Worker) -> Result<T>) -> Result<T> {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(worker)));
    let result = match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            abort.raise(e.to_string());
            Err(e)
        }
        Err(payload) => {
            let msg = format!("worker {} panicked: {}", worker.index(), panic_message(payload.as_ref()));
            abort.raise(msg.clone());
            Err(Error::Dataflow(DataflowError::Panicked(msg)))
        }
    };
    if let Err(e) = &result {
        exit_if_fail_fast(&e.to_string());
    }
    if result.is_err() || abort.raised() {
        drop_dataflows(worker);
    }
    match result {
        Ok(_) if abort.raised() => Err(another_worker_failed()),
        other => other,
    }
}

/// Joins a run's workers and returns the first failure. A peer process that died takes the
/// communication threads down with it, and joining them then panics: that is the run's
/// failure, not a reason to take this process down too.
pub(crate) fn join_workers(guards: timely::communication::WorkerGuards<Result<()>>) -> Result<()> {
    let joined = catch_unwind(AssertUnwindSafe(|| guards.join()))
        .map_err(|p| Error::Dataflow(DataflowError::ProcessFailed(format!("the cluster failed: {}", panic_message(p.as_ref())))))?;
    let errors: Vec<Error> =
        joined.into_iter().filter_map(|r| r.map_err(|e| Error::Dataflow(DataflowError::ProcessFailed(e))).and_then(|r| r).err()).collect();
    first_cause(errors).map_or(Ok(()), Err)
}

/// What a worker returns when it stops because another one failed (the other's error is
/// the run's error).
pub(crate) fn another_worker_failed() -> Error {
    Error::Dataflow(DataflowError::Failed(ANOTHER_WORKER_FAILED.into()))
}

const ANOTHER_WORKER_FAILED: &str = "another worker failed";

/// The run's error among its workers' errors: the first that is a cause, not a worker
/// stopping because another failed (so a decode error or a job's panic on worker 3 keeps
/// its kind and its message, whichever worker is joined first).
fn first_cause(errors: Vec<Error>) -> Option<Error> {
    let is_echo = |e: &Error| matches!(e, Error::Dataflow(DataflowError::Failed(m)) if m == ANOTHER_WORKER_FAILED);
    let cause = errors.iter().position(|e| !is_echo(e));
    let mut errors = errors;
    match cause {
        Some(i) => Some(errors.swap_remove(i)),
        None => errors.into_iter().next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a run's error is the failing worker's own, not another worker's echo of it,
    // whatever order the workers are joined in.
    #[test]
    fn the_cause_wins_over_echoes() {
        let decode = || Error::Decode { partition: 2, offset: 9, detail: "bad".into() };
        let e = first_cause(vec![another_worker_failed(), decode(), another_worker_failed()]).expect("an error");
        assert!(matches!(e, Error::Decode { partition: 2, offset: 9, .. }), "{e}");
        assert!(first_cause(vec![]).is_none());
        let e = first_cause(vec![another_worker_failed()]).expect("an error");
        assert_eq!(e.to_string(), another_worker_failed().to_string());
    }
}
