//! Jittered exponential backoff.
//!
//! Hand-rolled (a dozen lines) rather than the `backoff`/`backon` crates: the retry loops in
//! [`crate::bulk`] and [`crate::dlq`] must interleave backoff with per-item bookkeeping and
//! cancellation, which those crates' closure-driven APIs make awkward, and "equal jitter" is not
//! what they offer by default. Equal jitter (half fixed, half random) keeps every delay at least
//! half the exponential step, so a storm of retries never collapses to ~0 ms and hammers an
//! overloaded cluster, while the random half spreads replicas apart.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// Backoff state of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `retry.initial_backoff`, capped at `retry.max_backoff`.
    pub fn new(config: &RetryConfig) -> Self {
        Backoff { initial: config.initial_backoff, max: config.max_backoff, attempt: 0 }
    }

    /// The exponential step (without jitter) of the next delay.
    pub fn step(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniformly in `[step/2, step]`; the step then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// Starts over after progress.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let config = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: 0,
            give_up_after: Duration::ZERO,
        };
        let mut b = Backoff::new(&config);
        for expected_step in [100, 200, 400, 800, 1000, 1000] {
            let step = Duration::from_millis(expected_step);
            assert_eq!(b.step(), step);
            let d = b.next_delay();
            assert!(d >= step / 2 && d <= step, "{d:?} for step {step:?}");
        }
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(1), "no overflow after many attempts");
        }
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }
}
