//! The public [`Cache`]: composes key space, L1, single-flight, the remote tier and the loader.
//!
//! One read, in order: L1 → single-flight → L2 (under a deadline) → loader → write L2, fill L1.
//! Each step is a separate module; this file only decides the order and what a failure of each
//! step means (a store failure is a miss; a loader failure is the caller's error, never cached).

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;

use crate::builder::CacheBuilder;
use crate::codec::Codec;
use crate::envelope::{self, Compression, EnvelopeError, Meta};
use crate::error::{Error, Result};
use crate::flight::{Flights, Join};
use crate::freshness::{now_ms, TtlPolicy};
use crate::key::{CacheKey, KeySpace};
use crate::lease::{FillWaiters, HeldLease, LeaseConfig};
use crate::local::LocalTier;
use crate::metrics::CacheMetrics;
use crate::remote::Remote;
use crate::store::{FillOutcome, SetOutcome};

/// What one load hands to every coalesced caller.
type LoadResult<V> = Result<Option<Arc<V>>>;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOutcome {
    /// Written to L2 and L1.
    Stored,
    /// L2 holds a higher value version; nothing was written and L1 dropped the key.
    RefusedOlder,
    /// L2 could not be written (down or too slow: counted and logged); L1 holds the value, and
    /// other instances keep what they had until its TTL.
    LocalOnly,
}

/// How a write reaches L2.
#[derive(Clone, Copy)]
enum WriteMode {
    /// Unconditional SET (an explicit cache-aside write).
    Overwrite,
    /// Refused if L2 holds a higher value version (fills and versioned writes).
    IfNotOlder,
}

pub(crate) struct Inner<V> {
    pub keys: KeySpace,
    pub l1: LocalTier<V>,
    pub remote: Remote,
    pub flights: Flights<LoadResult<V>>,
    pub codec: Arc<dyn Codec<V>>,
    pub ttl: TtlPolicy,
    pub compression: Compression,
    pub max_value_bytes: usize,
    pub metrics: CacheMetrics,
    /// `None`: no cross-instance coordination (in-process single-flight only).
    pub lease: Option<LeaseConfig>,
    pub fill_waiters: Arc<FillWaiters>,
}

/// How a loaded value goes into L2.
enum FillMode {
    /// Through the fenced fill: written only while our lease holds.
    Leased(HeldLease),
    /// Version-checked write without a lease (leases off, L2 failing, or a waiter that gave up).
    Unleased,
}

/// What trying to take a lease found.
enum LeaseAttempt<V> {
    /// Ours: load and fill.
    Taken(HeldLease),
    /// Someone filled the key just before: use that.
    Filled(Option<Arc<V>>),
    /// Another instance holds it.
    Held,
    /// L2 did not answer.
    Failed,
}

/// How waiting for another instance's fill ended.
enum Waited<V> {
    /// The fill arrived (or another usable entry).
    Value(Option<Arc<V>>),
    /// The holder gave up its lease and we took it.
    Lease(HeldLease),
    /// Deadline passed, or L2 failed: load without a lease.
    Unleased,
}

/// A typed, multi-tier, read-through cache.
///
/// `K` is the key type ([`CacheKey`]; may be unsized, e.g. `str`), `V` the value type. Values are
/// shared: every read returns an `Arc<V>`, never a clone of the value. `Cache` is cheap to clone
/// (clones share everything).
///
/// ```
/// use herdwise::Cache;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herdwise::Error> {
/// // No `.store(..)`: an embedded in-memory L2 is used.
/// let cache: Cache<u64, String> = Cache::builder("users").ttl(Duration::from_secs(60)).build()?;
///
/// let name = cache
///     .get_or_load(&7, |id| async move { Ok::<_, std::io::Error>(Some(format!("user-{id}"))) })
///     .await?;
/// assert_eq!(name.as_deref().map(String::as_str), Some("user-7"));
///
/// cache.invalidate(&7).await?;
/// assert_eq!(cache.get(&7).await?, None);
/// # Ok(()) }
/// ```
pub struct Cache<K: ?Sized, V> {
    inner: Arc<Inner<V>>,
    _key: PhantomData<fn(&K)>,
}

impl<K: ?Sized, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            _key: PhantomData,
        }
    }
}

impl<K: ?Sized, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.keys.namespace())
            .field("store", &self.inner.remote.store())
            .field("l1_bytes", &self.inner.l1.weight())
            .finish_non_exhaustive()
    }
}

enum Lookup<V> {
    Hit(Option<Arc<V>>),
    Miss(String),
}

thread_local! {
    /// Reused buffer for building stored keys, so an L1 hit allocates nothing.
    static KEY_BUF: RefCell<String> = RefCell::new(String::with_capacity(128));
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// Starts configuring a cache for `namespace` (`[A-Za-z0-9_.-]{1,64}`).
    pub fn builder(namespace: &str) -> CacheBuilder<K, V> {
        CacheBuilder::new(namespace)
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    pub(crate) fn from_inner(inner: Inner<V>) -> Self {
        Cache {
            inner: Arc::new(inner),
            _key: PhantomData,
        }
    }

    /// Reads `key` from L1, then L2. Never calls an origin. `Ok(None)` for a miss and for a
    /// negative entry alike.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<str, u32> = herdwise::Cache::builder("docs").build()?;
    /// assert_eq!(cache.get("a").await?, None);
    /// cache.set("a", 1).await?;
    /// assert_eq!(cache.get("a").await?.as_deref(), Some(&1));
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &K) -> Result<Option<Arc<V>>> {
        let stored_key = match self.lookup_l1(key)? {
            Lookup::Hit(value) => return Ok(value),
            Lookup::Miss(stored_key) => stored_key,
        };
        match self.read_l2(&stored_key).await {
            Some(value) => Ok(value),
            None => {
                self.inner.metrics.misses.increment(1);
                Ok(None)
            }
        }
    }

    /// Reads `key` through L1 and L2; on a miss, calls `loader` — once per key per process,
    /// however many callers ask at the same time — and caches what it returns.
    ///
    /// `Ok(Some(v))` is cached for the TTL; `Ok(None)` ("not at the origin") is cached as a
    /// negative entry for the negative TTL; `Err(e)` is returned to every waiting caller and
    /// never cached. If the leading caller is cancelled, a waiting caller takes over with its own
    /// loader; if the loader panics, every caller gets [`Error::LoaderPanicked`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Product { id: u64, name: String }
    ///
    /// let cache: herdwise::Cache<u64, Product> = herdwise::Cache::builder("catalog").build()?;
    /// let p = cache
    ///     .get_or_load(&42, |id| async move {
    ///         // the origin: a database query, an HTTP call, ...
    ///         Ok::<_, std::io::Error>(Some(Product { id: *id, name: "lamp".into() }))
    ///     })
    ///     .await?;
    /// assert_eq!(p.map(|p| p.name.clone()).as_deref(), Some("lamp"));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<'k, F, Fut, E>(&self, key: &'k K, loader: F) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: std::error::Error + Send + Sync + 'static,
    {
        let stored_key = match self.lookup_l1(key)? {
            Lookup::Hit(value) => return Ok(value),
            Lookup::Miss(stored_key) => stored_key,
        };
        loop {
            match self.inner.flights.join(&stored_key) {
                Join::Leader(leader) => {
                    let result = self.lead(&stored_key, key, loader).await;
                    leader.complete(result.clone());
                    return result;
                }
                Join::Waiter(waiter) => {
                    self.inner.metrics.coalesced_waits.increment(1);
                    if let Some(result) = waiter.wait().await {
                        return result;
                    }
                    // The leader was cancelled: go round again, possibly as the new leader.
                }
                Join::Bypass => {
                    self.inner.metrics.flight_bypass.increment(1);
                    return self.lead(&stored_key, key, loader).await;
                }
            }
        }
    }

    /// Cache-aside write: stores `value` in L2 and L1, unconditionally, for the cache's TTL.
    ///
    /// A value larger than `max_value_bytes` (or one the codec cannot encode) is an error, and
    /// the key is invalidated so that the old value is not served in its place.
    pub async fn set(&self, key: &K, value: impl Into<Arc<V>>) -> Result<WriteOutcome> {
        let stored_key = self.inner.keys.stored_key(key)?;
        self.write(&stored_key, value.into(), 0, WriteMode::Overwrite)
            .await
    }

    /// Versioned write: stores `value` unless L2 holds the key with a higher `version` (checked
    /// and written in one atomic step), so an old value can never overwrite a newer one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::WriteOutcome;
    /// let cache: herdwise::Cache<str, String> = herdwise::Cache::builder("docs").build()?;
    /// assert_eq!(cache.set_versioned("doc", "v5".to_string(), 5).await?, WriteOutcome::Stored);
    /// assert_eq!(cache.set_versioned("doc", "v4".to_string(), 4).await?, WriteOutcome::RefusedOlder);
    /// assert_eq!(cache.get("doc").await?.as_deref().map(String::as_str), Some("v5"));
    /// # Ok(()) }
    /// ```
    pub async fn set_versioned(
        &self,
        key: &K,
        value: impl Into<Arc<V>>,
        version: u64,
    ) -> Result<WriteOutcome> {
        let stored_key = self.inner.keys.stored_key(key)?;
        self.write(&stored_key, value.into(), version, WriteMode::IfNotOlder)
            .await
    }

    /// Removes `key` from L1 and L2 (positive and negative entries alike).
    ///
    /// An L2 failure is logged and counted (`herdwise_store_errors_total{op="delete"}`), not
    /// returned: the entry's TTL is the safety net.
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        let stored_key = self.inner.keys.stored_key(key)?;
        self.inner.l1.remove(&stored_key);
        let _ = self.inner.remote.delete(&stored_key).await;
        // Dropping L1 again closes the window where a concurrent L2 read refilled it.
        self.inner.l1.remove(&stored_key);
        Ok(())
    }

    /// The key as stored in L2 (`namespace:v<schema>:<key>`), e.g. for `redis-cli`.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, ()> = herdwise::Cache::builder("users").build().unwrap();
    /// assert_eq!(cache.stored_key(&7).unwrap(), "users:v1:7");
    /// ```
    pub fn stored_key(&self, key: &K) -> Result<String> {
        Ok(self.inner.keys.stored_key(key)?)
    }

    /// The namespace this cache was built with.
    pub fn namespace(&self) -> &str {
        self.inner.keys.namespace()
    }

    /// Bytes currently charged to L1 (0 if L1 is disabled).
    pub fn l1_bytes(&self) -> u64 {
        self.inner.l1.weight()
    }

    /// The L1 byte bound (0 if L1 is disabled).
    pub fn l1_max_bytes(&self) -> u64 {
        self.inner.l1.capacity()
    }

    /// Entries in L1.
    pub fn l1_len(&self) -> usize {
        self.inner.l1.len()
    }

    fn lookup_l1(&self, key: &K) -> Result<Lookup<V>> {
        let inner = &*self.inner;
        let lookup = |buf: &mut String| -> Result<Lookup<V>> {
            inner.keys.write(key, buf)?;
            Ok(match inner.l1.get(buf) {
                Some(entry) => {
                    inner.metrics.l1_hits.increment(1);
                    Lookup::Hit(entry.value)
                }
                None => Lookup::Miss(buf.clone()),
            })
        };
        KEY_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => lookup(&mut buf),
            // Re-entered from inside a key's encoder: use a fresh buffer.
            Err(_) => lookup(&mut String::new()),
        })
    }

    /// The leader's work for one key: re-check L1, then L2, then (under the cross-instance
    /// lease when enabled) load.
    async fn lead<'k, F, Fut, E>(&self, stored_key: &str, key: &'k K, loader: F) -> LoadResult<V>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: std::error::Error + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        // A previous leader may have filled L1 between our miss and our election.
        if let Some(entry) = inner.l1.get(stored_key) {
            inner.metrics.l1_hits.increment(1);
            return Ok(entry.value);
        }
        if let Some(found) = self.read_l2(stored_key).await {
            return Ok(found);
        }
        inner.metrics.misses.increment(1);
        let Some(lease) = inner.lease else {
            return self.load(stored_key, key, loader, FillMode::Unleased).await;
        };
        let mode = match self.take_lease(stored_key, &lease).await {
            LeaseAttempt::Taken(held) => {
                inner.metrics.leases_acquired.increment(1);
                FillMode::Leased(held)
            }
            LeaseAttempt::Filled(found) => return Ok(found),
            LeaseAttempt::Held => {
                inner.metrics.leases_held.increment(1);
                match self.wait_for_fill(stored_key, &lease).await {
                    Waited::Value(found) => return Ok(found),
                    Waited::Lease(held) => {
                        inner.metrics.lease_takeovers.increment(1);
                        FillMode::Leased(held)
                    }
                    Waited::Unleased => FillMode::Unleased,
                }
            }
            // L2 cannot coordinate (down, slow): load uncoordinated rather than fail.
            LeaseAttempt::Failed => FillMode::Unleased,
        };
        self.load(stored_key, key, loader, mode).await
    }

    /// Tries to take the key's lease. Having taken it, re-reads L2: the previous holder may have
    /// filled and released between our read and our lease, and loading again would be a second
    /// origin call for the same expiry.
    async fn take_lease(&self, stored_key: &str, lease: &LeaseConfig) -> LeaseAttempt<V> {
        let remote = &self.inner.remote;
        let token: u64 = rand::random();
        match remote.try_lease(stored_key, token, lease.ttl).await {
            Ok(true) => {
                let held =
                    HeldLease::new(remote.store().clone(), stored_key, token, remote.deadline());
                match self.read_l2(stored_key).await {
                    Some(found) => {
                        self.release(FillMode::Leased(held)).await;
                        LeaseAttempt::Filled(found)
                    }
                    None => LeaseAttempt::Taken(held),
                }
            }
            Ok(false) => LeaseAttempt::Held,
            Err(_) => LeaseAttempt::Failed,
        }
    }

    /// Waits for the instance holding the lease to fill the key: woken by its announcement,
    /// re-checking every poll interval, for at most the lease's wait deadline.
    async fn wait_for_fill(&self, stored_key: &str, lease: &LeaseConfig) -> Waited<V> {
        let registration = self.inner.fill_waiters.register(stored_key);
        let deadline = tokio::time::Instant::now() + lease.wait;
        loop {
            // Armed before checking, so a fill between the check and the wait is not missed.
            let notified = registration.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.read_l2(stored_key).await {
                return Waited::Value(found);
            }
            match self.take_lease(stored_key, lease).await {
                LeaseAttempt::Taken(held) => return Waited::Lease(held),
                LeaseAttempt::Filled(found) => return Waited::Value(found),
                LeaseAttempt::Held => {}
                LeaseAttempt::Failed => return Waited::Unleased,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.inner.metrics.lease_wait_timeouts.increment(1);
                tracing::debug!(
                    key = stored_key,
                    "gave up waiting for another instance's fill"
                );
                return Waited::Unleased;
            }
            let pause = lease.poll.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn load<'k, F, Fut, E>(
        &self,
        stored_key: &str,
        key: &'k K,
        loader: F,
        mode: FillMode,
    ) -> LoadResult<V>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: std::error::Error + Send + Sync + 'static,
    {
        let metrics = &self.inner.metrics;
        metrics.loads.increment(1);
        let started = Instant::now();
        // The loader is called inside the guarded future, so a panic while *building* the
        // future is caught too.
        let outcome = AssertUnwindSafe(async move { loader(key).await })
            .catch_unwind()
            .await;
        let load_duration = started.elapsed();
        let value = match outcome {
            Err(_panic) => {
                metrics.load_panics.increment(1);
                tracing::error!(key = stored_key, "loader panicked; nothing cached");
                self.release(mode).await;
                return Err(Error::LoaderPanicked);
            }
            Ok(Err(err)) => {
                metrics.load_errors.increment(1);
                tracing::debug!(key = stored_key, error = %err, "loader failed; nothing cached");
                self.release(mode).await;
                return Err(Error::Loader(Arc::new(err)));
            }
            Ok(Ok(value)) => value.map(Arc::new),
        };
        if value.is_none() && self.inner.ttl.negative_ttl.is_none() {
            self.release(mode).await;
            return Ok(None);
        }
        self.fill(stored_key, value.as_ref(), load_duration, mode)
            .await;
        if value.is_none() {
            metrics.negative_stored.increment(1);
        }
        Ok(value)
    }

    /// Gives a lease back after a load that produced nothing to cache.
    async fn release(&self, mode: FillMode) {
        if let FillMode::Leased(held) = mode {
            let _ = self
                .inner
                .remote
                .release_lease(held.key(), held.token)
                .await;
            held.disarm();
        }
    }

    /// Caches what a loader produced. A value that cannot be cached is still returned to the
    /// callers; it is only counted and logged here.
    async fn fill(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        load_duration: Duration,
        mode: FillMode,
    ) {
        let inner = &*self.inner;
        let ttl = match value {
            Some(_) => inner.ttl.ttl,
            None => match inner.ttl.negative_ttl {
                Some(ttl) => ttl,
                None => return self.release(mode).await,
            },
        };
        let encoded = match self.encode_entry(value, ttl, 0, load_duration) {
            Ok(encoded) => encoded,
            Err(err) => {
                match err {
                    Error::ValueTooLarge { .. } => inner.metrics.too_large.increment(1),
                    _ => inner.metrics.encode_failures.increment(1),
                }
                tracing::warn!(key = stored_key, error = %err, "loaded value not cached");
                return self.release(mode).await;
            }
        };
        let held = match mode {
            // A fill carries no version: it never replaces a versioned entry.
            FillMode::Unleased => {
                let _ = self
                    .store_encoded(stored_key, value, encoded, WriteMode::IfNotOlder)
                    .await;
                return;
            }
            FillMode::Leased(held) => held,
        };
        let size = encoded.bytes.len();
        let filled = inner
            .remote
            .fill_leased(
                stored_key,
                encoded.bytes,
                encoded.ttl,
                encoded.meta.version,
                held.token,
                inner.fill_waiters.channel(),
            )
            .await;
        match filled {
            Ok(FillOutcome::Stored) => {
                held.disarm();
                let l1_ttl = inner.ttl.l1_ttl(&encoded.meta, encoded.now);
                inner.l1.insert(
                    stored_key,
                    value.cloned(),
                    encoded.meta.version,
                    size,
                    l1_ttl,
                );
            }
            Ok(FillOutcome::RefusedOlder) => {
                held.disarm();
                inner.metrics.fills_refused_older.increment(1);
                inner.l1.remove(stored_key);
            }
            Ok(FillOutcome::LeaseLost) => {
                // The key was written or invalidated while we loaded: what we loaded may be
                // older than the origin now. Callers get it; no tier keeps it.
                held.disarm();
                inner.metrics.fills_refused_lease_lost.increment(1);
                tracing::debug!(
                    key = stored_key,
                    "fill refused: lease voided during the load"
                );
            }
            Err(_) => {
                // L2 is failing: keep the value in this process only; the lease (if it still
                // exists) is released in the background or expires.
                let l1_ttl = inner.ttl.l1_ttl(&encoded.meta, encoded.now);
                inner.l1.insert(
                    stored_key,
                    value.cloned(),
                    encoded.meta.version,
                    size,
                    l1_ttl,
                );
            }
        }
    }

    async fn write(
        &self,
        stored_key: &str,
        value: Arc<V>,
        version: u64,
        mode: WriteMode,
    ) -> Result<WriteOutcome> {
        let encoded =
            match self.encode_entry(Some(&value), self.inner.ttl.ttl, version, Duration::ZERO) {
                Ok(encoded) => encoded,
                Err(err) => {
                    // The caller meant to replace the value: do not keep serving the old one.
                    self.inner.l1.remove(stored_key);
                    let _ = self.inner.remote.delete(stored_key).await;
                    return Err(err);
                }
            };
        Ok(self
            .store_encoded(stored_key, Some(&value), encoded, mode)
            .await)
    }

    /// Envelope bytes for `value` (`None` = negative entry) with a jittered `ttl`.
    fn encode_entry(
        &self,
        value: Option<&Arc<V>>,
        ttl: Duration,
        version: u64,
        load_duration: Duration,
    ) -> Result<Encoded> {
        let inner = &*self.inner;
        let payload = match value {
            Some(v) => inner
                .codec
                .encode(v)
                .map_err(|e| Error::Encode(e.to_string().into()))?,
            None => Vec::new(),
        };
        if payload.len() > inner.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: payload.len(),
                limit: inner.max_value_bytes,
            });
        }
        let ttl = inner.ttl.jittered(ttl);
        let now = now_ms();
        let meta = inner.ttl.meta(
            now,
            ttl,
            load_duration,
            version,
            value.is_none(),
            inner.codec.id(),
        );
        let bytes = Bytes::from(envelope::encode(&meta, &payload, inner.compression));
        Ok(Encoded {
            bytes,
            meta,
            ttl,
            now,
        })
    }

    /// Writes encoded bytes to L2, then mirrors the outcome in L1.
    async fn store_encoded(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        encoded: Encoded,
        mode: WriteMode,
    ) -> WriteOutcome {
        let inner = &*self.inner;
        let size = encoded.bytes.len();
        let remote = match mode {
            WriteMode::Overwrite => inner
                .remote
                .set(stored_key, encoded.bytes, encoded.ttl)
                .await
                .map(|()| SetOutcome::Stored),
            WriteMode::IfNotOlder => {
                inner
                    .remote
                    .set_if_not_older(stored_key, encoded.bytes, encoded.ttl, encoded.meta.version)
                    .await
            }
        };
        let outcome = match remote {
            Ok(SetOutcome::Stored) => WriteOutcome::Stored,
            Ok(SetOutcome::RefusedOlder) => {
                inner.l1.remove(stored_key);
                return WriteOutcome::RefusedOlder;
            }
            Err(_) => WriteOutcome::LocalOnly,
        };
        let l1_ttl = inner.ttl.l1_ttl(&encoded.meta, encoded.now);
        inner.l1.insert(
            stored_key,
            value.cloned(),
            encoded.meta.version,
            size,
            l1_ttl,
        );
        outcome
    }

    /// An L2 lookup that fills L1 on a hit. `None` = nothing usable (miss, failure, expired or
    /// corrupt — the latter deleted and counted); `Some(None)` = a negative entry.
    async fn read_l2(&self, stored_key: &str) -> Option<Option<Arc<V>>> {
        let inner = &*self.inner;
        let bytes = inner.remote.get(stored_key).await?;
        let now = now_ms();
        match self.decode_entry(&bytes) {
            Ok((meta, value)) => {
                if meta.fresh_until_ms <= now {
                    return None;
                }
                inner.metrics.l2_hits.increment(1);
                let l1_ttl = inner.ttl.l1_ttl(&meta, now);
                inner
                    .l1
                    .insert(stored_key, value.clone(), meta.version, bytes.len(), l1_ttl);
                Some(value)
            }
            Err(reason) => {
                inner.metrics.corrupt_entries.increment(1);
                tracing::warn!(
                    namespace = inner.keys.namespace(),
                    key = stored_key,
                    %reason,
                    "corrupt cache entry: treated as a miss and deleted"
                );
                let _ = inner.remote.delete(stored_key).await;
                None
            }
        }
    }

    fn decode_entry(&self, bytes: &[u8]) -> std::result::Result<(Meta, Option<Arc<V>>), String> {
        let inner = &*self.inner;
        let (meta, payload) =
            envelope::decode(bytes, inner.max_value_bytes).map_err(|e| e.to_string())?;
        if meta.codec_id != inner.codec.id() {
            return Err(EnvelopeError::CodecMismatch {
                found: meta.codec_id,
                expected: inner.codec.id(),
            }
            .to_string());
        }
        if meta.negative {
            return Ok((meta, None));
        }
        let value = inner.codec.decode(&payload).map_err(|e| e.to_string())?;
        Ok((meta, Some(Arc::new(value))))
    }
}

/// An entry ready to be written.
struct Encoded {
    bytes: Bytes,
    meta: Meta,
    /// The jittered TTL, also the L2 expiry.
    ttl: Duration,
    /// When `meta` was computed (unix ms).
    now: u64,
}
