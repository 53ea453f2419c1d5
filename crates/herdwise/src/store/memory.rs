//! The embedded store: an in-process, byte-bounded L2 for a single process with no Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;

use parking_lot::Mutex;
use quick_cache::sync::Cache as Engine;
use quick_cache::Weighter;
use tokio::sync::broadcast;

use super::{
    stored_version, Announcement, FillOutcome, SetOutcome, Store, StoreError, StoreEvent, TagTable,
};

/// Default bound of a [`MemoryStore`]: 256 MiB.
pub const DEFAULT_MEMORY_STORE_BYTES: u64 = 256 << 20;
/// Lock stripes that make check-and-set atomic per key.
const STRIPES: usize = 64;

#[derive(Clone)]
struct Stored {
    bytes: Bytes,
    expires_at: Instant,
}

#[derive(Clone)]
struct BytesWeighter;

impl Weighter<Box<str>, Stored> for BytesWeighter {
    fn weight(&self, key: &Box<str>, val: &Stored) -> u64 {
        (key.len() + val.bytes.len() + 64) as u64
    }
}

struct Inner {
    engine: Engine<Box<str>, Stored, BytesWeighter>,
    /// Writers to one key serialize on its stripe, so a versioned set is check-then-write
    /// without a window in between. Each stripe also holds the load leases of its keys.
    stripes: Vec<Mutex<Leases>>,
    /// This store's identity (see `Store::server_id`).
    id: u64,
    /// Tag tables by name (see `Store::bump_tag`).
    tag_tables: Mutex<HashMap<String, TagTableState>>,
    /// Subscriptions by channel (in-process messaging).
    channels: Mutex<HashMap<String, broadcast::Sender<StoreEvent>>>,
}

/// One tag table: clock, floor, and each tag's mark with its keep time.
struct TagTableState {
    clock: u64,
    floor: u64,
    generation: u64,
    marks: HashMap<String, (u64, Instant)>,
}

impl TagTableState {
    /// A new table starts at the current time in microseconds, clock and floor alike, at
    /// generation 0.
    fn new() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        TagTableState {
            clock: micros,
            floor: micros,
            generation: 0,
            marks: HashMap::new(),
        }
    }
}

/// Load leases of one stripe: key → (token, expiry).
type Claims = HashMap<Box<str>, (u64, Instant)>;

/// Claims a stripe holds before the expired ones are pruned (then twice what is left).
const PRUNE_FLOOR: usize = 64;

/// The leases and fences (see [`Store::open_fence`]) of one stripe's keys. Expired claims are
/// pruned when a map has doubled since its last prune, so abandoned claims (a load whose fill
/// never came) cost amortised O(1) and never accumulate.
#[derive(Default)]
struct Leases {
    leases: Claims,
    fences: Claims,
    prune_leases_at: usize,
    prune_fences_at: usize,
}

fn insert_claim(
    claims: &mut Claims,
    prune_at: &mut usize,
    key: Box<str>,
    claim: (u64, Instant),
    now: Instant,
) {
    if claims.len() >= (*prune_at).max(PRUNE_FLOOR) {
        claims.retain(|_, (_, expiry)| *expiry > now);
        *prune_at = claims.len() * 2;
    }
    claims.insert(key, claim);
}

impl Leases {
    fn get(&self, key: &str) -> Option<&(u64, Instant)> {
        self.leases.get(key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut (u64, Instant)> {
        self.leases.get_mut(key)
    }

    fn insert(&mut self, key: Box<str>, claim: (u64, Instant), now: Instant) {
        insert_claim(&mut self.leases, &mut self.prune_leases_at, key, claim, now);
    }

    fn insert_fence(&mut self, key: Box<str>, claim: (u64, Instant), now: Instant) {
        insert_claim(&mut self.fences, &mut self.prune_fences_at, key, claim, now);
    }

    /// Claims held (leases, fences), expired ones included until pruned.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.leases.len(), self.fences.len())
    }

    /// Takes down the key's lease and fence (a write or a delete).
    fn remove(&mut self, key: &str) {
        self.leases.remove(key);
        self.fences.remove(key);
    }

    fn lease_remove(&mut self, key: &str) {
        self.leases.remove(key);
    }

    fn retain(&mut self, keep: impl Fn(&Box<str>) -> bool) {
        self.leases.retain(|k, _| keep(k));
        self.fences.retain(|k, _| keep(k));
    }
}

/// The embedded L2: bounded by bytes, TTLs honoured, no network. Cheap to clone; clones share
/// the same storage, so several caches in one process can share it as their L2.
///
/// ```
/// use herdwise::{Cache, MemoryStore};
/// let store = MemoryStore::with_max_bytes(64 << 20);
/// let cache: Cache<u64, String> = Cache::builder("users").store(store.clone()).build().unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("bytes", &self.inner.engine.weight())
            .field("max_bytes", &self.inner.engine.capacity())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store bounded at [`DEFAULT_MEMORY_STORE_BYTES`](crate::store::DEFAULT_MEMORY_STORE_BYTES) (256 MiB).
    pub fn new() -> Self {
        Self::with_max_bytes(DEFAULT_MEMORY_STORE_BYTES)
    }

    /// A store bounded at `max_bytes` (at least 4 KiB).
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        let max_bytes = max_bytes.max(4096);
        let items = (max_bytes / 512).clamp(16, 1 << 22) as usize;
        let engine = Engine::with_weighter(items, max_bytes, BytesWeighter);
        MemoryStore {
            inner: Arc::new(Inner {
                engine,
                stripes: (0..STRIPES)
                    .map(|_| Mutex::new(Leases::default()))
                    .collect(),
                channels: Mutex::new(HashMap::new()),
                tag_tables: Mutex::new(HashMap::new()),
                id: rand::random(),
            }),
        }
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.engine.weight()
    }

    fn stripe(&self, key: &str) -> &Mutex<Leases> {
        let idx = self.inner.engine.shard_index(key) % STRIPES;
        &self.inner.stripes[idx]
    }

    fn live(&self, key: &str) -> Option<Bytes> {
        let stored = self.inner.engine.get(key)?;
        if stored.expires_at > Instant::now() {
            Some(stored.bytes)
        } else {
            let deadline = stored.expires_at;
            self.inner
                .engine
                .remove_if(key, |s| s.expires_at == deadline);
            None
        }
    }

    fn publish(&self, channel: &str, key: &str) {
        self.send(channel, Bytes::copy_from_slice(key.as_bytes()));
    }

    fn send(&self, channel: &str, message: Bytes) {
        let channels = self.inner.channels.lock();
        if let Some(sender) = channels.get(channel) {
            let _ = sender.send(StoreEvent::Message(message));
        }
    }

    fn put(&self, key: &str, value: Bytes, ttl: Duration) {
        if ttl.is_zero() {
            self.inner.engine.remove(key);
            return;
        }
        self.inner.engine.insert(
            key.into(),
            Stored {
                bytes: value,
                expires_at: Instant::now() + ttl,
            },
        );
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn default_timeout(&self) -> Duration {
        // In-process calls cannot hang on a network; the deadline is only a backstop.
        Duration::from_secs(1)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.live(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        Ok(keys.iter().map(|k| self.live(k)).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let mut leases = self.stripe(key).lock();
        leases.remove(key);
        self.put(key, value, ttl);
        Ok(())
    }

    async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError> {
        let _leases = self.stripe(key).lock();
        if let Some(current) = self.live(key) {
            if stored_version(&current).is_some_and(|v| v > version) {
                return Ok(SetOutcome::RefusedOlder);
            }
        }
        self.put(key, value, ttl);
        Ok(SetOutcome::Stored)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut leases = self.stripe(key).lock();
        leases.remove(key);
        Ok(self.inner.engine.remove(key).is_some())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        // The claims first: a load in flight under the prefix is voided before the values go,
        // so its fill cannot land behind the walk.
        for stripe in &self.inner.stripes {
            stripe.lock().retain(|key| !key.starts_with(prefix));
        }
        let doomed: Vec<Box<str>> = self
            .inner
            .engine
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with(prefix))
            .collect();
        let mut removed = 0;
        for key in doomed {
            let mut leases = self.stripe(&key).lock();
            if self.inner.engine.remove(&*key).is_some() {
                removed += 1;
            }
            leases.remove(&key);
        }
        Ok(removed)
    }

    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut leases = self.stripe(key).lock();
        let now = Instant::now();
        if leases.get(key).is_some_and(|(_, expiry)| *expiry > now) {
            return Ok(false);
        }
        leases.insert(key.into(), (token, now + ttl), now);
        Ok(true)
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
        let outcome = {
            let mut leases = self.stripe(key).lock();
            let ours = leases
                .get(key)
                .is_some_and(|(t, expiry)| *t == token && *expiry > Instant::now());
            if !ours {
                FillOutcome::LeaseLost
            } else {
                leases.lease_remove(key);
                let newer = self
                    .live(key)
                    .and_then(|current| stored_version(&current))
                    .is_some_and(|v| v > version);
                if newer {
                    FillOutcome::RefusedOlder
                } else {
                    self.put(key, value, ttl);
                    FillOutcome::Stored
                }
            }
        };
        self.publish(channel, key);
        Ok(outcome)
    }

    async fn extend_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut leases = self.stripe(key).lock();
        let now = Instant::now();
        match leases.get_mut(key) {
            Some((t, expiry)) if *t == token && *expiry > now => {
                *expiry = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<(), StoreError> {
        let mut leases = self.stripe(key).lock();
        if leases.get(key).is_some_and(|(t, _)| *t == token) {
            leases.lease_remove(key);
        }
        Ok(())
    }

    async fn open_fence(&self, key: &str, token: u64, ttl: Duration) -> Result<u64, StoreError> {
        let mut claims = self.stripe(key).lock();
        let now = Instant::now();
        match claims.fences.get(key) {
            Some(&(fence, expiry)) if expiry > now => Ok(fence),
            _ => {
                claims.insert_fence(key.into(), (token, now + ttl), now);
                Ok(token)
            }
        }
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
        let outcome = {
            let claims = self.stripe(key).lock();
            let standing = claims
                .fences
                .get(key)
                .is_some_and(|(f, expiry)| *f == fence && *expiry > Instant::now());
            if !standing {
                FillOutcome::LeaseLost
            } else if self
                .live(key)
                .and_then(|current| stored_version(&current))
                .is_some_and(|v| v > version)
            {
                FillOutcome::RefusedOlder
            } else {
                self.put(key, value, ttl);
                FillOutcome::Stored
            }
        };
        self.publish(channel, key);
        Ok(outcome)
    }

    async fn bump_tag(
        &self,
        table: &str,
        tag: &str,
        mark_ttl: Duration,
        announce: Option<Announcement<'_>>,
    ) -> Result<u64, StoreError> {
        let mut tables = self.inner.tag_tables.lock();
        let table = tables
            .entry(table.to_string())
            .or_insert_with(TagTableState::new);
        table.clock += 1;
        let value = table.clock;
        let now = Instant::now();
        // Marks past their keep time are dropped now and then, so the table stays bounded.
        if table.marks.len() >= 1024 && table.marks.len().is_power_of_two() {
            table.marks.retain(|_, (_, until)| *until > now);
        }
        table.marks.insert(tag.to_string(), (value, now + mark_ttl));
        if let Some(a) = announce {
            // Under the lock: announcements leave in clock order, as in Redis.
            let message = format!("{}{value}{}", a.prefix, a.suffix);
            self.send(a.channel, Bytes::from(message));
        }
        Ok(value)
    }

    async fn read_tags(
        &self,
        table: &str,
        tags: &[&str],
        known_generation: u64,
    ) -> Result<TagTable, StoreError> {
        let mut tables = self.inner.tag_tables.lock();
        let table = tables
            .entry(table.to_string())
            .or_insert_with(TagTableState::new);
        table.generation = table.generation.max(known_generation);
        let now = Instant::now();
        let marks = tags
            .iter()
            .map(|tag| match table.marks.get(*tag) {
                Some(&(mark, until)) if until > now => mark,
                _ => 0,
            })
            .collect();
        Ok(TagTable {
            clock: table.clock,
            floor: table.floor,
            marks,
            generation: table.generation,
        })
    }

    async fn advance_generation(&self, table: &str, at_least: u64) -> Result<u64, StoreError> {
        let mut tables = self.inner.tag_tables.lock();
        let table = tables
            .entry(table.to_string())
            .or_insert_with(TagTableState::new);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        table.generation = (table.generation.max(at_least) + 1).max(now_ms);
        Ok(table.generation)
    }

    async fn server_id(&self) -> Result<Option<String>, StoreError> {
        // The embedded store lives as long as the process: it never comes back empty.
        Ok(Some(format!("memory-{:x}", self.inner.id)))
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<(), StoreError> {
        self.send(channel, message);
        Ok(())
    }

    fn subscribe(&self, channel: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        let mut channels = self.inner.channels.lock();
        let sender = channels
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(4096).0);
        Some(sender.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_held(store: &MemoryStore) -> (usize, usize) {
        store.inner.stripes.iter().fold((0, 0), |(l, f), stripe| {
            let (leases, fences) = stripe.lock().held();
            (l + leases, f + fences)
        })
    }

    #[tokio::test]
    async fn abandoned_leases_and_fences_are_pruned_once_expired() {
        let store = MemoryStore::new();
        let ttl = Duration::from_millis(20);
        let n = STRIPES * PRUNE_FLOOR * 4;
        for i in 0..n {
            let key = format!("old:{i}");
            assert!(store.try_lease(&key, 1, ttl).await.unwrap());
            store.open_fence(&key, 1, ttl).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Twice as many fresh claims on other keys: the expired ones make way.
        for i in 0..2 * n {
            let key = format!("new:{i}");
            assert!(store
                .try_lease(&key, 1, Duration::from_secs(60))
                .await
                .unwrap());
            store
                .open_fence(&key, 1, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let (leases, fences) = claims_held(&store);
        assert!(
            leases < 2 * n + n / 4 && fences < 2 * n + n / 4,
            "{leases} leases and {fences} fences held for {} live ones",
            2 * n
        );
    }
}
