//! The group committer: one thread that turns concurrent ingest requests into group commits.
//!
//! Requests queue up while the previous group is being fsync'd; the thread then takes all of
//! them (up to [`GROUP_EVENTS_MAX`] events), commits them as one group through the append
//! path ([`crate::append::Appender::commit`], where the idempotency protocol lives), and
//! acknowledges each request with the positions its events got. Under load, one fsync
//! round serves many requests; idle, a request waits for its own fsync only.

use lambdaflow_operators::Job;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::metrics::Metrics;
use crate::append::{Encoded, Write, Written};
use crate::keys::Range;
use crate::lambda::Lambda;

/// A group commit takes at most this many events (more wait for the next round).
pub(crate) const GROUP_EVENTS_MAX: usize = 256 * 1024;

/// One parsed ingest request waiting for its group commit.
pub(crate) struct Submission {
    /// The `Idempotency-Key` and the hash of the body it guards.
    pub key: Option<(String, u64)>,
    /// The request's events, encoded for the log.
    pub encoded: Encoded,
    /// When the request arrived (for the ack latency histogram).
    pub received: Instant,
    /// Where the outcome goes.
    pub reply: tokio::sync::oneshot::Sender<Outcome>,
    /// The request's share of the in-flight memory budget, released with the submission
    /// (not when the client goes away).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The acknowledgement of a request.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Ack {
    /// Events acknowledged.
    pub accepted: u64,
    /// Per partition, the offsets `[from, to)` the request's events got, in input order.
    pub positions: Vec<Range>,
    /// True when this is a retry answered from the idempotency journal (nothing appended).
    pub duplicate: bool,
}

/// What became of a request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Durable.
    Ok(Ack),
    /// The key was used before for a different body.
    KeyConflict(String),
    /// The append failed; nothing of the request is stored.
    Failed(String),
}

/// Runs the committer until every sender is dropped.
pub(crate) fn run<J: Job>(lambda: Arc<Lambda<J>>, rx: std::sync::mpsc::Receiver<Submission>, metrics: Arc<Metrics>) {
    while let Ok(first) = rx.recv() {
        let mut events = first.encoded.len();
        let mut group = vec![first];
        while events < GROUP_EVENTS_MAX {
            match rx.try_recv() {
                Ok(s) => {
                    events += s.encoded.len();
                    group.push(s);
                }
                Err(_) => break,
            }
        }
        commit(&lambda, group, &metrics);
    }
}

fn finish(s: Submission, outcome: Outcome, metrics: &Metrics) {
    if let Outcome::Ok(ack) = &outcome {
        metrics.ingest_requests.fetch_add(1, Relaxed);
        if ack.duplicate {
            metrics.ingest_replays.fetch_add(1, Relaxed);
        } else {
            metrics.ingest_events.fetch_add(ack.accepted, Relaxed);
        }
        metrics.ack_latency.observe(s.received.elapsed());
    }
    // The client may have gone away; its events are durable all the same.
    let _ = s.reply.send(outcome);
}

/// Commits one group through the append path (the protocol lives in
/// [`crate::append::Appender::commit`]) and answers each request.
fn commit<J: Job>(lambda: &Lambda<J>, group: Vec<Submission>, metrics: &Metrics) {
    let (writes, submissions): (Vec<Write>, Vec<_>) = group
        .into_iter()
        .map(|s| {
            let Submission { key, encoded, received, reply, permit } = s;
            (Write { key, encoded }, (received, reply, permit))
        })
        .unzip();
    let committed = lambda.appender().commit(&writes);
    if committed.appended {
        metrics.group_commits.fetch_add(1, Relaxed);
    }
    if committed.outcomes.iter().any(|o| matches!(o, Written::Appended(_))) {
        lambda.notify();
    }
    metrics.idempotency_keys.store(committed.keys as u64, Relaxed);
    let failed: Vec<&String> =
        committed.outcomes.iter().filter_map(|o| if let Written::Failed(why) = o { Some(why) } else { None }).collect();
    if let Some(why) = failed.first() {
        eprintln!("lambdaflow serve: a group commit of {} request(s) failed: {why}", failed.len());
        metrics.ingest_failed.fetch_add(failed.len() as u64, Relaxed);
    }
    for ((write, (received, reply, permit)), written) in writes.into_iter().zip(submissions).zip(committed.outcomes) {
        let accepted = write.encoded.len() as u64;
        let outcome = match written {
            Written::Appended(positions) => Outcome::Ok(Ack { accepted, positions, duplicate: false }),
            Written::Replayed { events, ranges } => Outcome::Ok(Ack { accepted: events, positions: ranges, duplicate: true }),
            Written::KeyConflict(why) => Outcome::KeyConflict(why),
            Written::Failed(why) => Outcome::Failed(why),
        };
        let s = Submission { key: write.key, encoded: write.encoded, received, reply, permit };
        finish(s, outcome, metrics);
    }
}
