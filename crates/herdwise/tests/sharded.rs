//! Client-side sharding over three real standalone Redis servers: the store contract, keys
//! spread by rendezvous hashing, one breaker per node (a killed node degrades its share of
//! the keys, not the cache), and invalidations that reach every instance across nodes.

mod common;

use std::time::Duration;

use common::contract::{contract, lease_contract};
use herdwise::{BreakerConfig, BreakerState, Cache, ShardedStore, Store};
use herdwise_testkit::RedisServer;

async fn sharded(servers: &[RedisServer]) -> ShardedStore {
    let mut nodes = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let store = herdwise::RedisStore::builder(&server.url())
            .call_timeout(Duration::from_millis(100))
            .reconnect_retries(0)
            .connection_timeout(Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        nodes.push((format!("node-{i}"), store));
    }
    ShardedStore::new(nodes).unwrap()
}

fn servers() -> Vec<RedisServer> {
    (0..3).map(|_| common::redis()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_store_meets_the_contract() {
    let servers = servers();
    let store = sharded(&servers).await;
    contract(&store).await;
    lease_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_degrades_only_its_share_of_the_keys() {
    let mut servers = servers();
    let store = sharded(&servers).await;
    let build = |store: ShardedStore| {
        Cache::<u64, String>::builder("shd")
            .store(store)
            .l1_max_bytes(0)
            .no_hot_key_shield()
            .circuit_breaker(
                BreakerConfig::default()
                    .min_calls(5)
                    .open_for(Duration::from_secs(30)),
            )
            .build()
            .unwrap()
    };
    let cache = build(store.clone());
    let other = build(sharded(&servers).await);
    for key in 0..300u64 {
        cache.set(&key, format!("v{key}")).await.unwrap();
    }
    let on = |node: &str| -> Vec<u64> {
        (0..300u64)
            .filter(|k| store.node_of(&cache.stored_key(k).unwrap()) == node)
            .collect()
    };
    let (dead, alive) = (on("node-1"), on("node-0"));
    assert!(
        dead.len() > 60 && alive.len() > 60,
        "{} {}",
        dead.len(),
        alive.len()
    );
    // Another instance sees a write through the backplane, whichever node holds the key.
    assert!(other.get(&dead[0]).await.unwrap().is_some());
    servers[1].kill();
    for _ in 0..3 {
        for key in &dead {
            assert_eq!(
                other.get(key).await.unwrap(),
                None,
                "a dead node's key is a miss"
            );
        }
    }
    let states = other.breaker_states();
    assert_eq!(
        states,
        vec![
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::Closed
        ],
        "only the dead node's breaker opens"
    );
    // The live nodes still answer from L2.
    for key in &alive {
        assert!(
            other.get(key).await.unwrap().is_some(),
            "key {key} on a live node"
        );
    }
    assert_eq!(other.breaker_states()[0], BreakerState::Closed);
    assert!(store.shards() == 3);
}
