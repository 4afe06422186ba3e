//! Shared helpers of the read-path tests.
#![allow(dead_code, missing_docs)]

pub mod kafka_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_shipper::config::{Output, ShipperConfig};
use sluice_shipper::metrics::Metrics;
use sluice_shipper::pipeline::{self, Pipeline, Stopper, Summary};
use sluice_shipper::sink::{AckMode, CollectSink, Collected};

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub ckpt: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods");
        let ckpt = tmp.path().join("ckpt");
        std::fs::create_dir_all(&root).unwrap();
        Env { tmp, root, ckpt }
    }

    pub fn config(&self) -> ShipperConfig {
        let mut c = ShipperConfig { node_name: "node-1".into(), output: Output::Stdout, ..Default::default() };
        c.paths.root = self.root.display().to_string();
        c.paths.symlink_dirs = vec![];
        c.checkpoint.dir = self.ckpt.display().to_string();
        c.checkpoint.interval = Duration::from_millis(200);
        c.tail.rescan_interval = Duration::from_millis(200);
        c.tail.rotate_wait = Duration::from_millis(500);
        c
    }
}

pub struct Running {
    pub handle: JoinHandle<Summary>,
    pub stopper: Stopper,
    pub received: Arc<Mutex<Vec<Collected>>>,
    pub metrics: Metrics,
}

pub fn start(cfg: &ShipperConfig, mode: AckMode) -> Running {
    let (acker, events) = pipeline::channel();
    let sink = CollectSink::new(acker, mode);
    let received = sink.received.clone();
    let metrics = Metrics::default();
    let p = Pipeline::new(cfg, sink, events, metrics.clone()).unwrap();
    let stopper = p.stopper();
    let handle = std::thread::spawn(move || p.run().unwrap());
    Running { handle, stopper, received, metrics }
}

impl Running {
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until at least `n` records arrived (panics after `secs`).
    pub fn wait_for(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last_print = Instant::now();
        while self.count() < n {
            if last_print.elapsed() > Duration::from_secs(5) {
                eprintln!("waiting: {} of {n} records", self.count());
                last_print = Instant::now();
            }
            assert!(Instant::now() < deadline, "timed out: {} of {n} records", self.count());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the pipeline completed `n` more discovery scans (a clock that runs with the
    /// pipeline, not beside it; panics after 30 s).
    pub fn wait_scans(&self, n: u64) {
        let target = self.metrics.scans.get() + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metrics.scans.get() < target {
            assert!(Instant::now() < deadline, "the pipeline did not scan {n} times within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` records arrived (panics after `secs`), lets the pipeline run two more scans
    /// (anything unexpected — a duplicate, a late record — has time to show), then stops it.
    pub fn finish(self, n: usize, secs: u64) -> (Vec<Collected>, Metrics) {
        self.wait_for(n, secs);
        self.wait_scans(2);
        self.stop()
    }

    /// Waits until `cond` holds for the pipeline's metrics (panics naming `what` after `secs`).
    pub fn wait_until(&self, what: &str, secs: u64, cond: impl Fn(&Metrics) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond(&self.metrics) {
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {what} ({} records)",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the pipeline started two more full scans than now: the scan before the second
    /// was followed by a read of every known file. A positive signal that what could be read was
    /// read, to assert on before "nothing (more) was sent" — never a fixed sleep.
    pub fn settle(&self) {
        let scans = self.metrics.scans.get();
        self.wait_until("two more scans", 60, |m| m.scans.get() >= scans + 2);
    }

    pub fn stop(self) -> (Vec<Collected>, Metrics) {
        self.stopper.stop();
        self.handle.join().unwrap();
        let r = self.received.lock().unwrap().clone();
        (r, self.metrics)
    }
}

/// Starts the pipeline with a [`CollectSink`] whose acknowledgements are held until the returned
/// flag is cleared.
pub fn start_held(cfg: &ShipperConfig, mode: AckMode) -> (Running, Arc<std::sync::atomic::AtomicBool>) {
    let (acker, events) = pipeline::channel();
    let sink = CollectSink::new(acker, mode);
    sink.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let hold = sink.hold.clone();
    let received = sink.received.clone();
    let metrics = Metrics::default();
    let p = Pipeline::new(cfg, sink, events, metrics.clone()).unwrap();
    let stopper = p.stopper();
    let handle = std::thread::spawn(move || p.run().unwrap());
    (Running { handle, stopper, received, metrics }, hold)
}

/// A delivered record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub id: String,
    pub path: String,
    pub offset: u64,
    pub message: String,
    pub stream: String,
    pub tags: Vec<String>,
}

pub fn decode(c: &Collected) -> Rec {
    let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
    Rec {
        id: c.id.clone(),
        path: v["log"]["file"]["path"].as_str().unwrap().to_owned(),
        offset: v["log"]["offset"].as_u64().unwrap(),
        message: v["message"].as_str().unwrap().to_owned(),
        stream: v["stream"].as_str().unwrap().to_owned(),
        tags: v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default(),
    }
}

/// Parses `<tag> <seq> …` contents.
pub fn seq_of(message: &str) -> (String, u64) {
    let mut parts = message.split(' ');
    let tag = parts.next().unwrap().to_owned();
    let seq = parts.next().unwrap().parse().unwrap();
    (tag, seq)
}

/// Checks: every (tag, seq) in `expected` arrived; per tag+stream in increasing order (first
/// delivery); duplicates only with the same id. Returns the number of duplicates.
pub fn verify(records: &[Rec], expected: &BTreeMap<String, u64>) -> usize {
    verify_with(records, expected, true)
}

/// [`verify`]; with `ordered` false the order is not checked — for runs where deliveries time out
/// (`kafka.delivery_timeout`): a record produced again after its timeout can land after later
/// records of its container (documented in docs/shipper.md), only its id must stay the same.
pub fn verify_with(records: &[Rec], expected: &BTreeMap<String, u64>, ordered: bool) -> usize {
    let mut seen: HashMap<(String, u64), String> = HashMap::new();
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut dups = 0;
    for r in records {
        assert!(!r.tags.iter().any(|t| t == "parse_error" || t == "partial_flushed" || t == "truncated"), "{r:?}");
        let (tag, seq) = seq_of(&r.message);
        if let Some(id) = seen.get(&(tag.clone(), seq)) {
            assert_eq!(id, &r.id, "duplicate of {tag} {seq} with a different id");
            dups += 1;
            if dups <= 3 {
                eprintln!("duplicate: {r:?}");
            }
            continue;
        }
        seen.insert((tag.clone(), seq), r.id.clone());
        let key = (tag.clone(), r.stream.clone());
        if let Some(prev) = last.get(&key).filter(|_| ordered) {
            if seq <= *prev {
                for x in records
                    .iter()
                    .filter(|x| x.message.starts_with(&tag))
                    .take_while(|x| x != &r)
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                    .take(3)
                {
                    eprintln!("before: {} {} {}", x.id, x.offset, &x.message[..16]);
                }
                eprintln!("this: {} {} {}", r.id, r.offset, &r.message[..16]);
            }
            assert!(seq > *prev, "{tag}/{}: {seq} after {prev}", r.stream);
        }
        last.insert(key, seq);
    }
    for (tag, n) in expected {
        for seq in 0..*n {
            assert!(seen.contains_key(&(tag.clone(), seq)), "missing {tag} {seq}");
        }
    }
    let total: u64 = expected.values().sum();
    assert_eq!(seen.len() as u64, total, "unexpected extra records");
    dups
}

pub fn stream_for(seq: u64) -> sluice_common::schema::Stream {
    if seq % 7 == 3 { sluice_common::schema::Stream::Stderr } else { sluice_common::schema::Stream::Stdout }
}

pub fn len_for(seq: u64) -> usize {
    // Mostly short lines, some longer than a fragment (P/F partials).
    if seq.is_multiple_of(11) { 700 } else { 60 + (seq % 90) as usize }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `files` pod directories under `root`, each with a `0.log` of `lines` CRI lines of ~200 bytes
/// (`p<i> <seq> mmm…`), written before the shipper starts (the 500-file memory tests).
pub fn write_pod_files(root: &Path, files: u64, lines: u64) {
    for i in 0..files {
        let dir = root.join(format!("ns_p{i}_uid-{i}/app"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut body = String::new();
        for seq in 0..lines {
            let msg = format!("p{i} {seq:08} {}", "m".repeat(150));
            body.push_str(&format!("2026-11-27T00:00:00.{seq:09}Z stdout F {msg}\n"));
        }
        std::fs::write(dir.join("0.log"), body).unwrap();
    }
}
