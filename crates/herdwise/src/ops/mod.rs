//! Operations: what an operator of the cache relies on beyond single reads.
//!
//! - `hotkeys`: a sampled count-min sketch of the most-read keys.
//! - `recovery`: L1 demotion and the window after a remote-tier recovery.
//! - `replicas`: copies of hot keys in L2.
//!
//! Nothing here knows the cache.

pub(crate) mod hotkeys;
pub(crate) mod recovery;
pub(crate) mod replicas;
