//! `drift`: lost invalidations, and the verifier that finds them (seed 001's "cache verification
//! job"). Two instances share a Redis and serve a steady 2,000 reads a second over 1,000 keys.
//! Two seconds in, writers change 10 rows at the origin and their invalidations are lost: the
//! cache keeps serving the old rows (for its 10-minute TTL). Without a verifier that drift is
//! invisible; with one, sampling 1 % or 10 % of the fresh reads, it is reported, and with
//! `repair` it is invalidated. Figures: seconds from the lost writes until the first confirmed
//! mismatch and (with repair) until the last stale read; stale reads served; rows still stale
//! at the end; the origin loads the checks added per second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore, VerifyOptions};
use herdwise_testkit::RedisServer;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const KEYS: u64 = 1_000;
const DRIFTED: u64 = 10;
const READS_PER_SEC: u64 = 2_000;
const READERS: u64 = 8;
const INJECT_AT: Duration = Duration::from_secs(2);

/// The origin: a version per row; every load counted.
struct Origin {
    versions: Vec<AtomicU64>,
    loads: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

/// One configuration: the verifier's sampling and repair (`None`: no verifier).
struct Config {
    name: &'static str,
    verify: Option<(f64, bool)>,
}

const CONFIGS: [Config; 5] = [
    Config {
        name: "no verifier",
        verify: None,
    },
    Config {
        name: "verify 1%",
        verify: Some((0.01, false)),
    },
    Config {
        name: "verify 10%",
        verify: Some((0.10, false)),
    },
    Config {
        name: "verify 1% + repair",
        verify: Some((0.01, true)),
    },
    Config {
        name: "verify 10% + repair",
        verify: Some((0.10, true)),
    },
];

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let duration = settings.duration_or(Duration::from_secs(40), Duration::from_secs(8));
    let mut strategies = Vec::new();
    let mut rng = SmallRng::seed_from_u64(7);
    // The rows whose invalidation is lost: the same for every configuration.
    let mut drifted: Vec<u64> = Vec::new();
    while drifted.len() < DRIFTED as usize {
        let k = rng.random_range(0..KEYS);
        if !drifted.contains(&k) {
            drifted.push(k);
        }
    }
    for config in &CONFIGS {
        strategies.push(run_one(settings, config, &drifted, duration).await?);
    }
    let mut ratios = BTreeMap::new();
    let baseline = strategies
        .iter()
        .find(|s| s.name == "no verifier")
        .and_then(|s| s.origin_queries)
        .unwrap_or(0) as f64;
    for s in &strategies {
        let added = (s.origin_queries.unwrap_or(0) as f64 - baseline).max(0.0);
        ratios.insert(
            format!("{} origin loads added per second", s.name),
            added / duration.as_secs_f64(),
        );
    }
    Ok(ScenarioResult {
        name: "drift".into(),
        description: format!(
            "{KEYS} keys, {READS_PER_SEC} reads/s over 2 instances, {DRIFTED} rows changed at {:.0} s with their invalidations lost; the verifier (max 500 checks/s) samples fresh reads",
            INJECT_AT.as_secs_f64()
        ),
        params: BTreeMap::from([
            ("keys".into(), json!(KEYS)),
            ("drifted".into(), json!(DRIFTED)),
            ("reads_per_sec".into(), json!(READS_PER_SEC)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
        ]),
        strategies,
        ratios,
        events: vec![(INJECT_AT.as_secs_f64(), format!("{DRIFTED} rows changed, invalidations lost"))],
    })
}

async fn run_one(
    settings: &Settings,
    config: &Config,
    drifted: &[u64],
    duration: Duration,
) -> Result<StrategyResult, LabError> {
    let server = RedisServer::start()?;
    let origin = Arc::new(Origin {
        versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        loads: AtomicU64::new(0),
    });
    let mut caches = Vec::new();
    for _ in 0..2 {
        let loader_origin = origin.clone();
        let mut builder = Cache::<u64, u64>::builder("drift")
            .store(RedisStore::connect(&server.url()).await?)
            .ttl(Duration::from_secs(600))
            .loader(move |k: &u64| {
                let origin = loader_origin.clone();
                let k = *k;
                async move {
                    origin.loads.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok::<_, Never>(Some(origin.versions[k as usize].load(Ordering::SeqCst)))
                }
            });
        if let Some((sample, repair)) = config.verify {
            builder = builder.verify(
                VerifyOptions::new(sample)
                    .max_checks_per_second(500.0)
                    .repair(repair),
            );
        }
        caches.push(builder.build()?);
    }
    // Warm: every row cached before the clock starts.
    for k in 0..KEYS {
        caches[0].fetch(&k).await?;
    }
    let loads_before = origin.loads.load(Ordering::Relaxed);
    let bar = settings.progress_bar(&format!("drift {}", config.name), duration);
    let started = Instant::now();
    let deadline = started + duration;
    let reads = Arc::new(AtomicU64::new(0));
    let stale_reads = Arc::new(AtomicU64::new(0));
    let last_stale = Arc::new(Mutex::new(None::<Duration>));
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let (caches, origin, reads, stale_reads, last_stale) = (
            caches.clone(),
            origin.clone(),
            reads.clone(),
            stale_reads.clone(),
            last_stale.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(r + 10);
            let every = Duration::from_secs_f64(READERS as f64 / READS_PER_SEC as f64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while Instant::now() < deadline {
                tick.tick().await;
                let k = rng.random_range(0..KEYS);
                let cache = &caches[(r % 2) as usize];
                if let Ok(Some(v)) = cache.fetch(&k).await {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if *v != origin.versions[k as usize].load(Ordering::SeqCst) {
                        stale_reads.fetch_add(1, Ordering::Relaxed);
                        *last_stale.lock() = Some(started.elapsed());
                    }
                }
            }
        }));
    }
    // The lost invalidations.
    tokio::time::sleep_until((started + INJECT_AT).into()).await;
    for k in drifted {
        origin.versions[*k as usize].fetch_add(1, Ordering::SeqCst);
    }
    let injected = started.elapsed();
    // When the verifiers first report a mismatch.
    let mut detected = None;
    while Instant::now() < deadline {
        let mismatched: u64 = caches
            .iter()
            .filter_map(|c| c.verify_report())
            .map(|r| r.mismatched)
            .sum();
        if detected.is_none() && mismatched > 0 {
            detected = Some(started.elapsed() - injected);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let check_loads = origin.loads.load(Ordering::Relaxed) - loads_before;
    // Rows still stale at the end, in either instance.
    let mut still_stale = 0;
    for k in drifted {
        let fresh = origin.versions[*k as usize].load(Ordering::SeqCst);
        for cache in &caches {
            if cache.get(k).await?.is_some_and(|v| *v != fresh) {
                still_stale += 1;
                break;
            }
        }
    }
    let reports: Vec<_> = caches.iter().filter_map(|c| c.verify_report()).collect();
    let sum = |f: fn(&herdwise::VerifyReport) -> u64| reports.iter().map(f).sum::<u64>() as f64;
    let mut result = StrategyResult {
        name: config.name.into(),
        reads: reads.load(Ordering::Relaxed),
        reads_per_sec: reads.load(Ordering::Relaxed) as f64 / elapsed,
        origin_queries: Some(check_loads),
        ..Default::default()
    };
    let extra = &mut result.extra;
    extra.insert(
        "stale_reads".into(),
        stale_reads.load(Ordering::Relaxed) as f64,
    );
    extra.insert("rows_still_stale_at_end".into(), still_stale as f64);
    extra.insert("check_loads_per_sec".into(), check_loads as f64 / elapsed);
    if let Some(detected) = detected {
        extra.insert("first_mismatch_after_s".into(), detected.as_secs_f64());
    }
    if config.verify.is_some_and(|(_, repair)| repair) && still_stale == 0 {
        if let Some(last) = *last_stale.lock() {
            extra.insert(
                "drift_gone_after_s".into(),
                last.saturating_sub(injected).as_secs_f64(),
            );
        }
    }
    extra.insert("checks".into(), sum(|r| r.checked));
    extra.insert("mismatches_confirmed".into(), sum(|r| r.mismatched));
    extra.insert("resolved".into(), sum(|r| r.resolved));
    extra.insert("skipped".into(), sum(|r| r.skipped));
    Ok(result)
}
