//! How to reach a Redis: one builder for every topology, configured from a URL.
//!
//! Contract: [`RedisStoreBuilder`] holds options only; nothing is parsed or checked until
//! `connect`/`connect_lazy`, which turn the URL into an [`Endpoint`] (topology, nodes,
//! credentials, TLS) or fail with [`StoreError::Config`] naming the option at fault. The
//! connection itself is made by `connect.rs`.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::subscribe::PubSubHealth;
use super::{RedisStore, StoreError, DEFAULT_REDIS_TIMEOUT};

/// The environment variable [`RedisStoreBuilder::from_env`] reads.
pub const REDIS_URL_ENV: &str = "REDIS_URL";

/// Configures a [`RedisStore`] for any topology, from one URL:
///
/// | URL | topology |
/// |---|---|
/// | `redis://[user:password@]host:port[/db]` | one server |
/// | `rediss://…` | one server over TLS |
/// | `redis+cluster://[user:password@]host:port,host:port,…` | Redis Cluster (any of its nodes; the rest is discovered) |
/// | `rediss+cluster://…` | Redis Cluster over TLS |
/// | `redis+sentinel://[user:password@]host:port,host:port,…/<service>[/db]` | the primary that these sentinels monitor as `<service>`, followed after failovers; the credentials are the data nodes' (see [`sentinel_credentials`](Self::sentinel_credentials)) |
/// | `rediss+sentinel://…` | the same over TLS, to sentinels and data nodes |
///
/// TLS verifies the server's certificate against the system's roots, or against
/// [`tls_root_certificate`](Self::tls_root_certificate), and checks that it names the host of
/// the URL (SNI is sent). Turning verification off takes an explicit call to
/// [`danger_accept_invalid_certificates`](Self::danger_accept_invalid_certificates): the
/// `#insecure` URL fragment is refused.
///
/// [`connect`](Self::connect) checks the connection before it returns: the credentials (a
/// server that requires a password and got none is an error now, not a `NOAUTH` on every later
/// call), a `PING`, the server version, and that the ACL user may run every command the cache
/// sends.
///
/// ```no_run
/// # async fn run() -> Result<(), herdwise::StoreError> {
/// use std::time::Duration;
/// let store = herdwise::RedisStore::builder("redis://127.0.0.1:6379")
///     .connection_timeout(Duration::from_millis(500))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    pub(super) call_timeout: Duration,
    pub(super) connection_timeout: Duration,
    pub(super) reconnect_retries: usize,
    pub(super) pubsub_health: PubSubHealth,
    pub(super) tls: TlsOptions,
    pub(super) read_from_replicas: bool,
    /// Username (if any) and password for the sentinels themselves.
    pub(super) sentinel_credentials: Option<(Option<String>, String)>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact(&self.url))
            .field("call_timeout", &self.call_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("read_from_replicas", &self.read_from_replicas)
            .finish_non_exhaustive()
    }
}

/// TLS settings beyond the URL.
#[derive(Clone, Default)]
pub(super) struct TlsOptions {
    /// PEM: the CA (or CAs) that signed the server's certificate, instead of the system's roots.
    pub(super) root_certificate: Option<Vec<u8>>,
    /// PEM certificate chain and private key for servers that require client certificates.
    pub(super) client_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any certificate and host name.
    pub(super) insecure: bool,
}

impl TlsOptions {
    pub(super) fn any(&self) -> bool {
        self.root_certificate.is_some() || self.client_identity.is_some() || self.insecure
    }
}

/// Where the store connects: the URL, parsed.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per store
pub(super) enum Endpoint {
    /// One server.
    Standalone(ConnectionInfo),
    /// Seed nodes of a cluster.
    Cluster(Vec<ConnectionInfo>),
    /// Sentinels, the service they monitor, and the data nodes' settings (the address is a
    /// placeholder: the sentinels name the primary).
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        service: String,
        data: ConnectionInfo,
    },
}

impl Endpoint {
    /// Whether the connection uses TLS.
    pub(super) fn tls(&self) -> bool {
        let first = match self {
            Endpoint::Standalone(info) => Some(info),
            Endpoint::Cluster(nodes) => nodes.first(),
            Endpoint::Sentinel { data, .. } => Some(data),
        };
        first.is_some_and(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }))
    }

    /// The nodes, for messages (no credentials).
    pub(super) fn describe(&self) -> String {
        let nodes: Vec<String> = match self {
            Endpoint::Standalone(info) => vec![info.addr().to_string()],
            Endpoint::Cluster(nodes) => nodes.iter().map(|n| n.addr().to_string()).collect(),
            Endpoint::Sentinel {
                sentinels, service, ..
            } => {
                let nodes: Vec<String> = sentinels.iter().map(|n| n.addr().to_string()).collect();
                return format!("sentinels {} (service {service:?})", nodes.join(","));
            }
        };
        nodes.join(",")
    }
}

impl RedisStoreBuilder {
    pub(super) fn new(url: &str) -> Self {
        RedisStoreBuilder {
            url: url.trim().to_string(),
            call_timeout: DEFAULT_REDIS_TIMEOUT,
            connection_timeout: Duration::from_secs(1),
            reconnect_retries: 2,
            pubsub_health: PubSubHealth {
                every: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
            },
            tls: TlsOptions::default(),
            read_from_replicas: false,
            sentinel_credentials: None,
        }
    }

    /// A builder for the URL in the environment variable `REDIS_URL`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), herdwise::StoreError> {
    /// let store = herdwise::RedisStoreBuilder::from_env()?.connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, StoreError> {
        match std::env::var(REDIS_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Ok(Self::new(&url)),
            _ => Err(StoreError::Config {
                option: REDIS_URL_ENV,
                reason:
                    "the environment variable is not set (e.g. REDIS_URL=redis://127.0.0.1:6379)"
                        .into(),
            }),
        }
    }

    /// The deadline the cache applies to each call (default 100 ms).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long establishing a connection may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Reconnect attempts per failed request before the request fails (default 2). Fewer
    /// attempts fail faster while Redis is down; the cache's deadline bounds the wait anyway.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// How often each subscription connection (invalidation events, fill announcements) is
    /// pinged, and how long a reply may take before the subscription counts as lost (default
    /// 1 s and 1 s): a half-open connection is noticed within `every + timeout`, the cache
    /// stops trusting its L1 at once (demotes it) and the connection is replaced. Zero values
    /// are raised to 10 ms.
    pub fn pubsub_health_check(mut self, every: Duration, timeout: Duration) -> Self {
        let floor = Duration::from_millis(10);
        self.pubsub_health = PubSubHealth {
            every: every.max(floor),
            timeout: timeout.max(floor),
        };
        self
    }

    /// TLS: trust the CA certificate(s) in `pem` (instead of the system's roots) to sign the
    /// server's certificate. Needs a `rediss://` URL.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certificate = Some(pem.into());
        self
    }

    /// TLS: present this client certificate (PEM chain) and key (PEM), for servers started
    /// with `tls-auth-clients yes`. Needs a `rediss://` URL.
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// TLS: accept any server certificate and any host name. Anyone on the network path can
    /// then read and change what the cache stores; for tests against self-signed servers only.
    pub fn danger_accept_invalid_certificates(mut self, accept: bool) -> Self {
        self.tls.insecure = accept;
        self
    }

    /// Redis Cluster: send reads (`GET`, `MGET`) to replicas as well as primaries. A replica
    /// lags its primary (usually well under a millisecond; during a partition, until it
    /// heals), and a read there may miss a write or an invalidation made a moment ago — also
    /// this instance's own. What such a read returns goes into L1 like any L2 hit, so an
    /// invalidated value read from a lagging replica can be served from L1 for up to the L1
    /// TTL cap (60 s by default), not just for the replication lag. Use it for caches that
    /// tolerate that (or with a short `l1_ttl_cap`). Off by default.
    pub fn read_from_replicas(mut self, enabled: bool) -> Self {
        self.read_from_replicas = enabled;
        self
    }

    /// Sentinel: the credentials of the sentinels themselves (Sentinel has its own
    /// `requirepass`/ACL, apart from the data nodes', whose credentials go in the URL).
    pub fn sentinel_credentials(mut self, username: Option<&str>, password: &str) -> Self {
        self.sentinel_credentials = Some((username.map(str::to_string), password.to_string()));
        self
    }

    /// The URL parsed into the endpoint, with every option checked against it.
    pub(super) fn endpoint(&self) -> Result<Endpoint, StoreError> {
        let url = self.url.as_str();
        let (scheme, rest) = url.split_once("://").ok_or_else(|| StoreError::Config {
            option: "url",
            reason: format!(
                "{:?} is not a Redis URL (redis://host:port, rediss://, redis+cluster://)",
                redact(url)
            ),
        })?;
        if rest.contains('#') {
            return Err(StoreError::Config {
                option: "url",
                reason: "URL fragments (such as #insecure) are not accepted: certificate checks \
                         are turned off only by danger_accept_invalid_certificates"
                    .into(),
            });
        }
        let (tls, cluster, sentinel) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (false, false, false),
            "rediss" => (true, false, false),
            "redis+cluster" => (false, true, false),
            "rediss+cluster" => (true, true, false),
            "redis+sentinel" => (false, false, true),
            "rediss+sentinel" => (true, false, true),
            other => {
                return Err(StoreError::Config {
                    option: "url",
                    reason: format!(
                        "unknown scheme {other:?}: use redis, rediss, redis+cluster, \
                         rediss+cluster, redis+sentinel or rediss+sentinel"
                    ),
                })
            }
        };
        if self.sentinel_credentials.is_some() && !sentinel {
            return Err(StoreError::Config {
                option: "sentinel_credentials",
                reason: "only a sentinel URL (redis+sentinel://) has sentinels".into(),
            });
        }
        if !tls && self.tls.any() {
            // Name the option that was given.
            let option = if self.tls.root_certificate.is_some() {
                "tls_root_certificate"
            } else if self.tls.client_identity.is_some() {
                "tls_client_certificate"
            } else {
                "danger_accept_invalid_certificates"
            };
            return Err(StoreError::Config {
                option,
                reason: "TLS options were given but the URL does not use TLS: use rediss://".into(),
            });
        }
        for (option, value) in [
            ("call_timeout", self.call_timeout),
            ("connection_timeout", self.connection_timeout),
        ] {
            if value.is_zero() {
                return Err(StoreError::Config {
                    option,
                    reason: "must be more than zero".into(),
                });
            }
        }
        if self.read_from_replicas && !cluster {
            return Err(StoreError::Config {
                option: "read_from_replicas",
                reason: "only a cluster (redis+cluster://) reads from replicas".into(),
            });
        }
        let plain_scheme = if tls { "rediss" } else { "redis" };
        if !cluster && !sentinel {
            let info = parse_one(&format!("{plain_scheme}://{rest}"))?;
            return Ok(Endpoint::Standalone(self.with_tls(info)));
        }
        // redis+cluster://[user:password@]host:port,host:port[/...]
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), authority),
        };
        let tail = tail.trim_start_matches('/');
        if sentinel {
            return self.sentinel_endpoint(plain_scheme, &userinfo, hosts, tail);
        }
        if !tail.is_empty() && !tail.starts_with('?') && tail != "0" {
            return Err(StoreError::Config {
                option: "url",
                reason: "a cluster has only database 0: drop the path from the URL".into(),
            });
        }
        let mut nodes = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let info = parse_one(&format!("{plain_scheme}://{userinfo}{host}/"))?;
            nodes.push(self.with_tls(info));
        }
        if nodes.is_empty() {
            return Err(StoreError::Config {
                option: "url",
                reason: "a cluster URL needs at least one node: redis+cluster://host:port,…".into(),
            });
        }
        Ok(Endpoint::Cluster(nodes))
    }

    /// `redis+sentinel://[userinfo@]hosts/<service>[/db]`.
    fn sentinel_endpoint(
        &self,
        scheme: &str,
        userinfo: &str,
        hosts: &str,
        path: &str,
    ) -> Result<Endpoint, StoreError> {
        let mut parts = path.split('/');
        let service = parts.next().unwrap_or("").trim();
        let db = parts.next().unwrap_or("").trim();
        if service.is_empty() || service.starts_with('?') || parts.next().is_some() {
            return Err(StoreError::Config {
                option: "url",
                reason: "a sentinel URL names the service after the hosts: \
                         redis+sentinel://host:port,host:port/<service>[/db]"
                    .into(),
            });
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let mut info = parse_one(&format!("{scheme}://{host}/"))?;
            if let Some((user, password)) = &self.sentinel_credentials {
                let mut settings = info.redis_settings().clone().set_password(password);
                if let Some(user) = user {
                    settings = settings.set_username(user);
                }
                info = info.set_redis_settings(settings);
            }
            sentinels.push(self.with_tls(info));
        }
        let Some(first) = hosts.split(',').map(str::trim).find(|h| !h.is_empty()) else {
            return Err(StoreError::Config {
                option: "url",
                reason: "a sentinel URL needs at least one sentinel".into(),
            });
        };
        // The data nodes' settings; the address is a placeholder until the sentinels answer.
        let data = parse_one(&format!("{scheme}://{userinfo}{first}/{db}"))?;
        Ok(Endpoint::Sentinel {
            sentinels,
            service: service.to_string(),
            data: self.with_tls(data),
        })
    }

    fn with_tls(&self, info: ConnectionInfo) -> ConnectionInfo {
        if !self.tls.insecure {
            return info;
        }
        let addr = match info.addr().clone() {
            ConnectionAddr::TcpTls {
                host,
                port,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params,
            },
            other => other,
        };
        info.set_addr(addr)
    }

    /// Connects now and checks the connection (credentials, `PING`, server version, the
    /// ACL permissions the cache needs); fails with a clear error if any check fails or Redis
    /// is unreachable. Reads `maxmemory-policy` where the server allows it and warns when
    /// Redis may evict any key (`allkeys-*`): Herdwise detects the loss of its metadata and
    /// stays correct, but every loss costs misses.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        super::connect::connect(self).await
    }

    /// Returns at once and connects on first use, so a service can start while Redis is down
    /// (reads then go to the origin until it is up). The checks of [`connect`](Self::connect)
    /// are not made: a wrong password shows as failing calls (logged, counted, breaker).
    /// Prefer `connect` where Redis is expected to be up.
    pub fn connect_lazy(self) -> Result<RedisStore, StoreError> {
        super::connect::connect_lazy(self)
    }
}

/// One server's URL, through redis-rs's parser, with its errors as configuration errors.
fn parse_one(url: &str) -> Result<ConnectionInfo, StoreError> {
    url.into_connection_info().map_err(|e| StoreError::Config {
        option: "url",
        reason: format!("{:?}: {e}", redact(url)),
    })
}

/// `url` with any password replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{hosts}{}", &rest[end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Result<Endpoint, StoreError> {
        RedisStoreBuilder::new(url).endpoint()
    }

    #[test]
    fn urls_name_their_topology() {
        assert!(matches!(
            endpoint("redis://127.0.0.1:6379"),
            Ok(Endpoint::Standalone(_))
        ));
        let Ok(Endpoint::Cluster(nodes)) =
            endpoint("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
        else {
            panic!("a cluster URL")
        };
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].addr().to_string(), "10.0.0.2:7001");
        assert_eq!(nodes[0].redis_settings().username(), Some("app"));
        assert_eq!(nodes[1].redis_settings().password(), Some("s@cret"));
        assert!(endpoint("rediss+cluster://h:1").is_ok_and(|e| e.tls()));
        assert!(endpoint("rediss://h:1").is_ok_and(|e| e.tls()));
        assert!(endpoint("redis://h:1").is_ok_and(|e| !e.tls()));
        let Ok(Endpoint::Sentinel {
            sentinels,
            service,
            data,
        }) = endpoint("redis+sentinel://app:pw@10.0.0.1:26379,10.0.0.2:26379/orders/2")
        else {
            panic!("a sentinel URL")
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!(sentinels[0].redis_settings().password(), None);
        assert_eq!(service, "orders");
        assert_eq!(data.redis_settings().db(), 2);
        assert_eq!(data.redis_settings().username(), Some("app"));
        let Ok(Endpoint::Sentinel { sentinels, .. }) =
            RedisStoreBuilder::new("redis+sentinel://10.0.0.1:26379/orders")
                .sentinel_credentials(None, "sentinel-pw")
                .endpoint()
        else {
            panic!("a sentinel URL")
        };
        assert_eq!(
            sentinels[0].redis_settings().password(),
            Some("sentinel-pw")
        );
    }

    #[test]
    fn bad_urls_and_options_name_the_option() {
        let option = |r: Result<Endpoint, StoreError>| match r {
            Err(StoreError::Config { option, .. }) => option,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        assert_eq!(option(endpoint("localhost:6379")), "url");
        assert_eq!(option(endpoint("memcached://h:1")), "url");
        assert_eq!(option(endpoint("rediss://h:1/#insecure")), "url");
        assert_eq!(option(endpoint("redis+cluster://")), "url");
        assert_eq!(option(endpoint("redis+cluster://h:1/3")), "url");
        assert_eq!(option(endpoint("redis+sentinel://h:1")), "url");
        assert_eq!(option(endpoint("redis+sentinel://h:1/svc/0/x")), "url");
        assert_eq!(
            option(
                RedisStoreBuilder::new("redis://h:1")
                    .sentinel_credentials(None, "pw")
                    .endpoint()
            ),
            "sentinel_credentials"
        );
        assert_eq!(
            option(
                RedisStoreBuilder::new("redis://h:1")
                    .tls_root_certificate("pem")
                    .endpoint()
            ),
            "tls_root_certificate"
        );
        assert_eq!(
            option(
                RedisStoreBuilder::new("redis://h:1")
                    .read_from_replicas(true)
                    .endpoint()
            ),
            "read_from_replicas"
        );
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://app:hunter2@h:1/0"),
            "redis://app:***@h:1/0".to_string()
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let debug = format!("{:?}", RedisStoreBuilder::new("rediss://:hunter2@h:1"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn the_insecure_switch_reaches_the_connection() {
        let Ok(Endpoint::Standalone(info)) = RedisStoreBuilder::new("rediss://h:1")
            .danger_accept_invalid_certificates(true)
            .endpoint()
        else {
            panic!("a TLS URL")
        };
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
    }
}
