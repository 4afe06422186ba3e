//! `sluice`: the command-line tool for people running Sluice.
//!
//! # Layout
//! | module | what it owns |
//! |---|---|
//! | [`loadgen`] | `sluice loadgen`: kubelet-style pod log trees (CRI / docker json-file, partials, stack traces, rotation with gzip and keep-N, restarts), paced, with progress |
//! | [`manifest`] | the JSON manifest a loadgen run writes and `verify` reads: per file, generation and stream, counts, sequence ranges, write times, split and multi-line records |
//! | [`token`] | the unique sequence token in every generated line, and finding it again in a message |
//! | [`verify`] | `sluice verify`: waits for and scans Elasticsearch, reports expected / found / lost / duplicated / partials unmerged / stack traces split |
//! | [`es`] | the small Elasticsearch client `verify` uses: refresh, count, point-in-time + `search_after` scan |
//!
//! The binary (`src/main.rs`) only parses the command line, installs the signal handler and maps
//! results to exit codes; libraries return typed errors.

pub mod es;
pub mod loadgen;
pub mod manifest;
pub mod token;
pub mod verify;
