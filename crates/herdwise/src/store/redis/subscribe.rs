//! Subscriptions of a [`RedisStore`](super::RedisStore): pub/sub channels and event streams,
//! each on a connection of its own, kept alive for as long as anyone listens.
//!
//! Contract: [`Subscriber`] hands out broadcast receivers of [`StoreEvent`]s and owns the
//! background tasks behind them. A receiver sees `Subscribed` when its subscription is (re)made
//! and `Lost` as soon as the connection is known to be gone or stops answering its health
//! check; messages between the two were missed. Cluster: classic pub/sub reaches every node
//! (Redis Cluster forwards `PUBLISH` over its bus), so a subscription is held on any one node
//! and moves to the next seed node when that one fails; a stream is read through the cluster
//! client (its key routes to the slot's primary, wherever failover put it).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use tokio::sync::broadcast;

use super::sentinel::Watched;
use super::StoreEvent;

/// Where subscriptions are made from.
#[derive(Clone)]
pub(super) struct Subscriber {
    /// Plain clients: the server, a cluster's seed nodes (tried in turn), or the primary a
    /// set of sentinels names.
    nodes: Nodes,
    /// A cluster's client, for streams.
    cluster: Option<ClusterClient>,
    health: PubSubHealth,
}

/// The nodes to subscribe on.
#[derive(Clone)]
enum Nodes {
    Fixed(Vec<redis::Client>),
    Sentinel(Arc<Watched>),
}

impl Nodes {
    /// The client to use at attempt `turn`.
    fn pick(&self, turn: usize) -> Option<redis::Client> {
        match self {
            Nodes::Fixed(nodes) => nodes.get(turn % nodes.len().max(1)).cloned(),
            Nodes::Sentinel(watched) => Some(watched.client()),
        }
    }

    /// Changes when the node subscribed on may no longer be the one to listen on (a
    /// sentinel failover).
    fn epoch(&self) -> u64 {
        match self {
            Nodes::Fixed(_) => 0,
            Nodes::Sentinel(watched) => watched.epoch(),
        }
    }
}

impl Subscriber {
    pub(super) fn standalone(client: redis::Client, health: PubSubHealth) -> Self {
        Subscriber {
            nodes: Nodes::Fixed(vec![client]),
            cluster: None,
            health,
        }
    }

    pub(super) fn cluster(
        client: ClusterClient,
        nodes: Vec<redis::Client>,
        health: PubSubHealth,
    ) -> Self {
        Subscriber {
            nodes: Nodes::Fixed(nodes),
            cluster: Some(client),
            health,
        }
    }

    pub(super) fn sentinel(watched: Arc<Watched>, health: PubSubHealth) -> Self {
        Subscriber {
            nodes: Nodes::Sentinel(watched),
            cluster: None,
            health,
        }
    }

    /// Subscribes to `channel` (see the module contract). `None` outside a Tokio runtime.
    pub(super) fn subscribe(&self, channel: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = broadcast::channel(4096);
        runtime.spawn(keep_subscribed(
            self.nodes.clone(),
            Target::Channel(channel.to_string()),
            tx,
            self.health,
        ));
        Some(rx)
    }

    /// Keyspace notifications for keys matching `pattern` (see
    /// [`Store::subscribe_keyspace`](crate::Store::subscribe_keyspace)): each node notifies of
    /// its own keys only, so on a cluster every seed node is listened to (a node added later and
    /// not among the seeds is not). `None` outside a Tokio runtime.
    pub(super) fn subscribe_keyspace(
        &self,
        pattern: &str,
    ) -> Option<broadcast::Receiver<StoreEvent>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let target = Target::Keyspace(format!("__keyspace@*__:{pattern}"));
        match (&self.cluster, &self.nodes) {
            (Some(_), Nodes::Fixed(nodes)) if nodes.len() > 1 => {
                let sources = nodes
                    .iter()
                    .map(|node| {
                        let (tx, rx) = broadcast::channel(4096);
                        runtime.spawn(keep_subscribed(
                            Nodes::Fixed(vec![node.clone()]),
                            target.clone(),
                            tx,
                            self.health,
                        ));
                        rx
                    })
                    .collect();
                crate::store::fan_in::merge(sources)
            }
            _ => {
                let (tx, rx) = broadcast::channel(4096);
                runtime.spawn(keep_subscribed(self.nodes.clone(), target, tx, self.health));
                Some(rx)
            }
        }
    }

    /// Reads `stream` from its end on (see the module contract). `None` outside a runtime.
    pub(super) fn stream_subscribe(&self, stream: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = broadcast::channel(4096);
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(STREAM_BLOCK + Duration::from_secs(2)));
        let stream = stream.to_string();
        match (&self.cluster, self.nodes.pick(0)) {
            (Some(cluster), _) => {
                let cluster = cluster.clone();
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(STREAM_BLOCK + Duration::from_secs(2));
                runtime.spawn(keep_reading(
                    move || {
                        let cluster = cluster.clone();
                        let config = config.clone();
                        async move { cluster.get_async_connection_with_config(config).await }
                    },
                    stream,
                    tx,
                ));
            }
            (None, Some(_)) => {
                let nodes = self.nodes.clone();
                runtime.spawn(keep_reading(
                    move || {
                        let client = nodes.pick(0);
                        let config = config.clone();
                        async move {
                            let Some(client) = client else {
                                return Err(redis::RedisError::from((
                                    redis::ErrorKind::Client,
                                    "no node to read from",
                                )));
                            };
                            client
                                .get_multiplexed_async_connection_with_config(&config)
                                .await
                        }
                    },
                    stream,
                    tx,
                ));
            }
            (None, None) => return None,
        }
        Some(rx)
    }
}
/// What a subscription listens to.
#[derive(Clone)]
enum Target {
    /// A pub/sub channel: messages are its payloads.
    Channel(String),
    /// A keyspace-notification channel pattern (`__keyspace@*__:<key pattern>`): messages are
    /// the names of the keys that changed.
    Keyspace(String),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Channel(name) | Target::Keyspace(name) => name,
        }
    }
}

/// Holds a subscription to `target` on a dedicated connection for as long as anyone listens:
/// forwards messages, and after a disconnect resubscribes with backoff, announcing each
/// (re)subscription so listeners know they may have missed messages.
///
/// A subscription connection is otherwise silent, so a half-open one (a NAT or proxy that
/// dropped it without a reset) would lose every message unnoticed. It is pinged every
/// `health.every`; a reply missing after `health.timeout` means the subscription is lost: the
/// listeners get [`StoreEvent::Lost`] at once (they stop trusting what they hold), and the
/// connection is replaced.
async fn keep_subscribed(
    nodes: Nodes,
    target: Target,
    tx: broadcast::Sender<StoreEvent>,
    health: PubSubHealth,
) {
    let channel = target.name().to_string();
    let mut backoff = Duration::from_millis(50);
    let mut turn = 0usize;
    // Whether the server's notification settings were found wanting (warned once).
    let mut warned = false;
    // When a refused subscription was last warned about (at most once a minute).
    let mut refusal_warned: Option<std::time::Instant> = None;
    while tx.receiver_count() > 0 {
        let Some(client) = nodes.pick(turn) else {
            return;
        };
        turn = turn.wrapping_add(1);
        let epoch = nodes.epoch();
        let connect = async {
            if let Target::Keyspace(_) = &target {
                // Every (re)connection: a restarted server forgets a `CONFIG SET`.
                enable_keyspace_events(&client, &mut warned).await;
            }
            let mut pubsub = client.get_async_pubsub().await?;
            match &target {
                Target::Channel(name) => pubsub.subscribe(name).await?,
                Target::Keyspace(pattern) => pubsub.psubscribe(pattern).await?,
            }
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                let _ = tx.send(StoreEvent::Subscribed);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(health.every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.reset();
                let lost = loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(m) => {
                                let payload = match &target {
                                    Target::Channel(_) => {
                                        Bytes::copy_from_slice(m.get_payload_bytes())
                                    }
                                    // `__keyspace@<db>__:<key>`, the event in the payload.
                                    Target::Keyspace(_) => {
                                        let name = m.get_channel_name();
                                        match name.split_once("__:") {
                                            Some((_, key)) => Bytes::copy_from_slice(key.as_bytes()),
                                            None => continue,
                                        }
                                    }
                                };
                                if tx.send(StoreEvent::Message(payload)).is_err() {
                                    return;
                                }
                            }
                            None => break "connection closed",
                        },
                        _ = ping.tick() => {
                            if tx.receiver_count() == 0 {
                                return;
                            }
                            if nodes.epoch() != epoch {
                                break "the primary moved";
                            }
                            let pong = sink.ping::<redis::Value>();
                            match tokio::time::timeout(health.timeout, pong).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(_)) => break "ping failed",
                                Err(_) => break "no reply to ping",
                            }
                        }
                    }
                };
                if tx.receiver_count() == 0 {
                    return; // nobody listens any more: nothing to resubscribe for
                }
                tracing::warn!(%channel, reason = lost, "redis subscription lost; resubscribing");
                if tx.send(StoreEvent::Lost).is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                // A refusal (an ACL without the channel, or without PSUBSCRIBE) repeats on
                // every try and leaves this instance deaf: said, at most once a minute.
                if refusal_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    refusal_warned = Some(std::time::Instant::now());
                    tracing::warn!(
                        %channel,
                        error = %e,
                        "subscribe failed (retrying; refused by an ACL?): changes are not heard meanwhile"
                    );
                } else {
                    tracing::debug!(%channel, error = %e, "subscribe failed");
                }
            }
            Err(_) => tracing::debug!(%channel, "subscribe timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The keyspace-notification classes a cache needs: `K` (keyspace channels), `g` (`DEL`,
/// `EXPIRE`, `RENAME`, ...), `$` (string writes: `SET`), `x` (expired), `e` (evicted).
const KEYSPACE_FLAGS: &str = "Kg$xe";

/// `current` (a `notify-keyspace-events` setting) with what the cache needs added, or `None`
/// if it has all of it already (`A` stands for every class).
fn keyspace_flags_needed(current: &str) -> Option<String> {
    let has = |flag: char| {
        current.contains(flag) || (flag != 'K' && flag != 'E' && current.contains('A'))
    };
    let missing: String = KEYSPACE_FLAGS.chars().filter(|f| !has(*f)).collect();
    (!missing.is_empty()).then(|| format!("{current}{missing}"))
}

/// Makes sure the server sends the keyspace notifications the cache listens to, adding what
/// its `notify-keyspace-events` lacks. A server that refuses (`CONFIG` renamed or denied by
/// ACL, as on managed services) is warned about once: it must be configured by hand.
async fn enable_keyspace_events(client: &redis::Client, warned: &mut bool) {
    let check = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let current: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let current = current
            .get("notify-keyspace-events")
            .cloned()
            .unwrap_or_default();
        let Some(wanted) = keyspace_flags_needed(&current) else {
            return Ok(None);
        };
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async::<()>(&mut conn)
            .await?;
        Ok::<_, redis::RedisError>(Some(wanted))
    };
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, check).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(wanted))) => {
            tracing::info!(setting = %wanted, "redis keyspace notifications enabled")
        }
        Ok(Err(e)) if !*warned => {
            *warned = true;
            tracing::warn!(
                error = %e,
                "could not enable redis keyspace notifications: set notify-keyspace-events to \
                 include {KEYSPACE_FLAGS} on the server, or external writes are not heard"
            );
        }
        _ => {}
    }
}

/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a subscription connection is checked (see [`RedisStoreBuilder::pubsub_health_check`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct PubSubHealth {
    pub(super) every: Duration,
    pub(super) timeout: Duration,
}

/// How long one `XREAD` blocks: also how often the reader notices that nobody listens any more.
const STREAM_BLOCK: Duration = Duration::from_secs(1);
/// Entries per `XREAD`.
const STREAM_BATCH: usize = 512;
/// The position before any entry.
const STREAM_START: &str = "0-0";

/// Entries as `XRANGE`/`XREVRANGE`/`XREAD` return them: id and field-value pairs.
type StreamEntries = Vec<(String, Vec<Vec<u8>>)>;

/// Where a stream reader stands.
#[derive(Debug, Clone)]
struct StreamPosition {
    /// The id to read after.
    last: String,
    /// The stream's `entries-added` when the reader started (or restarted).
    added_at_start: u64,
    /// Entries read since then.
    read: u64,
}

/// What `XINFO STREAM` says, as far as continuity goes.
struct StreamInfo {
    entries_added: u64,
    length: u64,
    last_generated_id: String,
}

/// Reads `stream` for as long as anyone listens: forwards the `m` field of each entry, and after
/// a disconnect resumes after the last entry forwarded. Sends `Subscribed` at the start, and again
/// whenever it cannot prove continuity (then it restarts from the stream's end).
async fn keep_reading<C, F, Fut>(connect: F, stream: String, tx: broadcast::Sender<StoreEvent>)
where
    C: ConnectionLike + Send,
    F: Fn() -> Fut + Send,
    Fut: Future<Output = redis::RedisResult<C>> + Send,
{
    let mut position: Option<StreamPosition> = None;
    let mut backoff = Duration::from_millis(50);
    while tx.receiver_count() > 0 {
        let mut conn = match connect().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(%stream, error = %e, "event stream connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("herdwise-events")
            .query_async(&mut conn)
            .await;
        let info = match stream_info(&mut conn, &stream).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(%stream, error = %e, "event stream unreadable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut at = match position.take() {
            Some(p) if continuous(&p, info.as_ref()) => p,
            previous => {
                if previous.is_some() {
                    tracing::warn!(%stream, "events were missed while disconnected");
                }
                if tx.send(StoreEvent::Subscribed).is_err() {
                    return;
                }
                info.map_or(
                    StreamPosition {
                        last: STREAM_START.to_string(),
                        added_at_start: 0,
                        read: 0,
                    },
                    |i| StreamPosition {
                        last: i.last_generated_id,
                        added_at_start: i.entries_added,
                        read: 0,
                    },
                )
            }
        };
        loop {
            let read: Result<Option<Vec<(String, StreamEntries)>>, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(STREAM_BATCH)
                .arg("BLOCK")
                .arg(STREAM_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&at.last)
                .query_async(&mut conn)
                .await;
            let Ok(read) = read else { break };
            for (_, entries) in read.unwrap_or_default() {
                for (id, fields) in entries {
                    if let Some(message) = message_field(&fields) {
                        if tx.send(StoreEvent::Message(message)).is_err() {
                            return;
                        }
                    }
                    at.last = id;
                    at.read += 1;
                }
            }
            if tx.receiver_count() == 0 {
                return;
            }
        }
        position = Some(at);
        tracing::warn!(%stream, "event stream connection lost; resuming");
        tokio::time::sleep(backoff).await;
    }
}

/// The value of field `m` in a field-value list.
fn message_field(fields: &[Vec<u8>]) -> Option<Bytes> {
    fields
        .chunks(2)
        .find(|pair| pair.len() == 2 && pair[0] == b"m")
        .map(|pair| Bytes::copy_from_slice(&pair[1]))
}

/// `XINFO STREAM` (Redis 7: `entries-added`), or `None` if the stream does not exist.
async fn stream_info(
    conn: &mut (impl ConnectionLike + Send),
    stream: &str,
) -> Result<Option<StreamInfo>, redis::RedisError> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    if !exists {
        return Ok(None);
    }
    let info: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await?;
    let field = |name: &[u8]| {
        info.chunks(2).find_map(|pair| match pair {
            [redis::Value::BulkString(k), v] if k == name => Some(v.clone()),
            _ => None,
        })
    };
    let number = |name: &[u8]| field(name).and_then(|v| redis::from_redis_value::<u64>(v).ok());
    let (Some(entries_added), Some(length), Some(last)) = (
        number(b"entries-added"),
        number(b"length"),
        field(b"last-generated-id").and_then(|v| redis::from_redis_value::<String>(v).ok()),
    ) else {
        // Before Redis 7 there is no `entries-added`: continuity cannot be proven.
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "XINFO STREAM without entries-added (Redis < 7)",
        )));
    };
    Ok(Some(StreamInfo {
        entries_added,
        length,
        last_generated_id: last,
    }))
}

/// Whether reading on from `at` misses nothing: every entry added since the reader's start that
/// it has not read is still in the stream (trimming removes the oldest entries first, so if the
/// stream is at least as long as the unread part, none of it was trimmed), and the stream is the
/// same one (a stream lost with Redis' data and recreated has fewer entries added).
fn continuous(at: &StreamPosition, info: Option<&StreamInfo>) -> bool {
    let seen = at.added_at_start + at.read;
    match info {
        None => seen == 0,
        Some(info) => info.entries_added >= seen && info.length >= info.entries_added - seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(added_at_start: u64, read: u64) -> StreamPosition {
        StreamPosition {
            last: "1-0".into(),
            added_at_start,
            read,
        }
    }

    fn info(entries_added: u64, length: u64) -> StreamInfo {
        StreamInfo {
            entries_added,
            length,
            last_generated_id: "9-0".into(),
        }
    }

    #[test]
    fn keyspace_flags_are_added_to_what_the_server_has() {
        assert_eq!(keyspace_flags_needed("").as_deref(), Some("Kg$xe"));
        assert_eq!(keyspace_flags_needed("Ex").as_deref(), Some("ExKg$e"));
        assert_eq!(keyspace_flags_needed("KA"), None);
        assert_eq!(keyspace_flags_needed("AK"), None);
        assert_eq!(keyspace_flags_needed("EA").as_deref(), Some("EAK"));
        assert_eq!(keyspace_flags_needed("Kg$xe"), None);
    }

    #[test]
    fn continuity_needs_every_unread_entry_still_in_the_same_stream() {
        // Started when 100 had been added, read 5; 3 more added since, all still there.
        assert!(continuous(&at(100, 5), Some(&info(108, 50))));
        // 3 unread, but the stream was trimmed to 2 entries: one of them is gone.
        assert!(!continuous(&at(100, 5), Some(&info(108, 2))));
        // Fewer entries ever added than we saw: a new stream (Redis lost its data).
        assert!(!continuous(&at(100, 5), Some(&info(10, 10))));
        // Gone entirely: fine only if there never was anything.
        assert!(continuous(&at(0, 0), None));
        assert!(!continuous(&at(0, 1), None));
        // Nothing unread, stream trimmed to nothing: nothing was missed.
        assert!(continuous(&at(100, 8), Some(&info(108, 0))));
    }
}
