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
