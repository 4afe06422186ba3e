//! Dead letters: records Elasticsearch rejects for good (mapping conflicts and other 4xx) and
//! records that break the Kafka contract go to `dead_letter.topic` with their original key,
//! value and headers plus `sluice.error.type`, `sluice.error.reason` and `sluice.source`
//! (`topic/partition/offset`). A record counts as settled only once the DLQ write is acknowledged
//! (acks=all).
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

use crate::batch::{Batch, Item};
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
            let reason = truncate(letter.reason, MAX_REASON_BYTES);
            let mut headers = OwnedHeaders::new_with_capacity(original.headers.len() + 4);
            for (name, value) in &original.headers {
                if [header::ERROR_TYPE, header::ERROR_REASON, header::SOURCE, TRUNCATED_HEADER].contains(&name.as_str())
                {
                    continue; // a record dead-lettered again carries only its latest error
                }
                headers = headers.insert(Header { key: name, value: value.as_deref() });
            }
            headers = headers
                .insert(Header { key: header::ERROR_TYPE, value: Some(letter.error_type) })
                .insert(Header { key: header::ERROR_REASON, value: Some(reason) })
                .insert(Header { key: header::SOURCE, value: Some(&source) });
            let full = original.payload.unwrap_or_default();
            let (payload, truncated) = match letter.max_payload {
                Some(max) if full.len() > max => (&full[..max], true),
                _ => (&full[..], false),
            };
            let original_len = full.len().to_string();
            if truncated {
                headers = headers.insert(Header { key: TRUNCATED_HEADER, value: Some(&original_len) });
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
}
