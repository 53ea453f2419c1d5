//! Prometheus in one call (feature `prometheus`): installs an exporter (on
//! `metrics-exporter-prometheus`) as the process's metrics recorder, with histogram buckets
//! suited to a cache (1 µs to 10 s; the verifier's mismatch ages 0.1 s to a day), and either serves `/metrics` on an address
//! ([`serve`]) or hands back a [`Prometheus`] handle that renders the text format for a route
//! of your own router ([`install`]).
//!
//! Contract: call it once, **before building caches** (their handles are taken at `build()`);
//! a second call, or a call after another recorder was installed, is `Error::Config`. Every
//! render first hands the caches' striped L1-hit counts to the recorder
//! ([`crate::metrics::flush`]), so a scrape is never behind on hits. Histograms are kept
//! trimmed by an upkeep every 5 s (a thread, `herdwise-prometheus`). The server of [`serve`]
//! answers `GET /metrics` (and `HEAD`), 404 to anything else, one request per connection, at
//! most 16 connections at once (a connection past them is answered `503` at once and closed,
//! so idle connections cannot queue scrapes behind them), each given 1 s to send its request
//! and 5 s in all; it stops when the returned handle is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Bucket bounds, in seconds, of every `_seconds` histogram: an L1 hit (µs) to a slow origin.
pub const BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of `herdwise_verify_mismatch_age_seconds`: entries found wrong can be hours
/// old.
pub const AGE_BUCKETS: &[f64] = &[
    0.1,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
];

/// How often histograms are trimmed.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Connections served at once by [`serve`].
const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection may take in all (a slow reader of the answer included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// The installed exporter: renders the Prometheus text format. Cheap to clone.
///
/// ```no_run
/// # fn main() -> Result<(), herdwise::Error> {
/// let prometheus = herdwise::prometheus::install()?;
/// // ... build caches, then in your `/metrics` route:
/// let body: String = prometheus.render();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Prometheus {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus").finish_non_exhaustive()
    }
}

impl Prometheus {
    /// The current values in the Prometheus text format (0.0.4), hits flushed first.
    pub fn render(&self) -> String {
        crate::metrics::flush();
        self.handle.render()
    }
}

/// Installs the exporter as the process's recorder and returns a handle to render from your
/// own router. `Error::Config` if a recorder is installed already.
pub fn install() -> Result<Prometheus> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(crate::metrics::VERIFY_MISMATCH_AGE.into()),
                AGE_BUCKETS,
            )
        })
        .map_err(|e| Error::Config(format!("prometheus: buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Config(format!("prometheus: {e}")))?;
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("herdwise-prometheus".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "could not start the prometheus upkeep thread");
    }
    Ok(Prometheus { handle })
}

/// A running `/metrics` server (see [`serve`]); it stops when dropped.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = herdwise::prometheus::serve("127.0.0.1:0".parse()?).await?;
/// println!("scrape http://{}/metrics", server.local_addr());
/// let text = server.prometheus().render(); // the same text, for a route of your own
/// # drop(text);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MetricsServer {
    prometheus: Prometheus,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the real port when `serve` was given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The exporter, to render elsewhere too.
    pub fn prometheus(&self) -> &Prometheus {
        &self.prometheus
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Installs the exporter ([`install`]) and serves `GET /metrics` on `addr`, in a task of the
/// current Tokio runtime. Keep the returned server for as long as it should serve.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = herdwise::prometheus::serve("0.0.0.0:9184".parse()?).await?;
/// let cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("catalog").build()?;
/// // scrape http://<host>:9184/metrics
/// # drop((metrics, cache));
/// # Ok(()) }
/// ```
pub async fn serve(addr: SocketAddr) -> Result<MetricsServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("prometheus: cannot listen on {addr}: {e}")))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("prometheus: {e}")))?;
    let prometheus = install()?;
    let served = prometheus.clone();
    let task = tokio::spawn(async move { accept(listener, served).await });
    Ok(MetricsServer {
        prometheus,
        local_addr,
        task,
    })
}

async fn accept(listener: TcpListener, prometheus: Prometheus) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "metrics server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: refuse at once (a short write, never waiting on the client).
            let busy = respond(&mut stream, "503 Service Unavailable", "", false, true);
            let _ = tokio::time::timeout(Duration::from_millis(100), busy).await;
            continue;
        };
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answered = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &prometheus));
            if let Ok(Err(err)) = answered.await {
                tracing::debug!(error = %err, "metrics server: connection failed");
            }
        });
    }
}

/// Whether `head` holds a whole request head (blank line; bare `\n` line ends accepted).
fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// Reads one request head (within [`REQUEST_TIMEOUT`]) and answers it.
async fn answer(mut stream: TcpStream, prometheus: &Prometheus) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head_complete(&head) {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
        Ok::<_, std::io::Error>(true)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read_head).await {
        Err(_) => {
            return respond(&mut stream, "408 Request Timeout", "", false, true).await;
        }
        Ok(Err(err)) => return Err(err),
        Ok(Ok(false)) => {
            let status = "431 Request Header Fields Too Large";
            return respond(&mut stream, status, "", false, true).await;
        }
        Ok(Ok(true)) => {}
    }
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            respond(&mut stream, "200 OK", &prometheus.render(), true, true).await
        }
        // The length a GET would have, without the body.
        ("HEAD", "/metrics") => {
            respond(&mut stream, "200 OK", &prometheus.render(), true, false).await
        }
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", "", false, true).await,
        _ => respond(&mut stream, "404 Not Found", "", false, true).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    metrics: bool,
    send_body: bool,
) -> std::io::Result<()> {
    let content_type = if metrics {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
