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
use herdwise::{Cache, LoadOptions};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 100;

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
    fn violates(&self, key: u64, got: u64, floor: u64, started: Instant, bound: Duration) -> bool {
        if got >= floor {
            return false;
        }
        let superseded = self.superseded[key as usize].lock();
        // `got` was replaced by the write of `got + 1`: stale for how long when the read began?
        superseded
            .get(got as usize)
            .is_some_and(|at| started.saturating_duration_since(*at) > bound)
    }
}

/// How the workload goes.
#[derive(Clone, Copy)]
struct Pace {
    /// Origin read latency: `base + key % 5` ms.
    origin_ms: u64,
    /// Writers, each pausing this many ms (uniform) between writes.
    writers: u64,
    writer_pause_ms: (u64, u64),
    /// Entry TTL.
    ttl: Duration,
    /// How stale a read may be: the time the backplane takes to deliver, with room to spare.
    bound: Duration,
}

/// Invalidating keys: many small writes, short loads.
const KEY_PACE: Pace = Pace {
    origin_ms: 1,
    writers: 2,
    writer_pause_ms: (5, 20),
    ttl: Duration::from_secs(300),
    bound: Duration::from_millis(500),
};

/// The cancellation storm: short-lived entries, so that many reads reach L2, the lease and the
/// origin, where being dropped can leave something held.
const STORM_PACE: Pace = Pace {
    origin_ms: 2,
    writers: 2,
    writer_pause_ms: (5, 20),
    ttl: Duration::from_millis(200),
    bound: Duration::from_millis(500),
};

/// Invalidating group tags (`g<key % 50>`). Built so that a mistake would show: loads are slow
/// and, with a short TTL, start at random times, so writes often land inside one; each group is
/// invalidated only about once a second, so an entry wrongly taken for fresh would outlive the
/// (tighter) bound instead of being killed again first.
const TAG_PACE: Pace = Pace {
    origin_ms: 20,
    writers: 4,
    writer_pause_ms: (40, 120),
    ttl: Duration::from_millis(1_000),
    bound: Duration::from_millis(200),
};

/// Tag groups in the tag variant.
const GROUPS: u64 = 50;

/// Runs readers and writers for `duration` against `read`/`write_then_invalidate`; returns
/// (reads, violations).
async fn run<R, RF, W, WF>(
    duration: Duration,
    origin: Arc<Origin>,
    readers: usize,
    pace: Pace,
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
                    if origin.violates(key, got, floor, started, pace.bound) {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in 0..pace.writers {
        let (write, origin) = (write.clone(), origin.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(1000 + w);
            while Instant::now() < deadline {
                let key = rng.random_range(0..KEYS);
                let version = origin.write(key);
                write(key).await;
                origin.completed(key, version);
                let (low, high) = pace.writer_pause_ms;
                tokio::time::sleep(Duration::from_millis(rng.random_range(low..high))).await;
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

/// How Herdwise's writers make the cache consistent after an origin write.
#[derive(Clone, Copy)]
enum Invalidate {
    /// `write_around` the key.
    Key,
    /// Invalidate the key's group tag (every entry is tagged `g<key % 10>`).
    Tag,
}

/// Herdwise: three instances reading through the cache, writers invalidating as `how` says.
async fn herdwise(
    server: &herdwise_testkit::RedisServer,
    duration: Duration,
    how: Invalidate,
) -> (u64, u64) {
    herdwise_run(server, duration, how, false).await.0
}

/// Share of reads dropped at a random point in the cancellation storm.
const STORM_SHARE: f64 = 0.3;

/// As `herdwise`; with `storm`, a share of the reads are dropped after 0-5 ms (a request
/// timeout), and the instances have an origin limit whose slots must come back. Returns the
/// figures, the caches and the number of reads dropped.
async fn herdwise_run(
    server: &herdwise_testkit::RedisServer,
    duration: Duration,
    how: Invalidate,
    storm: bool,
) -> ((u64, u64), Arc<Vec<Cache<u64, u64>>>, Arc<AtomicU64>) {
    let pace = match how {
        _ if storm => STORM_PACE,
        Invalidate::Key => KEY_PACE,
        Invalidate::Tag => TAG_PACE,
    };
    let mut caches: Vec<Cache<u64, u64>> = Vec::new();
    for _ in 0..3 {
        // The default store deadline: on a saturated test machine the timeouts open a
        // writer's breaker, and its invalidations must still reach the others.
        let mut builder = Cache::builder("torture")
            .store(common::store(server).await)
            .ttl(pace.ttl);
        if storm {
            builder = builder.origin_concurrency_limit(16, Duration::from_millis(50));
        }
        caches.push(builder.build().unwrap());
    }
    let caches = Arc::new(caches);
    let origin = Origin::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let (c1, c2, dropped_reads) = (caches.clone(), caches.clone(), dropped.clone());
    let figures = run(
        duration,
        origin.clone(),
        12,
        pace,
        move |r, key, origin| {
            let (caches, dropped) = (c1.clone(), dropped_reads.clone());
            async move {
                let latency = Duration::from_millis(pace.origin_ms + key % 5);
                let group = LoadOptions::default().tags([format!("g{}", key % GROUPS)]);
                let read = caches[r % 3].get_or_load_with(&key, &group, |k| async move {
                    Ok::<_, OriginError>(Some(origin.read(*k, latency).await))
                });
                let result = if storm && rand::random::<f64>() < STORM_SHARE {
                    let cut = Duration::from_micros(rand::random_range(0..5_000));
                    match tokio::time::timeout(cut, read).await {
                        Ok(result) => result,
                        Err(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                    }
                } else {
                    read.await
                };
                result.ok().and_then(|f| f.value).map(|v| *v)
            }
        },
        move |key| {
            let caches = c2.clone();
            async move {
                let cache = &caches[(key % 3) as usize];
                match how {
                    Invalidate::Key => {
                        let _ = cache
                            .write_around(&key, || async { Ok::<_, OriginError>(()) })
                            .await;
                    }
                    Invalidate::Tag => {
                        let _ = cache.invalidate_tag(&format!("g{}", key % GROUPS)).await;
                    }
                }
            }
        },
    )
    .await;
    (figures, caches, dropped)
}

/// The key torture under a storm of cancelled reads: no violation, and afterwards nothing is
/// stuck — no breaker left open, no single-flight slot, origin-limit slot, background refresh
/// or lease left held — and every key reads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_cancelled_reads_breaks_nothing_and_leaves_nothing_held() {
    let server = common::redis();
    let duration = Duration::from_secs(3);
    let ((reads, violations), caches, dropped) =
        herdwise_run(&server, duration, Invalidate::Key, true).await;
    let dropped = dropped.load(Ordering::Relaxed);
    eprintln!("storm: {violations} violations in {reads} reads, {dropped} reads dropped");
    // (Fewer reads are dropped on a saturated machine, where each read takes longer to start:
    // 129 of 7.1k under 6 CPU burners. Fifty cancelled reads are still a storm for what is
    // checked below: a slot left held by any one of them shows.)
    assert!(reads > 1_000 && dropped > 50, "the storm ran");
    assert_eq!(
        violations, 0,
        "a read returned a value stale beyond the bound"
    );
    // A breaker that opened under the storm's load (two cores) moves on only when called: each
    // check makes a read, so a stuck one and an open one that recovers are told apart.
    let idle = common::eventually(Duration::from_secs(6), async || {
        for c in caches.iter() {
            let _ = c.get(&0).await;
        }
        caches.iter().all(|c| {
            c.breaker_state() == herdwise::BreakerState::Closed
                && c.loads_in_flight() == 0
                && c.origin_loads_in_flight() == 0
                && c.background_refreshes() == 0
        })
    })
    .await;
    for (i, c) in caches.iter().enumerate() {
        eprintln!(
            "instance {i}: breaker {:?}, loads {}, origin slots {}, refreshes {}",
            c.breaker_state(),
            c.loads_in_flight(),
            c.origin_loads_in_flight(),
            c.background_refreshes()
        );
    }
    assert!(idle, "something stayed held after the storm");
    let mut raw = common::raw(&server).await;
    let leases = common::eventually(Duration::from_secs(6), async || {
        let held: Vec<String> = redis::cmd("KEYS")
            .arg("{torture:*}:lease")
            .query_async(&mut raw)
            .await
            .unwrap();
        held.is_empty()
    })
    .await;
    assert!(
        leases,
        "leases of cancelled reads were left in Redis (TTL 5 s)"
    );
    let t = Instant::now();
    for key in 0..KEYS {
        let got = caches[(key % 3) as usize]
            .get_or_load(&key, |_| async { Ok::<_, OriginError>(Some(0)) })
            .await
            .unwrap();
        assert!(got.is_some());
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "reads after the storm waited {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_keeps_reads_within_the_bound_under_concurrent_writes() {
    let server = common::redis();
    let (reads, violations) = herdwise(&server, Duration::from_secs(4), Invalidate::Tag).await;
    eprintln!(
        "torture (tags): herdwise {violations} violations in {reads} reads (bound {:?})",
        TAG_PACE.bound
    );
    assert!(reads > 1_000, "the workload ran ({reads} reads)");
    assert_eq!(
        violations, 0,
        "a read returned a value stale beyond the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_staler_than_the_bound_under_concurrent_writes() {
    let server = common::redis();
    let duration = Duration::from_secs(3);
    let (reads, violations) = herdwise(&server, duration, Invalidate::Key).await;

    // Naive cache-aside on the same server, same workload.
    let conn = common::raw(&server).await;
    let naive_origin = Origin::new();
    let (n1, n2) = (conn.clone(), conn.clone());
    let (naive_reads, naive_violations) = run(
        duration,
        naive_origin.clone(),
        12,
        KEY_PACE,
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
        "torture: herdwise {violations} violations in {reads} reads; naive {naive_violations} in {naive_reads} (bound {:?})",
        KEY_PACE.bound
    );
    assert!(reads > 1_000, "the workload ran ({reads} reads)");
    assert_eq!(
        violations, 0,
        "a read returned a value stale beyond the bound"
    );
}
