//! Docker json-file lines: any bytes parse or fail cleanly; what parses agrees with a generic JSON
//! reading of the same line (content = `log` without its final `\n` / `\r\n`, partial = no `\n`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_shipper::parse::{docker, timestamp};

fuzz_target!(|line: &[u8]| {
    let Ok(f) = docker::parse(line) else { return };
    let value: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        // The parser reads the fields it needs and skips the rest without validating their UTF-8
        // (invalid bytes in `log` itself are replaced, see the bad-input matrix): that is the only
        // way a line it accepts may be refused by a strict JSON reader.
        //
        // A number beyond f64's range (`4E0000…8000`) is JSON by the grammar (RFC 8259 §6 leaves
        // range to implementations) and the parser skips it without converting it, but a `Value`
        // refuses it: checking the grammar alone (`IgnoredAny` scans numbers, never converts them)
        // tells the two apart. Found by this target in CI (seed `regress-number-out-of-range`).
        Err(_) => {
            let grammatical = serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
            assert!(
                grammatical || std::str::from_utf8(line).is_err(),
                "a parsed docker line that is UTF-8 is JSON"
            );
            return;
        }
    };
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
