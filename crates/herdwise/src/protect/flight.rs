//! In-process single-flight: at most one load per key per process at a time.
//!
//! The first caller for a key becomes the *leader* and does the work; later callers become
//! *waiters* and receive the leader's result. The leader owns the key's slot: if the leader's
//! future is dropped (cancelled) before it completes, its guard marks the slot abandoned, every
//! waiter wakes up with "abandoned", and the waiters go round again — one of them becomes the
//! new leader with its own loader. Nobody waits on a load that no longer runs.
//!
//! The map holds only keys whose load is in flight (the leader removes its key when it completes
//! or is dropped) and never more than `max` of them: past that, callers run uncoalesced
//! ([`Join::Bypass`]) rather than queue without bound. A leader nobody waits for keeps no copy
//! of its result: the cost of a flight without waiters is one map insert and one removal.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use quick_cache::DefaultHashBuilder;
use tokio::sync::Notify;

/// Where one key's load is.
enum State<T> {
    Running,
    Done(T),
    Abandoned,
}

/// One load in flight: its state, and its waiters' wake-up.
struct Slot<T> {
    state: Mutex<State<T>>,
    ended: Notify,
}

impl<T> Slot<T> {
    fn end(&self, state: State<T>) {
        *self.state.lock() = state;
        self.ended.notify_waiters();
    }
}

/// The in-flight loads of one cache.
pub(crate) struct Flights<T> {
    map: Mutex<HashMap<Arc<str>, Arc<Slot<T>>, DefaultHashBuilder>>,
    max: usize,
}

/// A caller's role for one key.
pub(crate) enum Join<'a, T> {
    /// Do the load, then [`Leader::complete`].
    Leader(Leader<'a, T>),
    /// Another caller is loading; [`Waiter::wait`] for it.
    Waiter(Waiter<T>),
    /// The map is full: load without coalescing.
    Bypass,
}

impl<T: Clone> Flights<T> {
    pub fn new(max: usize) -> Self {
        Flights {
            map: Mutex::new(HashMap::default()),
            max,
        }
    }

    pub fn join(&self, key: &str) -> Join<'_, T> {
        let mut map = self.map.lock();
        if let Some(slot) = map.get(key) {
            return Join::Waiter(Waiter { slot: slot.clone() });
        }
        if map.len() >= self.max {
            return Join::Bypass;
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(State::Running),
            ended: Notify::new(),
        });
        let key: Arc<str> = key.into();
        map.insert(key.clone(), slot.clone());
        Join::Leader(Leader {
            flights: self,
            key,
            slot,
            ended: false,
        })
    }

    /// Whether a load of `key` is in flight (a caller joining now would be a waiter).
    pub fn is_running(&self, key: &str) -> bool {
        self.map.lock().contains_key(key)
    }

    /// Keys with a load in flight.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// The caller that loads. Dropping it without [`Leader::complete`] abandons the load.
pub(crate) struct Leader<'a, T> {
    flights: &'a Flights<T>,
    key: Arc<str>,
    slot: Arc<Slot<T>>,
    ended: bool,
}

impl<T> Leader<'_, T> {
    /// Hands `result` to every waiter. The key is removed first: a caller that comes after
    /// this leads a load of its own (it finds what this one filled, if anything).
    pub fn complete(mut self, result: T) {
        self.ended = true;
        self.remove_key();
        // Waiters hold the slot; with the key gone, no new one can (the map lock orders it).
        if Arc::strong_count(&self.slot) > 1 {
            self.slot.end(State::Done(result));
        }
    }

    fn remove_key(&self) {
        let mut map = self.flights.map.lock();
        // Remove only our own slot: a successor may already have taken the key.
        if map
            .get(&*self.key)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            map.remove(&*self.key);
        }
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        if !self.ended {
            self.remove_key();
            self.slot.end(State::Abandoned);
        }
    }
}

/// A caller waiting for a leader.
pub(crate) struct Waiter<T> {
    slot: Arc<Slot<T>>,
}

impl<T: Clone> Waiter<T> {
    /// The leader's result, or `None` if the leader was dropped without completing.
    pub async fn wait(self) -> Option<T> {
        loop {
            let ended = self.slot.ended.notified();
            tokio::pin!(ended);
            // Registered before the look: an end after it wakes this waiter.
            ended.as_mut().enable();
            match &*self.slot.state.lock() {
                State::Done(result) => return Some(result.clone()),
                State::Abandoned => return None,
                State::Running => {}
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_get_the_leaders_result_and_the_map_is_cleaned() {
        let flights = Flights::<u32>::new(10);
        let Join::Leader(leader) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Join::Waiter(w1) = flights.join("k") else {
            panic!("second caller waits")
        };
        let Join::Waiter(w2) = flights.join("k") else {
            panic!("third caller waits")
        };
        leader.complete(7);
        assert_eq!(w1.wait().await, Some(7));
        assert_eq!(w2.wait().await, Some(7));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_releases_waiters_and_key() {
        let flights = Flights::<u32>::new(10);
        let Join::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Join::Waiter(w) = flights.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(w.wait().await, None);
        assert!(matches!(flights.join("k"), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_waiter_that_came_before_the_end_gets_the_result_and_one_after_leads() {
        let flights = Flights::<u32>::new(10);
        let Join::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Join::Waiter(w) = flights.join("k") else {
            panic!()
        };
        let waiting = tokio::spawn(w.wait());
        tokio::task::yield_now().await;
        leader.complete(3);
        assert_eq!(waiting.await.unwrap(), Some(3));
        assert_eq!(flights.len(), 0);
        let Join::Leader(next) = flights.join("k") else {
            panic!("after the end, the next caller leads")
        };
        // Completed with nobody waiting: nothing is kept, and the key is free again.
        next.complete(4);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_leader_dropped_while_waiters_wait_wakes_them() {
        let flights = Arc::new(Flights::<u32>::new(10));
        let Join::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let waiters: Vec<_> = (0..3)
            .map(|_| match flights.join("k") {
                Join::Waiter(w) => tokio::spawn(w.wait()),
                _ => panic!("waits"),
            })
            .collect();
        tokio::task::yield_now().await;
        drop(leader);
        for w in waiters {
            assert_eq!(w.await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn full_map_bypasses() {
        let flights = Flights::<u32>::new(1);
        let _leader = flights.join("a");
        assert!(matches!(flights.join("b"), Join::Bypass));
        assert!(matches!(flights.join("a"), Join::Waiter(_)));
    }
}
