//! The real `sluice-shipper` binary as operators run it: `/metrics`, `/healthz`, `/readyz` of a
//! running agent with `output: stdout`; tagged and counted records (parse errors, invalid UTF-8,
//! truncation); and `inspect` printing the same lines as `output: stdout`, multiline rules included.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use sluice_common::schema::Stream;
use sluice_shipper::testkit::{KubeletWriter, WriterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-shipper");

/// A port reserved for this test process (not bound and released: see the harness).
fn free_port() -> u16 {
    sluice_integration_tests::free_port()
}

/// Waits until the agent on `port` started two more full scans than now (each scan is followed
/// by a read of every file): the positive signal before asserting that nothing more was printed.
fn settle(port: u16) {
    let scans = || http_get(port, "/metrics").and_then(|(_, body)| metric(&body, "sluice_shipper_scans_total"));
    let start = scans().expect("scans_total on /metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    while scans().is_none_or(|n| n < start + 2.0) {
        assert!(Instant::now() < deadline, "no two more scans within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Sum of the samples of `name` (all label sets), if the metric is exposed.
fn metric(body: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let base = series.split('{').next().unwrap_or_default();
        if base == name {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

fn config(env: &Env, extra: &str) -> std::path::PathBuf {
    let path = env.tmp.path().join("shipper.yaml");
    fs::write(
        &path,
        format!(
            "node_name: node-1\noutput: stdout\npaths:\n  root: {}\n  symlink_dirs: []\ncheckpoint:\n  dir: {}\n  interval: 200ms\ntail:\n  rescan_interval: 200ms\n{extra}",
            env.root.display(),
            env.ckpt.display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, out: &Path) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["--log-level", "warn"])
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn terminate(mut child: Child) {
    let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit status {status}");
}

fn docs(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect()
}

#[test]
fn running_agent_exposes_shipper_metrics_health_and_counts_tagged_records() {
    let env = Env::new();
    let dir = env.root.join("ns_metrics_uid-m/app");
    fs::create_dir_all(&dir).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(b"2026-11-27T00:17:09.669794202Z stdout F plain line\n");
    body.extend_from_slice(b"this is not a CRI line\n");
    body.extend_from_slice(b"2026-11-27T02:17:09.5+02:00 stderr F bad \xc3\x28 utf8\n");
    body.extend_from_slice(format!("2026-11-27T00:17:10Z stdout F {}\n", "x".repeat(3000)).as_bytes());
    fs::write(dir.join("0.log"), &body).unwrap();
    let port = free_port();
    let cfg = config(&env, &format!("parse:\n  max_line_bytes: 1024\nmetrics:\n  listen: 127.0.0.1:{port}\n"));
    let out = env.tmp.path().join("out.jsonl");
    let child = spawn(&cfg, &out);

    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Some((200, text)) = http_get(port, "/metrics")
            && metric(&text, "sluice_shipper_records_acked_total") == Some(4.0)
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no metrics with 4 acknowledged records on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (name, want) in [
        ("sluice_shipper_records_total", 4.0),
        ("sluice_shipper_lines_read_total", 4.0),
        ("sluice_shipper_bytes_read_total", body.len() as f64),
        ("sluice_shipper_parse_errors_total", 1.0),
        ("sluice_shipper_invalid_utf8_total", 1.0),
        ("sluice_shipper_truncated_total", 1.0),
        ("sluice_shipper_files_discovered_total", 1.0),
        ("sluice_shipper_files", 1.0),
    ] {
        assert_eq!(metric(&metrics, name), Some(want), "{name} in\n{metrics}");
    }
    for name in [
        "sluice_shipper_scans_total",
        "sluice_shipper_checkpoint_writes_total",
        "sluice_shipper_copytruncate_total",
        "sluice_shipper_rotations_total",
        "sluice_shipper_backpressure_total",
        "sluice_shipper_bytes_given_up_total",
        "sluice_shipper_inflight_bytes",
        "sluice_shipper_lag_bytes",
        "sluice_shipper_checkpoint_entries",
    ] {
        assert!(metric(&metrics, name).is_some(), "{name} missing in\n{metrics}");
    }
    assert!(metrics.contains("sluice_shipper_parse_errors_total{reason=\"timestamp\"} 1"), "{metrics}");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));
    terminate(child);

    let printed = docs(&fs::read_to_string(&out).unwrap());
    assert_eq!(printed.len(), 4);
    let doc = |i: usize| &printed[i]["doc"];
    assert_eq!(doc(0)["message"], "plain line");
    assert_eq!(doc(1)["message"], "this is not a CRI line");
    assert_eq!(doc(1)["tags"], serde_json::json!(["parse_error", "metadata_from_path"]));
    assert_eq!(doc(2)["message"], "bad \u{fffd}( utf8");
    assert_eq!(doc(2)["@timestamp"], "2026-11-27T00:17:09.500000000Z");
    assert_eq!(doc(2)["tags"], serde_json::json!(["invalid_utf8", "metadata_from_path"]));
    assert_eq!(doc(3)["message"].as_str().unwrap().len(), 1024);
    assert_eq!(doc(3)["tags"], serde_json::json!(["truncated", "metadata_from_path"]));
    for (i, p) in printed.iter().enumerate() {
        assert_eq!(p["doc"]["kubernetes"]["namespace"], "ns");
        assert_eq!(p["doc"]["kubernetes"]["pod"]["name"], "metrics");
        assert!(p["id"].as_str().unwrap().ends_with(&format!("-{}", p["doc"]["log"]["offset"])), "record {i}");
    }
}

#[test]
fn inspect_prints_the_same_lines_as_output_stdout_with_multiline_rules() {
    let env = Env::new();
    let opts = WriterOptions { compress: false, ..WriterOptions::default() };
    let mut w = KubeletWriter::new(&env.root, ("java", "svc-0", "u-1", "app"), 0, opts).unwrap();
    for n in 0..3 {
        w.write_line(Stream::Stdout, &format!("2027-01-01 00:00:0{n} ERROR request {n} failed")).unwrap();
        w.write_line(Stream::Stdout, "java.lang.IllegalStateException: boom").unwrap();
        w.write_line(Stream::Stdout, "\tat com.example.Handler.handle(Handler.java:42)").unwrap();
        w.write_line(Stream::Stdout, "\tat com.example.Server.run(Server.java:7)").unwrap();
    }
    w.write_line(Stream::Stdout, &format!("2027-01-01 00:00:09 INFO {}", "long ".repeat(5_000))).unwrap();
    let port = free_port();
    let cfg = config(
        &env,
        &format!(
            "metrics:\n  listen: 127.0.0.1:{port}\nmultiline:\n  - namespaces: [java]\n    start_pattern: '^\\d{{4}}-\\d{{2}}-\\d{{2}} '\n    timeout: 300ms\n"
        ),
    );
    let inspect = Command::new(BIN).arg("--config").arg(&cfg).arg("inspect").arg(w.live_path()).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let inspected = String::from_utf8(inspect.stdout).unwrap();
    let lines = docs(&inspected);
    assert_eq!(lines.len(), 4, "{inspected}");
    for (n, l) in lines.iter().take(3).enumerate() {
        let msg = l["doc"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("2027-01-01 00:00:0{n} ERROR")), "{msg}");
        assert_eq!(msg.lines().count(), 4);
        assert_eq!(l["doc"]["tags"], serde_json::json!(["multiline", "metadata_from_path"]));
    }

    let out = env.tmp.path().join("out.jsonl");
    let child = spawn(&cfg, &out);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_to_string(&out).unwrap().lines().count() < 4 {
        assert!(Instant::now() < deadline, "output: stdout printed {}", fs::read_to_string(&out).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    settle(port);
    terminate(child);
    assert_eq!(fs::read_to_string(&out).unwrap(), inspected, "`output: stdout` prints what `inspect` prints");
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `RssAnon`, …), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"));
    kb * 1024
}

/// docs/shipper.md, `limits.inflight_bytes`: with the default 4 MiB, a node with 500 files at full
/// speed keeps its anonymous memory (heap, buffers, stacks: what grows with files and records)
/// under 16 MiB; records in flight never exceed the limit (plus one record).
///
/// `VmHWM` also counts the executable's own code pages: this debug build maps ~25 MiB of them (a
/// release build far fewer), so the whole resident set only gets a loose ceiling here; the release
/// binary's is measured with Kafka and enrichment in BENCHMARKS.md.
#[test]
fn five_hundred_files_at_full_speed_stay_under_16_mib_of_heap_and_the_inflight_limit() {
    let env = Env::new();
    let (files, lines) = (500u64, 200u64);
    common::write_pod_files(&env.root, files, lines);
    let port = free_port();
    let cfg = config(&env, &format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
    let out = env.tmp.path().join("out.jsonl");
    let child = spawn(&cfg, &out);
    let total = (files * lines) as f64;
    let limit = 4.0 * 1024.0 * 1024.0;
    let mut max_inflight: f64 = 0.0;
    let mut max_anon = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        max_anon = max_anon.max(status_bytes(child.id(), "RssAnon"));
        if let Some((200, text)) = http_get(port, "/metrics") {
            max_inflight = max_inflight.max(metric(&text, "sluice_shipper_inflight_bytes").unwrap_or(0.0));
            if metric(&text, "sluice_shipper_records_acked_total") == Some(total) {
                assert_eq!(metric(&text, "sluice_shipper_files"), Some(files as f64));
                break;
            }
        }
        assert!(Instant::now() < deadline, "not all {total} records acknowledged within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss = status_bytes(child.id(), "VmHWM");
    terminate(child);
    eprintln!(
        "500 files, {total} records: peak RSS {} KiB, anonymous (sampled) {} KiB, max in flight seen {max_inflight} bytes",
        rss / 1024,
        max_anon / 1024
    );
    assert!(max_anon < 16 * 1024 * 1024, "anonymous memory peaked at {} KiB with 500 files", max_anon / 1024);
    assert!(rss < 48 * 1024 * 1024, "peak RSS {} KiB with 500 files", rss / 1024);
    assert!(max_inflight <= limit + 1024.0, "{max_inflight} bytes in flight with a 4 MiB limit");
    assert_eq!(fs::read_to_string(&out).unwrap().lines().count() as f64, total);
}

/// The binary allocates with jemalloc, one arena (BENCHMARKS.md, issue #16: glibc's allocator was a
/// third of the read thread): jemalloc's own statistics, asked for through `MALLOC_CONF` (read by the
/// unprefixed build that also serves librdkafka's C `malloc`), show its options.
#[test]
fn the_process_allocator_is_jemalloc_with_one_arena() {
    let out = Command::new(BIN)
        .arg("--version")
        .env("MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run sluice-shipper --version");
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("jemalloc statistics"), "no jemalloc statistics: {stats}");
    assert!(stats.contains("opt.narenas: 1\n"), "not one arena: {stats}");
}
