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
/// input's header line starts every body.
pub(crate) struct Requests<R> {
    input: R,
    max_bytes: usize,
    /// The CSV header (with its newline), once seen.
    header: Option<Vec<u8>>,
    /// The first line of the next body, read but not yet placed.
    pending: Option<Vec<u8>>,
    line_no: u64,
    started: bool,
}

/// One request body of [`Requests`].
#[derive(Debug)]
pub(crate) struct Body {
    /// The 1-based input line of its first event line.
    pub first_line: u64,
    /// The lines (with the CSV header first, for CSV).
    pub bytes: Vec<u8>,
}

impl<R: BufRead> Requests<R> {
    /// Bodies of at most `max_bytes` from `input`.
    pub(crate) fn new(input: R, max_bytes: usize) -> Self {
        Requests { input, max_bytes, header: None, pending: None, line_no: 0, started: false }
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
        let mut body = self.header.clone().unwrap_or_default();
        let header_len = body.len();
        let mut first_line = 0;
        loop {
            let line = match self.pending.take() {
                Some(l) => l,
                None => match self.read_line()? {
                    Some(l) => l,
                    None => break,
                },
            };
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if !self.started {
                self.started = true;
                if !line.trim_ascii_start().starts_with(b"{") {
                    // The CSV header (a wrong first line is named by the parser later).
                    self.header = Some(line.clone());
                    body = line;
                    continue;
                }
            }
            if body.len() + line.len() > self.max_bytes {
                if body.len() == header_len {
                    return Err(Error::Usage(format!(
                        "line {} is {} bytes, more than a request may hold ({} bytes); raise --request-size",
                        self.line_no,
                        line.len(),
                        self.max_bytes
                    )));
                }
                self.pending = Some(line);
                break;
            }
            if first_line == 0 {
                first_line = self.line_no;
            }
            body.extend_from_slice(&line);
        }
        Ok((first_line != 0).then_some(Body { first_line, bytes: body }))
    }
}

/// A stable fingerprint of all of `input` (64-bit FNV-1a over its bytes, and its length):
/// the same file gives the same fingerprint on every machine and build.
pub(crate) fn fingerprint(input: &mut dyn std::io::Read) -> std::io::Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        len += n as u64;
    }
    Ok(format!("{hash:016x}{len:x}"))
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
    // one body in order, and blank lines are dropped.
    #[test]
    fn ndjson_bodies() {
        let input = "{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}";
        assert_eq!(bodies(input, 16), vec![(1, "{\"a\":1}\n{\"a\":2}\n".to_string()), (4, "{\"a\":3}\n".to_string())]);
        assert_eq!(bodies(input, 1000).len(), 1);
        assert!(Requests::new(input.as_bytes(), 5).next_body().unwrap_err().to_string().contains("line 1"));
    }

    // Proves a CSV header starts every body.
    #[test]
    fn csv_bodies() {
        let input = "h\nx1\nx2\nx3\n";
        assert_eq!(bodies(input, 8), vec![(2, "h\nx1\nx2\n".to_string()), (4, "h\nx3\n".to_string())]);
    }

    // Proves the fingerprint depends on every byte and is stable.
    #[test]
    fn fingerprints() {
        let f = |s: &str| fingerprint(&mut s.as_bytes()).unwrap();
        assert_eq!(f("abc"), f("abc"));
        assert_ne!(f("abc"), f("abd"));
        assert_eq!(f(""), "cbf29ce4842223250");
    }
}
