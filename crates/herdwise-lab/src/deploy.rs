//! Where a scenario's Redis runs (`--topology`): one standalone `redis-server`, or a Redis
//! Cluster of 3 primaries with a replica each; and, for `sentinel-failover`, a Sentinel set (a
//! primary, a replica, three sentinels). The lab starts it, hands out the URL Herdwise
//! connects with and the connection naive code uses, counts commands over every node, and
//! injects faults into every node at once (an outage of the whole tier).
//!
//! Contract: a [`Deployment`] owns its processes (killed by PID on drop); nothing outside this
//! module knows which topology runs, except through [`Topology`] in reports.

use std::future::Future;
use std::time::Duration;

use herdwise_testkit::{RedisCluster, RedisServer, SentinelSet};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::LabError;

/// Which Redis a scenario runs against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One `redis-server`.
    #[default]
    Standalone,
    /// A Redis Cluster: 3 primaries, 1 replica each.
    Cluster,
}

impl std::str::FromStr for Topology {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "standalone" => Ok(Topology::Standalone),
            "cluster" => Ok(Topology::Cluster),
            other => Err(LabError::Usage(format!(
                "unknown topology {other:?}: standalone or cluster"
            ))),
        }
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Topology::Standalone => "standalone",
            Topology::Cluster => "cluster",
        })
    }
}

/// Primaries and replicas per primary of the lab's cluster.
const CLUSTER_SHAPE: (usize, usize) = (3, 1);

/// A running Redis of some topology.
#[derive(Debug)]
pub enum Deployment {
    /// One server.
    Standalone(RedisServer),
    /// A cluster.
    Cluster(RedisCluster),
    /// A primary and a replica watched by three sentinels.
    Sentinel(SentinelSet),
}

impl Deployment {
    /// Starts a fresh Redis of `topology` (a cluster is formed and in sync before this returns).
    pub fn start(topology: Topology) -> Result<Self, LabError> {
        Ok(match topology {
            Topology::Standalone => Deployment::Standalone(RedisServer::start()?),
            Topology::Cluster => {
                let (primaries, replicas) = CLUSTER_SHAPE;
                Deployment::Cluster(RedisCluster::start(primaries, replicas)?)
            }
        })
    }

    /// A Sentinel set, formed before this returns.
    pub fn start_sentinel() -> Result<Self, LabError> {
        Ok(Deployment::Sentinel(SentinelSet::start(None)?))
    }

    /// The URL Herdwise connects with (`redis://…`, `redis+cluster://…` or
    /// `redis+sentinel://…`).
    pub fn url(&self) -> String {
        match self {
            Deployment::Standalone(server) => server.url(),
            Deployment::Cluster(cluster) => cluster.url(),
            Deployment::Sentinel(set) => set.url(""),
        }
    }

    /// A connection as naive code would open one: a `ConnectionManager`, or redis-rs' cluster
    /// client. Like most clients, a refused connection is an error at once (one retry, 1 s
    /// connect timeout), and the naive code then goes to the origin.
    pub async fn connection(&self) -> Result<Conn, LabError> {
        match self {
            Deployment::Standalone(server) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_connection_timeout(Some(Duration::from_secs(1)));
                let client = redis::Client::open(server.url())?;
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Deployment::Cluster(cluster) => {
                let client = redis::cluster::ClusterClient::builder(node_urls(cluster))
                    .retries(1)
                    .min_retry_wait(10)
                    .connection_timeout(Duration::from_secs(1))
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            Deployment::Sentinel(_) => Err(LabError::Usage(
                "naive code on Sentinel needs a sentinel-aware client; the lab has none".into(),
            )),
        }
    }

    /// Total `calls` in `INFO commandstats` over every node (see [`crate::command_calls`]).
    pub async fn command_calls(&self, command: Option<&str>) -> Result<u64, LabError> {
        let mut total = 0;
        for url in self.node_urls() {
            let mut conn = ConnectionManager::new(redis::Client::open(url)?).await?;
            total += crate::command_calls(&mut conn, command).await?;
        }
        Ok(total)
    }

    /// `redis://` URLs of every node (one for a standalone server).
    pub fn node_urls(&self) -> Vec<String> {
        match self {
            Deployment::Standalone(server) => vec![server.url()],
            Deployment::Cluster(cluster) => node_urls(cluster),
            Deployment::Sentinel(set) => set.servers().iter().map(RedisServer::url).collect(),
        }
    }

    /// Kills one primary (SIGKILL) and returns at once, without waiting for a replica to take
    /// over: a cluster's lowest-port primary, or the primary the sentinels name.
    pub fn kill_primary(&mut self) -> Result<u16, LabError> {
        let port = match self {
            Deployment::Standalone(server) => server.port(),
            Deployment::Cluster(cluster) => cluster
                .primary_ports()?
                .first()
                .copied()
                .ok_or_else(|| LabError::Measure("the cluster lists no primary".into()))?,
            Deployment::Sentinel(set) => set.primary_port()?,
        };
        let mut killed = false;
        self.for_each_server(|s| {
            if s.port() == port {
                s.kill();
                killed = true;
            }
            Ok(())
        })?;
        if !killed {
            return Err(LabError::Measure(format!(
                "no data node of this deployment listens on {port}, the primary's port"
            )));
        }
        Ok(port)
    }

    /// Freezes every node (SIGSTOP): slow but alive.
    pub fn pause(&self) -> Result<(), LabError> {
        for server in self.servers() {
            server.pause()?;
        }
        Ok(())
    }

    /// Resumes every node (SIGCONT).
    pub fn resume(&self) -> Result<(), LabError> {
        for server in self.servers() {
            server.resume()?;
        }
        Ok(())
    }

    /// Kills every node (SIGKILL).
    pub fn kill(&mut self) {
        self.for_each_server(|s| {
            s.kill();
            Ok(())
        })
        .ok();
    }

    /// Restarts every node, empty, on its port (a cluster's nodes re-form from their config
    /// files; this returns once every slot is served again).
    pub fn restart(&mut self) -> Result<(), LabError> {
        self.for_each_server(RedisServer::restart)?;
        if let Deployment::Cluster(cluster) = self {
            let (primaries, replicas) = CLUSTER_SHAPE;
            cluster.wait_until_stable(primaries, replicas)?;
        }
        Ok(())
    }

    fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Deployment::Standalone(server) => vec![server],
            Deployment::Cluster(cluster) => cluster.nodes().iter().collect(),
            Deployment::Sentinel(set) => set.servers().iter().collect(),
        }
    }

    fn for_each_server(
        &mut self,
        mut each: impl FnMut(&mut RedisServer) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let ports: Vec<u16> = self.servers().iter().map(|s| s.port()).collect();
        for port in ports {
            let server = match self {
                Deployment::Standalone(server) => Some(server),
                Deployment::Cluster(cluster) => cluster.node_mut(port),
                Deployment::Sentinel(set) => set.server_mut(port),
            };
            if let Some(server) = server {
                each(server)?;
            }
        }
        Ok(())
    }
}

fn node_urls(cluster: &RedisCluster) -> Vec<String> {
    cluster.nodes().iter().map(RedisServer::url).collect()
}

/// A naive client's connection to either topology.
#[derive(Clone)]
pub enum Conn {
    /// To a standalone server.
    Single(ConnectionManager),
    /// To a cluster (slot routing, MOVED/ASK, by redis-rs).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs `each` for every item with `parallel` in flight (a preload that works on any topology:
/// a cluster cannot take one pipeline across slots).
pub async fn for_each_concurrent<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    parallel: usize,
    each: F,
) -> Result<(), LabError>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), LabError>>,
{
    use futures::StreamExt as _;
    let results: Vec<Result<(), LabError>> = futures::stream::iter(items)
        .map(each)
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}
