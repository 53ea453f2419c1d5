//! The tiers: typed entries in and out of L1 and L2.
//!
//! - `key`: the key space (typed keys to stored keys, the namespace generation).
//! - `codec`: values to payload bytes and back (the envelope around them, shared with the
//!   stores, is the crate's leaf module `envelope`).
//! - `encrypted` (feature `encryption`): a codec wrapper that encrypts values at rest.
//! - `freshness`: TTLs, jitter, stale windows, XFetch.
//! - `local`: L1, bounded by the bytes it holds, with invalidation epochs and demotion;
//!   `recovery`: the demotion era and the window after a remote-tier recovery.
//! - `remote` (with `breaker`): the one door to the store — deadline, circuit breaker, failure
//!   accounting. Nothing else calls the store.
//!
//! Nothing here knows the cache that composes it.

pub(crate) mod breaker;
pub mod codec;
#[cfg(feature = "encryption")]
pub mod encrypted;

pub(crate) mod freshness;
pub mod key;
pub(crate) mod local;
pub(crate) mod recovery;
pub(crate) mod remote;
