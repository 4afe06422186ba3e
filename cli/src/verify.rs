//! `sluice verify`: checks a loadgen run against Elasticsearch — every record exactly once.
//!
//! The scan selects the run's pods (`kubernetes.pod.uid`) written up to the manifest's `updated`
//! time (`@timestamp`), so a manifest of a run still in progress is checked for the prefix it
//! describes. Each document's message is searched for [`crate::token`]s:
//!
//! | result | meaning |
//! |---|---|
//! | lost | a record whose token (for a stack trace: any of its lines) is in no document |
//! | duplicated (token) | extra documents holding a record already seen |
//! | duplicated (`_id`) | extra documents with an `_id` already seen (in another index of the pattern) |
//! | partials unmerged | a long line whose document lacks its end marker or has the wrong length, or a document holding only an end marker |
//! | multiline split | a stack trace found whole, but over several documents |
//! | records merged | documents holding more than one record |
//!
//! Only loss and duplicates make the exit status non-zero (`--strict`: also unmerged partials and
//! split stack traces).

use std::collections::{HashMap, HashSet};
use std::io::{self, IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::es::{Es, EsError};
use crate::manifest::{self, GenState, Manifest, ManifestError};
use crate::token;

/// Errors of `verify` (a failed verification is a [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Elasticsearch failed.
    #[error(transparent)]
    Es(#[from] EsError),
}

/// Options of `sluice verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyOptions {
    /// The loadgen manifest [default: <root>/.loadgen/latest.json].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The loadgen root, to find its latest manifest.
    #[arg(long, env = "SLUICE_LOADGEN_ROOT", default_value = "/var/log/pods")]
    pub root: PathBuf,
    /// Elasticsearch URL (credentials may be in it).
    #[arg(long, env = "ELASTICSEARCH_URL", hide_env_values = true, default_value = "http://127.0.0.1:9200")]
    pub es_url: String,
    /// Index pattern to scan.
    #[arg(long, default_value = "sluice-logs-*")]
    pub index: String,
    /// Poll until the document count is complete and stable (or --stable-for / --timeout pass).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the deadline.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
    /// With --wait: stop waiting once the count has not changed for this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub stable_for: Duration,
    /// With --wait: time between polls.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub poll: Duration,
    /// Examples shown per kind of problem.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Documents per page of the scan.
    #[arg(long, default_value_t = 5000)]
    pub page_size: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also fail on unmerged partials and split stack traces.
    #[arg(long)]
    pub strict: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            manifest: None,
            root: PathBuf::from("/var/log/pods"),
            es_url: "http://127.0.0.1:9200".into(),
            index: "sluice-logs-*".into(),
            wait: false,
            timeout: Duration::from_secs(300),
            stable_for: Duration::from_secs(30),
            poll: Duration::from_secs(2),
            examples: 5,
            page_size: 5000,
            json: false,
            strict: false,
        }
    }
}

/// First examples of each kind of problem.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Examples {
    /// Lost records.
    pub lost: Vec<String>,
    /// Records found more than once.
    pub duplicated_tokens: Vec<String>,
    /// `_id`s found more than once.
    pub duplicated_ids: Vec<String>,
    /// Long lines not joined.
    pub partials_unmerged: Vec<String>,
    /// Stack traces over several documents.
    pub multiline_split: Vec<String>,
    /// Documents holding several records.
    pub records_merged: Vec<String>,
    /// Documents of the run's pods without a token.
    pub without_token: Vec<String>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// The run id.
    pub run_id: String,
    /// Index pattern scanned.
    pub index: String,
    /// Whether the manifest describes a finished run.
    pub run_finished: bool,
    /// Records in the manifest.
    pub expected: u64,
    /// Records found (at least once; stack traces: every line).
    pub found: u64,
    /// Records not found.
    pub lost: u64,
    /// … of which in generations loadgen deleted (kubelet-style `keep_files`).
    pub lost_in_deleted_files: u64,
    /// Extra copies of records (by token).
    pub duplicated_tokens: u64,
    /// Extra documents with an `_id` seen before.
    pub duplicated_ids: u64,
    /// Long lines written as partials.
    pub expected_partial: u64,
    /// Long lines not joined into one document.
    pub partials_unmerged: u64,
    /// Documents tagged `partial_flushed`.
    pub partial_flushed_tagged: u64,
    /// Stack traces written.
    pub expected_multiline: u64,
    /// Stack traces found over several documents.
    pub multiline_split: u64,
    /// Documents holding more than one record.
    pub records_merged: u64,
    /// Documents scanned.
    pub docs_scanned: u64,
    /// Documents without any token of this run.
    pub docs_without_token: u64,
    /// Tokens beyond the manifest (written after it was saved).
    pub beyond_manifest: u64,
    /// First examples of each problem.
    pub examples: Examples,
}

impl Report {
    /// No loss and no duplicate.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated_tokens == 0 && self.duplicated_ids == 0
    }

    /// [`Report::ok`] and, when `strict`, no unmerged partial or split stack trace.
    pub fn passed(&self, strict: bool) -> bool {
        self.ok() && (!strict || (self.partials_unmerged == 0 && self.multiline_split == 0))
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, k: &str, v: u64, ex: &[String]| {
            s.push_str(&format!("  {k:<22} {v}\n"));
            for e in ex {
                s.push_str(&format!("      e.g. {e}\n"));
            }
        };
        s.push_str(&format!(
            "run {} ({}) in {}: {} documents scanned\n",
            self.run_id,
            if self.run_finished { "finished" } else { "still running: checked up to its manifest" },
            self.index,
            self.docs_scanned
        ));
        line(&mut s, "expected", self.expected, &[]);
        line(&mut s, "found", self.found, &[]);
        line(&mut s, "lost", self.lost, &self.examples.lost);
        if self.lost_in_deleted_files > 0 {
            line(&mut s, "  in deleted files", self.lost_in_deleted_files, &[]);
        }
        line(&mut s, "duplicated (token)", self.duplicated_tokens, &self.examples.duplicated_tokens);
        line(&mut s, "duplicated (_id)", self.duplicated_ids, &self.examples.duplicated_ids);
        s.push_str(&format!(
            "  {:<22} {} of {} long lines ({} documents tagged partial_flushed)\n",
            "partials unmerged", self.partials_unmerged, self.expected_partial, self.partial_flushed_tagged
        ));
        for e in &self.examples.partials_unmerged {
            s.push_str(&format!("      e.g. {e}\n"));
        }
        s.push_str(&format!(
            "  {:<22} {} of {} stack traces\n",
            "multiline split", self.multiline_split, self.expected_multiline
        ));
        for e in &self.examples.multiline_split {
            s.push_str(&format!("      e.g. {e}\n"));
        }
        if self.records_merged > 0 {
            line(&mut s, "records merged", self.records_merged, &self.examples.records_merged);
        }
        if self.docs_without_token > 0 {
            line(&mut s, "docs without token", self.docs_without_token, &self.examples.without_token);
        }
        if self.beyond_manifest > 0 {
            line(&mut s, "beyond manifest", self.beyond_manifest, &[]);
        }
        s.push_str(if self.ok() { "OK: every record exactly once\n" } else { "FAILED: records lost or duplicated\n" });
        s
    }
}

/// Where a stream id points in the manifest.
#[derive(Debug, Clone)]
struct StreamInfo {
    container: usize,
    log: usize,
    name: String,
    count: u64,
}

#[derive(Debug, Clone)]
struct Multi {
    parts: u16,
    part_seen: Vec<u16>,
    docs: u32,
}

/// Accumulates documents and compares them with a manifest; see the module documentation.
#[derive(Debug)]
pub struct Analyzer<'m> {
    m: &'m Manifest,
    max_examples: usize,
    streams: HashMap<u32, StreamInfo>,
    seen: HashMap<u32, Vec<u16>>,
    multi: HashMap<(u32, u64), Multi>,
    partial: HashMap<(u32, u64), usize>,
    ids: HashSet<String>,
    report: Report,
}

impl<'m> Analyzer<'m> {
    /// An analyzer for the records of `m`.
    pub fn new(m: &'m Manifest, index: &str, max_examples: usize) -> Analyzer<'m> {
        let mut streams = HashMap::new();
        let mut seen = HashMap::new();
        let mut multi = HashMap::new();
        let mut partial = HashMap::new();
        let mut report = Report {
            run_id: m.run_id.clone(),
            index: index.to_owned(),
            run_finished: m.finished.is_some(),
            ..Default::default()
        };
        for (ci, c) in m.containers.iter().enumerate() {
            for (li, log) in c.logs.iter().enumerate() {
                for (name, st) in &log.streams {
                    streams.insert(st.id, StreamInfo { container: ci, log: li, name: name.clone(), count: st.count });
                    seen.insert(st.id, vec![0u16; st.count as usize]);
                    report.expected += st.count;
                }
                for r in &log.multiline {
                    let id = log.streams[&r.stream].id;
                    multi.insert((id, r.seq), Multi { parts: r.lines, part_seen: vec![0; r.lines as usize], docs: 0 });
                    report.expected_multiline += 1;
                }
                for r in &log.partial_split {
                    partial.insert((log.streams[&r.stream].id, r.seq), r.bytes);
                    report.expected_partial += 1;
                }
            }
        }
        Analyzer { m, max_examples, streams, seen, multi, partial, ids: HashSet::new(), report }
    }

    fn example(&self, list: &mut Vec<String>, f: impl FnOnce() -> String) {
        if list.len() < self.max_examples {
            list.push(f());
        }
    }

    /// Describes a record: container, file, stream, sequence and the generation holding it.
    pub fn describe(&self, stream: u32, seq: u64) -> String {
        let Some(info) = self.streams.get(&stream) else { return format!("stream {stream} seq {seq}") };
        let c = &self.m.containers[info.container];
        let log = &c.logs[info.log];
        let generation = log
            .generations
            .iter()
            .find(|g| {
                g.streams
                    .get(&info.name)
                    .is_some_and(|s| s.first_seq.is_some_and(|f| f <= seq) && s.last_seq.is_some_and(|l| seq <= l))
            })
            .map(|g| format!(" in {} ({:?})", g.file, g.state).to_lowercase())
            .unwrap_or_default();
        format!(
            "#sl/{}/{stream}/{seq}: {}/{}/{} {}.log {} seq {seq}{generation}",
            self.m.run_id, c.namespace, c.pod, c.container, log.restart, info.name
        )
    }

    fn in_deleted(&self, stream: u32, seq: u64) -> bool {
        let Some(info) = self.streams.get(&stream) else { return false };
        let log = &self.m.containers[info.container].logs[info.log];
        log.generations.iter().any(|g| {
            g.state == GenState::Deleted
                && g.streams
                    .get(&info.name)
                    .is_some_and(|s| s.first_seq.is_some_and(|f| f <= seq) && s.last_seq.is_some_and(|l| seq <= l))
        })
    }

    /// Adds one document.
    pub fn add(&mut self, index: &str, id: &str, message: &str, tags: &[&str]) {
        let r = &mut self.report;
        r.docs_scanned += 1;
        if tags.contains(&"partial_flushed") {
            r.partial_flushed_tagged += 1;
        }
        if !self.ids.insert(id.to_owned()) {
            self.report.duplicated_ids += 1;
            let mut ex = std::mem::take(&mut self.report.examples.duplicated_ids);
            self.example(&mut ex, || format!("_id {id} (again in {index})"));
            self.report.examples.duplicated_ids = ex;
        }
        let run = self.m.run_id.as_str();
        let toks: Vec<_> = token::scan(message).into_iter().filter(|t| t.run == run).collect();
        if toks.is_empty() {
            self.report.docs_without_token += 1;
            let mut ex = std::mem::take(&mut self.report.examples.without_token);
            self.example(&mut ex, || format!("_id {id} in {index}: {}", shorten(message)));
            self.report.examples.without_token = ex;
            return;
        }
        // Distinct records in this document, with the parts of each.
        let mut records: Vec<(u32, u64, Vec<u16>, bool, bool)> = Vec::new();
        for t in &toks {
            let pos = match records.iter().position(|r| r.0 == t.stream && r.1 == t.seq) {
                Some(p) => p,
                None => {
                    records.push((t.stream, t.seq, Vec::new(), false, false));
                    records.len() - 1
                }
            };
            let rec = &mut records[pos];
            if t.end {
                rec.4 = true;
            } else {
                rec.3 = true;
                if let Some((k, _)) = t.part {
                    rec.2.push(k);
                }
            }
        }
        if records.len() > 1 {
            self.report.records_merged += 1;
            let mut ex = std::mem::take(&mut self.report.examples.records_merged);
            self.example(&mut ex, || format!("_id {id}: {} records", records.len()));
            self.report.examples.records_merged = ex;
        }
        for (stream, seq, parts, start, end) in records {
            let Some(info) = self.streams.get(&stream) else {
                self.report.beyond_manifest += 1;
                continue;
            };
            if seq >= info.count {
                self.report.beyond_manifest += 1;
                continue;
            }
            if let Some(&bytes) = self.partial.get(&(stream, seq)) {
                let joined = start && end && message.len() == bytes;
                if !joined {
                    self.report.partials_unmerged += 1;
                    let d = self.describe(stream, seq);
                    let mut ex = std::mem::take(&mut self.report.examples.partials_unmerged);
                    self.example(&mut ex, || {
                        format!(
                            "{d}: _id {id} has {} of {bytes} bytes (start marker {start}, end marker {end})",
                            message.len()
                        )
                    });
                    self.report.examples.partials_unmerged = ex;
                }
                if !start {
                    // Only the tail of a long line: its start is counted where it is found.
                    continue;
                }
            }
            if let Some(mu) = self.multi.get_mut(&(stream, seq)) {
                mu.docs += 1;
                for k in parts {
                    if (1..=mu.parts).contains(&k) {
                        mu.part_seen[(k - 1) as usize] = mu.part_seen[(k - 1) as usize].saturating_add(1);
                    }
                }
                continue;
            }
            if let Some(v) = self.seen.get_mut(&stream) {
                let c = &mut v[seq as usize];
                *c = c.saturating_add(1);
            }
        }
    }

    /// The report over everything added.
    pub fn finish(mut self) -> Report {
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        let mut ex = std::mem::take(&mut self.report.examples);
        for sid in ids {
            let counts = &self.seen[&sid];
            for (seq, &c) in counts.iter().enumerate() {
                let seq = seq as u64;
                let (copies, lost, split) = match self.multi.get(&(sid, seq)) {
                    Some(mu) => {
                        let min = mu.part_seen.iter().copied().min().unwrap_or(0);
                        let max = mu.part_seen.iter().copied().max().unwrap_or(0);
                        if min == 0 {
                            (0, true, false)
                        } else {
                            // Whole in one document per copy, or split over several.
                            let split = mu.docs as u16 > max;
                            (max, false, split)
                        }
                    }
                    None => (c, c == 0, false),
                };
                if lost {
                    self.report.lost += 1;
                    if self.in_deleted(sid, seq) {
                        self.report.lost_in_deleted_files += 1;
                    }
                    self.example(&mut ex.lost, || self.describe(sid, seq));
                    continue;
                }
                self.report.found += 1;
                if copies > 1 {
                    self.report.duplicated_tokens += u64::from(copies - 1);
                    self.example(&mut ex.duplicated_tokens, || {
                        format!("{} ({copies} copies)", self.describe(sid, seq))
                    });
                }
                if split {
                    self.report.multiline_split += 1;
                    let docs = self.multi[&(sid, seq)].docs;
                    self.example(&mut ex.multiline_split, || {
                        format!("{} (over {docs} documents)", self.describe(sid, seq))
                    });
                }
            }
        }
        self.report.examples = ex;
        self.report
    }
}

fn shorten(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() { format!("{}…", &s[..end]) } else { s.to_owned() }
}

/// The Elasticsearch query selecting what a manifest describes.
pub fn query(m: &Manifest) -> Value {
    json!({"bool": {"filter": [
        {"terms": {"kubernetes.pod.uid": m.pod_uids()}},
        {"range": {"@timestamp": {"lte": m.updated}}},
    ]}})
}

/// Reads the manifest, optionally waits for the documents, scans and analyzes them.
pub async fn run(opts: &VerifyOptions) -> Result<Report, VerifyError> {
    let path = opts.manifest.clone().unwrap_or_else(|| manifest::latest(&opts.root));
    let m = Manifest::read(&path)?;
    let es = Es::new(&opts.es_url)?;
    let q = query(&m);
    let expected = m.totals.records;
    let tty = io::stderr().is_terminal();
    if opts.wait {
        let start = Instant::now();
        let mut last: Option<u64> = None;
        let mut last_change = Instant::now();
        loop {
            es.refresh(&opts.index).await?;
            let n = es.count(&opts.index, &q).await?;
            let msg = format!(
                "verify: {n} of {expected} documents ({:.1} %) after {:.0} s",
                100.0 * n as f64 / expected.max(1) as f64,
                start.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r\x1b[2K{msg}");
            } else {
                eprintln!("{msg}");
            }
            if last != Some(n) {
                last_change = Instant::now();
            }
            let complete = n >= expected && last == Some(n);
            let stalled = last_change.elapsed() >= opts.stable_for;
            if complete || stalled || start.elapsed() >= opts.timeout {
                if tty {
                    eprintln!();
                }
                if !complete {
                    eprintln!(
                        "verify: stopped waiting ({}); scanning what is there",
                        if stalled { "count stable" } else { "deadline" }
                    );
                }
                break;
            }
            last = Some(n);
            tokio::time::sleep(opts.poll).await;
        }
    }
    es.refresh(&opts.index).await?;
    let mut a = Analyzer::new(&m, &opts.index, opts.examples);
    es.scan(&opts.index, &q, &["message", "tags"], opts.page_size.max(1), |h| {
        let msg = h.source["message"].as_str().unwrap_or_default();
        let tags: Vec<&str> =
            h.source["tags"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        a.add(&h.index, &h.id, msg, &tags);
    })
    .await?;
    let _ = io::stderr().flush();
    Ok(a.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{self, FormatChoice, LoadgenOptions};
    use std::fs;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    /// A small run: 1 pod × 2 containers (CRI + docker), 60 records, 2 long lines, 2 stack traces.
    fn small_run(root: &Path, run: &str) -> Manifest {
        let o = LoadgenOptions {
            root: root.to_owned(),
            run_id: Some(run.into()),
            rate: 0.0,
            lines: Some(60),
            pods: 1,
            containers: 2,
            format: FormatChoice::Mixed,
            partial_every: 20,
            long_line_bytes: 500,
            fragment_bytes: 200,
            multiline_every: 20,
            multiline_lines: 3,
            rotate_bytes: 2000,
            progress: "never".into(),
            ..Default::default()
        };
        let s = loadgen::run(&o, &AtomicBool::new(false)).unwrap();
        Manifest::read(&s.manifest).unwrap()
    }

    /// What an ideal pipeline indexes: one document per record, partials and traces joined.
    /// Returns (id, message) pairs; ids are `<stream>-<seq>`.
    fn ideal_docs(m: &Manifest) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in &m.containers {
            for log in &c.logs {
                let dir = log.path.parent().unwrap();
                let mut pending: HashMap<String, String> = HashMap::new();
                let mut trace: Option<String> = None;
                for g in &log.generations {
                    if g.state == GenState::Deleted {
                        continue;
                    }
                    let data = fs::read(dir.join(&g.file)).unwrap();
                    let text = if g.file.ends_with(".gz") {
                        let mut s = String::new();
                        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&data[..]), &mut s).unwrap();
                        s
                    } else {
                        String::from_utf8(data).unwrap()
                    };
                    for l in text.lines() {
                        let (stream, content, last) = if c.format == manifest::LogFormat::Cri {
                            let p: Vec<&str> = l.splitn(4, ' ').collect();
                            (p[1].to_owned(), p[3].to_owned(), p[2] == "F")
                        } else {
                            let v: Value = serde_json::from_str(l).unwrap();
                            let log = v["log"].as_str().unwrap();
                            (
                                v["stream"].as_str().unwrap().to_owned(),
                                log.trim_end_matches('\n').to_owned(),
                                log.ends_with('\n'),
                            )
                        };
                        let mut msg = pending.remove(&stream).unwrap_or_default();
                        msg.push_str(&content);
                        if !last {
                            pending.insert(stream, msg);
                            continue;
                        }
                        if msg.starts_with('\t') {
                            let t = trace.as_mut().expect("continuation after a first line");
                            t.push('\n');
                            t.push_str(&msg);
                            continue;
                        }
                        if let Some(t) = trace.take() {
                            out.push(t);
                        }
                        trace = Some(msg);
                    }
                }
                out.extend(trace.take());
            }
        }
        out.into_iter()
            .map(|msg| {
                let t = token::scan(&msg)[0];
                (format!("{}-{}", t.stream, t.seq), msg)
            })
            .collect()
    }

    fn analyze(m: &Manifest, docs: &[(String, String)]) -> Report {
        let mut a = Analyzer::new(m, "test", 3);
        for (id, msg) in docs {
            a.add("test", id, msg, &[]);
        }
        a.finish()
    }

    #[test]
    fn counts_losses_duplicates_splits_and_unmerged_partials() {
        let tmp = tempfile::tempdir().unwrap();
        let m = small_run(tmp.path(), "v1");
        let docs = ideal_docs(&m);
        assert_eq!(docs.len(), 60);
        let r = analyze(&m, &docs);
        assert!(r.ok() && r.passed(true), "{}", r.render());
        assert_eq!((r.expected, r.found, r.expected_partial, r.expected_multiline), (60, 60, 2, 2));

        // Loss, duplicate by token (new _id) and by _id.
        let mut bad = docs.clone();
        let lost = bad.remove(5);
        bad.push(("dup-token".into(), bad[0].1.clone()));
        bad.push(bad[1].clone());
        let r = analyze(&m, &bad);
        assert_eq!((r.lost, r.duplicated_tokens, r.duplicated_ids, r.found), (1, 2, 1, 59), "{}", r.render());
        assert!(
            r.examples.lost[0].starts_with(&format!("#sl/v1/{}: demo/web-0/", lost.0.replace('-', "/"))),
            "{:?}",
            r.examples.lost
        );
        assert!(!r.ok());

        // A stack trace over three documents, and a long line left in fragments.
        let mut split = Vec::new();
        for (id, msg) in &docs {
            if msg.contains("1of3") {
                for (k, l) in msg.lines().enumerate() {
                    split.push((format!("{id}-{k}"), l.to_owned()));
                }
            } else if msg.contains("#sl-end/") {
                let f = loadgen::split_fragments(msg, 200);
                for (k, frag) in f.iter().enumerate() {
                    split.push((format!("{id}-{k}"), (*frag).to_owned()));
                }
            } else {
                split.push((id.clone(), msg.clone()));
            }
        }
        let r = analyze(&m, &split);
        assert_eq!(r.lost, 0, "{}", r.render());
        assert_eq!(r.duplicated_tokens, 0);
        assert_eq!(r.multiline_split, 2);
        // Each long line: its head without the end marker, and its tail with only the end marker.
        assert_eq!(r.partials_unmerged, 4);
        assert_eq!(r.docs_without_token, 2, "the middle fragments");
        assert!(r.ok() && !r.passed(true));

        // A stack trace missing a line is lost; two traces merged into one document are flagged.
        let mut broken: Vec<(String, String)> = docs
            .iter()
            .map(|(id, msg)| {
                if msg.contains("1of3") {
                    (id.clone(), msg.lines().take(2).collect::<Vec<_>>().join("\n"))
                } else {
                    (id.clone(), msg.clone())
                }
            })
            .collect();
        let first = broken.remove(0);
        broken[0].1 = format!("{}\n{}", first.1, broken[0].1);
        let r = analyze(&m, &broken);
        assert_eq!(r.lost, 2, "{}", r.render());
        assert_eq!(r.records_merged, 1);
        assert_eq!(r.found, 58);
    }

    /// Real Elasticsearch (ELASTICSEARCH_URL): a small index with the template's mapping, a scan
    /// with point in time + search_after over an index pattern spanning two indices.
    #[tokio::test]
    async fn scans_a_real_index() {
        let Ok(url) = std::env::var("ELASTICSEARCH_URL") else {
            panic!("ELASTICSEARCH_URL is not set: start the services with `./dev services up` (or run ./dev test)");
        };
        let tmp = tempfile::tempdir().unwrap();
        let run_id = format!("es{}", std::process::id());
        let m = small_run(tmp.path(), &run_id);
        let es = Es::new(&url).unwrap();
        let prefix = format!("sluice-verify-test-{run_id}");
        let mapping = json!({"mappings": {"properties": {
            "@timestamp": {"type": "date_nanos"},
            "message": {"type": "text"},
            "tags": {"type": "keyword"},
            "kubernetes": {"properties": {"pod": {"properties": {"uid": {"type": "keyword"}}}}}
        }}});
        for i in ["a", "b"] {
            es.request(reqwest::Method::PUT, &format!("{prefix}-{i}"), Some(&mapping)).await.unwrap();
        }
        let docs = ideal_docs(&m);
        let uid = &m.containers[0].uid;
        let mut nd = String::new();
        for (k, (id, msg)) in docs.iter().enumerate() {
            // Spread over both indices; the first document also lands in the second (same _id).
            let idx = if k % 2 == 0 { "a" } else { "b" };
            let doc = json!({"@timestamp": m.started, "message": msg, "kubernetes": {"pod": {"uid": uid}}});
            nd.push_str(&format!("{}\n{doc}\n", json!({"create": {"_index": format!("{prefix}-{idx}"), "_id": id}})));
            if k == 0 {
                nd.push_str(&format!("{}\n{doc}\n", json!({"create": {"_index": format!("{prefix}-b"), "_id": id}})));
            }
        }
        // A document of another pod and one written after the manifest are not selected.
        let other = json!({"@timestamp": m.started, "message": "x", "kubernetes": {"pod": {"uid": "other"}}});
        nd.push_str(&format!("{}\n{other}\n", json!({"create": {"_index": format!("{prefix}-a")}})));
        let later =
            json!({"@timestamp": "2200-01-01T00:00:00Z", "message": "late", "kubernetes": {"pod": {"uid": uid}}});
        nd.push_str(&format!("{}\n{later}\n", json!({"create": {"_index": format!("{prefix}-a")}})));
        let resp = es.bulk(nd).await.unwrap();
        assert_eq!(resp["errors"], false, "{resp}");

        let opts = VerifyOptions {
            manifest: Some(tmp.path().join(".loadgen/latest.json")),
            es_url: url.clone(),
            index: format!("{prefix}-*"),
            wait: true,
            timeout: Duration::from_secs(20),
            poll: Duration::from_millis(200),
            page_size: 7,
            ..Default::default()
        };
        let r = run(&opts).await.unwrap();
        assert_eq!(r.docs_scanned, 61, "{}", r.render());
        assert_eq!((r.expected, r.found, r.lost), (60, 60, 0));
        assert_eq!((r.duplicated_ids, r.duplicated_tokens), (1, 1), "{}", r.render());
        assert_eq!(r.examples.duplicated_ids.len(), 1);
        assert_eq!((r.partials_unmerged, r.multiline_split), (0, 0));
        assert!(!r.ok());

        // No index matching the pattern: everything lost, no error.
        let none = VerifyOptions { index: format!("{prefix}-none-*"), wait: false, ..opts.clone() };
        let r = run(&none).await.unwrap();
        assert_eq!((r.lost, r.docs_scanned), (60, 0));

        for i in ["a", "b"] {
            let _ = es.request(reqwest::Method::DELETE, &format!("{prefix}-{i}"), None).await;
        }
    }
}
