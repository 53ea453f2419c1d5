//! Redis outages and what follows them, against real Redis servers that are killed and
//! restarted: L1 stays within its byte bound while it is the only tier, it is re-checked against
//! L2 once Redis is back (events were missed), keys an empty Redis lost are answered from L1
//! during the recovery window instead of all going to the origin, and the staggered re-warm
//! reloads the hottest keys first.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, BreakerConfig, BreakerState, Cache, LoadOptions, RewarmPolicy};

const OPEN_FOR: Duration = Duration::from_millis(200);

fn breaker() -> BreakerConfig {
    BreakerConfig::default().open_for(OPEN_FOR)
}

/// Reads keys that are not cached until the breaker opens (Redis is down).
async fn trip<V>(cache: &Cache<u64, V>)
where
    V: Send + Sync + 'static,
{
    let started = Instant::now();
    let mut key = 1_000_000;
    while cache.breaker_state() != BreakerState::Open {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "breaker stayed closed"
        );
        let _ = cache.get(&key).await;
        key += 1;
    }
}

/// Makes remote calls until a probe closes the breaker (Redis is back).
async fn until_closed<V>(cache: &Cache<u64, V>)
where
    V: Send + Sync + 'static,
{
    let closed = common::eventually(Duration::from_secs(5), async || {
        let _ = cache.get(&2_000_000).await;
        cache.breaker_state() == BreakerState::Closed
    })
    .await;
    assert!(closed, "the breaker must close once Redis answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_stays_within_its_byte_bound_while_it_is_the_only_tier() {
    let server = common::redis();
    let cache: Cache<u64, Vec<u8>> = Cache::builder("outage-l1")
        .store(common::store(&server).await)
        .l1_max_bytes(256 * 1024)
        .circuit_breaker(breaker())
        .build()
        .unwrap();
    let mut server = server;
    server.kill();
    trip(&cache).await;

    let calls = Calls::default();
    let load = |calls: &Calls| {
        let calls = calls.clone();
        move |_: &u64| async move {
            calls.hit();
            Ok::<_, OriginError>(Some(vec![7u8; 1_000]))
        }
    };
    // ~1.1 MB of values through a 256 KiB L1; each read twice: what the origin returned
    // during the outage went into L1, so the second read costs nothing.
    for key in 0..1_000u64 {
        for _ in 0..2 {
            let got = cache.get_or_load(&key, load(&calls)).await.unwrap();
            assert_eq!(got.map(|v| v.len()), Some(1_000));
        }
        assert_eq!(
            calls.get() as u64,
            key + 1,
            "the second read of {key} hit L1"
        );
        assert!(
            cache.l1_bytes() <= cache.l1_max_bytes(),
            "L1 at {} bytes, bound {}",
            cache.l1_bytes(),
            cache.l1_max_bytes()
        );
    }
    assert!(
        cache.l1_bytes() > 128 * 1024,
        "L1 was used: {}",
        cache.l1_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_recovery_l1_is_rechecked_against_l2() {
    let server = common::redis();
    let store = common::store(&server).await;
    let a: Cache<u64, String> = Cache::builder("outage-verify")
        .store(store.clone())
        .circuit_breaker(breaker())
        .build()
        .unwrap();
    // A second instance whose writes this one never hears about (as if the event was lost).
    let b: Cache<u64, String> = Cache::builder("outage-verify")
        .store(store.clone())
        .no_backplane()
        .build()
        .unwrap();
    for key in [1, 2, 3] {
        a.set(&key, "old".to_string()).await.unwrap();
        let got = a.get(&key).await.unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("old"));
    }

    server.pause().unwrap();
    trip(&a).await;
    server.resume().unwrap();
    // Written and invalidated while `a` was cut off from the remote tier.
    b.set(&1, "new".to_string()).await.unwrap();
    b.invalidate(&2).await.unwrap();
    b.invalidate(&3).await.unwrap();
    until_closed(&a).await;

    assert_eq!(
        a.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new"),
        "an L1 entry from before the outage must be checked against L2"
    );
    assert_eq!(
        a.get(&2).await.unwrap(),
        None,
        "Redis kept its data: a key missing there was invalidated, and L1 must not answer for it"
    );
    // Not even as a stale fallback when the origin fails.
    let failing = a
        .get_or_load(&3, |_| async {
            Err::<Option<String>, _>(OriginError("down".into()))
        })
        .await;
    assert!(
        failing.is_err(),
        "an invalidated value came back: {failing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_an_empty_redis_lost_are_answered_from_l1_in_the_recovery_window() {
    let mut server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("outage-window")
            .store(store)
            .circuit_breaker(breaker())
            .recovery_window(Duration::from_millis(1_500))
            .no_rewarm_after_recovery()
    });
    let calls = Calls::default();
    let read = |key: u64| {
        let calls = calls.clone();
        let cache = cache.clone();
        async move {
            cache
                .get_or_load_with(&key, &LoadOptions::default(), |k| {
                    calls.hit();
                    let v = format!("v{k}");
                    async move { Ok::<_, OriginError>(Some(v)) }
                })
                .await
                .unwrap()
        }
    };
    for key in 0..100 {
        read(key).await;
    }
    assert_eq!(calls.get(), 100);

    server.kill();
    trip(&cache).await;
    server.restart().unwrap(); // empty
    until_closed(&cache).await;

    // Every key is gone from L2; L1 answers for them (flagged stale) instead of the origin.
    for key in 0..100 {
        let got = read(key).await;
        assert!(got.stale, "an unverified answer is flagged stale");
        assert_eq!(
            got.value.as_deref().map(String::as_str),
            Some(&*format!("v{key}"))
        );
    }
    assert_eq!(calls.get(), 100, "no origin call inside the window");
    assert_eq!(
        counter(&metrics, m::STALE_SERVED, &[("reason", "recovery")]),
        100
    );

    // Once the window (and the spread after it) is over, the keys load again.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    for key in 0..100 {
        let got = read(key).await;
        assert!(!got.stale);
    }
    assert_eq!(calls.get(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewarm_after_a_recovery_goes_by_popularity_stage_by_stage() {
    let mut server = common::redis();
    let loads: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let recording = loads.clone();
    const STAGE: Duration = Duration::from_millis(300);
    let cache: Cache<u64, String> = Cache::builder("outage-rewarm")
        .store(common::store(&server).await)
        .circuit_breaker(breaker())
        .loader(move |k: &u64| {
            recording.lock().unwrap().push((*k, Instant::now()));
            let v = format!("v{k}");
            async move { Ok::<_, OriginError>(Some(v)) }
        })
        .rewarm_after_recovery(
            RewarmPolicy::default()
                .stages([(0.1, STAGE), (0.5, STAGE), (1.0, STAGE)])
                .concurrency(2),
        )
        .build()
        .unwrap();
    // 20 keys in three popularity classes: 0-1 very hot, 2-9 warm, 10-19 cool.
    let reads = |key: u64| match key {
        0..=1 => 50_000,
        2..=9 => 10_000,
        _ => 1_000,
    };
    for key in 0..20u64 {
        for _ in 0..reads(key) {
            cache.fetch(&key).await.unwrap();
        }
    }
    assert_eq!(loads.lock().unwrap().len(), 20);
    loads.lock().unwrap().clear();

    server.kill();
    trip(&cache).await;
    server.restart().unwrap(); // empty: every key must come from the origin again
    until_closed(&cache).await;
    let recovered = Instant::now();

    let all_loaded = common::eventually(Duration::from_secs(5), async || {
        loads.lock().unwrap().len() >= 20
    })
    .await;
    assert!(all_loaded, "every remembered key is re-warmed");
    tokio::time::sleep(STAGE).await;
    let loads = loads.lock().unwrap().clone();
    let order: Vec<u64> = loads.iter().map(|(k, _)| *k).collect();
    eprintln!("re-warm order {order:?}");
    assert_eq!(loads.len(), 20, "each key once: {order:?}");
    let stage = |range: std::ops::Range<usize>| {
        let mut keys: Vec<u64> = order[range].to_vec();
        keys.sort();
        keys
    };
    assert_eq!(stage(0..2), vec![0, 1], "top 10 % first");
    assert_eq!(
        stage(2..10),
        (2..10).collect::<Vec<_>>(),
        "then the top half"
    );
    assert_eq!(stage(10..20), (10..20).collect::<Vec<_>>(), "then the rest");
    // Staggered: the later stages wait for their turn.
    let started = |i: usize| loads[i].1.duration_since(recovered);
    let slack = Duration::from_millis(50);
    assert!(
        started(2) + slack >= STAGE,
        "stage 2 began {:?} after recovery",
        started(2)
    );
    assert!(
        started(10) + slack >= STAGE * 2,
        "stage 3 began {:?} after recovery",
        started(10)
    );
    // And the keys are cached again, in L2 too.
    assert_eq!(
        cache.get(&5).await.unwrap().as_deref().map(String::as_str),
        Some("v5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_a_frozen_redis_once_at_most() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("outage-once")
            .store(store)
            .store_timeout(Duration::from_millis(50))
            .no_circuit_breaker()
    });
    cache.get(&0).await.unwrap();
    // Let the backplane subscribe (and read the generation) before Redis freezes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause().unwrap();
    let calls = Calls::default();
    let mut slowest = Duration::ZERO;
    for key in 1..=10u64 {
        let started = Instant::now();
        let got = cache
            .get_or_load(&key, |k| {
                calls.hit();
                let v = format!("v{k}");
                async move { Ok::<_, OriginError>(Some(v)) }
            })
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert!(got.is_some());
    }
    server.resume().unwrap();
    eprintln!("slowest read with Redis frozen: {slowest:?}");
    assert_eq!(calls.get(), 10);
    let failed = |op: &str| {
        counter(&metrics, m::L2_CALLS, &[("op", op), ("outcome", "error")])
            + counter(&metrics, m::L2_CALLS, &[("op", op), ("outcome", "timeout")])
    };
    assert_eq!(failed("get"), 10, "one timed-out GET per read");
    assert_eq!(failed("lease") + failed("set"), 0, "and nothing after it");
    // What was loaded meanwhile is in L1.
    assert_eq!(
        cache.get(&3).await.unwrap().as_deref().map(String::as_str),
        Some("v3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_timed_out_is_released_when_redis_catches_up() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("outage-lease")
        .store(common::store(&server).await)
        .store_timeout(Duration::from_millis(50))
        .no_circuit_breaker()
        .build()
        .unwrap();
    cache.get(&0).await.unwrap();
    let mut raw = common::raw(&server).await;
    let lease = format!("{{{}}}:lease", cache.stored_key(&1).unwrap());
    // Writes stall for 300 ms (reads go on): the lease's SET NX times out here, and Redis runs
    // it later.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .unwrap();
    let got = cache
        .get_or_load(&1, |_| async {
            Ok::<_, OriginError>(Some("v".to_string()))
        })
        .await
        .unwrap();
    assert!(got.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&lease)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        !exists,
        "a lease nobody holds would make every other instance wait out its TTL"
    );
}
