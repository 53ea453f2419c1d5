//! Invalidations that failed against L2 are retried from a bounded in-process queue instead of
//! being dropped: a lost invalidation is stale data until the TTL.
//!
//! Contract:
//! - The queue holds each invalidation once (a key or tag queued again while it waits is not
//!   queued twice, but its age starts over) and at most [`QUEUE_CAPACITY`] of them; past that, an
//!   invalidation is dead-lettered (counted and logged), never queued without bound.
//! - Until a key's queued delete has gone through (or been given up, or is older than
//!   `max_age`), [`RetryQueue::is_unapplied`]
//!   says so: the read path does not take that key's L2 value, which is the one the invalidation
//!   is there to remove. A retry that started before the key was queued again does not clear it.
//! - One worker per cache drains it in batches of up to [`BATCH`], [`CONCURRENCY`] calls in
//!   flight at once (the multiplexed connection pipelines them), as soon as a call can succeed:
//!   the first item of a batch goes alone, as the breaker's probe if the breaker is open; when it
//!   succeeds the rest of the batch follows at once. A failed first item goes to the back of the
//!   queue (one invalidation that keeps failing does not hold up the others) and the worker
//!   waits with exponential backoff (100 ms to 2 s), or until the remote tier is reported
//!   recovered.
//! - Failures do not use up an invalidation: it is given up (dead-lettered) only once it is older
//!   than `max_age`, the longest life of any entry it could still invalidate — past that there
//!   is nothing left for it to remove.
//! - The worker is started by the first push inside a Tokio runtime and ends with its cache (or
//!   its runtime: the next push starts a new one).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::metrics::CacheMetrics;

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
    /// Announce that this stored key was invalidated (L2 already was).
    AnnounceKey(Box<str>),
    /// Announce that every stored key under this prefix was invalidated (L2 already was).
    AnnouncePrefix(Box<str>),
    /// Walk L2 again and delete every stored key under this prefix (a walk that failed part
    /// way), then announce it.
    Prefix(Box<str>),
}

impl Retry {
    fn name(&self) -> &str {
        match self {
            Retry::Key(k)
            | Retry::Tag(k)
            | Retry::AnnounceKey(k)
            | Retry::AnnouncePrefix(k)
            | Retry::Prefix(k) => k,
        }
    }
}

/// An invalidation taken from the queue.
struct Queued {
    what: Retry,
    since: Instant,
    /// For a key: its unapplied sequence number when taken.
    seq: u64,
}

#[derive(Default)]
struct State {
    order: VecDeque<Retry>,
    /// Queued invalidations and since when (the latest push).
    queued: HashMap<Retry, Instant>,
    /// Keys whose delete has not gone through, with the sequence number of their last push.
    /// Each holds at most `max_age` (past it the key's old entries have expired, and a retry
    /// lost with its worker cannot keep the key unreadable here).
    unapplied: HashMap<Box<str>, (u64, Instant)>,
    seq: u64,
}

/// What the queue's worker needs from the cache it serves (the cache implements it; the queue
/// never sees the cache's state).
pub(crate) trait RetryHost: Send + Sync + 'static {
    /// The queue this host owns.
    fn retries(&self) -> &RetryQueue;
    /// Told on every recovery of the remote tier (the worker tries again at once).
    fn recoveries(&self) -> watch::Receiver<u64>;
    /// Applies `what` once more (the store call and what follows it: L1, copies, the
    /// announcement); `true` if the store confirmed it.
    fn reapply<'a>(&'a self, what: &'a Retry) -> BoxFuture<'a, bool>;
}

/// The queue of one cache.
pub(crate) struct RetryQueue {
    state: Mutex<State>,
    /// `unapplied.len()`, read without the lock on the read path.
    unapplied: AtomicUsize,
    wake: Notify,
    worker: AtomicBool,
    /// Taken by the worker and not settled yet (part of the depth: with the store frozen, a
    /// batch waits out its deadlines in flight, and the queue alone would read 0).
    in_flight: AtomicUsize,
    max_age: Duration,
    metrics: CacheMetrics,
}

impl RetryQueue {
    /// A queue whose invalidations are given up once older than `max_age`.
    pub fn new(max_age: Duration, metrics: CacheMetrics) -> Self {
        RetryQueue {
            state: Mutex::new(State::default()),
            unapplied: AtomicUsize::new(0),
            wake: Notify::new(),
            worker: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_age,
            metrics,
        }
    }

    /// Invalidations waiting.
    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    /// Invalidations not applied yet: waiting, or being retried now.
    pub fn unfinished(&self) -> usize {
        self.state.lock().order.len() + self.in_flight.load(Ordering::Acquire)
    }

    /// Whether a delete of `stored_key` by this instance is still to go through.
    pub fn is_unapplied(&self, stored_key: &str) -> bool {
        self.unapplied.load(Ordering::Acquire) > 0
            && self
                .state
                .lock()
                .unapplied
                .get(stored_key)
                .is_some_and(|(_, since)| since.elapsed() <= self.max_age)
    }

    /// A write stored a newer value of `stored_key` in L2: a queued delete of it has nothing
    /// left to remove (it would only remove the newer value) and is dropped, and the key is
    /// applied. A retry of it already in flight runs on (at worst a miss) but is not queued
    /// again. One atomic load while no delete is unapplied.
    ///
    /// `since` is [`RetryQueue::mark`] taken before the write went to L2: a delete queued after
    /// it (an invalidation that began once the write had landed) is newer than the write, and
    /// stays.
    pub fn supersede(&self, stored_key: &str, since: u64) {
        if self.unapplied.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut state = self.state.lock();
        match state.unapplied.get(stored_key) {
            Some((seq, _)) if *seq <= since => {
                state.unapplied.remove(stored_key);
            }
            _ => return,
        }
        self.unapplied
            .store(state.unapplied.len(), Ordering::Release);
        let what = Retry::Key(stored_key.into());
        if state.queued.remove(&what).is_some() {
            state.order.retain(|queued| queued != &what);
            self.report_depth(&state);
        }
    }

    fn report_depth(&self, state: &State) {
        let depth = state.order.len() + self.in_flight.load(Ordering::Acquire);
        self.metrics.retry_queue_depth.set(depth as f64);
    }

    /// `n` items left the worker's hands (settled, or back in the queue, which reports).
    fn landed(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    /// The queue's position now: deletes queued later have a higher sequence number (see
    /// [`RetryQueue::supersede`]).
    /// One atomic load while no delete is unapplied (0 then: nothing older to supersede).
    pub fn mark(&self) -> u64 {
        if self.unapplied.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.state.lock().seq
    }

    /// Queues an invalidation for retries; dead-letters it if the queue is full.
    pub fn push<H: RetryHost>(&self, host: &Arc<H>, what: Retry) {
        self.ensure_worker(host);
        self.metrics.invalidation_retries_queued.increment(1);
        if self.enqueue(&what) {
            self.wake.notify_one();
            return;
        }
        self.metrics.invalidations_dead_lettered.increment(1);
        tracing::error!(
            invalidation = what.name(),
            "invalidation retry queue full: dropped (the entries' TTL bounds the staleness)"
        );
    }

    /// Queues `what` (or starts its age over if it is queued already); `false` if the queue is
    /// full.
    fn enqueue(&self, what: &Retry) -> bool {
        let mut state = self.state.lock();
        let now = Instant::now();
        if let Some(since) = state.queued.get_mut(what) {
            *since = now;
        } else if state.order.len() < QUEUE_CAPACITY {
            state.queued.insert(what.clone(), now);
            state.order.push_back(what.clone());
            self.report_depth(&state);
        } else {
            return false;
        }
        if let Retry::Key(key) = what {
            state.seq += 1;
            let seq = state.seq;
            if state.unapplied.len() >= QUEUE_CAPACITY {
                let max_age = self.max_age;
                state
                    .unapplied
                    .retain(|_, (_, since)| since.elapsed() <= max_age);
            }
            state.unapplied.insert(key.clone(), (seq, now));
            self.unapplied
                .store(state.unapplied.len(), Ordering::Release);
        }
        true
    }

    fn ensure_worker<H: RetryHost>(&self, host: &Arc<H>) {
        if self.worker.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the next push inside a runtime starts it
        };
        if !self.worker.swap(true, Ordering::AcqRel) {
            let host: Weak<dyn RetryHost> = Arc::downgrade(host) as Weak<dyn RetryHost>;
            // Made before the task: one its runtime drops unrun still clears the flag.
            let running = WorkerRunning(host.clone());
            runtime.spawn(work(host, running));
        }
    }

    /// Up to `n` queued invalidations, oldest first; those older than `max_age` are returned
    /// apart (to be dead-lettered).
    fn take(&self, n: usize) -> (Vec<Queued>, Vec<Queued>) {
        let mut state = self.state.lock();
        let (mut batch, mut expired) = (Vec::new(), Vec::new());
        while batch.len() < n {
            let Some(what) = state.order.pop_front() else {
                break;
            };
            // In flight from here: the same invalidation failing again meanwhile is queued
            // anew (it needs a delete after its own time).
            let since = state.queued.remove(&what).unwrap_or_else(Instant::now);
            let seq = match &what {
                Retry::Key(key) => state.unapplied.get(key).map_or(0, |(seq, _)| *seq),
                _ => 0,
            };
            let item = Queued { what, since, seq };
            if item.since.elapsed() > self.max_age {
                expired.push(item);
            } else {
                batch.push(item);
            }
        }
        // In the worker's hands until it lets go of them (see `InFlight`).
        self.in_flight.fetch_add(batch.len(), Ordering::AcqRel);
        self.report_depth(&state);
        (batch, expired)
    }

    /// Puts failed items back at the front, in their order (unless queued again meanwhile).
    /// (They leave the worker's hands under the queue's lock: the depth and
    /// `unfinished` never count them twice, nor miss them.)
    fn put_back(&self, items: Vec<Queued>) {
        let mut state = self.state.lock();
        self.landed(items.len());
        for item in items.into_iter().rev() {
            if !state.queued.contains_key(&item.what) && !superseded(&state, &item) {
                state.queued.insert(item.what.clone(), item.since);
                state.order.push_front(item.what);
            }
        }
        self.report_depth(&state);
    }

    /// Puts a failed item back at the end (unless queued again meanwhile).
    fn put_last(&self, item: Queued) {
        let mut state = self.state.lock();
        self.landed(1);
        if !state.queued.contains_key(&item.what) && !superseded(&state, &item) {
            state.queued.insert(item.what.clone(), item.since);
            state.order.push_back(item.what);
        }
        self.report_depth(&state);
    }

    /// `item` went through or was given up: its key is applied unless queued again since.
    fn settle(&self, item: &Queued) {
        let Retry::Key(key) = &item.what else {
            return;
        };
        let mut state = self.state.lock();
        if state
            .unapplied
            .get(key)
            .is_some_and(|(seq, _)| *seq == item.seq)
        {
            state.unapplied.remove(key);
            self.unapplied
                .store(state.unapplied.len(), Ordering::Release);
        }
    }
}

/// Queues its invalidation for retries when dropped armed: the caller was cancelled (or failed)
/// before the store confirmed it.
pub(crate) struct RetryOnDrop<'a, H: RetryHost> {
    host: &'a Arc<H>,
    what: Option<Retry>,
}

impl<'a, H: RetryHost> RetryOnDrop<'a, H> {
    pub fn new(host: &'a Arc<H>, what: Retry) -> Self {
        RetryOnDrop {
            host,
            what: Some(what),
        }
    }

    /// The store confirmed it: nothing to retry.
    pub fn disarm(mut self) {
        self.what = None;
    }
}

impl<H: RetryHost> Drop for RetryOnDrop<'_, H> {
    fn drop(&mut self) {
        if let Some(what) = self.what.take() {
            self.host.retries().push(self.host, what);
        }
    }
}

/// Clears the worker flag when the worker ends (its cache is gone, or its runtime shut down), so
/// that the next push starts one again.
struct WorkerRunning(Weak<dyn RetryHost>);

impl Drop for WorkerRunning {
    fn drop(&mut self) {
        if let Some(host) = self.0.upgrade() {
            host.retries().worker.store(false, Ordering::Release);
        }
    }
}

/// Drains the queue until the cache is gone.
async fn work(weak: Weak<dyn RetryHost>, running: WorkerRunning) {
    let _running = running;
    let mut recoveries = match weak.upgrade() {
        Some(host) => host.recoveries(),
        None => return,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(host) = weak.upgrade() else {
            return;
        };
        let queue = host.retries();
        if queue.len() == 0 {
            // Re-checked now and then, so the worker ends with its cache (a push meanwhile
            // leaves a permit: it is not missed).
            let _ = tokio::time::timeout(Duration::from_secs(1), queue.wake.notified()).await;
            continue;
        }
        let (batch, expired) = queue.take(BATCH);
        for item in expired {
            queue.dead_letter(&item);
        }
        if batch.is_empty() {
            continue;
        }
        // Held by a guard while in flight: if the worker is dropped mid-batch (its runtime
        // shuts down), what is not settled goes back to the queue.
        let batch = InFlight::new(queue, batch);
        let first = 0;
        // The first alone: if the remote tier is still down, the rest is not tried.
        if !host.reapply(batch.what(first)).await {
            batch.requeue_first_last();
            drop(host);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = recoveries.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        batch.succeeded(first);
        backoff = FIRST_BACKOFF;
        let (host_ref, batch_ref) = (&*host, &batch);
        futures::stream::iter(1..batch.len())
            .map(|i| async move { (i, host_ref.reapply(batch_ref.what(i)).await) })
            .buffered(CONCURRENCY)
            .for_each(|(i, ok)| async move {
                if ok {
                    batch_ref.succeeded(i);
                }
            })
            .await;
        // The failed ones go back to the front, in order, as the guard drops.
        drop(batch);
    }
}

/// A batch taken from the queue and not yet settled: what is left when it drops (failed, or
/// never tried because the worker was dropped) goes back to the front of the queue.
struct InFlight<'q> {
    queue: &'q RetryQueue,
    items: Vec<Mutex<Option<Queued>>>,
    /// The `what` of each item, readable while the item is being settled.
    whats: Vec<Retry>,
}

impl<'q> InFlight<'q> {
    fn new(queue: &'q RetryQueue, batch: Vec<Queued>) -> Self {
        let whats = batch.iter().map(|q| q.what.clone()).collect();
        InFlight {
            queue,
            items: batch.into_iter().map(|q| Mutex::new(Some(q))).collect(),
            whats,
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn what(&self, i: usize) -> &Retry {
        &self.whats[i]
    }

    fn succeeded(&self, i: usize) {
        if let Some(item) = self.items[i].lock().take() {
            self.queue.landed(1);
            self.queue.succeeded(&item);
            let state = self.queue.state.lock();
            self.queue.report_depth(&state);
        }
    }

    /// The first item failed: it goes to the back (one invalidation that keeps failing does not
    /// hold up the others), the rest back to the front as they were.
    fn requeue_first_last(self) {
        if let Some(first) = self.items.first().and_then(|m| m.lock().take()) {
            self.queue.put_last(first); // (lands it)
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let left: Vec<Queued> = self
            .items
            .iter_mut()
            .filter_map(|m| m.get_mut().take())
            .collect();
        if !left.is_empty() {
            self.queue.put_back(left); // (lands them)
        }
    }
}

impl RetryQueue {
    fn succeeded(&self, item: &Queued) {
        self.settle(item);
        self.metrics.invalidation_retries_succeeded.increment(1);
    }

    fn dead_letter(&self, item: &Queued) {
        self.settle(item);
        self.metrics.invalidations_dead_lettered.increment(1);
        // (A tag's pending local invalidation ends by its own life, which a newer invalidation
        // of the tag extends: it is not cleared here.)
        tracing::error!(
            invalidation = item.what.name(),
            "invalidation still failing after the longest entry life: given up (its entries expired)"
        );
    }
}

/// A key's delete taken from the queue whose key a newer write has since covered (see
/// [`RetryQueue::supersede`]): not to be queued again.
fn superseded(state: &State, item: &Queued) -> bool {
    matches!(&item.what, Retry::Key(key) if !state.unapplied.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_depth_counts_what_the_worker_holds() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let queue = metrics::with_local_recorder(&recorder, || {
            RetryQueue::new(Duration::from_secs(60), CacheMetrics::new("t"))
        });
        let depth = || -> f64 {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find_map(|(key, _, _, value)| match value {
                    metrics_util::debugging::DebugValue::Gauge(v)
                        if key.key().name() == crate::metrics::RETRY_QUEUE_DEPTH =>
                    {
                        Some(v.into_inner())
                    }
                    _ => None,
                })
                .unwrap_or(f64::NAN)
        };
        for k in ["a", "b", "c"] {
            assert!(queue.enqueue(&Retry::Key(k.into())));
        }
        queue.report_depth(&queue.state.lock());
        assert_eq!(depth(), 3.0);
        let (batch, _) = queue.take(10);
        assert_eq!(depth(), 3.0, "taken by the worker, not done: still waiting");
        let in_flight = InFlight::new(&queue, batch);
        in_flight.succeeded(1);
        assert_eq!(depth(), 2.0);
        in_flight.requeue_first_last();
        assert_eq!(depth(), 2.0, "back in the queue: a and c");
        assert_eq!(queue.len(), 2);
        let (batch, _) = queue.take(10);
        drop(InFlight::new(&queue, batch));
        assert_eq!(depth(), 2.0, "put back when the worker let go");
    }

    #[test]
    fn a_newer_write_supersedes_a_queued_delete_and_one_in_flight() {
        let queue = RetryQueue::new(Duration::from_secs(60), CacheMetrics::new("t"));
        for k in ["a", "b"] {
            assert!(queue.enqueue(&Retry::Key(k.into())));
        }
        let before = queue.mark();
        assert!(queue.enqueue(&Retry::Key("c".into())));
        queue.supersede("c", before);
        assert!(
            queue.is_unapplied("c"),
            "a delete queued after the write began stays"
        );
        queue.supersede("a", before);
        assert!(!queue.is_unapplied("a"));
        assert!(queue.is_unapplied("b"));
        let (batch, _) = queue.take(10);
        let names: Vec<&str> = batch.iter().map(|q| q.what.name()).collect();
        assert_eq!(names, ["b", "c"], "the superseded delete left the queue");
        // In flight when the write lands: it fails, and is not queued again.
        queue.supersede("b", queue.mark());
        queue.supersede("c", queue.mark());
        queue.put_back(batch);
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.unapplied.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_queued_invalidation_is_held_once_and_old_ones_come_out_expired() {
        let queue = RetryQueue::new(Duration::from_millis(30), CacheMetrics::new("t"));
        for what in [Retry::Key("a".into()), Retry::Tag("t".into())] {
            assert!(queue.enqueue(&what));
            assert!(queue.enqueue(&what));
        }
        assert_eq!(queue.len(), 2);
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

    #[test]
    fn queuing_again_starts_the_age_over() {
        let queue = RetryQueue::new(Duration::from_millis(60), CacheMetrics::new("t"));
        let key = Retry::Key("a".into());
        assert!(queue.enqueue(&key));
        std::thread::sleep(Duration::from_millis(40));
        assert!(queue.enqueue(&key));
        std::thread::sleep(Duration::from_millis(40));
        let (batch, expired) = queue.take(10);
        assert_eq!((batch.len(), expired.len()), (1, 0));
    }

    #[test]
    fn a_key_stays_unapplied_until_its_latest_delete_went_through() {
        let queue = RetryQueue::new(Duration::from_secs(60), CacheMetrics::new("t"));
        assert!(!queue.is_unapplied("a"));
        assert!(queue.enqueue(&Retry::Key("a".into())));
        assert!(queue.is_unapplied("a"));
        let (mut batch, _) = queue.take(10);
        let older = batch.remove(0);
        // Invalidated (and failed) again while the older retry is in flight.
        assert!(queue.enqueue(&Retry::Key("a".into())));
        queue.settle(&older);
        assert!(
            queue.is_unapplied("a"),
            "the older delete does not cover the newer invalidation"
        );
        let (mut batch, _) = queue.take(10);
        queue.settle(&batch.remove(0));
        assert!(!queue.is_unapplied("a"));
        assert_eq!(queue.unapplied.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_failing_first_item_goes_to_the_back() {
        let queue = RetryQueue::new(Duration::from_secs(60), CacheMetrics::new("t"));
        for k in ["a", "b", "c"] {
            assert!(queue.enqueue(&Retry::Key(k.into())));
        }
        let (batch, _) = queue.take(10);
        let mut items = batch.into_iter();
        let first = items.next().unwrap();
        queue.put_back(items.collect());
        queue.put_last(first);
        let (batch, _) = queue.take(10);
        let order: Vec<&str> = batch.iter().map(|q| q.what.name()).collect();
        assert_eq!(order, ["b", "c", "a"]);
    }
}
