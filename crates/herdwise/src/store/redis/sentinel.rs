//! Redis Sentinel: the primary is found through a set of sentinels, and followed after a
//! failover.
//!
//! Contract: [`Watched`] owns the connection to the current primary and replaces it when the
//! sentinels name another one: checked every [`WATCH_EVERY`] by a background task (which ends
//! with the store), and at once after a call fails in a way that says "not the primary any
//! more" (connection lost or refused, `READONLY`, `MASTERDOWN`). A new primary is used only
//! after it answers `ROLE` as a master. Each replacement bumps [`Watched::epoch`], so that
//! subscriptions held on the old primary are remade (and announced as a possible gap).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, RedisError};

use super::StoreError;

/// How often the sentinels are asked who the primary is.
pub(super) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How long asking one sentinel, or reaching a primary, may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Opens a client for a node (applying the builder's TLS certificates).
pub(super) type OpenClient =
    Arc<dyn Fn(&ConnectionInfo) -> Result<redis::Client, StoreError> + Send + Sync>;

/// What to connect to: the sentinels, the service they monitor, and how to reach data nodes.
#[derive(Clone)]
pub(super) struct SentinelSpec {
    pub(super) sentinels: Vec<ConnectionInfo>,
    pub(super) service: String,
    /// Credentials, database and TLS of the data nodes; the address is replaced by the
    /// primary's.
    pub(super) data: ConnectionInfo,
    /// Opens a client (applying TLS certificates).
    pub(super) open: OpenClient,
    pub(super) manager: ConnectionManagerConfig,
}

/// The current primary.
#[derive(Clone)]
struct Primary {
    address: (String, u16),
    client: redis::Client,
    conn: ConnectionManager,
}

/// The connection to whichever node the sentinels name primary.
pub(super) struct Watched {
    spec: SentinelSpec,
    current: RwLock<Primary>,
    epoch: AtomicU64,
    looking: AtomicBool,
}

impl Watched {
    /// Finds the primary and connects to it; starts the watch task if a runtime runs.
    pub(super) async fn connect(spec: SentinelSpec) -> Result<Arc<Self>, StoreError> {
        let primary = discover(&spec).await?;
        let watched = Arc::new(Watched {
            spec,
            current: RwLock::new(primary),
            epoch: AtomicU64::new(0),
            looking: AtomicBool::new(false),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&watched)));
        }
        Ok(watched)
    }

    /// The connection to the current primary.
    pub(super) fn conn(&self) -> ConnectionManager {
        self.current.read().conn.clone()
    }

    /// A client for the current primary (subscriptions).
    pub(super) fn client(&self) -> redis::Client {
        self.current.read().client.clone()
    }

    /// Bumped at every change of primary.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Looks for the primary again now (after a failed call), unless a look is running.
    pub(super) fn failed(self: &Arc<Self>, error: &RedisError) {
        let moved = error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
            || matches!(error.code(), Some("READONLY" | "MASTERDOWN"));
        // (Checked before spawning: an outage fails many calls a second, one look suffices.)
        if !moved || self.looking.load(Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let watched = Arc::clone(self);
            runtime.spawn(async move { watched.look().await });
        }
    }

    /// Asks the sentinels; switches to the primary they name if it is another one.
    async fn look(&self) {
        if self.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        let _done = LookDone(&self.looking);
        let Ok(address) = ask(&self.spec).await else {
            return;
        };
        if address == self.current.read().address {
            return;
        }
        match connect_primary(&self.spec, address.clone()).await {
            Ok(primary) => {
                tracing::warn!(
                    service = %self.spec.service,
                    primary = %format!("{}:{}", address.0, address.1),
                    "redis sentinel: the primary moved; following it"
                );
                *self.current.write() = primary;
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => tracing::debug!(error = %e, "the new primary is not ready yet"),
        }
    }
}

/// Clears a watcher's "looking" flag when a look ends, however it ends (shared with the
/// cluster watcher).
pub(super) struct LookDone<'a>(pub(super) &'a AtomicBool);

impl Drop for LookDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Watches for as long as the store lives.
async fn watch(watched: Weak<Watched>) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(watched) = watched.upgrade() else {
            return;
        };
        watched.look().await;
    }
}

/// The primary's address, from the first sentinel that names one; else what went wrong with
/// the last sentinel asked.
async fn ask(spec: &SentinelSpec) -> Result<(String, u16), String> {
    let mut last = String::from("no sentinel configured");
    for sentinel in &spec.sentinels {
        let asked = async {
            // Opened as the data nodes are: the configured CA and client certificate apply to
            // the sentinels too.
            let client = (spec.open)(sentinel).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&spec.service)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            reply.ok_or_else(|| format!("it monitors no service {:?}", spec.service))
        };
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(address)) => return Ok(address),
            Ok(Err(e)) => last = format!("{}: {e}", sentinel.addr()),
            Err(_) => last = format!("{}: no answer within {ASK_TIMEOUT:?}", sentinel.addr()),
        }
    }
    Err(last)
}

/// Finds the primary (see [`ask`]) and connects to it.
async fn discover(spec: &SentinelSpec) -> Result<Primary, StoreError> {
    let target = describe(spec);
    let address = ask(spec).await.map_err(|last| StoreError::Connect {
        target: target.clone(),
        reason: format!(
            "no sentinel answered with a primary for {:?} (check the sentinel addresses, \
             the service name, sentinel credentials and TLS); last: {last}",
            spec.service
        ),
    })?;
    connect_primary(spec, address).await
}

/// Connects to `address` and checks that it is a primary.
async fn connect_primary(
    spec: &SentinelSpec,
    address: (String, u16),
) -> Result<Primary, StoreError> {
    let target = format!("{}:{}", address.0, address.1);
    let addr = match spec.data.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: address.0.clone(),
            port: address.1,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(address.0.clone(), address.1),
    };
    let info = spec.data.clone().set_addr(addr);
    let client = (spec.open)(&info)?;
    let connecting = ConnectionManager::new_with_config(client.clone(), spec.manager.clone());
    let mut conn = match tokio::time::timeout(ASK_TIMEOUT * 4, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(super::connect::refused(&target, &e)),
        Err(_) => {
            return Err(StoreError::Connect {
                target,
                reason: "the primary did not answer in time".into(),
            })
        }
    };
    let role: Result<Vec<redis::Value>, _> = redis::cmd("ROLE").query_async(&mut conn).await;
    let role = role.map_err(|e| super::connect::refused(&target, &e))?;
    let is_master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
    if !is_master {
        return Err(StoreError::Connect {
            target,
            reason: "the node the sentinels named is not a primary (yet)".into(),
        });
    }
    Ok(Primary {
        address,
        client,
        conn,
    })
}

fn describe(spec: &SentinelSpec) -> String {
    let nodes: Vec<String> = spec
        .sentinels
        .iter()
        .map(|s| s.addr().to_string())
        .collect();
    format!("sentinels {} (service {:?})", nodes.join(","), spec.service)
}

/// The connection of a sentinel-managed store: calls go to the current primary; a failure
/// that says it moved makes [`Watched`] look at once.
#[derive(Clone)]
pub(super) struct SentinelConnection(pub(super) Arc<Watched>);

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let mut conn = self.0.conn();
        let watched = Arc::clone(&self.0);
        Box::pin(async move {
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                watched.failed(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let mut conn = self.0.conn();
        let watched = Arc::clone(&self.0);
        Box::pin(async move {
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                watched.failed(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.spec.data.redis_settings().db()
    }
}
