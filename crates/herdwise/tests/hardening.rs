//! Regression tests for the defects of the hardening issue, each against a real Redis that the
//! test starts (and freezes, pauses or kills) itself. Each test failed on the code before its fix.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{BreakerConfig, BreakerState, Cache};

// Defect 1: a half-open probe whose caller is cancelled must not keep the breaker shut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_a_cancelled_half_open_probe_does_not_keep_the_breaker_shut() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("d1")
        .store(common::store(&server).await)
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .circuit_breaker(BreakerConfig::default().open_for(Duration::from_millis(300)))
        .build()
        .unwrap();
    cache.set(&1, "one".to_string()).await.unwrap();
    server.pause().unwrap();
    let t = Instant::now();
    while cache.breaker_state() != BreakerState::Open {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the breaker must open"
        );
        let _ = cache.get(&1).await;
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    // This read carries the half-open probe, and its caller gives up after 5 ms.
    let cancelled = tokio::time::timeout(Duration::from_millis(5), cache.get(&1)).await;
    assert!(cancelled.is_err(), "the probe is stuck on a frozen Redis");
    server.resume().unwrap();
    let closed = common::eventually(Duration::from_secs(3), async || {
        let read = cache.get(&1).await.unwrap();
        cache.breaker_state() == BreakerState::Closed && read.is_some()
    })
    .await;
    assert!(
        closed,
        "the breaker must close once Redis answers; it is {:?}",
        cache.breaker_state()
    );
}

fn slow_store_cache<K: herdwise::CacheKey + ?Sized>(
    name: &str,
    store: herdwise::RedisStore,
) -> Cache<K, String> {
    Cache::builder(name)
        .store(store)
        .store_timeout(Duration::from_secs(2))
        .no_circuit_breaker()
        .build()
        .unwrap()
}

// Defect 2: a read during `invalidate` must not put the old value back into the invalidating
// instance's own L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_a_read_during_invalidate_leaves_no_old_value_in_its_own_l1() {
    let server = common::redis();
    let store = common::SlowDeletes {
        inner: common::store(&server).await,
        delete_delay: Duration::from_millis(200),
    };
    let cache: Cache<u64, String> = Cache::builder("d2k")
        .store(store)
        .store_timeout(Duration::from_secs(2))
        .no_circuit_breaker()
        .build()
        .unwrap();
    cache.set(&7, "old".to_string()).await.unwrap();
    let invalidating = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.invalidate(&7).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The delete is on its way; L2 still has the old value, and this read brings it back.
    let during = cache.get(&7).await.unwrap();
    assert_eq!(during.as_deref().map(String::as_str), Some("old"));
    invalidating.await.unwrap().unwrap();
    assert_eq!(
        cache.get(&7).await.unwrap(),
        None,
        "the invalidation returned: this instance must not serve the old value"
    );
}

// Defect 2, prefix form, as the issue found it: 20k keys under a prefix, 4 local readers while
// the SCAN/UNLINK walk runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_reads_during_invalidate_prefix_leave_no_old_value_in_its_own_l1() {
    let server = common::redis();
    let cache: Cache<(u64, u64), String> = slow_store_cache("d2p", common::store(&server).await);
    const N: u64 = 20_000;
    // One entry written by the cache, copied raw under every key (same value, valid envelope).
    cache.set(&(42, 0), "old".to_string()).await.unwrap();
    let mut raw = common::raw(&server).await;
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(cache.stored_key(&(42, 0)).unwrap())
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 1..N {
        let key = cache.stored_key(&(42, i)).unwrap();
        pipe.cmd("SET")
            .arg(key)
            .arg(&bytes)
            .arg("EX")
            .arg(600)
            .ignore();
    }
    let () = pipe.query_async(&mut raw).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (cache, done) = (cache.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = r * 5_000;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = cache.get(&(42, i % N)).await;
                    i += 7;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let removed = cache.invalidate_prefix(&42u64).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(removed, N);
    let mut served = 0;
    for i in 0..N {
        served += usize::from(cache.get(&(42, i)).await.unwrap().is_some());
    }
    assert_eq!(
        served, 0,
        "old values served after invalidate_prefix returned"
    );
}

// Defect 3: L1's byte bound is the memory of what L1 holds, not the compressed size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_the_l1_bound_weighs_decoded_values_not_compressed_bytes() {
    let server = common::redis();
    let cache: Cache<u64, Vec<u8>> = Cache::builder("d3")
        .store(common::store(&server).await)
        .l1_max_bytes(1 << 20)
        .build()
        .unwrap();
    let value = vec![7u8; 64 << 10]; // compresses to a few hundred bytes
    for key in 0..200 {
        cache.set(&key, value.clone()).await.unwrap();
    }
    // Half of them again, through L2 reads this time.
    let other: Cache<u64, Vec<u8>> = Cache::builder("d3")
        .store(common::store(&server).await)
        .l1_max_bytes(1 << 20)
        .build()
        .unwrap();
    for key in 0..100 {
        assert!(other.get(&key).await.unwrap().is_some());
    }
    for (name, c) in [("writer", &cache), ("reader", &other)] {
        let held = c.l1_len() as u64 * (64 << 10);
        assert!(
            held <= 1 << 20,
            "{name}: {} entries of 64 KiB ({held} bytes of values) under a 1 MiB bound",
            c.l1_len()
        );
        assert!(c.l1_bytes() <= c.l1_max_bytes());
        assert!(c.l1_len() >= 8, "{name}: L1 still holds what fits");
    }
}
