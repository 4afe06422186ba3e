//! Record ids and the schema v1 document built for each message.
//!
//! # Record id
//! [`record_id`] is the one place ids are derived. An id is
//! `hex128(generation) "-" decimal(offset)`, where *generation* is [`GenerationId`]:
//! `xxh3_128("sluice/v1" 0 source 0 fingerprint)`.
//! - *source* names the log stream independently of inode and file name: `k8s/<pod uid>/<container>/<restart>`
//!   for kubelet paths (pod uids are unique in the cluster, so ids are unique across nodes), otherwise
//!   `path/<node>/<live path>`.
//! - *fingerprint* is the generation's first line including its `\n`, or its first 4096 bytes when the
//!   first line is longer ([`FINGERPRINT_MAX`]). It is content, so it is the same whether the generation
//!   is read as `N.log`, `N.log.<ts>` or decompressed from `N.log.<ts>.gz`, it differs between
//!   generations (each starts with its own nanosecond timestamp) and after copytruncate or inode reuse,
//!   and a tiny file has one as soon as its first line is complete — before that it has no record.
//! - *offset* is the byte offset of the record's first line in the uncompressed generation
//!   (`log.offset`).
//!
//! The same line therefore gets the same id after any restart and from any of its file names.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use sluice_common::message;
use sluice_common::schema::{
    Agent, Document, DocumentFrame, Host, Kubernetes, KubernetesContainer, Log, LogFile, Name, Pod, RecordFields,
    Stream, tag,
};
use xxhash_rust::xxh3::Xxh3;

use crate::discover::PodPath;
use crate::enrich::{Excluded, Miss, PodInfo, render};
use crate::metrics::FileCounters;
use crate::parse::timestamp;
use crate::reassemble::{Message, Tags};

/// Most bytes of a generation's beginning used as its fingerprint.
pub const FINGERPRINT_MAX: usize = 4096;

/// Identity of one generation of a log file (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GenerationId(pub u128);

impl GenerationId {
    /// Derives the identity from the source key and the fingerprint bytes.
    pub fn derive(source: &str, fingerprint: &[u8]) -> Self {
        let mut h = Xxh3::new();
        h.update(b"sluice/v1\0");
        h.update(source.as_bytes());
        h.update(b"\0");
        h.update(fingerprint);
        GenerationId(h.digest128())
    }

    /// Lowercase hex, 32 characters (the checkpoint key and the first half of record ids).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses [`GenerationId::to_hex`] output.
    pub fn from_hex(s: &str) -> Option<Self> {
        (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok()).flatten().map(GenerationId)
    }
}

/// The fingerprint of a generation from its first bytes, or `None` while it cannot be known yet
/// (no complete first line and fewer than [`FINGERPRINT_MAX`] bytes).
pub fn fingerprint(head: &[u8]) -> Option<&[u8]> {
    match memchr::memchr(b'\n', &head[..head.len().min(FINGERPRINT_MAX)]) {
        Some(i) => Some(&head[..=i]),
        None if head.len() >= FINGERPRINT_MAX => Some(&head[..FINGERPRINT_MAX]),
        None => None,
    }
}

/// The source key of a live path: `k8s/<uid>/<container>/<restart>` or `path/<node>/<path>`.
pub fn source_key(live_path: &Path, pod: Option<&PodPath>, node: &str) -> String {
    match pod {
        Some(p) => format!("k8s/{}/{}/{}", p.uid, p.container, p.restart),
        None => format!("path/{node}/{}", live_path.display()),
    }
}

/// Writes the record id of the record whose first line is at `offset` in `generation` into `out`.
///
/// This is the single definition of record ids (`sluice.id`, the Elasticsearch `_id`).
pub fn record_id(generation: GenerationId, offset: u64, out: &mut String) {
    out.clear();
    let _ = write!(out, "{:032x}", generation.0);
    push_offset(out, offset);
}

/// `"-" decimal(offset)`, the second half of a record id.
fn push_offset(out: &mut String, offset: u64) {
    out.push('-');
    out.push_str(itoa::Buffer::new().format(offset));
}

/// Per-file metadata every record of the file borrows.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// `log.file.path`: the live path.
    pub path: String,
    /// Kubernetes fields from the path, when it follows the kubelet layout.
    pub pod: Option<PodPath>,
    /// `kubernetes.node.name` and `host.name`.
    pub node: String,
    /// Kafka key `<pod uid>/<container>` (the path when not a kubelet path).
    pub key: String,
    /// Source key for [`GenerationId::derive`].
    pub source: String,
    /// The pod's metadata from the pod watch, once resolved (`None`: path metadata, tagged
    /// `metadata_from_path`). Kept while the file drains, also after the pod was deleted.
    pub pod_info: Option<Arc<PodInfo>>,
    /// Not shipped (filter or pod annotation): its records are acknowledged at once and counted.
    pub excluded: Option<Excluded>,
    /// Why records of this kubelet file carry path metadata only (counted per record).
    pub path_only: Option<Miss>,
    /// Metric handles of the file (set by the pipeline; detached counters otherwise).
    pub counters: FileCounters,
}

impl FileMeta {
    /// Metadata of the live file at `live_path`.
    pub fn new(live_path: &Path, node: &str) -> Self {
        let pod = PodPath::parse(live_path);
        let key = match &pod {
            Some(p) => format!("{}/{}", p.uid, p.container),
            None => live_path.display().to_string(),
        };
        FileMeta {
            path: live_path.display().to_string(),
            source: source_key(live_path, pod.as_ref(), node),
            pod,
            node: node.to_owned(),
            key,
            pod_info: None,
            excluded: None,
            path_only: None,
            counters: FileCounters::default(),
        }
    }

    /// The namespace, or `""`.
    pub fn namespace(&self) -> &str {
        self.pod.as_ref().map_or("", |p| p.namespace.as_str())
    }
}

/// A built record, borrowed from the [`RecordBuilder`]: what a sink publishes.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The record id (`sluice.id`).
    pub id: &'a str,
    /// Kafka key, `<pod uid>/<container>`.
    pub key: &'a str,
    /// RFC 3339 UTC timestamp (`sluice.ts`).
    pub timestamp: &'a str,
    /// Namespace (`sluice.ns`).
    pub namespace: &'a str,
    /// The schema v1 document as JSON (the Kafka value of contract v1); with a `frame`, the
    /// record line of contract v2 instead (`sluice_common::message::write_record_line`).
    pub value: &'a [u8],
    /// Set by a builder in lines mode ([`RecordBuilder::lines`]): the per-file part of the
    /// document, `value` being the record line that completes it.
    pub frame: Option<&'a DocumentFrame>,
    /// Identifies `frame` among the frames this builder made (never reused), so that a sink can
    /// tell "the same frame as before" without comparing bytes.
    pub frame_serial: u64,
    /// Byte offset of the first line.
    pub offset: u64,
    /// Tags of the record.
    pub tags: Tags,
}

/// Builds documents and ids into reused buffers (one per pipeline).
///
/// The parts of a document that are the same for every record of a file (`log.file`, `kubernetes`,
/// `container`, `host`, `agent`, the `metadata_from_path` tag) are rendered once into a
/// [`DocumentFrame`] and kept while records of the same file and pod metadata follow (one entry:
/// the pipeline reads a file for a whole turn); the generation's hex is formatted once per
/// generation. Per record only the id, the timestamp, the escaped message, the offset and the
/// record's tags are written.
#[derive(Debug, Default)]
pub struct RecordBuilder {
    /// Write contract-v2 record lines instead of documents (see [`Record::frame`]).
    lines: bool,
    id: String,
    ts: String,
    value: Vec<u8>,
    /// The generation whose hex `id` starts with.
    generation: Option<GenerationId>,
    frame: Option<CachedFrame>,
    /// Frames made so far (the serial of the next one).
    frames: u64,
}

/// The frame of the last file built, with what it was rendered from.
#[derive(Debug)]
struct CachedFrame {
    path: String,
    node: String,
    pod: Option<PodPath>,
    /// Held, so that the pointer comparison cannot match a later `PodInfo` at the same address.
    pod_info: Option<Arc<PodInfo>>,
    frame: DocumentFrame,
    serial: u64,
}

impl CachedFrame {
    fn matches(&self, meta: &FileMeta) -> bool {
        let same_info = match (&self.pod_info, &meta.pod_info) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_info && self.path == meta.path && self.node == meta.node && self.pod == meta.pod
    }
}

/// The per-file parts of the documents of `meta`'s file (see [`DocumentFrame::new`]): pod-watch
/// metadata when resolved, otherwise the path's, tagged `metadata_from_path`.
pub fn frame_template(meta: &FileMeta) -> Document<'_> {
    let (kubernetes, container, tags) = match (&meta.pod_info, &meta.pod) {
        (Some(info), Some(path)) => {
            let (k, c) = render(info, &path.container, Some(path.restart));
            (k, c, Vec::new())
        }
        _ => {
            let (namespace, pod_name, uid, container) = match &meta.pod {
                Some(p) => (p.namespace.as_str(), p.pod.as_str(), p.uid.as_str(), p.container.as_str()),
                None => ("", "", "", ""),
            };
            let k = Kubernetes {
                namespace: Cow::Borrowed(namespace),
                pod: Pod { name: Cow::Borrowed(pod_name), uid: Cow::Borrowed(uid) },
                container: KubernetesContainer { name: Cow::Borrowed(container), restart_count: None },
                node: Name { name: Cow::Borrowed(&meta.node) },
                ..Default::default()
            };
            (k, None, vec![Cow::Borrowed(tag::METADATA_FROM_PATH)])
        }
    };
    Document {
        timestamp: Cow::Borrowed(""),
        message: Cow::Borrowed(""),
        stream: Stream::Stdout,
        log: Log { file: LogFile { path: Cow::Borrowed(&meta.path) }, offset: 0 },
        kubernetes,
        container,
        host: Host { name: Cow::Borrowed(&meta.node) },
        agent: Agent::default(),
        tags,
    }
}

impl RecordBuilder {
    /// A builder of contract-v2 record lines (`lines`) or of whole documents.
    pub fn lines(lines: bool) -> Self {
        RecordBuilder { lines, ..RecordBuilder::default() }
    }

    /// Builds the record of `msg` read from a generation of `meta`'s file. Validates UTF-8 (invalid
    /// sequences are replaced and tagged) and the timestamp (an unreadable one is tagged `parse_error`;
    /// the read path has already replaced it by the last readable timestamp before it in the
    /// generation or the generation's pinned date, see [`crate::lines`]; only then it is the read time).
    pub fn build<'s>(&'s mut self, meta: &'s FileMeta, generation: GenerationId, msg: &Message<'_>) -> Record<'s> {
        self.build_with_suffix(meta, generation, msg, "")
    }

    /// [`RecordBuilder::build`] with `suffix` appended to the record id (a record that must not
    /// take the id of the line at its offset, e.g. a rate-limit summary).
    pub fn build_with_suffix<'s>(
        &'s mut self,
        meta: &'s FileMeta,
        generation: GenerationId,
        msg: &Message<'_>,
        suffix: &str,
    ) -> Record<'s> {
        let mut tags = msg.tags;
        let message = match simdutf8::basic::from_utf8(&msg.content) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => {
                tags.insert(Tags::INVALID_UTF8);
                String::from_utf8_lossy(&msg.content)
            }
        };
        self.ts.clear();
        match timestamp::normalize(&msg.timestamp) {
            Some(ts) => self.ts.push_str(&ts),
            None => {
                // The read path never gets here (it dates such lines from the file, see `lines`);
                // `inspect` of a file without any readable timestamp does.
                tags.insert(Tags::PARSE_ERROR);
                self.ts.push_str(&timestamp::now());
            }
        }
        if self.generation != Some(generation) {
            record_id(generation, 0, &mut self.id);
            self.generation = Some(generation);
        }
        self.id.truncate(32);
        push_offset(&mut self.id, msg.start);
        self.id.push_str(suffix);
        if !self.frame.as_ref().is_some_and(|c| c.matches(meta)) {
            self.frame = Some(CachedFrame {
                path: meta.path.clone(),
                node: meta.node.clone(),
                pod: meta.pod.clone(),
                pod_info: meta.pod_info.clone(),
                frame: DocumentFrame::new(&frame_template(meta)),
                serial: self.frames,
            });
            self.frames += 1;
        }
        let cached = self.frame.as_ref().expect("frame just set");
        let frame = &cached.frame;
        self.value.clear();
        let fields = RecordFields { timestamp: &self.ts, message: &message, stream: msg.stream, offset: msg.start };
        if self.lines {
            message::write_record_line(&mut self.value, &self.id, &fields, tags.names());
        } else {
            frame.write(&mut self.value, &fields, tags.names());
        }
        Record {
            id: &self.id,
            key: &meta.key,
            timestamp: &self.ts,
            namespace: meta.namespace(),
            value: &self.value,
            frame: self.lines.then_some(frame),
            frame_serial: cached.serial,
            offset: msg.start,
            tags,
        }
    }
}

/// A message for a line that did not parse: the raw line (lossy UTF-8), tagged `parse_error`.
pub fn parse_error_message(line: &[u8], start: u64, end: u64) -> Message<'_> {
    Message {
        start,
        end,
        timestamp: Cow::Borrowed(b""),
        stream: Stream::Stdout,
        content: Cow::Borrowed(line.strip_suffix(b"\r").unwrap_or(line)),
        tags: Tags::PARSE_ERROR,
        flushed: None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = GenerationId::derive("k8s/u1/app/0", b"2026-11-27T00:17:09.1Z stdout F x\n");
        let b = GenerationId::derive("k8s/u1/app/0", b"2026-11-27T00:17:09.2Z stdout F x\n");
        let c = GenerationId::derive("k8s/u2/app/0", b"2026-11-27T00:17:09.1Z stdout F x\n");
        let d = GenerationId::derive("k8s/u1/app/1", b"2026-11-27T00:17:09.1Z stdout F x\n");
        assert_eq!(a, GenerationId::derive("k8s/u1/app/0", b"2026-11-27T00:17:09.1Z stdout F x\n"));
        assert!(a != b && a != c && a != d && c != d);
        let mut id = String::new();
        record_id(a, 1024, &mut id);
        assert_eq!(id.len(), 32 + 1 + 4);
        assert!(id.ends_with("-1024"));
        assert_eq!(GenerationId::from_hex(&id[..32]), Some(a));
    }

    #[test]
    fn fingerprint_needs_a_complete_first_line_or_4k() {
        assert_eq!(fingerprint(b"abc"), None);
        assert_eq!(fingerprint(b"abc\ndef"), Some(&b"abc\n"[..]));
        let big = vec![b'x'; 5000];
        assert_eq!(fingerprint(&big).unwrap().len(), FINGERPRINT_MAX);
        assert_eq!(fingerprint(&big[..4095]), None);
    }

    /// The document as the shipper built it before [`DocumentFrame`] (issue #16): a [`Document`] per
    /// record serialised by serde. Kept verbatim as the reference the fast path must match byte for byte.
    fn old_build(meta: &FileMeta, msg: &Message<'_>) -> Vec<u8> {
        let mut tags = msg.tags;
        let message = match std::str::from_utf8(&msg.content) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => {
                tags.insert(Tags::INVALID_UTF8);
                String::from_utf8_lossy(&msg.content)
            }
        };
        let ts = timestamp::normalize(&msg.timestamp).expect("tests use readable timestamps").into_owned();
        let (namespace, pod_name, uid, container) = match &meta.pod {
            Some(p) => (p.namespace.as_str(), p.pod.as_str(), p.uid.as_str(), p.container.as_str()),
            None => ("", "", "", ""),
        };
        let mut tag_list: Vec<Cow<'_, str>> = Vec::with_capacity(2);
        tag_list.extend(tags.names().map(Cow::Borrowed));
        let (kubernetes, runtime) = match (&meta.pod_info, &meta.pod) {
            (Some(info), Some(path)) => render(info, &path.container, Some(path.restart)),
            _ => {
                tag_list.push(Cow::Borrowed(tag::METADATA_FROM_PATH));
                let k = Kubernetes {
                    namespace: Cow::Borrowed(namespace),
                    pod: Pod { name: Cow::Borrowed(pod_name), uid: Cow::Borrowed(uid) },
                    container: KubernetesContainer { name: Cow::Borrowed(container), restart_count: None },
                    node: Name { name: Cow::Borrowed(&meta.node) },
                    ..Default::default()
                };
                (k, None)
            }
        };
        let doc = Document {
            timestamp: Cow::Borrowed(&ts),
            message,
            stream: msg.stream,
            log: Log { file: LogFile { path: Cow::Borrowed(&meta.path) }, offset: msg.start },
            kubernetes,
            container: runtime,
            host: Host { name: Cow::Borrowed(&meta.node) },
            agent: Agent::default(),
            tags: tag_list,
        };
        serde_json::to_vec(&doc).unwrap()
    }

    fn pod_info(labels: &[(String, String)], owner: bool, image: Option<String>, restart: Option<u32>) -> PodInfo {
        use crate::enrich::{ContainerInfo, OwnerInfo};
        PodInfo {
            namespace: "shop".into(),
            name: "web-\"0\"".into(),
            uid: "0d6c".into(),
            node: "node-\u{e9}".into(),
            labels: labels.iter().cloned().collect(),
            annotations: labels.iter().take(1).cloned().collect(),
            namespace_labels: Arc::new(labels.iter().skip(1).cloned().collect()),
            owner: owner.then(|| OwnerInfo { kind: "Deployment".into(), name: "web\u{1}".into() }),
            containers: vec![ContainerInfo {
                name: "nginx".into(),
                image: image.clone(),
                image_id: image.map(|i| format!("{i}@sha256:ab")),
                container_id: Some("containerd://c3".into()),
                last_container_id: Some("docker://c2".into()),
                restart_count: restart,
            }],
            ..Default::default()
        }
    }

    fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            "[\\x00-\\x1f\"\\\\a-z \u{7f}\u{e9}\u{1F600}]{0,40}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..80),
            Just(Vec::new()),
        ]
    }

    proptest! {
        /// The framed writer (per-file parts rendered once, hand-ordered top level, SWAR escaping)
        /// writes exactly the bytes of the serde path it replaced: path and pod-watch metadata,
        /// non-kubelet paths, unicode, control characters, invalid UTF-8, empty fields, all tags,
        /// timestamps in every accepted form; one builder for all cases, so the frame cache is
        /// exercised across files and pods too.
        #[test]
        fn framed_documents_match_the_serde_documents(
            cases in proptest::collection::vec((
                message_bytes(),
                0usize..6,                    // file
                any::<bool>(),                // stderr
                any::<u64>(),                 // offset
                any::<u8>(),                  // tags
                0usize..5,                    // timestamp form
                proptest::collection::vec(("[a-z./_\u{e9}\"]{0,8}", "\\PC{0,8}"), 0..3),
                any::<bool>(),                // owner
                proptest::option::of("[a-z:.\\\\]{0,12}"),
                proptest::option::of(0u32..4),
            ), 1..12)
        ) {
            let mut builder = RecordBuilder::default();
            for (content, file, stderr, offset, tags, ts, labels, owner, image, restart) in cases {
                let path = ["/var/log/pods/shop_web-0_0d6c/nginx/0.log", "/var/log/pods/shop_web-0_0d6c/nginx/1.log",
                            "/var/log/containers/x\\y\".log", "/var/log/pods/a_b_c/d/2.log", "", "/tmp/\u{1}\u{e9}.log"][file];
                let mut meta = FileMeta::new(Path::new(path), if file == 3 { "" } else { "node-1" });
                if file < 2 || labels.len() == 2 {
                    meta.pod_info = Some(Arc::new(pod_info(&labels, owner, image, restart)));
                }
                let timestamp = ["2026-11-27T00:17:09.669794202Z", "2026-11-27T00:17:09Z", "2026-11-27T01:17:09.5+01:00",
                                 "2026-11-27t00:17:09.1234567891z", "2026-11-27 00:17:09+00:00"][ts];
                let msg = Message {
                    start: offset,
                    end: offset.saturating_add(1),
                    timestamp: Cow::Borrowed(timestamp.as_bytes()),
                    stream: if stderr { Stream::Stderr } else { Stream::Stdout },
                    content: Cow::Borrowed(&content),
                    tags: Tags(tags & 63),
                    flushed: None,
                };
                let want = old_build(&meta, &msg);
                let g = GenerationId::derive(&meta.source, &content);
                let r = builder.build(&meta, g, &msg);
                prop_assert_eq!(String::from_utf8_lossy(r.value), String::from_utf8_lossy(&want));
                prop_assert_eq!(r.value, &want[..]);
                let mut id = String::new();
                record_id(g, offset, &mut id);
                prop_assert_eq!(r.id, id.as_str());
            }
        }
    }

    #[test]
    fn document_has_path_metadata_and_tags() {
        let meta = FileMeta::new(Path::new("/var/log/pods/shop_web-0_0d6c/nginx/0.log"), "node-1");
        let mut b = RecordBuilder::default();
        let msg = Message {
            start: 7,
            end: 20,
            timestamp: Cow::Borrowed(b"2026-11-27T01:17:09.5+01:00"),
            stream: Stream::Stderr,
            content: Cow::Borrowed(b"bad \xff"),
            tags: Tags::TRUNCATED,
            flushed: None,
        };
        let g = GenerationId::derive(&meta.source, b"x\n");
        let r = b.build(&meta, g, &msg);
        assert_eq!(r.key, "0d6c/nginx");
        assert_eq!(r.timestamp, "2026-11-27T00:17:09.500000000Z");
        let v: serde_json::Value = serde_json::from_slice(r.value).unwrap();
        assert_eq!(v["message"], "bad \u{fffd}");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["log"]["offset"], 7);
        assert_eq!(v["kubernetes"]["namespace"], "shop");
        assert_eq!(v["kubernetes"]["pod"]["name"], "web-0");
        assert_eq!(v["kubernetes"]["container"]["name"], "nginx");
        assert_eq!(v["tags"], serde_json::json!(["truncated", "invalid_utf8", "metadata_from_path"]));
        let _: Document = serde_json::from_slice(r.value).unwrap();
    }
}
