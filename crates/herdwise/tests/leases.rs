//! Cross-instance leases and fenced fills against a real Redis, several `Cache` instances (as
//! separate pods would be).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, Cache, MemoryStore, Store};
use parking_lot::Mutex;

type Fleet = Vec<Cache<u64, String>>;

async fn fleet(server: &herdwise_testkit::RedisServer, n: usize, ttl: Duration) -> Fleet {
    let mut caches = Vec::new();
    for _ in 0..n {
        caches.push(
            Cache::builder("leases")
                .store(common::store(server).await)
                .ttl(ttl)
                .no_ttl_jitter()
                .build()
                .unwrap(),
        );
    }
    caches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_readers_over_four_instances_cause_one_load_per_expiry() {
    let server = common::redis();
    let caches = fleet(&server, 4, Duration::from_millis(500)).await;
    let calls = Calls::default();
    let read_all = |caches: &Fleet| {
        let mut tasks = Vec::new();
        for i in 0..500 {
            let (cache, calls) = (caches[i % 4].clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(&1, |_| async move {
                        calls.hit();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, OriginError>(Some("value".to_string()))
                    })
                    .await
            }));
        }
        futures::future::join_all(tasks)
    };
    // cold key
    for r in read_all(&caches).await {
        assert_eq!(
            r.unwrap().unwrap().as_deref().map(String::as_str),
            Some("value")
        );
    }
    assert_eq!(calls.get(), 1, "a cold key: one load across all instances");
    // expired key
    tokio::time::sleep(Duration::from_millis(600)).await;
    for r in read_all(&caches).await {
        assert_eq!(
            r.unwrap().unwrap().as_deref().map(String::as_str),
            Some("value")
        );
    }
    assert_eq!(
        calls.get(),
        2,
        "an expired key: one more load across all instances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_blocks_nobody_beyond_the_lease_ttl() {
    let server = common::redis();
    let lease_ttl = Duration::from_millis(800);
    let cache: Cache<u64, String> = Cache::builder("leases")
        .store(common::store(&server).await)
        .lease_ttl(lease_ttl)
        .lease_wait(Duration::from_secs(30), Duration::from_millis(50))
        .build()
        .unwrap();
    // A holder that took the lease and died without releasing it (a killed pod).
    cache.get(&0).await.unwrap(); // first contact: the stored keys carry the generation
    let stored_key = cache.stored_key(&5).unwrap();
    let raw_store = common::store(&server).await;
    assert!(raw_store
        .try_lease(&stored_key, 42, lease_ttl)
        .await
        .unwrap());

    let started = Instant::now();
    let calls = Calls::default();
    let c = calls.clone();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_or_load(&5, |_| async move {
            c.hit();
            Ok::<_, OriginError>(Some("recovered".to_string()))
        }),
    )
    .await
    .expect("nobody waits forever")
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(got.as_deref().map(String::as_str), Some("recovered"));
    assert_eq!(calls.get(), 1);
    assert!(
        waited >= lease_ttl - Duration::from_millis(100),
        "waited only {waited:?}: the lease was ignored"
    );
    assert!(
        waited < lease_ttl + Duration::from_millis(700),
        "waited {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_holder_releases_its_lease_at_once() {
    let server = common::redis();
    let caches = fleet(&server, 2, Duration::from_secs(60)).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let cache = caches[0].clone();
        tokio::spawn(async move {
            cache
                .get_or_load(&9, |_| async move {
                    let _ = started_tx.send(());
                    std::future::pending::<Result<Option<String>, OriginError>>().await
                })
                .await
        })
    };
    started_rx.await.unwrap();
    let waiter = {
        let cache = caches[1].clone();
        tokio::spawn(async move {
            cache
                .get_or_load(&9, |_| async {
                    Ok::<_, OriginError>(Some("taken over".to_string()))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the other instance waits while the holder loads"
    );
    let aborted_at = Instant::now();
    holder.abort();
    let got = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the waiter must not sit out the 5 s lease TTL")
        .unwrap()
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("taken over"));
    assert!(aborted_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_fill_not_by_polling() {
    let server = common::redis();
    let mut caches = Vec::new();
    for _ in 0..2 {
        caches.push(
            Cache::<u64, String>::builder("leases")
                .store(common::store(&server).await)
                // a poll interval far longer than the test: only the notification can wake it
                .lease_wait(Duration::from_secs(20), Duration::from_secs(10))
                .build()
                .unwrap(),
        );
    }
    let loading = {
        let cache = caches[0].clone();
        tokio::spawn(async move {
            cache
                .get_or_load(&3, |_| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, OriginError>(Some("filled".to_string()))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let calls = Calls::default();
    let c = calls.clone();
    let got = caches[1]
        .get_or_load(&3, |_| async move {
            c.hit();
            Ok::<_, OriginError>(Some("second load".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("filled"));
    assert_eq!(calls.get(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woken after {:?}",
        started.elapsed()
    );
    loading.await.unwrap().unwrap();
}

/// The cache-aside race (seed 003, hole 4): a slow read loads V1, a write makes the origin V2
/// and invalidates, then the slow read fills. Naive caching keeps V1 until the TTL; Herdwise's
/// fenced fill is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_slow_load_voids_its_fill_while_naive_caching_serves_stale() {
    let server = common::redis();
    let caches = fleet(&server, 2, Duration::from_secs(300)).await;
    let (reader, writer) = (caches[0].clone(), caches[1].clone());
    let origin = Arc::new(Mutex::new("v1".to_string()));

    let slow_read = {
        let origin = origin.clone();
        tokio::spawn(async move {
            reader
                .get_or_load(&7, |_| async move {
                    let v = origin.lock().clone();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, OriginError>(Some(v))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    *origin.lock() = "v2".to_string();
    writer.invalidate(&7).await.unwrap();
    let got = slow_read.await.unwrap().unwrap();
    assert_eq!(
        got.as_deref().map(String::as_str),
        Some("v1"),
        "the slow caller gets what it read"
    );

    for cache in &caches {
        let origin = origin.clone();
        let now = cache
            .get_or_load(&7, |_| async move {
                Ok::<_, OriginError>(Some(origin.lock().clone()))
            })
            .await
            .unwrap();
        assert_eq!(
            now.as_deref().map(String::as_str),
            Some("v2"),
            "no instance serves the old value"
        );
    }

    // The same interleaving with naive cache-aside (GET, load, SET) on the same server.
    let mut conn = common::raw(&server).await;
    *origin.lock() = "v1".to_string();
    let naive_read = {
        let origin = origin.clone();
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let cached: Option<String> = redis::cmd("GET")
                .arg("naive:7")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(cached.is_none());
            let v = origin.lock().clone();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let () = redis::cmd("SET")
                .arg("naive:7")
                .arg(&v)
                .query_async(&mut conn)
                .await
                .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    *origin.lock() = "v2".to_string();
    let _: i64 = redis::cmd("DEL")
        .arg("naive:7")
        .query_async(&mut conn)
        .await
        .unwrap();
    naive_read.await.unwrap();
    let naive_now: Option<String> = redis::cmd("GET")
        .arg("naive:7")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        naive_now.as_deref(),
        Some("v1"),
        "naive caching now serves the old value until its TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_fills_are_counted() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (reader, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("leases").store(store.clone()));
    let writer: Cache<u64, String> = Cache::builder("leases").store(store).build().unwrap();
    let slow = {
        let reader = reader.clone();
        tokio::spawn(async move {
            reader
                .get_or_load(&1, |_| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, OriginError>(Some("old".to_string()))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    writer.set(&1, "new".to_string()).await.unwrap();
    slow.await.unwrap().unwrap();
    assert_eq!(
        counter(&metrics, m::FILLS_REFUSED, &[("reason", "lease_lost")]),
        1
    );
    assert_eq!(counter(&metrics, m::LEASES, &[("outcome", "acquired")]), 1);
    let fresh: Cache<u64, String> = Cache::builder("leases")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    assert_eq!(
        fresh.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_sharing_an_embedded_store_coordinate_too() {
    let store = MemoryStore::new();
    let caches: Vec<Cache<u64, String>> = (0..3)
        .map(|_| {
            Cache::builder("embedded")
                .store(store.clone())
                .build()
                .unwrap()
        })
        .collect();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for i in 0..90 {
        let (cache, calls) = (caches[i % 3].clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&1, |_| async move {
                    calls.hit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, OriginError>(Some("v".to_string()))
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(calls.get(), 1);
}

/// A load slower than the lease TTL keeps its lease (the holder extends it while the load
/// runs): other instances keep waiting for its fill instead of loading too, and the value is
/// cached. Without the extension the lease expired mid-load: a second origin call, and the
/// slow value refused as a lost lease.
async fn slow_load_keeps_its_lease(store_a: Arc<dyn Store>, store_b: Arc<dyn Store>) {
    let lease_ttl = Duration::from_millis(300);
    let build = |store: Arc<dyn Store>| -> Cache<u64, String> {
        Cache::builder("slowlease")
            .shared_store(store)
            .lease_ttl(lease_ttl)
            .lease_wait(Duration::from_secs(10), Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let (a, b) = (build(store_a), build(store_b));
    let calls = Calls::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let slow = tokio::spawn(async move {
        a.get_or_load(&7, |_| async move {
            c1.hit();
            tokio::time::sleep(lease_ttl * 4).await;
            Ok::<_, OriginError>(Some("slow".to_string()))
        })
        .await
    });
    // Another instance asks while the load is well past its first lease TTL.
    tokio::time::sleep(lease_ttl * 2).await;
    let waited = b
        .get_or_load(&7, |_| async move {
            c2.hit();
            Ok::<_, OriginError>(Some("second".to_string()))
        })
        .await
        .unwrap();
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.as_deref().map(String::as_str), Some("slow"));
    assert_eq!(waited.as_deref().map(String::as_str), Some("slow"));
    assert_eq!(calls.get(), 1, "one origin call for the slow load");
    let c3 = calls.clone();
    let again = b
        .get_or_load(&7, |_| async move {
            c3.hit();
            Ok::<_, OriginError>(Some("third".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(again.as_deref().map(String::as_str), Some("slow"));
    assert_eq!(calls.get(), 1, "the slow value was cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_slower_than_its_lease_keeps_it_on_redis() {
    let server = common::redis();
    let a: Arc<dyn Store> = Arc::new(common::store(&server).await);
    let b: Arc<dyn Store> = Arc::new(common::store(&server).await);
    slow_load_keeps_its_lease(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_slower_than_its_lease_keeps_it_on_the_embedded_store() {
    let store = MemoryStore::new();
    slow_load_keeps_its_lease(Arc::new(store.clone()), Arc::new(store)).await;
}

/// A stuck load (no loader timeout) extends its lease for at most `lease_max_hold`: then the
/// lease expires and another instance takes it over and loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_load_holds_its_lease_no_longer_than_the_max_hold() {
    let store = MemoryStore::new();
    let build = || -> Cache<u64, String> {
        Cache::builder("stucklease")
            .store(store.clone())
            .lease_ttl(Duration::from_millis(300))
            .lease_max_hold(Duration::from_millis(600))
            .lease_wait(Duration::from_secs(10), Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let stuck = tokio::spawn(async move {
        a.get_or_load(&1, |_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, OriginError>(Some("never".to_string()))
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        b.get_or_load(&1, |_| async {
            Ok::<_, OriginError>(Some("b".to_string()))
        }),
    )
    .await
    .expect("the stuck holder let its lease go")
    .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("b"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "took over after {waited:?}: before the max hold and the last TTL ran out"
    );
    stuck.abort();
}

/// A holder whose fill failed (and opened its breaker) still gives its lease back as soon as
/// the breaker lets a call through (its half-open probe), not after the lease's whole TTL,
/// which every other instance would wait out (seen in the batch lab: 32 waits of ~2.9 s each).
/// (Nothing is sent while the breaker is open: `hardening.rs` d11.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_released_even_when_the_fill_opened_the_breaker() {
    let shared = MemoryStore::new();
    let failing = common::SlowDeletes {
        inner: shared.clone(),
        delete_delay: Duration::ZERO,
        fail_fills: true,
        joint_writes: false,
    };
    let a: Cache<u64, String> = Cache::builder("stranded")
        .store(failing)
        .lease_ttl(Duration::from_secs(4))
        .circuit_breaker(
            herdwise::BreakerConfig::default()
                .consecutive_failures(1)
                .open_for(Duration::from_millis(400)),
        )
        .build()
        .unwrap();
    let b: Cache<u64, String> = Cache::builder("stranded")
        .store(shared)
        .lease_ttl(Duration::from_secs(4))
        .lease_wait(Duration::from_secs(10), Duration::from_millis(20))
        .build()
        .unwrap();
    let got = a
        .get_or_load(&1, |_| async {
            Ok::<_, OriginError>(Some("a".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("a"));
    assert_eq!(a.breaker_state(), herdwise::BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(50)).await; // (the release runs in the background)
    let started = Instant::now();
    let got = b
        .get_or_load(&1, |_| async {
            Ok::<_, OriginError>(Some("b".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("b"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?} for a stranded lease (TTL 4 s)",
        started.elapsed()
    );
}

async fn load_distinct(cache: &Cache<u64, String>, keys: std::ops::Range<u64>, calls: &Calls) {
    for k in keys {
        let calls = calls.clone();
        let got = cache
            .get_or_load(&k, |k| async move {
                calls.hit();
                Ok::<_, OriginError>(Some(format!("v{k}")))
            })
            .await
            .unwrap();
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some(format!("v{k}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_cache_asks_for_the_lease_in_its_first_round_trip_and_still_loads_once() {
    let server = common::redis();
    let caches = fleet(&server, 2, Duration::from_secs(60)).await;
    let calls = Calls::default();
    // Cold: every read misses, so after a window of them the lease is asked at once.
    load_distinct(&caches[0], 0..300, &calls).await;
    load_distinct(&caches[1], 300..600, &calls).await;
    assert_eq!(calls.get(), 600);
    let mut raw = common::raw(&server).await;
    const N: u64 = 40;
    let before = common::reads_processed(&mut raw).await;
    load_distinct(&caches[0], 1000..1000 + N, &calls).await;
    // The lease attempt (with its read) and the fill: two round trips per miss, not three
    // (read, lease, fill). One read event is the INFO itself.
    let round_trips = common::reads_processed(&mut raw).await - before - 1;
    assert!(
        round_trips <= 2 * N + 8,
        "{N} cold misses took {round_trips} round trips"
    );
    // Both instances asking for the same cold keys at once: still one origin call per key.
    let before = calls.get();
    let slow = |cache: Cache<u64, String>, calls: Calls| async move {
        for k in 2000..2020u64 {
            let calls = calls.clone();
            cache
                .get_or_load(&k, |k| async move {
                    calls.hit();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, OriginError>(Some(format!("v{k}")))
                })
                .await
                .unwrap();
        }
    };
    let a = tokio::spawn(slow(caches[0].clone(), calls.clone()));
    let b = tokio::spawn(slow(caches[1].clone(), calls.clone()));
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(calls.get() - before, 20, "one origin call per key");
    // A warm cache goes back to reading L2 first: the second instance reads what the first
    // loaded (L2 hits, not in its L1), and once a window of them found values, a hit is one
    // round trip again.
    let hit = |k: u64| {
        let cache = caches[1].clone();
        async move {
            let got = cache
                .get_or_load(&k, |_| async { Ok::<_, OriginError>(None) })
                .await
                .unwrap();
            assert!(got.is_some(), "key {k} is in L2");
        }
    };
    for k in 0..200 {
        hit(k).await;
    }
    let before = set_calls(&mut raw).await;
    for k in 200..200 + N {
        hit(k).await;
    }
    assert_eq!(
        set_calls(&mut raw).await,
        before,
        "L2 hits of a warm cache take no lease (a GET each)"
    );
}

/// `SET` calls so far (a lease is a `SET NX`).
async fn set_calls(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A cold cache asks for the lease in its first round trip, which also reads the key: where
/// that read finds a stale copy (past its TTL, inside the stale-while-revalidate window), the
/// copy answers at once and the load runs behind it, as on a warm cache — the read does not
/// wait for the origin as it would on a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_cache_serves_a_stale_copy_its_lease_attempt_finds_while_revalidating() {
    let server = common::redis();
    let loads = Calls::default();
    let build = |store| {
        let loads = loads.clone();
        Cache::<u64, String>::builder("leases-swr")
            .store(store)
            .ttl(Duration::from_millis(300))
            .no_ttl_jitter()
            .stale_while_revalidate(Duration::from_secs(30))
            .xfetch_beta(0.0)
            .loader(move |k: &u64| {
                let (k, loads) = (*k, loads.clone());
                async move {
                    if k == 7 {
                        loads.hit();
                        tokio::time::sleep(Duration::from_millis(1_000)).await;
                        return Ok::<_, OriginError>(Some("new".to_string()));
                    }
                    Ok(Some(format!("v{k}")))
                }
            })
            .build()
            .unwrap()
    };
    let writer = build(common::store(&server).await);
    let reader = build(common::store(&server).await);
    writer.set(&7, "old".to_string()).await.unwrap();
    // Cold: the reader's reads miss, so it asks for the lease first.
    for k in 1000..1300 {
        assert!(reader.fetch(&k).await.unwrap().is_some());
    }
    tokio::time::sleep(Duration::from_millis(400)).await; // key 7 is stale now
    let started = Instant::now();
    let got = reader.fetch(&7).await.unwrap();
    let took = started.elapsed();
    assert_eq!(got.as_deref().map(String::as_str), Some("old"));
    assert!(
        took < Duration::from_millis(500),
        "the stale copy answered at once (took {took:?}, the origin takes 1 s)"
    );
    let refreshed = common::eventually(Duration::from_secs(5), async || {
        reader.get(&7).await.unwrap().as_deref().map(String::as_str) == Some("new")
    })
    .await;
    assert!(
        refreshed,
        "the load behind the stale answer refreshed the key"
    );
    assert_eq!(loads.get(), 1, "one origin call");
}
