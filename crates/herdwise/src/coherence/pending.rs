//! Deletes that another instance announced as not applied yet.
//!
//! When an instance invalidates a key and its L2 delete fails (the key's primary is down, a
//! failover is under way), it retries the delete and, meanwhile, never takes that key's L2 value
//! itself (`retry`). The other instances would: after the failover the promoted replica still
//! holds the old value. So the invalidating instance announces the delete as *pending*; every
//! instance that hears it drops its L1 copy and holds the key here: its L2 value is not taken
//! (a miss: the origin answers, and the fill replaces the old value) until the delete is
//! announced done (any plain invalidation of the key: the delete's retry, or a write that
//! stored a newer value), or the hold's limit has passed: the longest life of an entry
//! (twice over), as long as the sender keeps retrying — past it, the old value has expired.
//!
//! Contract: at most [`CAPACITY`] keys are held; past that, expired holds are pruned and, if
//! still full, the hold is not taken (logged by the caller; the entries' TTL and the L1 cap
//! bound what follows). Expired holds are pruned at most once a second, so a hold nobody
//! releases does not keep the table non-empty. `is_held` is one atomic load while nothing is
//! held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most keys held at once.
pub(crate) const CAPACITY: usize = 10_000;
/// How often expired holds are pruned, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The keys held, and since when.
pub(crate) struct PendingDeletes {
    state: Mutex<State>,
    /// `state.held.len()`, read without the lock.
    len: AtomicUsize,
    /// Longest a hold lasts without the delete announced done.
    limit: Duration,
}

struct State {
    held: HashMap<Box<str>, Instant>,
    pruned: Instant,
}

impl PendingDeletes {
    /// A table whose holds last at most `limit` (the sender's retry reach: the longest life of
    /// an entry, twice over).
    pub fn new(limit: Duration) -> Self {
        PendingDeletes {
            state: Mutex::new(State {
                held: HashMap::new(),
                pruned: Instant::now(),
            }),
            len: AtomicUsize::new(0),
            limit,
        }
    }

    /// Holds `stored_key` (or starts its hold over); `false` if the table is full.
    pub fn hold(&self, stored_key: &str) -> bool {
        let mut state = self.state.lock();
        self.prune(&mut state, false);
        if state.held.len() >= CAPACITY && !state.held.contains_key(stored_key) {
            self.prune(&mut state, true);
            if state.held.len() >= CAPACITY {
                return false;
            }
        }
        state.held.insert(stored_key.into(), Instant::now());
        self.len.store(state.held.len(), Ordering::Release);
        true
    }

    /// The delete of `stored_key` went through (or the key was invalidated again and deleted).
    pub fn release(&self, stored_key: &str) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut state = self.state.lock();
        state.held.remove(stored_key);
        self.len.store(state.held.len(), Ordering::Release);
    }

    /// Whether `stored_key`'s L2 value must not be taken.
    pub fn is_held(&self, stored_key: &str) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut state = self.state.lock();
        self.prune(&mut state, false);
        state
            .held
            .get(stored_key)
            .is_some_and(|since| since.elapsed() <= self.limit)
    }

    /// Drops expired holds: when `now`, or when a second has passed since the last prune.
    fn prune(&self, state: &mut State, now: bool) {
        if !now && state.pruned.elapsed() < PRUNE_EVERY {
            return;
        }
        state.pruned = Instant::now();
        let limit = self.limit;
        state.held.retain(|_, since| since.elapsed() <= limit);
        self.len.store(state.held.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_until_released() {
        let pending = PendingDeletes::new(Duration::from_secs(60));
        assert!(!pending.is_held("a"));
        assert!(pending.hold("a"));
        assert!(pending.is_held("a"));
        assert!(!pending.is_held("b"));
        pending.release("a");
        assert!(!pending.is_held("a"));
    }

    #[test]
    fn the_table_is_bounded() {
        let pending = PendingDeletes::new(Duration::from_secs(60));
        for i in 0..CAPACITY {
            assert!(pending.hold(&format!("k{i}")));
        }
        assert!(!pending.hold("one more"), "full: refused, not grown");
        assert!(pending.hold("k0"), "a held key's hold starts over");
        assert!(pending.is_held(&format!("k{}", CAPACITY - 1)));
    }

    #[test]
    fn a_hold_ends_at_its_limit_and_is_pruned() {
        let pending = PendingDeletes::new(Duration::from_millis(500));
        assert!(pending.hold("a"));
        assert!(pending.is_held("a"));
        std::thread::sleep(Duration::from_millis(600));
        assert!(!pending.is_held("a"), "past its limit");
        {
            let mut state = pending.state.lock();
            state.pruned = state
                .pruned
                .checked_sub(PRUNE_EVERY)
                .unwrap_or(state.pruned);
        }
        assert!(!pending.is_held("b"));
        assert_eq!(pending.len.load(Ordering::Acquire), 0, "pruned");
    }
}
