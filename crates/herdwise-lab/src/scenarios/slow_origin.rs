//! `slow-origin`: the adaptive origin limit finding a database's capacity. Reads over a key
//! space too large to cache (every read a miss) are offered at a fixed rate by two instances to
//! a database that runs 16 queries at once and queues the rest (latency grows with the queue,
//! as a real one's does). In the first half each query takes 2 ms (capacity ~7k queries/s, well
//! above the offered 3k/s); in the second half the database slows to 10 ms per query (capacity
//! ~1.5k/s, half the offered rate). Herdwise with its default (adaptive) limit against Herdwise
//! with no limit. Per half: the database's queue (mean depth, sampled every 50 ms), its
//! throughput, failed (shed) reads, read latency, and each instance's learned limit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herdwise::Cache;
use serde_json::json;

use super::compare;
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::{ScenarioResult, StrategyResult};
use crate::strategy::{Fleet, Reader};
use crate::{measure, LabError, Load, Settings};

/// Queries the database runs at once.
const CAPACITY: usize = 16;
const FAST: Duration = Duration::from_millis(2);
const SLOW: Duration = Duration::from_millis(10);
const RATE: f64 = 3_000.0;
const INSTANCES: usize = 2;

struct Direct {
    cache: Cache<u64, Vec<u8>>,
    origin: Arc<Origin>,
}

#[async_trait::async_trait]
impl Reader for Direct {
    async fn read(&self, key: u64) -> Result<usize, String> {
        let origin = &self.origin;
        self.cache
            .get_or_load(&key, |k| async move { origin.load(*k).await.map(Some) })
            .await
            .map(|v| v.map_or(0, |v| v.len()))
            .map_err(|e| e.to_string())
    }
}

/// What the sampler saw in each half: database queue depths and each instance's limit.
#[derive(Default)]
struct Samples {
    queue: [Vec<usize>; 2],
    limits: [Vec<usize>; 2],
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let concurrency = settings.concurrency_or(256);
    let duration = settings.duration_or(Duration::from_secs(30), Duration::from_secs(8));
    let half = duration / 2;
    let origin_config = OriginConfig {
        base_latency: FAST,
        jitter: Duration::from_millis(1),
        max_concurrency: CAPACITY,
        overload: Overload::Queue,
        value_size: 100,
    };
    let mut strategies = Vec::new();
    for name in ["herdwise (adaptive limit, default)", "herdwise (no limit)"] {
        let origin = Origin::new(origin_config.clone(), duration.as_secs() as usize + 2);
        let mut caches = Vec::new();
        for _ in 0..INSTANCES {
            let builder = Cache::<u64, Vec<u8>>::builder("slow-origin").l1_max_bytes(1 << 20);
            let builder = if name.contains("no limit") {
                builder.no_origin_limit()
            } else {
                builder
            };
            caches.push(builder.build()?);
        }
        let readers: Vec<Arc<dyn Reader>> = caches
            .iter()
            .map(|cache| {
                Arc::new(Direct {
                    cache: cache.clone(),
                    origin: origin.clone(),
                }) as Arc<dyn Reader>
            })
            .collect();
        let fleet = Fleet::new(name.to_string(), readers);
        let bar = settings.progress_bar(&format!("slow-origin {name}"), duration);
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Samples::default()));
        let sampler = tokio::spawn({
            let (origin, samples, caches) = (origin.clone(), samples.clone(), caches.clone());
            async move {
                let mut slowed = false;
                while started.elapsed() < duration {
                    let at = started.elapsed();
                    let h = usize::from(at >= half);
                    if h == 1 && !slowed {
                        origin.set_base_latency(SLOW);
                        slowed = true;
                    }
                    if let Ok(mut s) = samples.lock() {
                        s.queue[h].push(origin.waiting());
                        for cache in &caches {
                            if let Some(limit) = cache.origin_limit() {
                                s.limits[h].push(limit);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let load = Load {
            concurrency,
            duration,
            keys: Keys::Uniform { n: 1 << 40 },
            pace: Pace::Rate {
                reads_per_sec: RATE,
            },
        };
        let mut result = measure(&fleet, &origin, load, started, &bar).await;
        let _ = sampler.await;
        summarize(&mut result, &samples, half);
        strategies.push(result);
    }
    let mut ratios = BTreeMap::new();
    let pair = (strategies[0].name.clone(), strategies[1].name.clone());
    let pair = (pair.0.as_str(), pair.1.as_str());
    for what in [
        "db_queue_mean_slow",
        "worst_second_p99_ms_slow",
        "origin_qps_slow",
    ] {
        compare(&mut ratios, &strategies, pair, what, |r| {
            r.extra.get(what).copied().unwrap_or(0.0)
        });
    }
    Ok(ScenarioResult {
        name: "slow-origin".into(),
        description: format!(
            "uniform reads over 2^40 keys (every read a miss), {RATE} reads/s offered by {concurrency} readers over {INSTANCES} instances (no L2); the database runs {CAPACITY} queries at once and queues the rest: {FAST:?}/query for {}s (capacity ~{:.0}/s), then {SLOW:?}/query (capacity ~{:.0}/s)",
            half.as_secs(),
            CAPACITY as f64 / (FAST.as_secs_f64() + 0.0005),
            CAPACITY as f64 / (SLOW.as_secs_f64() + 0.0005),
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(INSTANCES)),
            ("concurrency".into(), json!(concurrency)),
            ("reads_per_sec".into(), json!(RATE)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("origin".into(), json!(origin_config)),
            ("slow_latency_ms".into(), json!(SLOW.as_millis() as u64)),
        ]),
        strategies,
        ratios,
        events: vec![(half.as_secs_f64(), "database slows to 10 ms/query".into())],
    })
}

fn mean(v: &[usize]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<usize>() as f64 / v.len() as f64
    }
}

/// Per-half figures: the database's queue, throughput, failures, latency, learned limits.
fn summarize(r: &mut StrategyResult, samples: &Mutex<Samples>, half: Duration) {
    let Ok(s) = samples.lock() else {
        return;
    };
    for (h, label) in ["fast", "slow"].iter().enumerate() {
        let (from, to) = (half.as_secs() * h as u64, half.as_secs() * (h as u64 + 1));
        // The first two seconds of each half are the transition.
        let points: Vec<_> = r
            .timeline
            .iter()
            .filter(|p| p.second >= from + 2 && p.second < to)
            .collect();
        let secs = points.len().max(1) as f64;
        let origin: u64 = points.iter().map(|p| p.origin_queries).sum();
        let errors: u64 = points.iter().map(|p| p.errors).sum();
        let reads: u64 = points.iter().map(|p| p.reads).sum();
        let worst_p99 = points.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let skip = (2_000 / 50).min(s.queue[h].len());
        let queue = &s.queue[h][skip..];
        let per_instance_skip = (skip * 2).min(s.limits[h].len());
        let limits = &s.limits[h][per_instance_skip..];
        let extra = &mut r.extra;
        extra.insert(format!("origin_qps_{label}"), origin as f64 / secs);
        extra.insert(format!("reads_per_sec_{label}"), reads as f64 / secs);
        extra.insert(
            format!("failed_reads_per_sec_{label}"),
            errors as f64 / secs,
        );
        extra.insert(
            format!("worst_second_p99_ms_{label}"),
            worst_p99 as f64 / 1000.0,
        );
        extra.insert(format!("db_queue_mean_{label}"), mean(queue));
        extra.insert(
            format!("db_queue_max_{label}"),
            queue.iter().copied().max().unwrap_or(0) as f64,
        );
        if !limits.is_empty() {
            extra.insert(format!("limit_mean_{label}"), mean(limits));
            extra.insert(
                format!("limit_min_{label}"),
                limits.iter().copied().min().unwrap_or(0) as f64,
            );
            extra.insert(
                format!("limit_max_{label}"),
                limits.iter().copied().max().unwrap_or(0) as f64,
            );
        }
    }
}
