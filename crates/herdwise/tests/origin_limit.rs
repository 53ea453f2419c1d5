//! Origin protection with a real Redis: at most N loader calls at once; beyond that, stale data,
//! a bounded wait, or `Error::Overloaded` — never an unbounded queue in front of the database.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{counter, OriginError};
use herdwise::{metrics as m, Cache, Error, LoadOptions};

/// A slow origin that records how many calls ran at once.
#[derive(Clone, Default)]
struct Origin {
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    async fn load(&self, key: u64, took: Duration) -> Result<Option<String>, OriginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(took).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(Some(format!("v{key}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_past_the_limit_are_shed_with_overloaded() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("ol")
            .store(store.clone())
            .origin_concurrency_limit(2, Duration::from_millis(50))
    });
    let origin = Origin::default();
    let mut tasks = Vec::new();
    for key in 0..10u64 {
        let (cache, origin) = (cache.clone(), origin.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = cache
                .get_or_load(&key, |k| origin.load(*k, Duration::from_millis(300)))
                .await;
            (key, r, t.elapsed())
        }));
    }
    let mut served = Vec::new();
    for task in tasks {
        let (key, result, took) = task.await.unwrap();
        match result {
            Ok(Some(_)) => served.push(key),
            Err(Error::Overloaded { limit: 2, .. }) => {
                assert!(
                    took < Duration::from_millis(250),
                    "shed after the wait, not the load: {took:?}"
                );
                assert_eq!(
                    cache.get(&key).await.unwrap(),
                    None,
                    "nothing cached for a shed load"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(served.len(), 2, "exactly the limit got through");
    assert_eq!(
        origin.peak.load(Ordering::SeqCst),
        2,
        "the origin never saw more than the limit"
    );
    assert_eq!(
        counter(&metrics, m::ORIGIN_LIMITED, &[("outcome", "overloaded")]),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_origin_is_answered_with_stale_data_when_there_is_some() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("ol")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(100))
        .no_ttl_jitter()
        .origin_concurrency_limit(1, Duration::from_secs(5))
        .build()
        .unwrap();
    let origin = Origin::default();
    cache
        .get_or_load(&1, |k| origin.load(*k, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // key 1 is stale now
    let busy = {
        let (cache, origin) = (cache.clone(), origin.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(&2, |k| origin.load(*k, Duration::from_millis(500)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let fetched = cache
        .get_or_load_with(&1, &LoadOptions::default(), |k| {
            origin.load(*k, Duration::ZERO)
        })
        .await
        .unwrap();
    assert!(fetched.stale, "answered with the stale value");
    assert_eq!(fetched.value.as_deref().map(String::as_str), Some("v1"));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "without waiting for a slot"
    );
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        2,
        "and without calling the origin"
    );
    busy.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_wait_a_bounded_time_for_a_free_slot() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("ol")
        .store(common::store(&server).await)
        .origin_concurrency_limit(1, Duration::from_millis(800))
        .build()
        .unwrap();
    let origin = Origin::default();
    let mut tasks = Vec::new();
    for key in 0..3u64 {
        let (cache, origin) = (cache.clone(), origin.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&key, |k| origin.load(*k, Duration::from_millis(100)))
                .await
        }));
    }
    for task in tasks {
        assert!(
            task.await.unwrap().unwrap().is_some(),
            "each got a slot in time"
        );
    }
    assert_eq!(origin.peak.load(Ordering::SeqCst), 1);
    assert_eq!(cache.origin_loads_in_flight(), 0, "slots are given back");
}
