//! The read path end to end, in process: a kubelet-like writer, the pipeline, an acknowledging test sink.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::*;
use sluice_common::schema::Stream;
use sluice_shipper::sink::AckMode;
use sluice_shipper::testkit::{KubeletWriter, WriterOptions};

fn writer(env: &Env, pod: &str, opts: WriterOptions) -> KubeletWriter {
    KubeletWriter::new(&env.root, ("ns", pod, &format!("uid-{pod}"), "app"), 0, opts).unwrap()
}

fn write_n(w: &mut KubeletWriter, tag: &str, from: u64, to: u64) {
    for seq in from..to {
        w.write_line(stream_for(seq), &KubeletWriter::content(tag, seq, len_for(seq))).unwrap();
    }
}

fn decoded(records: &[sluice_shipper::sink::Collected]) -> Vec<Rec> {
    records.iter().map(decode).collect()
}

#[test]
fn high_rate_writers_with_rotation_and_gzip_deliver_every_line_once_in_order() {
    let env = Env::new();
    let cfg = env.config();
    let run = start(&cfg, AckMode::Shuffled(64));
    let opts = WriterOptions { max_size: 64 * 1024, max_files: 200, fragment: 256, compress: true };
    let n = 20_000u64;
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let mut w = writer(&env, &format!("p{i}"), opts.clone());
            std::thread::spawn(move || {
                write_n(&mut w, &format!("p{i}"), 0, n);
                w.rotations
            })
        })
        .collect();
    let rotations: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(rotations > 40, "writers rotated {rotations} times");
    run.wait_for(4 * n as usize, 120);
    run.settle();
    let (records, metrics) = run.stop();
    let expected: BTreeMap<String, u64> = (0..4).map(|i| (format!("p{i}"), n)).collect();
    let dups = verify(&decoded(&records), &expected);
    assert_eq!(dups, 0);
    assert!(metrics.rotations.get() + metrics.lagged_generations.get() > 40);
    assert_eq!(metrics.records.get(), 4 * n);
    assert_eq!(metrics.acked.get(), 4 * n);
}

#[test]
fn lagging_reader_reads_rotated_then_gzipped_generations_in_order() {
    let env = Env::new();
    let opts = WriterOptions { max_size: 16 * 1024, max_files: 40, fragment: 256, compress: true };
    let mut w = writer(&env, "lag", opts);
    // Written before the shipper runs: 6 rotations, several generations gzipped.
    let n = 1_000;
    write_n(&mut w, "lag", 0, n);
    assert!(w.rotations >= 6, "{}", w.rotations);
    let gz = fs::read_dir(w.dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "gz"))
        .count();
    assert!(gz >= 3, "{gz} gz files");
    let cfg = env.config();
    let run = start(&cfg, AckMode::Shuffled(16));
    run.wait_for(n as usize, 60);
    // More rotations while running.
    write_n(&mut w, "lag", n, 2 * n);
    run.wait_for(2 * n as usize, 60);
    run.settle();
    let (records, metrics) = run.stop();
    let recs = decoded(&records);
    // Records of every generation carry the live path.
    assert!(recs.iter().all(|r| r.path == path_str(&w.live_path())));
    let expected = BTreeMap::from([("lag".to_owned(), 2 * n)]);
    assert_eq!(verify(&recs, &expected), 0);
    assert!(metrics.lagged_generations.get() >= 6, "{}", metrics.lagged_generations.get());
}

#[test]
fn restart_from_checkpoint_neither_loses_nor_repeats() {
    let env = Env::new();
    let opts = WriterOptions { max_size: 32 * 1024, max_files: 20, fragment: 128, compress: true };
    let mut w = writer(&env, "rs", opts);
    let cfg = env.config();
    let mut all = Vec::new();
    let mut total = 0;
    for round in 0..4u64 {
        write_n(&mut w, "rs", round * 700, round * 700 + 500);
        let run = start(&cfg, AckMode::Shuffled(32));
        write_n(&mut w, "rs", round * 700 + 500, round * 700 + 700);
        total += 700;
        run.wait_for(700, 60);
        run.settle();
        let (records, _) = run.stop();
        all.extend(decoded(&records));
    }
    let expected = BTreeMap::from([("rs".to_owned(), total)]);
    assert_eq!(verify(&all, &expected), 0, "graceful restarts must not repeat records");
    let ckpt: serde_json::Value =
        serde_json::from_slice(&fs::read(env.ckpt.join("shipper-checkpoint.json")).unwrap()).unwrap();
    assert_eq!(ckpt["version"], 1);
    assert!(ckpt["generations"].as_array().unwrap().iter().any(|g| g["complete"] == true));
}

#[test]
fn unacknowledged_records_are_sent_again_with_the_same_ids() {
    let env = Env::new();
    let mut w = writer(&env, "na", WriterOptions::default());
    write_n(&mut w, "na", 0, 200);
    let cfg = env.config();
    let run = start(&cfg, AckMode::Never);
    run.wait_for(200, 30);
    let (first, _) = run.stop();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(200, 30);
    run.settle();
    let (second, metrics) = run.stop();
    let a: Vec<String> = first.iter().map(|c| c.id.clone()).collect();
    let b: Vec<String> = second.iter().map(|c| c.id.clone()).collect();
    assert_eq!(a, b);
    assert_eq!(metrics.records.get(), 200);
    // Now acknowledged: a third run sends nothing.
    let run = start(&cfg, AckMode::InOrder);
    run.settle();
    let (third, metrics) = run.stop();
    assert!(third.is_empty());
    assert!(metrics.files_discovered.get() >= 1, "the third run saw the file");
}

#[test]
fn copytruncate_restarts_at_zero_and_is_counted() {
    let env = Env::new();
    let mut w = writer(&env, "ct", WriterOptions { compress: false, ..WriterOptions::default() });
    write_n(&mut w, "ct", 0, 300);
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(300, 30);
    w.copytruncate().unwrap();
    write_n(&mut w, "ct", 300, 350);
    run.wait_for(350, 30);
    run.settle();
    let (records, metrics) = run.stop();
    let expected = BTreeMap::from([("ct".to_owned(), 350)]);
    assert_eq!(verify(&decoded(&records), &expected), 0);
    assert_eq!(metrics.copytruncate.get(), 1);
    let after: Vec<Rec> = decoded(&records).into_iter().filter(|r| seq_of(&r.message).1 >= 300).collect();
    assert_eq!(after[0].offset, 0, "new content read from offset 0");
}

#[test]
fn inode_reuse_and_tiny_files_are_told_apart_by_content() {
    let env = Env::new();
    let dir = env.root.join("ns_tiny_u1/app");
    fs::create_dir_all(&dir).unwrap();
    let live = dir.join("0.log");
    fs::write(&live, "2026-11-27T00:00:00.000000001Z stdout F a 00000000\n").unwrap();
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(1, 20);
    run.settle();
    let (first, _) = run.stop();
    assert_eq!(first.len(), 1);

    // Replace the file: the new one likely reuses the inode; its content (first line) differs.
    fs::remove_file(&live).unwrap();
    fs::write(
        &live,
        "2026-11-27T00:00:01.000000001Z stdout F b 00000000\n2026-11-27T00:00:01.000000002Z stdout F b 00000001\n",
    )
    .unwrap();
    // A tiny file whose first line is still being written: nothing yet.
    let other = env.root.join("ns_tiny_u2/app");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("0.log"), "2026-11-27T00:00:02Z stdout F c 0000").unwrap();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(2, 20);
    run.settle();
    assert_eq!(run.count(), 2, "incomplete first line must not be sent");
    // Completing it makes it a record.
    use std::io::Write;
    fs::OpenOptions::new().append(true).open(other.join("0.log")).unwrap().write_all(b"0000\n").unwrap();
    run.wait_for(3, 20);
    run.settle();
    let (second, _) = run.stop();
    let msgs: Vec<String> = decoded(&second).into_iter().map(|r| r.message).collect();
    assert_eq!(msgs, vec!["b 00000000", "b 00000001", "c 00000000"]);
    assert_ne!(first[0].id, second[0].id, "same offset, different generation, different id");
}

#[test]
fn symlinks_in_var_log_containers_are_read_once() {
    let env = Env::new();
    let mut w = writer(&env, "sym", WriterOptions::default());
    write_n(&mut w, "sym", 0, 100);
    // A target outside the root, reachable only through a symlink.
    let outside = env.tmp.path().join("elsewhere/ns_ext_uid-ext/app");
    fs::create_dir_all(&outside).unwrap();
    let mut body = String::new();
    for seq in 0..50u64 {
        body.push_str(&format!("2026-11-27T00:00:00.{seq:09}Z stdout F ext {seq:08}\n"));
    }
    fs::write(outside.join("0.log"), body).unwrap();
    let links = env.tmp.path().join("containers");
    fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(w.live_path(), links.join("sym_ns_app-0123.log")).unwrap();
    std::os::unix::fs::symlink(outside.join("0.log"), links.join("ext_ns_app-4567.log")).unwrap();
    let mut cfg = env.config();
    cfg.paths.symlink_dirs = vec![links.display().to_string()];
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(150, 20);
    run.settle();
    let (records, _) = run.stop();
    let recs = decoded(&records);
    let expected = BTreeMap::from([("sym".to_owned(), 100), ("ext".to_owned(), 50)]);
    assert_eq!(verify(&recs, &expected), 0);
    let ext = recs.iter().find(|r| r.message.starts_with("ext")).unwrap();
    assert!(ext.path.ends_with("elsewhere/ns_ext_uid-ext/app/0.log"), "{}", ext.path);
}

#[test]
fn deleted_files_are_drained_and_checkpoint_entries_collected() {
    let env = Env::new();
    let mut w = writer(&env, "del", WriterOptions::default());
    write_n(&mut w, "del", 0, 100);
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(100, 20);
    write_n(&mut w, "del", 100, 200);
    fs::remove_dir_all(env.root.join("ns_del_uid-del")).unwrap();
    run.wait_for(200, 20);
    // Collected after three scans without the file: wait for it, not for a fixed time.
    run.wait_until("checkpoint GC", 60, |m| m.checkpoint_gc.get() >= 1);
    let (records, metrics) = run.stop();
    let expected = BTreeMap::from([("del".to_owned(), 200)]);
    assert_eq!(verify(&decoded(&records), &expected), 0);
    assert_eq!(
        metrics.files_given_up.get_or_create(&sluice_shipper::metrics::Reason { reason: "deleted_grace" }).get(),
        0
    );
    assert!(metrics.checkpoint_gc.get() >= 1);
    let ckpt: serde_json::Value =
        serde_json::from_slice(&fs::read(env.ckpt.join("shipper-checkpoint.json")).unwrap()).unwrap();
    assert!(ckpt["generations"].as_array().unwrap().is_empty(), "{ckpt}");
}

#[test]
fn partial_line_without_final_fragment_is_flushed_after_timeout() {
    let env = Env::new();
    let dir = env.root.join("ns_part_u1/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("0.log"), "2026-11-27T00:00:00Z stdout P half \n2026-11-27T00:00:00Z stderr F other\n").unwrap();
    let mut cfg = env.config();
    cfg.parse.partial_flush_timeout = Duration::from_millis(300);
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(2, 20);
    let (records, metrics) = run.stop();
    let recs = decoded(&records);
    assert_eq!(recs[0].message, "other");
    assert_eq!(recs[1].message, "half ");
    assert!(recs[1].tags.contains(&"partial_flushed".to_owned()));
    assert_eq!(metrics.partial_flushed.get_or_create(&sluice_shipper::metrics::Reason { reason: "timeout" }).get(), 1);
    let _ = Stream::Stdout;
}

#[test]
fn slow_sink_bounds_inflight_bytes() {
    let env = Env::new();
    let mut w = writer(&env, "bp", WriterOptions::default());
    write_n(&mut w, "bp", 0, 5_000);
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::kib(64);
    let run = start(&cfg, AckMode::Never);
    // Reading pauses at the limit (positive signal), and stays paused: a few more scans later,
    // still nothing beyond the limit was handed over.
    run.wait_until("back-pressure", 60, |m| m.backpressure.get() > 0);
    let at_pause = run.count();
    run.settle();
    let n = run.count();
    let (_, metrics) = run.stop();
    assert!(at_pause > 0 && n < 300, "{n} records in flight with a 64 KiB limit");
    assert!(metrics.inflight_bytes.get() <= 64 * 1024 + 4 * 1024, "{}", metrics.inflight_bytes.get());
}
