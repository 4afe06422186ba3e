//! `_bulk` responses: any status and body classify without panicking, and per-item outcomes come
//! one per document sent (never more, never fewer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_indexer::bulk::classify::{RequestOutcome, classify_response};

fuzz_target!(|data: &[u8]| {
    let [a, b, n, body @ ..] = data else { return };
    let status = 100 + u16::from_le_bytes([*a, *b]) % 500;
    let expected = usize::from(*n);
    if let RequestOutcome::Items(items) = classify_response(status, body, expected) {
        assert_eq!(status, 200);
        assert_eq!(items.len(), expected);
    }
});
