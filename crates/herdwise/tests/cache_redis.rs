//! The cache against a real Redis: shared L2, single-flight, cancellation, loader failures,
//! negative entries, corruption, outages, bounds and bad input.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{counter, Calls, OriginError};
use herdwise::{metrics as m, Cache, Error, RedisStore, WriteOutcome};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ProductKey(u64);

impl herdwise::CacheKey for ProductKey {
    fn encode_key(&self, out: &mut herdwise::KeyEncoder) {
        out.u64(self.0);
    }
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product-{id}"),
    }
}

fn catalog(store: RedisStore) -> Cache<ProductKey, Product> {
    Cache::builder("catalog").store(store).build().unwrap()
}

#[tokio::test]
async fn two_instances_share_l2() {
    let server = common::redis();
    let a = catalog(common::store(&server).await);
    let b = catalog(common::store(&server).await);
    let (calls_a, calls_b) = (Calls::default(), Calls::default());

    let got = a
        .get_or_load(&ProductKey(1), |k| {
            let calls = calls_a.clone();
            async move {
                calls.hit();
                Ok::<_, OriginError>(Some(product(k.0)))
            }
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&product(1)));

    let got = b
        .get_or_load(&ProductKey(1), |k| {
            let calls = calls_b.clone();
            async move {
                calls.hit();
                Ok::<_, OriginError>(Some(product(k.0 + 1000)))
            }
        })
        .await
        .unwrap();
    assert_eq!(
        got.as_deref(),
        Some(&product(1)),
        "B must read A's value from L2"
    );
    assert_eq!((calls_a.get(), calls_b.get()), (1, 0));
    // B cached it before its invalidation subscription was confirmed, so the copy is checked
    // against L2 once (B could not have heard an invalidation); once B listens, a get re-stamps
    // it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.get(&ProductKey(1)).await.unwrap().is_some());
    // and B now has it in L1: a plain get answers without Redis
    server.pause().unwrap();
    let t = Instant::now();
    assert_eq!(
        b.get(&ProductKey(1)).await.unwrap().as_deref(),
        Some(&product(1))
    );
    assert!(
        t.elapsed() < Duration::from_millis(40),
        "an L1 hit must not touch Redis"
    );
    server.resume().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_callers_cause_one_load() {
    let server = common::redis();
    let cache = catalog(common::store(&server).await);
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&ProductKey(7), |k| async move {
                    calls.hit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, OriginError>(Some(product(k.0)))
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().as_deref(), Some(&product(7)));
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_leader_hands_over_to_one_waiter() {
    let server = common::redis();
    let cache = catalog(common::store(&server).await);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(&ProductKey(9), |_| async move {
                    let _ = started_tx.send(());
                    std::future::pending::<Result<Option<Product>, OriginError>>().await
                })
                .await
        })
    };
    started_rx.await.unwrap();

    let takeover_calls = Calls::default();
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let (cache, calls) = (cache.clone(), takeover_calls.clone());
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load(&ProductKey(9), |k| async move {
                    calls.hit();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, OriginError>(Some(product(k.0)))
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        takeover_calls.get(),
        0,
        "waiters must wait while the leader runs"
    );
    leader.abort();

    let all = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(waiters))
        .await
        .expect("waiters must not hang after the leader is cancelled");
    for result in all {
        assert_eq!(result.unwrap().unwrap().as_deref(), Some(&product(9)));
    }
    assert_eq!(takeover_calls.get(), 1, "exactly one waiter takes over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_errors_reach_every_waiter_and_are_never_cached() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<ProductKey, Product>::builder("catalog").store(store.clone())
    });
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&ProductKey(3), |_| async move {
                    calls.hit();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Option<Product>, _>(OriginError("db down".into()))
                })
                .await
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            Err(Error::Loader(e)) => assert!(e.to_string().contains("db down")),
            other => panic!("expected the loader's error, got {other:?}"),
        }
    }
    assert_eq!(calls.get(), 1);
    let mut raw = common::raw(&server).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(cache.stored_key(&ProductKey(3)).unwrap())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0, "an error must not be cached in L2");
    // the next read loads again
    let got = cache
        .get_or_load(&ProductKey(3), |k| async move {
            Ok::<_, OriginError>(Some(product(k.0)))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&product(3)));
    assert_eq!(counter(&metrics, m::LOADS, &[("result", "error")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_fails_every_caller_without_hanging() {
    let server = common::redis();
    let cache = catalog(common::store(&server).await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&ProductKey(4), |_| async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if i < 100 {
                        panic!("loader bug");
                    }
                    Ok::<_, OriginError>(Some(product(4)))
                })
                .await
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks))
        .await
        .expect("no caller may hang on a panicked load");
    for result in results {
        assert!(matches!(result.unwrap(), Err(Error::LoaderPanicked)));
    }
    assert_eq!(
        cache.get(&ProductKey(4)).await.unwrap(),
        None,
        "nothing cached"
    );
}

#[tokio::test]
async fn negative_entries_expire_and_are_replaced_by_set_and_removed_by_invalidate() {
    let server = common::redis();
    let cache: Cache<ProductKey, Product> = Cache::builder("catalog")
        .store(common::store(&server).await)
        .negative_ttl(Some(Duration::from_millis(300)))
        .no_ttl_jitter()
        .build()
        .unwrap();
    let calls = Calls::default();
    let load_absent = || {
        let calls = calls.clone();
        move |_: &ProductKey| async move {
            calls.hit();
            Ok::<Option<Product>, OriginError>(None)
        }
    };
    let key = ProductKey(404);
    assert_eq!(cache.get_or_load(&key, load_absent()).await.unwrap(), None);
    assert_eq!(cache.get_or_load(&key, load_absent()).await.unwrap(), None);
    assert_eq!(calls.get(), 1, "the negative entry answers the second read");

    let mut raw = common::raw(&server).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(cache.stored_key(&key).unwrap())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        (1..=300).contains(&pttl),
        "negative TTL in Redis is {pttl} ms"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get_or_load(&key, load_absent()).await.unwrap(), None);
    assert_eq!(calls.get(), 2, "after its TTL the negative entry is gone");

    // a create replaces the negative entry
    assert_eq!(
        cache.set(&key, product(404)).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&product(404))
    );

    // invalidate removes a negative entry too
    cache.invalidate(&key).await.unwrap();
    let key2 = ProductKey(405);
    assert_eq!(cache.get_or_load(&key2, load_absent()).await.unwrap(), None);
    cache.invalidate(&key2).await.unwrap();
    let got = cache
        .get_or_load(&key2, |k| async move {
            Ok::<_, OriginError>(Some(product(k.0)))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&product(405)));
}

#[tokio::test]
async fn corrupted_bytes_are_a_counted_miss_then_reloaded() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<ProductKey, Product>::builder("catalog")
            .store(store.clone())
            .l1_max_bytes(0)
    });
    let mut raw = common::raw(&server).await;
    let key = ProductKey(5);

    // a valid entry written by the cache, to tamper with (the first call also learns the
    // namespace generation, part of the stored key)
    cache.set(&key, product(5)).await.unwrap();
    let stored_key = cache.stored_key(&key).unwrap();
    let good: Vec<u8> = redis::cmd("GET")
        .arg(&stored_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let garbage: Vec<Vec<u8>> = vec![
        b"not an envelope at all".to_vec(),
        good[..good.len() / 2].to_vec(), // truncated
        flipped,                         // one bit flipped in the payload
        {
            let mut v = good.clone();
            v[2] = 99; // unknown format version
            v
        },
        Vec::new(),
    ];
    let calls = Calls::default();
    for (i, bytes) in garbage.iter().enumerate() {
        let () = redis::cmd("SET")
            .arg(&stored_key)
            .arg(bytes)
            .query_async(&mut raw)
            .await
            .unwrap();
        let calls2 = calls.clone();
        let got = cache
            .get_or_load(&key, |k| async move {
                calls2.hit();
                Ok::<_, OriginError>(Some(product(k.0)))
            })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&product(5)), "case {i}");
        assert_eq!(
            calls.get(),
            i + 1,
            "case {i}: corrupted bytes must lead to a reload"
        );
        let now: Vec<u8> = redis::cmd("GET")
            .arg(&stored_key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_ne!(
            &now, bytes,
            "case {i}: the corrupted entry must be replaced"
        );
    }
    assert_eq!(
        counter(&metrics, m::CORRUPT_ENTRIES, &[]),
        garbage.len() as u64
    );
    // a plain get of corrupted bytes is a miss, not an error
    let () = redis::cmd("SET")
        .arg(&stored_key)
        .arg("junk")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), None);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&stored_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0, "corrupted entries are deleted");
}

#[tokio::test]
async fn entries_from_another_codec_are_misses() {
    let server = common::redis();
    let json: Cache<ProductKey, Product> = Cache::builder("catalog")
        .store(common::store(&server).await)
        .codec(herdwise::Json)
        .build()
        .unwrap();
    let postcard = catalog(common::store(&server).await);
    json.set(&ProductKey(1), product(1)).await.unwrap();
    assert_eq!(postcard.get(&ProductKey(1)).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_redis_death_and_the_cache_recovers_after_restart() {
    let mut server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<ProductKey, Product>::builder("catalog").store(store.clone())
    });
    let load = |k: &ProductKey| {
        let id = k.0;
        async move { Ok::<_, OriginError>(Some(product(id))) }
    };
    cache.get_or_load(&ProductKey(1), load).await.unwrap();

    server.kill();
    // from L1
    let t = Instant::now();
    assert_eq!(
        cache.get(&ProductKey(1)).await.unwrap().as_deref(),
        Some(&product(1))
    );
    // from the origin, within the deadline (50 ms) plus scheduling slack
    let got = cache.get_or_load(&ProductKey(2), load).await.unwrap();
    assert_eq!(got.as_deref(), Some(&product(2)));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        counter(&metrics, m::L2_CALLS, &[("outcome", "error")])
            + counter(&metrics, m::L2_CALLS, &[("outcome", "timeout")])
            > 0,
        "failures are counted"
    );

    server.restart().unwrap();
    let probe = common::store(&server).await;
    let stored_key = cache.stored_key(&ProductKey(3)).unwrap();
    let recovered = common::eventually(Duration::from_secs(10), async || {
        cache.invalidate(&ProductKey(3)).await.unwrap();
        cache.get_or_load(&ProductKey(3), load).await.unwrap();
        herdwise::Store::get(&probe, &stored_key)
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(recovered, "writes must reach Redis again after it restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_one_deadline_not_a_hang() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<ProductKey, Product>::builder("catalog")
            .store(store.clone())
            .store_timeout(Duration::from_millis(50))
    });
    server.pause().unwrap();
    let t = Instant::now();
    let got = cache
        .get_or_load(&ProductKey(8), |k| async move {
            Ok::<_, OriginError>(Some(product(k.0)))
        })
        .await
        .unwrap();
    let elapsed = t.elapsed();
    server.resume().unwrap();
    assert_eq!(got.as_deref(), Some(&product(8)));
    // one read deadline and one write deadline at most, plus slack for a loaded CI machine
    assert!(elapsed < Duration::from_millis(400), "took {elapsed:?}");
    assert!(counter(&metrics, m::L2_CALLS, &[("outcome", "timeout")]) >= 1);
}

#[tokio::test]
async fn l1_never_exceeds_its_byte_bound() {
    let server = common::redis();
    let cache: Cache<u64, Vec<u8>> = Cache::builder("blobs")
        .store(common::store(&server).await)
        .l1_max_bytes(1 << 20)
        .compression(herdwise::Compression::None)
        .build()
        .unwrap();
    for i in 0..300u64 {
        let size = 20_000 + (i as usize % 5) * 20_000;
        if i % 2 == 0 {
            cache.set(&i, vec![i as u8; size]).await.unwrap();
        } else {
            cache
                .get_or_load(&i, |_| async move {
                    Ok::<_, OriginError>(Some(vec![1u8; size]))
                })
                .await
                .unwrap();
        }
        assert!(
            cache.l1_bytes() <= cache.l1_max_bytes(),
            "after value {i}: {} bytes",
            cache.l1_bytes()
        );
    }
    assert!(
        cache.l1_len() >= 5,
        "L1 must still hold some of the recent values"
    );
}

#[tokio::test]
async fn invalid_keys_are_typed_errors() {
    let cache: Cache<str, String> = Cache::builder("docs").max_key_bytes(64).build().unwrap();
    assert!(matches!(
        cache.get("line\nbreak").await,
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        cache.set("", "x".to_string()).await,
        Err(Error::InvalidKey(_))
    ));
    let long = "k".repeat(100);
    let result = cache
        .get_or_load(long.as_str(), |_| async {
            Ok::<_, OriginError>(Some("x".to_string()))
        })
        .await;
    assert!(matches!(
        result,
        Err(Error::InvalidKey(herdwise::KeyError::TooLong { .. }))
    ));
    assert!(matches!(
        cache.invalidate("\u{0}").await,
        Err(Error::InvalidKey(_))
    ));
    assert!(Cache::<str, String>::builder("bad namespace")
        .build()
        .is_err());
}

#[tokio::test]
async fn oversized_values_are_rejected_by_set_and_not_cached_by_loads() {
    let server = common::redis();
    let cache: Cache<u64, Vec<u8>> = Cache::builder("blobs")
        .store(common::store(&server).await)
        .max_value_bytes(10_000)
        .build()
        .unwrap();
    cache.set(&1, vec![1u8; 100]).await.unwrap();
    match cache.set(&1, vec![2u8; 20_000]).await {
        Err(Error::ValueTooLarge { limit: 10_000, .. }) => {}
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(
        cache.get(&1).await.unwrap(),
        None,
        "the old value must not outlive a failed replace"
    );

    let calls = Calls::default();
    for _ in 0..2 {
        let calls = calls.clone();
        let got = cache
            .get_or_load(&2, |_| async move {
                calls.hit();
                Ok::<_, OriginError>(Some(vec![3u8; 20_000]))
            })
            .await
            .unwrap();
        assert_eq!(
            got.map(|v| v.len()),
            Some(20_000),
            "the caller still gets the value"
        );
    }
    // Not in L2 (another instance finds nothing), in this instance's L1 only, briefly
    // (`oversized_in_l1`, tests/oversized.rs): one load for both reads.
    assert_eq!(
        calls.get(),
        1,
        "the oversized value is kept in L1 for a moment"
    );
    let other: Cache<u64, Vec<u8>> = Cache::builder("blobs")
        .store(common::store(&server).await)
        .max_value_bytes(10_000)
        .build()
        .unwrap();
    assert_eq!(other.get(&2).await.unwrap(), None, "never written to L2");
}

#[tokio::test]
async fn versioned_writes_never_go_backwards_across_instances() {
    let server = common::redis();
    let a = catalog(common::store(&server).await);
    let b = catalog(common::store(&server).await);
    let key = ProductKey(77);
    let v = |n: u64| Product {
        id: 77,
        name: format!("v{n}"),
    };
    assert_eq!(
        a.set_versioned(&key, v(5), 5).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        b.set_versioned(&key, v(4), 4).await.unwrap(),
        WriteOutcome::RefusedOlder
    );
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&v(5)));
    // an unversioned fill does not replace a versioned entry either
    a.invalidate(&key).await.unwrap();
    assert_eq!(
        b.set_versioned(&key, v(6), 6).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(a.get(&key).await.unwrap().as_deref(), Some(&v(6)));
    // a plain set is an explicit overwrite
    assert_eq!(a.set(&key, v(0)).await.unwrap(), WriteOutcome::Stored);
    // B's L1 copy of v6 is dropped by the backplane announcement of A's write.
    let b_sees_the_write = common::eventually(Duration::from_secs(2), async || {
        b.get(&key).await.unwrap().as_deref() == Some(&v(0))
    })
    .await;
    assert!(b_sees_the_write, "B must not keep serving v6 from its L1");
    let fresh = catalog(common::store(&server).await);
    assert_eq!(fresh.get(&key).await.unwrap().as_deref(), Some(&v(0)));
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_first_used_while_redis_is_down_does_not_pay_a_deadline_per_read() {
    let server = common::redis();
    let cache = catalog(common::store(&server).await);
    server.pause().unwrap();
    let load = |k: &ProductKey| {
        let id = k.0;
        async move { Ok::<_, OriginError>(Some(product(id))) }
    };
    // the first read pays the deadlines of a dead Redis (generation, L2, lease, fill)...
    cache.get_or_load(&ProductKey(1), load).await.unwrap();
    // ...but L1 hits afterwards must not wait on Redis again
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            cache
                .get_or_load(&ProductKey(1), load)
                .await
                .unwrap()
                .as_deref(),
            Some(&product(1))
        );
    }
    let took = t.elapsed();
    server.resume().unwrap();
    assert!(
        took < Duration::from_millis(500),
        "20 L1 hits took {took:?}"
    );
}
