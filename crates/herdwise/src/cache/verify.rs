//! The verification task: checks sampled reads against the origin (see `ops::verify` for the
//! sampling and the findings).
//!
//! A fresh read from L1 or L2 is sampled at the configured rate and queued. One task per cache
//! takes the samples at most `max_checks_per_second` origin loads a second, each through the
//! origin limit (a sample that finds the origin at its limit is skipped, never waited for),
//! loads the key with the registered loader — the result is compared, never cached — and
//! compares it with what was served. A first mismatch is checked again after `confirm_after`:
//! if the cache no longer holds the value served (it was invalidated or rewritten meanwhile),
//! or the origin has it again, it is `resolved`; otherwise the mismatch is confirmed, counted
//! with the entry's age, and (with `repair`) the key is invalidated everywhere. The task holds
//! the cache weakly and ends with it.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cache::entries::L2Read;
use crate::cache::warm::SharedKey;
use crate::cache::{Cache, Inner};
use crate::loader::SharedLoader;
use crate::metrics::{CacheMetrics, VerifyOutcome};
use crate::ops::verify::{Mismatch, Same, Sample, Verifier, VerifyOptions, VerifyReport};
use crate::protect::origin_limit::Slot;
use crate::tiers::freshness::now_ms;
use crate::tiers::key::CacheKey;
use crate::tiers::local::Standing;

/// First mismatches waiting for their confirmation, at most.
const PENDING: usize = 64;
/// A check's origin load may take this long without a configured hard timeout.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type CacheVerifier<K, V> = Verifier<SharedKey<K>, V>;

/// A first mismatch, to confirm.
struct Pending<K: ?Sized, V> {
    due: Instant,
    sample: Sample<SharedKey<K>, V>,
}

/// What the read path needs of the verifier, with the bounds of the typed key erased: the
/// verifier, how to own a key, and how to start the checking task.
pub(crate) struct VerifyHook<K: ?Sized, V> {
    verifier: Arc<CacheVerifier<K, V>>,
    own: OwnKey<K>,
    start: Box<dyn Fn(Weak<Inner<V>>) + Send + Sync>,
}

/// Turns a borrowed key into a shared owned one.
type OwnKey<K> = Box<dyn Fn(&K) -> SharedKey<K> + Send + Sync>;

/// Builds the hook at `build()`, when the loader and the metrics are known.
pub(crate) type HookFactory<K, V> = Box<
    dyn FnOnce(CacheMetrics, Option<SharedLoader<K, V>>) -> Result<Arc<VerifyHook<K, V>>, String>
        + Send,
>;

impl<K: ?Sized, V> VerifyHook<K, V> {
    /// The factory for `options`, comparing with `same`.
    pub fn factory(options: VerifyOptions, same: Same<V>) -> HookFactory<K, V>
    where
        K: CacheKey + ToOwned + Sync + 'static,
        K::Owned: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        Box::new(move |metrics, loader| {
            options.check()?;
            let loader =
                loader.ok_or("verify: needs a registered loader (CacheBuilder::loader)")?;
            let verifier = Arc::new(Verifier::new(options, same, metrics));
            let started = verifier.clone();
            Ok(Arc::new(VerifyHook {
                verifier,
                own: Box::new(|key: &K| -> SharedKey<K> { Arc::new(key.to_owned()) }),
                start: Box::new(move |weak| {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        return; // the next sample inside a runtime starts it
                    };
                    if let Some(rx) = started.take_receiver() {
                        let task = check_samples(weak, loader.clone(), started.clone(), rx);
                        runtime.spawn(task);
                    }
                }),
            }))
        })
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// What the verifier found so far; `None` without [`CacheBuilder::verify`](crate::CacheBuilder::verify).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("docs")
    ///     .loader(|k: &u64| {
    ///         let v = format!("row {k}");
    ///         async move { Ok::<_, std::io::Error>(Some(v)) }
    ///     })
    ///     .verify(herdwise::VerifyOptions::new(0.01))
    ///     .build()?;
    /// let report = cache.verify_report().expect("verification is on");
    /// assert_eq!(report.mismatched, 0);
    /// # Ok(()) }
    /// ```
    pub fn verify_report(&self) -> Option<VerifyReport> {
        self.verifier.as_ref().map(|hook| hook.verifier.report())
    }

    /// A fresh read served `value` for `key`: sampled for verification at the configured rate.
    #[inline]
    pub(crate) fn maybe_verify(&self, key: &K, stored_key: &str, value: Option<&Arc<V>>) {
        let (Some(hook), Some(value)) = (self.verifier.as_ref(), value) else {
            return;
        };
        if !hook.verifier.wants_sample() {
            return;
        }
        hook.verifier.offer(Sample {
            key: (hook.own)(key),
            stored_key: stored_key.to_string(),
            value: value.clone(),
        });
        (hook.start)(Arc::downgrade(&self.inner));
    }
}

/// The samples' receiver while a task checks them: handed back to the verifier when the task
/// ends or is dropped (a runtime shutting down), so a later sample can start another.
struct Receiving<K: ?Sized, V> {
    verifier: Arc<CacheVerifier<K, V>>,
    rx: Option<mpsc::Receiver<Sample<SharedKey<K>, V>>>,
}

impl<K: ?Sized, V> Drop for Receiving<K, V> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.verifier.return_receiver(rx);
        }
    }
}

async fn check_samples<K, V>(
    weak: Weak<Inner<V>>,
    loader: SharedLoader<K, V>,
    verifier: Arc<CacheVerifier<K, V>>,
    rx: mpsc::Receiver<Sample<SharedKey<K>, V>>,
) where
    K: CacheKey + ?Sized + 'static,
    V: Send + Sync + 'static,
{
    let mut receiving = Receiving {
        verifier: verifier.clone(),
        rx: Some(rx),
    };
    let Some(rx) = receiving.rx.as_mut() else {
        return;
    };
    let every = Duration::from_secs_f64(1.0 / verifier.options.max_checks_per_second);
    let mut next_load = Instant::now();
    let mut pending: VecDeque<Pending<K, V>> = VecDeque::new();
    loop {
        let confirm_due = pending.front().map(|p| p.due);
        let work = tokio::select! {
            sample = rx.recv() => match sample {
                Some(sample) => Work::Check(sample),
                None => return,
            },
            _ = sleep_until(confirm_due), if confirm_due.is_some() => match pending.pop_front() {
                Some(p) => Work::Confirm(p.sample),
                None => continue,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => Work::Idle,
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let cache: Cache<K, V> = Cache::from_arc(inner, Some(loader.clone()), None);
        match &work {
            Work::Idle => continue,
            // Its first mismatch is being confirmed already.
            Work::Check(sample)
                if pending
                    .iter()
                    .any(|p| p.sample.stored_key == sample.stored_key) =>
            {
                verifier.record(VerifyOutcome::Skipped, None);
                continue;
            }
            // Over the budget: a new sample is dropped, not delayed (the queue would only grow
            // old); a confirmation (at most `PENDING` wait) waits for its turn.
            Work::Check(_) if Instant::now() < next_load => {
                verifier.record(VerifyOutcome::Skipped, None);
                continue;
            }
            Work::Confirm(_) => tokio::time::sleep_until(next_load).await,
            Work::Check(_) => {}
        }
        next_load = Instant::now().max(next_load) + every;
        verifier.budget_until(next_load);
        match work {
            Work::Check(sample) => match check(&cache, &loader, &verifier, &sample).await {
                Checked::Same => verifier.record(VerifyOutcome::Match, None),
                Checked::Differs if pending.len() < PENDING => pending.push_back(Pending {
                    due: Instant::now() + verifier.options.confirm_after,
                    sample,
                }),
                Checked::Differs => verifier.record(VerifyOutcome::Skipped, None),
                Checked::Failed => verifier.record(VerifyOutcome::Error, None),
                Checked::Busy => verifier.record(VerifyOutcome::Skipped, None),
            },
            Work::Confirm(sample) => confirm(&cache, &loader, &verifier, sample).await,
            Work::Idle => {}
        }
    }
}

enum Work<K: ?Sized, V> {
    Check(Sample<SharedKey<K>, V>),
    Confirm(Sample<SharedKey<K>, V>),
    Idle,
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

enum Checked {
    Same,
    Differs,
    Failed,
    Busy,
}

/// Loads the sampled key from the origin (through the origin limit) and compares.
async fn check<K, V>(
    cache: &Cache<K, V>,
    loader: &SharedLoader<K, V>,
    verifier: &CacheVerifier<K, V>,
    sample: &Sample<SharedKey<K>, V>,
) -> Checked
where
    K: CacheKey + ?Sized + 'static,
    V: Send + Sync + 'static,
{
    match origin_value(cache, loader, sample).await {
        Origin::Value(Some(v)) if (verifier.same)(&v, &sample.value) => Checked::Same,
        Origin::Value(_) => Checked::Differs,
        Origin::Failed => Checked::Failed,
        Origin::Busy => Checked::Busy,
    }
}

enum Origin<V> {
    Value(Option<V>),
    Failed,
    Busy,
}

async fn origin_value<K, V>(
    cache: &Cache<K, V>,
    loader: &SharedLoader<K, V>,
    sample: &Sample<SharedKey<K>, V>,
) -> Origin<V>
where
    K: CacheKey + ?Sized + 'static,
    V: Send + Sync + 'static,
{
    let outage = cache.remote_unavailable();
    let mut slot = match cache
        .inner
        .protect
        .origin_limit
        .as_ref()
        .map(|l| l.try_slot(outage))
    {
        None => None,
        Some(Slot::Granted(permit)) => Some(permit),
        Some(Slot::Busy) => return Origin::Busy,
    };
    let key: &K = (*sample.key).borrow();
    let limit = cache.inner.defaults.hard_timeout.unwrap_or(LOAD_TIMEOUT);
    // A panicking loader fails this check, not the task (pending confirmations would go).
    let load = std::panic::AssertUnwindSafe(loader.load(key)).catch_unwind();
    let started = std::time::Instant::now();
    let loaded = tokio::time::timeout(limit, load).await;
    if let Some(slot) = &mut slot {
        slot.observe(started.elapsed(), !matches!(loaded, Ok(Ok(Ok(_)))));
    }
    match loaded {
        Ok(Err(_panic)) => {
            tracing::debug!(key = sample.stored_key, "verifier: the loader panicked");
            Origin::Failed
        }
        Ok(Ok(Ok(value))) => Origin::Value(value),
        Ok(Ok(Err(err))) => {
            tracing::debug!(key = sample.stored_key, error = %err.0, "verifier: origin load failed");
            Origin::Failed
        }
        Err(_) => Origin::Failed,
    }
}

/// A first mismatch, `confirm_after` later: still served, and still not the origin's?
async fn confirm<K, V>(
    cache: &Cache<K, V>,
    loader: &SharedLoader<K, V>,
    verifier: &CacheVerifier<K, V>,
    sample: Sample<SharedKey<K>, V>,
) where
    K: CacheKey + ?Sized + 'static,
    V: Send + Sync + 'static,
{
    let stored_key = sample.stored_key.as_str();
    let current = match cache.l1_get(stored_key) {
        Some((entry, Standing::Fresh)) => entry.value.map(|v| (v, entry.meta.created_at_ms)),
        _ => match cache.read_l2(stored_key).await {
            L2Read::Fresh(value, meta, _) => value.map(|v| (v, meta.created_at_ms)),
            _ => None,
        },
    };
    let Some((served, created_at_ms)) = current.filter(|(v, _)| (verifier.same)(v, &sample.value))
    else {
        // Invalidated, rewritten or expired meanwhile.
        verifier.record(VerifyOutcome::Resolved, None);
        return;
    };
    let origin = origin_value(cache, loader, &sample).await;
    let Origin::Value(origin) = origin else {
        let outcome = match origin {
            Origin::Busy => VerifyOutcome::Skipped,
            _ => VerifyOutcome::Error,
        };
        verifier.record(outcome, None);
        return;
    };
    if origin.is_some_and(|v| (verifier.same)(&v, &served)) {
        verifier.record(VerifyOutcome::Resolved, None);
        return;
    }
    let repaired = verifier.options.repair;
    if repaired {
        cache.invalidate_stored(stored_key).await;
    }
    let age = Duration::from_millis(now_ms().saturating_sub(created_at_ms));
    if let Some(suppressed) = verifier.log_throttle.allow() {
        tracing::warn!(
            key = stored_key,
            age_ms = age.as_millis() as u64,
            repaired,
            suppressed,
            "verifier: the cache serves a value the origin no longer has (further mismatches \
             this minute not logged)"
        );
    }
    verifier.record(
        VerifyOutcome::Mismatch,
        Some(Mismatch {
            key: sample.stored_key,
            age,
            at: SystemTime::now(),
            repaired,
        }),
    );
}
