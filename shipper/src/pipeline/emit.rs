//! record → publish: builds records from a reader's messages, skips acknowledged ones, applies
//! the rate limit, journals irregular cuts before sending, and tracks what is in flight.

use super::*;

/// The [`Output`] of a reader inside the pipeline: builds records, skips acknowledged ones, tracks.
pub(super) struct Emit<'a, S: Sink> {
    sink: &'a mut S,
    builder: &'a mut RecordBuilder,
    pub(super) metrics: &'a Metrics,
    meta: &'a FileMeta,
    pub(super) generation: &'a mut GenState,
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
    pub(super) limited: bool,
}

/// Lines of one generation dropped by the rate limit since its last admitted record.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Dropped {
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
        let rec = self.builder.build_with_suffix(self.meta, self.generation.id, &msg, "-rate-limited");
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
    /// The [`Output`] emitting records of generation `key` of `meta`'s file (stopping at `limit`
    /// in-flight bytes), with the pending budgets and the read buffer the reader uses beside it.
    pub(super) fn emit<'a>(
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
}
