//! Segment files: naming, chunked sequential scanning, and small file-system helpers.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::LogError;
use crate::durable::frame::{decode, Decoded, RECORD_HEADER_BYTES};
use crate::durable::IoFailure;

/// First read of a scan; small so that short tail reads stay cheap.
const FIRST_CHUNK: usize = 64 << 10;
/// Largest read of a scan; reads double from `FIRST_CHUNK` up to this.
const MAX_CHUNK: usize = 4 << 20;

/// Name of partition `p`'s directory.
pub(crate) fn partition_dir(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("p{partition:04}"))
}

/// Path of the segment of `partition` whose first record has offset `base`.
pub(crate) fn segment_path(dir: &Path, partition: u32, base: u64) -> PathBuf {
    partition_dir(dir, partition).join(format!("{base:020}.seg"))
}

/// Parses a segment file name (`{base:020}.seg`) into its base offset.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// An I/O error with a note of what was being done, kept as the `source` of
/// [`LogError::Io`] so that the original error stays reachable through `source()`.
#[derive(Debug)]
struct IoContext {
    action: &'static str,
    err: io::Error,
}

impl fmt::Display for IoContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.action, self.err)
    }
}

impl std::error::Error for IoContext {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.err)
    }
}

/// Builds [`LogError::Io`] for `path`, saying what was being done.
pub(crate) fn io_err(path: &Path, action: &'static str, err: io::Error) -> LogError {
    LogError::Io { path: path.to_path_buf(), source: io::Error::new(err.kind(), IoContext { action, err }) }
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    Ok(crate::durable::sync_dir(dir)?)
}

impl From<IoFailure> for LogError {
    fn from(f: IoFailure) -> Self {
        io_err(&f.path, f.action, f.source)
    }
}

/// Opens a segment for appending, creating it if needed.
pub(crate) fn open_for_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new().append(true).create(true).open(path).map_err(|e| io_err(path, "open segment for append", e))
}

/// Why a scan stopped before the end of its byte range.
#[derive(Debug)]
pub(crate) enum ScanStop {
    /// Reading the file failed.
    Io(LogError),
    /// The record at `pos` is incomplete (torn) or invalid.
    Bad {
        /// Byte offset of the bad record in the file.
        pos: u64,
        /// What is wrong with it.
        detail: String,
    },
}

/// Sequential reader over the records of one segment file, in large chunks.
///
/// It reads bytes `[start, limit)` of the file; records must tile that range exactly.
pub(crate) struct Scanner {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Index in `buf` of the next unread record.
    head: usize,
    /// Valid bytes in `buf`.
    filled: usize,
    /// File offset of `buf[0]`.
    buf_pos: u64,
    /// File offset where the scan ends.
    limit: u64,
    /// Size of the next read.
    chunk: usize,
}

impl Scanner {
    /// Opens `path` and positions the scan at byte `start`, to stop at byte `limit`.
    pub(crate) fn open(path: &Path, start: u64, limit: u64) -> Result<Scanner, LogError> {
        let mut file = File::open(path).map_err(|e| io_err(path, "open segment for reading", e))?;
        if start > 0 {
            file.seek(SeekFrom::Start(start)).map_err(|e| io_err(path, "seek in segment", e))?;
        }
        Ok(Scanner { path: path.to_path_buf(), file, buf: Vec::new(), head: 0, filled: 0, buf_pos: start, limit, chunk: FIRST_CHUNK })
    }

    /// File offset of the next record.
    pub(crate) fn position(&self) -> u64 {
        self.buf_pos + self.head as u64
    }

    /// Returns the next record as `(file offset, payload)`, or `None` at exactly `limit`.
    pub(crate) fn next_record(&mut self) -> Result<Option<(u64, &[u8])>, ScanStop> {
        loop {
            let pos = self.position();
            let avail = &self.buf[self.head..self.filled];
            let need = match decode(avail) {
                Decoded::Record { len } => {
                    let start = self.head + RECORD_HEADER_BYTES;
                    self.head = start + len;
                    return Ok(Some((pos, &self.buf[start..start + len])));
                }
                Decoded::Bad(detail) => return Err(ScanStop::Bad { pos, detail }),
                Decoded::Incomplete { total } => total.unwrap_or(RECORD_HEADER_BYTES),
            };
            let file_left = self.limit - (self.buf_pos + self.filled as u64);
            if avail.is_empty() && file_left == 0 {
                return Ok(None);
            }
            if (avail.len() as u64) + file_left < need as u64 {
                let have = avail.len() as u64 + file_left;
                let detail = match total_of(avail, need) {
                    Some(total) => {
                        format!("incomplete record: {total} bytes framed, only {have} present")
                    }
                    None => format!("incomplete record header: only {have} bytes present"),
                };
                return Err(ScanStop::Bad { pos, detail });
            }
            self.refill(need, file_left)?;
        }
    }

    /// Moves the unread tail to the front of the buffer and reads more of the file, at
    /// least enough to hold a record of `need` framed bytes.
    fn refill(&mut self, need: usize, file_left: u64) -> Result<(), ScanStop> {
        let keep = self.filled - self.head;
        self.buf.copy_within(self.head..self.filled, 0);
        self.buf_pos += self.head as u64;
        self.head = 0;
        self.filled = keep;
        // `need > keep` and `file_left >= need - keep` (checked by the caller), so this
        // reads at least the rest of the record, and a whole chunk when the file has it.
        let want = self.chunk.max(need);
        let read_len = (want.saturating_sub(keep) as u64).min(file_left) as usize;
        if self.buf.len() < keep + read_len {
            self.buf.resize(keep + read_len, 0);
        }
        let mut got = 0;
        while got < read_len {
            match self.file.read(&mut self.buf[keep + got..keep + read_len]) {
                Ok(0) => {
                    let pos = self.buf_pos + (keep + got) as u64;
                    return Err(ScanStop::Bad {
                        pos: self.position(),
                        detail: format!("file ends at byte {pos}, expected {}", self.limit),
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ScanStop::Io(io_err(&self.path, "read segment", e))),
            }
        }
        self.filled = keep + read_len;
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        Ok(())
    }
}

/// The framed size of the record at the start of `avail`, when its header is complete.
fn total_of(avail: &[u8], need: usize) -> Option<usize> {
    (avail.len() >= RECORD_HEADER_BYTES).then_some(need)
}
