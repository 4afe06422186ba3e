//! tail: which generation of a live file is read next (oldest unfinished first), opening it,
//! identifying it (generation id from its first line) and reopening an evicted reader only when the
//! file is still the same generation.

use super::*;

fn skip_key(g: &GenFile) -> (u64, u64, u64, i64) {
    (g.dev, g.ino, g.size, g.mtime)
}

impl<S: Sink> Core<S> {
    pub(super) fn apply(&mut self, ev: Event) {
        if let Event::Acks(tokens) = ev {
            for t in tokens {
                if let Some(g) = self.gens.get_mut(&t.generation) {
                    let freed = g.tracker.ack(t.seq);
                    if freed > 0 {
                        self.inflight_bytes -= freed;
                        self.metrics.acked.inc();
                        self.dirty_checkpoint = true;
                    }
                }
            }
        }
    }

    pub(super) fn is_done(&self, id: GenerationId) -> bool {
        match self.by_id.get(&id) {
            Some(key) => self.gens[key].read_done,
            None => self.loaded.get(&id).is_some_and(|e| e.complete),
        }
    }

    pub(super) fn new_processor(&self, meta: &FileMeta) -> LineProcessor {
        let rule = meta.pod.as_ref().and_then(|p| self.rules.find(&p.namespace, &p.container));
        let parse = &self.cfg.parse;
        LineProcessor::new(parse.format, parse.max_line_bytes.as_usize(), parse.partial_flush_timeout, rule)
    }

    pub(super) fn new_reader(&self, meta: &FileMeta, handle: Handle, g: &GenFile) -> Reader {
        Reader {
            handle: Some(handle),
            path: g.path.clone(),
            kind: g.kind.clone(),
            dev: g.dev,
            ino: g.ino,
            gen_key: None,
            pos: 0,
            lines: self.new_processor(meta),
            skip: BTreeMap::new(),
            life: Life::opened(&g.kind),
            truncated: false,
            idle: false,
            caught_up: false,
        }
    }

    /// Attaches a reader to the state of generation `id` and positions it at the resume point.
    pub(super) fn attach(&mut self, meta: &FileMeta, r: &mut Reader, id: GenerationId) {
        let key = match self.by_id.get(&id) {
            Some(&key) => {
                let g = &self.gens[&key];
                r.pos = g.tracker.committed();
                r.skip = g.tracker.skip_list().into_iter().collect();
                key
            }
            None => {
                let key = self.next_key;
                self.next_key += 1;
                let (tracker, resent_below, first_seen, cuts) = match self.loaded.remove(&id) {
                    Some(e) => {
                        let mut t = Tracker::new(e.offset);
                        for &(s, end) in &e.skip {
                            t.note_acked(s, end);
                        }
                        r.pos = e.offset;
                        r.skip = e.skip.iter().copied().collect();
                        let cuts = e.cuts.iter().filter(|c| c.0 > e.offset).map(|&(end, b)| (end, Cuts(b))).collect();
                        (t, e.acked_max, e.first_seen, cuts)
                    }
                    None => (Tracker::new(0), 0, None, BTreeMap::new()),
                };
                let first_seen = first_seen.unwrap_or_else(timestamp::now);
                self.gens.insert(
                    key,
                    GenState {
                        id,
                        live: meta.path.clone(),
                        tracker,
                        read_done: false,
                        resent_below,
                        missing: 0,
                        first_seen,
                        cuts,
                    },
                );
                self.by_id.insert(id, key);
                self.dirty_checkpoint = true;
                key
            }
        };
        r.gen_key = Some(key);
        if r.pos > 0 {
            self.seed_timestamp(r);
        }
    }

    /// Resuming in the middle of a generation: finds the last readable timestamp before the resume
    /// point, as reading from 0 would have (the date of following lines without one).
    pub(super) fn seed_timestamp(&mut self, r: &mut Reader) {
        let (pos, buf) = (r.pos, &mut self.buf);
        let res = match r.handle.as_mut() {
            Some(h) if !h.is_gz() => r.lines.seed_timestamp(&mut |b, off| h.read_at(b, off), buf, pos, false),
            // A gzip stream reads forward only: a second decoder from the start.
            _ => Handle::open(&r.path, &r.kind)
                .and_then(|mut h| r.lines.seed_timestamp(&mut |b, off| h.read_at(b, off), buf, pos, true)),
        };
        if let Err(e) = res {
            self.metrics.read_errors.inc();
            tracing::warn!(path = %r.path.display(), error = %e, "reading back for the last timestamp failed");
        }
    }

    /// Opens the oldest unfinished generation of `src`. Returns `Ok(false)` when there is none.
    pub(super) fn select_next(&mut self, src: &mut Source) -> Result<bool, Poll> {
        let live = PathBuf::from(&src.meta.path);
        if discover::compression_in_progress(&live) {
            return Ok(false); // the generation being compressed reappears as `.gz`
        }
        let gens = discover::generations_of(&live).unwrap_or_default();
        // A directory listing is not atomic: a generation renamed to `.gz` meanwhile can be missing
        // from it. Two identical listings in a row mean the order seen is the order on disk.
        let again = discover::generations_of(&live).unwrap_or_default();
        let names = |g: &[GenFile]| g.iter().map(|g| g.path.clone()).collect::<Vec<_>>();
        if names(&gens) != names(&again) || discover::compression_in_progress(&live) {
            return Ok(false);
        }
        for g in gens {
            if g.size == 0 && g.kind != GenKind::Live || self.skipped.contains(&skip_key(&g)) {
                continue;
            }
            let id = match self.ids.identify(&src.meta.source, &g) {
                Ok(id) => id,
                // Renamed or compressed since the listing: list again later rather than skip it,
                // which would read a newer generation first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                // Unreadable (permissions, corrupt gzip): skipped, so newer generations flow.
                Err(e) => {
                    self.skip_generation(&g, "unreadable", Some(&e));
                    continue;
                }
            };
            if id.is_none() && g.kind != GenKind::Live {
                // A rotated generation without content (a `.gz` of nothing): no identity, no records.
                self.skip_generation(&g, "empty", None);
                continue;
            }
            if id.is_some_and(|id| self.is_done(id)) {
                continue;
            }
            if self.open_files >= self.cfg.tail.max_open_files {
                return Err(Poll::NeedHandle);
            }
            if matches!(g.kind, GenKind::Gz(_)) && self.gz_open.load(Ordering::SeqCst) >= MAX_OPEN_GZIP {
                return Ok(false); // in order: wait for a gzip reader to finish
            }
            let handle = match Handle::open_exact(&g) {
                Ok(h) => h.counted(&self.gz_open),
                // Renamed since the listing (the path may now name a newer generation): list again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => {
                    self.skip_generation(&g, "unreadable", Some(&e));
                    continue;
                }
            };
            self.open_files += 1;
            if g.kind != GenKind::Live {
                self.metrics.lagged_generations.inc();
            }
            let mut r = self.new_reader(&src.meta, handle, &g);
            if let Some(id) = id {
                self.attach(&src.meta, &mut r, id);
            }
            src.reader = Some(r);
            return Ok(true);
        }
        Ok(false)
    }

    /// Skips a generation file that cannot be read (counted in `files_given_up_total{reason}`, logged
    /// once with its path; tried again when its size or modification time changes).
    pub(super) fn skip_generation(&mut self, g: &GenFile, reason: &'static str, error: Option<&io::Error>) {
        if !self.skipped.insert(skip_key(g)) {
            return;
        }
        Metrics::inc(&self.metrics.files_given_up, reason);
        if let Some(e) = error {
            self.metrics.read_errors.inc();
            tracing::warn!(path = %g.path.display(), error = %e, reason, "skipping unreadable generation");
        } else {
            tracing::info!(path = %g.path.display(), reason, "skipping generation without content");
        }
    }

    /// The reader's generation under another file name than the one it reads (its `.gz` after the
    /// kubelet compressed it, or a rename), found by identity.
    pub(super) fn find_elsewhere(&mut self, src: &Source) -> Option<GenFile> {
        let r = src.reader.as_ref()?;
        let want = self.gens.get(&r.gen_key?)?.id;
        let gens = discover::generations_of(Path::new(&src.meta.path)).ok()?;
        gens.into_iter().find(|g| {
            (g.dev, g.ino) != (r.dev, r.ino) && self.ids.identify(&src.meta.source, g).ok().flatten() == Some(want)
        })
    }

    /// Moves a reader whose file was unlinked to the same generation's other file (its `.gz`),
    /// continuing at the same uncompressed offset. `false` when there is none.
    pub(super) fn relocate(&mut self, src: &mut Source) -> bool {
        let Some(g) = self.find_elsewhere(src) else { return false };
        let Ok(h) = Handle::open_exact(&g).map(|h| h.counted(&self.gz_open)) else { return false };
        let r = src.reader.as_mut().expect("reader");
        tracing::info!(from = %r.path.display(), to = %g.path.display(), offset = r.pos,
            "generation deleted under its old name; reading on from its new file");
        if r.handle.replace(h).is_none() {
            self.open_files += 1;
        }
        r.life.rotate(Instant::now());
        r.life.relink();
        (r.path, r.kind, r.dev, r.ino) = (g.path, g.kind, g.dev, g.ino);
        true
    }

    /// Reopens a reader whose handle was closed to respect `max_open_files`: the file of its
    /// generation by identity (an inode alone can have been reused by a newer generation), wherever
    /// it is now (renamed, gzipped).
    pub(super) fn reopen(&mut self, src: &mut Source) -> Result<(), Poll> {
        if self.open_files >= self.cfg.tail.max_open_files {
            return Err(Poll::NeedHandle);
        }
        let live = PathBuf::from(&src.meta.path);
        let r = src.reader.as_ref().expect("reader");
        let gens = discover::generations_of(&live).unwrap_or_default();
        let want = r.gen_key.and_then(|k| self.gens.get(&k)).map(|g| g.id);
        let (dev, ino) = (r.dev, r.ino);
        let mut found = None;
        for g in &gens {
            if (g.dev, g.ino) == (dev, ino) {
                match (want, self.ids.identify(&src.meta.source, g)) {
                    (None, _) => found = Some(g.clone()),
                    (Some(w), Ok(Some(id))) if id == w => found = Some(g.clone()),
                    (Some(_), Err(e)) if e.kind() == io::ErrorKind::NotFound => return Err(Poll::Idle),
                    _ => {}
                }
            }
        }
        if found.is_none()
            && let Some(w) = want
        {
            for g in &gens {
                match self.ids.identify(&src.meta.source, g) {
                    Ok(Some(id)) if id == w => {
                        found = Some(g.clone());
                        break;
                    }
                    // Renamed or compressed since the listing: list again at the next poll.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Poll::Idle),
                    _ => {}
                }
            }
        }
        let Some(g) = found else {
            if discover::compression_in_progress(&live) {
                return Err(Poll::Idle); // reappears as `.gz`
            }
            self.give_up(src, "vanished");
            return Err(Poll::Idle);
        };
        if matches!(g.kind, GenKind::Gz(_)) && self.gz_open.load(Ordering::SeqCst) >= MAX_OPEN_GZIP {
            return Err(Poll::Idle);
        }
        match Handle::open_exact(&g).map(|h| h.counted(&self.gz_open)) {
            Ok(h) => {
                let r = src.reader.as_mut().expect("reader");
                if g.kind != r.kind {
                    r.life.rotate(Instant::now());
                }
                if (g.dev, g.ino) != (r.dev, r.ino) {
                    r.truncated = false; // any truncation seen was of the inode it no longer reads
                }
                r.handle = Some(h);
                r.life.relink();
                r.path = g.path;
                r.kind = g.kind;
                r.dev = g.dev;
                r.ino = g.ino;
                self.open_files += 1;
                Ok(())
            }
            // Renamed between listing and opening: not vanished, list again at the next poll.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Poll::Idle),
            Err(_) => {
                self.give_up(src, "vanished");
                Err(Poll::Idle)
            }
        }
    }
}
