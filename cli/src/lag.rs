//! Kafka consumer-group lag of the indexer, read from outside the group: topic metadata, the
//! group's committed offsets (OffsetFetch, without joining the group) and each partition's
//! watermarks; two samples give the trend and the time to drain.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

/// Errors reading the lag.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    /// A bad `--kafka-property`.
    #[error("--kafka-property `{0}`: expected key=value")]
    Property(String),
    /// librdkafka failed.
    #[error("Kafka at {brokers}: {what}: {source}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// What was asked.
        what: String,
        /// The cause (boxed: librdkafka's error is large).
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The topic does not exist.
    #[error("Kafka at {brokers}: topic `{topic}` does not exist (set --topic to the indexer's kafka.topic)")]
    NoTopic {
        /// Bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
    },
}

/// Kafka flags of `sluice top --kafka`, mirroring the indexer's `kafka.*` keys.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers (`kafka.brokers`).
    #[arg(long, env = "SLUICE_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The records topic (`kafka.topic`).
    #[arg(long, env = "SLUICE_KAFKA__TOPIC", default_value = sluice_common::schema::DEFAULT_TOPIC)]
    pub topic: String,
    /// The indexer's consumer group (`kafka.group_id`).
    #[arg(long, env = "SLUICE_KAFKA__GROUP_ID", default_value = "sluice-indexer")]
    pub group: String,
    /// Extra librdkafka property, `key=value` (repeatable; e.g. security.protocol, sasl.*).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// Timeout of each Kafka request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub kafka_timeout: Duration,
}

/// One partition's offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed; the indexer starts at the earliest).
    pub committed: Option<i64>,
    /// Low watermark (earliest offset kept).
    pub low: i64,
    /// High watermark (next offset to be written).
    pub high: i64,
    /// Records not yet consumed: `high − committed` (`high − low` without a commit).
    pub lag: i64,
}

/// One sample of the group's lag.
#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Per partition, by number.
    pub partitions: Vec<PartitionLag>,
    /// Sum of the partitions' lag.
    pub total: i64,
    /// When it was taken.
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// Reads lag samples for one group and topic.
pub struct LagReader {
    consumer: BaseConsumer,
    args: KafkaArgs,
}

impl LagReader {
    /// A client for `args`; it never subscribes, so it never joins (or disturbs) the group.
    pub fn new(args: &KafkaArgs) -> Result<LagReader, LagError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("group.id", &args.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        for p in &args.properties {
            let (k, v) = p.split_once('=').ok_or_else(|| LagError::Property(p.clone()))?;
            config.set(k.trim(), v.trim());
        }
        let consumer = config.create().map_err(|source| LagError::Kafka {
            brokers: args.brokers.clone(),
            what: "creating the client".into(),
            source: Box::new(source),
        })?;
        Ok(LagReader { consumer, args: args.clone() })
    }

    /// One sample (blocking: call from a blocking thread).
    pub fn sample(&self) -> Result<LagSample, LagError> {
        let (brokers, topic, timeout) = (&self.args.brokers, &self.args.topic, self.args.kafka_timeout);
        let err = |what: &str, source| LagError::Kafka {
            brokers: brokers.clone(),
            what: what.into(),
            source: Box::new(source),
        };
        let metadata = self.consumer.fetch_metadata(Some(topic), timeout).map_err(|e| err("reading metadata", e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(LagError::NoTopic { brokers: brokers.clone(), topic: topic.clone() });
        };
        if t.partitions().is_empty() {
            return Err(LagError::NoTopic { brokers: brokers.clone(), topic: topic.clone() });
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        let mut tpl = TopicPartitionList::new();
        for &p in &ids {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| err("reading the group's committed offsets", e))?;
        let mut partitions = Vec::with_capacity(ids.len());
        for &p in &ids {
            let (low, high) =
                self.consumer.fetch_watermarks(topic, p, timeout).map_err(|e| err("reading watermarks", e))?;
            let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let lag = (high - committed.unwrap_or(low).max(low)).max(0);
            partitions.push(PartitionLag { partition: p, committed, low, high, lag });
        }
        let total = partitions.iter().map(|p| p.lag).sum();
        Ok(LagSample {
            topic: topic.clone(),
            group: self.args.group.clone(),
            partitions,
            total,
            at: Some(Instant::now()),
        })
    }
}

/// Direction of the lag between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// More records waiting than before.
    Growing,
    /// Fewer records waiting than before.
    Draining,
    /// The same.
    Steady,
}

/// The change between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// Lag change per second (positive: growing).
    pub lag_per_s: f64,
    /// Records written to the topic per second.
    pub produced_per_s: f64,
    /// Records committed by the group per second.
    pub consumed_per_s: f64,
    /// Growing, draining or steady.
    pub direction: Direction,
    /// Seconds until the lag is zero at the current net rate (only while draining).
    pub drain_seconds: Option<f64>,
    /// Per partition: lag change per second, in partition order.
    pub partitions: Vec<(i32, f64, Direction)>,
}

fn direction(delta: f64) -> Direction {
    if delta > 0.0 {
        Direction::Growing
    } else if delta < 0.0 {
        Direction::Draining
    } else {
        Direction::Steady
    }
}

/// The trend from `before` to `after` (`seconds` apart).
pub fn trend(before: &LagSample, after: &LagSample, seconds: f64) -> Trend {
    let seconds = seconds.max(1e-3);
    let mut produced = 0i64;
    let mut consumed = 0i64;
    let mut partitions = Vec::new();
    for p in &after.partitions {
        let Some(b) = before.partitions.iter().find(|b| b.partition == p.partition) else { continue };
        produced += p.high - b.high;
        consumed += p.committed.unwrap_or(p.low) - b.committed.unwrap_or(b.low);
        let d = (p.lag - b.lag) as f64;
        partitions.push((p.partition, d / seconds, direction(d)));
    }
    let delta = (after.total - before.total) as f64;
    let lag_per_s = delta / seconds;
    let drain_seconds = (delta < 0.0 && after.total > 0).then(|| after.total as f64 / -lag_per_s);
    Trend {
        lag_per_s,
        produced_per_s: produced as f64 / seconds,
        consumed_per_s: consumed as f64 / seconds,
        direction: direction(delta),
        drain_seconds,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(parts: &[(i32, Option<i64>, i64)]) -> LagSample {
        let partitions: Vec<PartitionLag> = parts
            .iter()
            .map(|&(partition, committed, high)| PartitionLag {
                partition,
                committed,
                low: 0,
                high,
                lag: high - committed.unwrap_or(0),
            })
            .collect();
        let total = partitions.iter().map(|p| p.lag).sum();
        LagSample { topic: "t".into(), group: "g".into(), partitions, total, at: None }
    }

    #[test]
    fn trend_and_time_to_drain() {
        let a = sample(&[(0, Some(100), 1000), (1, None, 50)]);
        let b = sample(&[(0, Some(400), 1100), (1, None, 70)]);
        let t = trend(&a, &b, 2.0);
        // lag 950 → 770: draining 90/s, 770 left → 8.6 s.
        assert_eq!(t.direction, Direction::Draining);
        assert_eq!(t.lag_per_s, -90.0);
        assert_eq!(t.produced_per_s, 60.0);
        assert_eq!(t.consumed_per_s, 150.0);
        assert!((t.drain_seconds.unwrap() - 770.0 / 90.0).abs() < 1e-9);
        assert_eq!(t.partitions, vec![(0, -100.0, Direction::Draining), (1, 10.0, Direction::Growing)]);
        let g = trend(&b, &a, 1.0);
        assert_eq!((g.direction, g.drain_seconds), (Direction::Growing, None));
        let s = trend(&a, &a, 1.0);
        assert_eq!((s.direction, s.drain_seconds), (Direction::Steady, None));
    }
}
