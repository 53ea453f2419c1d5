//! Origin protection: at most `max_concurrent` loader calls of a cache at once, so that a cache
//! outage (or a cold start) can never turn into a database outage.
//!
//! Beyond the limit a caller gets, in this order: the stale value if one is usable within the
//! stale-if-error window (flagged stale); else a wait of at most `max_wait` for a free slot; else
//! [`Error::Overloaded`](crate::Error::Overloaded) — load shed, counted, never queued without
//! bound.

use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit of one cache.
#[derive(Debug)]
pub(crate) struct OriginLimit {
    slots: std::sync::Arc<Semaphore>,
    pub max_concurrent: usize,
    pub max_wait: Duration,
}

/// What asking for a slot gave.
pub(crate) enum Slot {
    /// Call the loader; the slot is freed when this drops.
    Granted(OwnedSemaphorePermit),
    /// Every slot is taken; the caller may answer stale, or wait.
    Busy,
}

impl OriginLimit {
    pub fn new(max_concurrent: usize, max_wait: Duration) -> Self {
        OriginLimit {
            slots: std::sync::Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_wait,
        }
    }

    /// A slot now, if one is free.
    pub fn try_slot(&self) -> Slot {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Slot::Granted(permit),
            Err(_) => Slot::Busy,
        }
    }

    /// A slot within `max_wait`, or `None`.
    pub async fn wait_slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Loader calls running now.
    pub fn in_use(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_and_waits_are_too() {
        let limit = OriginLimit::new(2, Duration::from_millis(20));
        let (a, b) = (limit.try_slot(), limit.try_slot());
        assert!(matches!((&a, &b), (Slot::Granted(_), Slot::Granted(_))));
        assert!(matches!(limit.try_slot(), Slot::Busy));
        assert_eq!(limit.in_use(), 2);
        let t = std::time::Instant::now();
        assert!(limit.wait_slot().await.is_none());
        assert!(t.elapsed() >= Duration::from_millis(20));
        drop(a);
        assert!(limit.wait_slot().await.is_some());
        drop(b);
    }
}
