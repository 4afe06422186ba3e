//! Shared helpers of the `indexer_*` tests: contract-conformant records, the `sluice-indexer`
//! binary as a child process, and assertions against the real Kafka and Elasticsearch.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sluice_common::schema::Headers;
use sluice_integration_tests::{Kafka, Search, free_port, metric_names, unique_name};

/// Names private to one test.
#[derive(Debug, Clone)]
pub struct Names {
    pub topic: String,
    pub dlq: String,
    pub group: String,
    /// Index prefix; the pattern is `<prefix>-%Y.%m.%d`.
    pub index: String,
    pub template: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let base = unique_name(test);
        Names {
            topic: format!("{base}.logs"),
            dlq: format!("{base}.dlq"),
            group: format!("{base}-group"),
            index: format!("{base}-idx"),
            template: format!("{base}-tpl"),
        }
    }

    /// The index pattern wildcard for searches.
    pub fn indices(&self) -> String {
        format!("{}-*", self.index)
    }
}

/// One record as the shipper would publish it.
#[derive(Debug, Clone)]
pub struct TestRecord {
    pub id: String,
    pub ts: String,
    pub ns: String,
    pub key: String,
    pub payload: String,
}

/// `n` valid schema-v1 records spread over `days` UTC dates (2026-11-25 onwards) and `pods` keys.
pub fn records(n: usize, days: usize, pods: usize, tag: &str) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let day = 25 + (i % days.max(1));
            let ts = format!("2026-11-{day:02}T{:02}:{:02}:{:02}.{:09}Z", i % 24, i % 60, (i / 60) % 60, i);
            let pod = i % pods.max(1);
            let ns = format!("ns-{}", pod % 3);
            let payload = json!({
                "@timestamp": ts,
                "message": format!("{tag} line {i} of pod {pod}: the quick brown fox jumps over the lazy dog"),
                "stream": if i % 5 == 0 { "stderr" } else { "stdout" },
                "log": {"file": {"path": format!("/var/log/pods/{ns}_pod-{pod}_uid{pod}/app/0.log")}, "offset": i * 120},
                "kubernetes": {
                    "namespace": ns,
                    "pod": {"name": format!("pod-{pod}"), "uid": format!("uid{pod}")},
                    "container": {"name": "app"},
                    "node": {"name": "node-1"},
                    "labels": {"app": "web", "app_kubernetes_io/name": format!("web-{}", pod % 7)}
                },
                "host": {"name": "node-1"},
                "agent": {"type": "sluice", "version": "0.1.0"}
            });
            TestRecord {
                id: format!("{tag}-{i:08}"),
                ts,
                ns,
                key: format!("uid{pod}/app"),
                payload: payload.to_string(),
            }
        })
        .collect()
}

/// A producer like the shipper's (idempotent, acks=all).
pub fn producer(kafka: &Kafka) -> FutureProducer {
    kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Contract headers of a record.
pub fn headers(r: &TestRecord) -> OwnedHeaders {
    let contract = Headers { id: r.id.as_str().into(), ts: r.ts.as_str().into(), ns: r.ns.as_str().into() };
    let mut headers = OwnedHeaders::new();
    for (key, value) in contract.pairs() {
        headers = headers.insert(Header { key, value: Some(value) });
    }
    headers
}

/// Produces records and waits for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, records: &[TestRecord]) {
    for chunk in records.chunks(5000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for r in chunk {
            let record = FutureRecord::to(topic).key(&r.key).payload(&r.payload).headers(headers(r));
            pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        }
        for delivery in pending {
            delivery.await.expect("delivery").expect("acknowledged");
        }
    }
}

/// Path of the `sluice-indexer` binary next to the test executable (`target/<profile>/`), refused
/// when older than its sources, or `SLUICE_INDEXER_BIN` (e.g. to run the tests against an older
/// build): [`sluice_integration_tests::binaries`].
pub fn indexer_binary() -> PathBuf {
    sluice_integration_tests::binaries::workspace_binary("sluice-indexer")
}

/// Environment for an indexer of this test.
pub fn env(kafka: &Kafka, search: &Search, names: &Names) -> Vec<(String, String)> {
    [
        ("SLUICE_KAFKA__BROKERS", kafka.bootstrap.clone()),
        ("SLUICE_KAFKA__TOPIC", names.topic.clone()),
        ("SLUICE_KAFKA__GROUP_ID", names.group.clone()),
        ("SLUICE_KAFKA__PARTITIONS", "4".into()),
        ("SLUICE_KAFKA__REPLICATION_FACTOR", "1".into()),
        ("SLUICE_KAFKA__SESSION_TIMEOUT", "10s".into()),
        ("SLUICE_KAFKA__REVOKE_TIMEOUT", "10s".into()),
        ("SLUICE_DEAD_LETTER__TOPIC", names.dlq.clone()),
        ("SLUICE_DEAD_LETTER__PARTITIONS", "1".into()),
        ("SLUICE_ELASTICSEARCH__URLS", search.url.clone()),
        ("SLUICE_ELASTICSEARCH__INDEX", format!("{}-%Y.%m.%d", names.index)),
        ("SLUICE_ELASTICSEARCH__TEMPLATE__NAME", names.template.clone()),
        ("SLUICE_ELASTICSEARCH__TEMPLATE__REPLICAS", "0".into()),
        ("SLUICE_ELASTICSEARCH__TEMPLATE__REFRESH_INTERVAL", "1s".into()),
        ("SLUICE_BATCH__LINGER", "200ms".into()),
        ("SLUICE_RETRY__MAX_BACKOFF", "2s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets or replaces a variable.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

/// Runs `sluice-indexer setup` and asserts success.
pub fn setup(env: &[(String, String)]) {
    let output = setup_output(env);
    assert!(output.status.success(), "setup failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Runs `sluice-indexer setup` and returns its exit status and output, whatever they are.
pub fn setup_output(env: &[(String, String)]) -> std::process::Output {
    Command::new(indexer_binary())
        .arg("setup")
        .env_clear()
        .envs(env.iter().cloned())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run sluice-indexer setup")
}

/// A running `sluice-indexer` process; killed when dropped.
pub struct Indexer {
    child: Child,
    pub metrics_addr: String,
    pub log: PathBuf,
}

impl Indexer {
    /// Starts `sluice-indexer run` with `env`; its log goes to a file under the target dir.
    pub fn spawn(env: &[(String, String)], name: &str) -> Self {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let exe = std::env::current_exe().expect("test executable");
        let log = exe.parent().expect("deps dir").join(format!("{}.log", unique_name(name)));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(indexer_binary())
            .arg("run")
            .env_clear()
            .envs(env.iter().cloned())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLUICE_METRICS__LISTEN", &metrics_addr)
            // A test may set its own filter in `env` (e.g. librdkafka's debug contexts at trace).
            .env(
                "RUST_LOG",
                env.iter()
                    .find(|(k, _)| k == "RUST_LOG")
                    .map_or("info,sluice_indexer=debug,librdkafka=warn", |(_, v)| v.as_str()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn sluice-indexer");
        Indexer { child, metrics_addr, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole process log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The tail of the process log (for assertion messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("indexer did not stop within {timeout:?} after SIGTERM:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The Prometheus text of `/metrics`. Fails the test when the endpoint does not answer 200
    /// (after a few retries: a loaded machine can time one scrape out), so that a dead endpoint
    /// never reads as "every counter is 0".
    pub fn metrics(&self) -> String {
        for attempt in 0..5 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            if let Some(body) = self.try_metrics() {
                return body;
            }
        }
        panic!("{}/metrics does not answer 200 (the indexer is down?):\n{}", self.metrics_addr, self.log_tail());
    }

    /// The Prometheus text of `/metrics`, `None` while the endpoint does not answer 200.
    pub fn try_metrics(&self) -> Option<String> {
        match http_get(&self.metrics_addr, "/metrics") {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The sum of the samples of `series` (see [`metric_sum`]); fails when the endpoint is down or
    /// when neither the scrape nor the binaries' sources have the metric.
    pub fn metric_sum(&self, series: &str) -> f64 {
        metric_sum(&self.metrics(), series)
    }

    /// Waits until the endpoint answers and `metric_sum(series)` satisfies `ok` (panics with the
    /// log tail after `timeout`; at once when no binary declares the metric).
    pub async fn wait_metric(&self, series: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.try_metrics().map(|text| metric_sum(&text, series));
            if let Some(value) = value
                && ok(value)
            {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {value:?} (None: endpoint down) for {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A series selector: a metric name and the labels a sample must have (others may be present).
fn parse_selector(series: &str) -> (&str, Vec<(String, String)>) {
    match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
    }
}

/// `a="x",b="y\"z"` → pairs (Prometheus text escaping: `\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} without a quoted value in `{text}`");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        out.push((key.trim().to_owned(), value));
    }
}

/// Whether the scrape `text` declares (`# TYPE` line) the family that sample name `name` belongs
/// to, with the sample suffix its type gives (`_total` for a counter, none for a gauge, `_bucket` /
/// `_sum` / `_count` for a histogram).
fn in_scrape(text: &str, name: &str) -> bool {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).any(|(family, kind)| {
        name.strip_prefix(family)
            .is_some_and(|suffix| metric_names::Kind::from_type_line(kind.trim()).sample_suffixes().contains(&suffix))
    })
}

/// Sum of the samples of `series` in a Prometheus text body: `name` (every label set) or
/// `name{label="value",…}` (samples carrying at least those labels). The name is matched exactly,
/// never by prefix. A family the scrape lacks reads as 0 only if a binary declares it
/// ([`metric_names::assert_declared`]: a `register(…)` in the shipper's or the indexer's sources):
/// prometheus-client leaves a labelled family out of the body until its first sample, but a
/// renamed, removed or misspelled metric (or a counter without `_total`, a gauge with it) fails
/// the test instead of reading as 0. A declared family without a matching sample is 0.
pub fn metric_sum(text: &str, series: &str) -> f64 {
    let (name, want) = parse_selector(series);
    if !in_scrape(text, name) {
        metric_names::assert_declared(name);
        return 0.0;
    }
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let (sample_name, labels) = parse_selector(sample);
            if sample_name != name || !want.iter().all(|w| labels.contains(w)) {
                return None;
            }
            Some(value.parse::<f64>().unwrap_or_else(|_| panic!("unparsable sample `{line}`")))
        })
        .sum()
}

/// Like [`metric_sum`], but `None` when no sample matches (e.g. to tell a gauge at 0 from a
/// series that does not exist).
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    let (name, want) = parse_selector(series);
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|line| {
            line.rsplit_once(' ').is_some_and(|(sample, _)| {
                let (sample_name, labels) = parse_selector(sample);
                sample_name == name && want.iter().all(|w| labels.contains(w))
            })
        })
        .collect();
    (!matching.is_empty()).then(|| metric_sum(text, series))
}

/// GET `path`: status and body, `None` when there is no HTTP answer.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

const SCRAPE: &str = "# HELP sluice_indexer_docs Documents.\n# TYPE sluice_indexer_docs counter\n\
    sluice_indexer_docs_total{outcome=\"indexed\"} 5\nsluice_indexer_docs_total{outcome=\"duplicate\"} 2\n\
    # TYPE sluice_indexer_docs_truncated counter\nsluice_indexer_docs_truncated_total 100\n\
    # TYPE sluice_indexer_node_up gauge\nsluice_indexer_node_up{url=\"http://a:1\",x=\"q\\\"z\"} 1\n# EOF\n";

#[test]
fn metric_sum_matches_names_exactly() {
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_docs_total"), 7.0, "all label sets, not the _truncated metric");
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_docs_total{outcome=\"duplicate\"}"), 2.0);
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), 0.0, "declared, no series");
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_node_up{url=\"http://a:1\"}"), 1.0);
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_node_up{x=\"q\\\"z\"}"), 1.0);
}

/// A family the binary declares but that has no sample yet (a labelled family before its first
/// label set) is absent from the scrape: it reads as 0.
#[test]
fn metric_sum_reads_a_declared_but_unsampled_metric_as_0() {
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_dead_letters_total"), 0.0);
    assert_eq!(metric_sum(SCRAPE, "sluice_indexer_abandoned_records_total{reason=\"x\"}"), 0.0);
    assert_eq!(metric_sum("", "sluice_indexer_in_flight_bytes"), 0.0, "a gauge: no _total");
    assert_eq!(metric_sum("", "sluice_shipper_enrich_misses_total"), 0.0, "the shipper's metrics too");
}

/// A name no binary declares fails instead of reading as 0 (an `== 0` assertion on it would pass
/// whatever the indexer did).
#[test]
#[should_panic(expected = "no binary declares it")]
fn metric_sum_refuses_a_metric_no_binary_declares() {
    metric_sum(SCRAPE, "sluice_indexer_documents_total");
}

#[test]
#[should_panic(expected = "no binary declares it")]
fn metric_sum_refuses_a_prefix_of_a_declared_name() {
    metric_sum(SCRAPE, "sluice_indexer_doc");
}

/// prometheus-client registers a counter as `docs` and exposes its samples as `docs_total`: the
/// bare family name has no sample, so it is refused rather than read as 0.
#[test]
#[should_panic(expected = "no binary declares it")]
fn metric_sum_refuses_a_counter_without_its_total_suffix() {
    metric_sum(SCRAPE, "sluice_indexer_docs");
}

#[test]
#[should_panic(expected = "no binary declares it")]
fn metric_sum_refuses_a_gauge_with_a_total_suffix() {
    metric_sum("", "sluice_indexer_in_flight_bytes_total");
}

/// Refreshes the indices and counts documents (`None` if the search engine does not answer).
pub async fn count(search: &Search, indices: &str) -> Option<u64> {
    let client = search.client();
    let _ = client
        .send(
            elasticsearch::http::Method::Post,
            &format!("/{indices}/_refresh"),
            Default::default(),
            Option::<&()>::None,
            None::<&str>,
            Some(Duration::from_secs(10)),
        )
        .await;
    let response = client
        .send(
            elasticsearch::http::Method::Get,
            &format!("/{indices}/_count"),
            Default::default(),
            Option::<&()>::None,
            None::<&str>,
            Some(Duration::from_secs(10)),
        )
        .await
        .ok()?;
    let value: serde_json::Value = response.json().await.ok()?;
    value["count"].as_u64()
}

/// Waits until the count reaches `expected` (panics on timeout or when it exceeds `expected`).
pub async fn wait_count(search: &Search, indices: &str, expected: u64, timeout: Duration, indexers: &[&Indexer]) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let n = count(search, indices).await;
        if let Some(n) = n {
            assert!(n <= expected, "{n} documents for {expected} records: duplicates!");
            if n == expected {
                return;
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = indexers.iter().map(|i| i.log_tail()).collect();
            panic!("count stayed at {last:?}/{n:?}, expected {expected} within {timeout:?}\n{}", logs.join("\n----\n"));
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Committed offsets of `group` for every partition of `topic`, and the partitions' end offsets.
pub async fn offsets(kafka: &Kafka, group: &str, topic: &str) -> (Vec<i64>, Vec<i64>) {
    let config = kafka.client_config().set("group.id", group).clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("consumer");
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
            let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("watermarks");
            ends.push(high);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
        let committed = (0..partitions)
            .map(|p| match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect();
        (committed, ends)
    })
    .await
    .expect("offsets task")
}

/// Waits until the group committed every partition's end offset.
pub async fn wait_committed_to_end(kafka: &Kafka, group: &str, topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (committed, ends) = offsets(kafka, group, topic).await;
        // An empty partition has nothing to commit.
        if committed.iter().zip(&ends).all(|(&c, &e)| c == e || (e == 0 && c < 0)) {
            return;
        }
        assert!(Instant::now() < deadline, "offsets not committed to the end: committed {committed:?}, end {ends:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads every record of `topic` (from the beginning) until `expected` were seen or `timeout`.
pub async fn read_all(
    kafka: &Kafka,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let config = kafka
        .client_config()
        .set("group.id", unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < expected && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push(m.detach());
            }
        }
        out
    })
    .await
    .expect("reader task")
}

/// Produces one record with its contract headers plus one extra header whose key is the raw
/// bytes `key` (which need not be UTF-8: rdkafka's safe API only takes `&str` keys).
pub async fn produce_with_raw_header(producer: &FutureProducer, topic: &str, r: &TestRecord, key: &[u8], value: &[u8]) {
    let headers = headers(r);
    add_raw_header(&headers, key, value);
    let record = FutureRecord::to(topic).key(&r.key).payload(&r.payload).headers(headers);
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
}

#[allow(unsafe_code)]
fn add_raw_header(headers: &OwnedHeaders, key: &[u8], value: &[u8]) {
    use rdkafka::bindings::{rd_kafka_header_add, rd_kafka_headers_t};
    // SAFETY: `BorrowedHeaders` is rdkafka's zero-sized view of the `rd_kafka_headers_t` it
    // points to (rdkafka casts the same way); `headers` owns that list and nobody else uses it
    // during the call; key and value are copied by librdkafka.
    let ptr = headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders as *mut rd_kafka_headers_t;
    let err = unsafe {
        rd_kafka_header_add(ptr, key.as_ptr().cast(), key.len() as isize, value.as_ptr().cast(), value.len() as isize)
    };
    assert_eq!(err, rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
}

/// Creates `topic` with topic-level configs (e.g. `max.message.bytes`) before `setup` runs.
pub async fn create_topic_with(kafka: &Kafka, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().expect("admin client");
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let results = admin.create_topics([&new], &AdminOptions::new()).await.expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(t, code)| panic!("creating {t}: {code:?}"));
    }
}

/// The value of header `name` of a message (lossy UTF-8).
pub fn header_value(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::Message;
    use rdkafka::message::Headers as _;
    let headers = message.headers()?;
    (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Waits until the process exits by itself; `None` after `timeout`.
impl Indexer {
    /// The whole HTTP answer of `/readyz` (status line included; empty if not reachable).
    pub fn readyz(&self) -> String {
        let mut out = String::new();
        if let Ok(mut stream) = std::net::TcpStream::connect(&self.metrics_addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(stream, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = stream.read_to_string(&mut out);
        }
        out
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Sets topic-level configs of an existing topic (replacing its other topic-level overrides).
pub async fn alter_topic(kafka: &Kafka, topic: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().expect("admin client");
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let results = admin.alter_configs([&alter], &AdminOptions::new()).await.expect("alter_configs");
    for result in results {
        result.unwrap_or_else(|(r, code)| panic!("altering {r:?}: {code:?}"));
    }
}
