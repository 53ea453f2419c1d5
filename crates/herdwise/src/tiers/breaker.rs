//! The circuit breaker on the remote tier: when Redis is down *or slow*, stop calling it.
//!
//! Closed → Open when, over a short sliding window, enough calls were made and either the share
//! that failed (errors and timeouts) or the share that was slow reaches its threshold — a
//! slow-but-alive Redis trips it too, not only a dead one — or at once when several calls in a
//! row failed or were slow (so a sudden outage trips it within one deadline, however many good
//! calls the window still remembers). While open, no call is made at all
//! (callers fail fast and the cache reads L1 → origin). After `open_for`, the breaker is
//! half-open: exactly one call goes through as a probe; its success closes the breaker, its
//! failure (or slowness) opens it again. Every transition is logged and counted.
//!
//! The window is made of fixed buckets (`BUCKETS` per window) so recording is O(1) and old calls
//! age out without a timer.

use std::time::{Duration, Instant};

use std::sync::Arc;

use parking_lot::Mutex;

use crate::metrics::CacheMetrics;
use crate::tiers::recovery::Recovery;

/// Buckets per window.
const BUCKETS: usize = 10;

/// When the breaker trips and how long it stays open.
///
/// ```
/// use std::time::Duration;
/// let config = herdwise::BreakerConfig::default()
///     .window(Duration::from_secs(2))
///     .failure_ratio(0.3)
///     .slow_call(Duration::from_millis(20), 0.8)
///     .open_for(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct BreakerConfig {
    window: Duration,
    min_calls: u32,
    failure_ratio: f64,
    slow_call: Option<Duration>,
    slow_ratio: f64,
    consecutive: u32,
    open_for: Duration,
}

impl Default for BreakerConfig {
    /// A 1 s window, at least 10 calls, opens at 50 % failures or 50 % calls slower than
    /// `slow_call` (by default: set from the store deadline, see `CacheBuilder`), stays open 2 s.
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(1),
            min_calls: 10,
            failure_ratio: 0.5,
            slow_call: None,
            slow_ratio: 0.5,
            consecutive: 5,
            open_for: Duration::from_secs(2),
        }
    }
}

impl BreakerConfig {
    /// The sliding window calls are judged over (default 1 s): short, so that a fault trips the
    /// breaker within a fraction of a second whatever the traffic before it.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Fewest calls in the window before the breaker may open (default 10).
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.min_calls = calls;
        self
    }

    /// Share of failed calls (errors and timeouts) that opens the breaker (default 0.5).
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self
    }

    /// A call slower than `threshold` is slow; a share `ratio` of slow calls opens the breaker
    /// (default: half the store deadline, 0.5).
    pub fn slow_call(mut self, threshold: Duration, ratio: f64) -> Self {
        self.slow_call = Some(threshold);
        self.slow_ratio = ratio;
        self
    }

    /// Calls in a row that failed or were slow that open the breaker at once (default 5).
    pub fn consecutive_failures(mut self, calls: u32) -> Self {
        self.consecutive = calls;
        self
    }

    /// How long the breaker stays open before a probe (default 2 s).
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = duration;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let ratio_ok = |r: f64| r > 0.0 && r <= 1.0;
        if self.window.is_zero() || self.open_for.is_zero() {
            return Err("circuit_breaker: window and open_for must be positive".into());
        }
        if !ratio_ok(self.failure_ratio) || !ratio_ok(self.slow_ratio) {
            return Err("circuit_breaker: ratios must be within (0, 1]".into());
        }
        let max = crate::tiers::freshness::MAX_DURATION;
        if self.window > max || self.open_for > max || self.slow_call.is_some_and(|t| t > max) {
            return Err(
                "circuit_breaker: window, open_for and slow_call are at most 10 years".into(),
            );
        }
        if self.min_calls == 0 || self.consecutive == 0 {
            return Err(
                "circuit_breaker: min_calls and consecutive_failures must be positive".into(),
            );
        }
        Ok(())
    }

    /// The slow-call threshold, defaulting to half of `deadline`.
    pub(crate) fn with_deadline(mut self, deadline: Duration) -> Self {
        if self.slow_call.is_none() {
            self.slow_call = Some(deadline / 2);
        }
        self
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// No calls until the given time.
    Open,
    /// One probe call is allowed.
    HalfOpen,
}

impl BreakerState {
    /// As a gauge value: 0 closed, 1 open, 2 half-open.
    /// As a metric label.
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Which bucket period this is (`elapsed / bucket length`).
    period: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// When the breaker opened (for `open_for`).
    opened_at: Instant,
    /// Whether the half-open probe has been handed out.
    probing: bool,
    /// Failed or slow calls in a row.
    streak: u32,
    buckets: [Bucket; BUCKETS],
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Call, and record the outcome.
    Call,
    /// Call as the half-open probe, and record the outcome.
    Probe,
    /// Do not call.
    Rejected,
}

/// One breaker, shared by every call of a cache's remote tier.
pub(crate) struct Breaker {
    config: BreakerConfig,
    start: Instant,
    inner: Mutex<Inner>,
    namespace: String,
    metrics: CacheMetrics,
    /// This breaker's state gauge (one per store node).
    gauge: metrics::Gauge,
    /// The store node this breaker guards, for logs (`None`: the whole store).
    node: Option<usize>,
    /// Told when a probe closes the breaker: the remote tier is back.
    recovery: Arc<Recovery>,
}

impl Breaker {
    #[cfg(test)]
    pub fn new(
        config: BreakerConfig,
        namespace: &str,
        metrics: CacheMetrics,
        recovery: Arc<Recovery>,
    ) -> Self {
        let gauge = metrics.breaker_state.clone();
        Self::for_node(config, namespace, metrics, recovery, gauge, None)
    }

    /// A breaker for node `node` of a sharded store, reporting its state on `gauge`.
    pub fn for_node(
        config: BreakerConfig,
        namespace: &str,
        metrics: CacheMetrics,
        recovery: Arc<Recovery>,
        gauge: metrics::Gauge,
        node: Option<usize>,
    ) -> Self {
        gauge.set(BreakerState::Closed.gauge());
        let now = Instant::now();
        Breaker {
            config,
            start: now,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                opened_at: now,
                probing: false,
                streak: 0,
                buckets: [Bucket::default(); BUCKETS],
            }),
            namespace: namespace.to_string(),
            metrics,
            gauge,
            node,
            recovery,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().state
    }

    /// Whether a call may be made now.
    pub fn permit(&self) -> Permit {
        let mut inner = self.inner.lock();
        match inner.state {
            BreakerState::Closed => Permit::Call,
            BreakerState::Open => {
                if inner.opened_at.elapsed() < self.config.open_for {
                    return Permit::Rejected;
                }
                self.transition(&mut inner, BreakerState::HalfOpen);
                inner.probing = true;
                Permit::Probe
            }
            BreakerState::HalfOpen if inner.probing => Permit::Rejected,
            BreakerState::HalfOpen => {
                inner.probing = true;
                Permit::Probe
            }
        }
    }

    /// Whether a call that took `took` is a slow one.
    pub fn is_slow(&self, took: Duration) -> bool {
        self.config.slow_call.is_some_and(|t| took >= t)
    }

    /// A call made under `permit` was dropped after `took` without an outcome (a request
    /// timeout, a cancelled task). If it had already been slow, it counts as a slow call (so
    /// callers with short timeouts still trip the breaker on a frozen store, and a probe they
    /// abandon re-opens it); otherwise it says nothing, and a probe hands its turn back so the
    /// next call probes. Either way the breaker never waits for a probe that no longer runs.
    pub fn abandon(&self, permit: Permit, took: Duration) {
        if self.config.slow_call.is_some_and(|t| took >= t) {
            return self.record(permit, false, took);
        }
        if permit != Permit::Probe {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.probing = false;
        }
    }

    /// Records a call made under `permit`: whether it failed, and how long it took.
    pub fn record(&self, permit: Permit, failed: bool, took: Duration) {
        let slow = self.config.slow_call.is_some_and(|t| took >= t);
        let mut inner = self.inner.lock();
        if permit == Permit::Probe {
            inner.probing = false;
            if failed || slow {
                inner.opened_at = Instant::now();
                self.transition(&mut inner, BreakerState::Open);
            } else {
                inner.buckets = [Bucket::default(); BUCKETS];
                self.transition(&mut inner, BreakerState::Closed);
                self.recovery.recovered();
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            // A call let through before the breaker opened: it says nothing new.
            return;
        }
        inner.streak = if failed || slow { inner.streak + 1 } else { 0 };
        let period = self.period();
        let bucket = &mut inner.buckets[(period % BUCKETS as u64) as usize];
        if bucket.period != period {
            *bucket = Bucket {
                period,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
        bucket.slow += u32::from(slow);
        let (calls, failures, slow_calls) = inner
            .buckets
            .iter()
            .filter(|b| period.saturating_sub(b.period) < BUCKETS as u64)
            .fold((0, 0, 0), |(c, f, s), b| {
                (c + b.calls, f + b.failures, s + b.slow)
            });
        let share = |n: u32| f64::from(n) / f64::from(calls);
        let by_ratio = calls >= self.config.min_calls
            && (share(failures) >= self.config.failure_ratio
                || share(slow_calls) >= self.config.slow_ratio);
        if by_ratio || inner.streak >= self.config.consecutive {
            inner.streak = 0;
            inner.opened_at = Instant::now();
            self.transition(&mut inner, BreakerState::Open);
        }
    }

    fn period(&self) -> u64 {
        let bucket = (self.config.window / BUCKETS as u32).max(Duration::from_millis(1));
        (self.start.elapsed().as_nanos() / bucket.as_nanos()) as u64
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        if inner.state == to {
            return;
        }
        let from = inner.state;
        inner.state = to;
        self.gauge.set(to.gauge());
        self.metrics.breaker_transition(to.label());
        match to {
            BreakerState::Open => tracing::warn!(
                namespace = %self.namespace, node = ?self.node, ?from,
                "circuit breaker open: remote tier skipped"
            ),
            _ => tracing::info!(
                namespace = %self.namespace, node = ?self.node, ?from, ?to, "circuit breaker"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> Breaker {
        let recovery = Arc::new(Recovery::new(Duration::from_secs(1)));
        Breaker::new(config, "t", CacheMetrics::new("t"), recovery)
    }

    fn config() -> BreakerConfig {
        BreakerConfig::default()
            .min_calls(4)
            .slow_call(Duration::from_millis(10), 0.5)
            .open_for(Duration::from_millis(50))
    }

    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn opens_on_failures_rejects_then_probes_once_and_closes_on_success() {
        let b = breaker(config());
        for _ in 0..3 {
            b.record(b.permit(), false, FAST);
        }
        for _ in 0..3 {
            b.record(b.permit(), true, FAST);
        }
        assert_eq!(b.state(), BreakerState::Open, "3 of 6 failed");
        assert_eq!(b.permit(), Permit::Rejected);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.permit(), Permit::Rejected, "one probe at a time");
        b.record(Permit::Probe, false, FAST);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.permit(), Permit::Call);
    }

    #[test]
    fn a_failed_or_slow_probe_opens_it_again() {
        let b = breaker(config());
        for _ in 0..4 {
            b.record(b.permit(), true, FAST);
        }
        for probe_took in [FAST, Duration::from_millis(20)] {
            std::thread::sleep(Duration::from_millis(60));
            let permit = b.permit();
            assert_eq!(permit, Permit::Probe);
            b.record(permit, probe_took == FAST, probe_took);
            assert_eq!(b.state(), BreakerState::Open);
        }
    }

    #[test]
    fn an_abandoned_probe_hands_its_turn_to_the_next_call() {
        let b = breaker(config());
        for _ in 0..4 {
            b.record(b.permit(), true, FAST);
        }
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.permit();
        assert_eq!(probe, Permit::Probe);
        b.abandon(probe, FAST);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let next = b.permit();
        assert_eq!(next, Permit::Probe, "the next call probes");
        // Abandoned after it was already slow: as good as a slow probe.
        b.abandon(next, Duration::from_millis(20));
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(60));
        let last = b.permit();
        assert_eq!(last, Permit::Probe);
        b.record(last, false, FAST);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn calls_abandoned_while_slow_still_trip_it() {
        let b = breaker(config());
        for _ in 0..5 {
            b.abandon(b.permit(), Duration::from_millis(15));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn slow_calls_trip_it_without_any_error() {
        let b = breaker(config());
        for _ in 0..4 {
            b.record(b.permit(), false, Duration::from_millis(30));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn stays_closed_below_the_thresholds_and_minimum() {
        let b = breaker(config());
        for _ in 0..3 {
            b.record(b.permit(), true, FAST);
        }
        assert_eq!(b.state(), BreakerState::Closed, "fewer than min_calls");
        let b = breaker(config());
        for i in 0..100 {
            b.record(b.permit(), i % 3 == 2, FAST);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a third failing is below 50 %"
        );
    }

    #[test]
    fn old_failures_age_out_of_the_window() {
        let b = breaker(config().window(Duration::from_millis(100)));
        for _ in 0..3 {
            b.record(b.permit(), true, FAST);
        }
        std::thread::sleep(Duration::from_millis(120));
        for _ in 0..4 {
            b.record(b.permit(), false, FAST);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failures_in_a_row_trip_it_whatever_the_window_remembers() {
        let b = breaker(config().consecutive_failures(3));
        for _ in 0..1_000 {
            b.record(b.permit(), false, FAST);
        }
        b.record(b.permit(), true, FAST);
        b.record(b.permit(), true, FAST);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(b.permit(), true, FAST);
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "3 in a row after 1000 good calls"
        );
    }

    #[test]
    fn bad_configurations_are_rejected() {
        assert!(BreakerConfig::default()
            .failure_ratio(0.0)
            .validate()
            .is_err());
        assert!(BreakerConfig::default().min_calls(0).validate().is_err());
        assert!(BreakerConfig::default()
            .open_for(Duration::ZERO)
            .validate()
            .is_err());
        assert!(BreakerConfig::default().validate().is_ok());
    }
}
