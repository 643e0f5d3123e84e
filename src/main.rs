//! The `lambdaflow` binary: the engine's command line with the shop job compiled in.

use std::process::ExitCode;

fn main() -> ExitCode {
    lambdaflow_engine::cli::main(lambdaflow_jobs::shop::app())
}
