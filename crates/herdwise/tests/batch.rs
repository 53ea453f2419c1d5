//! Batch reads against a real Redis: `get_many` and `get_or_load_many` — one `MGET`, one
//! loader call, per-key negative entries and failures, input order and duplicates, single-
//! flight with single reads, leases across instances, fenced fills against an invalidation,
//! and cancellation.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Calls, OriginError};
use herdwise::{BatchLoaded, Cache, Error, LoadOptions, MemoryStore};
use parking_lot::Mutex;

async fn cache(server: &herdwise_testkit::RedisServer, ns: &str) -> Cache<u64, String> {
    Cache::builder(ns)
        .store(common::store(server).await)
        .build()
        .unwrap()
}

/// `cmdstat_<command>`'s calls in `INFO commandstats`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let wanted = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A batch loader that records the keys of every call.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl Origin {
    fn load(
        &self,
        keys: Vec<u64>,
    ) -> impl std::future::Future<Output = Result<HashMap<u64, String>, OriginError>> {
        self.calls.lock().push(keys.clone());
        async move { Ok(keys.into_iter().map(|k| (k, format!("v{k}"))).collect()) }
    }
    fn calls(&self) -> Vec<Vec<u64>> {
        self.calls.lock().clone()
    }
}

fn values(got: Vec<Result<Option<Arc<String>>, Error>>) -> Vec<Option<String>> {
    got.into_iter()
        .map(|r| r.unwrap().map(|v| (*v).clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_batch_is_one_mget_and_one_loader_call_then_l1_hits() {
    let server = common::redis();
    let cache = cache(&server, "batch").await;
    let mut raw = common::raw(&server).await;
    cache.get(&0).await.unwrap(); // first contact (generation), before counting
    let origin = Origin::default();
    let keys: Vec<u64> = (1..=100).collect();
    let mut asked: Vec<&u64> = keys.iter().collect();
    asked.push(&7); // a duplicate
    let mgets = command_calls(&mut raw, "mget").await;
    let got = cache
        .get_or_load_many(asked.iter().copied(), |ks| origin.load(ks))
        .await;
    let got = values(got);
    assert_eq!(got.len(), 101);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(got[i].as_deref(), Some(format!("v{k}").as_str()));
    }
    assert_eq!(
        got[100].as_deref(),
        Some("v7"),
        "the duplicate is answered too"
    );
    let calls = origin.calls();
    assert_eq!(calls.len(), 1, "one loader call for the batch: {calls:?}");
    let mut loaded = calls[0].clone();
    loaded.sort_unstable();
    assert_eq!(loaded, keys, "each key once");
    // One round of MGETs, 64 keys each.
    assert_eq!(
        command_calls(&mut raw, "mget").await - mgets,
        2,
        "100 keys: 2 MGETs"
    );

    // Warm now: answered from L1, no Redis read and no loader call.
    let mgets = command_calls(&mut raw, "mget").await;
    let again = values(
        cache
            .get_or_load_many(keys.iter(), |ks| origin.load(ks))
            .await,
    );
    assert!(again.iter().all(Option::is_some));
    assert_eq!(origin.calls().len(), 1);
    assert_eq!(command_calls(&mut raw, "mget").await, mgets);

    // Another instance finds them all in L2 with one MGET.
    let other = cache_named(&server, "batch").await;
    let mgets = command_calls(&mut raw, "mget").await;
    let got = other.get_many(keys.iter()).await.unwrap();
    assert!(got.iter().all(Option::is_some));
    assert_eq!(command_calls(&mut raw, "mget").await - mgets, 2);
    assert_eq!(origin.calls().len(), 1);
}

async fn cache_named(server: &herdwise_testkit::RedisServer, ns: &str) -> Cache<u64, String> {
    cache(server, ns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_are_negative_and_failed_keys_fail_alone() {
    let server = common::redis();
    let cache = cache(&server, "batchneg").await;
    let calls = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let loader = |ks: Vec<u64>| {
        calls.lock().push(ks.clone());
        async move {
            let mut loaded = BatchLoaded::new();
            for k in ks {
                match k {
                    2 => loaded.fail(k, "shard of key 2 is down"),
                    3 => {} // not at the origin
                    _ => loaded.insert(k, format!("v{k}")),
                }
            }
            Ok::<_, OriginError>(loaded)
        }
    };
    let got = cache.get_or_load_many([&1, &2, &3], loader).await;
    assert_eq!(
        got[0].as_ref().unwrap().as_deref().map(String::as_str),
        Some("v1")
    );
    match &got[1] {
        Err(Error::Loader(e)) => assert!(e.to_string().contains("shard of key 2"), "{e}"),
        other => panic!("key 2 must fail alone: {other:?}"),
    }
    assert!(got[2].as_ref().unwrap().is_none());
    // Again: 1 is cached, 3 is a negative entry, only 2 goes to the origin.
    let got = cache.get_or_load_many([&1, &2, &3], loader).await;
    assert!(got[1].is_err());
    assert!(got[2].as_ref().unwrap().is_none());
    assert_eq!(calls.lock().last().unwrap(), &vec![2]);

    // A failed call fails each of its keys; a key with a stale value answers stale.
    let flaky: Cache<u64, String> = Cache::builder("batchsie")
        .store(common::store(&server).await)
        .ttl(Duration::from_millis(200))
        .no_ttl_jitter()
        .stale_if_error(Duration::from_secs(60))
        .build()
        .unwrap();
    let ok = |ks: Vec<u64>| async move {
        Ok::<_, OriginError>(
            ks.into_iter()
                .map(|k| (k, format!("old{k}")))
                .collect::<HashMap<_, _>>(),
        )
    };
    flaky.get_or_load_many([&1], ok).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down =
        |_: Vec<u64>| async { Err::<HashMap<u64, String>, _>(OriginError("db down".into())) };
    let got = flaky
        .get_or_load_many_with([&1, &2], &LoadOptions::default(), down)
        .await;
    let first = got[0].as_ref().unwrap();
    assert!(first.stale, "key 1 answers its stale value");
    assert_eq!(first.value.as_deref().map(String::as_str), Some("old1"));
    assert!(matches!(&got[1], Err(Error::Loader(_))), "{:?}", got[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_joins_a_single_read_of_the_same_key_and_never_loads_it_twice() {
    let server = common::redis();
    let cache = cache(&server, "batchjoin").await;
    cache.get(&0).await.unwrap();
    let single_calls = Calls::default();
    let c = single_calls.clone();
    let single = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(&5, |_| async move {
                    c.hit();
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok::<_, OriginError>(Some("single".to_string()))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let origin = Origin::default();
    let keys: Vec<u64> = (1..=10).collect();
    let got = values(
        cache
            .get_or_load_many(keys.iter(), |ks| origin.load(ks))
            .await,
    );
    assert_eq!(
        got[4].as_deref(),
        Some("single"),
        "key 5 is the single read's"
    );
    let calls = origin.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        !calls[0].contains(&5),
        "the batch did not load key 5: {calls:?}"
    );
    assert_eq!(calls[0].len(), 9);
    assert_eq!(
        single
            .await
            .unwrap()
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("single")
    );
    assert_eq!(single_calls.get(), 1);

    // And the other way round: single reads during a batch's load join it.
    let slow = |ks: Vec<u64>| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, OriginError>(
            ks.into_iter()
                .map(|k| (k, format!("b{k}")))
                .collect::<HashMap<_, _>>(),
        )
    };
    let keys: Vec<u64> = (20..30).collect();
    let batch = {
        let (cache, keys) = (cache.clone(), keys.clone());
        tokio::spawn(async move { cache.get_or_load_many(keys.iter(), slow).await.len() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = Calls::default();
    let e = extra.clone();
    let joined = cache
        .get_or_load(&25, |_| async move {
            e.hit();
            Ok::<_, OriginError>(Some("single".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(joined.as_deref().map(String::as_str), Some("b25"));
    assert_eq!(extra.get(), 0);
    assert_eq!(batch.await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_another_instances_lease_instead_of_loading() {
    let server = common::redis();
    let a = cache(&server, "batchlease").await;
    let b = cache(&server, "batchlease").await;
    a.get(&0).await.unwrap();
    b.get(&0).await.unwrap();
    let single = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load(&3, |_| async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, OriginError>(Some("from-a".to_string()))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let origin = Origin::default();
    let got = values(
        b.get_or_load_many([&1, &2, &3, &4], |ks| origin.load(ks))
            .await,
    );
    assert_eq!(got[2].as_deref(), Some("from-a"));
    let calls = origin.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let mut keys = calls[0].clone();
    keys.sort_unstable();
    assert_eq!(keys, vec![1, 2, 4], "key 3 was left to the lease holder");
    single.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_batch_load_voids_that_keys_fill() {
    let server = common::redis();
    let cache = cache(&server, "batchinv").await;
    cache.get(&0).await.unwrap();
    let version = Arc::new(Mutex::new("old"));
    let v = version.clone();
    let loader = move |ks: Vec<u64>| {
        let seen = *v.lock();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, OriginError>(
                ks.into_iter()
                    .map(|k| (k, format!("{seen}{k}")))
                    .collect::<HashMap<_, _>>(),
            )
        }
    };
    let batch = {
        let (cache, loader) = (cache.clone(), loader.clone());
        tokio::spawn(async move { cache.get_or_load_many([&1, &2], loader).await.len() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The origin changes key 2 and the writer invalidates it while the batch is loading.
    *version.lock() = "new";
    cache.invalidate(&2).await.unwrap();
    assert_eq!(batch.await.unwrap(), 2);
    // Key 1 was cached from the batch; key 2's old value was refused.
    let got = values(cache.get_or_load_many([&1, &2], loader).await);
    assert_eq!(got[0].as_deref(), Some("old1"));
    assert_eq!(
        got[1].as_deref(),
        Some("new2"),
        "the old value of 2 was not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_leaves_nothing_held() {
    let server = common::redis();
    let cache = cache(&server, "batchcancel").await;
    let peer = cache_named(&server, "batchcancel").await;
    cache.get(&0).await.unwrap();
    peer.get(&0).await.unwrap();
    let never = |_: Vec<u64>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, OriginError>(HashMap::<u64, String>::new())
    };
    for _ in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_millis(30),
            cache.get_or_load_many([&1, &2, &3], never),
        )
        .await;
        assert!(r.is_err());
    }
    assert_eq!(cache.loads_in_flight(), 0, "flight slots released");
    // Leases released: another instance loads at once (no lease wait).
    let started = std::time::Instant::now();
    let origin = Origin::default();
    let got = values(
        peer.get_or_load_many([&1, &2, &3], |ks| origin.load(ks))
            .await,
    );
    assert!(got.iter().all(Option::is_some));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for leases of cancelled batches",
        started.elapsed()
    );
    // And this instance's single reads load normally.
    let got = cache
        .get_or_load(&9, |_| async {
            Ok::<_, OriginError>(Some("x".to_string()))
        })
        .await
        .unwrap();
    assert!(got.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_with_redis_down_answers_from_l1_and_misses_the_rest() {
    let mut server = common::redis();
    let cache = cache(&server, "batchdown").await;
    cache.set(&1, "one".to_string()).await.unwrap();
    server.kill();
    let got = cache.get_many([&1, &2]).await.unwrap();
    assert_eq!(got[0].as_deref().map(String::as_str), Some("one"));
    assert!(got[1].is_none());
    let origin = Origin::default();
    let got = values(cache.get_or_load_many([&1, &2], |ks| origin.load(ks)).await);
    assert_eq!(got, vec![Some("one".into()), Some("v2".into())]);
    assert_eq!(origin.calls(), vec![vec![2]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_many_uses_the_registered_batch_loader_or_else_the_loader() {
    let server = common::redis();
    let origin = Origin::default();
    let o = origin.clone();
    let batched: Cache<u64, String> = Cache::builder("fetchmany")
        .store(common::store(&server).await)
        .batch_loader(move |ks: Vec<u64>| o.load(ks))
        .build()
        .unwrap();
    let got = values(batched.fetch_many([&1, &2, &3]).await);
    assert_eq!(
        got,
        vec![Some("v1".into()), Some("v2".into()), Some("v3".into())]
    );
    assert_eq!(origin.calls().len(), 1);

    let singles = Calls::default();
    let s = singles.clone();
    let single: Cache<u64, String> = Cache::builder("fetchmany1")
        .store(common::store(&server).await)
        .loader(move |id: &u64| {
            let (id, s) = (*id, s.clone());
            async move {
                s.hit();
                if id == 2 {
                    return Err(OriginError("no".into()));
                }
                Ok(Some(format!("s{id}")))
            }
        })
        .build()
        .unwrap();
    let got = single.fetch_many([&1, &2, &3]).await;
    assert_eq!(
        got[0].as_ref().unwrap().as_deref().map(String::as_str),
        Some("s1")
    );
    assert!(matches!(got[1], Err(Error::Loader(_))), "{:?}", got[1]);
    assert_eq!(
        got[2].as_ref().unwrap().as_deref().map(String::as_str),
        Some("s3")
    );
    assert_eq!(singles.get(), 3);

    let none: Cache<u64, String> = Cache::builder("fetchmany2").build().unwrap();
    assert!(none
        .fetch_many([&1])
        .await
        .iter()
        .all(|r| matches!(r, Err(Error::NoLoader))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_loader_fails_its_keys_not_the_call() {
    let cache: Cache<u64, String> = Cache::builder("batchpanic").build().unwrap();
    cache.set(&1, "cached".to_string()).await.unwrap();
    let got = cache
        .get_or_load_many([&1, &2, &3], |_: Vec<u64>| async {
            if true {
                panic!("the loader's bug");
            }
            Ok::<HashMap<u64, String>, OriginError>(HashMap::new())
        })
        .await;
    assert_eq!(
        got[0].as_ref().unwrap().as_deref().map(String::as_str),
        Some("cached")
    );
    assert!(matches!(got[1], Err(Error::LoaderPanicked)), "{:?}", got[1]);
    assert!(matches!(got[2], Err(Error::LoaderPanicked)), "{:?}", got[2]);
    // nothing stuck: the keys load normally next time
    let origin = Origin::default();
    let again = values(cache.get_or_load_many([&2, &3], |ks| origin.load(ks)).await);
    assert_eq!(again, vec![Some("v2".into()), Some("v3".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_handle_never_uses_the_tenant_blind_batch_loader() {
    let cache: Cache<u64, String> = Cache::builder("batchtenant")
        .batch_loader(|ks: Vec<u64>| async move {
            Ok::<_, OriginError>(
                ks.into_iter()
                    .map(|k| (k, "blind".to_string()))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .build()
        .unwrap();
    let acme = cache.for_tenant("acme").unwrap();
    let got = acme.fetch_many([&1]).await;
    assert!(matches!(got[0], Err(Error::NoLoader)), "{:?}", got[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_many_with_a_single_loader_keeps_to_the_origin_limit() {
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (f, p) = (in_flight.clone(), peak.clone());
    let cache: Cache<u64, String> = Cache::builder("batchlimit")
        .origin_concurrency_limit(4, Duration::from_secs(5))
        .loader(move |id: &u64| {
            let (id, f, p) = (*id, f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, OriginError>(Some(format!("v{id}")))
            }
        })
        .build()
        .unwrap();
    let keys: Vec<u64> = (0..40).collect();
    let got = values(cache.fetch_many(keys.iter()).await);
    assert!(got.iter().all(Option::is_some));
    assert!(
        peak.load(std::sync::atomic::Ordering::SeqCst) <= 4,
        "peak {:?}",
        peak
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_part_size_is_read_in_parts() {
    let server = common::redis();
    // What is tested is the parts, not the store deadline: on a starved host (this file's tests
    // run at once, in a debug build) 1,000 lease calls can pass the default store deadline, and a key
    // whose lease call timed out is loaded without a fill (seen: 1,500 keys not in L2).
    let patient = |ns: &'static str| {
        let server = &server;
        async move {
            Cache::<u64, String>::builder(ns)
                .store(common::store(server).await)
                .store_timeout(Duration::from_secs(2))
                .build()
                .unwrap()
        }
    };
    let cache = patient("batchbig").await;
    let origin = Origin::default();
    let keys: Vec<u64> = (0..2_500).collect();
    let got = values(
        cache
            .get_or_load_many(keys.iter(), |ks| origin.load(ks))
            .await,
    );
    assert_eq!(got.len(), 2_500);
    assert_eq!(got[2_499].as_deref(), Some("v2499"));
    let calls = origin.calls();
    assert_eq!(calls.len(), 3, "one loader call per part of 1,000");
    assert!(calls.iter().all(|c| c.len() <= herdwise::MAX_BATCH_KEYS));
    let other = patient("batchbig").await;
    let in_l2 = other.get_many(keys.iter()).await.unwrap();
    let missing = in_l2.iter().filter(|v| v.is_none()).count();
    assert_eq!(missing, 0, "not in L2; breaker {:?}", cache.breaker_state());
}

/// A batch key that waited for another caller's load, which was then cancelled, leads its key
/// itself: it reads L2 again first (another instance may have filled it meanwhile) instead of
/// trusting what the batch's MGET said before the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_key_that_waited_reads_l2_again_before_loading() {
    let store = MemoryStore::new();
    let build = || -> Cache<u64, String> {
        Cache::builder("batchwait")
            .store(store.clone())
            .no_leases()
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    // A single read of key 5 on `a`, slow, cancelled later.
    let single = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load(&5, |_| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, OriginError>(Some("never".to_string()))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let origin = Origin::default();
    let batch = {
        let (a, origin) = (a.clone(), origin.clone());
        tokio::spawn(
            async move { values(a.get_or_load_many([&4, &5], |ks| origin.load(ks)).await) },
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another instance fills key 5 while the batch waits on the single read...
    b.set(&5, "from-b".to_string()).await.unwrap();
    // ...and the single read is cancelled: the batch's key 5 leads now.
    single.abort();
    let got = batch.await.unwrap();
    assert_eq!(
        got[1].as_deref(),
        Some("from-b"),
        "key 5 read again from L2"
    );
    assert!(
        origin.calls().iter().all(|c| !c.contains(&5)),
        "key 5 was loaded although L2 had it: {:?}",
        origin.calls()
    );
}

/// A batch whose keys another instance holds the leases of polls for their fills in turns too:
/// 1,000 waiting keys polling at once every 100 ms opened the breaker with its own calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_on_another_instances_leases_polls_in_turns() {
    let server = common::redis();
    let cache = cache(&server, "batchpolls").await;
    cache.get(&0).await.unwrap();
    let raw_store = common::store(&server).await;
    let keys: Vec<u64> = (1..=1_000).collect();
    for k in &keys {
        let stored = cache.stored_key(k).unwrap();
        assert!(
            herdwise::Store::try_lease(&raw_store, &stored, 7, Duration::from_millis(800))
                .await
                .unwrap()
        );
    }
    let origin = Origin::default();
    let got = values(
        cache
            .get_or_load_many(keys.iter(), |ks| origin.load(ks))
            .await,
    );
    assert!(got.iter().all(Option::is_some));
    assert_eq!(
        cache.breaker_state(),
        herdwise::BreakerState::Closed,
        "the batch's own polls tripped the breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_meet_a_failing_redis_hold_the_origin_to_its_outage_cap() {
    let mut server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("batch-outage")
        .store(common::store(&server).await)
        // The breaker stays closed: only the batches' own failed calls tell of the outage (as
        // in the first moments of one, before a breaker opens).
        .circuit_breaker(
            herdwise::BreakerConfig::default()
                .min_calls(1_000_000)
                .consecutive_failures(1_000_000),
        )
        .build()
        .unwrap();
    let origin = Origin::default();
    // A healthy history of more than a second (the outage cap is relative to it).
    assert_eq!(
        values(cache.get_or_load_many([&1], |ks| origin.load(ks)).await),
        [Some("v1".to_string())]
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        values(cache.get_or_load_many([&2], |ks| origin.load(ks)).await),
        [Some("v2".to_string())]
    );
    assert_eq!(cache.origin_limit(), Some(32));
    server.kill();
    for k in 10..13u64 {
        let got = cache.get_or_load_many([&k], |ks| origin.load(ks)).await;
        assert_eq!(
            values(got),
            [Some(format!("v{k}"))],
            "answered from the origin"
        );
    }
    let limit = cache.origin_limit().unwrap();
    assert!(
        limit < 32,
        "three batches whose L2 calls failed are an outage: the limit is held at its outage cap \
         (was {limit})"
    );
}
