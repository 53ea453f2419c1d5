//! Warm-up at start: the configured `warm_urls` fetched through the proxy's own listener, so
//! that `/readyz` reports ready only once the responses traffic will ask for first are cached
//! (a new instance behind a load balancer then takes traffic with a useful L1, and a new
//! fleet against an empty Redis does not send its first seconds of traffic to the origin).
//!
//! Contract: [`Warmth::start`] spawns one task that requests every URL (a few at a time,
//! each bounded by [`WARM_REQUEST_TIMEOUT`]) through the client listener — so every request
//! takes the path a client's would: routing, the cache, single-flight and leases across
//! instances. [`Warmth::is_warm`] turns true when every URL has been tried, whatever the
//! outcomes: a failing origin at start must not keep every instance out of service (they
//! may still serve from Redis); failures are logged and counted in [`Warmth::progress`].
//! With no URLs configured, the proxy is warm from the start. Nothing here knows the cache.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest one warm-up request may take (until its response's head: a stored response is
/// stored by then, and the body is not read).
pub const WARM_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Warm-up requests at once.
const WARM_CONCURRENCY: usize = 4;

/// The warm-up's state, shared with `/readyz`.
#[derive(Debug, Default)]
pub struct Warmth {
    /// The warm-up task, stopped at shutdown.
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    done: AtomicBool,
    total: AtomicUsize,
    tried: AtomicUsize,
    failed: AtomicUsize,
}

/// How far the warm-up got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// URLs to warm.
    pub total: usize,
    /// URLs requested so far (answered, failed or timed out).
    pub tried: usize,
    /// Of those, the ones that got no `2xx`/`3xx` answer.
    pub failed: usize,
}

impl Warmth {
    /// Requests each of `urls` (`http://host/path?query`, host as clients send it) through
    /// the listener at `addr`; warm when all were tried, or when `deadline` has passed (the
    /// rest is left to the first clients). Call inside a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let at = "127.0.0.1:9".parse().unwrap();
    /// let warmth = herdwise_proxy::warm::Warmth::start(at, Vec::new(), std::time::Duration::from_secs(60));
    /// assert!(warmth.is_warm()); // nothing to warm
    /// # }
    /// ```
    pub fn start(addr: SocketAddr, urls: Vec<String>, deadline: Duration) -> Arc<Self> {
        let warmth = Arc::new(Warmth {
            done: AtomicBool::new(urls.is_empty()),
            total: AtomicUsize::new(urls.len()),
            ..Warmth::default()
        });
        if urls.is_empty() {
            return warmth;
        }
        let target = loopback(addr);
        let state = warmth.clone();
        let task = tokio::spawn(async move {
            // Ready when this task ends however it ends (a panic must not leave `/readyz`
            // at 503 for good).
            let _done = DoneOnDrop(state.clone());
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector);
            let all = futures::stream::iter(urls).for_each_concurrent(WARM_CONCURRENCY, |url| {
                let (client, state) = (client.clone(), state.clone());
                async move {
                    let ok = warm_one(&client, target, &url).await;
                    if !ok {
                        state.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    state.tried.fetch_add(1, Ordering::Relaxed);
                }
            });
            if tokio::time::timeout(deadline, all).await.is_err() {
                tracing::warn!(
                    ?deadline,
                    "warm-up not done within its deadline: ready anyway"
                );
            }
            let p = state.progress();
            tracing::info!(
                urls = p.total,
                failed = p.failed,
                "warm-up done: ready for traffic"
            );
        });
        *warmth.task.lock() = Some(task);
        warmth
    }

    /// Stops the warm-up if it still runs (at shutdown).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }

    /// Whether every warm-up URL has been tried (true from the start without any).
    pub fn is_warm(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// How far the warm-up got.
    pub fn progress(&self) -> Progress {
        Progress {
            total: self.total.load(Ordering::Relaxed),
            tried: self.tried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Marks the warm-up done when dropped.
struct DoneOnDrop(Arc<Warmth>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
    }
}

/// The address to reach a listener bound to `addr` at (an unspecified address: loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// One warm-up GET; `true` if it was answered with a `2xx` or `3xx` and its body read.
async fn warm_one(client: &Client<HttpConnector, Empty<Bytes>>, at: SocketAddr, url: &str) -> bool {
    let Some(request) = warm_request(at, url) else {
        tracing::warn!(url, "warm-up URL is not http://host/path; skipped");
        return false;
    };
    let fetched = tokio::time::timeout(WARM_REQUEST_TIMEOUT, async {
        // The head is enough: a fill is stored before its head is sent, and a body that
        // passes through uncached (too large, no-store) need not be read at all.
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(response.status())
    })
    .await;
    match fetched {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => true,
        Ok(Ok(status)) => {
            tracing::warn!(url, %status, "warm-up request not answered with a success");
            false
        }
        Ok(Err(error)) => {
            tracing::warn!(url, %error, "warm-up request failed");
            false
        }
        Err(_) => {
            tracing::warn!(url, "warm-up request timed out");
            false
        }
    }
}

/// The request for `url` sent to the listener at `at`, with the URL's host as `Host`.
fn warm_request(at: SocketAddr, url: &str) -> Option<Request<Empty<Bytes>>> {
    let uri: Uri = url.parse().ok()?;
    // (An origin clients reach over HTTPS is keyed as such whatever the scheme here.)
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    let authority = uri.authority()?.as_str();
    if authority.contains('@') {
        return None; // (credentials are not a host)
    }
    let host = HeaderValue::from_str(authority).ok()?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let target: Uri = format!("http://{at}{path}").parse().ok()?;
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = target;
    request.headers_mut().insert(header::HOST, host);
    Some(request)
}

/// A warm-up URL's host (lower-case, as routing compares it) and the length of its request
/// target, if it has the form [`Warmth::start`] requests (`http(s)://host/path`); for the
/// configuration's checks.
pub(crate) fn url_parts(url: &str) -> Option<(String, usize)> {
    let request = warm_request(SocketAddr::from(([127, 0, 0, 1], 1)), url)?;
    let host = request.headers().get(header::HOST)?.to_str().ok()?;
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    Some((host.to_ascii_lowercase(), target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_to_the_listener_with_the_urls_host() {
        let at = SocketAddr::from(([127, 0, 0, 1], 8080));
        let r = warm_request(at, "http://www.example.com/a/b?c=1").unwrap();
        assert_eq!(r.uri(), "http://127.0.0.1:8080/a/b?c=1");
        assert_eq!(r.headers()[header::HOST], "www.example.com");
        let r = warm_request(at, "http://api.example.com:8443").unwrap();
        assert_eq!(r.uri(), "http://127.0.0.1:8080/");
        assert_eq!(r.headers()[header::HOST], "api.example.com:8443");
        assert!(warm_request(at, "https://www.example.com/").is_some());
        assert!(warm_request(at, "ftp://www.example.com/").is_none());
        assert!(warm_request(at, "/relative").is_none());
        assert!(warm_request(at, "not a url").is_none());
        assert!(warm_request(at, "http://user:pw@www.example.com/").is_none());
    }

    #[test]
    fn an_unspecified_listener_is_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:81".parse().unwrap();
        assert_eq!(loopback(any), "127.0.0.1:81".parse().unwrap());
        let any6: SocketAddr = "[::]:81".parse().unwrap();
        assert_eq!(loopback(any6), "[::1]:81".parse().unwrap());
        let one: SocketAddr = "10.0.0.2:81".parse().unwrap();
        assert_eq!(loopback(one), one);
    }
}
