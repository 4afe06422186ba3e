//! Kafka → Elasticsearch throughput of the indexer, side by side with the Elasticsearch ceiling.
//!
//! ```text
//! cargo run --release -p sluice-indexer --example bench
//! ```
//! Environment (defaults in brackets): `BENCH_KAFKA` [127.0.0.1:9092], `BENCH_ES`
//! [http://127.0.0.1:9200], `BENCH_DOCS` [300000], `BENCH_CONCURRENCY` [4], `BENCH_BULK_BYTES`
//! [5242880], `BENCH_PARTITIONS` [4], `BENCH_SHARDS` [1], `BENCH_ROUNDS` [2].
//!
//! Per round, on the same documents:
//! 1. **ceiling** — a plain loader: the documents pre-built into `_bulk` bodies of
//!    `BENCH_BULK_BYTES` (same action lines, same `filter_path`), sent by `BENCH_CONCURRENCY` tasks
//!    as fast as Elasticsearch answers. Nothing else runs.
//! 2. **indexer** — the real pipeline (library `pipeline::run`, in this process) draining the same
//!    documents from a Kafka topic (produced beforehand, lz4) with `batch.max_bytes =
//!    BENCH_BULK_BYTES` and the concurrency pinned to `BENCH_CONCURRENCY`.
//!
//! Rates are measured from the first to the last document settled (steady state); the indexer's
//! wall time including its consumer-group join is printed too. Both runs write to fresh indices
//! made by the same template (replicas 0), deleted afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::http::Method;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sluice_common::server::Health;
use sluice_indexer::config::{ByteSize, IndexerConfig};
use sluice_indexer::es::{BULK_FILTER_PATH, NodePool};
use sluice_indexer::metrics::Metrics;
use sluice_indexer::{pipeline, setup, template};
use tokio_util::sync::CancellationToken;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Doc {
    id: String,
    ts: String,
    ns: String,
    key: String,
    payload: String,
}

fn docs(n: usize, run: &str) -> Vec<Doc> {
    (0..n)
        .map(|i| {
            let pod = i % 64;
            let ns = format!("team-{}", pod % 5);
            let ts = format!("2026-11-27T{:02}:{:02}:{:02}.{:09}Z", (i / 3600) % 24, (i / 60) % 60, i % 60, i);
            let payload = json!({
                "@timestamp": ts,
                "message": format!("GET /api/v1/items/{i}?page={} HTTP/1.1 200 {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" rt=0.{:03}", i % 50, 500 + i % 9000, i % 1000),
                "stream": if i % 7 == 0 { "stderr" } else { "stdout" },
                "log": {"file": {"path": format!("/var/log/pods/{ns}_web-{pod}_6f1c{pod:04}/web/0.log")}, "offset": i * 180},
                "kubernetes": {
                    "namespace": ns,
                    "pod": {"name": format!("web-{pod}"), "uid": format!("6f1c{pod:04}-aaaa-bbbb-cccc-0123456789ab")},
                    "container": {"name": "web"},
                    "node": {"name": format!("node-{}", pod % 3)},
                    "labels": {"app": "web", "app_kubernetes_io/name": "web", "pod-template-hash": "5d9c7b8f6"}
                },
                "container": {"id": format!("{:064x}", pod), "image": {"name": "registry.local/web:1.4.2"}, "runtime": "containerd"},
                "host": {"name": format!("node-{}", pod % 3)},
                "agent": {"type": "sluice", "version": "0.1.0"}
            })
            .to_string();
            Doc { id: format!("{run}-{i:09}"), ts, ns, key: format!("6f1c{pod:04}/web"), payload }
        })
        .collect()
}

fn bodies(docs: &[Doc], index: &str, max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut body = Vec::with_capacity(max_bytes + 4096);
    for d in docs {
        let line = format!("{{\"create\":{{\"_index\":\"{index}\",\"_id\":\"{}\"}}}}\n", d.id);
        if !body.is_empty() && body.len() + line.len() + d.payload.len() + 1 > max_bytes {
            out.push(Bytes::from(std::mem::replace(&mut body, Vec::with_capacity(max_bytes + 4096))));
        }
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(d.payload.as_bytes());
        body.push(b'\n');
    }
    if !body.is_empty() {
        out.push(Bytes::from(body));
    }
    out
}

struct Rate {
    docs: usize,
    bytes: usize,
    steady: Duration,
    wall: Duration,
}

impl Rate {
    fn docs_per_s(&self) -> f64 {
        self.docs as f64 / self.steady.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.steady.as_secs_f64()
    }
}

async fn es_count(pool: &NodePool, index: &str) -> u64 {
    let _ = pool.send(Method::Post, &format!("/{index}/_refresh"), &[], None, None, None).await;
    let reply = pool.send(Method::Get, &format!("/{index}/_count"), &[], None, None, None).await.expect("count");
    serde_json::from_slice::<serde_json::Value>(&reply.body).expect("json")["count"].as_u64().unwrap_or(0)
}

async fn delete_index(pool: &NodePool, index: &str) {
    let _ = pool.send(Method::Delete, &format!("/{index}"), &[], None, None, None).await;
}

/// The plain loader: pre-built bodies, `concurrency` senders, no per-item handling beyond a check.
async fn ceiling(pool: Arc<NodePool>, bodies: Vec<Bytes>, concurrency: usize, docs: usize) -> Rate {
    let bytes: usize = bodies.iter().map(Bytes::len).sum();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, bodies, next) = (pool.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { return };
                loop {
                    let reply = pool
                        .send(
                            Method::Post,
                            "/_bulk",
                            &[("filter_path", BULK_FILTER_PATH)],
                            Some(body.clone()),
                            Some("application/x-ndjson"),
                            None,
                        )
                        .await
                        .expect("bulk");
                    let ok = reply.status == 200 && !reply.body.windows(13).any(|w| w == b"\"errors\":true");
                    if ok {
                        break;
                    }
                    eprintln!("ceiling: bulk answered {} with errors; resending", reply.status);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader task");
    }
    let elapsed = started.elapsed();
    Rate { docs, bytes, steady: elapsed, wall: elapsed }
}

async fn produce(brokers: &str, topic: &str, docs: &[Doc]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .expect("producer");
    for chunk in docs.chunks(20_000) {
        let mut pending = Vec::new();
        for d in chunk {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "sluice.id", value: Some(&d.id) })
                .insert(Header { key: "sluice.ts", value: Some(&d.ts) })
                .insert(Header { key: "sluice.ns", value: Some(&d.ns) })
                .insert(Header { key: "sluice.v", value: Some("1") });
            let record = FutureRecord::to(topic).key(&d.key).payload(&d.payload).headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        }
        for p in pending {
            p.await.expect("delivery").expect("ack");
        }
    }
}

async fn indexer(config: IndexerConfig, total: usize, payload_bytes: usize) -> Rate {
    let metrics = Metrics::default();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(pipeline::run(config, metrics.clone(), Health::new(), shutdown.clone()));
    let indexed = || metrics.docs.get_or_create(&vec![("outcome", "indexed".to_owned())]).get();
    let mut first = None;
    let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
    let mut last_report = Instant::now();
    loop {
        let n = indexed();
        if verbose && last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            eprintln!(
                "  t={:>5.1}s indexed={n:>7} in_flight_requests={} in_flight_bytes={:.1}MiB paused={} limit={}",
                started.elapsed().as_secs_f64(),
                metrics.in_flight_requests.get(),
                metrics.in_flight_bytes.get() as f64 / 1048576.0,
                metrics.paused_partitions.get(),
                metrics.concurrency_limit.get()
            );
        }
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n as usize >= total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "indexer bench timed out at {n}/{total}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now();
    let wall = started.elapsed();
    shutdown.cancel();
    task.await.expect("pipeline task").expect("pipeline");
    let (first_at, first_n) = first.expect("progress");
    // Rate over the steady part: documents after the first observation.
    let docs = total - first_n as usize;
    let bytes = payload_bytes * docs / total;
    Rate { docs, bytes, steady: end - first_at, wall }
}

#[tokio::main]
async fn main() {
    if let Ok(level) = std::env::var("BENCH_LOG") {
        sluice_common::telemetry::init(sluice_common::telemetry::LogFormat::Human, &level);
    }
    let brokers: String = env("BENCH_KAFKA", "127.0.0.1:9092".to_owned());
    let es: String = env("BENCH_ES", "http://127.0.0.1:9200".to_owned());
    let n: usize = env("BENCH_DOCS", 300_000);
    let concurrency: usize = env("BENCH_CONCURRENCY", 4);
    let bulk_bytes: usize = env("BENCH_BULK_BYTES", 5 * 1024 * 1024);
    let partitions: u32 = env("BENCH_PARTITIONS", 4);
    let shards: u32 = env("BENCH_SHARDS", 1);
    let rounds: usize = env("BENCH_ROUNDS", 2);
    let run = format!("bench{}", std::process::id());

    let mut config = IndexerConfig::default();
    config.kafka.brokers = vec![brokers.clone()];
    config.kafka.topic = format!("{run}.logs");
    config.kafka.partitions = partitions;
    config.kafka.replication_factor = Some(1);
    config.dead_letter.topic = format!("{run}.dlq");
    config.dead_letter.partitions = 1;
    config.elasticsearch.urls = vec![es.clone()];
    config.elasticsearch.template.replicas = 0;
    config.elasticsearch.template.shards = shards;
    config.elasticsearch.template.refresh_interval = "30s".into();
    config.batch.max_bytes = ByteSize(bulk_bytes as u64);
    config.batch.max_docs = 1_000_000;
    // A batch holds its body plus the original keys/headers (for dead letters): ~1.4× the body.
    config.batch.max_in_flight_bytes = ByteSize((bulk_bytes * 2 * (concurrency + 2)) as u64);
    config.concurrency.min = concurrency;
    config.concurrency.max = concurrency;
    config.concurrency.initial = concurrency;
    setup::create_topics(&config).await.expect("topics");

    let documents = docs(n, &run);
    let payload_bytes: usize = documents.iter().map(|d| d.payload.len()).sum();
    eprintln!(
        "bench: {n} documents, {:.1} MB of JSON ({} B/doc avg), bulk {} bytes, concurrency {concurrency}, {partitions} partitions, {shards} shard(s)",
        payload_bytes as f64 / 1e6,
        payload_bytes / n,
        bulk_bytes
    );
    produce(&brokers, &config.kafka.topic, &documents).await;

    let pool = Arc::new(NodePool::new(&config.elasticsearch).expect("pool"));
    let distribution = pool.detect().await.expect("detect");
    println!("| round | run | docs/s | MB/s (JSON) | steady s | wall s |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // Ceiling: a fresh index under a template identical to the indexer's.
        let mut loader_config = config.elasticsearch.clone();
        loader_config.index = format!("{run}-loader{round}-%Y.%m.%d");
        loader_config.template.name = format!("{run}-loader{round}");
        template::install(&pool, &loader_config, &distribution).await.expect("template");
        let loader_index = format!("{run}-loader{round}-2026.11.27");
        let prebuilt = bodies(&documents, &loader_index, bulk_bytes);
        let c = ceiling(pool.clone(), prebuilt, concurrency, n).await;
        assert_eq!(es_count(&pool, &loader_index).await, n as u64, "ceiling count");
        delete_index(&pool, &loader_index).await;
        // Indexer: a new consumer group reads the topic from the beginning into a fresh index.
        let mut ic = config.clone();
        ic.kafka.group_id = format!("{run}-group{round}");
        ic.elasticsearch.index = format!("{run}-indexer{round}-%Y.%m.%d");
        ic.elasticsearch.template.name = format!("{run}-indexer{round}");
        let i = indexer(ic, n, payload_bytes).await;
        let indexer_index = format!("{run}-indexer{round}-2026.11.27");
        assert_eq!(es_count(&pool, &indexer_index).await, n as u64, "indexer count");
        delete_index(&pool, &indexer_index).await;
        let c_bytes = Rate { bytes: payload_bytes, ..c };
        for (name, r) in [("ceiling (plain _bulk loader)", &c_bytes), ("sluice-indexer (Kafka → ES)", &i)] {
            println!(
                "| {round} | {name} | {:.0} | {:.1} | {:.2} | {:.2} |",
                r.docs_per_s(),
                r.mb_per_s(),
                r.steady.as_secs_f64(),
                r.wall.as_secs_f64()
            );
        }
        ratios.push(i.docs_per_s() / c_bytes.docs_per_s());
    }
    let pct: Vec<String> = ratios.iter().map(|r| format!("{:.0} %", r * 100.0)).collect();
    println!("\nindexer / ceiling (docs/s): {}", pct.join(", "));
    for round in 1..=rounds {
        for kind in ["loader", "indexer"] {
            let _ = pool
                .send(Method::Delete, &format!("/_index_template/{run}-{kind}{round}"), &[], None, None, None)
                .await;
        }
    }
}
