//! Overload protection: an adaptive (AIMD) limit of in-flight `_bulk` requests, and the write
//! gate closed while Elasticsearch blocks writes (flood-stage disk, read-only index).
//!
//! The limit grows by one per window of `limit` successful requests that found the limiter full,
//! and is multiplied by `decrease_factor` on a 429, a timeout or a latency spike — at most once per
//! window of requests started before the previous decrease, so one burst of 429s halves it once.
//! A batch holds its permit until every record is settled, retries and backoff included, so the
//! limit bounds the batches being delivered. When no permit is free, batches wait and the consumer
//! pauses its partitions (see [`crate::consume`]): the backlog stays in Kafka, not in memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::ConcurrencyConfig;

/// Latency noise below this is never a spike (small requests on an idle cluster vary a lot).
const SPIKE_FLOOR: Duration = Duration::from_millis(250);
/// Samples needed before the latency baseline is trusted.
const BASELINE_SAMPLES: u32 = 5;
/// Weight of a new sample in the latency baseline (EWMA).
const BASELINE_ALPHA: f64 = 0.1;

/// What one finished request says about the cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Request latency.
    pub latency: Duration,
    /// A 429 (whole request or any item) or a timeout.
    pub overloaded: bool,
}

/// The pure AIMD controller.
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: usize,
    min: usize,
    max: usize,
    decrease_factor: f64,
    spike_factor: f64,
    baseline: Option<f64>,
    samples: u32,
    window: usize,
    generation: u64,
}

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Unchanged.
    None,
    /// Increased by one.
    Increased,
    /// Decreased after 429/timeout.
    DecreasedOverload,
    /// Decreased after a latency spike.
    DecreasedLatency,
}

impl Aimd {
    /// A controller with the configured bounds.
    pub fn new(config: &ConcurrencyConfig) -> Self {
        Aimd {
            limit: config.initial.clamp(config.min, config.max),
            min: config.min,
            max: config.max,
            decrease_factor: config.decrease_factor,
            spike_factor: config.latency_spike_factor,
            baseline: None,
            samples: 0,
            window: 0,
            generation: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Current generation; a request remembers it when it starts.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Latency baseline, once enough samples were seen.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.filter(|_| self.samples >= BASELINE_SAMPLES).map(Duration::from_secs_f64)
    }

    /// Feeds one finished request. `started_gen` is [`Aimd::generation`] when it started;
    /// `saturated` says whether the limiter was full when it started.
    pub fn record(&mut self, outcome: Outcome, started_gen: u64, saturated: bool) -> Change {
        let secs = outcome.latency.as_secs_f64();
        let spike = !outcome.overloaded
            && self.baseline().is_some_and(|base| {
                outcome.latency > base.mul_f64(self.spike_factor) && outcome.latency > base + SPIKE_FLOOR
            });
        if !outcome.overloaded {
            self.samples = self.samples.saturating_add(1);
            self.baseline = Some(match self.baseline {
                None => secs,
                Some(b) => b + BASELINE_ALPHA * (secs - b),
            });
        }
        if outcome.overloaded || spike {
            if started_gen < self.generation {
                return Change::None; // this window already paid for the overload
            }
            self.generation += 1;
            self.window = 0;
            let next = ((self.limit as f64) * self.decrease_factor).floor() as usize;
            let next = next.clamp(self.min, self.max);
            if next == self.limit {
                return Change::None;
            }
            self.limit = next;
            return if spike { Change::DecreasedLatency } else { Change::DecreasedOverload };
        }
        if saturated && self.limit < self.max {
            self.window += 1;
            if self.window >= self.limit {
                self.window = 0;
                self.limit += 1;
                return Change::Increased;
            }
        }
        Change::None
    }
}

#[derive(Debug)]
struct State {
    aimd: Aimd,
    in_use: usize,
}

/// Async limiter of in-flight requests driven by an [`Aimd`] controller.
pub struct Limiter {
    state: Mutex<State>,
    notify: Notify,
    on_change: Box<dyn Fn(usize, Change) + Send + Sync>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("state", &self.state).finish_non_exhaustive()
    }
}

/// One in-flight request slot; report its result with [`Permit::finish`], or drop it.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    generation: u64,
    saturated: bool,
    started: Instant,
}

impl Limiter {
    /// A limiter; `on_change(limit, change)` is called on every adjustment (for metrics and logs).
    pub fn new(config: &ConcurrencyConfig, on_change: impl Fn(usize, Change) + Send + Sync + 'static) -> Arc<Self> {
        let aimd = Aimd::new(config);
        on_change(aimd.limit(), Change::None);
        Arc::new(Limiter {
            state: Mutex::new(State { aimd, in_use: 0 }),
            notify: Notify::new(),
            on_change: Box::new(on_change),
        })
    }

    /// Waits for a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            notified.await;
        }
    }

    /// A slot if one is free now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut state = self.state.lock().expect("limiter lock");
        if state.in_use >= state.aimd.limit() {
            return None;
        }
        state.in_use += 1;
        let saturated = state.in_use >= state.aimd.limit();
        Some(Permit { limiter: self.clone(), generation: state.aimd.generation(), saturated, started: Instant::now() })
    }

    /// Current limit.
    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").aimd.limit()
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.state.lock().expect("limiter lock").in_use
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        let state = self.state.lock().expect("limiter lock");
        state.in_use >= state.aimd.limit()
    }
}

impl Permit {
    /// Time since the permit was acquired.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reports one request's result to the controller. A batch keeps its permit through retries
    /// and reports every attempt; the next attempt counts as started after this report.
    pub fn record(&mut self, latency: Duration, overloaded: bool) {
        let outcome = Outcome { latency, overloaded };
        let (limit, change) = {
            let mut state = self.limiter.state.lock().expect("limiter lock");
            let change = state.aimd.record(outcome, self.generation, self.saturated);
            self.generation = state.aimd.generation();
            self.saturated = state.in_use >= state.aimd.limit();
            (state.aimd.limit(), change)
        };
        if change != Change::None {
            (self.limiter.on_change)(limit, change);
            if change == Change::Increased {
                self.limiter.notify.notify_one();
            }
        }
    }

    /// Reports the result of a request that took as long as the permit is held, and frees the slot.
    pub fn finish(mut self, overloaded: bool) {
        let latency = self.started.elapsed();
        self.record(latency, overloaded);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.state.lock().expect("limiter lock").in_use -= 1;
        self.limiter.notify.notify_one();
    }
}

/// Closed while Elasticsearch refuses writes for a reason that waiting does not fix by itself
/// quickly (`cluster_block_exception`: flood-stage disk watermark, read-only index). This is not
/// overload: the concurrency limit is left alone, new requests wait, and the blocked requests probe
/// every `probe_interval`.
#[derive(Debug)]
pub struct WriteGate {
    blocked: watch::Sender<bool>,
    flag: AtomicBool,
    probe_interval: Duration,
}

impl WriteGate {
    /// An open gate.
    pub fn new(probe_interval: Duration) -> Self {
        WriteGate { blocked: watch::channel(false).0, flag: AtomicBool::new(false), probe_interval }
    }

    /// How often a blocked request probes.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// Whether writes are blocked.
    pub fn is_blocked(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Closes the gate. Returns `true` if it was open.
    pub fn block(&self) -> bool {
        let was_open = !self.flag.swap(true, Ordering::Relaxed);
        self.blocked.send_replace(true);
        was_open
    }

    /// Opens the gate. Returns `true` if it was closed.
    pub fn unblock(&self) -> bool {
        let was_closed = self.flag.swap(false, Ordering::Relaxed);
        self.blocked.send_replace(false);
        was_closed
    }

    /// Waits until the gate is open, or until one probe interval passed (then the caller's request
    /// serves as a probe, so that progress never depends on one particular request).
    pub async fn wait_open(&self) {
        if !self.is_blocked() {
            return;
        }
        let mut rx = self.blocked.subscribe();
        let _ = tokio::time::timeout(self.probe_interval, rx.wait_for(|blocked| !blocked)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min: usize, max: usize, initial: usize) -> ConcurrencyConfig {
        ConcurrencyConfig { min, max, initial, decrease_factor: 0.5, latency_spike_factor: 3.0 }
    }

    fn ok(ms: u64) -> Outcome {
        Outcome { latency: Duration::from_millis(ms), overloaded: false }
    }

    #[test]
    fn increases_by_one_per_saturated_window() {
        let mut a = Aimd::new(&config(1, 4, 2));
        assert_eq!(a.record(ok(100), 0, true), Change::None);
        assert_eq!(a.record(ok(100), 0, true), Change::Increased);
        assert_eq!(a.limit(), 3);
        for _ in 0..2 {
            assert_eq!(a.record(ok(100), 0, true), Change::None);
        }
        assert_eq!(a.record(ok(100), 0, true), Change::Increased);
        assert_eq!(a.limit(), 4);
        for _ in 0..20 {
            a.record(ok(100), 0, true);
        }
        assert_eq!(a.limit(), 4, "upper bound");
    }

    #[test]
    fn does_not_grow_without_demand() {
        let mut a = Aimd::new(&config(1, 8, 2));
        for _ in 0..50 {
            a.record(ok(100), 0, false);
        }
        assert_eq!(a.limit(), 2);
    }

    #[test]
    fn halves_once_per_window_on_overload() {
        let mut a = Aimd::new(&config(1, 16, 16));
        let started = a.generation();
        let overload = Outcome { latency: Duration::from_millis(50), overloaded: true };
        assert_eq!(a.record(overload, started, true), Change::DecreasedOverload);
        assert_eq!(a.limit(), 8);
        // Other requests of the same window report 429 too: no further decrease.
        for _ in 0..10 {
            assert_eq!(a.record(overload, started, true), Change::None);
        }
        assert_eq!(a.limit(), 8);
        // A request started after the decrease that still sees 429 decreases again.
        assert_eq!(a.record(overload, a.generation(), true), Change::DecreasedOverload);
        assert_eq!(a.limit(), 4);
        for _ in 0..10 {
            a.record(overload, a.generation(), true);
        }
        assert_eq!(a.limit(), 1, "lower bound");
    }

    #[test]
    fn latency_spike_decreases() {
        let mut a = Aimd::new(&config(1, 16, 8));
        for _ in 0..10 {
            a.record(ok(200), a.generation(), false);
        }
        assert_eq!(a.baseline().map(|b| b.as_millis()), Some(200));
        assert_eq!(a.record(ok(500), a.generation(), true), Change::None, "below spike factor");
        assert_eq!(a.record(ok(2000), a.generation(), true), Change::DecreasedLatency);
        assert_eq!(a.limit(), 4);
    }

    #[test]
    fn small_latencies_are_not_spikes() {
        let mut a = Aimd::new(&config(1, 16, 8));
        for _ in 0..10 {
            a.record(ok(5), a.generation(), false);
        }
        assert_eq!(a.record(ok(60), a.generation(), false), Change::None);
    }

    #[tokio::test]
    async fn limiter_blocks_at_the_limit_and_wakes_on_release() {
        let limiter = Limiter::new(&config(1, 4, 2), |_, _| {});
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        assert!(limiter.is_full());
        assert!(limiter.try_acquire().is_none());
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await.elapsed() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        a.finish(false);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert_eq!(limiter.in_use(), 1);
    }

    #[tokio::test]
    async fn gate_waits_until_unblocked_or_probe_interval() {
        let gate = Arc::new(WriteGate::new(Duration::from_millis(200)));
        gate.wait_open().await;
        assert!(gate.block());
        let started = Instant::now();
        gate.wait_open().await;
        assert!(started.elapsed() >= Duration::from_millis(190));
        // Unblocking wakes a waiter at once: with a probe interval of a minute, only the unblock
        // can end its wait within the (load-tolerant) 10 s bound.
        let gate = Arc::new(WriteGate::new(Duration::from_secs(60)));
        assert!(gate.block());
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait_open().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(gate.unblock());
        tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    }
}
