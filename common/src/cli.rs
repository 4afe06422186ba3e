//! Command-line arguments both binaries share, and the `--check-config` flow.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{self, Loaded, Validate};
use crate::telemetry::{self, LogFormat};

/// Flags common to `sluice-shipper` and `sluice-indexer` (flatten into each binary's clap struct).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// YAML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print every problem with its key path, exit 0 (valid) or 1.
    #[arg(long, global = true)]
    pub check_config: bool,
    /// Override a key, e.g. `--set kafka.brokers=a:9092,b:9092` (after file and environment).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter when `RUST_LOG` is unset, e.g. `info` or `sluice_shipper=debug,info`.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

/// What a binary should do after [`CommonArgs::load`].
pub enum Startup<T> {
    /// Run with this configuration.
    Run(T),
    /// Exit now with this code (`--check-config`, or an invalid configuration).
    Exit(ExitCode),
}

impl CommonArgs {
    /// Initialises logging and loads the configuration from file, process environment and `--set`.
    /// With `--check-config`, prints the report and returns [`Startup::Exit`].
    pub fn load<T>(&self) -> Startup<T>
    where
        T: DeserializeOwned + Serialize + Default + Validate,
    {
        telemetry::init(self.log_format, &self.log_level);
        match config::load::<T>(self.config.as_deref(), std::env::vars(), &self.sets) {
            Ok(Loaded { config, ignored_env }) => {
                for name in ignored_env {
                    tracing::debug!(%name, "environment variable names no configuration section; ignored");
                }
                if self.check_config {
                    println!("configuration is valid");
                    Startup::Exit(ExitCode::SUCCESS)
                } else {
                    Startup::Run(config)
                }
            }
            Err(err) => {
                for problem in err.problems() {
                    eprintln!("{problem}");
                }
                if !self.check_config {
                    eprintln!(
                        "invalid configuration; see the problems above (`--check-config` prints only this report)"
                    );
                }
                Startup::Exit(ExitCode::FAILURE)
            }
        }
    }
}
