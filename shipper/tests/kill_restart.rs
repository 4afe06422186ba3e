//! The real `sluice-shipper` binary with `output: stdout`, SIGKILLed and restarted mid-stream while a
//! kubelet-like writer rotates and compresses: the union of its output has every line; duplicates
//! only with identical record ids (counted). Also `inspect`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sluice_shipper::testkit::{KubeletWriter, WriterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-shipper");

fn spawn(config: &Path, out: &Path) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--log-level")
        .arg("warn")
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn read_outputs(paths: &[std::path::PathBuf]) -> (Vec<Rec>, usize) {
    let mut recs = Vec::new();
    let mut torn = 0;
    for p in paths {
        let text = fs::read_to_string(p).unwrap_or_default();
        for line in text.lines() {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => {
                    let c = sluice_shipper::sink::Collected {
                        id: v["id"].as_str().unwrap().to_owned(),
                        key: String::new(),
                        value: serde_json::to_vec(&v["doc"]).unwrap(),
                    };
                    recs.push(decode(&c));
                }
                // A SIGKILL can cut the last line written; its record was never acknowledged.
                Err(_) => torn += 1,
            }
        }
    }
    (recs, torn)
}

/// A checkpoint entry as the next run loads it.
struct Entry {
    offset: u64,
    complete: bool,
    skip: Vec<(u64, u64)>,
}

fn load_checkpoint(path: &Path) -> std::collections::HashMap<String, Entry> {
    let Ok(text) = fs::read_to_string(path) else { return Default::default() };
    let v: serde_json::Value = serde_json::from_str(&text).expect("the checkpoint parses after a SIGKILL");
    v["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let skip = g["skip"]
                .as_array()
                .map(|a| a.iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap())).collect())
                .unwrap_or_default();
            let entry = Entry { offset: g["offset"].as_u64().unwrap(), complete: g["complete"] == true, skip };
            (g["id"].as_str().unwrap().to_owned(), entry)
        })
        .collect()
}

/// Records of `recs` the checkpoint does not cover: the next run must send them again.
fn not_covered<'a>(recs: &'a [Rec], ckpt: &std::collections::HashMap<String, Entry>) -> Vec<&'a Rec> {
    recs.iter()
        .filter(|r| {
            let generation = r.id.split_once('-').unwrap().0;
            match ckpt.get(generation) {
                None => true,
                Some(e) => {
                    !e.complete && r.offset >= e.offset && !e.skip.iter().any(|&(a, b)| (a..b).contains(&r.offset))
                }
            }
        })
        .collect()
}

#[test]
fn sigkill_and_restart_mid_stream_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let config = env.tmp.path().join("shipper.yaml");
    let port = sluice_integration_tests::free_port();
    fs::write(
        &config,
        format!(
            "node_name: node-1\noutput: stdout\npaths:\n  root: {}\n  symlink_dirs: []\ncheckpoint:\n  dir: {}\n  interval: 200ms\ntail:\n  rescan_interval: 200ms\n  rotate_wait: 500ms\nmetrics:\n  listen: 127.0.0.1:{port}\n",
            env.root.display(),
            env.ckpt.display()
        ),
    )
    .unwrap();
    let ckpt_file = env.ckpt.join("shipper-checkpoint.json");
    // Four phases of lines per writer; phase k is written while run k goes on, so each kill lands
    // with records left to read (the later phases), whatever the machine's speed.
    let (phases, per_phase) = (4u64, 3_000u64);
    let n = phases * per_phase;
    let opts = WriterOptions { max_size: 64 * 1024, max_files: 100, fragment: 256, compress: true };
    let (writers, gates): (Vec<_>, Vec<_>) = (0..2)
        .map(|i| {
            let tag = format!("k{i}");
            let mut w =
                KubeletWriter::new(&env.root, ("ns", &tag, &format!("uid-{tag}"), "app"), 0, opts.clone()).unwrap();
            let (gate, phase) = std::sync::mpsc::channel::<u64>();
            let handle = std::thread::spawn(move || {
                for k in phase {
                    for seq in k * per_phase..(k + 1) * per_phase {
                        w.write_line(stream_for(seq), &KubeletWriter::content(&tag, seq, len_for(seq))).unwrap();
                        if seq % 50 == 0 {
                            std::thread::sleep(Duration::from_millis(4));
                        }
                    }
                }
                w.rotations
            });
            (handle, gate)
        })
        .unzip();

    let mut outputs: Vec<std::path::PathBuf> = Vec::new();
    let mut must_resend: Vec<(usize, String)> = Vec::new();
    for round in 0..3u64 {
        for gate in &gates {
            gate.send(round).unwrap();
        }
        let out = env.tmp.path().join(format!("out-{round}.jsonl"));
        outputs.push(out.clone());
        let mut child = spawn(&config, &out);
        // Kill only once this run has printed records of the phase being written: the kill lands
        // mid-stream (a slow start cannot turn the test into one clean run).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (recs, _) = read_outputs(std::slice::from_ref(&out));
            let fresh = recs.iter().filter(|r| seq_of(&r.message).1 >= round * per_phase).count();
            if fresh >= 50 {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "run {round} exited before the kill");
            assert!(Instant::now() < deadline, "run {round} printed {fresh} records of phase {round} in 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "run {round} was not killed by the SIGKILL: {status}");
        let (all, _) = read_outputs(&outputs);
        let distinct: std::collections::HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
        assert!((distinct.len() as u64) < 2 * n, "records remained after kill {round}");
        // What this run printed and the checkpoint does not cover was in flight: it must be
        // printed again by a later run, with the same id.
        let (printed, _) = read_outputs(std::slice::from_ref(&out));
        let ckpt = load_checkpoint(&ckpt_file);
        must_resend.extend(not_covered(&printed, &ckpt).into_iter().map(|r| (round as usize, r.id.clone())));
        eprintln!(
            "kill {round}: {} records printed by this run, {} of them not yet checkpointed",
            printed.len(),
            must_resend.iter().filter(|(k, _)| *k == round as usize).count()
        );
    }
    for gate in &gates {
        gate.send(phases - 1).unwrap();
    }
    drop(gates);
    // Last run: until everything is there, then a graceful SIGTERM.
    let out = env.tmp.path().join("out-final.jsonl");
    outputs.push(out.clone());
    let mut child = spawn(&config, &out);
    let expected: BTreeMap<String, u64> = (0..2).map(|i| (format!("k{i}"), n)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (recs, _) = read_outputs(&outputs);
        let distinct: std::collections::HashSet<&str> = recs.iter().map(|r| r.id.as_str()).collect();
        if distinct.len() as u64 >= 2 * n {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {} distinct records", distinct.len(), 2 * n);
        std::thread::sleep(Duration::from_millis(200));
    }
    let rotations: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(rotations >= 10, "the writers rotated only {rotations} times");
    let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit status {status}");

    let (recs, torn) = read_outputs(&outputs);
    let dups = verify(&recs, &expected);
    // Every record in flight at a kill was seen again in a later run (same id).
    let ids_of: Vec<std::collections::HashSet<String>> =
        outputs.iter().map(|o| read_outputs(std::slice::from_ref(o)).0.into_iter().map(|r| r.id).collect()).collect();
    for (round, id) in &must_resend {
        let later = ids_of[round + 1..].iter().any(|ids| ids.contains(id));
        assert!(later, "record {id}, in flight at kill {round}, was never sent again");
    }
    eprintln!(
        "{} records over 4 runs (3 SIGKILLs): {} in flight at a kill and re-sent, {dups} duplicates with identical ids, {torn} torn lines",
        recs.len(),
        must_resend.len()
    );
    assert!(dups >= must_resend.len(), "{dups} duplicates < {} records re-sent", must_resend.len());

    // After the graceful stop the checkpoint covers everything: a new run, once it has scanned
    // and read both files (positive signal), has printed nothing.
    let out = env.tmp.path().join("out-after.jsonl");
    let mut child = spawn(&config, &out);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(text) = common::kafka_support::http_get(port, "/metrics") {
            let value = |name: &str| common::kafka_support::series_value(&text, name);
            if value("sluice_shipper_scans_total").is_some_and(|v| v >= 2.0)
                && value("sluice_shipper_files").is_some_and(|v| v >= 2.0)
            {
                assert_eq!(value("sluice_shipper_records_total"), Some(0.0), "{text}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the restarted shipper did not scan its files within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit status {status}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "", "nothing re-sent after a graceful stop");
}

#[test]
fn inspect_prints_records_with_ids_identical_for_plain_and_gzip() {
    let env = Env::new();
    let opts = WriterOptions { max_size: 4 * 1024, max_files: 10, fragment: 100, compress: true };
    let mut w = KubeletWriter::new(&env.root, ("shop", "web-0", "0d6c", "nginx"), 2, opts).unwrap();
    for seq in 0..200 {
        w.write_line(stream_for(seq), &KubeletWriter::content("i", seq, len_for(seq))).unwrap();
    }
    let mut files: Vec<_> = fs::read_dir(w.dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let gz = files.iter().find(|p| p.extension().is_some_and(|e| e == "gz")).unwrap().clone();
    let plain = env.tmp.path().join("copy").join("shop_web-0_0d6c/nginx");
    fs::create_dir_all(&plain).unwrap();
    let plain_file = plain.join(gz.file_name().unwrap().to_str().unwrap().trim_end_matches(".gz"));
    let mut d = flate2::read::GzDecoder::new(fs::File::open(&gz).unwrap());
    std::io::copy(&mut d, &mut fs::File::create(&plain_file).unwrap()).unwrap();

    let run = |file: &Path| {
        let out = Command::new(BIN).args(["--set", "node_name=node-1", "inspect"]).arg(file).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let a = run(&gz);
    let b = run(&plain_file);
    let ids = |s: &str| {
        s.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].clone()).collect::<Vec<_>>()
    };
    assert!(!a.is_empty());
    assert_eq!(ids(&a), ids(&b), "same generation, same ids whether gzipped or not");
    let first: serde_json::Value = serde_json::from_str(a.lines().next().unwrap()).unwrap();
    let doc_json = serde_json::to_string(&first["doc"]).unwrap();
    let doc: sluice_common::schema::Document = serde_json::from_str(&doc_json).unwrap();
    assert_eq!(doc.kubernetes.namespace, "shop");
    assert_eq!(doc.kubernetes.pod.name, "web-0");
    assert_eq!(doc.kubernetes.container.name, "nginx");
    assert!(doc.log.file.path.ends_with("/nginx/2.log"), "{}", doc.log.file.path);
    assert_eq!(doc.tags, vec!["metadata_from_path"]);

    // Pending partials are flushed and tagged; docker format is forced with --format.
    let odd = env.tmp.path().join("odd.log");
    fs::write(&odd, "2026-11-27T00:00:00Z stdout P unfinished\n").unwrap();
    let out = run(&odd);
    assert!(out.contains("\"message\":\"unfinished\"") && out.contains("partial_flushed"), "{out}");
    let out = Command::new(BIN).args(["inspect", "--format", "docker"]).arg(&odd).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("parse_error"), "{text}");
}
