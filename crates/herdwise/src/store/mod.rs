//! The shared (L2) tier: a trait for remote stores and its implementations.
//!
//! A store moves opaque envelope bytes; it knows nothing of values, freshness or policy. The one
//! thing it must know about the envelope is where the value version lives
//! ([`crate::envelope::VERSION_OFFSET`]), so that [`Store::set_if_not_older`] can refuse to put an
//! older value over a newer one in a single atomic step.
//!
//! Deadlines are applied by the cache around every call (see `remote`), so an implementation does
//! not need its own; it should still not block a thread.

mod fan_in;
mod memory;
mod redis;
mod sharded;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::memory::{MemoryStore, DEFAULT_MEMORY_STORE_BYTES};
pub use self::redis::{RedisConnection, RedisStore, RedisStoreBuilder, REDIS_URL_ENV};
pub use self::sharded::ShardedStore;

/// Version check shared by the Lua scripts: returns from the script with `refused` if the stored
/// envelope in `cur` has a version above ARGV `hi`:`lo` (see `envelope::VERSION_OFFSET`).
pub(crate) fn lua_version_guard(hi: usize, lo: usize, offset: usize, refused: &str) -> String {
    format!(
        r#"
if cur and string.len(cur) >= tonumber(ARGV[{offset}]) + 8 and string.sub(cur, 1, 2) == 'HW' then
  local at = tonumber(ARGV[{offset}]) + 1
  local shi = struct.unpack('>I4', cur, at)
  local slo = struct.unpack('>I4', cur, at + 4)
  local nhi = tonumber(ARGV[{hi}])
  local nlo = tonumber(ARGV[{lo}])
  if shi > nhi or (shi == nhi and slo > nlo) then
    {refused}
  end
end
"#
    )
}

/// What a versioned set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// The value was written.
    Stored,
    /// The stored entry has a higher version; nothing was written.
    RefusedOlder,
}

/// What a fenced fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// Written; the lease was released.
    Stored,
    /// The lease was still ours, but the stored entry has a higher version; the lease was released.
    RefusedOlder,
    /// The lease is gone (voided by a write or an invalidation, or expired): the loaded value
    /// may predate a change at the origin, so it was not written.
    LeaseLost,
}

/// An announcement a store makes in the same atomic step as a write: `prefix + value + suffix`
/// published on `channel`, `value` being what the write produced (e.g. a new tag clock value).
#[derive(Debug, Clone, Copy)]
pub struct Announcement<'a> {
    /// The pub/sub channel, or the stream.
    pub channel: &'a str,
    /// `Some(max_len)`: append to the stream `channel` (trimmed to about `max_len` entries, see
    /// [`Store::stream_append`]) instead of publishing.
    pub stream_max_len: Option<usize>,
    /// Text before the value.
    pub prefix: &'a str,
    /// Text after the value.
    pub suffix: &'a str,
}

/// A message to publish right after a write, in the write's round trip where the store can keep
/// the order (see [`Store::set_and_publish`]).
///
/// ```
/// let then = herdwise::store::Publication { channel: "events", message: "k|42".into() };
/// assert_eq!(then.channel, "events");
/// ```
#[derive(Debug, Clone)]
pub struct Publication<'a> {
    /// The pub/sub channel.
    pub channel: &'a str,
    /// What to publish on it.
    pub message: Bytes,
}

/// What [`Store::read_tags`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagTable {
    /// The clock: the stamp for what is read from the origin now.
    pub clock: u64,
    /// Entries stamped below this are not vouched for (the table was created then).
    pub floor: u64,
    /// The marks of the tags asked for, in order (0: never invalidated, or pruned).
    pub marks: Vec<u64>,
    /// The namespace generation (part of every stored key: see `Cache::clear`).
    pub generation: u64,
}

/// A message from a store subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The subscription is (re)established. Messages published while it was down were missed.
    Subscribed,
    /// A message published on the channel.
    Message(Bytes),
    /// The subscription was lost (the connection closed, or stopped answering its health
    /// check): messages published from now until the next `Subscribed` are missed.
    Lost,
}

/// The lease key of `key`: `{key}:lease`. The hash tag is the whole value key, so in Redis
/// Cluster both live in the same slot (stored keys never contain braces).
pub fn lease_key(key: &str) -> String {
    format!("{{{key}}}:lease")
}

/// The fence key of `key`: `{key}:fence` (same slot as the value, like the lease).
pub fn fence_key(key: &str) -> String {
    format!("{{{key}}}:fence")
}

/// `text` with the glob characters of Redis `MATCH` patterns escaped.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A failed store call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish within its deadline.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open: the call was not made.
    #[error("circuit breaker open: remote tier skipped")]
    CircuitOpen,
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Anything else (custom stores).
    #[error("{0}")]
    Other(String),
    /// The store's configuration is invalid: `option` names what to fix.
    #[error("invalid store configuration, {option}: {reason}")]
    Config {
        /// The option (or URL part, or environment variable) at fault.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed, or a check made at connect did: unreachable, TLS refused, wrong or
    /// missing credentials, an unsupported server.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The node(s) tried (no credentials).
        target: String,
        /// What failed, and what to do about it.
        reason: String,
    },
    /// The server's ACL does not let the configured user run a command the cache needs.
    #[error(
        "{target}: the user may not run {command} ({detail}); the cache needs it: grant it \
         with ACL SETUSER (see the README, \"Connecting to your Redis\")"
    )]
    NotPermitted {
        /// The node(s) tried.
        target: String,
        /// The refused command.
        command: String,
        /// The server's answer.
        detail: String,
    },
}

/// A remote (or embedded) byte store with TTLs: the L2 tier.
///
/// Implementations must be safe to share between tasks and caches. Keys are the stored keys the
/// cache builds (`namespace:v<schema>:<key>`); values are envelope bytes.
///
/// ```
/// use std::time::Duration;
/// use herdwise::{MemoryStore, Store};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// store.set("k", "v".into(), Duration::from_secs(1)).await.unwrap();
/// assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
/// # }
/// ```
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and metrics (`"redis"`, `"memory"`).
    fn kind(&self) -> &'static str;

    /// Where the store's server is, for traces (`server.address`): host:port, or the nodes'
    /// (no credentials). `None` (the default) for an in-process store.
    ///
    /// ```
    /// use herdwise::{MemoryStore, Store};
    /// assert_eq!(MemoryStore::new().address(), None);
    /// ```
    fn address(&self) -> Option<&str> {
        None
    }

    /// The deadline the cache applies to this store's calls unless configured otherwise.
    fn default_timeout(&self) -> Duration;

    /// How many independent nodes the store spreads keys over (default 1). The cache keeps
    /// one circuit breaker per node, so one dead node degrades only its share of the keys.
    fn shards(&self) -> usize {
        1
    }

    /// The node (`0..shards()`) that `key` lives on (default 0).
    fn shard_of(&self, key: &str) -> usize {
        let _ = key;
        0
    }

    /// The bytes under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// Several keys in one round trip, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError>;

    /// Stores `value` under `key` for `ttl`, unconditionally, and voids any load lease on the
    /// key (a load that started before this write must not overwrite it).
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError>;

    /// Stores `value` unless the stored entry carries a higher value version than `version`.
    /// Atomic: check and write are one step (one round trip for Redis).
    async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError>;

    /// Removes `key` and voids its load lease; `true` if a value was removed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Whether [`Store::set_and_publish`] and [`Store::delete_and_publish`] send the write and
    /// the message in one round trip, in the order calls are made, on the one path every
    /// message of this store takes (Redis on one server or behind Sentinel: `true`). `false`
    /// (the default, and a Cluster's or a sharded store's answer): the cache announces after
    /// the write, in a call of its own, so a sender's messages keep their order.
    ///
    /// ```
    /// use herdwise::{MemoryStore, Store};
    /// assert!(!MemoryStore::new().publishes_with_writes());
    /// ```
    fn publishes_with_writes(&self) -> bool {
        false
    }

    /// [`Store::set`], then publishes `then` — after the write, never before it — in one round
    /// trip where the store can keep that order (Redis, one server or Sentinel: the publish
    /// is part of the write's transaction). Whether the message went out once the write
    /// succeeded; the write's error otherwise. The default makes the two calls in turn.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herdwise::{MemoryStore, Store, store::Publication};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryStore::new();
    /// let then = Publication { channel: "events", message: "k".into() };
    /// let published = store.set_and_publish("k", "v".into(), Duration::from_secs(1), then);
    /// assert!(published.await.unwrap());
    /// assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    /// # }
    /// ```
    async fn set_and_publish(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        then: Publication<'_>,
    ) -> Result<bool, StoreError> {
        self.set(key, value, ttl).await?;
        Ok(self.publish(then.channel, then.message).await.is_ok())
    }

    /// [`Store::set_if_not_older`], then publishes `then` whatever the outcome (a refused
    /// write's message only makes receivers re-read the key), as [`Store::set_and_publish`]
    /// does.
    async fn set_if_not_older_and_publish(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        then: Publication<'_>,
    ) -> Result<(SetOutcome, bool), StoreError> {
        let outcome = self.set_if_not_older(key, value, ttl, version).await?;
        Ok((
            outcome,
            self.publish(then.channel, then.message).await.is_ok(),
        ))
    }

    /// [`Store::delete`], then publishes `then`, as [`Store::set_and_publish`] does: whether a
    /// value was removed, and whether the message went out.
    async fn delete_and_publish(
        &self,
        key: &str,
        then: Publication<'_>,
    ) -> Result<(bool, bool), StoreError> {
        let removed = self.delete(key).await?;
        Ok((
            removed,
            self.publish(then.channel, then.message).await.is_ok(),
        ))
    }

    /// Removes every key that starts with `prefix`, and voids their load leases (also leases of
    /// keys not currently stored). Works in bounded batches (Redis: `SCAN MATCH` + `UNLINK`,
    /// never `KEYS`), so other clients are not blocked. Returns the number of values removed.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Takes the load lease on `key` for `ttl` if nobody holds it (`SET NX PX`).
    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError>;

    /// [`Store::try_lease`], then reads `key` (in that order): whether the lease was taken, and
    /// what was stored right after — a fill that landed just before the lease, or the value a
    /// holder is refreshing. Stores that can pipeline do both in one round trip (Redis does).
    ///
    /// ```
    /// use std::time::Duration;
    /// use herdwise::{MemoryStore, Store};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryStore::new();
    /// let ttl = Duration::from_secs(5);
    /// assert_eq!(store.try_lease_and_get("k", 1, ttl).await.unwrap(), (true, None));
    /// store.set("k", "v".into(), ttl).await.unwrap(); // (voids the lease)
    /// let (taken, value) = store.try_lease_and_get("k", 2, ttl).await.unwrap();
    /// assert!(taken);
    /// assert_eq!(value.as_deref(), Some(&b"v"[..]));
    /// # }
    /// ```
    async fn try_lease_and_get(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), StoreError> {
        let taken = self.try_lease(key, token, ttl).await?;
        Ok((taken, self.get(key).await?))
    }

    /// Fenced fill, atomically: if `token` still holds the lease on `key`, release it and store
    /// `value` unless the stored entry has a higher version. Then (whatever the outcome) publish
    /// `key` on `channel`, so that instances waiting for this fill wake up.
    #[allow(clippy::too_many_arguments)]
    async fn fill_leased(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        token: u64,
        channel: &str,
    ) -> Result<FillOutcome, StoreError>;

    /// Opens (or joins) the *fence* of `key` for a load made without the lease (leases off, or a
    /// waiter that gave up on another instance's lease): sets the fence to `token` for `ttl`
    /// unless a fence is already up, and returns the fence's token. Every write, delete or
    /// prefix delete of `key` takes the fence down, like the lease; a fill made with
    /// [`Store::fill_fenced`] is written only while the fence it opened still stands. So a load
    /// that an invalidation overtook is never cached, leases or not. Several loads may share one
    /// fence. The default (a store without fences) returns 0 and `fill_fenced` writes unfenced.
    async fn open_fence(&self, key: &str, token: u64, ttl: Duration) -> Result<u64, StoreError> {
        let _ = (key, token, ttl);
        Ok(0)
    }

    /// Fenced fill without a lease, atomically: if the fence of `key` still holds `fence`, store
    /// `value` unless the stored entry has a higher version (the fence stays up for the other
    /// loads sharing it); then publish `key` on `channel`. [`FillOutcome::LeaseLost`] when the
    /// fence is down (written, invalidated or expired since it was opened).
    #[allow(clippy::too_many_arguments)]
    async fn fill_fenced(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
        fence: u64,
        channel: &str,
    ) -> Result<FillOutcome, StoreError> {
        let _ = (fence, channel);
        Ok(
            match self.set_if_not_older(key, value, ttl, version).await? {
                SetOutcome::Stored => FillOutcome::Stored,
                SetOutcome::RefusedOlder => FillOutcome::RefusedOlder,
            },
        )
    }

    /// Extends the lease on `key` to `ttl` from now if `token` still holds it (compare-and-
    /// expire): `false` if the lease is gone (expired, taken by another, or voided by a write
    /// or an invalidation), which it then stays. The cache extends a lease while a load slower
    /// than the lease's TTL runs, so other instances keep waiting for that load's fill instead
    /// of loading too. The default (a store that cannot extend) returns `false`: a load past
    /// the TTL then loses its lease, and its value is returned but not cached.
    async fn extend_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let _ = (key, token, ttl);
        Ok(false)
    }

    /// Releases the lease on `key` if `token` holds it (compare-and-delete, never a blind DEL).
    async fn release_lease(&self, key: &str, token: u64) -> Result<(), StoreError>;

    /// Invalidates `tag`, atomically: advances the clock of the tag table `table` by one,
    /// records the new value as the tag's mark (kept at least `mark_ttl`), and makes `announce`
    /// with it. Returns the new clock value.
    ///
    /// A namespace's clock, floor, marks and generation live together in one table (Redis: one
    /// hash, one key, no TTL), so that an eviction takes all of them or none. A table that does
    /// not exist is created with clock and *floor* at the store's current time in microseconds
    /// (above every value handed out before; the floor says that nothing stamped below it can
    /// be vouched for, see [`Store::read_tags`]) and at generation 0. Marks older than `mark_ttl` are pruned a few at a
    /// time by later invalidations: every entry stamped before them has expired.
    async fn bump_tag(
        &self,
        table: &str,
        tag: &str,
        mark_ttl: Duration,
        announce: Option<Announcement<'_>>,
    ) -> Result<u64, StoreError>;

    /// The tag table `table`: its clock, its floor and the marks of `tags` (0 for a tag never
    /// invalidated, or pruned), creating the table as [`Store::bump_tag`] does if it is missing
    /// (lost, evicted): an entry is valid only if stamped at or above the floor and at or above
    /// every mark of its tags. The table's namespace generation comes along, raised first to
    /// `known_generation` (the caller's) if it is lower — the table was lost, and the
    /// instances still running put the generation back.
    async fn read_tags(
        &self,
        table: &str,
        tags: &[&str],
        known_generation: u64,
    ) -> Result<TagTable, StoreError>;

    /// Moves the namespace generation of the tag table `table` past both its value and
    /// `at_least` (the caller's own), and to at least the store's time in milliseconds (so a
    /// generation lost with its table and counted again from 0 never meets an earlier one),
    /// creating the table as [`Store::bump_tag`] does; returns the new generation. Atomic: two
    /// clears never end on the same generation.
    async fn advance_generation(&self, table: &str, at_least: u64) -> Result<u64, StoreError>;

    /// Who the store is: an id that changes when the server restarts (Redis: `run_id`), so
    /// that a lost sentinel can be told apart from a lost server. `None` if the store cannot
    /// tell (the default): a missing sentinel then counts as lost data.
    async fn server_id(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Publishes `message` on `channel` (to the subscribers of every instance).
    async fn publish(&self, channel: &str, message: Bytes) -> Result<(), StoreError>;

    /// Appends `message` to the stream `stream`, trimmed to about `max_len` entries (Redis:
    /// `XADD MAXLEN ~`). The default publishes on the channel of that name: a store without
    /// durable streams delivers to current listeners only.
    async fn stream_append(
        &self,
        stream: &str,
        message: Bytes,
        max_len: usize,
    ) -> Result<(), StoreError> {
        let _ = max_len;
        self.publish(stream, message).await
    }

    /// Reads `stream` from its end on, for as long as a receiver exists. After a disconnect the
    /// store resumes after the last entry it delivered; it sends [`StoreEvent::Subscribed`] at
    /// the start and again only when it cannot prove that nothing was lost meanwhile (the entries
    /// after its position were trimmed, or the stream was lost with the store's data). The
    /// default subscribes to the channel of that name.
    fn stream_subscribe(
        &self,
        stream: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        self.subscribe(stream)
    }

    /// Whether [`subscribe`](Store::subscribe) (and `stream_subscribe`) announce each
    /// subscription with [`StoreEvent::Subscribed`] once it is up, and [`StoreEvent::Lost`] when
    /// it is gone (default `false`: the subscription is taken as up from the start, as an
    /// in-process store's is). A cache on a store that confirms does not trust what it puts in
    /// L1 until its subscription is confirmed: before that it would not hear an invalidation.
    fn confirms_subscriptions(&self) -> bool {
        false
    }

    /// Subscribes to `channel`. The store keeps the subscription alive (resubscribing after a
    /// disconnect, announcing it with [`StoreEvent::Subscribed`]) for as long as a receiver
    /// exists. Must be called inside a Tokio runtime. `None` if the store has no messaging
    /// (callers then poll).
    fn subscribe(&self, channel: &str) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>>;

    /// Listens for changes made to keys matching the glob `pattern` by anyone, other programs
    /// included (Redis keyspace notifications: `DEL`, `SET`, `EXPIRE`, expiry, eviction, ...).
    /// Each [`StoreEvent::Message`] carries the name of a key that changed; `Subscribed` and
    /// `Lost` as for [`subscribe`](Store::subscribe). Must be called inside a Tokio runtime.
    /// `None` (the default) if the store cannot tell: only this process writes to it.
    fn subscribe_keyspace(
        &self,
        pattern: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        let _ = pattern;
        None
    }
}

/// The value version stored in envelope bytes, if they look like an envelope.
pub(crate) fn stored_version(bytes: &[u8]) -> Option<u64> {
    crate::envelope::decode_meta(bytes).ok().map(|m| m.version)
}
