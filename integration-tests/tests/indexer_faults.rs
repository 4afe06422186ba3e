//! The indexer under faults of a real, private Elasticsearch node: stopped for 30 s mid-stream,
//! and a 429 storm from a tiny write queue. Nothing is lost, nothing is duplicated.
//!
//! Needs Docker with the local images (`./dev services build`) and the `sluice-indexer` binary.

mod indexer_support;

use std::time::{Duration, Instant};

use indexer_support::{
    Indexer, Names, count, env, produce, producer, records, set, setup, wait_committed_to_end, wait_count,
};
use sluice_integration_tests::{Flavor, kafka, search_dedicated};

#[tokio::test]
async fn elasticsearch_stopped_for_30s_mid_stream_loses_and_duplicates_nothing() {
    let kafka = kafka().await;
    let search = search_dedicated(Flavor::Elasticsearch, &[]).await;
    let names = Names::new("it-idx-esdown");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "1000");
    set(&mut env, "SLUICE_ELASTICSEARCH__REQUEST_TIMEOUT", "10s");
    setup(&env);
    let all = records(30_000, 2, 32, "down");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &all[..10_000]).await;

    let indexer = Indexer::spawn(&env, "it-idx-esdown");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&search, &names.indices()).await.unwrap_or(0) < 2_000 {
        assert!(Instant::now() < deadline, "indexing did not start:\n{}", indexer.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    search.stop().await;
    let stopped = Instant::now();
    // The stream goes on while Elasticsearch is away: Kafka holds it as lag.
    produce(&producer, &names.topic, &all[10_000..20_000]).await;
    let indexed_at_stop = indexer.metric_sum("sluice_indexer_docs_total{outcome=\"indexed\"}");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    let lag = indexer.metric_sum("sluice_indexer_consumer_lag{");
    let indexed_during = indexer.metric_sum("sluice_indexer_docs_total{outcome=\"indexed\"}") - indexed_at_stop;
    assert!(indexed_during.abs() < 1.0, "{indexed_during} documents indexed while Elasticsearch was stopped");
    assert!(lag > 0.0, "lag should grow while Elasticsearch is down:\n{}", indexer.metrics());
    assert!(indexer.metric_sum("sluice_indexer_node_up{") < 1.0, "breaker should be open:\n{}", indexer.metrics());
    // Back-pressure for real: the pipeline stayed full past kafka.pause_after, so reading stopped
    // and the partitions are paused (not buffered).
    assert!(
        indexer.metric_sum("sluice_indexer_paused_partitions") > 0.0,
        "partitions should be paused while Elasticsearch is down:\n{}",
        indexer.metrics()
    );

    search.start().await;
    produce(&producer, &names.topic, &all[20_000..]).await;
    wait_count(&search, &names.indices(), 30_000, Duration::from_secs(240), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    assert_eq!(indexer.metric_sum("sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), 0.0);
    let mut indexer = indexer;
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}

#[tokio::test]
async fn a_429_storm_is_absorbed_by_backing_off() {
    let kafka = kafka().await;
    let search = search_dedicated(
        Flavor::Elasticsearch,
        &[("thread_pool.write.size", "1"), ("thread_pool.write.queue_size", "1")],
    )
    .await;
    let names = Names::new("it-idx-429");
    let mut env = env(&kafka, &search, &names);
    // Many small concurrent requests against a write pool of one thread and one queue slot.
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "200");
    set(&mut env, "SLUICE_CONCURRENCY__INITIAL", "16");
    set(&mut env, "SLUICE_CONCURRENCY__MAX", "32");
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "8");
    setup(&env);
    let total = 30_000;
    let records = records(total, 1, 64, "storm");
    produce(&producer(&kafka), &names.topic, &records).await;

    let mut indexer = Indexer::spawn(&env, "it-idx-429");
    wait_count(&search, &names.indices(), total as u64, Duration::from_secs(300), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;

    let metrics = indexer.metrics();
    let rejected = indexer_support::metric_sum(
        &metrics,
        "sluice_indexer_retried_items_total{reason=\"es_rejected_execution_exception\"}",
    ) + indexer_support::metric_sum(&metrics, "sluice_indexer_retried_items_total{reason=\"http_429\"}");
    assert!(rejected > 0.0, "the storm should have produced 429s:\n{metrics}");
    let decreases = indexer_support::metric_sum(
        &metrics,
        "sluice_indexer_concurrency_changes_total{direction=\"decrease_overload\"}",
    );
    assert!(decreases > 0.0, "the concurrency limit should have decreased:\n{metrics}");
    assert_eq!(indexer_support::metric_sum(&metrics, "sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), 0.0);
    // Exactly once: wait a little for stragglers, the count must not move.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&search, &names.indices()).await, Some(total as u64));
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}

/// The delivery loop's give-up paths against a real node (issue 15): `http.max_content_length`
/// makes Elasticsearch answer 413 to large requests, so batches are split in halves until they
/// fit and the one record that never fits is dead-lettered (`http_413`); a write pool of one
/// thread and one queue slot rejects items (429), and with `retry.max_attempts` 2 the items
/// rejected twice are dead-lettered as `retries_exhausted`. Every record is accounted for exactly
/// once: indexed, or in the dead-letter topic (and then not in Elasticsearch).
#[tokio::test]
async fn a_413_splits_batches_and_max_attempts_dead_letters_every_record_exactly_once() {
    use indexer_support::{header_value, read_all};
    use rdkafka::Message;
    let kafka = kafka().await;
    let search = search_dedicated(
        Flavor::Elasticsearch,
        &[("http.max_content_length", "64kb"), ("thread_pool.write.size", "1"), ("thread_pool.write.queue_size", "1")],
    )
    .await;
    let names = Names::new("it-idx-413");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "1000");
    set(&mut env, "SLUICE_CONCURRENCY__INITIAL", "16");
    set(&mut env, "SLUICE_CONCURRENCY__MAX", "32");
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "8");
    set(&mut env, "SLUICE_RETRY__MAX_ATTEMPTS", "2");
    set(&mut env, "SLUICE_RETRY__INITIAL_BACKOFF", "10ms");
    setup(&env);
    let total = 20_000;
    let mut all = records(total, 1, 64, "split");
    // One record larger than any request Elasticsearch accepts here.
    let mut doc: serde_json::Value = serde_json::from_str(&all[77].payload).unwrap();
    doc["message"] = serde_json::json!("y".repeat(100 * 1024));
    all[77].payload = doc.to_string();
    produce(&producer(&kafka), &names.topic, &all).await;

    let mut indexer = Indexer::spawn(&env, "it-idx-413");
    let deadline = Instant::now() + Duration::from_secs(300);
    let metrics = loop {
        let metrics = indexer.metrics();
        let settled = indexer_support::metric_sum(&metrics, "sluice_indexer_docs_total");
        if settled >= total as f64 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{settled} of {total} settled:\n{}", indexer.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    let sum = |series: &str| indexer_support::metric_sum(&metrics, series);
    let (indexed, dead) = (
        sum("sluice_indexer_docs_total{outcome=\"indexed\"}"),
        sum("sluice_indexer_docs_total{outcome=\"dead_lettered\"}"),
    );
    assert_eq!(sum("sluice_indexer_docs_total{outcome=\"duplicate\"}"), 0.0, "{metrics}");
    assert_eq!(indexed + dead, total as f64, "{metrics}");
    assert!(sum("sluice_indexer_bulk_requests_total{result=\"http_413\"}") > 0.0, "no 413 met:\n{metrics}");
    assert_eq!(
        sum("sluice_indexer_dead_letters_total{type=\"http_413\"}"),
        1.0,
        "only the oversized record:\n{metrics}"
    );
    let exhausted = sum("sluice_indexer_dead_letters_total{type=\"retries_exhausted\"}");
    assert!(exhausted > 0.0, "no record ran out of its 2 attempts in the storm:\n{metrics}");
    assert_eq!(dead, exhausted + 1.0, "{metrics}");

    // The letters are exactly the records missing from Elasticsearch.
    let letters = read_all(&kafka, &names.dlq, dead as usize, Duration::from_secs(60)).await;
    assert_eq!(letters.len(), dead as usize);
    let mut dead_ids: Vec<String> = letters.iter().map(|l| header_value(l, "sluice.id").unwrap()).collect();
    dead_ids.sort();
    dead_ids.dedup();
    assert_eq!(dead_ids.len(), letters.len(), "a letter written twice");
    assert!(dead_ids.contains(&all[77].id));
    let big = letters.iter().find(|l| header_value(l, "sluice.id").as_deref() == Some(&all[77].id)).unwrap();
    assert_eq!(big.payload(), Some(all[77].payload.as_bytes()), "the whole record in its letter");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&search, &names.indices()).await, Some(indexed as u64));
    let index = format!("{}-2026.11.25", names.index);
    let get = |id: String| {
        let path = format!("/{index}/_doc/{id}");
        let search = &search;
        async move { search.request(elasticsearch::http::Method::Get, &path, None).await.0 }
    };
    let indexed_id = all.iter().find(|r| !dead_ids.contains(&r.id)).unwrap().id.clone();
    assert_eq!(get(indexed_id).await, 200, "the lookup finds indexed records");
    for id in dead_ids.iter().take(50) {
        assert_eq!(get(id.clone()).await, 404, "{id} is both dead-lettered and indexed");
    }
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}
