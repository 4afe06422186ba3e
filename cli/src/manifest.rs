//! The loadgen manifest: what was written, per container log file and stream, as JSON.
//!
//! `loadgen` rewrites it atomically (temporary file + rename) every few seconds and at the end, so
//! it always describes a prefix of what is on disk; `verify` reads it. Sequence numbers are per
//! stream (`0..count`), see [`crate::token`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Current manifest format version.
pub const VERSION: u32 = 1;

/// Errors reading or writing a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read or written.
    #[error("{path}")]
    Io {
        /// The manifest path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a manifest.
    #[error("{path}: not a loadgen manifest")]
    Json {
        /// The manifest path.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A manifest of another format version.
    #[error("{path}: manifest version {found}, this tool reads version {VERSION}")]
    Version {
        /// The manifest path.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
}

/// A whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`VERSION`].
    pub version: u32,
    /// The run id found in every token.
    pub run_id: String,
    /// The root folder of the pod log trees.
    pub root: PathBuf,
    /// When the run started (RFC 3339).
    pub started: String,
    /// When this manifest was written.
    pub updated: String,
    /// When the run ended; `None` while it runs (the manifest then describes a prefix).
    pub finished: Option<String>,
    /// Totals over all streams.
    pub totals: Totals,
    /// One entry per container.
    pub containers: Vec<Container>,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Records (logical lines; a stack trace is one record).
    pub records: u64,
    /// Physical lines written (fragments and stack-trace lines each count).
    pub physical_lines: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Records longer than a runtime fragment, written as partials.
    pub partial_split: u64,
    /// Multi-line records (stack traces).
    pub multiline: u64,
    /// Rotations.
    pub rotations: u64,
    /// Container restarts.
    pub restarts: u64,
}

/// One container of one pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Container {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
    /// Container name.
    pub container: String,
    /// `cri` or `docker`.
    pub format: LogFormat,
    /// One entry per container instance (`0.log`, `1.log` after a restart, …).
    pub logs: Vec<LogFile>,
}

/// The runtime log format of a container.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// containerd / CRI-O: `<time> <stream> <P|F> <content>`.
    Cri,
    /// docker json-file: `{"log":…,"stream":…,"time":…}`.
    Docker,
}

/// One container instance's log, `<n>.log`, across its rotations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogFile {
    /// `n` of `<n>.log`.
    pub restart: u32,
    /// The live path.
    pub path: PathBuf,
    /// Streams written to it, by name (`stdout`, `stderr`).
    pub streams: BTreeMap<String, StreamStats>,
    /// Every generation, oldest first; the last is the live file.
    pub generations: Vec<Generation>,
    /// Records split into runtime partials.
    pub partial_split: Vec<SplitRecord>,
    /// Multi-line records.
    pub multiline: Vec<MultilineRecord>,
}

/// What one stream of one file (or generation) holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamStats {
    /// The stream id in the tokens (unique in the run).
    pub id: u32,
    /// Records.
    pub count: u64,
    /// First sequence number (`None` when empty).
    pub first_seq: Option<u64>,
    /// Last sequence number.
    pub last_seq: Option<u64>,
    /// When the first record was written (RFC 3339).
    pub first_write: Option<String>,
    /// When the last record was written.
    pub last_write: Option<String>,
}

impl StreamStats {
    /// Counts one record written at `at`.
    pub fn record(&mut self, seq: u64, at: &str) {
        if self.first_seq.is_none() {
            self.first_seq = Some(seq);
            self.first_write = Some(at.to_owned());
        }
        self.count += 1;
        self.last_seq = Some(seq);
        self.last_write = Some(at.to_owned());
    }
}

/// One generation of a log file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Generation {
    /// Its current file name (`0.log`, `0.log.20261202-070000`, `0.log.20261202-070000.gz`).
    pub file: String,
    /// What happened to it.
    pub state: GenState,
    /// Records per stream in it.
    pub streams: BTreeMap<String, StreamStats>,
}

/// The state of a generation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GenState {
    /// Being written.
    Live,
    /// Renamed by rotation.
    Rotated,
    /// Rotated and gzipped.
    Gzipped,
    /// Deleted (more than `keep` files): lines the shipper had not read by then are lost.
    Deleted,
    /// Closed by a container restart (the next `<n+1>.log` is written now).
    Closed,
}

/// A record written as runtime partials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitRecord {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Sequence number.
    pub seq: u64,
    /// Message bytes once joined.
    pub bytes: usize,
    /// Fragments written.
    pub fragments: usize,
}

/// A multi-line record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MultilineRecord {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Sequence number.
    pub seq: u64,
    /// Physical lines.
    pub lines: u16,
}

impl Manifest {
    /// Reads and checks a manifest.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let data = fs::read(path).map_err(|source| ManifestError::Io { path: path.to_owned(), source })?;
        let m: Manifest =
            serde_json::from_slice(&data).map_err(|source| ManifestError::Json { path: path.to_owned(), source })?;
        if m.version != VERSION {
            return Err(ManifestError::Version { path: path.to_owned(), found: m.version });
        }
        Ok(m)
    }

    /// Writes the manifest atomically: temporary file in the same folder, fsync, rename.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let data =
            serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Json { path: path.to_owned(), source })?;
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Every pod uid of the run (for the Elasticsearch query).
    pub fn pod_uids(&self) -> Vec<String> {
        let mut uids: Vec<String> = self.containers.iter().map(|c| c.uid.clone()).collect();
        uids.sort();
        uids.dedup();
        uids
    }
}

/// The default manifest folder under a loadgen root (ignored by the shipper: not a pod folder).
pub fn default_dir(root: &Path) -> PathBuf {
    root.join(".loadgen")
}

/// The manifest of the latest run under `root`.
pub fn latest(root: &Path) -> PathBuf {
    default_dir(root).join("latest.json")
}
