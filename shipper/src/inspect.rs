//! `sluice-shipper inspect [--format auto|cri|docker] <file>…`: prints the records the shipper would
//! publish for these files — read to their end, pending partials flushed and tagged
//! `partial_flushed` — with no Kafka and no checkpoint. One `{"id":…,"doc":…}` line per record,
//! exactly as `output: stdout` prints them. Rotated (`N.log.<ts>`) and gzipped (`N.log.<ts>.gz`)
//! generations are accepted and get the ids of the live file they came from.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{Format, ShipperConfig};
use crate::discover::{self, GenKind};
use crate::lines::{Budgets, LineProcessor, Output};
use crate::multiline::{MultilineError, Rules};
use crate::parse::ParseError;
use crate::reassemble::{FlushReason, Message};
use crate::record::{FINGERPRINT_MAX, FileMeta, GenerationId, RecordBuilder};
use crate::sink::write_line;
use crate::tail::{Handle, final_fingerprint};

/// Why `inspect` failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Write(io::Error),
    /// The multiline rules are invalid.
    #[error(transparent)]
    Multiline(#[from] MultilineError),
}

/// Counts of one `inspect` run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InspectSummary {
    /// Records printed.
    pub records: u64,
    /// Lines that did not parse.
    pub parse_errors: u64,
}

struct Printer<'a, W: Write> {
    builder: &'a mut RecordBuilder,
    meta: &'a FileMeta,
    generation: GenerationId,
    out: &'a mut W,
    error: Option<io::Error>,
    summary: &'a mut InspectSummary,
}

impl<W: Write> Output for Printer<'_, W> {
    fn message(&mut self, m: Message<'_>) {
        let rec = self.builder.build(self.meta, self.generation, &m);
        self.summary.records += 1;
        if self.error.is_none()
            && let Err(e) = write_line(self.out, &rec)
        {
            self.error = Some(e);
        }
    }
    fn line_done(&mut self, _: u64) {}
    fn parse_error(&mut self, _: ParseError) {
        self.summary.parse_errors += 1;
    }
}

/// Prints the records of `files` to `out`. `format` overrides `parse.format` unless it is `Auto`.
pub fn inspect(
    files: &[PathBuf],
    format: Format,
    cfg: &ShipperConfig,
    out: &mut impl Write,
) -> Result<InspectSummary, InspectError> {
    let rules = Rules::compile(&cfg.multiline)?;
    let format = if format == Format::Auto { cfg.parse.format } else { format };
    let mut summary = InspectSummary::default();
    let mut builder = RecordBuilder::default();
    let mut buf = vec![0u8; cfg.tail.read_buffer_bytes.as_usize()];
    for path in files {
        inspect_file(path, format, cfg, &rules, &mut builder, &mut buf, out, &mut summary)?;
    }
    out.flush().map_err(InspectError::Write)?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn inspect_file(
    path: &Path,
    format: Format,
    cfg: &ShipperConfig,
    rules: &Rules,
    builder: &mut RecordBuilder,
    buf: &mut [u8],
    out: &mut impl Write,
    summary: &mut InspectSummary,
) -> Result<(), InspectError> {
    let read_err = |source| InspectError::Read { path: path.to_owned(), source };
    let abs = std::path::absolute(path).map_err(read_err)?;
    let name = abs.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let kind = match discover::classify(name) {
        Some((_, kind)) => kind,
        None if name.ends_with(".gz") => GenKind::Gz(String::new()),
        None => GenKind::Live,
    };
    let live = discover::live_path_of(&abs).unwrap_or_else(|| abs.clone());
    let meta = FileMeta::new(&live, &cfg.node_name);
    let mut handle = Handle::open(&abs, &kind).map_err(read_err)?;
    let head_len = read_full(&mut handle, &mut buf[..FINGERPRINT_MAX], 0).map_err(read_err)?;
    let Some(fp) = final_fingerprint(&buf[..head_len]) else { return Ok(()) };
    let generation = GenerationId::derive(&meta.source, fp);
    let rule = meta.pod.as_ref().and_then(|p| rules.find(&p.namespace, &p.container));
    let parse = &cfg.parse;
    let mut lines = LineProcessor::new(format, parse.max_line_bytes.as_usize(), parse.partial_flush_timeout, rule);
    let mut budgets = Budgets::new(cfg.limits.pending_bytes.as_usize());
    let mut printer = Printer { builder, meta: &meta, generation, out, error: None, summary };
    let mut pos = 0u64;
    let now = Instant::now();
    loop {
        let n = handle.read_at(buf, pos).map_err(read_err)?;
        if n == 0 {
            break;
        }
        let used = lines.chunk(&buf[..n], pos, n == buf.len(), now, &mut budgets, &mut printer);
        if used == 0 {
            // Unterminated last line.
            lines.line(&buf[..n], pos, pos + n as u64, now, &mut budgets, &mut printer);
            break;
        }
        pos += used as u64;
    }
    lines.flush_all(FlushReason::EndOfFile, &mut budgets, &mut printer);
    match printer.error {
        Some(e) => Err(InspectError::Write(e)),
        None => Ok(()),
    }
}

fn read_full(h: &mut Handle, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        let n = h.read_at(&mut buf[len..], off + len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}
