//! Kafka message contract version 2: several records of one file in one message.
//!
//! Under version 1 a message is one document (the `_source`), with its id and timestamp in
//! headers. Version 2 (`sluice.v: 2`, see `shared/DESIGN.md`) carries the records of one file and
//! pod metadata in one value:
//!
//! ```text
//! {"log":{"file":{"path":…}},"kubernetes":{…},"container":{…},"host":{…},"agent":{…}}   ← frame line
//! {"id":"…","@timestamp":"…","message":"…","stream":"stdout","offset":0}               ← record lines
//! {"id":"…","@timestamp":"…","message":"…","stream":"stderr","offset":95,"tags":["multiline"]}
//! ```
//!
//! Lines are separated by `\n` (never inside a line: JSON escapes it). The per-file part is written
//! and compressed once instead of once per record, and librdkafka's per-message costs are paid once
//! per message (BENCHMARKS.md, "What a contract with several records per message would buy").
//! A reader rebuilds each record's document with [`DocumentFrame::write`] from the frame
//! ([`DocumentFrame::from_line`] keeps the frame's JSON text as written), so the document is byte
//! for byte the one version 1 carries for the same record ([`decode`] is tested against
//! [`DocumentFrame::write`] on generated records).

use std::borrow::Cow;

use serde::Deserialize;

use crate::schema::{DocumentFrame, RecordFields, Stream, write_json_str};

/// `sluice.v` of a one-document message.
pub const V1: &str = "1";
/// `sluice.v` of a frame + record lines message.
pub const V2: &str = "2";

/// One record line of a version-2 message, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLine<'a> {
    /// The record id (`_id`).
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// `@timestamp`, RFC 3339 UTC: also the record's index date.
    #[serde(rename = "@timestamp", borrow)]
    pub timestamp: Cow<'a, str>,
    /// `message`.
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    /// `stream`.
    pub stream: Stream,
    /// `log.offset`.
    pub offset: u64,
    /// The record's own tags (the frame's follow them in the document).
    #[serde(default, borrow)]
    pub tags: Vec<Cow<'a, str>>,
}

impl RecordLine<'_> {
    /// The per-record fields for [`DocumentFrame::write`].
    pub fn fields(&self) -> RecordFields<'_> {
        RecordFields { timestamp: &self.timestamp, message: &self.message, stream: self.stream, offset: self.offset }
    }

    /// Appends this record's document under `frame` (what a v1 message of it would carry).
    pub fn write_document(&self, frame: &DocumentFrame, out: &mut Vec<u8>) {
        frame.write(out, &self.fields(), self.tags.iter().map(|t| t.as_ref()));
    }
}

/// Appends one record line (without its newline): `{"id":…,"@timestamp":…,"message":…,"stream":…,
/// "offset":…[,"tags":[…]]}`.
pub fn write_record_line<'t>(
    out: &mut Vec<u8>,
    id: &str,
    record: &RecordFields<'_>,
    tags: impl IntoIterator<Item = &'t str>,
) {
    out.reserve(record.message.len() + id.len() + 96);
    out.extend_from_slice(b"{\"id\":");
    write_json_str(out, id);
    out.extend_from_slice(b",\"@timestamp\":");
    write_json_str(out, record.timestamp);
    out.extend_from_slice(b",\"message\":");
    write_json_str(out, record.message);
    out.extend_from_slice(match record.stream {
        Stream::Stdout => b",\"stream\":\"stdout\",\"offset\":",
        Stream::Stderr => b",\"stream\":\"stderr\",\"offset\":",
    });
    out.extend_from_slice(itoa::Buffer::new().format(record.offset).as_bytes());
    let mut first = true;
    for t in tags {
        out.extend_from_slice(if first { b",\"tags\":[" } else { b"," });
        first = false;
        write_json_str(out, t);
    }
    if !first {
        out.push(b']');
    }
    out.push(b'}');
}

/// A version-2 value that does not follow the contract.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame line is not a frame.
    #[error("contract v2: the frame line does not parse: {0}")]
    Frame(serde_json::Error),
    /// A record line is not a record.
    #[error("contract v2: record line {line} does not parse: {source}")]
    Record {
        /// 1-based index of the record line (the frame is line 0).
        line: usize,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// Nothing after the frame.
    #[error("contract v2: a message without records")]
    Empty,
}

/// A decoded version-2 value: the frame and the records, in message order.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The per-file part of every record's document.
    pub frame: DocumentFrame,
    /// The records.
    pub records: Vec<RecordLine<'a>>,
}

/// Decodes a version-2 value. Any line that does not parse makes the whole value an error (the
/// message is then dead-lettered whole: a half-read message would be a silent loss).
pub fn decode(value: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    let mut lines = value.split(|&b| b == b'\n');
    let frame = DocumentFrame::from_line(lines.next().unwrap_or_default()).map_err(DecodeError::Frame)?;
    let records = lines
        .enumerate()
        .map(|(i, line)| serde_json::from_slice(line).map_err(|source| DecodeError::Record { line: i + 1, source }))
        .collect::<Result<Vec<_>, _>>()?;
    if records.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(Decoded { frame, records })
}

/// Builds a version-2 value: the frame line, then one line per record appended.
#[derive(Debug, Default)]
pub struct Encoder {
    value: Vec<u8>,
    records: usize,
}

impl Encoder {
    /// Starts a value with `frame`'s line.
    pub fn new(frame: &DocumentFrame) -> Self {
        let mut value = Vec::with_capacity(frame.line().len() + 4096);
        value.extend_from_slice(frame.line());
        Encoder { value, records: 0 }
    }

    /// Appends one record line (as written by [`write_record_line`], without newline).
    pub fn push_line(&mut self, line: &[u8]) {
        self.value.push(b'\n');
        self.value.extend_from_slice(line);
        self.records += 1;
    }

    /// Records appended.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Bytes of the value so far.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Whether the value starts with `frame`'s line (records of `frame` may be appended).
    pub fn has_frame(&self, frame: &DocumentFrame) -> bool {
        let line = frame.line();
        self.value.len() > line.len() && self.value.starts_with(line) && self.value[line.len()] == b'\n'
            || self.value == line
    }

    /// The value.
    pub fn finish(self) -> Vec<u8> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::schema::{Document, tag};

    fn golden() -> Document<'static> {
        let json = r#"{"@timestamp":"2026-11-27T00:17:09.669794202Z","message":"hello","stream":"stdout","log":{"file":{"path":"/var/log/pods/default_web-0_0d6c/app/0.log"},"offset":0},"kubernetes":{"namespace":"default","pod":{"name":"web-0","uid":"0d6c"},"container":{"name":"app"},"node":{"name":"node-1"},"labels":{"app_kubernetes_io/name":"web"}},"host":{"name":"node-1"},"agent":{"type":"sluice","version":"0.1.0"},"tags":["metadata_from_path"]}"#;
        serde_json::from_str::<Document<'_>>(json).unwrap().clone()
    }

    #[test]
    fn frame_line_round_trips_to_the_same_frame() {
        let frame = DocumentFrame::new(&golden());
        assert_eq!(
            std::str::from_utf8(frame.line()).unwrap(),
            r#"{"log":{"file":{"path":"/var/log/pods/default_web-0_0d6c/app/0.log"}},"kubernetes":{"namespace":"default","pod":{"name":"web-0","uid":"0d6c"},"container":{"name":"app"},"node":{"name":"node-1"},"labels":{"app_kubernetes_io/name":"web"}},"host":{"name":"node-1"},"agent":{"type":"sluice","version":"0.1.0"},"tags":["metadata_from_path"]}"#
        );
        assert_eq!(DocumentFrame::from_line(frame.line()).unwrap(), frame);
    }

    #[test]
    fn a_v2_message_gives_the_v1_documents_byte_for_byte() {
        let doc = golden();
        let frame = DocumentFrame::new(&doc);
        let mut enc = Encoder::new(&frame);
        let records = [
            ("a-0", "2026-11-27T00:17:09.669794202Z", "hello", Stream::Stdout, 0, vec![]),
            (
                "a-95",
                "2026-11-27T23:59:59.999999999Z",
                "tab\there \"q\" \u{1}",
                Stream::Stderr,
                95,
                vec![tag::MULTILINE],
            ),
            ("a-200", "2026-11-28T00:00:00Z", "ünïcödé", Stream::Stdout, 200, vec![tag::TRUNCATED, tag::INVALID_UTF8]),
        ];
        let mut line = Vec::new();
        for (id, ts, msg, stream, offset, tags) in &records {
            line.clear();
            let fields = RecordFields { timestamp: ts, message: msg, stream: *stream, offset: *offset };
            write_record_line(&mut line, id, &fields, tags.iter().copied());
            enc.push_line(&line);
        }
        assert_eq!(enc.records(), 3);
        assert!(enc.has_frame(&frame));
        let value = enc.finish();
        let decoded = decode(&value).unwrap();
        assert_eq!(decoded.records.len(), 3);
        for ((id, ts, msg, stream, offset, tags), rec) in records.iter().zip(&decoded.records) {
            assert_eq!(rec.id, *id);
            let mut v2 = Vec::new();
            rec.write_document(&decoded.frame, &mut v2);
            let mut v1 = Vec::new();
            frame.write(
                &mut v1,
                &RecordFields { timestamp: ts, message: msg, stream: *stream, offset: *offset },
                tags.iter().copied(),
            );
            assert_eq!(String::from_utf8(v2).unwrap(), String::from_utf8(v1.clone()).unwrap());
            // And v1 is what serde writes for the whole document.
            let whole = Document {
                timestamp: Cow::Borrowed(ts),
                message: Cow::Borrowed(msg),
                stream: *stream,
                log: crate::schema::Log { offset: *offset, ..doc.log.clone() },
                tags: tags.iter().map(|t| Cow::Borrowed(*t)).chain(doc.tags.iter().cloned()).collect(),
                ..doc.clone()
            };
            assert_eq!(v1, serde_json::to_vec(&whole).unwrap());
        }
    }

    #[test]
    fn bad_values_are_errors_naming_the_line() {
        let frame = DocumentFrame::new(&golden());
        let mut v = frame.line().to_vec();
        assert!(matches!(decode(&v), Err(DecodeError::Empty)));
        v.extend_from_slice(b"\n{\"id\":\"x\",\"@timestamp\":\"2026-11-27T00:00:00Z\",\"message\":\"m\",\"stream\":\"stdout\",\"offset\":1}");
        assert_eq!(decode(&v).unwrap().records.len(), 1);
        v.extend_from_slice(b"\n{\"id\":\"y\"}");
        let err = decode(&v).unwrap_err();
        assert!(matches!(err, DecodeError::Record { line: 2, .. }), "{err}");
        assert!(matches!(decode(b"not json\n{}"), Err(DecodeError::Frame(_))));
        assert!(matches!(decode(b"{\"log\":{\"file\":{}},\"extra\":1}"), Err(DecodeError::Frame(_))));
        assert!(matches!(decode(b""), Err(DecodeError::Frame(_))));
    }

    #[test]
    fn has_frame_distinguishes_frames() {
        let a = DocumentFrame::new(&golden());
        let mut other = golden();
        other.log.file.path = Cow::Borrowed("/var/log/pods/default_web-0_0d6c/app/1.log");
        let b = DocumentFrame::new(&other);
        let enc = Encoder::new(&a);
        assert!(enc.has_frame(&a) && !enc.has_frame(&b));
    }

    proptest! {
        #[test]
        fn records_round_trip(id in "[a-f0-9-]{1,40}", msg in any::<String>(), offset in any::<u64>(), stderr in any::<bool>(), tags in proptest::collection::vec("[a-z_]{1,12}", 0..3)) {
            let frame = DocumentFrame::new(&golden());
            let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
            let fields = RecordFields { timestamp: "2026-11-27T00:17:09Z", message: &msg, stream, offset };
            let mut line = Vec::new();
            write_record_line(&mut line, &id, &fields, tags.iter().map(String::as_str));
            prop_assert!(!line.contains(&b'\n'));
            let mut enc = Encoder::new(&frame);
            enc.push_line(&line);
            let value = enc.finish();
            let decoded = decode(&value).unwrap();
            let rec = &decoded.records[0];
            prop_assert_eq!(rec.id.as_ref(), id.as_str());
            prop_assert_eq!(rec.message.as_ref(), msg.as_str());
            let (mut v1, mut v2) = (Vec::new(), Vec::new());
            frame.write(&mut v1, &fields, tags.iter().map(String::as_str));
            rec.write_document(&decoded.frame, &mut v2);
            prop_assert_eq!(v1, v2);
        }
    }
}
