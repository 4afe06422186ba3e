//! Consume (and commit): a `BaseConsumer` in a consumer group, polled on a dedicated thread.
//!
//! - Cooperative-sticky assignment; `enable.auto.commit=false`, `enable.auto.offset.store=false`:
//!   offsets are committed explicitly, only up to each partition's settled prefix
//!   ([`crate::settle`]), every `kafka.commit_interval` and at revocation.
//! - Records go straight from librdkafka's buffer into the [`Batcher`] (one copy), and full
//!   batches to the bulk stage over a channel.
//! - Back-pressure, in two steps. (1) The consumer reads ahead at most [`READ_AHEAD`] batches that
//!   have no concurrency slot yet, and never past `batch.max_in_flight_bytes`: beyond that it stops
//!   taking records from librdkafka, whose prefetch queue (bounded by `kafka.prefetch_bytes`) fills
//!   and stops fetching — the only buffer meanwhile. (2) If that lasts `kafka.pause_after` (no slot
//!   freed: Elasticsearch slow, down, or pushing back), every assigned partition is paused and
//!   polling continues, so the member stays in the group and serves rebalances; they resume when
//!   the backlog drains. Pausing at once on every full pipeline would be wrong for throughput:
//!   librdkafka discards the prefetched records of a paused partition, and a saturated pipeline
//!   is full almost all the time, so every slot would cost a refetch.
//! - Revocation ([`IndexerContext`]): the pending batch is dispatched, the revoked partitions' in-flight
//!   records get up to `kafka.revoke_timeout` to settle, the settled prefix is committed
//!   synchronously, then the partitions are released. What did not settle is abandoned: the next
//!   owner reads it again from the committed offset and `op_type=create` answers 409.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use sluice_common::kafka::{SecurityWatch, log_through};
use sluice_common::server::Health;

use crate::backlog::Backlog;
use crate::batch::{Batch, Batcher, LatePolicy, RecordRef};
use crate::config::IndexerConfig;
use crate::metrics::Metrics;
use crate::settle::Tracker;

/// Batches without a concurrency slot the consumer may have dispatched before it stops reading:
/// one waiting for the next slot, one behind it, so Elasticsearch never waits for the consumer.
pub const READ_AHEAD: usize = 2;

/// Records taken from librdkafka's queue in one go (without waiting) before the loop's
/// housekeeping (linger, commits, back-pressure) runs again.
const BURST: usize = 512;

/// How long an asynchronous commit may stay unanswered before the next one is sent anyway.
const COMMIT_ANSWER_WAIT: Duration = Duration::from_secs(15);

/// A batch handed to the bulk stage, with the bytes it counts in the [`Backlog`].
#[derive(Debug)]
pub struct Dispatched {
    /// The batch.
    pub batch: Batch,
    /// Its memory.
    pub memory: usize,
}

/// State shared by the consumer thread and its rebalance callbacks.
#[derive(Debug)]
pub struct Shared {
    topic: String,
    tracker: Arc<Mutex<Tracker>>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
    batcher: Mutex<Batcher>,
    tx: mpsc::UnboundedSender<Dispatched>,
    revoke_timeout: Duration,
    max_in_flight_bytes: usize,
    pause_after: Duration,
    paused: AtomicBool,
    /// `kafka.max_unsettled_span`: a partition whose unsettled span exceeds it is paused alone.
    max_unsettled_span: u64,
    /// Partitions paused because their unsettled span is too long (see [`Shared::bound_spans`]).
    span_paused: Mutex<Vec<i32>>,
    /// Set when shutdown starts: every later revocation (the one librdkafka runs while closing)
    /// shares this deadline instead of waiting `kafka.revoke_timeout` again.
    shutdown_deadline: Mutex<Option<Instant>>,
    retention_days: u32,
    late_policy: LatePolicy,
    /// Authentication, TLS and ACL failures: logged once, shown on `/readyz`.
    security: Arc<SecurityWatch>,
    /// The consumer group as last seen (see [`GroupWatch`]).
    group: Mutex<GroupWatch>,
    /// After a lost assignment, how long the member may stay without one in an unassign join
    /// state before the consumer is rebuilt (see [`Shared::stuck_without_assignment`]).
    rejoin_deadline: Duration,
    /// The [`IndexerContext::id`] of the consumer in use: callbacks of a retired one are ignored.
    current_consumer: std::sync::atomic::AtomicU64,
}

/// What the consumer loop knows about its group membership, for the one recovery librdkafka
/// needs help with.
///
/// librdkafka 2.12 can stay in the join state `wait-incr-unassign-to-complete` for good when the
/// assignment is lost (the coordinator unreachable past `session.timeout.ms`, e.g. a broker
/// restart) while asynchronous offset commits are outstanding and all of them then fail locally
/// ("Waiting for coordinator"): the unassign waits for those commits, and their failure does not
/// finish it, so the member never rejoins and the partitions are never consumed again (seen in
/// fault-matrix row 2 on a loaded machine). The loop keeps at most one commit outstanding, and
/// rebuilds the consumer if the member is still stuck after [`Shared::rejoin_deadline`].
#[derive(Debug, Default)]
struct GroupWatch {
    /// When the assignment was lost, until partitions are assigned again.
    lost_since: Option<Instant>,
    /// The group's join state from the last statistics report, and since when it is that.
    join_state: String,
    join_state_since: Option<Instant>,
    /// An asynchronous commit sent and not answered yet (its callback clears it).
    commit_outstanding: Option<Instant>,
}

impl Shared {
    /// Creates the shared state; batches go to `tx`.
    pub fn new(
        config: &IndexerConfig,
        batcher: Batcher,
        tracker: Arc<Mutex<Tracker>>,
        backlog: Arc<Backlog>,
        metrics: Metrics,
        tx: mpsc::UnboundedSender<Dispatched>,
    ) -> Self {
        Shared {
            topic: config.kafka.topic.clone(),
            tracker,
            backlog,
            metrics,
            batcher: Mutex::new(batcher),
            tx,
            revoke_timeout: config.kafka.revoke_timeout,
            max_in_flight_bytes: config.batch.max_in_flight_bytes.as_usize(),
            pause_after: config.kafka.pause_after,
            paused: AtomicBool::new(false),
            max_unsettled_span: config.kafka.max_unsettled_span,
            span_paused: Mutex::new(Vec::new()),
            shutdown_deadline: Mutex::new(None),
            retention_days: config.retention.days,
            late_policy: config.retention.late_records,
            security: Arc::new(SecurityWatch::new("indexer consumer", &config.kafka.security)),
            group: Mutex::new(GroupWatch::default()),
            rejoin_deadline: (config.kafka.session_timeout * 2).max(Duration::from_secs(20)),
            current_consumer: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the member lost its assignment longer than [`Shared::rejoin_deadline`] ago and
    /// librdkafka's statistics have shown it in an unassign join state for half that time (see
    /// [`GroupWatch`]). A normal unassign takes milliseconds.
    fn stuck_without_assignment(&self) -> bool {
        let group = self.group.lock().expect("group lock");
        let lost_long = group.lost_since.is_some_and(|t| t.elapsed() >= self.rejoin_deadline);
        let unassigning = group.join_state.contains("unassign")
            && group.join_state_since.is_some_and(|t| t.elapsed() >= self.rejoin_deadline / 2);
        lost_long && unassigning
    }

    /// Reports Kafka security failures (wrong password, untrusted certificate, missing ACL) also
    /// on `/readyz` of `health`.
    pub fn with_health(mut self, config: &IndexerConfig, health: Health) -> Self {
        self.security = Arc::new(SecurityWatch::new("indexer consumer", &config.kafka.security).with_health(health));
        self
    }

    /// Registers a batch's records with the tracker and hands it to the bulk stage.
    fn dispatch(&self, mut batch: Batch) {
        self.tracker.lock().expect("tracker lock").dispatch(&mut batch.items);
        let memory = batch.memory();
        tracing::trace!(docs = batch.items.len(), bytes = batch.body.len(), "batch dispatched");
        self.backlog.add(memory);
        self.metrics.in_flight_bytes.set(self.backlog.bytes() as i64);
        if self.tx.send(Dispatched { batch, memory }).is_err() {
            // The bulk stage is gone (shutdown): the records stay unsettled and uncommitted.
            self.backlog.started();
            self.backlog.release(memory);
        }
    }

    /// Adds a record to the pending batch; dispatches the batches it completes.
    fn take(&self, message: &BorrowedMessage<'_>, out: &mut Vec<Batch>) {
        // The header pairs are walked twice (dead-letter copy, contract check): read them from
        // librdkafka once.
        const STACK: usize = 8;
        let headers = message.headers();
        let count = headers.map_or(0, |h| h.count());
        let mut bad_key: Option<usize> = None;
        let mut pair = |i: usize| {
            let Some((key, value)) = headers.and_then(|h| header_at(h, i)) else { return ("", None) };
            match std::str::from_utf8(key) {
                Ok(key) => (key, value),
                Err(_) => {
                    bad_key.get_or_insert(i);
                    ("", value)
                }
            }
        };
        let mut stack: [(&str, Option<&[u8]>); STACK] = [("", None); STACK];
        let heap: Vec<(&str, Option<&[u8]>)>;
        let pairs = if count <= STACK {
            for (i, slot) in stack.iter_mut().enumerate().take(count) {
                *slot = pair(i);
            }
            &stack[..count]
        } else {
            heap = (0..count).map(&mut pair).collect();
            &heap[..]
        };
        let mut batcher = self.batcher.lock().expect("batcher lock");
        if let Some(first_bad) = bad_key {
            // A header key that is not UTF-8 breaks the contract (and rdkafka's `Headers::get` and
            // `try_get` would panic on it): dead-letter the record, keys written lossily.
            let lossy: Vec<(String, Option<&[u8]>)> = (0..count)
                .map(|i| {
                    let (key, value) = headers.and_then(|h| header_at(h, i)).unwrap_or((&[], None));
                    (String::from_utf8_lossy(key).into_owned(), value)
                })
                .collect();
            let reason = format!(
                "header key {:?} (#{first_bad}) is not UTF-8; keys are written to the dead letter with U+FFFD",
                lossy[first_bad].0
            );
            let record = RecordRef {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                payload: message.payload(),
                headers: lossy.iter().map(|(k, v)| (k.as_str(), *v)),
            };
            batcher.push_rejected(record, reason, out);
        } else {
            let record = RecordRef {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                payload: message.payload(),
                headers: pairs.iter().copied(),
            };
            batcher.push(record, out);
        }
        drop(batcher);
        for batch in out.drain(..) {
            self.dispatch(batch);
        }
    }

    /// Refreshes the retention cutoff of the batcher (the date moves) and counts late records.
    fn retention_tick(&self) {
        let mut batcher = self.batcher.lock().expect("batcher lock");
        let cutoff = (self.retention_days > 0).then(|| {
            time::OffsetDateTime::now_utc().date().saturating_sub(time::Duration::days(i64::from(self.retention_days)))
        });
        batcher.set_retention(cutoff, self.late_policy);
        let (dead_lettered, indexed) = batcher.take_late();
        drop(batcher);
        self.metrics.late_records(dead_lettered, indexed);
    }

    /// Dispatches the pending batch now.
    fn flush(&self) {
        let batch = self.batcher.lock().expect("batcher lock").take();
        if let Some(batch) = batch {
            self.dispatch(batch);
        }
    }

    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect()
    }

    /// Commits the settled prefix of `only` (or all) partitions.
    fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, only: Option<&[i32]>, mode: CommitMode) {
        let points = self.tracker.lock().expect("tracker lock").commit_points(only);
        if points.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in &points {
            if tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).is_err() {
                return;
            }
        }
        let sync = matches!(mode, CommitMode::Sync);
        if !sync {
            // At most one asynchronous commit outstanding (see [`GroupWatch`]). One unanswered for
            // COMMIT_ANSWER_WAIT is given up on: longer than a commit waiting for an absent
            // coordinator takes to fail (~11 s measured), short enough that a commit whose answer
            // never reaches the loop (seen in CI with the dead-letter topic blocked and back) delays
            // the next one by seconds, not a minute.
            let mut group = self.group.lock().expect("group lock");
            match group.commit_outstanding {
                Some(t) if t.elapsed() < COMMIT_ANSWER_WAIT => return,
                Some(_) => tracing::debug!(
                    "an asynchronous commit is unanswered after {COMMIT_ANSWER_WAIT:?}; committing again"
                ),
                None => {}
            }
            group.commit_outstanding = Some(Instant::now());
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                if sync {
                    self.metrics.commit(true);
                    let mut tracker = self.tracker.lock().expect("tracker lock");
                    for (partition, offset) in points {
                        tracker.committed(partition, offset);
                    }
                }
            }
            Err(err) => {
                if !sync {
                    self.group.lock().expect("group lock").commit_outstanding = None;
                }
                self.metrics.commit(false);
                tracing::warn!(error = %err, "offset commit failed; the next commit retries");
            }
        }
    }

    /// Whether the consumer must not take more records: [`READ_AHEAD`] batches wait for a slot,
    /// or the bytes in flight reached `batch.max_in_flight_bytes`.
    fn full(backlog: &Backlog, max_in_flight_bytes: usize) -> bool {
        backlog.queued() >= READ_AHEAD || backlog.bytes() >= max_in_flight_bytes
    }

    /// Pauses the assignment when the pipeline has been full for `kafka.pause_after` (`full_for`);
    /// resumes it once the pipeline has room again and the bytes in flight fell below ¾ of the bound.
    fn apply_backpressure<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, full_for: Option<Duration>) {
        let paused = self.paused.load(Ordering::Relaxed);
        if !paused && full_for.is_some_and(|d| d >= self.pause_after) {
            self.set_paused(consumer, true);
        } else if paused && full_for.is_none() && self.backlog.bytes() < self.max_in_flight_bytes / 4 * 3 {
            self.set_paused(consumer, false);
        }
    }

    fn set_paused<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, pause: bool) {
        let Ok(mut assignment) = consumer.assignment() else { return };
        if !pause {
            // Partitions paused for their unsettled span stay paused.
            let span_paused = self.span_paused.lock().expect("span lock").clone();
            if !span_paused.is_empty() {
                let mut keep = TopicPartitionList::new();
                for e in assignment.elements() {
                    if !(e.topic() == self.topic && span_paused.contains(&e.partition())) {
                        keep.add_partition(e.topic(), e.partition());
                    }
                }
                assignment = keep;
            }
        }
        let result = if pause {
            consumer.pause(&assignment)
        } else {
            // librdkafka restarts fetching a resumed partition only at its next internal timer
            // (~1 s later); seeking to the current position restarts it at once. Nothing was read
            // since the position was taken (this thread is the only reader): no gap, no repeat.
            let positions = consumer.position();
            let resumed = consumer.resume(&assignment);
            if let (Ok(()), Ok(positions)) = (&resumed, positions) {
                let mut seek = TopicPartitionList::new();
                for e in positions.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        let _ = seek.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
                    }
                }
                if seek.count() > 0
                    && let Err(err) = consumer.seek_partitions(seek, Duration::ZERO)
                {
                    tracing::debug!(error = %err, "seek after resume failed; fetching resumes on librdkafka's timer");
                }
            }
            resumed
        };
        match result {
            Ok(()) => {
                self.paused.store(pause, Ordering::Relaxed);
                let n = if pause { assignment.count() as i64 } else { 0 };
                self.metrics.paused_partitions.set(n);
                tracing::debug!(pause, partitions = assignment.count(), "back-pressure");
            }
            Err(err) => tracing::warn!(error = %err, pause, "cannot pause/resume partitions"),
        }
    }

    /// Pauses each partition whose unsettled span (first unsettled offset to last dispatched one)
    /// exceeds `kafka.max_unsettled_span`, and resumes it once the span fell below half of it. One
    /// stuck record then holds back its own partition only, by a bounded number of offsets (what a
    /// restart re-reads), while the others go on.
    fn bound_spans<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let spans = self.tracker.lock().expect("tracker lock").spans();
        let mut span_paused = self.span_paused.lock().expect("span lock");
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (partition, span) in spans {
            let paused = span_paused.contains(&partition);
            if !paused && span > self.max_unsettled_span {
                pause.add_partition(&self.topic, partition);
                span_paused.push(partition);
                tracing::warn!(
                    partition,
                    span,
                    max = self.max_unsettled_span,
                    "partition paused: a record far behind is still not settled (kafka.max_unsettled_span)"
                );
            } else if paused && span <= self.max_unsettled_span / 2 {
                span_paused.retain(|&p| p != partition);
                if !self.paused.load(Ordering::Relaxed) {
                    resume.add_partition(&self.topic, partition);
                }
                tracing::info!(partition, span, "partition resumed: its unsettled span is short again");
            }
        }
        // Partitions no longer assigned are forgotten.
        let assigned = self.tracker.lock().expect("tracker lock").partitions();
        span_paused.retain(|p| assigned.contains(p));
        self.metrics.span_paused_partitions.set(span_paused.len() as i64);
        drop(span_paused);
        if pause.count() > 0
            && let Err(err) = consumer.pause(&pause)
        {
            tracing::warn!(error = %err, "cannot pause partitions");
        }
        if resume.count() > 0 {
            if let Err(err) = consumer.resume(&resume) {
                tracing::warn!(error = %err, "cannot resume partitions");
            } else {
                self.seek_to_position(consumer, &resume);
            }
        }
    }

    /// Restarts fetching of resumed partitions at once (see [`Shared::set_paused`]).
    fn seek_to_position<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, partitions: &TopicPartitionList) {
        let Ok(positions) = consumer.position() else { return };
        let mut seek = TopicPartitionList::new();
        for e in positions.elements() {
            let wanted = partitions.elements().iter().any(|p| p.topic() == e.topic() && p.partition() == e.partition());
            if let (true, Offset::Offset(o)) = (wanted, e.offset()) {
                let _ = seek.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
            }
        }
        if seek.count() > 0
            && let Err(err) = consumer.seek_partitions(seek, Duration::ZERO)
        {
            tracing::debug!(error = %err, "seek after resume failed; fetching resumes on librdkafka's timer");
        }
    }

    /// Waits until `partitions` have nothing in flight, or the deadline passes.
    fn wait_settled(&self, partitions: &[i32], deadline: Instant) -> bool {
        loop {
            let in_flight: usize = {
                let tracker = self.tracker.lock().expect("tracker lock");
                partitions.iter().map(|&p| tracker.in_flight(p)).sum()
            };
            if in_flight == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn on_revoke(&self, consumer: &BaseConsumer<IndexerContext>, tpl: &TopicPartitionList) {
        let partitions = self.partitions_of(tpl);
        if partitions.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        self.metrics.rebalance(if lost { "lost" } else { "revoke" });
        if lost {
            self.group.lock().expect("group lock").lost_since = Some(Instant::now());
        }
        let started = Instant::now();
        self.flush();
        let in_flight: usize = {
            let tracker = self.tracker.lock().expect("tracker lock");
            partitions.iter().map(|&p| tracker.in_flight(p)).sum()
        };
        // During shutdown the drain already waited: share its deadline, never wait twice.
        let shutdown = *self.shutdown_deadline.lock().expect("deadline lock");
        let deadline = shutdown.map_or(started + self.revoke_timeout, |d| d.min(started + self.revoke_timeout));
        let settled = !lost && self.wait_settled(&partitions, deadline);
        if !lost {
            self.commit(consumer, Some(&partitions), CommitMode::Sync);
        }
        let mut abandoned = 0;
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for &p in &partitions {
                abandoned += tracker.in_flight(p);
                tracker.revoke(p);
            }
            self.metrics.assigned_partitions.set(tracker.partitions().len() as i64);
        }
        for &p in &partitions {
            self.metrics.forget_partition(p);
        }
        if abandoned > 0 {
            self.metrics.abandoned.inc_by(abandoned as u64);
        }
        tracing::info!(
            ?partitions,
            lost,
            settled,
            abandoned,
            drained = in_flight.saturating_sub(abandoned),
            took = ?started.elapsed(),
            "partitions revoked (in-flight records {}, settled prefix committed)",
            if settled { "settled" } else { "abandoned after kafka.revoke_timeout" }
        );
    }

    fn on_assign(&self, consumer: &BaseConsumer<IndexerContext>, tpl: &TopicPartitionList) {
        let partitions = self.partitions_of(tpl);
        if partitions.is_empty() {
            return;
        }
        self.metrics.rebalance("assign");
        self.group.lock().expect("group lock").lost_since = None;
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for &p in &partitions {
                tracker.assign(p);
            }
            self.metrics.assigned_partitions.set(tracker.partitions().len() as i64);
        }
        // A partition re-assigned starts with no span pause of ours.
        self.span_paused.lock().expect("span lock").retain(|p| !partitions.contains(p));
        if self.paused.load(Ordering::Relaxed) {
            if let Err(err) = consumer.pause(tpl) {
                tracing::warn!(error = %err, "cannot pause newly assigned partitions");
            }
            let paused = consumer.assignment().map_or(0, |a| a.count());
            self.metrics.paused_partitions.set(paused as i64);
        } else if let Err(err) = consumer.resume(tpl) {
            // librdkafka keeps a partition's pause flag across revoke and re-assignment: a partition
            // paused by back-pressure, revoked while paused and assigned back later would otherwise
            // never be fetched again (seen as a silent stall in fault-matrix row 6).
            tracing::warn!(error = %err, "cannot resume newly assigned partitions");
        }
        tracing::info!(?partitions, "partitions assigned");
    }
}

/// The consumer context: rebalance handling, commit results, statistics (lag).
#[derive(Debug, Clone)]
pub struct IndexerContext {
    shared: Arc<Shared>,
    /// Which consumer of this process it serves (a rebuilt consumer gets the next id).
    id: u64,
}

impl IndexerContext {
    /// A context over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        let id = shared.current_consumer.fetch_add(1, Ordering::SeqCst) + 1;
        IndexerContext { shared, id }
    }

    /// Whether this context's consumer is the one in use (not one retired by a rebuild).
    fn current(&self) -> bool {
        self.shared.current_consumer.load(Ordering::SeqCst) == self.id
    }
}

impl ClientContext for IndexerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_through(&self.shared.security, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !self.shared.security.observe_error(&error, reason) {
            tracing::warn!("Kafka consumer error: {error}: {reason}");
        }
    }

    fn stats(&self, statistics: Statistics) {
        if !self.current() {
            return;
        }
        if let Some(cgrp) = &statistics.cgrp {
            let mut group = self.shared.group.lock().expect("group lock");
            if group.join_state != cgrp.join_state {
                group.join_state.clone_from(&cgrp.join_state);
                group.join_state_since = Some(Instant::now());
            }
        }
        let Some(topic) = statistics.topics.get(&self.shared.topic) else { return };
        let assigned = self.shared.tracker.lock().expect("tracker lock").partitions();
        for (partition, stats) in &topic.partitions {
            if stats.consumer_lag >= 0 && assigned.contains(partition) {
                self.shared.metrics.lag(*partition, stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for IndexerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !self.current() {
            return;
        }
        match rebalance {
            Rebalance::Revoke(tpl) => self.shared.on_revoke(consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !self.current() {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.on_assign(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if !self.current() {
            return;
        }
        self.shared.group.lock().expect("group lock").commit_outstanding = None;
        match result {
            Ok(()) => {
                self.shared.security.clear();
                self.shared.metrics.commit(true);
                let mut tracker = self.shared.tracker.lock().expect("tracker lock");
                for e in offsets.elements() {
                    if let (true, Offset::Offset(o)) = (e.topic() == self.shared.topic, e.offset()) {
                        tracker.committed(e.partition(), o);
                    }
                }
            }
            Err(err) => {
                self.shared.metrics.commit(false);
                tracing::warn!(error = %err, "offset commit failed; the next commit retries");
            }
        }
    }
}

/// The librdkafka consumer configuration.
pub fn client_config(config: &IndexerConfig) -> KafkaResult<ClientConfig> {
    let k = &config.kafka;
    let mut c = crate::kafka::base_config(config, "sluice-indexer")?;
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", k.session_timeout.as_millis().to_string())
        .set("max.poll.interval.ms", k.max_poll_interval.as_millis().to_string())
        .set("queued.max.messages.kbytes", (k.prefetch_bytes.0 / 1024).max(1).to_string())
        // Once a full prefetch queue drains, fetch again quickly (default 1 s).
        .set("fetch.queue.backoff.ms", "20")
        .set("statistics.interval.ms", "5000");
    if !k.properties.contains_key("auto.offset.reset") {
        c.set("auto.offset.reset", "earliest");
    }
    Ok(c)
}

/// Creates the consumer and subscribes to the topic.
pub fn create(config: &IndexerConfig, shared: Arc<Shared>) -> KafkaResult<BaseConsumer<IndexerContext>> {
    let consumer: BaseConsumer<IndexerContext> =
        client_config(config)?.create_with_context(IndexerContext::new(shared))?;
    consumer.subscribe(&[&config.kafka.topic])?;
    Ok(consumer)
}

/// The consumer loop; runs on its own thread until `shutdown`, then drains: dispatches the
/// pending batch, waits up to `kafka.revoke_timeout` for in-flight records, commits, and leaves
/// the group.
pub fn run(
    mut consumer: BaseConsumer<IndexerContext>,
    shared: Arc<Shared>,
    commit_interval: Duration,
    shutdown: CancellationToken,
    rebuild: &dyn Fn() -> KafkaResult<BaseConsumer<IndexerContext>>,
) {
    let mut last_commit = Instant::now();
    let mut out = Vec::new();
    let mut last_error: Option<Instant> = None;
    let mut full_since: Option<Instant> = None;
    let max_bytes = shared.max_in_flight_bytes;
    shared.retention_tick();
    while !shutdown.is_cancelled() {
        let full = Shared::full(&shared.backlog, max_bytes);
        let full_for = if full {
            let now = Instant::now();
            Some(now - *full_since.get_or_insert(now))
        } else {
            full_since = None;
            None
        };
        shared.apply_backpressure(&consumer, full_for);
        if let Some(full_for) = full_for
            && full_for < shared.pause_after
            && !shared.paused.load(Ordering::Relaxed)
        {
            // Not reading: librdkafka's prefetch queue (kafka.prefetch_bytes) is the buffer until
            // a slot frees, or for kafka.pause_after at most (then the partitions are paused and
            // polling resumes, serving rebalances).
            let wait = (shared.pause_after - full_for).min(Duration::from_millis(50));
            shared.backlog.wait_progress(wait, |b| !Shared::full(b, max_bytes));
            if last_commit.elapsed() >= commit_interval {
                shared.commit(&consumer, None, CommitMode::Async);
                shared.bound_spans(&consumer);
                last_commit = Instant::now();
            }
            continue;
        }
        let deadline = shared.batcher.lock().expect("batcher lock").deadline();
        // While paused, poll briefly so that reading resumes as soon as a slot frees.
        let max_wait =
            if shared.paused.load(Ordering::Relaxed) { Duration::from_millis(5) } else { Duration::from_millis(100) };
        let timeout = deadline.map_or(max_wait, |d| d.saturating_duration_since(Instant::now())).min(max_wait);
        let mut report = |err: KafkaError| {
            if shared.security.observe_error(&err, "") {
                return; // logged once, on /readyz
            }
            if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(error = %err, "Kafka consumer error (repeats are logged every 10 s)");
                last_error = Some(Instant::now());
            }
        };
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                shared.security.clear();
                shared.take(&message, &mut out);
                // Take what librdkafka has ready without waiting (no clock reads, no timers), up to
                // a burst, while the pipeline has room; the housekeeping below runs once per burst.
                for _ in 1..BURST {
                    if Shared::full(&shared.backlog, max_bytes) {
                        break;
                    }
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(message)) => shared.take(&message, &mut out),
                        Some(Err(err)) => {
                            report(err);
                            break;
                        }
                        None => break,
                    }
                }
                // A partition far behind its first unsettled record stops here, not a second later.
                shared.bound_spans(&consumer);
            }
            Some(Err(err)) => report(err),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            shared.flush();
        }
        if last_commit.elapsed() >= commit_interval {
            shared.commit(&consumer, None, CommitMode::Async);
            shared.bound_spans(&consumer);
            shared.retention_tick();
            if shared.stuck_without_assignment() {
                consumer = rebuilt(consumer, &shared, rebuild);
            }
            last_commit = Instant::now();
        }
    }
    tracing::info!("draining: no more records are read; waiting for in-flight records to settle");
    let deadline = Instant::now() + shared.revoke_timeout;
    *shared.shutdown_deadline.lock().expect("deadline lock") = Some(deadline);
    shared.flush();
    shared.set_paused(&consumer, true);
    loop {
        let in_flight = shared.tracker.lock().expect("tracker lock").total_in_flight();
        if in_flight == 0 || Instant::now() >= deadline {
            if in_flight > 0 {
                tracing::warn!(
                    in_flight,
                    "shutdown deadline reached; abandoning in-flight records (re-delivered later)"
                );
            }
            break;
        }
        // Keep serving callbacks; paused partitions deliver nothing (and anything that slips
        // through is simply not committed).
        let _ = consumer.poll(Duration::from_millis(10));
    }
    shared.commit(&consumer, None, CommitMode::Sync);
    // Dropping the consumer leaves the group (the revoke callback commits once more).
    drop(consumer);
    tracing::info!("consumer closed");
}

/// Replaces a consumer stuck without an assignment (see [`GroupWatch`]) by a new member of the
/// group. It owns no partition (the tracker forgot them when the assignment was lost), so nothing
/// is abandoned: the new member is assigned partitions and reads from the committed offsets.
fn rebuilt(
    old: BaseConsumer<IndexerContext>,
    shared: &Shared,
    rebuild: &dyn Fn() -> KafkaResult<BaseConsumer<IndexerContext>>,
) -> BaseConsumer<IndexerContext> {
    let stuck_for = shared.group.lock().expect("group lock").lost_since.map(|t| t.elapsed());
    match rebuild() {
        Ok(new) => {
            tracing::warn!(
                ?stuck_for,
                "no partitions since the assignment was lost and librdkafka is stuck unassigning: consumer rebuilt"
            );
            shared.metrics.rebalance("rebuilt");
            let mut group = shared.group.lock().expect("group lock");
            *group = GroupWatch { lost_since: Some(Instant::now()), ..GroupWatch::default() };
            drop(group);
            // Closing the old consumer may wait on the very state it is stuck in: on a thread of
            // its own (its callbacks are ignored, it is no longer current).
            let _ = std::thread::Builder::new().name("kafka-consumer-retired".into()).spawn(move || drop(old));
            new
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot rebuild the stuck consumer; trying again later");
            old
        }
    }
}

/// Header `idx` as raw bytes. rdkafka's `Headers::get` and `Headers::try_get` both `unwrap` the
/// UTF-8 conversion of the key, so one record with a non-UTF-8 header key would panic the consumer
/// thread; this reads the same librdkafka accessor without the conversion.
#[allow(unsafe_code)]
fn header_at(headers: &BorrowedHeaders, idx: usize) -> Option<(&[u8], Option<&[u8]>)> {
    use rdkafka::bindings::{rd_kafka_header_get_all, rd_kafka_headers_t, rd_kafka_resp_err_t};
    let ptr = headers as *const BorrowedHeaders as *const rd_kafka_headers_t;
    let mut name: *const std::ffi::c_char = std::ptr::null();
    let mut value: *const std::ffi::c_void = std::ptr::null();
    let mut size: usize = 0;
    // SAFETY: `BorrowedHeaders` is rdkafka's zero-sized view of the `rd_kafka_headers_t` it
    // points to (its own `try_get` casts the same way), alive as long as `headers`; librdkafka
    // returns pointers into that list (name NUL-terminated, value `size` bytes or NULL), which
    // live as long as the message, hence as long as `headers`.
    unsafe {
        let err = rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size);
        if err != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        let key = std::ffi::CStr::from_ptr(name).to_bytes();
        let value = (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Limits;
    use crate::index::IndexPattern;
    use crate::settle::Tracker;

    fn shared(session_timeout: Duration) -> Arc<Shared> {
        let mut config = IndexerConfig::default();
        config.kafka.session_timeout = session_timeout;
        let pattern = IndexPattern::parse(&config.elasticsearch.index).unwrap();
        let limits = Limits { max_bytes: 1 << 20, max_docs: 100, linger: Duration::from_millis(10) };
        let (tx, _rx) = mpsc::unbounded_channel();
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let tracker = Arc::new(Mutex::new(Tracker::new()));
        Arc::new(Shared::new(&config, Batcher::new(pattern, limits), tracker, Arc::default(), metrics, tx))
    }

    fn ago(secs: u64) -> Option<Instant> {
        Instant::now().checked_sub(Duration::from_secs(secs))
    }

    #[test]
    fn a_member_is_stuck_only_when_lost_long_ago_and_unassigning_for_long() {
        // session.timeout.ms 10 s: the deadline is 20 s, the unassign state must last 10 s.
        let shared = shared(Duration::from_secs(10));
        assert!(!shared.stuck_without_assignment(), "a fresh member");
        let set = |lost: u64, state: &str, since: u64| {
            let mut group = shared.group.lock().unwrap();
            group.lost_since = ago(lost);
            group.join_state = state.into();
            group.join_state_since = ago(since);
        };
        set(30, "wait-incr-unassign-to-complete", 15);
        assert!(shared.stuck_without_assignment());
        set(30, "wait-unassign-to-complete", 15);
        assert!(shared.stuck_without_assignment());
        set(30, "wait-join", 15);
        assert!(!shared.stuck_without_assignment(), "rejoining is progress, not stuck");
        set(30, "wait-incr-unassign-to-complete", 3);
        assert!(!shared.stuck_without_assignment(), "an unassign that just began");
        set(5, "wait-incr-unassign-to-complete", 5);
        assert!(!shared.stuck_without_assignment(), "lost only 5 s ago");
        shared.group.lock().unwrap().lost_since = None;
        assert!(!shared.stuck_without_assignment(), "assigned again");
    }

    #[test]
    fn only_the_newest_consumer_context_is_current() {
        let shared = shared(Duration::from_secs(45));
        let first = IndexerContext::new(shared.clone());
        assert!(first.current());
        let second = IndexerContext::new(shared.clone());
        assert!(second.current() && !first.current(), "a rebuilt consumer retires the old one's callbacks");
    }

    #[test]
    fn at_most_one_asynchronous_commit_is_outstanding() {
        let shared = shared(Duration::from_secs(45));
        {
            // Offset 0 of partition 0 settled: a commit point (offset 1) to commit.
            let mut tracker = shared.tracker.lock().unwrap();
            let epoch = tracker.assign(0);
            let mut items = [crate::batch::Item::pending(0, 0, 0)];
            tracker.dispatch(&mut items);
            assert!(tracker.settle(0, epoch, 0));
            assert_eq!(tracker.commit_points(None), vec![(0, 1)]);
        }
        let consumer: BaseConsumer<IndexerContext> = client_config(&IndexerConfig::default())
            .unwrap()
            .create_with_context(IndexerContext::new(shared.clone()))
            .unwrap();
        let outstanding = ago(1);
        shared.group.lock().unwrap().commit_outstanding = outstanding;
        shared.commit(&consumer, None, CommitMode::Async);
        assert_eq!(shared.group.lock().unwrap().commit_outstanding, outstanding, "a second commit was sent");
        // Answered (the callback clears the mark): the next round commits again.
        shared.group.lock().unwrap().commit_outstanding = None;
        shared.commit(&consumer, None, CommitMode::Async);
        let sent = shared.group.lock().unwrap().commit_outstanding;
        assert!(sent.is_some_and(|t| t > outstanding.unwrap()), "no commit was sent: {sent:?}");
        // Closing waits for that commit to fail without a broker (tens of seconds): not closed.
        std::mem::forget(consumer);
    }
}
