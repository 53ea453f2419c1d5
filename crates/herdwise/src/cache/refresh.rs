//! Reads through the registered loader, and the background refreshes that only such a loader
//! makes possible: stale-while-revalidate (answer with the stale value, refresh behind it) and
//! XFetch (refresh a fresh entry early, with a probability that rises as its expiry nears).
//!
//! A background refresh runs the same read path as a load, marked with the entry it replaces,
//! so it goes through the same single-flight, lease and fenced fill: at most one refresh per key
//! across all instances, and a refresh that an invalidation overtakes is not written.

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use tracing::Instrument;

use crate::cache::entries::{Fallback, L2Read};
use crate::cache::observe::ReadSpan;
use crate::cache::read::{Fetched, LoadOptions, Replacing, Source};
use crate::cache::{hit_yield_point, Cache, Lookup};
use crate::envelope::Meta;
use crate::error::{Error, Result};
use crate::metrics::{GetResult, StaleReason};
use crate::protect::flight::Join;
use crate::tiers::freshness::{now_ms, xfetch_due};
use crate::tiers::key::CacheKey;
use crate::tiers::local::Standing;

impl<K, V> Cache<K, V>
where
    K: CacheKey + ToOwned + Sync + ?Sized + 'static,
    K::Owned: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Reads `key` through L1, L2 and the loader registered with
    /// [`CacheBuilder::loader`](crate::CacheBuilder::loader). Like
    /// [`Cache::get_or_load`], plus background refresh: stale-while-revalidate and XFetch early
    /// refresh. [`Error::NoLoader`] if none is registered.
    pub async fn fetch(&self, key: &K) -> Result<Option<Arc<V>>> {
        self.fetch_with(key, &LoadOptions::default())
            .await
            .map(|fetched| fetched.value)
    }

    /// [`Cache::fetch`] with per-call options, telling whether the value is stale.
    ///
    /// With a soft timeout ([`LoadOptions::soft_timeout`],
    /// [`CacheBuilder::loader_soft_timeout`](crate::CacheBuilder::loader_soft_timeout)): if the
    /// load takes longer and a stale value exists (within the stale-if-error window), the stale
    /// value is returned then, and the load goes on in the background to fill the cache.
    pub async fn fetch_with(&self, key: &K, options: &LoadOptions) -> Result<Fetched<V>> {
        if self.loader.is_none() {
            return Err(Error::NoLoader);
        }
        hit_yield_point().await;
        self.ensure_generation().await;
        let span = ReadSpan::new(self.namespace(), "fetch");
        let (stored_key, fallback) = match self.lookup_l1(key) {
            Ok(Lookup::Fresh(value, meta)) => {
                if self.refresh_early(&meta) {
                    // (The lookup just built this key: it cannot fail now; if it did, the hit
                    // is served, counted once, without an early refresh.)
                    if let Ok(stored_key) = self.key_of(key) {
                        self.spawn_refresh(
                            key.to_owned(),
                            stored_key,
                            meta.fresh_until_ms,
                            Trigger::XFetch,
                        );
                    }
                }
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
        let past = span.past_l1(&self.inner.metrics);
        let verify_key = self.verifier.as_ref().map(|_| stored_key.clone());
        let read = Box::pin(
            self.fetch_past_l1(key, stored_key, fallback, options)
                .instrument(span.span().clone()),
        )
        .await;
        past.fetched(&read);
        if let (Ok(fetched), Some(stored_key)) = (&read, verify_key) {
            if fetched.result() == GetResult::L2Hit {
                self.maybe_verify(key, &stored_key, fetched.value.as_ref());
            }
        }
        read
    }

    /// A `fetch` past its L1 miss, soft timeout included.
    async fn fetch_past_l1(
        &self,
        key: &K,
        stored_key: String,
        fallback: Option<Fallback<V>>,
        options: &LoadOptions,
    ) -> Result<Fetched<V>> {
        let Some(soft) = self.windows(options).soft_timeout else {
            // Boxed, as in `get_or_load_with`: keep the hit path's future small.
            return Box::pin(self.fetch_miss(key, stored_key, fallback, options)).await;
        };
        let mut read = if self.inner.protect.flights.is_running(&stored_key) {
            // Another read leads the load and fills the cache: this one only waits for it, and
            // may stop waiting (nothing of it needs to outlive the call).
            Box::pin(Either::Left(
                self.fetch_miss(key, stored_key, fallback, options),
            ))
        } else {
            // Run the read as a task, so it can outlive this call and still fill the cache (only
            // past an L1 miss, and only for the leading read: a hit spawns nothing).
            let (cache, owned, opts) = (self.clone(), key.to_owned(), options.clone());
            let task = tokio::spawn(async move {
                cache
                    .fetch_miss(owned.borrow(), stored_key, fallback, &opts)
                    .await
            });
            Box::pin(Either::Right(async move {
                task.await.unwrap_or(Err(Error::LoaderPanicked))
            }))
        };
        match tokio::time::timeout(soft, &mut read).await {
            Ok(read) => read,
            Err(_) => {
                // The read put any stale value it found into L1.
                let windows = self.windows(options);
                let stored_key = self.key_of(key)?;
                let stale = self.l1_get(&stored_key).map(|(entry, standing)| {
                    Fallback::from_l1(entry, standing, self.inner.l1.epoch(&stored_key))
                });
                // (Never an unverified entry: L2 was not asked about it.)
                let usable = |f: &Fallback<V>| {
                    !f.unverified && f.usable_within(windows.stale_if_error, now_ms())
                };
                match stale.filter(usable) {
                    Some(found) => {
                        self.inner.metrics.stale_served(StaleReason::SoftTimeout);
                        Ok(Fetched::of(found.value, true, found.source))
                    }
                    // Nothing to fall back on: wait for the read (the hard timeout bounds it).
                    None => read.await,
                }
            }
        }
    }

    /// A `fetch` past its L1 miss.
    async fn fetch_miss(
        &self,
        key: &K,
        stored_key: String,
        fallback: Option<Fallback<V>>,
        options: &LoadOptions,
    ) -> Result<Fetched<V>> {
        let loader = self.loader.clone().ok_or(Error::NoLoader)?;
        self.remember(&stored_key, key);
        self.ensure_rewarm();
        let windows = self.windows(options);
        let background = |refresh_of: u64| {
            self.spawn_refresh(key.to_owned(), stored_key.clone(), refresh_of, Trigger::Swr);
        };
        self.through(
            &stored_key,
            key,
            |k: &K| loader.load(k),
            &windows,
            fallback,
            Some(&background),
            Replacing::Nothing,
        )
        .await
    }

    /// Keeps `keys` refreshed ahead of their expiry, for as long as the returned handle lives:
    /// each key is reloaded (through the lease, so once across instances) when less than
    /// `ahead` × TTL of its freshness remains, and loaded if it is missing. For keys that must
    /// never be cold — a homepage, a config blob.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::Cache;
    /// let config: Cache<str, String> = Cache::builder("config")
    ///     .loader(|name: &str| {
    ///         let name = name.to_string();
    ///         async move { Ok::<_, std::io::Error>(Some(format!("settings of {name}"))) }
    ///     })
    ///     .build()?;
    /// let _hot = config.refresh_ahead(["homepage".to_string()], 0.2)?;
    /// // ... while `_hot` lives, "homepage" is reloaded when 20 % of its TTL is left.
    /// # Ok(()) }
    /// ```
    pub fn refresh_ahead(
        &self,
        keys: impl IntoIterator<Item = K::Owned>,
        ahead: f64,
    ) -> Result<RefreshAhead>
    where
        K::Owned: Clone,
    {
        let loader = self.loader.clone().ok_or(Error::NoLoader)?;
        if !(ahead > 0.0 && ahead < 1.0) {
            return Err(Error::Config(
                "refresh_ahead: `ahead` must be within (0, 1)".into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("refresh_ahead needs a Tokio runtime".into()))?;
        let keys: Vec<K::Owned> = keys.into_iter().collect();
        let ttl = self.inner.ttl.ttl;
        let lead_time = ttl.mul_f64(ahead);
        let period = (lead_time / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        let weak = Arc::downgrade(&self.inner);
        let book = self.book.clone();
        let tenant = self.tenant.clone();
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                // Hold the cache only while checking, so the task ends with the cache.
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let mut cache = Cache::from_arc(inner, Some(loader.clone()), book.clone());
                cache.tenant = tenant.clone();
                for owned in &keys {
                    cache.refresh_if_due(owned, lead_time).await;
                }
            }
        });
        Ok(RefreshAhead {
            task: task.abort_handle(),
        })
    }

    /// Refreshes `owned` in the background if less than `lead_time` of freshness is left; loads
    /// it now if it is missing.
    async fn refresh_if_due(&self, owned: &K::Owned, lead_time: Duration)
    where
        K::Owned: Clone,
    {
        let key: &K = owned.borrow();
        let Ok(stored_key) = self.key_of(key) else {
            return;
        };
        let fresh_until_ms = match self.l1_get(&stored_key) {
            Some((entry, Standing::Fresh | Standing::Stale)) => Some(entry.meta.fresh_until_ms),
            Some((_, Standing::Unverified)) | None => match self.read_l2(&stored_key).await {
                L2Read::Fresh(_, meta, _) => Some(meta.fresh_until_ms),
                L2Read::Stale(_) | L2Read::Miss | L2Read::Unavailable => None,
            },
        };
        match fresh_until_ms {
            Some(until) if until > now_ms() + lead_time.as_millis() as u64 => {}
            Some(until) => {
                self.spawn_refresh(owned.clone(), stored_key, until, Trigger::Ahead);
            }
            None => {
                let _ = self.fetch(key).await;
            }
        }
    }

    /// Whether XFetch says to refresh this fresh entry now.
    fn refresh_early(&self, meta: &Meta) -> bool {
        let beta = self.inner.defaults.xfetch_beta;
        // 1 - [0, 1) is (0, 1]: ln stays finite.
        beta > 0.0 && xfetch_due(meta, now_ms(), beta, 1.0 - rand::random::<f64>())
    }

    /// Refreshes the entry fresh until `refresh_of` in the background. At most one background
    /// refresh per key per instance: while one is running (or waiting for a caller loading the
    /// key right now, often the one that asked for it), another request for the key is dropped,
    /// so stale reads and early-refresh hits never pile up tasks. Counted by trigger when one
    /// starts.
    pub(crate) fn spawn_refresh(
        &self,
        owned: K::Owned,
        stored_key: String,
        refresh_of: u64,
        trigger: Trigger,
    ) {
        let Some(loader) = self.loader.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(running) = self.inner.protect.refreshing.start(&stored_key) else {
            return;
        };
        let metrics = &self.inner.metrics;
        match trigger {
            Trigger::Swr => metrics.refreshes_swr.increment(1),
            Trigger::XFetch => metrics.refreshes_xfetch.increment(1),
            Trigger::Ahead => metrics.refreshes_ahead.increment(1),
        }
        let cache = self.clone();
        runtime.spawn(async move {
            // Released when the task ends, however it ends.
            let _running = running;
            let key: &K = owned.borrow();
            for _ in 0..2 {
                match cache.inner.protect.flights.join(&stored_key) {
                    Join::Leader(leader) => {
                        let windows = cache.windows(&LoadOptions::default());
                        let result = cache
                            .lead(
                                &stored_key,
                                key,
                                |k: &K| loader.load(k),
                                &windows,
                                None,
                                Replacing::FreshUntil(refresh_of),
                                None,
                            )
                            .await;
                        leader.complete(result);
                        return;
                    }
                    Join::Waiter(waiter) => {
                        let _ = waiter.wait().await;
                    }
                    Join::Bypass => return,
                }
            }
        });
    }
}

/// What asked for a background refresh.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger {
    Swr,
    XFetch,
    Ahead,
}

/// Keeps keys refreshed ahead of expiry while it lives (see [`Cache::refresh_ahead`]); dropping
/// it stops the refreshing.
#[derive(Debug)]
#[must_use = "refreshing stops when the handle is dropped"]
pub struct RefreshAhead {
    task: tokio::task::AbortHandle,
}

impl Drop for RefreshAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}
