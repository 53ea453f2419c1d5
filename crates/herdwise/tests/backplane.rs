//! The invalidation backplane: writes and invalidations on one instance reach every other
//! instance's L1; lost events (gaps, lost subscriptions) clear L1 instead of leaving it stale.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{calls_of, counter, OriginError};
use herdwise::{metrics as m, Cache, MemoryStore, Store, WriteOutcome};

async fn fleet(server: &herdwise_testkit::RedisServer, n: usize) -> Vec<Cache<u64, String>> {
    let mut caches = Vec::new();
    for _ in 0..n {
        caches.push(
            Cache::builder("bp")
                .store(common::store(server).await)
                .build()
                .unwrap(),
        );
    }
    caches
}

async fn load(cache: &Cache<u64, String>, key: u64, value: &str) -> Option<String> {
    let value = value.to_string();
    cache
        .get_or_load(&key, |_| async move { Ok::<_, OriginError>(Some(value)) })
        .await
        .unwrap()
        .map(|v| v.to_string())
}

/// Polls `cache.get(key)` until it no longer returns `old`; how long that took.
async fn until_not(
    cache: &Cache<u64, String>,
    key: u64,
    old: &str,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if cache
            .get(&key)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str)
            != Some(old)
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_reaches_every_instances_l1() {
    let server = common::redis();
    let caches = fleet(&server, 3).await;
    let mut took = Vec::new();
    for key in 0..20u64 {
        for cache in &caches {
            assert_eq!(load(cache, key, "old").await.as_deref(), Some("old"));
        }
        // warm-up round: let every instance's subscription come up
        if key == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        caches[0].invalidate(&key).await.unwrap();
        for cache in &caches[1..] {
            let t = until_not(cache, key, "old", Duration::from_secs(2))
                .await
                .expect("another instance kept serving the invalidated value from L1");
            took.push(t);
        }
    }
    took.sort();
    eprintln!(
        "invalidation visible on other instances: p50 {:?}, max {:?} ({} samples)",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_replaces_other_instances_l1_copies() {
    let server = common::redis();
    let caches = fleet(&server, 2).await;
    load(&caches[0], 1, "v1").await;
    load(&caches[1], 1, "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    caches[0].set(&1, "v2".to_string()).await.unwrap();
    let seen = common::eventually(Duration::from_secs(2), async || {
        caches[1]
            .get(&1)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str)
            == Some("v2")
    })
    .await;
    assert!(
        seen,
        "the other instance must read the new value, not its L1 copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_makes_l1_recheck_on_resubscribe() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (b, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("bp").store(store.clone()));
    let a: Cache<u64, String> = Cache::builder("bp")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    load(&a, 1, "old").await;
    load(&b, 1, "old").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every subscriber connection dies (as on a network blip); A's invalidation is published
    // while B has no subscription, so B never receives it.
    let mut raw = common::raw(&server).await;
    common::kill_pubsub_clients(&mut raw).await;
    a.invalidate(&1).await.unwrap();

    let cleared = until_not(&b, 1, "old", Duration::from_secs(5)).await;
    assert!(
        cleared.is_some(),
        "B must stop serving the old value once it resubscribes"
    );
    // Demoted when the subscription was lost, and again once it is back.
    assert!(
        counter(
            &metrics,
            m::BACKPLANE_RESETS,
            &[("reason", "subscription_lost")]
        ) >= 1
    );
    let resubscribed = common::eventually(Duration::from_secs(3), async || {
        counter(&metrics, m::BACKPLANE_RESETS, &[("reason", "resubscribed")]) >= 1
    })
    .await;
    assert!(resubscribed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_makes_l1_recheck_every_entry() {
    let store = MemoryStore::new();
    let (cache, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("bp").store(store.clone()));
    for key in 0..5 {
        load(&cache, key, "v").await;
    }
    assert_eq!(cache.l1_len(), 5);
    let send = |seq: u64, key: &str| {
        let store = store.clone();
        let message = format!("abc|{seq}|k|{key}");
        async move {
            store
                .publish("herdwise:{ns:bp}:inv", Bytes::from(message))
                .await
                .unwrap()
        }
    };
    send(1, &cache.stored_key(&0).unwrap()).await;
    send(2, &cache.stored_key(&1).unwrap()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.l1_len(), 3, "in-order events drop just their keys");
    // Removed behind the cache's back (as by an event that will be lost): L1 still serves it.
    store.delete(&cache.stored_key(&3).unwrap()).await.unwrap();
    assert!(cache.get(&3).await.unwrap().is_some());
    // One sender's messages may overtake each other on the way: a late one is no loss.
    send(4, &cache.stored_key(&5).unwrap()).await;
    send(3, &cache.stored_key(&6).unwrap()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        counter(&metrics, m::BACKPLANE_RESETS, &[("reason", "gap")]),
        0,
        "a message that arrives out of order, in time, is not a loss"
    );
    assert!(cache.get(&3).await.unwrap().is_some());
    send(6, &cache.stored_key(&2).unwrap()).await; // 5 was lost
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        cache.get(&3).await.unwrap(),
        None,
        "after a gap, every L1 entry is checked against L2 before it is served"
    );
    assert!(
        cache.get(&4).await.unwrap().is_some(),
        "and L2's copy serves"
    );
    assert_eq!(
        counter(&metrics, m::BACKPLANE_RESETS, &[("reason", "gap")]),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_the_namespace_everywhere_in_constant_work() {
    let server = common::redis();
    let caches = fleet(&server, 2).await;
    for key in 0..200u64 {
        load(&caches[0], key, "old").await;
        load(&caches[1], key, "old").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut raw = common::raw(&server).await;
    let deletes_before = calls_of(&mut raw, "unlink").await + calls_of(&mut raw, "del").await;

    caches[0].clear().await.unwrap();

    let deletes_after = calls_of(&mut raw, "unlink").await + calls_of(&mut raw, "del").await;
    assert_eq!(
        deletes_after, deletes_before,
        "a clear deletes nothing: old entries die by TTL"
    );
    for key in 0..200u64 {
        assert_eq!(caches[0].get(&key).await.unwrap(), None);
    }
    let b_cleared = common::eventually(Duration::from_secs(2), async || {
        caches[1].get(&0).await.unwrap().is_none() && caches[1].get(&199).await.unwrap().is_none()
    })
    .await;
    assert!(b_cleared, "the other instance moves to the new generation");
    // a cache created after the clear starts on the new generation
    let late = fleet(&server, 1).await.remove(0);
    assert_eq!(late.get(&5).await.unwrap(), None);
    assert_eq!(
        late.stored_key(&5).unwrap(),
        caches[0].stored_key(&5).unwrap()
    );
    // and life goes on
    caches[1].set(&5, "new".to_string()).await.unwrap();
    assert_eq!(
        late.get(&5).await.unwrap().as_deref().map(String::as_str),
        Some("new")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_invalidation_removes_exactly_the_keys_below_it_everywhere() {
    let server = common::redis();
    let mut caches: Vec<Cache<(u64, u64), String>> = Vec::new();
    for _ in 0..2 {
        caches.push(
            Cache::builder("recs")
                .store(common::store(&server).await)
                .build()
                .unwrap(),
        );
    }
    for item in 0..3000u64 {
        caches[0]
            .set(&(42, item), format!("42/{item}"))
            .await
            .unwrap();
    }
    for item in 0..100u64 {
        caches[0]
            .set(&(420, item), format!("420/{item}"))
            .await
            .unwrap();
    }
    // the other instance has some of them in its L1
    for item in 0..50u64 {
        assert!(caches[1].get(&(42, item)).await.unwrap().is_some());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(caches[0].invalidate_prefix(&42u64).await.unwrap(), 3000);
    for item in [0u64, 49, 2999] {
        assert_eq!(caches[0].get(&(42, item)).await.unwrap(), None);
    }
    let b_cleared = common::eventually(Duration::from_secs(2), async || {
        let mut none = true;
        for item in 0..50u64 {
            none &= caches[1].get(&(42, item)).await.unwrap().is_none();
        }
        none
    })
    .await;
    assert!(
        b_cleared,
        "the other instance dropped its L1 copies under the prefix"
    );
    assert_eq!(
        caches[1]
            .get(&(420, 7))
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("420/7"),
        "42 is not a prefix of 420"
    );
    let mut raw = common::raw(&server).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("recs:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left.len(), 100, "only the 420 keys remain in Redis");
}

/// A task that loops on L1 hits without awaiting anything else (a batch handler reading many
/// keys, a hot loop) still lets the invalidation listener run: the hit path spends tokio's
/// cooperative budget, as tokio's own resources do. On a current-thread runtime a hit path that
/// never yields would starve the listener, and the loop would read the old value until it ended.
#[test]
fn a_task_looping_on_l1_hits_still_hears_other_instances_invalidations() {
    let server = common::redis();
    let url = server.url();
    let (written_tx, written_rx) = std::sync::mpsc::channel::<()>();
    let (warm_tx, warm_rx) = std::sync::mpsc::channel::<()>();
    // Instance A, on a runtime of its own: writes v1, then (once B holds it) v2.
    let writer = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = herdwise::RedisStore::connect(&url).await.unwrap();
            let a: Cache<u64, String> = Cache::builder("spin").store(store).build().unwrap();
            a.set(&1, "v1".to_string()).await.unwrap();
            written_tx.send(()).unwrap();
            warm_rx.recv().unwrap();
            a.set(&1, "v2".to_string()).await.unwrap();
            Instant::now()
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (seen_at, reads) = runtime.block_on(async {
        let b: Cache<u64, String> = Cache::builder("spin")
            .store(common::store(&server).await)
            .build()
            .unwrap();
        written_rx.recv().unwrap();
        assert_eq!(
            b.get(&1).await.unwrap().as_deref().map(String::as_str),
            Some("v1")
        );
        // Let the subscription come up before A writes again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        warm_tx.send(()).unwrap();
        let start = Instant::now();
        let mut reads = 0u64;
        // Nothing but L1 hits in this loop, until the new value shows or 3 s pass.
        while start.elapsed() < Duration::from_secs(3) {
            reads += 1;
            if b.get(&1).await.unwrap().as_deref().map(String::as_str) != Some("v1") {
                return (Some(Instant::now()), reads);
            }
        }
        (None, reads)
    });
    let written_at = writer.join().unwrap();
    let seen_at = seen_at.unwrap_or_else(|| {
        panic!("the loop read the old value for 3 s ({reads} reads): the listener never ran")
    });
    let late = seen_at.saturating_duration_since(written_at);
    assert!(
        late < Duration::from_millis(500),
        "the new value showed {late:?} after the write"
    );
}

/// An invalidation whose L2 delete fails (the key's primary is down, a failover is under way)
/// is retried by the instance that made it, which meanwhile never takes the key's L2 value. The
/// other instances must not take it either — after a failover the promoted replica still holds
/// the old value — so the delete is announced as pending: they drop their L1 copy and read the
/// key as a miss until the delete is announced done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_instances_do_not_read_a_value_whose_delete_is_still_pending() {
    let store = common::SlowDeletes {
        inner: MemoryStore::new(),
        // Longer than the store deadline below: every delete fails, and L2 keeps the value.
        delete_delay: Duration::from_millis(300),
        fail_fills: false,
        joint_writes: false,
    };
    let build = || {
        Cache::<u64, String>::builder("bp-pending")
            .store(store.clone())
            .store_timeout(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    assert_eq!(load(&a, 1, "old").await.as_deref(), Some("old"));
    assert_eq!(load(&b, 1, "old").await.as_deref(), Some("old"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.invalidate(&1).await.unwrap();
    assert!(
        store
            .inner
            .get(&a.stored_key(&1).unwrap())
            .await
            .unwrap()
            .is_some(),
        "the delete failed: L2 still holds the old value"
    );
    let stopped = until_not(&b, 1, "old", Duration::from_secs(2)).await;
    assert!(
        stopped.is_some(),
        "B stops serving the old value (its L1 copy dropped, L2's not taken)"
    );
    for _ in 0..20 {
        assert_eq!(
            b.get(&1).await.unwrap(),
            None,
            "B does not take the old L2 value while A's delete is pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.get(&1).await.unwrap(), None, "nor does A");
    // A newer write ends the hold (it is announced done): B takes L2's value again (a `get`
    // has no loader: what it returns came from L2), and A's queued delete is dropped (it would
    // only remove the newer value, and keep announcing it pending).
    assert_eq!(
        a.set(&1, "new".to_string()).await.unwrap(),
        WriteOutcome::Stored
    );
    let taken = common::eventually(Duration::from_secs(2), async || {
        b.get(&1).await.unwrap().as_deref().map(String::as_str) == Some("new")
    })
    .await;
    assert!(taken, "B takes the key's L2 value again once the hold ends");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new"),
        "A's superseded delete did not hold the key again"
    );
}

/// An instance whose subscription is not up yet (slow to connect under load, or stalled) cannot
/// hear invalidations: nothing it puts in L1 meanwhile is served without checking L2 first. Seen
/// in the torture run on a loaded machine: a fresh instance served entries it had cached before
/// its subscription came up, stale for over a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_trusts_nothing_in_l1_before_its_subscription_is_up() {
    let server = common::redis();
    let proxy = herdwise_testkit::Proxy::start(server.port()).unwrap();
    let behind_proxy = herdwise::RedisStore::connect(&proxy.url()).await.unwrap();
    // From here B's SUBSCRIBE never gets through (it subscribes at its first use); its data
    // connection works.
    proxy.freeze_subscribers(true);
    let a: Cache<u64, String> = Cache::builder("bp-deaf")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let b: Cache<u64, String> = Cache::builder("bp-deaf")
        .store(behind_proxy)
        .build()
        .unwrap();
    a.set(&1, "old".to_string()).await.unwrap();
    assert_eq!(
        b.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.set(&1, "new".to_string()).await.unwrap(); // B cannot hear it
    assert_eq!(
        b.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new"),
        "B served its L1 copy, cached while it could not hear invalidations"
    );
    proxy.freeze_subscribers(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_and_its_announcement_are_one_round_trip() {
    let server = common::redis();
    let writer: Cache<u64, String> = Cache::builder("bp")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let store = common::store(&server).await;
    let (listener, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("bp").store(store));
    // First uses: generation read, subscriptions up, scripts loaded.
    assert_eq!(load(&listener, 1, "old").await.as_deref(), Some("old"));
    writer.set(&0, "warm".to_string()).await.unwrap();
    writer.invalidate(&0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut raw = common::raw(&server).await;
    const N: u64 = 40;
    for what in ["set", "invalidate"] {
        let before = common::reads_processed(&mut raw).await;
        for k in 100..100 + N {
            match what {
                "set" => writer.set(&k, format!("v{k}")).await.map(|_| ()).unwrap(),
                _ => writer.invalidate(&k).await.unwrap(),
            }
        }
        // One read event is this INFO itself; the rest were the writes (and any background
        // call of the caches: the slack). Two round trips per write would be 2 N.
        let round_trips = common::reads_processed(&mut raw).await - before - 1;
        assert!(
            round_trips <= N + 8,
            "{N} {what} calls took {round_trips} round trips"
        );
    }
    // The announcements went out, in sequence: the listener's copy is gone, and it saw no gap.
    writer.set(&1, "new".to_string()).await.unwrap();
    assert!(until_not(&listener, 1, "old", Duration::from_secs(5))
        .await
        .is_some());
    assert_eq!(
        listener
            .get(&1)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("new")
    );
    assert_eq!(
        counter(&metrics, m::BACKPLANE_RESETS, &[("reason", "gap")]),
        0,
        "every event arrived, in order"
    );
    assert!(counter(&metrics, m::BACKPLANE_RECEIVED, &[]) > 2 * N);
}

/// Many tasks of one instance writing at once: their announcements travel with their writes,
/// and they still never look like lost events to a listener (which would demote its L1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_instance_never_look_like_a_gap() {
    let server = common::redis();
    let writer: Cache<u64, String> = Cache::builder("bp-conc")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    let store = common::store(&server).await;
    let (listener, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("bp-conc").store(store));
    common::concurrent_writes_never_look_like_a_gap(
        "standalone",
        &writer,
        &listener,
        &metrics,
        2_000,
    )
    .await;
}

/// A versioned write that is refused (L2 holds a newer version) writes nothing, so it announces
/// nothing: its event would end the other instances' hold on a key whose delete is still
/// pending, and they would take the old L2 value again. (Sent in the write's round trip, the
/// event went out whatever the write's outcome.) On the way: the pending delete's announcement
/// follows a message that was never sent (the failed delete had taken its sequence number), so
/// it reveals a gap — and is still applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_versioned_write_does_not_end_a_pending_deletes_hold() {
    let store = common::SlowDeletes {
        inner: MemoryStore::new(),
        // Longer than the store deadline below: every delete fails, and L2 keeps the value.
        delete_delay: Duration::from_millis(300),
        fail_fills: false,
        joint_writes: true,
    };
    let build = || {
        Cache::<u64, String>::builder("bp-refused")
            .store(store.clone())
            .store_timeout(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let (a, b, c) = (build(), build(), build());
    for cache in [&a, &b, &c] {
        cache.get(&0).await.unwrap(); // subscriptions up
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.set_versioned(&1, "v5".to_string(), 5).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        b.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("v5")
    );
    a.invalidate(&1).await.unwrap();
    assert!(
        store
            .inner
            .get(&a.stored_key(&1).unwrap())
            .await
            .unwrap()
            .is_some(),
        "the delete failed: L2 still holds the old value"
    );
    let stopped = until_not(&b, 1, "v5", Duration::from_secs(2)).await;
    assert!(
        stopped.is_some(),
        "B stops serving the old value: the pending delete's hold was applied"
    );
    // A's retries would hold the key again now and then: A goes (its delete never done).
    drop(a);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(b.get(&1).await.unwrap(), None, "still held");
    assert_eq!(
        c.set_versioned(&1, "v3".to_string(), 3).await.unwrap(),
        WriteOutcome::RefusedOlder
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        assert_eq!(
            b.get(&1).await.unwrap(),
            None,
            "B took the old L2 value: a refused write ended the pending delete's hold"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
