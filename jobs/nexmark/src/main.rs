//! The `lambdaflow-nexmark` binary: the Nexmark job with every lambdaflow subcommand.
//!
//! ```text
//! lambdaflow-nexmark gen nexmark --events 1000000 > events.ndjson
//! lambdaflow-nexmark --data /tmp/nx ingest events.ndjson
//! lambdaflow-nexmark --data /tmp/nx batch
//! lambdaflow-nexmark --data /tmp/nx query q4_avg_price_by_category
//! lambdaflow-nexmark --data /tmp/nx serve
//! ```
//!
//! `LAMBDAFLOW_NEXMARK_JOIN=plain` builds the job with `ctx.join` + filter instead of the
//! interval join (same views, full seeds), to compare seed sizes.
//! `LAMBDAFLOW_NEXMARK_QUERIES=q4,q9` builds only those queries' views, to measure one
//! query at a time.

use lambdaflow_engine::cli::App;
use lambdaflow_nexmark::gen::NexmarkGenerator;
use lambdaflow_nexmark::Nexmark;
use std::process::ExitCode;

fn main() -> ExitCode {
    let plain_join = std::env::var("LAMBDAFLOW_NEXMARK_JOIN").is_ok_and(|v| v == "plain");
    let mut job = Nexmark { plain_join, ..Nexmark::default() };
    if let Ok(queries) = std::env::var("LAMBDAFLOW_NEXMARK_QUERIES") {
        job = match job.only(&queries) {
            Ok(job) => job,
            Err(e) => {
                eprintln!("error: LAMBDAFLOW_NEXMARK_QUERIES: {e}");
                return ExitCode::from(2);
            }
        };
    }
    lambdaflow_engine::cli::main(App::new(job).generator(NexmarkGenerator))
}
