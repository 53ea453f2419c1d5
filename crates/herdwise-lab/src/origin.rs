//! The simulated database: latency, a concurrency limit, and exact counters.
//!
//! This is the "database melts" model from the seeds: a database is sized for the cached
//! steady-state load; past `max_concurrency` queries in flight it either rejects (an overloaded
//! database failing queries) or queues (latency grows). Every query is counted with atomics, in
//! total and per second of the run, so "origin calls" is a fact, not an estimate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// What the origin does past its concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overload {
    /// Fail the query at once.
    Reject,
    /// Wait for a slot.
    Queue,
}

/// How the origin behaves.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OriginConfig {
    /// Fixed part of a query's latency.
    pub base_latency: Duration,
    /// Uniform random extra latency, `0..=jitter`.
    pub jitter: Duration,
    /// Queries in flight before `overload` applies.
    pub max_concurrency: usize,
    /// What happens past the limit.
    pub overload: Overload,
    /// Bytes per value.
    pub value_size: usize,
}

/// Counts a query out of the queue however it leaves (served, or cancelled while waiting).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A query the origin refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("origin overloaded ({0} queries in flight)")]
pub struct Overloaded(pub usize);

/// The simulated database.
pub struct Origin {
    config: OriginConfig,
    slots: Arc<Semaphore>,
    created: Instant,
    /// When the measured run began, in ns after `created`: the per-second counters count from
    /// there (a preload between creating the origin and the run must not shift them).
    run_start_ns: AtomicU64,
    queries: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Queries waiting for a slot (`Overload::Queue`): the database's queue.
    waiting: AtomicUsize,
    /// The fixed part of a query's latency now, µs (starts at `base_latency`; see
    /// [`Origin::set_base_latency`]).
    base_latency_us: AtomicU64,
    /// Queries started in each second of the run.
    per_second: Vec<AtomicU64>,
    rejected_per_second: Vec<AtomicU64>,
}

impl Origin {
    /// A fresh origin whose per-second counters cover `seconds` (later queries count in total only).
    pub fn new(config: OriginConfig, seconds: usize) -> Arc<Self> {
        let base_latency_us = config.base_latency.as_micros() as u64;
        Arc::new(Origin {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            config,
            created: Instant::now(),
            run_start_ns: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            base_latency_us: AtomicU64::new(base_latency_us),
            per_second: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            rejected_per_second: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The value the origin holds for `key` (deterministic, so readers can check it).
    pub fn value_of(&self, key: u64) -> Vec<u8> {
        let mut v = vec![0u8; self.config.value_size];
        let tag = key.to_le_bytes();
        for (i, b) in v.iter_mut().enumerate() {
            *b = tag[i % 8];
        }
        v
    }

    /// Counts the per-second figures from `at` on (the start of the measured run).
    pub fn begin_run(&self, at: Instant) {
        let offset = at.saturating_duration_since(self.created).as_nanos() as u64;
        self.run_start_ns.store(offset, Ordering::Relaxed);
    }

    /// One query.
    pub async fn load(&self, key: u64) -> Result<Vec<u8>, Overloaded> {
        let since_created = self.created.elapsed().as_nanos() as u64;
        let since_run = since_created.saturating_sub(self.run_start_ns.load(Ordering::Relaxed));
        let second = (since_run / 1_000_000_000) as usize;
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.per_second.get(second) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let permit = match self.config.overload {
            Overload::Queue => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let waiting = Waiting(&self.waiting);
                let permit = self.slots.clone().acquire_owned().await.ok();
                drop(waiting);
                permit
            }
            Overload::Reject => self.slots.clone().try_acquire_owned().ok(),
        };
        let Some(_permit) = permit else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = self.rejected_per_second.get(second) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            return Err(Overloaded(self.in_flight.load(Ordering::Relaxed)));
        };
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        // (Counted down however the query ends: a cancelled one too.)
        let in_flight = Waiting(&self.in_flight);
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.config.jitter.mul_f64(rand::random::<f64>())
        };
        let base = Duration::from_micros(self.base_latency_us.load(Ordering::Relaxed));
        tokio::time::sleep(base + jitter).await;
        drop(in_flight);
        Ok(self.value_of(key))
    }

    /// Makes every query from now on take `base` (plus the jitter): a database that slows down.
    pub fn set_base_latency(&self, base: Duration) {
        self.base_latency_us
            .store(base.as_micros() as u64, Ordering::Relaxed);
    }

    /// Queries waiting for a slot now (the database's queue; `Overload::Queue` only).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Queries running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Total queries (rejected ones included).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Queries refused for overload.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Most queries in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Queries per second of the run, and rejections per second.
    pub fn timeline(&self) -> (Vec<u64>, Vec<u64>) {
        (
            self.per_second
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            self.rejected_per_second
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &OriginConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(overload: Overload) -> OriginConfig {
        OriginConfig {
            base_latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            max_concurrency: 2,
            overload,
            value_size: 16,
        }
    }

    #[tokio::test]
    async fn counts_exactly_and_rejects_past_the_limit() {
        let origin = Origin::new(config(Overload::Reject), 10);
        let results = futures::future::join_all((0..5).map(|k| origin.load(k))).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
        assert_eq!(origin.queries(), 5);
        assert_eq!(origin.rejected(), 3);
        assert_eq!(origin.peak_in_flight(), 2);
        assert_eq!(origin.timeline().0.iter().sum::<u64>(), 5);
    }

    #[tokio::test]
    async fn queues_past_the_limit() {
        let origin = Origin::new(config(Overload::Queue), 10);
        let results = futures::future::join_all((0..5).map(|k| origin.load(k))).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(origin.rejected(), 0);
        assert_eq!(origin.peak_in_flight(), 2);
        assert_eq!(results[3].as_ref().unwrap(), &origin.value_of(3));
    }
}
