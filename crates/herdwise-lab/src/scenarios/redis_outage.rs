//! `redis-outage`: a steady, warm load (Redis preloaded, fixed offered rate); at 1/3 of the run
//! Redis is killed (SIGKILL), at 2/3 restarted on the same port — empty, as a cache restarts.
//! The origin can serve a warm cache's misses but not every read: past 32 queries in flight it
//! rejects, the "database melts" model. Shows origin load, failed reads and latency over time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herdwise::{Cache, RedisStore};
use herdwise_testkit::RedisServer;
use redis::aio::ConnectionManager;
use serde_json::json;

use super::compare;
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::{ScenarioResult, StrategyResult};
use crate::{measure, strategy, LabError, Load, Settings};

const KEYS: u64 = 100_000;

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(4);
    let concurrency = settings.concurrency_or(128);
    let duration = settings.duration_or(Duration::from_secs(30), Duration::from_secs(12));
    let rate = 20_000.0;
    let kill_at = duration / 3;
    let restart_at = duration * 2 / 3;
    let keys = Keys::Zipf { n: KEYS, s: 0.99 };
    let ttl = Duration::from_secs(300);
    let origin_config = OriginConfig {
        base_latency: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        max_concurrency: 32,
        overload: Overload::Reject,
        value_size: 100,
    };
    let mut strategies = Vec::new();
    for name in ["naive", "herdwise"] {
        let server = RedisServer::start()?;
        let url = server.url();
        let server = Arc::new(Mutex::new(server));
        let origin = Origin::new(origin_config.clone(), duration.as_secs() as usize + 2);
        let fleet = match name {
            "naive" => {
                preload_naive(&url, &origin, ttl).await?;
                strategy::naive(&url, instances, &origin, ttl).await?
            }
            _ => {
                preload_herdwise(&url, &origin, ttl).await?;
                strategy::herdwise(name, &url, instances, &origin, |b| b.ttl(ttl)).await?
            }
        };
        let bar = settings.progress_bar(&format!("redis-outage {name}"), duration);
        let started = Instant::now();
        let faults = tokio::spawn(inject_faults(server.clone(), started, kill_at, restart_at));
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
            tracing::error!("restarting redis failed: {e}");
        }
        summarize_windows(&mut result, kill_at, restart_at, duration);
        strategies.push(result);
    }
    let events = vec![
        (
            kill_at.as_secs_f64(),
            "redis-server killed (SIGKILL)".to_string(),
        ),
        (
            restart_at.as_secs_f64(),
            "redis-server restarted (empty)".to_string(),
        ),
    ];
    let mut ratios = BTreeMap::new();
    let pair = ("herdwise", "naive");
    compare(
        &mut ratios,
        &strategies,
        pair,
        "origin qps during outage",
        |r| r.extra.get("origin_qps_outage").copied().unwrap_or(0.0),
    );
    compare(&mut ratios, &strategies, pair, "failed reads", |r| {
        r.errors as f64
    });
    Ok(ScenarioResult {
        name: "redis-outage".into(),
        description: format!(
            "Zipf(0.99) over {KEYS} preloaded keys, {rate} reads/s offered by {concurrency} readers over {instances} instances; Redis killed at {:.0}s, restarted empty at {:.0}s; origin rejects past 32 in flight",
            kill_at.as_secs_f64(),
            restart_at.as_secs_f64()
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("concurrency".into(), json!(concurrency)),
            ("reads_per_sec".into(), json!(rate)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(keys)),
            ("origin".into(), json!(origin_config)),
        ]),
        strategies,
        ratios,
        events,
    })
}

async fn inject_faults(
    server: Arc<Mutex<RedisServer>>,
    started: Instant,
    kill_at: Duration,
    restart_at: Duration,
) -> Result<(), String> {
    tokio::time::sleep_until((started + kill_at).into()).await;
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        if let Ok(mut s) = s.lock() {
            s.kill();
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    tokio::time::sleep_until((started + restart_at).into()).await;
    tokio::task::spawn_blocking(move || match server.lock() {
        Ok(mut s) => s.restart().map_err(|e| e.to_string()),
        Err(_) => Err("server lock poisoned".to_string()),
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Every key into Redis the way naive code stores it (pipelined, outside the measured run).
async fn preload_naive(url: &str, origin: &Origin, ttl: Duration) -> Result<(), LabError> {
    let mut conn = ConnectionManager::new(redis::Client::open(url)?).await?;
    for chunk in (1..=KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("SET")
                .arg(format!("naive:{k}"))
                .arg(origin.value_of(*k))
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
    }
    Ok(())
}

/// Every key into Redis through a Herdwise cache with L1 off (so no fleet instance starts with a
/// warm L1 it did not earn).
async fn preload_herdwise(url: &str, origin: &Origin, ttl: Duration) -> Result<(), LabError> {
    let cache: Cache<u64, Vec<u8>> = Cache::builder("lab")
        .store(RedisStore::connect(url).await?)
        .ttl(ttl)
        .l1_max_bytes(0)
        .build()?;
    let results: Vec<_> = futures::stream::iter(1..=KEYS)
        .map(|k| {
            let cache = cache.clone();
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

/// Adds per-window figures: before the kill, during the outage, after the restart.
fn summarize_windows(
    r: &mut StrategyResult,
    kill_at: Duration,
    restart_at: Duration,
    end: Duration,
) {
    let windows = [
        ("steady", 0, kill_at.as_secs()),
        ("outage", kill_at.as_secs(), restart_at.as_secs()),
        ("recovery", restart_at.as_secs(), end.as_secs()),
    ];
    for (label, from, to) in windows {
        let points: Vec<_> = r
            .timeline
            .iter()
            .filter(|p| p.second >= from && p.second < to)
            .collect();
        let secs = points.len().max(1) as f64;
        let origin: u64 = points.iter().map(|p| p.origin_queries).sum();
        let errors: u64 = points.iter().map(|p| p.errors).sum();
        let reads: u64 = points.iter().map(|p| p.reads).sum();
        let p99 = points.iter().map(|p| p.p99_us).max().unwrap_or(0);
        r.extra
            .insert(format!("origin_qps_{label}"), origin as f64 / secs);
        r.extra
            .insert(format!("failed_reads_{label}"), errors as f64);
        r.extra
            .insert(format!("reads_per_sec_{label}"), reads as f64 / secs);
        r.extra
            .insert(format!("worst_second_p99_ms_{label}"), p99 as f64 / 1000.0);
    }
}
