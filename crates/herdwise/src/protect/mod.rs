//! Protection of the origin and of Redis against herds.
//!
//! - `flight`: in-process single-flight (one load per key per process).
//! - `lease`: the cross-instance load lease, its guard and the fill waiters.
//! - `origin_limit`: at most n loader calls at once (fixed, or learned from load latency and
//!   failures: the default), a bounded wait, then shed.
//! - `refreshing`: at most one background refresh per key per instance.
//! - `miss_rate`: whether L2 reads mostly find nothing (then a load asks for its lease at once).
//! - `gather`: the loads of one batch read gathered into as few batch-loader calls as possible.
//!
//! Every slot handed out here is released by a guard on drop. Nothing here knows the cache.

pub(crate) mod flight;
pub(crate) mod gather;
pub(crate) mod lease;
pub(crate) mod miss_rate;
pub(crate) mod origin_limit;
pub(crate) mod refreshing;
