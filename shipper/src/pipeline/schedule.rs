//! The read loop's turn: timeouts (partial / multiline flush, deleted-file grace) every tick,
//! a round-robin round over the sources, and eviction of idle readers under `tail.max_open_files`.

use super::*;

impl<S: Sink> Pipeline<S> {
    pub(super) fn tick(&mut self, now: Instant) {
        let grace = self.core.cfg.tail.deleted_file_grace;
        // Reading blocked by back-pressure is not the reader's delay: the grace clock stops.
        let blocked = self.core.inflight_bytes >= self.core.inflight_limit;
        let paused = self.tick_at.filter(|_| blocked).map(|t| now.saturating_duration_since(t));
        self.tick_at = Some(now);
        for src in self.sources.values_mut() {
            let Some(r) = src.reader.as_mut() else { continue };
            if r.caught_up {
                self.core.flush_expired(&src.meta, r, now);
            }
            if let Some(d) = paused {
                r.life.pause(d);
            }
            if r.life.unlinked().is_some_and(|t| now.duration_since(t) >= grace) && !self.core.relocate(src) {
                self.core.give_up(src, "deleted_grace");
            }
        }
    }

    /// Polls sources once; returns (progress, blocked).
    pub(super) fn poll_round(&mut self, everything: bool) -> (bool, bool) {
        let mut progress = false;
        let mut need_handle = false;
        let keys: Vec<PathBuf> =
            self.sources.iter().filter(|(_, s)| everything || s.active).map(|(k, _)| k.clone()).collect();
        for key in keys {
            if self.core.inflight_bytes >= self.core.inflight_limit {
                return (progress, true);
            }
            let Some(src) = self.sources.get_mut(&key) else { continue };
            match self.core.poll_source(src) {
                Poll::Progress => {
                    progress = true;
                    src.active = true;
                }
                Poll::Idle => src.active = false,
                Poll::Blocked => {
                    src.active = true;
                    return (true, true);
                }
                Poll::NeedHandle => {
                    src.active = true;
                    need_handle = true;
                }
            }
        }
        if need_handle {
            progress |= self.evict();
        }
        (progress, false)
    }

    /// Frees file handles: idle live files are closed (reopened later at the same offset), then
    /// deleted files are given up (counted).
    pub(super) fn evict(&mut self) -> bool {
        let max = self.core.cfg.tail.max_open_files;
        let mut freed = false;
        for src in self.sources.values_mut() {
            if self.core.open_files < max {
                return freed;
            }
            if let Some(r) = &mut src.reader
                && r.idle
                && r.kind == GenKind::Live
                && r.life == Life::Live
                && r.handle.take().is_some()
            {
                self.core.open_files -= 1;
                freed = true;
            }
        }
        if self.core.open_files < max {
            return freed;
        }
        for src in self.sources.values_mut() {
            if self.core.open_files < max {
                break;
            }
            if src.reader.as_ref().is_some_and(|r| r.life.unlinked().is_some() && r.handle.is_some()) {
                if self.core.find_elsewhere(src).is_some() {
                    // Its generation lives on under another name (gzipped): reopened from there later,
                    // at the same offset, instead of being given up.
                    src.reader.as_mut().expect("reader").handle = None;
                    self.core.open_files -= 1;
                } else {
                    self.core.give_up(src, "max_open_files");
                }
                freed = true;
            }
        }
        freed
    }
}
