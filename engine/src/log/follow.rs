//! Read-only followers: reading a log that another process is appending to.
//!
//! In cluster mode the serving process is the log's single writer, and worker processes read
//! its partitions from shared storage. A worker opens the log with [`Log::open_follower`];
//! whenever the writer tells it (over the network) the end offsets it has acknowledged, the
//! worker calls [`Log::follow_to`] with them and can then [`Log::read`] every record below
//! them. Reads work as on the writer; [`Log::append`] and [`Log::rollback_to`] return
//! [`LogError::ReadOnly`].
//!
//! # A follower never modifies anything
//!
//! The files belong to the writer, which may be in the middle of an append at any moment. What
//! recovery would "repair" on open (a torn tail of the active segment, a `MANIFEST.tmp`, a
//! `ROLLBACK` intent, a missing partition directory) is, seen from another process, usually
//! just the writer's work in progress; truncating or removing it would destroy data the writer
//! is about to acknowledge. So a follower only opens files for reading and stats them: it runs
//! no recovery, and ignores the debris that recovery would remove.
//!
//! # Only acknowledged ends are followed
//!
//! Bytes past the writer's acknowledged end may belong to an append in progress, or to one that
//! is about to fail and be undone: the writer then truncates the active segment, removes the
//! segments it created, and restores the manifest, withdrawing a seal it had just recorded.
//! Records below an acknowledged end, on the other hand, are fsynced and final, and so is every
//! seal that acknowledged records lie beyond. Hence `follow_to` counts records exactly up to the
//! given ends (never past them, even when more are already in the file) and consults the
//! manifest about a segment only when its file ends before the target: then the writer must
//! have sealed it, for good. A record that is missing or damaged below the target is
//! [`LogError::Corrupt`], naming the file and byte.
//!
//! On open, the sealed segments are taken from the manifest as it is then (their files checked
//! for their recorded lengths), and the active segment is modelled as holding no known records:
//! `end_offsets()` starts at the sealed ends. (A follower opened at the very moment an append
//! that seals a segment is about to fail would take that seal as final; the writer's failed
//! appends are rare and the failure would surface as an error of a later `follow_to` or
//! `read`, not as wrong data.)
//!
//! `follow_to` reads files without holding the state lock, so reads proceed meanwhile; it takes
//! the lock only to install the longer state. Calls to `follow_to` are serialised.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::manifest::Manifest;
use super::segment::{io_err, segment_path, ScanStop, Scanner};
use super::{list_partition_dirs, missing_manifest, sealed_segments, Log, LogError, PartState, SegState, Writer, INDEX_STRIDE, MANIFEST};
use crate::durable::frame::framed_len;

/// How often a scan restarts when the file's length changed under it (the writer undoing a
/// failed append) before a bad record is reported as corruption.
const MAX_RESCANS: u32 = 8;

impl Log {
    /// Opens the existing log in `dir` read-only, as a follower of the process that writes it
    /// (see the module documentation of `follow`). Never creates, modifies, truncates, renames
    /// or removes anything: no recovery runs, and `ROLLBACK` or `MANIFEST.tmp` files are
    /// ignored (the writer handles them).
    ///
    /// Sealed segments come from `MANIFEST` (each file must exist with its recorded length);
    /// the active segment is taken to hold no known records, so [`Log::end_offsets`] starts at
    /// the sealed ends. Advance it with [`Log::follow_to`]. [`LogError::NotFound`] if there is
    /// no log in `dir`.
    pub fn open_follower(dir: &Path) -> Result<Log, LogError> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io_err(dir, "open log directory", io::Error::other("not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LogError::NotFound { path: dir.to_path_buf() }),
            Err(e) => return Err(io_err(dir, "open log directory", e)),
        }
        let manifest = match Manifest::load(dir)? {
            Some(m) => m,
            None => {
                let partition_dirs = list_partition_dirs(dir)?;
                if partition_dirs.is_empty() {
                    return Err(LogError::NotFound { path: dir.to_path_buf() });
                }
                return Err(missing_manifest(dir, &partition_dirs));
            }
        };
        let mut state = Vec::with_capacity(manifest.partitions as usize);
        for p in 0..manifest.partitions {
            let mut segments = sealed_segments(dir, &manifest, p)?;
            segments.push(SegState { base: manifest.sealed_end(p as usize), records: 0, bytes: 0, index: vec![0] });
            state.push(PartState { segments });
        }
        let partitions = manifest.partitions;
        Ok(Log {
            dir: dir.to_path_buf(),
            partitions,
            segment_bytes: manifest.segment_bytes,
            state: RwLock::new(state),
            writer: Mutex::new(Writer { manifest, files: (0..partitions).map(|_| None).collect(), poisoned: None }),
            follower: true,
        })
    }

    /// Whether this log was opened with [`Log::open_follower`] (read-only).
    pub fn is_follower(&self) -> bool {
        self.follower
    }

    /// Advances a follower so that `end_offsets()[p] >= ends[p]` for every partition `p`.
    ///
    /// `ends` must be end offsets the writer has acknowledged (one per partition); a partition
    /// already at or past its entry is left alone. For the others, the last known segment is
    /// scanned forward from its known length, counting whole, checksum-valid records up to
    /// exactly `ends[p]`; when the file ends first, the writer has sealed it, so its sealed
    /// size is taken from `MANIFEST` (loaded once per call, when first needed) and the scan
    /// continues in the next segment. A missing or bad record below `ends[p]` is
    /// [`LogError::Corrupt`] naming the file and byte; bytes past `ends[p]` (an append in
    /// progress, a torn tail) are never decoded. On error the follower's state is unchanged.
    ///
    /// Reads run concurrently: files are read without the state lock, which is taken only to
    /// install the result. Calls are serialised. [`LogError::FollowInvalid`] if `ends` has the
    /// wrong length or the log is not a follower.
    pub fn follow_to(&self, ends: &[u64]) -> Result<(), LogError> {
        let invalid = |detail: String| LogError::FollowInvalid { path: self.dir.clone(), detail };
        if !self.follower {
            return Err(invalid("follow_to needs a log opened with Log::open_follower; this one is the writer".into()));
        }
        if ends.len() != self.partitions as usize {
            return Err(invalid(format!("{} end offsets given for a log of {} partitions", ends.len(), self.partitions)));
        }
        // Only `follow_to` changes a follower's segments, so the snapshot stays current.
        let _serial = crate::sync::lock(&self.writer);
        let lasts: Vec<SegState> = self.read_state().iter().map(|ps| ps.active().clone()).collect();
        let mut manifest = None;
        let mut grown = Vec::new();
        for (p, (last, &target)) in lasts.into_iter().zip(ends).enumerate() {
            if last.base + last.records < target {
                grown.push((p, self.follow_partition(p as u32, last, target, &mut manifest)?));
            }
        }
        let mut state = crate::sync::write(&self.state);
        for (p, mut segs) in grown {
            let known = &mut state[p].segments;
            let i = known.len() - 1;
            debug_assert_eq!(known[i].base, segs[0].base);
            // Reads may have learned sparse-index entries meanwhile; keep the longer prefix.
            if known[i].index.len() > segs[0].index.len() {
                segs[0].index = std::mem::take(&mut known[i].index);
            }
            known.truncate(i);
            known.extend(segs);
        }
        Ok(())
    }

    /// Extends `seg` (partition `p`'s last known segment) until the partition holds `target`
    /// records: the returned segments replace it, the last one not known to be sealed.
    /// `manifest` caches the manifest once loaded: every seal below an acknowledged end is in
    /// any manifest loaded after it was acknowledged.
    fn follow_partition(&self, p: u32, mut seg: SegState, target: u64, manifest: &mut Option<Manifest>) -> Result<Vec<SegState>, LogError> {
        let mut out = Vec::new();
        loop {
            let path = segment_path(&self.dir, p, seg.base);
            if scan_forward(&path, &mut seg, target)? {
                out.push(seg);
                return Ok(out);
            }
            // The file ended at a record boundary before `target`: acknowledged records lie
            // beyond this segment, so the writer sealed it for good.
            let m = match manifest {
                Some(m) => m,
                None => manifest.insert(self.load_manifest()?),
            };
            let scanned = seg.records;
            let corrupt = |detail: String| LogError::Corrupt { path: path.clone(), byte_offset: seg.bytes, detail };
            let Some(sealed) = m.sealed[p as usize].iter().find(|s| s.base_offset == seg.base) else {
                return Err(corrupt(format!(
                    "the segment ends after {scanned} whole records (offset {}) and MANIFEST does not list it as sealed, \
                     but end offset {target} was to be followed: records the writer acknowledged are missing, or the end \
                     was not acknowledged",
                    seg.base + scanned
                )));
            };
            if sealed.records < scanned || (sealed.records == scanned && sealed.bytes != seg.bytes) {
                return Err(LogError::SegmentInvalid {
                    path,
                    detail: format!(
                        "MANIFEST seals it with {} records / {} bytes, but it holds {scanned} whole records in its first {} bytes",
                        sealed.records, sealed.bytes, seg.bytes
                    ),
                });
            }
            if seg.base + sealed.records >= target {
                return Err(corrupt(format!(
                    "MANIFEST seals the segment with {} records, covering end offset {target}, but its file held only \
                     {scanned} whole records when scanned: the end was not acknowledged when follow_to began",
                    sealed.records
                )));
            }
            let len = file_len(&path)?;
            if len != sealed.bytes {
                return Err(LogError::SegmentInvalid {
                    path,
                    detail: format!("sealed segment is {len} bytes but MANIFEST records {}", sealed.bytes),
                });
            }
            let next = seg.base + sealed.records;
            // The index stays a valid prefix; sealed segments learn the rest lazily.
            out.push(SegState { records: sealed.records, bytes: sealed.bytes, ..seg });
            seg = SegState { base: next, records: 0, bytes: 0, index: vec![0] };
        }
    }

    /// Loads `MANIFEST`, which must exist and describe this log's partitions.
    fn load_manifest(&self) -> Result<Manifest, LogError> {
        let path = self.dir.join(MANIFEST);
        let m = Manifest::load(&self.dir)?
            .ok_or_else(|| LogError::ManifestInvalid { path: path.clone(), detail: "MANIFEST is missing".into() })?;
        if m.partitions != self.partitions {
            return Err(LogError::ManifestInvalid {
                path,
                detail: format!("declares {} partitions, the open follower has {}", m.partitions, self.partitions),
            });
        }
        Ok(m)
    }
}

/// Length of the file at `path`, 0 if it does not exist (an active segment not created yet).
fn file_len(path: &Path) -> Result<u64, LogError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path, "stat segment", e)),
    }
}

/// Counts the whole, checksum-valid records of the segment file `path` after `seg`'s known
/// ones, up to offset `target`, growing `seg` (records, bytes, sparse index) as it goes.
/// Returns `true` once `seg` reaches `target`, `false` if the file ends at a record boundary
/// first. A bad or incomplete record before `target` is [`LogError::Corrupt`], unless the
/// file's length changed meanwhile (the writer undoing a failed append past the
/// acknowledged end), in which case the scan resumes against the new length.
fn scan_forward(path: &Path, seg: &mut SegState, target: u64) -> Result<bool, LogError> {
    let mut rescans = 0;
    'scan: loop {
        if seg.base + seg.records >= target {
            return Ok(true);
        }
        let len = file_len(path)?;
        if len < seg.bytes {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                byte_offset: len,
                detail: format!("the file is {len} bytes, shorter than the {} bytes already followed", seg.bytes),
            });
        }
        if len == seg.bytes {
            return Ok(false);
        }
        let mut scanner = Scanner::open(path, seg.bytes, len)?;
        while seg.base + seg.records < target {
            match scanner.next_record() {
                Ok(Some((pos, payload))) => {
                    if seg.records == seg.index.len() as u64 * INDEX_STRIDE {
                        seg.index.push(pos);
                    }
                    seg.records += 1;
                    seg.bytes = pos + framed_len(payload.len());
                }
                Ok(None) => return Ok(false),
                Err(ScanStop::Bad { pos, detail }) => {
                    if rescans < MAX_RESCANS && file_len(path)? != len {
                        rescans += 1;
                        continue 'scan;
                    }
                    return Err(LogError::Corrupt {
                        path: path.to_path_buf(),
                        byte_offset: pos,
                        detail: format!("{detail}; record {} is below the followed end offset {target}", seg.base + seg.records),
                    });
                }
                Err(ScanStop::Io(e)) => return Err(e),
            }
        }
        return Ok(true);
    }
}
