//! Client-side sharding over independent stores (seed 002's memcached-style fleet): each key
//! lives on one node, chosen by rendezvous hashing over stable node names.
//!
//! Contract: [`ShardedStore`] routes every key by its *routing key* — the Redis hash tag if the
//! key has one (`{…}`), else the whole key — so a value, its lease and fence
//! (`{<key>}:lease`), and a namespace's tag table and event stream (`herdwise:{ns:<ns>}:…`)
//! always share a node, and every script stays on one server. Adding or removing one of N
//! nodes moves only the keys that hash to it (≈ 1/N; see the test). Each node gets its own
//! circuit breaker in the cache (see [`Store::shard_of`]): a dead node degrades its share of
//! the keys, not the whole cache. Keyspace walks cover every node; a subscription covers every
//! node, except to a channel named with a hash tag, which is published only through its node.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::{
    fan_in, Announcement, FillOutcome, SetOutcome, Store, StoreError, StoreEvent, TagTable,
};

/// A store that spreads keys over several stores (see the module contract).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use herdwise::{Cache, RedisStore, ShardedStore};
/// let store = ShardedStore::new(vec![
///     ("cache-a", RedisStore::connect("redis://10.0.0.1:6379").await?),
///     ("cache-b", RedisStore::connect("redis://10.0.0.2:6379").await?),
///     ("cache-c", RedisStore::connect("redis://10.0.0.3:6379").await?),
/// ])?;
/// let cache: Cache<u64, String> = Cache::builder("users").store(store).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ShardedStore {
    nodes: Arc<[Node]>,
}

struct Node {
    name: String,
    /// The name's hash, mixed into every key's score for this node.
    seed: u64,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ShardedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        f.debug_struct("ShardedStore")
            .field("nodes", &names)
            .finish()
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A strong 64-bit finalizer (splitmix64), so that scores of one key on different nodes are
/// independent.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The part of `key` that decides its node: the hash tag's content, if any (Redis Cluster's
/// rule), else the whole key.
fn routing_key(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

impl ShardedStore {
    /// Shards over `nodes`, each named (the names decide where keys go: keep a node's name
    /// when its address changes). `Error` if there is no node or two share a name.
    pub fn new<S: Store>(
        nodes: impl IntoIterator<Item = (impl Into<String>, S)>,
    ) -> Result<Self, StoreError> {
        Self::from_stores(
            nodes
                .into_iter()
                .map(|(name, store)| (name.into(), Arc::new(store) as Arc<dyn Store>)),
        )
    }

    /// [`ShardedStore::new`] with stores of different types.
    pub fn from_stores(
        nodes: impl IntoIterator<Item = (String, Arc<dyn Store>)>,
    ) -> Result<Self, StoreError> {
        let mut list: Vec<Node> = Vec::new();
        for (name, store) in nodes {
            if name.is_empty() || list.iter().any(|n| n.name == name) {
                return Err(StoreError::Config {
                    option: "nodes",
                    reason: format!("node names must be unique and non-empty ({name:?})"),
                });
            }
            list.push(Node {
                seed: fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325),
                name,
                store,
            });
        }
        if list.is_empty() {
            return Err(StoreError::Config {
                option: "nodes",
                reason: "a sharded store needs at least one node".into(),
            });
        }
        Ok(ShardedStore { nodes: list.into() })
    }

    /// The node names, in shard order.
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The name of the node `key` lives on.
    pub fn node_of(&self, key: &str) -> &str {
        &self.nodes[self.shard_index(key)].name
    }

    fn shard_index(&self, key: &str) -> usize {
        let routed = fnv1a(routing_key(key).as_bytes(), 0xcbf2_9ce4_8422_2325);
        let mut best = (0usize, 0u64);
        for (i, node) in self.nodes.iter().enumerate() {
            let score = mix(routed ^ node.seed);
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    fn node(&self, key: &str) -> &Arc<dyn Store> {
        &self.nodes[self.shard_index(key)].store
    }
}

#[async_trait]
impl Store for ShardedStore {
    fn kind(&self) -> &'static str {
        "sharded"
    }

    fn default_timeout(&self) -> Duration {
        self.nodes
            .iter()
            .map(|n| n.store.default_timeout())
            .max()
            .unwrap_or(crate::store::redis::DEFAULT_REDIS_TIMEOUT)
    }

    fn shards(&self) -> usize {
        self.nodes.len()
    }

    fn confirms_subscriptions(&self) -> bool {
        self.nodes.iter().all(|n| n.store.confirms_subscriptions())
    }

    fn shard_of(&self, key: &str) -> usize {
        self.shard_index(key)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.node(key).get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut groups: Vec<(Vec<usize>, Vec<String>)> = vec![Default::default(); self.nodes.len()];
        for (at, key) in keys.iter().enumerate() {
            let group = &mut groups[self.shard_index(key)];
            group.0.push(at);
            group.1.push(key.clone());
        }
        let reads = groups.iter().enumerate().map(|(i, (_, keys))| async move {
            if keys.is_empty() {
                Ok(Vec::new())
            } else {
                self.nodes[i].store.get_many(keys).await
            }
        });
        let results = futures::future::join_all(reads).await;
        let mut out = vec![None; keys.len()];
        for ((positions, _), result) in groups.iter().zip(results) {
            for (at, value) in positions.iter().zip(result?) {
                out[*at] = value;
            }
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.node(key).set(key, value, ttl).await
    }

    async fn set_if_not_older(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        version: u64,
    ) -> Result<SetOutcome, StoreError> {
        self.node(key)
            .set_if_not_older(key, value, ttl, version)
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.node(key).delete(key).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let walks = self.nodes.iter().map(|n| n.store.delete_prefix(prefix));
        let mut removed = 0;
        let mut failed = None;
        for result in futures::future::join_all(walks).await {
            match result {
                Ok(n) => removed += n,
                Err(e) => failed = Some(e),
            }
        }
        // Every live node was walked; a failed one makes the whole call fail (and be retried).
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.node(key).try_lease(key, token, ttl).await
    }

    async fn try_lease_and_get(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), StoreError> {
        self.node(key).try_lease_and_get(key, token, ttl).await
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
        self.node(key)
            .fill_leased(key, value, ttl, version, token, channel)
            .await
    }

    async fn open_fence(&self, key: &str, token: u64, ttl: Duration) -> Result<u64, StoreError> {
        self.node(key).open_fence(key, token, ttl).await
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
        self.node(key)
            .fill_fenced(key, value, ttl, version, fence, channel)
            .await
    }

    async fn extend_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.node(key).extend_lease(key, token, ttl).await
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<(), StoreError> {
        self.node(key).release_lease(key, token).await
    }

    async fn bump_tag(
        &self,
        table: &str,
        tag: &str,
        mark_ttl: Duration,
        announce: Option<Announcement<'_>>,
    ) -> Result<u64, StoreError> {
        self.node(table)
            .bump_tag(table, tag, mark_ttl, announce)
            .await
    }

    async fn read_tags(
        &self,
        table: &str,
        tags: &[&str],
        known_generation: u64,
    ) -> Result<TagTable, StoreError> {
        self.node(table)
            .read_tags(table, tags, known_generation)
            .await
    }

    async fn advance_generation(&self, table: &str, at_least: u64) -> Result<u64, StoreError> {
        self.node(table).advance_generation(table, at_least).await
    }

    async fn server_id(&self) -> Result<Option<String>, StoreError> {
        let mut ids = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.iter() {
            match node.store.server_id().await? {
                Some(id) => ids.push(id),
                None => return Ok(None),
            }
        }
        Ok(Some(ids.join(",")))
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<(), StoreError> {
        // Subscribers listen on every node: any one carries the message to all of them.
        self.node(channel).publish(channel, message).await
    }

    async fn stream_append(
        &self,
        stream: &str,
        message: Bytes,
        max_len: usize,
    ) -> Result<(), StoreError> {
        self.node(stream)
            .stream_append(stream, message, max_len)
            .await
    }

    fn stream_subscribe(&self, stream: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        self.node(stream).stream_subscribe(stream)
    }

    fn subscribe(&self, channel: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        // A channel named with a hash tag is published only through its own node (as Redis
        // Cluster's sharded pub/sub): the invalidation channel `herdwise:{ns:<ns>}:inv`, which
        // the namespace's tag scripts (on the same node) publish to as well. Listening there
        // alone keeps one sender's events in order, and a dead node that carries none of them
        // does not make every instance deaf.
        if routing_key(channel) != channel {
            return self.node(channel).subscribe(channel);
        }
        // Any other channel carries messages from whichever node published them (fills
        // announce on the key's node): listen on all of them.
        let mut sources = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.iter() {
            sources.push(node.store.subscribe(channel)?);
        }
        fan_in::merge(sources)
    }

    fn subscribe_keyspace(&self, pattern: &str) -> Option<broadcast::Receiver<StoreEvent>> {
        // Each node notifies of its own keys only.
        let mut sources = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.iter() {
            sources.push(node.store.subscribe_keyspace(pattern)?);
        }
        fan_in::merge(sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn sharded(names: &[&str]) -> ShardedStore {
        ShardedStore::new(names.iter().map(|n| (n.to_string(), MemoryStore::new()))).unwrap()
    }

    fn placement(store: &ShardedStore, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|i| store.node_of(&format!("users:v1:{i}")).to_string())
            .collect()
    }

    #[test]
    fn adding_or_removing_one_of_n_nodes_moves_about_one_nth_of_the_keys() {
        const KEYS: usize = 100_000;
        let four = sharded(&["a", "b", "c", "d"]);
        let five = sharded(&["a", "b", "c", "d", "e"]);
        let before = placement(&four, KEYS);
        let after = placement(&five, KEYS);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let share = moved as f64 / KEYS as f64;
        // Only keys that now belong to the new node moved: ~1/5.
        eprintln!("4 -> 5 nodes: {:.2} % of {KEYS} keys moved", share * 100.0);
        assert!(
            (0.18..0.22).contains(&share),
            "adding one of 5 moved {share}"
        );
        assert!(before.iter().zip(&after).all(|(b, a)| b == a || a == "e"));
        // Removing a node moves only its own keys, to the others.
        let without_b = sharded(&["a", "c", "d", "e"]);
        let removed = placement(&without_b, KEYS);
        let moved = after.iter().zip(&removed).filter(|(b, a)| b != a).count();
        assert!(after.iter().zip(&removed).all(|(b, a)| b == a || b == "b"));
        let share = moved as f64 / KEYS as f64;
        eprintln!("5 -> 4 nodes: {:.2} % of {KEYS} keys moved", share * 100.0);
        assert!(
            (0.18..0.22).contains(&share),
            "removing one of 5 moved {share}"
        );
        // Each node holds about a quarter of 4.
        for name in ["a", "b", "c", "d"] {
            let n = before.iter().filter(|b| *b == name).count() as f64 / KEYS as f64;
            eprintln!("node {name} of 4: {:.2} % of the keys", n * 100.0);
            assert!((0.23..0.27).contains(&n), "{name}: {n}");
        }
    }

    #[test]
    fn related_keys_share_a_node_and_order_does_not_matter() {
        let store = sharded(&["a", "b", "c"]);
        let reordered = sharded(&["c", "a", "b"]);
        for i in 0..1000 {
            let key = format!("orders:v1:{i}");
            let node = store.node_of(&key);
            assert_eq!(store.node_of(&format!("{{{key}}}:lease")), node);
            assert_eq!(store.node_of(&format!("{{{key}}}:fence")), node);
            assert_eq!(reordered.node_of(&key), node, "names decide, not order");
        }
        let table = store.node_of("herdwise:{ns:orders}:tags");
        assert_eq!(store.node_of("herdwise:{ns:orders}:events"), table);
        assert_eq!(store.node_of("herdwise:{ns:orders}:sentinel"), table);
    }

    #[test]
    fn bad_node_lists_are_configuration_errors() {
        let none: Vec<(String, MemoryStore)> = Vec::new();
        assert!(matches!(
            ShardedStore::new(none),
            Err(StoreError::Config {
                option: "nodes",
                ..
            })
        ));
        assert!(matches!(
            ShardedStore::new(vec![("a", MemoryStore::new()), ("a", MemoryStore::new())]),
            Err(StoreError::Config {
                option: "nodes",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn get_many_gathers_from_every_node_in_order() {
        let store = sharded(&["a", "b", "c"]);
        let keys: Vec<String> = (0..50).map(|i| format!("k:{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            if i % 3 != 0 {
                store
                    .set(key, Bytes::from(key.clone()), Duration::from_secs(10))
                    .await
                    .unwrap();
            }
        }
        let got = store.get_many(&keys).await.unwrap();
        for (i, (key, value)) in keys.iter().zip(got).enumerate() {
            assert_eq!(value.is_some(), i % 3 != 0, "{key}");
            if let Some(v) = value {
                assert_eq!(v, Bytes::from(key.clone()));
            }
        }
        assert_eq!(store.delete_prefix("k:").await.unwrap(), 33);
    }
}
