//! `sluice`: load generator and end-to-end verifier (see the library documentation).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_cli::{loadgen, verify};

/// The Sluice command-line tool.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write kubelet-style pod logs (CRI / docker, partials, stack traces, rotation, restarts) and a manifest.
    Loadgen(loadgen::LoadgenOptions),
    /// Check a loadgen run against Elasticsearch: every record exactly once (exit 0 yes, 1 loss or duplicates, 2 error).
    Verify(verify::VerifyOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Loadgen(opts) => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            rt.spawn(async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
                flag.store(true, Ordering::Relaxed);
            });
            let summary = loadgen::run(&opts, &stop).context("loadgen")?;
            eprintln!(
                "loadgen: run {} wrote {} records in {:.1} s; manifest {}",
                summary.run_id,
                summary.totals.records,
                summary.seconds,
                summary.manifest.display()
            );
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(opts) => {
            let report = rt.block_on(verify::run(&opts)).context("verify")?;
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.passed(opts.strict) { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
