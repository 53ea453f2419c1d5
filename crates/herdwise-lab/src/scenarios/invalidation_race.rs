//! `invalidation-race`: the cache-aside race (seed 003, hole 4) under load. Writers update a key
//! at the origin and then invalidate it while readers load it; a load that read the origin before
//! the write but fills after the invalidation leaves an old value in the cache until its TTL.
//! After the run (and a quiet period for loads in flight), every key's cached value is compared
//! with the origin: entries older than the origin are *permanently stale* (they stay for the
//! 5-minute TTL). Naive cache-aside vs Herdwise's fenced fills; goal: 0.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore};
use herdwise_testkit::RedisServer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redis::aio::ConnectionManager;
use serde_json::json;

use super::compare;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const KEYS: u64 = 100;

/// An origin whose values are version numbers; a read sees the version at its start and
/// returns it after the query latency (the window in which a write can overtake it).
struct VersionedOrigin {
    versions: Vec<AtomicU64>,
    queries: AtomicU64,
}

impl VersionedOrigin {
    async fn read(&self, key: u64, rng_latency: Duration) -> u64 {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let v = self.versions[key as usize].load(Ordering::SeqCst);
        tokio::time::sleep(rng_latency).await;
        v
    }
    fn write(&self, key: u64) {
        self.versions[key as usize].fetch_add(1, Ordering::SeqCst);
    }
    fn version(&self, key: u64) -> u64 {
        self.versions[key as usize].load(Ordering::SeqCst)
    }
}

/// One strategy's read and invalidate paths.
#[derive(Clone)]
enum Side {
    Naive(Vec<ConnectionManager>),
    Herdwise(Vec<Cache<u64, u64>>),
}

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

impl Side {
    async fn read(
        &self,
        instance: usize,
        key: u64,
        origin: &VersionedOrigin,
        latency: Duration,
    ) -> bool {
        match self {
            Side::Naive(conns) => {
                let mut conn = conns[instance % conns.len()].clone();
                let redis_key = format!("naive:{key}");
                let cached: Result<Option<u64>, _> = redis::cmd("GET")
                    .arg(&redis_key)
                    .query_async(&mut conn)
                    .await;
                match cached {
                    Ok(Some(_)) => true,
                    Ok(None) => {
                        let v = origin.read(key, latency).await;
                        let r: Result<(), _> = redis::cmd("SET")
                            .arg(&redis_key)
                            .arg(v)
                            .arg("EX")
                            .arg(300)
                            .query_async(&mut conn)
                            .await;
                        r.is_ok()
                    }
                    Err(_) => false,
                }
            }
            Side::Herdwise(caches) => caches[instance % caches.len()]
                .get_or_load(&key, |k| async move {
                    Ok::<_, Never>(Some(origin.read(*k, latency).await))
                })
                .await
                .is_ok(),
        }
    }

    async fn invalidate(&self, instance: usize, key: u64) {
        match self {
            Side::Naive(conns) => {
                let mut conn = conns[instance % conns.len()].clone();
                let _: Result<i64, _> = redis::cmd("DEL")
                    .arg(format!("naive:{key}"))
                    .query_async(&mut conn)
                    .await;
            }
            Side::Herdwise(caches) => {
                let _ = caches[instance % caches.len()].invalidate(&key).await;
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(4);
    let readers = settings.concurrency_or(32);
    let writers = 4;
    let duration = settings.duration_or(Duration::from_secs(10), Duration::from_secs(4));
    let mut strategies = Vec::new();
    for name in ["naive", "herdwise"] {
        let server = RedisServer::start()?;
        let url = server.url();
        let side = match name {
            "naive" => {
                let mut conns = Vec::new();
                for _ in 0..instances {
                    conns.push(ConnectionManager::new(redis::Client::open(url.as_str())?).await?);
                }
                Side::Naive(conns)
            }
            _ => {
                let mut caches = Vec::new();
                for _ in 0..instances {
                    caches.push(herdwise_cache(&url, true).await?);
                }
                Side::Herdwise(caches)
            }
        };
        let origin = Arc::new(VersionedOrigin {
            versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            queries: AtomicU64::new(0),
        });
        let bar = settings.progress_bar(&format!("invalidation-race {name}"), duration);
        let started = Instant::now();
        let deadline = started + duration;
        let reads = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for r in 0..readers {
            let (side, origin, reads) = (side.clone(), origin.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(r as u64 + 100);
                while Instant::now() < deadline {
                    let key = rng.random_range(0..KEYS);
                    let latency = Duration::from_millis(rng.random_range(5..25));
                    side.read(r, key, &origin, latency).await;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for w in 0..writers {
            let (side, origin, writes) = (side.clone(), origin.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(w as u64 + 1000);
                while Instant::now() < deadline {
                    let key = rng.random_range(0..KEYS);
                    origin.write(key); // the database write ...
                    side.invalidate(w, key).await; // ... then the invalidation
                    writes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..10))).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        bar.finish_and_clear();
        // Let loads still in flight finish and fill (or be refused).
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (stale_shared, stale_l1) = count_stale(&side, &url, &origin).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let mut result = StrategyResult {
            name: name.into(),
            reads: reads.load(Ordering::Relaxed),
            reads_per_sec: reads.load(Ordering::Relaxed) as f64 / elapsed,
            origin_queries: Some(origin.queries.load(Ordering::Relaxed)),
            ..Default::default()
        };
        result
            .extra
            .insert("writes".into(), writes.load(Ordering::Relaxed) as f64);
        result
            .extra
            .insert("permanently_stale_keys".into(), stale_shared as f64);
        result
            .extra
            .insert("stale_l1_copies_on_other_instances".into(), stale_l1 as f64);
        strategies.push(result);
    }
    let mut ratios = BTreeMap::new();
    compare(
        &mut ratios,
        &strategies,
        ("herdwise", "naive"),
        "permanently stale keys",
        |r| {
            r.extra
                .get("permanently_stale_keys")
                .copied()
                .unwrap_or(0.0)
        },
    );
    Ok(ScenarioResult {
        name: "invalidation-race".into(),
        description: format!(
            "{KEYS} keys, {readers} readers over {instances} instances, {writers} writers (origin write, then invalidate), loads 5-25 ms; stale = cached value older than the origin after the run"
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("readers".into(), json!(readers)),
            ("writers".into(), json!(writers)),
            ("keys".into(), json!(KEYS)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}

async fn herdwise_cache(url: &str, l1: bool) -> Result<Cache<u64, u64>, LabError> {
    let builder = Cache::builder("race")
        .store(RedisStore::connect(url).await?)
        .ttl(Duration::from_secs(300));
    Ok(if l1 {
        builder
    } else {
        builder.l1_max_bytes(0).no_hot_key_shield()
    }
    .build()?)
}

/// Keys whose value in the shared tier is older than the origin, and (Herdwise) stale copies in
/// the instances' L1s — those die with the L1 cap and, with #5's backplane, on invalidation.
async fn count_stale(
    side: &Side,
    url: &str,
    origin: &VersionedOrigin,
) -> Result<(u64, u64), LabError> {
    let mut stale_shared = 0;
    let mut stale_l1 = 0;
    match side {
        Side::Naive(conns) => {
            let mut conn = conns[0].clone();
            for k in 0..KEYS {
                let cached: Option<u64> = redis::cmd("GET")
                    .arg(format!("naive:{k}"))
                    .query_async(&mut conn)
                    .await?;
                if cached.is_some_and(|v| v < origin.version(k)) {
                    stale_shared += 1;
                }
            }
        }
        Side::Herdwise(caches) => {
            let shared = herdwise_cache(url, false).await?;
            for k in 0..KEYS {
                if shared
                    .get(&k)
                    .await?
                    .is_some_and(|v| *v < origin.version(k))
                {
                    stale_shared += 1;
                }
                for cache in caches {
                    if cache.get(&k).await?.is_some_and(|v| *v < origin.version(k)) {
                        stale_l1 += 1;
                    }
                }
            }
        }
    }
    Ok((stale_shared, stale_l1))
}
