//! A real Sentinel set for tests: a primary and a replica ([`RedisServer`]s) watched by three
//! `redis-server --sentinel` processes, each with a config file of its own (Sentinel rewrites
//! it), on free loopback ports. Everything is killed by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, RedisServer};

/// The name the sentinels monitor the primary under.
pub const SERVICE: &str = "herdwise";

/// How long the set may take to form, or a failover to finish.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A primary, a replica and three sentinels.
#[derive(Debug)]
pub struct SentinelSet {
    servers: Vec<RedisServer>,
    sentinels: Vec<(Child, u16)>,
    dir: PathBuf,
    password: Option<String>,
    sentinel_password: Option<String>,
    /// TLS everywhere: `redis-cli` arguments for it.
    tls: Option<Vec<String>>,
}

impl SentinelSet {
    /// Starts the set and waits until the sentinels know the primary, the replica and each
    /// other. `password`: the data nodes' `requirepass` (the sentinels authenticate with it).
    /// A primary that stops answering is failed over after 1 s.
    pub fn start(password: Option<&str>) -> std::io::Result<Self> {
        Self::start_with(password, None)
    }

    /// [`SentinelSet::start`], with the sentinels themselves requiring `sentinel_password`.
    pub fn start_with(
        password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> std::io::Result<Self> {
        Self::start_inner(password, sentinel_password, None)
    }

    /// [`SentinelSet::start`] over TLS only, with `material`'s certificates: the sentinels
    /// listen on TLS alone and monitor the data nodes' TLS ports, the replica replicates over
    /// TLS. Ports reported (`primary_port`, `fail_over`) are TLS ports; [`SentinelSet::url`]
    /// is then a `rediss+sentinel://` URL.
    pub fn start_tls(material: &crate::TlsMaterial) -> std::io::Result<Self> {
        Self::start_inner(None, None, Some(material))
    }

    fn start_inner(
        password: Option<&str>,
        sentinel_password: Option<&str>,
        tls: Option<&crate::TlsMaterial>,
    ) -> std::io::Result<Self> {
        let dir = crate::scratch_dir("herdwise-sentinel")?;
        let mut auth: Vec<&str> = Vec::new();
        if let Some(password) = password {
            auth = vec!["--requirepass", password, "--masterauth", password];
        }
        let tls_args: Vec<String> = tls.map(|t| t.server_args(false)).unwrap_or_default();
        let mut primary_args: Vec<&str> = auth.clone();
        primary_args.extend(tls_args.iter().map(String::as_str));
        if tls.is_some() {
            primary_args.extend(["--tls-replication", "yes"]);
        }
        let primary = RedisServer::start_with_args(&primary_args)?;
        // The port the sentinels monitor (and the replica replicates from).
        let primary_port = match tls {
            Some(_) => primary
                .arg_after("--tls-port")
                .ok_or_else(|| std::io::Error::other("no TLS port"))?
                .to_string(),
            None => primary.port().to_string(),
        };
        let mut replica_args = primary_args.clone();
        replica_args.extend(["--replicaof", "127.0.0.1", &primary_port]);
        let replica = RedisServer::start_with_args(&replica_args)?;
        let mut set = SentinelSet {
            servers: vec![primary, replica],
            sentinels: Vec::new(),
            dir,
            password: password.map(str::to_string),
            sentinel_password: sentinel_password.map(str::to_string),
            tls: tls.map(|t| {
                vec![
                    "--tls".to_string(),
                    "--cacert".to_string(),
                    t.ca_file().to_string_lossy().into_owned(),
                ]
            }),
        };
        for i in 0..3 {
            // A port from `free_port` can be taken by another test's server before this sentinel
            // binds it: the sentinel then exits, and is started again on another port.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let port = free_port()?;
                let conf = set.dir.join(format!("sentinel-{i}.conf"));
                let listen = match tls {
                    Some(t) => t.config_lines(port),
                    None => format!("port {port}\n"),
                };
                let mut text = format!(
                    "{listen}bind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 3000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                    dir = set.dir.display()
                );
                if let Some(password) = password {
                    text.push_str(&format!("sentinel auth-pass {SERVICE} {password}\n"));
                }
                if let Some(password) = sentinel_password {
                    text.push_str(&format!(
                        "requirepass {password}\nsentinel sentinel-pass {password}\n"
                    ));
                }
                std::fs::write(&conf, text)?;
                let binary = std::env::var("HERDWISE_REDIS_SERVER")
                    .unwrap_or_else(|_| "redis-server".to_string());
                let child = Command::new(binary)
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                let mut child = child;
                if set.sentinel_started(&mut child, port) {
                    set.sentinels.push((child, port));
                    break;
                }
                let _ = child.kill();
                let _ = child.wait();
                if attempt >= 5 {
                    return Err(std::io::Error::other(
                        "a sentinel did not start (5 ports tried)",
                    ));
                }
            }
        }
        set.wait_until(|s| {
            s.sentinels.iter().all(|(_, port)| {
                let info = s.sentinel_cli(*port, &["sentinel", "master", SERVICE]);
                info.as_deref().is_ok_and(|i| {
                    field(i, "num-slaves") == Some("1")
                        && field(i, "num-other-sentinels") == Some("2")
                })
            })
        })?;
        Ok(set)
    }

    /// `redis+sentinel://127.0.0.1:<port>,…/herdwise` (with `userinfo@` if given).
    pub fn url(&self, userinfo: &str) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        let at = if userinfo.is_empty() { "" } else { "@" };
        let scheme = if self.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://{userinfo}{at}{}/{SERVICE}", sentinels.join(","))
    }

    /// The port of the primary, as the first answering sentinel reports it.
    pub fn primary_port(&self) -> std::io::Result<u16> {
        for (_, port) in &self.sentinels {
            if let Ok(out) =
                self.sentinel_cli(*port, &["sentinel", "get-master-addr-by-name", SERVICE])
            {
                if let Some(p) = out.lines().nth(1).and_then(|l| l.trim().parse().ok()) {
                    return Ok(p);
                }
            }
        }
        Err(std::io::Error::other("no sentinel names a primary"))
    }

    /// The data nodes (the primary first, as started; roles change with failovers).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The data node on `port` (its plain or its TLS port).
    /// The ports of the data nodes (primary and replica, in start order).
    pub fn data_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port()).collect()
    }

    pub fn server_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        let wanted = port.to_string();
        self.servers
            .iter_mut()
            .find(|s| s.port() == port || s.arg_after("--tls-port") == Some(wanted.as_str()))
    }

    /// Kills the primary (SIGKILL) and waits until the sentinels have promoted the replica;
    /// returns the new primary's port.
    pub fn fail_over(&mut self) -> std::io::Result<u16> {
        let old = self.primary_port()?;
        if let Some(server) = self.server_mut(old) {
            server.kill();
        }
        self.wait_until(|s| s.primary_port().is_ok_and(|p| p != old))?;
        let new = self.primary_port()?;
        // The promoted replica answers as a primary.
        self.wait_until(|s| {
            s.data_cli(new, &["info", "replication"])
                .is_ok_and(|i| i.contains("role:master"))
        })?;
        Ok(new)
    }

    /// Runs `redis-cli` against the sentinel on `port`.
    fn sentinel_cli(&self, port: u16, args: &[&str]) -> std::io::Result<String> {
        let mut all: Vec<&str> = self.tls_cli_args();
        if let Some(password) = &self.sentinel_password {
            all.extend(["--no-auth-warning", "-a", password.as_str()]);
        }
        all.extend_from_slice(args);
        cli(port, &all)
    }

    /// Runs `redis-cli` against the data node on `port` (authenticated if the set has a
    /// password).
    pub fn data_cli(&self, port: u16, args: &[&str]) -> std::io::Result<String> {
        let mut all: Vec<&str> = self.tls_cli_args();
        if let Some(password) = &self.password {
            all.extend(["--no-auth-warning", "-a", password.as_str()]);
        }
        all.extend_from_slice(args);
        cli(port, &all)
    }

    fn tls_cli_args(&self) -> Vec<&str> {
        self.tls.iter().flatten().map(String::as_str).collect()
    }

    /// Whether the sentinel just spawned on `port` answers (false if it exited: port taken).
    fn sentinel_started(&self, child: &mut Child, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if self
                .sentinel_cli(port, &["ping"])
                .is_ok_and(|r| r.contains("PONG"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn wait_until(&self, done: impl Fn(&Self) -> bool) -> std::io::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !done(self) {
            if Instant::now() >= deadline {
                let states: Vec<String> = self
                    .sentinels
                    .iter()
                    .map(|(_, port)| {
                        let info = self.sentinel_cli(*port, &["sentinel", "master", SERVICE]);
                        match info {
                            Ok(i) => format!(
                                "{port}: slaves={:?} others={:?} flags={:?}",
                                field(&i, "num-slaves"),
                                field(&i, "num-other-sentinels"),
                                field(&i, "flags")
                            ),
                            Err(e) => format!("{port}: {e}"),
                        }
                    })
                    .collect();
                return Err(std::io::Error::other(format!(
                    "the sentinel set did not settle in time ({})",
                    states.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for server in &mut self.servers {
            server.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> std::io::Result<String> {
    crate::RedisCluster::cli(port, args)
}

/// The value after `name` in `redis-cli`'s one-item-per-line output of a flat map.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name {
            return lines.next().map(str::trim);
        }
    }
    None
}
