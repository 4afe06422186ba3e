//! Acceptance tests of issue 4 that the other read-path tests do not cover: multiline rules end to
//! end, docker json-file through the whole read path, deleted files given up (`deleted_file_grace`,
//! `max_open_files`), handle eviction without loss, include/exclude globs and inotify discovery.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sluice_common::schema::Stream;
use sluice_shipper::config::{ByteSize, Format, MultilineRule};
use sluice_shipper::metrics::{Metrics, Reason};
use sluice_shipper::pipeline::{self, Pipeline};
use sluice_shipper::record::Record;
use sluice_shipper::sink::{AckMode, AckToken, Acker, Collected, Sink, SinkError};
use sluice_shipper::testkit::{KubeletWriter, WriterOptions};

fn writer_in(env: &Env, ns: &str, pod: &str, container: &str, opts: WriterOptions) -> KubeletWriter {
    KubeletWriter::new(&env.root, (ns, pod, &format!("uid-{ns}-{pod}"), container), 0, opts).unwrap()
}

/// The lines of Java-style stack trace number `n`: one start line, five continuation lines.
fn java_trace(n: u64) -> Vec<String> {
    vec![
        format!("2027-01-01 00:00:{n:02} ERROR request {n} failed"),
        format!("java.lang.IllegalStateException: boom {n}"),
        "\tat com.example.Handler.handle(Handler.java:42)".into(),
        "\tat com.example.Server.run(Server.java:7)".into(),
        "Caused by: java.io.IOException: disk full".into(),
        "\t... 2 more".into(),
    ]
}

fn write_lines(w: &mut KubeletWriter, stream: Stream, lines: &[String]) {
    for l in lines {
        w.write_line(stream, l).unwrap();
    }
}

/// Byte offset of the first physical line of `path` containing `needle`.
fn offset_of(path: &Path, needle: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap();
    let mut off = 0u64;
    for line in text.split_inclusive('\n') {
        if line.contains(needle) {
            return off;
        }
        off += line.len() as u64;
    }
    panic!("{needle:?} not in {}", path.display());
}

fn java_rule(namespaces: &[&str], containers: &[&str], max_lines: usize, timeout: Duration) -> MultilineRule {
    MultilineRule {
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        containers: containers.iter().map(|s| s.to_string()).collect(),
        start_pattern: Some(r"^\d{4}-\d{2}-\d{2} ".into()),
        max_lines,
        timeout,
        ..MultilineRule::default()
    }
}

fn decoded(records: &[Collected]) -> Vec<Rec> {
    records.iter().map(decode).collect()
}

#[test]
fn multiline_rules_join_stack_traces_per_namespace_and_container() {
    let env = Env::new();
    let opts = WriterOptions { compress: false, ..WriterOptions::default() };
    let mut java = writer_in(&env, "java-prod", "svc", "app", opts.clone());
    let mut batch = writer_in(&env, "java-prod", "svc", "batch", opts.clone());
    let mut sidecar = writer_in(&env, "java-prod", "svc", "sidecar", opts.clone());
    let mut web = writer_in(&env, "web", "front", "app", opts);
    for n in 0..5 {
        let trace = java_trace(n);
        write_lines(&mut java, Stream::Stdout, &trace[..3]);
        if n == 2 {
            // Another stream in the middle of a trace neither breaks it nor joins it.
            java.write_line(Stream::Stderr, "stderr noise").unwrap();
        }
        write_lines(&mut java, Stream::Stdout, &trace[3..]);
        for w in [&mut batch, &mut sidecar, &mut web] {
            write_lines(w, Stream::Stdout, &trace);
        }
    }
    let mut cfg = env.config();
    // The first matching rule applies: `batch` gets max_lines 4, `app` the general rule; the
    // sidecar and other namespaces no rule at all.
    cfg.multiline = vec![
        java_rule(&["java-*"], &["batch"], 4, Duration::from_millis(300)),
        java_rule(&["java-*"], &["app", "batch"], 500, Duration::from_millis(300)),
    ];
    let run = start(&cfg, AckMode::InOrder);
    // java: 5 joined + 1 stderr; batch: 5 × (4 + 2); sidecar and web: 30 lines each.
    run.wait_for(6 + 10 + 30 + 30, 30);
    run.settle();
    let (records, metrics) = run.stop();
    let recs = decoded(&records);
    assert_eq!(recs.len(), 6 + 10 + 30 + 30, "{recs:#?}");
    let of = |needle: &str| recs.iter().filter(|r| r.path.contains(needle)).cloned().collect::<Vec<_>>();

    let java_recs = of("java-prod_svc_uid-java-prod-svc/app/");
    let (stdout, stderr): (Vec<_>, Vec<_>) = java_recs.iter().partition(|r| r.stream == "stdout");
    assert_eq!(stdout.len(), 5);
    for (n, r) in stdout.iter().enumerate() {
        let n = n as u64;
        assert_eq!(r.message, java_trace(n).join("\n"));
        assert!(r.tags.contains(&"multiline".to_owned()), "{r:?}");
        // The id and log.offset are those of the first line of the trace.
        let first = offset_of(&java.live_path(), &format!("ERROR request {n} failed"));
        assert_eq!(r.offset, first);
        assert!(r.id.ends_with(&format!("-{first}")), "{}", r.id);
    }
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0].message, "stderr noise");
    assert!(!stderr[0].tags.contains(&"multiline".to_owned()));

    let batch_recs = of("/batch/");
    assert_eq!(batch_recs.len(), 10);
    for pair in batch_recs.chunks(2) {
        assert_eq!(pair[0].message.lines().count(), 4, "max_lines cuts the record: {pair:?}");
        assert_eq!(pair[1].message.lines().count(), 2);
        assert!(pair.iter().all(|r| r.tags.contains(&"multiline".to_owned())));
    }
    for other in [of("/sidecar/"), of("web_front")] {
        assert_eq!(other.len(), 30);
        assert!(other.iter().all(|r| !r.tags.contains(&"multiline".to_owned()) && !r.message.contains('\n')));
    }
    assert_eq!(metrics.multiline.get(), 15);
}

#[test]
fn multiline_timeout_sends_a_trace_of_a_live_file_and_a_pending_trace_survives_restart() {
    let env = Env::new();
    let mut w = writer_in(&env, "java", "svc", "app", WriterOptions::default());
    let mut cfg = env.config();
    cfg.multiline = vec![java_rule(&["java"], &["*"], 500, Duration::from_secs(600))];
    write_lines(&mut w, Stream::Stdout, &java_trace(0));
    write_lines(&mut w, Stream::Stdout, &java_trace(1));
    let run = start(&cfg, AckMode::InOrder);
    // Trace 0 is complete once trace 1 starts; trace 1 waits for its timeout (600 s) or next start.
    run.wait_for(1, 20);
    run.settle();
    let (first, _) = run.stop();
    let first = decoded(&first);
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].message, java_trace(0).join("\n"));

    // Restart: the pending trace is read again from its first line and gets the id of that line.
    let run = start(&cfg, AckMode::InOrder);
    // Positive signal first: trace 1 was read again and is held pending.
    run.wait_until("trace 1 read and pending", 30, |m| m.lines.get() >= 6 && m.pending_bytes.get() > 0);
    run.settle();
    assert_eq!(run.count(), 0, "trace 1 is still pending, trace 0 must not be re-sent");
    w.write_line(Stream::Stdout, &java_trace(2)[0]).unwrap();
    run.wait_for(1, 20);
    run.settle();
    let (second, _) = run.stop();
    let second = decoded(&second);
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(second[0].message, java_trace(1).join("\n"));
    let start1 = offset_of(&w.live_path(), "ERROR request 1 failed");
    assert_eq!(second[0].offset, start1);

    // A short timeout sends the last trace of a live file without waiting for the next start line.
    cfg.multiline[0].timeout = Duration::from_millis(300);
    let run = start(&cfg, AckMode::InOrder);
    write_lines(&mut w, Stream::Stdout, &java_trace(2)[1..]);
    run.wait_for(1, 20);
    let (third, _) = run.stop();
    let third = decoded(&third);
    assert_eq!(third[0].message, java_trace(2).join("\n"));
    assert!(third[0].tags.contains(&"multiline".to_owned()));
    assert!(!third[0].tags.contains(&"partial_flushed".to_owned()), "{:?}", third[0]);
}

#[test]
fn docker_json_file_with_partials_rotation_and_gzip_delivers_every_line_once() {
    let env = Env::new();
    let opts = WriterOptions { max_size: 32 * 1024, max_files: 100, fragment: 256, compress: true };
    let mut w = writer_in(&env, "ns", "dock", "app", opts).with_format(Format::Docker);
    let content = |seq: u64| KubeletWriter::content("d", seq, len_for(seq));
    let n = 1_500u64;
    for seq in 0..n {
        w.write_line(stream_for(seq), &content(seq)).unwrap();
    }
    assert!(w.rotations >= 4, "{}", w.rotations);
    let live = fs::read_to_string(w.live_path()).unwrap();
    assert!(live.starts_with("{\"log\":"), "{}", &live[..80]);
    let cfg = env.config();
    let run = start(&cfg, AckMode::Shuffled(32));
    for seq in n..2 * n {
        w.write_line(stream_for(seq), &content(seq)).unwrap();
    }
    run.wait_for(2 * n as usize, 60);
    run.settle();
    let (records, metrics) = run.stop();
    let recs = decoded(&records);
    assert_eq!(verify(&recs, &BTreeMap::from([("d".to_owned(), 2 * n)])), 0);
    for r in &recs {
        let (_, seq) = seq_of(&r.message);
        // Lines of 700 bytes were written as three docker fragments without trailing "\n".
        assert_eq!(r.message, content(seq), "reassembled content");
        assert_eq!(r.stream, stream_for(seq).as_str());
        assert_eq!(r.tags, vec!["metadata_from_path".to_owned()]);
    }
    assert!(metrics.lagged_generations.get() >= 4);
    assert_eq!(metrics.parse_errors.get_or_create(&Reason { reason: "json" }).get(), 0);
}

#[test]
fn docker_partials_are_keyed_by_stream_and_timestamps_converted_to_utc() {
    let env = Env::new();
    let dir = env.root.join("ns_hand_u1/app");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("0.log"),
        concat!(
            r#"{"log":"first half, ","stream":"stdout","time":"2026-11-27T02:17:09.5+02:00"}"#,
            "\n",
            r#"{"log":"err line\n","stream":"stderr","time":"2026-11-27T00:17:09.123456789123Z"}"#,
            "\n",
            r#"{"log":"second half\n","stream":"stdout","time":"2026-11-27T00:17:10Z","attrs":{"k":"v"}}"#,
            "\n",
            r#"{"log":"-05:30 offset\n","stream":"stdout","time":"2026-11-26T18:47:11-05:30"}"#,
            "\n",
        ),
    )
    .unwrap();
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(3, 20);
    run.settle();
    let (records, _) = run.stop();
    let docs: Vec<serde_json::Value> = records.iter().map(|c| serde_json::from_slice(&c.value).unwrap()).collect();
    let got: Vec<(&str, &str, &str)> = docs
        .iter()
        .map(|d| (d["message"].as_str().unwrap(), d["stream"].as_str().unwrap(), d["@timestamp"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("err line", "stderr", "2026-11-27T00:17:09.123456789Z"),
            ("first half, second half", "stdout", "2026-11-27T00:17:09.500000000Z"),
            ("-05:30 offset", "stdout", "2026-11-27T00:17:11.000000000Z"),
        ]
    );
    assert_eq!(docs[1]["log"]["offset"], 0, "the joined line has the offset of its first fragment");
}

#[test]
fn a_deleted_file_not_drained_within_the_grace_period_is_given_up_and_counted() {
    let env = Env::new();
    let mut w = writer_in(&env, "ns", "gone", "app", WriterOptions::default());
    for seq in 0..5_000 {
        w.write_line(Stream::Stdout, &KubeletWriter::content("g", seq, 100)).unwrap();
    }
    let mut cfg = env.config();
    cfg.limits.inflight_bytes = ByteSize::kib(64);
    cfg.tail.deleted_file_grace = Duration::from_millis(300);
    // A slow output that keeps acknowledging: the reader stays far behind the end of the file. (A
    // stalled one, blocking reading by back-pressure, stops the grace clock: issue #9 scenario 1,
    // `delivery_promise::lagging_generation_gzipped_while_blocked_is_read_to_the_end`.)
    let (acker, events) = pipeline::channel();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = SlowSink { delay: Duration::from_millis(2), acker, held: Vec::new(), received: received.clone() };
    let metrics = Metrics::default();
    let p = Pipeline::new(&cfg, sink, events, metrics.clone()).unwrap();
    let stopper = p.stopper();
    let handle = std::thread::spawn(move || p.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::remove_dir_all(env.root.join("ns_gone_uid-ns-gone")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.files_given_up.get_or_create(&Reason { reason: "deleted_grace" }).get() == 0 {
        assert!(Instant::now() < deadline, "the deleted file was not given up within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    stopper.stop();
    handle.join().unwrap();
    assert!(received.lock().unwrap().len() < 5_000);
    assert_eq!(metrics.files_given_up.get_or_create(&Reason { reason: "deleted_grace" }).get(), 1);
    assert!(metrics.bytes_given_up.get() > 100_000, "{}", metrics.bytes_given_up.get());
}

/// A sink that takes `delay` per record (a slow output without back-pressure) and acks on flush.
struct SlowSink {
    delay: Duration,
    acker: Acker,
    held: Vec<AckToken>,
    received: Arc<Mutex<Vec<Collected>>>,
}

impl Sink for SlowSink {
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError> {
        std::thread::sleep(self.delay);
        self.received.lock().unwrap().push(Collected {
            id: record.id.to_owned(),
            key: record.key.to_owned(),
            value: record.value.to_vec(),
        });
        self.held.push(token);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.acker.ack_all(std::mem::take(&mut self.held));
        Ok(())
    }
}

#[test]
fn at_max_open_files_a_deleted_file_is_given_up_for_a_new_one_and_counted() {
    let env = Env::new();
    let mut a = writer_in(&env, "ns", "a-old", "app", WriterOptions::default());
    for seq in 0..2_000 {
        a.write_line(Stream::Stdout, &KubeletWriter::content("a", seq, 2_000)).unwrap();
    }
    let mut cfg = env.config();
    cfg.tail.max_open_files = 1;
    let (acker, events) = pipeline::channel();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = SlowSink { delay: Duration::from_millis(2), acker, held: Vec::new(), received: received.clone() };
    let metrics = Metrics::default();
    let p = Pipeline::new(&cfg, sink, events, metrics.clone()).unwrap();
    let stopper = p.stopper();
    let handle = std::thread::spawn(move || p.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // The pod goes away while its file is being read (~4 s of output left); a new pod appears.
    fs::remove_dir_all(env.root.join("ns_a-old_uid-ns-a-old")).unwrap();
    let mut b = writer_in(&env, "ns", "b-new", "app", WriterOptions::default());
    for seq in 0..10 {
        b.write_line(Stream::Stdout, &KubeletWriter::content("b", seq, 50)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let b_count = || received.lock().unwrap().iter().filter(|c| decode(c).message.starts_with("b ")).count();
    while b_count() < 10 {
        assert!(Instant::now() < deadline, "the new file was not read");
        std::thread::sleep(Duration::from_millis(20));
    }
    stopper.stop();
    handle.join().unwrap();
    let a_count = received.lock().unwrap().len() - 10;
    assert!(a_count < 2_000, "the deleted file was expected to be given up, not drained");
    assert_eq!(metrics.files_given_up.get_or_create(&Reason { reason: "max_open_files" }).get(), 1);
    assert!(metrics.bytes_given_up.get() > 0);
}

#[test]
fn more_live_files_than_max_open_files_are_all_read_without_loss() {
    let env = Env::new();
    let mut writers: Vec<KubeletWriter> =
        (0..6).map(|i| writer_in(&env, "ns", &format!("m{i}"), "app", WriterOptions::default())).collect();
    let mut cfg = env.config();
    cfg.tail.max_open_files = 2;
    let run = start(&cfg, AckMode::InOrder);
    for round in 0..4u64 {
        for (i, w) in writers.iter_mut().enumerate() {
            for seq in round * 50..(round + 1) * 50 {
                w.write_line(stream_for(seq), &KubeletWriter::content(&format!("m{i}"), seq, len_for(seq))).unwrap();
            }
        }
        run.wait_for(6 * 50 * (round as usize + 1), 30);
    }
    let open = run.metrics.open_files.get();
    run.settle();
    let (records, metrics) = run.stop();
    let expected: BTreeMap<String, u64> = (0..6).map(|i| (format!("m{i}"), 200)).collect();
    assert_eq!(verify(&decoded(&records), &expected), 0);
    assert!(open <= 2, "{open} handles open");
    for reason in ["max_open_files", "deleted_grace", "vanished"] {
        assert_eq!(metrics.files_given_up.get_or_create(&Reason { reason }).get(), 0, "{reason}");
    }
}

#[test]
fn include_exclude_globs_and_inotify_discovery_without_waiting_for_a_rescan() {
    let env = Env::new();
    let mut cfg = env.config();
    cfg.paths.include = vec!["**/team-*_*/**".into()];
    cfg.paths.exclude = vec!["**/team-b_*/**".into(), "**/sidecar/*.log".into()];
    // Only inotify can find files created after start within the test's deadline.
    cfg.tail.rescan_interval = Duration::from_secs(600);
    let run = start(&cfg, AckMode::InOrder);
    // The watcher starts before the first scan.
    run.wait_until("the first scan", 30, |m| m.scans.get() >= 1);
    let t0 = Instant::now();
    for (ns, container) in [("team-a", "app"), ("team-a", "sidecar"), ("team-b", "app"), ("other", "app")] {
        let mut w = writer_in(&env, ns, "p", container, WriterOptions::default());
        for seq in 0..20 {
            w.write_line(Stream::Stdout, &KubeletWriter::content(&format!("{ns}/{container}"), seq, 60)).unwrap();
        }
    }
    run.wait_for(20, 10);
    let found_after = t0.elapsed();
    // A sentinel created after the excluded files: once it arrived, their events were handled.
    let mut sentinel = writer_in(&env, "team-a", "q", "app", WriterOptions::default());
    sentinel.write_line(Stream::Stdout, &KubeletWriter::content("sentinel", 0, 60)).unwrap();
    run.wait_for(21, 10);
    let (records, _) = run.stop();
    let recs = decoded(&records);
    let expected = BTreeMap::from([("team-a/app".to_owned(), 20), ("sentinel".to_owned(), 1)]);
    assert_eq!(verify(&recs, &expected), 0);
    assert!(found_after < Duration::from_secs(5), "new files found after {found_after:?}");
    // The safety-net rescan is at most 1 s by default.
    assert!(sluice_shipper::config::TailConfig::default().rescan_interval <= Duration::from_secs(1));
}

#[test]
fn inotify_events_do_not_cause_rescans_when_idle_or_appending_even_under_a_symlinked_root() {
    let env = Env::new();
    let link = env.tmp.path().join("pods-link");
    std::os::unix::fs::symlink(&env.root, &link).unwrap();
    for (i, root) in [env.root.clone(), link].into_iter().enumerate() {
        let tag = format!("s{i}");
        let mut cfg = env.config();
        cfg.paths.root = root.display().to_string();
        cfg.checkpoint.dir =
            env.tmp.path().join(format!("ckpt-{}", root.file_name().unwrap().to_str().unwrap())).display().to_string();
        cfg.tail.rescan_interval = Duration::from_secs(600);
        let mut w = writer_in(&env, "ns", &tag, "app", WriterOptions::default());
        w.write_line(Stream::Stdout, &KubeletWriter::content(&tag, 0, 60)).unwrap();
        let run = start(&cfg, AckMode::InOrder);
        run.wait_for(1 + 200 * i, 10);
        let scans_before = run.metrics.scans.get();
        std::thread::sleep(Duration::from_millis(500));
        let idle_scans = run.metrics.scans.get() - scans_before;
        // Appends to a known file wake the reader; they are no reason for a full rescan.
        for seq in 1..200 {
            w.write_line(Stream::Stdout, &KubeletWriter::content(&tag, seq, 60)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        run.wait_for(200 * (i + 1), 20);
        let scans = run.metrics.scans.get() - scans_before;
        let (records, _) = run.stop();
        let expected: BTreeMap<String, u64> = (0..=i).map(|j| (format!("s{j}"), 200)).collect();
        assert_eq!(verify(&decoded(&records), &expected), 0);
        assert!(idle_scans <= 1, "{}: {idle_scans} full rescans while idle", root.display());
        assert!(scans <= 2, "{}: {scans} full rescans for appends to a known file", root.display());
    }
}

#[test]
fn after_a_crash_records_below_acked_max_are_resent_with_their_ids_and_skip_ranges_are_not() {
    let env = Env::new();
    let mut w = writer_in(&env, "ns", "crash", "app", WriterOptions::default());
    for seq in 0..20 {
        w.write_line(Stream::Stdout, &KubeletWriter::content("c", seq, 60)).unwrap();
    }
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(20, 20);
    run.settle();
    let (first, _) = run.stop();
    let first = decoded(&first);
    // The checkpoint as a crash can leave it: the prefix is behind, record 5 was acknowledged out of order.
    let path = env.ckpt.join("shipper-checkpoint.json");
    let mut ckpt: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let g = &mut ckpt["generations"][0];
    assert_eq!(g["offset"], g["acked_max"]);
    g["offset"] = 0.into();
    g["skip"] = serde_json::json!([[first[5].offset, first[6].offset]]);
    fs::write(&path, serde_json::to_vec(&ckpt).unwrap()).unwrap();

    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(19, 20);
    run.settle();
    let (second, metrics) = run.stop();
    let second = decoded(&second);
    let expected: Vec<&Rec> = first.iter().enumerate().filter(|(i, _)| *i != 5).map(|(_, r)| r).collect();
    assert_eq!(second.iter().collect::<Vec<_>>(), expected, "same records, same ids, record 5 skipped");
    assert_eq!(metrics.resent.get(), 19);
    assert_eq!(metrics.skipped_acked.get(), 1);
}

#[test]
fn an_unreadable_checkpoint_is_moved_aside_and_files_are_read_from_the_start() {
    let env = Env::new();
    let mut w = writer_in(&env, "ns", "corrupt", "app", WriterOptions::default());
    for seq in 0..10 {
        w.write_line(Stream::Stdout, &KubeletWriter::content("k", seq, 60)).unwrap();
    }
    fs::create_dir_all(&env.ckpt).unwrap();
    fs::write(env.ckpt.join("shipper-checkpoint.json"), b"{\"version\":1,\"generations\":[{\"id\":").unwrap();
    let run = start(&env.config(), AckMode::InOrder);
    run.wait_for(10, 20);
    run.settle();
    let (records, _) = run.stop();
    assert_eq!(verify(&decoded(&records), &BTreeMap::from([("k".to_owned(), 10)])), 0);
    assert!(env.ckpt.join("shipper-checkpoint.json.corrupt").exists());
    let ckpt: serde_json::Value =
        serde_json::from_slice(&fs::read(env.ckpt.join("shipper-checkpoint.json")).unwrap()).unwrap();
    assert_eq!(ckpt["generations"].as_array().unwrap().len(), 1);
}

#[test]
fn a_failing_checkpoint_write_is_counted_delivery_goes_on_and_the_next_write_catches_up() {
    let env = Env::new();
    let mut w = writer_in(&env, "ns", "ckerr", "app", WriterOptions::default());
    for seq in 0..10 {
        w.write_line(Stream::Stdout, &KubeletWriter::content("e", seq, 60)).unwrap();
    }
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(10, 20);
    run.wait_until("a first checkpoint write", 30, |m| m.checkpoint_writes.get() >= 1);
    // The checkpoint directory becomes unusable (tests run as root, so permissions would not do:
    // a file in its place makes every write fail).
    fs::remove_dir_all(&env.ckpt).unwrap();
    fs::write(&env.ckpt, b"not a directory").unwrap();
    for seq in 10..20 {
        w.write_line(Stream::Stdout, &KubeletWriter::content("e", seq, 60)).unwrap();
    }
    run.wait_for(20, 20);
    run.wait_until("a failed checkpoint write", 30, |m| m.checkpoint_errors.get() >= 1);
    // Fixed: the next write succeeds and covers everything acknowledged meanwhile.
    fs::remove_file(&env.ckpt).unwrap();
    fs::create_dir_all(&env.ckpt).unwrap();
    let writes = run.metrics.checkpoint_writes.get();
    run.wait_until("a checkpoint write after the fix", 30, |m| m.checkpoint_writes.get() > writes);
    let (records, metrics) = run.stop();
    assert_eq!(verify(&decoded(&records), &BTreeMap::from([("e".to_owned(), 20)])), 0);
    assert!(metrics.checkpoint_errors.get() >= 1);
    let run = start(&cfg, AckMode::InOrder);
    run.settle();
    let (again, _) = run.stop();
    assert!(again.is_empty(), "{} records re-sent: the checkpoint did not catch up", again.len());
}

/// The checkpoint is written to a temp file and renamed over the old one: a crash between the two
/// leaves a partial temp file and the old checkpoint intact, which the next start uses.
#[test]
fn a_crash_between_checkpoint_write_and_rename_leaves_the_old_checkpoint_in_use() {
    let env = Env::new();
    let mut w = writer_in(&env, "ns", "atomic", "app", WriterOptions::default());
    for seq in 0..50 {
        w.write_line(Stream::Stdout, &KubeletWriter::content("t", seq, 60)).unwrap();
    }
    let cfg = env.config();
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(50, 20);
    // While checkpoints are written (every 200 ms, more lines keep them changing), every read of
    // the checkpoint sees a whole file: it is never written in place.
    let path = env.ckpt.join("shipper-checkpoint.json");
    let writes = run.metrics.checkpoint_writes.get();
    let mut reads = 0;
    let mut seq = 50;
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.metrics.checkpoint_writes.get() < writes + 5 {
        assert!(Instant::now() < deadline, "fewer than 5 checkpoint writes in 60 s");
        // A new line keeps the checkpoint changing (it is written only when changed).
        w.write_line(Stream::Stdout, &KubeletWriter::content("t", seq, 60)).unwrap();
        seq += 1;
        std::thread::sleep(Duration::from_millis(1));
        if let Ok(bytes) = fs::read(&path) {
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("a whole checkpoint at every moment");
            reads += 1;
        }
    }
    assert!(reads > 10, "{reads} reads");
    run.wait_for(seq as usize, 30);
    let (first, _) = run.stop();
    assert_eq!(first.len(), seq as usize);
    let intact = fs::read(&path).unwrap();
    // The crash: a temp file cut in the middle of its write, never renamed.
    fs::write(env.ckpt.join("shipper-checkpoint.json.tmp"), &intact[..intact.len() / 2]).unwrap();
    let run = start(&cfg, AckMode::InOrder);
    run.settle();
    let (second, metrics) = run.stop();
    assert!(second.is_empty(), "{} records re-sent: the old checkpoint was not used", second.len());
    assert_eq!(metrics.checkpoint_errors.get(), 0);
    assert!(!env.ckpt.join("shipper-checkpoint.json.corrupt").exists(), "the intact checkpoint was moved aside");
}

/// `tail.rotate_wait`: a renamed live file stays open for the runtime's late writes while the new
/// file is empty, and is released only after the wait.
#[test]
fn a_renamed_file_is_read_for_late_writes_and_released_after_rotate_wait() {
    let env = Env::new();
    let dir = env.root.join("ns_rw_uid-rw/app");
    fs::create_dir_all(&dir).unwrap();
    let line = |seq: u64| format!("2026-11-27T00:00:00.{seq:09}Z stdout F rw {seq:08}\n");
    let live = dir.join("0.log");
    fs::write(&live, (0..5).map(line).collect::<String>()).unwrap();
    let mut cfg = env.config();
    cfg.tail.rotate_wait = Duration::from_secs(3);
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for(5, 20);
    let rotated = dir.join("0.log.20261127-000001");
    fs::rename(&live, &rotated).unwrap();
    fs::write(&live, b"").unwrap();
    let renamed_at = Instant::now();
    // The runtime still writes to the renamed file until it reopens.
    let mut f = fs::OpenOptions::new().append(true).open(&rotated).unwrap();
    use std::io::Write;
    f.write_all((5..10).map(line).collect::<String>().as_bytes()).unwrap();
    drop(f);
    run.wait_for(10, 20);
    run.wait_until("the rotated generation released", 60, |m| m.generations_completed.get() >= 1);
    let released_after = renamed_at.elapsed();
    assert!(released_after >= Duration::from_secs(3), "released after {released_after:?}, before rotate_wait");
    // The new file is read from its start.
    fs::write(&live, (10..12).map(line).collect::<String>()).unwrap();
    run.wait_for(12, 20);
    run.settle();
    let (records, metrics) = run.stop();
    assert_eq!(verify(&decoded(&records), &BTreeMap::from([("rw".to_owned(), 12)])), 0);
    assert!(metrics.rotations.get() >= 1);
}

/// A sink that acknowledges every second record at once and never the others (out-of-order acks
/// leaving a gap after each acknowledged record).
struct OddAcker {
    acker: Acker,
    n: usize,
    received: Arc<Mutex<Vec<Collected>>>,
}

impl Sink for OddAcker {
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError> {
        self.received.lock().unwrap().push(Collected {
            id: record.id.to_owned(),
            key: record.key.to_owned(),
            value: record.value.to_vec(),
        });
        if self.n % 2 == 1 {
            self.acker.ack_all(vec![token]);
        }
        self.n += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The checkpoint's skip list is capped at 1024 ranges per generation (bounded memory and file);
/// ranges beyond the cap are forgotten, which only re-sends those records (same ids), never loses one.
#[test]
fn the_skip_list_is_capped_at_1024_ranges_and_the_cap_loses_nothing() {
    let env = Env::new();
    let mut w = writer_in(&env, "ns", "skip", "app", WriterOptions { compress: false, ..WriterOptions::default() });
    let n = 3_000u64;
    for seq in 0..n {
        w.write_line(Stream::Stdout, &KubeletWriter::content("s", seq, 60)).unwrap();
    }
    let cfg = env.config();
    let (acker, events) = pipeline::channel();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = OddAcker { acker, n: 0, received: received.clone() };
    let metrics = Metrics::default();
    let p = Pipeline::new(&cfg, sink, events, metrics.clone()).unwrap();
    let stopper = p.stopper();
    let handle = std::thread::spawn(move || p.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.acked.get() < n / 2 {
        assert!(Instant::now() < deadline, "{} of {} acknowledged", metrics.acked.get(), n / 2);
        std::thread::sleep(Duration::from_millis(10));
    }
    stopper.stop();
    handle.join().unwrap();
    let first = decoded(&received.lock().unwrap());
    assert_eq!(first.len() as u64, n);
    let ckpt: serde_json::Value =
        serde_json::from_slice(&fs::read(env.ckpt.join("shipper-checkpoint.json")).unwrap()).unwrap();
    let generation = &ckpt["generations"][0];
    assert_eq!(generation["offset"], 0, "record 0 was never acknowledged");
    let skip = generation["skip"].as_array().unwrap();
    assert_eq!(skip.len(), 1024, "{} skip ranges for {} out-of-order acknowledgements", skip.len(), n / 2);

    // Restart, acknowledging everything: what is in the skip list is not sent again, everything
    // else is — the unacknowledged half and the acknowledged records beyond the cap.
    let run = start(&cfg, AckMode::InOrder);
    run.wait_for((n - 1024) as usize, 60);
    run.settle();
    let (second, metrics) = run.stop();
    let second = decoded(&second);
    assert_eq!(second.len() as u64, n - 1024);
    assert_eq!(metrics.skipped_acked.get(), 1024);
    let mut seen: Vec<u64> =
        first.iter().enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, r)| seq_of(&r.message).1).collect();
    seen.extend(second.iter().map(|r| seq_of(&r.message).1));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len() as u64, n, "every record acknowledged in one of the two runs");
    // The ids of the records sent again are those of the first run.
    for r in &second {
        assert_eq!(first.iter().find(|f| f.message == r.message).unwrap().id, r.id);
    }
}
