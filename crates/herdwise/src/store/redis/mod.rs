//! Redis as the L2 tier: one server (`redis::aio::ConnectionManager`) or a Redis Cluster
//! (redis-rs's async cluster client), behind one [`RedisConnection`].
//!
//! Contract: every multi-key command and script touches keys of one slot only (a value with
//! its `{<key>}:lease` and `{<key>}:fence`; a namespace's tag table with its event stream,
//! all under `{ns:<ns>}`), so the same code runs on every topology. Keyspace walks (`SCAN`)
//! visit every primary. Why `ConnectionManager`: it reconnects by itself after a dropped
//! connection (a plain multiplexed connection stays broken). Every atomic operation is one round trip: a Lua script
//! sent as EVALSHA, reloaded automatically when the server answers NOSCRIPT (after a restart or
//! SCRIPT FLUSH). Scripts are never sent inside pipelines, where that reload does not happen.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;
use tokio::sync::broadcast;

mod cluster;
mod config;
mod conn;
mod connect;
mod sentinel;
mod subscribe;

pub use self::config::{RedisStoreBuilder, REDIS_URL_ENV};
pub use self::conn::RedisConnection;
use self::subscribe::Subscriber;

use super::{
    fence_key, glob_escape, lease_key, lua_version_guard, Announcement, FillOutcome, Publication,
    SetOutcome, Store, StoreError, StoreEvent, TagTable,
};
use crate::envelope::VERSION_OFFSET;

/// Keys asked of each `SCAN` step: small enough that no step blocks Redis noticeably.
const SCAN_BATCH: usize = 1000;

/// Default deadline for one Redis call, applied by the cache: 100 ms (the breaker's slow-call
/// threshold is half of it). Measured on a loaded 2-core host with Redis beside the service
/// (`herdwise-lab --example breaker_load`), 50 ms opened the breaker on a healthy Redis in 4
/// of 4 runs at 2 × 256 tasks; 100 ms in none (p99.9 of the calls 28–29 ms).
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Writes ARGV[1] with PX ARGV[2] unless the stored envelope's version is higher than
/// ARGV[3]:ARGV[4] (the version as two u32 halves: Lua numbers are doubles). ARGV[5] is the
/// envelope's version offset; ARGV[6] a channel to publish ARGV[7] on afterwards, whatever the
/// outcome ('' for none). Returns 1 if written, 0 if refused.
fn set_if_not_older_script() -> String {
    const PUBLISH: &str = "if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end";
    format!(
        "local cur = redis.call('GET', KEYS[1])\n{}\nredis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n{PUBLISH}\nreturn 1\n",
        lua_version_guard(3, 4, 5, &format!("{PUBLISH} return 0"))
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

/// Tag invalidation: KEYS[1] the tag table, KEYS[2] the event stream (only when announcing on
/// one: same hash tag, same slot); ARGV[1] the tag's field (`t:<tag>`), ARGV[2] how
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
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'm', ARGV[4] .. c .. ARGV[5])
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
const EXTEND_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;
/// Redis as the shared L2 tier: one server, or a Redis Cluster (see [`RedisStoreBuilder`] for
/// the URLs). Cheap to clone: clones share one multiplexed, self-reconnecting connection.
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
    conn: RedisConnection,
    /// Dedicated connections (subscriptions).
    subscriber: Subscriber,
    call_timeout: Duration,
    /// The nodes, for traces (`server.address`; no credentials).
    address: Arc<str>,
    set_if_not_older: Script,
    fill_leased: Script,
    fill_fenced: Script,
    bump_tag: Script,
    read_tags: Script,
    advance_generation: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.conn.is_cluster())
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`, or any URL [`RedisStoreBuilder`]
    /// takes) with default settings, and checks the connection.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for connection settings.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    fn from_parts(
        subscriber: Subscriber,
        conn: RedisConnection,
        call_timeout: Duration,
        address: String,
    ) -> Self {
        RedisStore {
            subscriber,
            conn,
            call_timeout,
            address: address.into(),
            set_if_not_older: Script::new(&set_if_not_older_script()),
            fill_leased: Script::new(&fill_leased_script()),
            fill_fenced: Script::new(&fill_fenced_script()),
            bump_tag: Script::new(&format!("{TAG_TABLE_INIT}{BUMP_TAG_BODY}")),
            read_tags: Script::new(&format!("{TAG_TABLE_INIT}{READ_TAGS_BODY}")),
            advance_generation: Script::new(&format!("{TAG_TABLE_INIT}{ADVANCE_GENERATION_BODY}")),
        }
    }

    /// The underlying connection, for commands Herdwise does not wrap.
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// The write and the voiding of any load lease in one `MULTI`/`EXEC` (one round trip),
    /// and `then` published in the same transaction, after the write.
    async fn set_then(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        then: Option<Publication<'_>>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .arg("PX")
            .arg(px(ttl))
            .ignore()
            .cmd("UNLINK")
            .arg(lease_key(key))
            .arg(fence_key(key))
            .ignore();
        if let Some(then) = then {
            pipe.cmd("PUBLISH")
                .arg(then.channel)
                .arg(then.message.as_ref())
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// The versioned write (a script), publishing `then` from the script, whatever the outcome.
    async fn set_if_not_older_then(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        then: Option<Publication<'_>>,
    ) -> Result<SetOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let (channel, message): (&str, &[u8]) = match &then {
            Some(then) => (then.channel, then.message.as_ref()),
            None => ("", b""),
        };
        let written: i64 = self
            .set_if_not_older
            .key(key)
            .arg(value.as_ref())
            .arg(px(ttl))
            .arg(version >> 32)
            .arg(version & 0xFFFF_FFFF)
            .arg(VERSION_OFFSET)
            .arg(channel)
            .arg(message)
            .invoke_async(&mut conn)
            .await?;
        Ok(if written == 1 {
            SetOutcome::Stored
        } else {
            SetOutcome::RefusedOlder
        })
    }

    /// The delete of the value with its lease and fence (`UNLINK` frees large values off the
    /// main thread; value and lease share a slot, so a load in flight can no longer fill), and
    /// `then` published after it, in one transaction.
    async fn delete_then(
        &self,
        key: &str,
        then: Option<Publication<'_>>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("UNLINK")
            .arg(key)
            .cmd("UNLINK")
            .arg(lease_key(key))
            .arg(fence_key(key))
            .ignore();
        if let Some(then) = then {
            pipe.cmd("PUBLISH")
                .arg(then.channel)
                .arg(then.message.as_ref())
                .ignore();
        }
        let (removed,): (i64,) = pipe.query_async(&mut conn).await?;
        Ok(removed > 0)
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

    fn address(&self) -> Option<&str> {
        Some(&self.address)
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
        self.set_then(key, value, ttl, None).await
    }

    fn publishes_with_writes(&self) -> bool {
        // A Cluster publishes a write's message from the key's node, others from the
        // channel's: one sender's messages would travel several paths, out of order.
        !self.conn.is_cluster()
    }

    async fn set_and_publish(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        then: Publication<'_>,
    ) -> Result<bool, StoreError> {
        if self.conn.is_cluster() {
            // The key's node is not the channel's: one path per sender keeps events in order.
            self.set(key, value, ttl).await?;
            return Ok(self.publish(then.channel, then.message).await.is_ok());
        }
        self.set_then(key, value, ttl, Some(then)).await?;
        Ok(true)
    }

    async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError> {
        self.set_if_not_older_then(key, value, ttl, version, None)
            .await
    }

    async fn set_if_not_older_and_publish(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        then: Publication<'_>,
    ) -> Result<(SetOutcome, bool), StoreError> {
        if self.conn.is_cluster() {
            let outcome = self.set_if_not_older(key, value, ttl, version).await?;
            let published = self.publish(then.channel, then.message).await.is_ok();
            return Ok((outcome, published));
        }
        let outcome = self
            .set_if_not_older_then(key, value, ttl, version, Some(then))
            .await?;
        Ok((outcome, true))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.delete_then(key, None).await
    }

    async fn delete_and_publish(
        &self,
        key: &str,
        then: Publication<'_>,
    ) -> Result<(bool, bool), StoreError> {
        if self.conn.is_cluster() {
            let removed = self.delete(key).await?;
            let published = self.publish(then.channel, then.message).await.is_ok();
            return Ok((removed, published));
        }
        Ok((self.delete_then(key, Some(then)).await?, true))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut removed = 0;
        // Every primary of a cluster holds part of the keyspace; one server holds all of it.
        let primaries = conn.primaries().await?;
        let nodes: Vec<Option<&conn::Node>> = match &primaries {
            Some(nodes) => nodes.iter().map(Some).collect(),
            None => vec![None],
        };
        // The leases and fences of every key under the prefix (`{<key>}:lease`, `{<key>}:fence`)
        // first, then the values (with their claims again): a load in flight under the prefix
        // is voided before the walk passes its key, so its fill cannot land behind the walk.
        for pattern in [
            format!("{{{}*", glob_escape(prefix)),
            format!("{}*", glob_escape(prefix)),
        ] {
            let leases = pattern.starts_with('{');
            for node in &nodes {
                let mut cursor: u64 = 0;
                loop {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH);
                    let (next, keys): (u64, Vec<String>) = conn.on_node(*node, &scan).await?;
                    if !keys.is_empty() {
                        // (Split by slot on a cluster: each key goes to its slot's primary.)
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

    async fn extend_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        // EVAL, like the release: extensions are rare (loads slower than a third of the TTL).
        let extended: i64 = redis::cmd("EVAL")
            .arg(EXTEND_LEASE)
            .arg(1)
            .arg(lease_key(key))
            .arg(token)
            .arg(px(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(extended == 1)
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
        let mut invocation = self.bump_tag.key(table);
        if !stream_max_len.is_empty() {
            invocation.key(channel);
        }
        let clock: String = invocation
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
        // A cluster is who its primaries are: any of them restarted or replaced (failover)
        // gives a new id.
        let primaries = conn.primaries().await?;
        let nodes: Vec<Option<&conn::Node>> = match &primaries {
            Some(nodes) => nodes.iter().map(Some).collect(),
            None => vec![None],
        };
        let mut ids = Vec::with_capacity(nodes.len());
        for node in nodes {
            let info: String = conn.on_node(node, redis::cmd("INFO").arg("server")).await?;
            match info.lines().find_map(|line| line.strip_prefix("run_id:")) {
                Some(id) => ids.push(id.trim().to_string()),
                None => return Ok(None),
            }
        }
        Ok(Some(ids.join(",")))
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
        self.subscriber.stream_subscribe(stream)
    }

    fn confirms_subscriptions(&self) -> bool {
        true
    }

    fn subscribe(&self, channel: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        self.subscriber.subscribe(channel)
    }

    fn subscribe_keyspace(&self, pattern: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        self.subscriber.subscribe_keyspace(pattern)
    }
}
