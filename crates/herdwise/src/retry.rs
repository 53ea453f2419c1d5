//! Invalidations that failed against L2 are retried from a bounded in-process queue with
//! exponential backoff, instead of being dropped: a lost invalidation is stale data until the
//! TTL. What cannot be retried (the queue is full, or every attempt failed) is counted as
//! dead-lettered and logged, never silently lost.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::cache::Inner;

/// Most invalidations waiting for a retry.
pub(crate) const QUEUE_CAPACITY: usize = 10_000;
/// Attempts per invalidation before it is dead-lettered.
pub(crate) const MAX_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The queue of one cache.
pub(crate) struct RetryQueue {
    tx: mpsc::Sender<Box<str>>,
    /// Taken by the worker when it starts (on first use, inside the runtime).
    rx: Mutex<Option<mpsc::Receiver<Box<str>>>>,
}

impl RetryQueue {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        RetryQueue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queues `stored_key` for invalidation retries; dead-letters it if the queue is full.
    pub fn push<V: Send + Sync + 'static>(&self, inner: &Arc<Inner<V>>, stored_key: &str) {
        if let Some(rx) = self.rx.lock().take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(work(Arc::downgrade(inner), rx));
                }
                Err(_) => *self.rx.lock() = Some(rx),
            }
        }
        inner.metrics.invalidation_retries_queued.increment(1);
        if self.tx.try_send(stored_key.into()).is_err() {
            inner.metrics.invalidations_dead_lettered.increment(1);
            tracing::error!(
                key = stored_key,
                "invalidation retry queue full: dropped (the entry's TTL bounds the staleness)"
            );
        }
    }
}

/// Retries each queued invalidation with backoff until it succeeds or runs out of attempts.
async fn work<V: Send + Sync + 'static>(inner: Weak<Inner<V>>, mut rx: mpsc::Receiver<Box<str>>) {
    while let Some(key) = rx.recv().await {
        let mut backoff = FIRST_BACKOFF;
        let mut done = false;
        for _ in 0..MAX_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if inner.remote.delete(&key).await.is_ok() {
                inner.l1.invalidate(&key);
                if let Some(backplane) = inner.backplane.as_ref() {
                    backplane
                        .publish(&inner.remote, crate::backplane::Invalidation::Key(&key))
                        .await;
                }
                inner.metrics.invalidation_retries_succeeded.increment(1);
                done = true;
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if !done {
            if let Some(inner) = inner.upgrade() {
                inner.metrics.invalidations_dead_lettered.increment(1);
                tracing::error!(key = %key, "invalidation failed {MAX_ATTEMPTS} times: dropped (the entry's TTL bounds the staleness)");
            }
        }
    }
}
