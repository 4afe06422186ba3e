//! Graceful revocation when a replica joins (cooperative-sticky): the partitions handed over are
//! drained first — their pending batch dispatched, their in-flight records settled within
//! `kafka.revoke_timeout`, the settled prefix committed — so the newcomer starts where the old owner
//! stopped: nothing re-sent (no 409 on either replica), nothing abandoned, nothing lost.
//!
//! Needs the shared Kafka and Elasticsearch (or Docker) and the `sluice-indexer` binary.

mod indexer_support;

use std::time::{Duration, Instant};

use indexer_support::{Indexer, Names, env, produce, producer, records, set, setup, wait_committed_to_end, wait_count};
use sluice_integration_tests::{elasticsearch, kafka};

const ASSIGNED: &str = "sluice_indexer_assigned_partitions";
const INDEXED: &str = "sluice_indexer_docs_total{outcome=\"indexed\"}";
const DUPLICATE: &str = "sluice_indexer_docs_total{outcome=\"duplicate\"}";

/// The `drained=N` of each "partitions revoked" log line (ANSI colours removed).
fn drained(log: &str) -> Vec<u64> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("partitions revoked"))
        .filter_map(|l| {
            let rest = &l[l.find("drained=")? + "drained=".len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn a_joining_replica_takes_over_drained_partitions_without_redelivery() {
    let started = Instant::now();
    let (kafka, search) = (kafka().await, elasticsearch().await);
    let names = Names::new("it-idx-join");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__REVOKE_TIMEOUT", "60s");
    // Records wait in batches for a while: the revocation finds some pending or in flight.
    set(&mut env, "SLUICE_BATCH__LINGER", "1s");
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "500");
    setup(&env);
    let total = 40_000;
    let all = records(total, 1, 16, "join");
    let producer = producer(&kafka);

    let mut a = Indexer::spawn(&env, "it-idx-join-a");
    a.wait_metric(ASSIGNED, Duration::from_secs(120), |v| v == 4.0).await;
    // Records keep arriving (500 every 100 ms) from before B joins until after the handover.
    let feeder = {
        let (producer, topic, all) = (producer.clone(), names.topic.clone(), all.clone());
        tokio::spawn(async move {
            for chunk in all.chunks(500) {
                produce(&producer, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    a.wait_metric(INDEXED, Duration::from_secs(60), |v| v > 0.0).await;

    // B joins while records flow: part of A's partitions move to B.
    let mut b = Indexer::spawn(&env, "it-idx-join-b");
    b.wait_metric(ASSIGNED, Duration::from_secs(120), |v| v >= 1.0).await;
    a.wait_metric(ASSIGNED, Duration::from_secs(60), |v| v < 4.0).await;
    assert!(!feeder.is_finished(), "every record was produced before the handover: the test proves nothing");
    feeder.await.expect("feeder");

    wait_count(&search, &names.indices(), total as u64, Duration::from_secs(240), &[&a, &b]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;

    // The handover happened, with records to drain, and was graceful.
    assert!(a.metric_sum("sluice_indexer_rebalances_total{kind=\"revoke\"}") >= 1.0, "{}", a.metrics());
    let drains = drained(&a.log_text());
    assert!(!drains.is_empty(), "no revocation logged by A:\n{}", a.log_tail());
    eprintln!("A drained {drains:?} in-flight records at its revocations");
    // Whether the revocation found records in flight depends on timing (1 250 in one run, none in
    // another): reported, not asserted; the handover's promise below holds either way.
    if drains.iter().sum::<u64>() == 0 {
        eprintln!("A had nothing in flight when revoked: this run did not exercise the drain");
    }
    for replica in [&a, &b] {
        assert_eq!(replica.metric_sum("sluice_indexer_abandoned_records_total"), 0.0, "{}", replica.metrics());
        assert_eq!(replica.metric_sum(DUPLICATE), 0.0, "re-delivered after the handover:\n{}", replica.metrics());
    }
    let (ia, ib) = (a.metric_sum(INDEXED), b.metric_sum(INDEXED));
    assert!(ib > 0.0, "B indexed nothing: no records moved to it");
    assert_eq!(ia + ib, total as f64, "A {ia} + B {ib}");
    assert!(b.terminate(Duration::from_secs(60)).success(), "{}", b.log_tail());
    assert!(a.terminate(Duration::from_secs(60)).success(), "{}", a.log_tail());
    eprintln!("wall time {:?}", started.elapsed());
}
