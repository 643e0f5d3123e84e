//! # lambdaflow-engine: the runtime
//!
//! Lambda architecture from one job definition. The engine keeps an immutable master
//! dataset ([`log`]) that events enter only through the [`Appender`], runs the job in
//! **batch mode** over the log before a cut and publishes immutable batch versions
//! ([`run_batch`], [`ViewStore`]), runs the same job in **speed mode** over the log from
//! that cut on, and merges both on read with visible freshness ([`Lambda`]). [`cli`] turns
//! any job into a full command-line program (with the HTTP service), and [`testing`] lets a
//! job's author check, from a `#[test]`, that every merged view is exact. Both modes also
//! run across worker processes.
//!
//! ```ignore
//! let lambda = Lambda::open(MyJob, Path::new("data"), Options::default())?;
//! lambda.append(&events)?;                       // durable: fsync'd before it returns
//! lambda.batch_and_handover(Default::default())?; // batch views at a new cut
//! lambda.append(&more)?;
//! lambda.sync(Duration::from_secs(5))?;           // speed layer caught up
//! let r = lambda.query("clicks_by_page", &Selection::Key("7".into()))?;
//! ```
//!
//! The modules are private; this page lists what a job's binary, its tests and tools use.
//! `docs/architecture.md` shows the layers and the folders that hold them.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod append;
mod batch;
pub mod cli;
mod clock;
mod cluster;
pub mod connect;
mod diagnose;
mod durable;
mod error;
pub mod export;
mod guard;
mod input;
mod keys;
mod lambda;
pub mod log;
mod serve;
mod speed;
mod store;
mod sync;
pub mod testing;
mod units;

pub use append::{partition_of, Appender, Bulk, Committed, Encoded, Write, Written};
pub use batch::{max_rate_from_env, run_batch, run_batch_on, BatchReport, BatchRun, Progress, MAX_RATE_ENV};
pub use clock::now_ms;
pub use cluster::{Peers, PEER_TIMEOUT};
pub use error::{DataflowError, Error, ErrorKind, Result};
pub use input::{
    open_source, parse_all, parse_each, stage_all, BulkOptions, BulkReport, InputFormat, LineSource, BULK_CHUNK_BYTES, BULK_MEMORY_MIN,
    LINE_BYTES_MAX,
};
pub use keys::{KeyEntry, Range, KEYS_MAX_DEFAULT, KEY_BYTES_MAX, KEY_RETENTION_DEFAULT};
pub use lambda::{ClusterOptions, ClusterStatus, Freshness, Lambda, LoadedBatch, Options, QueryResult, Serving, Status};
pub use lambdaflow_operators as operators;
pub use serve::{Running, Schedule, ServeConfig};
pub use speed::{SpeedLayer, SpeedState, VisibleLatency};
pub use store::{BatchMeta, PendingVersion, ViewStore};
