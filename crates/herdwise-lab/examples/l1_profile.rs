//! A fixed count of L1 hits through `Cache::get` (or raw quick_cache with `raw` as the first
//! argument), single-threaded, for instruction-level profiles:
//!
//! `cargo build --release -p herdwise-lab --example l1_profile` then
//! `valgrind --tool=callgrind target/release/examples/l1_profile [raw] [count]`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use herdwise::{Cache, MemoryStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "herdwise".into());
    let count: u64 = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let value = Arc::new(vec![7u8; 100]);
    let mut found = 0u64;
    if mode == "raw" {
        let quick = quick_cache::sync::Cache::<u64, Arc<Vec<u8>>>::new(20_000);
        for k in 0..10_000u64 {
            quick.insert(k, value.clone());
        }
        for i in 0..count {
            found += u64::from(quick.get(black_box(&(i % 10_000))).is_some());
        }
    } else {
        let cache: Cache<u64, Vec<u8>> = Cache::builder("profile")
            .store(MemoryStore::new())
            .ttl(Duration::from_secs(3600))
            .l1_max_bytes(64 << 20)
            .build()?;
        runtime.block_on(async {
            for k in 0..10_000u64 {
                cache.set(&k, value.clone()).await?;
            }
            Ok::<_, herdwise::Error>(())
        })?;
        for i in 0..count {
            let hit = cache.get(black_box(&(i % 10_000))).now_or_never();
            found += u64::from(matches!(hit, Some(Ok(Some(_)))));
        }
    }
    println!("{mode}: {found} hits of {count}");
    Ok(())
}
