//! Batch: Kafka records → one NDJSON `_bulk` body, limited by encoded bytes, documents and linger.
//!
//! The body is the action line made from the headers (`{"create":{"_index":…,"_id":…}}`) followed by
//! the raw Kafka payload bytes: documents are copied once and never parsed. Each [`Item`] remembers
//! where its lines are, so a retry can resend a subset by slicing, and where its key and original
//! headers are (the *side* buffer), so a dead letter carries the original record.

use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_common::schema::Headers;

pub use crate::config::LatePolicy;
use crate::index::IndexPattern;

/// Error type written to dead letters for records that break the Kafka message contract.
pub const CONTRACT_VIOLATION: &str = "sluice_contract_violation";

/// Error type written to dead letters for records older than `retention.days` (policy
/// `retention.late_records: dead_letter`).
pub const RETENTION_EXPIRED: &str = "retention_expired";

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
}

impl Item {
    /// Whether the record is sent to Elasticsearch (not rejected up front).
    pub fn is_indexable(&self) -> bool {
        self.rejected.is_none()
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
    /// an [`Item`] fits its `u32`.
    pub max_bytes: usize,
    /// Documents.
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

    fn push_inner<'a, H>(&mut self, record: RecordRef<'a, H>, reject: Option<String>, out: &mut Vec<Batch>)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
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
        let mut item = Item {
            partition: record.partition,
            offset: record.offset,
            epoch: 0,
            doc: 0..0,
            payload_start: 0,
            side: side_start..side_start,
            rejected: None,
            attempts: 0,
            first_failure: None,
        };
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
        if self.bytes() >= self.limits.max_bytes || self.items.len() >= self.limits.max_docs {
            out.extend(self.take());
        }
    }

    /// Bytes held by the batch being built (body and side buffer).
    fn bytes(&self) -> usize {
        self.body.len() + self.side.len()
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
        let start = self.body.len();
        self.body.extend_from_slice(b"{\"create\":{\"_index\":\"");
        self.body.extend_from_slice(self.index.as_bytes());
        self.body.extend_from_slice(b"\",\"_id\":");
        serde_json::to_writer(&mut self.body, headers.id.as_ref()).expect("writing to a Vec cannot fail");
        self.body.extend_from_slice(b"}}\n");
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
}
