//! The read path of `get_or_load`: L1 → single-flight → L2 → cross-instance lease → loader
//! (under a timeout) → fenced fill, with stale values as the fallback along the way.
//!
//! What a failure at each step means is decided here: a store failure is a miss; another
//! instance's load in progress is waited for (or, within the stale-while-revalidate window,
//! answered with the stale value at once); a loader failure or timeout is answered with the
//! stale value within the stale-if-error window (re-stored as a flagged copy so the failing
//! origin is retried at the throttle pace, not on every read), and otherwise is the callers'
//! error — never cached.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tracing::Instrument;

use crate::cache::batch::BatchLoadError;
use crate::cache::entries::{Encoded, Fallback, L2Read};
use crate::cache::observe::ReadSpan;
use crate::cache::{hit_yield_point, Cache, Lookup};
use crate::coherence::tags::collect_tags;
use crate::envelope::Meta;
use crate::envelope::TagStamp;
use crate::error::{Error, Result};
use crate::metrics::{GetResult, LeaseWait, LoadResult as LoadOutcome, StaleReason};
use crate::protect::flight::Join;
use crate::protect::gather::Park;
use crate::protect::lease::{HeldLease, LeaseConfig};
use crate::protect::origin_limit::{OriginPermit, Slot};
use crate::store::{FillOutcome, StoreError};
use crate::tiers::freshness::now_ms;
use crate::tiers::key::CacheKey;
use crate::tiers::local::Standing;

/// What a read through the cache returned.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herdwise::Error> {
/// use herdwise::{Cache, LoadOptions};
/// let cache: Cache<u64, String> = Cache::builder("docs").build()?;
/// let fetched = cache
///     .get_or_load_with(&1, &LoadOptions::default(), |_| async {
///         Ok::<_, std::io::Error>(Some("x".to_string()))
///     })
///     .await?;
/// assert!(!fetched.stale);
/// assert_eq!(fetched.value.as_deref().map(String::as_str), Some("x"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Fetched<V> {
    /// The value; `None` if the origin has none.
    pub value: Option<Arc<V>>,
    /// `true` if the value is past its fresh time: served while another caller refreshes it, or
    /// because the origin failed (stale-if-error).
    pub stale: bool,
    /// Where the answer came from.
    pub source: Source,
}

/// Where a read's answer came from (see [`Fetched::source`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herdwise::Error> {
/// use herdwise::{Cache, LoadOptions, Source};
/// let cache: Cache<u64, String> = Cache::builder("docs").build()?;
/// let load = |_: &u64| async { Ok::<_, std::io::Error>(Some("x".to_string())) };
/// let first = cache.get_or_load_with(&1, &LoadOptions::default(), load).await?;
/// assert_eq!(first.source, Source::Origin);
/// let again = cache.get_or_load_with(&1, &LoadOptions::default(), load).await?;
/// assert_eq!(again.source, Source::L1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// This process's L1.
    L1,
    /// The remote tier (including a value another instance loaded under its lease).
    L2,
    /// The origin: this read's load, or a load in this process it waited for.
    Origin,
}

impl Source {
    /// The tier's name in traces: `l1`, `l2` or `origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::Origin => "origin",
        }
    }
}

impl<V> Clone for Fetched<V> {
    fn clone(&self) -> Self {
        Fetched {
            value: self.value.clone(),
            stale: self.stale,
            source: self.source,
        }
    }
}

impl<V> Fetched<V> {
    /// What the origin returned.
    pub(crate) fn fresh(value: Option<Arc<V>>) -> Self {
        Fetched {
            value,
            stale: false,
            source: Source::Origin,
        }
    }
    pub(crate) fn of(value: Option<Arc<V>>, stale: bool, source: Source) -> Self {
        Fetched {
            value,
            stale,
            source,
        }
    }

    /// How the read that returned this ended, as a metric label.
    pub(crate) fn result(&self) -> GetResult {
        if self.stale {
            return GetResult::Stale;
        }
        match self.source {
            Source::Origin => GetResult::Miss,
            _ if self.value.is_none() => GetResult::Negative,
            Source::L1 => GetResult::L1Hit,
            Source::L2 => GetResult::L2Hit,
        }
    }
}

/// Per-call overrides of the cache's read-through defaults.
///
/// ```
/// use std::time::Duration;
/// let opts = herdwise::LoadOptions::default()
///     .hard_timeout(Duration::from_millis(200))
///     .stale_if_error(Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct LoadOptions {
    hard_timeout: Option<Duration>,
    soft_timeout: Option<Duration>,
    stale_if_error: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    tags: Option<Arc<[Box<str>]>>,
}

impl LoadOptions {
    /// Tags the loaded entry carries (for [`Cache::invalidate_tag`]), in addition to those the
    /// cache derives from the value. Checked before loading: 1 to `max_tag_bytes` bytes each, no control
    /// characters, at most `max_tags_per_entry` in all ([`Error::InvalidTag`],
    /// [`Error::TooManyTags`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, LoadOptions};
    /// let cache: Cache<u64, String> = Cache::builder("products").build()?;
    /// let opts = LoadOptions::default().tags(["category:shoes"]);
    /// let load = |_: &u64| async { Ok::<_, std::io::Error>(Some("boot".to_string())) };
    /// cache.get_or_load_with(&1, &opts, load).await?;
    /// cache.invalidate_tag("category:shoes").await?;
    /// assert_eq!(cache.get(&1).await?, None);
    /// # Ok(()) }
    /// ```
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let tags: Vec<Box<str>> = tags.into_iter().map(|t| Box::from(t.as_ref())).collect();
        self.tags = Some(tags.into());
        self
    }

    /// Give up on the loader after this long ([`Error::LoaderTimeout`], or the stale value within
    /// the stale-if-error window).
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// With [`Cache::fetch_with`]: if the load takes longer than this and a stale value exists,
    /// return the stale value and let the load finish in the background.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Serve a value up to this far past its fresh time if the load fails or times out (capped
    /// by how long the cache keeps entries: its own stale windows).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// While another instance refreshes the key, serve a value up to this far past its fresh
    /// time at once instead of waiting.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }
}

/// Life of a fence opened for a load without the lease (at least the lease TTL): a load slower
/// than this is returned to its callers but not cached.
const FENCE_TTL: Duration = Duration::from_secs(30);

/// What a load hands to every coalesced caller.
pub(crate) type LoadResult<V> = Result<Fetched<V>>;

/// How a loaded value goes into L2.
enum FillMode {
    /// Through the fenced fill: written only while our lease holds.
    Leased(HeldLease),
    /// Without the lease (leases off, or a waiter that gave up): a fill fenced by this token
    /// (see `Store::open_fence`), opened before the origin was read.
    Fenced(u64),
    /// L2 did not answer this read: the value goes into L1 only.
    LocalOnly,
}

/// What trying to take a lease found.
enum LeaseAttempt<V> {
    /// Ours: load and fill.
    Taken(HeldLease),
    /// Someone filled the key just before: use that.
    Filled(Option<Arc<V>>, bool),
    /// Another instance holds it.
    Held,
    /// L2 did not answer.
    Failed,
}

/// How waiting for another instance's fill ended.
enum Waited<V> {
    /// The fill arrived.
    Value(Option<Arc<V>>, bool),
    /// The holder gave up its lease and we took it.
    Lease(HeldLease),
    /// Deadline passed: load without a lease.
    Unleased,
    /// L2 failed: load, and keep the value in L1 only.
    RemoteDown,
}

/// Starts a background refresh of the entry that is fresh until the given unix ms.
pub(crate) type Background<'a> = dyn Fn(u64) + Send + Sync + 'a;

/// What a load replaces, so that a re-check finding it does not count it as an answer.
pub(crate) enum Replacing<'a, V> {
    /// Nothing: any fresh entry answers (a plain read).
    Nothing,
    /// A background refresh of the entry fresh until this unix ms: it, or anything older,
    /// is what is being replaced.
    FreshUntil(u64),
    /// The caller judges: an entry whose value it calls stale does not answer (a negative
    /// entry always does).
    Judged(&'a (dyn Fn(&V) -> bool + Send + Sync)),
}

impl<V> Clone for Replacing<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Replacing<'_, V> {}

impl<V> Replacing<'_, V> {
    /// Whether an entry with `meta` and `value`, found on a re-check, is what is being replaced.
    pub(crate) fn superseded(&self, meta: &Meta, value: Option<&Arc<V>>) -> bool {
        match self {
            Replacing::Nothing => false,
            Replacing::FreshUntil(r) => meta.fresh_until_ms <= *r,
            Replacing::Judged(stale) => value.is_some_and(|v| stale(v)),
        }
    }

    /// Whether a value found past its fresh time may stand as a stale-if-error fallback: not
    /// for a judge that calls it stale.
    fn keeps_fallback(&self, value: Option<&Arc<V>>) -> bool {
        match self {
            Replacing::Judged(stale) => !value.is_some_and(|v| stale(v)),
            _ => true,
        }
    }

    /// What a caller waiting for another instance's fill replaces: for a refresh, even the
    /// entry being refreshed will do (its holder is refreshing it); a judge stays a judge.
    fn for_waiters(self) -> Self {
        match self {
            Replacing::FreshUntil(_) => Replacing::Nothing,
            other => other,
        }
    }
}

/// The windows one call works with (cache defaults, overridden per call).
pub(crate) struct Windows {
    hard_timeout: Option<Duration>,
    pub soft_timeout: Option<Duration>,
    pub stale_if_error: Duration,
    stale_while_revalidate: Duration,
    /// The call's own tags for what it loads.
    tags: Option<Arc<[Box<str>]>>,
    /// A re-warm: it must reach the origin even in the recovery window.
    pub warming: bool,
    /// A pipeline of a batch read: told when it waits on someone else's load (so the batch
    /// call does not wait for it), and its loader takes no origin slot of its own (the batch
    /// call holds one).
    pub batch: Option<Arc<dyn Park>>,
    /// What the batch's `MGET` already found in L2 for this key: the leader does not read it
    /// again (the lease attempt re-reads it in the same round trip anyway).
    /// Forgotten after any wait on someone else's load: what L2 holds may have changed.
    known_l2: std::sync::atomic::AtomicU8,
    /// A batch's share of the connection: its pipelines' lease attempts and fills take turns,
    /// a few dozen at once, so a large batch neither floods the connection nor makes its own
    /// calls look slow to the breaker (queued behind each other).
    pub l2_turns: Option<Arc<tokio::sync::Semaphore>>,
    /// A batch's record that the remote tier failed one of its pipelines: the batch's origin
    /// calls count as made in an outage (the origin limit's outage cap applies).
    pub batch_l2_failed: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A turn at L2 for a batch pipeline (none needed for a single read).
async fn l2_turn(windows: &Windows) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match &windows.l2_turns {
        Some(turns) => turns.clone().acquire_owned().await.ok(),
        None => None,
    }
}

impl Windows {
    /// What the batch's `MGET` found for this key (see [`Windows::set_known_l2`]).
    pub fn known_l2(&self) -> Option<KnownL2> {
        match self.known_l2.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(KnownL2::Missed),
            2 => Some(KnownL2::Down),
            _ => None,
        }
    }

    /// Records what the batch's `MGET` found for this key; `None`: the leader reads L2.
    pub fn set_known_l2(&self, known: Option<KnownL2>) {
        let code = match known {
            None => 0,
            Some(KnownL2::Missed) => 1,
            Some(KnownL2::Down) => 2,
        };
        self.known_l2
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }
}

/// L2 as a batch read found it (see [`Windows::known_l2`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KnownL2 {
    /// Nothing fresh there (a stale copy, if any, is the read's fallback).
    Missed,
    /// L2 did not answer.
    Down,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// [`Cache::get_or_load`] with per-call options, telling whether the value is stale.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use std::time::Duration;
    /// use herdwise::{Cache, Error, LoadOptions};
    /// let cache: Cache<u64, String> = Cache::builder("docs").build()?;
    /// let slow = LoadOptions::default().hard_timeout(Duration::from_millis(10));
    /// let result = cache
    ///     .get_or_load_with(&1, &slow, |_| async {
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///         Ok::<_, std::io::Error>(Some("late".to_string()))
    ///     })
    ///     .await;
    /// assert!(matches!(result, Err(Error::LoaderTimeout(_))));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_with<'k, F, Fut, E>(
        &self,
        key: &'k K,
        options: &LoadOptions,
        loader: F,
    ) -> Result<Fetched<V>>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.read_through(key, options, None, loader).await
    }

    /// [`Cache::get_or_load_with`] where the caller decides whether a cached value may answer:
    /// a value for which `is_stale` returns `true` counts as missing, wherever it is found (L1,
    /// L2, or filled by another instance while this call waited), and is replaced through the
    /// same single-flight and lease as any miss — so many callers judging the same entry stale
    /// cause one load, and a caller that finds it already replaced takes the replacement. For
    /// values whose freshness lives in the value itself (an HTTP response's `Cache-Control`,
    /// a document's own expiry). The replaced value is not a stale-if-error fallback: the
    /// caller, who judged it, decides what to do when the load fails. Negative entries always
    /// answer.
    ///
    /// `is_stale` runs on every candidate, so keep it cheap; to avoid waiting on each other
    /// forever, judge a value loaded after the call began as good enough.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, LoadOptions};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Doc { body: String, expires_at: u64 }
    /// let cache: Cache<u64, Doc> = Cache::builder("docs").build()?;
    /// let now = 100;
    /// let load = |_: &u64| async { Ok::<_, std::io::Error>(Some(Doc { body: "v1".into(), expires_at: 50 })) };
    /// cache.get_or_load(&1, load).await?;
    /// // The cache calls it fresh, but the document says it expired at 50: reload it.
    /// let stale = |d: &Doc| d.expires_at <= now;
    /// let load = |_: &u64| async { Ok::<_, std::io::Error>(Some(Doc { body: "v2".into(), expires_at: 200 })) };
    /// let got = cache.get_or_load_checked(&1, &LoadOptions::default(), &stale, load).await?;
    /// assert_eq!(got.value.map(|d| d.body.clone()).as_deref(), Some("v2"));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_checked<'k, F, Fut, E>(
        &self,
        key: &'k K,
        options: &LoadOptions,
        is_stale: &(dyn Fn(&V) -> bool + Send + Sync),
        loader: F,
    ) -> Result<Fetched<V>>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.read_through(key, options, Some(is_stale), loader)
            .await
    }

    /// `get_or_load_with` and `get_or_load_checked`: L1, then (boxed) the miss path, counted
    /// and timed once, the L2 hit sampled for the verifier.
    async fn read_through<'k, F, Fut, E>(
        &self,
        key: &'k K,
        options: &LoadOptions,
        is_stale: Option<&(dyn Fn(&V) -> bool + Send + Sync)>,
        loader: F,
    ) -> Result<Fetched<V>>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        hit_yield_point().await;
        self.ensure_generation().await;
        let method = if is_stale.is_some() {
            "get_or_load_checked"
        } else {
            "get_or_load"
        };
        let span = ReadSpan::new(self.namespace(), method);
        let (stored_key, fallback) = match self.lookup_l1_judged(key, is_stale) {
            Ok(Lookup::Fresh(value, meta)) => {
                let fetched = Fetched::of(value, meta.stale_copy, Source::L1);
                span.ended(fetched.result());
                return Ok(fetched);
            }
            Ok(Lookup::Miss {
                stored_key,
                fallback,
            }) => (stored_key, fallback),
            Err(err) => return Err(span.failed(&self.inner.metrics, err)),
        };
        let windows = self.windows(options);
        let past = span.past_l1(&self.inner.metrics);
        let replacing = match is_stale {
            Some(judge) => Replacing::Judged(judge),
            None => Replacing::Nothing,
        };
        // Boxed: the miss path (lease, load, fill) is large; an L1 hit should not pay for moving
        // it around, nor should every task that awaits the cache carry it.
        let read = Box::pin(
            self.through(
                &stored_key,
                key,
                loader,
                &windows,
                fallback,
                None,
                replacing,
            )
            .instrument(span.span().clone()),
        )
        .await;
        past.fetched(&read);
        if let Ok(fetched) = &read {
            if fetched.result() == GetResult::L2Hit {
                self.maybe_verify(key, &stored_key, fetched.value.as_ref());
            }
        }
        read
    }

    /// Everything after an L1 miss: coalesce in-process, then lead (or wait for the leader).
    /// `background`, when the caller can refresh in the background, starts a refresh of the
    /// entry fresh until the given unix ms (so a stale value can be answered at once);
    /// `replacing` names what a re-check must not take as the answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn through<'k, F, Fut, E>(
        &self,
        stored_key: &str,
        key: &'k K,
        loader: F,
        windows: &Windows,
        fallback: Option<Fallback<V>>,
        background: Option<&Background<'_>>,
        replacing: Replacing<'_, V>,
    ) -> Result<Fetched<V>>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        // The call's tags are checked before the origin is asked (not at fill time, when the
        // only choice left would be to return the value uncached).
        if let Some(tags) = windows.tags.as_deref() {
            // (As they will be stored: with the tenant's prefix, if any.)
            let coherence = &self.inner.coherence;
            let scoped: Vec<_> = tags.iter().map(|t| self.scoped_tag(t)).collect();
            collect_tags(
                scoped.iter().map(|t| &**t),
                coherence.max_tags,
                coherence.max_tag_bytes,
            )?;
        }
        let mut fallback = fallback;
        if let Some(answer) = self
            .verify_in_l2(
                stored_key,
                &mut fallback,
                windows.stale_if_error,
                windows.warming,
                replacing,
            )
            .await
        {
            return Ok(answer);
        }
        // Stale-while-revalidate from L1: answer before joining any load in flight (which may be
        // the very refresh we would start), so the promise "at once" holds for every caller.
        if let Some(stale) = self.revalidate_behind(background, fallback.as_ref(), windows) {
            return Ok(stale);
        }
        let mut rejected_once = false;
        loop {
            match self.inner.protect.flights.join(stored_key) {
                Join::Leader(leader) => {
                    let result = self
                        .lead(
                            stored_key, key, loader, windows, fallback, replacing, background,
                        )
                        .await;
                    leader.complete(result.clone());
                    return result;
                }
                Join::Waiter(waiter) => {
                    self.inner.metrics.coalesced_waits.increment(1);
                    let waited = {
                        let _parked = Parked::new(windows.batch.as_deref());
                        waiter.wait().await
                    };
                    // Whatever the batch's MGET said is old news after a wait.
                    windows.set_known_l2(None);
                    if let Some(result) = waited {
                        // A leader with another judge (or none) may bring what this caller's
                        // judge calls stale: go round once (the next load may be ours), then
                        // load without coalescing rather than wait again.
                        let judged_stale = match (replacing, &result) {
                            (Replacing::Judged(stale), Ok(f)) => {
                                f.value.as_deref().is_some_and(stale)
                            }
                            _ => false,
                        };
                        if !judged_stale {
                            return result;
                        }
                        if rejected_once {
                            return self
                                .lead(
                                    stored_key, key, loader, windows, None, replacing, background,
                                )
                                .await;
                        }
                        rejected_once = true;
                    }
                    // The leader was cancelled, or its value is not for us: go round again,
                    // possibly as the new leader.
                }
                Join::Bypass => {
                    self.inner.metrics.flight_bypass.increment(1);
                    return self
                        .lead(
                            stored_key, key, loader, windows, fallback, replacing, background,
                        )
                        .await;
                }
            }
        }
    }

    /// If a background refresh is possible and `fallback` is within the stale-while-revalidate
    /// window: starts the refresh and returns the stale answer.
    fn revalidate_behind(
        &self,
        background: Option<&Background<'_>>,
        fallback: Option<&Fallback<V>>,
        windows: &Windows,
    ) -> Option<Fetched<V>> {
        let (start_refresh, found) = (background?, fallback?);
        if !found.usable_within(windows.stale_while_revalidate, now_ms()) {
            return None;
        }
        start_refresh(found.meta.fresh_until_ms);
        self.inner.metrics.stale_served(StaleReason::Swr);
        Some(Fetched::of(found.value.clone(), true, found.source))
    }

    pub(crate) fn windows(&self, options: &LoadOptions) -> Windows {
        let policy = &self.inner.ttl;
        Windows {
            hard_timeout: options.hard_timeout.or(self.inner.defaults.hard_timeout),
            soft_timeout: options.soft_timeout.or(self.inner.defaults.soft_timeout),
            stale_if_error: options.stale_if_error.unwrap_or(policy.stale_if_error),
            stale_while_revalidate: options
                .stale_while_revalidate
                .unwrap_or(policy.stale_while_revalidate),
            tags: options.tags.clone(),
            warming: false,
            batch: None,
            known_l2: std::sync::atomic::AtomicU8::new(0),
            l2_turns: None,
            batch_l2_failed: None,
        }
    }

    /// An L1 entry from before events were missed stands in `fallback`: ask L2 first, and take
    /// its copy if it has one. If L2 lost the key and a remote-tier recovery is recent, answer
    /// from L1 (flagged stale) and keep the entry a while longer — the staggered re-warm, or the
    /// first read after the window, reloads it — rather than send every such read to the
    /// origin at once. `Some` when that settles the read.
    pub(crate) async fn verify_in_l2(
        &self,
        stored_key: &str,
        fallback: &mut Option<Fallback<V>>,
        stale_if_error: Duration,
        warming: bool,
        replacing: Replacing<'_, V>,
    ) -> Option<Fetched<V>> {
        if !fallback.as_ref().is_some_and(|f| f.unverified) {
            return None;
        }
        let inner = &*self.inner;
        let epoch = inner.l1.epoch(stored_key);
        match self.read_l2(stored_key).await {
            L2Read::Fresh(value, meta, _) if !replacing.superseded(&meta, value.as_ref()) => {
                return Some(Fetched::of(value, meta.stale_copy, Source::L2))
            }
            // What L2 holds is what the caller replaces: load (the L1 copy is older still).
            L2Read::Fresh(..) => {
                *fallback = None;
                return None;
            }
            L2Read::Stale(found) => {
                *fallback = replacing
                    .keeps_fallback(found.value.as_ref())
                    .then_some(found);
                return None;
            }
            L2Read::Miss => {}
            L2Read::Unavailable => {
                // Down again: L1 keeps serving, as in any outage.
                let found = fallback
                    .as_ref()
                    .filter(|f| f.usable_within(stale_if_error, now_ms()))?;
                inner.metrics.stale_served(StaleReason::Error);
                return Some(Fetched::of(found.value.clone(), true, found.source));
            }
        }
        // L2 has no copy. If Redis lost its data, L1 answers for the key during the window.
        if !warming {
            if let Some(window_left) = crate::ops::sentinel::lost_window(
                &inner.recovery,
                &inner.remote,
                inner.keys.namespace(),
            )
            .await
            {
                let usable = fallback
                    .as_ref()
                    .filter(|f| f.usable_within(stale_if_error, now_ms()));
                if let Some(found) = usable {
                    // Spread over a second window, so the kept entries do not fall due together.
                    let spread = inner.recovery.window().mul_f64(rand::random::<f64>());
                    inner
                        .l1
                        .keep_unverified(stored_key, window_left + spread, epoch);
                    inner.metrics.stale_served(StaleReason::Recovery);
                    return Some(Fetched::of(found.value.clone(), true, found.source));
                }
            }
        }
        // Otherwise the copy was invalidated or expired while this instance missed the events:
        // its old value must not stand in for it, not even as a fallback.
        *fallback = None;
        inner.l1.remove_unverified(stored_key);
        None
    }

    /// The leader's work for one key: re-check L1, then L2, then (under the cross-instance
    /// lease when enabled) load. With `refresh_of`, this is a refresh: an entry fresh until that
    /// time or earlier is the one being replaced, so it counts as stale here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn lead<'k, F, Fut, E>(
        &self,
        stored_key: &str,
        key: &'k K,
        loader: F,
        windows: &Windows,
        fallback: Option<Fallback<V>>,
        replacing: Replacing<'_, V>,
        background: Option<&Background<'_>>,
    ) -> LoadResult<V>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        let inner = &*self.inner;
        // A previous leader may have filled L1 between our miss and our election.
        let mut fallback = fallback;
        let mut remote_down = false;
        if let Some((entry, Standing::Fresh)) = self.l1_get(stored_key) {
            if !replacing.superseded(&entry.meta, entry.value.as_ref()) {
                return Ok(Fetched::of(entry.value, entry.meta.stale_copy, Source::L1));
            }
        }
        // While L2 reads mostly find nothing (a cold start), the lease attempt is the first
        // round trip: it reads the key too (see `protect::miss_rate`). Not for a read that
        // holds a fallback or replaces an entry: those want L2's copy, stale or not, first.
        let lease_first = windows.known_l2().is_none()
            && windows.batch.is_none()
            && fallback.is_none()
            && matches!(replacing, Replacing::Nothing)
            && inner.protect.lease.is_some()
            && inner.protect.miss_rate.mostly_missing();
        // The lease attempt made as the first round trip, if it was.
        let mut early = None;
        // Before L2 is read: what it answers may be a fallback (see `Fallback::epoch`).
        let read_epoch = inner.l1.epoch(stored_key);
        let read = match (windows.known_l2(), inner.protect.lease) {
            (Some(KnownL2::Missed), _) => L2Read::Miss,
            (Some(KnownL2::Down), _) => L2Read::Unavailable,
            (None, Some(lease)) if lease_first => {
                let mut stale = None;
                let attempt = {
                    let _turn = l2_turn(windows).await;
                    self.take_lease(stored_key, &lease, replacing, Some(&mut stale))
                        .await
                };
                match (attempt, stale) {
                    (LeaseAttempt::Failed, _) => L2Read::Unavailable,
                    // A stale copy is the fallback, as on the usual path (stale-while-
                    // revalidate, stale-if-error); the lease, if taken, is kept for the load.
                    (attempt, Some(found)) => {
                        early = Some(attempt);
                        L2Read::Stale(found)
                    }
                    (attempt, None) => {
                        early = Some(attempt);
                        L2Read::Miss
                    }
                }
            }
            (None, _) => {
                let read = self.read_l2(stored_key).await;
                if windows.batch.is_none() {
                    inner.protect.miss_rate.record(matches!(read, L2Read::Miss));
                }
                read
            }
        };
        match read {
            L2Read::Fresh(value, meta, _) if !replacing.superseded(&meta, value.as_ref()) => {
                return Ok(Fetched::of(value, meta.stale_copy, Source::L2))
            }
            // The judged value is no fallback: its judge decides what a failed load answers.
            L2Read::Fresh(..) if matches!(replacing, Replacing::Judged(_)) => {}
            L2Read::Fresh(value, meta, tags) => {
                fallback = Fallback::newer(
                    fallback,
                    Some(Fallback::from_l2(value, meta, tags, read_epoch)),
                )
            }
            // A judge's value is never a fallback (its judge decides what a failed load
            // answers), nor is one it would call stale.
            L2Read::Stale(found) if !replacing.keeps_fallback(found.value.as_ref()) => {}
            L2Read::Stale(found) => fallback = Fallback::newer(fallback, Some(found)),
            L2Read::Miss => {}
            // One remote deadline per read at most: no lease, and the fill stays in L1.
            L2Read::Unavailable => remote_down = true,
        }
        // Stale-while-revalidate with a loader that can run in the background: answer now.
        if let Some(stale) = self.revalidate_behind(background, fallback.as_ref(), windows) {
            return Ok(stale);
        }
        let lease = match inner.protect.lease {
            Some(lease) if !remote_down => lease,
            _ => {
                let mode = if remote_down {
                    FillMode::LocalOnly
                } else {
                    self.open_fence(stored_key).await
                };
                return self
                    .load(stored_key, key, loader, mode, windows, fallback)
                    .await;
            }
        };
        let attempt = match early {
            Some(attempt) => attempt,
            None => {
                let _turn = l2_turn(windows).await;
                self.take_lease(stored_key, &lease, replacing, None).await
            }
        };
        let mode = match attempt {
            LeaseAttempt::Taken(held) => {
                inner.metrics.leases_acquired.increment(1);
                FillMode::Leased(held)
            }
            LeaseAttempt::Filled(value, stale) => return Ok(Fetched::of(value, stale, Source::L2)),
            LeaseAttempt::Held => {
                inner.metrics.leases_held.increment(1);
                // Someone is refreshing: a recent enough stale value answers at once.
                if let Some(found) = fallback
                    .as_ref()
                    .filter(|f| f.usable_within(windows.stale_while_revalidate, now_ms()))
                {
                    inner.metrics.stale_served(StaleReason::Swr);
                    return Ok(Fetched::of(found.value.clone(), true, found.source));
                }
                let waiting = Instant::now();
                let span = tracing::debug_span!(
                    "herdwise.lease_wait",
                    cache = self.namespace(),
                    outcome = tracing::field::Empty
                );
                let waited = {
                    let _parked = Parked::new(windows.batch.as_deref());
                    self.wait_for_fill(stored_key, &lease, replacing.for_waiters(), windows)
                        .instrument(span.clone())
                        .await
                };
                let outcome = match &waited {
                    Waited::Value(..) => LeaseWait::Filled,
                    Waited::Lease(_) => LeaseWait::TookOver,
                    Waited::Unleased => LeaseWait::Timeout,
                    Waited::RemoteDown => LeaseWait::RemoteDown,
                };
                inner.metrics.lease_wait(outcome, waiting.elapsed());
                span.record("outcome", outcome.name());
                match waited {
                    Waited::Value(value, stale) => {
                        return Ok(Fetched::of(value, stale, Source::L2))
                    }
                    Waited::Lease(held) => {
                        inner.metrics.lease_takeovers.increment(1);
                        FillMode::Leased(held)
                    }
                    Waited::Unleased => self.open_fence(stored_key).await,
                    Waited::RemoteDown => FillMode::LocalOnly,
                }
            }
            // L2 cannot coordinate (down, slow): load uncoordinated rather than fail, and do not
            // wait for L2 again in this read.
            LeaseAttempt::Failed => FillMode::LocalOnly,
        };
        self.load(stored_key, key, loader, mode, windows, fallback)
            .await
    }

    /// The fence for a load without the lease, opened before the origin is read; if L2 cannot
    /// open it, the value goes into L1 only.
    async fn open_fence(&self, stored_key: &str) -> FillMode {
        let ttl = self
            .inner
            .protect
            .lease
            .map_or(FENCE_TTL, |l| l.ttl.max(FENCE_TTL));
        match self
            .inner
            .remote
            .open_fence(stored_key, rand::random::<u64>() | 1, ttl)
            .await
        {
            Ok(fence) => FillMode::Fenced(fence),
            Err(_) => FillMode::LocalOnly,
        }
    }

    /// Tries to take the key's lease, and reads L2 right after in the same round trip: the
    /// previous holder may have filled and released between our read and our lease, and
    /// loading again would be a second origin call for the same expiry. A fresh value found
    /// there answers whether or not the lease was taken (a lease taken for nothing is given
    /// back, in the background). `stale_seen`: this is the read's first look at L2 (its
    /// outcome counts in the miss rate), and a stale copy found goes there.
    async fn take_lease(
        &self,
        stored_key: &str,
        lease: &LeaseConfig,
        replacing: Replacing<'_, V>,
        stale_seen: Option<&mut Option<Fallback<V>>>,
    ) -> LeaseAttempt<V> {
        let remote = &self.inner.remote;
        let token: u64 = rand::random();
        let epoch = self.inner.l1.epoch(stored_key);
        // Armed before the request: if this read is dropped while the `SET NX` is on the wire,
        // or the request times out (a slow Redis may still run it), the release follows it.
        let request = HeldLease::requesting(remote.clone(), stored_key, token, lease);
        let (taken, current) = match remote.try_lease_and_get(stored_key, token, lease.ttl).await {
            Ok(found) => found,
            // Never sent: nothing to release.
            Err(StoreError::CircuitOpen) => {
                request.disarm();
                return LeaseAttempt::Failed;
            }
            // Unknown outcome: `request` is dropped armed and releases.
            Err(_) => return LeaseAttempt::Failed,
        };
        if stale_seen.is_some() {
            self.inner.protect.miss_rate.record(current.is_none());
        }
        let held = if taken {
            Some(request.taken())
        } else {
            request.disarm();
            None
        };
        let filled = match self.judge_l2(stored_key, Ok(current), epoch).await {
            L2Read::Fresh(value, meta, _) if !replacing.superseded(&meta, value.as_ref()) => {
                Some((value, meta.stale_copy))
            }
            L2Read::Stale(found) => {
                if let Some(seen) = stale_seen {
                    *seen = Some(found);
                }
                None
            }
            _ => None,
        };
        match (held, filled) {
            (Some(held), Some((value, stale))) => {
                // Dropped armed: given back in the background, the value answers now.
                drop(held);
                LeaseAttempt::Filled(value, stale)
            }
            (None, Some((value, stale))) => LeaseAttempt::Filled(value, stale),
            (Some(held), None) => LeaseAttempt::Taken(held),
            (None, None) => LeaseAttempt::Held,
        }
    }

    /// Waits for the instance holding the lease to fill the key: woken by its announcement,
    /// re-checking every poll interval, for at most the lease's wait deadline.
    async fn wait_for_fill(
        &self,
        stored_key: &str,
        lease: &LeaseConfig,
        replacing: Replacing<'_, V>,
        windows: &Windows,
    ) -> Waited<V> {
        let registration = self.inner.protect.fill_waiters.register(stored_key);
        let deadline = tokio::time::Instant::now() + lease.wait;
        loop {
            // Armed before checking, so a fill between the check and the wait is not missed.
            let notified = registration.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A fill, or the holder's lease given up (ours now).
            // (a batch's polls take turns like its first attempts)
            let attempt = {
                let _turn = l2_turn(windows).await;
                self.take_lease(stored_key, lease, replacing, None).await
            };
            match attempt {
                LeaseAttempt::Taken(held) => return Waited::Lease(held),
                LeaseAttempt::Filled(value, stale) => return Waited::Value(value, stale),
                LeaseAttempt::Held => {}
                LeaseAttempt::Failed => return Waited::RemoteDown,
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
        windows: &Windows,
        fallback: Option<Fallback<V>>,
    ) -> LoadResult<V>
    where
        F: FnOnce(&'k K) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + 'k,
        E: Into<crate::loader::BoxError> + 'static,
    {
        let metrics = &self.inner.metrics;
        if let (FillMode::LocalOnly, Some(failed)) = (&mode, &windows.batch_l2_failed) {
            failed.store(true, std::sync::atomic::Ordering::Release);
        }
        // Origin protection: held until the load and its fill are done (a batch's pipelines
        // share the slot their batch call holds).
        let limit = match windows.batch {
            Some(_) => None,
            None => self.inner.protect.origin_limit.as_ref(),
        };
        // The remote tier is out for this load when it failed this very read, too: the first
        // reads to meet a failing Redis come before its breaker opens, all at once.
        let outage =
            limit.is_some() && (matches!(mode, FillMode::LocalOnly) || self.remote_unavailable());
        let mut slot = match limit {
            None => None,
            Some(limit) => match limit.try_slot(outage) {
                Slot::Granted(permit) => Some(permit),
                Slot::Busy => {
                    // (A warm is there to load: it waits for a slot instead.)
                    let stale = fallback.as_ref().filter(|f| {
                        !windows.warming && f.usable_within(windows.stale_if_error, now_ms())
                    });
                    if let Some(found) = stale {
                        metrics.origin_limited_stale.increment(1);
                        metrics.stale_served(StaleReason::Error);
                        let (value, source) = (found.value.clone(), found.source);
                        self.release(mode).await;
                        return Ok(Fetched::of(value, true, source));
                    }
                    match limit.wait_slot(outage).await {
                        Some(permit) => {
                            metrics.origin_limited_waited.increment(1);
                            Some(permit)
                        }
                        None => {
                            metrics.origin_limited_overloaded.increment(1);
                            metrics.loads_shed.increment(1);
                            self.release(mode).await;
                            return Err(Error::Overloaded {
                                limit: limit.current(),
                                waited: limit.max_wait(),
                            });
                        }
                    }
                }
            },
        };
        let epoch = self.inner.l1.epoch(stored_key);
        // The tag clock before the origin is read: a tag invalidated from here on outdates
        // what this load returns.
        let tag_clock = self.inner.coherence.tags.stamp();
        let started = Instant::now();
        // The loader is called inside the guarded future, so a panic while *building* the
        // future is caught too.
        let span = tracing::debug_span!(
            "herdwise.load",
            cache = self.namespace(),
            result = tracing::field::Empty
        );
        let guarded = AssertUnwindSafe(async move { loader(key).await })
            .catch_unwind()
            .instrument(span.clone());
        // A leased load keeps its lease while it runs (for at most the lease's maximum hold).
        let guarded = async {
            match &mode {
                FillMode::Leased(held) => held.keeping(guarded).await,
                _ => guarded.await,
            }
        };
        let outcome = match windows.hard_timeout {
            Some(limit) => match tokio::time::timeout(limit, guarded).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    observe(&mut slot, started.elapsed(), true);
                    metrics.load(LoadOutcome::Timeout, started.elapsed());
                    span.record("result", "timeout");
                    let err = Error::LoaderTimeout(limit);
                    return self
                        .fail_safe(stored_key, mode, windows, fallback, err)
                        .await;
                }
            },
            None => guarded.await,
        };
        let load_duration = started.elapsed();
        observe(&mut slot, load_duration, !matches!(outcome, Ok(Ok(_))));
        let value = match outcome {
            Err(_panic) => {
                metrics.load(LoadOutcome::Panic, load_duration);
                span.record("result", "panic");
                tracing::error!(key = stored_key, "loader panicked; nothing cached");
                let err = Error::LoaderPanicked;
                return self
                    .fail_safe(stored_key, mode, windows, fallback, err)
                    .await;
            }
            Ok(Err(err)) => {
                metrics.load(LoadOutcome::Error, load_duration);
                span.record("result", "error");
                let err: crate::loader::BoxError = err.into();
                // A registered loader's error arrives wrapped: unwrapped, it is the loader's
                // own (downcast to its type, its `source()` chain).
                let err = match err.downcast::<crate::loader::LoaderError>() {
                    Ok(wrapped) => wrapped.0,
                    Err(err) => err,
                };
                tracing::debug!(key = stored_key, error = %err, "loader failed; nothing cached");
                // A batch call shed by the origin limit is an overload, as for one key.
                let shed = err
                    .downcast_ref::<BatchLoadError>()
                    .and_then(BatchLoadError::as_read_error);
                let err = match shed {
                    Some(overloaded) => overloaded,
                    None => Error::Loader(Arc::from(err)),
                };
                return self
                    .fail_safe(stored_key, mode, windows, fallback, err)
                    .await;
            }
            Ok(Ok(value)) => {
                metrics.load(LoadOutcome::Success, load_duration);
                span.record("result", "success");
                value.map(Arc::new)
            }
        };
        // The load is over: its span closes before the fill (a sibling of it in the tree).
        drop(span);
        if value.is_none() && self.inner.ttl.negative_ttl.is_none() {
            self.release(mode).await;
            return Ok(Fetched::fresh(None));
        }
        let call_tags = windows.tags.as_deref().unwrap_or(&[]);
        let tags = match self.entry_tags(call_tags, value.as_deref(), tag_clock) {
            Ok(tags) => tags,
            Err(err) => {
                // The value is good; only its tags are not (e.g. derived past the cap).
                metrics.encode_failures.increment(1);
                self.warn_uncached(stored_key, &err);
                self.release(mode).await;
                return Ok(Fetched::fresh(value));
            }
        };
        {
            let _turn = l2_turn(windows).await;
            self.fill(stored_key, value.as_ref(), load_duration, mode, epoch, tags)
                .await;
        }
        if value.is_none() {
            metrics.negative_stored.increment(1);
        }
        Ok(Fetched::fresh(value))
    }

    /// The load failed: serve the stale value if it is within the stale-if-error window (and
    /// re-store it as a flagged copy for the throttle period), else return the error. The copy
    /// goes into L1 under the fallback's own epoch (from when it was found), so that an
    /// invalidation or an own write since keeps it out.
    async fn fail_safe(
        &self,
        stored_key: &str,
        mode: FillMode,
        windows: &Windows,
        fallback: Option<Fallback<V>>,
        err: Error,
    ) -> LoadResult<V> {
        let inner = &*self.inner;
        let Some(found) = fallback.filter(|f| f.usable_within(windows.stale_if_error, now_ms()))
        else {
            self.release(mode).await;
            return Err(err);
        };
        let epoch = found.epoch;
        inner.metrics.stale_served(StaleReason::Error);
        tracing::warn!(
            key = stored_key,
            error = %err,
            "origin failed; serving the stale value (stale-if-error)"
        );
        match self.encode_stale_copy(stored_key, &found, inner.ttl.fail_safe_throttle) {
            Ok(Some(encoded)) => match mode {
                FillMode::Leased(held) => {
                    let filled = self.fenced_fill(stored_key, &encoded, &held).await;
                    if filled.is_ok() {
                        held.disarm();
                    } // else: dropped armed, the lease is released in the background
                    if !matches!(filled, Ok(FillOutcome::LeaseLost)) {
                        self.mirror_in_l1(stored_key, found.value.as_ref(), &encoded, epoch);
                    }
                }
                FillMode::Fenced(_) | FillMode::LocalOnly => {
                    self.mirror_in_l1(stored_key, found.value.as_ref(), &encoded, epoch);
                }
            },
            // Past its stale time already, or not encodable: nothing to re-store.
            Ok(None) | Err(_) => self.release(mode).await,
        }
        Ok(Fetched::of(found.value, true, found.source))
    }

    /// Writes `encoded` to L2 if `held` still holds the key's lease, and announces the fill.
    async fn fenced_fill(
        &self,
        stored_key: &str,
        encoded: &Encoded,
        held: &HeldLease,
    ) -> std::result::Result<FillOutcome, crate::store::StoreError> {
        let inner = &*self.inner;
        inner
            .remote
            .fill_leased(
                stored_key,
                encoded.bytes.clone(),
                inner.ttl.l2_ttl(&encoded.meta),
                encoded.meta.version,
                held.token,
                inner.protect.fill_waiters.channel(),
            )
            .await
    }

    /// Gives a lease back after a load that produced nothing to cache.
    async fn release(&self, mode: FillMode) {
        if let FillMode::Leased(held) = mode {
            held.release().await;
        }
    }

    /// Logs a loaded value that could not be cached (at most once a second, with the count of
    /// the others: it repeats on every read of the key).
    fn warn_uncached(&self, stored_key: &str, err: &Error) {
        if let Some(suppressed) = self.inner.format.uncached_log.allow() {
            tracing::warn!(
                key = stored_key,
                error = %err,
                suppressed,
                "loaded value not cached in L2 (returned to the callers; too large: kept in L1 only for `oversized_in_l1`; otherwise the next read loads again)"
            );
        }
    }

    /// Logs an oversized value that L1 cannot hold either (throttled as `warn_uncached`):
    /// every read of it goes to the origin.
    fn warn_too_heavy_for_l1(&self, stored_key: &str, size: usize, limit: u64) {
        if let Some(suppressed) = self.inner.format.uncached_log.allow() {
            tracing::warn!(
                key = stored_key,
                size,
                l1_max_entry = limit,
                suppressed,
                "loaded value too large for L2, and for L1 (heavier than L1's largest entry, see `l1_max_bytes`): not cached at all, every read loads it; raise max_value_bytes or split the value"
            );
        }
    }

    /// Caches what a loader produced. A value that cannot be cached is still returned to the
    /// callers; it is only counted and logged here.
    /// `epoch`: L1's invalidation epoch of the key from before the load; if another instance
    /// invalidated the key since, the value does not go into L1.
    async fn fill(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        load_duration: Duration,
        mode: FillMode,
        epoch: u64,
        tags: Option<Arc<TagStamp>>,
    ) {
        let inner = &*self.inner;
        let ttl = match value {
            Some(_) => inner.ttl.ttl,
            None => match inner.ttl.negative_ttl {
                Some(ttl) => ttl,
                None => return self.release(mode).await,
            },
        };
        let encoded =
            match self.encode_entry(stored_key, value, ttl, 0, load_duration, tags.clone()) {
                Ok(encoded) => encoded,
                Err(err) => {
                    match (&err, value, inner.format.oversized_in_l1) {
                        (Error::ValueTooLarge { size, .. }, Some(value), Some(keep)) => {
                            inner.metrics.too_large.increment(1);
                            let kept = self.keep_oversized_in_l1(
                                stored_key,
                                value,
                                *size,
                                keep,
                                load_duration,
                                epoch,
                                tags,
                            );
                            if let Err(limit) = kept {
                                self.warn_too_heavy_for_l1(stored_key, *size, limit);
                                return self.release(mode).await;
                            }
                        }
                        (Error::ValueTooLarge { .. }, _, _) => inner.metrics.too_large.increment(1),
                        _ => inner.metrics.encode_failures.increment(1),
                    }
                    self.warn_uncached(stored_key, &err);
                    return self.release(mode).await;
                }
            };
        let held = match mode {
            FillMode::LocalOnly => {
                self.mirror_in_l1(stored_key, value, &encoded, epoch);
                return;
            }
            FillMode::Fenced(fence) => {
                // A fill carries no version: it never replaces a versioned entry.
                let filled = inner
                    .remote
                    .fill_fenced(
                        stored_key,
                        encoded.bytes.clone(),
                        inner.ttl.l2_ttl(&encoded.meta),
                        encoded.meta.version,
                        fence,
                        inner.protect.fill_waiters.channel(),
                    )
                    .await;
                return self.after_fill(stored_key, value, &encoded, epoch, filled);
            }
            FillMode::Leased(held) => held,
        };
        let filled = self.fenced_fill(stored_key, &encoded, &held).await;
        if filled.is_ok() {
            held.disarm();
        } // else: dropped armed, the lease is released in the background (or expires)
        self.after_fill(stored_key, value, &encoded, epoch, filled);
    }

    /// Mirrors a fenced fill's outcome in L1 (`epoch`: taken before the origin was read).
    fn after_fill(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        encoded: &Encoded,
        epoch: u64,
        filled: std::result::Result<FillOutcome, StoreError>,
    ) {
        let inner = &*self.inner;
        match filled {
            Ok(FillOutcome::Stored) => {
                self.mirror_in_l1(stored_key, value, encoded, epoch);
            }
            Ok(FillOutcome::RefusedOlder) => {
                inner.metrics.fills_refused_older.increment(1);
                inner.l1.remove(stored_key);
            }
            Ok(FillOutcome::LeaseLost) => {
                // The key was written or invalidated while we loaded: what we loaded may be
                // older than the origin now. Callers get it; no tier keeps it.
                inner.metrics.fills_refused_lease_lost.increment(1);
                tracing::debug!(
                    key = stored_key,
                    "fill refused: lease voided during the load"
                );
            }
            Err(_) => {
                // L2 is failing: keep the value in this process only.
                self.mirror_in_l1(stored_key, value, encoded, epoch);
            }
        }
    }
}

/// A batch pipeline's wait on someone else's load: parked while this lives.
struct Parked<'a>(Option<&'a dyn Park>);

impl<'a> Parked<'a> {
    fn new(batch: Option<&'a dyn Park>) -> Self {
        if let Some(b) = batch {
            b.park();
        }
        Parked(batch)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.resume();
        }
    }
}

/// Tells the origin limit how a load went (nothing without a slot).
fn observe(slot: &mut Option<OriginPermit>, took: std::time::Duration, failed: bool) {
    if let Some(permit) = slot {
        permit.observe(took, failed);
    }
}
