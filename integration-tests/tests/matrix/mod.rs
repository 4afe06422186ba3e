//! Harness of the fault matrix (`fault_matrix.rs`): the real `sluice-shipper`, `sluice-indexer` and
//! `sluice` binaries (`target/<profile>/`, built by `cargo build --workspace --bins`) around real
//! Kafka and Elasticsearch, with `sluice loadgen` writing kubelet-style logs and `sluice verify`
//! judging the result.
//!
//! A [`Pipeline`] owns one row's private names (topic, group, index prefix, template), its temporary
//! pod-log root, the shipper's configuration file and checkpoint, and every process it started
//! (killed on drop, so a failing row leaves nothing running). [`ROWS`] bounds how many rows run at
//! once: each row runs loadgen, a shipper, one or two indexers and often private containers, which a
//! loaded 2-core machine cannot carry for all nine rows together.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sluice_integration_tests::{Search, free_port, unique_name};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::indexer_support::{self, Names};

/// Rows running at once (`SLUICE_MATRIX_PARALLEL` is not read: two is what the machine carries).
pub static ROWS: Semaphore = Semaphore::const_new(2);

/// Takes a row slot; the row runs while the permit lives.
pub async fn row_slot() -> SemaphorePermit<'static> {
    ROWS.acquire().await.expect("the row semaphore is never closed")
}

/// `target/<profile>/<name>`, next to the test executable's `deps/`, refused when older than its
/// sources ([`sluice_integration_tests::binaries`]).
pub fn binary(name: &str) -> PathBuf {
    sluice_integration_tests::binaries::workspace_binary(name)
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics after `timeout` with `what` and
/// the pipeline's state (which side stalled).
pub async fn wait_for<T>(p: &Pipeline, what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("[{}] {what}: not within {timeout:?}; {}", p.row, p.state().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One row's pipeline: names, directories, configuration and processes.
pub struct Pipeline {
    /// Row label for messages (`row1`, …).
    pub row: &'static str,
    pub names: Names,
    pub tmp: tempfile::TempDir,
    /// Pod log root the shipper reads and loadgen writes.
    pub root: PathBuf,
    pub manifest: PathBuf,
    pub brokers: String,
    /// The node `sluice verify` and the counts ask.
    pub search: SearchRef,
    pub shipper_config: PathBuf,
    pub shipper_metrics: u16,
    /// Environment of every indexer of the row (see `indexer_support::env`).
    pub indexer_env: Vec<(String, String)>,
}

/// A search node by URL (the [`Search`] handle stays with the row, which may kill it).
#[derive(Clone)]
pub struct SearchRef {
    pub url: String,
}

impl Pipeline {
    /// Names, directories and configuration for `row` against `brokers` and `search` (the indexer
    /// writes to `es_urls`, the first of which is `search` unless given otherwise). `shipper_extra`
    /// is appended to the shipper's YAML (top-level keys).
    pub fn new(row: &'static str, brokers: &str, search: &Search, es_urls: &[&str], shipper_extra: &str) -> Self {
        let names = Names::new(&format!("fm-{row}"));
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("pods");
        let ckpt = tmp.path().join("ckpt");
        std::fs::create_dir_all(&root).expect("pod log root");
        let shipper_metrics = free_port();
        let shipper_config = tmp.path().join("shipper.yaml");
        let yaml = format!(
            r#"node_name: node-1
output: kafka
kubernetes:
  enabled: false
kafka:
  brokers: [{brokers}]
  topic: {topic}
paths:
  root: {root}
  symlink_dirs: []
checkpoint:
  dir: {ckpt}
  interval: 1s
tail:
  rescan_interval: 500ms
  deleted_file_grace: 10m
multiline:
  - namespaces: ["*"]
    containers: ["*"]
    continuation_pattern: '^\s+at '
metrics:
  listen: 127.0.0.1:{shipper_metrics}
{shipper_extra}"#,
            brokers = brokers.split(',').map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", "),
            topic = names.topic,
            root = root.display(),
            ckpt = ckpt.display(),
        );
        std::fs::write(&shipper_config, yaml).expect("shipper config");
        let kafka = sluice_integration_tests::Kafka::external(brokers.to_owned());
        let mut indexer_env = indexer_support::env(&kafka, search, &names);
        let urls = if es_urls.is_empty() { search.url.clone() } else { es_urls.join(",") };
        indexer_support::set(&mut indexer_env, "SLUICE_ELASTICSEARCH__URLS", &urls);
        indexer_support::set(&mut indexer_env, "SLUICE_ELASTICSEARCH__REQUEST_TIMEOUT", "15s");
        indexer_support::set(&mut indexer_env, "SLUICE_BATCH__MAX_DOCS", "2000");
        let manifest = tmp.path().join("manifest.json");
        Pipeline {
            row,
            names,
            tmp,
            root,
            manifest,
            brokers: brokers.to_owned(),
            search: SearchRef { url: search.url.clone() },
            shipper_config,
            shipper_metrics,
            indexer_env,
        }
    }

    /// Sets `key: value` in the shipper's `kafka:` section (e.g. `message_format`, `v2`).
    pub fn shipper_kafka_option(&self, key: &str, value: &str) {
        let yaml = std::fs::read_to_string(&self.shipper_config).expect("shipper config");
        let anchor = "\n  topic: ";
        assert!(yaml.contains(anchor), "{yaml}");
        let yaml = yaml.replacen(anchor, &format!("\n  {key}: {value}{anchor}"), 1);
        std::fs::write(&self.shipper_config, yaml).expect("shipper config");
    }

    /// Sets an indexer environment variable (`SLUICE_…`).
    pub fn indexer_set(&mut self, key: &str, value: &str) {
        indexer_support::set(&mut self.indexer_env, key, value);
    }

    /// `sluice-indexer setup`: the topics (4 partitions) and the index template.
    pub fn setup(&self) {
        indexer_support::setup(&self.indexer_env);
    }

    /// Starts an indexer replica.
    pub fn indexer(&self, name: &str) -> indexer_support::Indexer {
        indexer_support::Indexer::spawn(&self.indexer_env, &format!("fm-{}-{name}", self.row))
    }

    /// Starts an indexer replica that reaches Elasticsearch at `es_url` (e.g. a [`SlowLink`]).
    pub fn indexer_via(&self, name: &str, es_url: &str) -> indexer_support::Indexer {
        let mut env = self.indexer_env.clone();
        indexer_support::set(&mut env, "SLUICE_ELASTICSEARCH__URLS", es_url);
        indexer_support::Indexer::spawn(&env, &format!("fm-{}-{name}", self.row))
    }

    /// Starts the shipper (log next to the indexer logs).
    pub fn shipper(&self) -> Proc {
        let log = self.log_path("shipper");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("shipper log");
        let child = Command::new(binary("sluice-shipper"))
            .arg("--config")
            .arg(&self.shipper_config)
            // SLUICE_FM_SHIPPER_RUST_LOG: more of the shipper's log when a row is investigated.
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_FM_SHIPPER_RUST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn sluice-shipper");
        Proc { child, metrics_port: self.shipper_metrics, log, name: "shipper" }
    }

    /// Starts `sluice loadgen` writing into the row's pod log root at `rate` records/s (0: as fast
    /// as it can) until stopped: 4 pods × 2 containers (CRI and docker), long lines split into
    /// partials, stack traces, rotation at `rotate_bytes` with gzip, `extra` options appended.
    pub fn loadgen(&self, rate: u32, rotate_bytes: u64, extra: &[&str]) -> Loadgen {
        self.loadgen_with_manifest(rate, rotate_bytes, &self.manifest, extra)
    }

    /// [`Pipeline::loadgen`] with its own manifest (several runs in one pipeline).
    pub fn loadgen_with_manifest(&self, rate: u32, rotate_bytes: u64, manifest: &Path, extra: &[&str]) -> Loadgen {
        let run_id = unique_name("r").replace('-', "");
        let mut cmd = Command::new(binary("sluice"));
        cmd.arg("loadgen")
            .arg(format!("--root={}", self.root.display()))
            .arg(format!("--manifest={}", manifest.display()))
            .arg(format!("--run-id={run_id}"))
            .arg(format!("--rate={rate}"))
            .arg(format!("--rotate-bytes={rotate_bytes}"))
            .args(["--format=mixed", "--manifest-interval=500ms", "--progress=never"])
            .args(
                ["--pods=4", "--containers=2", "--keep-files=30", "--partial-every=400", "--multiline-every=150"]
                    .into_iter()
                    // An option given in `extra` replaces the default (clap refuses it twice).
                    .filter(|d| !extra.iter().any(|e| e.split('=').next() == d.split('=').next())),
            )
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn sluice loadgen");
        Loadgen { child: Some(child), manifest: manifest.to_owned(), started: Instant::now() }
    }

    /// `sluice verify --wait --strict` of the row's loadgen run; returns the JSON report and how long
    /// it took (the drain: from the last line written to every line found).
    pub fn verify(&self) -> (Value, Duration) {
        let start = Instant::now();
        let out = Command::new(binary("sluice"))
            .arg("verify")
            .arg(format!("--manifest={}", self.manifest.display()))
            .arg(format!("--es-url={}", self.search.url))
            .arg(format!("--index={}", self.names.indices()))
            .args(["--wait", "--timeout=600s", "--stable-for=120s", "--poll=1s", "--json", "--strict"])
            .stderr(Stdio::null())
            .output()
            .expect("run sluice verify");
        let took = start.elapsed();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("[{}] verify printed no JSON ({e}): {}", self.row, String::from_utf8_lossy(&out.stdout))
        });
        (report, took)
    }

    /// Asserts the promise on a verify report: every record exactly once, partials and stack traces
    /// whole.
    pub fn assert_exactly_once(&self, r: &Value, expected: u64) {
        let row = self.row;
        assert_eq!(r["expected"], expected, "[{row}] the manifest's record count: {r:#}");
        assert!(expected > 0, "[{row}] nothing was written");
        assert_eq!(r["lost"], 0, "[{row}] lost records: {r:#}");
        assert_eq!(r["duplicated_tokens"], 0, "[{row}] duplicates by token: {r:#}");
        assert_eq!(r["duplicated_ids"], 0, "[{row}] duplicates by _id: {r:#}");
        assert_eq!(r["partials_unmerged"], 0, "[{row}] partials not merged: {r:#}");
        assert_eq!(r["multiline_split"], 0, "[{row}] stack traces split: {r:#}");
        assert_eq!(r["found"], expected, "[{row}] {r:#}");
        assert!(r["expected_partial"].as_u64().unwrap_or(0) > 0, "[{row}] the run had no long lines: {r:#}");
    }

    /// Documents in the row's indices (`None` while the node does not answer).
    pub async fn es_count(&self) -> Option<u64> {
        es_get(&self.search.url, &format!("/{}/_refresh", self.names.indices())).await;
        es_get(&self.search.url, &format!("/{}/_count", self.names.indices())).await?["count"].as_u64()
    }

    /// Version conflicts (409 on `create`) Elasticsearch counted in the row's indices: every
    /// re-delivered record. Counters live with the shards: a restarted or killed node forgets its own.
    pub async fn es_conflicts(&self) -> Option<u64> {
        let stats = es_get(&self.search.url, &format!("/{}/_stats/indexing", self.names.indices())).await?;
        stats["_all"]["total"]["indexing"]["index_failed_due_to_version_conflict"].as_u64()
    }

    /// Records in the topic (sum of end offsets) and the group's lag (ends − committed); `None`
    /// while the brokers do not answer.
    pub async fn kafka_state(&self) -> Option<(i64, i64)> {
        let config = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.names.group)
            .set("socket.timeout.ms", "3000")
            .clone();
        let topic = self.names.topic.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().ok()?;
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(3)).ok()?;
            let partitions = metadata.topics().first()?.partitions().len() as i32;
            let mut tpl = TopicPartitionList::new();
            let mut end = 0;
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
                end += consumer.fetch_watermarks(&topic, p, Duration::from_secs(3)).ok()?.1;
            }
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(3)).ok()?;
            let done: i64 = committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum();
            Some((end, end - done))
        })
        .await
        .ok()
        .flatten()
    }

    /// Records written so far (from the manifest loadgen rewrites every 500 ms).
    pub fn written(&self) -> u64 {
        manifest_totals(&self.manifest)["records"].as_u64().unwrap_or(0)
    }

    /// Rotations so far (from the manifest).
    pub fn rotations(&self) -> u64 {
        manifest_totals(&self.manifest)["rotations"].as_u64().unwrap_or(0)
    }

    /// The state of every stage, for timeout messages.
    pub async fn state(&self) -> String {
        format!(
            "written {}, in Kafka / lag {:?}, in Elasticsearch {:?}",
            self.written(),
            self.kafka_state().await,
            self.es_count().await
        )
    }

    fn log_path(&self, name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("test executable");
        exe.parent().expect("deps dir").join(format!("{}.log", unique_name(&format!("fm-{}-{name}", self.row))))
    }

    /// Deletes the row's indices and template (the topics die with their broker or stay small).
    pub async fn cleanup(&self) {
        es_request(&self.search.url, "DELETE", &format!("/{}", self.names.indices())).await;
        es_request(&self.search.url, "DELETE", &format!("/_index_template/{}", self.names.template)).await;
    }

    /// Prints the row's figures (for docs/reliability.md) in one line.
    pub fn report(&self, figures: &[(&str, String)]) {
        let line = figures.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        eprintln!("[fault-matrix] {} {line}", self.row);
        if let Ok(dir) = std::env::var("SLUICE_MATRIX_REPORT") {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir).expect("report file");
            let _ = writeln!(f, "{} {line}", self.row);
        }
    }
}

fn manifest_totals(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map_or(Value::Null, |m| m["totals"].clone())
}

/// A running `sluice loadgen`; SIGTERM ends it with a finished manifest.
pub struct Loadgen {
    child: Option<Child>,
    pub manifest: PathBuf,
    pub started: Instant,
}

impl Loadgen {
    /// Stops the run (SIGTERM), waits for its summary and returns it.
    pub fn stop(&mut self) -> Value {
        let mut child = self.child.take().expect("loadgen already stopped");
        assert!(child.try_wait().expect("try_wait").is_none(), "loadgen exited early");
        signal(child.id(), "TERM");
        let mut out = String::new();
        child.stdout.take().expect("piped stdout").read_to_string(&mut out).expect("loadgen summary");
        let status = child.wait().expect("wait loadgen");
        assert!(status.success(), "loadgen failed: {status}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("loadgen summary ({e}): {out}"))
    }

    /// Whether it still writes.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Sluice process (the shipper) started by the test: killed when dropped.
pub struct Proc {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub name: &'static str,
}

impl Proc {
    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not stop within {timeout:?} after SIGTERM:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sum of the samples of `prefix` (an exact name, with labels or not) in `/metrics`, see
    /// `indexer_support::metric_sum`: 0 when unreachable or while a declared metric has no
    /// sample; a name no binary declares fails the test.
    pub fn metric(&self, prefix: &str) -> f64 {
        let body = http_get(self.metrics_port, "/metrics").unwrap_or_default();
        indexer_support::metric_sum(&body, prefix)
    }

    /// Whether `/metrics` answers.
    pub fn serving(&self) -> bool {
        http_get(self.metrics_port, "/metrics").is_some()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

/// GET (POST for `_refresh`) returning the JSON answer; `None` without an answer.
pub async fn es_get(url: &str, path: &str) -> Option<Value> {
    let method = if path.ends_with("/_refresh") { "POST" } else { "GET" };
    es_request(url, method, path).await
}

async fn es_request(url: &str, method: &str, path: &str) -> Option<Value> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok()?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
    let response = client.request(method, format!("{url}{path}")).send().await.ok()?;
    response.json().await.ok()
}

/// A TCP hop in front of a real node that passes requests on at once and holds every reply for
/// `delay`: a `_bulk` sent through it is applied by the node but not yet answered for that long.
/// Row 6 kills its victim inside that window, so "mid-batch" is made certain rather than left to
/// how often a gauge is sampled (a `_bulk` to a quiet node takes milliseconds: sampling the
/// in-flight gauge every 200 ms once found none within a minute). Not a mock: every byte goes to and
/// comes from the real node, only later.
pub struct SlowLink {
    /// `http://127.0.0.1:<port>`: give this to the process whose replies are to be late.
    pub url: String,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// Listens on a free port and forwards every connection to the host and port of `target`.
    pub async fn start(target: &str, delay: Duration) -> SlowLink {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let target = reqwest::Url::parse(target).expect("target url");
        let upstream =
            format!("{}:{}", target.host_str().expect("host"), target.port_or_known_default().expect("port"));
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the slow link");
        let held = Arc::new(AtomicUsize::new(0));
        let counter = held.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting it closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let held = counter.clone();
                connections.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (mut client_rx, client_tx) = client.into_split();
                    let (server_rx, mut server_tx) = server.into_split();
                    let requests = async move {
                        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut server_tx).await;
                    };
                    tokio::join!(requests, Self::late_replies(server_rx, client_tx, delay, held));
                });
            }
        });
        SlowLink { url: format!("http://127.0.0.1:{port}"), held, task }
    }

    /// Bytes of replies the node has sent and the link still holds back.
    pub fn held_bytes(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reads replies as they come and writes each one `delay` after it arrived, in order.
    async fn late_replies(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
        held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
        let counter = held.clone();
        let reader = async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                counter.fetch_add(n, SeqCst);
                if tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        };
        let writer = async move {
            while let Some((arrived, bytes)) = rx.recv().await {
                tokio::time::sleep_until(arrived + delay).await;
                let sent = to.write_all(&bytes).await;
                held.fetch_sub(bytes.len(), SeqCst);
                if sent.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        };
        tokio::join!(reader, writer);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
