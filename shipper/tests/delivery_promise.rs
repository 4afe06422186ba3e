//! Issue #9 (shipper part): each scenario of "Delivery promise under scrutiny" as a read-path test
//! against the real pipeline with the acknowledging test sink.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;
use sluice_shipper::sink::{AckMode, Collected};

fn ts_of(c: &Collected) -> String {
    let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
    v["@timestamp"].as_str().unwrap().to_owned()
}

fn append(path: &std::path::Path, s: &str) {
    fs::OpenOptions::new().append(true).open(path).unwrap().write_all(s.as_bytes()).unwrap();
}

fn run_once(cfg: &sluice_shipper::config::ShipperConfig, mode: AckMode, n: usize) -> Vec<Collected> {
    let run = start(cfg, mode);
    run.wait_for(n, 20);
    std::thread::sleep(Duration::from_millis(400));
    run.stop().0
}

/// Scenario 9: the index date (`sluice.ts`) of a line whose timestamp cannot be read is the last
/// readable timestamp before it in the generation, also when reading resumes after it (restart),
/// so a re-send lands in the same daily index as the first copy.
#[test]
fn unparseable_line_is_dated_from_the_bytes_on_disk_across_restarts() {
    let env = Env::new();
    let dir = env.root.join("ns_ts_uid-ts/app");
    fs::create_dir_all(&dir).unwrap();
    let live = dir.join("0.log");
    fs::write(&live, "2026-03-04T05:06:07.000000001Z stdout F good 00000000\n").unwrap();
    let cfg = env.config();
    let first = run_once(&cfg, AckMode::InOrder, 1);
    assert_eq!(first.len(), 1);
    // Resumes after the good line: the garbage line is sent, not acknowledged, sent again.
    append(&live, "garbage without a timestamp\n");
    let a = run_once(&cfg, AckMode::Never, 1);
    std::thread::sleep(Duration::from_millis(20));
    let b = run_once(&cfg, AckMode::InOrder, 1);
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].id, b[0].id);
    assert!(decode(&a[0]).tags.contains(&"parse_error".to_owned()));
    assert_eq!(ts_of(&a[0]), "2026-03-04T05:06:07.000000001Z");
    assert_eq!(ts_of(&b[0]), ts_of(&a[0]), "a re-send must carry the same index date");
}

/// Scenario 9, no readable timestamp before the line: the date pinned for the generation when it
/// was first seen (kept in the checkpoint) is used, so a re-send carries it again.
#[test]
fn unparseable_first_lines_use_the_generation_pin_across_restarts() {
    let env = Env::new();
    let dir = env.root.join("ns_pin_uid-pin/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("0.log"), "no timestamp here\n").unwrap();
    let cfg = env.config();
    let a = run_once(&cfg, AckMode::Never, 1);
    std::thread::sleep(Duration::from_millis(20));
    let b = run_once(&cfg, AckMode::InOrder, 1);
    assert_eq!(a[0].id, b[0].id);
    assert_eq!(ts_of(&b[0]), ts_of(&a[0]), "a re-send must carry the same index date");
}
