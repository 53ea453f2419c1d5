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

use bytes::Bytes;

use crate::cache::{Cache, Inner};
use crate::store::StoreError;
use crate::tiers::key::CacheKey;

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

/// Deletes every copy of `stored_key` (a no-op without replicas). Failures are counted by the
/// remote tier; a copy that survives lives out its short life.
pub(crate) async fn delete_replicas<V: Send + Sync + 'static>(inner: &Inner<V>, stored_key: &str) {
    let Some(replicas) = inner.replicas else {
        return;
    };
    let deletes = (1..=replicas.count).map(|i| {
        let key = replica_key(stored_key, i);
        async move {
            let _ = inner.remote.delete(&key).await;
        }
    });
    futures::future::join_all(deletes).await;
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// The L2 read of `stored_key`: from a random copy when the key is hot and copies are on,
    /// else from the primary.
    pub(crate) async fn read_remote(&self, stored_key: &str) -> Result<Option<Bytes>, StoreError> {
        let inner = &*self.inner;
        let copy = match inner.replicas {
            Some(replicas) if inner.hot_keys.is_hot(stored_key) => {
                let pick = rand::random_range(0..=replicas.count);
                (pick > 0).then(|| (replica_key(stored_key, pick), replicas.life))
            }
            _ => None,
        };
        let Some((copy_key, life)) = copy else {
            return inner.remote.get(stored_key).await;
        };
        if let Some(bytes) = inner.remote.get(&copy_key).await? {
            inner.metrics.replica_reads_hit.increment(1);
            return Ok(Some(bytes));
        }
        inner.metrics.replica_reads_miss.increment(1);
        let primary = inner.remote.get(stored_key).await?;
        if let Some(bytes) = primary.as_ref() {
            let (owner, bytes) = (self.inner.clone(), bytes.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = owner.remote.set(&copy_key, bytes, life).await;
                });
            }
        }
        Ok(primary)
    }

    /// Deletes the copies of `stored_key` (after a write or an invalidation of the primary).
    pub(crate) async fn drop_replicas(&self, stored_key: &str) {
        delete_replicas(&self.inner, stored_key).await;
    }
}
