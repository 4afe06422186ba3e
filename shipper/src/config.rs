//! `sluice-shipper` configuration (keys of the operator interface in `shared/DESIGN.md`).
//!
//! Every section is `deny_unknown_fields` with defaults, and [`Validate`] reports problems with their
//! key paths. Durations are human-readable (`1s`, `500ms`); byte sizes are integers or strings with a
//! unit (`16MiB`, `512KiB`, `1GB`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_common::config::{MetricsConfig, Problems, Validate};

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Publish to Kafka (default).
    #[default]
    Kafka,
    /// Print `{"id":…,"doc":…}` lines to standard output.
    Stdout,
}

/// The whole shipper configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShipperConfig {
    /// Node name written to `kubernetes.node.name`; default `NODE_NAME`, else the hostname.
    pub node_name: String,
    /// Where records go.
    pub output: Output,
    /// `paths.*`.
    pub paths: PathsConfig,
    /// `tail.*`.
    pub tail: TailConfig,
    /// `parse.*`.
    pub parse: ParseConfig,
    /// `multiline`: rules joining several lines into one record (stack traces).
    pub multiline: Vec<MultilineRule>,
    /// `limits.*`.
    pub limits: LimitsConfig,
    /// `checkpoint.*`.
    pub checkpoint: CheckpointConfig,
    /// `kafka.*`.
    pub kafka: KafkaConfig,
    /// `kubernetes.*`.
    pub kubernetes: KubernetesConfig,
    /// `filter.*`: which pods and containers are shipped.
    pub filter: FilterConfig,
    /// `rate_limit.*`: per-namespace lines/s and bytes/s limits at the source.
    pub rate_limit: RateLimitConfig,
    /// `metrics.*`.
    pub metrics: MetricsConfig,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            node_name: default_node_name(),
            output: Output::Kafka,
            paths: PathsConfig::default(),
            tail: TailConfig::default(),
            parse: ParseConfig::default(),
            multiline: Vec::new(),
            limits: LimitsConfig::default(),
            checkpoint: CheckpointConfig::default(),
            kafka: KafkaConfig::default(),
            kubernetes: KubernetesConfig::default(),
            filter: FilterConfig::default(),
            rate_limit: RateLimitConfig::default(),
            metrics: MetricsConfig::on_port(9464),
        }
    }
}

fn default_node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

impl Validate for ShipperConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.node_name.is_empty(), "node_name", "must not be empty");
        p.section("paths", &self.paths);
        p.section("tail", &self.tail);
        p.section("parse", &self.parse);
        for (i, rule) in self.multiline.iter().enumerate() {
            p.section(&format!("multiline[{i}]"), rule);
        }
        p.section("limits", &self.limits);
        p.section("checkpoint", &self.checkpoint);
        if self.output == Output::Kafka {
            p.section("kafka", &self.kafka);
        }
        p.section("kubernetes", &self.kubernetes);
        p.section("filter", &self.filter);
        p.section("rate_limit", &self.rate_limit);
        p.section("metrics", &self.metrics);
        if self.limits.pending_bytes.0 < self.parse.max_line_bytes.0 {
            p.push("limits.pending_bytes", "must be at least parse.max_line_bytes");
        }
    }
}

/// Byte sizes follow the one rule of [`sluice_common::config::ByteSize`].
pub use sluice_common::config::ByteSize;

/// `paths.*`: which files are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Root of the kubelet's pod log tree (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    pub root: String,
    /// Directories of `*.log` symlinks (the kubelet's `/var/log/containers`); each link is resolved and
    /// read once, under its target's path. Missing directories are ignored.
    pub symlink_dirs: Vec<String>,
    /// Globs on the resolved absolute path of live files; a file is read when it matches one.
    pub include: Vec<String>,
    /// Globs on the resolved absolute path; a matching file is never read (wins over `include`).
    pub exclude: Vec<String>,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            root: "/var/log/pods".into(),
            symlink_dirs: vec!["/var/log/containers".into()],
            include: vec!["**".into()],
            exclude: Vec::new(),
        }
    }
}

impl Validate for PathsConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.root.is_empty(), "root", "must not be empty");
        p.check(!self.include.is_empty(), "include", "must not be empty (use [\"**\"] for every file)");
        for (key, globs) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, g) in globs.iter().enumerate() {
                if let Err(err) = globset::Glob::new(g) {
                    p.push(&format!("{key}[{i}]"), format!("invalid glob `{g}`: {err}"));
                }
            }
        }
    }
}

/// `tail.*`: how files are followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    /// Most file handles held at once; deleted files are given up first when the limit is reached.
    pub max_open_files: usize,
    /// How long a deleted (unlinked) file is still drained through its open handle before it is given up.
    #[serde(with = "humantime_serde")]
    pub deleted_file_grace: Duration,
    /// Period of the full rescan that backs up inotify (at most 1 s is recommended).
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// After a rotation, how long an idle renamed file is kept open for late writes when the new file
    /// stays empty.
    #[serde(with = "humantime_serde")]
    pub rotate_wait: Duration,
    /// Size of the (single, shared) read buffer; also the longest physical line read in one piece.
    pub read_buffer_bytes: ByteSize,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            max_open_files: 1024,
            deleted_file_grace: Duration::from_secs(60),
            rescan_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            read_buffer_bytes: ByteSize::kib(256),
        }
    }
}

impl Validate for TailConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.max_open_files >= 1, "max_open_files", "must be at least 1");
        p.check(!self.rescan_interval.is_zero(), "rescan_interval", "must be greater than 0");
        p.check(self.read_buffer_bytes.0 >= 4096, "read_buffer_bytes", "must be at least 4096");
        p.check(self.read_buffer_bytes.0 <= 64 << 20, "read_buffer_bytes", "must be at most 64MiB");
    }
}

/// Line format of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Detected per file from its first line (default).
    #[default]
    Auto,
    /// CRI (`<time> <stream> <P|F> <content>`), containerd and CRI-O.
    Cri,
    /// Docker json-file (`{"log":…,"stream":…,"time":…}`).
    Docker,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Format::Auto),
            "cri" => Ok(Format::Cri),
            "docker" => Ok(Format::Docker),
            other => Err(format!("unknown format `{other}` (auto, cri, docker)")),
        }
    }
}

/// `parse.*`: line formats and reassembly of partial lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParseConfig {
    /// Line format; `auto` detects CRI or docker json-file per file.
    pub format: Format,
    /// Longest message; longer ones are cut and tagged `truncated`.
    pub max_line_bytes: ByteSize,
    /// A partial line whose final fragment does not arrive within this time is sent tagged
    /// `partial_flushed`.
    #[serde(with = "humantime_serde")]
    pub partial_flush_timeout: Duration,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            format: Format::Auto,
            max_line_bytes: ByteSize::mib(1),
            partial_flush_timeout: Duration::from_secs(5),
        }
    }
}

impl Validate for ParseConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.max_line_bytes.0 >= 1024, "max_line_bytes", "must be at least 1024");
        p.check(!self.partial_flush_timeout.is_zero(), "partial_flush_timeout", "must be greater than 0");
    }
}

/// One multiline rule (`multiline[i]`): joins the lines of matching containers into records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineRule {
    /// Namespace globs the rule applies to.
    pub namespaces: Vec<String>,
    /// Container-name globs the rule applies to.
    pub containers: Vec<String>,
    /// Regex: a line matching it starts a new record; other lines continue the current one.
    pub start_pattern: Option<String>,
    /// Regex: a line matching it continues the current record; other lines start a new one.
    pub continuation_pattern: Option<String>,
    /// Most lines in one record.
    pub max_lines: usize,
    /// Most bytes in one record (further lines start a new record).
    pub max_bytes: ByteSize,
    /// A record with no new line for this long is sent.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for MultilineRule {
    fn default() -> Self {
        MultilineRule {
            namespaces: vec!["*".into()],
            containers: vec!["*".into()],
            start_pattern: None,
            continuation_pattern: None,
            max_lines: 500,
            max_bytes: ByteSize::kib(512),
            timeout: Duration::from_secs(1),
        }
    }
}

impl Validate for MultilineRule {
    fn validate(&self, p: &mut Problems) {
        match (&self.start_pattern, &self.continuation_pattern) {
            (Some(_), Some(_)) => p.push("", "set either start_pattern or continuation_pattern, not both"),
            (None, None) => p.push("", "set one of start_pattern or continuation_pattern"),
            _ => {}
        }
        for (key, pattern) in
            [("start_pattern", &self.start_pattern), ("continuation_pattern", &self.continuation_pattern)]
        {
            if let Some(pattern) = pattern
                && let Err(err) = regex::Regex::new(pattern)
            {
                p.push(key, format!("invalid regex: {err}"));
            }
        }
        for (key, globs) in [("namespaces", &self.namespaces), ("containers", &self.containers)] {
            for (i, g) in globs.iter().enumerate() {
                if let Err(err) = globset::Glob::new(g) {
                    p.push(&format!("{key}[{i}]"), format!("invalid glob `{g}`: {err}"));
                }
            }
        }
        p.check(self.max_lines >= 2, "max_lines", "must be at least 2");
        p.check(self.max_bytes.0 >= 1024, "max_bytes", "must be at least 1024");
        p.check(!self.timeout.is_zero(), "timeout", "must be greater than 0");
    }
}

/// `limits.*`: memory bounds in bytes (invariant 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Serialized records handed to the output and not yet acknowledged; reading pauses above it.
    pub inflight_bytes: ByteSize,
    /// Partial lines and multiline records being assembled, over all files; above it the largest
    /// pending record is sent early, tagged `partial_flushed`.
    pub pending_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { inflight_bytes: ByteSize::mib(4), pending_bytes: ByteSize::mib(8) }
    }
}

impl Validate for LimitsConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.inflight_bytes.0 >= 65536, "inflight_bytes", "must be at least 64KiB");
    }
}

/// `checkpoint.*`: where read positions are persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Directory of the checkpoint file (a hostPath in the DaemonSet).
    pub dir: String,
    /// How often the checkpoint is written (when it changed); it is also written on shutdown.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { dir: "/var/lib/sluice".into(), interval: Duration::from_secs(1) }
    }
}

impl Validate for CheckpointConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.dir.is_empty(), "dir", "must not be empty");
        p.check(!self.interval.is_zero(), "interval", "must be greater than 0");
    }
}

pub use crate::enrich::{FilterConfig, KubernetesConfig};
pub use crate::limit::RateLimitConfig;
pub use crate::publish::KafkaConfig;

#[cfg(test)]
mod tests {
    use sluice_common::config::load;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let loaded = load::<ShipperConfig>(None, env(&[("NODE_NAME", "n1")]), &[]).unwrap();
        assert_eq!(loaded.config.tail.max_open_files, 1024);
        assert_eq!(loaded.config.checkpoint.interval, Duration::from_secs(1));
        assert_eq!(loaded.config.parse.max_line_bytes, ByteSize::mib(1));
    }

    #[test]
    fn byte_sizes_and_durations_from_env() {
        let loaded = load::<ShipperConfig>(
            None,
            env(&[
                ("SLUICE_LIMITS__INFLIGHT_BYTES", "32MiB"),
                ("SLUICE_PARSE__MAX_LINE_BYTES", "65536"),
                ("SLUICE_TAIL__DELETED_FILE_GRACE", "2m"),
                ("SLUICE_PATHS__EXCLUDE", "**/kube-system_*/**,**/x/*"),
            ]),
            &[],
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.limits.inflight_bytes, ByteSize::mib(32));
        assert_eq!(c.parse.max_line_bytes, ByteSize(65536));
        assert_eq!(c.tail.deleted_file_grace, Duration::from_secs(120));
        assert_eq!(c.paths.exclude.len(), 2);
    }

    #[test]
    fn problems_carry_key_paths() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut f,
            b"output: stdout\npaths:\n  exclude: ['a/[']\ntail:\n  max_open_files: 0\nmultiline:\n  - start_pattern: '('\n    max_lines: 1\n  - containers: [java]\n",
        )
        .unwrap();
        let err = load::<ShipperConfig>(Some(f.path()), vec![], &[]).unwrap_err();
        let problems = err.problems();
        let has = |prefix: &str| problems.iter().any(|p| p.starts_with(prefix));
        assert!(has("paths.exclude[0]: invalid glob"), "{problems:?}");
        assert!(has("tail.max_open_files: must be at least 1"), "{problems:?}");
        assert!(has("multiline[0].start_pattern: invalid regex"), "{problems:?}");
        assert!(has("multiline[0].max_lines"), "{problems:?}");
        assert!(has("multiline[1]: set one of"), "{problems:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = load::<ShipperConfig>(None, vec![], &["tail.max_open_file=3".into()]).unwrap_err();
        assert!(err.to_string().contains("did you mean `max_open_files`"), "{err}");
    }

    #[test]
    fn byte_size_parsing() {
        assert_eq!(ByteSize::parse("16MiB"), Ok(ByteSize::mib(16)));
        assert_eq!(ByteSize::parse("1 KB"), Ok(ByteSize(1000)));
        assert_eq!(ByteSize::parse("12"), Ok(ByteSize(12)));
        assert!(ByteSize::parse("lots").is_err());
    }
}
