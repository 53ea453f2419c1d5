//! Redis Cluster: the async cluster client, kept on the cluster's current topology.
//!
//! Contract: [`WatchedCluster`] owns the cluster connection. redis-rs routes by slot and
//! follows MOVED/ASK, but after a primary dies it may keep trying the dead node for many
//! seconds before it rebuilds its slot map (measured here: 3 to over 20 s after the replica's
//! promotion). So the slot map is also read from the seed nodes every [`WATCH_EVERY`] (and at
//! once after a call fails on a lost connection), and when it differs from the one the
//! connection was made under, a fresh connection (which discovers the slots anew) replaces it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;

use super::sentinel::LookDone;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, Value};

/// How often the slot map is read.
pub(super) const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long reading the slot map, or making a new connection, may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Slot ranges and the primary serving each: `(start, end, host, port)`, sorted.
type SlotMap = Vec<(u16, u16, String, u16)>;

/// The cluster connection, replaced when the topology changes.
pub(super) struct WatchedCluster {
    client: ClusterClient,
    seeds: Vec<redis::Client>,
    current: RwLock<(ClusterConnection, SlotMap)>,
    /// A connection to one seed (by index) for reading the slot map.
    probe: tokio::sync::Mutex<Option<(usize, MultiplexedConnection)>>,
    looking: AtomicBool,
}

impl WatchedCluster {
    /// Connects (redis-rs discovers the slots) and starts the watch if a runtime runs.
    pub(super) async fn connect(
        client: ClusterClient,
        seeds: Vec<redis::Client>,
    ) -> Result<Arc<Self>, RedisError> {
        let conn = client.get_async_connection().await?;
        let watched = Arc::new(WatchedCluster {
            client,
            seeds,
            current: RwLock::new((conn, SlotMap::new())),
            probe: tokio::sync::Mutex::new(None),
            looking: AtomicBool::new(false),
        });
        if let Some(map) = watched.read_map().await {
            watched.current.write().1 = map;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&watched)));
        }
        Ok(watched)
    }

    /// The current connection.
    pub(super) fn conn(&self) -> ClusterConnection {
        self.current.read().0.clone()
    }

    /// After a failed call: looks at the topology now if the failure says a node was lost.
    pub(super) fn failed(self: &Arc<Self>, error: &RedisError) {
        let lost = error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
            || matches!(error.code(), Some("CLUSTERDOWN" | "TRYAGAIN"));
        // (Checked before spawning: an outage fails many calls a second, one look suffices.)
        if !lost || self.looking.load(Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let watched = Arc::clone(self);
            runtime.spawn(async move { watched.look().await });
        }
    }

    /// Reads the slot map; replaces the connection if the map changed.
    async fn look(&self) {
        if self.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        let _done = LookDone(&self.looking);
        let Some(map) = self.read_map().await else {
            return;
        };
        if map.is_empty() || map == self.current.read().1 {
            return;
        }
        match tokio::time::timeout(LOOK_TIMEOUT, self.client.get_async_connection()).await {
            Ok(Ok(conn)) => {
                tracing::warn!(
                    ranges = map.len(),
                    "redis cluster topology changed (failover or slot migration): reconnected"
                );
                *self.current.write() = (conn, map);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cluster reconnect failed"),
            Err(_) => tracing::debug!("cluster reconnect timed out"),
        }
    }

    /// `CLUSTER SLOTS` from the first seed that answers (starting with the one that answered
    /// last time, over the connection kept to it).
    async fn read_map(&self) -> Option<SlotMap> {
        let mut probe = self.probe.lock().await;
        let seeds = self.seeds.len();
        let first = probe.as_ref().map_or(0, |(index, _)| *index);
        for step in 0..seeds {
            let index = (first + step) % seeds;
            let mut conn = match probe.take() {
                Some((held, conn)) if held == index => conn,
                _ => {
                    let seed = self.seeds.get(index)?;
                    let connecting = seed.get_multiplexed_async_connection();
                    match tokio::time::timeout(LOOK_TIMEOUT, connecting).await {
                        Ok(Ok(conn)) => conn,
                        _ => continue,
                    }
                }
            };
            let mut slots = redis::cmd("CLUSTER");
            slots.arg("SLOTS");
            let read = slots.query_async(&mut conn);
            if let Ok(Ok(Value::Array(ranges))) = tokio::time::timeout(LOOK_TIMEOUT, read).await {
                *probe = Some((index, conn));
                return Some(parse(ranges));
            }
        }
        None
    }
}

/// The ranges of a `CLUSTER SLOTS` reply, sorted.
fn parse(ranges: Vec<Value>) -> SlotMap {
    let mut map = SlotMap::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(start), Some(end), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            u16::from_redis_value(start.clone()),
            u16::from_redis_value(end.clone()),
        ) else {
            continue;
        };
        let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
            continue;
        };
        if let (Ok(host), Ok(port)) = (
            String::from_redis_value(host.clone()),
            u16::from_redis_value(port.clone()),
        ) {
            map.push((start, end, host, port));
        }
    }
    map.sort();
    map
}

/// Watches for as long as the store lives.
async fn watch(watched: Weak<WatchedCluster>) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(watched) = watched.upgrade() else {
            return;
        };
        watched.look().await;
    }
}

/// The connection of a cluster store: calls go through the current cluster connection; a
/// failure on a lost node makes [`WatchedCluster`] look at the topology at once.
#[derive(Clone)]
pub(super) struct ClusterHandle(pub(super) Arc<WatchedCluster>);

impl ClusterHandle {
    /// The current connection (for commands routed to a node).
    pub(super) fn conn(&self) -> ClusterConnection {
        self.0.conn()
    }
}

impl ConnectionLike for ClusterHandle {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let mut conn = self.0.conn();
        let watched = Arc::clone(&self.0);
        Box::pin(async move {
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                watched.failed(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let mut conn = self.0.conn();
        let watched = Arc::clone(&self.0);
        Box::pin(async move {
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                watched.failed(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
