//! The circuit breaker against a real Redis that is frozen (SIGSTOP: slow but alive) or killed:
//! it opens within a second, no read waits for Redis while it is open, and a probe closes it
//! once Redis is back.

mod common;

use std::time::{Duration, Instant};

use common::{counter, OriginError};
use herdwise::{metrics as m, BreakerConfig, BreakerState, Cache};

async fn read(cache: &Cache<u64, String>, key: u64) -> Duration {
    let t = Instant::now();
    let got = cache
        .get_or_load(&key, |k| {
            let v = format!("v{k}");
            async move { Ok::<_, OriginError>(Some(v)) }
        })
        .await
        .unwrap();
    assert!(got.is_some(), "reads keep succeeding from the origin");
    t.elapsed()
}

/// Reads new keys from `first_key` on until the breaker opens, which must happen within 1 s of
/// the fault (just injected); how long it took, and the next unused key.
async fn read_until_open(cache: &Cache<u64, String>, first_key: u64) -> (Duration, u64) {
    let fault = Instant::now();
    let mut key = first_key;
    while cache.breaker_state() != BreakerState::Open {
        assert!(
            fault.elapsed() < Duration::from_secs(1),
            "the breaker must open within 1 s"
        );
        read(cache, key).await;
        key += 1;
    }
    (fault.elapsed(), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_opens_the_breaker_and_reads_stop_waiting_for_it() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("br")
            .store(store.clone())
            .l1_max_bytes(0)
            .circuit_breaker(BreakerConfig::default().open_for(Duration::from_millis(500)))
    });
    for key in 0..200 {
        read(&cache, key).await;
    }
    assert_eq!(cache.breaker_state(), BreakerState::Closed);

    server.pause().unwrap();
    let (opened_after, mut key) = read_until_open(&cache, 1_000).await;
    // Open: no store call at all, so a miss costs only the origin.
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        slowest = slowest.max(read(&cache, key).await);
        key += 1;
    }
    eprintln!("breaker opened {opened_after:?} after SIGSTOP; slowest read while open {slowest:?}");
    assert!(
        slowest < Duration::from_millis(25),
        "a read waited for Redis: {slowest:?}"
    );
    assert!(counter(&metrics, m::L2_CALLS, &[("outcome", "rejected")]) > 0);

    server.resume().unwrap();
    let closed = common::eventually(Duration::from_secs(3), async || {
        read(&cache, 1).await;
        cache.breaker_state() == BreakerState::Closed
    })
    .await;
    assert!(closed, "a probe must close the breaker once Redis answers");
    assert!(counter(&metrics, m::BREAKER_TRANSITIONS, &[("to", "half_open")]) >= 1);
    assert!(counter(&metrics, m::BREAKER_TRANSITIONS, &[("to", "closed")]) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_opens_it_a_failed_probe_reopens_it_and_a_restart_closes_it() {
    let mut server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("br")
            .store(store)
            .l1_max_bytes(0)
            .circuit_breaker(BreakerConfig::default().open_for(Duration::from_millis(300)))
    });
    read(&cache, 0).await;
    server.kill();
    let (_, mut key) = read_until_open(&cache, 1).await;
    // Half-open while Redis is still dead: the one probe fails and the breaker opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    read(&cache, key).await;
    key += 1;
    assert_eq!(
        cache.breaker_state(),
        BreakerState::Open,
        "a failed probe re-opens it"
    );
    assert!(counter(&metrics, m::BREAKER_TRANSITIONS, &[("to", "half_open")]) >= 1);
    assert!(counter(&metrics, m::BREAKER_TRANSITIONS, &[("to", "open")]) >= 2);
    read(&cache, key).await;
    server.restart().unwrap();
    let closed = common::eventually(Duration::from_secs(5), async || {
        read(&cache, 0).await;
        cache.breaker_state() == BreakerState::Closed
    })
    .await;
    assert!(closed);
}

/// A breaker opened by timeouts (Redis slow, not gone: a saturated machine, a stalled network
/// path) does not keep an instance's invalidations from the others: its announcements and tag
/// bumps are tried anyway (a key's delete waits for the breaker, and is announced as pending
/// meanwhile). Seen in the torture run on a loaded machine: the writing instance's breaker opened
/// on 50 ms timeouts, its announcements were rejected, and the other instances served the old
/// value from L1 for over a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_still_lets_invalidations_through() {
    let server = common::redis();
    let proxy = herdwise_testkit::Proxy::start(server.port()).unwrap();
    let a: Cache<u64, String> = Cache::builder("brk-inv")
        .store(herdwise::RedisStore::connect(&proxy.url()).await.unwrap())
        .circuit_breaker(
            BreakerConfig::default()
                .min_calls(5)
                .open_for(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let b_store = common::store(&server).await;
    let (b, b_metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("brk-inv").store(b_store));
    let tagged = herdwise::WriteOptions::default().tags(["t"]);
    // B listening from the start: it hears all of A's events, so a missing one would show.
    b.get(&0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.set(&1, "old".to_string()).await.unwrap();
    a.set_with(&2, "tagged".to_string(), &tagged).await.unwrap();
    // B holds both in L1 once its subscription is up (before, it re-checks L2 on every read).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for key in [1, 2] {
        assert!(b.get(&key).await.unwrap().is_some());
    }
    // Every call of A's stalls: its breaker opens (and stays open: 30 s).
    proxy.freeze_all(true);
    let (_, _) = read_until_open(&a, 100).await;
    proxy.freeze_all(false);
    assert_eq!(a.breaker_state(), BreakerState::Open);
    a.invalidate(&1).await.unwrap();
    a.invalidate_tag("t").await.unwrap();
    for key in [1, 2] {
        let stopped = common::eventually(Duration::from_secs(1), async || {
            b.get(&key).await.unwrap().is_none()
        })
        .await;
        assert!(
            stopped,
            "B kept serving key {key}, which A invalidated while its breaker was open"
        );
    }
    assert_eq!(
        a.breaker_state(),
        BreakerState::Open,
        "the invalidations did not close the breaker"
    );
    // And they went out in sequence: a delete the breaker rejected took no sequence number
    // (had its event been handed to it, every receiver would have seen a gap, once the
    // missing number's grace to arrive late was over).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counter(&b_metrics, m::BACKPLANE_RESETS, &[("reason", "gap")]),
        0,
        "B saw a gap in A's events"
    );
}
