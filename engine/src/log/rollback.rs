//! Crash-safe removal of unacknowledged records at the tail of partitions
//! ([`Log::rollback_to`](super::Log::rollback_to)).
//!
//! The intent `D/ROLLBACK` (JSON: the target end offset of every partition) is made durable
//! first, like the manifest (write `ROLLBACK.tmp`, fsync, rename, fsync the directory). Then
//! the manifest is shortened, segment files after each target's segment are deleted (and the
//! partition directory fsynced), and the segment holding each target is truncated at the byte
//! where the target record starts (and fsynced). Finally `ROLLBACK` is removed and the
//! directory fsynced.
//!
//! Every step is computed from what is on disk and is idempotent, so when `open` finds a
//! `ROLLBACK` it simply runs the same steps again, whatever intermediate state a crash left
//! (manifest old or new, files deleted or not, segment truncated or not). A `ROLLBACK.tmp`
//! without `ROLLBACK` means the crash came before anything was changed: it is deleted and the
//! log is left as it was.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::segment::{io_err, parse_segment_name, partition_dir, segment_path, sync_dir, ScanStop, Scanner};
use super::LogError;

/// File name of the rollback intent inside the log directory.
pub(crate) const ROLLBACK: &str = "ROLLBACK";
/// File name of the rollback intent being written.
pub(crate) const ROLLBACK_TMP: &str = "ROLLBACK.tmp";
/// Version written to and accepted from `ROLLBACK`.
const ROLLBACK_FORMAT_VERSION: u32 = 1;

/// Contents of `ROLLBACK`.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    /// Always [`ROLLBACK_FORMAT_VERSION`].
    format_version: u32,
    /// Per partition, the end offset to roll back to.
    ends: Vec<u64>,
}

/// A known record start in a segment, from the in-memory state: record `base + rel` starts at
/// byte `pos` of the segment whose first offset is `base`. Saves scanning from byte 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hint {
    pub(crate) base: u64,
    pub(crate) rel: u64,
    pub(crate) pos: u64,
}

/// Counts the durable steps of a rollback; in tests, can stop after step `k` to simulate a
/// crash there (see [`crash_after_step`]).
pub(crate) struct Steps {
    done: usize,
}

impl Steps {
    pub(crate) fn new() -> Steps {
        Steps { done: 0 }
    }

    /// Records that one more step is durable.
    fn step(&mut self) -> Result<(), LogError> {
        self.done += 1;
        #[cfg(test)]
        if crash_hook_fires(self.done) {
            return Err(LogError::Io {
                path: std::path::PathBuf::from(ROLLBACK),
                source: io::Error::other(format!("simulated crash after rollback step {}", self.done)),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    static CRASH_AFTER_STEP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Test hook: the next rollback step numbered `k` (1-based, counted per rollback or per
/// recovery) on this thread fails as a simulated crash, leaving the directory as it is. The
/// hook fires once and then clears itself.
#[cfg(test)]
pub(crate) fn crash_after_step(k: Option<usize>) {
    CRASH_AFTER_STEP.with(|c| c.set(k));
}

#[cfg(test)]
fn crash_hook_fires(done: usize) -> bool {
    CRASH_AFTER_STEP.with(|c| {
        let fire = c.get() == Some(done);
        if fire {
            c.set(None);
        }
        fire
    })
}

/// Makes the intent to roll back to `ends` durable: `ROLLBACK.tmp`, fsync, rename, fsync dir.
pub(crate) fn write_intent(dir: &Path, ends: &[u64], steps: &mut Steps) -> Result<(), LogError> {
    let tmp = dir.join(ROLLBACK_TMP);
    let path = dir.join(ROLLBACK);
    let intent = Intent { format_version: ROLLBACK_FORMAT_VERSION, ends: ends.to_vec() };
    let mut text = serde_json::to_vec(&intent)
        .map_err(|e| LogError::RollbackInvalid { path: path.clone(), detail: format!("cannot serialise the rollback intent: {e}") })?;
    text.push(b'\n');
    crate::durable::write_synced(&tmp, &text)?;
    steps.step()?;
    crate::durable::rename_synced(&tmp, &path)?;
    steps.step()
}

/// Removes the intent once the rollback is complete, and fsyncs the directory.
pub(crate) fn remove_intent(dir: &Path, steps: &mut Steps) -> Result<(), LogError> {
    let path = dir.join(ROLLBACK);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path, "remove completed rollback intent", e)),
    }
    sync_dir(dir)?;
    steps.step()
}

/// Rolls every partition `p` back to `ends[p]` records, starting from `manifest` (the one on
/// disk). Idempotent: safe to run again on any state an interrupted run left behind.
///
/// Per partition: the sealed segments ending at or before the target are kept, the next
/// segment (the one holding the target record, or the active one) becomes the active segment,
/// every later segment file is deleted, and the new active segment is truncated where the
/// target record starts. `ends[p]` must not exceed the records the partition holds.
pub(crate) fn apply(dir: &Path, manifest: &Manifest, ends: &[u64], hints: &[Hint], steps: &mut Steps) -> Result<(), LogError> {
    let mut shortened = manifest.clone();
    for (sealed, &target) in shortened.sealed.iter_mut().zip(ends) {
        let keep = sealed.partition_point(|s| s.base_offset + s.records <= target);
        sealed.truncate(keep);
    }
    if shortened != *manifest {
        shortened.store(dir)?;
        steps.step()?;
    }
    for (p, &target) in ends.iter().enumerate() {
        let partition = p as u32;
        let active_base = shortened.sealed_end(p);
        let pdir = partition_dir(dir, partition);
        let later = segments_after(&pdir, active_base)?;
        for &base in later.iter().rev() {
            let path = segment_path(dir, partition, base);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, "remove segment after the rollback target", e)),
            }
            steps.step()?;
        }
        if !later.is_empty() {
            sync_dir(&pdir)?;
            steps.step()?;
        }
        let hint = hints.get(p).copied().filter(|h| h.base == active_base);
        if truncate_at_record(&segment_path(dir, partition, active_base), target - active_base, hint)? {
            steps.step()?;
        }
    }
    Ok(())
}

/// Base offsets of the segment files in `pdir` after `base`, ascending (none if `pdir` does
/// not exist).
fn segments_after(pdir: &Path, base: u64) -> Result<Vec<u64>, LogError> {
    let entries = match fs::read_dir(pdir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(pdir, "list partition directory", e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(pdir, "list partition directory", e))?;
        if let Some(b) = parse_segment_name(&entry.file_name().to_string_lossy()) {
            if b > base {
                out.push(b);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Where record `rel` of the segment `path` (of `len` bytes) starts, scanning from `hint` if it
/// is usable. Fewer than `rel` valid records is corruption of acknowledged data: refused,
/// naming the file and byte.
fn record_start(path: &Path, len: u64, rel: u64, hint: Option<Hint>) -> Result<u64, LogError> {
    let (mut cur, start) = hint.filter(|h| h.rel <= rel && h.pos <= len).map_or((0, 0), |h| (h.rel, h.pos));
    if cur == rel {
        return Ok(start);
    }
    let mut scanner = Scanner::open(path, start, len)?;
    let corrupt = |byte_offset: u64, detail: String| LogError::Corrupt {
        path: path.to_path_buf(),
        byte_offset,
        detail: format!("{detail}; rolling back to record {rel} of this segment needs every record before it"),
    };
    while cur < rel {
        match scanner.next_record() {
            Ok(Some(_)) => cur += 1,
            Ok(None) => return Err(corrupt(scanner.position(), format!("segment ends after {cur} records"))),
            Err(ScanStop::Bad { pos, detail }) => return Err(corrupt(pos, detail)),
            Err(ScanStop::Io(e)) => return Err(e),
        }
    }
    Ok(scanner.position())
}

/// Length of the segment at `path`; `None` if it does not exist.
fn segment_len(path: &Path) -> Result<Option<u64>, LogError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "stat segment to roll back", e)),
    }
}

/// Turns `hint` (a record start at or before `target` in partition `partition`'s segment
/// `hint.base`) into the exact byte where record `target` starts, checking every record in
/// between. Lets [`Log::rollback_to`](super::Log::rollback_to) refuse a damaged segment before
/// it changes anything.
pub(crate) fn locate(dir: &Path, partition: u32, target: u64, hint: Hint) -> Result<Hint, LogError> {
    let path = segment_path(dir, partition, hint.base);
    let rel = target - hint.base;
    let pos = match segment_len(&path)? {
        Some(len) => record_start(&path, len, rel, Some(hint))?,
        None if rel == 0 => 0,
        None => return Err(io_err(&path, "open segment to roll back", io::ErrorKind::NotFound.into())),
    };
    Ok(Hint { base: hint.base, rel, pos })
}

/// Truncates the segment at `path` where its record number `rel` starts (and fsyncs it);
/// returns whether it had to change. A missing file is fine when `rel == 0`.
fn truncate_at_record(path: &Path, rel: u64, hint: Option<Hint>) -> Result<bool, LogError> {
    let len = match segment_len(path)? {
        Some(len) => len,
        None if rel == 0 => return Ok(false),
        None => return Err(io_err(path, "open segment to roll back", io::ErrorKind::NotFound.into())),
    };
    let pos = record_start(path, len, rel, hint)?;
    if len <= pos {
        return Ok(false);
    }
    let f = OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, "open segment to roll back", e))?;
    f.set_len(pos).and_then(|()| f.sync_all()).map_err(|e| io_err(path, "truncate segment at the rollback target", e))?;
    Ok(true)
}

/// At open, before the usual checks: deletes a stale `ROLLBACK.tmp` (a rollback interrupted
/// before it changed anything), and completes an interrupted rollback if `ROLLBACK` exists.
pub(crate) fn recover(dir: &Path) -> Result<(), LogError> {
    let tmp = dir.join(ROLLBACK_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => {
            eprintln!(
                "lambdaflow log {}: removed a stale ROLLBACK.tmp (a rollback interrupted before it changed anything; \
                 nothing was rolled back)",
                dir.display()
            );
            sync_dir(dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp, "remove stale rollback intent", e)),
    }
    let path = dir.join(ROLLBACK);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&path, "read rollback intent", e)),
    };
    let invalid = |detail: String| LogError::RollbackInvalid { path: path.clone(), detail };
    let intent: Intent = serde_json::from_slice(&text).map_err(|e| invalid(format!("not a valid rollback intent: {e}")))?;
    if intent.format_version != ROLLBACK_FORMAT_VERSION {
        return Err(invalid(format!("unsupported format_version {} (this build reads {ROLLBACK_FORMAT_VERSION})", intent.format_version)));
    }
    let manifest = Manifest::load(dir)?.ok_or_else(|| invalid("an interrupted rollback is pending but MANIFEST is missing".into()))?;
    if intent.ends.len() != manifest.partitions as usize {
        return Err(invalid(format!("{} end offsets for a log of {} partitions", intent.ends.len(), manifest.partitions)));
    }
    let mut steps = Steps::new();
    apply(dir, &manifest, &intent.ends, &[], &mut steps)?;
    remove_intent(dir, &mut steps)?;
    eprintln!("lambdaflow log {}: completed an interrupted rollback to end offsets {:?}", dir.display(), intent.ends);
    Ok(())
}
