//! Regression tests for the defects of the hardening issue, each against a real Redis that the
//! test starts (and freezes, pauses or kills) itself. Each test failed on the code before its fix.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, BreakerConfig, BreakerState, Cache, LoadOptions, WriteOptions};

/// How many of `keys` exist in Redis.
async fn existing(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> u64 {
    let mut n = 0;
    for chunk in keys.chunks(1_000) {
        let found: u64 = redis::cmd("EXISTS")
            .arg(chunk)
            .query_async(conn)
            .await
            .unwrap();
        n += found;
    }
    n
}

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
        fail_fills: false,
        joint_writes: false,
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
    assert!(
        !invalidating.is_finished(),
        "the read must run during the invalidation"
    );
    invalidating.await.unwrap().unwrap();
    assert_eq!(
        cache.get(&7).await.unwrap(),
        None,
        "the invalidation returned: this instance must not serve the old value"
    );
}

/// Fills keys `(42, 0..n)` with the same old value: one entry written by the cache, resealed
/// raw under every other key (a valid envelope each, scoped to its own key).
async fn seed_prefix(
    cache: &Cache<(u64, u64), String>,
    raw: &mut redis::aio::MultiplexedConnection,
    n: u64,
) {
    use herdwise::envelope;
    cache.set(&(42, 0), "old".to_string()).await.unwrap();
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(cache.stored_key(&(42, 0)).unwrap())
        .query_async(raw)
        .await
        .unwrap();
    let decoded = envelope::decode(&bytes, 1 << 20).unwrap();
    let mut pipe = redis::pipe();
    for i in 1..n {
        let key = cache.stored_key(&(42, i)).unwrap();
        let resealed = envelope::encode_scoped(
            &decoded.meta,
            Some(envelope::key_fingerprint(&key)),
            decoded.tags.as_ref(),
            &decoded.payload,
            envelope::Compression::None,
        );
        pipe.cmd("SET")
            .arg(key)
            .arg(resealed)
            .arg("EX")
            .arg(600)
            .ignore();
    }
    let () = pipe.query_async(raw).await.unwrap();
}

// Defect 2, prefix form, as the issue found it: 20k keys under a prefix, 4 local readers while
// the SCAN/UNLINK walk runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_reads_during_invalidate_prefix_leave_no_old_value_in_its_own_l1() {
    let server = common::redis();
    let cache: Cache<(u64, u64), String> = slow_store_cache("d2p", common::store(&server).await);
    const N: u64 = 20_000;
    let mut raw = common::raw(&server).await;
    seed_prefix(&cache, &mut raw, N).await;
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

// Defect 4: a backlog of failed invalidations is applied within seconds once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_a_backlog_of_ten_thousand_invalidations_drains_within_seconds() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("d4")
            .store(store)
            .l1_max_bytes(0)
            .no_hot_key_shield()
            .circuit_breaker(BreakerConfig::default().open_for(Duration::from_millis(200)))
    });
    const N: u64 = 10_000;
    cache.get(&0).await.unwrap(); // first contact (generation, sentinel): the stored keys' form
    let keys: Vec<String> = (0..N).map(|k| cache.stored_key(&k).unwrap()).collect();
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("SET")
            .arg(key)
            .arg("old")
            .arg("EX")
            .arg(600)
            .ignore();
    }
    let () = pipe.query_async(&mut raw).await.unwrap();
    server.pause().unwrap();
    for k in 0..N {
        cache.invalidate(&k).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.resume().unwrap();
    let resumed = Instant::now();
    // Old code: ~10 a second. The bound leaves room for a debug build sharing two cores with
    // the other tests of this file.
    let drained = common::eventually(Duration::from_secs(8), async || {
        existing(&mut raw, &keys).await == 0
    })
    .await;
    let left = existing(&mut raw, &keys).await;
    eprintln!(
        "backlog of {N}: {left} left after {:?}; dead-lettered {}",
        resumed.elapsed(),
        counter(&metrics, m::INVALIDATIONS_DEAD_LETTERED, &[])
    );
    assert!(
        drained,
        "{left} of {N} invalidations not applied 8 s after Redis came back"
    );
    assert_eq!(counter(&metrics, m::INVALIDATIONS_DEAD_LETTERED, &[]), 0);
}

// Defect 5: a tag invalidation that was given up must not leave the tag broken on this instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_a_dead_lettered_tag_invalidation_does_not_break_the_tag_for_good() {
    let mut server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("d5")
            .store(store)
            .ttl(Duration::from_millis(500))
            .negative_ttl(Some(Duration::from_millis(500)))
            .no_ttl_jitter()
            .stale_if_error(Duration::ZERO)
            .circuit_breaker(BreakerConfig::default().open_for(Duration::from_millis(200)))
    });
    let tagged = WriteOptions::default().tags(["t"]);
    cache.set_with(&1, "a".to_string(), &tagged).await.unwrap();
    server.kill();
    cache.invalidate_tag("t").await.unwrap();
    assert_eq!(
        cache.get(&1).await.unwrap(),
        None,
        "pending: not served here"
    );
    let given_up = common::eventually(Duration::from_secs(25), async || {
        counter(&metrics, m::INVALIDATIONS_DEAD_LETTERED, &[]) >= 1
    })
    .await;
    assert!(
        given_up,
        "the tag invalidation is dead-lettered while Redis is down"
    );
    server.restart().unwrap();
    let calls = Calls::default();
    let served = common::eventually(Duration::from_secs(5), async || {
        cache.set_with(&2, "b".to_string(), &tagged).await.unwrap();
        let opts = LoadOptions::default().tags(["t"]);
        let load = |_: &u64| {
            calls.hit();
            async { Ok::<_, OriginError>(Some("c".to_string())) }
        };
        let _ = cache.get_or_load_with(&3, &opts, load).await.unwrap();
        let before = calls.get();
        let again = cache.get_or_load_with(&3, &opts, load).await.unwrap();
        cache.get(&2).await.unwrap().is_some() && again.value.is_some() && calls.get() == before
    })
    .await;
    assert!(served, "entries tagged `t` must be cached and served again");
}

// Defect 6: a fill without a lease (leases off) must be refused if an invalidation overtook it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_an_unleased_fill_overtaken_by_an_invalidation_is_refused() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let build = async || -> Cache<u64, String> {
        Cache::builder("d6")
            .store(common::store(&server).await)
            .no_leases()
            .build()
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    let loading = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load(&1, |_| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, OriginError>(Some("old".to_string()))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The origin changes and the writer invalidates, while A's load of the old state runs.
    b.invalidate(&1).await.unwrap();
    let returned = loading.await.unwrap().unwrap();
    assert_eq!(returned.as_deref().map(String::as_str), Some("old"));
    let stored_key = a.stored_key(&1).unwrap();
    assert_eq!(
        existing(&mut raw, &[stored_key]).await,
        0,
        "the overtaken fill was written to L2"
    );
    assert_eq!(a.get(&1).await.unwrap(), None, "nor kept in A's L1");
    assert_eq!(b.get(&1).await.unwrap(), None);
}

// Defect 6, second form: a waiter that gave up on another instance's lease loads unleased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_a_waiter_that_gave_up_on_the_lease_is_fenced_too() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let build = async || -> Cache<u64, String> {
        Cache::builder("d6w")
            .store(common::store(&server).await)
            .lease_wait(Duration::from_millis(100), Duration::from_millis(20))
            .build()
            .unwrap()
    };
    let (holder, waiter, writer) = (build().await, build().await, build().await);
    // The origin's version: a load reads it when it starts, and answers after `ms`.
    let origin = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let slow = |ms: u64, origin: Arc<std::sync::atomic::AtomicU64>| {
        move |_: &u64| {
            let version = origin.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, OriginError>(Some(format!("v{version}")))
            }
        }
    };
    let held = {
        let holder = holder.clone();
        let load = slow(1_000, origin.clone());
        tokio::spawn(async move { holder.get_or_load(&1, load).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waited = {
        let waiter = waiter.clone();
        let load = slow(300, origin.clone());
        tokio::spawn(async move { waiter.get_or_load(&1, load).await })
    };
    // The waiter gives up at ~150 ms and loads until ~450 ms; the origin changes at ~250 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    origin.store(1, std::sync::atomic::Ordering::SeqCst);
    writer.invalidate(&1).await.unwrap();
    waited.await.unwrap().unwrap();
    held.await.unwrap().unwrap();
    // (A load that started after the change — a slow machine — may fill v1: that is correct.)
    let stored = writer.get(&1).await.unwrap();
    assert_ne!(
        stored.as_deref().map(String::as_str),
        Some("v0"),
        "a fill the invalidation overtook was written to L2"
    );
    let _ = &mut raw;
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn slow_loader_cache(
    server: &herdwise_testkit::RedisServer,
    name: &str,
) -> Cache<u64, String> {
    let store = common::store(server).await;
    Cache::builder(name)
        .store(store)
        .ttl(Duration::from_millis(200))
        .no_ttl_jitter()
        .stale_while_revalidate(Duration::from_secs(10))
        .loader(|_: &u64| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, OriginError>(Some("v".to_string()))
        })
        .build()
        .unwrap()
}

// Defect 7: stale-while-revalidate starts one background refresh per key, not one per read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_stale_reads_start_one_refresh_not_one_task_each() {
    let server = common::redis();
    let cache = slow_loader_cache(&server, "d7s").await;
    cache.fetch(&1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = alive_tasks();
    for _ in 0..500 {
        let got = cache.fetch_with(&1, &LoadOptions::default()).await.unwrap();
        assert!(got.stale);
    }
    let spawned = alive_tasks().saturating_sub(before);
    assert!(spawned <= 2, "{spawned} tasks alive after 500 stale reads");
}

// Defect 7: XFetch does not start a refresh while one for the key runs already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_xfetch_starts_no_refresh_while_one_runs() {
    let server = common::redis();
    let store = common::store(&server).await;
    let cache: Cache<u64, String> = Cache::builder("d7x")
        .store(store)
        .ttl(Duration::from_secs(60))
        .xfetch_beta(1e9) // always due
        .loader(|_: &u64| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, OriginError>(Some("v".to_string()))
        })
        .build()
        .unwrap();
    cache.fetch(&1).await.unwrap();
    let before = alive_tasks();
    for _ in 0..500 {
        assert!(cache.fetch(&1).await.unwrap().is_some());
    }
    let spawned = alive_tasks().saturating_sub(before);
    assert!(
        spawned <= 2,
        "{spawned} tasks alive after 500 early-refresh hits"
    );
}

// Defect 7: a soft timeout spawns nothing on a plain hit.
#[tokio::test]
async fn d7_a_soft_timeout_spawns_nothing_on_a_hit() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("d7t")
        .store(common::store(&server).await)
        .xfetch_beta(0.0)
        .loader_soft_timeout(Duration::from_secs(1))
        .loader(|_: &u64| async { Ok::<_, OriginError>(Some("v".to_string())) })
        .build()
        .unwrap();
    cache.fetch(&1).await.unwrap();
    // Stored before its subscription was confirmed, the entry is checked against L2 once more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cache.fetch(&1).await.unwrap();
    let before = alive_tasks();
    let opts = LoadOptions::default();
    let mut reads: Vec<_> = (0..200)
        .map(|_| Box::pin(cache.fetch_with(&1, &opts)))
        .collect();
    let mut ready = 0;
    for read in reads.iter_mut() {
        if let std::task::Poll::Ready(got) = futures::poll!(read.as_mut()) {
            assert!(got.unwrap().value.is_some());
            ready += 1;
        }
    }
    let spawned = alive_tasks().saturating_sub(before);
    assert_eq!(spawned, 0, "tasks spawned by 200 hits");
    assert_eq!(ready, 200, "a hit answers on its first poll");
}

async fn pause_writes(conn: &mut redis::aio::MultiplexedConnection, ms: u64) {
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(conn)
        .await
        .unwrap();
}

// Defect 1 (audit): a read dropped while its lease request is on the wire releases the lease,
// so other instances do not wait out its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_a_read_dropped_during_its_lease_request_releases_the_lease() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let build = async || -> Cache<u64, String> {
        Cache::builder("d1l")
            .store(common::store(&server).await)
            .no_circuit_breaker()
            .build()
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    a.get(&0).await.unwrap();
    b.get(&0).await.unwrap();
    pause_writes(&mut raw, 200).await;
    let load = |_: &u64| async { Ok::<_, OriginError>(Some("v".to_string())) };
    let dropped = tokio::time::timeout(Duration::from_millis(10), a.get_or_load(&1, load)).await;
    assert!(
        dropped.is_err(),
        "the lease request waits on the paused Redis"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let t = Instant::now();
    let got = b.get_or_load(&1, load).await.unwrap();
    assert!(got.is_some());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "another instance waited {:?} for a lease nobody holds",
        t.elapsed()
    );
}

// Defect 11: a lease released by a cancelled holder goes through the breaker like every call:
// nothing is sent to a Redis the breaker has shut out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d11_a_cancelled_holders_release_goes_through_the_breaker() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let cache: Cache<u64, String> = Cache::builder("d11")
        .store(common::store(&server).await)
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .circuit_breaker(BreakerConfig::default().open_for(Duration::from_secs(5)))
        .build()
        .unwrap();
    cache.get(&0).await.unwrap();
    let holder = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(&1, |_| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<_, OriginError>(Some("v".to_string()))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // the lease is taken, the load runs
    let evals_before = common::calls_of(&mut raw, "eval").await;
    server.pause().unwrap();
    let t = Instant::now();
    while cache.breaker_state() != BreakerState::Open {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the breaker must open"
        );
        let _ = cache.get(&2).await;
    }
    holder.abort(); // the holder is cancelled while the breaker is open
    let _ = holder.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.resume().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let evals = common::calls_of(&mut raw, "eval").await - evals_before;
    assert_eq!(evals, 0, "a release was sent past the open breaker");
}

// Defect 8: a half-open subscription connection (a NAT or proxy that dropped it silently) is
// noticed by its health check, and the instance stops trusting its L1 instead of serving what
// an invalidation it never received should have removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d8_a_silently_dropped_subscription_is_noticed_and_l1_demoted() {
    let server = common::redis();
    let proxy = herdwise_testkit::Proxy::start(server.port()).unwrap();
    let behind_proxy = herdwise::RedisStore::builder(&proxy.url())
        .pubsub_health_check(Duration::from_millis(300), Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let (a, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("d8")
            .store(behind_proxy)
            .l1_ttl_cap(Duration::from_secs(60))
    });
    let b: Cache<u64, String> = Cache::builder("d8")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    b.set(&1, "old".to_string()).await.unwrap();
    assert!(a.get(&1).await.unwrap().is_some()); // in A's L1 now
    tokio::time::sleep(Duration::from_millis(300)).await; // A's subscription is up
                                                          // Cached before A listened, the copy was unverified; checked once now, it is trusted.
    assert!(a.get(&1).await.unwrap().is_some());
    proxy.freeze_subscribers(true);
    b.invalidate(&1).await.unwrap(); // the event never reaches A
    let noticed = common::eventually(Duration::from_secs(3), async || {
        a.get(&1).await.unwrap().is_none()
    })
    .await;
    assert!(noticed, "A still serves the invalidated value from L1");
    assert!(
        counter(
            &metrics,
            m::BACKPLANE_RESETS,
            &[("reason", "subscription_lost")]
        ) >= 1
    );
    proxy.freeze_subscribers(false);
}

/// Deletes every key matching `pattern` (as an eviction of metadata would).
async fn delete_matching(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(conn)
            .await
            .unwrap();
    }
    keys.len()
}

// Defect 12: the tag metadata evicted (here: every `herdwise:{ns:…}` key deleted, under load)
// must not make a tag's invalidation undone for an instance that checks against the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d12_evicted_tag_metadata_does_not_revive_invalidated_entries() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let a: Cache<u64, String> = Cache::builder("d12")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let list = WriteOptions::default().tags(["list:7"]);
    a.set_with(&1, "old list".to_string(), &list).await.unwrap();
    a.invalidate_tag("list:7").await.unwrap(); // the entry stays in L2, dead by its tag
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..300u64 {
                    let _ = a.get(&(i % 20)).await;
                }
            })
        })
        .collect();
    let deleted = delete_matching(&mut raw, "herdwise:{ns:d12}:*").await;
    assert!(deleted >= 1, "tag metadata existed");
    for r in readers {
        r.await.unwrap();
    }
    // A freshly started instance knows nothing of the invalidation but what the store says.
    let fresh: Cache<u64, String> = Cache::builder("d12")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    assert_eq!(
        fresh.get(&1).await.unwrap(),
        None,
        "an entry the tag invalidated was served after its metadata was lost"
    );
    assert_eq!(a.get(&1).await.unwrap(), None);
    // And tagged entries written after the loss are served again.
    fresh
        .set_with(&2, "new list".to_string(), &list)
        .await
        .unwrap();
    let other: Cache<u64, String> = Cache::builder("d12")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    assert!(other.get(&2).await.unwrap().is_some());
}

// Defect 12: an evicted recovery sentinel must not be taken for "Redis lost its data" (which
// would let L1 answer for keys that were invalidated while this instance was cut off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d12_an_evicted_sentinel_is_not_taken_for_lost_data() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    let proxy = herdwise_testkit::Proxy::start(server.port()).unwrap();
    let a: Cache<u64, String> = Cache::builder("d12s")
        .store(herdwise::RedisStore::connect(&proxy.url()).await.unwrap())
        .circuit_breaker(BreakerConfig::default().open_for(Duration::from_millis(300)))
        .build()
        .unwrap();
    a.set(&1, "old".to_string()).await.unwrap();
    assert!(a.get(&1).await.unwrap().is_some()); // in L1; sentinel learned
    proxy.freeze_all(true); // A is cut off from Redis
    let t = Instant::now();
    while a.breaker_state() != BreakerState::Open {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the breaker must open"
        );
        let _ = a.get(&(100 + t.elapsed().as_micros() as u64)).await;
    }
    // Meanwhile the key is invalidated (its event never reaches A) and the sentinel evicted.
    let key = a.stored_key(&1).unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        delete_matching(&mut raw, "herdwise:{ns:d12s}:sentinel").await,
        1
    );
    proxy.freeze_all(false);
    let recovered = common::eventually(Duration::from_secs(5), async || {
        let _ = a.get(&2).await;
        a.breaker_state() == BreakerState::Closed
    })
    .await;
    assert!(recovered);
    assert_eq!(
        a.get(&1).await.unwrap(),
        None,
        "L1 answered for a key invalidated while A was cut off"
    );
}

// Review finding: an invalidation whose caller is dropped on the way (a request timeout) must
// still be applied — key, tag and prefix alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_an_invalidation_dropped_by_its_caller_is_still_applied() {
    let server = common::redis();
    let slow = common::SlowDeletes {
        inner: common::store(&server).await,
        delete_delay: Duration::from_millis(300),
        fail_fills: false,
        joint_writes: false,
    };
    let cache: Cache<(u64, u64), String> = Cache::builder("r1")
        .store(slow)
        .store_timeout(Duration::from_secs(2))
        .no_circuit_breaker()
        .build()
        .unwrap();
    let other: Cache<(u64, u64), String> = Cache::builder("r1")
        .store(common::store(&server).await)
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .build()
        .unwrap();
    let tagged = WriteOptions::default().tags(["t"]);
    cache.set(&(1, 1), "key".to_string()).await.unwrap();
    cache
        .set_with(&(2, 1), "tagged".to_string(), &tagged)
        .await
        .unwrap();
    cache.set(&(3, 1), "prefixed".to_string()).await.unwrap();
    let give_up = Duration::from_millis(50);
    assert!(tokio::time::timeout(give_up, cache.invalidate(&(1, 1)))
        .await
        .is_err());
    assert!(tokio::time::timeout(give_up, cache.invalidate_tag("t"))
        .await
        .is_err());
    assert!(
        tokio::time::timeout(give_up, cache.invalidate_prefix(&3u64))
            .await
            .is_err()
    );
    let applied = common::eventually(Duration::from_secs(5), async || {
        let mut gone = true;
        for key in [(1, 1), (2, 1), (3, 1)] {
            gone &= other.get(&key).await.unwrap().is_none();
        }
        gone
    })
    .await;
    assert!(
        applied,
        "another instance still reads what the dropped invalidations removed: {:?} {:?} {:?}",
        other.get(&(1, 1)).await.unwrap(),
        other.get(&(2, 1)).await.unwrap(),
        other.get(&(3, 1)).await.unwrap()
    );
    for key in [(1, 1), (2, 1), (3, 1)] {
        assert_eq!(
            cache.get(&key).await.unwrap(),
            None,
            "{key:?} on this instance"
        );
    }
}

// Review finding: while this instance's delete of a key keeps failing (reads still work), it
// must not read the old value back from L2 into its own L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_a_failed_delete_does_not_bring_the_old_value_back_here() {
    let server = common::redis();
    let slow = common::SlowDeletes {
        inner: common::store(&server).await,
        delete_delay: Duration::from_secs(30),
        fail_fills: false,
        joint_writes: false,
    };
    let cache: Cache<u64, String> = Cache::builder("r2")
        .store(slow)
        .store_timeout(Duration::from_millis(100))
        .no_circuit_breaker()
        .build()
        .unwrap();
    cache.set(&7, "old".to_string()).await.unwrap();
    cache.invalidate(&7).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            cache.get(&7).await.unwrap(),
            None,
            "the instance that invalidated the key served its old value from L2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = Calls::default();
    let loaded = cache
        .get_or_load(&7, |_| {
            calls.hit();
            async { Ok::<_, OriginError>(Some("new".to_string())) }
        })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref().map(String::as_str), Some("new"));
    assert_eq!(calls.get(), 1);
}

// Review finding: callers whose timeouts are shorter than the store deadline must still trip
// the breaker on a frozen Redis (their calls have no outcome of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_callers_with_short_timeouts_still_trip_the_breaker() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("r8")
        .store(common::store(&server).await)
        .store_timeout(Duration::from_millis(100))
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .circuit_breaker(
            BreakerConfig::default()
                .consecutive_failures(3)
                .open_for(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    cache.set(&1, "one".to_string()).await.unwrap();
    server.pause().unwrap();
    let t = Instant::now();
    while cache.breaker_state() != BreakerState::Open && t.elapsed() < Duration::from_secs(3) {
        let _ = tokio::time::timeout(Duration::from_millis(5), cache.get(&1)).await;
    }
    let state = cache.breaker_state();
    server.resume().unwrap();
    assert_eq!(
        state,
        BreakerState::Open,
        "a frozen Redis, and every caller gives up after 5 ms"
    );
}

// Review finding: loads in flight under a prefix (their value read before the invalidation)
// must not be stored behind the prefix walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_loads_in_flight_under_a_prefix_are_not_stored_behind_its_walk() {
    let server = common::redis();
    let cache: Cache<(u64, u64), String> = slow_store_cache("r9", common::store(&server).await);
    const N: u64 = 20_000;
    let mut raw = common::raw(&server).await;
    seed_prefix(&cache, &mut raw, N).await;
    // 60 loads under the prefix, each holding its lease, each with the origin's old state read.
    const LOADS: u64 = 60;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let loads: Vec<_> = (0..LOADS)
        .map(|i| {
            let (cache, gate) = (cache.clone(), gate.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&(42, N + i), |_| async move {
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, OriginError>(Some("old".to_string()))
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Their fills land one by one while the walk runs (and after it).
    let releaser = {
        let gate = gate.clone();
        tokio::spawn(async move {
            for _ in 0..LOADS {
                gate.add_permits(1);
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };
    cache.invalidate_prefix(&42u64).await.unwrap();
    releaser.await.unwrap();
    for load in loads {
        load.await.unwrap().unwrap();
    }
    let keys: Vec<String> = (0..LOADS)
        .map(|i| cache.stored_key(&(42, N + i)).unwrap())
        .collect();
    assert_eq!(
        existing(&mut raw, &keys).await,
        0,
        "values loaded before the prefix invalidation are stored in L2"
    );
}

// Defect 12, the namespace generation: with its metadata evicted while an instance runs, that
// instance puts its generation back (at its next sync, at most 10 s later), and an instance
// started after that must not read entries that a `clear()` removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d12_an_evicted_generation_does_not_bring_back_cleared_entries() {
    let server = common::redis();
    let a: Cache<u64, String> = Cache::builder("d12g")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    a.set(&1, "before the clear".to_string()).await.unwrap();
    a.clear().await.unwrap();
    a.set(&1, "after the clear".to_string()).await.unwrap();
    // Every piece of the namespace's metadata is evicted (the values are not).
    let mut raw = common::raw(&server).await;
    assert!(delete_matching(&mut raw, "herdwise:*d12g*").await >= 1);
    tokio::time::sleep(Duration::from_secs(11)).await; // A's periodic sync
    let fresh: Cache<u64, String> = Cache::builder("d12g")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let read = fresh.get(&1).await.unwrap();
    assert_ne!(
        read.as_deref().map(String::as_str),
        Some("before the clear"),
        "a cleared entry came back"
    );
}

// Review finding: a cache that outlives the runtime its listener ran on (a `static` cache, one
// runtime per test or per worker thread) must listen again on the next one.
#[test]
fn r10_a_listener_dropped_with_its_runtime_is_started_again() {
    let store = herdwise::MemoryStore::new();
    let build = || -> Cache<u64, String> {
        Cache::builder("r10")
            .store(store.clone())
            .l1_ttl_cap(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let first = tokio::runtime::Runtime::new().unwrap();
    first.block_on(async {
        b.set(&1, "old".to_string()).await.unwrap();
        assert!(a.get(&1).await.unwrap().is_some()); // A listens, on this runtime
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        b.set(&2, "old".to_string()).await.unwrap();
        assert!(a.get(&2).await.unwrap().is_some()); // in A's L1
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.invalidate(&2).await.unwrap();
        let heard = common::eventually(Duration::from_secs(2), async || {
            a.get(&2).await.unwrap().is_none()
        })
        .await;
        assert!(
            heard,
            "A no longer hears the other instances' invalidations"
        );
    });
}

// Defect 12, leases and fences: deleted while a load holds them (as an eviction would), the
// load's claim is gone and its fill is refused, never stored on the strength of a lost claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d12_evicted_leases_and_fences_refuse_the_fills_they_guarded() {
    let server = common::redis();
    let mut raw = common::raw(&server).await;
    for (name, leased) in [("d12l", true), ("d12f", false)] {
        let store = common::store(&server).await;
        let (cache, metrics) = common::with_metrics(|| {
            let builder = Cache::<u64, String>::builder(name)
                .store(store)
                .store_timeout(Duration::from_secs(2));
            if leased {
                builder
            } else {
                builder.no_leases()
            }
        });
        cache.get(&0).await.unwrap(); // first contact: the stored keys' form
        let stored_key = cache.stored_key(&1).unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let load = {
            let (cache, gate) = (cache.clone(), gate.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&1, |_| async move {
                        // The claim is taken before the origin is read.
                        let _ = started_tx.send(());
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, OriginError>(Some("loaded".to_string()))
                    })
                    .await
            })
        };
        started.await.unwrap();
        let claims = delete_matching(&mut raw, &format!("{{{stored_key}}}:*")).await;
        assert_eq!(claims, 1, "{name}: the load held its claim");
        gate.add_permits(1);
        let got = load.await.unwrap().unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("loaded"));
        assert_eq!(
            existing(&mut raw, std::slice::from_ref(&stored_key)).await,
            0,
            "{name}: a fill whose claim was lost was stored"
        );
        assert!(
            counter(&metrics, m::FILLS_REFUSED, &[("reason", "lease_lost")]) >= 1,
            "{name}: the refusal is counted"
        );
    }
}

// Review finding: a `write_around` or `write_through` whose caller is dropped after the origin
// write began must still invalidate the key (the origin may have committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_write_dropped_during_its_origin_write_still_invalidates() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("r11")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let other: Cache<u64, String> = Cache::builder("r11")
        .store(common::store(&server).await)
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .build()
        .unwrap();
    cache.set(&1, "old".to_string()).await.unwrap();
    cache.set(&2, "old".to_string()).await.unwrap();
    let slow_origin = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, OriginError>(())
    };
    let around = tokio::time::timeout(
        Duration::from_millis(50),
        cache.write_around(&1, slow_origin),
    );
    assert!(
        around.await.is_err(),
        "the caller gave up during the origin write"
    );
    let through = tokio::time::timeout(
        Duration::from_millis(50),
        cache.write_through(&2, "new".to_string(), |_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, OriginError>(None)
        }),
    );
    assert!(
        through.await.is_err(),
        "the caller gave up during the origin write"
    );
    let invalidated = common::eventually(Duration::from_secs(3), async || {
        other.get(&1).await.unwrap().is_none() && other.get(&2).await.unwrap().is_none()
    })
    .await;
    assert!(
        invalidated,
        "the old values are still served after writes whose callers were dropped"
    );
}
