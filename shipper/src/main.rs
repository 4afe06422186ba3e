//! `sluice-shipper`: the node agent binary.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_common::cli::{CommonArgs, Startup};
use sluice_common::prometheus_client::registry::Registry;
use sluice_common::server::{self, Health};
use sluice_shipper::config::{Format, Output, ShipperConfig};
use sluice_shipper::metrics::Metrics;
use sluice_shipper::pipeline::{self, Pipeline};
use sluice_shipper::sink::StdoutSink;

/// Tails Kubernetes container logs and publishes them to Kafka.
#[derive(Debug, Parser)]
#[command(name = "sluice-shipper", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent (default).
    Run,
    /// Print the records the shipper would publish for these files, without Kafka or checkpoints.
    Inspect {
        /// Line format of the files.
        #[arg(long, default_value = "auto", value_parser = ["auto", "cri", "docker"])]
        format: String,
        /// Log files to read (plain, rotated or gzipped).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: ShipperConfig = match cli.common.load() {
        Startup::Run(config) => config,
        Startup::Exit(code) => return code,
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
        Command::Inspect { format, files } => inspect(&config, &format, &files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(config: &ShipperConfig, format: &str, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let format: Format = format.parse().map_err(anyhow::Error::msg)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let summary = sluice_shipper::inspect::inspect(files, format, config, &mut out)?;
    if summary.parse_errors > 0 {
        eprintln!("{} line(s) did not parse (records tagged parse_error)", summary.parse_errors);
    }
    Ok(())
}

fn run(config: ShipperConfig) -> anyhow::Result<()> {
    if config.output == Output::Kafka {
        bail!("output `kafka` is not available in this build yet; set `output: stdout` (SLUICE_OUTPUT=stdout)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = sluice_common::shutdown::on_signal();
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Metrics::register(&mut registry);
        let health = Health::new();
        let (addr, server) =
            server::spawn(&config.metrics.listen, Arc::new(registry), health.clone(), shutdown.clone())
                .await
                .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        tracing::info!(%addr, root = %config.paths.root, output = "stdout", "sluice-shipper running");

        let (acker, events) = pipeline::channel();
        let sink = StdoutSink::new(io::stdout(), acker);
        let pipeline = Pipeline::new(&config, sink, events, metrics)?;
        let stopper = pipeline.stopper();
        let worker = std::thread::Builder::new()
            .name("read-path".into())
            .spawn(move || pipeline.run())
            .context("starting the read path")?;
        health.set_ready();
        let token = shutdown.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            stopper.stop();
        });
        let result = tokio::task::spawn_blocking(move || worker.join()).await;
        health.set_not_ready("shutting down");
        shutdown.cancel();
        let _ = server.await;
        match result {
            Ok(Ok(Ok(summary))) => {
                tracing::info!(records = summary.records, acked = summary.acked, "stopped; checkpoint written");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) | Err(_) => bail!("the read path panicked"),
        }
    })
}
