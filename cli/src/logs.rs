//! `sluice logs`: read and follow container logs from Elasticsearch like `kubectl logs` / `stern`,
//! across restarts, deleted pods and whole namespaces.
//!
//! # Order and memory
//! Records come sorted by `@timestamp` (nanoseconds) from a point in time paged with
//! `search_after`, one page at a time. Records with the same timestamp are printed in record-id
//! order: they are held in a small group buffer (at most [`MAX_GROUP`], then printed as they came),
//! so the whole output is sorted by (time, id) with memory bounded by one page plus one group.
//!
//! # Follow
//! `-f` first prints the history (`--tail`, default 10, or `--since`) from one point in time, marks
//! every record of that snapshot inside the follow window as seen, then polls every `--poll`. Each
//! poll reads the window `[cutoff, ∞)` where `cutoff = min(newest shown, now) − --follow-lag` (never
//! moving back): ids first, then `_mget` of the unseen ones. A record indexed late — its timestamp
//! older than the newest shown — is printed when it becomes searchable, once, if it is still inside
//! the window. The seen set holds the ids of the window only (pruned as the cutoff moves, capped at
//! [`MAX_SEEN`]: beyond that the oldest ids are dropped and the cutoff moves up to them, with a
//! warning), so memory is bounded and no record is shown twice.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, ValueEnum};
use regex::Regex;
use serde_json::{Value, json};

use crate::connect::{ConnectError, Connected, Connection};
use crate::es::{EsError, Pit, SortedHit};
use crate::output::{Format, Printer, Record};
use crate::selection::{Selection, TIMESTAMP};
use crate::selector::{LabelSelector, SelectorError};

/// Most records of one timestamp held to be sorted by id before printing.
pub const MAX_GROUP: usize = 10_000;
/// Most record ids remembered by `--follow` (the records of one follow window).
pub const MAX_SEEN: usize = 500_000;
/// Most records `--tail` takes (Elasticsearch's default `index.max_result_window`).
pub const MAX_TAIL: usize = 10_000;
const KEEP_ALIVE: &str = "1m";

/// Errors of `sluice logs`.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Bad flags.
    #[error("{0}")]
    Flags(String),
    /// A bad `-l` selector.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A request failed.
    #[error(transparent)]
    Es(#[from] EsError),
    /// Writing the output failed (other than a closed pipe).
    #[error("writing the output: {0}")]
    Io(io::Error),
}

/// `stdout` / `stderr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamArg {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Options of `sluice logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsOptions {
    /// Pod names or globs (`web-*`); none = every pod.
    #[arg(value_name = "POD")]
    pub pods: Vec<String>,
    /// Namespace (repeatable, comma-separated, globs); none = all namespaces (no kubeconfig is read).
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Every namespace (the default without -n; kept for kubectl habits).
    #[arg(short = 'A', long, conflicts_with = "namespaces")]
    pub all_namespaces: bool,
    /// Container name or glob (repeatable, comma-separated).
    #[arg(short = 'c', long = "container", value_delimiter = ',')]
    pub containers: Vec<String>,
    /// Label selector in Kubernetes syntax: `app=web,tier!=db`, `env in (a,b)`, `release`, `!canary`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Node name or glob (repeatable, comma-separated).
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Only records newer than this (`10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "since_time")]
    pub since: Option<Duration>,
    /// Only records at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub since_time: Option<DateTime<Utc>>,
    /// Only records before this time: RFC 3339, or a duration ago (`5m`).
    #[arg(long, value_parser = parse_time_or_ago)]
    pub until: Option<DateTime<Utc>>,
    /// Only this stream.
    #[arg(long, value_enum)]
    pub stream: Option<StreamArg>,
    /// Free text that must match the message (all words; Elasticsearch full-text match).
    #[arg(short = 'q', long = "query")]
    pub query: Option<String>,
    /// Only messages matching this regular expression (client side, after -q).
    #[arg(long, value_parser = parse_regex)]
    pub grep: Option<Regex>,
    /// The last N records of the selection (at most 10000); with -f the default is 10.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Stop after printing N records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Keep printing new records as they are indexed (each once, late ones included).
    #[arg(short = 'f', long, conflicts_with = "until")]
    pub follow: bool,
    /// With -f: how far behind the newest shown record a late record is still shown.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub follow_lag: Duration,
    /// With -f: time between polls.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub poll: Duration,
    /// Print the record's timestamp first.
    #[arg(long)]
    pub timestamps: bool,
    /// Timestamps in local time (TZ) instead of UTC.
    #[arg(long)]
    pub local_time: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "default")]
    pub output: Format,
    /// No colours (also when NO_COLOR is set or the output is not a terminal).
    #[arg(long)]
    pub no_color: bool,
    /// Records per page.
    #[arg(long, default_value_t = 1000, hide = true)]
    pub page_size: usize,
    /// Connection.
    #[command(flatten)]
    pub connection: Connection,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2026-12-02T10:00:00Z: {e}"))
}

fn parse_time_or_ago(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Utc::now() - TimeDelta::from_std(d).map_err(|e| e.to_string())?);
    }
    parse_time(s).map_err(|e| format!("{e} (or a duration ago like 5m)"))
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| e.to_string())
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records printed.
    pub printed: u64,
    /// The reader closed the pipe.
    pub pipe_closed: bool,
}

impl LogsOptions {
    /// The selection these flags describe.
    pub fn selection(&self) -> Result<Selection, LogsError> {
        let labels = self.selector.as_deref().map(str::parse::<LabelSelector>).transpose()?;
        let since = match (self.since, self.since_time) {
            (Some(d), _) => Some(Utc::now() - TimeDelta::from_std(d).map_err(|e| LogsError::Flags(e.to_string()))?),
            (None, t) => t,
        };
        if let (Some(a), Some(b)) = (since, self.until)
            && a >= b
        {
            return Err(LogsError::Flags("--until must be after --since/--since-time".into()));
        }
        Ok(Selection {
            namespaces: self.namespaces.clone(),
            pods: self.pods.clone(),
            containers: self.containers.clone(),
            nodes: self.nodes.clone(),
            labels,
            stream: self.stream.map(|s| match s {
                StreamArg::Stdout => "stdout".into(),
                StreamArg::Stderr => "stderr".into(),
            }),
            text: self.query.clone(),
            since,
            until: self.until,
        })
    }

    fn check(&self) -> Result<(), LogsError> {
        if self.tail.is_some_and(|t| t > MAX_TAIL) {
            return Err(LogsError::Flags(format!("--tail is at most {MAX_TAIL}; use --since for more")));
        }
        if self.page_size == 0 || self.page_size > 10_000 {
            return Err(LogsError::Flags("--page-size must be 1..=10000".into()));
        }
        if self.poll.is_zero() {
            return Err(LogsError::Flags("--poll must be positive".into()));
        }
        Ok(())
    }
}

/// A hit's timestamp in nanoseconds since the epoch: the sort value (`numeric_type: date_nanos`),
/// else the document's `@timestamp`.
fn nanos_of(hit: &SortedHit) -> i64 {
    match &hit.sort[0] {
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        Value::String(s) => s.parse().unwrap_or_default(),
        _ => hit.source[TIMESTAMP]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or_default(),
    }
}

fn sort(order: &str) -> Value {
    // Time first; the file path and offset keep records of one file in order under equal
    // timestamps (Elasticsearch adds `_shard_doc` under a point in time as the final tiebreaker).
    json!([
        {TIMESTAMP: {"order": order, "numeric_type": "date_nanos", "unmapped_type": "date_nanos"}},
        {"log.file.path": {"order": order, "unmapped_type": "keyword"}},
        {"log.offset": {"order": order, "unmapped_type": "long"}},
    ])
}

/// Whether the reader of stdout went away (a pipe whose read end is closed reports POLLERR).
fn stdout_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdout = io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0 && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP))
}

enum Flow {
    Go,
    Stop,
}

/// Holds the records of one timestamp to print them in id order, prints, counts, filters, and
/// remembers what `--follow` has seen.
struct Emitter<W: Write> {
    printer: Printer<W>,
    grep: Option<Regex>,
    limit: Option<u64>,
    printed: u64,
    group: Vec<(i64, SortedHit)>,
    /// `(timestamp, id)` of the records in the follow window (`None` without `-f`).
    seen: Option<BTreeSet<(i64, String)>>,
    /// The newest timestamp shown or seen.
    high: Option<i64>,
    warned_seen: bool,
}

impl<W: Write> Emitter<W> {
    fn push(&mut self, ts: i64, hit: SortedHit) -> io::Result<Flow> {
        if (self.group.first().is_some_and(|(t, _)| *t != ts) || self.group.len() >= MAX_GROUP)
            && let Flow::Stop = self.flush_group()?
        {
            return Ok(Flow::Stop);
        }
        self.group.push((ts, hit));
        Ok(Flow::Go)
    }

    fn flush_group(&mut self) -> io::Result<Flow> {
        let mut group = std::mem::take(&mut self.group);
        group.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        for (ts, hit) in group {
            if let Some(seen) = &mut self.seen {
                seen.insert((ts, hit.id.clone()));
            }
            self.high = Some(self.high.map_or(ts, |h| h.max(ts)));
            let rec = Record { id: &hit.id, index: &hit.index, doc: &hit.source };
            if self.grep.as_ref().is_some_and(|g| !g.is_match(rec.message())) {
                continue;
            }
            if self.limit.is_some_and(|l| self.printed >= l) {
                return Ok(Flow::Stop);
            }
            self.printer.record(&rec)?;
            self.printed += 1;
        }
        if self.limit.is_some_and(|l| self.printed >= l) {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Go)
    }

    fn seen(&self, ts: i64, id: &str) -> bool {
        self.seen.as_ref().is_some_and(|s| s.contains(&(ts, id.to_owned())))
    }

    /// Forgets ids older than `cutoff`; enforces [`MAX_SEEN`] by moving the cutoff up.
    fn prune(&mut self, cutoff: i64) -> i64 {
        let Some(seen) = &mut self.seen else { return cutoff };
        *seen = seen.split_off(&(cutoff, String::new()));
        let mut cutoff = cutoff;
        let mut dropped = false;
        while seen.len() > MAX_SEEN {
            if let Some((ts, _)) = seen.pop_first() {
                cutoff = cutoff.max(ts);
                dropped = true;
            }
        }
        if dropped && !self.warned_seen {
            self.warned_seen = true;
            eprintln!(
                "sluice logs: the follow window holds more than {MAX_SEEN} records; it now starts at {} \
                 (late records before that are not shown): narrow the selection or lower --follow-lag",
                nanos_to_time(cutoff)
            );
        }
        cutoff
    }
}

fn nanos_to_time(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(n)
}

/// Runs `sluice logs`, printing to `out` (`colour` only when it is a terminal and allowed).
pub async fn run<W: Write>(opts: &LogsOptions, out: W, colour: bool) -> Result<Summary, LogsError> {
    opts.check()?;
    let selection = opts.selection()?;
    let conn = opts.connection.connect().await?;
    let printer = Printer::new(out, opts.output, colour, opts.timestamps, opts.local_time);
    let mut em = Emitter {
        printer,
        grep: opts.grep.clone(),
        limit: opts.limit,
        printed: 0,
        group: Vec::new(),
        seen: opts.follow.then(BTreeSet::new),
        high: None,
        warned_seen: false,
    };
    let result = drive(opts, &conn, &selection, &mut em).await;
    let flushed = em.printer.flush();
    let closed = |e: &io::Error| e.kind() == io::ErrorKind::BrokenPipe;
    match (result, flushed) {
        (Err(Failure::Io(e)), _) | (Ok(()), Err(e)) if closed(&e) => {
            Ok(Summary { printed: em.printed, pipe_closed: true })
        }
        (Err(Failure::Io(e)), _) => Err(LogsError::Io(e)),
        (Err(Failure::Es(e)), _) => Err(e.into()),
        (Err(Failure::PipeClosed), _) => Ok(Summary { printed: em.printed, pipe_closed: true }),
        (Ok(()), Err(e)) => Err(LogsError::Io(e)),
        (Ok(()), Ok(())) => Ok(Summary { printed: em.printed, pipe_closed: false }),
    }
}

enum Failure {
    Io(io::Error),
    Es(EsError),
    PipeClosed,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<EsError> for Failure {
    fn from(e: EsError) -> Self {
        Failure::Es(e)
    }
}

async fn drive<W: Write>(
    opts: &LogsOptions,
    conn: &Connected,
    selection: &Selection,
    em: &mut Emitter<W>,
) -> Result<(), Failure> {
    let tail = match (opts.tail, opts.follow && selection.since.is_none()) {
        (Some(t), _) => Some(t),
        (None, true) => Some(10),
        (None, false) => None,
    };
    let started = Utc::now();
    let mut pit = conn.es.open_pit(conn.flavor, &conn.index, KEEP_ALIVE).await?;
    let history = history(opts, conn, selection, &mut pit, tail, em).await;
    if let Err(e) = history {
        conn.es.close_pit(&pit).await;
        return Err(e);
    }
    if let Ok(Flow::Stop) = history {
        conn.es.close_pit(&pit).await;
        return Ok(());
    }
    em.printer.flush()?;
    if !opts.follow {
        conn.es.close_pit(&pit).await;
        return Ok(());
    }
    // Everything of the snapshot inside the first window counts as seen: what the history did not
    // show was older than what was asked for.
    let lag = opts.follow_lag.as_nanos() as i64;
    let now = |em: &Emitter<W>| {
        let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        em.high.unwrap_or(started.timestamp_nanos_opt().unwrap_or_default()).min(now)
    };
    let mut cutoff = now(em) - lag;
    let primed = prime(opts, conn, selection, &mut pit, cutoff, em).await;
    conn.es.close_pit(&pit).await;
    primed?;
    loop {
        let deadline = tokio::time::Instant::now() + opts.poll;
        while tokio::time::Instant::now() < deadline {
            if stdout_closed() {
                return Err(Failure::PipeClosed);
            }
            tokio::time::sleep(Duration::from_millis(100).min(opts.poll)).await;
        }
        cutoff = cutoff.max(now(em) - lag);
        cutoff = em.prune(cutoff);
        if let Flow::Stop = poll_window(opts, conn, selection, cutoff, em).await? {
            return Ok(());
        }
        em.printer.flush()?;
    }
}

async fn history<W: Write>(
    opts: &LogsOptions,
    conn: &Connected,
    selection: &Selection,
    pit: &mut Pit,
    tail: Option<usize>,
    em: &mut Emitter<W>,
) -> Result<Flow, Failure> {
    let query = selection.query(None);
    if let Some(n) = tail {
        if n == 0 {
            return Ok(Flow::Go);
        }
        let body = json!({"size": n, "query": query, "sort": sort("desc"), "track_total_hits": false});
        let mut hits: Vec<(i64, SortedHit)> =
            conn.es.pit_page(pit, KEEP_ALIVE, &body, None).await?.into_iter().map(|h| (nanos_of(&h), h)).collect();
        hits.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        for (ts, hit) in hits {
            if let Flow::Stop = em.push(ts, hit)? {
                return Ok(Flow::Stop);
            }
        }
        return Ok(em.flush_group()?);
    }
    let body = json!({"size": opts.page_size, "query": query, "sort": sort("asc"), "track_total_hits": false});
    let mut after: Option<Value> = None;
    loop {
        let hits = conn.es.pit_page(pit, KEEP_ALIVE, &body, after.as_ref()).await?;
        let full = hits.len() == opts.page_size;
        after = hits.last().map(|h| h.sort.clone());
        for hit in hits {
            if let Flow::Stop = em.push(nanos_of(&hit), hit)? {
                return Ok(Flow::Stop);
            }
        }
        em.printer.flush()?;
        if !full {
            return Ok(em.flush_group()?);
        }
    }
}

/// Marks every record of the snapshot at or after `cutoff` as seen (ids only).
async fn prime<W: Write>(
    opts: &LogsOptions,
    conn: &Connected,
    selection: &Selection,
    pit: &mut Pit,
    cutoff: i64,
    em: &mut Emitter<W>,
) -> Result<(), Failure> {
    let body = json!({"size": opts.page_size, "query": selection.query(Some(nanos_to_time(cutoff))),
        "sort": sort("asc"), "_source": false, "track_total_hits": false});
    let mut after: Option<Value> = None;
    loop {
        let hits = conn.es.pit_page(pit, KEEP_ALIVE, &body, after.as_ref()).await?;
        let full = hits.len() == opts.page_size;
        after = hits.last().map(|h| h.sort.clone());
        for hit in &hits {
            let ts = nanos_of(hit);
            em.high = Some(em.high.map_or(ts, |h| h.max(ts)));
            if let Some(seen) = &mut em.seen {
                seen.insert((ts, hit.id.clone()));
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// One follow poll: the window's ids page by page, the unseen ones fetched and printed.
async fn poll_window<W: Write>(
    opts: &LogsOptions,
    conn: &Connected,
    selection: &Selection,
    cutoff: i64,
    em: &mut Emitter<W>,
) -> Result<Flow, Failure> {
    let body = json!({"size": opts.page_size, "query": selection.query(Some(nanos_to_time(cutoff))),
        "sort": sort("asc"), "_source": false, "track_total_hits": false});
    let mut pit = conn.es.open_pit(conn.flavor, &conn.index, KEEP_ALIVE).await?;
    let mut after: Option<Value> = None;
    let flow = loop {
        let hits = match conn.es.pit_page(&mut pit, KEEP_ALIVE, &body, after.as_ref()).await {
            Ok(h) => h,
            Err(e) => {
                conn.es.close_pit(&pit).await;
                return Err(e.into());
            }
        };
        let full = hits.len() == opts.page_size;
        after = hits.last().map(|h| h.sort.clone());
        let new: Vec<(i64, SortedHit)> =
            hits.into_iter().map(|h| (nanos_of(&h), h)).filter(|(ts, h)| !em.seen(*ts, &h.id)).collect();
        if !new.is_empty() {
            let keys: Vec<(&str, &str)> = new.iter().map(|(_, h)| (h.index.as_str(), h.id.as_str())).collect();
            let sources = match conn.es.mget(&keys, &json!(true)).await {
                Ok(s) => s,
                Err(e) => {
                    conn.es.close_pit(&pit).await;
                    return Err(e.into());
                }
            };
            let mut stop = false;
            for ((ts, mut hit), source) in new.into_iter().zip(sources) {
                if source.is_null() {
                    continue; // deleted since the id was read
                }
                hit.source = source;
                if let Flow::Stop = em.push(ts, hit)? {
                    stop = true;
                    break;
                }
            }
            if stop {
                break Flow::Stop;
            }
        }
        if !full {
            break em.flush_group()?;
        }
    };
    conn.es.close_pit(&pit).await;
    Ok(flow)
}
