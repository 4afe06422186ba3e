//! `sluice-indexer setup`: creates the records and dead-letter topics and installs the index
//! template, idempotently (existing topics are left as they are), so it can run as a Helm hook
//! before every install and upgrade.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

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

/// Creates the records topic and the dead-letter topic.
pub async fn create_topics(config: &IndexerConfig) -> Result<Vec<(String, TopicStatus)>, SetupError> {
    let mut client = ClientConfig::new();
    for (key, value) in &config.kafka.properties {
        client.set(key, value.expose());
    }
    let admin: AdminClient<DefaultClientContext> =
        client.set("bootstrap.servers", config.kafka.brokers.join(",")).create()?;
    // -1: the brokers' default.replication.factor (KIP-464).
    let replication = config.kafka.replication_factor.map_or(-1, i32::from);
    let topics = [
        NewTopic::new(&config.kafka.topic, config.kafka.partitions as i32, TopicReplication::Fixed(replication)),
        NewTopic::new(
            &config.dead_letter.topic,
            config.dead_letter.partitions as i32,
            TopicReplication::Fixed(replication),
        ),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&topics, &options).await?;
    let mut report = Vec::new();
    for result in results {
        match result {
            Ok(topic) => report.push((topic, TopicStatus::Created)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.push((topic, TopicStatus::Existed)),
            Err((topic, code)) => return Err(SetupError::Topic { topic, code }),
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
