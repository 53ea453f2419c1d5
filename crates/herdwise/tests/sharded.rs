//! Client-side sharding over three real standalone Redis servers: the store contract, keys
//! spread by rendezvous hashing, one breaker per node (a killed node degrades its share of
//! the keys, not the cache), and invalidations that reach every instance across nodes.

mod common;

use std::time::Duration;

use common::contract::{contract, lease_contract, publish_contract};
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
    publish_contract(&store).await;
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

/// Subscriber connections open on a node (`CLIENT LIST TYPE pubsub`).
async fn pubsub_clients(server: &RedisServer) -> usize {
    let mut raw = common::raw(server).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// A subscription to a channel without a hash tag (the fill channel) listens on every node; once
/// its last receiver is gone, every node's subscription connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_leaves_no_connection_open_on_any_node() {
    let servers = servers();
    let store = sharded(&servers).await;
    let events = store
        .subscribe("herdwise:fills:shd-drop")
        .expect("a subscription");
    let listening = common::eventually(Duration::from_secs(5), async || {
        let mut each = Vec::new();
        for server in &servers {
            each.push(pubsub_clients(server).await);
        }
        each.iter().all(|n| *n == 1)
    })
    .await;
    assert!(listening, "one subscriber connection on every node");
    drop(events);
    let closed = common::eventually(Duration::from_secs(10), async || {
        let mut open = 0;
        for server in &servers {
            open += pubsub_clients(server).await;
        }
        open == 0
    })
    .await;
    assert!(
        closed,
        "every node's subscription ends with its last receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_tag_events_of_one_instance_never_look_like_a_gap() {
    let servers = servers();
    let a = Cache::<u64, String>::builder("shd-seq")
        .store(sharded(&servers).await)
        .build()
        .unwrap();
    let store_b = sharded(&servers).await;
    let (b, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("shd-seq").store(store_b));
    b.get(&0).await.unwrap();
    a.get(&0).await.unwrap();
    // Both listening: a write on A reaches B.
    let heard = common::eventually(Duration::from_secs(10), async || {
        a.set(&u64::MAX, "ping".to_string()).await.unwrap();
        common::counter(&metrics, herdwise::metrics::BACKPLANE_RECEIVED, &[]) > 0
    })
    .await;
    assert!(heard, "B hears A");
    let before = common::counter(&metrics, herdwise::metrics::BACKPLANE_RECEIVED, &[]);
    // Key events and tag events from one sender, interleaved as fast as they go.
    for round in 0..200u64 {
        a.set(&round, "v".to_string()).await.unwrap();
        a.invalidate_tag(&format!("t{}", round % 7)).await.unwrap();
    }
    let all = common::eventually(Duration::from_secs(10), async || {
        common::counter(&metrics, herdwise::metrics::BACKPLANE_RECEIVED, &[]) >= before + 400
    })
    .await;
    let got = common::counter(&metrics, herdwise::metrics::BACKPLANE_RECEIVED, &[]) - before;
    assert!(all, "B received all 400 events ({got})");
    assert_eq!(
        common::counter(
            &metrics,
            herdwise::metrics::BACKPLANE_RESETS,
            &[("reason", "gap")]
        ),
        0,
        "events of one sender arrive in order"
    );
}

/// A prefix invalidation whose L2 walk fails on one node (dead) still deletes what the live
/// nodes hold, tells every instance (their L1 copies go), and is retried; the caller gets the
/// error. Before, the failed walk returned early: no announcement, no retry, and another
/// instance served the invalidated values from L1 for the rest of their life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_invalidation_that_fails_part_way_still_reaches_every_instance() {
    let mut servers = servers();
    let store = sharded(&servers).await;
    let build = |store: ShardedStore| {
        Cache::<(u64, u64), String>::builder("pfx")
            .store(store)
            .no_circuit_breaker()
            .build()
            .unwrap()
    };
    let (a, b) = (build(store.clone()), build(sharded(&servers).await));
    let home = store.node_of("herdwise:{ns:pfx}:inv").to_string();
    let dead = (0..3).find(|i| format!("node-{i}") != home).unwrap();
    let keys: Vec<(u64, u64)> = (0..60).map(|i| (7, i)).collect();
    for key in &keys {
        a.set(key, "old".to_string()).await.unwrap();
    }
    for key in &keys {
        assert_eq!(
            b.get(key).await.unwrap().as_deref().map(String::as_str),
            Some("old")
        );
    }
    servers[dead].kill();
    assert!(
        a.invalidate_prefix(&7u64).await.is_err(),
        "the walk failed on a dead node"
    );
    let served_old = async || {
        let mut on = Vec::new();
        for key in &keys {
            if let Ok(Some(v)) = b.get(key).await {
                if v.as_str() == "old" {
                    on.push(store.node_of(&b.stored_key(key).unwrap()).to_string());
                }
            }
        }
        on
    };
    let gone = common::eventually(Duration::from_secs(3), async || {
        served_old().await.is_empty()
    })
    .await;
    assert!(
        gone,
        "another instance still serves invalidated values (home {home}, dead node-{dead}): {:?}",
        served_old().await
    );
}

/// Writes go to their keys' nodes and events to the channel's: many tasks of one instance
/// writing at once must still never look like lost events to a listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_instance_never_look_like_a_gap() {
    let servers = servers();
    let writer = Cache::<u64, String>::builder("shd-conc")
        .store(sharded(&servers).await)
        .build()
        .unwrap();
    let store_b = sharded(&servers).await;
    let (listener, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("shd-conc").store(store_b));
    common::concurrent_writes_never_look_like_a_gap("sharded", &writer, &listener, &metrics, 2_000)
        .await;
}
