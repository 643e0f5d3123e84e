//! Durable files: the one place that knows how bytes become crash-safe on disk.
//!
//! * [`frame`]: record framing `[len u32 LE][crc32c(len ‖ payload) u32 LE][payload]`, used by
//!   the log's segments and the idempotency-key journal;
//! * [`sync_dir`]: make a directory's entries (creates, renames, removals) durable;
//! * [`write_synced`], [`rename_synced`], [`replace`]: "write temp, fsync, rename, fsync the
//!   directory", the only way a file here is ever replaced, so a crash leaves the old file or
//!   the new one, never a mix;
//! * [`write_checked`], [`read_checked`]: whole files with a magic, a length and a CRC-32C,
//!   refused when half-written or damaged (batch views and their metadata).
//!
//! Errors are [`IoFailure`]s (path, action, OS error); each layer turns them into its own error
//! type (`LogError::Io`, `Error::Io`), so messages keep naming the file and what was done.

pub(crate) mod frame;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file-system operation that failed: on what, doing what, and the OS error.
#[derive(Debug)]
pub(crate) struct IoFailure {
    /// The file or directory.
    pub(crate) path: PathBuf,
    /// What was being done ("fsync directory", "rename into place", …).
    pub(crate) action: &'static str,
    /// The OS error.
    pub(crate) source: io::Error,
}

fn fail<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> IoFailure + 'a {
    move |source| IoFailure { path: path.to_path_buf(), action, source }
}

impl From<IoFailure> for crate::error::Error {
    fn from(f: IoFailure) -> Self {
        crate::error::Error::Io { path: f.path, what: f.action.to_string(), source: f.source }
    }
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), IoFailure> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail(dir, "fsync directory"))
}

/// Creates (or truncates) `path`, writes `bytes` and fsyncs the file. The directory entry is
/// not yet durable: [`rename_synced`] or [`sync_dir`] makes it so.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), IoFailure> {
    let mut f = File::create(path).map_err(fail(path, "create"))?;
    f.write_all(bytes).map_err(fail(path, "write"))?;
    f.sync_all().map_err(fail(path, "fsync"))
}

/// Renames `from` to `to` (a file or a directory) and fsyncs `to`'s parent directory, so the
/// new name survives a crash.
pub(crate) fn rename_synced(from: &Path, to: &Path) -> Result<(), IoFailure> {
    fs::rename(from, to).map_err(fail(to, "rename into place"))?;
    sync_dir(parent_of(to))
}

/// Replaces `path` atomically with `bytes`: writes `tmp`, fsyncs it, renames it over `path`
/// and fsyncs the directory. After a crash at any point, `path` holds the old bytes or the
/// new ones. On failure `tmp` is removed (best effort: a full disk must not stay full
/// because of our own leftover); [`remove_if_exists`] at open clears one a crash left.
pub(crate) fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), IoFailure> {
    let written = write_synced(tmp, bytes);
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    rename_synced(tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(tmp);
    })
}

/// Removes `path` if it exists; returns whether it did.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, IoFailure> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(IoFailure { path: path.to_path_buf(), action: "remove", source: e }),
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Bytes of the header of a checked file: magic (4), body length (u64 LE), CRC-32C (u32 LE).
pub(crate) const CHECKED_HEADER_BYTES: usize = 16;

/// Why [`read_checked`] refused a file.
#[derive(Debug)]
pub(crate) enum CheckedError {
    /// The file could not be read.
    Io(IoFailure),
    /// The file is not whole or not intact: what is wrong.
    Damaged(String),
}

/// Writes `body` to `path` as a checked file (`magic | len u64 | crc32c u32 | body`), fsync'd.
pub(crate) fn write_checked(path: &Path, magic: &[u8; 4], body: &[u8]) -> Result<(), IoFailure> {
    let f = write_checked_unsynced(path, magic, body)?;
    f.sync_all().map_err(fail(path, "fsync"))
}

/// [`write_checked`] without the fsync: returns the open file, for the caller to fsync (on
/// another thread, while it writes the next file) before anything refers to it.
pub(crate) fn write_checked_unsynced(path: &Path, magic: &[u8; 4], body: &[u8]) -> Result<File, IoFailure> {
    let mut f = File::create(path).map_err(fail(path, "create"))?;
    let mut head = Vec::with_capacity(CHECKED_HEADER_BYTES);
    head.extend_from_slice(magic);
    head.extend_from_slice(&(body.len() as u64).to_le_bytes());
    head.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    f.write_all(&head).and_then(|_| f.write_all(body)).map_err(fail(path, "write"))?;
    Ok(f)
}

/// Reads a checked file written by [`write_checked`] and returns its body, refusing one whose
/// magic, length or checksum is wrong.
pub(crate) fn read_checked(path: &Path, magic: &[u8; 4]) -> Result<Vec<u8>, CheckedError> {
    let mut bytes = fs::read(path).map_err(|e| CheckedError::Io(fail(path, "read")(e)))?;
    if bytes.len() < CHECKED_HEADER_BYTES || &bytes[0..4] != magic {
        return Err(CheckedError::Damaged("not a lambdaflow file of this kind (bad header)".into()));
    }
    let len = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let body_len = (bytes.len() - CHECKED_HEADER_BYTES) as u64;
    if body_len != len {
        return Err(CheckedError::Damaged(format!("length {body_len} but header says {len} (half-written?)")));
    }
    if crc32c::crc32c(&bytes[CHECKED_HEADER_BYTES..]) != crc {
        return Err(CheckedError::Damaged("checksum mismatch".into()));
    }
    bytes.drain(0..CHECKED_HEADER_BYTES);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;

    // Proves replace installs the new bytes and leaves no temporary file.
    #[test]
    fn replace_installs_and_cleans_up() {
        let tmp = TempDir::new("durable-replace");
        let d = tmp.path();
        let (path, tmp) = (d.join("F"), d.join("F.tmp"));
        replace(&path, &tmp, b"one").expect("first");
        replace(&path, &tmp, b"two").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!tmp.exists());
    }

    // Proves a failed replace keeps the old file and removes its temporary file.
    #[test]
    fn failed_replace_keeps_old_and_removes_tmp() {
        let tmp = TempDir::new("durable-replace-fail");
        let d = tmp.path();
        let path = d.join("F");
        replace(&path, &d.join("F.tmp"), b"old").expect("first");
        // Renaming a file over a non-empty directory fails after the temp file was written.
        let blocker = d.join("dir");
        fs::create_dir_all(blocker.join("inside")).expect("dir");
        let tmp = d.join("G.tmp");
        let e = replace(&blocker, &tmp, b"new").expect_err("rename over a directory");
        assert_eq!(e.action, "rename into place");
        assert!(!tmp.exists(), "the temporary file must not outlive a failed replace");
        assert_eq!(fs::read(&path).expect("read"), b"old");
    }

    // Proves a checked file round-trips and every truncation or flipped byte is refused.
    #[test]
    fn checked_files_refuse_damage() {
        let tmp = TempDir::new("durable-checked");
        let d = tmp.path();
        let path = d.join("V");
        write_checked(&path, b"LFV1", b"some body bytes").expect("write");
        assert_eq!(read_checked(&path, b"LFV1").expect("read"), b"some body bytes");
        assert!(matches!(read_checked(&path, b"XXXX"), Err(CheckedError::Damaged(_))));
        let whole = fs::read(&path).expect("read");
        for cut in 0..whole.len() {
            fs::write(&path, &whole[..cut]).expect("write");
            assert!(matches!(read_checked(&path, b"LFV1"), Err(CheckedError::Damaged(_))), "cut at {cut}");
        }
        for i in 0..whole.len() {
            let mut bad = whole.clone();
            bad[i] ^= 0x10;
            fs::write(&path, &bad).expect("write");
            assert!(read_checked(&path, b"LFV1").is_err(), "flip at {i} went undetected");
        }
        assert!(matches!(read_checked(&d.join("missing"), b"LFV1"), Err(CheckedError::Io(_))));
    }

    // Proves remove_if_exists tells whether there was something to remove.
    #[test]
    fn remove_if_exists_reports() {
        let tmp = TempDir::new("durable-remove");
        let d = tmp.path();
        let f = d.join("x");
        assert!(!remove_if_exists(&f).expect("absent"));
        fs::write(&f, b"x").expect("write");
        assert!(remove_if_exists(&f).expect("present"));
    }
}
