//! A kubelet-like log writer for tests and load generation: CRI lines with `P`/`F` partials (or docker
//! json-file lines, whose partial fragments lack the trailing `\n` in `log`), rotation
//! by size to `N.log.<YYYYMMDD-hhmmss>`, compression of older rotated files to `.gz` (through a
//! `.tmp` file, as the kubelet does), and at most `max_files` files kept.
//!
//! Line content is `<tag> <seq>` padded to the requested length, so a test can check that every line
//! arrived once and in order.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sluice_common::schema::Stream;

use crate::config::Format;
use crate::parse::timestamp::{Instant, format};

/// How the writer behaves.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Rotate when the live file reaches this size.
    pub max_size: u64,
    /// Files kept (live + rotated + compressed), like `containerLogMaxFiles`.
    pub max_files: usize,
    /// Content bytes per CRI fragment; longer lines are written as `P` fragments and a final `F`.
    pub fragment: usize,
    /// Compress rotated files except the newest.
    pub compress: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { max_size: 10 << 20, max_files: 5, fragment: 16 * 1024, compress: true }
    }
}

/// Writes one container's log like containerd + the kubelet.
#[derive(Debug)]
pub struct KubeletWriter {
    dir: PathBuf,
    name: String,
    opts: WriterOptions,
    docker: bool,
    file: File,
    size: u64,
    clock_ns: i64,
    rotation_clock: i64,
    /// Lines written so far.
    pub lines: u64,
    /// Rotations done so far.
    pub rotations: u64,
}

impl KubeletWriter {
    /// A writer for `<root>/<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub fn new(
        root: &Path,
        (ns, pod, uid, container): (&str, &str, &str, &str),
        restart: u32,
        opts: WriterOptions,
    ) -> io::Result<Self> {
        let dir = root.join(format!("{ns}_{pod}_{uid}")).join(container);
        fs::create_dir_all(&dir)?;
        let name = format!("{restart}.log");
        let file = OpenOptions::new().create(true).append(true).open(dir.join(&name))?;
        let size = file.metadata()?.len();
        Ok(KubeletWriter {
            dir,
            name,
            opts,
            docker: false,
            file,
            size,
            clock_ns: 1_798_761_600_000_000_000, // 2027-01-01T00:00:00Z
            rotation_clock: 1_798_761_600,
            lines: 0,
            rotations: 0,
        })
    }

    /// Writes `format` lines from now on: [`Format::Docker`] writes docker json-file lines (partial
    /// fragments without the trailing `\n` in `log`), anything else CRI lines.
    pub fn with_format(mut self, format: Format) -> Self {
        self.docker = format == Format::Docker;
        self
    }

    /// The live path.
    pub fn live_path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The directory of the container.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one logical line (split into fragments when long), rotating first if the file is full.
    pub fn write_line(&mut self, stream: Stream, content: &str) -> io::Result<()> {
        if self.size >= self.opts.max_size {
            self.rotate()?;
        }
        self.clock_ns += 1_000;
        let mut ts = String::with_capacity(32);
        format(
            Instant {
                secs: self.clock_ns.div_euclid(1_000_000_000),
                nanos: self.clock_ns.rem_euclid(1_000_000_000) as u32,
            },
            &mut ts,
        );
        let bytes = content.as_bytes();
        let mut chunks: Vec<&[u8]> = bytes.chunks(self.opts.fragment.max(1)).collect();
        if chunks.is_empty() {
            chunks.push(b"");
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut line = Vec::with_capacity(chunk.len() + 64);
            if self.docker {
                let mut log = String::from_utf8_lossy(chunk).into_owned();
                if i == last {
                    log.push('\n');
                }
                let entry = serde_json::json!({"log": log, "stream": stream.as_str(), "time": ts});
                serde_json::to_writer(&mut line, &entry).map_err(io::Error::other)?;
            } else {
                let tag = if i == last { "F" } else { "P" };
                line.extend_from_slice(format!("{ts} {} {tag} ", stream.as_str()).as_bytes());
                line.extend_from_slice(chunk);
            }
            line.push(b'\n');
            // One write per physical line, as the runtime does.
            self.file.write_all(&line)?;
            self.size += line.len() as u64;
        }
        self.lines += 1;
        Ok(())
    }

    /// The content of line `seq` for `tag`, padded to `len` bytes.
    pub fn content(tag: &str, seq: u64, len: usize) -> String {
        let mut s = format!("{tag} {seq:08} ");
        while s.len() < len {
            s.push((b'a' + (s.len() % 26) as u8) as char);
        }
        s
    }

    /// Rotates: `N.log` → `N.log.<ts>`, new `N.log`, compress older rotated files, keep `max_files`.
    pub fn rotate(&mut self) -> io::Result<()> {
        self.rotation_clock += 1;
        let stamp = rotation_stamp(self.rotation_clock);
        let live = self.live_path();
        fs::rename(&live, self.dir.join(format!("{}.{stamp}", self.name)))?;
        self.file = OpenOptions::new().create(true).append(true).open(&live)?;
        self.size = 0;
        self.rotations += 1;
        if self.opts.compress {
            self.compress_older(&stamp)?;
        }
        self.remove_excess()
    }

    /// copytruncate as logrotate does it: copy to `N.log.<n>` (not a kubelet name) and truncate.
    pub fn copytruncate(&mut self) -> io::Result<()> {
        let live = self.live_path();
        fs::copy(&live, self.dir.join(format!("{}.1", self.name)))?;
        self.file.set_len(0)?;
        self.size = 0;
        Ok(())
    }

    fn rotated(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let prefix = format!("{}.", self.name);
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&prefix)
                && rest.len() >= 15
                && !rest.ends_with(".tmp")
                && rest != "1"
            {
                out.push((rest[..15].to_owned(), e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn compress_older(&self, newest: &str) -> io::Result<()> {
        for (stamp, path) in self.rotated()? {
            if stamp == newest || path.extension().is_some_and(|e| e == "gz") {
                continue;
            }
            let tmp = path.with_extension(format!("{}.gz.tmp", path.extension().unwrap_or_default().to_string_lossy()));
            let data = fs::read(&path)?;
            let mut enc = GzEncoder::new(File::create(&tmp)?, Compression::fast());
            enc.write_all(&data)?;
            enc.finish()?.sync_all()?;
            fs::rename(&tmp, path.with_file_name(format!("{}.{stamp}.gz", self.name)))?;
            fs::remove_file(&path)?;
        }
        Ok(())
    }

    fn remove_excess(&self) -> io::Result<()> {
        let rotated = self.rotated()?;
        let excess = (rotated.len() + 1).saturating_sub(self.opts.max_files);
        for (_, path) in rotated.into_iter().take(excess) {
            fs::remove_file(path)?;
        }
        Ok(())
    }
}

fn rotation_stamp(secs: i64) -> String {
    let mut s = String::new();
    format(Instant { secs, nanos: 0 }, &mut s);
    // 2027-01-01T00:00:01.000000000Z → 20270101-000001
    let b = s.as_bytes();
    let pick = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).unwrap_or_default().to_owned();
    format!("{}{}{}-{}{}{}", pick(0..4), pick(5..7), pick(8..10), pick(11..13), pick(14..16), pick(17..19))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{GenKind, generations_of};

    #[test]
    fn writer_rotates_compresses_and_keeps_max_files() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = WriterOptions { max_size: 2000, max_files: 4, fragment: 50, compress: true };
        let mut w = KubeletWriter::new(tmp.path(), ("ns", "p", "u", "c"), 0, opts).unwrap();
        for i in 0..400 {
            w.write_line(Stream::Stdout, &KubeletWriter::content("x", i, 80)).unwrap();
        }
        let gens = generations_of(&w.live_path()).unwrap();
        assert_eq!(gens.len(), 4, "{gens:?}");
        assert!(matches!(gens[0].kind, GenKind::Gz(_)));
        assert!(matches!(gens[2].kind, GenKind::Rotated(_)));
        assert_eq!(gens[3].kind, GenKind::Live);
        let live = fs::read_to_string(w.live_path()).unwrap();
        assert!(live.contains(" stdout P ") && live.contains(" stdout F "));
        assert_eq!(rotation_stamp(1_798_761_601), "20270101-000001");
    }
}
