//! Write-through and write-around against real Redis: origin first, then the cache, with the
//! partial failures handled (origin fails: nothing new cached, the key invalidated; cache fails:
//! invalidation retried).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, Cache, Error, WriteOutcome};
use parking_lot::Mutex;

async fn cache(server: &herdwise_testkit::RedisServer) -> Cache<u64, String> {
    Cache::builder("writes")
        .store(common::store(server).await)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_through_write_around_clears_the_negative_entry() {
    let server = common::redis();
    let cache = cache(&server).await;
    let db: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let read = |db: Arc<Mutex<Option<String>>>| {
        move |_: &u64| async move { Ok::<_, OriginError>(db.lock().clone()) }
    };
    assert_eq!(cache.get_or_load(&1, read(db.clone())).await.unwrap(), None);
    // the negative entry answers now
    *db.lock() = Some("created".to_string());
    assert_eq!(cache.get_or_load(&1, read(db.clone())).await.unwrap(), None);
    // ... until the create goes through write-around
    let d = db.clone();
    cache
        .write_around(&1, || async move {
            *d.lock() = Some("created".to_string());
            Ok::<_, OriginError>(())
        })
        .await
        .unwrap();
    let got = cache.get_or_load(&1, read(db.clone())).await.unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("created"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_is_retried_until_redis_answers() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("writes").store(store.clone()));
    cache.set(&1, "old".to_string()).await.unwrap();

    server.pause().unwrap();
    let written = cache
        .write_around(&1, || async { Ok::<_, OriginError>("new row") })
        .await
        .unwrap();
    assert_eq!(written, "new row", "the origin write's result comes back");
    assert_eq!(
        cache.get(&1).await.unwrap(),
        None,
        "this instance's L1 is invalidated at once"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume().unwrap();

    let reader = self::cache(&server).await;
    let gone = common::eventually(Duration::from_secs(5), async || {
        reader.get(&1).await.unwrap().is_none()
    })
    .await;
    assert!(
        gone,
        "the retried invalidation removed the old value from L2"
    );
    assert!(counter(&metrics, m::INVALIDATION_RETRIES, &[("outcome", "queued")]) >= 1);
    // (A timed-out UNLINK may still run when Redis resumes; the retry completes regardless.)
    let retried = common::eventually(Duration::from_secs(5), async || {
        counter(
            &metrics,
            m::INVALIDATION_RETRIES,
            &[("outcome", "succeeded")],
        ) >= 1
    })
    .await;
    assert!(retried, "the queued retry completed");
    assert_eq!(counter(&metrics, m::INVALIDATIONS_DEAD_LETTERED, &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_caches_only_what_the_origin_accepted() {
    let server = common::redis();
    let cache = cache(&server).await;
    cache.set(&1, "old".to_string()).await.unwrap();
    // origin refuses: the new value is not cached, and the key is invalidated (an origin
    // write that failed may still have committed, so the old value is not trusted either)
    let failed = cache
        .write_through(&1, "new".to_string(), |_| async {
            Err::<Option<u64>, _>(OriginError("constraint violated".into()))
        })
        .await;
    assert!(matches!(failed, Err(Error::OriginWrite(_))));
    assert_ne!(
        cache.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new")
    );
    let invalidated = common::eventually(Duration::from_secs(5), async || {
        cache.get(&1).await.unwrap().is_none()
    })
    .await;
    assert!(invalidated, "a failed origin write invalidates the key");
    // origin accepts with a version: cached, and an older versioned write cannot replace it
    let outcome = cache
        .write_through(&1, "new".to_string(), |_| async {
            Ok::<_, OriginError>(Some(5))
        })
        .await
        .unwrap();
    assert_eq!(outcome.cached.unwrap(), WriteOutcome::Stored);
    assert_eq!(
        cache
            .set_versioned(&1, "older".to_string(), 4)
            .await
            .unwrap(),
        WriteOutcome::RefusedOlder
    );
    let reader = self::cache(&server).await;
    assert_eq!(
        reader.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_refuses_a_concurrent_older_fill() {
    let server = common::redis();
    let (a, b) = (cache(&server).await, cache(&server).await);
    let calls = Calls::default();
    let slow_read = {
        let calls = calls.clone();
        tokio::spawn(async move {
            b.get_or_load(&2, |_| async move {
                calls.hit();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, OriginError>(Some("read before the write".to_string()))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.write_through(&2, "written".to_string(), |_| async {
        Ok::<_, OriginError>(None)
    })
    .await
    .unwrap();
    slow_read.await.unwrap().unwrap();
    assert_eq!(calls.get(), 1);
    let reader = cache(&server).await;
    assert_eq!(
        reader.get(&2).await.unwrap().as_deref().map(String::as_str),
        Some("written")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_with_l2_down_invalidates_instead_of_leaving_the_old_value() {
    let server = common::redis();
    let cache = cache(&server).await;
    cache.set(&3, "old".to_string()).await.unwrap();
    server.pause().unwrap();
    let outcome = cache
        .write_through(&3, "new".to_string(), |_| async {
            Ok::<_, OriginError>(None)
        })
        .await
        .unwrap();
    assert_eq!(outcome.cached.unwrap(), WriteOutcome::LocalOnly);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.resume().unwrap();
    let reader = self::cache(&server).await;
    let not_old = common::eventually(Duration::from_secs(5), async || {
        reader.get(&3).await.unwrap().as_deref().map(String::as_str) != Some("old")
    })
    .await;
    assert!(
        not_old,
        "L2 must not keep serving the value the origin replaced"
    );
}

/// Values with fields the database decides (ids, timestamps at its precision): the origin
/// write returns the row, and that — not what the caller built — is what every instance reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_returning_caches_what_the_origin_returned() {
    let server = common::redis();
    let (a, b) = (cache(&server).await, cache(&server).await);
    a.set(&4, "old".to_string()).await.unwrap();
    assert_eq!(
        b.get(&4).await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    let written = a
        .write_through_returning(&4, || async {
            // INSERT ... RETURNING: the row as stored, with its version
            Ok::<_, anyhow::Error>(("id=4 at 12:00:00.123456".to_string(), Some(9)))
        })
        .await
        .unwrap();
    assert!(written.is_cached());
    assert_eq!(written.version, Some(9));
    assert_eq!(&*written.value, "id=4 at 12:00:00.123456");
    let seen = common::eventually(Duration::from_secs(5), async || {
        b.get(&4).await.unwrap().as_deref().map(String::as_str) == Some("id=4 at 12:00:00.123456")
    })
    .await;
    assert!(seen, "the other instance reads the origin's value");
    // Versioned: an older fill or write cannot replace it.
    assert_eq!(
        b.set_versioned(&4, "older".to_string(), 8).await.unwrap(),
        WriteOutcome::RefusedOlder
    );
}

/// The origin write committed, but the value cannot be cached (too large): the call says the
/// write happened (`Ok`) and why the cache does not hold the value, and no instance serves the
/// old value — before, the caller got an error after the commit and could not tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_the_cache_cannot_hold_is_reported_not_failed() {
    let server = common::redis();
    let build = |store| {
        Cache::<u64, String>::builder("writes-big")
            .store(store)
            .max_value_bytes(256)
            .build()
            .unwrap()
    };
    let a = build(common::store(&server).await);
    let b = build(common::store(&server).await);
    a.set(&5, "old".to_string()).await.unwrap();
    assert_eq!(
        b.get(&5).await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    let commits = Calls::default();
    let written = {
        let commits = commits.clone();
        a.write_through(&5, "x".repeat(10_000), |_| async move {
            commits.hit();
            Ok::<_, OriginError>(None)
        })
        .await
        .expect("the origin write happened: not an error")
    };
    assert_eq!(commits.get(), 1);
    assert!(!written.is_cached());
    assert!(
        matches!(written.cached, Err(Error::ValueTooLarge { .. })),
        "{:?}",
        written.cached
    );
    assert_eq!(written.value.len(), 10_000);
    assert_eq!(a.get(&5).await.unwrap(), None, "not the old value");
    let dropped = common::eventually(Duration::from_secs(5), async || {
        b.get(&5).await.unwrap().is_none()
    })
    .await;
    assert!(dropped, "nor on the other instance");
}

/// Many writes in flight at once, each of a key this instance holds in L1: none of them may
/// leave its old value served, whatever the others do meanwhile (an L1 insert withdrawn
/// because another key's write or invalidation shared its epoch stripe must not leave the old
/// value behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_never_leave_their_old_values_in_l1() {
    use futures::StreamExt;
    let server = common::redis();
    // A busy Redis on 2 cores must not open the breaker: this test is about L1.
    let cache: Cache<u64, String> = Cache::builder("writes-concurrent")
        .store(common::store(&server).await)
        .no_circuit_breaker()
        .store_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    const KEYS: u64 = 3_000;
    for k in 0..KEYS {
        cache.set(&k, format!("old{k}")).await.unwrap();
    }
    // 256 in flight: on 1 024 stripes, a quarter of the writes share theirs with another.
    let outcomes: Vec<WriteOutcome> = futures::stream::iter(0..KEYS)
        .map(|k| {
            let cache = cache.clone();
            async move { cache.set(&k, format!("new{k}")).await.unwrap() }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    for outcome in outcomes {
        assert_eq!(outcome, WriteOutcome::Stored);
    }
    let mut stale = Vec::new();
    for k in 0..KEYS {
        let got = cache.get(&k).await.unwrap();
        if got.as_deref().map(String::as_str) != Some(&*format!("new{k}")) {
            stale.push((k, got));
        }
    }
    assert!(
        stale.is_empty(),
        "{} keys kept an old value: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

/// A `set` dropped while its store call is out (the request timed out) may still be applied
/// by the store: this instance must not keep serving the value from before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_set_never_leaves_the_old_value_in_l1() {
    let server = common::redis();
    let cache = cache(&server).await;
    // Listening first: an L1 copy made before the instance hears invalidations is checked
    // against L2 once, which would hide what this test looks for.
    cache.get(&0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cache.set(&1, "old".to_string()).await.unwrap();
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    server.pause().unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(30), cache.set(&1, "new".to_string())).await;
    assert!(
        cancelled.is_err(),
        "the set should still be waiting on the frozen Redis"
    );
    server.resume().unwrap();
    // The SET was in the socket: Redis applies it now. Whatever L2 ends with (the new value,
    // or nothing after the invalidation the cancelled write leaves), never "old".
    for _ in 0..50 {
        let got = cache.get(&1).await.unwrap();
        assert_ne!(
            got.as_deref().map(String::as_str),
            Some("old"),
            "served the overwritten value"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A load that fails while this instance writes the key serves its stale fallback to its own
/// callers (stale-if-error), but must not put that fallback back into L1 over the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_never_puts_its_stale_fallback_over_a_newer_write() {
    // Without leases the fill is fenced, not leased: the path where only L1's epoch can
    // keep the fallback out.
    let cache: Cache<u64, String> = Cache::builder("writes-fail-safe")
        .no_leases()
        .ttl(Duration::from_millis(100))
        .no_ttl_jitter()
        .stale_if_error(Duration::from_secs(60))
        .build()
        .unwrap();
    cache.set(&1, "old".to_string()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // stale now
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let loading = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load(&1, move |_| async move {
                    let _ = started_tx.send(());
                    let _ = go_rx.await;
                    Err::<Option<String>, _>(OriginError("down".into()))
                })
                .await
        }
    });
    started_rx.await.unwrap();
    cache.set(&1, "new".to_string()).await.unwrap();
    go_tx.send(()).unwrap();
    let served = loading.await.unwrap().unwrap();
    assert_eq!(
        served.as_deref().map(String::as_str),
        Some("old"),
        "stale-if-error"
    );
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new"),
        "the failed load's fallback covered the newer write"
    );
}

/// Two writes of one key at once from one instance: L2 applies them in some order this
/// instance cannot see; its L1 must then not keep the one L2 did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_key_leave_l1_as_l2() {
    let server = common::redis();
    let build = |store, l1: u64| {
        Cache::<u64, String>::builder("writes-same-key")
            .store(store)
            .l1_max_bytes(l1)
            .no_hot_key_shield()
            .no_circuit_breaker()
            .store_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let cache = build(common::store(&server).await, 1 << 20);
    let l2 = build(common::store(&server).await, 0); // reads L2 only
    let mut differ = 0;
    for round in 0..300u64 {
        let (a, b) = (cache.clone(), cache.clone());
        let one = tokio::spawn(async move { a.set(&round, format!("a{round}")).await.unwrap() });
        let two = tokio::spawn(async move { b.set(&round, format!("b{round}")).await.unwrap() });
        one.await.unwrap();
        two.await.unwrap();
        let (here, there) = (
            cache.get(&round).await.unwrap(),
            l2.get(&round).await.unwrap(),
        );
        if here != there {
            differ += 1;
        }
    }
    assert_eq!(
        differ, 0,
        "L1 kept the value L2 did not in {differ} of 300 rounds"
    );
}

/// An origin write that fails (it may have committed) leaves the key invalidated: this
/// instance stops serving the old value at once, even while Redis cannot take the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_origin_write_drops_the_old_value_from_l1_at_once() {
    let server = common::redis();
    // No breaker: calls failed in the first round must not open it for the second's `set`.
    let cache: Cache<u64, String> = Cache::builder("writes-failed-origin")
        .store(common::store(&server).await)
        .no_circuit_breaker()
        .build()
        .unwrap();
    cache.get(&0).await.unwrap(); // listening first (see a_cancelled_set_...)
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (key, around) in [(1u64, true), (2, false)] {
        cache.set(&key, "old".to_string()).await.unwrap();
        assert_eq!(
            cache
                .get(&key)
                .await
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("old")
        );
        server.pause().unwrap();
        let failed = if around {
            cache
                .write_around(&key, || async {
                    Err::<(), _>(OriginError("timeout".into()))
                })
                .await
                .is_err()
        } else {
            cache
                .write_through(&key, "new".to_string(), |_| async {
                    Err::<Option<u64>, _>(OriginError("timeout".into()))
                })
                .await
                .is_err()
        };
        assert!(failed);
        let got = cache.get(&key).await;
        server.resume().unwrap();
        assert!(
            !matches!(
                got.as_ref().map(|v| v.as_deref().map(String::as_str)),
                Ok(Some("old"))
            ),
            "write_{}: served the value the failed write meant to replace",
            if around { "around" } else { "through" }
        );
    }
}
