//! The shared (L2) tier: a trait for remote stores and its implementations.
//!
//! A store moves opaque envelope bytes; it knows nothing of values, freshness or policy. The one
//! thing it must know about the envelope is where the value version lives
//! ([`crate::envelope::VERSION_OFFSET`]), so that [`Store::set_if_not_older`] can refuse to put an
//! older value over a newer one in a single atomic step.
//!
//! Deadlines are applied by the cache around every call (see `remote`), so an implementation does
//! not need its own; it should still not block a thread.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisStoreBuilder};

/// What a versioned set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// The value was written.
    Stored,
    /// The stored entry has a higher version; nothing was written.
    RefusedOlder,
}

/// A failed store call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish within its deadline.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Anything else (custom stores).
    #[error("{0}")]
    Other(String),
}

/// A remote (or embedded) byte store with TTLs: the L2 tier.
///
/// Implementations must be safe to share between tasks and caches. Keys are the stored keys the
/// cache builds (`namespace:v<schema>:<key>`); values are envelope bytes.
///
/// ```
/// use std::time::Duration;
/// use herdwise::{MemoryStore, Store};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// store.set("k", "v".into(), Duration::from_secs(1)).await.unwrap();
/// assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
/// # }
/// ```
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and metrics (`"redis"`, `"memory"`).
    fn kind(&self) -> &'static str;

    /// The deadline the cache applies to this store's calls unless configured otherwise.
    fn default_timeout(&self) -> Duration;

    /// The bytes under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// Several keys in one round trip, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError>;

    /// Stores `value` under `key` for `ttl`, unconditionally.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError>;

    /// Stores `value` unless the stored entry carries a higher value version than `version`.
    /// Atomic: check and write are one step (one round trip for Redis).
    async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError>;

    /// Removes `key`; `true` if something was removed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
}

/// The value version stored in envelope bytes, if they look like an envelope.
pub(crate) fn stored_version(bytes: &[u8]) -> Option<u64> {
    crate::envelope::decode_meta(bytes).ok().map(|m| m.version)
}
