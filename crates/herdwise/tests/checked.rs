//! `get_or_load_checked` (the caller judges a cached value stale) and `ttl_from` (a value's own
//! TTL): one load per judged-stale entry across callers and instances, a replacement found on
//! a re-check taken as is, and per-value lifetimes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Calls, OriginError};
use herdwise::{Cache, LoadOptions};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Doc {
    version: u64,
    ttl_ms: Option<u64>,
}

async fn instance(server: &herdwise_testkit::RedisServer) -> Cache<u64, Doc> {
    Cache::builder("checked")
        .store(common::store(server).await)
        .ttl(Duration::from_secs(300))
        .ttl_from(|d: &Doc| d.ttl_ms.map(Duration::from_millis))
        .build()
        .unwrap()
}

type Load =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Doc>, OriginError>> + Send>>;

fn loader(calls: &Calls, version: u64) -> impl FnOnce(&u64) -> Load {
    let calls = calls.clone();
    move |_| {
        Box::pin(async move {
            calls.hit();
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(Some(Doc {
                version,
                ttl_ms: None,
            }))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judged_stale_entry_is_replaced_once_across_callers_and_instances() {
    let server = common::redis();
    let (a, b) = (instance(&server).await, instance(&server).await);
    let calls = Calls::default();
    a.get_or_load(&1, loader(&calls, 1)).await.unwrap();
    // B reads it too (its L1 holds version 1).
    assert_eq!(b.get(&1).await.unwrap().unwrap().version, 1);
    assert_eq!(calls.get(), 1);

    // Every caller on both instances calls version 1 stale: one load replaces it.
    let stale: Arc<dyn Fn(&Doc) -> bool + Send + Sync> = Arc::new(|d: &Doc| d.version < 2);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (calls, stale) = (calls.clone(), stale.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load_checked(&1, &LoadOptions::default(), &*stale, loader(&calls, 2))
                .await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert_eq!(
            got.value.as_ref().unwrap().version,
            2,
            "source {:?}, stale {}, calls {}",
            got.source,
            got.stale,
            calls.get()
        );
    }
    assert_eq!(calls.get(), 2, "one load for 40 callers over two instances");

    // A value the judge accepts answers without a load, from L1.
    let got = a
        .get_or_load_checked(&1, &LoadOptions::default(), &*stale, loader(&calls, 3))
        .await
        .unwrap();
    assert_eq!(got.value.unwrap().version, 2);
    assert_eq!(got.source, herdwise::Source::L1);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_replacement_is_an_error_not_the_judged_value() {
    let server = common::redis();
    let cache = instance(&server).await;
    let calls = Calls::default();
    cache.get_or_load(&7, loader(&calls, 1)).await.unwrap();
    let stale = |d: &Doc| d.version < 2;
    let failing = |_: &u64| async { Err::<Option<Doc>, _>(OriginError("down".into())) };
    let got = cache
        .get_or_load_checked(&7, &LoadOptions::default(), &stale, failing)
        .await;
    assert!(
        got.is_err(),
        "the judge decides about stale values: {got:?}"
    );
    // Still cached as it was.
    assert_eq!(cache.get(&7).await.unwrap().unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_lives_its_own_ttl() {
    let server = common::redis();
    let cache = instance(&server).await;
    let calls = Calls::default();
    let short = |calls: &Calls| {
        let calls = calls.clone();
        move |_: &u64| async move {
            calls.hit();
            Ok::<_, OriginError>(Some(Doc {
                version: 1,
                ttl_ms: Some(100),
            }))
        }
    };
    cache.get_or_load(&1, short(&calls)).await.unwrap();
    cache.get_or_load(&2, loader(&calls, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    cache.get_or_load(&1, short(&calls)).await.unwrap();
    cache.get_or_load(&2, loader(&calls, 1)).await.unwrap();
    assert_eq!(
        calls.get(),
        3,
        "key 1 (100 ms of its own) loaded again, key 2 (the cache's 300 s) not"
    );
}

/// A value's own TTL never outlives the cache's: the tag marks and retried invalidations that
/// must outlive every entry are sized from the cache's TTL (a review finding: a purged entry
/// with a day-long TTL of its own came back once its tag's mark expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_values_own_ttl_is_capped_at_the_caches() {
    let server = common::redis();
    let cache: Cache<u64, Doc> = Cache::builder("checked-cap")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(150))
        .no_ttl_jitter()
        .ttl_from(|d: &Doc| d.ttl_ms.map(Duration::from_millis))
        .build()
        .unwrap();
    let calls = Calls::default();
    let long = |calls: &Calls| {
        let calls = calls.clone();
        move |_: &u64| async move {
            calls.hit();
            Ok::<_, OriginError>(Some(Doc {
                version: 1,
                ttl_ms: Some(3_600_000),
            }))
        }
    };
    cache.get_or_load(&1, long(&calls)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    cache.get_or_load(&1, long(&calls)).await.unwrap();
    assert_eq!(
        calls.get(),
        2,
        "expired with the cache's 150 ms, not its own hour"
    );
}

/// A judged read that joins a load in flight in this process (led by a plain read, with no
/// judge) does not take that load's value when its judge calls it stale: it loads itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judged_read_does_not_take_a_plain_leaders_stale_value() {
    let server = common::redis();
    let cache = instance(&server).await;
    let calls = Calls::default();
    let leader = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move { cache.get_or_load(&9, loader(&calls, 1)).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let stale = |d: &Doc| d.version < 2;
    let got = cache
        .get_or_load_checked(&9, &LoadOptions::default(), &stale, loader(&calls, 2))
        .await
        .unwrap();
    assert_eq!(got.value.unwrap().version, 2);
    assert_eq!(leader.await.unwrap().unwrap().unwrap().version, 1);
}
