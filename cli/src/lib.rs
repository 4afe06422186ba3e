//! `sluice`: the command-line tool for people running Sluice.
//!
//! # Layout
//! | module | what it owns |
//! |---|---|
//! | [`loadgen`] | `sluice loadgen`: kubelet-style pod log trees (CRI / docker json-file, partials, stack traces, rotation with gzip and keep-N, restarts), paced, with progress |
//! | [`manifest`] | the JSON manifest a loadgen run writes and `verify` reads: per file, generation and stream, counts, sequence ranges, write times, split and multi-line records |
//! | [`token`] | the unique sequence token in every generated line, and finding it again in a message |
//! | [`verify`] | `sluice verify`: waits for and scans Elasticsearch, reports expected / found / lost / duplicated / partials unmerged / stack traces split |
//! | [`es`] | the small Elasticsearch/OpenSearch client: refresh, count, point-in-time + `search_after` pages, `_mget`, `_msearch`, TLS and auth |
//! | [`connect`] | the connection flags of `logs` and `top` (the indexer's `elasticsearch.*` settings and env) and their checks |
//! | [`selector`] | Kubernetes label selectors → queries on `kubernetes.labels.*` |
//! | [`selection`] | namespaces, pods, containers, nodes, labels, stream, text and time → one `bool` query |
//! | [`output`] | how `logs` prints a record (prefix coloured per pod, raw, JSON, wide; UTC or local time) |
//! | [`logs`] | `sluice logs`: sorted streaming page by page, `--tail`, and `-f` (sliding window + seen ids) |
//! | [`lag`] | the indexer group's Kafka lag per partition, read without joining the group; trend, time to drain |
//! | [`top`] | `sluice top`: lines/s and bytes/s by namespace, pod, container or node, with `--kafka` lag |
//!
//! The binary (`src/main.rs`) only parses the command line, installs the signal handler and maps
//! results to exit codes; libraries return typed errors.

pub mod connect;
pub mod es;
pub mod lag;
pub mod loadgen;
pub mod logs;
pub mod manifest;
pub mod output;
pub mod selection;
pub mod selector;
pub mod token;
pub mod top;
pub mod verify;
