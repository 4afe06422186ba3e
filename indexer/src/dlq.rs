//! Dead letters: records Elasticsearch rejects for good (mapping conflicts and other 4xx) and
//! records that break the Kafka contract go to `dead_letter.topic` with their original key,
//! value and headers plus `sluice.error.type`, `sluice.error.reason` and `sluice.source`
//! (`topic/partition/offset`). A record counts as settled only once the DLQ write is acknowledged
//! (acks=all).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_common::schema::header;

use crate::batch::{Batch, Item};
use crate::config::IndexerConfig;

/// Longest `sluice.error.reason` written (Elasticsearch reasons can quote whole documents).
pub const MAX_REASON_BYTES: usize = 4096;

/// One record to dead-letter.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    /// The record.
    pub item: &'a Item,
    /// Error class, e.g. `mapper_parsing_exception`.
    pub error_type: &'a str,
    /// Error reason.
    pub reason: &'a str,
}

/// The dead-letter producer.
pub struct DeadLetters {
    producer: FutureProducer,
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
        let mut client = ClientConfig::new();
        for (key, value) in &config.kafka.properties {
            client.set(key, value.expose());
        }
        client
            .set("bootstrap.servers", config.kafka.brokers.join(","))
            .set("client.id", "sluice-indexer-dlq")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "zstd")
            .set("message.timeout.ms", "60000");
        Ok(DeadLetters {
            producer: client.create()?,
            topic: config.dead_letter.topic.clone(),
            source_topic: config.kafka.topic.clone(),
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes the letters and waits until each is acknowledged. On error, some may have been
    /// written: the caller retries all of them (a duplicate dead letter is harmless, a lost one is not).
    pub async fn send(&self, batch: &Batch, letters: &[Letter<'_>]) -> Result<(), KafkaError> {
        let mut pending = Vec::with_capacity(letters.len());
        for letter in letters {
            let original = batch.original(letter.item);
            let source = format!("{}/{}/{}", self.source_topic, letter.item.partition, letter.item.offset);
            let reason = truncate(letter.reason, MAX_REASON_BYTES);
            let mut headers = OwnedHeaders::new_with_capacity(original.headers.len() + 3);
            for (name, value) in &original.headers {
                if [header::ERROR_TYPE, header::ERROR_REASON, header::SOURCE].contains(&name.as_str()) {
                    continue; // a record dead-lettered again carries only its latest error
                }
                headers = headers.insert(Header { key: name, value: value.as_deref() });
            }
            headers = headers
                .insert(Header { key: header::ERROR_TYPE, value: Some(letter.error_type) })
                .insert(Header { key: header::ERROR_REASON, value: Some(reason) })
                .insert(Header { key: header::SOURCE, value: Some(&source) });
            let payload = original.payload.unwrap_or_default();
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&payload).headers(headers);
            if let Some(key) = original.key.as_deref() {
                record = record.key(key);
            }
            // The queue can be full under a storm of letters: wait for what is out, then go on.
            let mut record = record;
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err((err, _)) => return Err(err),
                }
            }
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(err),
                Err(_canceled) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
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
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aéb", 2), "a");
        assert_eq!(truncate("aéb", 3), "aé");
    }
}
