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

/// An invalidation that failed against L2.
#[derive(Debug)]
pub(crate) enum Retry {
    /// Delete this stored key.
    Key(Box<str>),
    /// Invalidate this tag.
    Tag(Box<str>),
}

impl Retry {
    fn name(&self) -> &str {
        match self {
            Retry::Key(k) | Retry::Tag(k) => k,
        }
    }
}

/// The queue of one cache.
pub(crate) struct RetryQueue {
    tx: mpsc::Sender<Retry>,
    /// Taken by the worker when it starts (on first use, inside the runtime).
    rx: Mutex<Option<mpsc::Receiver<Retry>>>,
}

impl RetryQueue {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        RetryQueue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queues an invalidation for retries; dead-letters it if the queue is full.
    pub fn push<V: Send + Sync + 'static>(&self, inner: &Arc<Inner<V>>, what: Retry) {
        if let Some(rx) = self.rx.lock().take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(work(Arc::downgrade(inner), rx));
                }
                Err(_) => *self.rx.lock() = Some(rx),
            }
        }
        inner.metrics.invalidation_retries_queued.increment(1);
        if let Err(err) = self.tx.try_send(what) {
            inner.metrics.invalidations_dead_lettered.increment(1);
            let what = match err {
                mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
            };
            tracing::error!(
                invalidation = what.name(),
                "invalidation retry queue full: dropped (the entries' TTL bounds the staleness)"
            );
        }
    }
}

/// Retries each queued invalidation with backoff until it succeeds or runs out of attempts.
async fn work<V: Send + Sync + 'static>(inner: Weak<Inner<V>>, mut rx: mpsc::Receiver<Retry>) {
    while let Some(what) = rx.recv().await {
        let mut backoff = FIRST_BACKOFF;
        let mut done = false;
        for _ in 0..MAX_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if attempt(&inner, &what).await {
                inner.metrics.invalidation_retries_succeeded.increment(1);
                done = true;
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if !done {
            if let Some(inner) = inner.upgrade() {
                inner.metrics.invalidations_dead_lettered.increment(1);
                tracing::error!(invalidation = what.name(), "invalidation failed {MAX_ATTEMPTS} times: dropped (the entries' TTL bounds the staleness)");
            }
        }
    }
}

/// One more try; `true` if it went through.
async fn attempt<V: Send + Sync + 'static>(inner: &Inner<V>, what: &Retry) -> bool {
    match what {
        Retry::Key(key) => {
            if inner.remote.delete(key).await.is_err() {
                return false;
            }
            crate::replicas::delete_replicas(inner, key).await;
            inner.l1.invalidate(key);
            if let Some(backplane) = inner.backplane.as_ref() {
                backplane
                    .publish(&inner.remote, crate::backplane::Invalidation::Key(key))
                    .await;
            }
            true
        }
        Retry::Tag(tag) => crate::tags::bump(inner, tag).await.is_ok(),
    }
}
