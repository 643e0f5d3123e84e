//! The append path: the only way events enter the master dataset.
//!
//! [`Appender`] owns the writable log and the idempotency-key journal together, and
//! [`Appender::commit`] is the one place where the protocol that keeps them consistent lives
//! (as redb allows writes only through a `WriteTransaction` that commits):
//!
//! 1. **plan**: a group's requests are answered from the journal if their key is known
//!    (a retry), and the others get their ranges from the log's current ends (appends are
//!    serialised by the journal's lock, so the plan is what the log will assign);
//! 2. **prepare**: the journal record of the group's new keys (ends before and after) is
//!    appended and fsync'd;
//! 3. **append**: every event of the group, one fsync per touched partition;
//! 4. **commit** the keys in memory — or, if the append failed, **abort** (remove the
//!    journal record; the log rolled itself back), or **poison** (stop every append until a
//!    restart, whose recovery keeps or rolls back the group as a whole) when the state on
//!    disk is no longer known.
//!
//! Unkeyed appends ([`Appender::append`]) take the same lock, so a journal record's offsets
//! always describe its own group. See [`crate::keys`] for the journal's recovery rules.

use lambdaflow_operators::Event;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::keys::{KeyEntry, KeyJournal, Range, KEYS_MAX_DEFAULT, KEY_RETENTION_DEFAULT};
use crate::log::{Log, LogConfig, Position, Staging};
use crate::sync::lock;

/// The stable partition of a key.
pub fn partition_of(key: u64, partitions: u32) -> u32 {
    assert!(partitions > 0, "a log has at least one partition");
    // splitmix64 finaliser: spreads sequential ids evenly.
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let z = z ^ (z >> 31);
    // The same answer as the remainder, without a division for the usual power-of-two counts.
    if partitions.is_power_of_two() {
        (z & u64::from(partitions - 1)) as u32
    } else {
        (z % u64::from(partitions)) as u32
    }
}

/// Events encoded for the log: each event's partition and its bytes, in one buffer.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    /// The concatenated payloads.
    pub bytes: Vec<u8>,
    /// Per event: partition and end offset of its payload in `bytes`.
    pub spans: Vec<(u32, usize)>,
}

impl Encoded {
    /// Encodes `events` for a log of `partitions` partitions.
    pub fn of<E: Event>(events: &[E], partitions: u32) -> Result<Encoded> {
        let mut out = Encoded { bytes: Vec::with_capacity(events.len() * 48), spans: Vec::with_capacity(events.len()) };
        for (i, e) in events.iter().enumerate() {
            bincode::serialize_into(&mut out.bytes, e).map_err(|err| Error::Internal(format!("event {i} does not encode: {err}")))?;
            out.spans.push((partition_of(e.partition_key(), partitions), out.bytes.len()));
        }
        Ok(out)
    }

    /// `(partition, payload)` per event, in order.
    pub fn records(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        let mut start = 0;
        self.spans.iter().map(move |&(p, end)| {
            let r = (p, &self.bytes[start..end]);
            start = end;
            r
        })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Per partition, the offsets `[from, to)` these events get when appended at `next`
    /// (the log's ends), advancing `next` past them.
    fn plan(&self, next: &mut [u64]) -> Vec<Range> {
        let mut counts = vec![0u64; next.len()];
        for &(p, _) in &self.spans {
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
}

/// One request of a group commit: its events and, if it has one, its idempotency key with
/// the hash of the body the key guards.
pub struct Write {
    /// The `Idempotency-Key` and the hash of the request body.
    pub key: Option<(String, u64)>,
    /// The request's events, encoded for the log.
    pub encoded: Encoded,
}

/// What became of one [`Write`] of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Durable: per partition, the offsets its events got, in input order.
    Appended(Vec<Range>),
    /// A retry of a request that is already durable: nothing was appended; its events and
    /// where they went the first time.
    Replayed {
        /// Events of the original request.
        events: u64,
        /// Where they went.
        ranges: Vec<Range>,
    },
    /// The key was used before for a different body; nothing was appended.
    KeyConflict(String),
    /// Nothing of the request is stored; why.
    Failed(String),
}

/// The outcome of [`Appender::commit`].
#[derive(Debug)]
pub struct Committed {
    /// One outcome per write, in the order given.
    pub outcomes: Vec<Written>,
    /// Whether the group reached the log (an append was attempted).
    pub appended: bool,
    /// Keys remembered after the group.
    pub keys: usize,
}

/// The writable master dataset: the log and its idempotency-key journal, appended to only
/// through [`Appender::commit`] and [`Appender::append`].
pub struct Appender {
    log: Arc<Log>,
    journal: Mutex<KeyJournal>,
}

impl Appender {
    /// Opens (or creates) the master dataset of data directory `dir` and its key journal,
    /// finishing any keyed group append a crash interrupted (see [`KeyJournal::open`]). Every
    /// command that opens a data directory goes through here, so no reader ever sees such a
    /// group.
    pub fn open_with_keys(dir: &Path, cfg: LogConfig, key_retention: Duration, max_keys: usize) -> Result<Appender> {
        let log = Log::open_or_create(&dir.join("log"), cfg)?;
        let (journal, log) = KeyJournal::open(dir, log, key_retention, max_keys)?;
        Ok(Appender { log: Arc::new(log), journal: Mutex::new(journal) })
    }

    /// As [`Appender::open_with_keys`], remembering keys for [`KEY_RETENTION_DEFAULT`], up to
    /// [`KEYS_MAX_DEFAULT`] of them.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<Appender> {
        Appender::open_with_keys(dir, cfg, KEY_RETENTION_DEFAULT, KEYS_MAX_DEFAULT)
    }

    /// The log, for reading (its ends, its records, its size).
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Idempotency keys remembered.
    pub fn keys(&self) -> usize {
        lock(&self.journal).len()
    }

    /// Why appends are refused until a restart, if they are.
    pub fn stopped(&self) -> Option<String> {
        lock(&self.journal).poisoned().map(str::to_string)
    }

    /// Appends `events` durably, unkeyed: returns once all are fsync'd (one group commit).
    /// Nothing is written if any event fails to encode.
    pub fn append<E: Event>(&self, events: &[E]) -> Result<Vec<Position>> {
        self.append_encoded(&Encoded::of(events, self.log.partitions())?)
    }

    /// As [`Appender::append`], for events already encoded for this log.
    pub fn append_encoded(&self, encoded: &Encoded) -> Result<Vec<Position>> {
        let records: Vec<(u32, &[u8])> = encoded.records().collect();
        self.append_records(&records)
    }

    /// Appends raw `(partition, payload)` records durably, unkeyed. The payloads are not
    /// checked against the job's event type: this is for tools and tests that need a record
    /// the job cannot decode.
    pub fn append_records(&self, records: &[(u32, &[u8])]) -> Result<Vec<Position>> {
        let journal = lock(&self.journal);
        if let Some(why) = journal.poisoned() {
            return Err(Error::Unavailable(format!("appends are stopped until a restart: {why}")));
        }
        Ok(self.log.append(records)?)
    }

    /// Commits a group of requests (see the module documentation): retries are answered
    /// from the journal, every other request's events are appended in one group commit with
    /// its key recorded first. Each write's outcome is returned in order.
    pub fn commit(&self, writes: &[Write]) -> Committed {
        let mut journal = lock(&self.journal);
        let start = self.log.end_offsets();
        let mut next = start.clone();
        let mut outcomes: Vec<Option<Written>> = vec![None; writes.len()];
        // Writes to append: index and planned ranges.
        let mut plan: Vec<(usize, Vec<Range>)> = Vec::new();
        // The same key twice in one group (a retry racing its original): answered like a
        // retry once the original is durable.
        let mut waiting: Vec<(usize, usize)> = Vec::new();
        let mut in_group: HashMap<&str, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if let Some((key, hash)) = &w.key {
                if let Some(entry) = journal.get(key) {
                    outcomes[i] = Some(replay(entry.body_hash, entry.events, &entry.ranges, *hash, key));
                    continue;
                }
                if let Some(&first) = in_group.get(key.as_str()) {
                    waiting.push((i, first));
                    continue;
                }
                in_group.insert(key, i);
            }
            plan.push((i, w.encoded.plan(&mut next)));
        }
        let mut appended = false;
        if !plan.is_empty() {
            let entries = entries_of(writes, &plan);
            match self.append_group(&mut journal, writes, &plan, start, next, &entries, &mut appended) {
                Ok(()) => {
                    journal.commit(entries.clone());
                    for (i, ranges) in plan {
                        outcomes[i] = Some(Written::Appended(ranges));
                    }
                    let by_key: HashMap<&str, &KeyEntry> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
                    for (i, first) in waiting {
                        let original = writes[first].key.as_ref().and_then(|(k, _)| by_key.get(k.as_str()));
                        outcomes[i] = Some(match (&writes[i].key, original) {
                            (Some((key, hash)), Some(entry)) => replay(entry.body_hash, entry.events, &entry.ranges, *hash, key),
                            _ => Written::Failed("internal: a duplicate key lost its original".into()),
                        });
                    }
                }
                Err(why) => {
                    for i in plan.into_iter().map(|(i, _)| i).chain(waiting.into_iter().map(|(i, _)| i)) {
                        outcomes[i] = Some(Written::Failed(why.clone()));
                    }
                }
            }
        }
        let outcomes = outcomes.into_iter().map(|o| o.expect("every write of a group gets an outcome")).collect();
        Committed { outcomes, appended, keys: journal.len() }
    }

    /// Steps 2 and 3 of the protocol, and the undo of a failure; returns why the group
    /// failed, with nothing of it stored (or ingest stopped until a restart decides).
    #[allow(clippy::too_many_arguments)]
    fn append_group(
        &self,
        journal: &mut MutexGuard<'_, KeyJournal>,
        writes: &[Write],
        plan: &[(usize, Vec<Range>)],
        start: Vec<u64>,
        end: Vec<u64>,
        entries: &[KeyEntry],
        appended: &mut bool,
    ) -> std::result::Result<(), String> {
        if let Some(why) = journal.poisoned() {
            return Err(format!("ingest is stopped until the service restarts ({why}); nothing of this request was stored"));
        }
        let prepared = if entries.is_empty() {
            None
        } else {
            Some(journal.prepare(start, end, entries).map_err(|e| format!("could not record the idempotency keys: {e}"))?)
        };
        let records: Vec<(u32, &[u8])> = plan.iter().flat_map(|(i, _)| writes[*i].encoded.records()).collect();
        *appended = true;
        match self.log.append(&records) {
            Ok(positions) if as_planned(writes, plan, &positions) => Ok(()),
            Ok(_) => {
                // Cannot happen while every append holds the journal's lock; if it does, the
                // journal no longer describes the log: stop, and let recovery decide.
                journal.poison("a group commit's positions differ from its journal record".into());
                Err("the append's positions differ from the plan; ingest is stopped: restart the service, then retry \
                     with the same Idempotency-Key (the restart keeps or rolls back this request as a whole)"
                    .into())
            }
            Err(e) if self.log.is_poisoned() => {
                // The log could not undo the partial append: keep the journal record, so the
                // restart rolls the group back as a whole.
                journal.poison(format!("the log could not undo a failed append: {e}"));
                Err(format!(
                    "append failed and could not be undone ({e}); ingest is stopped: restart the service, then retry \
                     with the same Idempotency-Key"
                ))
            }
            Err(e) => {
                let mut why = format!("append failed, nothing of the request is stored: {e}");
                if let Some(at) = prepared {
                    if let Err(e2) = journal.abort(at) {
                        why = format!(
                            "append failed ({e}) and removing its idempotency record failed too ({e2}); ingest is stopped: \
                             restart the service, then retry with the same Idempotency-Key"
                        );
                    }
                }
                Err(why)
            }
        }
    }
}

/// The journal entries of the keyed writes of `plan`.
fn entries_of(writes: &[Write], plan: &[(usize, Vec<Range>)]) -> Vec<KeyEntry> {
    let at = now_ms();
    plan.iter()
        .filter_map(|(i, ranges)| {
            let w = &writes[*i];
            w.key.as_ref().map(|(key, hash)| KeyEntry {
                key: key.clone(),
                body_hash: *hash,
                events: w.encoded.len() as u64,
                ranges: ranges.clone(),
                at_ms: at,
            })
        })
        .collect()
}

/// The answer to a retry of a durable request (`body_hash`, `events`, `ranges`) that
/// carries body hash `hash`.
fn replay(body_hash: u64, events: u64, ranges: &[Range], hash: u64, key: &str) -> Written {
    if body_hash == hash {
        Written::Replayed { events, ranges: ranges.to_vec() }
    } else {
        Written::KeyConflict(format!("Idempotency-Key `{key}` was used for a different request body; use a new key for a new request"))
    }
}

/// Whether `positions` (as the log assigned them) are exactly the planned ranges.
fn as_planned(writes: &[Write], plan: &[(usize, Vec<Range>)], positions: &[Position]) -> bool {
    let mut i = 0;
    for (w, ranges) in plan.iter().map(|(w, r)| (&writes[*w], r)) {
        let mut next: HashMap<u32, u64> = ranges.iter().map(|r| (r.partition, r.from)).collect();
        for &(p, _) in &w.encoded.spans {
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

/// A bulk append in progress, through the key journal: see [`Appender::bulk`].
pub struct Bulk<'a> {
    log: &'a Log,
    journal: MutexGuard<'a, KeyJournal>,
    staging: Staging<'a>,
}

impl Appender {
    /// Starts a bulk append: records are staged as compressed segments, invisible, with the
    /// journal's lock (and the log's append lock) held, and [`Bulk::publish`] makes all of
    /// them visible at once, or none (see the `bulk` module of the log): a crash at any
    /// moment leaves the log without any of them or with all of them. Other appends wait
    /// until the bulk append is published or dropped.
    pub fn bulk(&self) -> Result<Bulk<'_>> {
        let journal = lock(&self.journal);
        if let Some(why) = journal.poisoned() {
            return Err(Error::Unavailable(format!("appends are stopped until a restart: {why}")));
        }
        let staging = self.log.stage()?;
        Ok(Bulk { log: &self.log, journal, staging })
    }
}

impl Bulk<'_> {
    /// Number of partitions of the log.
    pub fn partitions(&self) -> u32 {
        self.staging.partitions()
    }

    /// Adds framed compressed blocks (see `crate::log::BlockBuf`) of `records` records to
    /// `partition`, after everything added before.
    pub(crate) fn push_blocks(&mut self, partition: u32, blocks: &[u8], records: u64) -> Result<()> {
        Ok(self.staging.push_blocks(partition, blocks, records)?)
    }

    /// Whether `key` is remembered: a retry of a bulk append that is already durable.
    pub fn known(&self, key: &str, hash: u64) -> Option<Written> {
        self.journal.get(key).map(|e| replay(e.body_hash, e.events, &e.ranges, hash, key))
    }

    /// Makes every staged record visible at once. With a key (and the hash of what it
    /// guards), the bulk append is recorded in the key journal first, as a group commit is:
    /// a retry with the same key then appends nothing and is answered
    /// [`Written::Replayed`], and the same key for other data is [`Written::KeyConflict`]
    /// (nothing stored). `events` is the number of records staged.
    pub fn publish(self, key: Option<(String, u64)>, events: u64) -> Result<Written> {
        let Bulk { log, mut journal, mut staging } = self;
        if staging.ends() == staging.start() {
            // Nothing to store, and no key to remember for it.
            staging.discard()?;
            return Ok(Written::Appended(Vec::new()));
        }
        if let Some((k, hash)) = &key {
            if let Some(e) = journal.get(k) {
                let answer = replay(e.body_hash, e.events, &e.ranges, *hash, k);
                staging.discard()?;
                return Ok(answer);
            }
        }
        if let Err(e) = staging.seal() {
            let _ = staging.discard();
            return Err(e.into());
        }
        crate::log::crash::point(crate::log::crash::Phase::Publish, || "staged segments fsync'd".into());
        let start = staging.start().to_vec();
        let end = staging.ends();
        let ranges: Vec<Range> =
            (0..start.len()).filter(|&p| end[p] > start[p]).map(|p| Range { partition: p as u32, from: start[p], to: end[p] }).collect();
        let entries: Vec<KeyEntry> =
            key.into_iter().map(|(key, body_hash)| KeyEntry { key, body_hash, events, ranges: ranges.clone(), at_ms: now_ms() }).collect();
        let prepared = if entries.is_empty() {
            None
        } else {
            match journal.prepare(start, end, &entries) {
                Ok(at) => {
                    crate::log::crash::point(crate::log::crash::Phase::Publish, || "key journal record fsync'd".into());
                    Some(at)
                }
                Err(e) => {
                    let _ = staging.discard();
                    return Err(e);
                }
            }
        };
        match staging.publish() {
            Ok(_) => {
                journal.commit(entries);
                Ok(Written::Appended(ranges))
            }
            Err(e) if log.is_poisoned() => {
                // Keep the journal record: the reopen keeps or undoes the publication whole.
                journal.poison(format!("a bulk append's publication failed half-way: {e}"));
                Err(e.into())
            }
            Err(e) => {
                if let Some(at) = prepared {
                    journal.abort(at)?;
                }
                Err(e.into())
            }
        }
    }
}

/// Appends from an external source (the Kafka connector, [`crate::connect`]): the source's
/// positions are committed in the same journal record as the events read up to them.
impl Appender {
    /// Appends `encoded` and records `positions` (`(name, next offset)`, e.g.
    /// `("kafka/orders/0", 1042)`) in one group commit of the protocol above: the journal
    /// record holding the positions is fsync'd before the events are appended, so after any
    /// crash either both the events and their positions are kept or neither is. Returns
    /// where the events went. `encoded` may be empty (only positions move, e.g. past records
    /// that went to the dead letters).
    pub fn commit_from_source(&self, encoded: Encoded, positions: &[(String, u64)]) -> Result<Vec<Range>> {
        let mut journal = lock(&self.journal);
        let start = self.log.end_offsets();
        let mut next = start.clone();
        let ranges = encoded.plan(&mut next);
        let at_ms = now_ms();
        let entries: Vec<KeyEntry> = positions
            .iter()
            .map(|(name, offset)| KeyEntry { key: crate::keys::source_key(name), body_hash: *offset, events: 0, ranges: Vec::new(), at_ms })
            .collect();
        let writes = [Write { key: None, encoded }];
        let plan = [(0, ranges.clone())];
        let mut appended = false;
        self.append_group(&mut journal, &writes, &plan, start, next, &entries, &mut appended).map_err(Error::Unavailable)?;
        journal.commit(entries);
        Ok(ranges)
    }

    /// The source positions committed by [`Appender::commit_from_source`] whose name starts
    /// with `prefix`: `(name, next offset)`, sorted by name.
    pub fn source_positions(&self, prefix: &str) -> Vec<(String, u64)> {
        lock(&self.journal).sources(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    // Proves the partition of a key is what it always was (the splitmix64 finaliser's
    // remainder), for power-of-two counts (the mask) and others, including fixed examples:
    // existing logs keep each key in its partition.
    #[test]
    fn partition_of_is_stable() {
        let reference = |key: u64, partitions: u32| {
            let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % u64::from(partitions)) as u32
        };
        let mut key = 1u64;
        for _ in 0..10_000 {
            key = key.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            for partitions in [1, 2, 3, 4, 5, 7, 8, 16, 64, 100, 1 << 31] {
                assert_eq!(partition_of(key, partitions), reference(key, partitions), "key {key}, {partitions} partitions");
            }
        }
        assert_eq!((0..8).map(|k| partition_of(k, 4)).collect::<Vec<_>>(), (0..8).map(|k| reference(k, 4)).collect::<Vec<_>>());
    }

    fn open(dir: &Path) -> Appender {
        Appender::open_with_keys(dir, LogConfig { partitions: 2, segment_bytes: 1 << 20 }, Duration::from_secs(3600), 1000).expect("open")
    }

    fn write(key: Option<&str>, hash: u64, records: &[(u32, &[u8])]) -> Write {
        let mut encoded = Encoded::default();
        for (p, payload) in records {
            encoded.bytes.extend_from_slice(payload);
            encoded.spans.push((*p, encoded.bytes.len()));
        }
        Write { key: key.map(|k| (k.to_string(), hash)), encoded }
    }

    // Proves a group commit appends new requests once, answers a retry (in a later group
    // and in the same group) from the journal without appending, refuses a key reused for
    // another body, and that the keys survive a reopen.
    #[test]
    fn group_commit_protocol() {
        let dir = TempDir::new("append-protocol");
        {
            let a = open(dir.path());
            let c = a.commit(&[
                write(Some("k1"), 1, &[(0, b"a"), (1, b"b")]),
                write(None, 0, &[(0, b"c")]),
                write(Some("k1"), 1, &[(0, b"a"), (1, b"b")]),
            ]);
            let first = vec![Range { partition: 0, from: 0, to: 1 }, Range { partition: 1, from: 0, to: 1 }];
            assert_eq!(c.outcomes[0], Written::Appended(first.clone()));
            assert_eq!(c.outcomes[1], Written::Appended(vec![Range { partition: 0, from: 1, to: 2 }]));
            assert_eq!(c.outcomes[2], Written::Replayed { events: 2, ranges: first.clone() }, "same key in the same group");
            assert!(c.appended);
            assert_eq!(a.log().end_offsets(), vec![2, 1]);
            let c = a.commit(&[write(Some("k1"), 1, &[(0, b"a"), (1, b"b")]), write(Some("k1"), 2, &[(0, b"x")])]);
            assert_eq!(c.outcomes[0], Written::Replayed { events: 2, ranges: first });
            assert!(matches!(c.outcomes[1], Written::KeyConflict(_)));
            assert!(!c.appended, "a group of retries appends nothing");
            assert_eq!(a.log().end_offsets(), vec![2, 1]);
        }
        let a = open(dir.path());
        assert_eq!(a.keys(), 1);
        let c = a.commit(&[write(Some("k1"), 1, &[(0, b"a"), (1, b"b")])]);
        assert!(matches!(c.outcomes[0], Written::Replayed { .. }), "keys survive a reopen");
        assert_eq!(a.log().end_offsets(), vec![2, 1]);
    }

    /// Stages `records` (partition, payload) into `bulk` as compressed blocks.
    fn stage(bulk: &mut Bulk<'_>, records: &[(u32, &[u8])]) {
        for &(p, payload) in records {
            let mut b = crate::log::BlockBuf::default();
            b.push(payload);
            let mut out = Vec::new();
            b.flush_into(&mut out, &mut crate::log::Zstd::default()).expect("flush");
            bulk.push_blocks(p, &out, 1).expect("push");
        }
    }

    // Proves a bulk append is invisible until published, then all there; that a retry with
    // its key appends nothing (answered as a replay), the key used for other data is a
    // conflict storing nothing, a dropped bulk append stores nothing, an empty one keeps no
    // key, and that the key survives a reopen.
    #[test]
    fn bulk_publish_protocol() {
        let dir = TempDir::new("append-bulk");
        {
            let a = open(dir.path());
            a.append_records(&[(0, b"old")]).expect("append");
            let mut bulk = a.bulk().expect("bulk");
            stage(&mut bulk, &[(0, b"a"), (1, b"b"), (0, b"c")]);
            let w = bulk.publish(Some(("k".into(), 7)), 3).expect("publish");
            assert_eq!(w, Written::Appended(vec![Range { partition: 0, from: 1, to: 3 }, Range { partition: 1, from: 0, to: 1 }]));
            let mut got = Vec::new();
            a.log()
                .read(0, 0, 10, |_, p| {
                    got.push(p.to_vec());
                    Ok::<(), crate::log::LogError>(())
                })
                .expect("read");
            assert_eq!(got, vec![b"old".to_vec(), b"a".to_vec(), b"c".to_vec()]);
            let mut bulk = a.bulk().expect("bulk");
            stage(&mut bulk, &[(0, b"a"), (1, b"b"), (0, b"c")]);
            assert!(matches!(bulk.publish(Some(("k".into(), 7)), 3).expect("publish"), Written::Replayed { events: 3, .. }));
            let mut bulk = a.bulk().expect("bulk");
            stage(&mut bulk, &[(0, b"x")]);
            assert!(matches!(bulk.publish(Some(("k".into(), 8)), 1).expect("publish"), Written::KeyConflict(_)));
            let mut bulk = a.bulk().expect("bulk");
            stage(&mut bulk, &[(1, b"y")]);
            drop(bulk);
            assert!(!dir.path().join("log").join("staging").exists(), "a dropped bulk append leaves no staging");
            let bulk = a.bulk().expect("bulk");
            assert_eq!(bulk.publish(Some(("empty".into(), 1)), 0).expect("publish"), Written::Appended(Vec::new()));
            assert_eq!(a.log().end_offsets(), vec![3, 1]);
            assert_eq!(a.keys(), 1);
            a.append_records(&[(1, b"after")]).expect("appends go on in the new active segment");
        }
        let a = open(dir.path());
        assert_eq!(a.log().end_offsets(), vec![3, 2]);
        assert_eq!(a.keys(), 1, "the bulk key survives a reopen");
        assert_eq!(a.log().verify().expect("verify").records, vec![3, 2]);
    }

    // Proves a group whose append the log refuses stores nothing, keeps no key, and leaves
    // ingest running.
    #[test]
    fn refused_append_stores_nothing() {
        let dir = TempDir::new("append-refused");
        let a = open(dir.path());
        let big = vec![0u8; crate::log::MAX_PAYLOAD_BYTES + 1];
        let c = a.commit(&[write(Some("k"), 1, &[(0, b"ok")]), write(None, 0, &[(1, &big)])]);
        assert!(c.outcomes.iter().all(|o| matches!(o, Written::Failed(_))), "{:?}", c.outcomes);
        assert_eq!(a.log().end_offsets(), vec![0, 0]);
        assert_eq!(a.keys(), 0);
        assert!(a.stopped().is_none());
        let c = a.commit(&[write(Some("k"), 1, &[(0, b"ok")])]);
        assert!(matches!(c.outcomes[0], Written::Appended(_)), "the key is free again: {:?}", c.outcomes);
    }
}
