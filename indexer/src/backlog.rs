//! Back-pressure accounting between the consumer and the bulk stage: bytes dispatched and not
//! settled, and batches waiting for a concurrency slot. The consumer thread stops reading (and
//! after `kafka.pause_after` pauses its partitions) when they exceed the configured bounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Bytes and batches between the consumer and Elasticsearch, shared with the consumer thread,
/// which stops reading (and after `kafka.pause_after` pauses its partitions) when they exceed the
/// configured bounds.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicUsize,
    queued: AtomicUsize,
    /// Wakes the consumer thread waiting in [`Backlog::wait_progress`].
    progress: Mutex<()>,
    progressed: Condvar,
}

impl Backlog {
    /// Bytes dispatched and not settled.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Batches dispatched by the consumer that have no concurrency slot yet (queued for the
    /// dispatcher or waiting for a slot).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Counts a dispatched batch: its bytes, and one more batch without a slot.
    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A dispatched batch got its concurrency slot (or was dropped before getting one).
    pub fn started(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.notify();
    }

    /// A batch is done (settled or abandoned).
    pub fn release(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.notify();
    }

    fn notify(&self) {
        // Taking the lock orders this change before a waiter's check (no lost wake-up).
        drop(self.progress.lock().expect("backlog lock"));
        self.progressed.notify_all();
    }

    /// Blocks until a batch starts or is released, at most `timeout`, unless `done()` (checked
    /// under the lock) is already true.
    pub fn wait_progress(&self, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let guard = self.progress.lock().expect("backlog lock");
        if done(self) {
            return;
        }
        drop(self.progressed.wait_timeout(guard, timeout).expect("backlog lock"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn backlog_counts_queued_batches_and_wakes_the_consumer() {
        let backlog = Arc::new(Backlog::default());
        backlog.add(100);
        backlog.add(50);
        assert_eq!((backlog.bytes(), backlog.queued()), (150, 2));
        // Already done: no wait at all.
        let started = Instant::now();
        backlog.wait_progress(Duration::from_secs(10), |b| b.queued() == 2);
        assert!(started.elapsed() < Duration::from_secs(5));
        // A batch getting its slot wakes the waiter long before the timeout.
        let waker = {
            let backlog = backlog.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                backlog.started();
            })
        };
        let started = Instant::now();
        while backlog.queued() == 2 {
            backlog.wait_progress(Duration::from_secs(10), |b| b.queued() < 2);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        waker.join().unwrap();
        backlog.started();
        backlog.release(100);
        backlog.release(50);
        assert_eq!((backlog.bytes(), backlog.queued()), (0, 0));
    }
}
