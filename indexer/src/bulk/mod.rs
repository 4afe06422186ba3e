//! Bulk: sends batches to `_bulk` and decides the fate of every item.
//!
//! | response | outcome |
//! |---|---|
//! | item 2xx | settled (`indexed`) |
//! | item 409 | settled (`duplicate`: already indexed — re-delivery is harmless) |
//! | item 429 / 5xx | retried alone, jittered exponential backoff, unlimited by default |
//! | item `cluster_block_exception`, `security_exception`, `index_not_found_exception` | write gate closed ([`WriteGate`]), retried as a slow probe |
//! | item other 4xx | dead-lettered with the reason, then settled |
//! | request 429, timeout | whole batch retried; the concurrency limit decreases |
//! | request refused / reset / 502–504 | whole batch retried on the next node (breaker counts it) |
//! | request 413 or other 4xx | batch split in halves until the offending item is alone, then dead-lettered |
//!
//! - [`classify`]: what a `_bulk` response and each of its items mean (pure functions).
//! - [`deliver`]: the delivery loop of one batch: send, apply the outcomes (settle, retry,
//!   dead-letter), back off, split.

pub mod classify;
pub mod deliver;

pub use classify::{ItemError, ItemOutcome, RequestOutcome, classify_item, classify_response};
pub use deliver::{RETRIES_EXHAUSTED, Sink};
