//! Freshness policy: TTLs with jitter, negative-entry TTLs, and the L1 TTL cap.
//!
//! Pure computation, no I/O. Timestamps that go into the shared tier are wall-clock unix
//! milliseconds (every instance must read them); L1 deadlines are monotonic `Instant`s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::envelope::Meta;

/// Longest duration any option takes (10 years): far beyond any sensible setting, far below
/// what `Instant` and unix-millisecond arithmetic can carry.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Wall-clock time in unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// TTLs a cache applies to what it writes.
#[derive(Debug, Clone)]
pub(crate) struct TtlPolicy {
    /// Base time-to-live of positive entries.
    pub ttl: Duration,
    /// Up to this fraction of a TTL is added at random (0 = off), so that entries written together
    /// do not expire together.
    pub jitter: f64,
    /// TTL of negative entries; `None` disables negative caching.
    pub negative_ttl: Option<Duration>,
    /// L1 entries live at most this long, whatever the L2 TTL (events can be lost; this bounds
    /// how long a lost invalidation can be served from memory).
    pub l1_cap: Duration,
    /// Past its fresh time, an entry is still served at once while another caller refreshes
    /// it (stale-while-revalidate) for this long.
    pub stale_while_revalidate: Duration,
    /// Past its fresh time, an entry is still served if the load fails or times out
    /// (stale-if-error, "fail-safe") for this long.
    pub stale_if_error: Duration,
    /// After serving stale because the origin failed, the stale value counts as fresh again for
    /// this long, so a failing origin is retried at this pace instead of on every read.
    pub fail_safe_throttle: Duration,
}

/// Where an entry stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Serve it.
    Fresh,
    /// Past its fresh time by this many ms, but not past its stale time.
    Stale(u64),
    /// Past its stale time: as good as absent.
    Expired,
}

impl Freshness {
    /// `meta` at `now_ms`.
    pub fn of(fresh_until_ms: u64, stale_until_ms: u64, now_ms: u64) -> Self {
        if now_ms < fresh_until_ms {
            Freshness::Fresh
        } else if now_ms < stale_until_ms {
            Freshness::Stale(now_ms - fresh_until_ms)
        } else {
            Freshness::Expired
        }
    }
}

impl TtlPolicy {
    /// `base` plus a uniform random share of up to `jitter * base`.
    pub fn jittered(&self, base: Duration) -> Duration {
        if self.jitter <= 0.0 || base.is_zero() {
            return base;
        }
        base + base.mul_f64(rand::random::<f64>() * self.jitter)
    }

    /// How long entries are kept past their fresh time (the larger stale window).
    pub fn stale_window(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// Metadata for an entry written now with the given (already jittered) TTL.
    pub fn meta(
        &self,
        now_ms: u64,
        ttl: Duration,
        load_duration: Duration,
        version: u64,
        negative: bool,
        codec_id: u8,
    ) -> Meta {
        let fresh_until_ms = now_ms.saturating_add(ttl.as_millis() as u64);
        let stale_window = if negative {
            // "Does not exist" is not worth serving past its (short) TTL.
            Duration::ZERO
        } else {
            self.stale_window()
        };
        Meta {
            created_at_ms: now_ms,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(stale_window.as_millis() as u64),
            version,
            load_duration,
            negative,
            stale_copy: false,
            codec_id,
        }
    }

    /// How long an entry with `meta` may live in L1 from `now_ms` (to its stale time, capped),
    /// and how long of that it is fresh.
    pub fn l1_lifetimes(&self, meta: &Meta, now_ms: u64) -> (Duration, Duration) {
        let live =
            Duration::from_millis(meta.stale_until_ms.saturating_sub(now_ms)).min(self.l1_cap);
        let fresh = Duration::from_millis(meta.fresh_until_ms.saturating_sub(now_ms)).min(live);
        (live, fresh)
    }

    /// The L2 lifetime of an entry written with a fresh `ttl`: its stale window included.
    pub fn l2_ttl(&self, meta: &Meta) -> Duration {
        Duration::from_millis(meta.stale_until_ms.saturating_sub(meta.created_at_ms))
    }
}

/// XFetch (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache Stampede
/// Prevention"): recompute early when `now − Δ·β·ln(u) ≥ expiry`, with `Δ` the time the last load
/// took, `β` the eagerness (1 is the paper's optimum; 0 disables) and `u` uniform in (0, 1]. The
/// closer the expiry and the slower the load, the likelier an early refresh; on average one
/// reader refreshes just in time, and nobody waits at expiry.
pub(crate) fn xfetch_due(meta: &Meta, now_ms: u64, beta: f64, u: f64) -> bool {
    if beta <= 0.0 || meta.load_duration.is_zero() || u <= 0.0 {
        return false;
    }
    let delta_ms = meta.load_duration.as_secs_f64() * 1000.0;
    let gap_ms = -delta_ms * beta * u.ln();
    now_ms as f64 + gap_ms >= meta.fresh_until_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> TtlPolicy {
        TtlPolicy {
            ttl: Duration::from_secs(100),
            jitter,
            negative_ttl: Some(Duration::from_secs(5)),
            l1_cap: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(30),
            fail_safe_throttle: Duration::from_secs(5),
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_spreads() {
        let p = policy(0.1);
        let samples: Vec<Duration> = (0..1000).map(|_| p.jittered(p.ttl)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= p.ttl && *d <= Duration::from_secs(110)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 900, "jitter must actually spread expiries");
        assert_eq!(policy(0.0).jittered(p.ttl), p.ttl);
    }

    #[test]
    fn l1_lifetimes_are_capped_and_include_the_stale_window() {
        let p = policy(0.0);
        let m = p.meta(1_000, Duration::from_secs(100), Duration::ZERO, 0, false, 1);
        assert_eq!(
            m.stale_until_ms, 131_000,
            "the larger stale window (30 s) is kept"
        );
        assert_eq!(p.l2_ttl(&m), Duration::from_secs(130));
        assert_eq!(
            p.l1_lifetimes(&m, 1_000),
            (Duration::from_secs(60), Duration::from_secs(60))
        );
        assert_eq!(
            p.l1_lifetimes(&m, 91_000),
            (Duration::from_secs(40), Duration::from_secs(10))
        );
        assert_eq!(
            p.l1_lifetimes(&m, 200_000),
            (Duration::ZERO, Duration::ZERO)
        );
        let negative = p.meta(1_000, Duration::from_secs(5), Duration::ZERO, 0, true, 1);
        assert_eq!(negative.stale_until_ms, negative.fresh_until_ms);
    }

    #[test]
    fn xfetch_gets_likelier_as_expiry_nears() {
        let p = policy(0.0);
        let m = p.meta(
            0,
            Duration::from_secs(10),
            Duration::from_millis(100),
            0,
            false,
            1,
        );
        let share = |now: u64| {
            let n = 10_000;
            (1..=n)
                .filter(|i| xfetch_due(&m, now, 1.0, *i as f64 / n as f64))
                .count() as f64
                / n as f64
        };
        // P(due) = exp(-remaining / Δ): 100 ms before expiry ≈ 0.37, 500 ms before ≈ 0.007.
        assert!((share(9_900) - 0.368).abs() < 0.01, "{}", share(9_900));
        assert!(share(9_500) < 0.01);
        assert_eq!(share(1_000), 0.0);
        assert!(!xfetch_due(&m, 9_999, 0.0, 0.001), "beta 0 disables it");
        let unmeasured = p.meta(0, Duration::from_secs(10), Duration::ZERO, 0, false, 1);
        assert!(
            !xfetch_due(&unmeasured, 9_999, 1.0, 0.001),
            "no load time, no early refresh"
        );
    }

    #[test]
    fn freshness_classifies_by_the_two_deadlines() {
        assert_eq!(Freshness::of(10, 20, 5), Freshness::Fresh);
        assert_eq!(Freshness::of(10, 20, 13), Freshness::Stale(3));
        assert_eq!(Freshness::of(10, 20, 20), Freshness::Expired);
    }
}
