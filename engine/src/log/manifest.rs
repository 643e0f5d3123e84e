//! The `MANIFEST` file: the log's configuration and every partition's sealed segments.
//!
//! It is replaced atomically: write `MANIFEST.tmp`, fsync it, rename it over `MANIFEST`,
//! fsync the log directory. A `MANIFEST.tmp` found at open is the debris of a crash in
//! the middle of that sequence and is deleted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::io_err;
use super::LogError;

/// Version written once a sealed segment may be compressed (see `block`): a build that
/// reads only plain segments refuses such a log instead of misreading it.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Version of a log whose segments are all plain; still written for new logs, so that
/// older builds open them, and read by this one.
pub(crate) const FORMAT_VERSION_PLAIN: u32 = 1;
/// File name of the manifest inside the log directory.
pub(crate) const MANIFEST: &str = "MANIFEST";
/// File name of the manifest being written.
pub(crate) const MANIFEST_TMP: &str = "MANIFEST.tmp";

/// One sealed (immutable) segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedSegment {
    /// Offset of its first record (also its file name).
    pub base_offset: u64,
    /// Number of records in it.
    pub records: u64,
    /// Exact length of the file in bytes.
    pub bytes: u64,
}

/// Contents of `MANIFEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// [`FORMAT_VERSION_PLAIN`] or [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Number of partitions.
    pub partitions: u32,
    /// Size at which an active segment is sealed.
    pub segment_bytes: u64,
    /// Per partition, its sealed segments in offset order.
    pub sealed: Vec<Vec<SealedSegment>>,
}

impl Manifest {
    /// A manifest for a new, empty log.
    pub(crate) fn new(partitions: u32, segment_bytes: u64) -> Manifest {
        Manifest { format_version: FORMAT_VERSION_PLAIN, partitions, segment_bytes, sealed: vec![Vec::new(); partitions as usize] }
    }

    /// Offset of the first record after partition `p`'s sealed segments.
    pub(crate) fn sealed_end(&self, p: usize) -> u64 {
        self.sealed[p].last().map_or(0, |s| s.base_offset + s.records)
    }

    /// Checks internal consistency: version, sizes, contiguous non-empty segments.
    fn validate(&self, path: &Path) -> Result<(), LogError> {
        let invalid = |detail: String| LogError::ManifestInvalid { path: path.to_path_buf(), detail };
        if !(FORMAT_VERSION_PLAIN..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(invalid(format!(
                "unsupported format_version {} (this build reads {FORMAT_VERSION_PLAIN} and {FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.partitions == 0 || self.segment_bytes == 0 {
            return Err(invalid("partitions and segment_bytes must both be at least 1".into()));
        }
        if self.sealed.len() != self.partitions as usize {
            return Err(invalid(format!("{} partitions declared but {} sealed-segment lists present", self.partitions, self.sealed.len())));
        }
        for (p, segs) in self.sealed.iter().enumerate() {
            let mut next = 0;
            for s in segs {
                if s.base_offset != next || s.records == 0 || s.bytes == 0 {
                    return Err(invalid(format!(
                        "partition {p}: sealed segment {s:?} does not follow offset {next} \
                         or is empty"
                    )));
                }
                next = s.base_offset + s.records;
            }
        }
        Ok(())
    }

    /// Reads and validates `dir/MANIFEST`; `Ok(None)` when it does not exist.
    pub(crate) fn load(dir: &Path) -> Result<Option<Manifest>, LogError> {
        let path = dir.join(MANIFEST);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "read manifest", e)),
        };
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| LogError::ManifestInvalid { path: path.clone(), detail: format!("not a valid manifest: {e}") })?;
        m.validate(&path)?;
        Ok(Some(m))
    }

    /// Atomically replaces `dir/MANIFEST` with `self` (tmp, fsync, rename, fsync dir).
    pub(crate) fn store(&self, dir: &Path) -> Result<(), LogError> {
        let tmp: PathBuf = dir.join(MANIFEST_TMP);
        let path = dir.join(MANIFEST);
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| LogError::ManifestInvalid { path: path.clone(), detail: format!("cannot serialise: {e}") })?;
        text.push(b'\n');
        Ok(crate::durable::replace(&path, &tmp, &text)?)
    }

    /// Deletes a leftover `MANIFEST.tmp` (from a crash mid-update); returns whether one existed.
    pub(crate) fn remove_stale_tmp(dir: &Path) -> Result<bool, LogError> {
        Ok(crate::durable::remove_if_exists(&dir.join(MANIFEST_TMP))?)
    }
}
