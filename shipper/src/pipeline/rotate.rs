//! The end of a generation: completed (read to its end and rotated away), truncated
//! (copytruncate), closed on eviction, or given up (deleted past its grace), each counted.

use super::*;

impl<S: Sink> Core<S> {
    /// Finishes a generation at its end: forwards an unterminated last line, flushes pending partials.
    pub(super) fn complete(&mut self, src: &mut Source) {
        let mut r = src.reader.take().expect("reader");
        if let Some(key) = r.gen_key {
            self.finish_generation(&src.meta, &mut r, key, true);
            self.metrics.generations_completed.inc();
        }
        if r.handle.take().is_some() {
            self.open_files -= 1;
        }
    }

    pub(super) fn finish_generation(&mut self, meta: &FileMeta, r: &mut Reader, key: u64, read_tail: bool) {
        let (mut out, budgets, buf) = self.emit(meta, &mut r.skip, key, usize::MAX);
        if read_tail && let Some(h) = r.handle.as_mut() {
            // An unterminated last line (bounded by the buffer; the rest of a longer one is dropped).
            if let Ok(n) = h.read_at(buf, r.pos)
                && n > 0
            {
                let end = r.pos + n as u64;
                let line = &buf[..n];
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                r.lines.line(line, r.pos, end, Instant::now(), budgets, &mut out);
                r.pos = end;
            }
        }
        r.lines.flush_all(FlushReason::EndOfFile, budgets, &mut out);
        out.generation.tracker.resolve(r.pos);
        out.generation.read_done = true;
        self.dirty_checkpoint = true;
    }

    /// copytruncate: the old generation ends here; the same handle now holds a new one from 0.
    pub(super) fn truncated(&mut self, src: &mut Source) {
        self.metrics.copytruncate.inc();
        // The copy (`N.log.<ts>`) has the generation's identity: the unread rest is read from it, at
        // the same offset; the truncated file is then a new generation, read from 0 after it.
        if self.relocate(src) {
            let r = src.reader.as_mut().expect("reader");
            r.truncated = false;
            tracing::info!(path = %src.meta.path, copy = %r.path.display(), offset = r.pos,
                "file truncated in place (copytruncate); reading the rest from its copy");
            return;
        }
        let r = src.reader.as_mut().expect("reader");
        tracing::info!(path = %r.path.display(), offset = r.pos, "file truncated in place (copytruncate); reading from 0");
        let mut old = std::mem::replace(&mut r.lines, self.new_processor(&src.meta));
        let old_key = r.gen_key.take();
        let old_pos = r.pos;
        let old_skip = std::mem::take(&mut r.skip);
        r.pos = 0;
        r.truncated = false;
        if let Some(key) = old_key {
            let mut tmp = Reader {
                handle: None,
                path: r.path.clone(),
                kind: r.kind.clone(),
                dev: r.dev,
                ino: r.ino,
                gen_key: Some(key),
                pos: old_pos,
                lines: std::mem::replace(&mut old, self.new_processor(&src.meta)),
                skip: old_skip,
                life: Life::Live,
                truncated: false,
                idle: false,
                caught_up: false,
            };
            self.finish_generation(&src.meta, &mut tmp, key, false);
        }
    }

    pub(super) fn close(&mut self, src: &mut Source) {
        if let Some(mut r) = src.reader.take() {
            r.lines.discard(&mut self.budgets);
            if r.handle.take().is_some() {
                self.open_files -= 1;
            }
        }
    }

    /// Gives up a reader before its end (counted with `reason`, unread bytes counted too).
    pub(super) fn give_up(&mut self, src: &mut Source, reason: &'static str) {
        let Some(mut r) = src.reader.take() else { return };
        // Uncompressed bytes on both sides (a `.gz` by its trailer's size).
        let left = r.handle.as_ref().and_then(|h| h.content_size().ok()).map_or(0, |size| size.saturating_sub(r.pos));
        tracing::warn!(path = %r.path.display(), offset = r.pos, unread = left, reason, "giving up file");
        Metrics::inc(&self.metrics.files_given_up, reason);
        self.metrics.bytes_given_up.inc_by(left);
        if let Some(key) = r.gen_key {
            self.finish_generation(&src.meta, &mut r, key, false);
        } else {
            r.lines.discard(&mut self.budgets);
        }
        if r.handle.take().is_some() {
            self.open_files -= 1;
        }
    }
}
