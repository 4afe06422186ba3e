//! The document stored in Elasticsearch (schema version 1) and the Kafka message contract.
//!
//! This module is the single definition of these fields (see `shared/DESIGN.md`). The shipper builds
//! a [`Document`] per record and serialises it once; the Kafka message value *is* that JSON, and the
//! indexer forwards the bytes to `_bulk` without re-parsing them.
//!
//! Golden example (`docs/schema.md` shows the same document):
//!
//! ```
//! use sluice_common::schema::Document;
//! let json = r#"{"@timestamp":"2026-11-27T00:17:09.669794202Z","message":"hello","stream":"stdout",
//!   "log":{"file":{"path":"/var/log/pods/default_web-0_0d6c/app/0.log"},"offset":0},
//!   "kubernetes":{"namespace":"default","pod":{"name":"web-0","uid":"0d6c"},"container":{"name":"app"},
//!   "node":{"name":"node-1"},"labels":{"app_kubernetes_io/name":"web"}},
//!   "host":{"name":"node-1"},"agent":{"type":"sluice","version":"0.1.0"},"tags":["metadata_from_path"]}"#;
//! let doc: Document = serde_json::from_str(json).unwrap();
//! assert_eq!(doc.kubernetes.pod.name, "web-0");
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this document schema and of the Kafka message contract (header `sluice.v`).
pub const SCHEMA_VERSION: &str = "1";

/// Value of `agent.type` written by Sluice.
pub const AGENT_TYPE: &str = "sluice";

/// Default Kafka topic for records.
pub const DEFAULT_TOPIC: &str = "sluice.logs";

/// Default Kafka dead-letter topic.
pub const DEFAULT_DLQ_TOPIC: &str = "sluice.logs.dlq";

/// Kafka header names of the shipper → indexer contract.
pub mod header {
    /// The record id (ASCII), written as the Elasticsearch `_id`.
    pub const ID: &str = "sluice.id";
    /// The record timestamp as RFC 3339 UTC; selects the target index date.
    pub const TS: &str = "sluice.ts";
    /// The Kubernetes namespace; used for optional per-namespace routing.
    pub const NS: &str = "sluice.ns";
    /// The contract version, [`super::SCHEMA_VERSION`].
    pub const V: &str = "sluice.v";
    /// Dead-letter header: the class of error (`mapper_parsing_exception`, …).
    pub const ERROR_TYPE: &str = "sluice.error.type";
    /// Dead-letter header: the error reason as Elasticsearch reported it.
    pub const ERROR_REASON: &str = "sluice.error.reason";
    /// Dead-letter header: where the record came from, `topic/partition/offset`.
    pub const SOURCE: &str = "sluice.source";
    /// Dead-letter header of a record that came in a contract-v2 message: its 0-based index among
    /// the message's records (`sluice.source` names the message).
    pub const SOURCE_RECORD: &str = "sluice.source.record";
}

/// Tags a record can carry when it was not delivered exactly as written (invariant 5).
pub mod tag {
    /// The line exceeded `max_line_bytes` and was cut.
    pub const TRUNCATED: &str = "truncated";
    /// The line did not parse in the file's format; `message` is the raw line.
    pub const PARSE_ERROR: &str = "parse_error";
    /// A partial line was flushed without its final fragment (timeout, EOF, rotation).
    pub const PARTIAL_FLUSHED: &str = "partial_flushed";
    /// Kubernetes metadata comes only from the file path (no pod watch data).
    pub const METADATA_FROM_PATH: &str = "metadata_from_path";
    /// Invalid UTF-8 was replaced with U+FFFD.
    pub const INVALID_UTF8: &str = "invalid_utf8";
    /// Several physical lines were joined by a multiline rule.
    pub const MULTILINE: &str = "multiline";
    /// A summary record: lines of this file were dropped by `rate_limit` (action `drop`).
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// Output stream of a container log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The lowercase name used in logs and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One log record as stored in Elasticsearch (`_source`), schema version 1.
///
/// Strings are [`Cow`] so the shipper can borrow per-file metadata and line content without copying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document<'a> {
    /// RFC 3339 timestamp in UTC with the source's nanoseconds kept.
    #[serde(rename = "@timestamp", borrow)]
    pub timestamp: Cow<'a, str>,
    /// The log line content (reassembled, without the trailing newline).
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    /// Stream the line was written to.
    pub stream: Stream,
    /// Where the line was read.
    #[serde(borrow)]
    pub log: Log<'a>,
    /// Kubernetes metadata.
    #[serde(borrow)]
    pub kubernetes: Kubernetes<'a>,
    /// Container runtime metadata, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub container: Option<Container<'a>>,
    /// The node's host name.
    #[serde(borrow)]
    pub host: Host<'a>,
    /// The agent that produced the record.
    #[serde(borrow)]
    pub agent: Agent<'a>,
    /// Tags from [`tag`]; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    pub tags: Vec<Cow<'a, str>>,
}

/// `log.*`: the source file and offset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log<'a> {
    /// `log.file.*`.
    #[serde(borrow)]
    pub file: LogFile<'a>,
    /// Byte offset of the record's first line in the (uncompressed) file.
    pub offset: u64,
}

/// `log.file.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile<'a> {
    /// Path of the file as discovered (the live `…/<n>.log` path, also for rotated generations).
    #[serde(borrow)]
    pub path: Cow<'a, str>,
}

/// A map of label-like strings (`kubernetes.labels`, `kubernetes.annotations`,
/// `kubernetes.namespace_labels`), keys already sanitised with [`sanitize_label_key`].
pub type StrMap = BTreeMap<String, String>;

/// `kubernetes.*`.
///
/// The label maps are `Cow`s of whole maps so the shipper can borrow a pod's prepared maps for every
/// record without building a map per record (owned keys and values keep `Kubernetes<'a>` covariant
/// in `'a`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes<'a> {
    /// Namespace of the pod.
    #[serde(borrow)]
    pub namespace: Cow<'a, str>,
    /// `kubernetes.pod.*`.
    #[serde(borrow)]
    pub pod: Pod<'a>,
    /// `kubernetes.container.*`.
    #[serde(borrow)]
    pub container: KubernetesContainer<'a>,
    /// `kubernetes.node.*`.
    #[serde(borrow)]
    pub node: Name<'a>,
    /// `kubernetes.owner.*`: the workload that owns the pod, when known (pod watch only).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub owner: Option<Owner<'a>>,
    /// Pod labels; dots in keys become `_` (see [`sanitize_label_key`]).
    #[serde(default, skip_serializing_if = "is_empty_map")]
    pub labels: Cow<'a, StrMap>,
    /// Pod annotations (opt-in); same key rule as labels.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    pub annotations: Cow<'a, StrMap>,
    /// Labels of the pod's namespace (opt-in); same key rule as labels.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    pub namespace_labels: Cow<'a, StrMap>,
}

fn is_empty_map(map: &StrMap) -> bool {
    map.is_empty()
}

/// `kubernetes.container.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesContainer<'a> {
    /// Container name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The container's restart count when it wrote the line (`N` of the kubelet's `N.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u32>,
}

/// `kubernetes.owner.*`: the workload that owns the pod, resolved through its controller chain
/// (`ReplicaSet` → `Deployment`, `Job` → `CronJob`; otherwise the controller owner reference).
///
/// One `{kind, name}` object rather than Filebeat's per-kind fields (`kubernetes.deployment.name`,
/// `kubernetes.statefulset.name`, …): any controller kind (Argo `Rollout`, operators' custom
/// resources) fits without growing the index mapping, and "all logs of workload X" is one query
/// shape, `kubernetes.owner.kind:Deployment AND kubernetes.owner.name:web`, whatever the kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner<'a> {
    /// Kind of the workload (`Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`,
    /// `ReplicaSet`, `Node` for static pods, or any other controller kind).
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Name of the workload.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `kubernetes.pod.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod<'a> {
    /// Pod name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Pod UID.
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
}

/// An object with just a `name` (`kubernetes.node`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Name<'a> {
    /// The name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `container.*` (ECS): runtime view of the container.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container<'a> {
    /// Runtime container id (without the `containerd://` prefix).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub id: Option<Cow<'a, str>>,
    /// `container.image.*`.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub image: Option<Image<'a>>,
    /// Runtime name (`containerd`, `cri-o`, `docker`).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub runtime: Option<Cow<'a, str>>,
}

/// `container.image.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image<'a> {
    /// The image as the pod spec names it (`nginx:1.27`).
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The image the runtime resolved it to, as the kubelet reports it in the container status
    /// (`imageID`, usually `registry/repo@sha256:<digest>`): which build really ran. Not an ECS field
    /// (ECS's `container.image.hash.all` is a list of bare digests); kept verbatim so it can be
    /// pasted into `crictl`/`docker pull`.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub id: Option<Cow<'a, str>>,
}

/// `host.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host<'a> {
    /// Host name of the node.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `agent.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent<'a> {
    /// Always [`AGENT_TYPE`].
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Version of the shipper that read the line.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
}

impl Default for Agent<'_> {
    fn default() -> Self {
        Agent { kind: Cow::Borrowed(AGENT_TYPE), version: Cow::Borrowed(env!("CARGO_PKG_VERSION")) }
    }
}

/// Turns a label or annotation key into a document key: dots become `_` so that
/// `app.kubernetes.io/name` does not create nested objects that conflict with `app`.
pub fn sanitize_label_key(key: &str) -> Cow<'_, str> {
    if key.contains('.') { Cow::Owned(key.replace('.', "_")) } else { Cow::Borrowed(key) }
}

/// The per-file parts of a [`Document`], rendered once, and the writer of each record's document.
///
/// A document is, in this order: `@timestamp`, `message`, `stream` (per record), `log.file` (per
/// file), `log.offset` (per record), `kubernetes`, `container`, `host`, `agent` (per file and pod
/// metadata), `tags` (the record's, then the frame's). [`DocumentFrame::write`] writes exactly the
/// bytes `serde_json::to_writer(&document)` writes (the tests compare both on generated documents),
/// without building a [`Document`] per record: the per-file parts are serialised once by the derived
/// `Serialize` of their schema types, only the top-level field order is written by hand here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentFrame {
    /// Per stream: `,"stream":"<stream>","log":{"file":{"path":"<path>"},"offset":`.
    middle: [Vec<u8>; 2],
    /// `},"kubernetes":{…}[,"container":{…}],"host":{…},"agent":{…}`.
    tail: Vec<u8>,
    /// Tags written after the record's own (e.g. [`tag::METADATA_FROM_PATH`]).
    tags: Vec<String>,
    /// The frame line of contract v2 (see [`crate::message`]), from the same parts.
    line: Vec<u8>,
}

/// The serialised per-file parts of a document, from which a [`DocumentFrame`] is assembled (by
/// [`DocumentFrame::new`] from a template, by [`DocumentFrame::from_line`] from a v2 frame line:
/// one assembly, so both give the same bytes).
struct FrameParts<'p> {
    file: &'p [u8],
    kubernetes: &'p [u8],
    container: Option<&'p [u8]>,
    host: &'p [u8],
    agent: &'p [u8],
    tags: Vec<String>,
}

/// A v2 frame line as read back: each part kept as the exact JSON text written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameLine<'a> {
    #[serde(borrow)]
    log: FrameLog<'a>,
    #[serde(borrow)]
    kubernetes: &'a serde_json::value::RawValue,
    #[serde(borrow, default)]
    container: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    host: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    agent: &'a serde_json::value::RawValue,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameLog<'a> {
    #[serde(borrow)]
    file: &'a serde_json::value::RawValue,
}

/// The per-record fields of a document, for [`DocumentFrame::write`].
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    /// `@timestamp`.
    pub timestamp: &'a str,
    /// `message`.
    pub message: &'a str,
    /// `stream`.
    pub stream: Stream,
    /// `log.offset`.
    pub offset: u64,
}

impl DocumentFrame {
    /// The frame of the documents of `template`'s file: its `log.file`, `kubernetes`, `container`,
    /// `host`, `agent` and `tags` (written after each record's own tags). `@timestamp`, `message`,
    /// `stream` and `log.offset` of the template are ignored.
    pub fn new(template: &Document<'_>) -> Self {
        let (mut file, mut kubernetes, mut host, mut agent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        json(&mut file, &template.log.file);
        json(&mut kubernetes, &template.kubernetes);
        let container = template.container.as_ref().map(|c| {
            let mut out = Vec::new();
            json(&mut out, c);
            out
        });
        json(&mut host, &template.host);
        json(&mut agent, &template.agent);
        DocumentFrame::assemble(FrameParts {
            file: &file,
            kubernetes: &kubernetes,
            container: container.as_deref(),
            host: &host,
            agent: &agent,
            tags: template.tags.iter().map(|t| t.clone().into_owned()).collect(),
        })
    }

    /// The frame of a contract-v2 frame line (as written by [`DocumentFrame::line`]). Every part is
    /// kept as the exact JSON text of the line, so the documents written are byte for byte those
    /// of the frame that wrote the line.
    pub fn from_line(line: &[u8]) -> Result<Self, serde_json::Error> {
        let f: FrameLine<'_> = serde_json::from_slice(line)?;
        Ok(DocumentFrame::assemble(FrameParts {
            file: f.log.file.get().as_bytes(),
            kubernetes: f.kubernetes.get().as_bytes(),
            container: f.container.map(|c| c.get().as_bytes()),
            host: f.host.get().as_bytes(),
            agent: f.agent.get().as_bytes(),
            tags: f.tags,
        }))
    }

    /// The frame line of contract v2: `{"log":{"file":…},"kubernetes":…[,"container":…],"host":…,
    /// "agent":…[,"tags":[…]]}`, without a newline.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    fn assemble(p: FrameParts<'_>) -> Self {
        let middle = [Stream::Stdout, Stream::Stderr].map(|stream| {
            let mut m = Vec::with_capacity(64 + p.file.len());
            m.extend_from_slice(b",\"stream\":");
            json(&mut m, &stream);
            m.extend_from_slice(b",\"log\":{\"file\":");
            m.extend_from_slice(p.file);
            m.extend_from_slice(b",\"offset\":");
            m
        });
        let mut tail = Vec::with_capacity(256);
        tail.extend_from_slice(b"},\"kubernetes\":");
        tail.extend_from_slice(p.kubernetes);
        if let Some(container) = p.container {
            tail.extend_from_slice(b",\"container\":");
            tail.extend_from_slice(container);
        }
        tail.extend_from_slice(b",\"host\":");
        tail.extend_from_slice(p.host);
        tail.extend_from_slice(b",\"agent\":");
        tail.extend_from_slice(p.agent);
        let mut line = Vec::with_capacity(tail.len() + p.file.len() + 32);
        line.extend_from_slice(b"{\"log\":{\"file\":");
        line.extend_from_slice(p.file);
        // `tail` without its leading `}` closes `log` and continues with the metadata parts.
        line.extend_from_slice(&tail);
        for (i, t) in p.tags.iter().enumerate() {
            line.extend_from_slice(if i == 0 { b",\"tags\":[" } else { b"," });
            write_json_str(&mut line, t);
        }
        if !p.tags.is_empty() {
            line.push(b']');
        }
        line.push(b'}');
        DocumentFrame { middle, tail, tags: p.tags, line }
    }

    /// Appends the document of one record to `out`: `record`'s fields, this frame's, and the tags
    /// `tags` followed by the frame's own.
    pub fn write<'t>(&self, out: &mut Vec<u8>, record: &RecordFields<'_>, tags: impl IntoIterator<Item = &'t str>) {
        out.reserve(self.tail.len() + record.message.len() + 128);
        out.extend_from_slice(b"{\"@timestamp\":");
        write_json_str(out, record.timestamp);
        out.extend_from_slice(b",\"message\":");
        write_json_str(out, record.message);
        let middle = match record.stream {
            Stream::Stdout => &self.middle[0],
            Stream::Stderr => &self.middle[1],
        };
        out.extend_from_slice(middle);
        out.extend_from_slice(itoa::Buffer::new().format(record.offset).as_bytes());
        out.extend_from_slice(&self.tail);
        let mut first = true;
        let mut tag = |t: &str| {
            out.extend_from_slice(if first { b",\"tags\":[" } else { b"," });
            first = false;
            write_json_str(out, t);
        };
        tags.into_iter().for_each(&mut tag);
        self.tags.iter().for_each(|t| tag(t));
        if !first {
            out.push(b']');
        }
        out.push(b'}');
    }
}

/// Appends `value` as JSON (the derived `Serialize`, as inside a whole document).
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("serialising to a Vec cannot fail");
}

/// Appends `s` to `out` as a JSON string, quotes included, escaped exactly as `serde_json` escapes
/// strings: `"` and `\` with a backslash, `\b \t \n \f \r` by name, other bytes below 0x20 as
/// `\u00XX` (lowercase hex), everything else (DEL, non-ASCII) as is.
///
/// Escaping the message is the hottest loop of the shipper (issue #16: serde_json looks every byte up
/// in a table, 46 % of the read path's time). `json-escape-simd` (sonic-rs's kernel: AVX2/SSE2 chosen
/// at run time, a scalar fallback elsewhere) copies whole runs that need no escape; measured against
/// the 8-byte SWAR loop this replaced in BENCHMARKS.md. The tests compare it with serde_json on
/// arbitrary strings.
#[inline]
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    json_escape_simd::escape_into(s, out);
}

/// The Kafka headers of one record (contract version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers<'a> {
    /// `sluice.id`: the record id, used as `_id`.
    pub id: Cow<'a, str>,
    /// `sluice.ts`: RFC 3339 UTC timestamp of the record.
    pub ts: Cow<'a, str>,
    /// `sluice.ns`: Kubernetes namespace.
    pub ns: Cow<'a, str>,
}

impl<'a> Headers<'a> {
    /// The headers as `(name, value)` pairs in contract order, including `sluice.v`.
    pub fn pairs(&self) -> [(&'static str, &[u8]); 4] {
        [
            (header::ID, self.id.as_bytes()),
            (header::TS, self.ts.as_bytes()),
            (header::NS, self.ns.as_bytes()),
            (header::V, SCHEMA_VERSION.as_bytes()),
        ]
    }

    /// Reads the headers back from `(name, value)` pairs, as a consumer sees them.
    pub fn from_pairs<'b, I>(pairs: I) -> Result<Headers<'a>, HeaderError>
    where
        I: IntoIterator<Item = (&'b str, Option<&'a [u8]>)>,
    {
        let (mut id, mut ts, mut ns, mut v) = (None, None, None, None);
        for (name, value) in pairs {
            let slot = match name {
                header::ID => &mut id,
                header::TS => &mut ts,
                header::NS => &mut ns,
                header::V => &mut v,
                _ => continue,
            };
            let value = value.unwrap_or_default();
            let text = std::str::from_utf8(value).map_err(|_| HeaderError::NotUtf8(name.to_owned()))?;
            *slot = Some(Cow::Borrowed(text));
        }
        match v.as_deref() {
            Some(SCHEMA_VERSION) => {}
            Some(other) => return Err(HeaderError::Version(other.to_owned())),
            None => return Err(HeaderError::Missing(header::V)),
        }
        Ok(Headers {
            id: id.ok_or(HeaderError::Missing(header::ID))?,
            ts: ts.ok_or(HeaderError::Missing(header::TS))?,
            ns: ns.unwrap_or(Cow::Borrowed("")),
        })
    }
}

/// A Kafka message that does not follow the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    Missing(&'static str),
    /// A header value is not UTF-8.
    #[error("header `{0}` is not UTF-8")]
    NotUtf8(String),
    /// `sluice.v` names a version this build does not understand.
    #[error("unsupported contract version `{0}` (this build reads versions 1 and 2)")]
    Version(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Document<'static> {
        let mut labels = BTreeMap::new();
        labels.insert(sanitize_label_key("app.kubernetes.io/name").into_owned(), "web".into());
        Document {
            timestamp: "2026-11-27T00:17:09.669794202Z".into(),
            message: "hello \"world\"\tü".into(),
            stream: Stream::Stderr,
            log: Log { file: LogFile { path: "/var/log/pods/default_web-0_0d6c/app/0.log".into() }, offset: 42 },
            kubernetes: Kubernetes {
                namespace: "default".into(),
                pod: Pod { name: "web-0".into(), uid: "0d6c".into() },
                container: KubernetesContainer { name: "app".into(), restart_count: None },
                node: Name { name: "node-1".into() },
                owner: None,
                labels: Cow::Owned(labels),
                annotations: Cow::Owned(BTreeMap::new()),
                namespace_labels: Cow::Owned(BTreeMap::new()),
            },
            container: Some(Container {
                id: Some("abc".into()),
                image: Some(Image { name: "nginx:1".into(), id: None }),
                runtime: Some("containerd".into()),
            }),
            host: Host { name: "node-1".into() },
            agent: Agent::default(),
            tags: vec![tag::TRUNCATED.into()],
        }
    }

    #[test]
    fn document_round_trips_through_json() {
        let doc = sample();
        let json = serde_json::to_string(&doc).unwrap();
        let back: Document = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn document_is_nested_ecs_shape() {
        let value = serde_json::to_value(sample()).unwrap();
        assert_eq!(value["@timestamp"], "2026-11-27T00:17:09.669794202Z");
        assert_eq!(value["kubernetes"]["pod"]["name"], "web-0");
        assert_eq!(value["kubernetes"]["labels"]["app_kubernetes_io/name"], "web");
        assert_eq!(value["log"]["file"]["path"], "/var/log/pods/default_web-0_0d6c/app/0.log");
        assert_eq!(value["agent"]["type"], "sluice");
        assert_eq!(value["stream"], "stderr");
        assert!(value["kubernetes"].get("annotations").is_none(), "empty maps are omitted");
    }

    #[test]
    fn enrichment_fields_are_optional_and_nested() {
        let mut doc = sample();
        let plain = serde_json::to_value(&doc).unwrap();
        for absent in ["owner", "namespace_labels", "annotations"] {
            assert!(plain["kubernetes"].get(absent).is_none(), "{absent} omitted when empty");
        }
        assert!(plain["kubernetes"]["container"].get("restart_count").is_none());
        assert!(plain["container"]["image"].get("id").is_none());

        doc.kubernetes.owner = Some(Owner { kind: "Deployment".into(), name: "web".into() });
        doc.kubernetes.container.restart_count = Some(2);
        doc.kubernetes.namespace_labels.to_mut().insert("team".into(), "shop".into());
        doc.container.as_mut().unwrap().image.as_mut().unwrap().id = Some("nginx@sha256:ab".into());
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(value["kubernetes"]["owner"], serde_json::json!({"kind": "Deployment", "name": "web"}));
        assert_eq!(value["kubernetes"]["container"]["restart_count"], 2);
        assert_eq!(value["kubernetes"]["namespace_labels"]["team"], "shop");
        assert_eq!(value["container"]["image"]["id"], "nginx@sha256:ab");
        let text = value.to_string();
        let back: Document = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn golden_document_parses_and_reserialises_identically() {
        let golden = include_str!("../../docs/golden-document.json").trim();
        let doc: Document = serde_json::from_str(golden).unwrap();
        let again = serde_json::to_string_pretty(&doc).unwrap();
        assert_eq!(again, golden);
    }

    /// serde_json's compact serialisation of a string, without the quotes.
    fn serde_escaped(s: &str) -> Vec<u8> {
        serde_json::to_vec(s).unwrap()
    }

    #[test]
    fn escaping_matches_serde_json_for_every_ascii_byte_at_every_position() {
        for c in 0u8..0x80 {
            // Positions and lengths across the SIMD widths (16, 32, 64 bytes) and their tails.
            for pos in 0..70 {
                for len in [pos + 1, pos + 9, pos + 17, 100] {
                    let mut s = vec![b'a'; len.max(pos + 1)];
                    s[pos] = c;
                    let s = String::from_utf8(s).unwrap();
                    let mut out = Vec::new();
                    write_json_str(&mut out, &s);
                    assert_eq!(out, serde_escaped(&s), "byte {c:#x} at {pos} of {}", s.len());
                }
            }
        }
        let mut out = Vec::new();
        write_json_str(&mut out, "");
        assert_eq!(out, b"\"\"");
    }

    #[test]
    fn golden_document_is_written_identically_by_the_frame() {
        let golden = include_str!("../../docs/golden-document.json").trim();
        let doc: Document = serde_json::from_str(golden).unwrap();
        let frame = DocumentFrame::new(&Document { tags: Vec::new(), ..doc.clone() });
        let mut out = Vec::new();
        let fields = RecordFields {
            timestamp: &doc.timestamp,
            message: &doc.message,
            stream: doc.stream,
            offset: doc.log.offset,
        };
        frame.write(&mut out, &fields, doc.tags.iter().map(|t| &**t));
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&doc).unwrap());
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![any::<String>(), "[\\x00-\\x1f\"\\\\a-z \u{7f}\u{e9}\u{1F600}]{0,40}", Just(String::new())]
    }

    fn map() -> impl proptest::strategy::Strategy<Value = StrMap> {
        proptest::collection::btree_map(text(), text(), 0..3)
    }

    proptest::proptest! {
        #[test]
        fn escaping_matches_serde_json(s in text()) {
            let mut out = b"x".to_vec();
            write_json_str(&mut out, &s);
            proptest::prop_assert_eq!(&out[1..], &serde_escaped(&s)[..]);
        }

        /// Every optional part present or absent, every string arbitrary: the frame writes what
        /// serde writes for the whole document.
        #[test]
        fn frame_writes_what_serde_writes(
            strings in proptest::collection::vec(text(), 16),
            maps in (map(), map(), map()),
            offset in proptest::prelude::any::<u64>(),
            stderr in proptest::prelude::any::<bool>(),
            opts in proptest::prelude::any::<u16>(),
            restart in proptest::prelude::any::<u32>(),
            record_tags in proptest::collection::vec(text(), 0..3),
            frame_tags in proptest::collection::vec(text(), 0..2),
        ) {
            let s = |i: usize| Cow::Borrowed(strings[i].as_str());
            let on = |bit: u16| opts & (1 << bit) != 0;
            let template = Document {
                timestamp: "ignored".into(),
                message: "ignored".into(),
                stream: Stream::Stdout,
                log: Log { file: LogFile { path: s(0) }, offset: 0 },
                kubernetes: Kubernetes {
                    namespace: s(1),
                    pod: Pod { name: s(2), uid: s(3) },
                    container: KubernetesContainer { name: s(4), restart_count: on(0).then_some(restart) },
                    node: Name { name: s(5) },
                    owner: on(1).then(|| Owner { kind: s(6), name: s(7) }),
                    labels: Cow::Owned(maps.0.clone()),
                    annotations: Cow::Owned(maps.1.clone()),
                    namespace_labels: Cow::Borrowed(&maps.2),
                },
                container: on(2).then(|| Container {
                    id: on(3).then(|| s(8)),
                    image: on(4).then(|| Image { name: s(9), id: on(5).then(|| s(10)) }),
                    runtime: on(6).then(|| s(11)),
                }),
                host: Host { name: s(12) },
                agent: if on(7) { Agent::default() } else { Agent { kind: s(13), version: s(14) } },
                tags: frame_tags.iter().map(|t| Cow::Borrowed(t.as_str())).collect(),
            };
            let frame = DocumentFrame::new(&template);
            let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
            let mut got = Vec::new();
            let fields = RecordFields { timestamp: &strings[15], message: &strings[0], stream, offset };
            frame.write(&mut got, &fields, record_tags.iter().map(String::as_str));
            let mut doc = template.clone();
            doc.timestamp = s(15);
            doc.message = s(0);
            doc.stream = stream;
            doc.log.offset = offset;
            doc.tags = record_tags.iter().chain(&frame_tags).map(|t| Cow::Borrowed(t.as_str())).collect();
            proptest::prop_assert_eq!(&got, &serde_json::to_vec(&doc).unwrap());
            // Contract v2: the frame read back from its line writes the same bytes.
            let back = DocumentFrame::from_line(frame.line()).unwrap();
            proptest::prop_assert_eq!(&back, &frame);
            let mut again = Vec::new();
            back.write(&mut again, &fields, record_tags.iter().map(String::as_str));
            proptest::prop_assert_eq!(again, got);
        }
    }

    #[test]
    fn unknown_document_fields_are_rejected() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["surprise"] = 1.into();
        let text = value.to_string();
        let err = serde_json::from_str::<Document>(&text).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn headers_round_trip() {
        let h = Headers { id: "abc".into(), ts: "2026-11-27T00:00:00Z".into(), ns: "default".into() };
        let pairs = h.pairs();
        let back = Headers::from_pairs(pairs.iter().map(|(k, v)| (*k, Some(*v)))).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn headers_reject_missing_and_foreign_versions() {
        let missing = Headers::from_pairs([(header::V, Some(&b"1"[..])), (header::TS, Some(&b"x"[..]))]);
        assert_eq!(missing.unwrap_err(), HeaderError::Missing(header::ID));
        let v2 = Headers::from_pairs([(header::V, Some(&b"2"[..]))]);
        assert_eq!(v2.unwrap_err(), HeaderError::Version("2".into()));
        let none = Headers::from_pairs([(header::ID, Some(&b"a"[..]))]);
        assert_eq!(none.unwrap_err(), HeaderError::Missing(header::V));
    }
}
