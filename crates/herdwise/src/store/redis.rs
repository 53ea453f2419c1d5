//! Redis as the L2 tier, through `redis::aio::ConnectionManager`.
//!
//! Why `ConnectionManager`: it reconnects by itself after a dropped connection (a plain
//! multiplexed connection stays broken). Every atomic operation is one round trip: a Lua script
//! sent as EVALSHA, reloaded automatically when the server answers NOSCRIPT (after a restart or
//! SCRIPT FLUSH). Scripts are never sent inside pipelines, where that reload does not happen.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::broadcast;

use super::{
    fence_key, glob_escape, lease_key, lua_version_guard, Announcement, FillOutcome, SetOutcome,
    Store, StoreError, StoreEvent, TagTable,
};
use crate::envelope::VERSION_OFFSET;

/// Keys asked of each `SCAN` step: small enough that no step blocks Redis noticeably.
const SCAN_BATCH: usize = 1000;

/// Default deadline for one Redis call, applied by the cache.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Writes ARGV[1] with PX ARGV[2] unless the stored envelope's version is higher than
/// ARGV[3]:ARGV[4] (the version as two u32 halves: Lua numbers are doubles). ARGV[5] is the
/// envelope's version offset. Returns 1 if written, 0 if refused.
fn set_if_not_older_script() -> String {
    format!(
        "local cur = redis.call('GET', KEYS[1])\n{}\nredis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\nreturn 1\n",
        lua_version_guard(3, 4, 5, "return 0")
    )
}

/// The fenced fill. KEYS[1] value, KEYS[2] lease; ARGV as above plus ARGV[6] token and ARGV[7]
/// the channel to announce the fill on. Returns 1 stored, 0 refused (older), -1 lease lost.
fn fill_leased_script() -> String {
    format!(
        r#"
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[6] then
  redis.call('PUBLISH', ARGV[7], KEYS[1])
  return -1
end
redis.call('DEL', KEYS[2])
local cur = redis.call('GET', KEYS[1])
{}
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[7], KEYS[1])
return 1
"#,
        lua_version_guard(3, 4, 5, "redis.call('PUBLISH', ARGV[7], KEYS[1]) return 0")
    )
}

/// The fenced fill without a lease. KEYS[1] value, KEYS[2] fence; ARGV as `fill_leased_script`
/// (ARGV[6] the fence token). Returns 1 stored, 0 refused (older), -1 fence down.
fn fill_fenced_script() -> String {
    format!(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[6] then
  redis.call('PUBLISH', ARGV[7], KEYS[1])
  return -1
end
local cur = redis.call('GET', KEYS[1])
{}
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[7], KEYS[1])
return 1
"#,
        lua_version_guard(3, 4, 5, "redis.call('PUBLISH', ARGV[7], KEYS[1]) return 0")
    )
}

/// Creates the tag table KEYS[1] if it is missing (clock = floor = the server's time in µs; no
/// generation field: generation 0); shared by the tag scripts. Leaves the time in `now_us`
/// (string) and `now_ms` (number).
const TAG_TABLE_INIT: &str = r#"
local t = redis.call('TIME')
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HEXISTS', KEYS[1], 'clock') == 0 then
  redis.call('HSET', KEYS[1], 'clock', now_us, 'floor', now_us)
end
"#;

/// Advancing the namespace generation: KEYS[1] the tag table, ARGV[1] the caller's generation.
/// The new one is one above the larger of the two, and at least the server's time in ms: a
/// generation lost with its table and handed out again from 0 never meets an earlier one.
const ADVANCE_GENERATION_BODY: &str = r#"
local g = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local known = tonumber(ARGV[1])
if known > g then
  g = known
end
g = g + 1
if now_ms > g then
  g = now_ms
end
g = string.format('%.0f', g)
redis.call('HSET', KEYS[1], 'gen', g)
return g
"#;

/// Tag invalidation: KEYS[1] the tag table; ARGV[1] the tag's field (`t:<tag>`), ARGV[2] how
/// long marks are kept (ms), ARGV[3] the channel or stream ('' for none), ARGV[4]/ARGV[5] the
/// message around the new clock value, ARGV[6] the stream's max length ('' to publish instead).
/// A mark is `<clock>:<unix ms>`; each call prunes up to 32 fields past their keep time,
/// resuming an HSCAN where the last call stopped. Values travel as strings (Lua numbers would
/// print in exponent form).
const BUMP_TAG_BODY: &str = r#"
redis.call('HINCRBY', KEYS[1], 'clock', 1)
local c = redis.call('HGET', KEYS[1], 'clock')
redis.call('HSET', KEYS[1], ARGV[1], c .. ':' .. string.format('%.0f', now_ms))
local keep = tonumber(ARGV[2])
local scan = redis.call('HSCAN', KEYS[1], redis.call('HGET', KEYS[1], 'cursor') or '0', 'COUNT', 32)
redis.call('HSET', KEYS[1], 'cursor', scan[1])
local items = scan[2]
for i = 1, #items, 2 do
  local f = items[i]
  if string.sub(f, 1, 2) == 't:' and f ~= ARGV[1] then
    local at = tonumber(string.match(items[i + 1], ':(%d+)$'))
    if at and at + keep < now_ms then
      redis.call('HDEL', KEYS[1], f)
    end
  end
end
if ARGV[3] ~= '' then
  if ARGV[6] == '' then
    redis.call('PUBLISH', ARGV[3], ARGV[4] .. c .. ARGV[5])
  else
    redis.call('XADD', ARGV[3], 'MAXLEN', '~', ARGV[6], '*', 'm', ARGV[4] .. c .. ARGV[5])
  end
end
return c
"#;

/// Reading the tag table: KEYS[1] the table; ARGV[1] the caller's generation (written back if
/// the table's is lower: it was lost), ARGV[2..] the tags' fields. Returns {generation, clock,
/// floor, mark...} as strings (false for absent).
const READ_TAGS_BODY: &str = r#"
local known = table.remove(ARGV, 1)
local g = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if tonumber(known) > g then
  redis.call('HSET', KEYS[1], 'gen', known)
end
return redis.call('HMGET', KEYS[1], 'gen', 'clock', 'floor', unpack(ARGV))
"#;

/// Compare-and-delete of a lease: KEYS[1] lease, ARGV[1] token.
const RELEASE_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
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
    pubsub_health: PubSubHealth,
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

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            // Backstop only: the cache's own deadline is what callers see.
            .set_response_timeout(Some(self.call_timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500))
    }

    /// Connects now; fails if Redis is unreachable. Reads `maxmemory-policy` where the server
    /// allows it and warns when Redis may evict any key (`allkeys-*`): Herdwise detects the
    /// loss of its metadata and stays correct, but every loss costs misses.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn =
            ConnectionManager::new_with_config(client.clone(), self.manager_config()).await?;
        check_eviction_policy(&mut conn).await;
        Ok(RedisStore::from_parts(
            client,
            conn,
            self.call_timeout,
            self.pubsub_health,
        ))
    }

    /// Returns at once and connects on first use, so a service can start while Redis is down
    /// (reads then go to the origin until it is up).
    pub fn connect_lazy(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())?;
        Ok(RedisStore::from_parts(
            client,
            conn,
            self.call_timeout,
            self.pubsub_health,
        ))
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
    /// For dedicated connections (subscriptions).
    client: redis::Client,
    conn: ConnectionManager,
    call_timeout: Duration,
    set_if_not_older: Script,
    fill_leased: Script,
    fill_fenced: Script,
    bump_tag: Script,
    read_tags: Script,
    advance_generation: Script,
    pubsub_health: PubSubHealth,
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
            pubsub_health: PubSubHealth {
                every: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
            },
        }
    }

    fn from_parts(
        client: redis::Client,
        conn: ConnectionManager,
        call_timeout: Duration,
        pubsub_health: PubSubHealth,
    ) -> Self {
        RedisStore {
            pubsub_health,
            client,
            conn,
            call_timeout,
            set_if_not_older: Script::new(&set_if_not_older_script()),
            fill_leased: Script::new(&fill_leased_script()),
            fill_fenced: Script::new(&fill_fenced_script()),
            bump_tag: Script::new(&format!("{TAG_TABLE_INIT}{BUMP_TAG_BODY}")),
            read_tags: Script::new(&format!("{TAG_TABLE_INIT}{READ_TAGS_BODY}")),
            advance_generation: Script::new(&format!("{TAG_TABLE_INIT}{ADVANCE_GENERATION_BODY}")),
        }
    }

    /// The underlying connection, for commands Herdwise does not wrap.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Warns if Redis may evict keys without a TTL too (`allkeys-*`). Herdwise's tag table and
/// namespace generation carry no TTL, so `volatile-*` policies never evict them; the rest of its
/// metadata (leases, fences, the recovery sentinel) is safe to lose. Managed Redis often refuses
/// `CONFIG`: then nothing is said.
async fn check_eviction_policy(conn: &mut ConnectionManager) {
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
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

/// `SET <lease> <token> NX PX <ttl>`: takes a load lease if nobody holds it.
fn lease_command(key: &str, token: u64, ttl: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(lease_key(key))
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(px(ttl));
    cmd
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
        // MULTI/EXEC in one round trip: the write and the voiding of any load lease.
        let () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .arg("PX")
            .arg(px(ttl))
            .ignore()
            .cmd("UNLINK")
            .arg(lease_key(key))
            .arg(fence_key(key))
            .ignore()
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
        // UNLINK frees large values off the main thread. Value and lease share a slot, so one
        // command removes both: a load in flight can no longer fill.
        let (removed, _lease): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("UNLINK")
            .arg(key)
            .cmd("UNLINK")
            .arg(lease_key(key))
            .arg(fence_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut removed = 0;
        // The leases and fences of every key under the prefix (`{<key>}:lease`, `{<key>}:fence`)
        // first, then the values (with their claims again): a load in flight under the prefix
        // is voided before the walk passes its key, so its fill cannot land behind the walk.
        for pattern in [
            format!("{{{}*", glob_escape(prefix)),
            format!("{}*", glob_escape(prefix)),
        ] {
            let leases = pattern.starts_with('{');
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let mut unlink = redis::cmd("UNLINK");
                    for key in &keys {
                        unlink.arg(key);
                        if !leases {
                            unlink.arg(lease_key(key)).arg(fence_key(key));
                        }
                    }
                    let n: u64 = unlink.query_async(&mut conn).await?;
                    if !leases {
                        removed += n.min(keys.len() as u64);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = lease_command(key, token, ttl)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    async fn try_lease_and_get(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), StoreError> {
        let mut conn = self.conn.clone();
        // Pipelined: one round trip, and the GET sees every fill that landed before the SET.
        let (taken, value): (Option<String>, Option<Vec<u8>>) = redis::pipe()
            .add_command(lease_command(key, token, ttl))
            .cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        Ok((taken.is_some(), value.map(Bytes::from)))
    }

    async fn fill_leased(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        token: u64,
        channel: &str,
    ) -> Result<FillOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let outcome: i64 = self
            .fill_leased
            .key(key)
            .key(lease_key(key))
            .arg(value.as_ref())
            .arg(px(ttl))
            .arg(version >> 32)
            .arg(version & 0xFFFF_FFFF)
            .arg(VERSION_OFFSET)
            .arg(token)
            .arg(channel)
            .invoke_async(&mut conn)
            .await?;
        Ok(match outcome {
            1 => FillOutcome::Stored,
            0 => FillOutcome::RefusedOlder,
            _ => FillOutcome::LeaseLost,
        })
    }

    async fn open_fence(&self, key: &str, token: u64, ttl: Duration) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let fence = fence_key(key);
        // Pipelined: one round trip; the GET answers whichever fence stands.
        let (_set, current): (Option<String>, Option<u64>) = redis::pipe()
            .cmd("SET")
            .arg(&fence)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(px(ttl))
            .cmd("GET")
            .arg(&fence)
            .query_async(&mut conn)
            .await?;
        // Gone already (expired between the two): a token nobody holds, so the fill is refused.
        Ok(current.unwrap_or(0))
    }

    async fn fill_fenced(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        fence: u64,
        channel: &str,
    ) -> Result<FillOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let outcome: i64 = self
            .fill_fenced
            .key(key)
            .key(fence_key(key))
            .arg(value.as_ref())
            .arg(px(ttl))
            .arg(version >> 32)
            .arg(version & 0xFFFF_FFFF)
            .arg(VERSION_OFFSET)
            .arg(fence)
            .arg(channel)
            .invoke_async(&mut conn)
            .await?;
        Ok(match outcome {
            1 => FillOutcome::Stored,
            0 => FillOutcome::RefusedOlder,
            _ => FillOutcome::LeaseLost,
        })
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        // EVAL, not EVALSHA: a release is often sent and abandoned (after a lease attempt timed
        // out) and must work by itself when Redis gets to it — no NOSCRIPT and reload round
        // trip that nobody would be waiting to make. Releases are rare; the script is short.
        let _: i64 = redis::cmd("EVAL")
            .arg(RELEASE_LEASE)
            .arg(1)
            .arg(lease_key(key))
            .arg(token)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn bump_tag(
        &self,
        table: &str,
        tag: &str,
        mark_ttl: Duration,
        announce: Option<Announcement<'_>>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let (channel, prefix, suffix) =
            announce.map_or(("", "", ""), |a| (a.channel, a.prefix, a.suffix));
        let stream_max_len = announce
            .and_then(|a| a.stream_max_len)
            .map_or(String::new(), |n| n.to_string());
        let clock: String = self
            .bump_tag
            .key(table)
            .arg(format!("t:{tag}"))
            .arg(px(mark_ttl))
            .arg(channel)
            .arg(prefix)
            .arg(suffix)
            .arg(stream_max_len)
            .invoke_async(&mut conn)
            .await?;
        clock
            .parse()
            .map_err(|_| StoreError::Other(format!("tag clock is not a number: {clock:?}")))
    }

    async fn read_tags(
        &self,
        table: &str,
        tags: &[&str],
        known_generation: u64,
    ) -> Result<TagTable, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.read_tags.key(table);
        invocation.arg(known_generation);
        for tag in tags {
            invocation.arg(format!("t:{tag}"));
        }
        let values: Vec<Option<String>> = invocation.invoke_async(&mut conn).await?;
        if values.len() != tags.len() + 3 {
            return Err(StoreError::Other("tag table: unexpected reply".into()));
        }
        // A mark is `<clock>:<ms>`; the generation, clock and floor are plain numbers.
        let number = |v: &Option<String>| {
            v.as_deref()
                .and_then(|v| v.split(':').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(TagTable {
            generation: number(&values[0]),
            clock: number(&values[1]),
            floor: number(&values[2]),
            marks: values[3..].iter().map(number).collect(),
        })
    }

    async fn advance_generation(&self, table: &str, at_least: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let generation: String = self
            .advance_generation
            .key(table)
            .arg(at_least)
            .invoke_async(&mut conn)
            .await?;
        generation
            .parse()
            .map_err(|_| StoreError::Other(format!("generation is not a number: {generation:?}")))
    }

    async fn server_id(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string()))
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message.as_ref())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn stream_append(
        &self,
        stream: &str,
        message: Bytes,
        max_len: usize,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _id: String = redis::cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("m")
            .arg(message.as_ref())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    fn stream_subscribe(&self, stream: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = broadcast::channel(4096);
        runtime.spawn(keep_reading(self.client.clone(), stream.to_string(), tx));
        Some(rx)
    }

    fn subscribe(&self, channel: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = broadcast::channel(4096);
        runtime.spawn(keep_subscribed(
            self.client.clone(),
            channel.to_string(),
            tx,
            self.pubsub_health,
        ));
        Some(rx)
    }
}

/// Holds a subscription to `channel` on a dedicated connection for as long as anyone listens:
/// forwards messages, and after a disconnect resubscribes with backoff, announcing each
/// (re)subscription so listeners know they may have missed messages.
///
/// A subscription connection is otherwise silent, so a half-open one (a NAT or proxy that
/// dropped it without a reset) would lose every message unnoticed. It is pinged every
/// `health.every`; a reply missing after `health.timeout` means the subscription is lost: the
/// listeners get [`StoreEvent::Lost`] at once (they stop trusting what they hold), and the
/// connection is replaced.
async fn keep_subscribed(
    client: redis::Client,
    channel: String,
    tx: broadcast::Sender<StoreEvent>,
    health: PubSubHealth,
) {
    let mut backoff = Duration::from_millis(50);
    while tx.receiver_count() > 0 {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                let _ = tx.send(StoreEvent::Subscribed);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(health.every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.reset();
                let lost = loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(m) => {
                                let payload = Bytes::copy_from_slice(m.get_payload_bytes());
                                if tx.send(StoreEvent::Message(payload)).is_err() {
                                    return;
                                }
                            }
                            None => break "connection closed",
                        },
                        _ = ping.tick() => {
                            if tx.receiver_count() == 0 {
                                return;
                            }
                            let pong = sink.ping::<redis::Value>();
                            match tokio::time::timeout(health.timeout, pong).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(_)) => break "ping failed",
                                Err(_) => break "no reply to ping",
                            }
                        }
                    }
                };
                tracing::warn!(%channel, reason = lost, "redis subscription lost; resubscribing");
                if tx.send(StoreEvent::Lost).is_err() {
                    return;
                }
            }
            Ok(Err(e)) => tracing::debug!(%channel, error = %e, "subscribe failed"),
            Err(_) => tracing::debug!(%channel, "subscribe timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a subscription connection is checked (see [`RedisStoreBuilder::pubsub_health_check`]).
#[derive(Debug, Clone, Copy)]
struct PubSubHealth {
    every: Duration,
    timeout: Duration,
}

/// How long one `XREAD` blocks: also how often the reader notices that nobody listens any more.
const STREAM_BLOCK: Duration = Duration::from_secs(1);
/// Entries per `XREAD`.
const STREAM_BATCH: usize = 512;
/// The position before any entry.
const STREAM_START: &str = "0-0";

/// Entries as `XRANGE`/`XREVRANGE`/`XREAD` return them: id and field-value pairs.
type StreamEntries = Vec<(String, Vec<Vec<u8>>)>;

/// Where a stream reader stands.
#[derive(Debug, Clone)]
struct StreamPosition {
    /// The id to read after.
    last: String,
    /// The stream's `entries-added` when the reader started (or restarted).
    added_at_start: u64,
    /// Entries read since then.
    read: u64,
}

/// What `XINFO STREAM` says, as far as continuity goes.
struct StreamInfo {
    entries_added: u64,
    length: u64,
    last_generated_id: String,
}

/// Reads `stream` for as long as anyone listens: forwards the `m` field of each entry, and after
/// a disconnect resumes after the last entry forwarded. Sends `Subscribed` at the start, and again
/// whenever it cannot prove continuity (then it restarts from the stream's end).
async fn keep_reading(client: redis::Client, stream: String, tx: broadcast::Sender<StoreEvent>) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(STREAM_BLOCK + Duration::from_secs(2)));
    let mut position: Option<StreamPosition> = None;
    let mut backoff = Duration::from_millis(50);
    while tx.receiver_count() > 0 {
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(%stream, error = %e, "event stream connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("herdwise-events")
            .query_async(&mut conn)
            .await;
        let info = match stream_info(&mut conn, &stream).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(%stream, error = %e, "event stream unreadable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut at = match position.take() {
            Some(p) if continuous(&p, info.as_ref()) => p,
            previous => {
                if previous.is_some() {
                    tracing::warn!(%stream, "events were missed while disconnected");
                }
                if tx.send(StoreEvent::Subscribed).is_err() {
                    return;
                }
                info.map_or(
                    StreamPosition {
                        last: STREAM_START.to_string(),
                        added_at_start: 0,
                        read: 0,
                    },
                    |i| StreamPosition {
                        last: i.last_generated_id,
                        added_at_start: i.entries_added,
                        read: 0,
                    },
                )
            }
        };
        loop {
            let read: Result<Option<Vec<(String, StreamEntries)>>, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(STREAM_BATCH)
                .arg("BLOCK")
                .arg(STREAM_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&at.last)
                .query_async(&mut conn)
                .await;
            let Ok(read) = read else { break };
            for (_, entries) in read.unwrap_or_default() {
                for (id, fields) in entries {
                    if let Some(message) = message_field(&fields) {
                        if tx.send(StoreEvent::Message(message)).is_err() {
                            return;
                        }
                    }
                    at.last = id;
                    at.read += 1;
                }
            }
            if tx.receiver_count() == 0 {
                return;
            }
        }
        position = Some(at);
        tracing::warn!(%stream, "event stream connection lost; resuming");
        tokio::time::sleep(backoff).await;
    }
}

/// The value of field `m` in a field-value list.
fn message_field(fields: &[Vec<u8>]) -> Option<Bytes> {
    fields
        .chunks(2)
        .find(|pair| pair.len() == 2 && pair[0] == b"m")
        .map(|pair| Bytes::copy_from_slice(&pair[1]))
}

/// `XINFO STREAM` (Redis 7: `entries-added`), or `None` if the stream does not exist.
async fn stream_info(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Result<Option<StreamInfo>, redis::RedisError> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    if !exists {
        return Ok(None);
    }
    let info: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await?;
    let field = |name: &[u8]| {
        info.chunks(2).find_map(|pair| match pair {
            [redis::Value::BulkString(k), v] if k == name => Some(v.clone()),
            _ => None,
        })
    };
    let number = |name: &[u8]| field(name).and_then(|v| redis::from_redis_value::<u64>(v).ok());
    let (Some(entries_added), Some(length), Some(last)) = (
        number(b"entries-added"),
        number(b"length"),
        field(b"last-generated-id").and_then(|v| redis::from_redis_value::<String>(v).ok()),
    ) else {
        // Before Redis 7 there is no `entries-added`: continuity cannot be proven.
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "XINFO STREAM without entries-added (Redis < 7)",
        )));
    };
    Ok(Some(StreamInfo {
        entries_added,
        length,
        last_generated_id: last,
    }))
}

/// Whether reading on from `at` misses nothing: every entry added since the reader's start that
/// it has not read is still in the stream (trimming removes the oldest entries first, so if the
/// stream is at least as long as the unread part, none of it was trimmed), and the stream is the
/// same one (a stream lost with Redis' data and recreated has fewer entries added).
fn continuous(at: &StreamPosition, info: Option<&StreamInfo>) -> bool {
    let seen = at.added_at_start + at.read;
    match info {
        None => seen == 0,
        Some(info) => info.entries_added >= seen && info.length >= info.entries_added - seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(added_at_start: u64, read: u64) -> StreamPosition {
        StreamPosition {
            last: "1-0".into(),
            added_at_start,
            read,
        }
    }

    fn info(entries_added: u64, length: u64) -> StreamInfo {
        StreamInfo {
            entries_added,
            length,
            last_generated_id: "9-0".into(),
        }
    }

    #[test]
    fn continuity_needs_every_unread_entry_still_in_the_same_stream() {
        // Started when 100 had been added, read 5; 3 more added since, all still there.
        assert!(continuous(&at(100, 5), Some(&info(108, 50))));
        // 3 unread, but the stream was trimmed to 2 entries: one of them is gone.
        assert!(!continuous(&at(100, 5), Some(&info(108, 2))));
        // Fewer entries ever added than we saw: a new stream (Redis lost its data).
        assert!(!continuous(&at(100, 5), Some(&info(10, 10))));
        // Gone entirely: fine only if there never was anything.
        assert!(continuous(&at(0, 0), None));
        assert!(!continuous(&at(0, 1), None));
        // Nothing unread, stream trimmed to nothing: nothing was missed.
        assert!(continuous(&at(100, 8), Some(&info(108, 0))));
    }
}
