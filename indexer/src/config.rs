//! `sluice-indexer` configuration (keys of the operator interface in `shared/DESIGN.md`, plus the
//! tuning keys documented in `docs/indexer.md`).
//!
//! Every section is `deny_unknown_fields` with defaults; [`Validate`] reports problems with their key
//! path. Secrets ([`Secret`]) never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sluice_common::config::{MetricsConfig, Problems, Validate, validate_host_ports};
use sluice_common::kafka::KafkaSecurity;
use sluice_common::schema::{DEFAULT_DLQ_TOPIC, DEFAULT_TOPIC};
pub use sluice_common::secret::Secret;

use crate::index::IndexPattern;

/// The whole indexer configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexerConfig {
    /// `kafka.*`.
    pub kafka: KafkaConfig,
    /// `elasticsearch.*`.
    pub elasticsearch: ElasticsearchConfig,
    /// `batch.*`: how records are grouped into `_bulk` requests, and the memory bound.
    pub batch: BatchConfig,
    /// `concurrency.*`: adaptive limit of in-flight bulk requests.
    pub concurrency: ConcurrencyConfig,
    /// `retry.*`: backoff of retried items and requests.
    pub retry: RetryConfig,
    /// `retention.*`: deletion of whole old indices.
    pub retention: RetentionConfig,
    /// `dead_letter.*`.
    pub dead_letter: DeadLetterConfig,
    /// `metrics.*`.
    pub metrics: MetricsConfig,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            kafka: KafkaConfig::default(),
            elasticsearch: ElasticsearchConfig::default(),
            batch: BatchConfig::default(),
            concurrency: ConcurrencyConfig::default(),
            retry: RetryConfig::default(),
            retention: RetentionConfig::default(),
            dead_letter: DeadLetterConfig::default(),
            metrics: MetricsConfig::on_port(9465),
        }
    }
}

impl Validate for IndexerConfig {
    fn validate(&self, p: &mut Problems) {
        p.section("kafka", &self.kafka);
        p.section("elasticsearch", &self.elasticsearch);
        p.section("batch", &self.batch);
        p.section("concurrency", &self.concurrency);
        p.section("retry", &self.retry);
        p.section("retention", &self.retention);
        p.section("dead_letter", &self.dead_letter);
        p.section("metrics", &self.metrics);
        if self.batch.max_in_flight_bytes.0 < self.batch.max_bytes.0 {
            p.push("batch.max_in_flight_bytes", "must be at least batch.max_bytes");
        }
        if self.dead_letter.topic == self.kafka.topic {
            p.push("dead_letter.topic", "must differ from kafka.topic");
        }
        // librdkafka evicts a member that does not poll for max.poll.interval.ms; a revocation
        // blocks polling for up to revoke_timeout.
        if self.kafka.revoke_timeout + Duration::from_secs(10) > self.kafka.max_poll_interval {
            p.push("kafka.revoke_timeout", "must be at least 10s below kafka.max_poll_interval");
        }
    }
}

/// `kafka.*`: the consumer group, and the topics `setup` creates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic records are consumed from.
    pub topic: String,
    /// Consumer group id; replicas of one indexer share it.
    pub group_id: String,
    /// Partitions of the records topic created by `setup` (the upper bound of useful replicas).
    pub partitions: u32,
    /// Replication factor of the topics `setup` creates; unset = the brokers' `default.replication.factor`.
    pub replication_factor: Option<u16>,
    /// `min.insync.replicas` of the topics `setup` creates: with the shipper's `acks=all`, a write
    /// is acknowledged only once this many replicas have it. Unset = the brokers' default.
    pub min_insync_replicas: Option<u16>,
    /// Group session timeout (`session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `max.poll.interval.ms`: must exceed `revoke_timeout`.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// On revocation (rebalance or shutdown), how long in-flight records of the revoked partitions
    /// may take to settle before they are abandoned (and re-delivered to the next owner).
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// How often the settled prefix of each partition is committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Bound of librdkafka's prefetch queue per consumer (`queued.max.messages.kbytes`): the only
    /// buffer while the pipeline is full and not yet paused. Pausing discards what was prefetched,
    /// so much more than a batch or two only costs refetching.
    pub prefetch_bytes: ByteSize,
    /// How long the pipeline may stay full (no concurrency slot freed) before the partitions are
    /// paused. Meanwhile the consumer only stops reading, and librdkafka's prefetch queue is the
    /// buffer; pausing discards it, so pausing on every short wait of a saturated pipeline costs
    /// refetching. Also the longest delay of a rebalance callback.
    #[serde(with = "humantime_serde")]
    pub pause_after: Duration,
    /// A partition whose unsettled span (offsets from its first unsettled record to the last one
    /// read) exceeds this is paused alone until the span halves: one stuck record holds back only
    /// its partition, and only this many offsets are re-read after a restart.
    pub max_unsettled_span: u64,
    /// `kafka.security.*`: TLS and SASL of every Kafka client of the indexer (consumer,
    /// dead-letter producer, `setup`'s admin client).
    pub security: KafkaSecurity,
    /// Extra librdkafka properties (e.g. `client.rack`); values are redacted in logs. TLS and SASL
    /// are set with `kafka.security.*`.
    pub properties: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            topic: DEFAULT_TOPIC.into(),
            group_id: "sluice-indexer".into(),
            partitions: 12,
            replication_factor: None,
            min_insync_replicas: None,
            session_timeout: Duration::from_secs(45),
            max_poll_interval: Duration::from_secs(300),
            // Shutdown waits this long once; with the commit and leaving the group it must fit
            // Kubernetes' default 30 s grace period.
            revoke_timeout: Duration::from_secs(20),
            commit_interval: Duration::from_secs(1),
            prefetch_bytes: ByteSize::mib(8),
            pause_after: Duration::from_millis(500),
            max_unsettled_span: 1_000_000,
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }
}

impl Validate for KafkaConfig {
    fn validate(&self, p: &mut Problems) {
        validate_host_ports(p, "brokers", &self.brokers);
        p.check(!self.topic.is_empty(), "topic", "must not be empty");
        p.check(!self.group_id.is_empty(), "group_id", "must not be empty");
        p.check(self.partitions >= 1, "partitions", "must be at least 1");
        p.check(self.replication_factor != Some(0), "replication_factor", "must be at least 1 (or unset)");
        p.check(self.min_insync_replicas != Some(0), "min_insync_replicas", "must be at least 1 (or unset)");
        if let (Some(min), Some(rf)) = (self.min_insync_replicas, self.replication_factor) {
            p.check(
                min <= rf,
                "min_insync_replicas",
                &format!("must not exceed replication_factor ({rf}): no write with acks=all could succeed"),
            );
        }
        p.check(self.session_timeout >= Duration::from_secs(1), "session_timeout", "must be at least 1s");
        p.check(!self.commit_interval.is_zero(), "commit_interval", "must be positive");
        p.check(self.prefetch_bytes.0 >= 1024, "prefetch_bytes", "must be at least 1KiB");
        p.check(self.pause_after <= Duration::from_secs(10), "pause_after", "must be at most 10s");
        p.check(self.max_unsettled_span >= 1000, "max_unsettled_span", "must be at least 1000");
        p.section("security", &self.security);
        KafkaSecurity::validate_properties(p, self.properties.keys());
        for key in self.properties.keys() {
            const OWNED: [&str; 6] = [
                "bootstrap.servers",
                "group.id",
                "enable.auto.commit",
                "enable.auto.offset.store",
                "partition.assignment.strategy",
                "enable.partition.eof",
            ];
            if OWNED.contains(&key.as_str()) {
                p.push(&format!("properties.{key}"), "is set by the indexer itself and cannot be overridden");
            }
        }
    }
}

/// `elasticsearch.*`: the bulk target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// One or more node URLs; requests go round-robin over the healthy ones. A `user:password@`
    /// in a URL is a secret: redacted in `Debug`, problems and logs.
    pub urls: Vec<SecretUrl>,
    /// Target index pattern: `%Y`, `%m`, `%d`, `%H` from the record's `sluice.ts` (UTC), and
    /// `{namespace}` from `sluice.ns` for per-namespace indices.
    pub index: String,
    /// `elasticsearch.auth.*`.
    pub auth: AuthConfig,
    /// `elasticsearch.tls.*`.
    pub tls: TlsConfig,
    /// Timeout of one `_bulk` request (a timeout counts as overload).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `elasticsearch.breaker.*`: per-node circuit breaker.
    pub breaker: BreakerConfig,
    /// While writes are blocked (flood-stage disk watermark, read-only index), how often one
    /// request probes whether the block is gone.
    #[serde(with = "humantime_serde")]
    pub blocked_probe_interval: Duration,
    /// `elasticsearch.template.*`: the index template.
    pub template: TemplateConfig,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            urls: vec!["http://127.0.0.1:9200".into()],
            index: "sluice-logs-%Y.%m.%d".into(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            request_timeout: Duration::from_secs(60),
            breaker: BreakerConfig::default(),
            blocked_probe_interval: Duration::from_secs(30),
            template: TemplateConfig::default(),
        }
    }
}

impl Validate for ElasticsearchConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.urls.is_empty(), "urls", "must not be empty");
        for (i, url) in self.urls.iter().enumerate() {
            let (raw, shown) = (url.expose(), url.redacted());
            if !(raw.starts_with("http://") || raw.starts_with("https://")) {
                p.push(&format!("urls[{i}]"), format!("`{shown}` must start with http:// or https://"));
            } else if elasticsearch::http::Url::parse(raw).is_err() {
                p.push(&format!("urls[{i}]"), format!("`{shown}` is not a valid URL"));
            }
        }
        if let Err(err) = IndexPattern::parse(&self.index) {
            p.push("index", err.to_string());
        }
        p.section("auth", &self.auth);
        p.check(!self.request_timeout.is_zero(), "request_timeout", "must be positive");
        p.section("breaker", &self.breaker);
        p.check(!self.blocked_probe_interval.is_zero(), "blocked_probe_interval", "must be positive");
        p.section("template", &self.template);
    }
}

/// `elasticsearch.auth.*`: basic auth or an API key (not both). Each secret can come from a file
/// (`*_file`, a mounted Kubernetes Secret) or the environment (`SLUICE_ELASTICSEARCH__AUTH__PASSWORD`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Basic-auth user name.
    pub username: String,
    /// Basic-auth password.
    pub password: Secret,
    /// File holding the basic-auth password.
    pub password_file: Option<PathBuf>,
    /// API key, base64 of `id:key` as Elasticsearch returns it in `encoded`.
    pub api_key: Secret,
    /// File holding the API key.
    pub api_key_file: Option<PathBuf>,
}

impl AuthConfig {
    fn has_api_key(&self) -> bool {
        !self.api_key.is_empty() || self.api_key_file.is_some()
    }

    fn has_password(&self) -> bool {
        !self.password.is_empty() || self.password_file.is_some()
    }
}

impl Validate for AuthConfig {
    fn validate(&self, p: &mut Problems) {
        use sluice_common::secret::validate_pair;
        p.check(
            self.username.is_empty() || !self.has_api_key(),
            "api_key",
            "set either username/password or api_key, not both",
        );
        p.check(!self.has_password() || !self.username.is_empty(), "username", "is required with a password");
        validate_pair(p, "password", !self.password.is_empty(), self.password_file.as_deref(), None);
        validate_pair(p, "api_key", !self.api_key.is_empty(), self.api_key_file.as_deref(), None);
    }
}

/// `elasticsearch.tls.*`: server certificate validation for `https://` URLs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
}

/// `elasticsearch.breaker.*`: a node that fails this many requests in a row is skipped, then
/// probed with one request after an exponentially growing pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive request failures that open the breaker.
    pub failure_threshold: u32,
    /// First pause before a probe.
    #[serde(with = "humantime_serde")]
    pub min_open: Duration,
    /// Longest pause before a probe.
    #[serde(with = "humantime_serde")]
    pub max_open: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 3, min_open: Duration::from_secs(1), max_open: Duration::from_secs(30) }
    }
}

impl Validate for BreakerConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.failure_threshold >= 1, "failure_threshold", "must be at least 1");
        p.check(!self.min_open.is_zero(), "min_open", "must be positive");
        p.check(self.max_open >= self.min_open, "max_open", "must be at least min_open");
    }
}

/// `elasticsearch.template.*`: the composable index template for the indices of `elasticsearch.index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// Install (idempotently) at start of `run` as well as in `setup`.
    pub install: bool,
    /// Template name.
    pub name: String,
    /// Primary shards per index (keep small with per-namespace indices).
    pub shards: u32,
    /// Replicas per shard.
    pub replicas: u32,
    /// `index.refresh_interval`.
    pub refresh_interval: String,
    /// `index.mapping.total_fields.limit`: bounds dynamic mapping of fields outside schema v1
    /// (labels and annotations are single `flattened` fields and never add mappings).
    pub total_fields_limit: u32,
    /// Template priority (higher wins over other templates matching the same indices).
    pub priority: u32,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        TemplateConfig {
            install: true,
            name: "sluice-logs".into(),
            shards: 1,
            replicas: 1,
            refresh_interval: "5s".into(),
            total_fields_limit: 1000,
            priority: 200,
        }
    }
}

impl Validate for TemplateConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.name.is_empty(), "name", "must not be empty");
        p.check(self.shards >= 1, "shards", "must be at least 1");
        p.check(!self.refresh_interval.is_empty(), "refresh_interval", "must not be empty");
        p.check(self.total_fields_limit >= 100, "total_fields_limit", "must be at least 100");
    }
}

/// `batch.*`: a bulk request is sent when any limit is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Encoded NDJSON bytes per `_bulk` request.
    pub max_bytes: ByteSize,
    /// Documents per `_bulk` request.
    pub max_docs: usize,
    /// Longest wait for a batch to fill.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Memory bound: encoded bytes of batches sent but not settled. When reached, the consumer
    /// stops reading, and pauses the Kafka partitions after `kafka.pause_after`.
    pub max_in_flight_bytes: ByteSize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_bytes: ByteSize::mib(5),
            max_docs: 10_000,
            linger: Duration::from_millis(500),
            max_in_flight_bytes: ByteSize::mib(64),
        }
    }
}

impl Validate for BatchConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.max_bytes.0 >= 1024, "max_bytes", "must be at least 1KiB");
        p.check(self.max_bytes.0 <= 1 << 30, "max_bytes", "must be at most 1GiB");
        p.check(self.max_docs >= 1, "max_docs", "must be at least 1");
        p.check(!self.linger.is_zero(), "linger", "must be positive");
    }
}

/// `concurrency.*`: AIMD limit of in-flight `_bulk` requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencyConfig {
    /// Lower bound.
    pub min: usize,
    /// Upper bound.
    pub max: usize,
    /// Limit at start.
    pub initial: usize,
    /// Multiplier applied on 429, timeout or latency spike.
    pub decrease_factor: f64,
    /// A request slower than this multiple of the latency baseline counts as a spike.
    pub latency_spike_factor: f64,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig { min: 1, max: 8, initial: 2, decrease_factor: 0.5, latency_spike_factor: 3.0 }
    }
}

impl Validate for ConcurrencyConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.min >= 1, "min", "must be at least 1");
        p.check(self.max >= self.min, "max", "must be at least concurrency.min");
        p.check(self.max <= 1024, "max", "must be at most 1024");
        p.check((self.min..=self.max).contains(&self.initial), "initial", "must be between min and max");
        p.check(
            self.decrease_factor > 0.0 && self.decrease_factor < 1.0,
            "decrease_factor",
            "must be between 0 and 1 (exclusive)",
        );
        p.check(self.latency_spike_factor > 1.0, "latency_spike_factor", "must be greater than 1");
    }
}

/// `retry.*`: jittered exponential backoff for retried items and failed requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First backoff.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest backoff.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts per item before it is dead-lettered (`retries_exhausted`); 0 = unlimited.
    /// Blocked items (refused writes) are exempt: they are bounded by `give_up_after`.
    pub max_attempts: u32,
    /// How long an item may keep failing (retried or blocked, from its first failed attempt)
    /// before it is dead-lettered as `retries_exhausted` with the last reason; 0 = never. Failures
    /// of whole requests (no node, timeouts, 5xx, refused credentials) do not count: they say
    /// nothing about the record.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_attempts: 0,
            give_up_after: Duration::from_secs(3600),
        }
    }
}

impl Validate for RetryConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.initial_backoff.is_zero(), "initial_backoff", "must be positive");
        p.check(self.max_backoff >= self.initial_backoff, "max_backoff", "must be at least initial_backoff");
    }
}

/// `retention.*`: whole indices older than `days` (by the date in their name) are deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days to keep; 0 disables deletion.
    pub days: u32,
    /// How often old indices are looked for.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Records whose index date is already older than `days` (they would create an index the next
    /// sweep deletes): `dead_letter` (default, type `retention_expired`) or `index` (counted only).
    pub late_records: LatePolicy,
}

/// What to do with a record whose target index is older than `retention.days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Dead-letter it as `retention_expired` (kept, replayable).
    #[default]
    DeadLetter,
    /// Index it anyway (the next sweep deletes it); counted in `late_records_total`.
    Index,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { days: 0, check_interval: Duration::from_secs(3600), late_records: LatePolicy::default() }
    }
}

impl Validate for RetentionConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.check_interval.is_zero(), "check_interval", "must be positive");
    }
}

/// `dead_letter.*`: where records Elasticsearch rejects for good go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Dead-letter topic.
    pub topic: String,
    /// Partitions of the dead-letter topic created by `setup`.
    pub partitions: u32,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { topic: DEFAULT_DLQ_TOPIC.into(), partitions: 3 }
    }
}

impl Validate for DeadLetterConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.topic.is_empty(), "topic", "must not be empty");
        p.check(self.partitions >= 1, "partitions", "must be at least 1");
    }
}

impl IndexerConfig {
    /// Settings that are accepted but unsafe, as `key: message` lines to log at start: credentials
    /// (basic auth, an API key, or `user:password@` in a URL) sent over plain `http://`.
    pub fn warnings(&self) -> Vec<String> {
        let es = &self.elasticsearch;
        let mut out = self.kafka.security.warnings();
        if es.tls.insecure_skip_verify {
            out.push(
                "elasticsearch.tls.insecure_skip_verify is true: the nodes' certificates are NOT verified, anyone \
                 on the network path can read the logs and the credentials (for tests only)"
                    .to_owned(),
            );
        }
        let configured = !es.auth.username.is_empty() || es.auth.has_api_key();
        for (i, url) in es.urls.iter().enumerate() {
            let parsed = elasticsearch::http::Url::parse(url.expose()).ok();
            let in_url = parsed.as_ref().is_some_and(|u| !u.username().is_empty() || u.password().is_some());
            if url.expose().starts_with("http://") && (configured || in_url) {
                let what = if es.auth.has_api_key() { "an API key" } else { "basic-auth credentials" };
                out.push(format!(
                    "elasticsearch.urls[{i}]: {what} would be sent in plain text over `{}`; use https://",
                    url.redacted_parsed()
                ));
            }
        }
        out
    }
}

/// A URL that may carry `user:password@`: `Debug` and [`SecretUrl::redacted`] show it without;
/// the value is zeroed when dropped (`secrecy`).
#[derive(Clone, Default)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// The URL as configured, credentials included; use only to build a client.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with any `user:password@` replaced by `***@` (also for text that is not a valid URL).
    pub fn redacted(&self) -> String {
        redact_userinfo(self.expose())
    }

    /// The normalised URL without credentials when it parses (e.g. `http://es:9200/`), else
    /// [`SecretUrl::redacted`].
    fn redacted_parsed(&self) -> String {
        match elasticsearch::http::Url::parse(self.expose()) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => self.redacted(),
        }
    }
}

/// Replaces the user-info part of a URL-like text (`scheme://user:pass@host…` or `user:pass@host`)
/// with `***`.
pub fn redact_userinfo(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(at) => text.split_at(at + 3),
        None => ("", text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => text.to_owned(),
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretUrl {}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl(SecretString::from(url))
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        SecretUrl(SecretString::from(url))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialised only to learn the configuration's shape.
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl::from)
    }
}

/// Byte sizes follow the one rule of [`sluice_common::config::ByteSize`].
pub use sluice_common::config::ByteSize;

#[cfg(test)]
mod tests {
    use sluice_common::config::load;

    use super::*;

    fn load_with(sets: &[&str], env: &[(&str, &str)]) -> Result<IndexerConfig, Vec<String>> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load::<IndexerConfig>(None, env, &sets).map(|l| l.config).map_err(|e| e.problems())
    }

    #[test]
    fn defaults_are_valid_and_match_the_operator_interface() {
        let c = load_with(&[], &[]).unwrap();
        assert_eq!(c.kafka.topic, "sluice.logs");
        assert_eq!(c.kafka.group_id, "sluice-indexer");
        assert_eq!(c.elasticsearch.index, "sluice-logs-%Y.%m.%d");
        assert_eq!(c.dead_letter.topic, "sluice.logs.dlq");
        assert_eq!(c.metrics.listen, "0.0.0.0:9465");
        assert_eq!(c.batch.max_bytes, ByteSize::mib(5));
        assert_eq!(c.retry.max_attempts, 0, "unlimited retries by default");
    }

    #[test]
    fn sizes_durations_and_secrets_from_overrides() {
        let c = load_with(
            &["batch.max_bytes=1MiB", "batch.linger=50ms", "elasticsearch.auth.username=u"],
            &[
                ("SLUICE_ELASTICSEARCH__AUTH__PASSWORD", "12345"),
                ("SLUICE_ELASTICSEARCH__URLS", "http://a:1,http://b:2"),
            ],
        )
        .unwrap();
        assert_eq!(c.batch.max_bytes.0, 1 << 20);
        assert_eq!(c.batch.linger, Duration::from_millis(50));
        assert_eq!(c.elasticsearch.auth.password.expose(), "12345");
        assert_eq!(c.elasticsearch.urls.len(), 2);
        let debug = format!("{c:?}");
        assert!(!debug.contains("12345"), "secret leaked: {debug}");
        assert!(debug.contains("***"));
    }

    #[test]
    fn problems_name_key_paths() {
        let problems = load_with(
            &["concurrency.min=4", "concurrency.max=2", "elasticsearch.index=logs-%Q", "batch.max_bytes=3XB"],
            &[],
        )
        .unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("batch.max_bytes")), "{problems:?}");
        let problems =
            load_with(&["concurrency.min=4", "concurrency.max=2", "elasticsearch.index=logs-%Q"], &[]).unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("concurrency.max:")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("elasticsearch.index:")), "{problems:?}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"kafka:\n  properties:\n    group.id: x\n").unwrap();
        let problems = load::<IndexerConfig>(Some(file.path()), Vec::new(), &[]).unwrap_err().problems();
        assert!(problems.iter().any(|p| p.starts_with("kafka.properties.group.id:")), "{problems:?}");
    }

    #[test]
    fn min_insync_replicas_above_the_replication_factor_is_refused() {
        let problems = load_with(&["kafka.replication_factor=2", "kafka.min_insync_replicas=3"], &[]).unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("kafka.min_insync_replicas:")), "{problems:?}");
        assert!(load_with(&["kafka.min_insync_replicas=0"], &[]).is_err());
        let c = load_with(&["kafka.replication_factor=3", "kafka.min_insync_replicas=2"], &[]).unwrap();
        assert_eq!(c.kafka.min_insync_replicas, Some(2));
        // With the brokers' replication factor (unset) it cannot be checked here.
        assert!(load_with(&["kafka.min_insync_replicas=2"], &[]).is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let problems = load_with(&["batch.max_byte=1"], &[]).unwrap_err();
        assert!(problems[0].contains("did you mean `max_bytes`"), "{problems:?}");
    }

    #[test]
    fn byte_size_parsing() {
        assert_eq!(ByteSize::parse("42").unwrap().0, 42);
        assert_eq!(ByteSize::parse("5MiB").unwrap().0, 5 << 20);
        assert_eq!(ByteSize::parse("512 KiB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("1GB").unwrap().0, 1_000_000_000);
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("5XB").is_err());
    }

    // Issue #9, scenario 20: credentials in URLs stay out of problems, `--check-config` and `Debug`.
    #[test]
    fn credentials_in_urls_never_appear_in_problems_or_debug() {
        for url in ["ftp://elastic:hunter2@es:9200", "http://elastic:hunter2@es:notaport", "elastic:hunter2@es:9200"] {
            let problems = load_with(&[&format!("elasticsearch.urls={url}")], &[]).unwrap_err();
            assert!(!problems.is_empty());
            for p in &problems {
                assert!(!p.contains("hunter2"), "password in problem: {p}");
            }
        }
        let c = load_with(&["elasticsearch.urls=https://elastic:hunter2@es:9200"], &[]).unwrap();
        let debug = format!("{c:?} {:?}", c.elasticsearch);
        assert!(!debug.contains("hunter2"), "password in Debug: {debug}");
        assert_eq!(c.elasticsearch.urls[0].expose(), "https://elastic:hunter2@es:9200");
    }

    // Issue #9, scenario 20: credentials over plain http:// are accepted, with a warning.
    #[test]
    fn credentials_over_plain_http_are_warned_about() {
        let warned = |sets: &[&str]| load_with(sets, &[]).unwrap().warnings();
        assert!(
            warned(&[
                "elasticsearch.urls=https://es:9200",
                "elasticsearch.auth.username=u",
                "elasticsearch.auth.password=p"
            ])
            .is_empty()
        );
        assert!(warned(&["elasticsearch.urls=http://es:9200"]).is_empty());
        let w = warned(&[
            "elasticsearch.urls=http://es:9200",
            "elasticsearch.auth.username=u",
            "elasticsearch.auth.password=p",
        ]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("elasticsearch.urls[0]") && w[0].contains("http://es:9200/") && w[0].contains("plain"),
            "{w:?}"
        );
        assert_eq!(warned(&["elasticsearch.urls=http://es:9200,https://b:1", "elasticsearch.auth.api_key=k"]).len(), 1);
        let w = warned(&["elasticsearch.urls=http://u:hunter2@es:9200"]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!w[0].contains("hunter2"));
    }
}
