//! discover: inotify glue (dirty paths), the periodic scan that lists log files and their
//! generations, and garbage collection of checkpoint entries whose files are proven gone.

use super::*;

impl<S: Sink> Pipeline<S> {
    pub(super) fn start_watcher(&mut self) {
        use notify::{RecursiveMode, Watcher};
        let dirty = self.dirty.clone();
        let tx = self.events.tx.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            use notify::event::{AccessKind, AccessMode, EventKind};
            // Opening and reading (IN_OPEN, IN_CLOSE_NOWRITE) change nothing; the scan's own
            // `read_dir` calls raise them on every directory, which would trigger the next scan.
            if let Ok(ev) = &res
                && matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
            {
                return;
            }
            {
                let mut guard = dirty.paths.lock().expect("dirty lock");
                match res {
                    Ok(ev) => {
                        for p in ev.paths {
                            if guard.0.len() < MAX_DIRTY {
                                guard.0.insert(p);
                            } else {
                                guard.1 = true;
                            }
                        }
                    }
                    Err(_) => guard.1 = true,
                }
            }
            if !dirty.signalled.swap(true, Ordering::SeqCst) {
                let _ = tx.send(Event::Wake);
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(mut w) => {
                // Events carry paths under the watched path; sources are keyed by real paths (the scan
                // canonicalizes the root), so a symlinked root must be watched under its real path, or
                // every event would look like an unknown file and trigger a full rescan.
                let root = self.discovery.root();
                let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
                if let Err(e) = w.watch(&root, RecursiveMode::Recursive) {
                    tracing::warn!(root = %root.display(), error = %e, "inotify watch failed; polling only");
                }
                for dir in &self.core.cfg.paths.symlink_dirs {
                    let _ = w.watch(Path::new(dir), RecursiveMode::NonRecursive);
                }
                self.watcher = Some(w);
            }
            Err(e) => tracing::warn!(error = %e, "inotify unavailable; polling only"),
        }
    }

    /// Marks sources touched by inotify; returns whether an unknown path asks for a rescan.
    pub(super) fn take_dirty(&mut self) -> bool {
        self.dirty.signalled.store(false, Ordering::SeqCst);
        let (paths, overflow) = {
            let mut g = self.dirty.paths.lock().expect("dirty lock");
            (std::mem::take(&mut g.0), std::mem::take(&mut g.1))
        };
        let mut rescan = overflow;
        for p in paths {
            let live = discover::live_path_of(&p);
            match live.as_ref().and_then(|l| self.sources.get_mut(l)) {
                Some(src) => src.active = true,
                None => {
                    // A new file or directory (or something irrelevant under the root).
                    let relevant = live.is_some() || p.is_dir() || !p.exists();
                    rescan |= relevant && live.as_ref().is_none_or(|l| self.discovery.wanted(l));
                }
            }
        }
        rescan
    }

    /// Applies queued events; with `wait`, blocks up to that long for the first one. Returns whether
    /// an event arrived.
    pub(super) fn drain_events(&mut self, wait: Option<Duration>) -> bool {
        let mut got = false;
        if let Some(wait) = wait {
            match self.events.rx.recv_timeout(wait) {
                Ok(ev) => {
                    self.core.apply(ev);
                    got = true;
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
        while let Ok(ev) = self.events.rx.try_recv() {
            self.core.apply(ev);
            got = true;
        }
        got
    }

    /// Counts and logs each path named like a log file that is not read, once while it stays.
    fn count_skipped(&mut self, skipped: Vec<(PathBuf, Skipped)>) {
        let mut now = HashSet::with_capacity(skipped.len());
        for (path, why) in skipped {
            if !self.skipped_paths.contains(&path) {
                Metrics::inc(&self.core.metrics.paths_skipped, why.label());
                tracing::warn!(path = %path.display(), reason = why.label(),
                    "not reading a path named like a log file: it is not a regular file");
            }
            now.insert(path);
        }
        self.skipped_paths = now;
    }

    pub(super) fn scan(&mut self) {
        self.scan_no += 1;
        self.core.metrics.scans.inc();
        let listing = self.discovery.list();
        let (files, complete) = (listing.files, listing.complete);
        self.count_skipped(listing.skipped);
        if complete == self.core.listing_failed {
            self.core.listing_failed = !complete;
            if complete {
                tracing::info!(root = %self.discovery.root().display(), "directories listed again");
            } else {
                self.core.metrics.read_errors.inc();
                tracing::warn!(root = %self.discovery.root().display(),
                    "cannot list every log directory; nothing is taken as deleted until listings succeed");
            }
        }
        let mut listed: HashMap<GenerationId, (PathBuf, u64)> = HashMap::new();
        let mut seen_ids: HashSet<GenerationId> = HashSet::new();
        let mut uncertain: HashSet<String> = HashSet::new();
        let mut seen_inodes = HashSet::new();
        for lf in files {
            let node = &self.core.cfg.node_name;
            let src = self.sources.entry(lf.live.clone()).or_insert_with(|| {
                self.core.metrics.files_discovered.inc();
                let mut meta = FileMeta::new(&lf.live, node);
                meta.counters = self.core.metrics.file_counters(meta.namespace());
                Source { meta, reader: None, seen_scan: 0, active: true, pod: PodState::new() }
            });
            src.seen_scan = self.scan_no;
            src.active = true;
            for g in &lf.generations {
                seen_inodes.insert((g.dev, g.ino));
                let id = match self.core.ids.identify(&src.meta.source, g) {
                    Ok(Some(id)) => id,
                    Ok(None) => continue,
                    Err(_) => {
                        // Renamed or compressed during the scan: do not conclude anything is gone.
                        uncertain.insert(src.meta.path.clone());
                        continue;
                    }
                };
                seen_ids.insert(id);
                if g.kind != GenKind::Live && !self.core.is_done(id) {
                    let size = match self.core.unread.get(&id) {
                        Some(&(_, size)) => size,
                        None => tail::content_size(g).unwrap_or(g.size),
                    };
                    listed.insert(id, (g.path.clone(), size));
                }
                // Same inode, different first line: truncated and rewritten past our offset.
                // (A closed reader checks identity when it reopens: the inode may have been reused.)
                if let Some(r) = &mut src.reader
                    && r.handle.is_some()
                    && r.kind == GenKind::Live
                    && g.kind == GenKind::Live
                    && (r.dev, r.ino) == (g.dev, g.ino)
                    && let Some(key) = r.gen_key
                    && self.core.gens.get(&key).is_some_and(|s| s.id != id)
                {
                    r.truncated = true;
                }
            }
        }
        self.core.ids.retain(&seen_inodes);
        self.core.skipped.retain(|k| seen_inodes.contains(&(k.0, k.1)));
        // Readers: deleted files.
        let now = Instant::now();
        let mut lag = 0u64;
        for src in self.sources.values_mut() {
            let Some(r) = &mut src.reader else { continue };
            let Some(st) = r.handle.as_ref().and_then(|h| h.stat().ok()) else { continue };
            if st.nlink == 0 {
                r.life.unlink(now);
            }
            let size = r.handle.as_ref().and_then(|h| h.content_size().ok()).unwrap_or(st.size);
            lag += size.saturating_sub(r.pos);
        }
        // Generations listed before and gone now (positive proof: every listing succeeded), never
        // opened: lost, counted. Those being read are the readers' business.
        let reading_ids: HashSet<GenerationId> = self
            .sources
            .values()
            .filter_map(|s| s.reader.as_ref().and_then(|r| r.gen_key))
            .filter_map(|k| self.core.gens.get(&k).map(|g| g.id))
            .collect();
        let previous = std::mem::take(&mut self.core.unread);
        for (id, (path, size)) in previous {
            if reading_ids.contains(&id) || self.core.is_done(id) || listed.contains_key(&id) {
                continue;
            }
            if !complete || seen_ids.contains(&id) {
                listed.insert(id, (path, size));
                continue;
            }
            let from = self.core.loaded.get(&id).map_or(0, |e| e.offset);
            let left = size.saturating_sub(from);
            tracing::warn!(path = %path.display(), unread = left, "generation deleted before it was read");
            Metrics::inc(&self.core.metrics.files_given_up, "deleted_unread");
            self.core.metrics.bytes_given_up.inc_by(left);
        }
        listed.retain(|id, _| !reading_ids.contains(id));
        lag += listed.values().map(|(_, size)| size).sum::<u64>();
        self.core.unread = listed;
        self.core.metrics.lag_bytes.set(lag as i64);
        // Sources gone from disk with nothing left to read.
        let scan_no = self.scan_no;
        self.sources.retain(|_, s| s.seen_scan == scan_no || s.reader.is_some());
        // Checkpoint GC: generations whose files are gone and that nothing reads or awaits.
        let reading: HashSet<u64> =
            self.sources.values().filter_map(|s| s.reader.as_ref().and_then(|r| r.gen_key)).collect();
        // A generation is only dropped after GC_SCANS scans in a row without its file, since a file can
        // be missed while the kubelet renames or compresses it.
        let before = self.core.gens.len() + self.core.loaded.len();
        let Core { gens, by_id, loaded, loaded_missing, .. } = &mut self.core;
        gens.retain(|key, g| {
            if !complete
                || seen_ids.contains(&g.id)
                || reading.contains(key)
                || !g.tracker.idle()
                || uncertain.contains(&g.live)
            {
                g.missing = 0;
                return true;
            }
            g.missing += 1;
            let keep = g.missing < GC_SCANS;
            if !keep {
                by_id.remove(&g.id);
            }
            keep
        });
        loaded.retain(|id, e| {
            if !complete || seen_ids.contains(id) || uncertain.contains(&e.path) {
                loaded_missing.remove(id);
                return true;
            }
            let n = loaded_missing.entry(*id).or_default();
            *n += 1;
            let keep = *n < GC_SCANS;
            if !keep {
                loaded_missing.remove(id);
            }
            keep
        });
        let removed = before - (self.core.gens.len() + self.core.loaded.len());
        if removed > 0 {
            self.core.metrics.checkpoint_gc.inc_by(removed as u64);
            self.core.dirty_checkpoint = true;
        }
    }
}
