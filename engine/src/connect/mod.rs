//! Kafka in, exactly once: the connector that `serve --kafka-brokers … --kafka-topic …` runs
//! inside the service (see `docs/kafka.md`).
//!
//! One task per Kafka partition fetches records (with [`rskafka`], a pure-Rust client) from
//! its position onwards and hands them to the connector's commit loop. The loop parses each
//! record's value as one NDJSON event of the job, and commits a round of records through
//! [`Appender::commit_from_source`]: the partitions' next offsets go into the same
//! idempotency-journal record as the events, fsync'd before the events are appended, so a
//! crash at any moment either keeps the events *and* the offsets they were read up to, or
//! neither (the journal's recovery rolls an interrupted group back). On start the positions
//! come from the journal, never from Kafka's consumer-group offsets.
//!
//! A record that does not parse goes to the dead-letter file (NDJSON, one line per record:
//! topic, partition, offset, error, the value), written and fsync'd before the round that
//! moves past it commits; lines already there (a crash between the two) are not written
//! again. While the speed layer is more than `max_lag_events` behind the log, the loop stops
//! taking records (the fetch tasks stop at their bounded queue): backpressure instead of an
//! unbounded backlog.

use lambdaflow_operators::{Event, Job};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::RecordAndOffset;
use rskafka::BackoffConfig;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::append::Encoded;
use crate::error::{Error, Result};
use crate::lambda::Lambda;
use crate::sync::lock;

/// How long a fetch may wait at the broker for new records. Brokers that hold a fetch for
/// the whole wait even when records arrive (tansu does) make this the floor of produce →
/// visible, so it is short; an idle partition costs ten small requests a second.
const FETCH_WAIT_MS: i32 = 100;

/// The prefix of the journal's source positions written by this connector.
pub const POSITION_PREFIX: &str = "kafka/";

/// How the connector runs.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `HOST:PORT`.
    pub brokers: Vec<String>,
    /// Topics to consume (every partition of each).
    pub topics: Vec<String>,
    /// The dead-letter file (NDJSON).
    pub dead_letters: PathBuf,
    /// Stop taking records while the speed layer is this many events behind the log.
    pub max_lag_events: u64,
    /// Largest fetch per partition and request, bytes.
    pub fetch_max_bytes: i32,
    /// At most this many records per commit round.
    pub round_max_records: usize,
    /// The file that lists the partitions this data directory has consumed (`TOPIC/PARTITION`
    /// a line), or `None` to keep no such list. A listed partition whose position is missing
    /// (the key journal was moved aside) is refused at start instead of being read again from
    /// its earliest offset, which would append its records a second time.
    pub history: Option<PathBuf>,
    /// How often the topics' partitions are looked up again (new partitions are consumed
    /// from their earliest offset once found).
    pub metadata_every: Duration,
}

impl KafkaConfig {
    /// A configuration with the defaults for everything but the brokers, topics and the
    /// dead-letter file.
    pub fn new(brokers: Vec<String>, topics: Vec<String>, dead_letters: PathBuf) -> KafkaConfig {
        KafkaConfig {
            brokers,
            topics,
            dead_letters,
            max_lag_events: 2_000_000,
            fetch_max_bytes: 4 << 20,
            round_max_records: 256 * 1024,
            history: None,
            metadata_every: Duration::from_secs(30),
        }
    }
}

/// Per partition: where the connector is and where Kafka is.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to append (committed with the log).
    pub next: u64,
    /// The partition's high watermark as last fetched.
    pub high_watermark: u64,
    /// `high_watermark - next`: records produced and not yet in the log.
    pub lag: u64,
    /// Fetch errors on this partition (each retried with a backoff; the other partitions
    /// go on meanwhile).
    pub errors: u64,
    /// The last fetch error on this partition, cleared by the next successful fetch.
    pub last_error: Option<String>,
}

/// What the connector has done, for `/metrics` and `/v1/status`.
#[derive(Debug, Default)]
pub struct KafkaStatus {
    /// Records appended to the log.
    pub records: AtomicU64,
    /// Records sent to the dead-letter file.
    pub dead_letters: AtomicU64,
    /// Commit rounds.
    pub commits: AtomicU64,
    /// Times the connector paused because the speed layer lagged.
    pub pauses: AtomicU64,
    /// Whether it is paused now.
    pub paused: AtomicBool,
    /// Errors (connection, fetch, commit) it recovered from by reconnecting.
    pub errors: AtomicU64,
    /// The last such error.
    pub last_error: Mutex<Option<String>>,
    /// Per partition.
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionStatus>>,
}

impl KafkaStatus {
    /// The per-partition states, ordered by topic and partition.
    pub fn partitions(&self) -> Vec<PartitionStatus> {
        lock(&self.partitions).values().cloned().collect()
    }

    /// Total consumer lag, records.
    pub fn lag(&self) -> u64 {
        lock(&self.partitions).values().map(|p| p.lag).sum()
    }

    /// The status as JSON (for `/v1/status`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "records": self.records.load(Relaxed),
            "dead_letters": self.dead_letters.load(Relaxed),
            "commits": self.commits.load(Relaxed),
            "paused": self.paused.load(Relaxed),
            "pauses": self.pauses.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "last_error": *lock(&self.last_error),
            "lag": self.lag(),
            "partitions": self.partitions(),
        })
    }

    fn set(&self, topic: &str, partition: i32, next: Option<u64>, high_watermark: Option<u64>) {
        let mut parts = lock(&self.partitions);
        let p = parts.entry((topic.to_string(), partition)).or_insert_with(|| PartitionStatus {
            topic: topic.to_string(),
            partition,
            ..PartitionStatus::default()
        });
        if let Some(n) = next {
            p.next = n;
        }
        if let Some(h) = high_watermark {
            p.high_watermark = h;
        }
        p.lag = p.high_watermark.saturating_sub(p.next);
    }

    /// A fetch error on one partition: counted for it and in total; the partition retries.
    fn partition_error(&self, topic: &str, partition: i32, why: Option<String>) {
        let mut parts = lock(&self.partitions);
        let p = parts.entry((topic.to_string(), partition)).or_insert_with(|| PartitionStatus {
            topic: topic.to_string(),
            partition,
            ..PartitionStatus::default()
        });
        match why {
            None => p.last_error = None,
            Some(why) => {
                eprintln!("lambdaflow kafka: {why}; retrying this partition (the others go on)");
                p.errors += 1;
                p.last_error = Some(why.clone());
                drop(parts);
                self.errors.fetch_add(1, Relaxed);
                *lock(&self.last_error) = Some(why);
            }
        }
    }

    fn error(&self, why: String) {
        eprintln!("lambdaflow kafka: {why}; reconnecting from the positions in the log");
        self.errors.fetch_add(1, Relaxed);
        *lock(&self.last_error) = Some(why);
    }
}

/// The running connector's status, if one runs in this process (for metrics and status).
static CURRENT: Mutex<Option<Arc<KafkaStatus>>> = Mutex::new(None);

/// The status of the connector running in this process, if any.
pub fn current() -> Option<Arc<KafkaStatus>> {
    lock(&CURRENT).clone()
}

/// Appends the connector's metrics (if one runs) in the Prometheus text format.
pub(crate) fn render_metrics(out: &mut String) {
    let Some(s) = current() else { return };
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter("lambdaflow_kafka_records_total", "Kafka records appended to the log.", s.records.load(Relaxed));
    counter(
        "lambdaflow_kafka_dead_letters_total",
        "Kafka records that failed to parse, written to the dead-letter file.",
        s.dead_letters.load(Relaxed),
    );
    counter("lambdaflow_kafka_commits_total", "Commit rounds of Kafka records (events and offsets together).", s.commits.load(Relaxed));
    counter("lambdaflow_kafka_pauses_total", "Times consuming paused because the speed layer lagged.", s.pauses.load(Relaxed));
    counter("lambdaflow_kafka_errors_total", "Connection, fetch or commit errors the connector recovered from.", s.errors.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP lambdaflow_kafka_consumer_lag Records produced to a partition and not yet in the log.\n\
         # TYPE lambdaflow_kafka_consumer_lag gauge"
    );
    for p in s.partitions() {
        let _ = writeln!(out, "lambdaflow_kafka_consumer_lag{{topic=\"{}\",partition=\"{}\"}} {}", p.topic, p.partition, p.lag);
    }
}

/// A running connector; dropping it stops it (records in flight are simply read again by
/// the next start: only what is committed counts).
pub struct Connector {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<KafkaStatus>,
}

impl Connector {
    /// The connector's status.
    pub fn status(&self) -> &Arc<KafkaStatus> {
        &self.status
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut cur = lock(&CURRENT);
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.status)) {
            *cur = None;
        }
    }
}

/// Starts consuming `cfg.topics` into `lambda`'s log in the background. Fails only on a
/// bad configuration or an unusable dead-letter file; connection problems are retried (and
/// shown in the status) for as long as the connector runs.
pub fn start<J: Job>(lambda: Arc<Lambda<J>>, cfg: KafkaConfig) -> Result<Connector> {
    if cfg.brokers.is_empty() || cfg.topics.is_empty() {
        return Err(Error::Usage("Kafka needs at least one --kafka-brokers address and one --kafka-topic".into()));
    }
    if let Some(t) = cfg.topics.iter().find(|t| t.is_empty() || t.contains('/')) {
        return Err(Error::Usage(format!("--kafka-topic `{t}` is not a Kafka topic name")));
    }
    if let Some(t) = cfg.topics.iter().enumerate().find_map(|(i, t)| cfg.topics[..i].contains(t).then_some(t)) {
        return Err(Error::Usage(format!("--kafka-topic `{t}` is given twice (each record would be appended twice)")));
    }
    let committed = lambda.appender().source_positions(POSITION_PREFIX);
    if let Some(path) = &cfg.history {
        let mut history = History::open(path)?;
        let have: HashSet<(&str, i32)> = committed.iter().filter_map(|(name, _)| parse_position_name(name)).collect();
        let lost: Vec<String> = history
            .partitions
            .iter()
            .filter(|(t, p)| cfg.topics.contains(t) && !have.contains(&(t.as_str(), *p)))
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        if !lost.is_empty() {
            return Err(Error::Inconsistent(format!(
                "this data directory has consumed Kafka partition(s) {} before (listed in {}), but the log holds \
                 no position for them (was the key journal DATA/keys moved aside?). Reading them again from \
                 their earliest offset would append their records a second time. With the service stopped, set \
                 each one's next offset: `lambdaflow kafka-positions set {}`; or, to append them again on \
                 purpose, remove their lines from that file",
                lost.join(", "),
                path.display(),
                lost.iter().map(|tp| format!("{tp}=OFFSET")).collect::<Vec<_>>().join(" ")
            )));
        }
        // A crash between a round's commit and the list's update left a committed partition
        // off the list: put it back.
        history.add_all(have.iter().map(|(t, p)| (t.to_string(), *p)))?;
    }
    let mut dead = DeadLetters::open(&cfg.dead_letters)?;
    dead.prune(&committed);
    let status = Arc::new(KafkaStatus::default());
    let stop = Arc::new(AtomicBool::new(false));
    *lock(&CURRENT) = Some(status.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lambdaflow-kafka-io")
        .enable_all()
        .build()
        .map_err(Error::system("start the Kafka runtime"))?;
    let (st, sp) = (status.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("lambdaflow-kafka".into())
        .spawn(move || runtime.block_on(run(lambda, cfg, dead, st, sp)))
        .map_err(Error::system("spawn the Kafka connector"))?;
    Ok(Connector { stop, thread: Some(thread), status })
}

/// Connects, consumes until an error, and starts over from the committed positions, until
/// stopped.
async fn run<J: Job>(lambda: Arc<Lambda<J>>, cfg: KafkaConfig, mut dead: DeadLetters, status: Arc<KafkaStatus>, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(100);
    let mut history = match cfg.history.as_deref().map(History::open).transpose() {
        Ok(h) => h,
        Err(e) => {
            status.error(format!("cannot read the list of consumed topics: {e}"));
            return;
        }
    };
    while !stop.load(Relaxed) {
        let t = Instant::now();
        match consume(&lambda, &cfg, &mut dead, history.as_mut(), &status, &stop).await {
            Ok(Ended::Stopped) => {}
            Ok(Ended::Repartitioned(what)) => {
                eprintln!("lambdaflow kafka: {what}; consuming again with every partition");
            }
            Err(why) => {
                status.error(why);
                if t.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(100);
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How a connection ended without an error.
enum Ended {
    /// The connector was stopped.
    Stopped,
    /// A topic's partitions changed (say what): start over with the new set.
    Repartitioned(String),
}

/// What a partition's fetch task hands to the commit loop.
struct Fetched {
    /// Index into the partitions.
    index: usize,
    records: Vec<RecordAndOffset>,
}

/// The position name of a partition in the journal.
fn position_name(topic: &str, partition: i32) -> String {
    format!("{POSITION_PREFIX}{topic}/{partition}")
}

/// The topic and partition a position name stands for (`kafka/TOPIC/PARTITION`); topic
/// names hold no `/`, so the last one separates them.
fn parse_position_name(name: &str) -> Option<(&str, i32)> {
    let rest = name.strip_prefix(POSITION_PREFIX)?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?))
}

/// The partitions a data directory has consumed: a text file, one `TOPIC/PARTITION` a line,
/// replaced atomically when a partition's first round has committed (and repaired at start
/// from the committed positions, should a crash have come in between).
struct History {
    path: PathBuf,
    partitions: std::collections::BTreeSet<(String, i32)>,
}

impl History {
    fn open(path: &Path) -> Result<History> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::Io { path: path.to_path_buf(), what: "read".into(), source: e }),
        };
        let mut partitions = std::collections::BTreeSet::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parsed = line.trim().rsplit_once('/').and_then(|(t, p)| Some((t.to_string(), p.parse::<i32>().ok()?)));
            let Some(tp) = parsed.filter(|(t, _)| !t.is_empty()) else {
                return Err(Error::CorruptFile {
                    path: path.to_path_buf(),
                    detail: format!("line {}: `{line}` is not TOPIC/PARTITION", i + 1),
                });
            };
            partitions.insert(tp);
        }
        Ok(History { path: path.to_path_buf(), partitions })
    }

    /// Records that these partitions have been consumed (a no-op when all are listed).
    fn add_all(&mut self, partitions: impl IntoIterator<Item = (String, i32)>) -> Result<()> {
        let mut all = self.partitions.clone();
        all.extend(partitions);
        if all.len() == self.partitions.len() {
            return Ok(());
        }
        let text: String = all.iter().map(|(t, p)| format!("{t}/{p}\n")).collect();
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        crate::durable::replace(&self.path, Path::new(&tmp), text.as_bytes())?;
        self.partitions = all;
        Ok(())
    }
}

/// Sets partitions' positions by hand (`lambdaflow kafka-positions set`): `positions` are
/// `(topic, partition, next offset)`. The journal record is written as by a commit round, so
/// the connector resumes from there at its next start; the partitions are added to the
/// directory's list of consumed ones (`history`).
pub fn set_positions(appender: &crate::append::Appender, history: &Path, positions: &[(String, i32, u64)]) -> Result<()> {
    let mut h = History::open(history)?;
    for (t, p, n) in positions {
        if t.is_empty() || t.contains('/') || *p < 0 || i64::try_from(*n).is_err() {
            return Err(Error::Usage(format!("`{t}/{p}={n}` is not a Kafka partition and offset")));
        }
    }
    let named: Vec<(String, u64)> = positions.iter().map(|(t, p, n)| (position_name(t, *p), *n)).collect();
    appender.commit_from_source(Encoded::default(), &named)?;
    h.add_all(positions.iter().map(|(t, p, _)| (t.clone(), *p)))
}

/// The positions committed in a data directory: `(topic, partition, next offset)`.
pub fn positions(appender: &crate::append::Appender) -> Vec<(String, i32, u64)> {
    appender
        .source_positions(POSITION_PREFIX)
        .into_iter()
        .filter_map(|(name, n)| parse_position_name(&name).map(|(t, p)| (t.to_string(), p, n)))
        .collect()
}

/// One connection: discovers the partitions, resumes each from its committed position,
/// and commits rounds until stopped (Ok) or an error (Err: the caller reconnects).
async fn consume<J: Job>(
    lambda: &Arc<Lambda<J>>,
    cfg: &KafkaConfig,
    dead: &mut DeadLetters,
    mut history: Option<&mut History>,
    status: &Arc<KafkaStatus>,
    stop: &Arc<AtomicBool>,
) -> std::result::Result<Ended, String> {
    let backoff = BackoffConfig { deadline: Some(Duration::from_secs(10)), ..BackoffConfig::default() };
    let client = ClientBuilder::new(cfg.brokers.clone())
        .client_id("lambdaflow")
        .backoff_config(backoff)
        .build()
        .await
        .map_err(|e| format!("cannot connect to Kafka at {}: {e}", cfg.brokers.join(",")))?;
    let topics = client.list_topics().await.map_err(|e| format!("cannot list Kafka topics: {e}"))?;
    let committed: BTreeMap<String, u64> = lambda.appender().source_positions(POSITION_PREFIX).into_iter().collect();
    dead.prune(&committed.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
    let layout = partition_layout(&cfg.topics, &topics)?;
    lock(&status.partitions).clear();
    let mut parts: Vec<(String, i32, Arc<PartitionClient>)> = Vec::new();
    let mut next: Vec<u64> = Vec::new();
    for (name, partitions) in &layout {
        for &p in partitions {
            let pc = client
                .partition_client(name.clone(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("cannot reach partition {name}/{p}: {e}"))?;
            let from = match committed.get(&position_name(name, p)) {
                Some(&n) => n,
                None => {
                    let earliest =
                        pc.get_offset(OffsetAt::Earliest).await.map_err(|e| format!("cannot read the start of {name}/{p}: {e}"))?;
                    u64::try_from(earliest).unwrap_or(0)
                }
            };
            status.set(name, p, Some(from), None);
            parts.push((name.clone(), p, Arc::new(pc)));
            next.push(from);
        }
    }
    // Fetch tasks: each reads its partition from its position on, into a bounded queue.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::result::Result<Fetched, String>>(2 * parts.len().max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (topic, p, pc)) in parts.iter().enumerate() {
        let (tx, pc, status, topic, p) = (tx.clone(), pc.clone(), status.clone(), topic.clone(), *p);
        let (mut cursor, max_bytes) = (next[index] as i64, cfg.fetch_max_bytes);
        tasks.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut failing = false;
            loop {
                let asked = Instant::now();
                match pc.fetch_records(cursor, 1..max_bytes, FETCH_WAIT_MS).await {
                    Ok((mut records, high_watermark)) => {
                        if failing {
                            status.partition_error(&topic, p, None);
                            failing = false;
                            backoff = Duration::from_millis(100);
                        }
                        status.set(&topic, p, None, Some(u64::try_from(high_watermark).unwrap_or(0)));
                        records.retain(|r| r.offset >= cursor);
                        records.sort_by_key(|r| r.offset);
                        let Some(last) = records.last() else {
                            // A broker that answers an empty fetch at once (ignoring the
                            // wait) must not turn this loop into a busy one.
                            if asked.elapsed() < Duration::from_millis(10) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            continue;
                        };
                        cursor = last.offset + 1;
                        if tx.send(Ok(Fetched { index, records })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // This partition alone waits and retries from where it is: the
                        // others keep being consumed (a partition whose records retention
                        // deleted, say, must not stop the topic).
                        status.partition_error(&topic, p, Some(format!("fetching {topic}/{p} at offset {cursor} failed: {e}")));
                        failing = true;
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
    drop(tx);
    let partitions = lambda.log().partitions();
    let mut was_paused = false;
    let mut looked = Instant::now();
    while !stop.load(Relaxed) {
        if looked.elapsed() >= cfg.metadata_every {
            looked = Instant::now();
            // New partitions (Kafka only adds them): start over to consume them too. A
            // failed lookup is not an error of consuming; it is tried again later.
            if let Ok(Ok(now)) = tokio::time::timeout(Duration::from_secs(5), client.list_topics()).await {
                if let Ok(fresh) = partition_layout(&cfg.topics, &now) {
                    if let Some(what) = layout_change(&layout, &fresh) {
                        tasks.abort_all();
                        return Ok(Ended::Repartitioned(what));
                    }
                }
            }
        }
        // Backpressure: take nothing while the speed layer is too far behind.
        let lag = {
            let serving = lambda.serving();
            let frontier = serving.speed.frontier();
            lambda.log().end_offsets().iter().zip(&frontier).map(|(e, f)| e.saturating_sub(*f)).sum::<u64>()
        };
        if lag > cfg.max_lag_events {
            if !was_paused {
                status.pauses.fetch_add(1, Relaxed);
                status.paused.store(true, Relaxed);
                was_paused = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if was_paused {
            status.paused.store(false, Relaxed);
            was_paused = false;
        }
        let first = match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Err(_) => continue,
            Ok(None) => return Err("every fetch task ended".into()),
            Ok(Some(f)) => f?,
        };
        let mut round = vec![first];
        let mut n = round[0].records.len();
        while n < cfg.round_max_records {
            match rx.try_recv() {
                Ok(f) => {
                    let f = f?;
                    n += f.records.len();
                    round.push(f);
                }
                Err(_) => break,
            }
        }
        let mut events: Vec<J::Event> = Vec::with_capacity(n);
        let mut letters: Vec<String> = Vec::new();
        let mut moved: BTreeMap<usize, u64> = BTreeMap::new();
        for f in &round {
            let (topic, p, _) = &parts[f.index];
            for r in &f.records {
                let offset = r.offset as u64;
                match parse_value::<J::Event>(r.record.value.as_deref()) {
                    Ok(e) => events.push(e),
                    Err(why) => {
                        if !dead.contains(topic, *p, offset) {
                            letters.push(dead_letter_line(topic, *p, offset, &why, r.record.value.as_deref()));
                        }
                    }
                }
                moved.insert(f.index, offset + 1);
            }
        }
        let positions: Vec<(String, u64)> = moved.iter().map(|(&i, &n)| (position_name(&parts[i].0, parts[i].1), n)).collect();
        let dead_count = letters.len() as u64;
        // Dead letters first: durable before the positions move past them.
        dead.append(&letters).map_err(|e| format!("writing the dead-letter file failed: {e}"))?;
        let encoded = Encoded::of(&events, partitions).map_err(|e| e.to_string())?;
        lambda.appender().commit_from_source(encoded, &positions).map_err(|e| format!("committing Kafka records failed: {e}"))?;
        if !events.is_empty() {
            lambda.notify();
        }
        status.records.fetch_add(events.len() as u64, Relaxed);
        status.dead_letters.fetch_add(dead_count, Relaxed);
        status.commits.fetch_add(1, Relaxed);
        for (&i, &n) in &moved {
            next[i] = n;
            status.set(&parts[i].0, parts[i].1, Some(n), None);
        }
        dead.prune(&positions);
        // After the commit: a partition on the list always has a position, unless the
        // journal itself was lost (which is what the list is there to catch).
        if let Some(h) = history.as_deref_mut() {
            h.add_all(moved.keys().map(|&i| (parts[i].0.clone(), parts[i].1)))
                .map_err(|e| format!("recording the consumed partitions failed: {e}"))?;
        }
    }
    tasks.abort_all();
    Ok(Ended::Stopped)
}

/// The partitions of each configured topic, sorted; a topic the broker does not list is an
/// error (retried: it may be created later).
fn partition_layout(wanted: &[String], topics: &[rskafka::topic::Topic]) -> std::result::Result<Vec<(String, Vec<i32>)>, String> {
    wanted
        .iter()
        .map(|name| {
            let topic = topics.iter().find(|t| &t.name == name).ok_or_else(|| format!("Kafka topic `{name}` does not exist (yet)"))?;
            let mut ps: Vec<i32> = topic.partitions.iter().copied().collect();
            ps.sort_unstable();
            Ok((name.clone(), ps))
        })
        .collect()
}

/// The partitions added between two layouts, if any, described (Kafka only adds partitions; a
/// topic listed for a moment with fewer, during a leader election say, is not a change).
fn layout_change(before: &[(String, Vec<i32>)], after: &[(String, Vec<i32>)]) -> Option<String> {
    let changes: Vec<String> = before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| {
            let added: Vec<i32> = a.1.iter().copied().filter(|p| !b.1.contains(p)).collect();
            (!added.is_empty()).then(|| format!("topic {} has new partitions {added:?} (had {:?})", b.0, b.1))
        })
        .collect();
    (!changes.is_empty()).then(|| changes.join("; "))
}

/// Parses a record's value as one NDJSON event (a trailing newline is allowed).
fn parse_value<E: Event>(value: Option<&[u8]>) -> std::result::Result<E, String> {
    let Some(bytes) = value else { return Err("the record has no value (a tombstone)".into()) };
    let text = std::str::from_utf8(bytes).map_err(|e| format!("the value is not UTF-8 ({e})"))?;
    let line = text.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(text);
    if line.contains('\n') {
        return Err("the value holds more than one line; a record carries one NDJSON event".into());
    }
    E::parse_ndjson(line).map_err(|e| e.to_string())
}

/// One dead-letter line: where the record was, why it failed, and its value (as text when it
/// is UTF-8, else base64).
fn dead_letter_line(topic: &str, partition: i32, offset: u64, error: &str, value: Option<&[u8]>) -> String {
    let mut obj = serde_json::json!({ "topic": topic, "partition": partition, "offset": offset, "error": error });
    match value.map(std::str::from_utf8) {
        Some(Ok(text)) => obj["value"] = serde_json::Value::String(text.to_string()),
        Some(Err(_)) => obj["value_base64"] = serde_json::Value::String(base64(value.unwrap_or_default())),
        None => obj["value"] = serde_json::Value::Null,
    }
    obj.to_string()
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The dead-letter file: NDJSON lines appended and fsync'd; knows which records it holds at
/// or after the committed positions (the only ones a restart can read again).
struct DeadLetters {
    file: File,
    path: PathBuf,
    /// Bytes of whole lines: where the next line starts.
    len: u64,
    seen: HashSet<(String, i32, u64)>,
    /// A failed write could not be undone: refuse to write more (the next start repairs it).
    broken: bool,
}

impl DeadLetters {
    /// Opens (or creates) the file, dropping a torn last line (a crash mid-write), and reads
    /// which records it holds.
    fn open(path: &Path) -> Result<DeadLetters> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(Error::io(parent, "create directory"))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(path)
            .map_err(Error::io(path, "open dead-letter file"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(Error::io(path, "read dead-letter file"))?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            eprintln!("lambdaflow kafka: dropping a torn last line of {} (a crash while writing it)", path.display());
            file.set_len(whole as u64).and_then(|()| file.sync_all()).map_err(Error::io(path, "truncate dead-letter file"))?;
        }
        let mut seen = HashSet::new();
        for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| Error::CorruptFile {
                path: path.to_path_buf(),
                detail: format!("line {} is not a dead-letter record ({e}); move the file aside", i + 1),
            })?;
            if let (Some(t), Some(p), Some(o)) = (v["topic"].as_str(), v["partition"].as_i64(), v["offset"].as_u64()) {
                seen.insert((t.to_string(), p as i32, o));
            }
        }
        crate::durable::sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
        Ok(DeadLetters { file, path: path.to_path_buf(), len: whole as u64, seen, broken: false })
    }

    /// Forgets the records before the committed positions (`(position name, next offset)`):
    /// they are never read again, so the set stays as small as one round's dead letters.
    fn prune(&mut self, positions: &[(String, u64)]) {
        if self.seen.is_empty() {
            return;
        }
        let next: std::collections::HashMap<(&str, i32), u64> =
            positions.iter().filter_map(|(name, n)| parse_position_name(name).map(|tp| (tp, *n))).collect();
        self.seen.retain(|(t, p, o)| next.get(&(t.as_str(), *p)).is_none_or(|n| o >= n));
    }

    fn contains(&self, topic: &str, partition: i32, offset: u64) -> bool {
        self.seen.contains(&(topic.to_string(), partition, offset))
    }

    /// Appends `lines` and fsyncs.
    fn append(&mut self, lines: &[String]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(std::io::Error::other(format!(
                "an earlier failed write to {} could not be undone; restart the service to repair it",
                self.path.display()
            )));
        }
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        if let Err(e) = self.file.write_all(buf.as_bytes()).and_then(|()| self.file.sync_data()) {
            // A part of the lines may be in the file (a full disk, say): cut it off, so the
            // next round's lines do not follow half a line.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        self.len += buf.len() as u64;
        for l in lines {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                if let (Some(t), Some(p), Some(o)) = (v["topic"].as_str(), v["partition"].as_i64(), v["offset"].as_u64()) {
                    self.seen.insert((t.to_string(), p as i32, o));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves base64 matches the standard alphabet and padding (RFC 4648 test vectors).
    #[test]
    fn base64_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    // Proves the dead-letter file drops a torn last line at open, remembers the records it
    // holds (so a restart does not write them twice), and refuses a damaged line.
    #[test]
    fn dead_letters_reopen() {
        let dir = crate::testing::TempDir::new("kafka-dead");
        let path = dir.path().join("dead.ndjson");
        {
            let mut d = DeadLetters::open(&path).expect("open");
            d.append(&[dead_letter_line("t", 0, 7, "bad", Some(b"x")), dead_letter_line("t", 1, 3, "bad", Some(&[0xff]))]).expect("append");
            assert!(d.contains("t", 0, 7));
        }
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"topic\":\"t\",\"part").expect("torn");
        drop(f);
        let d = DeadLetters::open(&path).expect("reopen");
        assert!(d.contains("t", 0, 7) && d.contains("t", 1, 3) && !d.contains("t", 0, 8));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "the torn line is gone: {text}");
        assert!(text.contains("\"value_base64\":\"/w==\""), "{text}");
        std::fs::write(&path, "not json\n").expect("write");
        assert!(DeadLetters::open(&path).is_err());
    }

    // Proves the records remembered as dead letters are forgotten once the committed position
    // of their partition passes them (only those at or after it can be read again), and that
    // other partitions' records are kept.
    #[test]
    fn dead_letters_prune_below_positions() {
        let dir = crate::testing::TempDir::new("kafka-dead-prune");
        let mut d = DeadLetters::open(&dir.path().join("dead.ndjson")).expect("open");
        let lines: Vec<String> = [("t", 0, 5), ("t", 0, 9), ("t", 1, 2), ("u/v", 3, 1)]
            .iter()
            .map(|(t, p, o)| dead_letter_line(t, *p, *o, "bad", Some(b"x")))
            .collect();
        d.append(&lines).expect("append");
        d.prune(&[(position_name("t", 0), 9), (position_name("u/v", 3), 2)]);
        assert!(!d.contains("t", 0, 5) && d.contains("t", 0, 9), "offset 5 is behind position 9; 9 is not");
        assert!(d.contains("t", 1, 2), "no position for t/1: kept");
        assert!(!d.contains("u/v", 3, 1), "a topic name is taken up to the last `/`");
    }

    // Proves a dead-letter write that fails stops the file from taking more lines until it
    // is repaired (when the failed bytes cannot be cut off), so no line follows a torn one.
    #[test]
    fn dead_letters_refuse_after_an_unrepaired_failed_write() {
        let dir = crate::testing::TempDir::new("kafka-dead-broken");
        let path = dir.path().join("dead.ndjson");
        drop(DeadLetters::open(&path).expect("create"));
        let mut d = DeadLetters::open(&path).expect("open");
        // A read-only handle: the write fails, and so does cutting the file back.
        d.file = File::open(&path).expect("read-only");
        assert!(d.append(&[dead_letter_line("t", 0, 1, "bad", None)]).is_err());
        let again = d.append(&[dead_letter_line("t", 0, 2, "bad", None)]).expect_err("refused");
        assert!(again.to_string().contains("restart the service"), "{again}");
    }

    // Proves position names round-trip (topic names may not hold `/`, partitions are numbers)
    // and that a change of a topic's partitions is noticed and described.
    #[test]
    fn position_names_and_layout_changes() {
        assert_eq!(parse_position_name(&position_name("shop", 12)), Some(("shop", 12)));
        assert_eq!(parse_position_name("kafka/shop/x"), None);
        assert_eq!(parse_position_name("other/shop/1"), None);
        let before = vec![("a".to_string(), vec![0, 1]), ("b".to_string(), vec![0])];
        assert_eq!(layout_change(&before, &before), None);
        let after = vec![("a".to_string(), vec![0, 1, 2]), ("b".to_string(), vec![0])];
        let what = layout_change(&before, &after).expect("a change");
        assert!(what.contains("topic a has new partitions [2] (had [0, 1])"), "{what}");
        let fewer = vec![("a".to_string(), vec![]), ("b".to_string(), vec![0])];
        assert_eq!(layout_change(&before, &fewer), None, "a topic listed without partitions for a moment is no change");
    }
}
