//! The public [`Cache`]: the API, and the composition of the parts (`Inner`, whose fields only
//! `cache/` sees).
//!
//! One read, in order: L1 → single-flight → L2 (under a deadline) → lease → loader → fenced
//! fill. The path is `read` (with its failure decisions), written as calls on the parts —
//! `tiers::local`, `protect::flight`, `tiers::remote`, `protect::lease`, `protect::origin_limit`;
//! `entries` moves typed entries in and out of the tiers, `write`, `refresh` and `warm` are the
//! other paths, and `coherence` the invalidation glue the parts call back through.

pub(crate) mod batch;
pub(crate) mod builder;
mod coherence;
pub(crate) mod entries;
pub(crate) mod invalidator;
mod observe;
pub(crate) mod read;
pub(crate) mod refresh;
pub(crate) mod verify;
pub(crate) mod warm;
pub(crate) mod write;

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::cache::builder::CacheBuilder;
use crate::cache::entries::{Fallback, L2Read, WriteMode};
use crate::cache::observe::ReadSpan;
use crate::cache::read::{Fetched, LoadOptions, LoadResult, Replacing, Source};
use crate::cache::warm::{KeyBook, RewarmPolicy};
use crate::cache::write::WriteOptions;
use crate::coherence::backplane::{Backplane, Invalidation};
use crate::coherence::pending::PendingDeletes;
use crate::coherence::retry::{Retry, RetryOnDrop, RetryQueue};
use crate::coherence::tags::{TagLedger, TagsFrom};
use crate::envelope::{Compression, Meta};
use crate::error::Result;
use crate::loader::SharedLoader;
use crate::metrics::{CacheMetrics, GetResult};
use crate::ops::hotkeys::HotKeys;
use crate::ops::replicas::Replicas;
use crate::protect::flight::Flights;
use crate::protect::lease::{FillWaiters, LeaseConfig};
use crate::protect::origin_limit::OriginLimit;
use crate::tiers::codec::Codec;
use crate::tiers::freshness::{now_ms, TtlPolicy};
use crate::tiers::key::{CacheKey, KeySpace};
use crate::tiers::local::{L1Entry, LocalTier, Standing};
use crate::tiers::recovery::Recovery;
use crate::tiers::remote::Remote;

/// How long a prefix invalidation may take to walk L2.
pub(crate) const PREFIX_DELETE_DEADLINE: Duration = Duration::from_secs(60);

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOutcome {
    /// Written to L2 and L1.
    Stored,
    /// L2 holds a higher value version; nothing was written and L1 dropped the key.
    RefusedOlder,
    /// L2 could not be written (down or too slow: counted and logged), and may still hold the
    /// old value: the key is invalidated everywhere instead (this instance's L1 too; the delete
    /// is retried in the background and announced as pending meanwhile), so no instance keeps
    /// serving the old value. The next read loads from the origin.
    LocalOnly,
}

/// The composition: the parts one cache is made of, grouped as the README's "Parts" section
/// draws them. Its fields are visible inside `cache/` only; the parts never see it (they call
/// back through `Subscriber` and `RetryHost`, implemented in `cache/coherence.rs`).
pub(crate) struct Inner<V> {
    /// The key space (namespace, schema, generation).
    keys: KeySpace,
    /// L1.
    l1: LocalTier<V>,
    /// The one door to L2.
    remote: Arc<Remote>,
    /// TTLs, jitter, stale windows, the L1 cap.
    ttl: TtlPolicy,
    /// L1 demotion and remote-tier recoveries.
    recovery: Arc<Recovery>,
    metrics: CacheMetrics,
    /// Values to stored bytes and back.
    format: Format<V>,
    /// Against herds: single-flight, leases, the origin limit, refresh slots.
    protect: Protection<V>,
    /// Keeping every instance in step: backplane, tags, generation, retries.
    coherence: Coherence<V>,
    /// Hot keys, warming, copies.
    ops: Operations,
    /// Per-read defaults that `LoadOptions` override.
    defaults: ReadDefaults,
}

/// Values to stored bytes and back, and what L1 charges for them.
pub(crate) struct Format<V> {
    codec: Arc<dyn Codec<V>>,
    compression: Compression,
    max_value_bytes: usize,
    /// How long a loaded value too large for L2 stays in L1 (`None`: not at all).
    oversized_in_l1: Option<Duration>,
    /// `None`: L1 weighs a value by its uncompressed payload length.
    weigher: Option<crate::cache::entries::Weigher<V>>,
    /// `None`: every positive entry lives the cache's (jittered) TTL.
    ttl_from: Option<crate::cache::entries::TtlFrom<V>>,
    /// Scope violations are logged at most once a second.
    scope_log: crate::throttle::LogThrottle,
    /// Loaded values that cannot be cached (too large, not encodable, bad tags): at most one
    /// warning a second, with the count it stands for (they repeat on every read of the key).
    uncached_log: crate::throttle::LogThrottle,
    /// Corrupt entries read: likewise.
    corrupt_log: crate::throttle::LogThrottle,
}

/// The herd defenses of one cache.
pub(crate) struct Protection<V> {
    flights: Flights<LoadResult<V>>,
    /// `None`: no cross-instance coordination (in-process single-flight only).
    lease: Option<LeaseConfig>,
    fill_waiters: Arc<FillWaiters>,
    /// `None`: loader calls are not limited.
    origin_limit: Option<OriginLimit>,
    /// Keys with a background refresh running.
    refreshing: crate::protect::refreshing::Refreshing,
    /// Whether L2 reads on the way to loads mostly find nothing (then the lease is asked at
    /// once).
    miss_rate: crate::protect::miss_rate::MissRate,
}

/// What keeps this instance coherent with the others and with the origin's writes.
pub(crate) struct Coherence<V> {
    /// `None`: other instances' L1s are not told about writes (the L1 cap bounds staleness).
    backplane: Option<Backplane>,
    /// Failed invalidations, retried in the background.
    retries: RetryQueue,
    /// Other instances' deletes not applied yet.
    pending: PendingDeletes,
    /// The namespace generation has been read from the store at least once.
    generation_synced: AtomicBool,
    /// When reading it was last attempted (unix ms).
    generation_attempt_ms: AtomicU64,
    /// Held while the generation is read (the first callers wait for it).
    generation_sync: tokio::sync::Mutex<()>,
    /// What this instance knows of tag invalidations.
    tags: TagLedger,
    /// The store key of the namespace's tag table.
    tag_table_key: String,
    /// How long a tag's mark is kept: longer than any entry it can invalidate lives.
    tag_mark_ttl: Duration,
    /// Most tags on one entry.
    max_tags: usize,
    /// Longest tag accepted (longer than the envelope's limit: stored by digest).
    max_tag_bytes: usize,
    /// Tags derived from every value the cache stores.
    tags_from: Option<TagsFrom<V>>,
}

/// Operations: hot keys, warming, copies of hot keys.
pub(crate) struct Operations {
    /// Read frequencies (sampled), for `hot_keys`.
    hot_keys: HotKeys,
    /// `None`: no automatic re-warm after a recovery.
    rewarm: Option<RewarmPolicy>,
    /// The re-warm task has been started.
    rewarm_started: AtomicBool,
    /// A warm has completed (see `is_warm`).
    warmed: AtomicBool,
    /// `None`: hot keys have no copies in L2.
    replicas: Option<Replicas>,
}

/// Per-read defaults.
pub(crate) struct ReadDefaults {
    /// Limit on a loader call.
    hard_timeout: Option<Duration>,
    /// Soft limit (for `fetch`): past it, a stale value answers and the load goes on.
    soft_timeout: Option<Duration>,
    /// XFetch eagerness (0 disables early refresh).
    xfetch_beta: f64,
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
    pub(crate) inner: Arc<Inner<V>>,
    /// The registered loader, for `fetch` and background refreshes.
    pub(crate) loader: Option<SharedLoader<K, V>>,
    /// With a loader and a re-warm policy: the typed keys worth re-warming.
    pub(crate) book: Option<Arc<KeyBook<K>>>,
    /// The tenant this handle is scoped to (its key component), see `for_tenant`.
    pub(crate) tenant: Option<Arc<str>>,
    /// With `CacheBuilder::verify`: samples fresh reads to check against the origin.
    pub(crate) verifier: Option<Arc<verify::VerifyHook<K, V>>>,
    /// The registered batch loader, for `fetch_many` (a `batch::ErasedBatchLoader`).
    pub(crate) batch_loader: Option<Arc<dyn std::any::Any + Send + Sync>>,
    _key: PhantomData<fn(&K)>,
}

impl<K: ?Sized, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            loader: self.loader.clone(),
            book: self.book.clone(),
            tenant: self.tenant.clone(),
            verifier: self.verifier.clone(),
            batch_loader: self.batch_loader.clone(),
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

/// What L1 had for a key.
pub(crate) enum Lookup<V> {
    /// A fresh entry, with its metadata.
    Fresh(Option<Arc<V>>, Meta),
    /// Nothing fresh; maybe a stale fallback.
    Miss {
        stored_key: String,
        fallback: Option<Fallback<V>>,
    },
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
        CacheBuilder::new_serde(namespace)
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// [`Cache::builder`] for a value type with a codec of its own (no serde needed): the
    /// codec turns values into the stored payload and back (see [`Codec`](crate::Codec)).
    ///
    /// ```
    /// use herdwise::{Cache, Codec, CodecError};
    /// struct Raw;
    /// impl Codec<Vec<u8>> for Raw {
    ///     fn id(&self) -> u8 { 40 }
    ///     fn encode(&self, v: &Vec<u8>) -> Result<Vec<u8>, CodecError> { Ok(v.clone()) }
    ///     fn decode(&self, b: &[u8]) -> Result<Vec<u8>, CodecError> { Ok(b.to_vec()) }
    /// }
    /// let blobs: Cache<str, Vec<u8>> = Cache::builder_with_codec("blobs", Raw).build().unwrap();
    /// ```
    pub fn builder_with_codec(namespace: &str, codec: impl Codec<V>) -> CacheBuilder<K, V> {
        CacheBuilder::new(namespace).codec(codec)
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    pub(crate) fn from_parts(
        inner: Inner<V>,
        loader: Option<SharedLoader<K, V>>,
        book: Option<Arc<KeyBook<K>>>,
    ) -> Self {
        Self::from_arc(Arc::new(inner), loader, book)
    }

    pub(crate) fn from_arc(
        inner: Arc<Inner<V>>,
        loader: Option<SharedLoader<K, V>>,
        book: Option<Arc<KeyBook<K>>>,
    ) -> Self {
        Cache {
            inner,
            loader,
            book,
            tenant: None,
            verifier: None,
            batch_loader: None,
            _key: PhantomData,
        }
    }

    /// The stored key of `key` under this handle's tenant, if any.
    pub(crate) fn key_of<Q: CacheKey + ?Sized>(
        &self,
        key: &Q,
    ) -> std::result::Result<String, crate::KeyError> {
        self.inner.keys.stored_key_in(self.tenant.as_deref(), key)
    }

    /// A tag as stored: scoped to this handle's tenant (`<tenant>:<tag>`), if any, so that one
    /// tenant's tag invalidations never touch another tenant's entries.
    pub(crate) fn scoped_tag<'t>(&self, tag: &'t str) -> std::borrow::Cow<'t, str> {
        match self.tenant.as_deref() {
            Some(tenant) => std::borrow::Cow::Owned(format!("{tenant}:{tag}")),
            None => std::borrow::Cow::Borrowed(tag),
        }
    }

    /// This cache, scoped to `tenant`: every key (and tag) used through the returned handle
    /// carries the tenant as its first component, so no call through it can reach another
    /// tenant's entries, and each entry's [scope check](crate::envelope::key_fingerprint)
    /// rejects another tenant's bytes copied under its key. A namespace built with
    /// [`CacheBuilder::require_tenant`](crate::CacheBuilder::require_tenant) accepts keys only
    /// through such handles. Cheap: the handles share one cache. A tenant handle does not use
    /// the cache's registered loader, which is called with the key alone (`fetch` on it is
    /// `Error::NoLoader`): load with `get_or_load` and a loader that knows the tenant.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, Error, KeyError};
    /// let orders: Cache<u64, String> = Cache::builder("orders").require_tenant().build()?;
    /// let acme = orders.for_tenant("acme")?;
    /// acme.set(&1, "acme's order".to_string()).await?;
    /// assert_eq!(orders.for_tenant("globex")?.get(&1).await?, None);
    /// assert!(matches!(
    ///     orders.get(&1).await,
    ///     Err(Error::InvalidKey(KeyError::TenantRequired(_)))
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn for_tenant(&self, tenant: &str) -> Result<Self> {
        let component = self.inner.keys.tenant_component(tenant)?;
        let mut scoped = self.clone();
        scoped.tenant = Some(component.into());
        // A registered loader is called with the key alone: it cannot know the tenant, so a
        // tenant handle never uses it (its `fetch`, `warm` and background refreshes answer
        // `Error::NoLoader`); `get_or_load` with a loader that knows the tenant works.
        scoped.loader = None;
        scoped.batch_loader = None;
        scoped.book = None;
        scoped.verifier = None;
        Ok(scoped)
    }

    /// Removes every entry of this handle's tenant, on every instance (a prefix walk, see
    /// [`Cache::invalidate_prefix`]). `Error::InvalidKey` on a handle without a tenant.
    pub async fn invalidate_tenant(&self) -> Result<u64> {
        let Some(tenant) = self.tenant.as_deref() else {
            return Err(crate::KeyError::TenantRequired(self.inner.keys.namespace().into()).into());
        };
        self.ensure_generation().await;
        self.ensure_backplane();
        let exact = self.inner.keys.tenant_root(tenant);
        self.spawn_prefix_walk(exact).await
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
        hit_yield_point().await;
        self.ensure_generation().await;
        let span = ReadSpan::new(self.namespace(), "get");
        let (stored_key, mut fallback) = match self.lookup_l1(key) {
            Ok(Lookup::Fresh(value, meta)) => {
                span.ended(GetResult::of_l1(meta.stale_copy, value.is_some()));
                return Ok(value);
            }
            Ok(Lookup::Miss {
                stored_key,
                fallback,
            }) => (stored_key, fallback),
            Err(err) => return Err(span.failed(&self.inner.metrics, err)),
        };
        let past = span.past_l1(&self.inner.metrics);
        if fallback.as_ref().is_some_and(|f| f.unverified) {
            // Boxed: an L1 hit should not carry the size of the L2 read in its future.
            let stale_if_error = self.inner.ttl.stale_if_error;
            let verify = self
                .verify_in_l2(
                    &stored_key,
                    &mut fallback,
                    stale_if_error,
                    false,
                    Replacing::Nothing,
                )
                .instrument(span.span().clone());
            if let Some(answer) = Box::pin(verify).await {
                past.read(answer.result(), Some(answer.source));
                return Ok(answer.value);
            }
            // L2 was asked and has nothing fresh.
            past.read(GetResult::Miss, None);
            return Ok(None);
        }
        let read = self.read_l2(&stored_key).instrument(span.span().clone());
        match Box::pin(read).await {
            L2Read::Fresh(value, meta, _) => {
                let answer = Fetched::of(value, meta.stale_copy, Source::L2);
                past.read(answer.result(), Some(Source::L2));
                if answer.result() == GetResult::L2Hit {
                    self.maybe_verify(key, &stored_key, answer.value.as_ref());
                }
                Ok(answer.value)
            }
            L2Read::Stale(_) | L2Read::Miss | L2Read::Unavailable => {
                past.read(GetResult::Miss, None);
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
    /// loader; if the loader panics, every caller gets [`Error::LoaderPanicked`](crate::Error::LoaderPanicked).
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
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.get_or_load_with(key, &LoadOptions::default(), loader)
            .await
            .map(|fetched| fetched.value)
    }

    /// Cache-aside write: stores `value` in L2 and L1, unconditionally, for the cache's TTL, and
    /// voids any load in flight for the key (its fill will be refused).
    ///
    /// A value larger than `max_value_bytes` (or one the codec cannot encode) is an error, and
    /// the key is invalidated so that the old value is not served in its place.
    pub async fn set(&self, key: &K, value: impl Into<Arc<V>>) -> Result<WriteOutcome> {
        self.set_with(key, value, &WriteOptions::default()).await
    }

    /// [`Cache::set`] with options: tags the entry carries (for [`Cache::invalidate_tag`]), and
    /// a value version (as [`Cache::set_versioned`]). A bad tag, or more tags than
    /// `max_tags_per_entry`, is an error, and the key is invalidated so that the old value is
    /// not served in place of the new one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, WriteOptions};
    /// let cache: Cache<u64, String> = Cache::builder("products").build()?;
    /// let opts = WriteOptions::default().version(3).tags(["brand:acme", "category:lamps"]);
    /// cache.set_with(&7, "desk lamp".to_string(), &opts).await?;
    /// cache.invalidate_tag("brand:acme").await?;
    /// assert_eq!(cache.get(&7).await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn set_with(
        &self,
        key: &K,
        value: impl Into<Arc<V>>,
        options: &WriteOptions,
    ) -> Result<WriteOutcome> {
        self.ensure_generation().await;
        let stored_key = self.key_of(key)?;
        let (version, mode) = match options.version {
            Some(version) => (version, WriteMode::IfNotOlder),
            None => (0, WriteMode::Overwrite),
        };
        self.write(&stored_key, value.into(), version, mode, &options.tags)
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
        self.set_with(key, value, &WriteOptions::default().version(version))
            .await
    }

    /// Removes `key` from L1 and L2 (positive and negative entries alike), voids any load in
    /// flight for it on any instance (that load's fill will be refused), and tells the other
    /// instances to drop it from their L1.
    ///
    /// An L2 failure is not returned: the invalidation is retried in the background from a
    /// bounded queue with backoff (`herdwise_invalidation_retries_total`), and what cannot be
    /// retried is counted as dead-lettered; the entry's TTL is the last net.
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        self.ensure_generation().await;
        let stored_key = self.key_of(key)?;
        self.invalidate_stored(&stored_key).await;
        Ok(())
    }

    /// Invalidates a stored key: L1 (under a new epoch, so a read in flight cannot put it
    /// back), L2 (retried in the background if that fails), and the other instances' L1.
    pub(crate) async fn invalidate_stored(&self, stored_key: &str) {
        self.ensure_backplane();
        self.ensure_generation().await;
        self.inner.l1.invalidate(stored_key);
        // Armed until the whole invalidation is done: if this call is dropped on the way (a
        // request timeout), the retry queue finishes it.
        let mut retry = Some(RetryOnDrop::new(&self.inner, Retry::Key(stored_key.into())));
        // The announcement travels with the delete where it can (one round trip for both).
        let mut announced_with_delete = None;
        let deleted = match self
            .inner
            .announcement_with_write(stored_key, Invalidation::Key(stored_key))
        {
            Some(then) => match self.inner.remote.delete_and_publish(stored_key, then).await {
                Ok((_, published)) => {
                    announced_with_delete = Some(published);
                    true
                }
                Err(_) => false,
            },
            None => self.inner.remote.delete(stored_key).await.is_ok(),
        };
        if !deleted {
            drop(retry.take()); // queued now; until it goes through, L2's copy is not read
        }
        self.drop_replicas(stored_key).await;
        // A local read during the delete may have put the old L2 value back into L1 (this
        // instance ignores its own event): the invalidation is complete locally only now.
        self.inner.l1.invalidate(stored_key);
        let announced = if retry.is_some() {
            match announced_with_delete {
                Some(announced) => announced,
                None => self.announce(stored_key).await,
            }
        } else {
            // The delete is retried: the other instances must not take L2's copy meanwhile
            // either (after a failover the promoted replica still has it). The retry announces
            // the delete done when it goes through.
            self.inner
                .announce(Invalidation::PendingKey(stored_key))
                .await
        };
        if let Some(retry) = retry {
            retry.disarm();
            if !announced {
                // L2 is done; the other instances' L1s would keep the old value until their
                // cap: the announcement alone is retried.
                self.inner
                    .coherence
                    .retries
                    .push(&self.inner, Retry::AnnounceKey(stored_key.into()));
            }
        }
    }

    /// Invalidations this instance made that the store has not confirmed yet (deletes, tag
    /// bumps, announcements waiting in the retry queue or being retried): 0 once everything
    /// it invalidated is applied. A short-lived process (a CLI, a job) waits for 0 before it
    /// exits, or reports what did not go through.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users").build()?;
    /// cache.invalidate(&7).await?;
    /// assert_eq!(cache.unconfirmed_invalidations(), 0);
    /// # Ok(()) }
    /// ```
    pub fn unconfirmed_invalidations(&self) -> usize {
        self.inner.coherence.retries.unfinished()
    }

    /// The key as stored in L2, e.g. for `redis-cli`: `namespace:v<schema>%g<generation>:<key>`
    /// once the namespace generation has been read from the store (at the first call), and
    /// `namespace:v<schema>:<key>` before (generation 0).
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, ()> = herdwise::Cache::builder("users").build().unwrap();
    /// assert_eq!(cache.stored_key(&7).unwrap(), "users:v1:7");
    /// ```
    pub fn stored_key(&self, key: &K) -> Result<String> {
        Ok(self.key_of(key)?)
    }

    /// The namespace this cache was built with.
    pub fn namespace(&self) -> &str {
        self.inner.keys.namespace()
    }

    /// Bytes currently charged to L1 (with L1 disabled: to the hot-key shield, if any).
    pub fn l1_bytes(&self) -> u64 {
        self.inner.l1.weight()
    }

    /// The L1 byte bound (with L1 disabled: the hot-key shield's, or 0 without one).
    pub fn l1_max_bytes(&self) -> u64 {
        self.inner.l1.capacity()
    }

    /// The state of the circuit breaker on the remote tier.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, ()> = herdwise::Cache::builder("users").build().unwrap();
    /// assert_eq!(cache.breaker_state(), herdwise::BreakerState::Closed);
    /// ```
    pub fn breaker_state(&self) -> crate::BreakerState {
        self.inner.remote.breaker_state()
    }

    /// The breaker state of each node of a sharded store
    /// ([`ShardedStore`](crate::ShardedStore)), in node order (one entry for other stores;
    /// none without a breaker): a dead node opens its own breaker only.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, ()> = herdwise::Cache::builder("users").build().unwrap();
    /// assert!(cache
    ///     .breaker_states()
    ///     .iter()
    ///     .all(|s| *s == herdwise::BreakerState::Closed));
    /// ```
    pub fn breaker_states(&self) -> Vec<crate::BreakerState> {
        self.inner.remote.breaker_states()
    }

    /// The most-read keys of this instance lately (stored keys, hottest first) with their
    /// estimated reads: a count-min sketch over sampled reads, halved now and then so that keys
    /// that cooled down fall out.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, u32> = herdwise::Cache::builder("hot").build()?;
    /// cache.set(&7, 1).await?;
    /// for _ in 0..1_000 {
    ///     cache.get(&7).await?;
    /// }
    /// assert_eq!(cache.hot_keys()[0].0, cache.stored_key(&7)?);
    /// # Ok(()) }
    /// ```
    pub fn hot_keys(&self) -> Vec<(String, u64)> {
        let top = self.inner.ops.hot_keys.top();
        match self.tenant.as_deref() {
            // Through a tenant handle: that tenant's keys only (the tracker is shared).
            Some(tenant) => {
                let root = self.inner.keys.tenant_root(tenant);
                let below = format!("{root}:");
                top.into_iter()
                    .filter(|(key, _)| *key == root || key.starts_with(&below))
                    .collect()
            }
            None => top,
        }
    }

    /// Loader calls running now (0 if no origin limit is configured).
    pub fn origin_loads_in_flight(&self) -> usize {
        self.inner
            .protect
            .origin_limit
            .as_ref()
            .map_or(0, OriginLimit::in_use)
    }

    /// Loader calls allowed at once now: the learned origin limit (held lower while the remote
    /// tier is unavailable), the fixed one, or `None` without origin protection.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users").build().unwrap();
    /// assert_eq!(cache.origin_limit(), Some(32), "the adaptive limit starts at 32");
    /// ```
    pub fn origin_limit(&self) -> Option<usize> {
        self.inner
            .protect
            .origin_limit
            .as_ref()
            .map(OriginLimit::current)
    }

    /// The remote tier is unavailable, as origin protection sees it: a breaker is not closed,
    /// or the window after a recovery is open.
    pub(crate) fn remote_unavailable(&self) -> bool {
        self.inner.remote.degraded() || self.inner.recovery.window_left().is_some()
    }

    /// Keys with a load in flight in this instance (single-flight leaders): 0 when the cache is
    /// idle, whatever was cancelled.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, ()> = herdwise::Cache::builder("users").build().unwrap();
    /// assert_eq!(cache.loads_in_flight(), 0);
    /// ```
    pub fn loads_in_flight(&self) -> usize {
        self.inner.protect.flights.len()
    }

    /// Background refreshes (stale-while-revalidate, XFetch, refresh-ahead) running now: at most
    /// one per key.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, ()> = herdwise::Cache::builder("users").build().unwrap();
    /// assert_eq!(cache.background_refreshes(), 0);
    /// ```
    pub fn background_refreshes(&self) -> usize {
        self.inner.protect.refreshing.len()
    }

    /// Entries in L1.
    pub fn l1_len(&self) -> usize {
        self.inner.l1.len()
    }

    /// Invalidates every key that starts with the components of `prefix` — e.g. `&(user_id,)` or
    /// `&user_id` for a cache keyed by `(user_id, item)`: the key equal to the prefix and every
    /// key with more components after it (`42` matches `42` and `42:x`, not `420`). L2 is walked
    /// with `SCAN` in batches of 1 000 and `UNLINK`ed (never `KEYS`, never blocking Redis); loads
    /// in flight under the prefix are voided; every instance drops the matching L1 entries.
    /// Returns how many L2 entries were removed. A store failure is returned (nothing or only
    /// part of L2 was walked — a cluster or sharded node down — and the caller should know),
    /// but the invalidation is not lost: every instance is told to drop its copies at once, and
    /// the walk is retried in the background until it goes through.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<(u64, String), u32> = herdwise::Cache::builder("recs").build()?;
    /// cache.set(&(42, "a".into()), 1).await?;
    /// cache.set(&(42, "b".into()), 2).await?;
    /// cache.set(&(420, "a".into()), 3).await?;
    /// assert_eq!(cache.invalidate_prefix(&42u64).await?, 2);
    /// assert_eq!(cache.get(&(420, "a".into())).await?.as_deref(), Some(&3));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_prefix<P: CacheKey + ?Sized>(&self, prefix: &P) -> Result<u64> {
        self.ensure_generation().await;
        self.ensure_backplane();
        let exact = self.key_of(prefix)?;
        self.spawn_prefix_walk(exact).await
    }

    /// Runs the prefix walk below `exact` in a task of its own: a caller that gives up (a
    /// request timeout) stops neither the walk half way nor its announcement.
    async fn spawn_prefix_walk(&self, exact: String) -> Result<u64> {
        let walk = invalidate_prefix_stored(self.inner.clone(), exact);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => match runtime.spawn(walk).await {
                Ok(removed) => removed,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => Err(crate::store::StoreError::Other(
                    "the runtime shut down during a prefix invalidation".into(),
                )
                .into()),
            },
            Err(_) => walk.await,
        }
    }

    /// Removes every entry of the namespace, on every instance, in O(1): the namespace moves to
    /// a new generation (one atomic step on the namespace's tag table, past both the stored
    /// generation and this instance's), which is part of every stored key, so old entries are
    /// unreachable at once and die by their TTL. Other instances switch on the backplane event
    /// (or, if it is lost, at their next generation check, at most 10 s later).
    ///
    /// Unlike `invalidate`, a store failure is returned: nothing was cleared.
    ///
    /// Through a [tenant handle](Cache::for_tenant), `clear()` removes that tenant's entries
    /// only: it is [`invalidate_tenant`](Cache::invalidate_tenant) (a prefix walk, not O(1)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("docs").build()?;
    /// cache.set(&1, "x".to_string()).await?;
    /// cache.clear().await?;
    /// assert_eq!(cache.get(&1).await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        if self.tenant.is_some() {
            return self.invalidate_tenant().await.map(|_| ());
        }
        self.ensure_backplane();
        let inner = &*self.inner;
        let generation = inner
            .remote
            .advance_generation(&inner.coherence.tag_table_key, inner.keys.generation())
            .await?;
        inner.keys.advance_generation(generation);
        inner
            .coherence
            .generation_synced
            .store(true, Ordering::Release);
        inner.l1.clear();
        if let Some(backplane) = inner.coherence.backplane.as_ref() {
            backplane
                .publish(&inner.remote, Invalidation::Clear(generation))
                .await;
        }
        Ok(())
    }

    /// Reads the namespace generation once, before the first use of the cache. While the store
    /// does not answer, at most one attempt a second: reads must not pay a store deadline each
    /// because Redis is down (the backplane re-reads the generation later anyway).
    pub(crate) async fn ensure_generation(&self) {
        if !self
            .inner
            .coherence
            .generation_synced
            .load(Ordering::Acquire)
        {
            // In a task of its own, so that a caller dropped meanwhile (a request timeout) does
            // not abandon the read the others wait for; boxed without a runtime (the cold path
            // must not grow every caller's future).
            let sync = sync_generation_throttled(self.inner.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let _ = runtime.spawn(sync).await;
                }
                Err(_) => Box::pin(sync).await,
            }
        }
    }

    /// Listens to other instances' invalidations from the first use on (it needs a runtime).
    pub(crate) fn ensure_backplane(&self) {
        if let Some(backplane) = self.inner.coherence.backplane.as_ref() {
            backplane.ensure_listening(&self.inner);
        }
    }

    /// Tells the other instances to drop `stored_key` from their L1.
    /// `false` if the store did not take the announcement.
    async fn announce(&self, stored_key: &str) -> bool {
        self.inner.announce(Invalidation::Key(stored_key)).await
    }

    /// The live L1 entry for a stored key and how it may be used, if its tags (if any) let it
    /// be served.
    pub(crate) fn l1_get(&self, stored_key: &str) -> Option<(L1Entry<V>, Standing)> {
        let (entry, standing) = self.inner.l1.get_classified(stored_key)?;
        let standing = self.l1_tag_standing(stored_key, &entry, standing)?;
        Some((entry, standing))
    }

    pub(crate) fn lookup_l1(&self, key: &K) -> Result<Lookup<V>> {
        self.lookup_l1_judged(key, None)
    }

    /// [`Self::lookup_l1`], where a fresh value `is_stale` calls stale is a miss (without a
    /// fallback, and not counted as a hit).
    #[inline]
    pub(crate) fn lookup_l1_judged(
        &self,
        key: &K,
        is_stale: Option<&(dyn Fn(&V) -> bool + Send + Sync)>,
    ) -> Result<Lookup<V>> {
        self.ensure_backplane();
        let inner = &*self.inner;
        let lookup = |buf: &mut String| -> Result<Lookup<V>> {
            let sampled = crate::metrics::sample_hit().then(Instant::now);
            inner.keys.write_in(self.tenant.as_deref(), key, buf)?;
            inner.ops.hot_keys.record(buf);
            let found = inner.l1.get_classified(buf).and_then(|(entry, standing)| {
                let standing = self.l1_tag_standing(buf, &entry, standing)?;
                Some((entry, standing))
            });
            Ok(match found {
                // Judged stale: a miss, and no fallback either (not even an unverified one
                // to check against L2: the judge decides what a failed load answers).
                Some((entry, _))
                    if is_stale.is_some_and(|judge| entry.value.as_deref().is_some_and(judge)) =>
                {
                    Lookup::Miss {
                        stored_key: buf.clone(),
                        fallback: None,
                    }
                }
                Some((entry, Standing::Fresh)) => {
                    let result = GetResult::of_l1(entry.meta.stale_copy, entry.value.is_some());
                    inner.metrics.l1_hit(result, sampled);
                    if result == GetResult::L1Hit {
                        self.maybe_verify(key, buf, entry.value.as_ref());
                    }
                    Lookup::Fresh(entry.value, entry.meta)
                }
                Some((entry, standing)) => Lookup::Miss {
                    stored_key: buf.clone(),
                    fallback: Some(Fallback::from_l1(entry, standing, inner.l1.epoch(buf))),
                },
                None => Lookup::Miss {
                    stored_key: buf.clone(),
                    fallback: None,
                },
            })
        };
        KEY_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => lookup(&mut buf),
            // Re-entered from inside a key's encoder: use a fresh buffer.
            Err(_) => lookup(&mut String::new()),
        })
    }

    async fn write(
        &self,
        stored_key: &str,
        value: Arc<V>,
        version: u64,
        mode: WriteMode,
        tags: &[Box<str>],
    ) -> Result<WriteOutcome> {
        self.ensure_backplane();
        let ttl = self.inner.ttl.ttl;
        let stamp = self.inner.coherence.tags.stamp();
        let encoded = match self.entry_tags(tags, Some(&value), stamp).and_then(|tags| {
            self.encode_entry(stored_key, Some(&value), ttl, version, Duration::ZERO, tags)
        }) {
            Ok(encoded) => encoded,
            Err(err) => {
                // The caller meant to replace the value: do not keep serving the old one (a full
                // invalidation: epochs, retries, the announcement).
                self.invalidate_stored(stored_key).await;
                return Err(err);
            }
        };
        // Deletes queued here before the write went out are older than it.
        let queued_before = self.inner.coherence.retries.mark();
        // The announcement travels with the write where it can (one round trip for both).
        // (Not for a versioned write: one that is refused must announce nothing — its event
        // would end other instances' holds on a key whose delete is pending.)
        let then = match mode {
            WriteMode::Overwrite => self
                .inner
                .announcement_with_write(stored_key, Invalidation::Key(stored_key)),
            WriteMode::IfNotOlder => None,
        };
        let in_flight = WriteInFlight::new(&self.inner, stored_key);
        let (outcome, announced) = self
            .store_encoded(stored_key, Some(&value), encoded, mode, then)
            .await;
        if outcome == WriteOutcome::Stored {
            // A delete of the key queued before the write would only remove the newer value
            // (and keep announcing it pending).
            self.inner
                .coherence
                .retries
                .supersede(stored_key, queued_before);
            // Copies of the old value must not outlive it.
            if self.inner.ops.replicas.is_some() {
                self.drop_replicas(stored_key).await;
                // A read may have taken a copy's old bytes since the write settled L1.
                self.inner.l1.supersede(stored_key);
                self.inner.l1.remove(stored_key);
            }
        }
        if outcome == WriteOutcome::LocalOnly {
            // L2 was not written and may still hold the old value: invalidate it everywhere (a
            // delete, retried if it fails, and announced as pending meanwhile), never announce
            // a write that did not happen as done.
            self.invalidate_stored(stored_key).await;
            in_flight.disarm();
            return Ok(outcome);
        }
        // Other instances' L1 copies are older than what was just written.
        let announced = match announced {
            Some(announced) => announced,
            None if outcome == WriteOutcome::RefusedOlder => true,
            None => self.announce(stored_key).await,
        };
        if !announced {
            self.inner
                .coherence
                .retries
                .push(&self.inner, Retry::AnnounceKey(stored_key.into()));
        }
        in_flight.disarm();
        Ok(outcome)
    }
}

/// Armed across a write's store call and what follows it (and, for `write_through` and
/// `write_around`, from before the origin write): a caller dropped meanwhile (a request
/// timeout), or an origin write that failed, may leave the write applied, or not, and
/// unannounced. The key
/// is then invalidated — dropped from this instance's L1 at once, deleted from L2 and
/// announced by the retry queue — so that neither the old value nor an unannounced new one
/// is served from an L1.
pub(crate) struct WriteInFlight<'a, V: Send + Sync + 'static> {
    inner: &'a Arc<Inner<V>>,
    stored_key: &'a str,
    armed: bool,
}

impl<'a, V: Send + Sync + 'static> WriteInFlight<'a, V> {
    /// Armed.
    pub(crate) fn new(inner: &'a Arc<Inner<V>>, stored_key: &'a str) -> Self {
        WriteInFlight {
            inner,
            stored_key,
            armed: true,
        }
    }

    /// The write ran to its end.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<V: Send + Sync + 'static> Drop for WriteInFlight<'_, V> {
    fn drop(&mut self) {
        if self.armed {
            // Queued (so L2 reads of the key answer a miss until the delete) before L1 lets
            // go of it: a read in between must not bring the old value back.
            self.inner
                .coherence
                .retries
                .push(self.inner, Retry::Key(self.stored_key.into()));
            self.inner.l1.invalidate(self.stored_key);
        }
    }
}

/// Where an L1 hit gives way: every `HITS_PER_BUDGET_UNIT`th hit on a thread spends a unit of
/// tokio's cooperative budget, and the task yields once its budget is spent (128 units), as
/// tokio's own sockets and channels make it. A task that loops on hits without awaiting anything
/// else would otherwise never give the runtime back: on its worker the invalidation listener
/// would not run, and the loop would keep reading what other instances invalidated. Counted per
/// thread (a `Cell`, no lazy init), and awaited before the lookup rather than after it (where
/// the future would hold the value across the await): a budget check after every hit cost 11%
/// more instructions per `get`, this costs 2% (callgrind, `hot_paths --bench l1_hit`). Free
/// outside a tokio runtime (no budget there).
pub(crate) async fn hit_yield_point() {
    let due = HIT_COUNT.with(|count| {
        let n = count.get().wrapping_add(1);
        count.set(n);
        n % HITS_PER_BUDGET_UNIT == 0
    });
    if due {
        tokio::task::coop::consume_budget().await;
    }
}

/// See [`hit_yield_point`]: a task looping on hits yields at least every 128 × this many.
const HITS_PER_BUDGET_UNIT: u32 = 8;

thread_local! {
    static HIT_COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Reads the namespace generation once (see `Cache::ensure_generation`).
async fn sync_generation_throttled<V: Send + Sync + 'static>(owner: Arc<Inner<V>>) {
    let inner = &*owner;
    // One read at a time: the callers of a first burst wait for the read in flight (at most
    // one store deadline) instead of going on under generation 0 while it runs — their keys
    // would differ from the ones after it (two loads of one key, entries out of reach).
    let turn = inner.coherence.generation_sync.lock().await;
    if inner.coherence.generation_synced.load(Ordering::Acquire) {
        return;
    }
    let now = now_ms();
    let last = inner
        .coherence
        .generation_attempt_ms
        .load(Ordering::Acquire);
    if now.saturating_sub(last) < 1_000
        || inner
            .coherence
            .generation_attempt_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    let synced = inner.sync_generation().await.is_some();
    if synced {
        inner
            .coherence
            .generation_synced
            .store(true, Ordering::Release);
        drop(turn); // the waiting callers go on; the sentinel is this caller's business
                    // To tell, after an outage, whether Redis came back empty.
        crate::ops::sentinel::learn_sentinel(
            &inner.recovery,
            &inner.remote,
            inner.keys.namespace(),
        )
        .await;
    }
}

/// `invalidate_prefix` for the stored key `exact`: L1, the L2 walk, L1 again, the replicas and
/// the announcement.
async fn invalidate_prefix_stored<V: Send + Sync + 'static>(
    owner: Arc<Inner<V>>,
    exact: String,
) -> Result<u64> {
    let inner = &*owner;
    let below = format!("{exact}:");
    inner.l1.remove_prefix(&below);
    inner.l1.invalidate(&exact);
    let removed = async {
        let below = inner
            .remote
            .delete_prefix(&below, PREFIX_DELETE_DEADLINE)
            .await?;
        let exact = u64::from(inner.remote.delete(&exact).await?);
        Ok::<_, crate::store::StoreError>(below + exact)
    }
    .await;
    // Local reads during the walk may have put old L2 values back into L1 (this instance
    // ignores its own events): drop them again, so the call is complete locally on return
    // (also when the walk failed part way).
    inner.l1.remove_prefix(&below);
    inner.l1.invalidate(&exact);
    let removed = match removed {
        Ok(removed) => removed,
        Err(err) => {
            // Part of L2 may be walked (a sharded store or a cluster with one node down): the
            // other instances must drop their copies now, not when the walk finally succeeds,
            // and the walk (and the exact key's delete) are retried in the background.
            inner.drop_replicas(&exact).await;
            inner.announce(Invalidation::Prefix(&below)).await;
            inner.announce(Invalidation::Key(&exact)).await;
            let retries = &inner.coherence.retries;
            retries.push(&owner, Retry::Prefix(below.as_str().into()));
            retries.push(&owner, Retry::Key(exact.as_str().into()));
            return Err(err.into());
        }
    };
    inner.drop_replicas(&exact).await;
    // An announcement the store did not take is retried (L2 is done).
    if !inner.announce(Invalidation::Prefix(&below)).await {
        let retry = Retry::AnnouncePrefix(below.as_str().into());
        inner.coherence.retries.push(&owner, retry);
    }
    if !inner.announce(Invalidation::Key(&exact)).await {
        let retry = Retry::AnnounceKey(exact.as_str().into());
        inner.coherence.retries.push(&owner, retry);
    }
    Ok(removed)
}
