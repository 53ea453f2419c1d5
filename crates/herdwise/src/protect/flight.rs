//! In-process single-flight: at most one load per key per process at a time.
//!
//! The first caller for a key becomes the *leader* and does the work; later callers become
//! *waiters* and receive the leader's result. The leader publishes through a `watch` channel
//! whose sender it owns: if the leader's future is dropped (cancelled) before it completes, the
//! sender is dropped with it, every waiter wakes up with "abandoned", and the waiters go round
//! again — one of them becomes the new leader with its own loader. Nobody waits on a load that
//! no longer runs.
//!
//! The map holds only keys whose load is in flight (the leader removes its key when it completes
//! or is dropped) and never more than `max` of them: past that, callers run uncoalesced
//! ([`Join::Bypass`]) rather than queue without bound.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

type Slot<T> = Arc<watch::Sender<Option<T>>>;

/// The in-flight loads of one cache.
pub(crate) struct Flights<T> {
    map: Mutex<HashMap<Box<str>, Slot<T>>>,
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
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    pub fn join(&self, key: &str) -> Join<'_, T> {
        let mut map = self.map.lock();
        if let Some(slot) = map.get(key) {
            return Join::Waiter(Waiter {
                rx: slot.subscribe(),
            });
        }
        if map.len() >= self.max {
            return Join::Bypass;
        }
        let slot: Slot<T> = Arc::new(watch::Sender::new(None));
        map.insert(key.into(), slot.clone());
        Join::Leader(Leader {
            flights: self,
            key: key.into(),
            slot,
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
    key: Box<str>,
    slot: Slot<T>,
}

impl<T> Leader<'_, T> {
    /// Hands `result` to every waiter (and to anyone who joins before the key is removed).
    pub fn complete(self, result: T) {
        self.slot.send_replace(Some(result));
        // Drop removes the key.
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
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

/// A caller waiting for a leader.
pub(crate) struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Waiter<T> {
    /// The leader's result, or `None` if the leader was dropped without completing.
    pub async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
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
    async fn full_map_bypasses() {
        let flights = Flights::<u32>::new(1);
        let _leader = flights.join("a");
        assert!(matches!(flights.join("b"), Join::Bypass));
        assert!(matches!(flights.join("a"), Join::Waiter(_)));
    }
}
