//! Optional multiline rules (stack traces): joins consecutive messages of one file and stream.
//!
//! A rule applies to containers whose namespace and name match its globs. With `start_pattern`, a
//! message matching it starts a new record and other messages continue the current one; with
//! `continuation_pattern`, a matching message continues the current record and others start a new
//! one. A record is also sent at `max_lines`, before exceeding `max_bytes`, after `timeout` without a
//! new line, and at the end of a file. Joined records carry the tag `multiline` and the id of their
//! first line.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::bytes::Regex;

use crate::config::MultilineRule;
use crate::reassemble::{Budget, FlushReason, Message, Tags, reserve_within};

/// Why a multiline rule could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum MultilineError {
    /// A glob is invalid.
    #[error("multiline[{0}]: {1}")]
    Glob(usize, globset::Error),
    /// A pattern is invalid.
    #[error("multiline[{0}]: {1}")]
    Regex(usize, regex::Error),
    /// Neither or both patterns are set.
    #[error("multiline[{0}]: set exactly one of start_pattern or continuation_pattern")]
    Mode(usize),
}

#[derive(Debug)]
enum Mode {
    Start(Regex),
    Continue(Regex),
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    namespaces: GlobSet,
    containers: GlobSet,
    mode: Mode,
    max_lines: usize,
    max_bytes: usize,
    timeout: Duration,
}

fn globs(i: usize, list: &[String]) -> Result<GlobSet, MultilineError> {
    let mut b = GlobSetBuilder::new();
    for g in list {
        b.add(Glob::new(g).map_err(|e| MultilineError::Glob(i, e))?);
    }
    b.build().map_err(|e| MultilineError::Glob(i, e))
}

/// The configured rules, compiled; the first matching rule applies to a container.
#[derive(Debug, Default)]
pub struct Rules(Vec<Arc<Rule>>);

impl Rules {
    /// Compiles `multiline` rules from the configuration.
    pub fn compile(rules: &[MultilineRule]) -> Result<Rules, MultilineError> {
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let mode = match (&r.start_pattern, &r.continuation_pattern) {
                (Some(p), None) => Mode::Start(Regex::new(p).map_err(|e| MultilineError::Regex(i, e))?),
                (None, Some(p)) => Mode::Continue(Regex::new(p).map_err(|e| MultilineError::Regex(i, e))?),
                _ => return Err(MultilineError::Mode(i)),
            };
            out.push(Arc::new(Rule {
                namespaces: globs(i, &r.namespaces)?,
                containers: globs(i, &r.containers)?,
                mode,
                max_lines: r.max_lines.max(1),
                max_bytes: r.max_bytes.as_usize(),
                timeout: r.timeout,
            }));
        }
        Ok(Rules(out))
    }

    /// The rule for a container, if any.
    pub fn find(&self, namespace: &str, container: &str) -> Option<Arc<Rule>> {
        self.0.iter().find(|r| r.namespaces.is_match(namespace) && r.containers.is_match(container)).cloned()
    }
}

#[derive(Debug)]
struct Pending {
    start: u64,
    end: u64,
    last: Instant,
    timestamp: Vec<u8>,
    stream: sluice_common::schema::Stream,
    buf: Vec<u8>,
    lines: usize,
    tags: Tags,
    /// A joined message was itself sent without its final fragment (counted by reason).
    flushed: Option<FlushReason>,
}

impl Pending {
    fn held(&self) -> usize {
        self.buf.capacity() + self.timestamp.capacity()
    }
}

/// Per-file multiline state: at most one pending record per stream.
#[derive(Debug)]
pub struct Joiner {
    rule: Arc<Rule>,
    pending: [Option<Pending>; 2],
}

fn slot(m: &Message<'_>) -> usize {
    usize::from(m.stream == sluice_common::schema::Stream::Stderr)
}

impl Joiner {
    /// State for one file under `rule`.
    pub fn new(rule: Arc<Rule>) -> Self {
        Joiner { rule, pending: [None, None] }
    }

    /// Earliest start offset of a pending record.
    pub fn min_pending_start(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.start).min()
    }

    /// Feeds one message; calls `emit` for every record it completes, with the reason when the
    /// record was cut by memory rather than by the rule (see [`crate::reassemble::Cuts`]).
    pub fn push<F: FnMut(Message<'_>, Option<FlushReason>)>(
        &mut self,
        msg: Message<'_>,
        now: Instant,
        budget: &mut Budget,
        emit: &mut F,
    ) {
        if msg.tags.contains(Tags::PARSE_ERROR) {
            emit(msg, None);
            return;
        }
        let s = slot(&msg);
        let starts_new = match &self.rule.mode {
            Mode::Start(re) => re.is_match(&msg.content),
            Mode::Continue(re) => !re.is_match(&msg.content),
        };
        if let Some(mut p) = self.pending[s].take() {
            let grow = 1 + msg.content.len();
            let before = p.held();
            let by_rule = !starts_new && p.lines < self.rule.max_lines && p.buf.len() + grow <= self.rule.max_bytes;
            let joins = by_rule && reserve_within(&mut p.buf, grow, self.rule.max_bytes, budget);
            if joins {
                p.buf.push(b'\n');
                p.buf.extend_from_slice(&msg.content);
                p.lines += 1;
                p.end = msg.end;
                p.last = now;
                p.tags.insert(msg.tags);
                p.flushed = p.flushed.or(msg.flushed);
                budget.used = budget.used - before + p.held();
                self.pending[s] = Some(p);
                return;
            }
            budget.used -= p.held();
            // The rule would have joined it: cut by memory.
            emit(finish(p), by_rule.then_some(FlushReason::Memory));
        }
        if msg.content.len() + msg.timestamp.len() > budget.limit.saturating_sub(budget.used) {
            // Not held: the next message of the stream cannot join it (cut by memory).
            emit(msg, Some(FlushReason::Memory));
            return;
        }
        let p = Pending {
            start: msg.start,
            end: msg.end,
            last: now,
            timestamp: msg.timestamp.into_owned(),
            stream: msg.stream,
            buf: msg.content.into_owned(),
            lines: 1,
            tags: msg.tags,
            flushed: msg.flushed,
        };
        budget.used += p.held();
        self.pending[s] = Some(p);
    }

    /// Sends records idle for longer than the rule's timeout.
    pub fn flush_expired<F: FnMut(Message<'_>, Option<FlushReason>)>(
        &mut self,
        now: Instant,
        budget: &mut Budget,
        emit: &mut F,
    ) {
        for s in 0..2 {
            if self.pending[s].as_ref().is_some_and(|p| now.duration_since(p.last) >= self.rule.timeout)
                && let Some(p) = self.pending[s].take()
            {
                budget.used -= p.held();
                emit(finish(p), Some(FlushReason::Timeout));
            }
        }
    }

    /// Sends the pending record whose last message ends at `end`, as `reason` had (a cut recorded
    /// by an earlier read of the same bytes).
    pub fn flush_ending_at<F: FnMut(Message<'_>, Option<FlushReason>)>(
        &mut self,
        end: u64,
        reason: FlushReason,
        budget: &mut Budget,
        emit: &mut F,
    ) {
        for s in 0..2 {
            if self.pending[s].as_ref().is_some_and(|p| p.end == end)
                && let Some(p) = self.pending[s].take()
            {
                budget.used -= p.held();
                emit(finish(p), Some(reason));
            }
        }
    }

    /// Sends every pending record (end of file).
    pub fn flush_all<F: FnMut(Message<'_>, Option<FlushReason>)>(&mut self, budget: &mut Budget, emit: &mut F) {
        for s in 0..2 {
            if let Some(p) = self.pending[s].take() {
                budget.used -= p.held();
                emit(finish(p), None);
            }
        }
    }

    /// Drops pending records without sending them (they are re-read from the checkpoint).
    pub fn discard(&mut self, budget: &mut Budget) {
        for p in self.pending.iter_mut().filter_map(Option::take) {
            budget.used -= p.held();
        }
    }
}

fn finish(p: Pending) -> Message<'static> {
    let mut tags = p.tags;
    if p.lines > 1 {
        tags.insert(Tags::MULTILINE);
    }
    Message {
        start: p.start,
        end: p.end,
        timestamp: Cow::Owned(p.timestamp),
        stream: p.stream,
        content: Cow::Owned(p.buf),
        tags,
        flushed: p.flushed,
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::schema::Stream;

    use super::*;
    use crate::config::ByteSize;

    fn msg(start: u64, text: &str) -> Message<'_> {
        Message {
            start,
            end: start + text.len() as u64 + 1,
            timestamp: Cow::Borrowed(b"2026-11-27T00:17:09Z"),
            stream: Stream::Stdout,
            content: Cow::Borrowed(text.as_bytes()),
            tags: Tags::default(),
            flushed: None,
        }
    }

    fn rule(start: Option<&str>, cont: Option<&str>, max_lines: usize) -> Arc<Rule> {
        let r = MultilineRule {
            start_pattern: start.map(str::to_owned),
            continuation_pattern: cont.map(str::to_owned),
            max_lines,
            max_bytes: ByteSize::kib(1),
            ..MultilineRule::default()
        };
        Rules::compile(&[r]).unwrap().find("ns", "c").unwrap()
    }

    /// Scenario 8 (issue #9): the bytes held by a pending record (capacity) never exceed the budget.
    #[test]
    fn pending_bytes_never_exceed_the_budget() {
        let r = MultilineRule {
            start_pattern: Some("^start".into()),
            max_lines: 1000,
            max_bytes: ByteSize::mib(1),
            ..MultilineRule::default()
        };
        let mut j = Joiner::new(Rules::compile(&[r]).unwrap().find("ns", "c").unwrap());
        let mut budget = Budget::new(2000);
        let line = "x".repeat(99);
        let mut flushed = 0;
        j.push(msg(0, "start"), Instant::now(), &mut budget, &mut |_, _| {});
        for i in 0..60u64 {
            j.push(msg(10 + i * 100, &line), Instant::now(), &mut budget, &mut |_, _| flushed += 1);
            assert!(budget.used <= budget.limit, "{} held with a budget of {}", budget.used, budget.limit);
        }
        assert!(flushed > 0);
    }

    fn run(j: &mut Joiner, lines: &[&str]) -> Vec<(u64, String, Tags)> {
        let mut out = Vec::new();
        let mut budget = Budget::new(1 << 20);
        let now = Instant::now();
        let mut off = 0;
        for l in lines {
            j.push(msg(off, l), now, &mut budget, &mut |m, _| {
                out.push((m.start, String::from_utf8(m.content.to_vec()).unwrap(), m.tags))
            });
            off += l.len() as u64 + 1;
        }
        j.flush_all(&mut budget, &mut |m, _| {
            out.push((m.start, String::from_utf8(m.content.to_vec()).unwrap(), m.tags))
        });
        assert_eq!(budget.used, 0);
        out
    }

    #[test]
    fn start_pattern_joins_stack_traces() {
        let mut j = Joiner::new(rule(Some(r"^\d{4}-"), None, 10));
        let out = run(&mut j, &["2026-01 boom", "  at a", "  at b", "2026-02 ok"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 0);
        assert_eq!(out[0].1, "2026-01 boom\n  at a\n  at b");
        assert!(out[0].2.contains(Tags::MULTILINE));
        assert_eq!(out[1].1, "2026-02 ok");
        assert!(!out[1].2.contains(Tags::MULTILINE));
    }

    #[test]
    fn continuation_pattern_and_max_lines() {
        let mut j = Joiner::new(rule(None, Some(r"^\s"), 2));
        let out = run(&mut j, &["Exception", " at a", " at b", "next"]);
        let texts: Vec<&str> = out.iter().map(|o| o.1.as_str()).collect();
        assert_eq!(texts, vec!["Exception\n at a", " at b", "next"]);
    }

    #[test]
    fn a_joined_partial_flushed_message_keeps_its_flush_reason() {
        let mut j = Joiner::new(rule(Some(r"^\d{4}-"), None, 10));
        let mut budget = Budget::new(1 << 20);
        let mut out = Vec::new();
        let mut partial = msg(0, "2026-01 half a line");
        partial.tags = Tags::PARTIAL_FLUSHED;
        partial.flushed = Some(FlushReason::Timeout);
        j.push(partial, Instant::now(), &mut budget, &mut |m, _| out.push((m.tags, m.flushed)));
        j.push(msg(20, "  at a"), Instant::now(), &mut budget, &mut |m, _| out.push((m.tags, m.flushed)));
        j.flush_all(&mut budget, &mut |m, _| out.push((m.tags, m.flushed)));
        assert_eq!(out, vec![(Tags::PARTIAL_FLUSHED | Tags::MULTILINE, Some(FlushReason::Timeout))]);
    }

    #[test]
    fn max_bytes_splits() {
        let mut j = Joiner::new(rule(None, Some(r"^\s"), 100));
        let long = format!(" {}", "x".repeat(600));
        let out = run(&mut j, &["E", &long, &long]);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.1.len() <= 1024));
    }
}
