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

use crate::batch::Progress;
use crate::error::{DataflowError, Error, Result};
use crate::lambda::{append_events, ClusterOptions, Lambda, Options, QueryResult};
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

#[derive(Parser)]
#[command(
    name = "lambdaflow",
    version,
    about = "lambdaflow: one job, two modes (batch + speed), merged exactly",
    after_help = "Start with `demo --fresh`; see `COMMAND --help` for examples."
)]
struct Cli {
    /// The data directory (master dataset and batch views).
    #[arg(long, global = true, default_value = "lambdaflow-data")]
    data: PathBuf,
    /// Worker threads for batch and speed dataflows.
    #[arg(short = 'w', long = "workers", global = true, default_value_t = 2)]
    workers: usize,
    /// How long to wait for another process holding the data directory (e.g. 5s, 1m; 0: don't).
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    wait: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate synthetic events to stdout (or --out FILE).
    #[command(after_help = "Example:\n  lambdaflow gen shop --events 1000000 --seed 7 > events.ndjson")]
    Gen(GenArgs),
    /// Append events from FILE (or - for stdin), NDJSON or CSV, durably. A bad line rejects the whole input.
    #[command(after_help = "Examples:\n  lambdaflow ingest events.ndjson\n  lambdaflow gen shop --events 5000 | lambdaflow ingest -\n  \
        lambdaflow ingest --server http://127.0.0.1:7070 events.ndjson   # to a running service, any size")]
    Ingest {
        /// The input file, or `-` for stdin.
        file: String,
        /// Send FILE to a running service (e.g. http://127.0.0.1:7070) in keyed requests that
        /// fit its --max-body, instead of appending to --data. Validated whole first; a re-run
        /// after a failure resends the same requests, which are stored once.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// With --server: largest request (e.g. 1MiB); halved on a 413 until it fits.
        #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = parse_bytes_usize)]
        request_size: usize,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Partitions for a new data directory.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Events per group commit: each chunk is fsync'd (acknowledged) before the next.
        #[arg(long, default_value_t = 256 * 1024)]
        chunk: usize,
        /// Print `ack N` on stdout after each durable chunk (N: events acknowledged so far).
        #[arg(long)]
        print_acks: bool,
    },
    /// Run one batch: compute every view over the log as of now and publish it.
    #[command(after_help = "Examples:\n  lambdaflow batch\n  lambdaflow batch --processes 4 --keep 5\n\n\
        With a service running on the data directory, asks it for a run (POST /v1/batch) and waits for it.")]
    Batch {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Keep this many batch versions (older ones are deleted).
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Run it on this many worker processes (started on loopback, -w threads each).
        #[arg(long, default_value_t = 1)]
        processes: usize,
    },
    /// Print a view's merged answers (batch + speed), with freshness.
    #[command(after_help = "Examples:\n  lambdaflow query revenue_by_day 2026-02-01\n  \
        lambdaflow query product_revenue_by_day 2026-02-01/17\n  \
        lambdaflow query top_products_by_day --from 2026-03-01 --limit 7 --top 3   # 7 days, 3 products each\n  \
        lambdaflow query customer_spend --all --json\n\n\
        `views` lists the views and their keys. With a service running on the data directory, it answers.")]
    Query {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The view.
        view: String,
        /// One key (plain text or JSON). Without it: every key (see --from, --to, --limit).
        key: Option<String>,
        /// Lowest key of a range.
        #[arg(long)]
        from: Option<String>,
        /// Highest key of a range.
        #[arg(long)]
        to: Option<String>,
        /// At most this many keys (answers), in key order. For top_products_by_day a key is a
        /// day: see --top for products per day.
        #[arg(long, default_value_t = 1000, conflicts_with = "all")]
        limit: usize,
        /// Every key, however many.
        #[arg(long)]
        all: bool,
        /// For views whose value is a list (top-k views such as top_products_by_day): at most
        /// this many items per key.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// One JSON object a line: key, value, batch and speed parts, freshness.
        #[arg(long)]
        json: bool,
    },
    /// List the job's views: name, how they merge, key and value fields.
    #[command(after_help = "Example:\n  lambdaflow views")]
    Views {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show the log, the batch version and the speed layer.
    #[command(after_help = "Examples:\n  lambdaflow status\n  lambdaflow status --json")]
    Status {
        #[command(flatten)]
        remote: RemoteArgs,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read every record of the log and check every checksum.
    #[command(after_help = "Example:\n  lambdaflow --data /var/lib/lambdaflow verify")]
    Verify {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The whole loop as a service: history, a batch, the HTTP API and dashboard, live events.
    #[command(after_help = "Examples:\n  lambdaflow demo --fresh\n  lambdaflow demo --seconds 1m --batch-every 10s --rate 5000")]
    Demo(DemoArgs),
    /// Run the service: HTTP ingest, merged queries, scheduled batch runs, a live dashboard.
    #[command(after_help = "Examples:\n  lambdaflow serve --batch-every 10m\n  \
        lambdaflow --data /var/lib/lambdaflow serve --listen 0.0.0.0:7070 --token-file /etc/lambdaflow/token --batch-at 02:00")]
    Serve(ServeArgs),
    /// Run the service on a local cluster: batch runs and the speed layer on --processes
    /// worker processes each (on loopback), serving from this one. See docs/cluster.md.
    #[command(after_help = "Example:\n  lambdaflow -w 2 cluster --processes 4 --batch-every 10m")]
    Cluster {
        /// Processes per layer (unless --batch-processes / --speed-processes say otherwise).
        #[arg(long)]
        processes: usize,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// One process of a cluster run (started by `serve`/`cluster`/`batch --processes`, or by
    /// hand on each machine with the same hostfile). See docs/cluster.md.
    #[command(after_help = "Example (process 1 of a 2-process batch run; the serving process starts these itself):\n  \
        lambdaflow worker --role batch --processes 2 --process 1 --hostfile hosts.txt --cut 10,12,9,11")]
    Worker(WorkerArgs),
}

/// How a command reaches a service that holds the data directory.
#[derive(Args, Clone, Default)]
struct RemoteArgs {
    /// The bearer token file of the service holding the data directory (if it was started
    /// with --token-file), for commands that answer through it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct ClusterArgs {
    /// Worker processes per batch run (started on loopback; -w threads each).
    #[arg(long)]
    batch_processes: Option<usize>,
    /// Processes of the speed layer: this one plus others started on loopback.
    #[arg(long)]
    speed_processes: Option<usize>,
    /// How long the processes of a run have to connect to each other (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    peer_timeout: Duration,
    /// Attempts per batch run on several processes (a failed attempt is retried).
    #[arg(long, default_value_t = 3)]
    batch_attempts: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Role {
    /// A batch run: process 0 publishes the version.
    Batch,
    /// The speed layer: process 0 is the serving process.
    Speed,
}

#[derive(Args)]
struct WorkerArgs {
    /// What this run is.
    #[arg(long, value_enum)]
    role: Role,
    /// Processes in the cluster.
    #[arg(long)]
    processes: usize,
    /// This process's index, 0..processes.
    #[arg(long)]
    process: usize,
    /// One host:port per line, in process order.
    #[arg(long)]
    hostfile: PathBuf,
    /// Log offsets per partition the run starts from (batch: covers up to; speed: starts at), e.g. 10,12,9,11.
    #[arg(long)]
    cut: String,
    /// Speed: the batch version whose seeds it starts from (none: from offset 0).
    #[arg(long)]
    batch_version: Option<u64>,
    /// How long to wait for every peer to connect (e.g. 30s, 2m).
    #[arg(long = "peer-timeout", alias = "peer-timeout-secs", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    peer_timeout: Duration,
    /// Exit when stdin closes (set by the process that starts local workers).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// The job to serve (this binary's job; checked).
    #[arg(long)]
    job: Option<String>,
    /// Address to listen on. Loopback by default; anything else exposes the API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Run a batch (and hand over) every DURATION, e.g. 10m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    batch_every: Option<Duration>,
    /// Run a batch daily at HH:MM UTC.
    #[arg(long, value_name = "HH:MM")]
    batch_at: Option<String>,
    /// Batch versions kept on disk.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// A file holding the bearer token that write and admin endpoints (and reads, unless
    /// --public-reads) require.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// With --token-file: let reads (views, status, metrics, dashboard data) through without the token.
    #[arg(long)]
    public_reads: bool,
    /// Partitions for a new data directory.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Largest request body (e.g. 16MiB, 1GiB; a bare number is bytes). Larger files:
    /// `ingest --server`.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_bytes_usize)]
    max_body: usize,
    /// Answer ingest with 429 while the speed layer is this many events behind.
    #[arg(long, default_value_t = 2_000_000)]
    max_lag: u64,
    /// Request body bytes held in memory at once (at least --max-body; e.g. 256MiB); beyond it, 429.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_bytes_usize)]
    max_inflight: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct GenArgs {
    /// The job to generate events for (this binary's job).
    job: String,
    /// How many events.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// ndjson or csv.
    #[arg(long, default_value = "ndjson")]
    format: String,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Historical events to ingest before the first batch.
    #[arg(long, default_value_t = 200_000)]
    history: u64,
    /// Live events per second posted to the service.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// How long to run, e.g. 30s, 10m (0: until Ctrl-C).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    seconds: Duration,
    /// Run a new batch (and hand over) every DURATION, e.g. 30s, 10m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    batch_every: Duration,
    /// Address of the service and dashboard.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Start from an empty data directory: deletes DIR first, only if it holds nothing but
    /// lambdaflow data (log/, views/, keys/, LOCK).
    #[arg(long)]
    fresh: bool,
}

/// Runs the command line for `app` and returns the process exit code.
pub fn main<J: Job>(app: App<J>) -> ExitCode {
    let cli = Cli::parse();
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

/// Whether `e` is a write to stdout that found the reading end closed.
fn stdout_closed(e: &Error) -> bool {
    matches!(e, Error::Io { path, source, .. } if path == Path::new(STDOUT) && source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// How errors writing to stdout name it.
const STDOUT: &str = "<stdout>";

/// The file, next to `LOCK`, in which the process holding a data directory's lock says who it
/// is (PID, command line and, for a service, its HTTP address). Written atomically while the
/// lock is held and removed on exit; one left behind by a killed process is ignored, since the
/// lock itself is the truth.
const HOLDER_FILE: &str = "HOLDER.json";

/// Who holds a data directory (the contents of [`HOLDER_FILE`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Holder {
    pid: u32,
    /// The subcommand (`serve`, `demo`, `ingest`, …).
    command: String,
    /// The whole command line.
    argv: String,
    /// Where a service (`serve`, `cluster`, `demo`) answers HTTP.
    addr: Option<std::net::SocketAddr>,
    /// Whether that service requires a bearer token.
    token: bool,
}

impl Holder {
    fn describe(&self) -> String {
        let addr = self.addr.map(|a| format!(", serving http://{a}")).unwrap_or_default();
        format!("process {} (`{}`{addr})", self.pid, self.argv)
    }
}

/// Reads the holder record of `dir`, if there is a plausible one: `None` when it is missing,
/// unreadable, or names a process that no longer runs (a stale file).
fn read_holder(dir: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(dir.join(HOLDER_FILE)).ok()?;
    let h: Holder = serde_json::from_str(&text).ok()?;
    let proc = Path::new("/proc");
    if proc.is_dir() && !proc.join(h.pid.to_string()).exists() {
        return None;
    }
    Some(h)
}

/// The lock of a data directory, held for the life of a command so two processes never
/// recover, append to or delete the same data at once. Dropping it removes the holder record
/// (the OS releases the lock itself, also when the process is killed).
struct DirLock {
    _file: std::fs::File,
    dir: PathBuf,
    holder: Holder,
}

/// What holding the lock failed with: another process has it.
struct Busy {
    /// Who, if it said so.
    holder: Option<Holder>,
}

impl DirLock {
    /// Takes the lock of `dir` (creating the directory) for `command`, waiting at most `wait`
    /// for another holder to let go. Busy after that, naming the holder and `advice`.
    fn acquire(dir: &Path, command: &str, wait: Duration, advice: &str) -> Result<DirLock> {
        match DirLock::try_acquire(dir, command, wait, false)? {
            Ok(lock) => Ok(lock),
            Err(busy) => Err(busy_error(dir, &busy, wait, advice)),
        }
    }

    /// Like [`DirLock::acquire`], but returns who holds it instead of an error; with
    /// `until_served`, as soon as the holder is a service answering HTTP.
    fn try_acquire(dir: &Path, command: &str, wait: Duration, until_served: bool) -> Result<std::result::Result<DirLock, Busy>> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            what: "create data directory".into(),
            source,
        })?;
        let path = dir.join("LOCK");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            what: "open".into(),
            source,
        })?;
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            match f.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = holder_of(dir);
                    if Instant::now() >= deadline || until_served && holder.as_ref().is_some_and(|h| h.addr.is_some()) {
                        return Ok(Err(Busy { holder }));
                    }
                    if !told {
                        let who = holder.as_ref().map(Holder::describe).unwrap_or_else(|| "another lambdaflow process".into());
                        eprintln!("{} is held by {who}; waiting up to {} s (--wait) ...", dir.display(), wait.as_secs_f64().ceil());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(source)) => return Err(Error::Io { path, what: "lock".into(), source }),
            }
        }
        let argv = std::env::args().collect::<Vec<_>>().join(" ");
        let holder = Holder { pid: std::process::id(), command: command.to_string(), argv, addr: None, token: false };
        let lock = DirLock { _file: f, dir: dir.to_path_buf(), holder };
        lock.write_holder()?;
        Ok(Ok(lock))
    }

    /// Records the address the service answers on (and whether it needs a token).
    fn publish(&mut self, addr: std::net::SocketAddr, token: bool) -> Result<()> {
        self.holder.addr = Some(addr);
        self.holder.token = token;
        self.write_holder()
    }

    fn write_holder(&self) -> Result<()> {
        let path = self.dir.join(HOLDER_FILE);
        let tmp = self.dir.join(format!("{HOLDER_FILE}.tmp"));
        let text = serde_json::to_string(&self.holder).unwrap_or_default();
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|source| Error::Io {
            path,
            what: "write".into(),
            source,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(HOLDER_FILE));
    }
}

/// The holder of `dir`'s lock as recorded, allowing it a moment to write its record (it
/// writes it right after taking the lock).
fn holder_of(dir: &Path) -> Option<Holder> {
    for _ in 0..10 {
        if let Some(h) = read_holder(dir) {
            return Some(h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn busy_error(dir: &Path, busy: &Busy, wait: Duration, advice: &str) -> Error {
    let who = busy.holder.as_ref().map(Holder::describe).unwrap_or_else(|| "another lambdaflow process".into());
    let waited = if wait.is_zero() { String::new() } else { format!(" (waited {} s; see --wait)", wait.as_secs_f64().ceil()) };
    Error::Unavailable(format!("{} is in use by {who}{waited}; {advice}", dir.display()))
}

fn opts(workers: usize, partitions: u32) -> Options {
    Options { workers: workers.max(1), log: LogConfig { partitions, segment_bytes: 64 << 20 }, ..Options::default() }
}

/// Opens the master dataset of `dir` (creating it with `partitions`), finishing any keyed
/// group append a crash interrupted.
fn open_log(dir: &Path, partitions: u32) -> Result<Log> {
    let o = opts(1, partitions);
    Ok(crate::keys::open_log(dir, o.log, o.key_retention, o.max_keys)?.0)
}

fn parse_format(s: &str) -> Result<Format> {
    match s {
        "ndjson" | "json" => Ok(Format::Ndjson),
        "csv" => Ok(Format::Csv),
        other => Err(Error::Usage(format!("--format must be ndjson or csv, not `{other}`"))),
    }
}

fn run<J: Job>(app: App<J>, cli: Cli) -> Result<()> {
    let workers = cli.workers.max(1);
    match cli.command {
        Command::Gen(args) => {
            if args.job != app.job.name() {
                return Err(Error::Usage(format!("this binary generates events for job `{}`, not `{}`", app.job.name(), args.job)));
            }
            let g = app.generator.as_ref().ok_or_else(|| Error::Usage(format!("job `{}` has no generator", args.job)))?;
            let format = parse_format(&args.format)?;
            let io_err = |path: &Path| {
                let path = path.to_path_buf();
                move |source| Error::Io { path, what: "write".into(), source }
            };
            match &args.out {
                Some(path) => {
                    let f = std::fs::File::create(path).map_err(io_err(path))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                    g.write(args.events, args.seed, format, &mut w).map_err(io_err(path))?;
                    w.flush().map_err(io_err(path))?;
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                    g.write(args.events, args.seed, format, &mut w).map_err(io_err(Path::new(STDOUT)))?;
                    w.flush().map_err(io_err(Path::new(STDOUT)))?;
                }
            }
            Ok(())
        }
        Command::Ingest { file, server: Some(url), request_size, remote, .. } => {
            ingest_to_server::<J::Event>(&file, &url, request_size, &remote)
        }
        Command::Ingest { file, partitions, chunk, print_acks, .. } => {
            // Parse everything first: a rejected input touches nothing, not even the
            // data directory.
            let t0 = Instant::now();
            let events: Vec<J::Event> = if file == "-" {
                crate::ingest::parse_all(&mut std::io::stdin().lock())?
            } else {
                let path = PathBuf::from(&file);
                let f = std::fs::File::open(&path).map_err(|source| Error::Io { path: path.clone(), what: "open".into(), source })?;
                crate::ingest::parse_all(&mut std::io::BufReader::with_capacity(1 << 20, f))?
            };
            let parsed = t0.elapsed();
            let _lock = DirLock::acquire(&cli.data, "ingest", cli.wait, &ingest_advice(&cli.data, &file))?;
            let log = open_log(&cli.data, partitions)?;
            let t1 = Instant::now();
            // Group commit in chunks: each chunk is fsync'd before the next is written.
            let mut acked = 0usize;
            for chunk in events.chunks(chunk.max(1)) {
                append_events(&log, chunk)?;
                acked += chunk.len();
                if print_acks {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ack {acked}").and_then(|_| out.flush());
                }
            }
            eprintln!(
                "ingested {} events (parse {:.2}s, durable append {:.2}s); log ends at {:?}",
                events.len(),
                parsed.as_secs_f64(),
                t1.elapsed().as_secs_f64(),
                log.end_offsets()
            );
            Ok(())
        }
        Command::Batch { remote, keep, processes } => {
            if processes == 0 {
                return Err(Error::Usage("--processes must be at least 1".into()));
            }
            match access(&cli.data, "batch", cli.wait, &remote)? {
                Access::Local(_lock) => batch_local(app, &cli.data, workers, keep, processes),
                Access::Remote(service) => service.batch(),
            }
        }
        Command::Query { remote, view, key, from, to, limit, all, top, json } => {
            let point = key.is_some();
            let limit = if all { usize::MAX } else { limit };
            let (mut answer, total_known) = match access(&cli.data, "query", cli.wait, &remote)? {
                Access::Local(_lock) => {
                    let lambda = open_existing(app.job, &cli.data, workers)?;
                    catch_up(&lambda)?;
                    let sel = match &key {
                        Some(k) => Selection::Key(k.clone()),
                        // Every key, to say how many there are; printed up to `limit`.
                        None => Selection::Range { from, to, limit: usize::MAX },
                    };
                    (result_json(&lambda.query(&view, &sel)?, point), true)
                }
                Access::Remote(service) => {
                    // One more than asked tells whether there are more (not how many).
                    let ask = limit.saturating_add(1).min(REMOTE_LIMIT_MAX);
                    (service.query(&view, key.as_deref(), from.as_deref(), to.as_deref(), ask)?, false)
                }
            };
            if point && answer.get("key").is_none() {
                if json {
                    return Err(Error::Usage(format!("view `{view}` has no key `{}`", key.unwrap_or_default())));
                }
                answer = serde_json::json!({ "items": [], "freshness": answer["freshness"] });
            }
            let count = trim_answers(&mut answer, limit, top, total_known);
            print_answers(&answer, json, count)
        }
        Command::Views { remote } => {
            let views = match access(&cli.data, "views", cli.wait, &remote)? {
                Access::Local(_lock) => {
                    let lambda = Lambda::open(app.job, &cli.data, opts(workers, 4))?;
                    catch_up(&lambda)?;
                    let sample = |name: &str| {
                        let first = Selection::Range { from: None, to: None, limit: 1 };
                        lambda.query(name, &first).ok().and_then(|r| r.answers.first().and_then(|a| serde_json::to_value(a).ok()))
                    };
                    lambda
                        .views()
                        .into_iter()
                        .map(|v| {
                            let example = sample(&v.name);
                            serde_json::json!({ "name": v.name, "kind": v.kind, "key": v.key, "value": v.value, "example": example })
                        })
                        .collect()
                }
                Access::Remote(service) => service.views()?,
            };
            print_views(&views)
        }
        Command::Status { remote, json } => {
            let status = match access(&cli.data, "status", cli.wait, &remote)? {
                Access::Local(_lock) => {
                    let lambda = open_existing(app.job, &cli.data, workers)?;
                    catch_up(&lambda)?;
                    status_json(&lambda.status())
                }
                Access::Remote(service) => service.get("/v1/status")?,
            };
            print_status(&status, json)
        }
        Command::Verify { remote } => match access(&cli.data, "verify", cli.wait, &remote)? {
            Access::Local(_lock) => {
                let log = Log::open(&cli.data.join("log"))?;
                let report = log.verify()?;
                out(format_args!(
                    "log OK: {} records in {} bytes, every checksum verified",
                    report.records.iter().sum::<u64>(),
                    report.bytes.iter().sum::<u64>()
                ))
            }
            Access::Remote(service) => {
                // Read-only, next to the writer: up to the end the service has acknowledged.
                let status = service.get("/v1/status")?;
                let ends: Vec<u64> = serde_json::from_value(status["log"]["end"].clone())
                    .map_err(|e| Error::Unavailable(format!("the service's /v1/status has no log end ({e})")))?;
                let log = Log::open_follower(&cli.data.join("log"))?;
                log.follow_to(&ends)?;
                let report = log.verify()?;
                out(format_args!(
                    "log OK up to the service's acknowledged end {ends:?}: {} records in {} bytes, every checksum verified \
                     (read-only, while {} keeps appending)",
                    report.records.iter().sum::<u64>(),
                    report.bytes.iter().sum::<u64>(),
                    service.holder.describe()
                ))
            }
        },
        Command::Demo(args) => demo(app, &cli.data, workers, cli.wait, args),
        Command::Serve(args) => serve(app, &cli.data, workers, cli.wait, args),
        Command::Cluster { processes, serve: mut args } => {
            if processes == 0 {
                return Err(Error::Usage("--processes must be at least 1".into()));
            }
            args.cluster.batch_processes.get_or_insert(processes);
            args.cluster.speed_processes.get_or_insert(processes);
            serve(app, &cli.data, workers, cli.wait, args)
        }
        Command::Worker(args) => worker(app, &cli.data, workers, args),
    }
}

fn batch_local<J: Job>(app: App<J>, dir: &Path, workers: usize, keep: usize, processes: usize) -> Result<()> {
    let log = Arc::new(open_log(dir, 4)?);
    let store = crate::store::ViewStore::open(dir)?;
    let progress = Arc::new(Progress::default());
    let job = Arc::new(app.job);
    let bar = ProgressBar::new(log.end_offsets().iter().sum());
    bar.set_style(progress_style("batch {bar:40} {human_pos}/{human_len} events {rate}{eta}"));
    let handle = {
        let (log, progress) = (log.clone(), progress.clone());
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let store = crate::store::ViewStore::open(&dir)?;
            if processes > 1 {
                let exe = ClusterOptions::default().exe_path()?;
                let cut = log.end_offsets();
                crate::batch::run_batch_local(&exe, &dir, &store, processes, workers, cut, progress, crate::cluster::PEER_TIMEOUT)
            } else {
                crate::batch::run_batch(job, log, &store, workers, None, progress)
            }
        })
    };
    while !handle.is_finished() {
        bar.set_position(progress.done.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = handle.join().map_err(|_| Error::Dataflow(DataflowError::Panicked("batch thread panicked".into())))??;
    bar.finish_and_clear();
    let removed = store.gc(keep)?;
    let m = &report.meta;
    eprintln!(
        "batch v{} published: {} events at cut {:?} in {:.2}s compute + {:.2}s write ({:.0} events/s){}",
        m.version,
        m.events,
        m.cut,
        report.compute_secs,
        report.write_secs,
        m.events as f64 / report.compute_secs.max(1e-9),
        if removed.is_empty() { String::new() } else { format!("; removed old versions {removed:?}") }
    );
    Ok(())
}

/// What to say to `ingest` when the directory is held: send the file to the service.
fn ingest_advice(dir: &Path, file: &str) -> String {
    match read_holder(dir).and_then(|h| h.addr) {
        Some(addr) => format!("stop it first, or send the file to it: `ingest --server http://{addr} {file}`"),
        None => "try again when it has finished".into(),
    }
}

/// `ingest --server URL FILE`: validates all of FILE, then posts it in bodies of at most
/// `size` bytes with idempotency keys derived from the file's fingerprint, the size and the
/// body's index. A 413 halves the size and starts over (nothing was stored: the first body
/// is the largest); 429 and 503 are retried; a failure says how to resume.
fn ingest_to_server<E: lambdaflow_operators::Event>(file: &str, url: &str, size: usize, remote: &RemoteArgs) -> Result<()> {
    if file == "-" {
        return Err(Error::Usage("ingest --server needs a FILE, not stdin: it reads it twice (to validate, then to send)".into()));
    }
    let addr = parse_server_url(url)?;
    let token = remote.token_file.as_deref().map(read_token).transpose()?;
    let path = PathBuf::from(file);
    let open = || std::fs::File::open(&path).map(|f| std::io::BufReader::with_capacity(1 << 20, f));
    let io_err = |source| Error::Io { path: path.clone(), what: "read".into(), source };
    let t = Instant::now();
    let events = crate::ingest::parse_each::<E>(&mut open().map_err(io_err)?, |_| Ok(()))?;
    let fp = crate::ingest::fingerprint(&mut open().map_err(io_err)?).map_err(io_err)?;
    let mut size = size.max(1024);
    'sizes: loop {
        let mut bodies = crate::ingest::Requests::new(open().map_err(io_err)?, size);
        let (mut sent, mut duplicates, mut index) = (0u64, 0u64, 0u64);
        while let Some(body) = bodies.next_body()? {
            let key = format!("ingest-{fp}-{size}-{index}");
            match post_body(addr, token.as_deref(), &key, &body.bytes)? {
                (200, v) => {
                    sent += v["accepted"].as_u64().unwrap_or(0);
                    duplicates += u64::from(v["duplicate"] == true);
                }
                (413, _) if index == 0 && size > 1024 => {
                    size /= 2;
                    eprintln!("the service refused {} requests (413): trying {}", format_bytes(2 * size as u64), format_bytes(size as u64));
                    continue 'sizes;
                }
                (401, _) => return Err(Error::Usage(format!("{url} requires a bearer token: pass --token-file FILE"))),
                (400, v) if v["line"].is_u64() => {
                    let line = v["line"].as_u64().unwrap_or(1) + body.first_line - 1 - u64::from(bodies_have_header(&body.bytes));
                    return Err(Error::Usage(format!("the service refused line {line} of {file}: {}", v["error"])));
                }
                (status, v) => {
                    return Err(Error::Unavailable(format!(
                        "request {index} (from line {}) got HTTP {status}: {}; {sent} events were stored; run the same command \
                         again to resume (requests already stored are not stored twice)",
                        body.first_line, v["error"]
                    )))
                }
            }
            index += 1;
            eprint!("\rsent {index} requests, {} events", thousands(sent));
        }
        eprintln!(
            "\ringested {} events of {file} into {url} in {index} requests of up to {} ({:.2}s){}",
            thousands(events),
            format_bytes(size as u64),
            t.elapsed().as_secs_f64(),
            if duplicates > 0 { format!("; {duplicates} requests were already stored by an earlier run") } else { String::new() }
        );
        return Ok(());
    }
}

/// Whether a request body starts with a CSV header (its first line is not a JSON object).
fn bodies_have_header(body: &[u8]) -> bool {
    !body.trim_ascii_start().starts_with(b"{")
}

/// Posts one body, retrying while the service says it is busy (429, 503) or the connection
/// fails, for up to two minutes.
fn post_body(addr: std::net::SocketAddr, token: Option<&str>, key: &str, body: &[u8]) -> Result<(u16, serde_json::Value)> {
    let headers = [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", key)];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(100);
    loop {
        let outcome = http_request(addr, "POST", "/v1/events", token, &headers, body);
        let retry = match &outcome {
            Ok((429 | 503, _)) => true,
            Ok(_) => false,
            Err(_) => true,
        };
        if !retry || Instant::now() >= deadline {
            let (status, bytes) = outcome
                .map_err(|e| Error::Unavailable(format!("posting to http://{addr} failed: {e}; run the same command again to resume")))?;
            let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
            return Ok((status, v));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// `http://host:port[/]` → the address (plain HTTP only).
fn parse_server_url(url: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let bad = |why: &str| Error::Usage(format!("--server `{url}`: {why} (expected e.g. http://127.0.0.1:7070)"));
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs are supported"))?;
    let host = rest.trim_end_matches('/');
    if host.contains('/') {
        return Err(bad("give the service's address, without a path"));
    }
    let host = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    host.to_socket_addrs().map_err(|e| bad(&e.to_string()))?.next().ok_or_else(|| bad("no address"))
}

/// How a command reaches the data: it holds the directory itself, or a service holding it
/// answers for it.
enum Access {
    Local(DirLock),
    Remote(Service),
}

/// Takes the data directory's lock, or, when a service (`serve`, `cluster`, `demo`) holds it,
/// the way to ask that service instead. Anything else holding it is waited for at most `wait`.
fn access(dir: &Path, command: &str, wait: Duration, remote: &RemoteArgs) -> Result<Access> {
    let busy = match DirLock::try_acquire(dir, command, wait, true)? {
        Ok(lock) => return Ok(Access::Local(lock)),
        Err(busy) => busy,
    };
    match busy.holder {
        Some(holder) if holder.addr.is_some() => Ok(Access::Remote(Service::new(holder, remote)?)),
        _ => Err(busy_error(dir, &busy, wait, "try again when it has finished")),
    }
}

/// The most answers the service returns for one request (its `limit` bound).
const REMOTE_LIMIT_MAX: usize = 100_000;

/// A service that holds the data directory, asked over HTTP on the address it recorded.
struct Service {
    holder: Holder,
    addr: std::net::SocketAddr,
    token: Option<String>,
}

impl Service {
    fn new(holder: Holder, remote: &RemoteArgs) -> Result<Service> {
        let addr = holder.addr.ok_or_else(|| Error::Internal("a service without an address".into()))?;
        let token = remote.token_file.as_deref().map(read_token).transpose()?;
        eprintln!("(answered by {}, which holds the data directory)", holder.describe());
        Ok(Service { holder, addr, token })
    }

    /// One request; the body parsed as JSON. Errors name the service and what to do.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, serde_json::Value)> {
        let who = self.holder.describe();
        let (status, body) = http_request(self.addr, method, path, self.token.as_deref(), &[], body)
            .map_err(|e| Error::Unavailable(format!("{who} holds the data directory, but asking it failed: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body) }));
        if status == 401 {
            let hint = if self.token.is_some() {
                "the token in --token-file is not the service's"
            } else {
                "pass --token-file FILE (the file given to `serve --token-file`)"
            };
            return Err(Error::Usage(format!("{who} requires a bearer token: {hint}")));
        }
        Ok((status, v))
    }

    /// A GET that must succeed.
    fn get(&self, path: &str) -> Result<serde_json::Value> {
        match self.call("GET", path, b"")? {
            (200, v) => Ok(v),
            (status, v) => Err(remote_error(status, &v)),
        }
    }

    fn query(&self, view: &str, key: Option<&str>, from: Option<&str>, to: Option<&str>, limit: usize) -> Result<serde_json::Value> {
        let path = match key {
            Some(k) => format!("/v1/views/{}/{}", url_encode(view), url_encode(k).replace("%2F", "/")),
            None => {
                let mut p = format!("/v1/views/{}?limit={limit}", url_encode(view));
                if let Some(f) = from {
                    p += &format!("&from={}", url_encode(f));
                }
                if let Some(t) = to {
                    p += &format!("&to={}", url_encode(t));
                }
                p
            }
        };
        match self.call("GET", &path, b"")? {
            (200, v) => Ok(v),
            // A key with no events yet: no answer, with the freshness it was asked at.
            (404, v) if key.is_some() && v.get("freshness").is_some() => {
                Ok(serde_json::json!({ "view": view, "freshness": v["freshness"] }))
            }
            (status, v) => Err(remote_error(status, &v)),
        }
    }

    /// The views, each with an `example` answer (its first key's), if it has any.
    fn views(&self) -> Result<Vec<serde_json::Value>> {
        let v = self.get("/v1/views")?;
        let mut views = v["views"].as_array().cloned().unwrap_or_default();
        for v in &mut views {
            let name = plain(&v["name"]);
            let first = self.get(&format!("/v1/views/{}?limit=1", url_encode(&name)))?;
            v["example"] = first["items"].get(0).cloned().unwrap_or_default();
        }
        Ok(views)
    }

    /// Asks the service for a batch run and waits until it has published one.
    fn batch(&self) -> Result<()> {
        let version = |s: &serde_json::Value| s["batch"]["version"].as_u64().unwrap_or(0);
        let failed = |s: &serde_json::Value| s["batch_run"]["failed"].as_u64().unwrap_or(0);
        let before = self.get("/v1/status")?;
        match self.call("POST", "/v1/batch", b"")? {
            (202, _) => {}
            (status, v) => return Err(remote_error(status, &v)),
        }
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.get("/v1/status")?;
            if failed(&now) > failed(&before) {
                let why = now["batch_run"]["last"].to_string();
                return Err(Error::Unavailable(format!("the service's batch run failed: {why}")));
            }
            if version(&now) > version(&before) {
                let b = &now["batch"];
                eprintln!("batch v{} published by the service: {} events at cut {}", version(&now), b["events"], b["cut"]);
                return Ok(());
            }
        }
    }
}

fn remote_error(status: u16, v: &serde_json::Value) -> Error {
    let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let msg = format!("the service answered HTTP {status}: {msg}");
    match status {
        400 | 404 | 422 => Error::Usage(msg),
        _ => Error::Unavailable(msg),
    }
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// Reads a bearer token file (one token of at least 16 visible ASCII characters).
fn read_token(path: &Path) -> Result<String> {
    let t =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "read token file".into(), source })?;
    let t = t.trim().to_string();
    if t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(Error::Usage(format!("token file {} must hold one token of at least 16 visible ASCII characters", path.display())));
    }
    Ok(t)
}

/// `lambdaflow worker`: this process's part of a batch run or of a speed layer.
fn worker<J: Job>(app: App<J>, dir: &Path, workers: usize, args: WorkerArgs) -> Result<()> {
    use crate::cluster::{protocol, Peers};
    if args.exit_with_parent {
        crate::cluster::exit_with_parent();
    }
    crate::guard::fail_fast();
    let peers = Peers::from_hostfile(&args.hostfile, args.processes, args.process, workers)?;
    let cut = parse_cut(&args.cut)?;
    let log = Log::open_follower(&dir.join("log"))?;
    if cut.len() != log.partitions() as usize {
        return Err(Error::Usage(format!("--cut has {} offsets, but the log has {} partitions", cut.len(), log.partitions())));
    }
    // Only the partitions this process reads: the others are never touched here.
    log.follow_to(&peers.own_ends(&cut))?;
    let log = Arc::new(log);
    let store = crate::store::ViewStore::open(dir)?;
    let timeout = args.peer_timeout;
    let job = Arc::new(app.job);
    match args.role {
        Role::Batch => {
            let progress = Arc::new(Progress::default());
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reporter = {
                let (progress, done) = (progress.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut last = u64::MAX;
                    while !done.load(Ordering::Relaxed) {
                        let n = progress.done.load(Ordering::Relaxed);
                        if n != last {
                            let _ = out(format_args!("{}{n}", protocol::PROGRESS));
                            last = n;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            };
            let report = crate::batch::run_batch_on(job, log, &store, &peers, Some(cut), progress, timeout, || Ok(()));
            done.store(true, Ordering::Relaxed);
            let _ = reporter.join();
            if let Some(r) = report? {
                eprintln!(
                    "lambdaflow worker: batch v{} published ({} events, {:.2}s compute + {:.2}s write)",
                    r.meta.version, r.meta.events, r.compute_secs, r.write_secs
                );
                out(format_args!("{}{} {} {}", protocol::PUBLISHED, r.meta.version, r.compute_secs, r.write_secs))?;
            }
            Ok(())
        }
        Role::Speed => {
            if args.process == 0 {
                return Err(Error::Usage("process 0 of a speed layer is the serving process (`serve`/`cluster`), not a `worker`".into()));
            }
            crate::speed::run_member(job, log, store, args.batch_version, cut, peers, timeout)
        }
    }
}

/// `10,12,9,11` → offsets per partition.
fn parse_cut(s: &str) -> Result<Vec<u64>> {
    s.split(',')
        .map(|v| v.trim().parse::<u64>().map_err(|_| Error::Usage(format!("--cut: `{v}` is not an offset (expected e.g. 10,12,9,11)"))))
        .collect()
}

fn serve_config(args: &ServeArgs) -> Result<crate::serve::ServeConfig> {
    use crate::serve::{parse_time_of_day, Schedule, ServeConfig};
    let schedule = match (&args.batch_every, &args.batch_at) {
        (Some(_), Some(_)) => return Err(Error::Usage("give --batch-every or --batch-at, not both".into())),
        (Some(e), None) => Schedule::Every(*e),
        (None, Some(a)) => {
            let (h, m) = parse_time_of_day(a).map_err(|m| Error::Usage(format!("--batch-at: {m}")))?;
            Schedule::DailyAt(h, m)
        }
        (None, None) => Schedule::Never,
    };
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    if args.public_reads && token.is_none() {
        return Err(Error::Usage("--public-reads only makes sense with --token-file".into()));
    }
    if args.max_body < 1024 || args.max_body > (1 << 30) {
        return Err(Error::Usage(format!("--max-body must be 1KiB to 1GiB, not {}", format_bytes(args.max_body as u64))));
    }
    Ok(ServeConfig {
        listen: args.listen,
        schedule,
        keep: args.keep.max(1),
        token,
        public_reads: args.public_reads,
        max_body_bytes: args.max_body,
        max_lag_events: args.max_lag,
        max_inflight_bytes: args.max_inflight.max(args.max_body),
        ..ServeConfig::default()
    })
}

/// A schedule as `serve` prints it: `every 10m`, `daily at 02:00 UTC`, `on demand`.
fn describe_schedule(s: &crate::serve::Schedule) -> String {
    use crate::serve::Schedule;
    match s {
        Schedule::Never => "on demand only (POST /v1/batch; see --batch-every, --batch-at)".into(),
        Schedule::Every(d) => format!("every {}", format_duration(*d)),
        Schedule::DailyAt(h, m) => format!("daily at {h:02}:{m:02} UTC"),
    }
}

fn serve<J: Job>(app: App<J>, dir: &Path, workers: usize, wait: Duration, args: ServeArgs) -> Result<()> {
    if let Some(job) = &args.job {
        if job != app.job.name() {
            return Err(Error::Usage(format!("this binary serves job `{}`, not `{job}`", app.job.name())));
        }
    }
    let cfg = serve_config(&args)?;
    let mut lock = DirLock::acquire(dir, "serve", wait, "stop it first, or pick another --data")?;
    let t = Instant::now();
    let mut options = opts(workers, args.partitions);
    let c = &args.cluster;
    options.cluster = ClusterOptions {
        batch_processes: c.batch_processes.unwrap_or(1).max(1),
        speed_processes: c.speed_processes.unwrap_or(1).max(1),
        peer_timeout: c.peer_timeout,
        batch_attempts: c.batch_attempts.max(1),
        ..ClusterOptions::default()
    };
    let lambda = Arc::new(Lambda::open(app.job, dir, options)?);
    eprintln!(
        "lambdaflow serve: opened {} ({} events; batch {}) in {:.2}s",
        dir.display(),
        lambda.log().end_offsets().iter().sum::<u64>(),
        lambda.serving().batch.as_ref().map(|b| format!("v{}", b.meta.version)).unwrap_or_else(|| "none yet".into()),
        t.elapsed().as_secs_f64()
    );
    catch_up(&lambda)?;
    let running = crate::serve::start(lambda.clone(), cfg.clone(), app.dashboard, true)?;
    lock.publish(running.addr, cfg.token.is_some())?;
    eprintln!(
        "lambdaflow serve: listening on http://{} (dashboard at /, API under /v1, metrics at /metrics); batch runs {}{}",
        running.addr,
        describe_schedule(&cfg.schedule),
        if cfg.token.is_some() { "; token required" } else { "" }
    );
    let stopped = running.wait();
    // The speed layer's other processes leave cleanly rather than see this one vanish.
    lambda.stop_processes();
    stopped?;
    eprintln!("lambdaflow serve: stopped");
    Ok(())
}

/// A progress bar style with `{rate}` (whole events per second, `1,234,567/s`) and `{eta}`
/// (`, eta 1m20s`, shown only once there is a rate to estimate from).
fn progress_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", format_rate(s.per_sec()));
        })
        .with_key("eta", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            if let Some(eta) = format_eta(s.pos(), s.len(), s.per_sec()) {
                let _ = write!(w, ", eta {eta}");
            }
        })
}

/// `1,234,567/s`: whole events per second with thousands separators; nothing before the
/// first measurement.
fn format_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec < 1.0 {
        return String::new();
    }
    format!("{}/s", thousands(per_sec.round() as u64))
}

/// The time left at `per_sec`, or `None` while there is no rate yet (or nothing left).
fn format_eta(pos: u64, len: Option<u64>, per_sec: f64) -> Option<String> {
    let left = len?.checked_sub(pos).filter(|&l| l > 0)?;
    if pos == 0 || !per_sec.is_finite() || per_sec < 1.0 {
        return None;
    }
    Some(format_duration(Duration::from_secs((left as f64 / per_sec).ceil() as u64)))
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Brings the speed layer up to the log's end, with a progress bar when that is a lot of
/// events (a long tail since the last batch makes every query replay it).
fn catch_up<J: Job>(lambda: &Lambda<J>) -> Result<()> {
    const HINT_EVENTS_MIN: u64 = 1_000_000;
    let mut bar: Option<ProgressBar> = None;
    lambda.sync_with(Duration::from_secs(3600), |done, total| {
        if bar.is_none() && total >= HINT_EVENTS_MIN {
            eprintln!("catching up {total} events since the batch cut (run `batch` to make this instant)");
            let b = ProgressBar::new(total);
            b.set_style(progress_style("speed {bar:40} {human_pos}/{human_len} events {rate}"));
            bar = Some(b);
        }
        if let Some(b) = &bar {
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

fn open_existing<J: Job>(job: J, dir: &Path, workers: usize) -> Result<Lambda<J>> {
    if !dir.join("log").exists() {
        return Err(Error::Usage(format!("{} holds no lambdaflow data yet (run `ingest` first, or pass --data DIR)", dir.display())));
    }
    Lambda::open(job, dir, opts(workers, 4))
}

fn human_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else if ms < 7_200_000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    }
}

/// Writes one line to stdout.
fn out(line: std::fmt::Arguments) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|source| Error::Io { path: STDOUT.into(), what: "write".into(), source })
}

/// A merged answer set in the shapes of the HTTP API: one answer object
/// (`{"view","freshness","key","value","batch","speed"}`) for a key, and
/// `{"view","items":[...],"freshness"}` for a range.
fn result_json(result: &QueryResult, point: bool) -> serde_json::Value {
    let f = &result.freshness;
    match (point, result.answers.first()) {
        (true, Some(a)) => {
            let mut o = serde_json::json!({ "view": result.view, "freshness": f });
            if let (Some(o), Ok(serde_json::Value::Object(a))) = (o.as_object_mut(), serde_json::to_value(a)) {
                o.extend(a);
            }
            o
        }
        (true, None) => serde_json::json!({ "view": result.view, "freshness": f }),
        (false, _) => serde_json::json!({ "view": result.view, "items": result.answers, "freshness": f }),
    }
}

/// A JSON value as text: strings without quotes.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How many answers a query printed, of how many.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Count {
    /// All of them, this many.
    All(usize),
    /// The first `shown` of `total`.
    Of { shown: usize, total: usize },
    /// The first `shown`; there are more (how many, the service did not say).
    MoreThan(usize),
}

/// Keeps the first `limit` items of a range answer, and the first `top` entries of each
/// list value; `total`, when known, is how many items there were.
fn trim_answers(answer: &mut serde_json::Value, limit: usize, top: Option<usize>, total_known: bool) -> Count {
    let trim_value = |a: &mut serde_json::Value| {
        if let (Some(top), Some(list)) = (top, a.get_mut("value").and_then(|v| v.as_array_mut())) {
            list.truncate(top);
        }
    };
    match answer.get_mut("items").and_then(|i| i.as_array_mut()) {
        Some(items) => {
            let total = items.len();
            items.truncate(limit);
            items.iter_mut().for_each(trim_value);
            match (total > items.len(), total_known) {
                (false, _) => Count::All(total),
                (true, true) => Count::Of { shown: items.len(), total },
                (true, false) => Count::MoreThan(items.len()),
            }
        }
        None => {
            trim_value(answer);
            Count::All(1)
        }
    }
}

/// `1 answer`, `2 answers`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// What the footer says about how many answers were printed.
fn count_text(c: Count) -> String {
    match c {
        Count::All(n) => plural(n, "answer"),
        Count::Of { shown, total } => format!("{shown} of {total} answers (--all for every one, or --limit N)"),
        Count::MoreThan(shown) => format!("the first {} (there are more: --all, or --limit N)", plural(shown, "answer")),
    }
}

/// Prints merged answers (see [`result_json`] for the shape); with `json`, as is.
fn print_answers(answer: &serde_json::Value, json: bool, count: Count) -> Result<()> {
    if json {
        if !matches!(count, Count::All(_)) {
            eprintln!("-- {}", count_text(count));
        }
        return out(format_args!("{answer}"));
    }
    let items: Vec<&serde_json::Value> = match answer.get("items").and_then(|i| i.as_array()) {
        Some(items) => items.iter().collect(),
        None => vec![answer],
    };
    for a in &items {
        match (a.get("batch"), a.get("speed")) {
            (Some(b), Some(s)) => {
                let part = |p: &serde_json::Value| if p.is_null() { "-".to_string() } else { p.to_string() };
                out(format_args!("{}\t{}\t(batch {} + speed {})", plain(&a["key"]), plain(&a["value"]), part(b), part(s)))?
            }
            _ => out(format_args!("{}\t{}", plain(&a["key"]), plain(&a["value"])))?,
        }
    }
    let f = &answer["freshness"];
    eprintln!(
        "-- {}; batch {} (cut {}, age {}); speed frontier {} ({} events since the cut)",
        count_text(count),
        f["batch_version"].as_u64().map(|v| format!("v{v}")).unwrap_or_else(|| "none".into()),
        f["batch_cut"],
        f["batch_age_ms"].as_u64().map(human_ms).unwrap_or_else(|| "-".into()),
        f["speed_frontier"],
        f["speed_events"]
    );
    Ok(())
}

/// Prints the job's views (`{"name","kind","key","value"}` each).
fn print_views(views: &[serde_json::Value]) -> Result<()> {
    for v in views {
        let (key, value) = match v.get("example").filter(|e| !e.is_null()) {
            Some(e) => (format!("{} (e.g. {})", shape(&e["key"]), e["key"]), shape(&e["value"])),
            None => (plain(&v["key"]), format!("{} (no answers yet to show its fields)", plain(&v["value"]))),
        };
        out(format_args!("{}\t{}\tkey: {key}\tvalue: {value}", plain(&v["name"]), plain(&v["kind"])))?;
    }
    Ok(())
}

/// A JSON value's shape: an object's field names, a list's element shape.
fn shape(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => format!("{{{}}}", m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")),
        Value::Array(a) => format!("[{}, ...]", a.first().map(shape).unwrap_or_default()),
        Value::String(_) => "text".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "true/false".into(),
        Value::Null => "null".into(),
    }
}

/// `status`'s JSON: the data directory's [`crate::lambda::Status`], or the service's
/// `GET /v1/status` when a service answered (it has `uptime_s`).
fn status_json(s: &crate::lambda::Status) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

fn print_status(s: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        return out(format_args!("{}", serde_json::to_string_pretty(s).unwrap_or_default()));
    }
    let remote = s.get("uptime_s").is_some();
    let sum = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).sum::<u64>()).unwrap_or(0);
    let (end, bytes) = if remote { (&s["log"]["end"], &s["log"]["bytes"]) } else { (&s["log_end"], &s["log_bytes"]) };
    let f = &s["freshness"];
    out(format_args!("job {} v{}", plain(&s["job"]), s["job_version"]))?;
    out(format_args!("log: {} events, ends {}, {} bytes", sum(end), end, sum(bytes)))?;
    let b = &s["batch"];
    if b.is_null() {
        out(format_args!("batch: none yet (run `batch`)"))?;
    } else {
        let age = human_ms(f["batch_age_ms"].as_u64().unwrap_or(0));
        out(format_args!("batch: v{} (job v{}) cut {} = {} events, age {age}", b["version"], b["job_version"], b["cut"], b["events"]))?;
    }
    let (keys, speed_bytes) = if remote {
        let keys: u64 = s["speed"]["keys"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
        (keys, s["speed"]["bytes"].as_u64().unwrap_or(0))
    } else {
        let keys: u64 = s["speed_keys"].as_array().map(|a| a.iter().filter_map(|k| k[1].as_u64()).sum()).unwrap_or(0);
        (keys, s["speed_bytes"].as_u64().unwrap_or(0))
    };
    out(format_args!(
        "speed: frontier {}, {} events since the cut, {keys} keys held (~{} KiB)",
        f["speed_frontier"],
        f["speed_events"],
        speed_bytes / 1024
    ))
}

fn demo<J: Job>(app: App<J>, dir: &Path, workers: usize, wait: Duration, args: DemoArgs) -> Result<()> {
    let g = app.generator.clone().ok_or_else(|| Error::Usage(format!("job `{}` has no generator, so no demo", app.job.name())))?;
    if args.fresh && dir.exists() {
        check_only_ours(dir)?;
    }
    // The lock first: nothing may delete a directory another process holds.
    let mut lock = DirLock::acquire(dir, "demo", wait, "stop it first, or pick another --data")?;
    if args.fresh {
        // Re-checked under the lock; LOCK itself stays (it is what we hold).
        for name in check_only_ours(dir)? {
            if name == "LOCK" || name == HOLDER_FILE {
                continue;
            }
            let path = dir.join(&name);
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(|source| Error::Io { path, what: "remove".into(), source })?;
        }
    }
    let report = app.demo_report.clone();
    outln!("lambdaflow demo: job `{}` in {} with {workers} worker(s)", app.job.name(), dir.display());
    let lambda = Arc::new(Lambda::open(app.job, dir, opts(workers, 4))?);
    let have: u64 = lambda.log().end_offsets().iter().sum();
    if have < args.history {
        let t = Instant::now();
        let history = g.events(1, args.history - have, false);
        for chunk in history.chunks(100_000) {
            lambda.append(chunk)?;
        }
        outln!("1. master dataset: appended {} historical events durably in {:.2}s", history.len(), t.elapsed().as_secs_f64());
    } else {
        outln!("1. master dataset: {have} events already there");
    }
    let t = Instant::now();
    let r = lambda.batch_and_handover(Arc::new(Progress::default()))?;
    outln!(
        "2. batch layer: v{} over {} events (cut {:?}) in {:.2}s; speed layer seeded from it",
        r.meta.version,
        r.meta.events,
        r.meta.cut,
        t.elapsed().as_secs_f64()
    );
    let cfg =
        crate::serve::ServeConfig { listen: args.listen, schedule: crate::serve::Schedule::Every(args.batch_every), ..Default::default() };
    let running = crate::serve::start(lambda.clone(), cfg, app.dashboard, true)?;
    let addr = running.addr;
    lock.publish(addr, false)?;
    outln!("3. service: listening on http://{addr}");
    outln!();
    outln!("   open the dashboard:  http://{addr}/");
    outln!("   query the API:       curl http://{addr}/v1/views");
    outln!();
    outln!(
        "4. posting {} live events/s over HTTP; a batch run every {}; {}",
        args.rate,
        format_duration(args.batch_every),
        if args.seconds.is_zero() { "Ctrl-C to stop".to_string() } else { format!("stopping after {}", format_duration(args.seconds)) }
    );
    let start = Instant::now();
    let mut seed = 1000u64;
    // Keys unique to this run: a rerun (same seeds, same day) must not be taken for a retry.
    let run_id = crate::store::now_ms();
    let mut last_report = Instant::now();
    let tick = Duration::from_millis(250);
    let mut posted = 0u64;
    while !running.is_finished() {
        if !args.seconds.is_zero() && start.elapsed() >= args.seconds {
            break;
        }
        let t = Instant::now();
        let live = g.events(seed, (args.rate / 4).max(1), true);
        seed += 1;
        let mut body = Vec::with_capacity(live.len() * 160);
        g.to_ndjson(&live, &mut body);
        match http_post(addr, "/v1/events", &format!("demo-{run_id}-{seed}"), &body) {
            Ok(200) => posted += live.len() as u64,
            Ok(429) => eprintln!("   (the service asked the generator to slow down)"),
            Ok(code) => eprintln!("   posting events got HTTP {code}"),
            Err(e) if running.is_finished() => drop(e),
            Err(e) => eprintln!("   posting events failed: {e}"),
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            if let Some(report) = &report {
                let lines = report(&lambda)?;
                outln!("[{:>5.1}s] {}", start.elapsed().as_secs_f64(), lines.join(" | "));
            }
            last_report = Instant::now();
        }
        std::thread::sleep(tick.saturating_sub(t.elapsed()));
    }
    running.stop()?;
    let s = lambda.status();
    outln!(
        "done: posted {posted} live events; {} events in the log, batch v{}, speed frontier {:?}",
        s.log_end.iter().sum::<u64>(),
        s.batch.map(|b| b.version).unwrap_or(0),
        s.freshness.speed_frontier
    );
    outln!("serve it again: {} --data {} serve", this_binary(), dir.display());
    Ok(())
}

/// How to run this binary again: under `cargo run`, what the user typed (`cargo run
/// --release --`); otherwise its path as it was started (`./target/release/lambdaflow`), or
/// its name when the shell found it on `PATH`.
fn this_binary() -> String {
    let exe = std::env::current_exe().ok();
    let in_target = |part: &str| exe.as_ref().is_some_and(|e| e.components().any(|c| c.as_os_str() == part));
    if std::env::var_os("CARGO").is_some() && in_target("target") {
        return if in_target("release") { "cargo run --release --".into() } else { "cargo run --".into() };
    }
    std::env::args().next().unwrap_or_else(|| "lambdaflow".into())
}

/// The entries of `dir`, if it holds nothing but lambdaflow data (what `demo --fresh` may
/// delete); a usage error naming them otherwise.
fn check_only_ours(dir: &Path) -> Result<Vec<String>> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io { path: dir.to_path_buf(), what: "list".into(), source })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    let ours = |name: &str| matches!(name, "log" | "views" | "keys" | "LOCK") || name.starts_with(HOLDER_FILE);
    let data = entries.iter().any(|e| e != "LOCK" && !e.starts_with(HOLDER_FILE));
    if data && !dir.join("log").join("MANIFEST").exists() || entries.iter().any(|e| !ours(e)) {
        return Err(Error::Usage(format!(
            "--fresh would delete {}, which is not (only) a lambdaflow data directory (it holds {}); pick another --data",
            dir.display(),
            entries.join(", ")
        )));
    }
    Ok(entries)
}

/// A minimal HTTP/1.1 POST of NDJSON with an idempotency key; returns the status code.
fn http_post(addr: std::net::SocketAddr, path: &str, key: &str, body: &[u8]) -> std::io::Result<u16> {
    let headers = [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", key)];
    Ok(http_request(addr, "POST", path, None, &headers, body)?.0)
}

/// A minimal HTTP/1.1 client for a lambdaflow service on loopback: one request on its own
/// connection; returns the status code and the body.
fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let malformed = || std::io::Error::other("malformed HTTP response");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(malformed)?;
    let mut body = response[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(malformed)?;
    }
    Ok((status, body))
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&data[..line_end]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Convenience for tests and tools: read all of `path` as events of `E`.
pub fn read_events<E: lambdaflow_operators::Event>(path: &Path) -> Result<Vec<E>> {
    let f = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "open".into(), source })?;
    let mut r: Box<dyn BufRead> = Box::new(std::io::BufReader::new(f));
    crate::ingest::parse_all(&mut r)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves rates are whole numbers with separators, and no eta is shown before there is a
    // rate (or at 0%).
    #[test]
    fn progress_texts() {
        assert_eq!(format_rate(7_429_606.444_2), "7,429,606/s");
        assert_eq!(format_rate(999.6), "1,000/s");
        assert_eq!(format_rate(0.0), "");
        assert_eq!(format_rate(f64::NAN), "");
        assert_eq!(format_eta(0, Some(100), 0.0), None);
        assert_eq!(format_eta(0, Some(100), 50.0), None);
        assert_eq!(format_eta(50, Some(100), 10.0), Some("5s".into()));
        assert_eq!(format_eta(100, Some(100), 10.0), None);
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(999), "999");
    }

    // Proves the query footer's counts read as English.
    #[test]
    fn count_texts() {
        assert_eq!(count_text(Count::All(1)), "1 answer");
        assert_eq!(count_text(Count::All(0)), "0 answers");
        assert!(count_text(Count::Of { shown: 1000, total: 4321 }).starts_with("1000 of 4321 answers (--all"));
        assert!(count_text(Count::MoreThan(1)).contains("the first 1 answer (there are more"));
    }
}
