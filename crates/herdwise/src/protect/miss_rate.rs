//! Whether a cache's L2 reads mostly find nothing (a cold start, a flushed Redis).
//!
//! Contract: [`MissRate::record`] takes the outcome of each L2 read made on the way to a load
//! (found something, or nothing at all); [`MissRate::mostly_missing`] answers whether the last
//! window of them mostly found nothing, with hysteresis (on above 60 % of a window, off below
//! 40 %), so the answer does not flap. While it says yes, a read past L1 asks for the load
//! lease in its first round trip (the lease attempt reads the key too) instead of reading L2
//! first and asking after a miss: a cold cache pays one round trip less per miss, like naive
//! cache-aside, and keeps its one-origin-call-per-key guarantee. Approximate under races (a
//! window may count a read twice or not at all); a few relaxed atomics per L2 read, none per
//! L1 hit.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// L2 reads per judgement.
const WINDOW: u32 = 128;

/// The recent share of L2 reads that found nothing.
#[derive(Debug, Default)]
pub(crate) struct MissRate {
    reads: AtomicU32,
    misses: AtomicU32,
    mostly_missing: AtomicBool,
}

impl MissRate {
    /// One L2 read on the way to a load: `missing` if the key was not there at all.
    pub fn record(&self, missing: bool) {
        if missing {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        let reads = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        if reads == WINDOW {
            // The caller that completes the window judges it and starts the next.
            let misses = self.misses.swap(0, Ordering::Relaxed);
            self.reads.store(0, Ordering::Relaxed);
            let share = f64::from(misses) / f64::from(WINDOW);
            let before = self.mostly_missing.load(Ordering::Relaxed);
            let now = if before { share >= 0.4 } else { share > 0.6 };
            if now != before {
                self.mostly_missing.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Whether the last window's L2 reads mostly found nothing.
    pub fn mostly_missing(&self) -> bool {
        self.mostly_missing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rate: &MissRate, misses: u32) {
        for i in 0..WINDOW {
            rate.record(i < misses);
        }
    }

    #[test]
    fn turns_on_above_sixty_percent_and_off_below_forty() {
        let rate = MissRate::default();
        assert!(
            !rate.mostly_missing(),
            "starts off: a warm cache reads L2 first"
        );
        window(&rate, WINDOW / 2);
        assert!(!rate.mostly_missing(), "half missing is not mostly");
        window(&rate, WINDOW * 7 / 10);
        assert!(rate.mostly_missing());
        window(&rate, WINDOW / 2);
        assert!(rate.mostly_missing(), "hysteresis: stays on at half");
        window(&rate, WINDOW / 4);
        assert!(!rate.mostly_missing());
    }

    #[test]
    fn judges_only_whole_windows() {
        let rate = MissRate::default();
        for _ in 0..WINDOW - 1 {
            rate.record(true);
        }
        assert!(!rate.mostly_missing());
        rate.record(true);
        assert!(rate.mostly_missing());
    }
}
