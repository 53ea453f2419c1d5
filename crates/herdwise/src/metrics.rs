//! Every metric Herdwise emits, by name, in one place (through the `metrics` facade).
//!
//! Every series carries a `cache` label: the cache's namespace. Label values are bounded:
//! each label below lists all of its values. Names follow Prometheus conventions (base units:
//! seconds and bytes; `_total` for counters), and the read and load families follow
//! Micrometer's `cache_gets_total{result=...}`, so hit ratios are written as users know them:
//! `sum(rate(herdwise_cache_gets_total{result=~"l1_hit|l2_hit"}[5m])) /
//! sum(rate(herdwise_cache_gets_total[5m]))` (the `result` values are Herdwise's: `l1_hit` and
//! `l2_hit` where Micrometer has one `hit`). Origin load is
//! `rate(herdwise_cache_loads_total{result!="shed"}[1m])` (loader calls per second), plus, with
//! the verifier on, its check loads:
//! `rate(herdwise_verify_checks_total{outcome!="skipped"}[1m])` (they bypass the read path).
//!
//! **Install your recorder (Prometheus exporter, ...) before building caches** — with the
//! `prometheus` feature, [`crate::prometheus`] does it in one call. Handles are registered
//! once, when a cache is built, so the hot path only touches memory of its own; a cache built
//! before the recorder was installed keeps recording into nothing, for good. `build()` logs a
//! warning (once per process) when it finds no recorder installed — judged by the recorder in
//! scope being the `metrics` crate's no-op one (a zero-sized type; a zero-sized recorder of
//! your own would be taken for it, and only cost you that warning).
//!
//! **The hit path.** Reads answered by L1 are counted in per-thread stripes (no counter shared
//! between cores is written per hit) and handed to the recorder at least once a second (by a
//! `herdwise-metrics` thread, started with the first cache), at every 256th hit of a stripe,
//! and on [`flush`]; the Prometheus helpers flush before every render. Their latencies are
//! sampled: one L1 hit in 64 is timed (the `_count` of `herdwise_cache_get_duration_seconds`
//! for `l1_hit` is therefore about 1/64 of the hits; the gets counter has them all). Every
//! other read, load, lease wait and L2 call is timed.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `herdwise_cache_gets_total` | counter | `result` = `l1_hit`/`l2_hit`/`miss`/`stale`/`negative`/`error`/`cancelled` | reads (`get`, `get_or_load*`, `fetch*`), each counted once by how it ended: a fresh value from L1 or L2; `miss`: the value came from the origin (this read's load, or one it waited for); `stale`: a stale value was served (reason in `herdwise_stale_served_total`); `negative`: a cached "not at the origin"; `error`: the read returned an error; `cancelled`: the read was dropped past L1 before it ended (a caller's timeout) |
//! | `herdwise_cache_get_duration_seconds` | histogram | `result` (as above) | how long reads took, by result (`l1_hit`/`negative` sampled 1 in 64 when answered by L1) |
//! | `herdwise_cache_loads_total` | counter | `result` = `success`/`error`/`panic`/`timeout`/`shed` | origin loads by outcome (`success` includes "not at the origin"); `shed`: refused at the origin limit with `Error::Overloaded`, the loader not called |
//! | `herdwise_cache_load_duration_seconds` | histogram | `result` = `success`/`error`/`panic`/`timeout` | loader call time |
//! | `herdwise_cache_evictions_total` | counter | `cause` = `size`/`expiry` | L1 entries evicted for space, or removed when found expired |
//! | `herdwise_cache_l1_bytes` | gauge | | L1 weight in bytes |
//! | `herdwise_cache_l1_entries` | gauge | | L1 entries (expired ones included until read or evicted) |
//! | `herdwise_l2_calls_total` | counter | `op` = `get`/`set`/`delete`/`lease`/`publish`/`tags`/`scan`/`admin`, `outcome` = `ok`/`error`/`timeout`/`rejected` | remote-tier calls (`rejected`: not made, the breaker was open). `get`: value reads; `set`: value writes and fills (a write's event too, where it shares the write's round trip); `delete`: deletes (likewise); `lease`: leases and fences; `publish`: invalidation events sent on their own; `tags`: tag clocks and marks; `scan`: prefix walks; `admin`: generation and server checks |
//! | `herdwise_l2_call_duration_seconds` | histogram | `op` (as above) | remote-tier call time (calls made, whatever their outcome) |
//! | `herdwise_lease_wait_duration_seconds` | histogram | `outcome` = `filled`/`took_over`/`timeout`/`remote_down` | time spent waiting for another instance's fill under its lease (`took_over`: its holder gave it up and this read took it; `timeout`: gave up waiting and loaded itself) |
//! | `herdwise_stale_served_total` | counter | `reason` = `error`/`swr`/`soft_timeout`/`recovery` | stale values served: the origin failed (stale-if-error), a refresh is under way (stale-while-revalidate), the load passed its soft timeout, or the remote tier lost the key in a recovery window |
//! | `herdwise_coalesced_waits_total` | counter | | reads that waited for another read's load in this process |
//! | `herdwise_refreshes_total` | counter | `trigger` = `swr`/`xfetch`/`ahead` | background refreshes started (at most one runs per key across instances) |
//! | `herdwise_flight_bypass_total` | counter | | loads not coalesced because the in-flight map was full |
//! | `herdwise_negative_stored_total` | counter | | negative entries written |
//! | `herdwise_corrupt_entries_total` | counter | | stored bytes that failed to decode (deleted, treated as misses) |
//! | `herdwise_scope_violations_total` | counter | `reason` = `foreign`/`unscoped` | entries read under a key they were not written for (`foreign`: their key fingerprint names another key; `unscoped`: they carry none — written by an older version or another writer); treated as misses, `foreign` ones deleted (`unscoped` ones are left for the fill to replace: deleting them would make old and new builds erase each other's entries during a rolling upgrade) |
//! | `herdwise_uncacheable_values_total` | counter | `reason` = `too_large`/`encode` | loaded values returned but not cached in L2 (too large ones are kept in this instance's L1 for `oversized_in_l1`) |
//! | `herdwise_leases_total` | counter | `outcome` = `acquired`/`held`/`takeover` | lease attempts after an L2 miss (`held`: another instance loads; `takeover`: a waiter took a lease its holder gave up) |
//! | `herdwise_lease_wait_timeouts_total` | counter | | waiters that gave up on another instance's fill and loaded themselves |
//! | `herdwise_fills_refused_total` | counter | `reason` = `lease_lost`/`older` | fills not written: the lease was voided by a write/invalidation (or expired), or L2 holds a newer version |
//! | `herdwise_backplane_received_total` | counter | | invalidations received from other instances |
//! | `herdwise_backplane_lag_seconds` | histogram | | from an invalidation's announcement (the sender's clock) to its arrival here (this instance's clock; clock skew between hosts adds to it, negative values count as 0) |
//! | `herdwise_backplane_resets_total` | counter | `reason` = `gap`/`resubscribed`/`lagged`/`tag_events_missed`/`subscription_lost` | L1 demoted (every entry re-checked against L2 before use) because invalidation events (or keyspace notifications) may have been missed |
//! | `herdwise_keyspace_events_total` | counter | | changes to the namespace's stored keys heard through Redis keyspace notifications (`keyspace_notifications`), each dropping the key from L1 |
//! | `herdwise_tag_invalidations_total` | counter | | `invalidate_tag` calls |
//! | `herdwise_tag_store_checks_total` | counter | | tagged entries checked against the store's marks (one `MGET`) because local knowledge could not decide |
//! | `herdwise_tag_invalidated_reads_total` | counter | | entries found in L1 or L2 but not served because one of their tags was invalidated after them |
//! | `herdwise_invalidation_retries_total` | counter | `outcome` = `queued`/`succeeded` | invalidations that failed against L2 and were queued for retry, and those a retry completed |
//! | `herdwise_invalidations_dead_lettered_total` | counter | | invalidations given up (queue full, or every retry failed) |
//! | `herdwise_retry_queue_depth` | gauge | | invalidations waiting in the retry queue |
//! | `herdwise_breaker_state` | gauge | `node` (sharded stores only: `0`..`n-1`) | circuit breaker on the remote tier: 0 closed, 1 open, 2 half-open |
//! | `herdwise_breaker_transitions_total` | counter | `to` = `closed`/`open`/`half_open` | breaker state changes |
//! | `herdwise_origin_limited_total` | counter | `outcome` = `stale`/`waited`/`overloaded` | loads that found the origin at its concurrency limit: answered stale, waited for a slot, or shed with `Error::Overloaded` |
//! | `herdwise_origin_limit` | gauge | | the learned origin limit: loader calls allowed at once (adaptive limit only; held lower while the remote tier is unavailable) |
//! | `herdwise_batch_loads_total` | counter | | batch-loader calls (`get_or_load_many`, `fetch_many`); each key of a call also counts as one load in `herdwise_cache_loads_total`, whose duration for a batch key includes the wait for its call |
//! | `herdwise_batch_load_keys_total` | counter | | keys asked of batch-loader calls |
//! | `herdwise_warmed_total` | counter | `outcome` = `loaded`/`cached`/`absent`/`failed`, `trigger` = `warm`/`recovery` | keys warmed: loaded from the origin, already cached, not at the origin, or failed |
//! | `herdwise_replica_reads_total` | counter | `outcome` = `hit`/`miss` | reads of a hot key's L2 copy (`miss`: the copy was missing, the primary was read and the copy rewritten) |
//! | `herdwise_hottest_key_share` | gauge | | the hottest key's share of recent reads (sampled; refreshed every ~65k reads) |
//! | `herdwise_hot_key_reads` | gauge | `rank` = `1`..`k` | estimated recent reads of the k hottest keys, by rank (names: `Cache::hot_keys`) |
//! | `herdwise_verify_checks_total` | counter | `outcome` = `match`/`mismatch`/`resolved`/`error`/`skipped` | the verifier's checks of sampled reads against the origin (`mismatch`: confirmed after `confirm_after`; `resolved`: a first mismatch the cache had fixed by then; `skipped`: dropped — queue full, budget spent, origin at its limit) |
//! | `herdwise_verify_drift_ratio` | gauge | | mismatches among the last 1,000 conclusive checks |
//! | `herdwise_verify_mismatch_age_seconds` | histogram | | age of the cached entries found to differ from the origin |
//! | `herdwise_verify_repairs_total` | counter | | mismatched keys invalidated by the verifier (with `repair`) |
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use parking_lot::Mutex;

/// The label every series carries: the cache's namespace.
pub const CACHE_LABEL: &str = "cache";

/// Reads, by how they ended.
pub const GETS: &str = "herdwise_cache_gets_total";
/// Read latency, by result.
pub const GET_DURATION: &str = "herdwise_cache_get_duration_seconds";
/// Origin loads, by outcome.
pub const LOADS: &str = "herdwise_cache_loads_total";
/// Loader call time, by outcome.
pub const LOAD_DURATION: &str = "herdwise_cache_load_duration_seconds";
/// L1 evictions and expiries.
pub const EVICTIONS: &str = "herdwise_cache_evictions_total";
/// L1 weight in bytes.
pub const L1_BYTES: &str = "herdwise_cache_l1_bytes";
/// L1 entries.
pub const L1_ENTRIES: &str = "herdwise_cache_l1_entries";
/// Remote-tier calls, by operation and outcome.
pub const L2_CALLS: &str = "herdwise_l2_calls_total";
/// Remote-tier call time, by operation.
pub const L2_CALL_DURATION: &str = "herdwise_l2_call_duration_seconds";
/// Time waiting for another instance's fill.
pub const LEASE_WAIT_DURATION: &str = "herdwise_lease_wait_duration_seconds";
/// Background refreshes started.
pub const REFRESHES: &str = "herdwise_refreshes_total";
/// Stale values served.
pub const STALE_SERVED: &str = "herdwise_stale_served_total";
/// Callers that waited on another caller's load.
pub const COALESCED_WAITS: &str = "herdwise_coalesced_waits_total";
/// Loads not coalesced because the in-flight map was full.
pub const FLIGHT_BYPASS: &str = "herdwise_flight_bypass_total";
/// Negative entries written.
pub const NEGATIVE_STORED: &str = "herdwise_negative_stored_total";
/// Entries whose bytes failed to decode.
pub const CORRUPT_ENTRIES: &str = "herdwise_corrupt_entries_total";
/// Entries read under a key they were not written for.
pub const SCOPE_VIOLATIONS: &str = "herdwise_scope_violations_total";
/// Loaded values that were returned but could not be cached.
pub const UNCACHEABLE_VALUES: &str = "herdwise_uncacheable_values_total";
/// Lease attempts after an L2 miss.
pub const LEASES: &str = "herdwise_leases_total";
/// Waiters that stopped waiting for another instance's fill.
pub const LEASE_WAIT_TIMEOUTS: &str = "herdwise_lease_wait_timeouts_total";
/// Fills that were not written.
pub const FILLS_REFUSED: &str = "herdwise_fills_refused_total";
/// Invalidations received from other instances.
pub const BACKPLANE_RECEIVED: &str = "herdwise_backplane_received_total";
/// Changes to the namespace's keys heard through keyspace notifications.
pub const KEYSPACE_EVENTS: &str = "herdwise_keyspace_events_total";
/// From an invalidation's announcement to its arrival.
pub const BACKPLANE_LAG: &str = "herdwise_backplane_lag_seconds";
/// L1 demotions because events may have been missed.
pub const BACKPLANE_RESETS: &str = "herdwise_backplane_resets_total";
/// `invalidate_tag` calls.
pub const TAG_INVALIDATIONS: &str = "herdwise_tag_invalidations_total";
/// Tagged entries checked against the store.
pub const TAG_STORE_CHECKS: &str = "herdwise_tag_store_checks_total";
/// Entries not served because a tag of theirs was invalidated.
pub const TAG_INVALIDATED_READS: &str = "herdwise_tag_invalidated_reads_total";
/// Failed invalidations queued for retry, and completed retries.
pub const INVALIDATION_RETRIES: &str = "herdwise_invalidation_retries_total";
/// Invalidations given up.
pub const INVALIDATIONS_DEAD_LETTERED: &str = "herdwise_invalidations_dead_lettered_total";
/// Invalidations waiting in the retry queue.
pub const RETRY_QUEUE_DEPTH: &str = "herdwise_retry_queue_depth";
/// Circuit breaker state (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "herdwise_breaker_state";
/// Breaker state changes.
pub const BREAKER_TRANSITIONS: &str = "herdwise_breaker_transitions_total";
/// Loads that found the origin at its concurrency limit.
pub const ORIGIN_LIMITED: &str = "herdwise_origin_limited_total";
/// The learned origin limit.
pub const ORIGIN_LIMIT: &str = "herdwise_origin_limit";
/// Batch-loader calls (`get_or_load_many`, `fetch_many`).
pub const BATCH_LOADS: &str = "herdwise_batch_loads_total";
/// Keys asked of batch-loader calls.
pub const BATCH_LOAD_KEYS: &str = "herdwise_batch_load_keys_total";
/// Keys warmed.
pub const WARMED: &str = "herdwise_warmed_total";
/// Reads of a hot key's L2 copies.
pub const REPLICA_READS: &str = "herdwise_replica_reads_total";
/// The hottest key's share of recent reads.
pub const HOTTEST_KEY_SHARE: &str = "herdwise_hottest_key_share";
/// Estimated recent reads of the hottest keys, by rank.
pub const HOT_KEY_READS: &str = "herdwise_hot_key_reads";

/// The verifier's checks, by outcome.
pub const VERIFY_CHECKS: &str = "herdwise_verify_checks_total";
/// Mismatches among the last conclusive checks.
pub const VERIFY_DRIFT: &str = "herdwise_verify_drift_ratio";
/// Age of the cached entries found to differ from the origin.
pub const VERIFY_MISMATCH_AGE: &str = "herdwise_verify_mismatch_age_seconds";
/// Mismatched keys the verifier invalidated.
pub const VERIFY_REPAIRS: &str = "herdwise_verify_repairs_total";

/// Every metric name Herdwise emits (the table above, in order).
pub const ALL: &[&str] = &[
    GETS,
    GET_DURATION,
    LOADS,
    LOAD_DURATION,
    EVICTIONS,
    L1_BYTES,
    L1_ENTRIES,
    L2_CALLS,
    L2_CALL_DURATION,
    LEASE_WAIT_DURATION,
    STALE_SERVED,
    COALESCED_WAITS,
    REFRESHES,
    FLIGHT_BYPASS,
    NEGATIVE_STORED,
    CORRUPT_ENTRIES,
    SCOPE_VIOLATIONS,
    UNCACHEABLE_VALUES,
    LEASES,
    LEASE_WAIT_TIMEOUTS,
    FILLS_REFUSED,
    BACKPLANE_RECEIVED,
    BACKPLANE_LAG,
    BACKPLANE_RESETS,
    KEYSPACE_EVENTS,
    TAG_INVALIDATIONS,
    TAG_STORE_CHECKS,
    TAG_INVALIDATED_READS,
    INVALIDATION_RETRIES,
    INVALIDATIONS_DEAD_LETTERED,
    RETRY_QUEUE_DEPTH,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    ORIGIN_LIMITED,
    ORIGIN_LIMIT,
    BATCH_LOADS,
    BATCH_LOAD_KEYS,
    WARMED,
    REPLICA_READS,
    HOTTEST_KEY_SHARE,
    HOT_KEY_READS,
    VERIFY_CHECKS,
    VERIFY_DRIFT,
    VERIFY_MISMATCH_AGE,
    VERIFY_REPAIRS,
];

/// Hands every cache's striped hit counts to the recorder now (they otherwise reach it within
/// a second). Call it before rendering metrics yourself; the [`crate::prometheus`] helpers do.
///
/// ```
/// herdwise::metrics::flush();
/// ```
pub fn flush() {
    let live: Vec<Arc<Striped>> = {
        let mut registry = REGISTRY.lock();
        registry.retain(|w| w.strong_count() > 0);
        registry.iter().filter_map(Weak::upgrade).collect()
    };
    for striped in live {
        striped.flush_now();
    }
}

/// Whether the no-recorder warning was logged already.
static WARNED_NO_RECORDER: AtomicBool = AtomicBool::new(false);

/// Logs once per process that a cache is being built with no metrics recorder in scope (its
/// handles would record nothing even after one is installed).
fn warn_if_no_recorder(namespace: &str) {
    // The facade's fallback is a zero-sized no-op recorder; real recorders hold state.
    let noop = metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) == 0);
    if noop && !WARNED_NO_RECORDER.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            namespace,
            "no metrics recorder is installed: this cache's metrics (and those of every cache \
             built before one is) go nowhere; install the recorder before building caches"
        );
    }
}

/// Tells the recorder each metric's unit and meaning (the `# HELP` lines of a scrape).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, help) in [
        (GETS, "Reads, by how they ended (result)."),
        (LOADS, "Origin loads, by outcome (result)."),
        (
            EVICTIONS,
            "L1 entries evicted for space or removed when expired (cause).",
        ),
        (L2_CALLS, "Remote-tier calls, by operation and outcome."),
        (STALE_SERVED, "Stale values served, by reason."),
        (
            COALESCED_WAITS,
            "Reads that waited for another read's load in this process.",
        ),
        (REFRESHES, "Background refreshes started, by trigger."),
        (
            FLIGHT_BYPASS,
            "Loads not coalesced because the in-flight map was full.",
        ),
        (NEGATIVE_STORED, "Negative entries written."),
        (CORRUPT_ENTRIES, "Stored bytes that failed to decode."),
        (
            SCOPE_VIOLATIONS,
            "Entries read under a key they were not written for.",
        ),
        (UNCACHEABLE_VALUES, "Loaded values returned but not cached."),
        (LEASES, "Lease attempts after an L2 miss, by outcome."),
        (
            LEASE_WAIT_TIMEOUTS,
            "Waiters that gave up on another instance's fill.",
        ),
        (FILLS_REFUSED, "Fills not written, by reason."),
        (
            BACKPLANE_RECEIVED,
            "Invalidations received from other instances.",
        ),
        (
            KEYSPACE_EVENTS,
            "Changes to the namespace's keys heard through keyspace notifications.",
        ),
        (
            BACKPLANE_RESETS,
            "L1 demotions because invalidation events may have been missed.",
        ),
        (TAG_INVALIDATIONS, "invalidate_tag calls."),
        (
            TAG_STORE_CHECKS,
            "Tagged entries checked against the store's marks.",
        ),
        (
            TAG_INVALIDATED_READS,
            "Entries not served because a tag of theirs was invalidated.",
        ),
        (
            INVALIDATION_RETRIES,
            "Invalidations queued for retry, and those a retry completed.",
        ),
        (INVALIDATIONS_DEAD_LETTERED, "Invalidations given up."),
        (BREAKER_TRANSITIONS, "Circuit breaker state changes."),
        (
            ORIGIN_LIMITED,
            "Loads that found the origin at its concurrency limit.",
        ),
        (BATCH_LOADS, "Batch-loader calls."),
        (BATCH_LOAD_KEYS, "Keys asked of batch-loader calls."),
        (WARMED, "Keys warmed, by trigger and outcome."),
        (REPLICA_READS, "Reads of a hot key's L2 copies."),
        (
            VERIFY_CHECKS,
            "The verifier's checks of sampled reads, by outcome.",
        ),
        (VERIFY_REPAIRS, "Mismatched keys the verifier invalidated."),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, help) in [
        (
            GET_DURATION,
            "Read latency, by result (L1 hits sampled 1 in 64).",
        ),
        (LOAD_DURATION, "Loader call time, by outcome."),
        (L2_CALL_DURATION, "Remote-tier call time, by operation."),
        (
            LEASE_WAIT_DURATION,
            "Time waiting for another instance's fill, by outcome.",
        ),
        (
            BACKPLANE_LAG,
            "From an invalidation's announcement to its arrival here.",
        ),
    ] {
        describe_histogram!(name, Unit::Seconds, help);
    }
    describe_gauge!(L1_BYTES, Unit::Bytes, "L1 weight in bytes.");
    for (name, help) in [
        (L1_ENTRIES, "L1 entries."),
        (
            RETRY_QUEUE_DEPTH,
            "Invalidations waiting in the retry queue.",
        ),
        (
            BREAKER_STATE,
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        ),
        (
            HOTTEST_KEY_SHARE,
            "The hottest key's share of recent reads.",
        ),
        (
            ORIGIN_LIMIT,
            "The learned origin limit: loader calls allowed at once.",
        ),
        (
            HOT_KEY_READS,
            "Estimated recent reads of the hottest keys, by rank.",
        ),
    ] {
        describe_gauge!(name, help);
    }
}

/// Stripes per striped counter (a power of two).
const STRIPES: usize = 16;
/// A stripe hands its count over at every this many increments.
const FLUSH_EVERY: u64 = 256;
/// One L1 hit in this many is timed.
const SAMPLE_EVERY: u32 = 64;

/// A counter on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter written per L1 hit: each thread adds to a stripe of its own (threads take stripes
/// in turn), so no cache line bounces between cores per hit. The sum reaches the recorder's
/// counter as increments of what was not handed over yet.
pub(crate) struct Striped {
    stripes: [Padded; STRIPES],
    /// The sum handed to `target` so far.
    flushed: Mutex<u64>,
    target: Counter,
}

/// All live striped counters, for [`flush`] and the flusher thread.
static REGISTRY: Mutex<Vec<Weak<Striped>>> = Mutex::new(Vec::new());
static FLUSHER_STARTED: AtomicBool = AtomicBool::new(false);
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Counts down to the next timed L1 hit.
    static SAMPLE: Cell<u32> = const { Cell::new(0) };
}

fn stripe_index() -> usize {
    STRIPE.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(i);
        i
    })
}

/// Whether this L1 hit is one of the timed ones.
#[inline]
pub(crate) fn sample_hit() -> bool {
    SAMPLE.with(|c| match c.get() {
        0 => {
            c.set(SAMPLE_EVERY - 1);
            true
        }
        n => {
            c.set(n - 1);
            false
        }
    })
}

impl Striped {
    fn new(target: Counter) -> Arc<Self> {
        let striped = Arc::new(Striped {
            stripes: Default::default(),
            flushed: Mutex::new(0),
            target,
        });
        REGISTRY.lock().push(Arc::downgrade(&striped));
        start_flusher();
        striped
    }

    #[inline]
    pub fn increment(&self) {
        let before = self.stripes[stripe_index()]
            .0
            .fetch_add(1, Ordering::Relaxed);
        if before % FLUSH_EVERY == FLUSH_EVERY - 1 {
            self.flush();
        }
    }

    /// Hands what the stripes counted since the last flush to the recorder (skipped if
    /// another flush is under way: it hands over the same counts). For the hit path.
    pub fn flush(&self) {
        let Some(mut flushed) = self.flushed.try_lock() else {
            return;
        };
        self.hand_over(&mut flushed);
    }

    /// [`Self::flush`], waiting for a flush under way: when it returns, every hit counted
    /// before the call has reached the recorder (for scrapes, `metrics::flush`, and drop).
    pub fn flush_now(&self) {
        let mut flushed = self.flushed.lock();
        self.hand_over(&mut flushed);
    }

    fn hand_over(&self, flushed: &mut u64) {
        let sum: u64 = self
            .stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add);
        let delta = sum.wrapping_sub(*flushed);
        if delta > 0 {
            self.target.increment(delta);
            *flushed = sum;
        }
    }
}

impl Drop for Striped {
    /// The last hits of a dropped cache are not lost.
    fn drop(&mut self) {
        self.flush_now();
    }
}

/// Starts the thread that flushes every striped counter once a second (once per process; if
/// the thread cannot be started, counts still reach the recorder at every 256th hit of a
/// stripe and on [`flush`]).
fn start_flusher() {
    if FLUSHER_STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("herdwise-metrics".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            flush();
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "could not start the metrics flusher thread");
    }
}

/// How a read ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GetResult {
    L1Hit,
    L2Hit,
    Miss,
    Stale,
    Negative,
    Error,
    /// Dropped before it ended (a caller's timeout): counted and timed too, or the slowest
    /// reads would vanish from the latencies.
    Cancelled,
}

const GET_RESULTS: [&str; 7] = [
    "l1_hit",
    "l2_hit",
    "miss",
    "stale",
    "negative",
    "error",
    "cancelled",
];

impl GetResult {
    /// An answer from an L1 entry (`stale_copy`: a flagged copy re-stored by stale-if-error).
    #[inline]
    pub fn of_l1(stale_copy: bool, has_value: bool) -> Self {
        match (stale_copy, has_value) {
            (true, _) => GetResult::Stale,
            (false, true) => GetResult::L1Hit,
            (false, false) => GetResult::Negative,
        }
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        GET_RESULTS[self as usize]
    }
}

/// How a load ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadResult {
    Success,
    Error,
    Panic,
    Timeout,
}

const LOAD_RESULTS: [&str; 4] = ["success", "error", "panic", "timeout"];

/// A remote-store operation, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Get,
    Set,
    Delete,
    Lease,
    Publish,
    Tags,
    Scan,
    Admin,
}

impl StoreOp {
    pub const ALL: [StoreOp; 8] = [
        StoreOp::Get,
        StoreOp::Set,
        StoreOp::Delete,
        StoreOp::Lease,
        StoreOp::Publish,
        StoreOp::Tags,
        StoreOp::Scan,
        StoreOp::Admin,
    ];

    /// The label value (and the span's `db.operation.name`).
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Set => "set",
            StoreOp::Delete => "delete",
            StoreOp::Lease => "lease",
            StoreOp::Publish => "publish",
            StoreOp::Tags => "tags",
            StoreOp::Scan => "scan",
            StoreOp::Admin => "admin",
        }
    }
}

/// How a remote-store call ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Ok,
    Error,
    Timeout,
    Rejected,
}

const CALL_OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "rejected"];

/// How a wait for another instance's fill ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseWait {
    Filled,
    TookOver,
    Timeout,
    RemoteDown,
}

const LEASE_WAITS: [&str; 4] = ["filled", "took_over", "timeout", "remote_down"];

impl LeaseWait {
    /// The label value.
    pub fn name(self) -> &'static str {
        LEASE_WAITS[self as usize]
    }
}

/// What one verifier check found, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyOutcome {
    Match,
    Mismatch,
    Resolved,
    Error,
    Skipped,
}

const VERIFY_OUTCOMES: [&str; 5] = ["match", "mismatch", "resolved", "error", "skipped"];

/// Why a stale value was served, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaleReason {
    Error,
    Swr,
    SoftTimeout,
    Recovery,
}

const STALE_REASONS: [&str; 4] = ["error", "swr", "soft_timeout", "recovery"];

/// Pre-registered handles for one cache.
#[derive(Clone)]
pub(crate) struct CacheMetrics {
    namespace: Arc<str>,
    /// L1 hits and L1 negative hits: striped.
    l1_hit: Arc<Striped>,
    l1_negative: Arc<Striped>,
    gets: [Counter; 7],
    get_duration: [Histogram; 7],
    loads: [Counter; 4],
    pub loads_shed: Counter,
    load_duration: [Histogram; 4],
    pub evictions_size: Counter,
    pub evictions_expiry: Counter,
    pub l1_bytes: Gauge,
    pub l1_entries: Gauge,
    /// `[op][outcome]`.
    l2_calls: [[Counter; 4]; 8],
    l2_call_duration: [Histogram; 8],
    lease_wait: [Histogram; 4],
    stale_served: [Counter; 4],
    pub refreshes_swr: Counter,
    pub refreshes_xfetch: Counter,
    pub refreshes_ahead: Counter,
    pub coalesced_waits: Counter,
    pub flight_bypass: Counter,
    pub negative_stored: Counter,
    pub corrupt_entries: Counter,
    pub scope_foreign: Counter,
    pub scope_unscoped: Counter,
    pub too_large: Counter,
    pub encode_failures: Counter,
    pub leases_acquired: Counter,
    pub leases_held: Counter,
    pub lease_takeovers: Counter,
    pub lease_wait_timeouts: Counter,
    pub fills_refused_lease_lost: Counter,
    pub fills_refused_older: Counter,
    pub backplane_received: Counter,
    pub keyspace_events: Counter,
    pub backplane_lag: Histogram,
    pub tag_invalidations: Counter,
    pub tag_store_checks: Counter,
    pub tag_invalidated_reads: Counter,
    pub invalidation_retries_queued: Counter,
    pub invalidation_retries_succeeded: Counter,
    pub invalidations_dead_lettered: Counter,
    pub retry_queue_depth: Gauge,
    /// gap, resubscribed, lagged, tag_events_missed, subscription_lost.
    backplane_resets: [Counter; 5],
    pub breaker_state: Gauge,
    /// closed, open, half-open.
    breaker_transitions: [Counter; 3],
    pub origin_limited_stale: Counter,
    pub origin_limited_waited: Counter,
    pub origin_limited_overloaded: Counter,
    pub batch_loads: Counter,
    pub batch_load_keys: Counter,
    pub hottest_key_share: Gauge,
    pub replica_reads_hit: Counter,
    pub replica_reads_miss: Counter,
    /// `[trigger][outcome]`, see [`WarmTrigger`] and [`WarmOutcome`].
    warmed: [[Counter; 4]; 2],
    verify_checks: [Counter; 5],
    verify_drift: Gauge,
    verify_mismatch_age: Histogram,
    verify_repairs: Counter,
}

/// What started a warm, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WarmTrigger {
    Warm,
    Recovery,
}

/// What warming one key did, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WarmOutcome {
    Loaded,
    Cached,
    Absent,
    Failed,
}

impl CacheMetrics {
    /// The learned origin limit's gauge.
    pub fn origin_limit_gauge(&self) -> Gauge {
        gauge!(ORIGIN_LIMIT, CACHE_LABEL => self.namespace.to_string())
    }

    pub fn new(namespace: &str) -> Self {
        warn_if_no_recorder(namespace);
        describe();
        let ns = namespace.to_string();
        let c = |name: &'static str| counter!(name, CACHE_LABEL => ns.clone());
        let cl = |name: &'static str, label: &'static str, value: &'static str| counter!(name, CACHE_LABEL => ns.clone(), label => value);
        CacheMetrics {
            namespace: namespace.into(),
            l1_hit: Striped::new(cl(GETS, "result", "l1_hit")),
            l1_negative: Striped::new(cl(GETS, "result", "negative")),
            gets: GET_RESULTS.map(|r| cl(GETS, "result", r)),
            get_duration: GET_RESULTS
                .map(|r| histogram!(GET_DURATION, CACHE_LABEL => ns.clone(), "result" => r)),
            loads: LOAD_RESULTS.map(|r| cl(LOADS, "result", r)),
            loads_shed: cl(LOADS, "result", "shed"),
            load_duration: LOAD_RESULTS
                .map(|r| histogram!(LOAD_DURATION, CACHE_LABEL => ns.clone(), "result" => r)),
            evictions_size: cl(EVICTIONS, "cause", "size"),
            evictions_expiry: cl(EVICTIONS, "cause", "expiry"),
            l1_bytes: gauge!(L1_BYTES, CACHE_LABEL => ns.clone()),
            l1_entries: gauge!(L1_ENTRIES, CACHE_LABEL => ns.clone()),
            l2_calls: StoreOp::ALL.map(|op| {
                CALL_OUTCOMES.map(|outcome| {
                    counter!(L2_CALLS, CACHE_LABEL => ns.clone(), "op" => op.name(), "outcome" => outcome)
                })
            }),
            l2_call_duration: StoreOp::ALL.map(|op| {
                histogram!(L2_CALL_DURATION, CACHE_LABEL => ns.clone(), "op" => op.name())
            }),
            lease_wait: LEASE_WAITS.map(|outcome| {
                histogram!(LEASE_WAIT_DURATION, CACHE_LABEL => ns.clone(), "outcome" => outcome)
            }),
            stale_served: STALE_REASONS.map(|r| cl(STALE_SERVED, "reason", r)),
            refreshes_swr: cl(REFRESHES, "trigger", "swr"),
            refreshes_xfetch: cl(REFRESHES, "trigger", "xfetch"),
            refreshes_ahead: cl(REFRESHES, "trigger", "ahead"),
            coalesced_waits: c(COALESCED_WAITS),
            flight_bypass: c(FLIGHT_BYPASS),
            negative_stored: c(NEGATIVE_STORED),
            corrupt_entries: c(CORRUPT_ENTRIES),
            scope_foreign: cl(SCOPE_VIOLATIONS, "reason", "foreign"),
            scope_unscoped: cl(SCOPE_VIOLATIONS, "reason", "unscoped"),
            too_large: cl(UNCACHEABLE_VALUES, "reason", "too_large"),
            encode_failures: cl(UNCACHEABLE_VALUES, "reason", "encode"),
            leases_acquired: cl(LEASES, "outcome", "acquired"),
            leases_held: cl(LEASES, "outcome", "held"),
            lease_takeovers: cl(LEASES, "outcome", "takeover"),
            lease_wait_timeouts: c(LEASE_WAIT_TIMEOUTS),
            fills_refused_lease_lost: cl(FILLS_REFUSED, "reason", "lease_lost"),
            fills_refused_older: cl(FILLS_REFUSED, "reason", "older"),
            backplane_received: c(BACKPLANE_RECEIVED),
            keyspace_events: c(KEYSPACE_EVENTS),
            backplane_lag: histogram!(BACKPLANE_LAG, CACHE_LABEL => ns.clone()),
            tag_invalidations: c(TAG_INVALIDATIONS),
            tag_store_checks: c(TAG_STORE_CHECKS),
            tag_invalidated_reads: c(TAG_INVALIDATED_READS),
            invalidation_retries_queued: cl(INVALIDATION_RETRIES, "outcome", "queued"),
            invalidation_retries_succeeded: cl(INVALIDATION_RETRIES, "outcome", "succeeded"),
            invalidations_dead_lettered: c(INVALIDATIONS_DEAD_LETTERED),
            retry_queue_depth: gauge!(RETRY_QUEUE_DEPTH, CACHE_LABEL => ns.clone()),
            backplane_resets: [
                "gap",
                "resubscribed",
                "lagged",
                "tag_events_missed",
                "subscription_lost",
            ]
            .map(|reason| cl(BACKPLANE_RESETS, "reason", reason)),
            breaker_state: gauge!(BREAKER_STATE, CACHE_LABEL => ns.clone()),
            breaker_transitions: ["closed", "open", "half_open"]
                .map(|to| cl(BREAKER_TRANSITIONS, "to", to)),
            origin_limited_stale: cl(ORIGIN_LIMITED, "outcome", "stale"),
            origin_limited_waited: cl(ORIGIN_LIMITED, "outcome", "waited"),
            origin_limited_overloaded: cl(ORIGIN_LIMITED, "outcome", "overloaded"),
            batch_loads: c(BATCH_LOADS),
            batch_load_keys: c(BATCH_LOAD_KEYS),
            hottest_key_share: gauge!(HOTTEST_KEY_SHARE, CACHE_LABEL => ns.clone()),
            replica_reads_hit: cl(REPLICA_READS, "outcome", "hit"),
            replica_reads_miss: cl(REPLICA_READS, "outcome", "miss"),
            warmed: ["warm", "recovery"].map(|trigger| {
                ["loaded", "cached", "absent", "failed"].map(|outcome| {
                    counter!(WARMED, CACHE_LABEL => ns.clone(), "trigger" => trigger, "outcome" => outcome)
                })
            }),
            verify_checks: VERIFY_OUTCOMES.map(|o| cl(VERIFY_CHECKS, "outcome", o)),
            verify_drift: gauge!(VERIFY_DRIFT, CACHE_LABEL => ns.clone()),
            verify_mismatch_age: histogram!(VERIFY_MISMATCH_AGE, CACHE_LABEL => ns.clone()),
            verify_repairs: c(VERIFY_REPAIRS),
        }
    }

    /// One gauge per rank of the `k` hottest keys.
    pub fn hot_key_ranks(&self, k: usize) -> Vec<Gauge> {
        (1..=k)
            .map(|rank| {
                gauge!(HOT_KEY_READS, CACHE_LABEL => self.namespace.to_string(), "rank" => rank.to_string())
            })
            .collect()
    }

    /// The breaker-state gauge of node `node` of a sharded store.
    pub fn breaker_gauge(&self, node: usize) -> Gauge {
        gauge!(BREAKER_STATE, CACHE_LABEL => self.namespace.to_string(), "node" => node.to_string())
    }

    /// A read answered by L1, timed from `sampled` when it is one of the sampled hits.
    #[inline]
    pub fn l1_hit(&self, result: GetResult, sampled: Option<Instant>) {
        match result {
            GetResult::L1Hit => self.l1_hit.increment(),
            GetResult::Negative => self.l1_negative.increment(),
            other => self.gets[other as usize].increment(1),
        }
        if let Some(started) = sampled {
            self.get_duration[result as usize].record(started.elapsed().as_secs_f64());
        }
    }

    /// A read past L1 ended with `result` after `elapsed`.
    pub fn read(&self, result: GetResult, elapsed: Duration) {
        self.gets[result as usize].increment(1);
        // L1 answers found past the lookup (after winning a load race) are timed 1 in 64 too,
        // like those of the lookup: timing all of them would over-weight these slower ones
        // 64-fold in the l1_hit latency.
        if result != GetResult::L1Hit || sample_hit() {
            self.get_duration[result as usize].record(elapsed.as_secs_f64());
        }
        // Reads past L1 are rare next to hits: the hit stripes can afford a flush here, so a
        // scrape between the flusher's ticks is rarely behind.
        self.l1_hit.flush();
        self.l1_negative.flush();
    }

    pub fn load(&self, result: LoadResult, elapsed: Duration) {
        self.loads[result as usize].increment(1);
        self.load_duration[result as usize].record(elapsed.as_secs_f64());
    }

    pub fn l2_call(&self, op: StoreOp, outcome: CallOutcome, elapsed: Option<Duration>) {
        self.l2_calls[op as usize][outcome as usize].increment(1);
        if let Some(elapsed) = elapsed {
            self.l2_call_duration[op as usize].record(elapsed.as_secs_f64());
        }
    }

    pub fn lease_wait(&self, outcome: LeaseWait, elapsed: Duration) {
        self.lease_wait[outcome as usize].record(elapsed.as_secs_f64());
    }

    pub fn stale_served(&self, reason: StaleReason) {
        self.stale_served[reason as usize].increment(1);
    }

    pub fn verify(&self, outcome: VerifyOutcome) {
        self.verify_checks[outcome as usize].increment(1);
    }

    pub fn verify_drift(&self, ratio: f64) {
        self.verify_drift.set(ratio);
    }

    pub fn verify_mismatch_age(&self, age: Duration, repaired: bool) {
        self.verify_mismatch_age.record(age.as_secs_f64());
        if repaired {
            self.verify_repairs.increment(1);
        }
    }

    pub fn warmed(&self, trigger: WarmTrigger, outcome: WarmOutcome) {
        self.warmed[trigger as usize][outcome as usize].increment(1);
    }

    pub fn backplane_reset(&self, reason: &str) {
        let i = match reason {
            "gap" => 0,
            "resubscribed" => 1,
            "lagged" => 2,
            "subscription_lost" => 4,
            _ => 3,
        };
        self.backplane_resets[i].increment(1);
    }

    /// A breaker transition to `to`: `"closed"`, `"open"` or `"half_open"`.
    pub fn breaker_transition(&self, to: &str) {
        let i = match to {
            "closed" => 0,
            "open" => 1,
            _ => 2,
        };
        self.breaker_transitions[i].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counts_reach_the_recorder_on_flush_and_every_256_hits() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let striped = metrics::with_local_recorder(&recorder, || Striped::new(counter!("t_total")));
        let total = || -> u64 {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(_, _, _, v)| match v {
                    metrics_util::debugging::DebugValue::Counter(n) => n,
                    _ => 0,
                })
                .sum()
        };
        let mut seen = 0;
        for _ in 0..255 {
            striped.increment();
        }
        seen += total();
        assert_eq!(
            seen, 0,
            "nothing handed over before the 256th hit of a stripe"
        );
        striped.increment();
        seen += total();
        assert_eq!(seen, 256);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let striped = striped.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        striped.increment();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        flush();
        seen += total();
        assert_eq!(seen, 4256, "every hit, once");
        flush();
        assert_eq!(total(), 0, "a second flush hands over nothing new");
        // Hits counted but not flushed yet reach the recorder when the counter is dropped.
        for _ in 0..10 {
            striped.increment();
        }
        drop(striped);
        assert_eq!(total(), 10, "a dropped counter's last hits are not lost");
    }

    #[test]
    fn one_hit_in_64_is_sampled() {
        let sampled = (0..6400).filter(|_| sample_hit()).count();
        assert_eq!(sampled, 100);
    }
}
