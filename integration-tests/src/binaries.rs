//! The workspace's binaries as the black-box tests run them: `target/<profile>/<name>`, next to the
//! test executable's `deps/`, refused when missing or older than their sources.
//!
//! `cargo test -p sluice-integration-tests` does not rebuild another package's binary, so without
//! the check a test could silently run an old build against new sources and pass or fail for the
//! wrong reason. `SLUICE_<NAME>_BIN` (`SLUICE_INDEXER_BIN`, `SLUICE_SHIPPER_BIN`, `SLUICE_BIN` for
//! the CLI) points a test at another build on purpose.

use std::path::{Path, PathBuf};

/// The crate directories whose sources make binary `name` (its own crate, `common`, and the lock).
fn sources(name: &str) -> Vec<&'static str> {
    let own = match name {
        "sluice-indexer" => "indexer",
        "sluice-shipper" => "shipper",
        "sluice" => "cli",
        other => panic!("{other} is not a binary of the workspace"),
    };
    vec![own, "common"]
}

/// The environment variable that overrides binary `name`'s path.
pub fn override_var(name: &str) -> String {
    let stem = name.strip_prefix("sluice").unwrap_or(name).trim_start_matches('-');
    if stem.is_empty() { "SLUICE_BIN".to_owned() } else { format!("SLUICE_{}_BIN", stem.to_uppercase()) }
}

/// Path of workspace binary `name` (`sluice-indexer`, `sluice-shipper`, `sluice`): its override
/// variable if set, else `target/<profile>/<name>`, which must exist and be newer than every file
/// of its sources (panics saying how to rebuild otherwise).
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(override_var(name)) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (`./dev test` does)",
        bin.display()
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut paths = vec![workspace.join("Cargo.lock")];
    for dir in sources(name) {
        paths.push(workspace.join(dir).join("src"));
        paths.push(workspace.join(dir).join("Cargo.toml"));
    }
    if let Some(newer) = newer_source(&bin, &paths) {
        panic!(
            "{} is older than {}: rebuild it (`cargo build --workspace --bins`), or set {} to run another build on \
             purpose",
            bin.display(),
            newer.display(),
            override_var(name)
        );
    }
    bin
}

/// A file under `sources` (files or directories, recursively) modified after `binary`, if any.
pub fn newer_source(binary: &Path, sources: &[PathBuf]) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).expect("binary mtime");
    let mut stack: Vec<PathBuf> = sources.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_binary_older_than_its_sources_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, src) = (dir.path().join("sluice-indexer"), dir.path().join("src"));
        std::fs::create_dir_all(src.join("bulk")).unwrap();
        std::fs::write(src.join("bulk/deliver.rs"), "").unwrap();
        std::fs::write(&bin, "").unwrap();
        let at = |path: &Path, secs: u64| {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
        };
        at(&src.join("bulk/deliver.rs"), 1_000);
        at(&bin, 2_000);
        assert_eq!(newer_source(&bin, std::slice::from_ref(&src)), None, "fresh binary");
        at(&src.join("bulk/deliver.rs"), 3_000);
        assert_eq!(newer_source(&bin, std::slice::from_ref(&src)), Some(src.join("bulk/deliver.rs")), "stale binary");
    }

    #[test]
    fn override_variables_are_named_after_the_binary() {
        assert_eq!(override_var("sluice-indexer"), "SLUICE_INDEXER_BIN");
        assert_eq!(override_var("sluice-shipper"), "SLUICE_SHIPPER_BIN");
        assert_eq!(override_var("sluice"), "SLUICE_BIN");
    }
}
