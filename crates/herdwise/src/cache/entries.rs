//! Moving entries between typed values and the tiers: encoding envelopes, reading L2 into L1,
//! writing L2 and mirroring the outcome in L1. No policy about *when* to read or write: that is
//! the read path's (`cache::read`) and the public API's (`cache`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cache::read::Source;
use crate::cache::{Cache, Inner, WriteOutcome};
use crate::coherence::tags::Verdict;
use crate::envelope::{self, EnvelopeError, Meta, TagStamp};
use crate::error::{Error, Result};
use crate::store::{Publication, SetOutcome, StoreError};
use crate::tiers::freshness::MAX_DURATION;
use crate::tiers::freshness::{now_ms, Freshness};
use crate::tiers::key::CacheKey;
use crate::tiers::local::{L1Entry, Standing};

/// How a write reaches L2.
#[derive(Clone, Copy)]
pub(crate) enum WriteMode {
    /// Unconditional SET that also voids load leases (an explicit cache-aside write).
    Overwrite,
    /// Refused if L2 holds a higher value version (fills and versioned writes).
    IfNotOlder,
}

/// An entry ready to be written.
pub(crate) struct Encoded {
    pub bytes: Bytes,
    pub meta: Meta,
    /// When `meta` was computed (unix ms).
    pub now: u64,
    /// The entry's tags, as stored.
    pub tags: Option<Arc<TagStamp>>,
    /// What the entry weighs in L1 (see [`l1_weight`]).
    pub weight: usize,
}

/// What an entry weighs in L1: what L1 really holds, not the stored (possibly compressed) bytes.
/// The decoded value is weighed by the cache's weigher if it has one, else by its uncompressed
/// payload length (the codec's bytes: for postcard, a decoded value's heap size is usually
/// within 1-3x of that, more for maps and many small allocations); plus its tags. `LocalTier`
/// adds the key and a fixed overhead.
pub(crate) fn l1_weight<V>(
    weigher: Option<&Weigher<V>>,
    value: Option<&V>,
    payload_len: usize,
    tags: Option<&TagStamp>,
) -> usize {
    let value_weight = match (weigher, value) {
        (Some(weigh), Some(value)) => weigh(value),
        _ => payload_len,
    };
    let tag_weight = tags.map_or(0, |t| {
        t.tags.iter().map(|tag| tag.len() + 16).sum::<usize>() + 16
    });
    value_weight.saturating_add(tag_weight)
}

/// Weighs a value for L1 (`CacheBuilder::l1_weigher`).
pub(crate) type Weigher<V> = Arc<dyn Fn(&V) -> usize + Send + Sync>;

/// A value's own time-to-live (see `CacheBuilder::ttl_from`).
pub(crate) type TtlFrom<V> = Arc<dyn Fn(&V) -> Option<Duration> + Send + Sync>;

/// A value that is past its fresh time but may still be served: while another caller refreshes
/// it, or when the origin fails.
pub(crate) struct Fallback<V> {
    pub value: Option<Arc<V>>,
    pub meta: Meta,
    /// Kept when the fallback is re-stored, so a later tag invalidation still reaches it.
    pub tags: Option<Arc<TagStamp>>,
    /// From an L1 entry stored before events were missed: L2 must be asked before it is used.
    pub unverified: bool,
    /// The tier it was found in.
    pub source: Source,
    /// L1's epoch of the key from when it was found: a copy of it put back into L1 (stale-if-
    /// error) is withdrawn if the key was invalidated or written here since.
    pub epoch: u64,
}

impl<V> Clone for Fallback<V> {
    fn clone(&self) -> Self {
        Fallback {
            value: self.value.clone(),
            meta: self.meta,
            tags: self.tags.clone(),
            unverified: self.unverified,
            source: self.source,
            epoch: self.epoch,
        }
    }
}

impl<V> Fallback<V> {
    /// A fallback from an L1 entry that is not fresh (stale, or unverified).
    /// `epoch`: taken right after the lookup that found it (with no await between).
    pub fn from_l1(entry: L1Entry<V>, standing: Standing, epoch: u64) -> Self {
        Fallback {
            value: entry.value,
            meta: entry.meta,
            tags: entry.tags,
            unverified: standing == Standing::Unverified,
            source: Source::L1,
            epoch,
        }
    }

    /// A fallback read from L2 (verified by definition); `epoch` taken before the read.
    pub fn from_l2(
        value: Option<Arc<V>>,
        meta: Meta,
        tags: Option<Arc<TagStamp>>,
        epoch: u64,
    ) -> Self {
        Fallback {
            value,
            meta,
            tags,
            unverified: false,
            source: Source::L2,
            epoch,
        }
    }

    /// Whether it is at most `window` past its fresh time and not past its stale time.
    pub fn usable_within(&self, window: Duration, now_ms: u64) -> bool {
        match Freshness::of(self.meta.fresh_until_ms, self.meta.stale_until_ms, now_ms) {
            Freshness::Fresh => true,
            Freshness::Stale(age_ms) => age_ms <= window.as_millis() as u64,
            Freshness::Expired => false,
        }
    }

    /// The newer (by fresh time) of two fallbacks.
    pub fn newer(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.meta.fresh_until_ms > a.meta.fresh_until_ms {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        }
    }
}

/// What L2 had for a key.
/// Why bytes read from L2 were not used.
pub(crate) enum Rejected {
    /// They do not decode.
    Corrupt(String),
    /// They decode, but were written for another key (`Some(fingerprint)`), or carry no key
    /// fingerprint (`None`).
    OutOfScope(Option<u64>),
}

pub(crate) enum L2Read<V> {
    /// A fresh entry (`None` inside: a negative entry), and its tags.
    Fresh(Option<Arc<V>>, Meta, Option<Arc<TagStamp>>),
    /// Only a stale one.
    Stale(Fallback<V>),
    /// Nothing usable (absent, expired or corrupt — the latter deleted and counted).
    Miss,
    /// L2 did not answer (failed, too slow, or the breaker is open): the rest of this read
    /// should not wait for it again.
    Unavailable,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// An L2 lookup that fills L1 on a hit (a stale hit too, as a fallback).
    pub(crate) async fn read_l2(&self, stored_key: &str) -> L2Read<V> {
        let epoch = self.inner.l1.epoch(stored_key);
        let read = self.read_remote(stored_key).await;
        self.judge_l2(stored_key, read, epoch).await
    }

    /// What bytes read from L2 (by `read_l2`, or along with a lease) are worth: decoded, checked
    /// (expiry, tags), put into L1 (unless the key was invalidated since `epoch`, taken before
    /// the read); corrupt bytes are deleted and counted.
    pub(crate) async fn judge_l2(
        &self,
        stored_key: &str,
        read: std::result::Result<Option<Bytes>, crate::store::StoreError>,
        epoch: u64,
    ) -> L2Read<V> {
        let inner = &*self.inner;
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return L2Read::Miss,
            Err(_) => return L2Read::Unavailable,
        };
        if inner.coherence.retries.is_unapplied(stored_key)
            || inner.coherence.pending.is_held(stored_key)
        {
            // This instance (or another, which said so) invalidated the key and the delete has
            // not gone through yet: what L2 holds is what was invalidated.
            return L2Read::Miss;
        }
        let now = now_ms();
        match self.decode_entry(&bytes, stored_key) {
            Ok((meta, tags, value, payload_len)) => {
                let freshness = Freshness::of(meta.fresh_until_ms, meta.stale_until_ms, now);
                if freshness == Freshness::Expired {
                    return L2Read::Miss;
                }
                let tags = tags.map(Arc::new);
                if let Some(stamp) = tags.as_ref() {
                    let verdict = self.tags_valid(stamp).await;
                    if verdict != Verdict::Valid {
                        inner.metrics.tag_invalidated_reads.increment(1);
                        // A versioned entry would refuse the unversioned fill that replaces it
                        // (only on a mark's verdict: a pending one is this instance's alone).
                        if verdict == Verdict::Invalid && meta.version > 0 {
                            let _ = inner.remote.delete(stored_key).await;
                            self.drop_replicas(stored_key).await;
                        }
                        return L2Read::Miss;
                    }
                }
                let weight = l1_weight(
                    inner.format.weigher.as_ref(),
                    value.as_deref(),
                    payload_len,
                    tags.as_deref(),
                );
                self.l1_insert(
                    stored_key,
                    value.clone(),
                    &meta,
                    weight,
                    inner.ttl.l1_lifetimes(&meta, now),
                    epoch,
                    tags.clone(),
                );
                if freshness == Freshness::Fresh {
                    L2Read::Fresh(value, meta, tags)
                } else {
                    L2Read::Stale(Fallback::from_l2(value, meta, tags, epoch))
                }
            }
            Err(rejected) => {
                match &rejected {
                    Rejected::Corrupt(reason) => {
                        inner.metrics.corrupt_entries.increment(1);
                        if let Some(suppressed) = inner.format.corrupt_log.allow() {
                            tracing::warn!(
                                namespace = inner.keys.namespace(),
                                key = stored_key,
                                %reason,
                                suppressed,
                                "corrupt cache entry: treated as a miss and deleted"
                            );
                        }
                    }
                    Rejected::OutOfScope(None) => {
                        // Written by a build from before the scope check (a rolling upgrade),
                        // or by a writer that does not record scopes: a miss, counted, but not
                        // deleted — the fill that follows replaces it, and deleting would make
                        // old and new builds erase each other's entries during the roll.
                        inner.metrics.scope_unscoped.increment(1);
                        return L2Read::Miss;
                    }
                    Rejected::OutOfScope(found) => {
                        let unscoped = found.is_none();
                        if unscoped {
                            inner.metrics.scope_unscoped.increment(1);
                        } else {
                            inner.metrics.scope_foreign.increment(1);
                        }
                        if let Some(suppressed) = inner.format.scope_log.allow() {
                            tracing::warn!(
                                namespace = inner.keys.namespace(),
                                key = stored_key,
                                unscoped,
                                suppressed,
                                "cache entry read under a key it was not written for (a \
                                 key-format change, a copy, another writer): treated as a \
                                 miss and deleted"
                            );
                        }
                    }
                }
                let _ = inner.remote.delete(stored_key).await;
                self.drop_replicas(stored_key).await;
                L2Read::Miss
            }
        }
    }

    /// Decodes bytes read under `stored_key` (a copy's bytes: under its primary's key).
    #[allow(clippy::type_complexity)]
    fn decode_entry(
        &self,
        bytes: &[u8],
        stored_key: &str,
    ) -> std::result::Result<(Meta, Option<TagStamp>, Option<Arc<V>>, usize), Rejected> {
        let inner = &*self.inner;
        let corrupt = |e: String| Rejected::Corrupt(e);
        let envelope::Decoded {
            meta,
            scope,
            tags,
            payload,
        } = envelope::decode(bytes, inner.format.max_value_bytes)
            .map_err(|e| corrupt(e.to_string()))?;
        if scope != Some(envelope::key_fingerprint(stored_key)) {
            return Err(Rejected::OutOfScope(scope));
        }
        if meta.codec_id != inner.format.codec.id() {
            return Err(corrupt(
                EnvelopeError::CodecMismatch {
                    found: meta.codec_id,
                    expected: inner.format.codec.id(),
                }
                .to_string(),
            ));
        }
        if meta.negative {
            return Ok((meta, tags, None, 0));
        }
        let value = inner
            .format
            .codec
            .decode_for_key(&payload, stored_key)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((meta, tags, Some(Arc::new(value)), payload.len()))
    }

    /// Envelope bytes for `value` (`None` = negative entry), fresh for a jittered `ttl`.
    pub(crate) fn encode_entry(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        ttl: Duration,
        version: u64,
        load_duration: Duration,
        tags: Option<Arc<TagStamp>>,
    ) -> Result<Encoded> {
        let inner = &*self.inner;
        let payload = self.encode_payload(stored_key, value)?;
        let now = now_ms();
        // A value's own TTL is taken as given (it is the value's, not a herd of the cache's).
        let own = match (value, inner.format.ttl_from.as_ref()) {
            // Never past the cache's own TTL: tag marks, retried and pending invalidations are
            // kept for as long as the longest entry can live, computed from it.
            (Some(v), Some(ttl_of)) => ttl_of(v).map(|t| t.min(inner.ttl.ttl).min(MAX_DURATION)),
            _ => None,
        };
        let meta = inner.ttl.meta(
            now,
            own.unwrap_or_else(|| inner.ttl.jittered(ttl)),
            load_duration,
            version,
            value.is_none(),
            inner.format.codec.id(),
        );
        Ok(self.seal(stored_key, meta, tags, &payload, now, value.map(|v| &**v)))
    }

    /// Keeps a loaded value too large for L2 in this instance's L1 for `keep` (capped by the
    /// value's TTL; no stale window), so each instance loads it at most once per `keep`
    /// instead of on every read. Invalidations and tags reach it like any L1 entry; a demoted
    /// L1 re-checks it against L2, finds nothing, and loads again. Whether L1 can hold it:
    /// `Err(limit)` when it is heavier than L1's largest entry (see
    /// `LocalTier::max_entry_weight`), and nothing was kept.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keep_oversized_in_l1(
        &self,
        stored_key: &str,
        value: &Arc<V>,
        size: usize,
        keep: Duration,
        load_duration: Duration,
        epoch: u64,
        tags: Option<Arc<TagStamp>>,
    ) -> std::result::Result<(), u64> {
        let inner = &*self.inner;
        let ttl = inner
            .format
            .ttl_from
            .as_ref()
            .and_then(|ttl_of| ttl_of(value))
            .unwrap_or(inner.ttl.ttl);
        let now = now_ms();
        let mut meta = inner.ttl.meta(
            now,
            keep.min(ttl),
            load_duration,
            0,
            false,
            inner.format.codec.id(),
        );
        meta.stale_until_ms = meta.fresh_until_ms;
        let weight = l1_weight(
            inner.format.weigher.as_ref(),
            Some(&**value),
            size,
            tags.as_deref(),
        );
        inner.l1.fits(stored_key, weight)?;
        let lifetimes = inner.ttl.l1_lifetimes(&meta, now);
        self.l1_insert(
            stored_key,
            Some(value.clone()),
            &meta,
            weight,
            lifetimes,
            epoch,
            tags,
        );
        Ok(())
    }

    /// Envelope bytes re-storing a stale `fallback` as a flagged stale copy that counts as fresh
    /// for `throttle` — never past the fallback's own stale time, so max-stale still holds.
    /// `None` if that time has already passed (nothing worth re-storing).
    pub(crate) fn encode_stale_copy(
        &self,
        stored_key: &str,
        fallback: &Fallback<V>,
        throttle: Duration,
    ) -> Result<Option<Encoded>> {
        let payload = self.encode_payload(stored_key, fallback.value.as_ref())?;
        let now = now_ms();
        let stale_until_ms = fallback.meta.stale_until_ms;
        let meta = Meta {
            created_at_ms: now,
            fresh_until_ms: now
                .saturating_add(throttle.as_millis() as u64)
                .min(stale_until_ms),
            stale_until_ms,
            stale_copy: true,
            ..fallback.meta
        };
        if meta.stale_until_ms <= now {
            return Ok(None);
        }
        let value = fallback.value.as_deref();
        Ok(Some(self.seal(
            stored_key,
            meta,
            fallback.tags.clone(),
            &payload,
            now,
            value,
        )))
    }

    fn encode_payload(&self, stored_key: &str, value: Option<&Arc<V>>) -> Result<Vec<u8>> {
        let inner = &*self.inner;
        let payload = match value {
            Some(v) => inner
                .format
                .codec
                .encode_for_key(v, stored_key)
                .map_err(|e| Error::Encode(e.to_string().into()))?,
            None => Vec::new(),
        };
        if payload.len() > inner.format.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: payload.len(),
                limit: inner.format.max_value_bytes,
            });
        }
        Ok(payload)
    }

    fn seal(
        &self,
        stored_key: &str,
        meta: Meta,
        tags: Option<Arc<TagStamp>>,
        payload: &[u8],
        now: u64,
        value: Option<&V>,
    ) -> Encoded {
        let weight = l1_weight(
            self.inner.format.weigher.as_ref(),
            value,
            payload.len(),
            tags.as_deref(),
        );
        let bytes = Bytes::from(envelope::encode_scoped(
            &meta,
            Some(envelope::key_fingerprint(stored_key)),
            tags.as_deref(),
            payload,
            self.inner.format.compression,
        ));
        Encoded {
            bytes,
            meta,
            now,
            tags,
            weight,
        }
    }

    /// Writes encoded bytes to L2, then mirrors the outcome in L1. With `then`, the write
    /// publishes it (after writing, in its round trip where the store can; also when an older
    /// write is refused): whether it went out, `None` when it was not tried (no `then`, or the
    /// write failed).
    pub(crate) async fn store_encoded(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        encoded: Encoded,
        mode: WriteMode,
        then: Option<Publication<'_>>,
    ) -> (WriteOutcome, Option<bool>) {
        let inner = &*self.inner;
        let ttl = inner.ttl.l2_ttl(&encoded.meta);
        // Reads and loads of the key in flight here started before this write: their values
        // are older.
        let first = inner.l1.supersede(stored_key);
        let epoch = inner.l1.write_epoch(stored_key);
        let bytes = encoded.bytes.clone();
        let version = encoded.meta.version;
        let remote = match (mode, then) {
            (WriteMode::Overwrite, None) => inner
                .remote
                .set(stored_key, bytes, ttl)
                .await
                .map(|()| (SetOutcome::Stored, None)),
            (WriteMode::Overwrite, Some(then)) => inner
                .remote
                .set_and_publish(stored_key, bytes, ttl, then)
                .await
                .map(|published| (SetOutcome::Stored, Some(published))),
            (WriteMode::IfNotOlder, None) => inner
                .remote
                .set_if_not_older(stored_key, bytes, ttl, version)
                .await
                .map(|outcome| (outcome, None)),
            (WriteMode::IfNotOlder, Some(then)) => inner
                .remote
                .set_if_not_older_and_publish(stored_key, bytes, ttl, version, then)
                .await
                .map(|(outcome, published)| (outcome, Some(published))),
        };
        let (outcome, published) = match remote {
            Ok((SetOutcome::Stored, published)) => (WriteOutcome::Stored, published),
            Ok((SetOutcome::RefusedOlder, published)) => {
                inner.l1.supersede(stored_key);
                inner.l1.remove(stored_key);
                return (WriteOutcome::RefusedOlder, published);
            }
            Err(_) => (WriteOutcome::LocalOnly, None),
        };
        let ours = if !self.l1_admits(stored_key) {
            None
        } else {
            inner.l1.insert_written(
                stored_key,
                value.cloned(),
                &encoded.meta,
                encoded.weight,
                inner.ttl.l1_lifetimes(&encoded.meta, encoded.now),
                epoch,
                encoded.tags.clone(),
            )
        };
        // Reads and loads that took their epoch after the first `supersede` may have read L2
        // before the write landed: withdraw their inserts from now on, and remove one that got
        // in before this (or the old entry, when our own insert was withdrawn by an
        // invalidation: the old value must not stay). A write that overlapped another own
        // write of the stripe keeps nothing: it may be a write of the same key that L2
        // applied in the other order.
        let last = inner.l1.supersede(stored_key);
        if last == first.wrapping_add(1) {
            inner.l1.remove_unless(stored_key, ours);
        } else {
            inner.l1.remove(stored_key);
        }
        (outcome, published)
    }

    /// Puts what was just written to L2 into L1, for the entry's L1 lifetimes — unless the key
    /// was invalidated since `epoch` (taken before the L2 write). The stored entry's deadline
    /// (see `LocalTier::insert`).
    pub(crate) fn mirror_in_l1(
        &self,
        stored_key: &str,
        value: Option<&Arc<V>>,
        encoded: &Encoded,
        epoch: u64,
    ) -> Option<std::time::Instant> {
        self.l1_insert(
            stored_key,
            value.cloned(),
            &encoded.meta,
            encoded.weight,
            self.inner.ttl.l1_lifetimes(&encoded.meta, encoded.now),
            epoch,
            encoded.tags.clone(),
        )
    }

    /// Whether L1 takes `stored_key` at all: not when L1 is only a hot-key shield and the key
    /// is not hot.
    fn l1_admits(&self, stored_key: &str) -> bool {
        let inner = &*self.inner;
        !inner.l1.hot_only() || inner.ops.hot_keys.is_hot(stored_key)
    }

    /// Puts an entry into L1 — unless L1 does not admit the key (see `l1_admits`).
    #[allow(clippy::too_many_arguments)]
    fn l1_insert(
        &self,
        stored_key: &str,
        value: Option<Arc<V>>,
        meta: &Meta,
        size: usize,
        lifetimes: (Duration, Duration),
        epoch: u64,
        tags: Option<Arc<TagStamp>>,
    ) -> Option<std::time::Instant> {
        if !self.l1_admits(stored_key) {
            return None;
        }
        self.inner
            .l1
            .insert(stored_key, value, meta, size, lifetimes, epoch, tags)
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// The L2 read of `stored_key`: from a random copy when the key is hot and copies are on,
    /// else from the primary.
    pub(crate) async fn read_remote(&self, stored_key: &str) -> Result<Option<Bytes>, StoreError> {
        let inner = &*self.inner;
        let copy = match inner.ops.replicas {
            Some(replicas) if inner.ops.hot_keys.is_hot(stored_key) => replicas.pick(stored_key),
            _ => None,
        };
        let Some((copy_key, life)) = copy else {
            return inner.remote.get(stored_key).await;
        };
        if let Some(bytes) = inner.remote.get(&copy_key).await? {
            inner.metrics.replica_reads_hit.increment(1);
            return Ok(Some(bytes));
        }
        inner.metrics.replica_reads_miss.increment(1);
        let primary = inner.remote.get(stored_key).await?;
        if let Some(bytes) = primary.as_ref() {
            let (remote, bytes) = (inner.remote.clone(), bytes.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = remote.set(&copy_key, bytes, life).await;
                });
            }
        }
        Ok(primary)
    }

    /// Deletes the copies of `stored_key` (after a write or an invalidation of the primary).
    pub(crate) async fn drop_replicas(&self, stored_key: &str) {
        self.inner.drop_replicas(stored_key).await;
    }
}

impl<V> Inner<V> {
    /// Deletes the copies of `stored_key` (a no-op without copies).
    pub(crate) async fn drop_replicas(&self, stored_key: &str) {
        if let Some(replicas) = self.ops.replicas {
            replicas.delete_all(&self.remote, stored_key).await;
        }
    }
}
