//! The errors a caller can see.
//!
//! Remote-store failures are deliberately *not* here as caller-facing read errors: a failed or
//! timed-out store call degrades to a miss (reads) or a logged, counted failure (writes). What
//! reaches the caller is what the caller can act on: a bad key, a value that cannot be cached, a
//! loader that failed, a bad configuration.

use std::sync::Arc;

use crate::tiers::key::KeyError;

/// Everything a [`Cache`](crate::Cache) operation can fail with.
///
/// `Error` is cheap to clone (sources are shared), because one loader failure is delivered to
/// every caller that was coalesced onto that load.
///
/// ```
/// use herdwise::{Cache, Error};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache: Cache<str, String> = Cache::builder("docs").build().unwrap();
/// let err = cache.get("bad\nkey").await.unwrap_err();
/// assert!(matches!(err, Error::InvalidKey(_)));
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key cannot be used (too long, control characters, ...).
    #[error("invalid cache key: {0}")]
    InvalidKey(#[from] KeyError),

    /// A tag is empty, longer than `max_tag_bytes` (default 512), or contains a control
    /// character.
    #[error("invalid tag {0:?}: tags are 1 to max_tag_bytes (default 512) bytes without control characters")]
    InvalidTag(String),

    /// An entry would carry more tags than the cache allows (`max_tags_per_entry`).
    #[error("{count} tags on one entry exceed the limit of {limit}")]
    TooManyTags {
        /// Distinct tags the entry would carry.
        count: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The encoded value is larger than the cache accepts.
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Encoded size of the value.
        size: usize,
        /// The configured `max_value_bytes`.
        limit: usize,
    },

    /// The codec could not encode the value.
    #[error("cannot encode value: {0}")]
    Encode(Arc<str>),

    /// The loader returned an error. It was not cached; every coalesced caller got this error.
    ///
    /// Loaders may fail with any error that converts into a boxed error: their own error
    /// types, `anyhow::Error`, `Box<dyn Error + Send + Sync>`. The error is kept as it was
    /// returned, source chain included: downcast it, or walk its `source()`s.
    ///
    /// ```
    /// use herdwise::{Cache, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<u64, String> = Cache::builder("users").build().unwrap();
    /// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "db timed out");
    /// let got = cache
    ///     .get_or_load(&7, |_| async move {
    ///         Err::<Option<String>, _>(anyhow::Error::new(io).context("loading user 7"))
    ///     })
    ///     .await;
    /// let Err(Error::Loader(err)) = got else { panic!("a loader error") };
    /// assert_eq!(err.to_string(), "loading user 7");
    /// let cause = err.source().expect("the chain is kept");
    /// assert_eq!(cause.to_string(), "db timed out");
    /// assert!(cause.downcast_ref::<std::io::Error>().is_some());
    /// # }
    /// ```
    #[error("loader failed: {0}")]
    Loader(Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// The origin write of `write_through`/`write_around` failed. Nothing was cached; the key
    /// was invalidated everywhere all the same (a failed write may still have committed).
    #[error("origin write failed: {0}")]
    OriginWrite(Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// The loader did not finish within its hard timeout. Nothing was cached.
    #[error("loader timed out after {0:?}")]
    LoaderTimeout(std::time::Duration),

    /// The origin is at its concurrency limit, no stale value could answer, and no slot came
    /// free within the wait: the load was shed rather than queued (see
    /// `CacheBuilder::origin_concurrency_limit`). Nothing was cached.
    #[error("origin overloaded: {limit} loads already running, none finished within {waited:?}")]
    Overloaded {
        /// The configured limit.
        limit: usize,
        /// How long the call waited for a slot.
        waited: std::time::Duration,
    },

    /// The loader panicked. Nothing was cached; coalesced callers got this error too.
    #[error("loader panicked")]
    LoaderPanicked,

    /// [`Cache::fetch`](crate::Cache::fetch) needs a loader registered with
    /// [`CacheBuilder::loader`](crate::CacheBuilder::loader).
    #[error("no loader registered: use CacheBuilder::loader, or get_or_load with a loader")]
    NoLoader,

    /// The builder was given an invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A store operation that the caller asked for explicitly failed (e.g. connecting).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
