//! The per-file chain from bytes to messages: line splitting (memchr), format detection, parsing,
//! partial-line reassembly, multiline joining and physical lines longer than the read buffer.
//!
//! Used by the tailer ([`crate::pipeline`]) and by `inspect`, so both produce the same records.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memchr;
use sluice_common::schema::Stream;

use crate::config::Format;
use crate::multiline::{Joiner, Rule};
use crate::parse::{Fragment, ParseError, cri, detect, parse_line, timestamp};
use crate::reassemble::{Assembler, Budget, Cuts, FlushReason, Message, Stage, Tags, utf8_cut};
use crate::record::parse_error_message;

/// Receives what a [`LineProcessor`] produces.
pub trait Output {
    /// A complete message (becomes one record).
    fn message(&mut self, msg: Message<'_>);
    /// A physical line was handled; re-reading from `resume` re-creates every message not yet
    /// produced (the resume point is nondecreasing).
    fn line_done(&mut self, resume: u64);
    /// A line did not parse (already forwarded raw as a message tagged `parse_error`).
    fn parse_error(&mut self, err: ParseError);
    /// Stop after the current line (back-pressure).
    fn full(&self) -> bool {
        false
    }
    /// The message ending at `end` was cut by time or memory, not by the bytes; called before that
    /// message is passed on. A re-read of the same bytes must cut there again ([`Output::recorded`]).
    fn cut(&mut self, _end: u64, _cuts: Cuts) {}
    /// Cuts at `end` recorded by an earlier read of the same bytes: forced again.
    fn recorded(&self, _end: u64) -> Cuts {
        Cuts::default()
    }
}

/// Pending-bytes budgets shared by all files (`limits.pending_bytes` each).
#[derive(Debug, Clone)]
pub struct Budgets {
    /// Partial lines being reassembled.
    pub partial: Budget,
    /// Multiline records being joined.
    pub multiline: Budget,
}

impl Budgets {
    /// Budgets of `limit` bytes each.
    pub fn new(limit: usize) -> Self {
        Budgets { partial: Budget::new(limit), multiline: Budget::new(limit) }
    }
    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.partial.used + self.multiline.used
    }
}

#[derive(Debug)]
struct LongLine {
    start: u64,
    /// CRI header of the line (timestamp, stream, tag was `P`); `None`: the line is skipped after a
    /// raw, truncated `parse_error` record.
    cri: Option<(Vec<u8>, Stream, bool)>,
}

/// Per-file line processing state.
#[derive(Debug)]
pub struct LineProcessor {
    format: Format,
    max_line: usize,
    assembler: Assembler,
    joiner: Option<Joiner>,
    long: Option<LongLine>,
    /// The timestamp of the last line read (in file order) whose timestamp is readable: the
    /// timestamp of the following lines that have none (see [`LineProcessor::seed_timestamp`]).
    last_ts: Vec<u8>,
}

struct Chain<'a, O: Output> {
    joiner: &'a mut Option<Joiner>,
    budget: &'a mut Budget,
    now: Instant,
    out: &'a mut O,
    /// The last readable timestamp before the line being processed (empty: none in this generation).
    fallback: &'a [u8],
}

impl<O: Output> Chain<'_, O> {
    fn send(&mut self, mut m: Message<'_>) {
        // Routing (the index date) must follow from the bytes on disk: a message without a readable
        // timestamp takes the last readable one before it in the file; with none, an empty timestamp
        // tells the pipeline to use the generation's pinned date. Tagged and counted either way.
        if !timestamp::is_valid(&m.timestamp) {
            if !m.tags.contains(Tags::PARSE_ERROR) {
                m.tags.insert(Tags::PARSE_ERROR);
                self.out.parse_error(ParseError::Timestamp);
            }
            m.timestamp = Cow::Owned(self.fallback.to_vec());
        }
        if let Some(cut) = m.flushed.and_then(|r| Cuts::of(Stage::Partial, r)) {
            self.out.cut(m.end, cut);
        }
        match self.joiner {
            Some(j) => j.push(m, self.now, self.budget, &mut |m, r| joined(self.out, m, r)),
            None => self.out.message(m),
        }
    }
}

/// Passes on a record of the multiline joiner, noting its cut first when memory or time made it.
fn joined<O: Output>(out: &mut O, m: Message<'_>, cut: Option<FlushReason>) {
    if let Some(cut) = cut.and_then(|r| Cuts::of(Stage::Multiline, r)) {
        out.cut(m.end, cut);
    }
    out.message(m);
}

impl LineProcessor {
    /// A processor for one file; `format` `Auto` is resolved on the first line.
    pub fn new(format: Format, max_line: usize, flush_timeout: Duration, rule: Option<Arc<Rule>>) -> Self {
        LineProcessor {
            format,
            max_line,
            assembler: Assembler::new(max_line, flush_timeout),
            joiner: rule.map(Joiner::new),
            long: None,
            last_ts: Vec::new(),
        }
    }

    /// The format in use (`Auto` until the first line).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The resume point given that everything before `pos` was consumed.
    pub fn resume_point(&self, pos: u64) -> u64 {
        let mut r = pos;
        for s in [self.assembler.min_pending_start(), self.joiner.as_ref().and_then(Joiner::min_pending_start)]
            .into_iter()
            .flatten()
        {
            r = r.min(s);
        }
        if let Some(l) = &self.long {
            r = r.min(l.start);
        }
        r
    }

    /// Processes the complete lines of `chunk`, read at offset `pos`. When `chunk` fills the whole read
    /// buffer without a newline, it is handled as a piece of an overlong line. Returns the bytes
    /// consumed; an incomplete last line is left for the next read.
    pub fn chunk<O: Output>(
        &mut self,
        chunk: &[u8],
        pos: u64,
        buffer_full: bool,
        now: Instant,
        budgets: &mut Budgets,
        out: &mut O,
    ) -> usize {
        let mut i = 0;
        if self.long.is_some() {
            match memchr(b'\n', chunk) {
                Some(nl) => {
                    self.long_piece(&chunk[..nl], pos, pos + nl as u64 + 1, true, now, budgets, out);
                    i = nl + 1;
                }
                None => {
                    self.long_piece(chunk, pos, pos + chunk.len() as u64, false, now, budgets, out);
                    return chunk.len();
                }
            }
            if out.full() {
                return i;
            }
        }
        while i < chunk.len() {
            match memchr(b'\n', &chunk[i..]) {
                Some(nl) => {
                    let start = pos + i as u64;
                    let end = start + nl as u64 + 1;
                    self.line(&chunk[i..i + nl], start, end, now, budgets, out);
                    i += nl + 1;
                    if out.full() {
                        break;
                    }
                }
                None => {
                    if i == 0 && buffer_full {
                        self.long_piece(chunk, pos, pos + chunk.len() as u64, false, now, budgets, out);
                        i = chunk.len();
                    }
                    break;
                }
            }
        }
        i
    }

    /// Processes one complete physical line (without its `\n`) read at `[start, end)`.
    pub fn line<O: Output>(
        &mut self,
        line: &[u8],
        start: u64,
        end: u64,
        now: Instant,
        budgets: &mut Budgets,
        out: &mut O,
    ) {
        if self.format == Format::Auto {
            self.format = detect(line);
        }
        let parsed = parse_line(self.format, line);
        let Budgets { partial, multiline } = budgets;
        let mut chain = Chain { joiner: &mut self.joiner, budget: multiline, now, out, fallback: &self.last_ts };
        match parsed {
            Ok(frag) if readable(self.format, &frag) => {
                // Borrowed from the line (an escaped docker `time` is the rare owned case).
                let ts: Cow<'_, [u8]> = match &frag.timestamp {
                    Cow::Borrowed(b) => Cow::Borrowed(*b),
                    Cow::Owned(v) => Cow::Owned(v.clone()),
                };
                self.assembler.push(frag, start, end, now, partial, &mut |m| chain.send(m));
                self.last_ts.clear();
                self.last_ts.extend_from_slice(&ts);
            }
            Ok(frag) => self.assembler.push(frag, start, end, now, partial, &mut |m| chain.send(m)),
            Err(err) => {
                chain.out.parse_error(err);
                let mut m = parse_error_message(line, start, end);
                let cut = utf8_cut(&m.content, self.max_line);
                if cut < m.content.len() {
                    m.content = Cow::Borrowed(&line[..cut]);
                    m.tags.insert(Tags::TRUNCATED);
                }
                chain.send(m);
            }
        }
        self.force(end, now, budgets, out);
        let resume = self.resume_point(end);
        out.line_done(resume);
    }

    #[allow(clippy::too_many_arguments)]
    fn long_piece<O: Output>(
        &mut self,
        piece: &[u8],
        start: u64,
        end: u64,
        last: bool,
        now: Instant,
        budgets: &mut Budgets,
        out: &mut O,
    ) {
        if self.format == Format::Auto {
            self.format = detect(piece);
        }
        let Budgets { partial, multiline } = budgets;
        let mut chain = Chain { joiner: &mut self.joiner, budget: multiline, now, out, fallback: &self.last_ts };
        match &self.long {
            None => {
                // First piece: parse the CRI header, or forward the raw beginning as a parse error.
                let header = if self.format == Format::Cri { cri::parse(piece).ok() } else { None };
                match header {
                    Some(frag) => {
                        let ts = frag.timestamp.to_vec();
                        let (stream, tag_partial) = (frag.stream, frag.partial);
                        let frag = Fragment { partial: true, ..frag };
                        self.assembler.push(frag, start, end, now, partial, &mut |m| chain.send(m));
                        self.long = Some(LongLine { start, cri: Some((ts, stream, tag_partial)) });
                    }
                    None => {
                        chain.out.parse_error(if self.format == Format::Cri {
                            ParseError::MissingField
                        } else {
                            ParseError::Json
                        });
                        let cut = utf8_cut(piece, self.max_line);
                        let mut m = parse_error_message(&piece[..cut], start, end);
                        m.tags.insert(Tags::TRUNCATED);
                        chain.send(m);
                        self.long = Some(LongLine { start, cri: None });
                    }
                }
            }
            Some(LongLine { cri: Some((ts, stream, tag_partial)), .. }) => {
                let frag = Fragment {
                    timestamp: Cow::Borrowed(ts.as_slice()),
                    stream: *stream,
                    partial: !last || *tag_partial,
                    content: Cow::Borrowed(piece),
                };
                self.assembler.push(frag, start, end, now, partial, &mut |m| chain.send(m));
            }
            Some(LongLine { cri: None, .. }) => {}
        }
        self.force(end, now, budgets, out);
        if last {
            self.long = None;
        }
        let resume = self.resume_point(end);
        out.line_done(resume);
    }

    /// Forces the cuts recorded at `end` by an earlier read of the same bytes (see [`Cuts`]): the
    /// pending partial, then the pending multiline record, ending there is sent as it was then.
    fn force<O: Output>(&mut self, end: u64, now: Instant, budgets: &mut Budgets, out: &mut O) {
        let cuts = out.recorded(end);
        if cuts.is_empty() {
            return;
        }
        let Budgets { partial, multiline } = budgets;
        let mut chain = Chain { joiner: &mut self.joiner, budget: multiline, now, out, fallback: &self.last_ts };
        if let Some(reason) = cuts.reason(Stage::Partial) {
            self.assembler.flush_ending_at(end, reason, partial, &mut |m| chain.send(m));
        }
        if let (Some(reason), Some(j)) = (cuts.reason(Stage::Multiline), chain.joiner.as_mut()) {
            j.flush_ending_at(end, reason, &mut *chain.budget, &mut |m, r| joined(chain.out, m, r));
        }
    }

    /// Sends partial and multiline records idle for longer than their timeouts.
    pub fn flush_expired<O: Output>(&mut self, now: Instant, budgets: &mut Budgets, out: &mut O) {
        let Budgets { partial, multiline } = budgets;
        let mut chain = Chain { joiner: &mut self.joiner, budget: multiline, now, out, fallback: &self.last_ts };
        self.assembler.flush_expired(now, partial, &mut |m| chain.send(m));
        if let Some(j) = chain.joiner.as_mut() {
            j.flush_expired(now, &mut *chain.budget, &mut |m, r| joined(chain.out, m, r));
        }
    }

    /// Sends everything pending (end of a file), tagging partial lines `partial_flushed`.
    pub fn flush_all<O: Output>(&mut self, reason: FlushReason, budgets: &mut Budgets, out: &mut O) {
        let Budgets { partial, multiline } = budgets;
        let mut chain =
            Chain { joiner: &mut self.joiner, budget: multiline, now: Instant::now(), out, fallback: &self.last_ts };
        self.assembler.flush_all(reason, partial, &mut |m| chain.send(m));
        if let Some(j) = chain.joiner.as_mut() {
            j.flush_all(&mut *chain.budget, &mut |m, r| joined(chain.out, m, r));
        }
        self.long = None;
    }

    /// Drops everything pending, returning its budget (it is re-read from the checkpoint).
    pub fn discard(&mut self, budgets: &mut Budgets) {
        self.assembler.discard(&mut budgets.partial);
        if let Some(j) = &mut self.joiner {
            j.discard(&mut budgets.multiline);
        }
        self.long = None;
    }
}

/// Whether a parsed line's timestamp is readable (CRI timestamps are validated by the parser).
fn readable(format: Format, frag: &Fragment<'_>) -> bool {
    format == Format::Cri || timestamp::is_valid(&frag.timestamp)
}

/// The readable timestamp of one physical line, if any.
fn line_timestamp(format: Format, line: &[u8]) -> Option<Vec<u8>> {
    let format = if format == Format::Auto { detect(line) } else { format };
    let frag = parse_line(format, line).ok()?;
    readable(format, &frag).then(|| frag.timestamp.into_owned())
}

fn read_full(
    read_at: &mut dyn FnMut(&mut [u8], u64) -> io::Result<usize>,
    buf: &mut [u8],
    off: u64,
) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

impl LineProcessor {
    /// Before reading resumes at `pos` (a line start) in the middle of a generation: finds the last
    /// line before `pos` whose timestamp is readable, exactly as reading from 0 would have, so records
    /// without a timestamp get the same date (index) after a restart. Lines longer than `buf` are
    /// skipped, as reading skips their timestamps. `forward`: read from 0 (gzip streams), otherwise
    /// backwards from `pos` until one is found.
    pub fn seed_timestamp(
        &mut self,
        read_at: &mut dyn FnMut(&mut [u8], u64) -> io::Result<usize>,
        buf: &mut [u8],
        pos: u64,
        forward: bool,
    ) -> io::Result<()> {
        self.last_ts.clear();
        let cap = buf.len() as u64;
        if forward {
            let (mut off, mut skipping) = (0u64, false);
            while off < pos {
                let want = cap.min(pos - off) as usize;
                let n = read_full(read_at, &mut buf[..want], off)?;
                let chunk = &buf[..n];
                let mut i = 0;
                if skipping {
                    match memchr(b'\n', chunk) {
                        Some(nl) => {
                            i = nl + 1;
                            skipping = false;
                        }
                        None if n > 0 => {
                            off += n as u64;
                            continue;
                        }
                        None => break,
                    }
                }
                while let Some(nl) = memchr(b'\n', &chunk[i..]) {
                    if let Some(ts) = line_timestamp(self.format, &chunk[i..i + nl]) {
                        self.last_ts = ts;
                    }
                    i += nl + 1;
                }
                if i == 0 && n as u64 == cap {
                    (i, skipping) = (n, true);
                }
                if i == 0 {
                    break;
                }
                off += i as u64;
            }
            return Ok(());
        }
        let mut end = pos;
        let mut skipping = false;
        while end > 0 {
            let start = end.saturating_sub(cap);
            let len = (end - start) as usize;
            if read_full(read_at, &mut buf[..len], start)? < len {
                return Ok(());
            }
            if skipping {
                // Inside a line longer than the buffer: find where it starts.
                match memchr::memrchr(b'\n', &buf[..len]) {
                    Some(nl) => {
                        end = start + nl as u64 + 1;
                        skipping = false;
                    }
                    None => end = start,
                }
                continue;
            }
            // `buf[len - 1]` is the `\n` ending the line before `end`.
            let mut seg_end = len - 1;
            while let Some(nl) = memchr::memrchr(b'\n', &buf[..seg_end]) {
                if let Some(ts) = line_timestamp(self.format, &buf[nl + 1..seg_end]) {
                    self.last_ts = ts;
                    return Ok(());
                }
                seg_end = nl;
            }
            // The first segment is a whole line only when it starts the file or follows a `\n`.
            let whole = start == 0 || {
                let mut b = [0u8; 1];
                read_full(read_at, &mut b, start - 1)? == 1 && b[0] == b'\n'
            };
            if whole {
                if let Some(ts) = line_timestamp(self.format, &buf[..seg_end]) {
                    self.last_ts = ts;
                    return Ok(());
                }
                end = start;
            } else if seg_end < len - 1 {
                end = start + seg_end as u64 + 1;
            } else {
                // No line boundary in a whole buffer: a line longer than the buffer, skipped.
                end = start;
                skipping = true;
            }
        }
        Ok(())
    }
}

/// Convenience for tests and `inspect`: parses a whole input into messages, flushing at the end.
pub fn parse_all(input: &[u8], format: Format, max_line: usize) -> Vec<(u64, String, Stream, Tags)> {
    struct Collect(Vec<(u64, String, Stream, Tags)>);
    impl Output for Collect {
        fn message(&mut self, m: Message<'_>) {
            self.0.push((m.start, String::from_utf8_lossy(&m.content).into_owned(), m.stream, m.tags));
        }
        fn line_done(&mut self, _: u64) {}
        fn parse_error(&mut self, _: ParseError) {}
    }
    let mut p = LineProcessor::new(format, max_line, Duration::from_secs(3600), None);
    let mut budgets = Budgets::new(usize::MAX / 4);
    let mut out = Collect(Vec::new());
    let now = Instant::now();
    let used = p.chunk(input, 0, false, now, &mut budgets, &mut out);
    if used < input.len() {
        let rest = &input[used..];
        p.line(rest, used as u64, input.len() as u64, now, &mut budgets, &mut out);
    }
    p.flush_all(FlushReason::EndOfFile, &mut budgets, &mut out);
    out.0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MB: usize = 1 << 20;

    /// (offset, timestamp, content) of every message of `input` read from `from` (as after a restart,
    /// the processor first seeded from the bytes before `from`).
    fn parse_all_with_ts(input: &[u8], from: usize, format: Format) -> Vec<(u64, String, String)> {
        struct C(Vec<(u64, String, String)>);
        impl Output for C {
            fn message(&mut self, m: Message<'_>) {
                self.0.push((
                    m.start,
                    String::from_utf8_lossy(&m.timestamp).into_owned(),
                    String::from_utf8_lossy(&m.content).into_owned(),
                ));
            }
            fn line_done(&mut self, _: u64) {}
            fn parse_error(&mut self, _: ParseError) {}
        }
        let mut p = LineProcessor::new(format, MB, Duration::from_secs(5), None);
        let mut buf = vec![0u8; 64];
        p.seed_timestamp(
            &mut |b: &mut [u8], off: u64| {
                let off = off as usize;
                let n = b.len().min(input.len() - off);
                b[..n].copy_from_slice(&input[off..off + n]);
                Ok(n)
            },
            &mut buf,
            from as u64,
            false,
        )
        .unwrap();
        let mut budgets = Budgets::new(MB);
        let mut out = C(Vec::new());
        p.chunk(&input[from..], from as u64, false, Instant::now(), &mut budgets, &mut out);
        p.flush_all(FlushReason::EndOfFile, &mut budgets, &mut out);
        out.0
    }

    fn cri(stream: &str, tag: &str, content: &[u8]) -> Vec<u8> {
        let mut l = format!("2026-11-27T00:17:09.669794202+00:00 {stream} {tag} ").into_bytes();
        l.extend_from_slice(content);
        l.push(b'\n');
        l
    }

    #[test]
    fn empty_content_and_crlf() {
        let mut input = cri("stdout", "F", b"");
        input.extend(cri("stdout", "F", b"windows\r"));
        let out = parse_all(&input, Format::Auto, MB);
        assert_eq!(out.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), vec!["", "windows\r"]);
        // A file with CRLF line endings in docker format.
        let docker = b"{\"log\":\"a\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-27T00:17:09.5+00:00\"}\r\n";
        let out = parse_all(docker, Format::Auto, MB);
        assert_eq!(out[0].1, "a");
    }

    /// Scenario 10 (issue #9): CRI content is everything before the `\n`, a trailing `\r` included;
    /// a docker line whose `time` is empty is tagged `parse_error`.
    #[test]
    fn cri_keeps_trailing_cr_and_docker_empty_time_is_a_parse_error() {
        let mut input = cri("stdout", "F", b"windows\r");
        let mut p = cri("stdout", "P", b"part\r");
        p.extend(cri("stdout", "F", b"end\r"));
        input.extend(p);
        let out = parse_all(&input, Format::Cri, MB);
        assert_eq!(out.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), vec!["windows\r", "part\rend\r"]);
        let docker = b"{\"log\":\"a\\n\",\"stream\":\"stdout\",\"time\":\"\"}\n";
        let out = parse_all(docker, Format::Auto, MB);
        assert_eq!(out[0].1, "a");
        assert!(out[0].3.contains(Tags::PARSE_ERROR), "{:?}", out[0].3);
    }

    /// Scenario 9 (issue #9): a line without a readable timestamp carries the last readable one before
    /// it in the file, and reading resumed in the middle of the file finds the same one.
    #[test]
    fn unreadable_timestamps_take_the_last_readable_one_before_them() {
        let mut input = cri("stdout", "F", b"good");
        input.extend(b"garbage\n");
        input.extend(b"{\"log\":\"x\\n\",\"stream\":\"stdout\",\"time\":\"\"}\n");
        let whole = parse_all_with_ts(&input, 0, Format::Cri);
        assert_eq!(whole.len(), 3);
        for m in &whole {
            assert_eq!(m.1, "2026-11-27T00:17:09.669794202+00:00", "{m:?}");
        }
        // Resumed at the garbage line (restart from a checkpoint): the same timestamp.
        let at = cri("stdout", "F", b"good").len();
        let resumed = parse_all_with_ts(&input, at, Format::Cri);
        assert_eq!(resumed, whole[1..].to_vec());
    }

    #[test]
    fn exactly_16_kib_line_in_one_or_two_fragments() {
        let content = vec![b'x'; 16 * 1024];
        let one = parse_all(&cri("stdout", "F", &content), Format::Cri, MB);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1.len(), 16 * 1024);
        let mut two = cri("stdout", "P", &content);
        two.extend(cri("stdout", "F", b""));
        let out = parse_all(&two, Format::Cri, MB);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), 16 * 1024);
        assert_eq!(out[0].3, Tags::default());
    }

    #[test]
    fn ten_megabyte_lines_are_truncated_not_dropped() {
        // As containerd writes it: 16 KiB P fragments.
        let mut input = Vec::new();
        let chunk = vec![b'y'; 16 * 1024];
        for _ in 0..640 {
            input.extend(cri("stderr", "P", &chunk));
        }
        input.extend(cri("stderr", "F", b"end"));
        input.extend(cri("stdout", "F", b"next"));
        let out = parse_all(&input, Format::Cri, MB);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.len(), MB);
        assert!(out[0].3.contains(Tags::TRUNCATED));
        assert_eq!(out[1].1, "next");

        // One physical 10 MB line, longer than the read buffer.
        let mut input = cri("stdout", "F", &vec![b'z'; 10 * MB]);
        input.extend(cri("stdout", "F", b"after"));
        let mut p = LineProcessor::new(Format::Auto, MB, Duration::from_secs(5), None);
        let mut budgets = Budgets::new(8 * MB);
        struct C(Vec<(u64, usize, Tags)>, u64);
        impl Output for C {
            fn message(&mut self, m: Message<'_>) {
                self.0.push((m.start, m.content.len(), m.tags));
            }
            fn line_done(&mut self, r: u64) {
                assert!(r >= self.1, "resume point went back");
                self.1 = r;
            }
            fn parse_error(&mut self, _: ParseError) {}
        }
        let mut out = C(Vec::new(), 0);
        let mut pos = 0usize;
        let buf = 256 * 1024;
        while pos < input.len() {
            let end = (pos + buf).min(input.len());
            let used = p.chunk(&input[pos..end], pos as u64, end - pos == buf, Instant::now(), &mut budgets, &mut out);
            assert!(used > 0);
            pos += used;
        }
        assert_eq!(out.0.len(), 2);
        assert_eq!(out.0[0].1, MB);
        assert!(out.0[0].2.contains(Tags::TRUNCATED));
        assert_eq!(out.0[1].0, (input.len() - cri("stdout", "F", b"after").len()) as u64);
        assert_eq!(budgets.used(), 0);
    }

    #[test]
    fn binary_garbage_and_invalid_utf8_are_forwarded() {
        let mut input = b"\x00\x01\xff\xfe garbage\n".to_vec();
        input.extend(cri("stdout", "F", b"bad \xc3\x28 utf8"));
        let out = parse_all(&input, Format::Cri, MB);
        assert_eq!(out.len(), 2);
        assert!(out[0].3.contains(Tags::PARSE_ERROR));
        assert_eq!(out[1].1, "bad \u{fffd}( utf8");
    }

    #[test]
    fn docker_partials_are_joined() {
        let input = b"{\"log\":\"part \",\"stream\":\"stdout\",\"time\":\"2026-11-27T00:17:09Z\"}\n\
{\"log\":\"err\\n\",\"stream\":\"stderr\",\"time\":\"2026-11-27T00:17:09Z\"}\n\
{\"log\":\"end\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-27T00:17:10Z\"}\n";
        let out = parse_all(input, Format::Auto, MB);
        assert_eq!(out.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(), vec!["err", "part end"]);
        assert_eq!(out[1].0, 0);
    }

    proptest! {
        /// Arbitrary bytes never panic, every non-empty line yields or contributes to a record, and
        /// offsets stay inside the input.
        #[test]
        fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let out = parse_all(&input, Format::Auto, 1024);
            for o in &out {
                prop_assert!(o.0 <= input.len() as u64);
            }
            let lines = input.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count();
            prop_assert!(lines == 0 || !out.is_empty());
        }

        /// CRI lines with arbitrary content survive chunked reading with any buffer size.
        #[test]
        fn chunked_reading_matches_whole(contents in proptest::collection::vec("[ -~]{0,300}", 1..30), buf in 64usize..512) {
            let mut input = Vec::new();
            for c in &contents { input.extend(cri("stdout", "F", c.as_bytes())); }
            let whole = parse_all(&input, Format::Cri, 1 << 16);
            let mut p = LineProcessor::new(Format::Cri, 1 << 16, Duration::from_secs(5), None);
            let mut budgets = Budgets::new(1 << 20);
            struct C(Vec<(u64, String, Stream, Tags)>);
            impl Output for C {
                fn message(&mut self, m: Message<'_>) { self.0.push((m.start, String::from_utf8_lossy(&m.content).into_owned(), m.stream, m.tags)); }
                fn line_done(&mut self, _: u64) {}
                fn parse_error(&mut self, _: ParseError) {}
            }
            let mut out = C(Vec::new());
            let mut pos = 0;
            while pos < input.len() {
                let end = (pos + buf).min(input.len());
                pos += p.chunk(&input[pos..end], pos as u64, end - pos == buf, Instant::now(), &mut budgets, &mut out);
            }
            p.flush_all(FlushReason::EndOfFile, &mut budgets, &mut out);
            // Lines longer than the buffer go through the long-line path; content must still match.
            let got: Vec<&str> = out.0.iter().map(|o| o.1.as_str()).collect();
            let want: Vec<&str> = whole.iter().map(|o| o.1.as_str()).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Collects messages and cuts; forces the cuts it was given (an earlier read's).
    #[derive(Default)]
    struct Cutting {
        msgs: Vec<(u64, u64, String)>,
        cuts: std::collections::BTreeMap<u64, Cuts>,
        given: std::collections::BTreeMap<u64, Cuts>,
    }

    impl Output for Cutting {
        fn message(&mut self, m: Message<'_>) {
            self.msgs.push((m.start, m.end, String::from_utf8_lossy(&m.content).into_owned()));
        }
        fn line_done(&mut self, _: u64) {}
        fn parse_error(&mut self, _: ParseError) {}
        fn cut(&mut self, end: u64, cuts: Cuts) {
            self.cuts.entry(end).or_default().insert(cuts);
        }
        fn recorded(&self, end: u64) -> Cuts {
            self.given.get(&end).copied().unwrap_or_default()
        }
    }

    fn rule_continuation() -> Arc<Rule> {
        let r = crate::config::MultilineRule {
            continuation_pattern: Some(r"^\s".into()),
            max_lines: 100,
            max_bytes: crate::config::ByteSize::kib(64),
            timeout: Duration::from_secs(1),
            ..Default::default()
        };
        crate::multiline::Rules::compile(&[r]).unwrap().find("ns", "c").unwrap()
    }

    /// Scenario 2 (issue #9): a partial cut by its timeout, a multiline record cut by its timeout and
    /// partials cut by the memory budget are reported as cuts before they are passed on; a re-read of
    /// the same bytes, with more written after them, given those cuts, produces the same messages
    /// (same starts, ends and content) instead of joining them differently.
    #[test]
    fn cuts_by_time_or_memory_are_reported_and_forced_on_a_re_read() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let re_read = |input: &[u8], rule: Option<Arc<Rule>>, given: &std::collections::BTreeMap<u64, Cuts>| {
            let mut p = LineProcessor::new(Format::Cri, MB, Duration::from_secs(1), rule);
            let mut budgets = Budgets::new(MB);
            let mut out = Cutting { given: given.clone(), ..Default::default() };
            p.chunk(input, 0, false, t0, &mut budgets, &mut out);
            p.flush_all(FlushReason::EndOfFile, &mut budgets, &mut out);
            out.msgs
        };

        // Partial flushed by its timeout.
        let first = cri("stdout", "P", b"abc");
        let mut p = LineProcessor::new(Format::Cri, MB, Duration::from_secs(1), None);
        let mut budgets = Budgets::new(MB);
        let mut out = Cutting::default();
        p.chunk(&first, 0, false, t0, &mut budgets, &mut out);
        p.flush_expired(later, &mut budgets, &mut out);
        let end = first.len() as u64;
        assert_eq!(out.msgs, vec![(0, end, "abc".to_owned())]);
        assert_eq!(out.cuts.get(&end).and_then(|c| c.reason(Stage::Partial)), Some(FlushReason::Timeout));
        let mut all = first.clone();
        all.extend(cri("stdout", "F", b"def"));
        let total = all.len() as u64;
        assert_eq!(re_read(&all, None, &Default::default()), vec![(0, total, "abcdef".to_owned())], "unforced");
        assert_eq!(re_read(&all, None, &out.cuts), vec![(0, end, "abc".to_owned()), (end, total, "def".to_owned())]);

        // Multiline record flushed by its timeout.
        let mut first = cri("stdout", "F", b"Exception");
        first.extend(cri("stdout", "F", b"  at a"));
        let mut p = LineProcessor::new(Format::Cri, MB, Duration::from_secs(1), Some(rule_continuation()));
        let mut out = Cutting::default();
        p.chunk(&first, 0, false, t0, &mut budgets, &mut out);
        p.flush_expired(later, &mut budgets, &mut out);
        let end = first.len() as u64;
        assert_eq!(out.msgs, vec![(0, end, "Exception\n  at a".to_owned())]);
        assert_eq!(out.cuts.get(&end).and_then(|c| c.reason(Stage::Multiline)), Some(FlushReason::Timeout));
        let mut all = first.clone();
        all.extend(cri("stdout", "F", b"  at b"));
        let total = all.len() as u64;
        let joined = re_read(&all, Some(rule_continuation()), &Default::default());
        assert_eq!(joined, vec![(0, total, "Exception\n  at a\n  at b".to_owned())], "unforced");
        assert_eq!(
            re_read(&all, Some(rule_continuation()), &out.cuts),
            vec![(0, end, "Exception\n  at a".to_owned()), (end, total, "  at b".to_owned())]
        );

        // Partials cut by the memory budget (another file held most of it).
        let mut all = cri("stdout", "P", &[b'x'; 300]);
        let one = all.len() as u64;
        all.extend(cri("stdout", "P", &[b'y'; 300]));
        let two = all.len() as u64;
        all.extend(cri("stdout", "F", b"z"));
        let total = all.len() as u64;
        let mut p = LineProcessor::new(Format::Cri, 1024, Duration::from_secs(1), None);
        let mut budgets = Budgets::new(1024);
        budgets.partial.used = 700;
        let mut out = Cutting::default();
        p.chunk(&all, 0, false, t0, &mut budgets, &mut out);
        let (x, y) = ("x".repeat(300), "y".repeat(300));
        assert_eq!(out.msgs, vec![(0, one, x.clone()), (one, two, y.clone()), (two, total, "z".to_owned())]);
        assert_eq!(out.cuts.get(&one).and_then(|c| c.reason(Stage::Partial)), Some(FlushReason::Memory));
        assert_eq!(re_read(&all, None, &Default::default()), vec![(0, total, format!("{x}{y}z"))], "unforced");
        assert_eq!(re_read(&all, None, &out.cuts), out.msgs);
    }
}
