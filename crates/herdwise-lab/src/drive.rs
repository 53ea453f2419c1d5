//! The load driver: C worker tasks spread over a fleet's instances, each reading keys from a
//! distribution until the deadline, recording every read. Bounded in time; stops by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::record::Recorder;
use crate::strategy::Reader;

/// Longest a single read may take before it counts as failed.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// How late tokio's millisecond timer may wake a worker without that counting as lag.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Which keys the workers read.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Keys {
    /// One key, always.
    Single {
        /// The key.
        key: u64,
    },
    /// Zipf-distributed over `1..=n` with exponent `s` (1 is the hottest key).
    Zipf {
        /// Number of keys.
        n: u64,
        /// Exponent (0.99 is the classic "realistic skew").
        s: f64,
    },
    /// Uniform over `0..n`.
    Uniform {
        /// Number of keys.
        n: u64,
    },
}

impl Keys {
    fn sampler(&self) -> impl FnMut(&mut SmallRng) -> u64 {
        let keys = *self;
        let zipf = match keys {
            Keys::Zipf { n, s } => Zipf::new(n as f64, s).ok(),
            _ => None,
        };
        move |rng: &mut SmallRng| match keys {
            Keys::Single { key } => key,
            Keys::Zipf { n, .. } => zipf
                .as_ref()
                .map_or(1, |z| (z.sample(rng) as u64).clamp(1, n)),
            Keys::Uniform { n } => rng.random_range(0..n.max(1)),
        }
    }
}

/// How fast the workers read.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// Closed loop: each worker reads again as soon as its last read returns (measures capacity).
    AsFastAsPossible,
    /// Open loop: `reads_per_sec` in total, spread evenly over the workers. Latency is measured
    /// from when a read was *scheduled*, so a worker that falls behind shows the queueing delay
    /// (no coordinated omission).
    Rate {
        /// Total reads per second.
        reads_per_sec: f64,
    },
}

/// Runs `concurrency` workers over `instances` for `duration` and returns the merged recording.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    instances: &[Arc<dyn Reader>],
    concurrency: usize,
    duration: Duration,
    keys: Keys,
    pace: Pace,
    started: Instant,
    progress: &ProgressBar,
) -> Recorder {
    let seconds = duration.as_secs() as usize + 2;
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let reader = instances[worker % instances.len()].clone();
        let mut sample = keys.sampler();
        let interval = match pace {
            Pace::AsFastAsPossible => None,
            Pace::Rate { reads_per_sec } => Some(Duration::from_secs_f64(
                concurrency as f64 / reads_per_sec.max(1e-3),
            )),
        };
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker as u64 + 1);
            let mut recorder = Recorder::new(started, seconds);
            let mut n: u64 = 0;
            // Stagger the workers' schedules across one interval.
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / concurrency as f64)
                });
            while Instant::now() < deadline {
                let key = sample(&mut rng);
                let t = match interval {
                    None => Instant::now(),
                    Some(interval) => {
                        if next > Instant::now() {
                            tokio::time::sleep_until(next.into()).await;
                        }
                        let scheduled = next;
                        next += interval;
                        // Behind schedule: the wait counts (no coordinated omission). Merely
                        // woken late by the millisecond timer: it does not.
                        let now = Instant::now();
                        if now > scheduled + TIMER_SLACK {
                            scheduled
                        } else {
                            now
                        }
                    }
                };
                // A read that hangs (a naive client reconnecting to a dead Redis) still ends, so
                // the run stops by itself.
                let ok = matches!(
                    tokio::time::timeout(READ_LIMIT, reader.read(key)).await,
                    Ok(Ok(_))
                );
                recorder.record(t.elapsed(), ok);
                n += 1;
                // L1 hits never reach a tokio resource; yield so workers share the threads.
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            recorder
        }));
    }
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                progress.set_position(started.elapsed().as_millis().min(u64::MAX as u128) as u64);
            }
        })
    };
    let mut merged = Recorder::new(started, seconds);
    for worker in workers {
        if let Ok(recorder) = worker.await {
            merged.merge(&recorder);
        }
    }
    ticker.abort();
    merged
}
