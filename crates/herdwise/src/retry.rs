//! Invalidations that failed against L2 are retried from a bounded in-process queue instead of
//! being dropped: a lost invalidation is stale data until the TTL.
//!
//! Contract:
//! - The queue holds each invalidation once (a key or tag queued again while it waits is not
//!   queued twice) and at most [`QUEUE_CAPACITY`] of them; past that, an invalidation is
//!   dead-lettered (counted and logged), never queued without bound.
//! - One worker per cache drains it in batches of up to [`BATCH`], [`CONCURRENCY`] calls in
//!   flight at once (the multiplexed connection pipelines them), as soon as a call can succeed:
//!   the first item of a batch goes alone, as the breaker's probe if the breaker is open; when it
//!   succeeds the rest of the batch follows at once. A failed batch waits with exponential
//!   backoff (100 ms to 2 s), or until the remote tier is reported recovered.
//! - Failures do not use up an invalidation: it is given up (dead-lettered) only once it is older
//!   than `max_age`, the longest life of any entry it could still invalidate — past that there
//!   is nothing left for it to remove.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cache::Inner;

/// Most invalidations waiting for a retry.
pub(crate) const QUEUE_CAPACITY: usize = 10_000;
/// Invalidations taken from the queue in one go.
const BATCH: usize = 1_000;
/// Retries in flight at once.
const CONCURRENCY: usize = 64;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// An invalidation that failed against L2.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

struct Queued {
    what: Retry,
    since: Instant,
}

#[derive(Default)]
struct State {
    order: VecDeque<Queued>,
    queued: HashSet<Retry>,
}

/// The queue of one cache.
pub(crate) struct RetryQueue {
    state: Mutex<State>,
    wake: Notify,
    worker: AtomicBool,
    max_age: Duration,
}

impl RetryQueue {
    /// A queue whose invalidations are given up once older than `max_age`.
    pub fn new(max_age: Duration) -> Self {
        RetryQueue {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            worker: AtomicBool::new(false),
            max_age,
        }
    }

    /// Invalidations waiting.
    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    /// Queues an invalidation for retries; dead-letters it if the queue is full.
    pub fn push<V: Send + Sync + 'static>(&self, inner: &Arc<Inner<V>>, what: Retry) {
        self.ensure_worker(inner);
        inner.metrics.invalidation_retries_queued.increment(1);
        {
            let mut state = self.state.lock();
            if state.queued.contains(&what) {
                return;
            }
            if state.order.len() < QUEUE_CAPACITY {
                state.queued.insert(what.clone());
                state.order.push_back(Queued {
                    what,
                    since: Instant::now(),
                });
                drop(state);
                self.wake.notify_one();
                return;
            }
        }
        inner.metrics.invalidations_dead_lettered.increment(1);
        tracing::error!(
            invalidation = what.name(),
            "invalidation retry queue full: dropped (the entries' TTL bounds the staleness)"
        );
    }

    fn ensure_worker<V: Send + Sync + 'static>(&self, inner: &Arc<Inner<V>>) {
        if self.worker.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the next push inside a runtime starts it
        };
        if !self.worker.swap(true, Ordering::AcqRel) {
            runtime.spawn(work(Arc::downgrade(inner)));
        }
    }

    /// Up to `n` queued invalidations, oldest first; those older than `max_age` are returned
    /// apart (to be dead-lettered).
    fn take(&self, n: usize) -> (Vec<Queued>, Vec<Retry>) {
        let mut state = self.state.lock();
        let (mut batch, mut expired) = (Vec::new(), Vec::new());
        while batch.len() < n {
            let Some(item) = state.order.pop_front() else {
                break;
            };
            // In flight from here: the same invalidation failing again meanwhile is queued
            // anew (it needs a delete after its own time).
            state.queued.remove(&item.what);
            if item.since.elapsed() > self.max_age {
                expired.push(item.what);
            } else {
                batch.push(item);
            }
        }
        (batch, expired)
    }

    /// Puts failed items back at the front, in their order (unless queued again meanwhile).
    fn put_back(&self, items: Vec<Queued>) {
        let mut state = self.state.lock();
        for item in items.into_iter().rev() {
            if state.queued.insert(item.what.clone()) {
                state.order.push_front(item);
            }
        }
    }
}

/// Drains the queue until the cache is gone.
async fn work<V: Send + Sync + 'static>(weak: Weak<Inner<V>>) {
    let mut recoveries = match weak.upgrade() {
        Some(inner) => inner.recovery.subscribe(),
        None => return,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let queue = &inner.retries;
        if queue.len() == 0 {
            // Re-checked now and then, so the worker ends with its cache (a push meanwhile
            // leaves a permit: it is not missed).
            let _ = tokio::time::timeout(Duration::from_secs(1), queue.wake.notified()).await;
            continue;
        }
        let (batch, expired) = queue.take(BATCH);
        for what in expired {
            dead_letter(&inner, &what);
        }
        if batch.is_empty() {
            continue;
        }
        let mut items = batch.into_iter();
        let Some(first) = items.next() else {
            continue;
        };
        // The first alone: if the remote tier is still down, the rest is not tried.
        if !attempt(&inner, &first.what).await {
            let mut back = vec![first];
            back.extend(items);
            queue.put_back(back);
            drop(inner);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = recoveries.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        succeeded(&inner, &first.what);
        backoff = FIRST_BACKOFF;
        let inner_ref = &*inner;
        let failed: Vec<Queued> = futures::stream::iter(items)
            .map(|item| async move {
                let ok = attempt(inner_ref, &item.what).await;
                (item, ok)
            })
            .buffered(CONCURRENCY)
            .filter_map(|(item, ok)| async move {
                if ok {
                    succeeded(inner_ref, &item.what);
                    None
                } else {
                    Some(item)
                }
            })
            .collect()
            .await;
        if !failed.is_empty() {
            queue.put_back(failed);
        }
    }
}

fn succeeded<V>(inner: &Inner<V>, _what: &Retry) {
    inner.metrics.invalidation_retries_succeeded.increment(1);
}

fn dead_letter<V>(inner: &Inner<V>, what: &Retry) {
    inner.metrics.invalidations_dead_lettered.increment(1);
    if let Retry::Tag(tag) = what {
        // Every entry the tag could still invalidate has expired: this instance may serve the
        // tag's (newer) entries again.
        inner.tags.drop_pending(tag);
    }
    tracing::error!(
        invalidation = what.name(),
        "invalidation still failing after the longest entry life: given up (its entries expired)"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_invalidation_is_held_once_and_old_ones_come_out_expired() {
        let queue = RetryQueue::new(Duration::from_millis(30));
        {
            let mut state = queue.state.lock();
            for what in [Retry::Key("a".into()), Retry::Tag("t".into())] {
                state.queued.insert(what.clone());
                state.order.push_back(Queued {
                    what,
                    since: Instant::now(),
                });
            }
        }
        let (batch, expired) = queue.take(1);
        assert_eq!((batch.len(), expired.len()), (1, 0));
        queue.put_back(batch);
        assert_eq!(queue.len(), 2);
        std::thread::sleep(Duration::from_millis(40));
        let (batch, expired) = queue.take(10);
        assert!(batch.is_empty());
        assert_eq!(expired.len(), 2);
        assert!(queue.state.lock().queued.is_empty());
    }
}
