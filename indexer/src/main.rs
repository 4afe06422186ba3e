//! `sluice-indexer`: the consumer-group indexer binary.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_common::cli::{CommonArgs, Startup};
use sluice_common::prometheus_client::registry::Registry;
use sluice_common::server::{self, Health};
use sluice_common::shutdown;
use sluice_indexer::config::IndexerConfig;
use sluice_indexer::metrics::Metrics;
use sluice_indexer::{pipeline, setup};

/// Consumes records from Kafka and indexes them into Elasticsearch.
#[derive(Debug, Parser)]
#[command(name = "sluice-indexer", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the consumer-group indexer (default).
    Run,
    /// Create the topics and the index template, idempotently (usable as a Helm hook).
    Setup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: IndexerConfig = match cli.common.load() {
        Startup::Run(config) => config,
        Startup::Exit(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Setup => setup::run(&config).await.context("setup failed"),
            Command::Run => run(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: IndexerConfig) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix("sluice");
    let metrics = Metrics::register(&mut registry);
    let health = Health::new();
    let shutdown = shutdown::on_signal();
    let server_stop = sluice_common::CancellationToken::new();
    let (addr, server) = server::spawn(&config.metrics.listen, Arc::new(registry), health.clone(), server_stop.clone())
        .await
        .with_context(|| format!("cannot listen on metrics.listen {}", config.metrics.listen))?;
    tracing::info!(%addr, "metrics at /metrics, health at /healthz and /readyz");
    let result = pipeline::run(config, metrics, health, shutdown).await;
    server_stop.cancel();
    let _ = server.await;
    result.context("indexer failed")
}
