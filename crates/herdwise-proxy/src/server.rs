//! Listening: the client listener (HTTP/1.1, header size and read-time limits, a connection
//! limit), the admin listener (`/healthz`, `/readyz`, `/metrics`, the purge API), and a
//! graceful shutdown.
//!
//! Contract: [`start`] builds the cache from the configuration (Redis if `redis_url` is set,
//! else the embedded store), binds both listeners, and returns a [`Running`] proxy; dropping
//! it or calling [`Running::shutdown`] stops accepting, lets requests in flight finish for up
//! to `shutdown_grace_secs`, then ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herdwise::{Cache, MemoryStore, RedisStore, Store};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::handler::{full, purge_metric, text, Body, Proxy, Rules, Settings};
use crate::invalidate::Invalidators;
use crate::key;
use crate::object::{weight, Entry, EntryCodec};
use crate::stall::WriteDeadline;
use crate::warm::Warmth;

/// Client connections served at once; past it, new ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16_384;

/// Builds the cache the proxy stores responses in.
pub async fn build_cache(config: &Config, settings: &Arc<Settings>) -> Result<Cache<str, Entry>> {
    let store = connect_store(config).await?;
    build_cache_on(
        config,
        settings,
        store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
    )
}

/// The shared store of `redis_url`, if one is configured.
async fn connect_store(config: &Config) -> Result<Option<Arc<dyn Store>>> {
    Ok(match config.redis_url.as_deref() {
        Some(url) => Some(Arc::new(RedisStore::connect(url).await?)),
        None => None,
    })
}

/// The proxy's cache on `store`.
fn build_cache_on(
    config: &Config,
    settings: &Arc<Settings>,
    store: Arc<dyn Store>,
) -> Result<Cache<str, Entry>> {
    let ttl_rules = settings.clone();
    let builder = Cache::<str, Entry>::builder_with_codec(&config.namespace, EntryCodec)
        .l1_max_bytes(config.l1_max_bytes)
        .l1_weigher(weight)
        .max_value_bytes(config.max_object_bytes.saturating_add(1 << 20))
        .max_key_bytes(config.max_url_bytes.saturating_add(1024))
        .max_tags_per_entry(48)
        .negative_ttl(None)
        .ttl(Duration::from_secs(config.max_ttl_secs))
        .no_ttl_jitter()
        // The library's own windows stay at their defaults: HTTP freshness is judged here,
        // but its stale-if-error is what lets an L1 copy answer while Redis is unreachable
        // (the copy cannot be checked against L2 then).
        .stale_while_revalidate(Duration::ZERO)
        .ttl_from(move |e: &Entry| ttl_rules.storage_ttl(e))
        .tags_from(Rules::tags)
        .shared_store(store);
    Ok(builder.build()?)
}

/// A running proxy.
pub struct Running {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The proxy itself (its cache, for tests and tools).
    pub proxy: Arc<Proxy>,
    /// The warm-up at start (`warm_urls`), which `/readyz` waits for.
    pub warmth: Arc<Warmth>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Applies a new configuration to requests from now on (see [`Proxy::reload`]): the names
    /// of the options that need a restart and were left as they are.
    ///
    /// ```no_run
    /// # async fn f(running: &herdwise_proxy::Running) -> Result<(), herdwise_proxy::Error> {
    /// let mut config = (*running.proxy.live().config).clone();
    /// config.admin_token = Some("a-new-token-of-some-length".into());
    /// let needs_restart = running.reload(config)?;
    /// assert!(needs_restart.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>> {
        self.proxy.reload(config)
    }

    /// Stops accepting, drains requests in flight (up to the grace period), and returns.
    pub async fn shutdown(mut self) {
        self.warmth.stop();
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.warmth.stop();
        let _ = self.stop.send(true);
    }
}

/// Starts the proxy. `metrics`: the installed Prometheus exporter, served on `/metrics`.
pub async fn start(
    config: Config,
    metrics: Option<herdwise::prometheus::Prometheus>,
) -> Result<Running> {
    config.validate()?;
    let settings = Arc::new(Settings::new(config.clone()));
    let config = Arc::new(config);
    let store = connect_store(&config).await?;
    let shared = store
        .clone()
        .unwrap_or_else(|| Arc::new(MemoryStore::new()));
    let cache = build_cache_on(&config, &settings, shared)?;
    let proxy = Arc::new(Proxy::new(cache, settings));
    let invalidators = Arc::new(Invalidators::new(store));
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })
    };
    let client = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let addr = client.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| Error::Listen {
        addr: config.admin_listen,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let warmth = Warmth::start(addr, config.warm_urls.clone(), config.warm_timeout());
    let serving = {
        let proxy = proxy.clone();
        let config = config.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            serve(client, stopped, grace, &config, move |req| {
                let proxy = proxy.clone();
                async move { proxy.handle(req).await }
            })
            .await;
        })
    };
    let administering = {
        let (proxy, warmth) = (proxy.clone(), warmth.clone());
        let config = config.clone();
        tokio::spawn(async move {
            serve(admin, stopped, grace, &config, move |req| {
                let (proxy, metrics, warmth) = (proxy.clone(), metrics.clone(), warmth.clone());
                let invalidators = invalidators.clone();
                async move {
                    let admin = Admin {
                        proxy: &proxy,
                        metrics: metrics.as_ref(),
                        warmth: &warmth,
                        invalidators: &invalidators,
                    };
                    admin_api(admin, req).await
                }
            })
            .await;
        })
    };
    tracing::info!(%addr, %admin_addr, "herdwise-proxy listening");
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        warmth,
        stop,
        tasks: vec![serving, administering],
    })
}

/// Accepts connections until `stopped`, then drains them for up to `grace`.
async fn serve<F, Fut>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
    config: &Config,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let stream = WriteDeadline::new(stream, config.write_timeout());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("shutdown grace period over: closing the remaining connections");
    }
}

/// What the admin API serves from.
struct Admin<'a> {
    proxy: &'a Proxy,
    metrics: Option<&'a herdwise::prometheus::Prometheus>,
    warmth: &'a Warmth,
    invalidators: &'a Invalidators,
}

/// The admin API.
async fn admin_api(admin: Admin<'_>, req: Request<Incoming>) -> Response<Body> {
    let Admin {
        proxy,
        metrics,
        warmth,
        invalidators,
    } = admin;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (Method::GET, "/readyz") => {
            let breaker = proxy.cache().breaker_state();
            if !warmth.is_warm() {
                let p = warmth.progress();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("warming ({} of {} URLs)\n", p.tried, p.total),
                )
            } else if breaker == herdwise::BreakerState::Open {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "remote tier unavailable (breaker open)\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (Method::GET, "/metrics") => match metrics {
            Some(m) => {
                let mut r = Response::new(full(m.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not installed\n"),
        },
        (Method::POST, p) if p.starts_with("/invalidate/") => {
            if !proxy.authorized(req.headers()) {
                return text(
                    StatusCode::FORBIDDEN,
                    "invalidations need the admin token\n",
                );
            }
            let namespace = percent_decode(&p["/invalidate/".len()..], false);
            let params: Option<Vec<(String, String)>> = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((percent_decode(k, true)?, percent_decode(v, true)?))
                })
                .collect();
            drop(req);
            let (status, body) = match (namespace, params) {
                (Some(namespace), Some(params)) => invalidators.handle(&namespace, &params).await,
                _ => crate::invalidate::bad("a %-escape that is not UTF-8 in the path or query"),
            };
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        (Method::POST, p) if p.starts_with("/purge/") => {
            if !proxy.authorized(req.headers()) {
                return text(StatusCode::FORBIDDEN, "purge needs the admin token\n");
            }
            let param = |name: &str| {
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == name).then(|| percent_decode(v, true))
                })
            };
            let (url, prefix) = (param("url"), param("prefix"));
            if matches!(url, Some(None)) || matches!(prefix, Some(None)) {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a %-escape that is not UTF-8 in the query\n",
                );
            }
            purge(proxy, p, url.flatten(), prefix.flatten(), req).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn purge(
    proxy: &Proxy,
    path: &str,
    url: Option<String>,
    prefix: Option<String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let cache = proxy.cache();
    match path {
        "/purge/url" => {
            let Some(url) = url.and_then(|u| url_key(&u)) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "?url=http(s)://host/path expected\n",
                );
            };
            proxy.invalidate_url(&url).await;
            purge_metric("url");
            text(StatusCode::OK, "purged\n")
        }
        "/purge/prefix" => {
            let Some(dir) = prefix.and_then(|u| url_key(&u)) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "?prefix=http(s)://host/dir/ expected\n",
                );
            };
            let depth = dir
                .split("://")
                .nth(1)
                .map_or(0, |rest| rest.matches('/').count());
            if !dir.ends_with('/') || depth > 5 {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a prefix is a directory (ending in /), at most 4 levels below the host\n",
                );
            }
            match cache
                .invalidate_tag(&crate::handler::prefix_tag(&dir))
                .await
            {
                Ok(()) => {
                    purge_metric("prefix");
                    text(StatusCode::OK, "purged\n")
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        "/purge/all" => match cache.clear().await {
            Ok(()) => {
                purge_metric("all");
                text(StatusCode::OK, "purged everything\n")
            }
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        },
        p if p.starts_with("/purge/tag/") => {
            let tags: Option<Vec<String>> = p["/purge/tag/".len()..]
                .split(',')
                .filter(|t| !t.is_empty())
                .map(|t| percent_decode(t, false))
                .collect();
            drop(req);
            let Some(tags) = tags else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a %-escape that is not UTF-8 in the path\n",
                );
            };
            if tags.is_empty() || tags.len() > 64 {
                return text(
                    StatusCode::BAD_REQUEST,
                    "/purge/tag/<key>[,<key>...] expected (at most 64)\n",
                );
            }
            for t in &tags {
                if let Err(e) = cache.invalidate_tag(&key::surrogate_tag(t)).await {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
                }
            }
            purge_metric("tag");
            text(StatusCode::OK, "purged\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A full URL as a primary key.
fn url_key(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let https = match uri.scheme_str()? {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Some(key::primary(https, uri.authority()?.as_str(), pq))
}

/// `%XX` decoding of a path segment or (with `plus_is_space`, `+` as a space) of a query
/// name or value; `None` when the decoded bytes are not UTF-8 (never replaced: a key or tag
/// must reach the store as the client wrote it, or not at all). A `%` not followed by two hex
/// digits stays as it is.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match s
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Collects a body (tests and tools).
pub async fn body_bytes(body: Body) -> Option<bytes::Bytes> {
    body.collect().await.ok().map(|c| c.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(
            percent_decode("a%2Fb+c%zz", true).as_deref(),
            Some("a/b c%zz")
        );
        assert_eq!(percent_decode("a+b%2B", false).as_deref(), Some("a+b+"));
        assert_eq!(percent_decode("%C3%A9", true).as_deref(), Some("é"));
        assert_eq!(
            percent_decode("x%FFy", true),
            None,
            "not UTF-8: refused, not replaced"
        );
        assert_eq!(percent_decode("%C3", false), None);
        assert_eq!(percent_decode("%4", true).as_deref(), Some("%4"));
        assert_eq!(
            percent_decode("%+1", true).as_deref(),
            Some("% 1"),
            "not an escape"
        );
        assert_eq!(url_key("https://H/x?y").as_deref(), Some("https://h/x?y"));
        assert_eq!(url_key("ftp://h/x"), None);
    }
}
