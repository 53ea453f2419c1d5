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

use crate::cache::{Cache, WriteInFlight, WriteOutcome};
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
    /// happens: 1 to `max_tag_bytes` bytes each (default 512), no control characters, at most `max_tags_per_entry` in all.
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

/// What a write-through did once its origin write succeeded ([`Cache::write_through`],
/// [`Cache::write_through_returning`]): the origin has the value, and the cache tried to.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herdwise::Error> {
/// use herdwise::{Error, WriteOutcome};
/// let cache: herdwise::Cache<u64, String> =
///     herdwise::Cache::builder("notes").max_value_bytes(64).build()?;
/// let written = cache
///     .write_through(&1, "x".repeat(1_000), |_| async { Ok::<_, std::io::Error>(None) })
///     .await?; // the row is committed: not an error
/// // ...but the value was too large to cache: the key was invalidated instead.
/// assert!(matches!(written.cached, Err(Error::ValueTooLarge { .. })));
/// assert!(cache.get(&1).await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct WrittenThrough<V> {
    /// The value the origin has (for `write_through_returning`: the one it returned).
    pub value: Arc<V>,
    /// The version the origin gave it, if any.
    pub version: Option<u64>,
    /// What the cache did. `Ok(WriteOutcome::Stored)`: cached. `Ok(RefusedOlder)`: L2 holds a
    /// newer version (the cache keeps that). `Ok(LocalOnly)`: L2 could not be written, the key
    /// is invalidated everywhere (retried). `Err`: the cache could not hold the value
    /// ([`Error::ValueTooLarge`], [`Error::Encode`], a bad tag): the key is invalidated
    /// everywhere instead, so no instance serves the old value; the next read loads.
    pub cached: Result<WriteOutcome>,
}

impl<V> Clone for WrittenThrough<V> {
    fn clone(&self) -> Self {
        WrittenThrough {
            value: self.value.clone(),
            version: self.version,
            cached: self.cached.clone(),
        }
    }
}

impl<V> WrittenThrough<V> {
    /// Whether the value was stored in L2 (and, unless another write overlapped it or an
    /// invalidation came, in this instance's L1).
    pub fn is_cached(&self) -> bool {
        matches!(self.cached, Ok(WriteOutcome::Stored))
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + ?Sized,
    V: Send + Sync + 'static,
{
    /// Writes `value` to the origin with `write`, then caches it. `write` returns the version the
    /// origin gave the value (a row version, an LSN), or `None` if it has none. Where the
    /// origin decides part of the value (ids, timestamps at its precision, defaults, triggers),
    /// use [`Cache::write_through_returning`]: it caches what the origin returns.
    ///
    /// `Err` means the origin write did not happen as far as the cache knows: the key was
    /// invalid ([`Error::InvalidKey`](crate::Error::InvalidKey), nothing was written), or
    /// `write` failed ([`Error::OriginWrite`](crate::Error::OriginWrite)). A failed origin
    /// write may still have committed (a timeout after the commit), so the key is invalidated
    /// everywhere then too, through the retry queue — as when the call is dropped before the
    /// cache is updated. `Ok` means the origin write succeeded, whatever the cache then did:
    /// see [`WrittenThrough::cached`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// use herdwise::WriteOutcome;
    /// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("users").build()?;
    /// let written = cache
    ///     .write_through(&7, "ada".to_string(), |name| {
    ///         let name = name.clone();
    ///         async move {
    ///             // UPDATE users SET name = $1 WHERE id = 7 RETURNING version
    ///             let _ = name;
    ///             Ok::<_, std::io::Error>(Some(42))
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(written.version, Some(42));
    /// assert!(matches!(written.cached, Ok(WriteOutcome::Stored)));
    /// assert_eq!(cache.get(&7).await?.as_deref().map(String::as_str), Some("ada"));
    /// # Ok(()) }
    /// ```
    pub async fn write_through<F, Fut, E>(
        &self,
        key: &K,
        value: impl Into<Arc<V>>,
        write: F,
    ) -> Result<WrittenThrough<V>>
    where
        F: FnOnce(&V) -> Fut,
        Fut: Future<Output = std::result::Result<Option<u64>, E>>,
        E: Into<crate::loader::BoxError> + 'static,
    {
        let value = value.into();
        self.write_through_returning(key, || async {
            let version = write(&value).await?;
            Ok::<_, E>((value.clone(), version))
        })
        .await
    }

    /// Write-through where the origin hands back the value to cache: `write` writes (an
    /// `INSERT ... RETURNING *`, an `UPDATE ... RETURNING *`) and returns the row as the origin
    /// stored it, with its version if it has one. What the origin returned is cached — not
    /// what the caller built before the write — so database-assigned ids, timestamps at the
    /// database's precision and defaults are cached as they are.
    ///
    /// Errors and outcomes as [`Cache::write_through`]: `Err` only if the origin write did not
    /// (knowingly) happen; once it did, `Ok`, with what the cache did in
    /// [`WrittenThrough::cached`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herdwise::Error> {
    /// #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// struct User { id: u64, name: String, updated_at_us: i64 }
    ///
    /// let cache: herdwise::Cache<u64, User> = herdwise::Cache::builder("users").build()?;
    /// let written = cache
    ///     .write_through_returning(&7, || async {
    ///         // UPDATE users SET name = 'ada' WHERE id = 7 RETURNING id, name, updated_at, version
    ///         let row = User { id: 7, name: "ada".into(), updated_at_us: 1_764_000_000_123_456 };
    ///         Ok::<_, anyhow::Error>((row, Some(43)))
    ///     })
    ///     .await?;
    /// assert_eq!(written.value.updated_at_us, 1_764_000_000_123_456);
    /// assert_eq!(cache.get(&7).await?.as_deref(), Some(&*written.value));
    /// # Ok(()) }
    /// ```
    pub async fn write_through_returning<F, Fut, T, E>(
        &self,
        key: &K,
        write: F,
    ) -> Result<WrittenThrough<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<u64>), E>>,
        T: Into<Arc<V>>,
        E: Into<crate::loader::BoxError> + 'static,
    {
        self.ensure_generation().await;
        let stored_key = self.key_of(key)?;
        // Armed from before the origin write until the cache is updated: a caller dropped on
        // the way (or an origin write that failed, maybe after committing) leaves the key
        // invalidated — out of this L1 at once, the L2 delete and announcement to the retry
        // queue — never the old value.
        let pending = WriteInFlight::new(&self.inner, &stored_key);
        let (value, version) = write()
            .await
            .map_err(|e| Error::OriginWrite(Arc::from(e.into())))?;
        let value = value.into();
        // From here the origin has the value: whatever the cache does is reported, not
        // returned as an error. (A value the cache cannot hold — too large, not encodable, a
        // bad tag — invalidates the key everywhere: `Cache::write`.)
        let cached = match version {
            Some(version) => self.set_versioned(key, value.clone(), version).await,
            None => self.set(key, value.clone()).await,
        };
        if let Err(err) = &cached {
            tracing::debug!(key = %stored_key, error = %err, "origin written, value not cached");
        }
        // (L2 not written, `LocalOnly`: the write invalidated the key, with retries.)
        pending.disarm();
        Ok(WrittenThrough {
            value,
            version,
            cached,
        })
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
        let pending = WriteInFlight::new(&self.inner, &stored_key);
        let written = write()
            .await
            .map_err(|e| Error::OriginWrite(Arc::from(e.into())))?;
        self.invalidate_stored(&stored_key).await;
        pending.disarm();
        Ok(written)
    }
}
