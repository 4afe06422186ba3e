//! The Sluice node agent: reads every line every container writes, exactly once from where it left
//! off, while the kubelet rotates and compresses files underneath it.
//!
//! # Layout
//! The data path reads from the module names, one module per stage:
//! `discover → tail → parse → reassemble → multiline → record → sink`, with acks flowing back into
//! `checkpoint`; `pipeline` wires them together.
//! - [`config`]: the configuration keys of the operator interface (and the shipper's own keys).
//! - [`discover`]: finds `<root>/<ns>_<pod>_<uid>/<container>/<n>.log` files and their rotated and
//!   gzipped generations; resolves `/var/log/containers` symlinks; include/exclude globs.
//! - [`tail`]: positional reads of plain and gzipped generations; generation identity cache.
//! - [`parse`]: CRI and docker json-file lines, RFC 3339 timestamps.
//! - [`reassemble`]: partial lines keyed by file and stream, `max_line_bytes`, flush timeout.
//! - [`multiline`]: optional start/continuation-pattern rules per namespace/container.
//! - [`lines`]: the per-file chain above, shared by the pipeline and `inspect`.
//! - [`record`]: the record id (one documented function) and the schema v1 document.
//! - [`checkpoint`]: per-generation ack trackers (contiguous acknowledged prefix) and the atomic
//!   checkpoint file.
//! - [`sink`]: the sink trait with asynchronous, out-of-order acks; stdout, null and test sinks.
//! - [`pipeline`]: the read loop, one file per step: `scan` (inotify glue, listing, checkpoint GC),
//!   `schedule` (round-robin turns, timeouts, eviction), `generation` (which generation next,
//!   opening, identity, reopening), `read` (a source's poll, end of file), `emit` (records to the
//!   sink, rate limit, cut journal), `rotate` (complete, truncated, closed, given up); the reader's
//!   file lifecycle is one enum (`Life`: live → rotated → unlinked).
//! - [`inspect`]: `sluice-shipper inspect`.
//! - [`metrics`]: Prometheus metrics.
//! - [`testkit`]: a kubelet-like log writer for tests and load generation.

pub mod checkpoint;
pub mod config;
pub mod discover;
pub mod enrich;
pub mod inspect;
pub mod limit;
pub mod lines;
pub mod metrics;
pub mod multiline;
pub mod parse;
pub mod pipeline;
pub mod publish;
pub mod reassemble;
pub mod record;
pub mod sink;
pub mod tail;
pub mod testkit;
