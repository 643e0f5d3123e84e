//! The Kafka options of `serve` (the connector itself is [`crate::connect`]).

use super::*;
use crate::connect::{Connector, KafkaConfig};

/// `serve --kafka-brokers HOST:PORT --kafka-topic T`: consume Kafka topics into the log,
/// exactly once (see docs/kafka.md).
#[derive(Args, Clone, Debug, Default)]
pub(super) struct KafkaArgs {
    /// Consume Kafka: bootstrap broker HOST:PORT (repeatable, or comma-separated).
    #[arg(long = "kafka-brokers", value_name = "HOST:PORT", value_delimiter = ',')]
    pub(super) kafka_brokers: Vec<String>,
    /// A Kafka topic to consume, every partition (repeatable). Each record's value is one
    /// NDJSON event of the job.
    #[arg(long = "kafka-topic", value_name = "TOPIC")]
    pub(super) kafka_topic: Vec<String>,
    /// Where records that fail to parse go (NDJSON: topic, partition, offset, error,
    /// value). Default: DATA/kafka-dead-letters.ndjson.
    #[arg(long = "kafka-dead-letters", value_name = "FILE")]
    pub(super) kafka_dead_letters: Option<PathBuf>,
}

/// Starts the connector if Kafka options were given; `max_lag_events` is the service's
/// --max-lag (consuming pauses beyond it).
pub(super) fn start_kafka<J: Job>(lambda: &Arc<Lambda<J>>, args: &KafkaArgs, dir: &Path, max_lag_events: u64) -> Result<Option<Connector>> {
    match (args.kafka_brokers.is_empty(), args.kafka_topic.is_empty()) {
        (true, true) => {
            if args.kafka_dead_letters.is_some() {
                return Err(Error::Usage("--kafka-dead-letters needs --kafka-brokers and --kafka-topic".into()));
            }
            return Ok(None);
        }
        (false, false) => {}
        (true, false) => return Err(Error::Usage("--kafka-topic needs --kafka-brokers HOST:PORT".into())),
        (false, true) => return Err(Error::Usage("--kafka-brokers needs at least one --kafka-topic".into())),
    }
    let dead = args.kafka_dead_letters.clone().unwrap_or_else(|| dir.join("kafka-dead-letters.ndjson"));
    let mut cfg = KafkaConfig::new(args.kafka_brokers.clone(), args.kafka_topic.clone(), dead.clone());
    cfg.max_lag_events = max_lag_events;
    cfg.history = Some(dir.join(KAFKA_HISTORY_FILE));
    let connector = crate::connect::start(lambda.clone(), cfg)?;
    eprintln!(
        "lambdaflow serve: consuming Kafka topic(s) {} from {} (dead letters: {})",
        args.kafka_topic.join(","),
        args.kafka_brokers.join(","),
        dead.display()
    );
    Ok(Some(connector))
}

/// `kafka-positions`' flags.
#[derive(Args)]
pub(super) struct KafkaPositionsArgs {
    #[command(subcommand)]
    pub(super) action: Option<KafkaPositionsAction>,
    /// Print JSON (`[{"topic", "partition", "next"}]`).
    #[arg(long)]
    pub(super) json: bool,
}

/// What `kafka-positions` does.
#[derive(Subcommand)]
pub(super) enum KafkaPositionsAction {
    /// List the committed positions (the default).
    List,
    /// Set partitions' next offsets, e.g. after Kafka's retention deleted records never read,
    /// or to rebuild positions lost with the key journal. The service must be stopped.
    Set {
        /// TOPIC/PARTITION=OFFSET: the next offset to read from that partition.
        #[arg(value_name = "TOPIC/PARTITION=OFFSET", required = true)]
        positions: Vec<String>,
    },
}

/// Parses `TOPIC/PARTITION=OFFSET`.
fn parse_position(s: &str) -> Result<(String, i32, u64)> {
    let bad = |why: &str| Error::Usage(format!("`{s}`: {why} (expected TOPIC/PARTITION=OFFSET, e.g. shop/0=1042)"));
    let (tp, offset) = s.split_once('=').ok_or_else(|| bad("no `=OFFSET`"))?;
    let (topic, partition) = tp.rsplit_once('/').ok_or_else(|| bad("no `/PARTITION`"))?;
    if topic.is_empty() || topic.contains('/') {
        return Err(bad("the topic name is empty or holds `/`"));
    }
    let partition: i32 = partition.parse().ok().filter(|p| *p >= 0).ok_or_else(|| bad("the partition is not a number >= 0"))?;
    let offset: i64 = offset.parse().ok().filter(|o| *o >= 0).ok_or_else(|| bad("the offset is not a number from 0 to 2^63-1"))?;
    Ok((topic.to_string(), partition, offset as u64))
}

/// `kafka-positions [list|set TOPIC/PARTITION=OFFSET...]`: needs the data directory to itself,
/// and an existing master dataset (it never creates one).
pub(super) fn kafka_positions(g: &Global, args: KafkaPositionsArgs) -> Result<()> {
    let set = match &args.action {
        Some(KafkaPositionsAction::Set { positions }) => Some(positions.iter().map(|p| parse_position(p)).collect::<Result<Vec<_>>>()?),
        _ => None,
    };
    if !g.data.join("log").is_dir() {
        return Err(Error::Usage(format!(
            "{} holds no master dataset (no log/): run `serve` or `ingest` on it first; kafka-positions never creates one",
            g.data.display()
        )));
    }
    let _lock = match DirLock::try_acquire(&g.data, "kafka-positions", g.wait, false)? {
        Ok(lock) => lock,
        Err(busy) => {
            return Err(busy_error(
                &g.data,
                &busy,
                g.wait,
                "positions are read and set with the service stopped (its status shows them live: `lambdaflow status`)",
            ))
        }
    };
    let appender = open_log(&g.data, 4)?;
    if let Some(parsed) = set {
        crate::connect::set_positions(&appender, &g.data.join(KAFKA_HISTORY_FILE), &parsed)?;
    }
    let all = crate::connect::positions(&appender);
    if args.json {
        let rows: Vec<_> = all.iter().map(|(t, p, n)| serde_json::json!({"topic": t, "partition": p, "next": n})).collect();
        return out(format_args!("{}", serde_json::Value::Array(rows)));
    }
    if all.is_empty() {
        return out(format_args!("no Kafka positions in {}", g.data.display()));
    }
    let mut text = String::new();
    for (t, p, n) in &all {
        text.push_str(&format!("{t}/{p}\tnext offset {n}\n"));
    }
    out(format_args!("{}", text.trim_end()))
}

/// The file listing the Kafka partitions a data directory has consumed (see
/// `KafkaConfig::history`).
pub(super) const KAFKA_HISTORY_FILE: &str = "kafka-partitions";
