//! Batch: Kafka records → one NDJSON `_bulk` body, limited by encoded bytes, documents and linger.
//!
//! **Contract v1** (`sluice.v: 1`, one document per message): the body is the action line made from
//! the headers (`{"create":{"_index":…,"_id":…}}`) followed by the raw Kafka payload bytes:
//! documents are copied once and never parsed. Each [`Item`] remembers where its lines are, so a
//! retry can resend a subset by slicing, and where its key and original headers are (the *side*
//! buffer), so a dead letter carries the original record.
//!
//! **Contract v2** (`sluice.v: 2`, a frame line and one line per record, see
//! [`sluice_common::message`]): the message is decoded and expanded into one [`Item`] per record.
//! Each record's action line comes from its own `id` and `@timestamp` (never the `sluice.ts`
//! header: a message may span midnight) and the `sluice.ns` header; its document is rebuilt into
//! the body by [`RecordLine::write_document`], byte for byte what a v1 message of the record
//! carries. Its side entry holds the key and **synthesized v1 headers** (`sluice.id`, `sluice.ts`,
//! `sluice.ns`, `sluice.v: 1`, the message's headers outside `sluice.*`, and
//! `sluice.source.record` = the record's 0-based index), so a dead letter of one record is a v1
//! message of its document. The late-record policy applies per record. A value that does not
//! decode is one rejected item (the whole message, as read, dead-lettered as
//! [`CONTRACT_VIOLATION`]). The records of one message are never split across two batches (the
//! current batch is taken first when they do not fit; one message alone may exceed the limits):
//! otherwise the first part could settle and its offset be committed before the rest is sent.
//! Items of one message share its offset; [`Item::record`] and [`Item::records`] tell the
//! settle stage ([`crate::settle`]) to wait for all of them.

use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_common::message::{self, Decoded, RecordLine};
use sluice_common::schema::{DocumentFrame, Headers, header};

pub use crate::config::LatePolicy;
use crate::index::IndexPattern;

/// Error type written to dead letters for records that break the Kafka message contract.
pub const CONTRACT_VIOLATION: &str = "sluice_contract_violation";

/// Error type written to dead letters for records older than `retention.days` (policy
/// `retention.late_records: dead_letter`).
pub const RETENTION_EXPIRED: &str = "retention_expired";

/// Largest estimated expansion of one contract-v2 message (its records' action lines, documents
/// and side entries). The frame is repeated in every document, so a hostile message of many tiny
/// records under a huge frame could expand far beyond its own size: such a message is rejected
/// whole as a contract violation (memory stays bounded: one batch of at most this much beside
/// `batch.max_bytes`). The shipper's largest messages (`kafka.records_per_message` ≤ 10 000 records
/// in `kafka.max_message_bytes`, 1 MB by default, each record repeating a frame of a few KiB) stay
/// far below it. Together with `batch.max_bytes` <= 1 GiB (the batch before it is taken first) it
/// keeps every range of an [`Item`] within its `u32`.
pub const MAX_V2_EXPANSION: usize = 64 << 20;

/// One Kafka record as the batcher sees it (borrowed from the consumer).
#[derive(Debug, Clone)]
pub struct RecordRef<'a, H> {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value: the document.
    pub payload: Option<&'a [u8]>,
    /// Message headers as `(name, value)` pairs.
    pub headers: H,
}

/// Where one record lives in a [`Batch`], and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Assignment epoch of the partition when the record was dispatched (see [`crate::settle`]).
    pub epoch: u64,
    /// Action line + document + newline in [`Batch::body`]; empty for a pre-rejected record.
    pub doc: Range<u32>,
    /// Start of the document within `doc` (end of the action line).
    pub payload_start: u32,
    /// Key, headers (and the original payload when it is not in the body) in [`Batch::side`].
    pub side: Range<u32>,
    /// Why the record was rejected before reaching Elasticsearch: `(error type, reason)`.
    pub rejected: Option<Box<(String, String)>>,
    /// Bulk attempts so far.
    pub attempts: u32,
    /// When the first attempt failed (for `retry.give_up_after`).
    pub first_failure: Option<Instant>,
    /// 0-based index of this record in its Kafka message (0 for a v1 message).
    pub record: u32,
    /// Records the Kafka message at this offset holds, each an item of its own: 1 for a v1
    /// message and for a v2 message rejected whole. The offset is settled once all are.
    pub records: u32,
    /// Whether this is one record of an expanded contract-v2 message (its dead letter then carries
    /// `sluice.source.record` = [`Item::record`]).
    pub from_v2: bool,
}

impl Item {
    /// A record of a one-record message at `offset`, its side entry starting at `side`: no body
    /// lines yet, not rejected, never attempted.
    pub fn pending(partition: i32, offset: i64, side: u32) -> Self {
        Item {
            partition,
            offset,
            epoch: 0,
            doc: 0..0,
            payload_start: 0,
            side: side..side,
            rejected: None,
            attempts: 0,
            first_failure: None,
            record: 0,
            records: 1,
            from_v2: false,
        }
    }

    /// Whether the record is sent to Elasticsearch (not rejected up front).
    pub fn is_indexable(&self) -> bool {
        self.rejected.is_none()
    }

    /// The record's index in its contract-v2 message (`sluice.source.record` of its dead letter),
    /// `None` for a v1 message or a v2 message rejected whole.
    pub fn source_record(&self) -> Option<u32> {
        self.from_v2.then_some(self.record)
    }
}

/// A group of records sent as one `_bulk` request.
#[derive(Debug, Default)]
pub struct Batch {
    /// NDJSON body.
    pub body: Bytes,
    /// The records, in body order.
    pub items: Vec<Item>,
    /// Keys and headers of the records, for dead letters.
    pub side: Bytes,
}

impl Batch {
    /// Bytes of memory the batch holds (its share of `batch.max_in_flight_bytes`).
    pub fn memory(&self) -> usize {
        self.body.len() + self.side.len() + self.items.len() * std::mem::size_of::<Item>()
    }

    /// The document bytes of an item as sent to Elasticsearch.
    pub fn document(&self, item: &Item) -> &[u8] {
        let doc = &self.body[item.payload_start as usize..item.doc.end as usize];
        doc.strip_suffix(b"\n").unwrap_or(doc)
    }

    /// The original record (key, headers, payload) of an item, for the dead-letter topic.
    pub fn original(&self, item: &Item) -> SideRecord {
        let mut record = side::decode(&self.side[item.side.start as usize..item.side.end as usize]);
        if record.payload.is_none() && item.is_indexable() {
            record.payload = Some(self.document(item).to_vec());
        }
        record
    }

    /// A new body made of the given items' lines (for a retry of a subset), with their new ranges.
    pub fn subset(&self, items: Vec<Item>) -> Batch {
        let len: usize = items.iter().map(|i| i.doc.len()).sum();
        let mut body = Vec::with_capacity(len);
        let items = items
            .into_iter()
            .map(|mut item| {
                let start = offset32(body.len());
                body.extend_from_slice(&self.body[item.doc.start as usize..item.doc.end as usize]);
                item.payload_start = start + (item.payload_start - item.doc.start);
                item.doc = start..offset32(body.len());
                item
            })
            .collect();
        Batch { body: Bytes::from(body), items, side: self.side.clone() }
    }
}

/// The original record decoded from the side buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SideRecord {
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// All original headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The original payload when it differs from the body's copy (or is not in the body).
    pub payload: Option<Vec<u8>>,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the body **and** the side buffer together (the batch's memory). At most 1 GiB
    /// (validated), so with one record of at most 2 GiB (Kafka's limit) on top, every range of
    /// an [`Item`] fits its `u32`. The records of one v2 message stay together: the batch is
    /// taken before a message that does not fit, and one message alone may exceed the limit (its
    /// expansion is bounded by [`MAX_V2_EXPANSION`]).
    pub max_bytes: usize,
    /// Documents (records); one v2 message alone may exceed it.
    pub max_docs: usize,
    /// Longest time between the first record of a batch and its dispatch.
    pub linger: Duration,
}

/// Accumulates records into batches.
#[derive(Debug)]
pub struct Batcher {
    pattern: IndexPattern,
    limits: Limits,
    body: Vec<u8>,
    side: Vec<u8>,
    items: Vec<Item>,
    started: Option<Instant>,
    /// The last rendered index name, valid for `cache_key` (date-hour prefix of `sluice.ts`) and
    /// `cache_ns` while `cached`.
    index: String,
    cache_key: String,
    cache_ns: String,
    cached: bool,
    /// Whether the cached index is older than the retention cutoff.
    cache_expired: bool,
    /// Indices dated before this are deleted by retention (`None`: no retention).
    cutoff: Option<time::Date>,
    late_policy: LatePolicy,
    /// Late records seen (dead-lettered, indexed) since the last [`Batcher::take_late`].
    late: (u64, u64),
}

impl Batcher {
    /// A batcher writing to indices of `pattern`.
    pub fn new(pattern: IndexPattern, limits: Limits) -> Self {
        Batcher {
            pattern,
            limits,
            body: Vec::new(),
            side: Vec::new(),
            items: Vec::new(),
            started: None,
            index: String::new(),
            cache_key: String::new(),
            cache_ns: String::new(),
            cached: false,
            cache_expired: false,
            cutoff: None,
            late_policy: LatePolicy::default(),
            late: (0, 0),
        }
    }

    /// Records whose index date is before `cutoff` are late (see [`LatePolicy`]). Called again
    /// when the date changes.
    pub fn set_retention(&mut self, cutoff: Option<time::Date>, policy: LatePolicy) {
        if self.cutoff != cutoff {
            self.cached = false;
        }
        self.cutoff = cutoff;
        self.late_policy = policy;
    }

    /// Late records since the last call: `(dead-lettered, indexed)`.
    pub fn take_late(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.late)
    }

    /// Adds a record that is rejected before reaching Elasticsearch (e.g. a header key that is
    /// not UTF-8, found by the consumer): it is dead-lettered with `reason`.
    pub fn push_rejected<'a, H>(&mut self, record: RecordRef<'a, H>, reason: String, out: &mut Vec<Batch>)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        self.push_inner(record, Some(reason), out);
    }

    /// Adds a record. Batches that became complete are appended to `out`.
    pub fn push<'a, H>(&mut self, record: RecordRef<'a, H>, out: &mut Vec<Batch>)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        self.push_inner(record, None, out);
    }

    fn push_inner<'a, H>(&mut self, record: RecordRef<'a, H>, mut reject: Option<String>, out: &mut Vec<Batch>)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        if reject.is_none() && last_header(record.headers.clone(), header::V) == Some(Some(message::V2.as_bytes())) {
            match self.decode_v2(&record) {
                Ok((ns, decoded)) => return self.push_v2(&record, ns, decoded, out),
                // The whole message is one rejected item, as read.
                Err(reason) => reject = Some(reason),
            }
        }
        // Both buffers count: a record can land in the side buffer only (rejected) or in both
        // (newlines rewritten in the body, original kept aside).
        let payload_len = record.payload.map_or(0, <[u8]>::len);
        let headers_len: usize =
            record.headers.clone().into_iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 8).sum();
        let estimate = payload_len + headers_len + record.key.map_or(0, <[u8]>::len) + 160;
        if !self.items.is_empty() && self.bytes() + estimate > self.limits.max_bytes {
            out.extend(self.take());
        }
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
        let side_start = offset32(self.side.len());
        side::encode_key_headers(&mut self.side, record.key, record.headers.clone());
        let mut item = Item::pending(record.partition, record.offset, side_start);
        let encoded = match reject {
            Some(reason) => Err((CONTRACT_VIOLATION, reason)),
            None => self.encode(&record),
        };
        match encoded {
            Ok((doc, payload_start, modified)) => {
                item.doc = doc;
                item.payload_start = payload_start;
                if modified {
                    side::encode_payload(&mut self.side, record.payload);
                } else {
                    side::encode_payload(&mut self.side, None);
                }
            }
            Err((error_type, reason)) => {
                side::encode_payload(&mut self.side, Some(record.payload.unwrap_or_default()));
                item.rejected = Some(Box::new((error_type.to_owned(), reason)));
            }
        }
        item.side.end = offset32(self.side.len());
        self.items.push(item);
        self.take_if_full(out);
    }

    /// Dispatches the current batch if it reached a limit.
    fn take_if_full(&mut self, out: &mut Vec<Batch>) {
        if self.bytes() >= self.limits.max_bytes || self.items.len() >= self.limits.max_docs {
            out.extend(self.take());
        }
    }

    /// Reads a contract-v2 message: its `sluice.ns` and its decoded value; `Err(reason)` when the
    /// message breaks the contract (it is then rejected whole).
    fn decode_v2<'a, H>(&self, record: &RecordRef<'a, H>) -> Result<(&'a str, Decoded<'a>), String>
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        let ns = match last_header(record.headers.clone(), header::NS) {
            None => "",
            Some(value) => std::str::from_utf8(value.unwrap_or_default())
                .map_err(|_| format!("header `{}` is not UTF-8", header::NS))?,
        };
        let payload = record.payload.unwrap_or_default();
        let decoded = message::decode(payload).map_err(|e| e.to_string())?;
        // Every record repeats the frame: bound what one message may become (see MAX_V2_EXPANSION).
        let expansion = self.v2_estimate(record, ns, &decoded);
        if expansion > MAX_V2_EXPANSION {
            return Err(format!(
                "contract v2: {} records under a frame of {} bytes expand to about {expansion} bytes, more than {MAX_V2_EXPANSION}",
                decoded.records.len(),
                decoded.frame.line().len()
            ));
        }
        Ok((ns, decoded))
    }

    /// Bytes (body and side buffer) the records of a decoded v2 message will take, about.
    fn v2_estimate<'a, H>(&self, record: &RecordRef<'a, H>, ns: &str, decoded: &Decoded<'_>) -> usize
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        let kept_headers: usize = record
            .headers
            .clone()
            .into_iter()
            .filter(|(k, _)| !is_contract_header(k))
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 8)
            .sum();
        // Per record: the frame in its document; action line, the contract headers' names and
        // framing, `sluice.ns` and the key in the side buffer. The record lines' own bytes (id,
        // timestamp, message…) appear up to three times (action line, document, side headers).
        let per_record = decoded.frame.line().len() + kept_headers + ns.len() + record.key.map_or(0, <[u8]>::len) + 256;
        let lines = record.payload.map_or(0, <[u8]>::len);
        decoded.records.len().saturating_mul(per_record).saturating_add(lines.saturating_mul(2))
    }

    /// Adds one item per record of a decoded v2 message, all in the same batch.
    fn push_v2<'a, H>(&mut self, record: &RecordRef<'a, H>, ns: &str, decoded: Decoded<'_>, out: &mut Vec<Batch>)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        let n = decoded.records.len();
        let estimate = self.v2_estimate(record, ns, &decoded);
        // Never split a message: take the current batch first when the message does not fit.
        if !self.items.is_empty()
            && (self.bytes() + estimate > self.limits.max_bytes || self.items.len() + n > self.limits.max_docs)
        {
            out.extend(self.take());
        }
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
        let records = u32::try_from(n).expect("a message holds fewer than 2^32 records");
        // The message's own headers outside the contract travel with every record.
        let kept: Vec<(&str, Option<&[u8]>)> =
            record.headers.clone().into_iter().filter(|(k, _)| !is_contract_header(k)).collect();
        let mut index = String::new();
        let mut rebuilt = Vec::new();
        for (i, line) in decoded.records.iter().enumerate() {
            let side_start = offset32(self.side.len());
            index.clear();
            index.push_str(&i.to_string());
            let mut pairs: Vec<(&str, Option<&[u8]>)> = Vec::with_capacity(kept.len() + 5);
            pairs.extend([
                (header::ID, Some(line.id.as_bytes())),
                (header::TS, Some(line.timestamp.as_bytes())),
                (header::NS, Some(ns.as_bytes())),
                (header::V, Some(message::V1.as_bytes())),
            ]);
            for &pair in &kept {
                pairs.push(pair);
            }
            pairs.push((header::SOURCE_RECORD, Some(index.as_bytes())));
            side::encode_key_headers(&mut self.side, record.key, pairs);
            let mut item = Item {
                record: i as u32,
                records,
                from_v2: true,
                ..Item::pending(record.partition, record.offset, side_start)
            };
            match self.encode_v2(line, &decoded.frame, ns) {
                Ok((doc, payload_start)) => {
                    item.doc = doc;
                    item.payload_start = payload_start;
                    side::encode_payload(&mut self.side, None);
                }
                Err((error_type, reason)) => {
                    // The dead letter carries the record's document, as a v1 message would.
                    rebuilt.clear();
                    line.write_document(&decoded.frame, &mut rebuilt);
                    side::encode_payload(&mut self.side, Some(&rebuilt));
                    item.rejected = Some(Box::new((error_type.to_owned(), reason)));
                }
            }
            item.side.end = offset32(self.side.len());
            self.items.push(item);
        }
        self.take_if_full(out);
    }

    /// Writes the action line and the rebuilt document of one v2 record; returns the doc range and
    /// payload start.
    fn encode_v2(
        &mut self,
        line: &RecordLine<'_>,
        frame: &DocumentFrame,
        ns: &str,
    ) -> Result<(Range<u32>, u32), (&'static str, String)> {
        let violation = |reason: String| (CONTRACT_VIOLATION, reason);
        if line.id.is_empty() {
            return Err(violation("contract v2: empty record `id`".into()));
        }
        self.resolve_index(&line.timestamp, ns).map_err(violation)?;
        self.check_late()?;
        let start = self.body.len();
        self.write_action(&line.id);
        let payload_start = self.body.len();
        // JSON escapes every newline inside the document: the NDJSON framing is safe.
        line.write_document(frame, &mut self.body);
        self.body.push(b'\n');
        Ok((offset32(start)..offset32(self.body.len()), offset32(payload_start)))
    }

    /// Bytes held by the batch being built (body and side buffer).
    fn bytes(&self) -> usize {
        self.body.len() + self.side.len()
    }

    /// The retention verdict on the index just resolved: `Err` when the record must be
    /// dead-lettered as late (`retention.late_records: dead_letter`); counts late records.
    fn check_late(&mut self) -> Result<(), (&'static str, String)> {
        if self.cache_expired {
            match self.late_policy {
                LatePolicy::DeadLetter => {
                    self.late.0 += 1;
                    return Err((
                        RETENTION_EXPIRED,
                        format!(
                            "index {} is older than retention.days (cutoff {}): it would be deleted by the next retention sweep",
                            self.index,
                            self.cutoff.map(|c| c.to_string()).unwrap_or_default()
                        ),
                    ));
                }
                LatePolicy::Index => self.late.1 += 1,
            }
        }
        Ok(())
    }

    /// Appends `{"create":{"_index":<self.index>,"_id":<id>}}\n` to the body.
    fn write_action(&mut self, id: &str) {
        self.body.extend_from_slice(b"{\"create\":{\"_index\":\"");
        self.body.extend_from_slice(self.index.as_bytes());
        self.body.extend_from_slice(b"\",\"_id\":");
        serde_json::to_writer(&mut self.body, id).expect("writing to a Vec cannot fail");
        self.body.extend_from_slice(b"}}\n");
    }

    /// Writes the action line and document; returns the doc range, payload start, and whether the
    /// payload had to be changed (newlines replaced).
    fn encode<'a, H>(&mut self, record: &RecordRef<'a, H>) -> Result<(Range<u32>, u32, bool), (&'static str, String)>
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        let violation = |reason: String| (CONTRACT_VIOLATION, reason);
        let headers = Headers::from_pairs(record.headers.clone()).map_err(|e| violation(e.to_string()))?;
        let payload = record.payload.unwrap_or_default();
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(violation("empty payload".into()));
        }
        if headers.id.is_empty() {
            return Err(violation("empty header `sluice.id`".into()));
        }
        self.resolve_index(&headers.ts, &headers.ns).map_err(violation)?;
        self.check_late()?;
        let start = self.body.len();
        self.write_action(&headers.id);
        let payload_start = self.body.len();
        // A newline outside a JSON string is whitespace, inside one it is invalid JSON anyway:
        // replacing it keeps valid documents equal and protects the NDJSON framing.
        let modified = memchr::memchr(b'\n', payload).is_some();
        if modified {
            self.body.extend(payload.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        } else {
            self.body.extend_from_slice(payload);
        }
        self.body.push(b'\n');
        Ok((offset32(start)..offset32(self.body.len()), offset32(payload_start), modified))
    }

    /// Makes `self.index` the index of a record with these headers.
    fn resolve_index(&mut self, ts: &str, ns: &str) -> Result<(), String> {
        // Records of one hour (and namespace) share an index name: render it once. Only UTC
        // (`…Z`) timestamps are cached: with an offset the prefix is not the UTC hour.
        let key = ts.get(..13).unwrap_or(ts);
        let ns_key = if self.pattern.uses_namespace() { ns } else { "" };
        // Exactly the shape `index::utc_date_hour` reads from fixed positions, so a cache hit gives
        // the verdict a fresh render would (a malformed `sluice.ts` is never let through by the
        // valid one before it, and a re-delivery after a restart is treated the same).
        let utc = ts.len() >= 20 && ts.as_bytes()[13] == b':' && ts.ends_with(['Z', 'z']);
        if utc && self.cached && self.cache_key == key && self.cache_ns == ns_key {
            return Ok(());
        }
        self.cached = false;
        self.index.clear();
        self.pattern.render_into(ts, ns, &mut self.index).map_err(|e| e.to_string())?;
        self.cache_expired =
            self.cutoff.is_some_and(|cutoff| self.pattern.date_of(&self.index).is_some_and(|d| d < cutoff));
        if utc {
            self.cached = true;
            self.cache_key.clear();
            self.cache_key.push_str(key);
            self.cache_ns.clear();
            self.cache_ns.push_str(ns_key);
        }
        Ok(())
    }

    /// When the current batch must be dispatched even if not full.
    pub fn deadline(&self) -> Option<Instant> {
        self.started.map(|s| s + self.limits.linger)
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the current batch, if any.
    pub fn take(&mut self) -> Option<Batch> {
        if self.items.is_empty() {
            return None;
        }
        self.started = None;
        // The next batch starts with the capacities this one needed: growing a buffer by doubling
        // copies it each time (the body, and the side buffer and items).
        let cap = self.limits.max_bytes.min(self.body.capacity());
        let body = std::mem::replace(&mut self.body, Vec::with_capacity(cap));
        let cap = self.limits.max_bytes.min(self.side.capacity());
        let side = std::mem::replace(&mut self.side, Vec::with_capacity(cap));
        let cap = self.limits.max_docs.min(self.items.capacity());
        let items = std::mem::replace(&mut self.items, Vec::with_capacity(cap));
        Some(Batch { body: Bytes::from(body), items, side: Bytes::from(side) })
    }
}

/// A buffer position as stored in an [`Item`]. Batches stay far below 4 GiB (see
/// [`Limits::max_bytes`]); a wrap would corrupt dead letters silently, so it is a bug that stops.
fn offset32(n: usize) -> u32 {
    u32::try_from(n).expect("batch buffers stay below 4 GiB (batch.max_bytes <= 1 GiB)")
}

/// The value of the last header `name` (`Some(None)`: present without value), as
/// [`Headers::from_pairs`] reads it.
fn last_header<'a, H>(headers: H, name: &str) -> Option<Option<&'a [u8]>>
where
    H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
{
    headers.into_iter().filter(|(k, _)| *k == name).last().map(|(_, v)| v)
}

/// Headers of the contract (`sluice.*`): a v2 record's synthesized headers replace them.
fn is_contract_header(name: &str) -> bool {
    name.starts_with("sluice.")
}

/// Compact encoding of key, headers and (optionally) payload in the side buffer.
mod side {
    use super::SideRecord;

    const NONE: u32 = u32::MAX;

    fn put_bytes(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                out.extend_from_slice(&super::offset32(v.len()).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&NONE.to_le_bytes()),
        }
    }

    pub(super) fn encode_key_headers<'a, H>(out: &mut Vec<u8>, key: Option<&[u8]>, headers: H)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        put_bytes(out, key);
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for (name, value) in headers {
            put_bytes(out, Some(name.as_bytes()));
            put_bytes(out, value);
            count += 1;
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    }

    pub(super) fn encode_payload(out: &mut Vec<u8>, payload: Option<&[u8]>) {
        put_bytes(out, payload);
    }

    fn get_bytes(input: &mut &[u8]) -> Option<Vec<u8>> {
        let (len, rest) = input.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
        if len == NONE {
            *input = rest;
            return None;
        }
        let (value, rest) = rest.split_at(len as usize);
        *input = rest;
        Some(value.to_vec())
    }

    pub(super) fn decode(mut input: &[u8]) -> SideRecord {
        let key = get_bytes(&mut input);
        let (count, rest) = input.split_at(4);
        input = rest;
        let count = u32::from_le_bytes(count.try_into().expect("4 bytes"));
        let headers = (0..count)
            .map(|_| {
                let name = get_bytes(&mut input).unwrap_or_default();
                (String::from_utf8_lossy(&name).into_owned(), get_bytes(&mut input))
            })
            .collect();
        let payload = get_bytes(&mut input);
        SideRecord { key, headers, payload }
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::schema::header;

    use super::*;

    fn limits(max_bytes: usize, max_docs: usize) -> Limits {
        Limits { max_bytes, max_docs, linger: Duration::from_millis(100) }
    }

    fn headers(id: &str, ts: &str) -> Vec<(&'static str, Option<Vec<u8>>)> {
        vec![
            (header::ID, Some(id.as_bytes().to_vec())),
            (header::TS, Some(ts.as_bytes().to_vec())),
            (header::NS, Some(b"default".to_vec())),
            (header::V, Some(b"1".to_vec())),
        ]
    }

    fn push(b: &mut Batcher, offset: i64, id: &str, payload: &[u8], out: &mut Vec<Batch>) {
        let h = headers(id, "2026-11-27T10:00:00.123Z");
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        b.push(
            RecordRef {
                partition: 0,
                offset,
                key: Some(b"uid/app"),
                payload: Some(payload),
                headers: pairs.iter().copied(),
            },
            out,
        );
    }

    fn batcher(max_bytes: usize, max_docs: usize) -> Batcher {
        Batcher::new(IndexPattern::parse("sluice-logs-%Y.%m.%d").unwrap(), limits(max_bytes, max_docs))
    }

    #[test]
    fn body_is_action_line_plus_raw_payload() {
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        push(&mut b, 7, "id-\"1\"", br#"{"message":"hi"}"#, &mut out);
        assert!(out.is_empty());
        let batch = b.take().unwrap();
        assert_eq!(
            std::str::from_utf8(&batch.body).unwrap(),
            "{\"create\":{\"_index\":\"sluice-logs-2026.11.27\",\"_id\":\"id-\\\"1\\\"\"}}\n{\"message\":\"hi\"}\n"
        );
        let item = &batch.items[0];
        assert_eq!(batch.document(item), br#"{"message":"hi"}"#);
        assert_eq!((item.partition, item.offset), (0, 7));
        let original = batch.original(item);
        assert_eq!(original.key.as_deref(), Some(&b"uid/app"[..]));
        assert_eq!(original.headers.len(), 4);
        assert_eq!(original.payload.as_deref(), Some(&br#"{"message":"hi"}"#[..]));
        assert!(b.take().is_none());
    }

    #[test]
    fn count_limit_dispatches_full_batches() {
        let mut b = batcher(1 << 20, 3);
        let mut out = Vec::new();
        for i in 0..7 {
            push(&mut b, i, &format!("id{i}"), b"{}", &mut out);
        }
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|batch| batch.items.len() == 3));
        assert_eq!(b.take().unwrap().items.len(), 1);
    }

    #[test]
    fn byte_limit_keeps_batches_under_max_bytes() {
        let mut b = batcher(2048, 10_000);
        let mut out = Vec::new();
        let payload = format!("{{\"message\":\"{}\"}}", "x".repeat(300));
        for i in 0..20 {
            push(&mut b, i, &format!("id{i}"), payload.as_bytes(), &mut out);
        }
        out.extend(b.take());
        assert!(out.len() >= 4);
        for batch in &out {
            assert!(batch.body.len() <= 2048, "{}", batch.body.len());
        }
        assert_eq!(out.iter().map(|b| b.items.len()).sum::<usize>(), 20);
        // A record larger than the limit travels alone.
        let big = format!("{{\"message\":\"{}\"}}", "y".repeat(5000));
        let mut out = Vec::new();
        push(&mut b, 100, "small", b"{}", &mut out);
        push(&mut b, 101, "big", big.as_bytes(), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].items.len(), 1);
    }

    #[test]
    fn linger_deadline_starts_with_the_first_record() {
        let mut b = batcher(1 << 20, 100);
        assert!(b.deadline().is_none());
        let mut out = Vec::new();
        push(&mut b, 0, "a", b"{}", &mut out);
        let deadline = b.deadline().unwrap();
        assert!(deadline > Instant::now() && deadline <= Instant::now() + Duration::from_millis(100));
        b.take();
        assert!(b.deadline().is_none() && b.is_empty());
    }

    #[test]
    fn contract_violations_are_rejected_with_their_original() {
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        let pairs: Vec<(&str, Option<&[u8]>)> = vec![(header::V, Some(b"1")), (header::ID, Some(b"x"))];
        b.push(
            RecordRef { partition: 1, offset: 5, key: None, payload: Some(b"{}"), headers: pairs.iter().copied() },
            &mut out,
        );
        push(&mut b, 6, "y", b"  ", &mut out);
        let h = headers("z", "not-a-time");
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        b.push(
            RecordRef { partition: 1, offset: 7, key: None, payload: Some(b"{}"), headers: pairs.iter().copied() },
            &mut out,
        );
        let batch = b.take().unwrap();
        assert!(batch.body.is_empty());
        let reasons: Vec<&str> = batch.items.iter().map(|i| i.rejected.as_ref().unwrap().1.as_str()).collect();
        assert_eq!(reasons[0], "missing header `sluice.ts`");
        assert_eq!(reasons[1], "empty payload");
        assert!(reasons[2].contains("not-a-time"), "{}", reasons[2]);
        assert_eq!(batch.original(&batch.items[0]).payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(batch.original(&batch.items[0]).key, None);
    }

    /// Hostile input (issue #14, found by the `kafka_headers` fuzz target): a malformed `sluice.ts`
    /// that shares its date-hour prefix with the record before it was accepted through the
    /// index-name cache, while the same record alone (after a restart) was dead-lettered.
    #[test]
    fn a_malformed_timestamp_is_rejected_also_after_a_valid_one_of_the_same_hour() {
        for ts in ["2026-11-27T10Z", "2026-11-27T10xxxxxxZ", "2026-11-27T10"] {
            let mut b = batcher(1 << 20, 100);
            let mut out = Vec::new();
            push(&mut b, 0, "ok", b"{}", &mut out);
            let h = headers("bad", ts);
            let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|(k, v)| (*k, v.as_deref())).collect();
            b.push(
                RecordRef { partition: 0, offset: 1, key: None, payload: Some(b"{}"), headers: pairs.iter().copied() },
                &mut out,
            );
            let batch = b.take().unwrap();
            assert!(batch.items[0].is_indexable());
            assert!(!batch.items[1].is_indexable(), "`{ts}` accepted after a valid timestamp of the same hour");
        }
    }

    #[test]
    fn newlines_in_payload_do_not_break_framing_and_the_original_is_kept() {
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        push(&mut b, 0, "a", b"{\n\"message\": \"x\"\n}", &mut out);
        let batch = b.take().unwrap();
        assert_eq!(batch.body.iter().filter(|&&c| c == b'\n').count(), 2);
        assert_eq!(batch.document(&batch.items[0]), b"{ \"message\": \"x\" }");
        assert_eq!(batch.original(&batch.items[0]).payload.as_deref(), Some(&b"{\n\"message\": \"x\"\n}"[..]));
    }

    #[test]
    fn subset_reslices_items() {
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        for i in 0..4 {
            push(&mut b, i, &format!("id{i}"), format!("{{\"n\":{i}}}").as_bytes(), &mut out);
        }
        let batch = b.take().unwrap();
        let picked = vec![batch.items[1].clone(), batch.items[3].clone()];
        let retry = batch.subset(picked);
        let text = std::str::from_utf8(&retry.body).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("\"_id\":\"id1\"") && text.contains("\"_id\":\"id3\""));
        assert_eq!(retry.document(&retry.items[1]), b"{\"n\":3}");
        assert_eq!(retry.original(&retry.items[0]).headers[0].1.as_deref(), Some(&b"id1"[..]));
    }

    // Issue #9, scenario 17: bytes kept aside (records without headers, rewritten newlines) count
    // toward `batch.max_bytes` too.
    #[test]
    fn side_buffer_counts_toward_the_byte_limit() {
        let mut b = batcher(4096, 10_000);
        let mut out = Vec::new();
        let payload = format!("{{\"message\":\"{}\"}}", "z".repeat(1000));
        for i in 0..50 {
            // No contract headers: rejected up front, the payload lives in the side buffer only.
            b.push(
                RecordRef {
                    partition: 0,
                    offset: i,
                    key: None,
                    payload: Some(payload.as_bytes()),
                    headers: [].into_iter(),
                },
                &mut out,
            );
        }
        let multiline = format!("{{\n\"message\":\"{}\"\n}}", "n".repeat(1000));
        for i in 50..100 {
            push(&mut b, i, &format!("id{i}"), multiline.as_bytes(), &mut out);
        }
        out.extend(b.take());
        assert_eq!(out.iter().map(|b| b.items.len()).sum::<usize>(), 100);
        for batch in &out {
            let bytes = batch.body.len() + batch.side.len();
            assert!(
                bytes <= 4096 + 1200,
                "batch of {} records holds {bytes} bytes for max_bytes 4096",
                batch.items.len()
            );
        }
    }

    // ---- Contract v2 ----

    use sluice_common::message::{Encoder, write_record_line};
    use sluice_common::schema::{Document, RecordFields, Stream, tag};

    const GOLDEN: &str = r#"{"@timestamp":"2026-11-27T00:17:09.669794202Z","message":"hello","stream":"stdout","log":{"file":{"path":"/var/log/pods/default_web-0_0d6c/app/0.log"},"offset":0},"kubernetes":{"namespace":"default","pod":{"name":"web-0","uid":"0d6c"},"container":{"name":"app"},"node":{"name":"node-1"},"labels":{"app_kubernetes_io/name":"web"}},"host":{"name":"node-1"},"agent":{"type":"sluice","version":"0.1.0"},"tags":["metadata_from_path"]}"#;

    /// (id, @timestamp, message, stream, offset, tags) of one record.
    type Rec = (&'static str, &'static str, &'static str, Stream, u64, Vec<&'static str>);

    fn frame() -> DocumentFrame {
        DocumentFrame::new(&serde_json::from_str::<Document<'_>>(GOLDEN).unwrap())
    }

    fn fields<'r>(r: &'r Rec) -> RecordFields<'r> {
        RecordFields { timestamp: r.1, message: r.2, stream: r.3, offset: r.4 }
    }

    /// The v2 value of `records` under `frame`.
    fn v2_value(frame: &DocumentFrame, records: &[Rec]) -> Vec<u8> {
        let mut enc = Encoder::new(frame);
        let mut line = Vec::new();
        for r in records {
            line.clear();
            write_record_line(&mut line, r.0, &fields(r), r.5.iter().copied());
            enc.push_line(&line);
        }
        enc.finish()
    }

    fn v2_headers(ts: &str) -> Vec<(&'static str, Option<Vec<u8>>)> {
        vec![
            (header::V, Some(b"2".to_vec())),
            (header::NS, Some(b"default".to_vec())),
            (header::TS, Some(ts.as_bytes().to_vec())),
            ("traceparent", Some(b"00-abc-01".to_vec())),
        ]
    }

    fn push_v2(b: &mut Batcher, offset: i64, value: &[u8], out: &mut Vec<Batch>) {
        let h = v2_headers("2026-11-27T10:00:00Z");
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        b.push(
            RecordRef {
                partition: 0,
                offset,
                key: Some(b"uid/app"),
                payload: Some(value),
                headers: pairs.iter().copied(),
            },
            out,
        );
    }

    fn sample_records() -> Vec<Rec> {
        vec![
            ("a-0", "2026-11-27T10:17:09.669794202Z", "hello", Stream::Stdout, 0, vec![]),
            (
                "a-95",
                "2026-11-27T10:59:59.999999999Z",
                "tab\there \"q\" \u{1}\nnext",
                Stream::Stderr,
                95,
                vec![tag::MULTILINE],
            ),
            ("a-200", "2026-11-27T11:00:00Z", "ünïcödé", Stream::Stdout, 200, vec![tag::TRUNCATED, tag::INVALID_UTF8]),
        ]
    }

    #[test]
    fn a_v2_message_gives_the_body_and_dead_letters_of_the_same_records_in_v1() {
        let frame = frame();
        let records = sample_records();
        // v1: one message per record, its document written by the same code.
        let mut v1 = batcher(1 << 20, 100);
        let mut out = Vec::new();
        let mut docs = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut doc = Vec::new();
            frame.write(&mut doc, &fields(r), r.5.iter().copied());
            let h = headers(r.0, r.1);
            let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|(k, v)| (*k, v.as_deref())).collect();
            v1.push(
                RecordRef {
                    partition: 0,
                    offset: i as i64,
                    key: Some(b"uid/app"),
                    payload: Some(&doc),
                    headers: pairs.iter().copied(),
                },
                &mut out,
            );
            docs.push(doc);
        }
        let v1 = v1.take().unwrap();
        // v2: the same records in one message.
        let mut v2 = batcher(1 << 20, 100);
        push_v2(&mut v2, 7, &v2_value(&frame, &records), &mut out);
        assert!(out.is_empty());
        let v2 = v2.take().unwrap();
        assert_eq!(std::str::from_utf8(&v2.body).unwrap(), std::str::from_utf8(&v1.body).unwrap(), "same _bulk body");
        assert_eq!(v2.items.len(), 3);
        for (i, (item, doc)) in v2.items.iter().zip(&docs).enumerate() {
            assert_eq!((item.offset, item.record, item.records, item.from_v2), (7, i as u32, 3, true));
            assert_eq!(item.source_record(), Some(i as u32));
            assert_eq!(v2.document(item), &doc[..]);
            // The dead-letter view is a v1 message of the record (plus its index, other headers kept).
            let original = v2.original(item);
            assert_eq!(original.payload.as_deref(), Some(&doc[..]), "payload from the body");
            assert_eq!(original.key.as_deref(), Some(&b"uid/app"[..]));
            let mut want: Vec<(String, Option<Vec<u8>>)> =
                headers(records[i].0, records[i].1).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            want.push(("traceparent".into(), Some(b"00-abc-01".to_vec())));
            want.push((header::SOURCE_RECORD.into(), Some(i.to_string().into_bytes())));
            assert_eq!(original.headers, want);
            // Read back as v1, the synthesized headers pass the contract.
            let pairs: Vec<(&str, Option<&[u8]>)> =
                original.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            assert_eq!(Headers::from_pairs(pairs).unwrap().id, records[i].0);
        }
        // A subset (retry) keeps the record's identity and document.
        let retry = v2.subset(vec![v2.items[1].clone()]);
        assert_eq!(retry.document(&retry.items[0]), &docs[1][..]);
        assert_eq!((retry.items[0].record, retry.items[0].records), (1, 3));
        assert_eq!(retry.original(&retry.items[0]).payload.as_deref(), Some(&docs[1][..]));
    }

    #[test]
    fn a_v2_message_across_midnight_routes_each_record_by_its_own_timestamp() {
        let records: Vec<Rec> = vec![
            ("m-1", "2026-11-27T23:59:59.999999999Z", "before", Stream::Stdout, 0, vec![]),
            ("m-2", "2026-11-28T00:00:00.000000001Z", "after", Stream::Stdout, 10, vec![]),
            ("m-3", "2026-11-28T00:00:01Z", "after too", Stream::Stdout, 20, vec![]),
        ];
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        // `sluice.ts` is the first record's (2026-11-27): it must not route the others.
        let h = v2_headers(records[0].1);
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        let value = v2_value(&frame(), &records);
        b.push(
            RecordRef { partition: 0, offset: 0, key: None, payload: Some(&value), headers: pairs.iter().copied() },
            &mut out,
        );
        let batch = b.take().unwrap();
        let indices: Vec<String> = batch
            .items
            .iter()
            .map(|i| {
                let action: serde_json::Value =
                    serde_json::from_slice(&batch.body[i.doc.start as usize..i.payload_start as usize]).unwrap();
                format!(
                    "{} {}",
                    action["create"]["_index"].as_str().unwrap(),
                    action["create"]["_id"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(indices, ["sluice-logs-2026.11.27 m-1", "sluice-logs-2026.11.28 m-2", "sluice-logs-2026.11.28 m-3"]);
    }

    #[test]
    fn an_undecodable_v2_message_is_one_rejected_item_with_its_original() {
        let frame = frame();
        let mut good = v2_value(&frame, &sample_records());
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        let mut bad_line = good.clone();
        bad_line.extend_from_slice(b"\n{\"id\":\"x\"}");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bad_line, "record line 4 does not parse"),
            (frame.line().to_vec(), "without records"),
            (b"{\"message\":\"a v1 document\"}".to_vec(), "frame line does not parse"),
            (Vec::new(), "frame line does not parse"),
        ];
        for (offset, (value, _)) in cases.iter().enumerate() {
            push_v2(&mut b, offset as i64, value, &mut out);
        }
        // And a v2 message after them is expanded as usual.
        good.push(b'\n');
        push_v2(&mut b, 10, &good, &mut out);
        let batch = b.take().unwrap();
        assert_eq!(batch.items.len(), cases.len() + 3);
        for (item, (value, reason)) in batch.items.iter().zip(&cases) {
            let (kind, why) = item.rejected.as_deref().expect("rejected");
            assert_eq!(kind, CONTRACT_VIOLATION);
            assert!(why.contains(reason), "{why:?} should say {reason:?}");
            assert_eq!((item.record, item.records, item.source_record()), (0, 1, None), "the whole message");
            let original = batch.original(item);
            assert_eq!(original.payload.as_deref(), Some(&value[..]), "the original value");
            let want: Vec<(String, Option<Vec<u8>>)> =
                v2_headers("2026-11-27T10:00:00Z").into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            assert_eq!(original.headers, want, "the original headers");
        }
        assert!(batch.items[cases.len()..].iter().all(|i| i.is_indexable() && i.records == 3));
    }

    #[test]
    fn unknown_versions_and_bad_v2_headers_stay_contract_violations() {
        let value = v2_value(&frame(), &sample_records());
        let mut b = batcher(1 << 20, 100);
        let mut out = Vec::new();
        for (offset, (v, ns)) in [(&b"3"[..], &b"default"[..]), (b"2", b"\xffns")].into_iter().enumerate() {
            let pairs: Vec<(&str, Option<&[u8]>)> = vec![(header::V, Some(v)), (header::NS, Some(ns))];
            b.push(
                RecordRef {
                    partition: 0,
                    offset: offset as i64,
                    key: None,
                    payload: Some(&value),
                    headers: pairs.iter().copied(),
                },
                &mut out,
            );
        }
        let batch = b.take().unwrap();
        let reasons: Vec<&str> = batch.items.iter().map(|i| i.rejected.as_ref().unwrap().1.as_str()).collect();
        assert!(reasons[0].contains("unsupported contract version `3`"), "{reasons:?}");
        assert_eq!(reasons[1], "header `sluice.ns` is not UTF-8");
    }

    #[test]
    fn a_bad_or_late_record_of_a_v2_message_is_rejected_alone_with_its_document() {
        let frame = frame();
        let records: Vec<Rec> = vec![
            ("ok-1", "2026-11-27T10:00:00Z", "fine", Stream::Stdout, 0, vec![]),
            ("late", "2026-10-01T10:00:00Z", "too old", Stream::Stdout, 1, vec![]),
            ("bad-ts", "2026-13-45T99:00:00Z", "bad time", Stream::Stdout, 2, vec![]),
            ("", "2026-11-27T10:00:00Z", "no id", Stream::Stdout, 3, vec![]),
            ("ok-2", "2026-11-27T10:00:01Z", "fine too", Stream::Stdout, 4, vec![]),
        ];
        let mut b = batcher(1 << 20, 100);
        b.set_retention(Some(time::macros::date!(2026 - 11 - 01)), LatePolicy::DeadLetter);
        let mut out = Vec::new();
        push_v2(&mut b, 3, &v2_value(&frame, &records), &mut out);
        let batch = b.take().unwrap();
        assert_eq!(b.take_late(), (1, 0));
        let kinds: Vec<Option<&str>> =
            batch.items.iter().map(|i| i.rejected.as_deref().map(|r| r.0.as_str())).collect();
        assert_eq!(kinds, [None, Some(RETENTION_EXPIRED), Some(CONTRACT_VIOLATION), Some(CONTRACT_VIOLATION), None]);
        for (item, r) in batch.items.iter().zip(&records) {
            let mut doc = Vec::new();
            frame.write(&mut doc, &fields(r), r.5.iter().copied());
            assert_eq!(batch.original(item).payload, Some(doc), "{}", r.0);
            assert_eq!(item.records, 5);
        }
        assert_eq!(std::str::from_utf8(&batch.body).unwrap().lines().count(), 4, "two indexable records");
    }

    #[test]
    fn a_v2_message_is_never_split_across_batches() {
        let frame = frame();
        let many: Vec<Rec> = (0..5)
            .map(|i| {
                let id: &'static str = Box::leak(format!("r-{i}").into_boxed_str());
                (id, "2026-11-27T10:00:00Z", "line", Stream::Stdout, i, vec![])
            })
            .collect();
        let value = v2_value(&frame, &many);
        // By documents: 2 v1 records, then 5 records for max_docs 3.
        let mut b = batcher(1 << 20, 3);
        let mut out = Vec::new();
        push(&mut b, 0, "a", b"{}", &mut out);
        push(&mut b, 1, "b", b"{}", &mut out);
        push_v2(&mut b, 2, &value, &mut out);
        push(&mut b, 3, "c", b"{}", &mut out);
        out.extend(b.take());
        let shape: Vec<Vec<(i64, u32)>> =
            out.iter().map(|batch| batch.items.iter().map(|i| (i.offset, i.record)).collect()).collect();
        assert_eq!(
            shape,
            vec![vec![(0, 0), (1, 0)], vec![(2, 0), (2, 1), (2, 2), (2, 3), (2, 4)], vec![(3, 0)]],
            "the current batch is taken first; the message alone exceeds max_docs"
        );
        // By bytes: a message larger than what is left goes to the next batch whole.
        let mut b = batcher(4096, 10_000);
        let mut out = Vec::new();
        let filler = format!("{{\"message\":\"{}\"}}", "x".repeat(2000));
        push(&mut b, 0, "f", filler.as_bytes(), &mut out);
        push_v2(&mut b, 1, &value, &mut out);
        out.extend(b.take());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].items.len(), 1);
        assert!(out[1].items.iter().all(|i| i.offset == 1) && out[1].items.len() == 5);
    }
}
