//! Dead letters: records Elasticsearch rejects for good (mapping conflicts and other 4xx) and
//! records that break the Kafka contract go to `dead_letter.topic` with their original key,
//! value and headers plus `sluice.error.type`, `sluice.error.reason` and `sluice.source`
//! (`topic/partition/offset`). A record counts as settled only once the DLQ write is acknowledged
//! (acks=all).
//!
//! A record of a contract-v2 message is dead-lettered alone, as a v1 message: its rebuilt document,
//! its synthesized v1 headers (see [`crate::batch`]), the error and source headers, and
//! `sluice.source.record` = its 0-based index in the message (written here from the [`Item`], after
//! `sluice.source`; a `sluice.source.record` among the original headers, e.g. of a dead letter
//! produced back into the records topic, is dropped like the other stale source and error headers).
//!
//! Every letter's write is acknowledged (or fails) on its own, so a retry re-sends only what
//! failed. A letter the topic refuses as too large is written with its payload cut to a prefix and
//! the header `sluice.truncated` = the original payload length (the key, headers and reason are
//! kept). Failures that retrying does not fix (authorization, an invalid record, a fatal
//! idempotent-producer error) are reported as [`Failure::Permanent`]; a fatal producer is
//! recreated.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sluice_common::kafka::{SecurityWatch, WatchContext};
use sluice_common::schema::header;

use crate::batch::{Batch, Item, SideRecord};
use crate::config::IndexerConfig;

/// Longest `sluice.error.reason` written (Elasticsearch reasons can quote whole documents).
pub const MAX_REASON_BYTES: usize = 4096;

/// Header of a dead letter whose payload was cut to fit the dead-letter topic: the original
/// payload length in bytes (decimal).
pub const TRUNCATED_HEADER: &str = "sluice.truncated";

/// Largest message the dead-letter producer sends (`message.max.bytes`): beyond any record the
/// records topic can hold plus the letter's headers. The topic's own `max.message.bytes` may be
/// smaller; then the letter is truncated (see [`TRUNCATED_HEADER`]).
pub const PRODUCER_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Headers of the original record not copied to its dead letter: the letter gets fresh ones.
const STALE_HEADERS: [&str; 5] =
    [header::ERROR_TYPE, header::ERROR_REASON, header::SOURCE, header::SOURCE_RECORD, TRUNCATED_HEADER];

/// Why a letter was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Temporary (broker down, leader change, timeout): retry as is.
    Retry(String),
    /// The message is larger than the topic or producer accepts: retry with a smaller payload.
    TooLarge(String),
    /// Retrying the same write will not help (authorization, invalid record, fatal producer):
    /// an operator must act.
    Permanent(String),
}

impl Failure {
    /// Classifies a producer error.
    pub fn of(err: &KafkaError) -> Failure {
        let text = err.to_string();
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                Failure::TooLarge(text)
            }
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::Fatal,
            ) => Failure::Permanent(text),
            _ => Failure::Retry(text),
        }
    }
}

/// One record to dead-letter.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    /// The record.
    pub item: &'a Item,
    /// Error class, e.g. `mapper_parsing_exception`.
    pub error_type: &'a str,
    /// Error reason.
    pub reason: &'a str,
    /// Longest payload to write (`None`: all of it); a longer one is cut and tagged.
    pub max_payload: Option<usize>,
}

/// The dead-letter producer.
pub struct DeadLetters {
    producer: Mutex<FutureProducer<WatchContext>>,
    client: ClientConfig,
    watch: Arc<SecurityWatch>,
    topic: String,
    source_topic: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// An idempotent producer (acks=all) for the dead-letter topic.
    pub fn new(config: &IndexerConfig) -> Result<Self, KafkaError> {
        let mut client = crate::kafka::base_config(config, "sluice-indexer-dlq")?;
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "zstd")
            .set("message.max.bytes", PRODUCER_MAX_MESSAGE_BYTES.to_string())
            .set("message.timeout.ms", "60000");
        let watch = Arc::new(SecurityWatch::new("indexer dead-letter producer", &config.kafka.security));
        Ok(DeadLetters {
            producer: Mutex::new(client.create_with_context(WatchContext(watch.clone()))?),
            watch,
            client,
            topic: config.dead_letter.topic.clone(),
            source_topic: config.kafka.topic.clone(),
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes the letters and waits until each is acknowledged; one result per letter, in order
    /// (`Ok(true)`: written with a truncated payload). A failed letter may still have been written:
    /// a duplicate dead letter is harmless, a lost one is not.
    pub async fn send(&self, batch: &Batch, letters: &[Letter<'_>]) -> Vec<Result<bool, Failure>> {
        let producer = self.producer();
        let mut pending = Vec::with_capacity(letters.len());
        for letter in letters {
            let original = batch.original(letter.item);
            let source = format!("{}/{}/{}", self.source_topic, letter.item.partition, letter.item.offset);
            let full = original.payload.as_deref().unwrap_or_default();
            let (payload, truncated) = match letter.max_payload {
                Some(max) if full.len() > max => (&full[..max], true),
                _ => (full, false),
            };
            let mut headers = OwnedHeaders::new_with_capacity(original.headers.len() + 5);
            for (name, value) in letter_headers(&original, letter, &source, truncated.then_some(full.len())) {
                headers = headers.insert(Header { key: &name, value: value.as_deref() });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload).headers(headers);
            if let Some(key) = original.key.as_deref() {
                record = record.key(key);
            }
            // The queue can be full under a storm of letters: wait for what is out, then go on.
            let mut record = record;
            let queued = loop {
                match producer.send_result(record) {
                    Ok(delivery) => break Ok(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err((err, _)) => break Err(Failure::of(&err)),
                }
            };
            pending.push((queued, truncated));
        }
        let mut results = Vec::with_capacity(pending.len());
        for (queued, truncated) in pending {
            results.push(match queued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => {
                        self.watch.clear();
                        Ok(truncated)
                    }
                    Ok(Err((err, _))) => {
                        self.watch.observe_error(&err, &format!("writing to {}", self.topic));
                        Err(Failure::of(&err))
                    }
                    Err(_canceled) => Err(Failure::Retry("delivery canceled".into())),
                },
                Err(failure) => Err(failure),
            });
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            // An idempotent producer that hit a fatal error refuses every later write: start over.
            tracing::error!(?code, %reason, "dead-letter producer failed fatally; recreating it");
            match self.client.create_with_context::<_, FutureProducer<WatchContext>>(WatchContext(self.watch.clone())) {
                Ok(fresh) => *self.producer.lock().expect("producer lock") = fresh,
                Err(err) => tracing::error!(error = %err, "cannot recreate the dead-letter producer"),
            }
        }
        results
    }

    fn producer(&self) -> FutureProducer<WatchContext> {
        self.producer.lock().expect("producer lock").clone()
    }
}

/// The headers of a letter, in order: the original record's (for a record of a contract-v2
/// message, its synthesized v1 headers) without [`STALE_HEADERS`], then `sluice.error.type`,
/// `sluice.error.reason` (cut to [`MAX_REASON_BYTES`]), `sluice.source`, `sluice.source.record`
/// (records of v2 messages only) and [`TRUNCATED_HEADER`] (`truncated_from`: the original payload
/// length, when the payload was cut).
fn letter_headers(
    original: &SideRecord,
    letter: &Letter<'_>,
    source: &str,
    truncated_from: Option<usize>,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut headers: Vec<(String, Option<Vec<u8>>)> =
        original.headers.iter().filter(|(name, _)| !STALE_HEADERS.contains(&name.as_str())).cloned().collect();
    let mut add = |name: &str, value: &str| headers.push((name.to_owned(), Some(value.as_bytes().to_vec())));
    add(header::ERROR_TYPE, letter.error_type);
    add(header::ERROR_REASON, truncate(letter.reason, MAX_REASON_BYTES));
    add(header::SOURCE, source);
    if let Some(index) = letter.item.source_record() {
        add(header::SOURCE_RECORD, &index.to_string());
    }
    if let Some(len) = truncated_from {
        add(TRUNCATED_HEADER, &len.to_string());
    }
    headers
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_errors_are_classified() {
        let e = |code| KafkaError::MessageProduction(code);
        assert!(matches!(Failure::of(&e(RDKafkaErrorCode::MessageSizeTooLarge)), Failure::TooLarge(_)));
        assert!(matches!(Failure::of(&e(RDKafkaErrorCode::TopicAuthorizationFailed)), Failure::Permanent(_)));
        assert!(matches!(Failure::of(&e(RDKafkaErrorCode::ClusterAuthorizationFailed)), Failure::Permanent(_)));
        assert!(matches!(Failure::of(&e(RDKafkaErrorCode::Fatal)), Failure::Permanent(_)));
        assert!(matches!(Failure::of(&e(RDKafkaErrorCode::MessageTimedOut)), Failure::Retry(_)));
        assert!(matches!(Failure::of(&e(RDKafkaErrorCode::BrokerTransportFailure)), Failure::Retry(_)));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aéb", 2), "a");
        assert_eq!(truncate("aéb", 3), "aé");
    }

    fn side(headers: &[(&str, &str)]) -> SideRecord {
        SideRecord {
            key: None,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec()))).collect(),
            payload: Some(b"{}".to_vec()),
        }
    }

    fn item(record: u32, records: u32, from_v2: bool) -> Item {
        Item { epoch: 1, record, records, from_v2, ..Item::pending(2, 40, 0) }
    }

    fn names(headers: &[(String, Option<Vec<u8>>)]) -> Vec<String> {
        headers
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_deref().unwrap_or_default())))
            .collect()
    }

    #[test]
    fn a_v2_record_letter_carries_its_v1_headers_and_its_index_once() {
        let original = side(&[
            (header::ID, "r-2"),
            (header::TS, "2026-11-27T10:00:00Z"),
            (header::NS, "default"),
            (header::V, "1"),
            ("traceparent", "x"),
            (header::SOURCE_RECORD, "2"),
        ]);
        let item = item(2, 3, true);
        let letter = Letter { item: &item, error_type: "mapper_parsing_exception", reason: "bad", max_payload: None };
        assert_eq!(
            names(&letter_headers(&original, &letter, "logs/2/40", None)),
            [
                "sluice.id=r-2",
                "sluice.ts=2026-11-27T10:00:00Z",
                "sluice.ns=default",
                "sluice.v=1",
                "traceparent=x",
                "sluice.error.type=mapper_parsing_exception",
                "sluice.error.reason=bad",
                "sluice.source=logs/2/40",
                "sluice.source.record=2",
            ]
        );
    }

    #[test]
    fn a_v1_letter_drops_stale_source_and_error_headers() {
        // A dead letter produced back into the records topic, failing again.
        let original = side(&[
            (header::ID, "r"),
            (header::ERROR_TYPE, "old"),
            (header::SOURCE, "logs/0/1"),
            (header::SOURCE_RECORD, "5"),
            (TRUNCATED_HEADER, "99"),
        ]);
        let item = item(0, 1, false);
        let letter = Letter { item: &item, error_type: "new", reason: "why", max_payload: Some(1) };
        assert_eq!(
            names(&letter_headers(&original, &letter, "logs/2/40", Some(2))),
            [
                "sluice.id=r",
                "sluice.error.type=new",
                "sluice.error.reason=why",
                "sluice.source=logs/2/40",
                "sluice.truncated=2"
            ]
        );
    }
}
