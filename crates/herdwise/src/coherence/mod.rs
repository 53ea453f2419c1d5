//! Coherence: what keeps every instance's tiers in step with the origin's writes.
//!
//! - `backplane`: invalidation events to and from the other instances (pub/sub or streams),
//!   gaps and lost subscriptions noticed.
//! - `tags`: the tag clock, marks and this instance's ledger of them.
//! - `keyspace`: Redis keyspace notifications, so that any program's writes reach L1.
//! - `retry`: invalidations that failed against L2, retried until applied or past their reach.
//! - `sequence`: each sender's message numbers, lost ones told from late ones.
//! - `pending`: deletes another instance announced as not applied yet (their L2 values held).
//!
//! Nothing here knows the cache: the cache hands each part the narrow interface it calls back.

pub mod backplane;
pub(crate) mod keyspace;
pub mod pending;
pub mod retry;
pub(crate) mod sequence;
pub mod tags;
