//! Checkpoints: the contiguous acknowledged prefix of every generation, persisted atomically.
//!
//! A [`Tracker`] per generation follows the records handed to the sink in submission order. Acks may
//! arrive in any order (Kafka delivery reports); the checkpoint offset only moves over the
//! contiguous acknowledged prefix. The offset stored is a *resume point*: re-reading from it
//! re-creates every record not yet acknowledged (it never passes the first line of a pending partial
//! or multiline record). Records acknowledged beyond the resume point are remembered (bounded) as
//! `skip` ranges, so a restart does not send them again.
//!
//! The [`Store`] writes `shipper-checkpoint.json` in `checkpoint.dir`: written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced.
//!
//! Record boundaries cut by time or memory ([`crate::reassemble::Cuts`]) must be durable before the
//! record is sent, which cannot wait for the next checkpoint write: each new cut is appended to the
//! [`Journal`] (`shipper-cuts.jsonl`, fdatasync'd) first, and the journal is emptied after every
//! checkpoint write, which carries the cuts beyond each generation's offset itself.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most acknowledged-ahead ranges remembered per generation.
pub const MAX_SKIP: usize = 1024;

#[derive(Debug, Clone)]
struct InFlight {
    start: u64,
    end: u64,
    resume: u64,
    bytes: usize,
    acked: bool,
}

/// Acknowledgement state of one generation.
#[derive(Debug, Clone)]
pub struct Tracker {
    base: u64,
    entries: VecDeque<InFlight>,
    resolved: usize,
    committed: u64,
    reader_resume: u64,
    acked_above: BTreeMap<u64, u64>,
    acked_max: u64,
    inflight_bytes: usize,
}

impl Tracker {
    /// A tracker whose data before `resume` is already acknowledged.
    pub fn new(resume: u64) -> Self {
        Tracker {
            base: 0,
            entries: VecDeque::new(),
            resolved: 0,
            committed: resume,
            reader_resume: resume,
            acked_above: BTreeMap::new(),
            acked_max: resume,
            inflight_bytes: 0,
        }
    }

    /// Registers a record covering `[start, end)` handed to the sink; returns its sequence number.
    pub fn submit(&mut self, start: u64, end: u64, bytes: usize) -> u64 {
        let seq = self.base + self.entries.len() as u64;
        self.entries.push_back(InFlight { start, end, resume: 0, bytes, acked: false });
        self.inflight_bytes += bytes;
        seq
    }

    /// After the reader finished a line: the resume point from there on is `resume` (nondecreasing).
    pub fn resolve(&mut self, resume: u64) {
        for e in self.entries.iter_mut().skip(self.resolved) {
            e.resume = resume;
        }
        self.resolved = self.entries.len();
        self.reader_resume = self.reader_resume.max(resume);
        self.advance();
    }

    /// Acknowledges record `seq`; returns the bytes it held (0 for unknown or repeated acks).
    pub fn ack(&mut self, seq: u64) -> usize {
        let Some(idx) = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else { return 0 };
        let Some(e) = self.entries.get_mut(idx) else { return 0 };
        if e.acked {
            return 0;
        }
        e.acked = true;
        let (start, end, bytes) = (e.start, e.end, e.bytes);
        self.inflight_bytes -= bytes;
        self.note_acked(start, end);
        self.advance();
        bytes
    }

    /// Records `[start, end)` as acknowledged without an in-flight entry (skipped on resume).
    pub fn note_acked(&mut self, start: u64, end: u64) {
        self.acked_max = self.acked_max.max(end);
        if start >= self.committed {
            self.acked_above.insert(start, end);
            while self.acked_above.len() > MAX_SKIP {
                self.acked_above.pop_last();
            }
        }
    }

    fn advance(&mut self) {
        while self.resolved > 0 && self.entries.front().is_some_and(|e| e.acked) {
            let e = self.entries.pop_front().expect("front");
            self.committed = self.committed.max(e.resume);
            self.base += 1;
            self.resolved -= 1;
        }
        if self.entries.is_empty() {
            self.committed = self.committed.max(self.reader_resume);
            if self.entries.capacity() > 64 {
                // Idle files keep no memory of their last burst.
                self.entries = VecDeque::new();
            }
        }
        while self.acked_above.first_key_value().is_some_and(|(s, _)| *s < self.committed) {
            self.acked_above.pop_first();
        }
    }

    /// The resume offset over the contiguous acknowledged prefix.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Highest end offset of any acknowledged record.
    pub fn acked_max(&self) -> u64 {
        self.acked_max
    }

    /// Records in flight.
    pub fn inflight(&self) -> usize {
        self.entries.iter().filter(|e| !e.acked).count()
    }

    /// Bytes of records in flight.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }

    /// Nothing handed to the sink is unacknowledged.
    pub fn idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// Acknowledged ranges at or beyond the resume point.
    pub fn skip_list(&self) -> Vec<(u64, u64)> {
        self.acked_above.iter().map(|(s, e)| (*s, *e)).collect()
    }
}

/// One generation in the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The generation id (32 hex digits; see [`crate::record`]).
    pub id: String,
    /// The live path of the file the generation belongs to.
    pub path: String,
    /// Resume offset: everything before it is acknowledged.
    pub offset: u64,
    /// Highest acknowledged end offset (records re-sent below it are counted as possible duplicates).
    #[serde(default)]
    pub acked_max: u64,
    /// Read to its end after rotation or deletion and fully acknowledged: never read again.
    #[serde(default)]
    pub complete: bool,
    /// Acknowledged `[start, end)` ranges beyond `offset`, skipped when re-read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<(u64, u64)>,
    /// RFC 3339 time pinned when the generation was first seen: the date (index) of its records
    /// that have no readable timestamp and none before them in the generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    /// Record boundaries beyond `offset` set by time or memory (end offset, cut bits of
    /// [`crate::reassemble::Cuts`]): a re-read cuts there again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<(u64, u8)>,
}

/// The checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    /// Format version, `1`.
    pub version: u32,
    /// One entry per generation.
    pub generations: Vec<Entry>,
}

/// Checkpoint I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing or syncing failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a version 1 checkpoint.
    #[error("checkpoint {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The checkpoint file in `checkpoint.dir`.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
}

/// File name of the checkpoint.
pub const FILE_NAME: &str = "shipper-checkpoint.json";

impl Store {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        fs::create_dir_all(dir).map_err(|source| CheckpointError::Io { path: dir.to_owned(), source })?;
        Ok(Store { path: dir.join(FILE_NAME), tmp: dir.join(format!("{FILE_NAME}.tmp")) })
    }

    /// The checkpoint path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the entries; a missing file is empty.
    pub fn load(&self) -> Result<Vec<Entry>, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CheckpointError::Io { path: self.path.clone(), source }),
        };
        let file: CheckpointFile = serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::Corrupt { path: self.path.clone(), message: e.to_string() })?;
        if file.version != 1 {
            return Err(CheckpointError::Corrupt {
                path: self.path.clone(),
                message: format!("unsupported version {}", file.version),
            });
        }
        Ok(file.generations)
    }

    /// Moves an unreadable checkpoint aside (`.corrupt`) so the shipper can start.
    pub fn quarantine(&self) -> Result<PathBuf, CheckpointError> {
        let aside = self.path.with_extension("json.corrupt");
        fs::rename(&self.path, &aside).map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?;
        Ok(aside)
    }

    /// Writes the entries atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, generations: Vec<Entry>) -> Result<(), CheckpointError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Io { path, source }
        };
        let file = CheckpointFile { version: 1, generations };
        let bytes = serde_json::to_vec(&file).expect("checkpoint serialises");
        let mut f = File::create(&self.tmp).map_err(io_err(&self.tmp))?;
        f.write_all(&bytes).map_err(io_err(&self.tmp))?;
        f.sync_all().map_err(io_err(&self.tmp))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(())
    }
}

/// File name of the cut journal.
pub const JOURNAL_NAME: &str = "shipper-cuts.jsonl";

/// One cut in the [`Journal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalLine {
    /// The generation id (hex).
    pub id: String,
    /// The live path of its file.
    pub path: String,
    /// End offset of the record that was cut.
    pub end: u64,
    /// Cut bits ([`crate::reassemble::Cuts`]) at `end`.
    pub cuts: u8,
}

/// Record boundaries cut by time or memory since the last checkpoint write, one JSON line each,
/// appended and fdatasync'd before the record is sent (see the module documentation). Emptied after
/// every checkpoint write; a torn last line (crash while appending) is ignored, as its record was
/// not sent.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    appended: usize,
}

impl Journal {
    /// The journal in `dir` (opened on first append).
    pub fn open(dir: &Path) -> Self {
        Journal { path: dir.join(JOURNAL_NAME), file: None, appended: 0 }
    }

    /// The cuts recorded since the last checkpoint write, in order; unreadable lines are skipped.
    pub fn load(&self) -> Result<Vec<JournalLine>, CheckpointError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CheckpointError::Io { path: self.path.clone(), source }),
        };
        let mut out = Vec::new();
        for line in io::BufReader::new(f).split(b'\n') {
            let line = line.map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?;
            if let Ok(l) = serde_json::from_slice::<JournalLine>(&line) {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Appends one cut and waits until it is on disk.
    pub fn append(&mut self, line: &JournalLine) -> Result<(), CheckpointError> {
        let io_err = |source| CheckpointError::Io { path: self.path.clone(), source };
        if self.file.is_none() {
            let created = !self.path.exists();
            let f = OpenOptions::new().create(true).append(true).open(&self.path).map_err(io_err)?;
            if created && let Some(dir) = self.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
            }
            self.file = Some(f);
        }
        // The first line after opening starts on a line of its own (after a torn one, if any).
        let mut bytes = if self.appended == 0 { b"\n".to_vec() } else { Vec::new() };
        serde_json::to_writer(&mut bytes, line).expect("journal line serialises");
        bytes.push(b'\n');
        let f = self.file.as_mut().expect("journal open");
        f.write_all(&bytes).and_then(|()| f.sync_data()).map_err(io_err)?;
        self.appended += 1;
        Ok(())
    }

    /// Lines appended since the last [`Journal::reset`].
    pub fn appended(&self) -> usize {
        self.appended
    }

    /// Empties the journal (after a checkpoint write that carries its cuts).
    pub fn reset(&mut self) -> Result<(), CheckpointError> {
        let io_err = |source| CheckpointError::Io { path: self.path.clone(), source };
        match &self.file {
            Some(f) => f.set_len(0).and_then(|()| f.sync_data()).map_err(io_err)?,
            None => match OpenOptions::new().write(true).open(&self.path) {
                Ok(f) => f.set_len(0).and_then(|()| f.sync_data()).map_err(io_err)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            },
        }
        self.appended = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn out_of_order_acks_advance_only_over_the_prefix() {
        let mut t = Tracker::new(0);
        let a = t.submit(0, 10, 5);
        t.resolve(10);
        let b = t.submit(10, 20, 5);
        t.resolve(20);
        let c = t.submit(20, 30, 5);
        t.resolve(30);
        assert_eq!(t.ack(c), 5);
        assert_eq!(t.committed(), 0);
        assert_eq!(t.skip_list(), vec![(20, 30)]);
        assert_eq!(t.ack(a), 5);
        assert_eq!(t.committed(), 10);
        assert_eq!(t.ack(a), 0, "repeated ack is ignored");
        assert_eq!(t.ack(b), 5);
        assert_eq!(t.committed(), 30);
        assert!(t.idle());
        assert!(t.skip_list().is_empty());
        assert_eq!(t.ack(99), 0);
    }

    #[test]
    fn pending_partial_holds_the_resume_point() {
        // stdout partial at 0 pending while a stderr record [10, 20) is sent and acknowledged.
        let mut t = Tracker::new(0);
        t.resolve(0);
        let e = t.submit(10, 20, 1);
        t.resolve(0);
        t.ack(e);
        assert_eq!(t.committed(), 0);
        assert_eq!(t.skip_list(), vec![(10, 20)]);
        let o = t.submit(0, 30, 1);
        t.resolve(30);
        t.ack(o);
        assert_eq!(t.committed(), 30);
        assert!(t.skip_list().is_empty());
    }

    #[test]
    fn store_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sub")).unwrap();
        assert!(store.load().unwrap().is_empty());
        let entries = vec![Entry {
            id: "0".repeat(32),
            path: "/p/0.log".into(),
            offset: 42,
            acked_max: 50,
            complete: false,
            skip: vec![(44, 50)],
            first_seen: Some("2026-11-27T00:00:00Z".into()),
            cuts: vec![(47, 1)],
        }];
        store.save(entries.clone()).unwrap();
        assert_eq!(store.load().unwrap(), entries);
        assert!(!dir.path().join("sub").join(format!("{FILE_NAME}.tmp")).exists());
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(CheckpointError::Corrupt { .. })));
        store.quarantine().unwrap();
        assert!(store.load().unwrap().is_empty());
    }

    proptest! {
        /// Whatever the ack order, the committed offset is the end of the longest fully acked prefix.
        #[test]
        fn committed_is_contiguous_prefix(order in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(), cut in 0usize..40) {
            let mut t = Tracker::new(0);
            let seqs: Vec<u64> = (0..40u64).map(|i| { let s = t.submit(i * 10, i * 10 + 10, 1); t.resolve(i * 10 + 10); s }).collect();
            let acked: Vec<usize> = order[..cut].to_vec();
            for &i in &acked { t.ack(seqs[i]); }
            let mut prefix = 0;
            while prefix < 40 && acked.contains(&prefix) { prefix += 1; }
            prop_assert_eq!(t.committed(), prefix as u64 * 10);
            prop_assert_eq!(t.inflight(), 40 - cut);
            for (s, _) in t.skip_list() { prop_assert!(s >= t.committed()); }
        }
    }

    #[test]
    fn journal_appends_reloads_skips_a_torn_line_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path());
        assert!(j.load().unwrap().is_empty());
        j.reset().unwrap();
        let line = |end| JournalLine { id: "ab".repeat(16), path: "/p/0.log".into(), end, cuts: 2 };
        j.append(&line(10)).unwrap();
        j.append(&line(20)).unwrap();
        assert_eq!(j.appended(), 2);
        // A crash while appending leaves a torn line.
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_NAME))
            .unwrap()
            .write_all(b"{\"id\":\"ab")
            .unwrap();
        assert_eq!(Journal::open(dir.path()).load().unwrap(), vec![line(10), line(20)]);
        // The next run appends after the torn line without losing its own.
        let mut again = Journal::open(dir.path());
        again.append(&line(25)).unwrap();
        assert_eq!(Journal::open(dir.path()).load().unwrap(), vec![line(10), line(20), line(25)]);
        j.reset().unwrap();
        assert_eq!(j.appended(), 0);
        assert!(Journal::open(dir.path()).load().unwrap().is_empty());
        j.append(&line(30)).unwrap();
        assert_eq!(Journal::open(dir.path()).load().unwrap(), vec![line(30)]);
    }
}
