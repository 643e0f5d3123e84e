//! The event contract: what a job's own event type must provide so the engine can parse,
//! store and replay it.

use std::fmt;

/// A parse failure for one input line, naming the field and the offending value.
///
/// The engine adds the line number when it reports the error, so the final message reads
/// like `line 17: field "quantity": value "-3": must be at least 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field that is wrong, when the error is about one field.
    pub field: Option<String>,
    /// The offending value as it appeared in the input (truncated to a readable length).
    pub value: Option<String>,
    /// What is wrong, as a short sentence fragment.
    pub message: String,
}

impl FieldError {
    /// An error about the line as a whole (not valid JSON, wrong column count, ...).
    pub fn line(message: impl Into<String>) -> Self {
        FieldError { field: None, value: None, message: message.into() }
    }

    /// An error about one field and its value.
    pub fn field(field: impl Into<String>, value: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: Some(field.into()), value: Some(truncated(value.into(), 64)), message: message.into() }
    }

    /// An error about a missing field.
    pub fn missing(field: impl Into<String>) -> Self {
        FieldError { field: Some(field.into()), value: None, message: "is required but missing".into() }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with `…` when it was cut.
pub(crate) fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.field {
            write!(f, "field \"{field}\": ")?;
        }
        if let Some(value) = &self.value {
            write!(f, "value \"{value}\": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

/// Why a CSV row of an event type without a CSV form is refused.
pub const NO_CSV: &str = "this job's events have no CSV form: it reads NDJSON (one JSON object a line) or Parquet only";

/// The input formats an event type can be read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line.
    Ndjson,
    /// One CSV row a line, after a header row.
    Csv,
}

/// A job's event type.
///
/// Events flow through differential dataflow, so the type is `Ord + Hash + Clone + Debug`
/// as well as serde (see [`crate::Data`]): derive them.
///
/// Events are stored in the master dataset with bincode (through `Serialize` /
/// `DeserializeOwned`), so the type must round-trip through bincode exactly. Parsing from
/// the wire formats is the type's own business so that errors can name fields precisely.
pub trait Event: crate::view::Data {
    /// Parses one NDJSON line (without its newline).
    ///
    /// The default is the type's serde form through [`from_ndjson`](crate::from_ndjson),
    /// whose errors name the field, the value and the expected type. Implement it by hand
    /// for a different wire form, or for speed on a hot ingest path.
    fn parse_ndjson(line: &str) -> Result<Self, FieldError> {
        crate::from_ndjson(line)
    }

    /// The CSV header this type expects, e.g. `type,ts,order_id`.
    ///
    /// CSV is optional. The default, `""`, says the type has no CSV form: `ingest` refuses
    /// CSV input naming the file (nothing is stored), `ingest --help` says the job reads
    /// NDJSON and Parquet only. Implement this and [`Event::parse_csv`] together to read CSV.
    fn csv_header() -> &'static str {
        ""
    }

    /// Parses one CSV data row (without its newline), after the header. The default refuses
    /// every row (see [`Event::csv_header`]).
    fn parse_csv(line: &str) -> Result<Self, FieldError> {
        let _ = line;
        Err(FieldError::line(NO_CSV))
    }

    /// Whether the type has a CSV form: a non-empty [`Event::csv_header`].
    fn reads_csv() -> bool {
        !Self::csv_header().is_empty()
    }

    /// A key that decides the log partition of the event. Events with the same key keep
    /// their relative order; the views never depend on it, only locality does.
    fn partition_key(&self) -> u64;
}
