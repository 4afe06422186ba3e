//! The read path end to end into a null sink with 500 open files: throughput and peak RSS (VmHWM).
//!
//! `cargo bench -p sluice-shipper --bench read_path` (env `FILES`, `LINES` override 500 × 2000).

use std::fs;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use sluice_shipper::config::{Output, ShipperConfig};
use sluice_shipper::metrics::Metrics;
use sluice_shipper::pipeline::{self, Pipeline};
use sluice_shipper::sink::NullSink;

fn vm(key: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing
    }
    let files: usize = std::env::var("FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let lines: usize = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let mut bytes = 0u64;
    for f in 0..files {
        let dir = root.join(format!("ns-{}_pod-{f}_uid-{f:08x}", f % 20)).join("app");
        fs::create_dir_all(&dir).unwrap();
        let mut w = BufWriter::new(fs::File::create(dir.join("0.log")).unwrap());
        for i in 0..lines {
            let head = format!("2026-11-27T00:17:{:02}.{:09}Z stdout F ", i % 60, i * 1000 + f);
            let mut line = head.clone();
            line.push_str(&format!("GET /api/v1/items/{i} HTTP/1.1 200 "));
            while line.len() < 199 {
                line.push('x');
            }
            line.push('\n');
            bytes += line.len() as u64;
            w.write_all(line.as_bytes()).unwrap();
        }
        w.flush().unwrap();
    }
    let mut cfg = ShipperConfig { output: Output::Stdout, node_name: "bench".into(), ..Default::default() };
    cfg.paths.root = root.display().to_string();
    cfg.paths.symlink_dirs = vec![];
    cfg.checkpoint.dir = tmp.path().join("ckpt").display().to_string();
    let rss_before = vm("VmRSS:");
    let (acker, events) = pipeline::channel();
    let metrics = Metrics::default();
    let p = Pipeline::new(&cfg, NullSink::new(acker), events, metrics.clone()).unwrap();
    let stop = p.stopper();
    let start = Instant::now();
    let handle = std::thread::spawn(move || p.run().unwrap());
    let total = (files * lines) as u64;
    let mut peak_open = 0;
    while metrics.acked.get() < total {
        peak_open = peak_open.max(metrics.open_files.get());
        std::thread::sleep(Duration::from_millis(5));
        assert!(start.elapsed() < Duration::from_secs(600), "stuck at {}", metrics.acked.get());
    }
    let secs = start.elapsed().as_secs_f64();
    stop.stop();
    handle.join().unwrap();
    println!("read_path/null_sink: {files} files x {lines} lines of 200 B");
    println!("  records      {total}");
    println!("  time         {secs:.3} s");
    println!("  throughput   {:.0} lines/s, {:.1} MB/s", total as f64 / secs, bytes as f64 / secs / 1e6);
    println!("  open files   {peak_open} (peak sampled)");
    println!("  RSS before   {} KiB", rss_before);
    println!(
        "  VmHWM        {} KiB ({:.1} MiB) peak RSS of the whole process",
        vm("VmHWM:"),
        vm("VmHWM:") as f64 / 1024.0
    );
}
