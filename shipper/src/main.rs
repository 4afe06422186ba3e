//! `sluice-shipper`: the node agent binary.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_common::cli::{CommonArgs, Startup};
use sluice_common::prometheus_client::registry::Registry;
use sluice_common::server::{self, Health};
use sluice_shipper::config::{Format, Output, ShipperConfig};
use sluice_shipper::enrich::{self, EnrichMetrics, Filter, PodStore};
use sluice_shipper::metrics::Metrics;
use sluice_shipper::pipeline::{self, Enrichment, Pipeline};
use sluice_shipper::publish::{KafkaSink, Probe, PublishMetrics};
use sluice_shipper::sink::{Sink, StdoutSink};

/// Tails Kubernetes container logs and publishes them to Kafka.
#[derive(Debug, Parser)]
#[command(name = "sluice-shipper", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// With `--check-config`: also ask the Kafka brokers for the topic's metadata (exit 1 when
    /// none answers within 10 s).
    #[arg(long, global = true)]
    check_connectivity: bool,
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

/// jemalloc for the whole process, librdkafka's C allocations included (`unprefixed_malloc…`: it
/// provides `malloc`/`free`). Every produced record is allocated by the read thread and freed by
/// librdkafka's broker thread; with glibc's arenas those cross-thread frees made `malloc` and
/// `malloc_consolidate` a third of the read thread's time (BENCHMARKS.md, issue #16).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options (`MALLOC_CONF` in the environment still applies on top). One arena
/// instead of four per core: the few threads that allocate share it, and the resident set stays
/// within ~1 MiB of glibc's (BENCHMARKS.md, issue #16) at the same CPU cost as the default.
///
/// jemalloc reads the C symbol `malloc_conf` (a `const char *`) at its first allocation; exporting
/// it is the documented way to set options in the binary, hence the one `unsafe` attribute.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &u8 = &b"narenas:1\0"[0];

fn main() -> ExitCode {
    enrich::watch::install_crypto_provider();
    let cli = Cli::parse();
    let mut common = cli.common.clone();
    let connectivity = cli.check_connectivity;
    if connectivity {
        // Validate first (problems exit 1 as with --check-config), then probe the brokers.
        common.check_config = false;
    }
    let config: ShipperConfig = match common.load() {
        Startup::Run(config) => config,
        Startup::Exit(code) => return code,
    };
    if connectivity {
        return check_connectivity(&config);
    }
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

/// `--check-config --check-connectivity`: one metadata request to the brokers.
fn check_connectivity(config: &ShipperConfig) -> ExitCode {
    println!("configuration is valid");
    if config.output != Output::Kafka {
        println!("output is {:?}: no broker to check", config.output);
        return ExitCode::SUCCESS;
    }
    let (acker, _events) = pipeline::channel();
    let sink = match KafkaSink::new(&config.kafka, config.limits.inflight_bytes.as_usize(), acker, Default::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kafka: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sink.probe().check(Duration::from_secs(10)) {
        Ok(partitions) => {
            println!(
                "kafka: brokers {} answered; topic {} has {partitions} partition(s)",
                config.kafka.brokers.join(","),
                config.kafka.topic
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafka: brokers {} did not answer a metadata request: {e}", config.kafka.brokers.join(","));
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
        for warning in config.kafka.security.warnings() {
            tracing::warn!("{warning}");
        }
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
        let publish_metrics = PublishMetrics::register(&mut registry);
        let enrichment = Enrichment {
            store: PodStore::new(&config.kubernetes),
            filter: Arc::new(Filter::new(&config.filter).context("filter globs")?),
            metrics: EnrichMetrics::register(&mut registry),
        };
        // The pod watch runs on this runtime; it never blocks the read path (invariant 4).
        tokio::spawn(enrich::run(
            config.kubernetes.clone(),
            config.node_name.clone(),
            enrichment.store.clone(),
            enrichment.metrics.clone(),
            shutdown.clone(),
        ));
        let health = Health::new();
        health.set_not_ready("starting");
        let (acker, events) = pipeline::channel();
        // Build the output first: a configuration librdkafka refuses stops here, before serving.
        let worker = match config.output {
            Output::Stdout => {
                let sink = StdoutSink::new(io::stdout(), acker);
                health.set_ready();
                start_read_path(&config, sink, events, metrics, enrichment)?
            }
            Output::Kafka => {
                let sink =
                    KafkaSink::new(&config.kafka, config.limits.inflight_bytes.as_usize(), acker, publish_metrics)
                        .context("starting the Kafka producer")?;
                spawn_readiness(sink.probe(), health.clone(), shutdown.clone());
                start_read_path(&config, sink, events, metrics, enrichment)?
            }
        };
        let (addr, server) =
            server::spawn(&config.metrics.listen, Arc::new(registry), health.clone(), shutdown.clone())
                .await
                .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        let output = match config.output {
            Output::Kafka => "kafka",
            Output::Stdout => "stdout",
        };
        tracing::info!(%addr, root = %config.paths.root, output, "sluice-shipper running");
        let (stopper, thread) = worker;
        let token = shutdown.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            stopper.stop();
        });
        let result = tokio::task::spawn_blocking(move || thread.join()).await;
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

type Worker = (pipeline::Stopper, std::thread::JoinHandle<Result<pipeline::Summary, pipeline::PipelineError>>);

/// Starts the read path on its own thread.
fn start_read_path<S: Sink + 'static>(
    config: &ShipperConfig,
    sink: S,
    events: pipeline::Events,
    metrics: Metrics,
    enrichment: Enrichment,
) -> anyhow::Result<Worker> {
    let pipeline = Pipeline::new(config, sink, events, metrics)?.with_enrichment(enrichment);
    let stopper = pipeline.stopper();
    let thread = std::thread::Builder::new()
        .name("read-path".into())
        .spawn(move || pipeline.run())
        .context("starting the read path")?;
    Ok((stopper, thread))
}

/// `/readyz` turns true once a broker answered a metadata request for the topic; until then it says
/// why not. Checked again every few seconds so a lost cluster shows.
fn spawn_readiness(probe: Probe, health: Health, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut was_ready = false;
        loop {
            let p = probe.clone();
            let result = tokio::task::spawn_blocking(move || p.check(Duration::from_secs(5))).await;
            match result {
                Ok(Ok(partitions)) => {
                    if !was_ready {
                        tracing::info!(partitions, "Kafka answered; ready");
                    }
                    was_ready = true;
                    health.set_ready();
                }
                Ok(Err(e)) => {
                    // A security failure was logged once already (with its cause); do not repeat it.
                    if was_ready && !e.starts_with("Kafka ") {
                        tracing::warn!(error = %e, "Kafka metadata request failed; not ready");
                    } else if was_ready {
                        tracing::warn!("not ready (see the Kafka error above)");
                    }
                    was_ready = false;
                    health.set_not_ready(format!("kafka: {e}"));
                }
                Err(_) => return,
            }
            let period = if was_ready { Duration::from_secs(10) } else { Duration::from_secs(2) };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    });
}
