//! `hit-path`: L1-hit throughput of `Cache::get` against the raw engines — quick_cache (Herdwise's
//! L1 engine) and moka — with the same keys, values and threads. The ratio is what Herdwise's
//! key encoding, deadline check and bookkeeping cost on top of the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use herdwise::{Cache, MemoryStore};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::ratio;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const KEYS: u64 = 10_000;
const SEQUENCE: usize = 1 << 16;

/// Runs `threads` OS threads for `duration`, each calling `get` on keys from the shared
/// sequence; returns operations completed. Every engine is measured the same way: a synchronous
/// call per key (Herdwise's L1 hit completes without awaiting, so it is polled once).
fn run_engine<F>(threads: usize, duration: Duration, keys: &[u64], get: F) -> u64
where
    F: Fn(u64) -> bool + Sync,
{
    let deadline = Instant::now() + duration;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let get = &get;
                scope.spawn(move || {
                    let mut i = t * 4099;
                    let mut ops = 0u64;
                    let mut found = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..256 {
                            i = (i + 1) % SEQUENCE;
                            found += u64::from(get(keys[i]));
                        }
                        ops += 256;
                    }
                    // Every key was preloaded: a miss would mean we measured the wrong path.
                    (ops, found)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .map(|(ops, found)| ops.min(found))
            .sum()
    })
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let tasks =
        settings.concurrency_or(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let duration = settings.duration_or(Duration::from_secs(3), Duration::from_secs(1));
    let mut rng = SmallRng::seed_from_u64(7);
    let keys: Vec<u64> = (0..SEQUENCE).map(|_| rng.random_range(0..KEYS)).collect();
    let value = Arc::new(vec![7u8; 100]);

    let herdwise: Cache<u64, Vec<u8>> = Cache::builder("hitpath")
        .store(MemoryStore::new())
        .ttl(Duration::from_secs(3600))
        .l1_max_bytes(64 << 20)
        .build()?;
    let quick = quick_cache::sync::Cache::<u64, Arc<Vec<u8>>>::new(KEYS as usize * 2);
    let moka = moka::sync::Cache::<u64, Arc<Vec<u8>>>::new(KEYS * 2);
    for k in 0..KEYS {
        herdwise.set(&k, value.clone()).await?;
        quick.insert(k, value.clone());
        moka.insert(k, value.clone());
    }

    let mut strategies = Vec::new();
    let mut measure = |name: &str, ops: u64| {
        let secs = duration.as_secs_f64();
        let mut r = StrategyResult {
            name: name.into(),
            reads: ops,
            reads_per_sec: ops as f64 / secs,
            ..Default::default()
        };
        r.extra.insert(
            "ns_per_op_per_thread".into(),
            secs * 1e9 * tasks as f64 / ops.max(1) as f64,
        );
        strategies.push(r);
    };

    let bar = settings.progress_bar("hit-path", duration * 3);
    let ops = run_engine(tasks, duration, &keys, |k| {
        matches!(herdwise.get(&k).now_or_never(), Some(Ok(Some(_))))
    });
    measure("herdwise Cache::get", ops);
    let ops = run_engine(tasks, duration, &keys, |k| quick.get(&k).is_some());
    measure("quick_cache get", ops);
    let ops = run_engine(tasks, duration, &keys, |k| moka.get(&k).is_some());
    measure("moka get", ops);
    bar.finish_and_clear();

    let rps = |i: usize| {
        strategies
            .get(i)
            .map_or(0.0, |s: &StrategyResult| s.reads_per_sec)
    };
    let ratios = BTreeMap::from([
        (
            "herdwise/quick_cache throughput".to_string(),
            ratio(rps(0), rps(1)),
        ),
        (
            "herdwise/moka throughput".to_string(),
            ratio(rps(0), rps(2)),
        ),
    ]);
    Ok(ScenarioResult {
        name: "hit-path".into(),
        description: format!("L1 hits on {KEYS} preloaded keys (100 B values), {tasks} threads"),
        params: BTreeMap::from([
            ("threads".into(), json!(tasks)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(KEYS)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}
