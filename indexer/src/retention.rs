//! Retention: whole indices whose name date is older than `retention.days` are deleted, checked
//! every `retention.check_interval` (no ILM needed: the integ-test distribution and OpenSearch
//! lack it). Only names that match `elasticsearch.index` exactly are considered. Every replica may
//! run it; deleting an index twice is harmless.

use elasticsearch::http::Method;
use time::{Date, Duration as Days, OffsetDateTime};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::es::{NodePool, RequestError};
use crate::index::IndexPattern;
use crate::metrics::Metrics;

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// No response.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Unexpected response.
    #[error("{0}")]
    Response(String),
}

/// Indices among `names` that are older than `days` before `today` (kept: `today - days` and later).
pub fn expired<'a>(
    names: impl IntoIterator<Item = &'a str>,
    pattern: &IndexPattern,
    days: u32,
    today: Date,
) -> Vec<String> {
    let Some(cutoff) = today.checked_sub(Days::days(i64::from(days))) else { return Vec::new() };
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|name| pattern.date_of(name).is_some_and(|date| date < cutoff))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// Deletes expired indices once; returns their names.
pub async fn sweep(
    pool: &NodePool,
    pattern: &IndexPattern,
    days: u32,
    today: Date,
) -> Result<Vec<String>, RetentionError> {
    let path = format!("/_cat/indices/{}", pattern.wildcard());
    let reply = pool
        .send_failover(
            Method::Get,
            &path,
            &[("format", "json"), ("h", "index"), ("expand_wildcards", "all")],
            None,
            None,
            None,
        )
        .await?;
    if reply.status != 200 {
        return Err(RetentionError::Response(format!("GET {path}: HTTP {}", reply.status)));
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&reply.body).map_err(|e| RetentionError::Response(e.to_string()))?;
    let names: Vec<&str> = rows.iter().filter_map(|r| r["index"].as_str()).collect();
    let doomed = expired(names, pattern, days, today);
    for index in &doomed {
        let reply = pool.send_failover(Method::Delete, &format!("/{index}"), &[], None, None, None).await?;
        if reply.status != 200 && reply.status != 404 {
            return Err(RetentionError::Response(format!("DELETE {index}: HTTP {}", reply.status)));
        }
        tracing::info!(%index, days, "retention: index deleted");
    }
    Ok(doomed)
}

/// Sweeps periodically until `shutdown`.
pub async fn run(
    pool: std::sync::Arc<NodePool>,
    pattern: IndexPattern,
    config: RetentionConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    if config.days == 0 || !pattern.is_dated() {
        return;
    }
    loop {
        let today = OffsetDateTime::now_utc().date();
        match sweep(&pool, &pattern, config.days, today).await {
            Ok(deleted) => {
                metrics.retention_deleted.inc_by(deleted.len() as u64);
            }
            Err(err) => tracing::warn!(error = %err, "retention sweep failed; next try at the next interval"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.check_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn only_matching_indices_older_than_the_cutoff_expire() {
        let pattern = IndexPattern::parse("sluice-logs-%Y.%m.%d").unwrap();
        let names = [
            "sluice-logs-2026.11.19",
            "sluice-logs-2026.11.20",
            "sluice-logs-2026.11.27",
            "sluice-logs-2025.01.01",
            "sluice-logs-2025.01.01-restored",
            "other-2020.01.01",
        ];
        let doomed = expired(names, &pattern, 7, date!(2026 - 11 - 27));
        assert_eq!(doomed, vec!["sluice-logs-2025.01.01", "sluice-logs-2026.11.19"]);
    }
}
