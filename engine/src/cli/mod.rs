//! The command line every lambdaflow binary gets: `ingest`, `batch`, `query`, `status`,
//! `verify`, `demo` (and `gen` when the application provides a generator).
//!
//! A user's binary is `fn main() -> ExitCode { lambdaflow_engine::cli::main(App::new(MyJob)) }`.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lambdaflow_operators::{Format, Job, Selection};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::append::Appender;
use crate::batch::Progress;
use crate::cluster::{Role, WorkerArgs};
use crate::error::{DataflowError, Error, Result};
use crate::lambda::{ClusterOptions, Lambda, Options, QueryResult};
use crate::log::{Log, LogConfig};
use crate::units::{format_bytes, format_duration, parse_bytes_usize, parse_duration, parse_positive_duration};

/// `println!` that returns an error instead of panicking when stdout is gone (see [`out`]);
/// for functions returning [`Result`].
macro_rules! outln {
    () => {
        out(format_args!(""))?
    };
    ($($arg:tt)*) => {
        out(format_args!($($arg)*))?
    };
}

mod args;
mod commands;
mod connect;
mod demo;
mod export;
mod local;
mod lock;
mod options;
mod output;
mod remote;
#[cfg(test)]
mod tests;

use args::*;
use commands::*;
use connect::*;
use demo::*;
use export::*;
use lock::*;
use options::*;
use output::*;
use remote::*;

pub(crate) use local::lint as lint_job;

/// Produces synthetic events for `gen` and `demo`.
pub trait Generator<E>: Send + Sync {
    /// Writes `events` events generated from `seed` in `format` to `out`.
    fn write(&self, events: u64, seed: u64, format: Format, out: &mut dyn Write) -> std::io::Result<u64>;
    /// `count` events generated from `seed`, as values. `live` asks for event times around
    /// now rather than in the historical range.
    fn events(&self, seed: u64, count: u64, live: bool) -> Vec<E>;
    /// Appends `events` to `out` as NDJSON lines (what `demo` posts to the service).
    fn to_ndjson(&self, events: &[E], out: &mut Vec<u8>);
}

/// What `demo` prints after each step: a few lines of merged answers.
pub type DemoReport<J> = Arc<dyn Fn(&Lambda<J>) -> Result<Vec<String>> + Send + Sync>;

/// A job packaged as a command-line application.
pub struct App<J: Job> {
    job: J,
    generator: Option<Arc<dyn Generator<J::Event>>>,
    demo_report: Option<DemoReport<J>>,
    dashboard: &'static str,
}

impl<J: Job> App<J> {
    /// An application for `job`.
    pub fn new(job: J) -> Self {
        App { job, generator: None, demo_report: None, dashboard: crate::serve::GENERIC_DASHBOARD }
    }

    /// The page `serve` answers `GET /` with (a self-contained HTML document that reads the
    /// HTTP API; see docs/serving.md). Without it, a generic page lists views and freshness.
    pub fn dashboard(mut self, html: &'static str) -> Self {
        self.dashboard = html;
        self
    }

    /// Adds a generator: enables `gen` and `demo`.
    pub fn generator(mut self, g: impl Generator<J::Event> + 'static) -> Self {
        self.generator = Some(Arc::new(g));
        self
    }

    /// What `demo` prints as the speed layer moves.
    pub fn demo_report(mut self, f: impl Fn(&Lambda<J>) -> Result<Vec<String>> + Send + Sync + 'static) -> Self {
        self.demo_report = Some(Arc::new(f));
        self
    }
}

/// Runs the command line for `app` and returns the process exit code. Return it from the
/// binary's `main` at once: a local `query` leaves its dataflow workers idle, holding their
/// state, for the process's exit to end (freeing that state would only delay the answer).
/// A program that goes on after a command uses [`main_with`], which leaves nothing behind.
pub fn main<J: Job>(app: App<J>) -> ExitCode {
    let cli = parse_cli::<J::Event>();
    // One command, then the process exits: a local query need not free its state.
    local::LEAK_STATE_AT_EXIT.store(true, std::sync::atomic::Ordering::Relaxed);
    match run(app, cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output has gone (`lambdaflow query ... | head`): not a failure.
        Err(e) if stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The command line, with `ingest`'s help saying which formats this job's events read.
fn parse_cli<E: lambdaflow_operators::Event>() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command::<E>().get_matches()).unwrap_or_else(|e| e.exit())
}

/// The command line's definition for a job whose events are `E`.
fn command<E: lambdaflow_operators::Event>() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    if !E::reads_csv() {
        cmd = cmd.mut_subcommand("ingest", |c| {
            c.about("Append events from FILE (or - for stdin), NDJSON or Parquet, durably. A bad line rejects the whole input.")
                .mut_arg("format", |a| {
                    a.help("Input format: ndjson or parquet (default: from the file's extension, else NDJSON). This job's events have no CSV form: CSV input is refused")
                })
        });
    }
    cmd
}

/// Whether `e` is a write to stdout that found the reading end closed.
fn stdout_closed(e: &Error) -> bool {
    matches!(e, Error::Io { path, source, .. } if path == Path::new(STDOUT) && source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// How errors writing to stdout name it.
const STDOUT: &str = "<stdout>";

/// Validates the global flags and dispatches to the command.
fn run<J: Job>(app: App<J>, cli: Cli) -> Result<()> {
    let g = Global {
        data: cli.data,
        workers: options::workers(cli.workers, options::cores())?,
        workers_given: cli.workers.is_some(),
        wait: cli.wait,
    };
    crate::batch::max_rate_from_env()?;
    match cli.command {
        Command::Gen(args) => gen(&app, args),
        Command::Ingest(args) => ingest::<J>(&g, args),
        Command::Batch(args) => batch(app, &g, args),
        Command::Query(args) => query(app, &g, args),
        Command::Views(args) => views(app, &g, args),
        Command::Status(args) => status(app, &g, args),
        Command::Verify(args) => verify(&g, args),
        Command::Demo(args) => demo(app, &g.data, g.workers, g.wait, args),
        Command::Serve(args) => serve_cmd(app, &g, args),
        Command::Cluster(args) => cluster(app, &g, args),
        Command::Worker(args) => worker(app, &g.data, g.workers, args),
        Command::Export(args) => export(app, &g, args),
        Command::KafkaPositions(args) => kafka_positions(&g, args),
    }
}

/// Writes one line to stdout.
fn out(line: std::fmt::Arguments) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|source| Error::Io { path: STDOUT.into(), what: "write".into(), source })
}

/// Convenience for tests and tools: read all of `path` as events of `E`.
pub fn read_events<E: lambdaflow_operators::Event>(path: &Path) -> Result<Vec<E>> {
    let f = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "open".into(), source })?;
    let mut r: Box<dyn BufRead> = Box::new(std::io::BufReader::new(f));
    crate::input::parse_all(&mut r)
}

/// [`main`] with the command line `args` (the first is the program's name) instead of the
/// process's, returning the exit code (0 on success, else the error's): for tools and tests
/// that run a job's command line from their own binary (`std::process::exit(code.into())`).
pub fn main_with<J: Job, I, T>(app: App<J>, args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let cli = match command::<J::Event>().try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(app, cli) {
        Ok(()) => 0,
        Err(e) if stdout_closed(&e) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            e.exit_code()
        }
    }
}
