//! Stale values as a defense: stale-if-error (with its throttle and its max-stale bound), the
//! hard loader timeout, and stale-while-revalidate while another instance refreshes. Real Redis,
//! several instances.

mod common;

use std::time::{Duration, Instant};

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, Cache, Error, LoadOptions};

fn failing(
    calls: &Calls,
) -> impl FnOnce(&u64) -> futures::future::Ready<Result<Option<String>, OriginError>> {
    let calls = calls.clone();
    move |_| {
        calls.hit();
        futures::future::ready(Err(OriginError("database down".into())))
    }
}

fn ok(
    value: &'static str,
) -> impl FnOnce(&u64) -> futures::future::Ready<Result<Option<String>, OriginError>> {
    move |_| futures::future::ready(Ok(Some(value.to_string())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_within_max_stale_throttles_and_then_gives_up() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (a, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("stale")
            .store(store.clone())
            .ttl(Duration::from_millis(300))
            .no_ttl_jitter()
            .stale_if_error(Duration::from_millis(1500))
            .fail_safe_throttle(Duration::from_millis(400))
    });
    let b: Cache<u64, String> = Cache::builder("stale")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(300))
        .no_ttl_jitter()
        .stale_if_error(Duration::from_millis(1500))
        .fail_safe_throttle(Duration::from_millis(400))
        .build()
        .unwrap();
    let opts = LoadOptions::default();
    let t0 = Instant::now();
    a.get_or_load(&1, ok("v1")).await.unwrap();

    // past its fresh time, the origin fails: the stale value, flagged
    tokio::time::sleep_until((t0 + Duration::from_millis(400)).into()).await;
    let calls = Calls::default();
    let got = a
        .get_or_load_with(&1, &opts, failing(&calls))
        .await
        .unwrap();
    assert!(got.stale);
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v1"));
    assert_eq!(calls.get(), 1);
    assert_eq!(
        counter(&metrics, m::STALE_SERVED, &[("reason", "error")]),
        1
    );

    // within the throttle period nobody retries the failing origin — on this instance or another
    let got = a
        .get_or_load_with(&1, &opts, failing(&calls))
        .await
        .unwrap();
    assert!(got.stale, "a throttled copy is still flagged stale");
    let got = b
        .get_or_load_with(&1, &opts, failing(&calls))
        .await
        .unwrap();
    assert!(got.stale);
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v1"));
    assert_eq!(
        calls.get(),
        1,
        "the failing origin is retried at the throttle pace"
    );

    // after the throttle, one retry; still failing: still stale
    tokio::time::sleep_until((t0 + Duration::from_millis(900)).into()).await;
    let got = a
        .get_or_load_with(&1, &opts, failing(&calls))
        .await
        .unwrap();
    assert!(got.stale);
    assert_eq!(calls.get(), 2);

    // past max-stale (fresh until 300 ms + 1500 ms) the error comes through: never staler
    tokio::time::sleep_until((t0 + Duration::from_millis(1900)).into()).await;
    for cache in [&a, &b] {
        match cache.get_or_load_with(&1, &opts, failing(&calls)).await {
            Err(Error::Loader(e)) => assert!(e.to_string().contains("database down")),
            other => panic!("expected the origin's error past max-stale, got {other:?}"),
        }
    }
    // and the origin recovering ends it
    let got = a.get_or_load_with(&1, &opts, ok("v2")).await.unwrap();
    assert!(!got.stale);
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_timeout_bounds_a_slow_origin() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("stale")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(200))
        .no_ttl_jitter()
        .loader_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let slow = |_: &u64| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<_, OriginError>(Some("late".to_string()))
    };
    // no stale value: the timeout is the callers' error, and nothing is cached
    let t = Instant::now();
    assert!(matches!(
        cache.get_or_load(&1, slow).await,
        Err(Error::LoaderTimeout(_))
    ));
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(cache.get(&1).await.unwrap(), None);
    // with a stale value: the stale value, in about the timeout
    cache.get_or_load(&2, ok("v1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let got = cache
        .get_or_load_with(&2, &LoadOptions::default(), slow)
        .await
        .unwrap();
    assert!(got.stale);
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v1"));
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "took {:?}",
        t.elapsed()
    );
    // per-call override
    let t = Instant::now();
    let quick = LoadOptions::default().hard_timeout(Duration::from_millis(20));
    assert!(matches!(
        cache.get_or_load_with(&3, &quick, slow).await,
        Err(Error::LoaderTimeout(d)) if d == Duration::from_millis(20)
    ));
    assert!(t.elapsed() < Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_while_another_instance_refreshes() {
    let server = common::redis();
    let mut caches = Vec::new();
    for _ in 0..2 {
        caches.push(
            Cache::<u64, String>::builder("swr")
                .store(common::store(&server).await)
                .ttl(Duration::from_millis(300))
                .no_ttl_jitter()
                .stale_while_revalidate(Duration::from_secs(5))
                .build()
                .unwrap(),
        );
    }
    let (a, b) = (caches[0].clone(), caches[1].clone());
    a.get_or_load(&1, ok("v1")).await.unwrap();
    b.get_or_load(&1, ok("unused")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // A refreshes slowly, holding the lease
    let refresh = tokio::spawn(async move {
        a.get_or_load(&1, |_| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, OriginError>(Some("v2".to_string()))
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let calls = Calls::default();
    let c = calls.clone();
    let got = b
        .get_or_load_with(&1, &LoadOptions::default(), |_| async move {
            c.hit();
            Ok::<_, OriginError>(Some("B's own load".to_string()))
        })
        .await
        .unwrap();
    assert!(got.stale);
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v1"));
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(calls.get(), 0, "B neither loads nor waits");

    assert_eq!(
        refresh
            .await
            .unwrap()
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("v2")
    );
    let got = b
        .get_or_load_with(&1, &LoadOptions::default(), ok("unused"))
        .await
        .unwrap();
    assert!(!got.stale);
    assert_eq!(got.value.as_deref().map(String::as_str), Some("v2"));
}
