//! Issue #9 (shipper part): each scenario of "Delivery promise under scrutiny" as a read-path test
//! against the real pipeline with the acknowledging test sink.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;
use sluice_shipper::sink::{AckMode, Collected};
use sluice_shipper::testkit::KubeletWriter;

fn ts_of(c: &Collected) -> String {
    let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
    v["@timestamp"].as_str().unwrap().to_owned()
}

fn append(path: &std::path::Path, s: &str) {
    fs::OpenOptions::new().append(true).open(path).unwrap().write_all(s.as_bytes()).unwrap();
}

fn run_once(cfg: &sluice_shipper::config::ShipperConfig, mode: AckMode, n: usize) -> Vec<Collected> {
    start(cfg, mode).finish(n, 20).0
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
    let (records, metrics) = run.finish(20, 10);
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
    let (records, metrics) = run.finish(20, 10);
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
    let (records, _) = run.finish(20, 10);
    let expected = std::collections::BTreeMap::from([("dgz".to_owned(), 20)]);
    assert_eq!(verify(&records.iter().map(decode).collect::<Vec<_>>(), &expected), 0);
}

fn long_lines(tag: &str, from: u64, to: u64) -> String {
    (from..to)
        .map(|seq| format!("2027-01-01T00:00:00.{seq:09}Z stdout F {}\n", KubeletWriter::content(tag, seq, 200)))
        .collect()
}

/// The kubelet's compression of a rotated file: `.gz.tmp`, renamed to `.gz`, then the plain file unlinked.
fn kubelet_gzip(plain: &std::path::Path) {
    let gz = std::path::PathBuf::from(format!("{}.gz", plain.display()));
    let tmp = std::path::PathBuf::from(format!("{}.gz.tmp", plain.display()));
    fs::write(&tmp, gzip(&fs::read(plain).unwrap())).unwrap();
    fs::rename(&tmp, &gz).unwrap();
    fs::remove_file(plain).unwrap();
}

fn expect_all(records: &[Collected], tag: &str, n: u64) {
    let expected = std::collections::BTreeMap::from([(tag.to_owned(), n)]);
    let recs: Vec<Rec> = records.iter().map(decode).filter(|r| r.message.starts_with(tag)).collect();
    verify(&recs, &expected);
}

/// Scenario 1: downstream holds acknowledgements longer than `tail.deleted_file_grace` while the
/// reader sits in a lagging rotated generation, which the kubelet gzips (plain file unlinked). The
/// grace clock does not run while reading is blocked by back-pressure, and the rest of the
/// generation is read (from the open handle or from its `.gz`, same identity and offsets).
#[test]
fn lagging_generation_gzipped_while_blocked_is_read_to_the_end() {
    let env = Env::new();
    let dir = env.root.join("ns_lag_uid-lag/app");
    fs::create_dir_all(&dir).unwrap();
    let rotated = dir.join("0.log.20270101-000001");
    fs::write(&rotated, long_lines("lag", 0, 3000)).unwrap();
    fs::write(dir.join("0.log"), long_lines("lag", 3000, 3010)).unwrap();
    let mut cfg = env.config();
    cfg.tail.deleted_file_grace = Duration::from_millis(500);
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::kib(64);
    let (run, hold) = start_held(&cfg, AckMode::InOrder);
    run.wait_for(50, 10);
    run.wait_scans(2);
    assert!(run.count() < 1000, "blocked by back-pressure: {}", run.count());
    kubelet_gzip(&rotated);
    run.wait_scans(10); // 2 s: several scans and ticks past the grace
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let (records, metrics) = run.finish(3010, 30);
    expect_all(&records, "lag", 3010);
    assert_eq!(given_up(&metrics, "deleted_grace"), 0);
}

/// Scenario 1, eviction: with `tail.max_open_files` reached, a reader whose rotated generation was
/// gzipped (plain file unlinked) is not given up for another file's sake: its handle is closed and it
/// continues later from the `.gz` of the same generation at the same uncompressed offset.
#[test]
fn lagging_generation_gzipped_is_not_given_up_for_max_open_files() {
    let env = Env::new();
    let a = env.root.join("ns_z_uid-z/app"); // sorts after `b`, so `b` asks for a handle first
    fs::create_dir_all(&a).unwrap();
    let rotated = a.join("0.log.20270101-000001");
    fs::write(&rotated, long_lines("zz", 0, 12_000)).unwrap(); // ~2.9 MB, more than a turn
    let mut cfg = env.config();
    cfg.tail.max_open_files = 1;
    cfg.tail.deleted_file_grace = Duration::from_secs(60);
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::mib(1);
    let (run, hold) = start_held(&cfg, AckMode::InOrder);
    run.wait_for(100, 10);
    run.wait_scans(2);
    assert!(run.count() < 6000, "blocked by back-pressure: {}", run.count());
    kubelet_gzip(&rotated);
    let b = env.root.join("ns_a_uid-a/app");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("0.log"), long_lines("aa", 0, 10)).unwrap();
    run.wait_scans(3);
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let (records, metrics) = run.finish(12_010, 60);
    expect_all(&records, "zz", 12_000);
    expect_all(&records, "aa", 10);
    assert_eq!(given_up(&metrics, "max_open_files"), 0);
}

/// Scenario 3: a live file closed for `tail.max_open_files` is rotated and gzipped meanwhile, and the
/// new `0.log` reuses its inode. Reopening checks identity, not the inode: the rest of the old
/// generation is read from its `.gz` under its own id, the new file from 0 under a new one.
///
/// The inode reuse is staged, and anything creating a file on the same filesystem meanwhile (another
/// test, the checkpoint's temporary file) may take the freed inode first: then the scenario did not
/// happen and is staged again, afresh (a failed precondition once failed a CI run).
#[test]
fn reopen_after_eviction_checks_identity_not_the_inode() {
    for attempt in 1..=5 {
        if reopen_after_eviction_attempt() {
            return;
        }
        eprintln!("attempt {attempt}: another file took the freed inode first; staging again");
    }
    panic!("precondition: the filesystem never handed the freed inode to the new live file in 5 attempts");
}

/// One staging of scenario 3; false when the new live file did not get the old inode.
fn reopen_after_eviction_attempt() -> bool {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    // Polled before `b` in each round, so `b` ends up with the handle and this file stays closed.
    let a = env.root.join("ns_y_uid-y/app");
    fs::create_dir_all(&a).unwrap();
    let live = a.join("0.log");
    fs::write(&live, long_lines("zz", 0, 100)).unwrap();
    let ino = fs::metadata(&live).unwrap().ino();
    let mut cfg = env.config();
    cfg.tail.max_open_files = 1;
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(100, 10);
    run.wait_scans(2);
    // Another file needs the only handle: the idle live file is closed (reopened later).
    let b = env.root.join("ns_z_uid-z/app");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("0.log"), long_lines("aa", 0, 10)).unwrap();
    run.wait_for(110, 10);
    run.wait_scans(2);
    // While closed: more lines, rotation, compression; the new live file reuses the inode.
    append(&live, &long_lines("zz", 100, 150));
    let rotated = a.join("0.log.20270101-000001");
    fs::rename(&live, &rotated).unwrap();
    kubelet_gzip(&rotated);
    if !create_with_inode(&live, &long_lines("zz", 150, 400), ino) {
        run.stop();
        return false;
    }
    let (records, _) = run.finish(410, 20);
    expect_all(&records, "zz", 400);
    expect_all(&records, "aa", 10);
    let recs: Vec<Rec> = records.iter().map(decode).filter(|r| r.message.starts_with("zz")).collect();
    let generation = |r: &Rec| r.id[..32].to_owned();
    let old = generation(&recs[0]);
    for r in &recs {
        let seq = seq_of(&r.message).1;
        assert_eq!(generation(r) == old, seq < 150, "zz {seq} in the wrong generation: {}", r.id);
    }
    assert_eq!(recs.iter().find(|r| seq_of(&r.message).1 == 150).unwrap().offset, 0);
    true
}

/// Creates `path` with `content` on the inode `ino` when the filesystem hands it out again (ext4
/// gives the lowest free inode of the group: keep taking inodes until it is the one); false when it
/// did not (`path` is then created on another inode).
fn create_with_inode(path: &std::path::Path, content: &str, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut spare = Vec::new();
    for k in 0..512 {
        let tmp = path.with_file_name(format!("new-{k}.tmp"));
        fs::write(&tmp, content).unwrap();
        if fs::metadata(&tmp).unwrap().ino() == ino {
            fs::rename(&tmp, path).unwrap();
            break;
        }
        spare.push(tmp);
    }
    for t in spare {
        fs::remove_file(t).unwrap();
    }
    if !path.exists() {
        fs::write(path, content).unwrap();
    }
    fs::metadata(path).unwrap().ino() == ino
}

/// Scenario 4: copytruncate with a kubelet-like copy name. The copy `0.log.<ts>` has the identity of
/// the truncated generation; the lines between the read position and the copy point are read from
/// the copy (same ids), then the truncated file from 0 as a new generation.
#[test]
fn copytruncate_reads_the_unread_rest_from_the_copy() {
    let env = Env::new();
    let dir = env.root.join("ns_ct_uid-ct/app");
    fs::create_dir_all(&dir).unwrap();
    let live = dir.join("0.log");
    fs::write(&live, long_lines("ct", 0, 3000)).unwrap();
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::kib(64);
    let (run, hold) = start_held(&cfg, AckMode::InOrder);
    run.wait_for(50, 10);
    run.wait_scans(2);
    assert!(run.count() < 1000, "blocked by back-pressure: {}", run.count());
    // copytruncate: copy under a rotation name, truncate in place, the program writes on.
    fs::copy(&live, dir.join("0.log.20270101-000001")).unwrap();
    fs::OpenOptions::new().write(true).open(&live).unwrap().set_len(0).unwrap();
    append(&live, &long_lines("ct", 3000, 3050));
    run.wait_scans(3);
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let (records, metrics) = run.finish(3050, 30);
    expect_all(&records, "ct", 3050);
    assert_eq!(metrics.copytruncate.get(), 1);
    let recs: Vec<Rec> = records.iter().map(decode).collect();
    let old = recs[0].id[..32].to_owned();
    for r in &recs {
        assert_eq!(r.id[..32] == old, seq_of(&r.message).1 < 3000, "{r:?}");
    }
}

/// Scenario 6: a listing that fails (here: the whole root missing for several scans, as when a
/// mount is briefly gone) is no proof that files are gone: checkpoint entries are kept, and nothing
/// is sent again when the files reappear.
#[test]
fn failed_listings_do_not_collect_checkpoint_entries() {
    let env = Env::new();
    let dir = env.root.join("ns_gc_uid-gc/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("0.log.20270101-000001"), long_lines("gc", 0, 100)).unwrap();
    fs::write(dir.join("0.log"), long_lines("gc", 100, 110)).unwrap();
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(110, 10);
    run.wait_scans(2);
    let away = env.tmp.path().join("pods.away");
    fs::rename(&env.root, &away).unwrap();
    run.wait_scans(8); // more than three scans
    fs::rename(&away, &env.root).unwrap();
    run.wait_scans(8);
    let (records, metrics) = run.stop();
    expect_all(&records, "gc", 110);
    assert_eq!(records.len(), 110, "nothing sent twice");
    assert_eq!(metrics.checkpoint_gc.get(), 0);
}

/// Scenario 6: a lagging generation deleted before it was opened (the kubelet keeps
/// `containerLogMaxFiles`) is counted as given up, with its size.
#[test]
fn lagging_generation_deleted_before_it_was_opened_is_counted() {
    let env = Env::new();
    let dir = env.root.join("ns_du_uid-du/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("0.log.20270101-000001"), long_lines("du", 0, 3000)).unwrap();
    let second = dir.join("0.log.20270101-000002");
    let body = long_lines("du", 3000, 3100);
    fs::write(&second, &body).unwrap();
    fs::write(dir.join("0.log"), long_lines("du", 3100, 3110)).unwrap();
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::kib(64);
    let (run, hold) = start_held(&cfg, AckMode::InOrder);
    run.wait_for(50, 10);
    run.wait_scans(2);
    fs::remove_file(&second).unwrap();
    run.wait_scans(8);
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, metrics) = run.finish(3010, 30);
    assert_eq!(given_up(&metrics, "deleted_unread"), 1);
    assert_eq!(metrics.bytes_given_up.get(), body.len() as u64);
}

/// Scenario 6: a live file whose generation the checkpoint already marks done (read to its end, or
/// given up) and that is re-identified when its first line completes is closed quietly: not given
/// up after `deleted_file_grace` with its whole size counted, neither while it stays nor when it
/// is later deleted. Nothing of it is sent again.
#[test]
fn live_file_already_done_is_not_counted_as_given_up_when_re_identified_or_deleted() {
    let env = Env::new();
    let dir = env.root.join("ns_dn_uid-dn/app");
    fs::create_dir_all(&dir).unwrap();
    let live = dir.join("0.log");
    let first = "2027-01-01T00:00:00.000000001Z stdout F dn 00000000";
    fs::write(&live, format!("{first}\n")).unwrap();
    let mut cfg = env.config();
    cfg.tail.deleted_file_grace = Duration::from_millis(300);
    assert_eq!(run_once(&cfg, AckMode::InOrder, 1).len(), 1);
    // The checkpoint says the generation is done.
    let ckpt = env.ckpt.join("shipper-checkpoint.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&ckpt).unwrap()).unwrap();
    v["generations"][0]["complete"] = serde_json::Value::Bool(true);
    fs::write(&ckpt, serde_json::to_vec(&v).unwrap()).unwrap();
    // The same generation's file again, its first line not complete yet: opened without identity.
    fs::remove_file(&live).unwrap();
    fs::write(&live, first).unwrap();
    let run = start(&cfg, AckMode::InOrder);
    // Opened without identity (before three scans without it would collect the checkpoint entry).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while run.metrics.open_files.get() < 1 {
        assert!(std::time::Instant::now() < deadline, "the live file was not opened within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(run.metrics.checkpoint_gc.get() == 0, "precondition: the done entry is still loaded");
    append(&live, "\n2027-01-01T00:00:00.000000002Z stdout F dn 00000001\n");
    run.wait_scans(10); // 2 s: several times the grace
    fs::remove_file(&live).unwrap();
    run.wait_scans(10);
    let (records, metrics) = run.stop();
    assert_eq!(given_up(&metrics, "deleted_grace"), 0);
    assert_eq!(given_up(&metrics, "vanished"), 0);
    assert_eq!(metrics.bytes_given_up.get(), 0);
    assert!(records.is_empty(), "a done generation is not sent again: {records:?}");
}

/// Scenario 6: bytes given up of a gzipped generation are uncompressed bytes (the gzip trailer's
/// size), not the compressed size minus an uncompressed offset. Caveat: in this setup the reader
/// reaches the end of the `.gz` before it is evicted (0 bytes left), so the test passed before the
/// fix too; it pins the exact accounting, not the old miscount.
#[test]
fn bytes_given_up_of_a_gzip_generation_are_uncompressed_bytes() {
    let env = Env::new();
    let a = env.root.join("ns_y_uid-y/app");
    fs::create_dir_all(&a).unwrap();
    let body = long_lines("gz", 0, 12_000);
    let gz = a.join("0.log.20270101-000001.gz");
    fs::write(&gz, gzip(body.as_bytes())).unwrap();
    let mut cfg = env.config();
    cfg.tail.max_open_files = 1;
    cfg.tail.deleted_file_grace = Duration::from_secs(60);
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::mib(1);
    let (run, hold) = start_held(&cfg, AckMode::InOrder);
    run.wait_for(100, 10);
    run.wait_scans(2);
    fs::remove_file(&gz).unwrap(); // deleted while read: no other copy of the generation
    let b = env.root.join("ns_a_uid-a/app");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("0.log"), long_lines("aa", 0, 10)).unwrap();
    run.wait_scans(3);
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    run.wait_for(10, 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while given_up(&run.metrics, "max_open_files") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    run.wait_scans(2);
    let (records, metrics) = run.stop();
    assert_eq!(given_up(&metrics, "max_open_files"), 1);
    let read: u64 = records
        .iter()
        .map(decode)
        .filter(|r| r.message.starts_with("gz"))
        .map(|r| long_lines("gz", seq_of(&r.message).1, seq_of(&r.message).1 + 1).len() as u64)
        .sum();
    assert_eq!(metrics.bytes_given_up.get(), body.len() as u64 - read);
}

/// Scenario 7: cri-dockerd. `/var/log/pods/…/0.log` is a symlink to docker's
/// `/var/lib/docker/containers/<id>/<id>-json.log`, rotated by docker to `-json.log.1`, `.2`. The
/// link is followed (records keep the pod path and its metadata), docker's rotations are read as
/// older generations in order, and the same target reached through `/var/log/containers` is not
/// read twice. A symlink loop is ignored.
#[test]
fn cri_dockerd_symlinked_live_file_and_docker_rotations() {
    let env = Env::new();
    let id = "4f1c0ffee";
    let docker = env.tmp.path().join("docker/containers").join(id);
    fs::create_dir_all(&docker).unwrap();
    let line = |seq: u64| {
        let log = format!("{}\n", KubeletWriter::content("dk", seq, 80));
        let ts = format!("2027-01-01T00:00:00.{seq:09}Z");
        format!("{}\n", serde_json::json!({"log": log, "stream": "stdout", "time": ts}))
    };
    let lines = |from: u64, to: u64| (from..to).map(line).collect::<String>();
    let target = docker.join(format!("{id}-json.log"));
    fs::write(docker.join(format!("{id}-json.log.2")), lines(0, 50)).unwrap();
    fs::write(docker.join(format!("{id}-json.log.1")), lines(50, 100)).unwrap();
    fs::write(&target, lines(100, 150)).unwrap();
    let pod = env.root.join("shop_web-0_uid-dk/app");
    fs::create_dir_all(&pod).unwrap();
    std::os::unix::fs::symlink(&target, pod.join("0.log")).unwrap();
    // A loop next to it.
    let looped = env.root.join("shop_loop_uid-loop/app");
    fs::create_dir_all(&looped).unwrap();
    std::os::unix::fs::symlink(looped.join("0.log"), looped.join("0.log")).unwrap();
    let links = env.tmp.path().join("containers");
    fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(pod.join("0.log"), links.join("web-0_shop_app-4f1c.log")).unwrap();
    let mut cfg = env.config();
    cfg.paths.symlink_dirs = vec![links.display().to_string()];
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(150, 10);
    // Docker rotates while running.
    fs::rename(docker.join(format!("{id}-json.log.2")), docker.join(format!("{id}-json.log.3"))).unwrap();
    fs::rename(docker.join(format!("{id}-json.log.1")), docker.join(format!("{id}-json.log.2"))).unwrap();
    fs::rename(&target, docker.join(format!("{id}-json.log.1"))).unwrap();
    fs::write(&target, lines(150, 200)).unwrap();
    let (records, _) = run.finish(200, 10);
    expect_all(&records, "dk", 200);
    assert_eq!(records.len(), 200, "read once");
    let v: serde_json::Value = serde_json::from_slice(&records[0].value).unwrap();
    assert_eq!(v["log"]["file"]["path"], pod.join("0.log").display().to_string());
    assert_eq!(v["kubernetes"]["namespace"], "shop");
    assert_eq!(v["kubernetes"]["pod"]["name"], "web-0");
}

/// Open gzip streams whose path lies under `dir` (each gzip reader holds its file open).
fn open_gz_under(dir: &std::path::Path) -> usize {
    let mut files = std::collections::HashSet::new();
    for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = fs::read_link(fd.path())
            && target.starts_with(dir)
            && target.extension().is_some_and(|e| e == "gz")
        {
            files.insert(target);
        }
    }
    files.len()
}

/// Scenario 8: gzip readers (inflate state, input buffer, re-read window each) are bounded in
/// number, not only by `tail.max_open_files`: many containers lagging into `.gz` generations read
/// them a few at a time, and everything arrives.
#[test]
fn open_gzip_readers_are_bounded() {
    let env = Env::new();
    let pods = 12u64;
    for p in 0..pods {
        let dir = env.root.join(format!("ns_g{p:02}_uid-g{p:02}/app"));
        fs::create_dir_all(&dir).unwrap();
        let tag = format!("g{p:02}");
        for (i, (from, to)) in [(0, 1500), (1500, 3000)].into_iter().enumerate() {
            let gz = dir.join(format!("0.log.20270101-00000{}.gz", i + 1));
            fs::write(gz, gzip(long_lines(&tag, from, to).as_bytes())).unwrap();
        }
        fs::write(dir.join("0.log"), long_lines(&tag, 3000, 3010)).unwrap();
    }
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = sluice_shipper::config::ByteSize::mib(256); // every file gets a turn
    let run = start(&cfg, AckMode::InOrder);
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while run.count() < (pods * 3010) as usize {
        assert!(std::time::Instant::now() < deadline, "timed out: {}", run.count());
        most = most.max(open_gz_under(env.tmp.path()));
        std::thread::sleep(Duration::from_millis(5));
    }
    run.wait_scans(2);
    let (records, _) = run.stop();
    for p in 0..pods {
        expect_all(&records, &format!("g{p:02}"), 3010);
    }
    // 4 readers, plus at most one `.gz` opened for a moment to read its first line (identity).
    assert!(most <= 5, "{most} gzip files open at once");
}

// ---- Scenario 2: record boundaries cut by time or memory are reproduced after a SIGKILL ----

use common::kafka_support::{Collector, KillOnDrop, Msg, Setup};

/// A shipper against real Kafka whose checkpoint is written only at a graceful stop (interval 1 h):
/// after a SIGKILL every record is read again from offset 0, as after a crash just before a write.
fn cut_setup(bootstrap: &str, topic: &str, extra: &str) -> Setup {
    let setup = Setup::new(bootstrap, topic, extra);
    let yaml = fs::read_to_string(&setup.config).unwrap();
    let yaml = yaml.replace("  interval: 200ms\ntail:", "  interval: 1h\ntail:");
    assert!(yaml.contains("interval: 1h"), "checkpoint interval not found in {yaml}");
    fs::write(&setup.config, yaml).unwrap();
    setup
}

fn cri_line(tag: &str, content: &str) -> String {
    format!("2027-01-01T00:00:00.000000001Z stdout {tag} {content}\n")
}

/// SIGKILL (no checkpoint written, no graceful flush), then the shipper started again.
fn sigkill_before_any_checkpoint(setup: &Setup, shipper: &mut KillOnDrop) {
    assert!(setup.checkpoint().is_empty(), "precondition: no checkpoint written before the kill");
    shipper.kill().unwrap();
    shipper.wait().unwrap();
}

/// Every record id of `file` always carries the same message (no content lost behind an id
/// re-used with other content), and the records, one per id in offset order, joined by `sep`,
/// cover exactly `expected` (nothing lost, nothing duplicated under another id).
fn assert_same_boundaries(msgs: &[Msg], file: &std::path::Path, sep: &str, expected: &str) {
    let mut by_id: std::collections::BTreeMap<String, (u64, String)> = Default::default();
    for r in msgs.iter().map(Msg::rec).filter(|r| r.path == path_str(file)) {
        match by_id.get(&r.id) {
            Some((_, m)) => assert_eq!(m, &r.message, "id {} sent with two different contents", r.id),
            None => {
                by_id.insert(r.id.clone(), (r.offset, r.message.clone()));
            }
        }
    }
    let mut recs: Vec<(u64, String)> = by_id.into_values().collect();
    recs.sort();
    let joined = recs.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join(sep);
    assert_eq!(joined, expected, "records of {}: {recs:?}", file.display());
}

fn pod_file(setup: &Setup, pod: &str) -> std::path::PathBuf {
    let dir = setup.root.join(format!("ns_{pod}_uid-{pod}/app"));
    fs::create_dir_all(&dir).unwrap();
    dir.join("0.log")
}

async fn cut_topic(name: &str) -> (sluice_integration_tests::Kafka, String) {
    let kafka = sluice_integration_tests::kafka().await;
    let topic = sluice_integration_tests::unique_name(name);
    kafka.create_topic(&topic, 1).await;
    (kafka, topic)
}

const WAIT: Duration = Duration::from_secs(60);

/// Scenario 2, partial flushed by its timeout: `P abc` is sent alone (timeout), reaches Kafka, the
/// checkpoint is not written; `F def` is appended while the shipper is down (SIGKILL). The restart
/// must cut after `abc` again: the same id with the same content, `def` under its own id. (Before:
/// the id of `abc` came back as `abcdef`, a 409 at the indexer, `def` never indexed.)
#[tokio::test(flavor = "multi_thread")]
async fn partial_cut_by_its_timeout_is_cut_there_again_after_sigkill() {
    let (kafka, topic) = cut_topic("cut-partial").await;
    tokio::task::spawn_blocking(move || {
        let setup = cut_setup(&kafka.bootstrap, &topic, "parse:\n  partial_flush_timeout: 300ms\n");
        let collector = Collector::start(&kafka.bootstrap, &topic);
        let file = pod_file(&setup, "cp");
        fs::write(&file, cri_line("P", "abc")).unwrap();
        let mut shipper = KillOnDrop(setup.spawn());
        collector.wait_matching(1, WAIT, |m| m.rec().message == "abc");
        sigkill_before_any_checkpoint(&setup, &mut shipper);
        append(&file, &cri_line("F", "def"));
        let _shipper = KillOnDrop(setup.spawn());
        collector.wait_matching(1, WAIT, |m| m.rec().message.contains("def"));
        assert_same_boundaries(&collector.messages(), &file, "", "abcdef");
    })
    .await
    .unwrap();
}

/// Scenario 2, multiline record flushed by its timeout: `Exception` + `  at a` sent as one record
/// (timeout) before the rest of the trace was written; after SIGKILL and restart with `  at b` and
/// `next` appended, the record is cut after `  at a` again.
#[tokio::test(flavor = "multi_thread")]
async fn multiline_record_cut_by_its_timeout_is_cut_there_again_after_sigkill() {
    let (kafka, topic) = cut_topic("cut-multiline").await;
    tokio::task::spawn_blocking(move || {
        let rule = "multiline:\n  - namespaces: [\"ns\"]\n    containers: [\"app\"]\n    continuation_pattern: '^\\s'\n    timeout: 300ms\n";
        let setup = cut_setup(&kafka.bootstrap, &topic, rule);
        let collector = Collector::start(&kafka.bootstrap, &topic);
        let file = pod_file(&setup, "cm");
        fs::write(&file, format!("{}{}", cri_line("F", "Exception"), cri_line("F", "  at a"))).unwrap();
        let mut shipper = KillOnDrop(setup.spawn());
        collector.wait_matching(1, WAIT, |m| m.rec().message == "Exception\n  at a");
        sigkill_before_any_checkpoint(&setup, &mut shipper);
        append(&file, &format!("{}{}", cri_line("F", "  at b"), cri_line("F", "next")));
        let _shipper = KillOnDrop(setup.spawn());
        collector.wait_matching(1, WAIT, |m| m.rec().message == "next");
        assert_same_boundaries(&collector.messages(), &file, "\n", "Exception\n  at a\n  at b\nnext");
    })
    .await
    .unwrap();
}

/// Scenario 2, partials cut by the memory budget: while file `a` holds most of
/// `limits.pending_bytes` with a pending partial, file `b`'s partials cannot be held and are sent
/// one by one. `a` then completes; nothing is checkpointed; SIGKILL. After the restart `a` no longer
/// holds memory when `b` is re-read, yet `b` is cut exactly as before.
#[tokio::test(flavor = "multi_thread")]
async fn partials_cut_by_memory_are_cut_there_again_after_sigkill() {
    let (kafka, topic) = cut_topic("cut-memory").await;
    tokio::task::spawn_blocking(move || {
        let extra = "parse:\n  max_line_bytes: 1KiB\n  partial_flush_timeout: 1h\nlimits:\n  pending_bytes: 1KiB\n";
        let setup = cut_setup(&kafka.bootstrap, &topic, extra);
        let collector = Collector::start(&kafka.bootstrap, &topic);
        let a = pod_file(&setup, "ma");
        let b = pod_file(&setup, "mb");
        let (x, y, z) = ("x".repeat(700), "y".repeat(300), "z".repeat(300));
        fs::write(&a, cri_line("P", &x)).unwrap();
        let mut shipper = KillOnDrop(setup.spawn());
        setup.wait_metric("sluice_shipper_pending_bytes", WAIT, |v| v >= 700.0);
        fs::write(&b, format!("{}{}{}", cri_line("P", &y), cri_line("P", &z), cri_line("F", "b-end"))).unwrap();
        collector.wait_matching(1, WAIT, |m| m.rec().message == "b-end");
        append(&a, &cri_line("F", "a-end"));
        collector.wait_matching(1, WAIT, |m| m.rec().message.ends_with("a-end"));
        sigkill_before_any_checkpoint(&setup, &mut shipper);
        let _shipper = KillOnDrop(setup.spawn());
        // Sentinels: once they arrive, everything re-read before them has (one partition, in order).
        append(&a, &cri_line("F", "a-sentinel"));
        append(&b, &cri_line("F", "b-sentinel"));
        collector.wait_matching(2, WAIT, |m| m.rec().message.ends_with("-sentinel"));
        let msgs = collector.messages();
        assert_same_boundaries(&msgs, &a, "|", &format!("{x}a-end|a-sentinel"));
        assert_same_boundaries(&msgs, &b, "|", &format!("{y}|{z}|b-end|b-sentinel"));
    })
    .await
    .unwrap();
}

// ---- Scenario 1 through the Kafka publisher, the broker frozen ----

/// A broker frozen by `docker pause`: its connections stay open and nothing is answered (no
/// error, no acknowledgement), like a broker stuck in a long GC or a partitioned network. Thawed
/// by [`Frozen::thaw`] or when dropped (a failing test leaves no paused container).
struct Frozen(Option<String>);

impl Frozen {
    fn freeze(container: &str) -> Frozen {
        let ok = std::process::Command::new("docker")
            .args(["pause", container])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "docker pause {container}");
        Frozen(Some(container.to_owned()))
    }

    fn thaw(&mut self) {
        if let Some(c) = self.0.take() {
            let ok = std::process::Command::new("docker")
                .args(["unpause", &c])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "docker unpause {c}");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ =
                std::process::Command::new("docker").args(["unpause", &c]).stdout(std::process::Stdio::null()).status();
        }
    }
}

/// Scenario 1 as the issue describes it: with the Kafka publisher the read loop keeps ticking while
/// a frozen broker acknowledges nothing. A private broker is frozen (`docker pause`) while the
/// reader is mid-file in a generation; the kubelet rotates it (`0.log` → `0.log.<ts>`, new `0.log`)
/// and gzips it (plain file unlinked) while reading is blocked by `limits.inflight_bytes`; the
/// broker stays frozen 45 s, over twenty times `tail.deleted_file_grace` (2 s). Nothing of the old
/// generation may be given up: after the thaw every line of both generations is in Kafka under its
/// id `<generation>-<byte offset>`, the old generation under one id, the new one under another.
///
/// 45 s rather than the 100 s: the grace is what must run out (it does after 2 s), and
/// 45 s is past librdkafka's request timeout (30 s), so requests time out and connections are
/// re-made during the freeze as in a long one, while the test stays under two minutes.
/// `kafka.delivery_timeout` stays at the setup's 15 s, below the freeze, as the production default
/// (60 s) is below the 100 s: deliveries time out and are produced again under the same
/// ids, and the producer watchdog (nothing delivered for twice the timeout) rebuilds the client
/// during the freeze. With a timeout of 120 s, above the freeze, the old client was seen to deliver
/// nothing more after the thaw until that timeout expired (2 runs of 4 did not finish in 180 s): a
/// publisher matter, not this test's subject.
#[tokio::test(flavor = "multi_thread")]
async fn lagging_generation_gzipped_while_the_broker_is_frozen_is_read_to_the_end() {
    let kafka = sluice_integration_tests::kafka_dedicated().await;
    let topic = sluice_integration_tests::unique_name("frozen-lag");
    kafka.create_topic(&topic, 1).await;
    let bootstrap = kafka.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        const FREEZE: Duration = Duration::from_secs(45);
        let (before, old_end, new_end) = (100u64, 4000u64, 4010u64);
        let setup = Setup::new(&bootstrap, &topic, "limits:\n  inflight_bytes: 64KiB\n");
        let yaml = fs::read_to_string(&setup.config).unwrap();
        let yaml = yaml.replace("  deleted_file_grace: 10m\n", "  deleted_file_grace: 2s\n");
        assert!(yaml.contains("deleted_file_grace: 2s") && yaml.contains("delivery_timeout: 15s"), "{yaml}");
        fs::write(&setup.config, yaml).unwrap();
        let collector = Collector::start(&bootstrap, &topic);
        let dir = setup.root.join("ns_frz_uid-frz/app");
        fs::create_dir_all(&dir).unwrap();
        let live = dir.join("0.log");
        fs::write(&live, long_lines("frz", 0, before)).unwrap();
        let mut shipper = KillOnDrop(setup.spawn());
        // The publisher works before the freeze.
        collector.wait_unique(before as usize, WAIT);
        let mut frozen = Frozen::freeze(kafka.container_id().expect("a private broker"));
        // The generation goes on, far beyond what 64 KiB in flight lets the reader send.
        append(&live, &long_lines("frz", before, old_end));
        setup.wait_metric("sluice_shipper_inflight_bytes", WAIT, |v| v >= 64.0 * 1024.0);
        let scans = setup.metric("sluice_shipper_scans_total");
        setup.wait_metric("sluice_shipper_scans_total", WAIT, |v| v >= scans + 3.0);
        // Kubelet: rotation, a new live file, then the rotated file compressed, the plain one unlinked.
        let rotated = dir.join("0.log.20270101-000001");
        fs::rename(&live, &rotated).unwrap();
        fs::write(&live, long_lines("frz", old_end, new_end)).unwrap();
        kubelet_gzip(&rotated);
        let gzipped_at = std::time::Instant::now();
        // Precondition: the reader is mid-file in the old generation, blocked by back-pressure.
        let read = setup.metric("sluice_shipper_records_total");
        assert!(read < old_end as f64, "precondition: the reader was blocked mid-file, yet read {read} records");
        let scans = setup.metric("sluice_shipper_scans_total");
        setup.wait_metric("sluice_shipper_scans_total", WAIT, |v| v >= scans + 3.0); // unlink noticed
        std::thread::sleep(FREEZE.saturating_sub(gzipped_at.elapsed()));
        // Still blocked mid-file at the end of the freeze (the grace ran out long ago by the wall clock),
        // and nothing given up meanwhile.
        let read = setup.metric("sluice_shipper_records_total");
        assert!(read < old_end as f64, "precondition: reading stayed blocked during the freeze, yet read {read}");
        assert!(shipper.try_wait().unwrap().is_none(), "the shipper exited while the broker was frozen");
        let given_up =
            |reason: &str| setup.counter(&format!("sluice_shipper_files_given_up_total{{reason=\"{reason}\"}}"));
        assert_eq!(given_up("deleted_grace"), 0.0, "the old generation was given up while reading was blocked");
        frozen.thaw();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while collector.unique() < new_end as usize {
            if std::time::Instant::now() > deadline {
                let m = |s: &str| setup.metric_opt(s).unwrap_or(-1.0);
                panic!(
                    "only {} of {new_end} records in Kafka (read by {} clients) within 180 s of the thaw; the shipper read {}, Kafka \
                     acknowledged {}, {} bytes in flight, {} files given up for deleted_grace; {}",
                    collector.unique(),
                    collector.clients(),
                    m("sluice_shipper_records_total"),
                    m("sluice_shipper_kafka_delivered_records_total"),
                    m("sluice_shipper_inflight_bytes"),
                    given_up("deleted_grace"),
                    common::kafka_support::census(&bootstrap, &topic),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let msgs = collector.messages();
        let recs: Vec<Rec> = msgs.iter().map(Msg::rec).collect();
        // Every line once by (tag, seq), duplicates only under the same id. Not the order: deliveries
        // that time out are produced again and may land after later records (docs/shipper.md).
        let expected = std::collections::BTreeMap::from([("frz".to_owned(), new_end)]);
        let dups = verify_with(&recs, &expected, false);
        // Each id is exactly the one of its line: its generation, and the line's byte offset in it.
        let offset_of = |seq: u64| {
            let (from, to) = if seq < old_end { (0, seq) } else { (old_end, seq) };
            long_lines("frz", from, to).len() as u64
        };
        let generation = |r: &Rec| r.id[..32].to_owned();
        let first = |seq: u64| recs.iter().find(|r| seq_of(&r.message).1 == seq).unwrap();
        let (old_gen, new_gen) = (generation(first(0)), generation(first(old_end)));
        assert_ne!(old_gen, new_gen, "the new live file is a new generation");
        for r in &recs {
            let seq = seq_of(&r.message).1;
            let gen_id = if seq < old_end { &old_gen } else { &new_gen };
            assert_eq!(r.id, format!("{gen_id}-{}", offset_of(seq)), "frz {seq}");
            assert_eq!(r.offset, offset_of(seq), "frz {seq}");
        }
        assert_eq!(given_up("deleted_grace"), 0.0);
        assert_eq!(setup.counter("sluice_shipper_bytes_given_up_total"), 0.0);
        assert!(common::kafka_support::sigterm(&mut shipper.0).success());
        eprintln!("{} messages, {new_end} records, {dups} re-sent with their original ids", msgs.len());
    })
    .await
    .unwrap();
}
