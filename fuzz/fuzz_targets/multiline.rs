//! Multiline joining: any messages under any rule shape keep every line, in order, per stream (a
//! joined record is its lines joined by `\n`), never hold more than the budget, and release it all
//! at the end.
//!
//! Input: byte 0 = pattern and mode, byte 1 = `max_lines`, byte 2 = `max_bytes`, byte 3 = budget,
//! then one message per line (`E` first = stderr, a line starting with `\x01` = one second passes).
#![no_main]

use std::borrow::Cow;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sluice_common::schema::Stream;
use sluice_shipper::config::{ByteSize, MultilineRule};
use sluice_shipper::multiline::{Joiner, Rules};
use sluice_shipper::reassemble::{Budget, Message, Tags};

const PATTERNS: [&str; 8] =
    [r"^\S", r"^\d{4}-\d{2}-\d{2}", r"^[ \t]", r"^(\s+at |Caused by:)", r"^$", r"^", r"x$", r"^[A-Z]+ "];

fuzz_target!(|data: &[u8]| {
    let [mode, lines, bytes, budget, input @ ..] = data else { return };
    let pattern = PATTERNS[usize::from(mode & 7)].to_owned();
    let (start_pattern, continuation_pattern) =
        if mode & 8 == 0 { (Some(pattern), None) } else { (None, Some(pattern)) };
    let rule = MultilineRule {
        start_pattern,
        continuation_pattern,
        max_lines: usize::from(*lines % 16),
        max_bytes: ByteSize(u64::from(*bytes) * 4),
        timeout: Duration::from_secs(1),
        ..MultilineRule::default()
    };
    let rules = Rules::compile(&[rule]).expect("rule compiles");
    let mut joiner = Joiner::new(rules.find("ns", "c").expect("default globs match everything"));
    let mut budget = Budget::new(usize::from(*budget) * 16);
    let limit = budget.limit;
    let mut now = Instant::now();
    let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut got: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut starts: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let collect = |m: Message<'_>, got: &mut [Vec<Vec<u8>>; 2], starts: &mut [Vec<u64>; 2]| {
        let s = usize::from(m.stream == Stream::Stderr);
        if let Some(last) = starts[s].last() {
            assert!(m.start > *last, "records of a stream out of order");
        }
        starts[s].push(m.start);
        got[s].push(m.content.into_owned());
    };
    let mut offset = 0u64;
    for line in input.split(|c| *c == b'\n') {
        if line.first() == Some(&1) {
            now += Duration::from_secs(1);
            joiner.flush_expired(now, &mut budget, &mut |m, _reason| collect(m, &mut got, &mut starts));
            continue;
        }
        let (stream, content) = match line.strip_prefix(b"E") {
            Some(rest) => (Stream::Stderr, rest),
            None => (Stream::Stdout, line),
        };
        let end = offset + line.len() as u64 + 1;
        sent[usize::from(stream == Stream::Stderr)].push(content.to_vec());
        let msg = Message {
            start: offset,
            end,
            timestamp: Cow::Borrowed(b"2026-11-27T00:17:09Z"),
            stream,
            content: Cow::Borrowed(content),
            tags: Tags::default(),
            flushed: None,
        };
        joiner.push(msg, now, &mut budget, &mut |m, _reason| collect(m, &mut got, &mut starts));
        assert!(budget.used <= limit, "{} held with a budget of {limit}", budget.used);
        offset = end;
    }
    joiner.flush_all(&mut budget, &mut |m, _reason| collect(m, &mut got, &mut starts));
    assert_eq!(budget.used, 0);
    assert_eq!(joiner.min_pending_start(), None);
    for s in 0..2 {
        assert_eq!(got[s].join(&b'\n'), sent[s].join(&b'\n'), "stream {s}: lines lost, reordered or changed");
        assert!(got[s].len() <= sent[s].len() && got[s].is_empty() == sent[s].is_empty(), "stream {s}: records lost");
    }
});
