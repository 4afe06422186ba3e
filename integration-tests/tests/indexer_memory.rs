//! The indexer's memory bound, as the kernel counts it: while Elasticsearch is away and the lag in
//! Kafka is many times larger, the process's resident set grows by no more than its buffers allow
//! (`batch.max_in_flight_bytes` + two batches of `batch.max_bytes` + `kafka.prefetch_bytes`, at
//! most three times over: request bodies, allocator and librdkafka overhead), and every record
//! arrives once Elasticsearch is back.
//!
//! Needs Docker with the local images (a private Elasticsearch node is stopped), the shared Kafka
//! (or Docker) and the `sluice-indexer` binary.

mod indexer_support;

use std::time::{Duration, Instant};

use indexer_support::{Indexer, Names, env, produce, producer, records, set, setup, wait_count};
use sluice_integration_tests::{Flavor, kafka, search_dedicated};

const ASSIGNED: &str = "sluice_indexer_assigned_partitions";
const PAUSED: &str = "sluice_indexer_paused_partitions";
const MIB: u64 = 1 << 20;

/// Resident set size of a process, in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn resident_memory_stays_within_the_configured_buffers_while_elasticsearch_is_away() {
    let started = Instant::now();
    let kafka = kafka().await;
    let search = search_dedicated(Flavor::Elasticsearch, &[]).await;
    let names = Names::new("it-idx-mem");
    let mut env = env(&kafka, &search, &names);
    // Buffers: 16 MiB in flight + 2 × 4 MiB batches + 8 MiB prefetch = 32 MiB.
    set(&mut env, "SLUICE_BATCH__MAX_IN_FLIGHT_BYTES", "16MiB");
    set(&mut env, "SLUICE_BATCH__MAX_BYTES", "4MiB");
    set(&mut env, "SLUICE_KAFKA__PREFETCH_BYTES", "8MiB");
    set(&mut env, "SLUICE_KAFKA__PAUSE_AFTER", "2s");
    let buffers = (16 + 2 * 4 + 8) * MIB;
    setup(&env);

    // 256 MiB of lag: 32 768 records of ~8 KiB.
    let pad = "x".repeat(7 * 1024 + 512);
    let mut all = records(32_768, 1, 16, "mem");
    for r in &mut all {
        r.payload = r.payload.replace("the lazy dog", &format!("the lazy dog {pad}"));
    }
    let lag: u64 = all.iter().map(|r| r.payload.len() as u64).sum();
    assert!(lag > 250 * MIB, "lag {lag}");

    let mut indexer = Indexer::spawn(&env, "it-idx-mem");
    indexer.wait_metric(ASSIGNED, Duration::from_secs(120), |v| v == 4.0).await;
    let baseline = rss(indexer.pid());
    search.stop().await;
    produce(&producer(&kafka), &names.topic, &all).await;

    // The pipeline fills, the consumer stops taking records, the partitions pause; meanwhile and
    // for a while after, the resident set is sampled.
    let mut peak = baseline;
    let paused_by = Instant::now() + Duration::from_secs(120);
    let mut paused_at = None;
    loop {
        peak = peak.max(rss(indexer.pid()));
        if paused_at.is_none() && indexer.try_metrics().is_some_and(|t| indexer_support::metric_sum(&t, PAUSED) > 0.0) {
            paused_at = Some(Instant::now());
        }
        if paused_at.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) {
            break;
        }
        assert!(Instant::now() < paused_by || paused_at.is_some(), "never paused:\n{}", indexer.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "RSS baseline {} MiB, peak {} MiB (+{} MiB) with {} MiB of lag and {} MiB of buffers",
        baseline / MIB,
        peak / MIB,
        grown / MIB,
        lag / MIB,
        buffers / MIB
    );
    // Three times the buffers: bodies rebuilt for the items of a batch that are retried, the HTTP
    // client's buffers, librdkafka's fetch responses being decoded, and allocator slack (freed
    // batches stay resident in glibc's arenas). Measured +29 MiB on a quiet run, +65 MiB in a loaded CI run. An
    // unbounded pipeline would hold most of the 254 MiB of lag.
    assert!(
        grown < 3 * buffers,
        "RSS grew by {} MiB, more than three times the {} MiB of buffers",
        grown / MIB,
        buffers / MIB
    );

    // Elasticsearch back: everything arrives, once.
    search.start().await;
    wait_count(&search, &names.indices(), all.len() as u64, Duration::from_secs(300), &[&indexer]).await;
    assert!(indexer.terminate(Duration::from_secs(60)).success(), "{}", indexer.log_tail());
    eprintln!("wall time {:?}", started.elapsed());
}
