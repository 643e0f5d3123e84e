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
                } else if text.trim() == E::csv_header() {
                    format = Some(Format::Csv);
                    continue;
                } else {
                    return Err(bad(FieldError::line(format!("expected a JSON object (NDJSON) or the CSV header `{}`", E::csv_header()))));
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
