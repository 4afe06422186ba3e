//! The read path wired together: discover → tail → parse/reassemble → record → sink, with acks
//! flowing back into per-generation [`Tracker`]s and the checkpoint.
//!
//! One thread runs [`Pipeline::run`]: it polls files round-robin with positional reads into a single
//! shared buffer, hands records to the [`Sink`], applies acknowledgements that arrive on a channel
//! from any thread, rescans every `tail.rescan_interval` and writes the checkpoint every
//! `checkpoint.interval`. inotify events (through `notify`) only wake it early.
//!
//! Per live file (`…/N.log`) exactly one generation is read at a time, oldest first: at start and
//! whenever a generation is finished, the generations of the file are listed (`N.log.<ts>`,
//! `N.log.<ts>.gz`, `N.log`) and the oldest one not yet finished is opened, so a reader that fell
//! several rotations behind reads the rotated and then the gzipped files in order. A generation is
//! finished when it was read to its end and it is no longer the live file (renamed and the new file
//! has data, or `tail.rotate_wait` passed), was deleted, or is gzipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::{CheckpointError, Entry, Journal, JournalLine, Store, Tracker};
use crate::config::ShipperConfig;
use crate::discover::{self, DiscoverError, Discovery, GenFile, GenKind};
use crate::enrich::{EnrichMetrics, Filter, PodStore, Resolution};
use crate::limit::{Decision, RateLimiter};
use crate::lines::{Budgets, LineProcessor, Output};
use crate::metrics::Metrics;
use crate::metrics::{File, Namespace};
use crate::multiline::{MultilineError, Rules};
use crate::parse::{ParseError, timestamp};
use crate::reassemble::{Cuts, FlushReason, Message, Tags};
use crate::record::{FileMeta, GenerationId, RecordBuilder, fingerprint};
use crate::sink::{AckToken, Acker, Event, Sink, SinkError};
use crate::tail::{self, Handle, IdentityCache, final_fingerprint};

/// Bytes read from one file before moving on to the next (fairness).
const TURN_BYTES: u64 = 256 << 10;
/// Longest wait for events when idle; without inotify this is the polling period.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// Period of timeout checks (partial flush, multiline, deleted-file grace).
const TICK: Duration = Duration::from_millis(100);
/// How long shutdown waits for outstanding acknowledgements.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scans in a row that must miss a generation's file before its checkpoint entry is dropped.
const GC_SCANS: u32 = 3;
/// Most gzip generations read at once (each holds an inflate state, an input buffer and a re-read
/// window of up to `tail.read_buffer_bytes`); others wait for one to finish.
const MAX_OPEN_GZIP: usize = 4;
/// Most paths remembered from inotify between two polls.
const MAX_DIRTY: usize = 4096;
/// Most record boundaries cut by time or memory remembered per generation beyond its checkpoint.
const MAX_CUTS: usize = 1024;
/// Cuts journaled since the last checkpoint write that trigger an early write (which empties it).
const JOURNAL_COMPACT: usize = 4096;

/// Why the pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The output failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Bad globs.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// Bad multiline rules.
    #[error(transparent)]
    Multiline(#[from] MultilineError),
}

/// Creates the channel between sinks and the pipeline: give the [`Acker`] to the sink, the
/// [`Events`] to [`Pipeline::new`].
pub fn channel() -> (Acker, Events) {
    let (tx, rx) = mpsc::channel();
    (Acker::new(tx.clone()), Events { tx, rx })
}

/// The receiving side of [`channel`].
#[derive(Debug)]
pub struct Events {
    tx: Sender<Event>,
    rx: Receiver<Event>,
}

/// Stops a running pipeline from another thread (graceful: acks are awaited, checkpoint written).
#[derive(Debug, Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    tx: Sender<Event>,
}

impl Stopper {
    /// Requests a graceful stop.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Event::Wake);
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Paths reported by inotify, shared with the watcher thread.
#[derive(Debug, Default)]
struct Dirty {
    paths: Mutex<(HashSet<PathBuf>, bool)>,
    signalled: AtomicBool,
}

/// State of one generation (keyed in-process by a never-reused `u64`).
#[derive(Debug)]
struct GenState {
    id: GenerationId,
    live: String,
    tracker: Tracker,
    /// Read to its end (or given up): never opened again.
    read_done: bool,
    /// Records re-sent below this offset may be duplicates (from the checkpoint's `acked_max`).
    resent_below: u64,
    /// Pinned when first seen (kept in the checkpoint): the timestamp of records that have no
    /// readable one and none before them in the generation.
    first_seen: String,
    /// Consecutive scans that did not find the generation's file.
    missing: u32,
    /// Record boundaries cut by time or memory beyond the checkpoint (end offset → cuts): forced
    /// again when the bytes are re-read; persisted (journal, then checkpoint) before the record is
    /// sent; dropped once the checkpoint passes them.
    cuts: BTreeMap<u64, Cuts>,
}

/// The generation currently read for a live file.
#[derive(Debug)]
struct Reader {
    handle: Option<Handle>,
    path: PathBuf,
    kind: GenKind,
    dev: u64,
    ino: u64,
    gen_key: Option<u64>,
    pos: u64,
    lines: LineProcessor,
    skip: BTreeMap<u64, u64>,
    /// When it stopped being the live file (or when it was opened, for rotated generations).
    rotated_at: Option<Instant>,
    unlinked_at: Option<Instant>,
    truncated: bool,
    idle: bool,
    /// The last read found nothing more (end of file, or only an incomplete line): a pending partial
    /// or multiline record waits for its writer, so its timeout may cut it. Behind (blocked, rate
    /// limited, a turn over), the rest may be on disk already: no timeout cut.
    caught_up: bool,
}

/// One live path and its reader.
#[derive(Debug)]
struct Source {
    meta: FileMeta,
    reader: Option<Reader>,
    seen_scan: u64,
    active: bool,
    pod: PodState,
}

/// Where a source stands with its pod's metadata (see [`Core::resolve_pod`]).
#[derive(Debug)]
struct PodState {
    /// When the file was discovered: the start of its `kubernetes.wait_for_pod`.
    since: Instant,
    /// The store's change counter at the last final resolution; unchanged store, same answer.
    checked: Option<u64>,
    /// A miss was counted for this file already.
    missed: bool,
}

impl PodState {
    fn new() -> Self {
        PodState { since: Instant::now(), checked: None, missed: false }
    }
}

/// Kubernetes metadata and filtering for the read path: the pod store fed by the watch
/// ([`crate::enrich::run`]), the filter, and their metrics.
#[derive(Debug, Clone)]
pub struct Enrichment {
    /// Pods of this node by uid.
    pub store: PodStore,
    /// Which pods and containers are shipped.
    pub filter: Arc<Filter>,
    /// Misses and filtered records are counted here.
    pub metrics: EnrichMetrics,
}

enum Poll {
    /// Read something; more may be there.
    Progress,
    /// Nothing to read now.
    Idle,
    /// `limits.inflight_bytes` reached.
    Blocked,
    /// Needs a file handle but `tail.max_open_files` is reached.
    NeedHandle,
}

enum End {
    Wait,
    Complete,
    Truncated,
}

/// What identifying a reader's file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Attached to its generation's state.
    Attached,
    /// No identity yet (no complete first line).
    Unknown,
    /// A generation already done.
    Done,
}

struct Core<S: Sink> {
    cfg: ShipperConfig,
    sink: S,
    metrics: Metrics,
    enrich: Option<Enrichment>,
    enrich_metrics: EnrichMetrics,
    limiter: Option<RateLimiter>,
    drops: HashMap<u64, Dropped>,
    rules: Rules,
    gens: HashMap<u64, GenState>,
    by_id: HashMap<GenerationId, u64>,
    loaded: HashMap<GenerationId, Entry>,
    /// Consecutive scans that did not find the file of a loaded entry.
    loaded_missing: HashMap<GenerationId, u32>,
    /// Generation files skipped as unreadable or empty, by (dev, inode, size, mtime): counted and
    /// logged once, tried again when the file changes.
    skipped: HashSet<(u64, u64, u64, i64)>,
    /// Rotated generations listed but not opened yet (path, uncompressed size): one that disappears
    /// before it is read is counted as given up (`deleted_unread`).
    unread: HashMap<GenerationId, (PathBuf, u64)>,
    /// Gzip readers open (bounded by [`MAX_OPEN_GZIP`]).
    gz_open: Arc<AtomicUsize>,
    /// The last scan could not list every directory (logged once per change).
    listing_failed: bool,
    ids: IdentityCache,
    buf: Vec<u8>,
    builder: RecordBuilder,
    budgets: Budgets,
    inflight_bytes: usize,
    inflight_limit: usize,
    open_files: usize,
    next_key: u64,
    dirty_checkpoint: bool,
    error: Option<SinkError>,
    /// Record boundaries cut by time or memory since the last checkpoint write.
    journal: Journal,
}

/// The shipper read path. See the module documentation.
pub struct Pipeline<S: Sink> {
    core: Core<S>,
    sources: BTreeMap<PathBuf, Source>,
    discovery: Discovery,
    store: Store,
    events: Events,
    stop_flag: Arc<AtomicBool>,
    dirty: Arc<Dirty>,
    watcher: Option<notify::RecommendedWatcher>,
    scan_no: u64,
    /// The previous [`Pipeline::tick`] (the deleted-file grace does not run while reading is blocked).
    tick_at: Option<Instant>,
    /// Files with a `shipper_checkpoint_lag_bytes` series.
    lag_series: HashSet<String>,
}

/// Totals of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records handed to the sink.
    pub records: u64,
    /// Records acknowledged.
    pub acked: u64,
}

impl<S: Sink> Pipeline<S> {
    /// Builds the pipeline; `events` must come from the same [`channel`] as the sink's acker.
    pub fn new(cfg: &ShipperConfig, sink: S, events: Events, metrics: Metrics) -> Result<Self, PipelineError> {
        let store = Store::open(Path::new(&cfg.checkpoint.dir))?;
        let core = Core {
            rules: Rules::compile(&cfg.multiline)?,
            cfg: cfg.clone(),
            sink,
            metrics,
            enrich: None,
            enrich_metrics: EnrichMetrics::default(),
            limiter: cfg.rate_limit.enabled().then(|| RateLimiter::new(&cfg.rate_limit)),
            drops: HashMap::new(),
            gens: HashMap::new(),
            by_id: HashMap::new(),
            loaded: HashMap::new(),
            loaded_missing: HashMap::new(),
            skipped: HashSet::new(),
            unread: HashMap::new(),
            gz_open: Arc::default(),
            listing_failed: false,
            ids: IdentityCache::default(),
            buf: vec![0u8; cfg.tail.read_buffer_bytes.as_usize()],
            builder: RecordBuilder::default(),
            budgets: Budgets::new(cfg.limits.pending_bytes.as_usize()),
            inflight_bytes: 0,
            inflight_limit: cfg.limits.inflight_bytes.as_usize(),
            open_files: 0,
            next_key: 1,
            dirty_checkpoint: false,
            error: None,
            journal: Journal::open(Path::new(&cfg.checkpoint.dir)),
        };
        Ok(Pipeline {
            core,
            sources: BTreeMap::new(),
            discovery: Discovery::new(&cfg.paths)?,
            store,
            events,
            stop_flag: Arc::default(),
            dirty: Arc::default(),
            watcher: None,
            scan_no: 0,
            tick_at: None,
            lag_series: HashSet::new(),
        })
    }

    /// Enriches records from the pod store and applies the filter (without it: path metadata only,
    /// every file shipped).
    pub fn with_enrichment(mut self, enrichment: Enrichment) -> Self {
        self.core.enrich_metrics = enrichment.metrics.clone();
        self.core.enrich = Some(enrichment);
        self
    }

    /// A handle to stop [`Pipeline::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper { flag: self.stop_flag.clone(), tx: self.events.tx.clone() }
    }

    /// Runs until stopped; then waits (bounded) for outstanding acks and writes the checkpoint.
    pub fn run(mut self) -> Result<Summary, PipelineError> {
        self.load_checkpoint()?;
        self.start_watcher();
        let interval = self.core.cfg.checkpoint.interval;
        let rescan = self.core.cfg.tail.rescan_interval;
        let mut last_scan: Option<Instant> = None;
        let mut last_tick = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut last_flush = Instant::now();
        let mut poll_everything = true;
        let result = loop {
            if self.stop_flag.load(Ordering::SeqCst) {
                break Ok(());
            }
            if let Some(e) = self.core.error.take() {
                break Err(PipelineError::Sink(e));
            }
            self.drain_events(None);
            let now = Instant::now();
            let rescan_requested = self.take_dirty();
            if last_scan.is_none_or(|t| now.duration_since(t) >= rescan) || rescan_requested {
                self.scan();
                self.update_checkpoint_lag();
                last_scan = Some(now);
                poll_everything = true;
            }
            if now.duration_since(last_tick) >= TICK {
                self.tick(now);
                last_tick = now;
            }
            let (progress, blocked) = self.poll_round(poll_everything);
            poll_everything = false;
            if blocked {
                self.core.metrics.backpressure.inc();
            }
            if !progress || blocked || last_flush.elapsed() >= Duration::from_millis(20) {
                if let Err(e) = self.core.sink.flush() {
                    break Err(e.into());
                }
                last_flush = Instant::now();
            }
            // A long cut journal is compacted by an early write (at most once a second, should
            // writes fail).
            let compact = self.core.journal.appended() >= JOURNAL_COMPACT && last_checkpoint.elapsed() >= TICK * 10;
            if last_checkpoint.elapsed() >= interval || compact {
                self.drain_events(None);
                self.save_checkpoint();
                last_checkpoint = Instant::now();
            }
            self.update_gauges();
            if blocked {
                self.drain_events(Some(Duration::from_millis(50)));
            } else if !progress {
                let wait = IDLE_WAIT.min(rescan).min(interval);
                if !self.drain_events(Some(wait)) {
                    poll_everything = true;
                }
            }
        };
        // Shutdown: deliver what the sink holds, wait for acks, persist.
        let close = self.core.sink.close(CLOSE_TIMEOUT);
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.core.inflight_bytes > 0 && Instant::now() < deadline {
            self.drain_events(Some(Duration::from_millis(20)));
        }
        self.drain_events(None);
        self.save_checkpoint();
        let summary = Summary { records: self.core.metrics.records.get(), acked: self.core.metrics.acked.get() };
        result?;
        close?;
        Ok(summary)
    }

    fn load_checkpoint(&mut self) -> Result<(), PipelineError> {
        let entries = match self.store.load() {
            Ok(e) => e,
            Err(CheckpointError::Corrupt { path, message }) => {
                let aside = self.store.quarantine()?;
                tracing::error!(path = %path.display(), %message, aside = %aside.display(),
                    "checkpoint unreadable; moved aside, files are read from their start (duplicates carry the same ids)");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            if let Some(id) = GenerationId::from_hex(&e.id) {
                self.core.loaded.insert(id, e);
            }
        }
        // Cuts journaled after the last checkpoint write (their records may have been sent).
        let journal = self.core.journal.load().unwrap_or_else(|e| {
            self.core.metrics.checkpoint_errors.inc();
            tracing::error!(error = %e, "cut journal unreadable; a re-send may cut records differently");
            Vec::new()
        });
        for l in journal {
            let Some(id) = GenerationId::from_hex(&l.id) else { continue };
            let e = self.core.loaded.entry(id).or_insert_with(|| Entry {
                id: l.id.clone(),
                path: l.path.clone(),
                offset: 0,
                acked_max: 0,
                complete: false,
                skip: Vec::new(),
                first_seen: None,
                cuts: Vec::new(),
            });
            if l.end <= e.offset {
                continue;
            }
            match e.cuts.iter_mut().find(|(end, _)| *end == l.end) {
                Some((_, bits)) => *bits |= l.cuts,
                None => e.cuts.push((l.end, l.cuts)),
            }
        }
        tracing::info!(generations = self.core.loaded.len(), path = %self.store.path().display(), "checkpoint loaded");
        Ok(())
    }

    fn start_watcher(&mut self) {
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
    fn take_dirty(&mut self) -> bool {
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
    fn drain_events(&mut self, wait: Option<Duration>) -> bool {
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

    fn scan(&mut self) {
        self.scan_no += 1;
        self.core.metrics.scans.inc();
        let (files, complete) = self.discovery.scan_checked();
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
            if r.unlinked_at.is_none() && st.nlink == 0 {
                r.unlinked_at = Some(now);
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

    fn tick(&mut self, now: Instant) {
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
            if let (Some(d), Some(t)) = (paused, r.unlinked_at.as_mut()) {
                *t += d;
            }
            if r.unlinked_at.is_some_and(|t| now.duration_since(t) >= grace) && !self.core.relocate(src) {
                self.core.give_up(src, "deleted_grace");
            }
        }
    }

    /// Polls sources once; returns (progress, blocked).
    fn poll_round(&mut self, everything: bool) -> (bool, bool) {
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
    fn evict(&mut self) -> bool {
        let max = self.core.cfg.tail.max_open_files;
        let mut freed = false;
        for src in self.sources.values_mut() {
            if self.core.open_files < max {
                return freed;
            }
            if let Some(r) = &mut src.reader
                && r.idle
                && r.kind == GenKind::Live
                && r.rotated_at.is_none()
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
            if src.reader.as_ref().is_some_and(|r| r.unlinked_at.is_some() && r.handle.is_some()) {
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

    fn save_checkpoint(&mut self) {
        if !self.core.dirty_checkpoint {
            return;
        }
        let mut entries: Vec<Entry> = self
            .core
            .gens
            .values_mut()
            .map(|g| {
                let offset = g.tracker.committed();
                let complete = g.read_done && g.tracker.idle();
                // Cuts the checkpoint passed are never re-read.
                g.cuts.retain(|&end, _| end > offset && !complete);
                Entry {
                    id: g.id.to_hex(),
                    path: g.live.clone(),
                    offset,
                    acked_max: g.tracker.acked_max(),
                    complete,
                    skip: g.tracker.skip_list(),
                    first_seen: Some(g.first_seen.clone()),
                    cuts: g.cuts.iter().map(|(&end, c)| (end, c.0)).collect(),
                }
            })
            .collect();
        entries.extend(self.core.loaded.values().cloned());
        entries.sort_by(|a, b| (&a.path, &a.id).cmp(&(&b.path, &b.id)));
        let n = entries.len();
        match self.store.save(entries) {
            Ok(()) => {
                self.core.metrics.checkpoint_writes.inc();
                self.core.metrics.checkpoint_entries.set(n as i64);
                self.core.dirty_checkpoint = false;
                // The checkpoint carries every cut still needed.
                if let Err(e) = self.core.journal.reset() {
                    self.core.metrics.checkpoint_errors.inc();
                    tracing::error!(error = %e, "emptying the cut journal failed");
                }
            }
            Err(e) => {
                self.core.metrics.checkpoint_errors.inc();
                tracing::error!(error = %e, "checkpoint write failed; retrying next interval");
            }
        }
    }

    /// `shipper_checkpoint_lag_bytes{path}` of every file being read; series of files no longer read
    /// are removed.
    fn update_checkpoint_lag(&mut self) {
        let family = &self.core.metrics.checkpoint_lag;
        let mut seen = HashSet::new();
        for src in self.sources.values() {
            let Some(r) = &src.reader else { continue };
            let Some(g) = r.gen_key.and_then(|k| self.core.gens.get(&k)) else { continue };
            // A gzipped generation's size on disk is compressed: count up to the read position.
            let end = match r.handle.as_ref() {
                Some(h) if !h.is_gz() => h.stat().map_or(r.pos, |st| st.size.max(r.pos)),
                _ => r.pos,
            };
            let lag = end.saturating_sub(g.tracker.committed());
            family.get_or_create(&File { path: src.meta.path.clone() }).set(lag as i64);
            seen.insert(src.meta.path.clone());
        }
        for gone in self.lag_series.difference(&seen) {
            family.remove(&File { path: gone.clone() });
        }
        self.lag_series = seen;
    }

    fn update_gauges(&mut self) {
        let m = &self.core.metrics;
        m.files.set(self.sources.len() as i64);
        m.open_files.set(self.core.open_files as i64);
        m.inflight_bytes.set(self.core.inflight_bytes as i64);
        m.pending_bytes.set(self.core.budgets.used() as i64);
    }
}

/// The [`Output`] of a reader inside the pipeline: builds records, skips acknowledged ones, tracks.
struct Emit<'a, S: Sink> {
    sink: &'a mut S,
    builder: &'a mut RecordBuilder,
    metrics: &'a Metrics,
    meta: &'a FileMeta,
    generation: &'a mut GenState,
    gen_key: u64,
    skip: &'a mut BTreeMap<u64, u64>,
    inflight: &'a mut usize,
    limit: usize,
    error: &'a mut Option<SinkError>,
    enrich_metrics: &'a EnrichMetrics,
    dirty: &'a mut bool,
    limiter: Option<&'a mut RateLimiter>,
    drops: &'a mut HashMap<u64, Dropped>,
    journal: &'a mut Journal,
    /// The file's namespace reached its `delay` rate limit: stop reading this file for now.
    limited: bool,
}

/// Lines of one generation dropped by the rate limit since its last admitted record.
#[derive(Debug, Clone, Copy, Default)]
struct Dropped {
    lines: u64,
    bytes: u64,
}

impl<S: Sink> Emit<'_, S> {
    /// Sends the `rate_limited` record saying how many lines of this file were dropped before `next`
    /// (its id is the next record's with a `-rate-limited` suffix, so it never takes a line's id).
    fn summarise_drops(&mut self, next: &Message<'_>, d: Dropped) {
        let text = format!(
            "sluice: rate limit of namespace {:?} dropped {} line(s), {} byte(s), of this file before this point",
            self.meta.namespace(),
            d.lines,
            d.bytes
        );
        let msg = Message {
            start: next.start,
            end: next.start,
            timestamp: next.timestamp.clone(),
            stream: next.stream,
            content: std::borrow::Cow::Owned(text.into_bytes()),
            tags: Tags::RATE_LIMITED,
            flushed: None,
        };
        let rec = self.builder.build(self.meta, self.generation.id, &msg);
        let id = format!("{}-rate-limited", rec.id);
        let rec = crate::record::Record { id: &id, ..rec };
        let bytes = rec.value.len() + rec.id.len() + 64;
        let seq = self.generation.tracker.submit(msg.start, msg.end, bytes);
        *self.inflight += bytes;
        self.metrics.records.inc();
        if let Err(e) = self.sink.submit(&rec, AckToken { generation: self.gen_key, seq })
            && self.error.is_none()
        {
            *self.error = Some(e);
        }
    }
}

impl<S: Sink> Output for Emit<'_, S> {
    fn message(&mut self, mut m: Message<'_>) {
        if self.skip.get(&m.start) == Some(&m.end) {
            self.skip.remove(&m.start);
            self.generation.tracker.note_acked(m.start, m.end);
            self.metrics.skipped_acked.inc();
            return;
        }
        if let Some(reason) = self.meta.excluded {
            // Not shipped by policy: acknowledged at once (the checkpoint moves), counted.
            let seq = self.generation.tracker.submit(m.start, m.end, 0);
            self.generation.tracker.ack(seq);
            self.enrich_metrics.count_filtered_records(reason, 1);
            *self.dirty = true;
            return;
        }
        if let Some(limiter) = self.limiter.as_deref_mut() {
            let ns = self.meta.namespace();
            if limiter.record(ns, m.content.len(), Instant::now()) == Decision::Drop {
                // Dropped by policy: acknowledged at once, counted, summarised before the next record.
                let seq = self.generation.tracker.submit(m.start, m.end, 0);
                self.generation.tracker.ack(seq);
                self.metrics.rate_limited_records.get_or_create(&Namespace::of(ns)).inc();
                self.metrics.rate_limited_bytes.get_or_create(&Namespace::of(ns)).inc_by(m.content.len() as u64);
                let d = self.drops.entry(self.gen_key).or_default();
                d.lines += 1;
                d.bytes += m.content.len() as u64;
                *self.dirty = true;
                return;
            }
            if !limiter.may_read(ns, Instant::now()) {
                self.limited = true;
            }
            if let Some(d) = self.drops.remove(&self.gen_key) {
                self.summarise_drops(&m, d);
            }
        }
        if m.start < self.generation.resent_below {
            self.metrics.resent.inc();
        }
        if m.timestamp.is_empty() {
            // No readable timestamp in the generation before it (see `lines`): the pinned date.
            m.timestamp = std::borrow::Cow::Owned(self.generation.first_seen.clone().into_bytes());
        }
        let rec = self.builder.build(self.meta, self.generation.id, &m);
        if self.meta.pod_info.is_some() {
            self.enrich_metrics.hits.inc();
        } else if let Some(miss) = &self.meta.counters.miss {
            miss.inc();
        }
        count_tags(self.metrics, rec.tags, m.flushed);
        let bytes = rec.value.len() + rec.id.len() + 64;
        let seq = self.generation.tracker.submit(m.start, m.end, bytes);
        *self.inflight += bytes;
        self.metrics.records.inc();
        if let Err(e) = self.sink.submit(&rec, AckToken { generation: self.gen_key, seq })
            && self.error.is_none()
        {
            *self.error = Some(e);
        }
    }

    fn line_done(&mut self, resume: u64) {
        self.generation.tracker.resolve(resume);
    }

    fn parse_error(&mut self, err: ParseError) {
        Metrics::inc(&self.metrics.parse_errors, err.label());
    }

    fn full(&self) -> bool {
        *self.inflight >= self.limit || self.error.is_some() || self.limited
    }

    fn cut(&mut self, end: u64, cut: Cuts) {
        if self.meta.excluded.is_some() {
            return; // nothing of it is sent
        }
        let g = &mut *self.generation;
        let mut all = g.cuts.get(&end).copied().unwrap_or_default();
        if all.contains(cut) {
            return; // forced again on a re-read: recorded already
        }
        if all.is_empty() && g.cuts.len() >= MAX_CUTS {
            self.metrics.cuts_unrecorded.inc();
            tracing::debug!(path = %self.meta.path, end, "too many record cuts beyond the checkpoint; not recorded");
            return;
        }
        all.insert(cut);
        g.cuts.insert(end, all);
        self.metrics.cuts_recorded.inc();
        *self.dirty = true;
        // Durable before the record ending here is handed to the sink.
        let line = JournalLine { id: g.id.to_hex(), path: g.live.clone(), end, cuts: all.0 };
        if let Err(e) = self.journal.append(&line) {
            self.metrics.checkpoint_errors.inc();
            tracing::error!(error = %e, "recording a record cut failed; a re-send after a crash may cut differently");
        }
    }

    fn recorded(&self, end: u64) -> Cuts {
        if self.generation.cuts.is_empty() {
            return Cuts::default();
        }
        self.generation.cuts.get(&end).copied().unwrap_or_default()
    }
}

fn skip_key(g: &GenFile) -> (u64, u64, u64, i64) {
    (g.dev, g.ino, g.size, g.mtime)
}

/// Counts the tags of a record in the metrics (shared with `inspect`).
pub fn count_tags(m: &Metrics, tags: Tags, flushed: Option<FlushReason>) {
    if tags.contains(Tags::TRUNCATED) {
        m.truncated.inc();
    }
    if tags.contains(Tags::INVALID_UTF8) {
        m.invalid_utf8.inc();
    }
    if tags.contains(Tags::MULTILINE) {
        m.multiline.inc();
    }
    if let Some(reason) = flushed {
        Metrics::inc(&m.partial_flushed, reason.label());
    }
}

impl<S: Sink> Core<S> {
    fn apply(&mut self, ev: Event) {
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

    fn is_done(&self, id: GenerationId) -> bool {
        match self.by_id.get(&id) {
            Some(key) => self.gens[key].read_done,
            None => self.loaded.get(&id).is_some_and(|e| e.complete),
        }
    }

    fn new_processor(&self, meta: &FileMeta) -> LineProcessor {
        let rule = meta.pod.as_ref().and_then(|p| self.rules.find(&p.namespace, &p.container));
        let parse = &self.cfg.parse;
        LineProcessor::new(parse.format, parse.max_line_bytes.as_usize(), parse.partial_flush_timeout, rule)
    }

    fn new_reader(&self, meta: &FileMeta, handle: Handle, g: &GenFile) -> Reader {
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
            rotated_at: (g.kind != GenKind::Live).then(Instant::now),
            unlinked_at: None,
            truncated: false,
            idle: false,
            caught_up: false,
        }
    }

    /// Attaches a reader to the state of generation `id` and positions it at the resume point.
    fn attach(&mut self, meta: &FileMeta, r: &mut Reader, id: GenerationId) {
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
    fn seed_timestamp(&mut self, r: &mut Reader) {
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
    fn select_next(&mut self, src: &mut Source) -> Result<bool, Poll> {
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
    fn skip_generation(&mut self, g: &GenFile, reason: &'static str, error: Option<&io::Error>) {
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
    fn find_elsewhere(&mut self, src: &Source) -> Option<GenFile> {
        let r = src.reader.as_ref()?;
        let want = self.gens.get(&r.gen_key?)?.id;
        let gens = discover::generations_of(Path::new(&src.meta.path)).ok()?;
        gens.into_iter().find(|g| {
            (g.dev, g.ino) != (r.dev, r.ino) && self.ids.identify(&src.meta.source, g).ok().flatten() == Some(want)
        })
    }

    /// Moves a reader whose file was unlinked to the same generation's other file (its `.gz`),
    /// continuing at the same uncompressed offset. `false` when there is none.
    fn relocate(&mut self, src: &mut Source) -> bool {
        let Some(g) = self.find_elsewhere(src) else { return false };
        let Ok(h) = Handle::open_exact(&g).map(|h| h.counted(&self.gz_open)) else { return false };
        let r = src.reader.as_mut().expect("reader");
        tracing::info!(from = %r.path.display(), to = %g.path.display(), offset = r.pos,
            "generation deleted under its old name; reading on from its new file");
        if r.handle.replace(h).is_none() {
            self.open_files += 1;
        }
        r.rotated_at.get_or_insert_with(Instant::now);
        r.unlinked_at = None;
        (r.path, r.kind, r.dev, r.ino) = (g.path, g.kind, g.dev, g.ino);
        true
    }

    /// Reopens a reader whose handle was closed to respect `max_open_files`: the file of its
    /// generation by identity (an inode alone can have been reused by a newer generation), wherever
    /// it is now (renamed, gzipped).
    fn reopen(&mut self, src: &mut Source) -> Result<(), Poll> {
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
                    r.rotated_at.get_or_insert_with(Instant::now);
                }
                if (g.dev, g.ino) != (r.dev, r.ino) {
                    r.truncated = false; // any truncation seen was of the inode it no longer reads
                }
                r.handle = Some(h);
                r.unlinked_at = None;
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

    /// Resolves the pod metadata and the filter decision of a source before its records are built;
    /// `false` while the file waits for its pod (`kubernetes.wait_for_pod`). A pod the store no
    /// longer has (deleted, collected) keeps the metadata the source already holds.
    fn resolve_pod(&mut self, src: &mut Source) -> bool {
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

    fn poll_source(&mut self, src: &mut Source) -> Poll {
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

    fn identify_reader(&mut self, meta: &FileMeta, r: &mut Reader) -> Identity {
        let n = match r.handle.as_mut().map(|h| h.read_at(&mut self.buf[..crate::record::FINGERPRINT_MAX], 0)) {
            Some(Ok(n)) => n,
            _ => return Identity::Unknown,
        };
        let Some(fp) = fingerprint(&self.buf[..n]) else { return Identity::Unknown };
        let id = GenerationId::derive(&meta.source, fp);
        self.attach_checked(meta, r, id)
    }

    fn identify_final(&mut self, meta: &FileMeta, r: &mut Reader) -> Identity {
        let n = match r.handle.as_mut().map(|h| h.read_at(&mut self.buf[..crate::record::FINGERPRINT_MAX], 0)) {
            Some(Ok(n)) => n,
            _ => return Identity::Unknown,
        };
        let Some(fp) = final_fingerprint(&self.buf[..n]) else { return Identity::Unknown };
        let id = GenerationId::derive(&meta.source, fp);
        self.attach_checked(meta, r, id)
    }

    fn attach_checked(&mut self, meta: &FileMeta, r: &mut Reader, id: GenerationId) -> Identity {
        if self.is_done(id) {
            // Already read (e.g. a re-identified rotated file): nothing to do with it.
            return Identity::Done;
        }
        self.attach(meta, r, id);
        Identity::Attached
    }

    /// The [`Output`] emitting records of generation `key` of `meta`'s file (stopping at `limit`
    /// in-flight bytes), with the pending budgets and the read buffer the reader uses beside it.
    fn emit<'a>(
        &'a mut self,
        meta: &'a FileMeta,
        skip: &'a mut BTreeMap<u64, u64>,
        key: u64,
        limit: usize,
    ) -> (Emit<'a, S>, &'a mut Budgets, &'a mut Vec<u8>) {
        let Core {
            sink,
            metrics,
            gens,
            buf,
            builder,
            budgets,
            inflight_bytes,
            error,
            enrich_metrics,
            dirty_checkpoint,
            limiter,
            drops,
            journal,
            ..
        } = self;
        let out = Emit {
            sink,
            builder,
            metrics,
            meta,
            generation: gens.get_mut(&key).expect("generation state"),
            gen_key: key,
            skip,
            inflight: inflight_bytes,
            limit,
            error,
            enrich_metrics,
            dirty: dirty_checkpoint,
            limiter: limiter.as_mut(),
            drops,
            journal,
            limited: false,
        };
        (out, budgets, buf)
    }

    /// Reads from the reader's position until EOF, the turn budget or back-pressure.
    fn read(&mut self, meta: &FileMeta, r: &mut Reader) -> Poll {
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

    fn check_end(&mut self, meta: &FileMeta, r: &mut Reader) -> End {
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
            r.unlinked_at.get_or_insert(now);
            return End::Complete;
        }
        if r.kind == GenKind::Live && st.size < r.pos {
            return End::Truncated;
        }
        let wait = self.cfg.tail.rotate_wait;
        match fs::metadata(&meta.path) {
            Ok(md) if (md.dev(), md.ino()) == (r.dev, r.ino) => End::Wait,
            Ok(md) => {
                if r.rotated_at.is_none() {
                    self.metrics.rotations.inc();
                }
                let since = *r.rotated_at.get_or_insert(now);
                // The runtime writes to the new file only after reopening: data there means the
                // renamed file is complete.
                if md.size() > 0 || now.duration_since(since) >= wait { End::Complete } else { End::Wait }
            }
            // The whole directory is not listable (e.g. the root briefly gone): no rotation.
            Err(_) if Path::new(&meta.path).parent().is_some_and(|d| fs::metadata(d).is_err()) => End::Wait,
            Err(_) => {
                let since = *r.rotated_at.get_or_insert(now);
                if now.duration_since(since) >= wait { End::Complete } else { End::Wait }
            }
        }
    }

    /// Finishes a generation at its end: forwards an unterminated last line, flushes pending partials.
    fn complete(&mut self, src: &mut Source) {
        let mut r = src.reader.take().expect("reader");
        if let Some(key) = r.gen_key {
            self.finish_generation(&src.meta, &mut r, key, true);
            self.metrics.generations_completed.inc();
        }
        if r.handle.take().is_some() {
            self.open_files -= 1;
        }
    }

    fn finish_generation(&mut self, meta: &FileMeta, r: &mut Reader, key: u64, read_tail: bool) {
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
    fn truncated(&mut self, src: &mut Source) {
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
                rotated_at: None,
                unlinked_at: None,
                truncated: false,
                idle: false,
                caught_up: false,
            };
            self.finish_generation(&src.meta, &mut tmp, key, false);
        }
    }

    fn close(&mut self, src: &mut Source) {
        if let Some(mut r) = src.reader.take() {
            r.lines.discard(&mut self.budgets);
            if r.handle.take().is_some() {
                self.open_files -= 1;
            }
        }
    }

    /// Gives up a reader before its end (counted with `reason`, unread bytes counted too).
    fn give_up(&mut self, src: &mut Source, reason: &'static str) {
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

    fn flush_expired(&mut self, meta: &FileMeta, r: &mut Reader, now: Instant) {
        let Some(key) = r.gen_key else { return };
        let (mut out, budgets, _) = self.emit(meta, &mut r.skip, key, usize::MAX);
        r.lines.flush_expired(now, budgets, &mut out);
        let resume = r.lines.resume_point(r.pos);
        out.generation.tracker.resolve(resume);
    }
}
