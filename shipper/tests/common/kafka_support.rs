//! The real `sluice-shipper` binary against a real Kafka broker: a topic [`Collector`], the test's
//! directories and YAML configuration ([`Setup`]), `/metrics` scraping and SIGTERM.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_integration_tests::{free_port, metric_names, unique_name};
use sluice_shipper::sink::Collected;

use super::{Rec, decode};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice-shipper");

/// One record as consumed: a contract-v1 message, or one record of a contract-v2 message with
/// the headers and document a v1 message of it would have (`sluice.v` stays `2`).
#[derive(Debug, Clone)]
pub struct Msg {
    pub key: String,
    pub headers: HashMap<String, String>,
    pub value: Vec<u8>,
    /// Records in the Kafka message this record came in (1 for v1).
    pub batch: usize,
    /// The `sluice.ts` header of that message (for v2, its first record's timestamp).
    pub message_ts: String,
}

/// The records of one consumed message (see [`Msg`]); a v2 value that does not decode fails the test.
fn expand(key: String, headers: HashMap<String, String>, value: &[u8]) -> Vec<Msg> {
    let message_ts = headers.get("sluice.ts").cloned().unwrap_or_default();
    if headers.get("sluice.v").map(String::as_str) != Some("2") {
        return vec![Msg { key, headers, value: value.to_vec(), batch: 1, message_ts }];
    }
    let decoded = sluice_common::message::decode(value).expect("a contract-v2 value");
    let batch = decoded.records.len();
    decoded
        .records
        .iter()
        .map(|r| {
            let mut doc = Vec::new();
            r.write_document(&decoded.frame, &mut doc);
            let mut h = headers.clone();
            h.insert("sluice.id".into(), r.id.to_string());
            h.insert("sluice.ts".into(), r.timestamp.to_string());
            Msg { key: key.clone(), headers: h, value: doc, batch, message_ts: message_ts.clone() }
        })
        .collect()
}

impl Msg {
    pub fn rec(&self) -> Rec {
        decode(&Collected { id: self.headers["sluice.id"].clone(), key: self.key.clone(), value: self.value.clone() })
    }

    /// The document.
    pub fn doc(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("a JSON document")
    }
}

/// Reads a topic from the beginning on a background thread, keeping every message.
///
/// A librdkafka consumer's fetching can stay stuck after its broker restarts or thaws: a CI run saw
/// one stop at 7 200 of 30 000 records for 180 s while a new client read all 30 000 from the same
/// topic at once. So after [`Collector::IDLE`] without a message the collector replaces its client
/// with a new one that goes on from the next offset of each partition (records are counted by
/// distinct id, so reading one twice would be harmless too).
pub struct Collector {
    msgs: Arc<Mutex<Vec<Msg>>>,
    clients: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A consumer of `partitions` partitions of `topic`, each from `next[p]` or the beginning.
fn collector_client(bootstrap: &str, topic: &str, partitions: i32, next: &HashMap<i32, i64>) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("collector"))
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000")
        // After a broker restart an offset reset must re-read, never skip to the end (records
        // are counted by distinct id, so re-reading is harmless).
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let offset = next.get(&p).map_or(Offset::Beginning, |&o| Offset::Offset(o));
        tpl.add_partition_offset(topic, p, offset).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

impl Collector {
    /// How long the collector waits for a message before it replaces its client.
    pub const IDLE: Duration = Duration::from_secs(5);

    pub fn start(bootstrap: &str, topic: &str) -> Self {
        let partitions = {
            let probe = collector_client(bootstrap, topic, 0, &HashMap::new());
            let md = probe.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
            md.topics()[0].partitions().len() as i32
        };
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut consumer = collector_client(bootstrap, topic, partitions, &HashMap::new());
        let msgs: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let clients = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = {
            let (msgs, clients, stop) = (msgs.clone(), clients.clone(), stop.clone());
            let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
            std::thread::spawn(move || {
                let mut next: HashMap<i32, i64> = HashMap::new();
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    // Errors while a dedicated broker is stopped are expected; keep polling.
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        last = Instant::now();
                        next.insert(m.partition(), m.offset() + 1);
                        let headers = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| {
                                        (
                                            h.key.to_owned(),
                                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        let records = expand(key, headers, m.payload().unwrap_or_default());
                        msgs.lock().unwrap().extend(records);
                    } else if last.elapsed() >= Collector::IDLE {
                        consumer = collector_client(&bootstrap, &topic, partitions, &next);
                        clients.fetch_add(1, Ordering::Relaxed);
                        last = Instant::now();
                    }
                }
            })
        };
        Collector { msgs, clients, stop, thread: Some(thread) }
    }

    /// Clients the collector used so far (1, plus one per replacement after [`Collector::IDLE`]).
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Records consumed (a v2 message counts its records), re-sent ones included.
    pub fn count(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }

    pub fn unique(&self) -> usize {
        let msgs = self.msgs.lock().unwrap();
        msgs.iter()
            .map(|m| m.headers.get("sluice.id").cloned().unwrap_or_default())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Waits until `n` distinct record ids arrived.
    pub fn wait_unique(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.unique() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records arrived in Kafka within {timeout:?}",
                self.unique()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until at least `n` messages match `pred`; returns the matching ones.
    pub fn wait_matching(&self, n: usize, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Msg> = self.messages().into_iter().filter(|m| pred(m)).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} matching records arrived within {timeout:?}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test's directories and shipper configuration.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub ckpt: PathBuf,
    pub config: PathBuf,
    pub metrics_port: u16,
}

impl Setup {
    /// Node `node-1`, `kubernetes.enabled: false`, then `extra` (YAML, top-level keys).
    pub fn new(bootstrap: &str, topic: &str, extra: &str) -> Self {
        Setup::with_node(bootstrap, topic, "node-1", &format!("kubernetes:\n  enabled: false\n{extra}"))
    }

    /// Node `node`, then `extra` (YAML, top-level keys; must include `kubernetes`, or the default
    /// in-cluster configuration is used).
    pub fn with_node(bootstrap: &str, topic: &str, node: &str, extra: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods");
        let ckpt = tmp.path().join("ckpt");
        fs::create_dir_all(&root).unwrap();
        let metrics_port = free_port();
        let config = tmp.path().join("shipper.yaml");
        fs::write(
            &config,
            format!(
                "node_name: {node}\noutput: kafka\nkafka:\n  brokers: [\"{bootstrap}\"]\n  topic: {topic}\n  delivery_timeout: 15s\npaths:\n  root: {}\n  symlink_dirs: []\ncheckpoint:\n  dir: {}\n  interval: 200ms\ntail:\n  rescan_interval: 200ms\n  rotate_wait: 500ms\n  deleted_file_grace: 10m\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n{extra}",
                root.display(),
                ckpt.display()
            ),
        )
        .unwrap();
        Setup { tmp, root, ckpt, config, metrics_port }
    }

    /// Adds `key: value` to the `kafka:` section of the configuration (e.g. `message_format`, `v2`).
    pub fn kafka_option(&self, key: &str, value: &str) {
        let text = fs::read_to_string(&self.config).unwrap();
        let anchor = "  delivery_timeout: ";
        assert!(text.contains(anchor), "{text}");
        fs::write(&self.config, text.replacen(anchor, &format!("  {key}: {value}\n{anchor}"), 1)).unwrap();
    }

    /// Starts the shipper, its log on the test's stderr.
    pub fn spawn(&self) -> Child {
        self.command().stderr(Stdio::inherit()).spawn().unwrap()
    }

    /// Starts the shipper with its log (stderr) appended to `log`.
    pub fn spawn_logging_to(&self, log: &Path) -> Child {
        let file = fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        self.command().stderr(Stdio::from(file)).spawn().unwrap()
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config).arg("--log-level").arg("warn").stdout(Stdio::null());
        c
    }

    /// The value of one metric series (exact name with labels), `None` when the series is absent;
    /// fails when the endpoint is down.
    pub fn metric_opt(&self, series: &str) -> Option<f64> {
        // A loaded machine (CI builds beside the test) can make one scrape time out: retry a few
        // times, then fail — a dead endpoint still fails the test.
        let body = (0..5)
            .find_map(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(500));
                }
                http_get(self.metrics_port, "/metrics")
            })
            .expect("metrics endpoint");
        series_value(&body, series)
    }

    /// The value of one metric series (exact name with labels), failing when it is absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_opt(series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// The value of a counter series, 0 while it does not exist yet (labelled series appear on
    /// first use) — for a metric the shipper declares; any other name fails (see [`absent_series`]).
    pub fn counter(&self, series: &str) -> f64 {
        self.metric_opt(series).unwrap_or_else(|| absent_series(series))
    }

    /// Waits until the endpoint answers and `ok(value of series)` (absent: 0, for a declared
    /// metric; a name the shipper does not declare fails at once); returns the value.
    pub fn wait_metric(&self, series: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = http_get(self.metrics_port, "/metrics")
                .map(|body| series_value(&body, series).unwrap_or_else(|| absent_series(series)));
            if let Some(v) = v
                && ok(v)
            {
                return v;
            }
            assert!(Instant::now() < deadline, "{series} = {v:?} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if http_get(self.metrics_port, "/readyz").is_some_and(|b| b.starts_with("200")) {
                return;
            }
            assert!(Instant::now() < deadline, "shipper not ready within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The checkpoint file's entries (`path`, `offset`, …), empty when there is none yet.
    pub fn checkpoint(&self) -> Vec<serde_json::Value> {
        let Ok(text) = fs::read_to_string(self.ckpt.join("shipper-checkpoint.json")) else { return Vec::new() };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["generations"].as_array().cloned().unwrap_or_default()
    }
}

/// The value of `series` (exact name with labels) in a Prometheus text body.
pub fn series_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

/// The value of a series absent from the scrape: 0, if the binaries declare its metric (a labelled
/// family has no sample before first use), otherwise the test fails — a renamed or misspelled
/// metric would read 0 forever and make every `== 0` assertion on it pass.
pub fn absent_series(series: &str) -> f64 {
    metric_names::assert_declared(series.split('{').next().unwrap_or(series));
    0.0
}

#[test]
fn an_absent_series_of_a_declared_metric_reads_0() {
    let body = "# TYPE sluice_shipper_scans counter\nsluice_shipper_scans_total 3\n";
    let value = |series: &str| series_value(body, series).unwrap_or_else(|| absent_series(series));
    assert_eq!(value("sluice_shipper_scans_total"), 3.0);
    assert_eq!(value("sluice_shipper_enrich_misses_total{reason=\"api_down\"}"), 0.0);
    assert_eq!(value("sluice_shipper_inflight_bytes"), 0.0);
}

#[test]
#[should_panic(expected = "no binary declares it")]
fn an_absent_series_of_an_undeclared_metric_fails() {
    absent_series("sluice_shipper_enrich_miss_total{reason=\"api_down\"}");
}

/// Minimal HTTP GET on 127.0.0.1 (`/readyz` answers `<status>` first).
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?;
    Some(if path == "/metrics" { body.to_owned() } else { format!("{status} {body}") })
}

/// SIGTERM, then waits (≤ 30 s) for the exit.
pub fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "shipper did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped (a failing test leaves no shipper running).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// What a topic holds, read by a client made now (for the message of a failed wait): each
/// partition's offsets, and the distinct record ids a fresh consumer reads up to those ends.
/// It tells a consumer that stopped fetching from records that never reached the log.
pub fn census(bootstrap: &str, topic: &str) -> String {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("census"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(c) => c,
        Err(e) => return format!("census: no consumer: {e}"),
    };
    let partitions = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(md) => md.topics()[0].partitions().len() as i32,
        Err(e) => return format!("census: no metadata: {e}"),
    };
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok((lo, hi)) => ends.push((p, lo, hi)),
            Err(e) => return format!("census: partition {p}: no watermarks: {e}"),
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let (mut ids, mut msgs, mut errors) = (std::collections::HashSet::new(), 0u64, Vec::new());
    let mut reached: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && ends.iter().any(|&(p, _, hi)| reached.get(&p).copied().unwrap_or(0) < hi) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                msgs += 1;
                reached.insert(m.partition(), m.offset() + 1);
                let v2 = m.headers().is_some_and(|h| h.iter().any(|h| h.key == "sluice.v" && h.value == Some(b"2")));
                if v2 {
                    match sluice_common::message::decode(m.payload().unwrap_or_default()) {
                        Ok(d) => ids.extend(d.records.iter().map(|r| r.id.to_string())),
                        Err(e) if errors.len() < 5 => errors.push(e.to_string()),
                        Err(_) => {}
                    }
                } else if let Some(h) = m.headers().and_then(|h| h.iter().find(|h| h.key == "sluice.id")) {
                    ids.insert(String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                }
            }
            Some(Err(e)) if errors.len() < 5 => errors.push(e.to_string()),
            _ => {}
        }
    }
    format!(
        "census by a new client: offsets (partition, low, high) {ends:?}; it read {msgs} messages, {} distinct ids, \
         reached {reached:?}, errors {errors:?}",
        ids.len()
    )
}
