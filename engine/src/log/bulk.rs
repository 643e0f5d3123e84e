//! Bulk appends: compressed segments written to a staging area, published by one manifest
//! write.
//!
//! [`Log::stage`] takes the append lock and opens `D/staging/`. Compressed blocks (see
//! `block`) are written there, per partition, as whole segment files named by the offset of
//! their first record, as they would be named in the partition's directory. Nothing in
//! `staging/` is visible: no reader looks there, and the manifest does not list it.
//!
//! [`Staging::seal`] closes and fsyncs every staged file and directory. [`Staging::publish`]
//! then writes the new `MANIFEST` (the old active segment of each partition that received
//! records becomes sealed as it is, unless it is empty, followed by the staged segments) —
//! this one atomic replace is the commit point — and renames the staged files into the
//! partition directories, fsyncs them, and removes `staging/`.
//!
//! Recovery ([`recover`], at every writer's open): a staged file that the manifest lists as
//! sealed, with exactly its recorded length, belongs to a publication that committed and is
//! renamed into place (the rename was interrupted); every other staged file is the debris
//! of a bulk append that never committed and is deleted. So a crash at any moment leaves
//! either none of a bulk append's records or all of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use super::block::HEADER;
use super::crash::{point, Phase};
use super::manifest::{Manifest, SealedSegment, FORMAT_VERSION};
use super::segment::{io_err, parse_segment_name, partition_dir, segment_path, sync_dir};
use super::{Log, LogError, SegState, Writer};

/// The staging directory's name inside the log directory.
pub(crate) const STAGING: &str = "staging";

/// A segment file being written in the staging area.
struct Open {
    file: File,
    path: PathBuf,
    base: u64,
    records: u64,
    bytes: u64,
}

/// One partition's staged segments.
struct StagePart {
    /// Offset of the next record staged.
    next: u64,
    open: Option<Open>,
    done: Vec<SealedSegment>,
}

/// A bulk append in progress: see the module documentation. Holds the log's append lock
/// until published or dropped; dropping it without [`Staging::publish`] leaves nothing
/// visible (call [`Staging::discard`] to remove the staged files at once).
pub struct Staging<'a> {
    log: &'a Log,
    writer: MutexGuard<'a, Writer>,
    dir: PathBuf,
    start: Vec<u64>,
    parts: Vec<StagePart>,
    /// Published or discarded: nothing for `Drop` to clean up.
    finished: bool,
}

impl Drop for Staging<'_> {
    /// Removes the staged files of a bulk append that is dropped unpublished (best effort:
    /// what remains is removed by the next open or bulk append).
    fn drop(&mut self) {
        if !self.finished {
            for part in &mut self.parts {
                part.open = None;
            }
            let _ = remove_tree(&self.dir);
        }
    }
}

impl Log {
    /// Starts a bulk append (see the `bulk` module): takes the append lock until the returned
    /// [`Staging`] is published or dropped. Any earlier staging debris is removed.
    pub(crate) fn stage(&self) -> Result<Staging<'_>, LogError> {
        if self.follower {
            return Err(LogError::ReadOnly { path: self.dir.clone() });
        }
        let writer = self.writer.lock().map_err(|_| LogError::Poisoned("an append panicked while holding the append lock".into()))?;
        if let Some(why) = &writer.poisoned {
            return Err(LogError::Poisoned(why.clone()));
        }
        let dir = self.dir.join(STAGING);
        remove_tree(&dir)?;
        fs::create_dir(&dir).map_err(|e| io_err(&dir, "create staging directory", e))?;
        for p in 0..self.partitions {
            let pdir = partition_dir(&dir, p);
            fs::create_dir(&pdir).map_err(|e| io_err(&pdir, "create staging directory", e))?;
        }
        let start = self.end_offsets();
        let parts = start.iter().map(|&next| StagePart { next, open: None, done: Vec::new() }).collect();
        Ok(Staging { log: self, writer, dir, start, parts, finished: false })
    }
}

impl Staging<'_> {
    /// End offsets before the bulk append.
    pub fn start(&self) -> &[u64] {
        &self.start
    }

    /// End offsets once published.
    pub fn ends(&self) -> Vec<u64> {
        self.parts.iter().map(|p| p.next).collect()
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.log.partitions
    }

    /// Appends framed compressed blocks holding `records` records to `partition`'s staged
    /// segments, starting a new segment file when the current one would pass the log's
    /// segment size.
    pub(crate) fn push_blocks(&mut self, partition: u32, blocks: &[u8], records: u64) -> Result<(), LogError> {
        let segment_bytes = self.log.segment_bytes;
        let part = self.parts.get_mut(partition as usize).ok_or(LogError::BadPartition { partition, partitions: self.log.partitions })?;
        if records == 0 {
            return Ok(());
        }
        if let Some(o) = &part.open {
            if o.records > 0 && o.bytes + blocks.len() as u64 > segment_bytes {
                close(part)?;
            }
        }
        if part.open.is_none() {
            let path = segment_path(&self.dir, partition, part.next);
            let mut file =
                OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| io_err(&path, "create staged segment", e))?;
            file.write_all(&HEADER).map_err(|e| io_err(&path, "write staged segment", e))?;
            part.open = Some(Open { file, path, base: part.next, records: 0, bytes: HEADER.len() as u64 });
        }
        let o = part.open.as_mut().expect("a staged segment is open");
        o.file.write_all(blocks).map_err(|e| io_err(&o.path, "write staged segment", e))?;
        o.records += records;
        o.bytes += blocks.len() as u64;
        part.next += records;
        Ok(())
    }

    /// Closes and fsyncs every staged segment and the staging directories: after this, the
    /// staged data is durable, though not yet visible.
    pub(crate) fn seal(&mut self) -> Result<(), LogError> {
        for (p, part) in self.parts.iter_mut().enumerate() {
            close(part)?;
            if !part.done.is_empty() {
                sync_dir(&partition_dir(&self.dir, p as u32))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Removes the staged files: nothing of the bulk append is stored.
    pub(crate) fn discard(mut self) -> Result<(), LogError> {
        self.finished = true;
        remove_tree(&self.dir)
    }

    /// Publishes the sealed staging area (see the module documentation); returns the new end
    /// offsets. An error before the manifest is replaced leaves nothing visible; after it (or
    /// when the replace itself failed half-way) the log refuses appends until reopened,
    /// and the reopen finishes or undoes the publication as a whole.
    pub(crate) fn publish(mut self) -> Result<Vec<u64>, LogError> {
        let ends = self.ends();
        if self.parts.iter().any(|p| p.open.is_some()) {
            self.seal()?;
        }
        let mut manifest = self.writer.manifest.clone();
        let actives: Vec<SegState> = self.log.read_state().iter().map(|ps| ps.active().clone()).collect();
        let mut touched = Vec::new();
        for (p, part) in self.parts.iter().enumerate() {
            if part.done.is_empty() {
                continue;
            }
            touched.push(p);
            let a = &actives[p];
            if a.records > 0 {
                manifest.sealed[p].push(SealedSegment { base_offset: a.base, records: a.records, bytes: a.bytes });
            }
            manifest.sealed[p].extend_from_slice(&part.done);
        }
        if touched.is_empty() {
            self.discard()?;
            return Ok(ends);
        }
        manifest.format_version = FORMAT_VERSION;
        let dir = self.log.dir.clone();
        // The handles of the active segments may point at files about to be replaced.
        for &p in &touched {
            self.writer.files[p] = None;
        }
        // From here on, the staged files may be published: only a reopen may remove them.
        self.finished = true;
        if let Err(e) = manifest.store(&dir) {
            let why = format!("publishing a bulk append failed while replacing MANIFEST ({e}); reopen the log to finish or undo it");
            self.writer.poisoned = Some(why);
            return Err(e);
        }
        point(Phase::Publish, || "MANIFEST replaced (the commit point)".into());
        self.writer.manifest = manifest;
        if let Err(e) = move_into_place(&dir, &self.dir, &touched, &self.parts) {
            let why = format!("a published bulk append could not be moved into place ({e}); reopen the log to finish it");
            self.writer.poisoned = Some(why);
            return Err(e);
        }
        let mut state = crate::sync::write(&self.log.state);
        for &p in &touched {
            let segs = &mut state[p].segments;
            if segs.last().is_some_and(|a| a.records == 0) {
                segs.pop();
            }
            for s in &self.parts[p].done {
                segs.push(SegState { base: s.base_offset, records: s.records, bytes: s.bytes, index: vec![0] });
            }
            segs.push(SegState { base: ends[p], records: 0, bytes: 0, index: vec![0] });
        }
        Ok(ends)
    }
}

/// Closes `part`'s open staged segment, fsynced.
fn close(part: &mut StagePart) -> Result<(), LogError> {
    if let Some(o) = part.open.take() {
        o.file.sync_data().map_err(|e| io_err(&o.path, "fsync staged segment", e))?;
        part.done.push(SealedSegment { base_offset: o.base, records: o.records, bytes: o.bytes });
    }
    Ok(())
}

/// Renames the staged segments of `touched` partitions into their partition directories,
/// fsyncs those, and removes the staging directory.
fn move_into_place(dir: &Path, staging: &Path, touched: &[usize], parts: &[StagePart]) -> Result<(), LogError> {
    for &p in touched {
        for s in &parts[p].done {
            let from = segment_path(staging, p as u32, s.base_offset);
            let to = segment_path(dir, p as u32, s.base_offset);
            fs::rename(&from, &to).map_err(|e| io_err(&from, "move staged segment into place", e))?;
            point(Phase::Publish, || format!("moved {} into place", to.display()));
        }
        sync_dir(&partition_dir(dir, p as u32))?;
        point(Phase::Publish, || format!("partition {p}'s directory fsync'd"));
    }
    remove_tree(staging)?;
    point(Phase::Publish, || "staging directory removed".into());
    sync_dir(dir)?;
    point(Phase::Publish, || "log directory fsync'd".into());
    Ok(())
}

/// Removes `dir` and everything in it, if it exists.
fn remove_tree(dir: &Path) -> Result<(), LogError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir, "remove staging directory", e)),
    }
}

/// At a writer's open, once the manifest is loaded: finishes a committed publication whose
/// renames a crash interrupted, and deletes the staged files of one that never committed.
/// Returns whether there was anything to do.
pub(crate) fn recover(dir: &Path, manifest: &Manifest) -> Result<bool, LogError> {
    let staging = dir.join(STAGING);
    let entries = match fs::read_dir(&staging) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(&staging, "list staging directory", e)),
    };
    let (mut moved, mut dropped) = (0usize, 0usize);
    for entry in entries {
        let entry = entry.map_err(|e| io_err(&staging, "list staging directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(p) = name.strip_prefix('p').and_then(|d| d.parse::<u32>().ok()).filter(|&p| p < manifest.partitions) else {
            continue;
        };
        let pdir = entry.path();
        let files = fs::read_dir(&pdir).map_err(|e| io_err(&pdir, "list staging directory", e))?;
        let mut moved_here = false;
        for f in files {
            let f = f.map_err(|e| io_err(&pdir, "list staging directory", e))?;
            let Some(base) = parse_segment_name(&f.file_name().to_string_lossy()) else { continue };
            let from = f.path();
            let len = fs::metadata(&from).map_err(|e| io_err(&from, "stat staged segment", e))?.len();
            match manifest.sealed[p as usize].iter().find(|s| s.base_offset == base) {
                Some(s) if s.bytes == len => {
                    let to = segment_path(dir, p, base);
                    fs::rename(&from, &to).map_err(|e| io_err(&from, "move staged segment into place", e))?;
                    point(Phase::Recover, || format!("moved {} into place", to.display()));
                    moved += 1;
                    moved_here = true;
                }
                // A published segment whose staged copy is not the length the manifest
                // recorded: neither moving nor deleting it is safe (it holds acknowledged
                // records, damaged), so the open stops and names it.
                Some(s) => {
                    return Err(LogError::SegmentInvalid {
                        path: from,
                        detail: format!(
                            "this staged segment of a published bulk append is {len} bytes but MANIFEST records {} bytes; \
                             it is left in place: restore it from a backup; the log cannot open without it",
                            s.bytes
                        ),
                    });
                }
                None => dropped += 1,
            }
        }
        if moved_here {
            sync_dir(&partition_dir(dir, p))?;
            point(Phase::Recover, || format!("partition {p}'s directory fsync'd"));
        }
    }
    remove_tree(&staging)?;
    point(Phase::Recover, || "staging directory removed".into());
    sync_dir(dir)?;
    point(Phase::Recover, || "log directory fsync'd".into());
    if moved > 0 {
        eprintln!("lambdaflow log {}: finished a published bulk append: moved {moved} staged segment(s) into place", dir.display());
    }
    if dropped > 0 {
        eprintln!(
            "lambdaflow log {}: removed {dropped} staged segment(s) of a bulk append that never committed (nothing of it was stored)",
            dir.display()
        );
    }
    Ok(true)
}
