//! [`CacheBuilder`]: every knob of a [`Cache`], with defaults that are safe in production.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::cache::entries::{TtlFrom, Weigher};
use crate::cache::verify::{HookFactory, VerifyHook};
use crate::cache::warm::{KeyBook, RewarmPolicy};
use crate::cache::{Cache, Coherence, Format, Inner, Operations, Protection, ReadDefaults};
use crate::coherence::backplane::{Backplane, BackplaneTransport};
use crate::coherence::pending::PendingDeletes;
use crate::coherence::retry::RetryQueue;
use crate::coherence::tags::{
    table_key, TagLedger, TagsFrom, DEFAULT_MAX_TAGS_PER_ENTRY, DEFAULT_MAX_TAG_BYTES,
};
use crate::envelope::Compression;
use crate::envelope::MAX_STORED_TAGS;
use crate::error::{Error, Result};
use crate::loader::{Loader, SharedLoader};
use crate::metrics::CacheMetrics;
use crate::ops::hotkeys::HotKeys;
use crate::ops::replicas::{Replicas, MAX_REPLICAS};
use crate::ops::verify::VerifyOptions;
use crate::protect::flight::Flights;
use crate::protect::lease::{FillWaiters, LeaseConfig};
use crate::protect::origin_limit::{AdaptiveLimit, OriginLimit, MAX_LIMIT};
use crate::store::{MemoryStore, Store};
use crate::tiers::breaker::BreakerConfig;
use crate::tiers::codec::{Codec, Postcard};
use crate::tiers::freshness::TtlPolicy;
use crate::tiers::freshness::MAX_DURATION;
use crate::tiers::key::{CacheKey, KeySpace, DEFAULT_MAX_KEY_BYTES};
use crate::tiers::local::LocalTier;
use crate::tiers::recovery::Recovery;
use crate::tiers::remote::Remote;

/// Default TTL of positive entries.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default TTL of negative entries.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Default share of a TTL added at random.
pub const DEFAULT_TTL_JITTER: f64 = 0.1;
/// Default L1 bound.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 << 20;
/// Default cap on L1 entry lifetime.
pub const DEFAULT_L1_TTL_CAP: Duration = Duration::from_secs(60);
/// Default largest encoded value.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 << 20;
/// Default time a loaded value too large for L2 stays in L1 (`CacheBuilder::oversized_in_l1`).
pub const DEFAULT_OVERSIZED_IN_L1: Duration = Duration::from_secs(5);
/// Default window past an entry's fresh time in which it is served if the origin fails.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(300);
/// Default pace at which a failing origin is retried while stale values are served.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(10);
/// Default XFetch eagerness (the paper's optimum).
pub const DEFAULT_XFETCH_BETA: f64 = 1.0;
/// Default lifetime of a load lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// Default longest time a load keeps extending its lease (see [`CacheBuilder::lease_max_hold`]).
pub const DEFAULT_LEASE_MAX_HOLD: Duration = Duration::from_secs(30);
/// Default re-check interval while waiting for another instance's fill.
pub const DEFAULT_LEASE_POLL: Duration = Duration::from_millis(100);
/// Default number of hot keys reported.
pub const DEFAULT_HOT_KEYS: usize = 10;
/// Default bound of the hot-key shield (L1 disabled).
pub const DEFAULT_HOT_KEY_SHIELD_BYTES: u64 = 1 << 20;
/// Default life of a hot-key shield entry.
pub const DEFAULT_HOT_KEY_SHIELD_LIFE: Duration = Duration::from_secs(1);
/// How long after a remote-tier recovery L1 answers for keys the remote tier lost.
pub const DEFAULT_RECOVERY_WINDOW: Duration = Duration::from_secs(30);
/// Most hot keys reported (each rank is a gauge series).
const MAX_HOT_KEYS: usize = 1_000;
/// Default bound on keys with a load in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// Configures and builds a [`Cache`]. Start with [`Cache::builder`].
///
/// ```
/// use std::time::Duration;
/// use herdwise::{Cache, Compression, Json, MemoryStore};
///
/// let cache: Cache<(u64, String), Vec<u32>> = Cache::builder("recs")
///     .store(MemoryStore::new())
///     .ttl(Duration::from_secs(120))
///     .ttl_jitter(0.2)
///     .negative_ttl(Some(Duration::from_secs(5)))
///     .l1_max_bytes(16 << 20)
///     .l1_ttl_cap(Duration::from_secs(10))
///     .schema_version(2)
///     .codec(Json)
///     .compression(Compression::Lz4 { min_bytes: 1024 })
///     .build()
///     .unwrap();
/// ```
#[must_use]
pub struct CacheBuilder<K: ?Sized, V> {
    namespace: String,
    store: Option<Arc<dyn Store>>,
    store_timeout: Option<Duration>,
    ttl: Duration,
    ttl_jitter: f64,
    negative_ttl: Option<Duration>,
    l1_max_bytes: u64,
    l1_ttl_cap: Duration,
    schema_version: u32,
    codec: Option<Arc<dyn Codec<V>>>,
    /// The codec when none is given (Postcard, for serde values).
    default_codec: Option<DefaultCodec<V>>,
    compression: Compression,
    max_value_bytes: usize,
    oversized_in_l1: Option<Duration>,
    max_key_bytes: usize,
    tenant_required: bool,
    max_in_flight: usize,
    lease: Option<LeaseConfig>,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    fail_safe_throttle: Duration,
    hard_timeout: Option<Duration>,
    soft_timeout: Option<Duration>,
    loader: Option<SharedLoader<K, V>>,
    /// A `batch::ErasedBatchLoader`, for `fetch_many`.
    batch_loader: Option<Arc<dyn std::any::Any + Send + Sync>>,
    xfetch_beta: f64,
    backplane: bool,
    transport: BackplaneTransport,
    keyspace_notifications: bool,
    breaker: Option<BreakerConfig>,
    origin_limit: OriginLimitChoice,
    hot_keys: usize,
    max_tags: usize,
    max_tag_bytes: usize,
    tags_from: Option<TagsFrom<V>>,
    recovery_window: Duration,
    rewarm: Option<RewarmPolicy>,
    hot_key_shield: Option<(u64, Duration)>,
    replicas: Option<Replicas>,
    weigher: Option<Weigher<V>>,
    ttl_from: Option<TtlFrom<V>>,
    verify: Option<HookFactory<K, V>>,
    _key: PhantomData<fn(&K)>,
}

/// Makes the codec a builder uses when given none.
type DefaultCodec<V> = fn() -> Arc<dyn Codec<V>>;

fn postcard<V: Serialize + DeserializeOwned + Send + Sync + 'static>() -> Arc<dyn Codec<V>> {
    // Byte buffers: the same bytes, without serde's element-by-element visit.
    let bytes: Box<dyn std::any::Any> =
        Box::new(Arc::new(crate::tiers::codec::PostcardBytes) as Arc<dyn Codec<Vec<u8>>>);
    match bytes.downcast::<Arc<dyn Codec<V>>>() {
        Ok(codec) => *codec,
        Err(_) => Arc::new(Postcard),
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + ?Sized,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A builder whose codec defaults to [`Postcard`].
    pub(crate) fn new_serde(namespace: &str) -> Self {
        let mut builder = Self::new(namespace);
        builder.default_codec = Some(postcard::<V>);
        builder
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    pub(crate) fn new(namespace: &str) -> Self {
        CacheBuilder {
            namespace: namespace.to_string(),
            store: None,
            store_timeout: None,
            ttl: DEFAULT_TTL,
            ttl_jitter: DEFAULT_TTL_JITTER,
            negative_ttl: Some(DEFAULT_NEGATIVE_TTL),
            l1_max_bytes: DEFAULT_L1_MAX_BYTES,
            l1_ttl_cap: DEFAULT_L1_TTL_CAP,
            schema_version: 1,
            codec: None,
            default_codec: None,
            compression: Compression::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            oversized_in_l1: Some(DEFAULT_OVERSIZED_IN_L1),
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            tenant_required: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            lease: Some(LeaseConfig {
                ttl: DEFAULT_LEASE_TTL,
                wait: DEFAULT_LEASE_TTL,
                poll: DEFAULT_LEASE_POLL,
                max_hold: DEFAULT_LEASE_MAX_HOLD,
            }),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: DEFAULT_STALE_IF_ERROR,
            fail_safe_throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            hard_timeout: None,
            soft_timeout: None,
            loader: None,
            batch_loader: None,
            xfetch_beta: DEFAULT_XFETCH_BETA,
            backplane: true,
            transport: BackplaneTransport::PubSub,
            keyspace_notifications: false,
            breaker: Some(BreakerConfig::default()),
            origin_limit: OriginLimitChoice::Adaptive(AdaptiveLimit::default()),
            hot_keys: DEFAULT_HOT_KEYS,
            max_tags: DEFAULT_MAX_TAGS_PER_ENTRY,
            max_tag_bytes: DEFAULT_MAX_TAG_BYTES,
            tags_from: None,
            recovery_window: DEFAULT_RECOVERY_WINDOW,
            rewarm: Some(RewarmPolicy::default()),
            hot_key_shield: Some((DEFAULT_HOT_KEY_SHIELD_BYTES, DEFAULT_HOT_KEY_SHIELD_LIFE)),
            replicas: None,
            weigher: None,
            ttl_from: None,
            verify: None,
            _key: PhantomData,
        }
    }

    /// The shared (L2) store. Default: a private [`MemoryStore`] (embedded, no Redis).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The shared (L2) store, already shared behind an `Arc`.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Deadline of each store call (default: the store's own, 100 ms for Redis). A call that
    /// misses it is a miss (reads) or a counted failure (writes).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// Time-to-live of entries (default 300 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Adds up to `fraction × TTL` at random to every TTL (default 0.1; 0 turns it off), so that
    /// entries written together do not expire together.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction;
        self
    }

    /// Turns TTL jitter off.
    pub fn no_ttl_jitter(self) -> Self {
        self.ttl_jitter(0.0)
    }

    /// TTL of negative entries (the loader said "does not exist"); `None` caches nothing for
    /// absent keys. Default 30 s: long enough to absorb scans of random ids, short enough that
    /// a newly created record shows up soon even if nobody invalidates.
    pub fn negative_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// L1 bound in bytes (default 64 MiB; 0 disables L1 — except for the hot-key shield, see
    /// [`CacheBuilder::hot_key_shield`]). L1 is sharded (4 shards per core, a power of two,
    /// but no shard smaller than 8 MiB: one below 16 MiB) and refuses an entry heavier than
    /// 97 % of a shard, weighed uncompressed with its key and tags: an L1 of 8 MiB or more
    /// admits entries up to 7.76 MiB, a smaller one up to about 97 % of its bound.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// How L1 weighs a value against [`CacheBuilder::l1_max_bytes`], in bytes (default: its
    /// uncompressed encoded length — for postcard, a decoded value's heap size is usually 1-3x
    /// that; more for maps and many small allocations). Give a weigher when your values' memory
    /// differs much from their encoded size. Every entry is also charged its key, its tags and
    /// 96 bytes of bookkeeping.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, Vec<String>> = herdwise::Cache::builder("lists")
    ///     .l1_max_bytes(32 << 20)
    ///     .l1_weigher(|v: &Vec<String>| v.iter().map(|s| s.capacity() + 24).sum::<usize>() + 24)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn l1_weigher(mut self, weigh: impl Fn(&V) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigh));
        self
    }

    /// Each value's own time-to-live, where the value carries one (Caffeine's `Expiry`): an
    /// HTTP response's freshness, a token's expiry. `None` falls back to [`Self::ttl`]. The
    /// value's TTL is used as given (no jitter) but never past [`Self::ttl`], which is then the
    /// longest an entry lives (tag marks and retried invalidations are kept for as long as that
    /// reaches); the stale windows and the L1 cap apply on top as for any entry.
    ///
    /// ```
    /// use std::time::Duration;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Token { secret: String, expires_in_secs: u64 }
    /// let tokens: herdwise::Cache<str, Token> = herdwise::Cache::builder("tokens")
    ///     .ttl_from(|t: &Token| Some(Duration::from_secs(t.expires_in_secs)))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn ttl_from(
        mut self,
        ttl_of: impl Fn(&V) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.ttl_from = Some(Arc::new(ttl_of));
        self
    }

    /// With L1 disabled (`l1_max_bytes(0)`), the hottest keys (see
    /// [`CacheBuilder::hot_keys`]) still get an in-process copy, of at most `max_bytes` in all,
    /// each kept for at most `life` (default 1 MiB, 1 s): one key read 100 000 times a second
    /// by every instance would otherwise be 100 000 Redis reads a second on one shard.
    /// Invalidations reach the shield like any L1. No effect when L1 is enabled.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("prices")
    ///     .l1_max_bytes(0)
    ///     .hot_key_shield(256 << 10, Duration::from_millis(200))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn hot_key_shield(mut self, max_bytes: u64, life: Duration) -> Self {
        self.hot_key_shield = Some((max_bytes, life));
        self
    }

    /// Hot-key splitting (default off): each hot key (see [`CacheBuilder::hot_keys`]) gets
    /// `copies` copies in L2 (1-16), each kept for at most `life`; its readers pick the primary
    /// or a copy at random, so on Redis Cluster its reads spread over up to `copies + 1` shards.
    /// Writes and invalidations delete the copies too (one more `DEL` per copy). A reader that
    /// refreshed a copy just before an invalidation can leave the old value there for `life` at
    /// most: keep it short.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("flash-sale")
    ///     .hot_key_replicas(4, Duration::from_secs(1))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn hot_key_replicas(mut self, copies: u8, life: Duration) -> Self {
        self.replicas = Some(Replicas {
            count: copies,
            life,
        });
        self
    }

    /// No hot-key shield: with L1 disabled, every read goes to L2.
    pub fn no_hot_key_shield(mut self) -> Self {
        self.hot_key_shield = None;
        self
    }

    /// Longest life of an L1 entry (default 60 s), whatever the TTL: bounds how long a missed
    /// invalidation can be served from this process's memory.
    pub fn l1_ttl_cap(mut self, cap: Duration) -> Self {
        self.l1_ttl_cap = cap;
        self
    }

    /// Schema version in the stored key (default 1). Bump it when `V` changes shape: new code
    /// then never reads bytes written by old code.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Payload codec (default [`Postcard`]).
    pub fn codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Some(Arc::new(codec));
        self
    }

    /// Payload compression (default lz4 for payloads of 4 KiB or more).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Largest encoded value (default 4 MiB). Larger values are rejected by `set` with
    /// [`Error::ValueTooLarge`] and returned uncached by `get_or_load`: not in L2, and in L1
    /// only for [`CacheBuilder::oversized_in_l1`].
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// How long a *loaded* value larger than `max_value_bytes` is kept in this instance's L1
    /// (default 5 s; `None`: not at all). It never goes to L2, so without this every read of
    /// such a key would go to the origin; with it each instance loads it at most once per
    /// `keep` (and per invalidation: invalidations, tags and L1 demotion reach it like any L1
    /// entry; it has no stale window and lives at most the value's TTL). L1's byte bound
    /// holds: a value heavier than L1's largest entry (see [`CacheBuilder::l1_max_bytes`]) is
    /// not kept either, and says so in its warning. Counted in
    /// `herdwise_uncacheable_values_total{reason="too_large"}` per load, and logged at most
    /// once a second.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// let loads = AtomicUsize::new(0);
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("reports")
    ///     .max_value_bytes(1_000)
    ///     .oversized_in_l1(Some(Duration::from_secs(2)))
    ///     .build()?;
    /// for _ in 0..10 {
    ///     let load = |_: &u64| {
    ///         loads.fetch_add(1, Ordering::SeqCst);
    ///         async { Ok::<_, std::io::Error>(Some("x".repeat(5_000))) }
    ///     };
    ///     assert_eq!(cache.get_or_load(&1, load).await?.map(|v| v.len()), Some(5_000));
    /// }
    /// assert_eq!(loads.load(Ordering::SeqCst), 1); // not one per read
    /// # Ok(()) }
    /// ```
    pub fn oversized_in_l1(mut self, keep: Option<Duration>) -> Self {
        self.oversized_in_l1 = keep;
        self
    }

    /// Longest stored key in bytes, prefix included (default 512).
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Makes the namespace tenant-scoped (default off): every key is used through
    /// [`Cache::for_tenant`], which makes the tenant the key's first component (and scopes
    /// tags to the tenant). A call with a key on a handle without a tenant fails with
    /// `Error::InvalidKey(KeyError::TenantRequired)`, so a code path that forgot the tenant
    /// cannot read or overwrite another tenant's entry. Namespace-wide calls (`clear`,
    /// statistics) stay on the plain handle.
    ///
    /// ```
    /// use herdwise::Cache;
    /// let carts: Cache<u64, String> = Cache::builder("carts").require_tenant().build().unwrap();
    /// let _acme = carts.for_tenant("acme").unwrap();
    /// ```
    pub fn require_tenant(mut self) -> Self {
        self.tenant_required = true;
        self
    }

    /// Most keys with a load in flight before new loads run uncoalesced (default 10 000).
    pub fn max_in_flight(mut self, keys: usize) -> Self {
        self.max_in_flight = keys;
        self
    }

    /// Lifetime of the cross-instance load lease (default 5 s): how long a dead holder blocks
    /// other instances. A load slower than this keeps its lease (the holder extends it every
    /// third of the TTL, up to [`CacheBuilder::lease_max_hold`]), so its value is cached.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        if let Some(lease) = self.lease.as_mut() {
            lease.ttl = ttl;
        }
        self
    }

    /// How long an instance waits for another instance's fill before loading itself (default
    /// 5 s), and how often it re-checks meanwhile in case the fill announcement was lost
    /// (default 100 ms).
    pub fn lease_wait(mut self, wait: Duration, poll: Duration) -> Self {
        if let Some(lease) = self.lease.as_mut() {
            lease.wait = wait;
            lease.poll = poll;
        }
        self
    }

    /// Longest time a load keeps extending its lease (default 30 s): past it, a load that is
    /// still running (a stuck origin call without a `loader_timeout`) lets its lease expire,
    /// so it stops holding the key for other instances (its fill is then refused, unless it
    /// lands before the lease's last TTL runs out).
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("slow")
    ///     .lease_max_hold(Duration::from_secs(90))
    ///     .build()
    ///     .unwrap();
    /// # let _ = cache;
    /// ```
    pub fn lease_max_hold(mut self, hold: Duration) -> Self {
        if let Some(lease) = self.lease.as_mut() {
            lease.max_hold = hold;
        }
        self
    }

    /// Turns cross-instance leases off: every instance loads a missing key itself (still once
    /// per process), and fills are not fenced against concurrent invalidations.
    pub fn no_leases(mut self) -> Self {
        self.lease = None;
        self
    }

    /// Stale-while-revalidate window (default 0: off). Past its fresh time, an entry that another
    /// instance is already refreshing is served at once, flagged stale, for this long.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Stale-if-error ("fail-safe") window (default 5 min; 0 turns it off). If the loader fails
    /// or times out, an entry up to this far past its fresh time is served, flagged stale,
    /// instead of the error. Entries are kept in L2 for this long past their TTL.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// After serving stale because the origin failed, the stale value counts as fresh again for
    /// this long (default 10 s), so a failing origin is retried at that pace, not on every read.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// Gives up on a loader call after this long (default: no limit). A timed-out load is
    /// [`Error::LoaderTimeout`], or the stale value within the stale-if-error window.
    pub fn loader_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Registers the loader [`Cache::fetch`] uses, which also lets the cache refresh in the
    /// background: stale-while-revalidate answers with the stale value while the loader runs
    /// behind it, and XFetch refreshes hot entries shortly before they expire.
    pub fn loader(mut self, loader: impl Loader<K, V>) -> Self {
        self.loader = Some(Arc::new(loader));
        self
    }

    /// XFetch eagerness β for [`Cache::fetch`] (default 1.0; 0 disables early refresh). An
    /// entry is refreshed early with probability `exp(-remaining / (β·Δ))`, Δ being how long its
    /// last load took: slow loads start earlier, cheap ones barely ever.
    pub fn xfetch_beta(mut self, beta: f64) -> Self {
        self.xfetch_beta = beta;
        self
    }

    /// For [`Cache::fetch`]: if a load takes longer than this and a stale value exists, the stale
    /// value is returned and the load finishes in the background (default: off).
    pub fn loader_soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Turns the invalidation backplane off (default on): writes and invalidations are then not
    /// announced to other instances, whose L1 copies live until the L1 TTL cap.
    pub fn no_backplane(mut self) -> Self {
        self.backplane = false;
        self
    }

    /// How invalidation events travel (default [`BackplaneTransport::PubSub`]). With
    /// [`BackplaneTransport::Streams`], an instance that loses its connection for a moment
    /// resumes from the last event it read instead of clearing its L1.
    pub fn backplane_transport(mut self, transport: BackplaneTransport) -> Self {
        self.transport = transport;
        self
    }

    /// Listens to the store's keyspace notifications (default off): then a change that any
    /// program makes to one of the namespace's stored keys (`<namespace>:v<schema>:<key>`, see
    /// the format spec) — a `DEL` or `SET` by a service in another language, an `EXPIRE`, an
    /// expiry, an eviction — drops the key from every instance's L1, instead of living there
    /// until the L1 TTL cap.
    ///
    /// Needs Redis with `notify-keyspace-events` including `Kg$xe`: the cache adds what is
    /// missing with `CONFIG SET` on each connection, and warns once if the server refuses (set
    /// it in the server's configuration then). On a cluster, every seed node is listened to:
    /// list them all. The cost: every write to the namespace's keys, this instance's own
    /// included, is a message to every instance, and an instance's own L2 write drops its own
    /// L1 copy, so the next read of the key takes one L2 read (see the guide's invalidation
    /// page for figures). Needs the backplane (not [`no_backplane`](Self::no_backplane)).
    ///
    /// ```
    /// use herdwise::Cache;
    /// let cache: Cache<u64, String> = Cache::builder("catalog")
    ///     .keyspace_notifications(true)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn keyspace_notifications(mut self, on: bool) -> Self {
        self.keyspace_notifications = on;
        self
    }

    /// The circuit breaker on the remote tier (default: on, [`BreakerConfig::default`]). While
    /// it is open no store call is made: reads go L1 → origin, writes stay in L1, failed
    /// invalidations wait in the retry queue.
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Turns the circuit breaker off: every store call is attempted (each bounded by the store
    /// deadline).
    pub fn no_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Origin protection with a fixed number: at most `max_concurrent` loader calls of this
    /// cache at once, instead of the learned limit (see
    /// [`CacheBuilder::adaptive_origin_limit`]). A load beyond it answers with the stale value
    /// if one is usable within the stale-if-error window, else waits up to `max_wait` for a
    /// slot, else fails with [`Error::Overloaded`]. Size it from what the origin can serve per
    /// instance.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .origin_concurrency_limit(32, Duration::from_millis(200))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.origin_limit(), Some(32));
    /// ```
    pub fn origin_concurrency_limit(mut self, max_concurrent: usize, max_wait: Duration) -> Self {
        self.origin_limit = OriginLimitChoice::Fixed(max_concurrent, max_wait);
        self
    }

    /// The default origin protection, with other settings: loader calls at once are limited
    /// by a limit learned from their latency and failures (it grows while loads are fast and
    /// the limit binds, shrinks when latency rises past the tolerance or 10 % of loads fail),
    /// re-measures the origin's unqueued latency every 2 s with a short probe at a quarter of
    /// the limit, and is held to 1.5× the healthy concurrency while the remote tier is
    /// unavailable. A load beyond it answers stale if it can, else waits up to the limit's
    /// `max_wait`, else fails with [`Error::Overloaded`]. [`AdaptiveLimit`] has the settings
    /// and their defaults; the README's "Origin protection" row, the rules in full.
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .adaptive_origin_limit(herdwise::AdaptiveLimit::default().bounds(8, 128))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.origin_limit(), Some(32));
    /// ```
    pub fn adaptive_origin_limit(mut self, config: AdaptiveLimit) -> Self {
        self.origin_limit = OriginLimitChoice::Adaptive(config);
        self
    }

    /// Turns origin protection off: every load calls the loader at once (the in-process
    /// single-flight and the leases still collapse loads of one key).
    ///
    /// ```
    /// let cache: herdwise::Cache<u64, String> =
    ///     herdwise::Cache::builder("users").no_origin_limit().build().unwrap();
    /// assert_eq!(cache.origin_limit(), None);
    /// ```
    pub fn no_origin_limit(mut self) -> Self {
        self.origin_limit = OriginLimitChoice::Off;
        self
    }

    /// How long after the remote tier recovers from an outage (the breaker closes again) L1
    /// answers, flagged stale, for keys the remote tier lost, instead of sending each of them to
    /// the origin at once (default 30 s). Every L1 entry is re-checked against L2 first; the
    /// staggered re-warm reloads the hottest keys meanwhile. `Duration::ZERO`: reads of lost
    /// keys load at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .recovery_window(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn recovery_window(mut self, window: Duration) -> Self {
        self.recovery_window = window;
        self
    }

    /// How the hottest keys are reloaded after the remote tier recovers from an outage (default
    /// [`RewarmPolicy::default`]: top 1 % within 5 s, top 10 % within the next 10 s, the rest
    /// of the tracked keys within the next 15 s). Needs a registered loader; the keys are those
    /// this instance read with [`Cache::fetch`] lately, ranked by the hot-key tracker.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = herdwise::RewarmPolicy::default()
    ///     .stages([(0.01, Duration::from_secs(30)), (0.1, Duration::from_secs(60)), (1.0, Duration::from_secs(60))])
    ///     .max_keys(5_000);
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .rewarm_after_recovery(policy)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn rewarm_after_recovery(mut self, policy: RewarmPolicy) -> Self {
        self.rewarm = Some(policy);
        self
    }

    /// No automatic re-warm after a recovery.
    pub fn no_rewarm_after_recovery(mut self) -> Self {
        self.rewarm = None;
        self
    }

    /// How many of the hottest keys [`Cache::hot_keys`] reports (default 10).
    pub fn hot_keys(mut self, k: usize) -> Self {
        self.hot_keys = k;
        self
    }

    /// Longest tag in bytes (default 512, as for keys; at most 1 MiB), tenant prefix
    /// included. Tags up to 128 bytes are stored as they are; longer ones by a digest
    /// (`sha256:` and 32 hex digits of the tag's SHA-256; [`Cache::invalidate_tag`] applies
    /// the same, so they work like any other tag).
    ///
    /// What a tag that is too long (or empty, or with control characters) does depends on the
    /// call: a write that carries it (`set_with`) fails with
    /// [`Error::InvalidTag`](crate::Error::InvalidTag) and the key is invalidated (its old value
    /// is not served in place of the new one) — in `write_through`, whose origin write is done
    /// by then, the error is in [`WrittenThrough::cached`](crate::WrittenThrough); a load's own tags (`LoadOptions::tags`) are
    /// checked before the origin is asked (the same error, nothing loaded); tags derived from
    /// a loaded value (`tags_from`) that fail leave the value returned but not cached (counted
    /// in `herdwise_uncacheable_values_total{reason="encode"}`, logged at most once a second)
    /// — never cached without the tag, which would let it survive that tag's invalidation;
    /// `invalidate_tag` fails with `Error::InvalidTag`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, WriteOptions};
    /// let cache: Cache<u64, String> = Cache::builder("docs").max_tag_bytes(1_024).build()?;
    /// let long = format!("folder:{}", "a/".repeat(300)); // 607 bytes
    /// cache.set_with(&1, "x".to_string(), &WriteOptions::default().tags([&long])).await?;
    /// cache.invalidate_tag(&long).await?;
    /// assert_eq!(cache.get(&1).await?, None);
    /// # Ok(()) }
    /// ```
    pub fn max_tag_bytes(mut self, bytes: usize) -> Self {
        self.max_tag_bytes = bytes;
        self
    }

    /// Most tags one entry may carry (default 16, at most 64). Tags cost bytes on every entry
    /// and a check on every read of a tagged entry: tag by what gets invalidated together
    /// (`category:shoes`), not by every attribute.
    pub fn max_tags_per_entry(mut self, max: usize) -> Self {
        self.max_tags = max;
        self
    }

    /// Derives tags from every value the cache stores (loads and writes), in addition to the
    /// tags a call gives. A value whose derived tags are invalid or too many is returned to its
    /// callers but not cached (`herdwise_uncacheable_values_total{reason="encode"}`); a `set`
    /// of it is an error.
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Product { id: u64, category: String }
    ///
    /// let cache: herdwise::Cache<u64, Product> = herdwise::Cache::builder("products")
    ///     .tags_from(|p: &Product| vec![format!("category:{}", p.category)])
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn tags_from(mut self, derive: impl Fn(&V) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.tags_from = Some(Arc::new(derive));
        self
    }

    /// Every duration and count the builder takes, checked against what the cache's time and
    /// size arithmetic can carry: a value out of range is an [`Error::Config`] naming the
    /// option, never a panic later.
    fn check_limits(&self) -> Result<()> {
        let max = MAX_DURATION;
        let durations = [
            ("ttl", Some(self.ttl)),
            ("negative_ttl", self.negative_ttl),
            ("l1_ttl_cap", Some(self.l1_ttl_cap)),
            ("store_timeout", self.store_timeout),
            ("stale_while_revalidate", Some(self.stale_while_revalidate)),
            ("stale_if_error", Some(self.stale_if_error)),
            ("fail_safe_throttle", Some(self.fail_safe_throttle)),
            ("loader_timeout", self.hard_timeout),
            ("loader_soft_timeout", self.soft_timeout),
            ("recovery_window", Some(self.recovery_window)),
            ("lease_ttl", self.lease.map(|l| l.ttl)),
            ("lease_wait", self.lease.map(|l| l.wait)),
            ("lease_wait (poll)", self.lease.map(|l| l.poll)),
            ("lease_max_hold", self.lease.map(|l| l.max_hold)),
            ("origin limit (max_wait)", self.origin_limit.max_wait()),
            ("hot_key_shield (life)", self.hot_key_shield.map(|(_, l)| l)),
            ("hot_key_replicas (life)", self.replicas.map(|r| r.life)),
            ("oversized_in_l1", self.oversized_in_l1),
        ];
        for (name, value) in durations {
            if value.is_some_and(|d| d > max) {
                return Err(Error::Config(format!("{name} must be at most 10 years")));
            }
        }
        if self.store_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config("store_timeout must be positive".into()));
        }
        if self.soft_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config("loader_soft_timeout must be positive".into()));
        }
        if matches!(self.origin_limit, OriginLimitChoice::Fixed(n, _) if n > MAX_LIMIT) {
            return Err(Error::Config(format!(
                "origin_concurrency_limit must be at most {MAX_LIMIT}"
            )));
        }
        if let OriginLimitChoice::Adaptive(config) = &self.origin_limit {
            config.validate().map_err(Error::Config)?;
        }
        if self.hot_keys > MAX_HOT_KEYS {
            return Err(Error::Config(format!(
                "hot_keys must be at most {MAX_HOT_KEYS}"
            )));
        }
        if self.max_key_bytes < 16 || self.max_key_bytes > 1 << 20 {
            return Err(Error::Config(
                "max_key_bytes must be within 16..=1048576".into(),
            ));
        }
        if self.max_in_flight > 1 << 24 {
            return Err(Error::Config(
                "max_in_flight must be at most 16777216".into(),
            ));
        }
        Ok(())
    }

    /// Validates the configuration and builds the cache.
    ///
    /// **Install your metrics recorder first**: the cache registers its metric handles here, and
    /// a cache built before the recorder exists records nothing, for good (a warning is logged
    /// once per process when no recorder is found; see [`crate::metrics`]).
    pub fn build(self) -> Result<Cache<K, V>> {
        self.check_limits()?;
        let codec = match (self.codec.clone(), self.default_codec) {
            (Some(codec), _) => codec,
            (None, Some(default)) => default(),
            (None, None) => {
                return Err(Error::Config(
                    "codec: a value type without serde needs a codec (CacheBuilder::codec)".into(),
                ))
            }
        };
        if self.ttl.is_zero() {
            return Err(Error::Config("ttl must be positive".into()));
        }
        if !(0.0..=1.0).contains(&self.ttl_jitter) {
            return Err(Error::Config("ttl_jitter must be within 0.0..=1.0".into()));
        }
        if self.negative_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config(
                "negative_ttl must be positive (use None to disable)".into(),
            ));
        }
        if self.l1_ttl_cap.is_zero() {
            return Err(Error::Config("l1_ttl_cap must be positive".into()));
        }
        if self.oversized_in_l1.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config(
                "oversized_in_l1 must be positive (use None to disable)".into(),
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > u32::MAX as usize {
            return Err(Error::Config(
                "max_value_bytes must be within 1..=u32::MAX".into(),
            ));
        }
        if let Some(lease) = self.lease {
            if lease.ttl.is_zero() || lease.poll.is_zero() {
                return Err(Error::Config(
                    "lease ttl and poll interval must be positive".into(),
                ));
            }
        }
        if self.fail_safe_throttle.is_zero() && !self.stale_if_error.is_zero() {
            return Err(Error::Config("fail_safe_throttle must be positive".into()));
        }
        if self.hard_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config("loader_timeout must be positive".into()));
        }
        if !(self.xfetch_beta >= 0.0 && self.xfetch_beta.is_finite()) {
            return Err(Error::Config(
                "xfetch_beta must be a finite number >= 0".into(),
            ));
        }
        if matches!(self.transport, BackplaneTransport::Streams { max_len } if max_len < 100) {
            return Err(Error::Config(
                "backplane stream max_len must be at least 100".into(),
            ));
        }
        if matches!(self.origin_limit, OriginLimitChoice::Fixed(0, _)) {
            return Err(Error::Config(
                "origin_concurrency_limit must allow at least one load".into(),
            ));
        }
        if self.max_tag_bytes == 0 || self.max_tag_bytes > 1 << 20 {
            return Err(Error::Config(
                "max_tag_bytes must be within 1..=1048576".into(),
            ));
        }
        if self.max_tags == 0 || self.max_tags > MAX_STORED_TAGS {
            return Err(Error::Config(format!(
                "max_tags_per_entry must be within 1..={MAX_STORED_TAGS}"
            )));
        }
        if self.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be positive".into()));
        }
        if let Some(policy) = self.rewarm.as_ref() {
            policy.validate().map_err(Error::Config)?;
        }
        if self
            .replicas
            .is_some_and(|r| r.count == 0 || r.count > MAX_REPLICAS || r.life.is_zero())
        {
            return Err(Error::Config(format!(
                "hot_key_replicas: 1..={MAX_REPLICAS} copies with a positive life"
            )));
        }
        let mut keys = KeySpace::new(&self.namespace, self.schema_version, self.max_key_bytes)?;
        if self.tenant_required {
            keys = keys.require_tenant();
        }
        let metrics = CacheMetrics::new(&self.namespace);
        let recovery = Arc::new(Recovery::new(self.recovery_window));
        let hot_keys = HotKeys::new(
            self.hot_keys,
            metrics.hottest_key_share.clone(),
            metrics.hot_key_ranks(self.hot_keys),
        );
        // L1 off: the hot-key shield (if any) is a small L1 that admits hot keys only.
        let shield = self.hot_key_shield.filter(|_| self.l1_max_bytes == 0);
        if shield.is_some_and(|(bytes, life)| bytes == 0 || life.is_zero()) {
            return Err(Error::Config(
                "hot_key_shield bytes and life must be positive".into(),
            ));
        }
        let l1_bytes = shield.map_or(self.l1_max_bytes, |(bytes, _)| bytes);
        let l1 = LocalTier::new(
            l1_bytes,
            crate::tiers::local::L1Metrics {
                evictions_size: metrics.evictions_size.clone(),
                evictions_expiry: metrics.evictions_expiry.clone(),
                bytes: metrics.l1_bytes.clone(),
                entries: metrics.l1_entries.clone(),
            },
            recovery.clone(),
        )
        .map_err(Error::Config)?;
        let l1 = if shield.is_some() {
            l1.shield_only()
        } else {
            l1
        };
        let l1_cap = shield.map_or(self.l1_ttl_cap, |(_, life)| life.min(self.l1_ttl_cap));
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>);
        let deadline = self
            .store_timeout
            .unwrap_or_else(|| store.default_timeout());
        // The store's own default (e.g. `RedisStoreBuilder::call_timeout`) is checked as
        // `store_timeout` would be: a zero deadline fails every call and keeps the breaker open.
        if deadline.is_zero() || deadline > MAX_DURATION {
            return Err(Error::Config(format!(
                "store_timeout (here the store's default timeout, {deadline:?}) must be positive \
                 and at most 10 years"
            )));
        }
        let fill_waiters = FillWaiters::new(store.clone(), &self.namespace);
        if self.keyspace_notifications && !self.backplane {
            return Err(Error::Config(
                "keyspace_notifications needs the backplane (no_backplane was set)".into(),
            ));
        }
        let backplane = self.backplane.then(|| {
            let backplane = Backplane::new(store.clone(), &self.namespace, self.transport);
            if self.keyspace_notifications {
                backplane.with_keyspace_notifications(&self.namespace)
            } else {
                backplane
            }
        });
        if let Some(breaker) = self.breaker.as_ref() {
            breaker.validate().map_err(Error::Config)?;
        }
        let remote = Remote::new(
            store,
            deadline,
            self.breaker,
            metrics.clone(),
            &self.namespace,
            recovery.clone(),
        );
        let ttl_policy = TtlPolicy {
            ttl: self.ttl,
            jitter: self.ttl_jitter,
            negative_ttl: self.negative_ttl,
            l1_cap,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            fail_safe_throttle: self.fail_safe_throttle,
        };
        // The longest life of an entry this instance writes (positive or negative, with jitter
        // and the stale window). A mark, a retried invalidation and a pending local one must
        // outlive every entry they can reach — twice over, for instances of this namespace
        // configured with longer TTLs — or those entries would come back.
        let longest_ttl = self.ttl.max(self.negative_ttl.unwrap_or(Duration::ZERO));
        let longest_entry = longest_ttl.mul_f64(1.0 + self.ttl_jitter) + ttl_policy.stale_window();
        let reach = longest_entry * 2;
        let tag_mark_ttl = reach + Duration::from_secs(60);
        // The re-warm loads typed keys through the registered loader: only then is a book kept.
        let book = match (&self.rewarm, &self.loader) {
            (Some(policy), Some(_)) => Some(Arc::new(KeyBook::new(policy))),
            _ => None,
        };
        let verifier = match self.verify {
            Some(factory) => {
                Some(factory(metrics.clone(), self.loader.clone()).map_err(Error::Config)?)
            }
            None => None,
        };
        let mut cache = Cache::from_parts(
            Inner {
                keys,
                l1,
                remote: Arc::new(remote),
                ttl: ttl_policy,
                recovery,
                metrics: metrics.clone(),
                format: Format {
                    codec,
                    compression: self.compression,
                    max_value_bytes: self.max_value_bytes,
                    oversized_in_l1: self.oversized_in_l1,
                    weigher: self.weigher,
                    ttl_from: self.ttl_from,
                    scope_log: crate::throttle::LogThrottle::new(Duration::from_secs(1)),
                    uncached_log: crate::throttle::LogThrottle::new(Duration::from_secs(1)),
                    corrupt_log: crate::throttle::LogThrottle::new(Duration::from_secs(1)),
                },
                protect: Protection {
                    flights: Flights::new(self.max_in_flight),
                    lease: self.lease,
                    fill_waiters,
                    origin_limit: match self.origin_limit {
                        OriginLimitChoice::Off => None,
                        OriginLimitChoice::Fixed(max, wait) => Some(OriginLimit::fixed(max, wait)),
                        OriginLimitChoice::Adaptive(config) => Some(OriginLimit::adaptive(
                            config,
                            Some(metrics.origin_limit_gauge()),
                        )),
                    },
                    refreshing: crate::protect::refreshing::Refreshing::new(self.max_in_flight),
                    miss_rate: Default::default(),
                },
                coherence: Coherence {
                    backplane,
                    retries: RetryQueue::new(reach, metrics.clone()),
                    pending: PendingDeletes::new(reach),
                    generation_synced: std::sync::atomic::AtomicBool::new(false),
                    generation_attempt_ms: std::sync::atomic::AtomicU64::new(0),
                    generation_sync: tokio::sync::Mutex::new(()),
                    tags: TagLedger::new(reach),
                    tag_table_key: table_key(&self.namespace),
                    tag_mark_ttl,
                    max_tags: self.max_tags,
                    max_tag_bytes: self.max_tag_bytes,
                    tags_from: self.tags_from,
                },
                ops: Operations {
                    hot_keys,
                    rewarm: self.rewarm,
                    rewarm_started: std::sync::atomic::AtomicBool::new(false),
                    warmed: std::sync::atomic::AtomicBool::new(false),
                    replicas: self.replicas,
                },
                defaults: ReadDefaults {
                    hard_timeout: self.hard_timeout,
                    soft_timeout: self.soft_timeout,
                    xfetch_beta: self.xfetch_beta,
                },
            },
            self.loader,
            book,
        );
        cache.verifier = verifier;
        cache.batch_loader = self.batch_loader;
        Ok(cache)
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + ToOwned + Sync + ?Sized + 'static,
    K::Owned: Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Checks what the cache serves against the origin (seed 001's verification job): a
    /// fraction of the reads answered fresh from L1 or L2 is sampled, reloaded through the
    /// registered loader (within `options`' load budget and the origin limit; the result is not
    /// cached) and compared with `==`. A mismatch still there `confirm_after` later is
    /// counted (`herdwise_verify_checks_total{outcome="mismatch"}`, the drift ratio, the
    /// entry's age), reported by [`Cache::verify_report`], and with `repair` invalidated
    /// everywhere. Needs a [`loader`](CacheBuilder::loader) (`Error::Config` at `build()`
    /// otherwise). Costs a fresh hit one thread-local random draw.
    ///
    /// ```
    /// # fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("catalog")
    ///     .loader(|k: &u64| {
    ///         let v = format!("row {k}");
    ///         async move { Ok::<_, std::io::Error>(Some(v)) }
    ///     })
    ///     .verify(herdwise::VerifyOptions::new(0.01).repair(true))
    ///     .build()?;
    /// # drop(cache); Ok(()) }
    /// ```
    pub fn verify(self, options: VerifyOptions) -> Self
    where
        V: PartialEq,
    {
        self.verify_by(options, |a: &V, b: &V| a == b)
    }

    /// [`verify`](CacheBuilder::verify) with your own comparison, e.g. of a fingerprint that
    /// leaves out fields the cache may legitimately hold older (a view count).
    ///
    /// ```
    /// # fn main() -> Result<(), herdwise::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Product { price_cents: u64, views: u64 }
    /// let cache: herdwise::Cache<u64, Product> = herdwise::Cache::builder("catalog")
    ///     .loader(|_: &u64| async { Ok::<_, std::io::Error>(None) })
    ///     .verify_by(herdwise::VerifyOptions::new(0.05), |a: &Product, b: &Product| {
    ///         a.price_cents == b.price_cents
    ///     })
    ///     .build()?;
    /// # drop(cache); Ok(()) }
    /// ```
    pub fn verify_by(
        mut self,
        options: VerifyOptions,
        same: impl Fn(&V, &V) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.verify = Some(VerifyHook::factory(options, Arc::new(same)));
        self
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + ToOwned + ?Sized + 'static,
    K::Owned: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Registers the batch loader [`Cache::fetch_many`] uses: given the keys a batch leads
    /// (each once), it returns what it found (a `HashMap`, or a [`crate::BatchLoaded`] with
    /// per-key failures). Without one, `fetch_many` calls the [`CacheBuilder::loader`] once per
    /// key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use std::collections::HashMap;
    /// let users: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .batch_loader(|ids: Vec<u64>| async move {
    ///         // one query for all of them
    ///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, format!("user-{id}"))).collect::<HashMap<_, _>>())
    ///     })
    ///     .build()?;
    /// let got = users.fetch_many([&1, &2]).await;
    /// assert_eq!(got[1].as_ref().unwrap().as_deref().map(String::as_str), Some("user-2"));
    /// # Ok(()) }
    /// ```
    pub fn batch_loader<F, Fut, R, E>(mut self, loader: F) -> Self
    where
        F: Fn(Vec<K::Owned>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: Into<crate::BatchLoaded<K::Owned, V>>,
        E: Into<crate::loader::BoxError>,
    {
        let erased: crate::cache::batch::ErasedBatchLoader<K::Owned, V> =
            Arc::new(move |keys: Vec<K::Owned>| {
                let call = loader(keys);
                Box::pin(async move { call.await.map(Into::into).map_err(Into::into) })
            });
        self.batch_loader = Some(Arc::new(erased));
        self
    }
}

/// Which origin protection a cache gets.
#[derive(Debug, Clone, Copy)]
enum OriginLimitChoice {
    Off,
    Fixed(usize, Duration),
    Adaptive(AdaptiveLimit),
}

impl OriginLimitChoice {
    fn max_wait(&self) -> Option<Duration> {
        match self {
            OriginLimitChoice::Off => None,
            OriginLimitChoice::Fixed(_, wait) => Some(*wait),
            OriginLimitChoice::Adaptive(config) => Some(config.max_wait),
        }
    }
}
