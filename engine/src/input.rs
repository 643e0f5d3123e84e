//! Reading events from NDJSON or CSV input, all or nothing.
//!
//! The format is detected from the first non-empty line: a line starting with `{` is NDJSON;
//! a line equal to the job's CSV header starts CSV. Every line is parsed before anything is
//! appended; the first bad line rejects the whole input with its line number, field and
//! value, and nothing of it is stored.

use lambdaflow_operators::{Event, FieldError, Format};
use std::io::BufRead;

use crate::error::{Error, Result};

/// A line longer than this is rejected rather than buffered.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Parses all of `input` into events of type `E`.
pub fn parse_all<E: Event>(input: &mut dyn BufRead) -> Result<Vec<E>> {
    let mut events = Vec::new();
    parse_each(input, |e| {
        events.push(e);
        Ok(())
    })?;
    Ok(events)
}

/// Parses `input` line by line, calling `f` with each event; stops at the first bad line.
pub fn parse_each<E: Event>(input: &mut dyn BufRead, mut f: impl FnMut(E) -> Result<()>) -> Result<u64> {
    let mut format: Option<Format> = None;
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(256);
    let mut count = 0u64;
    loop {
        buf.clear();
        let n = std::io::Read::take(&mut *input, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut buf).map_err(|source| Error::Io {
            path: "<input>".into(),
            what: "read".into(),
            source,
        })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let bad = |error: FieldError| Error::BadInput { line: line_no, error };
        if buf.len() > LINE_BYTES_MAX && !buf.ends_with(b"\n") {
            return Err(bad(FieldError::line(format!("line is longer than {LINE_BYTES_MAX} bytes"))));
        }
        let text = std::str::from_utf8(&buf).map_err(|e| bad(FieldError::line(format!("not valid UTF-8 ({e})"))))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let fmt = match format {
            Some(f) => f,
            None => {
                let f = if text.trim_start().starts_with('{') {
                    Format::Ndjson
                } else if E::reads_csv() && text.trim() == E::csv_header() {
                    format = Some(Format::Csv);
                    continue;
                } else {
                    return Err(bad(FieldError::line(expected_first_line::<E>(false))));
                };
                format = Some(f);
                f
            }
        };
        let event = match fmt {
            Format::Ndjson => E::parse_ndjson(text),
            Format::Csv => E::parse_csv(text),
        }
        .map_err(bad)?;
        f(event)?;
        count += 1;
    }
    Ok(count)
}

/// What the first data line of an input must be, for an error: a JSON object, or (for a
/// job with a CSV form) the CSV header; `csv_asked` when the input was named CSV.
fn expected_first_line<E: Event>(csv_asked: bool) -> String {
    match (E::reads_csv(), csv_asked) {
        (false, _) => format!("expected a JSON object (NDJSON): {}", lambdaflow_operators::NO_CSV),
        (true, true) => format!("expected the CSV header `{}`", E::csv_header()),
        (true, false) => format!("expected a JSON object (NDJSON) or the CSV header `{}`", E::csv_header()),
    }
}

/// Refuses input named CSV (by `--format` or the file's extension, `format`) for a job
/// whose events have no CSV form, naming the file, before anything is read or stored.
pub(crate) fn refuse_csv<E: Event>(file: &str, format: Option<Format>) -> Result<()> {
    if format == Some(Format::Csv) && !E::reads_csv() {
        let file = if file == "-" { "<stdin>" } else { file };
        // Rejected input (exit 3), refused before its first line is read.
        return Err(Error::BadInput {
            line: 1,
            error: lambdaflow_operators::FieldError::line(format!(
                "{file}: CSV input, but {}; convert it to NDJSON or Parquet (nothing was stored)",
                lambdaflow_operators::NO_CSV
            )),
        });
    }
    Ok(())
}

/// Splits NDJSON or CSV input into request bodies of at most `max_bytes` each, at line
/// boundaries, for `ingest --server`: the same input and size always give the same bodies, so
/// a re-run sends the same requests (and idempotency keys make them count once). A CSV
/// input's header line starts every body. Blank lines stay in the bodies (a body of blank
/// lines only is skipped), so a line number in the service's answer maps exactly to the
/// input's line (see [`Body::input_line`]).
pub(crate) struct Requests<R> {
    input: R,
    max_bytes: usize,
    /// The CSV header (with its newline), once seen.
    header: Option<Vec<u8>>,
    /// The first line of the next body, read but not yet placed.
    pending: Option<Vec<u8>>,
    line_no: u64,
    started: bool,
    /// Lines before this one are read but not sent (resuming from a line).
    from_line: u64,
}

/// One request body of [`Requests`].
#[derive(Debug)]
pub(crate) struct Body {
    /// The 1-based input line of its first line after the header.
    pub first_line: u64,
    /// Whether it starts with the CSV header.
    pub header: bool,
    /// The lines (with the CSV header first, for CSV).
    pub bytes: Vec<u8>,
}

impl Body {
    /// The input line of the body's line `line` (1-based, as the service numbers them).
    pub(crate) fn input_line(&self, line: u64) -> u64 {
        let own = line.saturating_sub(u64::from(self.header)).max(1);
        self.first_line + own - 1
    }
}

impl<R: BufRead> Requests<R> {
    /// Bodies of at most `max_bytes` from `input`.
    pub(crate) fn new(input: R, max_bytes: usize) -> Self {
        Self::from_line(input, max_bytes, 1)
    }

    /// Bodies of at most `max_bytes` from `input`, leaving out the lines before `from_line`
    /// (the CSV header is still found and starts every body).
    pub(crate) fn from_line(input: R, max_bytes: usize, from_line: u64) -> Self {
        Requests { input, max_bytes, header: None, pending: None, line_no: 0, started: false, from_line }
    }

    fn read_line(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n =
            self.input.read_until(b'\n', &mut buf).map_err(|source| Error::Io { path: "<input>".into(), what: "read".into(), source })?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if !buf.ends_with(b"\n") {
            buf.push(b'\n');
        }
        Ok(Some(buf))
    }

    /// The next body, or `None` at the end. A single line (with the header) longer than
    /// `max_bytes` is a usage error naming it.
    pub(crate) fn next_body(&mut self) -> Result<Option<Body>> {
        loop {
            match self.fill()? {
                None => return Ok(None),
                Some((body, true)) => return Ok(Some(body)),
                Some((_, false)) => {} // blank lines only: nothing to send
            }
        }
    }

    /// The next run of lines that fits, and whether it holds an event line.
    fn fill(&mut self) -> Result<Option<(Body, bool)>> {
        let mut body = self.header.clone().unwrap_or_default();
        let mut header_len = body.len();
        let mut first_line = 0;
        let mut events = false;
        loop {
            let line = match self.pending.take() {
                Some(l) => l,
                None => match self.read_line()? {
                    Some(l) => l,
                    None => break,
                },
            };
            let blank = line.iter().all(|b| b.is_ascii_whitespace());
            if !self.started {
                if blank {
                    continue; // before the first line: in no body
                }
                self.started = true;
                if !line.trim_ascii_start().starts_with(b"{") {
                    // The CSV header (a wrong first line is named by the parser first).
                    self.header = Some(line.clone());
                    header_len = line.len();
                    body = line;
                    continue;
                }
            }
            if self.line_no < self.from_line {
                continue;
            }
            if body.len() + line.len() > self.max_bytes {
                if first_line == 0 {
                    return Err(Error::Usage(format!(
                        "line {} is {} bytes{}, more than a request may hold ({} bytes)",
                        self.line_no,
                        line.len(),
                        if header_len > 0 { format!(" (with the CSV header, {})", header_len + line.len()) } else { String::new() },
                        self.max_bytes
                    )));
                }
                self.pending = Some(line);
                break;
            }
            if first_line == 0 {
                first_line = self.line_no;
            }
            events |= !blank;
            body.extend_from_slice(&line);
        }
        Ok((first_line != 0).then_some((Body { first_line, header: header_len > 0, bytes: body }, events)))
    }
}

/// What `ingest --server` learns of a file before sending it: its fingerprint, and the
/// largest request one line needs.
#[derive(Debug, PartialEq)]
pub(crate) struct Scan {
    /// A stable fingerprint of all of it (64-bit FNV-1a over its bytes, and its length): the
    /// same file gives the same fingerprint on every machine and build.
    pub fingerprint: String,
    /// The CSV header's length with its newline (0 for NDJSON).
    pub header_bytes: usize,
    /// The longest line after the header (with its newline, as a body holds it), and its
    /// 1-based number.
    pub longest: (u64, usize),
}

impl Scan {
    /// The smallest request that holds every line: the longest one and the header.
    pub(crate) fn min_request(&self) -> usize {
        self.header_bytes + self.longest.1
    }
}

/// Reads all of `input` once: see [`Scan`].
pub(crate) fn scan(input: &mut dyn BufRead) -> std::io::Result<Scan> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    let (mut line_no, mut header_bytes, mut longest, mut started) = (0u64, 0usize, (0u64, 0usize), false);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        let n = input.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        len += n as u64;
        line_no += 1;
        let bytes = n + usize::from(!buf.ends_with(b"\n"));
        let blank = buf.iter().all(|b| b.is_ascii_whitespace());
        if !started && !blank {
            started = true;
            if !buf.trim_ascii_start().starts_with(b"{") {
                header_bytes = bytes;
                continue;
            }
        }
        if started && bytes > longest.1 {
            longest = (line_no, bytes);
        }
    }
    Ok(Scan { fingerprint: format!("{hash:016x}{len:x}"), header_bytes, longest })
}

// ----- streaming bulk ingest -----------------------------------------------------------

/// Input bytes per work unit of a bulk ingest (then extended to the end of its last line).
/// Fixed, so that the input's fingerprint (the default idempotency key) does not depend on
/// `--memory`.
pub const BULK_CHUNK_BYTES: usize = 1 << 20;

/// The smallest memory bound a bulk ingest accepts.
pub const BULK_MEMORY_MIN: usize = 8 << 20;

/// The formats `ingest` reads, chosen by `--format` or the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object a line.
    Ndjson,
    /// A header row, then one CSV row a line.
    Csv,
    /// Apache Parquet: each row becomes an NDJSON line (see [`open_source`]).
    Parquet,
}

impl InputFormat {
    /// The format named `name` (`ndjson`, `jsonl`, `json`, `csv`, `parquet`), if any.
    pub fn from_name(name: &str) -> Option<InputFormat> {
        match name.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" | "json" => Some(InputFormat::Ndjson),
            "csv" => Some(InputFormat::Csv),
            "parquet" => Some(InputFormat::Parquet),
            _ => None,
        }
    }

    /// The format a file name's extension says, if it says one.
    pub fn from_path(path: &std::path::Path) -> Option<InputFormat> {
        path.extension().and_then(|e| e.to_str()).and_then(InputFormat::from_name)
    }
}

/// A source of input lines: NDJSON or CSV text, whatever the input is stored as.
pub type LineSource = Box<dyn BufRead + Send>;

/// Opens `file` (`-`: stdin) as lines. The format is `format`, else the file's extension;
/// `None` in the answer means "detect it from the first line". Parquet files are read
/// as one NDJSON line per row: the seam where a Parquet reader plugs in.
pub fn open_source(file: &str, format: Option<InputFormat>) -> Result<(LineSource, Option<Format>, Option<u64>)> {
    if file == "-" {
        let format = match format {
            Some(InputFormat::Parquet) => return Err(Error::Usage("Parquet input cannot be read from stdin: name the file".into())),
            f => f.map(line_format),
        };
        return Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin())), format, None));
    }
    let path = std::path::PathBuf::from(file);
    let format = format.or_else(|| InputFormat::from_path(&path));
    if format == Some(InputFormat::Parquet) || format.is_none() && crate::export::is_parquet(&path)? {
        return Ok((Box::new(crate::export::read::ndjson_reader(&path)?), Some(Format::Ndjson), None));
    }
    let f = std::fs::File::open(&path).map_err(|source| Error::Io { path: path.clone(), what: "open".into(), source })?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, f)), format.map(line_format), len))
}

/// The line format of an input format (Parquet rows come as NDJSON lines).
fn line_format(f: InputFormat) -> Format {
    match f {
        InputFormat::Csv => Format::Csv,
        InputFormat::Ndjson | InputFormat::Parquet => Format::Ndjson,
    }
}

/// How a bulk ingest runs.
#[derive(Clone)]
pub struct BulkOptions {
    /// The memory the pipeline may hold at once (input chunks and their encoded blocks in
    /// flight), at least [`BULK_MEMORY_MIN`].
    pub memory: usize,
    /// Parsing threads.
    pub workers: usize,
    /// The line format; `None` detects it from the first line.
    pub format: Option<Format>,
    /// Called with the input bytes consumed so far and the events parsed so far.
    pub progress: Option<std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

/// What a bulk ingest did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkReport {
    /// Events in the input.
    pub events: u64,
    /// Input bytes read.
    pub bytes: u64,
    /// The input's fingerprint (a hash of all of its bytes and its length).
    pub fingerprint: String,
}

/// One work unit: whole lines of the input.
struct Chunk {
    seq: u64,
    /// 1-based input line of its first line; known for the first unit only (the others
    /// follow on from the lines their predecessors counted: the reader does not count them).
    first_line: u64,
    bytes: Vec<u8>,
    /// How its lines are parsed.
    format: Format,
    /// An error the reader met after these lines (a line too long, a read failure); an
    /// [`Error::BadInput`] line number counts from 1 at the unit's first line.
    error: Option<Error>,
}

/// A parsed and encoded work unit.
struct Parsed {
    seq: u64,
    /// The unit's first input line, for the first unit.
    first_line: Option<u64>,
    /// Lines in the unit.
    lines: u64,
    input_bytes: u64,
    hash: u64,
    events: u64,
    /// Per partition: framed compressed blocks and their record count.
    blocks: Vec<(Vec<u8>, u64)>,
    /// An [`Error::BadInput`] line number counts from 1 at the unit's first line.
    error: Option<Error>,
}

/// A worker's buffers, reused across its units: per partition the block being filled, and
/// one zstd context.
struct WorkerBufs {
    blocks: Vec<crate::log::BlockBuf>,
    zstd: crate::log::Zstd,
}

impl WorkerBufs {
    fn new(partitions: u32) -> WorkerBufs {
        WorkerBufs { blocks: (0..partitions).map(|_| crate::log::BlockBuf::default()).collect(), zstd: crate::log::Zstd::default() }
    }
}

/// Reads `source` as a stream with at most about `opts.memory` bytes in flight, parses it on
/// `opts.workers` threads, and stages every event into `bulk`, in input order per partition.
/// The first bad line (in input order) stops it with [`Error::BadInput`] naming the line,
/// field and value; the caller then drops `bulk` and nothing is stored.
pub fn stage_all<E: Event>(source: LineSource, bulk: &mut crate::append::Bulk<'_>, opts: &BulkOptions) -> Result<BulkReport> {
    use std::sync::mpsc::{channel, sync_channel};
    use std::sync::{Arc, Mutex};
    if opts.memory < BULK_MEMORY_MIN {
        return Err(Error::Usage(format!("--memory must be at least {} MiB", BULK_MEMORY_MIN >> 20)));
    }
    let partitions = bulk.partitions();
    // Each unit in flight holds its input (up to a chunk and a line), its encoded blocks
    // and the parser's buffers: budget four chunks a unit.
    let in_flight = (opts.memory / (4 * BULK_CHUNK_BYTES)).clamp(2, 256);
    let workers = opts.workers.clamp(1, in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        token_tx.send(()).expect("token channel has room");
    }
    let (work_tx, work_rx) = sync_channel::<Chunk>(in_flight);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = channel::<Parsed>();
    let format = opts.format;
    std::thread::scope(|s| -> Result<BulkReport> {
        let reader = s.spawn(move || read_chunks::<E>(source, format, token_rx, work_tx));
        for _ in 0..workers {
            let work_rx = Arc::clone(&work_rx);
            let done_tx = done_tx.clone();
            s.spawn(move || {
                let mut bufs = WorkerBufs::new(partitions);
                loop {
                    let chunk = match crate::sync::lock(&work_rx).recv() {
                        Ok(c) => c,
                        Err(_) => return,
                    };
                    // A panic in the job's parser must not leave the collector waiting for
                    // this chunk forever (with the data directory locked): it becomes the
                    // chunk's error, and nothing is stored.
                    let seq = chunk.seq;
                    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_chunk::<E>(chunk, &mut bufs)))
                        .unwrap_or_else(|panic| {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".to_string());
                            bufs = WorkerBufs::new(partitions);
                            Parsed {
                                seq,
                                first_line: None,
                                lines: 0,
                                input_bytes: 0,
                                hash: 0,
                                events: 0,
                                blocks: Vec::new(),
                                error: Some(Error::Internal(format!(
                                    "the job's parser panicked in input chunk {seq} (a bug in the job; nothing was stored): {why}"
                                ))),
                            }
                        });
                    if done_tx.send(parsed).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut pending = std::collections::BTreeMap::new();
        let (mut next, mut events, mut bytes, mut hash) = (0u64, 0u64, 0u64, 0xcbf2_9ce4_8422_2325u64);
        // The input line of the next unit's first line.
        let mut line = 1u64;
        let mut failure = None;
        'collect: for parsed in done_rx.iter() {
            pending.insert(parsed.seq, parsed);
            while let Some(mut p) = pending.remove(&next) {
                next += 1;
                if let Some(first) = p.first_line {
                    line = first;
                }
                if let Some(Error::BadInput { line: l, .. }) = &mut p.error {
                    *l += line - 1;
                }
                line += p.lines;
                hash = (hash ^ p.hash).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23) ^ p.input_bytes;
                bytes += p.input_bytes;
                for (part, (blocks, n)) in p.blocks.iter().enumerate() {
                    if let Err(e) = bulk.push_blocks(part as u32, blocks, *n) {
                        failure = Some(e);
                        break 'collect;
                    }
                }
                events += p.events;
                if let Some(e) = p.error {
                    failure = Some(e);
                    break 'collect;
                }
                if let Some(f) = &opts.progress {
                    f(bytes, events);
                }
                // Room for one more unit.
                let _ = token_tx.send(());
            }
        }
        // Stops the reader (it waits for tokens) and the workers (their channels close).
        drop(token_tx);
        drop(done_rx);
        let read = reader.join().map_err(|_| Error::Internal("the input reader panicked".into()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let units = read?;
        if next != units {
            return Err(Error::Internal(format!("{units} input units read but {next} parsed")));
        }
        Ok(BulkReport { events, bytes, fingerprint: format!("{hash:016x}{bytes:x}") })
    })
}

/// The reader thread: cuts `source` into [`Chunk`]s of whole lines, each sent once a token
/// says there is room. Finds the format (and checks the CSV header) first. Returns the
/// number of chunks sent; a chunk carrying an error is the last.
fn read_chunks<E: Event>(
    mut source: LineSource,
    format: Option<Format>,
    tokens: std::sync::mpsc::Receiver<()>,
    work: std::sync::mpsc::SyncSender<Chunk>,
) -> Result<u64> {
    let io = crate::export::read::input_error;
    let mut seq = 0u64;
    let mut line_no = 0u64;
    // The lines before the first data line: blank ones, and the CSV header.
    let mut first = Vec::new();
    let mut head_error = None;
    loop {
        first.clear();
        let n = std::io::Read::take(&mut source, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut first).map_err(io)?;
        if n == 0 {
            return Ok(0);
        }
        line_no += 1;
        if first.len() > LINE_BYTES_MAX && !first.ends_with(b"\n") {
            head_error = Some(FieldError::line(format!("line is longer than {LINE_BYTES_MAX} bytes")));
            break;
        }
        let text = String::from_utf8_lossy(&first);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let csv = match format {
            Some(Format::Csv) => true,
            Some(Format::Ndjson) => false,
            None => !text.starts_with('{'),
        };
        if !csv {
            break; // a data line: the first chunk starts with it
        }
        if !E::reads_csv() || text != E::csv_header() {
            head_error = Some(FieldError::line(expected_first_line::<E>(format.is_some())));
            break;
        }
        first.clear();
        line_no += 1; // the next line is the first data line
        break;
    }
    if let Some(error) = head_error {
        let _ = tokens.recv();
        let error = Some(Error::BadInput { line: line_no, error });
        let error = error.map(|e| match e {
            Error::BadInput { error, .. } => Error::BadInput { line: 1, error },
            e => e,
        });
        let _ = work.send(Chunk { seq: 0, first_line: line_no, bytes: Vec::new(), format: Format::Ndjson, error });
        return Ok(1);
    }
    // For CSV `line_no` is now the line after the header; for NDJSON, the first data line,
    // which `first` holds.
    let format = if first.is_empty() { Format::Csv } else { Format::Ndjson };
    let mut carry = std::mem::take(&mut first);
    loop {
        if tokens.recv().is_err() {
            return Ok(seq); // the collector stopped
        }
        let mut bytes = Vec::with_capacity(BULK_CHUNK_BYTES + 4096);
        bytes.append(&mut carry);
        let mut error = None;
        // Fill a chunk's worth, then complete its last line.
        while bytes.len() < BULK_CHUNK_BYTES {
            let buf = match source.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error = Some(io(e));
                    break;
                }
            };
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min(BULK_CHUNK_BYTES - bytes.len());
            bytes.extend_from_slice(&buf[..take]);
            source.consume(take);
        }
        if error.is_none() && !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            match std::io::Read::take(&mut source, (LINE_BYTES_MAX + 1) as u64).read_until(b'\n', &mut bytes) {
                Ok(_) => {}
                Err(e) => error = Some(io(e)),
            }
            let line_len = bytes.len() - start - usize::from(bytes.ends_with(b"\n"));
            if error.is_none() && line_len > LINE_BYTES_MAX {
                let lines = bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64;
                error = Some(Error::BadInput {
                    line: lines + 1,
                    error: FieldError::line(format!("line is longer than {LINE_BYTES_MAX} bytes")),
                });
                bytes.truncate(start);
            }
        }
        if bytes.is_empty() && error.is_none() {
            return Ok(seq);
        }
        let last = error.is_some();
        let chunk = Chunk { seq, first_line: if seq == 0 { line_no } else { 0 }, bytes, format, error };
        seq += 1;
        if work.send(chunk).is_err() || last {
            return Ok(seq);
        }
    }
}

/// A worker's job: parses, encodes, routes and compresses one chunk.
fn parse_chunk<E: Event>(chunk: Chunk, bufs: &mut WorkerBufs) -> Parsed {
    let Chunk { seq, first_line, bytes, format, error } = chunk;
    let mut out = Parsed {
        seq,
        first_line: (seq == 0).then_some(first_line),
        lines: 0,
        input_bytes: bytes.len() as u64,
        hash: crate::keys::body_hash(&bytes),
        events: 0,
        blocks: vec![(Vec::new(), 0); bufs.blocks.len()],
        error: None,
    };
    // The whole unit's UTF-8 is checked at once; only a unit that fails it is checked line
    // by line, to name the line.
    let result = match std::str::from_utf8(&bytes) {
        Ok(text) => text.split_inclusive('\n').try_for_each(|line| {
            out.lines += 1;
            parse_line::<E>(line, out.lines, format, bufs, &mut out)
        }),
        Err(_) => bytes.split_inclusive(|&b| b == b'\n').try_for_each(|raw| {
            out.lines += 1;
            let this = out.lines;
            let line = std::str::from_utf8(raw)
                .map_err(|e| Error::BadInput { line: this, error: FieldError::line(format!("not valid UTF-8 ({e})")) })?;
            parse_line::<E>(line, this, format, bufs, &mut out)
        }),
    };
    out.error = result.err().or(error);
    finish(out, bufs)
}

/// Parses line `this` (counted from 1 in its unit) and adds its event to its partition's
/// block, compressing the block once it is full.
#[inline]
fn parse_line<E: Event>(line: &str, this: u64, format: Format, bufs: &mut WorkerBufs, out: &mut Parsed) -> Result<()> {
    let text = line.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Ok(());
    }
    let parsed = match format {
        Format::Ndjson => E::parse_ndjson(text),
        Format::Csv => E::parse_csv(text),
    };
    let event = parsed.map_err(|error| Error::BadInput { line: this, error })?;
    let p = crate::append::partition_of(event.partition_key(), bufs.blocks.len() as u32) as usize;
    let block = &mut bufs.blocks[p];
    block
        .push_with(|data| bincode::serialize_into(data, &event))
        .map_err(|err| Error::Internal(format!("an event does not encode for the log: {err}")))?;
    out.events += 1;
    if block.raw_len() >= crate::log::BLOCK_RAW_BYTES {
        let n = u64::from(block.records());
        block.flush_into(&mut out.blocks[p].0, &mut bufs.zstd).map_err(Error::Internal)?;
        out.blocks[p].1 += n;
    }
    Ok(())
}

/// Closes a worker's job: the last block of every partition, unless it failed.
fn finish(mut out: Parsed, bufs: &mut WorkerBufs) -> Parsed {
    if out.error.is_some() {
        out.blocks.clear();
        bufs.blocks.iter_mut().for_each(crate::log::BlockBuf::clear);
        return out;
    }
    for (p, b) in bufs.blocks.iter_mut().enumerate() {
        let n = u64::from(b.records());
        if let Err(e) = b.flush_into(&mut out.blocks[p].0, &mut bufs.zstd) {
            out.error = Some(Error::Internal(e));
            out.blocks.clear();
            bufs.blocks.iter_mut().for_each(crate::log::BlockBuf::clear);
            return out;
        }
        out.blocks[p].1 += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(input: &str, max: usize) -> Vec<(u64, String)> {
        let mut r = Requests::new(input.as_bytes(), max);
        let mut out = Vec::new();
        while let Some(b) = r.next_body().expect("body") {
            out.push((b.first_line, String::from_utf8(b.bytes).expect("utf-8")));
        }
        out
    }

    // Proves NDJSON splits at line boundaries within the size, every line lands in exactly
    // one body in order, blank lines stay (so line numbers map exactly) and a body of blank
    // lines only is not sent.
    #[test]
    fn ndjson_bodies() {
        let input = "{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}";
        assert_eq!(bodies(input, 16), vec![(1, "{\"a\":1}\n{\"a\":2}\n".to_string()), (3, "\n{\"a\":3}\n".to_string())]);
        assert_eq!(bodies(input, 1000).len(), 1);
        assert!(Requests::new(input.as_bytes(), 5).next_body().unwrap_err().to_string().contains("line 1"));
        assert_eq!(bodies("\n{\"a\":1}\n\n\n\n\n\n\n\n\n\n", 9), vec![(2, "{\"a\":1}\n\n".to_string())]);
        // Resuming from a line leaves the earlier ones out.
        let mut r = Requests::from_line(input.as_bytes(), 16, 2);
        assert_eq!(r.next_body().expect("body").expect("a body").first_line, 2);
    }

    // Proves a line number in a body maps to the input's line, blank lines and header included.
    #[test]
    fn body_lines_map_to_input_lines() {
        let input = "h\nx1\n\nx2\n\n\nbad\n";
        let mut r = Requests::new(input.as_bytes(), 9);
        let first = r.next_body().expect("body").expect("a body");
        assert_eq!(first.bytes, b"h\nx1\n\nx2\n");
        let second = r.next_body().expect("body").expect("a body");
        assert_eq!(second.bytes, b"h\n\n\nbad\n");
        // The service numbers the header as line 1 of each body.
        assert_eq!(second.input_line(4), 7);
        assert_eq!(first.input_line(4), 4);
        let mut r = Requests::new("{}\n\n{}\n".as_bytes(), 100);
        assert_eq!(r.next_body().expect("body").expect("a body").input_line(3), 3);
    }

    // Proves a CSV header starts every body.
    #[test]
    fn csv_bodies() {
        let input = "h\nx1\nx2\nx3\n";
        assert_eq!(bodies(input, 8), vec![(2, "h\nx1\nx2\n".to_string()), (4, "h\nx3\n".to_string())]);
    }

    // Proves the chunk fingerprint is the key journal's body hash as it was first defined
    // (byte-copied, zero-padded 8-byte words: the fingerprint of an input, its default
    // idempotency key, must not change), for every length around the word size.
    #[test]
    fn chunk_hash_is_body_hash() {
        fn reference(body: &[u8]) -> u64 {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for chunk in body.chunks(8) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                h ^= u64::from_le_bytes(w);
                h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
            }
            h ^ ((crc32c::crc32c(body) as u64) << 32) ^ body.len() as u64
        }
        let bytes: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in 0..bytes.len() {
            assert_eq!(crate::keys::body_hash(&bytes[..len]), reference(&bytes[..len]), "length {len}");
        }
    }

    // Proves the fingerprint depends on every byte and is stable, and the scan finds the
    // longest line and the header.
    #[test]
    fn scans() {
        let f = |s: &str| scan(&mut s.as_bytes()).unwrap();
        assert_eq!(f("abc").fingerprint, f("abc").fingerprint);
        assert_ne!(f("abc").fingerprint, f("abd").fingerprint);
        assert_eq!(f("").fingerprint, "cbf29ce4842223250");
        let s = f("\nheader,x\n1,2\n\n1,2345\n1,2");
        assert_eq!((s.header_bytes, s.longest), (9, (5, 7)));
        assert_eq!(s.min_request(), 16);
        assert_eq!(f("{\"a\":1}\n{}").longest, (1, 8));
    }
}
