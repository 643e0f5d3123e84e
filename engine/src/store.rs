//! The batch view store: immutable, versioned batch views in the data directory.
//!
//! Layout under `DIR/views/`:
//!
//! ```text
//! v000007/META.json          job, job version, cut, created time, per-view record counts
//! v000007/view.<name>.bin    one consolidated batch view
//! v000007/seed.<name>.bin    one operator's input at the cut (speed-layer seed): shard 0
//! v000007/seed.<name>.pI.bin  shard I of it (one shard per worker of the run)
//! CURRENT                    "v000007": the published version
//! ```
//!
//! A seed is written in shards, one per worker of the run, each a bincode `Vec` of rows,
//! written in parallel; reading it joins them. A seed **shared** with a view (META's
//! `seed_views`) has no file: its rows are that view's file (see `AnySeed`).
//!
//! A version directory is written under a temporary name, every file fsync'd, renamed into
//! place, and only then is `CURRENT` replaced (write `CURRENT.tmp`, fsync, rename, fsync the
//! directory). A reader that follows `CURRENT` therefore sees a complete version or the
//! previous one, never a mix. Files are framed `LFV1 | len u64 | crc32c u32 | body` and a
//! file whose checksum fails is refused with its path.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::durable::{self, CheckedError};
use crate::error::{Error, Result};
use lambdaflow_operators::runtime::{rows_header, VARINT_ROWS};

const MAGIC: &[u8; 4] = b"LFV1";

/// What a batch run records about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BatchMeta {
    /// Version number, increasing with each published batch run.
    pub version: u64,
    /// The job's name.
    pub job: String,
    /// The job's version that computed these views.
    pub job_version: u32,
    /// The cut: one offset per partition; the views cover exactly the log before it.
    pub cut: Vec<u64>,
    /// Events covered (the sum of the cut).
    pub events: u64,
    /// When the run started, ms since the epoch.
    pub started_ms: u64,
    /// When the run finished, ms since the epoch.
    pub finished_ms: u64,
    /// Record count of each view.
    pub views: Vec<(String, usize)>,
    /// Record count of each seed.
    pub seeds: Vec<(String, usize)>,
    /// Shards of each seed that is not shared: `seed.NAME.bin` and `seed.NAME.pI.bin` for
    /// I in 1..seed_shards (0 or 1: one file). Format 2 writes one per worker of the run;
    /// format 1 wrote one per process.
    #[serde(default)]
    pub seed_shards: usize,
    /// Seeds shared with a view, `(seed, view)`: such a seed has no file, its rows are the
    /// view's file (a view's `((K, ()), R)` or `((K, V), isize)` rows encode exactly as the
    /// seed's `(K, R)` or `((K, V), isize)` rows). Format 2.
    #[serde(default)]
    pub seed_views: Vec<(String, String)>,
    /// The layout of the version: 1 (absent in versions written before it was recorded):
    /// one seed file per process; 2: seed shards per worker and shared seeds; 3: rows
    /// encoded with variable-length integers (`lambdaflow_operators::runtime::VARINT_ROWS`).
    /// A version of a later format is refused, not misread.
    #[serde(default = "format_1")]
    pub format: u32,
}

/// The batch version format this build writes, and the newest it reads.
pub(crate) const FORMAT: u32 = 3;

impl BatchMeta {
    /// Whether this build reads the version's format (a newer lambdaflow may have written it).
    pub fn readable(&self) -> bool {
        self.format <= FORMAT
    }
}

fn format_1() -> u32 {
    1
}

/// The batch view store of one data directory.
pub struct ViewStore {
    dir: PathBuf,
}

/// A seed-shard staging directory untouched this long belongs to no running batch run.
pub(crate) const SHARDS_ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// The version of a published version directory's name (`v000007`).
fn version_of(name: &str) -> Option<u64> {
    name.strip_prefix('v').and_then(|n| n.parse::<u64>().ok())
}

/// The version and owning process of a pending version directory's name
/// (`.tmp-v000007-PID-K`).
fn pending_of(name: &str) -> Option<(u64, u32)> {
    let mut parts = name.strip_prefix(".tmp-v")?.split('-');
    let version = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    Some((version, pid))
}

/// Whether the pending version in `dir` has no owner any more: its `OWNER` lock can be
/// taken (the process holding it is gone, wherever it ran). A directory without the file
/// is one being created, unless it is older than [`SHARDS_ABANDONED_AFTER`].
fn abandoned(dir: &Path) -> bool {
    match fs::OpenOptions::new().write(true).open(dir.join(OWNER)) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => idle_longer_than(dir, SHARDS_ABANDONED_AFTER),
    }
}

/// Whether `path` was last modified more than `limit` ago.
fn idle_longer_than(path: &Path, limit: std::time::Duration) -> bool {
    let idle = fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    idle.is_some_and(|idle| idle > limit)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    Ok(durable::sync_dir(dir)?)
}

/// Writes `body` as a checked file (see [`durable::write_checked`]), fsync'd.
pub(crate) fn write_framed(path: &Path, body: &[u8]) -> Result<()> {
    Ok(durable::write_checked(path, MAGIC, body)?)
}

/// Reads a checked file; a damaged or half-written one is refused with its path.
fn read_framed(path: &Path) -> Result<Vec<u8>> {
    durable::read_checked(path, MAGIC).map_err(|e| match e {
        CheckedError::Io(f) => f.into(),
        CheckedError::Damaged(detail) => Error::CorruptView { path: path.to_path_buf(), detail },
    })
}

fn safe_name(name: &str) -> Result<&str> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-') {
        return Err(Error::Usage(format!("view or seed name `{name}` must be ASCII letters, digits, _ . -")));
    }
    Ok(name)
}

/// The file of view `name`.
fn view_file(name: &str) -> Result<String> {
    Ok(format!("view.{}.bin", safe_name(name)?))
}

/// Files of rows (each a row count, then its rows; see `rows_header`) joined into one: the
/// counts added, the rows concatenated. Every file has its 8-byte count and the same
/// encoding (what [`ViewStore::read_seed_shards`] checks).
pub(crate) fn join_rows<B: AsRef<[u8]>>(files: &[B]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(files.iter().map(|f| f.as_ref().len()).sum());
    joined.extend_from_slice(&[0; 8]);
    let (mut rows, mut var) = (0u64, false);
    for file in files {
        let file = file.as_ref();
        let (n, v) = rows_header(u64::from_le_bytes(file[..8].try_into().expect("a checked row count")));
        (rows, var) = (rows.saturating_add(n), v);
        joined.extend_from_slice(&file[8..]);
    }
    joined[..8].copy_from_slice(&(rows | if var { VARINT_ROWS } else { 0 }).to_le_bytes());
    joined
}

/// The file of shard `index` of seed `name` (shard 0 is `seed.NAME.bin`).
fn shard_file(name: &str, index: usize) -> Result<String> {
    Ok(match index {
        0 => format!("seed.{}.bin", safe_name(name)?),
        i => format!("seed.{}.p{i}.bin", safe_name(name)?),
    })
}

/// Writes shard `index` of seed `name` (a bincode `Vec` of rows) into a run's shard
/// directory ([`ViewStore::shard_dir`]), fsync'd: in a run across processes, the shards of
/// the workers of every process but 0, adopted by process 0 when it publishes.
pub(crate) fn write_seed_shard(shards: &Path, name: &str, index: usize, body: &[u8]) -> Result<()> {
    // Created when first written, so its age tells how long it has been idle (see `gc`).
    fs::create_dir_all(shards).map_err(Error::io(shards, "create directory"))?;
    write_framed(&shards.join(shard_file(name, index)?), body)?;
    fsync_dir(shards)
}

/// A batch version being written; becomes visible only through [`ViewStore::publish`].
pub struct PendingVersion {
    tmp: PathBuf,
    version: u64,
    /// `tmp/OWNER`, exclusively locked for the life of this value: another process (on this
    /// machine or on another one sharing the directory) sees a pending version whose owner
    /// lock it can take as abandoned, and only then removes it.
    owner: Option<fs::File>,
    published: bool,
}

/// The owner lock file inside a pending version's directory.
const OWNER: &str = "OWNER";

impl Drop for PendingVersion {
    /// A version that was never published is removed: a failed run leaves nothing behind.
    fn drop(&mut self) {
        if !self.published {
            drop(self.owner.take());
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

impl PendingVersion {
    /// The version number this will publish as.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes one view.
    pub fn write_view(&self, name: &str, body: &[u8]) -> Result<()> {
        sync_written(self.write_unsynced(name, None, body)?)
    }

    /// Writes one seed in a single file (shard 0 of 1).
    pub fn write_seed(&self, name: &str, body: &[u8]) -> Result<()> {
        self.write_seed_part(name, 0, body)
    }

    /// Writes shard `index` of seed `name`. Shards are independent files, written in
    /// parallel; META's `seed_shards` says how many a seed has.
    pub fn write_seed_part(&self, name: &str, index: usize, body: &[u8]) -> Result<()> {
        sync_written(self.write_unsynced(name, Some(index), body)?)
    }

    /// [`Self::write_view`] (`seed: None`) or [`Self::write_seed_part`] without the fsync:
    /// the caller fsyncs the returned file (with [`sync_written`], on another thread while it
    /// writes the next one) before it publishes the version.
    pub(crate) fn write_unsynced(&self, name: &str, seed: Option<usize>, body: &[u8]) -> Result<Written> {
        let file = match seed {
            None => view_file(name)?,
            Some(index) => shard_file(name, index)?,
        };
        let path = self.tmp.join(file);
        let f = durable::write_checked_unsynced(&path, MAGIC, body)?;
        Ok(Written { path, file: f })
    }
}

/// A file of a pending version written but not yet fsync'd ([`PendingVersion::write_unsynced`]).
pub(crate) struct Written {
    path: PathBuf,
    file: fs::File,
}

/// Fsyncs a file [`PendingVersion::write_unsynced`] wrote.
pub(crate) fn sync_written(written: Written) -> Result<()> {
    written.file.sync_all().map_err(Error::io(&written.path, "fsync"))
}

impl PendingVersion {
    /// Moves shard `index` of seed `name` from a run's shard directory into this version
    /// (see [`write_seed_shard`]).
    pub fn adopt_seed_shard(&self, shards: &Path, name: &str, index: usize) -> Result<()> {
        let file = shard_file(name, index)?;
        let from = shards.join(&file);
        fs::rename(&from, self.tmp.join(&file)).map_err(Error::io(&from, "move seed shard into the version"))
    }
}

impl ViewStore {
    /// The store under `data_dir/views`, created if missing.
    pub fn open(data_dir: &Path) -> Result<ViewStore> {
        let dir = data_dir.join("views");
        fs::create_dir_all(&dir).map_err(Error::io(&dir, "create directory"))?;
        Ok(ViewStore { dir })
    }

    fn version_dir(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:06}"))
    }

    /// The published version, if any.
    pub fn current(&self) -> Result<Option<u64>> {
        let path = self.dir.join("CURRENT");
        match fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim();
                let v = s
                    .strip_prefix('v')
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| Error::CorruptView { path: path.clone(), detail: format!("`{s}` is not a version") })?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, "read")(e)),
        }
    }

    /// The published version's metadata, if any.
    pub fn current_meta(&self) -> Result<Option<BatchMeta>> {
        match self.current()? {
            None => Ok(None),
            Some(v) => self.meta(v).map(Some),
        }
    }

    /// A version's metadata, of any format (the caller checks [`BatchMeta::readable`]).
    pub fn meta_of_any_format(&self, version: u64) -> Result<BatchMeta> {
        let path = self.version_dir(version).join("META.json");
        let bytes = read_framed(&path)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptView { path, detail: e.to_string() })
    }

    /// A version's metadata.
    pub fn meta(&self, version: u64) -> Result<BatchMeta> {
        let path = self.version_dir(version).join("META.json");
        let meta = self.meta_of_any_format(version)?;
        if !meta.readable() {
            return Err(Error::CorruptView {
                path,
                detail: format!(
                    "batch version format {} is newer than this build reads (up to {FORMAT}): run a newer lambdaflow",
                    meta.format
                ),
            });
        }
        Ok(meta)
    }

    /// Reads a view of a version.
    pub fn read_view(&self, version: u64, name: &str) -> Result<Option<Vec<u8>>> {
        self.read_opt(&self.version_dir(version).join(view_file(name)?))
    }

    /// Reads a seed of a version: one file of rows (a little-endian u64 row count, then the
    /// rows; see `lambdaflow_operators::runtime::rows_header`). A seed is in shards
    /// (`seed.NAME.bin`, `seed.NAME.p1.bin`, ...: one per worker, or in format 1 one per
    /// process); they are joined into one file (the counts added, the rows concatenated;
    /// seeds need no order). A seed shared with a view is that view's file. The rows must
    /// add up to what META records.
    pub fn read_seed(&self, version: u64, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_seed_shards(version, name)?.map(|mut shards| match shards.len() {
            1 => shards.pop().expect("one shard"),
            _ => join_rows(&shards),
        }))
    }

    /// [`ViewStore::read_seed`]'s shards, each a whole file of rows, not joined (a reader
    /// with several workers can give each its own shards). Every shard has its row count
    /// and the same row encoding, and the counts add up to what META records.
    pub fn read_seed_shards(&self, version: u64, name: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let dir = self.version_dir(version);
        let first = dir.join(shard_file(name, 0)?);
        let meta = match self.meta(version) {
            Ok(meta) => meta,
            // No version, no seed (the caller decides whether that is an error).
            Err(_) if !dir.exists() => return Ok(None),
            Err(e) => return Err(e),
        };
        // The row count, and whether the rows are variable-length encoded (format 3).
        let count = |b: &[u8], path: &Path| -> Result<(u64, bool)> {
            b.get(..8)
                .map(|h| rows_header(u64::from_le_bytes(h.try_into().expect("8 bytes"))))
                .ok_or_else(|| Error::CorruptView { path: path.to_path_buf(), detail: "a seed file shorter than its row count".into() })
        };
        let (shards, path) = if let Some((_, view)) = meta.seed_views.iter().find(|(s, _)| s == name) {
            let path = dir.join(view_file(view)?);
            let bytes = self.read_opt(&path)?.ok_or_else(|| Error::CorruptView {
                path: path.clone(),
                detail: format!("seed `{name}` is shared with view `{view}`, whose file is missing"),
            })?;
            count(&bytes, &path)?;
            (vec![bytes], path)
        } else {
            let Some(head) = self.read_opt(&first)? else { return Ok(None) };
            let var = count(&head, &first)?.1;
            let mut shards = vec![head];
            for p in 1..meta.seed_shards.max(1) {
                let path = dir.join(shard_file(name, p)?);
                let shard = self.read_opt(&path)?.ok_or_else(|| Error::CorruptView {
                    path: path.clone(),
                    detail: format!("seed shard missing: batch version {version} has {} shards of every seed", meta.seed_shards),
                })?;
                if count(&shard, &path)?.1 != var {
                    // One run writes every shard of a seed in one encoding.
                    return Err(Error::CorruptView {
                        path,
                        detail: format!("seed shard encodes its rows differently from {}", first.display()),
                    });
                }
                shards.push(shard);
            }
            (shards, first)
        };
        if let Some((_, rows)) = meta.seeds.iter().find(|(n, _)| n == name) {
            let mut got = 0;
            for shard in &shards {
                got = count(shard, &path)?.0.saturating_add(got);
            }
            if got != *rows as u64 {
                return Err(Error::CorruptView {
                    path,
                    detail: format!("seed `{name}` has {got} rows in its files, but META records {rows}"),
                });
            }
        }
        Ok(Some(shards))
    }

    fn read_opt(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        if !path.exists() {
            return Ok(None);
        }
        read_framed(path).map(Some)
    }

    /// The directory where the processes of run `run` stage their seed shards (created when
    /// the first shard is written). [`ViewStore::gc`] removes it once it has been idle for
    /// [`SHARDS_ABANDONED_AFTER`].
    pub fn shard_dir(&self, run: &str) -> Result<PathBuf> {
        Ok(self.dir.join(format!(".tmp-shards-{}", safe_name(run)?)))
    }

    /// The newest published version whose metadata satisfies `pred`, whether or not it is
    /// current (a version published late does not become current: see `publish`).
    pub fn find_published(&self, pred: impl Fn(&BatchMeta) -> bool) -> Result<Option<BatchMeta>> {
        let mut versions: Vec<u64> = self.names()?.iter().filter_map(|n| version_of(n)).collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        for v in versions {
            // A version removed meanwhile (gc) is skipped, not an error.
            if let Ok(meta) = self.meta(v) {
                if pred(&meta) {
                    return Ok(Some(meta));
                }
            }
        }
        Ok(None)
    }

    /// The names of the store directory's entries.
    fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Error::io(&self.dir, "list"))? {
            names.push(entry.map_err(Error::io(&self.dir, "list"))?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Holds the store's lock (`views/LOCK`) for the life of the guard. Every process that
    /// allocates, publishes or removes versions takes it: the server, a `batch` command, a
    /// batch `worker` started by hand. Short: held for directory operations only.
    fn lock(&self) -> Result<fs::File> {
        let path = self.dir.join("LOCK");
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(Error::io(&path, "open"))?;
        f.lock().map_err(Error::io(&path, "lock"))?;
        Ok(f)
    }

    /// Starts writing the next version: after the highest one on disk, published or
    /// pending (a `.tmp-vN-PID-K` directory whose `OWNER` lock is held keeps its number; an
    /// abandoned one is removed), and after any this process has reserved. Allocation
    /// happens under the store's lock, so two batch runs, in this process or any other,
    /// never share a number or a temporary directory.
    pub fn begin(&self) -> Result<PendingVersion> {
        // Highest version reserved by this process, per store directory.
        static RESERVED: Mutex<BTreeMap<PathBuf, u64>> = Mutex::new(BTreeMap::new());
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let _store = self.lock()?;
        let mut reserved_all = crate::sync::lock(&RESERVED);
        let reserved = reserved_all.entry(self.dir.clone()).or_insert(0);
        let mut highest = self.current()?.unwrap_or(0).max(*reserved);
        for name in self.names()? {
            if let Some(v) = version_of(&name) {
                highest = highest.max(v);
            } else if let Some((v, _)) = pending_of(&name) {
                let path = self.dir.join(&name);
                if abandoned(&path) {
                    // Its owner is gone: nobody will finish it, and its number is free.
                    fs::remove_dir_all(&path).map_err(Error::io(&path, "remove an abandoned pending version"))?;
                } else {
                    highest = highest.max(v);
                }
            }
        }
        let version = highest + 1;
        *reserved = version;
        drop(reserved_all);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-v{version:06}-{}-{n}", std::process::id()));
        fs::create_dir(&tmp).map_err(Error::io(&tmp, "create directory"))?;
        let mut pending = PendingVersion { tmp, version, owner: None, published: false };
        let owner_path = pending.tmp.join(OWNER);
        let owner = fs::File::create(&owner_path).map_err(Error::io(&owner_path, "create"))?;
        owner.try_lock().map_err(|e| Error::Internal(format!("a new pending version's owner lock is taken: {e:?}")))?;
        pending.owner = Some(owner);
        Ok(pending)
    }

    /// Writes the metadata, moves the version into place and makes it current, atomically.
    /// A version older than the current one (another process published a newer one
    /// meanwhile) is published but does not become current: `CURRENT` never moves back.
    pub fn publish(&self, pending: PendingVersion, meta: &BatchMeta) -> Result<()> {
        assert_eq!(pending.version, meta.version, "a pending version publishes its own metadata");
        let body = serde_json::to_vec_pretty(meta).map_err(|e| Error::Internal(format!("batch metadata does not encode: {e}")))?;
        write_framed(&pending.tmp.join("META.json"), &body)?;
        fsync_dir(&pending.tmp)?;
        let _store = self.lock()?;
        let mut pending = pending;
        // The published version holds no owner file; the lock itself goes with `pending`.
        let _ = fs::remove_file(pending.tmp.join(OWNER));
        durable::rename_synced(&pending.tmp, &self.version_dir(pending.version))?;
        pending.published = true;
        if self.current()?.is_some_and(|c| c > pending.version) {
            return Ok(());
        }
        let current = format!("v{:06}\n", pending.version);
        Ok(durable::replace(&self.dir.join("CURRENT"), &self.dir.join("CURRENT.tmp"), current.as_bytes())?)
    }

    /// Removes the unpublished version directories of the processes `pids` (which are gone).
    pub fn remove_abandoned(&self, pids: &[u32]) {
        let Ok(_store) = self.lock() else { return };
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if pending_of(&entry.file_name().to_string_lossy()).is_some_and(|(_, pid)| pids.contains(&pid)) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Removes published versions older than the newest `keep` (never the current one, nor
    /// one in `in_use`: the version a server serves may be older than the current one), and
    /// temporaries nobody will finish: pending versions whose owner lock is free, and
    /// seed-shard staging directories untouched for [`SHARDS_ABANDONED_AFTER`]. A pending
    /// version whose owner runs is never touched.
    pub fn gc(&self, keep: usize, in_use: &[u64]) -> Result<Vec<u64>> {
        let _store = self.lock()?;
        let current = self.current()?;
        let mut versions = Vec::new();
        for name in self.names()? {
            let path = self.dir.join(&name);
            if let Some(v) = version_of(&name) {
                versions.push(v);
            } else if pending_of(&name).is_some() {
                if abandoned(&path) {
                    let _ = fs::remove_dir_all(&path);
                }
            } else if name.starts_with(".tmp-shards-") && idle_longer_than(&path, SHARDS_ABANDONED_AFTER) {
                let _ = fs::remove_dir_all(&path);
            }
        }
        versions.sort_unstable();
        let mut removed = Vec::new();
        let cut_at = versions.len().saturating_sub(keep.max(1));
        for v in &versions[..cut_at] {
            if Some(*v) != current && !in_use.contains(v) {
                fs::remove_dir_all(self.version_dir(*v)).map_err(Error::io(&self.version_dir(*v), "remove"))?;
                removed.push(*v);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;

    fn meta(version: u64) -> BatchMeta {
        BatchMeta {
            version,
            job: "t".into(),
            job_version: 1,
            cut: vec![3, 4],
            events: 7,
            started_ms: 1,
            finished_ms: 2,
            views: vec![],
            seeds: vec![],
            seed_shards: 0,
            seed_views: vec![],
            format: FORMAT,
        }
    }

    // Proves another live process's pending version holds its number and survives gc,
    // a dead process's pending version is removed, and CURRENT never moves back to an
    // older version published late (issue: a batch run by hand collided with the server's).
    #[test]
    fn pending_versions_of_other_processes() {
        let tmp = TempDir::new("store-pending");
        let data = tmp.path();
        let store = ViewStore::open(data).expect("open");
        // A pending version whose owner lock is held (as another process would hold it) and
        // one whose owner lock is free (its process is gone).
        let live = store.dir.join(".tmp-v000003-1-0");
        let dead = store.dir.join(format!(".tmp-v000002-{}-0", u32::MAX - 1));
        fs::create_dir_all(&live).expect("live");
        let held = fs::File::create(live.join(OWNER)).expect("owner");
        held.try_lock().expect("hold the owner lock");
        let make_dead = || {
            fs::create_dir_all(&dead).expect("dead");
            fs::File::create(dead.join(OWNER)).expect("owner");
        };
        make_dead();
        let p = store.begin().expect("begin");
        assert_eq!(p.version(), 4, "a pending version of another process holds its number");
        assert!(!dead.exists(), "a dead process's pending version is removed");
        make_dead();
        store.gc(1, &[]).expect("gc");
        assert!(live.exists(), "gc must never remove a live process's pending version");
        assert!(!dead.exists(), "a dead process's pending version is removed");
        let q = store.begin().expect("begin");
        assert_eq!(q.version(), 5);
        store.publish(q, &meta(5)).expect("publish 5");
        store.publish(p, &meta(4)).expect("publish 4 late");
        assert_eq!(store.current().expect("current"), Some(5), "CURRENT never moves back");
        assert!(store.meta(4).is_ok(), "the late version is published all the same");
        assert_eq!(store.find_published(|m| m.version == 4).expect("find").map(|m| m.version), Some(4));
        // A version in use (served although not current) survives gc.
        let r = store.begin().expect("begin");
        store.publish(r, &meta(6)).expect("publish 6");
        assert_eq!(store.gc(1, &[4]).expect("gc"), vec![5], "v4 is in use, v6 current");
        assert!(store.meta(4).is_ok());
        drop(held);
        // A run that fails before publishing leaves nothing behind.
        let failed = store.begin().expect("begin");
        let dir = failed.tmp.clone();
        drop(failed);
        assert!(!dir.exists(), "an unpublished version is removed when dropped");
    }

    // Proves concurrent batch runs (threads standing in for processes, each with its own
    // store handle) with gc running beside them never share a version, never lose a
    // pending directory, and all publish.
    #[test]
    fn concurrent_runs_and_gc() {
        let tmp = TempDir::new("store-concurrent");
        let data = tmp.path();
        ViewStore::open(data).expect("open");
        let versions: Vec<u64> = std::thread::scope(|s| {
            let gc = s.spawn(|| {
                let store = ViewStore::open(data).expect("open");
                for _ in 0..50 {
                    store.gc(1, &[]).expect("gc");
                }
            });
            let runs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let store = ViewStore::open(data).expect("open");
                        (0..10)
                            .map(|_| {
                                let p = store.begin().expect("begin");
                                let v = p.version();
                                p.write_view("x", b"body").expect("write");
                                store.publish(p, &meta(v)).expect("publish");
                                v
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            gc.join().expect("gc thread");
            runs.into_iter().flat_map(|r| r.join().expect("run thread")).collect()
        });
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), versions.len(), "versions are unique: {versions:?}");
        assert_eq!(ViewStore::open(data).expect("open").current().expect("current"), sorted.last().copied());
    }

    // A published version is readable, an unpublished one is invisible, and the version
    // numbers increase; GC keeps the newest and never the current one.
    #[test]
    fn publish_read_gc() {
        let tmp = TempDir::new("store-pub");
        let d = tmp.path();
        let store = ViewStore::open(d).unwrap();
        assert_eq!(store.current().unwrap(), None);
        let p = store.begin().unwrap();
        p.write_view("a", b"hello").unwrap();
        assert_eq!(store.current().unwrap(), None, "nothing visible before publish");
        let v = p.version();
        store.publish(p, &meta(v)).unwrap();
        assert_eq!(store.current().unwrap(), Some(1));
        assert_eq!(store.read_view(1, "a").unwrap().unwrap(), b"hello");
        assert_eq!(store.current_meta().unwrap().unwrap().cut, vec![3, 4]);
        for _ in 0..3 {
            let p = store.begin().unwrap();
            let v = p.version();
            store.publish(p, &meta(v)).unwrap();
        }
        assert_eq!(store.current().unwrap(), Some(4));
        assert_eq!(store.gc(2, &[]).unwrap(), vec![1, 2]);
        assert!(store.meta(3).is_ok() && store.meta(1).is_err());
    }

    // A flipped byte or a truncated (half-written) view file is refused with its path.
    #[test]
    fn corrupt_view_files_are_refused() {
        let tmp = TempDir::new("store-corrupt");
        let d = tmp.path();
        let store = ViewStore::open(d).unwrap();
        let p = store.begin().unwrap();
        p.write_view("a", b"0123456789").unwrap();
        store.publish(p, &meta(1)).unwrap();
        let path = d.join("views/v000001/view.a.bin");
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = store.read_view(1, "a").unwrap_err().to_string();
        assert!(err.contains("checksum") && err.contains("view.a.bin"), "{err}");
        bytes.truncate(18);
        fs::write(&path, &bytes).unwrap();
        let err = store.read_view(1, "a").unwrap_err().to_string();
        assert!(err.contains("half-written"), "{err}");
    }

    // Two batch runs in one process at once get distinct versions and temporary directories,
    // so neither can delete or overwrite the other's files.
    #[test]
    fn concurrent_begins_do_not_collide() {
        let tmp = TempDir::new("store-concurrent2");
        let d = tmp.path();
        let store = ViewStore::open(d).unwrap();
        let a = store.begin().unwrap();
        let b = store.begin().unwrap();
        assert_ne!(a.version(), b.version());
        a.write_view("x", b"from a").unwrap();
        b.write_view("x", b"from b").unwrap();
        let (va, vb) = (a.version(), b.version());
        store.publish(b, &meta(vb)).unwrap();
        store.publish(a, &meta(va)).unwrap();
        assert_eq!(store.read_view(va, "x").unwrap().unwrap(), b"from a");
        assert_eq!(store.read_view(vb, "x").unwrap().unwrap(), b"from b");
    }

    #[test]
    fn seed_shards_read_as_one_vec() {
        let tmp = TempDir::new("store-shards");
        let dir = tmp.path();
        let store = ViewStore::open(dir).expect("store");
        let parts: Vec<Vec<(u64, i64)>> = vec![vec![(1, 2), (3, 4)], vec![], vec![(5, 6)]];
        let shards = store.shard_dir("run1").expect("shard dir");
        for (p, rows) in parts.iter().enumerate().skip(1) {
            write_seed_shard(&shards, "s.seed", p, &bincode::serialize(rows).expect("encode")).expect("shard");
        }
        let pending = store.begin().expect("begin");
        pending.write_seed("s.seed", &bincode::serialize(&parts[0]).expect("encode")).expect("seed");
        for p in 1..3 {
            pending.adopt_seed_shard(&shards, "s.seed", p).expect("adopt");
        }
        let version = pending.version();
        store.publish(pending, &BatchMeta { seed_shards: 3, seeds: vec![("s.seed".into(), 3)], ..meta(version) }).expect("publish");
        let joined: Vec<(u64, i64)> =
            bincode::deserialize(&store.read_seed(version, "s.seed").expect("read").expect("some")).expect("decode");
        assert_eq!(joined, vec![(1, 2), (3, 4), (5, 6)]);
        // Unjoined, the shards come back as written, one file of rows each (a worker can
        // then decode only its own).
        let each: Vec<Vec<(u64, i64)>> = store
            .read_seed_shards(version, "s.seed")
            .expect("read")
            .expect("some")
            .iter()
            .map(|b| bincode::deserialize(b).expect("decode"))
            .collect();
        assert_eq!(each, parts);
        // A damaged shard is refused, naming it.
        let shard = dir.join("views").join(format!("v{version:06}")).join("seed.s.seed.p2.bin");
        let mut bytes = fs::read(&shard).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&shard, bytes).expect("write");
        let err = store.read_seed(version, "s.seed").expect_err("damaged");
        assert!(err.to_string().contains("seed.s.seed.p2.bin"), "{err}");
        // A missing shard is refused too: never a partial seed.
        fs::remove_file(&shard).expect("remove");
        let err = store.read_seed(version, "s.seed").expect_err("missing");
        assert!(err.to_string().contains("seed shard missing"), "{err}");
        let err = store.read_seed_shards(version, "s.seed").expect_err("missing");
        assert!(err.to_string().contains("seed shard missing"), "{err}");
    }

    // Format 3: shards of variable-length rows join into one file that keeps the marker
    // bit on its count (so the rows decode as format 3); shards of a seed in different
    // encodings are refused, naming the shard.
    #[test]
    fn varint_seed_shards_join_and_mixed_encodings_are_refused() {
        use bincode::Options;
        let varint = |rows: &[(u64, i64)]| {
            let mut out = ((rows.len() as u64) | VARINT_ROWS).to_le_bytes().to_vec();
            for row in rows {
                bincode::DefaultOptions::new().serialize_into(&mut out, row).expect("encode");
            }
            out
        };
        let tmp = TempDir::new("store-varint");
        let store = ViewStore::open(tmp.path()).expect("store");
        let shards = store.shard_dir("run1").expect("shard dir");
        write_seed_shard(&shards, "s.seed", 1, &varint(&[(300, -7)])).expect("shard");
        let pending = store.begin().expect("begin");
        pending.write_seed("s.seed", &varint(&[(1, 2), (3, 4)])).expect("seed");
        pending.adopt_seed_shard(&shards, "s.seed", 1).expect("adopt");
        let version = pending.version();
        store.publish(pending, &BatchMeta { seed_shards: 2, seeds: vec![("s.seed".into(), 3)], ..meta(version) }).expect("publish");
        let joined = store.read_seed(version, "s.seed").expect("read").expect("some");
        assert_eq!(joined, varint(&[(1, 2), (3, 4), (300, -7)]));
        // A fixed-width shard next to a variable-length one.
        let shards = store.shard_dir("run2").expect("shard dir");
        write_seed_shard(&shards, "s.seed", 1, &bincode::serialize(&vec![(5u64, 6i64)]).expect("encode")).expect("shard");
        let pending = store.begin().expect("begin");
        pending.write_seed("s.seed", &varint(&[(1, 2)])).expect("seed");
        pending.adopt_seed_shard(&shards, "s.seed", 1).expect("adopt");
        let version = pending.version();
        store.publish(pending, &BatchMeta { seed_shards: 2, seeds: vec![("s.seed".into(), 2)], ..meta(version) }).expect("publish");
        let err = store.read_seed(version, "s.seed").expect_err("mixed encodings");
        assert!(err.to_string().contains("seed.s.seed.p1.bin") && err.to_string().contains("differently"), "{err}");
    }

    // Format 2: a seed shared with a view is read from the view's file, checked against
    // META's row count; a missing view file is refused, naming the seed; a version of a
    // format newer than this build is refused, never misread.
    #[test]
    fn shared_seeds_read_the_view_file() {
        let tmp = TempDir::new("store-shared");
        let dir = tmp.path();
        let store = ViewStore::open(dir).expect("store");
        // A sum view's rows `((K, ()), R)` and the seed's `(K, R)`: the same bytes.
        let view_rows: Vec<((u64, ()), i64)> = vec![((1, ()), 5), ((2, ()), -3)];
        let seed_rows: Vec<(u64, i64)> = vec![(1, 5), (2, -3)];
        assert_eq!(bincode::serialize(&view_rows).expect("encode"), bincode::serialize(&seed_rows).expect("encode"));
        let pending = store.begin().expect("begin");
        pending.write_view("v", &bincode::serialize(&view_rows).expect("encode")).expect("view");
        let version = pending.version();
        let shared = BatchMeta {
            views: vec![("v".into(), 2)],
            seeds: vec![("op.seed".into(), 2)],
            seed_views: vec![("op.seed".into(), "v".into())],
            ..meta(version)
        };
        store.publish(pending, &shared).expect("publish");
        let bytes = store.read_seed(version, "op.seed").expect("read").expect("some");
        assert_eq!(bincode::deserialize::<Vec<(u64, i64)>>(&bytes).expect("decode"), seed_rows);
        // A row count that disagrees with META is refused.
        let vdir = dir.join("views").join(format!("v{version:06}"));
        let wrong = BatchMeta { seeds: vec![("op.seed".into(), 3)], ..shared.clone() };
        write_framed(&vdir.join("META.json"), &serde_json::to_vec(&wrong).expect("json")).expect("meta");
        let err = store.read_seed(version, "op.seed").expect_err("count");
        assert!(err.to_string().contains("META records 3"), "{err}");
        // The view's file gone: refused, naming the seed and the view.
        write_framed(&vdir.join("META.json"), &serde_json::to_vec(&shared).expect("json")).expect("meta");
        fs::remove_file(vdir.join("view.v.bin")).expect("remove");
        let err = store.read_seed(version, "op.seed").expect_err("missing");
        assert!(err.to_string().contains("op.seed") && err.to_string().contains("view `v`"), "{err}");
        // A newer format is refused.
        let newer = BatchMeta { format: FORMAT + 1, ..shared.clone() };
        write_framed(&vdir.join("META.json"), &serde_json::to_vec(&newer).expect("json")).expect("meta");
        let err = store.meta(version).expect_err("newer");
        assert!(err.to_string().contains("newer than this build"), "{err}");
        // A format-1 META (no `format`, no `seed_views`) reads as format 1.
        let mut old = serde_json::to_value(&shared).expect("json");
        let obj = old.as_object_mut().expect("object");
        obj.remove("format");
        obj.remove("seed_views");
        write_framed(&vdir.join("META.json"), &serde_json::to_vec(&old).expect("json")).expect("meta");
        let m = store.meta(version).expect("format 1");
        assert_eq!((m.format, m.seed_views.len()), (1, 0));
    }
}
