//! `sluice logs` and `sluice top` against real services: the shared Elasticsearch
//! (`ELASTICSEARCH_URL`), a dedicated OpenSearch container for `logs`, and the shared Kafka
//! (`KAFKA_BOOTSTRAP_SERVERS`) for `top --kafka`.
//!
//! Every test seeds its own index (template mappings of the indexer, one shard) with known records:
//! several namespaces, pods, labels, both streams, a multi-line record, equal timestamps and a record
//! indexed after newer ones. Expected outputs are computed from the same record table, so each
//! selector combination is checked for the exact lines in the exact order. The binary runs as a
//! child process (`CARGO_BIN_EXE_sluice`), as a user runs it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};
use sluice_integration_tests::{Flavor, Search, elasticsearch, search_dedicated, unique_name};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// One seeded record.
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    ts: DateTime<Utc>,
    ns: &'static str,
    pod: &'static str,
    container: &'static str,
    node: &'static str,
    stream: &'static str,
    labels: Value,
    message: String,
}

impl Rec {
    fn doc(&self) -> Value {
        let mut k8s = json!({
            "namespace": self.ns,
            "pod": {"name": self.pod, "uid": format!("uid-{}", self.pod)},
            "container": {"name": self.container},
            "node": {"name": self.node},
        });
        if self.labels.as_object().is_some_and(|m| !m.is_empty()) {
            k8s["labels"] = self.labels.clone();
        }
        json!({
            "@timestamp": self.ts.to_rfc3339_opts(SecondsFormat::Nanos, true),
            "message": self.message,
            "stream": self.stream,
            "log": {"file": {"path": format!("/var/log/pods/{}_{}_uid/{}/0.log", self.ns, self.pod, self.container)}, "offset": 0},
            "kubernetes": k8s,
            "host": {"name": self.node},
            "agent": {"type": "sluice", "version": "0.1.0"},
        })
    }

    fn line(&self) -> String {
        format!("{}/{}/{} {}", self.ns, self.pod, self.container, self.message)
    }

    fn label(&self, k: &str) -> Option<&str> {
        self.labels[k].as_str()
    }
}

fn rec(
    id: &str,
    ts: DateTime<Utc>,
    ns: &'static str,
    pod: &'static str,
    container: &'static str,
    stream: &'static str,
    message: &str,
) -> Rec {
    let (node, labels) = match pod {
        "web-0" => ("node-1", json!({"app": "web", "tier": "frontend", "app_kubernetes_io/name": "shop"})),
        "web-1" => ("node-2", json!({"app": "web", "tier": "frontend"})),
        "db-0" => ("node-1", json!({"app": "db", "tier": "db"})),
        "coredns-abc" => ("node-2", json!({"k8s-app": "kube-dns"})),
        _ => ("node-1", json!({})),
    };
    Rec { id: id.into(), ts, ns, pod, container, node, stream, labels, message: message.into() }
}

/// The fixed record table, `t0` ten minutes ago.
fn records(t0: DateTime<Utc>) -> Vec<Rec> {
    let at = |ms: i64| t0 + TimeDelta::milliseconds(ms);
    vec![
        rec("g1-0", at(1000), "shop", "web-0", "nginx", "stdout", "GET / 200"),
        rec("g1-100", at(2000), "shop", "web-0", "nginx", "stderr", "upstream timeout"),
        rec("g1-200", at(3000), "shop", "web-0", "nginx", "stdout", "panic: boom\n  at main.rs:1\n  at lib.rs:2"),
        rec("g2-0", at(2000), "shop", "web-1", "nginx", "stdout", "GET /cart 200"),
        rec("g2-50", at(4000), "shop", "web-1", "nginx", "stdout", "GET /pay 500 timeout"),
        rec("g3-0", at(1500), "shop", "db-0", "postgres", "stdout", "checkpoint complete"),
        rec("g3-9", at(5000), "shop", "db-0", "postgres", "stderr", "FATAL: timeout waiting"),
        // Same timestamp as g3-9: printed before it (record id order).
        rec("a4-0", at(5000), "shop", "db-0", "exporter", "stdout", "scrape ok"),
        rec("g5-0", at(500), "kube-system", "coredns-abc", "coredns", "stdout", "ready"),
        rec("g5-10", at(6000), "kube-system", "coredns-abc", "coredns", "stdout", "NXDOMAIN"),
        rec("g6-0", at(3000), "batch", "job-1", "main", "stdout", "done"),
    ]
}

/// Indexed in a second bulk, after newer records: first by time anyway.
fn late_record(t0: DateTime<Utc>) -> Rec {
    rec("g1-late", t0 + TimeDelta::milliseconds(200), "shop", "web-0", "nginx", "stdout", "late hello")
}

/// Records sorted as `logs` prints them: time, then id.
fn sorted(mut recs: Vec<Rec>) -> Vec<Rec> {
    recs.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.id.cmp(&b.id)));
    recs
}

fn lines(recs: &[Rec]) -> String {
    recs.iter().map(|r| format!("{}\n", r.line())).collect()
}

/// Creates `index` with the indexer's template mappings on one shard.
async fn create_index(search: &Search, index: &str) {
    let distribution = match search.flavor {
        Flavor::Elasticsearch => sluice_indexer::es::Distribution::Elasticsearch("8".into()),
        Flavor::OpenSearch => sluice_indexer::es::Distribution::OpenSearch("2".into()),
    };
    let template = sluice_indexer::template::body(&Default::default(), &distribution);
    let body = json!({
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": template["template"]["mappings"],
    });
    let (status, answer) = search.request(elasticsearch::http::Method::Put, &format!("/{index}"), Some(body)).await;
    assert_eq!(status, 200, "creating {index}: {answer}");
}

async fn bulk(search: &Search, index: &str, recs: &[Rec]) {
    let mut nd = String::new();
    for r in recs {
        nd.push_str(&format!("{}\n{}\n", json!({"create": {"_index": index, "_id": r.id}}), r.doc()));
    }
    let client = reqwest::Client::new();
    let answer: Value = client
        .post(format!("{}/_bulk?refresh=true", search.url))
        .header("content-type", "application/x-ndjson")
        .body(nd)
        .send()
        .await
        .expect("bulk request")
        .json()
        .await
        .expect("bulk answer");
    assert_eq!(answer["errors"], false, "{answer}");
}

async fn delete_index(search: &Search, index: &str) {
    let _ = search.request(elasticsearch::http::Method::Delete, &format!("/{index}"), None).await;
}

/// Runs `sluice args…` against `url`; returns (exit code, stdout, stderr).
fn sluice(url: &str, args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = Command::new(BIN)
        .args(args)
        .env("ELASTICSEARCH_URL", url)
        .env_remove("NO_COLOR")
        .env_remove("SLUICE_ELASTICSEARCH__INDEX")
        .output()
        .expect("run sluice");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `sluice logs --index <index> args…` must print exactly `expected`.
fn expect_logs(url: &str, index: &str, args: &[&str], expected: &str) {
    let mut all = vec!["logs", "--index", index];
    all.extend_from_slice(args);
    let (code, out, err) = sluice(url, &all);
    assert_eq!(code, 0, "sluice {all:?} failed: {err}");
    assert_eq!(out, expected, "sluice {all:?}\nstderr: {err}");
}

/// The selector combinations, each checked for exact output (shared by Elasticsearch and OpenSearch).
async fn selections(search: &Search) {
    let index = unique_name("sluice-view-logs");
    create_index(search, &index).await;
    let t0 = Utc::now() - TimeDelta::minutes(10);
    let base = records(t0);
    bulk(search, &index, &base).await;
    bulk(search, &index, &[late_record(t0)]).await;
    let mut all = base.clone();
    all.push(late_record(t0));
    let all = sorted(all);
    let only = |f: &dyn Fn(&Rec) -> bool| lines(&all.iter().filter(|r| f(r)).cloned().collect::<Vec<_>>());
    let url = search.url.as_str();
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);

    // Everything, sorted by time then id (the late record first, a4-0 before g3-9), also in pages of 2.
    expect_logs(url, &index, &[], &lines(&all));
    expect_logs(url, &index, &["-A", "--page-size", "2"], &lines(&all));
    expect_logs(url, &index, &["-n", "shop"], &only(&|r| r.ns == "shop"));
    expect_logs(url, &index, &["-n", "batch,kube-system"], &only(&|r| r.ns != "shop"));
    expect_logs(url, &index, &["-n", "kube-*"], &only(&|r| r.ns == "kube-system"));
    expect_logs(url, &index, &["web-*"], &only(&|r| r.pod.starts_with("web-")));
    expect_logs(url, &index, &["web-1", "job-1"], &only(&|r| r.pod == "web-1" || r.pod == "job-1"));
    expect_logs(url, &index, &["db-0", "-c", "exporter"], &only(&|r| r.container == "exporter"));
    expect_logs(url, &index, &["--node", "node-2"], &only(&|r| r.node == "node-2"));
    expect_logs(url, &index, &["--stream", "stderr"], &only(&|r| r.stream == "stderr"));
    // Label selectors, Kubernetes semantics (`!=` / notin also match pods without the label).
    expect_logs(url, &index, &["-l", "app=web"], &only(&|r| r.label("app") == Some("web")));
    expect_logs(url, &index, &["-l", "app==web,tier!=db"], &only(&|r| r.label("app") == Some("web")));
    expect_logs(url, &index, &["-l", "tier!=frontend"], &only(&|r| r.label("tier") != Some("frontend")));
    expect_logs(
        url,
        &index,
        &["-l", "app in (db, web)", "-c", "nginx,postgres"],
        &only(&|r| r.label("app").is_some() && r.container != "exporter"),
    );
    expect_logs(url, &index, &["-l", "tier notin (frontend,x)"], &only(&|r| r.label("tier") != Some("frontend")));
    expect_logs(url, &index, &["-l", "k8s-app"], &only(&|r| r.label("k8s-app").is_some()));
    expect_logs(url, &index, &["-l", "!app"], &only(&|r| r.label("app").is_none()));
    expect_logs(url, &index, &["-l", "app.kubernetes.io/name=shop"], &only(&|r| r.pod == "web-0"));
    // Free text (full-text match on message) and client-side regex.
    expect_logs(url, &index, &["-q", "timeout"], &only(&|r| r.message.contains("timeout")));
    expect_logs(
        url,
        &index,
        &["-q", "timeout", "-n", "shop", "--stream", "stdout"],
        &only(&|r| r.pod == "web-1" && r.message.contains("timeout")),
    );
    expect_logs(
        url,
        &index,
        &["--grep", "^GET .* 200$"],
        &only(&|r| r.message.starts_with("GET") && r.message.ends_with("200")),
    );
    // Time: the tail, a limit, an explicit range.
    expect_logs(url, &index, &["--tail", "3"], &lines(&all[all.len() - 3..]));
    expect_logs(
        url,
        &index,
        &["--tail", "2", "-n", "shop"],
        &lines(&all.iter().filter(|r| r.ns == "shop").cloned().collect::<Vec<_>>()[7..]),
    );
    expect_logs(url, &index, &["--limit", "2"], &lines(&all[..2]));
    let (from, to) = (ts(t0 + TimeDelta::seconds(4)), ts(t0 + TimeDelta::seconds(6)));
    expect_logs(
        url,
        &index,
        &["--since-time", &from, "--until", &to],
        &only(&|r| r.ts >= t0 + TimeDelta::seconds(4) && r.ts < t0 + TimeDelta::seconds(6)),
    );
    expect_logs(url, &index, &["--since", "1m"], "");
    expect_logs(url, &index, &["--since", "11m", "-n", "batch"], &only(&|r| r.ns == "batch"));
    // Output modes: raw keeps the multi-line record whole; timestamps in UTC or local time; wide; JSON.
    let trace = all.iter().find(|r| r.id == "g1-200").unwrap();
    expect_logs(
        url,
        &index,
        &["web-0", "-o", "raw", "--stream", "stdout", "-q", "boom"],
        &format!("{}\n", trace.message),
    );
    expect_logs(
        url,
        &index,
        &["job-1", "--timestamps"],
        &format!("{} batch/job-1/main done\n", ts(t0 + TimeDelta::seconds(3))),
    );
    let (code, out, err) = {
        let o = Command::new(BIN)
            .args(["logs", "--index", &index, "job-1", "--timestamps", "--local-time"])
            .env("ELASTICSEARCH_URL", url)
            .env("TZ", "Asia/Kolkata")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let local = (t0 + TimeDelta::seconds(3))
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
        .to_rfc3339_opts(SecondsFormat::AutoSi, false);
    assert_eq!((code, out), (Some(0), format!("{local} batch/job-1/main done\n")), "{err}");
    let g = all.iter().find(|r| r.id == "g5-10").unwrap();
    expect_logs(
        url,
        &index,
        &["-o", "wide", "-n", "kube-system", "-q", "NXDOMAIN"],
        &format!("{} node-2 kube-system/coredns-abc/coredns stdout NXDOMAIN\n", ts(g.ts)),
    );
    let (code, out, _) = sluice(url, &["logs", "--index", &index, "-o", "json", "-n", "kube-system"]);
    assert_eq!(code, 0);
    let docs: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let want: Vec<Value> = all
        .iter()
        .filter(|r| r.ns == "kube-system")
        .map(|r| json!({"id": r.id, "index": index, "doc": r.doc()}))
        .collect();
    assert_eq!(docs, want);

    // Clear errors: bad selector, bad flags, missing index, unreachable Elasticsearch.
    let (code, _, err) = sluice(url, &["logs", "--index", &index, "-l", "app in (web"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid label selector `app in (web`"), "{err}");
    let (code, _, err) = sluice(url, &["logs", "--index", &index, "--tail", "20000"]);
    assert!(code == 2 && err.contains("--tail is at most 10000"), "{err}");
    let (code, _, err) = sluice(url, &["logs", "--index", &format!("{index}-missing-*")]);
    assert!(code == 2 && err.contains("no index matches"), "{err}");
    let dead = format!("http://127.0.0.1:{}", sluice_integration_tests::free_port());
    let (code, _, err) = sluice(&dead, &["logs", "--index", &index]);
    assert!(code == 2 && err.contains(&format!("cannot reach Elasticsearch at {dead}")), "{err}");
    let (code, _, err) = sluice(url, &["logs", "--since", "soon"]);
    assert!(code == 2 && err.contains("--since"), "{err}");

    delete_index(search, &index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_selects_exactly_on_elasticsearch() {
    let started = Instant::now();
    let es = elasticsearch().await;
    selections(&es).await;
    eprintln!("logs on Elasticsearch: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_selects_exactly_on_opensearch() {
    let started = Instant::now();
    let os = search_dedicated(Flavor::OpenSearch, &[]).await;
    assert_eq!(os.flavor, Flavor::OpenSearch);
    eprintln!("OpenSearch up in {:.1} s", started.elapsed().as_secs_f64());
    selections(&os).await;
    // Follow works there too (its point-in-time API differs).
    follow_case(&os).await;
    eprintln!("logs on OpenSearch: {:.1} s", started.elapsed().as_secs_f64());
}

/// Lines of a child's stdout, through a channel (so waits can time out).
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &mpsc::Receiver<String>, got: &mut Vec<String>, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.iter().any(|l| l.ends_with(want)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(e) => {
                panic!("waiting for {what} (`{want}`): {e:?}; `sluice logs -f` printed so far:\n{}", got.join("\n"))
            }
        }
    }
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -INT");
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice did not exit after {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follow: history, new records, late records (older than the newest shown) exactly once, a record
/// older than the window not shown, Ctrl-C exits 130, a closed pipe exits 0.
async fn follow_case(search: &Search) {
    let index = unique_name("sluice-view-follow");
    create_index(search, &index).await;
    let now = Utc::now();
    let at = |ms: i64| now + TimeDelta::milliseconds(ms);
    let mk = |id: &str, t: DateTime<Utc>, msg: &str| rec(id, t, "shop", "web-0", "nginx", "stdout", msg);
    // History: 12 records; `-f` shows the last 10.
    let history: Vec<Rec> =
        (0..12).map(|i| mk(&format!("h-{i:02}"), at(-20_000 + i * 100), &format!("history {i}"))).collect();
    bulk(search, &index, &history).await;
    let mut child = Command::new(BIN)
        .args(["logs", "-f", "--index", &index, "--poll", "200ms", "--follow-lag", "30s"])
        .env("ELASTICSEARCH_URL", &search.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_reader(&mut child);
    let mut got = Vec::new();
    wait_for_line(&rx, &mut got, "history 11", "the history");
    // New records in two bulks; then late ones: older than the newest shown but inside the window,
    // one with the same timestamp as a shown record; then one older than the window (not shown),
    // then a sentinel.
    let new1: Vec<Rec> = (0..5).map(|i| mk(&format!("n-{i}"), at(i * 10), &format!("new {i}"))).collect();
    bulk(search, &index, &new1).await;
    wait_for_line(&rx, &mut got, "new 4", "the first new records");
    let new2: Vec<Rec> = (5..8).map(|i| mk(&format!("n-{i}"), at(1000 + i * 10), &format!("new {i}"))).collect();
    bulk(search, &index, &new2).await;
    wait_for_line(&rx, &mut got, "new 7", "the second new records");
    let late = vec![
        mk("l-0", at(-5_000), "late 0"),
        mk("l-1", at(40), "late 1 same time as new 4"),
        mk("l-2", at(-19_950), "late 2 older than the history shown"),
    ];
    bulk(search, &index, &late).await;
    bulk(search, &index, &[mk("x-0", at(-120_000), "too late")]).await;
    bulk(search, &index, &[mk("s-0", at(2000), "sentinel")]).await;
    wait_for_line(&rx, &mut got, "sentinel", "the sentinel");
    // Polls after the sentinel repeat nothing: another record and its sentinel.
    bulk(search, &index, &[mk("s-1", at(2100), "sentinel 2")]).await;
    wait_for_line(&rx, &mut got, "sentinel 2", "the second sentinel");
    interrupt(&child);
    let status = wait_exit(&mut child, "Ctrl-C");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert_eq!(err, "", "a clean exit prints nothing on stderr");
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        got.push(l);
    }
    let mut want: Vec<String> = history[2..].iter().map(Rec::line).collect();
    want.extend(new1.iter().map(Rec::line));
    want.extend(new2.iter().map(Rec::line));
    let n = want.len();
    assert_eq!(got[..n.min(got.len())], want[..], "history and new records in order, each once");
    // The late records come after, each once, sorted by time within a poll; a bulk is not atomic (a
    // periodic refresh may show part of it first), so their order across polls is arrival order.
    let mut late_got: Vec<String> = got[n..].iter().filter(|l| l.contains(" late ")).cloned().collect();
    late_got.sort();
    let mut late_want: Vec<String> = late.iter().map(Rec::line).collect();
    late_want.sort();
    assert_eq!(late_got, late_want, "each late record exactly once:\n{}", got.join("\n"));
    assert_eq!(
        got[n + late.len()..],
        ["shop/web-0/nginx sentinel".to_string(), "shop/web-0/nginx sentinel 2".to_string()],
        "nothing older than the window, nothing twice:\n{}",
        got.join("\n")
    );

    // A closed pipe ends `-f` while it waits for records (exit 0, nothing on stderr).
    let mut child = Command::new(BIN)
        .args(["logs", "-f", "--index", &index, "--poll", "200ms", "--tail", "1"])
        .env("ELASTICSEARCH_URL", &search.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "shop/web-0/nginx sentinel 2\n");
    drop(reader);
    let status = wait_exit(&mut child, "the pipe closed");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(err, "");
    delete_index(search, &index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_shows_each_record_once_on_elasticsearch() {
    let started = Instant::now();
    let es = elasticsearch().await;
    follow_case(&es).await;
    eprintln!("follow on Elasticsearch: {:.1} s", started.elapsed().as_secs_f64());
}

/// `top` numbers equal the seeded counts, per namespace and per pod; bytes are the messages' sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_counts_match_the_seeded_records() {
    let started = Instant::now();
    let es = elasticsearch().await;
    let index = unique_name("sluice-view-top");
    create_index(&es, &index).await;
    let t0 = Utc::now() - TimeDelta::minutes(10);
    let mut all = records(t0);
    all.push(late_record(t0));
    // Old records outside the window are not counted.
    let mut old = rec("old-0", t0 - TimeDelta::hours(2), "shop", "web-0", "nginx", "stdout", "old");
    old.ts = t0 - TimeDelta::hours(2);
    bulk(&es, &index, &all).await;
    bulk(&es, &index, &[old]).await;
    let count = |f: &dyn Fn(&Rec) -> bool| all.iter().filter(|r| f(r)).count() as u64;
    let bytes = |f: &dyn Fn(&Rec) -> bool| all.iter().filter(|r| f(r)).map(|r| r.message.len() as u64).sum::<u64>();

    let (code, out, err) = sluice(&es.url, &["top", "--once", "-o", "json", "--since", "15m", "--index", &index]);
    assert_eq!(code, 0, "{err}");
    let t: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(t["total_lines"], all.len() as u64);
    let window = 15.0 * 60.0;
    let mut rows: Vec<(String, u64, u64)> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"][0].as_str().unwrap().to_owned(), r["lines"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()))
        .collect();
    rows.sort();
    let mut want: Vec<(String, u64, u64)> = ["batch", "kube-system", "shop"]
        .iter()
        .map(|ns| (ns.to_string(), count(&|r| r.ns == *ns), bytes(&|r| r.ns == *ns)))
        .collect();
    want.sort();
    assert_eq!(rows, want);
    let shop = t["rows"].as_array().unwrap().iter().find(|r| r["key"][0] == "shop").unwrap();
    assert_eq!(shop["share"].as_f64().unwrap(), count(&|r| r.ns == "shop") as f64 / all.len() as f64);
    assert!((shop["lines_per_s"].as_f64().unwrap() - count(&|r| r.ns == "shop") as f64 / window).abs() < 1e-9);
    assert_eq!(shop["bytes_exact"], true);
    // The busiest row first.
    assert_eq!(t["rows"][0]["key"][0], "shop");

    // By pod, top 2: the two busiest pods, the rest in `other_lines`.
    let (code, out, err) = sluice(
        &es.url,
        &["top", "--once", "-o", "json", "--by", "pod", "--top", "2", "--since", "15m", "--index", &index],
    );
    assert_eq!(code, 0, "{err}");
    let t: Value = serde_json::from_str(out.trim()).unwrap();
    let rows: Vec<(String, u64)> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!("{}/{}", r["key"][0].as_str().unwrap(), r["key"][1].as_str().unwrap()),
                r["lines"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("shop/web-0".to_string(), count(&|r| r.pod == "web-0")),
            ("shop/db-0".to_string(), count(&|r| r.pod == "db-0"))
        ]
    );
    assert_eq!(t["other_lines"], all.len() as u64 - rows[0].1 - rows[1].1);

    // By container, within one namespace and a label selector; the table form.
    let (code, out, err) = sluice(
        &es.url,
        &["top", "--once", "--by", "container", "-n", "shop", "-l", "app=db", "--since", "15m", "--index", &index],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(row_lines(&out, "shop/db-0/postgres"), Some(count(&|r| r.container == "postgres")), "{out}");
    assert_eq!(row_lines(&out, "shop/db-0/exporter"), Some(1), "{out}");
    assert!(!out.contains("nginx"), "{out}");
    let (code, out, _) = sluice(&es.url, &["top", "--once", "--by", "node", "--since", "15m", "--index", &index]);
    assert_eq!(code, 0);
    assert_eq!(row_lines(&out, "node-1"), Some(count(&|r| r.node == "node-1")), "{out}");
    assert_eq!(row_lines(&out, "node-2"), Some(count(&|r| r.node == "node-2")), "{out}");
    delete_index(&es, &index).await;
    eprintln!("top: {:.1} s", started.elapsed().as_secs_f64());
}

/// The LINES column of a `top` table row.
fn row_lines(table: &str, key: &str) -> Option<u64> {
    table.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key)).then(|| words.next().and_then(|w| w.parse().ok())).flatten()
    })
}

/// `top --kafka`: the lag per partition equals the group's real lag (offsets committed by a client
/// of the group, never joined by `top`), steady without traffic, growing while records arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_kafka_lag_matches_the_group() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};

    let started = Instant::now();
    let (es, kafka) = tokio::join!(elasticsearch(), sluice_integration_tests::kafka());
    let index = unique_name("sluice-view-lag");
    create_index(&es, &index).await;
    let topic = unique_name("sluice-view-lag");
    let group = unique_name("sluice-view-group");
    kafka.create_topic(&topic, 3).await;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.client_config().create().unwrap();
    let produce = |p: i32, n: usize| {
        for i in 0..n {
            let payload = format!("m{i}");
            producer.send(BaseRecord::<(), _>::to(&topic).partition(p).payload(&payload)).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    produce(0, 5);
    produce(1, 7);
    produce(2, 9);
    // Commit as the group would: p0 fully consumed, p1 at 2, p2 never committed.
    let consumer: BaseConsumer =
        kafka.client_config().set("group.id", &group).set("enable.auto.commit", "false").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5)).unwrap();
    tpl.add_partition_offset(&topic, 1, Offset::Offset(2)).unwrap();
    // A new group's coordinator may not be ready at once (NotCoordinator / CoordinatorLoadInProgress).
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        assert!(Instant::now() < deadline, "committing the group's offsets: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let kafka_args =
        ["--kafka", "--brokers", &kafka.bootstrap, "--topic", &topic, "--group", &group, "--interval", "1s"];
    let mut args = vec!["top", "--once", "-o", "json", "--index", &index];
    args.extend_from_slice(&kafka_args);
    let (code, out, err) = sluice(&es.url, &args);
    assert_eq!(code, 0, "{err}");
    let t: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let k = &t["kafka"];
    assert_eq!(k["lag"]["total"], 14, "{k}");
    assert_eq!(
        k["lag"]["partitions"],
        json!([
            {"partition": 0, "committed": 5, "low": 0, "high": 5, "lag": 0},
            {"partition": 1, "committed": 2, "low": 0, "high": 7, "lag": 5},
            {"partition": 2, "committed": null, "low": 0, "high": 9, "lag": 9},
        ])
    );
    assert_eq!(k["trend"]["direction"], "steady", "{k}");
    // `top` did not join the group: still no member, offsets unchanged.
    let committed = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)).unwrap();
    assert_eq!(committed.find_partition(&topic, 1).unwrap().offset(), Offset::Offset(2));

    // While records keep arriving the lag grows and there is no time to drain; the table says so.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (stop, topic, config) = (stop.clone(), topic.clone(), kafka.client_config());
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = config.create().unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = producer.send(BaseRecord::<(), _>::to(&topic).partition(2).payload("more"));
                producer.flush(Duration::from_secs(10)).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut args = vec!["top", "--once", "--index", &index];
    args.extend_from_slice(&kafka_args);
    let (code, out, err) = sluice(&es.url, &args);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Kafka topic {topic} group {group}: lag ")), "{out}");
    assert!(out.contains("growing") && out.contains("time to drain: never at this rate"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("2 ") && l.contains('↑')), "{out}");
    delete_index(&es, &index).await;
    eprintln!("top --kafka: {:.1} s", started.elapsed().as_secs_f64());
}

/// On a real terminal (tmux): prefixes coloured per pod, `--no-color` plain, Ctrl-C ends `-f` with 130;
/// `top` redraws its frame in place each interval and Ctrl-C ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_colours_and_ctrl_c() {
    let started = Instant::now();
    assert!(
        Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()),
        "tmux is needed for the terminal test (apt-get install tmux; .ci/run installs it)"
    );
    let es = elasticsearch().await;
    let index = unique_name("sluice-view-tty");
    create_index(&es, &index).await;
    let t0 = Utc::now() - TimeDelta::seconds(5);
    let recs = vec![
        rec("t-0", t0, "shop", "web-0", "nginx", "stdout", "hello from web-0"),
        rec("t-1", t0 + TimeDelta::milliseconds(10), "shop", "db-0", "postgres", "stdout", "hello from db-0"),
    ];
    bulk(&es, &index, &recs).await;
    let socket = unique_name("sluice-view-tmux");
    let tmux = |args: &[&str]| {
        let o = Command::new("tmux").args(["-L", &socket, "-f", "/dev/null"]).args(args).output().expect("tmux");
        assert!(
            o.status.success() || args[0] == "kill-server",
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let run = |session: &str, flags: &str| {
        let cmd = format!(
            "env -u NO_COLOR TERM=xterm-256color ELASTICSEARCH_URL={} {BIN} logs --index {index} {flags}; echo EXIT=$?; sleep 120",
            es.url
        );
        tmux(&["new-session", "-d", "-s", session, "-x", "160", "-y", "20", &cmd]);
    };
    let wait_pane = |session: &str, want: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pane = tmux(&["capture-pane", "-p", "-e", "-t", session]);
            if pane.contains(want) {
                return pane;
            }
            assert!(Instant::now() < deadline, "terminal never showed `{want}`:\n{pane}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    run("follow", "-f --poll 200ms");
    let pane = wait_pane("follow", "hello from db-0");
    for (pod, container) in [("web-0", "nginx"), ("db-0", "postgres")] {
        let colour = sluice_cli::output::pod_colour("shop", pod);
        let line = pane.lines().find(|l| l.contains(&format!("hello from {pod}"))).unwrap();
        assert!(
            line.contains(&format!("\x1b[{colour}mshop/{pod}/{container}")),
            "{pod} not in colour {colour}: {line:?}"
        );
    }
    tmux(&["send-keys", "-t", "follow", "C-c"]);
    wait_pane("follow", "EXIT=130");
    run("plain", "--no-color");
    let pane = wait_pane("plain", "EXIT=0");
    assert!(pane.contains("shop/web-0/nginx hello from web-0"), "{pane}");
    assert!(!pane.contains("\x1b[3") && !pane.contains("\x1b[9"), "--no-color printed colours: {pane:?}");
    // `top` on a terminal refreshes in place: the screen is redrawn each interval (not appended),
    // and a record indexed meanwhile shows in the next frame.
    let cmd = format!(
        "env ELASTICSEARCH_URL={} {BIN} top --index {index} --since 15m --interval 1s; echo EXIT=$?; sleep 120",
        es.url
    );
    tmux(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "20", &cmd]);
    let pane = wait_pane("top", ": 2 lines, ");
    assert!(pane.contains("shop") && pane.contains("LINES/S"), "{pane}");
    bulk(&es, &index, &[rec("t-2", t0 + TimeDelta::milliseconds(20), "shop", "web-0", "nginx", "stdout", "again")])
        .await;
    let pane = wait_pane("top", ": 3 lines, ");
    assert!(!pane.contains(": 2 lines, "), "the old frame stayed on screen:\n{pane}");
    assert_eq!(pane.matches("LINES/S").count(), 1, "frames appended instead of redrawn:\n{pane}");
    tmux(&["send-keys", "-t", "top", "C-c"]);
    wait_pane("top", "EXIT=130");
    tmux(&["kill-server"]);
    delete_index(&es, &index).await;
    eprintln!("terminal: {:.1} s", started.elapsed().as_secs_f64());
}
