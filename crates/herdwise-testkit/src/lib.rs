//! Test fixtures for Herdwise: a real `redis-server` (or PostgreSQL) process per test.
//!
//! [`RedisServer::start`] spawns `redis-server` on a free loopback port, waits until it answers
//! `PING`, and kills it by PID when dropped. Because the fixture owns the process, tests can inject
//! faults: [`RedisServer::kill`] (SIGKILL), [`RedisServer::pause`] (SIGSTOP: a slow-but-alive
//! server), [`RedisServer::resume`] and [`RedisServer::restart`] on the same port.
//!
//! Nothing here depends on a Redis that happens to run on the machine. The binary is
//! `redis-server` from `PATH`, or the path in `HERDWISE_REDIS_SERVER`. [`PostgresServer`] does the
//! same for PostgreSQL (`initdb` into a scratch directory, `postgres` on a free loopback port).
//!
//! ```no_run
//! let redis = herdwise_testkit::RedisServer::start().expect("redis-server");
//! println!("connect to {}", redis.url());
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod postgres;
mod sentinel;
mod tls;

pub use cluster::RedisCluster;
pub use postgres::PostgresServer;
pub use sentinel::{SentinelSet, SERVICE as SENTINEL_SERVICE};
pub use tls::TlsMaterial;

/// How long a fresh server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a loopback port, killed by PID on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port with persistence off.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `["--maxmemory", "10mb"]`).
    /// Each argument `{free}` becomes a port that was free (a TLS port, a cluster bus port),
    /// and `{port}` the server's own port; both stay the same across [`RedisServer::restart`].
    pub fn start_with_args(args: &[&str]) -> std::io::Result<Self> {
        let mut last_err = None;
        // A port found free can be taken by someone else before redis binds it: retry.
        for _ in 0..5 {
            let port = free_port()?;
            let mut extra_args = Vec::with_capacity(args.len());
            for arg in args {
                extra_args.push(match *arg {
                    "{free}" => free_port()?.to_string(),
                    other => other.replace("{port}", &port.to_string()),
                });
            }
            let mut server = RedisServer {
                child: None,
                port,
                extra_args,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The PID of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server with SIGKILL (by PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a process stopped with SIGSTOP: no SIGCONT needed.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old socket may linger for a moment; try again until the deadline.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("-STOP")
    }

    /// Continues a paused server with SIGCONT.
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    /// The extra arguments the server was started with (placeholders filled in).
    pub fn args(&self) -> &[String] {
        &self.extra_args
    }

    /// The value following `flag` among the extra arguments (e.g. the `--tls-port`).
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        let at = self.extra_args.iter().position(|a| a == flag)?;
        self.extra_args.get(at + 1).map(String::as_str)
    }

    /// Sends a raw inline command and returns the first reply line (e.g. `+PONG`).
    pub fn raw_command(&self, command: &str) -> std::io::Result<String> {
        raw_command(self.port, command)
    }

    fn signal(&self, sig: &str) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other("redis-server is not running"))?;
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {sig} {pid} failed")))
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let binary =
            std::env::var("HERDWISE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
        let mut command = Command::new(&binary);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run `{binary}` ({e}); install redis-server (scripts/test does)"),
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(reply) = raw_command(self.port, "PING") {
                // A server with a password answers too: it is up.
                if reply == "+PONG" || reply.starts_with("-NOAUTH") {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(std::io::Error::other(format!(
                        "redis-server exited early on port {}: {status}",
                        self.port
                    )));
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(std::io::Error::other("redis-server did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh directory under the system's temp dir, `<prefix>-<pid>-<ns>` (the caller removes
/// it).
pub fn scratch_dir(prefix: &str) -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_pauses_restarts_and_kills() {
        let mut server = RedisServer::start().expect("start redis-server");
        assert_eq!(server.raw_command("PING").expect("ping"), "+PONG");
        server.pause().expect("pause");
        assert!(
            server.raw_command("PING").is_err(),
            "a paused server must not answer"
        );
        server.resume().expect("resume");
        assert_eq!(server.raw_command("PING").expect("ping"), "+PONG");
        let port = server.port();
        server.kill();
        assert!(
            raw_command(port, "PING").is_err(),
            "a killed server must not answer"
        );
        server.restart().expect("restart");
        assert_eq!(server.port(), port);
        assert_eq!(server.raw_command("PING").expect("ping"), "+PONG");
    }
}

/// A TCP proxy on a free loopback port in front of a server, for network faults that a server
/// process cannot fake: [`Proxy::freeze_subscribers`] stalls every connection that has sent a
/// `SUBSCRIBE` — nothing moves either way, the connection stays open — as when a NAT or a
/// proxy drops a long-lived connection without a reset, while the other connections (the data
/// connection) keep working; [`Proxy::freeze_all`] stalls every connection of one client, as a
/// network partition would (the server, and other clients, go on). Bytes are held, not lost:
/// they flow again when unfrozen. Threads end when their sockets close, and the listener when
/// the proxy is dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    freeze_subscribers: std::sync::atomic::AtomicBool,
    freeze_all: std::sync::atomic::AtomicBool,
    stopped: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// Starts forwarding from a free loopback port to `127.0.0.1:<target_port>`.
    pub fn start(target_port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = std::sync::Arc::new(ProxyState::default());
        let accept_state = state.clone();
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !accept_state.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, target_port);
                        if let Ok(server) = TcpStream::connect(target) {
                            let _ = client.set_nonblocking(false);
                            forward(client, server, accept_state.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Proxy { port, state })
    }

    /// The port to connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stalls every connection through the proxy, or lets them through again.
    pub fn freeze_all(&self, frozen: bool) {
        self.state
            .freeze_all
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stalls subscriber connections (those that sent `SUBSCRIBE`), or lets them through again.
    pub fn freeze_subscribers(&self, frozen: bool) {
        self.state
            .freeze_subscribers
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state
            .stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies both ways between `client` and `server` on two threads.
fn forward(client: TcpStream, server: TcpStream, state: std::sync::Arc<ProxyState>) {
    let subscriber = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pairs = [
        (client.try_clone(), server.try_clone(), true),
        (server.try_clone(), client.try_clone(), false),
    ];
    for (from, to, upstream) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let (state, subscriber) = (state.clone(), subscriber.clone());
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buf = [0u8; 16 * 1024];
            loop {
                let frozen = || {
                    state.freeze_all.load(Ordering::SeqCst)
                        || (subscriber.load(Ordering::SeqCst)
                            && state.freeze_subscribers.load(Ordering::SeqCst))
                };
                while frozen() && !state.stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if state.stopped.load(Ordering::Relaxed) {
                    break;
                }
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => break,
                };
                if upstream
                    && buf[..n]
                        .windows(9)
                        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                {
                    subscriber.store(true, Ordering::SeqCst);
                }
                // Read just before a freeze: held until it ends, like the rest.
                while frozen() && !state.stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
