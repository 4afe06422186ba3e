//! Kafka → Elasticsearch throughput of the indexer, side by side with the Elasticsearch ceiling.
//!
//! ```text
//! cargo build --release -p sluice-indexer --example bench && target/release/examples/bench
//! ```
//! Environment (defaults in brackets): `BENCH_KAFKA` [127.0.0.1:9092], `BENCH_ES`
//! [http://127.0.0.1:9200], `BENCH_DOCS` [600000], `BENCH_CONCURRENCY` [4], `BENCH_BULK_BYTES`
//! [5242880], `BENCH_PARTITIONS` [4], `BENCH_SHARDS` [1], `BENCH_ROUNDS` [4] measured rounds,
//! `BENCH_WARMUP` [1] discarded rounds, `BENCH_GAP_MS` [3000] idle time before every run,
//! `BENCH_VERBOSE` (print the indexer's in-flight requests/bytes and pauses every 500 ms),
//! `BENCH_LOG` (a tracing filter for the pipeline's logs).
//!
//! Every round runs both on the same documents, into fresh indices made by the same template
//! (replicas 0, refresh 30 s), deleted afterwards:
//! - **ceiling** — a plain loader: the documents pre-built into `_bulk` bodies of
//!   `BENCH_BULK_BYTES` (same action lines, same `filter_path`, same HTTP client), sent by
//!   `BENCH_CONCURRENCY` tasks as fast as Elasticsearch answers.
//! - **indexer** — the real pipeline (library `pipeline::run`, in this process: consumer group,
//!   batching from raw payloads, per-item classification, settle, commit) draining the same
//!   documents from a Kafka topic (produced once beforehand, lz4, `BENCH_PARTITIONS` partitions) with
//!   `batch.max_bytes = BENCH_BULK_BYTES` and its concurrency pinned to `BENCH_CONCURRENCY`.
//!
//! Methodology: the first `BENCH_WARMUP` rounds are discarded (Elasticsearch's JIT and caches are
//! cold in the first minute: the first ceiling is typically far below the later ones); the order of
//! loader and indexer alternates per round (odd rounds: loader first) so that neither always meets
//! the merges and GC left behind by the other; before every run the bench waits until the machine
//! is quiet. Both rates are measured the same way, by sampling the settled-document counter every
//! 2 ms: the headline rate is from 5 % to 95 % of the documents settled (steady state: no ramp-up,
//! no consumer-group join, no tail — the indexer's last partial batch waits `batch.linger`, which a
//! stream never notices but a finite drain does); the rate from the first documents settled to the
//! last is printed too. The ratio is taken within each round; the summary is the median and mean
//! over the measured rounds. The table also shows the share of the request slots that were busy,
//! the machine's CPU use and the bench process's CPU time (loader vs the whole indexer pipeline).
//! Printed as Markdown, ready to paste into BENCHMARKS.md; progress goes to stderr.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::http::Method;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
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

/// Documents of 64 pods' log files, interleaved. Ids have the shipper's form
/// (`<32-hex generation>-<byte offset>`, `shipper::record::record_id`): one random-looking prefix
/// per file, so neither the loader's order nor the indexer's (partition-interleaved) sends
/// Elasticsearch ids in sorted order — Lucene looks sequential ids up more cheaply.
fn docs(n: usize, run: &str) -> Vec<Doc> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let generations: Vec<u128> = (0..64u64)
        .map(|pod| {
            let h = |salt: u64| BuildHasherDefault::<DefaultHasher>::default().hash_one((run, pod, salt));
            (u128::from(h(0)) << 64) | u128::from(h(1))
        })
        .collect();
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
            let id = format!("{:032x}-{}", generations[pod], i * 180);
            Doc { id, ts, ns, key: format!("6f1c{pod:04}/web"), payload }
        })
        .collect()
}

/// `_bulk` bodies of at most `max_bytes`, with the number of documents in each.
fn bodies(docs: &[Doc], index: &str, max_bytes: usize) -> Vec<(Bytes, u64)> {
    let mut out = Vec::new();
    let mut body = Vec::with_capacity(max_bytes + 4096);
    let mut count = 0;
    for d in docs {
        let line = format!("{{\"create\":{{\"_index\":\"{index}\",\"_id\":\"{}\"}}}}\n", d.id);
        if !body.is_empty() && body.len() + line.len() + d.payload.len() + 1 > max_bytes {
            out.push((Bytes::from(std::mem::replace(&mut body, Vec::with_capacity(max_bytes + 4096))), count));
            count = 0;
        }
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(d.payload.as_bytes());
        body.push(b'\n');
        count += 1;
    }
    if !body.is_empty() {
        out.push((Bytes::from(body), count));
    }
    out
}

/// Machine-wide CPU time (busy, total) in clock ticks, from `/proc/stat`.
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU time of this process (user + system) in clock ticks, from `/proc/self/stat`.
fn process_cpu() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime/stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// CPU time (user + system, clock ticks) of this process's threads, by thread name.
fn thread_cpu() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let f: Vec<u64> = stat[close + 1..].split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        *out.entry(name).or_default() += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    }
    out
}

/// CPU time (clock ticks) of the processes whose command line contains `needle` (the Kafka broker:
/// `kafka.Kafka`; Elasticsearch: `org.elasticsearch.bootstrap`).
fn processes_cpu(needle: &str) -> u64 {
    let mut total = 0;
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(proc.path().join("cmdline")) else { continue };
        if !cmdline.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(proc.path().join("stat")) else { continue };
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        total += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    }
    total
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// docs/s from 5 % to 95 % of the documents settled.
    mid: f64,
    /// docs/s from the first documents settled to the last.
    full: f64,
    wall: Duration,
    /// Machine CPU busy share during the run (all cores), 0–1.
    machine_busy: f64,
    /// CPU seconds of this process (the loader or the indexer pipeline) during the run.
    own_cpu: f64,
    /// Share of the request slots busy from 5 % to 95 %, 0–1.
    slots_busy: f64,
    /// CPU seconds of the Kafka broker and of Elasticsearch (processes on this machine).
    kafka_cpu: f64,
    es_cpu: f64,
}

impl Rate {
    fn docs_per_s(&self) -> f64 {
        self.mid
    }
}

/// Samples `settled()` every 2 ms until it reaches `total`. Both runs are measured by this
/// function, over two windows: from 5 % to 95 % of the documents settled (the steady state: no
/// ramp-up, no tail — the indexer's last, partial batch waits for `batch.linger`, which a stream
/// never notices but a finite drain does), and from the first documents settled to the last.
/// Also integrates `in_flight()` over the 5–95 % window: the share of the `concurrency` request
/// slots that were busy (the loader keeps them busy but for the gaps between its requests).
async fn watch(
    what: &str,
    total: u64,
    started: Instant,
    settled: impl Fn() -> u64,
    in_flight: impl Fn() -> i64,
    verbose: impl Fn(f64, u64) -> Option<String>,
) -> Window {
    let mut first = None;
    let (mut from, mut to) = (None, None);
    let mut last_report = Instant::now();
    let mut last = Instant::now();
    let mut slot_time = 0.0;
    loop {
        let n = settled();
        let now = Instant::now();
        if from.is_some() && to.is_none() {
            slot_time += in_flight() as f64 * (now - last).as_secs_f64();
        }
        last = now;
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n * 20 >= total && from.is_none() {
            from = Some((now, n));
        }
        if n * 20 >= total * 19 && to.is_none() {
            to = Some((now, n));
        }
        if n >= total {
            let (first, from, to) = (first.expect("progress"), from.expect("5 %"), to.expect("95 %"));
            return Window { first, from, to, end: (now, n), slot_time };
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = now;
            if let Some(line) = verbose(started.elapsed().as_secs_f64(), n) {
                eprintln!("  {what} {line}");
            }
        }
        assert!(started.elapsed() < Duration::from_secs(900), "{what} timed out at {n}/{total}");
        tokio::time::sleep(Duration::from_millis(2)).await;
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

/// Observations `(time, settled documents)` of a run.
struct Window {
    first: (Instant, u64),
    from: (Instant, u64),
    to: (Instant, u64),
    end: (Instant, u64),
    /// ∫ requests in flight dt from `from` to `to`.
    slot_time: f64,
}

fn per_s((t0, n0): (Instant, u64), (t1, n1): (Instant, u64)) -> f64 {
    (n1 - n0) as f64 / (t1 - t0).as_secs_f64().max(1e-9)
}

struct Clock {
    started: Instant,
    cpu: (u64, u64),
    own: u64,
    kafka: u64,
    es: u64,
}

impl Clock {
    fn start() -> Self {
        Clock {
            started: Instant::now(),
            cpu: machine_cpu(),
            own: process_cpu(),
            kafka: processes_cpu("kafka.Kafka"),
            es: processes_cpu("org.elasticsearch.bootstrap"),
        }
    }

    fn rate(&self, concurrency: usize, w: Window) -> Rate {
        let (busy, all) = machine_cpu();
        let ticks = 100.0; // USER_HZ on Linux
        Rate {
            mid: per_s(w.from, w.to),
            full: per_s(w.first, w.end),
            slots_busy: w.slot_time / (w.to.0 - w.from.0).as_secs_f64().max(1e-9) / concurrency as f64,
            wall: w.end.0 - self.started,
            machine_busy: (busy - self.cpu.0) as f64 / (all - self.cpu.1).max(1) as f64,
            own_cpu: (process_cpu() - self.own) as f64 / ticks,
            kafka_cpu: processes_cpu("kafka.Kafka").saturating_sub(self.kafka) as f64 / ticks,
            es_cpu: processes_cpu("org.elasticsearch.bootstrap").saturating_sub(self.es) as f64 / ticks,
        }
    }
}

/// Waits `gap`, then until the machine is quiet (CPU under 30 % busy over 500 ms: Elasticsearch's
/// merges and GC after the previous run are over), at most 30 s more.
async fn quiesce(gap: Duration) {
    tokio::time::sleep(gap).await;
    let started = Instant::now();
    loop {
        let (b0, t0) = machine_cpu();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (b1, t1) = machine_cpu();
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.3 || started.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "bench: machine {:.0} % busy after {:.1} s of waiting",
                busy * 100.0,
                started.elapsed().as_secs_f64()
            );
            return;
        }
    }
}

/// The plain loader: pre-built bodies, `concurrency` senders, no per-item handling beyond a check.
async fn ceiling(pool: Arc<NodePool>, bodies: Vec<(Bytes, u64)>, concurrency: usize, total: u64) -> Rate {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let settled = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicI64::new(0));
    let clock = Clock::start();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, bodies, next, settled, in_flight) =
            (pool.clone(), bodies.clone(), next.clone(), settled.clone(), in_flight.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, count)) = bodies.get(i) else { return };
                loop {
                    in_flight.fetch_add(1, Ordering::Relaxed);
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
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let ok = reply.status == 200 && !reply.body.windows(13).any(|w| w == b"\"errors\":true");
                    if ok {
                        settled.fetch_add(*count, Ordering::Relaxed);
                        break;
                    }
                    eprintln!("ceiling: bulk answered {} with errors; resending", reply.status);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    let window = watch(
        "loader",
        total,
        clock.started,
        || settled.load(Ordering::Relaxed),
        || in_flight.load(Ordering::Relaxed),
        |_, _| None,
    )
    .await;
    let rate = clock.rate(concurrency, window);
    for t in tasks {
        t.await.expect("loader task");
    }
    rate
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

async fn indexer(config: IndexerConfig, total: u64, concurrency: usize) -> Rate {
    let metrics = Metrics::default();
    let shutdown = CancellationToken::new();
    let clock = Clock::start();
    let task = tokio::spawn(pipeline::run(config, metrics.clone(), Health::new(), shutdown.clone()));
    let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
    let indexed = || metrics.docs.get_or_create(&vec![("outcome", "indexed".to_owned())]).get();
    let report = |t: f64, n: u64| {
        verbose.then(|| {
            format!(
                "t={t:>5.1}s indexed={n:>7} in_flight_requests={} in_flight_bytes={:.1}MiB paused={} limit={}",
                metrics.in_flight_requests.get(),
                metrics.in_flight_bytes.get() as f64 / 1048576.0,
                metrics.paused_partitions.get(),
                metrics.concurrency_limit.get()
            )
        })
    };
    let threads = thread_cpu();
    let window = watch("indexer", total, clock.started, indexed, || metrics.in_flight_requests.get(), report).await;
    let rate = clock.rate(concurrency, window);
    if verbose {
        // Threads that ended during the run are missing (none of the pipeline's do).
        let after = thread_cpu();
        let spent: Vec<String> = after
            .iter()
            .filter_map(|(name, t)| {
                let d = t.saturating_sub(threads.get(name).copied().unwrap_or(0));
                (d > 0).then(|| format!("{name} {:.2}", d as f64 / 100.0))
            })
            .collect();
        eprintln!("  indexer CPU s by thread: {}", spent.join(", "));
    }
    shutdown.cancel();
    task.await.expect("pipeline task").expect("pipeline");
    rate
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    Loader,
    Indexer,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[tokio::main]
async fn main() {
    if let Ok(level) = std::env::var("BENCH_LOG") {
        sluice_common::telemetry::init(sluice_common::telemetry::LogFormat::Human, &level);
    }
    let brokers: String = env("BENCH_KAFKA", "127.0.0.1:9092".to_owned());
    let es: String = env("BENCH_ES", "http://127.0.0.1:9200".to_owned());
    let n: usize = env("BENCH_DOCS", 600_000);
    let concurrency: usize = env("BENCH_CONCURRENCY", 4);
    let bulk_bytes: usize = env("BENCH_BULK_BYTES", 5 * 1024 * 1024);
    let partitions: u32 = env("BENCH_PARTITIONS", 4);
    let shards: u32 = env("BENCH_SHARDS", 1);
    let rounds: usize = env("BENCH_ROUNDS", 4);
    let warmup: usize = env("BENCH_WARMUP", 1);
    let gap = Duration::from_millis(env("BENCH_GAP_MS", 3000));
    let run = format!("bench{}", std::process::id());
    let total = n as u64;

    let mut config = IndexerConfig::default();
    config.kafka.brokers = vec![brokers.clone()];
    config.kafka.topic = format!("{run}.logs");
    config.kafka.partitions = partitions;
    config.kafka.replication_factor = Some(1);
    config.dead_letter.topic = format!("{run}.dlq");
    config.dead_letter.partitions = 1;
    config.elasticsearch.urls = vec![es.as_str().into()];
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
    let mb_per_doc = payload_bytes as f64 / 1e6 / n as f64;
    eprintln!("bench: producing {n} documents to {} ...", config.kafka.topic);
    produce(&brokers, &config.kafka.topic, &documents).await;

    let pool = Arc::new(NodePool::new(&config.elasticsearch).expect("pool"));
    let distribution = pool.detect().await.expect("detect");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "- {} {}; {cores} cores; {n} documents, {:.1} MB of JSON ({} B/doc avg); bulk {bulk_bytes} bytes; \
         concurrency {concurrency}; {partitions} partitions; {shards} shard(s), 0 replicas; \
         {warmup} warm-up round(s) discarded, {rounds} measured; load average at start: {}",
        distribution.name(),
        distribution.version(),
        payload_bytes as f64 / 1e6,
        payload_bytes / n,
        load_average()
    );
    println!();
    println!(
        "| round | first | ceiling docs/s | indexer docs/s | ceiling MB/s | indexer MB/s | indexer / ceiling (5–95 %) \
         | first→last settled | indexer wall s | request slots busy ceiling / indexer \
         | CPU busy ceiling / indexer | bench-process CPU s ceiling / indexer | load (1 min) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let (mut ratios, mut full_ratios) = (Vec::new(), Vec::new());
    let (mut ceilings, mut indexers) = (Vec::new(), Vec::new());
    for round in 0..warmup + rounds {
        let measured = round >= warmup;
        let label = if measured { format!("{}", round - warmup + 1) } else { format!("warm-up {}", round + 1) };
        // Alternate the order over the measured rounds: 1, 3, … loader first; 2, 4, … indexer first.
        let order = if (round - warmup.min(round)) % 2 == 0 || !measured {
            [Run::Loader, Run::Indexer]
        } else {
            [Run::Indexer, Run::Loader]
        };
        let mut loader_rate = None;
        let mut indexer_rate = None;
        for which in order {
            quiesce(gap).await;
            match which {
                Run::Loader => {
                    // A fresh index under a template identical to the indexer's.
                    let mut loader_config = config.elasticsearch.clone();
                    loader_config.index = format!("{run}-loader{round}-%Y.%m.%d");
                    loader_config.template.name = format!("{run}-loader{round}");
                    template::install(&pool, &loader_config, &distribution).await.expect("template");
                    let loader_index = format!("{run}-loader{round}-2026.11.27");
                    let prebuilt = bodies(&documents, &loader_index, bulk_bytes);
                    eprintln!("bench: round {label}: ceiling (plain _bulk loader) ...");
                    let r = ceiling(pool.clone(), prebuilt, concurrency, total).await;
                    assert_eq!(es_count(&pool, &loader_index).await, total, "ceiling count");
                    delete_index(&pool, &loader_index).await;
                    loader_rate = Some(r);
                }
                Run::Indexer => {
                    // A new consumer group reads the topic from the beginning into a fresh index.
                    let mut ic = config.clone();
                    ic.kafka.group_id = format!("{run}-group{round}");
                    ic.elasticsearch.index = format!("{run}-indexer{round}-%Y.%m.%d");
                    ic.elasticsearch.template.name = format!("{run}-indexer{round}");
                    eprintln!("bench: round {label}: sluice-indexer (Kafka → ES) ...");
                    let r = indexer(ic, total, concurrency).await;
                    let indexer_index = format!("{run}-indexer{round}-2026.11.27");
                    assert_eq!(es_count(&pool, &indexer_index).await, total, "indexer count");
                    delete_index(&pool, &indexer_index).await;
                    indexer_rate = Some(r);
                }
            }
        }
        let (c, i) = (loader_rate.expect("loader ran"), indexer_rate.expect("indexer ran"));
        let ratio = i.docs_per_s() / c.docs_per_s();
        let first = if order[0] == Run::Loader { "ceiling" } else { "indexer" };
        let line = format!(
            "| {label} | {first} | {:.0} | {:.0} | {:.1} | {:.1} | **{:.0} %** | {:.0} % | {:.2} | {:.0} % / {:.0} % \
             | {:.0} % / {:.0} % | {:.1} / {:.1} | {} |",
            c.docs_per_s(),
            i.docs_per_s(),
            c.docs_per_s() * mb_per_doc,
            i.docs_per_s() * mb_per_doc,
            ratio * 100.0,
            i.full / c.full * 100.0,
            i.wall.as_secs_f64(),
            c.slots_busy * 100.0,
            i.slots_busy * 100.0,
            c.machine_busy * 100.0,
            i.machine_busy * 100.0,
            c.own_cpu,
            i.own_cpu,
            load_average().split_whitespace().next().unwrap_or("?")
        );
        eprintln!(
            "bench: round {label}: CPU s (per 100k docs) ceiling / indexer: Elasticsearch {:.2} / {:.2}, Kafka broker \
             {:.2} / {:.2}, bench process {:.2} / {:.2}",
            c.es_cpu * 1e5 / n as f64,
            i.es_cpu * 1e5 / n as f64,
            c.kafka_cpu * 1e5 / n as f64,
            i.kafka_cpu * 1e5 / n as f64,
            c.own_cpu * 1e5 / n as f64,
            i.own_cpu * 1e5 / n as f64,
        );
        if measured {
            println!("{line}");
            ratios.push(ratio);
            full_ratios.push(i.full / c.full);
            ceilings.push(c.docs_per_s());
            indexers.push(i.docs_per_s());
        } else {
            // Discarded, shown struck through so that the table still tells the whole story.
            println!("{}", line.replace("**", "").replacen("| warm-up", "| ~~warm-up", 1).replacen(" | ", "~~ | ", 1));
        }
    }
    let pct = |v: f64| format!("{:.0} %", v * 100.0);
    println!();
    println!(
        "**Indexer / ceiling (5–95 % window) over {rounds} measured rounds: median {}, mean {} (min {}, max {}); per round {}.** \
         Median docs/s: ceiling {:.0}, indexer {:.0}; median MB/s: ceiling {:.1}, indexer {:.1}. \
         First→last settled: median {}, mean {}. Load average at the end: {}.",
        pct(median(&ratios)),
        pct(mean(&ratios)),
        pct(ratios.iter().copied().fold(f64::INFINITY, f64::min)),
        pct(ratios.iter().copied().fold(0.0, f64::max)),
        ratios.iter().map(|r| pct(*r)).collect::<Vec<_>>().join(", "),
        median(&ceilings),
        median(&indexers),
        median(&ceilings) * mb_per_doc,
        median(&indexers) * mb_per_doc,
        pct(median(&full_ratios)),
        pct(mean(&full_ratios)),
        load_average()
    );
    for round in 0..warmup + rounds {
        for kind in ["loader", "indexer"] {
            let _ = pool
                .send(Method::Delete, &format!("/_index_template/{run}-{kind}{round}"), &[], None, None, None)
                .await;
        }
    }
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin client");
    let topics = [config.kafka.topic.as_str(), config.dead_letter.topic.as_str()];
    if let Err(err) = admin.delete_topics(&topics, &AdminOptions::new()).await {
        eprintln!("bench: cannot delete the bench topics: {err}");
    }
}
