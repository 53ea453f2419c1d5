//! Every metric Herdwise emits, by name, in one place (through the `metrics` facade).
//!
//! All carry a `namespace` label.
//!
//! **Install your recorder (Prometheus exporter, ...) before building caches.** Handles are
//! registered once, when a cache is built, so the hot path only increments an atomic; a cache
//! built before the recorder was installed keeps recording into nothing, for good. `build()`
//! logs a warning (once per process) when it finds no recorder installed — judged by the
//! recorder in scope being the `metrics` crate's no-op one (a zero-sized type; a zero-sized
//! recorder of your own would be taken for it, and only cost you that warning).
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `herdwise_hits_total` | counter | `tier` = `l1`/`l2` | reads answered by a tier (negative entries included) |
//! | `herdwise_misses_total` | counter | | reads that found nothing usable in any tier |
//! | `herdwise_loads_total` | counter | | loader calls |
//! | `herdwise_load_errors_total` | counter | `kind` = `error`/`panic`/`timeout` | loader failures (never cached) |
//! | `herdwise_stale_served_total` | counter | `reason` = `error`/`refreshing`/`soft_timeout` | stale values served: the origin failed (stale-if-error), a refresh is under way (stale-while-revalidate), or the load passed its soft timeout |
//! | `herdwise_coalesced_waits_total` | counter | | callers that waited for another caller's load |
//! | `herdwise_refreshes_total` | counter | `trigger` = `swr`/`xfetch`/`ahead` | background refreshes started (at most one runs per key across instances) |
//! | `herdwise_flight_bypass_total` | counter | | loads not coalesced because the in-flight map was full |
//! | `herdwise_negative_stored_total` | counter | | negative entries written |
//! | `herdwise_store_errors_total` | counter | `op`, `kind` = `error`/`timeout` | failed remote-store calls |
//! | `herdwise_corrupt_entries_total` | counter | | stored bytes that failed to decode (deleted, treated as misses) |
//! | `herdwise_scope_violations_total` | counter | `reason` = `foreign`/`unscoped` | entries read under a key they were not written for (`foreign`: their key fingerprint names another key; `unscoped`: they carry none — written by an older version or another writer); deleted, treated as misses |
//! | `herdwise_uncacheable_values_total` | counter | `reason` = `too_large`/`encode` | loaded values returned but not cached |
//! | `herdwise_leases_total` | counter | `outcome` = `acquired`/`held`/`takeover` | lease attempts after an L2 miss (`held`: another instance loads; `takeover`: a waiter took a lease its holder gave up) |
//! | `herdwise_lease_wait_timeouts_total` | counter | | waiters that gave up on another instance's fill and loaded themselves |
//! | `herdwise_fills_refused_total` | counter | `reason` = `lease_lost`/`older` | fills not written: the lease was voided by a write/invalidation (or expired), or L2 holds a newer version |
//! | `herdwise_backplane_received_total` | counter | | invalidations received from other instances |
//! | `herdwise_backplane_resets_total` | counter | `reason` = `gap`/`resubscribed`/`lagged`/`tag_events_missed`/`subscription_lost` | L1 demoted (every entry re-checked against L2 before use) because invalidation events may have been missed |
//! | `herdwise_tag_invalidations_total` | counter | | `invalidate_tag` calls |
//! | `herdwise_tag_store_checks_total` | counter | | tagged entries checked against the store's marks (one `MGET`) because local knowledge could not decide |
//! | `herdwise_tag_invalidated_reads_total` | counter | | entries found in L1 or L2 but not served because one of their tags was invalidated after them |
//! | `herdwise_invalidation_retries_total` | counter | `outcome` = `queued`/`succeeded` | invalidations that failed against L2 and were queued for retry, and those a retry completed |
//! | `herdwise_invalidations_dead_lettered_total` | counter | | invalidations given up (queue full, or every retry failed) |
//! | `herdwise_breaker_state` | gauge | | circuit breaker on the remote tier: 0 closed, 1 open, 2 half-open |
//! | `herdwise_breaker_transitions_total` | counter | `to` = `closed`/`open`/`half_open` | breaker state changes |
//! | `herdwise_breaker_rejected_total` | counter | | remote calls not made because the breaker was open |
//! | `herdwise_origin_limited_total` | counter | `outcome` = `stale`/`waited`/`overloaded` | loads that found the origin at its concurrency limit: answered stale, waited for a slot, or shed with `Error::Overloaded` |
//! | `herdwise_recovery_served_from_l1_total` | counter | | reads answered from L1 (flagged stale) in the window after a remote-tier recovery, for keys the remote tier lost |
//! | `herdwise_warmed_total` | counter | `outcome` = `loaded`/`cached`/`absent`/`failed`, `trigger` = `warm`/`recovery` | keys warmed: loaded from the origin, already cached, not at the origin, or failed |
//! | `herdwise_replica_reads_total` | counter | `outcome` = `hit`/`miss` | reads of a hot key's L2 copy (`miss`: the copy was missing, the primary was read and the copy rewritten) |
//! | `herdwise_hottest_key_share` | gauge | | the hottest key's share of recent reads (sampled; refreshed every ~65k reads) |
//! | `herdwise_hot_key_reads` | gauge | `rank` = `1`..`k` | estimated recent reads of the k hottest keys, by rank (names: `Cache::hot_keys`) |
//! | `herdwise_l1_evictions_total` | counter | | L1 entries evicted for space |
//! | `herdwise_l1_bytes` | gauge | | L1 weight in bytes |

use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{counter, gauge, Counter, Gauge};

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

/// Reads answered by a tier.
pub const HITS: &str = "herdwise_hits_total";
/// Reads that found nothing usable.
pub const MISSES: &str = "herdwise_misses_total";
/// Loader calls.
pub const LOADS: &str = "herdwise_loads_total";
/// Loader failures.
pub const LOAD_ERRORS: &str = "herdwise_load_errors_total";
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
/// Failed remote-store calls.
pub const STORE_ERRORS: &str = "herdwise_store_errors_total";
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
/// L1 clears because events may have been missed.
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
/// Circuit breaker state (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "herdwise_breaker_state";
/// Breaker state changes.
pub const BREAKER_TRANSITIONS: &str = "herdwise_breaker_transitions_total";
/// Remote calls skipped because the breaker was open.
pub const BREAKER_REJECTED: &str = "herdwise_breaker_rejected_total";
/// Loads that found the origin at its concurrency limit.
pub const ORIGIN_LIMITED: &str = "herdwise_origin_limited_total";
/// Reads answered from L1 after a recovery, for keys the remote tier lost.
pub const RECOVERY_SERVED_FROM_L1: &str = "herdwise_recovery_served_from_l1_total";
/// Keys warmed.
pub const WARMED: &str = "herdwise_warmed_total";
/// Reads of a hot key's L2 copies.
pub const REPLICA_READS: &str = "herdwise_replica_reads_total";
/// The hottest key's share of recent reads.
pub const HOTTEST_KEY_SHARE: &str = "herdwise_hottest_key_share";
/// Estimated recent reads of the hottest keys, by rank.
pub const HOT_KEY_READS: &str = "herdwise_hot_key_reads";
/// L1 evictions.
pub const L1_EVICTIONS: &str = "herdwise_l1_evictions_total";
/// L1 weight in bytes.
pub const L1_BYTES: &str = "herdwise_l1_bytes";

/// A remote-store operation, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Get,
    Set,
    Delete,
    Lease,
}

/// How a remote-store call failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Error,
    Timeout,
}

/// Pre-registered handles for one cache.
#[derive(Clone)]
pub(crate) struct CacheMetrics {
    pub l1_hits: Counter,
    pub l2_hits: Counter,
    pub misses: Counter,
    pub loads: Counter,
    pub load_errors: Counter,
    pub load_panics: Counter,
    pub load_timeouts: Counter,
    pub stale_served_error: Counter,
    pub stale_served_refreshing: Counter,
    pub stale_served_soft_timeout: Counter,
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
    pub tag_invalidations: Counter,
    pub tag_store_checks: Counter,
    pub tag_invalidated_reads: Counter,
    pub invalidation_retries_queued: Counter,
    pub invalidation_retries_succeeded: Counter,
    pub invalidations_dead_lettered: Counter,
    /// gap, resubscribed, lagged, tag_events_missed, subscription_lost.
    backplane_resets: [Counter; 5],
    pub l1_evictions: Counter,
    pub l1_bytes: Gauge,
    pub breaker_state: Gauge,
    /// closed, open, half-open.
    breaker_transitions: [Counter; 3],
    pub breaker_rejected: Counter,
    pub origin_limited_stale: Counter,
    pub origin_limited_waited: Counter,
    pub origin_limited_overloaded: Counter,
    /// `[op][kind]`, see [`StoreOp`] and [`FailureKind`].
    store_errors: [[Counter; 2]; 4],
    pub recovery_served_from_l1: Counter,
    pub hottest_key_share: Gauge,
    pub replica_reads_hit: Counter,
    pub replica_reads_miss: Counter,
    /// `[trigger][outcome]`, see [`WarmTrigger`] and [`WarmOutcome`].
    warmed: [[Counter; 4]; 2],
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
    pub fn new(namespace: &str) -> Self {
        warn_if_no_recorder(namespace);
        let ns = namespace.to_string();
        let store = |op: &'static str, kind: &'static str| counter!(STORE_ERRORS, "namespace" => ns.clone(), "op" => op, "kind" => kind);
        CacheMetrics {
            l1_hits: counter!(HITS, "namespace" => ns.clone(), "tier" => "l1"),
            l2_hits: counter!(HITS, "namespace" => ns.clone(), "tier" => "l2"),
            misses: counter!(MISSES, "namespace" => ns.clone()),
            loads: counter!(LOADS, "namespace" => ns.clone()),
            load_errors: counter!(LOAD_ERRORS, "namespace" => ns.clone(), "kind" => "error"),
            load_panics: counter!(LOAD_ERRORS, "namespace" => ns.clone(), "kind" => "panic"),
            load_timeouts: counter!(LOAD_ERRORS, "namespace" => ns.clone(), "kind" => "timeout"),
            stale_served_error: counter!(STALE_SERVED, "namespace" => ns.clone(), "reason" => "error"),
            stale_served_refreshing: counter!(STALE_SERVED, "namespace" => ns.clone(), "reason" => "refreshing"),
            stale_served_soft_timeout: counter!(STALE_SERVED, "namespace" => ns.clone(), "reason" => "soft_timeout"),
            refreshes_swr: counter!(REFRESHES, "namespace" => ns.clone(), "trigger" => "swr"),
            refreshes_xfetch: counter!(REFRESHES, "namespace" => ns.clone(), "trigger" => "xfetch"),
            refreshes_ahead: counter!(REFRESHES, "namespace" => ns.clone(), "trigger" => "ahead"),
            coalesced_waits: counter!(COALESCED_WAITS, "namespace" => ns.clone()),
            flight_bypass: counter!(FLIGHT_BYPASS, "namespace" => ns.clone()),
            negative_stored: counter!(NEGATIVE_STORED, "namespace" => ns.clone()),
            corrupt_entries: counter!(CORRUPT_ENTRIES, "namespace" => ns.clone()),
            scope_foreign: counter!(SCOPE_VIOLATIONS, "namespace" => ns.clone(), "reason" => "foreign"),
            scope_unscoped: counter!(SCOPE_VIOLATIONS, "namespace" => ns.clone(), "reason" => "unscoped"),
            too_large: counter!(UNCACHEABLE_VALUES, "namespace" => ns.clone(), "reason" => "too_large"),
            encode_failures: counter!(UNCACHEABLE_VALUES, "namespace" => ns.clone(), "reason" => "encode"),
            leases_acquired: counter!(LEASES, "namespace" => ns.clone(), "outcome" => "acquired"),
            leases_held: counter!(LEASES, "namespace" => ns.clone(), "outcome" => "held"),
            lease_takeovers: counter!(LEASES, "namespace" => ns.clone(), "outcome" => "takeover"),
            lease_wait_timeouts: counter!(LEASE_WAIT_TIMEOUTS, "namespace" => ns.clone()),
            fills_refused_lease_lost: counter!(FILLS_REFUSED, "namespace" => ns.clone(), "reason" => "lease_lost"),
            fills_refused_older: counter!(FILLS_REFUSED, "namespace" => ns.clone(), "reason" => "older"),
            backplane_received: counter!(BACKPLANE_RECEIVED, "namespace" => ns.clone()),
            tag_invalidations: counter!(TAG_INVALIDATIONS, "namespace" => ns.clone()),
            tag_store_checks: counter!(TAG_STORE_CHECKS, "namespace" => ns.clone()),
            tag_invalidated_reads: counter!(TAG_INVALIDATED_READS, "namespace" => ns.clone()),
            invalidation_retries_queued: counter!(INVALIDATION_RETRIES, "namespace" => ns.clone(), "outcome" => "queued"),
            invalidation_retries_succeeded: counter!(INVALIDATION_RETRIES, "namespace" => ns.clone(), "outcome" => "succeeded"),
            invalidations_dead_lettered: counter!(INVALIDATIONS_DEAD_LETTERED, "namespace" => ns.clone()),
            backplane_resets: ["gap", "resubscribed", "lagged", "tag_events_missed", "subscription_lost"].map(
                |reason| counter!(BACKPLANE_RESETS, "namespace" => ns.clone(), "reason" => reason),
            ),
            l1_evictions: counter!(L1_EVICTIONS, "namespace" => ns.clone()),
            l1_bytes: gauge!(L1_BYTES, "namespace" => ns.clone()),
            breaker_state: gauge!(BREAKER_STATE, "namespace" => ns.clone()),
            breaker_transitions: ["closed", "open", "half_open"]
                .map(|to| counter!(BREAKER_TRANSITIONS, "namespace" => ns.clone(), "to" => to)),
            breaker_rejected: counter!(BREAKER_REJECTED, "namespace" => ns.clone()),
            origin_limited_stale: counter!(ORIGIN_LIMITED, "namespace" => ns.clone(), "outcome" => "stale"),
            origin_limited_waited: counter!(ORIGIN_LIMITED, "namespace" => ns.clone(), "outcome" => "waited"),
            origin_limited_overloaded: counter!(ORIGIN_LIMITED, "namespace" => ns.clone(), "outcome" => "overloaded"),
            store_errors: [
                [store("get", "error"), store("get", "timeout")],
                [store("set", "error"), store("set", "timeout")],
                [store("delete", "error"), store("delete", "timeout")],
                [store("lease", "error"), store("lease", "timeout")],
            ],
            recovery_served_from_l1: counter!(RECOVERY_SERVED_FROM_L1, "namespace" => ns.clone()),
            hottest_key_share: gauge!(HOTTEST_KEY_SHARE, "namespace" => ns.clone()),
            replica_reads_hit: counter!(REPLICA_READS, "namespace" => ns.clone(), "outcome" => "hit"),
            replica_reads_miss: counter!(REPLICA_READS, "namespace" => ns.clone(), "outcome" => "miss"),
            warmed: ["warm", "recovery"].map(|trigger| {
                ["loaded", "cached", "absent", "failed"].map(|outcome| {
                    counter!(WARMED, "namespace" => ns.clone(), "trigger" => trigger, "outcome" => outcome)
                })
            }),
        }
    }

    /// One gauge per rank of the `k` hottest keys.
    pub fn hot_key_ranks(namespace: &str, k: usize) -> Vec<Gauge> {
        (1..=k)
            .map(|rank| {
                gauge!(HOT_KEY_READS, "namespace" => namespace.to_string(), "rank" => rank.to_string())
            })
            .collect()
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

    pub fn store_failure(&self, op: StoreOp, kind: FailureKind) {
        self.store_errors[op as usize][kind as usize].increment(1);
    }
}
