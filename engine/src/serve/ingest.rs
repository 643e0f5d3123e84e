//! The group committer: one thread that turns concurrent ingest requests into group commits.
//!
//! Requests queue up while the previous group is being fsync'd; the thread then takes all of
//! them (up to [`GROUP_EVENTS_MAX`] events), writes the idempotency record of the keyed
//! ones (see [`crate::keys`]), appends every event with one fsync per touched partition,
//! and acknowledges each request with the positions its events got. Under load, one fsync
//! round serves many requests; idle, a request waits for its own fsync only.

use lambdaflow_operators::Job;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::metrics::Metrics;
use crate::keys::{KeyEntry, Range};
use crate::lambda::{Encoded, Lambda};
use crate::store::now_ms;

/// A group commit takes at most this many events (more wait for the next round).
pub const GROUP_EVENTS_MAX: usize = 256 * 1024;

/// One parsed ingest request waiting for its group commit.
pub struct Submission {
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
pub struct Ack {
    /// Events acknowledged.
    pub accepted: u64,
    /// Per partition, the offsets `[from, to)` the request's events got, in input order.
    pub positions: Vec<Range>,
    /// True when this is a retry answered from the idempotency journal (nothing appended).
    pub duplicate: bool,
}

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    /// Durable.
    Ok(Ack),
    /// The key was used before for a different body.
    KeyConflict(String),
    /// The append failed; nothing of the request is stored.
    Failed(String),
}

/// Runs the committer until every sender is dropped.
pub fn run<J: Job>(lambda: Arc<Lambda<J>>, rx: std::sync::mpsc::Receiver<Submission>, metrics: Arc<Metrics>) {
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

fn ranges_of(encoded: &Encoded, next: &mut [u64]) -> Vec<Range> {
    let mut counts = vec![0u64; next.len()];
    for &(p, _) in &encoded.spans {
        counts[p as usize] += 1;
    }
    let mut out = Vec::new();
    for (p, c) in counts.into_iter().enumerate() {
        if c > 0 {
            out.push(Range { partition: p as u32, from: next[p], to: next[p] + c });
            next[p] += c;
        }
    }
    out
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

fn replay(entry: &KeyEntry, hash: u64, key: &str) -> Outcome {
    if entry.body_hash == hash {
        Outcome::Ok(Ack { accepted: entry.events, positions: entry.ranges.clone(), duplicate: true })
    } else {
        Outcome::KeyConflict(format!("Idempotency-Key `{key}` was used for a different request body; use a new key for a new request"))
    }
}

/// Whether `positions` (as the log assigned them) are exactly the planned ranges.
fn as_planned(writes: &[(Submission, Vec<Range>)], positions: &[crate::log::Position]) -> bool {
    let mut i = 0;
    for (s, ranges) in writes {
        let mut next: HashMap<u32, u64> = ranges.iter().map(|r| (r.partition, r.from)).collect();
        for &(p, _) in &s.encoded.spans {
            let Some(pos) = positions.get(i) else { return false };
            let Some(n) = next.get_mut(&p) else { return false };
            if pos.partition != p || pos.offset != *n {
                return false;
            }
            *n += 1;
            i += 1;
        }
    }
    i == positions.len()
}

fn commit<J: Job>(lambda: &Lambda<J>, group: Vec<Submission>, metrics: &Metrics) {
    let mut keys = lambda.keys().lock().unwrap_or_else(|e| e.into_inner());
    let start = lambda.log().end_offsets();
    let mut next = start.clone();
    let mut writes: Vec<(Submission, Vec<Range>)> = Vec::new();
    let mut waiting: Vec<(Submission, usize)> = Vec::new();
    let mut in_group: HashMap<String, usize> = HashMap::new();
    for s in group {
        if let Some((key, hash)) = &s.key {
            if let Some(entry) = keys.get(key) {
                let outcome = replay(entry, *hash, key);
                finish(s, outcome, metrics);
                continue;
            }
            if let Some(&i) = in_group.get(key) {
                // The same key twice in one group (a retry racing its original): answer it
                // like a retry once the original is durable.
                waiting.push((s, i));
                continue;
            }
            in_group.insert(key.clone(), writes.len());
        }
        let ranges = ranges_of(&s.encoded, &mut next);
        writes.push((s, ranges));
    }
    if writes.is_empty() {
        return;
    }
    let fail_all = |writes: Vec<(Submission, Vec<Range>)>, waiting: Vec<(Submission, usize)>, why: String| {
        eprintln!("lambdaflow serve: a group commit of {} request(s) failed: {why}", writes.len() + waiting.len());
        metrics.ingest_failed.fetch_add((writes.len() + waiting.len()) as u64, Relaxed);
        for (s, _) in writes {
            finish(s, Outcome::Failed(why.clone()), metrics);
        }
        for (s, _) in waiting {
            finish(s, Outcome::Failed(why.clone()), metrics);
        }
    };
    if let Some(why) = keys.poisoned() {
        let why = format!("ingest is stopped until the service restarts ({why}); nothing of this request was stored");
        return fail_all(writes, waiting, why);
    }
    let at = now_ms();
    let entries: Vec<KeyEntry> = writes
        .iter()
        .filter_map(|(s, ranges)| {
            s.key.as_ref().map(|(key, hash)| KeyEntry {
                key: key.clone(),
                body_hash: *hash,
                events: s.encoded.len() as u64,
                ranges: ranges.clone(),
                at_ms: at,
            })
        })
        .collect();
    let prepared = if entries.is_empty() {
        None
    } else {
        match keys.prepare(start.clone(), next.clone(), &entries) {
            Ok(at) => Some(at),
            Err(e) => return fail_all(writes, waiting, format!("could not record the idempotency keys: {e}")),
        }
    };
    let records: Vec<(u32, &[u8])> = writes.iter().flat_map(|(s, _)| s.encoded.records()).collect();
    let appended = lambda.log().append(&records);
    drop(records);
    metrics.group_commits.fetch_add(1, Relaxed);
    match appended {
        Ok(positions) if as_planned(&writes, &positions) => {}
        Ok(_) => {
            // Cannot happen while every append holds the keys lock; if it does, the journal
            // no longer describes the log: stop, and let recovery decide at the restart.
            keys.poison("a group commit's positions differ from its journal record".into());
            let why = "the append's positions differ from the plan; ingest is stopped: restart the service, then retry                        with the same Idempotency-Key (the restart keeps or rolls back this request as a whole)";
            return fail_all(writes, waiting, why.into());
        }
        Err(e) if lambda.log().is_poisoned() => {
            // The log could not undo the partial append: keep the journal record, so the
            // restart rolls the group back as a whole.
            keys.poison(format!("the log could not undo a failed append: {e}"));
            let why = format!(
                "append failed and could not be undone ({e}); ingest is stopped: restart the service, then retry                  with the same Idempotency-Key"
            );
            return fail_all(writes, waiting, why);
        }
        Err(e) => {
            let mut why = format!("append failed, nothing of the request is stored: {e}");
            if let Some(at) = prepared {
                if let Err(e2) = keys.abort(at) {
                    why = format!(
                        "append failed ({e}) and removing its idempotency record failed too ({e2}); ingest is stopped:                          restart the service, then retry with the same Idempotency-Key"
                    );
                }
            }
            return fail_all(writes, waiting, why);
        }
    }
    lambda.notify();
    keys.commit(entries.clone());
    metrics.idempotency_keys.store(keys.len() as u64, Relaxed);
    let by_key: HashMap<&str, &KeyEntry> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
    for (s, i) in waiting {
        let outcome = match (&s.key, writes[i].0.key.as_ref().and_then(|(k, _)| by_key.get(k.as_str()))) {
            (Some((key, hash)), Some(entry)) => replay(entry, *hash, key),
            _ => Outcome::Failed("internal: a duplicate key lost its original".into()),
        };
        finish(s, outcome, metrics);
    }
    drop(keys);
    for (s, ranges) in writes {
        let accepted = s.encoded.len() as u64;
        finish(s, Outcome::Ok(Ack { accepted, positions: ranges, duplicate: false }), metrics);
    }
}
