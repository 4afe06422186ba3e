//! Prometheus metrics of the indexer (`sluice_indexer_*` at `/metrics`).
//!
//! Rates (docs/s, bytes/s) are `rate()` over the counters; see `docs/indexer.md` for queries.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// Every indexer metric. Clones share the underlying values.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Documents (records: one per v1 message, several per v2 message) settled, by `outcome`
    /// (`indexed`, `duplicate`, `dead_lettered`).
    pub docs: Family<Labels, Counter>,
    /// Document bytes indexed (the Kafka payloads).
    pub bytes: Counter,
    /// `_bulk` request latency in seconds.
    pub bulk_latency: Histogram,
    /// `_bulk` requests by `result` (`ok`, HTTP status class, or transport error kind).
    pub bulk_requests: Family<Labels, Counter>,
    /// Items sent again, by `reason` (Elasticsearch error type, `http_429`, `timeout`, …).
    pub retried: Family<Labels, Counter>,
    /// Records written to the dead-letter topic, by error `type`.
    pub dead_letters: Family<Labels, Counter>,
    /// Current adaptive concurrency limit.
    pub concurrency_limit: Gauge,
    /// Changes of the concurrency limit, by `direction` (`increase`, `decrease_overload`, `decrease_latency`).
    pub concurrency_changes: Family<Labels, Counter>,
    /// `_bulk` requests in flight.
    pub in_flight_requests: Gauge,
    /// Bytes of batches dispatched and not settled (bounded by `batch.max_in_flight_bytes`).
    pub in_flight_bytes: Gauge,
    /// Kafka partitions assigned to this replica.
    pub assigned_partitions: Gauge,
    /// Kafka partitions paused because the pipeline is full.
    pub paused_partitions: Gauge,
    /// Consumer lag per `partition` (from librdkafka statistics), in Kafka messages (offsets): a
    /// contract-v2 message holds several records.
    pub consumer_lag: Family<Labels, Gauge>,
    /// Offset commits by `result`.
    pub commits: Family<Labels, Counter>,
    /// Rebalance events by `kind` (`assign`, `revoke`, `lost`).
    pub rebalances: Family<Labels, Counter>,
    /// Records abandoned at revocation (re-delivered to the next owner).
    pub abandoned: Counter,
    /// 1 while Elasticsearch blocks writes (flood-stage disk, read-only index).
    pub write_blocked: Gauge,
    /// 1 per node `url` whose circuit breaker is closed.
    pub node_up: Family<Labels, Gauge>,
    /// Indices deleted by retention.
    pub retention_deleted: Counter,
    /// Records whose index was already older than `retention.days`, by `action`
    /// (`dead_lettered`, `indexed`).
    pub late_records: Family<Labels, Counter>,
    /// Partitions paused because their unsettled span exceeds `kafka.max_unsettled_span`.
    pub span_paused_partitions: Gauge,
    /// Dead letters written with their payload truncated to fit the dead-letter topic.
    pub dead_letters_truncated: Counter,
    /// Failed dead-letter writes, by `reason` (`permanent`: will not succeed by retrying).
    pub dead_letter_failures: Family<Labels, Counter>,
    /// 1 while the dead-letter topic refuses writes for a reason retrying does not fix.
    pub dead_letter_blocked: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            docs: Family::default(),
            bytes: Counter::default(),
            bulk_latency: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            bulk_requests: Family::default(),
            retried: Family::default(),
            dead_letters: Family::default(),
            concurrency_limit: Gauge::default(),
            concurrency_changes: Family::default(),
            in_flight_requests: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            assigned_partitions: Gauge::default(),
            paused_partitions: Gauge::default(),
            consumer_lag: Family::default(),
            commits: Family::default(),
            rebalances: Family::default(),
            abandoned: Counter::default(),
            write_blocked: Gauge::default(),
            node_up: Family::default(),
            retention_deleted: Counter::default(),
            late_records: Family::default(),
            span_paused_partitions: Gauge::default(),
            dead_letters_truncated: Counter::default(),
            dead_letter_failures: Family::default(),
            dead_letter_blocked: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under `sluice_indexer_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("indexer");
        r.register("docs", "Documents settled, by outcome (indexed, duplicate, dead_lettered)", m.docs.clone());
        r.register("bytes", "Document bytes indexed", m.bytes.clone());
        r.register("bulk_latency_seconds", "Latency of _bulk requests", m.bulk_latency.clone());
        r.register("bulk_requests", "_bulk requests by result", m.bulk_requests.clone());
        r.register("retried_items", "Items sent again, by reason", m.retried.clone());
        r.register("dead_letters", "Records written to the dead-letter topic, by error type", m.dead_letters.clone());
        r.register("concurrency_limit", "Adaptive limit of in-flight _bulk requests", m.concurrency_limit.clone());
        r.register("concurrency_changes", "Changes of the concurrency limit", m.concurrency_changes.clone());
        r.register("in_flight_requests", "_bulk requests in flight", m.in_flight_requests.clone());
        r.register("in_flight_bytes", "Bytes of batches dispatched and not settled", m.in_flight_bytes.clone());
        r.register("assigned_partitions", "Kafka partitions assigned to this replica", m.assigned_partitions.clone());
        r.register(
            "paused_partitions",
            "Kafka partitions paused because the pipeline is full",
            m.paused_partitions.clone(),
        );
        r.register("consumer_lag", "Consumer lag in Kafka messages (offsets), per partition", m.consumer_lag.clone());
        r.register("commits", "Offset commits by result", m.commits.clone());
        r.register("rebalances", "Rebalance events by kind", m.rebalances.clone());
        r.register(
            "abandoned_records",
            "In-flight records abandoned at revocation (re-delivered)",
            m.abandoned.clone(),
        );
        r.register(
            "write_blocked",
            "1 while Elasticsearch blocks writes (flood stage, read-only)",
            m.write_blocked.clone(),
        );
        r.register("node_up", "1 per Elasticsearch node whose circuit breaker is closed", m.node_up.clone());
        r.register("retention_deleted_indices", "Indices deleted by retention", m.retention_deleted.clone());
        r.register(
            "late_records",
            "Records whose index is already older than retention.days, by action",
            m.late_records.clone(),
        );
        r.register(
            "span_paused_partitions",
            "Partitions paused because their unsettled span exceeds kafka.max_unsettled_span",
            m.span_paused_partitions.clone(),
        );
        r.register(
            "dead_letters_truncated",
            "Dead letters written with a truncated payload to fit the dead-letter topic",
            m.dead_letters_truncated.clone(),
        );
        r.register("dead_letter_failures", "Failed dead-letter writes, by reason", m.dead_letter_failures.clone());
        r.register(
            "dead_letter_blocked",
            "1 while the dead-letter topic refuses writes permanently (authorization, size, fatal producer)",
            m.dead_letter_blocked.clone(),
        );
        m
    }

    /// Counts settled documents.
    pub fn settled(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.docs.get_or_create(&label("outcome", outcome)).inc_by(n);
        }
    }

    /// Counts retried items.
    pub fn retry(&self, reason: &str, n: u64) {
        if n > 0 {
            self.retried.get_or_create(&label("reason", reason)).inc_by(n);
        }
    }

    /// Counts a bulk request result.
    pub fn request(&self, result: &str) {
        self.bulk_requests.get_or_create(&label("result", result)).inc();
    }

    /// Counts dead letters.
    pub fn dead_lettered(&self, kind: &str, n: u64) {
        self.dead_letters.get_or_create(&label("type", kind)).inc_by(n);
        self.settled("dead_lettered", n);
    }

    /// Sets the lag of a partition.
    pub fn lag(&self, partition: i32, lag: i64) {
        self.consumer_lag.get_or_create(&label("partition", partition.to_string())).set(lag);
    }

    /// Forgets a partition's lag (revoked).
    pub fn forget_partition(&self, partition: i32) {
        self.consumer_lag.remove(&label("partition", partition.to_string()));
    }

    /// Counts a commit.
    pub fn commit(&self, ok: bool) {
        self.commits.get_or_create(&label("result", if ok { "ok" } else { "error" })).inc();
    }

    /// Counts a rebalance event.
    pub fn rebalance(&self, kind: &'static str) {
        self.rebalances.get_or_create(&label("kind", kind)).inc();
    }

    /// Sets a node's breaker state.
    pub fn node(&self, url: &str, up: bool) {
        self.node_up.get_or_create(&label("url", url)).set(i64::from(up));
    }

    /// Counts late records (see `retention.late_records`).
    pub fn late_records(&self, dead_lettered: u64, indexed: u64) {
        if dead_lettered > 0 {
            self.late_records.get_or_create(&label("action", "dead_lettered")).inc_by(dead_lettered);
        }
        if indexed > 0 {
            self.late_records.get_or_create(&label("action", "indexed")).inc_by(indexed);
        }
    }

    /// Counts a failed dead-letter write.
    pub fn dead_letter_failure(&self, reason: &str) {
        self.dead_letter_failures.get_or_create(&label("reason", reason)).inc();
    }

    /// Counts a concurrency limit change.
    pub fn concurrency_change(&self, direction: &'static str) {
        self.concurrency_changes.get_or_create(&label("direction", direction)).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_indexer_prefix() {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics::register(&mut registry);
        m.settled("indexed", 3);
        m.retry("es_rejected_execution_exception", 2);
        m.lag(4, 17);
        m.forget_partition(4);
        m.lag(5, 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("sluice_indexer_docs_total{outcome=\"indexed\"} 3"), "{text}");
        assert!(text.contains("sluice_indexer_retried_items_total{reason=\"es_rejected_execution_exception\"} 2"));
        assert!(text.contains("sluice_indexer_consumer_lag{partition=\"5\"} 1"));
        assert!(!text.contains("partition=\"4\""));
        assert!(text.contains("sluice_indexer_bulk_latency_seconds_bucket"));
    }
}
