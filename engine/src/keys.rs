//! Idempotency keys, durable with the events they guard.
//!
//! `DIR/keys/journal` is a sequence of framed records (`[len u32 LE][crc32c u32 LE][bincode]`,
//! the CRC over the length bytes and the payload), one per group commit that carried at
//! least one keyed request. A record holds the log's end offsets before and after the
//! group's append and, for each key, a hash of the request body and the positions its
//! events got.
//!
//! # Order of writes (why a key is never lost and never lies)
//!
//! 1. The journal record is appended and fsync'd *before* the group's events go to the log.
//! 2. The events are appended to the log (fsync per partition); only then is anything
//!    acknowledged.
//!
//! A crash between 1 and the end of 2 leaves a journal record whose append is incomplete:
//! some partition ends before the record's `end`. [`KeyJournal::open`] finds that (only the
//! last record can be incomplete: group commits are serialised) and rolls the log back to
//! the record's `start` — those events were never acknowledged — and then drops the record.
//! So after recovery every key in the journal names events that are all in the log, and
//! every keyed append that is in the log has its key in the journal. An append that fails
//! with an error (the log rolls itself back) has its journal record removed the same way.
//!
//! Keys are kept for a retention period (24 h by default) and up to a maximum number; the
//! journal is compacted (rewritten atomically with only live keys) when it has grown to
//! several times the live size.
//!
//! The same records carry *source positions* (entries named with [`SOURCE_PREFIX`]): how far
//! an external source such as a Kafka partition has been read into the log. They are written
//! in the record of the group that appended the source's events, so the recovery above keeps
//! or drops events and position together; they never expire and survive compaction.

use crate::clock::now_ms;
use crate::durable::{self, frame, frame::RECORD_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::log::Log;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long idempotency keys are remembered unless configured otherwise (24 h).
pub const KEY_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// At most this many idempotency keys are remembered unless configured otherwise.
pub const KEYS_MAX_DEFAULT: usize = 1_000_000;

/// The longest idempotency key accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 255;

/// The prefix of a *source position*: a journal entry that records how far an external
/// source (a Kafka partition) has been read into the log, committed in the same record as
/// the events read ([`crate::append::Appender::commit_from_source`]). Its `body_hash` holds
/// the source's next offset. The prefix starts with a control character, which no
/// client's key may hold ([`validate_key`]), and such entries never expire and do not
/// count as idempotency keys.
pub(crate) const SOURCE_PREFIX: &str = "\u{1}source:";

/// The journal key of source position `name` (e.g. `kafka/orders/0`).
pub(crate) fn source_key(name: &str) -> String {
    format!("{SOURCE_PREFIX}{name}")
}

/// Where one request's events went: per partition, the offsets `[from, to)`, holding the
/// request's events of that partition in input order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The partition.
    pub partition: u32,
    /// First offset.
    pub from: u64,
    /// One past the last offset.
    pub to: u64,
}

/// A remembered key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The client's key.
    pub key: String,
    /// Hash of the request body, to tell a retry from a different request reusing the key.
    pub body_hash: u64,
    /// Events in the request.
    pub events: u64,
    /// Where they went.
    pub ranges: Vec<Range>,
    /// When it was first acknowledged, ms since the Unix epoch.
    pub at_ms: u64,
}

/// What the journal keeps in memory for a remembered key: enough to answer a retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    /// Hash of the request body the key guards.
    pub body_hash: u64,
    /// Events in the request.
    pub events: u64,
    /// When it was first acknowledged, ms since the Unix epoch.
    pub at_ms: u64,
    /// Where its events went.
    pub ranges: Box<[Range]>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Log end offsets before and after the group's append; `None` for a compacted record.
    start: Option<Vec<u64>>,
    end: Option<Vec<u64>>,
    entries: Vec<KeyEntry>,
}

/// Checks a client-supplied key: 1 to [`KEY_BYTES_MAX`] visible ASCII characters.
pub(crate) fn validate_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(format!("Idempotency-Key must be 1 to {KEY_BYTES_MAX} characters, got {}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("Idempotency-Key may hold visible ASCII characters only, found {c:?}"));
    }
    Ok(())
}

/// A 64-bit hash of a request body (FNV-1a over little-endian 8-byte words, the last one
/// zero-padded, folded with CRC-32C; not cryptographic). Also the fingerprint of a local
/// input's chunks, its default idempotency key: it must not change. Whole words are read
/// without copying each one.
pub(crate) fn body_hash(body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = body.chunks_exact(8);
    for w in &mut words {
        h ^= u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h ^= u64::from_le_bytes(w);
        h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    h ^ ((crc32c::crc32c(body) as u64) << 32) ^ body.len() as u64
}

/// The journal of idempotency keys of one data directory.
pub(crate) struct KeyJournal {
    path: PathBuf,
    file: File,
    len: u64,
    /// The remembered keys. The key text is shared with `order` (one allocation per key),
    /// and an entry holds only what answers a retry: a few hundred bytes per key.
    keys: HashMap<Arc<str>, Remembered>,
    /// Keys in acknowledgement order, for expiry.
    order: VecDeque<(u64, Arc<str>)>,
    retention: Duration,
    max_keys: usize,
    /// Bytes of the journal when it was last compacted (or opened).
    base_len: u64,
    /// Set when the journal's state on disk is no longer known (an I/O error while writing,
    /// truncating or compacting it): no further appends until a restart recovers.
    poisoned: Option<String>,
    /// Source positions remembered (entries of [`SOURCE_PREFIX`], also in `keys`).
    sources: usize,
}

/// The journal's framing: the log's record framing, without the log's payload limit (a
/// compaction writes every live key in one record, far more than 16 MiB at a million keys).
fn frame(payload: &[u8]) -> Vec<u8> {
    let len_bytes = u32::try_from(payload.len()).expect("a journal record is under 4 GiB").to_le_bytes();
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame::record_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The refusal for a damaged journal record at byte `pos`.
fn damaged(path: &Path, pos: usize, why: &str) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        detail: format!(
            "idempotency key journal record at byte {pos} is damaged ({why}); forgetting the keys after it would let \
             retries append twice. Move the file aside to start without remembered keys"
        ),
    }
}

/// What the search for a valid record after a bad one found.
enum After {
    /// A whole record that passes its checksum and decodes, at this byte offset.
    Record(usize),
    /// The search ran out of budget before it could rule one out.
    Undecided,
    /// Nothing valid follows.
    Nothing,
}

/// Looks for a whole, checksum-valid record that decodes as a journal record at or after
/// byte `from` (within a budget of bytes hashed).
fn valid_frame_after(bytes: &[u8], from: usize) -> After {
    const BUDGET: usize = 256 << 20;
    let mut spent = 0usize;
    for q in from..bytes.len().saturating_sub(7) {
        let len = u32::from_le_bytes([bytes[q], bytes[q + 1], bytes[q + 2], bytes[q + 3]]) as usize;
        if len == 0 || bytes.len() - q - 8 < len {
            continue;
        }
        spent += len;
        if spent > BUDGET {
            return After::Undecided;
        }
        let crc = u32::from_le_bytes([bytes[q + 4], bytes[q + 5], bytes[q + 6], bytes[q + 7]]);
        let payload = &bytes[q + 8..q + 8 + len];
        if frame::record_crc([bytes[q], bytes[q + 1], bytes[q + 2], bytes[q + 3]], payload) == crc
            && bincode::deserialize::<Record>(payload).is_ok()
        {
            return After::Record(q);
        }
    }
    After::Nothing
}

/// The compaction's temporary file beside the journal at `path`.
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

fn sync_dir(dir: &Path) -> Result<()> {
    Ok(durable::sync_dir(dir)?)
}

/// Decodes the journal's records from `bytes`; returns them (with their byte offsets) and
/// the end of the last valid one. A torn or bad tail is a group whose append never started
/// (truncated); damage followed by valid records is refused.
fn decode_records(path: &Path, bytes: &[u8], log: &Log) -> Result<(Vec<(u64, Record)>, u64)> {
    let mut records: Vec<(u64, Record)> = Vec::new();
    let mut pos = 0usize;
    let mut valid_end = 0u64;
    while pos < bytes.len() {
        let bad = |detail: String| -> String { format!("{} at byte {pos}: {detail}", path.display()) };
        if bytes.len() - pos < 8 {
            eprintln!("lambdaflow keys: {}; truncating the torn tail", bad("torn record header".into()));
            break;
        }
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]);
        if bytes.len() - pos - 8 < len {
            // A record longer than the rest of the file is a torn write only if nothing
            // valid follows; a damaged length field in the middle is damage.
            match valid_frame_after(bytes, pos + 1) {
                After::Record(at) => {
                    let why = format!("its length field ({len}) runs past the end of the file, but a valid record follows at byte {at}");
                    return Err(damaged(path, pos, &why));
                }
                After::Undecided => {
                    let why = format!(
                        "its length field ({len}) runs past the end of the file, and the {} bytes after it are too many to rule \
                         out a valid record",
                        bytes.len() - pos
                    );
                    return Err(damaged(path, pos, &why));
                }
                After::Nothing => {}
            }
            eprintln!("lambdaflow keys: {}; truncating the torn tail", bad("torn record".into()));
            break;
        }
        let payload = &bytes[pos + 8..pos + 8 + len];
        let actual = frame::record_crc([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]], payload);
        let record: Option<Record> = if actual == crc { bincode::deserialize(payload).ok() } else { None };
        let Some(record) = record else {
            // A bad record followed by more data is damage, not a torn write: refuse
            // rather than forget keys (a retry would then append twice).
            if pos + 8 + len < bytes.len() {
                return Err(damaged(path, pos, "it fails its checksum and more records follow"));
            }
            // A whole last record that fails its checksum is a torn write only if its
            // group never reached the log; if the log holds the group, it is damage.
            if let Ok(Record { start: Some(start), end: Some(end), .. }) = bincode::deserialize::<Record>(payload) {
                let ends = log.end_offsets();
                // A group of its own: it starts where the previous keyed group ended or later.
                let new_group = match records.iter().rev().find_map(|(_, r)| r.end.as_ref()) {
                    Some(prev) => prev.len() == start.len() && start.iter().zip(prev).all(|(s, p)| s >= p),
                    None => true,
                };
                let in_log = end.len() == ends.len() && ends.iter().zip(&end).all(|(e, want)| e >= want);
                if new_group && in_log && start.iter().zip(&end).any(|(s, e)| e > s) {
                    return Err(damaged(path, pos, "it fails its checksum, but the log holds its whole group"));
                }
            }
            eprintln!("lambdaflow keys: {}; truncating the torn tail", bad("checksum mismatch in the last record".into()));
            break;
        };
        records.push((pos as u64, record));
        pos += 8 + len;
        valid_end = pos as u64;
    }
    Ok((records, valid_end))
}

/// Finishes a group append a crash interrupted: only the last record can belong to one;
/// if the log holds part of its group, the log is rolled back to before it (those events
/// were never acknowledged) and the record dropped. Returns the log to use from now on, the
/// records left, and the journal's valid end.
fn finish_interrupted(
    path: &Path,
    log: Log,
    mut records: Vec<(u64, Record)>,
    mut valid_end: u64,
) -> Result<(Log, Vec<(u64, Record)>, u64)> {
    let mut log = log;
    // Only the last record can belong to an interrupted append.
    if let Some((at, last)) = records.last() {
        if let (Some(start), Some(end)) = (&last.start, &last.end) {
            let ends = log.end_offsets();
            if start.len() != ends.len() || end.len() != ends.len() {
                return Err(Error::Inconsistent(format!(
                    "{}: the last record names {} partitions, the log has {}",
                    path.display(),
                    end.len(),
                    ends.len()
                )));
            }
            let complete = ends.iter().zip(end).all(|(e, want)| e >= want);
            // An interrupted group leaves every partition between its start and its end.
            // Anything else means records were lost for another reason (damage, a manual
            // truncation): rolling back would delete acknowledged events, so refuse.
            let interrupted = ends.iter().zip(start).zip(end).all(|((e, s), want)| s <= e && e <= want);
            if !complete && !interrupted {
                return Err(Error::Inconsistent(format!(
                    "{}: the last keyed group spans log offsets {start:?}..{end:?}, but the log ends at {ends:?}: \
                         records before the group are missing, which no crash explains (see `verify`); refusing to start",
                    path.display()
                )));
            }
            if !complete {
                eprintln!(
                    "lambdaflow keys: the last group append was interrupted (log ends {ends:?}, the group would end at {end:?}); \
                     rolling the log back to {start:?}: those events were never acknowledged"
                );
                log = log.rollback_to(start)?;
                valid_end = *at;
                records.pop();
            }
        }
    }
    Ok((log, records, valid_end))
}

impl KeyJournal {
    /// Opens (or creates) the journal of data directory `dir`, and finishes any group append
    /// a crash interrupted: the log is rolled back to before it (it was never acknowledged).
    /// Returns the journal and the log to use from now on.
    pub(crate) fn open(dir: &Path, log: Log, retention: Duration, max_keys: usize) -> Result<(KeyJournal, Log)> {
        let kdir = dir.join("keys");
        std::fs::create_dir_all(&kdir).map_err(Error::io(&kdir, "create directory"))?;
        let path = kdir.join("journal");
        // A compaction that crashed or failed before its rename left only garbage: the
        // journal itself is whole (the rename is atomic). Free the space now.
        if durable::remove_if_exists(&tmp_path(&path))? {
            eprintln!("lambdaflow keys: removed {} left by an interrupted compaction", tmp_path(&path).display());
        }
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(Error::io(&path, "read"))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, "open")(e)),
        }
        let (records, valid_end) = decode_records(&path, &bytes, &log)?;
        let (log, records, valid_end) = finish_interrupted(&path, log, records, valid_end)?;
        if valid_end < bytes.len() as u64 {
            let f = OpenOptions::new().write(true).open(&path).map_err(Error::io(&path, "open"))?;
            f.set_len(valid_end).and_then(|()| f.sync_all()).map_err(Error::io(&path, "truncate"))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(Error::io(&path, "open"))?;
        sync_dir(&kdir)?;
        let mut journal = KeyJournal {
            path,
            file,
            len: valid_end,
            keys: HashMap::new(),
            order: VecDeque::new(),
            retention,
            max_keys: max_keys.max(1),
            base_len: valid_end,
            poisoned: None,
            sources: 0,
        };
        for (_, r) in records {
            for e in r.entries {
                journal.remember(e);
            }
        }
        journal.expire();
        Ok((journal, log))
    }

    /// The entry for `key`, if it is remembered.
    pub(crate) fn get(&self, key: &str) -> Option<&Remembered> {
        self.keys.get(key)
    }

    /// Number of idempotency keys remembered (source positions are not counted).
    pub(crate) fn len(&self) -> usize {
        self.keys.len() - self.sources
    }

    /// Whether no idempotency key is remembered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The source positions remembered whose name starts with `prefix`: `(name, next
    /// offset)`, sorted by name.
    pub(crate) fn sources(&self, prefix: &str) -> Vec<(String, u64)> {
        let full = source_key(prefix);
        let mut out: Vec<(String, u64)> = self
            .keys
            .iter()
            .filter(|(k, _)| k.starts_with(&full))
            .map(|(k, r)| (k[SOURCE_PREFIX.len()..].to_string(), r.body_hash))
            .collect();
        out.sort();
        out
    }

    /// Why the journal refuses appends, if it does (see [`KeyJournal::poison`]).
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Refuses every further append until a restart, with `why`. Called when the journal or
    /// the log may not be in the state the journal believes: the next open recovers from
    /// what is on disk (an incomplete last group is rolled back).
    pub(crate) fn poison(&mut self, why: String) {
        eprintln!("lambdaflow keys: refusing further appends until a restart: {why}");
        self.poisoned.get_or_insert(why);
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Unavailable(format!("ingest is stopped until a restart: {why}"))),
            None => Ok(()),
        }
    }

    /// Writes (and fsyncs) the record of a group append about to happen. Call
    /// [`KeyJournal::commit`] once the append is durable, or [`KeyJournal::abort`] if it failed.
    /// Any I/O error poisons the journal: what reached the disk is then unknown, and only
    /// the recovery at the next open can tell.
    pub(crate) fn prepare(&mut self, start: Vec<u64>, end: Vec<u64>, entries: &[KeyEntry]) -> Result<u64> {
        self.check()?;
        let payload = bincode::serialize(&Record { start: Some(start), end: Some(end), entries: entries.to_vec() })
            .map_err(|e| Error::Internal(format!("idempotency record does not encode: {e}")))?;
        let before = self.len;
        let framed = frame(&payload);
        if let Err(e) = self.file.write_all(&framed).and_then(|()| self.file.sync_data()) {
            let err = Error::io(&self.path, "append to idempotency journal")(e);
            self.poison(err.to_string());
            return Err(err);
        }
        self.len += framed.len() as u64;
        Ok(before)
    }

    /// Remembers the entries of a group whose append is durable.
    pub(crate) fn commit(&mut self, entries: Vec<KeyEntry>) {
        for e in entries {
            self.remember(e);
        }
        self.expire();
        if self.len > (64 << 20).max(self.base_len * 4) {
            if let Err(e) = self.compact() {
                self.poison(format!("compacting the idempotency journal failed: {e}"));
            }
        }
    }

    /// Removes the record written by [`KeyJournal::prepare`] (whose append failed and was
    /// rolled back by the log). A failure poisons the journal.
    pub(crate) fn abort(&mut self, prepared_at: u64) -> Result<()> {
        self.check()?;
        let res = self.file.set_len(prepared_at).and_then(|()| self.file.sync_all());
        if let Err(e) = res {
            let err = Error::io(&self.path, "truncate idempotency journal")(e);
            self.poison(err.to_string());
            return Err(err);
        }
        self.len = prepared_at;
        Ok(())
    }

    fn remember(&mut self, e: KeyEntry) {
        let key: Arc<str> = Arc::from(e.key);
        let source = key.starts_with(SOURCE_PREFIX);
        if !source {
            // Source positions never expire: they are not queued for expiry.
            self.order.push_back((e.at_ms, key.clone()));
        }
        let r = Remembered { body_hash: e.body_hash, events: e.events, at_ms: e.at_ms, ranges: e.ranges.into_boxed_slice() };
        if self.keys.insert(key, r).is_none() && source {
            self.sources += 1;
        }
    }

    fn expire(&mut self) {
        let horizon = now_ms().saturating_sub(self.retention.as_millis() as u64);
        while let Some((at, key)) = self.order.front() {
            if *at >= horizon && self.len() <= self.max_keys {
                break;
            }
            // Only drop the entry if this queue slot is its latest one.
            if self.keys.get(key).is_some_and(|e| e.at_ms == *at) {
                self.keys.remove(key);
            }
            self.order.pop_front();
        }
    }

    /// Rewrites the journal with only the live keys: tmp file, fsync, rename, fsync dir.
    fn compact(&mut self) -> Result<()> {
        let mut entries: Vec<KeyEntry> = self
            .keys
            .iter()
            .map(|(key, r)| KeyEntry {
                key: key.to_string(),
                body_hash: r.body_hash,
                events: r.events,
                ranges: r.ranges.to_vec(),
                at_ms: r.at_ms,
            })
            .collect();
        entries.sort_by_key(|e| e.at_ms);
        let payload = bincode::serialize(&Record { start: None, end: None, entries })
            .map_err(|e| Error::Internal(format!("idempotency record does not encode: {e}")))?;
        let framed = frame(&payload);
        // On failure the temporary file is removed (a failed compaction on a full disk
        // must not keep the disk full), and the old journal stays in place.
        durable::replace(&self.path, &tmp_path(&self.path), &framed)?;
        // From here on the old handle points at the replaced file: switch first.
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(Error::io(&self.path, "open"))?;
        self.len = framed.len() as u64;
        self.base_len = self.len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogConfig;
    use crate::testing::TempDir;

    fn entry(key: &str, p: u32, from: u64, to: u64) -> KeyEntry {
        KeyEntry { key: key.into(), body_hash: 7, events: to - from, ranges: vec![Range { partition: p, from, to }], at_ms: now_ms() }
    }

    fn open(dir: &Path) -> (KeyJournal, Log) {
        let log = Log::open_or_create(&dir.join("log"), LogConfig { partitions: 2, segment_bytes: 1 << 20 }).expect("log");
        KeyJournal::open(dir, log, Duration::from_secs(3600), 1000).expect("journal")
    }

    // Proves a journal record larger than the log's payload limit (a compaction of ~200k
    // keys) is framed and read back, instead of tripping the log's limit.
    #[test]
    fn records_beyond_the_logs_payload_limit() {
        let big = vec![7u8; crate::log::MAX_PAYLOAD_BYTES + 1];
        let framed = frame(&big);
        assert_eq!(framed.len(), RECORD_HEADER_BYTES + big.len());
        let len = u32::from_le_bytes(framed[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(framed[4..8].try_into().expect("4 bytes"));
        assert_eq!(len, big.len());
        assert_eq!(crc, frame::record_crc(framed[..4].try_into().expect("4 bytes"), &big));
    }

    // Proves a compaction's temporary file left by a crash (or a failed compaction on a full
    // disk) is removed when the journal is opened, and the journal's keys are intact.
    #[test]
    fn stale_compaction_tmp_is_removed_at_open() {
        let dir = TempDir::new("keys-stale-tmp");
        {
            let (mut j, log) = open(dir.path());
            let e = entry("a", 0, 0, 1);
            j.prepare(vec![0, 0], vec![1, 0], std::slice::from_ref(&e)).expect("prepare");
            log.append(&[(0, b"x")]).expect("append");
            j.commit(vec![e]);
        }
        let tmp = dir.path().join("keys").join("journal.tmp");
        std::fs::write(&tmp, vec![0u8; 4096]).expect("write a leftover");
        let (j, _log) = open(dir.path());
        assert!(!tmp.exists(), "the leftover compaction file must be removed at open");
        assert!(j.get("a").is_some());
    }

    // Proves a committed key survives a reopen with its positions.
    #[test]
    fn committed_keys_survive_reopen() {
        let dir = TempDir::new("keys-reopen");
        {
            let (mut j, log) = open(dir.path());
            let e = entry("a", 0, 0, 2);
            j.prepare(vec![0, 0], vec![2, 0], std::slice::from_ref(&e)).expect("prepare");
            log.append(&[(0, b"x"), (0, b"y")]).expect("append");
            j.commit(vec![e]);
        }
        let (j, log) = open(dir.path());
        assert_eq!(log.end_offsets(), vec![2, 0]);
        assert_eq!(j.get("a").map(|e| e.ranges.to_vec()), Some(vec![Range { partition: 0, from: 0, to: 2 }]));
    }

    // Proves a group whose append was interrupted (journal written, log append partial) is
    // rolled back at the next open: the log loses the half-written group and the key is
    // forgotten, so a retry appends it again exactly once.
    #[test]
    fn interrupted_group_is_rolled_back() {
        let dir = TempDir::new("keys-interrupted");
        {
            let (mut j, log) = open(dir.path());
            log.append(&[(0, b"before")]).expect("append");
            // The group would put 2 events in partition 0 and 1 in partition 1, but only
            // partition 0's reached the disk before the crash.
            j.prepare(vec![1, 0], vec![3, 1], &[entry("k", 0, 1, 3)]).expect("prepare");
            log.append(&[(0, b"x"), (0, b"y")]).expect("append");
        }
        let (j, log) = open(dir.path());
        assert_eq!(log.end_offsets(), vec![1, 0], "the partial group is gone, the earlier event stays");
        assert!(j.get("k").is_none());
        drop(j);
        let (j, log) = open(dir.path());
        assert_eq!(log.end_offsets(), vec![1, 0]);
        assert!(j.is_empty());
    }

    // Proves recovery refuses to roll back when the log ends *before* the last group's start
    // in some partition (records lost for a reason no crash explains): a rollback would
    // delete acknowledged events of the other partitions.
    #[test]
    fn missing_records_before_the_group_are_refused() {
        let dir = TempDir::new("keys-missing");
        {
            let (mut j, log) = open(dir.path());
            log.append(&[(0, b"a"), (1, b"b"), (1, b"c")]).expect("append");
            j.prepare(vec![1, 2], vec![2, 3], &[entry("k", 0, 1, 2)]).expect("prepare");
        }
        // Partition 1 lost a record from before the group (as if truncated by hand).
        let log = Log::open(&dir.path().join("log")).expect("log");
        let log = log.rollback_to(&[1, 1]).expect("simulate loss");
        let err = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 1000).err().expect("refused");
        assert!(err.to_string().contains("no crash explains"), "{err}");
        assert_eq!(Log::open(&dir.path().join("log")).expect("log").end_offsets(), vec![1, 1], "nothing deleted");
    }

    // Proves a failed journal write poisons the journal: later prepares are refused.
    #[test]
    fn poisoned_journal_refuses() {
        let dir = TempDir::new("keys-poison");
        let (mut j, _log) = open(dir.path());
        j.poison("disk on fire".into());
        let err = j.prepare(vec![0, 0], vec![1, 0], &[entry("k", 0, 0, 1)]).expect_err("refused");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(j.abort(0).is_err());
    }

    // Proves a torn journal tail is truncated, and damage followed by more records refused.
    #[test]
    fn torn_tail_and_damage() {
        let dir = TempDir::new("keys-torn");
        {
            let (mut j, log) = open(dir.path());
            for (i, k) in ["a", "b"].iter().enumerate() {
                let e = entry(k, 1, i as u64, i as u64 + 1);
                j.prepare(vec![0, i as u64], vec![0, i as u64 + 1], std::slice::from_ref(&e)).expect("prepare");
                log.append(&[(1, b"v")]).expect("append");
                j.commit(vec![e]);
            }
        }
        let path = dir.path().join("keys/journal");
        let full = std::fs::read(&path).expect("read");
        std::fs::write(&path, &full[..full.len() - 3]).expect("write");
        {
            let (j, _log) = open(dir.path());
            assert!(j.get("a").is_some());
            assert!(j.get("b").is_none(), "the torn record is dropped");
        }
        let mut damaged = full.clone();
        damaged[10] ^= 0xff;
        std::fs::write(&path, &damaged).expect("write");
        let log = Log::open(&dir.path().join("log")).expect("log");
        let err = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 1000).err().expect("refused");
        assert!(err.to_string().contains("at byte 0"), "{err}");
        // A whole last record failing its checksum whose group is in the log is damage, not
        // a torn write (a torn record's group never reached the log).
        let mut damaged = full.clone();
        let last = full.len() - 3;
        damaged[last] ^= 0x01;
        std::fs::write(&path, &damaged).expect("write");
        let log = Log::open(&dir.path().join("log")).expect("log");
        let err = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 1000).err().expect("refused");
        assert!(err.to_string().contains("the log holds its whole group"), "{err}");
        // A damaged length field in the first record (it now runs past the end) is damage
        // too: the second record is still valid.
        let mut damaged = full.clone();
        damaged[2] ^= 0x40;
        std::fs::write(&path, &damaged).expect("write");
        let log = Log::open(&dir.path().join("log")).expect("log");
        let err = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 1000).err().expect("refused");
        assert!(err.to_string().contains("at byte 0") && err.to_string().contains("valid record follows"), "{err}");
    }

    // Proves expiry by count and compaction keep the newest keys.
    #[test]
    fn expiry_and_compaction() {
        let dir = TempDir::new("keys-expiry");
        let log = Log::open_or_create(&dir.path().join("log"), LogConfig { partitions: 1, segment_bytes: 1 << 20 }).expect("log");
        let (mut j, _log) = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 3).expect("journal");
        for i in 0..5u64 {
            let e = entry(&format!("k{i}"), 0, i, i + 1);
            j.prepare(vec![i], vec![i + 1], std::slice::from_ref(&e)).expect("prepare");
            j.commit(vec![e]);
        }
        assert_eq!(j.len(), 3);
        assert!(j.get("k0").is_none() && j.get("k4").is_some());
        j.compact().expect("compact");
        drop(j);
        let log = Log::open(&dir.path().join("log")).expect("log");
        let (j, _) = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 3).expect("journal");
        assert_eq!(j.len(), 3);
        assert!(j.get("k2").is_some());
    }

    // Proves key validation names what is wrong.
    // Proves source positions (a Kafka partition's next offset) are kept however old and
    // however many keys there are, are overwritten by a later commit, are not counted as
    // idempotency keys, survive a compaction and a reopen, and are rolled back with an
    // interrupted group (so the events and the offset they came from never part).
    #[test]
    fn source_positions_never_expire_and_roll_back_with_their_group() {
        let dir = TempDir::new("keys-sources");
        let log = Log::open_or_create(&dir.path().join("log"), LogConfig { partitions: 1, segment_bytes: 1 << 20 }).expect("log");
        let (mut j, log) = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 1).expect("journal");
        let pos = |name: &str, next: u64, at_ms: u64| KeyEntry { key: source_key(name), body_hash: next, events: 0, ranges: vec![], at_ms };
        let mut end = 0u64;
        for i in 0..4u64 {
            // An old position (at_ms 0, far beyond the retention) and a client key per group.
            let entries =
                vec![pos("kafka/t/0", 10 + i, 0), pos(&format!("kafka/t/{}", i + 1), 1, 0), entry(&format!("k{i}"), 0, end, end + 1)];
            j.prepare(vec![end], vec![end + 1], &entries).expect("prepare");
            log.append(&[(0, b"x")]).expect("append");
            end += 1;
            j.commit(entries);
        }
        assert_eq!(j.len(), 1, "only client keys count (max 1), positions are not evicted by them");
        let all = j.sources("kafka/");
        assert_eq!(all.len(), 5, "{all:?}");
        assert_eq!(all[0], ("kafka/t/0".to_string(), 13), "the latest position wins");
        assert_eq!(j.sources("kafka/t/0"), vec![("kafka/t/0".to_string(), 13)]);
        j.compact().expect("compact");
        // A group whose append never happened (a crash after the journal record).
        let entries = vec![pos("kafka/t/0", 99, now_ms())];
        j.prepare(vec![end], vec![end + 1], &entries).expect("prepare");
        drop((j, log));
        let log = Log::open(&dir.path().join("log")).expect("log");
        let (j, log) = KeyJournal::open(dir.path(), log, Duration::from_secs(3600), 1).expect("journal");
        assert_eq!(log.end_offsets(), vec![end]);
        assert_eq!(j.sources("kafka/t/0"), vec![("kafka/t/0".to_string(), 13)], "the interrupted group's position is rolled back");
        assert_eq!(j.sources("kafka/").len(), 5, "positions survive compaction and reopen");
        assert!(validate_key(&source_key("x")).is_err(), "no client key can name a source position");
    }

    #[test]
    fn key_validation() {
        assert!(validate_key("order-42").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"x".repeat(256)).is_err());
        assert!(validate_key("a b").unwrap_err().contains("' '"));
    }
}
