//! Per-namespace rate limits at the source (`rate_limit.*`): the noisy-neighbour answer before Kafka
//! and Elasticsearch see a burst.
//!
//! One token bucket per namespace for lines and one for bytes (refilled continuously, holding at most
//! `burst` worth of tokens). Over the limit:
//! - `delay` (default): that namespace's files are not read until the buckets refill; other
//!   namespaces keep flowing, and nothing is lost (the kubelet's files hold the backlog).
//! - `drop`: records are dropped (acknowledged at once, counted per namespace), and when the next
//!   record of the file is admitted, a record tagged `rate_limited` saying how many lines and bytes
//!   were dropped goes first, so the loss is visible in Elasticsearch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_common::config::{Problems, Validate};

/// What happens to records over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pause the namespace's files until the buckets refill (nothing lost).
    #[default]
    Delay,
    /// Drop the records, counted, with a `rate_limited` summary record.
    Drop,
}

/// A limit: `0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limit {
    /// Lines per second (0: unlimited).
    pub lines_per_second: u64,
    /// Bytes of message per second (0: unlimited).
    pub bytes_per_second: u64,
    /// Over the limit: `delay` or `drop`; default the section's `action`.
    pub action: Option<Action>,
}

/// `rate_limit.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Lines per second of every namespace without an override (0: unlimited).
    pub lines_per_second: u64,
    /// Message bytes per second of every namespace without an override (0: unlimited).
    pub bytes_per_second: u64,
    /// Over the limit: `delay` (default) or `drop`.
    pub action: Action,
    /// How much above the rate a namespace may send at once, as time at the full rate.
    #[serde(with = "humantime_serde")]
    pub burst: Duration,
    /// Per-namespace limits (exact namespace names), replacing the default for those.
    pub namespaces: BTreeMap<String, Limit>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            lines_per_second: 0,
            bytes_per_second: 0,
            action: Action::Delay,
            burst: Duration::from_secs(1),
            namespaces: BTreeMap::new(),
        }
    }
}

impl RateLimitConfig {
    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        let on = |l: &Limit| l.lines_per_second > 0 || l.bytes_per_second > 0;
        on(&self.default_limit()) || self.namespaces.values().any(on)
    }

    /// The limit of namespaces without an override.
    pub fn default_limit(&self) -> Limit {
        Limit {
            lines_per_second: self.lines_per_second,
            bytes_per_second: self.bytes_per_second,
            action: Some(self.action),
        }
    }
}

impl Validate for RateLimitConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.burst >= Duration::from_millis(100) && self.burst <= Duration::from_secs(3600),
            "burst",
            "must be between 100ms and 1h",
        );
        for ns in self.namespaces.keys() {
            p.check(!ns.is_empty(), "namespaces", "namespace names must not be empty");
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    cap: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64, burst: Duration, now: Instant) -> Option<Self> {
        (rate > 0).then(|| {
            let cap = (rate as f64 * burst.as_secs_f64()).max(1.0);
            Bucket { rate: rate as f64, cap, tokens: cap, at: now }
        })
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.at = now;
    }
}

/// The buckets of one namespace.
#[derive(Debug, Clone)]
struct Buckets {
    lines: Option<Bucket>,
    bytes: Option<Bucket>,
    action: Action,
}

impl Buckets {
    fn open(&mut self, now: Instant) -> bool {
        let mut open = true;
        for b in [&mut self.lines, &mut self.bytes].into_iter().flatten() {
            b.refill(now);
            open &= b.tokens > 0.0;
        }
        open
    }

    fn take(&mut self, bytes: usize) {
        if let Some(b) = &mut self.lines {
            b.tokens -= 1.0;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= bytes as f64;
        }
    }
}

/// The limiter of the read path (single-threaded).
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    namespaces: hashbrown::HashMap<String, Buckets>,
}

/// The decision for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it.
    Admit,
    /// Drop it (`drop` action, over the limit).
    Drop,
}

impl RateLimiter {
    /// A limiter for `config` (no limits: everything is admitted).
    pub fn new(config: &RateLimitConfig) -> Self {
        RateLimiter { config: config.clone(), namespaces: hashbrown::HashMap::new() }
    }

    fn buckets(&mut self, namespace: &str, now: Instant) -> &mut Buckets {
        // One lookup per call (`entry_ref` hashes once and allocates the key only on insert; std's
        // `entry` needs an owned key, and `get_mut` then `insert` hashes twice).
        let config = &self.config;
        self.namespaces.entry_ref(namespace).or_insert_with(|| {
            let limit = config.namespaces.get(namespace).copied().unwrap_or_else(|| config.default_limit());
            Buckets {
                lines: Bucket::new(limit.lines_per_second, config.burst, now),
                bytes: Bucket::new(limit.bytes_per_second, config.burst, now),
                action: limit.action.unwrap_or(config.action),
            }
        })
    }

    /// `delay`: whether files of `namespace` may be read now (`true` for `drop` namespaces, which
    /// decide per record).
    pub fn may_read(&mut self, namespace: &str, now: Instant) -> bool {
        let b = self.buckets(namespace, now);
        b.action == Action::Drop || b.open(now)
    }

    /// Takes tokens for one record of `bytes`; `Drop` when the namespace drops and is over its limit.
    pub fn record(&mut self, namespace: &str, bytes: usize, now: Instant) -> Decision {
        let b = self.buckets(namespace, now);
        if b.action == Action::Drop && !b.open(now) {
            return Decision::Drop;
        }
        b.take(bytes);
        Decision::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lines: u64, action: Action) -> RateLimitConfig {
        RateLimitConfig { lines_per_second: lines, action, ..Default::default() }
    }

    #[test]
    fn drop_admits_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&config(100, Action::Drop));
        let admitted = (0..1000).filter(|_| l.record("ns", 10, t0) == Decision::Admit).count();
        assert_eq!(admitted, 100, "one second of burst");
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..1000).filter(|_| l.record("ns", 10, t1) == Decision::Admit).count();
        assert_eq!(admitted, 50, "half a second of rate");
    }

    #[test]
    fn delay_pauses_reading_until_refilled_and_namespaces_are_independent() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&config(10, Action::Delay));
        for _ in 0..15 {
            assert_eq!(l.record("noisy", 1, t0), Decision::Admit, "delay never drops");
        }
        assert!(!l.may_read("noisy", t0));
        assert!(l.may_read("quiet", t0));
        assert!(!l.may_read("noisy", t0 + Duration::from_millis(400)), "still 1 token in debt");
        assert!(l.may_read("noisy", t0 + Duration::from_millis(600)));
    }

    #[test]
    fn per_namespace_overrides_and_bytes() {
        let mut c = config(0, Action::Delay);
        c.namespaces
            .insert("batch".into(), Limit { lines_per_second: 0, bytes_per_second: 1000, action: Some(Action::Drop) });
        assert!(c.enabled());
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&c);
        let admitted = (0..100).filter(|_| l.record("batch", 100, t0) == Decision::Admit).count();
        assert_eq!(admitted, 10);
        assert_eq!((0..100).filter(|_| l.record("web", 100, t0) == Decision::Admit).count(), 100);
        assert!(!RateLimitConfig::default().enabled());
    }
}
