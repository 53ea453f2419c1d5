//! A loader registered on the cache, so the cache can load *on its own*: background refresh
//! (stale-while-revalidate, XFetch early refresh). A per-call closure borrows from its caller and
//! cannot outlive the call; a registered loader returns a `'static` future, so it can.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;

/// The error of a registered loader, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A registered loader's error, as delivered in [`crate::Error::Loader`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoaderError(pub BoxError);

/// Loads a value from the origin. `Ok(None)` means "does not exist".
///
/// Implemented for closures `Fn(&K) -> impl Future<Output = Result<Option<V>, E>> + Send +
/// 'static`: copy what you need out of the key before the `async move` block.
///
/// ```
/// use std::sync::Arc;
/// use herdwise::Cache;
///
/// struct Db;
/// impl Db {
///     async fn name(&self, id: u64) -> Result<Option<String>, std::io::Error> {
///         Ok(Some(format!("user-{id}")))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herdwise::Error> {
/// let db = Arc::new(Db);
/// let users: Cache<u64, String> = Cache::builder("users")
///     .loader(move |id: &u64| {
///         let (db, id) = (db.clone(), *id);
///         async move { db.name(id).await }
///     })
///     .build()?;
/// assert_eq!(users.fetch(&7).await?.as_deref().map(String::as_str), Some("user-7"));
/// # Ok(()) }
/// ```
pub trait Loader<K: ?Sized, V>: Send + Sync + 'static {
    /// Starts loading `key`.
    fn load(&self, key: &K) -> BoxFuture<'static, Result<Option<V>, LoaderError>>;
}

impl<K, V, F, Fut, E> Loader<K, V> for F
where
    K: ?Sized,
    F: Fn(&K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn load(&self, key: &K) -> BoxFuture<'static, Result<Option<V>, LoaderError>> {
        self(key)
            .map(|r| r.map_err(|e| LoaderError(e.into())))
            .boxed()
    }
}

/// A registered loader, shared.
pub(crate) type SharedLoader<K, V> = Arc<dyn Loader<K, V>>;
