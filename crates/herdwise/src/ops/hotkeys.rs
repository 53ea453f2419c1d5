//! Hot-key detection: which keys are read most, cheaply enough to run on every read.
//!
//! A count-min sketch (4 rows of 4 096 counters) estimates each key's reads; a small candidate
//! table keeps the keys whose estimate is among the highest seen. Reads are *sampled* (one in
//! `SAMPLE` on average), so the hit path pays a thread-local random draw most of the time and a
//! few hashes and a lock otherwise; heavy hitters are heavy enough to be sampled many times.
//! Counts *decay*: every `DECAY_EVERY` samples (about four million reads) all counters are halved, so
//! a key that stops being hot falls out.

use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::Mutex;

/// Rows of the sketch (independent hashes).
const DEPTH: usize = 4;
/// Counters per row.
const WIDTH: usize = 4096;
/// One read in this many is counted.
const SAMPLE: u32 = 64;
/// Fewest samples (about 64 reads each) before a key counts as hot.
const MIN_HOT_SAMPLES: u32 = 16;
/// Samples between two updates of the hottest-key gauge.
const SHARE_EVERY: u64 = 1 << 10;
/// Samples between two halvings of every count.
const DECAY_EVERY: u64 = 1 << 16;

/// Count-min sketch and top candidates of one cache.
pub(crate) struct HotKeys {
    k: usize,
    /// The hottest key's share of the (decayed) samples, refreshed every `SHARE_EVERY` samples.
    share_gauge: metrics::Gauge,
    /// Estimated reads of the hottest keys by rank (1 = hottest), refreshed with the share: the
    /// top-k as a metric, without a label per key name (which would grow without bound).
    rank_gauges: Vec<metrics::Gauge>,
    hashers: [quick_cache::DefaultHashBuilder; DEPTH],
    state: Mutex<State>,
}

struct State {
    counts: Box<[[u32; WIDTH]; DEPTH]>,
    samples: u64,
    /// Samples, halved with the counts: what a count is a share of.
    weight: u64,
    /// Key → estimate when last seen: at most `4 k` candidates.
    candidates: HashMap<Box<str>, u32>,
}

impl HotKeys {
    /// Tracks the `k` hottest keys.
    pub fn new(k: usize, share_gauge: metrics::Gauge, rank_gauges: Vec<metrics::Gauge>) -> Self {
        HotKeys {
            k: k.max(1),
            share_gauge,
            rank_gauges,
            hashers: std::array::from_fn(|_| quick_cache::DefaultHashBuilder::default()),
            state: Mutex::new(State {
                counts: Box::new([[0; WIDTH]; DEPTH]),
                samples: 0,
                weight: 0,
                candidates: HashMap::new(),
            }),
        }
    }

    /// A read of `key` (sampled).
    pub fn record(&self, key: &str) {
        if !sampled() {
            return;
        }
        let slots: [usize; DEPTH] =
            std::array::from_fn(|row| (self.hashers[row].hash_one(key) as usize) % WIDTH);
        let mut state = self.state.lock();
        let mut estimate = u32::MAX;
        for (row, slot) in slots.iter().enumerate() {
            let c = &mut state.counts[row][*slot];
            *c = c.saturating_add(1);
            estimate = estimate.min(*c);
        }
        state.samples += 1;
        state.weight += 1;
        if state.samples % SHARE_EVERY == 0 {
            let mut counts: Vec<u32> = state.candidates.values().copied().collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let hottest = counts.first().copied().unwrap_or(0);
            self.share_gauge
                .set(f64::from(hottest) / state.weight.max(1) as f64);
            for (rank, gauge) in self.rank_gauges.iter().enumerate() {
                let count = counts.get(rank).copied().unwrap_or(0);
                gauge.set(f64::from(count) * f64::from(SAMPLE));
            }
        }
        if state.samples % DECAY_EVERY == 0 {
            state.weight /= 2;
            for row in state.counts.iter_mut() {
                row.iter_mut().for_each(|c| *c /= 2);
            }
            state.candidates.values_mut().for_each(|c| *c /= 2);
        }
        let capacity = self.k * 4;
        if let Some(c) = state.candidates.get_mut(key) {
            *c = estimate;
            return;
        }
        if state.candidates.len() < capacity {
            state.candidates.insert(key.into(), estimate);
            return;
        }
        // Replace the coldest candidate if this key is now hotter.
        let coldest = state
            .candidates
            .iter()
            .min_by_key(|(_, c)| **c)
            .map(|(k, c)| (k.clone(), *c));
        if let Some((cold_key, cold)) = coldest {
            if estimate > cold {
                state.candidates.remove(&cold_key);
                state.candidates.insert(key.into(), estimate);
            }
        }
    }

    /// Whether `key` is among the `k` hottest now, with at least `MIN_HOT_SAMPLES` samples
    /// (a key read a few times is not hot, however quiet the cache).
    pub fn is_hot(&self, key: &str) -> bool {
        let state = self.state.lock();
        let Some(&count) = state.candidates.get(key) else {
            return false;
        };
        count >= MIN_HOT_SAMPLES
            && state.candidates.values().filter(|c| **c > count).count() < self.k
    }

    /// The estimated (sampled) reads of any key: for ranking keys that are not candidates.
    pub fn estimate(&self, key: &str) -> u64 {
        let slots: [usize; DEPTH] =
            std::array::from_fn(|row| (self.hashers[row].hash_one(key) as usize) % WIDTH);
        let state = self.state.lock();
        let min = (0..DEPTH)
            .map(|row| state.counts[row][slots[row]])
            .min()
            .unwrap_or(0);
        u64::from(min) * u64::from(SAMPLE)
    }

    /// The hottest keys, hottest first, with their estimated reads (scaled back from the
    /// sample, since the last decay).
    pub fn top(&self) -> Vec<(String, u64)> {
        let state = self.state.lock();
        let mut top: Vec<(String, u64)> = state
            .candidates
            .iter()
            .map(|(k, c)| (k.to_string(), u64::from(*c) * u64::from(SAMPLE)))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(self.k);
        top
    }
}

thread_local! {
    /// xorshift64 state: the sampling draw is on every read, so it must cost about nothing
    /// (a `ThreadRng` draw measured ~40 ns on the L1 hit).
    static DRAW: std::cell::Cell<u64> = std::cell::Cell::new(rand::random::<u64>() | 1);
}

/// One read in `SAMPLE`, at random.
fn sampled() -> bool {
    DRAW.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x % u64::from(SAMPLE) == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Zipf(s) ranks over `n` keys by inverse CDF.
    fn zipf_sampler(n: usize, s: f64) -> impl FnMut(&mut rand::rngs::SmallRng) -> usize {
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for w in weights {
            acc += w / total;
            cdf.push(acc);
        }
        move |rng| {
            let u: f64 = rng.random();
            cdf.partition_point(|c| *c < u).min(n - 1)
        }
    }

    #[test]
    fn finds_the_true_top_10_of_a_zipf_stream() {
        let hot = HotKeys::new(10, metrics::Gauge::noop(), Vec::new());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut draw = zipf_sampler(100_000, 1.0);
        let mut truth = vec![0u64; 100_000];
        for _ in 0..6_000_000 {
            let rank = draw(&mut rng);
            truth[rank] += 1;
            hot.record(&format!("ns:v1:{rank}"));
        }
        let mut by_count: Vec<usize> = (0..truth.len()).collect();
        by_count.sort_by_key(|r| std::cmp::Reverse(truth[*r]));
        let true_top: Vec<String> = by_count[..10]
            .iter()
            .map(|r| format!("ns:v1:{r}"))
            .collect();
        let found = hot.top();
        let hits = found.iter().filter(|(k, _)| true_top.contains(k)).count();
        let precision = hits as f64 / found.len() as f64;
        eprintln!("hot-key precision {precision}");
        assert!(
            precision >= 0.9,
            "precision {precision}: {found:?} vs {true_top:?}"
        );
        assert_eq!(found[0].0, true_top[0], "the hottest key is named first");
    }

    #[test]
    fn only_the_top_k_with_enough_reads_are_hot() {
        let hot = HotKeys::new(2, metrics::Gauge::noop(), Vec::new());
        for (key, reads) in [("a", 40_000), ("b", 20_000), ("c", 10_000), ("d", 200)] {
            for _ in 0..reads {
                hot.record(key);
            }
        }
        assert!(hot.is_hot("a") && hot.is_hot("b"));
        assert!(!hot.is_hot("c"), "third of k = 2");
        assert!(!hot.is_hot("d") && !hot.is_hot("never"));
        let quiet = HotKeys::new(10, metrics::Gauge::noop(), Vec::new());
        for _ in 0..200 {
            quiet.record("x");
        }
        assert!(!quiet.is_hot("x"), "a few reads are not hot");
    }

    #[test]
    fn a_key_that_cools_down_falls_out() {
        let hot = HotKeys::new(1, metrics::Gauge::noop(), Vec::new());
        for _ in 0..(DECAY_EVERY as usize * SAMPLE as usize / 2) {
            hot.record("old");
        }
        assert_eq!(hot.top()[0].0, "old");
        for _ in 0..(DECAY_EVERY as usize * SAMPLE as usize * 3) {
            hot.record("new");
        }
        assert_eq!(hot.top()[0].0, "new");
    }
}
