//! `http`: the HTTP face against the reverse-proxy caches users would pick instead. The same
//! origin (this process) serves a 1 KB and a 100 KB object, cacheable for an hour; in front of
//! it, one at a time: nothing (the origin directly), nginx `proxy_cache` (Debian's nginx, 2
//! workers, `proxy_cache_lock`), Varnish (Debian's varnishd, its defaults honour
//! Cache-Control), and `herdwise-proxy` (the release binary, embedded store). Each is warmed,
//! then `wrk --latency` (2 threads, 64 connections) measures cached hits: requests/s, p50,
//! p99. Then the stampede figure: 4 herdwise-proxy instances sharing one Redis, 200
//! concurrent requests for a URL at each of 3 expiries: origin requests per expiry.
//!
//! Everything runs on this machine's 2 cores at once (wrk, the cache, the origin), as in any
//! loopback benchmark: the figures compare the caches with each other in the same run, not
//! with what they reach on a server of their own.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::ratio;
use crate::record::Latency;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const HOST: &str = "bench.test";
const OBJECTS: [(&str, usize); 2] = [("/1k", 1024), ("/100k", 100 * 1024)];

/// The origin: fixed objects, and `/expiring` (max-age=1, 50 ms to answer) counting requests.
async fn start_origin() -> Result<(SocketAddr, Arc<AtomicU64>), LabError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let expiring = Arc::new(AtomicU64::new(0));
    let counted = expiring.clone();
    let bodies: Arc<BTreeMap<&'static str, Bytes>> = Arc::new(
        OBJECTS
            .iter()
            .map(|(p, n)| (*p, Bytes::from(vec![b'x'; *n])))
            .collect(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (bodies, counted) = (bodies.clone(), counted.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let (bodies, counted) = (bodies.clone(), counted.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        if path == "/expiring" {
                            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            *response.body_mut() = Full::new(Bytes::from(format!("v{n}")));
                            response.headers_mut().insert(
                                "cache-control",
                                hyper::header::HeaderValue::from_static("max-age=1"),
                            );
                        } else if let Some(body) = bodies.get(path.as_str()) {
                            *response.body_mut() = Full::new(body.clone());
                            response.headers_mut().insert(
                                "cache-control",
                                hyper::header::HeaderValue::from_static("public, max-age=3600"),
                            );
                        } else {
                            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        response.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/octet-stream"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, expiring))
}

/// A cache process the scenario started, stopped (SIGTERM, then SIGKILL) by its PID.
struct Contender {
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Contender {
    /// A process on `port`, with its scratch directory.
    fn process(child: Child, dir: Option<PathBuf>, port: u16) -> (Contender, SocketAddr) {
        (
            Contender {
                child: Some(child),
                dir,
            },
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn scratch(name: &str) -> Result<PathBuf, LabError> {
    Ok(herdwise_testkit::scratch_dir(&format!(
        "herdwise-lab-http-{name}"
    ))?)
}

fn which(binary: &str) -> Result<PathBuf, LabError> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(binary);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(LabError::Usage(format!(
        "{binary} not found: the http scenario needs Debian's nginx, varnish and wrk \
         (apt-get install nginx varnish wrk)"
    )))
}

fn start_nginx(origin: SocketAddr) -> Result<(Contender, SocketAddr), LabError> {
    let port = herdwise_testkit::free_port()?;
    let dir = scratch("nginx")?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         proxy_cache_path {d}/cache levels=1:2 keys_zone=herd:32m max_size=1g inactive=1h use_temp_path=off;\n\
         upstream origin {{ server {origin}; keepalive 64; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://origin;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
         proxy_cache herd;\n      proxy_cache_lock on;\n      proxy_cache_background_update on;\n\
         proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = Command::new(which("nginx")?)
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Contender::process(child, Some(dir), port))
}

fn start_varnish(origin: SocketAddr) -> Result<(Contender, SocketAddr), LabError> {
    let port = herdwise_testkit::free_port()?;
    let dir = scratch("varnish")?;
    let vcl = format!(
        "vcl 4.1;\nbackend default {{ .host = \"127.0.0.1\"; .port = \"{}\"; }}\n",
        origin.port()
    );
    std::fs::write(dir.join("default.vcl"), vcl)?;
    let child = Command::new(which("varnishd")?)
        .args(["-F", "-j", "none", "-a"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-f")
        .arg(dir.join("default.vcl"))
        .arg("-n")
        .arg(dir.join("work"))
        .args(["-s", "malloc,256m", "-p", "thread_pools=2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Contender::process(child, Some(dir), port))
}

/// The `herdwise-proxy` release binary: beside this one, or `HERDWISE_PROXY_BIN`.
fn proxy_binary() -> Result<PathBuf, LabError> {
    if let Ok(p) = std::env::var("HERDWISE_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let here = std::env::current_exe()?;
    let beside = here.with_file_name("herdwise-proxy");
    if beside.exists() {
        return Ok(beside);
    }
    Err(LabError::Usage(
        "herdwise-proxy not built: cargo build --release -p herdwise-proxy (or set HERDWISE_PROXY_BIN)"
            .into(),
    ))
}

fn start_herdwise(origin: SocketAddr) -> Result<(Contender, SocketAddr), LabError> {
    let port = herdwise_testkit::free_port()?;
    let admin = herdwise_testkit::free_port()?;
    let child = Command::new(proxy_binary()?)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--origin")
        .arg(format!("{HOST}=http://{origin}"))
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its log, for a proxy that does not come up (a port taken, a bad flag).
        .stderr(std::fs::File::create(proxy_log(port))?)
        .spawn()?;
    Ok(Contender::process(child, None, port))
}

/// Where the lab's herdwise-proxy on `port` logs.
fn proxy_log(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("herdwise-lab-proxy-{port}.log"))
}

/// One GET through `addr`, for warming and readiness: the status.
async fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(req).await.ok()?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Some(status)
}

async fn wait_ready(addr: SocketAddr, what: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if get(addr, "/1k").await == Some(200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(proxy_log(addr.port())).unwrap_or_default();
    Err(LabError::Measure(format!(
        "{what} did not answer on {addr}{}{}",
        if log.is_empty() { "" } else { "; its log:\n" },
        log.trim_end()
    )))
}

/// wrk's figures: requests/s and latency percentiles (µs).
#[derive(Debug, Clone, Copy, Default)]
struct WrkRun {
    requests_per_sec: f64,
    requests: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn parse_duration_us(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.trim().parse().ok()?;
    let us = match unit {
        "us" => v,
        "ms" => v * 1_000.0,
        "s" => v * 1_000_000.0,
        "m" => v * 60_000_000.0,
        _ => return None,
    };
    Some(us as u64)
}

fn parse_wrk(out: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            run.requests_per_sec = v.trim().parse().ok()?;
        } else if let Some(v) = t.strip_prefix("50%") {
            run.p50_us = parse_duration_us(v)?;
        } else if let Some(v) = t.strip_prefix("99%") {
            run.p99_us = parse_duration_us(v)?;
        } else if t.starts_with("Latency") && !t.starts_with("Latency Distribution") {
            // "Latency   1.23ms  0.45ms  12.34ms  90%": the max is the fourth column.
            let cols: Vec<&str> = t.split_whitespace().collect();
            if let Some(max) = cols.get(3).and_then(|c| parse_duration_us(c)) {
                run.max_us = max;
            }
        } else if t.contains("requests in") {
            run.requests = t.split_whitespace().next()?.parse().ok()?;
        } else if t.starts_with("Non-2xx or 3xx responses:") || t.starts_with("Socket errors:") {
            run.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (run.requests_per_sec > 0.0).then_some(run)
}

fn wrk(addr: SocketAddr, path: &str, duration: Duration) -> Result<WrkRun, LabError> {
    let out = Command::new(which("wrk")?)
        .args(["-t2", "-c64", "--latency", "-H"])
        .arg(format!("Host: {HOST}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(format!("http://{addr}{path}"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).ok_or_else(|| LabError::Measure(format!("wrk printed: {text}")))
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let duration = settings.duration_or(Duration::from_secs(10), Duration::from_secs(3));
    let (origin, expiring) = start_origin().await?;
    let mut strategies = Vec::new();
    let mut rps: BTreeMap<(String, &str), (f64, u64)> = BTreeMap::new();
    let bar = settings.progress_bar("http", duration * 8 + Duration::from_secs(20));
    for name in ["origin", "nginx", "varnish", "herdwise-proxy"] {
        let (guard, addr) = match name {
            "origin" => (
                Contender {
                    child: None,
                    dir: None,
                },
                origin,
            ),
            "nginx" => start_nginx(origin)?,
            "varnish" => start_varnish(origin)?,
            _ => start_herdwise(origin)?,
        };
        wait_ready(addr, name).await?;
        for (path, _) in OBJECTS {
            // Warm: the object is cached before wrk starts.
            for _ in 0..3 {
                get(addr, path).await;
            }
            let run = tokio::task::spawn_blocking({
                let path = path.to_string();
                move || wrk(addr, &path, duration)
            })
            .await
            .map_err(|e| LabError::Measure(e.to_string()))??;
            let mut r = StrategyResult {
                name: format!("{name} {path}"),
                reads: run.requests,
                errors: run.errors,
                reads_per_sec: run.requests_per_sec,
                latency_us: Some(Latency {
                    p50: run.p50_us,
                    p99: run.p99_us,
                    p999: 0,
                    max: run.max_us,
                }),
                ..Default::default()
            };
            r.extra.insert("p50_us".into(), run.p50_us as f64);
            r.extra.insert("p99_us".into(), run.p99_us as f64);
            rps.insert((name.to_string(), path), (run.requests_per_sec, run.p99_us));
            strategies.push(r);
        }
        drop(guard);
    }

    // The stampede figure: 4 proxies (in this process) on one Redis.
    let redis = herdwise_testkit::RedisServer::start()?;
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let mut config = herdwise_proxy::Config {
            listen: "127.0.0.1:0"
                .parse()
                .map_err(|e| LabError::Usage(format!("{e}")))?,
            admin_listen: "127.0.0.1:0"
                .parse()
                .map_err(|e| LabError::Usage(format!("{e}")))?,
            redis_url: Some(redis.url()),
            namespace: "lab-http".into(),
            ..Default::default()
        };
        config
            .add_origin_flag(&format!("{HOST}=http://{origin}"))
            .map_err(|e| LabError::Usage(e.to_string()))?;
        fleet.push(
            herdwise_proxy::start(config, None)
                .await
                .map_err(|e| LabError::Usage(e.to_string()))?,
        );
    }
    let expiries = 3;
    let before = expiring.load(Ordering::Relaxed);
    for _ in 0..expiries {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let addr = fleet[i % 4].addr;
            tasks.push(tokio::spawn(async move { get(addr, "/expiring").await }));
        }
        for t in tasks {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_millis(2_100)).await;
    }
    let stampede = (expiring.load(Ordering::Relaxed) - before) as f64 / expiries as f64;
    for running in fleet {
        running.shutdown().await;
    }
    bar.finish_and_clear();

    let mut ratios = BTreeMap::new();
    for (path, _) in OBJECTS {
        let of = |name: &str| {
            rps.get(&(name.to_string(), path))
                .copied()
                .unwrap_or_default()
        };
        let (h, hp99) = of("herdwise-proxy");
        for other in ["nginx", "varnish", "origin"] {
            let (o, op99) = of(other);
            ratios.insert(
                format!("herdwise-proxy/{other} {path} requests/s"),
                ratio(h, o),
            );
            ratios.insert(
                format!("herdwise-proxy/{other} {path} p99"),
                ratio(hp99 as f64, op99 as f64),
            );
        }
    }
    ratios.insert(
        "origin requests per expiry, 4 herdwise-proxy instances, 200 concurrent requests".into(),
        stampede,
    );
    Ok(ScenarioResult {
        name: "http".into(),
        description: format!(
            "cached hits of a 1 KB and a 100 KB object through each cache, wrk -t2 -c64 for {} s each, on loopback; then 4 herdwise-proxy instances on one Redis at {expiries} expiries",
            duration.as_secs()
        ),
        params: BTreeMap::from([
            ("duration_s".into(), json!(duration.as_secs())),
            ("wrk".into(), json!("-t2 -c64 --latency")),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 3s test @ http://127.0.0.1:1/1k\n  2 threads and 64 connections\n\
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                     Latency     1.10ms  350.00us  12.34ms   90.00%\n\
                     Req/Sec    28.00k     1.00k   30.00k    70.00%\n\
                   Latency Distribution\n     50%    1.02ms\n     75%    1.20ms\n     90%    1.50ms\n     99%    2.50ms\n\
                   168000 requests in 3.00s, 200.00MB read\nRequests/sec:  56000.12\nTransfer/sec:     66.67MB\n";
        let run = parse_wrk(out).unwrap();
        assert_eq!(run.requests, 168_000);
        assert_eq!((run.p50_us, run.p99_us, run.max_us), (1_020, 2_500, 12_340));
        assert!((run.requests_per_sec - 56_000.12).abs() < 0.01);
        assert_eq!(parse_duration_us("350.00us"), Some(350));
        assert_eq!(parse_duration_us("1.5s"), Some(1_500_000));
    }
}
