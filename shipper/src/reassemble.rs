//! Reassembly of partial lines into messages, keyed by file (one [`Assembler`] per file) **and stream**.
//!
//! A CRI `P` fragment or a docker `log` without trailing newline starts or continues the pending
//! message of its stream; the next final fragment of that stream completes it. A message longer than
//! `max_line_bytes` is cut at a character boundary and tagged `truncated`. A pending message is sent
//! early, tagged `partial_flushed`, when its final fragment does not come within the flush timeout,
//! at the end of a rotated or deleted file, or when the shared [`Budget`] of pending bytes is spent.
//! Content is kept byte for byte: a CRI line's content is everything before its `\n`, a trailing `\r`
//! included (the docker parser removes the `\r` of a `log` ending in `\r\n`).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use sluice_common::schema::{Stream, tag};

use crate::parse::Fragment;

/// Tags of a message, as bits (turned into schema [`tag`] strings when the record is built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tags(pub u8);

impl Tags {
    /// `truncated`.
    pub const TRUNCATED: Tags = Tags(1);
    /// `parse_error`.
    pub const PARSE_ERROR: Tags = Tags(2);
    /// `partial_flushed`.
    pub const PARTIAL_FLUSHED: Tags = Tags(4);
    /// `invalid_utf8`.
    pub const INVALID_UTF8: Tags = Tags(8);
    /// `multiline`.
    pub const MULTILINE: Tags = Tags(16);
    /// `rate_limited`.
    pub const RATE_LIMITED: Tags = Tags(32);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Tags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: Tags) {
        self.0 |= other.0;
    }
    /// The schema tag names, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (Tags::TRUNCATED, tag::TRUNCATED),
            (Tags::PARSE_ERROR, tag::PARSE_ERROR),
            (Tags::PARTIAL_FLUSHED, tag::PARTIAL_FLUSHED),
            (Tags::INVALID_UTF8, tag::INVALID_UTF8),
            (Tags::MULTILINE, tag::MULTILINE),
            (Tags::RATE_LIMITED, tag::RATE_LIMITED),
        ]
        .into_iter()
        .filter(move |(t, _)| self.contains(*t))
        .map(|(_, name)| name)
    }
}

impl std::ops::BitOr for Tags {
    type Output = Tags;
    fn bitor(self, rhs: Tags) -> Tags {
        Tags(self.0 | rhs.0)
    }
}

/// Why a pending message was sent without its final fragment (label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// No final fragment within the flush timeout.
    Timeout,
    /// End of a rotated, deleted or truncated file, or of `inspect`'s input.
    EndOfFile,
    /// The shared pending-bytes budget was spent.
    Memory,
}

impl FlushReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            FlushReason::Timeout => "timeout",
            FlushReason::EndOfFile => "eof",
            FlushReason::Memory => "memory",
        }
    }
}

/// The stage that ended a message by time or memory (see [`Cuts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Partial-line reassembly ([`Assembler`]).
    Partial,
    /// Multiline joining ([`crate::multiline::Joiner`]).
    Multiline,
}

/// Record boundaries set by time or memory rather than by the bytes (issue #9 scenario 2): at one
/// end offset, which stage cut the message ending there and why. Persisted before the message is
/// sent, and forced again when the same bytes are re-read, so a re-send after a crash has the same
/// boundaries, ids and content as the first send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cuts(pub u8);

impl Cuts {
    /// The cut of `stage` for `reason`; `None` for the end of a file (cut by the bytes).
    pub fn of(stage: Stage, reason: FlushReason) -> Option<Cuts> {
        let bit = match reason {
            FlushReason::Timeout => 1,
            FlushReason::Memory => 2,
            FlushReason::EndOfFile => return None,
        };
        Some(Cuts(match stage {
            Stage::Partial => bit,
            Stage::Multiline => bit << 2,
        }))
    }

    /// Why `stage` cut here, if it did.
    pub fn reason(self, stage: Stage) -> Option<FlushReason> {
        let bits = match stage {
            Stage::Partial => self.0 & 3,
            Stage::Multiline => (self.0 >> 2) & 3,
        };
        match bits {
            0 => None,
            1 => Some(FlushReason::Timeout),
            _ => Some(FlushReason::Memory),
        }
    }

    /// No cut.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every cut of `other` is here.
    pub fn contains(self, other: Cuts) -> bool {
        self.0 & other.0 == other.0
    }

    /// Adds the cuts of `other`.
    pub fn insert(&mut self, other: Cuts) {
        self.0 |= other.0;
    }
}

/// A reassembled message: one record unless a multiline rule joins it with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// Byte offset of its first line in the (uncompressed) file: the basis of the record id.
    pub start: u64,
    /// Byte offset just past its last line.
    pub end: u64,
    /// Timestamp as written in the first fragment; empty for parse errors (the read time is used).
    pub timestamp: Cow<'a, [u8]>,
    /// Stream.
    pub stream: Stream,
    /// Content bytes (UTF-8 validated when the record is built).
    pub content: Cow<'a, [u8]>,
    /// Tags collected so far.
    pub tags: Tags,
    /// Set when the message was flushed without its final fragment.
    pub flushed: Option<FlushReason>,
}

/// Bytes held by pending messages across all files (invariant 3).
#[derive(Debug, Clone)]
pub struct Budget {
    /// Bytes in use.
    pub used: usize,
    /// Limit (`limits.pending_bytes`).
    pub limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget { used: 0, limit }
    }
    fn fits(&self, n: usize) -> bool {
        self.used + n <= self.limit
    }
}

/// The largest prefix length `<= max` of `bytes` that does not split a UTF-8 sequence.
pub fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut cut = max;
    while cut > 0 && max - cut < 3 && (bytes[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if (bytes[cut] & 0xC0) == 0x80 { max } else { cut }
}

/// Makes room for `grow` more bytes in `buf` within the budget, which counts capacity, not length:
/// grows geometrically (up to `max` bytes) while the budget allows, exactly otherwise. `false` when
/// even the exact growth does not fit.
pub(crate) fn reserve_within(buf: &mut Vec<u8>, grow: usize, max: usize, budget: &Budget) -> bool {
    let need = buf.len() + grow;
    if need <= buf.capacity() {
        return true;
    }
    let avail = budget.limit.saturating_sub(budget.used);
    if need - buf.capacity() > avail {
        return false;
    }
    let target = (buf.capacity() * 2).min(max).max(need).min(buf.capacity() + avail);
    buf.reserve_exact(target - buf.len());
    true
}

#[derive(Debug)]
struct Pending {
    stream: Stream,
    start: u64,
    end: u64,
    last: Instant,
    timestamp: Vec<u8>,
    buf: Vec<u8>,
    tags: Tags,
}

impl Pending {
    fn held(&self) -> usize {
        self.buf.capacity() + self.timestamp.capacity()
    }
}

/// Per-file reassembly state: at most one pending message per stream.
#[derive(Debug)]
pub struct Assembler {
    max_line: usize,
    timeout: Duration,
    pending: [Option<Pending>; 2],
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Assembler {
    /// A new assembler cutting messages at `max_line` bytes and flushing partials after `timeout`.
    pub fn new(max_line: usize, timeout: Duration) -> Self {
        Assembler { max_line, timeout, pending: [None, None] }
    }

    /// Earliest start offset of a pending message (the checkpoint must not pass it).
    pub fn min_pending_start(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.start).min()
    }

    /// Bytes held by pending messages of this file.
    pub fn held(&self) -> usize {
        self.pending.iter().flatten().map(Pending::held).sum()
    }

    /// Feeds the fragment read at `[start, end)`; calls `emit` for every message it completes.
    pub fn push<F: FnMut(Message<'_>)>(
        &mut self,
        frag: Fragment<'_>,
        start: u64,
        end: u64,
        now: Instant,
        budget: &mut Budget,
        emit: &mut F,
    ) {
        let s = slot(frag.stream);
        if self.pending[s].is_none() {
            if !frag.partial {
                // Fast path: a whole line, borrowed.
                let content: &[u8] = &frag.content;
                let cut = utf8_cut(content, self.max_line);
                let mut tags = Tags::default();
                if cut < content.len() {
                    tags.insert(Tags::TRUNCATED);
                }
                emit(Message {
                    start,
                    end,
                    timestamp: frag.timestamp,
                    stream: frag.stream,
                    content: Cow::Borrowed(&content[..cut]),
                    tags,
                    flushed: None,
                });
                return;
            }
            let cap = frag.content.len().min(self.max_line);
            if !budget.fits(cap + frag.timestamp.len()) {
                self.emit_unpendable(frag, start, end, emit);
                return;
            }
            let mut p = Pending {
                stream: frag.stream,
                start,
                end,
                last: now,
                timestamp: frag.timestamp.to_vec(),
                buf: Vec::with_capacity(cap),
                tags: Tags::default(),
            };
            self.append(&mut p, &frag.content);
            budget.used += p.held();
            self.pending[s] = Some(p);
            return;
        }
        // Continue the pending message of this stream.
        let mut p = self.pending[s].take().expect("pending");
        let before = p.held();
        let room = self.max_line.saturating_sub(p.buf.len());
        let grow = frag.content.len().min(room);
        if grow > 0 && !reserve_within(&mut p.buf, grow, self.max_line, budget) {
            // Out of budget: send what we have, then treat the fragment as the start of a new message.
            budget.used -= before;
            emit(self.finish(p, Some(FlushReason::Memory)));
            self.push(frag, start, end, now, budget, emit);
            return;
        }
        self.append(&mut p, &frag.content);
        p.end = end;
        p.last = now;
        budget.used = budget.used - before + p.held();
        if frag.partial {
            self.pending[s] = Some(p);
        } else {
            budget.used -= p.held();
            emit(self.finish(p, None));
        }
    }

    fn append(&self, p: &mut Pending, content: &[u8]) {
        if p.tags.contains(Tags::TRUNCATED) {
            return;
        }
        let room = self.max_line - p.buf.len();
        let cut = utf8_cut(content, room);
        p.buf.extend_from_slice(&content[..cut]);
        if cut < content.len() {
            p.tags.insert(Tags::TRUNCATED);
        }
    }

    fn emit_unpendable<F: FnMut(Message<'_>)>(&self, frag: Fragment<'_>, start: u64, end: u64, emit: &mut F) {
        let cut = utf8_cut(&frag.content, self.max_line);
        let mut tags = Tags::PARTIAL_FLUSHED;
        if cut < frag.content.len() {
            tags.insert(Tags::TRUNCATED);
        }
        emit(Message {
            start,
            end,
            timestamp: frag.timestamp,
            stream: frag.stream,
            content: Cow::Borrowed(&frag.content[..cut]),
            tags,
            flushed: Some(FlushReason::Memory),
        });
    }

    fn finish(&self, p: Pending, flushed: Option<FlushReason>) -> Message<'static> {
        let mut tags = p.tags;
        let buf = p.buf;
        if flushed.is_some() {
            tags.insert(Tags::PARTIAL_FLUSHED);
        }
        Message {
            start: p.start,
            end: p.end,
            timestamp: Cow::Owned(p.timestamp),
            stream: p.stream,
            content: Cow::Owned(buf),
            tags,
            flushed,
        }
    }

    /// Sends pending messages whose last fragment is older than the flush timeout.
    pub fn flush_expired<F: FnMut(Message<'_>)>(&mut self, now: Instant, budget: &mut Budget, emit: &mut F) {
        for s in 0..2 {
            if self.pending[s].as_ref().is_some_and(|p| now.duration_since(p.last) >= self.timeout) {
                self.flush_slot(s, FlushReason::Timeout, budget, emit);
            }
        }
    }

    /// Sends the pending message whose last fragment ends at `end`, as `reason` had (a cut recorded
    /// by an earlier read of the same bytes, see [`Cuts`]).
    pub fn flush_ending_at<F: FnMut(Message<'_>)>(
        &mut self,
        end: u64,
        reason: FlushReason,
        budget: &mut Budget,
        emit: &mut F,
    ) {
        for s in 0..2 {
            if self.pending[s].as_ref().is_some_and(|p| p.end == end) {
                self.flush_slot(s, reason, budget, emit);
            }
        }
    }

    /// Sends every pending message (end of file).
    pub fn flush_all<F: FnMut(Message<'_>)>(&mut self, reason: FlushReason, budget: &mut Budget, emit: &mut F) {
        for s in 0..2 {
            self.flush_slot(s, reason, budget, emit);
        }
    }

    /// Drops pending messages without sending them (the file will be re-read from the checkpoint).
    pub fn discard(&mut self, budget: &mut Budget) {
        for p in self.pending.iter_mut().filter_map(Option::take) {
            budget.used -= p.held();
        }
    }

    fn flush_slot<F: FnMut(Message<'_>)>(&mut self, s: usize, reason: FlushReason, budget: &mut Budget, emit: &mut F) {
        if let Some(p) = self.pending[s].take() {
            budget.used -= p.held();
            emit(self.finish(p, Some(reason)));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn frag(stream: Stream, partial: bool, content: &[u8]) -> Fragment<'_> {
        Fragment { timestamp: Cow::Borrowed(b"2026-11-27T00:17:09Z"), stream, partial, content: Cow::Borrowed(content) }
    }

    type Out = Vec<(u64, u64, Vec<u8>, Stream, Tags)>;

    fn feed(a: &mut Assembler, budget: &mut Budget, frags: &[(Stream, bool, &[u8])]) -> Out {
        let mut out = Vec::new();
        let now = Instant::now();
        let mut off = 0;
        for (s, p, c) in frags {
            let len = c.len() as u64 + 40;
            a.push(frag(*s, *p, c), off, off + len, now, budget, &mut |m| {
                out.push((m.start, m.end, m.content.to_vec(), m.stream, m.tags))
            });
            off += len;
        }
        out
    }

    #[test]
    fn partials_are_keyed_by_stream() {
        let mut a = Assembler::new(1 << 20, T);
        let mut b = Budget::new(1 << 20);
        let out = feed(
            &mut a,
            &mut b,
            &[
                (Stream::Stdout, true, b"out-1 "),
                (Stream::Stderr, true, b"err-1 "),
                (Stream::Stderr, false, b"err-2"),
                (Stream::Stdout, false, b"out-2\r"),
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0, out[0].2.as_slice(), out[0].3), (46, &b"err-1 err-2"[..], Stream::Stderr));
        assert_eq!((out[1].0, out[1].2.as_slice(), out[1].3), (0, &b"out-1 out-2\r"[..], Stream::Stdout));
        assert_eq!(out[1].1, 46 + 46 + 45 + 46);
        assert_eq!(b.used, 0);
        assert_eq!(a.min_pending_start(), None);
    }

    #[test]
    fn truncation_at_max_line_bytes_keeps_utf8_and_tags() {
        let mut a = Assembler::new(10, T);
        let mut b = Budget::new(1 << 20);
        let out =
            feed(&mut a, &mut b, &[(Stream::Stdout, true, "aaaaaaaaé".as_bytes()), (Stream::Stdout, false, b"zzz")]);
        assert_eq!(out[0].2, "aaaaaaaaé".as_bytes());
        assert!(out[0].4.contains(Tags::TRUNCATED));
        let out = feed(&mut a, &mut b, &[(Stream::Stdout, false, "aaaaaaaaaé".as_bytes())]);
        assert_eq!(out[0].2, b"aaaaaaaaa");
        assert!(out[0].4.contains(Tags::TRUNCATED));
    }

    /// Scenario 8 (issue #9): the budget counts what pending messages hold (capacity), and the
    /// held bytes never exceed it, however the buffers grow.
    #[test]
    fn pending_bytes_never_exceed_the_budget() {
        let mut a = Assembler::new(1 << 20, T);
        let mut b = Budget::new(1000);
        let frag = [b'x'; 100];
        let mut emitted = 0;
        for _ in 0..40 {
            feed_budget(&mut a, &mut b, &frag, &mut emitted);
            assert!(b.used <= b.limit, "{} held with a budget of {}", b.used, b.limit);
            assert_eq!(b.used, a.held());
        }
        assert!(emitted > 0, "flushed for memory instead of growing past the budget");
    }

    fn feed_budget(a: &mut Assembler, b: &mut Budget, content: &[u8], emitted: &mut usize) {
        let frag = Fragment {
            timestamp: Cow::Borrowed(b"2026-11-27T00:17:09Z"),
            stream: Stream::Stdout,
            partial: true,
            content: Cow::Borrowed(content),
        };
        a.push(frag, 0, 1, Instant::now(), b, &mut |_| *emitted += 1);
    }

    #[test]
    fn timeout_eof_and_memory_flushes_are_tagged() {
        let mut a = Assembler::new(1 << 20, T);
        let mut b = Budget::new(1 << 20);
        assert!(feed(&mut a, &mut b, &[(Stream::Stdout, true, b"pending")]).is_empty());
        let mut out = Vec::new();
        a.flush_expired(Instant::now(), &mut b, &mut |m| out.push(m.flushed));
        assert!(out.is_empty(), "not yet expired");
        a.flush_expired(Instant::now() + T, &mut b, &mut |m| out.push(m.flushed));
        assert_eq!(out, vec![Some(FlushReason::Timeout)]);

        feed(&mut a, &mut b, &[(Stream::Stderr, true, b"x")]);
        let mut tags = Vec::new();
        a.flush_all(FlushReason::EndOfFile, &mut b, &mut |m| tags.push(m.tags));
        assert!(tags[0].contains(Tags::PARTIAL_FLUSHED));
        assert_eq!(b.used, 0);

        let mut small = Budget::new(64);
        let out = feed(&mut a, &mut small, &[(Stream::Stdout, true, &[b'a'; 40]), (Stream::Stdout, true, &[b'b'; 40])]);
        assert_eq!(out.len(), 1);
        assert!(out[0].4.contains(Tags::PARTIAL_FLUSHED));
        a.discard(&mut small);
        assert_eq!(small.used, 0);
    }

    proptest! {
        /// Any line split into any P/F fragments on interleaved streams reassembles to the original.
        #[test]
        fn split_lines_reassemble(lines in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200), 1usize..50), 1..20)) {
            let mut frags: Vec<(Stream, bool, Vec<u8>)> = Vec::new();
            let mut pending: [Vec<(Stream, bool, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
            for (err, content, size) in &lines {
                let stream = if *err { Stream::Stderr } else { Stream::Stdout };
                let mut chunks: Vec<Vec<u8>> = content.chunks(*size).map(<[u8]>::to_vec).collect();
                if chunks.is_empty() { chunks.push(Vec::new()); }
                let n = chunks.len();
                for (i, c) in chunks.into_iter().enumerate() {
                    pending[usize::from(*err)].push((stream, i + 1 < n, c));
                }
                // Interleave: drain the other stream's queue only sometimes.
                if content.len() % 3 == 0 { frags.append(&mut pending[0]); frags.append(&mut pending[1]); }
            }
            frags.append(&mut pending[0]);
            frags.append(&mut pending[1]);
            let mut a = Assembler::new(1 << 20, T);
            let mut b = Budget::new(1 << 30);
            let refs: Vec<(Stream, bool, &[u8])> = frags.iter().map(|(s, p, c)| (*s, *p, c.as_slice())).collect();
            let out = feed(&mut a, &mut b, &refs);
            for err in [false, true] {
                let stream = if err { Stream::Stderr } else { Stream::Stdout };
                let want: Vec<Vec<u8>> = lines.iter().filter(|l| l.0 == err).map(|l| l.1.clone()).collect();
                let got: Vec<Vec<u8>> = out.iter().filter(|o| o.3 == stream).map(|o| o.2.clone()).collect();
                prop_assert_eq!(got, want);
            }
            prop_assert_eq!(b.used, 0);
        }
    }
}
