//! Helpers shared by the integration tests: real Redis servers, counting loaders, metrics.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herdwise::{Cache, CacheBuilder, RedisStore};
use herdwise_testkit::RedisServer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

pub fn redis() -> RedisServer {
    RedisServer::start().expect("start a redis-server (scripts/test installs it)")
}

pub async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url())
        .await
        .expect("connect to the test redis")
}

/// A raw connection for inspecting and tampering with what the cache stored.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Counts calls; clones share the count.
#[derive(Clone, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("origin failed: {0}")]
pub struct OriginError(pub String);

/// A private metrics recorder's counters. The debugging snapshot drains counters (delta
/// semantics), so totals are accumulated here across snapshots.
pub struct Metrics {
    snapshotter: Snapshotter,
    totals: std::sync::Mutex<std::collections::HashMap<metrics_util::CompositeKey, u64>>,
}

/// Builds a cache whose metrics go to a private recorder, returning both.
pub fn with_metrics<K, V>(build: impl FnOnce() -> CacheBuilder<K, V>) -> (Cache<K, V>, Metrics)
where
    K: herdwise::CacheKey + ?Sized,
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let cache = metrics::with_local_recorder(&recorder, || build().build().unwrap());
    let metrics = Metrics {
        snapshotter,
        totals: Default::default(),
    };
    (cache, metrics)
}

/// The total of counter `name` over the series whose labels include all of `labels`.
pub fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut totals = metrics.totals.lock().unwrap();
    for (key, _, _, value) in metrics.snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            *totals.entry(key).or_insert(0) += n;
        }
    }
    totals
        .iter()
        .filter(|(key, _)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, n)| *n)
        .sum()
}

/// Polls `check` every 20 ms until it is true or `within` has passed.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Total `calls` of the given command in `INFO commandstats`.
pub async fn calls_of(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Kills every pub/sub connection of the server (as a network blip would).
pub async fn kill_pubsub_clients(conn: &mut redis::aio::MultiplexedConnection) {
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .unwrap();
}
