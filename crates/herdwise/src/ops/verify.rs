//! The verifier's state: which reads are sampled, the queue of samples waiting to be checked
//! against the origin, and what the checks found (seed 001's "cache verification job").
//!
//! Contract: [`Verifier::wants_sample`] is the only thing a fresh hit pays (a thread-local
//! random draw); a sampled hit is [`Verifier::offer`]ed to a bounded queue (full: the sample is
//! dropped and counted `skipped`, never waited for). Whoever checks samples (the cache's
//! verification task) reports each outcome with [`Verifier::record`]; the verifier keeps the
//! counts, the drift ratio over the last [`DRIFT_WINDOW`] conclusive checks, and the last
//! [`LAST_MISMATCHES`] mismatches, and exports them as metrics. Everything is bounded. Nothing
//! here knows the cache.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::metrics::{CacheMetrics, VerifyOutcome};
use crate::throttle::LogThrottle;

/// Conclusive checks (match or mismatch) the drift ratio is computed over.
pub const DRIFT_WINDOW: usize = 1_000;
/// Mismatches kept for [`VerifyReport::last_mismatches`].
pub const LAST_MISMATCHES: usize = 32;
/// Samples waiting to be checked, at most.
const QUEUE: usize = 256;

/// How a cache checks what it serves against the origin (see
/// [`CacheBuilder::verify`](crate::CacheBuilder::verify)).
///
/// ```
/// use std::time::Duration;
/// let options = herdwise::VerifyOptions::new(0.01)
///     .max_checks_per_second(5.0)
///     .repair(true)
///     .confirm_after(Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub(crate) sample: f64,
    pub(crate) max_checks_per_second: f64,
    pub(crate) repair: bool,
    pub(crate) confirm_after: Duration,
}

impl VerifyOptions {
    /// Samples a fraction `sample` (0 < sample ≤ 1) of the reads answered fresh from L1 or L2.
    /// Defaults: at most 10 origin loads a second for checks, no repair, a mismatch confirmed
    /// after 1 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = herdwise::VerifyOptions::new(0.01)
    ///     .max_checks_per_second(5.0)
    ///     .confirm_after(Duration::from_secs(2))
    ///     .repair(true);
    /// # drop(options);
    /// ```
    pub fn new(sample: f64) -> Self {
        VerifyOptions {
            sample,
            max_checks_per_second: 10.0,
            repair: false,
            confirm_after: Duration::from_secs(1),
        }
    }

    /// The most origin loads the checks may make a second (each check loads once, and a
    /// mismatch once more to confirm it). Samples beyond it are dropped (`skipped`).
    pub fn max_checks_per_second(mut self, loads: f64) -> Self {
        self.max_checks_per_second = loads;
        self
    }

    /// Invalidate (everywhere) a key whose cached value is confirmed to differ from the
    /// origin's (default off: only report).
    pub fn repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }

    /// How long after a first mismatch it is checked again: a value the origin changed a
    /// moment ago, whose invalidation is on its way, is not drift (default 1 s).
    pub fn confirm_after(mut self, wait: Duration) -> Self {
        self.confirm_after = wait;
        self
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !(self.sample > 0.0 && self.sample <= 1.0) {
            return Err(format!(
                "verify: sample must be in (0, 1], got {}",
                self.sample
            ));
        }
        if !(self.max_checks_per_second >= 0.001 && self.max_checks_per_second <= 1e6) {
            return Err(format!(
                "verify: max_checks_per_second must be in [0.001, 1e6], got {}",
                self.max_checks_per_second
            ));
        }
        if self.confirm_after > Duration::from_secs(3600) {
            return Err("verify: confirm_after must be at most an hour".into());
        }
        Ok(())
    }
}

/// A confirmed mismatch: the cache served a value the origin no longer has (listed in
/// [`VerifyReport::last_mismatches`]).
///
/// ```
/// fn alert(report: &herdwise::VerifyReport) {
///     for m in &report.last_mismatches {
///         eprintln!("{} served stale for {:?}", m.key, m.age);
///     }
/// }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Mismatch {
    /// The stored key (namespace, schema and key).
    pub key: String,
    /// How old the cached entry was when the mismatch was confirmed.
    pub age: Duration,
    /// When it was confirmed.
    pub at: SystemTime,
    /// Whether it was repaired (invalidated).
    pub repaired: bool,
}

/// What the verifier found so far (see [`Cache::verify_report`](crate::Cache::verify_report)).
///
/// ```
/// fn drifting(report: &herdwise::VerifyReport) -> bool {
///     report.mismatched > 0 && report.drift_ratio > 0.001
/// }
/// assert!(!drifting(&herdwise::VerifyReport::default()));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Checks that loaded the origin and compared (matched + mismatched + resolved).
    pub checked: u64,
    /// The cached value was the origin's.
    pub matched: u64,
    /// Confirmed mismatches.
    pub mismatched: u64,
    /// First mismatches that were gone when confirmed (the cache changed meanwhile).
    pub resolved: u64,
    /// Origin loads that failed (nothing concluded).
    pub errors: u64,
    /// Samples dropped: the queue was full, the check budget spent, or the origin at its
    /// limit.
    pub skipped: u64,
    /// Mismatched / conclusive checks, over the last 1,000 conclusive checks.
    pub drift_ratio: f64,
    /// The latest confirmed mismatches, oldest first (at most 32).
    pub last_mismatches: Vec<Mismatch>,
}

/// A sampled read: what was served, to check against the origin.
pub(crate) struct Sample<O, V> {
    pub key: O,
    pub stored_key: String,
    pub value: Arc<V>,
}

/// Whether two values are the same for the verifier.
pub(crate) type Same<V> = Arc<dyn Fn(&V, &V) -> bool + Send + Sync>;

pub(crate) struct Verifier<O, V> {
    pub options: VerifyOptions,
    /// A draw below this samples the read.
    threshold: u64,
    pub same: Same<V>,
    tx: mpsc::Sender<Sample<O, V>>,
    /// Taken by the task that checks the samples.
    rx: Mutex<Option<mpsc::Receiver<Sample<O, V>>>>,
    started: AtomicBool,
    /// The check budget, readable from the hit path: no check may start before this many ns
    /// after `base` (so a sampled hit over budget costs one atomic read, not a queued sample).
    base: tokio::time::Instant,
    next_check_ns: AtomicU64,
    /// Samples dropped at the hit because the budget was spent (added to the report's).
    skipped_at_hit: AtomicU64,
    state: Mutex<State>,
    metrics: CacheMetrics,
    /// Mismatch warnings: one a minute.
    pub log_throttle: LogThrottle,
}

#[derive(Default)]
struct State {
    report: VerifyReport,
    /// The last conclusive checks: `true` for a mismatch.
    window: VecDeque<bool>,
    window_mismatches: usize,
    last: VecDeque<Mismatch>,
}

thread_local! {
    /// xorshift64* state for the sampling draw (seeded per thread).
    static DRAW: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

fn draw() -> u64 {
    DRAW.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

impl<O, V> Verifier<O, V> {
    pub fn new(options: VerifyOptions, same: Same<V>, metrics: CacheMetrics) -> Self {
        let threshold = if options.sample >= 1.0 {
            u64::MAX
        } else {
            (options.sample * u64::MAX as f64) as u64
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        Verifier {
            options,
            threshold,
            same,
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
            base: tokio::time::Instant::now(),
            next_check_ns: AtomicU64::new(0),
            skipped_at_hit: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            metrics,
            log_throttle: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// Whether this fresh hit is one to check: drawn at the sampling rate, and the check budget
    /// not spent (else counted as skipped here, without building or queueing the sample).
    #[inline]
    pub fn wants_sample(&self) -> bool {
        if draw() >= self.threshold {
            return false;
        }
        let now = self.base.elapsed().as_nanos() as u64;
        if now < self.next_check_ns.load(Ordering::Relaxed) {
            self.skipped_at_hit.fetch_add(1, Ordering::Relaxed);
            self.metrics.verify(VerifyOutcome::Skipped);
            return false;
        }
        true
    }

    /// The checking task spent the budget until `at`.
    pub fn budget_until(&self, at: tokio::time::Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.next_check_ns.store(ns, Ordering::Relaxed);
    }

    /// Queues a sample (dropped and counted if the queue is full).
    pub fn offer(&self, sample: Sample<O, V>) {
        if self.tx.try_send(sample).is_err() {
            self.record(VerifyOutcome::Skipped, None);
        }
    }

    /// The samples' receiver, for the one task that checks them (`None` once taken).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Sample<O, V>>> {
        // Read first: the common case (running) must not write the shared line on every sample.
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.rx.lock().take()
    }

    /// Gives the receiver back (its task could not start, or ended while the cache lives).
    pub fn return_receiver(&self, rx: mpsc::Receiver<Sample<O, V>>) {
        *self.rx.lock() = Some(rx);
        self.started.store(false, Ordering::Release);
    }

    /// One check's outcome; a mismatch carries its details.
    pub fn record(&self, outcome: VerifyOutcome, mismatch: Option<Mismatch>) {
        self.metrics.verify(outcome);
        let mut state = self.state.lock();
        let report = &mut state.report;
        let conclusive = match outcome {
            VerifyOutcome::Match => {
                report.checked += 1;
                report.matched += 1;
                Some(false)
            }
            VerifyOutcome::Mismatch => {
                report.checked += 1;
                report.mismatched += 1;
                Some(true)
            }
            VerifyOutcome::Resolved => {
                report.checked += 1;
                report.resolved += 1;
                None
            }
            VerifyOutcome::Error => {
                report.errors += 1;
                None
            }
            VerifyOutcome::Skipped => {
                report.skipped += 1;
                None
            }
        };
        if let Some(mismatched) = conclusive {
            state.window.push_back(mismatched);
            state.window_mismatches += usize::from(mismatched);
            if state.window.len() > DRIFT_WINDOW && state.window.pop_front() == Some(true) {
                state.window_mismatches -= 1;
            }
            let ratio = state.window_mismatches as f64 / state.window.len() as f64;
            state.report.drift_ratio = ratio;
            self.metrics.verify_drift(ratio);
        }
        if let Some(mismatch) = mismatch {
            self.metrics
                .verify_mismatch_age(mismatch.age, mismatch.repaired);
            if state.last.len() == LAST_MISMATCHES {
                state.last.pop_front();
            }
            state.last.push_back(mismatch);
        }
    }

    pub fn report(&self) -> VerifyReport {
        let state = self.state.lock();
        let mut report = state.report.clone();
        report.last_mismatches = state.last.iter().cloned().collect();
        report.skipped += self.skipped_at_hit.load(Ordering::Relaxed);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(sample: f64) -> Verifier<u64, String> {
        Verifier::new(
            VerifyOptions::new(sample),
            Arc::new(|a: &String, b: &String| a == b),
            CacheMetrics::new("verify-test"),
        )
    }

    #[test]
    fn samples_about_the_configured_fraction() {
        let v = verifier(0.01);
        let sampled = (0..1_000_000).filter(|_| v.wants_sample()).count();
        assert!((9_000..11_000).contains(&sampled), "{sampled}");
        let all = verifier(1.0);
        assert!((0..1000).all(|_| all.wants_sample()));
    }

    #[test]
    fn drift_is_the_mismatch_share_of_the_last_conclusive_checks() {
        let v = verifier(0.5);
        for _ in 0..900 {
            v.record(VerifyOutcome::Match, None);
        }
        for i in 0..100 {
            let mismatch = Mismatch {
                key: format!("k{i}"),
                age: Duration::from_secs(i),
                at: SystemTime::now(),
                repaired: false,
            };
            v.record(VerifyOutcome::Mismatch, Some(mismatch));
        }
        v.record(VerifyOutcome::Resolved, None);
        v.record(VerifyOutcome::Error, None);
        let report = v.report();
        assert_eq!(
            (report.checked, report.matched, report.mismatched),
            (1001, 900, 100)
        );
        assert!((report.drift_ratio - 0.1).abs() < 1e-9);
        assert_eq!(report.last_mismatches.len(), LAST_MISMATCHES);
        assert_eq!(
            report.last_mismatches.last().map(|m| m.key.as_str()),
            Some("k99")
        );
        // The window slides: 1 000 matches later there is no drift left.
        for _ in 0..DRIFT_WINDOW {
            v.record(VerifyOutcome::Match, None);
        }
        assert_eq!(v.report().drift_ratio, 0.0);
    }

    #[test]
    fn a_full_queue_drops_samples_and_counts_them() {
        let v = verifier(1.0);
        for key in 0..(QUEUE as u64 + 10) {
            v.offer(Sample {
                key,
                stored_key: key.to_string(),
                value: Arc::new(String::new()),
            });
        }
        assert_eq!(v.report().skipped, 10);
        assert!(v.take_receiver().is_some());
        assert!(v.take_receiver().is_none(), "one checking task");
    }

    #[test]
    fn options_out_of_range_are_refused() {
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(VerifyOptions::new(bad).check().is_err());
        }
        assert!(VerifyOptions::new(0.1)
            .max_checks_per_second(0.0)
            .check()
            .is_err());
        assert!(VerifyOptions::new(0.1).check().is_ok());
    }
}
