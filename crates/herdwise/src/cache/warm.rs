//! Warming: loading keys before they are asked for — at startup (`warm`, `warm_with`, and the
//! `is_warm` readiness signal) and after the remote tier recovers from an outage (the staggered
//! re-warm).
//!
//! Every key is warmed through the ordinary read path (L1 → L2 → lease → loader → fenced fill),
//! so a key another instance already loaded costs an L2 read, not an origin call, and the origin
//! limit applies. Keys go hottest first (as the hot-key tracker ranks them), a bounded number at
//! a time, each after a random delay so that many instances warming together do not arrive in
//! step.
//!
//! After a recovery, Redis may have come back empty: re-warming every key at once would be the
//! second herd. The re-warm goes by popularity percentile instead — the top 1 % of the keys this
//! instance read lately, spread over the first stage; then the top 10 %; then the rest — while
//! L1 answers for the keys not reached yet (see `recovery`).

use std::borrow::Borrow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;

use crate::cache::entries::Fallback;
use crate::cache::read::LoadOptions;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::loader::SharedLoader;
use crate::metrics::{WarmOutcome, WarmTrigger};
use crate::tiers::key::CacheKey;
use crate::tiers::local::Standing;

/// How [`Cache::warm`] goes about it.
///
/// ```
/// use std::time::Duration;
/// let options = herdwise::WarmOptions::default()
///     .concurrency(4)
///     .jitter(Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct WarmOptions {
    concurrency: usize,
    jitter: Duration,
}

impl Default for WarmOptions {
    /// 8 keys at a time, no delay.
    fn default() -> Self {
        WarmOptions {
            concurrency: 8,
            jitter: Duration::ZERO,
        }
    }
}

impl WarmOptions {
    /// How many keys are loaded at once (at least 1).
    pub fn concurrency(mut self, keys: usize) -> Self {
        self.concurrency = keys.max(1);
        self
    }

    /// Each key waits a random time up to this long before it is loaded, so that instances
    /// started together do not ask the origin in step.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }
}

/// What a warm did, key by key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Loaded from the origin and cached.
    pub loaded: usize,
    /// Already cached (L1 or L2): nothing to load.
    pub cached: usize,
    /// Not at the origin (cached as a negative entry if negative caching is on).
    pub absent: usize,
    /// Invalid keys and failed loads (the origin's error, a timeout, `Overloaded`).
    pub failed: usize,
}

impl WarmReport {
    fn add(&mut self, outcome: WarmOutcome) {
        match outcome {
            WarmOutcome::Loaded => self.loaded += 1,
            WarmOutcome::Cached => self.cached += 1,
            WarmOutcome::Absent => self.absent += 1,
            WarmOutcome::Failed => self.failed += 1,
        }
    }
}

/// How the hottest keys are reloaded after the remote tier recovers from an outage.
///
/// Stages are `(share, duration)`: the keys up to that share of the ranking (hottest first)
/// that earlier stages did not cover, each started at a random time within the duration; a
/// stage begins when the previous one is over.
///
/// ```
/// use std::time::Duration;
/// let policy = herdwise::RewarmPolicy::default()
///     .stages([(0.01, Duration::from_secs(10)), (0.1, Duration::from_secs(20)), (1.0, Duration::from_secs(30))])
///     .concurrency(2)
///     .max_keys(2_000);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RewarmPolicy {
    stages: Vec<(f64, Duration)>,
    concurrency: usize,
    max_keys: usize,
}

impl Default for RewarmPolicy {
    /// Top 1 % within 5 s, top 10 % within the next 10 s, every tracked key within the next
    /// 15 s; 4 loads at a time; up to 1 000 keys tracked.
    fn default() -> Self {
        RewarmPolicy {
            stages: vec![
                (0.01, Duration::from_secs(5)),
                (0.10, Duration::from_secs(10)),
                (1.0, Duration::from_secs(15)),
            ],
            concurrency: 4,
            max_keys: 1_000,
        }
    }
}

impl RewarmPolicy {
    /// The stages, as `(share of the ranking, duration)`, shares increasing up to at most 1.
    pub fn stages(mut self, stages: impl IntoIterator<Item = (f64, Duration)>) -> Self {
        self.stages = stages.into_iter().collect();
        self
    }

    /// Loads at once (at least 1).
    pub fn concurrency(mut self, loads: usize) -> Self {
        self.concurrency = loads.max(1);
        self
    }

    /// How many recently read keys are remembered for re-warming.
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let mut previous = 0.0;
        for (share, _) in &self.stages {
            if !(*share > previous && *share <= 1.0) {
                return Err(
                    "rewarm_after_recovery: stage shares must increase, within (0, 1]".into(),
                );
            }
            previous = *share;
        }
        if self.max_keys == 0 || self.max_keys > 1_000_000 {
            return Err("rewarm_after_recovery: max_keys must be within 1..=1000000".into());
        }
        if self
            .stages
            .iter()
            .any(|(_, d)| *d > crate::tiers::freshness::MAX_DURATION)
        {
            return Err("rewarm_after_recovery: a stage lasts at most 10 years".into());
        }
        Ok(())
    }
}

/// A typed key, shared: whatever owned form `K` has (`String` for `str`, `K` itself for a
/// `Clone` key), seen as a `K`.
pub(crate) type SharedKey<K> = Arc<dyn Borrow<K> + Send + Sync + 'static>;

/// The typed keys this instance read lately (bounded; frequently read keys stay longest), for
/// the re-warm to load: the hot-key tracker only knows stored keys.
pub(crate) struct KeyBook<K: ?Sized> {
    keys: quick_cache::sync::Cache<Box<str>, SharedKey<K>>,
}

impl<K: ?Sized> KeyBook<K> {
    /// A book of at most as many keys as `policy` re-warms.
    pub fn new(policy: &RewarmPolicy) -> Self {
        KeyBook {
            keys: quick_cache::sync::Cache::new(policy.max_keys),
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Whether a [`Cache::warm`] or [`Cache::warm_with`] has completed with at most half of its
    /// keys failed: for a readiness probe, so traffic arrives after the cache is useful.
    /// Re-warming after an outage does not change it: taking every instance out of service at
    /// once because Redis came back would be an outage of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, u64> = herdwise::Cache::builder("ready").build()?;
    /// assert!(!cache.is_warm());
    /// cache.warm_with([1, 2, 3], |id: &u64| {
    ///     let id = *id;
    ///     async move { Ok::<_, std::io::Error>(Some(id * 10)) }
    /// }).await?;
    /// assert!(cache.is_warm());
    /// # Ok(()) }
    /// ```
    pub fn is_warm(&self) -> bool {
        self.inner.ops.warmed.load(Ordering::Acquire)
    }

    /// Whether the remote tier answers now: one round trip through the store deadline and the
    /// breaker (the namespace's tag table read: the cache uses the answer too). `false` when
    /// the call fails — a Redis that is down or frozen, one that answers every command with
    /// an error (`NOAUTH` after a password change, `WRONGPASS`), or an open breaker. (On a
    /// sharded store: the node holding the namespace's tag table.) The answer is used as a
    /// generation sync would be: a newer namespace generation found there is adopted (L1 of
    /// the old one cleared), and the read may write the instance's generation back to a table
    /// that lost it — what the periodic resync does anyway.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, u64> = herdwise::Cache::builder("ready").build()?;
    /// assert!(cache.remote_healthy().await); // the embedded store always answers
    /// # Ok(()) }
    /// ```
    pub async fn remote_healthy(&self) -> bool {
        self.inner.sync_generation().await.is_some()
    }

    /// A readiness probe's answer for what `probe` requires: a completed warm-up
    /// ([`Cache::is_warm`]) and/or a remote tier that answers ([`Cache::remote_healthy`]).
    ///
    /// For Kubernetes: a failing readiness probe takes the pod out of the Service, so require
    /// the remote tier only where the service is of no use without it. Herdwise keeps
    /// serving when Redis is down (L1, the origin behind the adaptive limit): requiring Redis
    /// takes *every* pod out at once when it fails — an outage of its own. The usual choice is
    /// readiness = warmed, and remote health as a metric and alert (`herdwise_breaker_state`,
    /// `herdwise_l2_calls_total{outcome="error"}`); never a liveness probe on Redis (the pods
    /// would restart in a loop).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::ReadinessProbe;
    /// let cache: herdwise::Cache<u64, u64> = herdwise::Cache::builder("ready").build()?;
    /// assert!(cache.is_ready(&ReadinessProbe::new()).await); // nothing required
    /// assert!(!cache.is_ready(&ReadinessProbe::new().require_warm()).await);
    /// assert!(cache.is_ready(&ReadinessProbe::new().require_remote()).await);
    /// # Ok(()) }
    /// ```
    pub async fn is_ready(&self, probe: &ReadinessProbe) -> bool {
        if probe.warmed && !self.is_warm() {
            return false;
        }
        !probe.remote || self.remote_healthy().await
    }
}

/// What [`Cache::is_ready`] requires (nothing, by default).
///
/// ```
/// let probe = herdwise::ReadinessProbe::new().require_warm().require_remote();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct ReadinessProbe {
    warmed: bool,
    remote: bool,
}

impl ReadinessProbe {
    /// Requires nothing: ready once built.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires a completed warm-up ([`Cache::is_warm`]).
    pub fn require_warm(mut self) -> Self {
        self.warmed = true;
        self
    }

    /// Requires the remote tier to answer ([`Cache::remote_healthy`]). Read the caveat on
    /// [`Cache::is_ready`] first.
    pub fn require_remote(mut self) -> Self {
        self.remote = true;
        self
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ToOwned + Sync + ?Sized + 'static,
    K::Owned: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Loads `keys` through the registered loader ([`Error::NoLoader`] without one), hottest
    /// first, with [`WarmOptions::default`]. Keys already cached are not loaded again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .loader(|id: &u64| {
    ///         let id = *id;
    ///         async move { Ok::<_, std::io::Error>(Some(format!("user-{id}"))) }
    ///     })
    ///     .build()?;
    /// let report = cache.warm([1, 2, 3]).await?;
    /// assert_eq!(report.loaded, 3);
    /// assert_eq!(cache.warm([1]).await?.cached, 1);
    /// # Ok(()) }
    /// ```
    pub async fn warm(&self, keys: impl IntoIterator<Item = K::Owned>) -> Result<WarmReport> {
        self.warm_opts(keys, WarmOptions::default()).await
    }

    /// [`Cache::warm`] with options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use std::time::Duration;
    /// use herdwise::{Cache, WarmOptions};
    /// let cache: Cache<u64, u64> = Cache::builder("scores")
    ///     .loader(|id: &u64| {
    ///         let id = *id;
    ///         async move { Ok::<_, std::io::Error>(Some(id * 2)) }
    ///     })
    ///     .build()?;
    /// let options = WarmOptions::default().concurrency(2).jitter(Duration::from_millis(5));
    /// assert_eq!(cache.warm_opts(0..10, options).await?.loaded, 10);
    /// # Ok(()) }
    /// ```
    pub async fn warm_opts(
        &self,
        keys: impl IntoIterator<Item = K::Owned>,
        options: WarmOptions,
    ) -> Result<WarmReport> {
        let loader = self.loader.clone().ok_or(Error::NoLoader)?;
        self.warm_with_opts(keys, move |k: &K| loader.load(k), options)
            .await
    }

    /// Loads `keys` through `loader` (called once per key that is not cached yet), hottest
    /// first, with [`WarmOptions::default`]. For caches read with `get_or_load`, or to warm
    /// from a query that is cheaper in bulk.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<str, String> = herdwise::Cache::builder("pages").build()?;
    /// let report = cache
    ///     .warm_with(["home".to_string(), "about".to_string()], |page: &str| {
    ///         let html = format!("<h1>{page}</h1>");
    ///         async move { Ok::<_, std::io::Error>(Some(html)) }
    ///     })
    ///     .await?;
    /// assert_eq!(report.loaded, 2);
    /// # Ok(()) }
    /// ```
    pub async fn warm_with<F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = K::Owned>,
        loader: F,
    ) -> Result<WarmReport>
    where
        F: Fn(&K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.warm_with_opts(keys, loader, WarmOptions::default())
            .await
    }

    /// [`Cache::warm_with`] with options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, WarmOptions};
    /// let cache: Cache<u64, u64> = Cache::builder("ranks").build()?;
    /// let load = |id: &u64| {
    ///     let id = *id;
    ///     async move { Ok::<_, std::io::Error>((id % 2 == 0).then_some(id)) }
    /// };
    /// let report = cache.warm_with_opts(0..4, load, WarmOptions::default().concurrency(1)).await?;
    /// assert_eq!((report.loaded, report.absent), (2, 2));
    /// # Ok(()) }
    /// ```
    pub async fn warm_with_opts<F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = K::Owned>,
        loader: F,
        options: WarmOptions,
    ) -> Result<WarmReport>
    where
        F: Fn(&K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.ensure_generation().await;
        let mut report = WarmReport::default();
        let mut ranked = Vec::new();
        for owned in keys {
            match self.key_of(owned.borrow()) {
                Ok(stored) => ranked.push((self.inner.ops.hot_keys.estimate(&stored), owned)),
                Err(_) => {
                    self.inner
                        .metrics
                        .warmed(WarmTrigger::Warm, WarmOutcome::Failed);
                    report.failed += 1;
                }
            }
        }
        // Stable: equally popular keys keep the caller's order (often a ranking of its own).
        ranked.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        let loader = &loader;
        let outcomes: Vec<WarmOutcome> = futures::stream::iter(ranked)
            .map(|(_, owned)| async move {
                if !options.jitter.is_zero() {
                    tokio::time::sleep(options.jitter.mul_f64(rand::random::<f64>())).await;
                }
                let owned = Arc::new(owned);
                let key: &K = (*owned).borrow();
                let outcome = self.warm_one(key, |k: &K| loader(k)).await;
                self.remember_shared(key, owned.clone());
                outcome
            })
            .buffer_unordered(options.concurrency)
            .collect()
            .await;
        for outcome in outcomes {
            self.inner.metrics.warmed(WarmTrigger::Warm, outcome);
            report.add(outcome);
        }
        let total = report.loaded + report.cached + report.absent + report.failed;
        if report.failed * 2 <= total {
            self.inner.ops.warmed.store(true, Ordering::Release);
        }
        Ok(report)
    }

    /// Warms one key through the read path: a fresh L1 entry is enough; an unverified or stale
    /// one is checked against L2 and loaded if L2 has nothing.
    async fn warm_one<'k, F, Fut, E>(&self, key: &'k K, loader: F) -> WarmOutcome
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        let Ok(stored_key) = self.key_of(key) else {
            return WarmOutcome::Failed;
        };
        let fallback = match self.l1_get(&stored_key) {
            Some((_, Standing::Fresh)) => return WarmOutcome::Cached,
            Some((entry, standing)) => Some(Fallback::from_l1(
                entry,
                standing,
                self.inner.l1.epoch(&stored_key),
            )),
            None => None,
        };
        let mut windows = self.windows(&LoadOptions::default());
        windows.warming = true;
        let called = AtomicBool::new(false);
        let called_ref = &called;
        let counted = move |k: &'k K| {
            called_ref.store(true, Ordering::Relaxed);
            loader(k)
        };
        match self
            .through(
                &stored_key,
                key,
                counted,
                &windows,
                fallback,
                None,
                crate::cache::read::Replacing::Nothing,
            )
            .await
        {
            Ok(fetched) if !called.load(Ordering::Relaxed) || fetched.stale => WarmOutcome::Cached,
            Ok(fetched) if fetched.value.is_none() => WarmOutcome::Absent,
            Ok(_) => WarmOutcome::Loaded,
            Err(err) => {
                tracing::debug!(key = stored_key, error = %err, "warming a key failed");
                WarmOutcome::Failed
            }
        }
    }

    /// Remembers `key` for the re-warm (called on L1 misses of `fetch`, and by `warm`). Keys
    /// used through a tenant handle are not remembered: the re-warm runs without a tenant.
    pub(crate) fn remember(&self, stored_key: &str, key: &K) {
        if self.tenant.is_some() {
            return;
        }
        if let Some(book) = self.book.as_deref() {
            if !book.keys.contains_key(stored_key) {
                let owned: SharedKey<K> = Arc::new(key.to_owned());
                book.keys.insert(stored_key.into(), owned);
            }
        }
    }

    fn remember_shared(&self, key: &K, owned: Arc<K::Owned>) {
        if self.tenant.is_some() {
            return;
        }
        if let (Some(book), Ok(stored_key)) = (self.book.as_deref(), self.key_of(key)) {
            book.keys.insert(stored_key.into(), owned);
        }
    }

    /// Starts the task that re-warms after each recovery (once; it ends with the cache).
    pub(crate) fn ensure_rewarm(&self) {
        let inner = &*self.inner;
        if inner.ops.rewarm.is_none() || inner.ops.rewarm_started.load(Ordering::Acquire) {
            return;
        }
        let Some(loader) = self.loader.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if inner.ops.rewarm_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let book = self.book.clone();
        let mut recoveries = inner.recovery.subscribe();
        runtime.spawn(async move {
            while recoveries.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let cache = Cache::<K, V>::from_arc(inner, Some(loader.clone()), book.clone());
                cache.rewarm().await;
            }
        });
    }

    /// Re-warms one remembered key at `at`.
    async fn rewarm_one(
        &self,
        at: tokio::time::Instant,
        owned: SharedKey<K>,
        loader: &SharedLoader<K, V>,
    ) {
        tokio::time::sleep_until(at).await;
        let key: &K = Borrow::<K>::borrow(&*owned);
        let outcome = self.warm_one(key, |k: &K| loader.load(k)).await;
        self.inner.metrics.warmed(WarmTrigger::Recovery, outcome);
    }

    /// One staggered re-warm: the remembered keys ranked by popularity, stage by stage.
    async fn rewarm(&self) {
        let (Some(policy), Some(book), Some(loader)) = (
            self.inner.ops.rewarm.clone(),
            self.book.as_deref(),
            self.loader.clone(),
        ) else {
            return;
        };
        let hot = &self.inner.ops.hot_keys;
        let mut ranked: Vec<(u64, SharedKey<K>)> = book
            .keys
            .iter()
            .map(|(stored, owned)| (hot.estimate(&stored), owned))
            .collect();
        ranked.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        tracing::info!(
            namespace = self.namespace(),
            keys = ranked.len(),
            "remote tier recovered: staggered re-warm of the hottest keys"
        );
        let total = ranked.len();
        let mut done = 0;
        for (share, span) in &policy.stages {
            let end = ((total as f64 * share).ceil() as usize).clamp(done, total);
            let stage_start = tokio::time::Instant::now();
            let mut batch: Vec<(Duration, SharedKey<K>)> = ranked[done..end]
                .iter()
                .map(|(_, owned)| (span.mul_f64(rand::random::<f64>()), owned.clone()))
                .collect();
            batch.sort_by_key(|(at, _)| *at);
            // The futures are made before the stream runs (a closure over the type-erased key
            // held across the awaits would not prove `Send`).
            let loads: Vec<_> = batch
                .into_iter()
                .map(|(at, owned)| self.rewarm_one(stage_start + at, owned, &loader))
                .collect();
            futures::stream::iter(loads)
                .buffer_unordered(policy.concurrency)
                .collect::<()>()
                .await;
            tokio::time::sleep_until(stage_start + *span).await;
            done = end;
        }
    }
}
