//! Bulk: sends batches to `_bulk` and decides the fate of every item.
//!
//! | response | outcome |
//! |---|---|
//! | item 2xx | settled (`indexed`) |
//! | item 409 | settled (`duplicate`: already indexed — re-delivery is harmless) |
//! | item 429 / 5xx | retried alone, jittered exponential backoff, unlimited by default |
//! | item `cluster_block_exception`, `security_exception`, `index_not_found_exception` | write gate closed ([`WriteGate`]), retried as a slow probe |
//! | item other 4xx | dead-lettered with the reason, then settled |
//! | request 429, timeout | whole batch retried; the concurrency limit decreases |
//! | request refused / reset / 502–504 | whole batch retried on the next node (breaker counts it) |
//! | request 413 or other 4xx | batch split in halves until the offending item is alone, then dead-lettered |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use elasticsearch::http::Method;
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::batch::{Batch, Item};
use crate::config::RetryConfig;
use crate::dlq::{DeadLetters, Letter};
use crate::es::{BULK_FILTER_PATH, NodePool, RequestError};
use crate::metrics::Metrics;
use crate::overload::{Permit, WriteGate};
use crate::settle::Tracker;

/// Error type of dead letters whose retries ran out (`retry.max_attempts`).
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// The fate of one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Created.
    Indexed,
    /// 409: a document with this `_id` exists (an earlier delivery).
    Duplicate,
    /// Temporary failure: send again.
    Retry {
        /// Metric label: the Elasticsearch error type, or `http_<status>`.
        reason: String,
        /// Whether this is back-pressure (429) that should lower the concurrency.
        overload: bool,
    },
    /// Writes are refused for a reason that is not the record's fault and not overload.
    Blocked {
        /// The error, for logs.
        reason: String,
    },
    /// Permanent failure of this record: dead-letter it.
    Reject {
        /// Error class.
        error_type: String,
        /// Error reason.
        reason: String,
    },
}

/// Error types that mean "writes are refused" rather than "this document is bad".
const BLOCKING_ERRORS: [&str; 3] = ["cluster_block_exception", "security_exception", "index_not_found_exception"];

/// Classifies one item from its status and error.
pub fn classify_item(status: u16, error: Option<&ItemError>) -> ItemOutcome {
    let error_type = error.map_or("", |e| e.kind.as_str());
    match status {
        200..=299 => ItemOutcome::Indexed,
        409 => ItemOutcome::Duplicate,
        _ if BLOCKING_ERRORS.contains(&error_type) => {
            ItemOutcome::Blocked { reason: error.map_or_else(String::new, ItemError::describe) }
        }
        429 => ItemOutcome::Retry { reason: reason_label(error_type, status), overload: true },
        500..=599 => ItemOutcome::Retry { reason: reason_label(error_type, status), overload: false },
        _ => ItemOutcome::Reject {
            error_type: if error_type.is_empty() { format!("http_{status}") } else { error_type.to_owned() },
            reason: error.map_or_else(|| format!("HTTP {status}"), ItemError::describe),
        },
    }
}

fn reason_label(error_type: &str, status: u16) -> String {
    if error_type.is_empty() { format!("http_{status}") } else { error_type.to_owned() }
}

/// The `error` object of a bulk item (as trimmed by [`BULK_FILTER_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ItemError {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// `caused_by`.
    #[serde(default)]
    pub caused_by: Option<Cause>,
}

/// `caused_by` of an item error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cause {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ItemError {
    /// `reason (caused by type: reason)`.
    pub fn describe(&self) -> String {
        let mut text = self.reason.clone().unwrap_or_else(|| self.kind.clone());
        if let Some(cause) = &self.caused_by {
            text.push_str(&format!(" (caused by {}: {})", cause.kind, cause.reason.as_deref().unwrap_or("")));
        }
        text
    }
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<RawWrapper>,
}

#[derive(Deserialize)]
struct RawWrapper {
    #[serde(alias = "index", alias = "update", alias = "delete")]
    create: RawItem,
}

#[derive(Deserialize)]
struct RawItem {
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

/// What a whole `_bulk` response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Per-item outcomes, in request order.
    Items(Vec<ItemOutcome>),
    /// Send the whole batch again.
    RetryAll {
        /// Metric label.
        reason: String,
        /// Back-pressure (429/503): lower the concurrency.
        overload: bool,
    },
    /// The request as a whole was refused: split it to isolate the culprit.
    Split {
        /// Error type.
        error_type: String,
        /// Error reason.
        reason: String,
    },
    /// Writes refused (authentication, authorization, blocks): probe slowly.
    Blocked {
        /// The error.
        reason: String,
    },
}

/// Classifies a `_bulk` HTTP response for a request of `expected` items.
pub fn classify_response(status: u16, body: &[u8], expected: usize) -> RequestOutcome {
    match status {
        200 => match serde_json::from_slice::<RawResponse>(body) {
            Ok(r) if !r.errors && (r.items.is_empty() || r.items.len() == expected) => {
                RequestOutcome::Items(vec![ItemOutcome::Indexed; expected])
            }
            Ok(r) if r.items.len() == expected => RequestOutcome::Items(
                r.items.iter().map(|w| classify_item(w.create.status, w.create.error.as_ref())).collect(),
            ),
            Ok(r) => RequestOutcome::RetryAll {
                reason: format!("bad_response: {} items for {expected}", r.items.len()),
                overload: false,
            },
            Err(e) => RequestOutcome::RetryAll { reason: format!("bad_response: {e}"), overload: false },
        },
        429 => RequestOutcome::RetryAll { reason: "http_429".into(), overload: true },
        500..=599 => RequestOutcome::RetryAll { reason: format!("http_{status}"), overload: status == 503 },
        401 | 403 => RequestOutcome::Blocked { reason: format!("HTTP {status}: {}", error_text(body)) },
        _ => {
            let (error_type, reason) = top_error(body);
            if BLOCKING_ERRORS.contains(&error_type.as_str()) {
                return RequestOutcome::Blocked { reason };
            }
            let error_type = if error_type.is_empty() { format!("http_{status}") } else { error_type };
            RequestOutcome::Split { error_type, reason }
        }
    }
}

fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(512).collect()
}

fn top_error(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct Top {
        error: ItemError,
    }
    match serde_json::from_slice::<Top>(body) {
        Ok(top) => (top.error.kind.clone(), top.error.describe()),
        Err(_) => (String::new(), error_text(body)),
    }
}

/// Bytes and batches between the consumer and Elasticsearch, shared with the consumer thread,
/// which stops reading (and after `kafka.pause_after` pauses its partitions) when they exceed the
/// configured bounds.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicUsize,
    queued: AtomicUsize,
    /// Wakes the consumer thread waiting in [`Backlog::wait_progress`].
    progress: Mutex<()>,
    progressed: Condvar,
}

impl Backlog {
    /// Bytes dispatched and not settled.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Batches dispatched by the consumer that have no concurrency slot yet (queued for the
    /// dispatcher or waiting for a slot).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Counts a dispatched batch: its bytes, and one more batch without a slot.
    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A dispatched batch got its concurrency slot (or was dropped before getting one).
    pub fn started(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.notify();
    }

    /// A batch is done (settled or abandoned).
    pub fn release(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.notify();
    }

    fn notify(&self) {
        // Taking the lock orders this change before a waiter's check (no lost wake-up).
        drop(self.progress.lock().expect("backlog lock"));
        self.progressed.notify_all();
    }

    /// Blocks until a batch starts or is released, at most `timeout`, unless `done()` (checked
    /// under the lock) is already true.
    pub fn wait_progress(&self, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let guard = self.progress.lock().expect("backlog lock");
        if done(self) {
            return;
        }
        drop(self.progressed.wait_timeout(guard, timeout).expect("backlog lock"));
    }
}

/// Everything a batch needs on its way to Elasticsearch.
#[derive(Debug)]
pub struct Sink {
    /// The nodes.
    pub pool: Arc<NodePool>,
    /// Closed while writes are blocked.
    pub gate: Arc<WriteGate>,
    /// Settlement state.
    pub tracker: Arc<Mutex<Tracker>>,
    /// The dead-letter producer.
    pub dlq: Arc<DeadLetters>,
    /// Metrics.
    pub metrics: Metrics,
    /// Backoff settings.
    pub retry: RetryConfig,
    /// `_bulk` request timeout.
    pub request_timeout: Duration,
    /// Memory accounting.
    pub backlog: Arc<Backlog>,
}

/// Releases a batch's bytes when its task ends, however it ends.
struct Hold<'a> {
    backlog: &'a Backlog,
    bytes: usize,
    metrics: &'a Metrics,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.backlog.release(self.bytes);
        self.metrics.in_flight_bytes.set(self.backlog.bytes() as i64);
    }
}

impl Sink {
    /// Delivers a batch until every record is settled or abandoned. `permit` is the concurrency
    /// slot the dispatcher acquired; it is held through retries and backoff (a batch in backoff
    /// still counts against the limit, so new batches wait and the consumer stops reading, then
    /// pauses). `memory` is what the batch counts in the [`Backlog`].
    pub async fn deliver(self: Arc<Self>, batch: Batch, mut permit: Permit, memory: usize) {
        let _hold = Hold { backlog: &self.backlog, bytes: memory, metrics: &self.metrics };
        // All indexable is the common case: no copy of the items.
        let first = if batch.items.iter().all(Item::is_indexable) {
            batch
        } else {
            let (indexable, rejected): (Vec<Item>, Vec<Item>) =
                batch.items.iter().cloned().partition(Item::is_indexable);
            let letters: Vec<(Item, String, String)> = rejected
                .into_iter()
                .map(|item| {
                    let (t, r) = item.rejected.as_deref().cloned().unwrap_or_default();
                    (item, t, r)
                })
                .collect();
            self.dead_letter(&batch, letters).await;
            if indexable.is_empty() {
                return;
            }
            batch.subset(indexable)
        };
        let mut work = VecDeque::from([first]);
        let mut backoff = Backoff::new(&self.retry);
        let mut probe = false;
        while let Some(current) = work.pop_front() {
            let Some(current) = self.keep_current(current) else { continue };
            if !probe {
                self.gate.wait_open().await;
            }
            let n = current.items.len() as u64;
            self.metrics.in_flight_requests.inc();
            let started = Instant::now();
            let result = self
                .pool
                .send(
                    Method::Post,
                    "/_bulk",
                    &[("filter_path", BULK_FILTER_PATH)],
                    Some(current.body.clone()),
                    Some("application/x-ndjson"),
                    Some(self.request_timeout),
                )
                .await;
            self.metrics.in_flight_requests.dec();
            let latency = started.elapsed();
            let reply = match result {
                Err(RequestError::NoNode { retry_in }) => {
                    self.metrics.request("no_node");
                    self.metrics.retry("no_node", n);
                    tokio::time::sleep(retry_in.max(Duration::from_millis(50))).await;
                    work.push_front(current);
                    continue;
                }
                Err(err) => {
                    self.metrics.bulk_latency.observe(latency.as_secs_f64());
                    self.metrics.request(err.kind());
                    self.metrics.retry(err.kind(), n);
                    // A timeout is overload; a dead node says nothing about the cluster's load.
                    if matches!(err, RequestError::Timeout { .. }) {
                        permit.record(latency, true);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, items = n, retry_in = ?delay, "bulk request failed; retrying");
                    if let Some(next) = self.count_attempt(current, err.kind()).await {
                        tokio::time::sleep(delay).await;
                        work.push_front(next);
                    }
                    continue;
                }
                Ok(reply) => reply,
            };
            self.metrics.bulk_latency.observe(latency.as_secs_f64());
            match classify_response(reply.status, &reply.body, current.items.len()) {
                RequestOutcome::Items(outcomes) => {
                    self.metrics.request("ok");
                    let overload = outcomes.iter().any(|o| matches!(o, ItemOutcome::Retry { overload: true, .. }));
                    permit.record(latency, overload);
                    if let Some((next, blocked)) = self.apply(current, outcomes, &mut backoff).await {
                        let delay = if blocked { self.gate.probe_interval() } else { backoff.next_delay() };
                        probe = blocked;
                        tokio::time::sleep(delay).await;
                        work.push_front(next);
                    }
                }
                RequestOutcome::RetryAll { reason, overload } => {
                    self.metrics.request(&format!("http_{}", reply.status));
                    self.metrics.retry(&reason, n);
                    permit.record(latency, overload);
                    let delay = backoff.next_delay();
                    tracing::warn!(status = reply.status, %reason, items = n, retry_in = ?delay, "bulk request refused; retrying");
                    if let Some(next) = self.count_attempt(current, &reason).await {
                        tokio::time::sleep(delay).await;
                        work.push_front(next);
                    }
                }
                RequestOutcome::Split { error_type, reason } => {
                    self.metrics.request(&format!("http_{}", reply.status));
                    permit.record(latency, false);
                    if current.items.len() > 1 {
                        let mid = current.items.len() / 2;
                        let (a, b) = current.items.split_at(mid);
                        tracing::warn!(status = reply.status, %reason, items = n, "bulk request rejected; splitting it");
                        work.push_front(current.subset(b.to_vec()));
                        work.push_front(current.subset(a.to_vec()));
                    } else {
                        let item = current.items[0].clone();
                        self.dead_letter(&current, vec![(item, error_type, reason)]).await;
                    }
                }
                RequestOutcome::Blocked { reason } => {
                    self.metrics.request(&format!("http_{}", reply.status));
                    permit.record(latency, false);
                    self.block(&reason);
                    self.metrics.retry("blocked", n);
                    probe = true;
                    tokio::time::sleep(self.gate.probe_interval()).await;
                    work.push_front(current);
                }
            }
        }
    }

    /// Settles, dead-letters and collects the items to retry. Returns the retry batch and whether
    /// it is blocked (probe slowly) rather than temporarily failing.
    async fn apply(&self, current: Batch, outcomes: Vec<ItemOutcome>, backoff: &mut Backoff) -> Option<(Batch, bool)> {
        let mut settled = Vec::new();
        let (mut indexed, mut duplicates, mut bytes) = (0u64, 0u64, 0u64);
        let mut letters = Vec::new();
        let mut retry = Vec::new();
        let mut blocked_reason = None;
        for (item, outcome) in current.items.iter().zip(outcomes) {
            match outcome {
                ItemOutcome::Indexed => {
                    indexed += 1;
                    bytes += u64::from(item.doc.end - item.payload_start);
                    settled.push(item);
                }
                ItemOutcome::Duplicate => {
                    duplicates += 1;
                    settled.push(item);
                }
                ItemOutcome::Retry { reason, .. } => {
                    self.metrics.retry(&reason, 1);
                    retry.push((item.clone(), reason));
                }
                ItemOutcome::Blocked { reason } => {
                    self.metrics.retry("blocked", 1);
                    blocked_reason.get_or_insert(reason.clone());
                    retry.push((item.clone(), reason));
                }
                ItemOutcome::Reject { error_type, reason } => letters.push((item.clone(), error_type, reason)),
            }
        }
        if !settled.is_empty() {
            self.tracker.lock().expect("tracker lock").settle_items(settled);
            self.metrics.settled("indexed", indexed);
            self.metrics.settled("duplicate", duplicates);
            self.metrics.bytes.inc_by(bytes);
            backoff.reset();
        }
        match &blocked_reason {
            Some(reason) => self.block(reason),
            None if indexed + duplicates > 0 => self.unblock(),
            None => {}
        }
        if !letters.is_empty() {
            self.dead_letter(&current, letters).await;
        }
        if retry.is_empty() {
            return None;
        }
        let blocked = blocked_reason.is_some();
        let mut keep = Vec::with_capacity(retry.len());
        let mut exhausted = Vec::new();
        for (mut item, reason) in retry {
            item.attempts += 1;
            if !blocked && self.retry.max_attempts > 0 && item.attempts >= self.retry.max_attempts {
                exhausted.push((
                    item,
                    RETRIES_EXHAUSTED.to_owned(),
                    format!("gave up after {} attempts: {reason}", self.retry.max_attempts),
                ));
            } else {
                keep.push(item);
            }
        }
        if !exhausted.is_empty() {
            self.dead_letter(&current, exhausted).await;
        }
        (!keep.is_empty()).then(|| (current.subset(keep), blocked))
    }

    /// Counts one more attempt for every item of a failed request; items out of attempts are
    /// dead-lettered. Returns what is left to retry.
    async fn count_attempt(&self, mut current: Batch, reason: &str) -> Option<Batch> {
        for item in &mut current.items {
            item.attempts += 1;
        }
        if self.retry.max_attempts == 0 {
            return Some(current);
        }
        let (exhausted, keep): (Vec<Item>, Vec<Item>) =
            current.items.iter().cloned().partition(|i| i.attempts >= self.retry.max_attempts);
        if exhausted.is_empty() {
            return Some(current);
        }
        let letters = exhausted
            .into_iter()
            .map(|i| {
                (
                    i,
                    RETRIES_EXHAUSTED.to_owned(),
                    format!("gave up after {} attempts: {reason}", self.retry.max_attempts),
                )
            })
            .collect();
        self.dead_letter(&current, letters).await;
        (!keep.is_empty()).then(|| current.subset(keep))
    }

    /// Drops records whose partition was revoked since dispatch (their next owner re-reads them).
    fn keep_current(&self, batch: Batch) -> Option<Batch> {
        let tracker = self.tracker.lock().expect("tracker lock");
        let keep: Vec<bool> = batch.items.iter().map(|i| tracker.is_current(i.partition, i.epoch)).collect();
        drop(tracker);
        let kept = keep.iter().filter(|k| **k).count();
        if kept == batch.items.len() {
            return Some(batch);
        }
        self.metrics.abandoned.inc_by((batch.items.len() - kept) as u64);
        if kept == 0 {
            return None;
        }
        let items = batch.items.iter().zip(&keep).filter(|(_, k)| **k).map(|(i, _)| i.clone()).collect();
        Some(batch.subset(items))
    }

    /// Writes dead letters until acknowledged (retrying with backoff), then settles them.
    async fn dead_letter(&self, batch: &Batch, mut letters: Vec<(Item, String, String)>) {
        let mut backoff = Backoff::new(&self.retry);
        loop {
            {
                let tracker = self.tracker.lock().expect("tracker lock");
                letters.retain(|(item, _, _)| tracker.is_current(item.partition, item.epoch));
            }
            if letters.is_empty() {
                return;
            }
            let refs: Vec<Letter<'_>> =
                letters.iter().map(|(item, t, r)| Letter { item, error_type: t, reason: r }).collect();
            match self.dlq.send(batch, &refs).await {
                Ok(()) => break,
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, letters = letters.len(), retry_in = ?delay, "dead-letter write failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        for (item, error_type, reason) in &letters {
            tracing::warn!(
                partition = item.partition,
                offset = item.offset,
                error.type = %error_type,
                error.reason = %reason,
                "record dead-lettered"
            );
            self.metrics.dead_lettered(error_type, 1);
        }
        self.tracker.lock().expect("tracker lock").settle_items(letters.iter().map(|(i, _, _)| i));
    }

    fn block(&self, reason: &str) {
        if self.gate.block() {
            self.metrics.write_blocked.set(1);
            tracing::error!(
                %reason,
                probe_every = ?self.gate.probe_interval(),
                "Elasticsearch refuses writes (e.g. flood-stage disk watermark or read-only index); \
                 writing stopped, probing until cleared"
            );
        }
    }

    fn unblock(&self) {
        if self.gate.unblock() {
            self.metrics.write_blocked.set(0);
            tracing::info!("Elasticsearch accepts writes again; resuming");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: &str, reason: &str) -> ItemError {
        ItemError { kind: kind.into(), reason: Some(reason.into()), caused_by: None }
    }

    #[test]
    fn backlog_counts_queued_batches_and_wakes_the_consumer() {
        let backlog = Arc::new(Backlog::default());
        backlog.add(100);
        backlog.add(50);
        assert_eq!((backlog.bytes(), backlog.queued()), (150, 2));
        // Already done: no wait at all.
        let started = Instant::now();
        backlog.wait_progress(Duration::from_secs(10), |b| b.queued() == 2);
        assert!(started.elapsed() < Duration::from_secs(5));
        // A batch getting its slot wakes the waiter long before the timeout.
        let waker = {
            let backlog = backlog.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                backlog.started();
            })
        };
        let started = Instant::now();
        while backlog.queued() == 2 {
            backlog.wait_progress(Duration::from_secs(10), |b| b.queued() < 2);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        waker.join().unwrap();
        backlog.started();
        backlog.release(100);
        backlog.release(50);
        assert_eq!((backlog.bytes(), backlog.queued()), (0, 0));
    }

    #[test]
    fn item_classification() {
        assert_eq!(classify_item(201, None), ItemOutcome::Indexed);
        assert_eq!(classify_item(200, None), ItemOutcome::Indexed);
        assert_eq!(
            classify_item(409, Some(&error("version_conflict_engine_exception", "exists"))),
            ItemOutcome::Duplicate
        );
        assert_eq!(
            classify_item(429, Some(&error("es_rejected_execution_exception", "queue full"))),
            ItemOutcome::Retry { reason: "es_rejected_execution_exception".into(), overload: true }
        );
        assert_eq!(
            classify_item(503, Some(&error("unavailable_shards_exception", "primary not active"))),
            ItemOutcome::Retry { reason: "unavailable_shards_exception".into(), overload: false }
        );
        assert_eq!(classify_item(500, None), ItemOutcome::Retry { reason: "http_500".into(), overload: false });
        let mapping = ItemError {
            kind: "document_parsing_exception".into(),
            reason: Some("[1:20] failed to parse field [log.offset] of type [long]".into()),
            caused_by: Some(Cause {
                kind: "illegal_argument_exception".into(),
                reason: Some("For input string".into()),
            }),
        };
        assert_eq!(
            classify_item(400, Some(&mapping)),
            ItemOutcome::Reject {
                error_type: "document_parsing_exception".into(),
                reason: "[1:20] failed to parse field [log.offset] of type [long] (caused by illegal_argument_exception: For input string)".into()
            }
        );
        assert!(matches!(classify_item(400, None), ItemOutcome::Reject { error_type, .. } if error_type == "http_400"));
    }

    #[test]
    fn blocks_are_not_overload_and_not_dead_letters() {
        let flood = error(
            "cluster_block_exception",
            "index [x] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];",
        );
        assert!(matches!(classify_item(429, Some(&flood)), ItemOutcome::Blocked { .. }));
        let read_only = error("cluster_block_exception", "index [x] blocked by: [FORBIDDEN/8/index write (api)];");
        assert!(matches!(classify_item(403, Some(&read_only)), ItemOutcome::Blocked { .. }));
        let denied = error("security_exception", "action [indices:data/write/bulk[s]] is unauthorized");
        assert!(matches!(classify_item(403, Some(&denied)), ItemOutcome::Blocked { .. }));
    }

    #[test]
    fn response_without_errors_is_all_indexed() {
        let body = br#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;
        assert_eq!(classify_response(200, body, 2), RequestOutcome::Items(vec![ItemOutcome::Indexed; 2]));
        assert_eq!(
            classify_response(200, br#"{"errors":false}"#, 3),
            RequestOutcome::Items(vec![ItemOutcome::Indexed; 3])
        );
    }

    #[test]
    fn mixed_response_is_classified_per_item_in_order() {
        let body = br#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse"}}}
        ]}"#;
        let RequestOutcome::Items(items) = classify_response(200, body, 4) else { panic!() };
        assert_eq!(items[0], ItemOutcome::Indexed);
        assert_eq!(items[1], ItemOutcome::Duplicate);
        assert!(matches!(items[2], ItemOutcome::Retry { overload: true, .. }));
        assert!(
            matches!(&items[3], ItemOutcome::Reject { error_type, .. } if error_type == "document_parsing_exception")
        );
    }

    #[test]
    fn whole_request_outcomes() {
        assert_eq!(
            classify_response(429, b"{}", 5),
            RequestOutcome::RetryAll { reason: "http_429".into(), overload: true }
        );
        assert_eq!(
            classify_response(503, b"", 5),
            RequestOutcome::RetryAll { reason: "http_503".into(), overload: true }
        );
        assert!(matches!(classify_response(502, b"", 5), RequestOutcome::RetryAll { overload: false, .. }));
        assert!(matches!(classify_response(401, b"{}", 5), RequestOutcome::Blocked { .. }));
        let too_large = classify_response(413, b"", 5);
        assert!(matches!(too_large, RequestOutcome::Split { ref error_type, .. } if error_type == "http_413"));
        let malformed = br#"{"error":{"type":"illegal_argument_exception","reason":"Malformed action/metadata line [1]"},"status":400}"#;
        assert!(
            matches!(classify_response(400, malformed, 5), RequestOutcome::Split { ref error_type, .. } if error_type == "illegal_argument_exception")
        );
        let blocked = br#"{"error":{"type":"cluster_block_exception","reason":"blocked by: [FORBIDDEN/12/index read-only / allow delete (api)]"},"status":403}"#;
        assert!(matches!(classify_response(403, blocked, 5), RequestOutcome::Blocked { .. }));
    }

    #[test]
    fn inconsistent_responses_are_retried_whole() {
        let body = br#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        assert!(matches!(classify_response(200, body, 2), RequestOutcome::RetryAll { .. }));
        assert!(matches!(classify_response(200, b"not json", 2), RequestOutcome::RetryAll { .. }));
    }
}
