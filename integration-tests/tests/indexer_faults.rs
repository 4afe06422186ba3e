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
