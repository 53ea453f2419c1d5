//! `redis-outage`: a steady load on a warm cache whose entries expire and reload all the time
//! (TTLs spread over 5 s), then the remote tier's faults in turn: Redis frozen (SIGSTOP — slow
//! but alive), resumed, killed (SIGKILL), and restarted empty on the same port, as a cache
//! restarts. Five equal phases. The origin can serve the steady misses but not every read: past
//! 32 queries in flight it rejects, the "database melts" model. Herdwise runs with its defaults
//! (the adaptive origin limit among them) plus a registered loader (so it can re-warm).
//! Shows origin load, failed reads and latency over time, and per phase.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herdwise::{Cache, RedisStore};
use serde_json::json;

use super::{compare, ratio};
use crate::deploy::Deployment;
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::{ScenarioResult, StrategyResult};
use crate::{measure, strategy, LabError, Load, Settings};

pub(crate) const KEYS: u64 = 100_000;
/// Entries live 5 s, so a steady state (reached within the first phase) has misses to compare
/// the outage with.
pub(crate) const TTL: Duration = Duration::from_secs(5);
/// What happens to Redis at the start of each phase after the first.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Pause,
    Resume,
    Kill,
    Restart,
}

const PHASES: [(&str, Option<Fault>); 5] = [
    ("steady", None),
    ("frozen", Some(Fault::Pause)),
    ("resumed", Some(Fault::Resume)),
    ("killed", Some(Fault::Kill)),
    ("restarted", Some(Fault::Restart)),
];

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(4);
    let concurrency = settings.concurrency_or(128);
    let duration = settings.duration_or(Duration::from_secs(60), Duration::from_secs(30));
    let phase = duration / PHASES.len() as u32;
    let rate = settings.rate_or(20_000.0);
    let keys = Keys::Zipf { n: KEYS, s: 0.99 };
    let origin_config = OriginConfig {
        base_latency: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        max_concurrency: 32,
        overload: Overload::Reject,
        value_size: 100,
    };
    let mut strategies = Vec::new();
    for name in ["naive", "herdwise"] {
        let server = Deployment::start(settings.topology)?;
        let url = server.url();
        let origin = Origin::new(origin_config.clone(), duration.as_secs() as usize + 2);
        let fleet = match name {
            "naive" => {
                preload_naive(&server, &origin).await?;
                strategy::naive(&server, instances, &origin, TTL).await?
            }
            _ => {
                preload_herdwise(&url, &origin).await?;
                strategy::herdwise_with(name, &url, instances, &origin, true, |b| b.ttl(TTL))
                    .await?
            }
        };
        let server = Arc::new(Mutex::new(server));
        let bar = settings.progress_bar(&format!("redis-outage {name}"), duration);
        let started = Instant::now();
        let faults = tokio::spawn(inject_faults(server.clone(), started, phase));
        let load = Load {
            concurrency,
            duration,
            keys,
            pace: Pace::Rate {
                reads_per_sec: rate,
            },
        };
        let mut result = measure(&fleet, &origin, load, started, &bar).await;
        if let Ok(Err(e)) = faults.await {
            tracing::error!("fault injection failed: {e}");
        }
        summarize_phases(&mut result, phase);
        strategies.push(result);
    }
    let events = PHASES
        .iter()
        .enumerate()
        .filter_map(|(i, (_, fault))| {
            let what = match (*fault)? {
                Fault::Pause => "redis-server frozen (SIGSTOP)",
                Fault::Resume => "resumed (SIGCONT)",
                Fault::Kill => "killed (SIGKILL)",
                Fault::Restart => "restarted (empty)",
            };
            Some(((phase * i as u32).as_secs_f64(), what.to_string()))
        })
        .collect();
    let mut ratios = BTreeMap::new();
    let pair = ("herdwise", "naive");
    for (label, _) in PHASES.iter().skip(1) {
        compare(
            &mut ratios,
            &strategies,
            pair,
            &format!("failed reads {label}"),
            |r| {
                r.extra
                    .get(&format!("failed_reads_{label}"))
                    .copied()
                    .unwrap_or(0.0)
            },
        );
    }
    compare(&mut ratios, &strategies, pair, "failed reads", |r| {
        r.errors as f64
    });
    Ok(ScenarioResult {
        name: "redis-outage".into(),
        description: format!(
            "Zipf(0.99) over {KEYS} preloaded keys (TTLs spread over {}s), {rate} reads/s offered by {concurrency} readers over {instances} instances; phases of {}s: steady, Redis frozen (SIGSTOP), resumed, killed (SIGKILL), restarted empty (every node of the {}); origin rejects past 32 in flight; herdwise: fetch, default configuration (adaptive origin limit)",
            TTL.as_secs(),
            phase.as_secs(),
            settings.topology
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("topology".into(), json!(settings.topology)),
            ("concurrency".into(), json!(concurrency)),
            ("reads_per_sec".into(), json!(rate)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(keys)),
            ("ttl_s".into(), json!(TTL.as_secs())),
            ("origin".into(), json!(origin_config)),
            ("herdwise_origin_limit".into(), json!("adaptive (default)")),
        ]),
        strategies,
        ratios,
        events,
    })
}

async fn inject_faults(
    server: Arc<Mutex<Deployment>>,
    started: Instant,
    phase: Duration,
) -> Result<(), String> {
    for (i, (_, fault)) in PHASES.iter().enumerate() {
        let Some(fault) = *fault else {
            continue;
        };
        tokio::time::sleep_until((started + phase * i as u32).into()).await;
        let s = server.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = s.lock().map_err(|_| "server lock poisoned".to_string())?;
            match fault {
                Fault::Pause => s.pause().map_err(|e| e.to_string()),
                Fault::Resume => s.resume().map_err(|e| e.to_string()),
                Fault::Kill => {
                    s.kill();
                    Ok(())
                }
                Fault::Restart => s.restart().map_err(|e| e.to_string()),
            }
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A key's remaining life at preload: spread over the TTL, so entries expire at a steady pace
/// from the start instead of all at once.
fn preload_ttl(key: u64) -> Duration {
    TTL.mul_f64((key % 20 + 1) as f64 / 20.0)
}

/// Every key into Redis the way naive code stores it (64 at a time: a cluster takes no
/// pipeline across slots; outside the measured run).
pub(crate) async fn preload_naive(redis: &Deployment, origin: &Origin) -> Result<(), LabError> {
    let conn = redis.connection().await?;
    crate::deploy::for_each_concurrent(1..=KEYS, 64, |k| {
        let mut conn = conn.clone();
        let value = origin.value_of(k);
        async move {
            let () = redis::cmd("SET")
                .arg(format!("naive:{k}"))
                .arg(value)
                .arg("PX")
                .arg(preload_ttl(k).as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            Ok(())
        }
    })
    .await
}

/// Every key into Redis through Herdwise caches with L1 off (so no fleet instance starts with
/// a warm L1 it did not earn), one per preload TTL.
pub(crate) async fn preload_herdwise(url: &str, origin: &Origin) -> Result<(), LabError> {
    let mut caches = Vec::new();
    for bucket in 0..20u64 {
        let cache: Cache<u64, Vec<u8>> = Cache::builder("lab")
            .store(RedisStore::connect(url).await?)
            .ttl(preload_ttl(bucket))
            .no_ttl_jitter()
            .l1_max_bytes(0)
            .no_hot_key_shield()
            .build()?;
        caches.push(cache);
    }
    let caches = &caches;
    let results: Vec<_> = futures::stream::iter(1..=KEYS)
        .map(|k| {
            let cache = caches[(k % 20) as usize].clone();
            let value = origin.value_of(k);
            async move { cache.set(&k, value).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Adds per-phase figures, and the origin load of each phase against the steady phase's.
fn summarize_phases(r: &mut StrategyResult, phase: Duration) {
    let steady_origin = phase_origin_qps(r, 0, phase);
    for (i, (label, _)) in PHASES.iter().enumerate() {
        let (from, to) = (phase.as_secs() * i as u64, phase.as_secs() * (i as u64 + 1));
        let points: Vec<_> = r
            .timeline
            .iter()
            .filter(|p| p.second >= from && p.second < to)
            .collect();
        let secs = points.len().max(1) as f64;
        let origin: u64 = points.iter().map(|p| p.origin_queries).sum();
        let peak_origin = points.iter().map(|p| p.origin_queries).max().unwrap_or(0);
        let errors: u64 = points.iter().map(|p| p.errors).sum();
        let reads: u64 = points.iter().map(|p| p.reads).sum();
        let p99 = points.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let max = points.iter().map(|p| p.max_us).max().unwrap_or(0);
        let extra = &mut r.extra;
        extra.insert(format!("origin_qps_{label}"), origin as f64 / secs);
        extra.insert(format!("origin_peak_second_{label}"), peak_origin as f64);
        extra.insert(
            format!("origin_vs_steady_{label}"),
            ratio(origin as f64 / secs, steady_origin),
        );
        extra.insert(
            format!("origin_peak_vs_steady_{label}"),
            ratio(peak_origin as f64, steady_origin),
        );
        extra.insert(format!("failed_reads_{label}"), errors as f64);
        extra.insert(format!("reads_per_sec_{label}"), reads as f64 / secs);
        extra.insert(format!("worst_second_p99_ms_{label}"), p99 as f64 / 1000.0);
        extra.insert(format!("slowest_read_ms_{label}"), max as f64 / 1000.0);
    }
}

fn phase_origin_qps(r: &StrategyResult, index: u64, phase: Duration) -> f64 {
    let (from, to) = (phase.as_secs() * index, phase.as_secs() * (index + 1));
    let points: Vec<_> = r
        .timeline
        .iter()
        .filter(|p| p.second >= from && p.second < to)
        .collect();
    let origin: u64 = points.iter().map(|p| p.origin_queries).sum();
    origin as f64 / points.len().max(1) as f64
}
