//! Quickstart: a read-through cache with the embedded L2 (no Redis needed).
//!
//! Simulates a slow database and shows what the cache does for it: 1 000 concurrent requests for
//! one product cause one database query, repeated reads are served from memory, absent products
//! are remembered briefly, and a failing database is never cached.
//!
//! Run: `cargo run --release --example quickstart`. With `--features prometheus`, it also
//! serves its metrics on `http://127.0.0.1:9184/metrics` while it runs, and prints its read
//! counters from a scrape at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{Cache, MemoryStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// A stand-in for the database: 20 ms per query, counts every query.
#[derive(Default)]
struct Database {
    queries: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct DbError;

impl Database {
    async fn product(&self, id: u64) -> Result<Option<Product>, DbError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        match id {
            0 => Err(DbError),
            1..=1000 => Ok(Some(Product {
                id,
                name: format!("product #{id}"),
                price_cents: id * 100,
            })),
            _ => Ok(None),
        }
    }
    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Metrics first: caches take their handles when they are built.
    #[cfg(feature = "prometheus")]
    let metrics = herdwise::prometheus::serve(([127, 0, 0, 1], 9184).into()).await?;
    let db = Arc::new(Database::default());
    let cache: Cache<u64, Product> = Cache::builder("catalog")
        .store(MemoryStore::new()) // swap for RedisStore::connect("redis://...").await? to share
        .ttl(Duration::from_secs(300))
        .l1_max_bytes(64 << 20)
        .build()?;

    // 1. A stampede: 1 000 concurrent requests for a cold key.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (cache, db) = (cache.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&42, |id| async move { db.product(*id).await })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "1000 concurrent reads of a cold key: {} database query, {:?}",
        db.queries(),
        started.elapsed()
    );

    // The loaders below borrow the database; the futures they return may borrow too.
    let db = &*db;

    // 2. Warm reads come from L1.
    let before = db.queries();
    let started = Instant::now();
    for _ in 0..100_000 {
        cache
            .get_or_load(&42, |id| async move { db.product(*id).await })
            .await?;
    }
    println!(
        "100000 warm reads: {} database queries, {:?} in total",
        db.queries() - before,
        started.elapsed()
    );

    // 3. Absent rows are cached briefly (negative caching), so scans of random ids stay cheap.
    let before = db.queries();
    for _ in 0..10 {
        let p = cache
            .get_or_load(&999_999, |id| async move { db.product(*id).await })
            .await?;
        assert!(p.is_none());
    }
    println!(
        "10 reads of a missing product: {} database query",
        db.queries() - before
    );

    // 4. Errors are returned, never cached.
    for attempt in 1..=2 {
        let result = cache
            .get_or_load(&0, |id| async move { db.product(*id).await })
            .await;
        println!(
            "read of a failing row, attempt {attempt}: {}",
            match result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        );
    }

    // 5. Writes: update the database, then invalidate.
    cache.invalidate(&42).await?;
    let before = db.queries();
    cache
        .get_or_load(&42, |id| async move { db.product(*id).await })
        .await?;
    println!(
        "read after invalidate: {} database query (reloaded)",
        db.queries() - before
    );
    println!(
        "L1 holds {} entries, {} bytes",
        cache.l1_len(),
        cache.l1_bytes()
    );
    #[cfg(feature = "prometheus")]
    {
        println!("from http://{}/metrics:", metrics.local_addr());
        let scrape = metrics.prometheus().render();
        for line in scrape.lines().filter(|l| {
            l.starts_with("herdwise_cache_gets_total")
                || l.starts_with("herdwise_cache_loads_total")
        }) {
            println!("  {line}");
        }
    }
    Ok(())
}
