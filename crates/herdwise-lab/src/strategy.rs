//! The strategies under comparison, each a fleet of N instances (as N pods would be).
//!
//! - `naive`: cache-aside as the seeds' first examples write it — GET; on a miss load from the
//!   origin and SET with a TTL; if Redis fails, go to the origin. No coalescing, no L1, no jitter.
//! - `herdwise`: the library with its defaults.
//! - `herdwise-no-l1`: the library with L1 disabled (to see what L1 buys).
//! - `herdwise-fetch`: the library reading through a registered loader (`Cache::fetch`), which
//!   adds background refresh: XFetch early refresh (on by default) and stale-while-revalidate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herdwise::{Cache, CacheBuilder, RedisStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use crate::deploy::{Conn, Deployment};
use crate::origin::Origin;
use crate::LabError;

/// One instance's read path.
#[async_trait]
pub trait Reader: Send + Sync {
    /// Reads `key`; `Ok(bytes)` is the value's length.
    async fn read(&self, key: u64) -> Result<usize, String>;
}

/// Where reads were answered, summed over a fleet.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TierCounts {
    /// Answered by L1.
    pub l1_hits: u64,
    /// Answered by L2 (Redis).
    pub l2_hits: u64,
    /// Not answered by any cache tier.
    pub misses: u64,
    /// Failed store (Redis) calls.
    pub store_errors: u64,
}

/// N instances of one strategy and a way to read their tier counts.
pub struct Fleet {
    /// Strategy name.
    pub name: String,
    /// The instances.
    pub instances: Vec<Arc<dyn Reader>>,
    counts: Box<dyn Fn() -> TierCounts + Send + Sync>,
}

impl Fleet {
    /// A fleet of plain readers with no tier accounting.
    pub fn new(name: String, instances: Vec<Arc<dyn Reader>>) -> Self {
        Fleet {
            name,
            instances,
            counts: Box::new(TierCounts::default),
        }
    }

    /// Tier counts so far.
    pub fn counts(&self) -> TierCounts {
        (self.counts)()
    }
}

// ---------------------------------------------------------------------------------------------
// naive

#[derive(Default)]
struct NaiveCounts {
    hits: AtomicU64,
    misses: AtomicU64,
    redis_errors: AtomicU64,
}

struct Naive {
    conn: Conn,
    origin: Arc<Origin>,
    ttl: Duration,
    counts: Arc<NaiveCounts>,
}

#[async_trait]
impl Reader for Naive {
    async fn read(&self, key: u64) -> Result<usize, String> {
        let mut conn = self.conn.clone();
        let redis_key = format!("naive:{key}");
        let cached: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await;
        match cached {
            Ok(Some(v)) => {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                Ok(v.len())
            }
            Ok(None) => {
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                let value = self.origin.load(key).await.map_err(|e| e.to_string())?;
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(&value)
                    .arg("PX")
                    .arg(self.ttl.as_millis() as u64)
                    .query_async(&mut conn)
                    .await;
                Ok(value.len())
            }
            Err(_) => {
                self.counts.redis_errors.fetch_add(1, Ordering::Relaxed);
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                let value = self.origin.load(key).await.map_err(|e| e.to_string())?;
                Ok(value.len())
            }
        }
    }
}

/// N naive instances, each with its own Redis connection (see [`Deployment::connection`]).
pub async fn naive(
    redis: &Deployment,
    instances: usize,
    origin: &Arc<Origin>,
    ttl: Duration,
) -> Result<Fleet, LabError> {
    let counts = Arc::new(NaiveCounts::default());
    let mut readers: Vec<Arc<dyn Reader>> = Vec::new();
    for _ in 0..instances {
        readers.push(Arc::new(Naive {
            conn: redis.connection().await?,
            origin: origin.clone(),
            ttl,
            counts: counts.clone(),
        }));
    }
    let c = counts.clone();
    Ok(Fleet {
        name: "naive".into(),
        instances: readers,
        counts: Box::new(move || TierCounts {
            l1_hits: 0,
            l2_hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            store_errors: c.redis_errors.load(Ordering::Relaxed),
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// herdwise

struct Herdwise {
    cache: Cache<u64, Vec<u8>>,
    origin: Arc<Origin>,
    /// Read through the registered loader (`fetch`) instead of a per-call loader.
    fetch: bool,
}

#[async_trait]
impl Reader for Herdwise {
    async fn read(&self, key: u64) -> Result<usize, String> {
        let origin = &self.origin;
        let value = if self.fetch {
            self.cache.fetch(&key).await
        } else {
            self.cache
                .get_or_load(&key, |k| async move { origin.load(*k).await.map(Some) })
                .await
        };
        value
            .map(|v| v.map_or(0, |v| v.len()))
            .map_err(|e| e.to_string())
    }
}

/// N Herdwise instances (each its own `Cache`, L1 and Redis connection), configured by
/// `configure` on top of `namespace("lab")` + the Redis store. A name ending in `-fetch` reads
/// through a registered loader (`Cache::fetch`).
pub async fn herdwise(
    name: &str,
    redis_url: &str,
    instances: usize,
    origin: &Arc<Origin>,
    configure: impl Fn(CacheBuilder<u64, Vec<u8>>) -> CacheBuilder<u64, Vec<u8>>,
) -> Result<Fleet, LabError> {
    let fetch = name.ends_with("-fetch");
    herdwise_with(name, redis_url, instances, origin, fetch, configure).await
}

/// [`herdwise()`], reading through a registered loader (`fetch`) or not, whatever the name.
pub async fn herdwise_with(
    name: &str,
    redis_url: &str,
    instances: usize,
    origin: &Arc<Origin>,
    fetch: bool,
    configure: impl Fn(CacheBuilder<u64, Vec<u8>>) -> CacheBuilder<u64, Vec<u8>>,
) -> Result<Fleet, LabError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut readers: Vec<Arc<dyn Reader>> = Vec::new();
    for _ in 0..instances {
        let store = RedisStore::connect(redis_url).await?;
        let registered = origin.clone();
        let cache = metrics::with_local_recorder(&recorder, || {
            let builder = configure(Cache::builder("lab").store(store));
            let builder = if fetch {
                builder.loader(move |k: &u64| {
                    let (origin, k) = (registered.clone(), *k);
                    async move { origin.load(k).await.map(Some) }
                })
            } else {
                builder
            };
            builder.build()
        })?;
        readers.push(Arc::new(Herdwise {
            cache,
            origin: origin.clone(),
            fetch,
        }));
    }
    Ok(Fleet {
        name: name.into(),
        instances: readers,
        counts: Box::new(move || herdwise_counts(&snapshotter)),
    })
}

fn herdwise_counts(snapshotter: &Snapshotter) -> TierCounts {
    let mut counts = TierCounts::default();
    // L1 hits reach the recorder from per-thread stripes: hand them over first.
    herdwise::metrics::flush();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(n) = value else {
            continue;
        };
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_string())
        };
        match key.name() {
            // (Negative answers are left out: every key of the lab's origin exists.)
            herdwise::metrics::GETS => match label("result").as_deref() {
                Some("l1_hit") => counts.l1_hits += n,
                Some("l2_hit") => counts.l2_hits += n,
                Some("miss" | "stale" | "error") => counts.misses += n,
                _ => {}
            },
            herdwise::metrics::L2_CALLS => {
                if matches!(label("outcome").as_deref(), Some("error" | "timeout")) {
                    counts.store_errors += n
                }
            }
            _ => {}
        }
    }
    counts
}
