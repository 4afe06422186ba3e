//! CRI lines: any bytes parse or fail cleanly; what parses rebuilds the line exactly, and its
//! timestamp normalises to canonical RFC 3339 UTC that parses back to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_common::schema::Stream;
use sluice_shipper::parse::{cri, timestamp};

fuzz_target!(|line: &[u8]| {
    let _ = timestamp::normalize(line);
    let Ok(f) = cri::parse(line) else { return };
    let stream: &[u8] = match f.stream {
        Stream::Stdout => b"stdout",
        Stream::Stderr => b"stderr",
    };
    let mut rebuilt = f.timestamp.to_vec();
    rebuilt.push(b' ');
    rebuilt.extend_from_slice(stream);
    rebuilt.extend_from_slice(if f.partial { b" P" } else { b" F" });
    if rebuilt.len() < line.len() {
        rebuilt.push(b' ');
    }
    rebuilt.extend_from_slice(&f.content);
    assert_eq!(rebuilt, line, "the fields of a parsed line rebuild it");
    let parsed = timestamp::parse(&f.timestamp).expect("a parsed CRI line has a valid timestamp");
    let normal = timestamp::normalize(&f.timestamp).expect("valid timestamps normalise");
    let again = timestamp::parse(normal.as_bytes()).unwrap_or_else(|| {
        panic!("normalised {normal:?} (from {:?}) does not parse", String::from_utf8_lossy(&f.timestamp))
    });
    assert!(again.canonical, "{normal}");
    assert_eq!(again.instant, parsed.instant, "{normal}");
});
