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
    let connector = crate::connect::start(lambda.clone(), cfg)?;
    eprintln!(
        "lambdaflow serve: consuming Kafka topic(s) {} from {} (dead letters: {})",
        args.kafka_topic.join(","),
        args.kafka_brokers.join(","),
        dead.display()
    );
    Ok(Some(connector))
}
