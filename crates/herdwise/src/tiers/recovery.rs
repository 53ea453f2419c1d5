//! What happens when the remote tier comes back after an outage.
//!
//! While Redis was unreachable, L1 kept serving and took what the origin returned; invalidation
//! events were lost meanwhile, so nothing in L1 can be trusted as it stands. Clearing L1 would be
//! safe but would send every read to a Redis that may have come back empty — and from there to
//! the origin: the second herd. So L1 is *demoted* instead: every entry present becomes
//! unverified (an era counter moves on; entries remember the era they were stored in). An
//! unverified entry is never served as fresh: its next read asks L2 first, and L2's copy wins.
//!
//! Whether Redis came back *empty* is checked, not assumed: each instance remembers a random
//! token it found (or wrote) under a sentinel key; after a recovery, a missing or different token
//! means Redis lost its data. Only then, for a short window (the re-warm window), is an
//! unverified entry whose L2 copy is gone answered from L1 (flagged stale, counted) instead of
//! calling the origin; the staggered re-warm (`warm`) reloads the hottest keys meanwhile, top
//! 1 % first. If Redis kept its data, a missing copy means the key was invalidated or expired,
//! and the read loads as usual. The staleness this adds is bounded by about twice the window.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::tiers::freshness::now_ms;

/// The era of entries stored while deaf: the era counter never reaches it.
const DEAF_ERA: u64 = u64::MAX;

/// The backplane's subscription (other instances' invalidations).
pub(crate) const BACKPLANE: u8 = 1;
/// The keyspace-notification subscription (external writers' changes).
pub(crate) const KEYSPACE: u8 = 2;

/// The demotion era and the last remote-tier recovery, shared by the breaker (which reports
/// recoveries), L1 (which stamps entries with the era) and the read path.
#[derive(Debug)]
pub(crate) struct Recovery {
    era: AtomicU64,
    /// Invalidations cannot be heard (a subscription is not up yet, or was lost): entries
    /// stored meanwhile are unverified from the start. One bit per subscription
    /// ([`BACKPLANE`], [`KEYSPACE`]): deaf while any is down.
    deaf: AtomicU8,
    /// Times this instance started hearing again (deaf → hearing): part of every L1 epoch, so
    /// a value read from L2 while deaf is not stored as verified once hearing starts.
    hearing_starts: AtomicU64,
    /// Unix ms of the last recovery (0: none yet).
    recovered_at_ms: AtomicU64,
    /// How long after a recovery L1 answers for keys L2 lost.
    window: Duration,
    /// Recoveries so far, for the re-warm task to wait on.
    recoveries: watch::Sender<u64>,
    /// The sentinel token this instance last saw in the store (0: not known yet).
    token: AtomicU64,
    /// Whether the store lost its data before the last recovery: `UNKNOWN`, `LOST`, `INTACT`.
    loss: AtomicU8,
    /// The store's server id when the token was last seen (`None`: not known).
    server: parking_lot::Mutex<Option<String>>,
}

/// Not checked yet since the last recovery.
pub(crate) const UNKNOWN: u8 = 0;
/// The store came back without the sentinel: its data is gone.
pub(crate) const LOST: u8 = 1;
/// The store kept its data.
pub(crate) const INTACT: u8 = 2;

/// The store key of a namespace's sentinel.
pub(crate) fn sentinel_key(namespace: &str) -> String {
    format!("herdwise:{{ns:{namespace}}}:sentinel")
}

impl Recovery {
    pub fn new(window: Duration) -> Self {
        Recovery {
            era: AtomicU64::new(0),
            deaf: AtomicU8::new(0),
            hearing_starts: AtomicU64::new(0),
            recovered_at_ms: AtomicU64::new(0),
            window,
            recoveries: watch::Sender::new(0),
            token: AtomicU64::new(0),
            loss: AtomicU8::new(UNKNOWN),
            server: parking_lot::Mutex::new(None),
        }
    }

    /// The sentinel token last seen (0: none yet).
    pub fn token(&self) -> u64 {
        self.token.load(Ordering::Acquire)
    }

    /// Remembers the sentinel token found in (or written to) the store, and who the store was.
    pub fn saw_token(&self, token: u64, server: Option<String>) {
        self.token.store(token, Ordering::Release);
        if server.is_some() {
            *self.server.lock() = server;
        }
    }

    /// The store's server id when the token was last seen.
    pub fn server(&self) -> Option<String> {
        self.server.lock().clone()
    }

    /// What is known of the store's data since the last recovery.
    pub fn loss(&self) -> u8 {
        self.loss.load(Ordering::Acquire)
    }

    /// Records whether the store lost its data (`LOST` or `INTACT`), unless this recovery was
    /// judged already.
    pub fn judge_once(&self, loss: u8) {
        let _ = self
            .loss
            .compare_exchange(UNKNOWN, loss, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The current era: an L1 entry stored under an earlier one is unverified.
    #[inline]
    pub fn era(&self) -> u64 {
        self.era.load(Ordering::Acquire)
    }

    /// The era an entry stored now gets: the current one, or, while invalidations cannot be
    /// heard, one that is never current (the entry is checked against L2 before it is served:
    /// an invalidation of it may already have gone by unheard).
    #[inline]
    pub fn insert_era(&self) -> u64 {
        if self.deaf.load(Ordering::Acquire) != 0 {
            DEAF_ERA
        } else {
            self.era()
        }
    }

    /// The era of an entry stored unverified (never current).
    pub fn deaf_era(&self) -> u64 {
        DEAF_ERA
    }

    /// Whether the backplane's invalidations can be heard (see [`Recovery::insert_era`]).
    pub fn set_deaf(&self, deaf: bool) {
        self.set_deaf_to(BACKPLANE, deaf);
    }

    /// Whether `source`'s ([`BACKPLANE`] or [`KEYSPACE`]) changes can be heard: the instance
    /// is deaf while any source is.
    pub fn set_deaf_to(&self, source: u8, deaf: bool) {
        if deaf {
            self.deaf.fetch_or(source, Ordering::AcqRel);
        } else if self.deaf.load(Ordering::Acquire) & source != 0 {
            // What was read from L2 before now was read deaf: the inserts it is on its way to
            // store it unverified (their epoch, taken before the read, no longer matches).
            // Counted before the bit drops, so an insert that sees "hearing" sees the count.
            // (One listener per source flips its bit: no flip races another of the same bit.)
            self.hearing_starts.fetch_add(1, Ordering::AcqRel);
            self.deaf.fetch_and(!source, Ordering::AcqRel);
        }
    }

    /// Changes may have been missed while hearing (a listener fell behind): reads in flight
    /// now store what they read unverified, as after a deaf spell.
    pub fn restart_hearing(&self) {
        self.hearing_starts.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times this instance started hearing invalidations again (see
    /// [`Recovery::set_deaf`]): L1 folds it into every key's epoch.
    pub fn hearing_starts(&self) -> u64 {
        self.hearing_starts.load(Ordering::Acquire)
    }

    /// Events may have been missed (backplane gap, resubscription): every L1 entry becomes
    /// unverified.
    pub fn demote(&self) {
        self.era.fetch_add(1, Ordering::AcqRel);
    }

    /// The remote tier answered again after the breaker had opened: demote L1, open the re-warm
    /// window, and wake the re-warm task.
    pub fn recovered(&self) {
        self.demote();
        self.loss.store(UNKNOWN, Ordering::Release);
        self.recovered_at_ms.store(now_ms(), Ordering::Release);
        self.recoveries.send_modify(|n| *n += 1);
    }

    /// What is left of the window opened by the last recovery, if it is still open.
    pub fn window_left(&self) -> Option<Duration> {
        let at = self.recovered_at_ms.load(Ordering::Acquire);
        let elapsed = now_ms().saturating_sub(at);
        let window = self.window.as_millis() as u64;
        (at != 0 && elapsed < window).then(|| Duration::from_millis(window - elapsed))
    }

    /// How long L1 answers for lost keys after a recovery.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A receiver that sees every later recovery.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_demotes_and_opens_the_window() {
        let r = Recovery::new(Duration::from_millis(50));
        let mut seen = r.subscribe();
        assert!(r.window_left().is_none());
        let era = r.era();
        r.recovered();
        assert!(r.era() > era);
        assert!(r.window_left().is_some());
        assert!(seen.has_changed().unwrap());
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.window_left().is_none());
        let era = r.era();
        r.demote();
        assert!(
            r.era() > era && r.window_left().is_none(),
            "a demotion opens no window"
        );
        seen.mark_unchanged();
        assert!(!seen.has_changed().unwrap());
    }
}
