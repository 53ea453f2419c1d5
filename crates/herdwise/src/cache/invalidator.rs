//! [`Invalidator`]: a namespace's invalidations — keys, tags, key prefixes, the whole
//! namespace — from a process that does not cache it: the `herdwise` CLI, the proxy's admin
//! API, a deploy tool. The effect is the cache's own calls': the L2 entries go (tags and the
//! namespace's generation are marked in L2) and every running instance's L1 hears it on the
//! namespace's backplane.
//!
//! Contract: keys are given as their parts ([`KeyParts`]), encoded as the library encodes
//! each part of a tuple key, so `KeyParts::parse("17:a")` names the same stored key as the
//! service's `(17, "a")`; nothing is held locally (no L1); a failed L2 call is retried in the
//! background while the invalidator lives, and [`Invalidator::wait_confirmed`] says when none
//! is left. Tags are taken at any length (up to 1 MiB): their stored form does not depend on
//! the services' `max_tag_bytes`.
//!
//! Limits: stored keys up to 512 bytes (the default `max_key_bytes`); the copies of hot keys
//! (`hot_key_replicas`) are deleted only when the builder is told their count; a
//! tenant-scoped namespace's keys are named with the tenant as their first part
//! (`acme:42`), and its tags as `Cache::for_tenant` stores them (`acme:<tag>`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::coherence::backplane::BackplaneTransport;
use crate::error::Result;
use crate::store::Store;
use crate::tiers::key::{CacheKey, KeyEncoder};

/// A key named by its parts, for an [`Invalidator`]: each part is encoded as a string part
/// of a tuple key (an integer part encodes as its digits either way).
///
/// ```
/// use herdwise::KeyParts;
/// assert_eq!(herdwise::encode_key(&KeyParts::parse("17:a")?).unwrap(),
///            herdwise::encode_key(&(17u64, "a")).unwrap());
/// // The stored form, escapes and all: a part holding `:` comes back whole.
/// assert_eq!(KeyParts::parse("7:en%3AGB")?, KeyParts::new(["7", "en:GB"]));
/// assert_eq!(herdwise::encode_key(&KeyParts::parse("7:en%3AGB")?).unwrap(), "7:en%3AGB");
/// # Ok::<(), herdwise::KeyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyParts(Vec<String>);

impl KeyParts {
    /// The parts of a key written in its stored form without the namespace's prefix (what
    /// logs and `redis-cli` show after `<namespace>:v<schema>:`, or after
    /// `<namespace>:v<schema>%g<generation>:` once the namespace was cleared — `42` for
    /// `catalog:v1%g3:42`, never the whole stored key): split at `:`, then each part's escapes
    /// (`%25` `%`, `%3A` `:`, `%7B` `{`, `%7D` `}`, any other `%XX`) decoded — `42`,
    /// `guide/intro`, `17:a` for `(17, "a")`, `7:en%3AGB` for `(7, "en:GB")`.
    /// A `%` that starts no escape, or escapes that are not UTF-8, are
    /// [`KeyError::BadEscape`](crate::KeyError::BadEscape).
    pub fn parse(text: &str) -> std::result::Result<Self, crate::KeyError> {
        text.split(':')
            .map(unescape)
            .collect::<Option<Vec<String>>>()
            .map(KeyParts)
            .ok_or_else(|| crate::KeyError::BadEscape(text.to_string()))
    }

    /// A key of these parts.
    pub fn new<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KeyParts(parts.into_iter().map(Into::into).collect())
    }
}

/// One part's `%XX` escapes decoded; `None` for a `%` without two hex digits or non-UTF-8.
fn unescape(part: &str) -> Option<String> {
    if !part.contains('%') {
        return Some(part.to_string());
    }
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None; // from_str_radix alone would take "+1"
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl CacheKey for KeyParts {
    fn encode_key(&self, out: &mut KeyEncoder) {
        for part in &self.0 {
            out.str(part);
        }
    }
}

/// Invalidations of one namespace from outside its services. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herdwise::Error> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use herdwise::{Cache, Invalidator, KeyParts, MemoryStore, Store};
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// let catalog: Cache<u64, String> = Cache::builder("catalog").shared_store(store.clone()).build()?;
/// catalog.set(&42, "boot".to_string()).await?;
///
/// let outside = Invalidator::builder("catalog").shared_store(store).build()?;
/// outside.key(&KeyParts::parse("42")?).await?;
/// assert_eq!(outside.wait_confirmed(Duration::from_secs(1)).await, 0);
/// // Gone from L2 at once; from every instance's L1 when the backplane delivers.
/// for _ in 0..100 {
///     if catalog.get(&42).await?.is_none() { break; }
///     tokio::time::sleep(Duration::from_millis(10)).await;
/// }
/// assert_eq!(catalog.get(&42).await?, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Invalidator {
    cache: Cache<KeyParts, ()>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator")
            .field("namespace", &self.cache.namespace())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Invalidator`]: the namespace's store, schema version and backplane transport,
/// as its services have them.
#[must_use]
pub struct InvalidatorBuilder {
    namespace: String,
    store: Option<Arc<dyn Store>>,
    schema_version: u32,
    transport: Option<BackplaneTransport>,
    store_timeout: Option<Duration>,
    replicas: Option<u8>,
}

impl InvalidatorBuilder {
    /// The namespace's shared store (required: an invalidator with no store has no audience).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The store, already shared behind an `Arc`.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The services' `CacheBuilder::schema_version` (default 1).
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// The services' `CacheBuilder::backplane_transport` (default pub/sub): instances hear
    /// only their own transport.
    pub fn backplane_transport(mut self, transport: BackplaneTransport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The services' `CacheBuilder::hot_key_replicas` copy count (default none): a key's
    /// invalidation then deletes its copies too (`copies` more `DEL`s). Without it, copies of
    /// a hot key live out their `life` (at most; keep it short) after an invalidation from
    /// here — the copies' names depend on the count, which only the services know.
    pub fn hot_key_replicas(mut self, copies: u8) -> Self {
        self.replicas = Some(copies);
        self
    }

    /// Deadline of each store call (default: the store's own).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// The invalidator; `Error::Config` naming the option for a missing store or a bad
    /// namespace or transport.
    pub fn build(self) -> Result<Invalidator> {
        let store = self.store.ok_or_else(|| {
            crate::Error::Config("store: an Invalidator needs the namespace's shared store".into())
        })?;
        let mut builder = Cache::<KeyParts, ()>::builder(&self.namespace)
            .shared_store(store)
            .schema_version(self.schema_version)
            .l1_max_bytes(0)
            .no_hot_key_shield()
            // Any tag a service accepts (the stored form does not depend on the limit).
            .max_tag_bytes(1 << 20);
        if let Some(transport) = self.transport {
            builder = builder.backplane_transport(transport);
        }
        if let Some(timeout) = self.store_timeout {
            builder = builder.store_timeout(timeout);
        }
        if let Some(copies) = self.replicas {
            // The life is the services' business: copies are only deleted from here.
            builder = builder.hot_key_replicas(copies, Duration::from_secs(1));
        }
        Ok(Invalidator {
            cache: builder.build()?,
        })
    }
}

impl Invalidator {
    /// An invalidator for `namespace` (`Cache::builder(namespace)` of the services).
    pub fn builder(namespace: &str) -> InvalidatorBuilder {
        InvalidatorBuilder {
            namespace: namespace.to_string(),
            store: None,
            schema_version: 1,
            transport: None,
            store_timeout: None,
            replicas: None,
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.cache.namespace()
    }

    /// The stored key `key` names (`catalog:v1:g0:42`), or `Error::InvalidKey`.
    pub fn stored_key(&self, key: &KeyParts) -> Result<String> {
        self.cache.stored_key(key)
    }

    /// Whether the store answers (and the namespace's generation could be read). Ask it first:
    /// it also reads the generation the keys are named in.
    pub async fn remote_healthy(&self) -> bool {
        self.cache.remote_healthy().await
    }

    /// Invalidates `key` (as `Cache::invalidate`); the stored key it named. A failed L2 call
    /// is queued for retry (see [`Invalidator::wait_confirmed`]).
    pub async fn key(&self, key: &KeyParts) -> Result<String> {
        let stored = self.cache.stored_key(key)?;
        self.cache.invalidate(key).await?;
        Ok(stored)
    }

    /// Invalidates every entry tagged `tag` (as `Cache::invalidate_tag`).
    pub async fn tag(&self, tag: &str) -> Result<()> {
        self.cache.invalidate_tag(tag).await
    }

    /// Invalidates every key whose leading parts are `prefix`'s (as
    /// `Cache::invalidate_prefix`): the keys removed from L2.
    pub async fn prefix(&self, prefix: &KeyParts) -> Result<u64> {
        self.cache.invalidate_prefix(prefix).await
    }

    /// Invalidates the whole namespace (as `Cache::clear`).
    pub async fn clear(&self) -> Result<()> {
        self.cache.clear().await
    }

    /// Invalidations failed against the store and not yet confirmed by a retry.
    pub fn unconfirmed(&self) -> usize {
        self.cache.unconfirmed_invalidations()
    }

    /// Waits until every queued retry is confirmed, or `timeout`; how many are left (0: all
    /// done). A process that exits with some left loses them: run it again.
    pub async fn wait_confirmed(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.unconfirmed();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::replicas::replica_key;
    use crate::store::MemoryStore;
    use bytes::Bytes;

    #[test]
    fn parse_decodes_each_part_of_the_stored_form() {
        let parts = |t: &str| KeyParts::parse(t).map(|k| k.0);
        assert_eq!(parts("42").unwrap(), ["42"]);
        assert_eq!(parts("7:en%3AGB").unwrap(), ["7", "en:GB"]);
        assert_eq!(parts("a%25b:%7Bx%7D").unwrap(), ["a%b", "{x}"]);
        assert_eq!(parts("caf%C3%A9").unwrap(), ["café"]);
        for bad in ["50%", "50%4", "%zz", "%+1", "x%FF", "%C3"] {
            assert!(
                matches!(KeyParts::parse(bad), Err(crate::KeyError::BadEscape(_))),
                "{bad:?} accepted"
            );
        }
        // Round trip: what the encoder writes, parse reads back.
        for key in [("7", "en:GB"), ("a%b", "{x}"), ("x", "")] {
            let stored = crate::encode_key(&key).unwrap();
            assert_eq!(
                KeyParts::parse(&stored).unwrap(),
                KeyParts::new([key.0, key.1])
            );
        }
    }

    #[tokio::test]
    async fn copies_of_hot_keys_go_when_the_count_is_given() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let plain = Invalidator::builder("hot")
            .shared_store(store.clone())
            .build()
            .unwrap();
        let told = Invalidator::builder("hot")
            .shared_store(store.clone())
            .hot_key_replicas(3)
            .build()
            .unwrap();
        let key = KeyParts::parse("7").unwrap();
        let stored = told.stored_key(&key).unwrap();
        let copies: Vec<String> = (1..=3).map(|i| replica_key(&stored, i, 3)).collect();
        let ttl = Duration::from_secs(60);
        for copy in &copies {
            store
                .set(copy, Bytes::from_static(b"x"), ttl)
                .await
                .unwrap();
        }
        plain.key(&key).await.unwrap();
        for copy in &copies {
            assert!(
                store.get(copy).await.unwrap().is_some(),
                "count unknown: kept"
            );
        }
        told.key(&key).await.unwrap();
        for copy in &copies {
            assert_eq!(store.get(copy).await.unwrap(), None, "{copy} survived");
        }
    }
}
