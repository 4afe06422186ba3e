//! The indexer's delivery promise at its edges (issue #9), against a real Kafka and a real
//! Elasticsearch: records that break the consumer, dead letters the DLQ topic cannot take, records
//! for indices that refuse writes, shutdown with records that cannot settle, records older than
//! retention. Every test asserts that the offsets still reach the partition ends (nothing stuck)
//! and that nothing disappears without a trace.
//!
//! Needs the `sluice-indexer` binary built (`cargo build -p sluice-indexer`) and the shared
//! services (`KAFKA_BOOTSTRAP_SERVERS`, `ELASTICSEARCH_URL`) or Docker.

mod indexer_support;

use std::time::{Duration, Instant};

use elasticsearch::http::Method;
use indexer_support::{
    Indexer, Names, TestRecord, alter_topic, create_topic_with, env, header_value, produce, produce_with_raw_header,
    producer, read_all, records, set, setup, wait_committed_to_end, wait_count,
};
use rdkafka::Message;
use serde_json::json;
use sluice_common::schema::header;
use sluice_integration_tests::{elasticsearch, kafka};

const DEAD_LETTERED: &str = "sluice_indexer_docs_total{outcome=\"dead_lettered\"}";

/// Records for one UTC date (`2026-11-<day>`), ids `<tag>-<n>`.
fn dated(n: usize, day: &str, tag: &str) -> Vec<TestRecord> {
    records(n, 1, 4, tag)
        .into_iter()
        .map(|mut r| {
            let ts = format!("{day}{}", &r.ts[10..]);
            let mut doc: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            doc["@timestamp"] = json!(ts);
            r.payload = doc.to_string();
            r.ts = ts;
            r
        })
        .collect()
}

/// Scenario 11: a header key that is not UTF-8 used to panic the consumer thread (rdkafka's
/// `Headers::get` *and* `try_get` unwrap the key's UTF-8 conversion); the process then hung with
/// /healthz 200 and ignored SIGTERM. The record must go to the dead-letter topic and everything
/// after it must be indexed.
#[tokio::test]
async fn a_header_key_that_is_not_utf8_is_dead_lettered_and_the_consumer_goes_on() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-hdr");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    setup(&env);
    let records = records(200, 1, 4, "hdr");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records[..100]).await;
    let bad = TestRecord { id: "hdr-bad".into(), ..records[0].clone() };
    produce_with_raw_header(&producer, &names.topic, &bad, b"trace\xff\xfeid", b"1").await;
    produce(&producer, &names.topic, &records[100..]).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-hdr");
    wait_count(&search, &names.indices(), 200, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;
    let letters = read_all(&kafka, &names.dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1, "{}", indexer.log_tail());
    let letter = &letters[0];
    assert_eq!(header_value(letter, header::ERROR_TYPE).as_deref(), Some("sluice_contract_violation"));
    let reason = header_value(letter, header::ERROR_REASON).unwrap();
    assert!(reason.contains("not UTF-8"), "{reason}");
    assert_eq!(header_value(letter, header::ID).as_deref(), Some("hdr-bad"));
    assert_eq!(letter.payload(), Some(bad.payload.as_bytes()));
    assert!(indexer.is_running());
    let started = Instant::now();
    let status = indexer.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", indexer.log_tail());
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Deterministic incompressible text (zstd cannot shrink it below the DLQ topic's limit).
fn noise(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Scenario 12: a dead letter larger than the DLQ topic accepts used to be retried forever
/// (re-sending the other letters each time) and held its partition's commits back. It must be
/// written with its payload truncated (and say so in a header), and the offsets must advance.
#[tokio::test]
async fn a_dead_letter_too_large_for_the_dlq_topic_is_truncated_and_tagged() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-big");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    // An operator's DLQ topic with a small limit; setup leaves existing topics alone.
    create_topic_with(&kafka, &names.dlq, 1, &[("max.message.bytes", "8192")]).await;
    setup(&env);
    let mut records = records(50, 1, 4, "big");
    let mut doc: serde_json::Value = serde_json::from_str(&records[10].payload).unwrap();
    doc["log"]["offset"] = json!("not a number"); // mapping conflict: dead-lettered
    doc["message"] = json!(noise(40_000));
    records[10].payload = doc.to_string();
    // A second letter in the same batch: it must be written once, not once per failed attempt.
    let mut doc: serde_json::Value = serde_json::from_str(&records[11].payload).unwrap();
    doc["log"]["offset"] = json!("small poison");
    records[11].payload = doc.to_string();
    produce(&producer(&kafka), &names.topic, &records).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-big");
    wait_count(&search, &names.indices(), 48, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    let letters = read_all(&kafka, &names.dlq, 3, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 2, "exactly two letters, none repeated:\n{}", indexer.log_tail());
    let big = letters.iter().find(|l| header_value(l, header::ID).as_deref() == Some(&records[10].id)).unwrap();
    let payload = big.payload().unwrap();
    // (The topic's limit applies to the compressed batch: the cut payload may exceed 8 KiB.)
    assert!(payload.len() < records[10].payload.len() / 2, "{}", payload.len());
    assert!(records[10].payload.as_bytes().starts_with(payload), "a prefix of the original");
    assert_eq!(
        header_value(big, "sluice.truncated").as_deref(),
        Some(records[10].payload.len().to_string().as_str()),
        "original length in the header"
    );
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 2.0);
    assert!(indexer.metric_sum("sluice_indexer_dead_letters_truncated_total") >= 1.0, "{}", indexer.metrics());
    assert!(indexer.terminate(Duration::from_secs(30)).success());
}

/// Scenario 12: a dead-letter topic that refuses a letter for good (here: not even its headers fit)
/// used to be retried forever and silently. It must be surfaced — `dead_letter_blocked` 1,
/// readiness false, an error log — while the record stays unsettled (offsets not committed past
/// it), and recover once an operator fixes the topic.
#[tokio::test]
async fn a_dead_letter_topic_that_refuses_for_good_is_surfaced_and_recovers() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-perm");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    create_topic_with(&kafka, &names.dlq, 1, &[("max.message.bytes", "64")]).await;
    setup(&env);
    let mut records = records(20, 1, 4, "perm");
    let mut doc: serde_json::Value = serde_json::from_str(&records[5].payload).unwrap();
    doc["log"]["offset"] = json!("not a number");
    records[5].payload = doc.to_string();
    produce(&producer(&kafka), &names.topic, &records).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-perm");
    indexer.wait_metric("sluice_indexer_dead_letter_blocked", Duration::from_secs(60), |v| v == 1.0).await;
    let ready = indexer.readyz();
    assert!(ready.starts_with("HTTP/1.1 503") && ready.contains("dead-letter topic refuses writes"), "{ready}");
    assert!(indexer.log_text().contains("dead letters cannot be written"), "{}", indexer.log_tail());
    assert!(indexer.metric_sum("sluice_indexer_dead_letter_failures_total{reason=\"permanent\"}") >= 1.0);
    let (committed, _) = indexer_support::offsets(&kafka, &names.group, &names.topic).await;
    assert!(committed[0] <= 5, "committed past the record whose letter failed: {committed:?}");

    alter_topic(&kafka, &names.dlq, &[("max.message.bytes", "1000000")]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    indexer.wait_metric("sluice_indexer_dead_letter_blocked", Duration::from_secs(10), |v| v == 0.0).await;
    assert!(indexer.readyz().starts_with("HTTP/1.1 200"), "{}", indexer.readyz());
    let letters = read_all(&kafka, &names.dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload(), Some(records[5].payload.as_bytes()), "whole once the topic takes it");
    assert_eq!(header_value(&letters[0], "sluice.truncated"), None);
    assert!(indexer.terminate(Duration::from_secs(30)).success());
}

/// Scenario 12: `setup` sizes the dead-letter topic for the largest record the records topic takes
/// plus the letter's headers (an existing DLQ topic is left alone; then letters are truncated).
#[tokio::test]
async fn setup_sizes_the_dead_letter_topic_above_the_records_topic() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-size");
    let env = env(&kafka, &search, &names);
    create_topic_with(&kafka, &names.topic, 1, &[("max.message.bytes", "3000000")]).await;
    setup(&env);
    let config = |topic: String| {
        let kafka_config = kafka.client_config();
        async move {
            use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
            use rdkafka::client::DefaultClientContext;
            let admin: AdminClient<DefaultClientContext> = kafka_config.create().expect("admin");
            let resources = admin
                .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                .await
                .expect("describe_configs");
            let resource = resources.into_iter().next().unwrap().expect("topic config");
            resource.get("max.message.bytes").and_then(|e| e.value.clone()).unwrap()
        }
    };
    assert_eq!(config(names.topic.clone()).await, "3000000");
    assert_eq!(config(names.dlq.clone()).await, (3_000_000 + 64 * 1024).to_string());
}

/// `kafka.min_insync_replicas` is set by `setup` on both topics it creates (as a topic override,
/// not the brokers' default), so `acks=all` means that many copies whatever the brokers say.
#[tokio::test]
async fn setup_sets_min_insync_replicas_on_both_topics() {
    use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().expect("admin");
    let min_isr = async |topic: &str| {
        let resources = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .expect("describe_configs");
        let resource = resources.into_iter().next().unwrap().expect("topic config");
        let entry = resource.get("min.insync.replicas").expect("min.insync.replicas");
        (entry.value.clone().unwrap_or_default(), matches!(entry.source, ConfigSource::DynamicTopic))
    };
    // Unset: the brokers' default.
    let names = Names::new("it-dlv-isr0");
    setup(&env(&kafka, &search, &names));
    assert!(!min_isr(&names.topic).await.1, "no topic override when unset");
    // Set: a per-topic override on the records and the dead-letter topic. (One broker: 1 is the
    // only value a write could meet.)
    let names = Names::new("it-dlv-isr1");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__REPLICATION_FACTOR", "1");
    set(&mut env, "SLUICE_KAFKA__MIN_INSYNC_REPLICAS", "1");
    setup(&env);
    for topic in [&names.topic, &names.dlq] {
        assert_eq!(min_isr(topic).await, ("1".to_owned(), true), "{topic}: a topic override");
    }
}

/// Scenarios 14 and 18: a record for an index that refuses writes (`index.blocks.write`) is
/// retried as blocked; it must neither hold the only concurrency slot (everything else is
/// indexed meanwhile) nor be retried forever: after `retry.give_up_after` it is dead-lettered
/// with the reason, and the offsets reach the end.
#[tokio::test]
async fn a_record_for_a_write_blocked_index_gives_way_then_is_dead_lettered() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-blk");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    set(&mut env, "SLUICE_CONCURRENCY__MIN", "1");
    set(&mut env, "SLUICE_CONCURRENCY__INITIAL", "1");
    set(&mut env, "SLUICE_CONCURRENCY__MAX", "1");
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "20");
    set(&mut env, "SLUICE_ELASTICSEARCH__BLOCKED_PROBE_INTERVAL", "1s");
    set(&mut env, "SLUICE_RETRY__GIVE_UP_AFTER", "8s");
    setup(&env);
    let old = format!("{}-2026.11.20", names.index);
    let (status, body) =
        search.request(Method::Put, &format!("/{old}"), Some(json!({"settings": {"index.blocks.write": true}}))).await;
    assert_eq!(status, 200, "{body}");
    let blocked = dated(1, "2026-11-20", "blk-old");
    let fresh = records(400, 1, 4, "blk");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &blocked).await;
    produce(&producer, &names.topic, &fresh).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-blk");
    // Everything else flows although the blocked record keeps failing (one slot only).
    wait_count(&search, &format!("{}-2026.11.25", names.index), 400, Duration::from_secs(30), &[&indexer]).await;
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 0.0, "not dead-lettered before give_up_after");
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    let letters = read_all(&kafka, &names.dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1, "{}", indexer.log_tail());
    assert_eq!(header_value(&letters[0], header::ERROR_TYPE).as_deref(), Some("retries_exhausted"));
    let reason = header_value(&letters[0], header::ERROR_REASON).unwrap();
    assert!(reason.contains("cluster_block_exception") || reason.contains("blocked"), "{reason}");
    assert_eq!(header_value(&letters[0], header::ID).as_deref(), Some(blocked[0].id.as_str()));
    assert!(indexer.terminate(Duration::from_secs(30)).success());
    let _ = search.request(Method::Delete, &format!("/{old}"), None).await;
}

/// Scenario 13: a record that cannot settle holds its partition's commits back. Its partition is
/// paused once the unsettled span passes `kafka.max_unsettled_span` (bounded re-reading after a
/// restart, bounded tracking), and resumes once the record is given up (dead-lettered).
#[tokio::test]
async fn a_stuck_record_pauses_its_partition_past_max_unsettled_span() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-span");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    set(&mut env, "SLUICE_KAFKA__MAX_UNSETTLED_SPAN", "1000");
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "100");
    set(&mut env, "SLUICE_ELASTICSEARCH__BLOCKED_PROBE_INTERVAL", "1s");
    set(&mut env, "SLUICE_RETRY__GIVE_UP_AFTER", "12s");
    setup(&env);
    let old = format!("{}-2026.11.18", names.index);
    let (status, body) =
        search.request(Method::Put, &format!("/{old}"), Some(json!({"settings": {"index.blocks.write": true}}))).await;
    assert_eq!(status, 200, "{body}");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &dated(1, "2026-11-18", "span-old")).await;
    let fresh = records(6000, 1, 4, "span");
    produce(&producer, &names.topic, &fresh).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-span");
    indexer.wait_metric("sluice_indexer_span_paused_partitions", Duration::from_secs(30), |n| n == 1.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh_index = format!("{}-2026.11.25", names.index);
    let while_paused = indexer_support::count(&search, &fresh_index).await.unwrap_or(0);
    assert!(
        (1000..3000).contains(&while_paused),
        "{while_paused} records indexed while the partition is paused at a span of 1000"
    );
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 0.0);
    // Given up after 12 s: dead-lettered, the span collapses, the partition resumes.
    wait_count(&search, &fresh_index, 6000, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;
    assert_eq!(indexer.metric_sum("sluice_indexer_span_paused_partitions"), 0.0);
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 1.0);
    assert!(indexer.terminate(Duration::from_secs(30)).success());
    let _ = search.request(Method::Delete, &format!("/{old}"), None).await;
}

/// Scenario 18: a closed index (`index_closed_exception`, HTTP 400 per item) is an operator's
/// state, not the record's fault: the record waits (blocked) instead of being dead-lettered, and is
/// indexed once the index is opened again.
#[tokio::test]
async fn a_record_for_a_closed_index_waits_instead_of_being_dead_lettered() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-closed");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    set(&mut env, "SLUICE_ELASTICSEARCH__BLOCKED_PROBE_INTERVAL", "1s");
    setup(&env);
    let closed = format!("{}-2026.11.21", names.index);
    let (status, body) = search.request(Method::Put, &format!("/{closed}"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = search.request(Method::Post, &format!("/{closed}/_close"), None).await;
    assert_eq!(status, 200, "{body}");
    let late = dated(3, "2026-11-21", "closed-old");
    let fresh = records(100, 1, 4, "closed");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &late).await;
    produce(&producer, &names.topic, &fresh).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-closed");
    wait_count(&search, &format!("{}-2026.11.25", names.index), 100, Duration::from_secs(60), &[&indexer]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 0.0, "dead-lettered:\n{}", indexer.log_tail());
    let (status, body) = search.request(Method::Post, &format!("/{closed}/_open"), None).await;
    assert_eq!(status, 200, "{body}");
    wait_count(&search, &closed, 3, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 0.0);
    assert!(indexer.terminate(Duration::from_secs(30)).success());
    let _ = search.request(Method::Delete, &format!("/{closed}"), None).await;
}

/// Scenario 19: with records that cannot settle, SIGTERM used to wait `kafka.revoke_timeout`
/// twice (drain, then again in the revoke callback while closing), past Kubernetes' grace period.
#[tokio::test]
async fn shutdown_with_unsettled_records_waits_revoke_timeout_once() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-stop");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    set(&mut env, "SLUICE_KAFKA__REVOKE_TIMEOUT", "6s");
    set(&mut env, "SLUICE_ELASTICSEARCH__BLOCKED_PROBE_INTERVAL", "1s");
    setup(&env);
    let old = format!("{}-2026.11.19", names.index);
    let (status, body) =
        search.request(Method::Put, &format!("/{old}"), Some(json!({"settings": {"index.blocks.write": true}}))).await;
    assert_eq!(status, 200, "{body}");
    let producer = producer(&kafka);
    // Offsets 0–49 settle, 50 cannot (blocked index), 51–100 settle.
    produce(&producer, &names.topic, &records(50, 1, 4, "stop-a")).await;
    produce(&producer, &names.topic, &dated(1, "2026-11-19", "stop-old")).await;
    produce(&producer, &names.topic, &records(50, 1, 4, "stop-b")).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-stop");
    wait_count(&search, &format!("{}-2026.11.25", names.index), 100, Duration::from_secs(60), &[&indexer]).await;
    assert!(indexer.readyz().starts_with("HTTP/1.1 200"), "{}", indexer.readyz());
    indexer
        .wait_metric("sluice_indexer_retried_items_total{reason=\"blocked\"}", Duration::from_secs(20), |n| n > 0.0)
        .await;
    // (Read before the shutdown: afterwards the endpoint is gone.)
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 0.0);
    let started = Instant::now();
    let status = indexer.terminate(Duration::from_secs(40));
    let took = started.elapsed();
    assert!(status.success(), "{status:?}\n{}", indexer.log_tail());
    assert!(
        took < Duration::from_secs(9),
        "shutdown took {took:?} with kafka.revoke_timeout 6s:\n{}",
        indexer.log_tail()
    );
    // The drain committed the settled prefix and abandoned (and counted) the record in flight.
    let (committed, _) = indexer_support::offsets(&kafka, &names.group, &names.topic).await;
    assert_eq!(committed, vec![50], "the settled prefix, not past the unsettled record");
    let log = indexer.log_text();
    assert!(log.contains("abandoned after kafka.revoke_timeout") && log.contains("abandoned=1"), "{log}");
    let _ = search.request(Method::Delete, &format!("/{old}"), None).await;
}

/// `/readyz` says why the indexer is not ready — before Elasticsearch answers, and while shutting
/// down — and a second SIGTERM during a drain exits at once (code 130) instead of waiting out
/// `kafka.revoke_timeout`, committing nothing past what settled.
#[tokio::test]
async fn readiness_follows_the_lifecycle_and_a_second_signal_exits_at_once() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-ready");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    set(&mut env, "SLUICE_KAFKA__REVOKE_TIMEOUT", "60s");
    set(&mut env, "SLUICE_KAFKA__MAX_POLL_INTERVAL", "90s");
    set(&mut env, "SLUICE_ELASTICSEARCH__BLOCKED_PROBE_INTERVAL", "1s");
    setup(&env);

    // No Elasticsearch at the configured address (a port this test holds, nothing listens): the
    // endpoint answers, not ready, with the reason.
    let mut nowhere = env.clone();
    set(
        &mut nowhere,
        "SLUICE_ELASTICSEARCH__URLS",
        &format!("http://127.0.0.1:{}", sluice_integration_tests::free_port()),
    );
    let mut waiting = Indexer::spawn(&nowhere, "it-dlv-ready-nowhere");
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = waiting.readyz();
        if answer.contains("detecting Elasticsearch") {
            break answer;
        }
        assert!(Instant::now() < deadline, "no readiness reason within 30 s: {answer:?}\n{}", waiting.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(waiting.terminate(Duration::from_secs(30)).success(), "{}", waiting.log_tail());

    let old = format!("{}-2026.11.17", names.index);
    let (status, body) =
        search.request(Method::Put, &format!("/{old}"), Some(json!({"settings": {"index.blocks.write": true}}))).await;
    assert_eq!(status, 200, "{body}");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records(20, 1, 4, "ready-a")).await;
    produce(&producer, &names.topic, &dated(1, "2026-11-17", "ready-old")).await;
    let mut indexer = Indexer::spawn(&env, "it-dlv-ready");
    wait_count(&search, &format!("{}-2026.11.25", names.index), 20, Duration::from_secs(60), &[&indexer]).await;
    assert!(indexer.readyz().starts_with("HTTP/1.1 200"), "{}", indexer.readyz());
    indexer
        .wait_metric("sluice_indexer_retried_items_total{reason=\"blocked\"}", Duration::from_secs(20), |n| n > 0.0)
        .await;

    // First SIGTERM: the drain waits for the blocked record (up to 60 s) and readiness is false.
    let pid = indexer.pid();
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status().unwrap();
        assert!(status.success());
    };
    kill("-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !indexer.readyz().contains("shutting down") {
        assert!(indexer.is_running(), "exited before the second signal:\n{}", indexer.log_tail());
        assert!(Instant::now() < deadline, "readiness not withdrawn: {}\n{}", indexer.readyz(), indexer.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(indexer.readyz().starts_with("HTTP/1.1 503"), "{}", indexer.readyz());
    assert!(indexer.is_running(), "the drain should still wait for the blocked record");
    let started = Instant::now();
    kill("-TERM");
    let status = indexer.wait_exit(Duration::from_secs(20)).expect("no exit within 20 s of the second SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", indexer.log_tail());
    assert!(indexer.log_text().contains("second signal, exiting without draining"), "{}", indexer.log_tail());
    let (committed, _) = indexer_support::offsets(&kafka, &names.group, &names.topic).await;
    assert!(committed[0] <= 20, "committed past the unsettled record: {committed:?}");
    let _ = search.request(Method::Delete, &format!("/{old}"), None).await;
}

/// Scenario 21: a record older than `retention.days` used to create an index that the next
/// retention sweep deletes, after its offset was committed: gone without a trace. With the
/// default policy it is dead-lettered (`retention_expired`) and counted.
#[tokio::test]
async fn records_older_than_retention_are_dead_lettered_not_indexed_then_deleted() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-dlv-ret");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    set(&mut env, "SLUICE_RETENTION__DAYS", "3");
    set(&mut env, "SLUICE_RETENTION__CHECK_INTERVAL", "1s");
    setup(&env);
    // Today is past 2026-11-28: 2026-11-25 is older than three days. 2099 is not.
    let late = records(20, 1, 4, "ret-late");
    let current = dated(30, "2099-01-01", "ret-now");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &late).await;
    produce(&producer, &names.topic, &current).await;

    let mut indexer = Indexer::spawn(&env, "it-dlv-ret");
    wait_count(&search, &names.indices(), 30, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;
    let letters = read_all(&kafka, &names.dlq, 20, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 20, "{}", indexer.log_tail());
    for letter in &letters {
        assert_eq!(header_value(letter, header::ERROR_TYPE).as_deref(), Some("retention_expired"));
    }
    assert_eq!(indexer.metric_sum("sluice_indexer_late_records_total"), 20.0, "{}", indexer.metrics());
    let gone = search.get_json(&format!("/_cat/indices/{}-2026.11.25?format=json", names.index)).await;
    assert!(gone.as_array().is_none_or(|a| a.is_empty()), "no expired index created: {gone}");
    assert!(indexer.terminate(Duration::from_secs(30)).success());
}
