//! The proxy's configuration: a TOML file, overridden by environment variables, overridden by
//! command-line flags (see `main.rs`), checked once by [`Config::validate`].
//!
//! Contract: every option has a default that is safe to run with (the admin listener on
//! loopback, a purge token required, no heuristic caching of personalised requests); a bad
//! value is an [`Error::Config`] naming the option, before anything
//! listens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One origin: the `Host` values it answers for and where to send requests.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Host names (with `:port` when not the default) this origin serves; requests for any
    /// other host are refused (`421`), never forwarded or cached.
    pub hosts: Vec<String>,
    /// The upstream, `http://host:port` (plain HTTP to the origin; TLS terminates in front).
    pub upstream: String,
    /// Requests in flight to this origin at most (default 256); past it, requests wait up to
    /// `queue_timeout_ms` for a slot, then get `503`.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// How long a request waits for a slot (default 1,000 ms).
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// How long the origin may take to answer with its header, and at most stay silent while
    /// it sends a body being stored (default 30,000 ms).
    #[serde(default = "default_origin_timeout_ms")]
    pub timeout_ms: u64,
    /// The client side speaks HTTPS to the proxy (keys use `https://`).
    #[serde(default)]
    pub https: bool,
}

/// Most requests in flight to one origin that can be configured.
pub const MAX_ORIGIN_CONCURRENCY: usize = 1 << 20;
/// The largest `max_object_bytes` that can be configured (256 MiB).
pub const MAX_OBJECT_BYTES: usize = 256 << 20;
/// The largest `max_url_bytes` that can be configured.
pub const MAX_URL_BYTES: usize = 65_534;
/// The largest `max_header_bytes` that can be configured (1 MiB).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

fn default_max_concurrency() -> usize {
    256
}
fn default_queue_timeout_ms() -> u64 {
    1_000
}
fn default_origin_timeout_ms() -> u64 {
    30_000
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where clients connect (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The admin API, `/healthz`, `/readyz`, `/metrics` (default `127.0.0.1:9090`: loopback).
    pub admin_listen: SocketAddr,
    /// The token purges need (`Authorization: Bearer <token>`); no token, no purges.
    pub admin_token: Option<String>,
    /// Whether `PURGE` on the client listener is accepted (with the token; default false:
    /// purges go to the admin listener, which listens on loopback by default).
    pub purge_method: bool,
    /// `Cache-Status` name (default `herdwise`).
    pub cache_name: String,
    /// Cache namespace (default `http`): proxies sharing Redis and a namespace share entries.
    pub namespace: String,
    /// Redis URL (any the library takes: `redis://`, `rediss://`, `redis+cluster://`,
    /// `redis+sentinel://`); none: an embedded store (one process, no Redis).
    pub redis_url: Option<String>,
    /// L1 size in bytes (default 256 MiB).
    pub l1_max_bytes: u64,
    /// Largest body stored (default 8 MiB); larger responses stream through uncached.
    pub max_object_bytes: usize,
    /// Longest request target (default 8 KiB): `414` past it.
    pub max_url_bytes: usize,
    /// Largest request header section (default 64 KiB).
    pub max_header_bytes: usize,
    /// Largest request body forwarded (default 10 MiB): `413` past it.
    pub max_request_body_bytes: usize,
    /// Time a client has to send its request header (default 10 s; slowloris).
    pub header_read_timeout_ms: u64,
    /// Longest a response may wait for the client to read (default 30 s): a client that stops
    /// reading is cut off (slow reads).
    pub write_timeout_ms: u64,
    /// Targeted cache-control fields, in priority order (RFC 9213), before `Cache-Control`.
    pub targeted_fields: Vec<String>,
    /// Heuristic freshness: this fraction of the time since `Last-Modified` (default 0.1;
    /// 0 turns heuristics off).
    pub heuristic_fraction: f64,
    /// Upper bound of a heuristic lifetime (default 86,400 s).
    pub heuristic_max_secs: u64,
    /// How long an uncacheable answer keeps requests for its URL from waiting on each other
    /// (Varnish's hit-for-miss; default 10 s).
    pub pass_ttl_secs: u64,
    /// How long a stale response is kept for validation and stale-if-error past its own
    /// windows (default 3,600 s).
    pub keep_secs: u64,
    /// Longest any response is kept, in seconds (default 7 days): a longer `max-age` is cut
    /// to it (the cache's TTL, which also sizes how long purges are remembered).
    pub max_ttl_secs: u64,
    /// Store responses that set cookies (default false).
    pub store_set_cookie: bool,
    /// Web cache deception check (default true): a URL whose extension names a static type is
    /// stored only with a response of that type.
    pub check_extension: bool,
    /// Path prefixes exempt from the extension check.
    pub static_routes: Vec<String>,
    /// Seconds to drain connections at shutdown (default 10).
    pub shutdown_grace_secs: u64,
    /// Request fields forwarded on a cache fill (a GET whose response may be stored), besides
    /// `Host`: only these (and none of `X-Forwarded-Host`, `X-Original-URL` and the like, which
    /// an origin may reflect into a response that the key does not tell apart: unkeyed-header
    /// poisoning). A response that depends on a field must name it in `Vary`. Requests that
    /// are not cache fills (other methods, passes) are forwarded whole.
    pub fill_headers: Vec<String>,
    /// URLs (`http://host/path?query`, the host as clients send it) fetched through the
    /// proxy at start; `/readyz` answers `503` until each has been tried (see
    /// [`crate::warm`]). Read at start only.
    pub warm_urls: Vec<String>,
    /// Longest the warm-up may take in all (default 120 s): past it the proxy reports ready
    /// with the URLs not yet fetched left to the first clients.
    pub warm_timeout_secs: u64,
    /// Origins by host.
    #[serde(rename = "origin")]
    pub origins: Vec<OriginConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: None,
            purge_method: false,
            cache_name: "herdwise".into(),
            namespace: "http".into(),
            redis_url: None,
            l1_max_bytes: 256 << 20,
            max_object_bytes: 8 << 20,
            max_url_bytes: 8 << 10,
            max_header_bytes: 64 << 10,
            max_request_body_bytes: 10 << 20,
            header_read_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            targeted_fields: vec!["herdwise-cache-control".into(), "cdn-cache-control".into()],
            heuristic_fraction: 0.1,
            heuristic_max_secs: 86_400,
            pass_ttl_secs: 10,
            keep_secs: 3_600,
            max_ttl_secs: 7 * 86_400,
            store_set_cookie: false,
            check_extension: true,
            static_routes: Vec::new(),
            shutdown_grace_secs: 10,
            fill_headers: [
                "accept",
                "accept-encoding",
                "accept-language",
                "authorization",
                "cookie",
                "cache-control",
                "pragma",
                "user-agent",
            ]
            .map(String::from)
            .to_vec(),
            warm_urls: Vec::new(),
            warm_timeout_secs: 120,
            origins: Vec::new(),
        }
    }
}

/// Environment variables read by [`Config::apply_env`].
pub const ENV_VARS: [&str; 5] = [
    "HERDWISE_PROXY_LISTEN",
    "HERDWISE_PROXY_ADMIN_LISTEN",
    "HERDWISE_PROXY_ADMIN_TOKEN",
    "HERDWISE_PROXY_NAMESPACE",
    "REDIS_URL",
];

/// Request fields a fill never forwards (see `fill_headers`).
const FILL_FORBIDDEN: [&str; 6] = [
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];

fn bad(option: &str, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        option: option.to_string(),
        reason: reason.to_string(),
    }
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| bad("config file", e.message()))
    }

    /// Applies the variables of [`ENV_VARS`] that are set, through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("HERDWISE_PROXY_LISTEN") {
            self.listen = v.parse().map_err(|e| bad("HERDWISE_PROXY_LISTEN", e))?;
        }
        if let Some(v) = get("HERDWISE_PROXY_ADMIN_LISTEN") {
            self.admin_listen = v
                .parse()
                .map_err(|e| bad("HERDWISE_PROXY_ADMIN_LISTEN", e))?;
        }
        if let Some(v) = get("HERDWISE_PROXY_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        if let Some(v) = get("HERDWISE_PROXY_NAMESPACE") {
            self.namespace = v;
        }
        if let Some(v) = get("REDIS_URL") {
            self.redis_url = Some(v);
        }
        Ok(())
    }

    /// Adds an origin given as `host[,host...]=http://upstream`.
    pub fn add_origin_flag(&mut self, flag: &str) -> Result<()> {
        let (hosts, upstream) = flag
            .split_once('=')
            .ok_or_else(|| bad("--origin", "expected host=http://upstream"))?;
        self.origins.push(OriginConfig {
            hosts: hosts.split(',').map(|h| h.trim().to_string()).collect(),
            upstream: upstream.trim().to_string(),
            max_concurrency: default_max_concurrency(),
            queue_timeout_ms: default_queue_timeout_ms(),
            timeout_ms: default_origin_timeout_ms(),
            https: false,
        });
        Ok(())
    }

    /// Checks every option; the first bad one is named.
    pub fn validate(&self) -> Result<()> {
        if self.origins.is_empty() {
            return Err(bad("origin", "at least one origin is needed"));
        }
        let mut seen = BTreeMap::new();
        for (i, o) in self.origins.iter().enumerate() {
            if o.hosts.is_empty() || o.hosts.iter().any(|h| h.is_empty() || h.contains('/')) {
                return Err(bad(
                    &format!("origin[{i}].hosts"),
                    "host names, without paths",
                ));
            }
            for h in &o.hosts {
                if seen.insert(h.to_ascii_lowercase(), i).is_some() {
                    return Err(bad(
                        &format!("origin[{i}].hosts"),
                        format!("{h} listed twice"),
                    ));
                }
            }
            let uri: http::Uri = o
                .upstream
                .parse()
                .map_err(|e| bad(&format!("origin[{i}].upstream"), e))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(bad(
                    &format!("origin[{i}].upstream"),
                    "expected http://host:port",
                ));
            }
            if o.max_concurrency > MAX_ORIGIN_CONCURRENCY {
                return Err(bad(
                    &format!("origin[{i}].max_concurrency"),
                    format!("at most {MAX_ORIGIN_CONCURRENCY}"),
                ));
            }
            if o.max_concurrency == 0 {
                return Err(bad(
                    &format!("origin[{i}].max_concurrency"),
                    "must be at least 1",
                ));
            }
            if o.timeout_ms == 0 {
                return Err(bad(
                    &format!("origin[{i}].timeout_ms"),
                    "must be more than 0",
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.heuristic_fraction) {
            return Err(bad("heuristic_fraction", "must be in [0, 1]"));
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(bad("admin_token", "at least 16 characters"));
        }
        if self.max_object_bytes > MAX_OBJECT_BYTES {
            return Err(bad(
                "max_object_bytes",
                format!("at most {MAX_OBJECT_BYTES} (Redis holds strings up to 512 MiB)"),
            ));
        }
        if self.max_url_bytes > MAX_URL_BYTES {
            return Err(bad(
                "max_url_bytes",
                format!("at most {MAX_URL_BYTES} (the longest URI hyper parses)"),
            ));
        }
        if self.max_header_bytes > MAX_HEADER_BYTES {
            return Err(bad(
                "max_header_bytes",
                format!("at most {MAX_HEADER_BYTES}"),
            ));
        }
        if self.max_url_bytes < 64 {
            return Err(bad(
                "max_url_bytes",
                "too small to serve anything (at least 64)",
            ));
        }
        if self.max_header_bytes < 8192 {
            // (hyper's smallest read buffer: a lower limit could not be enforced)
            return Err(bad("max_header_bytes", "at least 8192"));
        }
        if self.max_ttl_secs == 0 {
            return Err(bad("max_ttl_secs", "must be more than 0"));
        }
        if self.header_read_timeout_ms == 0 {
            return Err(bad("header_read_timeout_ms", "must be more than 0"));
        }
        if self.write_timeout_ms < 100 {
            // (A healthy client's window can stay full for a few round trips.)
            return Err(bad("write_timeout_ms", "at least 100"));
        }
        if self.cache_name.is_empty()
            || !self
                .cache_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("cache_name", "letters, digits, '-' and '_' only"));
        }
        for f in &self.fill_headers {
            http::HeaderName::from_bytes(f.as_bytes())
                .map_err(|e| bad("fill_headers", format!("{f}: {e}")))?;
            // A fill fetches the whole representation with this cache's own validators: a
            // client's preconditions or range would make the 304/206 about something else.
            if FILL_FORBIDDEN.iter().any(|n| f.eq_ignore_ascii_case(n)) {
                return Err(bad(
                    "fill_headers",
                    format!("{f}: preconditions and ranges are never forwarded on a fill"),
                ));
            }
        }
        if self.warm_timeout_secs == 0 {
            return Err(bad("warm_timeout_secs", "must be more than 0"));
        }
        for url in &self.warm_urls {
            let Some((host, target_len)) = crate::warm::url_parts(url) else {
                return Err(bad(
                    "warm_urls",
                    format!("{url}: expected http://host/path"),
                ));
            };
            // (As a client's request would be routed: a URL no origin serves would only be
            // refused at start, quietly.)
            let bare = host
                .strip_suffix(":80")
                .or_else(|| host.strip_suffix(":443"))
                .unwrap_or(&host);
            if !seen.contains_key(&host) && !seen.contains_key(bare) {
                return Err(bad(
                    "warm_urls",
                    format!("{url}: no origin lists the host {host}"),
                ));
            }
            if target_len > self.max_url_bytes {
                return Err(bad(
                    "warm_urls",
                    format!("{url}: longer than max_url_bytes"),
                ));
            }
        }
        for f in &self.targeted_fields {
            http::HeaderName::from_bytes(f.as_bytes())
                .map_err(|e| bad("targeted_fields", format!("{f}: {e}")))?;
        }
        Ok(())
    }

    /// The write stall timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// How long the warm-up at start may take in all.
    pub fn warm_timeout(&self) -> Duration {
        Duration::from_secs(self.warm_timeout_secs)
    }

    /// The header read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_env_and_validation() {
        let mut c = Config::from_toml(
            r#"
            listen = "127.0.0.1:8000"
            [[origin]]
            hosts = ["example.com"]
            upstream = "http://127.0.0.1:9000"
            "#,
        )
        .unwrap();
        assert_eq!(c.origins[0].max_concurrency, 256);
        c.validate().unwrap();
        c.apply_env(|k| (k == "HERDWISE_PROXY_ADMIN_TOKEN").then(|| "short".to_string()))
            .unwrap();
        assert!(
            matches!(c.validate(), Err(Error::Config { option, .. }) if option == "admin_token")
        );
        assert!(Config::from_toml("nope = 1").is_err());
        let mut forwarding = c.clone();
        forwarding.admin_token = None;
        forwarding.fill_headers.push("If-None-Match".into());
        assert!(matches!(
            forwarding.validate(),
            Err(Error::Config { option, .. }) if option == "fill_headers"
        ));
        let mut d = Config::default();
        assert!(matches!(d.validate(), Err(Error::Config { option, .. }) if option == "origin"));
        d.add_origin_flag("a.test=https://x").unwrap();
        assert!(
            matches!(d.validate(), Err(Error::Config { option, .. }) if option == "origin[0].upstream")
        );
    }
}
