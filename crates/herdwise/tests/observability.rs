//! What an operator sees: every read counted once by how it ended, latencies in histograms,
//! remote calls by operation and outcome, and a metric table that matches what is emitted.

mod common;

use std::time::Duration;

use common::{counter, histogram, OriginError};
use herdwise::{metrics as m, Cache, LoadOptions, MemoryStore, Source};

fn gets(metrics: &common::Metrics, result: &str) -> u64 {
    counter(metrics, m::GETS, &[("result", result)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_is_counted_once_by_how_it_ended() {
    let store = MemoryStore::new();
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("obs")
            .store(store.clone())
            .negative_ttl(Some(Duration::from_secs(60)))
    });
    let found = |k: &u64| {
        let v = (*k < 100).then(|| format!("v{k}"));
        async move { Ok::<_, OriginError>(v) }
    };
    // A miss loads; the next reads of it are L1 hits.
    cache.get_or_load(&1, found).await.unwrap();
    for _ in 0..200 {
        cache.get_or_load(&1, found).await.unwrap();
    }
    // Not at the origin: a miss, then a negative answer.
    cache.get_or_load(&500, found).await.unwrap();
    cache.get_or_load(&500, found).await.unwrap();
    // `get` of a key nobody cached: a miss (it never loads).
    assert_eq!(cache.get(&2).await.unwrap(), None);
    // A loader error with nothing stale to fall back on.
    let failing = |_: &u64| async { Err::<Option<String>, _>(OriginError("down".into())) };
    assert!(cache.get_or_load(&3, failing).await.is_err());
    assert_eq!(gets(&metrics, "miss"), 3);
    assert_eq!(gets(&metrics, "l1_hit"), 200);
    assert_eq!(gets(&metrics, "negative"), 1);
    assert_eq!(gets(&metrics, "error"), 1);
    assert_eq!(counter(&metrics, m::GETS, &[]), 205, "every read once");
    // The loads: two that returned (one "not at the origin"), one error.
    assert_eq!(counter(&metrics, m::LOADS, &[("result", "success")]), 2);
    assert_eq!(counter(&metrics, m::LOADS, &[("result", "error")]), 1);
    assert_eq!(
        histogram(&metrics, m::LOAD_DURATION, &[("result", "success")]).len(),
        2
    );

    // Another instance on the same L2: an L2 hit, with its source told.
    let (other, other_metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("obs").store(store.clone()));
    let fetched = other
        .get_or_load_with(&1, &LoadOptions::default(), found)
        .await
        .unwrap();
    assert_eq!(fetched.source, Source::L2);
    let fetched = other
        .get_or_load_with(&1, &LoadOptions::default(), found)
        .await
        .unwrap();
    assert_eq!(fetched.source, Source::L1);
    assert_eq!(gets(&other_metrics, "l2_hit"), 1);
    assert_eq!(gets(&other_metrics, "l1_hit"), 1);
    assert_eq!(counter(&other_metrics, m::LOADS, &[]), 0);

    // Latency: every read past L1 is timed; one L1 hit in 64 is.
    let timed = |result| histogram(&metrics, m::GET_DURATION, &[("result", result)]);
    assert_eq!(timed("miss").len(), 3);
    assert_eq!(timed("error").len(), 1);
    let sampled = timed("l1_hit").len();
    assert!((2..=4).contains(&sampled), "{sampled} of 200 L1 hits timed");
    assert!(timed("miss").iter().all(|s| *s >= 0.0 && *s < 5.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_count_as_stale_with_their_reason() {
    let store = MemoryStore::new();
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("obs-stale")
            .store(store.clone())
            .ttl(Duration::from_millis(50))
            .stale_if_error(Duration::from_secs(60))
    });
    cache
        .get_or_load(&1, |_| async {
            Ok::<_, OriginError>(Some("v".to_string()))
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let fetched = cache
        .get_or_load_with(&1, &LoadOptions::default(), |_| async {
            Err::<Option<String>, _>(OriginError("down".into()))
        })
        .await
        .unwrap();
    assert!(fetched.stale);
    assert_eq!(gets(&metrics, "stale"), 1);
    assert_eq!(
        counter(&metrics, m::STALE_SERVED, &[("reason", "error")]),
        1
    );
    assert_eq!(counter(&metrics, m::LOADS, &[("result", "error")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_calls_are_counted_and_timed_by_operation() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("obs-l2").store(store.clone()));
    cache.set(&1, "one".to_string()).await.unwrap();
    let (reader, reader_metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("obs-l2").store(store.clone()));
    assert!(reader.get(&1).await.unwrap().is_some());
    cache.invalidate(&1).await.unwrap();
    let ok = |metrics: &common::Metrics, op| {
        counter(metrics, m::L2_CALLS, &[("op", op), ("outcome", "ok")])
    };
    assert!(ok(&metrics, "set") >= 1);
    assert!(ok(&metrics, "delete") >= 1);
    assert_eq!(
        ok(&metrics, "publish"),
        0,
        "the write's and the invalidation's announcements went with them (one call each)"
    );
    assert!(ok(&reader_metrics, "get") >= 1);
    assert_eq!(
        counter(&metrics, m::L2_CALLS, &[("outcome", "error")])
            + counter(&metrics, m::L2_CALLS, &[("outcome", "timeout")]),
        0
    );
    let timed = histogram(&reader_metrics, m::L2_CALL_DURATION, &[("op", "get")]);
    assert!(!timed.is_empty() && timed.iter().all(|s| *s > 0.0 && *s < 1.0));
    // A dead Redis: calls fail and are counted as such.
    drop(server);
    assert_eq!(reader.get(&2).await.unwrap(), None);
    assert!(
        counter(&reader_metrics, m::L2_CALLS, &[("outcome", "error")])
            + counter(&reader_metrics, m::L2_CALLS, &[("outcome", "timeout")])
            >= 1
    );
}

/// The table in `metrics`' rustdoc and the README's list every metric, and a cache registers
/// every one of them (no name in the table that the code does not emit, none emitted that the
/// table does not explain).
#[test]
fn the_metric_table_is_what_a_cache_registers() {
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("obs-table")
            .store(MemoryStore::new())
            .hot_keys(4)
    });
    let registered = common::names(&metrics);
    let all: std::collections::BTreeSet<String> = m::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(registered, all, "registered at build vs metrics::ALL");
    let table_names = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| {
                l.trim_start_matches("//!")
                    .trim()
                    .strip_prefix("| `herdwise_")
            })
            .filter_map(|rest| rest.split('`').next())
            .map(|name| format!("herdwise_{name}"))
            .collect()
    };
    let source = include_str!("../src/metrics.rs");
    assert_eq!(
        table_names(source),
        all,
        "the rustdoc table vs metrics::ALL"
    );
    let readme = include_str!("../../../README.md");
    assert_eq!(
        table_names(readme),
        all,
        "the README's table vs metrics::ALL"
    );
    drop(cache);
}

/// Every invalidation carries its send time: the receiving instance records the delivery lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_lag_is_measured_on_arrival() {
    let store = MemoryStore::new();
    let writer = Cache::<u64, String>::builder("lag")
        .store(store.clone())
        .build()
        .unwrap();
    let (reader, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("lag").store(store.clone()));
    writer.set(&1, "a".to_string()).await.unwrap();
    assert!(reader.get(&1).await.unwrap().is_some());
    for i in 0..5 {
        writer.set(&1, format!("v{i}")).await.unwrap();
    }
    writer.invalidate_tag("t").await.unwrap();
    let arrived = common::eventually(Duration::from_secs(3), async || {
        counter(&metrics, m::BACKPLANE_RECEIVED, &[]) >= 6
    })
    .await;
    assert!(arrived, "the reader heard the writer");
    let lags = histogram(&metrics, m::BACKPLANE_LAG, &[]);
    assert!(lags.len() >= 6, "{lags:?}");
    assert!(lags.iter().all(|l| (0.0..1.0).contains(l)), "{lags:?}");
}

/// A read dropped past L1 (the caller's own timeout) is counted and timed as `cancelled`, so the
/// slowest reads do not vanish from the latencies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_dropped_by_its_caller_is_counted_as_cancelled() {
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("obs-cancel").store(MemoryStore::new())
    });
    let slow = |_: &u64| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, OriginError>(Some("late".to_string()))
    };
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), cache.get_or_load(&1, slow)).await;
    assert!(gave_up.is_err());
    assert_eq!(gets(&metrics, "cancelled"), 1);
    assert_eq!(counter(&metrics, m::GETS, &[]), 1, "counted once");
    let timed = histogram(&metrics, m::GET_DURATION, &[("result", "cancelled")]);
    assert_eq!(timed.len(), 1);
    // Timed from where it left L1 (just after the caller's 50 ms timeout began).
    assert!(timed[0] >= 0.04, "{timed:?}");
}
