//! The cache's side of coherence: the invalidation paths that span several parts (tags, the
//! retry queue's re-application, the namespace generation, the recovery sentinel), written as
//! calls on those parts. The parts themselves (`crate::coherence`, `crate::tiers`) never see
//! the cache.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::cache::{Cache, Inner};
use crate::coherence::backplane::{Invalidation, Subscriber};
use crate::coherence::retry::{Retry, RetryHost, RetryOnDrop, RetryQueue};
use crate::coherence::tags::TagLedger;
use crate::coherence::tags::{collect_tags, tag_as_stored, Verdict};
use crate::envelope::TagStamp;
use crate::error::Result;
use crate::metrics::CacheMetrics;
use crate::store::{Announcement, Publication, StoreError};
use crate::tiers::key::CacheKey;
use crate::tiers::local::{L1Entry, Standing};
use crate::tiers::recovery::Recovery;

impl<V: Send + Sync + 'static> Subscriber for Inner<V> {
    fn tags(&self) -> &TagLedger {
        &self.coherence.tags
    }

    fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    fn namespace(&self) -> &str {
        self.keys.namespace()
    }

    fn drop_key(&self, stored_key: &str) {
        self.l1.invalidate(stored_key);
        // Deleted now (or invalidated again, and deleted): L2's value may be taken again.
        self.coherence.pending.release(stored_key);
    }

    fn key_changed(&self, stored_key: &str) {
        self.l1.invalidate(stored_key);
    }

    fn hold_key(&self, stored_key: &str) {
        if !self.keys.could_be_stored_key(stored_key) {
            // Not one of this namespace's keys (a foreign or malformed message): nothing to
            // hold, and nothing for it to take room from.
            tracing::debug!("pending delete of a key outside the namespace ignored");
            return;
        }
        if !self.coherence.pending.hold(stored_key) {
            tracing::debug!(
                "too many pending deletes held: an L2 value may be served before its delete"
            );
        }
        self.l1.invalidate(stored_key);
    }

    fn drop_prefix(&self, prefix: &str) {
        self.l1.remove_prefix(prefix);
    }

    fn cleared(&self, generation: u64) {
        // Generations are counts or milliseconds: one past what Lua numbers carry exactly is a
        // forged or broken message, not a generation.
        if generation > 1 << 53 {
            return;
        }
        if self.keys.advance_generation(generation) {
            self.l1.clear();
        }
    }

    fn resync(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(self.sync_generation())
    }
}

impl<V> Inner<V> {
    /// Tells the other instances about an invalidation; `false` if the store did not take it
    /// (`true` without a backplane: there is no one to tell).
    pub(crate) async fn announce(&self, what: Invalidation<'_>) -> bool {
        match self.coherence.backplane.as_ref() {
            Some(backplane) => backplane.publish(&self.remote, what).await,
            None => true,
        }
    }

    /// The announcement of `what` to send in the round trip of the write that makes it (see
    /// `Backplane::with_write`), where it can go there: a backplane on pub/sub, no copies of
    /// the key to delete first (the event must come after their deletion), a store that sends
    /// both in one round trip on one path (see `Store::publishes_with_writes`), and a closed
    /// breaker for the key (a call it rejects would use up a sequence number: a gap at every
    /// receiver). `None`: announce after the write, as [`Inner::announce`].
    pub(crate) fn announcement_with_write(
        &self,
        stored_key: &str,
        what: Invalidation<'_>,
    ) -> Option<Publication<'_>> {
        if self.ops.replicas.is_some()
            || !self.remote.store().publishes_with_writes()
            || !self.remote.closed_for(stored_key)
        {
            return None;
        }
        self.coherence.backplane.as_ref()?.with_write(what)
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Reads the namespace generation and tag clock from the store (one round trip), moves to
    /// the generation if it is newer (clearing L1: entries of the old generation are unreachable
    /// anyway) and lets new entries be stamped with the clock. The clock, once the store
    /// answered.
    pub(crate) async fn sync_generation(&self) -> Option<u64> {
        let table = self
            .remote
            .read_tags(&self.coherence.tag_table_key, &[], self.keys.generation())
            .await
            .ok()?;
        self.cleared(table.generation);
        self.coherence.tags.saw_clock(table.clock);
        Some(table.clock)
    }
}

impl<V: Send + Sync + 'static> RetryHost for Inner<V> {
    fn retries(&self) -> &RetryQueue {
        &self.coherence.retries
    }

    fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recovery.subscribe()
    }

    fn reapply<'a>(&'a self, what: &'a Retry) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match what {
                Retry::Key(key) => {
                    if self.remote.delete(key).await.is_err() {
                        // Still pending: say so (again). The first try may never have said it
                        // (its caller was dropped before the announcement), and the others'
                        // holds must not lapse while the delete keeps failing.
                        // (Not if a newer write covered the key meanwhile: it said "done".)
                        if self.coherence.retries.is_unapplied(key) {
                            self.announce(Invalidation::PendingKey(key)).await;
                        }
                        return false;
                    }
                    self.drop_replicas(key).await;
                    self.l1.invalidate(key);
                    // The other instances must hear of it too: a lost announcement is retried
                    // (with the delete, which is harmless to repeat).
                    match self.coherence.backplane.as_ref() {
                        Some(backplane) => {
                            backplane
                                .publish(&self.remote, Invalidation::Key(key))
                                .await
                        }
                        None => true,
                    }
                }
                Retry::Tag(tag) => bump(self, tag).await.is_ok(),
                // While the key's delete is still queued, "done" would be false: the queued
                // delete announces it when it goes through.
                Retry::AnnounceKey(key) if self.coherence.retries.is_unapplied(key) => true,
                Retry::AnnounceKey(key) => self.announce(Invalidation::Key(key)).await,
                Retry::AnnouncePrefix(prefix) => self.announce(Invalidation::Prefix(prefix)).await,
                Retry::Prefix(prefix) => {
                    let walked = self
                        .remote
                        .delete_prefix(prefix, crate::cache::PREFIX_DELETE_DEADLINE)
                        .await
                        .is_ok();
                    // What local reads put back from a node the walk had not reached goes too.
                    self.l1.remove_prefix(prefix);
                    walked && self.announce(Invalidation::Prefix(prefix)).await
                }
            }
        })
    }
}

/// Invalidates `tag` in the store (one round trip, announced to the other instances by the store
/// in the same step) and records the new mark in this instance's ledger.
pub(crate) async fn bump<V: Send + Sync + 'static>(
    inner: &Inner<V>,
    tag: &str,
) -> std::result::Result<u64, StoreError> {
    let announced = inner
        .coherence
        .backplane
        .as_ref()
        .map(|b| b.tag_announcement());
    let suffix = format!("|{tag}");
    let announce = announced
        .as_ref()
        .map(|(channel, stream_max_len, prefix)| Announcement {
            channel,
            stream_max_len: *stream_max_len,
            prefix,
            suffix: &suffix,
        });
    let seq = inner.coherence.tags.pending_seq();
    let clock = inner
        .remote
        .bump_tag(
            &inner.coherence.tag_table_key,
            tag,
            inner.coherence.tag_mark_ttl,
            announce,
        )
        .await?;
    inner.coherence.tags.confirmed(tag, clock, seq);
    Ok(clock)
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Invalidates every entry carrying `tag`, on every instance, in one round trip whatever the
    /// number of entries: the tag is marked as invalidated at the next value of the namespace's
    /// tag clock, and every entry stamped before that mark is unreadable from then on (it dies by
    /// its TTL). This instance stops serving them at once; the others when the store's
    /// announcement reaches them (or, if they may have missed it, when they notice and start
    /// over). Loads in flight whose value was read before the invalidation are not served from
    /// the cache afterwards either: their entries carry the older stamp.
    ///
    /// A store failure is not returned: the invalidation is retried in the background (and, until
    /// it succeeds, this instance treats every entry with the tag as invalid).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::{Cache, WriteOptions};
    /// let cache: Cache<u64, String> = Cache::builder("products").build()?;
    /// let shoes = WriteOptions::default().tags(["category:shoes"]);
    /// cache.set_with(&1, "boot".to_string(), &shoes).await?;
    /// cache.set_with(&2, "sandal".to_string(), &shoes).await?;
    /// cache.set(&3, "lamp".to_string()).await?;
    ///
    /// cache.invalidate_tag("category:shoes").await?;
    /// assert_eq!(cache.get(&1).await?, None);
    /// assert_eq!(cache.get(&2).await?, None);
    /// assert!(cache.get(&3).await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        let max_bytes = self.inner.coherence.max_tag_bytes;
        tag_as_stored(tag, max_bytes)?;
        // A tenant-scoped namespace's tags are the tenants' (`acme:x` on the root handle would
        // be tenant acme's tag `x`).
        if self.tenant.is_none() && self.inner.keys.tenant_required() {
            return Err(crate::KeyError::TenantRequired(self.namespace().into()).into());
        }
        let scoped = self.scoped_tag(tag);
        let tag = &*tag_as_stored(&scoped, max_bytes)?;
        self.ensure_backplane();
        self.ensure_generation().await;
        let inner = &self.inner;
        inner.metrics.tag_invalidations.increment(1);
        if !inner.coherence.tags.invalidate_pending(tag) {
            inner.metrics.invalidations_dead_lettered.increment(1);
            // Not held: no entry stamped before now may stand in as a fallback either.
            inner.coherence.tags.forget_before_now();
            tracing::error!(
                tag,
                "too many tag invalidations wait for the store: not held locally"
            );
        }
        // Armed across the store write: a caller dropped meanwhile leaves it to the retries.
        let retry = RetryOnDrop::new(inner, Retry::Tag(tag.into()));
        if bump(inner, tag).await.is_ok() {
            retry.disarm();
        }
        Ok(())
    }

    /// Whether an entry with these tags may be served: judged locally when the ledger can, else
    /// against the store's marks (one `MGET`). `Valid`, `Invalid` (by a mark), or `Pending` (an
    /// unconfirmed local invalidation; also the answer when the store cannot be asked: a miss
    /// here, but no verdict against the entry).
    pub(crate) async fn tags_valid(&self, stamp: &TagStamp) -> Verdict {
        let inner = &*self.inner;
        match inner.coherence.tags.verdict(stamp) {
            verdict @ (Verdict::Valid | Verdict::Invalid | Verdict::Pending) => verdict,
            Verdict::Unknown => {
                inner.metrics.tag_store_checks.increment(1);
                let era = inner.coherence.tags.era();
                let tags: Vec<&str> = stamp.tags.iter().map(|t| &**t).collect();
                match inner
                    .remote
                    .read_tags(&inner.coherence.tag_table_key, &tags, 0)
                    .await
                {
                    Ok(table) if table.marks.len() == tags.len() => {
                        if inner.coherence.tags.learn(era, stamp, &table) {
                            Verdict::Valid
                        } else {
                            Verdict::Invalid
                        }
                    }
                    _ => Verdict::Pending,
                }
            }
        }
    }

    /// Whether the L1 entry found under `stored_key` may be served. Only a local `Valid` counts:
    /// anything else goes to L2, where the store can decide. An entry a tag invalidation killed
    /// is dropped from L1 at once (so it is judged, counted and kept in memory only once).
    /// How an L1 entry found with `standing` may be used, given its tags: `None` if a tag of
    /// it was invalidated (it is removed); as found if its tags are known valid; and as an
    /// *unverified* entry if they cannot be judged here (the ledger is incomplete: events may
    /// have been missed, or the store is unreachable) — checked against L2 before it is
    /// served, and served only as a stale-if-error fallback if L2 cannot answer, exactly as an
    /// untagged entry from before missed events is. (It was dropped before, so a Redis outage
    /// sent every tagged read to the origin.)
    pub(crate) fn l1_tag_standing(
        &self,
        stored_key: &str,
        entry: &L1Entry<V>,
        standing: Standing,
    ) -> Option<Standing> {
        let Some(stamp) = entry.tags.as_ref() else {
            return Some(standing);
        };
        match self.inner.coherence.tags.verdict(stamp) {
            Verdict::Valid => Some(standing),
            Verdict::Invalid | Verdict::Pending => {
                self.inner.metrics.tag_invalidated_reads.increment(1);
                self.inner.l1.remove_entry(stored_key, entry);
                None
            }
            // No forgotten mark can be against it: a fallback, checked against L2 first.
            Verdict::Unknown if self.inner.coherence.tags.may_fall_back(stamp) => {
                Some(Standing::Unverified)
            }
            Verdict::Unknown => None,
        }
    }

    /// The tags an entry carries: the call's own and those the cache derives from the value,
    /// stamped with `clock` (the ledger's clock from before the value was read or written).
    pub(crate) fn entry_tags(
        &self,
        call_tags: &[Box<str>],
        value: Option<&V>,
        clock: u64,
    ) -> Result<Option<Arc<TagStamp>>> {
        let derived = match (self.inner.coherence.tags_from.as_ref(), value) {
            (Some(derive), Some(value)) => derive(value),
            _ => Vec::new(),
        };
        if call_tags.is_empty() && derived.is_empty() {
            return Ok(None);
        }
        let all = call_tags
            .iter()
            .map(|t| &**t)
            .chain(derived.iter().map(String::as_str));
        let tags = match self.tenant.is_some() {
            true => {
                let scoped: Vec<String> = all.map(|t| self.scoped_tag(t).into_owned()).collect();
                collect_tags(
                    scoped.iter().map(String::as_str),
                    self.inner.coherence.max_tags,
                    self.inner.coherence.max_tag_bytes,
                )?
            }
            false => collect_tags(
                all,
                self.inner.coherence.max_tags,
                self.inner.coherence.max_tag_bytes,
            )?,
        };
        Ok(Some(Arc::new(TagStamp { clock, tags })))
    }
}
