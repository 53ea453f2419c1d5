//! Write patterns: the origin is written first, then the cache is made consistent with it.
//!
//! - write-through: origin write, then the new value is cached — versioned when the origin hands
//!   out versions, so a concurrent older fill can never replace it; a `set` also voids loads in
//!   flight. If the cache write fails, the key is invalidated (retried) rather than left old.
//! - write-around: origin write, then invalidate (delete, not set: a set would race with
//!   concurrent reads). Also the right call after a *create*: it clears a negative entry.
//!
//! If the origin write fails, nothing is cached and the cache is not touched.

use std::future::Future;
use std::sync::Arc;

use crate::cache::{Cache, WriteOutcome};
use crate::coherence::retry::{Retry, RetryOnDrop};
use crate::error::{Error, Result};
use crate::tiers::key::CacheKey;

/// Per-write options of [`Cache::set_with`]: a value version and tags.
///
/// ```
/// let opts = herdwise::WriteOptions::default()
///     .version(17)
///     .tags(["category:shoes", "brand:acme"]);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct WriteOptions {
    pub(crate) version: Option<u64>,
    pub(crate) tags: Vec<Box<str>>,
}

impl WriteOptions {
    /// Write only unless the stored entry has a higher version (see [`Cache::set_versioned`]).
    pub fn version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// Tags the entry carries, in addition to those the cache derives from the value
    /// ([`CacheBuilder::tags_from`](crate::CacheBuilder::tags_from)). Checked when the write
    /// happens: 1-128 bytes each, no control characters, at most `max_tags_per_entry` in all.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.tags
            .extend(tags.into_iter().map(|t| Box::from(t.as_ref())));
        self
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Writes `value` to the origin with `write`, then caches it. `write` returns the version the
    /// origin gave the value (a row version, an LSN), or `None` if it has none.
    ///
    /// If `write` fails (or the call is dropped before the cache is updated), the value is not
    /// cached and the key is invalidated everywhere, through the retry queue: a failed origin
    /// write may still have committed (a timeout after the commit), so the old value is not
    /// trusted either. The error comes back as [`Error::OriginWrite`](crate::Error::OriginWrite).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users").build()?;
    /// cache
    ///     .write_through(&7, "ada".to_string(), |name| {
    ///         let name = name.clone();
    ///         async move {
    ///             // UPDATE users SET name = $1 WHERE id = 7 RETURNING version
    ///             let _ = name;
    ///             Ok::<_, std::io::Error>(Some(42))
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(cache.get(&7).await?.as_deref().map(String::as_str), Some("ada"));
    /// # Ok(()) }
    /// ```
    pub async fn write_through<F, Fut, E>(
        &self,
        key: &K,
        value: impl Into<Arc<V>>,
        write: F,
    ) -> Result<WriteOutcome>
    where
        F: FnOnce(&V) -> Fut,
        Fut: Future<Output = std::result::Result<Option<u64>, E>>,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.ensure_generation().await;
        let stored_key = self.key_of(key)?;
        let value = value.into();
        // Armed from before the origin write until the cache is updated: a caller dropped on
        // the way (or an origin write that failed, maybe after committing) leaves an
        // invalidation to the retry queue, never the old value in L2.
        let pending = RetryOnDrop::new(&self.inner, Retry::Key(stored_key.as_str().into()));
        let version = write(&value)
            .await
            .map_err(|e| Error::OriginWrite(Arc::from(e.into())))?;
        let outcome = match version {
            Some(version) => self.set_versioned(key, value, version).await,
            None => self.set(key, value).await,
        };
        // (L2 not written, `LocalOnly`: the write invalidated the key, with retries.)
        pending.disarm();
        outcome
    }

    /// Writes to the origin with `write`, then invalidates `key` everywhere (L1 of every
    /// instance, L2, loads in flight). A failed L2 invalidation is retried in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users").build()?;
    /// cache
    ///     .write_around(&7, || async { Ok::<_, std::io::Error>(()) /* INSERT ... */ })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_around<F, Fut, T, E>(&self, key: &K, write: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.ensure_generation().await;
        let stored_key = self.key_of(key)?;
        // As in `write_through`: armed from before the origin write.
        let pending = RetryOnDrop::new(&self.inner, Retry::Key(stored_key.as_str().into()));
        let written = write()
            .await
            .map_err(|e| Error::OriginWrite(Arc::from(e.into())))?;
        self.invalidate_stored(&stored_key).await;
        pending.disarm();
        Ok(written)
    }
}
