//! The consistency contract under concurrency: writers update keys at the origin and then
//! invalidate through the cache (write-around), readers on several instances read through the
//! cache. No read may return a value older than the last write that completed before the read
//! began — beyond a staleness bound that covers the backplane's delivery time. Naive cache-aside
//! runs the same workload against the same kind of Redis; its violations are counted, not
//! asserted (they are the point of comparison).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::OriginError;
use herdwise::Cache;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 100;
const BOUND: Duration = Duration::from_millis(500);

/// The origin: a version per key, and when each version was superseded by a completed write.
struct Origin {
    versions: Vec<AtomicU64>,
    /// `superseded[key][v]`: when the write that replaced version `v` completed.
    superseded: Vec<Mutex<Vec<Instant>>>,
    /// The last version whose write completed (what every later read must at least see).
    committed: Vec<AtomicU64>,
}

impl Origin {
    fn new() -> Arc<Self> {
        Arc::new(Origin {
            versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            superseded: (0..KEYS).map(|_| Mutex::new(Vec::new())).collect(),
            committed: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        })
    }
    async fn read(&self, key: u64, latency: Duration) -> u64 {
        let v = self.versions[key as usize].load(Ordering::SeqCst);
        tokio::time::sleep(latency).await;
        v
    }
    fn write(&self, key: u64) -> u64 {
        self.versions[key as usize].fetch_add(1, Ordering::SeqCst) + 1
    }
    /// The write of `version` completed (origin and cache invalidation).
    fn completed(&self, key: u64, version: u64) {
        let mut superseded = self.superseded[key as usize].lock();
        while superseded.len() < version as usize {
            superseded.push(Instant::now());
        }
        self.committed[key as usize].fetch_max(version, Ordering::SeqCst);
    }
    /// Whether reading `got` at `started`, when `floor` was committed, breaks the contract.
    fn violates(&self, key: u64, got: u64, floor: u64, started: Instant) -> bool {
        if got >= floor {
            return false;
        }
        let superseded = self.superseded[key as usize].lock();
        // `got` was replaced by the write of `got + 1`: stale for how long when the read began?
        superseded
            .get(got as usize)
            .is_some_and(|at| started.saturating_duration_since(*at) > BOUND)
    }
}

/// Runs readers and writers for `duration` against `read`/`write_then_invalidate`; returns
/// (reads, violations).
async fn run<R, RF, W, WF>(
    duration: Duration,
    origin: Arc<Origin>,
    readers: usize,
    read: R,
    write: W,
) -> (u64, u64)
where
    R: Fn(usize, u64, Arc<Origin>) -> RF + Clone + Send + 'static,
    RF: std::future::Future<Output = Option<u64>> + Send,
    W: Fn(u64) -> WF + Clone + Send + 'static,
    WF: std::future::Future<Output = ()> + Send,
{
    let deadline = Instant::now() + duration;
    let violations = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..readers {
        let (read, origin, violations, reads) = (
            read.clone(),
            origin.clone(),
            violations.clone(),
            reads.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(r as u64);
            while Instant::now() < deadline {
                let key = rng.random_range(0..KEYS);
                let floor = origin.committed[key as usize].load(Ordering::SeqCst);
                let started = Instant::now();
                if let Some(got) = read(r, key, origin.clone()).await {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if origin.violates(key, got, floor, started) {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in 0..2u64 {
        let (write, origin) = (write.clone(), origin.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(1000 + w);
            while Instant::now() < deadline {
                let key = rng.random_range(0..KEYS);
                let version = origin.write(key);
                write(key).await;
                origin.completed(key, version);
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..20))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        reads.load(Ordering::Relaxed),
        violations.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_staler_than_the_bound_under_concurrent_writes() {
    let server = common::redis();
    let duration = Duration::from_secs(3);

    // Herdwise: three instances, write-around invalidation.
    let mut caches: Vec<Cache<u64, u64>> = Vec::new();
    for _ in 0..3 {
        caches.push(
            Cache::builder("torture")
                .store(common::store(&server).await)
                .ttl(Duration::from_secs(300))
                .build()
                .unwrap(),
        );
    }
    let caches = Arc::new(caches);
    let origin = Origin::new();
    let (c1, c2) = (caches.clone(), caches.clone());
    let (reads, violations) = run(
        duration,
        origin.clone(),
        12,
        move |r, key, origin| {
            let caches = c1.clone();
            async move {
                let latency = Duration::from_millis(1 + key % 5);
                caches[r % 3]
                    .get_or_load(&key, |k| async move {
                        Ok::<_, OriginError>(Some(origin.read(*k, latency).await))
                    })
                    .await
                    .ok()
                    .flatten()
                    .map(|v| *v)
            }
        },
        move |key| {
            let caches = c2.clone();
            async move {
                let _ = caches[(key % 3) as usize]
                    .write_around(&key, || async { Ok::<_, OriginError>(()) })
                    .await;
            }
        },
    )
    .await;

    // Naive cache-aside on the same server, same workload.
    let conn = common::raw(&server).await;
    let naive_origin = Origin::new();
    let (n1, n2) = (conn.clone(), conn.clone());
    let (naive_reads, naive_violations) = run(
        duration,
        naive_origin.clone(),
        12,
        move |_r, key, origin| {
            let mut conn = n1.clone();
            async move {
                let k = format!("naive:{key}");
                let cached: Option<u64> = redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                if cached.is_some() {
                    return cached;
                }
                let v = origin.read(key, Duration::from_millis(1 + key % 5)).await;
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(&k)
                    .arg(v)
                    .query_async(&mut conn)
                    .await;
                Some(v)
            }
        },
        move |key| {
            let mut conn = n2.clone();
            async move {
                let _: Result<i64, _> = redis::cmd("DEL")
                    .arg(format!("naive:{key}"))
                    .query_async(&mut conn)
                    .await;
            }
        },
    )
    .await;

    eprintln!(
        "torture: herdwise {violations} violations in {reads} reads; naive {naive_violations} in {naive_reads} (bound {BOUND:?})"
    );
    assert!(reads > 1_000, "the workload ran ({reads} reads)");
    assert_eq!(
        violations, 0,
        "a read returned a value stale beyond the bound"
    );
}
