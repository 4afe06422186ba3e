//! The per-file chain (line splitting, format detection, parsing, reassembly of partial lines,
//! lines longer than the read buffer) over any file content read in chunks of any size.
//!
//! Input: byte 0 = read-buffer size, byte 1 = `max_line_bytes`, byte 2 = the pending-bytes budget
//! and flush ticks, then the file content. Checked: no panic; every physical line is covered by a
//! record (no silent loss); records stay within the file and within `max_line_bytes`; the resume
//! point never goes back and never passes a record not yet produced; pending bytes stay within the
//! budget and return to 0 at the end of the file.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sluice_shipper::config::Format;
use sluice_shipper::lines::{Budgets, LineProcessor, Output};
use sluice_shipper::parse::ParseError;
use sluice_shipper::reassemble::{FlushReason, Message};

struct Check {
    max_line: usize,
    len: u64,
    records: Vec<(u64, u64)>,
    resume: u64,
}

impl Output for Check {
    fn message(&mut self, m: Message<'_>) {
        assert!(m.content.len() <= self.max_line, "{} > max_line {}", m.content.len(), self.max_line);
        assert!(m.start < m.end && m.end <= self.len, "record [{}, {}) in a file of {}", m.start, m.end, self.len);
        self.records.push((m.start, m.end));
    }
    fn line_done(&mut self, resume: u64) {
        assert!(resume >= self.resume, "resume point went back from {} to {resume}", self.resume);
        self.resume = resume;
    }
    fn parse_error(&mut self, _: ParseError) {}
}

fuzz_target!(|data: &[u8]| {
    let [b, m, p, input @ ..] = data else { return };
    let buf = 8 + usize::from(*b) * 4;
    let max_line = 1 + usize::from(*m) * 2;
    let limit = max_line + usize::from(*p & 0x7f) * 8;
    let ticks = *p & 0x80 != 0;
    let mut proc = LineProcessor::new(Format::Auto, max_line, Duration::from_secs(1), None);
    let mut budgets = Budgets::new(limit);
    let mut out = Check { max_line, len: input.len() as u64, records: Vec::new(), resume: 0 };
    let mut now = Instant::now();
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + buf).min(input.len());
        let used = proc.chunk(&input[pos..end], pos as u64, end - pos == buf, now, &mut budgets, &mut out);
        assert!(budgets.partial.used <= limit && budgets.multiline.used <= limit, "over budget");
        if used == 0 {
            break; // an incomplete last line: handled below as the end of the file
        }
        pos += used;
        if ticks {
            now += Duration::from_millis(700);
            proc.flush_expired(now, &mut budgets, &mut out);
        }
    }
    if pos < input.len() {
        proc.line(&input[pos..], pos as u64, input.len() as u64, now, &mut budgets, &mut out);
    }
    proc.flush_all(FlushReason::EndOfFile, &mut budgets, &mut out);
    assert_eq!(budgets.used(), 0, "pending bytes left after the end of the file");
    // Every physical line starts inside some record's range: nothing vanished.
    let mut starts = vec![0u64];
    starts.extend(
        input.iter().enumerate().filter(|(i, c)| **c == b'\n' && i + 1 < input.len()).map(|(i, _)| i as u64 + 1),
    );
    if input.is_empty() {
        return;
    }
    for s in starts {
        assert!(
            out.records.iter().any(|(a, b)| *a <= s && s < *b),
            "the line at {s} is in no record: {:?}",
            out.records
        );
    }
});
