//! Freshness policy: TTLs with jitter, negative-entry TTLs, and the L1 TTL cap.
//!
//! Pure computation, no I/O. Timestamps that go into the shared tier are wall-clock unix
//! milliseconds (every instance must read them); L1 deadlines are monotonic `Instant`s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::envelope::Meta;

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
}

impl TtlPolicy {
    /// `base` plus a uniform random share of up to `jitter * base`.
    pub fn jittered(&self, base: Duration) -> Duration {
        if self.jitter <= 0.0 || base.is_zero() {
            return base;
        }
        base + base.mul_f64(rand::random::<f64>() * self.jitter)
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
        Meta {
            created_at_ms: now_ms,
            fresh_until_ms,
            // No stale window yet: an entry is served until it is no longer fresh.
            stale_until_ms: fresh_until_ms,
            version,
            load_duration,
            negative,
            codec_id,
        }
    }

    /// How long an entry with `meta` may live in L1, from `now_ms`.
    pub fn l1_ttl(&self, meta: &Meta, now_ms: u64) -> Duration {
        let remaining = Duration::from_millis(meta.fresh_until_ms.saturating_sub(now_ms));
        remaining.min(self.l1_cap)
    }
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
    fn l1_ttl_is_capped() {
        let p = policy(0.0);
        let m = p.meta(1_000, Duration::from_secs(100), Duration::ZERO, 0, false, 1);
        assert_eq!(p.l1_ttl(&m, 1_000), Duration::from_secs(60));
        assert_eq!(p.l1_ttl(&m, 91_000), Duration::from_secs(10));
        assert_eq!(p.l1_ttl(&m, 200_000), Duration::ZERO);
    }
}
