//! tail → parse: one source's poll (pod metadata first, then reading its generation through the
//! line processor), end-of-file decisions and timeout flushes.

use super::*;

impl<S: Sink> Core<S> {
    /// Resolves the pod metadata and the filter decision of a source before its records are built;
    /// `false` while the file waits for its pod (`kubernetes.wait_for_pod`). A pod the store no
    /// longer has (deleted, collected) keeps the metadata the source already holds.
    pub(super) fn resolve_pod(&mut self, src: &mut Source) -> bool {
        let Some(e) = &self.enrich else { return true };
        let Some(path) = &src.meta.pod else { return true };
        let changes = e.store.changes();
        if src.pod.checked == Some(changes) {
            return true;
        }
        match e.store.resolve(&path.uid, src.pod.since, Instant::now()) {
            Resolution::Enrich(info) => {
                src.meta.pod_info = Some(info);
                src.meta.path_only = None;
                src.meta.counters.miss = None;
            }
            Resolution::Wait => {
                // The filter's path rules apply at once (an excluded namespace never waits); the file
                // is counted and logged here, as the final resolution will find the same decision.
                let Some(reason) = e.filter.check_path(&path.namespace, &path.pod, &path.uid) else { return false };
                if src.meta.excluded != Some(reason) {
                    e.metrics.count_filtered_file(reason);
                    tracing::info!(path = %src.meta.path, reason = reason.as_str(), "file excluded from shipping");
                    src.meta.excluded = Some(reason);
                }
                return true;
            }
            Resolution::PathOnly(miss) => {
                if src.meta.pod_info.is_none() {
                    src.meta.path_only = Some(miss);
                    src.meta.counters.miss = Some(e.metrics.miss_counter(miss));
                    if !src.pod.missed {
                        tracing::debug!(path = %src.meta.path, reason = miss.as_str(), "no pod metadata; path metadata");
                        src.pod.missed = true;
                    }
                }
            }
        }
        let excluded = e.filter.check(path, src.meta.pod_info.as_deref());
        if excluded != src.meta.excluded {
            if let Some(reason) = excluded {
                e.metrics.count_filtered_file(reason);
                tracing::info!(path = %src.meta.path, reason = reason.as_str(), "file excluded from shipping");
            }
            src.meta.excluded = excluded;
        }
        src.pod.checked = Some(changes);
        true
    }

    pub(super) fn poll_source(&mut self, src: &mut Source) -> Poll {
        let mut progress = false;
        if !self.resolve_pod(src) {
            return Poll::Idle;
        }
        if let Some(limiter) = &mut self.limiter
            && src.meta.excluded.is_none()
            && !limiter.may_read(src.meta.namespace(), Instant::now())
        {
            self.metrics.rate_limit_delays.get_or_create(&Namespace::of(src.meta.namespace())).inc();
            return Poll::Idle;
        }
        for _ in 0..16 {
            if src.reader.is_none() {
                match self.select_next(src) {
                    Ok(true) => {}
                    Ok(false) => return if progress { Poll::Progress } else { Poll::Idle },
                    Err(p) => return p,
                }
            }
            if src.reader.as_ref().is_some_and(|r| r.handle.is_none())
                && let Err(p) = self.reopen(src)
            {
                return p;
            }
            let r = src.reader.as_mut().expect("reader");
            if r.gen_key.is_none() {
                let found = match self.identify_reader(&src.meta, r) {
                    // No complete first line yet; once the file is no longer live, its whole content is it.
                    Identity::Unknown => match self.check_end(&src.meta, r) {
                        End::Wait => return if progress { Poll::Progress } else { Poll::Idle },
                        End::Complete | End::Truncated => self.identify_final(&src.meta, r),
                    },
                    found => found,
                };
                if found != Identity::Attached {
                    // Without content, or a generation already done (read to its end or given up, and
                    // counted then): let go quietly; it is neither given up nor deleted unread.
                    self.close(src);
                    continue;
                }
            }
            let r = src.reader.as_mut().expect("reader");
            if r.truncated {
                self.truncated(src);
                progress = true;
                continue;
            }
            match self.read(&src.meta, r) {
                Poll::Progress => return Poll::Progress,
                Poll::Blocked => return Poll::Blocked,
                Poll::NeedHandle => return Poll::NeedHandle,
                Poll::Idle => {}
            }
            let r = src.reader.as_mut().expect("reader");
            match self.check_end(&src.meta, r) {
                End::Wait => {
                    r.idle = true;
                    return if progress { Poll::Progress } else { Poll::Idle };
                }
                End::Complete => {
                    // Final: whatever was appended before the rotation is read before letting go.
                    let r = src.reader.as_mut().expect("reader");
                    match self.read(&src.meta, r) {
                        Poll::Idle => self.complete(src),
                        other => return other,
                    }
                    progress = true;
                }
                End::Truncated => {
                    self.truncated(src);
                    progress = true;
                }
            }
        }
        Poll::Progress
    }

    pub(super) fn identify_reader(&mut self, meta: &FileMeta, r: &mut Reader) -> Identity {
        let n = match r.handle.as_mut().map(|h| h.read_at(&mut self.buf[..crate::record::FINGERPRINT_MAX], 0)) {
            Some(Ok(n)) => n,
            _ => return Identity::Unknown,
        };
        let Some(fp) = fingerprint(&self.buf[..n]) else { return Identity::Unknown };
        let id = GenerationId::derive(&meta.source, fp);
        self.attach_checked(meta, r, id)
    }

    pub(super) fn identify_final(&mut self, meta: &FileMeta, r: &mut Reader) -> Identity {
        let n = match r.handle.as_mut().map(|h| h.read_at(&mut self.buf[..crate::record::FINGERPRINT_MAX], 0)) {
            Some(Ok(n)) => n,
            _ => return Identity::Unknown,
        };
        let Some(fp) = final_fingerprint(&self.buf[..n]) else { return Identity::Unknown };
        let id = GenerationId::derive(&meta.source, fp);
        self.attach_checked(meta, r, id)
    }

    pub(super) fn attach_checked(&mut self, meta: &FileMeta, r: &mut Reader, id: GenerationId) -> Identity {
        if self.is_done(id) {
            // Already read (e.g. a re-identified rotated file): nothing to do with it.
            return Identity::Done;
        }
        self.attach(meta, r, id);
        Identity::Attached
    }

    /// Reads from the reader's position until EOF, the turn budget or back-pressure.
    pub(super) fn read(&mut self, meta: &FileMeta, r: &mut Reader) -> Poll {
        let Some(key) = r.gen_key else { return Poll::Idle };
        let limit = self.inflight_limit;
        let (mut out, budgets, buf) = self.emit(meta, &mut r.skip, key, limit);
        let handle = r.handle.as_mut().expect("open handle");
        let mut turn = 0u64;
        let now = Instant::now();
        loop {
            if out.limited {
                return Poll::Idle;
            }
            if out.full() {
                return Poll::Blocked;
            }
            let n = match handle.read_at(buf, r.pos) {
                Ok(n) => n,
                Err(e) => {
                    out.metrics.read_errors.inc();
                    tracing::warn!(path = %r.path.display(), error = %e, "read failed");
                    return Poll::Idle;
                }
            };
            if n == 0 {
                r.caught_up = true;
                return Poll::Idle;
            }
            let full = n == buf.len();
            let used = r.lines.chunk(&buf[..n], r.pos, full, now, budgets, &mut out);
            let lines = memchr::memchr_iter(b'\n', &buf[..used]).count();
            out.metrics.lines.inc_by(lines as u64);
            out.metrics.bytes.inc_by(used as u64);
            meta.counters.namespace_lines.inc_by(lines as u64);
            meta.counters.namespace_bytes.inc_by(used as u64);
            r.pos += used as u64;
            turn += used as u64;
            if used == 0 {
                r.caught_up = true;
                return Poll::Idle; // an incomplete last line: wait for the rest
            }
            r.idle = false;
            r.caught_up = false;
            if out.limited {
                // This namespace's rate limit (delay): other files keep flowing.
                out.metrics.rate_limit_delays.get_or_create(&Namespace::of(meta.namespace())).inc();
                return Poll::Idle;
            }
            if out.full() {
                return Poll::Blocked;
            }
            if turn >= TURN_BYTES {
                return Poll::Progress;
            }
            if !full && used == n {
                // Everything read was consumed; one more read tells whether more arrived.
                continue;
            }
        }
    }

    pub(super) fn check_end(&mut self, meta: &FileMeta, r: &mut Reader) -> End {
        if r.truncated {
            return End::Truncated;
        }
        let Some(h) = &r.handle else { return End::Wait };
        if h.is_gz() {
            return End::Complete;
        }
        let now = Instant::now();
        let st = match h.stat() {
            Ok(st) => st,
            Err(_) => return End::Wait,
        };
        if st.nlink == 0 {
            r.life.unlink(now);
            return End::Complete;
        }
        if r.kind == GenKind::Live && st.size < r.pos {
            return End::Truncated;
        }
        let wait = self.cfg.tail.rotate_wait;
        match fs::metadata(&meta.path) {
            Ok(md) if (md.dev(), md.ino()) == (r.dev, r.ino) => End::Wait,
            Ok(md) => {
                if r.life.rotated().is_none() {
                    self.metrics.rotations.inc();
                }
                let since = r.life.rotate(now);
                // The runtime writes to the new file only after reopening: data there means the
                // renamed file is complete.
                if md.size() > 0 || now.duration_since(since) >= wait { End::Complete } else { End::Wait }
            }
            // The whole directory is not listable (e.g. the root briefly gone): no rotation.
            Err(_) if Path::new(&meta.path).parent().is_some_and(|d| fs::metadata(d).is_err()) => End::Wait,
            Err(_) => {
                let since = r.life.rotate(now);
                if now.duration_since(since) >= wait { End::Complete } else { End::Wait }
            }
        }
    }

    pub(super) fn flush_expired(&mut self, meta: &FileMeta, r: &mut Reader, now: Instant) {
        let Some(key) = r.gen_key else { return };
        let (mut out, budgets, _) = self.emit(meta, &mut r.skip, key, usize::MAX);
        r.lines.flush_expired(now, budgets, &mut out);
        let resume = r.lines.resume_point(r.pos);
        out.generation.tracker.resolve(resume);
    }
}
