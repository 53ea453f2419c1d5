//! At most one background refresh per key per instance.
//!
//! Contract: [`Refreshing::start`] hands out a [`Running`] slot for a key unless one is out
//! already (or `max` are); the slot is released when it is dropped — when the refresh ends,
//! fails, panics or is cancelled. Stale-while-revalidate, XFetch and refresh-ahead all start
//! their refreshes through it, so a stampede of stale reads starts one refresh, not one task
//! each.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

/// Keys with a background refresh running on this instance (bounded: past `max`, no new
/// refresh starts until one ends).
pub(crate) struct Refreshing {
    keys: Arc<Mutex<HashSet<Box<str>>>>,
    max: usize,
}

/// One key's running refresh; ends it on drop.
pub(crate) struct Running {
    keys: Arc<Mutex<HashSet<Box<str>>>>,
    key: Box<str>,
}

impl Refreshing {
    pub fn new(max: usize) -> Self {
        Refreshing {
            keys: Arc::default(),
            max,
        }
    }

    /// `None` if a refresh of `key` runs already (or too many run).
    pub fn start(&self, key: &str) -> Option<Running> {
        let mut keys = self.keys.lock();
        if keys.len() >= self.max || !keys.insert(key.into()) {
            return None;
        }
        Some(Running {
            keys: self.keys.clone(),
            key: key.into(),
        })
    }

    /// Refreshes running now.
    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.keys.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_key_released_on_drop_and_bounded() {
        let refreshing = Refreshing::new(2);
        let a = refreshing.start("a").unwrap();
        assert!(refreshing.start("a").is_none());
        let _b = refreshing.start("b").unwrap();
        assert!(refreshing.start("c").is_none(), "bounded at 2");
        drop(a);
        assert_eq!(refreshing.len(), 1);
        assert!(refreshing.start("a").is_some());
    }
}
