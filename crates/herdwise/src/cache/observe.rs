//! How a read is seen from outside: its `herdwise.get` span and the read metrics.
//!
//! Contract: every public read (`get`, `get_or_load*`, `fetch*`) makes one [`ReadSpan`] and
//! ends it exactly once — [`ReadSpan::ended`] for an answer from L1 (counted by the L1 lookup
//! itself, on the striped hit counters), [`ReadSpan::failed`] for an error before that, and for
//! a read that goes past L1 a [`PastL1`] guard, taken when it leaves L1, that counts and times
//! it when it ends ([`PastL1::read`], [`PastL1::fetched`]) — or, dropped before (the read's
//! future was dropped: a caller's timeout), as `cancelled`. The span is at debug level
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

    /// The read leaves L1 now: the guard counts and times it when it ends, or when dropped.
    pub fn past_l1<'a>(&'a self, metrics: &'a CacheMetrics) -> PastL1<'a> {
        PastL1 {
            span: self,
            metrics,
            started: Instant::now(),
            armed: true,
        }
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

/// A read past L1, counted and timed once: when it ends, or as `cancelled` if dropped first.
pub(crate) struct PastL1<'a> {
    span: &'a ReadSpan,
    metrics: &'a CacheMetrics,
    started: Instant,
    armed: bool,
}

impl PastL1<'_> {
    /// The read ended with `read`.
    pub fn fetched<V>(self, read: &Result<Fetched<V>>) {
        let (result, source) = match read {
            Ok(fetched) => (fetched.result(), Some(fetched.source)),
            Err(_) => (GetResult::Error, None),
        };
        self.read(result, source);
    }

    /// The read ended with `result`, answered by `source`.
    pub fn read(mut self, result: GetResult, source: Option<Source>) {
        self.armed = false;
        self.metrics.read(result, self.started.elapsed());
        self.span.record(result, source);
    }
}

impl Drop for PastL1<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.metrics
                .read(GetResult::Cancelled, self.started.elapsed());
            self.span.record(GetResult::Cancelled, None);
        }
    }
}
