//! Helpers shared by the integration tests: real Redis servers, counting loaders, metrics.
#![allow(dead_code)]

pub mod contract;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herdwise::{Cache, CacheBuilder, RedisStore};
use herdwise_testkit::RedisServer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The ACL rule the README gives ("Connecting to your Redis"), word for word after the user
/// name and password; `tests/connect.rs` checks the README carries exactly this text, and the
/// standalone, Cluster and Sentinel tests connect with it.
pub const DOCUMENTED_ACL: &str = "~* &* +@read +@write +@scripting +@pubsub +@connection +@transaction +info +scan +time +role +cluster|slots";

/// The file's shared Redis Cluster (3 primaries, 3 replicas): started by the first test that
/// asks, stopped (by PID) when the last test holding it ends.
pub fn shared_cluster() -> Arc<herdwise_testkit::RedisCluster> {
    static SHARED: std::sync::Mutex<std::sync::Weak<herdwise_testkit::RedisCluster>> =
        std::sync::Mutex::new(std::sync::Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(
        herdwise_testkit::RedisCluster::start(3, 1)
            .expect("start a redis cluster (scripts/test installs redis-server and redis-tools)"),
    );
    *shared = Arc::downgrade(&cluster);
    cluster
}

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

/// A private metrics recorder's values. A debugging snapshot drains what it reports (counters
/// and gauges are swapped to 0), so counters are summed and gauges' latest values kept here
/// across snapshots.
pub struct Metrics {
    snapshotter: Snapshotter,
    seen: std::sync::Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    counters: std::collections::HashMap<metrics_util::CompositeKey, u64>,
    gauges: std::collections::HashMap<metrics_util::CompositeKey, f64>,
    histograms: std::collections::HashMap<metrics_util::CompositeKey, Vec<f64>>,
}

impl Metrics {
    fn take(&self) -> std::sync::MutexGuard<'_, Seen> {
        let mut seen = self.seen.lock().unwrap();
        // L1 hits are counted in per-thread stripes: hand them to the recorder first.
        herdwise::metrics::flush();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            match value {
                DebugValue::Counter(n) => *seen.counters.entry(key).or_insert(0) += n,
                // A snapshot swaps gauges to 0 too: 0 afterwards means "not set since".
                DebugValue::Gauge(v) if v.into_inner() != 0.0 => {
                    seen.gauges.insert(key, v.into_inner());
                }
                DebugValue::Gauge(_) => {
                    seen.gauges.entry(key).or_insert(0.0);
                }
                DebugValue::Histogram(values) => seen
                    .histograms
                    .entry(key)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
            }
        }
        seen
    }
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
        seen: Default::default(),
    };
    (cache, metrics)
}

fn matches(key: &metrics_util::CompositeKey, name: &str, labels: &[(&str, &str)]) -> bool {
    let key = key.key();
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

/// The total of counter `name` over the series whose labels include all of `labels`.
pub fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let seen = metrics.take();
    seen.counters
        .iter()
        .filter(|(key, _)| matches(key, name, labels))
        .map(|(_, n)| *n)
        .sum()
}

/// Every observation of histogram `name` in series whose labels include all of `labels`.
pub fn histogram(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let seen = metrics.take();
    seen.histograms
        .iter()
        .filter(|(key, _)| matches(key, name, labels))
        .flat_map(|(_, v)| v.iter().copied())
        .collect()
}

/// The names of every metric registered so far.
pub fn names(metrics: &Metrics) -> std::collections::BTreeSet<String> {
    let seen = metrics.take();
    seen.counters
        .keys()
        .chain(seen.gauges.keys())
        .chain(seen.histograms.keys())
        .map(|k| k.key().name().to_string())
        .collect()
}

/// The latest value of gauge `name` in a series whose labels include all of `labels`.
pub fn gauge(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let seen = metrics.take();
    seen.gauges
        .iter()
        .find(|(key, _)| matches(key, name, labels))
        .map(|(_, v)| *v)
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

/// A store that delegates to `inner` but takes `delete_delay` longer to invalidate (delete,
/// delete a prefix, bump a tag): an invalidation in slow motion (a slow network path, a pooled or cluster connection) while reads are answered at once.
#[derive(Debug, Clone)]
pub struct SlowDeletes<S> {
    pub inner: S,
    pub delete_delay: Duration,
    /// Fenced fills fail (as a Redis timing out on them would), for breaker tests.
    pub fail_fills: bool,
    /// Claims that a write and its event go in one round trip (as Redis on one server does),
    /// so the cache hands its announcements to the writes (which send both, in order).
    pub joint_writes: bool,
}

#[async_trait::async_trait]
impl<S: herdwise::Store + Clone> herdwise::Store for SlowDeletes<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn default_timeout(&self) -> Duration {
        self.inner.default_timeout()
    }
    fn publishes_with_writes(&self) -> bool {
        self.joint_writes
    }
    async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, herdwise::StoreError> {
        self.inner.get(key).await
    }
    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<bytes::Bytes>>, herdwise::StoreError> {
        self.inner.get_many(keys).await
    }
    async fn set(
        &self,
        key: &str,
        value: bytes::Bytes,
        ttl: Duration,
    ) -> Result<(), herdwise::StoreError> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_if_not_older(
        &self,
        key: &str,
        value: bytes::Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<herdwise::SetOutcome, herdwise::StoreError> {
        self.inner.set_if_not_older(key, value, ttl, version).await
    }
    async fn delete(&self, key: &str) -> Result<bool, herdwise::StoreError> {
        tokio::time::sleep(self.delete_delay).await;
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, herdwise::StoreError> {
        tokio::time::sleep(self.delete_delay).await;
        self.inner.delete_prefix(prefix).await
    }
    async fn try_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, herdwise::StoreError> {
        self.inner.try_lease(key, token, ttl).await
    }
    async fn try_lease_and_get(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<(bool, Option<bytes::Bytes>), herdwise::StoreError> {
        self.inner.try_lease_and_get(key, token, ttl).await
    }
    async fn fill_leased(
        &self,
        key: &str,
        value: bytes::Bytes,
        ttl: Duration,
        version: u64,
        token: u64,
        channel: &str,
    ) -> Result<herdwise::store::FillOutcome, herdwise::StoreError> {
        if self.fail_fills {
            return Err(herdwise::StoreError::Other("fill failed (test)".into()));
        }
        self.inner
            .fill_leased(key, value, ttl, version, token, channel)
            .await
    }
    async fn extend_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, herdwise::StoreError> {
        self.inner.extend_lease(key, token, ttl).await
    }
    async fn release_lease(&self, key: &str, token: u64) -> Result<(), herdwise::StoreError> {
        self.inner.release_lease(key, token).await
    }
    async fn open_fence(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<u64, herdwise::StoreError> {
        self.inner.open_fence(key, token, ttl).await
    }
    async fn fill_fenced(
        &self,
        key: &str,
        value: bytes::Bytes,
        ttl: Duration,
        version: u64,
        fence: u64,
        channel: &str,
    ) -> Result<herdwise::store::FillOutcome, herdwise::StoreError> {
        self.inner
            .fill_fenced(key, value, ttl, version, fence, channel)
            .await
    }
    async fn bump_tag(
        &self,
        table: &str,
        tag: &str,
        mark_ttl: Duration,
        announce: Option<herdwise::Announcement<'_>>,
    ) -> Result<u64, herdwise::StoreError> {
        tokio::time::sleep(self.delete_delay).await;
        self.inner.bump_tag(table, tag, mark_ttl, announce).await
    }
    async fn server_id(&self) -> Result<Option<String>, herdwise::StoreError> {
        self.inner.server_id().await
    }
    async fn read_tags(
        &self,
        table: &str,
        tags: &[&str],
        known_generation: u64,
    ) -> Result<herdwise::TagTable, herdwise::StoreError> {
        self.inner.read_tags(table, tags, known_generation).await
    }
    async fn advance_generation(
        &self,
        table: &str,
        at_least: u64,
    ) -> Result<u64, herdwise::StoreError> {
        self.inner.advance_generation(table, at_least).await
    }
    async fn publish(
        &self,
        channel: &str,
        message: bytes::Bytes,
    ) -> Result<(), herdwise::StoreError> {
        self.inner.publish(channel, message).await
    }
    async fn stream_append(
        &self,
        stream: &str,
        message: bytes::Bytes,
        max_len: usize,
    ) -> Result<(), herdwise::StoreError> {
        self.inner.stream_append(stream, message, max_len).await
    }
    fn stream_subscribe(
        &self,
        stream: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<herdwise::store::StoreEvent>> {
        self.inner.stream_subscribe(stream)
    }
    fn subscribe(
        &self,
        channel: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<herdwise::store::StoreEvent>> {
        self.inner.subscribe(channel)
    }
}

/// The server's count of read events: one per round trip a client sends (commands a client
/// pipelines concurrently may share one), one for the `INFO` that asks.
pub async fn reads_processed(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_reads_processed")
}

/// Writes `n` keys from `writer`, from many tasks at once, and checks that `listener` (built
/// by [`with_metrics`], whose recorder is `metrics`) heard every announcement without taking
/// any for a sign of lost events: however the writes race each other, one sender's events must
/// not look like a gap (a gap demotes every L1 entry of every listener). `label` names the
/// topology in the failure messages.
pub async fn concurrent_writes_never_look_like_a_gap(
    label: &str,
    writer: &Cache<u64, String>,
    listener: &Cache<u64, String>,
    metrics: &Metrics,
    n: u64,
) {
    use herdwise::metrics as m;
    // Both listening: a write on the writer reaches the listener.
    listener.get(&u64::MAX).await.unwrap();
    let heard = eventually(Duration::from_secs(10), async || {
        writer.set(&u64::MAX, "ping".to_string()).await.unwrap();
        counter(metrics, m::BACKPLANE_RECEIVED, &[]) > 0
    })
    .await;
    assert!(heard, "{label}: the listener hears the writer");
    let before = counter(metrics, m::BACKPLANE_RECEIVED, &[]);
    let gaps_before = counter(metrics, m::BACKPLANE_RESETS, &[("reason", "gap")]);
    const TASKS: u64 = 16;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for k in (t..n).step_by(TASKS as usize) {
                    writer.set(&k, format!("v{k}")).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let all = eventually(Duration::from_secs(10), async || {
        counter(metrics, m::BACKPLANE_RECEIVED, &[]) >= before + n
    })
    .await;
    let got = counter(metrics, m::BACKPLANE_RECEIVED, &[]) - before;
    assert!(all, "{label}: the listener received all {n} events ({got})");
    // Give a late event, or a gap's grace, time to settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counter(metrics, m::BACKPLANE_RESETS, &[("reason", "gap")]) - gaps_before,
        0,
        "{label}: {n} writes from {TASKS} tasks of one instance looked like lost events"
    );
}

/// A `tracing` writer that keeps what was logged, for tests that count log lines.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// How many times `text` was logged.
    pub fn count(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(text)
            .count()
    }
}
