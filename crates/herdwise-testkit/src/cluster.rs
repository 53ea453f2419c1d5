//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` per node on free
//! loopback ports (and free cluster-bus ports), joined with `redis-cli --cluster create`.
//! Every node is a [`RedisServer`], killed by PID on drop; the nodes' config files live in a
//! directory of their own, removed on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::RedisServer;

/// How long forming the cluster, or a failover, may take.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster of `primaries × (1 + replicas)` nodes.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until every slot
    /// is served and every replica is in sync. Node timeout 1 s: a killed primary is replaced
    /// by its replica within a few seconds.
    pub fn start(primaries: usize, replicas: usize) -> std::io::Result<Self> {
        let dir = crate::scratch_dir("herdwise-cluster")?;
        let conf = dir.join("nodes-{port}.conf").to_string_lossy().into_owned();
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            nodes.push(RedisServer::start_with_args(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                "{free}",
                "--cluster-replica-validity-factor",
                "0",
            ])?);
        }
        let cluster = RedisCluster { nodes, dir };
        let mut create = Command::new(cli_binary());
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        cluster.wait_until_stable(primaries, replicas)?;
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:<port>,…` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every node, primaries and replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node on `port`.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port() == port)
    }

    /// Runs `redis-cli -p <port> <args…>` and returns its output.
    pub fn cli(port: u16, args: &[&str]) -> std::io::Result<String> {
        let output = Command::new(cli_binary())
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The ports of the primaries that serve slots now, as a live node sees it.
    pub fn primary_ports(&self) -> std::io::Result<Vec<u16>> {
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(text) = Self::cli(node.port(), &["cluster", "nodes"]) else {
                continue;
            };
            let mut ports: Vec<u16> = text
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let flags = fields.get(2)?;
                    if !flags.contains("master") || flags.contains("fail") || fields.len() < 9 {
                        return None;
                    }
                    let addr = fields.get(1)?.split('@').next()?;
                    addr.rsplit(':').next()?.parse().ok()
                })
                .collect();
            if !ports.is_empty() {
                ports.sort_unstable();
                return Ok(ports);
            }
        }
        Err(std::io::Error::other("no live node lists any primary"))
    }

    /// Empties every primary (replicas follow).
    pub fn flushall(&self) -> std::io::Result<()> {
        for port in self.primary_ports()? {
            Self::cli(port, &["flushall"])?;
        }
        Ok(())
    }

    /// Waits until every live node reports `cluster_state:ok`, `primaries` primaries serve all
    /// slots, and every replica's link to its primary is up.
    pub fn wait_until_stable(&self, primaries: usize, replicas: usize) -> std::io::Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            if self.stable(primaries, replicas) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::other(
                    "the cluster did not become stable in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stable(&self, primaries: usize, replicas: usize) -> bool {
        let live: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        for node in &live {
            match Self::cli(node.port(), &["cluster", "info"]) {
                Ok(info) if info.contains("cluster_state:ok") => {}
                _ => return false,
            }
        }
        if self.primary_ports().map(|p| p.len()).unwrap_or(0) != primaries {
            return false;
        }
        let mut synced = 0;
        for node in &live {
            let Ok(info) = Self::cli(node.port(), &["info", "replication"]) else {
                return false;
            };
            if info.contains("role:slave") {
                if !info.contains("master_link_status:up") {
                    return false;
                }
                synced += 1;
            }
        }
        synced >= (primaries * replicas).min(live.len().saturating_sub(primaries))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli_binary() -> String {
    std::env::var("HERDWISE_REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_string())
}
