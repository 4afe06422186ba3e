//! The `run` subcommand: wires consume → batch → bulk → settle → commit and the side tasks
//! (retention, node-state metrics), and drains on shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_common::server::Health;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batcher, Limits};
use crate::bulk::{Backlog, Sink};
use crate::config::IndexerConfig;
use crate::consume::{self, Shared};
use crate::dlq::DeadLetters;
use crate::es::{BuildError, Distribution, NodePool};
use crate::index::{IndexError, IndexPattern};
use crate::metrics::Metrics;
use crate::overload::{Change, Limiter, WriteGate};
use crate::settle::Tracker;
use crate::{retention, template};

/// Why the indexer could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `elasticsearch.index` is invalid.
    #[error("elasticsearch.index: {0}")]
    Pattern(#[from] IndexError),
    /// The Elasticsearch client could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The Kafka consumer or producer could not be created.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The consumer thread could not be started.
    #[error("cannot start the consumer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Retries `f` with a growing pause until it succeeds or `shutdown` fires (then `None`).
async fn until_ok<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    health: &Health,
    shutdown: &CancellationToken,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match f().await {
            Ok(value) => return Some(value),
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "{what} failed; retrying");
                health.set_not_ready(format!("{what}: {err}"));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

/// Runs the indexer until `shutdown` is cancelled and the drain is over.
pub async fn run(
    config: IndexerConfig,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let pattern = IndexPattern::parse(&config.elasticsearch.index)?;
    let pool = Arc::new(NodePool::new(&config.elasticsearch)?);
    tracing::info!(nodes = ?pool.urls(), index = %config.elasticsearch.index, "connecting to Elasticsearch");

    // The template must exist before the first document creates an index.
    let Some(distribution) = until_ok("detecting Elasticsearch", &health, &shutdown, || pool.detect()).await else {
        return Ok(());
    };
    tracing::info!(distribution = distribution.name(), version = distribution.version(), "search engine detected");
    if config.elasticsearch.template.install {
        let installed = until_ok("installing the index template", &health, &shutdown, || {
            template::install(&pool, &config.elasticsearch, &distribution)
        })
        .await;
        if installed.is_none() {
            return Ok(());
        }
    }
    run_pipeline(config, pattern, pool, distribution, metrics, health, shutdown).await
}

async fn run_pipeline(
    config: IndexerConfig,
    pattern: IndexPattern,
    pool: Arc<NodePool>,
    _distribution: Distribution,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let limiter = {
        let metrics = metrics.clone();
        Limiter::new(&config.concurrency, move |limit, change| {
            metrics.concurrency_limit.set(limit as i64);
            match change {
                Change::None => {}
                Change::Increased => {
                    metrics.concurrency_change("increase");
                    tracing::debug!(limit, "concurrency limit increased");
                }
                Change::DecreasedOverload => {
                    metrics.concurrency_change("decrease_overload");
                    tracing::info!(limit, "Elasticsearch pushes back (429/timeout): concurrency limit decreased");
                }
                Change::DecreasedLatency => {
                    metrics.concurrency_change("decrease_latency");
                    tracing::info!(limit, "bulk latency spike: concurrency limit decreased");
                }
            }
        })
    };
    let tracker = Arc::new(Mutex::new(Tracker::new()));
    let backlog = Arc::new(Backlog::default());
    let dlq = Arc::new(DeadLetters::new(&config)?);
    let sink = Arc::new(Sink {
        pool: pool.clone(),
        gate: Arc::new(WriteGate::new(config.elasticsearch.blocked_probe_interval)),
        tracker: tracker.clone(),
        dlq,
        metrics: metrics.clone(),
        retry: config.retry.clone(),
        request_timeout: config.elasticsearch.request_timeout,
        backlog: backlog.clone(),
    });

    let (tx, mut rx) = mpsc::unbounded_channel();
    let limits = Limits {
        max_bytes: config.batch.max_bytes.as_usize(),
        max_docs: config.batch.max_docs,
        linger: config.batch.linger,
    };
    let shared = Arc::new(Shared::new(
        &config,
        Batcher::new(pattern.clone(), limits),
        tracker,
        backlog.clone(),
        metrics.clone(),
        tx,
    ));
    let consumer = consume::create(&config, shared.clone())?;
    let consumer_done = CancellationToken::new();
    let thread = {
        let done = consumer_done.clone();
        let stop = shutdown.clone();
        let interval = config.kafka.commit_interval;
        std::thread::Builder::new().name("kafka-consumer".into()).spawn(move || {
            consume::run(consumer, shared, interval, stop);
            done.cancel();
        })?
    };

    let side_tasks = CancellationToken::new();
    let retention = tokio::spawn(retention::run(
        pool.clone(),
        pattern,
        config.retention.clone(),
        metrics.clone(),
        side_tasks.clone(),
    ));
    let nodes = tokio::spawn(report_nodes(pool.clone(), metrics.clone(), side_tasks.clone()));
    health.set_ready();
    tracing::info!(topic = %config.kafka.topic, group = %config.kafka.group_id, "indexer running");

    // Dispatcher: one task per batch, started when the concurrency limiter has a slot.
    let mut tasks = JoinSet::new();
    loop {
        let dispatched = tokio::select! {
            d = rx.recv() => d,
            _ = consumer_done.cancelled() => None,
        };
        let Some(dispatched) = dispatched else { break };
        // When the limit is reached this batch waits; the consumer reads one batch ahead, then
        // stops reading, and pauses its partitions when the wait lasts (`consume::run`).
        let permit = match limiter.try_acquire() {
            Some(permit) => Some(permit),
            None => tokio::select! {
                p = limiter.acquire() => Some(p),
                _ = consumer_done.cancelled() => None,
            },
        };
        backlog.started();
        match permit {
            Some(permit) => {
                tasks.spawn(sink.clone().deliver(dispatched.batch, permit, dispatched.memory));
            }
            None => {
                backlog.release(dispatched.memory);
                break;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    health.set_not_ready("shutting down");
    // The consumer thread has drained (or given up after kafka.revoke_timeout) and left the
    // group: whatever is still in flight belongs to partitions we no longer own.
    consumer_done.cancelled().await;
    while tasks.try_join_next().is_some() {}
    if !tasks.is_empty() {
        tracing::info!(tasks = tasks.len(), "abandoning unsettled batches (re-delivered to the next owner)");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    side_tasks.cancel();
    let _ = retention.await;
    let _ = nodes.await;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    tracing::info!("indexer stopped");
    Ok(())
}

async fn report_nodes(pool: Arc<NodePool>, metrics: Metrics, stop: CancellationToken) {
    loop {
        for (url, up) in pool.node_states() {
            metrics.node(&url, up);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
