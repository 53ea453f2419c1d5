//! Hot-key mitigations against a real Redis: with L1 disabled, the hottest keys still get a
//! short-lived in-process shield (counted in Redis' own command statistics), cold keys do not,
//! and an invalidation from another instance reaches the shield.

mod common;

use std::time::Duration;

use common::{calls_of, counter};
use herdwise::{metrics as m, Cache};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_l1_off_hot_keys_are_shielded_and_cold_keys_are_not() {
    let server = common::redis();
    let store = common::store(&server).await;
    let build = |shield: bool| {
        let builder = Cache::<u64, String>::builder("shield")
            .store(store.clone())
            .l1_max_bytes(0)
            .hot_keys(2);
        let builder = if shield {
            builder.hot_key_shield(64 << 10, Duration::from_secs(5))
        } else {
            builder.no_hot_key_shield()
        };
        builder.build().unwrap()
    };
    let (cache, unshielded) = (build(true), build(false));
    for key in 0..50 {
        cache.set(&key, format!("v{key}")).await.unwrap();
    }
    let mut raw = common::raw(&server).await;

    // Key 7 becomes hot (20 000 reads), while 40 other keys are read 20 times each.
    for _ in 0..20_000 {
        cache.get(&7).await.unwrap();
    }
    for key in 10..50 {
        for _ in 0..20 {
            cache.get(&key).await.unwrap();
        }
    }
    assert_eq!(cache.hot_keys()[0].0, cache.stored_key(&7).unwrap());
    let gets = calls_of(&mut raw, "get").await;
    for _ in 0..5_000 {
        assert_eq!(
            cache.get(&7).await.unwrap().as_deref().map(String::as_str),
            Some("v7")
        );
    }
    let hot_gets = calls_of(&mut raw, "get").await - gets;
    assert!(
        hot_gets <= 5,
        "5 000 reads of the hot key cost {hot_gets} Redis GETs"
    );
    let gets = calls_of(&mut raw, "get").await;
    for _ in 0..100 {
        cache.get(&20).await.unwrap();
    }
    let cold_gets = calls_of(&mut raw, "get").await - gets;
    assert!(
        cold_gets >= 100,
        "a cold key is not shielded ({cold_gets} GETs)"
    );
    // Without a shield the hot key costs a GET per read.
    let gets = calls_of(&mut raw, "get").await;
    for _ in 0..100 {
        unshielded.get(&7).await.unwrap();
    }
    assert!(calls_of(&mut raw, "get").await - gets >= 100);

    // Another instance's write reaches the shield through the backplane.
    unshielded.set(&7, "new".to_string()).await.unwrap();
    let replaced = common::eventually(Duration::from_secs(2), async || {
        cache.get(&7).await.unwrap().as_deref().map(String::as_str) == Some("new")
    })
    .await;
    assert!(replaced, "the shield must not outlive an invalidation");
}

/// Whether a key matching `pattern` exists.
async fn exists(raw: &mut redis::aio::MultiplexedConnection, pattern: &str) -> bool {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(raw)
        .await
        .unwrap();
    !keys.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_split_over_copies_that_writes_and_invalidations_remove() {
    let server = common::redis();
    let store = common::store(&server).await;
    let (cache, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("split")
            .store(store.clone())
            .l1_max_bytes(0)
            .no_hot_key_shield()
            .hot_keys(1)
            .hot_key_replicas(4, Duration::from_secs(30))
    });
    let mut raw = common::raw(&server).await;
    cache.get(&0).await.unwrap(); // first contact: the stored keys carry the generation
    let primary = cache.stored_key(&7).unwrap();
    // Copy i is `<primary>%r<i>-<n>`, `n` picked for its cluster slot.
    let copy = |i: u8| format!("{primary}%r{i}-*");
    cache.set(&7, "v1".to_string()).await.unwrap();
    cache.set(&8, "cold".to_string()).await.unwrap();
    for i in 0..10_000 {
        cache.get(&7).await.unwrap();
        if i % 10 == 0 {
            cache.get(&8).await.unwrap();
        }
    }
    assert_eq!(cache.hot_keys()[0].0, primary);
    // Readers picked the copies: each exists now, and most reads were answered by one.
    for i in 1..=4 {
        let made = common::eventually(Duration::from_secs(1), async || {
            exists(&mut raw, &copy(i)).await
        })
        .await;
        assert!(made, "copy {i} was never made");
    }
    assert!(counter(&metrics, m::REPLICA_READS, &[("outcome", "hit")]) > 1_000);
    let cold = cache.stored_key(&8).unwrap();
    assert!(
        !exists(&mut raw, &format!("{cold}%r1-*")).await,
        "a cold key has no copies"
    );

    // With the primary gone behind the cache's back, copies still answer some reads.
    let _: () = redis::cmd("DEL")
        .arg(&primary)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut answered = 0;
    for _ in 0..100 {
        answered += usize::from(cache.get(&7).await.unwrap().is_some());
    }
    assert!(answered > 50, "{answered} of 100 reads answered by copies");

    // A write removes the copies: no read sees the old value after it.
    cache.set(&7, "v2".to_string()).await.unwrap();
    for _ in 0..500 {
        assert_eq!(
            cache.get(&7).await.unwrap().as_deref().map(String::as_str),
            Some("v2")
        );
    }
    // An invalidation removes the primary and every copy.
    cache.invalidate(&7).await.unwrap();
    assert_eq!(cache.get(&7).await.unwrap(), None);
    for i in 1..=4 {
        assert!(
            !exists(&mut raw, &copy(i)).await,
            "copy {i} outlived the invalidation"
        );
    }
}

#[tokio::test]
async fn the_top_k_is_exported_by_rank() {
    let (cache, metrics) = common::with_metrics(|| Cache::<u64, u64>::builder("ranks").hot_keys(3));
    for key in 0..5u64 {
        cache.set(&key, key).await.unwrap();
    }
    // Key 0 read 8 times as often as key 1, which is read 8 times as often as keys 2-4.
    // ~112k reads: ~1,750 samples, past the 1,024 after which the gauges are first set.
    for _ in 0..1_500 {
        for _ in 0..64 {
            cache.get(&0).await.unwrap();
        }
        for _ in 0..8 {
            cache.get(&1).await.unwrap();
        }
        for key in 2..5 {
            cache.get(&key).await.unwrap();
        }
    }
    let rank = |r: &str| common::gauge(&metrics, m::HOT_KEY_READS, &[("rank", r)]).unwrap_or(0.0);
    let (first, second, third) = (rank("1"), rank("2"), rank("3"));
    eprintln!("hot-key reads by rank: {first} {second} {third}");
    assert!(first > 3.0 * second && second > 3.0 * third && third > 0.0);
    assert!(
        common::gauge(&metrics, m::HOT_KEY_READS, &[("rank", "4")]).is_none(),
        "k = 3 ranks, no more"
    );
    let share = common::gauge(&metrics, m::HOTTEST_KEY_SHARE, &[]).unwrap();
    assert!((0.6..0.95).contains(&share), "hottest share {share}");
}
