//! Pieces every Sluice binary shares.
//!
//! # Layout
//! - [`schema`]: the Elasticsearch document (schema v1), Kafka headers and tags — the shipper →
//!   indexer contract of `shared/DESIGN.md`. Nothing else defines these fields.
//! - [`message`]: Kafka message contract v2, a frame line and record lines (several records per
//!   message): the writer, the decoder, the round trip to the v1 document.
//! - [`config`]: YAML + `SLUICE_…` environment + `--set` layering, `deny_unknown_fields`,
//!   [`config::Validate`] with key paths.
//! - [`secret`]: secret values (never printed) and their `*_file` alternatives.
//! - [`kafka`]: `kafka.security.*`, the TLS/SASL settings of every Kafka client, and the one-message
//!   reporting of authentication, TLS and ACL failures.
//! - [`cli`]: flags both binaries share and the `--check-config` flow.
//! - [`telemetry`]: `tracing` set-up, human or JSON.
//! - [`server`]: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! - [`shutdown`]: SIGTERM/SIGINT → one cancellation token.

pub mod cli;
pub mod config;
pub mod kafka;
pub mod message;
pub mod schema;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use prometheus_client;
pub use tokio_util::sync::CancellationToken;
