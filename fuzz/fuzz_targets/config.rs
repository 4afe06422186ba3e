//! The config loader of both binaries: any YAML text plus `--set` / `SLUICE_*` overrides loads or
//! fails with an error; never a panic. What loads also compiles the shipper's globs and multiline
//! rules (their errors are reported at start, not panics).
//!
//! Input: the YAML file, then optionally a NUL byte and one override per line (`SLUICE_A__B=v` is
//! an environment variable, anything else a `--set`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice_common::config::load_text;
use sluice_indexer::config::IndexerConfig;
use sluice_shipper::config::ShipperConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (yaml, overrides) = text.split_once('\0').unwrap_or((&text, ""));
    let mut env = Vec::new();
    let mut sets = Vec::new();
    for line in overrides.lines() {
        match line.split_once('=') {
            Some((k, v)) if k.starts_with("SLUICE_") => env.push((k.to_owned(), v.to_owned())),
            _ => sets.push(line.to_owned()),
        }
    }
    let path = Path::new("fuzz.yaml");
    if let Ok(loaded) = load_text::<ShipperConfig>(yaml, path, env.clone(), &sets) {
        let cfg = loaded.config;
        let _ = sluice_shipper::multiline::Rules::compile(&cfg.multiline);
        let _ = sluice_shipper::discover::Discovery::new(&cfg.paths);
    }
    let _ = load_text::<IndexerConfig>(yaml, path, env, &sets);
});
