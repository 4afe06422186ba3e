//! `sluice-indexer setup`: creates the records and dead-letter topics and installs the index
//! template, idempotently (existing topics are left as they are), so it can run as a Helm hook
//! before every install and upgrade.

use std::time::Duration;

use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use sluice_common::kafka::{SecurityWatch, WatchContext};

use crate::config::IndexerConfig;
use crate::es::{BuildError, DetectError, Distribution, NodePool};
use crate::template::{self, TemplateError};

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Kafka admin client error. (The messages of wrapped errors do not repeat their source:
    /// `{:#}` prints the chain.)
    #[error("Kafka admin client")]
    Kafka(#[from] KafkaError),
    /// Kafka refused the credentials, the TLS handshake or an operation (missing ACL); the
    /// message names the cause.
    #[error("{0}")]
    Security(String),
    /// A topic could not be created.
    #[error("cannot create topic {topic}: {code}")]
    Topic {
        /// The topic.
        topic: String,
        /// Kafka's error.
        code: RDKafkaErrorCode,
    },
    /// The Elasticsearch client could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Elasticsearch could not be reached.
    #[error("cannot reach Elasticsearch")]
    Detect(#[from] DetectError),
    /// The template was refused.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// What a topic creation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    /// Created now.
    Created,
    /// Existed already (left unchanged).
    Existed,
}

/// Bytes the dead-letter topic accepts beyond the records topic's `max.message.bytes`: the error
/// headers (`sluice.error.reason` is at most 4 KiB) and the rest of a letter.
pub const DLQ_HEADROOM: u64 = 64 << 10;

/// `max.message.bytes` of a topic (its own or the broker's default), if it can be read.
async fn records_max_message_bytes(admin: &AdminClient<WatchContext>, topic: &str) -> Option<u64> {
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let resources = admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options).await.ok()?;
    let resource = resources.into_iter().next()?.ok()?;
    let value = resource.get("max.message.bytes")?.value.as_deref()?.parse().ok();
    if value.is_none() {
        tracing::warn!(%topic, "cannot read max.message.bytes; the dead-letter topic gets the broker default");
    }
    value
}

/// Creates the records topic and the dead-letter topic (sized for the largest record plus the
/// error headers: `max.message.bytes` = the records topic's + [`DLQ_HEADROOM`]).
pub async fn create_topics(config: &IndexerConfig) -> Result<Vec<(String, TopicStatus)>, SetupError> {
    let watch = Arc::new(SecurityWatch::new("indexer setup", &config.kafka.security));
    let admin: AdminClient<WatchContext> =
        crate::kafka::base_config(config, "sluice-indexer-setup")?.create_with_context(WatchContext(watch.clone()))?;
    // Fail fast with the cause (wrong password, untrusted certificate) instead of an admin
    // request timing out after 30 s. The probe runs on a consumer of the same settings: nothing
    // serves the admin client's main queue, where librdkafka's error callbacks arrive.
    let probe_client: BaseConsumer<WatchContext> =
        crate::kafka::base_config(config, "sluice-indexer-setup")?.create_with_context(WatchContext(watch.clone()))?;
    let probe = probe_client.client().fetch_metadata(Some(&config.kafka.topic), Duration::from_secs(15));
    if probe.is_err() {
        // Serve the error callbacks that say why.
        for _ in 0..30 {
            let _ = probe_client.poll(Duration::from_millis(100));
            if watch.failure().is_some() {
                break;
            }
        }
    }
    if let Some(failure) = watch.failure() {
        return Err(SetupError::Security(failure));
    }
    probe?;
    // -1: the brokers' default.replication.factor (KIP-464).
    let replication = config.kafka.replication_factor.map_or(-1, i32::from);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let min_isr = config.kafka.min_insync_replicas.map(|m| m.to_string());
    let mut records =
        NewTopic::new(&config.kafka.topic, config.kafka.partitions as i32, TopicReplication::Fixed(replication));
    if let Some(min) = &min_isr {
        records = records.set("min.insync.replicas", min);
    }
    let mut results = match admin.create_topics([&records], &options).await {
        Ok(results) => results,
        Err(err) => return Err(watch.failure().map_or(SetupError::Kafka(err), SetupError::Security)),
    };
    // A dead letter is a record plus its error headers: the DLQ topic must take the largest
    // record the records topic takes, and then some.
    let dlq_max = records_max_message_bytes(&admin, &config.kafka.topic).await.map(|max| max + DLQ_HEADROOM);
    let dlq_max_text = dlq_max.map(|m| m.to_string());
    let mut dlq = NewTopic::new(
        &config.dead_letter.topic,
        config.dead_letter.partitions as i32,
        TopicReplication::Fixed(replication),
    );
    if let Some(max) = &dlq_max_text {
        dlq = dlq.set("max.message.bytes", max);
    }
    if let Some(min) = &min_isr {
        dlq = dlq.set("min.insync.replicas", min);
    }
    results.extend(admin.create_topics([&dlq], &options).await?);
    let mut report = Vec::new();
    for result in results {
        match result {
            Ok(topic) => report.push((topic, TopicStatus::Created)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.push((topic, TopicStatus::Existed)),
            Err((topic, code)) => {
                if watch.observe(Some(code), &format!("creating topic {topic}: {code}")) {
                    return Err(SetupError::Security(watch.failure().unwrap_or_default()));
                }
                return Err(SetupError::Topic { topic, code });
            }
        }
    }
    Ok(report)
}

/// Detects the search engine and installs the index template.
pub async fn install_template(config: &IndexerConfig) -> Result<Distribution, SetupError> {
    let pool = NodePool::new(&config.elasticsearch)?;
    let distribution = pool.detect().await?;
    template::install(&pool, &config.elasticsearch, &distribution).await?;
    Ok(distribution)
}

/// The whole `setup` subcommand.
pub async fn run(config: &IndexerConfig) -> Result<(), SetupError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    for (topic, status) in create_topics(config).await? {
        match status {
            TopicStatus::Created => tracing::info!(%topic, "topic created"),
            TopicStatus::Existed => tracing::info!(%topic, "topic exists; left unchanged"),
        }
    }
    let distribution = install_template(config).await?;
    tracing::info!(distribution = distribution.name(), version = distribution.version(), "setup complete");
    Ok(())
}
