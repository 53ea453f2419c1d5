//! Warming against a real Redis: bounded concurrency, hottest keys first, jitter, keys already
//! cached (here or by another instance) not loaded again, and the readiness signal.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::OriginError;
use herdwise::{Cache, WarmOptions};

async fn cache(server: &herdwise_testkit::RedisServer, ns: &str) -> Cache<u64, String> {
    Cache::builder(ns)
        .store(common::store(server).await)
        .build()
        .unwrap()
}

/// A loader that records the order of its calls and how many run at once.
#[derive(Clone, Default)]
struct Origin {
    order: Arc<Mutex<Vec<(u64, Instant)>>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Origin {
    fn load(
        &self,
        delay: Duration,
    ) -> impl Fn(&u64) -> futures::future::BoxFuture<'static, Result<Option<String>, OriginError>> + '_
    {
        move |k: &u64| {
            let (k, this) = (*k, self.clone());
            Box::pin(async move {
                this.order.lock().unwrap().push((k, Instant::now()));
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                this.running.fetch_sub(1, Ordering::SeqCst);
                if k >= 1_000 {
                    return Err(OriginError(format!("no {k}")));
                }
                Ok(Some(format!("v{k}")))
            })
        }
    }

    fn keys(&self) -> Vec<u64> {
        self.order.lock().unwrap().iter().map(|(k, _)| *k).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_is_bounded_and_skips_what_is_cached_anywhere() {
    let server = common::redis();
    let a = cache(&server, "warm").await;
    let origin = Origin::default();
    assert!(!a.is_warm());
    let opts = WarmOptions::default().concurrency(3);
    let report = a
        .warm_with_opts(0..30, origin.load(Duration::from_millis(20)), opts)
        .await
        .unwrap();
    assert_eq!((report.loaded, report.cached, report.failed), (30, 0, 0));
    assert_eq!(
        origin.most.load(Ordering::SeqCst),
        3,
        "3 at a time, no more"
    );
    assert!(a.is_warm());

    // Cached here: nothing loads.
    let again = a
        .warm_with(0..30, origin.load(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(again.cached, 30);
    // Cached by another instance (L2): nothing loads either.
    let b = cache(&server, "warm").await;
    let from_l2 = b
        .warm_with(0..30, origin.load(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(from_l2.cached, 30);
    assert_eq!(origin.keys().len(), 30, "no key was loaded twice");
    assert_eq!(
        b.get(&7).await.unwrap().as_deref().map(String::as_str),
        Some("v7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hottest_keys_are_warmed_first() {
    let server = common::redis();
    let cache = cache(&server, "warm-order").await;
    // Reads make keys 102, 101, 100 the hottest, in that order; then they are invalidated, so
    // the warm has to load them.
    for (key, reads) in [(100u64, 20_000), (101, 40_000), (102, 80_000)] {
        cache.set(&key, "x".to_string()).await.unwrap();
        for _ in 0..reads {
            cache.get(&key).await.unwrap();
        }
        cache.invalidate(&key).await.unwrap();
    }
    let origin = Origin::default();
    let keys = (0..10).chain([100, 101, 102]);
    let opts = WarmOptions::default().concurrency(1);
    cache
        .warm_with_opts(keys, origin.load(Duration::ZERO), opts)
        .await
        .unwrap();
    let order = origin.keys();
    assert_eq!(&order[..3], &[102, 101, 100], "hottest first: {order:?}");
    assert_eq!(
        &order[3..],
        &(0..10).collect::<Vec<_>>()[..],
        "then the caller's order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_the_loads_and_failures_keep_it_unready() {
    let server = common::redis();
    let cache = cache(&server, "warm-jitter").await;
    let origin = Origin::default();
    let opts = WarmOptions::default()
        .concurrency(100)
        .jitter(Duration::from_millis(300));
    let started = Instant::now();
    cache
        .warm_with_opts(0..20, origin.load(Duration::ZERO), opts)
        .await
        .unwrap();
    let times: Vec<Duration> = origin
        .order
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.duration_since(started))
        .collect();
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        *last - *first >= Duration::from_millis(100),
        "spread {first:?}..{last:?}"
    );

    // Mostly failing: reported, not cached, and not warm.
    let failing = Cache::<u64, String>::builder("warm-fail")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let report = failing
        .warm_with(
            (998..1_003).collect::<Vec<_>>(),
            origin.load(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!((report.loaded, report.failed), (2, 3));
    assert!(!failing.is_warm());
}
