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

fn given_up(m: &sluice_shipper::metrics::Metrics, reason: &'static str) -> u64 {
    m.files_given_up.get_or_create(&sluice_shipper::metrics::Reason { reason }).get()
}

fn cri_lines(tag: &str, from: u64, to: u64) -> String {
    (from..to).map(|seq| format!("2027-01-01T00:00:00.{seq:09}Z stdout F {tag} {seq:08}\n")).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Scenario 5: a `.gz` generation that decompresses to nothing has no identity; it is skipped
/// (counted, logged) instead of being retried in a loop that blocks the newer generations.
#[test]
fn empty_gzip_generation_is_skipped_and_newer_generations_flow() {
    let env = Env::new();
    let dir = env.root.join("ns_egz_uid-egz/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("0.log.20270101-000001.gz"), gzip(b"")).unwrap();
    fs::write(dir.join("0.log.20270101-000002"), cri_lines("egz", 0, 10)).unwrap();
    fs::write(dir.join("0.log"), cri_lines("egz", 10, 20)).unwrap();
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(20, 10);
    std::thread::sleep(Duration::from_millis(300));
    let (records, metrics) = run.stop();
    let expected = std::collections::BTreeMap::from([("egz".to_owned(), 20)]);
    assert_eq!(verify(&records.iter().map(decode).collect::<Vec<_>>(), &expected), 0);
    assert_eq!(given_up(&metrics, "empty"), 1);
}

/// Scenario 5: a corrupt gzip generation (like an unreadable file) is skipped with a metric and a
/// log line naming it; the newer generations keep flowing.
#[test]
fn corrupt_gzip_generation_is_skipped_counted_and_newer_generations_flow() {
    let env = Env::new();
    let dir = env.root.join("ns_cgz_uid-cgz/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("0.log.20270101-000001.gz"), b"this is not a gzip stream\n").unwrap();
    fs::write(dir.join("0.log.20270101-000002"), cri_lines("cgz", 0, 10)).unwrap();
    fs::write(dir.join("0.log"), cri_lines("cgz", 10, 20)).unwrap();
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(20, 10);
    std::thread::sleep(Duration::from_millis(300));
    let (records, metrics) = run.stop();
    let expected = std::collections::BTreeMap::from([("cgz".to_owned(), 20)]);
    assert_eq!(verify(&records.iter().map(decode).collect::<Vec<_>>(), &expected), 0);
    assert_eq!(given_up(&metrics, "unreadable"), 1, "counted once, not once per poll");
}

/// Scenario 5: a directory named like a generation. Cannot stall anything: discovery lists regular
/// files only (`discover::scan_dir`), so it is never a generation. The test pins that down.
#[test]
fn directory_named_like_a_generation_is_not_a_generation() {
    let env = Env::new();
    let dir = env.root.join("ns_dgz_uid-dgz/app");
    fs::create_dir_all(dir.join("0.log.20270101-000001")).unwrap();
    fs::create_dir_all(dir.join("0.log.20270101-000002.gz")).unwrap();
    fs::write(dir.join("0.log"), cri_lines("dgz", 0, 20)).unwrap();
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(20, 10);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = run.stop();
    let expected = std::collections::BTreeMap::from([("dgz".to_owned(), 20)]);
    assert_eq!(verify(&records.iter().map(decode).collect::<Vec<_>>(), &expected), 0);
}
