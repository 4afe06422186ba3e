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
use crate::discover::{self, DiscoverError, Discovery, GenFile, GenKind, Skipped};
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

mod emit;
mod generation;
mod read;
mod rotate;
mod scan;
mod schedule;

use emit::Dropped;
pub use emit::count_tags;

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
    /// Where its file stands: live, rotated away, or unlinked (see [`Life`]).
    life: Life,
    /// A scan saw the live file truncated (same inode, other first line) past the read position:
    /// handled at the next poll (a pending event, whatever the file's [`Life`]).
    truncated: bool,
    idle: bool,
    /// The last read found nothing more (end of file, or only an incomplete line): a pending partial
    /// or multiline record waits for its writer, so its timeout may cut it. Behind (blocked, rate
    /// limited, a turn over), the rest may be on disk already: no timeout cut.
    caught_up: bool,
}

/// Where a reader's file stands. Only forward, except that a reader moved to its generation's
/// other file ([`Core::relocate`], [`Core::reopen`]) is linked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Still the live `N.log`, as far as the reader knows.
    Live,
    /// No longer the live file since `since` (renamed away, or opened as a rotated generation):
    /// complete once read to its end and the new file has data or `tail.rotate_wait` passed.
    Rotated {
        /// When the reader noticed.
        since: Instant,
    },
    /// Its link count dropped to 0 at `since` (moved back while reading is blocked by
    /// back-pressure): read on through the open handle, given up after `tail.deleted_file_grace`
    /// unless the generation lives on under another name.
    Unlinked {
        /// When the reader noticed (the grace clock).
        since: Instant,
        /// When it was noticed rotated before that, if it was.
        rotated: Option<Instant>,
    },
}

impl Life {
    /// The state of a reader opened on a file of `kind`.
    fn opened(kind: &GenKind) -> Life {
        if *kind == GenKind::Live { Life::Live } else { Life::Rotated { since: Instant::now() } }
    }

    /// When the file stopped being the live one, if it did.
    fn rotated(self) -> Option<Instant> {
        match self {
            Life::Live => None,
            Life::Rotated { since } => Some(since),
            Life::Unlinked { rotated, .. } => rotated,
        }
    }

    /// Notes the rotation (once): returns when it was first noticed.
    fn rotate(&mut self, now: Instant) -> Instant {
        match self {
            Life::Live => {
                *self = Life::Rotated { since: now };
                now
            }
            Life::Rotated { since } => *since,
            Life::Unlinked { rotated, .. } => *rotated.get_or_insert(now),
        }
    }

    /// When the file was unlinked, if it was.
    fn unlinked(self) -> Option<Instant> {
        match self {
            Life::Unlinked { since, .. } => Some(since),
            _ => None,
        }
    }

    /// Notes the unlink (once).
    fn unlink(&mut self, now: Instant) {
        if self.unlinked().is_none() {
            *self = Life::Unlinked { since: now, rotated: self.rotated() };
        }
    }

    /// The reader reads a linked file again (its generation under another name).
    fn relink(&mut self) {
        if let Life::Unlinked { rotated, .. } = *self {
            *self = rotated.map_or(Life::Live, |since| Life::Rotated { since });
        }
    }

    /// Moves the grace clock of an unlinked file by `paused` (reading was blocked meanwhile).
    fn pause(&mut self, paused: Duration) {
        if let Life::Unlinked { since, .. } = self {
            *since += paused;
        }
    }
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
    /// Paths named like log files that are not read (counted once while they stay).
    skipped_paths: HashSet<PathBuf>,
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
        let builder = RecordBuilder::lines(sink.record_lines());
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
            builder,
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
            skipped_paths: HashSet::new(),
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
