//! One configuration pattern for both binaries: YAML file, then `SLUICE_…` environment overrides,
//! then `--set key.path=value` flags, deserialised into a typed struct with
//! `#[serde(deny_unknown_fields)]`, then [`Validate`]d.
//!
//! Errors name the key path (`kafka.brokers: must not be empty`); an unknown key also names the
//! nearest valid one. Layering works on a [`serde_json::Value`] tree; the shape of the config's
//! `Default` tells whether an override is a list (comma-separated) or a scalar.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SLUICE_";

/// A configuration problem at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `kafka.brokers`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Collects problems while validating, prefixing nested key paths.
#[derive(Debug, Default)]
pub struct Problems {
    prefix: Vec<String>,
    items: Vec<Problem>,
}

impl Problems {
    /// Records a problem at `key` below the current prefix.
    pub fn push(&mut self, key: &str, message: impl Into<String>) {
        let mut path = self.prefix.join(".");
        if !key.is_empty() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
        }
        self.items.push(Problem { path, message: message.into() });
    }

    /// Validates a nested section under `key`.
    pub fn section(&mut self, key: &str, section: &impl Validate) {
        self.prefix.push(key.to_owned());
        section.validate(self);
        self.prefix.pop();
    }

    /// Checks a condition, recording `message` at `key` when it does not hold.
    pub fn check(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            self.push(key, message);
        }
    }

    /// The problems found so far.
    pub fn into_vec(self) -> Vec<Problem> {
        self.items
    }
}

/// Semantic validation of a configuration section beyond what types express.
pub trait Validate {
    /// Pushes every problem found into `problems`.
    fn validate(&self, problems: &mut Problems);
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{path}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An override (`--set` or environment variable) is malformed.
    #[error("{source_name}: {message}")]
    Override {
        /// The flag or variable name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// One or more keys have wrong types, unknown names or invalid values.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl ConfigError {
    /// Every problem with its key path, one per entry.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(problems) => problems.iter().map(Problem::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// The result of loading: the config plus notes worth logging once the logger is up.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The validated configuration.
    pub config: T,
    /// Environment variables with the `SLUICE_` prefix that name no configuration section
    /// (Kubernetes injects such variables for Services; they are ignored, not fatal).
    pub ignored_env: Vec<String>,
}

/// Loads a configuration: `file` (optional), then `env` overrides, then `sets` (`key.path=value`).
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> Result<Loaded<T>, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    let shape = serde_json::to_value(T::default()).expect("config defaults serialise");
    let mut tree = match file {
        Some(path) => read_yaml(path)?,
        None => Value::Object(Map::new()),
    };
    let mut ignored_env = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    env.sort();
    for (name, value) in env {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        if shape.get(&path[0]).is_none() {
            ignored_env.push(name);
            continue;
        }
        apply(&mut tree, &shape, &path, &value)
            .map_err(|message| ConfigError::Override { source_name: name, message })?;
    }
    for set in sets {
        let Some((key, value)) = set.split_once('=') else {
            return Err(ConfigError::Override {
                source_name: format!("--set {set}"),
                message: "expected KEY=VALUE, e.g. --set kafka.brokers=127.0.0.1:9092".into(),
            });
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        apply(&mut tree, &shape, &path, value)
            .map_err(|message| ConfigError::Override { source_name: format!("--set {key}"), message })?;
    }
    let config: T = serde_path_to_error::deserialize(tree).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::Invalid(vec![Problem { path, message: explain(err.inner().to_string()) }])
    })?;
    let mut problems = Problems::default();
    config.validate(&mut problems);
    let problems = problems.into_vec();
    if problems.is_empty() { Ok(Loaded { config, ignored_env }) } else { Err(ConfigError::Invalid(problems)) }
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let value: Value = serde_yaml_ng::from_str(&text)
        .map_err(|err| ConfigError::Yaml { path: path.to_owned(), message: err.to_string() })?;
    Ok(match value {
        Value::Null => Value::Object(Map::new()),
        other => other,
    })
}

/// Sets `path` in `tree` to `raw`, typed after the default's shape at that path.
fn apply(tree: &mut Value, shape: &Value, path: &[String], raw: &str) -> Result<(), String> {
    if path.iter().any(String::is_empty) {
        return Err("empty key segment".into());
    }
    let shape_at = path.iter().try_fold(shape, |node, key| node.get(key));
    let value = match shape_at {
        Some(Value::Array(_)) => {
            Value::Array(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(scalar).collect())
        }
        Some(Value::String(_)) => Value::String(raw.to_owned()),
        _ => scalar(raw),
    };
    let mut node = tree;
    for key in &path[..path.len() - 1] {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node.as_object_mut().expect("object").entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    node.as_object_mut().expect("object").insert(path[path.len() - 1].clone(), value);
    Ok(())
}

/// Interprets an override as a YAML scalar (`true`, `5`, `1.5`), falling back to a string.
fn scalar(raw: &str) -> Value {
    match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
        _ => Value::String(raw.to_owned()),
    }
}

/// Adds "did you mean" to serde's unknown-field messages.
fn explain(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message };
    let Some((unknown, expected)) = rest.split_once('`') else { return message };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let nearest = candidates.iter().map(|c| (strsim::jaro_winkler(unknown, c), *c)).max_by(|a, b| a.0.total_cmp(&b.0));
    match nearest {
        Some((score, key)) if score >= 0.7 => {
            format!("unknown key `{unknown}`; did you mean `{key}`? (valid keys: {})", candidates.join(", "))
        }
        _ => format!("unknown key `{unknown}` (valid keys: {})", candidates.join(", ")),
    }
}

/// Checks a `host:port` list such as Kafka brokers.
pub fn validate_host_ports(problems: &mut Problems, key: &str, items: &[String]) {
    if items.is_empty() {
        problems.push(key, "must not be empty");
    }
    for (i, item) in items.iter().enumerate() {
        let ok = item.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            problems.push(&format!("{key}[{i}]"), format!("`{item}` is not host:port"));
        }
    }
}

/// `metrics.*`: where the metrics and health server listens.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP server with `/metrics`, `/healthz`, `/readyz`.
    pub listen: String,
}

impl MetricsConfig {
    /// The default for a binary listening on `port`.
    pub fn on_port(port: u16) -> Self {
        MetricsConfig { listen: format!("0.0.0.0:{port}") }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig::on_port(9464)
    }
}

impl Validate for MetricsConfig {
    fn validate(&self, problems: &mut Problems) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push("listen", format!("`{}` is not an address like 0.0.0.0:9464", self.listen));
        }
    }
}

/// A size in bytes, one rule for every Sluice configuration: an integer (bytes), or a string with a
/// unit — decimal `KB`, `MB`, `GB` (10³, 10⁶, 10⁹) or binary `KiB`, `MiB`, `GiB` (also `Ki`, `Mi`,
/// `Gi`: 2¹⁰, 2²⁰, 2³⁰), any case, optionally separated by spaces. A bare `K`, `M` or `G` is
/// rejected as ambiguous (the shipper once read `m` as MiB and the indexer as MB; neither meaning is
/// applied silently).
///
/// Hand-rolled rather than the `bytesize` crate: its parser accepts bare `k`/`m`/`g` (as decimal),
/// which would silently change the meaning of existing shipper configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }

    /// The size as `usize` (saturating).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// Parses `16MiB`, `512 KiB`, `5MB`, `1000` (see the type's rule).
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a byte size like 16MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "ki" | "kib" => 1 << 10,
            "mi" | "mib" => 1 << 20,
            "gi" | "gib" => 1 << 30,
            u @ ("k" | "m" | "g") => {
                return Err(format!(
                    "`{text}`: the unit `{u}` is ambiguous; write {n}{}iB (binary) or {n}{}B (decimal)",
                    u.to_ascii_uppercase(),
                    u.to_ascii_uppercase()
                ));
            }
            _ => return Err(format!("`{text}`: unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 1048576 or \"1MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Kafka {
        brokers: Vec<String>,
        topic: String,
        linger_ms: u64,
        compression: Option<String>,
    }
    impl Default for Kafka {
        fn default() -> Self {
            Kafka {
                brokers: vec!["127.0.0.1:9092".into()],
                topic: "sluice.logs".into(),
                linger_ms: 5,
                compression: None,
            }
        }
    }
    impl Validate for Kafka {
        fn validate(&self, p: &mut Problems) {
            validate_host_ports(p, "brokers", &self.brokers);
            p.check(!self.topic.is_empty(), "topic", "must not be empty");
        }
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        node_name: String,
        kafka: Kafka,
        metrics: MetricsConfig,
    }
    impl Validate for Conf {
        fn validate(&self, p: &mut Problems) {
            p.section("kafka", &self.kafka);
            p.section("metrics", &self.metrics);
        }
    }

    fn yaml(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let loaded = load::<Conf>(None, vec![], &[]).unwrap();
        assert_eq!(loaded.config.kafka, Kafka::default());
    }

    #[test]
    fn file_then_env_then_set_override_in_order() {
        let f = yaml("kafka:\n  topic: from-file\n  linger_ms: 1\n");
        let loaded = load::<Conf>(
            Some(f.path()),
            env(&[("SLUICE_KAFKA__BROKERS", "a:1, b:2"), ("SLUICE_KAFKA__LINGER_MS", "7"), ("PATH", "/bin")]),
            &["kafka.topic=from-flag".into(), "kafka.compression=zstd".into()],
        )
        .unwrap();
        let k = loaded.config.kafka;
        assert_eq!(k.brokers, vec!["a:1", "b:2"]);
        assert_eq!(k.topic, "from-flag");
        assert_eq!(k.linger_ms, 7);
        assert_eq!(k.compression.as_deref(), Some("zstd"));
    }

    #[test]
    fn unknown_key_names_the_path_and_nearest_key() {
        let f = yaml("kafka:\n  brokerz: [a:1]\n");
        let err = load::<Conf>(Some(f.path()), vec![], &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("kafka.brokerz: unknown key `brokerz`; did you mean `brokers`?"), "{text}");
    }

    #[test]
    fn unknown_env_key_inside_a_section_is_an_error_naming_it() {
        let err = load::<Conf>(None, env(&[("SLUICE_KAFKA__TOPICS", "x")]), &[]).unwrap_err();
        assert!(err.to_string().contains("kafka.topics: unknown key `topics`; did you mean `topic`?"), "{err}");
    }

    #[test]
    fn unrelated_sluice_env_vars_are_ignored_and_reported() {
        let loaded = load::<Conf>(None, env(&[("SLUICE_INDEXER_SERVICE_HOST", "10.0.0.1")]), &[]).unwrap();
        assert_eq!(loaded.ignored_env, vec!["SLUICE_INDEXER_SERVICE_HOST"]);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load::<Conf>(None, vec![], &["kafka.linger_ms=soon".into()]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("kafka.linger_ms: invalid type"), "{text}");
    }

    #[test]
    fn validation_reports_every_problem_with_its_path() {
        let f = yaml("kafka:\n  brokers: []\n  topic: ''\nmetrics:\n  listen: nowhere\n");
        let err = load::<Conf>(Some(f.path()), vec![], &[]).unwrap_err();
        assert_eq!(
            err.problems(),
            vec![
                "kafka.brokers: must not be empty",
                "kafka.topic: must not be empty",
                "metrics.listen: `nowhere` is not an address like 0.0.0.0:9464",
            ]
        );
    }

    #[test]
    fn bad_host_port_is_indexed() {
        let err = load::<Conf>(None, env(&[("SLUICE_KAFKA__BROKERS", "ok:1,broken")]), &[]).unwrap_err();
        assert_eq!(err.problems(), vec!["kafka.brokers[1]: `broken` is not host:port"]);
    }

    #[test]
    fn invalid_yaml_and_missing_file_are_clear() {
        let f = yaml("kafka: [\n");
        assert!(matches!(load::<Conf>(Some(f.path()), vec![], &[]), Err(ConfigError::Yaml { .. })));
        let missing = load::<Conf>(Some(Path::new("/nonexistent/sluice.yaml")), vec![], &[]).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/sluice.yaml"));
    }

    #[test]
    fn malformed_set_flag_is_rejected() {
        let err = load::<Conf>(None, vec![], &["kafka.topic".into()]).unwrap_err();
        assert!(err.to_string().contains("expected KEY=VALUE"));
    }

    #[test]
    fn empty_file_means_defaults() {
        let f = yaml("");
        assert!(load::<Conf>(Some(f.path()), vec![], &[]).is_ok());
    }

    /// One rule for both binaries: decimal `KB`/`MB`/`GB`, binary `KiB`/`MiB`/`GiB` (and `Ki`…),
    /// bare `K`/`M`/`G` rejected as ambiguous.
    #[test]
    fn byte_size_has_one_rule() {
        let p = |s: &str| ByteSize::parse(s).map(|b| b.0);
        assert_eq!(p("42"), Ok(42));
        assert_eq!(p("42B"), Ok(42));
        assert_eq!(p("5MiB"), Ok(5 << 20));
        assert_eq!(p("5 mib"), Ok(5 << 20));
        assert_eq!(p("5Mi"), Ok(5 << 20));
        assert_eq!(p("512 KiB"), Ok(512 << 10));
        assert_eq!(p("1GiB"), Ok(1 << 30));
        assert_eq!(p("5MB"), Ok(5_000_000));
        assert_eq!(p("5mb"), Ok(5_000_000));
        assert_eq!(p("2KB"), Ok(2000));
        assert_eq!(p("1GB"), Ok(1_000_000_000));
        for ambiguous in ["5m", "5M", "16k", "1g"] {
            let e = p(ambiguous).unwrap_err();
            assert!(e.contains("ambiguous"), "{ambiguous}: {e}");
        }
        assert!(p("MiB").is_err());
        assert!(p("5XB").is_err());
        assert!(p("99999999999999GiB").is_err());
        let v: ByteSize = serde_json::from_value(serde_json::json!("16MiB")).unwrap();
        assert_eq!(v, ByteSize::mib(16));
        let v: ByteSize = serde_json::from_value(serde_json::json!(1024)).unwrap();
        assert_eq!(v, ByteSize::kib(1));
        assert!(serde_json::from_value::<ByteSize>(serde_json::json!(-1)).is_err());
    }
}
