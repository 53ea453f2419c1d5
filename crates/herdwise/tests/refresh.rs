//! Background refresh through a registered loader: stale-while-revalidate and XFetch, against
//! real Redis with several instances.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, Cache, Error};
use parking_lot::Mutex;

/// An origin whose value can be changed, counting loads, each taking `latency`.
#[derive(Clone)]
struct Origin {
    value: Arc<Mutex<String>>,
    calls: Calls,
    latency: Arc<Mutex<Duration>>,
}

impl Origin {
    fn new(value: &str, latency: Duration) -> Self {
        Origin {
            value: Arc::new(Mutex::new(value.to_string())),
            calls: Calls::default(),
            latency: Arc::new(Mutex::new(latency)),
        }
    }
    fn loader(
        &self,
    ) -> impl Fn(&u64) -> futures::future::BoxFuture<'static, Result<Option<String>, OriginError>>
           + Send
           + Sync
           + 'static {
        let origin = self.clone();
        move |_key: &u64| {
            let origin = origin.clone();
            Box::pin(async move {
                origin.calls.hit();
                let v = origin.value.lock().clone();
                let latency = *origin.latency.lock();
                tokio::time::sleep(latency).await;
                Ok(Some(v))
            })
        }
    }
}

#[tokio::test]
async fn fetch_needs_a_registered_loader() {
    let cache: Cache<u64, String> = Cache::builder("refresh").build().unwrap();
    assert!(matches!(cache.fetch(&1).await, Err(Error::NoLoader)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_behind_it() {
    let server = common::redis();
    let origin = Origin::new("v1", Duration::from_millis(200));
    let store = common::store(&server).await;
    let build = |store: herdwise::RedisStore| {
        Cache::<u64, String>::builder("refresh")
            .store(store)
            .ttl(Duration::from_millis(300))
            .no_ttl_jitter()
            .stale_while_revalidate(Duration::from_secs(5))
            .xfetch_beta(0.0)
            .loader(origin.loader())
    };
    let (a, metrics) = common::with_metrics(|| build(store.clone()));
    let b = build(common::store(&server).await).build().unwrap();
    assert_eq!(
        a.fetch(&1).await.unwrap().as_deref().map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        b.fetch(&1).await.unwrap().as_deref().map(String::as_str),
        Some("v1")
    );
    assert_eq!(origin.calls.get(), 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    *origin.value.lock() = "v2".to_string();
    // 50 readers over two instances hit the stale entry at once: all answered at once, stale,
    // and one refresh runs behind them.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            cache
                .fetch_with(&1, &herdwise::LoadOptions::default())
                .await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert!(got.stale);
        assert_eq!(got.value.as_deref().map(String::as_str), Some("v1"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "took {:?}",
        started.elapsed()
    );

    let refreshed = common::eventually(Duration::from_secs(3), async || {
        let a_now = a.fetch(&1).await.unwrap();
        let b_now = b.fetch(&1).await.unwrap();
        a_now.as_deref().map(String::as_str) == Some("v2")
            && b_now.as_deref().map(String::as_str) == Some("v2")
    })
    .await;
    assert!(
        refreshed,
        "the background refresh must land on every instance"
    );
    assert_eq!(
        origin.calls.get(),
        2,
        "one refresh for 50 stale reads on two instances"
    );
    assert!(counter(&metrics, m::REFRESHES, &[("trigger", "swr")]) >= 1);
}

/// Reads a key every 5 ms across its expiries; returns (reads slower than 50 ms after the first
/// load, loader calls).
async fn read_across_expiries(cache: &Cache<u64, String>, origin: &Origin) -> (usize, usize) {
    cache.fetch(&1).await.unwrap();
    let mut slow = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let t = Instant::now();
        cache.fetch(&1).await.unwrap();
        if t.elapsed() > Duration::from_millis(50) {
            slow += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (slow, origin.calls.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfetch_refreshes_before_expiry_so_nobody_waits_at_expiry() {
    let server = common::redis();
    let build = |origin: &Origin, beta: f64, ns: &str, store: herdwise::RedisStore| {
        Cache::<u64, String>::builder(ns)
            .store(store)
            .ttl(Duration::from_millis(600))
            .no_ttl_jitter()
            .stale_if_error(Duration::ZERO)
            .xfetch_beta(beta)
            .loader(origin.loader())
            .build()
            .unwrap()
    };
    // control: without XFetch, a read at each expiry waits for the 100 ms load
    let plain_origin = Origin::new("v", Duration::from_millis(100));
    let plain = build(&plain_origin, 0.0, "plain", common::store(&server).await);
    let (plain_slow, _) = read_across_expiries(&plain, &plain_origin).await;
    assert!(
        plain_slow >= 2,
        "the control must show waits at expiry ({plain_slow})"
    );

    let origin = Origin::new("v", Duration::from_millis(100));
    let cache = build(&origin, 1.0, "xfetch", common::store(&server).await);
    let (slow, calls) = read_across_expiries(&cache, &origin).await;
    assert_eq!(slow, 0, "XFetch refreshed early: no read waited at expiry");
    assert!(
        calls >= 4,
        "early refreshes happened ({calls} loads in 2.5 s of a 600 ms TTL)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_answers_stale_and_the_load_still_fills() {
    let server = common::redis();
    let origin = Origin::new("v1", Duration::from_millis(10));
    let cache: Cache<u64, String> = Cache::builder("soft")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(200))
        .no_ttl_jitter()
        .xfetch_beta(0.0)
        .loader_soft_timeout(Duration::from_millis(50))
        .loader(origin.loader())
        .build()
        .unwrap();
    cache.fetch(&1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    *origin.value.lock() = "v2".to_string();
    *origin.latency.lock() = Duration::from_millis(400);

    let t = Instant::now();
    let got = cache
        .fetch_with(&1, &herdwise::LoadOptions::default())
        .await
        .unwrap();
    assert!(got.stale, "past the soft timeout the stale value answers");
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v1"));
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "took {:?}",
        t.elapsed()
    );

    let filled = common::eventually(Duration::from_secs(3), async || {
        cache.get(&1).await.unwrap().as_deref().map(String::as_str) == Some("v2")
    })
    .await;
    assert!(
        filled,
        "the slow load finished in the background and filled the cache"
    );
    assert_eq!(origin.calls.get(), 2);

    // no stale value to fall back on: the caller waits for the load
    *origin.latency.lock() = Duration::from_millis(150);
    let t = Instant::now();
    let got = cache
        .fetch_with(&2, &herdwise::LoadOptions::default())
        .await
        .unwrap();
    assert!(!got.stale);
    assert!(t.elapsed() >= Duration::from_millis(140));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_keeps_a_key_warm_until_the_handle_is_dropped() {
    let server = common::redis();
    let origin = Origin::new("v", Duration::from_millis(30));
    let cache: Cache<u64, String> = Cache::builder("ahead")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(400))
        .no_ttl_jitter()
        .xfetch_beta(0.0)
        .stale_if_error(Duration::ZERO)
        .loader(origin.loader())
        .build()
        .unwrap();
    let hot = cache.refresh_ahead([1u64], 0.5).unwrap();
    // nobody reads through the loader: plain cache-aside gets, which never load
    let warm = common::eventually(Duration::from_secs(2), async || {
        cache.get(&1).await.unwrap().is_some()
    })
    .await;
    assert!(warm, "a registered key is loaded without anyone asking");
    let until = Instant::now() + Duration::from_millis(1600);
    let mut misses = 0;
    while Instant::now() < until {
        if cache.get(&1).await.unwrap().is_none() {
            misses += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(misses, 0, "refreshed before every expiry");
    let calls = origin.calls.get();
    assert!(calls >= 4, "{calls} loads over ~4 TTLs");

    drop(hot);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let after = origin.calls.get();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        origin.calls.get(),
        after,
        "dropping the handle stops the refreshing"
    );
    assert!(
        cache.get(&1).await.unwrap().is_none(),
        "and the key then expires"
    );
}
