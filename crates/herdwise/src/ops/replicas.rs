//! Hot-key splitting: N copies of a hot key in L2, so its reads spread over N + 1 keys — and, on
//! Redis Cluster, over the shards those keys hash to — instead of melting one shard.
//!
//! A copy is `<stored key>%r<i>` (`%` is always followed by two hex digits in a stored key, so
//! no real key looks like that, and without a hash tag each copy has a slot of its own). Copies
//! are made lazily: a reader of a hot key picks one of the N + 1 at random; a copy that is
//! missing is read from the primary and written back, for a short life. Writes and
//! invalidations delete every copy along with the primary (whether or not the key is hot here:
//! it may be hot elsewhere). The one race left — a reader writing back a copy it read just
//! before an invalidation deleted them — serves the old value for at most the copy's life,
//! which is why that life is short.

use std::time::Duration;

use crate::tiers::remote::Remote;

/// Most copies of one key.
pub(crate) const MAX_REPLICAS: u8 = 16;

/// How many copies of a hot key L2 holds, and for how long each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replicas {
    pub count: u8,
    pub life: Duration,
}

/// The store key of copy `i` (1-based) of `stored_key`.
pub(crate) fn replica_key(stored_key: &str, i: u8) -> String {
    format!("{stored_key}%r{i}")
}

impl Replicas {
    /// The copy a reader of a hot key reads: `None` for the primary (one chance in N + 1), else
    /// the copy's key and the life to write it back with if it is missing.
    pub fn pick(&self, stored_key: &str) -> Option<(String, Duration)> {
        let pick = rand::random_range(0..=self.count);
        (pick > 0).then(|| (replica_key(stored_key, pick), self.life))
    }

    /// Deletes every copy of `stored_key`. Failures are counted by the remote tier; a copy that
    /// survives lives out its short life.
    pub async fn delete_all(&self, remote: &Remote, stored_key: &str) {
        let deletes = (1..=self.count).map(|i| {
            let key = replica_key(stored_key, i);
            async move {
                let _ = remote.delete(&key).await;
            }
        });
        futures::future::join_all(deletes).await;
    }
}
