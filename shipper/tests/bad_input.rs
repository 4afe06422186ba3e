//! Issue #14, hostile input (shipper part): whatever a container, a runtime or an operator puts in
//! the log tree or the checkpoint directory ends in a clear error or a counted metric — never a
//! crash, a hang, unbounded memory or silent loss. The matrix with its outcomes is in
//! docs/hostile-input.md.
//!
//! In process (pipeline + acknowledging test sink) where the metrics are enough; the real binary
//! where memory (RSS) or privileges (permission denied: the shipper runs without
//! `CAP_DAC_OVERRIDE`/`CAP_DAC_READ_SEARCH`, see [`spawn_binary`]) are asserted. The checkpoint
//! tests mount a small tmpfs (the tests run as root).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sluice_shipper::sink::{AckMode, Collected};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-shipper");
const TS: &str = "2026-11-27T00:17:09.669794202Z";

fn pod_dir(env: &Env, pod: &str) -> PathBuf {
    let dir = env.root.join(format!("ns_{pod}_uid-{pod}/app"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn cri(content: &str) -> String {
    format!("{TS} stdout F {content}\n")
}

fn append(path: &Path, bytes: &[u8]) {
    fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
}

fn value(c: &Collected) -> serde_json::Value {
    serde_json::from_slice(&c.value).expect("every record is a JSON document")
}

fn tags(v: &serde_json::Value) -> Vec<String> {
    v["tags"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

fn of_pod<'a>(records: &'a [Collected], pod: &str) -> Vec<&'a Collected> {
    let needle = format!("_{pod}_");
    records.iter().filter(|c| value(c)["log"]["file"]["path"].as_str().unwrap().contains(&needle)).collect()
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `secs`.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A valid RFC 3339 UTC timestamp with a four-digit year, as `@timestamp` must be.
fn assert_rfc3339_utc(ts: &str) {
    let b = ts.as_bytes();
    assert!(ts.len() >= 20 && b[4] == b'-' && b[10] == b'T' && ts.ends_with('Z'), "@timestamp {ts:?}");
    assert!(b[..4].iter().all(u8::is_ascii_digit), "@timestamp {ts:?}");
}

#[test]
fn invalid_utf8_and_nul_bytes_in_cri_and_docker_lines_are_replaced_tagged_and_counted() {
    let env = Env::new();
    let c = pod_dir(&env, "utf");
    let mut body = Vec::new();
    body.extend_from_slice(format!("{TS} stdout F ").as_bytes());
    body.extend_from_slice(b"bad \xc3\x28 utf8\n");
    body.extend_from_slice(format!("{TS} stdout F ").as_bytes());
    body.extend_from_slice(b"lone \xff\xfe and \x00 nul\n");
    body.extend_from_slice(format!("{TS} stderr F nul\0in\0the\0middle\n").as_bytes());
    body.extend_from_slice(b"\x00\x00\x00\n");
    fs::write(c.join("0.log"), &body).unwrap();
    let d = pod_dir(&env, "dkr");
    let docker = [
        // An escaped NUL is valid JSON (kept as U+0000); raw control bytes and invalid UTF-8 are not.
        format!(r#"{{"log":"escaped \u0000 nul\n","stream":"stdout","time":"{TS}"}}"#).into_bytes(),
        [&b"{\"log\":\"raw \x00 nul\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-27T00:17:09Z\"}"[..]].concat(),
        [&b"{\"log\":\"bad \xff utf8\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-27T00:17:09Z\"}"[..]].concat(),
        format!(r#"{{"log":"lone \ud800 surrogate\n","stream":"stdout","time":"{TS}"}}"#).into_bytes(),
        format!(r#"{{"log":"after\n","stream":"stdout","time":"{TS}"}}"#).into_bytes(),
    ];
    let mut dbody = Vec::new();
    for l in &docker {
        dbody.extend_from_slice(l);
        dbody.push(b'\n');
    }
    fs::write(d.join("0.log"), &dbody).unwrap();

    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(4 + docker.len(), 30);
    std::thread::sleep(Duration::from_millis(300));
    let (records, metrics) = run.stop();
    assert_eq!(records.len(), 4 + docker.len(), "one record per line, none lost or extra");
    let cri_docs: Vec<_> = of_pod(&records, "utf").into_iter().map(value).collect();
    assert_eq!(cri_docs[0]["message"], "bad \u{fffd}( utf8");
    assert_eq!(cri_docs[1]["message"], "lone \u{fffd}\u{fffd} and \u{0} nul");
    assert_eq!(cri_docs[2]["message"], "nul\0in\0the\0middle");
    assert!(tags(&cri_docs[0]).contains(&"invalid_utf8".into()));
    assert!(tags(&cri_docs[1]).contains(&"invalid_utf8".into()));
    assert!(!tags(&cri_docs[2]).contains(&"invalid_utf8".into()), "NUL is valid UTF-8");
    assert_eq!(cri_docs[3]["message"], "\0\0\0");
    assert!(tags(&cri_docs[3]).contains(&"parse_error".into()));
    let docker_docs: Vec<_> = of_pod(&records, "dkr").into_iter().map(value).collect();
    assert_eq!(docker_docs[0]["message"], "escaped \0 nul");
    assert!(!tags(&docker_docs[0]).contains(&"parse_error".into()));
    for (i, d) in docker_docs.iter().enumerate().skip(1).take(3) {
        assert!(tags(d).contains(&"parse_error".into()), "docker line {i}: {d}");
        assert!(d["message"].as_str().unwrap().starts_with("{\"log\":"), "the raw line is kept: {d}");
    }
    assert_eq!(docker_docs[4]["message"], "after");
    for d in cri_docs.iter().chain(&docker_docs) {
        assert_rfc3339_utc(d["@timestamp"].as_str().unwrap());
    }
    assert_eq!(metrics.invalid_utf8.get(), 3, "two CRI lines and the docker line with \\xff (forwarded raw)");
    let parse_errors: u64 = ["missing_field", "json", "timestamp"]
        .iter()
        .map(|r| metrics.parse_errors.get_or_create(&sluice_shipper::metrics::Reason { reason: r }).get())
        .sum();
    assert_eq!(parse_errors, 4, "the NUL-only CRI line and three docker lines");
}

#[test]
fn truncated_and_deeply_nested_json_lines_are_forwarded_raw_and_counted() {
    let env = Env::new();
    let d = pod_dir(&env, "json");
    let deep = format!(
        r#"{{"log":"deep\n","stream":"stdout","time":"{TS}","attrs":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let shallow = format!(
        r#"{{"log":"shallow\n","stream":"stdout","time":"{TS}","attrs":{}1{}}}"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    let lines = [
        format!(r#"{{"log":"first\n","stream":"stdout","time":"{TS}"}}"#),
        r#"{"log":"truncated in the mid"#.to_owned(),
        r#"{"log":"x\n","stream":"stdout""#.to_owned(),
        deep.clone(),
        shallow,
        "{".repeat(100_000), // serde_json's depth limit (128): an error, not a stack overflow
        format!(r#"{{"log":"last\n","stream":"stdout","time":"{TS}"}}"#),
    ];
    fs::write(d.join("0.log"), lines.join("\n") + "\n").unwrap();
    let mut cfg = env.config();
    cfg.parse.max_line_bytes = sluice_shipper::config::ByteSize::kib(16);
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(lines.len(), 30);
    std::thread::sleep(Duration::from_millis(300));
    let (records, metrics) = run.stop();
    let docs: Vec<_> = records.iter().map(value).collect();
    assert_eq!(docs.len(), lines.len(), "one record per line");
    assert_eq!(docs[0]["message"], "first");
    // serde_json skips an unknown key's value without recursion: 10 000 levels are no stack risk.
    assert_eq!(docs[3]["message"], "deep", "unknown keys are ignored, however nested");
    assert_eq!(docs[4]["message"], "shallow");
    assert_eq!(docs[6]["message"], "last");
    for i in [1, 2, 5] {
        assert!(tags(&docs[i]).contains(&"parse_error".into()), "line {i}: {}", docs[i]);
        assert!(docs[i]["message"].as_str().unwrap().len() <= 16 * 1024, "cut at max_line_bytes");
    }
    assert!(tags(&docs[5]).contains(&"truncated".into()));
    assert_eq!(metrics.parse_errors.get_or_create(&sluice_shipper::metrics::Reason { reason: "json" }).get(), 3);
}

#[test]
fn malformed_and_out_of_range_timestamps_are_tagged_and_dated_from_the_file() {
    let env = Env::new();
    let c = pod_dir(&env, "ts");
    let bad = [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-27T25:00:00Z",
        "0000-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "99999-01-01T00:00:00Z",
        "2026-11-27T00:00:00.Z",
        "-2026-11-27T00:00:00Z",
        "1764202629",
    ];
    let mut body = format!("{TS} stdout F good\n");
    for (i, ts) in bad.iter().enumerate() {
        body.push_str(&format!("{ts} stdout F bad {i}\n"));
    }
    fs::write(c.join("0.log"), &body).unwrap();
    let d = pod_dir(&env, "dts");
    let mut dbody = format!("{{\"log\":\"good\\n\",\"stream\":\"stdout\",\"time\":\"{TS}\"}}\n");
    for (i, ts) in bad.iter().enumerate() {
        dbody.push_str(&format!("{{\"log\":\"bad {i}\\n\",\"stream\":\"stdout\",\"time\":\"{ts}\"}}\n"));
    }
    fs::write(d.join("0.log"), &dbody).unwrap();
    let n = 2 * (1 + bad.len());
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(n, 30);
    std::thread::sleep(Duration::from_millis(300));
    let (records, metrics) = run.stop();
    assert_eq!(records.len(), n);
    for pod in ["ts", "dts"] {
        let docs: Vec<_> = of_pod(&records, pod).into_iter().map(value).collect();
        assert_eq!(docs.len(), 1 + bad.len());
        for (i, doc) in docs.iter().enumerate().skip(1) {
            assert!(tags(doc).contains(&"parse_error".into()), "{pod} line {i}: {doc}");
            assert_eq!(doc["@timestamp"], TS, "{pod} line {i} is dated by the line before it: {doc}");
        }
    }
    let by_ts = metrics.parse_errors.get_or_create(&sluice_shipper::metrics::Reason { reason: "timestamp" }).get();
    assert_eq!(by_ts, 2 * bad.len() as u64);
}

#[test]
fn a_directory_fifo_socket_or_symlink_loop_at_a_log_path_is_skipped_without_blocking() {
    let env = Env::new();
    let good = pod_dir(&env, "good");
    fs::write(good.join("0.log"), cri("good 0")).unwrap();
    // A log file read, then replaced by a FIFO (nothing writes to it: opening it would block).
    let fifo_dir = pod_dir(&env, "fifo");
    fs::write(fifo_dir.join("0.log"), cri("fifo 0")).unwrap();
    // Never regular files: a socket, a directory, symlink loops (to itself, a cycle, a directory cycle).
    let sock = pod_dir(&env, "sock");
    let _listener = std::os::unix::net::UnixListener::bind(sock.join("0.log")).unwrap();
    let dir = pod_dir(&env, "dir");
    fs::create_dir_all(dir.join("0.log/sub")).unwrap();
    let lp = pod_dir(&env, "loop");
    std::os::unix::fs::symlink(lp.join("0.log"), lp.join("0.log")).unwrap();
    std::os::unix::fs::symlink(lp.join("2.log"), lp.join("1.log")).unwrap();
    std::os::unix::fs::symlink(lp.join("1.log"), lp.join("2.log")).unwrap();
    std::os::unix::fs::symlink(&lp, lp.join("again")).unwrap();
    let mut cfg = env.config();
    // `/var/log/containers`-style links: one into the loop, one dangling.
    let links = env.tmp.path().join("containers");
    fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(lp.join("0.log"), links.join("a_b_c-1.log")).unwrap();
    std::os::unix::fs::symlink(env.tmp.path().join("nowhere.log"), links.join("d_e_f-2.log")).unwrap();
    cfg.paths.symlink_dirs = vec![links.display().to_string()];

    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(2, 30);
    fs::remove_file(fifo_dir.join("0.log")).unwrap();
    assert!(Command::new("mkfifo").arg(fifo_dir.join("0.log")).status().unwrap().success());
    // The read thread is not stuck: a later line of another file still arrives, repeatedly.
    for i in 1..4 {
        std::thread::sleep(Duration::from_millis(600)); // several rescans (200 ms) see the FIFO
        append(&good.join("0.log"), cri(&format!("good {i}")).as_bytes());
        run.wait_for(2 + i, 30);
    }
    // Each path is counted (and logged) once, however many scans see it: the socket, the directory
    // and the FIFO as not regular, the three looping links as broken.
    let skipped = |reason| run.metrics.paths_skipped.get_or_create(&sluice_shipper::metrics::Reason { reason }).get();
    assert_eq!((skipped("not_regular"), skipped("broken_symlink")), (3, 3));
    // The FIFO replaced by a regular file again: a new generation, read.
    fs::remove_file(fifo_dir.join("0.log")).unwrap();
    fs::write(fifo_dir.join("0.log"), cri("fifo 1")).unwrap();
    run.wait_for(6, 30);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = run.stop();
    let messages: Vec<String> = records.iter().map(|c| value(c)["message"].as_str().unwrap().to_owned()).collect();
    let mut sorted = messages.clone();
    sorted.sort();
    assert_eq!(sorted, ["fifo 0", "fifo 1", "good 0", "good 1", "good 2", "good 3"], "{messages:?}");
}

#[test]
fn a_file_vanishing_mid_read_is_read_to_its_end_and_an_unread_one_is_counted() {
    let env = Env::new();
    let dir = pod_dir(&env, "gone");
    let line = |i: usize| cri(&format!("gone {i:05} {}", "x".repeat(80)));
    // Deleted (with its pod directory) while open: the open descriptor is read to the end.
    let body: String = (0..3000).map(line).collect();
    fs::write(dir.join("0.log"), &body).unwrap();
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::kib(64);
    let run = start(&cfg, AckMode::Shuffled(32));
    run.wait_for(1, 30);
    fs::remove_dir_all(env.root.join("ns_gone_uid-gone")).unwrap();
    run.wait_for(3000, 60);
    wait_until(30, "the deleted generation to complete", || run.metrics.generations_completed.get() == 1);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = run.stop();
    let mut seen: Vec<String> =
        records.iter().map(|c| value(c)["message"].as_str().unwrap()[5..10].to_owned()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3000, "every line of the vanished file");

    // A rotated generation deleted before it was ever opened (the reader is held back by a sink
    // that never acknowledges): lost, and counted as such.
    let env = Env::new();
    let dir = pod_dir(&env, "lag");
    let old: String = (0..3000).map(line).collect();
    fs::write(dir.join("0.log.20260101-000001"), &old).unwrap();
    let unread: String = (3000..3100).map(line).collect();
    fs::write(dir.join("0.log.20260101-000002"), &unread).unwrap();
    fs::write(dir.join("0.log"), line(9999)).unwrap();
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::kib(64);
    let run = start(&cfg, AckMode::Never);
    run.wait_for(1, 30);
    fs::remove_file(dir.join("0.log.20260101-000002")).unwrap();
    let deleted_unread = || {
        run.metrics.files_given_up.get_or_create(&sluice_shipper::metrics::Reason { reason: "deleted_unread" }).get()
    };
    wait_until(30, "files_given_up{reason=deleted_unread}", || deleted_unread() == 1);
    assert_eq!(run.metrics.bytes_given_up.get(), unread.len() as u64, "the bytes lost are counted");
    let (records, _) = run.stop();
    assert!(records.len() < 3000, "the reader was held back: {} records", records.len());
}

/// A tmpfs mounted for one test, unmounted on drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot mount a tmpfs at {} (these tests need root with CAP_SYS_ADMIN)",
            path.display()
        );
        Tmpfs(path.to_owned())
    }
    fn remount(&self, opts: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount {opts}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn checkpoint_offset(dir: &Path) -> Option<u64> {
    let bytes = fs::read(dir.join("shipper-checkpoint.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("the checkpoint is never half written");
    v["generations"].as_array()?.iter().map(|g| g["offset"].as_u64().unwrap()).max()
}

/// Full and read-only checkpoint directory: the shipper keeps shipping, the checkpoint does not
/// advance (and is never left half written), every failed write is counted, and it catches up
/// once the directory is writable again.
fn checkpoint_dir_unwritable(break_it: impl Fn(&Tmpfs), repair: impl Fn(&Tmpfs)) {
    let env = Env::new();
    let fs_ = Tmpfs::mount(&env.ckpt, "64k");
    let dir = pod_dir(&env, "ck");
    let live = dir.join("0.log");
    fs::write(&live, cri("before 0")).unwrap();
    let first = fs::metadata(&live).unwrap().len();
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(1, 30);
    wait_until(30, "the first checkpoint", || checkpoint_offset(&env.ckpt) == Some(first));
    break_it(&fs_);
    let errors = run.metrics.checkpoint_errors.get();
    for i in 1..=20 {
        append(&live, cri(&format!("during {i}")).as_bytes());
    }
    run.wait_for(21, 30);
    wait_until(30, "two more failed checkpoint writes", || run.metrics.checkpoint_errors.get() >= errors + 2);
    assert_eq!(checkpoint_offset(&env.ckpt), Some(first), "the checkpoint does not advance");
    let size = fs::metadata(&live).unwrap().len();
    repair(&fs_);
    wait_until(30, "the checkpoint to catch up", || checkpoint_offset(&env.ckpt) == Some(size));
    let errors = run.metrics.checkpoint_errors.get();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(run.metrics.checkpoint_errors.get(), errors, "no failures once repaired");
    let (records, _) = run.stop();
    assert_eq!(records.len(), 21);
}

#[test]
fn a_full_checkpoint_directory_keeps_shipping_does_not_advance_and_recovers() {
    checkpoint_dir_unwritable(
        |fs_| {
            // Fill the tmpfs to the last byte.
            let mut f = fs::File::create(fs_.0.join("filler")).unwrap();
            let chunk = vec![0u8; 4096];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.write_all(&[0]);
        },
        |fs_| fs::remove_file(fs_.0.join("filler")).unwrap(),
    );
}

#[test]
fn a_read_only_checkpoint_directory_keeps_shipping_does_not_advance_and_recovers() {
    checkpoint_dir_unwritable(|fs_| fs_.remount("ro"), |fs_| fs_.remount("rw"));
}

// ---------------------------------------------------------------------------------------------
// The real binary: memory and privileges.

/// A port reserved for this test process until it exits (leased by the harness, not bound and
/// released: another test's container or an outgoing connection cannot take it before the
/// shipper binds it).
fn free_port() -> u16 {
    sluice_integration_tests::free_port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// Sum of the samples of series starting with `prefix` (name, or name with labels).
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

struct Shipper {
    child: Child,
    port: u16,
    out: PathBuf,
}

/// Starts `sluice-shipper` with `output: stdout` on `env`. As root, but without the capabilities
/// that bypass file permissions (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, dropped from the
/// bounding set with `setpriv`): a file with mode 000 is as unreadable to it as to an unprivileged
/// agent, while the binary in the build tree (wherever CI put it) stays executable.
fn spawn_binary(env: &Env, extra: &str) -> Shipper {
    let port = free_port();
    let config = env.tmp.path().join("shipper.yaml");
    fs::write(
        &config,
        format!(
            "node_name: node-1\noutput: stdout\npaths:\n  root: {}\n  symlink_dirs: []\ncheckpoint:\n  dir: {}\n  interval: 200ms\ntail:\n  rescan_interval: 200ms\nmetrics:\n  listen: 127.0.0.1:{port}\n{extra}",
            env.root.display(),
            env.ckpt.display()
        ),
    )
    .unwrap();
    let out = env.tmp.path().join("out.jsonl");
    let child = Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .args(["--log-level", "warn"])
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("setpriv (util-linux) runs the shipper");
    let s = Shipper { child, port, out };
    wait_until(30, "the shipper's /metrics", || http_get(port, "/metrics").is_some());
    s
}

impl Shipper {
    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").unwrap_or_default()
    }
    fn docs(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(&self.out).unwrap();
        // The last line may be being written.
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["doc"].clone())
            .collect()
    }
    fn wait_docs(&self, n: usize, secs: u64) -> Vec<serde_json::Value> {
        wait_until(secs, &format!("{n} records printed"), || self.docs().len() >= n);
        self.docs()
    }
    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    fn terminate(mut self) {
        let term = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "graceful shutdown exit status {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the shipper did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `prefix` and then `len` bytes of `fill` without any newline.
fn write_unterminated(path: &Path, prefix: &[u8], len: usize, fill: u8) {
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    f.write_all(prefix).unwrap();
    let chunk = vec![fill; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

#[test]
fn lines_of_10_and_100_mib_without_newline_keep_memory_bounded() {
    const MIB: usize = 1 << 20;
    let env = Env::new();
    // CRI with a header (a partial line that never ends), docker json, and raw bytes.
    let a = pod_dir(&env, "cri10").join("0.log");
    write_unterminated(&a, format!("{TS} stdout F ").as_bytes(), 10 * MIB, b'a');
    let b = pod_dir(&env, "cri100").join("0.log");
    write_unterminated(&b, format!("{TS} stdout F ").as_bytes(), 100 * MIB, b'b');
    let c = pod_dir(&env, "docker100").join("0.log");
    write_unterminated(&c, br#"{"log":""#, 100 * MIB, b'c');
    let d = pod_dir(&env, "raw100").join("0.log");
    write_unterminated(&d, b"", 100 * MIB, 0xff);
    let total: u64 = [&a, &b, &c, &d].iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let started = Instant::now();
    let shipper = spawn_binary(&env, "parse:\n  partial_flush_timeout: 1s\n");
    // Every file read to its end.
    wait_until(300, "all 310 MiB read", || {
        metric(&shipper.metrics(), "sluice_shipper_bytes_read_total") >= total as f64
    });
    let read_secs = started.elapsed().as_secs_f64();
    // Each file's line is shipped, cut at max_line_bytes (1 MiB), before it ends.
    let docs = shipper.wait_docs(4, 60);
    for doc in &docs {
        let t = tags(doc);
        assert!(doc["message"].as_str().unwrap().len() <= MIB, "cut at max_line_bytes");
        assert!(t.contains(&"truncated".into()) || t.contains(&"partial_flushed".into()), "{t:?}");
    }
    let peak = shipper.peak_rss_kib();
    eprintln!("read 310 MiB of unterminated lines in {read_secs:.1}s; shipper peak RSS {} MiB", peak / 1024);
    assert!(peak < 96 * 1024, "peak RSS {} MiB: memory is not bounded by max_line_bytes", peak / 1024);
    // The lines end; what follows is read as usual.
    for p in [&a, &b, &d] {
        append(p, format!("\n{TS} stdout F after\n").as_bytes());
    }
    append(&c, format!("\n{{\"log\":\"after\\n\",\"stream\":\"stdout\",\"time\":\"{TS}\"}}\n").as_bytes());
    wait_until(60, "the lines after the long ones", || {
        shipper.docs().iter().filter(|d| d["message"] == "after").count() == 4
    });
    assert!(metric(&shipper.metrics(), "sluice_shipper_truncated_total") >= 4.0);
    shipper.terminate();
}

#[test]
fn permission_denied_is_counted_and_the_file_is_read_once_readable() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let ok = pod_dir(&env, "ok").join("0.log");
    fs::write(&ok, cri("ok 0")).unwrap();
    let locked = pod_dir(&env, "locked").join("0.log");
    fs::write(&locked, cri("locked 0")).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let closed_dir = pod_dir(&env, "closed");
    fs::write(closed_dir.join("0.log"), cri("closed 0")).unwrap();
    fs::set_permissions(&closed_dir, fs::Permissions::from_mode(0o000)).unwrap();
    let shipper = spawn_binary(&env, "");
    shipper.wait_docs(1, 30);
    wait_until(30, "files_given_up{reason=unreadable} and read errors", || {
        let m = shipper.metrics();
        metric(&m, "sluice_shipper_files_given_up_total{reason=\"unreadable\"}") == 1.0
            && metric(&m, "sluice_shipper_read_errors_total") >= 2.0
    });
    assert_eq!(shipper.docs().len(), 1, "nothing of the unreadable files yet");
    // Readable again (and written to): read from its start, nothing lost.
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&closed_dir, fs::Permissions::from_mode(0o755)).unwrap();
    append(&locked, cri("locked 1").as_bytes());
    let docs = shipper.wait_docs(4, 30);
    let mut messages: Vec<&str> = docs.iter().map(|d| d["message"].as_str().unwrap()).collect();
    messages.sort_unstable();
    assert_eq!(messages, ["closed 0", "locked 0", "locked 1", "ok 0"]);
    shipper.terminate();
}
