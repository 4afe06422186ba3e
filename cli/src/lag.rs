//! Kafka consumer-group lag of the indexer, read from outside the group: topic metadata, the
//! group's committed offsets (OffsetFetch, without joining the group) and each partition's
//! watermarks; two samples give the trend and the time to drain.

use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use sluice_common::config::Problems;
use sluice_common::kafka::{
    KafkaSasl, KafkaSecurity, KafkaTls, SECURITY_PROPERTIES, SaslMechanism, SecurityCause, SecurityProtocol,
    SecurityWatch, WatchContext, classify,
};
use sluice_common::secret::Secret;

/// Errors reading the lag.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    /// A bad `--kafka-property`.
    #[error("--kafka-property `{0}`: expected key=value")]
    Property(String),
    /// librdkafka failed.
    #[error("Kafka at {brokers}: {what}: {source}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// What was asked.
        what: String,
        /// The cause (boxed: librdkafka's error is large).
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The security flags are incomplete or refused.
    #[error("{0}")]
    Security(String),
    /// The brokers refused for a security reason (TLS, SASL, ACL): the message every Sluice Kafka
    /// client gives for it, naming the cause and what to check.
    #[error("Kafka at {brokers}: {message}")]
    Refused {
        /// Bootstrap servers.
        brokers: String,
        /// The cause and what to check.
        message: String,
    },
    /// The topic does not exist.
    #[error("Kafka at {brokers}: topic `{topic}` does not exist (set --topic to the indexer's kafka.topic)")]
    NoTopic {
        /// Bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
    },
}

/// Kafka flags of `sluice top --kafka`, mirroring the indexer's `kafka.*` keys.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers (`kafka.brokers`).
    #[arg(long, env = "SLUICE_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The records topic (`kafka.topic`).
    #[arg(long, env = "SLUICE_KAFKA__TOPIC", default_value = sluice_common::schema::DEFAULT_TOPIC)]
    pub topic: String,
    /// The indexer's consumer group (`kafka.group_id`).
    #[arg(long, env = "SLUICE_KAFKA__GROUP_ID", default_value = "sluice-indexer")]
    pub group: String,
    /// Extra librdkafka property, `key=value` (repeatable; not the security ones: those are the
    /// `--kafka-security-*` flags, as in every other Sluice client).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// TLS and SASL, the same settings and environment variables as the indexer's `kafka.security.*`.
    #[command(flatten)]
    pub security: KafkaSecurityArgs,
    /// Timeout of each Kafka request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub kafka_timeout: Duration,
}

/// `--kafka-security-*`: the indexer's `kafka.security.*` keys as flags and environment variables, so
/// an operator with the indexer's environment (or its mounted secrets) reads the lag as it does.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaSecurityArgs {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (`kafka.security.protocol`).
    #[arg(long = "kafka-security-protocol", env = "SLUICE_KAFKA__SECURITY__PROTOCOL", value_parser = protocol)]
    pub protocol: Option<SecurityProtocol>,
    /// PEM CA certificate(s) of the brokers (`kafka.security.tls.ca_file`).
    #[arg(long = "kafka-ca-file", env = "SLUICE_KAFKA__SECURITY__TLS__CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (`kafka.security.tls.cert_file`).
    #[arg(long = "kafka-cert-file", env = "SLUICE_KAFKA__SECURITY__TLS__CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (`kafka.security.tls.key_file`).
    #[arg(long = "kafka-key-file", env = "SLUICE_KAFKA__SECURITY__TLS__KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Do not verify the brokers' certificates — tests only, warns (`kafka.security.tls.verify: false`).
    #[arg(long = "kafka-tls-insecure")]
    pub insecure: bool,
    /// `plain`, `scram-sha-256` or `scram-sha-512` (`kafka.security.sasl.mechanism`).
    #[arg(long = "kafka-sasl-mechanism", env = "SLUICE_KAFKA__SECURITY__SASL__MECHANISM", value_parser = mechanism)]
    pub mechanism: Option<SaslMechanism>,
    /// SASL user (`kafka.security.sasl.username`).
    #[arg(long = "kafka-sasl-username", env = "SLUICE_KAFKA__SECURITY__SASL__USERNAME")]
    pub username: Option<String>,
    /// SASL password (`kafka.security.sasl.password`); prefer the variable or the file.
    #[arg(long = "kafka-sasl-password", env = "SLUICE_KAFKA__SECURITY__SASL__PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File holding the SASL password (`kafka.security.sasl.password_file`).
    #[arg(long = "kafka-sasl-password-file", env = "SLUICE_KAFKA__SECURITY__SASL__PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

fn protocol(s: &str) -> Result<SecurityProtocol, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}`: expected plaintext, ssl, sasl_plaintext or sasl_ssl"))
}

fn mechanism(s: &str) -> Result<SaslMechanism, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}`: expected plain, scram-sha-256 or scram-sha-512"))
}

impl KafkaSecurityArgs {
    /// The common `kafka.security.*` settings these flags stand for, checked like the indexer's.
    pub fn settings(&self) -> Result<KafkaSecurity, LagError> {
        let s = KafkaSecurity {
            protocol: self.protocol.unwrap_or_default(),
            tls: KafkaTls {
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                verify: !self.insecure,
                ..KafkaTls::default()
            },
            sasl: KafkaSasl {
                mechanism: self.mechanism,
                username: self.username.clone().unwrap_or_default(),
                password: Secret::new(self.password.clone().unwrap_or_default()),
                password_file: self.password_file.clone(),
                ..KafkaSasl::default()
            },
        };
        let mut problems = Problems::default();
        problems.section("kafka.security", &s);
        let problems = problems.into_vec();
        if problems.is_empty() {
            return Ok(s);
        }
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(LagError::Security(format!("Kafka security flags: {}", list.join("; "))))
    }
}

/// One partition's offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed; the indexer starts at the earliest).
    pub committed: Option<i64>,
    /// Low watermark (earliest offset kept).
    pub low: i64,
    /// High watermark (next offset to be written).
    pub high: i64,
    /// Records not yet consumed: `high − committed` (`high − low` without a commit).
    pub lag: i64,
}

/// One sample of the group's lag.
#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Per partition, by number.
    pub partitions: Vec<PartitionLag>,
    /// Sum of the partitions' lag.
    pub total: i64,
    /// When it was taken.
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// The lag reader's client context: [`WatchContext`], and librdkafka's debug lines (`debug=cgrp`)
/// that report an authorization refusal — the only place a missing group `Describe` ACL is named
/// (the group's coordinator cannot be looked up, so OffsetFetch just times out). Other debug lines
/// are dropped (the CLI keeps its output for the operator).
pub struct LagContext(WatchContext);

impl ClientContext for LagContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            // e.g. `FindCoordinator response error: GROUP_AUTHORIZATION_FAILED: …`
            if message.contains("AUTHORIZATION_FAILED") || classify(None, message) == Some(SecurityCause::Authorization)
            {
                self.0.0.observe(Some(RDKafkaErrorCode::GroupAuthorizationFailed), message);
            }
            return;
        }
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ConsumerContext for LagContext {}

/// Reads lag samples for one group and topic.
pub struct LagReader {
    consumer: BaseConsumer<LagContext>,
    args: KafkaArgs,
    /// Security failures librdkafka reported (logged or returned), as one clear message.
    watch: Arc<SecurityWatch>,
}

impl LagReader {
    /// A client for `args`; it never subscribes, so it never joins (or disturbs) the group.
    pub fn new(args: &KafkaArgs) -> Result<LagReader, LagError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("group.id", &args.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        for p in &args.properties {
            let (k, v) = p.split_once('=').ok_or_else(|| LagError::Property(p.clone()))?;
            if SECURITY_PROPERTIES.contains(&k.trim()) {
                return Err(LagError::Security(format!(
                    "--kafka-property `{}` refused: use the --kafka-security-* flags (or SLUICE_KAFKA__SECURITY__* variables)",
                    k.trim()
                )));
            }
            config.set(k.trim(), v.trim());
        }
        let security = args.security.settings()?;
        for warning in security.warnings() {
            eprintln!("warning: {warning}");
        }
        security.apply(&mut config).map_err(|e| LagError::Security(format!("kafka security flags: {e}")))?;
        // The coordinator lookup's refusal (no Describe on the group) reaches OffsetFetch only as a
        // timeout; librdkafka's consumer-group debug lines name it (see `LagContext`).
        config.set("debug", "cgrp");
        // librdkafka's log level follows the `log` crate's, which the CLI does not set up (off):
        // without this, none of the lines `LagContext` reads would be emitted.
        config.set_log_level(RDKafkaLogLevel::Debug);
        let watch = Arc::new(SecurityWatch::new("sluice top --kafka", &security));
        let consumer =
            config.create_with_context(LagContext(WatchContext(watch.clone()))).map_err(|source| LagError::Kafka {
                brokers: args.brokers.clone(),
                what: "creating the client".into(),
                source: Box::new(source),
            })?;
        Ok(LagReader { consumer, args: args.clone(), watch })
    }

    /// One sample (blocking: call from a blocking thread).
    pub fn sample(&self) -> Result<LagSample, LagError> {
        let (brokers, topic, timeout) = (&self.args.brokers, &self.args.topic, self.args.kafka_timeout);
        let err = |what: &str, source: KafkaError| {
            // A failed handshake or login shows up as a timeout here; librdkafka logged its cause
            // (the watch saw it) or queued it as an error event, served by a poll. An ACL refusal
            // may also come back as the error itself.
            // librdkafka queues its log lines and errors (a refused coordinator lookup among them)
            // for the next polls; each poll serves one event: serve what is queued.
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                if let Some(Err(e)) = self.consumer.poll(Duration::from_millis(20)) {
                    self.watch.observe_error(&e, "");
                }
            }
            let security = self
                .watch
                .failure()
                .or_else(|| self.watch.observe_error(&source, "").then(|| self.watch.failure()).flatten());
            match security {
                Some(message) => LagError::Refused { brokers: brokers.clone(), message: format!("{what}: {message}") },
                None => LagError::Kafka { brokers: brokers.clone(), what: what.into(), source: Box::new(source) },
            }
        };
        let metadata = self.consumer.fetch_metadata(Some(topic), timeout).map_err(|e| err("reading metadata", e))?;
        self.watch.connected();
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(LagError::NoTopic { brokers: brokers.clone(), topic: topic.clone() });
        };
        if let Some(code) = t.error().map(RDKafkaErrorCode::from)
            && self.watch.observe(Some(code), &format!("{code} (topic `{topic}`)"))
        {
            let message = self.watch.failure().unwrap_or_default();
            return Err(LagError::Refused {
                brokers: brokers.clone(),
                message: format!("reading metadata: {message}"),
            });
        }
        if t.partitions().is_empty() {
            return Err(LagError::NoTopic { brokers: brokers.clone(), topic: topic.clone() });
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        let mut tpl = TopicPartitionList::new();
        for &p in &ids {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| err("reading the group's committed offsets", e))?;
        let mut partitions = Vec::with_capacity(ids.len());
        for &p in &ids {
            let (low, high) =
                self.consumer.fetch_watermarks(topic, p, timeout).map_err(|e| err("reading watermarks", e))?;
            let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let lag = (high - committed.unwrap_or(low).max(low)).max(0);
            partitions.push(PartitionLag { partition: p, committed, low, high, lag });
        }
        let total = partitions.iter().map(|p| p.lag).sum();
        Ok(LagSample {
            topic: topic.clone(),
            group: self.args.group.clone(),
            partitions,
            total,
            at: Some(Instant::now()),
        })
    }
}

/// Direction of the lag between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// More records waiting than before.
    Growing,
    /// Fewer records waiting than before.
    Draining,
    /// The same.
    Steady,
}

/// The change between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// Lag change per second (positive: growing).
    pub lag_per_s: f64,
    /// Records written to the topic per second.
    pub produced_per_s: f64,
    /// Records committed by the group per second.
    pub consumed_per_s: f64,
    /// Growing, draining or steady.
    pub direction: Direction,
    /// Seconds until the lag is zero at the current net rate (only while draining).
    pub drain_seconds: Option<f64>,
    /// Per partition: lag change per second, in partition order.
    pub partitions: Vec<(i32, f64, Direction)>,
}

fn direction(delta: f64) -> Direction {
    if delta > 0.0 {
        Direction::Growing
    } else if delta < 0.0 {
        Direction::Draining
    } else {
        Direction::Steady
    }
}

/// The trend from `before` to `after` (`seconds` apart).
pub fn trend(before: &LagSample, after: &LagSample, seconds: f64) -> Trend {
    let seconds = seconds.max(1e-3);
    let mut produced = 0i64;
    let mut consumed = 0i64;
    let mut partitions = Vec::new();
    for p in &after.partitions {
        let Some(b) = before.partitions.iter().find(|b| b.partition == p.partition) else { continue };
        produced += p.high - b.high;
        consumed += p.committed.unwrap_or(p.low) - b.committed.unwrap_or(b.low);
        let d = (p.lag - b.lag) as f64;
        partitions.push((p.partition, d / seconds, direction(d)));
    }
    let delta = (after.total - before.total) as f64;
    let lag_per_s = delta / seconds;
    let drain_seconds = (delta < 0.0 && after.total > 0).then(|| after.total as f64 / -lag_per_s);
    Trend {
        lag_per_s,
        produced_per_s: produced as f64 / seconds,
        consumed_per_s: consumed as f64 / seconds,
        direction: direction(delta),
        drain_seconds,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(parts: &[(i32, Option<i64>, i64)]) -> LagSample {
        let partitions: Vec<PartitionLag> = parts
            .iter()
            .map(|&(partition, committed, high)| PartitionLag {
                partition,
                committed,
                low: 0,
                high,
                lag: high - committed.unwrap_or(0),
            })
            .collect();
        let total = partitions.iter().map(|p| p.lag).sum();
        LagSample { topic: "t".into(), group: "g".into(), partitions, total, at: None }
    }

    #[test]
    fn trend_and_time_to_drain() {
        let a = sample(&[(0, Some(100), 1000), (1, None, 50)]);
        let b = sample(&[(0, Some(400), 1100), (1, None, 70)]);
        let t = trend(&a, &b, 2.0);
        // lag 950 → 770: draining 90/s, 770 left → 8.6 s.
        assert_eq!(t.direction, Direction::Draining);
        assert_eq!(t.lag_per_s, -90.0);
        assert_eq!(t.produced_per_s, 60.0);
        assert_eq!(t.consumed_per_s, 150.0);
        assert!((t.drain_seconds.unwrap() - 770.0 / 90.0).abs() < 1e-9);
        assert_eq!(t.partitions, vec![(0, -100.0, Direction::Draining), (1, 10.0, Direction::Growing)]);
        let g = trend(&b, &a, 1.0);
        assert_eq!((g.direction, g.drain_seconds), (Direction::Growing, None));
        let s = trend(&a, &a, 1.0);
        assert_eq!((s.direction, s.drain_seconds), (Direction::Steady, None));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> KafkaArgs {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("top").chain(args.iter().copied())).expect("flags parse").kafka
    }

    #[test]
    fn security_flags_are_the_indexers_kafka_security_settings() {
        // Validation reads the files it is given, like the indexer's.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let args = parse(&[
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-ca-file",
            ca.to_str().unwrap(),
            "--kafka-sasl-mechanism",
            "scram-sha-256",
            "--kafka-sasl-username",
            "viewer",
            "--kafka-sasl-password",
            "pw",
        ]);
        let s = args.security.settings().expect("complete settings");
        assert_eq!(s.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(s.tls.ca_file.as_deref(), Some(ca.as_path()));
        assert!(s.tls.verify);
        assert_eq!(s.sasl.mechanism, Some(SaslMechanism::ScramSha256));
        assert_eq!((s.sasl.username.as_str(), s.sasl.password.expose()), ("viewer", "pw"));
        let mut config = ClientConfig::new();
        s.apply(&mut config).unwrap();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("ssl.ca.location"), ca.to_str());
        // Without flags: plaintext, as before.
        assert_eq!(parse(&[]).security.settings().unwrap().protocol, SecurityProtocol::Plaintext);
    }

    #[test]
    fn incomplete_or_bypassing_security_settings_are_refused_with_the_key() {
        let err = parse(&["--kafka-security-protocol", "sasl_ssl"]).security.settings().unwrap_err().to_string();
        assert!(err.contains("kafka.security.sasl.username"), "{err}");
        assert!(err.contains("kafka.security.sasl.password"), "{err}");
        let bad = Cli::try_parse_from_helper(&["--kafka-security-protocol", "tls"]);
        assert!(bad.contains("expected plaintext, ssl, sasl_plaintext or sasl_ssl"), "{bad}");
        let mut args = parse(&[]);
        args.properties = vec!["sasl.password=x".into()];
        let Err(err) = LagReader::new(&args) else {
            panic!("a security property through --kafka-property was accepted")
        };
        assert!(err.to_string().contains("--kafka-property `sasl.password` refused"), "{err}");
    }

    impl Cli {
        fn try_parse_from_helper(args: &[&str]) -> String {
            use clap::Parser;
            Cli::try_parse_from(std::iter::once("top").chain(args.iter().copied())).unwrap_err().to_string()
        }
    }
}
