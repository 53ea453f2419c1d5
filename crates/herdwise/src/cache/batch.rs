//! Batch reads: [`Cache::get_many`] and [`Cache::get_or_load_many`].
//!
//! One batch, in order: L1 for every key; **one** `MGET` for the L1 misses (split by slot on a
//! Cluster by the client); then, for what is still missing, one ordinary read pipeline per key,
//! all at once — each joins a load already in flight for its key in this process, or leads it
//! (the lease attempts go out together on the multiplexed connection: one round trip), and the
//! pipelines that lead hand their keys to `protect::gather`, which makes **one** batch-loader
//! call for all of them; the fills go out together as well. So every single-key guarantee
//! (single-flight with single reads of the same key, leases, fenced fills, tags, versions, hot
//! keys, stale-if-error) holds per key, and a batch whose keys all miss costs one `MGET`, one
//! round of lease attempts, one loader call and one round of fills. Keys the loader does not
//! return are negative entries; keys it reports failed fail alone (with their stale value if
//! within stale-if-error). Duplicate keys are read once; results come back in input order.
//!
//! Contract: everything here is calls on the read path (`read`), the entries (`entries`) and
//! `protect::gather`; it owns no state beyond one call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::panic::AssertUnwindSafe;

use futures::future::join_all;
use futures::FutureExt as _;
use tracing::Instrument;

use crate::cache::entries::{Fallback, L2Read};
use crate::cache::observe::ReadSpan;
use crate::cache::read::{Fetched, KnownL2, LoadOptions, Replacing, Source};
use crate::cache::{Cache, Lookup};
use crate::error::{Error, Result};
use crate::loader::BoxError;
use crate::metrics::CacheMetrics;
use crate::protect::gather::{Gather, Park};
use crate::protect::origin_limit::{OriginLimit, OriginPermit, Slot};
use crate::tiers::key::CacheKey;

/// What a batch loader returns: the values it found, by key, and the keys it failed to load
/// (each fails alone). A key in neither does not exist at the origin (a negative entry).
/// Built from a `HashMap` or any iterator of `(key, value)` pairs.
///
/// ```
/// use herdwise::BatchLoaded;
/// let mut loaded: BatchLoaded<u64, String> = [(1, "one".to_string())].into_iter().collect();
/// loaded.insert(2, "two".to_string());
/// loaded.fail(3, "shard 3 timed out");
/// assert_eq!(loaded.len(), 2);
/// ```
#[derive(Debug)]
pub struct BatchLoaded<K, V> {
    found: HashMap<K, V>,
    failed: HashMap<K, Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl<K: Hash + Eq, V> BatchLoaded<K, V> {
    /// Nothing found yet.
    pub fn new() -> Self {
        BatchLoaded {
            found: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// `key`'s value.
    pub fn insert(&mut self, key: K, value: V) {
        self.failed.remove(&key);
        self.found.insert(key, value);
    }

    /// `key` could not be loaded: its read fails with this error (inside
    /// [`Error::Loader`]), or answers stale within stale-if-error.
    pub fn fail(&mut self, key: K, error: impl Into<BoxError>) {
        self.found.remove(&key);
        self.failed.insert(key, Arc::from(error.into()));
    }

    /// Values found.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether no value was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

impl<K: Hash + Eq, V> Default for BatchLoaded<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq, V> From<HashMap<K, V>> for BatchLoaded<K, V> {
    fn from(found: HashMap<K, V>) -> Self {
        BatchLoaded {
            found,
            failed: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for BatchLoaded<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        BatchLoaded::from(iter.into_iter().collect::<HashMap<K, V>>())
    }
}

/// Why a batch read got no value for a key from its batch loader, inside [`Error::Loader`]:
/// the loader's error (for the whole call, or for this key: [`std::error::Error::source`] is
/// the loader's own error), or the call was never answered.
#[derive(Debug, Clone)]
pub struct BatchLoadError(BatchFailure);

#[derive(Debug, Clone)]
enum BatchFailure {
    Loader(Arc<dyn std::error::Error + Send + Sync + 'static>),
    Overloaded {
        limit: usize,
        waited: std::time::Duration,
    },
    Panicked,
    Unanswered,
}

impl BatchLoadError {
    /// The error a single read gets for what happened to the call (it was shed by the origin
    /// limit, or the loader panicked), if it is not a loader error.
    pub(crate) fn as_read_error(&self) -> Option<Error> {
        match self.0 {
            BatchFailure::Overloaded { limit, waited } => Some(Error::Overloaded { limit, waited }),
            BatchFailure::Panicked => Some(Error::LoaderPanicked),
            _ => None,
        }
    }
}

impl std::fmt::Display for BatchLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BatchFailure::Loader(e) => write!(f, "batch loader failed: {e}"),
            BatchFailure::Overloaded { limit, .. } => {
                write!(f, "batch load shed: {limit} loads already running")
            }
            BatchFailure::Panicked => f.write_str("the batch loader panicked"),
            BatchFailure::Unanswered => f.write_str("the batch load was not answered"),
        }
    }
}

impl std::error::Error for BatchLoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            BatchFailure::Loader(e) => Some(&**e as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

/// A registered batch loader, type-erased (see `CacheBuilder::batch_loader`).
pub(crate) type ErasedBatchLoader<Q, V> = Arc<
    dyn Fn(
            Vec<Q>,
        )
            -> futures::future::BoxFuture<'static, std::result::Result<BatchLoaded<Q, V>, BoxError>>
        + Send
        + Sync,
>;

/// One pipeline's reply from its batch call.
type Reply<V> = std::result::Result<Option<V>, BatchLoadError>;

/// Most distinct keys one batch works on at once: a larger batch is read in parts of this
/// size, one after the other (one `MGET` round and one loader call each), so that no batch can
/// fill the in-flight map single reads coalesce in, or send an unbounded command.
pub const MAX_BATCH_KEYS: usize = 1_000;

/// A batch's lease attempts and fills in flight at once (they queue behind each other on the
/// connection otherwise, and each is judged by the breaker's slow-call rule).
const BATCH_L2_CALLS: usize = 32;

/// Keys per `MGET`: each is one call under the store deadline and the breaker's slow-call
/// rule, so it stays about as cheap as a single read; the parts go out together.
const MGET_KEYS: usize = 64;

/// A key of the batch past L1.
struct Missed<'k, K: ?Sized, V> {
    /// Where its answer goes (index into the distinct keys).
    slot: usize,
    key: &'k K,
    stored_key: String,
    fallback: Option<Fallback<V>>,
    /// What the batch's `MGET` found; `None`: not asked (the pipeline reads L2 itself).
    known: Option<KnownL2>,
}

/// Whether a batch call takes one origin-limit slot (a batch loader), or its per-key loads
/// take their own (the single loader, called once per key).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallSlot {
    One,
    PerKey,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + Hash + Eq + ToOwned + Sync + ?Sized,
    K::Owned: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Reads many keys through L1 and L2: L1 for each, then the L1 misses with `MGET`s of at
    /// most 64 keys, sent together. The values in input order (`None`: not cached); duplicate
    /// keys are read once. An invalid key fails the call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("docs").build()?;
    /// cache.set(&1, "one".to_string()).await?;
    /// let got = cache.get_many([&1, &2, &1]).await?;
    /// let got: Vec<Option<&str>> = got.iter().map(|v| v.as_deref().map(String::as_str)).collect();
    /// assert_eq!(got, [Some("one"), None, Some("one")]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<'k, I>(&self, keys: I) -> Result<Vec<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k K>,
        K: 'k,
    {
        let (order, distinct) = distinct(keys);
        // Every key checked before any is read (an invalid key fails the call up front).
        for key in &distinct {
            self.key_of(*key)?;
        }
        self.ensure_generation().await;
        let mut answers = Vec::with_capacity(distinct.len());
        for part in distinct.chunks(MAX_BATCH_KEYS) {
            answers.extend(self.get_part(part).await?);
        }
        Ok(order
            .into_iter()
            .map(|slot| answers[slot].clone())
            .collect())
    }

    /// [`Cache::get_many`] for at most [`MAX_BATCH_KEYS`] distinct keys.
    async fn get_part(&self, keys: &[&K]) -> Result<Vec<Option<Arc<V>>>> {
        let spans: Vec<ReadSpan> = keys
            .iter()
            .map(|_| ReadSpan::new(self.namespace(), "get_many"))
            .collect();
        let mut answers: Vec<Option<Arc<V>>> = vec![None; keys.len()];
        let mut missed = Vec::new();
        let mut pasts = Vec::new();
        for (slot, key) in keys.iter().enumerate() {
            match self.lookup_l1(key) {
                Ok(Lookup::Fresh(value, meta)) => {
                    spans[slot].ended(crate::metrics::GetResult::of_l1(
                        meta.stale_copy,
                        value.is_some(),
                    ));
                    answers[slot] = value;
                }
                Ok(Lookup::Miss {
                    stored_key,
                    fallback,
                }) => {
                    pasts.push((slot, spans[slot].past_l1(&self.inner.metrics)));
                    missed.push(Missed {
                        slot,
                        key: *key,
                        stored_key,
                        fallback,
                        known: None,
                    });
                }
                Err(err) => return Err(spans[slot].failed(&self.inner.metrics, err)),
            }
        }
        let found = self.read_l2_many(&mut missed, true).await;
        for (slot, past) in pasts {
            match found.get(&slot).cloned().flatten() {
                Some(f) => {
                    past.read(f.result(), Some(f.source));
                    answers[slot] = f.value;
                }
                None => past.read(crate::metrics::GetResult::Miss, None),
            }
        }
        Ok(answers)
    }

    /// Reads many keys, loading the missing ones with **one** call of `loader` (given the keys
    /// this call leads, each once): L1, one round of `MGET`s, then per key the read path of
    /// [`Cache::get_or_load`] — joined to a load of the same key already in flight in this
    /// process (a batch and a single read never load one key twice), under the cross-instance
    /// lease, fenced fill — with the loads gathered into one loader call. The results in input
    /// order, each key on its own: a key the loader does not return is cached as missing (a
    /// negative entry); a key it [fails](BatchLoaded::fail), or every key of a failed (or
    /// panicked) call, gets the error (or its stale value within stale-if-error); an invalid
    /// key fails alone.
    ///
    /// `loader` is called again, with only those keys, for keys that ended up loading after
    /// the call (another caller's load of them was cancelled, or another instance's lease
    /// wait timed out), and once per [`MAX_BATCH_KEYS`] distinct keys. Each call holds one
    /// origin-limit slot; a key's `hard_timeout` bounds its load (the wait for its call and the
    /// call), not the L1, `MGET` and lease steps before it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use std::collections::HashMap;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("docs").build()?;
    /// let got = cache
    ///     .get_or_load_many([&1, &2, &3], |ids: Vec<u64>| async move {
    ///         // one query: SELECT ... WHERE id = ANY($1); id 3 does not exist
    ///         let rows: HashMap<u64, String> =
    ///             ids.into_iter().filter(|id| *id != 3).map(|id| (id, format!("row-{id}"))).collect();
    ///         Ok::<_, std::io::Error>(rows)
    ///     })
    ///     .await;
    /// let got: Vec<Option<String>> =
    ///     got.into_iter().map(|r| r.unwrap().map(|v| (*v).clone())).collect();
    /// assert_eq!(got, [Some("row-1".into()), Some("row-2".into()), None]);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_many<'k, I, F, Fut, R, E>(
        &self,
        keys: I,
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k K>,
        K: 'k,
        F: Fn(Vec<K::Owned>) -> Fut,
        Fut: Future<Output = std::result::Result<R, E>>,
        R: Into<BatchLoaded<K::Owned, V>>,
        E: Into<BoxError>,
    {
        self.get_or_load_many_with(keys, &LoadOptions::default(), loader)
            .await
            .into_iter()
            .map(|r| r.map(|fetched| fetched.value))
            .collect()
    }

    /// [`Cache::get_or_load_many`] through the registered loaders: the
    /// [`CacheBuilder::batch_loader`](crate::CacheBuilder::batch_loader) (one call for the
    /// keys this call leads), or else the [`CacheBuilder::loader`](crate::CacheBuilder::loader)
    /// once per such key, all at once (each under its own origin-limit slot); without either,
    /// every key fails with [`Error::NoLoader`]. (Not the early refresh or background
    /// stale-while-revalidate of [`Cache::fetch`]: a batch answers when its keys are loaded.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let users: herdwise::Cache<u64, String> = herdwise::Cache::builder("users")
    ///     .loader(|id: &u64| {
    ///         let id = *id;
    ///         async move { Ok::<_, std::io::Error>(Some(format!("user-{id}"))) }
    ///     })
    ///     .build()?;
    /// let got = users.fetch_many([&7, &8]).await;
    /// assert_eq!(got[0].as_ref().unwrap().as_deref().map(String::as_str), Some("user-7"));
    /// # Ok(()) }
    /// ```
    pub async fn fetch_many<'k, I>(&self, keys: I) -> Vec<Result<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k K>,
        K: 'static,
    {
        let batch = self
            .batch_loader
            .as_ref()
            .and_then(|b| b.downcast_ref::<ErasedBatchLoader<K::Owned, V>>())
            .cloned();
        let options = LoadOptions::default();
        let l2_failed = Arc::new(AtomicBool::new(false));
        let fetched = if let Some(batch) = batch {
            self.many(keys, &options, |ks| batch(ks), CallSlot::One, &l2_failed)
                .await
        } else {
            let Some(single) = self.loader.clone() else {
                return keys.into_iter().map(|_| Err(Error::NoLoader)).collect();
            };
            let limit = self.inner.protect.origin_limit.as_ref();
            let metrics = &self.inner.metrics;
            let per_key = |ks: Vec<K::Owned>| {
                let single = single.clone();
                // (Asked when the call is made: the batch's own L2 calls may have failed.)
                let outage = limit.is_some() && self.in_outage(&l2_failed);
                async move {
                    let loads = ks.iter().map(|k| {
                        let single = single.clone();
                        async move {
                            // Each key's load is one origin call: it takes its own slot.
                            let mut slot = origin_slot(limit, outage, metrics)
                                .await
                                .map_err(BoxError::from)?;
                            let started = std::time::Instant::now();
                            let loaded =
                                AssertUnwindSafe(single.load(std::borrow::Borrow::borrow(k)))
                                    .catch_unwind()
                                    .await
                                    .unwrap_or_else(|_| {
                                        Err(crate::loader::LoaderError(Box::new(BatchLoadError(
                                            BatchFailure::Panicked,
                                        ))))
                                    })
                                    .map_err(|e| e.0);
                            if let Some(slot) = &mut slot {
                                slot.observe(started.elapsed(), loaded.is_err());
                            }
                            loaded
                        }
                    });
                    let outcomes = join_all(loads).await;
                    let mut loaded = BatchLoaded::new();
                    for (k, outcome) in ks.into_iter().zip(outcomes) {
                        match outcome {
                            Ok(Some(v)) => loaded.insert(k, v),
                            Ok(None) => {}
                            Err(e) => loaded.fail(k, e),
                        }
                    }
                    Ok::<_, BoxError>(loaded)
                }
            };
            self.many(keys, &options, per_key, CallSlot::PerKey, &l2_failed)
                .await
        };
        fetched
            .into_iter()
            .map(|r| r.map(|fetched| fetched.value))
            .collect()
    }

    /// [`Cache::get_or_load_many`] with per-call options (timeouts, stale windows, tags) for
    /// every key; each result tells whether its value is stale and where it came from.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{BatchLoaded, LoadOptions};
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("docs").build()?;
    /// let options = LoadOptions::default().tags(["catalog"]);
    /// let got = cache
    ///     .get_or_load_many_with([&1], &options, |ids: Vec<u64>| async move {
    ///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, id.to_string())).collect::<BatchLoaded<_, _>>())
    ///     })
    ///     .await;
    /// assert!(!got[0].as_ref().unwrap().stale);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_many_with<'k, I, F, Fut, R, E>(
        &self,
        keys: I,
        options: &LoadOptions,
        loader: F,
    ) -> Vec<Result<Fetched<V>>>
    where
        I: IntoIterator<Item = &'k K>,
        K: 'k,
        F: Fn(Vec<K::Owned>) -> Fut,
        Fut: Future<Output = std::result::Result<R, E>>,
        R: Into<BatchLoaded<K::Owned, V>>,
        E: Into<BoxError>,
    {
        let l2_failed = Arc::new(AtomicBool::new(false));
        self.many(keys, options, loader, CallSlot::One, &l2_failed)
            .await
    }

    /// The batch read: distinct keys in parts of at most [`MAX_BATCH_KEYS`], one after the
    /// other; the answers in input order.
    async fn many<'k, I, F, Fut, R, E>(
        &self,
        keys: I,
        options: &LoadOptions,
        loader: F,
        call_slot: CallSlot,
        l2_failed: &Arc<AtomicBool>,
    ) -> Vec<Result<Fetched<V>>>
    where
        I: IntoIterator<Item = &'k K>,
        K: 'k,
        F: Fn(Vec<K::Owned>) -> Fut,
        Fut: Future<Output = std::result::Result<R, E>>,
        R: Into<BatchLoaded<K::Owned, V>>,
        E: Into<BoxError>,
    {
        let (order, distinct) = distinct(keys);
        self.ensure_generation().await;
        let mut answers = Vec::with_capacity(distinct.len());
        for part in distinct.chunks(MAX_BATCH_KEYS) {
            answers.extend(
                self.load_part(part, options, &loader, call_slot, l2_failed)
                    .await,
            );
        }
        order
            .into_iter()
            .map(|slot| answers[slot].clone())
            .collect()
    }

    /// One part of a batch read: L1, the `MGET`s, then the pipelines of what is missing.
    async fn load_part<F, Fut, R, E>(
        &self,
        keys: &[&K],
        options: &LoadOptions,
        loader: &F,
        call_slot: CallSlot,
        l2_failed: &Arc<AtomicBool>,
    ) -> Vec<Result<Fetched<V>>>
    where
        F: Fn(Vec<K::Owned>) -> Fut,
        Fut: Future<Output = std::result::Result<R, E>>,
        R: Into<BatchLoaded<K::Owned, V>>,
        E: Into<BoxError>,
    {
        let spans: Vec<ReadSpan> = keys
            .iter()
            .map(|_| ReadSpan::new(self.namespace(), "get_or_load_many"))
            .collect();
        let mut answers: Vec<Option<Result<Fetched<V>>>> = vec![None; keys.len()];
        let mut missed = Vec::new();
        let mut pasts = HashMap::new();
        for (slot, key) in keys.iter().enumerate() {
            match self.lookup_l1(key) {
                Ok(Lookup::Fresh(value, meta)) => {
                    let fetched = Fetched::of(value, meta.stale_copy, Source::L1);
                    spans[slot].ended(fetched.result());
                    answers[slot] = Some(Ok(fetched));
                }
                Ok(Lookup::Miss {
                    stored_key,
                    fallback,
                }) => {
                    pasts.insert(slot, spans[slot].past_l1(&self.inner.metrics));
                    missed.push(Missed {
                        slot,
                        key: *key,
                        stored_key,
                        fallback,
                        known: None,
                    });
                }
                Err(err) => {
                    answers[slot] = Some(Err(spans[slot].failed(&self.inner.metrics, err)));
                }
            }
        }
        // L2 for all of them at once; what is fresh there answers. (Keys whose L1 copy must be
        // checked first are left to their pipelines, which check them all at once.)
        let found = self.read_l2_many(&mut missed, false).await;
        missed.retain(|m| {
            let Some(Some(fetched)) = found.get(&m.slot) else {
                return true;
            };
            if let Some(past) = pasts.remove(&m.slot) {
                past.read(fetched.result(), Some(fetched.source));
            }
            answers[m.slot] = Some(Ok(fetched.clone()));
            false
        });
        if !missed.is_empty() {
            let loaded = self
                .load_many(missed, options, loader, &spans, call_slot, l2_failed)
                .await;
            for (slot, read) in loaded {
                if let Some(past) = pasts.remove(&slot) {
                    past.fetched(&read);
                }
                answers[slot] = Some(read);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Ok(Fetched::fresh(None))))
            .collect()
    }

    /// L2 for the `missed` keys: `MGET`s of at most 64 keys, sent together. The fresh answers
    /// by slot (`Some(None)`: asked, nothing fresh); each missed key's fallback and what L2
    /// said are updated for its pipeline. An `MGET` that failed leaves its keys to be read one
    /// by one by their pipelines. Keys whose L1 copy must be checked against L2 first (missed
    /// events) are checked here, all at once, if `verify` (a batch without pipelines), else
    /// left to their pipelines.
    async fn read_l2_many(
        &self,
        missed: &mut [Missed<'_, K, V>],
        verify: bool,
    ) -> HashMap<usize, Option<Fetched<V>>> {
        let mut found = HashMap::new();
        let stale_if_error = self.inner.ttl.stale_if_error;
        let checks = missed
            .iter_mut()
            .filter(|m| m.fallback.as_ref().is_some_and(|f| f.unverified))
            .filter(|_| verify)
            .map(|m| async move {
                let answer = self
                    .verify_in_l2(
                        &m.stored_key,
                        &mut m.fallback,
                        stale_if_error,
                        false,
                        Replacing::Nothing,
                    )
                    .await;
                (m.slot, answer)
            });
        for (slot, answer) in join_all(checks).await {
            found.insert(slot, answer);
        }
        let plain: Vec<usize> = missed
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.fallback.as_ref().is_some_and(|f| f.unverified))
            .filter(|(_, m)| !found.contains_key(&m.slot))
            .map(|(i, _)| i)
            .collect();
        if plain.is_empty() {
            return found;
        }
        let parts = plain.chunks(MGET_KEYS).map(|part| {
            let keys: Vec<String> = part.iter().map(|&i| missed[i].stored_key.clone()).collect();
            async move {
                let epochs: Vec<u64> = keys.iter().map(|k| self.inner.l1.epoch(k)).collect();
                let values = self.inner.remote.get_many(&keys).await;
                let judged = join_all(keys.iter().zip(values).zip(epochs).map(
                    |((key, read), epoch)| async move {
                        match read {
                            // Not answered: the key's own read will ask again.
                            Err(_) => None,
                            Ok(bytes) => Some(self.judge_l2(key, Ok(bytes), epoch).await),
                        }
                    },
                ))
                .await;
                (part, judged)
            }
        });
        for (part, judged) in join_all(parts).await {
            for (&i, read) in part.iter().zip(judged) {
                let m = &mut missed[i];
                let answer = match read {
                    None => None,
                    Some(L2Read::Fresh(value, meta, _)) => {
                        Some(Fetched::of(value, meta.stale_copy, Source::L2))
                    }
                    Some(L2Read::Stale(stale)) => {
                        m.fallback = Fallback::newer(m.fallback.take(), Some(stale));
                        m.known = Some(KnownL2::Missed);
                        None
                    }
                    Some(L2Read::Miss) => {
                        m.known = Some(KnownL2::Missed);
                        None
                    }
                    Some(L2Read::Unavailable) => {
                        m.known = Some(KnownL2::Down);
                        None
                    }
                };
                found.insert(m.slot, answer);
            }
        }
        found
    }

    /// The read pipelines of the keys still missing, their loads gathered into batch calls.
    async fn load_many<F, Fut, R, E>(
        &self,
        missed: Vec<Missed<'_, K, V>>,
        options: &LoadOptions,
        loader: &F,
        spans: &[ReadSpan],
        call_slot: CallSlot,
        l2_failed: &Arc<AtomicBool>,
    ) -> Vec<(usize, Result<Fetched<V>>)>
    where
        F: Fn(Vec<K::Owned>) -> Fut,
        Fut: Future<Output = std::result::Result<R, E>>,
        R: Into<BatchLoaded<K::Owned, V>>,
        E: Into<BoxError>,
    {
        let gather: Arc<Gather<K::Owned, Reply<V>>> = Gather::new(missed.len());
        let turns = Arc::new(tokio::sync::Semaphore::new(BATCH_L2_CALLS));
        let pipelines = missed.into_iter().enumerate().map(|(index, m)| {
            let (gather, turns) = (gather.clone(), turns.clone());
            let span = spans[m.slot].span().clone();
            async move {
                let member = Arc::new(gather.member(index));
                let mut windows = self.windows(options);
                windows.batch = Some(member.clone() as Arc<dyn Park>);
                windows.set_known_l2(m.known);
                windows.l2_turns = Some(turns);
                windows.batch_l2_failed = Some(l2_failed.clone());
                let owned = m.key.to_owned();
                let asking = member.clone();
                let load = move |_: &K| async move {
                    let reply = {
                        let _waiting = asking.waiting();
                        asking.queue(owned).await
                    };
                    match reply {
                        Ok(reply) => reply,
                        Err(_) => Err(BatchLoadError(BatchFailure::Unanswered)),
                    }
                };
                let read = self
                    .through(
                        &m.stored_key,
                        m.key,
                        load,
                        &windows,
                        m.fallback,
                        None,
                        Replacing::Nothing,
                    )
                    .instrument(span)
                    .await;
                (m.slot, read)
            }
        });
        let driver = async {
            while let Some(call) = gather.next_call().await {
                let (keys, replies): (Vec<K::Owned>, Vec<_>) = call.into_iter().unzip();
                let answered = tokio::select! {
                    answered = self.call_batch_loader(loader, keys.clone(), call_slot, l2_failed) => answered,
                    // Every pipeline gave up (their hard timeouts): nobody to answer.
                    () = gather.all_done() => break,
                };
                answer_batch(answered, keys, replies);
            }
        };
        let (_, reads) = futures::future::join(driver, join_all(pipelines)).await;
        reads
    }

    /// One batch-loader call, under one origin-limit slot unless its loads take their own (a
    /// stale answer is each key's own decision: the call is shed only when no slot frees up in
    /// time). A panic in the loader fails the call's keys, not the batch read.
    async fn call_batch_loader<F, Fut, R, E>(
        &self,
        loader: &F,
        keys: Vec<K::Owned>,
        call_slot: CallSlot,
        l2_failed: &AtomicBool,
    ) -> std::result::Result<BatchLoaded<K::Owned, V>, BatchLoadError>
    where
        F: Fn(Vec<K::Owned>) -> Fut,
        Fut: Future<Output = std::result::Result<R, E>>,
        R: Into<BatchLoaded<K::Owned, V>>,
        E: Into<BoxError>,
    {
        let limit = match call_slot {
            CallSlot::One => self.inner.protect.origin_limit.as_ref(),
            CallSlot::PerKey => None,
        };
        let outage = limit.is_some() && self.in_outage(l2_failed);
        let mut slot = origin_slot(limit, outage, &self.inner.metrics).await?;
        self.inner.metrics.batch_loads.increment(1);
        self.inner
            .metrics
            .batch_load_keys
            .increment(keys.len() as u64);
        // Building the call and awaiting it are both guarded.
        let started = std::time::Instant::now();
        let called = AssertUnwindSafe(async move { loader(keys).await })
            .catch_unwind()
            .await;
        if let Some(slot) = &mut slot {
            slot.observe(started.elapsed(), !matches!(called, Ok(Ok(_))));
        }
        match called {
            Ok(Ok(loaded)) => Ok(loaded.into()),
            Ok(Err(err)) => Err(BatchLoadError(BatchFailure::Loader(Arc::from(err.into())))),
            Err(_panic) => {
                tracing::error!(
                    cache = self.namespace(),
                    "batch loader panicked; nothing cached"
                );
                Err(BatchLoadError(BatchFailure::Panicked))
            }
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Whether a batch's origin call is made in an outage of the remote tier: it is out for
    /// everyone, or it failed one of this batch's own reads (the first reads to meet a failing
    /// Redis come before its breaker opens, as for a single read).
    fn in_outage(&self, l2_failed: &AtomicBool) -> bool {
        l2_failed.load(Ordering::Acquire) || self.remote_unavailable()
    }
}

/// A slot of `limit` for one origin call: at once, else within its wait (counted), else the
/// overload (counted), as for a single read that has no stale value to answer with.
async fn origin_slot(
    limit: Option<&OriginLimit>,
    outage: bool,
    metrics: &CacheMetrics,
) -> std::result::Result<Option<OriginPermit>, BatchLoadError> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    if let Slot::Granted(permit) = limit.try_slot(outage) {
        return Ok(Some(permit));
    }
    match limit.wait_slot(outage).await {
        Some(permit) => {
            metrics.origin_limited_waited.increment(1);
            Ok(Some(permit))
        }
        None => {
            metrics.origin_limited_overloaded.increment(1);
            Err(BatchLoadError(BatchFailure::Overloaded {
                limit: limit.current(),
                waited: limit.max_wait(),
            }))
        }
    }
}

/// Hands each key its share of a batch call's answer.
fn answer_batch<K: Hash + Eq, V>(
    answered: std::result::Result<BatchLoaded<K, V>, BatchLoadError>,
    keys: Vec<K>,
    replies: Vec<tokio::sync::oneshot::Sender<Reply<V>>>,
) {
    match answered {
        Ok(mut loaded) => {
            for (key, reply) in keys.into_iter().zip(replies) {
                let answer = match loaded.failed.remove(&key) {
                    // (a per-key overload or panic, from the per-key loads of `fetch_many`)
                    Some(err) => Err(match err.downcast_ref::<BatchLoadError>() {
                        Some(own) => own.clone(),
                        None => BatchLoadError(BatchFailure::Loader(err)),
                    }),
                    None => Ok(loaded.found.remove(&key)),
                };
                let _ = reply.send(answer);
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// The distinct keys of `keys`, and for each input position the index of its key.
fn distinct<'k, K, I>(keys: I) -> (Vec<usize>, Vec<&'k K>)
where
    K: Hash + Eq + ?Sized + 'k,
    I: IntoIterator<Item = &'k K>,
{
    let mut index: HashMap<&'k K, usize> = HashMap::new();
    let mut distinct = Vec::new();
    let order = keys
        .into_iter()
        .map(|key| {
            *index.entry(key).or_insert_with(|| {
                distinct.push(key);
                distinct.len() - 1
            })
        })
        .collect();
    (order, distinct)
}
