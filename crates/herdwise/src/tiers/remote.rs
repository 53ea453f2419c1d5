//! The remote tier as the cache uses it: every call under a deadline, every failure counted.
//!
//! This is the one door to the store. A failed or timed-out read is a miss; a failed write is
//! reported to the caller of this module, which decides (and the cache keeps serving either way).
//! Warnings are throttled so an outage produces a log line a second, not one per request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use tracing::Instrument;

use crate::metrics::{CacheMetrics, CallOutcome, StoreOp};
use crate::store::{
    Announcement, FillOutcome, Publication, SetOutcome, Store, StoreError, TagTable,
};
use crate::tiers::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use crate::tiers::freshness::now_ms;
use crate::tiers::recovery::Recovery;

pub(crate) struct Remote {
    store: Arc<dyn Store>,
    /// One per store node (see `Store::shards`); empty: every call is attempted.
    breakers: Vec<Arc<Breaker>>,
    /// Per node: a stand-in call (see [`PermitGuard`]) is running.
    stand_ins: Vec<Arc<AtomicBool>>,
    deadline: Duration,
    metrics: CacheMetrics,
    namespace: String,
    /// Unix ms of the last failure warning.
    last_warning_ms: AtomicU64,
    /// Per node: Unix ms before which no invalidation is tried past its open breaker (see
    /// [`Remote::call_invalidation`]).
    past_breaker_paused_until_ms: Vec<AtomicU64>,
    /// Per node: invalidations being tried past its open breaker.
    past_breaker_in_flight: Vec<AtomicUsize>,
}

/// After an invalidation tried past an open breaker fails, how long the next ones wait before
/// trying again (rejected at once meanwhile, and retried by the queue).
const PAST_BREAKER_PAUSE: Duration = Duration::from_millis(250);
/// Invalidations tried past an open breaker at once, per node.
const PAST_BREAKER_IN_FLIGHT: usize = 8;

/// One invalidation tried past an open breaker (see [`Remote::call_invalidation`]): frees its
/// place when it ends, and pauses the node's next tries unless it succeeded.
struct PastBreakerSlot<'a> {
    paused: &'a AtomicU64,
    in_flight: &'a AtomicUsize,
    succeeded: bool,
}

impl Drop for PastBreakerSlot<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.paused.store(
                now_ms() + PAST_BREAKER_PAUSE.as_millis() as u64,
                Ordering::Release,
            );
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Remote {
    pub fn new(
        store: Arc<dyn Store>,
        deadline: Duration,
        breaker: Option<BreakerConfig>,
        metrics: CacheMetrics,
        namespace: &str,
        recovery: Arc<Recovery>,
    ) -> Self {
        let shards = store.shards().max(1);
        let breakers = match breaker {
            None => Vec::new(),
            Some(config) => {
                let config = config.with_deadline(deadline);
                (0..shards)
                    .map(|node| {
                        let (gauge, node) = if shards == 1 {
                            (metrics.breaker_state.clone(), None)
                        } else {
                            (metrics.breaker_gauge(node), Some(node))
                        };
                        Arc::new(Breaker::for_node(
                            config,
                            namespace,
                            metrics.clone(),
                            recovery.clone(),
                            gauge,
                            node,
                        ))
                    })
                    .collect()
            }
        };
        Remote {
            breakers,
            stand_ins: (0..shards)
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            past_breaker_paused_until_ms: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            past_breaker_in_flight: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            store,
            deadline,
            metrics,
            namespace: namespace.to_string(),
            last_warning_ms: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The stored bytes (`None` on a miss), or the failure (counted and logged).
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.call(StoreOp::Get, key, self.store.get(key)).await
    }

    /// Many values, one `MGET` per breaker shard (one in all unless the store is sharded with
    /// a breaker per node), all at once, each under the deadline and its shard's breaker: for
    /// each key its value, or the error of its shard's call.
    pub async fn get_many(&self, keys: &[String]) -> Vec<Result<Option<Bytes>, StoreError>> {
        let mut groups: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
        let mut of_shard: HashMap<usize, usize> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let g = *of_shard.entry(self.shard(key)).or_insert_with(|| {
                groups.push((Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[g].0.push(i);
            groups[g].1.push(key.clone());
        }
        let calls = groups
            .iter()
            .map(|(_, group)| self.call(StoreOp::Get, &group[0], self.store.get_many(group)));
        let answers = futures::future::join_all(calls).await;
        let mut out: Vec<Result<Option<Bytes>, StoreError>> =
            keys.iter().map(|_| Ok(None)).collect();
        for ((indices, group), answer) in groups.iter().zip(answers) {
            match answer {
                Ok(values) if values.len() == group.len() => {
                    for (&i, v) in indices.iter().zip(values) {
                        out[i] = Ok(v);
                    }
                }
                Ok(_) => {
                    for &i in indices {
                        out[i] = Err(StoreError::Other(
                            "MGET answered a different number of values".into(),
                        ));
                    }
                }
                Err(e) => {
                    for &i in indices {
                        out[i] = Err(e.clone());
                    }
                }
            }
        }
        out
    }

    pub async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.call(StoreOp::Set, key, self.store.set(key, value, ttl))
            .await
    }

    pub async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError> {
        let fut = self.store.set_if_not_older(key, value, ttl, version);
        self.call(StoreOp::Set, key, fut).await
    }

    pub async fn try_lease_and_get(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), StoreError> {
        let fut = self.store.try_lease_and_get(key, token, ttl);
        self.call(StoreOp::Lease, key, fut).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn fill_leased(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        token: u64,
        channel: &str,
    ) -> Result<FillOutcome, StoreError> {
        let fut = self
            .store
            .fill_leased(key, value, ttl, version, token, channel);
        self.call(StoreOp::Set, key, fut).await
    }

    pub async fn open_fence(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let fut = self.store.open_fence(key, token, ttl);
        self.call(StoreOp::Lease, key, fut).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn fill_fenced(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        fence: u64,
        channel: &str,
    ) -> Result<FillOutcome, StoreError> {
        let fut = self
            .store
            .fill_fenced(key, value, ttl, version, fence, channel);
        self.call(StoreOp::Set, key, fut).await
    }

    pub async fn extend_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.call(
            StoreOp::Lease,
            key,
            self.store.extend_lease(key, token, ttl),
        )
        .await
    }

    /// Gives a lease back (compare-and-delete), through the breaker: nothing is sent to a Redis
    /// the breaker has shut out. A release the breaker rejects is retried by the lease's
    /// guard once the breaker lets calls through again (see `protect::lease`).
    pub async fn release_lease(&self, key: &str, token: u64) -> Result<(), StoreError> {
        self.call(StoreOp::Lease, key, self.store.release_lease(key, token))
            .await
    }

    /// The release that follows a lease attempt whose outcome is unknown (it timed out, or its
    /// caller was dropped while it was on the wire): the one call that does not ask the
    /// breaker. Its job is to run right after that `SET NX`, which is already queued on the
    /// connection of a slow or frozen Redis — an open breaker would strand the lease for its
    /// whole TTL, every other instance waiting it out. Under the deadline; failures counted.
    pub async fn release_after_unknown(&self, key: &str, token: u64) {
        let started = Instant::now();
        let call = self.store.release_lease(key, token);
        let result = tokio::time::timeout(self.deadline, call)
            .instrument(self.span(StoreOp::Lease))
            .await;
        let outcome = match result {
            Ok(Ok(())) => CallOutcome::Ok,
            Ok(Err(_)) => CallOutcome::Error,
            Err(_) => CallOutcome::Timeout,
        };
        self.metrics
            .l2_call(StoreOp::Lease, outcome, Some(started.elapsed()));
    }

    /// An announcement to the other instances (tried past an open breaker: see
    /// [`Remote::call_invalidation`]).
    pub async fn publish(&self, channel: &str, message: Bytes) -> Result<(), StoreError> {
        let fut = self.store.publish(channel, message);
        self.call_invalidation(StoreOp::Publish, channel, fut).await
    }

    pub async fn stream_append(
        &self,
        stream: &str,
        message: Bytes,
        max_len: usize,
    ) -> Result<(), StoreError> {
        let fut = self.store.stream_append(stream, message, max_len);
        self.call_invalidation(StoreOp::Publish, stream, fut).await
    }

    /// A tag invalidation and its announcement (tried past an open breaker: see
    /// [`Remote::call_invalidation`]).
    pub async fn bump_tag(
        &self,
        table: &str,
        tag: &str,
        mark_ttl: Duration,
        announce: Option<Announcement<'_>>,
    ) -> Result<u64, StoreError> {
        let fut = self.store.bump_tag(table, tag, mark_ttl, announce);
        self.call_invalidation(StoreOp::Tags, table, fut).await
    }

    pub async fn server_id(&self) -> Result<Option<String>, StoreError> {
        self.call(StoreOp::Admin, "", self.store.server_id()).await
    }

    pub async fn read_tags(
        &self,
        table: &str,
        tags: &[&str],
        known_generation: u64,
    ) -> Result<TagTable, StoreError> {
        let fut = self.store.read_tags(table, tags, known_generation);
        self.call(StoreOp::Tags, table, fut).await
    }

    pub async fn advance_generation(&self, table: &str, at_least: u64) -> Result<u64, StoreError> {
        let fut = self.store.advance_generation(table, at_least);
        self.call(StoreOp::Admin, table, fut).await
    }

    /// The breaker's state (`Closed` when there is none); with several store nodes, the
    /// worst of theirs (`Open` if any is open).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker_states()
            .into_iter()
            .max_by_key(|state| match state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            })
            .unwrap_or(BreakerState::Closed)
    }

    /// Some node's breaker is not closed (the remote tier is out, or being probed).
    pub fn degraded(&self) -> bool {
        self.breakers
            .iter()
            .any(|b| !matches!(b.state(), BreakerState::Closed))
    }

    /// Whether the breaker of `key`'s node is closed (or there is none): a call now is sent.
    pub fn closed_for(&self, key: &str) -> bool {
        self.breakers
            .get(self.shard(key))
            .is_none_or(|b| matches!(b.state(), BreakerState::Closed))
    }

    /// Each store node's breaker state (empty without a breaker).
    pub fn breaker_states(&self) -> Vec<BreakerState> {
        self.breakers.iter().map(|b| b.state()).collect()
    }

    /// The node `key` lives on.
    fn shard(&self, key: &str) -> usize {
        match self.breakers.len() {
            0 | 1 => 0,
            n => self.store.shard_of(key) % n,
        }
    }

    /// Prefix deletion walks the keyspace in batches: it gets a deadline of its own (and is not
    /// judged by the breaker, which it would trip for being long).
    pub async fn delete_prefix(&self, prefix: &str, deadline: Duration) -> Result<u64, StoreError> {
        // Walks every node: skipped only when no node can answer (a walk that fails on one
        // node is retried whole).
        if !self.breakers.is_empty()
            && self
                .breakers
                .iter()
                .all(|b| b.state() == BreakerState::Open)
        {
            self.metrics
                .l2_call(StoreOp::Scan, CallOutcome::Rejected, None);
            return Err(StoreError::CircuitOpen);
        }
        let started = Instant::now();
        let walk = tokio::time::timeout(deadline, self.store.delete_prefix(prefix))
            .instrument(self.span(StoreOp::Scan))
            .await;
        let (outcome, err) = match walk {
            Ok(Ok(n)) => {
                self.metrics
                    .l2_call(StoreOp::Scan, CallOutcome::Ok, Some(started.elapsed()));
                return Ok(n);
            }
            Ok(Err(err)) => (CallOutcome::Error, err),
            Err(_) => (CallOutcome::Timeout, StoreError::Timeout(deadline)),
        };
        self.metrics
            .l2_call(StoreOp::Scan, outcome, Some(started.elapsed()));
        self.warn_throttled(StoreOp::Scan, prefix, &err);
        Err(err)
    }

    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.call(StoreOp::Delete, key, self.store.delete(key))
            .await
    }

    /// [`Remote::set`] with `then` published after the write (in its round trip where the store
    /// can): whether it was published.
    pub async fn set_and_publish(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        then: Publication<'_>,
    ) -> Result<bool, StoreError> {
        let fut = self.store.set_and_publish(key, value, ttl, then);
        self.call(StoreOp::Set, key, fut).await
    }

    /// [`Remote::set_if_not_older`] with `then` published after it, whatever the outcome.
    pub async fn set_if_not_older_and_publish(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        then: Publication<'_>,
    ) -> Result<(SetOutcome, bool), StoreError> {
        let fut = self
            .store
            .set_if_not_older_and_publish(key, value, ttl, version, then);
        self.call(StoreOp::Set, key, fut).await
    }

    /// [`Remote::delete`] with `then` published after it.
    pub async fn delete_and_publish(
        &self,
        key: &str,
        then: Publication<'_>,
    ) -> Result<(bool, bool), StoreError> {
        self.call(
            StoreOp::Delete,
            key,
            self.store.delete_and_publish(key, then),
        )
        .await
    }

    /// A call that tells the other instances to drop what they hold: an announcement, a tag
    /// bump. Asks the breaker like any call; but when the node's breaker is not closed it is
    /// tried anyway, under the deadline and outside the breaker's count (the half-open probe is
    /// left to reads). A breaker opened by timeouts on a slow but working Redis (a saturated
    /// machine, a stalled network path) must not leave the other instances serving from L1 what
    /// this one invalidated until it closes — for over a second, seen in the torture run under
    /// load. Deletes and writes of values stay behind the breaker (a failed delete is announced
    /// as pending instead, see `Invalidation::PendingKey`, and a write that could not reach L2
    /// becomes such an invalidation), so what passes here says "drop it" or "pending", or
    /// "done" for a delete that went through. At most [`PAST_BREAKER_IN_FLIGHT`] such tries run
    /// at once per node, and after one fails (or is dropped unfinished) the node's next ones are
    /// rejected for [`PAST_BREAKER_PAUSE`] (the retry queue sends them later): against a dead
    /// Redis each would otherwise pay the whole deadline.
    async fn call_invalidation<T>(
        &self,
        op: StoreOp,
        key: &str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let shard = self.shard(key);
        let closed = self
            .breakers
            .get(shard)
            .is_none_or(|b| b.state() == BreakerState::Closed);
        let (Some(paused), Some(in_flight), false) = (
            self.past_breaker_paused_until_ms.get(shard),
            self.past_breaker_in_flight.get(shard),
            closed,
        ) else {
            return self.call(op, key, fut).await;
        };
        let admitted = now_ms() >= paused.load(Ordering::Acquire)
            && in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < PAST_BREAKER_IN_FLIGHT).then_some(n + 1)
                })
                .is_ok();
        if !admitted {
            self.metrics.l2_call(op, CallOutcome::Rejected, None);
            return Err(StoreError::CircuitOpen);
        }
        // Pauses the node unless disarmed by a success: a try dropped on the way counts as
        // failed (its command may still be queued on a frozen connection).
        let mut slot = PastBreakerSlot {
            paused,
            in_flight,
            succeeded: false,
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.deadline, fut)
            .instrument(self.span(op))
            .await;
        slot.succeeded = matches!(result, Ok(Ok(_)));
        drop(slot);
        self.outcome(op, key, result, started)
    }

    async fn call<T>(
        &self,
        op: StoreOp,
        key: &str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Held across the await: if this future is dropped mid-call, the guard hands a
        // half-open probe back instead of leaving the breaker waiting for it for good.
        let shard = self.shard(key);
        let permit = match self.breakers.get(shard) {
            None => None,
            Some(breaker) => match breaker.permit() {
                Permit::Rejected => {
                    self.metrics.l2_call(op, CallOutcome::Rejected, None);
                    return Err(StoreError::CircuitOpen);
                }
                permit => Some(PermitGuard {
                    remote: self,
                    breaker,
                    stand_in: &self.stand_ins[shard],
                    key,
                    permit: Some(permit),
                    started: Instant::now(),
                }),
            },
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.deadline, fut)
            .instrument(self.span(op))
            .await;
        if let Some(mut guard) = permit {
            guard.record(!matches!(result, Ok(Ok(_))));
        }
        self.outcome(op, key, result, started)
    }

    /// The span of one call, after OpenTelemetry's database conventions (at debug level: a
    /// read's span tree is opt-in, `herdwise=debug`).
    fn span(&self, op: StoreOp) -> tracing::Span {
        tracing::debug_span!(
            "herdwise.l2",
            otel.name = op.name(),
            otel.kind = "client",
            db.system.name = self.store.kind(),
            db.operation.name = op.name(),
            server.address = self.store.address(),
            cache = %self.namespace,
        )
    }

    /// A call's result under the deadline, its failure counted and logged.
    fn outcome<T>(
        &self,
        op: StoreOp,
        key: &str,
        result: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
        started: Instant,
    ) -> Result<T, StoreError> {
        let elapsed = Some(started.elapsed());
        let err = match result {
            Ok(Ok(value)) => {
                self.metrics.l2_call(op, CallOutcome::Ok, elapsed);
                return Ok(value);
            }
            Ok(Err(err)) => {
                self.metrics.l2_call(op, CallOutcome::Error, elapsed);
                err
            }
            Err(_) => {
                self.metrics.l2_call(op, CallOutcome::Timeout, elapsed);
                StoreError::Timeout(self.deadline)
            }
        };
        self.warn_throttled(op, key, &err);
        Err(err)
    }

    fn warn_throttled(&self, op: StoreOp, key: &str, err: &StoreError) {
        let now = now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                namespace = %self.namespace,
                store = self.store.kind(),
                ?op,
                key,
                error = %err,
                "store call failed; serving from L1/origin (further failures this second not logged)"
            );
        }
    }
}

/// The key a stand-in reads for a call on `key`: absent (a cheap miss of type string, whatever
/// `key` holds: a tag table is a hash, an event stream a stream), and routed like `key` — its
/// hash tag, or the whole key — so it reaches the same cluster slot and store node. Under
/// `herdwise:`, so the documented ACL key patterns cover it (`~herdwise:*`).
fn stand_in_key(key: &str) -> String {
    let routing = key
        .find('{')
        .and_then(|open| {
            let len = key[open + 1..].find('}')?;
            (len > 0).then(|| &key[open + 1..open + 1 + len])
        })
        .unwrap_or(key);
    format!("herdwise:{{{routing}}}:stand-in")
}

/// A breaker permit for one call in flight: recorded when the call ends.
///
/// A call dropped before it ends (a request timeout shorter than the store deadline, a
/// cancelled task) has no outcome of its own. If it was slow already it counts as slow; else its
/// permit goes to a *stand-in*: one background read of an absent key routed like the call's
/// (so on the node the call went to), under the store deadline, recorded in its place (at most one runs at a time per
/// node, so this costs nothing per request). Without
/// it a frozen store would never trip the breaker for callers whose timeouts are shorter than
/// the deadline, and a cancelled half-open probe would only hand its turn to the next caller,
/// who may be cancelled too. Without a runtime to run it on, the permit is handed back.
struct PermitGuard<'a> {
    remote: &'a Remote,
    breaker: &'a Arc<Breaker>,
    stand_in: &'a Arc<AtomicBool>,
    key: &'a str,
    permit: Option<Permit>,
    started: Instant,
}

impl PermitGuard<'_> {
    fn record(&mut self, failed: bool) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, failed, self.started.elapsed());
        }
    }
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let took = self.started.elapsed();
        if self.breaker.is_slow(took) {
            return self.breaker.abandon(permit, took);
        }
        let remote = self.remote;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !self.stand_in.swap(true, Ordering::AcqRel) => runtime,
            _ => return self.breaker.abandon(permit, took),
        };
        let (breaker, store, running, key) = (
            self.breaker.clone(),
            remote.store.clone(),
            self.stand_in.clone(),
            stand_in_key(self.key),
        );
        let deadline = remote.deadline;
        // The guards exist before the task does: a task its runtime drops unrun (shutting down)
        // still clears the flag and hands the permit back — a probe must never stay out.
        let running = ClearOnDrop(running);
        let mut guard = StandIn {
            breaker,
            permit: Some(permit),
            started: Instant::now(),
        };
        runtime.spawn(async move {
            let _running = running;
            guard.started = Instant::now();
            let read = tokio::time::timeout(deadline, store.get(&key)).await;
            if let Some(permit) = guard.permit.take() {
                let took = guard.started.elapsed();
                guard
                    .breaker
                    .record(permit, !matches!(read, Ok(Ok(_))), took);
            }
        });
    }
}

/// A stand-in's permit: handed back if the stand-in ends without recording it.
struct StandIn {
    breaker: Arc<Breaker>,
    permit: Option<Permit>,
    started: Instant,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.abandon(permit, self.started.elapsed());
        }
    }
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::stand_in_key;

    #[test]
    fn a_stand_in_is_routed_like_its_key_and_under_the_acl_patterns() {
        assert_eq!(
            stand_in_key("herdwise:{ns:cat}:inv"),
            "herdwise:{ns:cat}:stand-in"
        );
        assert_eq!(stand_in_key("cat:v1:7"), "herdwise:{cat:v1:7}:stand-in");
        assert_eq!(
            stand_in_key("{cat:v1:7}:lease"),
            "herdwise:{cat:v1:7}:stand-in"
        );
        for key in ["herdwise:{ns:cat}:inv", "cat:v1:7", "{cat:v1:7}:lease"] {
            assert!(stand_in_key(key).starts_with("herdwise:"));
        }
    }
}
