//! Delivery of one batch: sends it to `_bulk`, applies every item's outcome (settle, retry with
//! backoff, dead-letter), splits rejected requests, and holds the batch's memory until it is done.
//!
//! Slots: when some of a batch's *records* fail (item retries other than 429, blocked items) or are being
//! dead-lettered, the batch gives its concurrency slot ([`Permit`]) back for the backoff, probe
//! wait or dead-letter write and takes one again before its next request, so records that keep
//! failing (a write-blocked or closed index, a missing index with auto-create off) never starve
//! the others. When a whole *request* fails (no node, transport error, timeout, 429/5xx, refused
//! credentials, a proxy's 4xx) it keeps the slot through the backoff: no other batch would fare
//! better, and the held slots are what stops the consumer and pauses the partitions. An item that
//! keeps failing is dead-lettered as [`RETRIES_EXHAUSTED`] after `retry.give_up_after` (or
//! `retry.max_attempts`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elasticsearch::http::Method;

use super::classify::{ItemOutcome, RequestOutcome, classify_response};
use crate::backlog::Backlog;
use crate::backoff::Backoff;
use crate::batch::{Batch, Item};
use crate::config::RetryConfig;
use crate::dlq::{DeadLetters, Failure, Letter};
use crate::es::{BULK_FILTER_PATH, NodePool, RequestError};
use crate::metrics::Metrics;
use crate::overload::{Limiter, Permit, WriteGate};
use crate::settle::Tracker;
use sluice_common::server::Health;

/// Error type of dead letters whose retries ran out (`retry.max_attempts`).
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// Everything a batch needs on its way to Elasticsearch.
#[derive(Debug)]
pub struct Sink {
    /// The nodes.
    pub pool: Arc<NodePool>,
    /// Closed while writes are blocked.
    pub gate: Arc<WriteGate>,
    /// The adaptive concurrency limit (slots are taken again after a backoff).
    pub limiter: Arc<Limiter>,
    /// Settlement state.
    pub tracker: Arc<Mutex<Tracker>>,
    /// The dead-letter producer.
    pub dlq: Arc<DeadLetters>,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness: false while the dead-letter topic refuses writes for good.
    pub health: Health,
    /// Backoff settings.
    pub retry: RetryConfig,
    /// `_bulk` request timeout.
    pub request_timeout: Duration,
    /// Memory accounting.
    pub backlog: Arc<Backlog>,
    /// Smallest request body (bytes) answered with 413; larger batches are split before sending.
    pub too_large: AtomicUsize,
    /// Whether dead-letter writes currently fail permanently.
    pub dlq_blocked: AtomicBool,
}

impl Sink {
    /// A sink; `too_large` starts unknown, the dead-letter topic healthy.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Arc<NodePool>,
        gate: Arc<WriteGate>,
        limiter: Arc<Limiter>,
        tracker: Arc<Mutex<Tracker>>,
        dlq: Arc<DeadLetters>,
        metrics: Metrics,
        health: Health,
        retry: RetryConfig,
        request_timeout: Duration,
        backlog: Arc<Backlog>,
    ) -> Self {
        Sink {
            pool,
            gate,
            limiter,
            tracker,
            dlq,
            metrics,
            health,
            retry,
            request_timeout,
            backlog,
            too_large: AtomicUsize::new(usize::MAX),
            dlq_blocked: AtomicBool::new(false),
        }
    }
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

/// One record to dead-letter: the item, error type, reason, and the payload bound once the
/// dead-letter topic refused it as too large.
struct Pending {
    item: Item,
    error_type: String,
    reason: String,
    max_payload: Option<usize>,
    /// Sent alone once after a "too large" (a batch of letters may exceed the limit together).
    alone: bool,
}

impl Sink {
    /// Delivers a batch until every record is settled or abandoned. `permit` is the concurrency
    /// slot the dispatcher acquired; it is given back during every wait (see the module doc).
    /// `memory` is what the batch counts in the [`Backlog`].
    pub async fn deliver(self: Arc<Self>, batch: Batch, permit: Permit, memory: usize) {
        let _hold = Hold { backlog: &self.backlog, bytes: memory, metrics: &self.metrics };
        let mut permit = Some(permit);
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
            permit = None;
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
            let n = current.items.len() as u64;
            // A size a 413 revealed: split before sending rather than meet it again.
            if current.items.len() > 1 && current.body.len() >= self.too_large.load(Ordering::Relaxed) {
                let (a, b) = halves(&current);
                work.push_front(b);
                work.push_front(a);
                continue;
            }
            if !probe {
                self.gate.wait_open().await;
            }
            let slot = match permit.take() {
                Some(p) => p,
                None => self.limiter.acquire().await,
            };
            let permit_ref = permit.insert(slot);
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
                        permit_ref.record(latency, true);
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
                    permit_ref.record(latency, overload);
                    // Records failing on their own (not the cluster pushing back): give the slot back.
                    if outcomes.iter().any(|o| {
                        matches!(
                            o,
                            ItemOutcome::Reject { .. }
                                | ItemOutcome::Blocked { .. }
                                | ItemOutcome::Retry { overload: false, .. }
                        )
                    }) {
                        permit = None;
                    }
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
                    permit_ref.record(latency, overload);
                    let delay = backoff.next_delay();
                    tracing::warn!(status = reply.status, %reason, body = %body_start(&reply.body), items = n, retry_in = ?delay, "bulk request refused; retrying");
                    if let Some(next) = self.count_attempt(current, &reason).await {
                        tokio::time::sleep(delay).await;
                        work.push_front(next);
                    }
                }
                RequestOutcome::Split { error_type, reason } => {
                    self.metrics.request(&format!("http_{}", reply.status));
                    permit_ref.record(latency, false);
                    if reply.status == 413 {
                        let size = current.body.len();
                        if self.too_large.fetch_min(size, Ordering::Relaxed) > size {
                            tracing::warn!(
                                bytes = size,
                                "a request of this size was refused with 413 (Elasticsearch's http.max_content_length or a proxy's \
                                 limit): larger batches are split before sending; lower batch.max_bytes below it"
                            );
                        }
                    }
                    if current.items.len() > 1 {
                        tracing::warn!(status = reply.status, %reason, items = n, "bulk request rejected; splitting it");
                        let (a, b) = halves(&current);
                        work.push_front(b);
                        work.push_front(a);
                    } else {
                        permit = None;
                        let item = current.items[0].clone();
                        self.dead_letter(&current, vec![(item, error_type, reason)]).await;
                    }
                }
                RequestOutcome::Blocked { reason } => {
                    self.metrics.request(&format!("http_{}", reply.status));
                    permit_ref.record(latency, false);
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
                    retry.push((item.clone(), reason, false));
                }
                ItemOutcome::Blocked { reason } => {
                    self.metrics.retry("blocked", 1);
                    blocked_reason.get_or_insert(reason.clone());
                    retry.push((item.clone(), reason, true));
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
        // The write gate is for the whole cluster refusing writes (flood stage, read-only
        // cluster): a fresh batch that got nothing but blocks. Records of one blocked index that
        // keep failing alone (an old read-only index, a closed one) do not stop everyone else.
        let fresh = current.items.iter().any(|i| i.attempts == 0);
        match &blocked_reason {
            Some(reason) if indexed + duplicates == 0 && fresh => self.block(reason),
            _ if indexed + duplicates > 0 => self.unblock(),
            _ => {}
        }
        if !letters.is_empty() {
            self.dead_letter(&current, letters).await;
        }
        if retry.is_empty() {
            return None;
        }
        let blocked = retry.iter().all(|(_, _, blocked)| *blocked);
        let now = Instant::now();
        let mut keep = Vec::with_capacity(retry.len());
        let mut exhausted = Vec::new();
        for (mut item, reason, item_blocked) in retry {
            item.attempts += 1;
            let since = *item.first_failure.get_or_insert(now);
            let out_of_attempts =
                !item_blocked && self.retry.max_attempts > 0 && item.attempts >= self.retry.max_attempts;
            let out_of_time = !self.retry.give_up_after.is_zero() && now - since >= self.retry.give_up_after;
            if out_of_attempts || out_of_time {
                let why = if out_of_attempts {
                    format!("gave up after {} attempts", item.attempts)
                } else {
                    format!("gave up after {:?} (retry.give_up_after, {} attempts)", now - since, item.attempts)
                };
                let kind = if item_blocked { "blocked: " } else { "" };
                exhausted.push((item, RETRIES_EXHAUSTED.to_owned(), format!("{why}: {kind}{reason}")));
            } else {
                keep.push(item);
            }
        }
        if !exhausted.is_empty() {
            self.dead_letter(&current, exhausted).await;
        }
        (!keep.is_empty()).then(|| (current.subset(keep), blocked))
    }

    /// Counts one more attempt for every item of a failed request; items out of attempts
    /// (`retry.max_attempts`) are dead-lettered. Returns what is left to retry. Whole-request
    /// failures do not count toward `retry.give_up_after`: they say nothing about the records.
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

    /// Writes dead letters until each is acknowledged, settling each as soon as it is. Only the
    /// letters that failed are sent again; one the topic refuses as too large is sent alone, then
    /// with its payload halved until it fits (tagged `sluice.truncated`). A permanent failure
    /// (authorization, fatal producer) is an error log, `dead_letter_blocked` 1 and readiness
    /// false until a write succeeds; the records stay unsettled (their offsets are not
    /// committed) and are retried at `retry.max_backoff`.
    async fn dead_letter(&self, batch: &Batch, letters: Vec<(Item, String, String)>) {
        let mut pending: Vec<Pending> = letters
            .into_iter()
            .map(|(item, error_type, reason)| Pending { item, error_type, reason, max_payload: None, alone: false })
            .collect();
        let mut backoff = Backoff::new(&self.retry);
        let mut last_report: Option<Instant> = None;
        loop {
            {
                let tracker = self.tracker.lock().expect("tracker lock");
                pending.retain(|p| tracker.is_current(p.item.partition, p.item.epoch));
            }
            if pending.is_empty() {
                return;
            }
            // Letters that were too large together go one by one.
            let (alone, together): (Vec<usize>, Vec<usize>) = (0..pending.len()).partition(|&i| pending[i].alone);
            let mut groups: Vec<Vec<usize>> = alone.into_iter().map(|i| vec![i]).collect();
            if !together.is_empty() {
                groups.push(together);
            }
            let mut results: Vec<Option<Result<bool, Failure>>> = vec![None; pending.len()];
            for group in groups {
                let refs: Vec<Letter<'_>> = group
                    .iter()
                    .map(|&i| Letter {
                        item: &pending[i].item,
                        error_type: &pending[i].error_type,
                        reason: &pending[i].reason,
                        max_payload: pending[i].max_payload,
                    })
                    .collect();
                for (&i, result) in group.iter().zip(self.dlq.send(batch, &refs).await) {
                    results[i] = Some(result);
                }
            }
            let mut written = Vec::new();
            let mut failed = Vec::new();
            let mut permanent = None;
            let mut first_error = None;
            for (mut letter, result) in pending.into_iter().zip(results) {
                match result.unwrap_or(Err(Failure::Retry("not sent".into()))) {
                    Ok(truncated) => {
                        if truncated {
                            self.metrics.dead_letters_truncated.inc();
                        }
                        written.push(letter);
                    }
                    Err(failure) => {
                        match &failure {
                            Failure::TooLarge(text) => {
                                if !letter.alone {
                                    letter.alone = true;
                                } else {
                                    let full = batch.original(&letter.item).payload.map_or(0, |p| p.len());
                                    match letter.max_payload.unwrap_or(full) {
                                        0 => {
                                            permanent = Some(format!("{text} (even without payload)"));
                                            self.metrics.dead_letter_failure("permanent");
                                            // After the operator's fix, try the whole letter again.
                                            letter.max_payload = None;
                                            letter.alone = false;
                                        }
                                        now => letter.max_payload = Some(now / 2),
                                    }
                                }
                                self.metrics.dead_letter_failure("too_large");
                            }
                            Failure::Permanent(text) => {
                                permanent = Some(text.clone());
                                self.metrics.dead_letter_failure("permanent");
                            }
                            Failure::Retry(_) => self.metrics.dead_letter_failure("transient"),
                        }
                        first_error.get_or_insert(failure);
                        failed.push(letter);
                    }
                }
            }
            if !written.is_empty() {
                self.settle_letters(&written);
                if self.dlq_blocked.swap(false, Ordering::Relaxed) {
                    self.metrics.dead_letter_blocked.set(0);
                    self.health.set_ready();
                    tracing::info!(topic = self.dlq.topic(), "the dead-letter topic accepts writes again");
                }
            }
            pending = failed;
            if pending.is_empty() {
                return;
            }
            let delay = match &permanent {
                Some(reason) => {
                    if !self.dlq_blocked.swap(true, Ordering::Relaxed) {
                        self.metrics.dead_letter_blocked.set(1);
                        self.health.set_not_ready(format!("the dead-letter topic refuses writes: {reason}"));
                    }
                    if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_report = Some(Instant::now());
                        tracing::error!(
                            topic = self.dlq.topic(),
                            letters = pending.len(),
                            error = %reason,
                            "dead letters cannot be written and retrying will not help (authorization? topic limits? \
                             producer state?): their records stay unsettled and their partitions' offsets are not \
                             committed past them; retrying every retry.max_backoff"
                        );
                    }
                    self.retry.max_backoff
                }
                None if pending.iter().all(|p| p.alone && matches!(first_error, Some(Failure::TooLarge(_)))) => {
                    Duration::ZERO
                }
                None => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = ?first_error, letters = pending.len(), retry_in = ?delay, "dead-letter write failed; retrying");
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    fn settle_letters(&self, letters: &[Pending]) {
        for letter in letters {
            tracing::warn!(
                partition = letter.item.partition,
                offset = letter.item.offset,
                record = letter.item.source_record(),
                error.type = %letter.error_type,
                error.reason = %letter.reason,
                "record dead-lettered"
            );
            self.metrics.dead_lettered(&letter.error_type, 1);
        }
        self.tracker.lock().expect("tracker lock").settle_items(letters.iter().map(|l| &l.item));
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

/// The two halves of a batch (for splitting).
fn halves(batch: &Batch) -> (Batch, Batch) {
    let mid = batch.items.len() / 2;
    let (a, b) = batch.items.split_at(mid);
    (batch.subset(a.to_vec()), batch.subset(b.to_vec()))
}

/// The start of a response body, for logs.
fn body_start(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use sluice_common::schema::header;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::batch::{Batcher, Limits, RecordRef};
    use crate::config::{ConcurrencyConfig, IndexerConfig};
    use crate::index::IndexPattern;

    /// A tiny HTTP/1.1 server standing in for Elasticsearch or a proxy in front of it: `answer`
    /// gets the request number and body, returns status and body.
    async fn fake(answer: impl Fn(u32, &[u8]) -> (u16, String) + Send + Sync + 'static) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU32::new(0));
        let answer = Arc::new(answer);
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let answer = answer.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head_end, length) = loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                                .unwrap_or(0usize);
                            break (at + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let n = seen.fetch_add(1, Ordering::Relaxed);
                    let (status, body) = answer(n, &buf[head_end..head_end + length]);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, count)
    }

    /// `{"errors":false,"items":[…201…]}` for every action line of a bulk body.
    fn all_created(body: &[u8]) -> (u16, String) {
        let n = body.split(|&b| b == b'\n').filter(|l| l.starts_with(b"{\"create\"")).count();
        let items = vec![r#"{"create":{"status":201}}"#; n].join(",");
        (200, format!(r#"{{"errors":false,"items":[{items}]}}"#))
    }

    fn sink(url: &str) -> Arc<Sink> {
        sink_with_kafka(url, "127.0.0.1:1")
    }

    /// A sink whose dead letters go to the Kafka at `brokers` (e.g. an in-process mock cluster).
    fn sink_with_kafka(url: &str, brokers: &str) -> Arc<Sink> {
        let mut config = IndexerConfig::default();
        config.kafka.brokers = vec![brokers.into()];
        config.elasticsearch.urls = vec![url.into()];
        config.elasticsearch.blocked_probe_interval = Duration::from_millis(50);
        config.retry.initial_backoff = Duration::from_millis(10);
        config.retry.max_backoff = Duration::from_millis(50);
        let concurrency = ConcurrencyConfig { min: 1, max: 4, initial: 2, ..ConcurrencyConfig::default() };
        Arc::new(Sink::new(
            Arc::new(NodePool::new(&config.elasticsearch).unwrap()),
            Arc::new(WriteGate::new(config.elasticsearch.blocked_probe_interval)),
            Limiter::new(&concurrency, |_, _| {}),
            Arc::new(Mutex::new(Tracker::new())),
            Arc::new(DeadLetters::new(&config).unwrap()),
            Metrics::default(),
            Health::new(),
            config.retry.clone(),
            Duration::from_secs(5),
            Arc::new(Backlog::default()),
        ))
    }

    /// A batch of `n` records from offset `first` of partition 0, registered with the tracker.
    fn batch(sink: &Sink, first: i64, n: i64) -> Batch {
        let limits = Limits { max_bytes: 1 << 20, max_docs: 10_000, linger: Duration::from_secs(1) };
        let mut batcher = Batcher::new(IndexPattern::parse("logs-%Y.%m.%d").unwrap(), limits);
        let mut out = Vec::new();
        for offset in first..first + n {
            let id = format!("id-{offset}");
            let pairs: Vec<(&str, Option<&[u8]>)> = vec![
                (header::ID, Some(id.as_bytes())),
                (header::TS, Some(b"2026-11-27T10:00:00Z")),
                (header::V, Some(b"1")),
            ];
            let payload = format!(r#"{{"message":"record {offset} {}"}}"#, "x".repeat(100));
            let record = RecordRef {
                partition: 0,
                offset,
                key: None,
                payload: Some(payload.as_bytes()),
                headers: pairs.iter().copied(),
            };
            batcher.push(record, &mut out);
        }
        let mut batch = batcher.take().unwrap();
        let mut tracker = sink.tracker.lock().unwrap();
        if tracker.partitions().is_empty() {
            tracker.assign(0);
        }
        tracker.dispatch(&mut batch.items);
        batch
    }

    async fn deliver(sink: &Arc<Sink>, batch: Batch) {
        let permit = sink.limiter.acquire().await;
        let memory = batch.memory();
        sink.backlog.add(memory);
        sink.backlog.started();
        tokio::time::timeout(Duration::from_secs(10), sink.clone().deliver(batch, permit, memory))
            .await
            .expect("delivered within 10 s (a dead letter to an unreachable Kafka never completes)");
    }

    // Issue #9, scenario 15: a proxy's 404 in front of Elasticsearch is not a verdict on the
    // records: nothing is split down to single records and dead-lettered; once the proxy
    // forwards again, everything is indexed.
    #[tokio::test]
    async fn a_proxy_404_blocks_and_probes_instead_of_dead_lettering() {
        let (url, requests) =
            fake(
                |n, body| {
                    if n < 3 { (404, "<html><body>404 page not found</body></html>".into()) } else { all_created(body) }
                },
            )
            .await;
        let sink = sink(&url);
        deliver(&sink, batch(&sink, 0, 8)).await;
        assert_eq!(sink.tracker.lock().unwrap().commit_points(None), vec![(0, 8)], "all settled");
        assert_eq!(sink.metrics.dead_letters.get_or_create(&vec![("type", "http_404".into())]).get(), 0);
        assert_eq!(requests.load(Ordering::Relaxed), 4, "three probes of the whole batch, then success");
    }

    // Issue #9, scenario 15: the size a 413 revealed is remembered: later batches at least that
    // large are split before sending instead of meeting the 413 again.
    #[tokio::test]
    async fn the_size_a_413_revealed_is_remembered() {
        let limit = 1200;
        let refused = Arc::new(AtomicU32::new(0));
        let counter = refused.clone();
        let (url, _) = fake(move |_, body| {
            if body.len() > limit {
                counter.fetch_add(1, Ordering::Relaxed);
                (413, String::new())
            } else {
                all_created(body)
            }
        })
        .await;
        let sink = sink(&url);
        deliver(&sink, batch(&sink, 0, 16)).await;
        let first = refused.load(Ordering::Relaxed);
        assert!(first >= 1, "the first batch met the limit");
        deliver(&sink, batch(&sink, 16, 16)).await;
        assert_eq!(refused.load(Ordering::Relaxed), first, "the second batch was split before sending");
        assert_eq!(sink.tracker.lock().unwrap().commit_points(None), vec![(0, 32)]);
        assert_eq!(sink.metrics.dead_letters.get_or_create(&vec![("type", "http_413".into())]).get(), 0);
    }

    // Issue #9, scenario 16: a 200 without one item per document settles nothing; it is retried.
    #[tokio::test]
    async fn a_200_without_items_is_retried_not_settled() {
        let (url, requests) = fake(|n, body| if n < 2 { (200, "{}".into()) } else { all_created(body) }).await;
        let sink = sink(&url);
        deliver(&sink, batch(&sink, 0, 4)).await;
        assert_eq!(requests.load(Ordering::Relaxed), 3);
        assert_eq!(sink.tracker.lock().unwrap().commit_points(None), vec![(0, 4)]);
    }

    // Issue 15, mutation 1: a 409 `version_conflict_engine_exception` on `create` is success (a
    // re-delivery after a crash or rebalance). The delivery loop settles it as `duplicate`: it is
    // neither retried nor dead-lettered, unlike the 400 next to it. The dead-letter topic is on
    // librdkafka's in-process mock cluster, so the 400's letter is acknowledged and the batch
    // completes in milliseconds.
    #[tokio::test]
    async fn a_409_version_conflict_settles_as_duplicate_and_is_not_dead_lettered() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::mocking::MockCluster;

        // Offsets 0..6, one item each, in the order of the bulk body.
        const STATUSES: [u16; 6] = [201, 409, 201, 409, 400, 409];
        let kafka = MockCluster::new(1).unwrap();
        let (url, requests) = fake(|n, body| {
            if n > 0 {
                return all_created(body); // a retry: answered, then caught by the request count
            }
            let actions = body.split(|&b| b == b'\n').filter(|l| l.starts_with(b"{\"create\"")).count();
            assert_eq!(actions, STATUSES.len(), "one request with the whole batch");
            let items: Vec<&str> = STATUSES
                .iter()
                .map(|status| match status {
                    201 => r#"{"create":{"status":201}}"#,
                    409 => {
                        r#"{"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[id]: version conflict, document already exists (current version [1])"}}}"#
                    }
                    _ => {
                        r#"{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [message]"}}}"#
                    }
                })
                .collect();
            (200, format!(r#"{{"errors":true,"items":[{}]}}"#, items.join(",")))
        })
        .await;
        let sink = sink_with_kafka(&url, &kafka.bootstrap_servers());
        kafka.create_topic(sink.dlq.topic(), 1, 1).unwrap();
        deliver(&sink, batch(&sink, 0, STATUSES.len() as i64)).await;

        let docs = |outcome: &str| sink.metrics.docs.get_or_create(&vec![("outcome", outcome.to_owned())]).get();
        let letters = |kind: &str| sink.metrics.dead_letters.get_or_create(&vec![("type", kind.to_owned())]).get();
        assert_eq!(docs("duplicate"), 3, "the three 409s settled as duplicate");
        assert_eq!(letters("version_conflict_engine_exception"), 0, "no 409 dead-lettered");
        assert_eq!(docs("indexed"), 2, "the two 201s settled as indexed");
        assert_eq!(letters("mapper_parsing_exception"), 1, "the 400 dead-lettered");
        assert_eq!(docs("dead_lettered"), 1, "nothing else dead-lettered");
        assert_eq!(requests.load(Ordering::Relaxed), 1, "nothing retried");
        assert_eq!(sink.tracker.lock().unwrap().commit_points(None), vec![(0, 6)], "all settled");
        // The topic holds the 400's letter and nothing more.
        let consumer: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create().unwrap();
        let (_, high) = consumer.fetch_watermarks(sink.dlq.topic(), 0, Duration::from_secs(5)).unwrap();
        assert_eq!(high, 1, "exactly one letter on the dead-letter topic");
    }

    /// Slots in use while a one-record batch backs off after its item got `item` (status, type).
    async fn slots_while_backing_off(status: u16, kind: &'static str) -> usize {
        let (url, _) = fake(move |n, body| {
            if n < 1 {
                (
                    200,
                    format!(
                        r#"{{"errors":true,"items":[{{"create":{{"status":{status},"error":{{"type":"{kind}"}}}}}}]}}"#
                    ),
                )
            } else {
                all_created(body)
            }
        })
        .await;
        let base = sink(&url);
        let retry = RetryConfig {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            ..RetryConfig::default()
        };
        let sink = Arc::new(Sink::new(
            base.pool.clone(),
            base.gate.clone(),
            base.limiter.clone(),
            base.tracker.clone(),
            base.dlq.clone(),
            Metrics::default(),
            Health::new(),
            retry,
            Duration::from_secs(5),
            base.backlog.clone(),
        ));
        let batch = batch(&sink, 0, 1);
        let task = {
            let sink = sink.clone();
            tokio::spawn(async move { deliver(&sink, batch).await })
        };
        // Sampled once the reply was applied (the retry is counted, the backoff begins), not after
        // a fixed sleep: on a loaded machine the reply may take longer than any sleep.
        let retried = |reason: &str| sink.metrics.retried.get_or_create(&vec![("reason", reason.to_owned())]).get();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while retried(kind) + retried("blocked") == 0 {
            assert!(std::time::Instant::now() < deadline, "the reply was never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let in_use = sink.limiter.in_use();
        task.await.unwrap();
        assert_eq!(sink.tracker.lock().unwrap().commit_points(None), vec![(0, 1)]);
        in_use
    }

    // Issue #9, scenario 14: a batch whose records fail on their own gives its slot back while it
    // backs off; one the cluster pushes back (429) keeps it (back-pressure).
    #[tokio::test]
    async fn a_batch_in_backoff_for_its_own_records_does_not_hold_a_slot() {
        assert_eq!(slots_while_backing_off(503, "unavailable_shards_exception").await, 0, "slot held in backoff");
        assert_eq!(slots_while_backing_off(400, "index_closed_exception").await, 0, "slot held while blocked");
        assert_eq!(slots_while_backing_off(429, "es_rejected_execution_exception").await, 1, "429 keeps the slot");
    }
}
