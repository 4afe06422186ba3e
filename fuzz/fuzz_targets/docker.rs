//! Docker json-file lines: any bytes parse or fail cleanly; what parses agrees with a generic JSON
//! reading of the same line (content = `log` without its final `\n` / `\r\n`, partial = no `\n`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_shipper::parse::{docker, timestamp};

fuzz_target!(|line: &[u8]| {
    let Ok(f) = docker::parse(line) else { return };
    let value: serde_json::Value = serde_json::from_slice(line).expect("a parsed docker line is JSON");
    let log = value["log"].as_str().expect("`log` is a string");
    assert_eq!(f.partial, !log.ends_with('\n'));
    let content = match log.strip_suffix('\n') {
        Some(l) => l.strip_suffix('\r').unwrap_or(l),
        None => log,
    };
    assert_eq!(&*f.content, content.as_bytes());
    assert_eq!(&*f.timestamp, value["time"].as_str().expect("`time` is a string").as_bytes());
    let _ = timestamp::normalize(&f.timestamp);
});
