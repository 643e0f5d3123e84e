//! # lambdaflow-engine: the runtime
//!
//! Lambda architecture from one job definition. The engine keeps an immutable master
//! dataset ([`log`]), runs the job in **batch mode** over the log before a cut and publishes
//! immutable batch views ([`batch`], [`store`]), runs the same job in **speed mode** over
//! the log from that cut on ([`speed`]), and merges both on read with visible freshness
//! ([`lambda`]). [`cli`] turns any job into a full command-line program, and [`testing`]
//! lets a job's author check, from a `#[test]`, that every merged view is exact. Both modes
//! also run across worker processes ([`cluster`]).
//!
//! ```ignore
//! let lambda = Lambda::open(MyJob, Path::new("data"), Options::default())?;
//! lambda.append(&events)?;                       // durable: fsync'd before it returns
//! lambda.batch_and_handover(Default::default())?; // batch views at a new cut
//! lambda.append(&more)?;
//! lambda.sync(Duration::from_secs(5))?;           // speed layer caught up
//! let r = lambda.query("clicks_by_page", &Selection::Key("7".into()))?;
//! ```

#![deny(missing_docs)]

pub mod batch;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod guard;
pub mod ingest;
pub mod keys;
pub mod lambda;
pub mod log;
pub mod serve;
pub mod speed;
pub mod store;
pub mod testing;
pub mod units;

pub use error::{Error, Result};
pub use lambda::{Freshness, Lambda, Options, QueryResult, Status};
pub use lambdaflow_operators as operators;
