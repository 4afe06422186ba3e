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
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Batcher, RecordRef};
use crate::bulk::Backlog;
use crate::config::IndexerConfig;
use crate::metrics::Metrics;
use crate::settle::Tracker;

/// Batches without a concurrency slot the consumer may have dispatched before it stops reading:
/// one waiting for the next slot, one behind it, so Elasticsearch never waits for the consumer.
pub const READ_AHEAD: usize = 2;

/// Records taken from librdkafka's queue in one go (without waiting) before the loop's
/// housekeeping (linger, commits, back-pressure) runs again.
const BURST: usize = 512;

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
        }
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
        let pair = |i| {
            let h = headers.expect("count > 0 means headers").get(i);
            (h.key, h.value)
        };
        let mut stack: [(&str, Option<&[u8]>); STACK] = [("", None); STACK];
        let heap: Vec<(&str, Option<&[u8]>)>;
        let pairs = if count <= STACK {
            for (i, slot) in stack.iter_mut().enumerate().take(count) {
                *slot = pair(i);
            }
            &stack[..count]
        } else {
            heap = (0..count).map(pair).collect();
            &heap[..]
        };
        let record = RecordRef {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload(),
            headers: pairs.iter().copied(),
        };
        self.batcher.lock().expect("batcher lock").push(record, out);
        for batch in out.drain(..) {
            self.dispatch(batch);
        }
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
        let Ok(assignment) = consumer.assignment() else { return };
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
        let started = Instant::now();
        self.flush();
        let settled = !lost && self.wait_settled(&partitions, started + self.revoke_timeout);
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
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for &p in &partitions {
                tracker.assign(p);
            }
            self.metrics.assigned_partitions.set(tracker.partitions().len() as i64);
        }
        if self.paused.load(Ordering::Relaxed) {
            if let Err(err) = consumer.pause(tpl) {
                tracing::warn!(error = %err, "cannot pause newly assigned partitions");
            }
            let paused = consumer.assignment().map_or(0, |a| a.count());
            self.metrics.paused_partitions.set(paused as i64);
        }
        tracing::info!(?partitions, "partitions assigned");
    }
}

/// The consumer context: rebalance handling, commit results, statistics (lag).
#[derive(Debug, Clone)]
pub struct IndexerContext {
    shared: Arc<Shared>,
}

impl IndexerContext {
    /// A context over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        IndexerContext { shared }
    }
}

impl ClientContext for IndexerContext {
    fn stats(&self, statistics: Statistics) {
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
        match rebalance {
            Rebalance::Revoke(tpl) => self.shared.on_revoke(consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.on_assign(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
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
pub fn client_config(config: &IndexerConfig) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    for (key, value) in &k.properties {
        c.set(key, value.expose());
    }
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("group.id", &k.group_id)
        .set("client.id", "sluice-indexer")
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
    c
}

/// Creates the consumer and subscribes to the topic.
pub fn create(config: &IndexerConfig, shared: Arc<Shared>) -> KafkaResult<BaseConsumer<IndexerContext>> {
    let consumer: BaseConsumer<IndexerContext> =
        client_config(config).create_with_context(IndexerContext::new(shared))?;
    consumer.subscribe(&[&config.kafka.topic])?;
    Ok(consumer)
}

/// The consumer loop; runs on its own thread until `shutdown`, then drains: dispatches the
/// pending batch, waits up to `kafka.revoke_timeout` for in-flight records, commits, and leaves
/// the group.
pub fn run(
    consumer: BaseConsumer<IndexerContext>,
    shared: Arc<Shared>,
    commit_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last_commit = Instant::now();
    let mut out = Vec::new();
    let mut last_error: Option<Instant> = None;
    let mut full_since: Option<Instant> = None;
    let max_bytes = shared.max_in_flight_bytes;
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
            if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(error = %err, "Kafka consumer error (repeats are logged every 10 s)");
                last_error = Some(Instant::now());
            }
        };
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
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
            }
            Some(Err(err)) => report(err),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            shared.flush();
        }
        if last_commit.elapsed() >= commit_interval {
            shared.commit(&consumer, None, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    tracing::info!("draining: no more records are read; waiting for in-flight records to settle");
    shared.flush();
    shared.set_paused(&consumer, true);
    let deadline = Instant::now() + shared.revoke_timeout;
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
