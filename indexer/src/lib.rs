//! The Sluice indexer: a Kafka consumer group that writes records to Elasticsearch (or
//! OpenSearch) with `_bulk`, commits offsets only over settled records, and protects the cluster
//! from overload.
//!
//! # Layout
//! The data path reads from the module names: `consume → batch → bulk → settle → commit`.
//! - [`config`]: the configuration keys (operator interface + tuning), validated with key paths.
//! - [`consume`]: the group consumer on its own thread — cooperative-sticky rebalances with
//!   drain-then-commit on revocation, pause/resume back-pressure, periodic commits, lag statistics.
//! - [`batch`]: records → NDJSON `_bulk` bodies (action line from headers + raw payload bytes),
//!   limited by bytes, documents and linger.
//! - [`index`]: target index names from `sluice.ts` / `sluice.ns` and the `elasticsearch.index`
//!   pattern.
//! - [`bulk`]: sends batches ([`bulk::deliver`]), classifies every item and request
//!   ([`bulk::classify`]: settle / retry / dead-letter / blocked), retries with backoff, splits
//!   rejected requests.
//! - [`backlog`]: bytes and batches between consume and bulk (the consumer's back-pressure).
//! - [`es`]: node pool — round-robin, per-node circuit breaker, TLS, basic auth / API key,
//!   Elasticsearch-vs-OpenSearch detection.
//! - [`settle`]: per-partition settled-prefix tracking: what may be committed.
//! - [`overload`]: AIMD concurrency limiter and the write gate for blocked clusters.
//! - [`kafka`]: what every Kafka client shares (brokers, properties, `kafka.security.*`).
//! - [`dlq`]: the dead-letter producer.
//! - [`backoff`]: jittered exponential backoff.
//! - [`template`], [`setup`]: the index template and the `setup` subcommand (topics + template).
//! - [`retention`]: deletion of whole old indices.
//! - [`privileges`]: the Elasticsearch privileges `run` needs, checked at start.
//! - [`metrics`]: Prometheus metrics.
//! - [`pipeline`]: the `run` subcommand wiring it all together.

pub mod backlog;
pub mod backoff;
pub mod batch;
pub mod bulk;
pub mod config;
pub mod consume;
pub mod dlq;
pub mod es;
pub mod index;
pub mod kafka;
pub mod metrics;
pub mod overload;
pub mod pipeline;
pub mod privileges;
pub mod retention;
pub mod settle;
pub mod setup;
pub mod template;
