//! `kafka.*`: the producer's configuration keys (operator interface in `shared/DESIGN.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_common::config::{Problems, Validate, validate_host_ports};
use sluice_common::kafka::KafkaSecurity;
use sluice_common::schema::DEFAULT_TOPIC;
use sluice_common::secret::Secret;

use crate::config::ByteSize;

/// Placeholder of [`KafkaConfig::topic_template`] replaced by the record's namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// Compression codec of produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard (default: best ratio per CPU second for log lines).
    #[default]
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `kafka.message_format`: the Kafka message contract version the shipper writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// One document per message (contract v1). The default for one release: indexers older than
    /// contract v2 read only this.
    #[default]
    V1,
    /// Several records of one file per message: a frame line, then one line per record (contract
    /// v2, `sluice_common::message`). A third of v1's CPU and bytes into Kafka; needs indexers that
    /// read v2 (upgrade those first).
    V2,
}

/// `kafka.*`: the producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic records are published to (and the fallback of `topic_template`).
    pub topic: String,
    /// Optional per-namespace topic, e.g. `logs.{namespace}`; empty: every record goes to `topic`.
    /// When the templated topic does not exist, records go to `topic` (counted).
    pub topic_template: String,
    /// Codec of produced batches.
    pub compression: Compression,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Largest batch per partition (`batch.size`).
    pub batch_bytes: ByteSize,
    /// Largest message (key + headers + value) the producer sends; must not exceed the topic's
    /// `max.message.bytes`. Longer records have their `message` cut and are tagged `truncated`.
    pub max_message_bytes: ByteSize,
    /// How long librdkafka retries one message (`delivery.timeout.ms`); after that the shipper
    /// produces it again with the same id (it is never skipped).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Contract version written (`v1` | `v2`).
    pub message_format: MessageFormat,
    /// `v2`: most records in one message. A message is also closed when the next record would
    /// pass `max_message_bytes`, when the file or its pod metadata changes, and whenever the read
    /// path pauses (at least every 20 ms while it reads).
    pub records_per_message: usize,
    /// `kafka.security.*`: TLS and SASL (`sluice_common::kafka`, the same shape in every binary).
    pub security: KafkaSecurity,
    /// Further librdkafka properties passed through as they are (`client.id`, …; values are
    /// redacted in `Debug`). Keys that would break the delivery guarantees are refused (see
    /// [`FORBIDDEN_PROPERTIES`]), and so are those `kafka.security.*` sets.
    pub properties: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            topic: DEFAULT_TOPIC.into(),
            topic_template: String::new(),
            compression: Compression::Zstd,
            linger: Duration::from_millis(10),
            batch_bytes: ByteSize::mib(1),
            max_message_bytes: ByteSize(1_000_000),
            delivery_timeout: Duration::from_secs(60),
            message_format: MessageFormat::V1,
            records_per_message: 128,
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// librdkafka properties `kafka.properties` may not set, with why (each would let a record be
/// acknowledged that Kafka does not hold durably, or is set from other keys).
pub const FORBIDDEN_PROPERTIES: &[(&str, &str)] = &[
    ("acks", "must stay `all` (records are checkpointed only once every in-sync replica has them)"),
    ("request.required.acks", "must stay `all` (records are checkpointed only once every in-sync replica has them)"),
    ("enable.idempotence", "must stay `true` (retries must not duplicate or reorder)"),
    ("delivery.report.only.error", "must stay `false` (successful deliveries move the checkpoint)"),
    ("bootstrap.servers", "set `kafka.brokers` instead"),
    ("metadata.broker.list", "set `kafka.brokers` instead"),
    ("compression.type", "set `kafka.compression` instead"),
    ("compression.codec", "set `kafka.compression` instead"),
    ("linger.ms", "set `kafka.linger` instead"),
    ("queue.buffering.max.ms", "set `kafka.linger` instead"),
    ("message.max.bytes", "set `kafka.max_message_bytes` instead"),
    ("delivery.timeout.ms", "set `kafka.delivery_timeout` instead"),
    ("message.timeout.ms", "set `kafka.delivery_timeout` instead"),
    ("transactional.id", "not supported: idempotence already gives ordered, duplicate-free retries"),
];

impl KafkaConfig {
    /// The topic of a record of `namespace`.
    pub fn topic_for<'a>(&'a self, namespace: &str, buf: &'a mut String) -> &'a str {
        if self.topic_template.is_empty() || namespace.is_empty() {
            return &self.topic;
        }
        buf.clear();
        buf.push_str(&self.topic_template.replace(NAMESPACE_PLACEHOLDER, namespace));
        buf
    }
}

/// Kafka topic names: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Validate for KafkaConfig {
    fn validate(&self, p: &mut Problems) {
        validate_host_ports(p, "brokers", &self.brokers);
        if self.topic.is_empty() {
            p.push("topic", "must not be empty");
        } else {
            p.check(valid_topic(&self.topic), "topic", "must be 1-249 characters of [a-zA-Z0-9._-]");
        }
        if !self.topic_template.is_empty() {
            p.check(
                self.topic_template.contains(NAMESPACE_PLACEHOLDER),
                "topic_template",
                "must contain {namespace} (or be empty)",
            );
            p.check(
                valid_topic(&self.topic_template.replace(NAMESPACE_PLACEHOLDER, "ns")),
                "topic_template",
                "must give topic names of [a-zA-Z0-9._-]",
            );
        }
        p.check(self.max_message_bytes.0 >= 4096, "max_message_bytes", "must be at least 4096");
        p.check(self.max_message_bytes.0 <= 1_000_000_000, "max_message_bytes", "must be at most 1000000000");
        p.check(self.batch_bytes.0 >= 1024, "batch_bytes", "must be at least 1024");
        p.check(self.delivery_timeout >= Duration::from_secs(1), "delivery_timeout", "must be at least 1s");
        p.check(self.linger <= Duration::from_secs(5), "linger", "must be at most 5s");
        p.check((1..=10_000).contains(&self.records_per_message), "records_per_message", "must be between 1 and 10000");
        p.section("security", &self.security);
        KafkaSecurity::validate_properties(p, self.properties.keys());
        for (key, value) in &self.properties {
            let k = key.trim();
            let value = value.expose();
            if let Some((_, why)) = FORBIDDEN_PROPERTIES.iter().find(|(f, _)| *f == k) {
                let allowed = match k {
                    "acks" | "request.required.acks" => matches!(value.trim(), "all" | "-1"),
                    "enable.idempotence" => value.trim() == "true",
                    "delivery.report.only.error" => value.trim() == "false",
                    _ => false,
                };
                if !allowed {
                    p.push(&format!("properties.{key}"), format!("refused: {why}"));
                }
            }
            if k.starts_with("dr_") || k.ends_with("_cb") {
                p.push(&format!("properties.{key}"), "refused: callbacks are set by the shipper");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &KafkaConfig) -> Vec<String> {
        let mut p = Problems::default();
        c.validate(&mut p);
        p.into_vec().into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn guarantee_breaking_properties_are_refused() {
        let mut c = KafkaConfig::default();
        c.properties.insert("acks".into(), Secret::new("0"));
        c.properties.insert("enable.idempotence".into(), Secret::new("false"));
        c.properties.insert("client.id".into(), Secret::new("x"));
        c.properties.insert("request.required.acks".into(), Secret::new("all"));
        let p = problems(&c);
        assert!(p.iter().any(|p| p.starts_with("properties.acks: refused")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("properties.enable.idempotence: refused")), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("client.id") || p.contains("request.required")), "{p:?}");
    }

    #[test]
    fn secrets_never_appear_in_debug() {
        let mut c = KafkaConfig::default();
        c.properties.insert("sasl.oauthbearer.client.secret".into(), Secret::new("prop-secret-1"));
        c.security.sasl.password = Secret::new("sasl-secret-2");
        c.security.tls.key_password = Secret::new("key-secret-3");
        let debug = format!("{c:?}");
        for secret in ["prop-secret-1", "sasl-secret-2", "key-secret-3"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        let p = problems(&c);
        assert!(p.iter().any(|p| p.starts_with("security.sasl.password: needs protocol sasl")), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("secret")), "{p:?}");
    }

    #[test]
    fn topic_template_routes_by_namespace() {
        let mut c = KafkaConfig { topic_template: "logs.{namespace}".into(), ..Default::default() };
        let mut buf = String::new();
        assert_eq!(c.topic_for("shop", &mut buf), "logs.shop");
        assert_eq!(c.topic_for("", &mut buf), "sluice.logs");
        assert!(problems(&c).is_empty());
        c.topic_template = "logs".into();
        assert!(problems(&c).iter().any(|p| p.starts_with("topic_template")));
        c.topic_template = "logs/{namespace}".into();
        assert!(problems(&c).iter().any(|p| p.starts_with("topic_template")));
    }
}
