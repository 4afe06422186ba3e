//! The indexer's reading of a Kafka record (headers → contract check → index name → `_bulk` lines,
//! original kept for the dead letter), as the consumer does it for every message.
//!
//! Input: header lines `name=value` (no `=`: a header without value; a name that is not UTF-8 is
//! rejected like the consumer does), an empty line, the key line (empty: no key), then the payload.
//! Checked: no panic; the dead-letter copy is the original key, headers and payload exactly; an
//! indexable record is framed as two NDJSON lines with the `sluice.id` header as `_id`; and the
//! decision (index name or rejection) does not depend on the record before it (the index-name
//! cache of the batcher). A message that decodes as contract v2 becomes one item per record: each
//! is checked against its record line instead (its dead letter is a v1 message of the record).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice_common::schema::header;
use sluice_indexer::batch::{Batch, Batcher, Limits, RecordRef};
use sluice_indexer::index::IndexPattern;

fn batcher(pattern: &str) -> Batcher {
    let limits = Limits { max_bytes: 1 << 20, max_docs: 1000, linger: Duration::from_secs(60) };
    Batcher::new(IndexPattern::parse(pattern).expect("pattern"), limits)
}

fn push(b: &mut Batcher, offset: i64, key: Option<&[u8]>, payload: &[u8], headers: &[(&[u8], Option<&[u8]>)]) {
    let mut out = Vec::new();
    let utf8: Option<Vec<(&str, Option<&[u8]>)>> =
        headers.iter().map(|(k, v)| std::str::from_utf8(k).ok().map(|k| (k, *v))).collect();
    match utf8 {
        Some(pairs) => b.push(
            RecordRef { partition: 0, offset, key, payload: Some(payload), headers: pairs.iter().copied() },
            &mut out,
        ),
        None => {
            let lossy: Vec<(String, Option<&[u8]>)> =
                headers.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), *v)).collect();
            b.push_rejected(
                RecordRef {
                    partition: 0,
                    offset,
                    key,
                    payload: Some(payload),
                    headers: lossy.iter().map(|(k, v)| (k.as_str(), *v)),
                },
                "header key is not UTF-8".into(),
                &mut out,
            );
        }
    }
    // A v2 message alone may exceed `max_docs`: the batch before it is taken first.
    let v2 = headers.iter().any(|(k, v)| *k == header::V.as_bytes() && *v == Some(&b"2"[..]));
    assert!(out.is_empty() || (v2 && out.len() == 1), "one small record does not fill a batch");
}

/// `Ok(index)` or `Err(reason)` of the last record of a batch, after checking its framing.
fn outcome(
    batch: &Batch,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[(&[u8], Option<&[u8]>)],
) -> Result<String, String> {
    let item = batch.items.last().expect("an item");
    let original = batch.original(item);
    if item.from_v2 {
        return v2_outcome(batch, item, key, payload);
    }
    assert_eq!(original.key.as_deref(), key);
    assert_eq!(original.payload.as_deref(), Some(payload));
    let want: Vec<(String, Option<Vec<u8>>)> =
        headers.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.map(<[u8]>::to_vec))).collect();
    assert_eq!(original.headers, want);
    if let Some(rejected) = &item.rejected {
        return Err(format!("{}: {}", rejected.0, rejected.1));
    }
    let lines = &batch.body[item.doc.start as usize..item.doc.end as usize];
    assert_eq!(lines.iter().filter(|c| **c == b'\n').count(), 2, "two NDJSON lines");
    let action: serde_json::Value =
        serde_json::from_slice(&batch.body[item.doc.start as usize..item.payload_start as usize])
            .expect("action line is JSON");
    let id = headers.iter().rev().find(|(k, _)| *k == header::ID.as_bytes()).and_then(|(_, v)| *v).unwrap_or_default();
    assert_eq!(action["create"]["_id"].as_str().map(str::as_bytes), Some(id));
    let replaced: Vec<u8> = payload.iter().map(|&c| if c == b'\n' { b' ' } else { c }).collect();
    assert_eq!(batch.document(item), &replaced[..]);
    Ok(action["create"]["_index"].as_str().expect("index").to_owned())
}

/// [`outcome`] of the last record of a contract-v2 message.
fn v2_outcome(
    batch: &Batch,
    item: &sluice_indexer::batch::Item,
    key: Option<&[u8]>,
    payload: &[u8],
) -> Result<String, String> {
    let decoded = sluice_common::message::decode(payload).expect("an item from_v2 comes from a decodable value");
    assert_eq!(item.records as usize, decoded.records.len());
    assert_eq!(item.record as usize, decoded.records.len() - 1, "the last item is the last record");
    let record = decoded.records.last().expect("records");
    let original = batch.original(item);
    assert_eq!(original.key.as_deref(), key);
    let header = |name: &str| original.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone());
    assert_eq!(header(header::ID).as_deref(), Some(record.id.as_bytes()));
    assert_eq!(header(header::V).as_deref(), Some(&b"1"[..]));
    assert_eq!(header(header::SOURCE_RECORD), Some(item.record.to_string().into_bytes()));
    let mut document = Vec::new();
    record.write_document(&decoded.frame, &mut document);
    if let Some(rejected) = &item.rejected {
        assert_eq!(original.payload.as_deref(), Some(&document[..]));
        return Err(format!("{}: {}", rejected.0, rejected.1));
    }
    assert_eq!(batch.document(item), &document[..]);
    let action: serde_json::Value =
        serde_json::from_slice(&batch.body[item.doc.start as usize..item.payload_start as usize])
            .expect("action line is JSON");
    assert_eq!(action["create"]["_id"].as_str(), Some(record.id.as_ref()));
    Ok(action["create"]["_index"].as_str().expect("index").to_owned())
}

fuzz_target!(|data: &[u8]| {
    let (head, rest) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&data[..0], data),
    };
    let headers: Vec<(&[u8], Option<&[u8]>)> = head
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match l.iter().position(|c| *c == b'=') {
            Some(i) => (&l[..i], Some(&l[i + 1..])),
            None => (l, None),
        })
        .collect();
    let (key, payload) = match rest.iter().position(|c| *c == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[..0]),
    };
    let key = (!key.is_empty()).then_some(key);
    let valid: [(&[u8], Option<&[u8]>); 4] = [
        (header::ID.as_bytes(), Some(b"warm-up")),
        (header::TS.as_bytes(), Some(b"2026-11-27T10:00:00.123456789Z")),
        (header::NS.as_bytes(), Some(b"default")),
        (header::V.as_bytes(), Some(b"1")),
    ];
    for pattern in ["sluice-logs-%Y.%m.%d", "logs-{namespace}-%Y.%m.%d-%H"] {
        // Alone, and after a valid record of the same hour (which fills the index-name cache).
        let mut fresh = batcher(pattern);
        push(&mut fresh, 1, key, payload, &headers);
        let alone = outcome(&fresh.take().expect("batch"), key, payload, &headers);
        let mut warm = batcher(pattern);
        push(&mut warm, 0, None, b"{}", &valid);
        push(&mut warm, 1, key, payload, &headers);
        let after = outcome(&warm.take().expect("batch"), key, payload, &headers);
        assert_eq!(alone, after, "the outcome of a record depends on the record before it ({pattern})");
    }
});
