//! The invalidation backplane: every write or invalidation is announced to the other instances,
//! which drop the key from their L1.
//!
//! Messages are `sender|sequence@sent_ms|kind|payload` on the namespace's channel
//! (`herdwise:{ns:<ns>}:inv`): the sender id tells an instance to ignore its own messages,
//! per-sender sequence numbers reveal lost ones (a number skipped and not seen within a short
//! grace: one sender's messages may overtake each other, see `sequence`), and the sender's
//! wall-clock time of sending (unix ms; optional when parsing) gives the delivery lag
//! (`herdwise_backplane_lag_seconds`). Whenever events may have been missed — a sequence gap, a
//! resubscription after a disconnect or a Redis restart, a listener that fell behind — the
//! instance demotes its
//! whole L1 for the namespace (see `recovery`): every entry is checked against L2 before it is
//! served again. So a lost event costs an L2 read per key, never stale data for longer than it
//! takes to notice; and the L1 TTL cap remains the last net. A subscription the store reports
//! lost (a closed connection, or one that stopped answering its health check) demotes L1 at
//! once, and again every second until the subscription is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::coherence::sequence::Sequences;
use crate::coherence::tags::TagLedger;
use crate::metrics::CacheMetrics;
use crate::store::{Publication, Store, StoreEvent};
use crate::tiers::recovery::Recovery;
use crate::tiers::recovery::KEYSPACE;
use crate::tiers::remote::Remote;

/// What an event invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidation<'a> {
    /// One stored key.
    Key(&'a str),
    /// One stored key whose L2 delete failed and is being retried: until it is announced done
    /// (`Key`), the receivers do not take the key's L2 value either.
    PendingKey(&'a str),
    /// The whole namespace: it moved to this generation.
    Clear(u64),
    /// Every stored key starting with this.
    Prefix(&'a str),
}

/// Message kind of a tag invalidation: `t`, payload `<clock>|<tag>`. Sent by the store itself, in
/// the script that invalidates the tag (see `Backplane::tag_announcement`).
const TAG_KIND: &str = "t";

/// While the subscription is lost, how often L1 is demoted again.
const DEAF_DEMOTE: Duration = Duration::from_secs(1);

/// How often an instance re-reads the namespace generation, in case a clear event was lost.
const GENERATION_RESYNC: Duration = Duration::from_secs(10);

/// How invalidation events travel between instances.
///
/// ```
/// use herdwise::{BackplaneTransport, Cache};
/// let cache: Cache<u64, String> = Cache::builder("users")
///     .backplane_transport(BackplaneTransport::Streams { max_len: 10_000 })
///     .build()
///     .unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackplaneTransport {
    /// Redis pub/sub on `herdwise:{ns:<namespace>}:inv` (the default): cheapest, fire-and-forget. An
    /// instance that loses its subscription, even for a moment, re-checks its L1 against L2 when
    /// it is back.
    #[default]
    PubSub,
    /// A Redis Stream, `herdwise:{ns:<namespace>}:events`, trimmed to about `max_len` entries.
    /// Each event is stored, so an instance that loses its connection resumes after the last
    /// event it read and keeps its L1 — unless the events it missed were trimmed meanwhile (or
    /// the stream was lost with Redis' data), which it detects and answers by re-checking L1.
    Streams {
        /// About how many events the stream keeps: how far behind an instance may fall and
        /// still resume (at 1 000 invalidations a second, 10 000 is ten seconds).
        max_len: usize,
    },
}

/// The pub/sub channel of a namespace's events: under the namespace's hash tag, so that on a
/// Cluster or a sharded store it is published through the node that runs the namespace's tag
/// scripts, which publish to it too (one sender's events then travel one path, in order).
pub(crate) fn channel_name(namespace: &str) -> String {
    format!("herdwise:{{ns:{namespace}}}:inv")
}

/// The stream of a namespace's events (in the namespace's coordination slot, see `tags`).
fn stream_key(namespace: &str) -> String {
    format!("herdwise:{{ns:{namespace}}}:events")
}

/// What the listener needs from the cache it serves (the cache implements it; the backplane
/// never sees the cache's state). The listener holds it weakly and ends with the cache.
pub(crate) trait Subscriber: Send + Sync + 'static {
    /// The tag ledger the events complete.
    fn tags(&self) -> &TagLedger;
    /// Demoted when events may have been missed.
    fn recovery(&self) -> &Recovery;
    fn metrics(&self) -> &CacheMetrics;
    fn namespace(&self) -> &str;
    /// Another instance invalidated this stored key.
    fn drop_key(&self, stored_key: &str);
    /// Another instance invalidated this stored key, but its L2 delete is still to go through:
    /// drop it and do not take its L2 value until a `drop_key` for it.
    fn hold_key(&self, stored_key: &str);
    /// Someone (any program) changed this stored key in L2: drop it from L1 (a pending
    /// delete's hold stays).
    fn key_changed(&self, stored_key: &str);
    /// Another instance invalidated every stored key starting with `prefix`.
    fn drop_prefix(&self, prefix: &str);
    /// Another instance cleared the namespace: it is at `generation` now.
    fn cleared(&self, generation: u64);
    /// Reads the namespace generation and the tag clock from the store again; the clock, once
    /// the store answered.
    fn resync(&self) -> BoxFuture<'_, Option<u64>>;
}

/// One instance's end of the backplane.
pub(crate) struct Backplane {
    store: Arc<dyn Store>,
    /// The pub/sub channel, or the stream.
    channel: String,
    /// `Some` for a stream: its approximate length.
    stream_max_len: Option<usize>,
    sender: u64,
    sequence: AtomicU64,
    /// A listener runs (cleared if it is dropped: its runtime shut down).
    listening: Arc<AtomicBool>,
    /// Listen to the store's keyspace notifications for the namespace's keys too.
    keyspace: Option<String>,
}

impl Backplane {
    pub fn new(store: Arc<dyn Store>, namespace: &str, transport: BackplaneTransport) -> Self {
        let (channel, stream_max_len) = match transport {
            BackplaneTransport::PubSub => (channel_name(namespace), None),
            BackplaneTransport::Streams { max_len } => (stream_key(namespace), Some(max_len)),
        };
        Backplane {
            store,
            channel,
            stream_max_len,
            sender: rand::random(),
            sequence: AtomicU64::new(0),
            listening: Arc::new(AtomicBool::new(false)),
            keyspace: None,
        }
    }

    /// Listens to the store's keyspace notifications for `namespace`'s keys as well (see
    /// `keyspace`).
    pub fn with_keyspace_notifications(mut self, namespace: &str) -> Self {
        self.keyspace = Some(crate::coherence::keyspace::pattern(namespace));
        self
    }

    /// Starts listening (once, inside a Tokio runtime; a later call retries if there was none).
    pub fn ensure_listening<S: Subscriber>(&self, subscriber: &Arc<S>) {
        if self.listening.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let events = match self.stream_max_len {
            None => self.store.subscribe(&self.channel),
            Some(_) => self.store.stream_subscribe(&self.channel),
        };
        match events {
            Some(events) => {
                if self.store.confirms_subscriptions() {
                    // Until the store confirms the subscription, nothing put in L1 is trusted.
                    subscriber.recovery().set_deaf(true);
                }
                let subscriber: Weak<dyn Subscriber> =
                    Arc::downgrade(subscriber) as Weak<dyn Subscriber>;
                // Made before the task: one its runtime drops (unrun or mid-way) leaves this
                // instance deaf, and says so.
                let ended = ListenerEnded {
                    listening: self.listening.clone(),
                    subscriber: subscriber.clone(),
                    armed: true,
                };
                let confirmed = self.store.confirms_subscriptions();
                if let Some(pattern) = &self.keyspace {
                    match self.store.subscribe_keyspace(pattern) {
                        Some(changes) => {
                            if let (true, Some(s)) = (confirmed, subscriber.upgrade()) {
                                // Deaf to external writers until the store confirms it.
                                s.recovery().set_deaf_to(KEYSPACE, true);
                            }
                            runtime.spawn(crate::coherence::keyspace::listen(
                                subscriber.clone(),
                                changes,
                            ));
                        }
                        None => tracing::warn!(
                            kind = self.store.kind(),
                            "store has no keyspace notifications: external writes reach L1 \
                             only by the L1 TTL cap"
                        ),
                    }
                }
                runtime.spawn(listen(subscriber, events, self.sender, confirmed, ended));
            }
            None => tracing::warn!(
                channel = %self.channel,
                "store has no messaging: other instances' L1s rely on the L1 TTL cap"
            ),
        }
    }

    /// The channel (or stream) and message prefix for a tag invalidation that the store
    /// announces itself (it appends `<clock>|<tag>`). Takes a sequence number: if the store call
    /// fails, the receivers see a gap (once the number's grace to arrive late is over) and start
    /// over, which is the safe side.
    pub fn tag_announcement(&self) -> (&str, Option<usize>, String) {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let sent = crate::tiers::freshness::now_ms();
        let prefix = format!("{:x}|{sequence}@{sent}|{TAG_KIND}|", self.sender);
        (&self.channel, self.stream_max_len, prefix)
    }

    /// Announces an invalidation to the other instances; `false` if the store did not take it
    /// (the receivers see a gap once this sender's next message arrived and the missing
    /// number's grace to arrive late is over).
    pub async fn publish(&self, remote: &Remote, what: Invalidation<'_>) -> bool {
        let message = self.message(what);
        let sent = match self.stream_max_len {
            None => remote.publish(&self.channel, message).await,
            Some(max_len) => remote.stream_append(&self.channel, message, max_len).await,
        };
        sent.is_ok()
    }

    /// The next message of this sender, announcing `what` (takes a sequence number: a message
    /// that is never sent shows as a gap, which is the safe side).
    fn message(&self, what: Invalidation<'_>) -> Bytes {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let sent = crate::tiers::freshness::now_ms();
        let head = format!("{:x}|{sequence}@{sent}", self.sender);
        Bytes::from(match what {
            Invalidation::Key(key) => format!("{head}|k|{key}"),
            Invalidation::PendingKey(key) => format!("{head}|u|{key}"),
            Invalidation::Clear(generation) => format!("{head}|c|{generation}"),
            Invalidation::Prefix(prefix) => format!("{head}|p|{prefix}"),
        })
    }

    /// The announcement of `what` to hand to the write that makes it (see
    /// [`Store::set_and_publish`]), so that write and event take one round trip: on pub/sub
    /// only (a stream's entry is a write of its own, in the namespace's slot).
    pub fn with_write(&self, what: Invalidation<'_>) -> Option<Publication<'_>> {
        if self.stream_max_len.is_some() {
            return None;
        }
        Some(Publication {
            channel: &self.channel,
            message: self.message(what),
        })
    }
}

/// A parsed message.
#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    sender: u64,
    sequence: u64,
    /// When the sender sent it (its clock, unix ms), if it said.
    sent_ms: Option<u64>,
    kind: &'a str,
    payload: &'a str,
}

fn parse(bytes: &[u8]) -> Option<Message<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(4, '|');
    let sender = u64::from_str_radix(parts.next()?, 16).ok()?;
    let field = parts.next()?;
    let (sequence, sent_ms) = match field.split_once('@') {
        Some((sequence, sent)) => (sequence.parse().ok()?, Some(sent.parse().ok()?)),
        None => (field.parse().ok()?, None),
    };
    Some(Message {
        sender,
        sequence,
        sent_ms,
        kind: parts.next()?,
        payload: parts.next()?,
    })
}

/// Applies other instances' invalidations to this instance's L1 until the cache is gone, and
/// re-reads the namespace generation now and then in case a clear event was lost.
async fn listen(
    inner: Weak<dyn Subscriber>,
    mut events: broadcast::Receiver<StoreEvent>,
    own: u64,
    confirmed: bool,
    mut ended: ListenerEnded,
) {
    // Each sender's sequence: lost messages are told from late ones.
    let mut sequences = Sequences::default();
    // A store that does not confirm subscriptions has them up from the start (in-process
    // messaging): every invalidation after the clock read now arrives as an event, so the
    // ledger is complete from it (else every tagged L1 entry stayed unverified and was checked
    // against L2 on each read).
    let mut subscribed_before = !confirmed;
    if !confirmed {
        if let Some(inner) = inner.upgrade() {
            if let Some(clock) = inner.resync().await {
                inner.tags().complete(clock);
            }
        }
    }
    let mut resync = tokio::time::interval(GENERATION_RESYNC);
    // The store's tag clock at the previous check: events of invalidations older than that must
    // have arrived by now.
    let mut clock_at_last_check = 0;
    // Subscription lost and not back yet: nothing stored in L1 meanwhile can be trusted either,
    // so L1 is demoted again every `DEAF_DEMOTE` until it is.
    let mut deaf = false;
    let mut deaf_tick = tokio::time::interval(DEAF_DEMOTE);
    loop {
        let overdue_at = sequences.next_deadline();
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::time::sleep_until(overdue_at.unwrap_or_else(Instant::now)),
                if overdue_at.is_some() =>
            {
                // Messages already queued are handled first: a late one may be among them
                // (the grace runs from when the listener saw the skip, not from delivery).
                if !events.is_empty() {
                    continue;
                }
                if sequences.overdue(Instant::now()) {
                    let Some(inner) = inner.upgrade() else {
                        return;
                    };
                    reset(&*inner, "gap").await;
                }
                continue;
            }
            _ = deaf_tick.tick(), if deaf => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner.recovery().demote();
                continue;
            }
            _ = resync.tick() => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if let Some(clock) = inner.resync().await {
                    if !inner.tags().is_complete() {
                        if subscribed_before && !deaf {
                            inner.tags().complete(clock);
                        }
                    } else if inner.tags().event_clock() < clock_at_last_check {
                        reset(&*inner, "tag_events_missed").await;
                    }
                    clock_at_last_check = clock;
                }
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Ok(StoreEvent::Lost) => {
                // Not `reset`: the ledger stays incomplete until the subscription is back.
                deaf = true;
                inner.recovery().set_deaf(true);
                deaf_tick.reset();
                inner.tags().reset();
                inner.recovery().demote();
                inner.metrics().backplane_reset("subscription_lost");
                tracing::info!(
                    namespace = inner.namespace(),
                    "L1 demoted: the invalidation subscription was lost"
                );
            }
            Ok(StoreEvent::Subscribed) => {
                deaf = false;
                inner.recovery().set_deaf(false);
                if subscribed_before {
                    sequences.clear();
                    reset(&*inner, "resubscribed").await;
                } else if let Some(clock) = inner.resync().await {
                    // Listening from here on: every later tag invalidation arrives as an event.
                    inner.tags().complete(clock);
                }
                subscribed_before = true;
            }
            Ok(StoreEvent::Message(bytes)) => {
                let Some(message) = parse(&bytes) else {
                    tracing::debug!("unreadable backplane message ignored");
                    continue;
                };
                if message.sender == own {
                    continue;
                }
                inner.metrics().backplane_received.increment(1);
                if let Some(sent) = message.sent_ms {
                    let lag = crate::tiers::freshness::now_ms().saturating_sub(sent);
                    inner.metrics().backplane_lag.record(lag as f64 / 1000.0);
                }
                if sequences.arrived(message.sender, message.sequence, Instant::now()) {
                    // Something was missed: L1 is demoted. The message that showed it is still
                    // applied (a pending delete's hold, above all: L2 still has the old value
                    // the demoted entries would be checked against). A number skipped may
                    // only be late: it is given `sequence::GRACE` to arrive (see above).
                    reset(&*inner, "gap").await;
                }
                match message.kind {
                    "k" => inner.drop_key(message.payload),
                    "u" => inner.hold_key(message.payload),
                    "p" => inner.drop_prefix(message.payload),
                    TAG_KIND => {
                        // L1 entries carrying the tag fail their check on the next hit.
                        if let Some((clock, tag)) = message.payload.split_once('|') {
                            if let Ok(clock) = clock.parse::<u64>() {
                                inner.tags().invalidated(tag, clock);
                            }
                        }
                    }
                    "c" => {
                        if let Ok(generation) = message.payload.parse::<u64>() {
                            inner.cleared(generation);
                        }
                    }
                    _ => {}
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Messages were dropped here: what was awaited may be among them, and is
                // covered by this reset.
                sequences.clear();
                reset(&*inner, "lagged").await
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The store ended its messaging for good: restarting would not help, but from
                // here on nothing is heard, so nothing is vouched for locally.
                inner.tags().reset();
                inner.recovery().demote();
                ended.armed = false;
                return;
            }
        }
    }
}

/// Dropped with the listener. If the listener did not end by the store's choice (its runtime
/// shut down, or dropped the task unrun), this instance no longer hears the others: its ledger
/// is reset and L1 demoted (nothing is vouched for locally), and the next use starts a new
/// listener.
struct ListenerEnded {
    listening: Arc<AtomicBool>,
    subscriber: Weak<dyn Subscriber>,
    armed: bool,
}

impl Drop for ListenerEnded {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(subscriber) = self.subscriber.upgrade() {
            subscriber.tags().reset();
            subscriber.recovery().demote();
        }
        self.listening.store(false, Ordering::Release);
    }
}

/// Events may have been missed: nothing in L1 or the tag ledger can be trusted, and the
/// generation may have moved. Called by the listener, so once the store answers, the ledger is
/// complete again from the clock it reads.
async fn reset(inner: &dyn Subscriber, reason: &'static str) {
    inner.tags().reset();
    // Demoted, not cleared: every entry is checked against L2 before it is used again, and
    // stays a fallback meanwhile (clearing would send every read to the origin if L2 was lost).
    inner.recovery().demote();
    inner.metrics().backplane_reset(reason);
    tracing::info!(
        namespace = inner.namespace(),
        reason,
        "L1 demoted: invalidation events may have been missed"
    );
    if let Some(clock) = inner.resync().await {
        inner.tags().complete(clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_keys_may_contain_the_separator() {
        let m = parse(b"ff|7|k|ns:v1:a|b").unwrap();
        assert_eq!(
            m,
            Message {
                sender: 255,
                sequence: 7,
                sent_ms: None,
                kind: "k",
                payload: "ns:v1:a|b"
            }
        );
        let m = parse(b"ff|8@1700000000123|p|ns:v1:a:").unwrap();
        assert_eq!(
            (m.sequence, m.sent_ms, m.kind),
            (8, Some(1_700_000_000_123), "p")
        );
        assert!(parse(b"ff|8@x|p|a").is_none());
        assert!(parse(b"ff|@5|p|a").is_none());
        assert!(parse(b"zz|1|k|x").is_none());
        assert!(parse(b"ff|1").is_none());
    }
}
