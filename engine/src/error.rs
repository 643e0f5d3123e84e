//! The engine's error type, and what each kind of error means to a user.
//!
//! Every error belongs to one [`ErrorKind`], and the kind decides the exit code of the CLI
//! and the HTTP status of the service. The kinds answer the question a user asks first:
//! *was it me, my data, the disk, or the program?*
//!
//! | kind            | exit | meaning                                                          |
//! |-----------------|------|------------------------------------------------------------------|
//! | [`Usage`]       | 2    | a flag, argument or request is wrong (unknown view, bad key, …)  |
//! | [`BadInput`]    | 3    | input data was rejected; nothing of it was stored                |
//! | [`Corruption`]  | 4    | stored data is damaged (the message names file and offset)       |
//! | [`Unavailable`] | 5    | busy, stopped or timed out; retrying later may succeed           |
//! | [`Io`]          | 6    | the operating system refused a file operation (disk, permission) |
//! | [`Internal`]    | 70   | a bug in lambdaflow or in the job's code: please report it       |
//!
//! [`Usage`]: ErrorKind::Usage
//! [`BadInput`]: ErrorKind::BadInput
//! [`Corruption`]: ErrorKind::Corruption
//! [`Unavailable`]: ErrorKind::Unavailable
//! [`Io`]: ErrorKind::Io
//! [`Internal`]: ErrorKind::Internal

use std::path::PathBuf;

use crate::log::LogError;

/// What kind of failure an [`Error`] is; decides exit codes and HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A flag, argument or request is wrong.
    Usage,
    /// Input data was rejected; nothing of it was stored.
    BadInput,
    /// Stored data is damaged.
    Corruption,
    /// Busy, stopped, or timed out: retrying later may succeed.
    Unavailable,
    /// The operating system refused a file operation.
    Io,
    /// A bug in lambdaflow or in the job.
    Internal,
}

impl ErrorKind {
    /// The CLI's exit code for this kind (see the module documentation).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::BadInput => 3,
            ErrorKind::Corruption => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::Io => 6,
            ErrorKind::Internal => 70,
        }
    }
}

/// How a dataflow (a batch run or a speed layer) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataflowError {
    /// The job's definition is unusable (an error found while building the dataflow).
    #[error("job {job} is invalid: {detail}")]
    InvalidJob {
        /// The job's name.
        job: String,
        /// What is wrong.
        detail: String,
    },
    /// A worker thread panicked (in the engine or in the job's own code).
    #[error("a worker failed: {0}")]
    Panicked(String),
    /// A worker process exited, or a peer never connected.
    #[error("{0}")]
    ProcessFailed(String),
    /// The job's own code panicked on one event of the log (found by replaying the events
    /// the workers had just fed): the job must handle it.
    #[error(
        "the job's code panicked on the event at partition {partition} offset {offset}: {message}; the event: {event}. \
         The log is immutable, so every run over it fails the same way: fix the job so it handles this event, \
         bump its Job::version, and recompute (docs/operations.md, \"A poison event\")"
    )]
    JobPanicked {
        /// The event's partition.
        partition: u32,
        /// The event's offset.
        offset: u64,
        /// The event, as JSON.
        event: String,
        /// The panic's message.
        message: String,
    },
    /// Something did not happen within its deadline.
    #[error("{0}")]
    Timeout(String),
    /// The dataflow reported a failure of its own (a worker's error).
    #[error("{0}")]
    Failed(String),
}

impl DataflowError {
    fn kind(&self) -> ErrorKind {
        match self {
            DataflowError::InvalidJob { .. }
            | DataflowError::Panicked(_)
            | DataflowError::Failed(_)
            | DataflowError::JobPanicked { .. } => ErrorKind::Internal,
            DataflowError::ProcessFailed(_) | DataflowError::Timeout(_) => ErrorKind::Unavailable,
        }
    }
}

/// Everything that can go wrong in the engine, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag, argument or request is wrong (unknown view, malformed key, bad option).
    #[error("{0}")]
    Usage(String),
    /// Input was rejected; nothing of it was stored.
    #[error("line {line}: {error}")]
    BadInput {
        /// 1-based line number in the input.
        line: u64,
        /// What is wrong with it.
        error: lambdaflow_operators::FieldError,
    },
    /// The master dataset refused or failed an operation.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The file or directory (or the stream, e.g. `<stdin>`).
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The operating system refused a resource that is not a file (a thread, the async
    /// runtime): usually a limit of the machine or the process.
    #[error("could not {what}: {source}")]
    System {
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
    /// Stored data or state is inconsistent in a way no file check caught (a batch version
    /// covering more than the log holds, a view missing from a version, …).
    #[error("{0}")]
    Inconsistent(String),
    /// The engine cannot do this now: the directory is held by another process, ingest is
    /// stopped until a restart, a layer is not caught up. Retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A dataflow failed.
    #[error("dataflow: {0}")]
    Dataflow(#[from] DataflowError),
    /// A bug: an invariant of the engine does not hold, or an internal encoding failed.
    #[error("internal error (a bug; please report it): {0}")]
    Internal(String),
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::BadInput { .. } => ErrorKind::BadInput,
            Error::Log(e) => log_kind(e),
            Error::Io { .. } => ErrorKind::Io,
            Error::CorruptView { .. } | Error::CorruptFile { .. } | Error::Decode { .. } | Error::Inconsistent(_) => ErrorKind::Corruption,
            Error::Unavailable(_) | Error::System { .. } => ErrorKind::Unavailable,
            Error::Dataflow(e) => e.kind(),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The OS refused a resource while doing `what`: `.map_err(Error::system("spawn x"))`.
    pub fn system(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::System { what, source }
    }

    /// The CLI's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }

    /// An I/O error on `path` while doing `what`: `.map_err(Error::io(path, "read"))`.
    pub fn io(path: impl Into<PathBuf>, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let (path, what) = (path.into(), what.into());
        move |source| Error::Io { path, what, source }
    }
}

fn log_kind(e: &LogError) -> ErrorKind {
    match e {
        LogError::Io { .. } => ErrorKind::Io,
        LogError::Corrupt { .. } | LogError::ManifestInvalid { .. } | LogError::SegmentInvalid { .. } => ErrorKind::Corruption,
        LogError::NotFound { .. } | LogError::InvalidConfig(_) | LogError::BadPartition { .. } | LogError::RecordTooLarge { .. } => {
            ErrorKind::Usage
        }
        LogError::Poisoned(_) | LogError::ReadOnly { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        let kinds =
            [ErrorKind::Usage, ErrorKind::BadInput, ErrorKind::Corruption, ErrorKind::Unavailable, ErrorKind::Io, ErrorKind::Internal];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        assert!(!codes.contains(&0) && !codes.contains(&1) && !codes.contains(&101), "0, 1 and 101 (a Rust panic) mean other things");
    }

    #[test]
    fn kinds_follow_the_cause() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        let corrupt = Error::Log(LogError::Corrupt { path: "p".into(), byte_offset: 3, detail: "crc".into() });
        assert_eq!(corrupt.kind(), ErrorKind::Corruption);
        assert_eq!(Error::Dataflow(DataflowError::Timeout("t".into())).kind(), ErrorKind::Unavailable);
        assert_eq!(Error::Dataflow(DataflowError::Panicked("p".into())).kind(), ErrorKind::Internal);
        let io = Error::io("/x", "read")(std::io::Error::other("boom"));
        assert_eq!(io.kind(), ErrorKind::Io);
        assert_eq!(io.to_string(), "read /x: boom");
    }
}
