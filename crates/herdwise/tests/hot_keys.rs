//! Hot-key mitigations against a real Redis: with L1 disabled, the hottest keys still get a
//! short-lived in-process shield (counted in Redis' own command statistics), cold keys do not,
//! and an invalidation from another instance reaches the shield.

mod common;

use std::time::Duration;

use common::calls_of;
use herdwise::Cache;

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
    assert_eq!(cache.hot_keys()[0].0, "shield:v1:7");
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
