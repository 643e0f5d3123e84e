//! The master dataset: a partitioned, append-only, durable log of opaque byte records.
//!
//! # Layout
//!
//! ```text
//! D/MANIFEST                         JSON: format version, partitions, segment_bytes,
//!                                    and per partition its sealed segments
//! D/ROLLBACK                         JSON, only while a rollback is in progress: the
//!                                    target end offset of every partition
//! D/p{partition:04}/{base:020}.seg   segment files, named by their first offset
//! ```
//!
//! A record is framed as `[len: u32 LE][crc: u32 LE][payload]`, the CRC-32C covering the
//! four length bytes and the payload. Offsets are per partition, 0-based record numbers.
//!
//! # Durability (DESIGN.md §2, point 1)
//!
//! [`Log::append`] validates the whole batch first (a rejected batch stores nothing), writes
//! each touched partition's records with one buffered write, then fsyncs every touched
//! segment (and the partition directory when it created a segment) before returning the
//! positions: the returned positions are the acknowledgement. When an I/O error interrupts
//! an append, the partial write is rolled back (files truncated, new segments removed,
//! manifest restored) so that the failed batch stores nothing either; if even that fails,
//! the log refuses further appends ([`LogError::Poisoned`]) until it is reopened.
//!
//! # Recovery
//!
//! Opening never scans sealed segments: it checks that each exists with exactly the length
//! the manifest records. The active (last) segment is scanned; it is truncated at the first
//! torn or checksum-failing record (reported on stderr), so an unacknowledged torn tail is
//! never served. A flipped byte inside a *sealed* segment is detected lazily: `open`
//! succeeds, and [`Log::read`] / [`Log::verify`] return [`LogError::Corrupt`] naming the
//! file and byte offset of the bad record. Nothing corrupt is ever skipped silently.
//!
//! # Rollback of unacknowledged tails
//!
//! [`Log::rollback_to`] removes the records at the tail of partitions that a crash left
//! half-appended (never acknowledged). It first makes an intent file `ROLLBACK` durable, then
//! shortens the manifest, deletes later segment files and truncates the segment holding each
//! target, then removes `ROLLBACK`. Opening a log that has a `ROLLBACK` completes the rollback
//! before anything else (every step is idempotent), so a crash at any point leaves either the
//! log as it was (crash before the intent was durable) or a log that opens rolled back.
//!
//! # Followers
//!
//! Another process can read the log while the writer appends: [`Log::open_follower`] opens it
//! read-only (no recovery, nothing on disk is ever changed) and [`Log::follow_to`] advances it
//! to end offsets the writer acknowledged. See the `follow` module.

#![forbid(unsafe_code)]

mod block;
mod bulk;
pub mod crash;
mod follow;
mod manifest;
mod rollback;
mod segment;
pub(crate) mod split;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::durable::frame::{encode_into, framed_len};
pub use crate::durable::frame::{MAX_PAYLOAD_BYTES, RECORD_HEADER_BYTES};
pub(crate) use block::{BlockBuf, Zstd, BLOCK_RAW_BYTES};
pub use bulk::Staging;
use manifest::{Manifest, SealedSegment, MANIFEST};
use segment::{io_err, open_for_append, parse_segment_name, partition_dir, segment_path, sync_dir, ScanStop, Scanner};

/// One sparse-index entry is kept per this many records of a segment.
pub const INDEX_STRIDE: u64 = 4096;

/// Configuration of a new log. Ignored when opening an existing one (the manifest wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Number of partitions (at least 1).
    pub partitions: u32,
    /// A partition's active segment is sealed once appending would take it past this size.
    pub segment_bytes: u64,
}

/// Partitions of a new log unless configured otherwise.
pub const PARTITIONS_DEFAULT: u32 = 4;
/// Bytes at which a segment rolls unless configured otherwise (64 MiB).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

impl Default for LogConfig {
    /// [`PARTITIONS_DEFAULT`] partitions, [`SEGMENT_BYTES_DEFAULT`]-byte segments.
    fn default() -> Self {
        LogConfig { partitions: PARTITIONS_DEFAULT, segment_bytes: SEGMENT_BYTES_DEFAULT }
    }
}

/// Where a record lives: its partition and its offset (record number) in that partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Partition index, `0..partitions`.
    pub partition: u32,
    /// 0-based record number within the partition.
    pub offset: u64,
}

/// Result of [`Log::verify`]: per partition, the records and bytes checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records per partition (equals its end offset).
    pub records: Vec<u64>,
    /// Bytes of segment data per partition.
    pub bytes: Vec<u64>,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A file-system operation failed; the source says which operation.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error, prefixed with what was being done.
        #[source]
        source: io::Error,
    },
    /// A record of acknowledged data failed its checksum or framing.
    #[error(
        "corrupt record in sealed segment {} at byte {byte_offset}: {detail}",
        path.display()
    )]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Byte offset of the bad record within the file.
        byte_offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// `MANIFEST` is missing where a log evidently exists, unreadable, or inconsistent.
    #[error("invalid log manifest {}: {detail}", path.display())]
    ManifestInvalid {
        /// Path of the manifest.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A segment file disagrees with the manifest (missing, wrong length, unexpected).
    #[error("invalid segment file {}: {detail}", path.display())]
    SegmentInvalid {
        /// Segment file (or partition directory) involved.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A partition index is out of range.
    #[error("partition {partition} does not exist: the log has {partitions} partitions")]
    BadPartition {
        /// The partition asked for.
        partition: u32,
        /// Number of partitions of the log.
        partitions: u32,
    },
    /// A payload exceeds [`MAX_PAYLOAD_BYTES`].
    #[error("record {index} of the batch has {len} bytes, over the {max}-byte limit")]
    RecordTooLarge {
        /// Index of the record in the batch.
        index: usize,
        /// Its payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// There is no log at this path.
    #[error("no log at {}: no MANIFEST there", path.display())]
    NotFound {
        /// The directory looked in.
        path: PathBuf,
    },
    /// A [`LogConfig`] for a new log is unusable.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// An earlier append failed and could not be rolled back; reopen the log to recover.
    #[error("log refuses appends until reopened: an earlier failed append could not be rolled back: {0}")]
    Poisoned(String),
    /// A write ([`Log::append`], [`Log::rollback_to`]) was asked of a log opened with
    /// [`Log::open_follower`]; nothing was changed.
    #[error("log {} is opened as a read-only follower: appends and rollbacks belong to the writer process", path.display())]
    ReadOnly {
        /// The log directory.
        path: PathBuf,
    },
    /// A [`Log::follow_to`] request is unusable (wrong number of end offsets, or the log is not
    /// a follower).
    #[error("invalid follow of {}: {detail}", path.display())]
    FollowInvalid {
        /// The log directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A [`Log::rollback_to`] request, or a pending `ROLLBACK` intent file, is unusable.
    #[error("invalid rollback of {}: {detail}", path.display())]
    RollbackInvalid {
        /// The log directory (for a request) or the `ROLLBACK` file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// In-memory state of one segment.
#[derive(Clone, Debug)]
struct SegState {
    base: u64,
    /// Durable records (for the active segment: acknowledged ones).
    records: u64,
    /// Durable bytes.
    bytes: u64,
    /// `index[k]` = byte position of record `base + k * INDEX_STRIDE`; `index[0] == 0`.
    /// Complete for the active segment; learned lazily by scans for sealed ones.
    index: Vec<u64>,
}

/// In-memory state of one partition: its segments in order, the last one active.
#[derive(Debug)]
struct PartState {
    segments: Vec<SegState>,
}

impl PartState {
    fn active(&self) -> &SegState {
        self.segments.last().expect("a partition always has an active segment")
    }

    fn end(&self) -> u64 {
        let a = self.active();
        a.base + a.records
    }
}

/// State owned by the appender (behind the append lock).
#[derive(Debug)]
struct Writer {
    manifest: Manifest,
    /// Open append handle of each partition's active segment, opened lazily.
    files: Vec<Option<File>>,
    /// Set when a failed append could not be undone.
    poisoned: Option<String>,
}

/// A partitioned, append-only, durable log. `Send + Sync`: share it through an `Arc`.
///
/// Appends are serialised by an internal lock; reads run concurrently with each other and
/// with appends, and see only acknowledged records.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    partitions: u32,
    segment_bytes: u64,
    state: RwLock<Vec<PartState>>,
    /// For a follower, serialises [`Log::follow_to`] instead (it never appends).
    writer: Mutex<Writer>,
    /// Opened with [`Log::open_follower`]: read-only, advanced by [`Log::follow_to`].
    follower: bool,
}

/// The records of one append destined for one segment.
struct Chunk {
    base: u64,
    /// Records / bytes already in the segment before this append.
    start_records: u64,
    start_bytes: u64,
    records: u64,
    buf: Vec<u8>,
    /// Sparse-index entries for the new records.
    new_index: Vec<u64>,
    /// Length of the segment's index including `new_index`.
    index_len: usize,
}

impl Chunk {
    fn seg_records(&self) -> u64 {
        self.start_records + self.records
    }

    fn seg_bytes(&self) -> u64 {
        self.start_bytes + self.buf.len() as u64
    }
}

/// What one append writes to one partition: the active segment, then any new ones.
struct Plan {
    chunks: Vec<Chunk>,
    /// Framed bytes of this partition's records not yet placed in a chunk.
    unplaced: u64,
}

impl Plan {
    fn start_chunk(&mut self, base: u64, records: u64, bytes: u64, index_len: usize, segment_bytes: u64) {
        let room = segment_bytes.saturating_sub(bytes).max(1);
        let cap = self.unplaced.min(room).min(usize::MAX as u64) as usize;
        self.chunks.push(Chunk {
            base,
            start_records: records,
            start_bytes: bytes,
            records: 0,
            buf: Vec::with_capacity(cap),
            new_index: Vec::new(),
            index_len,
        });
    }

    /// Places one record, rolling to a new segment when needed; returns its offset.
    fn push(&mut self, payload: &[u8], segment_bytes: u64) -> u64 {
        let framed = framed_len(payload.len());
        let last = self.chunks.last().expect("plan has a chunk");
        let used = last.seg_bytes();
        if used > 0 && used + framed > segment_bytes {
            let next_base = last.base + last.seg_records();
            self.start_chunk(next_base, 0, 0, 1, segment_bytes);
        }
        let c = self.chunks.last_mut().expect("plan has a chunk");
        let r = c.seg_records();
        if r == c.index_len as u64 * INDEX_STRIDE {
            c.new_index.push(c.seg_bytes());
            c.index_len += 1;
        }
        encode_into(&mut c.buf, payload);
        c.records += 1;
        self.unplaced -= framed;
        c.base + r
    }
}

/// What to undo if an append fails half-way.
#[derive(Default)]
struct Undo {
    /// Pre-append active segment (path, bytes) of each partition written to.
    truncate: Vec<(PathBuf, u64)>,
    /// Segment files this append created.
    created: Vec<PathBuf>,
    /// The manifest before this append, if the append changed it.
    manifest: Option<Manifest>,
}

/// A segment's shape, copied out of the state lock for a scan.
struct SegSnap {
    base: u64,
    records: u64,
    bytes: u64,
    /// First record to decode (an index point at or before the wanted start).
    start_rec: u64,
    start_pos: u64,
    index_len: usize,
    /// Not the partition's last segment: it may be compressed (see `block`).
    sealed: bool,
}

impl SegSnap {
    fn of(s: &SegState, from: u64, sealed: bool) -> SegSnap {
        // Every segment's index starts with its first record's byte position (0).
        assert!(!s.index.is_empty(), "segment {} has an empty sparse index", s.base);
        let rel = from.saturating_sub(s.base).min(s.records);
        let k = ((rel / INDEX_STRIDE) as usize).min(s.index.len() - 1);
        SegSnap {
            base: s.base,
            records: s.records,
            bytes: s.bytes,
            start_rec: s.base + k as u64 * INDEX_STRIDE,
            start_pos: s.index[k],
            index_len: s.index.len(),
            sealed,
        }
    }
}

impl Log {
    /// Opens the log in `dir`, creating it with `cfg` if it does not exist (`cfg` is
    /// ignored for an existing log; the manifest wins). Runs recovery.
    pub fn open_or_create(dir: &Path, cfg: LogConfig) -> Result<Log, LogError> {
        if let Some(log) = Self::open_existing(dir)? {
            return Ok(log);
        }
        Self::create(dir, cfg)?;
        Self::open_existing(dir)?.ok_or_else(|| LogError::NotFound { path: dir.to_path_buf() })
    }

    /// Opens an existing log, running recovery; [`LogError::NotFound`] naming `dir` if
    /// there is none.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        Self::open_existing(dir)?.ok_or_else(|| LogError::NotFound { path: dir.to_path_buf() })
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Directory holding the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Size at which active segments are sealed (from the manifest).
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Appends records, each tagged with its partition, and returns their positions in
    /// input order once they are durable.
    ///
    /// The whole batch is validated first (partition in range, payload at most
    /// [`MAX_PAYLOAD_BYTES`]), so an invalid batch writes nothing. Each touched partition
    /// gets one buffered write per segment, then one fsync of its active segment (plus the
    /// partition directory if a segment was created): a group commit. Appends are
    /// serialised by an internal lock; readers are not blocked.
    pub(crate) fn append(&self, records: &[(u32, &[u8])]) -> Result<Vec<Position>, LogError> {
        if self.follower {
            return Err(LogError::ReadOnly { path: self.dir.clone() });
        }
        let np = self.partitions as usize;
        let mut totals = vec![0u64; np];
        for (index, &(partition, payload)) in records.iter().enumerate() {
            if partition >= self.partitions {
                return Err(LogError::BadPartition { partition, partitions: self.partitions });
            }
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(LogError::RecordTooLarge { index, len: payload.len(), max: MAX_PAYLOAD_BYTES });
            }
            totals[partition as usize] += framed_len(payload.len());
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }

        let mut writer = self.writer.lock().map_err(|_| LogError::Poisoned("an append panicked while holding the append lock".into()))?;
        if let Some(why) = &writer.poisoned {
            return Err(LogError::Poisoned(why.clone()));
        }

        let mut plans: Vec<Option<Plan>> = (0..np).map(|_| None).collect();
        let mut positions = Vec::with_capacity(records.len());
        // Only this (locked) appender changes the active segments, so a copy stays valid.
        let actives: Vec<(u64, u64, u64, usize)> = self
            .read_state()
            .iter()
            .map(|ps| {
                let a = ps.active();
                (a.base, a.records, a.bytes, a.index.len())
            })
            .collect();
        for &(partition, payload) in records {
            let p = partition as usize;
            let plan = plans[p].get_or_insert_with(|| {
                let (base, recs, bytes, index_len) = actives[p];
                let mut plan = Plan { chunks: Vec::new(), unplaced: totals[p] };
                plan.start_chunk(base, recs, bytes, index_len, self.segment_bytes);
                plan
            });
            positions.push(Position { partition, offset: plan.push(payload, self.segment_bytes) });
        }

        let mut undo = Undo::default();
        if let Err(err) = self.write_plans(&mut writer, &plans, &mut undo) {
            if let Err(rb) = self.rollback(&mut writer, undo) {
                let why = format!("append failed ({err}); rollback failed ({rb})");
                eprintln!("lambdaflow log {}: {why}", self.dir.display());
                writer.poisoned = Some(why);
            }
            return Err(err);
        }
        self.publish(plans);
        Ok(positions)
    }

    /// Removes every record at or after `ends[p]` from each partition p (partitions whose end is
    /// already <= ends[p] are untouched) and returns the reopened log. For records that were never
    /// acknowledged only (recovery of an interrupted multi-partition append).
    ///
    /// The segment holding record `ends[p]` becomes the partition's active segment, truncated
    /// where that record started; later segment files are deleted and the manifest's sealed list
    /// shortened. Appends then continue at `ends[p]`.
    ///
    /// Crash-safe: the targets are first made durable in an intent file `ROLLBACK` (tmp, fsync,
    /// rename, fsync dir); then the manifest is rewritten, later segments deleted (partition
    /// directory fsynced) and the target segments truncated (fsynced); then `ROLLBACK` is removed
    /// and the directory fsynced. [`Log::open`] finding a `ROLLBACK` completes the rollback before
    /// anything else. A crash before the intent is durable changes nothing: call this again.
    ///
    /// `ends` must have one entry per partition ([`LogError::RollbackInvalid`] otherwise). When
    /// nothing is to be removed the log is returned as is, without touching the disk. On any
    /// error the log is closed: open it again ([`Log::open`] completes a started rollback).
    pub(crate) fn rollback_to(self, ends: &[u64]) -> Result<Log, LogError> {
        if self.follower {
            return Err(LogError::ReadOnly { path: self.dir.clone() });
        }
        if ends.len() != self.partitions as usize {
            return Err(LogError::RollbackInvalid {
                path: self.dir.clone(),
                detail: format!("{} end offsets given for a log of {} partitions", ends.len(), self.partitions),
            });
        }
        let Log { dir, partitions, segment_bytes, state, writer, follower: _ } = self;
        let lock_poisoned = writer.is_poisoned();
        let writer = writer.into_inner().unwrap_or_else(PoisonError::into_inner);
        let state = state.into_inner().unwrap_or_else(PoisonError::into_inner);
        let current: Vec<u64> = state.iter().map(PartState::end).collect();
        let targets: Vec<u64> = ends.iter().zip(&current).map(|(&want, &end)| want.min(end)).collect();
        if targets == current && writer.poisoned.is_none() && !lock_poisoned {
            return Ok(Log { dir, partitions, segment_bytes, state: RwLock::new(state), writer: Mutex::new(writer), follower: false });
        }
        // Close the append handles; the rollback works from what is on disk (as recovery does).
        drop(writer);
        // Find every cut point (checking the records before it) before changing anything.
        let mut hints = Vec::with_capacity(targets.len());
        for (p, (ps, &target)) in state.iter().zip(&targets).enumerate() {
            hints.push(rollback::locate(&dir, p as u32, target, rollback_hint(ps, target))?);
        }
        let manifest = Manifest::load(&dir)?
            .ok_or_else(|| LogError::ManifestInvalid { path: dir.join(MANIFEST), detail: "MANIFEST is missing".into() })?;
        if manifest.partitions != partitions {
            return Err(LogError::ManifestInvalid {
                path: dir.join(MANIFEST),
                detail: format!("declares {} partitions, the open log has {partitions}", manifest.partitions),
            });
        }
        let mut steps = rollback::Steps::new();
        rollback::write_intent(&dir, &targets, &mut steps)?;
        rollback::apply(&dir, &manifest, &targets, &hints, &mut steps)?;
        rollback::remove_intent(&dir, &mut steps)?;
        Self::open(&dir)
    }

    /// Whether a failed append could not be undone, so the log refuses appends until it
    /// is reopened (and recovered).
    pub fn is_poisoned(&self) -> bool {
        self.writer.lock().map(|w| w.poisoned.is_some()).unwrap_or(true)
    }

    /// Durable end offset of each partition (the offset its next record will get).
    pub fn end_offsets(&self) -> Vec<u64> {
        self.read_state().iter().map(PartState::end).collect()
    }

    /// Calls `f(offset, payload)` for every record of `partition` with offset in
    /// `[from, to)`, in order; `to` is clamped to the end offset. Returns the number of
    /// records visited.
    ///
    /// Segments before the one holding `from` are not touched; inside it the scan starts
    /// at the nearest sparse-index point. Files are read sequentially in chunks of up to
    /// 4 MiB, and every record's checksum is verified: a bad one is
    /// [`LogError::Corrupt`] naming the file and byte offset. An error returned by `f`
    /// stops the scan and is returned as is.
    pub fn read<F, E>(&self, partition: u32, from: u64, to: u64, mut f: F) -> Result<u64, E>
    where
        F: FnMut(u64, &[u8]) -> Result<(), E>,
        E: From<LogError>,
    {
        let snaps = {
            let state = self.read_state();
            let ps = state.get(partition as usize).ok_or(LogError::BadPartition { partition, partitions: self.partitions })?;
            let to = to.min(ps.end());
            if from >= to {
                return Ok(0);
            }
            let first = ps.segments.partition_point(|s| s.base + s.records <= from);
            let last = ps.segments.len() - 1;
            ps.segments[first..]
                .iter()
                .enumerate()
                .take_while(|(_, s)| s.base < to)
                .map(|(i, s)| (SegSnap::of(s, from, first + i < last), to))
                .collect::<Vec<_>>()
        };
        let mut visited = 0;
        for (snap, to) in snaps {
            let stop = to.min(snap.base + snap.records);
            visited += self.scan_segment(partition, &snap, from, stop, false, &mut f)?;
        }
        Ok(visited)
    }

    /// Reads every segment in full, checking every record's checksum and every segment's
    /// record count; returns the records and bytes per partition, or the first corruption
    /// found ([`LogError::Corrupt`]). Also completes the sparse index of sealed segments.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let mut report = VerifyReport::default();
        for partition in 0..self.partitions {
            let snaps: Vec<SegSnap> = {
                let state = self.read_state();
                let segs = &state[partition as usize].segments;
                segs.iter().enumerate().map(|(i, s)| SegSnap::of(s, s.base, i + 1 < segs.len())).collect()
            };
            let (mut records, mut bytes) = (0, 0);
            for snap in snaps {
                let end = snap.base + snap.records;
                records += self.scan_segment(partition, &snap, snap.base, end, true, |_, _| Ok::<(), LogError>(()))?;
                bytes += snap.bytes;
            }
            report.records.push(records);
            report.bytes.push(bytes);
        }
        Ok(report)
    }

    /// Bytes of segment data on disk per partition (acknowledged data only).
    pub fn disk_bytes(&self) -> Vec<u64> {
        self.read_state().iter().map(|ps| ps.segments.iter().map(|s| s.bytes).sum()).collect()
    }

    // ----- internals -------------------------------------------------------------------

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, Vec<PartState>> {
        crate::sync::read(&self.state)
    }

    /// Scans records `[snap.start_rec, stop)` of one segment, calling `f` for those at or
    /// after `from`, and learns sparse-index entries on the way. With `whole`, also checks
    /// that the segment holds exactly `snap.records` records and nothing after them.
    fn scan_segment<F, E>(&self, partition: u32, snap: &SegSnap, from: u64, stop: u64, whole: bool, mut f: F) -> Result<u64, E>
    where
        F: FnMut(u64, &[u8]) -> Result<(), E>,
        E: From<LogError>,
    {
        let path = segment_path(&self.dir, partition, snap.base);
        let corrupt = |byte_offset: u64, detail: String| LogError::Corrupt { path: path.clone(), byte_offset, detail };
        if snap.bytes == 0 {
            // An empty active segment, whose file may not exist yet.
            return Ok(0);
        }
        if snap.sealed && block::sniff(&path)? {
            return block::scan(&path, snap.base, snap.records, snap.bytes, from, stop, whole, f);
        }
        let mut scanner = Scanner::open(&path, snap.start_pos, snap.bytes)?;
        let mut cur = snap.start_rec;
        let mut visited = 0;
        let mut learned = Vec::new();
        while cur < stop {
            match scanner.next_record() {
                Ok(Some((pos, payload))) => {
                    let r = cur - snap.base;
                    if r == (snap.index_len + learned.len()) as u64 * INDEX_STRIDE {
                        learned.push(pos);
                    }
                    if cur >= from {
                        f(cur, payload)?;
                        visited += 1;
                    }
                    cur += 1;
                }
                Ok(None) => {
                    return Err(corrupt(
                        scanner.position(),
                        format!("segment ends after {} records, {} expected", cur - snap.base, snap.records),
                    )
                    .into())
                }
                Err(ScanStop::Bad { pos, detail }) => return Err(corrupt(pos, detail).into()),
                Err(ScanStop::Io(e)) => return Err(e.into()),
            }
        }
        if whole {
            match scanner.next_record() {
                Ok(None) => {}
                Ok(Some((pos, _))) => return Err(corrupt(pos, format!("record beyond the {} expected", snap.records)).into()),
                Err(ScanStop::Bad { pos, detail }) => return Err(corrupt(pos, detail).into()),
                Err(ScanStop::Io(e)) => return Err(e.into()),
            }
        }
        if !learned.is_empty() {
            let mut state = crate::sync::write(&self.state);
            let segs = &mut state[partition as usize].segments;
            if let Ok(i) = segs.binary_search_by_key(&snap.base, |s| s.base) {
                if segs[i].index.len() == snap.index_len {
                    segs[i].index.extend_from_slice(&learned);
                }
            }
        }
        Ok(visited)
    }

    /// Writes every partition's chunks, sealing and creating segments as planned, then
    /// fsyncs each touched active segment and each partition directory that gained a file.
    fn write_plans(&self, w: &mut Writer, plans: &[Option<Plan>], undo: &mut Undo) -> Result<(), LogError> {
        let mut dirs_to_sync = Vec::new();
        for (p, plan) in plans.iter().enumerate() {
            let Some(plan) = plan else { continue };
            let mut created_here = false;
            for (i, chunk) in plan.chunks.iter().enumerate() {
                let path = segment_path(&self.dir, p as u32, chunk.base);
                if i > 0 {
                    self.seal(w, p, &plan.chunks[i - 1], undo)?;
                }
                let mut created = false;
                if w.files[p].is_none() {
                    let file = if i == 0 {
                        created = !path.exists();
                        open_for_append(&path)?
                    } else {
                        created = true;
                        OpenOptions::new().append(true).create_new(true).open(&path).map_err(|e| io_err(&path, "create segment", e))?
                    };
                    w.files[p] = Some(file);
                }
                if created {
                    undo.created.push(path.clone());
                    created_here = true;
                } else {
                    // Only the first chunk can go to a pre-existing file.
                    undo.truncate.push((path.clone(), chunk.start_bytes));
                }
                let file = w.files[p].as_mut().expect("segment file is open");
                file.write_all(&chunk.buf).map_err(|e| io_err(&path, "append to segment", e))?;
            }
            if created_here {
                dirs_to_sync.push(partition_dir(&self.dir, p as u32));
            }
        }
        let mut to_sync = Vec::new();
        for (p, plan) in plans.iter().enumerate() {
            if let Some(plan) = plan {
                let last = plan.chunks.last().expect("plan has a chunk");
                let file = w.files[p].as_ref().expect("segment file is open");
                to_sync.push((file, segment_path(&self.dir, p as u32, last.base)));
            }
        }
        sync_all_data(&to_sync)?;
        for d in dirs_to_sync {
            sync_dir(&d)?;
        }
        Ok(())
    }

    /// Seals the segment `chunk` filled: fsync it and its directory entry (it may have been
    /// created by this very append), then record it in the manifest. Only after that is the
    /// next segment created, so recovery never sees two segments beyond the sealed ones.
    fn seal(&self, w: &mut Writer, p: usize, chunk: &Chunk, undo: &mut Undo) -> Result<(), LogError> {
        let path = segment_path(&self.dir, p as u32, chunk.base);
        let file = w.files[p].take().expect("sealed segment was open");
        file.sync_data().map_err(|e| io_err(&path, "fsync segment before sealing", e))?;
        sync_dir(&partition_dir(&self.dir, p as u32))?;
        if undo.manifest.is_none() {
            undo.manifest = Some(w.manifest.clone());
        }
        w.manifest.sealed[p].push(SealedSegment { base_offset: chunk.base, records: chunk.seg_records(), bytes: chunk.seg_bytes() });
        w.manifest.store(&self.dir)
    }

    /// Undoes a failed append: remove created segments, restore the manifest, truncate
    /// active segments to their acknowledged length.
    fn rollback(&self, w: &mut Writer, undo: Undo) -> Result<(), LogError> {
        for f in w.files.iter_mut() {
            *f = None;
        }
        for path in &undo.created {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path, "remove segment of failed append", e)),
            }
        }
        for path in &undo.created {
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
        }
        if let Some(m) = undo.manifest {
            m.store(&self.dir)?;
            w.manifest = m;
        }
        for (path, len) in &undo.truncate {
            let f = OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, "open segment to undo failed append", e))?;
            f.set_len(*len).and_then(|()| f.sync_all()).map_err(|e| io_err(path, "truncate segment to undo failed append", e))?;
        }
        Ok(())
    }

    /// Makes a successful append visible to readers.
    fn publish(&self, plans: Vec<Option<Plan>>) {
        let mut state = crate::sync::write(&self.state);
        for (p, plan) in plans.into_iter().enumerate() {
            let Some(plan) = plan else { continue };
            let segs = &mut state[p].segments;
            for (i, chunk) in plan.chunks.into_iter().enumerate() {
                if i == 0 {
                    let active = segs.last_mut().expect("a partition always has a segment");
                    active.records += chunk.records;
                    active.bytes += chunk.buf.len() as u64;
                    active.index.extend_from_slice(&chunk.new_index);
                } else {
                    let mut index = Vec::with_capacity(1 + chunk.new_index.len());
                    index.push(0);
                    index.extend_from_slice(&chunk.new_index);
                    segs.push(SegState { base: chunk.base, records: chunk.records, bytes: chunk.buf.len() as u64, index });
                }
            }
        }
    }

    /// Creates a new, empty log: the directory and its manifest.
    fn create(dir: &Path, cfg: LogConfig) -> Result<(), LogError> {
        if cfg.partitions == 0 {
            return Err(LogError::InvalidConfig("partitions must be at least 1".into()));
        }
        if cfg.segment_bytes == 0 {
            return Err(LogError::InvalidConfig("segment_bytes must be at least 1".into()));
        }
        let existed = dir.is_dir();
        fs::create_dir_all(dir).map_err(|e| io_err(dir, "create log directory", e))?;
        if !existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Manifest::new(cfg.partitions, cfg.segment_bytes).store(dir)
    }

    /// Opens the log in `dir` and runs recovery; `Ok(None)` if there is no log there.
    fn open_existing(dir: &Path) -> Result<Option<Log>, LogError> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io_err(dir, "open log directory", io::Error::other("not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(dir, "open log directory", e)),
        }
        if Manifest::remove_stale_tmp(dir)? {
            eprintln!("lambdaflow log {}: removed a stale MANIFEST.tmp (an interrupted manifest update)", dir.display());
            sync_dir(dir)?;
        }
        // Before the checks below, which would refuse a rollback's intermediate state.
        rollback::recover(dir)?;
        let partition_dirs = list_partition_dirs(dir)?;
        let manifest = match Manifest::load(dir)? {
            Some(m) => m,
            None if partition_dirs.is_empty() => return Ok(None),
            None => return Err(missing_manifest(dir, &partition_dirs)),
        };
        // Before the segment checks: a committed bulk append may still have to move in.
        bulk::recover(dir, &manifest)?;
        if let Some((_, name)) = partition_dirs.iter().find(|(i, _)| *i >= u64::from(manifest.partitions)) {
            return Err(LogError::SegmentInvalid {
                path: dir.join(name),
                detail: format!("partition directory beyond the manifest's {} partitions", manifest.partitions),
            });
        }

        let mut state = Vec::with_capacity(manifest.partitions as usize);
        let mut created_dirs = false;
        for p in 0..manifest.partitions {
            let (ps, created) = recover_partition(dir, &manifest, p)?;
            created_dirs |= created;
            state.push(ps);
        }
        if created_dirs {
            sync_dir(dir)?;
        }
        let partitions = manifest.partitions;
        Ok(Some(Log {
            dir: dir.to_path_buf(),
            partitions,
            segment_bytes: manifest.segment_bytes,
            state: RwLock::new(state),
            writer: Mutex::new(Writer { manifest, files: (0..partitions).map(|_| None).collect(), poisoned: None }),
            follower: false,
        }))
    }
}

/// Where record `target` of a partition starts, as far as the in-memory state knows: in the
/// segment that will hold it after a rollback to `target`, the exact byte when `target` ends
/// that segment, else the nearest sparse-index point before it.
fn rollback_hint(ps: &PartState, target: u64) -> rollback::Hint {
    let i = ps.segments.partition_point(|s| s.base + s.records <= target).min(ps.segments.len() - 1);
    let s = &ps.segments[i];
    let rel = target.saturating_sub(s.base);
    if rel >= s.records {
        return rollback::Hint { base: s.base, rel: s.records, pos: s.bytes };
    }
    let k = ((rel / INDEX_STRIDE) as usize).min(s.index.len() - 1);
    rollback::Hint { base: s.base, rel: k as u64 * INDEX_STRIDE, pos: s.index[k] }
}

/// Fsyncs (data) every file, concurrently when there are several, so that a group commit
/// over many partitions costs about one fsync of latency rather than one per partition.
fn sync_all_data(files: &[(&File, PathBuf)]) -> Result<(), LogError> {
    let sync = |(file, path): &(&File, PathBuf)| file.sync_data().map_err(|e| io_err(path, "fsync segment", e));
    if files.len() <= 1 {
        return files.iter().try_for_each(sync);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = files[1..].iter().map(|f| s.spawn(move || sync(f))).collect();
        let mut result = sync(&files[0]);
        for h in handles {
            let r = h.join().unwrap_or_else(|_| Err(LogError::Poisoned("an fsync thread panicked".into())));
            result = result.and(r);
        }
        result
    })
}

/// Lists `dir`'s entries named like partition directories (`p` + digits) as
/// `(index, name)`.
fn list_partition_dirs(dir: &Path) -> Result<Vec<(u64, String)>, LogError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_err(dir, "list log directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, "list log directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digits) = name.strip_prefix('p') else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(i) = digits.parse::<u64>() {
            out.push((i, name));
        }
    }
    out.sort();
    Ok(out)
}

/// The error for a log directory whose `MANIFEST` is missing although partition directories
/// exist.
fn missing_manifest(dir: &Path, partition_dirs: &[(u64, String)]) -> LogError {
    LogError::ManifestInvalid {
        path: dir.join(MANIFEST),
        detail: format!(
            "MANIFEST is missing but partition directories exist ({}); \
             refusing to guess the log's layout",
            partition_dirs.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The sealed segments of partition `p` as the manifest lists them, after checking that each
/// file exists with exactly the recorded length (their sparse index is learned lazily).
fn sealed_segments(dir: &Path, manifest: &Manifest, p: u32) -> Result<Vec<SegState>, LogError> {
    let sealed = &manifest.sealed[p as usize];
    let mut segments = Vec::with_capacity(sealed.len() + 1);
    for s in sealed {
        let path = segment_path(dir, p, s.base_offset);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LogError::SegmentInvalid { path, detail: "sealed segment listed in MANIFEST is missing".into() })
            }
            Err(e) => return Err(io_err(&path, "stat sealed segment", e)),
        };
        if len != s.bytes {
            return Err(LogError::SegmentInvalid {
                path,
                detail: format!(
                    "sealed segment is {len} bytes but MANIFEST records {} \
                     (sealed segments are never modified)",
                    s.bytes
                ),
            });
        }
        segments.push(SegState { base: s.base_offset, records: s.records, bytes: s.bytes, index: vec![0] });
    }
    Ok(segments)
}

/// Recovers one partition: checks its sealed segments' lengths, scans and if needed
/// truncates its active segment. Returns its state and whether its directory was created.
fn recover_partition(dir: &Path, manifest: &Manifest, p: u32) -> Result<(PartState, bool), LogError> {
    let pdir = partition_dir(dir, p);
    let created = match fs::create_dir(&pdir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err(&pdir, "create partition directory", e)),
    };

    let mut files = Vec::new();
    let entries = fs::read_dir(&pdir).map_err(|e| io_err(&pdir, "list partition directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(&pdir, "list partition directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match parse_segment_name(&name) {
            Some(base) => files.push(base),
            None if name.ends_with(".seg") => {
                return Err(LogError::SegmentInvalid {
                    path: pdir.join(&name),
                    detail: "segment file name is not a 20-digit base offset".into(),
                })
            }
            None => {}
        }
    }
    files.sort_unstable();

    let sealed = &manifest.sealed[p as usize];
    let mut segments = sealed_segments(dir, manifest, p)?;

    let active_base = manifest.sealed_end(p as usize);
    let unknown: Vec<u64> =
        files.iter().copied().filter(|b| *b != active_base && sealed.binary_search_by_key(b, |s| s.base_offset).is_err()).collect();
    if let Some(first) = unknown.first() {
        let names: Vec<String> = unknown.iter().map(|b| format!("{b:020}.seg")).collect();
        return Err(LogError::SegmentInvalid {
            path: segment_path(dir, p, *first),
            detail: format!(
                "segment file(s) not in MANIFEST and not the active segment \
                 (expected at most {active_base:020}.seg): {}",
                names.join(", ")
            ),
        });
    }

    let active_path = segment_path(dir, p, active_base);
    let active = if files.binary_search(&active_base).is_ok() {
        recover_active(&active_path, active_base)?
    } else {
        SegState { base: active_base, records: 0, bytes: 0, index: vec![0] }
    };
    segments.push(active);
    Ok((PartState { segments }, created))
}

/// The byte offset of the first whole, checksum-valid record starting after `bad` in the
/// file, if any (tried at every byte: a corrupt length hides where the next record starts).
fn valid_record_after(path: &Path, bad: u64, len: u64) -> Result<Option<u64>, LogError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| io_err(path, "open active segment", e))?;
    let mut tail = Vec::with_capacity((len - bad) as usize);
    f.seek(SeekFrom::Start(bad)).and_then(|_| f.read_to_end(&mut tail)).map_err(|e| io_err(path, "read active segment tail", e))?;
    // Checksumming every plausible length in a large random tail would take forever: bound
    // the bytes checksummed, and past the budget refuse (report the tail as undecided) rather
    // than guess it is torn.
    const CRC_BUDGET_BYTES: u64 = 256 << 20;
    let mut budget = CRC_BUDGET_BYTES;
    for i in 1..tail.len() {
        let rest = &tail[i..];
        if rest.len() < RECORD_HEADER_BYTES {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        if RECORD_HEADER_BYTES as u64 + len > rest.len() as u64 {
            continue; // cannot be a whole record here
        }
        if len > budget {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                byte_offset: bad,
                detail: format!(
                    "bad record, and the {} bytes after it are too large to search for valid records within budget; \
                     if nothing after byte {bad} was acknowledged, truncate the file to {bad} bytes (`truncate -s {bad} {}`)",
                    tail.len(),
                    path.display()
                ),
            });
        }
        budget -= len;
        if let crate::durable::frame::Decoded::Record { .. } = crate::durable::frame::decode(rest) {
            return Ok(Some(bad + i as u64));
        }
    }
    Ok(None)
}

/// Scans the active segment, truncating it at the first torn or invalid record.
fn recover_active(path: &Path, base: u64) -> Result<SegState, LogError> {
    let len = fs::metadata(path).map_err(|e| io_err(path, "stat active segment", e))?.len();
    let mut scanner = Scanner::open(path, 0, len)?;
    let mut records = 0u64;
    let mut index = vec![0];
    let (valid, problem) = loop {
        match scanner.next_record() {
            Ok(Some((pos, _))) => {
                if records == index.len() as u64 * INDEX_STRIDE {
                    index.push(pos);
                }
                records += 1;
            }
            Ok(None) => break (len, None),
            Err(ScanStop::Bad { pos, detail }) => break (pos, Some(detail)),
            Err(ScanStop::Io(e)) => return Err(e),
        }
    };
    if let Some(detail) = problem {
        // A torn tail ends the file. Whole, checksum-valid records *after* the bad one mean
        // either damage inside acknowledged data or an unacknowledged write the disk persisted
        // out of order; the log cannot tell which, so it refuses rather than drop records that
        // may have been acknowledged, and says how to proceed.
        if let Some(next) = valid_record_after(path, valid, len)? {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                byte_offset: valid,
                detail: format!(
                    "{detail}; whole valid records follow at byte {next}, so this is not a torn tail and \
                     truncating would drop them. If they were never acknowledged (a crash during an append), \
                     truncate the file to {valid} bytes (`truncate -s {valid} {}`) and reopen; otherwise restore \
                     this partition from a replica or backup",
                    path.display()
                ),
            });
        }
        let f = OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, "open active segment for truncation", e))?;
        f.set_len(valid).and_then(|()| f.sync_all()).map_err(|e| io_err(path, "truncate torn tail of active segment", e))?;
        eprintln!(
            "lambdaflow log recovery: truncated {} at byte {valid}: dropped {} bytes ({detail}); \
             kept {records} whole records (offsets {base}..{})",
            path.display(),
            len - valid,
            base + records
        );
    }
    Ok(SegState { base, records, bytes: valid, index })
}
