//! Hot-key copies on a 3-primary Redis Cluster: without copies, every L2 read of one hot key
//! lands on one primary; with copies (each on a slot of its own), the reads spread over all
//! three. Measured with `INFO commandstats` per node (a cluster of its own, so that no other
//! test's commands are counted).

mod common;

use std::time::Duration;

use herdwise::{Cache, RedisStore};
use herdwise_testkit::RedisCluster;

/// `GET` calls per primary since the last `CONFIG RESETSTAT`.
fn gets_per_primary(cluster: &RedisCluster) -> Vec<u64> {
    cluster
        .primary_ports()
        .unwrap()
        .into_iter()
        .map(|port| {
            let stats = RedisCluster::cli(port, &["info", "commandstats"]).unwrap();
            stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Busiest node's share over the average node's.
fn busiest_over_average(calls: &[u64]) -> f64 {
    let total: u64 = calls.iter().sum();
    let max = calls.iter().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / calls.len() as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_copies_spread_one_keys_reads_over_the_primaries() {
    let cluster = RedisCluster::start(3, 0).unwrap();
    let mut ratios = Vec::new();
    for copies in [0u8, 8] {
        let store = RedisStore::builder(&cluster.url())
            .call_timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        let builder = Cache::<u64, String>::builder(&format!("clh{copies}"))
            .store(store)
            .l1_max_bytes(0)
            .hot_keys(2)
            .no_hot_key_shield();
        let cache = if copies > 0 {
            builder.hot_key_replicas(copies, Duration::from_secs(30))
        } else {
            builder
        }
        .build()
        .unwrap();
        cache.set(&7, "hot".to_string()).await.unwrap();
        // Warm-up: the key becomes hot, and its copies are made.
        for _ in 0..2000 {
            cache.get(&7).await.unwrap();
        }
        for port in cluster.primary_ports().unwrap() {
            RedisCluster::cli(port, &["config", "resetstat"]).unwrap();
        }
        for _ in 0..3000 {
            assert!(cache.get(&7).await.unwrap().is_some());
        }
        let calls = gets_per_primary(&cluster);
        let ratio = busiest_over_average(&calls);
        eprintln!(
            "hot key, {copies} copies: GET calls per primary {calls:?}, busiest/average {ratio:.2}"
        );
        ratios.push(ratio);
    }
    assert!(
        ratios[0] > 2.5,
        "without copies one primary takes the reads: {ratios:?}"
    );
    assert!(ratios[1] < 1.3, "copies spread the reads: {ratios:?}");
}
