//! Latency and throughput recording: one recorder per worker task (no shared state on the hot
//! path), merged when the run ends.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// Counts for one second of a run.
#[derive(Clone)]
struct Second {
    reads: u64,
    errors: u64,
    latency: Histogram<u64>,
}

/// What one worker (or, merged, a whole run) observed.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    latency: Histogram<u64>,
    seconds: Vec<Second>,
    reads: u64,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 2 significant figures: small enough to keep one per second per task.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("constant bounds are valid")
}

impl Recorder {
    /// A recorder for a run that started at `started` and lasts about `seconds`.
    pub fn new(started: Instant, seconds: usize) -> Self {
        Recorder {
            started,
            latency: histogram(),
            seconds: vec![
                Second {
                    reads: 0,
                    errors: 0,
                    latency: histogram(),
                };
                seconds
            ],
            reads: 0,
            errors: 0,
        }
    }

    /// Records one read that finished now.
    pub fn record(&mut self, latency: Duration, ok: bool) {
        let us = (latency.as_micros() as u64).clamp(1, 100_000_000);
        let _ = self.latency.record(us);
        self.reads += 1;
        if !ok {
            self.errors += 1;
        }
        let second = self.started.elapsed().as_secs() as usize;
        if let Some(s) = self.seconds.get_mut(second) {
            s.reads += 1;
            if !ok {
                s.errors += 1;
            }
            let _ = s.latency.record(us);
        }
    }

    /// Adds another recorder's observations (same start, same length).
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        self.reads += other.reads;
        self.errors += other.errors;
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.reads += theirs.reads;
            mine.errors += theirs.errors;
            let _ = mine.latency.add(&theirs.latency);
        }
    }

    /// Reads recorded.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Failed reads recorded.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Percentiles over the whole run.
    pub fn latency(&self) -> Latency {
        summarize(&self.latency)
    }

    /// The `q` quantile (µs) of the reads that took at least `at_least_us`, and how many did:
    /// e.g. the latency of the callers that had to wait for a load.
    pub fn quantile_of_slow(&self, at_least_us: u64, q: f64) -> (Option<u64>, u64) {
        let slow: Vec<(u64, u64)> = self
            .latency
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .filter(|(value, _)| *value >= at_least_us)
            .collect();
        let total: u64 = slow.iter().map(|(_, n)| n).sum();
        let rank = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (value, n) in &slow {
            seen += n;
            if seen >= rank.max(1) {
                return (Some(*value), total);
            }
        }
        (None, total)
    }

    /// `(reads, errors, p99 µs, max µs)` for each second.
    pub fn per_second(&self) -> Vec<(u64, u64, u64, u64)> {
        self.seconds
            .iter()
            .map(|s| {
                (
                    s.reads,
                    s.errors,
                    s.latency.value_at_quantile(0.99),
                    s.latency.max(),
                )
            })
            .collect()
    }
}

fn summarize(h: &Histogram<u64>) -> Latency {
    Latency {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_counts_and_percentiles() {
        let start = Instant::now();
        let mut a = Recorder::new(start, 2);
        let mut b = Recorder::new(start, 2);
        for _ in 0..99 {
            a.record(Duration::from_micros(100), true);
        }
        b.record(Duration::from_millis(50), false);
        a.merge(&b);
        assert_eq!((a.reads(), a.errors()), (100, 1));
        let l = a.latency();
        assert!((99..=101).contains(&l.p50));
        assert!(l.max >= 49_000);
        assert_eq!(a.per_second()[0].0, 100);
        let (p99_slow, slow) = a.quantile_of_slow(1_000, 0.99);
        assert_eq!(slow, 1);
        assert!(p99_slow.unwrap() >= 49_000);
    }
}
