//! Discovery: which log files exist, grouped by live path with their rotated generations.
//!
//! The kubelet layout is `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`; rotation renames
//! `N.log` to `N.log.<YYYYMMDD-hhmmss>` and later compresses it to `N.log.<YYYYMMDD-hhmmss>.gz`
//! (through a `.tmp` file, which is ignored). A full [`Discovery::scan`] runs every
//! `tail.rescan_interval`; inotify events (see [`crate::pipeline`]) make new data visible sooner.
//! `*.log` symlinks in `paths.symlink_dirs` (`/var/log/containers`) are resolved; a target already
//! found under the root is not added twice.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::PathsConfig;

/// Kubernetes fields derived from a kubelet log path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPath {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// Container name.
    pub container: String,
    /// Restart count (`N` of `N.log`).
    pub restart: u32,
}

impl PodPath {
    /// Parses `…/<ns>_<pod>_<uid>/<container>/<N>.log` (rotation suffixes are allowed).
    pub fn parse(path: &Path) -> Option<PodPath> {
        let name = path.file_name()?.to_str()?;
        let (base, _) = classify(name)?;
        let restart: u32 = base.strip_suffix(".log")?.parse().ok()?;
        let container = path.parent()?.file_name()?.to_str()?;
        let pod_dir = path.parent()?.parent()?.file_name()?.to_str()?;
        // Namespaces and pod names cannot contain `_`; uids neither.
        let mut parts = pod_dir.splitn(3, '_');
        let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if ns.is_empty() || pod.is_empty() || uid.is_empty() || uid.contains('_') || container.is_empty() {
            return None;
        }
        Some(PodPath {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            uid: uid.to_owned(),
            container: container.to_owned(),
            restart,
        })
    }
}

/// Kind of one generation of a log file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GenKind {
    /// Renamed by rotation: `N.log.<YYYYMMDD-hhmmss>`.
    Rotated(String),
    /// Rotated and compressed: `N.log.<YYYYMMDD-hhmmss>.gz`.
    Gz(String),
    /// The file written now: `N.log`.
    Live,
}

impl GenKind {
    /// Sort key: rotated generations by timestamp (a plain file before its `.gz`), the live one last.
    pub fn order(&self) -> (u8, &str, u8) {
        match self {
            GenKind::Rotated(ts) => (0, ts, 0),
            GenKind::Gz(ts) => (0, ts, 1),
            GenKind::Live => (1, "", 0),
        }
    }
}

fn is_rotation_ts(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15 && b[8] == b'-' && b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// Splits a file name into the live name (`N.log`) and the generation kind; `None` for other files.
pub fn classify(name: &str) -> Option<(&str, GenKind)> {
    if name.ends_with(".log") {
        return Some((name, GenKind::Live));
    }
    let idx = name.find(".log.")?;
    let (base, rest) = name.split_at(idx + 4);
    let rest = &rest[1..];
    if let Some(ts) = rest.strip_suffix(".gz") {
        return is_rotation_ts(ts).then(|| (base, GenKind::Gz(ts.to_owned())));
    }
    is_rotation_ts(rest).then(|| (base, GenKind::Rotated(rest.to_owned())))
}

/// The live path of any generation's path (`…/0.log.20260101-000000.gz` → `…/0.log`).
pub fn live_path_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (base, _) = classify(name)?;
    Some(path.with_file_name(base))
}

/// One file of a generation as seen by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenFile {
    /// Where it is now.
    pub path: PathBuf,
    /// Its kind.
    pub kind: GenKind,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes (compressed size for `.gz`).
    pub size: u64,
    /// Modification time (seconds), used to cache `.gz` fingerprints.
    pub mtime: i64,
}

/// A live path and the generations found for it, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalFile {
    /// The live path (`…/N.log`), canonical.
    pub live: PathBuf,
    /// Generations, oldest first; the live file, when it exists, is last.
    pub generations: Vec<GenFile>,
}

/// Why a path with a log file's name is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skipped {
    /// A FIFO, a socket, a directory or a device: never opened (a FIFO would block the reader).
    NotRegular,
    /// A symlink whose target is missing or loops.
    BrokenSymlink,
}

impl Skipped {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Skipped::NotRegular => "not_regular",
            Skipped::BrokenSymlink => "broken_symlink",
        }
    }
}

/// One scan's result.
#[derive(Debug, Default)]
pub struct Listing {
    /// The live paths found, with their generations.
    pub files: Vec<LogicalFile>,
    /// Whether every listing succeeded (see [`Discovery::scan_checked`]).
    pub complete: bool,
    /// Paths named like log files that are not read, and why.
    pub skipped: Vec<(PathBuf, Skipped)>,
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// An include or exclude glob is invalid.
    #[error("invalid glob: {0}")]
    Glob(#[from] globset::Error),
}

/// The scanner: root, symlink directories and globs.
#[derive(Debug)]
pub struct Discovery {
    root: PathBuf,
    symlink_dirs: Vec<PathBuf>,
    include: GlobSet,
    exclude: GlobSet,
}

fn globset(list: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for g in list {
        b.add(Glob::new(g)?);
    }
    b.build()
}

const MAX_DEPTH: usize = 6;

impl Discovery {
    /// A scanner for `paths.*`.
    pub fn new(paths: &PathsConfig) -> Result<Self, DiscoverError> {
        Ok(Discovery {
            root: PathBuf::from(&paths.root),
            symlink_dirs: paths.symlink_dirs.iter().map(PathBuf::from).collect(),
            include: globset(&paths.include)?,
            exclude: globset(&paths.exclude)?,
        })
    }

    /// The configured root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a live path passes the include/exclude globs.
    pub fn wanted(&self, live: &Path) -> bool {
        self.include.is_match(live) && !self.exclude.is_match(live)
    }

    /// Walks the root and the symlink directories. Unreadable entries are skipped (a pod directory can
    /// vanish during the walk).
    pub fn scan(&self) -> Vec<LogicalFile> {
        self.scan_checked().0
    }

    /// [`Discovery::scan`], and whether every listing succeeded: a directory that could not be
    /// listed (the root missing or unreadable, a permission or I/O error) is no proof that the
    /// files in it are gone. A directory its parent listed that is gone when read is proof.
    pub fn scan_checked(&self) -> (Vec<LogicalFile>, bool) {
        let l = self.list();
        (l.files, l.complete)
    }

    /// [`Discovery::scan_checked`], and the paths named like log files that are not read.
    pub fn list(&self) -> Listing {
        let mut groups: BTreeMap<PathBuf, Vec<GenFile>> = BTreeMap::new();
        let mut skipped = Vec::new();
        let root = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut complete = fs::read_dir(&root).is_ok();
        complete &= walk(&root, 0, &mut groups, &mut skipped);
        // Live files that are symlinks (cri-dockerd: into /var/lib/docker/containers): their targets
        // are read under the pod path, never a second time through `symlink_dirs`.
        let linked: HashSet<PathBuf> = groups
            .keys()
            .filter(|live| fs::symlink_metadata(live).is_ok_and(|m| m.file_type().is_symlink()))
            .filter_map(|live| fs::canonicalize(live).ok())
            .collect();
        let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
        for dir in &self.symlink_dirs {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) => {
                    complete &= e.kind() == io::ErrorKind::NotFound;
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "log") {
                    continue;
                }
                let Ok(target) = fs::canonicalize(&path) else { continue };
                if groups.contains_key(&target) || target.starts_with(&root) || linked.contains(&target) {
                    continue; // read under the root already: no double read
                }
                if let Some(parent) = target.parent()
                    && seen_dirs.insert(parent.to_owned())
                {
                    scan_dir(parent, &mut groups, &mut skipped);
                }
                groups.entry(target).or_default();
            }
        }
        let files = groups
            .into_iter()
            .filter(|(live, gens)| !gens.is_empty() && self.wanted(live))
            .map(|(live, mut generations)| {
                generations.sort_by(|a, b| a.kind.order().cmp(&b.kind.order()));
                LogicalFile { live, generations }
            })
            .collect();
        Listing { files, complete, skipped }
    }
}

/// Returns `false` when a directory could not be listed (other than gone since its parent listed it).
fn walk(
    dir: &Path,
    depth: usize,
    groups: &mut BTreeMap<PathBuf, Vec<GenFile>>,
    skipped: &mut Vec<(PathBuf, Skipped)>,
) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return e.kind() == io::ErrorKind::NotFound,
    };
    let mut has_files = false;
    let mut complete = true;
    for entry in entries {
        let Ok(entry) = entry else {
            complete = false;
            continue;
        };
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            // A directory named like a log file is counted as skipped by the directory's scan.
            has_files |= entry.file_name().to_str().and_then(classify).is_some();
            complete &= walk(&entry.path(), depth + 1, groups, skipped);
        } else {
            has_files = true; // regular files, symlinks, and what must be counted as skipped
        }
    }
    if has_files {
        scan_dir(dir, groups, skipped);
    }
    complete
}

/// Adds the generations of every log file in one directory; paths named like log files that are
/// not regular files (or symlinks to one) go to `skipped`.
pub fn scan_dir(dir: &Path, groups: &mut BTreeMap<PathBuf, Vec<GenFile>>, skipped: &mut Vec<(PathBuf, Skipped)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((base, kind)) = classify(name) else { continue };
        let Ok(mut md) = fs::symlink_metadata(entry.path()) else { continue };
        if md.file_type().is_symlink() && kind == GenKind::Live {
            // cri-dockerd: `N.log` links to `<id>-json.log`. Followed when the target is a regular
            // file (a loop fails with ELOOP); its identity is the target's, its name the pod path;
            // docker's own rotations of the target (`<id>-json.log.N`) are its older generations.
            let Ok(target) = fs::metadata(entry.path()) else {
                skipped.push((entry.path(), Skipped::BrokenSymlink));
                continue;
            };
            md = target;
            if md.is_file()
                && let Ok(real) = fs::canonicalize(entry.path())
            {
                groups.entry(dir.join(base)).or_default().extend(docker_rotated(&real));
            }
        }
        if !md.is_file() {
            skipped.push((entry.path(), Skipped::NotRegular));
            continue;
        }
        groups.entry(dir.join(base)).or_default().push(GenFile {
            path: entry.path(),
            kind,
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: md.mtime(),
        });
    }
}

/// Docker json-file rotations of `target` (`<id>-json.log`): `<id>-json.log.N`, oldest (highest `N`)
/// first by their [`GenKind::Rotated`] key.
fn docker_rotated(target: &Path) -> Vec<GenFile> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if !name.ends_with("-json.log") {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(md) = fs::symlink_metadata(entry.path()) else { continue };
        if md.is_file() {
            out.push(GenFile {
                path: entry.path(),
                kind: GenKind::Rotated(format!("docker-{:010}", u32::MAX - n)),
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime: md.mtime(),
            });
        }
    }
    out
}

/// Generations of one live path, oldest first (a fresh listing of its directory).
pub fn generations_of(live: &Path) -> io::Result<Vec<GenFile>> {
    let dir = live.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let mut groups = BTreeMap::new();
    scan_dir(dir, &mut groups, &mut Vec::new());
    let mut gens = groups.remove(live).unwrap_or_default();
    gens.sort_by(|a, b| a.kind.order().cmp(&b.kind.order()));
    Ok(gens)
}

/// Whether a rotated generation of `live` is being compressed right now (a recent `N.log.<ts>*.tmp`).
/// A stale temporary file (older than a minute) does not count.
pub fn compression_in_progress(live: &Path) -> bool {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name().and_then(|n| n.to_str())) else { return false };
    let Ok(entries) = fs::read_dir(dir) else { return false };
    let prefix = format!("{name}.");
    entries.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.starts_with(&prefix)
            && n.ends_with(".tmp")
            && e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() < 60)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_generations() {
        assert_eq!(classify("0.log"), Some(("0.log", GenKind::Live)));
        assert_eq!(classify("0.log.20260101-120000"), Some(("0.log", GenKind::Rotated("20260101-120000".into()))));
        assert_eq!(classify("0.log.20260101-120000.gz"), Some(("0.log", GenKind::Gz("20260101-120000".into()))));
        assert_eq!(classify("0.log.20260101-120000.tmp"), None);
        assert_eq!(classify("0.log.1"), None);
        assert_eq!(classify("notes.txt"), None);
    }

    #[test]
    fn pod_paths() {
        let p = PodPath::parse(Path::new("/var/log/pods/shop_web-0_0d6c-11/nginx/3.log.20260101-120000.gz")).unwrap();
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.pod, "web-0");
        assert_eq!(p.uid, "0d6c-11");
        assert_eq!(p.container, "nginx");
        assert_eq!(p.restart, 3);
        assert!(PodPath::parse(Path::new("/tmp/x/app.log")).is_none());
        assert_eq!(live_path_of(Path::new("/a/b/0.log.20260101-120000.gz")).unwrap(), PathBuf::from("/a/b/0.log"));
    }

    #[test]
    fn scan_groups_orders_and_dedupes_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods");
        let dir = root.join("ns_p_u1/app");
        fs::create_dir_all(&dir).unwrap();
        for name in ["0.log", "0.log.20260101-000002", "0.log.20260101-000001.gz", "0.log.20260101-000003.gz.tmp"] {
            fs::write(dir.join(name), "x\n").unwrap();
        }
        let other = tmp.path().join("elsewhere/ns_q_u2/c");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("1.log"), "y\n").unwrap();
        let links = tmp.path().join("containers");
        fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(dir.join("0.log"), links.join("p_ns_app-abc.log")).unwrap();
        std::os::unix::fs::symlink(other.join("1.log"), links.join("q_ns_c-def.log")).unwrap();
        let cfg = PathsConfig {
            root: root.display().to_string(),
            symlink_dirs: vec![links.display().to_string()],
            ..PathsConfig::default()
        };
        let files = Discovery::new(&cfg).unwrap().scan();
        assert_eq!(files.len(), 2, "{files:#?}");
        let first = files.iter().find(|f| f.live.ends_with("app/0.log")).unwrap();
        let kinds: Vec<_> = first.generations.iter().map(|g| g.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![GenKind::Gz("20260101-000001".into()), GenKind::Rotated("20260101-000002".into()), GenKind::Live]
        );
        assert!(files.iter().any(|f| f.live.ends_with("c/1.log")));

        let cfg = PathsConfig { exclude: vec!["**/ns_q_*/**".into()], ..cfg };
        assert_eq!(Discovery::new(&cfg).unwrap().scan().len(), 1);
    }
}
