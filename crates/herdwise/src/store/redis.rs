//! Redis as the L2 tier, through `redis::aio::ConnectionManager`.
//!
//! Why `ConnectionManager`: it reconnects by itself after a dropped connection (a plain
//! multiplexed connection stays broken). Every atomic operation is one round trip: a Lua script
//! sent as EVALSHA, reloaded automatically when the server answers NOSCRIPT (after a restart or
//! SCRIPT FLUSH). Scripts are never sent inside pipelines, where that reload does not happen.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{SetOutcome, Store, StoreError};
use crate::envelope::VERSION_OFFSET;

/// Default deadline for one Redis call, applied by the cache.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Writes ARGV[1] with PX ARGV[2] unless the stored envelope's version (big-endian u64 at the
/// envelope's version offset, compared as two u32 halves because Lua numbers are doubles) is
/// higher than ARGV[3]:ARGV[4]. Returns 1 if written, 0 if refused.
const SET_IF_NOT_OLDER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= tonumber(ARGV[5]) + 8 and string.sub(cur, 1, 2) == 'HW' then
  local at = tonumber(ARGV[5]) + 1
  local hi = struct.unpack('>I4', cur, at)
  local lo = struct.unpack('>I4', cur, at + 4)
  local nhi = tonumber(ARGV[3])
  local nlo = tonumber(ARGV[4])
  if hi > nhi or (hi == nhi and lo > nlo) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Configures a [`RedisStore`].
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
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    call_timeout: Duration,
    connection_timeout: Duration,
    reconnect_retries: usize,
}

impl RedisStoreBuilder {
    /// The deadline the cache applies to each call (default 50 ms).
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

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            // Backstop only: the cache's own deadline is what callers see.
            .set_response_timeout(Some(self.call_timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500))
    }

    /// Connects now; fails if Redis is unreachable.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())?;
        let conn = ConnectionManager::new_with_config(client, self.manager_config()).await?;
        Ok(RedisStore::from_parts(conn, self.call_timeout))
    }

    /// Returns at once and connects on first use, so a service can start while Redis is down
    /// (reads then go to the origin until it is up).
    pub fn connect_lazy(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())?;
        let conn = ConnectionManager::new_lazy_with_config(client, self.manager_config())?;
        Ok(RedisStore::from_parts(conn, self.call_timeout))
    }
}

/// Redis (standalone) as the shared L2 tier. Cheap to clone: clones share one multiplexed,
/// self-reconnecting connection.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use herdwise::{Cache, RedisStore};
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let cache: Cache<u64, String> = Cache::builder("users").store(store).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    call_timeout: Duration,
    set_if_not_older: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`) with default settings.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for connection settings.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_string(),
            call_timeout: DEFAULT_REDIS_TIMEOUT,
            connection_timeout: Duration::from_secs(1),
            reconnect_retries: 2,
        }
    }

    fn from_parts(conn: ConnectionManager, call_timeout: Duration) -> Self {
        RedisStore {
            conn,
            call_timeout,
            set_if_not_older: Script::new(SET_IF_NOT_OLDER),
        }
    }

    /// The underlying connection, for commands Herdwise does not wrap.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Milliseconds for PX: at least 1 (PX 0 is an error).
fn px(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn default_timeout(&self) -> Duration {
        self.call_timeout
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let written: i64 = self
            .set_if_not_older
            .key(key)
            .arg(value.as_ref())
            .arg(px(ttl))
            .arg(version >> 32)
            .arg(version & 0xFFFF_FFFF)
            .arg(VERSION_OFFSET)
            .invoke_async(&mut conn)
            .await?;
        Ok(if written == 1 {
            SetOutcome::Stored
        } else {
            SetOutcome::RefusedOlder
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        // UNLINK frees large values off the main thread; same semantics as DEL for us.
        let removed: i64 = redis::cmd("UNLINK").arg(key).query_async(&mut conn).await?;
        Ok(removed > 0)
    }
}
