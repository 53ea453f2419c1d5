//! How a read is seen from outside: its `herdwise.get` span and the read metrics.
//!
//! Contract: every public read (`get`, `get_or_load*`, `fetch*`) makes one [`ReadSpan`] and
//! ends it exactly once — [`ReadSpan::ended`] for an answer from L1 (counted by the L1 lookup
//! itself, on the striped hit counters), [`ReadSpan::read`] for a read that went past L1 (counts
//! and times it), [`ReadSpan::failed`] for an error before that. The span is at debug level
//! and costs a disabled-callsite check when nobody listens; its fields are recorded only when
//! it is enabled.

use std::time::Instant;

use tracing::field::Empty;

use crate::cache::read::{Fetched, Source};
use crate::error::{Error, Result};
use crate::metrics::{CacheMetrics, GetResult};

/// The span of one read, and its ending.
pub(crate) struct ReadSpan(tracing::Span);

impl ReadSpan {
    #[inline]
    pub fn new(cache: &str, method: &'static str) -> Self {
        ReadSpan(tracing::debug_span!(
            "herdwise.get",
            cache,
            method,
            result = Empty,
            tier = Empty,
        ))
    }

    /// The span, to instrument the part of the read past L1.
    pub fn span(&self) -> &tracing::Span {
        &self.0
    }

    /// The read was answered by L1 (already counted by the lookup).
    #[inline]
    pub fn ended(&self, result: GetResult) {
        if !self.0.is_disabled() {
            self.record(result, Some(Source::L1));
        }
    }

    /// The read went past L1 and ended with `read`: counted and timed from `started`.
    pub fn fetched<V>(&self, metrics: &CacheMetrics, read: &Result<Fetched<V>>, started: Instant) {
        let (result, source) = match read {
            Ok(fetched) => (fetched.result(), Some(fetched.source)),
            Err(_) => (GetResult::Error, None),
        };
        self.read(metrics, result, source, started);
    }

    /// The read went past L1 and ended with `result`, answered by `source`: counted and timed
    /// from `started`.
    pub fn read(
        &self,
        metrics: &CacheMetrics,
        result: GetResult,
        source: Option<Source>,
        started: Instant,
    ) {
        metrics.read(result, started.elapsed());
        self.record(result, source);
    }

    /// The read failed before reaching past L1 (e.g. an invalid key).
    pub fn failed(&self, metrics: &CacheMetrics, err: Error) -> Error {
        metrics.read(GetResult::Error, std::time::Duration::ZERO);
        self.record(GetResult::Error, None);
        err
    }

    fn record(&self, result: GetResult, source: Option<Source>) {
        self.0.record("result", result.name());
        if let Some(source) = source {
            self.0.record("tier", source.as_str());
        }
    }
}
