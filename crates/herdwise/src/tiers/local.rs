//! L1: the in-process tier, bounded by bytes, with a deadline per entry.
//!
//! The engine is `quick_cache` (S3-FIFO-like, sharded). It has no TTLs of its own, so each entry
//! carries its deadline and an expired entry is removed when a read finds it; until then it only
//! occupies weight that eviction reclaims. Values are `Arc`s: a hit clones a pointer, never the
//! value. An entry's weight is its key plus what the caller weighs the entry at (the value's
//! uncompressed payload length or the cache's weigher, plus its tags: see `cache::entries::l1_weight`)
//! plus a fixed overhead — never the compressed bytes, which L1 does not hold.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use quick_cache::sync::Cache as Engine;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::envelope::{Meta, TagStamp};
use crate::tiers::recovery::Recovery;

/// Smallest share of the byte bound per engine shard (but one shard for smaller bounds).
const MIN_SHARD_BYTES: u64 = 8 << 20;

/// The share of a shard its engine lets one entry take (quick_cache's hot allocation).
const HOT_SHARE: f64 = 0.97;

/// Engine shards for an L1 of `max_bytes` on `cores`: 4 per core, but none smaller than
/// [`MIN_SHARD_BYTES`] (one for a smaller bound), a power of two rounded *down* (the engine
/// rounds up, which would make shards smaller). Each shard refuses an entry heavier than
/// [`HOT_SHARE`] of it, so any L1 of 8 MiB or more admits entries up to 7.76 MiB (the engine's
/// own default, 4 per core, would refuse entries over 0.5 MiB of a 64 MiB L1 on 32 cores).
fn shard_count(max_bytes: u64, cores: usize) -> usize {
    let n = (cores.max(1) * 4).min((max_bytes / MIN_SHARD_BYTES).max(1) as usize);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Bookkeeping bytes charged to every entry on top of key and value.
const ENTRY_OVERHEAD: u64 = 96;

/// What L1 holds for a key: a value, or the knowledge that the origin has none.
#[derive(Debug)]
pub(crate) struct L1Entry<V> {
    /// `None` for a negative entry.
    pub value: Option<Arc<V>>,
    /// Gone after this (the entry's stale time, capped by the L1 cap).
    pub expires_at: Instant,
    /// Fresh until this; between it and `expires_at` the entry is a stale fallback only.
    pub fresh_until: Instant,
    /// The entry's envelope metadata (fresh/stale times in unix ms, flags) for stale-window
    /// decisions shared with L2.
    pub meta: Meta,
    /// The entry's weight (decoded value and tags, see `cache::entries::l1_weight`), charged against the
    /// byte bound.
    pub size: u32,
    /// The entry's tags, checked on every hit against what this instance knows of tag
    /// invalidations (`tags`).
    pub tags: Option<Arc<TagStamp>>,
    /// The demotion era it was stored in (see `recovery`): from an earlier era, it is
    /// unverified.
    pub era: u64,
}

/// How an L1 entry may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Serve it.
    Fresh,
    /// Past its fresh time: a fallback only.
    Stale,
    /// Stored before events were missed (an outage, a backplane gap): ask L2 before using it.
    Unverified,
}

impl<V> Clone for L1Entry<V> {
    fn clone(&self) -> Self {
        L1Entry {
            value: self.value.clone(),
            expires_at: self.expires_at,
            fresh_until: self.fresh_until,
            meta: self.meta,
            size: self.size,
            tags: self.tags.clone(),
            era: self.era,
        }
    }
}

#[derive(Clone)]
struct ByteWeighter;

impl<V> Weighter<Box<str>, L1Entry<V>> for ByteWeighter {
    fn weight(&self, key: &Box<str>, val: &L1Entry<V>) -> u64 {
        key.len() as u64 + u64::from(val.size) + ENTRY_OVERHEAD
    }
}

/// Counts evictions (space pressure), not removals or replacements.
#[derive(Clone)]
struct EvictionCounter(Counter);

impl<V> Lifecycle<Box<str>, L1Entry<V>> for EvictionCounter {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Box<str>, _val: L1Entry<V>) {
        self.0.increment(1);
    }
}

/// What L1 reports: evictions by cause, its weight and its entries.
#[derive(Clone)]
pub(crate) struct L1Metrics {
    pub evictions_size: Counter,
    pub evictions_expiry: Counter,
    pub bytes: metrics::Gauge,
    pub entries: metrics::Gauge,
}

impl L1Metrics {
    #[cfg(test)]
    pub fn noop() -> Self {
        L1Metrics {
            evictions_size: Counter::noop(),
            evictions_expiry: Counter::noop(),
            bytes: metrics::Gauge::noop(),
            entries: metrics::Gauge::noop(),
        }
    }

    fn update<V>(&self, engine: &EngineOf<V>) {
        self.bytes.set(engine.weight() as f64);
        self.entries.set(engine.len() as f64);
    }
}

type EngineOf<V> = Engine<Box<str>, L1Entry<V>, ByteWeighter, DefaultHashBuilder, EvictionCounter>;

/// Low bits of an epoch that count the starts of hearing (see [`LocalTier::epoch`]).
const HEARING_BITS: u32 = 8;
const HEARING_MASK: u64 = (1 << HEARING_BITS) - 1;

/// Stripes of the invalidation epochs.
const EPOCH_STRIPES: usize = 1024;

/// The byte-bounded in-process tier. A `max_bytes` of 0 disables it (every call is a no-op).
///
/// Invalidation epochs close the race between a read (or fill) that is about to put a value into
/// L1 and an invalidation that arrives meanwhile: every invalidation bumps its key's stripe
/// (a clear bumps them all) *before* removing the key, and an insert made under an older epoch is
/// withdrawn right after it is made. Whichever happens first, the old value does not stay.
/// This instance's own writes count too, for reads and loads only (`supersede`,
/// `write_epoch`): a read or load racing a write of the same instance cannot cover it.
pub(crate) struct LocalTier<V> {
    engine: Option<EngineOf<V>>,
    gauges: L1Metrics,
    stripes: Box<[AtomicU64]>,
    /// This instance's own writes, per stripe (see [`LocalTier::supersede`]): counted in the
    /// epoch of reads and loads, not in that of the writes themselves.
    writes: Box<[AtomicU64]>,
    cleared: AtomicU64,
    hasher: DefaultHashBuilder,
    recovery: Arc<Recovery>,
    /// A hot-key shield (L1 otherwise disabled): only hot keys are admitted.
    hot_only: bool,
}

impl<V> LocalTier<V> {
    pub fn new(max_bytes: u64, gauges: L1Metrics, recovery: Arc<Recovery>) -> Result<Self, String> {
        let stripes = (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect();
        let writes: Box<[AtomicU64]> = (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect();
        if max_bytes == 0 {
            return Ok(LocalTier {
                engine: None,
                gauges,
                stripes,
                writes,
                cleared: AtomicU64::new(0),
                hasher: DefaultHashBuilder::default(),
                recovery,
                hot_only: false,
            });
        }
        // A rough item estimate only sizes the tables; the weight is the real bound.
        let estimated_items = (max_bytes / 1024).clamp(16, 1 << 22) as usize;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = shard_count(max_bytes, cores);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated_items)
            .shards(shards)
            .hot_allocation(HOT_SHARE)
            .weight_capacity(max_bytes)
            .build()
            .map_err(|e| format!("L1 options: {e:?}"))?;
        let engine = Engine::with_options(
            options,
            ByteWeighter,
            DefaultHashBuilder::default(),
            EvictionCounter(gauges.evictions_size.clone()),
        );
        Ok(LocalTier {
            engine: Some(engine),
            gauges,
            stripes,
            writes,
            cleared: AtomicU64::new(0),
            hasher: DefaultHashBuilder::default(),
            recovery,
            hot_only: false,
        })
    }

    /// The heaviest entry L1 admits (0 when disabled): the engine's shard holds at most its
    /// hot share (97 %) of `l1_max_bytes / shards`, and refuses anything heavier.
    pub fn max_entry_weight(&self) -> u64 {
        self.engine
            .as_ref()
            .map_or(0, |e| (e.shard_capacity() as f64 * HOT_SHARE) as u64)
    }

    /// Whether an entry of `size` (as given to [`LocalTier::insert`]) under `key` is light
    /// enough for L1; else the heaviest entry's weight.
    pub fn fits(&self, key: &str, size: usize) -> Result<(), u64> {
        let limit = self.max_entry_weight();
        match key.len() as u64 + size as u64 + ENTRY_OVERHEAD <= limit {
            true => Ok(()),
            false => Err(limit),
        }
    }

    /// Admit only the keys the caller says are hot (see [`LocalTier::hot_only`]).
    pub fn shield_only(mut self) -> Self {
        self.hot_only = true;
        self
    }

    /// Whether this tier is a hot-key shield: callers insert hot keys only.
    pub fn hot_only(&self) -> bool {
        self.hot_only
    }

    /// The live (fresh or stale) entry for `key`, if any; an expired entry is removed and
    /// reported as absent.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<L1Entry<V>> {
        self.get_classified(key).map(|(entry, _)| entry)
    }

    /// [`LocalTier::get`], and how the entry may be used, with one clock read for both.
    pub fn get_classified(&self, key: &str) -> Option<(L1Entry<V>, Standing)> {
        let engine = self.engine.as_ref()?;
        let entry = engine.get(key)?;
        let now = Instant::now();
        if entry.expires_at > now {
            let standing = if entry.era != self.recovery.era() {
                Standing::Unverified
            } else if entry.fresh_until > now {
                Standing::Fresh
            } else {
                Standing::Stale
            };
            return Some((entry, standing));
        }
        let deadline = entry.expires_at;
        // Remove only the entry we saw expire, not a fresher one inserted meanwhile.
        if engine
            .remove_if(key, |e| e.expires_at == deadline)
            .is_some()
        {
            self.gauges.evictions_expiry.increment(1);
            self.gauges.update(engine);
        }
        None
    }

    fn stripe_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % EPOCH_STRIPES
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.stripes[self.stripe_index(key)]
    }

    /// The invalidation epoch of `key`: take it *before* the remote call whose result goes into
    /// L1, and pass it to [`LocalTier::insert`]. Its low [`HEARING_BITS`] count the times the
    /// instance started hearing invalidations again: a value read from L2 before such a start
    /// was read while deaf (its invalidation may have gone by unheard), and is stored
    /// unverified.
    pub fn epoch(&self, key: &str) -> u64 {
        let i = self.stripe_index(key);
        let writes = self.writes[i].load(Ordering::Acquire);
        self.epoch_of(i, writes)
    }

    /// The epoch of this instance's own write of `key`, for [`LocalTier::insert_written`]:
    /// as [`LocalTier::epoch`] without the other own writes, so that writes of keys that share
    /// a stripe do not withdraw each other's inserts.
    pub fn write_epoch(&self, key: &str) -> u64 {
        self.epoch_of(self.stripe_index(key), 0)
    }

    fn epoch_of(&self, stripe: usize, writes: u64) -> u64 {
        let invalidations = self
            .cleared
            .load(Ordering::Acquire)
            .wrapping_add(self.stripes[stripe].load(Ordering::Acquire))
            .wrapping_add(writes);
        (invalidations << HEARING_BITS) | (self.recovery.hearing_starts() & HEARING_MASK)
    }

    /// Removes `key` because another instance invalidated it: bumps its epoch first, so an
    /// insert racing with this one is withdrawn.
    pub fn invalidate(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
        self.remove(key);
    }

    /// Withdraws every read's or load's insert of `key` whose epoch was taken before now,
    /// without removing what is there: this instance writes `key` itself, and a read or load
    /// that took its epoch before must not put its older value over the write's in L1 (the
    /// write calls it before its L2 write and again after its own insert). Other writes'
    /// inserts are not withdrawn (they check [`LocalTier::write_epoch`]); reads and loads of
    /// the stripe's other keys in flight are: each write withdraws about one in 1 024 of the
    /// reads and loads in flight at each of its two calls (with 1 000 writes a second and
    /// reads of 1 ms, one in 500), which only means the next read of such a key asks L2 again.
    /// The stripe's count of own writes after this one: a write whose two calls are not one
    /// apart overlapped another own write of the stripe (maybe of the same key, whose order in
    /// L2 this instance cannot know).
    pub fn supersede(&self, key: &str) -> u64 {
        self.writes[self.stripe_index(key)]
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1)
    }

    /// Stores an entry that lives for `live` and is fresh for the first `fresh` of it (nothing is
    /// stored for a zero lifetime) — unless `key` was invalidated since `epoch` was taken.
    /// The entry's deadline when it was stored (it may still be refused by the engine as too
    /// heavy, see [`LocalTier::fits`]); `None` when withdrawn or not stored.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        key: &str,
        value: Option<Arc<V>>,
        meta: &Meta,
        size: usize,
        lifetimes: (Duration, Duration),
        epoch: u64,
        tags: Option<Arc<TagStamp>>,
    ) -> Option<Instant> {
        self.insert_under(key, value, meta, size, lifetimes, epoch, tags, Self::epoch)
    }

    /// [`LocalTier::insert`] for this instance's own write of `key`, with `epoch` from
    /// [`LocalTier::write_epoch`]: withdrawn by invalidations, not by other own writes.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_written(
        &self,
        key: &str,
        value: Option<Arc<V>>,
        meta: &Meta,
        size: usize,
        lifetimes: (Duration, Duration),
        epoch: u64,
        tags: Option<Arc<TagStamp>>,
    ) -> Option<Instant> {
        self.insert_under(
            key,
            value,
            meta,
            size,
            lifetimes,
            epoch,
            tags,
            Self::write_epoch,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_under(
        &self,
        key: &str,
        value: Option<Arc<V>>,
        meta: &Meta,
        size: usize,
        (live, fresh): (Duration, Duration),
        epoch: u64,
        tags: Option<Arc<TagStamp>>,
        epoch_now: fn(&Self, &str) -> u64,
    ) -> Option<Instant> {
        let engine = self.engine.as_ref()?;
        // The era before the epoch check: a flip from deaf to hearing after it shows in the
        // epoch.
        let mut era = self.recovery.insert_era();
        let current = epoch_now(self, key);
        if current >> HEARING_BITS != epoch >> HEARING_BITS {
            return None; // invalidated since
        }
        if current & HEARING_MASK != epoch & HEARING_MASK {
            era = self.recovery.deaf_era();
        }
        if live.is_zero() {
            engine.remove(key);
            return None;
        }
        let now = Instant::now();
        let entry = L1Entry {
            value,
            expires_at: now + live,
            fresh_until: now + fresh.min(live),
            meta: *meta,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            tags,
            era,
        };
        let expires_at = entry.expires_at;
        engine.insert(key.into(), entry);
        // An invalidation between the check above and the insert: withdraw what we put in.
        if epoch_now(self, key) >> HEARING_BITS != epoch >> HEARING_BITS {
            engine.remove_if(key, |e| e.expires_at == expires_at);
            self.gauges.update(engine);
            return None;
        }
        self.gauges.update(engine);
        Some(expires_at)
    }

    /// Removes what is under `key` unless it is the entry stored with deadline `ours`
    /// (`None`: whatever is there).
    pub fn remove_unless(&self, key: &str, ours: Option<Instant>) {
        if let Some(engine) = self.engine.as_ref() {
            if engine
                .remove_if(key, |e| Some(e.expires_at) != ours)
                .is_some()
            {
                self.gauges.update(engine);
            }
        }
    }

    /// Keeps the unverified entry under `key` (if it is still there and still unverified) as a
    /// flagged stale copy of the current era, served for `fresh_for` at most: L2 lost the key
    /// after an outage, and re-asking it on every read would only add load. `epoch` is taken
    /// before L2 was asked, so an invalidation meanwhile wins.
    pub fn keep_unverified(&self, key: &str, fresh_for: Duration, epoch: u64) {
        let Some(engine) = self.engine.as_ref() else {
            return;
        };
        let era = self.recovery.era();
        let Some(entry) = engine.get(key).filter(|e| e.era != era) else {
            return;
        };
        let now = Instant::now();
        let live = entry.expires_at.saturating_duration_since(now);
        let meta = Meta {
            stale_copy: true,
            ..entry.meta
        };
        let size = entry.size as usize;
        self.insert(
            key,
            entry.value,
            &meta,
            size,
            (live, fresh_for),
            epoch,
            entry.tags,
        );
    }

    /// Removes the entry under `key` if it is unverified (stored before the last demotion):
    /// L2 says it is gone, and nothing may fall back on it.
    pub fn remove_unverified(&self, key: &str) {
        if let Some(engine) = self.engine.as_ref() {
            let era = self.recovery.era();
            if engine.remove_if(key, |e| e.era != era).is_some() {
                self.gauges.update(engine);
            }
        }
    }

    /// Removes `entry` from under `key`, but not a newer entry inserted there meanwhile.
    pub fn remove_entry(&self, key: &str, entry: &L1Entry<V>) {
        if let Some(engine) = self.engine.as_ref() {
            let deadline = entry.expires_at;
            if engine
                .remove_if(key, |e| e.expires_at == deadline)
                .is_some()
            {
                self.gauges.update(engine);
            }
        }
    }

    pub fn remove(&self, key: &str) {
        if let Some(engine) = self.engine.as_ref() {
            if engine.remove(key).is_some() {
                self.gauges.update(engine);
            }
        }
    }

    /// Drops every entry whose key starts with `prefix` (a global epoch bump withdraws inserts
    /// racing with it).
    pub fn remove_prefix(&self, prefix: &str) {
        self.cleared.fetch_add(1, Ordering::AcqRel);
        if let Some(engine) = self.engine.as_ref() {
            engine.retain(|key, _| !key.starts_with(prefix));
            self.gauges.update(engine);
        }
    }

    /// Drops every entry (events were missed: nothing here can be trusted any more).
    pub fn clear(&self) {
        self.cleared.fetch_add(1, Ordering::AcqRel);
        if let Some(engine) = self.engine.as_ref() {
            engine.clear();
            self.gauges.bytes.set(0.0);
            self.gauges.entries.set(0.0);
        }
    }

    /// Current weight in bytes (0 when disabled).
    pub fn weight(&self) -> u64 {
        self.engine.as_ref().map_or(0, |e| e.weight())
    }

    /// Configured bound in bytes (0 when disabled).
    pub fn capacity(&self) -> u64 {
        self.engine.as_ref().map_or(0, |e| e.capacity())
    }

    /// Number of entries (expired ones included until they are read or evicted).
    pub fn len(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_never_under_8_mib_so_large_entries_fit() {
        for cores in [1, 2, 3, 8, 17, 32, 64, 128] {
            for mib in [1u64, 7, 8, 9, 15, 16, 24, 40, 64, 100, 520, 528, 1024, 4096] {
                let bytes = mib << 20;
                let shards = shard_count(bytes, cores) as u64;
                assert!(
                    shards.is_power_of_two(),
                    "{cores} cores, {mib} MiB: {shards}"
                );
                assert!(shards <= (cores as u64 * 4).max(1));
                let shard = bytes.div_ceil(shards);
                if bytes >= MIN_SHARD_BYTES {
                    assert!(
                        shard >= MIN_SHARD_BYTES,
                        "{cores} cores, {mib} MiB: {shard}"
                    );
                    let largest = (shard as f64 * HOT_SHARE) as u64;
                    assert!(largest >= (4 << 20) + 512 + ENTRY_OVERHEAD);
                } else {
                    assert_eq!(shards, 1);
                }
            }
        }
        // The engine keeps the count it is given (a power of two, shards of >= 8 192 items).
        let tier = LocalTier::<u8>::new(
            24 << 20,
            L1Metrics::noop(),
            Arc::new(Recovery::new(Duration::from_secs(1))),
        )
        .unwrap();
        assert!(tier.max_entry_weight() >= (8 << 20) * 97 / 100 - 1);
        assert!(tier.fits("k", 7 << 20).is_ok());
        assert_eq!(
            tier.fits("k", tier.max_entry_weight() as usize),
            Err(tier.max_entry_weight()),
            "key and overhead count"
        );
    }

    fn meta() -> Meta {
        Meta {
            created_at_ms: 0,
            fresh_until_ms: 0,
            stale_until_ms: 0,
            version: 0,
            load_duration: Duration::ZERO,
            negative: false,
            stale_copy: false,
            codec_id: 1,
        }
    }

    /// A 1 MiB tier and the recovery state it reads.
    fn tier_with_recovery() -> (LocalTier<Vec<u8>>, Arc<Recovery>) {
        let recovery = Arc::new(Recovery::new(Duration::from_secs(1)));
        let l1 = LocalTier::new(1 << 20, L1Metrics::noop(), recovery.clone()).unwrap();
        (l1, recovery)
    }

    fn tier(bytes: u64) -> LocalTier<Vec<u8>> {
        let recovery = Arc::new(Recovery::new(Duration::from_secs(1)));
        LocalTier::new(bytes, L1Metrics::noop(), recovery).unwrap()
    }

    #[test]
    fn entries_expire_at_their_deadline() {
        let l1 = tier(1 << 20);
        let ms30 = Duration::from_millis(30);
        l1.insert(
            "a",
            Some(Arc::new(vec![1])),
            &meta(),
            1,
            (ms30, ms30),
            l1.epoch("a"),
            None,
        );
        assert!(l1.get("a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(l1.get("a").is_none());
        assert_eq!(l1.len(), 0, "an expired entry is removed when read");
    }

    #[test]
    fn weight_never_exceeds_the_bound() {
        let l1 = tier(256 * 1024);
        for i in 0..2_000 {
            let size = 1_000 + (i % 7) * 3_000;
            l1.insert(
                &format!("k{i}"),
                Some(Arc::new(vec![0u8; size])),
                &meta(),
                size,
                (Duration::from_secs(60), Duration::from_secs(60)),
                l1.epoch(&format!("k{i}")),
                None,
            );
            assert!(l1.weight() <= l1.capacity(), "after insert {i}");
        }
        assert!(l1.len() > 10);
    }

    #[test]
    fn a_demotion_leaves_entries_unverified_until_stored_again() {
        let (l1, recovery) = tier_with_recovery();
        let s = Duration::from_secs(10);
        let put = |k: &str| l1.insert(k, None, &meta(), 1, (s, s), l1.epoch(k), None);
        put("a");
        assert_eq!(l1.get_classified("a").unwrap().1, Standing::Fresh);
        recovery.demote();
        assert_eq!(l1.get_classified("a").unwrap().1, Standing::Unverified);
        put("a");
        assert_eq!(l1.get_classified("a").unwrap().1, Standing::Fresh);
    }

    #[test]
    fn disabled_tier_stores_nothing() {
        let l1 = tier(0);
        let s = Duration::from_secs(1);
        l1.insert("a", Some(Arc::new(vec![1])), &meta(), 1, (s, s), 0, None);
        assert!(l1.get("a").is_none());
    }

    #[test]
    fn a_value_read_before_hearing_started_is_stored_unverified() {
        let (l1, recovery) = tier_with_recovery();
        let s = Duration::from_secs(10);
        let put = |k: &str, epoch| l1.insert(k, None, &meta(), 1, (s, s), epoch, None);
        recovery.set_deaf(true);
        let read_while_deaf = l1.epoch("a");
        recovery.set_deaf(false); // the subscription is confirmed while the read is in flight
        let read_while_hearing = l1.epoch("b");
        put("a", read_while_deaf);
        put("b", read_while_hearing);
        assert_eq!(l1.get_classified("a").unwrap().1, Standing::Unverified);
        assert_eq!(l1.get_classified("b").unwrap().1, Standing::Fresh);
    }

    #[test]
    fn each_subscription_is_an_ear_and_a_value_read_while_either_was_deaf_is_unverified() {
        use crate::tiers::recovery::KEYSPACE;
        let (l1, recovery) = tier_with_recovery();
        let s = Duration::from_secs(10);
        let put = |k: &str, epoch| l1.insert(k, None, &meta(), 1, (s, s), epoch, None);
        // The backplane hears; the keyspace subscription is down, then comes back while a
        // read is in flight: what that read brings back is not vouched for.
        recovery.set_deaf_to(KEYSPACE, true);
        put("stored-while-deaf", l1.epoch("stored-while-deaf"));
        let read_while_deaf = l1.epoch("a");
        recovery.set_deaf_to(KEYSPACE, false);
        put("a", read_while_deaf);
        put("b", l1.epoch("b"));
        assert_eq!(
            l1.get_classified("stored-while-deaf").unwrap().1,
            Standing::Unverified
        );
        assert_eq!(l1.get_classified("a").unwrap().1, Standing::Unverified);
        assert_eq!(l1.get_classified("b").unwrap().1, Standing::Fresh);
        // Deaf while any ear is: the backplane back does not make the keyspace hear.
        recovery.set_deaf_to(KEYSPACE, true);
        recovery.set_deaf(true);
        recovery.set_deaf(false);
        put("c", l1.epoch("c"));
        assert_eq!(l1.get_classified("c").unwrap().1, Standing::Unverified);
        // A listener that fell behind: reads in flight store unverified.
        recovery.set_deaf_to(KEYSPACE, false);
        let in_flight = l1.epoch("d");
        recovery.restart_hearing();
        put("d", in_flight);
        assert_eq!(l1.get_classified("d").unwrap().1, Standing::Unverified);
    }

    #[test]
    fn an_insert_under_an_older_epoch_does_not_stay() {
        let l1 = tier(1 << 20);
        let s = Duration::from_secs(10);
        let before = l1.epoch("k");
        l1.invalidate("k"); // arrives while the read was in flight
        l1.insert(
            "k",
            Some(Arc::new(vec![1])),
            &meta(),
            1,
            (s, s),
            before,
            None,
        );
        assert!(l1.get("k").is_none());
        let before = l1.epoch("k");
        l1.clear();
        l1.insert(
            "k",
            Some(Arc::new(vec![1])),
            &meta(),
            1,
            (s, s),
            before,
            None,
        );
        assert!(l1.get("k").is_none());
        l1.insert(
            "k",
            Some(Arc::new(vec![1])),
            &meta(),
            1,
            (s, s),
            l1.epoch("k"),
            None,
        );
        assert!(l1.get("k").is_some());
    }
}
