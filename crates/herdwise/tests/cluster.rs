//! Redis Cluster: the store contract and every first-wave defense on a real 3-primary,
//! 3-replica cluster, started once for the file's tests (on free loopback ports, killed by
//! PID). Keys spread over every primary; scripts and multi-key commands stay in one slot;
//! keyspace walks visit every primary; the backplane reaches every instance.

mod common;

use std::time::Duration;

use common::contract::{contract, lease_contract, publish_contract};
use common::OriginError;
use herdwise::{BackplaneTransport, Cache, CacheBuilder, RedisStore, WriteOptions};
use herdwise_testkit::RedisCluster;

async fn store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::builder(&cluster.url())
        .call_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect to the test cluster")
}

async fn load(cache: &Cache<u64, String>, key: u64) -> Option<String> {
    cache
        .get_or_load(&key, |k| {
            let v = format!("v{k}");
            async move { Ok::<_, OriginError>(Some(v)) }
        })
        .await
        .unwrap()
        .map(|v| v.to_string())
}

async fn served(cache: &Cache<u64, String>, key: u64) -> bool {
    cache.get(&key).await.unwrap().is_some()
}

/// How many keys matching `pattern` each primary holds, by port.
fn keys_per_primary(cluster: &RedisCluster, pattern: &str) -> Vec<(u16, usize)> {
    cluster
        .primary_ports()
        .unwrap()
        .into_iter()
        .map(|port| {
            let out = RedisCluster::cli(port, &["--scan", "--pattern", pattern]).unwrap();
            (port, out.lines().filter(|l| !l.trim().is_empty()).count())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_meets_the_contract() {
    let cluster = common::shared_cluster();
    let store = store(&cluster).await;
    contract(&store).await;
    lease_contract(&store).await; // (with the fence contract)
    publish_contract(&store).await;
}

/// A cluster whose first seed is down (nothing listens there) still connects: every check at
/// connect, the subscription probe included, goes on to the next seed. Before, the probe used
/// the first seed only and `connect` failed on a healthy cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_seed_does_not_fail_connect() {
    let cluster = common::shared_cluster();
    let dead = herdwise_testkit::free_port().unwrap();
    let url = cluster.url().replace(
        "redis+cluster://",
        &format!("redis+cluster://127.0.0.1:{dead},"),
    );
    let store = RedisStore::builder(&url)
        .call_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("a dead first seed, five live ones");
    let cache: Cache<u64, String> = Cache::builder("dead-seed").store(store).build().unwrap();
    assert_eq!(load(&cache, 3).await.as_deref(), Some("v3"));
}

/// The README's ACL rule connects to a cluster (it needs `CLUSTER SLOTS`) and every defense
/// works under it: reads, writes, tags, a prefix walk over every primary, `clear()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_rule_works_on_the_cluster() {
    let cluster = common::shared_cluster();
    let rule = format!("acl-doc on >pw {}", common::DOCUMENTED_ACL);
    let mut args = vec!["acl", "setuser"];
    args.extend(rule.split(' '));
    for node in cluster.nodes() {
        assert_eq!(RedisCluster::cli(node.port(), &args).unwrap().trim(), "OK");
    }
    let url = cluster
        .url()
        .replace("redis+cluster://", "redis+cluster://acl-doc:pw@");
    let store = RedisStore::builder(&url)
        .call_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("the documented ACL rule connects to the cluster");
    let cache: Cache<(u64, u64), String> =
        Cache::builder("acl-cluster").store(store).build().unwrap();
    for i in 0..50 {
        cache.set(&(1, i), format!("v{i}")).await.unwrap();
    }
    assert_eq!(cache.invalidate_prefix(&1u64).await.unwrap(), 50);
    cache.invalidate_tag("t").await.unwrap();
    cache.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_primary_and_a_prefix_walk_reaches_them_all() {
    let cluster = common::shared_cluster();
    let grouped = async || -> Cache<(u32, u32), String> {
        Cache::builder("clp")
            .store(store(&cluster).await)
            .build()
            .unwrap()
    };
    let writer = grouped().await;
    for group in 0..3u32 {
        for id in 0..100u32 {
            writer.set(&(group, id), format!("v{id}")).await.unwrap();
        }
    }
    let before = keys_per_primary(&cluster, "clp:*");
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(
        before.iter().all(|(_, n)| *n > 50),
        "300 keys spread over the 3 primaries: {before:?}"
    );
    let reader = grouped().await;
    assert!(reader.get(&(1, 17)).await.unwrap().is_some());
    // Group 1: 100 keys, on every primary.
    let removed = writer.invalidate_prefix(&1u32).await.unwrap();
    assert_eq!(removed, 100);
    let after = keys_per_primary(&cluster, "clp:*");
    assert_eq!(
        after.iter().map(|(_, n)| n).sum::<usize>(),
        200,
        "{after:?}"
    );
    let leases = keys_per_primary(&cluster, "{clp:*");
    assert!(leases.iter().all(|(_, n)| *n == 0), "{leases:?}");
    for group in 0..3u32 {
        for id in 0..100u32 {
            let served = writer.get(&(group, id)).await.unwrap().is_some();
            assert_eq!(served, group != 1, "key ({group}, {id})");
        }
    }
    // The other instance's L1 dropped them too (the backplane crosses the cluster).
    assert!(
        common::eventually(Duration::from_secs(3), async || {
            reader.get(&(1, 17)).await.unwrap().is_none()
        })
        .await,
        "another instance served a key removed by the prefix walk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_clear_work_on_a_cluster() {
    let cluster = common::shared_cluster();
    let a: Cache<u64, String> = Cache::builder("clt")
        .store(store(&cluster).await)
        .build()
        .unwrap();
    let b: Cache<u64, String> = Cache::builder("clt")
        .store(store(&cluster).await)
        .build()
        .unwrap();
    let shoes = WriteOptions::default().tags(["shoes"]);
    for key in 0..30 {
        a.set_with(&key, format!("boot{key}"), &shoes)
            .await
            .unwrap();
    }
    a.set(&100, "untagged".to_string()).await.unwrap();
    for key in 0..30 {
        assert!(served(&b, key).await);
    }
    a.invalidate_tag("shoes").await.unwrap();
    for key in 0..30 {
        assert!(
            !served(&a, key).await,
            "tagged key {key} survived its tag here"
        );
    }
    assert!(
        common::eventually(Duration::from_secs(3), async || {
            let mut any = false;
            for key in 0..30 {
                any |= served(&b, key).await;
            }
            !any
        })
        .await,
        "another instance served entries of an invalidated tag"
    );
    assert!(served(&b, 100).await, "an untagged entry stays");
    a.clear().await.unwrap();
    assert!(!served(&a, 100).await);
    assert!(
        common::eventually(Duration::from_secs(3), async || !served(&b, 100).await).await,
        "another instance served an entry from before clear()"
    );
    // A fresh instance starts on the new generation too.
    let c: Cache<u64, String> = Cache::builder("clt")
        .store(store(&cluster).await)
        .build()
        .unwrap();
    assert!(!served(&c, 100).await);
    c.set(&101, "after".to_string()).await.unwrap();
    assert!(served(&a, 101).await);
}

fn streams(namespace: &str, store: RedisStore) -> CacheBuilder<u64, String> {
    Cache::builder(namespace)
        .store(store)
        .backplane_transport(BackplaneTransport::Streams { max_len: 1_000 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backplane_transports_reach_every_instance_on_a_cluster() {
    let cluster = common::shared_cluster();
    for transport in ["pubsub", "streams"] {
        let namespace = format!("clb-{transport}");
        let build = |store: RedisStore| match transport {
            "pubsub" => Cache::builder(&namespace).store(store).build().unwrap(),
            _ => streams(&namespace, store).build().unwrap(),
        };
        let a: Cache<u64, String> = build(store(&cluster).await);
        let b: Cache<u64, String> = build(store(&cluster).await);
        for key in 0..20 {
            load(&a, key).await;
            load(&b, key).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for key in 0..20 {
            a.invalidate(&key).await.unwrap();
        }
        assert!(
            common::eventually(Duration::from_secs(3), async || {
                let mut any = false;
                for key in 0..20 {
                    any |= served(&b, key).await;
                }
                !any
            })
            .await,
            "{transport}: another instance kept invalidated keys in L1"
        );
        // Writes travel too: B's L1 copy of a key A overwrites is dropped.
        load(&b, 50).await;
        a.set(&50, "new".to_string()).await.unwrap();
        assert!(
            common::eventually(Duration::from_secs(3), async || {
                b.get(&50).await.unwrap().as_deref().map(String::as_str) == Some("new")
            })
            .await,
            "{transport}: another instance kept an overwritten value"
        );
    }
}

/// On a Cluster a write goes to its key's node and an event to the channel's: many tasks of
/// one instance writing at once must still never look like lost events to a listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_instance_never_look_like_a_gap_on_a_cluster() {
    let cluster = common::shared_cluster();
    let writer: Cache<u64, String> = Cache::builder("cl-conc")
        .store(store(&cluster).await)
        .build()
        .unwrap();
    let listener_store = store(&cluster).await;
    let (listener, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("cl-conc").store(listener_store));
    common::concurrent_writes_never_look_like_a_gap("cluster", &writer, &listener, &metrics, 2_000)
        .await;
}
