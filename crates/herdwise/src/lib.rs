//! # Herdwise
//!
//! A multi-tier cache for Rust services with the production defenses built in: a byte-bounded
//! in-process L1 in front of a shared L2 (Redis, or an embedded in-memory store) in front of your
//! origin, with single-flight loads, negative caching, TTL jitter, deadlines on every remote call,
//! and corrupted bytes treated as misses — so no team writes these again at a thousand call sites.
//!
//! ```
//! use std::time::Duration;
//! use herdwise::{Cache, MemoryStore};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Product { id: u64, name: String }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herdwise::Error> {
//! let cache: Cache<u64, Product> = Cache::builder("catalog")
//!     .store(MemoryStore::new())        // or RedisStore::connect("redis://127.0.0.1:6379").await?
//!     .ttl(Duration::from_secs(300))
//!     .l1_max_bytes(64 << 20)
//!     .build()?;
//!
//! let product = cache
//!     .get_or_load(&42, |id| async move {
//!         // Ask the database. Ok(None) = "no such product" (cached briefly as a negative entry).
//!         Ok::<_, std::io::Error>(Some(Product { id: *id, name: "lamp".into() }))
//!     })
//!     .await?;
//! assert_eq!(product.map(|p| p.id), Some(42));
//! # Ok(()) }
//! ```
//!
//! ## Values come back as `Arc<V>`
//!
//! Every caller of a key shares one copy of its value (L1 holds it once; a hit is a reference
//! count, not a clone). To hand it to a web framework:
//! - serialize through the reference: `Json(&*product)` in axum (`Json<&Product>` is a
//!   response: `&T` is `Serialize`), `HttpResponse::Ok().json(&*product)` in actix-web;
//! - or enable serde's `rc` feature (`serde = { version = "1", features = ["derive", "rc"] }`)
//!   and return `Json(product)` as it is: `Arc<T>` is `Serialize` then;
//! - or take an owned value where one is needed: `Arc::unwrap_or_clone(product)` (clones only
//!   if the value is shared, which a cached one usually is).
//!
//! ```
//! use std::sync::Arc;
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! # struct Product { id: u64, name: String }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let cache: herdwise::Cache<u64, Product> = herdwise::Cache::builder("catalog").build()?;
//! let product: Option<Arc<Product>> = cache
//!     .get_or_load(&42, |id| async move {
//!         Ok::<_, std::io::Error>(Some(Product { id: *id, name: "lamp".into() }))
//!     })
//!     .await?;
//! let product = product.ok_or("not found")?;
//! let body = serde_json::to_string(&*product)?; // what `Json(&*product)` does
//! assert_eq!(body, r#"{"id":42,"name":"lamp"}"#);
//! let owned: Product = Arc::unwrap_or_clone(product); // an owned copy, where one is needed
//! assert_eq!(owned.name, "lamp");
//! # Ok(()) }
//! ```
//!
//! ## Modules, one concept each
//! - [`key`]: typed keys, namespace + schema version, validation.
//! - [`envelope`]: the stored bytes (header with freshness and version metadata, checksum,
//!   compression).
//! - [`codec`]: payload formats (postcard by default, JSON).
//! - [`store`]: the L2 trait and its implementations ([`MemoryStore`], [`RedisStore`]).
//! - [`loader`]: loaders registered on the cache (for `fetch` and background refresh).
//! - [`metrics`]: the name of every metric.
//! - internal, one folder per part: `tiers` (the key space, codec, freshness, L1, the recovery
//!   era, and the remote door: deadline, circuit breaker, failure accounting), `protect`
//!   (single-flight, leases and fill waiters, the origin limit, per-key refresh slots),
//!   `coherence` (the backplane, the tag ledger, the invalidation retry queue), `ops` (hot keys,
//!   hot-key copies, the recovery sentinel), and `cache`: the public `Cache` and its builder, the
//!   read, write, refresh and warm paths, and the glue the parts call back through.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod coherence;
mod error;
pub mod loader;
pub mod metrics;
mod ops;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod protect;
pub mod store;
mod throttle;
mod tiers;

pub mod envelope;
pub use tiers::{codec, key};

pub use cache::batch::{BatchLoadError, BatchLoaded, MAX_BATCH_KEYS};
pub use cache::builder::{
    CacheBuilder, DEFAULT_FAIL_SAFE_THROTTLE, DEFAULT_HOT_KEYS, DEFAULT_HOT_KEY_SHIELD_BYTES,
    DEFAULT_HOT_KEY_SHIELD_LIFE, DEFAULT_L1_MAX_BYTES, DEFAULT_L1_TTL_CAP, DEFAULT_LEASE_POLL,
    DEFAULT_LEASE_TTL, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_VALUE_BYTES, DEFAULT_NEGATIVE_TTL,
    DEFAULT_OVERSIZED_IN_L1, DEFAULT_RECOVERY_WINDOW, DEFAULT_STALE_IF_ERROR, DEFAULT_TTL,
    DEFAULT_TTL_JITTER, DEFAULT_XFETCH_BETA,
};
pub use cache::invalidator::{Invalidator, InvalidatorBuilder, KeyParts};
pub use cache::read::{Fetched, LoadOptions, Source};
pub use cache::refresh::RefreshAhead;
pub use cache::warm::{ReadinessProbe, RewarmPolicy, WarmOptions, WarmReport};
pub use cache::write::{WriteOptions, WrittenThrough};
pub use cache::{Cache, WriteOutcome};
pub use codec::{Codec, CodecError, Json, Postcard};
pub use coherence::backplane::BackplaneTransport;
pub use coherence::tags::{DEFAULT_MAX_TAGS_PER_ENTRY, DEFAULT_MAX_TAG_BYTES};
pub use envelope::Compression;
pub use error::{Error, Result};
pub use key::{encode_key, CacheKey, KeyEncoder, KeyError};
pub use loader::{Loader, LoaderError};
pub use ops::verify::{Mismatch, VerifyOptions, VerifyReport};
pub use protect::origin_limit::AdaptiveLimit;
pub use store::{
    Announcement, MemoryStore, RedisConnection, RedisStore, RedisStoreBuilder, SetOutcome,
    ShardedStore, Store, StoreError, TagTable, REDIS_URL_ENV,
};
pub use tiers::breaker::{BreakerConfig, BreakerState};
#[cfg(feature = "encryption")]
pub use tiers::encrypted::{Encrypted, EncryptionKeys, ENCRYPTED_CODEC_ID};
