//! Reading one generation: plain files through positional reads (`pread`, no per-file buffer), gzipped
//! generations through a streaming decoder, and generation identity with a per-inode cache.
//!
//! Positional reads mean a file can be closed and reopened at any offset, and a line that is not yet
//! complete is simply read again on the next poll, so one read buffer serves every file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::read::MultiGzDecoder;
use xxhash_rust::xxh3::xxh3_64;

use crate::discover::{GenFile, GenKind};
use crate::record::{FINGERPRINT_MAX, GenerationId, fingerprint};

/// `fstat` facts about an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size (compressed size for `.gz`).
    pub size: u64,
    /// Links; 0 once the file was deleted.
    pub nlink: u64,
}

/// A streaming gzip reader with a small window so callers can re-read from any offset not yet passed.
pub struct GzReader {
    /// The counter of open gzip readers this one is counted in (see [`Handle::counted`]).
    slot: Option<Arc<AtomicUsize>>,
    file: File,
    dec: MultiGzDecoder<io::BufReader<File>>,
    win: Vec<u8>,
    win_start: u64,
    eof: bool,
}

impl Drop for GzReader {
    fn drop(&mut self) {
        if let Some(s) = &self.slot {
            s.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for GzReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzReader").field("win_start", &self.win_start).field("eof", &self.eof).finish()
    }
}

impl GzReader {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        if off < self.win_start {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "cannot seek backwards in a gzip stream"));
        }
        // Drop what lies before `off`, decoding and discarding when `off` is beyond the window.
        let skip = off - self.win_start;
        if skip >= self.win.len() as u64 {
            let mut rest = skip - self.win.len() as u64;
            self.win.clear();
            self.win_start = off - rest;
            let mut scratch = [0u8; 8192];
            while rest > 0 && !self.eof {
                let want = rest.min(scratch.len() as u64) as usize;
                let n = self.dec.read(&mut scratch[..want])?;
                if n == 0 {
                    self.eof = true;
                }
                rest -= n as u64;
                self.win_start += n as u64;
            }
            if rest > 0 {
                return Ok(0);
            }
        } else {
            self.win.drain(..skip as usize);
            self.win_start = off;
        }
        while self.win.len() < buf.len() && !self.eof {
            let have = self.win.len();
            self.win.resize(buf.len(), 0);
            let n = self.dec.read(&mut self.win[have..])?;
            self.win.truncate(have + n);
            if n == 0 {
                self.eof = true;
            }
        }
        let n = self.win.len().min(buf.len());
        buf[..n].copy_from_slice(&self.win[..n]);
        if self.eof && n == self.win.len() {
            self.win.shrink_to_fit();
        }
        Ok(n)
    }
}

/// An open generation.
#[derive(Debug)]
pub enum Handle {
    /// A plain file (live or rotated).
    Plain(File),
    /// A gzipped rotated generation.
    Gz(Box<GzReader>),
}

/// Opens `path` for reading if it is a regular file; anything else (a directory, a FIFO, a socket, a
/// device put where a log file was) is refused with `InvalidInput`. The open is non-blocking:
/// opening a FIFO blocks until some process opens it for writing, which would stop the read thread.
/// (`O_NONBLOCK` has no effect on the reads of a regular file.)
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

impl Handle {
    /// Opens the file at `path` as a generation of `kind` (see [`open_regular`]).
    pub fn open(path: &Path, kind: &GenKind) -> io::Result<Handle> {
        let file = open_regular(path)?;
        Ok(match kind {
            GenKind::Gz(_) => {
                let dec = MultiGzDecoder::new(io::BufReader::with_capacity(16 * 1024, file.try_clone()?));
                Handle::Gz(Box::new(GzReader { slot: None, file, dec, win: Vec::new(), win_start: 0, eof: false }))
            }
            _ => Handle::Plain(file),
        })
    }

    /// Opens the generation `file` was listed as, failing with `NotFound` when its path now names
    /// another inode (renamed by rotation since the listing).
    pub fn open_exact(file: &GenFile) -> io::Result<Handle> {
        let h = Handle::open(&file.path, &file.kind)?;
        let st = h.stat()?;
        if (st.dev, st.ino) != (file.dev, file.ino) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "renamed since listed"));
        }
        Ok(h)
    }

    /// Reads bytes of the (uncompressed) content at `off`. Gzip handles only read forward.
    pub fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        match self {
            Handle::Plain(f) => loop {
                match f.read_at(buf, off) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => return other,
                }
            },
            Handle::Gz(g) => g.read_at(buf, off),
        }
    }

    /// `fstat` of the open file.
    pub fn stat(&self) -> io::Result<Stat> {
        let md = match self {
            Handle::Plain(f) => f.metadata()?,
            Handle::Gz(g) => g.file.metadata()?,
        };
        Ok(Stat { dev: md.dev(), ino: md.ino(), size: md.size(), nlink: md.nlink() })
    }

    /// Size of the (uncompressed) content: the file size, or for gzip the size in its trailer (ISIZE,
    /// modulo 4 GiB, of the last member).
    pub fn content_size(&self) -> io::Result<u64> {
        match self {
            Handle::Plain(f) => Ok(f.metadata()?.len()),
            Handle::Gz(g) => gz_content_size(&g.file),
        }
    }

    /// Counts a gzip handle in `open` for as long as it lives (a plain handle is not counted).
    pub fn counted(mut self, open: &Arc<AtomicUsize>) -> Self {
        if let Handle::Gz(g) = &mut self
            && g.slot.is_none()
        {
            open.fetch_add(1, Ordering::SeqCst);
            g.slot = Some(open.clone());
        }
        self
    }

    /// Whether this is a gzip stream.
    pub fn is_gz(&self) -> bool {
        matches!(self, Handle::Gz(_))
    }
}

/// The uncompressed size a gzip file's trailer states (ISIZE of the last member, modulo 4 GiB).
pub fn gz_content_size(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut b = [0u8; 4];
    if len < 18 {
        return Ok(0);
    }
    file.read_exact_at(&mut b, len - 4)?;
    Ok(u64::from(u32::from_le_bytes(b)))
}

/// The uncompressed size of a generation file (see [`gz_content_size`]).
pub fn content_size(file: &GenFile) -> io::Result<u64> {
    match file.kind {
        GenKind::Gz(_) => gz_content_size(&open_regular(&file.path)?),
        _ => Ok(file.size),
    }
}

/// Reads up to [`FINGERPRINT_MAX`] bytes from the start of a generation.
pub fn read_head(path: &Path, kind: &GenKind) -> io::Result<Vec<u8>> {
    read_head_of(Handle::open(path, kind)?)
}

fn read_head_of(mut h: Handle) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; FINGERPRINT_MAX];
    let mut len = 0;
    while len < buf.len() {
        let n = h.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    Ok(buf)
}

/// The fingerprint of a generation whose content is final (rotated or gzipped): the usual
/// fingerprint, or all of it when it is shorter than [`FINGERPRINT_MAX`] and has no newline.
pub fn final_fingerprint(head: &[u8]) -> Option<&[u8]> {
    fingerprint(head).or((!head.is_empty()).then_some(head))
}

#[derive(Debug, Clone)]
struct Cached {
    id: GenerationId,
    fp_len: usize,
    fp_hash: u64,
    gz_key: Option<(u64, i64)>,
}

/// Generation identities of files, cached per (device, inode) and re-verified against the content
/// (so inode reuse is noticed): plain files by hashing their fingerprint bytes again, gzip files by
/// size and modification time.
#[derive(Debug, Default)]
pub struct IdentityCache {
    map: HashMap<(u64, u64), Cached>,
}

impl IdentityCache {
    /// The identity of `file` for `source`, or `None` while it has none (too little content).
    pub fn identify(&mut self, source: &str, file: &GenFile) -> io::Result<Option<GenerationId>> {
        let key = (file.dev, file.ino);
        let is_gz = matches!(file.kind, GenKind::Gz(_));
        if let Some(c) = self.map.get(&key) {
            if is_gz {
                if c.gz_key == Some((file.size, file.mtime)) {
                    return Ok(Some(c.id));
                }
            } else if file.size >= c.fp_len as u64 {
                let mut buf = vec![0u8; c.fp_len];
                let f = open_regular(&file.path)?;
                let md = f.metadata()?;
                if (md.dev(), md.ino()) != key {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "renamed since listed"));
                }
                let n = f.read_at(&mut buf, 0)?;
                if n == c.fp_len && xxh3_64(&buf) == c.fp_hash {
                    return Ok(Some(c.id));
                }
            }
        }
        let head = read_head_of(Handle::open_exact(file)?)?;
        let fp = match file.kind {
            GenKind::Live => fingerprint(&head),
            _ => final_fingerprint(&head),
        };
        let Some(fp) = fp else {
            self.map.remove(&key);
            return Ok(None);
        };
        let id = GenerationId::derive(source, fp);
        let gz_key = is_gz.then_some((file.size, file.mtime));
        self.map.insert(key, Cached { id, fp_len: fp.len(), fp_hash: xxh3_64(fp), gz_key });
        Ok(Some(id))
    }

    /// Forgets inodes not in `live` (after a scan).
    pub fn retain(&mut self, live: &std::collections::HashSet<(u64, u64)>) {
        self.map.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn genfile(path: &Path, kind: GenKind) -> GenFile {
        let md = std::fs::metadata(path).unwrap();
        GenFile { path: path.to_owned(), kind, dev: md.dev(), ino: md.ino(), size: md.size(), mtime: md.mtime() }
    }

    #[test]
    fn gzip_and_plain_generations_have_the_same_identity_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> =
            (0..2000).flat_map(|i| format!("2026-01-01T00:00:00Z stdout F line {i}\n").into_bytes()).collect();
        let plain = dir.path().join("0.log.20260101-000000");
        std::fs::write(&plain, &content).unwrap();
        let gz = dir.path().join("0.log.20260101-000000.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(&content).unwrap();
        enc.finish().unwrap();

        let mut cache = IdentityCache::default();
        let a = cache.identify("k8s/u/c/0", &genfile(&plain, GenKind::Rotated("20260101-000000".into()))).unwrap();
        let b = cache.identify("k8s/u/c/0", &genfile(&gz, GenKind::Gz("20260101-000000".into()))).unwrap();
        assert!(a.is_some());
        assert_eq!(a, b);

        let mut h = Handle::open(&gz, &GenKind::Gz("x".into())).unwrap();
        let mut buf = vec![0u8; 1000];
        let mut out = Vec::new();
        let mut off = 0u64;
        loop {
            let n = h.read_at(&mut buf, off).unwrap();
            if n == 0 {
                break;
            }
            // Consume only up to the last newline, like the tailer does.
            let used = buf[..n].iter().rposition(|c| *c == b'\n').map_or(n, |i| i + 1);
            out.extend_from_slice(&buf[..used]);
            off += used as u64;
        }
        assert_eq!(out, content);
        // Starting in the middle skips forward.
        let mut h = Handle::open(&gz, &GenKind::Gz("x".into())).unwrap();
        let n = h.read_at(&mut buf, 50_000).unwrap();
        assert_eq!(&buf[..n], &content[50_000..50_000 + n]);
        assert!(h.read_at(&mut buf, 10).is_err());
    }

    /// Hostile input (issue #14): a FIFO put where a log file was used to block the read thread in
    /// `open` until some process wrote to it; a directory opened fine and failed only when read.
    #[test]
    fn a_fifo_a_socket_or_a_directory_at_a_log_path_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("0.log");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let socket = dir.path().join("1.log");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let sub = dir.path().join("2.log");
        std::fs::create_dir(&sub).unwrap();
        for path in [fifo, socket, sub] {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let _ = tx.send(Handle::open(&p, &GenKind::Live).map(|_| ()).map_err(|e| e.kind()));
            });
            let result = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("opening {} blocked", path.display()));
            assert!(result.is_err(), "{} opened as a log file", path.display());
        }
    }

    #[test]
    fn inode_reuse_is_detected_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, b"first line\n").unwrap();
        let mut cache = IdentityCache::default();
        let g = genfile(&p, GenKind::Live);
        let a = cache.identify("s", &g).unwrap().unwrap();
        std::fs::write(&p, b"other line\n").unwrap();
        let b = cache.identify("s", &genfile(&p, GenKind::Live)).unwrap().unwrap();
        assert_ne!(a, b);
        std::fs::write(&p, b"tiny").unwrap();
        assert_eq!(cache.identify("s", &genfile(&p, GenKind::Live)).unwrap(), None);
        assert!(final_fingerprint(b"tiny").is_some());
    }
}
