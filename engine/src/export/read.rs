//! Parquet in: each row of a Parquet file as one NDJSON line, for the job's own parser.
//!
//! Columns are named as the event's NDJSON fields (`type`, `ts`, `order_id`, ...); a row
//! becomes `{"type":"purchase","ts":1767225600000,...}` with one field per non-null column,
//! so the job's [`Event::parse_ndjson`] validates it exactly as it validates NDJSON input
//! (a column that is null in a row is left out of that row's line, as a CSV file's empty
//! cell is). Types:
//!
//! | Parquet / Arrow | JSON |
//! | --- | --- |
//! | integers of any width, `Decimal128(p, 0)` | integer |
//! | `Decimal128(p, s)` | number with `s` decimals |
//! | `Float32`, `Float64` (finite) | number |
//! | `Boolean` | `true` / `false` |
//! | `Utf8`, `LargeUtf8`, `Utf8View` | string |
//! | `Date32`, `Date64` | `"YYYY-MM-DD"` |
//! | `Timestamp(unit, _)` | integer milliseconds since the epoch (rounded down) |
//! | `Dictionary(_, T)` (dictionary-encoded) | as `T` |
//!
//! Any other column type (lists, structs, binary) is refused at the first row that has a
//! value in it, naming the row, the column and its type.
//!
//! To ingest a Parquet file, a record source calls [`for_each_row_as_ndjson`] and hands each
//! line to the same code that handles an NDJSON line, with the row number as the line
//! number; [`parse_parquet`] does that for a whole file.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use lambdaflow_operators::{Day, Event, FieldError};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// Rows decoded at a time.
const BATCH_ROWS: usize = 8192;

/// Calls `f(row, line)` for every row of the Parquet file at `path`, in order, with the
/// 1-based row number and the row as one NDJSON line (no newline). Stops at the first error
/// `f` returns, and returns it. Returns the number of rows.
///
/// A row that cannot be expressed as JSON (a column type listed as refused in the module
/// docs, a NaN) is an [`Error::BadInput`] naming the row, the column and the value.
pub fn for_each_row_as_ndjson(path: &Path, mut f: impl FnMut(u64, &str) -> Result<()>) -> Result<u64> {
    let io = |what: &str, source: std::io::Error| Error::Io { path: path.to_path_buf(), what: what.into(), source };
    let not_parquet = |e: parquet::errors::ParquetError| Error::BadInput {
        line: 0,
        error: FieldError::line(format!("{} is not a readable Parquet file: {e}", path.display())),
    };
    let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(not_parquet)?.with_batch_size(BATCH_ROWS).build().map_err(not_parquet)?;
    let mut row: u64 = 0;
    let mut line = String::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::BadInput {
            line: row + 1,
            error: FieldError::line(format!("{} could not be decoded after row {row}: {e}", path.display())),
        })?;
        let names: Vec<String> = batch.schema().fields().iter().map(|f| serde_json::to_string(f.name()).unwrap_or_default()).collect();
        for i in 0..batch.num_rows() {
            row += 1;
            line.clear();
            row_as_json(&batch, &names, i, &mut line).map_err(|mut error| {
                error.message = format!("{} (row {row} of {})", error.message, path.display());
                Error::BadInput { line: row, error }
            })?;
            f(row, &line)?;
        }
    }
    Ok(row)
}

/// The rows of the Parquet file at `path` as NDJSON text (one line per row, row N on line N),
/// read by a thread a batch of rows at a time into a bounded channel: memory stays bounded
/// whatever the file's size. A row the reader cannot express (see [`for_each_row_as_ndjson`])
/// ends the text with an `InvalidData` error naming the file, row, column and value.
pub fn ndjson_reader(path: &Path) -> Result<ChannelReader> {
    // Fail early (in this thread) on a missing or unreadable file.
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "open".into(), source })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::BadInput {
        line: 0,
        error: FieldError::line(format!("{} is not a readable Parquet file: {e}", path.display())),
    })?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::result::Result<Vec<u8>, End>>(4);
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("parquet-reader".into())
        .spawn(move || {
            let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
            let read = for_each_row_as_ndjson(&path, |_, line| {
                chunk.extend_from_slice(line.as_bytes());
                chunk.push(b'\n');
                if chunk.len() >= CHUNK_BYTES {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES + 4096));
                    // The reader stopped listening (its ingest failed or ended): stop too.
                    tx.send(Ok(full)).map_err(|_| Error::Unavailable("the Parquet reader's consumer went away".into()))?;
                }
                Ok(())
            });
            // The last message says how it ended: an empty error text is the end of the rows.
            let _ = tx.send(Ok(chunk));
            let _ = tx.send(match read {
                Ok(_) => Err(End::Rows),
                Err(Error::BadInput { line, error }) => Err(End::BadRow(BadRow { line, error })),
                Err(e) => Err(End::Failed(e.to_string())),
            });
        })
        .map_err(|source| Error::System { what: "start the Parquet reader thread".into(), source })?;
    Ok(ChannelReader { rx, buf: Vec::new(), pos: 0, ended: false })
}

/// How a [`ndjson_reader`] thread's rows ended.
enum End {
    Rows,
    BadRow(BadRow),
    Failed(String),
}

/// A row a [`ndjson_reader`] could not express as NDJSON, carried through `std::io::Error`
/// (its source is read as a `BufRead`); [`input_error`] turns it back into bad input.
#[derive(Debug)]
pub struct BadRow {
    line: u64,
    error: FieldError,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

impl std::error::Error for BadRow {}

/// An error reading an input source: bad input when it is a Parquet row the reader could not
/// express, else an I/O error.
pub fn input_error(source: std::io::Error) -> Error {
    if !source.get_ref().is_some_and(|e| e.is::<BadRow>()) {
        return Error::Io { path: "<input>".into(), what: "read".into(), source };
    }
    match source.into_inner().map(|e| e.downcast::<BadRow>()) {
        Some(Ok(bad)) => Error::BadInput { line: bad.line, error: bad.error },
        other => Error::Internal(format!("reading Parquet input: {other:?}")),
    }
}

/// Bytes a [`ndjson_reader`] thread hands over at a time.
const CHUNK_BYTES: usize = 256 << 10;

/// NDJSON text arriving from a [`ndjson_reader`] thread, as a [`std::io::BufRead`].
pub struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, End>>,
    buf: Vec<u8>,
    pos: usize,
    /// The thread said the rows ended.
    ended: bool,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl std::io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos >= self.buf.len() && !self.ended {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(End::Rows)) => self.ended = true,
                Ok(Err(End::BadRow(bad))) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, bad)),
                Ok(Err(End::Failed(message))) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message)),
                Err(_) => return Err(std::io::Error::other("the Parquet reader thread stopped before the end of the file")),
            }
        }
        Ok(self.buf.get(self.pos..).unwrap_or_default())
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

/// Whether the file at `path` starts with Parquet's magic bytes (`PAR1`): how a record source
/// can tell a Parquet file from NDJSON or CSV without trusting its name.
pub fn is_parquet(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "open".into(), source })?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"PAR1"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), what: "read".into(), source }),
    }
}

/// Reads every row of the Parquet file at `path` as an event of `E`. A bad row is an
/// [`Error::BadInput`] whose line number is the row number (1-based).
pub fn parse_parquet<E: Event>(path: &Path) -> Result<Vec<E>> {
    let mut events = Vec::new();
    for_each_row_as_ndjson(path, |row, line| {
        let event = E::parse_ndjson(line).map_err(|mut error| {
            error.message = format!("{} (row {row} of {})", error.message, path.display());
            Error::BadInput { line: row, error }
        })?;
        events.push(event);
        Ok(())
    })?;
    Ok(events)
}

/// Appends row `i` of `batch` to `out` as a JSON object; `names` are the columns' names as
/// JSON strings.
fn row_as_json(batch: &RecordBatch, names: &[String], i: usize, out: &mut String) -> std::result::Result<(), FieldError> {
    out.push('{');
    let mut first = true;
    for (c, column) in batch.columns().iter().enumerate() {
        if column.is_null(i) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&names[c]);
        out.push(':');
        let name = batch.schema_ref().field(c).name().clone();
        value_as_json(column.as_ref(), i, out).map_err(|(value, message)| FieldError::field(name, value, message))?;
    }
    out.push('}');
    Ok(())
}

/// Appends value `i` of `a` (not null) as JSON; an error is (value, message).
fn value_as_json(a: &dyn Array, i: usize, out: &mut String) -> std::result::Result<(), (String, String)> {
    macro_rules! int {
        ($t:ty) => {{
            let _ = write!(out, "{}", a.as_primitive::<$t>().value(i));
        }};
    }
    match a.data_type() {
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Boolean => out.push_str(if a.as_boolean().value(i) { "true" } else { "false" }),
        DataType::Float32 => float(f64::from(a.as_primitive::<Float32Type>().value(i)), out)?,
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i), out)?,
        DataType::Utf8 => string(a.as_string::<i32>().value(i), out),
        DataType::LargeUtf8 => string(a.as_string::<i64>().value(i), out),
        DataType::Utf8View => string(a.as_string_view().value(i), out),
        DataType::Date32 => string(&Day(a.as_primitive::<Date32Type>().value(i)).to_string(), out),
        DataType::Date64 => string(&Day::of_ms(a.as_primitive::<Date64Type>().value(i)).to_string(), out),
        DataType::Timestamp(unit, _) => {
            let ms = match unit {
                TimeUnit::Second => i128::from(a.as_primitive::<TimestampSecondType>().value(i)) * 1000,
                TimeUnit::Millisecond => i128::from(a.as_primitive::<TimestampMillisecondType>().value(i)),
                TimeUnit::Microsecond => i128::from(a.as_primitive::<TimestampMicrosecondType>().value(i)).div_euclid(1000),
                TimeUnit::Nanosecond => i128::from(a.as_primitive::<TimestampNanosecondType>().value(i)).div_euclid(1_000_000),
            };
            let _ = write!(out, "{ms}");
        }
        DataType::Decimal128(_, scale) => {
            let v = a.as_primitive::<Decimal128Type>().value(i);
            decimal(v, *scale, out);
        }
        // Dictionary-encoded (as many writers store repetitive strings): the value the key
        // points at.
        DataType::Dictionary(key, _) => {
            let d = a.as_any_dictionary();
            let k = d.keys();
            let at = match key.as_ref() {
                DataType::Int8 => i64::from(k.as_primitive::<Int8Type>().value(i)),
                DataType::Int16 => i64::from(k.as_primitive::<Int16Type>().value(i)),
                DataType::Int32 => i64::from(k.as_primitive::<Int32Type>().value(i)),
                DataType::Int64 => k.as_primitive::<Int64Type>().value(i),
                DataType::UInt8 => i64::from(k.as_primitive::<UInt8Type>().value(i)),
                DataType::UInt16 => i64::from(k.as_primitive::<UInt16Type>().value(i)),
                DataType::UInt32 => i64::from(k.as_primitive::<UInt32Type>().value(i)),
                DataType::UInt64 => i64::try_from(k.as_primitive::<UInt64Type>().value(i)).unwrap_or(-1),
                other => return Err((format!("<{other} key>"), format!("has dictionary keys of type {other}, which are not read"))),
            };
            let values = d.values();
            match usize::try_from(at).ok().filter(|&at| at < values.len()) {
                Some(at) if values.is_null(at) => out.push_str("null"),
                Some(at) => value_as_json(values.as_ref(), at, out)?,
                None => return Err((at.to_string(), "is a dictionary key outside its dictionary".into())),
            }
        }
        other => {
            return Err((
                format!("<{other}>"),
                format!("has Parquet/Arrow type {other}, which is not read as an event field (integers, decimals, floats, booleans, strings, dates and timestamps are)"),
            ))
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn float(f: f64, out: &mut String) -> std::result::Result<(), (String, String)> {
    match serde_json::Number::from_f64(f) {
        Some(n) => {
            let _ = write!(out, "{n}");
            Ok(())
        }
        None => Err((f.to_string(), "is not a finite number".into())),
    }
}

/// A Decimal128 with `scale` decimals as JSON number text.
fn decimal(v: i128, scale: i8, out: &mut String) {
    if scale <= 0 {
        let _ = write!(out, "{v}");
        for _ in 0..(-scale) {
            out.push('0');
        }
        return;
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale + 1 - digits.len())) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    if v < 0 {
        out.push('-');
    }
    let _ = write!(out, "{int}.{frac}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::types::Int32Type as I32;
    use arrow_array::{
        ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, ListArray, StringArray, TimestampMicrosecondArray,
    };
    use std::sync::Arc;

    fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn lines(path: &Path) -> Result<Vec<(u64, String)>> {
        let mut got = Vec::new();
        for_each_row_as_ndjson(path, |row, line| {
            got.push((row, line.to_string()));
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn dictionary_encoded_strings_are_read_as_their_values() {
        let dir = crate::testing::TempDir::new("parquet-dict");
        let path = dir.path().join("dict.parquet");
        let dict: arrow_array::DictionaryArray<I32> = vec![Some("view"), Some("purchase"), None, Some("view")].into_iter().collect();
        write(&path, vec![("type", Arc::new(dict) as ArrayRef)]);
        let f = std::fs::File::open(&path).unwrap();
        let schema = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().schema().clone();
        assert!(matches!(schema.field(0).data_type(), DataType::Dictionary(..)), "the file keeps the dictionary type");
        let got: Vec<String> = lines(&path).unwrap().into_iter().map(|(_, l)| l).collect();
        assert_eq!(got, [r#"{"type":"view"}"#, r#"{"type":"purchase"}"#, "{}", r#"{"type":"view"}"#]);
    }

    #[test]
    fn rows_become_ndjson_lines_without_null_fields() {
        let dir = crate::testing::TempDir::new("parquet-read");
        let path = dir.path().join("in.parquet");
        write(
            &path,
            vec![
                ("type", Arc::new(StringArray::from(vec![Some("purchase"), Some("vi\"ew")])) as ArrayRef),
                ("ts", Arc::new(TimestampMicrosecondArray::from(vec![1_500_999, -1]))),
                ("qty", Arc::new(Int64Array::from(vec![Some(3), None]))),
                ("day", Arc::new(Date32Array::from(vec![0, 20_454]))),
                ("amt", Arc::new(Decimal128Array::from(vec![-5, 12_345]).with_precision_and_scale(10, 2).unwrap())),
                ("r", Arc::new(Float64Array::from(vec![0.5, 2.0]))),
            ],
        );
        assert!(is_parquet(&path).unwrap());
        std::fs::write(dir.path().join("e.ndjson"), b"{\"type\":\"view\"}\n").unwrap();
        assert!(!is_parquet(&dir.path().join("e.ndjson")).unwrap());
        std::fs::write(dir.path().join("short"), b"PA").unwrap();
        assert!(!is_parquet(&dir.path().join("short")).unwrap());
        let got = lines(&path).unwrap();
        assert_eq!(
            got,
            vec![
                (1, r#"{"type":"purchase","ts":1500,"qty":3,"day":"1970-01-01","amt":-0.05,"r":0.5}"#.to_string()),
                (2, r#"{"type":"vi\"ew","ts":-1,"day":"2026-01-01","amt":123.45,"r":2.0}"#.to_string()),
            ]
        );
        for (_, l) in &got {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }

    #[test]
    fn an_unreadable_column_names_row_column_and_type() {
        let dir = crate::testing::TempDir::new("parquet-read");
        let path = dir.path().join("in.parquet");
        let list = ListArray::from_iter_primitive::<I32, _, _>(vec![None, Some(vec![Some(1)])]);
        write(&path, vec![("ok", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef), ("tags", Arc::new(list))]);
        let err = lines(&path).unwrap_err().to_string();
        assert!(err.starts_with("line 2:") && err.contains("field \"tags\"") && err.contains("List"), "{err}");
        assert!(err.contains(&format!("row 2 of {}", path.display())), "the error names the file: {err}");
        let nan = dir.path().join("nan.parquet");
        write(&nan, vec![("x", Arc::new(Float64Array::from(vec![1.0, f64::NAN])) as ArrayRef)]);
        let err = lines(&nan).unwrap_err().to_string();
        assert!(err.starts_with("line 2:") && err.contains("\"x\"") && err.contains("NaN"), "{err}");
        assert!(err.contains(&format!("row 2 of {}", nan.display())), "the error names the file: {err}");
        std::fs::write(dir.path().join("bad.parquet"), b"not parquet at all").unwrap();
        let err = lines(&dir.path().join("bad.parquet")).unwrap_err().to_string();
        assert!(err.contains("not a readable Parquet file"), "{err}");
    }

    #[test]
    fn decimals_keep_their_scale() {
        let mut s = String::new();
        for (v, scale, want) in [(5, 0, "5"), (-5, 2, "-0.05"), (12345, 2, "123.45"), (7, -2, "700"), (-100, 1, "-10.0")] {
            s.clear();
            decimal(v, scale, &mut s);
            assert_eq!(s, want);
        }
    }
}
