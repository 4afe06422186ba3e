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

#[test]
fn sigkill_and_restart_mid_stream_loses_nothing() {
    let env = Env::new();
    let config = env.tmp.path().join("shipper.yaml");
    fs::write(
        &config,
        format!(
            "node_name: node-1\noutput: stdout\npaths:\n  root: {}\n  symlink_dirs: []\ncheckpoint:\n  dir: {}\n  interval: 200ms\ntail:\n  rescan_interval: 200ms\n  rotate_wait: 500ms\nmetrics:\n  listen: 127.0.0.1:0\n",
            env.root.display(),
            env.ckpt.display()
        ),
    )
    .unwrap();
    let n = 12_000u64;
    let opts = WriterOptions { max_size: 64 * 1024, max_files: 100, fragment: 256, compress: true };
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let tag = format!("k{i}");
            let mut w =
                KubeletWriter::new(&env.root, ("ns", &tag, &format!("uid-{tag}"), "app"), 0, opts.clone()).unwrap();
            std::thread::spawn(move || {
                for seq in 0..n {
                    w.write_line(stream_for(seq), &KubeletWriter::content(&tag, seq, len_for(seq))).unwrap();
                    if seq % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(4));
                    }
                }
            })
        })
        .collect();

    let mut outputs = Vec::new();
    for round in 0..3 {
        let out = env.tmp.path().join(format!("out-{round}.jsonl"));
        outputs.push(out.clone());
        let mut child = spawn(&config, &out);
        std::thread::sleep(Duration::from_millis(700 + 300 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
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
    let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exit status {status}");

    let (recs, torn) = read_outputs(&outputs);
    let dups = verify(&recs, &expected);
    eprintln!(
        "{} records over 4 runs (3 SIGKILLs): {dups} duplicates with identical ids, {torn} torn lines",
        recs.len()
    );
    // After the graceful stop the checkpoint covers everything: a new run prints nothing new.
    let out = env.tmp.path().join("out-after.jsonl");
    let mut child = spawn(&config, &out);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    child.wait().unwrap();
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
