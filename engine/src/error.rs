//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The master dataset refused or failed an operation.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored batch view or its metadata is damaged.
    #[error("batch view file {path} is damaged: {detail}")]
    CorruptView {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A data file other than the log or a batch view is damaged.
    #[error("{path} is damaged: {detail}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        detail: String,
    },
    /// Input was rejected; nothing of it was stored.
    #[error("line {line}: {error}")]
    BadInput {
        /// 1-based line number in the input.
        line: u64,
        /// What is wrong with it.
        error: lambdaflow_operators::FieldError,
    },
    /// A stored event does not decode as the job's event type.
    #[error("event at partition {partition} offset {offset} does not decode as this job's event type: {detail}")]
    Decode {
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// The decoder's message.
        detail: String,
    },
    /// The dataflow failed (a worker panicked or the job is invalid).
    #[error("dataflow: {0}")]
    Dataflow(String),
    /// A request that cannot be served as asked (unknown view, bad key, ...).
    #[error("{0}")]
    Invalid(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
