//! Pieces every Sluice binary shares.
//!
//! # Layout
//! - [`schema`]: the Elasticsearch document (schema v1), Kafka headers and tags — the shipper →
//!   indexer contract of `shared/DESIGN.md`. Nothing else defines these fields.
//! - [`config`]: YAML + `SLUICE_…` environment + `--set` layering, `deny_unknown_fields`,
//!   [`config::Validate`] with key paths.
//! - [`cli`]: flags both binaries share and the `--check-config` flow.
//! - [`telemetry`]: `tracing` set-up, human or JSON.
//! - [`server`]: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! - [`shutdown`]: SIGTERM/SIGINT → one cancellation token.

pub mod cli;
pub mod config;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use prometheus_client;
pub use tokio_util::sync::CancellationToken;
