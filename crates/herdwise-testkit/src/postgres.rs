//! A real PostgreSQL server per test: `initdb` into a scratch directory, `postgres` on a free
//! loopback port (fsync off: test data only), stopped by PID on drop (SIGINT, a fast shutdown,
//! then SIGKILL if it lingers) and its directory removed.
//!
//! The binaries come from `HERDWISE_PG_BIN` (a directory), else the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`. PostgreSQL refuses to run
//! as root: when the tests run as root, the server runs as the `postgres` user (created by
//! Debian's package), which owns the scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `initdb` plus a first accepted connection may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `postgres` child process on a loopback port with trust authentication for `postgres`.
#[derive(Debug)]
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    /// Creates a fresh cluster and starts it on a free loopback port.
    ///
    /// ```no_run
    /// let pg = herdwise_testkit::PostgresServer::start().expect("postgres");
    /// println!("connect to {}", pg.url());
    /// ```
    pub fn start() -> std::io::Result<Self> {
        let bin = bin_dir()?;
        let owner = run_as()?;
        // Held from here: any early return below drops it, which removes the directory.
        let mut server = PostgresServer {
            child: None,
            port: 0,
            dir: crate::scratch_dir("herdwise-pg")?,
        };
        let dir = server.dir.clone();
        if let Some((uid, gid)) = owner {
            chown(&dir, uid, gid)?;
        }
        let data = dir.join("data");
        let mut initdb = command(&bin.join("initdb"), owner);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = initdb.output().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot run initdb in {} ({e}); install postgresql (scripts/test does)",
                    bin.display()
                ),
            )
        })?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut last_err = None;
        // A port found free can be taken before postgres binds it: retry.
        for _ in 0..5 {
            server.port = crate::free_port()?;
            match server.spawn(&bin, owner) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.stop();
                    last_err = Some(e);
                }
            }
        }
        // Dropping `server` removes the directory.
        Err(last_err.unwrap_or_else(|| std::io::Error::other("postgres did not start")))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The PID of the running postmaster, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self, bin: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("postgres-{}.log", self.port)))?;
        if let Some((uid, gid)) = owner {
            chown(
                &self.dir.join(format!("postgres-{}.log", self.port)),
                uid,
                gid,
            )?;
        }
        let mut postgres = command(&bin.join("postgres"), owner);
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(postgres.spawn()?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Ours, not another server that took the port: our postmaster says it is ready
            // in its pid file, and the port answers.
            let ready = self.ours_and_ready()
                && Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log = std::fs::read_to_string(
                        self.dir.join(format!("postgres-{}.log", self.port)),
                    )
                    .unwrap_or_default();
                    return Err(std::io::Error::other(format!(
                        "postgres exited early on port {}: {status}: {}",
                        self.port,
                        log.trim()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::other("postgres did not accept connections"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether our child runs and its `postmaster.pid` (PID on the first line, the status
    /// on the last) names it, on our port, as ready.
    fn ours_and_ready(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let pid = child.id().to_string();
        let Ok(file) = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = file.lines().map(str::trim).collect();
        lines.first() == Some(&pid.as_str())
            && lines.get(3) == Some(&self.port.to_string().as_str())
            && lines.last() == Some(&"ready")
    }

    /// Stops the server: SIGINT (fast shutdown), then SIGKILL after 5 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb`, `postgres` and `pg_isready` are.
fn bin_dir() -> std::io::Result<PathBuf> {
    if let Ok(dir) = std::env::var("HERDWISE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("postgres").exists() && dir.join("initdb").exists())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no PostgreSQL server binaries (postgres, initdb): install postgresql \
                 (scripts/test does) or set HERDWISE_PG_BIN",
            )
        })
}

/// The `postgres` user's uid and gid when running as root (PostgreSQL refuses root).
fn run_as() -> std::io::Result<Option<(u32, u32)>> {
    let uid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres"))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .map(Some)
        .ok_or_else(|| {
            std::io::Error::other(
                "running as root, and there is no `postgres` user to run PostgreSQL as \
                 (Debian's postgresql package creates it)",
            )
        })
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn command(program: &Path, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
        // HOME and the like of root are not readable by postgres; nothing here needs them.
        command.current_dir("/");
    }
    command
}
