//! Per-namespace rate limits through the real read path (`rate_limit.*`): `delay` holds a noisy
//! namespace back while others flow and loses nothing; `drop` sends the limit's worth, counts the
//! rest per namespace, and a `rate_limited` record says how many lines were dropped.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use sluice_shipper::limit::{Action, Limit};
use sluice_shipper::metrics::Namespace;
use sluice_shipper::sink::AckMode;
use sluice_shipper::testkit::{KubeletWriter, WriterOptions};

fn write(env: &Env, ns: &str, tag: &str, n: u64) {
    write_to(env, ns, tag, tag, n)
}

fn write_to(env: &Env, ns: &str, pod: &str, tag: &str, n: u64) {
    let mut w = KubeletWriter::new(
        &env.root,
        (ns, &format!("pod-{pod}"), &format!("uid-{pod}"), "app"),
        0,
        WriterOptions::default(),
    )
    .unwrap();
    for seq in 0..n {
        w.write_line(stream_for(seq), &KubeletWriter::content(tag, seq, 60)).unwrap();
    }
}

#[test]
fn delay_holds_back_the_noisy_namespace_only_and_loses_nothing() {
    let env = Env::new();
    let mut cfg = env.config();
    cfg.rate_limit
        .namespaces
        .insert("noisy".into(), Limit { lines_per_second: 400, bytes_per_second: 0, action: Some(Action::Delay) });
    write(&env, "noisy", "n", 2000);
    write(&env, "quiet", "q", 2000);
    let started = Instant::now();
    let run = start(&cfg, AckMode::InOrder);
    // The quiet namespace is not limited: all of it arrives long before the noisy one can.
    let deadline = Instant::now() + Duration::from_secs(20);
    let quiet_done = loop {
        let recs: Vec<Rec> = run.received.lock().unwrap().iter().map(decode).collect();
        if recs.iter().filter(|r| r.message.starts_with("q ")).count() == 2000 {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "quiet namespace did not flow");
        std::thread::sleep(Duration::from_millis(20));
    };
    let noisy_then = run.received.lock().unwrap().iter().map(decode).filter(|r| r.message.starts_with("n ")).count();
    assert!(noisy_then < 2000, "noisy namespace was not held back ({noisy_then} of 2000 after {quiet_done:?})");
    run.wait_for(4000, 30);
    let noisy_elapsed = started.elapsed();
    // 2000 lines at 400/s with a 1 s burst: at least ~4 s.
    assert!(noisy_elapsed >= Duration::from_millis(3500), "rate not applied: {noisy_elapsed:?}");
    let delays = run.metrics.rate_limit_delays.get_or_create(&Namespace::of("noisy")).get();
    assert!(delays > 0);
    assert_eq!(run.metrics.rate_limit_delays.get_or_create(&Namespace::of("quiet")).get(), 0);
    let (received, _) = run.stop();
    let recs: Vec<Rec> = received.iter().map(decode).collect();
    let expected = BTreeMap::from([("n".to_owned(), 2000), ("q".to_owned(), 2000)]);
    assert_eq!(verify(&recs, &expected), 0);
}

#[test]
fn drop_counts_per_namespace_and_leaves_a_rate_limited_record() {
    let env = Env::new();
    let mut cfg = env.config();
    cfg.rate_limit
        .namespaces
        .insert("noisy".into(), Limit { lines_per_second: 20, bytes_per_second: 0, action: Some(Action::Drop) });
    write(&env, "noisy", "n", 1000);
    let run = start(&cfg, AckMode::InOrder);
    // The burst (20 lines, plus 20/s while the file is read) goes through; the rest is dropped and
    // acknowledged at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.metrics.rate_limited_records.get_or_create(&Namespace::of("noisy")).get() < 700 {
        assert!(Instant::now() < deadline, "records were not dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1200));
    // After the bucket refilled, the next line is admitted, preceded by the summary.
    write_to(&env, "noisy", "n", "late", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs: Vec<Rec> = run.received.lock().unwrap().iter().map(decode).collect();
        if recs.iter().any(|r| r.message.starts_with("late ")) {
            break;
        }
        assert!(Instant::now() < deadline, "the admitted line after the drop did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped = run.metrics.rate_limited_records.get_or_create(&Namespace::of("noisy")).get();
    let (received, _) = run.stop();
    let recs: Vec<Rec> = received.iter().map(decode).collect();
    let lines = recs.iter().filter(|r| r.message.starts_with("n ")).count() as u64;
    assert_eq!(lines + dropped, 1000, "every line is either sent or counted as dropped");
    // Reading 1000 short lines takes well under the ~10 s it would take 20 lines/s to admit 200.
    assert!((20..200).contains(&lines), "{lines} lines sent for a 20 lines/s limit");
    let summaries: Vec<&Rec> = recs.iter().filter(|r| r.tags.iter().any(|t| t == "rate_limited")).collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert!(summaries[0].message.contains(&format!("dropped {dropped} line(s)")), "{}", summaries[0].message);
    assert!(summaries[0].id.ends_with("-rate-limited"));
    let ids: std::collections::HashSet<&str> = recs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), recs.len(), "the summary never takes a line's id");
}
