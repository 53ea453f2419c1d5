//! Making the connection of a [`RedisStore`] and checking it before the cache relies on it.
//!
//! Contract: [`connect`] returns a store only once the server has accepted the credentials,
//! answered `PING`, reported a supported version, and let the ACL user run every command the
//! cache sends (each is tried, on a probe key under `herdwise:{probe}`); otherwise an error
//! that says what to fix. [`connect_lazy`] makes no checks. TLS uses rustls with the `ring`
//! provider.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{ConnectionInfo, RedisError, Script, TlsCertificates, TlsMode};

use std::sync::Arc;

use super::cluster::{ClusterHandle, WatchedCluster};
use super::config::{Endpoint, RedisStoreBuilder, TlsOptions};
use super::conn::RedisConnection;
use super::sentinel::{SentinelConnection, SentinelSpec, Watched};
use super::subscribe::Subscriber;
use super::{RedisStore, StoreError};

/// The oldest server the cache supports (`UNLINK`, `SET … PX … NX`, Lua `struct`, `HSCAN`).
const MIN_VERSION: (u64, u64) = (6, 2);

/// Connects and checks (see the module contract).
pub(super) async fn connect(builder: RedisStoreBuilder) -> Result<RedisStore, StoreError> {
    let endpoint = builder.endpoint()?;
    let target = endpoint.describe();
    let clients = match &endpoint {
        Endpoint::Sentinel {
            sentinels,
            service,
            data,
        } => {
            let tls = builder.tls.clone();
            let is_tls = endpoint.tls();
            let spec = SentinelSpec {
                sentinels: sentinels.clone(),
                service: service.clone(),
                data: data.clone(),
                open: Arc::new(move |info| open_client(&tls, is_tls, info)),
                manager: manager_config(&builder),
            };
            if is_tls {
                install_crypto_provider();
            }
            Clients::Sentinel(Watched::connect(spec).await?)
        }
        _ => Clients::new(&builder, &endpoint)?,
    };
    let connecting = async {
        match &clients {
            Clients::Standalone(client) => {
                ConnectionManager::new_with_config(client.clone(), manager_config(&builder))
                    .await
                    .map(RedisConnection::standalone)
            }
            Clients::Cluster { client, nodes } => {
                WatchedCluster::connect(client.clone(), nodes.clone())
                    .await
                    .map(|watched| RedisConnection::cluster(ClusterHandle(watched)))
            }
            Clients::Sentinel(watched) => Ok(RedisConnection::sentinel(SentinelConnection(
                Arc::clone(watched),
            ))),
        }
    };
    let budget = builder.connection_timeout.max(Duration::from_millis(100)) * 3;
    let mut conn = match tokio::time::timeout(budget, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(refused(&target, &e)),
        Err(_) => {
            return Err(StoreError::Connect {
                target,
                reason: format!("no connection within {budget:?}"),
            })
        }
    };
    let checks = tokio::time::timeout(budget, check(&mut conn, &clients, &target));
    match checks.await {
        Ok(result) => result?,
        Err(_) => {
            return Err(StoreError::Connect {
                target,
                reason: format!("the checks at connect did not finish within {budget:?}"),
            })
        }
    }
    Ok(RedisStore::from_parts(
        clients.subscriber(builder.pubsub_health),
        conn,
        builder.call_timeout,
        target,
    ))
}

/// Builds the store without connecting.
pub(super) fn connect_lazy(builder: RedisStoreBuilder) -> Result<RedisStore, StoreError> {
    let endpoint = builder.endpoint()?;
    if matches!(endpoint, Endpoint::Sentinel { .. }) {
        return Err(StoreError::Config {
            option: "connect_lazy",
            reason: "a sentinel connection needs its primary: use connect".into(),
        });
    }
    let clients = Clients::new(&builder, &endpoint)?;
    let conn = match &clients {
        Clients::Standalone(client) => RedisConnection::standalone(
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(&builder))?,
        ),
        Clients::Cluster { .. } | Clients::Sentinel(_) => {
            return Err(StoreError::Config {
                option: "connect_lazy",
                reason: "a cluster or sentinel connection needs its topology: use connect".into(),
            })
        }
    };
    Ok(RedisStore::from_parts(
        clients.subscriber(builder.pubsub_health),
        conn,
        builder.call_timeout,
        endpoint.describe(),
    ))
}

/// The clients a store makes its connections from.
#[allow(clippy::large_enum_variant)] // built once per store
enum Clients {
    Standalone(redis::Client),
    Cluster {
        client: ClusterClient,
        /// One client per seed node, for subscriptions (cluster pub/sub reaches every node).
        nodes: Vec<redis::Client>,
    },
    Sentinel(Arc<Watched>),
}

impl Clients {
    fn new(builder: &RedisStoreBuilder, endpoint: &Endpoint) -> Result<Self, StoreError> {
        if endpoint.tls() {
            install_crypto_provider();
        }
        let certificates = || certificates(&builder.tls);
        let open = |info: &ConnectionInfo| open_client(&builder.tls, endpoint.tls(), info);
        match endpoint {
            Endpoint::Standalone(info) => Ok(Clients::Standalone(open(info)?)),
            Endpoint::Cluster(nodes) => {
                let mut cluster = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(builder.connection_timeout)
                    // Backstop only: the cache's own deadline is what callers see.
                    .response_timeout(builder.call_timeout.max(Duration::from_secs(1)))
                    .retries(builder.reconnect_retries as u32)
                    .min_retry_wait(10)
                    .max_retry_wait(500);
                if endpoint.tls() {
                    cluster = cluster
                        .tls(if builder.tls.insecure {
                            TlsMode::Insecure
                        } else {
                            TlsMode::Secure
                        })
                        .certs(certificates());
                }
                if builder.read_from_replicas {
                    cluster = cluster
                        .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
                }
                let client = cluster.build().map_err(|e| StoreError::Config {
                    option: if endpoint.tls() && builder.tls.any() {
                        "url / tls_root_certificate / tls_client_certificate"
                    } else {
                        "url"
                    },
                    reason: format!("{e}"),
                })?;
                let nodes = nodes.iter().map(open).collect::<Result<Vec<_>, _>>()?;
                Ok(Clients::Cluster { client, nodes })
            }
            Endpoint::Sentinel { .. } => Err(StoreError::Config {
                option: "url",
                reason: "a sentinel endpoint is connected through its sentinels".into(),
            }),
        }
    }

    fn subscriber(&self, health: super::subscribe::PubSubHealth) -> Subscriber {
        match self {
            Clients::Standalone(client) => Subscriber::standalone(client.clone(), health),
            Clients::Cluster { client, nodes } => {
                Subscriber::cluster(client.clone(), nodes.clone(), health)
            }
            Clients::Sentinel(watched) => Subscriber::sentinel(Arc::clone(watched), health),
        }
    }

    /// Clients for one plain connection each, to probe subscribing on (every seed of a
    /// cluster, in order).
    fn probe_nodes(&self) -> Vec<redis::Client> {
        match self {
            Clients::Standalone(client) => vec![client.clone()],
            Clients::Cluster { nodes, .. } => nodes.clone(),
            Clients::Sentinel(watched) => vec![watched.client()],
        }
    }
}

/// The TLS certificates given to the builder, in redis-rs's form.
fn certificates(tls: &TlsOptions) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls
            .client_identity
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.root_certificate.clone(),
    }
}

/// A client for one node, with the builder's certificates when TLS has any.
fn open_client(
    tls: &TlsOptions,
    is_tls: bool,
    info: &ConnectionInfo,
) -> Result<redis::Client, StoreError> {
    let client = if is_tls && (tls.root_certificate.is_some() || tls.client_identity.is_some()) {
        redis::Client::build_with_tls(info.clone(), certificates(tls))
    } else {
        redis::Client::open(info.clone())
    };
    client.map_err(|e| StoreError::Config {
        // The certificates are what can be wrong here (the URL parsed already).
        option: if tls.client_identity.is_some() && tls.root_certificate.is_none() {
            "tls_client_certificate"
        } else if tls.client_identity.is_some() {
            "tls_root_certificate / tls_client_certificate"
        } else {
            "tls_root_certificate"
        },
        reason: format!("{e}"),
    })
}

/// rustls needs a process-wide crypto provider; Herdwise brings `ring`. An application that
/// installed its own keeps it.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn manager_config(builder: &RedisStoreBuilder) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(builder.connection_timeout))
        // Backstop only: the cache's own deadline is what callers see.
        .set_response_timeout(Some(builder.call_timeout.max(Duration::from_secs(1))))
        .set_number_of_retries(builder.reconnect_retries)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(500))
}

/// A failed connection attempt or check, as an error that says what to fix.
pub(super) fn refused(target: &str, e: &RedisError) -> StoreError {
    let hint = match e.code() {
        Some("NOAUTH") => {
            "the server requires a password and none was given: put it in the URL \
             (redis://user:password@host:port), e.g. through REDIS_URL"
        }
        Some("WRONGPASS") => "the username or password was refused",
        Some("NOPERM") => "the ACL user lacks a permission",
        _ if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            "the username or password was refused"
        }
        _ if e.is_connection_refusal() => "nothing listens there",
        _ if e.is_timeout() => "the server did not answer in time",
        _ => "",
    };
    StoreError::Connect {
        target: target.to_string(),
        reason: if hint.is_empty() {
            e.to_string()
        } else {
            format!("{hint} ({e})")
        },
    }
}

/// Checks an established connection (see the module contract).
async fn check(
    conn: &mut RedisConnection,
    clients: &Clients,
    target: &str,
) -> Result<(), StoreError> {
    let pong: String = redis::cmd("PING")
        .query_async(conn)
        .await
        .map_err(|e| refused(target, &e))?;
    if pong != "PONG" {
        return Err(StoreError::Connect {
            target: target.to_string(),
            reason: format!("PING answered {pong:?}"),
        });
    }
    let nodes = conn.primaries().await.map_err(|e| refused(target, &e))?;
    let first = nodes.as_ref().and_then(|n| n.first());
    let info: String = conn
        .on_node(first, redis::cmd("INFO").arg("server"))
        .await
        .map_err(|e| permission(target, "INFO", &e))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        return Err(StoreError::Connect {
            target: target.to_string(),
            reason: format!(
                "redis {version:?} is too old: Herdwise needs {}.{} or newer",
                MIN_VERSION.0, MIN_VERSION.1
            ),
        });
    }
    probe_commands(conn, first, target).await?;
    // Any node that answers will do (a cluster's first seed may be the one that is down); a
    // refused permission is the answer, whichever node gives it.
    let mut unreachable = None;
    for client in clients.probe_nodes() {
        match probe_subscribe(&client, target).await {
            Ok(()) => {
                unreachable = None;
                break;
            }
            Err(e @ StoreError::NotPermitted { .. }) => return Err(e),
            Err(e) => unreachable = Some(e),
        }
    }
    if let Some(e) = unreachable {
        return Err(e);
    }
    check_eviction_policy(conn, first).await;
    Ok(())
}

/// A check's failure: a missing permission named as such, anything else as a refusal.
fn permission(target: &str, command: &str, e: &RedisError) -> StoreError {
    if e.code() == Some("NOPERM") {
        StoreError::NotPermitted {
            target: target.to_string(),
            command: command.to_string(),
            detail: e.to_string(),
        }
    } else {
        refused(target, e)
    }
}

/// Commands the scripts run inside Redis (checked by the ACL like any other), tried by a probe
/// script with `redis.pcall`: returns `{command, error}` for the first refused, `{'ok', ''}`.
const PROBE_SCRIPT: &str = r#"
local checks = {
  {'SET', KEYS[1], 'p', 'PX', '5000'}, {'GET', KEYS[1]}, {'DEL', KEYS[1]},
  {'HSET', KEYS[2], 'f', '1'}, {'HEXISTS', KEYS[2], 'f'}, {'HGET', KEYS[2], 'f'},
  {'HMGET', KEYS[2], 'f'}, {'HINCRBY', KEYS[2], 'f', '1'},
  {'HSCAN', KEYS[2], '0', 'COUNT', '1'}, {'HDEL', KEYS[2], 'f'},
  {'TIME'}, {'PUBLISH', ARGV[1], 'probe'},
}
for _, c in ipairs(checks) do
  local r = redis.pcall(unpack(c))
  if type(r) == 'table' and r.err then
    redis.pcall('DEL', KEYS[1], KEYS[2])
    return {c[1], r.err}
  end
end
return {'ok', ''}
"#;

/// Tries every command the cache sends from outside scripts, then the probe script (which
/// loads itself with `SCRIPT LOAD` and runs with `EVALSHA`, as the cache's scripts do).
async fn probe_commands(
    conn: &mut RedisConnection,
    first: Option<&super::conn::Node>,
    target: &str,
) -> Result<(), StoreError> {
    let nonce: u64 = rand::random();
    let value = format!("herdwise:{{probe}}:{nonce:x}:v");
    let table = format!("herdwise:{{probe}}:{nonce:x}:t");
    let channel = "herdwise:probe";
    let mut checks: Vec<(&str, redis::Cmd)> = Vec::new();
    let mut set = redis::cmd("SET");
    set.arg(&value).arg("p").arg("NX").arg("PX").arg(5000);
    checks.push(("SET", set));
    let mut get = redis::cmd("GET");
    get.arg(&value);
    checks.push(("GET", get));
    let mut mget = redis::cmd("MGET");
    mget.arg(&value);
    checks.push(("MGET", mget));
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(channel).arg("probe");
    checks.push(("PUBLISH", publish));
    let mut eval = redis::cmd("EVAL");
    eval.arg("return 1").arg(0);
    checks.push(("EVAL", eval));
    for (name, cmd) in &checks {
        let _: redis::Value = cmd
            .query_async(conn)
            .await
            .map_err(|e| permission(target, name, &e))?;
    }
    let mut scan = redis::cmd("SCAN");
    scan.arg(0)
        .arg("MATCH")
        .arg("herdwise:{probe}:none")
        .arg("COUNT")
        .arg(1);
    let _: redis::Value = conn
        .on_node(first, &scan)
        .await
        .map_err(|e| permission(target, "SCAN", &e))?;
    // MULTI/EXEC, as `set` and `delete` send them.
    let multi: Result<(i64,), _> = redis::pipe()
        .atomic()
        .cmd("UNLINK")
        .arg(&value)
        .query_async(conn)
        .await;
    multi.map_err(|e| permission(target, "MULTI, EXEC or UNLINK", &e))?;
    let script = Script::new(PROBE_SCRIPT);
    let (command, error): (String, String) = script
        .key(&value)
        .key(&table)
        .arg(channel)
        .invoke_async(conn)
        .await
        .map_err(|e| permission(target, "EVALSHA or SCRIPT LOAD", &e))?;
    if command != "ok" {
        return Err(StoreError::NotPermitted {
            target: target.to_string(),
            command: format!("{command} (inside a script)"),
            detail: error,
        });
    }
    Ok(())
}

/// Subscribes once on a connection of its own, as the backplane and fill waiters will.
async fn probe_subscribe(client: &redis::Client, target: &str) -> Result<(), StoreError> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|e| refused(target, &e))?;
    pubsub
        .subscribe("herdwise:probe")
        .await
        .map_err(|e| permission(target, "SUBSCRIBE", &e))?;
    Ok(())
}

/// Warns if Redis may evict keys without a TTL too (`allkeys-*`). Herdwise's tag table (which
/// holds the namespace generation) carries no TTL, so `volatile-*` policies never evict it; the
/// rest of its metadata (leases, fences, the recovery sentinel) is safe to lose. Managed Redis
/// often refuses `CONFIG`: then nothing is said.
async fn check_eviction_policy(conn: &mut RedisConnection, node: Option<&super::conn::Node>) {
    let reply: Result<Vec<String>, _> = conn
        .on_node(
            node,
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"),
        )
        .await;
    match reply.as_deref() {
        Ok([_, policy]) if policy.starts_with("allkeys-") => tracing::warn!(
            policy = %policy,
            "redis may evict any key: Herdwise notices when its tag table is evicted and stays \
             correct, at the cost of misses (tagged entries stamped before the loss are \
             reloaded; its generation moves to a new one, so the namespace starts cold); a \
             volatile-* policy never evicts it"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "maxmemory-policy not readable"),
    }
}
