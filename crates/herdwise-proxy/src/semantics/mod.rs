//! HTTP caching semantics, as pure functions: RFC 9111 (storage, freshness, validation, Vary,
//! invalidation), RFC 9110's conditional requests and hop-by-hop fields, RFC 5861's
//! stale-while-revalidate / stale-if-error, RFC 9213's targeted cache-control fields.
//!
//! Contract: nothing here does I/O or reads a clock; the request handler (`crate::handler`)
//! calls these and turns the answers into calls on `herdwise::Cache`.

pub mod conditional;
pub mod directives;
pub mod freshness;
pub mod hop;
pub mod storable;
pub mod vary;
