//! A partition paused by back-pressure, revoked while paused and assigned back later is fetched
//! again. librdkafka keeps a partition's pause flag across revoke and re-assignment; before the fix
//! in `consume.rs` (`on_assign` resumes newly assigned partitions when back-pressure is off) such a
//! partition silently never delivered another record (fault-matrix row 6).
//!
//! Needs Docker with the local images (`./dev services build`) for the private Elasticsearch node,
//! the shared Kafka (`KAFKA_BOOTSTRAP_SERVERS`) or Docker for it, and the `sluice-indexer` binary.

mod indexer_support;

use std::time::{Duration, Instant};

use indexer_support::{Indexer, Names, count, env, offsets, produce, producer, records, set, setup};
use sluice_integration_tests::{Flavor, elasticsearch, kafka, search_dedicated};

const ASSIGNED: &str = "sluice_indexer_assigned_partitions";
const PAUSED: &str = "sluice_indexer_paused_partitions";

#[tokio::test]
async fn a_partition_revoked_while_paused_and_assigned_back_is_fetched_again() {
    let started = Instant::now();
    let kafka = kafka().await;
    let search = search_dedicated(Flavor::Elasticsearch, &[]).await;
    let names = Names::new("it-idx-repause");
    let mut env = env(&kafka, &search, &names);
    // A small pipeline that fills at once while Elasticsearch is away, and pauses soon after.
    set(&mut env, "SLUICE_KAFKA__PAUSE_AFTER", "1s");
    set(&mut env, "SLUICE_KAFKA__REVOKE_TIMEOUT", "2s");
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "100");
    set(&mut env, "SLUICE_BATCH__MAX_BYTES", "32KiB");
    set(&mut env, "SLUICE_BATCH__MAX_IN_FLIGHT_BYTES", "64KiB");
    setup(&env);
    let first = records(3000, 1, 16, "repause1");
    // The records of step 5 go to an index of their own (2026-11-26): A alone must create them.
    let mut second = records(3000, 1, 16, "repause2");
    for r in &mut second {
        r.ts = r.ts.replace("2026-11-25", "2026-11-26");
        r.payload = r.payload.replace("2026-11-25", "2026-11-26");
    }
    let second_index = format!("{}-2026.11.26", names.index);
    let producer = producer(&kafka);

    // 1. A starts (it needs Elasticsearch to start), then Elasticsearch goes down: A's pipeline
    //    fills and A pauses its four partitions.
    let a = Indexer::spawn(&env, "it-idx-repause-a");
    a.wait_metric(ASSIGNED, Duration::from_secs(120), |v| v == 4.0).await;
    search.stop().await;
    produce(&producer, &names.topic, &first).await;
    let (_, ends) = offsets(&kafka, &names.group, &names.topic).await;
    assert!(ends.len() == 4 && ends.iter().all(|&e| e > 0), "records on every partition: ends {ends:?}");
    a.wait_metric(PAUSED, Duration::from_secs(60), |v| v > 0.0).await;

    // 2. B joins: part of A's partitions are revoked from A while paused. B writes to the shared
    //    node (its start needs a reachable one), under an index prefix of its own.
    let shared = elasticsearch().await;
    let mut b_env = env.clone();
    set(&mut b_env, "SLUICE_ELASTICSEARCH__URLS", &shared.url);
    set(&mut b_env, "SLUICE_ELASTICSEARCH__INDEX", &format!("{}-b-%Y.%m.%d", names.index));
    set(&mut b_env, "SLUICE_ELASTICSEARCH__TEMPLATE__NAME", &format!("{}-b", names.template));
    let mut b = Indexer::spawn(&b_env, "it-idx-repause-b");
    b.wait_metric(ASSIGNED, Duration::from_secs(120), |v| v >= 1.0).await;
    a.wait_metric(ASSIGNED, Duration::from_secs(30), |v| v < 4.0).await;

    // 3. Elasticsearch back: A's back-pressure ends and A resumes what it still holds.
    search.start().await;
    a.wait_metric(PAUSED, Duration::from_secs(120), |v| v == 0.0).await;

    // 4. B leaves: its partitions (still paused in A's librdkafka since step 2) return to A.
    assert!(b.terminate(Duration::from_secs(60)).success(), "{}", b.log_tail());
    a.wait_metric(ASSIGNED, Duration::from_secs(60), |v| v == 4.0).await;
    assert_eq!(a.metric_sum(PAUSED), 0.0, "back-pressure is off:\n{}", a.metrics());

    // 5. New records on every partition: A must index every one of them.
    let (_, before) = offsets(&kafka, &names.group, &names.topic).await;
    produce(&producer, &names.topic, &second).await;
    let (_, after) = offsets(&kafka, &names.group, &names.topic).await;
    assert!(before.iter().zip(&after).all(|(b, a)| a > b), "new records on every partition: {before:?} → {after:?}");
    let total = second.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = count(&search, &second_index).await;
        if let Some(n) = n {
            assert!(n <= total, "{n} documents for {total} records: duplicates!");
            if n == total {
                break;
            }
        }
        if Instant::now() > deadline {
            let (committed, ends) = offsets(&kafka, &names.group, &names.topic).await;
            let stalled: Vec<usize> = (0..ends.len()).filter(|&p| committed[p] < ends[p]).collect();
            panic!(
                "{n:?} of {total} documents after 90 s; partitions {stalled:?} stalled (committed {committed:?}, \
                 end {ends:?}): revoked while paused and assigned back, never fetched again?\n{}",
                a.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(a.metric_sum("sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), 0.0, "{}", a.metrics());
    let mut a = a;
    assert!(a.terminate(Duration::from_secs(30)).success(), "{}", a.log_tail());
    eprintln!("wall time {:?}", started.elapsed());
}
