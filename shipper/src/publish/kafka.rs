//! The Kafka publisher: a [`Sink`] on an idempotent `rdkafka` producer (`acks=all`).
//!
//! - `submit` hands the record to librdkafka (never blocks); the key is `<pod uid>/<container>`, the
//!   headers are the contract's `sluice.id`, `sluice.ts`, `sluice.ns`, `sluice.v`.
//! - A poller thread serves the producer's events; each successful delivery report hands the record's
//!   [`AckToken`] to the [`Acker`] (in batches, any order). Only these move the checkpoint.
//! - A failed delivery (timeout after `kafka.delivery_timeout`, message too large, unknown topic,
//!   purged by a producer rebuild, …) is copied out of the report and produced again with the same
//!   id and headers after a short backoff — never skipped, never acknowledged. A fatal producer error
//!   (idempotence state lost) rebuilds the producer; what the old one held comes back as failed
//!   deliveries and is produced again. So does a producer that delivered nothing for twice
//!   `kafka.delivery_timeout` while records waited (a client seen stuck after a broker restart while
//!   a fresh client of the same broker worked): the rebuild costs re-sends under the same ids at
//!   worst, which the indexer absorbs as 409s.
//! - Memory: the read path stops reading above `limits.inflight_bytes` of unacknowledged records;
//!   librdkafka's own queue is capped just above that (`queue.buffering.max.kbytes`), and failed
//!   records waiting for their retry count against the same limit (they are not acknowledged).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use sluice_common::kafka::{SecurityError, SecurityWatch, log_through};
use sluice_common::message::{self, Encoder};
use sluice_common::schema::{DocumentFrame, header};

use super::config::{KafkaConfig, MessageFormat};
use super::metrics::PublishMetrics;
use super::truncate::truncate_document;
use crate::record::Record;
use crate::sink::{AckToken, Acker, Sink, SinkError};

/// Bytes reserved for the record batch framing and headers beyond their raw lengths.
const MESSAGE_OVERHEAD: usize = 256;
/// Acks forwarded to the pipeline at once from the delivery callback. Small enough that the end of
/// a burst of delivery reports is not held back: a contract-v2 message acknowledges up to
/// `kafka.records_per_message` records at once, and acks left in the batch after a burst wait for
/// the next report or the poller's next round (up to [`POLL_PERIOD`]) while the read path, its
/// in-flight window full, waits for them (measured: 4096 here held the v2 shipper to 350 k lines/s).
const ACK_BATCH: usize = 256;
/// Longest call of the poller into librdkafka. `BaseProducer::poll` serves events until its deadline
/// and spins through the last millisecond (its timeout rounds down to 0 ms), so the period is long
/// and acks are forwarded from the delivery callback itself, every [`ACK_EVERY`].
const POLL_PERIOD: Duration = Duration::from_millis(100);
/// Longest time an ack waits in the callback's batch while reports arrive.
const ACK_EVERY: Duration = Duration::from_millis(2);
/// First and longest backoff before a failed record is produced again.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long a templated topic found missing is not tried again (records go to `kafka.topic`).
const MISSING_TOPIC_TTL: Duration = Duration::from_secs(60);
/// Minimum interval between two log lines about the same kind of producer error.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the publisher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// librdkafka refused the configuration.
    #[error("creating the Kafka producer: {0}")]
    Create(#[from] KafkaError),
    /// A `kafka.security.*_file` secret could not be read.
    #[error("kafka.security: {0}")]
    Security(#[from] SecurityError),
}

/// Per-message state carried through librdkafka to the delivery report.
#[derive(Debug)]
struct Opaque {
    /// The records of the message, in the order of its record lines (one for contract v1).
    tokens: Vec<AckToken>,
    attempt: u32,
    bytes: usize,
}

/// A message whose delivery failed, waiting to be produced again.
#[derive(Debug)]
struct Retry {
    tokens: Vec<AckToken>,
    attempt: u32,
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    code: Option<RDKafkaErrorCode>,
    not_before: Instant,
}

/// Acks collected by the delivery callback, forwarded in batches.
struct AckBatch {
    tokens: Vec<AckToken>,
    since: Instant,
    /// The last successful delivery, (re)build of the producer, or moment nothing was waiting
    /// (the stall clock; kept here so a delivery takes one lock and one clock read).
    progress: Instant,
}

impl Default for AckBatch {
    fn default() -> Self {
        AckBatch { tokens: Vec::new(), since: Instant::now(), progress: Instant::now() }
    }
}

/// State shared by the sink, the delivery callback and the poller.
struct Shared {
    acker: Acker,
    acks: Mutex<AckBatch>,
    failed: Mutex<Vec<Retry>>,
    metrics: PublishMetrics,
    /// Bytes handed to librdkafka and not yet reported.
    queued: AtomicI64,
    logged: Mutex<HashMap<String, Instant>>,
    /// Authentication, TLS and ACL failures: logged once, shown on `/readyz` (through [`Probe`]).
    security: SecurityWatch,
    /// The current producer, for [`Probe`]s made before a rebuild.
    current: Mutex<Option<Arc<BaseProducer<Context>>>>,
}

impl Shared {
    fn forward_acks(&self) {
        let acks = std::mem::take(&mut self.acks.lock().expect("acks lock").tokens);
        self.acker.ack_all(acks);
    }

    /// Logs `message` at most once per [`LOG_EVERY`] per `kind`.
    fn log_limited(&self, kind: &str, message: &str) {
        let now = Instant::now();
        let mut logged = self.logged.lock().expect("log lock");
        if logged.get(kind).is_some_and(|t| now.duration_since(*t) < LOG_EVERY) {
            return;
        }
        logged.insert(kind.to_owned(), now);
        tracing::warn!(kind, "kafka: {message}");
    }
}

/// The producer context: routes delivery reports and client errors.
struct Context(Arc<Shared>);

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                if !self.0.security.observe(None, message) {
                    self.0.log_limited(fac, message)
                }
            }
            _ => log_through(&self.0.security, level, fac, message),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        self.0.metrics.client_errors.get_or_create(&label(code)).inc();
        if !self.0.security.observe_error(&error, reason) {
            self.0.log_limited(&format!("{code:?}"), &format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Opaque>) {
        let shared = &self.0;
        shared.queued.fetch_sub(opaque.bytes as i64, Ordering::Relaxed);
        match result {
            Ok(_) => {
                shared.security.clear();
                shared.metrics.delivered.inc_by(opaque.tokens.len() as u64);
                let mut acks = shared.acks.lock().expect("acks lock");
                acks.tokens.extend_from_slice(&opaque.tokens);
                let now = Instant::now();
                acks.progress = now;
                if acks.tokens.len() >= ACK_BATCH || now.duration_since(acks.since) >= ACK_EVERY {
                    acks.since = now;
                    let batch = std::mem::take(&mut acks.tokens);
                    drop(acks);
                    shared.acker.ack_all(batch);
                }
            }
            Err((err, msg)) => {
                let code = err.rdkafka_error_code();
                shared.metrics.delivery_errors.get_or_create(&label(code)).inc();
                if !shared.security.observe_error(err, &format!("producing to {}", msg.topic())) {
                    shared.log_limited(
                        &format!("delivery-{code:?}"),
                        &format!("delivery to {} failed ({err}); producing it again with the same id", msg.topic()),
                    );
                }
                let headers = msg
                    .headers()
                    .map(|h| {
                        h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
                    })
                    .unwrap_or_default();
                let attempt = opaque.attempt + 1;
                shared.failed.lock().expect("failed lock").push(Retry {
                    tokens: opaque.tokens,
                    attempt,
                    topic: msg.topic().to_owned(),
                    key: msg.key().map(<[u8]>::to_vec).unwrap_or_default(),
                    value: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                    code,
                    not_before: Instant::now() + backoff(attempt),
                });
            }
        }
    }
}

/// Metric label of an error code.
fn label(code: Option<RDKafkaErrorCode>) -> super::metrics::Kind {
    use RDKafkaErrorCode as C;
    let kind = match code {
        Some(C::MessageTimedOut) => "timeout",
        Some(C::MessageSizeTooLarge) => "message_too_large",
        Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition) => "unknown_topic",
        Some(C::QueueFull) => "queue_full",
        Some(C::Fatal) => "fatal",
        Some(C::PurgeQueue | C::PurgeInflight) => "purged",
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => "authorization",
        Some(C::AllBrokersDown | C::BrokerTransportFailure) => "transport",
        Some(C::Authentication | C::SaslAuthenticationFailed) => "authentication",
        Some(C::SSL) => "ssl",
        _ => "other",
    };
    super::metrics::Kind { kind }
}

fn backoff(attempt: u32) -> Duration {
    let (first, max) = RETRY_BACKOFF;
    first.saturating_mul(1 << attempt.min(16).saturating_sub(1)).min(max)
}

/// The running producer and its poller thread.
struct Running {
    producer: Arc<BaseProducer<Context>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Running {
    fn start(config: &ClientConfig, shared: &Arc<Shared>) -> Result<Self, PublishError> {
        let producer: Arc<BaseProducer<Context>> = Arc::new(config.create_with_context(Context(shared.clone()))?);
        *shared.current.lock().expect("current lock") = Some(producer.clone());
        shared.acks.lock().expect("acks lock").progress = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop, shared) = (producer.clone(), stop.clone(), shared.clone());
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_PERIOD);
                        shared.forward_acks();
                    }
                })
                .expect("spawning the kafka poller")
        };
        Ok(Running { producer, stop, poller: Some(poller) })
    }

    /// Stops the poller, then drops the producer: librdkafka purges what it still holds, and those
    /// records come back as failed deliveries (to be produced again by a new producer).
    fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        // Explicitly, since a `Probe` may keep the producer alive: what librdkafka still holds comes
        // back as failed (purged) deliveries, to be produced again.
        self.producer.purge(PurgeConfig::default().queue().inflight());
        self.producer.poll(Duration::from_millis(200));
    }
}

/// A cheap handle to ask the brokers for metadata (readiness, `--check-connectivity`), through the
/// producer in use (it follows rebuilds).
#[derive(Clone)]
pub struct Probe {
    shared: Arc<Shared>,
    topic: String,
}

impl Probe {
    /// One metadata request for the configured topic; `Ok(partitions)` when a broker answered.
    /// A security failure seen meanwhile (wrong password, untrusted certificate, missing ACL)
    /// is the error, with its cause.
    pub fn check(&self, timeout: Duration) -> Result<usize, String> {
        let producer = self.shared.current.lock().expect("current lock").clone().ok_or("no producer")?;
        let security = &self.shared.security;
        let md = producer.client().fetch_metadata(Some(&self.topic), timeout);
        if let Ok(md) = &md
            && md.topics().first().is_some_and(|t| t.error().is_none())
        {
            security.connected();
        }
        if let Some(failure) = security.failure() {
            return Err(failure);
        }
        let md = md.map_err(|e| e.to_string())?;
        let topic = md.topics().first().ok_or("no topic in the metadata response")?;
        if let Some(err) = topic.error() {
            let code = RDKafkaErrorCode::from(err);
            if security.observe(Some(code), &format!("metadata of topic {}: {code}", self.topic)) {
                return Err(security.failure().unwrap_or_default());
            }
            return Err(format!("topic {}: {code:?}", self.topic));
        }
        Ok(topic.partitions().len())
    }
}

/// `output: kafka` (see the module documentation).
pub struct KafkaSink {
    cfg: KafkaConfig,
    client_config: ClientConfig,
    shared: Arc<Shared>,
    running: Option<Running>,
    retries: VecDeque<Retry>,
    topic_buf: String,
    missing_topics: HashMap<String, Instant>,
    namespaces: HashMap<String, (Counter, Counter)>,
    max_value: usize,
    /// Contract v2: the message being filled per key (see [`OpenMessage`]). Looked up for every
    /// record: hashbrown's default hasher (foldhash), a sixth of SipHash's cost measured per record.
    open: hashbrown::HashMap<String, OpenMessage>,
    /// A record line rebuilt as a document (a record too large for a v2 message).
    scratch: Vec<u8>,
}

/// Contract v2: a message being filled with records of one key (one file and pod metadata).
/// Its records are not acknowledged, so they count against `limits.inflight_bytes` like queued
/// ones; it is produced when full, when the next record does not belong to it, and on every
/// [`Sink::flush`] (the read path calls it at least every 20 ms while reading, and when it pauses).
#[derive(Debug)]
struct OpenMessage {
    topic: String,
    namespace: String,
    /// `sluice.ts`: the first record's timestamp.
    ts: String,
    value: Encoder,
    tokens: Vec<AckToken>,
    /// [`Record::frame_serial`] of the frame last seen to be this message's (skips comparing lines).
    frame_serial: u64,
}

impl KafkaSink {
    /// Builds the producer. `inflight_limit` is `limits.inflight_bytes` (sizes librdkafka's queue).
    pub fn new(
        cfg: &KafkaConfig,
        inflight_limit: usize,
        acker: Acker,
        metrics: PublishMetrics,
    ) -> Result<Self, PublishError> {
        let client_config = client_config(cfg, inflight_limit)?;
        let shared = Arc::new(Shared {
            security: SecurityWatch::new("shipper producer", &cfg.security),
            acker,
            acks: Mutex::default(),
            failed: Mutex::default(),
            metrics,
            queued: AtomicI64::new(0),
            logged: Mutex::default(),
            current: Mutex::default(),
        });
        let running = Running::start(&client_config, &shared)?;
        Ok(KafkaSink {
            cfg: cfg.clone(),
            client_config,
            shared,
            running: Some(running),
            retries: VecDeque::new(),
            topic_buf: String::new(),
            missing_topics: HashMap::new(),
            namespaces: HashMap::new(),
            max_value: cfg.max_message_bytes.as_usize(),
            open: hashbrown::HashMap::new(),
            scratch: Vec::new(),
        })
    }

    /// A metadata probe on the current producer.
    pub fn probe(&self) -> Probe {
        Probe { shared: self.shared.clone(), topic: self.cfg.topic.clone() }
    }

    fn producer(&self) -> &Arc<BaseProducer<Context>> {
        &self.running.as_ref().expect("producer running").producer
    }

    /// Writes the topic of a record of `namespace` into `out` (no allocation without a template).
    fn select_topic(&self, namespace: &str, out: &mut String) {
        out.clear();
        let mut buf = String::new();
        let topic = self.cfg.topic_for(namespace, &mut buf);
        if self.missing_topics.is_empty() {
            out.push_str(topic);
            return;
        }
        match self.missing_topics.get(topic) {
            Some(t) if t.elapsed() < MISSING_TOPIC_TTL => {
                self.shared.metrics.topic_fallbacks.inc();
                out.push_str(&self.cfg.topic);
            }
            _ => out.push_str(topic),
        }
    }

    fn count_namespace(&mut self, namespace: &str, bytes: usize) {
        let (records, b) = match self.namespaces.get(namespace) {
            Some(c) => c,
            None => {
                let m = &self.shared.metrics;
                let counters = (m.published_records(namespace), m.published_bytes(namespace));
                self.namespaces.entry(namespace.to_owned()).or_insert(counters)
            }
        };
        records.inc();
        b.inc_by(bytes as u64);
    }

    /// Produces one message; on a local refusal (queue full, …) keeps it for a retry.
    fn produce(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: OwnedHeaders,
        tokens: Vec<AckToken>,
        attempt: u32,
    ) {
        let bytes = value.len() + key.len();
        let opaque = Box::new(Opaque { tokens, attempt, bytes });
        let record = BaseRecord::with_opaque_to(topic, opaque).key(key).payload(value).headers(headers);
        self.shared.queued.fetch_add(bytes as i64, Ordering::Relaxed);
        if let Err((err, record)) = self.producer().send(record) {
            self.shared.queued.fetch_sub(bytes as i64, Ordering::Relaxed);
            let code = err.rdkafka_error_code();
            self.shared.metrics.delivery_errors.get_or_create(&label(code)).inc();
            if code != Some(RDKafkaErrorCode::QueueFull)
                && !self.shared.security.observe_error(&err, &format!("producing to {topic}"))
            {
                self.shared.log_limited(&format!("send-{code:?}"), &format!("producing to {topic} failed: {err}"));
            }
            let headers = record
                .headers
                .as_ref()
                .map(|h| {
                    h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
                })
                .unwrap_or_default();
            let Opaque { tokens, attempt, .. } = *record.delivery_opaque;
            let attempt = attempt + 1;
            self.retries.push_back(Retry {
                tokens,
                attempt,
                topic: topic.to_owned(),
                key: key.to_vec(),
                value: value.to_vec(),
                headers,
                code,
                not_before: Instant::now() + backoff(attempt),
            });
        }
    }

    /// Produces failed records again whose backoff has passed.
    fn retry_due(&mut self) {
        self.retries.extend(self.shared.failed.lock().expect("failed lock").drain(..));
        let now = Instant::now();
        let mut waiting = VecDeque::new();
        while let Some(mut r) = self.retries.pop_front() {
            if r.not_before > now {
                waiting.push_back(r);
                continue;
            }
            self.shared.metrics.retries.inc();
            match r.code {
                Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
                    if r.topic != self.cfg.topic =>
                {
                    tracing::warn!(topic = %r.topic, fallback = %self.cfg.topic, "templated topic missing; using the fallback topic");
                    self.missing_topics.insert(std::mem::replace(&mut r.topic, self.cfg.topic.clone()), now);
                    self.shared.metrics.topic_fallbacks.inc();
                }
                Some(RDKafkaErrorCode::MessageSizeTooLarge) if is_v2(&r.headers) => {
                    // The broker's limit is below ours: split the message (a single record goes
                    // on as a v1 message, cut like any other).
                    match split_v2(r) {
                        Ok(parts) => {
                            self.retries.extend(parts.into_iter().map(|p| Retry { not_before: now, code: None, ..p }));
                            continue;
                        }
                        Err((e, back)) => {
                            tracing::error!(error = %e, "cannot split a message the broker refused as too large");
                            r = *back;
                        }
                    }
                }
                Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    // The broker's limit is below ours: cut the message further.
                    let target = (r.value.len() * 3 / 4).max(4096);
                    match truncate_document(&r.value, target) {
                        Ok(v) => {
                            self.shared.metrics.truncated.inc();
                            r.value = v;
                        }
                        Err(e) => tracing::error!(error = %e, "cannot shrink a record the broker refused as too large"),
                    }
                }
                _ => {}
            }
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
            }
            let (topic, key, value) =
                (std::mem::take(&mut r.topic), std::mem::take(&mut r.key), std::mem::take(&mut r.value));
            self.produce(&topic, &key, &value, headers, r.tokens, r.attempt);
        }
        self.retries = waiting;
    }

    /// Rebuilds the producer after a fatal error (idempotent producer state lost), or when it
    /// delivered nothing for twice `kafka.delivery_timeout` while records waited (stalled).
    fn check_fatal(&mut self) -> Result<(), SinkError> {
        if let Some((code, reason)) = self.producer().client().fatal_error() {
            tracing::error!(?code, %reason, "fatal Kafka producer error; rebuilding the producer and producing unacknowledged records again");
            return self.rebuild();
        }
        let waiting = self.shared.queued.load(Ordering::Relaxed) > 0
            || !self.retries.is_empty()
            || !self.shared.failed.lock().expect("failed lock").is_empty();
        // The clock runs only while records wait: nothing waiting counts as progress (called
        // every pass of the read loop, idle ones included), so a quiet hour is no stall.
        let idle_for = {
            let mut acks = self.shared.acks.lock().expect("acks lock");
            if !waiting {
                acks.progress = Instant::now();
            }
            acks.progress.elapsed()
        };
        if waiting && idle_for >= self.cfg.delivery_timeout * 2 {
            tracing::warn!(
                ?idle_for,
                "the Kafka producer delivered nothing while records waited; rebuilding it and producing unacknowledged records again"
            );
            return self.rebuild();
        }
        Ok(())
    }

    fn rebuild(&mut self) -> Result<(), SinkError> {
        self.shared.metrics.producer_rebuilds.inc();
        if let Some(old) = self.running.take() {
            old.shutdown();
        }
        match Running::start(&self.client_config, &self.shared) {
            Ok(r) => {
                self.running = Some(r);
                Ok(())
            }
            Err(e) => Err(SinkError::Closed(e.to_string())),
        }
    }

    fn update_gauges(&self) {
        let m = &self.shared.metrics;
        let waiting: usize = self.retries.iter().map(|r| r.value.len() + r.key.len()).sum();
        m.queue_bytes.set(self.shared.queued.load(Ordering::Relaxed) + waiting as i64);
        m.retry_queue.set(self.retries.len() as i64);
    }
}

impl KafkaSink {
    /// Bytes a message of a record may use for its value.
    fn value_limit(&self, record: &Record<'_>) -> usize {
        let framing = record.key.len()
            + record.id.len()
            + record.timestamp.len()
            + record.namespace.len()
            + header::ID.len() * 4
            + MESSAGE_OVERHEAD;
        self.max_value.saturating_sub(framing)
    }

    /// Contract v1: one message of one document, cut to `limit` if longer.
    fn produce_document(&mut self, topic: &str, record: &Record<'_>, document: &[u8], limit: usize, token: AckToken) {
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header { key: header::ID, value: Some(record.id) })
            .insert(Header { key: header::TS, value: Some(record.timestamp) })
            .insert(Header { key: header::NS, value: Some(record.namespace) })
            .insert(Header { key: header::V, value: Some(message::V1) });
        if document.len() > limit {
            match truncate_document(document, limit) {
                Ok(value) => {
                    self.shared.metrics.truncated.inc();
                    self.produce(topic, record.key.as_bytes(), &value, headers, vec![token], 0);
                    return;
                }
                Err(e) => {
                    tracing::error!(id = record.id, error = %e, "record over kafka.max_message_bytes cannot be cut; sending as is")
                }
            }
        }
        self.produce(topic, record.key.as_bytes(), document, headers, vec![token], 0);
    }

    /// Contract v2: produces the open message of `key`, if any.
    fn close_open(&mut self, key: &str) {
        if let Some(open) = self.open.remove(key) {
            self.produce_open(key, open);
        }
    }

    fn produce_open(&mut self, key: &str, open: OpenMessage) {
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: header::TS, value: Some(&open.ts) })
            .insert(Header { key: header::NS, value: Some(&open.namespace) })
            .insert(Header { key: header::V, value: Some(message::V2) });
        self.produce(&open.topic, key.as_bytes(), &open.value.finish(), headers, open.tokens, 0);
    }

    /// Contract v2: appends a record line to its key's open message (see [`OpenMessage`]).
    fn submit_line(&mut self, topic: String, record: &Record<'_>, frame: &DocumentFrame, token: AckToken) -> String {
        let limit = self.value_limit(record);
        let line = record.value;
        if let Some(open) = self.open.get_mut(record.key) {
            let same_frame = open.frame_serial == record.frame_serial || open.value.has_frame(frame);
            if open.topic != topic || !same_frame || open.value.len() + 1 + line.len() > limit {
                self.close_open(record.key);
            } else {
                open.frame_serial = record.frame_serial;
            }
        }
        if frame.line().len() + 1 + line.len() > limit {
            // Too large for a message of its own with the frame: a v1 message, cut to fit (this
            // is rare; the records of the key before it are produced first, keeping their order).
            self.close_open(record.key);
            let mut document = std::mem::take(&mut self.scratch);
            document.clear();
            match serde_json::from_slice::<message::RecordLine<'_>>(line) {
                Ok(rec) => rec.write_document(frame, &mut document),
                Err(e) => unreachable!("the record builder wrote an unreadable record line: {e}"),
            }
            self.produce_document(&topic, record, &document, limit, token);
            self.scratch = document;
            return topic;
        }
        let open = match self.open.get_mut(record.key) {
            Some(open) => open,
            None => self.open.entry(record.key.to_owned()).or_insert_with(|| OpenMessage {
                topic: topic.clone(),
                namespace: record.namespace.to_owned(),
                ts: record.timestamp.to_owned(),
                value: Encoder::new(frame),
                tokens: Vec::with_capacity(self.cfg.records_per_message.min(1024)),
                frame_serial: record.frame_serial,
            }),
        };
        open.value.push_line(line);
        open.tokens.push(token);
        if open.tokens.len() >= self.cfg.records_per_message {
            self.close_open(record.key);
        }
        topic
    }

    /// Contract v2: produces every open message.
    fn close_all_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let open: Vec<(String, OpenMessage)> = self.open.drain().collect();
        for (key, message) in open {
            self.produce_open(&key, message);
        }
    }
}

impl Sink for KafkaSink {
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError> {
        let mut topic = std::mem::take(&mut self.topic_buf);
        self.select_topic(record.namespace, &mut topic);
        self.count_namespace(record.namespace, record.value.len());
        match record.frame {
            Some(frame) => topic = self.submit_line(topic, record, frame, token),
            None => {
                let limit = self.value_limit(record);
                self.produce_document(&topic, record, record.value, limit, token);
            }
        }
        self.topic_buf = topic;
        Ok(())
    }

    fn record_lines(&self) -> bool {
        self.cfg.message_format == MessageFormat::V2
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.close_all_open();
        self.check_fatal()?;
        self.retry_due();
        self.update_gauges();
        Ok(())
    }

    fn close(&mut self, timeout: Duration) -> Result<(), SinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.flush()?;
            let outstanding = self.producer().in_flight_count() > 0
                || !self.retries.is_empty()
                || !self.shared.failed.lock().expect("failed lock").is_empty();
            let now = Instant::now();
            if !outstanding || now >= deadline {
                break;
            }
            let _ = self.producer().flush((deadline - now).min(Duration::from_millis(100)));
        }
        self.shared.forward_acks();
        Ok(())
    }
}

/// Whether a message's headers say contract v2.
fn is_v2(headers: &[(String, Vec<u8>)]) -> bool {
    headers.iter().any(|(k, v)| k == header::V && v == message::V2.as_bytes())
}

/// A v2 message the broker refused as too large, split in two v2 messages of half the records
/// each (their tokens with them), or, for a single record, turned into a v1 message of its
/// document (cut further by the next retry if still too large). The original comes back with the
/// error when the value does not decode (which the shipper never writes).
fn split_v2(r: Retry) -> Result<Vec<Retry>, (String, Box<Retry>)> {
    let decoded = match message::decode(&r.value) {
        Ok(d) => d,
        Err(e) => return Err((e.to_string(), Box::new(r))),
    };
    let ns = r.headers.iter().find(|(k, _)| k == header::NS).map(|(_, v)| v.clone()).unwrap_or_default();
    let part = |tokens: Vec<AckToken>, records: &[message::RecordLine<'_>]| -> Retry {
        let (value, headers) = if let [rec] = records {
            let mut doc = Vec::new();
            rec.write_document(&decoded.frame, &mut doc);
            let headers = vec![
                (header::ID.to_owned(), rec.id.as_bytes().to_vec()),
                (header::TS.to_owned(), rec.timestamp.as_bytes().to_vec()),
                (header::NS.to_owned(), ns.clone()),
                (header::V.to_owned(), message::V1.as_bytes().to_vec()),
            ];
            (doc, headers)
        } else {
            let mut enc = Encoder::new(&decoded.frame);
            let mut line = Vec::new();
            for rec in records {
                line.clear();
                message::write_record_line(&mut line, &rec.id, &rec.fields(), rec.tags.iter().map(|t| t.as_ref()));
                enc.push_line(&line);
            }
            let headers = vec![
                (header::TS.to_owned(), records[0].timestamp.as_bytes().to_vec()),
                (header::NS.to_owned(), ns.clone()),
                (header::V.to_owned(), message::V2.as_bytes().to_vec()),
            ];
            (enc.finish(), headers)
        };
        Retry {
            tokens,
            attempt: r.attempt,
            topic: r.topic.clone(),
            key: r.key.clone(),
            value,
            headers,
            code: r.code,
            not_before: r.not_before,
        }
    };
    let mut tokens = r.tokens.clone();
    if tokens.len() != decoded.records.len() {
        let e = format!("{} records but {} acknowledgement tokens", decoded.records.len(), tokens.len());
        return Err((e, Box::new(r)));
    }
    if decoded.records.len() == 1 {
        return Ok(vec![part(tokens, &decoded.records)]);
    }
    let half = decoded.records.len() / 2;
    let second = tokens.split_off(half);
    Ok(vec![part(tokens, &decoded.records[..half]), part(second, &decoded.records[half..])])
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

/// The librdkafka configuration for `cfg` (exposed for tests and the benchmark).
pub fn client_config(cfg: &KafkaConfig, inflight_limit: usize) -> Result<ClientConfig, SecurityError> {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.properties {
        c.set(k.trim(), v.expose().trim());
    }
    cfg.security.apply(&mut c)?;
    // A little above the read path's own limit, so that limit is what applies back-pressure.
    let queue_kib = (inflight_limit + cfg.max_message_bytes.as_usize()).div_ceil(1024) * 2;
    c.set("bootstrap.servers", cfg.brokers.join(","))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", cfg.linger.as_millis().to_string())
        .set("batch.size", cfg.batch_bytes.0.to_string())
        .set("message.max.bytes", cfg.max_message_bytes.0.max(4096).to_string())
        .set("delivery.timeout.ms", cfg.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.kbytes", queue_kib.min(2_097_151).to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("delivery.report.only.error", "false");
    c.set_log_level(RDKafkaLogLevel::Warning);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }

    #[test]
    fn guarantees_are_set_after_pass_through_properties() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("client.id".into(), sluice_common::secret::Secret::new("shipper-1"));
        let c = client_config(&cfg, 16 << 20).unwrap();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(c.get("client.id"), Some("shipper-1"));
        assert_eq!(c.get("queue.buffering.max.kbytes"), Some("34722"));
    }

    fn retry_of(records: &[(&str, &str)], tokens: Vec<AckToken>) -> Retry {
        let doc: sluice_common::schema::Document<'_> = serde_json::from_str(
            r#"{"@timestamp":"2026-11-27T00:00:00Z","message":"","stream":"stdout","log":{"file":{"path":"/var/log/pods/ns_p_u/app/0.log"},"offset":0},"kubernetes":{"namespace":"ns","pod":{"name":"p","uid":"u"},"container":{"name":"app"},"node":{"name":"n"}},"host":{"name":"n"},"agent":{"type":"sluice","version":"0"}}"#,
        )
        .unwrap();
        let frame = DocumentFrame::new(&doc);
        let mut enc = Encoder::new(&frame);
        for (i, (id, ts)) in records.iter().enumerate() {
            let mut line = Vec::new();
            let fields = sluice_common::schema::RecordFields {
                timestamp: ts,
                message: "m",
                stream: sluice_common::schema::Stream::Stdout,
                offset: i as u64 * 10,
            };
            message::write_record_line(&mut line, id, &fields, []);
            enc.push_line(&line);
        }
        Retry {
            tokens,
            attempt: 2,
            topic: "t".into(),
            key: b"u/app".to_vec(),
            value: enc.finish(),
            headers: vec![
                (header::TS.into(), records[0].1.as_bytes().to_vec()),
                (header::NS.into(), b"ns".to_vec()),
                (header::V.into(), b"2".to_vec()),
            ],
            code: Some(RDKafkaErrorCode::MessageSizeTooLarge),
            not_before: Instant::now(),
        }
    }

    fn token(seq: u64) -> AckToken {
        AckToken { generation: 1, seq }
    }

    fn header<'a>(r: &'a Retry, name: &str) -> &'a str {
        std::str::from_utf8(&r.headers.iter().find(|(k, _)| k == name).unwrap().1).unwrap()
    }

    /// A v2 message the broker refused as too large is split in halves with their records' tokens;
    /// one record becomes a v1 message of its document.
    #[test]
    fn refused_v2_messages_split_down_to_v1_records() {
        let recs =
            [("a-0", "2026-11-27T00:00:00Z"), ("a-10", "2026-11-27T00:00:01Z"), ("a-20", "2026-11-28T00:00:00Z")];
        let r = retry_of(&recs, vec![token(0), token(1), token(2)]);
        assert!(is_v2(&r.headers));
        let parts = split_v2(r).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].tokens, vec![token(0)]);
        assert_eq!(parts[1].tokens, vec![token(1), token(2)]);
        // The single record: a v1 message of its document, with its own id and timestamp.
        assert_eq!(header(&parts[0], header::V), "1");
        assert_eq!(header(&parts[0], header::ID), "a-0");
        let doc: serde_json::Value = serde_json::from_slice(&parts[0].value).unwrap();
        assert_eq!(doc["log"]["offset"], 0);
        assert_eq!(doc["kubernetes"]["pod"]["name"], "p");
        // Two records: a v2 message, `sluice.ts` its own first record's.
        assert_eq!(header(&parts[1], header::V), "2");
        assert_eq!(header(&parts[1], header::TS), "2026-11-27T00:00:01Z");
        let decoded = message::decode(&parts[1].value).unwrap();
        let ids: Vec<&str> = decoded.records.iter().map(|r| r.id.as_ref()).collect();
        assert_eq!(ids, ["a-10", "a-20"]);
        assert!(parts.iter().all(|p| p.topic == "t" && p.key == b"u/app" && p.attempt == 2));
        let again = split_v2(parts.into_iter().nth(1).unwrap()).unwrap();
        assert_eq!(again.iter().map(|p| p.tokens.clone()).collect::<Vec<_>>(), [vec![token(1)], vec![token(2)]]);
        assert!(again.iter().all(|p| header(p, header::V) == "1"));
    }

    #[test]
    fn a_v2_message_whose_tokens_do_not_match_its_records_is_not_split() {
        let r = retry_of(&[("a-0", "2026-11-27T00:00:00Z"), ("a-10", "2026-11-27T00:00:01Z")], vec![token(0)]);
        let (_, back) = split_v2(r).unwrap_err();
        assert_eq!(back.tokens, vec![token(0)]);
    }

    #[test]
    fn error_codes_have_stable_labels() {
        assert_eq!(label(Some(RDKafkaErrorCode::MessageTimedOut)).kind, "timeout");
        assert_eq!(label(Some(RDKafkaErrorCode::UnknownTopicOrPartition)).kind, "unknown_topic");
        assert_eq!(label(None).kind, "other");
    }
}
