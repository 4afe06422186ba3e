//! Prometheus metrics of the publisher, registered as `shipper_kafka_*` and `shipper_published_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An error `kind` label (`timeout`, `message_too_large`, `unknown_topic`, `transport`, …).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The class of error.
    pub kind: &'static str,
}

/// A `namespace` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Namespace {
    /// Kubernetes namespace (`""` for files outside the kubelet layout).
    pub namespace: String,
}

/// Publisher metrics. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct PublishMetrics {
    /// Records handed to the producer, by namespace.
    pub published: Family<Namespace, Counter>,
    /// Document bytes handed to the producer, by namespace.
    pub published_bytes: Family<Namespace, Counter>,
    /// Records Kafka acknowledged (`acks=all`).
    pub delivered: Counter,
    /// Failed deliveries (each is produced again), by kind.
    pub delivery_errors: Family<Kind, Counter>,
    /// Records produced again after a failed delivery.
    pub retries: Counter,
    /// Records whose message was cut to fit `kafka.max_message_bytes` (tag `truncated`).
    pub truncated: Counter,
    /// Records sent to `kafka.topic` because their templated topic does not exist.
    pub topic_fallbacks: Counter,
    /// Producers rebuilt after a fatal error.
    pub producer_rebuilds: Counter,
    /// Errors reported by the client (broker connections, authentication), by kind.
    pub client_errors: Family<Kind, Counter>,
    /// Bytes handed to the producer and not yet acknowledged, including records awaiting a retry.
    pub queue_bytes: Gauge,
    /// Records waiting to be produced again.
    pub retry_queue: Gauge,
}

impl PublishMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = PublishMetrics::default();
        let r = registry.sub_registry_with_prefix("shipper");
        r.register("published_records", "Records handed to Kafka, by namespace", m.published.clone());
        r.register("published_bytes", "Document bytes handed to Kafka, by namespace", m.published_bytes.clone());
        r.register("kafka_delivered_records", "Records acknowledged by Kafka (acks=all)", m.delivered.clone());
        r.register(
            "kafka_delivery_errors",
            "Failed deliveries by kind; each record is produced again with the same id",
            m.delivery_errors.clone(),
        );
        r.register("kafka_retries", "Records produced again after a failed delivery", m.retries.clone());
        r.register("kafka_truncated_records", "Records cut to fit kafka.max_message_bytes", m.truncated.clone());
        r.register(
            "kafka_topic_fallbacks",
            "Records sent to kafka.topic because the templated topic is missing",
            m.topic_fallbacks.clone(),
        );
        r.register(
            "kafka_producer_rebuilds",
            "Producers rebuilt after a fatal error or a stall (nothing delivered for twice kafka.delivery_timeout)",
            m.producer_rebuilds.clone(),
        );
        r.register("kafka_client_errors", "Errors reported by the Kafka client, by kind", m.client_errors.clone());
        r.register("kafka_queue_bytes", "Bytes handed to the producer and not yet acknowledged", m.queue_bytes.clone());
        r.register("kafka_retry_queue_records", "Records waiting to be produced again", m.retry_queue.clone());
        m
    }

    /// The published-records counter of `namespace`.
    pub fn published_records(&self, namespace: &str) -> Counter {
        self.published.get_or_create(&Namespace { namespace: namespace.to_owned() }).clone()
    }

    /// The published-bytes counter of `namespace`.
    pub fn published_bytes(&self, namespace: &str) -> Counter {
        self.published_bytes.get_or_create(&Namespace { namespace: namespace.to_owned() }).clone()
    }
}
