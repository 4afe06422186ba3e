//! Prometheus metrics of the read path (every counted thing of invariant 5), registered under the
//! registry's prefix (`sluice_`) as `shipper_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A single `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: &'static str,
}

/// All shipper metrics. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Physical lines read.
    pub lines: Counter,
    /// Bytes read (uncompressed).
    pub bytes: Counter,
    /// Records handed to the output.
    pub records: Counter,
    /// Records acknowledged by the output.
    pub acked: Counter,
    /// Records not sent again after a restart because they had been acknowledged (skip ranges).
    pub skipped_acked: Counter,
    /// Records sent again after a restart below the highest acknowledged offset: possible duplicates
    /// (same record id, so the indexer drops them).
    pub resent: Counter,
    /// Lines that did not parse, forwarded raw and tagged `parse_error`, by reason.
    pub parse_errors: Family<Reason, Counter>,
    /// Records cut at `max_line_bytes` (tag `truncated`).
    pub truncated: Counter,
    /// Records with invalid UTF-8 replaced (tag `invalid_utf8`).
    pub invalid_utf8: Counter,
    /// Partial lines sent without their final fragment (tag `partial_flushed`), by reason.
    pub partial_flushed: Family<Reason, Counter>,
    /// Records joined by a multiline rule.
    pub multiline: Counter,
    /// Rotations noticed (the live file was renamed or replaced).
    pub rotations: Counter,
    /// Generations read to their end and released.
    pub generations_completed: Counter,
    /// Rotated generations read from their rotated or gzipped file (the reader lagged).
    pub lagged_generations: Counter,
    /// Files truncated in place (copytruncate); reading restarts at 0.
    pub copytruncate: Counter,
    /// Files given up before their end, by reason (`deleted_grace`, `max_open_files`, `vanished`).
    pub files_given_up: Family<Reason, Counter>,
    /// Paths named like log files that are not read, by reason (`not_regular`: a FIFO, socket,
    /// directory or device; `broken_symlink`): counted once per path while it stays.
    pub paths_skipped: Family<Reason, Counter>,
    /// Bytes left unread in files given up.
    pub bytes_given_up: Counter,
    /// Read or open errors.
    pub read_errors: Counter,
    /// Full discovery scans.
    pub scans: Counter,
    /// Live files discovered.
    pub files_discovered: Counter,
    /// Checkpoint writes.
    pub checkpoint_writes: Counter,
    /// Failed checkpoint writes.
    pub checkpoint_errors: Counter,
    /// Checkpoint entries removed because their files are gone.
    pub checkpoint_gc: Counter,
    /// Record boundaries cut by time or memory, persisted before the record was sent (re-reads cut
    /// there again).
    pub cuts_recorded: Counter,
    /// Record boundaries cut by time or memory that could not be recorded (per-generation cap
    /// reached): a re-send after a crash may cut there differently.
    pub cuts_unrecorded: Counter,
    /// Times reading paused because `limits.inflight_bytes` was reached.
    pub backpressure: Counter,
    /// Files tracked.
    pub files: Gauge,
    /// Open file handles.
    pub open_files: Gauge,
    /// Bytes of records in flight (sent, not acknowledged).
    pub inflight_bytes: Gauge,
    /// Bytes held by pending partial and multiline records.
    pub pending_bytes: Gauge,
    /// Bytes not yet read in open files.
    pub lag_bytes: Gauge,
    /// Generations in the checkpoint.
    pub checkpoint_entries: Gauge,
    /// Records dropped by `rate_limit` (action `drop`), by namespace.
    pub rate_limited_records: Family<Namespace, Counter>,
    /// Message bytes dropped by `rate_limit`, by namespace.
    pub rate_limited_bytes: Family<Namespace, Counter>,
    /// Times a namespace's file was not read because its rate limit (action `delay`) was reached.
    pub rate_limit_delays: Family<Namespace, Counter>,
    /// Physical lines read, by namespace.
    pub namespace_lines: Family<Namespace, Counter>,
    /// Bytes read (uncompressed), by namespace.
    pub namespace_bytes: Family<Namespace, Counter>,
    /// Per file being read: bytes between its checkpoint and its end (read but not yet acknowledged,
    /// plus not yet read), refreshed every rescan; the series goes when the file is no longer read.
    pub checkpoint_lag: Family<File, Gauge>,
}

/// Metric handles of one file, resolved once when the file is discovered or its metadata resolved
/// (a `Family::get_or_create` locks and hashes; the read path must not do it per chunk or record).
#[derive(Debug, Clone, Default)]
pub struct FileCounters {
    /// `shipper_namespace_lines_read_total` of the file's namespace.
    pub namespace_lines: Counter,
    /// `shipper_namespace_bytes_read_total` of the file's namespace.
    pub namespace_bytes: Counter,
    /// The enrichment miss counter of the file's records while they carry path metadata only.
    pub miss: Option<Counter>,
}

/// A `path` label (the live file).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct File {
    /// `log.file.path`.
    pub path: String,
}

/// A `namespace` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Namespace {
    /// Kubernetes namespace (`""` outside the kubelet layout).
    pub namespace: String,
}

impl Namespace {
    /// The label of `namespace`.
    pub fn of(namespace: &str) -> Self {
        Namespace { namespace: namespace.to_owned() }
    }
}

impl Metrics {
    /// New metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry;
        r.register("shipper_lines_read", "Physical lines read", m.lines.clone());
        r.register("shipper_bytes_read", "Bytes read (uncompressed)", m.bytes.clone());
        r.register("shipper_records", "Records handed to the output", m.records.clone());
        r.register("shipper_records_acked", "Records acknowledged by the output", m.acked.clone());
        r.register(
            "shipper_records_skipped_acked",
            "Records not re-sent after a restart because they had been acknowledged",
            m.skipped_acked.clone(),
        );
        r.register(
            "shipper_records_resent",
            "Records re-sent after a restart below the highest acknowledged offset (possible duplicates, same id)",
            m.resent.clone(),
        );
        r.register("shipper_parse_errors", "Lines forwarded raw with tag parse_error", m.parse_errors.clone());
        r.register("shipper_truncated", "Records cut at parse.max_line_bytes", m.truncated.clone());
        r.register("shipper_invalid_utf8", "Records with invalid UTF-8 replaced", m.invalid_utf8.clone());
        r.register("shipper_partial_flushed", "Partial lines sent without final fragment", m.partial_flushed.clone());
        r.register("shipper_multiline_records", "Records joined by a multiline rule", m.multiline.clone());
        r.register("shipper_rotations", "Rotations noticed", m.rotations.clone());
        r.register("shipper_generations_completed", "Generations read to their end", m.generations_completed.clone());
        r.register(
            "shipper_lagged_generations",
            "Generations read from their rotated or gzipped file",
            m.lagged_generations.clone(),
        );
        r.register("shipper_copytruncate", "Files truncated in place", m.copytruncate.clone());
        r.register("shipper_files_given_up", "Files given up before their end", m.files_given_up.clone());
        r.register(
            "shipper_log_paths_skipped",
            "Paths named like log files that are not read (not a regular file, broken symlink), once per path",
            m.paths_skipped.clone(),
        );
        r.register("shipper_bytes_given_up", "Bytes left unread in files given up", m.bytes_given_up.clone());
        r.register("shipper_read_errors", "Read or open errors", m.read_errors.clone());
        r.register("shipper_scans", "Full discovery scans", m.scans.clone());
        r.register("shipper_files_discovered", "Live files discovered", m.files_discovered.clone());
        r.register("shipper_checkpoint_writes", "Checkpoint writes", m.checkpoint_writes.clone());
        r.register("shipper_checkpoint_errors", "Failed checkpoint writes", m.checkpoint_errors.clone());
        r.register("shipper_checkpoint_gc", "Checkpoint entries of gone files removed", m.checkpoint_gc.clone());
        r.register(
            "shipper_record_cuts_recorded",
            "Record boundaries cut by time or memory, persisted before sending",
            m.cuts_recorded.clone(),
        );
        r.register(
            "shipper_record_cuts_unrecorded",
            "Record boundaries cut by time or memory not persisted (cap reached)",
            m.cuts_unrecorded.clone(),
        );
        r.register("shipper_backpressure", "Pauses because limits.inflight_bytes was reached", m.backpressure.clone());
        r.register("shipper_files", "Files tracked", m.files.clone());
        r.register("shipper_open_files", "Open file handles", m.open_files.clone());
        r.register("shipper_inflight_bytes", "Bytes of records sent and not acknowledged", m.inflight_bytes.clone());
        r.register("shipper_pending_bytes", "Bytes of partial and multiline records pending", m.pending_bytes.clone());
        r.register("shipper_lag_bytes", "Bytes not yet read in open files", m.lag_bytes.clone());
        r.register("shipper_checkpoint_entries", "Generations in the checkpoint", m.checkpoint_entries.clone());
        r.register(
            "shipper_rate_limited_records",
            "Records dropped by rate_limit, by namespace",
            m.rate_limited_records.clone(),
        );
        r.register(
            "shipper_rate_limited_bytes",
            "Message bytes dropped by rate_limit, by namespace",
            m.rate_limited_bytes.clone(),
        );
        r.register("shipper_namespace_lines_read", "Physical lines read, by namespace", m.namespace_lines.clone());
        r.register("shipper_namespace_bytes_read", "Bytes read, by namespace", m.namespace_bytes.clone());
        r.register(
            "shipper_checkpoint_lag_bytes",
            "Bytes between a file's checkpoint and its end, per file being read",
            m.checkpoint_lag.clone(),
        );
        r.register(
            "shipper_rate_limit_delays",
            "File reads postponed by a namespace's rate limit (delay), by namespace",
            m.rate_limit_delays.clone(),
        );
        m
    }

    /// The per-namespace counters of a file in `namespace` (no miss counter yet).
    pub fn file_counters(&self, namespace: &str) -> FileCounters {
        let ns = Namespace::of(namespace);
        FileCounters {
            namespace_lines: self.namespace_lines.get_or_create(&ns).clone(),
            namespace_bytes: self.namespace_bytes.get_or_create(&ns).clone(),
            miss: None,
        }
    }

    /// Counts `reason` in a family.
    pub fn inc(family: &Family<Reason, Counter>, reason: &'static str) {
        family.get_or_create(&Reason { reason }).inc();
    }
}
