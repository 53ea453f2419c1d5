//! The data connection of a [`RedisStore`](super::RedisStore), whatever the topology.
//!
//! Contract: [`RedisConnection`] is a cheap-to-clone handle that speaks redis-rs's
//! `aio::ConnectionLike`, so every command, pipeline and script of the store is written once.
//! Standalone: a self-reconnecting `ConnectionManager`. Sentinel: the same, to whichever node
//! the sentinels name primary (see `sentinel`). Cluster: redis-rs's async cluster
//! client (slot routing, MOVED/ASK; multi-key `MGET`/`UNLINK` split by slot), kept on the
//! current topology by `cluster`.
//! Commands that must reach every primary (`SCAN`) go through [`RedisConnection::primaries`]
//! and [`RedisConnection::on_node`].

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use super::cluster::ClusterHandle;
use super::sentinel::SentinelConnection;

/// A connection to Redis (one server, a Sentinel-managed primary, or a cluster); implements `redis::aio::ConnectionLike`, so
/// any redis-rs command runs on it.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = herdwise::RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let mut conn = store.connection();
/// let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
/// # let _ = size; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection(Topology);

#[derive(Clone)]
enum Topology {
    Standalone(ConnectionManager),
    Cluster(ClusterHandle),
    Sentinel(SentinelConnection),
}

/// A primary of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Node {
    pub(super) host: String,
    pub(super) port: u16,
}

impl RedisConnection {
    pub(super) fn standalone(conn: ConnectionManager) -> Self {
        RedisConnection(Topology::Standalone(conn))
    }

    pub(super) fn cluster(conn: ClusterHandle) -> Self {
        RedisConnection(Topology::Cluster(conn))
    }

    pub(super) fn sentinel(conn: SentinelConnection) -> Self {
        RedisConnection(Topology::Sentinel(conn))
    }

    /// Whether this is a cluster connection.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.0, Topology::Cluster(_))
    }

    /// The primaries to walk for keyspace-wide commands: `None` for one server (the
    /// connection's own), the cluster's primaries (`CLUSTER SLOTS`) otherwise.
    pub(super) async fn primaries(&mut self) -> RedisResult<Option<Vec<Node>>> {
        if !self.is_cluster() {
            return Ok(None);
        }
        let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(self).await?;
        let mut nodes = Vec::new();
        for range in slots {
            // [start, end, [host, port, id, ...], replicas...]
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(primary)) = parts.get(2) else {
                continue;
            };
            let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
                continue;
            };
            let (Ok(host), Ok(port)) = (
                String::from_redis_value(host.clone()),
                u16::from_redis_value(port.clone()),
            ) else {
                continue;
            };
            let node = Node { host, port };
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        nodes.sort();
        if nodes.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "CLUSTER SLOTS named no primary",
            )));
        }
        Ok(Some(nodes))
    }

    /// Runs `cmd` on `node` (`None`: wherever the connection sends it).
    pub(super) async fn on_node<T: FromRedisValue>(
        &mut self,
        node: Option<&Node>,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match (&mut self.0, node) {
            (Topology::Cluster(handle), Some(node)) => {
                let value = handle
                    .conn()
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: node.host.clone(),
                            port: node.port,
                        }),
                    )
                    .await?;
                T::from_redis_value(value).map_err(Into::into)
            }
            _ => cmd.query_async(self).await,
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Topology::Standalone(conn) => conn.req_packed_command(cmd),
            Topology::Cluster(conn) => conn.req_packed_command(cmd),
            Topology::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Topology::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Topology::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Topology::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Topology::Standalone(conn) => conn.get_db(),
            Topology::Cluster(conn) => conn.get_db(),
            Topology::Sentinel(conn) => conn.get_db(),
        }
    }
}
