//! The publish stage: records to Kafka per the message contract of `shared/DESIGN.md`, with
//! acknowledgements from `acks=all` delivery reports.
//!
//! - [`config`]: the `kafka.*` keys, and the librdkafka properties refused because they would
//!   break the delivery guarantees.
//! - [`kafka`]: [`KafkaSink`], the [`crate::sink::Sink`] on an idempotent producer.
//! - [`truncate`]: cutting a record's message to fit `kafka.max_message_bytes`.
//! - [`metrics`]: the publisher's Prometheus metrics.

pub mod config;
pub mod kafka;
pub mod metrics;
pub mod truncate;

pub use config::KafkaConfig;
pub use kafka::{KafkaSink, Probe, PublishError};
pub use metrics::PublishMetrics;
