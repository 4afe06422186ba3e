//! `sluice`: read, follow and rank the logs; load generator and end-to-end verifier (see the library
//! documentation).

use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_cli::{connect, loadgen, logs, top, verify};

/// The Sluice command-line tool.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print (and with -f follow) container logs from Elasticsearch, like kubectl logs / stern.
    Logs(Box<logs::LogsOptions>),
    /// Who logs the most: lines/s and bytes/s by namespace, pod, container or node; with --kafka the indexer's lag.
    Top(Box<top::TopOptions>),
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
        Command::Logs(opts) => {
            warn(opts.connection.warnings());
            let colour = io::stdout().is_terminal() && !opts.no_color && std::env::var_os("NO_COLOR").is_none();
            let out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
            let code = rt.block_on(async {
                tokio::select! {
                    r = logs::run(&opts, out, colour) => r.map(|_| ExitCode::SUCCESS),
                    code = interrupted() => Ok(code),
                }
            })?;
            Ok(code)
        }
        Command::Top(opts) => {
            warn(opts.connection.warnings());
            let code = rt.block_on(async {
                let mut out = io::stdout();
                tokio::select! {
                    r = top::run(&opts, &mut out) => r.map(|()| ExitCode::SUCCESS),
                    code = interrupted() => Ok(code),
                }
            })?;
            Ok(code)
        }
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
            warn(connect::plain_http_warning(&opts.es_url, None));
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

/// Prints accepted but unsafe settings, one line each, on stderr (they do not stop the command).
fn warn(warnings: impl IntoIterator<Item = String>) {
    for w in warnings {
        eprintln!("sluice: warning: {w}");
    }
}

/// Waits for Ctrl-C (exit 130) or SIGTERM (exit 143), the shell's codes for those signals.
async fn interrupted() -> ExitCode {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => ExitCode::from(130),
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => ExitCode::from(143),
    }
}
