//! The `run` subcommand: wires consume → batch → bulk → settle → commit and the side tasks
//! (retention, node-state metrics), and drains on shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_common::server::Health;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backlog::Backlog;
use crate::batch::{Batcher, Limits};
use crate::bulk::Sink;
use crate::config::IndexerConfig;
use crate::consume::{self, Shared};
use crate::dlq::DeadLetters;
use crate::es::{BuildError, Distribution, NodePool};
use crate::index::{IndexError, IndexPattern};
use crate::metrics::Metrics;
use crate::overload::{Change, Limiter, WriteGate};
use crate::privileges::{self, Outcome, PrivilegeError};
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
    /// The Elasticsearch user lacks a privilege `run` needs.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// A stage died (a panic): the process must end so that it is restarted, not hang.
    #[error("{0}")]
    StageDied(String),
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
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let pool = Arc::new(NodePool::new(&config.elasticsearch)?);
    tracing::info!(nodes = ?pool.urls(), index = %config.elasticsearch.index, "connecting to Elasticsearch");

    // The template must exist before the first document creates an index.
    let Some(distribution) = until_ok("detecting Elasticsearch", &health, &shutdown, || pool.detect()).await else {
        return Ok(());
    };
    tracing::info!(distribution = distribution.name(), version = distribution.version(), "search engine detected");
    // Refuse to run without a right that will be needed (instead of failing record by record).
    let required = privileges::required(&config, &pattern);
    match privileges::check(&pool, &required).await {
        Ok(Outcome::Held) => tracing::info!(
            cluster = ?required.cluster, index = ?required.index, indices = %required.indices,
            "the Elasticsearch user holds the privileges the indexer needs"
        ),
        Ok(Outcome::NotChecked(why)) => tracing::debug!(%why, "Elasticsearch privileges not checked"),
        Err(err @ PrivilegeError::Missing { .. }) => {
            health.set_not_ready(err.to_string());
            return Err(err.into());
        }
        Err(err) => tracing::warn!(error = %err, "Elasticsearch privileges not checked"),
    }
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
    let sink = Arc::new(Sink::new(
        pool.clone(),
        Arc::new(WriteGate::new(config.elasticsearch.blocked_probe_interval)),
        limiter.clone(),
        tracker.clone(),
        dlq,
        metrics.clone(),
        health.clone(),
        config.retry.clone(),
        config.elasticsearch.request_timeout,
        backlog.clone(),
    ));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let limits = Limits {
        max_bytes: config.batch.max_bytes.as_usize(),
        max_docs: config.batch.max_docs,
        linger: config.batch.linger,
    };
    let shared = Arc::new(
        Shared::new(&config, Batcher::new(pattern.clone(), limits), tracker, backlog.clone(), metrics.clone(), tx)
            .with_health(&config, health.clone()),
    );
    let consumer = consume::create(&config, shared.clone())?;
    // The consumer stops on shutdown, or when another stage died.
    let stop = shutdown.child_token();
    let (thread, consumer_done) = {
        let stop = stop.clone();
        let interval = config.kafka.commit_interval;
        let rebuild = {
            let (config, shared) = (config.clone(), shared.clone());
            move || consume::create(&config, shared.clone())
        };
        spawn_thread("kafka-consumer", move || consume::run(consumer, shared, interval, stop, &rebuild))?
    };

    let side_tasks = CancellationToken::new();
    let mut side = JoinSet::new();
    side.spawn(retention::run(pool.clone(), pattern, config.retention.clone(), metrics.clone(), side_tasks.clone()));
    side.spawn(report_nodes(pool.clone(), metrics.clone(), side_tasks.clone()));
    health.set_ready();
    tracing::info!(topic = %config.kafka.topic, group = %config.kafka.group_id, "indexer running");

    // Dispatcher: one task per batch, started when the concurrency limiter has a slot.
    let mut tasks = JoinSet::new();
    let mut died: Option<String> = None;
    let mut withdrawn = false;
    loop {
        let dispatched = tokio::select! {
            // Readiness is withdrawn when the drain starts, not when it ends: Kubernetes stops
            // routing to a pod that is shutting down while its in-flight records still settle.
            _ = stop.cancelled(), if !withdrawn => {
                withdrawn = true;
                health.set_not_ready("shutting down");
                continue;
            }
            d = rx.recv() => d,
            _ = consumer_done.cancelled() => None,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(why) = task_death(joined) {
                    died = Some(why);
                    break;
                }
                continue;
            }
            Some(joined) = side.join_next(), if !side.is_empty() => {
                // Retention ends at once when it is off; a panic is a stage death.
                if let Err(err) = joined
                    && err.is_panic()
                {
                    died = Some(format!("a side task (retention, node metrics) panicked: {}", panic_text(&*err.into_panic())));
                    break;
                }
                continue;
            }
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
    }
    health.set_not_ready("shutting down");
    if died.is_none() && !stop.is_cancelled() && consumer_done.is_cancelled() {
        died = Some("the Kafka consumer thread stopped unexpectedly".into());
    }
    if let Some(why) = &died {
        tracing::error!("{why}; stopping the indexer (exit code 1) so that it is restarted");
        stop.cancel();
    }
    // The consumer thread has drained (or given up after kafka.revoke_timeout) and left the
    // group: whatever is still in flight belongs to partitions we no longer own. Batches keep
    // being delivered meanwhile (the drain waits for them).
    loop {
        tokio::select! {
            _ = consumer_done.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(why) = task_death(joined) {
                    died.get_or_insert(why);
                }
            }
            Some(d) = rx.recv() => backlog_drop(&backlog, d),
        }
    }
    while let Some(joined) = tasks.try_join_next() {
        if let Some(why) = task_death(joined) {
            died.get_or_insert(why);
        }
    }
    if !tasks.is_empty() {
        tracing::info!(tasks = tasks.len(), "abandoning unsettled batches (re-delivered to the next owner)");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    side_tasks.cancel();
    while let Some(joined) = side.join_next().await {
        if let Err(err) = joined
            && err.is_panic()
        {
            died.get_or_insert(format!("a side task panicked: {}", panic_text(&*err.into_panic())));
        }
    }
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => {
            died.get_or_insert(format!("the Kafka consumer thread panicked: {}", panic_text(&*panic)));
        }
        Err(err) => {
            died.get_or_insert(format!("cannot join the Kafka consumer thread: {err}"));
        }
    }
    match died {
        Some(why) => Err(Error::StageDied(why)),
        None => {
            tracing::info!("indexer stopped");
            Ok(())
        }
    }
}

/// Runs `f` on its own thread; the token is cancelled however the thread ends, a panic included,
/// so nobody waits for a dead thread (the panic itself comes out of `join`).
fn spawn_thread(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<(std::thread::JoinHandle<()>, CancellationToken)> {
    let done = CancellationToken::new();
    let guard = done.clone();
    let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
        let _done = guard.drop_guard();
        f();
    })?;
    Ok((thread, done))
}

/// A batch dispatched after the bulk stage stopped taking them: not delivered, not committed.
fn backlog_drop(backlog: &Backlog, dispatched: consume::Dispatched) {
    backlog.started();
    backlog.release(dispatched.memory);
}

/// Why a delivery task ended abnormally (a panic), or `None` for a normal end. A panicking
/// task leaves its records unsettled forever (their partition's commits stop there): the
/// process must end and be restarted, not run on with a hole.
fn task_death(joined: Result<(), tokio::task::JoinError>) -> Option<String> {
    match joined {
        Ok(()) => None,
        Err(err) if err.is_panic() => {
            Some(format!("a bulk delivery task panicked: {}", panic_text(&*err.into_panic())))
        }
        Err(_) => None, // aborted by us
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    // Issue #9, scenario 11: a consumer thread that panics (as on a non-UTF-8 header key before)
    // is seen at once and its panic reported; the pipeline then ends with an error (exit 1).
    #[tokio::test]
    async fn a_panicking_stage_thread_is_seen_and_reported() {
        let (thread, done) = spawn_thread("test-stage", || panic!("header key is not UTF-8")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), done.cancelled()).await.expect("death noticed");
        let panic = thread.join().unwrap_err();
        assert_eq!(panic_text(&*panic), "header key is not UTF-8");
        let (thread, done) = spawn_thread("test-stage", || {}).unwrap();
        tokio::time::timeout(Duration::from_secs(5), done.cancelled()).await.expect("end noticed");
        assert!(thread.join().is_ok());
    }

    // Issue #9, scenario 19: a panicking delivery task is reported, not discarded.
    #[tokio::test]
    async fn a_panicking_delivery_task_is_a_stage_death() {
        let mut tasks = JoinSet::new();
        tasks.spawn(async { panic!("boom in deliver") });
        tasks.spawn(async {});
        let mut deaths = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            deaths.extend(task_death(joined));
        }
        assert_eq!(deaths.len(), 1, "{deaths:?}");
        assert!(deaths[0].contains("boom in deliver"), "{deaths:?}");
    }
}
