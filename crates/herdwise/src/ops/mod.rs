//! Operations: what an operator of the cache relies on beyond single reads.
//!
//! - `hotkeys`: a sampled count-min sketch of the most-read keys.
//! - `sentinel`: whether the remote tier came back without its data, after an outage.
//! - `replicas`: copies of hot keys in L2.
//! - `verify`: the verifier's sampling, queue and findings.
//!
//! Nothing here knows the cache.

pub(crate) mod hotkeys;
pub(crate) mod replicas;
pub(crate) mod sentinel;
pub(crate) mod verify;
