//! Deletes that another instance announced as not applied yet.
//!
//! When an instance invalidates a key and its L2 delete fails (the key's primary is down, a
//! failover is under way), it retries the delete and, meanwhile, never takes that key's L2 value
//! itself (`retry`). The other instances would: after the failover the promoted replica still
//! holds the old value. So the invalidating instance announces the delete as *pending*; every
//! instance that hears it drops its L1 copy and holds the key here: its L2 value is not taken
//! (a miss: the origin answers, and the fill replaces the old value) until the delete is
//! announced done (any plain invalidation of the key), or [`HOLD_LIMIT`] has passed.
//!
//! Contract: at most [`CAPACITY`] keys are held; past that, expired holds are pruned and, if
//! still full, the hold is not taken (counted by the caller, the entries' TTL and the L1 cap
//! bound what follows). `is_held` is one atomic load while nothing is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most keys held at once.
pub(crate) const CAPACITY: usize = 10_000;
/// Longest a hold lasts without the delete announced done: long enough for a failover (seconds)
/// and the sender's retries; short enough that a sender that died meanwhile costs little (the
/// key is loaded from the origin on this instance until then).
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// The keys held, and since when.
#[derive(Default)]
pub(crate) struct PendingDeletes {
    held: Mutex<HashMap<Box<str>, Instant>>,
    /// `held.len()`, read without the lock.
    len: AtomicUsize,
}

impl PendingDeletes {
    /// Holds `stored_key` (or starts its hold over); `false` if the table is full.
    pub fn hold(&self, stored_key: &str) -> bool {
        let mut held = self.held.lock();
        if held.len() >= CAPACITY && !held.contains_key(stored_key) {
            held.retain(|_, since| since.elapsed() <= HOLD_LIMIT);
            if held.len() >= CAPACITY {
                return false;
            }
        }
        held.insert(stored_key.into(), Instant::now());
        self.len.store(held.len(), Ordering::Release);
        true
    }

    /// The delete of `stored_key` went through (or the key was invalidated again and deleted).
    pub fn release(&self, stored_key: &str) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut held = self.held.lock();
        held.remove(stored_key);
        self.len.store(held.len(), Ordering::Release);
    }

    /// Whether `stored_key`'s L2 value must not be taken.
    pub fn is_held(&self, stored_key: &str) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut held = self.held.lock();
        match held.get(stored_key) {
            Some(since) if since.elapsed() <= HOLD_LIMIT => true,
            Some(_) => {
                held.remove(stored_key);
                self.len.store(held.len(), Ordering::Release);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_until_released() {
        let pending = PendingDeletes::default();
        assert!(!pending.is_held("a"));
        assert!(pending.hold("a"));
        assert!(pending.is_held("a"));
        assert!(!pending.is_held("b"));
        pending.release("a");
        assert!(!pending.is_held("a"));
    }

    #[test]
    fn the_table_is_bounded() {
        let pending = PendingDeletes::default();
        for i in 0..CAPACITY {
            assert!(pending.hold(&format!("k{i}")));
        }
        assert!(!pending.hold("one more"), "full: refused, not grown");
        assert!(pending.hold("k0"), "a held key's hold starts over");
        assert!(pending.is_held(&format!("k{}", CAPACITY - 1)));
    }
}
