//! The origins: one HTTP/1.1 client per origin with its concurrency limit and timeout.
//!
//! Contract: [`Origins::route`] maps a `Host` to its origin (only configured hosts exist);
//! [`Origin::send`] sends one request under the origin's limit (a slot waited for at most the
//! queue timeout, released by a guard when the response *head* arrives or the call is
//! dropped) and its header timeout. Failures are [`OriginError`]s, never panics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::config::OriginConfig;

/// A request body to the origin.
pub type OutBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why the origin did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    /// Every slot stayed busy for the queue timeout.
    #[error("origin overloaded ({0} requests in flight)")]
    Overloaded(usize),
    /// No response header within the timeout.
    #[error("origin timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting or talking to it failed.
    #[error("origin unreachable: {0}")]
    Unreachable(String),
}

/// One origin.
pub struct Origin {
    /// Its upstream authority (`host:port`), for the request URI.
    authority: http::uri::Authority,
    client: Client<HttpConnector, OutBody>,
    slots: Arc<Semaphore>,
    max: usize,
    queue_timeout: Duration,
    timeout: Duration,
    /// Whether clients reach it over HTTPS (for keys).
    pub https: bool,
    /// What it was made from (a reload keeps an origin whose configuration did not change,
    /// with its connections and its requests in flight).
    config: OriginConfig,
}

impl Origin {
    fn new(config: &OriginConfig) -> Option<Self> {
        let uri: http::Uri = config.upstream.parse().ok()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms.min(5_000))));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.max_concurrency.min(1024))
            .build(connector);
        Some(Origin {
            authority: uri.authority()?.clone(),
            client,
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            max: config.max_concurrency,
            queue_timeout: Duration::from_millis(config.queue_timeout_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            https: config.https,
            config: config.clone(),
        })
    }

    /// How long this origin may take to answer with its header, and at most be silent
    /// while it sends a body that is being stored (`timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` (its URI's path and query are kept; the authority becomes the
    /// upstream's) and returns the response head with its streaming body.
    pub async fn send(
        &self,
        mut request: http::Request<OutBody>,
    ) -> Result<http::Response<Incoming>, OriginError> {
        let slot = match tokio::time::timeout(
            self.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(slot)) => slot,
            _ => return Err(OriginError::Overloaded(self.max)),
        };
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| OriginError::Unreachable(e.to_string()))?;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_11;
        let sent = tokio::time::timeout(self.timeout, self.client.request(request)).await;
        drop(slot);
        match sent {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(OriginError::Unreachable(e.to_string())),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// Every configured origin, by host.
pub struct Origins {
    by_host: HashMap<String, Arc<Origin>>,
}

impl Origins {
    /// The origins of `configs` (already validated).
    pub fn new(configs: &[OriginConfig]) -> Self {
        Self::reusing(configs, None)
    }

    /// The origins of `configs`, keeping those of `previous` whose configuration is the same
    /// (a reload: their connection pools and concurrency limits carry on).
    pub fn reusing(configs: &[OriginConfig], previous: Option<&Origins>) -> Self {
        let mut by_host = HashMap::new();
        for c in configs {
            let kept = previous.and_then(|p| p.by_host.values().find(|o| o.config == *c).cloned());
            if let Some(origin) = kept.or_else(|| Origin::new(c).map(Arc::new)) {
                for h in &c.hosts {
                    by_host.insert(h.to_ascii_lowercase(), origin.clone());
                }
            }
        }
        Origins { by_host }
    }

    /// The origin serving `host` (the request's `Host`, compared case-insensitively, with a
    /// default port dropped).
    pub fn route(&self, host: &str) -> Option<(&str, &Arc<Origin>)> {
        if let Some((k, v)) = self.by_host.get_key_value(host) {
            // As configured (lower-case, no default port): the common case, no copy.
            return Some((k.as_str(), v));
        }
        let host = host.trim().to_ascii_lowercase();
        let bare = host
            .strip_suffix(":80")
            .or_else(|| host.strip_suffix(":443"))
            .unwrap_or(&host);
        self.by_host
            .get_key_value(&host)
            .or_else(|| self.by_host.get_key_value(bare))
            .map(|(k, v)| (k.as_str(), v))
    }
}
