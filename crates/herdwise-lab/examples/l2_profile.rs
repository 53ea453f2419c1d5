//! A fixed count of L2 hits (L1 off) through Herdwise (`get`, or `get_or_load` with `load`) or
//! raw redis-rs GETs (`raw`), one after another on a Redis it starts, for instruction-level
//! profiles of the client side:
//!
//! `cargo build --release -p herdwise-lab --example l2_profile` then
//! `valgrind --tool=callgrind target/release/examples/l2_profile <get|load|raw> <bytes> [count]`.

use std::hint::black_box;
use std::time::Duration;

use herdwise::{Cache, Compression, RedisStore};
use herdwise_testkit::RedisServer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "get".into());
    let size: usize = args.next().map_or(Ok(100), |n| n.parse())?;
    let count: u64 = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = RedisServer::start()?;
    let found = runtime.block_on(async move {
        let value: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let mut found = 0u64;
        if mode == "raw" {
            let client = redis::Client::open(server.url())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            for k in 0..100u64 {
                let () = redis::cmd("SET")
                    .arg(format!("raw:{k}"))
                    .arg(&value)
                    .query_async(&mut conn)
                    .await?;
            }
            for i in 0..count {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(format!("raw:{}", black_box(i % 100)))
                    .query_async(&mut conn)
                    .await?;
                found += u64::from(v.is_some_and(|v| v.len() == size));
            }
        } else {
            let cache: Cache<u64, Vec<u8>> = Cache::builder("profile")
                .store(RedisStore::connect(&server.url()).await?)
                .l1_max_bytes(0)
                .no_hot_key_shield()
                .compression(Compression::None)
                .ttl(Duration::from_secs(3600))
                .build()?;
            for k in 0..100u64 {
                cache.set(&k, value.clone()).await?;
            }
            for i in 0..count {
                let k = black_box(i % 100);
                let v = if mode == "load" {
                    cache
                        .get_or_load(&k, |_| async { Ok::<_, std::io::Error>(None) })
                        .await?
                } else {
                    cache.get(&k).await?
                };
                found += u64::from(v.is_some_and(|v| v.len() == size));
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(found)
    })?;
    println!("{found} hits of {count}");
    Ok(())
}
