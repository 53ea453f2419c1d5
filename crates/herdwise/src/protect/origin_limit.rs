//! Origin protection: a bound on one cache's loader calls at once, so that a cache outage (or a
//! cold start) never turns into a database outage.
//!
//! Contract. [`OriginLimit`] grants slots ([`OriginPermit`]) while fewer than its current cap
//! are out, lets a caller wait for one for at most `max_wait`, and says nothing about what a
//! caller does beyond that (the read path answers stale, or sheds with `Error::Overloaded`).
//! A permit is a guard: dropped — the load finished, failed, panicked or was cancelled — it
//! frees its place and wakes one waiter. A load that ran reports its latency and whether it
//! failed with [`OriginPermit::observe`]; a cancelled one reports nothing.
//!
//! The cap is either fixed, or learned ([`AdaptiveLimit`], the default), from the loads alone:
//! - samples are taken in windows of at least 16 loads and 20 ms; a window in which 10 % or
//!   more of the loads failed (errors, timeouts, panics: an overloaded origin refusing or
//!   dropping work) cuts the limit by 20 %;
//! - otherwise the window's mean latency is compared with a baseline, the lowest window mean
//!   of the last 5 s (the origin's latency when the fewest loads queue, as Vegas and BBR
//!   estimate a path's delay): above `tolerance` × baseline, queueing — the limit shrinks in
//!   proportion (by at most a quarter per window); within it, a window that used at least three
//!   quarters of the limit grows it, doubling until the first congestion signal ("slow
//!   start"), then by √limit per window. An origin that got slower for good (a slower
//!   database, a heavier query mix) is relearned by the next probe (below), or within 5 s
//!   when the limit does not bind, and the limit grows back;
//! - a limit that binds keeps a queue at the origin, so its windows never show the unqueued
//!   latency and a baseline taken from them would creep up. Every 2 s, when the last window
//!   used the limit, the cap drops to a quarter of it (at least `min`) until 16 loads granted
//!   after the drop have finished (and 20 ms; at most 1 s): a probe, like BBR's ProbeRTT,
//!   whose mean replaces the baseline (one far above it, more than 1.25×, only once the next
//!   probe agrees: it may have met a queue of others that did not probe) (below the origin's capacity while the limits of all instances
//!   together stay within 4× of it, which the tolerance keeps them to).
//!   The probes are aligned to the wall clock (multiples of 2 s since the Unix epoch), so that
//!   every instance sharing an origin drains it at the same moment and each measures the
//!   origin with the others' queues gone too. No probe runs while the remote tier is
//!   unavailable (the outage cap below rules then, and a read must not be shed for a probe);
//! - while the remote tier is unavailable (callers say so: a breaker not closed, the recovery
//!   window after an outage, or their own call to the remote tier failed, as the first reads
//!   to meet a failing Redis do before its breaker opens; three reports within a second make
//!   it every caller's for a second, fewer cap only the callers that made them), the cap is also
//!   held to `outage_headroom` × the mean concurrency seen while it was healthy (a time
//!   average, over about a minute, at least `min`): the origin was sized for the load the cache lets through, and an outage of the
//!   cache is no evidence that it can take more. With under a second of healthy history this
//!   part does not apply.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Loads per sample window, at least.
const WINDOW_SAMPLES: u32 = 16;
/// A sample window's length, at least.
const WINDOW_TIME: Duration = Duration::from_millis(20);
/// The baseline is the lowest window mean of this long (kept in 1 s buckets).
const BASELINE_HORIZON: Duration = Duration::from_secs(5);
/// How often a binding limit probes the unqueued latency (aligned to the wall clock).
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe gives up (and measures nothing) after this long.
const PROBE_MAX: Duration = Duration::from_secs(1);
/// How long reports of an unavailable remote tier hold for every caller.
const OUTAGE_HOLD: Duration = Duration::from_secs(1);
/// Reports within [`OUTAGE_HOLD`] that make an outage every caller's (fewer cap only the
/// callers that made them).
const OUTAGE_QUORUM: u32 = 3;
/// A probe may raise the baseline by this factor at most, unless the next probe agrees.
const PROBE_RAISE: f64 = 1.25;
/// The healthy-concurrency average's time constant.
const HEALTHY_TAU_SECS: f64 = 60.0;

/// The learned origin limit's settings (the default origin protection of every cache).
///
/// ```
/// use std::time::Duration;
/// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
///     .adaptive_origin_limit(
///         herdwise::AdaptiveLimit::default()
///             .bounds(2, 256)
///             .max_wait(Duration::from_millis(200)),
///     )
///     .build()
///     .unwrap();
/// assert_eq!(cache.origin_limit(), Some(32));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveLimit {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) initial: usize,
    pub(crate) tolerance: f64,
    pub(crate) outage_headroom: f64,
    pub(crate) max_wait: Duration,
}

impl Default for AdaptiveLimit {
    /// Between 4 and 1,024 loads at once, starting at 32; queueing is latency above 1.5× the
    /// baseline; during a remote-tier outage at most 1.5× the healthy concurrency (the
    /// origin's load stays within 1.5× of its steady rate); a load past
    /// the limit waits up to 500 ms for a slot.
    fn default() -> Self {
        AdaptiveLimit {
            min: 4,
            max: 1_024,
            initial: 32,
            tolerance: 1.5,
            outage_headroom: 1.5,
            max_wait: Duration::from_millis(500),
        }
    }
}

impl AdaptiveLimit {
    /// The range the limit stays in (default 4..=1,024).
    pub fn bounds(mut self, min: usize, max: usize) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// The limit before anything is learned (default 32; kept within the bounds).
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial;
        self
    }

    /// How many times its baseline latency a load may take before the limit counts it as
    /// queueing and shrinks (default 1.5; at least 1).
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// While the remote tier is unavailable, loads at once are held to this many times the
    /// mean concurrency of healthy times (default 1.5; at least 1).
    pub fn outage_headroom(mut self, headroom: f64) -> Self {
        self.outage_headroom = headroom;
        self
    }

    /// How long a load past the limit waits for a slot before `Error::Overloaded` (default
    /// 500 ms; zero: no wait).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The settings' error, naming the option, if any.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.min == 0 || self.min > self.max {
            return Err("adaptive_origin_limit bounds must satisfy 1 <= min <= max".into());
        }
        if self.max > MAX_LIMIT {
            return Err(format!(
                "adaptive_origin_limit max must be at most {MAX_LIMIT}"
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 1.0) {
            return Err("adaptive_origin_limit tolerance must be a number >= 1".into());
        }
        if !(self.outage_headroom.is_finite() && self.outage_headroom >= 1.0) {
            return Err("adaptive_origin_limit outage_headroom must be a number >= 1".into());
        }
        Ok(())
    }
}

/// The largest limit, fixed or learned.
pub(crate) const MAX_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fixed(usize),
    Adaptive(AdaptiveLimit),
}

/// The limit of one cache.
#[derive(Debug, Clone)]
pub(crate) struct OriginLimit {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    kind: Kind,
    max_wait: Duration,
    state: Mutex<State>,
    /// One waiter woken per freed slot; all of them when the limit grows.
    freed: Notify,
    /// The learned limit, for the metric (set when it changes).
    gauge: Option<metrics::Gauge>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    limit: f64,
    window: Window,
    /// The lowest window mean latency (s) of each second of the last [`BASELINE_HORIZON`],
    /// oldest first: the baseline is the lowest of them.
    lows: std::collections::VecDeque<(Instant, f64)>,
    /// A congestion signal has been seen: growth is additive from then on.
    congested: bool,
    /// The last finished window used the limit (peak ≥ ¾ of it).
    binding: bool,
    /// The next probe's time, and the probe running, if any.
    next_probe: Instant,
    probe: Option<Probe>,
    /// The remote tier is unavailable: a caller said so within [`OUTAGE_HOLD`].
    outage: bool,
    outage_seen: Option<Instant>,
    /// Reports of an unavailable remote tier: since when, how many (a quorum makes them the
    /// shared state; one odd timeout does not).
    outage_reports: Option<(Instant, u32)>,
    /// A clean probe that measured well above the baseline, not yet confirmed by the next.
    probe_high: Option<f64>,
    healthy: Healthy,
}

/// A probe of the unqueued latency: loads granted since `started`, under a quarter of the cap.
#[derive(Debug)]
struct Probe {
    started: Instant,
    samples: u32,
    latency_sum: f64,
    failures: u32,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    samples: u32,
    latency_sum: f64,
    failures: u32,
    /// Most loads at once during the window.
    peak: usize,
}

/// The time-averaged concurrency of healthy times.
#[derive(Debug)]
struct Healthy {
    last_change: Instant,
    /// In-flight × seconds, and seconds, not yet folded into `mean`.
    area: f64,
    pending: f64,
    total: f64,
    mean: f64,
}

/// What asking for a slot gave.
pub(crate) enum Slot {
    /// Call the loader; the slot is freed when this drops.
    Granted(OriginPermit),
    /// Every slot is taken; the caller may answer stale, or wait.
    Busy,
}

/// One loader call's place under the limit.
#[derive(Debug)]
pub(crate) struct OriginPermit {
    shared: Arc<Shared>,
    granted: Instant,
    sample: Option<(Duration, bool)>,
}

impl OriginPermit {
    /// The load ran for `took`; `failed`: it returned an error, timed out or panicked.
    pub fn observe(&mut self, took: Duration, failed: bool) {
        self.sample = Some((took, failed));
    }
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        let grew = {
            let mut st = self.shared.state.lock();
            let now = Instant::now();
            st.account(now);
            st.in_flight = st.in_flight.saturating_sub(1);
            match (self.shared.kind, self.sample) {
                (Kind::Adaptive(cfg), Some((took, failed))) => {
                    st.record(&cfg, took, failed, self.granted, now)
                }
                _ => None,
            }
        };
        match grew {
            Some(limit) => {
                if let Some(gauge) = &self.shared.gauge {
                    gauge.set(limit as f64);
                }
                self.shared.freed.notify_waiters();
                self.shared.freed.notify_one();
            }
            None => self.shared.freed.notify_one(),
        }
    }
}

impl OriginLimit {
    /// At most `max_concurrent` loads at once, always.
    pub fn fixed(max_concurrent: usize, max_wait: Duration) -> Self {
        Self::with(Kind::Fixed(max_concurrent), max_wait, max_concurrent, None)
    }

    /// The learned limit; `gauge` shows it.
    pub fn adaptive(config: AdaptiveLimit, gauge: Option<metrics::Gauge>) -> Self {
        let initial = config.initial.clamp(config.min, config.max);
        if let Some(gauge) = &gauge {
            gauge.set(initial as f64);
        }
        Self::with(Kind::Adaptive(config), config.max_wait, initial, gauge)
    }

    fn with(kind: Kind, max_wait: Duration, limit: usize, gauge: Option<metrics::Gauge>) -> Self {
        let now = Instant::now();
        OriginLimit {
            shared: Arc::new(Shared {
                kind,
                max_wait,
                state: Mutex::new(State {
                    in_flight: 0,
                    limit: limit as f64,
                    window: Window::new(now, 0),
                    lows: std::collections::VecDeque::new(),
                    congested: false,
                    binding: false,
                    next_probe: first_probe(now),
                    probe: None,
                    outage: false,
                    outage_seen: None,
                    outage_reports: None,
                    probe_high: None,
                    healthy: Healthy {
                        last_change: now,
                        area: 0.0,
                        pending: 0.0,
                        total: 0.0,
                        mean: 0.0,
                    },
                }),
                freed: Notify::new(),
                gauge,
            }),
        }
    }

    /// How long a load past the limit waits for a slot.
    pub fn max_wait(&self) -> Duration {
        self.shared.max_wait
    }

    /// A slot now, if one is free. `outage`: the remote tier is unavailable.
    pub fn try_slot(&self, outage: bool) -> Slot {
        let (slot, rose) = {
            let mut st = self.shared.state.lock();
            let now = Instant::now();
            let before = self.cap_of(&st, false);
            st.account(now);
            // Callers' failed remote calls are evidence for all of them (they share the remote
            // tier): once a few report it, the reads that got past it before it failed (a
            // lease taken, a fill pending) must not lift the outage cap for the rest.
            if outage {
                st.report_outage(now);
            }
            st.outage = st
                .outage_seen
                .is_some_and(|seen| now.saturating_duration_since(seen) < OUTAGE_HOLD);
            if matches!(self.shared.kind, Kind::Adaptive(_)) {
                st.probe_clock(now);
            }
            // (The hold expired or a probe ended: waiters may take the new room.)
            let rose = self.cap_of(&st, false) > before;
            if st.in_flight >= self.cap_of(&st, outage) {
                (Slot::Busy, rose)
            } else {
                st.in_flight += 1;
                st.window.peak = st.window.peak.max(st.in_flight);
                let permit = OriginPermit {
                    shared: self.shared.clone(),
                    granted: now,
                    sample: None,
                };
                (Slot::Granted(permit), rose)
            }
        };
        if rose {
            self.shared.freed.notify_waiters();
        }
        slot
    }

    /// A slot within `max_wait`, or `None`.
    pub async fn wait_slot(&self, outage: bool) -> Option<OriginPermit> {
        let deadline = Instant::now() + self.shared.max_wait;
        loop {
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed after it wakes this waiter.
            freed.as_mut().enable();
            if let Slot::Granted(permit) = self.try_slot(outage) {
                return Some(permit);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // A last look: the deadline and a freed slot can meet.
                return match self.try_slot(outage) {
                    Slot::Granted(permit) => Some(permit),
                    Slot::Busy => None,
                };
            }
        }
    }

    /// Loader calls running now.
    pub fn in_use(&self) -> usize {
        self.shared.state.lock().in_flight
    }

    /// Loads allowed at once now (the learned limit, held lower during an outage).
    pub fn current(&self) -> usize {
        let st = self.shared.state.lock();
        self.cap_of(&st, false)
    }

    /// The cap for a caller; `outage`: the caller's own remote call failed.
    fn cap_of(&self, st: &State, outage: bool) -> usize {
        match self.shared.kind {
            Kind::Fixed(n) => n,
            Kind::Adaptive(cfg) if st.probe.is_some() => ((st.limit / 4.0) as usize).max(cfg.min),
            Kind::Adaptive(cfg) => {
                let learned = st.limit as usize;
                if (st.outage || outage) && st.healthy.total >= 1.0 {
                    // (A hair under, so that float noise in an exact mean does not add a slot.)
                    let held = (st.healthy.mean * cfg.outage_headroom - 1e-6).ceil() as usize;
                    learned.min(held.max(cfg.min))
                } else {
                    learned
                }
            }
        }
    }
}

/// The first probe time after `now` on the wall clock's grid of [`PROBE_EVERY`].
fn first_probe(now: Instant) -> Instant {
    let every = PROBE_EVERY.as_millis() as u64;
    let phase = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| (since.as_millis() % u128::from(every)) as u64);
    now + Duration::from_millis(every - phase)
}

impl Window {
    fn new(now: Instant, in_flight: usize) -> Self {
        Window {
            started: now,
            samples: 0,
            latency_sum: 0.0,
            failures: 0,
            peak: in_flight,
        }
    }
}

impl State {
    /// Adds the time since the last change to the healthy average (outage time is left out).
    fn account(&mut self, now: Instant) {
        let h = &mut self.healthy;
        let dt = now.saturating_duration_since(h.last_change).as_secs_f64();
        h.last_change = now;
        if self.outage {
            return;
        }
        h.area += self.in_flight as f64 * dt;
        h.pending += dt;
        h.total += dt;
        if h.pending >= 1.0 {
            let mean = h.area / h.pending;
            // A plain mean while the history is short, then an exponential average.
            let weight = (h.pending / HEALTHY_TAU_SECS)
                .max(h.pending / h.total)
                .min(1.0);
            h.mean += weight * (mean - h.mean);
            h.area = 0.0;
            h.pending = 0.0;
        }
    }

    /// Adds a window's mean to the lows and returns the baseline (the lowest of them).
    fn baseline(&mut self, mean: f64, now: Instant) -> f64 {
        while self
            .lows
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= BASELINE_HORIZON)
        {
            self.lows.pop_front();
        }
        match self.lows.back_mut() {
            Some((at, low)) if now.saturating_duration_since(*at) < Duration::from_secs(1) => {
                *low = low.min(mean);
            }
            _ => self.lows.push_back((now, mean)),
        }
        self.lows
            .iter()
            .map(|(_, low)| *low)
            .fold(f64::INFINITY, f64::min)
    }

    /// A caller's report that the remote tier is unavailable.
    fn report_outage(&mut self, now: Instant) {
        let (since, count) = match self.outage_reports {
            Some((since, n)) if now.saturating_duration_since(since) < OUTAGE_HOLD => {
                (since, n + 1)
            }
            _ => (now, 1),
        };
        self.outage_reports = Some((since, count));
        if count >= OUTAGE_QUORUM {
            self.outage_seen = Some(now);
        }
    }

    /// Starts a probe when one is due and the limit binds; ends one that took too long or
    /// that an outage overtook.
    fn probe_clock(&mut self, now: Instant) {
        if let Some(probe) = &self.probe {
            if self.outage || now.saturating_duration_since(probe.started) >= PROBE_MAX {
                self.end_probe(now);
            }
            return;
        }
        if now < self.next_probe {
            return;
        }
        while self.next_probe <= now {
            self.next_probe += PROBE_EVERY;
        }
        if self.binding && !self.outage {
            self.probe = Some(Probe {
                started: now,
                samples: 0,
                latency_sum: 0.0,
                failures: 0,
            });
        }
    }

    /// Back to the learned cap, with a fresh window (the loads of the probe are not in it).
    fn end_probe(&mut self, now: Instant) {
        self.probe = None;
        self.window = Window::new(now, self.in_flight);
    }

    /// One load's sample; at the end of a window (or of a probe), the cap if it rose.
    fn record(
        &mut self,
        cfg: &AdaptiveLimit,
        took: Duration,
        failed: bool,
        granted: Instant,
        now: Instant,
    ) -> Option<usize> {
        if let Some(probe) = &mut self.probe {
            // Loads granted before the probe queued behind the full limit: not a sample.
            if granted < probe.started {
                return None;
            }
            probe.samples += 1;
            probe.latency_sum += took.as_secs_f64();
            probe.failures += u32::from(failed);
            if probe.samples < WINDOW_SAMPLES
                || now.saturating_duration_since(probe.started) < WINDOW_TIME
            {
                return None;
            }
            let (mean, clean) = (
                probe.latency_sum / f64::from(probe.samples),
                probe.failures * 10 < probe.samples,
            );
            if clean {
                // The unqueued latency now: it replaces what was learned before (an origin
                // that got slower is relearned within two probes, not after the horizon). A
                // probe far above the baseline may have met someone else's queue (another
                // cache, an instance that did not probe): it counts once the next agrees.
                let current = self
                    .lows
                    .iter()
                    .map(|(_, low)| *low)
                    .fold(f64::INFINITY, f64::min);
                let high = mean > current * PROBE_RAISE;
                let accepted = match (high, self.probe_high.take()) {
                    (false, _) => Some(mean),
                    (true, Some(previous)) => Some(mean.min(previous)),
                    (true, None) => {
                        self.probe_high = Some(mean);
                        None
                    }
                };
                if let Some(mean) = accepted {
                    self.lows.clear();
                    self.baseline(mean, now);
                }
            }
            self.end_probe(now);
            return Some(self.limit as usize);
        }
        let w = &mut self.window;
        w.samples += 1;
        w.latency_sum += took.as_secs_f64();
        w.failures += u32::from(failed);
        if w.samples < WINDOW_SAMPLES || now.saturating_duration_since(w.started) < WINDOW_TIME {
            return None;
        }
        let before = self.limit;
        let samples = w.samples;
        let failures = w.failures;
        let mean = w.latency_sum / f64::from(samples);
        let saturated = w.peak as f64 >= 0.75 * self.limit;
        self.binding = saturated;
        self.window = Window::new(now, self.in_flight);
        if failures * 10 >= samples {
            self.limit *= 0.8;
            self.congested = true;
        } else {
            let baseline = self.baseline(mean, now);
            let gradient = if mean > 0.0 {
                (cfg.tolerance * baseline / mean).clamp(0.5, 1.0)
            } else {
                1.0
            };
            if gradient < 1.0 {
                self.limit *= 0.5 + 0.5 * gradient;
                self.congested = true;
            } else if saturated {
                self.limit = if self.congested {
                    self.limit + self.limit.sqrt()
                } else {
                    self.limit * 2.0
                };
            }
        }
        self.limit = self.limit.clamp(cfg.min as f64, cfg.max as f64);
        (self.limit as usize > before as usize).then_some(self.limit as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_and_waits_are_too() {
        let limit = OriginLimit::fixed(2, Duration::from_millis(20));
        let (a, b) = (limit.try_slot(false), limit.try_slot(false));
        assert!(matches!((&a, &b), (Slot::Granted(_), Slot::Granted(_))));
        assert!(matches!(limit.try_slot(false), Slot::Busy));
        assert_eq!(limit.in_use(), 2);
        let t = std::time::Instant::now();
        assert!(limit.wait_slot(false).await.is_none());
        assert!(t.elapsed() >= Duration::from_millis(20));
        drop(a);
        assert!(limit.wait_slot(false).await.is_some());
        drop(b);
        assert_eq!(limit.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_a_cancelled_waiter_was_woken_for() {
        let limit = OriginLimit::fixed(1, Duration::from_secs(5));
        let Slot::Granted(held) = limit.try_slot(false) else {
            panic!("free")
        };
        let first = tokio::spawn({
            let limit = limit.clone();
            async move { limit.wait_slot(false).await.is_some() }
        });
        let second = tokio::spawn({
            let limit = limit.clone();
            async move { limit.wait_slot(false).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(2), second).await;
        assert!(matches!(got, Ok(Ok(true))), "{got:?}");
        assert_eq!(limit.in_use(), 0);
    }

    /// Runs `loads` loads through `limit`, `at_once` of them offered at a time, each taking
    /// what `latency(in_flight)` says and failing when `fails(in_flight)`.
    async fn drive(
        limit: &OriginLimit,
        loads: usize,
        at_once: usize,
        outage: bool,
        latency: impl Fn(usize) -> Duration,
        fails: impl Fn(usize) -> bool,
    ) {
        let mut done = 0;
        while done < loads {
            let mut permits = Vec::new();
            for _ in 0..at_once {
                if let Slot::Granted(p) = limit.try_slot(outage) {
                    permits.push(p);
                }
            }
            let n = permits.len();
            tokio::time::sleep(latency(n)).await;
            for mut p in permits {
                p.observe(latency(n), fails(n));
            }
            done += n.max(1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_while_latency_is_flat_and_the_limit_binds() {
        let limit = OriginLimit::adaptive(AdaptiveLimit::default(), None);
        assert_eq!(limit.current(), 32);
        drive(
            &limit,
            20_000,
            2_000,
            false,
            |_| Duration::from_millis(5),
            |_| false,
        )
        .await;
        assert_eq!(limit.current(), 1_024);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_limit_does_not_grow() {
        let limit = OriginLimit::adaptive(AdaptiveLimit::default(), None);
        drive(
            &limit,
            5_000,
            8,
            false,
            |_| Duration::from_millis(5),
            |_| false,
        )
        .await;
        assert_eq!(limit.current(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_settles_near_a_queueing_origins_capacity() {
        // 20 queries at once take 5 ms; past that they queue: latency grows with concurrency.
        let capacity = 20;
        let latency = move |n: usize| {
            Duration::from_micros(5_000 * (n.max(capacity) as u64) / capacity as u64)
        };
        let limit = OriginLimit::adaptive(AdaptiveLimit::default().initial(8), None);
        drive(&limit, 50_000, 2_000, false, latency, |_| false).await;
        let settled = limit.current();
        // Queueing up to the tolerance (1.5× the baseline) is allowed: 20..=30, with slack for
        // the steps.
        assert!((16..=40).contains(&settled), "settled at {settled}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_origin_that_slows_down_is_relearned() {
        let capacity = 20;
        let limit = OriginLimit::adaptive(AdaptiveLimit::default().initial(8), None);
        let at = |base_us: u64| {
            move |n: usize| {
                Duration::from_micros(base_us * (n.max(capacity) as u64) / capacity as u64)
            }
        };
        drive(&limit, 20_000, 2_000, false, at(2_000), |_| false).await;
        let fast = limit.current();
        // The same queue, each query 5× slower: the capacity in loads at once is the same
        // (relearned once the fast lows are 5 s old: these loads take 10 s or more).
        drive(&limit, 40_000, 2_000, false, at(10_000), |_| false).await;
        let slow = limit.current();
        assert!((16..=40).contains(&fast), "fast: {fast}");
        assert!((16..=40).contains(&slow), "slow: {slow} (fast: {fast})");
    }

    /// Like `drive`, for one of several limits in front of one origin: latency follows the
    /// loads of all of them at once (`total`).
    async fn drive_shared(
        limit: &OriginLimit,
        total: &std::sync::atomic::AtomicUsize,
        loads: usize,
        latency: impl Fn(usize) -> Duration,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut done = 0;
        while done < loads {
            let mut permits = Vec::new();
            for _ in 0..2_000 {
                if let Slot::Granted(p) = limit.try_slot(false) {
                    permits.push(p);
                }
            }
            let n = permits.len();
            total.fetch_add(n, SeqCst);
            // The others take their slots too before the origin's latency is read.
            tokio::task::yield_now().await;
            let took = latency(total.load(SeqCst));
            tokio::time::sleep(took).await;
            total.fetch_sub(n, SeqCst);
            for mut p in permits {
                p.observe(took, false);
            }
            done += n.max(1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn instances_sharing_an_origin_do_not_ratchet_each_other_up() {
        // 20 queries at once take 5 ms at the origin, past that they queue; three caches
        // (three instances of a service) in front of it, each offered more than it can take.
        let capacity = 20;
        let latency = move |n: usize| {
            Duration::from_micros(5_000 * (n.max(capacity) as u64) / capacity as u64)
        };
        let total = std::sync::atomic::AtomicUsize::new(0);
        let limits: Vec<OriginLimit> = (0..3)
            .map(|_| OriginLimit::adaptive(AdaptiveLimit::default().initial(8), None))
            .collect();
        let runs = limits
            .iter()
            .map(|limit| drive_shared(limit, &total, 60_000, latency));
        futures::future::join_all(runs).await;
        let sum: usize = limits.iter().map(OriginLimit::current).sum();
        // Together near the origin's capacity (up to the 1.5× tolerance, with slack for the
        // steps), not one each.
        assert!((16..=48).contains(&sum), "together {sum}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_cut_the_limit() {
        let limit = OriginLimit::adaptive(AdaptiveLimit::default(), None);
        // The origin refuses past 10 at once.
        drive(
            &limit,
            20_000,
            2_000,
            false,
            |_| Duration::from_millis(2),
            |n| n > 10,
        )
        .await;
        assert!((4..=16).contains(&limit.current()), "{}", limit.current());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_holds_loads_near_the_healthy_concurrency() {
        let limit = OriginLimit::adaptive(AdaptiveLimit::default(), None);
        // Healthy: 5 loads at a time, for 2 s.
        drive(
            &limit,
            2_000,
            5,
            false,
            |_| Duration::from_millis(5),
            |_| false,
        )
        .await;
        assert_eq!(limit.current(), 32);
        // One report caps its caller only (an odd timeout is no outage for everyone)...
        assert!(matches!(limit.try_slot(true), Slot::Granted(_)));
        assert_eq!(limit.current(), 32, "one report made an outage");
        // ...a few make it everyone's.
        for _ in 1..OUTAGE_QUORUM {
            assert!(matches!(limit.try_slot(true), Slot::Granted(_)));
        }
        assert_eq!(limit.current(), 8, "1.5 × the healthy 5, rounded up");
        // However much is offered during the outage.
        drive(
            &limit,
            5_000,
            1_000,
            true,
            |_| Duration::from_millis(5),
            |_| false,
        )
        .await;
        assert_eq!(limit.current(), 8);
        // A caller whose own remote call went through (it got past the remote tier before it
        // failed) does not lift the cap for the others.
        assert!(matches!(limit.try_slot(false), Slot::Granted(_)));
        assert_eq!(
            limit.current(),
            8,
            "one healthy caller lifted the outage cap"
        );
        tokio::time::sleep(OUTAGE_HOLD).await;
        assert!(matches!(limit.try_slot(false), Slot::Granted(_)));
        assert!(limit.current() > 8, "healthy again: the learned limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_when_the_outage_cap_lifts() {
        let limit = OriginLimit::adaptive(
            AdaptiveLimit::default().max_wait(Duration::from_secs(5)),
            None,
        );
        drive(
            &limit,
            2_000,
            5,
            false,
            |_| Duration::from_millis(5),
            |_| false,
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..8 {
            if let Slot::Granted(p) = limit.try_slot(true) {
                held.push(p);
            }
        }
        assert_eq!(limit.current(), 8);
        assert_eq!(held.len(), 8, "the outage cap");
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.wait_slot(false).await.is_some() }
        });
        tokio::time::sleep(OUTAGE_HOLD + Duration::from_millis(10)).await;
        // The next caller finds the outage over: the cap rises, and the waiter takes the room
        // at once instead of sleeping until its deadline (this caller keeps its slot: no
        // permit is dropped to wake anyone).
        let next = limit.try_slot(false);
        assert!(matches!(next, Slot::Granted(_)));
        let woke = tokio::time::timeout(Duration::from_millis(100), waiter).await;
        assert!(matches!(woke, Ok(Ok(true))), "{woke:?}");
        drop((held, next));
    }

    #[tokio::test(start_paused = true)]
    async fn without_healthy_history_an_outage_keeps_the_learned_limit() {
        let limit = OriginLimit::adaptive(AdaptiveLimit::default(), None);
        assert!(matches!(limit.try_slot(true), Slot::Granted(_)));
        assert_eq!(limit.current(), 32);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = [
            AdaptiveLimit::default().bounds(0, 4),
            AdaptiveLimit::default().bounds(8, 4),
            AdaptiveLimit::default().bounds(1, MAX_LIMIT + 1),
            AdaptiveLimit::default().tolerance(0.5),
            AdaptiveLimit::default().tolerance(f64::NAN),
            AdaptiveLimit::default().outage_headroom(f64::INFINITY),
        ];
        for config in bad {
            let err = config.validate().unwrap_err();
            assert!(err.starts_with("adaptive_origin_limit"), "{err}");
        }
        assert!(AdaptiveLimit::default().validate().is_ok());
    }
}
