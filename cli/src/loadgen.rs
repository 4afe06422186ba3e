//! `sluice loadgen`: writes kubelet-style pod log trees like containers would, and a manifest.
//!
//! ```text
//! <root>/<ns>_<pod>_<uid>/<container>/<n>.log                  the live file (CRI or docker json-file)
//!                                    /<n>.log.20261202-070000  rotated (renamed) generations
//!                                    /<n>.log.20261202-065900.gz   older ones, gzipped
//! <root>/.loadgen/<run>.json, latest.json                       the manifest (see `manifest`)
//! ```
//!
//! Records are spread round-robin over the containers. Every record carries a [`crate::token`];
//! every `partial_every`-th record is longer than a runtime fragment and is written as partials
//! (CRI `P`…`F`, docker json-file `log` without `\n`), every `multiline_every`-th is a stack trace
//! of `multiline_lines` lines on stderr. Before a record, a live file of at least `rotate_bytes` is
//! rotated like the kubelet does it (rename to `<n>.log.<YYYYMMDD-hhmmss>`, gzip the older rotated
//! files through a `.gz.tmp`, keep `keep_files` files); after `restart_every` records a container
//! "restarts" and writes `<n+1>.log`. One `write(2)` per physical line, as the runtimes do.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use time::OffsetDateTime;

use crate::manifest::{
    self, Container, GenState, Generation, LogFile, LogFormat, Manifest, MultilineRecord, SplitRecord, StreamStats,
};
use crate::token;

/// Errors of a loadgen run.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadgenError + '_ {
    move |source| LoadgenError::Io { path: path.to_owned(), source }
}

/// Which runtime format the containers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// containerd / CRI-O lines.
    Cri,
    /// docker json-file lines.
    Docker,
    /// Alternating per container: CRI, docker, CRI, …
    Mixed,
}

/// Options of `sluice loadgen`.
#[derive(Debug, Clone, Args)]
pub struct LoadgenOptions {
    /// Root of the pod log trees (the shipper's `paths.root`).
    #[arg(long, env = "SLUICE_LOADGEN_ROOT", default_value = "/var/log/pods")]
    pub root: PathBuf,
    /// Manifest file [default: <root>/.loadgen/<run>.json, also copied to latest.json].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Run id in every token (lower-case letters and digits) [default: random].
    #[arg(long)]
    pub run_id: Option<String>,
    /// Namespaces the pods are spread over (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "demo")]
    pub namespaces: Vec<String>,
    /// Pods.
    #[arg(long, default_value_t = 4)]
    pub pods: usize,
    /// Containers per pod.
    #[arg(long, default_value_t = 2)]
    pub containers: usize,
    /// Runtime log format.
    #[arg(long, value_enum, default_value_t = FormatChoice::Mixed)]
    pub format: FormatChoice,
    /// Records per second over all containers; 0 = as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop after this many records (a stack trace is one record).
    #[arg(long)]
    pub lines: Option<u64>,
    /// Stop after this long (e.g. `30s`, `5m`). Without --lines or --duration: until SIGINT/SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Typical message length in bytes (lengths vary ±50 %).
    #[arg(long, default_value_t = 120)]
    pub line_bytes: usize,
    /// Every Nth record goes to stderr (0: none besides stack traces).
    #[arg(long, default_value_t = 7)]
    pub stderr_every: u64,
    /// Every Nth record is a long line written as runtime partials (0: never).
    #[arg(long, default_value_t = 500)]
    pub partial_every: u64,
    /// Length of a long line in bytes.
    #[arg(long, default_value_t = 40_000)]
    pub long_line_bytes: usize,
    /// Runtime fragment size (containerd and docker split at 16 KiB).
    #[arg(long, default_value_t = 16 * 1024)]
    pub fragment_bytes: usize,
    /// Every Nth record is a multi-line stack trace on stderr (0: never).
    #[arg(long, default_value_t = 200)]
    pub multiline_every: u64,
    /// Lines of a stack trace (the first line plus `\tat …` lines).
    #[arg(long, default_value_t = 6)]
    pub multiline_lines: u16,
    /// Rotate a live file once it reaches this size (bytes; 0: never). Kubelet's containerLogMaxSize.
    #[arg(long, default_value_t = 10 << 20)]
    pub rotate_bytes: u64,
    /// Files kept per container instance, live one included (kubelet's containerLogMaxFiles).
    #[arg(long, default_value_t = 5)]
    pub keep_files: usize,
    /// Do not gzip older rotated files.
    #[arg(long)]
    pub no_compress: bool,
    /// A container restarts (writes `<n+1>.log`) after this many of its records (0: never).
    #[arg(long, default_value_t = 0)]
    pub restart_every: u64,
    /// How often the manifest is rewritten while running.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub manifest_interval: Duration,
    /// Progress: `auto` (a live line on a terminal, a line every 10 s otherwise), `always`, `never`.
    #[arg(long, default_value = "auto")]
    pub progress: String,
}

impl Default for LoadgenOptions {
    fn default() -> Self {
        LoadgenOptions {
            root: PathBuf::from("/var/log/pods"),
            manifest: None,
            run_id: None,
            namespaces: vec!["demo".into()],
            pods: 4,
            containers: 2,
            format: FormatChoice::Mixed,
            rate: 1000.0,
            lines: None,
            duration: None,
            line_bytes: 120,
            stderr_every: 7,
            partial_every: 500,
            long_line_bytes: 40_000,
            fragment_bytes: 16 * 1024,
            multiline_every: 200,
            multiline_lines: 6,
            rotate_bytes: 10 << 20,
            keep_files: 5,
            no_compress: false,
            restart_every: 0,
            manifest_interval: Duration::from_secs(2),
            progress: "auto".into(),
        }
    }
}

impl LoadgenOptions {
    fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |m: &str| Err(LoadgenError::Invalid(m.to_owned()));
        if self.pods == 0 || self.containers == 0 {
            return bad("--pods and --containers must be at least 1");
        }
        if self.namespaces.is_empty() || self.namespaces.iter().any(|n| !is_dns_label(n)) {
            return bad("--namespaces: lower-case letters, digits and '-' only");
        }
        if let Some(run) = &self.run_id
            && (run.is_empty() || run.len() > 32 || !run.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        {
            return bad("--run-id: 1 to 32 lower-case letters and digits");
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return bad("--rate must be ≥ 0");
        }
        if self.fragment_bytes < 64 {
            return bad("--fragment-bytes must be at least 64");
        }
        if self.partial_every > 0 && self.long_line_bytes <= self.fragment_bytes {
            return bad("--long-line-bytes must exceed --fragment-bytes");
        }
        if self.multiline_every > 0 && !(2..=1000).contains(&self.multiline_lines) {
            return bad("--multiline-lines must be 2..=1000");
        }
        if self.keep_files < 2 {
            return bad("--keep-files must be at least 2 (the live file and one rotated)");
        }
        if !matches!(self.progress.as_str(), "auto" | "always" | "never") {
            return bad("--progress must be auto, always or never");
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What a finished run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run id.
    pub run_id: String,
    /// Where the manifest is.
    pub manifest: PathBuf,
    /// Totals.
    pub totals: manifest::Totals,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Stream names in manifest order.
const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// One container being written.
struct Writer {
    /// Index into `manifest.containers`.
    idx: usize,
    dir: PathBuf,
    format: LogFormat,
    restart: u32,
    file: File,
    size: u64,
    last_stamp: i64,
    records_in_log: u64,
    /// Records of this container over all its instances: decides each record's kind.
    records_total: u64,
}

/// Runs the load generator until the line count, the duration or `stop`.
pub fn run(opts: &LoadgenOptions, stop: &AtomicBool) -> Result<Summary, LoadgenError> {
    opts.validate()?;
    let run_id = opts.run_id.clone().unwrap_or_else(random_run_id);
    let manifest_path =
        opts.manifest.clone().unwrap_or_else(|| manifest::default_dir(&opts.root).join(format!("{run_id}.json")));
    let latest = opts.manifest.is_none().then(|| manifest::latest(&opts.root));
    fs::create_dir_all(&opts.root).map_err(io_err(&opts.root))?;

    let now = now_rfc3339();
    let mut m = Manifest {
        version: manifest::VERSION,
        run_id: run_id.clone(),
        root: opts.root.clone(),
        started: now.clone(),
        updated: now,
        finished: None,
        totals: Default::default(),
        containers: Vec::new(),
    };
    let mut next_stream = 0u32;
    let mut writers = Vec::new();
    const KINDS: [&str; 6] = ["web", "api", "worker", "cron", "cache", "auth"];
    const CONTAINERS: [&str; 4] = ["app", "proxy", "metrics", "sidecar"];
    for p in 0..opts.pods {
        let ns = &opts.namespaces[p % opts.namespaces.len()];
        let pod = format!("{}-{p}", KINDS[p % KINDS.len()]);
        let uid = pod_uid(&run_id, p);
        for c in 0..opts.containers {
            let container = CONTAINERS.get(c).map_or_else(|| format!("c{c}"), |s| (*s).to_owned());
            let format = match opts.format {
                FormatChoice::Cri => LogFormat::Cri,
                FormatChoice::Docker => LogFormat::Docker,
                FormatChoice::Mixed if (p * opts.containers + c).is_multiple_of(2) => LogFormat::Cri,
                FormatChoice::Mixed => LogFormat::Docker,
            };
            let dir = opts.root.join(format!("{ns}_{pod}_{uid}")).join(&container);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            m.containers.push(Container {
                namespace: ns.clone(),
                pod: pod.clone(),
                uid: uid.clone(),
                container,
                format,
                logs: Vec::new(),
            });
            let idx = m.containers.len() - 1;
            let (file, size) = open_log(&dir, 0, &mut m.containers[idx], &mut next_stream)?;
            writers.push(Writer {
                idx,
                dir,
                format,
                restart: 0,
                file,
                size,
                last_stamp: 0,
                records_in_log: 0,
                records_total: 0,
            });
        }
    }
    write_manifest(&m, &manifest_path, latest.as_deref())?;

    let mut progress = Progress::new(&opts.progress);
    let start = Instant::now();
    let mut last_manifest = Instant::now();
    let mut rng = Rng(seed_of(&run_id));
    let mut i: u64 = 0;
    let mut line = Vec::with_capacity(64 * 1024);
    let mut content = String::with_capacity(64 * 1024);
    loop {
        if stop.load(Ordering::Relaxed)
            || opts.lines.is_some_and(|n| i >= n)
            || opts.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if opts.rate > 0.0 {
            let due = Duration::from_secs_f64(i as f64 / opts.rate);
            let elapsed = start.elapsed();
            if due > elapsed {
                // Sleep in short steps so that a stop request is seen quickly.
                std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
                continue;
            }
        }
        let n_writers = writers.len() as u64;
        let w = &mut writers[(i % n_writers) as usize];
        if opts.restart_every > 0 && w.records_in_log >= opts.restart_every {
            restart(w, &mut m, &mut next_stream)?;
        }
        if opts.rotate_bytes > 0 && w.size >= opts.rotate_bytes {
            rotate(w, &mut m, opts)?;
        }
        // Kinds and streams follow each container's own count, so every container gets its share.
        let k = w.records_total;
        let kind = if opts.partial_every > 0 && k % opts.partial_every == opts.partial_every - 1 {
            Kind::Long
        } else if opts.multiline_every > 0 && k % opts.multiline_every == opts.multiline_every / 2 {
            Kind::Trace
        } else {
            Kind::Normal
        };
        let stream = match kind {
            Kind::Trace => 1,
            Kind::Long => 0,
            Kind::Normal if opts.stderr_every > 0 && k % opts.stderr_every == 1 => 1,
            Kind::Normal => 0,
        };
        write_record(w, &mut m, opts, &run_id, kind, stream, &mut rng, &mut line, &mut content)?;
        i += 1;
        progress.tick(&m.totals, start.elapsed(), false);
        if last_manifest.elapsed() >= opts.manifest_interval {
            m.updated = now_rfc3339();
            write_manifest(&m, &manifest_path, latest.as_deref())?;
            last_manifest = Instant::now();
        }
    }
    for w in &mut writers {
        w.file.flush().map_err(io_err(&w.dir))?;
    }
    let now = now_rfc3339();
    m.updated = now.clone();
    m.finished = Some(now);
    write_manifest(&m, &manifest_path, latest.as_deref())?;
    progress.tick(&m.totals, start.elapsed(), true);
    Ok(Summary { run_id, manifest: manifest_path, totals: m.totals, seconds: start.elapsed().as_secs_f64() })
}

fn write_manifest(m: &Manifest, path: &Path, latest: Option<&Path>) -> Result<(), LoadgenError> {
    m.write(path)?;
    if let Some(latest) = latest {
        m.write(latest)?;
    }
    Ok(())
}

/// Opens `<n>.log` of a container and adds its manifest entry with fresh stream ids.
fn open_log(dir: &Path, restart: u32, c: &mut Container, next_stream: &mut u32) -> Result<(File, u64), LoadgenError> {
    let path = dir.join(format!("{restart}.log"));
    let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
    let size = file.metadata().map_err(io_err(&path))?.len();
    let mut streams = BTreeMap::new();
    for s in STREAMS {
        streams.insert(s.to_owned(), StreamStats { id: *next_stream, ..Default::default() });
        *next_stream += 1;
    }
    c.logs.push(LogFile {
        restart,
        path,
        streams,
        generations: vec![Generation {
            file: format!("{restart}.log"),
            state: GenState::Live,
            streams: BTreeMap::new(),
        }],
        partial_split: Vec::new(),
        multiline: Vec::new(),
    });
    Ok((file, size))
}

fn restart(w: &mut Writer, m: &mut Manifest, next_stream: &mut u32) -> Result<(), LoadgenError> {
    let c = &mut m.containers[w.idx];
    if let Some(g) = c.logs.last_mut().and_then(|l| l.generations.last_mut()) {
        g.state = GenState::Closed;
    }
    w.restart += 1;
    let (file, size) = open_log(&w.dir, w.restart, c, next_stream)?;
    w.file = file;
    w.size = size;
    w.records_in_log = 0;
    w.last_stamp = 0;
    m.totals.restarts += 1;
    Ok(())
}

/// Kubelet-style rotation of the live file of `w`.
fn rotate(w: &mut Writer, m: &mut Manifest, opts: &LoadgenOptions) -> Result<(), LoadgenError> {
    let base = format!("{}.log", w.restart);
    let live = w.dir.join(&base);
    // One name per second as the kubelet makes them; never reuse or go back in time.
    let secs = OffsetDateTime::now_utc().unix_timestamp().max(w.last_stamp + 1);
    w.last_stamp = secs;
    let rotated_name = format!("{base}.{}", rotation_stamp(secs));
    let rotated = w.dir.join(&rotated_name);
    fs::rename(&live, &rotated).map_err(io_err(&live))?;
    w.file = OpenOptions::new().create(true).append(true).open(&live).map_err(io_err(&live))?;
    w.size = 0;
    m.totals.rotations += 1;
    let log = m.containers[w.idx].logs.last_mut().expect("a log per container");
    if let Some(g) = log.generations.last_mut() {
        g.file = rotated_name.clone();
        g.state = GenState::Rotated;
    }
    log.generations.push(Generation { file: base, state: GenState::Live, streams: BTreeMap::new() });
    if !opts.no_compress {
        // Every rotated generation but the newest is compressed: `<name>.gz.tmp`, then renamed.
        for g in log.generations.iter_mut() {
            if g.state != GenState::Rotated || g.file == rotated_name {
                continue;
            }
            let src = w.dir.join(&g.file);
            let gz_name = format!("{}.gz", g.file);
            let tmp = w.dir.join(format!("{gz_name}.tmp"));
            let data = fs::read(&src).map_err(io_err(&src))?;
            let mut enc = GzEncoder::new(File::create(&tmp).map_err(io_err(&tmp))?, Compression::fast());
            enc.write_all(&data).map_err(io_err(&tmp))?;
            enc.finish().and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
            fs::rename(&tmp, w.dir.join(&gz_name)).map_err(io_err(&tmp))?;
            fs::remove_file(&src).map_err(io_err(&src))?;
            g.file = gz_name;
            g.state = GenState::Gzipped;
        }
    }
    // Keep `keep_files` files, the live one included: delete the oldest.
    let present = log
        .generations
        .iter()
        .filter(|g| matches!(g.state, GenState::Rotated | GenState::Gzipped | GenState::Live))
        .count();
    let mut excess = present.saturating_sub(opts.keep_files);
    for g in log.generations.iter_mut() {
        if excess == 0 {
            break;
        }
        if matches!(g.state, GenState::Rotated | GenState::Gzipped) {
            let p = w.dir.join(&g.file);
            fs::remove_file(&p).map_err(io_err(&p))?;
            g.state = GenState::Deleted;
            excess -= 1;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Long,
    Trace,
}

const LEVELS: [&str; 4] = ["INFO", "INFO", "DEBUG", "WARN"];
const MESSAGES: [&str; 6] = [
    "GET /api/items/{} 200",
    "POST /api/orders 201 order={}",
    "cache miss key=k{}",
    "user login ok user=u{}",
    "job finished id={} status=ok",
    "upstream slow latency_ms={}",
];

#[allow(clippy::too_many_arguments)]
fn write_record(
    w: &mut Writer,
    m: &mut Manifest,
    opts: &LoadgenOptions,
    run_id: &str,
    kind: Kind,
    stream: usize,
    rng: &mut Rng,
    line: &mut Vec<u8>,
    content: &mut String,
) -> Result<(), LoadgenError> {
    let stream_name = STREAMS[stream];
    let log = m.containers[w.idx].logs.last_mut().expect("a log per container");
    let stats = log.streams.get_mut(stream_name).expect("both streams exist");
    let (sid, seq) = (stats.id, stats.count);
    let ts = now_rfc3339_nanos();
    let path = &log.path.clone();
    let mut physical = 0u64;
    let mut bytes = 0u64;
    let mut emit = |w: &mut Writer, fragment: &str, last: bool, line: &mut Vec<u8>| -> Result<(), LoadgenError> {
        line.clear();
        match w.format {
            LogFormat::Cri => {
                line.extend_from_slice(ts.as_bytes());
                line.push(b' ');
                line.extend_from_slice(stream_name.as_bytes());
                line.extend_from_slice(if last { b" F " } else { b" P " });
                line.extend_from_slice(fragment.as_bytes());
            }
            LogFormat::Docker => {
                #[derive(Serialize)]
                struct Entry<'a> {
                    log: &'a str,
                    stream: &'a str,
                    time: &'a str,
                }
                let log = if last { format!("{fragment}\n") } else { fragment.to_owned() };
                serde_json::to_writer(&mut *line, &Entry { log: &log, stream: stream_name, time: &ts })
                    .map_err(|e| LoadgenError::Io { path: path.clone(), source: io::Error::other(e) })?;
            }
        }
        line.push(b'\n');
        w.file.write_all(line).map_err(io_err(path))?;
        w.size += line.len() as u64;
        physical += 1;
        bytes += line.len() as u64;
        Ok(())
    };
    match kind {
        Kind::Normal => {
            content.clear();
            let level = LEVELS[(rng.next() % LEVELS.len() as u64) as usize];
            let msg = MESSAGES[(rng.next() % MESSAGES.len() as u64) as usize]
                .replace("{}", &(rng.next() % 100_000).to_string());
            content.push_str(level);
            content.push(' ');
            content.push_str(&msg);
            content.push(' ');
            token::push(content, run_id, sid, seq);
            let target = opts.line_bytes / 2 + (rng.next() % (opts.line_bytes as u64 + 1)) as usize;
            pad(content, target);
            emit(w, content, true, line)?;
        }
        Kind::Long => {
            content.clear();
            content.push_str("WARN large payload ");
            token::push(content, run_id, sid, seq);
            let mut end = String::new();
            token::push_end(&mut end, run_id, sid, seq);
            pad(content, opts.long_line_bytes.saturating_sub(end.len() + 1));
            content.push(' ');
            content.push_str(&end);
            let frags = split_fragments(content, opts.fragment_bytes);
            let n = frags.len();
            for (k, f) in frags.iter().enumerate() {
                emit(w, f, k + 1 == n, line)?;
            }
            log.partial_split.push(SplitRecord { stream: stream_name.into(), seq, bytes: content.len(), fragments: n });
            m.totals.partial_split += 1;
        }
        Kind::Trace => {
            let n = opts.multiline_lines;
            content.clear();
            content.push_str("ERROR request failed ");
            token::push_part(content, run_id, sid, seq, 1, n);
            content.push_str(&format!(" java.lang.IllegalStateException: boom {}", rng.next() % 1000));
            emit(w, content, true, line)?;
            for k in 2..=n {
                content.clear();
                content.push_str(&format!("\tat com.example.demo.Handler{k}.handle(Handler{k}.java:{}) ", k * 10));
                token::push_part(content, run_id, sid, seq, k, n);
                emit(w, content, true, line)?;
            }
            log.multiline.push(MultilineRecord { stream: stream_name.into(), seq, lines: n });
            m.totals.multiline += 1;
        }
    }
    log.streams.get_mut(stream_name).expect("exists").record(seq, &ts);
    if let Some(g) = log.generations.last_mut() {
        let gs =
            g.streams.entry(stream_name.to_owned()).or_insert_with(|| StreamStats { id: sid, ..Default::default() });
        gs.record(seq, &ts);
    }
    w.records_in_log += 1;
    w.records_total += 1;
    m.totals.records += 1;
    m.totals.physical_lines += physical;
    m.totals.bytes += bytes;
    Ok(())
}

/// Pads `s` to `len` bytes with a readable filler.
fn pad(s: &mut String, len: usize) {
    const FILL: &[u8] = b" lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor";
    let mut k = 0;
    while s.len() < len {
        s.push(FILL[k % FILL.len()] as char);
        k += 1;
    }
}

/// Splits `s` into fragments of at most `size` bytes at char boundaries (as runtimes split lines).
pub fn split_fragments(s: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > size {
        let mut cut = size;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

/// `YYYYMMDD-hhmmss` (UTC) as the kubelet names rotated files.
pub fn rotation_stamp(unix_secs: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix_secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}-{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// Now as RFC 3339 UTC with nanoseconds, like the runtimes write it.
pub fn now_rfc3339_nanos() -> String {
    let t = OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

fn now_rfc3339() -> String {
    now_rfc3339_nanos()
}

/// A version-4-shaped pod uid unique to the run and pod, every hex digit drawn from both.
///
/// The shipper keys records by `<pod uid>/<container>` and librdkafka's default partitioner takes
/// CRC32 of the key modulo the partition count. CRC32 is affine in its input, so uids that differed
/// only in a pod-index digit put a run's eight streams on just two or three of four partitions (in a
/// quarter of runs none reached the two partitions of one of two indexer replicas); real pod uids
/// are random, and so are these.
fn pod_uid(run: &str, pod: usize) -> String {
    let mut r = Rng(seed_of(run) ^ (pod as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (a, b) = (r.next(), r.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

fn random_run_id() -> String {
    let t = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let mut r = Rng(t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15);
    format!("{:08x}", r.next() as u32)
}

fn seed_of(s: &str) -> u64 {
    // FNV-1a: stable across versions, unlike the std hasher.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// xorshift64*: variety, not security.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Progress output on stderr.
struct Progress {
    live: bool,
    enabled: bool,
    last: Instant,
    last_records: u64,
}

impl Progress {
    fn new(mode: &str) -> Progress {
        let tty = io::stderr().is_terminal();
        let live = tty && mode != "never";
        Progress { live, enabled: mode != "never", last: Instant::now(), last_records: 0 }
    }

    fn tick(&mut self, t: &manifest::Totals, elapsed: Duration, done: bool) {
        if !self.enabled {
            return;
        }
        let every = if self.live { Duration::from_millis(250) } else { Duration::from_secs(10) };
        let since = self.last.elapsed();
        if !done && since < every {
            return;
        }
        let rate = if done {
            t.records as f64 / elapsed.as_secs_f64().max(1e-9)
        } else {
            (t.records - self.last_records) as f64 / since.as_secs_f64().max(1e-9)
        };
        let msg = format!(
            "loadgen: {} records ({} physical lines, {:.1} MiB) {:.0}/s, {} partial-split, {} multiline, {} rotations, {} restarts, {:.0} s",
            t.records,
            t.physical_lines,
            t.bytes as f64 / (1 << 20) as f64,
            rate,
            t.partial_split,
            t.multiline,
            t.rotations,
            t.restarts,
            elapsed.as_secs_f64()
        );
        let mut err = io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[2K{msg}");
            if done {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{msg}");
        }
        self.last = Instant::now();
        self.last_records = t.records;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read as _;

    fn opts(root: &Path) -> LoadgenOptions {
        LoadgenOptions {
            root: root.to_owned(),
            rate: 0.0,
            progress: "never".into(),
            pods: 1,
            containers: 2,
            ..Default::default()
        }
    }

    fn read_all(path: &Path) -> String {
        let data = fs::read(path).unwrap();
        if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            GzDecoder::new(&data[..]).read_to_string(&mut s).unwrap();
            s
        } else {
            String::from_utf8(data).unwrap()
        }
    }

    /// Every physical line of every remaining generation of a log, oldest first.
    fn lines_of(dir: &Path, log: &LogFile) -> Vec<String> {
        log.generations
            .iter()
            .filter(|g| g.state != GenState::Deleted)
            .flat_map(|g| read_all(&dir.join(&g.file)).lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// The shipper's key is `<pod uid>/<container>`, partitioned by CRC32 modulo the partition count
    /// (librdkafka's default): a run's streams must spread like random keys, or a consumer of part of
    /// the partitions may get none of them. With random keys, 8 streams cover at most 2 of 4
    /// partitions in about 2.3 % of runs; uids that differed in one digit did so in half of them.
    #[test]
    fn pod_uids_spread_a_runs_streams_over_partitions_like_random_keys() {
        let runs = 400;
        let narrow = (0..runs)
            .filter(|i| {
                let run = format!("{i:08x}");
                let mut hit = [false; 4];
                for pod in 0..4 {
                    let uid = pod_uid(&run, pod);
                    assert_eq!(uid.len(), 36, "{uid}");
                    for c in ["app", "proxy"] {
                        hit[crc32fast::hash(format!("{uid}/{c}").as_bytes()) as usize % 4] = true;
                    }
                }
                hit.iter().filter(|h| **h).count() <= 2
            })
            .count();
        assert!(narrow * 100 < runs * 6, "{narrow} of {runs} runs put 8 streams on at most 2 of 4 partitions");
        assert_ne!(pod_uid("a", 0), pod_uid("a", 1));
        assert_eq!(pod_uid("a", 3), pod_uid("a", 3), "a run's uids are reproducible");
    }

    #[test]
    fn cri_and_docker_lines_with_partials_and_traces() {
        let tmp = tempfile::tempdir().unwrap();
        let o = LoadgenOptions {
            lines: Some(100),
            partial_every: 10,
            long_line_bytes: 1000,
            fragment_bytes: 300,
            multiline_every: 20,
            multiline_lines: 4,
            run_id: Some("t1".into()),
            ..opts(tmp.path())
        };
        let s = run(&o, &AtomicBool::new(false)).unwrap();
        assert_eq!(s.totals.records, 100);
        // 50 records per container: long lines at 9, 19, …, 49, stack traces at 10 and 30.
        assert_eq!(s.totals.partial_split, 10);
        assert_eq!(s.totals.multiline, 4);
        // 100 records: 86 normal + 10 × 4 fragments + 4 × 4 trace lines.
        assert_eq!(s.totals.physical_lines, 86 + 40 + 16);
        let m = Manifest::read(&s.manifest).unwrap();
        assert_eq!(m, Manifest::read(&manifest::latest(tmp.path())).unwrap());
        assert!(m.finished.is_some());
        assert_eq!(m.containers[0].format, LogFormat::Cri);
        assert_eq!(m.containers[1].format, LogFormat::Docker);
        let uid = &m.containers[0].uid;
        let dir0 = tmp.path().join(format!("demo_web-0_{uid}/app"));
        let cri = lines_of(&dir0, &m.containers[0].logs[0]);
        // `<RFC 3339 nanos> <stream> <P|F> <content>`
        for l in &cri {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert_eq!(ts.len(), 30, "{ts}");
            assert!(ts.ends_with('Z'));
            assert!(matches!(parts.next(), Some("stdout" | "stderr")));
            assert!(matches!(parts.next(), Some("P" | "F")));
        }
        let p_lines: Vec<_> = cri.iter().filter(|l| l.contains(" stdout P ")).collect();
        assert_eq!(p_lines.len(), 5 * 3, "five long lines in this container, 3 P + 1 F each");
        // A long line's fragments join to the full content with both markers.
        let joined: String =
            cri.iter().skip_while(|l| !l.contains(" P ")).take(4).map(|l| l.splitn(4, ' ').nth(3).unwrap()).collect();
        assert_eq!(joined.len(), 1000);
        let toks = token::scan(&joined);
        assert_eq!(toks.len(), 2);
        assert!(toks[1].end && toks[0].seq == toks[1].seq);
        // Stack trace lines are on stderr and continuation lines start with a tab.
        assert!(cri.iter().any(|l| l.contains(" stderr F \tat com.example")));

        let dir1 = tmp.path().join(format!("demo_web-0_{uid}/proxy"));
        let docker = lines_of(&dir1, &m.containers[1].logs[0]);
        let mut partial = 0;
        for l in &docker {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let log = v["log"].as_str().unwrap();
            if !log.ends_with('\n') {
                partial += 1;
                assert_eq!(log.len(), 300);
            }
            assert!(v["time"].as_str().unwrap().ends_with('Z'));
        }
        assert_eq!(partial, 5 * 3);

        // Manifest: per stream counts and sequence ranges add up; tokens match them.
        let mut total = 0;
        for c in &m.containers {
            for log in &c.logs {
                for st in log.streams.values() {
                    total += st.count;
                    if st.count > 0 {
                        assert_eq!(st.first_seq, Some(0));
                        assert_eq!(st.last_seq, Some(st.count - 1));
                        assert!(st.first_write.as_deref() <= st.last_write.as_deref());
                    }
                }
            }
        }
        assert_eq!(total, 100);
        let stdout_id = m.containers[0].logs[0].streams["stdout"].id;
        let seqs: Vec<u64> = cri
            .iter()
            .flat_map(|l| token::scan(l).into_iter().map(|t| (t.stream, t.seq, t.end, t.part)).collect::<Vec<_>>())
            .filter(|&(s, _, end, part)| s == stdout_id && !end && part.is_none())
            .map(|(_, q, _, _)| q)
            .collect();
        assert_eq!(seqs, (0..m.containers[0].logs[0].streams["stdout"].count).collect::<Vec<_>>());
    }

    #[test]
    fn rotation_gzip_keep_and_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let o = LoadgenOptions {
            lines: Some(3000),
            containers: 1,
            format: FormatChoice::Cri,
            rotate_bytes: 20_000,
            keep_files: 4,
            restart_every: 2000,
            partial_every: 0,
            multiline_every: 0,
            run_id: Some("rot".into()),
            ..opts(tmp.path())
        };
        let s = run(&o, &AtomicBool::new(false)).unwrap();
        let m = Manifest::read(&s.manifest).unwrap();
        assert_eq!(s.totals.restarts, 1);
        assert!(s.totals.rotations >= 10, "{:?}", s.totals);
        let c = &m.containers[0];
        assert_eq!(c.logs.len(), 2);
        let dir = c.logs[0].path.parent().unwrap();
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        // Per instance at most 4 files: live, one plain rotated, older ones gzipped.
        let of = |n: &str| names.iter().filter(|x| x.starts_with(n)).cloned().collect::<Vec<_>>();
        let zero = of("0.log");
        assert_eq!(zero.len(), 4, "{zero:?}");
        assert!(zero.contains(&"0.log".to_owned()));
        assert_eq!(zero.iter().filter(|n| n.ends_with(".gz")).count(), 2, "{zero:?}");
        for n in &zero {
            if n != "0.log" {
                let stamp = &n["0.log.".len().."0.log.".len() + 15];
                assert!(stamp.as_bytes()[8] == b'-' && stamp.bytes().filter(u8::is_ascii_digit).count() == 14, "{n}");
            }
        }
        assert!(!names.iter().any(|n| n.ends_with(".tmp")));
        assert!(names.contains(&"1.log".to_owned()));
        // The manifest names exactly the files on disk and marks the deleted ones.
        for log in &c.logs {
            for g in &log.generations {
                assert_eq!(dir.join(&g.file).exists(), g.state != GenState::Deleted, "{g:?}");
            }
            // Generations partition the sequence range of each stream.
            for (name, st) in &log.streams {
                let sum: u64 = log.generations.iter().filter_map(|g| g.streams.get(name)).map(|s| s.count).sum();
                assert_eq!(sum, st.count);
            }
        }
        assert_eq!(c.logs[0].generations.last().unwrap().state, GenState::Closed);
        assert!(c.logs[0].generations.iter().any(|g| g.state == GenState::Deleted));
        // The gzipped generations hold the lines the manifest says.
        let g = c.logs[0].generations.iter().find(|g| g.state == GenState::Gzipped).unwrap();
        let text = read_all(&dir.join(&g.file));
        let st = &g.streams["stdout"];
        let first = token::scan(text.lines().next().unwrap())[0];
        assert_eq!(Some(first.seq), st.first_seq);
        // Stamps strictly increase even when several rotations fall in one second.
        let stamps: Vec<&str> =
            c.logs[0].generations.iter().filter(|g| g.file != "0.log").map(|g| &g.file[6..21]).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    }

    #[test]
    fn rate_and_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let o = LoadgenOptions { rate: 200.0, duration: Some(Duration::from_millis(500)), ..opts(tmp.path()) };
        let s = run(&o, &AtomicBool::new(false)).unwrap();
        assert!((80..=120).contains(&s.totals.records), "{:?}", s.totals);
        let stop = AtomicBool::new(true);
        let s = run(&LoadgenOptions { lines: Some(10), ..opts(tmp.path()) }, &stop).unwrap();
        assert_eq!(s.totals.records, 0);
    }

    #[test]
    fn fragments_and_stamps() {
        assert_eq!(split_fragments("abcdefg", 3), vec!["abc", "def", "g"]);
        assert_eq!(split_fragments("abc", 3), vec!["abc"]);
        assert_eq!(split_fragments("aé", 2), vec!["a", "é"]);
        assert_eq!(rotation_stamp(1_798_761_601), "20270101-000001");
        assert!(LoadgenOptions { keep_files: 1, ..Default::default() }.validate().is_err());
        assert!(LoadgenOptions { run_id: Some("Bad_".into()), ..Default::default() }.validate().is_err());
    }
}
