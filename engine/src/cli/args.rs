//! The raw command-line flags, as clap parses them. Checks and conversions that need more
//! than one flag, or the file system, are in [`super::options`].

use super::*;

#[derive(Parser)]
#[command(
    name = "lambdaflow",
    version,
    about = "lambdaflow: one job, two modes (batch + speed), merged exactly",
    after_help = "Start with `demo --fresh`; see `COMMAND --help` for examples."
)]
pub(super) struct Cli {
    /// The data directory (master dataset and batch views).
    #[arg(long, global = true, default_value = "lambdaflow-data")]
    pub(super) data: PathBuf,
    /// Worker threads for batch and speed dataflows (default: one per core the process may use).
    #[arg(short = 'w', long = "workers", global = true, value_name = "N")]
    pub(super) workers: Option<usize>,
    /// How long to wait for another process holding the data directory (e.g. 5s, 1m; 0: don't).
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(super) wait: Duration,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Generate synthetic events to stdout (or --out FILE).
    #[command(after_help = "Example:\n  lambdaflow gen shop --events 1000000 --seed 7 > events.ndjson")]
    Gen(GenArgs),
    /// Append events from FILE (or - for stdin), NDJSON or CSV, durably. A bad line rejects the whole input.
    #[command(after_help = "Examples:\n  lambdaflow ingest events.ndjson\n  lambdaflow gen shop --events 5000 | lambdaflow ingest -\n  \
        lambdaflow ingest --server http://127.0.0.1:7070 events.ndjson   # to a running service, any size")]
    Ingest(IngestArgs),
    /// Run one batch: compute every view over the log as of now and publish it.
    #[command(after_help = "Examples:\n  lambdaflow batch\n  lambdaflow batch --processes 4 --keep 5\n\n\
        With a service running on the data directory, asks it for a run (POST /v1/batch) and waits for it.")]
    Batch(BatchArgs),
    /// Print a view's merged answers (batch + speed), with freshness.
    #[command(after_help = "Examples:\n  lambdaflow query revenue_by_day 2026-02-01\n  \
        lambdaflow query product_revenue_by_day 2026-02-01/17\n  \
        lambdaflow query top_products_by_day --from 2026-03-01 --limit 7 --top 3   # 7 days, 3 products each\n  \
        lambdaflow query customer_spend --all --json\n\n\
        `views` lists the views and their keys. With a service running on the data directory, it answers.")]
    Query(QueryArgs),
    /// List the job's views: name, how they merge, key and value fields.
    #[command(after_help = "Example:\n  lambdaflow views")]
    Views(ViewsArgs),
    /// Show the log, the batch version and the speed layer.
    #[command(after_help = "Examples:\n  lambdaflow status\n  lambdaflow status --json")]
    Status(StatusArgs),
    /// Read every record of the log and check every checksum.
    #[command(after_help = "Example:\n  lambdaflow --data /var/lib/lambdaflow verify")]
    Verify(VerifyArgs),
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
    Cluster(ClusterCmdArgs),
    /// One process of a cluster run (started by `serve`/`cluster`/`batch --processes`, or by
    /// hand on each machine with the same hostfile). See docs/cluster.md.
    #[command(after_help = "Example (process 1 of a 2-process batch run; the serving process starts these itself):\n  \
        lambdaflow worker --role batch --processes 2 --process 1 --hostfile hosts.txt --cut 10,12,9,11")]
    Worker(WorkerArgs),
    /// Write views as Parquet files (typed columns) for DuckDB, Spark or a BI tool.
    #[command(after_help = "Examples:\n  lambdaflow export --all --format parquet --out exports/\n  \
        lambdaflow export revenue_by_day --out exports/ --merged   # batch + speed at the speed layer's frontier\n\n\
        See docs/export.md for the column types and how to read them.")]
    Export(ExportArgs),
    /// Show or set how far each Kafka partition has been read into the log (see docs/kafka.md).
    #[command(
        name = "kafka-positions",
        after_help = "Examples:\n  lambdaflow kafka-positions\n  \
        lambdaflow kafka-positions set shop/0=1042 shop/1=998   # the next offsets to read; the service must be stopped"
    )]
    KafkaPositions(KafkaPositionsArgs),
}

/// `ingest`'s flags.
#[derive(Args)]
pub(super) struct IngestArgs {
    /// The input file, or `-` for stdin.
    pub(super) file: String,
    /// Send FILE to a running service (e.g. http://127.0.0.1:7070) in keyed requests that
    /// fit its --max-body, instead of appending to --data. Validated whole first; a re-run
    /// within 24 h with the same file and --request-size resends the same requests, which are
    /// stored once (see docs/operations.md).
    #[arg(long, value_name = "URL")]
    pub(super) server: Option<String>,
    /// With --server: largest request (e.g. 1MiB); capped by the service's --max-body
    /// (rounded down to a power of two).
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = parse_bytes_usize)]
    pub(super) request_size: usize,
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
    /// Partitions for a new data directory.
    #[arg(long, default_value_t = 4)]
    pub(super) partitions: u32,
    /// Accepted for compatibility and ignored: a local ingest is one all-or-nothing append.
    #[arg(long, hide = true)]
    pub(super) chunk: Option<usize>,
    /// Print `ack N` on stdout once the whole input is durable (N: its events).
    #[arg(long)]
    pub(super) print_acks: bool,
    /// Memory the local ingest may hold at once, whatever the input's size (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_bytes_usize)]
    pub(super) memory: usize,
    /// Input format: ndjson, csv or parquet (default: from the file's extension, else from
    /// the first line).
    #[arg(long, value_name = "FORMAT")]
    pub(super) format: Option<String>,
    /// Idempotency key of a local ingest (default: derived from the input's contents): a
    /// re-run with the same key and input within 24 h stores nothing twice.
    #[arg(long, value_name = "KEY")]
    pub(super) key: Option<String>,
    /// Parsing threads of a local ingest (default: the machine's cores).
    #[arg(long, value_name = "N")]
    pub(super) threads: Option<usize>,
}

/// `batch`'s flags.
#[derive(Args)]
pub(super) struct BatchArgs {
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
    /// Keep this many batch versions (older ones are deleted).
    #[arg(long, default_value_t = 3)]
    pub(super) keep: usize,
    /// Run it on this many worker processes (started on loopback, -w threads each).
    #[arg(long, default_value_t = 1)]
    pub(super) processes: usize,
    /// With a service holding the data directory: how long to wait for the run it starts
    /// (e.g. 10m, 1h); past it, exit code 5.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_positive_duration)]
    pub(super) timeout: Duration,
    /// After the run, write the published version's views as Parquet to DIR (see `export`).
    #[arg(long, value_name = "DIR")]
    pub(super) export_parquet: Option<PathBuf>,
}

/// `query`'s flags.
#[derive(Args)]
pub(super) struct QueryArgs {
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
    /// The view.
    pub(super) view: String,
    /// One key (plain text or JSON). Without it: every key (see --from, --to, --limit).
    pub(super) key: Option<String>,
    /// Lowest key of a range.
    #[arg(long)]
    pub(super) from: Option<String>,
    /// Highest key of a range.
    #[arg(long)]
    pub(super) to: Option<String>,
    /// At most this many keys (answers), in key order. For top_products_by_day a key is a
    /// day: see --top for products per day.
    #[arg(long, default_value_t = 1000, conflicts_with = "all")]
    pub(super) limit: usize,
    /// Every key, however many.
    #[arg(long)]
    pub(super) all: bool,
    /// For views whose value is a list (top-k views such as top_products_by_day): at most
    /// this many items per key.
    #[arg(long, value_name = "N")]
    pub(super) top: Option<usize>,
    /// One JSON object a line: key, value, batch and speed parts, freshness.
    #[arg(long)]
    pub(super) json: bool,
}

/// `views`'s flags.
#[derive(Args)]
pub(super) struct ViewsArgs {
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
}

/// `status`'s flags.
#[derive(Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
    /// As JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// `verify`'s flags.
#[derive(Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
}

/// `cluster`'s flags.
#[derive(Args)]
pub(super) struct ClusterCmdArgs {
    /// Processes per layer (unless --batch-processes / --speed-processes say otherwise).
    #[arg(long)]
    pub(super) processes: usize,
    #[command(flatten)]
    pub(super) serve: ServeArgs,
}

/// How a command reaches a service that holds the data directory.
#[derive(Args, Clone, Default)]
pub(super) struct RemoteArgs {
    /// The bearer token file of the service holding the data directory (if it was started
    /// with --token-file), for commands that answer through it.
    #[arg(long, value_name = "FILE")]
    pub(super) token_file: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
pub(super) struct ClusterArgs {
    /// Worker processes per batch run (started on loopback; -w threads each).
    #[arg(long)]
    pub(super) batch_processes: Option<usize>,
    /// Processes of the speed layer: this one plus others started on loopback.
    #[arg(long)]
    pub(super) speed_processes: Option<usize>,
    /// How long the processes of a run have to connect to each other (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub(super) peer_timeout: Duration,
    /// Attempts per batch run on several processes (a failed attempt is retried).
    #[arg(long, default_value_t = 3)]
    pub(super) batch_attempts: usize,
}

#[derive(Args)]
pub(super) struct ServeArgs {
    /// The job to serve (this binary's job; checked).
    #[arg(long)]
    pub(super) job: Option<String>,
    /// Write every published batch version's views as Parquet to DIR (see `export`).
    #[arg(long, value_name = "DIR")]
    pub(super) export_parquet: Option<PathBuf>,
    /// Address to listen on. Loopback by default; anything else exposes the API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub(super) listen: std::net::SocketAddr,
    /// Run a batch (and hand over) every DURATION, e.g. 10m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub(super) batch_every: Option<Duration>,
    /// Run a batch daily at HH:MM UTC.
    #[arg(long, value_name = "HH:MM")]
    pub(super) batch_at: Option<String>,
    /// Batch versions kept on disk.
    #[arg(long, default_value_t = 3)]
    pub(super) keep: usize,
    /// A file holding the bearer token that write and admin endpoints (and reads, unless
    /// --public-reads) require.
    #[arg(long)]
    pub(super) token_file: Option<PathBuf>,
    /// With --token-file: let reads (views, status, metrics, dashboard data) through without the token.
    #[arg(long)]
    pub(super) public_reads: bool,
    /// Partitions for a new data directory.
    #[arg(long, default_value_t = 4)]
    pub(super) partitions: u32,
    /// Largest request body (e.g. 16MiB, 1GiB; a bare number is bytes). Larger files:
    /// `ingest --server`.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_bytes_usize)]
    pub(super) max_body: usize,
    /// Answer ingest with 429 while the speed layer is this many events behind.
    #[arg(long, default_value_t = 2_000_000)]
    pub(super) max_lag: u64,
    /// Request body bytes held in memory at once (at least --max-body; e.g. 256MiB); beyond it, 429.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_bytes_usize)]
    pub(super) max_inflight: usize,
    /// A host name clients reach the service by (repeatable); requests naming another in
    /// their Host header get 421. localhost and IP addresses are always accepted.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub(super) allow_host: Vec<String>,
    /// HTTP connections open at once (default and most: half the open-files limit, less 64).
    #[arg(long)]
    pub(super) max_connections: Option<usize>,
    /// HTTP connections open at once from one address (default: half of --max-connections).
    #[arg(long)]
    pub(super) max_connections_per_ip: Option<usize>,
    /// How long a request's line and headers may take to arrive, e.g. 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub(super) header_timeout: Duration,
    /// How long an answer may wait for the client to read a byte before the connection is closed, e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub(super) write_timeout: Duration,
    /// Nice levels the HTTP threads (queries, request parsing) run below the committer and
    /// the speed workers, so a flood of queries cannot delay freshness (0: same priority).
    #[arg(long, value_name = "N", default_value_t = crate::serve::HTTP_NICE_DEFAULT, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub(super) http_nice: i32,
    #[command(flatten)]
    pub(super) cluster: ClusterArgs,
    #[command(flatten)]
    pub(super) kafka: KafkaArgs,
}

#[derive(Args)]
pub(super) struct GenArgs {
    /// The job to generate events for (this binary's job).
    pub(super) job: String,
    /// How many events.
    #[arg(long, default_value_t = 10_000)]
    pub(super) events: u64,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// ndjson or csv.
    #[arg(long, default_value = "ndjson")]
    pub(super) format: String,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Historical events to ingest before the first batch.
    #[arg(long, default_value_t = 200_000)]
    pub(super) history: u64,
    /// Live events per second posted to the service.
    #[arg(long, default_value_t = 2_000)]
    pub(super) rate: u64,
    /// How long to run, e.g. 30s, 10m (0: until Ctrl-C).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub(super) seconds: Duration,
    /// Run a new batch (and hand over) every DURATION, e.g. 30s, 10m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub(super) batch_every: Duration,
    /// Address of the service and dashboard.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub(super) listen: std::net::SocketAddr,
    /// Start from an empty data directory: deletes DIR first, only if it holds nothing but
    /// lambdaflow data (log/, views/, keys/, LOCK).
    #[arg(long)]
    pub(super) fresh: bool,
}
