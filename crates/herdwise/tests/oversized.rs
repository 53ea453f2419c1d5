//! A loaded value too large to cache is returned to its callers, counted, and logged — at
//! most once a second with the count of repeats it stands for, not once per read (one test of
//! a service logged 1,533 such warnings among 1,547 lines) — and kept in L1 only, briefly
//! (`oversized_in_l1`), so that an oversized key does not send every read to the origin.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{metrics as m, Cache, LoadOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn an_oversized_value_is_served_counted_and_its_warning_throttled() {
    let captured = common::Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    tracing::subscriber::with_default(subscriber, || {
        let cache: Cache<u64, String> = metrics::with_local_recorder(&recorder, || {
            Cache::builder("oversized")
                .max_value_bytes(1_024)
                // Not kept in L1 either: every read loads, and each would warn.
                .oversized_in_l1(None)
                .build()
                .unwrap()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..200 {
                let got = cache
                    .get_or_load(&1, |_| async {
                        Ok::<_, std::io::Error>(Some("x".repeat(100_000)))
                    })
                    .await
                    .unwrap();
                assert_eq!(got.map(|v| v.len()), Some(100_000), "still served");
            }
        });
    });
    let warned = captured.count("loaded value not cached");
    assert!(
        (1..=2).contains(&warned),
        "200 reads of an oversized value logged {warned} warnings"
    );
    let too_large: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| key.key().name() == m::UNCACHEABLE_VALUES)
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(too_large, 200, "every one counted");
}

/// Waits until `cache` has no `key` in any tier (a `get`, which never loads).
async fn dropped(cache: &Cache<u64, String>, key: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if cache.get(&key).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_value_is_kept_in_l1_only_briefly_and_invalidations_reach_it() {
    let server = common::redis();
    let build = |store| {
        Cache::<u64, String>::builder("oversized-l1")
            .store(store)
            .max_value_bytes(1_024)
            .oversized_in_l1(Some(Duration::from_millis(600)))
            .build()
            .unwrap()
    };
    let a = build(common::store(&server).await);
    let b = build(common::store(&server).await);
    let loads = Arc::new(AtomicUsize::new(0));
    let read = |cache: &Cache<u64, String>, key: u64| {
        let (cache, loads) = (cache.clone(), loads.clone());
        async move {
            let opts = LoadOptions::default().tags(["reports"]);
            cache
                .get_or_load_with(&key, &opts, move |_| {
                    loads.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, std::io::Error>(Some("x".repeat(5_000))) }
                })
                .await
                .unwrap()
                .value
                .map(|v| v.len())
        }
    };
    let loaded = || loads.load(Ordering::SeqCst);

    // Both listening first: a copy made before an instance hears invalidations is checked
    // against L2 once, and an L1-only copy is not there (one more load, by design).
    a.get(&0).await.unwrap();
    b.get(&0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 100 reads on A: one load, not 100; B finds nothing (never in L2).
    for _ in 0..100 {
        assert_eq!(read(&a, 1).await, Some(5_000));
    }
    assert_eq!(loaded(), 1, "one load for 100 reads");
    assert_eq!(b.get(&1).await.unwrap(), None, "not written to L2");

    // An invalidation on B reaches A's L1-only copy.
    b.invalidate(&1).await.unwrap();
    assert!(
        dropped(&a, 1).await,
        "B's invalidation did not reach A's copy"
    );
    assert_eq!(read(&a, 1).await, Some(5_000));
    assert_eq!(loaded(), 2, "reloaded after the invalidation");

    // So does a tag invalidation.
    b.invalidate_tag("reports").await.unwrap();
    assert!(
        dropped(&a, 1).await,
        "the tag invalidation did not reach A's copy"
    );
    assert_eq!(read(&a, 1).await, Some(5_000));
    assert_eq!(loaded(), 3);

    // And it lives `oversized_in_l1`, then the next read loads again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.get(&1).await.unwrap(), None, "outlived oversized_in_l1");
    assert_eq!(read(&a, 1).await, Some(5_000));
    assert_eq!(loaded(), 4);
}

/// An oversized value heavier than L1's largest entry cannot be kept there either: each read
/// loads it, and the warning says why (not that it was kept).
#[test]
fn an_oversized_value_too_heavy_for_l1_says_so() {
    let captured = common::Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let loads = AtomicUsize::new(0);
    tracing::subscriber::with_default(subscriber, || {
        let cache: Cache<u64, String> = Cache::builder("oversized-heavy")
            .max_value_bytes(1_024)
            .l1_max_bytes(64 << 10) // one shard: entries up to ~62 KiB
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for size in [100_000, 100_000, 100_000, 10_000, 10_000] {
                let got = cache
                    .get_or_load(&size, |_| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, std::io::Error>(Some("x".repeat(size as usize))) }
                    })
                    .await
                    .unwrap();
                assert_eq!(got.map(|v| v.len() as u64), Some(size));
            }
        });
    });
    assert_eq!(
        loads.load(Ordering::SeqCst),
        4,
        "10 kB kept once; 100 kB loaded each time"
    );
    assert_eq!(
        captured.count("and for L1"),
        1,
        "the too-heavy warning, once"
    );
}

/// A load that started before this instance's own write of the key, and finished after it,
/// must not put its (older) value over the write's in L1: the write comes after the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_load_never_covers_a_newer_write_of_the_same_instance() {
    let cache: Cache<u64, String> = Cache::builder("oversized-race")
        .max_value_bytes(1_024)
        .build()
        .unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let loading = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load(&1, move |_| async move {
                    let _ = started_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, std::io::Error>(Some("x".repeat(5_000)))
                })
                .await
                .unwrap()
                .map(|v| v.len())
        }
    });
    started_rx.await.unwrap();
    cache.set(&1, "new".to_string()).await.unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(
        loading.await.unwrap(),
        Some(5_000),
        "its callers get the load"
    );
    assert_eq!(
        cache.get(&1).await.unwrap().map(|v| if v.len() > 8 {
            format!("{} bytes", v.len())
        } else {
            v.to_string()
        }),
        Some("new".to_string()),
        "the older load covered the newer write in L1"
    );
}

#[test]
fn oversized_in_l1_is_checked_at_build() {
    let zero = Cache::<u64, String>::builder("oversized-config")
        .oversized_in_l1(Some(Duration::ZERO))
        .build()
        .err();
    match zero {
        Some(herdwise::Error::Config(why)) => assert!(why.contains("oversized_in_l1"), "{why}"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
    let long = Cache::<u64, String>::builder("oversized-config")
        .oversized_in_l1(Some(Duration::from_secs(400 * 365 * 24 * 3600)))
        .build()
        .err();
    assert!(matches!(long, Some(herdwise::Error::Config(why)) if why.contains("oversized_in_l1")));
}
