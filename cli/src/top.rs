//! `sluice top`: who logs the most over a window, from Elasticsearch aggregations, and with
//! `--kafka` the indexer group's lag per partition, its trend and the time to drain.
//!
//! Lines are exact counts (a `composite` aggregation paged to its end; `terms` would be approximate
//! across shards and `multi_terms` needs X-Pack analytics, missing in some distributions). Bytes
//! are the UTF-8 size of the messages: the schema has no size field and scripts may be
//! unavailable, so each row's bytes come from up to [`SAMPLE`] of its records (one `_msearch`)
//! times its line count: exact for rows with at most that many records, an estimate (`~`) beyond.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

use crate::connect::{ConnectError, Connected, Connection};
use crate::es::EsError;
use crate::lag::{Direction, KafkaArgs, LagError, LagReader, LagSample, Trend, trend};
use crate::selection::Selection;
use crate::selector::{LabelSelector, SelectorError};

/// Records per row read to measure bytes.
pub const SAMPLE: usize = 200;

/// Errors of `sluice top`.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
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
    /// Kafka failed.
    #[error(transparent)]
    Lag(#[from] LagError),
    /// Writing failed.
    #[error("writing the output: {0}")]
    Io(#[from] io::Error),
}

/// What rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// `kubernetes.namespace`.
    Namespace,
    /// namespace + pod.
    Pod,
    /// namespace + pod + container.
    Container,
    /// `kubernetes.node.name`.
    Node,
}

impl By {
    fn fields(self) -> &'static [&'static str] {
        match self {
            By::Namespace => &["kubernetes.namespace"],
            By::Pod => &["kubernetes.namespace", "kubernetes.pod.name"],
            By::Container => &["kubernetes.namespace", "kubernetes.pod.name", "kubernetes.container.name"],
            By::Node => &["kubernetes.node.name"],
        }
    }
}

/// Output of `top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopFormat {
    /// A table.
    Table,
    /// One JSON object per refresh.
    Json,
}

/// Options of `sluice top`.
#[derive(Debug, Clone, Args)]
pub struct TopOptions {
    /// The window: records of the last …
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub since: Duration,
    /// Rows are namespaces, pods, containers or nodes.
    #[arg(long, value_enum, default_value = "namespace")]
    pub by: By,
    /// Only these namespaces (repeatable, comma-separated, globs).
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Only pods matching this label selector (Kubernetes syntax).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Rows shown.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Print one table and exit (the default when the output is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// Time between refreshes (and between the two lag samples of --once --kafka).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub interval: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: TopFormat,
    /// Also show the indexer group's Kafka lag per partition, its trend and the time to drain.
    #[arg(long)]
    pub kafka: bool,
    /// Kafka.
    #[command(flatten)]
    pub kafka_args: KafkaArgs,
    /// Connection.
    #[command(flatten)]
    pub connection: Connection,
}

/// One row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The key parts (namespace, pod, container / node).
    pub key: Vec<String>,
    /// Records in the window.
    pub lines: u64,
    /// Records per second.
    pub lines_per_s: f64,
    /// Message bytes in the window (exact or estimated, see `bytes_exact`).
    pub bytes: u64,
    /// Message bytes per second.
    pub bytes_per_s: f64,
    /// Whether `bytes` counts every record (else it is scaled from a sample).
    pub bytes_exact: bool,
    /// Share of all records of the window, 0..=1.
    pub share: f64,
}

/// One refresh.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Rows by.
    pub by: By,
    /// Window in seconds.
    pub window_seconds: f64,
    /// All records of the window.
    pub total_lines: u64,
    /// All records per second.
    pub total_lines_per_s: f64,
    /// The rows, most lines first.
    pub rows: Vec<Row>,
    /// Records of rows not shown.
    pub other_lines: u64,
    /// Kafka lag, with `--kafka`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaView>,
}

/// The Kafka part of a refresh.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaView {
    /// The latest sample.
    pub lag: LagSample,
    /// The change since the previous sample (none on the first screen).
    pub trend: Option<Trend>,
}

impl TopOptions {
    fn selection(&self, now: chrono::DateTime<Utc>) -> Result<Selection, TopError> {
        let window = TimeDelta::from_std(self.since).map_err(|e| TopError::Flags(e.to_string()))?;
        Ok(Selection {
            namespaces: self.namespaces.clone(),
            labels: self.selector.as_deref().map(str::parse::<LabelSelector>).transpose()?,
            since: Some(now - window),
            until: Some(now),
            ..Default::default()
        })
    }
}

/// Composite buckets per request while counting.
const COMPOSITE_PAGE: usize = 1000;

/// The rows of one window: a `composite` aggregation paged to the end (exact counts; only the top
/// rows are kept, so memory is bounded by `--top`), then one `_msearch` for the rows' bytes.
pub async fn table(opts: &TopOptions, conn: &Connected) -> Result<Table, TopError> {
    let now = Utc::now();
    let selection = opts.selection(now)?;
    let query = selection.query(None);
    let fields = opts.by.fields();
    let size = opts.top.max(1);
    let sources: Vec<Value> =
        fields.iter().enumerate().map(|(i, f)| json!({format!("k{i}"): {"terms": {"field": f}}})).collect();
    let mut after: Option<Value> = None;
    let mut total = 0u64;
    // The `size` largest (lines, key) seen so far; ties keep the smaller key.
    let mut best: Vec<(u64, Vec<String>)> = Vec::with_capacity(size + 1);
    loop {
        let mut composite = json!({"size": COMPOSITE_PAGE, "sources": sources});
        if let Some(a) = &after {
            composite["after"] = a.clone();
        }
        let body = json!({"size": 0, "query": query, "track_total_hits": after.is_none(),
            "aggs": {"rows": {"composite": composite}}});
        let v = conn.es.search(&conn.index, &body).await?;
        if after.is_none() {
            total = v["hits"]["total"]["value"].as_u64().unwrap_or_default();
        }
        let buckets = v["aggregations"]["rows"]["buckets"].as_array().cloned().unwrap_or_default();
        for b in &buckets {
            let key: Vec<String> =
                (0..fields.len()).map(|i| b["key"][format!("k{i}")].as_str().unwrap_or_default().to_owned()).collect();
            let lines = b["doc_count"].as_u64().unwrap_or_default();
            best.push((lines, key));
            if best.len() > size {
                best.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                best.truncate(size);
            }
        }
        match v["aggregations"]["rows"]["after_key"].clone() {
            Value::Null => break,
            _ if buckets.len() < COMPOSITE_PAGE => break,
            k => after = Some(k),
        }
    }
    best.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let window = opts.since.as_secs_f64().max(1e-3);
    let mut rows = Vec::new();
    let mut searches = Vec::new();
    for (lines, key) in best {
        let mut q = query.clone();
        if let Some(filter) = q["bool"]["filter"].as_array_mut() {
            for (f, k) in fields.iter().zip(&key) {
                filter.push(json!({"term": {*f: k}}));
            }
        }
        searches.push((
            conn.index.clone(),
            json!({"size": SAMPLE, "query": q, "_source": ["message"], "track_total_hits": false}),
        ));
        rows.push(Row {
            key,
            lines,
            lines_per_s: lines as f64 / window,
            bytes: 0,
            bytes_per_s: 0.0,
            bytes_exact: lines as usize <= SAMPLE,
            share: if total == 0 { 0.0 } else { lines as f64 / total as f64 },
        });
    }
    if !searches.is_empty() {
        let answers = conn.es.msearch(&searches).await?;
        for (row, answer) in rows.iter_mut().zip(answers) {
            let hits = answer["hits"]["hits"].as_array().cloned().unwrap_or_default();
            let sum: u64 = hits.iter().map(|h| h["_source"]["message"].as_str().map_or(0, |m| m.len() as u64)).sum();
            let n = hits.len() as u64;
            row.bytes = if n == 0 {
                0
            } else if row.bytes_exact {
                sum
            } else {
                (sum as f64 * row.lines as f64 / n as f64).round() as u64
            };
            row.bytes_per_s = row.bytes as f64 / window;
        }
    }
    let shown: u64 = rows.iter().map(|r| r.lines).sum();
    Ok(Table {
        by: opts.by,
        window_seconds: window,
        total_lines: total,
        total_lines_per_s: total as f64 / window,
        rows,
        other_lines: total.saturating_sub(shown),
        kafka: None,
    })
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{v:.0} {}", UNITS[i]) } else { format!("{v:.1} {}", UNITS[i]) }
}

fn human_duration(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Renders a table as text.
pub fn render(t: &Table) -> String {
    let mut out = String::new();
    let by = match t.by {
        By::Namespace => "NAMESPACE",
        By::Pod => "NAMESPACE/POD",
        By::Container => "NAMESPACE/POD/CONTAINER",
        By::Node => "NODE",
    };
    let width = t.rows.iter().map(|r| r.key.join("/").len()).max().unwrap_or(0).max(by.len());
    out.push_str(&format!(
        "last {}: {} lines, {:.1} lines/s\n",
        human_duration(t.window_seconds),
        t.total_lines,
        t.total_lines_per_s,
    ));
    out.push_str(&format!("{by:<width$}  {:>10}  {:>10}  {:>12}  {:>6}\n", "LINES", "LINES/S", "BYTES/S", "SHARE"));
    for r in &t.rows {
        let bytes = format!("{}{}/s", if r.bytes_exact { "" } else { "~" }, human_bytes(r.bytes_per_s));
        out.push_str(&format!(
            "{:<width$}  {:>10}  {:>10.1}  {:>12}  {:>5.1}%\n",
            r.key.join("/"),
            r.lines,
            r.lines_per_s,
            bytes,
            r.share * 100.0
        ));
    }
    if t.other_lines > 0 {
        out.push_str(&format!("{:<width$}  {:>10}\n", "(others)", t.other_lines));
    }
    if let Some(k) = &t.kafka {
        out.push_str(&format!("\nKafka topic {} group {}: lag {}", k.lag.topic, k.lag.group, k.lag.total));
        match &k.trend {
            Some(tr) => {
                let dir = match tr.direction {
                    Direction::Growing => "growing",
                    Direction::Draining => "draining",
                    Direction::Steady => "steady",
                };
                out.push_str(&format!(
                    ", {dir} ({:+.1}/s; in {:.1}/s, indexed {:.1}/s), time to drain: {}\n",
                    tr.lag_per_s,
                    tr.produced_per_s,
                    tr.consumed_per_s,
                    match tr.drain_seconds {
                        Some(s) => human_duration(s),
                        None if k.lag.total == 0 => "0s".into(),
                        None => "never at this rate".into(),
                    }
                ));
            }
            None => out.push_str(" (trend on the next refresh)\n"),
        }
        out.push_str(&format!(
            "{:>9}  {:>12}  {:>12}  {:>10}  {:>10}\n",
            "PARTITION", "COMMITTED", "END", "LAG", "TREND"
        ));
        for p in &k.lag.partitions {
            let tr = k.trend.as_ref().and_then(|t| t.partitions.iter().find(|x| x.0 == p.partition));
            let trend = match tr {
                Some((_, r, Direction::Growing)) => format!("↑ {r:+.1}/s"),
                Some((_, r, Direction::Draining)) => format!("↓ {r:+.1}/s"),
                Some((_, _, Direction::Steady)) => "=".into(),
                None => "".into(),
            };
            out.push_str(&format!(
                "{:>9}  {:>12}  {:>12}  {:>10}  {:>10}\n",
                p.partition,
                p.committed.map_or("-".into(), |c| c.to_string()),
                p.high,
                p.lag,
                trend
            ));
        }
    }
    out
}

async fn lag_sample(reader: &std::sync::Arc<LagReader>) -> Result<LagSample, TopError> {
    let r = reader.clone();
    tokio::task::spawn_blocking(move || r.sample())
        .await
        .map_err(|e| TopError::Flags(format!("the Kafka task failed: {e}")))?
        .map_err(TopError::from)
}

/// Runs `sluice top` until interrupted (or once).
pub async fn run(opts: &TopOptions, out: &mut impl Write) -> Result<(), TopError> {
    if opts.top == 0 || opts.interval.is_zero() || opts.since.is_zero() {
        return Err(TopError::Flags("--top, --interval and --since must be positive".into()));
    }
    let conn = opts.connection.connect().await?;
    let reader = if opts.kafka { Some(std::sync::Arc::new(LagReader::new(&opts.kafka_args)?)) } else { None };
    let once = opts.once || !io::stdout().is_terminal();
    let mut previous: Option<LagSample> = None;
    if once && let Some(r) = &reader {
        previous = Some(lag_sample(r).await?);
        tokio::time::sleep(opts.interval).await;
    }
    loop {
        let started = Instant::now();
        let mut t = table(opts, &conn).await?;
        if let Some(r) = &reader {
            let lag = lag_sample(r).await?;
            let trend = previous.as_ref().map(|p| {
                let secs = match (p.at, lag.at) {
                    (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
                    _ => opts.interval.as_secs_f64(),
                };
                trend(p, &lag, secs)
            });
            previous = Some(lag.clone());
            t.kafka = Some(KafkaView { lag, trend });
        }
        let text = match opts.output {
            TopFormat::Json => format!("{}\n", serde_json::to_string(&t).unwrap_or_default()),
            TopFormat::Table if once => render(&t),
            TopFormat::Table => format!("\x1b[H\x1b[2J{}", render(&t)),
        };
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(opts.interval.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_table() {
        let t = Table {
            by: By::Pod,
            window_seconds: 300.0,
            total_lines: 600,
            total_lines_per_s: 2.0,
            rows: vec![Row {
                key: vec!["shop".into(), "web-0".into()],
                lines: 450,
                lines_per_s: 1.5,
                bytes: 307_200,
                bytes_per_s: 1024.0,
                bytes_exact: false,
                share: 0.75,
            }],
            other_lines: 150,
            kafka: None,
        };
        let s = render(&t);
        assert!(s.starts_with("last 5m00s: 600 lines, 2.0 lines/s\n"), "{s}");
        assert!(s.contains("shop/web-0            450         1.5    ~1.0 KiB/s   75.0%\n"), "{s}");
        assert!(s.contains("(others)"), "{s}");
    }
}
