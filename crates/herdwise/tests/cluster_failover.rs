//! A Redis Cluster primary dies under load: its replica is promoted, and four instances keep
//! answering every read, follow the new topology, and see every write made after it. A cluster
//! of its own (the kill would disturb the shared one of `cluster.rs`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::OriginError;
use herdwise::{Cache, RedisStore, WriteOutcome};
use herdwise_testkit::RedisCluster;

async fn store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::builder(&cluster.url())
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect to the test cluster")
}

async fn cache(cluster: &RedisCluster) -> Cache<u64, String> {
    Cache::builder("clf")
        .store(store(cluster).await)
        .build()
        .unwrap()
}

/// The primary that holds `key` (a stored key).
fn primary_of(cluster: &RedisCluster, key: &str) -> u16 {
    for port in cluster.primary_ports().unwrap() {
        let out = RedisCluster::cli(port, &["exists", key]).unwrap();
        if out.trim() == "1" {
            return port;
        }
    }
    panic!("no primary holds {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_reads_never_fail() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        fleet.push(Arc::new(cache(&cluster).await));
    }
    for key in 0..100u64 {
        fleet[0].set(&key, format!("v{key}")).await.unwrap();
    }
    // The instance that writes after the kill has no breaker: when its writes resume shows how
    // fast the store follows the new topology, not when an open breaker's next probe is due
    // (up to its 2 s later).
    let writer: Cache<u64, String> = Cache::builder("clf")
        .store(store(&cluster).await)
        .no_circuit_breaker()
        .build()
        .unwrap();
    // The origin: key 0's row is updated after the failover (then the cache is written); every
    // other key reads `v<key>`.
    let row0 = Arc::new(parking_lot::RwLock::new("v0".to_string()));
    let failed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let loads = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(14);
    let mut readers = Vec::new();
    for (i, cache) in fleet.iter().enumerate() {
        let (cache, failed, reads, loads, slowest, row0) = (
            cache.clone(),
            failed.clone(),
            reads.clone(),
            loads.clone(),
            slowest.clone(),
            row0.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut n = i as u64 + 1;
            while Instant::now() < stop {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = (n >> 33) % 100;
                let (loads, row0) = (loads.clone(), row0.clone());
                let started = Instant::now();
                let got = cache
                    .get_or_load(&key, move |k| {
                        loads.fetch_add(1, Ordering::Relaxed);
                        let v = match k {
                            0 => row0.read().clone(),
                            k => format!("v{k}"),
                        };
                        async move { Ok::<_, OriginError>(Some(v)) }
                    })
                    .await;
                slowest.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                reads.fetch_add(1, Ordering::Relaxed);
                if got.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = primary_of(&cluster, "clf:v1:0");
    let loads_before = loads.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    cluster.node_mut(victim).unwrap().kill();
    let live: Vec<u16> = cluster
        .nodes()
        .iter()
        .map(|n| n.port())
        .filter(|p| *p != victim)
        .collect();
    // When the cluster itself has promoted the replica (a live node lists no failed primary).
    let promoted = tokio::task::spawn_blocking(move || {
        while killed_at.elapsed() < Duration::from_secs(30) {
            let nodes = RedisCluster::cli(live[0], &["cluster", "nodes"]).unwrap_or_default();
            let victim_failed = nodes
                .lines()
                .any(|l| l.contains(&format!(":{victim}@")) && l.contains(",fail"));
            let masters = nodes
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail"))
                .count();
            if victim_failed && masters == 3 {
                return Some(killed_at.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    // Key 0 lives on the killed primary: writes to it resume once the replica took over. (Its
    // row is updated first: an instance whose breaker is still open loads it from the origin.)
    *row0.write() = "after".to_string();
    let mut resumed = None;
    while killed_at.elapsed() < Duration::from_secs(20) {
        if matches!(
            writer.set(&0, "after".to_string()).await,
            Ok(WriteOutcome::Stored)
        ) {
            resumed = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = promoted.await.unwrap();
    let resumed = resumed.expect("writes to the killed primary's slots resumed");
    assert_ne!(primary_of(&cluster, "clf:v1:0"), victim);
    for cache in &fleet {
        assert!(
            common::eventually(Duration::from_secs(5), async || {
                cache.get(&0).await.unwrap().as_deref().map(String::as_str) == Some("after")
            })
            .await,
            "an instance did not see the write made after the failover"
        );
    }
    for reader in readers {
        reader.await.unwrap();
    }
    eprintln!(
        "cluster failover: {} reads, {} failed, slowest {} ms, origin loads {} (before the kill \
         {loads_before}), replica promoted {promoted:?} and writes to the lost slots resumed \
         {resumed:?} after the kill",
        reads.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        slowest.load(Ordering::Relaxed) / 1000,
        loads.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "reads failed during the failover"
    );
    // The store follows the new topology within its watch period (500 ms), not whenever the
    // cluster client happens to rebuild its slot map (seen: 3 to over 20 s).
    let promoted = promoted.expect("the cluster promoted the replica");
    assert!(
        resumed < promoted + Duration::from_secs(2),
        "writes resumed {resumed:?} after the kill, the replica was promoted at {promoted:?}"
    );
}

/// The primary that serves the slot of `key` (the one that takes a write of it without MOVED).
fn owner_of_slot(cluster: &RedisCluster, key: &str) -> u16 {
    for port in cluster.primary_ports().unwrap() {
        let out = RedisCluster::cli(port, &["set", key, "1", "px", "60000"]).unwrap();
        if out.trim() == "OK" {
            return port;
        }
    }
    panic!("no primary serves the slot of {key}");
}

/// While the primary that serves the invalidation channel's slot is dead, and before the cluster
/// has promoted its replica, an invalidation still reaches the other instances at once: classic
/// pub/sub reaches every node, and the cluster client sends a `PUBLISH` it cannot deliver to the
/// slot's primary through another node. (A property, not a fix: it held when first tested.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_travel_while_the_channels_primary_is_dead() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let owner = owner_of_slot(&cluster, "{ns:clf-pub}:probe");
    // B's subscription sits on a live node: its seeds start with one (the subscriber takes the
    // first seed), so B hears nothing of the kill itself and must be told.
    let others: Vec<u16> = cluster
        .primary_ports()
        .unwrap()
        .into_iter()
        .filter(|p| *p != owner)
        .collect();
    let seeds: Vec<String> = others.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let connect = |url: String| async move {
        let store = RedisStore::builder(&url)
            .call_timeout(Duration::from_millis(200))
            .connect()
            .await
            .expect("connect to the test cluster");
        Cache::<u64, String>::builder("clf-pub")
            .store(store)
            .build()
            .unwrap()
    };
    let a = connect(format!("redis+cluster://{}", seeds.join(","))).await;
    let b = connect(format!("redis+cluster://{}", seeds.join(","))).await;
    // A key that lives on a live primary, held in B's L1.
    let key = (0..100u64)
        .find(|k| {
            let stored = a.stored_key(k).unwrap();
            let slot_owner = owner_of_slot(&cluster, &format!("{{{stored}}}"));
            slot_owner != owner
        })
        .unwrap();
    a.set(&key, "old".to_string()).await.unwrap();
    assert_eq!(
        b.get(&key).await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.node_mut(owner).unwrap().kill();
    let killed = Instant::now();
    a.invalidate(&key).await.unwrap();
    let mut dropped = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if b.get(&key).await.unwrap().is_none() {
            dropped = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = dropped.expect("B dropped the invalidated key");
    eprintln!("invalidation seen by B {dropped:?} after the channel's primary was killed");
    assert!(
        dropped < Duration::from_millis(700),
        "B kept the invalidated value for {dropped:?} (the failover itself takes seconds)"
    );
}

/// The primary an instance's subscription depends on dies (pub/sub: the node it is subscribed
/// on; streams: the primary of the event stream's slot). The subscription is re-established
/// (pub/sub: on the next seed; streams: on the promoted replica), and the invalidation made
/// while it was down reaches the instance: read from the stream, or — for pub/sub, which cannot
/// replay — by treating the move as a possible gap that makes its L1 check against L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_on_a_dead_primary_moves_and_misses_nothing() {
    use herdwise::{metrics as m, BackplaneTransport};
    for transport in ["pubsub", "streams"] {
        let mut cluster = RedisCluster::start(3, 1).unwrap();
        let namespace = format!("clf-sub-{transport}");
        let mut ports = cluster.primary_ports().unwrap();
        let victim = match transport {
            "pubsub" => ports[0],
            _ => owner_of_slot(&cluster, &format!("herdwise:{{ns:{namespace}}}:probe")),
        };
        // The victim is the first seed: the pub/sub subscriber takes it.
        ports.sort_by_key(|p| *p != victim);
        let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let url = format!("redis+cluster://{}", seeds.join(","));
        let connect = || async {
            RedisStore::builder(&url)
                .call_timeout(Duration::from_millis(200))
                .connect()
                .await
                .expect("connect to the test cluster")
        };
        let builder = |store: RedisStore| {
            let builder = Cache::<u64, String>::builder(&namespace).store(store);
            match transport {
                "pubsub" => builder,
                _ => builder.backplane_transport(BackplaneTransport::Streams { max_len: 1_000 }),
            }
        };
        let a = builder(connect().await).build().unwrap();
        let store_b = connect().await;
        let (b, metrics) = common::with_metrics(|| builder(store_b.clone()));
        for key in 0..10u64 {
            a.set(&key, format!("v{key}")).await.unwrap();
        }
        // A's announcements of its writes have arrived; then B holds every key in L1.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for key in 0..10u64 {
            assert!(b.get(&key).await.unwrap().is_some());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b.l1_len(), 10);
        cluster.node_mut(victim).unwrap().kill();
        let killed = Instant::now();
        a.invalidate(&1).await.unwrap();
        assert!(
            common::eventually(Duration::from_secs(20), async || b
                .get(&1)
                .await
                .unwrap()
                .is_none())
            .await,
            "{transport}: B kept the key invalidated while its subscription was down"
        );
        let seen = killed.elapsed();
        let resets = |reason| common::counter(&metrics, m::BACKPLANE_RESETS, &[("reason", reason)]);
        eprintln!(
            "{transport}: invalidation seen {seen:?} after the kill; resets: {} lost, {} resubscribed",
            resets("subscription_lost"),
            resets("resubscribed")
        );
        if transport == "pubsub" {
            assert!(
                common::eventually(Duration::from_secs(10), async || resets("resubscribed")
                    >= 1)
                .await,
                "a moved pub/sub subscription is a possible gap"
            );
        }
        // Events arrive on the new topology.
        let received = common::counter(&metrics, m::BACKPLANE_RECEIVED, &[]);
        a.invalidate(&2).await.unwrap();
        assert!(
            common::eventually(Duration::from_secs(10), async || {
                common::counter(&metrics, m::BACKPLANE_RECEIVED, &[]) > received
            })
            .await,
            "{transport}: an invalidation after the failover did not reach B"
        );
        eprintln!(
            "{transport}: events flow again {:?} after the kill",
            killed.elapsed()
        );
    }
}
