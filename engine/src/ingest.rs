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
