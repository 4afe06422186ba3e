//! Logging: `tracing` with human-readable or JSON output, filtered by `RUST_LOG` or `--log-level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output format, chosen with `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Library targets quietened under the `level` directive unless it names them itself: the
/// Kubernetes client logs every failed request of a retrying watch (an error and a warning per
/// attempt while the API server is down), which the shipper's `enrich` reports itself, once per
/// change and then at growing intervals.
const QUIET: &str = "kube_client=error,kube_client::client::builder=off,kube_runtime::watcher=off";

/// The filter directives used when `RUST_LOG` is unset: `level`, plus quiet levels for the
/// Kubernetes client's retry logs unless `level` mentions `kube` itself.
pub fn default_directives(level: &str) -> String {
    if level.contains("kube") { level.to_owned() } else { format!("{level},{QUIET}") }
}

/// Installs the global subscriber writing to stderr. `level` is an `EnvFilter` directive used when
/// `RUST_LOG` is unset (see [`default_directives`]). Safe to call once per process; later calls are
/// ignored.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directives(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_retries_are_quiet_unless_asked_for() {
        let d = default_directives("info");
        assert!(d.starts_with("info,") && d.contains("kube_runtime::watcher=off"), "{d}");
        assert!(EnvFilter::try_new(&d).is_ok());
        assert_eq!(default_directives("info,kube_runtime=debug"), "info,kube_runtime=debug");
    }
}
